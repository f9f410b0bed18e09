"""The one worker entry point: every job's worker process runs `worker_main`, whatever its kind and executor.

`tlviz.jobs.spawn.spawn` starts a fresh interpreter that imports only this module (and what
the job's kind needs, when it needs it) and calls ``worker_main(job folder)``. The prologue
is the same for every kind (`tlviz.jobs.registry`):

1. own log (``worker.log``), priority `tlviz.jobs.spawn.WORKER_NICE`, TensorFlow quiet;
2. ``status.json``: ``queued`` with the process id (a Ray driver: ``running``, connecting);
3. wait for a slot of the queue of heavy jobs (`tlviz.jobs.queue.wait_turn`), showing the
   place in line and whether the next turn is this person's own job; a Cancel while waiting ends
   the job ``cancelled`` (its runs "cancelled before it started"); a Ray job takes no slot;
4. ``running``, then the kind's work: an analysis computes and stores its result
   (`tlviz.jobs.analysis.run_analysis`), a run kind runs on its executor (``run`` here,
   ``ray_run`` on the cluster: `tlviz.jobs.ray_executor`);
5. the end: ``done`` (``cancelled`` when the Cancel flag stopped a run kind), or, from the
   catch-all handler, ``failed`` with the reason (out of memory said as such, with what to
   change) and the job's runs still active failed with it; ``ended_at``, the slot released
   and the job out of the queue (under its last queue number: a sweep that gave way between runs,
   `tlviz.jobs.kinds.runs.give_way`, has a new one), however it ended.

A worker that dies without reaching step 5 (killed by the out-of-memory killer) is found by
`tlviz.jobs.poll`, which records the death reason (`tlviz.jobs.spawn.death_reason`).
"""

from __future__ import annotations

import os
import time
import traceback
from pathlib import Path

from tlviz.errors import ClusterUnreachable, TlvizError
from tlviz.jobs import queue
from tlviz.jobs.analysis import run_analysis
from tlviz.jobs.folder import read_job
from tlviz.jobs.kind import WorkerContext
from tlviz.jobs.registry import get_kind
from tlviz.jobs.spawn import begin_worker
from tlviz.jobs.status import waiting_fields
from tlviz.jsonfiles import read_json, write_json


def await_turn(ctx: WorkerContext) -> queue.Slot | None:
    """Wait in the queue of heavy jobs (`tlviz.jobs.queue.wait_turn`), showing the wait in ``status.json``.

    Args:
        ctx: the job's `WorkerContext` (``queue_position``, ``next_is_yours`` and ``message`` are written while it
            waits).

    Returns:
        The held slot (a placeholder for a job that takes none), or None when the job was cancelled while it
        waited.
    """
    seq = ctx.job.get("queue_seq")
    if seq is None:
        return queue.Slot(-1, None)  # not queued (a Ray driver, or a job created by hand)
    return queue.wait_turn(ctx.jdir.parent, ctx.job["job_id"], seq, ctx.cancelled, on_wait=lambda position, yours: ctx.write(**waiting_fields(position, yours)),
                           owner=ctx.job.get("owner"))


def failure_message(exc: BaseException, tail: str) -> str:
    """What a job that raised `exc` says: a `TlvizError`'s own message, else the exception; running out of
    memory is said as such, with `tail` (what to change)."""
    if isinstance(exc, TlvizError):
        return str(exc)
    msg = f"{type(exc).__name__}: {exc}"
    if isinstance(exc, MemoryError) or "ResourceExhausted" in type(exc).__name__:
        msg = f"The worker ran out of memory ({msg}). {tail}"
    return msg


def worker_main(job_dir: str) -> None:
    """Entry point of every worker process: run the job described in ``job.json`` (see the module docstring).

    Args:
        job_dir: the job folder.
    """
    jdir = Path(job_dir)
    log = begin_worker(jdir)
    job = read_job(jdir) or {}
    ctx = WorkerContext(jdir, job, log)
    if ctx.on_ray:
        ctx.write(state="running", pid=os.getpid(), executor="ray",
                  message=f"connecting to the Ray cluster at {job.get('ray_address') or ''}")
    else:
        ctx.write(state="queued", pid=os.getpid(), message="waiting for a free worker")
    slot = None
    tail = None
    try:
        kind = get_kind(job.get("kind"))
        tail = kind.death_tail
        slot = await_turn(ctx)
        ctx.slot = slot  # a run kind may give it back between runs and take another (`runs.give_way`)
        if slot is None:
            ctx.end_active_runs("cancelled", "cancelled before it started")
            ctx.write(state="cancelled", message="", queue_position=None, next_is_yours=None)
            return
        ctx.write(state="running", started_at=time.time(), queue_position=None, next_is_yours=None,
                  **({} if ctx.on_ray else {"message": ""}))
        if kind.is_analysis:
            end = run_analysis(ctx, kind)
        else:
            execute = kind.ray_run if ctx.on_ray else kind.run
            if execute is None:
                raise TlvizError(f"Jobs of kind {kind.name!r} cannot run on {job.get('executor')!r}.")
            end = execute(ctx) or {}
        ctx.write(**{"message": "", **end, "state": end.get("state") or ("cancelled" if ctx.cancelled() else "done")})
    except BaseException as exc:  # the worker must always leave a readable state behind
        log.error("job failed:\n%s", traceback.format_exc())
        message = failure_message(exc, tail or "")
        ctx.write(state="failed", message=message, **({"unreachable": True} if isinstance(exc, ClusterUnreachable)
                                                          else {}))
        ctx.end_active_runs("failed", message)
    finally:
        status = read_json(jdir / "status.json", {}) or {}  # when the worker let go of its slot
        write_json(jdir / "status.json", {**status, "ended_at": time.time()})
        if slot is not None:
            slot.release()
        # under its last number: a sweep that gave way between runs (`runs.give_way`) has a new one
        queue.leave(jdir.parent, job.get("job_id", jdir.name), ctx.job.get("queue_seq"))
