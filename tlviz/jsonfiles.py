"""JSON files that a reader never sees half-written: the job system's and the run store's file format.

A leaf module (it imports only `tlviz.jsonsafe`). Public API: `write_json(path, obj)`, `read_json(path,
default)`, `now_iso()`.
"""
from __future__ import annotations

import datetime as _dt
import json
import os
from pathlib import Path

from tlviz.jsonsafe import json_safe


def now_iso() -> str:
    """The local time to the second, as job and run files record it."""
    return _dt.datetime.now().isoformat(timespec="seconds")


def write_json(path: Path, obj) -> None:
    """Write `obj` as JSON atomically (temp file + rename); numpy to Python, NaN / inf to null."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(json_safe(obj), indent=1))
    os.replace(tmp, path)


def read_json(path: Path, default=None):
    """The JSON in `path`, or `default` when it is missing or does not parse."""
    try:
        return json.loads(Path(path).read_text())
    except (OSError, ValueError):
        return default
