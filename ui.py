"""Streamlit glue shared by the pages: session state, cached loading, the sidebar.

The engine lives in ``tlviz``; this module only wires it to Streamlit.

Session-state keys (initialised by `init_state`):

- ``model``: the current `tlviz.models.LoadedModel` (never trained in place).
- ``image_source``: the `tlviz.imagesets.ImageSource` of the current image set.
- ``images``: the current `tlviz.imagesets.ImageSet` at the model's input size, or None.
- ``model_error`` / ``images_error``: the last refusal message, shown until the next success.
- ``best_preset``: the best preset found on the Normalization page (None until run).
- ``inference_preset``: the preset the user says their inference code uses (default ``unit``).
- ``workspace``: this browser session's workspace token (see `workspace`).
- ``<prefix>_job``: the analysis job a page is following (see `analysis`), or None.
"""

from __future__ import annotations

import hashlib
import re
import runpy
import secrets
from pathlib import Path

import streamlit as st

from tlviz import jobs
from tlviz.errors import ImageSetRefused, ModelRefused, TlvizError
from tlviz.imagesets import ImageSet, ImageSource, check_server_folder, open_source, server_folder_roots
from tlviz.layers import layer_table
from tlviz.models import LoadedModel, load_model, max_model_bytes
from tlviz.samples import SAMPLE_IMAGE_SETS, SAMPLE_MODELS, sample_path

DEFAULT_MODEL = "digits_base.keras"
DEFAULT_IMAGES = "digits_0_4"


@st.cache_resource(show_spinner="Loading model…", max_entries=8)
def _cached_model(sha256: str, filename: str, _data: bytes) -> LoadedModel:
    # Keyed by content hash; the same object is shared by every session: never
    # train or re-flag it in place — clone it first.
    return load_model(_data, filename=filename)


#: File types the model uploader takes: the loadable ones, and the ones that get a specific answer.
MODEL_UPLOAD_TYPES = ["keras", "h5", "hdf5", "zip", "pb", "json", "tflite", "pt", "pth", "onnx"]


def _load_model_bytes(data: bytes, filename: str) -> LoadedModel:
    sha = hashlib.sha256(data).hexdigest()
    return _cached_model(sha, filename, data)


def _load_sample_model(name: str) -> LoadedModel:
    path = sample_path(name)
    loaded = _load_model_bytes(path.read_bytes(), name)
    return loaded


@st.cache_data(show_spinner=False, max_entries=16)
def _cached_images(key: str, size: tuple[int, int], channels: int, resize: str, _source: ImageSource) -> ImageSet:
    return _source.load(size, channels, resize)


def freeze_startup_objects() -> None:
    """Exclude what the server loaded at start (TensorFlow, Keras, the sample model) from garbage collection.

    Keras's ``clear_session``, which Streamlit calls after every script run, runs a
    full collection; without this it walks every TensorFlow object each time (about
    0.1 s holding the GIL), which under many sessions starves the light pages.
    Only done once per server process; objects created later are collected as usual.
    """
    import gc

    if not getattr(freeze_startup_objects, "done", False):
        gc.collect()
        gc.freeze()
        freeze_startup_objects.done = True


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
    workspace()
    if st.session_state["model"] is None and st.session_state["model_error"] is None:
        set_model(_load_sample_model(DEFAULT_MODEL))
    if st.session_state["image_source"] is None and st.session_state["images_error"] is None:
        set_image_source(open_source(sample_path(DEFAULT_IMAGES)), f"sample:{DEFAULT_IMAGES}")


def set_model(loaded: LoadedModel) -> None:
    """Make `loaded` current and re-decode the image set at its input size."""
    st.session_state["model"] = loaded
    st.session_state["model_error"] = None
    st.session_state["best_preset"] = None
    _reload_images()


def set_image_source(source: ImageSource, key: str) -> None:
    st.session_state["image_source"] = source
    st.session_state["image_source_key"] = key
    st.session_state["best_preset"] = None
    _reload_images()


def _reload_images() -> None:
    source = st.session_state.get("image_source")
    loaded = st.session_state.get("model")
    if source is None or loaded is None:
        return
    try:
        with st.spinner("Decoding images…"):
            st.session_state["images"] = _cached_images(
                st.session_state["image_source_key"], loaded.image_size, loaded.channels, "bilinear", source)
        st.session_state["images_error"] = None
    except ImageSetRefused as exc:
        st.session_state["images_error"] = str(exc)


def current() -> tuple[LoadedModel | None, ImageSet | None]:
    """The current model and image set (either may be None)."""
    return st.session_state.get("model"), st.session_state.get("images")


def require_model() -> LoadedModel:
    loaded = st.session_state.get("model")
    if loaded is None:
        st.info("Load a model in the sidebar first.")
        st.stop()
    return loaded


