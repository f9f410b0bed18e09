"""Session state: the current model and image set, the workspace token.

Session-state keys (initialised by `init_state`, at the top of the router):

- ``model``: the current `tlviz.models.LoadedModel` (never trained in place).
- ``image_source``: the `tlviz.imagesets.ImageSource` of the current image set;
  ``image_source_key`` its key (``"sample:…"``, ``"zip:<sha256>"``, ``"folder:<path>"``).
- ``images``: the current `tlviz.imagesets.ImageSet` at the model's input size, or None;
  ``images_for`` the ``(image_source_key, model key)`` it was decoded (or refused) for, set only once
  the decoding finished (see `ensure_images`).
- ``model_error`` / ``images_error``: the last refusal message, shown until the next success.
- ``best_preset``: the best preset found on the Normalization page (None until run).
- ``inference_preset``: the preset the user says their inference code uses (default ``unit``).
- ``keep_<widget key>``: the sidebar's choices (see `ui.sidebar`).
- ``workspace``: this browser session's workspace token (see `workspace`).
- ``<prefix>_job``: the analysis job a page is following (see `ui.analysis`), or None.
- ``model_history``: models made current from a repair and the models they replaced (see
  `adopt_model`), newest first, so nothing is lost; ``keep_model_history`` the one the sidebar's
  history picker shows (`ui.history`).
"""

from __future__ import annotations

import re
import secrets

import streamlit as st

from tlviz.errors import ImageSetRefused
from tlviz.imagesets import ImageSet, ImageSource, open_source
from tlviz.models import LoadedModel
from tlviz.samples import SAMPLE_MODELS, sample_path
from ui import cache, signin

DEFAULT_MODEL = "digits_base.keras"
DEFAULT_IMAGES = "digits_0_4"
#: The sidebar's model-source choice that lists `model_history`.
HISTORY_KIND = "History"
#: At most this many models are kept in a session's history (each one held in memory).
HISTORY_MAX = 6


def init_state() -> None:
    """Initialise session state; on first start preload the sample model and image set."""
    st.session_state.setdefault("model", None)
    st.session_state.setdefault("image_source", None)
    st.session_state.setdefault("image_source_key", None)
    st.session_state.setdefault("images", None)
    st.session_state.setdefault("model_error", None)
    st.session_state.setdefault("images_error", None)
    st.session_state.setdefault("best_preset", None)
    st.session_state.setdefault("inference_preset", "unit")
    st.session_state.setdefault("keep_model_kind", "Sample")
    st.session_state.setdefault("keep_model_choice", DEFAULT_MODEL)
    st.session_state.setdefault("keep_images_kind", "Sample")
    st.session_state.setdefault("keep_images_choice", DEFAULT_IMAGES)
    st.session_state.setdefault("model_history", [])
    st.session_state.setdefault("keep_model_history", None)
    workspace()
    if st.session_state["model"] is None and st.session_state["model_error"] is None:
        set_model(cache.load_sample_model(DEFAULT_MODEL))
    if st.session_state["image_source"] is None and st.session_state["images_error"] is None:
        set_image_source(open_source(sample_path(DEFAULT_IMAGES)), f"sample:{DEFAULT_IMAGES}")


def set_model(loaded: LoadedModel) -> None:
    """Make `loaded` current and re-decode the image set at its input size."""
    st.session_state["model"] = loaded
    st.session_state["model_error"] = None
    st.session_state["best_preset"] = None
    _reload_images()


def model_history() -> list[dict]:
    """The session's model history, newest first: ``{"key", "label", "loaded"}`` per model."""
    return list(st.session_state.get("model_history") or [])


def _remember(loaded: LoadedModel, label: str) -> str:
    """Put `loaded` first in the history (once per model) and return its key."""
    key = cache.remembered_key(loaded)
    history = [h for h in model_history() if h["key"] != key]
    st.session_state["model_history"] = [{"key": key, "label": label, "loaded": loaded}] + history[:HISTORY_MAX - 1]
    return key


def adopt_model(loaded: LoadedModel, label: str, previous_label: str | None = None) -> None:
    """Make `loaded` (e.g. a repaired copy) current; the model it replaces stays in the sidebar's history.

    Args:
        loaded: the new current model.
        label: how the history lists it.
        previous_label: how the history lists the model it replaces. Defaults to its file name.
    """
    previous = st.session_state.get("model")
    if previous is not None and not any(h["key"] == cache.remembered_key(previous) for h in model_history()):
        _remember(previous, previous_label or previous.filename or previous.name)
    key = _remember(loaded, label)
    st.session_state["keep_model_kind"] = HISTORY_KIND
    st.session_state["keep_model_history"] = key
    set_model(loaded)


