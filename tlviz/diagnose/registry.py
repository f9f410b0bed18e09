"""The registry: every check tlviz has, each written once.

A `Check` entry in `CHECKS` is the only place where a check's id, severity,
area, title and one-line description are written; its thresholds are written
once in `tlviz.diagnose.thresholds` (by check id, so that the measurements
below the registry read them without importing it) and the entry holds them.
The check function receives its entry and makes its findings through it. The
package docstring's list of checks is generated from `CHECKS` at import, and
the table of checks in ``docs/diagnose.md`` is `readme_table()` (a test compares the two):

    python -m tlviz.diagnose                            # print the table
    python -m tlviz.diagnose --update docs/diagnose.md  # rewrite it in place

Adding a check: write ``check_<id>(ctx, check)`` in the module of its area
(`tlviz.diagnose.pretraining`, `.finetuning`, `.inference`), add its thresholds
to `tlviz.diagnose.thresholds.THRESHOLDS` and one `Check` below, and update the
table in ``docs/diagnose.md`` with the command above. The checks run in the order of `CHECKS`:
the preset comparison runs first (``normalization-mismatch``), so the probe
(``pretraining-no-better-than-random``) reuses its features.

The registry imports every check module; no check module, and nothing a check
uses, imports the registry.

Public API: `CHECKS`, `CHECK_IDS`, `CHECKS_BY_ID`, `AREA_TITLES`, `SEVERITY_TITLES`,
`threshold(check_id, name)` (from `tlviz.diagnose.thresholds`), `check_list()`,
`readme_table()`, `README_START` / `README_END`, `main(argv)` (the command above).
"""

from __future__ import annotations

from types import MappingProxyType

from tlviz.diagnose import data, finetuning, inference, outputs, pretraining, runverdict, trainingmode
from tlviz.diagnose.base import Check
from tlviz.diagnose.thresholds import THRESHOLDS, threshold  # noqa: F401 (threshold: re-exported)
from tlviz.findings import AREAS, SEVERITIES
from tlviz.readme import update_command

AREA_TITLES = {"pretraining": "Pre-training", "finetuning": "Fine-tuning", "inference": "Inference pipeline"}
SEVERITY_TITLES = {"error": "Error", "warning": "Warning", "info": "Info"}

