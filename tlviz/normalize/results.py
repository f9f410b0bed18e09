"""The records of the normalization comparison: settings, evaluations, fingerprints, the report.

- `Setting` — one way of preparing images (preset, resize method, channel order).
- `Evaluation` — the model's predictions under one `Setting`.
- `FeatureTap` — which inner layer's output to keep from the same forward pass.
- `Fingerprint` — the label-free ranking of presets.
- `LabelMatch` — how an image set's classes line up with the model's outputs.
- `NormalizationReport` — the whole comparison, as the pages and the command line use it.

Also the constants shared by the other modules: `DEFAULT_BATCH_SIZE`,
`DEFAULT_FINGERPRINT_IMAGES`, `CHANNEL_ORDERS` and the column lists of the tables.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from tlviz.imagesets import RESIZE_METHODS
from tlviz.jsonsafe import finite_or_none
from tlviz.presets import PRESETS, CustomPreset, preset_resize, preset_snippet

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
        feature_indices: the sorted image indices of `features`' rows (the tap's); else None.
    """

    setting: Setting
    predictions: np.ndarray
    confidence: np.ndarray
    labels: np.ndarray | None
    files: list[str]
    seconds: float = 0.0
    features: np.ndarray | None = None
    feature_indices: np.ndarray | None = None

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
    """The full comparison. See the `tlviz.normalize` docstring for how pages use it.

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
            fp = [{"preset": str(r.preset), "distance": finite_or_none(r.distance)}
                  for r in self.fingerprint.ranking.itertuples()]
        return {
            "results": [
                {"preset": str(r.preset), "accuracy": finite_or_none(r.accuracy),
                 "interval": (None if finite_or_none(r.accuracy_low) is None
                              else [finite_or_none(r.accuracy_low), finite_or_none(r.accuracy_high)]),
                 "mean_confidence": finite_or_none(r.mean_confidence), "n": int(r.n)}
                for r in rows.itertuples()
            ],
            "best": self.best_preset,
            "inconclusive": self.inconclusive,
            "chance": finite_or_none(self.chance),
            "fingerprint": fp,
            "builtin_preprocessing": list(self.builtin_preprocessing),
        }
