"""Diagnose: every check the engine has, on one model and one image set.

Users come with a symptom ("it doesn't learn", "it works in training but not
in production"), not a hypothesis. `diagnose` runs every check below and
answers with **findings** (`tlviz.findings.Finding`): most severe first,
grouped by the three areas of DESIGN.md, each with its evidence measured on
the user's own model and images, and a fix.

Checks (stable id — severity, area — fires when):

- ``no-trainable-weights`` — error, finetuning — every layer is frozen
  (from `tlviz.layers.freezing_findings`, like the next three).
- ``head-frozen`` — error, finetuning — the head is frozen while layers below it train.
- ``trainable-inside-frozen-model`` — warning, finetuning — layers set trainable
  inside a nested model marked frozen.
- ``bn-trainable-in-base`` — warning, finetuning — BatchNormalization trainable
  inside an unfrozen base.
- ``class-count-mismatch`` — error, finetuning — the image set's classes are not
  the model's outputs (by name when the model records class names, else by count).
- ``class-imbalance`` — warning, finetuning — the largest class has more than
  `IMBALANCE_RATIO` (3) times the images of the smallest.
- ``too-few-images`` — warning, finetuning — a class has fewer than
  `MIN_IMAGES_PER_CLASS` (20) images.
- ``weights-not-finite`` — error, pretraining — NaN or infinite weights.
- ``pretraining-no-better-than-random`` — warning, pretraining — a
  nearest-class-mean linear probe on the base's features beats the same probe
  on the same architecture with fresh (seeded) random weights by less than
  `PROBE_MARGIN` (10 points).
- ``normalization-mismatch`` — error, inference — the inference preset scores
  `MISMATCH_DROP` (5 points) or more below the preset the model expects; without
  labels, the label-free fingerprint decisively prefers another preset.
- ``double-normalization`` — error, inference — a Rescaling / Normalization
  layer at the input and a normalizing inference preset.
- ``label-order-mismatch`` — error, inference — re-ordering the classes raises
  accuracy by `PERMUTATION_GAIN` (20 points) or more to at least
  `PERMUTATION_MIN_ACCURACY` (80 %).
- ``bn-statistics-mismatch`` — warning, inference — batch statistics beat the
  stored moving statistics by `BN_GAP` (10 points) or more.
- ``training-mode-inference`` — info, inference — ``training=True`` flips
  predictions and/or overwrites BN statistics; names the layers.
- ``resize-sensitive`` / ``channel-order-sensitive`` — info, inference —
  accuracy depends on the resize method / RGB vs BGR (from
  `tlviz.normalize.normalization_findings`, as information: not a fault by itself).
- ``input-resized`` — info, inference — images were resized or converted to fit the model.
- ``no-better-than-chance`` — error, finetuning — no preset's accuracy is clearly above
  chance (95 % Wilson interval above the share of the most common class); the
  evidence says whether the base's features carry signal (probe), which points
  at the head or at the pre-training. ``normalization-mismatch`` is then skipped.

Every model pass runs compiled, in batches planned from ``TLVIZ_MEMORY_MB`` and
the model's activation sizes (`tlviz.memory`); the probe uses a seeded,
class-balanced sample of at most `PROBE_MAX_IMAGES` images, the training-mode
checks one of at most `TRAINING_MODE_IMAGES`.

The loaded model is never changed: checks that run it in training mode work on
a clone (`keras.models.clone_model` + `set_weights`). Checks that need labels
are *skipped with a sentence* (a `SkippedCheck` in the report) when the image
set is unlabelled or its classes do not match the model's outputs.

Public API
----------

- `diagnose(loaded_model, image_set, inference_preset="unit", progress=None,
  source=None, *, checks=None) -> DiagnosisReport`.
- `DiagnosisReport`: ``findings`` (sorted), ``skipped``, ``checks_run``,
  context fields, ``normalization`` (the `tlviz.normalize.NormalizationReport`
  it used, or None); ``by_area()``, ``counts_by_severity``, ``has_errors``, ``exit_code``,
  ``for_preset(preset)`` (re-judge the preset-dependent checks without running
  the model again), ``to_json()`` (the CLI object ``{"findings": [...]}``),
  ``to_dict()`` (the whole report), ``to_markdown()``.
- `SkippedCheck(id, title, reason)`.
- `CHECKS` (ordered `Check` registry), `CHECK_IDS`, `AREA_TITLES`.
- `DiagnosisContext` and one ``check_<id>(ctx) -> list[Finding]`` function per
  check (they raise `CheckSkipped` with a sentence when they cannot run).
- `best_assignment(confusion) -> ndarray`: the class permutation that explains
  a confusion matrix best (SciPy's Hungarian solver when installed, an exact
  search for up to 8 classes and a greedy match beyond otherwise).
- `clone_for_training_mode(model, noise=True, force_bn_batch_statistics=False)`
  and `fresh_clone(model, seed)`: the private copies the checks run.
- `DiagnosisRefused` (a `TlvizError`): the input cannot be diagnosed at all.
"""

from __future__ import annotations

import functools
import itertools
import json
import time
import warnings
from dataclasses import dataclass, field, replace
from typing import Callable

import numpy as np

from tlviz.errors import TlvizError
from tlviz.findings import AREAS, SEVERITIES, Finding, sort_findings
from tlviz.imagesets import RESIZE_DESCRIPTIONS, ImageSet
from tlviz.jsonsafe import json_safe
from tlviz.presets import PIXEL_PRESET, PRESETS, applicable_presets, apply_preset, preset_snippet
from tlviz.stats import chance_level, clearly_above, format_interval, wilson_interval

AREA_TITLES = {"pretraining": "Pre-training", "finetuning": "Fine-tuning", "inference": "Inference pipeline"}
SEVERITY_TITLES = {"error": "Error", "warning": "Warning", "info": "Info"}

#: Accuracy drop (fraction) from which a preset counts as clearly worse.
MISMATCH_DROP = 0.05
#: With labels, a preset within this accuracy of the best is a tie, won by the fingerprint's choice.
ACCURACY_TIE = 0.02
#: Without labels: the inference preset's fingerprint distance must exceed the best one by this much ...
FINGERPRINT_MARGIN = 0.1
#: ... and be this many times larger.
FINGERPRINT_RATIO = 3.0
#: label-order-mismatch: the best permutation must reach this accuracy ...
PERMUTATION_MIN_ACCURACY = 0.8
#: ... and beat the model's own order by this much.
PERMUTATION_GAIN = 0.2
#: bn-statistics-mismatch: batch statistics beat moving statistics by at least this accuracy.
BN_GAP = 0.10
#: bn-statistics-mismatch and training-mode-inference run the model in training mode on a seeded,
#: class-balanced sample of at most this many images (a training-mode pass costs about twice an inference pass).
TRAINING_MODE_IMAGES = 128
#: Images per batch when the model runs in training mode (batch statistics); smaller when the
#: memory budget (`tlviz.memory.plan_batch`) allows fewer (the evidence records the batch used).
TRAINING_BATCH = 64
#: pretraining-no-better-than-random: the pre-trained probe must beat the random one by this much.
PROBE_MARGIN = 0.10
PROBE_MAX_IMAGES = 400
PROBE_MAX_PER_CLASS = 40
PROBE_SHOTS = 10
PROBE_SPLITS = 5
PROBE_RANDOM_INITS = 1
#: class-imbalance: largest / smallest class.
IMBALANCE_RATIO = 3.0
#: too-few-images: images per class.
MIN_IMAGES_PER_CLASS = 20
#: Example images attached to a finding (file names, for the page's image strip).
EXAMPLES = 8
SEED = 0

_BN_CLASSES = ("BatchNormalization", "SyncBatchNormalization")
_NOISE_CLASSES = ("Dropout", "SpatialDropout1D", "SpatialDropout2D", "SpatialDropout3D", "GaussianDropout",
                  "AlphaDropout", "GaussianNoise")
_AUGMENT_CLASSES = ("RandAugment", "AugMix", "CutMix", "MixUp", "Solarization")


class DiagnosisRefused(TlvizError):
    """The model and image set cannot be diagnosed (the message says why and what to do)."""


class CheckSkipped(Exception):
    """Raised by a check that cannot run; the message is the sentence shown to the user."""


@dataclass(frozen=True)
class Check:
    """One registered check.

    Attributes:
        id: the stable id of the finding it produces.
        severity / area: of that finding.
        title: what it looks for, in a few words (shown while it runs and when skipped).
        run: ``run(ctx) -> list[Finding]``; raises `CheckSkipped`.
        preset_dependent: re-judged by `DiagnosisReport.for_preset`.
    """

    id: str
    severity: str
    area: str
    title: str
    run: Callable
    preset_dependent: bool = False


@dataclass
class SkippedCheck:
    """A check that did not run, and the sentence saying why."""

    id: str
    title: str
    reason: str

    def to_dict(self) -> dict:
        return {"id": self.id, "title": self.title, "reason": self.reason}


# -- helpers ----------------------------------------------------------------------

def _jsonable(v):
    """Evidence values as plain JSON types, floats rounded to 6 digits."""
    return json_safe(v, digits=6)


def _finding(id: str, severity: str, area: str, title: str, evidence: dict, fix: str) -> Finding:
    return Finding(id=id, severity=severity, area=area, title=title, evidence=_jsonable(evidence), fix=fix)


