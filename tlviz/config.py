"""Every ``TLVIZ_*`` setting: one table, one parser.

tlviz is configured with environment variables, read when a value is needed (so a test or a
server can change them at run time). `SETTINGS` documents each: its kind, default and what it
controls. Nothing else in tlviz reads a ``TLVIZ_*`` variable: the modules call `megabytes`,
`count`, `path` or `paths` here, and their ``DEFAULT_*`` constants come from `default`.

Kinds and parsing (the same for every variable):

- ``"mb"`` — a positive number of megabytes (fractions allowed); `megabytes` returns bytes.
- ``"count"`` — a positive whole number; `count` returns it.
- ``"path"`` — a folder; `path` returns it (expanded) or None when unset.
- ``"paths"`` — folders separated by the OS path separator, or ``off``; `paths` returns None when
  unset (no restriction), ``[]`` when ``off`` / ``none`` / empty, else the resolved folders.
- ``"text"`` — free text checked by the module that uses it (an address); `raw` returns it or None.

Unset or empty means the default. A value that cannot be parsed raises `ConfigError` (a
``ValueError``) naming the variable and saying what to set instead; no setting falls back to its
default silently.

The two tables of settings in ``docs/configuration.md`` (under "Settings" and "Limits and how to
change them") are generated from `SETTINGS` (a test compares them)::

    python -m tlviz.config                                  # print both tables
    python -m tlviz.config --update docs/configuration.md   # rewrite them in place
"""

from __future__ import annotations

import functools
import math
import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from tlviz import machine
from tlviz.errors import ConfigError


#: The tables of ``docs/configuration.md`` the settings are listed in (`Setting.section`), in that page's order.
SECTIONS = ("settings", "limits")


@dataclass(frozen=True)
class Setting:
    """One ``TLVIZ_*`` variable.

    Args:
        name: the variable's name.
        kind: ``"mb"``, ``"gb"``, ``"count"``, ``"path"``, ``"paths"`` or ``"text"``.
        default: the value when unset: a number, or a function computing it on this machine, or
            None (no default: the caller decides).
        default_text: the default as the documentation says it. Defaults to the number
            `default` written with thousands separators.
        what: what the setting controls, as the table in ``docs/configuration.md`` says it.
        example: a value the error message suggests.
        section: the table of ``docs/configuration.md`` it is listed in, one of `SECTIONS`. Defaults to ``"settings"``
            (the "Configuration" table); ``"limits"`` is the table of upload and image limits.
    """

    name: str
    kind: str
    default: float | Callable[[], float] | None
    default_text: str
    what: str
    example: str = ""
    section: str = "settings"

    @property
    def documented_default(self) -> str:
        """`default_text`, or the number `default` with thousands separators when the text is empty."""
        if self.default_text or callable(self.default) or self.default is None:
            return self.default_text
        d = float(self.default)
        return f"{int(d):,}" if d.is_integer() else f"{d:,g}"


def _memory_default() -> float:
    return float(machine.default_memory_mb())


def _jobs_default() -> float:
    try:
        budget = megabytes("TLVIZ_MEMORY_MB")
    except ConfigError:
        budget = machine.default_memory_mb() * 2**20
    return float(machine.jobs_that_fit(budget))


