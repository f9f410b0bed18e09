"""One queue for every heavy job: at most `max_jobs()` run at once, people served in turn.

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
  runs: its owner (a workspace or signed-in identity token; None for the command
  line, which counts as one owner) and the worker's process id (written by the
  server once the process is started); a ``.running`` file beside it once it holds a slot;
- ``.slots/turns`` — the turns taken lately: one line per time a job took a slot (its queue
  number, its owner, the last queue number given out when it started, its job id), written by
  `wait_turn` under ``.slots/turns.lock``; a line is dropped once it is older than every job still
  in the queue and its job has left the queue;
- ``.slots/slot-K.lock`` (K < `max_jobs()`) — a running job holds an exclusive
  `fcntl.flock` on one of them. The kernel releases the lock when the process
  ends, however it ends (finished, crashed, killed by the out-of-memory killer).

**The fair order** (round-robin between owners, first come first served within one owner).
Every waiting worker computes the same order from those files, with no scheduler: a waiting
job ``j`` of owner ``o`` has the *rank* ``turns(o) + (o's waiting jobs with a smaller queue
number)``, where ``turns(o)`` counts o's jobs running now, o's jobs that took a slot since
the oldest job still waiting was queued, and the earlier turns of o's jobs still in the queue
(a sweep that gave way keeps the turns it had). Waiting jobs are served in the order (rank, queue
number): with one slot, A's batch A1 A2 A3 queued before B1 and C1 runs A1, B1, C1, A2, A3.
A job is *eligible* unless its owner already runs ``TLVIZ_MAX_JOBS_PER_USER`` jobs
(`max_jobs_per_user`); a waiting worker takes a free slot only when it is eligible and no
eligible job precedes it in the order (an ineligible job blocks no one behind it). Markers of
processes that no longer exist are ignored and removed, so a killed worker never blocks the queue.

**A sweep yields between runs.** A fine-tuning job trains its runs one after another on one
slot; before each run after the first it calls `yield_turn`: when another owner's eligible job
waits and would be served before this job were it queued again (and no free slot is left for
it), the sweep takes a new queue number (same job id, same process: the model stays loaded),
gives its slot back and waits its turn again. So one person's sweep delays another person's
job by at most one run.

Settings: ``TLVIZ_MAX_JOBS`` — how many heavy jobs run at once. Defaults to
`tlviz.machine.jobs_that_fit`: half the CPUs this process may use, and no more jobs than the machine's
memory holds at ``TLVIZ_MEMORY_MB`` plus `tlviz.machine.JOB_OVERHEAD_BYTES` (1.5 GB:
TensorFlow, the model and the decoded images) each; at least 1. ``TLVIZ_MAX_JOBS_PER_USER`` —
how many of them one owner may run at once (unset: no cap beyond ``TLVIZ_MAX_JOBS``).
"""

from __future__ import annotations

import fcntl
import json
import os
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from tlviz import config
from tlviz.jsonfiles import read_json, write_json
from tlviz.processes import pid_alive

ENV_MAX_JOBS = "TLVIZ_MAX_JOBS"
ENV_MAX_JOBS_PER_USER = "TLVIZ_MAX_JOBS_PER_USER"
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


def max_jobs_per_user() -> int | None:
    """How many heavy jobs one owner (a signed-in person, a browser workspace, the command line) runs at once.

    Returns:
        ``TLVIZ_MAX_JOBS_PER_USER``, or None when it is unset (no cap beyond `max_jobs`).

    Raises:
        ConfigError: (a `TlvizError`) the variable is set but is not a whole number of at least 1
            (the message says how to set it).
    """
    return config.optional_count(ENV_MAX_JOBS_PER_USER)


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


def _last_number(jobs_dir: Path) -> int:
    """The last queue number given out (0 when none)."""
    try:
        raw = (_slots_dir(jobs_dir) / "sequence").read_text().strip()
    except OSError:
        return 0
    return int(raw) if raw.isdigit() else 0


