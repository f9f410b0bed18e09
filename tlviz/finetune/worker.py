"""Run jobs in a worker process, so the app stays responsive and its memory flat.

A *job* is a queue of runs (one run, or the runs of a sweep) or a
learning-rate range test. `start_job` / `start_lr_finder` save the inputs
(the model as ``.keras``, the images as ``.npz``) under the runs folder,
create the run folders and start a worker: a fresh Python interpreter
(``subprocess``, at lower priority from its first line) that imports only the
worker's module — no TensorFlow state is shared with the server, the app
script is not re-run in it (as multiprocessing's "spawn" would, Streamlit's
main module being app.py), and all its memory is returned when it exits. The worker
writes progress into the run folders; `poll_job` reads it back and
`cancel_job` drops a flag file that the worker checks after every batch.

Job folders live in ``<runs dir>/.jobs/<job id>/``: ``job.json``,
``status.json``, ``cancel`` (the flag), ``worker.log`` and, for a range test,
``progress.json`` and ``result.json``.

Every job goes through the one queue of heavy jobs (`tlviz.jobqueue`): its
worker process starts at once, lowers its priority and waits for a free slot
before it imports TensorFlow.

Executors (`tlviz.finetune.executors`): by default the worker process runs the
job itself (``local``). With ``TLVIZ_RAY_ADDRESS`` set, the worker process is a
light Ray *driver* instead (`tlviz.finetune.raydriver.driver_main`): it takes no
slot of the local queue, sends the model and the images to the cluster's object
store, runs the job there and writes what comes back (progress every epoch,
then history, metrics, weight changes, model and TensorBoard files) into the same
run folders, so `poll_job` and `cancel_job` work the same for both. The analysis jobs of `tlviz.jobs` (normalization,
diagnosis) share the launching, the worker prologue and the death reasons
defined here.
"""

from __future__ import annotations

import atexit
import dataclasses
import subprocess
import sys
import os
import signal
import threading
import traceback
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from tlviz import jobqueue
from tlviz.contentkeys import image_set_key
from tlviz.errors import RunRefused, TlvizError
from tlviz.finetune.config import RunConfig
from tlviz.finetune.store import (ACTIVE_STATES, RunProgress, RunRecord, RunWriter, check_run_id, load_run,
                                  new_run_id, now_iso, pid_alive, read_json, runs_dir, write_json)

JOB_KINDS = ("runs", "lrfind")

# Handles of the worker processes this server started (to reap them and see
# them die). Keyed by job id; a lock guards it because Streamlit runs one
# script thread per session.
_PROCS: dict[str, subprocess.Popen] = {}
# Exit codes of reaped workers, so a death can be explained after the handle is gone.
_EXITCODES: dict[str, int | None] = {}
_PROCS_LOCK = threading.Lock()
_CLEANUP_REGISTERED = False
#: The folder holding the `tlviz` package: the workers import it from there, whatever the server's directory.
_PROJECT_ROOT = Path(__file__).resolve().parent.parent.parent
#: An argument every worker's command line carries, so a later server can tell its workers from other processes.
WORKER_MARKER = "tlviz-worker"
# Sessions may save the same shared model at once; one writer per inputs folder.
_INPUTS_LOCK = threading.Lock()


@dataclass
class Job:
    """A started job.

    Attributes:
        job_id: its id.
        kind: ``"runs"`` or ``"lrfind"``.
        run_ids: the run folders it fills, in order (empty for a range test).
        root: the runs folder.
    """

    job_id: str
    kind: str
    run_ids: list[str]
    root: str


