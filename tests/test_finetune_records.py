"""Typed records between the fine-tuning engine and the page: progress, outcome, job status, stored findings."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from tlviz.findings import Finding
from tlviz.finetune import RunConfig, RunOutcome, RunProgress, RunRecord, format_seconds
from tlviz.jobs import JobStatus
from tlviz.jobs.queue import waiting_text


@pytest.mark.parametrize("seconds, text", [(None, "–"), (float("nan"), "–"), (0, "0 s"), (42.4, "42 s"),
                                           (60, "1:00"), (185, "3:05")])
def test_format_seconds(seconds, text):
    assert format_seconds(seconds) == text


@pytest.mark.parametrize("info, fraction, text", [
    ({}, 0.0, "epoch 0/? · batch 0/? · – elapsed · ~– left"),
    ({"stage": "train", "epoch": 2, "epochs": 5, "batch": 3, "batches": 10, "batches_done": 13,
      "total_batches": 50, "elapsed_s": 75.0, "eta_s": 200.0}, 0.26, "epoch 2/5 · batch 3/10 · 1:15 elapsed · ~3:20 left"),
    ({"stage": "caching", "message": "Caching base activations", "batches_done": 0, "total_batches": 10},
     0.0, "Caching base activations"),
    ({"stage": "saving"}, 0.0, "saving"),
    ({"stage": "train", "batches_done": 80, "total_batches": 50}, 1.0, None),
    ({"stage": "lrfind", "step": 25, "steps": 100}, 0.25, "Learning-rate range test: step 25 of about 100"),
    ({"stage": "lrfind"}, 0.0, "Learning-rate range test: starting the worker…"),
    (None, 0.0, None),
])
def test_run_progress_fraction_and_text(info, fraction, text):
    progress = RunProgress.from_dict(info)
    assert progress.fraction == pytest.approx(fraction)
    if text is not None:
        assert progress.text == text


def _record(run_id: str, state: str, best: float | None = None, **extra) -> RunRecord:
    history = pd.DataFrame({"epoch": [1], "val_accuracy": [best]}) if best is not None else pd.DataFrame(
        columns=["epoch", "val_accuracy"])
    return RunRecord(run_id=run_id, path=None, state=state, message="", history=history, **extra)


def test_job_status_text_for_a_queue_of_runs():
    queued = [_record("a", "queued"), _record("b", "queued")]
    assert JobStatus("j", "runs", "running", runs=queued, queue_position=3).text == waiting_text(3)
    assert waiting_text(3) == "Waiting for a free worker: 2 jobs ahead" and waiting_text(2).endswith("1 job ahead")
    assert JobStatus("j", "runs", "running", runs=queued).text == "Starting the worker…"
    first_done = [_record("a", "completed", 0.5), _record("b", "queued")]
    assert JobStatus("j", "runs", "running", runs=first_done).text == "1 of 2 runs done"
    assert JobStatus("j", "runs", "running", runs=first_done).fraction == 0.5
    running = [_record("a", "completed", 0.5), _record("b", "running")]
    status = JobStatus("j", "runs", "running", runs=running, current=running[1],
                       progress={"stage": "evaluating", "message": "Evaluating", "batches_done": 5,
                                 "total_batches": 10})
    assert status.text == "Run 2 of 2 · Evaluating" and status.fraction == 0.5
    lrfind = JobStatus("j", "lrfind", "running", progress={"step": 10, "steps": 50})
    assert lrfind.text.startswith("Learning-rate range test: step 10") and lrfind.fraction == 0.2


def test_job_status_picks_the_run_to_show_and_the_sweep():
    one = JobStatus("j", "runs", "done", runs=[_record("a", "completed", 0.1)])
    assert one.run_to_show == "a" and one.sweep_id is None
    sweep = [_record(r, "completed", acc, config={"sweep_id": "s1"}) for r, acc in (("a", 0.2), ("b", 0.9), ("c", None))]
    status = JobStatus("j", "runs", "done", runs=sweep)
    assert status.run_to_show == "b" and status.sweep_id == "s1"
    assert JobStatus("j", "runs", "failed").run_to_show is None


def test_job_status_reads_the_range_test_result():
    assert JobStatus("j", "lrfind", "running").lr_result is None
    result = JobStatus("j", "lrfind", "done", result={"suggestion": 1e-3, "message": "Suggested learning rate",
                                                      "curve": []}).lr_result
    assert result.suggestion == 1e-3 and "Suggested" in result.message


def test_run_record_accessors():
    config = RunConfig(unfreeze=2, lr=1e-3, epochs=3, label="try").to_dict()
    rec = _record("r", "running", config=config, status={"job_id": "job1"},
                  images={"image_key": "abc", "source": "digits.zip"}, progress={"stage": "saving"})
    assert rec.active and rec.job_id == "job1" and rec.label == "try"
    assert rec.image_key == "abc" and rec.images_source == "digits.zip"
    assert rec.run_config == RunConfig.from_dict(config)
    assert rec.describe() == RunConfig.from_dict(config).describe() + " · try"
    assert rec.progress_info.text == "saving" and rec.outcome.empty
    broken = _record("x", "failed", config={"lr": "fast"})
    assert broken.run_config is None and broken.describe() == "" and broken.images_source == "?"
    assert not broken.active and broken.job_id is None


def test_run_outcome_reads_metrics_json():
    finding = Finding("learning-ok", "info", "finetuning", "Learning", fix="Nothing to do.")
    metrics = {"final": {"val_accuracy": 0.8, "val_loss": 0.5}, "best_val_accuracy": 0.85, "elapsed_s": 12.0,
               "findings": [finding.to_dict(), {"id": "damaged"}], "notes": ["cache used"],
               "class_names": ["a", "b"], "per_class": [{"class": "a", "n": 2, "correct": 1, "accuracy": 0.5}],
               "confusion": [[1, 1], [0, 2]], "val_indices": [4, 7, 9, 11], "val_true": [0, 0, 1, 1],
               "val_pred": [0, 1, 1, 1], "frozen_layers_changed": []}
    out = RunOutcome.from_metrics(metrics)
    assert not out.empty and out.val_accuracy == 0.8 and out.val_loss == 0.5 and out.best_val_accuracy == 0.85
    assert out.train_accuracy is None and out.elapsed_s == 12.0
    assert out.findings == [finding]  # the damaged entry is left out
    assert out.notes == ["cache used"] and out.class_names == ["a", "b"] and len(out.per_class) == 1
    assert out.confusion.shape == (2, 2)
    assert list(out.cell(0, 1)) == [7] and list(out.cell(1, 1)) == [9, 11] and len(out.cell(1, 0)) == 0
    empty = RunOutcome.from_metrics({})
    assert empty.empty and empty.val_accuracy is None and empty.confusion is None and empty.per_class.empty and len(empty.cell(0, 0)) == 0


@pytest.mark.parametrize("data", [{}, {"id": "x", "severity": "fatal", "area": "finetuning", "title": "t"},
                                  {"id": "x", "severity": "info", "area": "elsewhere", "title": "t"}, None])
def test_stored_finding_that_is_not_one_is_refused(data):
    with pytest.raises(ValueError):
        Finding.from_dict(data)


def test_stored_finding_round_trips():
    f = Finding("x", "warning", "inference", "Title", evidence={"n": np.int64(3).item()}, fix="Do this.")
    assert Finding.from_dict({**f.to_dict(), "extra": 1}) == f


# -- executors: local by default, Ray only when configured ----------------------------------------------

_DEFAULT_PATH = r"""
import os, sys
os.environ.pop("TLVIZ_RAY_ADDRESS", None)
import tlviz.finetune, tlviz.jobs.worker, tlviz.jobs.ray_executor, tlviz.jobs.ray_tasks, tlviz.cli
import ui.finetune, ui.sidebar
from tlviz.finetune import RunConfig
from tlviz.jobs import executors, start_job, wait
from tlviz.imagesets import load_image_set
from tlviz.models import load_model
from tlviz.samples import sample_path

