"""Keras 2 `.h5` files: the stored architecture read, the translated model built, the weights copied.

- `read_h5_config(data, filename)` — the ``model_config`` and the ``keras_version`` that wrote it.
- `load_h5(data, filename, config, version)` — the architecture translated (`tlviz.models.legacy`),
  checked again by `check_config`, built from Keras 3's built-in layers, and the weights copied
  layer by layer: by layer and variable name, else by order and shape as Keras 2 saved them.
"""

from __future__ import annotations

import io
import json
import re

from tlviz.errors import ModelRefused
from tlviz.models.legacy import keras_version, translate
from tlviz.models.messages import clean
from tlviz.models.safety import check_config


def read_h5_config(data: bytes, filename: str) -> tuple[dict, str]:
    """The model architecture stored in a Keras 2 ``.h5`` file, and the Keras version that saved it.

    Raises:
        ModelRefused: the file is damaged, holds weights only, or its architecture is not valid JSON.
    """
    import h5py

    try:
        with h5py.File(io.BytesIO(data), "r") as f:
            raw = f.attrs.get("model_config")
            if raw is not None and not isinstance(raw, (bytes, str)):
                raw = str(raw)
            version = keras_version(f.attrs)
    except Exception as exc:  # noqa: BLE001 - h5py raises OSError, KeyError, ValueError... on damaged files
        raise ModelRefused(
            f"{filename} is a damaged HDF5 file ({clean(exc, 120)}). Save the model again and upload "
            "the new file."
        ) from None
    if raw is None:
        raise ModelRefused(
            f"{filename} is an HDF5 file without a model architecture (probably weights only, from "
            "`save_weights`). Save the whole model with `model.save('model.keras')` and upload that."
        )
    if isinstance(raw, bytes):
        raw = raw.decode("utf-8", errors="replace")
    try:
        return json.loads(raw), version
    except ValueError:
        raise ModelRefused(f"{filename}: the model architecture stored in the file is unreadable. "
                           "Save the model again and upload the new file.") from None


def load_h5(data: bytes, filename: str, config: dict, version: str):
    """Build a Keras 3 model from a Keras 2 `.h5` file's bytes.

    Args:
        data: the file's bytes.
        filename: its name, for messages.
        config: its parsed ``model_config`` (already checked by `check_config`).
        version: the ``keras_version`` that wrote it.

    Returns:
        ``(model, translation)``.

    Raises:
        ModelRefused: a layer Keras 3 has no counterpart for, or weights that do not fit.
    """
    import h5py
    import keras

    try:
        new, t = translate(config)
    except ModelRefused as exc:
        raise ModelRefused(f"{filename} was saved by Keras {version or '2'} and cannot be converted: {exc}.") from None
    t.keras_version = version
    check_config(new, filename)  # the translated architecture passes the same gate as the original
    try:
        model = keras.saving.deserialize_keras_object(new, safe_mode=True)
    except Exception as exc:  # Keras raises many types; all mean "cannot build"
        msg = str(exc).split("\n")[0]
        raise ModelRefused(
            f"{filename} was saved by Keras {version or '2'}; tlviz translated its architecture for Keras 3, "
            f"but Keras could not build it: {clean(msg, 300)}. Open it with the Keras version that saved it "
            "and re-save it as `.keras` (in TensorFlow 2.15 or earlier, or with the `tf_keras` package: "
            "`model.save('model.keras')`), then upload that file."
        ) from None
    try:
        with h5py.File(io.BytesIO(data), "r") as f:
            group = f["model_weights"] if "model_weights" in f else f
            t.weights_by = _load_weights(group, model)
    except ModelRefused as exc:
        raise ModelRefused(f"{filename}: {exc}") from None
    except (KeyError, OSError, ValueError) as exc:
        raise ModelRefused(
            f"{filename}: its weights could not be read ({clean(exc, 200)}). Save the model again and upload "
            "the new file.") from None
    return model, t


def _text(v) -> str:
    return v.decode("utf-8", errors="replace") if isinstance(v, bytes) else str(v)


def _leaf_layers(layer):
    if hasattr(layer, "layers") and isinstance(getattr(layer, "layers"), list):
        for sub in layer.layers:
            yield from _leaf_layers(sub)
    else:
        yield layer


#: Keras 2 variable names that Keras 3 spells differently.
_VAR_ALIASES = {"depthwise_kernel": "kernel"}


def _short(name: str) -> tuple[str, str]:
    """``'model/conv1/kernel:0'`` -> ``('conv1', 'kernel')``."""
    name = re.sub(r":\d+$", "", name)
    parts = name.split("/")
    return (parts[-2] if len(parts) > 1 else "", parts[-1])


def _load_weights(group, model) -> str:
    """Copy the `.h5` weights into `model`, top-level layer by top-level layer.

    Weights are matched by (layer name, variable name); where that cannot be done for a
    layer (names repeat, or do not match), by order and shape, as Keras 2 saved them
    (trainable weights first, then the others).

    Returns:
        ``"name"`` or ``"order"`` (the weakest method any layer needed).
    """
    import numpy as np

    names = [_text(n) for n in group.attrs.get("layer_names", [])]
    saved = {}
    for n in names:
        g = group[n]
        wnames = [_text(w) for w in g.attrs.get("weight_names", [])]
        if wnames:
            saved[n] = [(w, np.asarray(g[w])) for w in wnames]
    layers = {layer.name: layer for layer in model.layers if layer.weights}
    missing = sorted(set(layers) - set(saved))
    extra = sorted(set(saved) - set(layers))
    if missing or extra:
        what = []
        if missing:
            what.append(f"no weights for layer(s) {', '.join(missing[:5])}")
        if extra:
            what.append(f"weights for unknown layer(s) {', '.join(extra[:5])}")
        raise ModelRefused(f"the saved weights do not match the architecture ({'; '.join(what)}). Save the whole "
                           "model again with `model.save(...)` and upload the new file")
    method = "name"
    for lname, layer in layers.items():
        arrays = saved[lname]
        targets = _by_name(layer, arrays)
        if targets is None:
            method = "order"
            targets = list(zip(list(layer.trainable_weights) + list(layer.non_trainable_weights), [a for _, a in arrays]))
            if len(targets) != len(arrays) or len(arrays) != len(layer.weights):
                raise ModelRefused(f"layer '{lname}' has {len(layer.weights)} weights in Keras 3 but {len(arrays)} in "
                                   "the file; the file does not match its own architecture")
        for var, arr in targets:
            if tuple(var.shape) != tuple(arr.shape):
                raise ModelRefused(f"the weight '{var.path}' has shape {tuple(var.shape)} but the file holds "
                                   f"{tuple(arr.shape)}; the file does not match its own architecture")
            var.assign(arr.astype(var.dtype) if hasattr(arr, "astype") else arr)
    return method


def _by_name(layer, arrays):
    """Pair `layer`'s variables with the saved arrays by (leaf layer, variable) name, or None."""
    variables = {}
    for leaf in _leaf_layers(layer):
        for v in leaf.weights:
            key = (leaf.name, v.name)
            if key in variables:
                return None
            variables[key] = v
    pairs, used = [], set()
    for wname, arr in arrays:
        lname, vname = _short(wname)
        key = (lname, vname) if (lname, vname) in variables else (lname, _VAR_ALIASES.get(vname, vname))
        if key not in variables or key in used:
            return None
        used.add(key)
        pairs.append((variables[key], arr))
    if len(used) != len(variables):
        return None
    return pairs
