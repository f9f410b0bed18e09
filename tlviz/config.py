"""Every ``TLVIZ_*`` setting: one table, one parser.

tlviz is configured with environment variables, read when a value is needed (so a test or a
server can change them at run time). `SETTINGS` documents each: its kind, default and what it
controls; the README's configuration table is checked against it (tests/test_config.py).

Kinds and parsing (the same for every variable):

- ``"mb"`` — a positive number of megabytes (fractions allowed); `megabytes` returns bytes.
- ``"count"`` — a positive whole number; `count` returns it.
- ``"path"`` — a folder; `path` returns it (expanded) or None when unset.
- ``"paths"`` — folders separated by the OS path separator, or ``off``; `paths` returns None when
  unset (no restriction), ``[]`` when ``off`` / ``none`` / empty, else the resolved folders.

Unset or empty means the default. A value that cannot be parsed raises `ConfigError` naming the
variable and saying what to set instead.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from tlviz.errors import ConfigError


@dataclass(frozen=True)
class Setting:
    """One ``TLVIZ_*`` variable.

    Args:
        name: the variable's name.
        kind: ``"mb"``, ``"count"``, ``"path"`` or ``"paths"``.
        default: the value when unset: a number, or a function computing it on this machine, or
            None (no default: the caller decides).
        default_text: the default as the documentation says it.
        what: what the setting controls, one sentence.
        example: a value the error message suggests.
    """

    name: str
    kind: str
    default: float | Callable[[], float] | None
    default_text: str
    what: str
    example: str = ""


def _memory_default() -> float:
    from tlviz.memory import default_memory_mb

    return float(default_memory_mb())


def _jobs_default() -> float:
    from tlviz.jobqueue import default_max_jobs

    return float(default_max_jobs())


SETTINGS: dict[str, Setting] = {s.name: s for s in (
    Setting("TLVIZ_RUNS_DIR", "path", None, "`~/.tlviz/runs` (else `./tlviz_runs`)",
            "where fine-tuning runs are stored (config, history, metrics, weight changes, model, TensorBoard "
            "event files)", "/srv/tlviz/runs"),
    Setting("TLVIZ_MEMORY_MB", "mb", _memory_default, "an eighth of the machine's memory, 256–1,536 MB",
            "working memory of one heavy job beyond the model's weights and the decoded images; batch sizes are "
            "planned from it", "1024"),
    Setting("TLVIZ_ACTIVATION_CACHE_MB", "mb", 1024, "1024",
            "memory budget for cached base activations in a fine-tuning run", "1024"),
    Setting("TLVIZ_MAX_JOBS", "count", _jobs_default,
            "half the CPU cores, at most machine memory ÷ (`TLVIZ_MEMORY_MB` + 1.5 GB), at least 1",
            "heavy jobs running at once; the others wait in one first-come-first-served queue", "2"),
    Setting("TLVIZ_MAX_MODEL_MB", "mb", 500, "500", "largest model file accepted", "500"),
    Setting("TLVIZ_MAX_ARCHIVE_ENTRIES", "count", 50_000, "50,000",
            "most entries in an image-set `.zip` (or files under a folder)", "50000"),
    Setting("TLVIZ_MAX_ARCHIVE_MB", "mb", 2048, "2048",
            "most uncompressed bytes an image-set `.zip`'s entries may declare", "2048"),
    Setting("TLVIZ_MAX_IMAGE_MB", "mb", 100, "100", "largest single image file, uncompressed", "100"),
    Setting("TLVIZ_MAX_DECODED_MB", "mb", 4096, "4096",
            "memory for a decoded image set at the model's input size", "4096"),
    Setting("TLVIZ_MAX_IMAGE_PIXELS", "count", 40_000_000, "40,000,000", "most pixels in one image", "40000000"),
    Setting("TLVIZ_IMAGE_ROOTS", "paths", None, "unset: any folder",
            "the server folders image sets may be read from (`off` hides the option)", "/data/images"),
)}


def raw(name: str) -> str | None:
    """The variable's text, stripped; None when unset or empty."""
    _setting(name)
    value = os.environ.get(name)
    if value is None or not value.strip():
        return None
    return value.strip()


def number(name: str) -> float:
    """A ``"mb"`` or ``"count"`` setting as a positive number (the default when unset).

    Raises:
        ConfigError: the value is not a positive number.
    """
    s = _setting(name)
    text = raw(name)
    if text is None:
        d = s.default() if callable(s.default) else s.default
        if d is None:
            raise ConfigError(f"{name} has no default; set it.")
        return float(d)
    try:
        value = float(text)
    except ValueError:
        value = float("nan")
    whole = s.kind == "count"
    if not math.isfinite(value) or value <= 0 or (whole and value < 1):
        what = "a positive whole number" if whole else "a positive number of megabytes"
        raise ConfigError(f"{name}={text!r} is not {what}. Set it to e.g. {s.example}, or unset it for the default "
                          f"({_default_now(s)}).")
    return value


def megabytes(name: str) -> int:
    """A ``"mb"`` setting in bytes."""
    return int(number(name) * 2**20)


def count(name: str) -> int:
    """A ``"count"`` setting as a whole number."""
    return int(number(name))


def path(name: str) -> Path | None:
    """A ``"path"`` setting (``~`` expanded), or None when unset."""
    text = raw(name)
    return Path(text).expanduser() if text is not None else None


def paths(name: str) -> list[Path] | None:
    """A ``"paths"`` setting: None when unset, ``[]`` when off, else the resolved folders."""
    _setting(name)
    value = os.environ.get(name)
    if value is None:
        return None
    if value.strip().lower() in ("", "off", "none"):
        return []
    return [Path(p).expanduser().resolve() for p in value.split(os.pathsep) if p.strip()]


def table() -> str:
    """The settings as a Markdown table (the README's configuration table is checked against it)."""
    rows = ["| variable | default | what |", "|---|---|---|"]
    rows += [f"| `{s.name}` | {s.default_text} | {s.what} |" for s in SETTINGS.values()]
    return "\n".join(rows)


def _setting(name: str) -> Setting:
    try:
        return SETTINGS[name]
    except KeyError:
        raise KeyError(f"{name} is not a tlviz setting; add it to tlviz.config.SETTINGS.") from None


def _default_now(s: Setting) -> str:
    try:
        d = s.default() if callable(s.default) else s.default
    except Exception:  # noqa: BLE001 - the message must not fail
        return s.default_text
    if d is None:
        return s.default_text
    unit = " MB" if s.kind == "mb" else ""
    return f"{d:g}{unit} on this machine" if callable(s.default) else f"{d:g}{unit}"
