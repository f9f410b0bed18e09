"""Which preprocessing does the model really expect? Measured, not guessed.

The most common reason a transfer-learning model "works in training and fails
at inference" is that the inference code prepares images differently from the
training code: another normalization, resize method or channel order. This
module evaluates the model on the user's own images under each variant.

Speed: every image is decoded and resized once (the `ImageSet` holds ``uint8``
at the model's input size); presets are applied batch by batch, so there is
never a float copy of the whole set; only the resize variants decode again.
The label-free fingerprint runs only the layers up to the first
BatchNormalization layer on a sample, so it answers long before the full
comparison.

Public API
----------

Data:

- `Setting(preset, resize="bilinear", channel_order="RGB")` — one way of
  preparing images. Properties ``preset_name``, ``kind`` (``"preset"``,
  ``"custom"``, ``"resize"``, ``"channel order"``), ``label``, ``key``.
- `Evaluation` — predictions of the model under one `Setting`: ``setting``,
  ``predictions`` (int, model output index per image), ``confidence``
  (probability of the predicted class), ``labels`` (true labels in model
  output order, or None when accuracy cannot be measured), ``files``,
  ``seconds``; properties ``n``, ``accuracy`` (float or None),
  ``mean_confidence``, ``correct``.
- `Fingerprint` — the label-free ranking: ``ranking`` (DataFrame with
  ``FINGERPRINT_COLUMNS``, best first, or None), ``layer`` (the BN layer
  used), ``reason`` (a sentence saying why ``ranking`` is None), ``n_images``,
  ``seconds``; properties ``best`` and ``order`` (preset names best first).
- `LabelMatch` — how the image set's classes map onto the model's outputs:
  ``labels`` (or None), ``reason`` (why accuracy is hidden), ``remapped``,
  ``output_names``.
- `NormalizationReport` — everything the Normalization page shows and the
  Diagnose page can reuse: ``results`` (ranked DataFrame, ``RESULT_COLUMNS``),
  ``per_class`` (``PER_CLASS_COLUMNS``), ``evaluations`` (by setting label),
  ``accuracy_available`` / ``accuracy_note``, ``best_preset`` / ``best_by``
  (``"accuracy"`` or ``"fingerprint"``) / ``best_named_preset`` (best of the
  five named presets, for other pages' preset pickers) / ``best_setting``,
  ``fingerprint``, ``agreement_note``, ``builtin_preprocessing``,
  ``expects_raw_pixels``, ``output_names``, ``files``, ``labels``,
  ``image_size``, ``custom``, ``seconds``. Properties ``accuracy``,
  ``mean_confidence``, ``predictions``, ``confidences`` (dicts keyed by preset
  name) and ``fingerprint_order``; methods ``snippet()``, ``preset_object()``
  and ``to_json()`` (the CLI's JSON object).

Functions:

- `fingerprint(model, images, ...) -> Fingerprint` — cheap, label-free.
- `evaluate_preset(model, images, preset, ...) -> Evaluation` — one preset on
  the already decoded images.
- `evaluate_setting(model, images, setting, source=None, ...) -> Evaluation` —
  also handles resize variants (re-decoded from `source`).
- `analyze(model, images, ...) -> NormalizationReport` — the full comparison,
  with progress callbacks (`on_fingerprint`, `progress`, `on_result`) and an
  `evaluate` hook so a caller can cache each setting's evaluation.
- `label_match(model, images) -> LabelMatch`.
- `custom_preset(scale, mean, std) -> CustomPreset` — from typed text, with clear errors.
- `changed_predictions(report, a, b) -> DataFrame` — images whose prediction
  changes between two presets (gallery data).
- `expects_raw_pixels(builtin_preprocessing) -> bool`.
- `double_normalization(report, inference_preset) -> str | None`.
- `normalization_findings(report, inference_preset) -> list[Finding]`.

`model` is always a `tlviz.models.LoadedModel` or a plain Keras model.

Ranking rule (with labels): accuracy first; when the most accurate settings
differ by less than `TIE_Z` standard errors (paired McNemar test), the
fingerprint's favourite among them wins. Without labels: the fingerprint order. With labels but no setting whose accuracy
is clearly above chance (its 95 % Wilson interval above the share of the most
common class), no preset is best: the report's ``inconclusive`` says so and what
that points to, and the resize / channel-order variants are skipped.
Constants: `DEFAULT_BATCH_SIZE`, `DEFAULT_FINGERPRINT_IMAGES`, `TIE_Z`, and the
column lists `RESULT_COLUMNS`, `PER_CLASS_COLUMNS`, `FINGERPRINT_COLUMNS`,
`CHANGE_COLUMNS`.
"""

from __future__ import annotations

import math
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Callable

import numpy as np
import pandas as pd

from tlviz.errors import TlvizError
from tlviz.findings import Finding
from tlviz.imagesets import RESIZE_DESCRIPTIONS, RESIZE_METHODS, ImageSet
from tlviz.layers import BN_CLASSES, has_initial_statistics
from tlviz.memory import first_output
from tlviz.presets import PIXEL_PRESET, PRESETS, CustomPreset, applicable_presets, apply_preset, preset_resize, preset_snippet
from tlviz.stats import chance_level, clearly_above, format_interval, wilson_interval

#: Largest batch a forward pass uses; the actual size is planned from the memory budget and the
#: model's activation sizes (`tlviz.memory.plan_batch`), so a 224x224 ResNet50 runs in smaller ones.
DEFAULT_BATCH_SIZE = 128
#: Images the fingerprint looks at (an evenly spaced sample). Defaults to 128.
DEFAULT_FINGERPRINT_IMAGES = 128
CHANNEL_ORDERS = ("RGB", "BGR")

RESULT_COLUMNS = [
    "rank", "setting", "kind", "preset", "resize", "channel_order", "accuracy", "accuracy_low", "accuracy_high",
    "mean_confidence", "agreement", "n", "fingerprint_distance", "is_best",
]
PER_CLASS_COLUMNS = ["preset", "class", "accuracy", "n"]
FINGERPRINT_COLUMNS = ["rank", "preset", "distance", "mean_shift", "std_ratio", "is_best"]
CHANGE_COLUMNS = [
    "index", "file", "label", "prediction_a", "confidence_a", "prediction_b", "confidence_b",
    "correct_a", "correct_b",
]

# Accuracy drop (fraction) from which a mismatch counts as a problem.
_MISMATCH_DROP = 0.05
#: Accuracy differences below this many standard errors (paired McNemar test)
#: are sampling noise; the label-free fingerprint then picks the best preset.
TIE_Z = 2.0

_RAW_PIXEL_LAYERS = ("Rescaling", "Normalization")


class NormalizationRefused(TlvizError):
    """The normalization check cannot run on this input (the message says why and what to do)."""


# -- settings and results -----------------------------------------------------

