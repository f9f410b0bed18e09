"""``bn-statistics-mismatch``: re-estimate every BatchNormalization layer's moving statistics (AdaBN).

AdaBN (Li, Wang, Shi, Liu & Hou, 2016, *Revisiting Batch Normalization For Practical Domain
Adaptation*): the stored moving mean and variance are replaced by the statistics of the user's
own images. No labels and no gradient: a private copy runs forward in training mode, every
BatchNormalization layer on batch statistics, over the estimation half of the images in seeded
batches; each layer's batch mean and variance are read after every batch and pooled over all
batches (the mean of the batch means; the variance as the mean of the batch variances plus the
variance of the batch means, each batch weighted by its size). Only the moving statistics of the
repaired copy change; every other weight stays as it was.
"""

from __future__ import annotations

import numpy as np

from tlviz.errors import CheckSkipped, RepairRefused
from tlviz.layers import BN_CLASSES, iter_leaves
from tlviz.repair.result import RepairStep

#: At most this many images per batch of the estimating pass (fewer when the memory budget says so).
ADABN_BATCH = 64


def bn_paths(model) -> list[str]:
    """Paths of the model's BatchNormalization layers, input first."""
    return [leaf.path for leaf in iter_leaves(model) if type(leaf.layer).__name__ in BN_CLASSES]


def _read(layer) -> tuple[np.ndarray, np.ndarray]:
    import keras

    return (keras.ops.convert_to_numpy(layer.moving_mean).astype(np.float64),
            keras.ops.convert_to_numpy(layer.moving_variance).astype(np.float64))


