"""A run in progress: its counters, its history so far, why it stopped, and its progress reports.

Public API: `RunState` (what the training loop and its Keras callback share), `PROGRESS_EVERY_S`,
`float_or_none`. It imports no TensorFlow.
"""

from __future__ import annotations

import math
import time

#: Seconds between two progress reports within an epoch.
PROGRESS_EVERY_S = 0.5


def float_or_none(v) -> float | None:
    """A metric as Keras logs it (a tensor, a numpy or a Python number) as a plain float; None stays None."""
    if v is None:
        return None
    return float(v)


class RunState:
    """Mutable state of one run in progress (progress reporting, history, the reason it stopped).

    Args:
        config: the run's `RunConfig`.
        n_train: training images (the batches per epoch follow from them).
        writer: a `tlviz.finetune.store.RunWriter` that records progress and history, or None.
        progress: called with every progress dict, or None.
        should_cancel: called after every batch; True stops the run, or None.

    Attributes:
        stop_reason: ``"cancelled"`` or ``"diverged"`` once the run must stop, else None.
        history: one dict per epoch (`tlviz.finetune.store.HISTORY_COLUMNS`).
        diverge_above: a running training loss above this means divergence (set after the first evaluation).
    """

    def __init__(self, config, n_train: int, writer, progress, should_cancel):
        self.config = config
        self.t0 = time.monotonic()
        self.writer = writer
        self.on_progress = progress
        self.should_cancel = should_cancel
        self.history: list[dict] = []
        self.epoch = 0
        self.batch = 0
        self.batches_before = 0
        self.batches_done = 0
        self.steps = max(1, math.ceil(n_train / config.batch_size))
        self.total_batches = self.steps * config.total_epochs
        self.diverge_above = float("inf")
        self.diverged_loss = None
        self.train_started = None
        self.stop_reason: str | None = None
        self._last = 0.0
        self.stage = "preparing"

    def report(self, phase: str, force: bool = False, message: str = "") -> None:
        """Send a progress dict to the writer and the callback (at most every `PROGRESS_EVERY_S` unless forced).

        Args:
            phase: the stage: ``preparing``, ``caching``, a phase's name, ``evaluating``, ``saving``.
            force: report even if the last report was less than `PROGRESS_EVERY_S` ago. Defaults to `False`.
            message: what the run does, for a stage without counts. Defaults to ``""``.
        """
        now = time.monotonic()
        if not force and now - self._last < PROGRESS_EVERY_S:
            return
        self._last = now
        elapsed = now - self.t0
        eta = None
        if self.train_started is not None and self.batches_done > 0:
            per = (now - self.train_started) / self.batches_done
            eta = per * max(self.total_batches - self.batches_done, 0)
        info = {"stage": phase, "epoch": self.epoch, "epochs": self.config.total_epochs, "batch": self.batch,
                "batches": self.steps, "batches_done": self.batches_done, "total_batches": self.total_batches,
                "elapsed_s": round(elapsed, 2), "eta_s": None if eta is None else round(eta, 1),
                "message": message, "history": self.history}
        if self.writer is not None:
            self.writer.progress(info)
        if self.on_progress is not None:
            self.on_progress(info)