@dataclass(frozen=True)
class Setting:
    """One way of preparing images for the model.

    Args:
        preset: one of `tlviz.presets.PRESETS` or a `CustomPreset`.
        resize: one of `tlviz.imagesets.RESIZE_METHODS`. Defaults to `"bilinear"`.
        channel_order: ``"RGB"`` or ``"BGR"`` (the order the pixels are in
            before the preset is applied). Defaults to `"RGB"`.
        base_resize: the resize method the comparison starts from; a setting
            with another `resize` is a resize variant. Defaults to `"bilinear"`.
    """

    preset: str | CustomPreset
    resize: str = "bilinear"
    channel_order: str = "RGB"
    base_resize: str = "bilinear"

    def __post_init__(self):
        if not isinstance(self.preset, CustomPreset) and self.preset not in PRESETS:
            raise ValueError(f"Unknown preset {self.preset!r}. Use one of: {', '.join(PRESETS)}, "
                             "or a CustomPreset.")
        for r in (self.resize, self.base_resize):
            if r not in RESIZE_METHODS:
                raise ValueError(f"Unknown resize method {r!r}. Use one of: {', '.join(RESIZE_METHODS)}.")
        if self.channel_order not in CHANNEL_ORDERS:
            raise ValueError(f"Unknown channel order {self.channel_order!r}. Use 'RGB' or 'BGR'.")

    @property
    def preset_name(self) -> str:
        return self.preset.name if isinstance(self.preset, CustomPreset) else self.preset

    @property
    def kind(self) -> str:
        """``"channel order"``, ``"resize"``, ``"custom"`` or ``"preset"``: what this setting varies."""
        if self.channel_order != "RGB":
            return "channel order"
        if self.resize != self.base_resize:
            return "resize"
        return "custom" if isinstance(self.preset, CustomPreset) else "preset"

    @property
    def label(self) -> str:
        """Display name, e.g. ``"tf"``, ``"tf · nearest resize"``, ``"tf · BGR"``, ``"teachable"``."""
        parts = [self.preset_name]
        if self.resize != preset_resize(self.preset):
            parts.append("centre crop + resize" if self.resize == "crop" else f"{self.resize} resize")
        if self.channel_order != "RGB":
            parts.append(self.channel_order)
        return " · ".join(parts)

    @property
    def key(self) -> str:
        """A stable string identifying the setting (for caches)."""
        if isinstance(self.preset, CustomPreset):
            p = f"custom:{self.preset.scale!r}:{self.preset.mean!r}:{self.preset.std!r}"
        else:
            p = self.preset
        return f"{p}|{self.resize}|{self.channel_order}"


@dataclass
class Evaluation:
    """The model's predictions under one `Setting`.

    Attributes:
        setting: the `Setting` evaluated.
        predictions: ``int32`` ``(N,)``, the predicted output index per image.
        confidence: ``float32`` ``(N,)``, the probability of the predicted class.
        labels: ``int`` ``(N,)`` true labels in the model's output order, or
            None when the image set's classes do not match the model's outputs.
        files: the image files, aligned with `predictions`.
        seconds: time spent (decoding for resize variants included).
        features: with a `FeatureTap`, the tapped layer's output (spatially averaged,
            ``float32``) for the tap's images, in the tap's order; else None.
    """

    setting: Setting
    predictions: np.ndarray
    confidence: np.ndarray
    labels: np.ndarray | None
    files: list[str]
    seconds: float = 0.0
    features: np.ndarray | None = None

    @property
    def n(self) -> int:
        return int(len(self.predictions))

    @property
    def correct(self) -> np.ndarray | None:
        return None if self.labels is None else self.predictions == self.labels

    @property
    def accuracy(self) -> float | None:
        c = self.correct
        return None if c is None or not len(c) else float(c.mean())

    @property
    def mean_confidence(self) -> float:
        return float(self.confidence.mean()) if len(self.confidence) else float("nan")


@dataclass(frozen=True)
class FeatureTap:
    """Keep an inner layer's output for some images from the same forward pass (compute once).

    The Diagnose probe needs the base's features under the preset the model
    expects; the preset comparison runs the whole model under every preset
    anyway, so it keeps them on the way instead of a second pass.

    Attributes:
        model: the model with two outputs, ``[its first output, the tapped tensor]``.
        indices: sorted indices of the images whose features are kept.
    """

    model: object
    indices: np.ndarray


@dataclass
class Fingerprint:
    """Label-free ranking of presets by the first BatchNormalization layer's statistics.

    Attributes:
        ranking: DataFrame with `FINGERPRINT_COLUMNS`, best first; ``distance``
            is the mean over channels of the Kullback-Leibler divergence from a
            Gaussian with the activations' mean / variance to one with the
            layer's moving mean / variance (0 = perfect match);
            ``mean_shift`` the mean ``|activation mean - moving mean| /
            moving std``; ``std_ratio`` the median ``activation std / moving
            std`` (1 = match). None when no fingerprint can be taken.
        layer: path of the BatchNormalization layer used, or None.
        reason: when `ranking` is None, a sentence saying why.
        n_images: images in the sample.
        seconds: time taken.
    """

    ranking: pd.DataFrame | None
    layer: str | None = None
    reason: str | None = None
    n_images: int = 0
    seconds: float = 0.0

    @property
    def best(self) -> str | None:
        return None if self.ranking is None or not len(self.ranking) else str(self.ranking["preset"].iloc[0])

    @property
    def order(self) -> list[str] | None:
        """Preset names, best match first (None without a fingerprint)."""
        return None if self.ranking is None else [str(p) for p in self.ranking["preset"]]


@dataclass
class LabelMatch:
    """How the image set's classes line up with the model's outputs.

    Attributes:
        labels: the images' labels as model output indices, or None when they
            cannot be matched (then accuracy is hidden).
        reason: a sentence explaining why accuracy is hidden (None when shown).
        remapped: True when the image set's class order differed from the
            model's recorded class order and labels were mapped by name.
        output_names: a display name for each model output.
    """

    labels: np.ndarray | None
    reason: str | None
    remapped: bool
    output_names: list[str]


@dataclass
class NormalizationReport:
    """The full comparison. See the module docstring for how pages use it.

    Attributes:
        model_name: the model's name.
        image_size: ``(height, width)`` the images were decoded at.
        n_images: images in the (base) image set.
        results: ranked DataFrame with `RESULT_COLUMNS` (rank 1 = best);
            ``accuracy`` is NaN everywhere when `accuracy_available` is False.
        per_class: per-class accuracy per preset, `PER_CLASS_COLUMNS`
            (empty when accuracy is hidden).
        evaluations: `Evaluation` per setting label (e.g. ``"tf"``, ``"tf · BGR"``).
        accuracy_available: whether labels match the model's outputs.
        accuracy_note: why accuracy is hidden (None when shown).
        best_preset: the preset (name, possibly a custom one) the model expects.
        best_by: ``"accuracy"``, ``"fingerprint"`` or None (no evidence).
        best_named_preset: the best of the named `PRESETS` (never a custom one).
        best_setting: the top-ranked `Setting` (may be a resize / channel variant).
        fingerprint: the `Fingerprint`.
        agreement_note: one sentence on whether fingerprint and accuracy agree.
        builtin_preprocessing: preprocessing layers found at the model's input.
        expects_raw_pixels: True when a Rescaling / Normalization layer at the
            input means the model wants raw 0-255 pixels (`raw`).
        output_names: display name per model output.
        files / labels: the base image set's files and model-order labels (or None).
        custom: the `CustomPreset` evaluated, if any.
        inconclusive: when no setting's accuracy is clearly above chance (its
            95 % interval does not clear `chance`), the sentence saying so and what
            it points to; `best_preset`, `best_by` and `best_setting` are then None.
        chance: accuracy of always answering the most common class (None without labels).
        seconds: time per stage (``fingerprint``, ``presets``, ``variants``, ``total``).
    """

    model_name: str
    image_size: tuple[int, int]
    n_images: int
    results: pd.DataFrame
    per_class: pd.DataFrame
    evaluations: dict[str, Evaluation]
    accuracy_available: bool
    accuracy_note: str | None
    best_preset: str | None
    best_by: str | None
    best_named_preset: str | None
    best_setting: Setting | None
    fingerprint: Fingerprint
    agreement_note: str
    builtin_preprocessing: list[str]
    expects_raw_pixels: bool
    output_names: list[str]
    files: list[str]
    labels: np.ndarray | None
    custom: CustomPreset | None = None
    inconclusive: str | None = None
    chance: float | None = None
    seconds: dict[str, float] = field(default_factory=dict)

    def _preset_evals(self) -> dict[str, Evaluation]:
        return {e.setting.preset_name: e for e in self.evaluations.values() if e.setting.kind in ("preset", "custom")}

    @property
    def accuracy(self) -> dict[str, float | None]:
        """Accuracy per preset name (None everywhere when accuracy is hidden)."""
        return {k: e.accuracy for k, e in self._preset_evals().items()}

    @property
    def mean_confidence(self) -> dict[str, float]:
        return {k: e.mean_confidence for k, e in self._preset_evals().items()}

    @property
    def predictions(self) -> dict[str, np.ndarray]:
        """Predicted output index per image, per preset name (aligned with `files`)."""
        return {k: e.predictions for k, e in self._preset_evals().items()}

    @property
    def confidences(self) -> dict[str, np.ndarray]:
        return {k: e.confidence for k, e in self._preset_evals().items()}

    @property
    def presets(self) -> list[str]:
        """The preset names evaluated, in ranking order."""
        rows = self.results[self.results["kind"].isin(["preset", "custom"])]
        return [str(p) for p in rows["preset"]]

    @property
    def fingerprint_order(self) -> list[str] | None:
        return self.fingerprint.order

    def preset_object(self, name: str) -> str | CustomPreset:
        """The preset (name or `CustomPreset`) behind a preset name in `results`."""
        if self.custom is not None and name == self.custom.name:
            return self.custom
        if name not in PRESETS:
            raise ValueError(f"Unknown preset {name!r}. Use one of: {', '.join(self.presets)}.")
        return name

    def snippet(self, setting: Setting | None = None) -> str:
        """Python code that prepares one image exactly like `setting`.

        Args:
            setting: defaults to `best_setting` (the winner).
        """
        s = setting or self.best_setting or Setting("raw")
        return preset_snippet(s.preset, self.image_size, s.resize, s.channel_order)

    def to_json(self) -> dict:
        """The command line's JSON object (presets only, best first)."""
        rows = self.results[self.results["kind"].isin(["preset", "custom"])]
        fp = None
        if self.fingerprint.ranking is not None:
            fp = [{"preset": str(r.preset), "distance": _num(r.distance)}
                  for r in self.fingerprint.ranking.itertuples()]
        return {
            "results": [
                {"preset": str(r.preset), "accuracy": _num(r.accuracy),
                 "interval": None if _num(r.accuracy_low) is None else [_num(r.accuracy_low), _num(r.accuracy_high)],
                 "mean_confidence": _num(r.mean_confidence), "n": int(r.n)}
                for r in rows.itertuples()
            ],
            "best": self.best_preset,
            "inconclusive": self.inconclusive,
            "chance": _num(self.chance),
            "fingerprint": fp,
            "builtin_preprocessing": list(self.builtin_preprocessing),
        }