def require_images() -> tuple[LoadedModel, ImageSet]:
    loaded = require_model()
    images = st.session_state.get("images")
    if images is None:
        st.info("Load an image set in the sidebar first (a .zip or a folder with one sub-folder per class).")
        st.stop()
    return loaded, images


@st.cache_data(show_spinner="Reading layers…", max_entries=16)
def _cached_layer_table(model_key: str, _model):
    return layer_table(_model)


def current_layer_table(loaded: LoadedModel):
    """`tlviz.layers.layer_table` of the loaded model, computed once per model."""
    return _cached_layer_table(loaded.sha256 or loaded.name, loaded.model)


def images_key() -> str:
    """A cache key for the current image set (its source and how it was decoded)."""
    images = st.session_state.get("images")
    if images is None:
        return ""
    return f"{st.session_state.get('image_source_key')}|{images.image_size}|{len(images)}|{images.resize}"


def image_source() -> ImageSource | None:
    return st.session_state.get("image_source")


def is_sample() -> bool:
    """Whether a bundled sample model and sample image set are loaded (cheap to analyse at once)."""
    loaded = st.session_state.get("model")
    return (loaded is not None and loaded.filename in SAMPLE_MODELS
            and str(st.session_state.get("image_source_key") or "").startswith("sample:"))


@st.cache_data(show_spinner=False, max_entries=16)
def _content_key(key: str, _images: ImageSet) -> str:
    return jobs.image_key(_images)


def content_key() -> str:
    """`tlviz.jobs.image_key` of the current image set (hashed once per image set)."""
    return _content_key(images_key(), st.session_state.get("images"))


# -- heavy analyses in a worker process ----------------------------------------------

ANALYSIS_POLL_S = 2.0
#: A job waiting in the queue changes rarely: its page polls less often (each poll is a script run).
QUEUED_POLL_S = 4.0


@st.cache_resource(show_spinner=False, max_entries=32)
def _stored_report(kind: str, key: str, root: str):
    # One object per stored result, shared read-only by every session (reports are never changed in place).
    return jobs.stored_result(kind, key, root)


def _report(kind: str, key: str):
    from tlviz.finetune.store import runs_dir

    root = str(runs_dir())
    return _stored_report(kind, key, root) if jobs.has_result(kind, key, root) else None


def queue_text(position: int | None) -> str:
    """"Waiting for a free worker: 2 jobs ahead" for a job's place in the queue (1 = next)."""
    ahead = max((position or 1) - 1, 0)
    return f"Waiting for a free worker: {ahead} job{'' if ahead == 1 else 's'} ahead"


def _cancel(job_id: str) -> None:
    try:
        jobs.cancel_analysis(job_id)
    except TlvizError:
        pass


def _job_panel(job_id: str, prefix: str, drawn_state: str = "running") -> None:
    status = jobs.poll_analysis(job_id)
    if not status.active or status.state != drawn_state:
        st.rerun()  # the whole page: the result (or the failure), or a panel polling at the new state's pace
    with st.container(border=True):
        if status.state == "queued":
            st.progress(0.0, text=queue_text(status.queue_position))
        else:
            st.progress(status.fraction, text=status.text or "Starting the worker…")
        st.button("Cancel", key=f"{prefix}_cancel", icon=":material/stop:", on_click=_cancel, args=(job_id,),
                  help="Stops the analysis; nothing partial is kept.")
        st.caption("Measured in a separate worker process: the other pages stay usable meanwhile.")


def analysis(kind: str, params: dict | None = None, *, start: bool = False, auto: bool = False,
             prefix: str) -> tuple[object | None, str | None]:
    """The current model's `kind` report (``"normalize"`` or ``"diagnose"``), run in a worker when needed.

    A stored result is returned at once (`tlviz.jobs` computes each one once).
    Otherwise this session's latest job for it is followed: a polling fragment
    shows its progress, place in the queue and a Cancel button; a failure shows
    its message.

    Args:
        kind: ``"normalize"`` or ``"diagnose"``.
        params: the job's parameters (`tlviz.jobs.start_analysis`).
        start: start a job unless one is running (the page's button was pressed).
        auto: start one if this session never started one for these inputs.
        prefix: the page's widget-key prefix.

    Returns:
        ``(report, note)``: the report, or the one this page showed last for the
        same model and image set (with a sentence saying so in `note`), or
        ``(None, None)`` when nothing was measured yet.
    """
    loaded, images = current()
    source, owner, ikey = image_source(), workspace(), content_key()
    pair = (loaded.sha256 or loaded.name, ikey)
    try:
        key = jobs.analysis_key(kind, loaded, images, params, source=source, image_key=ikey)
        report = _report(kind, key)
        job_id = None if report is not None else jobs.latest_job(kind, key, owner)
        status = jobs.poll_analysis(job_id) if job_id else None
        if report is None and (start or (auto and status is None)) and (status is None or not status.active):
            job_id = jobs.start_analysis(kind, loaded, images, params, source=source, owner=owner, image_key=ikey)
            status = jobs.poll_analysis(job_id)
            report = _report(kind, key)
    except TlvizError as exc:
        st.error(str(exc), icon=":material/block:")
        report, status = None, None
    st.session_state[f"{prefix}_job"] = None
    if report is not None:
        st.session_state[f"_{prefix}_shown"] = (pair, kind, key)
        if not jobs.can_reopen(source):
            st.caption(jobs.NO_SOURCE_NOTE)
        return report, None
    if status is not None and status.active:
        st.session_state[f"{prefix}_job"] = status.job_id
        every = QUEUED_POLL_S if status.state == "queued" else ANALYSIS_POLL_S
        st.fragment(run_every=every)(_job_panel)(status.job_id, prefix, status.state)
    elif status is not None and status.state == "failed":
        st.error(status.message, icon=":material/block:")
    elif status is not None and status.state == "cancelled":
        st.info("The analysis was cancelled.", icon=":material/stop_circle:")
    shown = st.session_state.get(f"_{prefix}_shown")
    if shown and shown[0] == pair and shown[1] == kind:
        earlier = _report(kind, shown[2])
        if earlier is not None:
            return earlier, "Below: the earlier result for this model and image set, until a new one is ready."
    return None, None


