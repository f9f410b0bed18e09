"""The job folder: where a job's spec, status, progress and log live, and the tidying of old ones.

Job folders live in ``<runs dir>/.jobs/<job id>/``:

- ``job.json`` — the spec: what the worker needs (inputs, parameters, run ids), plus
  ``job_id``, ``kind``, ``root``, ``created``, ``queue_seq`` (its number in the queue of
  heavy jobs, `tlviz.jobs.queue`; None for a job that takes no slot) and ``executor``;
- ``status.json`` — ``state`` (one of `tlviz.jobs.status.STATES`), ``pid``, ``message``,
  ``queue_position`` while it waits, ``started_at`` / ``ended_at`` (when it held its slot),
  ``notes``, ``from_store``, ``where`` / ``cluster`` / ``unreachable`` (Ray);
- ``cancel`` — the flag `tlviz.jobs.cancel` drops (``cancel.force`` on Ray: Tune's stopper);
- ``progress.json`` (``fraction``, ``text``; a range test: its progress dict), ``progress.log``
  (one line per step the engine reported), ``result.json`` (a range test) or ``result.json`` +
  ``result.npz`` (an analysis: `tlviz.jobs.resultfiles`);
- ``worker.log`` — the worker process's output.

The queue's own files (``.queue``, ``.slots``) and the analyses' ``.latest`` pointers sit beside
the job folders, under names starting with a dot.
"""

from __future__ import annotations

import shutil
import time
from pathlib import Path

from tlviz import diskcap
from tlviz.finetune.store import check_run_id, new_run_id, runs_dir
from tlviz.jobs import queue
from tlviz.jsonfiles import now_iso, read_json, write_json

#: Saved inputs and job folders unused for this many days are removed when a new job starts.
KEEP_DAYS = 7


def jobs_dir(root=None) -> Path:
    """The ``.jobs`` folder of the runs folder (created if needed)."""
    d = runs_dir(root) / ".jobs"
    d.mkdir(parents=True, exist_ok=True)
    return d


def job_dir(job_id: str, root=None) -> Path:
    """The folder of job `job_id` (which may not exist); refuses ids that are not plain names."""
    return jobs_dir(root) / check_run_id(job_id)


def new_job(kind: str, spec: dict, root=None, state: str = "queued", queued: bool = True) -> tuple[str, Path]:
    """Create a job folder with ``job.json`` (``spec`` plus id, kind, root, time and queue number) and ``status.json``.

    Args:
        kind: the job's kind (a name of `tlviz.jobs.registry.KINDS`).
        spec: what the worker needs; stored in ``job.json``.
        root: the runs folder. Defaults to `runs_dir()`.
        state: the first state written to ``status.json``. Defaults to `"queued"`.
        queued: give the job a place in the queue of heavy jobs (`tlviz.jobs.queue.enqueue`, under the
            spec's ``owner`` for the fair order). Defaults to `True`; False for a job that needs no slot
            (served from the store, or run on Ray).

    Before the folder is made, room is made under ``TLVIZ_RUNS_MAX_GB`` (`tlviz.diskcap.make_room`); what that
    removed is listed in ``job.json`` under ``evicted`` (`tlviz.diskcap.evicted_of_job`).

    Returns:
        ``(job_id, job folder)``.

    Raises:
        ConfigError: ``TLVIZ_RUNS_MAX_GB`` is set to something that is not a positive number.
    """
    spec = {**spec, "evicted": [r.to_dict() for r in diskcap.make_room(root)]}
    job_id = new_run_id()
    while job_dir(job_id, root).exists():
        job_id = new_run_id()
    jdir = job_dir(job_id, root)
    jdir.mkdir(parents=True)
    seq = queue.enqueue(jobs_dir(root), job_id, spec.get("owner")) if queued else None
    write_json(jdir / "job.json", {**spec, "job_id": job_id, "kind": kind, "root": str(runs_dir(root)),
                                   "created": now_iso(), "queue_seq": seq})
    write_json(jdir / "status.json", {"state": state, "message": "starting the worker", "updated": now_iso()})
    return job_id, jdir


def read_job(jdir: Path) -> dict | None:
    """A job folder's ``job.json``, or None when it is missing or damaged."""
    job = read_json(jdir / "job.json")
    return job if isinstance(job, dict) else None


def read_status(jdir: Path) -> dict:
    """A job folder's ``status.json`` (an empty dict when missing)."""
    return read_json(jdir / "status.json", {}) or {}


def tidy(root=None, keep_days: float = KEEP_DAYS) -> int:
    """Remove saved inputs, cached activations and results, and finished job folders not used for `keep_days`.

    Run folders and the queue's own files are never touched.

    Args:
        root: the runs folder. Defaults to `runs_dir()`.
        keep_days: how long an unused entry is kept. Defaults to `KEEP_DAYS`.

    Returns:
        The number of entries removed.
    """
    base = runs_dir(root)
    cutoff = time.time() - keep_days * 86400
    removed = 0
    for folder in (base / ".inputs", base / ".cache" / "activations", base / ".results", base / ".jobs" / ".latest"):
        for p in folder.glob("*") if folder.is_dir() else []:
            try:
                if p.is_file() and p.stat().st_mtime < cutoff:
                    p.unlink()
                    removed += 1
            except OSError:
                pass
    jobs = base / ".jobs"
    for j in jobs.iterdir() if jobs.is_dir() else []:
        if j.name.startswith("."):
            continue  # the queue (`tlviz.jobs.queue`): its lock files must outlive every job
        try:
            if j.stat().st_mtime < cutoff and not diskcap.job_folder_active(j):
                shutil.rmtree(j, ignore_errors=True)
                removed += 1
        except OSError:
            pass
    return removed


class Progress:
    """``progress(fraction, text)`` for the engine: ``progress.json`` (throttled) and ``progress.log``.

    Args:
        jdir: the job folder.
        interval: least seconds between two writes of ``progress.json`` with the same text. Defaults to `0.25`.
    """

    def __init__(self, jdir: Path, interval: float = 0.25):
        self.jdir = jdir
        self.interval = interval
        self._last = (-1.0, None, 0.0)

    def __call__(self, fraction: float, text: str) -> None:
        last_f, last_text, last_t = self._last
        now = time.monotonic()
        if text != last_text:
            with open(self.jdir / "progress.log", "a") as f:
                f.write(f"{fraction:.3f}\t{text}\n")
        if text != last_text or fraction >= 1.0 or now - last_t >= self.interval:
            write_json(self.jdir / "progress.json", {"fraction": float(fraction), "text": text, "updated": now_iso()})
            self._last = (fraction, text, now)
