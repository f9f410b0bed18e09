"""A stored run as the app and the command line show it: its progress, its results, its place, durations.

Public API: `RunProgress` (``progress.json`` with a fraction and a line of text), `RunOutcome`
(``metrics.json`` with accessors), `format_seconds(s)`, `describe_where(where)`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
import pandas as pd


def format_seconds(s) -> str:
    """``"42 s"``, ``"3:05"`` (minutes:seconds) or ``"–"`` for None / NaN."""
    if s is None or (isinstance(s, float) and not math.isfinite(s)):
        return "–"
    s = int(round(float(s)))
    return f"{s // 60}:{s % 60:02d}" if s >= 60 else f"{s} s"


#: Stages of a run in which the worker's message says what it does (no epoch/batch counts yet).
_MESSAGE_STAGES = ("caching", "preparing", "evaluating", "saving")


@dataclass(frozen=True)
class RunProgress:
    """Where a run or a range test stands, as its worker last wrote it (``progress.json``).

    Attributes:
        stage: ``preparing``, ``caching``, a training phase, ``evaluating``,
            ``saving``, or ``lrfind`` for a range test; ``""`` before the first report.
        epoch / epochs: the current epoch and how many there are (None: unknown).
        batch / batches: the current batch of the epoch and how many (None: unknown).
        batches_done / total_batches: batches done over the whole run, and planned.
        elapsed_s / eta_s: seconds since the start, and the estimate left (None: unknown).
        message: what the worker does in a stage without counts.
        step / steps: for a range test, the step and about how many there are.
    """

    stage: str = ""
    epoch: int = 0
    epochs: int | None = None
    batch: int = 0
    batches: int | None = None
    batches_done: float = 0
    total_batches: int = 1
    elapsed_s: float | None = None
    eta_s: float | None = None
    message: str = ""
    step: int = 0
    steps: int = 100

    @classmethod
    def from_dict(cls, data: dict | None) -> "RunProgress":
        """Read a progress dict (missing or damaged keys take the defaults).

        Args:
            data: the dict the worker wrote, or None.

        Returns:
            The `RunProgress`.
        """
        d = data if isinstance(data, dict) else {}
        return cls(stage=str(d.get("stage") or ""), epoch=d.get("epoch", 0), epochs=d.get("epochs"),
                   batch=d.get("batch", 0), batches=d.get("batches"),
                   batches_done=float(d.get("batches_done") or 0),
                   total_batches=max(int(d.get("total_batches") or 1), 1), elapsed_s=d.get("elapsed_s"),
                   eta_s=d.get("eta_s"), message=str(d.get("message") or ""), step=int(d.get("step") or 0),
                   steps=int(d.get("steps") or 100))

    @property
    def fraction(self) -> float:
        """Progress between 0 and 1 (batches for a run, steps for a range test)."""
        if self.stage == "lrfind":
            return min(self.step / max(self.steps, 1), 1.0)
        return min(self.batches_done / self.total_batches, 1.0)

    @property
    def text(self) -> str:
        """One line: the stage's message, or epoch, batch, time elapsed and left."""
        if self.stage == "lrfind":
            return (f"Learning-rate range test: step {self.step} of about {self.steps}" if self.step
                    else "Learning-rate range test: starting the worker…")
        if self.stage in _MESSAGE_STAGES:
            return self.message or self.stage
        return (f"epoch {self.epoch}/{'?' if self.epochs is None else self.epochs} · batch {self.batch}/"
                f"{'?' if self.batches is None else self.batches} · {format_seconds(self.elapsed_s)} elapsed · "
                f"~{format_seconds(self.eta_s)} left")


