"""Every Streamlit cache of the app: models, decoded images, derived tables, stored results.

`st.cache_resource` returns the *same object to every session*: a cached model is
never trained or re-flagged in place (the engine clones it first). `st.cache_data`
functions take the big objects as leading-underscore arguments and are keyed by
the small keys before them; `remembered_key` is the one place a model's session key is built.
"""

from __future__ import annotations

import hashlib

import streamlit as st

from tlviz import jobs
from tlviz.contentkeys import image_set_key as content_image_set_key
from tlviz.contentkeys import pixels_key as content_pixels_key
from tlviz.finetune import runs_dir
from tlviz.imagesets import ImageSet, ImageSource
from tlviz.layers import layer_table
from tlviz.models import LoadedModel, load_model
from tlviz.samples import sample_path


def remembered_key(loaded: LoadedModel) -> str:
    """The key a model is remembered under in this session (history, derived tables): its file's sha256, else its
    name. Not a content key (`tlviz.contentkeys.model_key` is).

    Args:
        loaded: the `LoadedModel`.

    Returns:
        The key.
    """
    return loaded.sha256 or loaded.name


@st.cache_resource(show_spinner="Loading model…", max_entries=8)
def _cached_model(sha256: str, filename: str, _data: bytes) -> LoadedModel:
    # Keyed by content hash; the same object is shared by every session: never
    # train or re-flag it in place — clone it first.
    return load_model(_data, filename=filename)


def load_model_bytes(data: bytes, filename: str) -> LoadedModel:
    """`tlviz.models.load_model` of an uploaded file, once per content (shared by every session).

    Args:
        data: the file's bytes.
        filename: its name (the format is told by it).

    Returns:
        The `LoadedModel`.

    Raises:
        ModelRefused: the file cannot be loaded; the message says why and what to do.
    """
    return _cached_model(hashlib.sha256(data).hexdigest(), filename, data)


def load_sample_model(name: str) -> LoadedModel:
    """A bundled sample model by file name (e.g. ``"digits_base.keras"``), loaded once per server."""
    return load_model_bytes(sample_path(name).read_bytes(), name)


@st.cache_data(show_spinner=False, max_entries=16)
def _cached_images(key: str, size: tuple[int, int], channels: int, resize: str, _source: ImageSource) -> ImageSet:
    return _source.load(size, channels, resize)


def decode_images(source_key: str, loaded: LoadedModel, source: ImageSource, resize: str = "bilinear") -> ImageSet:
    """The image set of `source` at the model's input size, decoded once per source and size.

    Args:
        source_key: the source's key (``"sample:…"``, ``"zip:<sha256>"``, ``"folder:<path>"``).
        loaded: the model whose input size and channels the images take.
        source: the `ImageSource`.
        resize: the resize method. Defaults to `"bilinear"`.

    Returns:
        The `ImageSet`.

    Raises:
        ImageSetRefused: the images cannot be used; the message says why.
    """
    return _cached_images(source_key, loaded.image_size, loaded.channels, resize, source)


@st.cache_data(show_spinner="Reading layers…", max_entries=16)
def _cached_layer_table(key: str, _model):
    return layer_table(_model)


def model_layer_table(loaded: LoadedModel):
    """`tlviz.layers.layer_table` of the model, computed once per model."""
    return _cached_layer_table(remembered_key(loaded), loaded.model)


@st.cache_data(show_spinner=False, max_entries=16)
def _image_set_key(key: str, _images: ImageSet) -> str:
    return content_image_set_key(_images)


def image_set_key(key: str, images: ImageSet) -> str:
    """`tlviz.contentkeys.image_set_key` of an image set (labels and files included), hashed once per `key`."""
    return _image_set_key(key, images)


@st.cache_data(show_spinner=False, max_entries=16)
def _pixels_key(key: str, shape: tuple, _images: ImageSet) -> str:
    return content_pixels_key(_images.images)


def pixels_key(key: str, images: ImageSet) -> str:
    """`tlviz.contentkeys.pixels_key` of an image set's pixels (what runs record), hashed once per `key`."""
    return _pixels_key(key, images.images.shape, images)


@st.cache_resource(show_spinner=False, max_entries=32)
def _stored_report(kind: str, key: str, root: str):
    # One object per stored result, shared read-only by every session (reports are never changed in place).
    return jobs.stored_result(kind, key, root)


def stored_report(kind: str, key: str):
    """The stored `kind` report under `key` (`tlviz.jobs.stored_result`), read once per server; None if none."""
    root = str(runs_dir())
    return _stored_report(kind, key, root) if jobs.has_result(kind, key, root) else None
