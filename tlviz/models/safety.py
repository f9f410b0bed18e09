"""What a model file may hold before Keras sees it: its size, its archive entries, its architecture.

- `max_model_bytes()` — the size limit (``TLVIZ_MAX_MODEL_MB``, default `DEFAULT_MAX_MODEL_MB`).
- `check_archive_entries(zf, filename)` — a `.keras` or Teachable Machine zip: no entry that
  escapes a folder, no link, no config over `_MAX_CONFIG_BYTES`, nothing that unpacks far
  beyond the limit.
- `check_config(config, filename)` — the gate every architecture passes (the file's own, and a
  Keras 2 file's after translation): nothing in it may make Keras import or run code.
"""

from __future__ import annotations

import zipfile

from tlviz import config
from tlviz.errors import ModelRefused
from tlviz.models.messages import clean, mb

#: Upload limit for a model file, in MB (``TLVIZ_MAX_MODEL_MB`` changes it; `tlviz.config` holds the default).
DEFAULT_MAX_MODEL_MB = int(config.default("TLVIZ_MAX_MODEL_MB"))

#: Name of the metadata file tlviz embeds inside a `.keras` archive (ignored by Keras).
EMBEDDED_METADATA = "tlviz.json"

#: Largest `config.json` / `tlviz.json` read from a `.keras` archive (real configs are < 5 MB).
_MAX_CONFIG_BYTES = 32 * 2**20


def max_model_bytes() -> int:
    """The model size limit.

    Returns:
        ``TLVIZ_MAX_MODEL_MB`` in bytes (default `DEFAULT_MAX_MODEL_MB`).

    Raises:
        ConfigError: the variable is set but is not a positive number.
    """
    return config.megabytes("TLVIZ_MAX_MODEL_MB")


def too_big_message(filename: str, size: int) -> str:
    """The refusal of a model file over ``TLVIZ_MAX_MODEL_MB`` (`size` in bytes)."""
    return (
        f"{filename} is {mb(size)} MB, over the {mb(max_model_bytes())} MB limit. "
        "Use a smaller model, or raise the limit with the environment variable TLVIZ_MAX_MODEL_MB "
        "when starting tlviz."
    )


def check_archive_entries(zf: zipfile.ZipFile, filename: str) -> None:
    """Refuse entries that could escape a folder, links, and archives that unpack far beyond the limit."""
    total = 0
    for info in zf.infolist():
        name = info.filename
        parts = name.replace("\\", "/").split("/")
        if name.startswith(("/", "\\")) or ".." in parts or (len(name) > 1 and name[1] == ":"):
            raise ModelRefused(
                f"{filename} is not a plain Keras archive: its entry '{clean(name)}' points outside the "
                "archive. Keras never writes such entries; save the model again with "
                "`model.save('model.keras')` and upload the new file."
            )
        if (info.external_attr >> 16) & 0o170000 == 0o120000:
            raise ModelRefused(
                f"{filename} is not a plain Keras archive: its entry '{clean(name)}' is a symbolic link. "
                "Save the model again with `model.save('model.keras')` and upload the new file."
            )
        if name in ("config.json", EMBEDDED_METADATA) and info.file_size > _MAX_CONFIG_BYTES:
            raise ModelRefused(
                f"{filename}: its {name} unpacks to {mb(info.file_size)} MB; a real model's is a few MB at "
                "most. Save the model again with `model.save('model.keras')` and upload the new file."
            )
        total += info.file_size
    if total > 2 * max_model_bytes():
        raise ModelRefused(
            f"{filename} unpacks to {mb(total)} MB, more than twice the {mb(max_model_bytes())} MB model "
            "limit. Use a smaller model, or raise the limit with the environment variable "
            "TLVIZ_MAX_MODEL_MB when starting tlviz."
        )


#: Modules an object in a model config may come from: Keras itself (and Keras 2's ``tf_keras``).
#: Files saved by Keras 3.15 name only ``keras``, ``keras.layers``, ``keras.initializers``,
#: ``keras.regularizers``, ``keras.constraints``, ``keras.optimizers``,
#: ``keras.optimizers.schedules`` and ``keras.src.models.functional``, plus ``builtins`` for
#: Keras's own loss/metric functions in ``compile_config``; legacy `.h5` files name no module.
_ALLOWED_PACKAGES = ("keras", "tf_keras")

