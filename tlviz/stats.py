"""Small statistics shared by the measurements: chance level and accuracy intervals.

An accuracy measured on a few hundred images is an estimate. Every decision
that compares an accuracy with a threshold uses its interval, so tlviz names
no "best" and raises no finding where the numbers cannot tell.

Two settings (or two feature extractors) compared on the same images are
compared image by image: `paired_difference` gives the difference of their
accuracies with Newcombe's hybrid score interval for paired proportions (built
from the two Wilson intervals and the correlation of the outcomes), so a gap
counts only when its interval clears the threshold, and a sample too small for
any result to clear it is said to be undecided (`decide`).

Public API: `chance_level(labels, n_classes)`, `wilson_interval(correct, n, z=Z95)`,
`clearly_above(correct, n, level, z=Z95)`, `format_interval(lo, hi)`, `Z95`, `NOTICEABLE_DROP`,
`PairedDifference`, `paired_difference(correct_a, correct_b, z=Z95)`, `format_points(lo, hi)`,
`decide(low, high, threshold)`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

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


def format_points(lo: float, hi: float) -> str:
    """An interval of an accuracy difference in points: ``"-3.2 to +6.1 points"``."""
    return f"{lo * 100:+.1f} to {hi * 100:+.1f} points"


@dataclass(frozen=True)
class PairedDifference:
    """The difference between two accuracies measured on the same images.

    Attributes:
        difference: accuracy of `a` minus accuracy of `b` (a fraction).
        low / high: its 95 % interval (Newcombe's hybrid score interval for paired proportions).
        n: images compared.
        only_a / only_b: images right under `a` only / under `b` only (the discordant pairs).
        accuracy_a / accuracy_b: the two accuracies.
    """

    difference: float
    low: float
    high: float
    n: int
    only_a: int
    only_b: int
    accuracy_a: float
    accuracy_b: float

    @property
    def interval(self) -> tuple[float, float]:
        return self.low, self.high

    def describe(self) -> str:
        """``"+12.0 points (95 % interval +7.5 to +16.4 points, 200 images)"``."""
        return (f"{self.difference * 100:+.1f} points (95 % interval {format_points(self.low, self.high)}, "
                f"{self.n} images)")


def paired_difference(correct_a, correct_b, z: float = Z95) -> PairedDifference:
    """Accuracy of `a` minus accuracy of `b` on the same images, with its interval.

    The interval is Newcombe's hybrid score interval for a difference of paired
    proportions (Newcombe 1998, method 10): it combines the Wilson intervals of
    the two accuracies with the correlation of the per-image outcomes, so it
    stays inside ``[-1, 1]`` and behaves with few discordant images, where the
    plain normal (Wald) interval is far too narrow.

    Args:
        correct_a: per image, whether `a` was right (booleans).
        correct_b: per image, whether `b` was right, aligned with `correct_a`.
        z: the normal quantile. Defaults to `Z95`.

    Returns:
        A `PairedDifference`; with no images the interval is ``(-1, 1)``.
    """
    ca = np.asarray(correct_a, dtype=bool).ravel()
    cb = np.asarray(correct_b, dtype=bool).ravel()
    if ca.shape != cb.shape:
        raise ValueError(f"`correct_a` and `correct_b` must be aligned: {ca.shape} vs {cb.shape} images.")
    n = int(len(ca))
    both = int(np.sum(ca & cb))
    only_a = int(np.sum(ca & ~cb))
    only_b = int(np.sum(~ca & cb))
    if n == 0:
        return PairedDifference(0.0, -1.0, 1.0, 0, 0, 0, float("nan"), float("nan"))
    neither = n - both - only_a - only_b
    p1, p2 = (both + only_a) / n, (both + only_b) / n
    l1, u1 = wilson_interval(both + only_a, n, z)
    l2, u2 = wilson_interval(both + only_b, n, z)
    margins = (both + only_a) * (only_b + neither) * (both + only_b) * (only_a + neither)
    if margins == 0:
        phi = 0.0
    else:
        cross = both * neither - only_a * only_b
        if cross > 0:  # Newcombe's continuity correction of the correlation
            cross = max(cross - n / 2, 0.0)
        phi = cross / math.sqrt(margins)
    d = p1 - p2
    low = d - math.sqrt(max((p1 - l1) ** 2 - 2 * phi * (p1 - l1) * (u2 - p2) + (u2 - p2) ** 2, 0.0))
    high = d + math.sqrt(max((u1 - p1) ** 2 - 2 * phi * (u1 - p1) * (p2 - l2) + (p2 - l2) ** 2, 0.0))
    return PairedDifference(float(d), max(-1.0, low), min(1.0, high), n, only_a, only_b, float(p1), float(p2))


def decide(low: float, high: float, threshold: float) -> bool | None:
    """Which side of `threshold` an interval lies on.

    Args:
        low / high: the interval.
        threshold: the value it is compared with.

    Returns:
        True when the whole interval is at or above `threshold`, False when it
        is entirely below, None when it straddles it (the images cannot decide).
    """
    if low >= threshold:
        return True
    if high < threshold:
        return False
    return None
