"""The Ray executor of the job system: a run kind's job driven on a Ray cluster, filling the run folders.

A fine-tuning job (kinds ``runs`` and ``lrfind``) started with ``TLVIZ_RAY_ADDRESS`` set
(`tlviz.jobs.executors`) gets the same worker process as every job (`tlviz.jobs.worker`),
but that process is a light *driver* (no TensorFlow, no slot of the local queue of heavy
jobs): after the common prologue the worker calls `drive`, which does, in order:

1. connect (``ray.init``) with the ``tlviz`` package shipped to the cluster
   (``runtime_env`` ``py_modules``: the nodes need TensorFlow, Keras and Ray, not
   tlviz); a cluster that cannot be reached fails the job within
   `CONNECT_TIMEOUT_S` with ``unreachable`` in its status (the page offers to run
   on this machine);
2. put the model's bytes and the image arrays (and the original task's, when the
   job reports retention) into the object store (`put_inputs`);
3. run the job: one run as a Ray task (`ray_tasks.run_task`), several runs (a
   sweep) through Ray Tune (`ray_tasks.tune_trial`, the ASHA scheduler when the job
   asks for it), the range test as a task (`ray_tasks.lrfind_task`);
4. meanwhile collect the job's `ray_tasks.Board` every `POLL_S` and write what
   the runs post into their folders (status with ``where``, progress, history
   with the TensorBoard events), then the files each run sends back. The Cancel
   flag file raises the board's flag; runs that have not stopped `CANCEL_GRACE_S` later are stopped by Ray
   (``ray.cancel`` / Tune's stopper). A run whose worker or node was lost is
   marked failed with the reason; a sweep goes on with its other runs.

What runs on the cluster's workers is in `tlviz.jobs.ray_tasks`. This module imports ``ray``
inside its functions only, so the server can import it without importing ``ray``.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import threading
import time
import traceback
from pathlib import Path

from tlviz.errors import ClusterUnreachable, RunRefused, TlvizError
from tlviz.finetune.store import ACTIVE_STATES, RunWriter
from tlviz.jobs import executors
from tlviz.jobs.kind import WorkerContext
from tlviz.jsonfiles import now_iso, read_json, write_json

#: Seconds between two collections of the board.
POLL_S = 0.3
#: Seconds a cancelled run has to stop by itself before Ray stops it.
CANCEL_GRACE_S = 20.0
#: Seconds ``ray.init`` may take before the cluster counts as unreachable.
CONNECT_TIMEOUT_S = 60.0
#: ASHA: a trial runs at least this many epochs; each rung keeps the best 1 / reduction factor.
ASHA_GRACE_PERIOD = 1
ASHA_REDUCTION_FACTOR = 2
#: Settings forwarded to the cluster's workers when set here, so that runs there plan batches and caches alike.
FORWARDED_SETTINGS = ("TLVIZ_MEMORY_MB", "TLVIZ_ACTIVATION_CACHE_MB", "TLVIZ_MAX_MODEL_MB")
#: The ``tlviz`` package folder, shipped to the cluster with every job.
PACKAGE_DIR = Path(__file__).resolve().parent.parent


def forwarded_env() -> dict:
    """The ``TLVIZ_*`` settings set here that the cluster's workers get too (`FORWARDED_SETTINGS`)."""
    from tlviz import config

    return {k: config.raw(k) for k in FORWARDED_SETTINGS if config.raw(k) is not None}


def task_resources(cluster: dict) -> dict:
    """What one run or range test asks of the cluster: a GPU when it has any, else one CPU.

    Args:
        cluster: `cluster_info`'s dict (``CPU``, ``GPU``).

    Returns:
        ``ray.remote`` options (``num_cpus``, ``num_gpus``).
    """
    return {"num_cpus": 1, "num_gpus": 1 if (cluster.get("GPU") or 0) >= 1 else 0}