def _num(v) -> float | None:
    if v is None:
        return None
    v = float(v)
    return None if math.isnan(v) or math.isinf(v) else v


# -- inputs -------------------------------------------------------------------

def _as_loaded(model):
    from tlviz.models import LoadedModel, summarize

    if isinstance(model, LoadedModel):
        return model
    return summarize(model)


def _image_array(images) -> np.ndarray:
    arr = images.images if isinstance(images, ImageSet) else np.asarray(images)
    if arr.ndim != 4 or arr.dtype != np.uint8:
        raise NormalizationRefused(
            f"Expected uint8 images of shape (N, height, width, channels), got {arr.dtype} {arr.shape}. "
            "Load them with tlviz.imagesets.load_image_set at the model's input size.")
    if not len(arr):
        raise NormalizationRefused("The image set is empty. Give at least one image.")
    return arr


def _check_shapes(loaded, arr: np.ndarray) -> None:
    want = loaded.input_shape
    got = arr.shape[1:]
    for w, g in zip(want, got):
        if w is not None and int(w) != int(g):
            raise NormalizationRefused(
                f"The images are {got[0]}x{got[1]}x{got[2]} but {loaded.name} expects "
                f"{'x'.join('?' if d is None else str(d) for d in want)}. Decode them at the model's input size "
                "(ImageSource.load(loaded.image_size, loaded.channels)).")


def label_match(model, images: ImageSet) -> LabelMatch:
    """Map the image set's classes onto the model's outputs.

    Classes are matched by name when the model records its class names
    (tlviz metadata), otherwise by position (the image set's sorted folder
    names, or the order in its ``labels.txt``).

    Args:
        model: a `LoadedModel` or Keras model.
        images: the `ImageSet`.

    Returns:
        A `LabelMatch`; its ``reason`` says why accuracy is hidden when
        ``labels`` is None.
    """
    loaded = _as_loaded(model)
    k = 2 if loaded.n_outputs == 1 else loaded.n_outputs
    names = list(images.class_names)
    recorded = loaded.class_names if loaded.class_names and len(loaded.class_names) == k else None
    output_names = recorded or (names if len(names) == k else [str(i) for i in range(k)])
    present = [names[i] for i in np.unique(images.labels)]
    if recorded:
        missing = [c for c in present if c not in recorded]
        if missing:
            return LabelMatch(None, (
                f"The image set's classes ({_list(present)}) are not the classes recorded with the model "
                f"({_list(recorded)}), so accuracy cannot be measured and only the label-free fingerprint is "
                "shown. Use images of the model's own classes to see accuracy."), False, output_names)
        index = np.array([recorded.index(c) if c in recorded else -1 for c in names], dtype=np.int64)
        labels = index[images.labels]
        remapped = bool(np.any(labels != images.labels))
        return LabelMatch(labels, None, remapped, output_names)
    if len(names) != k:
        return LabelMatch(None, (
            f"The image set has {len(names)} classes but the model has {k} outputs, so accuracy cannot be "
            "measured and only the label-free fingerprint is shown. Use an image set with one folder per "
            "model output (a labels.txt listing them fixes the output order) to see accuracy."),
            False, output_names)
    return LabelMatch(np.asarray(images.labels, dtype=np.int64), None, False, output_names)


def _list(items, limit: int = 8) -> str:
    items = list(items)
    text = ", ".join(str(i) for i in items[:limit])
    return text + (f", … ({len(items)} in all)" if len(items) > limit else "")


def custom_preset(scale: float | str | None = None, mean: float | str | tuple | None = None,
                  std: float | str | tuple | None = None) -> CustomPreset:
    """Build a `CustomPreset` from typed values: ``(x * scale - mean) / std``.

    Args:
        scale: a number or its text. Defaults to `1/255`.
        mean: a number, ``R,G,B`` values, or their text (``"0.5, 0.5, 0.5"``). Defaults to `0`.
        std: like `mean`; must not contain 0. Defaults to `1`.

    Returns:
        The `CustomPreset`.

    Raises:
        NormalizationRefused: a value is not a number, is empty, has neither
            one nor three values, or `std` contains 0.
    """
    scale_v = 1.0 / 255.0 if scale in (None, "") else _values(scale, "scale", allow_three=False)
    mean_v = 0.0 if mean in (None, "") else _values(mean, "mean")
    std_v = 1.0 if std in (None, "") else _values(std, "std")
    if any(v == 0 for v in (std_v if isinstance(std_v, tuple) else (std_v,))):
        raise NormalizationRefused("The custom std must not contain 0. Use 1 to leave a channel unscaled.")
    if scale_v == 0:
        raise NormalizationRefused("The custom scale must not be 0 (that would blank every image). "
                                   "Use 1/255 = 0.00392 to scale to [0, 1].")
    return CustomPreset(scale=scale_v, mean=mean_v, std=std_v)


def _values(v, what: str, allow_three: bool = True):
    if isinstance(v, str):
        try:
            parts = tuple(float(x) for x in v.replace(";", ",").split(",") if x.strip())
        except ValueError:
            raise NormalizationRefused(f"The custom {what} must be a number" + (" or three comma-separated numbers "
                                       "such as 0.5, 0.5, 0.5" if allow_three else "") + f"; got {v!r}.") from None
    elif isinstance(v, (list, tuple)):
        parts = tuple(float(x) for x in v)
    else:
        parts = (float(v),)
    if not parts:
        raise NormalizationRefused(f"The custom {what} is empty. Give a number such as 0.5.")
    if any(math.isnan(x) or math.isinf(x) for x in parts):
        raise NormalizationRefused(f"The custom {what} must be a finite number; got {v!r}.")
    if len(parts) == 1:
        return parts[0]
    if not allow_three or len(parts) != 3:
        raise NormalizationRefused(f"The custom {what} takes " + ("one number" if not allow_three else
                                   "one number or three (one per R, G, B channel)") + f"; got {len(parts)}.")
    return parts


