"""The original task (optional): a second image set whose accuracy each run reports before and after."""

from __future__ import annotations

import streamlit as st

from tlviz.errors import ImageSetRefused
from tlviz.finetune import RunRefused, original_labels


def _original_refused(message: str) -> None:
    st.session_state["ft_original_error"] = message
    st.session_state.pop("ft_original_source", None)
    st.session_state.pop("ft_original_key", None)


def original_task(loaded) -> None:
    """An optional second image set: the model's original task, whose accuracy each run reports before and after.

    A sample set or an uploaded ``.zip`` (one sub-folder per class); it is decoded at the model's input size and
    must match the model's outputs (`tlviz.finetune.retention.original_labels`), else it is refused with the
    reason and the previous choice is kept.
    """
    import hashlib

    from tlviz.imagesets import ImageSource, open_source
    from tlviz.samples import SAMPLE_IMAGE_SETS, sample_path

    chosen = current_original(loaded)
    title = "Original task (optional): how much of it survives each run"
    if chosen is not None:
        title += f" · {chosen.source or 'loaded'} ({len(chosen)} images)"
    with st.expander(title, expanded=bool(st.session_state.get("ft_original_error"))):
        st.caption("Load the images of the task the model file was trained for (its classes are the model's outputs, "
                   "with its original head still in the file). Each run then scores that task with the original "
                   "head on the base as the run left it, before and after, on the same images.")
        kind = st.radio("Original task's images", ["None", "Sample", "Upload .zip"], horizontal=True,
                        key="ft_original_kind", label_visibility="collapsed")
        if kind == "None":
            st.session_state.pop("ft_original_source", None)
            st.session_state.pop("ft_original_key", None)
            st.session_state.pop("ft_original_error", None)
        elif kind == "Sample":
            name = st.selectbox("Sample image set", SAMPLE_IMAGE_SETS, key="ft_original_sample")
            if st.session_state.get("ft_original_key") != f"sample:{name}":
                _use_original(loaded, open_source(sample_path(name)), f"sample:{name}")
        else:
            up = st.file_uploader("Zip of class folders", type=["zip"], key="ft_original_upload")
            if up is not None and st.session_state.get("_ft_original_upload_id") != up.file_id:
                data = up.getvalue()
                try:
                    _use_original(loaded, ImageSource.from_zip(data, up.name),
                                  "zip:" + hashlib.sha256(data).hexdigest())
                except ImageSetRefused as exc:
                    _original_refused(str(exc))
                # Marked handled only once used or refused: an interrupting rerun tries it again.
                st.session_state["_ft_original_upload_id"] = up.file_id
        if st.session_state.get("ft_original_error"):
            st.error(st.session_state["ft_original_error"], icon=":material/block:")
        chosen = current_original(loaded)
        if chosen is not None:
            st.caption(f"Each new run reports the original task on **{len(chosen)} images** of "
                       f"{len(chosen.class_names)} classes ({', '.join(chosen.class_names[:8])}).")


def _use_original(loaded, source, key: str) -> None:
    from ui.cache import decode_images

    try:
        images = decode_images(key, loaded, source)
        original_labels(loaded, images)
    except (ImageSetRefused, RunRefused) as exc:
        _original_refused(str(exc))
        return
    st.session_state["ft_original_source"] = source
    st.session_state["ft_original_key"] = key
    st.session_state.pop("ft_original_error", None)


def current_original(loaded):
    """The original task's `ImageSet` at the current model's input size, or None (none loaded, or it no longer
    matches the current model)."""
    from ui.cache import decode_images

    source, key = st.session_state.get("ft_original_source"), st.session_state.get("ft_original_key")
    if source is None or key is None:
        return None
    try:
        images = decode_images(key, loaded, source)
        original_labels(loaded, images)
    except (ImageSetRefused, RunRefused):
        return None
    return images
