"""Keras 2 `.h5` files, translated for Keras 3 as data.

Keras 3 cannot open most `.h5` files written by Keras 2 (tf.keras 2.x, the ``tf_keras``
package, Teachable Machine exports): their architecture JSON spells several things the
Keras 2 way. This module rewrites those spellings in the JSON (never by running anything
from the file); `tlviz.models.h5` then builds the model from the rewritten architecture with
Keras's own built-in layers and copies the weights in layer by layer.

What is rewritten (each rule counted, so the overview can say what was done):

- ``groups: 1`` dropped from depthwise / separable convolutions (Keras 3 has no such argument);
- a one-element BatchNormalization ``axis`` list (``[3]``) becomes the integer;
- ``batch_input_shape`` on input layers becomes ``batch_shape``;
- a nested model's calls are renumbered (Keras 2 counts the node that built a nested model,
  Keras 3 does not), ``Model`` becomes ``Functional``, and one-tensor input / output lists are
  unwrapped;
- Keras 2 module paths (``tf_keras.src.engine.functional`` ...) are dropped so that only
  Keras 3's own built-in classes can be named;
- dtype policy objects (``Policy('mixed_float16')``) become their name;
- initializer spellings: ``distribution: 'normal'`` (truncated in Keras 2) and a ``dtype``
  argument;
- Keras 2 preprocessing-layer arguments without a Keras 3 counterpart (``rng_type``,
  ``force_generator``, ``fused``) that change nothing at inference;
- tensor arithmetic with a constant saved as ``TFOpLambda`` layers (``x / 127.5 - 1`` in the
  keras-io transfer-learning guide) becomes built-in ``Rescaling`` layers.

Anything else the file names that Keras 3 does not have is refused with the layer's name:
the strictness of `tlviz.models.safety.check_config` (no Lambda, no custom or foreign-module
layers) applies to the translated architecture as well as to the original.

Public API:

- `keras_version(attrs)` / `needs_translation(version)`;
- `translate(config)` -> ``(config, Translation)``;
- `Translation`: ``notes`` (rule -> count), ``summary()``, ``to_json()``.

Building the model and copying the weights: `tlviz.models.h5.load_h5`.
"""

from __future__ import annotations

import copy
from collections import Counter
from dataclasses import dataclass, field

from tlviz.errors import ModelRefused

#: Classes that hold other layers (a nested model in a Keras 2 architecture).
_MODEL_CLASSES = ("Functional", "Model", "Sequential")

#: Layers that had a ``groups`` argument in Keras 2 (inherited from ``Conv``) but not in Keras 3.
_NO_GROUPS = ("DepthwiseConv1D", "DepthwiseConv2D", "SeparableConv1D", "SeparableConv2D")

#: Keras 2 arguments with no Keras 3 counterpart that do not change what a layer computes.
_INERT_ARGS = {"rng_type", "force_generator", "fused"}

#: Arguments Keras 2 wrote for these layers (inherited from ``Conv``) without using them.
_UNUSED_ARGS = {cls: ("kernel_initializer", "kernel_regularizer", "kernel_constraint")
                for cls in ("SeparableConv1D", "SeparableConv2D")}

#: Keras 2 classes that wrap TensorFlow functions; only constant arithmetic is translatable.
_TF_OP_CLASSES = ("TFOpLambda", "SlicingOpLambda", "ClassMethod", "InstanceMethod", "InstanceProperty",
                  "TFClassMethodDispatcher")

#: TFOpLambda functions that are ``x (op) constant``: how each becomes ``Rescaling(scale, offset)``.
_ARITHMETIC = {
    "math.truediv": lambda c: (1.0 / c, 0.0),
    "math.divide": lambda c: (1.0 / c, 0.0),
    "math.multiply": lambda c: (c, 0.0),
    "__operators__.add": lambda c: (1.0, c),
    "math.add": lambda c: (1.0, c),
    "math.subtract": lambda c: (1.0, -c),
}

