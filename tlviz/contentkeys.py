"""Content keys: what a result measured on a model and an image set is stored and found under.

One implementation of each key, used by the job system, the activation cache, the run store and the pages:

* `pixels_key(array)`: the pixels of an image array (shape, dtype, bytes);
* `image_set_key(images)`: an `ImageSet`: its pixels, labels, class names, file names and resize method,
  so two sets with the same pixels but other labels never share results;
* `weights_key(model)`: a model's weights, for models without a file;
* `model_key(loaded)`: a `LoadedModel`: its file's sha256, else `weights_key` of its model.
"""
from __future__ import annotations

import hashlib
import json

import numpy as np


def _bytes_view(arr: np.ndarray) -> memoryview:
    """The array's bytes for hashing, without a copy when it is contiguous (``tobytes`` always copies)."""
    return memoryview(np.ascontiguousarray(arr).reshape(-1).view(np.uint8))


def pixels_key(images: np.ndarray) -> str:
    """A content hash of an image array (shape, dtype and pixels): 20 hex characters."""
    h = hashlib.sha1()
    h.update(str((images.shape, str(images.dtype))).encode())
    h.update(_bytes_view(images))
    return h.hexdigest()[:20]


def weights_key(model) -> str:
    """A hash of a model's weights, for models without a file hash: 20 hex characters."""
    h = hashlib.sha1()
    for w in model.get_weights():
        h.update(_bytes_view(w))
    return h.hexdigest()[:20]


def model_key(loaded) -> str:
    """The model's content key: its file's sha256, else `weights_key` of its model."""
    return loaded.sha256 or weights_key(loaded.model)


def image_set_key(images, pixels: str | None = None) -> str:
    """A content key of an image set: its pixels, labels, class names, file names and resize method.

    Args:
        images: the `ImageSet`.
        pixels: `pixels_key` of its pixels, if already computed. Defaults to computing it.

    Returns:
        A 24-character hex string.
    """
    h = hashlib.sha1((pixels or pixels_key(images.images)).encode())
    h.update(np.ascontiguousarray(np.asarray(images.labels, dtype=np.int64)).tobytes())
    h.update(json.dumps([list(images.class_names), [str(f) for f in images.files], images.resize]).encode())
    return h.hexdigest()[:24]
