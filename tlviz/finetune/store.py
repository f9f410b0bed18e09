"""Runs on disk: one folder per run, readable while it is being written.

Location: ``TLVIZ_RUNS_DIR`` if set, else ``~/.tlviz/runs`` (or
``./tlviz_runs`` when the home folder is not writable).

A run folder holds:

- ``config.json`` — the `RunConfig`, the model and the image set it ran on, and the
  workspace (``owner``) that started it (written first);
- ``status.json`` — ``state`` (queued / running / completed / cancelled /
  diverged / stopped / failed / refused), a message, times, the worker's pid,
  and ``where`` it ran (``executor`` local / ray, ``node``, ``device`` CPU / GPU;
  see `tlviz.finetune.executors`); a run that a sweep's early-stopping scheduler
  (ASHA on Ray Tune) ``stopped`` records the epoch in ``stopped_at``;
- ``progress.json`` — epoch, batch, elapsed and remaining time (while running);
- ``history.json`` — per-epoch metrics, rewritten after every epoch;
- ``metrics.json`` — final metrics, per-class accuracy, confusion matrix,
  findings, representation drift per block (``representation_drift``), the
  original task's retention (``retention``, when measured) (at the end);
- ``weight_change.csv`` — the weight-change report;
- ``model.keras`` — the fine-tuned model, with tlviz metadata (preset, class names);
- ``tb/`` — TensorBoard event files (``tensorboard --logdir <runs dir>``).

A folder that is missing files it should have (a crash, a half-written copy)
reads as ``failed`` with the reason, never as an error.

Workspaces: the app gives every browser session a workspace token and lists,
opens and deletes only the runs whose ``owner`` is that token, so people
sharing one server never see each other's runs. Runs started without an
owner (the CLI, scripts) have ``owner`` None and are listed only when no
owner is asked for.
"""

from __future__ import annotations

import datetime as _dt
import json
import math
import os
import re
import secrets
import shutil
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from tlviz import config
from tlviz.errors import RunRefused, TlvizError
from tlviz.jsonsafe import json_safe

ENV_RUNS_DIR = "TLVIZ_RUNS_DIR"
STATES = ("queued", "running", "completed", "cancelled", "diverged", "stopped", "failed", "refused")
FINAL_STATES = ("completed", "cancelled", "diverged", "stopped", "failed", "refused")
ACTIVE_STATES = ("queued", "running")
HISTORY_COLUMNS = ["epoch", "phase", "loss", "accuracy", "val_loss", "val_accuracy", "lr", "elapsed_s", "partial"]
RUN_COLUMNS = [
    "run_id", "created", "state", "message", "label", "unfreeze", "lr", "epochs", "batch_size", "optimizer",
    "preset", "new_head", "two_phase", "bn", "augment", "head_dropout", "weight_decay", "sweep_id",
    "best_val_accuracy", "final_val_accuracy", "final_val_loss", "time_s", "model", "images", "cache_used",
    "owner", "ran_on", "stopped_at", "control", "control_of",
]
_RUN_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,100}$")


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
    if not isinstance(run_id, str) or not _RUN_ID.match(run_id):
        raise TlvizError(f"{run_id!r} is not a run id. Pick a run from the list.")
    return run_id


def run_path(run_id: str, root: str | os.PathLike | None = None) -> Path:
    return runs_dir(root) / check_run_id(run_id)


def now_iso() -> str:
    return _dt.datetime.now().isoformat(timespec="seconds")


# -- JSON that survives NaN and numpy ---------------------------------------------

def clean_json(obj):
    """Make `obj` JSON-safe: numpy to Python, NaN / inf to None."""
    return json_safe(obj)


