"""Loading a model file: `load_model`, `keras_bytes`, and telling formats apart.

Models are always loaded with ``safe_mode=True``; there is deliberately no way to turn that off.
Before Keras sees a file, it is checked (`tlviz.models.safety`): its size, its archive entries,
and every object its architecture names, so that a refusal can name the offending layer and say
what to do. `_sniff` tells a `.keras` archive, an HDF5 `.h5` and a Teachable Machine export zip
from everything else, which is refused with a message naming what the file is
(`tlviz.models.messages`). Keras 2 `.h5` files go through the translator (`tlviz.models.h5`).
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import tempfile
import zipfile
from pathlib import Path

from tlviz.errors import ModelRefused
from tlviz.models.compiled import SAVED_LOSS_KEY, saved_loss
from tlviz.models.h5 import read_h5_config, load_h5
from tlviz.models.legacy import needs_translation
from tlviz.models.messages import (
    damaged_message,
    onnx_message,
    pickle_message,
    savedmodel_message,
    tflite_message,
    tfjs_message,
    clean,
)
from tlviz.models.safety import (
    EMBEDDED_METADATA,
    check_archive_entries,
    too_big_message,
    check_config,
    max_model_bytes,
)
from tlviz.models.summary import LoadedModel, summarize
from tlviz.models.teachable import read_teachable_zip, is_teachable_machine

#: First bytes of a Python pickle, protocols 2 to 5 (``pickle``, ``joblib``, ``torch.save``).
_PICKLE_MAGIC = tuple(bytes([0x80, p]) for p in (2, 3, 4, 5))


def load_model(source: str | os.PathLike | bytes, filename: str | None = None) -> LoadedModel:
    """Load a `.keras` or legacy `.h5` model with ``safe_mode=True``.

    Nothing from the file runs: before Keras sees it, the file is checked (size,
    format, damage, unsafe archive entries) and every object its architecture
    names is checked against Keras's own modules (see `check_config`).

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
        shown = clean(filename, 120)  # the name as quoted in messages
        sidecar = None
    else:
        path = Path(source)
        filename = filename or path.name
        shown = clean(filename, 120)
        if path.is_dir():
            if (path / "saved_model.pb").exists() or (path / "saved_model.pbtxt").exists():
                raise ModelRefused(savedmodel_message(shown))
            raise ModelRefused(f"{shown} is a folder, not a model file. Upload a `.keras` or `.h5` file.")
        if not path.exists():
            raise ModelRefused(f"Model file not found: {clean(path, 200)}. Check the path.")
        if not path.is_file():
            raise ModelRefused(f"{shown} is not a regular file (a device or a pipe?). Give the path of a "
                               "`.keras` or `.h5` file.")
        size = path.stat().st_size
        if size > max_model_bytes():
            raise ModelRefused(too_big_message(shown, size))
        with open(path, "rb") as f:
            data = f.read(max_model_bytes() + 1)  # the file may have grown since stat()
        sidecar = path.with_suffix(".json")

    if len(data) > max_model_bytes():
        raise ModelRefused(too_big_message(shown, len(data)))
    if not data:
        raise ModelRefused(f"{shown} is empty (0 bytes). Upload the saved model file again.")

    sha256 = hashlib.sha256(data).hexdigest()
    kind = _sniff(data, shown)
    metadata: dict = {}
    if kind == "teachable":
        data, metadata = read_teachable_zip(data, shown)
        kind = "h5"
    version = ""
    if kind == "keras":
        config, metadata = _read_keras_archive(data, shown)
    else:
        config, version = read_h5_config(data, shown)
    check_config(config, shown)
    if sidecar is not None and sidecar.exists() and not metadata:
        try:
            metadata = json.loads(sidecar.read_text())
        except (OSError, ValueError):
            metadata = {}

    conversion = None
    if kind == "h5" and needs_translation(version):
        model, translation = load_h5(data, shown, config, version)
        conversion = translation.to_json()
    else:
        model = _keras_load(data, kind, shown)
    loaded = summarize(model, filename=filename, sha256=sha256,
                       metadata=metadata if isinstance(metadata, dict) else {})
    loaded.conversion = conversion
    loaded.teachable_machine = is_teachable_machine(config)
    loss = saved_loss(kind, config, data)  # the file's loss, for output-loss-mismatch (loaded with compile=False)
    if loss is not None:
        loaded.metadata.setdefault(SAVED_LOSS_KEY, loss)
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

    Args:
        loaded: a `LoadedModel` (from `load_model`).

    Returns:
        The bytes of the `.keras` file.
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


