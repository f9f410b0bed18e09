"""Which preprocessing does the model really expect? Measured, not guessed.

The most common reason a transfer-learning model "works in training and fails
at inference" is that the inference code prepares images differently from the
training code: another normalization, resize method or channel order. This
package evaluates the model on the user's own images under each variant.

Speed: every image is decoded and resized once (the `ImageSet` holds ``uint8``
at the model's input size); presets are applied batch by batch, so there is
never a float copy of the whole set; only the resize variants decode again.
The label-free fingerprint runs only the layers up to the first
BatchNormalization layer on a sample, so it answers long before the full
comparison.

Modules:

- `tlviz.normalize.results` — the records (`Setting`, `Evaluation`, `FeatureTap`,
  `Fingerprint`, `LabelMatch`, `NormalizationReport`) and the constants.
- `tlviz.normalize.inputs` — checks of the model and images, `label_match`, `custom_preset`.
- `tlviz.normalize.inference` — presets applied batch by batch, predictions, the feature tap:
  `evaluate_preset`, `evaluate_setting`.
- `tlviz.normalize.labelfree` — the label-free fingerprint: `fingerprint`.
- `tlviz.normalize.analysis` — the full comparison: `analyze`.
- `tlviz.normalize.ranking` — the ranking rule, the verdict against chance, the notes.
- `tlviz.normalize.findings` — what the results mean: `changed_predictions`,
  `expects_raw_pixels`, `double_normalization`, `normalization_findings`.

Everything public is imported from this package (``from tlviz.normalize import analyze``).

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
- `normalization_findings(report, inference_preset) -> list[Finding]`; `undecided_findings(report,
  inference_preset)` -> the comparisons too few images cannot decide, with the sentence.

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

from tlviz.errors import NormalizationRefused
from tlviz.normalize.analysis import analyze
from tlviz.normalize.findings import (
    changed_predictions,
    double_normalization,
    expects_raw_pixels,
    normalization_findings,
    undecided_findings,
)
from tlviz.normalize.inference import evaluate_preset, evaluate_setting
from tlviz.normalize.inputs import custom_preset, label_match
from tlviz.normalize.labelfree import fingerprint
from tlviz.normalize.ranking import TIE_Z
from tlviz.normalize.results import (
    CHANGE_COLUMNS,
    CHANNEL_ORDERS,
    DEFAULT_BATCH_SIZE,
    DEFAULT_FINGERPRINT_IMAGES,
    FINGERPRINT_COLUMNS,
    PER_CLASS_COLUMNS,
    RESULT_COLUMNS,
    Evaluation,
    FeatureTap,
    Fingerprint,
    LabelMatch,
    NormalizationReport,
    Setting,
)
# The function the batches are normalized with, for the tests and benchmarks that wrap it.
from tlviz.normalize.inference import apply_preset  # noqa: F401

__all__ = [
    "CHANGE_COLUMNS", "CHANNEL_ORDERS", "DEFAULT_BATCH_SIZE", "DEFAULT_FINGERPRINT_IMAGES", "FINGERPRINT_COLUMNS",
    "PER_CLASS_COLUMNS", "RESULT_COLUMNS", "TIE_Z",
    "Evaluation", "FeatureTap", "Fingerprint", "LabelMatch", "NormalizationRefused", "NormalizationReport", "Setting",
    "analyze", "changed_predictions", "custom_preset", "double_normalization", "evaluate_preset", "evaluate_setting",
    "expects_raw_pixels", "fingerprint", "label_match", "normalization_findings", "undecided_findings",
]