# -- inference ----------------------------------------------------------------

def _top(out: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Predicted index and its probability; logits are turned into probabilities."""
    out = out.reshape(len(out), -1).astype(np.float32, copy=False)
    if out.shape[1] == 1:  # one sigmoid unit: binary classifier
        p = out[:, 0]
        if np.any((p < 0) | (p > 1)):
            p = 1.0 / (1.0 + np.exp(-p))
        pred = (p >= 0.5).astype(np.int32)
        return pred, np.where(pred == 1, p, 1.0 - p).astype(np.float32)
    probs = out
    is_prob = (out.min(axis=1) >= 0) & (out.max(axis=1) <= 1) & (np.abs(out.sum(axis=1) - 1) < 1e-3)
    if not is_prob.all():
        z = out - out.max(axis=1, keepdims=True)
        soft = np.exp(z)
        soft /= soft.sum(axis=1, keepdims=True)
        probs = np.where(is_prob[:, None], out, soft)
    pred = probs.argmax(axis=1).astype(np.int32)
    return pred, probs[np.arange(len(pred)), pred].astype(np.float32)


def _prepare(images: np.ndarray, preset, channel_order: str) -> np.ndarray:
    if channel_order == "BGR":
        images = images[..., ::-1]
    return apply_preset(images, preset)


def _planned(model, batch_size: int | None, n: int | None = None, mode: str = "inference") -> int:
    """`batch_size` when given, else the batch that fits the memory budget (at most `DEFAULT_BATCH_SIZE`)."""
    from tlviz.memory import plan_batch

    if batch_size is not None:
        if int(batch_size) < 1:
            raise NormalizationRefused(f"The batch size must be 1 or more, not {batch_size}.")
        return int(batch_size)
    return plan_batch(model, mode, n=n, max_batch=DEFAULT_BATCH_SIZE).batch_size


def _predict(keras_model, images: np.ndarray, preset, channel_order: str = "RGB",
             batch_size: int | None = None, progress: Callable[[int, int], None] | None = None,
             tap: FeatureTap | None = None):
    """Predictions for uint8 `images`, the preset applied one batch at a time.

    The next batch is normalized on a helper thread while the model runs, so at
    most two float batches exist at once. `model.predict_on_batch` reuses the
    model's compiled predict function across calls (measured faster than
    `model.predict` per chunk, which builds a tf.data pipeline each call).
    With a `tap`, its two-output model runs instead and the tapped features of
    ``tap.indices`` are kept (returned third, else None).
    """
    n = len(images)
    batch_size = _planned(keras_model, batch_size, n)
    preds = np.empty(n, dtype=np.int32)
    conf = np.empty(n, dtype=np.float32)
    feats = None
    starts = list(range(0, n, batch_size))
    with ThreadPoolExecutor(max_workers=1) as pool:
        nxt = pool.submit(_prepare, images[0:batch_size], preset, channel_order)
        for k, i in enumerate(starts):
            x = nxt.result()
            if k + 1 < len(starts):
                j = starts[k + 1]
                nxt = pool.submit(_prepare, images[j:j + batch_size], preset, channel_order)
            if tap is None:
                p, c = _top(first_output(keras_model.predict_on_batch(x)))
            else:
                out, f = tap.model.predict_on_batch(x)
                p, c = _top(np.asarray(out))
                feats = _keep_features(feats, np.asarray(f), tap.indices, i)
            preds[i:i + len(x)] = p
            conf[i:i + len(x)] = c
            del x
            if progress is not None:
                progress(min(i + batch_size, n), n)
    return preds, conf, feats


def _keep_features(feats, f: np.ndarray, indices: np.ndarray, start: int):
    """Copy the rows of batch `f` (images ``start...``) that `indices` asks for into `feats`."""
    if f.ndim > 2:
        f = f.mean(axis=tuple(range(1, f.ndim - 1)))
    f = f.reshape(len(f), -1).astype(np.float32, copy=False)
    if feats is None:
        feats = np.zeros((len(indices), f.shape[1]), dtype=np.float32)
    lo, hi = np.searchsorted(indices, [start, start + len(f)])
    feats[lo:hi] = f[indices[lo:hi] - start]
    return feats


def evaluate_preset(model, images: ImageSet, preset: str | CustomPreset, channel_order: str = "RGB",
                    batch_size: int | None = None, progress: Callable[[int, int], None] | None = None,
                    labels: LabelMatch | None = None) -> Evaluation:
    """Run the model on the decoded images under one preset.

    Args:
        model: a `LoadedModel` or Keras model.
        images: an `ImageSet` at the model's input size.
        preset: one of `PRESETS` or a `CustomPreset`.
        channel_order: ``"RGB"`` or ``"BGR"``. Defaults to `"RGB"`.
        batch_size: images per forward pass. Defaults to the batch that fits the
            memory budget (`tlviz.memory.plan_batch`, at most `DEFAULT_BATCH_SIZE`).
        progress: optional ``progress(done, total)`` called after each batch.
        labels: a precomputed `label_match(model, images)`. Defaults to computing it.

    Returns:
        An `Evaluation` (its ``accuracy`` is None when the classes do not match).

    Raises:
        NormalizationRefused: the images do not fit the model, or the preset
            does not apply to them (e.g. `caffe` on one-channel images).
    """
    return evaluate_setting(model, images, Setting(preset, images.resize, channel_order, images.resize),
                            batch_size=batch_size, progress=progress, labels=labels)


def evaluate_setting(model, images: ImageSet, setting: Setting, source=None,
                     batch_size: int | None = None, progress: Callable[[int, int], None] | None = None,
                     labels: LabelMatch | None = None, tap: FeatureTap | None = None) -> Evaluation:
    """Run the model under one `Setting`.

    A setting whose resize method differs from the one `images` were decoded
    with needs `source` to decode the images again.

    Args:
        model: a `LoadedModel` or Keras model.
        images: the `ImageSet` at the model's input size.
        setting: the `Setting`.
        source: the `ImageSource` the images came from. Defaults to `None`
            (then only ``setting.resize == images.resize`` is possible).
        batch_size: images per forward pass. Defaults to the batch that fits the
            memory budget (`tlviz.memory.plan_batch`, at most `DEFAULT_BATCH_SIZE`).
        progress: optional ``progress(done, total)`` called after each batch.
        labels: a precomputed `label_match(model, images)`. Defaults to computing it.
        tap: also keep an inner layer's features (`FeatureTap`). Defaults to `None`.

    Returns:
        An `Evaluation`.
    """
    t0 = time.perf_counter()
    loaded = _as_loaded(model)
    if setting.resize != images.resize:
        if source is None:
            raise NormalizationRefused(
                f"The {setting.resize!r} resize variant needs the original images: pass `source=` (the "
                "ImageSource the image set came from).")
        images = source.load(images.image_size, int(images.images.shape[-1]), resize=setting.resize)
        labels = None
    arr = _image_array(images)
    _check_shapes(loaded, arr)
    if (not isinstance(setting.preset, CustomPreset)
            and setting.preset not in applicable_presets(arr.shape[-1], teachable=True)):
        raise NormalizationRefused(
            f"Preset {setting.preset!r} needs 3-channel RGB images; these have {arr.shape[-1]}. Use one of: "
            f"{', '.join(applicable_presets(arr.shape[-1]))}.")
    if setting.channel_order == "BGR" and arr.shape[-1] != 3:
        raise NormalizationRefused("Channel order BGR only applies to 3-channel images.")
    match = labels or label_match(loaded, images)
    try:
        preds, conf, feats = _predict(loaded.model, arr, setting.preset, setting.channel_order, batch_size, progress,
                                      tap=tap if setting.resize == images.resize else None)
    except ValueError as exc:  # e.g. a custom preset with std 0
        raise NormalizationRefused(str(exc)) from None
    return Evaluation(setting, preds, conf, match.labels, list(images.files), time.perf_counter() - t0, feats)


# -- the label-free fingerprint -------------------------------------------------

class _NoFingerprint(Exception):
    pass


def _first_bn(model):
    """(chain of containing models, BN layer, path) of the first BatchNormalization layer."""
    from tlviz.layers import iter_leaves

    for leaf in iter_leaves(model):
        if type(leaf.layer).__name__ in BN_CLASSES:
            return list(leaf.ancestors), leaf.layer, leaf.path
    return None


def _input_in(container, layer):
    """The tensor feeding `layer` inside `container`'s graph."""
    import keras

    nodes = list(getattr(layer, "_inbound_nodes", []) or [])
    for node in nodes:
        tensors = list(node.input_tensors)
        if len(tensors) != 1:
            continue
        t = tensors[0]
        if any(t is i for i in container.inputs):
            return t
        try:
            keras.Model(container.inputs[0], t)
        except Exception:  # the node belongs to another graph
            continue
        return t
    raise _NoFingerprint(f"the input of layer '{layer.name}' could not be traced back to the model's input")