def _sniff(data: bytes, filename: str) -> str:
    """``"keras"``, ``"h5"`` or ``"teachable"`` (a Teachable Machine Keras export zip); anything else is
    refused with a message that names what the file is and how to convert it, where that can be done."""
    lower = filename.lower()
    if data[:4] == b"PK\x03\x04":
        try:
            with zipfile.ZipFile(io.BytesIO(data)) as zf:
                names = zf.namelist()
        except (zipfile.BadZipFile, ValueError, OSError, EOFError) as exc:
            raise ModelRefused(damaged_message(filename, exc)) from None
        base = {n.replace("\\", "/").rsplit("/", 1)[-1] for n in names}
        if "config.json" in names:
            return "keras"
        if "keras_model.h5" in base:
            return "teachable"
        if "saved_model.pb" in base or "saved_model.pbtxt" in base:
            raise ModelRefused(savedmodel_message(filename))
        if "model.json" in base and any(b.endswith(".bin") for b in base):
            raise ModelRefused(tfjs_message(filename))
        if any(b.endswith(".tflite") for b in base):
            raise ModelRefused(tflite_message(filename))
        if "data.pkl" in base or any(n.endswith(".pkl") for n in names):
            what = ("a PyTorch checkpoint (`torch.save`)" if "data.pkl" in base or lower.endswith((".pt", ".pth"))
                    else "a zip of Python pickles")
            raise ModelRefused(pickle_message(filename, what))
        raise ModelRefused(
            f"{filename} is a zip archive but not a Keras model (no config.json inside, and no keras_model.h5 "
            "as in a Teachable Machine export). If it is an image set, upload it under 'Image set' instead; a "
            "model must be saved with `model.save('model.keras')`."
        )
    if data[:8] == b"\x89HDF\r\n\x1a\n":
        return "h5"
    if data[:2] in _PICKLE_MAGIC:
        what = "a PyTorch checkpoint (`torch.save`)" if lower.endswith((".pt", ".pth")) else "a Python pickle"
        raise ModelRefused(pickle_message(filename, what))
    if data[4:8] == b"TFL3":
        raise ModelRefused(tflite_message(filename))
    if _looks_like_tfjs(data):
        raise ModelRefused(tfjs_message(filename))
    if lower.endswith(".onnx") or (data[:1] == b"\x08" and b"onnx" in data[:256].lower()):
        raise ModelRefused(onnx_message(filename))
    if lower.endswith(("saved_model.pb", "saved_model.pbtxt")) or b"saved_model" in data[:200]:
        raise ModelRefused(savedmodel_message(filename))
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


def _read_keras_archive(data: bytes, filename: str) -> tuple[dict, dict]:
    try:
        with zipfile.ZipFile(io.BytesIO(data)) as zf:
            check_archive_entries(zf, filename)
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
        raise ModelRefused(damaged_message(filename, exc)) from None
    return config, metadata if isinstance(metadata, dict) else {}


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
            f"Keras could not load {filename}: {clean(msg, 300)}. Check that it was saved with "
            "`model.save('model.keras')` by Keras 3 (or as `.h5` by Keras 2) and uses only built-in layers."
        ) from None
    finally:
        try:
            os.unlink(tmp)
        except OSError:
            pass
