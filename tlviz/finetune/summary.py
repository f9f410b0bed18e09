"""What a run's numbers say, in words: weight changes and the shape of the curves."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd

from tlviz.findings import Finding, sort_findings
from tlviz.jsonsafe import finite_or_none

#: Training accuracy this many points above validation accuracy counts as overfitting.
OVERFIT_POINTS = 15.0

WEIGHT_CHANGE_COLUMNS = ["path", "class", "trainable", "params", "l2_before", "l2_change", "rel_change"]


def snapshot(model) -> dict[str, list[np.ndarray]]:
    """Copies of every leaf layer's weights (nested models included), keyed by layer path."""
    from tlviz.layers import iter_leaves

    return {leaf.path: [np.array(v.numpy(), copy=True) for v in leaf.layer.weights]
            for leaf in iter_leaves(model) if leaf.layer.weights}


def weight_change(before: dict[str, list[np.ndarray]], model, trained_paths: set[str]) -> pd.DataFrame:
    """How far each layer's weights moved during a run.

    Args:
        before: `snapshot` taken before training.
        model: the model after training.
        trained_paths: layer paths that were trainable in any phase.

    Returns:
        DataFrame with `WEIGHT_CHANGE_COLUMNS`: ``l2_change`` is
        ``||w_after - w_before||`` over all the layer's variables (moving
        statistics of BatchNormalization included), ``rel_change`` divides it
        by ``||w_before||`` (or is the plain change when that is 0). Frozen
        layers that were not touched show exactly 0.
    """
    from tlviz.layers import iter_leaves

    after = snapshot(model)
    classes = {leaf.path: type(leaf.layer).__name__ for leaf in iter_leaves(model)}
    rows = []
    for path, w0 in before.items():
        w1 = after.get(path)
        if w1 is None:
            continue
        d2 = sum(float(np.sum((b.astype(np.float64) - a.astype(np.float64)) ** 2)) for a, b in zip(w0, w1))
        n2 = sum(float(np.sum(a.astype(np.float64) ** 2)) for a in w0)
        diff = math.sqrt(d2) if math.isfinite(d2) else float("inf")
        norm = math.sqrt(n2)
        rows.append({"path": path, "class": classes.get(path, ""), "trainable": path in trained_paths,
                     "params": int(sum(a.size for a in w0)), "l2_before": norm, "l2_change": diff,
                     "rel_change": diff / norm if norm > 0 else diff})
    return pd.DataFrame(rows, columns=WEIGHT_CHANGE_COLUMNS)


def frozen_changed(report: pd.DataFrame) -> list[str]:
    """Layers that were frozen in every phase yet whose weights moved (should be empty)."""
    bad = report[(~report["trainable"]) & (report["l2_change"] != 0)]
    return list(bad["path"])


def largest_movers(report: pd.DataFrame, n: int = 5) -> pd.DataFrame:
    """The `n` layers whose weights moved most (relative change), largest first."""
    moved = report[report["rel_change"] > 0]
    return moved.sort_values("rel_change", ascending=False).head(n).reset_index(drop=True)