def trial_resources(cluster: dict, n_trials: int) -> dict:
    """What each trial of a sweep asks for: one GPU when the cluster has GPUs, else a share of the CPUs.

    The CPU share is the cluster's CPUs divided among the trials (at least one,
    at most the largest node's), so the number of trials running at once follows
    the cluster's resources; TensorFlow's thread pools are limited to it.

    Args:
        cluster: `cluster_info`'s dict (``CPU``, ``GPU``, ``max_node_CPU``).
        n_trials: trials in the sweep.

    Returns:
        Ray Tune resources (``{"cpu": n}`` or ``{"cpu": 1, "gpu": 1}``).
    """
    cpus = max(int(cluster.get("CPU") or 1), 1)
    if (cluster.get("GPU") or 0) >= 1:
        return {"cpu": 1, "gpu": 1}
    share = max(cpus // max(1, min(n_trials, cpus)), 1)
    return {"cpu": max(1, min(share, int(cluster.get("max_node_CPU") or share)))}


def lost_message(exc: BaseException, where: dict | None = None) -> str:
    """The reason a run failed on the cluster, in words (a lost worker or node is said as such)."""
    name = type(exc).__name__
    first = (str(exc).strip().splitlines() or [""])[0][:300]
    on = ""
    if where and where.get("node"):
        on = f" on node {where['node']}" + (f" ({where['node_id']})" if where.get("node_id") else "")
    lost = ("WorkerCrashedError", "NodeDiedError", "ActorDiedError", "ActorUnavailableError", "ObjectLostError",
            "OwnerDiedError", "RaySystemError", "LocalRayletDiedError", "ObjectReconstructionFailedError")
    if name in lost or any(n in str(exc)[:2000] for n in lost):
        return (f"the Ray worker running this run{on} was lost before the run finished ({name}: {first}): its node "
                "left the cluster, or the worker was killed (often for lack of memory). What was recorded is kept; "
                "start the run again.")
    return f"{name}: {first}" if first else name


def cluster_info(ray, address: str) -> dict:
    """What the cluster holds now: nodes alive, CPUs, GPUs, the largest node's CPUs, Ray's version."""
    res = ray.cluster_resources()
    nodes = [n for n in ray.nodes() if n.get("Alive")]
    node_cpus = [float((n.get("Resources") or {}).get("CPU", 0)) for n in nodes] or [0.0]
    return {"address": address, "ray_version": ray.__version__, "nodes": len(nodes), "CPU": float(res.get("CPU", 0)),
            "GPU": float(res.get("GPU", 0)), "max_node_CPU": max(node_cpus), "checked": now_iso()}


def put_inputs(ray, job: dict) -> dict:
    """Put the job's model (the ``.keras`` bytes) and images (the arrays) into the object store.

    Returns:
        ``{"model": ref, "images": ref, "meta": {...}}``: what every task and trial gets.
    """
    from tlviz.jobs.inputs import read_images_file

    meta = {"model": job["model"], "images": job["images"], "model_key": job.get("model_key"),
            "image_key": job.get("image_key"), "set_key": Path(job["images_file"]).stem,
            "original": job.get("original")}
    out = {"model": ray.put(Path(job["model_file"]).read_bytes()),
           "images": ray.put(read_images_file(job["images_file"])), "meta": meta}
    if job.get("original_file"):  # the original task's images (retention)
        out["original"] = ray.put(read_images_file(job["original_file"]))
        meta["set_key"] += "+" + Path(job["original_file"]).stem
    return out


def connect(address: str, env: dict | None = None):
    """``ray.init`` on `address`, with the ``tlviz`` package and `env` sent to the cluster's workers.

    Returns:
        The ``ray`` module, connected.

    Raises:
        ClusterUnreachable: nothing answers, or ``ray.init`` fails (the message says why).
    """
    executors.check_reachable(address)
    import ray

    runtime_env = {"py_modules": [str(PACKAGE_DIR)],
                   "env_vars": {"TF_CPP_MIN_LOG_LEVEL": "2", **(env or {})}}
    try:
        ray.init(address=address, runtime_env=runtime_env, log_to_driver=False, logging_level="WARNING",
                 ignore_reinit_error=True)
    except Exception as exc:  # noqa: BLE001 - every failure to connect is said the same way
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:300]
        raise ClusterUnreachable(f"Could not connect to the Ray cluster at {address}: {first}. Check that the "
                                 f"cluster runs the same Ray version ({ray.__version__}) and Python, or run on this "
                                 "machine.") from None
    return ray


