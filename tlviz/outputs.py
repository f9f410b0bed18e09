"""How a classifier's output is read: its first output, the predicted class and that class's probability.

One rule for every measurement (the normalization comparison, the diagnose checks):

- a model with several outputs is read by its first one (of a dict: its first value);
- one unit is a binary classifier: class 1 when its probability is at least 0.5. When the values
  of a batch leave [0, 1] they are logits: class 1 from 0 up, the probability their sigmoid;
- several units: the largest wins. A row that is not a probability distribution (non-negative,
  summing to 1) holds logits; its probability is the softmax's.

Public API: `first_output(out)`, `predicted_classes(out)`, `top_class(out)`.
"""

from __future__ import annotations

import numpy as np


def first_output(out) -> np.ndarray:
    """The first output of a model call, as a numpy array.

    Args:
        out: what the model returned: an array or tensor, a list / tuple of them, or a dict.

    Returns:
        The first output.
    """
    if isinstance(out, dict):
        out = next(iter(out.values()))
    if isinstance(out, (list, tuple)):
        out = out[0]
    return np.asarray(out)


def predicted_classes(out) -> np.ndarray:
    """The predicted class of every row of a classifier's output (no probabilities computed).

    Args:
        out: ``(n, classes)`` probabilities or logits, or ``(n, 1)`` for one sigmoid unit.

    Returns:
        ``(n,)`` int32 class indices.
    """
    out = _rows(out)
    if out.shape[1] == 1:
        p = out[:, 0]
        return (p >= (0.0 if _are_logits(p) else 0.5)).astype(np.int32)
    return out.argmax(axis=1).astype(np.int32)


def top_class(out) -> tuple[np.ndarray, np.ndarray]:
    """The predicted class of every row and its probability (logits are turned into probabilities).

    Args:
        out: ``(n, classes)`` probabilities or logits, or ``(n, 1)`` for one sigmoid unit.

    Returns:
        ``(classes, probabilities)``: ``(n,)`` int32 and ``(n,)`` float32.
    """
    out = _rows(out)
    pred = predicted_classes(out)
    if out.shape[1] == 1:
        p = out[:, 0]
        if _are_logits(p):
            p = 1.0 / (1.0 + np.exp(-p))
        return pred, np.where(pred == 1, p, 1.0 - p).astype(np.float32)
    probs = out
    is_prob = (out.min(axis=1) >= 0) & (out.max(axis=1) <= 1) & (np.abs(out.sum(axis=1) - 1) < 1e-3)
    if not is_prob.all():
        z = out - out.max(axis=1, keepdims=True)
        soft = np.exp(z)
        soft /= soft.sum(axis=1, keepdims=True)
        probs = np.where(is_prob[:, None], out, soft)
    return pred, probs[np.arange(len(pred)), pred].astype(np.float32)


def _rows(out) -> np.ndarray:
    out = np.asarray(out)
    return out.reshape(len(out), -1).astype(np.float32, copy=False)


def _are_logits(p: np.ndarray) -> bool:
    """Whether one unit's outputs over a batch are logits (some leave [0, 1]) rather than probabilities."""
    return bool(np.any((p < 0) | (p > 1)))
