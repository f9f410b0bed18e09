"""Reading runs back: one run's folder as a `RunRecord`, the list of runs, deleting one.

A folder that is missing files it should have (a crash, a half-written copy) reads as ``failed``
with the reason, never as an error; so does a queued or running run whose worker process is gone.

A run marked *keep* holds a `KEEP_FILE` in its folder: it is never removed to free disk space
(`tlviz.diskcap`, which writes and removes the mark).

Public API: `RunRecord`, `load_run(run_id, root, owner)`, `list_runs(root, owner)`,
`delete_run(run_id, root, force, owner)`, `KEEP_FILE`.
"""

from __future__ import annotations

import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from tlviz.errors import RunRefused, TlvizError
from tlviz.finetune.store.paths import RUN_ID, run_path, runs_dir
from tlviz.finetune.store.presentation import RunOutcome, RunProgress, describe_where
from tlviz.finetune.store.schema import ACTIVE_STATES, HISTORY_COLUMNS, RUN_COLUMNS, STATES
from tlviz.jsonfiles import read_json
from tlviz.processes import pid_alive

#: The file that marks a run *keep* (`tlviz.diskcap.set_keep`): never removed to free disk space.
KEEP_FILE = "keep"


@dataclass
class RunRecord:
    """Everything stored about one run (whatever could be read).

    Attributes:
        run_id / path: where it lives.
        state / message: from ``status.json``, or ``failed`` with the reason
            when the folder is incomplete or its worker is gone.
        config: the stored config dict (``{}`` when unreadable).
        model / images: what it ran on.
        history: per-epoch DataFrame (`HISTORY_COLUMNS`).
        metrics: ``metrics.json`` (``{}`` until the run ends).
        progress: ``progress.json`` (``{}`` when none).
        weight_change: the report, or None.
        status: the raw status dict.
        created: when it was queued (ISO time).
        owner: the workspace that started it (None: the CLI or a script).
        original: the original task's image set it reports retention on (``source``,
            ``n``, ``class_names``, ``image_key``); ``{}`` when none.
    """

    run_id: str
    path: Path
    state: str
    message: str
    config: dict = field(default_factory=dict)
    model: dict = field(default_factory=dict)
    images: dict = field(default_factory=dict)
    history: pd.DataFrame = field(default_factory=lambda: pd.DataFrame(columns=HISTORY_COLUMNS))
    metrics: dict = field(default_factory=dict)
    progress: dict = field(default_factory=dict)
    weight_change: pd.DataFrame | None = None
    status: dict = field(default_factory=dict)
    created: str = ""
    owner: str | None = None
    original: dict = field(default_factory=dict)

    @property
    def model_path(self) -> Path | None:
        p = self.path / "model.keras"
        return p if p.exists() else None

    @property
    def best_val_accuracy(self) -> float | None:
        if self.history.empty:
            return None
        v = pd.to_numeric(self.history["val_accuracy"], errors="coerce")
        return None if v.isna().all() else float(v.max())

    @property
    def kept(self) -> bool:
        """Whether it is marked keep (`tlviz.diskcap.set_keep`): never removed to free disk space."""
        return self.path is not None and (Path(self.path) / KEEP_FILE).exists()

    @property
    def active(self) -> bool:
        """Whether it is still queued or running."""
        return self.state in ACTIVE_STATES

    @property
    def run_config(self):
        """The stored config as a `RunConfig`, or None when it is missing or no longer valid."""
        from tlviz.finetune.config import RunConfig

        if not self.config:
            return None
        try:
            return RunConfig.from_dict(self.config)
        except (RunRefused, TypeError, ValueError):
            return None

    @property
    def control(self) -> str | None:
        """What kind of control this run is (``"random-init"``, ``"head-only"``), or None for an ordinary run."""
        return self.config.get("control")

    @property
    def control_of(self) -> str | None:
        """The run this one is a control of (None for an ordinary run)."""
        return self.config.get("control_of")

    @property
    def model_sha256(self) -> str | None:
        """The hash of the model file it started from (as the app or the CLI recorded it)."""
        return self.model.get("sha256")

    @property
    def label(self) -> str:
        """The label the user gave the run (``""`` when none)."""
        return str(self.config.get("label") or "")

    def describe(self) -> str:
        """One line: the config in words (`RunConfig.describe`) and the label; ``""`` when unreadable."""
        config = self.run_config
        if config is None:
            return ""
        return config.describe() + (f" · {self.label}" if self.label else "")

    @property
    def job_id(self) -> str | None:
        """The worker job that runs (or ran) it, once the worker was started."""
        return self.status.get("job_id")

    @property
    def where(self) -> dict:
        """Where it ran (``executor``, ``node``, ``device``, ...): ``{}`` until its worker started it."""
        w = self.status.get("where")
        return w if isinstance(w, dict) else {}

    @property
    def ran_on(self) -> str:
        """Where it ran, in one line (`describe_where`); ``""`` when unknown."""
        return describe_where(self.where)

    @property
    def stopped_at(self) -> int | None:
        """The epoch after which the sweep's scheduler stopped it (None: it was not stopped early)."""
        if self.state != "stopped":
            return None
        at = self.status.get("stopped_at")
        if at is None and len(self.history):
            at = self.history["epoch"].max()
        return None if at is None else int(at)

    @property
    def image_key(self) -> str | None:
        """The content key of the pixels it ran on (`tlviz.contentkeys.pixels_key`)."""
        return self.images.get("image_key")

    @property
    def images_source(self) -> str:
        """Where the image set it ran on came from (``"?"`` when unknown)."""
        return str(self.images.get("source", "?"))

    @property
    def progress_info(self) -> RunProgress:
        """`progress` as a `RunProgress`."""
        return RunProgress.from_dict(self.progress)

    @property
    def outcome(self) -> RunOutcome:
        """`metrics` (``metrics.json``) as a `RunOutcome` (empty until the run ends)."""
        return RunOutcome.from_metrics(self.metrics)