class RunFolders:
    """The run folders of a job on Ray: writes what its runs post on the board into them (the driver's side of
    `tlviz.jobs.ray_tasks.Board`)."""

    def __init__(self, ray, board, job: dict, jdir: Path):
        self.ray, self.board, self.jdir = ray, board, jdir
        root = Path(job["root"])
        self.writers = {rid: RunWriter(root / rid) for rid in job.get("run_ids", [])}
        self.where: dict[str, dict] = {}
        self.finished: set[str] = set()
        self.lrfind_where: dict = {}

    def writer(self, run_id: str):
        w = self.writers.get(run_id)
        return w if w is not None and (w.dir / "config.json").exists() else None  # None: deleted meanwhile

    def collect(self) -> None:
        """Drain the board once and write every event."""
        for run_id, kind, payload in self.ray.get(self.board.drain.remote(), timeout=60):
            self.apply(run_id, kind, payload)

    def apply(self, run_id: str, kind: str, payload) -> None:
        from tlviz.jobs.ray_tasks import LRFIND

        if run_id == LRFIND:
            if kind == "progress":
                write_json(self.jdir / "progress.json", payload)
            elif kind == "status":
                self.lrfind_where = payload.get("where") or {}
            return
        w = self.writer(run_id)
        if w is None or run_id in self.finished:
            return
        if kind == "status":
            self.where[run_id] = payload.get("where") or {}
            w.status("running", "", where=self.where[run_id])
        elif kind == "progress":
            w.progress(payload)
        elif kind == "history":
            self.write_files(w, payload.get("files") or {})
            write_json(w.dir / "history.json", payload.get("history") or [])
        elif kind == "stopped":
            self.write_files(w, payload.get("files") or {})
            self.stop(run_id, int(payload.get("epoch") or 0))
        elif kind == "result":
            self.finish(run_id, payload)

    @staticmethod
    def write_files(w: RunWriter, files: dict) -> None:
        for rel, data in files.items():
            target = (w.dir / rel).resolve()
            if w.dir.resolve() not in target.parents:  # only inside the run folder
                continue
            target.parent.mkdir(parents=True, exist_ok=True)
            tmp = target.with_name(f".{target.name}.{os.getpid()}.tmp")
            tmp.write_bytes(data)
            os.replace(tmp, target)

    def finish(self, run_id: str, out: dict) -> None:
        """A run's end: its files, then its final state (``completed`` needs ``metrics.json``, written first)."""
        w = self.writer(run_id)
        self.finished.add(run_id)
        if w is None:
            return
        self.write_files(w, out.get("files") or {})
        where = out.get("where") or self.where.get(run_id) or {}
        w.status(out.get("state", "failed"), out.get("message", ""), **({"where": where} if where else {}))

    def stop(self, run_id: str, epoch: int | None = None) -> None:
        """Mark a run the scheduler stopped early, after `epoch` (default: its last recorded epoch)."""
        if epoch is None:
            w = self.writers.get(run_id)
            hist = (read_json(w.dir / "history.json", []) or []) if w is not None else []
            epoch = int(hist[-1]["epoch"]) if hist else 0
        self.end(run_id, "stopped", f"stopped early by ASHA after epoch {epoch}: its validation loss was worse than "
                 "most other runs' at that epoch", stopped_at=epoch)

    def end(self, run_id: str, state: str, message: str, **extra) -> None:
        """Mark a run that sent no results (failed, stopped, cancelled), keeping what it streamed."""
        w = self.writer(run_id)
        self.finished.add(run_id)
        if w is None:
            return
        if (read_json(w.dir / "status.json", {}) or {}).get("state") not in ACTIVE_STATES:
            return
        where = self.where.get(run_id)
        w.status(state, message, **extra, **({"where": where} if where else {}))


def follow(ray, refs: list, folders: RunFolders, cancelled) -> bool:
    """Collect the board until every ref is ready; cancel cooperatively, then by force. Returns: cancelled."""
    pending, cancel_at = list(refs), None
    while pending:
        _, pending = ray.wait(pending, num_returns=len(pending), timeout=POLL_S)
        folders.collect()
        if cancel_at is None and cancelled():
            folders.board.cancel.remote()
            cancel_at = time.monotonic()
        if cancel_at is not None and time.monotonic() - cancel_at > CANCEL_GRACE_S:
            for r in pending:
                ray.cancel(r, force=True)
    folders.collect()
    return cancel_at is not None


def outcome(ray, ref, folders: RunFolders, run_id: str) -> None:
    """Write the end of a run task: its results, or why it has none."""
    try:
        folders.finish(run_id, ray.get(ref))
    except ray.exceptions.TaskCancelledError:
        folders.end(run_id, "cancelled", "cancelled: the run did not stop by itself, so Ray stopped it; what it "
                                       "recorded up to its last epoch is kept")
    except ray.exceptions.RayTaskError as exc:
        cause = getattr(exc, "cause", None)
        if isinstance(cause, RunRefused):
            folders.end(run_id, "refused", str(cause))
        else:
            folders.end(run_id, "failed", lost_message(cause or exc, folders.where.get(run_id)))
    except Exception as exc:  # noqa: BLE001 - a lost worker or node, and anything else Ray raises
        folders.end(run_id, "failed", lost_message(exc, folders.where.get(run_id)))


