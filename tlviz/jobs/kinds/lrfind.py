"""The ``"lrfind"`` job: the learning-rate range test of one run configuration.

`start_lr_finder` starts it like a fine-tuning job (`tlviz.jobs.kinds.runs`: on this machine
or on the Ray cluster); it fills no run folder: its progress goes to the job folder's
``progress.json`` and its `LRFinderResult` to ``result.json``
(`tlviz.jobs.JobStatus.lr_result`).
"""

from __future__ import annotations

from tlviz.finetune.config import RunConfig
from tlviz.jobs import ray_executor
from tlviz.jobs.inputs import prepare_inputs
from tlviz.jobs.kind import JobKind, WorkerContext
from tlviz.jobs.kinds.runs import launch, prepare_local, ray_target_of
from tlviz.jobs.spawn import RUNS_TAIL
from tlviz.jobs.status import Job
from tlviz.jsonfiles import write_json


def start_lr_finder(loaded, images, config: RunConfig, *, root=None, steps: int = 100,
                    owner: str | None = None, executor: str | None = None) -> Job:
    """Start the learning-rate range test for `config` in a worker process (or on Ray: see `start_job`).

    Args:
        loaded: the `LoadedModel`.
        images: the `ImageSet`.
        config: the run configuration whose learning rate is searched.
        root: the runs folder. Defaults to `runs_dir()`.
        steps: batches of the test. Defaults to `100`.
        owner: the workspace starting it. Defaults to `None`.
        executor: ``"local"``, ``"ray"`` or None (the configured one). Defaults to `None`.

    Returns:
        The `Job` (its id).

    Raises:
        RunRefused: an invalid configuration.
        ClusterUnreachable: the Ray cluster cannot be reached.
    """
    config.validate()
    ray_target = ray_target_of(executor, False)
    inputs = prepare_inputs(loaded, images, root)
    return launch("lrfind", {"run_ids": [], "configs": [config.to_dict()], "steps": int(steps), "owner": owner},
                  loaded, images, inputs, root, ray_target)


def run_local(ctx: WorkerContext) -> None:
    """The range test in this worker process: progress into ``progress.json``, the result into ``result.json``."""
    from tlviz.finetune.lrfinder import lr_range_test

    _, loaded, images, cache = prepare_local(ctx)
    job = ctx.job
    cfg = RunConfig.from_dict(job["configs"][0])
    res = lr_range_test(loaded, images, cfg, steps=int(job.get("steps", 100)), should_cancel=ctx.cancelled,
                        progress=lambda info: write_json(ctx.jdir / "progress.json", info), cache=cache,
                        image_key=job.get("image_key"))
    write_json(ctx.jdir / "result.json", res.to_dict())


KIND = JobKind("lrfind", "the learning-rate range test", run=run_local, ray_run=ray_executor.drive,
               death_tail=RUNS_TAIL)
