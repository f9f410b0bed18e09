"""The registry: every check tlviz has, each written once.

A `Check` entry in `CHECKS` is the only place where a check's id, severity,
area, title, one-line description and thresholds are written; the check
function receives its entry and makes its findings through it. The package
docstring's list of checks is generated from `CHECKS` at import, and the
README's table is `readme_table()` (a test compares the two):

    python -m tlviz.diagnose                     # print the README table
    python -m tlviz.diagnose --update README.md  # rewrite it in place

Adding a check: write ``check_<id>(ctx, check)`` in the module of its area
(`tlviz.diagnose.pretraining`, `.finetuning`, `.inference`), add one `Check`
below, and update the README table with the command above. The checks run in
the order of `CHECKS`: the preset comparison runs first (``normalization-mismatch``),
so the probe (``pretraining-no-better-than-random``) reuses its features.

Public API: `CHECKS`, `CHECK_IDS`, `CHECKS_BY_ID`, `AREA_TITLES`, `SEVERITY_TITLES`,
`threshold(check_id, name)`, `check_list()`, `readme_table()`, `README_START` / `README_END`,
`main(argv)` (the command above).
"""

from __future__ import annotations

from types import MappingProxyType

from tlviz.diagnose import data, finetuning, forgetting, inference, outputs, pretraining
from tlviz.diagnose.base import Check, Threshold
from tlviz.findings import AREAS, SEVERITIES
from tlviz.readme import update_command
from tlviz.stats import NOTICEABLE_DROP

AREA_TITLES = {"pretraining": "Pre-training", "finetuning": "Fine-tuning", "inference": "Inference pipeline"}
SEVERITY_TITLES = {"error": "Error", "warning": "Warning", "info": "Info"}

#: Shared by the two checks that ask whether one preset is clearly better than another on the same images;
#: the value is `tlviz.stats.NOTICEABLE_DROP`, which the normalization findings use too.
_PRESET_DROP = Threshold(NOTICEABLE_DROP, "A gap of 5 accuracy points between two presets on the same images is a "
                                          "loss users notice, and more than the few images by which presets the "
                                          "model tolerates equally well differ; a smaller gap is not taken as "
                                          "evidence either way.")

#: Shared by no-better-than-chance (the model under every preset) and inference-preset-fails (under yours).
_CHANCE_MARGIN = Threshold(0.10, "A model at most 10 points above always answering the most common class is guessing "
                                 "for any practical purpose; an interval reaching beyond that means too few images to "
                                 "call it broken.")
#: Shared by prediction-collapse (the model under the preset it scores best with) and inference-preset-fails (yours).
_COLLAPSE_SHARE = Threshold(0.9, "A model that puts 9 images in 10 into one class is not classifying, unless the images "
                                 "really are that lopsided (hence the comparison with the labels).")