def _drive_run(ray, job, inputs, folders: RunFolders, cluster, cancelled) -> None:
    from tlviz.jobs import ray_tasks

    rid, cfg = job["run_ids"][0], job["configs"][0]
    w = folders.writer(rid)
    if w is not None:
        w.status("queued", "waiting for the Ray cluster's resources")
    ref = ray.remote(ray_tasks.run_task).options(max_retries=0, **task_resources(cluster)).remote(
        inputs, cfg, rid, folders.board)
    follow(ray, [ref], folders, cancelled)
    outcome(ray, ref, folders, rid)


def _drive_lrfind(ray, job, jdir: Path, inputs, folders: RunFolders, cluster, cancelled) -> dict:
    from tlviz.jobs import ray_tasks

    ref = ray.remote(ray_tasks.lrfind_task).options(max_retries=0, **task_resources(cluster)).remote(
        inputs, job["configs"][0], int(job.get("steps", 100)), folders.board)
    follow(ray, [ref], folders, cancelled)
    try:
        out = ray.get(ref)
    except ray.exceptions.RayTaskError as exc:
        cause = getattr(exc, "cause", None)
        if isinstance(cause, TlvizError):
            raise type(cause)(str(cause)) from None
        raise TlvizError(lost_message(cause or exc, folders.lrfind_where)) from None
    except ray.exceptions.TaskCancelledError:
        return {}
    except Exception as exc:  # noqa: BLE001
        raise TlvizError(lost_message(exc, folders.lrfind_where)) from None
    if out.get("result") is not None:
        write_json(jdir / "result.json", out["result"])
    return out.get("where") or {}


def _drive_tune(ray, job, inputs, folders: RunFolders, cluster, cancelled, log) -> None:
    """The runs of a job as Ray Tune trials (ASHA when ``job["asha"]``); fills their folders."""
    os.environ.setdefault("TUNE_DISABLE_AUTO_CALLBACK_LOGGERS", "1")
    os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")
    from ray import tune
    from ray.tune.schedulers import ASHAScheduler

    from tlviz.jobs import ray_tasks
    from tlviz.finetune.config import RunConfig

    runs = list(zip(job["run_ids"], job["configs"]))
    resources = trial_resources(cluster, len(runs))
    threads = None if resources.get("gpu") else int(resources["cpu"])
    trainable = tune.with_resources(tune.with_parameters(ray_tasks.tune_trial, inputs=inputs, board=folders.board,
                                                         runs=runs, threads=threads), resources)
    scheduler = None
    if job.get("asha"):
        max_t = max(RunConfig.from_dict(c).total_epochs for _, c in runs)
        scheduler = ASHAScheduler(time_attr="training_iteration", max_t=max_t, grace_period=ASHA_GRACE_PERIOD,
                                  reduction_factor=ASHA_REDUCTION_FACTOR)
    for rid, _ in runs:
        w = folders.writer(rid)
        if w is not None:
            w.status("queued", "waiting for the Ray cluster's resources")

    force_file = folders.jdir / "cancel.force"  # Tune pickles its stopper: it looks at a file, not at this process

    class _Stopper(tune.Stopper):
        def __init__(self, path: str):
            self.path = path

        def __call__(self, trial_id, result):
            return False

        def stop_all(self):
            return os.path.exists(self.path)

    storage = tempfile.mkdtemp(prefix="tlviz-tune-")
    tuner = tune.Tuner(
        trainable, param_space={"run_index": tune.grid_search(list(range(len(runs))))},
        tune_config=tune.TuneConfig(metric="val_loss", mode="min", scheduler=scheduler, reuse_actors=True),
        run_config=tune.RunConfig(name=f"tlviz-{job['job_id']}", storage_path=storage, verbose=0,
                                  stop=_Stopper(str(force_file)),
                                  failure_config=tune.FailureConfig(max_failures=0, fail_fast=False)))
    box: dict = {}

    def fit():
        try:
            box["grid"] = tuner.fit()
        except BaseException as exc:  # noqa: BLE001 - raised again in the driver's thread
            box["error"] = exc

    thread = threading.Thread(target=fit, daemon=True, name="tlviz-tune")
    thread.start()
    cancel_at = None
    try:
        while thread.is_alive():
            thread.join(POLL_S)
            folders.collect()
            if cancel_at is None and cancelled():
                folders.board.cancel.remote()
                cancel_at = time.monotonic()
            if cancel_at is not None and time.monotonic() - cancel_at > CANCEL_GRACE_S:
                force_file.write_text(now_iso())
        folders.collect()
    finally:
        shutil.rmtree(storage, ignore_errors=True)
    if "error" in box:
        raise box["error"]
    for result in box["grid"]:
        rid = runs[int(result.config["run_index"])][0]
        if rid in folders.finished:
            continue
        if result.error is not None:
            log.error("trial of run %s failed: %s", rid, result.error)
            folders.end(rid, "failed", lost_message(result.error, folders.where.get(rid)) + " The sweep went on with "
                      "its other runs.")
        elif cancel_at is not None:
            folders.end(rid, "cancelled", "cancelled: Ray Tune stopped the trial; what it recorded is kept")
        else:
            folders.stop(rid)


