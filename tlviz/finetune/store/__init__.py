"""Runs on disk: one folder per run, readable while it is being written.

Location: ``TLVIZ_RUNS_DIR`` if set, else ``~/.tlviz/runs`` (or
``./tlviz_runs`` when the home folder is not writable).

A run folder holds:

- ``config.json`` — the `RunConfig`, the model and the image set it ran on, and the
  workspace (``owner``) that started it (written first);
- ``status.json`` — ``state`` (queued / running / completed / cancelled /
  diverged / stopped / failed / refused), a message, times, the worker's pid,
  and ``where`` it ran (``executor`` local / ray, ``node``, ``device`` CPU / GPU;
  see `tlviz.jobs.executors`); a run that a sweep's early-stopping scheduler
  (ASHA on Ray Tune) ``stopped`` records the epoch in ``stopped_at``;
- ``progress.json`` — epoch, batch, elapsed and remaining time (while running);
- ``history.json`` — per-epoch metrics, rewritten after every epoch;
- ``metrics.json`` — final metrics, per-class accuracy, confusion matrix,
  findings, representation drift per block (``representation_drift``), the
  original task's retention (``retention``, when measured) (at the end);
- ``weight_change.csv`` — the weight-change report;
- ``model.keras`` — the fine-tuned model, with tlviz metadata (preset, class names);
- ``tb/`` — TensorBoard event files (``tensorboard --logdir <runs dir>``).

A folder that is missing files it should have (a crash, a half-written copy)
reads as ``failed`` with the reason, never as an error.

Workspaces: the app gives every browser session a workspace token and lists,
opens and deletes only the runs whose ``owner`` is that token, so people
sharing one server never see each other's runs. Runs started without an
owner (the CLI, scripts) have ``owner`` None and are listed only when no
owner is asked for.

The package's modules: ``paths`` (where runs live, run ids), ``schema`` (states, columns),
``writer`` (`RunWriter`, `TensorBoardWriter`), ``records`` (`RunRecord`, `load_run`, `list_runs`,
`delete_run`), ``presentation`` (`RunProgress`, `RunOutcome`, `format_seconds`, `describe_where`).
Every public name is importable from ``tlviz.finetune.store``. JSON files are read and written
through `tlviz.jsonfiles`; whether a worker still runs is `tlviz.processes.pid_alive`.
"""

from tlviz.finetune.store.paths import ENV_RUNS_DIR, RUN_ID, check_run_id, new_run_id, run_path, runs_dir
from tlviz.finetune.store.presentation import RunOutcome, RunProgress, describe_where, format_seconds
from tlviz.finetune.store.records import RunRecord, delete_run, list_runs, load_run, runs_of_model_first
from tlviz.finetune.store.schema import ACTIVE_STATES, FINAL_STATES, HISTORY_COLUMNS, RUN_COLUMNS, STATES
from tlviz.finetune.store.writer import RunWriter, TensorBoardWriter

__all__ = [
    "ENV_RUNS_DIR", "RUN_ID", "check_run_id", "new_run_id", "run_path", "runs_dir", "RunOutcome", "RunProgress",
    "describe_where", "format_seconds", "RunRecord", "delete_run", "list_runs", "load_run", "runs_of_model_first", "ACTIVE_STATES",
    "FINAL_STATES", "HISTORY_COLUMNS", "RUN_COLUMNS", "STATES", "RunWriter", "TensorBoardWriter",
]