@dataclass
class JobStatus:
    """What `poll_job` found.

    Attributes:
        job_id / kind: the job.
        state: ``running``, ``done``, ``failed`` or ``cancelled``.
        message: why it failed, if it did.
        runs: the `RunRecord` of every run of the job, in order.
        current: the run in progress (or None).
        progress: the progress dict of the run (or range test) in progress.
        result: for a range test, the `LRFinderResult` dict once done.
        queue_position: while the job waits for a free worker, its place in the
            line (`tlviz.jobqueue.queue_position`); None once it runs.
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
    executor: str = "local"
    unreachable: bool = False
    configs: list[dict] = field(default_factory=list)

    @property
    def active(self) -> bool:
        return self.state == "running"

    @property
    def done_runs(self) -> int:
        return sum(r.state not in ACTIVE_STATES for r in self.runs)

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
        if self.queue_position:
            return 0.0
        if self.kind == "lrfind":
            return self.progress_info.fraction
        if len(self.runs) == 1 and self.current is not None:
            return self.progress_info.fraction
        running = sum(r.progress_info.fraction for r in self.running_runs)
        return min((self.done_runs + running) / max(len(self.runs), 1), 1.0)

    @property
    def text(self) -> str:
        """One line for a progress bar: the place in the queue, or the run (of how many) and its progress."""
        if self.queue_position:
            return jobqueue.waiting_text(self.queue_position)
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


def jobs_dir(root=None) -> Path:
    """The ``.jobs`` folder of the runs folder (created if needed)."""
    return _jobs_dir(root)


def _jobs_dir(root) -> Path:
    d = runs_dir(root) / ".jobs"
    d.mkdir(parents=True, exist_ok=True)
    return d


def _job_dir(job_id: str, root=None) -> Path:
    return _jobs_dir(root) / check_run_id(job_id)


def job_dir(job_id: str, root=None) -> Path:
    """The folder of job `job_id` (which may not exist); refuses ids that are not plain names."""
    return _job_dir(job_id, root)


#: Saved inputs and job folders unused for this many days are removed when a new job starts.
KEEP_DAYS = 7


def tidy(root=None, keep_days: float = KEEP_DAYS) -> int:
    """Remove saved inputs, cached activations and results, and finished job folders not used for `keep_days`.

    Run folders and the queue's own files are never touched. Returns the number of entries removed.
    """
    import shutil
    import time

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
            continue  # the queue (`tlviz.jobqueue`): its lock files must outlive every job
        try:
            st = read_json(j / "status.json", {}) or {}
            if j.stat().st_mtime < cutoff and (st.get("state") not in ("running", "queued")
                                                or not pid_alive(st.get("pid"))):
                shutil.rmtree(j, ignore_errors=True)
                removed += 1
        except OSError:
            pass
    return removed


def prepare_inputs(loaded, images, root=None) -> dict:
    """Save the model and the images where a worker can load them (once per content).

    Returns:
        ``{"model_file", "images_file", "image_key", "model_key"}``: ``image_key``
        hashes the pixels (`tlviz.contentkeys.pixels_key`); the ``.npz`` is
        named by `tlviz.contentkeys.image_set_key` (pixels, labels, class names and files).
    """
    with _INPUTS_LOCK:
        return _prepare_inputs(loaded, images, root)


def _prepare_inputs(loaded, images, root) -> dict:
    from tlviz.contentkeys import model_key as _model_key, pixels_key

    inputs = runs_dir(root) / ".inputs"
    inputs.mkdir(parents=True, exist_ok=True)
    model_key = _model_key(loaded)
    model_file = inputs / f"{model_key[:32]}.keras"
    if not model_file.exists():
        tmp = inputs / f".{model_key[:32]}.{os.getpid()}.{threading.get_ident()}.keras"
        loaded.model.save(tmp)
        os.replace(tmp, model_file)
    os.utime(model_file)  # recently used: kept by `tidy`
    image_key = pixels_key(images.images)
    images_file = _save_images(images, image_key, root)
    return {"model_file": str(model_file), "images_file": str(images_file), "image_key": image_key,
            "model_key": model_key}


def _save_images(images, image_key: str, root=None) -> Path:
    """Save an image set as ``.inputs/<image_set_key>.npz`` (once per content; callers hold `_INPUTS_LOCK`)."""
    import json

    inputs = runs_dir(root) / ".inputs"
    inputs.mkdir(parents=True, exist_ok=True)
    set_key = image_set_key(images, image_key)
    images_file = inputs / f"{set_key}.npz"
    if not images_file.exists():
        tmp = inputs / f".{set_key}.{os.getpid()}.{threading.get_ident()}.npz"
        details = {"skipped": [[s.file, s.reason] for s in images.skipped],
                   "original_sizes": [list(map(int, sz)) for sz in images.original_sizes],
                   "original_modes": dict(images.original_modes),
                   "label_order_from_file": bool(images.label_order_from_file)}
        with open(tmp, "wb") as f:
            np.savez(f, images=images.images, labels=images.labels,
                     class_names=np.array(images.class_names, dtype=object).astype(str),
                     files=np.array(list(images.files), dtype=object).astype(str),
                     details=np.array(json.dumps(details)))
        os.replace(tmp, images_file)
    os.utime(images_file)
    return images_file


def _model_info(loaded) -> dict:
    return {"name": loaded.name, "filename": loaded.filename, "sha256": loaded.sha256,
            "metadata": loaded.metadata}


def _images_info(images, image_key) -> dict:
    return {"source": images.source, "n": len(images), "class_names": list(images.class_names),
            "image_key": image_key, "resize": images.resize}


def start_job(loaded, images, configs: list[RunConfig], *, root=None, owner: str | None = None,
              executor: str | None = None, asha: bool = False, controls: list[str] | tuple[str, ...] = (),
              original=None) -> Job:
    """Queue one or more runs and start a worker process for them.

    Args:
        loaded: the `LoadedModel` (only read: saved once under ``.inputs``).
        images: the `ImageSet`.
        configs: one `RunConfig` per run, run in this order.
        root: the runs folder. Defaults to `runs_dir()`.
        owner: the workspace starting it (the app's session token); recorded in every run.
        executor: ``"local"`` (worker processes on this machine) or ``"ray"`` (the
            cluster of ``TLVIZ_RAY_ADDRESS``; several runs go through Ray Tune).
            Defaults to `None`: Ray when ``TLVIZ_RAY_ADDRESS`` is set, else local.
        asha: on Ray, let Ray Tune's ASHA scheduler stop poorly performing runs
            early (state ``stopped``). Defaults to `False`.
        controls: control runs to queue right after each run (``"random-init"``,
            ``"head-only"``: `tlviz.finetune.config.control_config`), each linked to
            its run's id. Defaults to none.
        original: the image set of the model's original task: every run of the job
            reports how much of its accuracy survives (`tlviz.finetune.retention`).
            Defaults to `None`.

    Returns:
        The `Job`; its run folders exist (state ``queued``) when this returns.

    Raises:
        RunRefused: no or invalid configurations, ASHA without Ray, a control that
            does not apply, an original-task image set that does not match the model.
        ClusterUnreachable: the Ray cluster cannot be reached (nothing was created;
            the caller may offer ``executor="local"``).
    """
    from tlviz.finetune.config import control_config

    if not configs:
        raise RunRefused("No run to start: give at least one configuration.")
    for c in configs:
        c.validate()
        for kind in controls:
            control_config(c, kind)  # refuses a control that does not apply, before anything is created
    if original is not None:
        from tlviz.finetune.retention import original_labels

        original_labels(loaded, original)
    ray_target = _ray_target(executor, asha)
    tidy(root)
    inputs = prepare_inputs(loaded, images, root)
    extra = {}
    if original is not None:
        extra = prepare_original(original, root)
    run_ids, stored = [], []

    def queue(c: RunConfig) -> str:
        rid = new_run_id()
        while (runs_dir(root) / rid).exists() or rid in run_ids:
            rid = new_run_id()
        w = RunWriter(runs_dir(root) / rid)
        w.write_config(c, _model_info(loaded), _images_info(images, inputs["image_key"]), owner=owner,
                       **({"original": extra["original"]} if extra else {}))
        w.status("queued", "waiting for the worker")
        run_ids.append(rid)
        stored.append(c)
        return rid

    for c in configs:
        rid = queue(c)
        for kind in controls:
            queue(control_config(c, kind, rid))
    return _launch("runs", {"run_ids": run_ids, "configs": [c.to_dict() for c in stored], "owner": owner,
                            "asha": bool(asha), **extra}, loaded, images, inputs, root, ray_target)


def prepare_original(original, root=None) -> dict:
    """Save the original task's image set where a worker can load it (once per content).

    Returns:
        ``{"original_file": path of its .npz, "original": {"source", "n", "class_names", "image_key"}}``.
    """
    from tlviz.contentkeys import pixels_key

    with _INPUTS_LOCK:
        key = pixels_key(original.images)
        path = _save_images(original, key, root)
    return {"original_file": str(path), "original": _images_info(original, key)}


def start_lr_finder(loaded, images, config: RunConfig, *, root=None, steps: int = 100,
                    owner: str | None = None, executor: str | None = None) -> Job:
    """Start the learning-rate range test for `config` in a worker process (or on Ray: see `start_job`).

    Raises:
        RunRefused: an invalid configuration.
        ClusterUnreachable: the Ray cluster cannot be reached.
    """
    config.validate()
    ray_target = _ray_target(executor, False)
    inputs = prepare_inputs(loaded, images, root)
    return _launch("lrfind", {"run_ids": [], "configs": [config.to_dict()], "steps": int(steps), "owner": owner},
                   loaded, images, inputs, root, ray_target)


def _ray_target(executor: str | None, asha: bool) -> str | None:
    """The Ray address a job goes to (probed: `executors.check_reachable`), or None for a local job."""
    from tlviz.finetune import executors

    chosen = executors.choose_executor(executor)
    if asha and chosen != "ray":
        raise RunRefused("Early stopping (ASHA) runs through Ray Tune: set TLVIZ_RAY_ADDRESS to a Ray cluster, or "
                         "start the sweep without early stopping.")
    return executors.check_reachable() if chosen == "ray" else None


def _launch(kind, spec, loaded, images, inputs, root, ray_target: str | None = None) -> Job:
    spec = {"model": _model_info(loaded), "images": _images_info(images, inputs["image_key"]), **inputs, **spec,
            "executor": "ray" if ray_target else "local"}
    if ray_target:
        from tlviz.finetune import raydriver

        spec["ray_address"] = ray_target
        spec["env"] = raydriver.forwarded_env()
        job_id, jdir = new_job(kind, spec, root, queued=False)  # the cluster schedules: no local slot
        pid = spawn(job_id, raydriver.driver_main, root)
    else:
        job_id, jdir = new_job(kind, spec, root)
        pid = spawn(job_id, worker_main, root)
    for rid in spec["run_ids"]:
        w = RunWriter(runs_dir(root) / rid)
        w.status("queued", "waiting for the worker", pid=pid, job_id=job_id)
    return Job(job_id, kind, list(spec["run_ids"]), str(runs_dir(root)))


def new_job(kind: str, spec: dict, root=None, state: str = "running", queued: bool = True) -> tuple[str, Path]:
    """Create a job folder with ``job.json`` (``spec`` plus id, kind, root, time and queue number) and ``status.json``.

    Args:
        kind: the job's kind (``runs``, ``lrfind``, or a kind of `tlviz.jobs`).
        spec: what the worker needs; stored in ``job.json``.
        root: the runs folder. Defaults to `runs_dir()`.
        state: the first state written to ``status.json``. Defaults to `"running"`.
        queued: give the job a place in the queue of heavy jobs (`tlviz.jobqueue.enqueue`).
            Defaults to `True`; False for a job that needs no worker.

    Returns:
        ``(job_id, job folder)``.
    """
    job_id = new_run_id()
    while _job_dir(job_id, root).exists():
        job_id = new_run_id()
    jdir = _job_dir(job_id, root)
    jdir.mkdir(parents=True)
    seq = jobqueue.enqueue(_jobs_dir(root), job_id) if queued else None
    write_json(jdir / "job.json", {**spec, "job_id": job_id, "kind": kind, "root": str(runs_dir(root)),
                                   "created": now_iso(), "queue_seq": seq})
    write_json(jdir / "status.json", {"state": state, "message": "starting the worker", "updated": now_iso()})
    return job_id, jdir


def spawn(job_id: str, target, root=None) -> int:
    """Start the worker process of a job created by `new_job`: ``target(job_folder)`` in a fresh interpreter.

    Args:
        job_id: the job.
        target: a module-level function taking the job folder (a string).
        root: the runs folder. Defaults to `runs_dir()`.

    Returns:
        The worker's process id (also recorded in ``status.json`` and in the queue).
    """
    jdir = _job_dir(job_id, root)
    # A fresh interpreter that imports only `target`'s module. Not multiprocessing's "spawn": under
    # Streamlit the main module is app.py, which "spawn" re-runs in every child (TensorFlow, the sample
    # model, ~0.75 GB per waiting worker, at full priority). The child lowers its priority first thing.
    code = ("import os, sys\ntry:\n    os.nice(int(sys.argv[4]))\nexcept OSError:\n    pass\n"
            "import importlib\ngetattr(importlib.import_module(sys.argv[1]), sys.argv[2])(sys.argv[3])\n")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(
        p for p in (str(_PROJECT_ROOT), os.environ.get("PYTHONPATH", "")) if p)}
    with open(jdir / "worker.log", "ab") as log:
        proc = subprocess.Popen(
            [sys.executable, "-c", code, target.__module__, target.__qualname__, str(jdir), str(WORKER_NICE),
             WORKER_MARKER], stdin=subprocess.DEVNULL, stdout=log, stderr=log, env=env, cwd=str(_PROJECT_ROOT))
    with _PROCS_LOCK:
        _PROCS[job_id] = proc
        _register_cleanup()
    seq = (read_json(jdir / "job.json", {}) or {}).get("queue_seq")
    if seq is not None:
        jobqueue.claim(_jobs_dir(root), job_id, seq, proc.pid)
    status = read_json(jdir / "status.json", {}) or {}
    if "pid" not in status:
        status["pid"] = proc.pid
        write_json(jdir / "status.json", status)
    return proc.pid


def cancel_job(job_id: str, root=None) -> None:
    """Ask a job to stop after the current batch; queued runs are not started."""
    jdir = _job_dir(job_id, root)
    if not jdir.is_dir():
        raise TlvizError(f"No job {job_id}; it may have been cleaned up.")
    (jdir / "cancel").write_text(now_iso())


def _reap():
    with _PROCS_LOCK:
        for jid, p in list(_PROCS.items()):
            if p.poll() is not None:  # ended: collected, so no zombie is left
                _EXITCODES[jid] = p.returncode
                _PROCS.pop(jid, None)


def _register_cleanup() -> None:
    """Once per server: stop the workers it started when it exits (as daemon processes would be)."""
    global _CLEANUP_REGISTERED
    if not _CLEANUP_REGISTERED:
        atexit.register(_terminate_all)
        _CLEANUP_REGISTERED = True


def _terminate_all() -> None:
    with _PROCS_LOCK:
        procs = list(_PROCS.values())
    for p in procs:
        if p.poll() is None:
            p.terminate()


def poll_job(job_id: str, root=None) -> JobStatus:
    """Read a job's state and the progress of its runs from disk (cheap; call it often)."""
    _reap()
    jdir = _job_dir(job_id, root)
    job = read_json(jdir / "job.json")
    if not isinstance(job, dict):
        return JobStatus(job_id, "runs", "failed", "the job folder is missing or damaged")
    status = read_json(jdir / "status.json", {}) or {}
    state = status.get("state", "failed")
    message = status.get("message", "")
    if state == "running" and not _alive(job_id, status.get("pid")):
        status = read_json(jdir / "status.json", {}) or {}  # it may have just finished
        state = status.get("state", "failed")
        if state == "running":
            state, message = "failed", death_reason(_exitcode(job_id))
            write_json(jdir / "status.json", {**status, "state": state, "message": message, "updated": now_iso()})
            _fail_active_runs(job, message)
    position = None
    if state == "running" and status.get("waiting"):
        position = jobqueue.queue_position(_jobs_dir(root), job_id, job.get("queue_seq"))
    runs = []
    for rid in job.get("run_ids", []):
        try:
            runs.append(load_run(rid, job.get("root")))
        except TlvizError:
            continue  # deleted meanwhile
    current = next((r for r in runs if r.state == "running"), None)
    progress = current.progress if current is not None else (read_json(jdir / "progress.json", {}) or {})
    result = read_json(jdir / "result.json") if job.get("kind") == "lrfind" else None
    return JobStatus(job_id, job.get("kind", "runs"), state, message, runs, current, progress, result, position,
                     executor=job.get("executor", "local"), unreachable=bool(status.get("unreachable")),
                     configs=list(job.get("configs") or []))


def death_reason(exitcode: int | None, tail: str | None = None) -> str:
    """Why a worker that stopped without recording an end most likely stopped.

    Args:
        exitcode: the process's exit code (negative: killed by that signal), or
            None when this server did not start it (e.g. after a restart).
        tail: the sentence saying what to do next. Defaults to the one for
            fine-tuning runs.
    """
    tail = tail or ("Earlier runs are kept; start the run again (with a smaller batch size or fewer images if "
                    "memory was short).")
    if exitcode is None:
        return "the worker process stopped unexpectedly (a crash, or the server restarted). " + tail
    if exitcode < 0:
        try:
            name = signal.Signals(-exitcode).name
        except ValueError:
            name = f"signal {-exitcode}"
        if -exitcode == signal.SIGKILL:
            return (f"the worker process was killed ({name}): most often the machine ran out of memory and the "
                    "system stopped it, or someone stopped it by hand. " + tail)
        return f"the worker process was stopped by {name}. " + tail
    return f"the worker process exited with code {exitcode} before the run finished (see worker.log). " + tail


def exitcode(job_id: str) -> int | None:
    """The exit code of a job's worker that this server started and that has ended (else None)."""
    return _exitcode(job_id)


def worker_alive(job_id: str, pid) -> bool:
    """Whether a job's worker process still runs (this server's handle, else its process id)."""
    _reap()
    return _alive(job_id, pid)


def stop_worker(job_id: str, pid) -> None:
    """Terminate a job's worker process (SIGTERM), if it is one: this server's child, or a tlviz worker."""
    with _PROCS_LOCK:
        proc = _PROCS.get(job_id)
    if proc is not None:
        if proc.poll() is None:
            proc.terminate()
        return
    if not pid_alive(pid):
        return
    try:  # started by an earlier server: make sure the id is still one of our spawned workers
        cmdline = Path(f"/proc/{int(pid)}/cmdline").read_bytes()
    except (OSError, ValueError):
        return
    if WORKER_MARKER.encode() in cmdline:
        try:
            os.kill(int(pid), signal.SIGTERM)
        except OSError:
            pass


def _exitcode(job_id: str) -> int | None:
    _reap()
    with _PROCS_LOCK:
        return _EXITCODES.get(job_id)


def _fail_active_runs(job: dict, message: str) -> None:
    """Mark the job's queued and running runs as failed with `message` (what they recorded is kept)."""
    for rid in job.get("run_ids", []):
        path = Path(job.get("root") or runs_dir()) / rid
        status = read_json(path / "status.json", {}) or {}
        if path.is_dir() and status.get("state") in ACTIVE_STATES:
            RunWriter(path).status("failed", message)


def _alive(job_id, pid) -> bool:
    with _PROCS_LOCK:
        p = _PROCS.get(job_id)
    if p is not None:
        return p.poll() is None
    return pid_alive(pid)


def wait_job(job_id: str, root=None, timeout: float = 600.0, interval: float = 0.5) -> JobStatus:
    """Poll until the job ends (for scripts and tests)."""
    return poll_until_done(lambda: poll_job(job_id, root), timeout, interval)


def poll_until_done(poll, timeout: float, interval: float):
    """Call ``poll()`` every `interval` seconds until its status is no longer ``active`` or `timeout` passes.

    Returns:
        The last status.
    """
    import time

    deadline = time.monotonic() + timeout
    while True:
        st = poll()
        if not st.active or time.monotonic() > deadline:
            return st
        time.sleep(interval)


# -- the worker process --------------------------------------------------------

def _own_output(path: Path) -> None:
    """Send this process's stdout and stderr (TensorFlow's C++ logs too) to `path`.

    A worker inherits the server's output; when that is a pipe nobody drains
    (a process manager, a test harness) a chatty worker would block on a full
    pipe and hang. Its own log file cannot fill up that way.
    """
    import sys

    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    except OSError:
        return
    for stream, target in ((sys.stdout, 1), (sys.stderr, 2)):
        try:
            if stream is not None:
                stream.flush()
            os.dup2(fd, target)
        except (OSError, ValueError):
            pass
    os.close(fd)


#: How much a worker lowers its priority, so the server's light pages stay responsive.
WORKER_NICE = 19


def begin_worker(jdir: Path):
    """The prologue of every worker process: own log, lower priority, quiet TensorFlow.

    Returns:
        The worker's `logging.Logger` (writing to ``worker.log``).
    """
    import logging

    _own_output(jdir / "worker.log")
    try:
        current = os.nice(0)
        if current < WORKER_NICE:  # `spawn` already lowered it; a worker started otherwise gets it here
            os.nice(WORKER_NICE - current)
    except OSError:
        pass
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    logging.basicConfig(filename=str(jdir / "worker.log"), level=logging.INFO,
                        format="%(asctime)s %(levelname)s %(message)s")
    return logging.getLogger("tlviz.worker")


def await_turn(jdir: Path, job: dict, status: dict, cancelled) -> jobqueue.Slot | None:
    """Wait in the queue of heavy jobs (`tlviz.jobqueue.wait_turn`), showing the wait in ``status.json``.

    Args:
        jdir: the job folder.
        job: its ``job.json``.
        status: the status dict to extend (``waiting``, ``queue_position``, ``message``).
        cancelled: ``cancelled() -> bool``; True gives up.

    Returns:
        The held slot, or None when the job was cancelled while it waited.
    """
    seq = job.get("queue_seq")
    if seq is None:
        return jobqueue.Slot(-1, None)  # not queued (a job created by hand)

    def waiting(position: int) -> None:
        write_json(jdir / "status.json", {**status, "waiting": True, "queue_position": position,
                                          "message": "waiting for a free worker", "updated": now_iso()})

    return jobqueue.wait_turn(jdir.parent, job["job_id"], seq, cancelled, on_wait=waiting)


def worker_main(job_dir: str) -> None:
    """Entry point of the worker process: run the job described in ``job.json``."""
    jdir = Path(job_dir)
    log = begin_worker(jdir)
    job = read_json(jdir / "job.json", {})
    status = {"state": "running", "pid": os.getpid(), "message": "waiting for a free worker", "updated": now_iso()}
    write_json(jdir / "status.json", {**status, "waiting": True})

    def cancelled() -> bool:
        return (jdir / "cancel").exists()

    slot = None
    try:
        slot = await_turn(jdir, job, status, cancelled)
        if slot is None:
            for rid in job.get("run_ids", []):
                p = Path(job["root"]) / rid
                if (read_json(p / "status.json", {}) or {}).get("state") in ACTIVE_STATES:
                    RunWriter(p).status("cancelled", "cancelled before it started", pid=os.getpid())
            write_json(jdir / "status.json", {**status, "state": "cancelled", "message": "", "updated": now_iso()})
            return
        status["message"] = "loading the model"
        write_json(jdir / "status.json", {**status, "updated": now_iso()})
        import warnings

        warnings.filterwarnings("ignore", module="keras")
        import tensorflow as tf

        tf.get_logger().setLevel("ERROR")
        from tlviz.finetune.device import setup_device
        from tlviz.finetune.executors import local_where

        where = local_where(setup_device())
        status["where"] = where
        loaded, images = _load_inputs(job)
        from tlviz.finetune.cache import ActivationCache

        cache = ActivationCache(disk_dir=Path(job["root"]) / ".cache" / "activations")
        if job["kind"] == "lrfind":
            _run_lrfind(job, jdir, loaded, images, cache, cancelled)
            final = "cancelled" if cancelled() else "done"
        else:
            _run_queue(job, loaded, images, cache, cancelled, log, where, load_original(job))
            final = "cancelled" if cancelled() else "done"
        write_json(jdir / "status.json", {**status, "state": final, "message": "", "updated": now_iso()})
    except BaseException as exc:  # the worker must always leave a readable state behind
        log.error("job failed:\n%s", traceback.format_exc())
        msg = str(exc) if isinstance(exc, TlvizError) else f"{type(exc).__name__}: {exc}"
        write_json(jdir / "status.json", {**status, "state": "failed", "message": msg, "updated": now_iso()})
        for rid in job.get("run_ids", []):
            p = Path(job["root"]) / rid
            st = read_json(p / "status.json", {}) or {}
            if st.get("state") in ACTIVE_STATES:
                RunWriter(p).status("failed", msg, pid=os.getpid())
    finally:
        if slot is not None:
            slot.release()
        jobqueue.leave(jdir.parent, job.get("job_id", jdir.name), job.get("queue_seq"))


def _load_inputs(job):
    """The `LoadedModel` and `ImageSet` saved by `prepare_inputs` for `job`, as the server had them."""
    return loaded_from(job["model_file"], job), image_set_from(read_images_file(job["images_file"]), job)


def load_original(job: dict, arrays: dict | None = None):
    """The original task's `ImageSet` of a job (`prepare_original`), or None when the job has none.

    Args:
        job: the job's ``job.json``.
        arrays: the arrays of its images file, when they came another way (a Ray worker). Defaults to reading
            ``original_file``.
    """
    if not job.get("original") or (arrays is None and not job.get("original_file")):
        return None
    arrays = read_images_file(job["original_file"]) if arrays is None else arrays
    return image_set_from(arrays, {"images": job["original"]})


def read_images_file(path) -> dict:
    """The arrays of an images ``.npz`` written by `prepare_inputs` (``images``, ``labels``, ...), in memory."""
    with np.load(path, allow_pickle=False) as z:
        return {k: z[k] for k in z.files}


def loaded_from(source, job: dict):
    """The `LoadedModel` of a job from its saved file or its bytes, with the metadata the server had.

    Args:
        source: the ``.keras`` file's path, or its bytes (a Ray worker gets them from the object store).
        job: the job's ``job.json`` (``model``, ``model_key``).
    """
    from tlviz.models import load_model

    loaded = load_model(source, filename=job["model"].get("filename") or None)
    loaded.metadata = dict(job["model"].get("metadata") or {})
    loaded.sha256 = job.get("model_key") or loaded.sha256
    return loaded


def image_set_from(arrays: dict, job: dict):
    """The `ImageSet` of a job from the arrays of its images file (`read_images_file`).

    Args:
        arrays: ``images``, ``labels``, ``class_names``, ``files`` and ``details``.
        job: the job's ``job.json`` (``images``: source and resize method).
    """
    import json
    from collections import Counter

    from tlviz.imagesets import ImageSet, Skipped

    details = json.loads(str(arrays["details"])) if "details" in arrays else {}
    return ImageSet(images=arrays["images"], labels=np.asarray(arrays["labels"]).astype(np.int64),
                    class_names=[str(c) for c in arrays["class_names"]], files=[str(f) for f in arrays["files"]],
                    source=job["images"].get("source", ""), resize=job["images"].get("resize", "bilinear"),
                    skipped=[Skipped(f, r) for f, r in details.get("skipped", [])],
                    original_sizes=[tuple(sz) for sz in details.get("original_sizes", [])],
                    original_modes=Counter(details.get("original_modes", {})),
                    label_order_from_file=bool(details.get("label_order_from_file", False)))


def _run_queue(job, loaded, images, cache, cancelled, log, where=None, original=None):
    from tlviz.finetune.run import run_finetune

    for rid, cfg_dict in zip(job["run_ids"], job["configs"]):
        writer = RunWriter(Path(job["root"]) / rid)
        if not writer.dir.exists() or not (writer.dir / "config.json").exists():
            continue  # deleted while queued
        if cancelled():
            writer.status("cancelled", "cancelled before it started", pid=os.getpid())
            continue
        writer.status("running", "", pid=os.getpid(), where=where or {})
        try:
            cfg = RunConfig.from_dict(cfg_dict)
            res = run_finetune(loaded, images, cfg, writer=writer, should_cancel=cancelled, cache=cache,
                               image_key=job.get("image_key"), original=original)
            top = res.findings[0].title if res.findings else ""
            writer.status(res.state, top, pid=os.getpid())
            log.info("run %s: %s", rid, res.state)
        except RunRefused as exc:
            writer.status("refused", str(exc), pid=os.getpid())
        except Exception as exc:
            log.error("run %s failed:\n%s", rid, traceback.format_exc())
            writer.status("failed", f"{type(exc).__name__}: {exc}", pid=os.getpid())
        finally:
            writer.close()


def _run_lrfind(job, jdir, loaded, images, cache, cancelled):
    from tlviz.finetune.lrfinder import lr_range_test

    cfg = RunConfig.from_dict(job["configs"][0])
    res = lr_range_test(loaded, images, cfg, steps=int(job.get("steps", 100)), should_cancel=cancelled,
                        progress=lambda info: write_json(jdir / "progress.json", info), cache=cache,
                        image_key=job.get("image_key"))
    write_json(jdir / "result.json", res.to_dict())