_COLLAPSE_EXCESS = Threshold(0.2, "Beyond 20 points more than the labels hold, the excess is not a model's preference "
                                  "among look-alike classes but one class absorbing the others.")

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
          thresholds={
              "drop": Threshold(0.10, "Batch statistics of one batch of at most 64 images are noisy themselves; a model "
                                      "whose moving statistics describe these images (one trained end to end) loses at "
                                      "most a few points to that noise, so only a 10-point drop says the stored "
                                      "statistics and the batches disagree."),
              "min_images": Threshold(16, "Below 16 images a batch's mean and variance are too noisy to normalize "
                                          "with, so batch statistics say nothing."),
          }),
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
          thresholds={"ratio": Threshold(3.0, "Up to about 3 : 1 plain training copes; beyond it a model visibly "
                                              "favours the large classes while overall accuracy hides it.")}),
    Check("too-few-images", "warning", "finetuning", "images per class",
          "fewer than {min_per_class:g} images in some class",
          run=finetuning.check_too_few_images,
          thresholds={"min_per_class": Threshold(20, "Below about 20 images a class is too small to fine-tune deep "
                                                     "layers on without memorising it; training the head alone "
                                                     "still works.")}),
    Check("input-resized", "info", "inference", "resized or converted images",
          "images had to be resized or converted to fit the model",
          run=inference.check_input_resized),
    Check("double-normalization", "error", "inference", "double normalization",
          "the model normalizes internally and your preset normalizes again (unless a normalizing preset "
          "beats `raw` by {drop:pts})",
          judge=inference.judge_double_normalization,
          thresholds={"drop": _PRESET_DROP}),
    Check("normalization-mismatch", "error", "inference", "the input normalization",
          "your inference preset scores {drop:pts} or more below the preset the model expects "
          "(without labels: the fingerprint decisively prefers another)",
          judge=inference.judge_normalization_mismatch,
          thresholds={
              "drop": _PRESET_DROP,
              "tie": Threshold(0.02, "Presets within 2 points of the best differ by a few images, so the label-free "
                                     "fingerprint (which reads the statistics stored in training) names the expected "
                                     "one among them."),
              "fingerprint_margin": Threshold(0.1, "Without labels the inference preset's fingerprint distance must "
                                                   "exceed the best one's by 0.1, so that two presets that both fit "
                                                   "the stored statistics are not told apart by noise ..."),
              "fingerprint_ratio": Threshold(3.0, "... and be 3 times as large, so that a small absolute gap on a "
                                                  "large distance does not count as decisive."),
          }),
    Check("inference-preset-fails", "error", "inference", "the model under your inference preset",
          "under the preset your inference code applies, the model is no better than chance (the whole 95 % interval "
          "within {margin:pts} of it), gives one class to {share:.0%} or more of the images (the excess over the "
          "labels' share above {excess:pts}, whole interval), or scores {drop:pts} or more below another preset on "
          "the same images (whole paired interval), whatever the cause; names the evidence on the expected preset "
          "that conflicts (left to normalization-mismatch when it names a preset that works, and to "
          "no-better-than-chance when no preset does)",
          judge=inference.judge_inference_preset_fails,
          thresholds={"margin": _CHANCE_MARGIN, "share": _COLLAPSE_SHARE, "excess": _COLLAPSE_EXCESS,
                      "drop": Threshold(0.2, "A loss of 20 points against another preset on the same images is no "
                                             "choice between presets the model tolerates alike (that is 5 points): "
                                             "the pipeline fails on a fifth of the images the model gets right "
                                             "otherwise, whatever the cause.")}),
    Check("label-order-mismatch", "error", "inference", "the class order",
          "a re-ordering of the classes raises accuracy by {gain:pts} or more, to at least {min_accuracy:.0%} "
          "(the mapping is shown)",
          run=inference.check_label_order_mismatch,
          thresholds={
              "min_accuracy": Threshold(0.8, "The re-ordered model must be clearly good (80 %) before tlviz says the "
                                             "labels, not the model, are wrong."),
              "gain": Threshold(0.2, "A 20-point gain cannot come from a few confused look-alike classes; it takes "
                                     "whole classes swapped."),
          }),
    Check("resize-sensitive", "info", "inference", "the resize method",
          "another resize method changes accuracy (information: not a fault by itself)",
          run=inference.check_resize_sensitive),
    Check("channel-order-sensitive", "info", "inference", "the channel order",
          "BGR channel order changes accuracy (information: not a fault by itself)",
          run=inference.check_channel_order_sensitive),
    Check("bn-statistics-mismatch", "warning", "inference", "BatchNormalization statistics",
          "batch statistics beat BatchNormalization's stored ones by {gap:pts} or more, or every layer still holds "
          "its initial statistics (never trained: read from the file, no pass needed)",
          run=inference.check_bn_statistics_mismatch,
          thresholds={
              "gap": Threshold(0.10, "Batch statistics of one batch of at most 64 images are noisy themselves, so "
                                     "only a 10-point gain says the stored statistics, not the batch, are off."),
              "min_images": Threshold(16, "Below 16 images a batch's mean and variance are too noisy to normalize "
                                          "with, so batch statistics say nothing."),
          }),
    Check("training-mode-inference", "info", "inference", "training-mode behaviour",
          "running the model with `training=True` changes predictions (Dropout, BN, noise layers; names them)",
          run=inference.check_training_mode_inference),
    Check("pretraining-no-better-than-random", "warning", "pretraining", "pre-trained vs random features",
          "every BatchNormalization layer of the base still holds its initial statistics (never trained: read from "
          "the file), or a leave-one-out probe on the base's features beats fresh random weights on the same images "
          "by less than {margin:pts} (or {headroom:.0%} of the random probe's errors, when fewer), the whole 95 % "
          "interval of the gain below it",
          run=pretraining.check_pretraining_no_better_than_random,
          thresholds={
              "margin": Threshold(0.10, "Random convolutional features already separate simple images fairly well "
                                        "and random copies differ among themselves by several points, so "
                                        "pre-training that helps should add at least 10 points over the best copy."),
              "headroom": Threshold(0.5, "When random features already score near 100 % no 10-point gain is "
                                         "possible, so removing half of their errors counts as helping."),
          }),
    Check("no-better-than-chance", "error", "finetuning", "accuracy above chance",
          "no preset makes the model clearly better than chance, the 95 % interval of the best staying within "
          "{margin:pts} of it; a probe of the base's features says whether the head or the pre-training is to blame",
          run=finetuning.check_no_better_than_chance,
          thresholds={"margin": _CHANCE_MARGIN}),
    Check("prediction-collapse", "error", "finetuning", "predictions that ignore the image",
          "the model gives one class to {share:.0%} or more of the images, the whole 95 % interval of that share "
          "minus the class's share of the labels above {excess:pts}; or the features at the head's input barely "
          "change between images (relative spread below {feature_spread:g})",
          run=outputs.check_prediction_collapse,
          thresholds={
              "share": _COLLAPSE_SHARE,
              "excess": _COLLAPSE_EXCESS,
              "feature_spread": Threshold(0.01, "Features that differ between images by under 1 % of their size carry "
                                                "no information about the image: the base passes the same vector for "
                                                "all of them."),
          }),
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
          thresholds={
              "max_bits": Threshold(6, "Re-encoding (JPEG quality 60) or resizing a photo changes at most about 5 of "
                                       "the hash's 64 bits; a wider net only adds pairs the thumbnails reject."),
              "tolerance": Threshold(2.0, "Re-encoded or resized copies of a 224-pixel photo differ by under 1 grey "
                                          "level on average, while distinct photos (and distinct digits of the "
                                          "sample) differ by 5 or more."),
              "leak_share": Threshold(0.01, "Copies making under 1 % of the images shift validation accuracy by under "
                                            "a point; from there they inflate it measurably."),
          }),
    Check("likely-mislabelled", "warning", "finetuning", "labels the images contradict",
          "a probe on the frozen base's features, trained on the other folds, gives {min_share:.0%} or more of the "
          "images (the whole 95 % interval) another class than their folder's with {confidence:.0%} confidence or "
          "more (only when the probe itself is right on at least {min_probe_accuracy:.0%} of held-out images, the "
          "whole 95 % interval)",
          run=data.check_likely_mislabelled,
          thresholds={
              "confidence": Threshold(0.9, "A probe that is right on most held-out images and still 90 % sure of "
                                           "another class is rarely wrong about the image; below that, hard and "
                                           "ambiguous images dominate."),
              "min_share": Threshold(0.02, "Any probe misjudges a few hard images confidently: up to 1.5 % of the "
                                           "clean controls in the planted-fault matrix (a weaker MobileNetV2 base), "
                                           "while 8 % of images filed wrongly showed as 4-5 %; so only more than "
                                           "2 % is taken as a labelling problem."),
              "min_probe_accuracy": Threshold(0.7, "A probe that gets fewer than 70 % of held-out images right has "
                                                   "not learnt the classes well enough for its disagreement with a "
                                                   "label to mean anything."),
          }),
    Check("catastrophic-forgetting", "warning", "finetuning", "representation drift without a gain",
          "a fine-tuning run moved the base's representation far (linear CKA of an unfrozen block's features on your "
          "images, before vs after the run, below {cka:g}) while its validation accuracy does not clearly beat its "
          "head-only or random-init control (95 % paired interval of the difference above 0); judges the runs of the "
          "current model on the current images",
          run=forgetting.check_catastrophic_forgetting,
          thresholds={"cka": Threshold(0.5, "On channel-mean features the digits sample's top block keeps a CKA above "
                                            "0.85 under a gentle fine-tune (Adam 1e-4, whole base) and falls to 0.1-0.2 "
                                            "against fresh random weights; below 0.5 a block has lost most of its "
                                            "linear structure on these images.")}),
)
CHECK_IDS: tuple[str, ...] = tuple(c.id for c in CHECKS)
CHECKS_BY_ID = MappingProxyType({c.id: c for c in CHECKS})
if len(CHECKS_BY_ID) != len(CHECKS):
    raise ValueError(f"Two checks share an id: {sorted(i for i in CHECK_IDS if CHECK_IDS.count(i) > 1)}.")

