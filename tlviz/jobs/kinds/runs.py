"""The ``"runs"`` job: one fine-tuning run, or the runs of a sweep, with their controls.

`start_job` saves the inputs (`tlviz.jobs.inputs`), creates the run folders (state
``queued``) and starts the job's worker process. It runs on one of two executors:

- ``local`` (the default): the worker process waits for a slot of the queue of heavy jobs,
  then runs the runs one after another (`run_local`), each writing its run folder; the
  Cancel flag is looked at after every batch; between two runs it lets another person's
  waiting job go first when that is its turn (`give_way`);
- ``ray`` (``TLVIZ_RAY_ADDRESS`` set, `tlviz.jobs.executors`): the worker process is a light
  driver that takes no local slot and runs the job on the cluster (`tlviz.jobs.ray_executor`:
  one run as a Ray task, a sweep through Ray Tune, optionally with ASHA), writing what comes
  back into the same run folders.

Either way `tlviz.jobs.poll` and `tlviz.jobs.cancel` follow it the same.
"""

from __future__ import annotations

import os
import traceback
from pathlib import Path

from tlviz.errors import RunRefused
from tlviz.finetune.config import RunConfig
from tlviz.finetune.store import RunWriter, new_run_id, runs_dir
from tlviz.jobs import executors, ray_executor
from tlviz.jobs import queue as jobqueue
from tlviz.jobs.folder import new_job, read_job, tidy
from tlviz.jobs.inputs import images_info, load_inputs, load_original, model_info, prepare_inputs, prepare_original
from tlviz.jobs.kind import JobKind, WorkerContext
from tlviz.jobs.spawn import RUNS_TAIL, spawn
from tlviz.jobs.status import Job, waiting_fields
from tlviz.jsonfiles import write_json


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
        The `Job` (its id, a string, with its ``run_ids``); its run folders exist (state ``queued``)
        when this returns.

    Raises:
        RunRefused: no or invalid configurations, ASHA without Ray, a control that
            does not apply, an original-task image set that does not match the model.
        ClusterUnreachable: the Ray cluster cannot be reached (nothing was created;
            the caller may offer ``executor="local"``).
        ConfigError: ``TLVIZ_RUNS_MAX_GB`` is set to something that is not a size (nothing was created).
    """
    from tlviz import diskcap
    from tlviz.finetune.config import control_config

    diskcap.max_bytes()  # a bad disk cap is told before any run folder is written (new_job makes room later)
    if not configs:
        raise RunRefused("No run to start: give at least one configuration.")
    for c in configs:
        c.validate()
        for kind in controls:
            control_config(c, kind)  # refuses a control that does not apply, before anything is created
    if original is not None:
        from tlviz.finetune.retention import original_labels

        original_labels(loaded, original)
    ray_target = ray_target_of(executor, asha)
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
        w.write_config(c, model_info(loaded), images_info(images, inputs["image_key"]), owner=owner,
                       **({"original": extra["original"]} if extra else {}))
        w.status("queued", "waiting for the worker")
        run_ids.append(rid)
        stored.append(c)
        return rid

    for c in configs:
        rid = queue(c)
        for kind in controls:
            queue(control_config(c, kind, rid))
    return launch("runs", {"run_ids": run_ids, "configs": [c.to_dict() for c in stored], "owner": owner,
                           "asha": bool(asha), **extra}, loaded, images, inputs, root, ray_target)


def ray_target_of(executor: str | None, asha: bool) -> str | None:
    """The Ray address a job goes to (probed: `executors.check_reachable`), or None for a local job.

    Raises:
        RunRefused: an unknown executor, Ray without ``TLVIZ_RAY_ADDRESS``, ASHA without Ray.
        ClusterUnreachable: the cluster cannot be reached.
    """
    chosen = executors.choose_executor(executor)
    if asha and chosen != "ray":
        raise RunRefused("Early stopping (ASHA) runs through Ray Tune: set TLVIZ_RAY_ADDRESS to a Ray cluster, or "
                         "start the sweep without early stopping.")
    return executors.check_reachable() if chosen == "ray" else None


def launch(kind: str, spec: dict, loaded, images, inputs: dict, root, ray_target: str | None = None) -> Job:
    """Create a fine-tuning job's folder and start its worker process, on this machine or as a Ray driver.

    Args:
        kind: ``"runs"`` or ``"lrfind"``.
        spec: the kind's part of ``job.json`` (``run_ids``, ``configs``, ...).
        loaded / images: the inputs (described in ``job.json``).
        inputs: `prepare_inputs`'s dict.
        root: the runs folder.
        ray_target: the Ray address (`ray_target_of`), or None to run here.

    Returns:
        The `Job`.
    """
    spec = {"model": model_info(loaded), "images": images_info(images, inputs["image_key"]), **inputs, **spec,
            "executor": "ray" if ray_target else "local"}
    if ray_target:
        spec["ray_address"] = ray_target
        spec["env"] = ray_executor.forwarded_env()
        job_id, _ = new_job(kind, spec, root, state="running", queued=False)  # the cluster schedules: no slot
    else:
        job_id, _ = new_job(kind, spec, root)
    pid = spawn(job_id, root)
    for rid in spec["run_ids"]:
        RunWriter(runs_dir(root) / rid).status("queued", "waiting for the worker", pid=pid, job_id=job_id)
    return Job(job_id, kind, list(spec["run_ids"]), str(runs_dir(root)))


def prepare_local(ctx: WorkerContext):
    """What a fine-tuning job on this machine loads first: the device, the inputs, the activation cache.

    Returns:
        ``(where, loaded, images, cache)``.
    """
    ctx.write(message="loading the model")
    import warnings

    warnings.filterwarnings("ignore", module="keras")
    import tensorflow as tf

    tf.get_logger().setLevel("ERROR")
    from tlviz.finetune.cache import ActivationCache
    from tlviz.finetune.device import setup_device

    where = executors.local_where(setup_device())
    ctx.write(where=where)
    loaded, images = load_inputs(ctx.job)
    cache = ActivationCache(disk_dir=Path(ctx.root) / ".cache" / "activations")
    return where, loaded, images, cache


def give_way(ctx: WorkerContext) -> bool:
    """Between two runs: let another person's waiting job go first when it is its turn (`tlviz.jobs.queue.yield_turn`).

    Uses the slot the worker holds (``ctx.slot``, set by `tlviz.jobs.worker.worker_main`). When it yields, the
    job's new queue number goes into ``job.json`` (``queue_seq``) and ``ctx.job``, so `tlviz.jobs.poll` and the
    worker's end find it; ``status.json`` says ``queued`` with the place in line while it waits, then
    ``running`` again. The process, and the model it loaded, stay while it waits.

    Args:
        ctx: the job's `WorkerContext`.

    Returns:
        True to go on with the next run; False when the job was cancelled while it waited (its slot given back).
    """
    slot = ctx.slot
    seq = ctx.job.get("queue_seq")
    if slot is None or not slot.held or seq is None:
        return True  # holds no slot here (not queued)

    def requeued(new_seq: int) -> None:
        ctx.job["queue_seq"] = new_seq
        write_json(ctx.jdir / "job.json", {**(read_job(ctx.jdir) or ctx.job), "queue_seq": new_seq})
        ctx.write(state="queued", message="waiting for a free worker (another person's job goes first)")

    kept = jobqueue.yield_turn(ctx.jdir.parent, ctx.job["job_id"], seq, slot, ctx.cancelled, on_requeue=requeued,
                            on_wait=lambda position, yours: ctx.write(**waiting_fields(position, yours)))
    if kept is None:
        return False
    if ctx.job.get("queue_seq") != seq:
        ctx.write(state="running", queue_position=None, next_is_yours=None, message="")
        ctx.log.info("took its turn again under queue number %s", ctx.job["queue_seq"])
    return True


def run_local(ctx: WorkerContext) -> None:
    """The runs of the job, one after another, in this worker process (each fills its run folder).

    Before each run after the first, the job gives way to another person's waiting job when it is that
    job's turn (`give_way`: a new place in the queue, status ``queued`` while it waits,
    the next run ``queued`` too); this process and its loaded model wait with it. A Cancel while it
    waits ends the runs not started ``cancelled``.
    """
    from tlviz.finetune.run import run_finetune

    where, loaded, images, cache = prepare_local(ctx)
    job, log = ctx.job, ctx.log
    original = load_original(job)
    started = 0
    for rid, cfg_dict in zip(job["run_ids"], job["configs"]):
        writer = RunWriter(Path(ctx.root) / rid)
        if not writer.dir.exists() or not (writer.dir / "config.json").exists():
            continue  # deleted while queued
        if started and not ctx.cancelled():
            give_way(ctx)  # False only when cancelled while it waited: this run is cancelled just below
        if ctx.cancelled():
            writer.status("cancelled", "cancelled before it started", pid=os.getpid())
            continue
        started += 1
        writer.status("running", "", pid=os.getpid(), where=where or {})
        try:
            cfg = RunConfig.from_dict(cfg_dict)
            res = run_finetune(loaded, images, cfg, writer=writer, should_cancel=ctx.cancelled, cache=cache,
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


KIND = JobKind("runs", "fine-tuning runs (one, or a sweep)", run=run_local, ray_run=ray_executor.drive,
               death_tail=RUNS_TAIL)
