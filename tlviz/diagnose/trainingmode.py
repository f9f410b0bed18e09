"""Checks that run the model in training mode: its BatchNormalization statistics, and what ``training=True`` changes.

- ``bn-statistics-mismatch`` (`check_bn_statistics_mismatch`): batch statistics beat the stored
  moving statistics on the same images, or every layer still holds its initial statistics.
- ``training-mode-inference`` (`check_training_mode_inference`): predictions flip under
  ``training=True`` (Dropout, noise layers, trainable BatchNormalization).

Both run a clone (`tlviz.diagnose.clones.clone_for_training_mode`) on the context's training-mode
sample, never the loaded model. How a check is written (its entry in `tlviz.diagnose.registry`,
``check.finding``, ``check.threshold``, `CheckSkipped`): see `tlviz.diagnose.base.Check`.
"""

from __future__ import annotations

import numpy as np

from tlviz.callargs import inference_only_paths, recorded_training
from tlviz.diagnose.base import EXAMPLES, Check, clears, name_list, sample_note
from tlviz.diagnose.clones import bn_mean_shift, clone_for_training_mode, describe_layer
from tlviz.diagnose.context import TRAINING_BATCH, DiagnosisContext
from tlviz.errors import CheckSkipped
from tlviz.findings import Finding
from tlviz.layers import BN_CLASSES, has_initial_statistics, iter_leaves, random_in_training
from tlviz.stats import format_points


def check_bn_statistics_mismatch(ctx: DiagnosisContext, check: Check) -> list[Finding]:
    """``bn-statistics-mismatch``: batch statistics give far better accuracy than the moving statistics."""
    bn = [leaf for leaf in iter_leaves(ctx.model) if type(leaf.layer).__name__ in BN_CLASSES]
    if not bn:
        raise CheckSkipped("The model has no BatchNormalization layer, so there are no stored statistics to check.")
    ctx.require_finite()
    if all(has_initial_statistics(leaf.layer) for leaf in bn):
        return [check.finding(  # certain from the file itself: no pass over the images is needed
            f"Every BatchNormalization layer ({len(bn)}) still holds its initial statistics (mean 0, variance 1)",
            {"bn_layers": len(bn), "initial_statistics": True, "examples": [leaf.path for leaf in bn[:5]],
             "measured_on_images": False},
            ("The stored moving mean / variance were never estimated: the base was never trained, its "
             "pre-trained weights did not load (e.g. `weights=None`, a `load_weights` that silently skipped "
             "layers), or the statistics were reset. In inference mode every BatchNormalization layer then "
             "normalizes with mean 0 and variance 1, which describes no real images. Load the pre-trained "
             "weights; if the other weights are trained, re-estimate the statistics on training images:\n"
             + _RECALIBRATE))]
    ctx.require_labels()
    min_images = int(check.threshold("min_images"))
    if len(ctx.images) < min_images:
        raise CheckSkipped(f"Batch statistics need at least {min_images} images; the image set has fewer.")
    ev = ctx.preset_evidence
    sample = ctx.training_sample
    labels = ev.labels[sample]
    best_inf = ctx.working_preset
    acc_inf = float(np.mean(ctx.inference_predictions[sample] == labels))
    # Batch statistics under the preset that wins in inference mode and under the fingerprint's choice
    # (which reads the first BN layer only, so it survives broken statistics further up).
    fp = ev.report.fingerprint
    candidates = list(dict.fromkeys([best_inf] + ([fp.best] if fp.best else [])))
    # A measurement, not a replay: every BN layer on batch statistics, a base called with
    # training=False included (its stored statistics are the ones under test).
    clone = clone_for_training_mode(ctx.model, noise=False, force_bn_batch_statistics=True, honour_training=False)
    acc_batch, best_batch, batch_preds = -1.0, best_inf, None
    for k, preset in enumerate(candidates):
        preds = ctx.predict_training_mode(clone, f"BatchNormalization with batch statistics ({preset})…",
                                          preset=preset, start=k / len(candidates), span=1 / len(candidates),
                                          indices=sample)
        acc = float(np.mean(preds == labels))
        if acc > acc_batch:
            acc_batch, best_batch, batch_preds = acc, preset, preds
    del clone
    if acc_batch - acc_inf < check.threshold("gap"):
        return []
    # The same images both ways: the paired interval of the gain must clear the threshold.
    d = clears(batch_preds == labels, ctx.inference_predictions[sample] == labels, check.threshold("gap"),
                f"accuracy is {acc_inf:.1%} with the stored statistics and {acc_batch:.1%} with batch statistics")
    if d is None:
        return []
    dist = None if fp.ranking is None else dict(zip(fp.ranking["preset"], fp.ranking["distance"])).get(best_batch)
    pinned = _pinned_bn(ctx.model, bn)
    return [check.finding(
        (f"Accuracy is {acc_inf:.1%} with the stored BatchNormalization statistics but {acc_batch:.1%} with "
         f"batch statistics (95 % interval of the gain: {format_points(d.low, d.high)}, {d.n} images)"),
        {"accuracy_inference_mode": acc_inf, "accuracy_batch_statistics": acc_batch, "preset_inference": best_inf,
         "gain": d.difference, "gain_interval": [d.low, d.high],
         "preset_batch_statistics": best_batch,
         "bn_layers": len(bn), "examples": [leaf.path for leaf in bn[:5]],
         "batch_size": getattr(ctx, "training_batch", TRAINING_BATCH), "n_images": int(len(sample)),
         "sample": sample_note(sample, len(ev.labels)),
         "first_bn_fingerprint_distance": dist,
         "bn_layers_in_inference_by_call": {p: len(v) for p, v in pinned.items()}},
        ("The moving mean / variance stored in the BatchNormalization layers do not describe these images: "
         "too few training steps for them to settle, a momentum too high for a short run, or images prepared "
         "differently in training. Make sure inference prepares images exactly like training; then re-estimate "
         "the statistics on training images (only they change):\n"
         + _RECALIBRATE + (_pinned_recalibration_note(pinned) if pinned else "")),
    )]