SETTINGS: dict[str, Setting] = {s.name: s for s in (
    Setting("TLVIZ_RUNS_DIR", "path", None, "`~/.tlviz/runs` (else `./tlviz_runs`)",
            "where fine-tuning runs are stored (config, history, metrics, weight changes, model, TensorBoard "
            "event files: `pip install tensorboard && tensorboard --logdir $TLVIZ_RUNS_DIR`)", "/srv/tlviz/runs"),
    Setting("TLVIZ_MEMORY_MB", "mb", _memory_default, "an eighth of the machine's memory, 256–1,536 MB",
            "working memory of one heavy job beyond the model's weights and the decoded images: every pass of the "
            "model over images runs in batches sized from it and the model's own layer output sizes (training mode "
            "and gradients cost more than inference), so a ResNet50 at 224×224 runs in smaller batches than the "
            "32×32 sample", "1024"),
    Setting("TLVIZ_ACTIVATION_CACHE_MB", "mb", 1024, "",
            "memory budget for cached base activations; above it a run trains the whole model and says so", "1024"),
    Setting("TLVIZ_MAX_JOBS", "count", _jobs_default,
            "half the CPUs this process may use (affinity and cgroup quota), at most machine memory ÷ (`TLVIZ_MEMORY_MB` + 1.5 GB), at least 1",
            "heavy jobs (fine-tuning runs, learning-rate tests, normalization comparisons, diagnoses) running at "
            "once; the others wait in one queue that serves people in turn (round-robin between owners, first come "
            "first served within one owner)", "2"),
    Setting("TLVIZ_MAX_JOBS_PER_USER", "count", None, "unset (no cap beyond `TLVIZ_MAX_JOBS`)",
            "heavy jobs of one person (one signed-in identity, or one browser workspace without sign-in) running at "
            "once; their further jobs wait while other people's jobs may run", "1"),
    Setting("TLVIZ_RUNS_MAX_GB", "gb", None, "unset (no cap)",
            "disk space for the runs folder (runs, stored results, job folders, caches): when a new job would pass "
            "it, the oldest finished runs and results are removed first, never a running job or a run marked "
            "\"keep\"", "20"),
    Setting("TLVIZ_RAY_ADDRESS", "text", None, "unset (runs on this machine)",
            "a Ray cluster that runs fine-tuning runs, sweeps (Ray Tune) and learning-rate tests instead of this "
            "machine's worker processes: `auto` (the cluster `ray start --head` started on this machine), "
            "`host:6379` or `ray://host:10001`; needs `pip install -r requirements-ray.txt`", "ray://head:10001"),
    Setting("TLVIZ_ALLOWED_USERS", "text", None, "unset (everyone who signs in)",
            "with sign-in on (an `[auth]` section in `.streamlit/secrets.toml`), who may use this server: e-mail "
            "addresses and `@domain` entries, separated by commas or spaces; anyone else is told they are not on "
            "the list", "alice@example.com, @example.org"),
    Setting("TLVIZ_MAX_MODEL_MB", "mb", 500, "", "largest model file", "500", section="limits"),
    Setting("TLVIZ_MAX_ARCHIVE_ENTRIES", "count", 50_000, "",
            "entries in a `.zip`, or files under a server folder", "50000", section="limits"),
    Setting("TLVIZ_MAX_ARCHIVE_MB", "mb", 2048, "", "total uncompressed size a `.zip` declares", "2048",
            section="limits"),
    Setting("TLVIZ_MAX_IMAGE_MB", "mb", 100, "", "one image file; larger ones are skipped unread", "100",
            section="limits"),
    Setting("TLVIZ_MAX_IMAGE_PIXELS", "count", 40_000_000, "",
            "pixels in one image; larger ones are skipped undecoded", "40000000", section="limits"),
    Setting("TLVIZ_MAX_DECODED_MB", "mb", 4096, "", "memory for a decoded image set at the model's input size",
            "4096", section="limits"),
    Setting("TLVIZ_IMAGE_ROOTS", "paths", None, "unset (any folder)",
            "folders the Server folder option may read, `:`-separated, or `off`", "/data/images", section="limits"),
)}


def default(name: str) -> float | None:
    """A setting's default value (computed on this machine where it depends on it).

    Args:
        name: the variable's name, a key of `SETTINGS`.

    Returns:
        The default number, or None for a setting without one (a path: the caller decides).
    """
    s = _setting(name)
    return s.default() if callable(s.default) else s.default


def raw(name: str) -> str | None:
    """The variable's text.

    Args:
        name: the variable's name, a key of `SETTINGS`.

    Returns:
        The text, stripped; None when unset or empty.
    """
    _setting(name)
    value = os.environ.get(name)
    if value is None or not value.strip():
        return None
    return value.strip()


def number(name: str) -> float:
    """A ``"mb"`` or ``"count"`` setting as a positive number (the default when unset).

    Args:
        name: the variable's name, a key of `SETTINGS`.

    Returns:
        The value: megabytes for ``"mb"``, a whole number for ``"count"``.

    Raises:
        ConfigError: the value is not a positive number (for ``"count"``: a positive whole number).
    """
    s = _setting(name)
    text = raw(name)
    if text is None:
        d = default(name)
        if d is None:
            raise ConfigError(f"{name} has no default; set it.")
        return float(d)
    try:
        value = float(text)
    except ValueError:
        value = float("nan")
    whole = s.kind == "count"
    if not math.isfinite(value) or value <= 0 or (whole and not value.is_integer()):
        what = ("a positive whole number" if whole else
                "a positive number of gigabytes" if s.kind == "gb" else "a positive number of megabytes")
        unset = (f"unset it ({s.default_text[len('unset ('):-1]})" if s.default is None
                 and s.default_text.startswith("unset (") else f"unset it for the default ({_default_now(s)})")
        raise ConfigError(f"{name}={text!r} is not {what}. Set it to e.g. {s.example}, or {unset}.")
    return value