def write_json(path: Path, obj) -> None:
    """Write atomically (temp file + rename), so a reader never sees half a file."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(clean_json(obj), indent=1))
    os.replace(tmp, path)


def read_json(path: Path, default=None):
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return default


# -- writing -------------------------------------------------------------------

class RunWriter:
    """Writes one run's folder as the run progresses.

    Args:
        run_dir: the run's folder (created if needed).
    """

    def __init__(self, run_dir: str | os.PathLike):
        self.dir = Path(run_dir)
        self.dir.mkdir(parents=True, exist_ok=True)
        self._tb = None

    @property
    def run_id(self) -> str:
        return self.dir.name

    @property
    def model_path(self) -> Path:
        return self.dir / "model.keras"

    def write_config(self, config, model_info: dict | None = None, images_info: dict | None = None,
                     owner: str | None = None, original: dict | None = None) -> None:
        extra = {"original": original} if original else {}
        write_json(self.dir / "config.json", {"run_id": self.run_id, "created": now_iso(), "config": config.to_dict(),
                                              "model": model_info or {}, "images": images_info or {},
                                              "owner": owner, **extra})

    def status(self, state: str, message: str = "", **extra) -> None:
        if state not in STATES:
            raise ValueError(f"state must be one of {STATES}, not {state!r}")
        old = read_json(self.dir / "status.json", {}) or {}
        data = {**old, **extra, "state": state, "message": message, "updated": now_iso()}
        if state == "running" and "started" not in old:
            data["started"] = now_iso()
        if state in FINAL_STATES:
            data["ended"] = now_iso()
        write_json(self.dir / "status.json", data)

    def progress(self, info: dict) -> None:
        write_json(self.dir / "progress.json", info)

    def epoch(self, history: list[dict]) -> None:
        """Record the history so far (after every epoch) and its last entry in TensorBoard."""
        write_json(self.dir / "history.json", history)
        if history:
            self._tensorboard(history[-1])

    def _tensorboard(self, entry: dict) -> None:
        try:
            import tensorflow as tf

            if self._tb is None:
                self._tb = (tf.summary.create_file_writer(str(self.dir / "tb" / "train")),
                            tf.summary.create_file_writer(str(self.dir / "tb" / "validation")))
            step = int(entry["epoch"])
            for writer, prefix in zip(self._tb, ("", "val_")):
                with writer.as_default():
                    for name in ("loss", "accuracy"):
                        v = entry.get(prefix + name)
                        if v is not None and math.isfinite(float(v)):
                            tf.summary.scalar(f"epoch_{name}", float(v), step=step)
                    if prefix == "" and entry.get("lr") is not None:
                        tf.summary.scalar("learning_rate", float(entry["lr"]), step=step)
                writer.flush()
        except Exception:  # TensorBoard files are a convenience; never fail a run for them
            pass

    def finish(self, metrics: dict, weight_change: pd.DataFrame | None = None) -> None:
        if weight_change is not None:
            tmp = self.dir / f".weight_change.{os.getpid()}.tmp"
            weight_change.to_csv(tmp, index=False)
            os.replace(tmp, self.dir / "weight_change.csv")
        write_json(self.dir / "metrics.json", metrics)
        self.close()

    def close(self) -> None:
        if self._tb is not None:
            for w in self._tb:
                try:
                    w.close()
                except Exception:
                    pass
            self._tb = None


# -- reading -------------------------------------------------------------------

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
    def progress_info(self) -> "RunProgress":
        """`progress` as a `RunProgress`."""
        return RunProgress.from_dict(self.progress)

    @property
    def outcome(self) -> "RunOutcome":
        """`metrics` (``metrics.json``) as a `RunOutcome` (empty until the run ends)."""
        return RunOutcome.from_metrics(self.metrics)


def format_seconds(s) -> str:
    """``"42 s"``, ``"3:05"`` (minutes:seconds) or ``"–"`` for None / NaN."""
    if s is None or (isinstance(s, float) and not math.isfinite(s)):
        return "–"
    s = int(round(float(s)))
    return f"{s // 60}:{s % 60:02d}" if s >= 60 else f"{s} s"


#: Stages of a run in which the worker's message says what it does (no epoch/batch counts yet).
_MESSAGE_STAGES = ("caching", "preparing", "evaluating", "saving")


@dataclass(frozen=True)
class RunProgress:
    """Where a run or a range test stands, as its worker last wrote it (``progress.json``).

    Attributes:
        stage: ``preparing``, ``caching``, a training phase, ``evaluating``,
            ``saving``, or ``lrfind`` for a range test; ``""`` before the first report.
        epoch / epochs: the current epoch and how many there are (None: unknown).
        batch / batches: the current batch of the epoch and how many (None: unknown).
        batches_done / total_batches: batches done over the whole run, and planned.
        elapsed_s / eta_s: seconds since the start, and the estimate left (None: unknown).
        message: what the worker does in a stage without counts.
        step / steps: for a range test, the step and about how many there are.
    """

    stage: str = ""
    epoch: int = 0
    epochs: int | None = None
    batch: int = 0
    batches: int | None = None
    batches_done: float = 0
    total_batches: int = 1
    elapsed_s: float | None = None
    eta_s: float | None = None
    message: str = ""
    step: int = 0
    steps: int = 100

    @classmethod
    def from_dict(cls, data: dict | None) -> "RunProgress":
        """Read a progress dict (missing or damaged keys take the defaults).

        Args:
            data: the dict the worker wrote, or None.

        Returns:
            The `RunProgress`.
        """
        d = data if isinstance(data, dict) else {}
        return cls(stage=str(d.get("stage") or ""), epoch=d.get("epoch", 0), epochs=d.get("epochs"),
                   batch=d.get("batch", 0), batches=d.get("batches"),
                   batches_done=float(d.get("batches_done") or 0),
                   total_batches=max(int(d.get("total_batches") or 1), 1), elapsed_s=d.get("elapsed_s"),
                   eta_s=d.get("eta_s"), message=str(d.get("message") or ""), step=int(d.get("step") or 0),
                   steps=int(d.get("steps") or 100))

    @property
    def fraction(self) -> float:
        """Progress between 0 and 1 (batches for a run, steps for a range test)."""
        if self.stage == "lrfind":
            return min(self.step / max(self.steps, 1), 1.0)
        return min(self.batches_done / self.total_batches, 1.0)

    @property
    def text(self) -> str:
        """One line: the stage's message, or epoch, batch, time elapsed and left."""
        if self.stage == "lrfind":
            return (f"Learning-rate range test: step {self.step} of about {self.steps}" if self.step
                    else "Learning-rate range test: starting the worker…")
        if self.stage in _MESSAGE_STAGES:
            return self.message or self.stage
        return (f"epoch {self.epoch}/{'?' if self.epochs is None else self.epochs} · batch {self.batch}/"
                f"{'?' if self.batches is None else self.batches} · {format_seconds(self.elapsed_s)} elapsed · "
                f"~{format_seconds(self.eta_s)} left")


