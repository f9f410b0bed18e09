"""Which class order explains a confusion matrix best (the label-order measurement's arithmetic).

- `best_assignment(confusion) -> ndarray`: the class permutation that puts the
  most images on the diagonal (SciPy's Hungarian solver when installed, an exact
  search for up to 8 classes and a greedy match beyond otherwise).
"""

from __future__ import annotations

import itertools

import numpy as np


def best_assignment(confusion: np.ndarray) -> np.ndarray:
    """The permutation that puts the most images on the diagonal of a confusion matrix.

    Args:
        confusion: square ``(k, k)`` counts, rows = true class, columns = predicted.

    Returns:
        ``perm`` with ``perm[t]`` = the predicted column matched to true class
        ``t`` (``confusion[t, perm[t]]`` summed is maximal). Uses SciPy's
        ``linear_sum_assignment`` when installed, else an exact search for up to
        8 classes and a greedy match beyond.
    """
    c = np.asarray(confusion, dtype=np.float64)
    if c.ndim != 2 or c.shape[0] != c.shape[1]:
        raise ValueError(f"Expected a square confusion matrix, got shape {c.shape}.")
    try:
        from scipy.optimize import linear_sum_assignment
    except ImportError:  # scipy is optional (it comes with scikit-learn in the dev extras)
        return _assignment_fallback(c)
    rows, cols = linear_sum_assignment(-c)
    perm = np.empty(len(c), dtype=np.int64)
    perm[rows] = cols
    return perm


def _assignment_fallback(c: np.ndarray) -> np.ndarray:
    """Exact search over permutations for up to 8 classes, greedy beyond (used without SciPy)."""
    c = np.asarray(c, dtype=np.float64)
    k = len(c)
    if k <= 8:
        perms = np.array(list(itertools.permutations(range(k))), dtype=np.int64)
        scores = c[np.arange(k)[None, :], perms].sum(axis=1)
        return perms[int(np.argmax(scores))]
    perm = np.full(k, -1, dtype=np.int64)
    work = c.copy()
    for _ in range(k):
        t, j = np.unravel_index(int(np.argmax(work)), work.shape)
        perm[t] = j
        work[t, :] = -np.inf
        work[:, j] = -np.inf
    return perm


def _confusion(labels: np.ndarray, preds: np.ndarray, k: int) -> np.ndarray:
    c = np.zeros((k, k), dtype=np.int64)
    ok = (labels >= 0) & (labels < k) & (preds >= 0) & (preds < k)
    np.add.at(c, (labels[ok], preds[ok]), 1)
    return c