def _up_to(model, chain, bn) -> Callable:
    """A callable running `model` from its input up to `bn`'s input (nested models followed)."""
    import keras

    parts = []
    container = model
    for nxt in list(chain) + [bn]:
        t = _input_in(container, nxt)
        if not any(t is i for i in container.inputs):
            parts.append(keras.Model(container.inputs[0], t))
        container = nxt

    import tensorflow as tf

    @tf.function(reduce_retracing=True, autograph=False)
    def run(x):  # compiled: an eager call would keep every intermediate output until it returns
        for p in parts:
            x = p(x, training=False)
        return x

    return run


def _sample_index(n: int, k: int) -> np.ndarray:
    if n <= k:
        return np.arange(n)
    return np.unique(np.linspace(0, n - 1, k).round().astype(np.int64))


def fingerprint(model, images, presets: tuple | list | None = None, custom: CustomPreset | None = None,
                max_images: int = DEFAULT_FINGERPRINT_IMAGES, batch_size: int | None = None) -> Fingerprint:
    """Rank presets by how well they reproduce the first BatchNormalization layer's statistics.

    A BatchNormalization layer remembers the mean and variance of its input
    during training (``moving_mean`` / ``moving_variance``). Feeding images
    prepared the way the model was trained reproduces them; another
    normalization shifts and scales them. Only the layers up to that BN layer
    run, on an evenly spaced sample of images, and no labels are needed.

    Args:
        model: a `LoadedModel` or Keras model.
        images: an `ImageSet` or a ``uint8`` array ``(N, H, W, C)`` at the
            model's input size (labels are not used).
        presets: preset names to rank. Defaults to every applicable preset.
        custom: an extra `CustomPreset` to rank. Defaults to `None`.
        max_images: sample size. Defaults to `DEFAULT_FINGERPRINT_IMAGES`.
        batch_size: images per forward pass. Defaults to the batch that fits the
            memory budget (`tlviz.memory.plan_batch`, at most `DEFAULT_BATCH_SIZE`).

    Returns:
        A `Fingerprint`; ``ranking`` is None (with ``reason``) when the model
        has no BatchNormalization layer or it holds no trained statistics.
    """
    import keras

    t0 = time.perf_counter()
    loaded = _as_loaded(model)
    arr = _image_array(images)
    _check_shapes(loaded, arr)
    chosen = list(presets) if presets is not None else list(applicable_presets(arr.shape[-1]))
    # A named setting with another preset's arithmetic (teachable = tf) has that preset's fingerprint.
    chosen = list(dict.fromkeys(PIXEL_PRESET.get(p, p) for p in chosen))
    for p in chosen:
        if p not in applicable_presets(arr.shape[-1]):
            raise NormalizationRefused(f"Preset {p!r} does not apply to {arr.shape[-1]}-channel images. Use one of: "
                                       f"{', '.join(applicable_presets(arr.shape[-1]))}.")
    candidates: list = chosen + ([custom] if custom is not None else [])

    found = _first_bn(loaded.model)
    if found is None:
        return Fingerprint(None, None, (
            f"{loaded.name} has no BatchNormalization layer, so there are no stored training statistics to "
            "compare with; the label-free fingerprint needs one. Rank the presets by accuracy instead."),
            0, time.perf_counter() - t0)
    chain, bn, path = found
    mm = keras.ops.convert_to_numpy(bn.moving_mean).astype(np.float64).ravel()
    mv = keras.ops.convert_to_numpy(bn.moving_variance).astype(np.float64).ravel()
    if has_initial_statistics(bn):
        return Fingerprint(None, path, (
            f"The first BatchNormalization layer ('{path}') still holds its initial statistics (mean 0, "
            "variance 1): it was never trained, so it says nothing about the preprocessing used in training."),
            0, time.perf_counter() - t0)
    try:
        run = _up_to(loaded.model, chain, bn)
    except _NoFingerprint as exc:
        return Fingerprint(None, path, f"No fingerprint: {exc}.", 0, time.perf_counter() - t0)

    axis = bn.axis[0] if isinstance(bn.axis, (list, tuple)) else bn.axis
    eps = float(getattr(bn, "epsilon", 1e-3))
    sample = arr[_sample_index(len(arr), max_images)]
    batch_size = _planned(loaded.model, batch_size, len(sample))
    rows = []
    for preset in candidates:
        mean, var = _activation_moments(run, sample, preset, axis, batch_size, mm)
        if mean.shape != mm.shape:
            return Fingerprint(None, path, (
                f"The activations reaching '{path}' have {mean.size} channels but the layer stores {mm.size}; "
                "the fingerprint cannot compare them."), len(sample), time.perf_counter() - t0)
        va, vb = var + eps, mv + eps
        kl = 0.5 * (va / vb + (mean - mm) ** 2 / vb - 1.0 + np.log(vb / va))
        rows.append({
            "preset": preset.name if isinstance(preset, CustomPreset) else preset,
            "distance": float(np.mean(kl)),
            "mean_shift": float(np.mean(np.abs(mean - mm) / np.sqrt(vb))),
            "std_ratio": float(np.median(np.sqrt(va / vb))),
        })
    ranking = pd.DataFrame(rows)
    # Distances equal to 6 significant digits are ties; a tie goes to the named preset.
    ranking["_d"] = [float(f"{d:.6g}") for d in ranking["distance"]]
    ranking["_custom"] = [isinstance(p, CustomPreset) for p in candidates]
    ranking = ranking.sort_values(["_d", "_custom"], kind="mergesort").reset_index(drop=True)
    ranking.insert(0, "rank", np.arange(1, len(ranking) + 1))
    ranking["is_best"] = ranking["rank"] == 1
    return Fingerprint(ranking[FINGERPRINT_COLUMNS], path, None, len(sample), time.perf_counter() - t0)


def _activation_moments(run, sample: np.ndarray, preset, axis: int, batch_size: int, shift: np.ndarray):
    """Per-channel mean and variance (float64) of the activations, combined over batches.

    The reductions run in the backend (multi-threaded) on activations shifted by
    `shift` (the layer's moving mean), which keeps the float32 sums accurate
    where it matters: for presets whose statistics are close to the layer's.
    """
    import keras

    ops = keras.ops
    count, s1, s2 = 0, 0.0, 0.0
    for i in range(0, len(sample), batch_size):
        a = ops.cast(run(apply_preset(sample[i:i + batch_size], preset)), "float32")  # mixed precision too
        ndim = len(a.shape)
        ax = axis % ndim
        axes = tuple(k for k in range(ndim) if k != ax)
        shape = [1] * ndim
        shape[ax] = -1
        d = a - ops.convert_to_tensor(shift.reshape(shape).astype(np.float32))
        n_b = int(np.prod([a.shape[k] for k in axes]))
        s1 = s1 + keras.ops.convert_to_numpy(ops.mean(d, axis=axes)).astype(np.float64) * n_b
        s2 = s2 + keras.ops.convert_to_numpy(ops.mean(ops.square(d), axis=axes)).astype(np.float64) * n_b
        count += n_b
    m1, m2 = s1 / count, s2 / count
    return m1 + shift, np.maximum(m2 - m1 ** 2, 0.0)


