"""Linear centred kernel alignment (CKA): how similar two representations of the same images are.

Kornblith, Norouzi, Lee and Hinton, *Similarity of Neural Network Representations Revisited*
(ICML 2019). For ``X`` (n images × p features) and ``Y`` (the same n images × q features),
both centred column by column,

    CKA(X, Y) = ||Yᵀ X||²_F / (||Xᵀ X||_F · ||Yᵀ Y||_F)
              = ⟨K, L⟩_F / (||K||_F · ||L||_F),   K = X Xᵀ, L = Y Yᵀ (the Gram form),

which is 1 for the same representation, is unchanged by an orthogonal transform or an
isotropic scaling of either side (a layer whose features were only rotated or rescaled has not
"moved"), and falls towards 0 as the two stop being linearly related. Both forms are computed
here in float64; the Gram form is used when there are more features than images (the usual
case), the feature form otherwise.

Public API: `linear_cka(x, y)`, `centred_gram(x)`, `cka_from_grams(k, l)`.
"""

from __future__ import annotations

import numpy as np


def _matrix(x, name: str) -> np.ndarray:
    a = np.asarray(x, dtype=np.float64)
    if a.ndim < 2:
        raise ValueError(f"`{name}` must hold one row of features per image (2 or more dimensions), not shape "
                         f"{a.shape}.")
    return a.reshape(len(a), -1)


def centred_gram(x) -> np.ndarray:
    """The Gram matrix ``X Xᵀ`` of the column-centred features `x` (n × n, float64).

    Args:
        x: ``(n, ...)`` features of n images (flattened after the first axis).

    Returns:
        The n × n matrix; keep it to compare the same images' features later (`cka_from_grams`).
    """
    a = _matrix(x, "x")
    a = a - a.mean(axis=0, keepdims=True)
    return a @ a.T


def cka_from_grams(k: np.ndarray, l: np.ndarray) -> float:
    """Linear CKA from two centred Gram matrices (`centred_gram`) of the same images.

    Returns:
        The CKA in ``[0, 1]``; NaN when either side has no variance at all (every image gives the
        same features: there is nothing to compare) or holds non-finite values.
    """
    k = np.asarray(k, dtype=np.float64)
    l = np.asarray(l, dtype=np.float64)
    if k.shape != l.shape or k.ndim != 2 or k.shape[0] != k.shape[1]:
        raise ValueError(f"Pass two square Gram matrices of the same images, not shapes {k.shape} and {l.shape}.")
    if not (np.all(np.isfinite(k)) and np.all(np.isfinite(l))):
        return float("nan")
    nk, nl = np.linalg.norm(k), np.linalg.norm(l)
    if nk == 0 or nl == 0:
        return float("nan")
    return float(np.clip(np.sum(k * l) / (nk * nl), 0.0, 1.0))


def linear_cka(x, y) -> float:
    """Linear CKA between two representations of the same images.

    Args:
        x: ``(n, ...)`` features of n images (anything after the first axis is flattened).
        y: ``(n, ...)`` other features of the same n images, in the same order.

    Returns:
        The CKA in ``[0, 1]`` (1: the same representation up to rotation and scale); NaN when
        either side has no variance or holds non-finite values.

    Raises:
        ValueError: the two do not hold the same number of images, or fewer than 2.
    """
    a, b = _matrix(x, "x"), _matrix(y, "y")
    if len(a) != len(b):
        raise ValueError(f"`x` and `y` must describe the same images: {len(a)} rows vs {len(b)}.")
    if len(a) < 2:
        raise ValueError("CKA needs at least 2 images.")
    if not (np.all(np.isfinite(a)) and np.all(np.isfinite(b))):
        return float("nan")
    a = a - a.mean(axis=0, keepdims=True)
    b = b - b.mean(axis=0, keepdims=True)
    if max(a.shape[1], b.shape[1]) > len(a):  # Gram form: n × n products
        return cka_from_grams(a @ a.T, b @ b.T)
    cross = np.linalg.norm(b.T @ a) ** 2  # feature form: p × q products
    na, nb = np.linalg.norm(a.T @ a), np.linalg.norm(b.T @ b)
    if na == 0 or nb == 0:
        return float("nan")
    return float(np.clip(cross / (na * nb), 0.0, 1.0))