def _names(items, limit: int = 6) -> str:
    items = [str(i) for i in items]
    text = ", ".join(items[:limit])
    return text + (f" and {len(items) - limit} more" if len(items) > limit else "")


def _classes_of(out: np.ndarray) -> np.ndarray:
    """Predicted class index per row (one sigmoid unit: threshold at 0.5, or 0 for logits)."""
    out = np.asarray(out, dtype=np.float32).reshape(len(out), -1)
    if out.shape[1] == 1:
        p = out[:, 0]
        cut = 0.0 if np.any((p < 0) | (p > 1)) else 0.5
        return (p >= cut).astype(np.int64)
    return out.argmax(axis=1).astype(np.int64)


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


def _is_noise(layer) -> bool:
    """Layers that behave differently in training mode (other than BatchNormalization)."""
    cls = type(layer).__name__
    if cls in _NOISE_CLASSES or cls in _AUGMENT_CLASSES or cls.startswith("Random"):
        rate = getattr(layer, "rate", None)
        stddev = getattr(layer, "stddev", None)
        if rate is not None and float(rate) == 0.0:
            return False
        if stddev is not None and float(stddev) == 0.0:
            return False
        return True
    return False


def _describe_layer(path: str, layer) -> str:
    cls = type(layer).__name__
    for attr in ("rate", "stddev"):
        if getattr(layer, attr, None) is not None:
            return f"{path} ({cls} {attr}={float(getattr(layer, attr)):g})"
    return f"{path} ({cls})"


@functools.lru_cache(maxsize=1)
def _inference_only_class():
    """A wrapper layer that always calls its inner layer with ``training=False``."""
    import keras

    class InferenceOnly(keras.layers.Layer):
        def __init__(self, inner, **kwargs):
            super().__init__(**kwargs)
            self.inner = inner

        def call(self, x, training=None):
            return self.inner(x, training=False)

        def compute_output_shape(self, input_shape):
            return self.inner.compute_output_shape(input_shape)

    return InferenceOnly


def _copy_trainable(src, dst) -> None:
    """Give `dst` (a clone) the `trainable` flags of `src`, containers first."""
    import keras

    dst.trainable = src.trainable
    for a, b in zip(src.layers, dst.layers):
        if isinstance(a, keras.Model) and isinstance(b, keras.Model):
            _copy_trainable(a, b)
        else:
            b.trainable = a.trainable


def clone_for_training_mode(model, noise: bool = True, force_bn_batch_statistics: bool = False):
    """A private copy of `model` (same weights, same `trainable` flags) to run with ``training=True``.

    Calling a model with ``training=True`` updates its BatchNormalization moving
    statistics in place, so tlviz never does that on the loaded (shared) model.

    Args:
        model: a Keras Functional or Sequential model.
        noise: keep Dropout / noise / augmentation layers active in training
            mode. Defaults to `True`; with `False` they always run as in inference.
        force_bn_batch_statistics: make every BatchNormalization layer trainable
            in the copy, so that it uses batch statistics in training mode (a
            frozen BN layer always uses its moving statistics). Defaults to `False`.

    Returns:
        The copy.

    Raises:
        CheckSkipped: the model cannot be cloned (e.g. a subclassed model).
    """
    import keras

    from tlviz.layers import iter_leaves

    wrapper = _inference_only_class()

    def clone_layer(layer):
        config = layer.get_config()
        if "seed" in config and config["seed"] is None:
            config = {**config, "seed": SEED}  # reproducible dropout / noise
        new = layer.__class__.from_config(config)
        if not noise and _is_noise(layer):
            return wrapper(new, name=layer.name)
        return new

    try:
        clone = keras.models.clone_model(model, clone_function=clone_layer, recursive=True)
        clone.set_weights(model.get_weights())
    except Exception as exc:  # subclassed models, exotic layers
        raise CheckSkipped(f"The model could not be copied to run it safely in training mode "
                           f"({type(exc).__name__}: {str(exc)[:160]}); tlviz never runs the loaded model itself "
                           "in training mode because that would change its BatchNormalization statistics.") from None
    _copy_trainable(model, clone)
    if force_bn_batch_statistics:
        for leaf in iter_leaves(clone):
            if type(leaf.layer).__name__ in _BN_CLASSES:
                leaf.layer.trainable = True
    return clone


def fresh_clone(model, seed: int = SEED):
    """The same architecture with fresh, seeded random weights (nested models included).

    Args:
        model: a Keras Functional or Sequential model.
        seed: seeds every initializer (layer by layer), so the result is
            reproducible. Defaults to `SEED`.

    Returns:
        A new model; `model` is not changed.
    """
    import keras

    counter = itertools.count()

    def seeded(cfg):
        if isinstance(cfg, dict):
            inner = cfg.get("config")
            if isinstance(inner, dict) and "seed" in inner and cfg.get("module", "").startswith("keras"):
                inner = {**inner, "seed": seed * 1000 + next(counter)}
                return {**cfg, "config": inner}
        return cfg

    def clone_layer(layer):
        config = {k: (seeded(v) if k.endswith("_initializer") else v) for k, v in layer.get_config().items()}
        return layer.__class__.from_config(config)

    return keras.models.clone_model(model, clone_function=clone_layer, recursive=True)


# -- the context: measurements shared by several checks -------------------------------

@dataclass
class _Probe:
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


@dataclass
class _LabelOrder:
    preset: str
    accuracy: float
    accuracy_with_mapping: float
    assignment: np.ndarray  # assignment[t] = model output predicted for true class t
    confusion: np.ndarray
    fires: bool


@dataclass
class PresetEvidence:
    """What the preset-dependent checks need, kept in the report so that
    `DiagnosisReport.for_preset` can re-judge them without running the model.

    Attributes:
        report: the `tlviz.normalize.NormalizationReport` (None when it could not run).
        labels: labels in model output order, corrected by the label-order mapping
            when one was found (None without labels).
        accuracy: accuracy per named preset with those labels (None without labels).
        best: the preset the model expects (None when unknown).
        best_by: ``"accuracy"``, ``"fingerprint"`` or None.
        label_note: why accuracy is unavailable (None when available).
        weights_finite: False when the model holds NaN / infinite weights.
        image_size / resize: how the images were decoded (for snippets).
        chance: accuracy of always answering the most common class (None without labels).
        at_chance: when no preset's accuracy is clearly above `chance` (95 % Wilson
            interval), the sentence saying so; `best` is then None.
    """

    report: object | None
    labels: np.ndarray | None
    accuracy: dict | None
    best: str | None
    best_by: str | None
    label_note: str | None
    weights_finite: bool
    image_size: tuple
    resize: str
    files: list
    channels: int = 3
    chance: float | None = None
    at_chance: str | None = None


