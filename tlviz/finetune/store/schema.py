"""What a run folder's files hold: the states ``status.json`` names, the history's columns, the list's columns.

Public API: `STATES`, `FINAL_STATES`, `ACTIVE_STATES`, `HISTORY_COLUMNS`, `RUN_COLUMNS`.
"""

from __future__ import annotations

#: Every state a run can be in.
STATES = ("queued", "running", "completed", "cancelled", "diverged", "stopped", "failed", "refused")
#: States a run ends in.
FINAL_STATES = ("completed", "cancelled", "diverged", "stopped", "failed", "refused")
#: States of a run that has not ended.
ACTIVE_STATES = ("queued", "running")
#: One row per epoch in ``history.json``.
HISTORY_COLUMNS = ["epoch", "phase", "loss", "accuracy", "val_loss", "val_accuracy", "lr", "elapsed_s", "partial"]
#: One row per run in `tlviz.finetune.store.list_runs`.
RUN_COLUMNS = [
    "run_id", "created", "state", "message", "label", "unfreeze", "lr", "epochs", "batch_size", "optimizer",
    "preset", "new_head", "two_phase", "bn", "augment", "head_dropout", "weight_decay", "sweep_id",
    "best_val_accuracy", "final_val_accuracy", "final_val_loss", "time_s", "model", "model_sha256", "images", "cache_used",
    "owner", "ran_on", "stopped_at", "control", "control_of",
]
