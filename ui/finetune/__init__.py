"""The fine-tuning page's panels, one module per part of the page.

Widgets -> `tlviz.finetune` (runs happen in a worker process, polled by a fragment) -> `tlviz.charts`.
Widget keys start with ``ft_``.

- `ui.finetune.common` — the rates offered, polling and gallery sizes, state icons, session persistence;
- `ui.finetune.form` — the run set-up form, the controls to queue, the sweep's early stopping (ASHA);
- `ui.finetune.launch` — starting runs, a sweep or the range test; the offer to run locally when Ray is away;
- `ui.finetune.original` — the original task's image set, whose accuracy each run reports before and after;
- `ui.finetune.job` — the running job (progress, live curves, Cancel), the range test's result;
- `ui.finetune.run_view` — one run's results: metrics, curves, confusion, weight changes, drift, retention;
- `ui.finetune.controls` — a run's controls and the catastrophic-forgetting verdict (also for Diagnose);
- `ui.finetune.runs` — all runs: the table, overlaid curves, deleting, the sweep heatmap.
"""

from ui.finetune.common import RATES, SESSION, keep_valid
from ui.finetune.controls import judged_with_runs
from ui.finetune.form import asha_option, config_form, controls_choice
from ui.finetune.job import follow_job, lr_result_panel, runs_in_progress
from ui.finetune.launch import offer_local, on_ray, start, where_runs_go
from ui.finetune.original import original_task
from ui.finetune.run_view import remember_pick, run_labels, show_run
from ui.finetune.runs import compare_curves, delete_runs, evicted_note, runs_table, sweeps

__all__ = [
    "RATES", "SESSION", "keep_valid", "judged_with_runs", "asha_option", "config_form", "controls_choice",
    "follow_job", "lr_result_panel", "runs_in_progress", "offer_local", "on_ray", "start", "where_runs_go",
    "original_task", "remember_pick", "run_labels", "show_run", "compare_curves", "delete_runs", "evicted_note",
    "runs_table", "sweeps",
]
