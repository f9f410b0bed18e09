"""Where runs live and what they are called: the runs folder, run ids, a run's folder.

Public API: `ENV_RUNS_DIR`, `RUN_ID` (the pattern of a run id), `runs_dir(path)`, `new_run_id()`,
`check_run_id(run_id)`, `run_path(run_id, root)`.
"""

from __future__ import annotations

import datetime as _dt
import os
import re
import secrets
from pathlib import Path

from tlviz import config
from tlviz.errors import TlvizError

ENV_RUNS_DIR = "TLVIZ_RUNS_DIR"
#: A run id: a plain folder name (no paths, no hidden folders).
RUN_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,100}$")


def runs_dir(path: str | os.PathLike | None = None) -> Path:
    """The runs folder (created if needed).

    Args:
        path: an explicit folder. Defaults to ``TLVIZ_RUNS_DIR``, else
            ``~/.tlviz/runs``, else ``./tlviz_runs``.

    Returns:
        The folder.

    Raises:
        TlvizError: no candidate folder is writable (the message says to set ``TLVIZ_RUNS_DIR``).
    """
    if path is None:
        path = config.path(ENV_RUNS_DIR)
    candidates = [Path(path).expanduser()] if path else [Path.home() / ".tlviz" / "runs", Path.cwd() / "tlviz_runs"]
    last_exc = None
    for p in candidates:
        try:
            p.mkdir(parents=True, exist_ok=True)
            if os.access(p, os.W_OK):
                return p
        except OSError as exc:
            last_exc = exc
    raise TlvizError(f"Cannot write to the runs folder {candidates[0]} ({last_exc}). Set the environment variable "
                     f"{ENV_RUNS_DIR} to a writable folder.")


def new_run_id() -> str:
    """A sortable, unique run id such as ``20250101-120000-123a1b2``."""
    now = _dt.datetime.now()
    return now.strftime("%Y%m%d-%H%M%S-") + f"{now.microsecond // 1000:03d}" + secrets.token_hex(2)


def check_run_id(run_id: str) -> str:
    """Refuse ids that are not plain folder names (no paths, no hidden folders)."""
    if not isinstance(run_id, str) or not RUN_ID.match(run_id):
        raise TlvizError(f"{run_id!r} is not a run id. Pick a run from the list.")
    return run_id


def run_path(run_id: str, root: str | os.PathLike | None = None) -> Path:
    """A run's folder.

    Args:
        run_id: the run (checked: `check_run_id`).
        root: the runs folder. Defaults to `runs_dir()`.

    Returns:
        The folder's path (it may not exist).
    """
    return runs_dir(root) / check_run_id(run_id)
