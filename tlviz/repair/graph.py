"""Model surgery for the repairs, with public Keras APIs only: the model's config is edited and built again.

- `copy_model(model)`: an independent copy (same architecture, weights, ``trainable`` flags).
- `prepend_layers(model, layers)`: a copy that runs `layers` on the input before the model's own first
  layer, in the same graph (no nested model), so the file stays a plain Keras model.
- `remove_layers(model, paths)`: a copy without single-input layers (e.g. the input's Rescaling), at
  any nesting depth; each one's consumers read its input instead.
- `output_dense(model)`: the last `Dense` layer, when only element-wise layers (activations,
  dropout) lie between it and the output, so permuting its units permutes the model's outputs.
- `leaf(model, path)`: a layer by its `tlviz.layers.iter_leaves` path.

Every copy gets the weights of the original layer by layer (matched by path), so a removed or added
layer never shifts the weights of the others.
"""

from __future__ import annotations

import copy

from tlviz.errors import RepairRefused
from tlviz.kerasinternals import input_tensors_of, tensor_history
from tlviz.layers import iter_leaves, unique_name

#: Layers whose output unit i depends on input unit i alone, the same way for every unit: permuting the
#: units of the layer before them permutes their output the same way.
ELEMENTWISE = ("Activation", "Softmax", "ReLU", "LeakyReLU", "ELU", "Dropout", "AlphaDropout",
               "GaussianDropout", "GaussianNoise", "Identity")


def _is_model(layer) -> bool:
    import keras

    return isinstance(layer, keras.Model)


def _build(model, config):
    """The model of `config` (a `get_config` of `model`, edited), with `model`'s compile settings."""
    import keras

    if isinstance(model, keras.Sequential):
        new = keras.Sequential.from_config(config)
    else:
        new = keras.Model.from_config(config)
    return new


def _copy_weights(src, dst) -> None:
    """Give every leaf of `dst` the weights of the leaf of `src` at the same path (when it has one)."""
    by_path = {leaf.path: leaf.layer for leaf in iter_leaves(src)}
    for leaf in iter_leaves(dst):
        old = by_path.get(leaf.path)
        if old is not None and old.weights and type(old) is type(leaf.layer):
            leaf.layer.set_weights(old.get_weights())


def _copy_flags(src, dst) -> None:
    """`dst`'s ``trainable`` flags as `src`'s: containers first (setting one sets every layer inside), then leaves."""

    def containers(m, prefix=""):
        yield prefix, m
        for layer in m.layers:
            if _is_model(layer):
                yield from containers(layer, f"{prefix}{layer.name}/")

    dst_models = dict(containers(dst))
    for path, m in containers(src):
        if path in dst_models:
            dst_models[path].trainable = m.trainable
    flags = {leaf.path: leaf.layer.trainable for leaf in iter_leaves(src)}
    for leaf in iter_leaves(dst):
        if leaf.path in flags:
            leaf.layer.trainable = flags[leaf.path]


def _finish(src, dst):
    _copy_weights(src, dst)
    _copy_flags(src, dst)
    return dst


def copy_model(model):
    """An independent copy of `model`: same architecture, weights and ``trainable`` flags.

    Args:
        model: a Keras Functional or Sequential model (only read).

    Returns:
        The copy.

    Raises:
        RepairRefused: the model cannot be rebuilt from its config (a subclassed model).
    """
    try:
        return _finish(model, _build(model, model.get_config()))
    except RepairRefused:
        raise
    except Exception as exc:
        raise _unbuildable(model, exc) from None


def _unbuildable(model, exc) -> RepairRefused:
    return RepairRefused(f"The model '{model.name}' cannot be rebuilt from its configuration "
                         f"({type(exc).__name__}: {str(exc)[:200]}), so tlviz cannot make a repaired copy. Repairs "
                         "need a Functional or Sequential Keras model.")


def _tensor(name: str, shape, dtype: str = "float32") -> dict:
    """A reference to output 0 of layer `name` in a Functional config's ``inbound_nodes``."""
    return {"class_name": "__keras_tensor__",
            "config": {"shape": list(shape), "dtype": dtype, "keras_history": [name, 0, 0]}}


