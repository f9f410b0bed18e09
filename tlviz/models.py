"""Loading Keras models safely, and summarising what was loaded.

Models are always loaded with ``safe_mode=True``; there is deliberately no way
to turn that off. Before Keras sees a file, its architecture config is read and
checked so that a refusal can name the offending layer and say what to do.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import tempfile
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

from tlviz.errors import ModelRefused

# Upload limit for a model file, in MB. Override with TLVIZ_MAX_MODEL_MB.
DEFAULT_MAX_MODEL_MB = 500

#: Name of the metadata file tlviz embeds inside a `.keras` archive (ignored by Keras).
EMBEDDED_METADATA = "tlviz.json"

_PREPROCESSING_CLASSES = ("Rescaling", "Normalization", "Resizing", "CenterCrop")


def max_model_bytes() -> int:
    """The model size limit in bytes (``TLVIZ_MAX_MODEL_MB``, default 500)."""
    try:
        mb = float(os.environ.get("TLVIZ_MAX_MODEL_MB", DEFAULT_MAX_MODEL_MB))
    except ValueError:
        mb = DEFAULT_MAX_MODEL_MB
    return int(mb * 1024 * 1024)


@dataclass
class LoadedModel:
    """A model accepted by `load_model`, with a summary of its signature.

    Attributes:
        model: the Keras model. Treat as read-only: clone before training.
        name: the model's name.
        filename: the file it came from.
        sha256: hash of the file's bytes (cache key).
        input_shape: input shape without the batch axis, e.g. ``(224, 224, 3)``.
        n_outputs: number of output units (classes) of the first output.
        total_params / trainable_params / non_trainable_params: as Keras counts them.
        builtin_preprocessing: descriptions of Rescaling / Normalization / ...
            layers found at the model's input.
        metadata: what tlviz recorded about the model (``preset``,
            ``class_names``, ...), from the embedded ``tlviz.json`` or a sidecar.
    """

    model: object
    name: str
    filename: str
    sha256: str
    input_shape: tuple
    n_outputs: int
    total_params: int
    trainable_params: int
    non_trainable_params: int
    builtin_preprocessing: list[str] = field(default_factory=list)
    metadata: dict = field(default_factory=dict)

    @property
    def image_size(self) -> tuple[int, int]:
        """(height, width) the images must be resized to (224 if the model accepts any)."""
        h, w = self.input_shape[0], self.input_shape[1]
        return (int(h or 224), int(w or 224))

    @property
    def channels(self) -> int:
        return int(self.input_shape[2] or 3)

    @property
    def recorded_preset(self) -> str | None:
        return self.metadata.get("preset")

    @property
    def class_names(self) -> list[str] | None:
        names = self.metadata.get("class_names")
        return list(names) if names else None


def load_model(source: str | os.PathLike | bytes, filename: str | None = None) -> LoadedModel:
    """Load a `.keras` or legacy `.h5` model with ``safe_mode=True``.

    Args:
        source: a path, or the file's bytes (an upload).
        filename: the original file name; needed with bytes to know the format.
            Defaults to the path's name.

    Returns:
        A `LoadedModel`.

    Raises:
        ModelRefused: with a message that says what is wrong and what to do.
    """
    if isinstance(source, (bytes, bytearray)):
        data = bytes(source)
        filename = filename or "upload"
        sidecar = None
    else:
        path = Path(source)
        filename = filename or path.name
        if path.is_dir():
            if (path / "saved_model.pb").exists():
                raise ModelRefused(_savedmodel_message(filename))
            raise ModelRefused(f"{filename} is a folder, not a model file. Upload a `.keras` or `.h5` file.")
        if not path.exists():
            raise ModelRefused(f"Model file not found: {path}. Check the path.")
        size = path.stat().st_size
        if size > max_model_bytes():
            raise ModelRefused(_too_big_message(filename, size))
        data = path.read_bytes()
        sidecar = path.with_suffix(".json")

    if len(data) > max_model_bytes():
        raise ModelRefused(_too_big_message(filename, len(data)))
    if not data:
        raise ModelRefused(f"{filename} is empty (0 bytes). Upload the saved model file again.")

    kind = _sniff(data, filename)
    metadata: dict = {}
    if kind == "keras":
        config, metadata = _read_keras_archive(data, filename)
    else:
        config = _read_h5_config(data, filename)
    _check_config(config, filename)
    if sidecar is not None and sidecar.exists() and not metadata:
        try:
            metadata = json.loads(sidecar.read_text())
        except (OSError, ValueError):
            metadata = {}

    model = _keras_load(data, kind, filename)
    return summarize(model, filename=filename, sha256=hashlib.sha256(data).hexdigest(), metadata=metadata)


def summarize(model, filename: str = "", sha256: str = "", metadata: dict | None = None) -> LoadedModel:
    """Build a `LoadedModel` summary for an in-memory Keras model."""
    import keras

    if not isinstance(model, keras.Model):
        raise ModelRefused(f"{filename or 'The file'} holds a {type(model).__name__}, not a Keras model.")
    inputs = model.inputs
    if len(inputs) != 1:
        raise ModelRefused(
            f"{model.name} has {len(inputs)} inputs; tlviz handles image classifiers with exactly one "
            "image input. Save a model that takes one image tensor."
        )
    shape = tuple(inputs[0].shape[1:])
    if len(shape) != 3 or shape[-1] not in (1, 3, None):
        raise ModelRefused(
            f"{model.name} expects input of shape {shape}; tlviz needs an image input of shape "
            "(height, width, 1 or 3) in channels-last order."
        )
    out_shape = model.outputs[0].shape
    n_outputs = int(out_shape[-1]) if out_shape[-1] is not None else 0
    trainable = _count(model.trainable_weights)
    non_trainable = _count(model.non_trainable_weights)
    return LoadedModel(
        model=model,
        name=model.name,
        filename=filename,
        sha256=sha256,
        input_shape=shape,
        n_outputs=n_outputs,
        total_params=trainable + non_trainable,
        trainable_params=trainable,
        non_trainable_params=non_trainable,
        builtin_preprocessing=builtin_preprocessing(model),
        metadata=dict(metadata or {}),
    )


def builtin_preprocessing(model) -> list[str]:
    """Describe preprocessing layers at the model's input (before any weighted layer).

    Returns:
        One string per layer, e.g. ``"Rescaling 'rescaling' (scale=0.00392, offset=0)"``.
    """
    found = []
    for path, layer in _walk_leading(model):
        cls = type(layer).__name__
        if cls in _PREPROCESSING_CLASSES:
            found.append(_describe_preprocessing(path, layer))
    return found


def _walk_leading(model, prefix=""):
    """Leaf layers from the input until the first layer holding weights."""
    import keras

    for layer in model.layers:
        path = f"{prefix}{layer.name}"
        if isinstance(layer, keras.Model):
            for item in _walk_leading(layer, prefix=path + "/"):
                yield item
            return
        cls = type(layer).__name__
        if layer.weights and cls not in _PREPROCESSING_CLASSES:
            return
        yield path, layer


def _describe_preprocessing(path, layer) -> str:
    import numpy as np

    cls = type(layer).__name__
    if cls == "Rescaling":
        return f"Rescaling '{path}' (scale={_short(layer.scale)}, offset={_short(layer.offset)})"
    if cls == "Normalization":
        try:
            mean = np.asarray(layer.mean).ravel()
            var = np.asarray(layer.variance).ravel()
            return f"Normalization '{path}' (mean={_short(mean)}, variance={_short(var)})"
        except Exception:  # not adapted yet
            return f"Normalization '{path}'"
    return f"{cls} '{path}'"


def _short(v) -> str:
    import numpy as np

    arr = np.asarray(v, dtype=float).ravel()
    if arr.size == 1:
        return f"{arr[0]:.4g}"
    return "[" + ", ".join(f"{a:.4g}" for a in arr[:4]) + (", ..." if arr.size > 4 else "") + "]"


def _count(weights) -> int:
    import numpy as np

    seen, total = set(), 0
    for w in weights:
        if id(w) in seen:
            continue
        seen.add(id(w))
        total += int(np.prod(w.shape))
    return total


# -- file checks -------------------------------------------------------------

def _sniff(data: bytes, filename: str) -> str:
    lower = filename.lower()
    if data[:4] == b"PK\x03\x04":
        with zipfile.ZipFile(io.BytesIO(data)) as zf:
            names = zf.namelist()
        if any(n.endswith("saved_model.pb") for n in names):
            raise ModelRefused(_savedmodel_message(filename))
        if "config.json" in names:
            return "keras"
        raise ModelRefused(
            f"{filename} is a zip archive but not a Keras model (no config.json inside). "
            "If it is an image set, upload it under 'Image set' instead; a model must be saved "
            "with `model.save('model.keras')`."
        )
    if data[:8] == b"\x89HDF\r\n\x1a\n":
        return "h5"
    if lower.endswith(".pb") or b"saved_model" in data[:200]:
        raise ModelRefused(_savedmodel_message(filename))
    raise ModelRefused(
        f"{filename} is not a Keras model: it is neither a `.keras` archive nor an HDF5 `.h5` file. "
        "Save your model with `model.save('model.keras')` and upload that file."
    )


def _savedmodel_message(filename: str) -> str:
    return (
        f"{filename} is a TensorFlow SavedModel, which Keras 3 cannot load as a model. "
        "Re-save it in the Keras format: in the environment that made it, run "
        "`model = tf.keras.models.load_model('path/to/savedmodel')` (or rebuild the model and load its "
        "weights) and then `model.save('model.keras')`, and upload the `.keras` file."
    )


def _too_big_message(filename: str, size: int) -> str:
    return (
        f"{filename} is {size / 1e6:.0f} MB, over the {max_model_bytes() / 1024 / 1024:.0f} MB limit. "
        "Use a smaller model, or raise the limit with the environment variable TLVIZ_MAX_MODEL_MB "
        "when starting tlviz."
    )


def _read_keras_archive(data: bytes, filename: str) -> tuple[dict, dict]:
    try:
        with zipfile.ZipFile(io.BytesIO(data)) as zf:
            config = json.loads(zf.read("config.json"))
            metadata = {}
            if EMBEDDED_METADATA in zf.namelist():
                try:
                    metadata = json.loads(zf.read(EMBEDDED_METADATA))
                except ValueError:
                    metadata = {}
    except (zipfile.BadZipFile, KeyError, ValueError, OSError) as exc:
        raise ModelRefused(
            f"{filename} looks like a `.keras` archive but is damaged ({exc}). Save the model again "
            "with `model.save('model.keras')` and upload the new file."
        ) from None
    return config, metadata if isinstance(metadata, dict) else {}


def _read_h5_config(data: bytes, filename: str) -> dict:
    import h5py

    try:
        with h5py.File(io.BytesIO(data), "r") as f:
            raw = f.attrs.get("model_config")
    except OSError as exc:
        raise ModelRefused(f"{filename} is a damaged HDF5 file ({exc}). Save the model again.") from None
    if raw is None:
        raise ModelRefused(
            f"{filename} is an HDF5 file without a model architecture (probably weights only, from "
            "`save_weights`). Save the whole model with `model.save('model.keras')` and upload that."
        )
    if isinstance(raw, bytes):
        raw = raw.decode("utf-8")
    try:
        return json.loads(raw)
    except ValueError:
        raise ModelRefused(f"{filename}: the model architecture stored in the file is unreadable.") from None


_KERAS_MODULE_PREFIXES = ("keras", "tf_keras", "tensorflow")


def _check_config(config: dict, filename: str) -> None:
    """Refuse Lambda layers and custom classes before Keras tries to build them."""
    for cls, name, module, registered in _iter_layer_configs(config):
        if cls == "Lambda":
            raise ModelRefused(
                f"{filename} contains a Lambda layer ('{name}'). A Lambda layer stores Python code "
                "that would run on this server when the model loads, so tlviz refuses it. Replace it "
                "with a built-in layer (for example Rescaling for scaling) or move that step into your "
                "input pipeline, save the model again and upload it."
            )
        custom = (registered and ">" in str(registered)) or (
            module is not None and not str(module).startswith(_KERAS_MODULE_PREFIXES)
        )
        if custom:
            raise ModelRefused(
                f"{filename} contains a custom layer '{name}' of class '{registered or cls}', which is not "
                "part of Keras. tlviz does not run code from uploaded files, so it cannot rebuild that "
                "layer. Replace it with built-in Keras layers, or upload the model without it (for "
                "example the base model alone)."
            )


def _iter_layer_configs(node):
    if isinstance(node, dict):
        if "class_name" in node and isinstance(node.get("config"), dict):
            cfg = node["config"]
            yield node["class_name"], cfg.get("name", "?"), node.get("module"), node.get("registered_name")
        for value in node.values():
            yield from _iter_layer_configs(value)
    elif isinstance(node, list):
        for value in node:
            yield from _iter_layer_configs(value)


def _keras_load(data: bytes, kind: str, filename: str):
    import keras

    suffix = ".keras" if kind == "keras" else ".h5"
    fd, tmp = tempfile.mkstemp(suffix=suffix, prefix="tlviz_model_")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        return keras.saving.load_model(tmp, compile=False, safe_mode=True)
    except Exception as exc:  # Keras raises many types; all mean "cannot load"
        msg = str(exc).split("\n")[0]
        msg = msg.replace("you can override this error by passing `safe_mode=False`", "")
        raise ModelRefused(
            f"Keras could not load {filename}: {msg[:300]}. Check that it was saved with "
            "`model.save('model.keras')` by Keras 3 (or as `.h5` by Keras 2) and uses only built-in layers."
        ) from None
    finally:
        try:
            os.unlink(tmp)
        except OSError:
            pass
