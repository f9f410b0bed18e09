"""What every fine-tuning panel shares: the learning rates offered, polling and gallery sizes, the state icons,
the session persistence of the settings, and the text of a missing number."""

from __future__ import annotations

import math

import streamlit as st


RATES = [1e-6, 3e-6, 1e-5, 3e-5, 1e-4, 3e-4, 1e-3, 3e-3, 1e-2, 3e-2, 1e-1, 3e-1, 1.0]
POLL_S = 1.0
GALLERY = 24
STATE_ICONS = {"completed": ":material/check_circle:", "cancelled": ":material/stop_circle:",
               "diverged": ":material/warning:", "failed": ":material/error:", "refused": ":material/block:",
               "running": ":material/hourglass_top:", "queued": ":material/schedule:",
               "stopped": ":material/content_cut:"}


def value_text(v, fmt: str = "") -> str:
    """`v` formatted with `fmt`, or ``"?"`` when it is missing or not finite."""
    return "?" if v is None or (isinstance(v, float) and not math.isfinite(v)) else format(v, fmt)


def percent_text(v) -> str:
    """`v` as a percentage, or ``"–"`` when it is missing or not finite."""
    return "–" if v is None or (isinstance(v, float) and not math.isfinite(v)) else f"{float(v):.1%}"


#: The run settings keep their values while the person looks at another page and comes back (Streamlit drops
#: a widget's value when its page is not drawn, unless it persists for the session).
SESSION = "session"


def keep_valid(key: str, options) -> None:
    """Drop remembered multiselect values that are no longer options (another model, deleted runs)."""
    if key in st.session_state:
        st.session_state[key] = [v for v in st.session_state[key] if v in options]