CHECKS: tuple[Check, ...] = (
    Check("weights-not-finite", "error", "pretraining", "NaN or infinite weights",
          "NaN or infinite weights",
          run=pretraining.check_weights_not_finite),
    Check("no-trainable-weights", "error", "finetuning", "trainable weights",
          "every layer frozen",
          run=finetuning.check_freezing),
    Check("head-frozen", "error", "finetuning", "a frozen head",
          "the head cannot train while layers below it can",
          run=finetuning.check_freezing),
    Check("trainable-inside-frozen-model", "warning", "finetuning", "trainable layers inside a frozen model",
          "layers set trainable inside a model marked frozen (Keras 3 trains them)",
          run=finetuning.check_freezing),
    Check("bn-trainable-in-base", "info", "finetuning", "trainable BatchNormalization in the base",
          "BatchNormalization trainable inside an unfrozen base that the model does not call with `training=False` "
          "(advice for fine-tuning, read from the file); a warning only when batch statistics, as `fit` runs them, "
          "cost {drop:pts} or more of accuracy on your images (the whole 95 % paired interval of the drop)",
          run=finetuning.check_bn_trainable_in_base, measured_severity="warning",
          thresholds=THRESHOLDS["bn-trainable-in-base"]),
    Check("keras-overrides-training-false", "info", "finetuning", "`training=False` under the installed Keras",
          "the base is called with `training=False` (as the keras-io guide recommends) but the installed Keras "
          "passes `fit`'s `training=True` into it, so its trainable BatchNormalization layers would update "
          "(measured in-process, not assumed; information: the model is written right)",
          run=finetuning.check_freezing),
    Check("class-count-mismatch", "error", "finetuning", "classes vs model outputs",
          "the image set's classes ≠ the model's outputs (by name when the model records them, else by count)",
          run=finetuning.check_class_count_mismatch),
    Check("class-imbalance", "warning", "finetuning", "class balance",
          "the largest class has more than {ratio:g}× the images of the smallest",
          run=finetuning.check_class_imbalance,
          thresholds=THRESHOLDS["class-imbalance"]),
    Check("too-few-images", "warning", "finetuning", "images per class",
          "fewer than {min_per_class:g} images in some class",
          run=finetuning.check_too_few_images,
          thresholds=THRESHOLDS["too-few-images"]),
    Check("input-resized", "info", "inference", "resized or converted images",
          "images had to be resized or converted to fit the model",
          run=inference.check_input_resized),
    Check("double-normalization", "error", "inference", "double normalization",
          "the model normalizes internally and your preset normalizes again (unless a normalizing preset "
          "beats `raw` by {drop:pts})",
          judge=inference.judge_double_normalization,
          thresholds=THRESHOLDS["double-normalization"]),
    Check("normalization-mismatch", "error", "inference", "the input normalization",
          "your inference preset scores {drop:pts} or more below the preset the model expects "
          "(without labels: the fingerprint decisively prefers another)",
          judge=inference.judge_normalization_mismatch,
          thresholds=THRESHOLDS["normalization-mismatch"]),
    Check("inference-preset-fails", "error", "inference", "the model under your inference preset",
          "under the preset your inference code applies, the model is no better than chance (the whole 95 % interval "
          "within {margin:pts} of it), gives one class to {share:.0%} or more of the images (the excess over the "
          "labels' share above {excess:pts}, whole interval), or scores {drop:pts} or more below another preset on "
          "the same images (whole paired interval), whatever the cause; names the evidence on the expected preset "
          "that conflicts (left to normalization-mismatch when it names a preset that works, and to "
          "no-better-than-chance when no preset does)",
          judge=inference.judge_inference_preset_fails,
          thresholds=THRESHOLDS["inference-preset-fails"]),
    Check("label-order-mismatch", "error", "inference", "the class order",
          "a re-ordering of the classes raises accuracy by {gain:pts} or more, to at least {min_accuracy:.0%} "
          "(the mapping is shown)",
          run=inference.check_label_order_mismatch,
          thresholds=THRESHOLDS["label-order-mismatch"]),
    Check("resize-sensitive", "info", "inference", "the resize method",
          "another resize method changes accuracy (information: not a fault by itself)",
          run=inference.check_resize_sensitive),
    Check("channel-order-sensitive", "info", "inference", "the channel order",
          "BGR channel order changes accuracy (information: not a fault by itself)",
          run=inference.check_channel_order_sensitive),
    Check("bn-statistics-mismatch", "warning", "inference", "BatchNormalization statistics",
          "batch statistics beat BatchNormalization's stored ones by {gap:pts} or more, or every layer still holds "
          "its initial statistics (never trained: read from the file, no pass needed)",
          run=trainingmode.check_bn_statistics_mismatch,
          thresholds=THRESHOLDS["bn-statistics-mismatch"]),
    Check("training-mode-inference", "info", "inference", "training-mode behaviour",
          "running the model with `training=True` changes predictions (Dropout, BN, noise layers; names them)",
          run=trainingmode.check_training_mode_inference),
    Check("pretraining-no-better-than-random", "warning", "pretraining", "pre-trained vs random features",
          "every BatchNormalization layer of the base still holds its initial statistics (never trained: read from "
          "the file), or a leave-one-out probe on the base's features beats fresh random weights on the same images "
          "by less than {margin:pts} (or {headroom:.0%} of the random probe's errors, when fewer), the whole 95 % "
          "interval of the gain below it",
          run=pretraining.check_pretraining_no_better_than_random,
          thresholds=THRESHOLDS["pretraining-no-better-than-random"]),
    Check("no-better-than-chance", "error", "finetuning", "accuracy above chance",
          "no preset makes the model clearly better than chance, the 95 % interval of the best staying within "
          "{margin:pts} of it; a probe of the base's features says whether the head or the pre-training is to blame",
          run=finetuning.check_no_better_than_chance,
          thresholds=THRESHOLDS["no-better-than-chance"]),
    Check("prediction-collapse", "error", "finetuning", "predictions that ignore the image",
          "the model gives one class to {share:.0%} or more of the images, the whole 95 % interval of that share "
          "minus the class's share of the labels above {excess:pts}; or the features at the head's input barely "
          "change between images (relative spread below {feature_spread:g})",
          run=outputs.check_prediction_collapse,
          thresholds=THRESHOLDS["prediction-collapse"]),
    Check("output-loss-mismatch", "error", "finetuning", "the output activation vs the loss",
          "the last layer's activation and the saved loss disagree: softmax / sigmoid with `from_logits=True`, a linear "
          "output with a probability loss, `Dense(1)` with softmax (always 1.0), sigmoid on a multi-class head with a "
          "categorical loss, one unit with `categorical_crossentropy` (read from the file, no images)",
          run=outputs.check_output_loss_mismatch),
    Check("exif-orientation", "warning", "inference", "EXIF orientation",
          "images carry an EXIF orientation other than \"normal\" (Keras's `load_img` ignores it, phones apply "
          "it); says how many, and the accuracy on them with and without the turn (paired 95 % interval)",
          run=data.check_exif_orientation),
    Check("duplicate-images", "warning", "finetuning", "duplicate images",
          "exact or near duplicates (difference hash within {max_bits:g} of 64 bits, 32×32 thumbnails within "
          "{tolerance:g} grey levels) under two classes, or copies within classes making {leak_share:.0%} or more "
          "of the images (they would fall on both sides of a train / validation split)",
          run=data.check_duplicate_images,
          thresholds=THRESHOLDS["duplicate-images"]),
    Check("likely-mislabelled", "warning", "finetuning", "labels the images contradict",
          "a probe on the frozen base's features, trained on the other folds, gives {min_share:.0%} or more of the "
          "images (the whole 95 % interval) another class than their folder's with {confidence:.0%} confidence or "
          "more (only when the probe itself is right on at least {min_probe_accuracy:.0%} of held-out images, the "
          "whole 95 % interval)",
          run=data.check_likely_mislabelled,
          thresholds=THRESHOLDS["likely-mislabelled"]),
    Check("catastrophic-forgetting", "warning", "finetuning", "representation drift without a gain",
          "a fine-tuning run moved the base's representation far (linear CKA of an unfrozen block's features on your "
          "images, before vs after the run, below {cka:g}) while its validation accuracy does not clearly beat its "
          "head-only or random-init control (95 % paired interval of the difference above 0); judges the runs of the "
          "current model on the current images",
          run=runverdict.check_catastrophic_forgetting,
          thresholds=THRESHOLDS["catastrophic-forgetting"]),
)
CHECK_IDS: tuple[str, ...] = tuple(c.id for c in CHECKS)
CHECKS_BY_ID = MappingProxyType({c.id: c for c in CHECKS})
if len(CHECKS_BY_ID) != len(CHECKS):
    raise ValueError(f"Two checks share an id: {sorted(i for i in CHECK_IDS if CHECK_IDS.count(i) > 1)}.")