def load_run(run_id: str, root: str | os.PathLike | None = None, owner: str | None = None) -> RunRecord:
    """Read one run folder; never raises for a damaged folder (it reads as failed).

    Args:
        run_id: the run.
        root: the runs folder. Defaults to `runs_dir()`.
        owner: when given, only a run of this workspace is returned.

    Raises:
        TlvizError: the id is not a run id, no such run exists, or it belongs to another workspace.
    """
    path = run_path(run_id, root)
    if not path.is_dir():
        raise TlvizError(f"No run {run_id} in {path.parent}. It may have been deleted; refresh the list.")
    rec = _read(path)
    if owner is not None and rec.owner != owner:
        raise TlvizError(f"Run {run_id} was started in another session; only that session can open or delete it.")
    return rec


def _read(path: Path) -> RunRecord:
    cfg = read_json(path / "config.json")
    status = read_json(path / "status.json", {}) or {}
    hist = read_json(path / "history.json", []) or []
    metrics = read_json(path / "metrics.json", {}) or {}
    progress = read_json(path / "progress.json", {}) or {}
    state = status.get("state", "failed")
    message = status.get("message", "")
    if not isinstance(cfg, dict) or "config" not in cfg:
        state, message = "failed", "incomplete run folder: config.json is missing or unreadable"
        cfg = {}
    elif not status:
        state, message = "failed", "incomplete run folder: status.json is missing or unreadable"
    elif state not in STATES:
        state, message = "failed", f"unknown state {state!r} in status.json"
    elif state in ("completed", "diverged") and not metrics:
        state, message = "failed", "incomplete run folder: metrics.json is missing (the run stopped while saving)"
    elif state in ACTIVE_STATES and status.get("pid") is not None and not pid_alive(status.get("pid")):
        state, message = "failed", ("the worker process stopped before the run finished (a crash, or the server "
                                    "restarted); what was recorded is kept")
    try:
        history = pd.DataFrame(hist, columns=HISTORY_COLUMNS) if isinstance(hist, list) else pd.DataFrame(columns=HISTORY_COLUMNS)
        for c in ("loss", "accuracy", "val_loss", "val_accuracy", "lr", "elapsed_s"):
            history[c] = pd.to_numeric(history[c], errors="coerce")
    except (ValueError, TypeError):
        history = pd.DataFrame(columns=HISTORY_COLUMNS)
    wc = None
    if (path / "weight_change.csv").exists():
        try:
            wc = pd.read_csv(path / "weight_change.csv")
        except (OSError, ValueError, pd.errors.ParserError):
            wc = None
    return RunRecord(run_id=path.name, path=path, state=state, message=message, config=cfg.get("config", {}),
                     model=cfg.get("model", {}), images=cfg.get("images", {}), history=history, metrics=metrics,
                     progress=progress, weight_change=wc, status=status, created=cfg.get("created", ""),
                     owner=cfg.get("owner"), original=dict(cfg.get("original") or {}))


