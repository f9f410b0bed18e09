"""The page shell: what the router does around every page, and what a page does when the router did not run."""

from __future__ import annotations

import gc
import runpy
from pathlib import Path

import streamlit as st

from ui.sidebar import sidebar
from ui.state import init_state

#: The router. A page runs it when Streamlit ran the page without it (see `page_start`).
ENTRY_SCRIPT = Path(__file__).resolve().parent.parent / "app.py"

def freeze_startup_objects() -> None:
    """Exclude what the server loaded at start (TensorFlow, Keras, the sample model) from garbage collection.

    Keras's ``clear_session``, which Streamlit calls after every script run, runs a
    full collection; without this it walks every TensorFlow object each time (about
    0.1 s holding the GIL), which under many sessions starves the light pages.
    Only done once per server process; objects created later are collected as usual.
    """
    if not getattr(freeze_startup_objects, "done", False):  # once per server process, not per session
        gc.collect()
        gc.freeze()
        freeze_startup_objects.done = True


def mark_shell_drawn() -> None:
    """Called by the router after it has drawn the sidebar for this script run."""
    st.session_state["_shell_drawn"] = True


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
