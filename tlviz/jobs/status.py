"""The job system's words: the states every job goes through, a started job, and what `poll` finds.

One vocabulary for every kind of job (`tlviz.jobs.registry`):

- ``queued`` — created; its worker process waits for a free slot of the queue
  (`tlviz.jobs.queue`), or has not started yet;
- ``running`` — its worker holds a slot (or, on Ray, drives the cluster);
- ``done`` / ``failed`` / ``cancelled`` — it ended.

The runs of a fine-tuning job keep their own words in the run store
(``queued``, ``running``, ``completed``, ``diverged``, ``stopped``, ...:
`tlviz.finetune.store`); a job is ``done`` when its worker finished, whatever
its runs reached.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

from tlviz.finetune.store import ACTIVE_STATES as RUN_ACTIVE_STATES
from tlviz.finetune.store import RunProgress, RunRecord
from tlviz.jobs.queue import waiting_text

STATES = ("queued", "running", "done", "failed", "cancelled")
ACTIVE_STATES = ("queued", "running")
#: The job kinds whose status carries runs of the run store (the others carry a progress dict and a result).
RUN_KINDS = ("runs", "lrfind")


def waiting_fields(position: int, next_is_yours: bool) -> dict:
    """What a worker writes into ``status.json`` while it waits for a slot (`tlviz.jobs.queue.wait_turn`'s
    ``on_wait``).

    Args:
        position: its place in line (`tlviz.jobs.queue.QueuePlace.position`).
        next_is_yours: whether the next job served is its owner's own.

    Returns:
        ``state`` (``queued``), ``queue_position``, ``next_is_yours`` and ``message``.
    """
    return {"state": "queued", "queue_position": int(position), "next_is_yours": bool(next_is_yours),
            "message": "waiting for a free worker"}


class Job(str):
    """A started job: its id (this string), and for a fine-tuning job the run folders it fills.

    Every start function returns one, so `poll`, `cancel` and `wait` take it as they take an id.

    Attributes:
        job_id: its id (the string itself).
        kind: the job's kind (`tlviz.jobs.registry.KINDS`).
        run_ids: the run folders it fills, in order (empty for other kinds).
        root: the runs folder.
    """

    def __new__(cls, job_id: str, kind: str = "", run_ids=(), root: str = ""):
        self = super().__new__(cls, job_id)
        self.kind = kind
        self.run_ids = list(run_ids)
        self.root = str(root)
        return self

    @property
    def job_id(self) -> str:
        return str(self)

    def __repr__(self) -> str:
        return f"Job({str(self)!r}, kind={self.kind!r}, run_ids={self.run_ids!r})"


@dataclass
class JobStatus:
    """What `tlviz.jobs.poll` found: the one status type of every kind of job.

    Attributes:
        job_id / kind: the job.
        state: one of `STATES`.
        message: why it failed (for an analysis, only then); for a fine-tuning job, its worker's last word.
        runs: for a fine-tuning job, the `RunRecord` of every run, in order.
        current: the run in progress (or None).
        progress: the progress dict of the run, range test or analysis in progress (an analysis:
            ``fraction`` and ``text``).
        result: for a range test, the `LRFinderResult` dict once done.
        queue_position: while the job waits for a free worker, its place in the
            line (`tlviz.jobs.queue.queue_place`: 1 + the jobs running + the jobs served before it in the fair
            order); None otherwise.
        next_is_yours: while it waits, whether the next job served is its owner's own (True) or another
            person's (False); None otherwise. Never who that person is.
        executor: ``"local"`` or ``"ray"``.
        unreachable: the Ray cluster could not be reached (the page offers to run here).
        configs: a fine-tuning job's run configurations (dicts).
        key: an analysis's result key (`tlviz.jobs.analysis.analysis_key`).
        notes: sentences about what an analysis could not do (e.g. no resize variants).
        from_store: the result was already stored; no worker ran.
    """

    job_id: str
    kind: str
    state: str
    message: str = ""
    runs: list[RunRecord] = field(default_factory=list)
    current: RunRecord | None = None
    progress: dict = field(default_factory=dict)
    result: dict | None = None
    queue_position: int | None = None
    next_is_yours: bool | None = None
    executor: str = "local"
    unreachable: bool = False
    configs: list[dict] = field(default_factory=list)
    key: str = ""
    notes: list[str] = field(default_factory=list)
    from_store: bool = False

    @property
    def active(self) -> bool:
        return self.state in ACTIVE_STATES

    @property
    def jobs_ahead(self) -> int:
        """Jobs ahead of this one in the queue (0 when it is not waiting)."""
        return max((self.queue_position or 1) - 1, 0)

    @property
    def has_runs(self) -> bool:
        """Whether this is a fine-tuning job (runs or a range test), whose progress is that of runs."""
        return self.kind in RUN_KINDS

    @property
    def done_runs(self) -> int:
        return sum(r.state not in RUN_ACTIVE_STATES for r in self.runs)

    @property
    def progress_info(self) -> RunProgress:
        """`progress` as a `RunProgress` (of the run, or the range test, in progress)."""
        info = RunProgress.from_dict(self.progress)
        return dataclasses.replace(info, stage="lrfind") if self.kind == "lrfind" else info

    @property
    def running_runs(self) -> list[RunRecord]:
        """The runs in progress (several at once on a Ray cluster)."""
        return [r for r in self.runs if r.state == "running"]

    @property
    def fraction(self) -> float:
        """Progress of the whole job between 0 and 1 (0 while it waits in the queue)."""
        if not self.has_runs:
            if self.state == "done":
                return 1.0
            return min(max(float(self.progress.get("fraction") or 0.0), 0.0), 1.0)
        if self.queue_position and not self.done_runs:
            return 0.0
        if self.queue_position:  # a sweep that gave way between runs: what it did so far
            return min(self.done_runs / max(len(self.runs), 1), 1.0)
        if self.kind == "lrfind":
            return self.progress_info.fraction
        if len(self.runs) == 1 and self.current is not None:
            return self.progress_info.fraction
        running = sum(r.progress_info.fraction for r in self.running_runs)
        return min((self.done_runs + running) / max(len(self.runs), 1), 1.0)

    @property
    def text(self) -> str:
        """One line for a progress bar: the place in the queue, or the job's current step."""
        if self.queue_position:
            waiting = waiting_text(self.queue_position, self.next_is_yours)
            if self.has_runs and self.done_runs:  # a sweep that gave way between runs
                return f"{self.done_runs} of {len(self.runs)} runs done · {waiting}"
            return waiting
        if not self.has_runs:
            return str(self.progress.get("text") or "")
        if self.kind == "lrfind":
            return self.progress_info.text
        n, done = len(self.runs), self.done_runs
        if self.current is None:
            if done == 0:
                return (self.message[:1].upper() + self.message[1:] + "…") if self.executor == "ray" and \
                    self.message else "Starting the worker…"
            return f"{done} of {n} runs done"
        running = len(self.running_runs)
        if running > 1:
            return f"{running} runs at once on the Ray cluster · {done} of {n} done · first: {self.progress_info.text}"
        return (f"Run {done + 1} of {n} · " if n > 1 else "") + self.progress_info.text

    @property
    def sweep_id(self) -> str | None:
        """The sweep its runs belong to, when they all belong to one; else None."""
        ids = {r.config.get("sweep_id") for r in self.runs} - {None}
        return ids.pop() if len(ids) == 1 else None

    @property
    def run_to_show(self) -> str | None:
        """The run to open when the job ends: its only run, else the one with the best validation accuracy.
        Controls are shown with the run they control: a job of controls opens that run."""
        if not self.runs:
            return None
        runs = [r for r in self.runs if r.control is None]
        if not runs:  # a job of controls only: open the run they control, where the comparison is
            return self.runs[0].control_of or self.runs[0].run_id
        if len(runs) == 1:
            return runs[-1].run_id
        return max(runs, key=lambda r: r.best_val_accuracy or -1).run_id

    @property
    def lr_result(self):
        """For a finished range test, its `tlviz.finetune.LRFinderResult`; else None."""
        if not self.result:
            return None
        from tlviz.finetune.lrfinder import LRFinderResult

        return LRFinderResult.from_dict(self.result)