def list_runs(root: str | os.PathLike | None = None, owner: str | None = None) -> pd.DataFrame:
    """Runs, newest first, one row each (`RUN_COLUMNS`, then ``kept``: marked keep); damaged folders read as failed.

    Args:
        root: the runs folder. Defaults to `runs_dir()`.
        owner: when given, only the runs of this workspace. Defaults to all runs.
    """
    base = runs_dir(root)
    rows = []
    for p in sorted(base.iterdir(), reverse=True):
        if not p.is_dir() or p.name.startswith(".") or not RUN_ID.match(p.name):
            continue
        r = _read(p)
        if owner is not None and r.owner != owner:
            continue
        c = r.config
        final = r.metrics.get("final", {}) if r.metrics else {}
        rows.append({
            "run_id": r.run_id, "created": r.created, "state": r.state, "message": r.message,
            "label": c.get("label", ""), "unfreeze": c.get("unfreeze"), "lr": c.get("lr"),
            "epochs": c.get("epochs"), "batch_size": c.get("batch_size"), "optimizer": c.get("optimizer"),
            "preset": c.get("preset"), "new_head": r.metrics.get("new_head", c.get("new_head")),
            "two_phase": c.get("two_phase"), "bn": c.get("bn"), "augment": c.get("augment"),
            "head_dropout": c.get("head_dropout"), "weight_decay": c.get("weight_decay"),
            "sweep_id": c.get("sweep_id"), "best_val_accuracy": r.best_val_accuracy,
            "final_val_accuracy": final.get("val_accuracy"), "final_val_loss": final.get("val_loss"),
            "time_s": r.metrics.get("elapsed_s", r.history["elapsed_s"].max() if len(r.history) else None),
            "model": r.model.get("filename", "") or r.model.get("name", ""), "model_sha256": r.model_sha256,
            "images": r.images.get("source", ""),
            "cache_used": r.metrics.get("cache_used"), "owner": r.owner, "ran_on": r.ran_on,
            "stopped_at": r.stopped_at, "control": c.get("control"), "control_of": c.get("control_of"),
            "kept": r.kept,
        })
    return pd.DataFrame(rows, columns=[*RUN_COLUMNS, "kept"])


def runs_of_model_first(runs: pd.DataFrame, model_sha256: str | None) -> pd.DataFrame:
    """A `list_runs` table with the runs of one model first (newest first), then every other model's runs.

    Args:
        runs: the table.
        model_sha256: the model file's hash (`LoadedModel.sha256`); None or ``""`` marks no run as this model's.

    Returns:
        A copy with a boolean ``this_model`` column, in that order (the order within each group kept).
    """
    out = runs.copy()
    shas = out["model_sha256"] if "model_sha256" in out else [None] * len(out)
    out["this_model"] = pd.Series([bool(model_sha256) and s == model_sha256 for s in shas], index=out.index,
                                  dtype=bool)
    return pd.concat([out[out["this_model"]], out[~out["this_model"]]]).reset_index(drop=True) if len(out) else out


def delete_run(run_id: str, root: str | os.PathLike | None = None, force: bool = False,
               owner: str | None = None) -> None:
    """Delete a run folder.

    Args:
        run_id: the run.
        root: the runs folder. Defaults to `runs_dir()`.
        force: delete even while it is queued or running. Defaults to `False`.
        owner: when given, only a run of this workspace may be deleted.

    Raises:
        TlvizError: unknown run, another workspace's run, or a run still in progress without `force`.
    """
    rec = load_run(run_id, root, owner)
    if rec.state in ACTIVE_STATES and not force:
        raise TlvizError(f"Run {run_id} is still {rec.state}. Cancel it first, then delete it.")
    shutil.rmtree(rec.path, ignore_errors=True)