# -- the full comparison ----------------------------------------------------------

def expects_raw_pixels(builtin: list[str]) -> bool:
    """Whether the model's own input layers normalize (so it wants raw 0-255 pixels)."""
    return any(b.startswith(_RAW_PIXEL_LAYERS) for b in builtin)


def analyze(model, images: ImageSet, *, source=None, custom: CustomPreset | None = None,
            presets: tuple | list | None = None, variants: bool = True,
            batch_size: int | None = None, fingerprint_images: int = DEFAULT_FINGERPRINT_IMAGES,
            precomputed_fingerprint: Fingerprint | None = None,
            evaluate: Callable[[Setting], Evaluation] | None = None,
            on_fingerprint: Callable[[Fingerprint], None] | None = None,
            progress: Callable[[float, str], None] | None = None,
            on_result: Callable[[pd.DataFrame], None] | None = None,
            feature_tap: FeatureTap | None = None) -> NormalizationReport:
    """Evaluate the model under every preset, then vary resize and channel order.

    Order of work: the label-free fingerprint first (reported through
    `on_fingerprint`), then one evaluation per preset (and `custom`), then,
    against the best preset, each other resize method and BGR channel order,
    one at a time.

    Args:
        model: a `LoadedModel` (its recorded class names are used) or Keras model.
        images: the `ImageSet` decoded at the model's input size.
        source: the `ImageSource` the images came from; needed for the resize
            variants (skipped without it). Defaults to `None`.
        custom: an extra user-typed `CustomPreset`. Defaults to `None`.
        presets: named presets to compare. Defaults to every applicable one.
        variants: also vary resize method and channel order. Defaults to `True`.
        batch_size: images per forward pass. Defaults to the batch that fits the
            memory budget (`tlviz.memory.plan_batch`, at most `DEFAULT_BATCH_SIZE`).
        fingerprint_images: sample size of the fingerprint. Defaults to
            `DEFAULT_FINGERPRINT_IMAGES`.
        precomputed_fingerprint: reuse a `fingerprint(...)` result. Defaults to
            computing it.
        evaluate: ``evaluate(setting) -> Evaluation`` used instead of
            `evaluate_setting` (a page passes a cached version). Defaults to `None`.
        on_fingerprint: called with the `Fingerprint` as soon as it is ready.
        progress: called as ``progress(fraction, text)`` while working.
        on_result: called with the partial ranked table after each setting.
        feature_tap: keep an inner layer's features under every named / custom
            preset (``Evaluation.features``). Defaults to `None`.

    Returns:
        A `NormalizationReport`.

    Raises:
        NormalizationRefused: the images do not fit the model, or a preset
            does not apply to them.
    """
    t_start = time.perf_counter()
    loaded = _as_loaded(model)
    arr = _image_array(images)
    _check_shapes(loaded, arr)
    channels = int(arr.shape[-1])
    names = (list(presets) if presets is not None
             else list(applicable_presets(channels, teachable=bool(getattr(loaded, "teachable_machine", False)))))
    if source is None:  # a named setting with its own resize needs the original images
        names = [p for p in names if preset_resize(p, images.resize) == images.resize]
    for p in names:
        if p not in applicable_presets(channels, teachable=True):
            raise NormalizationRefused(f"Preset {p!r} does not apply to {channels}-channel images. Use one of: "
                                       f"{', '.join(applicable_presets(channels))}.")
    if not names and custom is None:
        raise NormalizationRefused("No preset to compare. Pass at least one preset name or a custom preset.")
    match = label_match(loaded, images)
    accuracy_available = match.labels is not None
    say = progress or (lambda fraction, text: None)

    say(0.0, "Taking the label-free fingerprint…")
    fp = precomputed_fingerprint or fingerprint(loaded, images, presets=names, custom=custom,
                                                max_images=fingerprint_images, batch_size=batch_size)
    if on_fingerprint is not None:
        on_fingerprint(fp)
    t_fp = time.perf_counter()

    r0 = images.resize
    base = ([Setting(p, preset_resize(p, r0), base_resize=preset_resize(p, r0)) for p in names]
            + ([Setting(custom, r0, base_resize=r0)] if custom else []))
    n_variants = ((len(RESIZE_METHODS) - 1) if source is not None else 0) + (1 if channels == 3 else 0)
    total = len(base) + (n_variants if variants else 0)
    evals: list[Evaluation] = []

    def run(setting: Setting, done: int) -> None:
        text = f"Evaluating {setting.label} ({done + 1} of {total})…"
        say(done / total, text)
        if evaluate is not None:
            ev = evaluate(setting)
        else:
            def batch_progress(k, n):
                say((done + k / n) / total, text)
            ev = evaluate_setting(loaded, images, setting, source=source, batch_size=batch_size,
                                  progress=batch_progress, labels=match if setting.resize == images.resize else None,
                                  tap=feature_tap if setting.kind in ("preset", "custom") else None)
        evals.append(ev)
        if on_result is not None:
            on_result(_ranked_table(evals, fp, accuracy_available))

    for k, s in enumerate(base):
        run(s, k)
    t_presets = time.perf_counter()

    best_preset, best_by = _best_preset(_ranked_table(evals, fp, accuracy_available), fp, accuracy_available)
    k = 2 if loaded.n_outputs == 1 else int(loaded.n_outputs)
    inconclusive, chance = _verdict(evals, match, k, loaded.name)
    if inconclusive:  # the variants are compared against a best setting: there is none
        best_preset, best_by = None, None
    if variants and best_preset is not None:
        best_obj = custom if custom is not None and best_preset == custom.name else best_preset
        rb = preset_resize(best_obj, r0)
        extra = []
        if source is not None:
            extra += [Setting(best_obj, m, base_resize=rb) for m in RESIZE_METHODS if m != rb]
        if channels == 3:
            extra.append(Setting(best_obj, rb, "BGR", base_resize=rb))
        for k, s in enumerate(extra):
            run(s, len(base) + k)
    say(1.0, "Done.")
    t_end = time.perf_counter()

    table = _ranked_table(evals, fp, accuracy_available)
    best_preset, best_by = _best_preset(table, fp, accuracy_available)  # the final table has the last word
    if inconclusive:
        best_preset, best_by = None, None
        table["is_best"] = False
    by_label = {e.setting.label: e for e in evals}
    best_setting = by_label[table["setting"].iloc[0]].setting if len(table) else None
    named = [p for p in table[table["kind"] == "preset"]["preset"]] if accuracy_available else (fp.order or [])
    named = [p for p in named if p in PRESETS]
    builtin = list(loaded.builtin_preprocessing)
    return NormalizationReport(
        model_name=loaded.name,
        image_size=(int(arr.shape[1]), int(arr.shape[2])),
        n_images=int(len(arr)),
        results=table,
        per_class=_per_class(evals, match) if accuracy_available else pd.DataFrame(columns=PER_CLASS_COLUMNS),
        evaluations=by_label,
        accuracy_available=accuracy_available,
        accuracy_note=match.reason,
        best_preset=best_preset,
        best_by=best_by,
        best_named_preset=named[0] if named and best_by else None,
        best_setting=best_setting if best_by else None,
        fingerprint=fp,
        agreement_note=(_inconclusive_note(fp) if inconclusive else
                        _agreement_note(best_preset if best_by == "accuracy" else None, fp, match.reason, table)),
        builtin_preprocessing=builtin,
        expects_raw_pixels=expects_raw_pixels(builtin),
        output_names=match.output_names,
        files=list(images.files),
        labels=match.labels,
        custom=custom,
        inconclusive=inconclusive,
        chance=chance,
        seconds={"fingerprint": fp.seconds if precomputed_fingerprint is None else 0.0,
                 "presets": t_presets - t_fp, "variants": t_end - t_presets, "total": t_end - t_start},
    )


