"""The private copies of a model that the checks run, so the loaded (shared) model is never changed.

- `clone_for_training_mode(model, noise=True, force_bn_batch_statistics=False, honour_training=True)`:
  same weights and `trainable` flags, to call with ``training=True`` (which
  overwrites BatchNormalization statistics in place); a nested model the graph
  calls with a fixed ``training`` keeps it (`tlviz.callargs`).
- `fresh_clone(model, seed)`: the same architecture with fresh, seeded random
  weights (the pre-training probe's reference).
"""

from __future__ import annotations

import functools
import itertools

from tlviz.callargs import honour_recorded_training
from tlviz.diagnose.base import SEED
from tlviz.errors import CheckSkipped
from tlviz.layers import BN_CLASSES, iter_leaves, random_in_training


def describe_layer(path: str, layer) -> str:
    """A layer that acts differently in training, named for a finding: its path, class and rate or stddev.

    Args:
        path: the layer's path in the model (`tlviz.layers.iter_leaves`).
        layer: the layer.

    Returns:
        For example ``"head/dropout (Dropout rate=0.5)"``.
    """
    cls = type(layer).__name__
    for attr in ("rate", "stddev"):
        if getattr(layer, attr, None) is not None:
            return f"{path} ({cls} {attr}={float(getattr(layer, attr)):g})"
    return f"{path} ({cls})"


@functools.lru_cache(maxsize=1)
def _inference_only_class():
    """A wrapper layer that always calls its inner layer with ``training=False``."""
    import keras

    class InferenceOnly(keras.layers.Layer):
        def __init__(self, inner, **kwargs):
            super().__init__(**kwargs)
            self.inner = inner

        def call(self, x, training=None):
            return self.inner(x, training=False)

        def compute_output_shape(self, input_shape):
            return self.inner.compute_output_shape(input_shape)

    return InferenceOnly


def _copy_trainable(src, dst) -> None:
    """Give `dst` (a clone) the `trainable` flags of `src`, containers first."""
    import keras

    dst.trainable = src.trainable
    for a, b in zip(src.layers, dst.layers):
        if isinstance(a, keras.Model) and isinstance(b, keras.Model):
            _copy_trainable(a, b)
        else:
            b.trainable = a.trainable


def clone_for_training_mode(model, noise: bool = True, force_bn_batch_statistics: bool = False,
                            honour_training: bool = True):
    """A private copy of `model` (same weights, same `trainable` flags) to run with ``training=True``.

    Calling a model with ``training=True`` updates its BatchNormalization moving
    statistics in place, so tlviz never does that on the loaded (shared) model.

    Args:
        model: a Keras Functional or Sequential model.
        noise: keep Dropout / noise / augmentation layers active in training
            mode. Defaults to `True`; with `False` they always run as in inference.
        force_bn_batch_statistics: make every BatchNormalization layer trainable
            in the copy, so that it uses batch statistics in training mode (a
            frozen BN layer always uses its moving statistics). Defaults to `False`.
        honour_training: run the copy as the model is written: a nested model
            called with ``training=False`` (the keras-io guide's
            ``base(inputs, training=False)``) stays in inference mode under
            ``training=True`` (`tlviz.callargs.honour_recorded_training`; Keras 3
            alone would switch it). Defaults to `True`; `False` for a measurement
            that needs every layer in training mode.

    Returns:
        The copy.

    Raises:
        CheckSkipped: the model cannot be cloned (e.g. a subclassed model).
    """
    import keras

    wrapper = _inference_only_class()

    def clone_layer(layer):
        config = layer.get_config()
        if "seed" in config and config["seed"] is None:
            config = {**config, "seed": SEED}  # reproducible dropout / noise
        new = layer.__class__.from_config(config)
        if not noise and random_in_training(layer):
            return wrapper(new, name=layer.name)
        return new

    try:
        clone = keras.models.clone_model(model, clone_function=clone_layer, recursive=True)
        clone.set_weights(model.get_weights())
    except Exception as exc:  # subclassed models, exotic layers
        raise CheckSkipped(f"The model could not be copied to run it safely in training mode "
                           f"({type(exc).__name__}: {str(exc)[:160]}); tlviz never runs the loaded model itself "
                           "in training mode because that would change its BatchNormalization statistics.") from None
    _copy_trainable(model, clone)
    if honour_training:
        honour_recorded_training(clone)
    if force_bn_batch_statistics:
        for leaf in iter_leaves(clone):
            if type(leaf.layer).__name__ in BN_CLASSES:
                leaf.layer.trainable = True
    return clone


def fresh_clone(model, seed: int = SEED):
    """The same architecture with fresh, seeded random weights (nested models included).

    Args:
        model: a Keras Functional or Sequential model.
        seed: seeds every initializer (layer by layer), so the result is
            reproducible. Defaults to `SEED`.

    Returns:
        A new model; `model` is not changed.
    """
    import keras

    counter = itertools.count()

    def seeded(cfg):
        if isinstance(cfg, dict):
            inner = cfg.get("config")
            if isinstance(inner, dict) and "seed" in inner and cfg.get("module", "").startswith("keras"):
                inner = {**inner, "seed": seed * 1000 + next(counter)}
                return {**cfg, "config": inner}
        return cfg

    def clone_layer(layer):
        config = {k: (seeded(v) if k.endswith("_initializer") else v) for k, v in layer.get_config().items()}
        return layer.__class__.from_config(config)

    return keras.models.clone_model(model, clone_function=clone_layer, recursive=True)


def bn_mean_shift(model, clone, paths: set[str]) -> float | None:
    """How far a training-mode pass moved BatchNormalization moving means, in stored standard deviations.

    Args:
        model: the original model (its statistics as stored).
        clone: its `clone_for_training_mode` copy after the pass.
        paths: the BatchNormalization layers to compare (paths as `iter_leaves` gives them).

    Returns:
        The mean over those layers and channels of ``|mean_after - mean_before| / sqrt(variance_before)``;
        None when none of `paths` is in the model.
    """
    import keras
    import numpy as np

    originals = {leaf.path: leaf.layer for leaf in iter_leaves(model)}
    shifts = []
    for leaf in iter_leaves(clone):
        if leaf.path in paths:
            old = originals[leaf.path]
            m0 = keras.ops.convert_to_numpy(old.moving_mean)
            v0 = keras.ops.convert_to_numpy(old.moving_variance)
            m1 = keras.ops.convert_to_numpy(leaf.layer.moving_mean)
            shifts.append(float(np.mean(np.abs(m1 - m0) / np.sqrt(v0 + 1e-3))))
    return float(np.mean(shifts)) if shifts else None