class DiagnosisContext:
    """Inputs and lazily computed measurements shared by the checks.

    Args:
        loaded: the `LoadedModel`.
        images: the `ImageSet`, decoded at the model's input size.
        inference_preset: the preset the user's inference code applies.
        source: the `ImageSource` (enables the resize-method variants).
        progress: ``progress(fraction_of_current_check, text)`` for long checks.
    """

    def __init__(self, loaded, images: ImageSet, inference_preset: str, source=None, progress=None):
        self.loaded = loaded
        self.model = loaded.model
        self.images = images
        self.inference_preset = inference_preset
        self.source = source
        self._say = progress or (lambda fraction, text: None)

    def say(self, fraction: float, text: str) -> None:
        self._say(min(max(float(fraction), 0.0), 1.0), text)

    # structure -----------------------------------------------------------
    @functools.cached_property
    def table(self):
        from tlviz.layers import layer_table

        return layer_table(self.model)

    @functools.cached_property
    def freezing(self) -> list[Finding]:
        from tlviz.layers import freezing_findings

        return freezing_findings(self.model, self.table)

    @functools.cached_property
    def nonfinite(self) -> list[tuple[str, int, int]]:
        """``(variable path, non-finite values, size)`` for each variable with NaN / inf."""
        import keras

        from tlviz.layers import iter_leaves

        out, seen = [], set()
        for leaf in iter_leaves(self.model):
            for v in leaf.layer.weights:
                if id(v) in seen:
                    continue
                seen.add(id(v))
                arr = keras.ops.convert_to_numpy(v)
                if not np.issubdtype(arr.dtype, np.floating):
                    continue
                bad = int(arr.size - np.count_nonzero(np.isfinite(arr)))
                if bad:
                    out.append((f"{leaf.path}/{v.name}", bad, int(arr.size)))
        return out

    @property
    def weights_finite(self) -> bool:
        return not self.nonfinite

    def require_finite(self) -> None:
        if not self.weights_finite:
            raise CheckSkipped("The model holds NaN or infinite weights (see weights-not-finite), so its outputs "
                               "mean nothing until that is fixed.")

    # labels ---------------------------------------------------------------
    @property
    def k(self) -> int:
        return 2 if self.loaded.n_outputs == 1 else int(self.loaded.n_outputs)

    @functools.cached_property
    def match(self):
        from tlviz.normalize import label_match

        return label_match(self.loaded, self.images)

    @property
    def unlabelled(self) -> bool:
        return len(self.images.class_names) < 2 and self.match.labels is None

    def require_labelled(self) -> None:
        if self.unlabelled:
            raise CheckSkipped(
                f"The image set has a single folder ('{self.images.class_names[0]}'), so it carries no class "
                "labels. Put the images in one sub-folder per class to run this check.")

    def require_labels(self) -> np.ndarray:
        """Labels in model output order, or `CheckSkipped` with the reason."""
        self.require_labelled()
        if self.match.labels is None:
            raise CheckSkipped(self.match.reason or "The image set's classes do not match the model's outputs.")
        return self.match.labels

    # normalization ----------------------------------------------------------
    @functools.cached_property
    def normalization(self):
        from tlviz import normalize

        def say(fraction, text):
            self.say(fraction, text)

        tap = self._feature_tap()
        try:
            teachable = bool(getattr(self.loaded, "teachable_machine", False)) or self.inference_preset == "teachable"
            presets = applicable_presets(self.images.images.shape[-1], teachable=teachable)
            return normalize.analyze(self.loaded, self.images, source=self.source, progress=say, feature_tap=tap,
                                     presets=presets)
        except normalize.NormalizationRefused as exc:
            raise DiagnosisRefused(str(exc)) from None

    @functools.cached_property
    def probe_setup(self) -> dict:
        """The probe's seeded, class-balanced sample and the head's input tensor (or `CheckSkipped`)."""
        rng = np.random.default_rng(SEED)
        sample, shots = _probe_sample(np.asarray(self.images.labels), rng)
        idx, tensor, name = _feature_tensor(self.model)
        return {"rng": rng, "sample": sample, "shots": shots, "idx": idx, "tensor": tensor, "name": name}

    def _feature_tap(self):
        """Keep the probe's features during the preset comparison (None when no probe can run)."""
        import keras

        from tlviz.normalize import FeatureTap

        if self.unlabelled or not self.weights_finite:
            return None
        try:
            setup = self.probe_setup
            dual = keras.Model(self.model.inputs[0], [self.model.outputs[0], setup["tensor"]])
        except Exception:  # CheckSkipped, or a graph that cannot be tapped: the probe runs its own pass
            return None
        return FeatureTap(dual, np.sort(setup["sample"]))

    @functools.cached_property
    def label_order(self) -> _LabelOrder | None:
        """The label-order measurement (None without labels or with one class present)."""
        if self.match.labels is None or not self.weights_finite:
            return None
        labels = self.match.labels
        if len(np.unique(labels)) < 2:
            return None
        report = self.normalization
        order = _preset_order(report)
        best = None
        for p in order:
            preds = report.predictions[p]
            c = _confusion(labels, preds.astype(np.int64), self.k)
            perm = best_assignment(c)
            acc = float(np.trace(c) / max(c.sum(), 1))
            acc_m = float(c[np.arange(self.k), perm].sum() / max(c.sum(), 1))
            if best is None or acc_m > best.accuracy_with_mapping + 1e-9:
                best = _LabelOrder(p, acc, acc_m, perm, c, False)
        identity = bool(np.all(best.assignment == np.arange(self.k)))
        best.fires = (not identity and best.accuracy_with_mapping >= PERMUTATION_MIN_ACCURACY
                      and best.accuracy_with_mapping - best.accuracy >= PERMUTATION_GAIN)
        return best

    @functools.cached_property
    def preset_evidence(self) -> PresetEvidence:
        images = self.images
        base = dict(image_size=images.image_size, resize=images.resize, files=list(images.files),
                    channels=int(images.images.shape[-1]))
        report = self.normalization
        if not self.weights_finite:
            return PresetEvidence(report, None, None, None, None, "the model holds NaN or infinite weights",
                                  False, **base)
        labels = self.match.labels
        lo = self.label_order
        if labels is not None and lo is not None and lo.fires:
            labels = lo.assignment[labels]  # what the model calls each image's class
        if labels is None:
            fp = report.fingerprint
            return PresetEvidence(report, None, None, fp.best, "fingerprint" if fp.best else None,
                                  self.match.reason, True, **base)
        accuracy = {p: float(np.mean(report.predictions[p] == labels)) for p in _preset_order(report)}
        best, best_by = _best_by_accuracy(accuracy, report.fingerprint.order)
        chance = chance_level(labels, self.k)
        at_chance = _at_chance(accuracy, len(labels), chance)
        if at_chance:
            best, best_by = None, None
        return PresetEvidence(report, labels, accuracy, best, best_by, None, True, **base, chance=chance,
                              at_chance=at_chance)

    @property
    def working_preset(self) -> str:
        """The preset the model expects when known, else the user's inference preset."""
        return self.preset_evidence.best or self.inference_preset

    @functools.cached_property
    def inference_predictions(self) -> np.ndarray:
        """Predictions in inference mode under `working_preset`."""
        return np.asarray(self.normalization.predictions[self.working_preset], dtype=np.int64)

    def predict_training_mode(self, clone, text: str, preset: str | None = None, start: float = 0.0,
                              span: float = 1.0, indices: np.ndarray | None = None) -> np.ndarray:
        """Predictions of `clone` called with ``training=True`` on seeded, shuffled batches.

        Args:
            clone: a private copy of the model (`clone_for_training_mode`).
            text: progress text.
            preset: defaults to `working_preset`.
            start / span: the part of the check's progress this covers.
            indices: the images to run (a subsample). Defaults to all, in the
                returned array's order.
        """
        from tlviz.memory import forward, plan_batch

        arr = self.images.images if indices is None else self.images.images[indices]
        n = len(arr)
        preset = preset or self.working_preset
        order = np.random.default_rng(SEED).permutation(n)
        out = np.empty(n, dtype=np.int64)
        batch = plan_batch(clone, "training_forward", n=n, max_batch=TRAINING_BATCH).batch_size
        self.training_batch = batch
        run = forward(clone, training=True)
        for i in range(0, n, batch):
            idx = order[i:i + batch]
            out[idx] = _classes_of(run(apply_preset(arr[idx], preset)))
            self.say(start + span * (i + len(idx)) / n, text)
        return out

    @functools.cached_property
    def training_sample(self) -> np.ndarray:
        """The images the training-mode checks run on: a seeded, class-balanced sample of at most
        `TRAINING_MODE_IMAGES` (a training-mode pass costs about twice an inference pass)."""
        return _balanced_sample(np.asarray(self.images.labels), TRAINING_MODE_IMAGES)

    # pre-training probe --------------------------------------------------------
    @functools.cached_property
    def probe(self) -> _Probe:
        return _run_probe(self)


def _at_chance(accuracy: dict, n: int, chance: float) -> str | None:
    """The sentence saying no preset is clearly above chance, or None when one is."""
    if not accuracy or not n:
        return None
    top = max(accuracy, key=accuracy.get)
    correct = int(round(accuracy[top] * n))
    if clearly_above(correct, n, chance):
        return None
    lo, hi = wilson_interval(correct, n)
    return (f"No preset makes the model better than chance on these {n} images: the most accurate, `{top}`, "
            f"scores {accuracy[top]:.1%} (95 % interval {format_interval(lo, hi)}) against {chance:.1%} for always "
            "answering the most common class, so no preset can be said to be the one the model expects.")


def _preset_order(report) -> list[str]:
    """Named presets evaluated, fingerprint's favourite first, then the usual order."""
    evaluated = [p for p in report.predictions if p in PRESETS]
    fp = [p for p in (report.fingerprint.order or []) if p in evaluated]
    return fp + [p for p in PRESETS if p in evaluated and p not in fp]


def _best_by_accuracy(accuracy: dict, fingerprint_order: list | None) -> tuple[str | None, str | None]:
    """Best preset by accuracy; a near-tie (`ACCURACY_TIE`) goes to the fingerprint's choice."""
    if not accuracy:
        return None, None
    top = max(accuracy.values())
    tied = [p for p, a in accuracy.items() if a >= top - ACCURACY_TIE]
    for p in fingerprint_order or []:
        if p in tied:
            return p, "accuracy"
    exact = [p for p, a in accuracy.items() if a >= top - 1e-12]
    return exact[0], "accuracy"


# -- checks: pre-training -------------------------------------------------------------

def check_weights_not_finite(ctx: DiagnosisContext) -> list[Finding]:
    """``weights-not-finite``: NaN or infinite values in any weight."""
    bad = ctx.nonfinite
    if not bad:
        return []
    n_bad = sum(b for _, b, _ in bad)
    layers = sorted({p.rsplit("/", 1)[0] for p, _, _ in bad})
    return [_finding(
        "weights-not-finite", "error", "pretraining",
        f"{n_bad:,} weights are NaN or infinite",
        {"nonfinite_values": n_bad, "variables": [p for p, _, _ in bad][:10], "n_variables": len(bad),
         "layers": layers[:10]},
        ("Training diverged before this model was saved (a too-high learning rate, a loss on unnormalized "
         "inputs, or log(0) in a custom loss), so its outputs are meaningless. Reload the last checkpoint saved "
         "before the loss became NaN and train again with a lower learning rate and gradient clipping; stop "
         "early when it happens:\n```python\nmodel.compile(optimizer=keras.optimizers.Adam(1e-4, clipnorm=1.0), "
         "loss=..., metrics=[\"accuracy\"])\nmodel.fit(..., callbacks=[keras.callbacks.TerminateOnNaN()])\n```"),
    )]


