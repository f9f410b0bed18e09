"""Make measurements JSON-safe: numpy types to Python, NaN / infinity to None.

Public API: `json_safe(obj, digits=None)`, `finite_or_none(value)`.
"""

from __future__ import annotations

import math

import numpy as np


def json_safe(obj, digits: int | None = None):
    """A copy of `obj` that `json.dumps` accepts and that holds no NaN.

    Args:
        obj: dicts, lists, tuples, numpy arrays and scalars, nested freely.
        digits: round floats to this many digits. Defaults to `None` (no rounding).

    Returns:
        Plain Python data; non-finite floats become ``None``, dict keys strings.
    """
    if isinstance(obj, dict):
        return {str(k): json_safe(v, digits) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [json_safe(v, digits) for v in obj]
    if isinstance(obj, np.ndarray):
        return json_safe(obj.tolist(), digits)
    if isinstance(obj, (bool, np.bool_)):
        return bool(obj)
    if isinstance(obj, np.integer):
        return int(obj)
    if isinstance(obj, (float, np.floating)):
        f = float(obj)
        if not math.isfinite(f):
            return None
        return round(f, digits) if digits is not None else f
    return obj


def finite_or_none(value) -> float | None:
    """One number as a plain float, or None when it is missing or not a finite number.

    Args:
        value: a number (Python or numpy), None, or anything else.

    Returns:
        ``float(value)`` when that is finite; None for None, NaN, infinity and non-numbers.
    """
    try:
        f = float(value)
    except (TypeError, ValueError):
        return None
    return f if math.isfinite(f) else None
