"""The diagnosis context: the inputs, and the measurements several checks share, each made once.

`DiagnosisContext` holds the loaded model, the image set and the inference
preset, and measures lazily (cached properties): the layer table and freezing
findings, non-finite weights, how the image set's labels match the model's
outputs, the preset comparison (`tlviz.normalize.analyze`), the class order
that explains the predictions best, the `PresetEvidence` the preset-dependent
checks judge, and the pre-training probe (`tlviz.diagnose.probe`).

Thresholds are read from the registry (`tlviz.diagnose.registry`), which names
the check each belongs to.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import numpy as np

from tlviz.diagnose.assignment import confusion_matrix, best_assignment
from tlviz.diagnose.base import SEED, balanced_sample
from tlviz.diagnose.probe import Probe, distinct_images, feature_tensor, probe_sample, run_probe
from tlviz.diagnose.thresholds import threshold
from tlviz.errors import CheckSkipped, DiagnosisRefused, NormalizationRefused
from tlviz.findings import Finding
from tlviz.imagesets import ImageSet, two_classes_present
from tlviz.layers import BN_CLASSES, has_initial_statistics, iter_leaves
from tlviz.outputs import predicted_classes
from tlviz.presets import PRESETS, applicable_presets, apply_preset
from tlviz.stats import chance_level, clearly_above, decide, format_interval, format_points, paired_difference, wilson_interval

#: bn-statistics-mismatch and training-mode-inference run the model in training mode on a seeded,
#: class-balanced sample of at most this many images (a training-mode pass costs about twice an inference pass).
TRAINING_MODE_IMAGES = 128
#: Images per batch when the model runs in training mode (batch statistics); smaller when the
#: memory budget (`tlviz.memory.plan_batch`) allows fewer (the evidence records the batch used).
TRAINING_BATCH = 64
#: The preset comparison keeps the features of likely-mislabelled's images too (besides the
#: pre-training probe's sample) when they take at most this many MB under every preset.
TAP_MB = 256


@dataclass
class _LabelOrder:
    preset: str
    accuracy: float
    accuracy_with_mapping: float
    assignment: np.ndarray  # assignment[t] = model output predicted for true class t
    confusion: np.ndarray
    fires: bool
    gain_interval: tuple = (0.0, 0.0)  # 95 % paired interval of accuracy_with_mapping - accuracy
    n_images: int = 0
    undecided: str | None = None  # the point estimates say "fires" but the intervals cannot decide


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
        bn_initial: the number of BatchNormalization layers when every one of them still
            holds its initial statistics (mean 0, variance 1: read from the file), else 0.
            Accuracy per preset then says how inputs of each scale pass through
            un-normalized layers, not which preprocessing the model was trained with.
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
    bn_initial: int = 0

    @property
    def fingerprint_distances(self) -> dict | None:
        """``{preset: distance}`` of the label-free fingerprint, or None when it could not run."""
        fp = None if self.report is None else self.report.fingerprint
        if fp is None or fp.ranking is None:
            return None
        return {str(p): float(d) for p, d in zip(fp.ranking["preset"], fp.ranking["distance"])}

    @property
    def most_accurate(self) -> str | None:
        """The named preset with the highest accuracy on these images (None without labels), whether or not
        it is `best` (no preset is best when none is clearly above chance)."""
        if not self.accuracy:
            return None
        if self.best is not None and self.best_by == "accuracy":
            return self.best
        return max(self.accuracy, key=self.accuracy.get)

    def conflicts(self) -> list[str]:
        """The evidence on the preset the model expects that disagrees, one sentence each (empty when none does).

        Two measurements name the preset: accuracy on the labelled images, and the label-free fingerprint
        (which preset reproduces the statistics the first BatchNormalization layer stored in training). They
        conflict when the fingerprint decisively prefers (normalization-mismatch's ``fingerprint_margin`` and
        ``fingerprint_ratio``) another preset than the most accurate one. Accuracy per preset also says
        nothing about the training preprocessing when every BatchNormalization layer still holds its initial
        statistics.
        """
        out = []
        if self.bn_initial:
            out.append(f"every BatchNormalization layer ({self.bn_initial}) still holds its initial statistics (mean "
                       "0, variance 1), so accuracy per preset measures how inputs of each scale pass through "
                       "layers that normalize nothing, not how the model was trained")
        top, dist = self.most_accurate, self.fingerprint_distances
        fp = self.report.fingerprint if self.report is not None else None
        if top is None or dist is None or fp.best is None or fp.best == top or top not in dist:
            return out
        d_fp, d_top = dist[fp.best], dist[top]
        if (d_top - d_fp >= threshold("normalization-mismatch", "fingerprint_margin")
                and d_top >= threshold("normalization-mismatch", "fingerprint_ratio") * d_fp):
            out.append(f"`{top}` scores {self.accuracy[top]:.1%} on these images, but the label-free fingerprint "
                       f"prefers `{fp.best}` (distance {d_fp:.3g} to the statistics the first BatchNormalization "
                       f"layer stored in training, against {d_top:.3g} for `{top}`)")
        return out


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
        from tlviz.normalize.inputs import label_match

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
        from tlviz.normalize.analysis import analyze

        def say(fraction, text):
            self.say(fraction, text)

        tap = self._feature_tap()
        try:
            teachable = bool(getattr(self.loaded, "teachable_machine", False)) or self.inference_preset == "teachable"
            presets = applicable_presets(self.images.images.shape[-1], teachable=teachable)
            return analyze(self.loaded, self.images, source=self.source, progress=say, feature_tap=tap,
                                     presets=presets)
        except NormalizationRefused as exc:
            raise DiagnosisRefused(str(exc)) from None

    @functools.cached_property
    def probe_setup(self) -> dict:
        """The probe's seeded, class-balanced sample of distinct images and the head's input (or `CheckSkipped`)."""
        rng = np.random.default_rng(SEED)
        distinct = distinct_images(self.images.images)
        sample, shots = probe_sample(np.asarray(self.images.labels), rng, distinct)
        idx, tensor, name = feature_tensor(self.model)
        return {"rng": rng, "sample": sample, "shots": shots, "idx": idx, "tensor": tensor, "name": name,
                "duplicates": int(np.sum(~distinct))}

    def _feature_tap(self):
        """Keep the probes' features during the preset comparison (None when no probe can run).

        The images of the pre-training probe's sample, and those of likely-mislabelled's probe when
        their features under every preset fit in `TAP_MB` (else the probe's sample alone): what the
        comparison keeps on its way, no check computes again.
        """
        import keras

        from tlviz.diagnose.outoffold import mislabel_sample
        from tlviz.normalize.results import FeatureTap

        if self.unlabelled or not self.weights_finite:
            return None
        try:
            setup = self.probe_setup
            dual = keras.Model(self.model.inputs[0], [self.model.outputs[0], setup["tensor"]])
        except Exception:  # CheckSkipped, or a graph that cannot be tapped: the probe runs its own pass
            return None
        indices = np.sort(setup["sample"])
        wider = np.union1d(indices, mislabel_sample(self.images.labels, len(self.images.class_names)))
        width = int(setup["tensor"].shape[-1] or 1)  # features are kept spatially averaged: one value a channel
        presets = len(applicable_presets(self.images.images.shape[-1], teachable=True)) + 1
        if len(wider) * width * 4 * presets <= TAP_MB * 2 ** 20:
            indices = wider
        return FeatureTap(dual, indices)

    @functools.cached_property
    def label_order(self) -> _LabelOrder | None:
        """The label-order measurement (None without labels or with one class present)."""
        if self.match.labels is None or not self.weights_finite:
            return None
        labels = self.match.labels
        if not two_classes_present(labels):
            return None
        report = self.normalization
        order = _preset_order(report)
        best = None
        for p in order:
            preds = report.predictions[p]
            c = confusion_matrix(labels, preds.astype(np.int64), self.k)
            perm = best_assignment(c)
            acc = float(np.trace(c) / max(c.sum(), 1))
            acc_m = float(c[np.arange(self.k), perm].sum() / max(c.sum(), 1))
            if best is None or acc_m > best.accuracy_with_mapping + 1e-9:
                best = _LabelOrder(p, acc, acc_m, perm, c, False)
        identity = bool(np.all(best.assignment == np.arange(self.k)))
        min_accuracy = threshold("label-order-mismatch", "min_accuracy")
        gain = threshold("label-order-mismatch", "gain")
        preds = report.predictions[best.preset].astype(np.int64)
        # Same images with and without the re-ordering: the paired interval of the gain, and the
        # Wilson interval of the re-ordered accuracy, must clear their thresholds.
        d = paired_difference(preds == best.assignment[labels], preds == labels)
        lo, hi = wilson_interval(int(np.sum(preds == best.assignment[labels])), len(labels))
        best.gain_interval, best.n_images = (d.low, d.high), d.n
        looks = (not identity and best.accuracy_with_mapping >= min_accuracy
                 and best.accuracy_with_mapping - best.accuracy >= gain)
        verdicts = (decide(d.low, d.high, gain), decide(lo, hi, min_accuracy))
        best.fires = looks and verdicts == (True, True)
        if looks and not best.fires:
            best.undecided = (
                f"Too few images to decide: re-ordering the classes raises accuracy from {best.accuracy:.1%} to "
                f"{best.accuracy_with_mapping:.1%} on {d.n} images, but the 95 % intervals (gain "
                f"{format_points(d.low, d.high)}; re-ordered accuracy {format_interval(lo, hi)}) do not clear the "
                f"thresholds ({gain * 100:.0f} points, {min_accuracy:.0%}). Add images to decide.")
        return best

    @functools.cached_property
    def bn_initial(self) -> int:
        """How many BatchNormalization layers the model has when all hold their initial statistics, else 0."""
        bn = [leaf for leaf in iter_leaves(self.model) if type(leaf.layer).__name__ in BN_CLASSES]
        return len(bn) if bn and all(has_initial_statistics(leaf.layer) for leaf in bn) else 0

    @functools.cached_property
    def preset_evidence(self) -> PresetEvidence:
        images = self.images
        base = dict(image_size=images.image_size, resize=images.resize, files=list(images.files),
                    channels=int(images.images.shape[-1]), bn_initial=self.bn_initial)
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
            out[idx] = predicted_classes(run(apply_preset(arr[idx], preset)))
            self.say(start + span * (i + len(idx)) / n, text)
        return out

    @functools.cached_property
    def training_sample(self) -> np.ndarray:
        """The images the training-mode checks run on: a seeded, class-balanced sample of at most
        `TRAINING_MODE_IMAGES` (a training-mode pass costs about twice an inference pass)."""
        return balanced_sample(np.asarray(self.images.labels), TRAINING_MODE_IMAGES)

    # pre-training probe --------------------------------------------------------
    @functools.cached_property
    def probe(self) -> Probe:
        """The probe of the pre-trained features and of fresh random copies (`run_probe`)."""
        return run_probe(self)

    @functools.cached_property
    def probe_pretrained(self) -> Probe:
        """The probe of the pre-trained features: the full `probe` when a check already ran it, else without
        the random copies (their passes are only paid for by a check that compares with them)."""
        return self.__dict__["probe"] if "probe" in self.__dict__ else run_probe(self, with_random=False)


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
    """Best preset by accuracy; a near-tie (normalization-mismatch's ``tie``) goes to the fingerprint's choice."""
    if not accuracy:
        return None, None
    top = max(accuracy.values())
    tied = [p for p, a in accuracy.items() if a >= top - threshold("normalization-mismatch", "tie")]
    for p in fingerprint_order or []:
        if p in tied:
            return p, "accuracy"
    exact = [p for p, a in accuracy.items() if a >= top - 1e-12]
    return exact[0], "accuracy"


def check_preset(preset: str, channels: int | None) -> None:
    """Refuse an inference preset that does not exist or does not fit the images' channels.

    Args:
        preset: the inference preset's name.
        channels: the images' channels (None: not known, only the name is checked).

    Raises:
        DiagnosisRefused: the preset is unknown, or needs RGB images and these are not; the message names
            the presets that fit.
    """
    if preset not in PRESETS:
        raise DiagnosisRefused(f"Unknown inference preset {preset!r}. Use one of: {', '.join(PRESETS)}.")
    if channels is not None and preset not in applicable_presets(channels, teachable=True):
        raise DiagnosisRefused(f"Preset {preset!r} needs 3-channel RGB images; these have {channels}. Use one of: "
                               f"{', '.join(applicable_presets(channels))}.")