# -- page shell ----------------------------------------------------------------

_WORKSPACE = re.compile(r"^[0-9a-f]{24}$")


def workspace() -> str:
    """This session's workspace token: the owner of the fine-tuning runs it starts.

    Every browser session gets a random token, so people sharing a server never
    see each other's runs. It is kept in the page's address (``?ws=…``) so a
    reload or a bookmarked link finds its runs again.
    """
    ws = st.session_state.get("workspace")
    if ws is None:
        asked = st.query_params.get("ws", "")
        ws = asked if _WORKSPACE.match(asked) else secrets.token_hex(12)
        st.session_state["workspace"] = ws
    if st.query_params.get("ws") != ws:
        st.query_params["ws"] = ws
    return ws


def mark_shell_drawn() -> None:
    """Called by the router after it has drawn the sidebar for this script run."""
    st.session_state["_shell_drawn"] = True


#: The router. A page runs it when Streamlit ran the page without it (see `page_start`).
ENTRY_SCRIPT = Path(__file__).resolve().parent / "app.py"


def page_start() -> None:
    """First call of every page.

    The router (app.py) normally initialises state and draws the sidebar, and
    marks it with `mark_shell_drawn`. When it did not run:

    - on a freshly started server whose ``pages/`` folder Streamlit still treats
      as a legacy multipage app (a page URL opened directly before any session
      ran `st.navigation`; also every run of Streamlit's AppTest), this switches
      the legacy mode off and runs the router in this script run instead: it
      draws the sidebar and this same page (the address is unchanged), then
      this run stops. Done in the same run rather than with `st.rerun`, so the
      widget event that started the run (a button click) is not lost;
    - otherwise (``streamlit run pages/x.py``), this draws them itself.
    """
    if st.session_state.pop("_shell_drawn", False):
        return
    if _leave_legacy_pages_mode():
        runpy.run_path(str(ENTRY_SCRIPT), run_name="__main__")
        st.stop()
    init_state()
    sidebar()


def _leave_legacy_pages_mode() -> bool:
    """Switch off Streamlit's legacy ``pages/`` discovery; whether it was on.

    Streamlit (1.67) decides per server process, in
    ``PagesManager.uses_pages_directory``, whether a ``pages/`` folder next to
    the entry script makes a legacy multipage app, which runs a page without
    the entry script; `st.navigation` sets it to False on its first call.

    Returns:
        True when the legacy mode was on (and is now off).
    """
    try:
        from streamlit.runtime.pages_manager import PagesManager
    except ImportError:  # another Streamlit: the page draws the shell itself
        return False
    if not getattr(PagesManager, "uses_pages_directory", False):
        return False
    PagesManager.uses_pages_directory = False
    return True


# -- sidebar -----------------------------------------------------------------

def _sticky(key: str) -> str:
    """Widget key `key`, restored from ``keep_<key>`` if Streamlit dropped it.

    Streamlit forgets a widget's value when a run does not draw it (e.g. after a
    page switch drew it from another script context); the choice is kept
    separately so the loaded model never silently changes.
    """
    st.session_state[key] = st.session_state["keep_" + key]
    return key


def _keep(key: str) -> None:
    st.session_state["keep_" + key] = st.session_state[key]


def _upload_mb() -> int:
    """Streamlit's per-file upload limit (``server.maxUploadSize``, MB)."""
    return int(st.get_option("server.maxUploadSize"))