def check_pretraining_no_better_than_random(ctx: DiagnosisContext) -> list[Finding]:
    """``pretraining-no-better-than-random``: linear probe, pre-trained vs fresh weights."""
    ctx.require_labelled()
    ctx.require_finite()
    p = ctx.probe
    if p.pretrained - p.random >= PROBE_MARGIN:
        return []
    return [_finding(
        "pretraining-no-better-than-random", "warning", "pretraining",
        "The pre-trained features are no better than random ones for these classes",
        {"probe_accuracy_pretrained": p.pretrained, "probe_accuracy_random": p.random,
         "chance": 1.0 / p.n_classes, "n_images": p.n_images, "n_classes": p.n_classes,
         "train_images_per_class": p.shots, "feature_layer": p.feature_layer, "feature_dim": p.feature_dim,
         "probe_interval": list(p.interval), "features_carry_signal": p.signal,
         "sample": (f"seeded, class-balanced: at most {PROBE_MAX_PER_CLASS} images per class, "
                    f"{PROBE_MAX_IMAGES} in all"),
         "preset": ctx.working_preset},
        (f"{p.signal_sentence()} A nearest-class-mean probe trained on {p.shots} images per class reaches "
         f"{p.pretrained:.1%} on the base's features and {p.random:.1%} on the same architecture with fresh random "
         "weights: the pre-training gives this task little. Check that the pre-trained weights really loaded (e.g. "
         "`weights=\"imagenet\"` downloaded, `load_weights` pointed at the right file, no layer silently "
         "re-initialised), use a base pre-trained on images closer to yours, or unfreeze more of the base so "
         "its features can adapt."),
    )]


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


def _sample_note(sample: np.ndarray, n: int) -> str:
    return f"all {n} images" if len(sample) == n else f"{len(sample)} of {n} images, seeded and class-balanced"


