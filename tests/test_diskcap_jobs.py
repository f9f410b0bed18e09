"""The disk cap with real jobs: real fine-tuning runs, one of them running and one kept, then a new job under a
tiny ``TLVIZ_RUNS_MAX_GB`` (tests/test_diskcap.py checks the rules on folders laid out by hand)."""

from __future__ import annotations

from dataclasses import replace

import pytest

from tlviz import diskcap, jobs
from tlviz.finetune import list_runs
from tlviz.finetune.config import RunConfig
from tlviz.jobs import queue as jobqueue
from tlviz.jobs.control import wait_until

QUICK = RunConfig(unfreeze=0, lr=1e-2, epochs=1, preset="tf")


@pytest.fixture(scope="module")
def images(loaded_base, digits_0_4):
    from tlviz.imagesets import open_source

    return open_source(digits_0_4).load(loaded_base.image_size, loaded_base.channels)


def test_a_new_job_under_a_tiny_cap_removes_the_old_run_and_spares_the_running_and_the_kept(
        loaded_base, images, runs, monkeypatch):
    monkeypatch.setenv(jobqueue.ENV_MAX_JOBS, "2")
    monkeypatch.delenv("TLVIZ_RUNS_MAX_GB", raising=False)
    old = jobs.start_job(loaded_base, images, [replace(QUICK, label="old")], root=runs, owner="a" * 24)
    kept = jobs.start_job(loaded_base, images, [replace(QUICK, label="kept")], root=runs, owner="a" * 24)
    for job in (old, kept):
        assert jobs.wait(job.job_id, runs, timeout=300).state == "done"
    diskcap.set_keep(kept.run_ids[0], True, root=runs, owner="a" * 24)
    long = jobs.start_job(loaded_base, images, [replace(QUICK, epochs=400, label="long")], root=runs,
                          owner="b" * 24)
    wait_until(lambda: jobs.poll(long.job_id, runs), lambda s: s.runs and s.runs[0].state == "running",
               timeout=180)
    used = diskcap.space_used(runs)
    assert used > 100_000  # two saved models, a running run, job folders, the activation cache

    monkeypatch.setenv("TLVIZ_RUNS_MAX_GB", str(1000 / 2**30))  # 1,000 bytes: nothing finished may stay
    new = jobs.start_analysis("normalize", loaded_base, images, {"variants": False}, root=runs, owner="c" * 24)
    try:
        left = set(list_runs(runs)["run_id"])
        assert old.run_ids[0] not in left, "the oldest finished run was not removed"
        assert kept.run_ids[0] in left and long.run_ids[0] in left
        assert jobs.poll(long.job_id, runs).runs[0].state == "running"  # the running run never noticed
        removed = diskcap.evicted_of_job(new, runs)
        assert any(r.kind == "run" and r.item_id == old.run_ids[0] for r in removed), removed
        assert not any(r.item_id in (kept.run_ids[0], long.run_ids[0]) for r in removed)
        assert [r.item_id for r in diskcap.evicted_for("a" * 24, runs) if r.kind == "run"] == [old.run_ids[0]]
        assert diskcap.evicted_for("c" * 24, runs) == []  # the person whose job made room lost nothing
        assert jobs.wait(new, runs, timeout=300).state == "done"  # and the new job ran
    finally:
        jobs.cancel(long.job_id, runs)
    assert jobs.wait(long.job_id, runs, timeout=120).state in ("cancelled", "done")