def _best_preset(table: pd.DataFrame, fp: Fingerprint, accuracy_available: bool):
    """The best preset: the top preset row of the ranked table when labels match, else the fingerprint's."""
    base = table[table["kind"].isin(["preset", "custom"])]
    if accuracy_available and len(base):
        return str(base["preset"].iloc[0]), "accuracy"
    if fp.best is not None:
        return fp.best, "fingerprint"
    return None, None


def _agree(ev: Evaluation, ref: Evaluation) -> float:
    if ev.files == ref.files:
        return float(np.mean(ev.predictions == ref.predictions))
    pos = {f: i for i, f in enumerate(ref.files)}
    pairs = [(i, pos[f]) for i, f in enumerate(ev.files) if f in pos]
    if not pairs:
        return float("nan")
    a, b = np.array(pairs).T
    return float(np.mean(ev.predictions[a] == ref.predictions[b]))


def _ranked_table(evals: list[Evaluation], fp: Fingerprint, accuracy_available: bool) -> pd.DataFrame:
    """Rows best first. With labels: accuracy (ties: fingerprint rank, then mean
    confidence), except that the top row is the fingerprint's favourite among the
    settings whose accuracy is within sampling noise of the best (`TIE_Z`). Without
    labels: presets in fingerprint order (or by confidence), then the variants."""
    if not evals:
        return pd.DataFrame(columns=RESULT_COLUMNS)
    fp_dist = {} if fp.ranking is None else dict(zip(fp.ranking["preset"], fp.ranking["distance"]))
    fp_dist.update({p: fp_dist[q] for p, q in PIXEL_PRESET.items() if q in fp_dist})
    kind_order = {"preset": 0, "custom": 1, "resize": 2, "channel order": 3}
    rows = []
    for pos, e in enumerate(evals):
        s = e.setting
        base_kind = s.kind in ("preset", "custom")
        rows.append({
            "setting": s.label, "kind": s.kind, "preset": s.preset_name, "resize": s.resize,
            "channel_order": s.channel_order, "accuracy": e.accuracy if accuracy_available else np.nan,
            **_interval_columns(e, accuracy_available),
            "mean_confidence": e.mean_confidence, "n": e.n,
            "fingerprint_distance": fp_dist.get(s.preset_name, np.nan) if base_kind else np.nan,
            "_pos": pos, "_kind": kind_order[s.kind],
        })
    df = pd.DataFrame(rows)
    df["accuracy"] = df["accuracy"].astype(float)
    # Differences below float noise are ties. Equal accuracy goes to the preset closer by the
    # fingerprint (a model that predicts one class for everything ties on accuracy), then to
    # higher confidence, then to the named preset, then to the listing order.
    df["_conf"] = -df["mean_confidence"].round(5)
    fp_rank = {p: i for i, p in enumerate(fp.order or [])}
    fp_rank.update({p: fp_rank[q] for p, q in PIXEL_PRESET.items() if q in fp_rank})
    df["_fp"] = [fp_rank.get(p, len(fp_rank)) if k < 2 else len(fp_rank) for p, k in zip(df["preset"], df["_kind"])]
    if accuracy_available:
        df["_acc"] = -df["accuracy"].round(9)
        df = df.sort_values(["_acc", "_fp", "_conf", "_kind", "_pos"], kind="mergesort")
        if fp.ranking is not None:
            df = _settle_ties_by_fingerprint(df, evals)
    else:
        df["_group"] = (df["_kind"] >= 2).astype(int)  # presets first, then the variants
        df = df.sort_values(["_group", "_conf" if fp.ranking is None else "_fp", "_pos"], kind="mergesort")
    df = df.reset_index(drop=True)
    top = evals[int(df["_pos"].iloc[0])]
    df["agreement"] = [_agree(evals[int(p)], top) for p in df["_pos"]]
    df.insert(0, "rank", np.arange(1, len(df) + 1))
    df["is_best"] = df["rank"] == 1
    return df[RESULT_COLUMNS]


def _interval_columns(e: Evaluation, accuracy_available: bool) -> dict:
    if not accuracy_available or e.correct is None:
        return {"accuracy_low": np.nan, "accuracy_high": np.nan}
    lo, hi = wilson_interval(int(e.correct.sum()), e.n)
    return {"accuracy_low": lo, "accuracy_high": hi}


def _verdict(evals: list[Evaluation], match: LabelMatch, k: int, model_name: str) -> tuple[str | None, float | None]:
    """``(inconclusive sentence or None, chance level)``: is any setting clearly above chance?

    Chance is the accuracy of always answering the most common class. A setting
    is clearly above it when the 95 % Wilson interval of its accuracy lies
    entirely above chance; when none is, no preset can be called best.
    """
    scored = [e for e in evals if e.correct is not None and e.n]
    if match.labels is None or not scored:
        return None, None
    chance = chance_level(match.labels, k)
    top = max(scored, key=lambda e: (e.accuracy, -e.n))
    correct = int(top.correct.sum())
    if clearly_above(correct, top.n, chance):
        return None, chance
    lo, hi = wilson_interval(correct, top.n)
    return (f"No preprocessing makes {model_name} better than chance on these {top.n} images: the most accurate "
            f"setting, `{top.setting.label}`, scores {top.accuracy:.1%} (95 % interval {format_interval(lo, hi)}) "
            f"against {chance:.1%} for always answering the most common class, so no preset can be called best. "
            "That points to the model, not the preprocessing: a head not trained for these classes, base features "
            "that were never pre-trained (or whose weights did not load), or labels that do not match the model's "
            "outputs."), chance


def _mcnemar_z(a: Evaluation, b: Evaluation) -> float:
    """How much better `a` is than `b` on the same images, in standard errors (McNemar)."""
    ca, cb = a.correct, b.correct
    only_a = int(np.sum(ca & ~cb))
    only_b = int(np.sum(~ca & cb))
    return 0.0 if only_a + only_b == 0 else (only_a - only_b) / math.sqrt(only_a + only_b)


def _settle_ties_by_fingerprint(df: pd.DataFrame, evals: list[Evaluation]) -> pd.DataFrame:
    """Move to the top the fingerprint's favourite among the rows whose accuracy is not
    significantly below the most accurate one (paired McNemar test, `TIE_Z`)."""
    top = evals[int(df["_pos"].iloc[0])]
    tied = [pos for pos in df["_pos"]
            if evals[pos].files == top.files and _mcnemar_z(top, evals[pos]) < TIE_Z]
    sub = df[df["_pos"].isin(tied)].sort_values(["_fp", "_acc", "_conf", "_kind", "_pos"], kind="mergesort")
    winner = int(sub["_pos"].iloc[0])
    if winner == int(df["_pos"].iloc[0]):
        return df
    return pd.concat([df[df["_pos"] == winner], df[df["_pos"] != winner]])


def _per_class(evals: list[Evaluation], match: LabelMatch) -> pd.DataFrame:
    rows = []
    for e in evals:
        if e.setting.kind not in ("preset", "custom") or e.labels is None:
            continue
        correct = e.correct
        for c in np.unique(e.labels):
            sel = e.labels == c
            rows.append({"preset": e.setting.preset_name, "class": match.output_names[int(c)],
                         "accuracy": float(correct[sel].mean()), "n": int(sel.sum())})
    return pd.DataFrame(rows, columns=PER_CLASS_COLUMNS)


def _inconclusive_note(fp: Fingerprint) -> str:
    if fp.best is None:
        return "Accuracy is at chance under every setting, so the ranking shows no preferred preparation."
    return (f"The label-free fingerprint puts `{fp.best}` closest to the statistics the model was trained with, "
            "but with accuracy at chance under every setting that cannot be confirmed on these images.")


