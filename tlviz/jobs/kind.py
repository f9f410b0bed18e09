"""What a kind of job is (`JobKind`), and what its work gets in the worker process (`WorkerContext`).

A kind is one module of `tlviz.jobs.kinds` holding a ``KIND = JobKind(...)``, and one entry
in `tlviz.jobs.registry.KINDS`. The worker process (`tlviz.jobs.worker.worker_main`) does
everything a kind has in common: the prologue (log, priority), the wait for a queue slot, the
status file, cancellation, the catch-all handler with the death reason and, for a fine-tuning
job, the runs left active when it ends. A kind brings only its own work:

- an *analysis* (normalize, diagnose, repair, gradcam) brings ``params`` (checks and stores its
  parameters) and ``compute(job, progress, notes, log) -> result``; the job system stores the
  result by key (`tlviz.jobs.results`) and serves it again without a worker;
- a *run* kind (fine-tuning runs incl. sweeps, the learning-rate range test) brings
  ``run(ctx)`` for the local executor and ``ray_run(ctx)`` for the Ray executor
  (`tlviz.jobs.ray_executor`); its status carries the runs of the run store.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from tlviz.finetune.store import ACTIVE_STATES as RUN_ACTIVE_STATES
from tlviz.finetune.store import RunWriter, runs_dir
from tlviz.jsonfiles import now_iso, read_json, write_json

#: What a killed or crashed analysis worker's message tells the user to change.
MEMORY_HINT = ("Earlier results are kept. Start it again with fewer images, or give each job less memory: set "
               "TLVIZ_MEMORY_MB lower (e.g. 512) or TLVIZ_MAX_JOBS to 1, and restart the server.")


@dataclass(frozen=True)
class JobKind:
    """One kind of job.

    Attributes:
        name: its name, recorded in ``job.json`` (``"normalize"``, ``"runs"``, ...).
        title: what it does, in a few words (for messages and the registry's listing).
        params: an analysis's parameter check: ``params(dict or None) -> dict`` (the stored form),
            raising `tlviz.errors.AnalysisRefused` with the fix. None for a run kind.
        compute: an analysis's work in the worker process: ``compute(job, progress, notes, log) -> result``
            (a result type of `tlviz.jobs.resultfiles`). None for a run kind.
        also_store: an analysis's other results worth keeping: ``also_store(result, job) ->
            [(kind, key, result)]`` (a diagnosis keeps the normalization comparison it made). Defaults to none.
        run: a run kind's work on this machine: ``run(ctx)`` with a `WorkerContext`.
        ray_run: a run kind's work on a Ray cluster (`tlviz.jobs.ray_executor`); None when it has none.
        death_tail: the sentence that ends the message of a worker that died (what to do next).
        uses_source: an analysis that decodes the original image files again (the resize variants):
            ``uses_source(stored params) -> bool``; when the source cannot be re-opened, the job's notes
            say what was left out (`tlviz.jobs.sources.NO_SOURCE_NOTE`). None for the others.
    """

    name: str
    title: str
    params: Callable[[dict | None], dict] | None = None
    compute: Callable | None = None
    also_store: Callable | None = None
    run: Callable | None = None
    ray_run: Callable | None = None
    death_tail: str = MEMORY_HINT
    uses_source: Callable[[dict], bool] | None = None

    @property
    def is_analysis(self) -> bool:
        """An analysis (a result stored by key), as opposed to a run kind (runs in the run store)."""
        return self.compute is not None

    @property
    def cooperative_cancel(self) -> bool:
        """Whether its worker stops by itself at the Cancel flag (a run kind: after the current batch);
        an analysis's worker is stopped instead (nothing partial is kept)."""
        return not self.is_analysis


class WorkerContext:
    """What a kind's work gets in the worker process: its folder, spec, log, status and Cancel flag.

    Args:
        jdir: the job folder.
        job: its ``job.json``.
        log: the worker's logger (``worker.log``).
    """

    def __init__(self, jdir: Path, job: dict, log):
        self.jdir = Path(jdir)
        self.job = job
        self.log = log
        self.status: dict = {}
        #: The queue slot the worker holds while the job runs (a `tlviz.jobs.queue.Slot`; None before its
        #: turn). A sweep may give it back between runs and take another (`tlviz.jobs.kinds.runs.give_way`).
        self.slot = None

    @property
    def root(self) -> str:
        """The runs folder."""
        return self.job.get("root") or str(runs_dir())

    @property
    def on_ray(self) -> bool:
        return self.job.get("executor") == "ray"

    def cancelled(self) -> bool:
        """Whether the Cancel flag is up (`tlviz.jobs.cancel`)."""
        return (self.jdir / "cancel").exists()

    def write(self, **changes) -> None:
        """Update ``status.json`` with `changes` (kept for the next writes)."""
        self.status.update(changes)
        write_json(self.jdir / "status.json", {**self.status, "updated": now_iso()})

    def end_active_runs(self, state: str, message: str) -> None:
        """Give the job's runs still queued or running their end (`end_active_runs`)."""
        end_active_runs(self.job, state, message, pid=os.getpid())


def end_active_runs(job: dict, state: str, message: str, **extra) -> None:
    """Mark the job's queued and running runs `state` with `message` (what they recorded is kept).

    Args:
        job: the job's ``job.json`` (``run_ids``, ``root``).
        state: the runs' end (``failed``, ``cancelled``).
        message: why.
        **extra: more fields for each run's ``status.json`` (e.g. ``pid``).
    """
    for rid in job.get("run_ids", []):
        path = Path(job.get("root") or runs_dir()) / rid
        status = read_json(path / "status.json", {}) or {}
        if path.is_dir() and status.get("state") in RUN_ACTIVE_STATES:
            RunWriter(path).status(state, message, **extra)