def use_history(key: str) -> None:
    """Make the history's model `key` current again (nothing happens for an unknown key)."""
    entry = next((h for h in model_history() if h["key"] == key), None)
    if entry is None:
        return
    st.session_state["keep_model_history"] = key
    current_model = st.session_state.get("model")
    if current_model is None or cache.remembered_key(current_model) != key:
        set_model(entry["loaded"])


def set_image_source(source: ImageSource, key: str) -> None:
    """Make `source` (under `key`, see the module docstring) the current image set and decode it."""
    st.session_state["image_source"] = source
    st.session_state["image_source_key"] = key
    st.session_state["best_preset"] = None
    _reload_images()


def _images_target() -> tuple[str, str] | None:
    """What ``images`` must be decoded for: ``(image_source_key, model key)``; None without both."""
    source, loaded = st.session_state.get("image_source"), st.session_state.get("model")
    if source is None or loaded is None:
        return None
    return st.session_state["image_source_key"], cache.remembered_key(loaded)


def _reload_images() -> None:
    target = _images_target()
    if target is None:
        return
    try:
        with st.spinner("Decoding images…"):
            images = cache.decode_images(target[0], st.session_state["model"], st.session_state["image_source"])
        st.session_state["images"] = images
        st.session_state["images_error"] = None
    except ImageSetRefused as exc:
        st.session_state["images_error"] = str(exc)
    # Recorded only now, after the decoding finished or was refused: a rerun that interrupts it
    # (a click while "Decoding images…" shows) leaves the record behind, and `ensure_images` redoes it.
    st.session_state["images_for"] = target


def ensure_images() -> None:
    """Decode the image set for the current model and source unless that was done (or refused) already.

    Called on every run of the router: the current model, the image source and ``images`` never
    disagree for longer than one run, whatever rerun interrupted the work that changed them.
    """
    target = _images_target()
    if target is not None and st.session_state.get("images_for") != target:
        _reload_images()


def current() -> tuple[LoadedModel | None, ImageSet | None]:
    """The current model and image set (either may be None)."""
    return st.session_state.get("model"), st.session_state.get("images")


def require_model() -> LoadedModel:
    """The current model; without one, say to load one and stop the page."""
    loaded = st.session_state.get("model")
    if loaded is None:
        st.info("Load a model in the sidebar first.")
        st.stop()
    return loaded


def require_images() -> tuple[LoadedModel, ImageSet]:
    """The current model and image set; without both, say what to load and stop the page."""
    loaded = require_model()
    images = st.session_state.get("images")
    if images is None:
        st.info("Load an image set in the sidebar first (a .zip or a folder with one sub-folder per class).")
        st.stop()
    return loaded, images


def current_layer_table(loaded: LoadedModel):
    """`tlviz.layers.layer_table` of the loaded model, computed once per model."""
    return cache.model_layer_table(loaded)


def source_key() -> str:
    """A cache key for the current image set (its source and how it was decoded)."""
    images = st.session_state.get("images")
    if images is None:
        return ""
    return f"{st.session_state.get('image_source_key')}|{images.image_size}|{len(images)}|{images.resize}"


def image_source() -> ImageSource | None:
    """The `ImageSource` of the current image set, or None."""
    return st.session_state.get("image_source")


def is_sample() -> bool:
    """Whether a bundled sample model and sample image set are loaded (cheap to analyse at once)."""
    loaded = st.session_state.get("model")
    return (loaded is not None and loaded.filename in SAMPLE_MODELS
            and str(st.session_state.get("image_source_key") or "").startswith("sample:"))


def image_set_key() -> str:
    """`tlviz.contentkeys.image_set_key` of the current image set (hashed once per image set)."""
    return cache.image_set_key(source_key(), st.session_state.get("images"))


def pixels_key() -> str:
    """`tlviz.contentkeys.pixels_key` of the current image set's pixels (hashed once per image set)."""
    return cache.pixels_key(str(st.session_state.get("image_source_key")), st.session_state.get("images"))


_WORKSPACE = re.compile(r"^[0-9a-f]{24}$")


def workspace() -> str:
    """This session's workspace token: the owner of the runs, jobs and results it starts.

    Signed in (`ui.signin`), it is the person's own owner token (`tlviz.signin.owner_of`): the same
    space from any browser, and no address can lead into another person's. Without sign-in every
    browser session gets a random token, so people sharing a server never see each other's runs; it
    is kept in the page's address (``?ws=…``) so a reload or a bookmarked link finds its runs again.
    """
    owner = st.session_state.get(signin.OWNER_KEY)
    if owner:
        st.session_state["workspace"] = owner
        if "ws" in st.query_params:  # a workspace link means nothing once signed in
            del st.query_params["ws"]
        return owner
    ws = st.session_state.get("workspace")
    if ws is None:
        asked = st.query_params.get("ws", "")
        ws = asked if _WORKSPACE.match(asked) else secrets.token_hex(12)
        st.session_state["workspace"] = ws
    if st.query_params.get("ws") != ws:
        st.query_params["ws"] = ws
    return ws
