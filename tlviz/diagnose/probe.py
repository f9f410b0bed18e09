"""The pre-training probe: do the base's features separate these classes better than random ones?

A nearest-class-mean (cosine) linear probe is trained on the features at the
head's input, on a seeded, class-balanced sample of at most `PROBE_MAX_IMAGES`
images, once with the model's own weights and `PROBE_RANDOM_INITS` times with
the same architecture re-initialised (`fresh_clone`). The pre-trained features
usually come from the preset comparison's own pass (`tlviz.normalize.FeatureTap`),
so only the random copies are run again.

`DiagnosisContext.probe` runs it once per diagnosis (`run_probe`, a `Probe`);
``pretraining-no-better-than-random`` and ``no-better-than-chance`` read it.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from tlviz.diagnose.base import SEED
from tlviz.diagnose.clones import fresh_clone
from tlviz.errors import CheckSkipped
from tlviz.presets import apply_preset
from tlviz.stats import format_interval, wilson_interval

#: The probe's sample: at most this many images in all ...
PROBE_MAX_IMAGES = 400
#: ... and at most this many per class.
PROBE_MAX_PER_CLASS = 40
#: Training images per class in each split (fewer when a class has fewer than twice as many).
PROBE_SHOTS = 10
#: Random train / test splits averaged.
PROBE_SPLITS = 5
#: Fresh random copies of the architecture compared with the pre-trained weights.
PROBE_RANDOM_INITS = 1

if TYPE_CHECKING:
    from tlviz.diagnose.context import DiagnosisContext


@dataclass
class Probe:
    """The probe's result.

    Attributes:
        pretrained: accuracy on the base's own features (mean over the splits).
        random: accuracy on the features of fresh random copies.
        n_images / n_classes: the sample.
        shots: training images per class in each split.
        feature_layer / feature_dim: where the features were taken, and their size.
        n_test: test images in one split.
    """

    pretrained: float
    random: float
    n_images: int
    n_classes: int
    shots: int
    feature_layer: str
    feature_dim: int
    n_test: int = 0

    @property
    def chance(self) -> float:
        return 1.0 / max(self.n_classes, 1)

    @property
    def interval(self) -> tuple[float, float]:
        """95 % interval of the pre-trained probe's accuracy (on one split's test images: conservative)."""
        return wilson_interval(int(round(self.pretrained * self.n_test)), self.n_test)

    @property
    def signal(self) -> bool:
        """Whether the base's features carry signal: the probe is clearly above chance."""
        return self.interval[0] > self.chance

    def signal_sentence(self) -> str:
        lo, hi = self.interval
        what = "carry signal for these classes" if self.signal else "carry no clear signal for these classes"
        return (f"The base's features {what}: a nearest-class-mean probe on them reaches {self.pretrained:.1%} "
                f"(95 % interval {format_interval(lo, hi)}, {self.n_test} test images) against {self.chance:.1%} "
                f"chance, on a seeded, class-balanced sample of {self.n_images} images.")


def _feature_tensor(model):
    """(index of the first top-level head layer, its input tensor, its path) or CheckSkipped."""
    import keras

    from tlviz.layers import layer_table

    table = layer_table(model)
    roles = dict(zip(table["path"], table["role"]))
    weighted_base = table[(table["role"] == "base") & table["holds_weights"]]
    if not len(weighted_base):
        raise CheckSkipped("The model has no pre-trained base with weights below its head, so there are no "
                           "pre-trained features to probe.")
    for idx, layer in enumerate(model.layers):
        if type(layer).__name__ == "InputLayer":
            continue
        if isinstance(layer, keras.Model):
            role = next((r for p, r in roles.items() if p.startswith(layer.name + "/")), "base")
        else:
            role = roles.get(layer.name, "base")
        if role == "head":
            try:
                tensor = layer.input
            except Exception as exc:
                raise CheckSkipped(f"The input of the head layer '{layer.name}' could not be traced "
                                   f"({str(exc)[:120]}).") from None
            history = getattr(tensor, "_keras_history", None)
            below = getattr(getattr(history, "operation", None), "name", None)
            return idx, tensor, below or f"input of {layer.name}"
    raise CheckSkipped("No classification head was found on top of the base, so there is no feature layer to probe.")


def _features(model, idx: int, images: np.ndarray, preset: str) -> np.ndarray:
    """Features at the head's input, in batches planned from the memory budget (compiled passes)."""
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


