"""Evidence written for people: how a finding's measured numbers read on the page, in the Markdown and the HTML
reports (the raw numbers stay in the JSON export).

A leaf module. Public API: `evidence_text(key, value)`, `PERCENT_WORDS`, `POINTS_WORDS`.
"""
from __future__ import annotations

from tlviz.stats import format_interval, format_points

#: Evidence whose name holds one of these words is a share of images: written as a percentage.
PERCENT_WORDS = ("accuracy", "share", "chance", "confidence", "probability", "interval", "agreement")
#: Evidence whose name holds one of these words is a difference of two shares: written in percentage points.
POINTS_WORDS = ("drop", "gain", "difference", "excess", "margin", "gap", "headroom")
#: Lists and dicts show this many items, then how many there are in all.
SHOWN_ITEMS = 10


def _kind(key: str) -> str:
    """How a piece of evidence reads: ``"points"``, ``"percent"``, ``"file"`` or ``"plain"``, from its name."""
    k = str(key).lower()
    if "fingerprint" in k or "distance" in k:
        return "plain"  # a distance between activation statistics, not a share
    if any(w in k for w in POINTS_WORDS):
        return "points"
    if any(w in k for w in PERCENT_WORDS):
        return "percent"
    if "file" in k:
        return "file"
    return "plain"


def _number(v, kind: str) -> str:
    if isinstance(v, (int,)) and not isinstance(v, bool):
        return f"{v:,}"
    f = float(v)
    if kind == "percent" and -1e-9 <= f <= 1.0 + 1e-9:
        return f"{f:.1%}"
    if kind == "points" and abs(f) <= 1.0:
        return f"{f * 100:+.1f} points"
    if f.is_integer() and abs(f) < 1e15:
        return f"{int(f):,}"
    return f"{f:,.0f}" if abs(f) >= 1000 else f"{f:.3g}"


def _is_number(v) -> bool:
    import numbers

    return isinstance(v, numbers.Real) and not isinstance(v, bool)


def evidence_text(key: str, v) -> str:
    """One piece of evidence as people read it: shares as percentages (``26.9%``), an interval of shares as
    ``26.9–40.5 %``, differences of shares in points (``+19.2 points``, ``+16.6 to +21.8 points``), counts with
    thousands separators, file names without their folders; lists and dicts item by item.

    Args:
        key: the evidence's name (its words decide how a number reads: `PERCENT_WORDS`, `POINTS_WORDS`).
        v: the value.

    Returns:
        The text; ``"—"`` for a missing value.
    """
    from pathlib import PurePosixPath

    kind = _kind(key)
    if v is None:
        return "—"
    if isinstance(v, bool):
        return "yes" if v else "no"
    if _is_number(v):
        return _number(v, kind)
    for attrs in (("low", "high"),):  # a paired difference / interval object
        if all(hasattr(v, a) for a in attrs) and hasattr(v, "difference"):
            return f"{_number(v.difference, 'points')} ({_range(v.low, v.high, 'points')})"
    if isinstance(v, (list, tuple)) and len(v) == 2 and all(_is_number(x) for x in v) and kind in ("percent",
                                                                                                   "points"):
        return _range(v[0], v[1], kind)
    if isinstance(v, dict):
        items = list(v.items())
        more = f" … ({len(items):,} in all)" if len(items) > SHOWN_ITEMS else ""
        return ", ".join(f"{k}: {evidence_text(key, x)}" for k, x in items[:SHOWN_ITEMS]) + more
    if isinstance(v, (list, tuple)):
        more = f" … ({len(v):,} in all)" if len(v) > SHOWN_ITEMS else ""
        return ", ".join(evidence_text(key, x) for x in v[:SHOWN_ITEMS]) + more
    if kind == "file" and isinstance(v, str):
        return PurePosixPath(v.replace("\\", "/")).name or v
    return str(v)


def _range(lo, hi, kind: str) -> str:
    lo, hi = float(lo), float(hi)
    if kind == "percent" and -1e-9 <= lo <= 1 + 1e-9 and -1e-9 <= hi <= 1 + 1e-9:
        return format_interval(lo, hi)
    if kind == "points" and abs(lo) <= 1 and abs(hi) <= 1:
        return format_points(lo, hi)
    return f"{_number(lo, 'plain')}–{_number(hi, 'plain')}"