#: Human wording of each rule, for `Translation.summary`. ``{n}`` is the count.
NOTE_TEXT = {
    "groups": "{n} `{cls}` layer(s) dropped `groups: 1`",
    "bn_axis": "{n} BatchNormalization layer(s) had a list `axis` turned into a number",
    "batch_input_shape": "{n} input layer(s) had `batch_input_shape` renamed `batch_shape`",
    "layer_input_shape": "{n} layer(s) lost a `batch_input_shape` argument (the model's input layer holds the "
                         "shape)",
    "nested": "{n} nested model(s) had their calls renumbered for Keras 3",
    "io_unwrap": "{n} one-tensor input/output list(s) unwrapped",
    "dtype_policy": "{n} dtype policy object(s) written as their name",
    "initializer": "{n} initializer(s) respelled (Keras 2 `distribution: normal`, `dtype`)",
    "inert": "{n} Keras 2-only argument(s) without effect dropped (`rng_type`, `force_generator`, `fused`, "
             "a separable convolution's unused `kernel_*`)",
    "tfop": "{n} TensorFlow arithmetic op(s) (such as `x / 127.5 - 1`) rebuilt as `Rescaling` layers",
    "module": "{n} Keras 2 module path(s) dropped (only Keras 3's built-in classes are used)",
}


@dataclass
class Translation:
    """What `translate` changed, rule by rule.

    Attributes:
        notes: ``Counter`` of rule id (a key of `NOTE_TEXT`, ``groups:<class>`` per layer class)
            -> how many places it changed.
        keras_version: the Keras version that wrote the file (``"2.4.0"``), or ``""``.
        weights_by: ``"name"`` when every weight was matched by its layer and variable name,
            ``"order"`` when some top-level layer's weights were matched by order and shape
            (what Keras itself does).
    """

    notes: Counter = field(default_factory=Counter)
    keras_version: str = ""
    weights_by: str = "name"

    def summary(self) -> str:
        """One sentence, e.g. "Converted from a Keras 2.4.0 `.h5`: 17 depthwise ... ."."""
        version = f"Keras {self.keras_version}" if self.keras_version else "Keras 2"
        order = list(NOTE_TEXT)
        keys = sorted((k for k, n in self.notes.items() if n and k.split(":")[0] in NOTE_TEXT),
                      key=lambda k: (order.index(k.split(":")[0]), k))
        parts = [NOTE_TEXT[k.split(":")[0]].format(n=self.notes[k], cls=k.partition(":")[2]) for k in keys]
        head = f"Converted from a {version} `.h5`"
        return head + (": " + "; ".join(parts) + "." if parts else " (nothing needed rewriting).")

    def to_json(self) -> dict:
        return {"keras_version": self.keras_version, "notes": {k: n for k, n in self.notes.items() if n},
                "weights_by": self.weights_by,
                "summary": self.summary()}


def keras_version(attrs) -> str:
    """The Keras version that wrote an `.h5` file.

    Args:
        attrs: the file's root attributes (``h5py.File(...).attrs``), or None.

    Returns:
        Its ``keras_version`` attribute as text (``"2.4.0"``), ``""`` when absent.
    """
    v = attrs.get("keras_version") if attrs is not None else None
    if isinstance(v, bytes):
        v = v.decode("utf-8", errors="replace")
    return str(v) if v is not None else ""


def needs_translation(version: str) -> bool:
    """Whether an `.h5` written by Keras `version` goes through the translator.

    Args:
        version: the file's ``keras_version`` (`keras_version`).

    Returns:
        True for anything but a 3.x version (an empty version included).
    """
    return not version.strip().startswith("3")


# -- the architecture --------------------------------------------------------------------------


def translate(config: dict) -> tuple[dict, Translation]:
    """Rewrite a Keras 2 architecture (the `.h5` ``model_config``) for Keras 3.

    Args:
        config: the parsed ``model_config`` (not modified).

    Returns:
        ``(new_config, translation)``: a config `keras.saving.deserialize_keras_object` builds
        with Keras 3's built-in classes, and what was changed.

    Raises:
        ModelRefused: a layer Keras 3 has no counterpart for (named in the message).
    """
    out = copy.deepcopy(config)
    t = Translation()
    _rewrite_layer(out, t, top=True)
    cls = out.get("class_name")
    if cls == "Sequential":
        out["module"] = "keras"
    elif cls == "Functional":
        out["module"] = "keras.src.models.functional"
    return out, t


def _rewrite_layer(layer: dict, t: Translation, top: bool = False) -> None:
    if not isinstance(layer, dict):
        return
    for key in ("module", "registered_name"):
        if key in layer:
            if key == "module" and layer[key]:
                t.notes["module"] += 1
            del layer[key]
    layer.pop("build_config", None)
    layer.pop("compile_config", None)
    cls = layer.get("class_name")
    cfg = layer.get("config")
    if cls == "Model":
        layer["class_name"] = cls = "Functional"
    if not isinstance(cfg, dict):
        return
    if cls in _MODEL_CLASSES:
        _rewrite_model(layer, cfg, t)
        _rewrite_args(cfg, t, cls)
        return
    if cls in _TF_OP_CLASSES:
        return  # handled by the model that holds it (it needs the layer's call arguments)
    _rewrite_args(cfg, t, cls)


