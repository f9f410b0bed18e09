"""The pre-training probe: do the base's features separate these classes better than random ones?

A nearest-class-mean (cosine) probe is scored leave-one-out on the features at
the head's input, on a seeded, class-balanced sample of at most
`PROBE_MAX_IMAGES` distinct images (an exact duplicate of an image already in
the sample is left out, so that it cannot stand in for itself): each image is
classified by the class means of all the other images of the sample, once on
the model's own features and once on the features of each of
`PROBE_RANDOM_INITS` copies of the same architecture re-initialised
(`fresh_clone`; the best copy counts). Both probes are therefore scored on the
same held-out images, and `tlviz.stats.paired_difference` turns the two
per-image outcomes into the gain of the pre-trained features with its 95 %
interval.
The pre-trained features usually come from the preset comparison's own pass
(`tlviz.normalize.FeatureTap`), so only the random copies are run again.

`DiagnosisContext.probe` runs it once per diagnosis (`run_probe`, a `Probe`);
``pretraining-no-better-than-random`` and ``no-better-than-chance`` read it.
"""

from __future__ import annotations

import hashlib
import warnings
from dataclasses import dataclass

import numpy as np

from tlviz.diagnose.base import SEED
from tlviz.diagnose.clones import fresh_clone
from tlviz.kerasinternals import tensor_history
from tlviz.errors import CheckSkipped
from tlviz.presets import apply_preset
from tlviz.stats import PairedDifference, chance_level, format_interval, paired_difference, wilson_interval

#: The probe's sample: at most this many images in all ...
PROBE_MAX_IMAGES = 400
#: ... and at most this many per class.
PROBE_MAX_PER_CLASS = 40
#: Fresh random copies of the architecture compared with the pre-trained weights. Random initialisations
#: differ among themselves by several points, so the pre-trained features are compared with the best copy.
PROBE_RANDOM_INITS = 3


@dataclass
class Probe:
    """The probe's result.

    Attributes:
        pretrained: leave-one-out accuracy on the base's own features.
        random: leave-one-out accuracy on the features of the best of `PROBE_RANDOM_INITS` fresh random copies.
        n_images / n_classes: the sample (every image is held out once, so both
            accuracies are measured on all `n_images`).
        shots: images per class the class means are computed from (the smallest
            class of the sample, less the held-out image).
        feature_layer / feature_dim: where the features were taken, and their size.
        n_test: images each probe was scored on.
        gain: the pre-trained accuracy minus the random one on the same images,
            with its 95 % interval (`tlviz.stats.PairedDifference`).
        majority: the share of the sample's most common class.
        duplicates: exact duplicate images left out of the sample.
    """

    pretrained: float
    random: float
    n_images: int
    n_classes: int
    shots: int
    feature_layer: str
    feature_dim: int
    n_test: int = 0
    gain: PairedDifference | None = None
    majority: float = 0.0
    duplicates: int = 0

    @property
    def chance(self) -> float:
        """The probe's chance level: always answering the sample's most common class."""
        return max(self.majority, 1.0 / max(self.n_classes, 1))

    @property
    def interval(self) -> tuple[float, float]:
        """95 % Wilson interval of the pre-trained probe's accuracy."""
        return wilson_interval(int(round(self.pretrained * self.n_test)), self.n_test)

    @property
    def random_interval(self) -> tuple[float, float]:
        """95 % Wilson interval of the random probe's accuracy."""
        return wilson_interval(int(round(self.random * self.n_test)), self.n_test)

    @property
    def signal(self) -> bool:
        """Whether the base's features carry signal: the probe is clearly above chance."""
        return self.interval[0] > self.chance

    def required_gain(self, margin: float, headroom: float) -> float:
        """The gain pre-training must show: `margin`, or the share `headroom` of the random probe's errors
        when that is smaller (random features that already score near 100 % leave no room for `margin`)."""
        return float(min(margin, headroom * (1.0 - self.random)))

    def signal_sentence(self) -> str:
        lo, hi = self.interval
        what = "carry signal for these classes" if self.signal else "carry no clear signal for these classes"
        return (f"The base's features {what}: a nearest-class-mean probe on them reaches {self.pretrained:.1%} "
                f"(95 % interval {format_interval(lo, hi)}, each of {self.n_test} images held out in turn) against "
                f"{self.chance:.1%} chance, on a seeded, class-balanced sample.")


