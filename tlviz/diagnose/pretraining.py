"""Checks on the pre-training: is the base itself weak or broken?

How a check is written (its entry in `tlviz.diagnose.registry`, ``check.finding``,
``check.threshold``, `CheckSkipped`): see `tlviz.diagnose.base.Check`.
"""

from __future__ import annotations

from tlviz.diagnose.base import Check
from tlviz.diagnose.context import DiagnosisContext
from tlviz.diagnose.probe import PROBE_MAX_IMAGES, PROBE_MAX_PER_CLASS
from tlviz.findings import Finding


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


def check_pretraining_no_better_than_random(ctx: DiagnosisContext, check: Check) -> list[Finding]:
    """``pretraining-no-better-than-random``: linear probe, pre-trained vs fresh weights."""
    ctx.require_labelled()
    ctx.require_finite()
    p = ctx.probe
    if p.pretrained - p.random >= check.threshold("margin"):
        return []
    return [check.finding(
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

