"""Teachable Machine exports: the Keras export zip, and the shape of a Teachable Machine model.

- `read_teachable_zip(data, filename)` — the ``keras_model.h5`` and the class names of its
  ``labels.txt`` (either spelling, `tlviz.labels`), each bounded, from the export zip.
- `is_teachable_machine(config)` — whether an architecture is shaped like a Teachable Machine
  image model (the overview says so, and the `teachable` preprocessing is compared).
"""

from __future__ import annotations

import io
import zipfile

from tlviz.errors import ModelRefused
from tlviz.labels import parse_labels
from tlviz.models.legacy import item_name
from tlviz.models.messages import damaged_message, mb
from tlviz.models.safety import check_archive_entries, too_big_message, max_model_bytes

#: Largest `labels.txt` read from a Teachable Machine zip (a real one is a few hundred bytes).
_MAX_LABELS_BYTES = 1 * 2**20


def read_teachable_zip(data: bytes, filename: str) -> tuple[bytes, dict]:
    """The `keras_model.h5` bytes and ``{"class_names": [...]}`` from a Teachable Machine export zip."""
    try:
        with zipfile.ZipFile(io.BytesIO(data)) as zf:
            check_archive_entries(zf, filename)
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
                raise ModelRefused(too_big_message(f"{filename}: keras_model.h5", model_info.file_size))
            h5 = zf.read(model_info)
            metadata = {"teachable_machine_zip": True}
            if "labels.txt" in by_base:
                info = by_base["labels.txt"]
                if info.file_size > _MAX_LABELS_BYTES:
                    raise ModelRefused(f"{filename}: its labels.txt is {mb(info.file_size)} MB; a real one is a "
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
        raise ModelRefused(damaged_message(filename, exc)) from None
    if h5[:8] != b"\x89HDF\r\n\x1a\n":
        raise ModelRefused(f"{filename}: its keras_model.h5 is not an HDF5 file (damaged export?). Export the model "
                           "from Teachable Machine again and upload the new zip.")
    return h5, metadata


#: Layer names every MobileNetV2 feature extractor has (Keras's own naming, which Teachable Machine keeps).
_MOBILENET_V2_NAMES = ("expanded_conv_depthwise", "block_1_expand", "Conv_1")


def is_teachable_machine(config: dict) -> bool:
    """Whether an architecture is shaped like a Teachable Machine image-model export.

    Teachable Machine's Keras export is a ``Sequential`` of two ``Sequential`` parts: MobileNetV2
    features (a functional model with Keras's MobileNetV2 layer names) with global pooling, and
    a head whose last layer is ``Dense(N, softmax, use_bias=False)``.

    Args:
        config: the file's architecture (original or translated).

    Returns:
        True when every part of that shape is there.
    """
    if not isinstance(config, dict) or config.get("class_name") != "Sequential":
        return False
    parts = [item for item in (config.get("config") or {}).get("layers") or []
             if isinstance(item, dict) and item.get("class_name") != "InputLayer"]
    if len(parts) != 2 or any(p.get("class_name") != "Sequential" for p in parts):
        return False
    features, head = ((p.get("config") or {}).get("layers") or [] for p in parts)
    names = set()
    for item in features:
        if isinstance(item, dict) and item.get("class_name") in ("Functional", "Model"):
            names |= {item_name(sub) for sub in (item.get("config") or {}).get("layers") or [] if isinstance(sub, dict)}
    if not all(n in names for n in _MOBILENET_V2_NAMES):
        return False
    if not any(isinstance(i, dict) and i.get("class_name") == "GlobalAveragePooling2D" for i in features):
        return False
    dense = [i for i in head if isinstance(i, dict) and i.get("class_name") == "Dense"]
    if not dense:
        return False
    last = dense[-1].get("config") or {}
    return last.get("activation") == "softmax" and last.get("use_bias") is False