def feature_tensor(model):
    """Where the probe reads the base's features: the head's input.

    Args:
        model: the Keras model.

    Returns:
        ``(index, tensor, name)``: the index of the first top-level head layer, its input tensor, and
        the name of the layer below it.

    Raises:
        CheckSkipped: the model has no weighted base below a head, or its head's input cannot be found.
    """
    from tlviz.layers import head_input, layer_table

    table = layer_table(model)
    weighted_base = table[(table["role"] == "base") & table["holds_weights"]]
    if not len(weighted_base):
        raise CheckSkipped("The model has no pre-trained base with weights below its head, so there are no "
                           "pre-trained features to probe.")
    try:
        idx, tensor = head_input(model, table)
    except ValueError as exc:
        raise CheckSkipped(f"{exc} So there is no feature layer to probe.") from None
    below = getattr(tensor_history(tensor)[0], "name", None)
    return idx, tensor, below or f"input of {model.layers[idx].name}"


def layer_features(model, idx: int, images: np.ndarray, preset: str) -> np.ndarray:
    """Features at the head's input, in batches planned from the memory budget (compiled passes).

    Args:
        model: the Keras model.
        idx: the first head layer's index (`feature_tensor`).
        images: uint8 images.
        preset: the preset they are prepared with.

    Returns:
        ``(n, channels)`` float64 features (spatial axes averaged).
    """
    import keras

    from tlviz.memory import forward, plan_batch

    t = model.layers[idx].input
    extractor = keras.Model(model.inputs[0], t)
    batch = plan_batch(extractor, "inference", n=len(images)).batch_size
    run = forward(extractor)
    out = []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for i in range(0, len(images), batch):
            f = np.asarray(run(apply_preset(images[i:i + batch], preset)), dtype=np.float64)
            if f.ndim > 2:
                f = f.mean(axis=tuple(range(1, f.ndim - 1)))
            out.append(f.reshape(len(f), -1))
    return np.concatenate(out)


def distinct_images(images: np.ndarray) -> np.ndarray:
    """Whether each image is the first of its exact duplicates (same pixels).

    Args:
        images: the images.

    Returns:
        A boolean mask, True for the first copy of each distinct image.
    """
    seen: set[bytes] = set()
    keep = np.zeros(len(images), dtype=bool)
    for i, image in enumerate(images):
        key = hashlib.blake2b(np.ascontiguousarray(image).tobytes(), digest_size=16).digest()
        keep[i] = key not in seen
        seen.add(key)
    return keep


