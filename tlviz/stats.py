"""Small statistics shared by the measurements: chance level and accuracy intervals.

An accuracy measured on a few hundred images is an estimate. Every decision
that compares an accuracy with a threshold uses its interval, so tlviz names
no "best" and raises no finding where the numbers cannot tell.

Public API: `chance_level(labels, n_classes)`, `wilson_interval(correct, n, z=Z95)`,
`clearly_above(correct, n, level, z=Z95)`, `format_interval(lo, hi)`, `Z95`, `NOTICEABLE_DROP`.
"""

from __future__ import annotations

import math

import numpy as np

#: Two-sided 95 % normal quantile.
Z95 = 1.959963984540054
#: An accuracy gap (fraction) between two input settings on the same images that counts as a problem:
#: 5 points. The normalization findings (`tlviz.normalize`) and the diagnose registry's preset checks
#: (`tlviz.diagnose.registry`, threshold ``drop``, where the reason is written) both use it.
NOTICEABLE_DROP = 0.05


def chance_level(labels: np.ndarray, n_classes: int) -> float:
    """Accuracy of always predicting the most common class (at least ``1 / n_classes``).

    Args:
        labels: integer labels.
        n_classes: the number of classes the model can predict.

    Returns:
        The chance accuracy as a fraction.
    """
    labels = np.asarray(labels, dtype=np.int64)
    if len(labels) == 0:
        return 1.0 / max(n_classes, 1)
    return float(max(np.bincount(labels, minlength=n_classes).max() / len(labels), 1.0 / max(n_classes, 1)))


def wilson_interval(correct: int, n: int, z: float = Z95) -> tuple[float, float]:
    """Wilson score interval of an accuracy of ``correct / n`` (95 % by default).

    Args:
        correct: images classified correctly.
        n: images in all.
        z: the normal quantile. Defaults to `Z95`.

    Returns:
        ``(low, high)`` as fractions; ``(0.0, 1.0)`` when `n` is 0.
    """
    n = int(n)
    if n <= 0:
        return 0.0, 1.0
    p = float(correct) / n
    denom = 1.0 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    return max(0.0, centre - half), min(1.0, centre + half)


def clearly_above(correct: int, n: int, level: float, z: float = Z95) -> bool:
    """Whether the accuracy's interval lies entirely above `level`."""
    return wilson_interval(correct, n, z)[0] > level


def format_interval(lo: float, hi: float) -> str:
    """``"27.9–41.4 %"``."""
    return f"{lo * 100:.1f}–{hi * 100:.1f} %"
