"""Sweeps: a grid of unfreeze depths × learning rates.

On this machine a sweep runs as a queue in one worker process; on a Ray
cluster (``TLVIZ_RAY_ADDRESS``) it runs through Ray Tune, optionally with the
ASHA scheduler stopping poor configurations early (`tlviz.jobs.ray_executor`):
those runs end in state ``stopped`` and the table says after which epoch.
"""

from __future__ import annotations

import math

import pandas as pd

from tlviz.errors import RunRefused
from tlviz.finetune.config import RunConfig
from tlviz.finetune.store import new_run_id

SWEEP_COLUMNS = ["unfreeze", "lr", "state", "best_val_accuracy", "run_id", "stopped_at"]
#: Most runs one sweep may queue.
MAX_SWEEP_RUNS = 36


def sweep_configs(base: RunConfig, depths: list[int], lrs: list[float], sweep_id: str | None = None) -> list[RunConfig]:
    """One config per (depth, rate), depth-major so a depth's cached activations serve all its rates.

    Args:
        base: every other setting.
        depths: unfreeze depths (duplicates dropped).
        lrs: learning rates (duplicates dropped).
        sweep_id: tags the runs. Defaults to a new id.

    Returns:
        The configs, in run order.

    Raises:
        RunRefused: empty or too large a grid.
    """
    depths = sorted({int(d) for d in depths})
    lrs = sorted({float(r) for r in lrs})
    if not depths or not lrs:
        raise RunRefused("Pick at least one unfreeze depth and one learning rate for the sweep.")
    if len(depths) * len(lrs) > MAX_SWEEP_RUNS:
        raise RunRefused(f"{len(depths)} depths × {len(lrs)} rates = {len(depths) * len(lrs)} runs; a sweep runs at "
                         f"most {MAX_SWEEP_RUNS}. Pick fewer values.")
    sweep_id = sweep_id or "sweep-" + new_run_id()
    out = []
    for d in depths:
        for lr in lrs:
            cfg = RunConfig(**{**base.to_dict(), "unfreeze": d, "lr": lr, "sweep_id": sweep_id,
                               "label": base.label or f"sweep d={d} lr={lr:.0e}"})
            out.append(cfg)
    return out


def sweep_table(runs: pd.DataFrame, sweep_id: str) -> pd.DataFrame:
    """The sweep's grid so far: one row per run (`SWEEP_COLUMNS`), for the heatmap.

    Args:
        runs: `tlviz.finetune.store.list_runs()`.
        sweep_id: the sweep.

    Returns:
        The rows, by depth and rate; ``stopped_at`` is the epoch after which an
        early-stopping scheduler stopped the run (None for the others).
    """
    sel = runs[runs["sweep_id"] == sweep_id]
    if "stopped_at" not in sel.columns:
        sel = sel.assign(stopped_at=None)
    out = sel[SWEEP_COLUMNS].copy()
    out["unfreeze"] = out["unfreeze"].astype(int)
    out["lr"] = out["lr"].astype(float)
    return out.sort_values(["unfreeze", "lr"]).reset_index(drop=True)


def log_spaced_rates(lo: float, hi: float, n: int) -> list[float]:
    """`n` rates evenly spaced on a log scale from `lo` to `hi` (rounded to 2 significant digits)."""
    if n < 1 or lo <= 0 or hi <= 0:
        raise RunRefused("Give a positive rate range and at least one rate.")
    if n == 1:
        return [lo]
    a, b = math.log10(lo), math.log10(hi)
    return [float(f"{10 ** (a + (b - a) * i / (n - 1)):.2g}") for i in range(n)]


def run_sweep(loaded, images, base: RunConfig, depths: list[int], lrs: list[float], *, root=None, cache=None,
              progress=None, should_cancel=None):
    """Run a sweep in this process (for scripts and benchmarks; the app uses a worker).

    Returns:
        ``[(config, RunResult), ...]`` in run order. Runs are stored under
        `root` when given.
    """
    from tlviz.contentkeys import pixels_key
    from tlviz.finetune.cache import ActivationCache
    from tlviz.finetune.run import run_finetune
    from tlviz.finetune.store import RunWriter, runs_dir

    cache = cache if cache is not None else ActivationCache()
    key = pixels_key(images.images)
    out = []
    for cfg in sweep_configs(base, depths, lrs):
        if should_cancel is not None and should_cancel():
            break
        writer = None
        if root is not None:
            writer = RunWriter(runs_dir(root) / new_run_id())
            writer.write_config(cfg, {"filename": loaded.filename, "sha256": loaded.sha256}, {"source": images.source})
            writer.status("running")
        res = run_finetune(loaded, images, cfg, writer=writer, cache=cache, image_key=key, progress=progress,
                           should_cancel=should_cancel)
        if writer is not None:
            writer.status(res.state, res.findings[0].title if res.findings else "")
        out.append((cfg, res))
    return out