def _import_tune() -> None:
    try:
        import ray.tune  # noqa: F401
    except Exception:  # noqa: BLE001 - imported again (and failing loudly) where it is used
        pass


def drive(ctx: WorkerContext) -> dict:
    """The Ray executor of a run kind: run the job of ``job.json`` on the Ray cluster it names.

    Called by the one worker entry point (`tlviz.jobs.worker.worker_main`) in place of the
    local executor, after the common prologue; its catch-all handler records a failure
    (``unreachable`` when the cluster could not be reached) and fails the runs left active.

    Args:
        ctx: the `WorkerContext` of the job.

    Returns:
        How the job ended: ``{"state": "done" or "cancelled"}`` (a range test: and ``where``).

    Raises:
        ClusterUnreachable: the cluster could not be reached or connected to.
    """
    jdir, job, log, cancelled = ctx.jdir, ctx.job, ctx.log, ctx.cancelled
    address = job.get("ray_address") or ""

    def too_slow() -> None:
        message = (f"Could not connect to the Ray cluster at {address}: no answer within {CONNECT_TIMEOUT_S:.0f} s. "
                   "Check that it runs and that TLVIZ_RAY_ADDRESS names it, or run on this machine.")
        ctx.write(state="failed", message=message, unreachable=True)
        ctx.end_active_runs("failed", message)
        os._exit(3)

    timer = threading.Timer(CONNECT_TIMEOUT_S, too_slow)
    timer.daemon = True
    timer.start()
    if len(job.get("run_ids", [])) > 1:  # a sweep: import Ray Tune (a second or two) while connecting
        threading.Thread(target=_import_tune, daemon=True).start()
    try:
        ray = connect(address, job.get("env"))
    except ClusterUnreachable:
        raise
    except BaseException as exc:  # noqa: BLE001
        log.error("connecting failed:\n%s", traceback.format_exc())
        raise ClusterUnreachable(f"Could not connect to the Ray cluster at {address}: {type(exc).__name__}: "
                                 f"{exc}") from None
    finally:
        timer.cancel()
    try:
        cluster = cluster_info(ray, address)
        ctx.write(cluster=cluster, message="sending the model and the images to the cluster")
        write_json(jdir.parent / executors.CLUSTER_FILE, cluster)
        inputs = put_inputs(ray, job)
        from tlviz.jobs import ray_tasks

        # The board lives on the head node (the one node a cluster cannot lose without ending), not on a
        # worker node that may go away mid-job.
        head = {"node:__internal_head__": 0.001} if "node:__internal_head__" in ray.cluster_resources() else {}
        board = ray.remote(num_cpus=0)(ray_tasks.Board).options(max_restarts=0, resources=head).remote()
        folders = RunFolders(ray, board, job, jdir)
        ctx.write(message="waiting for the Ray cluster's resources")
        end: dict = {}
        if job.get("kind") == "lrfind":
            end["where"] = _drive_lrfind(ray, job, jdir, inputs, folders, cluster, cancelled)
        elif len(job.get("run_ids", [])) == 1:
            _drive_run(ray, job, inputs, folders, cluster, cancelled)
        else:
            _drive_tune(ray, job, inputs, folders, cluster, cancelled, log)
        for rid in job.get("run_ids", []):  # a run that neither ended nor was accounted for
            folders.end(rid, "cancelled" if cancelled() else "failed",
                        "cancelled before it started" if cancelled() else "the run ended on the cluster without "
                        "sending its results (see worker.log)")
        return {**end, "state": "cancelled" if cancelled() else "done", "message": ""}
    finally:
        try:
            ray.shutdown()
        except Exception:  # noqa: BLE001
            pass