def _agreement_note(best_by_accuracy: str | None, fp: Fingerprint, accuracy_note: str | None,
                    table: pd.DataFrame | None = None) -> str:
    if best_by_accuracy is not None and fp.best is not None:
        if table is not None and len(table) and table["accuracy"].iloc[0] < table["accuracy"].max():
            top = table.loc[table["accuracy"].idxmax()]
            return (f"`{table['setting'].iloc[0]}` ({table['accuracy'].iloc[0]:.1%}) is within sampling noise of "
                    f"the most accurate setting `{top['setting']}` ({top['accuracy']:.1%}), so the label-free "
                    f"fingerprint, which ranks `{fp.best}` first, decided.")
        if fp.best == best_by_accuracy:
            return (f"The label-free fingerprint agrees with the accuracy ranking: both put `{fp.best}` first.")
        return (f"The label-free fingerprint ranks `{fp.best}` first while accuracy favours `{best_by_accuracy}`. "
                "Accuracy on correctly labelled images is the stronger evidence; a disagreement can mean these "
                "images look different from the training images (colours, contrast, size).")
    if fp.best is not None:
        return (f"Accuracy cannot be measured on these images, so the ranking rests on the label-free fingerprint "
                f"alone: it puts `{fp.best}` first.")
    if best_by_accuracy is not None:
        return f"No label-free fingerprint: {fp.reason} The ranking rests on accuracy alone."
    return (f"Neither accuracy nor the fingerprint is available, so no preset can be recommended. "
            f"{accuracy_note or ''} {fp.reason or ''}").strip()


# -- what the results mean ----------------------------------------------------------

def changed_predictions(report: NormalizationReport, a: str, b: str, limit: int | None = None) -> pd.DataFrame:
    """Images whose prediction changes between preset `a` and preset `b`.

    Args:
        report: a `NormalizationReport`.
        a: a preset name in the report (usually `best_preset`).
        b: another preset name (usually the one the user's inference code uses).
        limit: keep at most this many rows. Defaults to all.

    Returns:
        DataFrame with `CHANGE_COLUMNS` (``index`` into the image set); images
        right under `a` and wrong under `b` first, then by confidence under `a`.
    """
    preds, confs = report.predictions, report.confidences
    for name in (a, b):
        if name not in preds:
            raise ValueError(f"Preset {name!r} was not evaluated. Use one of: {', '.join(preds)}.")
    pa, pb = preds[a], preds[b]
    idx = np.flatnonzero(pa != pb)
    names = report.output_names
    labels = report.labels
    df = pd.DataFrame({
        "index": idx.astype(int),
        "file": [report.files[i] for i in idx],
        "label": [names[labels[i]] for i in idx] if labels is not None else [None] * len(idx),
        "prediction_a": [names[pa[i]] for i in idx],
        "confidence_a": confs[a][idx].astype(float),
        "prediction_b": [names[pb[i]] for i in idx],
        "confidence_b": confs[b][idx].astype(float),
        "correct_a": (pa[idx] == labels[idx]) if labels is not None else [None] * len(idx),
        "correct_b": (pb[idx] == labels[idx]) if labels is not None else [None] * len(idx),
    }, columns=CHANGE_COLUMNS)
    if labels is not None and len(df):
        df["_o"] = ~(df["correct_a"].astype(bool) & ~df["correct_b"].astype(bool))
        df = df.sort_values(["_o", "confidence_a"], ascending=[True, False], kind="mergesort").drop(columns="_o")
    else:
        df = df.sort_values("confidence_a", ascending=False, kind="mergesort")
    df = df.reset_index(drop=True)
    return df if limit is None else df.head(limit)


def double_normalization(report: NormalizationReport, inference_preset: str) -> str | None:
    """A warning sentence when normalized images are fed to a model that normalizes itself.

    Returns:
        None when the model has no Rescaling / Normalization layer at its input,
        the inference preset is `raw`, or the measurements show the model was
        itself trained on normalized images (its best preset is not `raw`;
        then `normalization_findings` reports any mismatch as ``preset-mismatch``).
    """
    if not report.expects_raw_pixels or inference_preset == "raw":
        return None
    if report.best_preset not in (None, "raw"):
        return None
    layers = "; ".join(b for b in report.builtin_preprocessing if b.startswith(_RAW_PIXEL_LAYERS))
    return (f"Double normalization: the model already normalizes its input ({layers}), so it expects raw "
            f"0-255 pixels, but your inference code applies `{inference_preset}` as well. Feed raw pixels "
            "(the `raw` preset) and let the model's own layer do the scaling.")


def normalization_findings(report: NormalizationReport, inference_preset: str = "unit") -> list[Finding]:
    """Inference-pipeline findings from a report, most severe first.

    Args:
        report: a `NormalizationReport`.
        inference_preset: the preset the user's inference code applies.
            Defaults to `"unit"`.

    Returns:
        Findings with ids ``double-normalization``, ``preset-mismatch``,
        ``resize-sensitive`` and ``channel-order-sensitive`` (each only when it applies).
    """
    from tlviz.findings import sort_findings

    out: list[Finding] = []
    acc = report.accuracy
    dn = double_normalization(report, inference_preset)
    if dn:
        out.append(Finding(
            id="double-normalization", severity="error", area="inference",
            title="The model normalizes its input itself, and the inference code normalizes again",
            evidence={"builtin_preprocessing": report.builtin_preprocessing, "inference_preset": inference_preset,
                      "accuracy_raw": acc.get("raw"), "accuracy_inference": acc.get(inference_preset)},
            fix=dn))
    best = report.best_preset
    if best is not None and inference_preset in acc and inference_preset != best:
        snippet = report.snippet(Setting(report.preset_object(best), report.best_setting.resize
                                         if report.best_setting else "bilinear"))
        if report.accuracy_available:
            drop = acc[best] - acc[inference_preset]
            if drop >= _MISMATCH_DROP:
                changed = int(np.sum(report.predictions[best] != report.predictions[inference_preset]))
                out.append(Finding(
                    id="preset-mismatch", severity="error", area="inference",
                    title=f"Your inference preset `{inference_preset}` is not the one the model expects (`{best}`)",
                    evidence={"accuracy_expected": acc[best], "accuracy_inference": acc[inference_preset],
                              "changed_predictions": changed, "n": report.n_images},
                    fix=f"Prepare images with `{best}` at inference:\n```python\n{snippet}\n```"))
        elif report.fingerprint.order and report.fingerprint.order[0] != inference_preset:
            out.append(Finding(
                id="preset-mismatch", severity="warning", area="inference",
                title=f"The fingerprint suggests `{best}`, not your inference preset `{inference_preset}`",
                evidence={"fingerprint": report.fingerprint.order,
                          "distance_expected": float(report.fingerprint.ranking["distance"].iloc[0])},
                fix=f"Prepare images with `{best}` at inference:\n```python\n{snippet}\n```"))
    if report.accuracy_available and best is not None:
        ref = acc[best]
        rows = report.results
        for kind, fid, what in (("resize", "resize-sensitive", "resize method"),
                                ("channel order", "channel-order-sensitive", "channel order")):
            sub = rows[rows["kind"] == kind]
            if not len(sub):
                continue
            worst = sub.sort_values("accuracy").iloc[0]
            if ref - worst["accuracy"] >= _MISMATCH_DROP:
                how = (RESIZE_DESCRIPTIONS.get(worst["resize"], worst["resize"]) if kind == "resize"
                       else "BGR channel order (what OpenCV's `cv2.imread` returns)")
                out.append(Finding(
                    id=fid, severity="warning", area="inference",
                    title=f"Accuracy depends on the {what}",
                    evidence={"accuracy_expected": ref, "accuracy_variant": float(worst["accuracy"]),
                              "variant": str(worst["setting"])},
                    fix=(f"With {how} accuracy drops from {ref:.1%} to {worst['accuracy']:.1%}. Make the inference "
                         f"code use the same {what} as training (the snippet on the Normalization page).")))
    return sort_findings(out)
