"""Keras call arguments recorded in a model: which nested models are called with a fixed ``training``.

The keras-io transfer-learning guide calls the base as ``base(inputs, training=False)`` so that its
BatchNormalization layers stay in inference mode even after ``base.trainable = True``. The
functional graph records that argument (the node's call kwargs; the saved config's
``inbound_nodes``), so tlviz reads it instead of guessing.

Keras 3 itself does not keep it: when the outer model is called with ``training=True`` (as
``fit`` does), `keras.src.models.functional` passes that value to every layer that takes
``training``, the pinned nested model included (verified with Keras 3.15, for Keras 3's own
models: a plain ``fit`` of the guide's model updates the pinned base's moving statistics).
`honour_recorded_training` makes a model behave as it was written: a nested model called with a
constant ``training`` keeps it whatever the outer call says, and the layers inside a model pinned
to ``training=False`` run in inference mode even in a graph that calls them directly (the
flattened graph the fine-tuning activation cache trains).

Public API:

- `recorded_training(model)` -> ``{path: bool}`` for nested models called with a constant ``training``;
- `honour_recorded_training(model)` -> the paths it pinned (idempotent; apply to every clone);
- `inference_only_paths(model)` -> paths of layers that always run in inference mode because a
  model around them is pinned to ``training=False``;
- `keras_honours_recorded_training()` -> whether the installed Keras keeps a recorded
  ``training=False`` when the outer call says ``training=True`` (measured once per process).
"""

from __future__ import annotations

import functools


def _is_model(layer) -> bool:
    import keras

    return isinstance(layer, keras.Model)


def _fixed_value(layer):
    """The constant ``training`` value of every call of `layer` in its graph, or None."""
    values = set()
    for node in getattr(layer, "_inbound_nodes", []) or []:
        arguments = getattr(node, "arguments", None)
        kwargs = getattr(arguments, "kwargs", None) or {}
        value = kwargs.get("training", None)
        if not isinstance(value, bool):
            return None
        values.add(value)
    return values.pop() if len(values) == 1 else None


def _walk(model, prefix: str = ""):
    for layer in getattr(model, "layers", []):
        path = f"{prefix}{layer.name}"
        yield path, layer
        if _is_model(layer):
            yield from _walk(layer, path + "/")


def recorded_training(model) -> dict[str, bool]:
    """Nested models called with a constant ``training`` argument.

    Args:
        model: a Keras model.

    Returns:
        ``{path: value}``, e.g. ``{"mobilenetv2_1.00_224": False}``; paths use ``/`` between nesting
        levels, as in `tlviz.layers.layer_table`. Empty when no call fixes ``training``.
    """
    return {path: value for path, layer in _walk(model)
            if _is_model(layer) and (value := _fixed_value(layer)) is not None}


def honour_recorded_training(model) -> list[str]:
    """Make Keras respect the recorded ``training`` argument of pinned nested models.

    Keras 3 overrides a graph's recorded ``training=False`` with the outer call's value; this
    takes ``training`` out of the arguments Keras injects into those nested models, so their
    recorded value applies (also inside ``fit``). Every layer inside a model pinned to
    ``training=False`` is released the same way, so it runs in inference mode wherever it is
    called from (a layer called without ``training`` runs in inference mode), e.g. in a flattened
    copy of the graph that shares the layers. Apply it to every clone: Keras does not save it.

    Args:
        model: a Keras model (changed in place).

    Returns:
        The paths of the nested models pinned.
    """
    pinned = []
    inside = inference_only_paths(model)
    for path, layer in _walk(model):
        fixed = _is_model(layer) and _fixed_value(layer) is not None
        if fixed or path in inside:
            context = getattr(layer, "_call_context_args", None)
            if context is not None and "training" in context:
                layer._call_context_args = set(context) - {"training"}
        if fixed:
            pinned.append(path)
    return pinned


def inference_only_paths(model) -> set[str]:
    """Paths of layers inside a nested model pinned to ``training=False`` (they always run in inference mode).

    Args:
        model: a Keras model.

    Returns:
        Every layer path (at any depth) below a nested model whose calls all pass ``training=False``.
    """
    out: set[str] = set()
    pinned = [p for p, v in recorded_training(model).items() if v is False]
    for path, _layer in _walk(model):
        if any(path.startswith(p + "/") for p in pinned):
            out.add(path)
    return out


@functools.lru_cache(maxsize=1)
def keras_honours_recorded_training() -> bool:
    """Whether the installed Keras keeps a nested model's recorded ``training=False`` under ``training=True``.

    Measured, not assumed: a two-layer base with BatchNormalization (moving statistics far from
    the batch's) is called with ``training=False`` inside an outer model, and the outer model is
    run once with ``training=True`` and once with ``training=False``. tf.keras 2 kept the recorded
    value; Keras 3.15 does not (its functional graph passes the outer value in), so a user's own
    ``fit`` updates those BatchNormalization layers.

    Returns:
        True when both runs agree (the recorded argument wins).
    """
    import keras
    import numpy as np

    i = keras.Input((3,))
    bn = keras.layers.BatchNormalization()
    base = keras.Model(i, bn(i))
    bn.set_weights([np.ones(3), np.zeros(3), np.full(3, 4.0), np.full(3, 9.0)])
    j = keras.Input((3,))
    outer = keras.Model(j, base(j, training=False))
    x = np.linspace(-1.0, 1.0, 12, dtype="float32").reshape(4, 3)
    a = np.asarray(outer(x, training=True))
    b = np.asarray(outer(x, training=False))
    return bool(np.allclose(a, b, atol=1e-5))
