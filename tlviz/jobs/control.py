"""Following any job: `poll` (its `JobStatus`, read from disk), `cancel`, and `wait` (for scripts and tests).

The same three functions follow every kind of job (`tlviz.jobs.registry`), whatever started it
(`tlviz.jobs.start_analysis`, `tlviz.jobs.start_job`, `tlviz.jobs.start_lr_finder`) and wherever
it runs (this machine or a Ray cluster).
"""

from __future__ import annotations

import time
from pathlib import Path

from tlviz.errors import TlvizError
from tlviz.finetune.store import load_run
from tlviz.jobs import queue
from tlviz.jobs.folder import job_dir, jobs_dir, read_job, read_status
from tlviz.jobs.kind import end_active_runs
from tlviz.jobs.registry import KINDS
from tlviz.jobs.spawn import death_reason, exitcode, stop_worker, worker_alive
from tlviz.jobs.status import ACTIVE_STATES, JobStatus
from tlviz.jsonfiles import now_iso, read_json, write_json

#: A job whose worker has not recorded its process id yet is taken as starting for this many seconds.
STARTING_S = 60.0


def _alive(job_id: str, jdir: Path, status: dict) -> bool:
    pid = status.get("pid")
    if pid is None:  # created, its process not recorded yet
        try:
            return time.time() - (jdir / "job.json").stat().st_mtime < STARTING_S
        except OSError:
            return False
    return worker_alive(job_id, pid)


def poll(job_id: str, root=None) -> JobStatus:
    """Read a job's state and progress from disk (cheap; a page calls it every second).

    A worker that died without recording an end (killed by the out-of-memory
    killer, crashed) is recorded as ``failed`` with the likely cause and what
    to change (`tlviz.jobs.spawn.death_reason`, with its kind's advice), and the
    job's runs still active fail with it; one stopped by `cancel` as ``cancelled``.

    Args:
        job_id: the job (an id, or the `Job` a start function returned).
        root: the runs folder. Defaults to `runs_dir()`.

    Returns:
        The `JobStatus`.
    """
    jdir = job_dir(job_id, root)
    job = read_job(jdir)
    kind = KINDS.get(job.get("kind")) if job else None
    if kind is None:
        return JobStatus(str(job_id), (job or {}).get("kind", ""), "failed",
                         "The job folder is missing or damaged (cleaned up?). Start it again.")
    status = read_status(jdir)
    state = status.get("state", "failed")
    if status.get("waiting") and state == "running":  # a folder written before the one vocabulary
        state = "queued"
    if state in ACTIVE_STATES and not _alive(job_id, jdir, status):
        status = read_status(jdir)  # it may have just finished
        state = status.get("state", "failed")
        if state in ACTIVE_STATES:
            if (jdir / "cancel").exists():
                state, message = "cancelled", ""
            else:
                state, message = "failed", death_reason(exitcode(job_id), tail=kind.death_tail)
            status = {**status, "state": state, "message": message, "updated": now_iso()}
            write_json(jdir / "status.json", status)
            end_active_runs(job, state, message or "cancelled")
            queue.leave(jdir.parent, job_id, job.get("queue_seq"))
    place = queue.queue_place(jobs_dir(root), job_id, job.get("queue_seq")) if state == "queued" else None
    message = str(status.get("message") or "")
    common = dict(queue_position=place and place.position, next_is_yours=place and place.next_is_yours,
                  executor=job.get("executor", "local"),
                  unreachable=bool(status.get("unreachable")))
    if kind.is_analysis:
        progress = read_json(jdir / "progress.json", {}) or {}
        return JobStatus(str(job_id), kind.name, state, message if state == "failed" else "",
                         progress={"fraction": float(progress.get("fraction") or 0.0),
                                   "text": str(progress.get("text") or message)},
                         key=job.get("key", ""), notes=list(job.get("notes") or []) + list(status.get("notes") or []),
                         from_store=bool(job.get("from_store") or status.get("from_store")), **common)
    runs = []
    for rid in job.get("run_ids", []):
        try:
            runs.append(load_run(rid, job.get("root")))
        except TlvizError:
            continue  # deleted meanwhile
    current = next((r for r in runs if r.state == "running"), None)
    progress = current.progress if current is not None else (read_json(jdir / "progress.json", {}) or {})
    result = read_json(jdir / "result.json") if kind.name == "lrfind" else None
    return JobStatus(str(job_id), kind.name, state, message, runs, current, progress, result,
                     configs=list(job.get("configs") or []), **common)


def cancel(job_id: str, root=None, timeout: float = 5.0) -> None:
    """Stop a job: a queued job is dropped; a running one stops.

    A fine-tuning job stops by itself after the current batch (what its runs measured
    is kept; its queued runs do not start); an analysis's worker is stopped at once
    and nothing partial is kept (this waits up to `timeout` for it to end).

    Args:
        job_id: the job.
        root: the runs folder. Defaults to `runs_dir()`.
        timeout: seconds to wait for a stopped analysis worker to end. Defaults to `5.0`.

    Raises:
        TlvizError: no such job (cleaned up).
    """
    jdir = job_dir(job_id, root)
    if not jdir.is_dir():
        raise TlvizError(f"No job {job_id}; it may have been cleaned up.")
    (jdir / "cancel").write_text(now_iso())
    kind = KINDS.get((read_job(jdir) or {}).get("kind"))
    status = read_status(jdir)
    if kind is None or kind.cooperative_cancel or status.get("state") not in ACTIVE_STATES:
        return
    stop_worker(job_id, status.get("pid"))
    deadline = time.monotonic() + timeout
    while _alive(job_id, jdir, read_status(jdir)) and time.monotonic() < deadline:
        time.sleep(0.05)
    poll(job_id, root)  # records `cancelled` (or what it reached: `done`)


def wait(job_id: str, root=None, timeout: float = 600.0, interval: float = 0.3) -> JobStatus:
    """Poll until the job ends (for scripts and tests).

    Args:
        job_id: the job.
        root: the runs folder. Defaults to `runs_dir()`.
        timeout: seconds to wait at most. Defaults to `600.0`.
        interval: seconds between two polls. Defaults to `0.3`.

    Returns:
        The last `JobStatus` (still active when `timeout` passed).
    """
    return poll_until_done(lambda: poll(job_id, root), timeout, interval)


def poll_until_done(poll_once, timeout: float, interval: float):
    """Call ``poll_once()`` every `interval` seconds until its status is no longer ``active`` or `timeout` passes.

    Returns:
        The last status.
    """
    deadline = time.monotonic() + timeout
    while True:
        st = poll_once()
        if not st.active or time.monotonic() > deadline:
            return st
        time.sleep(interval)


def wait_until(poll_once, predicate, timeout: float = 120.0, interval: float = 0.1):
    """Poll a job until `predicate(status)` holds (e.g. it reached its place in the queue), for tests and scripts.

    Args:
        poll_once: ``poll_once() -> JobStatus``.
        predicate: ``predicate(status) -> bool``.
        timeout: seconds to wait at most. Defaults to `120.0`.
        interval: seconds between two polls. Defaults to `0.1`.

    Returns:
        The first status for which `predicate` held.

    Raises:
        TimeoutError: it never held; the message gives the last status's state and text.
    """
    deadline = time.monotonic() + timeout
    while True:
        st = poll_once()
        if predicate(st):
            return st
        if time.monotonic() > deadline:
            raise TimeoutError(f"job {st.job_id} never reached the awaited status (last: {st.state}, {st.text!r})")
        time.sleep(interval)
