"""Fine-tuning runs: short what-if experiments on a clone of the loaded model.

Public API (TensorFlow is imported only when a run starts):

- `RunConfig`, `RunRefused`, `default_preset` — what a run does (``config``).
- `run_finetune(loaded, images, config, ...) -> RunResult` — one run, in this
  process (``run``); `linear_probe` — a fresh head on the frozen base;
  `stratified_split` (``split``). A run's rooms, in the order it uses them:
  ``preflight`` (what refuses a run before it trains: `check_run`, `check_train_memory`),
  ``split`` (the stratified split and its duplicate groups), ``build`` (the clone and its head),
  ``phases`` (the phase plan, trainable flags, the cut into cached activations), ``training``
  (each phase's ``fit``, with ``data``: the tf.data pipeline, ``callbacks``: `RunTracker`, and
  ``state``: `RunState`), ``probes`` (drift and retention around the training), ``evaluate``
  (predictions, validation scores, the saved model) and ``summary`` (weight change, the curves in words).
- Runs in a worker process, as the app starts them, are jobs of the one job system: `tlviz.jobs`
  (`start_job`, `start_lr_finder`, then `poll` / `cancel` / `wait` as for every job); with
  ``TLVIZ_RAY_ADDRESS`` set, on that Ray cluster (`tlviz.jobs.executors`, `tlviz.jobs.ray_executor`;
  sweeps through Ray Tune, optionally with ASHA). `describe_where` says where a run ran.
  `JobStatus` has accessors for a progress bar (``fraction``, ``text``) and the
  range test's `LRFinderResult` (``lr_result``).
- `list_runs`, `load_run`, `delete_run`, `runs_dir` — the runs on disk (``store``);
  `load_run` returns a `RunRecord`: its config (``run_config``), progress
  (``progress_info``, a `RunProgress`) and results (``outcome``, a `RunOutcome`).
- `lr_range_test` (``lrfinder``), `sweep_configs` / `sweep_table` (``sweep``).
- What every run measures besides its curves: its representation drift (``drift``:
  linear CKA per block of the base, `tlviz.cka`), the original task's retention when
  that image set is given (``retention``), a split that keeps duplicates on one side
  (`split_groups`, ``split``). Controls (``controls``): `control_config` makes a run's
  random-init or head-only control, `compare` scores a run against one with the paired
  interval, `controls_of` finds them; ``tlviz.diagnose.forgetting`` judges them.
  `original_labels` checks an original-task image set against the model.
- For a page that sets a run up: `decide_head` (new head or not), `depth_choices`
  (unfreeze depths at block boundaries), `OPTIMIZERS` / `OPTIMIZER_LABELS`, `largest_movers`.
- Its charts are in `tlviz.charts` (``finetune``).
"""

from tlviz.errors import RunRefused
from tlviz.finetune.build import decide_head, depth_choices
from tlviz.finetune.config import (CONTROL_LABELS, CONTROLS, OPTIMIZER_LABELS, OPTIMIZERS, RunConfig, control_config,
                                   default_preset)
from tlviz.finetune.controls import ControlComparison, compare, controls_of
from tlviz.finetune.lrfinder import LRFinderResult, lr_range_test
from tlviz.finetune.retention import original_labels
from tlviz.finetune.run import RunResult, linear_probe, run_finetune
from tlviz.finetune.split import split_groups, stratified_split
from tlviz.finetune.store import (ACTIVE_STATES, RunOutcome, RunProgress, RunRecord, delete_run, format_seconds,
                                  describe_where, list_runs, load_run, runs_dir,
                                  runs_of_model_first)
from tlviz.finetune.summary import largest_movers
from tlviz.finetune.sweep import sweep_configs, sweep_table


__all__ = [
    "RunConfig", "RunRefused", "default_preset", "LRFinderResult", "lr_range_test", "RunResult", "linear_probe",
    "run_finetune", "stratified_split", "delete_run", "list_runs", "load_run", "runs_of_model_first", "runs_dir", "sweep_configs",
    "sweep_table",
    "ACTIVE_STATES", "RunRecord", "RunProgress", "RunOutcome", "format_seconds", "decide_head", "depth_choices",
    "OPTIMIZERS", "OPTIMIZER_LABELS", "largest_movers",
    "describe_where", "CONTROLS", "CONTROL_LABELS", "original_labels", "control_config", "ControlComparison", "compare", "controls_of",
    "split_groups",
]