@dataclass
class RunOutcome:
    """What a finished run measured (its ``metrics.json``), with accessors.

    Attributes:
        metrics: the stored dict (``{}`` until the run ends).
        final: ``loss`` / ``accuracy`` (last epoch, training mode) and
            ``val_loss`` / ``val_accuracy`` (the final model on the validation images).
        best_val_accuracy: the best validation accuracy of any epoch (None: none measured).
        elapsed_s: the run's wall time (None: unknown).
        findings: what the curves show (`tlviz.findings.Finding`; a damaged entry is left out).
        notes: remarks (cache fallback reason, skipped layers, ...).
        class_names: the image set's classes.
        per_class: DataFrame ``class, n, correct, accuracy`` on validation (empty: none).
        confusion: ``(n_classes, n_classes)`` counts, rows true, columns predicted (None: none).
        frozen_layers_changed: frozen layers whose weights moved (should be empty).
        drift: representation drift per block of the base (``block``, ``cka``, ``trained``,
            ``status``, ``layers``; `tlviz.finetune.drift`), input to output (empty: not measured).
        retention: the original task's accuracy before and after (`tlviz.finetune.retention`),
            or None when no original-task image set was given.
    """

    metrics: dict = field(default_factory=dict)
    final: dict = field(default_factory=dict)
    best_val_accuracy: float | None = None
    elapsed_s: float | None = None
    findings: list = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    class_names: list[str] = field(default_factory=list)
    per_class: pd.DataFrame = field(default_factory=pd.DataFrame)
    confusion: np.ndarray | None = None
    frozen_layers_changed: list[str] = field(default_factory=list)
    drift: list[dict] = field(default_factory=list)
    retention: dict | None = None

    @classmethod
    def from_metrics(cls, metrics: dict | None) -> "RunOutcome":
        """Read a run's ``metrics.json`` dict.

        Args:
            metrics: the dict (``RunResult.to_metrics``), or None / ``{}`` for a run without results.

        Returns:
            The `RunOutcome`.
        """
        from tlviz.findings import Finding

        m = metrics if isinstance(metrics, dict) else {}
        findings = []
        for f in m.get("findings") or []:
            try:
                findings.append(Finding.from_dict(f))
            except ValueError:
                continue
        return cls(metrics=m, final=dict(m.get("final") or {}), best_val_accuracy=m.get("best_val_accuracy"),
                   elapsed_s=m.get("elapsed_s"), findings=findings, notes=list(m.get("notes") or []),
                   class_names=list(m.get("class_names") or []), per_class=pd.DataFrame(m.get("per_class") or []),
                   confusion=np.asarray(m["confusion"]) if m.get("confusion") else None,
                   frozen_layers_changed=list(m.get("frozen_layers_changed") or []),
                   drift=[d for d in (m.get("representation_drift") or []) if isinstance(d, dict) and "block" in d],
                   retention=m.get("retention") if isinstance(m.get("retention"), dict) else None)

    @property
    def empty(self) -> bool:
        """Whether nothing was measured (the run has not ended, or ended without results)."""
        return not self.metrics

    @property
    def val_accuracy(self) -> float | None:
        """The final model's accuracy on the validation images (inference mode); None when not measured."""
        return self.final.get("val_accuracy")

    @property
    def val_loss(self) -> float | None:
        """The final model's loss on the validation images; None when not measured."""
        return self.final.get("val_loss")

    @property
    def drift_table(self) -> pd.DataFrame:
        """`drift` as a DataFrame (``block``, ``cka``, ``trained``, ``status``, ``layers``), input to output."""
        return pd.DataFrame(self.drift, columns=["block", "cka", "trained", "status", "layers"])

    @property
    def val_correct(self) -> np.ndarray:
        """Per validation image (in ``val_indices`` order), whether the final model was right."""
        t = np.asarray(self.metrics.get("val_true") or [], dtype=np.int64)
        p = np.asarray(self.metrics.get("val_pred") or [], dtype=np.int64)
        return t == p if len(t) == len(p) else np.zeros(0, bool)

    @property
    def val_indices(self) -> np.ndarray:
        """The image-set indices of the validation images."""
        return np.asarray(self.metrics.get("val_indices") or [], dtype=np.int64)

    @property
    def train_accuracy(self) -> float | None:
        """The last epoch's training accuracy (training mode: dropout on); None when not measured."""
        return self.final.get("accuracy")

    def cell(self, true_index: int, predicted_index: int) -> np.ndarray:
        """Image-set indices of the validation images of one confusion-matrix cell.

        Args:
            true_index: row (true class index).
            predicted_index: column (predicted class index).

        Returns:
            The indices (empty when the run stored none).
        """
        from tlviz.finetune.summary import confusion_cell

        return confusion_cell(self.metrics, true_index, predicted_index)