assert executors.default_executor() == "local" and executors.describe_executor().startswith("this machine")
loaded = load_model(sample_path("digits_base.keras"))
images = load_image_set(sample_path("digits_5_9"), loaded.image_size, loaded.channels)
st = wait(start_job(loaded, images, [RunConfig(unfreeze=0, lr=1e-2, epochs=1, preset="tf")]).job_id, timeout=180)
assert st.state == "done" and st.executor == "local", st.message
rec = st.runs[0]
assert rec.state == "completed" and rec.where["executor"] == "local" and rec.where["device"] in ("CPU", "GPU")
assert rec.ran_on.startswith("local · ")
assert "ray" not in sys.modules, "the default path imported ray"
print("default path ok")
"""


def test_default_path_runs_locally_and_never_imports_ray(tmp_path):
    import os
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parent.parent
    env = {k: v for k, v in os.environ.items() if k != "TLVIZ_RAY_ADDRESS"}
    env.update(TLVIZ_RUNS_DIR=str(tmp_path / "runs"), PYTHONPATH=str(root), TF_CPP_MIN_LOG_LEVEL="2")
    done = subprocess.run([sys.executable, "-c", _DEFAULT_PATH], capture_output=True, text=True, cwd=root, env=env,
                          timeout=300)
    assert done.returncode == 0 and "default path ok" in done.stdout, done.stderr[-3000:]


@pytest.mark.parametrize("text, parsed", [
    ("auto", ("auto", None, None)), ("AUTO", ("auto", None, None)),
    ("head:6379", ("gcs", "head", 6379)), ("10.0.0.2", ("gcs", "10.0.0.2", 6379)),
    ("ray://head:10001", ("client", "head", 10001)), ("ray://head", ("client", "head", 10001)),
])
def test_ray_addresses_are_parsed(text, parsed):
    from tlviz.jobs.executors import parse_address

    assert parse_address(text) == parsed


@pytest.mark.parametrize("text", ["http://head:8265", "head:port", "ray://", "head:99999", "a b:1"])
def test_a_nonsense_ray_address_is_refused_with_the_forms_that_work(text, monkeypatch):
    from tlviz.errors import ConfigError, RunRefused
    from tlviz.jobs import executors

    with pytest.raises(ConfigError, match="TLVIZ_RAY_ADDRESS.*`auto`.*ray://host:10001"):
        executors.parse_address(text)
    monkeypatch.setenv("TLVIZ_RAY_ADDRESS", text)
    with pytest.raises(RunRefused, match="is not a Ray address"):
        executors.choose_executor(None)
    assert "is not a Ray address" in executors.describe_executor()


def test_executor_choice(monkeypatch):
    from tlviz.errors import RunRefused
    from tlviz.jobs import executors

    monkeypatch.delenv("TLVIZ_RAY_ADDRESS", raising=False)
    assert executors.choose_executor(None) == "local" and executors.choose_executor("local") == "local"
    with pytest.raises(RunRefused, match="needs TLVIZ_RAY_ADDRESS"):
        executors.choose_executor("ray")
    with pytest.raises(RunRefused, match="Unknown executor"):
        executors.choose_executor("dask")
    monkeypatch.setenv("TLVIZ_RAY_ADDRESS", "auto")
    assert executors.choose_executor(None) == "ray" and executors.choose_executor("local") == "local"
    assert executors.describe_executor() == "Ray cluster `auto`"


def test_asha_without_ray_is_refused(monkeypatch, loaded_base, base_images):
    from tlviz.errors import RunRefused
    from tlviz.jobs import start_job

    monkeypatch.delenv("TLVIZ_RAY_ADDRESS", raising=False)
    with pytest.raises(RunRefused, match="ASHA.*Ray Tune.*TLVIZ_RAY_ADDRESS"):
        start_job(loaded_base, base_images, [RunConfig(epochs=1), RunConfig(epochs=1, lr=1e-2)], asha=True)


def test_where_a_run_ran_in_one_line():
    from tlviz.finetune.store import describe_where

    assert describe_where({}) == "" and describe_where(None) == ""
    assert describe_where({"executor": "local", "node": "box", "device": "CPU"}) == "local · box · CPU"
    assert describe_where({"executor": "ray", "node": "10.0.0.2", "device": "GPU",
                           "device_name": "NVIDIA A100"}) == "Ray · 10.0.0.2 · GPU (NVIDIA A100)"


def test_a_stopped_run_reads_its_stop_epoch(tmp_path):
    from tlviz.finetune.store import RunWriter, list_runs, load_run

    w = RunWriter(tmp_path / "20240101-000000-000aaaa")
    w.write_config(RunConfig(epochs=4, sweep_id="s"))
    w.epoch([{"epoch": 1, "phase": "main", "loss": 1.6, "accuracy": 0.2, "val_loss": 1.6, "val_accuracy": 0.2,
              "lr": 1e-7, "elapsed_s": 1.0, "partial": False}])
    w.status("stopped", "stopped early by ASHA after epoch 1", stopped_at=1,
             where={"executor": "ray", "node": "10.0.0.2", "device": "CPU"})
    rec = load_run(w.run_id, tmp_path)
    assert rec.state == "stopped" and rec.stopped_at == 1 and not rec.active  # no metrics needed
    row = list_runs(tmp_path).iloc[0]
    assert row["stopped_at"] == 1 and row["ran_on"] == "Ray · 10.0.0.2 · CPU"


def test_job_status_counts_runs_running_at_once():
    from tlviz.jobs import JobStatus

    runs = [_record("a", "running", None), _record("b", "running", None), _record("c", "completed", 0.5),
            _record("d", "queued", None)]
    for r in runs[:2]:
        r.progress = {"stage": "main", "batches_done": 5, "total_batches": 10}
    st = JobStatus("j", "runs", "running", runs=runs, current=runs[0], progress=runs[0].progress, executor="ray")
    assert st.fraction == pytest.approx((1 + 0.5 + 0.5) / 4)
    assert st.text.startswith("2 runs at once on the Ray cluster · 1 of 4 done")
    waiting = JobStatus("j", "runs", "running", "connecting to the Ray cluster at auto", runs=runs[3:],
                        executor="ray")
    assert waiting.text == "Connecting to the Ray cluster at auto…"
