"""What a run measures once it has trained, and the file it leaves: predictions, scores, the saved model.

Public API: `predict(model, x, idx, preset, budget)` (class scores in batches planned from the
memory budget), `predict_validation` (the trained run's, above its last cut), `score_validation(scores, y_val, class_names)` (predictions, accuracy, confusion
matrix, per-class table) and `save_model(model, path, preset, class_names, extra)`.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from tlviz.finetune.build import clone
from tlviz.memory import plan_batch, predict_batches
from tlviz.presets import apply_preset


def predict(model, x: np.ndarray, idx: np.ndarray, preset: str | None = None,
            budget: int | None = None) -> np.ndarray:
    """Class probabilities (or logits) of ``x[idx]`` in inference mode, as ``float64``.

    A compiled forward pass in batches planned from the memory budget
    (`tlviz.memory.plan_batch`, mode ``"inference"``); rows are gathered and
    normalized one batch at a time.

    Args:
        model: the model.
        x: its input; ``uint8`` images when `preset` is given.
        idx: the rows of `x` to score.
        preset: applied batch by batch. Defaults to `None` (x is ready).
        budget: bytes. Defaults to ``TLVIZ_MEMORY_MB``.

    Returns:
        ``(len(idx), n_outputs)`` scores; ``(0, 0)`` when `idx` is empty.
    """
    prepare = None if preset is None else (lambda a: apply_preset(a, preset))
    plan = plan_batch(model, "inference", n=len(idx), budget=budget)
    out = predict_batches(model, _Rows(x, idx), prepare, plan)
    return out.astype(np.float64) if len(idx) else np.zeros((0, 0))


def predict_validation(model, cut, activations, images: np.ndarray, val_idx: np.ndarray, preset,
                       budget: int | None = None) -> np.ndarray:
    """The trained model's scores on the validation images (`predict`).

    Args:
        model: the trained model.
        cut: the last phase's `tlviz.finetune.cache.Cut`, or None.
        activations: the cached activations at `cut`: with a cut, only the layers above it run, on them.
        images: the ``uint8`` images (used without a cut).
        val_idx: the validation images.
        preset: the run's preset (applied to `images`).
        budget: bytes. Defaults to ``TLVIZ_MEMORY_MB``.

    Returns:
        ``(len(val_idx), n_outputs)`` scores.
    """
    if cut is not None:
        return predict(cut.upper, activations, val_idx, budget=budget)
    return predict(model, images, val_idx, preset=preset, budget=budget)


class _Rows:
    """``x[idx]`` without the copy: slicing gathers only the rows of that slice."""

    def __init__(self, x: np.ndarray, idx: np.ndarray):
        self.x, self.idx = x, np.asarray(idx, dtype=np.int64)

    def __len__(self) -> int:
        return len(self.idx)

    def __getitem__(self, s: slice) -> np.ndarray:
        return self.x[self.idx[s]]


@dataclass
class ValidationScores:
    """The final model on the validation images.

    Attributes:
        pred: the predicted class per image (``-1`` where the scores are not finite).
        accuracy: the share predicted right (NaN without validation images).
        confusion: ``(n_classes, n_classes)`` counts, rows true, columns predicted.
        per_class: DataFrame ``class, n, correct, accuracy``.
    """

    pred: np.ndarray
    accuracy: float
    confusion: np.ndarray
    per_class: pd.DataFrame


def score_validation(scores: np.ndarray, y_val: np.ndarray, class_names: list[str]) -> ValidationScores:
    """Score the final model's outputs on the validation images.

    Args:
        scores: `predict`'s output on the validation images.
        y_val: their true labels.
        class_names: the image set's classes.

    Returns:
        The `ValidationScores`.
    """
    n_classes = len(class_names)
    finite = np.all(np.isfinite(scores), axis=1)
    pred = np.where(finite, np.argmax(np.nan_to_num(scores, nan=-np.inf), axis=1), -1).astype(np.int64)
    val_acc = float(np.mean(pred == y_val)) if len(y_val) else float("nan")
    confusion = np.zeros((n_classes, n_classes), dtype=np.int64)
    for t, q in zip(y_val, pred):
        if q >= 0:
            confusion[t, q] += 1
    per_class = pd.DataFrame([
        {"class": name, "n": int((y_val == i).sum()), "correct": int(((y_val == i) & (pred == i)).sum())}
        for i, name in enumerate(class_names)], columns=["class", "n", "correct"])
    per_class["accuracy"] = np.where(per_class["n"] > 0, per_class["correct"] / per_class["n"].clip(lower=1), np.nan)
    return ValidationScores(pred=pred, accuracy=val_acc, confusion=confusion, per_class=per_class)


def save_model(model, path, preset: str, class_names: list[str], extra: dict | None = None) -> None:
    """Save a fine-tuned model as ``.keras`` with tlviz metadata (preset, class names) embedded.

    The file holds the architecture and the trained weights without the run's optimizer state: that state
    (built for the part that trained, phase by phase) means nothing to whoever loads the file, and Keras
    warned about every mismatched optimizer variable when it opened one that carried it. Compile it with
    your own optimizer and learning rate to train on.

    Args:
        model: the trained model.
        path: the ``.keras`` file to write (replaced atomically).
        preset: the preset it was trained with.
        class_names: its classes, in output order.
        extra: more metadata (``finetuned_from``, ``run_id``, ``state``). Defaults to `None`.
    """
    from pathlib import Path

    from tlviz.samples import embed_metadata

    path = Path(path)
    tmp = path.with_name(f".{path.stem}.tmp.keras")
    clone(model).save(tmp)  # the clone's optimizer is fresh: it has no state to save
    embed_metadata(tmp, {"preset": preset, "class_names": list(class_names), **(extra or {})})
    tmp.replace(path)
