"""One job system for every heavy job: normalization, diagnosis, repair, Grad-CAM, fine-tuning runs, range tests.

Heavy work never runs in the Streamlit server: a crash there would end every user's
session. Every kind of job (`registry`) runs in a worker process of its own, spawned at
the lowest priority, waiting for a slot of one file-based queue, writing its state and
progress into its job folder; the server only reads those files.

One API starts, follows and cancels any job:

- start: `start_analysis(kind, loaded, images, params)` (``normalize``, ``diagnose``,
  ``repair``, ``gradcam``; a stored result is served without a worker), `start_job(loaded,
  images, configs)` (fine-tuning runs, a sweep), `start_lr_finder(loaded, images, config)`;
  each returns the job's id (`start_job` and `start_lr_finder` a `Job`: the id, a ``str``,
  with its run ids);
- follow: `poll(job_id) -> JobStatus` (one status type; states ``queued``, ``running``,
  ``done``, ``failed``, ``cancelled``), `wait(job_id)`; `load_result(job_id)` for an
  analysis's result; `latest_job` finds a page's job again after a reload;
- cancel: `cancel(job_id)`;
- where and how many: `default_executor`, `describe_executor`, `last_cluster` (local or Ray),
  `max_jobs` and `waiting_text` (the queue).

Modules:

- `folder` — the job folder (ids, ``job.json`` / ``status.json``, progress, `tidy`);
- `spawn` — worker processes (start, alive, stop, death reasons, the prologue's first lines);
- `queue` — the queue of heavy jobs (files and locks: at most ``TLVIZ_MAX_JOBS`` at once, people served in turn);
- `status` — the state words, `Job`, `JobStatus`;
- `kind` / `registry` / `kinds` — what a kind is, the kinds by name, one module per kind;
- `worker` — the one worker entry point (`worker.worker_main`), for every kind and executor;
- `control` — `poll`, `cancel`, `wait`;
- `inputs` — the model and images saved once per content for the workers;
- `analysis` / `results` / `resultfiles` / `sources` — analyses: keys, the result store, results
  as JSON + ``.npz`` (never a pickle), re-opening an image source;
- `executors` (local or Ray, probing the address), `ray_executor` (the driver), `ray_tasks`
  (what runs on the Ray workers).
"""

from tlviz.errors import AnalysisRefused
from tlviz.jobs.analysis import analysis_key, latest_job, start_analysis
from tlviz.jobs.control import cancel, poll, wait
from tlviz.jobs.executors import default_executor, describe_executor, last_cluster
from tlviz.jobs.folder import job_dir, jobs_dir, tidy
from tlviz.jobs.kind import MEMORY_HINT, JobKind
from tlviz.jobs.kinds.lrfind import start_lr_finder
from tlviz.jobs.kinds.normalize import normalize_params
from tlviz.jobs.kinds.runs import start_job
from tlviz.jobs.registry import ANALYSIS_KINDS, KINDS, RUN_KINDS, get_kind
from tlviz.jobs.results import has_result, load_result, stored_result
from tlviz.jobs.sources import NO_SOURCE_NOTE, can_reopen
from tlviz.jobs.queue import max_jobs, waiting_text
from tlviz.jobs.status import ACTIVE_STATES, STATES, Job, JobStatus

__all__ = [
    "start_analysis", "start_job", "start_lr_finder", "poll", "cancel", "wait", "load_result", "latest_job",
    "analysis_key", "normalize_params", "stored_result", "has_result", "can_reopen", "Job", "JobStatus",
    "STATES", "ACTIVE_STATES", "KINDS", "ANALYSIS_KINDS", "RUN_KINDS", "get_kind", "JobKind", "tidy", "job_dir",
    "jobs_dir", "AnalysisRefused", "MEMORY_HINT", "NO_SOURCE_NOTE", "waiting_text", "max_jobs", "default_executor",
    "describe_executor", "last_cluster",
]