def _probe_sample(labels: np.ndarray, rng) -> tuple[np.ndarray, int]:
    """Seeded, stratified sample of image indices (classes with at least 4 images)."""
    classes = [c for c in np.unique(labels) if np.sum(labels == c) >= 4]
    if len(classes) < 2:
        raise CheckSkipped("The probe needs at least two classes with four or more images each.")
    per_class = int(min(PROBE_MAX_PER_CLASS, max(4, PROBE_MAX_IMAGES // len(classes))))
    chosen = []
    for c in classes:
        idx = np.flatnonzero(labels == c)
        chosen.append(rng.permutation(idx)[:per_class])
    shots = int(min(PROBE_SHOTS, min(len(c) for c in chosen) // 2))
    return np.concatenate(chosen), shots


def _ncm_accuracy(feats: np.ndarray, labels: np.ndarray, splits) -> float:
    """Nearest-class-mean (cosine) probe accuracy, averaged over the splits."""
    accs = []
    for train, test in splits:
        x = feats - feats[train].mean(axis=0)
        x = x / (np.linalg.norm(x, axis=1, keepdims=True) + 1e-12)
        classes = np.unique(labels[train])
        centres = np.stack([x[train][labels[train] == c].mean(axis=0) for c in classes])
        centres /= np.linalg.norm(centres, axis=1, keepdims=True) + 1e-12
        pred = classes[np.argmax(x[test] @ centres.T, axis=1)]
        accs.append(float(np.mean(pred == labels[test])))
    return float(np.mean(accs))


def _tapped_features(ctx: DiagnosisContext, preset: str, sample: np.ndarray) -> np.ndarray | None:
    """The probe's features under `preset`, kept by the preset comparison (None when it did not keep them)."""
    report = ctx.__dict__.get("normalization")
    ev = None if report is None else report._preset_evals().get(preset)
    if ev is None or ev.features is None or len(ev.features) != len(sample):
        return None
    order = np.sort(sample)
    return ev.features[np.searchsorted(order, sample)].astype(np.float64)


def run_probe(ctx: DiagnosisContext) -> Probe:
    """Runs the probe on a context's seeded, class-balanced sample.

    Args:
        ctx: the `DiagnosisContext` (its `probe_setup` and, when measured, its normalization).

    Returns:
        A `Probe`.

    Raises:
        CheckSkipped: no probe can run (no base below a head, NaN features, an
            architecture that cannot be re-created).
    """
    setup = ctx.probe_setup
    rng, sample, shots = setup["rng"], setup["sample"], setup["shots"]
    labels_all = np.asarray(ctx.images.labels)
    images = ctx.images.images[sample]
    labels = labels_all[sample]
    splits = []
    for _ in range(PROBE_SPLITS):
        train, test = [], []
        for c in np.unique(labels):
            idx = rng.permutation(np.flatnonzero(labels == c))
            train.append(idx[:shots])
            test.append(idx[shots:])
        splits.append((np.concatenate(train), np.concatenate(test)))
    idx, name = setup["idx"], setup["name"]
    preset = ctx.working_preset
    pre_feats = _tapped_features(ctx, preset, sample)
    if pre_feats is None:
        ctx.say(0.1, "Probe: features of the pre-trained base…")
        pre_feats = _features(ctx.model, idx, images, preset)
    if not np.all(np.isfinite(pre_feats)):
        raise CheckSkipped("The base's features contain NaN or infinite values, so no probe can be trained on them.")
    pre = _ncm_accuracy(pre_feats, labels, splits)
    rand = []
    for r in range(PROBE_RANDOM_INITS):
        ctx.say(0.4 + 0.3 * r, f"Probe: the same architecture with fresh random weights ({r + 1} of "
                               f"{PROBE_RANDOM_INITS})…")
        try:
            fresh = fresh_clone(ctx.model, seed=SEED + 1 + r)
        except Exception as exc:
            raise CheckSkipped(f"The architecture could not be re-created with fresh weights "
                               f"({type(exc).__name__}: {str(exc)[:120]}).") from None
        feats = _features(fresh, idx, images, preset)
        feats = np.nan_to_num(feats, nan=0.0, posinf=0.0, neginf=0.0)
        rand.append(_ncm_accuracy(feats, labels, splits))
        del fresh
    return Probe(pre, float(np.mean(rand)), int(len(sample)), int(len(np.unique(labels))), shots, name,
                 int(pre_feats.shape[1]), int(len(splits[0][1])))