def _rewrite_args(cfg: dict, t: Translation, cls: str) -> None:
    if cls in _NO_GROUPS and "groups" in cfg:
        if cfg["groups"] not in (1, None):
            raise ModelRefused(f"layer '{cfg.get('name')}' ({cls}) has `groups: {cfg['groups']}`, which Keras 3 "
                               "cannot express.")
        del cfg["groups"]
        t.notes[f"groups:{cls}"] += 1
    if cls == "BatchNormalization" and isinstance(cfg.get("axis"), list):
        if len(cfg["axis"]) != 1:
            raise ModelRefused(f"layer '{cfg.get('name')}' normalizes over the axes {cfg['axis']}; Keras 3's "
                               "BatchNormalization takes one axis.")
        cfg["axis"] = cfg["axis"][0]
        t.notes["bn_axis"] += 1
    if cls == "BatchNormalization":
        for extra in ("virtual_batch_size", "adjustment"):
            if cfg.get(extra) is not None:
                raise ModelRefused(f"layer '{cfg.get('name')}' uses BatchNormalization's `{extra}`, which Keras 3 "
                                   "does not have.")
            cfg.pop(extra, None)
    if cls == "InputLayer" and "batch_input_shape" in cfg:
        cfg["batch_shape"] = cfg.pop("batch_input_shape")
        t.notes["batch_input_shape"] += 1
    elif "batch_input_shape" in cfg:  # `Dense(..., input_shape=...)` in a Sequential: its InputLayer has it
        del cfg["batch_input_shape"]
        t.notes["layer_input_shape"] += 1
    for key in list(cfg):
        if key in _INERT_ARGS or key in _UNUSED_ARGS.get(cls, ()):
            del cfg[key]
            t.notes["inert"] += 1
    if isinstance(cfg.get("dtype"), dict):
        policy = cfg["dtype"]
        name = (policy.get("config") or {}).get("name") if isinstance(policy.get("config"), dict) else None
        if not isinstance(name, str):
            raise ModelRefused(f"layer '{cfg.get('name')}' has a dtype policy without a name.")
        cfg["dtype"] = name
        t.notes["dtype_policy"] += 1
    for key, value in cfg.items():
        if key.endswith("_initializer") and isinstance(value, dict):
            _rewrite_initializer(value, t)
        elif key.endswith(("_regularizer", "_constraint")) and isinstance(value, dict):
            for k in ("module", "registered_name"):
                if value.pop(k, None):
                    t.notes["module"] += 1


def _rewrite_initializer(init: dict, t: Translation) -> None:
    for k in ("module", "registered_name"):
        if init.pop(k, None):
            t.notes["module"] += 1
    cfg = init.get("config")
    if not isinstance(cfg, dict):
        return
    changed = False
    if "dtype" in cfg:
        del cfg["dtype"]
        changed = True
    if cfg.get("distribution") == "normal":  # Keras 2 meant a truncated normal
        cfg["distribution"] = "truncated_normal"
        changed = True
    if changed:
        t.notes["initializer"] += 1


def _nested_skips_first_node(layer: dict) -> bool:
    """Keras 2 numbered a nested model's calls from 1 (node 0 built the model itself).

    True for functional models, and for Sequential models built with an input shape
    (their first entry is an InputLayer); a Sequential without one had no such node.
    """
    cls = layer.get("class_name")
    if cls in ("Functional", "Model"):
        return True
    if cls == "Sequential":
        inner = (layer.get("config") or {}).get("layers") or []
        return bool(inner) and isinstance(inner[0], dict) and inner[0].get("class_name") == "InputLayer"
    return False