def _pinned_bn(model, bn_leaves) -> dict[str, list[str]]:
    """BatchNormalization paths kept in inference mode by a ``training=False`` call, per pinned model."""
    pinned = [p for p, value in recorded_training(model).items() if value is False]
    out: dict[str, list[str]] = {}
    for leaf in bn_leaves:
        owner = next((p for p in pinned if leaf.path.startswith(p + "/")), None)
        if owner is not None:
            out.setdefault(owner, []).append(leaf.path)
    return out


def _pinned_recalibration_note(pinned: dict[str, list[str]]) -> str:
    names = ", ".join(f"`{p}`" for p in pinned)
    n = sum(len(v) for v in pinned.values())
    return (f"\nThe model calls {names} with `training=False`: as written, {n} of these layers use the stored "
            "statistics in training too, so fine-tuning will not repair them; the loop above still reaches them "
            "(Keras 3 passes the outer `training=True` into a nested model whatever its recorded argument).")


_RECALIBRATE = ("```python\nimport keras\n\n"
                "def bn_layers(m):\n    for layer in m.layers:\n        if isinstance(layer, keras.Model):\n"
                "            yield from bn_layers(layer)\n        elif isinstance(layer, keras.layers.BatchNormalization):\n"
                "            yield layer\n\nfor layer in bn_layers(model):\n    layer.trainable = True   # frozen BN never "
                "updates its statistics\n    layer.momentum = 0.9      # forget the old statistics faster\n"
                "for x, _ in train_batches.take(200):  # prepared exactly as in training\n"
                "    model(x, training=True)          # updates moving_mean / moving_variance only\n"
                "model.save(\"model_recalibrated.keras\")\n```")


def check_training_mode_inference(ctx: DiagnosisContext, check: Check) -> list[Finding]:
    """``training-mode-inference``: predictions flip (and BN statistics change) under ``training=True``.

    Layers inside a nested model the graph calls with ``training=False`` stay in
    inference mode (`tlviz.callargs`): they are not listed, and the training-mode
    pass runs the model as written.
    """

    pinned = {p for p, value in recorded_training(ctx.model).items() if value is False}
    inside = inference_only_paths(ctx.model)
    noise, bn, kept = [], [], {}
    for leaf in iter_leaves(ctx.model):
        is_bn = type(leaf.layer).__name__ in BN_CLASSES and leaf.layer.trainable
        if leaf.path in inside and (is_bn or random_in_training(leaf.layer)):
            owner = next(p for p in sorted(pinned, key=len) if leaf.path.startswith(p + "/"))
            kept.setdefault(owner, []).append("BatchNormalization" if is_bn else type(leaf.layer).__name__)
        elif random_in_training(leaf.layer):
            noise.append(describe_layer(leaf.path, leaf.layer))
        elif is_bn:
            bn.append(leaf.path)
    if not noise and not bn:
        return []
    ctx.require_finite()
    clone = clone_for_training_mode(ctx.model, noise=True)  # honours training=False calls
    sample = ctx.training_sample
    preds = ctx.predict_training_mode(clone, "Running the model in training mode…", indices=sample)
    reference = ctx.inference_predictions[sample]
    flipped = sample[np.flatnonzero(preds != reference)]
    share = float(len(flipped) / max(len(preds), 1))
    shift = bn_mean_shift(ctx.model, clone, set(bn))
    del clone
    if not len(flipped) and not bn:
        return []
    layers = noise + [f"{p} (BatchNormalization, trainable)" for p in bn]
    return [check.finding(
        f"Running the model in training mode changes {share:.1%} of its predictions",
        {"flipped_share": share, "flipped": int(len(flipped)), "n_images": int(len(preds)), "layers": layers,
         "bn_layers_updated": len(bn), "bn_mean_shift_after_one_pass": shift,
         "kept_in_inference_by_call": {p: len(v) for p, v in kept.items()},
         "preset": ctx.working_preset, "sample": sample_note(sample, len(ctx.images)),
         "example_files": [ctx.images.files[i] for i in flipped[:EXAMPLES]]},
        (f"These layers behave differently when the model is called with `training=True` (as inference code "
         f"inside a training loop or a custom `train_step` does): {name_list(layers, 4)}. "
         + ("Dropout and noise layers randomise the output. " if noise else "")
         + ("Trainable BatchNormalization layers normalize with each batch's statistics and overwrite their "
            "stored ones, so the model \"learns during inference\". " if bn else "")
         + (_kept_note(kept) if kept else "")
         + "Run inference in inference mode:\n"
         "```python\nprobs = model.predict(x)              # always inference mode\n"
         "probs = model(x, training=False)      # inside your own loops and train_step\n```"),
    )]


def _kept_note(kept: dict[str, list[str]]) -> str:
    """The sentence on layers a ``training=False`` call keeps in inference mode (`kept`: classes per model)."""
    counts: dict[str, int] = {}
    for classes in kept.values():
        for cls in classes:
            counts[cls] = counts.get(cls, 0) + 1
    what = ", ".join(f"{n} {cls} layer{'s' if n != 1 else ''}" for cls, n in counts.items())
    names = ", ".join(f"`{p}`" for p in kept)
    return (f"Left out: the {what} inside {names}, because the model calls {names} with `training=False`, so they "
            "stay in inference mode as written (Keras 3 itself still passes an outer `model(x, training=True)` into "
            "a nested model, one more reason to call the model as below). ")
