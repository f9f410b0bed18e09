"""The out-of-fold linear probe of ``likely-mislabelled``: which images, the fit, the held-out probabilities.

The check (`tlviz.diagnose.data.check_likely_mislabelled`) asks whether a linear probe on the
frozen base's features, trained on the other folds, confidently names another class than an
image's folder. Its measurement lives here, below the context, because the preset comparison
(`tlviz.diagnose.context.DiagnosisContext`) keeps the features of the probe's images on its way
and so needs to know which images those are (`mislabel_sample`) before the check runs.

- `mislabel_sample(labels, n_classes)`: the images the probe scores (seeded, class-balanced).
- `fit_probe(x, y, n_classes)` and `probe_probabilities(probe, x)`: multinomial logistic
  regression with an L2 penalty, written here.
- `out_of_fold(feats, labels, groups, n_classes)`: every image's class probabilities from a
  probe that never saw it, nor a copy of it (copies of one image stay in one fold).
"""

from __future__ import annotations

import numpy as np

from tlviz.diagnose.base import SEED, balanced_sample

#: The probe scores at most this many images (a seeded, class-balanced sample of a larger set).
MISLABEL_MAX_IMAGES = 3000
#: Folds of the out-of-fold probe.
FOLDS = 5
#: The probe works on at most this many principal components of the features.
PROBE_COMPONENTS = 128
#: L2 penalty of the probe on standardised components (strong enough that its probabilities are not
#: all 0 or 1 on a few hundred images).
PROBE_L2 = 0.01
#: Gradient steps of the probe's fit.
PROBE_STEPS = 300


def group_folds(labels: np.ndarray, groups: np.ndarray, k: int, seed: int = SEED) -> np.ndarray:
    """A fold per image: stratified by label, every group (copies of one image) in one fold."""
    rng = np.random.default_rng(seed)
    fold = np.empty(len(labels), dtype=np.int64)
    load = np.zeros((k, int(labels.max()) + 1), dtype=np.int64)
    uniq = np.unique(groups)
    order = rng.permutation(len(uniq))
    for g in uniq[order]:
        members = np.flatnonzero(groups == g)
        c = int(labels[members[0]])
        f = int(np.argmin(load[:, c] + rng.random(k) * 1e-3))
        fold[members] = f
        load[f, c] += len(members)
    return fold


def _components(feats: np.ndarray, limit: int = PROBE_COMPONENTS) -> np.ndarray:
    """The features centred and projected on their first principal components (no labels involved)."""
    x = feats - feats.mean(axis=0)
    if x.shape[1] <= limit:
        return x
    _, _, vt = np.linalg.svd(x, full_matrices=False)
    return x @ vt[:limit].T


def fit_probe(x: np.ndarray, y: np.ndarray, n_classes: int, l2: float = PROBE_L2,
              steps: int = PROBE_STEPS) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Multinomial logistic regression with an L2 penalty, fitted by gradient descent (Nesterov momentum).

    Args:
        x: ``(n, d)`` features; standardised here with their own mean and spread.
        y: ``(n,)`` integer labels below `n_classes`.
        n_classes: the number of classes.
        l2: the penalty on the weights. Defaults to `PROBE_L2`.
        steps: gradient steps. Defaults to `PROBE_STEPS`.

    Returns:
        ``(weights, bias, mean, scale)``: predict with `probe_probabilities`.
    """
    mean = x.mean(axis=0)
    # One scale for every dimension (the root mean variance): per-dimension scaling would blow up directions
    # that only hold float noise (a base whose features barely vary) into confident nonsense.
    scale = float(np.sqrt(np.mean(x.var(axis=0)))) + 1e-12
    z = (x - mean) / scale
    n, d = z.shape
    onehot = np.eye(n_classes)[y]
    # Step size from the gradient's Lipschitz constant: |z|^2 / (2n) + l2 (power iteration on z^T z).
    v = np.random.default_rng(SEED).normal(size=d)
    for _ in range(20):
        v = z.T @ (z @ v)
        v /= np.linalg.norm(v) + 1e-12
    lipschitz = float(np.linalg.norm(z @ v) ** 2) / (2 * n) + l2
    step = 1.0 / lipschitz
    w = np.zeros((d, n_classes))
    b = np.zeros(n_classes)
    w_prev, b_prev = w.copy(), b.copy()
    for t in range(1, steps + 1):
        mom = (t - 1) / (t + 2)
        wl, bl = w + mom * (w - w_prev), b + mom * (b - b_prev)
        p = _softmax(z @ wl + bl)
        g = p - onehot
        w_prev, b_prev = w, b
        w = wl - step * (z.T @ g / n + l2 * wl)
        b = bl - step * g.mean(axis=0)
    return w, b, mean, scale


def probe_probabilities(probe, x: np.ndarray) -> np.ndarray:
    """Class probabilities of a `fit_probe` result for features `x`."""
    w, b, mean, scale = probe
    return _softmax(((x - mean) / scale) @ w + b)


def _softmax(z: np.ndarray) -> np.ndarray:
    z = z - z.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


def out_of_fold(feats: np.ndarray, labels: np.ndarray, groups: np.ndarray, n_classes: int,
                folds: int = FOLDS) -> np.ndarray:
    """Every image's class probabilities from a probe that never saw it (nor a copy of it).

    Args:
        feats: ``(n, d)`` features.
        labels: ``(n,)`` integer labels.
        groups: ``(n,)`` group ids; images of one group are held out together.
        n_classes: the number of classes.
        folds: the number of folds. Defaults to `FOLDS`.

    Returns:
        ``(n, n_classes)`` probabilities.
    """
    x = _components(np.asarray(feats, dtype=np.float64))
    fold = group_folds(labels, groups, folds)
    probs = np.zeros((len(labels), n_classes))
    for f in range(folds):
        test = fold == f
        if not test.any() or test.all():
            continue
        probe = fit_probe(x[~test], labels[~test], n_classes)
        probs[test] = probe_probabilities(probe, x[test])
    return probs


def mislabel_sample(labels, n_classes: int) -> np.ndarray:
    """The images the likely-mislabelled probe uses (sorted indices; empty when it cannot run).

    A seeded, class-balanced sample of at most `MISLABEL_MAX_IMAGES` images of the classes that have
    `FOLDS` or more (one per fold); empty when fewer than two classes do. It depends on the labels
    alone, so the preset comparison can keep these images' features on its way (`DiagnosisContext`).
    """
    all_labels = np.asarray(labels, dtype=np.int64)
    usable = np.flatnonzero(np.bincount(all_labels, minlength=n_classes) >= FOLDS)
    if len(usable) < 2:
        return np.array([], dtype=np.int64)
    keep = np.flatnonzero(np.isin(all_labels, usable))
    return keep[balanced_sample(all_labels[keep], MISLABEL_MAX_IMAGES, SEED)]
