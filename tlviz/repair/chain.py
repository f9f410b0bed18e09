"""The state a chain of repairs shares: the copy being repaired, what it is fed, and the two halves of the images.

`Chain` holds the current copy (`model`), the preset it is fed (`feed`), the working preset the
estimating steps run under (`working`), and the seeded split of the images into `fit` (what a step
estimates from) and `eval` (what every accuracy is measured on). `predictions` runs a model over
one half once per model and preset (`tlviz.memory`: compiled, in batches from the memory budget).
"""

from __future__ import annotations

import numpy as np

from tlviz.diagnose.base import SEED
from tlviz.errors import RepairRefused
from tlviz.stats import paired_difference

#: Fewest images each half may hold for a step that estimates something from the images.
MIN_HALF = 8


def split_halves(labels: np.ndarray, seed: int = SEED) -> tuple[np.ndarray, np.ndarray]:
    """A seeded split of the images into two halves, class by class (each class split in two).

    Args:
        labels: one label per image (the split keeps each class's share in both halves).
        seed: the random seed. Defaults to `tlviz.diagnose.base.SEED`.

    Returns:
        ``(fit, eval)``: sorted image indices; `fit` gets the smaller half of a class with an
        odd count, so the measurement never rests on fewer images than the estimate.
    """
    labels = np.asarray(labels)
    rng = np.random.default_rng(seed)
    fit, held = [], []
    for c in np.unique(labels):
        idx = rng.permutation(np.flatnonzero(labels == c))
        cut = len(idx) // 2
        fit.append(idx[:cut])
        held.append(idx[cut:])
    return np.sort(np.concatenate(fit)).astype(np.int64), np.sort(np.concatenate(held)).astype(np.int64)


class Chain:
    """The copy being repaired and the images it is proven on.

    Args:
        images: the ``uint8`` image array ``(N, H, W, C)``.
        labels: labels in the model's output order (None: no step may measure accuracy).
        k: the number of classes the model tells apart.
        inference_preset: what the user's code sends.
        estimate: whether a step estimates from the images (then the images are split in halves).
        progress: ``progress(fraction, text)``.
    """

    def __init__(self, model, images: np.ndarray, labels: np.ndarray | None, k: int, inference_preset: str,
                 estimate: bool, progress=None):
        self.model = model
        self.images = images
        self.labels = None if labels is None else np.asarray(labels, dtype=np.int64)
        self.k = int(k)
        self.inference_preset = inference_preset
        self.feed = inference_preset
        self.working = inference_preset
        self._say = progress or (lambda f, t: None)
        self._step = self._span = (0.0, 1.0)
        self._cache: dict = {}
        self._keep: list = []  # models whose predictions are cached (their ids stay valid)
        self.bn_statistics: dict = {}  # preset -> BatchNormalization statistics estimated on `fit` (AdaBN)
        n = len(images)
        if labels is None:
            self.fit, self.eval = np.arange(0, dtype=np.int64), np.arange(n, dtype=np.int64)
        elif estimate:
            self.fit, self.eval = split_halves(self.labels)
        else:
            self.fit, self.eval = np.arange(0, dtype=np.int64), np.arange(n, dtype=np.int64)
        self.estimate = estimate

    # progress ---------------------------------------------------------------------
    def span(self, start: float, stop: float) -> None:
        """The part of the whole run the next step covers (its calls of `say` fill it)."""
        self._step = self._span = (start, stop)

    def sub(self, start: float, stop: float) -> None:
        """The part of the current step (fractions of it) the next calls of `say` cover."""
        a, b = self._step
        self._span = (a + (b - a) * start, a + (b - a) * stop)

    def say(self, fraction: float, text: str) -> None:
        a, b = self._span
        self._say(a + (b - a) * min(max(float(fraction), 0.0), 1.0), text)

    # measurements ---------------------------------------------------------------------
    def require_halves(self, what: str, minimum: int = MIN_HALF) -> None:
        """Refuse when either half holds fewer than `minimum` images."""
        if min(len(self.fit), len(self.eval)) < minimum:
            raise RepairRefused(
                f"Too few images to {what}: it is estimated on one half of the images and measured on the other, "
                f"and each half needs at least {minimum} images ({len(self.fit)} and {len(self.eval)} here). Add "
                "images.")

    def predictions(self, model, preset: str, half: str, text: str = "") -> np.ndarray:
        """The classes `model` predicts for the images of `half` (``"fit"`` or ``"eval"``) prepared with `preset`.

        Computed once per model, preset and half.
        """
        from tlviz.memory import plan_batch, predict_batches
        from tlviz.outputs import predicted_classes
        from tlviz.presets import apply_preset

        key = (id(model), preset, half)
        if key not in self._cache:
            idx = self.fit if half == "fit" else self.eval
            arr = self.images[idx]
            plan = plan_batch(model, "inference", n=max(len(arr), 1))
            label = text or f"Running the model on the {'estimation' if half == 'fit' else 'held-out'} images " \
                            f"({preset})…"
            out = predict_batches(model, arr, lambda x: apply_preset(x, preset), plan,
                                  progress=lambda done, total: self.say(done / max(total, 1), label))
            self._cache[key] = np.asarray(predicted_classes(out), dtype=np.int64) if len(arr) else \
                np.zeros(0, np.int64)
            self._keep.append(model)
        return self._cache[key]

    def correct(self, model, preset: str, half: str = "eval") -> np.ndarray:
        """Per image of `half`, whether `model` fed `preset` is right."""
        labels = self.labels[self.fit if half == "fit" else self.eval]
        return self.predictions(model, preset, half) == labels

    def accuracy(self, model, preset: str, half: str = "eval") -> float:
        c = self.correct(model, preset, half)
        return float(np.mean(c)) if len(c) else float("nan")

    def compare(self, before: tuple, after: tuple) -> dict:
        """Accuracy of ``(model, preset)`` `before` and `after` on the held-out half, with the paired interval.

        Returns:
            ``{"before", "after", "interval", "n_eval"}``.
        """
        a, b = self.correct(*after), self.correct(*before)
        d = paired_difference(a, b)
        return {"before": d.accuracy_b, "after": d.accuracy_a, "interval": [d.low, d.high], "n_eval": d.n}
