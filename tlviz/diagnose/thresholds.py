"""The thresholds of every check: the numbers a check compares its measurements against, by check id.

Each `Threshold` carries its value and one sentence on why that value. The registry
(`tlviz.diagnose.registry.CHECKS`) gives every check its entry's thresholds from here, and the
measurements below the registry that decide with a check's number (the preset comparison in
`tlviz.diagnose.context`, `tlviz.duplicates`, `tlviz.repair.adabn`) read them here too, with
`threshold(check_id, name)`, so that no module below the registry imports it.

Public API: `THRESHOLDS` (``{check_id: {name: Threshold}}``), `threshold(check_id, name)`; the thresholds
shared by several checks (`PRESET_DROP`, `CHANCE_MARGIN`, `COLLAPSE_SHARE`, `COLLAPSE_EXCESS`) and
`NORMALIZATION_MISMATCH` (read by inference-preset-fails as well).
"""

from __future__ import annotations

from tlviz.diagnose.base import Threshold
from tlviz.stats import NOTICEABLE_DROP

#: Shared by the two checks that ask whether one preset is clearly better than another on the same images;
#: the value is `tlviz.stats.NOTICEABLE_DROP`, which the normalization findings use too.
PRESET_DROP = Threshold(NOTICEABLE_DROP, "A gap of 5 accuracy points between two presets on the same images is a "
                                         "loss users notice, and more than the few images by which presets the "
                                         "model tolerates equally well differ; a smaller gap is not taken as "
                                         "evidence either way.")

#: Shared by no-better-than-chance (the model under every preset) and inference-preset-fails (under yours).
CHANCE_MARGIN = Threshold(0.10, "A model at most 10 points above always answering the most common class is guessing "
                                "for any practical purpose; an interval reaching beyond that means too few images to "
                                "call it broken.")
#: Shared by prediction-collapse (the model under the preset it scores best with) and inference-preset-fails (yours).
COLLAPSE_SHARE = Threshold(0.9, "A model that puts 9 images in 10 into one class is not classifying, unless the images "
                                "really are that lopsided (hence the comparison with the labels).")
COLLAPSE_EXCESS = Threshold(0.2, "Beyond 20 points more than the labels hold, the excess is not a model's preference "
                                 "among look-alike classes but one class absorbing the others.")

#: normalization-mismatch's thresholds; inference-preset-fails consults that check's verdict with them too.
NORMALIZATION_MISMATCH = {
    "drop": PRESET_DROP,
    "tie": Threshold(0.02, "Presets within 2 points of the best differ by a few images, so the label-free "
                           "fingerprint (which reads the statistics stored in training) names the expected "
                           "one among them."),
    "fingerprint_margin": Threshold(0.1, "Without labels the inference preset's fingerprint distance must "
                                         "exceed the best one's by 0.1, so that two presets that both fit "
                                         "the stored statistics are not told apart by noise ..."),
    "fingerprint_ratio": Threshold(3.0, "... and be 3 times as large, so that a small absolute gap on a "
                                        "large distance does not count as decisive."),
}