README_START = "<!-- checks: generated by `python -m tlviz.diagnose --update README.md`; do not edit -->"
README_END = "<!-- end of checks -->"


def threshold(check_id: str, name: str) -> float:
    """The value of a check's threshold.

    Args:
        check_id: one of `CHECK_IDS`.
        name: the threshold's name in that check's entry.

    Returns:
        The value.
    """
    return CHECKS_BY_ID[check_id].threshold(name)


def _documented_order() -> list[Check]:
    """Checks by area, then severity, then run order (how the README and the docstring list them)."""
    run_order = {c.id: i for i, c in enumerate(CHECKS)}
    return sorted(CHECKS, key=lambda c: (AREAS.index(c.area), SEVERITIES.index(c.severity), run_order[c.id]))


def check_list() -> str:
    """The checks as a reStructuredText list, for the package docstring.

    Returns:
        One ``- ``id`` — severity, area — what it detects.`` line per check.
    """
    return "\n".join(f"- ``{c.id}`` — {c.severity}, {c.area} — {c.describe()}." for c in _documented_order())


def readme_table() -> str:
    """The README's table of checks (Markdown), between `README_START` and `README_END`.

    Returns:
        The table, one row per check, without the markers.
    """
    rows = ["| id | severity | area | detects |", "|---|---|---|---|"]
    rows += [f"| `{c.id}` | {c.severity} | {AREA_TITLES[c.area]} | {c.describe()} |" for c in _documented_order()]
    return "\n".join(rows)


def main(argv: list[str] | None = None) -> int:
    """``python -m tlviz.diagnose [--update README.md]``: print or rewrite the README's table of checks.

    Args:
        argv: the arguments. Defaults to `sys.argv[1:]`.

    Returns:
        The exit status.
    """
    return update_command("python -m tlviz.diagnose", "table of checks", [(README_START, README_END, readme_table)],
                          argv)