def _balanced_sample(labels: np.ndarray, max_images: int, seed: int = SEED) -> np.ndarray:
    """Sorted indices of a seeded, class-balanced sample of at most about `max_images` images (all when fewer)."""
    if len(labels) <= max_images:
        return np.arange(len(labels))
    rng = np.random.default_rng(seed)
    classes = np.unique(labels)
    per_class = max(1, max_images // len(classes))
    chosen = [rng.permutation(np.flatnonzero(labels == c))[:per_class] for c in classes]
    return np.sort(np.concatenate(chosen))


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


def _run_probe(ctx: DiagnosisContext) -> _Probe:
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
    return _Probe(pre, float(np.mean(rand)), int(len(sample)), int(len(np.unique(labels))), shots, name,
                  int(pre_feats.shape[1]), int(len(splits[0][1])))


def check_no_better_than_chance(ctx: DiagnosisContext) -> list[Finding]:
    """``no-better-than-chance``: no preset makes the model clearly better than chance; the probe says why."""
    ctx.require_labels()
    ctx.require_finite()
    ev = ctx.preset_evidence
    if not ev.at_chance:
        return []
    top = max(ev.accuracy, key=ev.accuracy.get)
    n = len(ev.labels)
    lo, hi = wilson_interval(int(round(ev.accuracy[top] * n)), n)
    evidence = {"accuracy_by_preset": ev.accuracy, "most_accurate_preset": top, "interval": [lo, hi],
                "chance": ev.chance, "n_images": n}
    try:
        p = ctx.probe
    except CheckSkipped as exc:
        p, probe_note = None, f"No probe of the base's features could run: {exc}"
    if p is not None:
        evidence.update(probe_accuracy_pretrained=p.pretrained, probe_interval=list(p.interval),
                        probe_chance=p.chance, probe_images=p.n_images, features_carry_signal=p.signal)
        probe_note = p.signal_sentence()
    if p is not None and p.signal:
        cause = ("So the base works and the head is what fails: it was not trained for these classes (a new, "
                 "untrained `Dense` layer), was trained with every layer frozen, or its outputs follow another "
                 "class order. Train the head on these images (Fine-tuning page, unfreeze depth 0) and check the "
                 "class order (label-order-mismatch).")
    elif p is not None:
        cause = ("Neither the head nor the base's features separate these classes: the base's weights are most likely "
                 "not pre-trained (`weights=None`, a `load_weights` that did not load, a layer re-initialised) or the "
                 "images are unlike anything it learned. Load the pre-trained weights, check the labels, then train "
                 "the head.")
    else:
        cause = ("The head may be untrained for these classes, the base's weights may not be pre-trained, or the "
                 "labels may not match the model's outputs.")
    return [_finding(
        "no-better-than-chance", "error", "finetuning",
        f"The model is no better than chance on these images under any preprocessing ({ev.accuracy[top]:.1%}, "
        f"chance {ev.chance:.1%})",
        evidence,
        f"{ev.at_chance} {probe_note} {cause}")]


# -- checks: fine-tuning ----------------------------------------------------------------

def _freezing(ctx: DiagnosisContext, fid: str) -> list[Finding]:
    return [f for f in ctx.freezing if f.id == fid]


def check_no_trainable_weights(ctx: DiagnosisContext) -> list[Finding]:
    """``no-trainable-weights``: every layer frozen (`tlviz.layers.freezing_findings`)."""
    return _freezing(ctx, "no-trainable-weights")


def check_head_frozen(ctx: DiagnosisContext) -> list[Finding]:
    """``head-frozen``: the head cannot train while layers below it can."""
    return _freezing(ctx, "head-frozen")


def check_trainable_inside_frozen_model(ctx: DiagnosisContext) -> list[Finding]:
    """``trainable-inside-frozen-model``: layers trainable inside a model marked frozen."""
    return _freezing(ctx, "trainable-inside-frozen-model")


def check_bn_trainable_in_base(ctx: DiagnosisContext) -> list[Finding]:
    """``bn-trainable-in-base``: BatchNormalization trainable inside an unfrozen base."""
    return _freezing(ctx, "bn-trainable-in-base")


def _replace_head_snippet(n_classes: int) -> str:
    return ("```python\nimport keras\n\n"
            "features = keras.Model(model.input, model.layers[-2].output)  # everything below the old head\n"
            f"outputs = keras.layers.Dense({n_classes}, activation=\"softmax\", name=\"new_head\")(features.output)\n"
            "new_model = keras.Model(features.input, outputs)\n"
            "new_model.compile(optimizer=\"adam\", loss=\"sparse_categorical_crossentropy\", metrics=[\"accuracy\"])\n"
            "```")


def check_class_count_mismatch(ctx: DiagnosisContext) -> list[Finding]:
    """``class-count-mismatch``: the image set's classes are not the model's outputs."""
    ctx.require_labelled()
    names = list(ctx.images.class_names)
    k = ctx.k
    recorded = ctx.loaded.class_names if ctx.loaded.class_names and len(ctx.loaded.class_names) == k else None
    evidence = {"image_set_classes": len(names), "model_outputs": int(ctx.loaded.n_outputs),
                "image_set_class_names": names[:20]}
    if recorded:
        foreign = [c for c in names if c not in recorded]
        if not foreign:
            return []
        evidence.update({"model_class_names": recorded[:20], "classes_not_in_model": foreign[:20]})
        title = (f"{len(foreign)} of the image set's {len(names)} classes are not among the model's outputs")
        why = (f"The model was trained on {_names(recorded)}; the image set has {_names(foreign)}, which it cannot "
               "predict.")
    else:
        if len(names) == k:
            return []
        title = f"The image set has {len(names)} classes but the model has {k} outputs"
        why = f"A {k}-output head cannot learn {len(names)} classes."
    return [_finding(
        "class-count-mismatch", "error", "finetuning", title, evidence,
        (f"{why} Replace the head with a new {len(names)}-class layer and train it on your images (the base "
         f"keeps its pre-trained features):\n{_replace_head_snippet(len(names))}")),
    ]


def check_class_imbalance(ctx: DiagnosisContext) -> list[Finding]:
    """``class-imbalance``: the largest class has more than 3x the images of the smallest."""
    ctx.require_labelled()
    counts = ctx.images.counts
    if len(counts) < 2:
        raise CheckSkipped("The image set has a single class, so there is no balance to check.")
    lo, hi = min(counts.values()), max(counts.values())
    if hi <= IMBALANCE_RATIO * lo:
        return []
    smallest = min(counts, key=counts.get)
    largest = max(counts, key=counts.get)
    ratio = hi / lo if lo else None
    weights = ", ".join(f"{i}: {sum(counts.values()) / (len(counts) * max(c, 1)):.2f}"
                        for i, c in enumerate(counts.values()))
    return [_finding(
        "class-imbalance", "warning", "finetuning",
        (f"Class '{largest}' has {hi} images, {ratio:.1f}× the {lo} of class '{smallest}'" if ratio
         else f"Class '{smallest}' has no images while '{largest}' has {hi}"),
        {"counts": counts, "largest": largest, "smallest": smallest, "ratio": ratio},
        ("A model trained on these proportions learns to favour the large classes, and overall accuracy hides "
         "it. Rebalance the set (collect or oversample the small classes), or weight the loss by class, and "
         "report per-class accuracy:\n```python\n"
         f"class_weight = {{{weights}}}  # total / (classes × count)\n"
         "model.fit(train_data, epochs=..., class_weight=class_weight)\n```"),
    )]


def check_too_few_images(ctx: DiagnosisContext) -> list[Finding]:
    """``too-few-images``: fewer than 20 images in some class."""
    ctx.require_labelled()
    counts = ctx.images.counts
    few = {c: n for c, n in counts.items() if n < MIN_IMAGES_PER_CLASS}
    if not few:
        return []
    return [_finding(
        "too-few-images", "warning", "finetuning",
        f"{len(few)} class{'es have' if len(few) > 1 else ' has'} fewer than {MIN_IMAGES_PER_CLASS} images",
        {"classes_below": few, "minimum": MIN_IMAGES_PER_CLASS, "counts": counts},
        ("That is too few to fine-tune deep layers: they would memorise these images. Train only the head on a "
         "frozen base, augment the images, and collect more for the small classes:\n```python\nimport keras\n\n"
         "base.trainable = False  # only the head trains\n"
         "augment = keras.Sequential([keras.layers.RandomFlip(\"horizontal\"), keras.layers.RandomRotation(0.1),\n"
         "                            keras.layers.RandomZoom(0.1)])\n"
         "inputs = keras.Input(shape=base.input_shape[1:])\n"
         "x = base(augment(inputs), training=False)\n"
         "x = keras.layers.GlobalAveragePooling2D()(x) if len(x.shape) == 4 else x\n"
         "outputs = keras.layers.Dense(num_classes, activation=\"softmax\")(x)\n"
         "model = keras.Model(inputs, outputs)\n```"),
    )]


# -- checks: inference pipeline ----------------------------------------------------------

def _decisively_closer(d_a: float, d_b: float) -> bool:
    """Whether fingerprint distance `d_a` is decisively smaller than `d_b`."""
    return d_b - d_a >= FINGERPRINT_MARGIN and d_b >= FINGERPRINT_RATIO * d_a


def _normalization_mismatch(ev: PresetEvidence, preset: str) -> list[Finding]:
    """The ``normalization-mismatch`` judgement for one inference preset (pure)."""
    if not ev.weights_finite:
        raise CheckSkipped("The model holds NaN or infinite weights (see weights-not-finite), so its outputs "
                           "mean nothing until that is fixed.")
    report = ev.report
    fp = report.fingerprint
    best = ev.best
    if ev.at_chance:
        raise CheckSkipped(ev.at_chance + " See no-better-than-chance.")
    if best is None:
        raise CheckSkipped(f"Accuracy cannot be measured ({ev.label_note or 'no labels'}) and there is no "
                           f"label-free fingerprint ({fp.reason}), so there is no evidence of the preset the "
                           "model expects.")
    if best == preset:
        return []
    preds = report.predictions
    if preset not in preds and preset in PIXEL_PRESET:
        raise CheckSkipped(f"`{preset}` was not compared in this diagnosis. Run it again with `{preset}` as the "
                           "inference preset.")
    if ev.accuracy is None and PIXEL_PRESET.get(preset, preset) == PIXEL_PRESET.get(best, best):
        return []  # same arithmetic: the label-free fingerprint cannot tell them apart
    snippet = preset_snippet(best, ev.image_size, ev.resize)
    changed_idx = np.flatnonzero(preds[best] != preds[preset]) if preset in preds else np.array([], dtype=int)
    if ev.accuracy is not None:
        a_best, a_inf = ev.accuracy[best], ev.accuracy.get(preset)
        if a_inf is None or a_best - a_inf < MISMATCH_DROP:
            return []
        if fp.ranking is not None:
            dist = dict(zip(fp.ranking["preset"], fp.ranking["distance"]))
            if preset in dist and _decisively_closer(dist[preset], dist[best]):
                raise CheckSkipped(
                    f"The evidence conflicts: accuracy favours `{best}` ({a_best:.1%} against {a_inf:.1%} for your "
                    f"`{preset}`), but the label-free fingerprint says `{preset}` reproduces the statistics the first "
                    "BatchNormalization layer stored in training far better. That happens when the statistics "
                    "further up are off (see bn-statistics-mismatch) or the labels are wrong; no preset is "
                    "recommended until that is fixed.")
        right = changed_idx[(preds[best][changed_idx] == ev.labels[changed_idx])]
        evidence = {"inference_preset": preset, "expected_preset": best, "accuracy_expected": a_best,
                    "accuracy_inference": a_inf, "accuracy_by_preset": ev.accuracy,
                    "changed_predictions": int(len(changed_idx)), "n_images": len(ev.files),
                    "fingerprint_order": fp.order, "example_files": [ev.files[i] for i in right[:EXAMPLES]]}
        title = (f"Your inference preset `{preset}` scores {a_inf:.1%}; the model expects `{best}` ({a_best:.1%})")
        lead = (f"Preparing images with `{preset}` changes {len(changed_idx)} of {len(ev.files)} predictions and "
                f"costs {a_best - a_inf:.1%} accuracy.")
    else:
        dist = dict(zip(fp.ranking["preset"], fp.ranking["distance"]))
        d_best, d_inf = float(dist[best]), float(dist.get(preset, np.inf))
        if not _decisively_closer(d_best, d_inf):
            return []
        conf = report.confidences.get(best)
        order = changed_idx[np.argsort(-conf[changed_idx])] if conf is not None else changed_idx
        evidence = {"inference_preset": preset, "expected_preset": best, "fingerprint_distance": dist,
                    "fingerprint_layer": fp.layer, "changed_predictions": int(len(changed_idx)),
                    "n_images": len(ev.files), "accuracy_note": ev.label_note,
                    "example_files": [ev.files[i] for i in order[:EXAMPLES]]}
        title = (f"The label-free fingerprint says the model expects `{best}`, not your inference preset `{preset}`")
        lead = (f"With `{best}` the activations at '{fp.layer}' match the statistics stored in training "
                f"(distance {d_best:.3g}); with `{preset}` they do not ({d_inf:.3g}); {len(changed_idx)} of "
                f"{len(ev.files)} predictions change.")
    return [_finding("normalization-mismatch", "error", "inference", title, evidence,
                     f"{lead} Prepare images with `{best}` at inference:\n```python\n{snippet}\n```")]


def check_normalization_mismatch(ctx: DiagnosisContext) -> list[Finding]:
    """``normalization-mismatch``: the inference preset is clearly worse than the expected one."""
    return _normalization_mismatch(ctx.preset_evidence, ctx.inference_preset)


def _double_normalization(ev: PresetEvidence, preset: str) -> list[Finding]:
    """The ``double-normalization`` judgement for one inference preset (pure).

    Fires when a Rescaling / Normalization layer at the model's input means it
    wants raw 0-255 pixels and the preset normalizes again, unless the
    measurements show the model does clearly better with a normalizing preset
    than with `raw` (then it was trained on normalized images and
    normalization-mismatch speaks instead).
    """
    from tlviz.normalize import expects_raw_pixels

    report = ev.report
    builtin = list(report.builtin_preprocessing)
    if preset == "raw" or not expects_raw_pixels(builtin):
        return []
    acc = ev.accuracy or {}
    if ev.best not in (None, "raw") and ev.best_by == "accuracy" and "raw" in acc:
        if acc[ev.best] - acc["raw"] >= MISMATCH_DROP:
            return []
    layers = "; ".join(b for b in builtin if b.startswith(("Rescaling", "Normalization")))
    snippet = preset_snippet("raw", ev.image_size, ev.resize)
    return [_finding(
        "double-normalization", "error", "inference",
        f"The model normalizes its input itself, and your inference code applies `{preset}` on top",
        {"builtin_preprocessing": builtin, "inference_preset": preset,
         "accuracy_raw": acc.get("raw"), "accuracy_inference": acc.get(preset)},
        (f"The model already normalizes its input ({layers}), so it expects raw 0-255 pixels, but your inference "
         f"code applies `{preset}` as well: the model sees images scaled twice. Feed raw pixels (the `raw` preset) "
         f"and let the model's own layer do the scaling:\n```python\n{snippet}\n```"))]


def check_double_normalization(ctx: DiagnosisContext) -> list[Finding]:
    """``double-normalization``: a Rescaling / Normalization layer at the input plus a normalizing preset."""
    return _double_normalization(ctx.preset_evidence, ctx.inference_preset)


def check_label_order_mismatch(ctx: DiagnosisContext) -> list[Finding]:
    """``label-order-mismatch``: the confusion matrix is close to a permutation."""
    ctx.require_labels()
    ctx.require_finite()
    lo = ctx.label_order
    if lo is None:
        raise CheckSkipped("Only one class is present in the image set, so no class order can be compared.")
    if not lo.fires:
        return []
    names = ctx.match.output_names
    inverse = np.empty(ctx.k, dtype=np.int64)
    inverse[lo.assignment] = np.arange(ctx.k)
    order = [names[int(t)] for t in inverse]  # the class behind each model output
    mapping = {names[t]: int(lo.assignment[t]) for t in range(ctx.k)}
    moved = {n: j for n, j in mapping.items() if names.index(n) != j}
    report = ctx.normalization
    preds = report.predictions[lo.preset]
    labels = ctx.match.labels
    wrong = np.flatnonzero((preds != labels) & (preds == lo.assignment[labels]))
    lines = "\n".join(order)
    return [_finding(
        "label-order-mismatch", "error", "inference",
        (f"The class order differs from the model's output order: accuracy {lo.accuracy:.1%}, "
         f"{lo.accuracy_with_mapping:.1%} once the classes are re-ordered"),
        {"preset": lo.preset, "accuracy": lo.accuracy, "accuracy_with_mapping": lo.accuracy_with_mapping,
         "mapping": mapping, "moved_classes": moved, "model_output_order": order, "classes": names,
         "confusion_matrix": lo.confusion, "example_files": [report.files[i] for i in wrong[:EXAMPLES]]},
        ("The model is right, but about other class names: its output i is the class listed at position i below, "
         "not the i-th folder. Use this order for the class names in your inference code, or put it in a "
         "`labels.txt` at the top of the image set (one class per line):\n```python\n"
         f"class_names = {order!r}  # model output order\n"
         "predicted = class_names[int(probs.argmax())]\n```\nlabels.txt:\n```text\n" + lines + "\n```"),
    )]


def check_bn_statistics_mismatch(ctx: DiagnosisContext) -> list[Finding]:
    """``bn-statistics-mismatch``: batch statistics give far better accuracy than the moving statistics."""
    from tlviz.layers import iter_leaves

    bn = [leaf for leaf in iter_leaves(ctx.model) if type(leaf.layer).__name__ in _BN_CLASSES]
    if not bn:
        raise CheckSkipped("The model has no BatchNormalization layer, so there are no stored statistics to check.")
    ctx.require_finite()
    from tlviz.layers import has_initial_statistics

    if all(has_initial_statistics(leaf.layer) for leaf in bn):
        return [_finding(  # certain from the file itself: no pass over the images is needed
            "bn-statistics-mismatch", "warning", "inference",
            f"Every BatchNormalization layer ({len(bn)}) still holds its initial statistics (mean 0, variance 1)",
            {"bn_layers": len(bn), "initial_statistics": True, "examples": [leaf.path for leaf in bn[:5]],
             "measured_on_images": False},
            ("The stored moving mean / variance were never estimated: the base was never trained, its "
             "pre-trained weights did not load (e.g. `weights=None`, a `load_weights` that silently skipped "
             "layers), or the statistics were reset. In inference mode every BatchNormalization layer then "
             "normalizes with mean 0 and variance 1, which describes no real images. Load the pre-trained "
             "weights; if the other weights are trained, re-estimate the statistics on training images:\n"
             + _RECALIBRATE))]
    ctx.require_labels()
    if len(ctx.images) < 16:
        raise CheckSkipped("Batch statistics need at least 16 images; the image set has fewer.")
    ev = ctx.preset_evidence
    sample = ctx.training_sample
    labels = ev.labels[sample]
    best_inf = ctx.working_preset
    acc_inf = float(np.mean(ctx.inference_predictions[sample] == labels))
    # Batch statistics under the preset that wins in inference mode and under the fingerprint's choice
    # (which reads the first BN layer only, so it survives broken statistics further up).
    fp = ev.report.fingerprint
    candidates = list(dict.fromkeys([best_inf] + ([fp.best] if fp.best else [])))
    clone = clone_for_training_mode(ctx.model, noise=False, force_bn_batch_statistics=True)
    acc_batch, best_batch = -1.0, best_inf
    for k, preset in enumerate(candidates):
        preds = ctx.predict_training_mode(clone, f"BatchNormalization with batch statistics ({preset})…",
                                          preset=preset, start=k / len(candidates), span=1 / len(candidates),
                                          indices=sample)
        acc = float(np.mean(preds == labels))
        if acc > acc_batch:
            acc_batch, best_batch = acc, preset
    del clone
    if acc_batch - acc_inf < BN_GAP:
        return []
    dist = None if fp.ranking is None else dict(zip(fp.ranking["preset"], fp.ranking["distance"])).get(best_batch)
    return [_finding(
        "bn-statistics-mismatch", "warning", "inference",
        (f"Accuracy is {acc_inf:.1%} with the stored BatchNormalization statistics but {acc_batch:.1%} with "
         "batch statistics"),
        {"accuracy_inference_mode": acc_inf, "accuracy_batch_statistics": acc_batch, "preset_inference": best_inf,
         "preset_batch_statistics": best_batch,
         "bn_layers": len(bn), "examples": [leaf.path for leaf in bn[:5]],
         "batch_size": getattr(ctx, "training_batch", TRAINING_BATCH), "n_images": int(len(sample)),
         "sample": _sample_note(sample, len(ev.labels)),
         "first_bn_fingerprint_distance": dist},
        ("The moving mean / variance stored in the BatchNormalization layers do not describe these images: "
         "too few training steps for them to settle, a momentum too high for a short run, or images prepared "
         "differently in training. Make sure inference prepares images exactly like training; then re-estimate "
         "the statistics on training images (only they change):\n" + _RECALIBRATE),
    )]


_RECALIBRATE = ("```python\nimport keras\n\n"
                "def bn_layers(m):\n    for layer in m.layers:\n        if isinstance(layer, keras.Model):\n"
                "            yield from bn_layers(layer)\n        elif isinstance(layer, keras.layers.BatchNormalization):\n"
                "            yield layer\n\nfor layer in bn_layers(model):\n    layer.trainable = True   # frozen BN never "
                "updates its statistics\n    layer.momentum = 0.9      # forget the old statistics faster\n"
                "for x, _ in train_batches.take(200):  # prepared exactly as in training\n"
                "    model(x, training=True)          # updates moving_mean / moving_variance only\n"
                "model.save(\"model_recalibrated.keras\")\n```")


def check_training_mode_inference(ctx: DiagnosisContext) -> list[Finding]:
    """``training-mode-inference``: predictions flip (and BN statistics change) under ``training=True``."""
    import keras

    from tlviz.layers import iter_leaves

    noise, bn = [], []
    for leaf in iter_leaves(ctx.model):
        if _is_noise(leaf.layer):
            noise.append(_describe_layer(leaf.path, leaf.layer))
        elif type(leaf.layer).__name__ in _BN_CLASSES and leaf.layer.trainable:
            bn.append(leaf.path)
    if not noise and not bn:
        return []
    ctx.require_finite()
    clone = clone_for_training_mode(ctx.model, noise=True)
    sample = ctx.training_sample
    preds = ctx.predict_training_mode(clone, "Running the model in training mode…", indices=sample)
    reference = ctx.inference_predictions[sample]
    flipped = sample[np.flatnonzero(preds != reference)]
    share = float(len(flipped) / max(len(preds), 1))
    shifts = []
    originals = {leaf.path: leaf.layer for leaf in iter_leaves(ctx.model)}
    for leaf in iter_leaves(clone):
        if leaf.path in bn:
            old = originals[leaf.path]
            m0 = keras.ops.convert_to_numpy(old.moving_mean)
            v0 = keras.ops.convert_to_numpy(old.moving_variance)
            m1 = keras.ops.convert_to_numpy(leaf.layer.moving_mean)
            shifts.append(float(np.mean(np.abs(m1 - m0) / np.sqrt(v0 + 1e-3))))
    del clone
    if not len(flipped) and not bn:
        return []
    layers = noise + [f"{p} (BatchNormalization, trainable)" for p in bn]
    return [_finding(
        "training-mode-inference", "info", "inference",
        f"Running the model in training mode changes {share:.1%} of its predictions",
        {"flipped_share": share, "flipped": int(len(flipped)), "n_images": int(len(preds)), "layers": layers,
         "bn_layers_updated": len(bn), "bn_mean_shift_after_one_pass": float(np.mean(shifts)) if shifts else None,
         "preset": ctx.working_preset, "sample": _sample_note(sample, len(ctx.images)),
         "example_files": [ctx.images.files[i] for i in flipped[:EXAMPLES]]},
        (f"These layers behave differently when the model is called with `training=True` (as inference code "
         f"inside a training loop or a custom `train_step` does): {_names(layers, 4)}. "
         + ("Dropout and noise layers randomise the output. " if noise else "")
         + ("Trainable BatchNormalization layers normalize with each batch's statistics and overwrite their "
            "stored ones, so the model \"learns during inference\". " if bn else "")
         + "Run inference in inference mode:\n"
         "```python\nprobs = model.predict(x)              # always inference mode\n"
         "probs = model(x, training=False)      # inside your own loops and train_step\n```"),
    )]


def check_input_resized(ctx: DiagnosisContext) -> list[Finding]:
    """``input-resized``: images were resized or had their channels converted to fit the model."""
    images = ctx.images
    if not images.original_sizes:
        raise CheckSkipped("The image set does not record the images' original sizes (it was not loaded from files).")
    h, w = images.image_size
    sizes = [tuple(s) for s in images.original_sizes]
    resized = [s for s in sizes if s != (w, h)]
    target_mode = "RGB" if images.images.shape[-1] == 3 else "L"
    converted = {m: int(n) for m, n in images.original_modes.items() if m != target_mode}
    if not resized and not converted:
        return []
    common = {}
    for s in resized:
        key = f"{s[0]}x{s[1]}"
        common[key] = common.get(key, 0) + 1
    common = dict(sorted(common.items(), key=lambda kv: -kv[1])[:5])
    parts = []
    if resized:
        how = RESIZE_DESCRIPTIONS.get(images.resize, images.resize)
        parts.append(f"{len(resized)} of {len(sizes)} images were resized to {w}x{h} "
                     f"(most often from {next(iter(common))}) with {how}")
    if converted:
        parts.append(f"{sum(converted.values())} images were converted to {target_mode} from "
                     f"{', '.join(f'{m} ({n})' for m, n in converted.items())}")
    return [_finding(
        "input-resized", "info", "inference",
        "; ".join(parts[:1] + [p[0].lower() + p[1:] for p in parts[1:]]),
        {"target_size": f"{w}x{h}", "n_images": len(sizes), "n_resized": len(resized),
         "original_sizes": common, "resize_method": images.resize, "target_mode": target_mode,
         "converted_modes": converted},
        (f"The model sees {w}x{h} {target_mode} images. Your inference code must resize and convert the same "
         "way as training did; a different resize method or cropping shifts accuracy (the Normalization page "
         "compares them). This prepares one image like tlviz did:\n```python\n"
         f"{preset_snippet(ctx.working_preset, (h, w), images.resize)}\n```"),
    )]


def _sensitivity(ctx: DiagnosisContext, fid: str) -> list[Finding]:
    from tlviz.normalize import normalization_findings

    ctx.require_labels()
    ctx.require_finite()
    lo = ctx.label_order
    if lo is not None and lo.fires:
        raise CheckSkipped("The class order differs from the model's output order (see label-order-mismatch); "
                           "fix that first, then compare resize methods and channel orders.")
    report = ctx.normalization
    if report.best_preset is None or report.best_preset != ctx.working_preset:
        return []  # the variants were measured against another preset: no clean comparison
    out = []
    for f in normalization_findings(report, report.best_preset):
        if f.id == fid:
            out.append(replace(f, severity="info", evidence=_jsonable(f.evidence)))
    return out


def check_resize_sensitive(ctx: DiagnosisContext) -> list[Finding]:
    """``resize-sensitive`` (info): accuracy depends on the resize method (needs the image source)."""
    if ctx.source is None:
        raise CheckSkipped("Resize methods can only be compared with the original image files (pass `source=`).")
    return _sensitivity(ctx, "resize-sensitive")


def check_channel_order_sensitive(ctx: DiagnosisContext) -> list[Finding]:
    """``channel-order-sensitive`` (info): accuracy depends on RGB vs BGR order."""
    if ctx.images.images.shape[-1] != 3:
        raise CheckSkipped("Channel order only applies to three-channel images.")
    return _sensitivity(ctx, "channel-order-sensitive")


# -- registry --------------------------------------------------------------------

CHECKS: tuple[Check, ...] = (
    Check("weights-not-finite", "error", "pretraining", "NaN or infinite weights", check_weights_not_finite),
    Check("no-trainable-weights", "error", "finetuning", "trainable weights", check_no_trainable_weights),
    Check("head-frozen", "error", "finetuning", "a frozen head", check_head_frozen),
    Check("trainable-inside-frozen-model", "warning", "finetuning", "trainable layers inside a frozen model",
          check_trainable_inside_frozen_model),
    Check("bn-trainable-in-base", "warning", "finetuning", "trainable BatchNormalization in the base",
          check_bn_trainable_in_base),
    Check("class-count-mismatch", "error", "finetuning", "classes vs model outputs", check_class_count_mismatch),
    Check("class-imbalance", "warning", "finetuning", "class balance", check_class_imbalance),
    Check("too-few-images", "warning", "finetuning", "images per class", check_too_few_images),
    Check("input-resized", "info", "inference", "resized or converted images", check_input_resized),
    Check("double-normalization", "error", "inference", "double normalization", check_double_normalization,
          preset_dependent=True),
    Check("normalization-mismatch", "error", "inference", "the input normalization", check_normalization_mismatch,
          preset_dependent=True),
    Check("label-order-mismatch", "error", "inference", "the class order", check_label_order_mismatch),
    Check("resize-sensitive", "info", "inference", "the resize method", check_resize_sensitive),
    Check("channel-order-sensitive", "info", "inference", "the channel order", check_channel_order_sensitive),
    Check("bn-statistics-mismatch", "warning", "inference", "BatchNormalization statistics",
          check_bn_statistics_mismatch),
    Check("training-mode-inference", "info", "inference", "training-mode behaviour", check_training_mode_inference),
    Check("pretraining-no-better-than-random", "warning", "pretraining", "pre-trained vs random features",
          check_pretraining_no_better_than_random),
    Check("no-better-than-chance", "error", "finetuning", "accuracy above chance", check_no_better_than_chance),
)
CHECK_IDS: tuple[str, ...] = tuple(c.id for c in CHECKS)
_BY_ID = {c.id: c for c in CHECKS}


# -- the report --------------------------------------------------------------------

def _area_key(area: str) -> int:
    return AREAS.index(area)


def _sorted(findings: list[Finding]) -> list[Finding]:
    """Most severe first; within a severity, by area (pre-training, fine-tuning, inference)."""
    return sort_findings(sorted(findings, key=lambda f: _area_key(f.area)))


@dataclass
class DiagnosisReport:
    """The result of `diagnose`.

    Attributes:
        findings: most severe first (ties by area, then check order).
        skipped: checks that could not run, each with the sentence saying why.
        checks_run: ids of the checks that ran (whether or not they found something).
        model_name / model_file / model_sha256: the model diagnosed.
        images_source / n_images / class_names / counts: the image set.
        inference_preset: the preset the user's inference code applies.
        expected_preset / expected_by: the preset the model expects and the
            evidence (``"accuracy"`` / ``"fingerprint"``), or None.
        seconds: time per check id, plus ``total``.
        evidence: the `PresetEvidence` behind the preset-dependent checks.
    """

    findings: list[Finding]
    skipped: list[SkippedCheck]
    checks_run: list[str]
    model_name: str
    model_file: str
    model_sha256: str
    images_source: str
    n_images: int
    class_names: list[str]
    counts: dict
    inference_preset: str
    expected_preset: str | None
    expected_by: str | None
    seconds: dict = field(default_factory=dict)
    evidence: PresetEvidence | None = None

    @property
    def normalization(self):
        """The `tlviz.normalize.NormalizationReport` used, or None."""
        return None if self.evidence is None else self.evidence.report

    @property
    def counts_by_severity(self) -> dict[str, int]:
        return {s: sum(f.severity == s for f in self.findings) for s in SEVERITIES}

    @property
    def has_errors(self) -> bool:
        return any(f.severity == "error" for f in self.findings)

    @property
    def exit_code(self) -> int:
        """The command line's exit status: 1 with an error-level finding, else 0."""
        return 1 if self.has_errors else 0

    def by_area(self) -> list[tuple[str, list[Finding]]]:
        """``[(area, findings), ...]``: areas ordered by their most severe finding
        (ties in `AREAS` order), findings most severe first; empty areas left out."""
        groups = {}
        for f in self.findings:
            groups.setdefault(f.area, []).append(f)
        def worst(area):
            return min(SEVERITIES.index(f.severity) for f in groups[area])
        return [(a, groups[a]) for a in sorted(groups, key=lambda a: (worst(a), _area_key(a)))]

    def for_preset(self, inference_preset: str) -> "DiagnosisReport":
        """The same diagnosis judged for another inference preset (no model run).

        Args:
            inference_preset: one of `tlviz.presets.PRESETS` applicable to the images.

        Returns:
            A new `DiagnosisReport`; only the preset-dependent checks
            (``normalization-mismatch``, ``double-normalization``) change.
        """
        _check_preset(inference_preset, self.evidence.channels if self.evidence is not None else None)
        if inference_preset == self.inference_preset:
            return self
        dependent = {c.id for c in CHECKS if c.preset_dependent}
        findings = [f for f in self.findings if f.id not in dependent]
        skipped = [s for s in self.skipped if s.id not in dependent]
        ran = [i for i in self.checks_run if i not in dependent]
        judges = {"normalization-mismatch": _normalization_mismatch, "double-normalization": _double_normalization}
        for cid in [c.id for c in CHECKS if c.preset_dependent]:
            if cid not in self.checks_run and not any(s.id == cid for s in self.skipped):
                continue  # not selected in the original run
            if self.evidence is None or self.evidence.report is None:
                skipped.append(SkippedCheck(cid, _BY_ID[cid].title, "The normalization measurement did not run."))
                continue
            try:
                findings += judges[cid](self.evidence, inference_preset)
                ran.append(cid)
            except CheckSkipped as exc:
                skipped.append(SkippedCheck(cid, _BY_ID[cid].title, str(exc)))
        order = {c: i for i, c in enumerate(CHECK_IDS)}
        ran.sort(key=lambda c: order[c])
        skipped.sort(key=lambda s: order.get(s.id, 0))
        findings = _sorted(sorted(findings, key=lambda f: order.get(f.id, len(order))))
        return replace(self, findings=findings, skipped=skipped, checks_run=ran, inference_preset=inference_preset)

    # exports -----------------------------------------------------------------
    def to_json(self) -> dict:
        """The command line's JSON object: ``{"findings": [{id, severity, area, title, evidence, fix}, ...]}``."""
        return {"findings": [_jsonable(f.to_dict()) for f in self.findings]}

    def to_dict(self) -> dict:
        """The whole report (the `to_json` object plus skipped checks and context), for downloads."""
        return {
            **self.to_json(),
            "skipped": [s.to_dict() for s in self.skipped],
            "checks_run": list(self.checks_run),
            "model": {"name": self.model_name, "file": self.model_file, "sha256": self.model_sha256},
            "images": {"source": self.images_source, "n_images": self.n_images, "classes": self.class_names,
                       "counts": self.counts},
            "inference_preset": self.inference_preset,
            "expected_preset": self.expected_preset,
            "expected_by": self.expected_by,
            "summary": self.counts_by_severity,
            "seconds": {k: round(v, 3) for k, v in self.seconds.items()},
        }

    def to_markdown(self) -> str:
        """The report as Markdown: summary, findings by area with evidence and fix, skipped checks."""
        c = self.counts_by_severity
        lines = [f"# tlviz diagnosis: {self.model_name}", "",
                 f"- Model: `{self.model_file or self.model_name}`",
                 f"- Image set: `{self.images_source}` — {self.n_images} images, {len(self.class_names)} classes",
                 f"- Inference preset: `{self.inference_preset}`"
                 + (f" (the model expects `{self.expected_preset}`, by {self.expected_by})" if self.expected_preset
                    else ""),
                 f"- Checks run: {len(self.checks_run)}, skipped: {len(self.skipped)}", ""]
        if not self.findings:
            lines += ["**No findings.**", ""]
        else:
            lines += ["**" + ", ".join(f"{c[s]} {s}{'s' if c[s] != 1 and s != 'info' else ''}"
                                       for s in SEVERITIES) + "**", ""]
            if not c["error"] and not c["warning"]:
                lines += ["No errors or warnings: nothing here explains a model that does not learn.", ""]
        for area, items in self.by_area():
            lines += [f"## {AREA_TITLES[area]}", ""]
            for f in items:
                lines += [f"### {SEVERITY_TITLES[f.severity]}: {f.title}", "", f"`{f.id}`", ""]
                lines += _evidence_markdown(f.evidence)
                lines += ["", f"**Fix.** {f.fix}", ""]
        if self.skipped:
            lines += ["## Skipped checks", ""]
            lines += [f"- `{s.id}` ({s.title}): {s.reason}" for s in self.skipped]
            lines.append("")
        return "\n".join(lines)


def _fmt(v) -> str:
    if v is None:
        return "—"
    if isinstance(v, float):
        return f"{v:.4g}"
    if isinstance(v, dict):
        return ", ".join(f"{k}: {_fmt(x)}" for k, x in list(v.items())[:12]) + (" …" if len(v) > 12 else "")
    if isinstance(v, list):
        if v and isinstance(v[0], list):
            return json.dumps(v)
        return ", ".join(_fmt(x) for x in v[:12]) + (" …" if len(v) > 12 else "")
    return str(v)


def _evidence_markdown(evidence: dict) -> list[str]:
    rows = ["| evidence | value |", "|---|---|"]
    matrix = None
    for k, v in evidence.items():
        if k == "confusion_matrix" and isinstance(v, list):
            matrix = v
            continue
        rows.append(f"| {k.replace('_', ' ')} | {_fmt(v).replace('|', '/')} |")
    if matrix is not None:
        names = [str(n) for n in evidence.get("classes", range(len(matrix)))]
        rows += ["", "Confusion matrix (rows: image-set class, columns: model output):", "",
                 "| | " + " | ".join(names) + " |", "|---" * (len(names) + 1) + "|"]
        rows += [f"| **{names[i]}** | " + " | ".join(str(x) for x in row) + " |" for i, row in enumerate(matrix)]
    return rows


# -- entry point ---------------------------------------------------------------------

def _check_preset(preset: str, channels: int | None) -> None:
    if preset not in PRESETS:
        raise DiagnosisRefused(f"Unknown inference preset {preset!r}. Use one of: {', '.join(PRESETS)}.")
    if channels is not None and preset not in applicable_presets(channels, teachable=True):
        raise DiagnosisRefused(f"Preset {preset!r} needs 3-channel RGB images; these have {channels}. Use one of: "
                               f"{', '.join(applicable_presets(channels))}.")


def diagnose(loaded_model, image_set: ImageSet, inference_preset: str = "unit",
             progress: Callable[[float, str], None] | None = None, source=None, *,
             checks: list[str] | tuple[str, ...] | None = None, normalization=None) -> DiagnosisReport:
    """Run every check on a model and an image set.

    The loaded model is never modified (checks that need ``training=True`` work
    on a clone).

    Args:
        loaded_model: a `tlviz.models.LoadedModel` (or a Keras model).
        image_set: an `ImageSet` decoded at the model's input size.
        inference_preset: the preset the user's inference code applies (one of
            `tlviz.presets.PRESETS`). Defaults to `"unit"`.
        progress: called as ``progress(fraction, text)`` while the checks run.
            Defaults to `None`.
        source: the `ImageSource` the images came from; enables the resize-method
            comparison. Defaults to `None`.
        checks: run only these check ids (see `CHECK_IDS`). Defaults to all.
        normalization: a `tlviz.normalize.NormalizationReport` already measured on
            the same model and image set (e.g. by the Normalization page); it is
            reused instead of evaluating every preset again. Defaults to `None`.

    Returns:
        A `DiagnosisReport`: findings most severe first, skipped checks with reasons.

    Raises:
        DiagnosisRefused: the images do not fit the model, the image set is
            empty, or the preset is unknown or does not apply.
    """
    from tlviz.models import LoadedModel, summarize

    t_start = time.perf_counter()
    loaded = loaded_model if isinstance(loaded_model, LoadedModel) else summarize(loaded_model)
    if not isinstance(image_set, ImageSet):
        raise DiagnosisRefused("Pass the images as a tlviz ImageSet (tlviz.imagesets.load_image_set at the model's "
                               "input size).")
    if not len(image_set):
        raise DiagnosisRefused("The image set is empty. Give at least one image.")
    got = tuple(image_set.images.shape[1:])
    for want, have in zip(loaded.input_shape, got):
        if want is not None and int(want) != int(have):
            raise DiagnosisRefused(
                f"The images are {'x'.join(map(str, got))} but {loaded.name} expects "
                f"{'x'.join('?' if d is None else str(d) for d in loaded.input_shape)}. Decode them at the model's "
                "input size (ImageSource.load(loaded.image_size, loaded.channels)).")
    _check_preset(inference_preset, got[-1])
    selected = list(CHECKS)
    if checks is not None:
        unknown = [c for c in checks if c not in _BY_ID]
        if unknown:
            raise ValueError(f"Unknown check id(s): {', '.join(unknown)}. Use: {', '.join(CHECK_IDS)}.")
        selected = [c for c in CHECKS if c.id in set(checks)]

    say = progress or (lambda fraction, text: None)
    total = len(selected)
    findings: list[Finding] = []
    skipped: list[SkippedCheck] = []
    ran: list[str] = []
    seconds: dict[str, float] = {}
    state = {"k": 0, "title": ""}

    def sub(fraction: float, text: str) -> None:
        say((state["k"] + fraction) / total, f"Check {state['k'] + 1} of {total} ({state['title']}): {text}")

    ctx = DiagnosisContext(loaded, image_set, inference_preset, source=source, progress=sub)
    if normalization is not None:
        if list(normalization.files) != list(image_set.files) or normalization.model_name != loaded.name:
            raise ValueError("The normalization report passed was measured on another model or image set; pass "
                             "the report of this model and image set, or none.")
        ctx.__dict__["normalization"] = normalization  # the cached property, already measured
    for k, check in enumerate(selected):
        state.update(k=k, title=check.title)
        say(k / total, f"Check {k + 1} of {total}: {check.title}…")
        t0 = time.perf_counter()
        try:
            findings += check.run(ctx)
            ran.append(check.id)
        except CheckSkipped as exc:
            skipped.append(SkippedCheck(check.id, check.title, str(exc)))
        except DiagnosisRefused:
            raise
        except Exception as exc:  # a failing check must not hide the others
            skipped.append(SkippedCheck(check.id, check.title,
                                        f"The check failed: {type(exc).__name__}: {str(exc)[:200]}"))
        seconds[check.id] = time.perf_counter() - t0
    say(1.0, "Done.")
    seconds["total"] = time.perf_counter() - t_start

    evidence = None
    if "normalization" in ctx.__dict__ or any(c.preset_dependent for c in selected):
        try:
            evidence = ctx.preset_evidence
        except DiagnosisRefused:
            evidence = None
    return DiagnosisReport(
        findings=_sorted(findings),
        skipped=skipped,
        checks_run=ran,
        model_name=loaded.name,
        model_file=loaded.filename,
        model_sha256=loaded.sha256,
        images_source=image_set.source,
        n_images=len(image_set),
        class_names=list(image_set.class_names),
        counts=image_set.counts,
        inference_preset=inference_preset,
        expected_preset=evidence.best if evidence else None,
        expected_by=evidence.best_by if evidence else None,
        seconds=seconds,
        evidence=evidence,
    )
