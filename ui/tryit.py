"""The Try page's Streamlit side: one `tlviz.tryit.Explainer` per model, shared by every session."""
from __future__ import annotations

import streamlit as st

from tlviz.tryit import Explainer


@st.cache_resource(show_spinner="Finding where the model looks…", max_entries=4)
def _explainer(key: str, _loaded) -> Explainer:
    # Keyed by the model's content; the explainer only reads the model (never trains or re-flags it).
    return Explainer(_loaded)


def explainer(loaded) -> Explainer:
    """The `Explainer` of `loaded`, built once per model per server."""
    from ui.cache import remembered_key

    return _explainer(remembered_key(loaded), loaded)