if set(THRESHOLDS) - set(CHECK_IDS) or any(c.thresholds is not THRESHOLDS.get(c.id, c.thresholds) for c in CHECKS):
    raise ValueError("tlviz.diagnose.thresholds.THRESHOLDS and the registry disagree: every key must be a check's id "
                     "and that check's entry must hold that very dict (`thresholds=THRESHOLDS[id]`).")

README_START = "<!-- checks: generated by `python -m tlviz.diagnose --update docs/diagnose.md`; do not edit -->"
README_END = "<!-- end of checks -->"


def _documented_order() -> list[Check]:
    """Checks by area, then severity, then run order (how docs/diagnose.md and the docstring list them)."""
    run_order = {c.id: i for i, c in enumerate(CHECKS)}
    return sorted(CHECKS, key=lambda c: (AREAS.index(c.area), SEVERITIES.index(c.severity), run_order[c.id]))


def check_list() -> str:
    """The checks as a reStructuredText list, for the package docstring.

    Returns:
        One ``- ``id`` — severity, area — what it detects.`` line per check.
    """
    return "\n".join(f"- ``{c.id}`` — {c.severity}, {c.area} — {c.describe()}." for c in _documented_order())


def readme_table() -> str:
    """The table of checks in ``docs/diagnose.md`` (Markdown), between `README_START` and `README_END`.

    Returns:
        The table, one row per check, without the markers.
    """
    rows = ["| id | severity | area | detects |", "|---|---|---|---|"]
    rows += [f"| `{c.id}` | {c.severity} | {AREA_TITLES[c.area]} | {c.describe()} |" for c in _documented_order()]
    return "\n".join(rows)


def main(argv: list[str] | None = None) -> int:
    """``python -m tlviz.diagnose [--update docs/diagnose.md]``: print or rewrite the table of checks.

    Args:
        argv: the arguments. Defaults to `sys.argv[1:]`.

    Returns:
        The exit status.
    """
    return update_command("python -m tlviz.diagnose", "table of checks (docs/diagnose.md)",
                          [(README_START, README_END, readme_table)], argv)
