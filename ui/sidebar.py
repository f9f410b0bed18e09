"""The sidebar: model and image-set pickers, a one-line summary of what is loaded, and the runs folder's disk use."""

from __future__ import annotations

import hashlib

import streamlit as st

from tlviz import diskcap
from tlviz.errors import ConfigError, ImageSetRefused, ModelRefused, TlvizError
from tlviz.finetune import runs_dir
from tlviz.jobs import default_executor, describe_executor, last_cluster
from tlviz.imagesets import ImageSource, check_server_folder, open_source, server_folder_roots
from tlviz.models import max_model_bytes
from tlviz.samples import SAMPLE_IMAGE_SETS, SAMPLE_MODELS, sample_path
from ui import cache
from ui.history import history_picker
from ui.state import HISTORY_KIND, current, ensure_images, model_history, set_image_source, set_model

#: File types the model uploader takes: the loadable ones, and the ones that get a specific answer.
MODEL_UPLOAD_TYPES = ["keras", "h5", "hdf5", "zip", "pb", "json", "tflite", "pt", "pth", "onnx"]


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
    """Model and image-set pickers, a one-line summary of what is loaded, and the runs folder's disk use."""
    with st.sidebar:
        _model_picker()
        _images_picker()
        ensure_images()  # an image set whose decoding a rerun interrupted is decoded now
        st.divider()
        _summary()
        _runs_folder()


def _model_picker() -> None:
    st.subheader("Model")
    kinds = ["Sample", "Upload"] + ([HISTORY_KIND] if model_history() else [])  # see ui.history
    if st.session_state.get("keep_model_kind") not in kinds:
        st.session_state["keep_model_kind"] = "Sample"
    kind = st.radio("Model source", kinds, horizontal=True, key=_sticky("model_kind"),
                    label_visibility="collapsed", on_change=_keep, args=("model_kind",))
    if kind == HISTORY_KIND:
        history_picker()
    elif kind == "Sample":
        choice = st.selectbox("Sample model", SAMPLE_MODELS, key=_sticky("model_choice"),
                              on_change=_keep, args=("model_choice",))
        loaded = st.session_state.get("model")
        if loaded is None or loaded.filename != choice:
            set_model(cache.load_sample_model(choice))
    else:
        up = st.file_uploader(f"Keras model: .keras, Keras 2 .h5, or a Teachable Machine Keras export .zip "
                              f"(up to {min(max_model_bytes() // 2**20, _upload_mb())} MB)",
                              type=MODEL_UPLOAD_TYPES, key="model_upload",
                              help="Other formats (SavedModel, TF.js model.json, TFLite, PyTorch, ONNX) are "
                                   "named with the command that converts them, where one exists.")
        _upload_limit_note()
        if up is not None and st.session_state.get("_model_upload_id") != up.file_id:
            # Marked handled only once loaded (or refused, with its message): a rerun that interrupts the
            # load (the next click, within a second of choosing the file) finds it unhandled and loads it.
            try:
                set_model(cache.load_model_bytes(up.getvalue(), up.name))
            except ModelRefused as exc:
                st.session_state["model_error"] = str(exc)
            st.session_state["_model_upload_id"] = up.file_id
    if st.session_state.get("model_error"):
        st.error(st.session_state["model_error"], icon=":material/block:")
        if st.session_state.get("model") is not None:
            st.caption(f"Still using the previous model: {st.session_state['model'].filename}")


def _images_picker() -> None:
    st.subheader("Image set")
    kinds = ["Sample", "Upload .zip"] + (["Server folder"] if server_folder_roots() != [] else [])
    if st.session_state.get("keep_images_kind") not in kinds:
        st.session_state["keep_images_kind"] = "Sample"
    ikind = st.radio("Image source", kinds, horizontal=True, key=_sticky("images_kind"),
                     label_visibility="collapsed", on_change=_keep, args=("images_kind",))
    if ikind == "Sample":
        ichoice = st.selectbox("Sample image set", SAMPLE_IMAGE_SETS, key=_sticky("images_choice"),
                               on_change=_keep, args=("images_choice",))
        if st.session_state.get("image_source_key") != f"sample:{ichoice}":
            set_image_source(open_source(sample_path(ichoice)), f"sample:{ichoice}")
    elif ikind == "Upload .zip":
        up = st.file_uploader(f"Zip of class folders (up to {_upload_mb()} MB)", type=["zip"], key="images_upload")
        if up is not None and st.session_state.get("_images_upload_id") != up.file_id:
            data = up.getvalue()
            try:
                src = ImageSource.from_zip(data, up.name)
                set_image_source(src, "zip:" + hashlib.sha256(data).hexdigest())
            except ImageSetRefused as exc:
                st.session_state["images_error"] = str(exc)
            st.session_state["_images_upload_id"] = up.file_id  # handled: see the model upload
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


def _summary() -> None:
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
    _where_runs_run()


def _where_runs_run() -> None:
    """Where fine-tuning runs go (this machine or a Ray cluster, with what it held) and where the last one ran."""
    line = f"Fine-tuning runs on: {describe_executor()}"
    try:
        cluster = last_cluster() if default_executor() == "ray" else None  # what the last job found there
    except TlvizError:  # a nonsensical TLVIZ_RAY_ADDRESS (said above) or no runs folder
        cluster = None
    if cluster:
        line += (f" ({int(cluster.get('nodes') or 0)} node(s), {int(cluster.get('CPU') or 0)} CPUs, "
                 f"{int(cluster.get('GPU') or 0)} GPUs at the last job)")
    st.caption(line)
    if st.session_state.get("ft_last_ran_on"):
        st.caption(f"Last run: {st.session_state['ft_last_ran_on']}")


@st.cache_data(ttl=30, show_spinner=False, max_entries=16)
def _space_used(folder: str) -> int:
    """The runs folder's size (a walk of every file), at most once per 30 s per folder for the whole server."""
    return diskcap.space_used(folder)


def _runs_folder() -> None:
    """How much disk the runs folder takes, against its cap (``TLVIZ_RUNS_MAX_GB``)."""
    try:
        folder = str(runs_dir())
        used = _space_used(folder)
    except TlvizError:  # no writable runs folder: the pages that need one say so
        return
    try:
        st.caption(diskcap.space_text(used, diskcap.max_bytes()))
    except ConfigError as exc:  # a bad TLVIZ_RUNS_MAX_GB: starting a job will refuse with the same message
        st.caption(f"Runs folder: {diskcap.format_bytes(used)}. :orange[{exc}]")


def _shape(shape) -> str:
    return "×".join("?" if d is None else str(d) for d in shape)