@dataclass
class RunOutcome:
    """What a finished run measured (its ``metrics.json``), with accessors.

    Attributes:
        metrics: the stored dict (``{}`` until the run ends).
        final: ``loss`` / ``accuracy`` (last epoch, training mode) and
            ``val_loss`` / ``val_accuracy`` (the final model on the validation images).
        best_val_accuracy: the best validation accuracy of any epoch (None: none measured).
        elapsed_s: the run's wall time (None: unknown).
        findings: what the curves show (`tlviz.findings.Finding`; a damaged entry is left out).
        notes: remarks (cache fallback reason, skipped layers, ...).
        class_names: the image set's classes.
        per_class: DataFrame ``class, n, correct, accuracy`` on validation (empty: none).
        confusion: ``(n_classes, n_classes)`` counts, rows true, columns predicted (None: none).
        frozen_layers_changed: frozen layers whose weights moved (should be empty).
        drift: representation drift per block of the base (``block``, ``cka``, ``trained``,
            ``status``, ``layers``; `tlviz.finetune.drift`), input to output (empty: not measured).
        retention: the original task's accuracy before and after (`tlviz.finetune.retention`),
            or None when no original-task image set was given.
    """

    metrics: dict = field(default_factory=dict)
    final: dict = field(default_factory=dict)
    best_val_accuracy: float | None = None
    elapsed_s: float | None = None
    findings: list = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    class_names: list[str] = field(default_factory=list)
    per_class: pd.DataFrame = field(default_factory=pd.DataFrame)
    confusion: np.ndarray | None = None
    frozen_layers_changed: list[str] = field(default_factory=list)
    drift: list[dict] = field(default_factory=list)
    retention: dict | None = None

    @classmethod
    def from_metrics(cls, metrics: dict | None) -> "RunOutcome":
        """Read a run's ``metrics.json`` dict.

        Args:
            metrics: the dict (``RunResult.to_metrics``), or None / ``{}`` for a run without results.

        Returns:
            The `RunOutcome`.
        """
        from tlviz.findings import Finding

        m = metrics if isinstance(metrics, dict) else {}
        findings = []
        for f in m.get("findings") or []:
            try:
                findings.append(Finding.from_dict(f))
            except ValueError:
                continue
        return cls(metrics=m, final=dict(m.get("final") or {}), best_val_accuracy=m.get("best_val_accuracy"),
                   elapsed_s=m.get("elapsed_s"), findings=findings, notes=list(m.get("notes") or []),
                   class_names=list(m.get("class_names") or []), per_class=pd.DataFrame(m.get("per_class") or []),
                   confusion=np.asarray(m["confusion"]) if m.get("confusion") else None,
                   frozen_layers_changed=list(m.get("frozen_layers_changed") or []),
                   drift=[d for d in (m.get("representation_drift") or []) if isinstance(d, dict) and "block" in d],
                   retention=m.get("retention") if isinstance(m.get("retention"), dict) else None)

    @property
    def empty(self) -> bool:
        """Whether nothing was measured (the run has not ended, or ended without results)."""
        return not self.metrics

    @property
    def val_accuracy(self) -> float | None:
        """The final model's accuracy on the validation images (inference mode); None when not measured."""
        return self.final.get("val_accuracy")

    @property
    def val_loss(self) -> float | None:
        """The final model's loss on the validation images; None when not measured."""
        return self.final.get("val_loss")

    @property
    def drift_table(self) -> pd.DataFrame:
        """`drift` as a DataFrame (``block``, ``cka``, ``trained``, ``status``, ``layers``), input to output."""
        return pd.DataFrame(self.drift, columns=["block", "cka", "trained", "status", "layers"])

    @property
    def val_correct(self) -> np.ndarray:
        """Per validation image (in ``val_indices`` order), whether the final model was right."""
        t = np.asarray(self.metrics.get("val_true") or [], dtype=np.int64)
        p = np.asarray(self.metrics.get("val_pred") or [], dtype=np.int64)
        return t == p if len(t) == len(p) else np.zeros(0, bool)

    @property
    def val_indices(self) -> np.ndarray:
        """The image-set indices of the validation images."""
        return np.asarray(self.metrics.get("val_indices") or [], dtype=np.int64)

    @property
    def train_accuracy(self) -> float | None:
        """The last epoch's training accuracy (training mode: dropout on); None when not measured."""
        return self.final.get("accuracy")

    def cell(self, true_index: int, predicted_index: int) -> np.ndarray:
        """Image-set indices of the validation images of one confusion-matrix cell.

        Args:
            true_index: row (true class index).
            predicted_index: column (predicted class index).

        Returns:
            The indices (empty when the run stored none).
        """
        from tlviz.finetune.summary import confusion_cell

        return confusion_cell(self.metrics, true_index, predicted_index)


def describe_where(where: dict | None) -> str:
    """One line for a run's place: ``local · host · CPU`` or ``Ray · 10.0.0.2 · GPU (NVIDIA A100)``.

    Args:
        where: the ``where`` a run's ``status.json`` holds (None / empty: unknown).

    Returns:
        The line; ``""`` when nothing was recorded.
    """
    if not where:
        return ""
    ex = "Ray" if where.get("executor") == "ray" else "local"
    device = str(where.get("device") or "?")
    if device == "GPU" and where.get("device_name"):
        device += f" ({where['device_name']})"
    return " · ".join(p for p in (ex, str(where.get("node") or ""), device) if p)