def _rewire(obj, old: list, new: list):
    """`obj` (a node's args / kwargs) with every reference to tensor `old` pointing to tensor `new`."""
    if isinstance(obj, dict):
        if obj.get("class_name") == "__keras_tensor__":
            hist = obj.get("config", {}).get("keras_history")
            if hist is not None and list(hist) == list(old):
                out = copy.deepcopy(obj)
                out["config"]["keras_history"] = list(new)
                return out
            return obj
        return {k: _rewire(v, old, new) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(_rewire(v, old, new) for v in obj)
    return obj


def _input_name(config) -> str:
    ref = config["input_layers"]
    while isinstance(ref, list) and ref and isinstance(ref[0], list):
        if len(ref) != 1:
            raise RepairRefused("The model has several inputs; repairs handle models with one image input.")
        ref = ref[0]
    return ref[0]


def prepend_layers(model, layers: list):
    """A copy of `model` that runs `layers` (new Keras layers, in order) on its input first.

    The layers join the model's own graph (a Sequential model's list, or a Functional model's layers
    right after its input), so the result stays one flat, plain Keras model. Layer names already in
    use get a numeric suffix.

    Args:
        model: a Keras Functional or Sequential model with one input (only read).
        layers: unbuilt layers that keep the input's shape (e.g. `keras.layers.Rescaling`).

    Returns:
        The new model, with the original's weights and ``trainable`` flags.

    Raises:
        RepairRefused: the model cannot be rebuilt from its config.
    """
    import keras

    try:
        config = model.get_config()
        taken = {layer.name for layer in model.layers}
        entries = []
        for layer in layers:
            layer.name = unique_name(layer.name, taken)  # unbuilt: the name may still change
            entries.append({**keras.saving.serialize_keras_object(layer), "name": layer.name})
        if isinstance(model, keras.Sequential):
            listed = config["layers"]
            start = 1 if listed and listed[0].get("class_name") == "InputLayer" else 0
            config["layers"] = listed[:start] + entries + listed[start:]
        else:
            source = _input_name(config)
            shape = list(model.inputs[0].shape)
            dtype = str(model.inputs[0].dtype)
            previous = source
            for entry in entries:
                entry["inbound_nodes"] = [{"args": [_tensor(previous, shape, dtype)], "kwargs": {}}]
                previous, dtype = entry["name"], "float32"
            listed = []
            for entry in config["layers"]:
                if entry["name"] != source:
                    entry = {**entry, "inbound_nodes": _rewire(entry.get("inbound_nodes", []), [source, 0, 0],
                                                              [previous, 0, 0])}
                listed.append(entry)
            at = next(i for i, e in enumerate(listed) if e["name"] == source) + 1
            config["layers"] = listed[:at] + entries + listed[at:]
        return _finish(model, _build(model, config))
    except RepairRefused:
        raise
    except Exception as exc:
        raise _unbuildable(model, exc) from None


def _drop(config: dict, path: list[str], sequential: bool) -> None:
    """Remove the layer at `path` (names, outermost first) from `config` in place."""
    listed = config["layers"]
    head = path[0]
    index = next((i for i, e in enumerate(listed) if e.get("name", e.get("config", {}).get("name")) == head), None)
    if index is None:
        raise RepairRefused(f"Layer '{'/'.join(path)}' was not found in the model's configuration.")
    entry = listed[index]
    if len(path) > 1:
        inner = entry["config"]
        _drop(inner, path[1:], entry.get("class_name") == "Sequential")
        return
    if sequential:
        del listed[index]
        return
    nodes = entry.get("inbound_nodes") or []
    if len(nodes) != 1 or len(nodes[0].get("args", [])) != 1:
        raise RepairRefused(f"Layer '{head}' is called more than once or on several inputs; tlviz removes only "
                            "layers with one input.")
    source = nodes[0]["args"][0]["config"]["keras_history"]
    del listed[index]
    for i, e in enumerate(listed):
        listed[i] = {**e, "inbound_nodes": _rewire(e.get("inbound_nodes", []), [head, 0, 0], list(source))}
    for key in ("output_layers",):
        refs = config.get(key)
        if refs is not None and str(head) in str(refs):
            raise RepairRefused(f"Layer '{head}' is the model's output; it cannot be removed.")


def remove_layers(model, paths: list[str]):
    """A copy of `model` without the layers at `paths` (`tlviz.layers.iter_leaves` paths, ``/`` between models).

    Each removed layer must take one input and keep its shape (Rescaling, Normalization); the layers
    that read its output read its input instead.

    Args:
        model: a Keras Functional or Sequential model (only read).
        paths: the layers to remove.

    Returns:
        The new model, with the original's weights and ``trainable`` flags.

    Raises:
        RepairRefused: a layer is not found, is called more than once, or the model cannot be rebuilt.
    """
    import keras

    try:
        config = model.get_config()
        for p in paths:
            _drop(config, p.split("/"), isinstance(model, keras.Sequential))
        return _finish(model, _build(model, config))
    except RepairRefused:
        raise
    except Exception as exc:
        raise _unbuildable(model, exc) from None


def leaf(model, path: str):
    """The layer of `model` at `path` (an `iter_leaves` path), or None."""
    return next((x.layer for x in iter_leaves(model) if x.path == path), None)


def output_dense(model) -> tuple[str, list]:
    """The path of the `Dense` layer whose units are the model's outputs, and the layers after it.

    Walks back from the model's first output through element-wise layers (`ELEMENTWISE`) and into
    nested models.

    Args:
        model: a Keras model.

    Returns:
        ``(path, after)``: the Dense layer's `iter_leaves` path and the element-wise layers between
        it and the output (output first).

    Raises:
        RepairRefused: the output is not computed by a Dense layer followed only by element-wise layers.
    """
    after: list = []
    tensor, prefix = model.outputs[0], ""
    for _ in range(1000):
        layer, node_index, tensor_index = tensor_history(tensor)
        if layer is None:
            break
        cls = type(layer).__name__
        if _is_model(layer):
            prefix += layer.name + "/"
            tensor = layer.outputs[tensor_index]
            continue
        if cls == "Dense":
            return prefix + layer.name, after
        if cls not in ELEMENTWISE:
            break
        after.append(layer)
        inputs = input_tensors_of(layer, node_index)
        if len(inputs) != 1:
            break
        tensor = inputs[0]
    raise RepairRefused("The model's output is not computed by a Dense layer followed only by activations or "
                        "dropout, so its class order cannot be changed by re-ordering that layer's units. Re-order "
                        "the class names in your inference code instead (the finding lists them).")