def describe_where(where: dict | None) -> str:
    """One line for a run's place: ``local · host · CPU`` or ``Ray · 10.0.0.2 · GPU (NVIDIA A100)``.

    Args:
        where: the ``where`` a run's ``status.json`` holds (None / empty: unknown).

    Returns:
        The line; ``""`` when nothing was recorded.
    """
    if not where:
        return ""
    ex = "Ray" if where.get("executor") == "ray" else "local"
    device = str(where.get("device") or "?")
    if device == "GPU" and where.get("device_name"):
        device += f" ({where['device_name']})"
    return " · ".join(p for p in (ex, str(where.get("node") or ""), device) if p)


def pid_alive(pid) -> bool:
    """Whether a process with this id runs on this machine (zombies count as dead)."""
    try:
        pid = int(pid)
        os.kill(pid, 0)
    except (TypeError, ValueError, ProcessLookupError):
        return False
    except PermissionError:
        return True
    except OSError:
        return False
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
        return stat.rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return True


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
    """Runs, newest first, one row each (`RUN_COLUMNS`); damaged folders read as failed.

    Args:
        root: the runs folder. Defaults to `runs_dir()`.
        owner: when given, only the runs of this workspace. Defaults to all runs.
    """
    base = runs_dir(root)
    rows = []
    for p in sorted(base.iterdir(), reverse=True):
        if not p.is_dir() or p.name.startswith(".") or not _RUN_ID.match(p.name):
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
            "model": r.model.get("filename", ""), "images": r.images.get("source", ""),
            "cache_used": r.metrics.get("cache_used"), "owner": r.owner, "ran_on": r.ran_on,
            "stopped_at": r.stopped_at, "control": c.get("control"), "control_of": c.get("control_of"),
        })
    return pd.DataFrame(rows, columns=RUN_COLUMNS)


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