#: ``{check_id: {name: Threshold}}``: every check's thresholds (a check without any has no entry). The registry's
#: entries hold these very dicts, so `Check.threshold` and `threshold` always agree.
THRESHOLDS: dict[str, dict[str, Threshold]] = {
    "bn-trainable-in-base": {
        "drop": Threshold(0.10, "Batch statistics of one batch of at most 64 images are noisy themselves; a model "
                                "whose moving statistics describe these images (one trained end to end) loses at "
                                "most a few points to that noise, so only a 10-point drop says the stored "
                                "statistics and the batches disagree."),
        "min_images": Threshold(16, "Below 16 images a batch's mean and variance are too noisy to normalize "
                                    "with, so batch statistics say nothing."),
    },
    "class-imbalance": {"ratio": Threshold(3.0, "Up to about 3 : 1 plain training copes; beyond it a model visibly "
                                                  "favours the large classes while overall accuracy hides it.")},
    "too-few-images": {"min_per_class": Threshold(20, "Below about 20 images a class is too small to fine-tune deep "
                                                        "layers on without memorising it; training the head alone "
                                                        "still works.")},
    "double-normalization": {"drop": PRESET_DROP},
    "normalization-mismatch": NORMALIZATION_MISMATCH,
    "inference-preset-fails": {
        "margin": CHANCE_MARGIN, "share": COLLAPSE_SHARE, "excess": COLLAPSE_EXCESS,
        "drop": Threshold(0.2, "A loss of 20 points against another preset on the same images is no choice between "
                               "presets the model tolerates alike (that is 5 points): the pipeline fails on a fifth of "
                               "the images the model gets right otherwise, whatever the cause."),
    },
    "label-order-mismatch": {
        "min_accuracy": Threshold(0.8, "The re-ordered model must be clearly good (80 %) before tlviz says the "
                                       "labels, not the model, are wrong."),
        "gain": Threshold(0.2, "A 20-point gain cannot come from a few confused look-alike classes; it takes "
                               "whole classes swapped."),
    },
    "bn-statistics-mismatch": {
        "gap": Threshold(0.10, "Batch statistics of one batch of at most 64 images are noisy themselves, so "
                               "only a 10-point gain says the stored statistics, not the batch, are off."),
        "min_images": Threshold(16, "Below 16 images a batch's mean and variance are too noisy to normalize "
                                    "with, so batch statistics say nothing."),
    },
    "pretraining-no-better-than-random": {
        "margin": Threshold(0.10, "Random convolutional features already separate simple images fairly well "
                                  "and random copies differ among themselves by several points, so "
                                  "pre-training that helps should add at least 10 points over the best copy."),
        "headroom": Threshold(0.5, "When random features already score near 100 % no 10-point gain is "
                                   "possible, so removing half of their errors counts as helping."),
    },
    "no-better-than-chance": {"margin": CHANCE_MARGIN},
    "prediction-collapse": {
        "share": COLLAPSE_SHARE,
        "excess": COLLAPSE_EXCESS,
        "feature_spread": Threshold(0.01, "Features that differ between images by under 1 % of their size carry "
                                          "no information about the image: the base passes the same vector for "
                                          "all of them."),
    },
    "duplicate-images": {
        "max_bits": Threshold(6, "Re-encoding (JPEG quality 60) or resizing a photo changes at most about 5 of "
                                 "the hash's 64 bits; a wider net only adds pairs the thumbnails reject."),
        "tolerance": Threshold(2.0, "Re-encoded or resized copies of a 224-pixel photo differ by under 1 grey "
                                    "level on average, while distinct photos (and distinct digits of the "
                                    "sample) differ by 5 or more."),
        "leak_share": Threshold(0.01, "Copies making under 1 % of the images shift validation accuracy by under "
                                      "a point; from there they inflate it measurably."),
    },
    "likely-mislabelled": {
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
    },
    "catastrophic-forgetting": {
        "cka": Threshold(0.5, "On channel-mean features the digits sample's top block keeps a CKA above 0.85 under "
                              "a gentle fine-tune (Adam 1e-4, whole base) and falls to 0.1-0.2 against fresh random "
                              "weights; below 0.5 a block has lost most of its linear structure on these images."),
    },
}


def threshold(check_id: str, name: str) -> float:
    """The value of a check's threshold.

    Args:
        check_id: the id of a check that has thresholds (a key of `THRESHOLDS`).
        name: the threshold's name in that check's entry.

    Returns:
        The value.

    Raises:
        KeyError: no such check or threshold (the message names the ones there are).
    """
    try:
        names = THRESHOLDS[check_id]
    except KeyError:
        raise KeyError(f"No check {check_id!r} has thresholds; these do: {', '.join(THRESHOLDS)}.") from None
    try:
        return names[name].value
    except KeyError:
        raise KeyError(f"Check {check_id!r} has no threshold {name!r}; it has: {', '.join(names)}.") from None
