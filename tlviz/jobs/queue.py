"""One queue for every heavy job: at most `max_jobs()` run at once, first come first served.

Every kind of job (`tlviz.jobs.registry`: fine-tuning runs, learning-rate range tests,
normalization comparisons, diagnoses, repairs, Grad-CAM) runs in a worker process
(`tlviz.jobs.worker`). Every worker process starts at once, but waits for its turn
*before* it imports TensorFlow, so a waiting job costs a small Python process
and no model memory. There is no scheduler thread; the queue lives in files
under ``<runs dir>/.jobs/`` and works across processes (several servers on one
runs folder share it):

- ``.slots/sequence`` — a counter; `enqueue` gives each new job the next
  *queue number* under an exclusive file lock;
- ``.queue/<number>-<job id>.json`` — the job's *marker* while it waits or
  runs: the worker's process id (written by the server once the process is
  started); a ``.running`` file beside it once it holds a slot;
- ``.slots/slot-K.lock`` (K < `max_jobs()`) — a running job holds an exclusive
  `fcntl.flock` on one of them. The kernel releases the lock when the process
  ends, however it ends (finished, crashed, killed by the out-of-memory killer).

A waiting worker takes a free slot only when no older job is still waiting
(first in, first out). Markers of processes that no longer exist are ignored
and removed, so a killed worker never blocks the queue.

Setting: ``TLVIZ_MAX_JOBS`` — how many heavy jobs run at once. Defaults to
`tlviz.machine.jobs_that_fit`: half the CPUs this process may use, and no more jobs than the machine's
memory holds at ``TLVIZ_MEMORY_MB`` plus `tlviz.machine.JOB_OVERHEAD_BYTES` (1.5 GB:
TensorFlow, the model and the decoded images) each; at least 1.
"""

from __future__ import annotations

import fcntl
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from tlviz import config
from tlviz.jsonfiles import read_json, write_json
from tlviz.processes import pid_alive

ENV_MAX_JOBS = "TLVIZ_MAX_JOBS"
#: How often a waiting worker looks at the queue (seconds).
POLL_S = 0.25
#: A marker whose process id was never written is taken as dead after this many seconds
#: (the server stopped between creating the job and starting its process).
UNCLAIMED_S = 120.0


def max_jobs() -> int:
    """How many heavy jobs run at once.

    Returns:
        ``TLVIZ_MAX_JOBS``, else `tlviz.machine.jobs_that_fit` of the memory budget.

    Raises:
        ConfigError: (a `TlvizError`) the variable is set but is not a whole number of at least 1
            (the message says how to set it).
    """
    return config.count(ENV_MAX_JOBS)


def _queue_dir(jobs_dir: Path) -> Path:
    d = Path(jobs_dir) / ".queue"
    d.mkdir(parents=True, exist_ok=True)
    return d


def _slots_dir(jobs_dir: Path) -> Path:
    d = Path(jobs_dir) / ".slots"
    d.mkdir(parents=True, exist_ok=True)
    return d


def _marker(jobs_dir: Path, job_id: str, seq: int) -> Path:
    return _queue_dir(jobs_dir) / f"{int(seq):012d}-{job_id}.json"


def enqueue(jobs_dir: str | os.PathLike, job_id: str) -> int:
    """Give a new job its queue number and put it in the queue (before its process starts).

    Args:
        jobs_dir: the ``.jobs`` folder of the runs folder.
        job_id: the job.

    Returns:
        The queue number: larger than every number given out before, by any process.
    """
    path = _slots_dir(Path(jobs_dir)) / "sequence"
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        raw = os.read(fd, 64).decode(errors="replace").strip()
        seq = (int(raw) if raw.isdigit() else 0) + 1
        os.lseek(fd, 0, os.SEEK_SET)
        os.ftruncate(fd, 0)
        os.write(fd, str(seq).encode())
    finally:
        os.close(fd)  # also releases the lock
    write_json(_marker(Path(jobs_dir), job_id, seq), {"job_id": job_id, "pid": None, "created": time.time()})
    return seq


def claim(jobs_dir: str | os.PathLike, job_id: str, seq: int, pid: int) -> None:
    """Record the process id of a queued job's worker (the server calls this right after starting it)."""
    path = _marker(Path(jobs_dir), job_id, seq)
    info = read_json(path, None)
    if isinstance(info, dict):
        write_json(path, {**info, "pid": int(pid)})