#: Where a function-valued field (``"class_name": "function"``) may point. Keras writes its own
#: losses/metrics as ``"module": "builtins"`` plus the function's name; those names must exist in
#: the first three.
_ALLOWED_FUNCTION_MODULES = ("activations", "losses", "metrics", "ops")

#: Keras layers that carry or fetch code/programs from outside the architecture.
_CODE_LAYERS = {
    "TFSMLayer": "loads a TensorFlow SavedModel program from a path on this server",
    "JaxLayer": "wraps a Python/JAX function",
    "FlaxLayer": "wraps a Python/Flax module",
}

_FIX = ("Replace it with built-in Keras layers and functions (or upload the model without it, for "
        "example the base model alone), save the model again and upload it.")


def _module_allowed(module: str) -> bool:
    return any(module == pkg or module.startswith(pkg + ".") for pkg in _ALLOWED_PACKAGES)


def _function_module_allowed(module: str) -> bool:
    parts = module.split(".")
    if parts[0] not in _ALLOWED_PACKAGES:
        return False
    rest = parts[2:] if len(parts) > 2 and parts[1] == "src" else parts[1:]
    return bool(rest) and rest[0] in _ALLOWED_FUNCTION_MODULES


def _keras_builtin_function(name) -> bool:
    """Whether `name` is a function of keras.activations / keras.losses / keras.metrics."""
    import inspect

    import keras

    if not isinstance(name, str) or name in ("get", "serialize", "deserialize"):
        return False
    return any(inspect.isfunction(getattr(getattr(keras, mod), name, None)) for mod in _ALLOWED_FUNCTION_MODULES[:3])


def check_config(config, filename: str) -> None:
    """Refuse anything in a model config that would make Keras import or run code.

    Every dict in the config tree that has a ``module``, ``class_name`` or
    ``registered_name`` key is checked, not only layers: Lambda layers,
    serialized Python lambdas (``__lambda__``), custom registered names
    (``"package>Name"``), and any module other than ``keras`` / ``keras.*``
    (or ``tf_keras`` / ``tf_keras.*``) are refused, as are function references
    outside Keras's activations, losses, metrics and ops (``"module": "builtins"``
    is accepted only for a function that Keras itself has under that name), and
    layers that fetch programs from elsewhere (TFSMLayer, JaxLayer, FlaxLayer).

    Args:
        config: the parsed architecture (``config.json`` or the `.h5` ``model_config``).
        filename: the file's name, for messages.

    Raises:
        ModelRefused: naming the layer, the field and the offending module or class.
    """
    if not isinstance(config, dict):
        raise ModelRefused(
            f"{filename}: its architecture is a {type(config).__name__}, not a Keras model description. "
            "Save the model with `model.save('model.keras')` and upload that file."
        )
    # tlviz loads with compile=False and Keras then drops the top-level compile_config
    # unread, so a model compiled with a custom loss or metric still opens.
    architecture = {k: v for k, v in config.items() if k != "compile_config"}
    for obj, layer, fieldpath in _iter_objects(architecture, "", ""):
        _check_object(obj, layer, fieldpath, filename)
    if not isinstance(config.get("config"), dict) or not isinstance(config.get("class_name"), str):
        raise ModelRefused(
            f"{filename}: its architecture does not describe a Keras model (the top-level object has no "
            "layer configuration). Save the model with `model.save('model.keras')` and upload that file."
        )


def _where(layer: str, fieldpath: str) -> str:
    owner = f"layer '{layer}'" if layer else "the model itself"
    return f"field '{fieldpath}' of {owner}" if fieldpath else owner


