"""Writing a run's folder as the run progresses: config, status, progress, history, results, TensorBoard.

Public API: `RunWriter` (one run's folder), `TensorBoardWriter` (its ``tb/`` event files).
"""

from __future__ import annotations

import math
import os
from pathlib import Path

import pandas as pd

from tlviz.finetune.store.schema import FINAL_STATES, STATES
from tlviz.jsonfiles import now_iso, read_json, write_json


class TensorBoardWriter:
    """A run's TensorBoard event files: ``tb/train`` and ``tb/validation`` (``tensorboard --logdir <runs dir>``).

    TensorFlow is imported at the first epoch written. The files are a convenience: nothing that goes
    wrong writing them reaches the run.

    Args:
        run_dir: the run's folder.
    """

    def __init__(self, run_dir: str | os.PathLike):
        self.dir = Path(run_dir) / "tb"
        self._writers = None

    def epoch(self, entry: dict) -> None:
        """Record one history entry: ``loss`` / ``accuracy`` (train), ``val_loss`` / ``val_accuracy``
        (validation) and the learning rate, at step ``entry["epoch"]``; non-finite values are left out.

        Args:
            entry: one row of the history (`tlviz.finetune.store.HISTORY_COLUMNS`).
        """
        try:
            import tensorflow as tf

            if self._writers is None:
                self._writers = (tf.summary.create_file_writer(str(self.dir / "train")),
                                 tf.summary.create_file_writer(str(self.dir / "validation")))
            step = int(entry["epoch"])
            for writer, prefix in zip(self._writers, ("", "val_")):
                with writer.as_default():
                    for name in ("loss", "accuracy"):
                        v = entry.get(prefix + name)
                        if v is not None and math.isfinite(float(v)):
                            tf.summary.scalar(f"epoch_{name}", float(v), step=step)
                    if prefix == "" and entry.get("lr") is not None:
                        tf.summary.scalar("learning_rate", float(entry["lr"]), step=step)
                writer.flush()
        except Exception:  # TensorBoard files are a convenience; never fail a run for them
            pass

    def close(self) -> None:
        """Close the event files (a later `epoch` opens them again)."""
        if self._writers is not None:
            for w in self._writers:
                try:
                    w.close()
                except Exception:
                    pass
            self._writers = None


class RunWriter:
    """Writes one run's folder as the run progresses.

    Args:
        run_dir: the run's folder (created if needed).
    """

    def __init__(self, run_dir: str | os.PathLike):
        self.dir = Path(run_dir)
        self.dir.mkdir(parents=True, exist_ok=True)
        self._tb = TensorBoardWriter(self.dir)

    @property
    def run_id(self) -> str:
        """The run's id (its folder's name)."""
        return self.dir.name

    @property
    def model_path(self) -> Path:
        """Where the fine-tuned model is saved (``model.keras``)."""
        return self.dir / "model.keras"

    def write_config(self, config, model_info: dict | None = None, images_info: dict | None = None,
                     owner: str | None = None, original: dict | None = None) -> None:
        """Write ``config.json`` (first, before the run starts).

        Args:
            config: the `RunConfig`.
            model_info: what the model is (file name, hash, ...). Defaults to `None`.
            images_info: what the image set is (source, image key, ...). Defaults to `None`.
            owner: the workspace that started the run. Defaults to `None` (the CLI, a script).
            original: the original task's image set, when retention is measured. Defaults to `None`.
        """
        extra = {"original": original} if original else {}
        write_json(self.dir / "config.json", {"run_id": self.run_id, "created": now_iso(), "config": config.to_dict(),
                                              "model": model_info or {}, "images": images_info or {},
                                              "owner": owner, **extra})

    def status(self, state: str, message: str = "", **extra) -> None:
        """Update ``status.json``: the state, a message, the times (``started``, ``ended``) and `extra` keys.

        Args:
            state: one of `STATES`.
            message: what happened, for the user. Defaults to ``""``.
            **extra: more keys to record (``pid``, ``where``, ``stopped_at``, ...).

        Raises:
            ValueError: `state` is not one of `STATES`.
        """
        if state not in STATES:
            raise ValueError(f"state must be one of {STATES}, not {state!r}")
        old = read_json(self.dir / "status.json", {}) or {}
        data = {**old, **extra, "state": state, "message": message, "updated": now_iso()}
        if state == "running" and "started" not in old:
            data["started"] = now_iso()
        if state in FINAL_STATES:
            data["ended"] = now_iso()
        write_json(self.dir / "status.json", data)

    def progress(self, info: dict) -> None:
        """Write ``progress.json`` (`tlviz.finetune.state.RunState.report`'s dict)."""
        write_json(self.dir / "progress.json", info)

    def epoch(self, history: list[dict]) -> None:
        """Record the history so far (after every epoch) and its last entry in TensorBoard."""
        write_json(self.dir / "history.json", history)
        if history:
            self._tb.epoch(history[-1])

    def finish(self, metrics: dict, weight_change: pd.DataFrame | None = None) -> None:
        """Write the results (``weight_change.csv``, then ``metrics.json``) and close the TensorBoard files.

        Args:
            metrics: `tlviz.finetune.run.RunResult.to_metrics`.
            weight_change: the weight-change report. Defaults to `None` (not written).
        """
        if weight_change is not None:
            tmp = self.dir / f".weight_change.{os.getpid()}.tmp"
            weight_change.to_csv(tmp, index=False)
            os.replace(tmp, self.dir / "weight_change.csv")
        write_json(self.dir / "metrics.json", metrics)
        self.close()

    def close(self) -> None:
        """Close the TensorBoard files."""
        self._tb.close()