def _rewrite_model(layer: dict, cfg: dict, t: Translation) -> None:
    layers = cfg.get("layers")
    if not isinstance(layers, list):
        return
    nested = {(item_name(item)): _nested_skips_first_node(item) for item in layers if isinstance(item, dict)}
    shifted = {name for name, skip in nested.items() if skip}
    sequential_targets = {item_name(item) for item in layers
                          if isinstance(item, dict) and item.get("class_name") == "Sequential"
                          and item_name(item) in shifted}
    if layer.get("class_name") == "Functional":
        for item in layers:
            if isinstance(item, dict):
                item["inbound_nodes"] = [_shift_node(node, shifted) for node in item.get("inbound_nodes") or []]
        renumbered = sum(1 for item in layers if isinstance(item, dict) and item_name(item) in shifted)
        if renumbered:
            t.notes["nested"] += renumbered
        for key in ("input_layers", "output_layers"):
            value = cfg.get(key)
            # Keras 3 itself subtracts 1 for nested functional models here, not for Sequential ones.
            if isinstance(value, list):
                value = [_shift_ref(v, sequential_targets) for v in value] if _is_ref_list(value) else value
                if _is_ref_list(value) and len(value) == 1:
                    value = value[0]
                    t.notes["io_unwrap"] += 1
                cfg[key] = value
        _translate_tf_ops(cfg, t)
    for item in layers:
        _rewrite_layer(item, t)
        if isinstance(item, dict) and item.get("class_name") in _TF_OP_CLASSES:
            raise ModelRefused(_tf_op_message(item))


def _is_ref_list(value) -> bool:
    return isinstance(value, list) and all(isinstance(v, list) and len(v) == 3 and isinstance(v[0], str) for v in value)


def _shift_ref(ref: list, names: set) -> list:
    return [ref[0], ref[1] - 1, ref[2]] if ref[0] in names and isinstance(ref[1], int) and ref[1] > 0 else ref


def _shift_entry(e, names: set):
    if isinstance(e, list) and len(e) >= 3 and e[0] in names and isinstance(e[1], int) and e[1] > 0:
        return [e[0], e[1] - 1, *e[2:]]
    return e


def _shift_node(node, names: set):
    """Renumber one Keras 2 node: a list of ``[layer, node index, tensor index, kwargs]`` entries, or
    (a TensorFlow op's call) one such entry on its own."""
    if isinstance(node, list) and node and isinstance(node[0], str):
        return _shift_entry(node, names)
    if isinstance(node, list):
        return [_shift_entry(e, names) for e in node]
    return node


def item_name(item: dict) -> str:
    """The name of a layer in a saved model config (its ``name``, else its config's), or ``"?"``."""
    cfg = item.get("config")
    name = item.get("name") or (cfg.get("name") if isinstance(cfg, dict) else None)
    return str(name) if name is not None else "?"


def _translate_tf_ops(cfg: dict, t: Translation) -> None:
    """Replace ``TFOpLambda`` layers computing ``x (op) constant`` by ``Rescaling`` layers."""
    for item in cfg.get("layers") or []:
        if not isinstance(item, dict) or item.get("class_name") != "TFOpLambda":
            continue
        inner = item.get("config") or {}
        func = inner.get("function")
        nodes = item.get("inbound_nodes") or []
        if func not in _ARITHMETIC or len(nodes) != 1 or not isinstance(nodes[0], list) or not nodes[0]:
            continue
        # Keras 2 writes a TF op's call as [layer, node, tensor, kwargs], or wrapped in one more list.
        entry = nodes[0] if isinstance(nodes[0][0], str) else (nodes[0][0] if len(nodes[0]) == 1 else None)
        if not isinstance(entry, list) or not entry or not isinstance(entry[0], str):
            continue
        kwargs = entry[3] if isinstance(entry, list) and len(entry) == 4 and isinstance(entry[3], dict) else None
        if kwargs is None or set(kwargs) - {"y", "name"} or not _is_number(kwargs.get("y")):
            continue
        if func in ("math.truediv", "math.divide") and float(kwargs["y"]) == 0.0:
            continue
        scale, offset = _ARITHMETIC[func](float(kwargs["y"]))
        item["class_name"] = "Rescaling"
        item["config"] = {"name": inner.get("name") or item_name(item), "trainable": bool(inner.get("trainable", True)),
                          "dtype": inner.get("dtype") if isinstance(inner.get("dtype"), str) else "float32",
                          "scale": scale, "offset": offset}
        item["inbound_nodes"] = [[[entry[0], entry[1], entry[2], {}]]]
        t.notes["tfop"] += 1


def _is_number(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _tf_op_message(item: dict) -> str:
    inner = item.get("config") or {}
    func = inner.get("function") or item.get("class_name")
    return (f"layer '{item_name(item)}' is a TensorFlow operation (`tf.{func}`) that Keras 2 saved inside the model. "
            "Keras 3 cannot rebuild TensorFlow operations; tlviz translates only arithmetic with a constant "
            "(such as `x / 127.5 - 1`). Replace the operation with a built-in layer (for example `Rescaling`) in "
            "the code that builds the model, or move it into your input pipeline, and save the model again")