def estimate_statistics(model, images: np.ndarray, preset: str, say=None, seed: int = 0,
                        with_predictions: bool = False):
    """Each BatchNormalization layer's mean and variance over `images`, by forward passes in training mode.

    Args:
        model: the Keras model (only read: a private copy runs).
        images: ``uint8`` images, prepared with `preset` batch by batch.
        preset: the preset the model is fed.
        say: ``say(fraction, text)`` progress. Defaults to none.
        seed: shuffles the images into batches. Defaults to `0`.
        with_predictions: also return the classes the same passes predict (every BatchNormalization
            layer on its batch's statistics: how the model does once its statistics fit the images
            prepared this way). Defaults to `False`.

    Returns:
        ``{path: (mean, variance)}`` per BatchNormalization layer (float64 arrays); with
        `with_predictions`, ``(that, predicted classes in the order of images)``.
    """
    import keras

    from tlviz.diagnose.clones import clone_for_training_mode
    from tlviz.memory import forward, plan_batch
    from tlviz.outputs import predicted_classes
    from tlviz.presets import apply_preset

    say = say or (lambda f, t: None)
    try:
        scratch = clone_for_training_mode(model, noise=False, force_bn_batch_statistics=True, honour_training=False)
    except CheckSkipped as exc:
        raise RepairRefused(str(exc)) from None
    layers = {leaf.path: leaf.layer for leaf in iter_leaves(scratch) if type(leaf.layer).__name__ in BN_CLASSES}
    for layer in layers.values():
        layer.momentum = 0.0  # after each batch the moving statistics *are* that batch's statistics
        layer.moving_mean.assign(keras.ops.zeros_like(layer.moving_mean))
        layer.moving_variance.assign(keras.ops.ones_like(layer.moving_variance))
    n = len(images)
    size = plan_batch(scratch, "training_forward", n=n, max_batch=ADABN_BATCH).batch_size
    order = np.random.default_rng(seed).permutation(n)
    batches = np.array_split(order, max(1, -(-n // size)))  # near-equal sizes: no batch of one at the end
    run = forward(scratch, training=True)
    preds = np.zeros(n, dtype=np.int64)
    s1 = {p: 0.0 for p in layers}
    s2 = {p: 0.0 for p in layers}
    done = 0
    for idx in batches:
        idx = np.sort(idx)
        preds[idx] = predicted_classes(run(apply_preset(images[idx], preset)))
        w = len(idx)
        for p, layer in layers.items():
            m, v = _read(layer)
            s1[p] = s1[p] + w * m
            s2[p] = s2[p] + w * (v + m * m)
        done += w
        say(done / n, f"Re-estimating BatchNormalization statistics ({done} of {n} images)…")
    del scratch
    out = {}
    for p in layers:
        mean = s1[p] / n
        out[p] = (mean, np.maximum(s2[p] / n - mean * mean, 0.0))
    return (out, preds) if with_predictions else out


def moved(old: dict, new: dict, epsilon: float = 1e-3) -> list[dict]:
    """How far each layer's statistics moved: the mean shift in stored standard deviations, the variance ratio.

    Returns:
        One ``{"layer", "mean_shift", "variance_ratio"}`` per layer: the average over channels of
        ``|new mean - old mean| / sqrt(old variance + epsilon)``, and the geometric mean over
        channels of ``(new variance + epsilon) / (old variance + epsilon)``.
    """
    rows = []
    for p, (m1, v1) in new.items():
        m0, v0 = old[p]
        shift = float(np.mean(np.abs(m1 - m0) / np.sqrt(v0 + epsilon)))
        ratio = float(np.exp(np.mean(np.log((v1 + epsilon) / (v0 + epsilon)))))
        rows.append({"layer": p, "mean_shift": shift, "variance_ratio": ratio})
    return rows


def repair_bn_statistics(chain, check_only: bool = False) -> RepairStep | None:
    """AdaBN on the chain's copy, estimated on the estimation half under the working preset.

    Args:
        chain: the `tlviz.repair.chain.Chain`.
        check_only: only check that the repair applies. Defaults to `False`.

    Returns:
        The `RepairStep` (None with `check_only`).

    Raises:
        RepairRefused: the model has no BatchNormalization layer, or too few images.
    """
    from tlviz.diagnose.thresholds import threshold
    from tlviz.repair.graph import copy_model, leaf

    paths = bn_paths(chain.model)
    if not paths:
        raise RepairRefused("`bn-statistics-mismatch`: the model has no BatchNormalization layer, so there are no "
                            "statistics to re-estimate.")
    minimum = int(threshold("bn-statistics-mismatch", "min_images"))
    chain.require_halves("re-estimate BatchNormalization statistics", minimum)
    if check_only:
        return None
    preset = chain.working
    before_model = chain.model
    old = {p: _read(leaf(before_model, p)) for p in paths}
    chain.sub(0.0, 0.7)
    stats = chain.bn_statistics.get(preset)  # estimated already while the expected preset was chosen
    if stats is None:
        stats = estimate_statistics(before_model, chain.images[chain.fit], preset, chain.say)
    new_model = copy_model(before_model)
    for p, (mean, var) in stats.items():
        layer = leaf(new_model, p)
        layer.moving_mean.assign(mean.astype(np.float32))
        layer.moving_variance.assign(var.astype(np.float32))
    chain.sub(0.7, 1.0)
    cmp = chain.compare((before_model, preset), (new_model, preset))
    rows = moved(old, stats)
    chain.model = new_model
    top = sorted(rows, key=lambda r: -r["mean_shift"])[:3]
    return RepairStep(
        "bn-statistics-mismatch",
        f"Re-estimated the moving mean and variance of {len(paths)} BatchNormalization layers on "
        f"{len(chain.fit)} of your images (AdaBN, fed `{preset}`); no other weight changed",
        "accuracy", cmp["before"], cmp["after"], cmp["interval"], len(chain.fit), cmp["n_eval"], preset, preset,
        details={"bn_layers": len(paths), "preset": preset, "layers": rows,
                 "largest_shifts": [r["layer"] for r in top]},
        notes=[f"BatchNormalization statistics now describe your images as prepared with `{preset}`: keep preparing "
               "them that way at inference."])