def describe_curves(history: pd.DataFrame, state: str, chance: float, config=None,
                    initial: dict | None = None) -> list[Finding]:
    """Name what the curves show.

    Args:
        history: per-epoch history (``loss``, ``accuracy``, ``val_loss``,
            ``val_accuracy``).
        state: the run's end state (``completed``, ``cancelled``, ``diverged``).
        chance: validation accuracy of guessing the most common class.
        config: the `RunConfig` (for advice). Defaults to `None`.
        initial: validation metrics before training. Defaults to `None`.

    Returns:
        Findings (area ``finetuning``) with ids ``run-diverged``,
        ``no-learning``, ``overfitting``, ``still-improving``,
        ``run-cancelled`` or ``learning-ok``, most severe first.
    """
    out: list[Finding] = []
    lr = getattr(config, "lr", None)
    if state == "diverged":
        last = history.iloc[-1] if len(history) else None
        loss = None if last is None else finite_or_none(last.get("loss"))
        out.append(Finding(
            id="run-diverged", severity="error", area="finetuning",
            title=f"The run diverged: the loss {'became NaN' if loss is None else 'exploded'}, so it was stopped",
            evidence={"learning_rate": lr, "epochs_done": int(len(history)), "last_loss": loss},
            fix=("The learning rate is too high for this setup. Try 10 to 100 times lower (use the learning-rate "
                 "finder), or unfreeze fewer layers."),
        ))
        return out
    if state == "cancelled":
        out.append(Finding(id="run-cancelled", severity="info", area="finetuning",
                           title="The run was cancelled; what was measured up to then is kept",
                           evidence={"epochs_done": int(len(history))}, fix="Start it again to run all epochs."))
    if not len(history):
        return sort_findings(out)
    val = history["val_accuracy"].astype(float)
    best = float(val.max())
    last = history.iloc[-1]
    margin = max(0.05, 0.5 * (1 - chance) * 0.1)
    if best <= chance + margin:
        out.append(Finding(
            id="no-learning", severity="error", area="finetuning",
            title=f"No learning: validation accuracy stays at chance ({best:.0%}, chance {chance:.0%})",
            evidence={"best_val_accuracy": round(best, 4), "chance": round(chance, 4),
                      "trainable": "see weight changes", "learning_rate": lr},
            fix=("Check that something trains (the weight-change report shows which layers moved), that the "
                 "preset matches how the model was trained, and try a higher learning rate (the finder suggests "
                 "one)."),
        ))
    gap = (float(last["accuracy"]) - float(last["val_accuracy"])) * 100
    if gap > OVERFIT_POINTS:
        out.append(Finding(
            id="overfitting", severity="warning", area="finetuning",
            title=f"Overfitting: training accuracy is {gap:.0f} points above validation",
            evidence={"train_accuracy": round(float(last["accuracy"]), 4),
                      "val_accuracy": round(float(last["val_accuracy"]), 4)},
            fix=("Add dropout to the head, weight decay or augmentation, or unfreeze fewer layers; more "
                 "training images help most."),
        ))
    if state == "completed" and len(history) >= 2 and _still_improving(history):
        out.append(Finding(
            id="still-improving", severity="info", area="finetuning",
            title="Still improving at the last epoch",
            evidence={"last_val_accuracy": round(float(last["val_accuracy"]), 4),
                      "previous_best": round(float(val.iloc[:-1].max()), 4),
                      "last_val_loss": round(float(last["val_loss"]), 4)},
            fix="Run more epochs: validation loss was still falling.",
        ))
    if not out:
        out.append(Finding(id="learning-ok", severity="info", area="finetuning",
                           title=f"Learning: best validation accuracy {best:.0%} (chance {chance:.0%})",
                           evidence={"best_val_accuracy": round(best, 4)}, fix=""))
    return sort_findings(out)


def _still_improving(history: pd.DataFrame) -> bool:
    vl = history["val_loss"].astype(float).to_numpy()
    va = history["val_accuracy"].astype(float).to_numpy()
    loss_falling = vl[-1] < vl[:-1].min() * 0.99
    acc_rising = va[-1] > va[:-1].max() + 0.005
    return bool(loss_falling and va[-1] >= va[:-1].max() - 0.005) or bool(acc_rising)


def confusion_cell(metrics: dict, true_index: int, predicted_index: int) -> np.ndarray:
    """Image-set indices of the validation images of one confusion-matrix cell.

    Args:
        metrics: a run's ``metrics.json`` (``val_indices``, ``val_true``, ``val_pred``).
        true_index: row (true class index).
        predicted_index: column (predicted class index).
    """
    idx = np.asarray(metrics.get("val_indices") or [], dtype=np.int64)
    t = np.asarray(metrics.get("val_true") or [], dtype=np.int64)
    p = np.asarray(metrics.get("val_pred") or [], dtype=np.int64)
    if not (len(idx) == len(t) == len(p)):
        return np.zeros(0, np.int64)
    return idx[(t == true_index) & (p == predicted_index)]