def _check_object(obj: dict, layer: str, fieldpath: str, filename: str) -> None:
    cls, module, registered = obj.get("class_name"), obj.get("module"), obj.get("registered_name")
    inner = obj.get("config")
    for key, value in (("class_name", cls), ("module", module), ("registered_name", registered)):
        if value is not None and not isinstance(value, str):
            raise ModelRefused(
                f"{filename}: the '{key}' of an object in {_where(layer, fieldpath)} is a "
                f"{type(value).__name__}, not a name; the architecture is malformed. Save the model again "
                "with `model.save('model.keras')` and upload the new file."
            )
    where = _where(layer, fieldpath)
    is_layer = not fieldpath
    if cls == "Lambda":
        parent, _, inner_name = layer.rpartition("/")
        inside = f" inside '{clean(parent)}'" if parent else ""
        raise ModelRefused(
            f"{filename} contains a Lambda layer ('{clean(inner_name or '?')}'){inside}. A Lambda layer "
            "stores Python code that would run on this server when the model loads, so tlviz refuses it. "
            "Replace it with a built-in layer (for example Rescaling for scaling) or move that step into "
            "your input pipeline, save the model again and upload it."
        )
    if cls == "__lambda__":
        raise ModelRefused(
            f"{filename} contains Python code (a serialized lambda) in {clean(where, 160)}. Code stored in a "
            "model file would run on this server when the model loads, so tlviz refuses it. " + _FIX
        )
    if cls in _CODE_LAYERS and (module is None or _module_allowed(module)):
        raise ModelRefused(
            f"{filename} contains a {cls} layer ('{clean(layer.rpartition('/')[2] or '?')}'), which "
            f"{_CODE_LAYERS[cls]}; tlviz only rebuilds self-contained models. " + _FIX
        )
    if cls == "function":
        ident = (inner if isinstance(inner, str) else None) or registered or "?"
        what = f"function '{clean(ident)}'"
    elif is_layer:
        what = f"layer '{clean(layer.rpartition('/')[2] or '?')}' of class '{clean(registered or cls)}'"
    else:
        what = f"object of class '{clean(registered or cls)}'"
    from_module = f" from module '{clean(module)}'" if module else ""
    place = "" if is_layer else f" in {clean(where, 160)}"
    custom_name = bool(
        (registered and ">" in registered)
        or (cls and ">" in cls)
        or (registered and cls != "function" and registered != cls)
        or (registered and cls == "function" and registered not in (inner, "function"))
    )
    if not custom_name and cls == "function" and module == "builtins":
        # How Keras writes its own losses/metrics/activations (it looks the name up in its
        # own modules, never in Python's builtins).
        if _keras_builtin_function(inner):
            return
        raise ModelRefused(
            f"{filename} refers to the {what}{from_module}{place}, which is not a Keras activation, loss "
            "or metric; tlviz refuses functions it cannot find in Keras. " + _FIX
        )
    if custom_name or (module is not None and not _module_allowed(module)):
        raise ModelRefused(
            f"{filename} contains a custom {what}{from_module}{place}, which is not part of Keras. "
            "tlviz only rebuilds objects from Keras's own modules (`keras` and `keras.*`): anything else "
            "would mean importing and running code named by the file. " + _FIX
        )
    if cls == "function" and module is not None and not _function_module_allowed(module):
        raise ModelRefused(
            f"{filename} refers to the {what}{from_module}{place}, which is not an activation, loss, "
            "metric or op; a model file has no reason to name other functions, so tlviz refuses it. "
            + _FIX
        )


def _iter_objects(node, layer: str, fieldpath: str):
    """Yield ``(dict, layer path, field path)`` for every dict that names a class, module or function.

    The layer path is the chain of layer names from the model down ("base/conv1"); the field
    path is the chain of keys inside that layer's config ("kernel_initializer").
    """
    if isinstance(node, dict):
        if any(k in node for k in ("module", "class_name", "registered_name")):
            yield node, layer, fieldpath
        for key, value in node.items():
            if key == "layers" and isinstance(value, list):
                for item in value:
                    name = _layer_name(item)
                    yield from _iter_objects(item, f"{layer}/{name}" if layer else name, "")
            elif key == "config":
                yield from _iter_objects(value, layer, fieldpath)
            else:
                sub = f"{fieldpath}.{key}" if fieldpath else str(key)
                yield from _iter_objects(value, layer, sub)
    elif isinstance(node, list):
        for value in node:
            yield from _iter_objects(value, layer, fieldpath)


def _layer_name(item) -> str:
    if isinstance(item, dict):
        cfg = item.get("config")
        name = cfg.get("name") if isinstance(cfg, dict) else None
        name = name or item.get("name")
        if isinstance(name, str) and name:
            return name.replace("/", "_")
    return "?"
