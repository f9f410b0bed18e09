"""The Keras callback a run trains with: progress, cancel after the current batch, divergence, history.

Public API: `RunTracker`. It subclasses ``keras.callbacks.Callback``, so this module imports Keras:
import it when a run starts (`tlviz.finetune.training` does).
"""

from __future__ import annotations

import math
import time

import keras

from tlviz.finetune.phases import Phase
from tlviz.finetune.state import RunState, float_or_none


class RunTracker(keras.callbacks.Callback):
    """Reports one phase's progress, stops it when asked or when the loss diverges, and records its history.

    After every batch it counts the batch, stops training when the running loss is not finite or above
    ``state.diverge_above`` (``diverged``) or when ``state.should_cancel()`` says so (``cancelled``: the
    current batch finishes); after every epoch it appends the epoch's metrics to ``state.history``, hands
    the history to the writer and checks the epoch's losses the same way.

    Args:
        state: the run's `RunState` (shared by the phases of the run).
        phase: the `Phase` this callback watches.
    """

    def __init__(self, state: RunState, phase: Phase):
        super().__init__()
        self.state = state
        self.phase = phase

    def on_epoch_begin(self, epoch, logs=None):
        run, phase = self.state, self.phase
        run.epoch += 1
        run.batch = 0
        run.report(phase.name, force=True)

    def on_train_batch_end(self, batch, logs=None):
        run, phase = self.state, self.phase
        run.batch = batch + 1
        run.batches_done = run.batches_before + (run.epoch - phase.first_epoch) * phase.steps + batch + 1
        loss = (logs or {}).get("loss")
        if loss is not None:
            loss = float(loss)
            if not math.isfinite(loss) or loss > run.diverge_above:
                run.stop_reason = "diverged"
                run.diverged_loss = loss
                self.model.stop_training = True
        if run.stop_reason is None and run.should_cancel is not None and run.should_cancel():
            run.stop_reason = "cancelled"
            self.model.stop_training = True
        run.report(phase.name)

    def on_epoch_end(self, epoch, logs=None):
        run, phase = self.state, self.phase
        logs = dict(logs or {})
        entry = {
            "epoch": run.epoch, "phase": phase.name,
            "loss": float_or_none(logs.get("loss")), "accuracy": float_or_none(logs.get("accuracy")),
            "val_loss": float_or_none(logs.get("val_loss")), "val_accuracy": float_or_none(logs.get("val_accuracy")),
            "lr": phase.lr, "elapsed_s": round(time.monotonic() - run.t0, 3),
            "partial": run.stop_reason is not None and run.batch < phase.steps,
        }
        for k in ("loss", "val_loss"):
            v = entry[k]
            if run.stop_reason is None and (v is None or not math.isfinite(v)
                                            or (k == "loss" and v > run.diverge_above)):
                run.stop_reason = "diverged"
                self.model.stop_training = True
        run.history.append(entry)
        if run.writer is not None:
            run.writer.epoch(run.history)
        run.report(phase.name, force=True)
