"""Checks on the fine-tuning setup: can this model learn these classes, the way it is set up?

How a check is written (its entry in `tlviz.diagnose.registry`, ``check.finding``,
``check.threshold``, `CheckSkipped`): see `tlviz.diagnose.base.Check`.
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np

from tlviz.diagnose.base import Check, jsonable, name_list, sample_note
from tlviz.diagnose.clones import bn_mean_shift, clone_for_training_mode
from tlviz.diagnose.context import TRAINING_BATCH, DiagnosisContext
from tlviz.errors import CheckSkipped
from tlviz.findings import Finding
from tlviz.layers import BN_TRAINABLE_FIX
from tlviz.stats import decide, format_interval, format_points, paired_difference, wilson_interval


def check_freezing(ctx: DiagnosisContext, check: Check) -> list[Finding]:
    """The freezing finding with this check's id, from `tlviz.layers.freezing_findings`.

    Serves ``no-trainable-weights`` (every layer frozen), ``head-frozen`` (the head
    cannot train while layers below it can), ``trainable-inside-frozen-model`` and
    ``keras-overrides-training-false``: the Freezing page shows the same findings
    (``bn-trainable-in-base`` too, measured here by `check_bn_trainable_in_base`).
    """
    return [check.adopt(f) for f in ctx.freezing if f.id == check.id]


def check_bn_trainable_in_base(ctx: DiagnosisContext, check: Check) -> list[Finding]:
    """``bn-trainable-in-base``: trainable BatchNormalization in the base, and what it does on the user's images.

    Read from the file alone (`tlviz.layers.freezing_findings`) it is advice about a
    fine-tuning run, at this check's ``info`` severity: a model trained end to end has
    trainable BatchNormalization by design. On labelled images the check measures the
    effect `fit` would have: one pass over a seeded, class-balanced sample with the model
    in training mode as written (every BatchNormalization layer that trains normalizes
    with its batch's statistics; dropout and noise off; a base called with
    ``training=False`` stays in inference mode), against inference mode on the same
    images. It takes the check's ``measured_severity`` (a warning) only when the whole 95 %
    paired interval of the accuracy drop is at or above ``drop``; otherwise it stays advice,
    with the numbers, or with the reason nothing could be measured (no labels, too few
    images, a model at chance).
    """
    advice = next((check.adopt(f) for f in ctx.freezing if f.id == check.id), None)
    if advice is None:
        return []
    try:
        m = _batch_statistics_effect(ctx, check)
    except CheckSkipped as exc:
        return [replace(advice, evidence=jsonable({**advice.evidence, "not_measured": str(exc)}),
                        fix=f"Not measured on your images: {exc} {advice.fix}")]
    lo, hi = m["drop_interval"]
    numbers = (f"{m['accuracy_inference_mode']:.1%} in inference mode, {m['accuracy_batch_statistics']:.1%} with the "
               f"BatchNormalization layers on batch statistics as `fit` runs them (batches of {m['batch_size']}), on "
               f"{m['n_images']} images: a drop of {m['drop'] * 100:.1f} points, 95 % interval "
               f"{format_points(lo, hi)}")
    evidence = jsonable({**advice.evidence, **m, "measured_on_images": True})
    if m["verdict"] is True:
        return [check.measured(
            advice, evidence=evidence,
            title=(f"Trainable BatchNormalization in the base costs {m['drop'] * 100:.0f} points of accuracy in "
                   f"training mode ({m['accuracy_inference_mode']:.1%} -> {m['accuracy_batch_statistics']:.1%})"),
            fix=(f"Measured on your images: {numbers}. Fine-tuning this model as it is set up trains it on features "
                 "unlike those it uses at inference, and overwrites the moving statistics with those of your "
                 "batches (smaller batches make it worse). " + BN_TRAINABLE_FIX))]
    verdict = ("no drop of that size: nothing is wrong with this model as it is" if m["verdict"] is False else
               "too few images to tell whether the drop reaches that size")
    return [replace(advice, evidence=evidence,
                    fix=(f"Measured on your images: {numbers}; a warning needs the whole interval at or above "
                         f"{check.threshold('drop') * 100:g} points, so {verdict}. {advice.fix}"))]


def _batch_statistics_effect(ctx: DiagnosisContext, check: Check) -> dict:
    """Accuracy in inference mode and with batch statistics as `fit` runs them, on the training-mode sample.

    Raises:
        CheckSkipped: no labels, too few images, NaN weights, or a model at chance (a drop cannot show).
    """

    ctx.require_labels()
    ctx.require_finite()
    min_images = int(check.threshold("min_images"))
    if len(ctx.images) < min_images:
        raise CheckSkipped(f"batch statistics need at least {min_images} images; the image set has "
                           f"{len(ctx.images)}.")
    ev = ctx.preset_evidence
    if ev.labels is None:
        raise CheckSkipped(ev.label_note or "the image set's classes do not match the model's outputs.")
    if ev.at_chance:
        raise CheckSkipped("the model is no better than chance on these images in inference mode (see "
                           "no-better-than-chance), so a drop in training mode cannot show.")
    sample = ctx.training_sample
    labels = ev.labels[sample]
    right_inference = ctx.inference_predictions[sample] == labels
    clone = clone_for_training_mode(ctx.model, noise=False)  # as written: training=False calls honoured
    preds = ctx.predict_training_mode(clone, "BatchNormalization on batch statistics, as `fit` runs it…",
                                      indices=sample)
    table = ctx.table
    flagged = set(table[(table["role"] == "base") & table["is_bn"] & table["trainable"]
                        & (table["inference_by_call"] == "")]["path"])
    shift = bn_mean_shift(ctx.model, clone, flagged)
    del clone
    right_batch = preds == labels
    d = paired_difference(right_inference, right_batch)
    return {"accuracy_inference_mode": float(np.mean(right_inference)),
            "accuracy_batch_statistics": float(np.mean(right_batch)),
            "drop": d.difference, "drop_interval": [d.low, d.high], "threshold": check.threshold("drop"),
            "verdict": decide(d.low, d.high, check.threshold("drop")),
            "n_images": int(len(sample)), "sample": sample_note(sample, len(ev.labels)),
            "batch_size": int(getattr(ctx, "training_batch", TRAINING_BATCH)), "preset": ctx.working_preset,
            "bn_mean_shift_after_one_pass": shift}


def check_no_better_than_chance(ctx: DiagnosisContext, check: Check) -> list[Finding]:
    """``no-better-than-chance``: no preset makes the model clearly better than chance; the probe says why.

    Fires only when the 95 % Wilson interval of the most accurate preset neither
    clears chance nor reaches ``margin`` above it; an interval that is not above
    chance but reaches further skips the check (too few images to decide).
    """
    ctx.require_labels()
    ctx.require_finite()
    ev = ctx.preset_evidence
    if not ev.at_chance:
        return []
    top = max(ev.accuracy, key=ev.accuracy.get)
    n = len(ev.labels)
    lo, hi = wilson_interval(int(round(ev.accuracy[top] * n)), n)
    margin = check.threshold("margin")
    if hi >= ev.chance + margin:
        raise CheckSkipped(
            f"Too few images to decide whether the model is better than chance: the most accurate preset, `{top}`, "
            f"scores {ev.accuracy[top]:.1%} on {n} images (95 % interval {format_interval(lo, hi)}), not clearly "
            f"above {ev.chance:.1%} chance but possibly up to {(hi - ev.chance) * 100:.1f} points above it, beyond "
            f"the {margin * 100:g} points that count as guessing. More images narrow the interval.")
    evidence = {"accuracy_by_preset": ev.accuracy, "most_accurate_preset": top, "interval": [lo, hi],
                "chance": ev.chance, "n_images": n, "margin": margin}
    try:
        p = ctx.probe_pretrained
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
    return [check.finding(
        f"The model is no better than chance on these images under any preprocessing ({ev.accuracy[top]:.1%}, "
        f"chance {ev.chance:.1%})",
        evidence,
        f"{ev.at_chance} {probe_note} {cause}")]


def _replace_head_snippet(n_classes: int) -> str:
    return ("```python\nimport keras\n\n"
            "features = keras.Model(model.input, model.layers[-2].output)  # everything below the old head\n"
            f"outputs = keras.layers.Dense({n_classes}, activation=\"softmax\", name=\"new_head\")(features.output)\n"
            "new_model = keras.Model(features.input, outputs)\n"
            "new_model.compile(optimizer=\"adam\", loss=\"sparse_categorical_crossentropy\", metrics=[\"accuracy\"])\n"
            "```")


def check_class_count_mismatch(ctx: DiagnosisContext, check: Check) -> list[Finding]:
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
        why = (f"The model was trained on {name_list(recorded)}; the image set has {name_list(foreign)}, which it "
               "cannot predict.")
    else:
        if len(names) == k:
            return []
        title = f"The image set has {len(names)} classes but the model has {k} outputs"
        why = f"A {k}-output head cannot learn {len(names)} classes."
    return [check.finding(
        title, evidence,
        (f"{why} Replace the head with a new {len(names)}-class layer and train it on your images (the base "
         f"keeps its pre-trained features):\n{_replace_head_snippet(len(names))}"),
    )]


def check_class_imbalance(ctx: DiagnosisContext, check: Check) -> list[Finding]:
    """``class-imbalance``: the largest class has more than ``ratio`` times the images of the smallest."""
    ctx.require_labelled()
    counts = ctx.images.counts
    if len(counts) < 2:
        raise CheckSkipped("The image set has a single class, so there is no balance to check.")
    lo, hi = min(counts.values()), max(counts.values())
    if hi <= check.threshold("ratio") * lo:
        return []
    smallest = min(counts, key=counts.get)
    largest = max(counts, key=counts.get)
    ratio = hi / lo if lo else None
    weights = ", ".join(f"{i}: {sum(counts.values()) / (len(counts) * max(c, 1)):.2f}"
                        for i, c in enumerate(counts.values()))
    return [check.finding(
        (f"Class '{largest}' has {hi} images, {ratio:.1f}× the {lo} of class '{smallest}'" if ratio
         else f"Class '{smallest}' has no images while '{largest}' has {hi}"),
        {"counts": counts, "largest": largest, "smallest": smallest, "ratio": ratio},
        ("A model trained on these proportions learns to favour the large classes, and overall accuracy hides "
         "it. Rebalance the set (collect or oversample the small classes), or weight the loss by class, and "
         "report per-class accuracy:\n```python\n"
         f"class_weight = {{{weights}}}  # total / (classes × count)\n"
         "model.fit(train_data, epochs=..., class_weight=class_weight)\n```"),
    )]


def check_too_few_images(ctx: DiagnosisContext, check: Check) -> list[Finding]:
    """``too-few-images``: fewer than ``min_per_class`` images in some class."""
    ctx.require_labelled()
    counts = ctx.images.counts
    minimum = int(check.threshold("min_per_class"))
    few = {c: n for c, n in counts.items() if n < minimum}
    if not few:
        return []
    return [check.finding(
        f"{len(few)} class{'es have' if len(few) > 1 else ' has'} fewer than {minimum} images",
        {"classes_below": few, "minimum": minimum, "counts": counts},
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
