"""The label-free fingerprint: which preset reproduces the first BatchNormalization layer's statistics.

A BatchNormalization layer remembers the mean and variance of its input during training.
Images prepared the way the model was trained reproduce them; another normalization shifts
and scales them. `fingerprint(model, images, ...)` runs only the layers up to that layer, on an
evenly spaced sample, and ranks the presets by the distance between the two; no labels needed,
so it answers long before the full comparison.
"""

from __future__ import annotations

import time
from typing import Callable

import numpy as np
import pandas as pd

from tlviz.errors import NormalizationRefused
from tlviz.layers import BN_CLASSES, has_initial_statistics
from tlviz.normalize.inference import planned_batch_size
from tlviz.normalize.inputs import as_loaded, check_shapes, image_array
from tlviz.normalize.results import DEFAULT_FINGERPRINT_IMAGES, FINGERPRINT_COLUMNS, Fingerprint
from tlviz.presets import PIXEL_PRESET, CustomPreset, applicable_presets, apply_preset


class _NoFingerprint(Exception):
    pass


def first_bn(model):
    """(chain of containing models, BN layer, path) of the first BatchNormalization layer."""
    from tlviz.layers import iter_leaves

    for leaf in iter_leaves(model):
        if type(leaf.layer).__name__ in BN_CLASSES:
            return list(leaf.ancestors), leaf.layer, leaf.path
    return None


def _input_in(container, layer):
    """The tensor feeding `layer` inside `container`'s graph."""
    import keras

    nodes = list(getattr(layer, "_inbound_nodes", []) or [])
    for node in nodes:
        tensors = list(node.input_tensors)
        if len(tensors) != 1:
            continue
        t = tensors[0]
        if any(t is i for i in container.inputs):
            return t
        try:
            keras.Model(container.inputs[0], t)
        except Exception:  # the node belongs to another graph
            continue
        return t
    raise _NoFingerprint(f"the input of layer '{layer.name}' could not be traced back to the model's input")


def up_to(model, chain, bn) -> Callable:
    """A callable running `model` from its input up to `bn`'s input (nested models followed)."""
    import keras

    parts = []
    container = model
    for nxt in list(chain) + [bn]:
        t = _input_in(container, nxt)
        if not any(t is i for i in container.inputs):
            parts.append(keras.Model(container.inputs[0], t))
        container = nxt

    import tensorflow as tf

    @tf.function(reduce_retracing=True, autograph=False)
    def run(x):  # compiled: an eager call would keep every intermediate output until it returns
        for p in parts:
            x = p(x, training=False)
        return x

    return run


def _sample_index(n: int, k: int) -> np.ndarray:
    if n <= k:
        return np.arange(n)
    return np.unique(np.linspace(0, n - 1, k).round().astype(np.int64))