def megabytes(name: str) -> int:
    """A ``"mb"`` setting in bytes.

    Args:
        name: the variable's name, a key of `SETTINGS`.

    Returns:
        The value (or the default) in bytes.

    Raises:
        ConfigError: the value is not a positive number.
    """
    return int(number(name) * 2**20)


def optional_count(name: str) -> int | None:
    """A ``"count"`` setting without a default: None when unset.

    Raises:
        ConfigError: the value is set but is not a positive whole number.
    """
    return None if raw(name) is None and default(name) is None else count(name)


def gigabytes(name: str) -> int | None:
    """A ``"gb"`` setting in bytes, or None when unset (no cap).

    Raises:
        ConfigError: the value is set but is not a positive number.
    """
    if raw(name) is None and default(name) is None:
        return None
    return int(number(name) * 2**30)


def count(name: str) -> int:
    """A ``"count"`` setting as a whole number.

    Args:
        name: the variable's name, a key of `SETTINGS`.

    Returns:
        The value (or the default).

    Raises:
        ConfigError: the value is not a positive whole number.
    """
    return int(number(name))


def path(name: str) -> Path | None:
    """A ``"path"`` setting.

    Args:
        name: the variable's name, a key of `SETTINGS`.

    Returns:
        The folder (``~`` expanded), or None when unset or empty.
    """
    text = raw(name)
    return Path(text).expanduser() if text is not None else None


def paths(name: str) -> list[Path] | None:
    """A ``"paths"`` setting.

    Args:
        name: the variable's name, a key of `SETTINGS`.

    Returns:
        None when unset, ``[]`` when ``off`` / ``none`` / empty, else the resolved folders.
    """
    _setting(name)
    value = os.environ.get(name)
    if value is None:
        return None
    if value.strip().lower() in ("", "off", "none"):
        return []
    return [Path(p).expanduser().resolve() for p in value.split(os.pathsep) if p.strip()]


def table(section: str | None = None) -> str:
    """The settings as a Markdown table, as ``docs/configuration.md`` shows them.

    Args:
        section: only the settings of this table (one of `SECTIONS`). Defaults to
            `None` (every setting).

    Returns:
        The table: variable, default, what it controls; one row per setting.
    """
    if section is not None and section not in SECTIONS:
        raise ValueError(f"Unknown section {section!r}; pass one of {', '.join(SECTIONS)}.")
    rows = ["| variable | default | what |", "|---|---|---|"]
    rows += [f"| `{s.name}` | {s.documented_default} | {s.what} |"
             for s in SETTINGS.values() if section is None or s.section == section]
    return "\n".join(rows)


def readme_markers(section: str) -> tuple[str, str]:
    """The two comment lines around a section's generated table in ``docs/configuration.md``.

    Args:
        section: one of `SECTIONS`.

    Returns:
        ``(start, end)``.
    """
    return (f"<!-- {section}: generated by `python -m tlviz.config --update docs/configuration.md`; do not edit -->",
            f"<!-- end of {section} -->")


def update_readme(text: str) -> str:
    """`text` (``docs/configuration.md``) with every section's table replaced by `table(section)`.

    Args:
        text: the page's text, holding one pair of `readme_markers` per section.

    Returns:
        The new text.

    Raises:
        ValueError: a section's markers are missing.
    """
    from tlviz.readme import replace_block

    for section in SECTIONS:
        text = replace_block(text, *readme_markers(section), table(section))
    return text


def main(argv: list[str] | None = None) -> int:
    """``python -m tlviz.config [--update docs/configuration.md]``: print the tables of settings, or rewrite them.

    Args:
        argv: the arguments. Defaults to `sys.argv[1:]`.

    Returns:
        The exit status.
    """
    from tlviz.readme import update_command

    blocks = [(*readme_markers(section), functools.partial(table, section)) for section in SECTIONS]
    return update_command("python -m tlviz.config", "tables of TLVIZ_* settings (docs/configuration.md)", blocks, argv)


def _setting(name: str) -> Setting:
    try:
        return SETTINGS[name]
    except KeyError:
        raise KeyError(f"{name} is not a tlviz setting; add it to tlviz.config.SETTINGS.") from None


def _default_now(s: Setting) -> str:
    """The default as an error message says it: the number on this machine where it is computed."""
    try:
        d = s.default() if callable(s.default) else s.default
    except Exception:  # noqa: BLE001 - the message must not fail
        return s.documented_default
    if d is None:
        return s.documented_default
    unit = " MB" if s.kind == "mb" else ""
    text = f"{int(d)}" if float(d).is_integer() else f"{d:g}"
    return f"{text}{unit} on this machine" if callable(s.default) else f"{text}{unit}"


if __name__ == "__main__":
    sys.exit(main())
