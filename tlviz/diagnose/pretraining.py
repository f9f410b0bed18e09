"""Checks on the pre-training: is the base itself weak or broken?

How a check is written (its entry in `tlviz.diagnose.registry`, ``check.finding``,
``check.threshold``, `CheckSkipped`): see `tlviz.diagnose.base.Check`.
"""

from __future__ import annotations

from tlviz.diagnose.base import Check
from tlviz.diagnose.context import DiagnosisContext
from tlviz.diagnose.probe import PROBE_MAX_IMAGES, PROBE_MAX_PER_CLASS, PROBE_RANDOM_INITS
from tlviz.errors import CheckSkipped
from tlviz.findings import Finding
from tlviz.layers import BN_CLASSES, has_initial_statistics, iter_leaves
from tlviz.stats import decide


def check_weights_not_finite(ctx: DiagnosisContext, check: Check) -> list[Finding]:
    """``weights-not-finite``: NaN or infinite values in any weight."""
    bad = ctx.nonfinite
    if not bad:
        return []
    n_bad = sum(b for _, b, _ in bad)
    layers = sorted({p.rsplit("/", 1)[0] for p, _, _ in bad})
    return [check.finding(
        f"{n_bad:,} weights are NaN or infinite",
        {"nonfinite_values": n_bad, "variables": [p for p, _, _ in bad][:10], "n_variables": len(bad),
         "layers": layers[:10]},
        ("Training diverged before this model was saved (a too-high learning rate, a loss on unnormalized "
         "inputs, or log(0) in a custom loss), so its outputs are meaningless. Reload the last checkpoint saved "
         "before the loss became NaN and train again with a lower learning rate and gradient clipping; stop "
         "early when it happens:\n```python\nmodel.compile(optimizer=keras.optimizers.Adam(1e-4, clipnorm=1.0), "
         "loss=..., metrics=[\"accuracy\"])\nmodel.fit(..., callbacks=[keras.callbacks.TerminateOnNaN()])\n```"),
    )]


def _never_trained_base(ctx: DiagnosisContext) -> list[str] | None:
    """Paths of the base's BatchNormalization layers when every one still holds its initial statistics, else None."""
    roles = dict(zip(ctx.table["path"], ctx.table["role"]))
    bn = [leaf for leaf in iter_leaves(ctx.model)
          if type(leaf.layer).__name__ in BN_CLASSES and roles.get(leaf.path, "base") != "head"]
    if bn and all(has_initial_statistics(leaf.layer) for leaf in bn):
        return [leaf.path for leaf in bn]
    return None


def check_pretraining_no_better_than_random(ctx: DiagnosisContext, check: Check) -> list[Finding]:
    """``pretraining-no-better-than-random``: a never-trained base, or features barely better than random ones.

    Certain evidence first: when every BatchNormalization layer of the base still
    holds its initial statistics (mean 0, variance 1), the file proves the base
    never saw a training batch, and no probe is run. Otherwise the leave-one-out
    probe (`tlviz.diagnose.probe`) compares the base's features with fresh random
    ones on the same images; the finding needs the whole 95 % interval of the
    gain below the gain required (``margin``, or ``headroom`` of the random
    probe's errors when smaller), and an interval that straddles it skips the
    check with its numbers (too few images to decide).
    """
    never = _never_trained_base(ctx)
    if never is not None:
        return [check.finding(
            f"The base was never trained: its {len(never)} BatchNormalization layers all still hold their initial "
            "statistics (mean 0, variance 1)",
            {"bn_layers": len(never), "initial_statistics": True, "examples": never[:5],
             "measured_on_images": False},
            ("A trained base's BatchNormalization layers store the mean and variance of the images it was trained on; "
             "these were never updated, so the file itself shows the base's weights are not pre-trained: "
             "`weights=None`, a `load_weights` that skipped layers, or layers re-initialised after loading. "
             "Load the pre-trained weights before adding the head, e.g.\n```python\nimport keras\n\n"
             "base = keras.applications.MobileNetV2(weights=\"imagenet\", include_top=False, "
             "input_shape=(224, 224, 3))\nbase.trainable = False\n```"),
        )]
    ctx.require_labelled()
    ctx.require_finite()
    p = ctx.probe
    g = p.gain
    required = p.required_gain(check.threshold("margin"), check.threshold("headroom"))
    measured = (f"A nearest-class-mean probe scores {p.pretrained:.1%} on the base's features and {p.random:.1%} "
                f"on the best of {PROBE_RANDOM_INITS} copies of the same architecture with fresh random weights "
                f"(each of {p.n_test} images held out in turn): a gain of {g.describe()}")
    verdict = decide(g.low, g.high, required)
    if verdict is True:
        return []
    if verdict is None:
        raise CheckSkipped(f"Too few images to decide whether pre-training helps: {measured}, which straddles the "
                           f"{required * 100:.1f} points required. More images per class narrow the interval.")
    return [check.finding(
        "The pre-trained features are no better than random ones for these classes",
        {"probe_accuracy_pretrained": p.pretrained, "probe_accuracy_random": p.random,
         "gain": g.difference, "gain_interval": list(g.interval), "gain_required": required,
         "probe_interval": list(p.interval), "probe_interval_random": list(p.random_interval),
         "chance": p.chance, "n_images": p.n_images, "n_classes": p.n_classes,
         "train_images_per_class": p.shots, "random_copies": PROBE_RANDOM_INITS,
         "feature_layer": p.feature_layer, "feature_dim": p.feature_dim, "features_carry_signal": p.signal,
         "duplicates_left_out": p.duplicates,
         "sample": (f"seeded, class-balanced, distinct images: at most {PROBE_MAX_PER_CLASS} per class, "
                    f"{PROBE_MAX_IMAGES} in all; each held out in turn"),
         "preset": ctx.working_preset},
        (f"{p.signal_sentence()} {measured}, entirely below the {required * 100:.1f} points pre-training that helps "
         "should add: the pre-training gives this task little. Check that the pre-trained weights really loaded "
         "(e.g. `weights=\"imagenet\"` downloaded, `load_weights` pointed at the right file, no layer silently "
         "re-initialised), use a base pre-trained on images closer to yours, or unfreeze more of the base so "
         "its features can adapt."),
    )]