def probe_sample(labels: np.ndarray, rng, distinct: np.ndarray | None = None) -> tuple[np.ndarray, int]:
    """Seeded, stratified sample of image indices (classes with at least 4 distinct images).

    Args:
        labels: the image set's labels.
        rng: a seeded `numpy.random.Generator`.
        distinct: per image, whether it is the first of its exact duplicates
            (`distinct_images`); the others are left out. Defaults to keeping every image.

    Returns:
        ``(indices, shots)``: the sample and the images per class its class means
        are computed from when one image is held out.
    """
    labels = np.asarray(labels)
    keep = np.ones(len(labels), dtype=bool) if distinct is None else np.asarray(distinct, dtype=bool)
    classes = [c for c in np.unique(labels) if np.sum((labels == c) & keep) >= 4]
    if len(classes) < 2:
        raise CheckSkipped("The probe needs at least two classes with four or more distinct images each.")
    per_class = int(min(PROBE_MAX_PER_CLASS, max(4, PROBE_MAX_IMAGES // len(classes))))
    chosen = []
    for c in classes:
        idx = np.flatnonzero((labels == c) & keep)
        chosen.append(rng.permutation(idx)[:per_class])
    shots = int(min(len(c) for c in chosen) - 1)
    return np.concatenate(chosen), shots


def _loo_correct(feats: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """Per image, whether the nearest-class-mean (cosine) probe built from all *other* images is right.

    The features are centred on the sample's mean (no labels involved) and scaled
    to unit length; an image's own class mean leaves it out, exactly.
    """
    x = feats - feats.mean(axis=0)
    x = x / (np.linalg.norm(x, axis=1, keepdims=True) + 1e-12)
    classes, own = np.unique(labels, return_inverse=True)
    sums = np.stack([x[own == c].sum(axis=0) for c in range(len(classes))])
    dots = x @ sums.T
    norms2 = np.repeat(np.sum(sums * sums, axis=1)[None, :], len(x), axis=0)
    rows = np.arange(len(x))
    self_dot = np.sum(x * x, axis=1)
    with_self = dots[rows, own]
    dots[rows, own] = with_self - self_dot  # the own class's sum without the image
    norms2[rows, own] = norms2[rows, own] - 2 * with_self + self_dot
    cosine = dots / np.sqrt(np.maximum(norms2, 1e-24))
    return np.argmax(cosine, axis=1) == own


def tapped_features(ctx, preset: str, sample: np.ndarray) -> np.ndarray | None:
    """The probe's features under `preset`, kept by the preset comparison.

    Args:
        ctx: the `DiagnosisContext` (its normalization report, when the comparison ran).
        preset: the preset.
        sample: sorted image indices.

    Returns:
        ``(len(sample), channels)`` float64 features, or None when the comparison did not keep them all.
    """
    report = ctx.__dict__.get("normalization")
    ev = None if report is None else report._preset_evals().get(preset)
    kept = None if ev is None or ev.features is None else getattr(ev, "feature_indices", None)
    if kept is None or len(kept) != len(ev.features):
        return None
    sample = np.asarray(sample)
    pos = np.searchsorted(kept, sample)
    if len(kept) == 0 or np.any(pos >= len(kept)) or np.any(kept[np.minimum(pos, len(kept) - 1)] != sample):
        return None  # some image's features were not kept
    return ev.features[pos].astype(np.float64)


def run_probe(ctx, with_random: bool = True) -> Probe:
    """Runs the probe on a context's seeded, class-balanced sample.

    Args:
        ctx: the `DiagnosisContext` (its `probe_setup` and, when measured, its normalization).
        with_random: also probe `PROBE_RANDOM_INITS` fresh random copies (one inference pass over the
            sample each). Defaults to `True`; `False` measures the pre-trained features alone (``random``
            is NaN and ``gain`` None), which is all ``no-better-than-chance`` reads.

    Returns:
        A `Probe`.

    Raises:
        CheckSkipped: no probe can run (no base below a head, NaN features, an
            architecture that cannot be re-created).
    """
    setup = ctx.probe_setup
    sample = setup["sample"]
    labels = np.asarray(ctx.images.labels)[sample]
    images = ctx.images.images[sample]
    idx, name = setup["idx"], setup["name"]
    preset = ctx.working_preset
    pre_feats = tapped_features(ctx, preset, sample)
    if pre_feats is None:
        ctx.say(0.1, "Probe: features of the pre-trained base…")
        pre_feats = layer_features(ctx.model, idx, images, preset)
    if not np.all(np.isfinite(pre_feats)):
        raise CheckSkipped("The base's features contain NaN or infinite values, so no probe can be trained on them.")
    pre = _loo_correct(pre_feats, labels)
    n_classes = int(len(np.unique(labels)))
    majority = chance_level(np.unique(labels, return_inverse=True)[1], n_classes)
    if not with_random:
        return Probe(float(pre.mean()), float("nan"), int(len(sample)), n_classes, int(setup["shots"]), name,
                     int(pre_feats.shape[1]), int(len(sample)), None, majority, int(setup.get("duplicates", 0)))
    rand = []
    for r in range(PROBE_RANDOM_INITS):
        ctx.say(0.4 + 0.3 * r, f"Probe: the same architecture with fresh random weights ({r + 1} of "
                               f"{PROBE_RANDOM_INITS})…")
        try:
            fresh = fresh_clone(ctx.model, seed=SEED + 1 + r)
        except Exception as exc:
            raise CheckSkipped(f"The architecture could not be re-created with fresh weights "
                               f"({type(exc).__name__}: {str(exc)[:120]}).") from None
        feats = layer_features(fresh, idx, images, preset)
        feats = np.nan_to_num(feats, nan=0.0, posinf=0.0, neginf=0.0)
        rand.append(_loo_correct(feats, labels))
        del fresh
    best = max(rand, key=lambda c: float(c.mean()))
    gain = paired_difference(pre, best)
    return Probe(float(pre.mean()), float(best.mean()), int(len(sample)), n_classes, int(setup["shots"]), name,
                 int(pre_feats.shape[1]), int(len(sample)), gain, majority, int(setup.get("duplicates", 0)))
