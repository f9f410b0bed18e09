"""The sidebar's history of models: a repaired model made current never loses the one it replaced."""

from __future__ import annotations

import streamlit as st

from ui.state import model_history, use_history


def _keep() -> None:
    st.session_state["keep_model_history"] = st.session_state["model_history_choice"]


def history_picker() -> None:
    """A select box over `ui.state.model_history`; choosing one makes it the current model again."""
    entries = {h["key"]: h["label"] for h in model_history()}
    keys = list(entries)
    if st.session_state.get("keep_model_history") not in entries:
        st.session_state["keep_model_history"] = keys[0]
    st.session_state["model_history_choice"] = st.session_state["keep_model_history"]
    chosen = st.selectbox("Earlier model", keys, format_func=entries.get, key="model_history_choice",
                          on_change=_keep)
    use_history(chosen)
    st.caption("Repaired models made current, and the models they replaced: pick one to make it current again.")