def fingerprint(model, images, presets: tuple | list | None = None, custom: CustomPreset | None = None,
                max_images: int = DEFAULT_FINGERPRINT_IMAGES, batch_size: int | None = None) -> Fingerprint:
    """Rank presets by how well they reproduce the first BatchNormalization layer's statistics.

    A BatchNormalization layer remembers the mean and variance of its input
    during training (``moving_mean`` / ``moving_variance``). Feeding images
    prepared the way the model was trained reproduces them; another
    normalization shifts and scales them. Only the layers up to that BN layer
    run, on an evenly spaced sample of images, and no labels are needed.

    Args:
        model: a `LoadedModel` or Keras model.
        images: an `ImageSet` or a ``uint8`` array ``(N, H, W, C)`` at the
            model's input size (labels are not used).
        presets: preset names to rank. Defaults to every applicable preset.
        custom: an extra `CustomPreset` to rank. Defaults to `None`.
        max_images: sample size. Defaults to `DEFAULT_FINGERPRINT_IMAGES`.
        batch_size: images per forward pass. Defaults to the batch that fits the
            memory budget (`tlviz.memory.plan_batch`, at most `DEFAULT_BATCH_SIZE`).

    Returns:
        A `Fingerprint`; ``ranking`` is None (with ``reason``) when the model
        has no BatchNormalization layer or it holds no trained statistics.
    """
    import keras

    t0 = time.perf_counter()
    loaded = as_loaded(model)
    arr = image_array(images)
    check_shapes(loaded, arr)
    chosen = list(presets) if presets is not None else list(applicable_presets(arr.shape[-1]))
    # A named setting with another preset's arithmetic (teachable = tf) has that preset's fingerprint.
    chosen = list(dict.fromkeys(PIXEL_PRESET.get(p, p) for p in chosen))
    for p in chosen:
        if p not in applicable_presets(arr.shape[-1]):
            raise NormalizationRefused(f"Preset {p!r} does not apply to {arr.shape[-1]}-channel images. Use one of: "
                                       f"{', '.join(applicable_presets(arr.shape[-1]))}.")
    candidates: list = chosen + ([custom] if custom is not None else [])

    found = first_bn(loaded.model)
    if found is None:
        return Fingerprint(None, None, (
            f"{loaded.name} has no BatchNormalization layer, so there are no stored training statistics to "
            "compare with; the label-free fingerprint needs one. Rank the presets by accuracy instead."),
            0, time.perf_counter() - t0)
    chain, bn, path = found
    mm = keras.ops.convert_to_numpy(bn.moving_mean).astype(np.float64).ravel()
    mv = keras.ops.convert_to_numpy(bn.moving_variance).astype(np.float64).ravel()
    if has_initial_statistics(bn):
        return Fingerprint(None, path, (
            f"The first BatchNormalization layer ('{path}') still holds its initial statistics (mean 0, "
            "variance 1): it was never trained, so it says nothing about the preprocessing used in training."),
            0, time.perf_counter() - t0)
    try:
        run = up_to(loaded.model, chain, bn)
    except _NoFingerprint as exc:
        return Fingerprint(None, path, f"No fingerprint: {exc}.", 0, time.perf_counter() - t0)

    axis = bn.axis[0] if isinstance(bn.axis, (list, tuple)) else bn.axis
    eps = float(getattr(bn, "epsilon", 1e-3))
    sample = arr[_sample_index(len(arr), max_images)]
    batch_size = planned_batch_size(loaded.model, batch_size, len(sample))
    rows = []
    for preset in candidates:
        mean, var = _activation_moments(run, sample, preset, axis, batch_size, mm)
        if mean.shape != mm.shape:
            return Fingerprint(None, path, (
                f"The activations reaching '{path}' have {mean.size} channels but the layer stores {mm.size}; "
                "the fingerprint cannot compare them."), len(sample), time.perf_counter() - t0)
        va, vb = var + eps, mv + eps
        kl = 0.5 * (va / vb + (mean - mm) ** 2 / vb - 1.0 + np.log(vb / va))
        rows.append({
            "preset": preset.name if isinstance(preset, CustomPreset) else preset,
            "distance": float(np.mean(kl)),
            "mean_shift": float(np.mean(np.abs(mean - mm) / np.sqrt(vb))),
            "std_ratio": float(np.median(np.sqrt(va / vb))),
        })
    ranking = pd.DataFrame(rows)
    # Distances equal to 6 significant digits are ties; a tie goes to the named preset.
    ranking["_d"] = [float(f"{d:.6g}") for d in ranking["distance"]]
    ranking["_custom"] = [isinstance(p, CustomPreset) for p in candidates]
    ranking = ranking.sort_values(["_d", "_custom"], kind="mergesort").reset_index(drop=True)
    ranking.insert(0, "rank", np.arange(1, len(ranking) + 1))
    ranking["is_best"] = ranking["rank"] == 1
    return Fingerprint(ranking[FINGERPRINT_COLUMNS], path, None, len(sample), time.perf_counter() - t0)


def _activation_moments(run, sample: np.ndarray, preset, axis: int, batch_size: int, shift: np.ndarray):
    """Per-channel mean and variance (float64) of the activations, combined over batches.

    The reductions run in the backend (multi-threaded) on activations shifted by
    `shift` (the layer's moving mean), which keeps the float32 sums accurate
    where it matters: for presets whose statistics are close to the layer's.
    """
    import keras

    ops = keras.ops
    count, s1, s2 = 0, 0.0, 0.0
    for i in range(0, len(sample), batch_size):
        a = ops.cast(run(apply_preset(sample[i:i + batch_size], preset)), "float32")  # mixed precision too
        ndim = len(a.shape)
        ax = axis % ndim
        axes = tuple(k for k in range(ndim) if k != ax)
        shape = [1] * ndim
        shape[ax] = -1
        d = a - ops.convert_to_tensor(shift.reshape(shape).astype(np.float32))
        n_b = int(np.prod([a.shape[k] for k in axes]))
        s1 = s1 + keras.ops.convert_to_numpy(ops.mean(d, axis=axes)).astype(np.float64) * n_b
        s2 = s2 + keras.ops.convert_to_numpy(ops.mean(ops.square(d), axis=axes)).astype(np.float64) * n_b
        count += n_b
    m1, m2 = s1 / count, s2 / count
    return m1 + shift, np.maximum(m2 - m1 ** 2, 0.0)