def leave(jobs_dir: str | os.PathLike, job_id: str, seq: int | None) -> None:
    """Take a job out of the queue (it finished, failed or was cancelled). Idempotent."""
    if seq is None:
        return
    path = _marker(Path(jobs_dir), job_id, seq)
    for p in (path, path.with_suffix(".running")):
        p.unlink(missing_ok=True)


@dataclass
class _Entry:
    seq: int
    job_id: str
    running: bool


def _entries(jobs_dir: Path) -> list[_Entry]:
    """Jobs in the queue whose worker still exists, oldest first; dead markers are removed."""
    out = []
    now = time.time()
    for path in sorted(_queue_dir(jobs_dir).glob("*.json")):
        seq_text, _, job_id = path.stem.partition("-")
        if not seq_text.isdigit():
            continue
        info = read_json(path, None)
        if not isinstance(info, dict):
            continue  # being written
        pid = info.get("pid")
        alive = pid_alive(pid) if pid else now - float(info.get("created") or 0) < UNCLAIMED_S
        if not alive:
            leave(jobs_dir, job_id, int(seq_text))
            continue
        out.append(_Entry(int(seq_text), job_id, path.with_suffix(".running").exists()))
    return out


def queue_position(jobs_dir: str | os.PathLike, job_id: str, seq: int | None) -> int | None:
    """A waiting job's place in the line.

    Args:
        jobs_dir: the ``.jobs`` folder.
        job_id / seq: the job and its queue number.

    Returns:
        1 + the number of older jobs not finished yet (running, or waiting to
        run), or None when the job is not waiting (it runs, or has ended).
    """
    if seq is None:
        return None
    entries = _entries(Path(jobs_dir))
    me = next((e for e in entries if e.seq == seq and e.job_id == job_id), None)
    if me is None or me.running:
        return None
    return 1 + sum(e.seq < seq for e in entries)


def waiting_text(position: int | None) -> str:
    """The sentence for a waiting job: "Waiting for a free worker: 2 jobs ahead".

    Args:
        position: its place in the line (`queue_position`; 1 = next). Defaults
            to next when None.

    Returns:
        The sentence.
    """
    ahead = max((position or 1) - 1, 0)
    return f"Waiting for a free worker: {ahead} job{'' if ahead == 1 else 's'} ahead"


class Slot:
    """A held slot: one of the `max_jobs()` places to run. Released by `release` or when the process ends."""

    def __init__(self, index: int, fd: int):
        self.index = index
        self._fd = fd

    def release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None


def _try_slot(jobs_dir: Path) -> Slot | None:
    slots = _slots_dir(jobs_dir)
    for k in range(max_jobs()):
        fd = os.open(slots / f"slot-{k}.lock", os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            os.close(fd)
            continue
        return Slot(k, fd)
    return None


def wait_turn(jobs_dir: str | os.PathLike, job_id: str, seq: int, should_stop: Callable[[], bool],
              on_wait: Callable[[int], None] | None = None, poll_s: float = POLL_S) -> Slot | None:
    """Block until this job may run (called in the worker process, before any heavy import).

    Args:
        jobs_dir: the ``.jobs`` folder.
        job_id / seq: the job and its queue number (from `enqueue`).
        should_stop: checked while waiting; True gives up (the job was cancelled).
        on_wait: called with the queue position whenever it changes.
        poll_s: seconds between looks at the queue. Defaults to `POLL_S`.

    Returns:
        The held `Slot` (keep it until the job ends), or None when `should_stop` said so.
    """
    jobs_dir = Path(jobs_dir)
    marker = _marker(jobs_dir, job_id, seq)
    if marker.exists():
        claim(jobs_dir, job_id, seq, os.getpid())  # the same id the server records; no wait for it
    else:  # e.g. started by hand: join the line now
        write_json(marker, {"job_id": job_id, "pid": os.getpid(), "created": time.time()})
    last = None
    while True:
        if should_stop():
            return None
        entries = _entries(jobs_dir)
        if not any(e.seq < seq and not e.running for e in entries):
            slot = _try_slot(jobs_dir)
            if slot is not None:
                marker.with_suffix(".running").write_text(str(os.getpid()))
                return slot
        position = 1 + sum(e.seq < seq for e in entries)
        if on_wait is not None and position != last:
            on_wait(position)
        last = position
        time.sleep(poll_s)
