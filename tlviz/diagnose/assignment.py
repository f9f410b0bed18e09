"""Which class order explains a confusion matrix best (the label-order measurement's arithmetic).

- `best_assignment(confusion) -> ndarray`: the class permutation that puts the
  most images on the diagonal, exact for any number of classes (the Hungarian
  method with potentials, O(k³), in NumPy: no optional dependency decides the answer).
"""

from __future__ import annotations

import numpy as np


def best_assignment(confusion: np.ndarray) -> np.ndarray:
    """The permutation that puts the most images on the diagonal of a confusion matrix.

    Args:
        confusion: square ``(k, k)`` counts, rows = true class, columns = predicted.

    Returns:
        ``perm`` with ``perm[t]`` = the predicted column matched to true class
        ``t`` (``confusion[t, perm[t]]`` summed is maximal). Exact for every ``k``;
        among equally good permutations, the result is deterministic.
    """
    c = np.asarray(confusion, dtype=np.float64)
    if c.ndim != 2 or c.shape[0] != c.shape[1]:
        raise ValueError(f"Expected a square confusion matrix, got shape {c.shape}.")
    if not np.all(np.isfinite(c)):
        raise ValueError("The confusion matrix holds NaN or infinite values; pass image counts.")
    return min_cost_assignment(-c)


def min_cost_assignment(cost: np.ndarray) -> np.ndarray:
    """The permutation ``perm`` minimising ``cost[i, perm[i]]`` summed over rows (square, finite `cost`).

    The Hungarian method in its shortest-augmenting-path form: rows are added one at a
    time; each addition grows a tree of tight edges (reduced cost 0 under the row and
    column potentials ``u``, ``v``) from the new row until it reaches a free column, then
    flips the matching along that path. Potentials stay feasible
    (``cost[i, j] - u[i] - v[j] >= 0``) throughout, which proves the result optimal.

    Args:
        cost: square ``(k, k)`` array of finite numbers.

    Returns:
        ``perm``, an ``int64`` array of length ``k``.
    """
    a = np.asarray(cost, dtype=np.float64)
    k = len(a)
    if k == 0:
        return np.zeros(0, dtype=np.int64)
    u = np.zeros(k + 1)
    v = np.zeros(k + 1)
    # owner[j]: the row (1-based; 0 = none) matched to column j (1-based; column 0 is the tree's root).
    owner = np.zeros(k + 1, dtype=np.int64)
    way = np.zeros(k + 1, dtype=np.int64)
    for row in range(1, k + 1):
        owner[0] = row
        j0 = 0
        slack = np.full(k + 1, np.inf)
        used = np.zeros(k + 1, dtype=bool)
        while True:
            used[j0] = True
            i0 = owner[j0]
            free = ~used[1:]
            reduced = a[i0 - 1] - u[i0] - v[1:]
            better = free & (reduced < slack[1:])
            slack[1:][better] = reduced[better]
            way[1:][better] = j0
            candidates = np.where(free, slack[1:], np.inf)
            j1 = int(np.argmin(candidates)) + 1
            delta = candidates[j1 - 1]
            tree = np.flatnonzero(used)
            u[owner[tree]] += delta
            v[tree] -= delta
            slack[1:][free] -= delta
            j0 = j1
            if owner[j0] == 0:
                break
        while j0:  # flip the matching along the augmenting path
            j1 = way[j0]
            owner[j0] = owner[j1]
            j0 = j1
    perm = np.empty(k, dtype=np.int64)
    perm[owner[1:] - 1] = np.arange(k)
    return perm


def confusion_matrix(labels: np.ndarray, preds: np.ndarray, k: int) -> np.ndarray:
    """The ``(k, k)`` confusion counts: row = true class, column = predicted (values outside ``0..k-1`` ignored).

    Args:
        labels: true class per image.
        preds: predicted class per image.
        k: the number of classes.

    Returns:
        An int64 array; `best_assignment` takes it.
    """
    c = np.zeros((k, k), dtype=np.int64)
    ok = (labels >= 0) & (labels < k) & (preds >= 0) & (preds < k)
    np.add.at(c, (labels[ok], preds[ok]), 1)
    return c
