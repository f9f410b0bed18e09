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
            ``class_names``, ...), from the embedded ``tlviz.json``, a sidecar,
            or a Teachable Machine export's ``labels.txt``.
        conversion: for a Keras 2 `.h5`, what the translator rewrote
            (`tlviz.legacy.Translation.to_json`); None for a file Keras 3 reads as is.
        teachable_machine: True when the model is shaped like a Teachable Machine
            image-model export (MobileNetV2 features, then a two-layer head).
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
    conversion: dict | None = None
    teachable_machine: bool = False

    @property
    def origin(self) -> str:
        """One line on where the model came from, for the overview page."""
        if self.teachable_machine:
            what = "A Teachable Machine image model"
            return what + (" (a Keras 2 `.h5` export, converted for Keras 3)" if self.conversion else "")
        if self.conversion:
            return f"A Keras {self.conversion.get('keras_version') or '2'} `.h5` file, converted for Keras 3"
        return "A Keras 3 model"

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

    Nothing from the file runs: before Keras sees it, the file is checked (size,
    format, damage, unsafe archive entries) and every object its architecture
    names is checked against Keras's own modules (see `_check_config`).

    Args:
        source: a path, or the file's bytes (an upload).
        filename: the original file name; needed with bytes to know the format.
            Defaults to the path's name.

    Returns:
        A `LoadedModel`.

    Raises:
        ModelRefused: with a message that says what is wrong and what to do.
    """
    if isinstance(source, (bytes, bytearray, memoryview)):
        data = bytes(source)
        filename = filename or "upload"
        shown = _clean(filename, 120)  # the name as quoted in messages
        sidecar = None
    else:
        path = Path(source)
        filename = filename or path.name
        shown = _clean(filename, 120)
        if path.is_dir():
            if (path / "saved_model.pb").exists() or (path / "saved_model.pbtxt").exists():
                raise ModelRefused(_savedmodel_message(shown))
            raise ModelRefused(f"{shown} is a folder, not a model file. Upload a `.keras` or `.h5` file.")
        if not path.exists():
            raise ModelRefused(f"Model file not found: {_clean(path, 200)}. Check the path.")
        if not path.is_file():
            raise ModelRefused(f"{shown} is not a regular file (a device or a pipe?). Give the path of a "
                               "`.keras` or `.h5` file.")
        size = path.stat().st_size
        if size > max_model_bytes():
            raise ModelRefused(_too_big_message(shown, size))
        with open(path, "rb") as f:
            data = f.read(max_model_bytes() + 1)  # the file may have grown since stat()
        sidecar = path.with_suffix(".json")

    if len(data) > max_model_bytes():
        raise ModelRefused(_too_big_message(shown, len(data)))
    if not data:
        raise ModelRefused(f"{shown} is empty (0 bytes). Upload the saved model file again.")

    sha256 = hashlib.sha256(data).hexdigest()
    kind = _sniff(data, shown)
    metadata: dict = {}
    if kind == "teachable":
        data, metadata = _read_teachable_zip(data, shown)
        kind = "h5"
    version = ""
    if kind == "keras":
        config, metadata = _read_keras_archive(data, shown)
    else:
        config, version = _read_h5_config(data, shown)
    _check_config(config, shown)
    if sidecar is not None and sidecar.exists() and not metadata:
        try:
            metadata = json.loads(sidecar.read_text())
        except (OSError, ValueError):
            metadata = {}

    from tlviz import legacy

    conversion = None
    if kind == "h5" and legacy.needs_translation(version):
        model, translation = legacy.load_h5(data, shown, config, version)
        conversion = translation.to_json()
    else:
        model = _keras_load(data, kind, shown)
    loaded = summarize(model, filename=filename, sha256=sha256,
                       metadata=metadata if isinstance(metadata, dict) else {})
    loaded.conversion = conversion
    loaded.teachable_machine = legacy.is_teachable_machine(config)
    names = loaded.metadata.get("class_names")
    if names and loaded.n_outputs and len(names) != loaded.n_outputs:
        raise ModelRefused(
            f"{shown}: its labels.txt names {len(names)} classes but the model has {loaded.n_outputs} outputs. "
            "Export the model again from Teachable Machine (the zip holds both files) and upload that zip.")
    return loaded


def keras_bytes(loaded: LoadedModel) -> bytes:
    """The model as a `.keras` file (what a converted Keras 2 model downloads as).

    tlviz's metadata (class names, and what was converted) is embedded as ``tlviz.json``,
    which Keras ignores and tlviz reads back.
    """
    from tlviz.samples import embed_metadata

    fd, tmp = tempfile.mkstemp(suffix=".keras", prefix="tlviz_export_")
    os.close(fd)
    try:
        loaded.model.save(tmp)
        extra = dict(loaded.metadata)
        if loaded.conversion:
            extra["converted_from"] = loaded.conversion
        if loaded.teachable_machine:
            extra.setdefault("preset", "teachable")
            extra["teachable_machine"] = True
        if extra:
            embed_metadata(tmp, extra)
        with open(tmp, "rb") as f:
            return f.read()
    finally:
        try:
            os.unlink(tmp)
        except OSError:
            pass


def summarize(model, filename: str = "", sha256: str = "", metadata: dict | None = None) -> LoadedModel:
    """Build a `LoadedModel` summary for an in-memory Keras model."""
    import keras

    if not isinstance(model, keras.Model):
        raise ModelRefused(f"{_clean(filename or 'The file', 120)} holds a {type(model).__name__}, not a Keras model.")
    inputs = model.inputs
    if len(inputs) != 1:
        raise ModelRefused(
            f"{_clean(model.name)} has {len(inputs)} inputs; tlviz handles image classifiers with exactly one "
            "image input. Save a model that takes one image tensor."
        )
    shape = tuple(inputs[0].shape[1:])
    if len(shape) != 3 or shape[-1] not in (1, 3, None):
        raise ModelRefused(
            f"{_clean(model.name)} expects input of shape {shape}; tlviz needs an image input of shape "
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

#: Largest `config.json` / `tlviz.json` read from a `.keras` archive (real configs are < 5 MB).
_MAX_CONFIG_BYTES = 32 * 2**20

#: First bytes of a Python pickle, protocols 2 to 5 (``pickle``, ``joblib``, ``torch.save``).
_PICKLE_MAGIC = tuple(bytes([0x80, p]) for p in (2, 3, 4, 5))


def _sniff(data: bytes, filename: str) -> str:
    """``"keras"``, ``"h5"`` or ``"teachable"`` (a Teachable Machine Keras export zip); anything else is
    refused with a message that names what the file is and how to convert it, where that can be done."""
    lower = filename.lower()
    if data[:4] == b"PK\x03\x04":
        try:
            with zipfile.ZipFile(io.BytesIO(data)) as zf:
                names = zf.namelist()
        except (zipfile.BadZipFile, ValueError, OSError, EOFError) as exc:
            raise ModelRefused(_damaged_message(filename, exc)) from None
        base = {n.replace("\\", "/").rsplit("/", 1)[-1] for n in names}
        if "config.json" in names:
            return "keras"
        if "keras_model.h5" in base:
            return "teachable"
        if "saved_model.pb" in base or "saved_model.pbtxt" in base:
            raise ModelRefused(_savedmodel_message(filename))
        if "model.json" in base and any(b.endswith(".bin") for b in base):
            raise ModelRefused(_tfjs_message(filename))
        if any(b.endswith(".tflite") for b in base):
            raise ModelRefused(_tflite_message(filename))
        if "data.pkl" in base or any(n.endswith(".pkl") for n in names):
            what = ("a PyTorch checkpoint (`torch.save`)" if "data.pkl" in base or lower.endswith((".pt", ".pth"))
                    else "a zip of Python pickles")
            raise ModelRefused(_pickle_message(filename, what))
        raise ModelRefused(
            f"{filename} is a zip archive but not a Keras model (no config.json inside, and no keras_model.h5 "
            "as in a Teachable Machine export). If it is an image set, upload it under 'Image set' instead; a "
            "model must be saved with `model.save('model.keras')`."
        )
    if data[:8] == b"\x89HDF\r\n\x1a\n":
        return "h5"
    if data[:2] in _PICKLE_MAGIC:
        what = "a PyTorch checkpoint (`torch.save`)" if lower.endswith((".pt", ".pth")) else "a Python pickle"
        raise ModelRefused(_pickle_message(filename, what))
    if data[4:8] == b"TFL3":
        raise ModelRefused(_tflite_message(filename))
    if _looks_like_tfjs(data):
        raise ModelRefused(_tfjs_message(filename))
    if lower.endswith(".onnx") or (data[:1] == b"\x08" and b"onnx" in data[:256].lower()):
        raise ModelRefused(_onnx_message(filename))
    if lower.endswith(("saved_model.pb", "saved_model.pbtxt")) or b"saved_model" in data[:200]:
        raise ModelRefused(_savedmodel_message(filename))
    if lower.endswith((".pb", ".pbtxt")):
        raise ModelRefused(
            f"{filename} is a TensorFlow graph (`.pb`): a frozen graph holds operations, not Keras layers, so it "
            "cannot be turned back into a Keras model. If it is the `saved_model.pb` of a SavedModel folder, "
            "upload the whole folder as a zip; otherwise save the Keras model from the code that trained it "
            "with `model.save('model.keras')`."
        )
    raise ModelRefused(
        f"{filename} is not a Keras model: it is neither a `.keras` archive nor an HDF5 `.h5` file. "
        "Save your model with `model.save('model.keras')` and upload that file."
    )


def _looks_like_tfjs(data: bytes) -> bool:
    head = data[:4096].lstrip()
    return head[:1] == b"{" and (b'"modelTopology"' in head or b'"weightsManifest"' in head
                                 or b'"format": "layers-model"' in head or b'"format":"layers-model"' in head)


def _tfjs_message(filename: str) -> str:
    return (
        f"{filename} is a TensorFlow.js model (model.json + weights .bin files). Convert it to a Keras `.h5` "
        "with the tensorflowjs package: `pip install tensorflowjs`, then `tensorflowjs_converter "
        "--input_format=tfjs_layers_model --output_format=keras model.json model.h5`, and upload model.h5 "
        "(tlviz converts Keras 2 `.h5` files). From Teachable Machine, choose Export Model -> Tensorflow -> "
        "Keras instead and upload that zip. A TF.js *graph* model cannot be turned back into Keras."
    )


def _tflite_message(filename: str) -> str:
    return (
        f"{filename} is a TensorFlow Lite model (`.tflite`): it holds a compiled graph without Keras layers, "
        "so it cannot be turned back into a Keras model. Upload the Keras model it was converted from "
        "(`model.save('model.keras')`); from Teachable Machine, choose Export Model -> Tensorflow -> Keras."
    )


def _onnx_message(filename: str) -> str:
    return (
        f"{filename} is an ONNX model. tlviz reads Keras models; ONNX has no converter that gives back plain Keras "
        "layers reliably (`onnx2tf -i model.onnx -okv3` writes a `.keras` file, but usually with TensorFlow "
        "operations tlviz cannot load safely). If the model was made in Keras, upload the original "
        "`model.keras` / `.h5`."
    )


def _pickle_message(filename: str, what: str) -> str:
    return (
        f"{filename} is not a Keras model: it is {what}. Opening a pickle runs code stored in it, so "
        "tlviz never opens one. Save the Keras model itself with `model.save('model.keras')` and "
        "upload that file."
    )


def _damaged_message(filename: str, exc: BaseException) -> str:
    return (
        f"{filename} looks like a `.keras` archive but is damaged or cut short ({_clean(exc, 120)}). "
        "Save the model again with `model.save('model.keras')` and upload the new file."
    )


def _savedmodel_message(filename: str) -> str:
    return (
        f"{filename} is a TensorFlow SavedModel, which Keras 3 cannot load as a model. "
        "Re-save it in the Keras format: in the environment that made it, run "
        "`model = tf.keras.models.load_model('path/to/savedmodel')` (or rebuild the model and load its "
        "weights) and then `model.save('model.keras')`, and upload the `.keras` file. With TensorFlow 2.16 or "
        "later, `pip install tf_keras` and run `python -c \"import tf_keras; "
        "tf_keras.models.load_model('path/to/savedmodel').save('model.h5')\"`, then upload model.h5 (tlviz "
        "converts Keras 2 `.h5` files). From Teachable Machine, export as Tensorflow -> Keras instead."
    )


#: Largest `labels.txt` read from a Teachable Machine zip (a real one is a few hundred bytes).
_MAX_LABELS_BYTES = 1 * 2**20


def _read_teachable_zip(data: bytes, filename: str) -> tuple[bytes, dict]:
    """The `keras_model.h5` bytes and ``{"class_names": [...]}`` from a Teachable Machine export zip."""
    from tlviz.labels import parse_labels

    try:
        with zipfile.ZipFile(io.BytesIO(data)) as zf:
            _check_archive_entries(zf, filename)
            by_base = {}
            for info in zf.infolist():
                base = info.filename.replace("\\", "/").rsplit("/", 1)[-1]
                if base in ("keras_model.h5", "labels.txt") and not info.is_dir():
                    if base in by_base:
                        raise ModelRefused(
                            f"{filename} holds more than one {base}. Upload one Teachable Machine export at a time.")
                    by_base[base] = info
            model_info = by_base["keras_model.h5"]
            if model_info.file_size > max_model_bytes():
                raise ModelRefused(_too_big_message(f"{filename}: keras_model.h5", model_info.file_size))
            h5 = zf.read(model_info)
            metadata = {"teachable_machine_zip": True}
            if "labels.txt" in by_base:
                info = by_base["labels.txt"]
                if info.file_size > _MAX_LABELS_BYTES:
                    raise ModelRefused(f"{filename}: its labels.txt is {_mb(info.file_size)} MB; a real one is a "
                                       "few hundred bytes. Export the model again and upload the new zip.")
                names = parse_labels(zf.read(info).decode("utf-8-sig", errors="replace"))
                if names:
                    if len(set(names)) != len(names):
                        raise ModelRefused(f"{filename}: its labels.txt names a class twice. Give each class once, "
                                           "in the model's output order, and upload the zip again.")
                    metadata["class_names"] = names
    except ModelRefused:
        raise
    except (zipfile.BadZipFile, KeyError, ValueError, OSError, EOFError, RuntimeError) as exc:
        raise ModelRefused(_damaged_message(filename, exc)) from None
    if h5[:8] != b"\x89HDF\r\n\x1a\n":
        raise ModelRefused(f"{filename}: its keras_model.h5 is not an HDF5 file (damaged export?). Export the model "
                           "from Teachable Machine again and upload the new zip.")
    return h5, metadata


def _mb(n: float) -> str:
    """Bytes as MB (2**20): 0.01, 1.5, 42.3, 500, 2000."""
    mb = n / 2**20
    return f"{mb:.0f}" if mb >= 100 else f"{mb:.3g}"


def _too_big_message(filename: str, size: int) -> str:
    return (
        f"{filename} is {_mb(size)} MB, over the {_mb(max_model_bytes())} MB limit. "
        "Use a smaller model, or raise the limit with the environment variable TLVIZ_MAX_MODEL_MB "
        "when starting tlviz."
    )


def _clean(text, limit: int = 80) -> str:
    """`text` made safe to quote in a message: no control characters, at most `limit` characters."""
    text = "".join(ch if ch.isprintable() else "?" for ch in str(text))
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _read_keras_archive(data: bytes, filename: str) -> tuple[dict, dict]:
    try:
        with zipfile.ZipFile(io.BytesIO(data)) as zf:
            _check_archive_entries(zf, filename)
            config = json.loads(zf.read("config.json"))
            metadata = {}
            if EMBEDDED_METADATA in zf.namelist():
                try:
                    metadata = json.loads(zf.read(EMBEDDED_METADATA))
                except (ValueError, zipfile.BadZipFile, OSError):
                    metadata = {}
    except ModelRefused:
        raise
    except (zipfile.BadZipFile, KeyError, ValueError, OSError, EOFError, RuntimeError) as exc:
        raise ModelRefused(_damaged_message(filename, exc)) from None
    return config, metadata if isinstance(metadata, dict) else {}


def _check_archive_entries(zf: zipfile.ZipFile, filename: str) -> None:
    """Refuse entries that could escape a folder, links, and archives that unpack far beyond the limit."""
    total = 0
    for info in zf.infolist():
        name = info.filename
        parts = name.replace("\\", "/").split("/")
        if name.startswith(("/", "\\")) or ".." in parts or (len(name) > 1 and name[1] == ":"):
            raise ModelRefused(
                f"{filename} is not a plain Keras archive: its entry '{_clean(name)}' points outside the "
                "archive. Keras never writes such entries; save the model again with "
                "`model.save('model.keras')` and upload the new file."
            )
        if (info.external_attr >> 16) & 0o170000 == 0o120000:
            raise ModelRefused(
                f"{filename} is not a plain Keras archive: its entry '{_clean(name)}' is a symbolic link. "
                "Save the model again with `model.save('model.keras')` and upload the new file."
            )
        if name in ("config.json", EMBEDDED_METADATA) and info.file_size > _MAX_CONFIG_BYTES:
            raise ModelRefused(
                f"{filename}: its {name} unpacks to {_mb(info.file_size)} MB; a real model's is a few MB at "
                "most. Save the model again with `model.save('model.keras')` and upload the new file."
            )
        total += info.file_size
    if total > 2 * max_model_bytes():
        raise ModelRefused(
            f"{filename} unpacks to {_mb(total)} MB, more than twice the {_mb(max_model_bytes())} MB model "
            "limit. Use a smaller model, or raise the limit with the environment variable "
            "TLVIZ_MAX_MODEL_MB when starting tlviz."
        )


def _read_h5_config(data: bytes, filename: str) -> tuple[dict, str]:
    import h5py

    from tlviz.legacy import keras_version

    try:
        with h5py.File(io.BytesIO(data), "r") as f:
            raw = f.attrs.get("model_config")
            if raw is not None and not isinstance(raw, (bytes, str)):
                raw = str(raw)
            version = keras_version(f.attrs)
    except Exception as exc:  # noqa: BLE001 - h5py raises OSError, KeyError, ValueError... on damaged files
        raise ModelRefused(
            f"{filename} is a damaged HDF5 file ({_clean(exc, 120)}). Save the model again and upload "
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


def _check_config(config, filename: str) -> None:
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
        inside = f" inside '{_clean(parent)}'" if parent else ""
        raise ModelRefused(
            f"{filename} contains a Lambda layer ('{_clean(inner_name or '?')}'){inside}. A Lambda layer "
            "stores Python code that would run on this server when the model loads, so tlviz refuses it. "
            "Replace it with a built-in layer (for example Rescaling for scaling) or move that step into "
            "your input pipeline, save the model again and upload it."
        )
    if cls == "__lambda__":
        raise ModelRefused(
            f"{filename} contains Python code (a serialized lambda) in {_clean(where, 160)}. Code stored in a "
            "model file would run on this server when the model loads, so tlviz refuses it. " + _FIX
        )
    if cls in _CODE_LAYERS and (module is None or _module_allowed(module)):
        raise ModelRefused(
            f"{filename} contains a {cls} layer ('{_clean(layer.rpartition('/')[2] or '?')}'), which "
            f"{_CODE_LAYERS[cls]}; tlviz only rebuilds self-contained models. " + _FIX
        )
    if cls == "function":
        ident = (inner if isinstance(inner, str) else None) or registered or "?"
        what = f"function '{_clean(ident)}'"
    elif is_layer:
        what = f"layer '{_clean(layer.rpartition('/')[2] or '?')}' of class '{_clean(registered or cls)}'"
    else:
        what = f"object of class '{_clean(registered or cls)}'"
    from_module = f" from module '{_clean(module)}'" if module else ""
    place = "" if is_layer else f" in {_clean(where, 160)}"
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
            f"Keras could not load {filename}: {_clean(msg, 300)}. Check that it was saved with "
            "`model.save('model.keras')` by Keras 3 (or as `.h5` by Keras 2) and uses only built-in layers."
        ) from None
    finally:
        try:
            os.unlink(tmp)
        except OSError:
            pass