def _upload_limit_note() -> None:
    model_mb = max_model_bytes() // 2**20
    if _upload_mb() < model_mb:
        st.caption(f"TLVIZ_MAX_MODEL_MB allows {model_mb} MB but the server accepts uploads up to {_upload_mb()} MB: "
                   f"start it with `--server.maxUploadSize {model_mb}` to upload larger models.")


def sidebar() -> None:
    """Model and image-set pickers plus a one-line summary of what is loaded."""
    with st.sidebar:
        st.subheader("Model")
        kind = st.radio("Model source", ["Sample", "Upload"], horizontal=True, key=_sticky("model_kind"),
                        label_visibility="collapsed", on_change=_keep, args=("model_kind",))
        if kind == "Sample":
            choice = st.selectbox("Sample model", SAMPLE_MODELS, key=_sticky("model_choice"),
                                  on_change=_keep, args=("model_choice",))
            loaded = st.session_state.get("model")
            if loaded is None or loaded.filename != choice:
                set_model(_load_sample_model(choice))
        else:
            up = st.file_uploader(f"Keras model: .keras, Keras 2 .h5, or a Teachable Machine Keras export .zip "
                                  f"(up to {min(max_model_bytes() // 2**20, _upload_mb())} MB)",
                                  type=MODEL_UPLOAD_TYPES, key="model_upload",
                                  help="Other formats (SavedModel, TF.js model.json, TFLite, PyTorch, ONNX) are "
                                       "named with the command that converts them, where one exists.")
            _upload_limit_note()
            if up is not None and st.session_state.get("_model_upload_id") != up.file_id:
                st.session_state["_model_upload_id"] = up.file_id
                try:
                    set_model(_load_model_bytes(up.getvalue(), up.name))
                except ModelRefused as exc:
                    st.session_state["model_error"] = str(exc)
        if st.session_state.get("model_error"):
            st.error(st.session_state["model_error"], icon=":material/block:")
            if st.session_state.get("model") is not None:
                st.caption(f"Still using the previous model: {st.session_state['model'].filename}")

        st.subheader("Image set")
        kinds = ["Sample", "Upload .zip"] + (["Server folder"] if server_folder_roots() != [] else [])
        if st.session_state.get("keep_images_kind") not in kinds:
            st.session_state["keep_images_kind"] = "Sample"
        ikind = st.radio("Image source", kinds, horizontal=True,
                         key=_sticky("images_kind"), label_visibility="collapsed",
                         on_change=_keep, args=("images_kind",))
        if ikind == "Sample":
            ichoice = st.selectbox("Sample image set", SAMPLE_IMAGE_SETS, key=_sticky("images_choice"),
                                   on_change=_keep, args=("images_choice",))
            if st.session_state.get("image_source_key") != f"sample:{ichoice}":
                set_image_source(open_source(sample_path(ichoice)), f"sample:{ichoice}")
        elif ikind == "Upload .zip":
            up = st.file_uploader(f"Zip of class folders (up to {_upload_mb()} MB)", type=["zip"], key="images_upload")
            if up is not None and st.session_state.get("_images_upload_id") != up.file_id:
                st.session_state["_images_upload_id"] = up.file_id
                data = up.getvalue()
                try:
                    src = ImageSource.from_zip(data, up.name)
                    set_image_source(src, "zip:" + hashlib.sha256(data).hexdigest())
                except ImageSetRefused as exc:
                    st.session_state["images_error"] = str(exc)
        else:
            roots = server_folder_roots()
            folder = st.text_input("Folder on the server", key="images_folder",
                                   placeholder="/data/my_images (one sub-folder per class)",
                                   help=None if roots is None else
                                   "This server shares: " + ", ".join(f"`{r}`" for r in roots))
            if st.button("Load folder", key="images_folder_load") and folder:
                try:
                    path = check_server_folder(folder)
                    set_image_source(open_source(path), f"folder:{path}")
                except ImageSetRefused as exc:
                    st.session_state["images_error"] = str(exc)
        if st.session_state.get("images_error"):
            st.error(st.session_state["images_error"], icon=":material/block:")

        st.divider()
        loaded, images = current()
        if loaded is not None:
            st.markdown(f"**{loaded.name}** · input {_shape(loaded.input_shape)} · {loaded.n_outputs} outputs")
        if images is not None:
            n_classes = len(images.class_names)
            if n_classes < 2:
                note = " · :orange[one class only]"
            elif loaded is not None and not images.matches(loaded.n_outputs):
                note = " · :orange[classes ≠ outputs]"
            else:
                note = ""
            st.markdown(f"**{len(images)} images** · {n_classes} class{'es' if n_classes != 1 else ''}{note}")
            if images.skipped:
                st.caption(f"{len(images.skipped)} files skipped (see Model & images)")


def _shape(shape) -> str:
    return "×".join("?" if d is None else str(d) for d in shape)