def enqueue(jobs_dir: str | os.PathLike, job_id: str, owner: str | None = None) -> int:
    """Give a new job its queue number and put it in the queue (before its process starts).

    Args:
        jobs_dir: the ``.jobs`` folder of the runs folder.
        job_id: the job.
        owner: whose job it is (a workspace or signed-in identity token), for the fair order.
            Defaults to `None` (the command line: one owner).

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
    write_json(_marker(Path(jobs_dir), job_id, seq),
               {"job_id": job_id, "pid": None, "created": time.time(), "owner": owner})
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
    owner: str | None = None


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
        out.append(_Entry(int(seq_text), job_id, path.with_suffix(".running").exists(), info.get("owner")))
    return out


def _turns(jobs_dir: Path) -> list[tuple[int, str | None, int, str]]:
    """The turns taken lately: ``(queue number, owner, last number given out when it started, job id)``."""
    try:
        text = (_slots_dir(jobs_dir) / "turns").read_text()
    except OSError:
        return []
    out = []
    for line in text.splitlines():
        try:
            seq, owner, at, job_id = json.loads(line)
            out.append((int(seq), owner, int(at), str(job_id)))
        except (ValueError, TypeError):
            continue
    return out


def _record_turn(jobs_dir: Path, seq: int, owner: str | None, job_id: str) -> None:
    """Add a turn to ``.slots/turns`` (dropping the turns no job still in the queue can see)."""
    slots = _slots_dir(jobs_dir)
    fd = os.open(slots / "turns.lock", os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        entries = _entries(jobs_dir)
        oldest = min((e.seq for e in entries), default=seq)
        alive = {e.job_id for e in entries}
        kept = [t for t in _turns(jobs_dir) if (t[2] >= oldest or t[3] in alive) and t[0] != seq]
        kept.append((int(seq), owner, _last_number(jobs_dir), job_id))
        tmp = slots / f"turns.{os.getpid()}.tmp"
        tmp.write_text("".join(json.dumps(list(t)) + "\n" for t in kept))
        os.replace(tmp, slots / "turns")  # readers see the old file or the new one, never half of one
    finally:
        os.close(fd)


@dataclass
class _Place:
    entry: _Entry
    rank: int
    eligible: bool


def _fair_order(entries: list[_Entry], turns: list[tuple[int, str | None, int, str]],
                cap: int | None) -> list[_Place]:
    """The waiting jobs in the order they are served (see the module docstring)."""
    waiting = sorted((e for e in entries if not e.running), key=lambda e: e.seq)
    running = Counter(e.owner for e in entries if e.running)
    oldest = waiting[0].seq if waiting else 0
    taken: dict[str | None, set[int]] = {}
    for e in entries:
        if e.running:
            taken.setdefault(e.owner, set()).add(e.seq)
    alive = {e.job_id for e in entries}
    for seq, owner, at, job_id in turns:
        # started after the oldest waiting job was queued (that job saw this turn), or a turn of a job
        # still in the queue (a sweep that gave way between runs keeps the turns it had)
        if at >= oldest or job_id in alive:
            taken.setdefault(owner, set()).add(seq)
    ahead: Counter = Counter()
    places = []
    for e in waiting:
        places.append(_Place(e, len(taken.get(e.owner, ())) + ahead[e.owner],
                             cap is None or running[e.owner] < cap))
        ahead[e.owner] += 1
    places.sort(key=lambda p: (p.rank, p.entry.seq))
    return places


@dataclass(frozen=True)
class QueuePlace:
    """Where a waiting job stands.

    Attributes:
        position: 1 + the jobs running + the eligible jobs served before it (1 = it runs when a slot frees).
        next_is_yours: whether the next job to be served is its owner's own (this one or another of theirs),
            False when it is another person's. Never says whose.
    """

    position: int
    next_is_yours: bool


def _place_of(entries: list[_Entry], places: list[_Place], job_id: str, seq: int) -> QueuePlace | None:
    me = next((p for p in places if p.entry.seq == seq and p.entry.job_id == job_id), None)
    if me is None:
        return None
    before = 0
    for p in places:
        if p is me:
            break
        before += p.eligible
    head = next((p for p in places if p.eligible), me)
    return QueuePlace(1 + sum(e.running for e in entries) + before, head.entry.owner == me.entry.owner)


def queue_place(jobs_dir: str | os.PathLike, job_id: str, seq: int | None) -> QueuePlace | None:
    """A waiting job's place in the fair order, and whether the next turn is its owner's.

    Args:
        jobs_dir: the ``.jobs`` folder.
        job_id / seq: the job and its queue number.

    Returns:
        The `QueuePlace`, or None when the job is not waiting (it runs, or has ended).
    """
    if seq is None:
        return None
    jobs_dir = Path(jobs_dir)
    entries = _entries(jobs_dir)
    return _place_of(entries, _fair_order(entries, _turns(jobs_dir), max_jobs_per_user()), job_id, seq)


def queue_position(jobs_dir: str | os.PathLike, job_id: str, seq: int | None) -> int | None:
    """A waiting job's place in the line (`queue_place`'s ``position``).

    Args:
        jobs_dir: the ``.jobs`` folder.
        job_id / seq: the job and its queue number.

    Returns:
        1 + the jobs running + the eligible waiting jobs before it in the fair order, or None
        when the job is not waiting (it runs, or has ended).
    """
    place = queue_place(jobs_dir, job_id, seq)
    return None if place is None else place.position


def waiting_text(position: int | None, next_is_yours: bool | None = None) -> str:
    """The sentence for a waiting job: "Waiting for a free worker: 2 jobs ahead; next turn: another person's job".

    Args:
        position: its place in the line (`queue_position`; 1 = next). Defaults
            to next when None.
        next_is_yours: whether the next job served is the asker's own (`QueuePlace.next_is_yours`).
            Defaults to `None`: not said.

    Returns:
        The sentence (it never names anyone).
    """
    ahead = max((position or 1) - 1, 0)
    text = f"Waiting for a free worker: {ahead} job{'' if ahead == 1 else 's'} ahead"
    if next_is_yours is not None:
        text += "; next turn: " + ("yours" if next_is_yours else "another person's job")
    return text


class Slot:
    """A held slot: one of the `max_jobs()` places to run. Released by `release` or when the process ends.

    `yield_turn` may give it back and take another one in its place (the same object then holds the new one).
    """

    def __init__(self, index: int, fd: int | None):
        self.index = index
        self._fd = fd

    @property
    def held(self) -> bool:
        """Whether it holds a lock now."""
        return self._fd is not None

    def release(self) -> None:
        """Let go of the slot. Idempotent."""
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None

    def _take(self, other: "Slot") -> None:
        self.release()
        self.index, self._fd = other.index, other._fd
        other._fd = None


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
              on_wait: Callable[[int, bool], None] | None = None, poll_s: float = POLL_S,
              owner: str | None = None) -> Slot | None:
    """Block until this job may run (called in the worker process, before any heavy import).

    Args:
        jobs_dir: the ``.jobs`` folder.
        job_id / seq: the job and its queue number (from `enqueue`).
        should_stop: checked while waiting; True gives up (the job was cancelled).
        on_wait: called with the queue position and whether the next turn is this owner's
            (`QueuePlace`) whenever they change.
        poll_s: seconds between looks at the queue. Defaults to `POLL_S`.
        owner: the job's owner, used only when its marker is missing (a job started by hand).
            Defaults to `None`.

    Returns:
        The held `Slot` (keep it until the job ends), or None when `should_stop` said so.
    """
    jobs_dir = Path(jobs_dir)
    marker = _marker(jobs_dir, job_id, seq)
    if marker.exists():
        claim(jobs_dir, job_id, seq, os.getpid())  # the same id the server records; no wait for it
    else:  # e.g. started by hand: join the line now
        write_json(marker, {"job_id": job_id, "pid": os.getpid(), "created": time.time(), "owner": owner})
    last = None
    while True:
        if should_stop():
            return None
        entries = _entries(jobs_dir)
        places = _fair_order(entries, _turns(jobs_dir), max_jobs_per_user())
        place = _place_of(entries, places, job_id, seq)
        if place is None:  # our marker went missing (removed by hand): join the line again
            write_json(marker, {"job_id": job_id, "pid": os.getpid(), "created": time.time(), "owner": owner})
            continue
        first = next((p for p in places if p.eligible), None)
        if first is not None and first.entry.seq == seq:
            slot = _try_slot(jobs_dir)
            if slot is not None:
                mine = next(p for p in places if p.entry.seq == seq)
                _record_turn(jobs_dir, seq, mine.entry.owner, job_id)
                marker.with_suffix(".running").write_text(str(os.getpid()))
                return slot
        key = (place.position, place.next_is_yours)
        if on_wait is not None and key != last:
            on_wait(*key)
        last = key
        time.sleep(poll_s)


def should_yield(jobs_dir: str | os.PathLike, job_id: str, seq: int) -> bool:
    """Whether a running job should give its slot back (`yield_turn`).

    True when another owner's eligible job waits that would be served before this job were it queued
    again now, and the free slots do not reach it.

    Args:
        jobs_dir: the ``.jobs`` folder.
        job_id / seq: the running job and its queue number.

    Returns:
        Whether to yield.
    """
    jobs_dir = Path(jobs_dir)
    entries = _entries(jobs_dir)
    me = next((e for e in entries if e.seq == seq and e.job_id == job_id), None)
    if me is None:
        return False
    free = max(max_jobs() - sum(e.running for e in entries), 0)
    again = _Entry(max(_last_number(jobs_dir), max(e.seq for e in entries)) + 1, job_id, False, me.owner)
    places = _fair_order([e for e in entries if e is not me] + [again], _turns(jobs_dir), max_jobs_per_user())
    ahead = []
    for p in places:
        if p.entry is again:
            break
        if p.eligible:
            ahead.append(p)
    return any(p.entry.owner != me.owner for p in ahead[free:])


def yield_turn(jobs_dir: str | os.PathLike, job_id: str, seq: int, slot: Slot, should_stop: Callable[[], bool],
               on_requeue: Callable[[int], None] | None = None, on_wait: Callable[[int, bool], None] | None = None,
               poll_s: float = POLL_S) -> Slot | None:
    """Between two runs of a sweep: let another person's waiting job go first if it is its turn (`should_yield`).

    When it yields, the job takes a new queue number (same job id, same marker owner, this process), gives
    `slot` back and waits its turn again (`wait_turn`). The process stays alive while it waits, with its
    model loaded: a sweep waiting to continue costs its memory, not a slot.

    Args:
        jobs_dir: the ``.jobs`` folder.
        job_id / seq: the running job and its current queue number.
        slot: the slot it holds (from `wait_turn`); when it yields, this same object holds the new slot.
        should_stop: checked while waiting; True gives up (the job was cancelled): the slot stays released.
        on_requeue: called with the new queue number before the slot is given back (record it in
            ``job.json`` so `poll`, `queue_position` and `leave` find the job). Defaults to `None`.
        on_wait: as for `wait_turn`. Defaults to `None`.
        poll_s: seconds between looks at the queue. Defaults to `POLL_S`.

    Returns:
        `slot` (kept, or holding its new place), or None when `should_stop` said so while it waited.
    """
    jobs_dir = Path(jobs_dir)
    if not should_yield(jobs_dir, job_id, seq):
        return slot
    owner = (read_json(_marker(jobs_dir, job_id, seq), {}) or {}).get("owner")
    new_seq = enqueue(jobs_dir, job_id, owner)
    claim(jobs_dir, job_id, new_seq, os.getpid())
    if on_requeue is not None:
        on_requeue(new_seq)
    leave(jobs_dir, job_id, seq)
    slot.release()
    got = wait_turn(jobs_dir, job_id, new_seq, should_stop, on_wait=on_wait, poll_s=poll_s, owner=owner)
    if got is None:
        return None
    slot._take(got)
    return slot
