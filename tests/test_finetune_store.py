"""Runs on disk, the worker process, and the ``finetune`` command."""

from __future__ import annotations

import json
import time
import warnings

import numpy as np
import pytest

from tlviz.errors import TlvizError
from tlviz.finetune.config import RunConfig
from tlviz.finetune.store import RunWriter, delete_run, list_runs, load_run, runs_dir

warnings.filterwarnings("ignore", module="keras")


@pytest.fixture()
def root(tmp_path, monkeypatch):
    d = tmp_path / "runs"
    monkeypatch.setenv("TLVIZ_RUNS_DIR", str(d))
    return d


@pytest.fixture(scope="module")
def images_5_9(loaded_base, digits_5_9):
    from tlviz.imagesets import load_image_set

    return load_image_set(digits_5_9, loaded_base.image_size, loaded_base.channels)


def test_runs_dir_follows_env(root):
    assert runs_dir() == root and root.is_dir()


def test_damaged_folders_read_as_failed_not_errors(root):
    (root / "20240101-000000-000aaaa").mkdir(parents=True)  # empty: no config
    w = RunWriter(root / "20240101-000001-000bbbb")
    w.write_config(RunConfig(epochs=1))
    (w.dir / "status.json").write_text("{not json")
    w2 = RunWriter(root / "20240101-000002-000cccc")
    w2.write_config(RunConfig(epochs=1))
    w2.status("running", pid=2 ** 22 + 12345)  # no such process
    w2.epoch([{"epoch": 1, "phase": "main", "loss": 1.0, "accuracy": 0.5, "val_loss": 1.1, "val_accuracy": 0.4,
               "lr": 1e-3, "elapsed_s": 1.0, "partial": False}])
    w3 = RunWriter(root / "20240101-000003-000dddd")
    w3.write_config(RunConfig(epochs=1))
    w3.status("completed")  # but no metrics.json
    (root / ".jobs").mkdir()
    runs = list_runs().set_index("run_id")
    assert len(runs) == 4 and set(runs["state"]) == {"failed"}
    assert "config.json" in runs.loc["20240101-000000-000aaaa", "message"]
    assert "status.json" in runs.loc["20240101-000001-000bbbb", "message"]
    assert "worker process stopped" in runs.loc["20240101-000002-000cccc", "message"]
    assert runs.loc["20240101-000002-000cccc", "best_val_accuracy"] == pytest.approx(0.4)  # what was recorded is kept
    assert "metrics.json" in runs.loc["20240101-000003-000dddd", "message"]
    assert load_run("20240101-000002-000cccc").history["val_accuracy"].tolist() == [0.4]


def test_delete_run_and_bad_ids(root):
    w = RunWriter(root / "20240101-000000-000eeee")
    w.write_config(RunConfig(epochs=1))
    w.status("running", pid=__import__("os").getpid())  # alive: refuses without force
    with pytest.raises(TlvizError, match="Cancel it first"):
        delete_run(w.run_id)
    w.status("cancelled")
    delete_run(w.run_id)
    assert not w.dir.exists()
    for bad in ("../etc", ".jobs", "a/b", ""):
        with pytest.raises(TlvizError):
            delete_run(bad)
    with pytest.raises(TlvizError, match="No run"):
        load_run("20990101-000000-000ffff")


def test_stored_run_has_every_file(loaded_base, images_5_9, root):
    from tlviz.finetune.run import run_finetune

    w = RunWriter(runs_dir() / "20240101-000000-0001111")
    cfg = RunConfig(unfreeze=0, lr=1e-2, epochs=2, preset="tf")
    w.write_config(cfg, {"filename": loaded_base.filename}, {"source": images_5_9.source})
    w.status("running")
    res = run_finetune(loaded_base, images_5_9, cfg, writer=w)
    w.status(res.state)
    names = {p.name for p in w.dir.iterdir()}
    assert {"config.json", "status.json", "progress.json", "history.json", "metrics.json", "weight_change.csv",
            "model.keras", "tb"} <= names
    assert list((w.dir / "tb" / "train").glob("events.out.tfevents.*"))
    assert list((w.dir / "tb" / "validation").glob("events.out.tfevents.*"))
    rec = load_run(w.run_id)
    assert rec.state == "completed" and len(rec.history) == 2
    assert rec.metrics["final"]["val_accuracy"] == pytest.approx(res.final["val_accuracy"])
    assert rec.metrics["confusion"] == res.confusion.tolist()
    assert len(rec.weight_change) == len(res.weight_change)
    row = list_runs().iloc[0]
    assert row["state"] == "completed" and row["cache_used"] and row["preset"] == "tf"


def test_worker_process_runs_a_job_and_reports_progress(loaded_base, images_5_9, root):
    from tlviz.jobs import poll, start_job, wait

    job = start_job(loaded_base, images_5_9, [RunConfig(unfreeze=0, lr=1e-2, epochs=3, preset="tf")])
    first = poll(job.job_id)
    assert first.active and first.runs[0].state in ("queued", "running")
    st = wait(job.job_id, timeout=180)
    assert st.state == "done", st.message
    rec = st.runs[0]
    assert rec.state == "completed" and len(rec.history) == 3
    assert rec.progress["epoch"] == 3 and rec.progress["epochs"] == 3
    assert rec.model_path is not None and rec.metrics["cache_used"]
    # The job's inputs were saved once, for later jobs on the same model and images.
    assert len(list((root / ".inputs").glob("*.keras"))) == 1


def test_worker_cancel_stops_after_current_batch_and_skips_queued_runs(loaded_base, images_5_9, root):
    from tlviz.jobs import cancel, poll, start_job, wait

    long = RunConfig(unfreeze=6, lr=1e-3, epochs=300, preset="tf")
    job = start_job(loaded_base, images_5_9, [long, long])
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        st = poll(job.job_id)
        if st.current is not None and len(st.current.history) >= 1:
            break
        time.sleep(0.3)
    else:
        pytest.fail("the worker never started training")
    cancel(job.job_id)
    st = wait(job.job_id, timeout=60)
    assert st.state == "cancelled"
    first, second = st.runs
    assert first.state == "cancelled" and 1 <= len(first.history) < 300
    assert first.model_path is not None  # what was trained is kept
    assert second.state == "cancelled" and "before it started" in second.message


def test_worker_records_refusal(root):
    from tlviz.jobs import start_job, wait
    from tlviz.imagesets import load_image_set
    from tlviz.models import load_model
    from tlviz.samples import sample_path

    frozen = load_model(sample_path("digits_frozen.keras"))
    imgs = load_image_set(sample_path("digits_5_9"), frozen.image_size, frozen.channels)
    job = start_job(frozen, imgs, [RunConfig(epochs=1, preset="tf")])
    st = wait(job.job_id, timeout=120)
    assert st.runs[0].state == "refused" and "No trainable weights" in st.runs[0].message


# -- the command line -----------------------------------------------------------------

def test_cli_json_matches_the_issue(base_model_path, digits_5_9, tmp_path, capsys):
    from tlviz.cli import main

    rc = main(["finetune", str(base_model_path), str(digits_5_9), "--unfreeze", "0", "--lr", "1e-2", "--epochs", "2",
               "--batch-size", "64", "--preset", "tf", "--out", str(tmp_path), "--json"])
    out = capsys.readouterr().out
    assert rc == 0
    data = json.loads(out)
    assert set(data) == {"run_id", "state", "config", "new_head", "cache_used", "executor", "history",
                         "trainable_params", "final", "frozen_layers_changed", "weight_change", "model_path",
                         "representation_drift", "notes", "findings"}  # "control", "retention" only when asked for
    assert data["representation_drift"] == [{"block": b, "cka": 1.0} for b in ("block1", "block2", "block3")]
    assert [set(h) for h in data["history"]] == [{"epoch", "loss", "accuracy", "val_loss", "val_accuracy"}] * 2
    assert set(data["final"]) == {"val_accuracy", "val_loss"}
    assert data["trainable_params"] == 325 and data["frozen_layers_changed"] == []
    assert data["model_path"].startswith(str(tmp_path)) and data["model_path"].endswith("model.keras")
    cfg = json.loads((tmp_path / data["model_path"].split("/")[-2] / "config.json").read_text())["config"]
    assert cfg["batch_size"] == 64 and cfg["preset"] == "tf"


def test_cli_refuses_frozen_model_with_exit_2(frozen_model_path, digits_5_9, tmp_path, capsys):
    from tlviz.cli import main

    rc = main(["finetune", str(frozen_model_path), str(digits_5_9), "--unfreeze", "0", "--lr", "1e-3", "--epochs", "1",
               "--out", str(tmp_path), "--json"])
    captured = capsys.readouterr()
    assert rc == 2 and captured.out == ""
    assert "\nerror: No trainable weights" in "\n" + captured.err  # after any progress lines
    assert not [p for p in tmp_path.iterdir() if not p.name.startswith(".")]  # no run folder for a refusal


def test_cli_rejects_bad_values(base_model_path, digits_5_9, tmp_path, capsys):
    from tlviz.cli import main

    rc = main(["finetune", str(base_model_path), str(digits_5_9), "--unfreeze", "0", "--lr", "-1", "--epochs", "1",
               "--out", str(tmp_path)])
    assert rc == 2 and "learning rate" in capsys.readouterr().err


def test_cli_text_output(base_model_path, digits_5_9, tmp_path, capsys):
    from tlviz.cli import main

    rc = main(["finetune", str(base_model_path), str(digits_5_9), "--unfreeze", "6", "--lr", "1", "--epochs", "2",
               "--out", str(tmp_path)])
    out = capsys.readouterr().out
    assert rc == 1 and "DIVERGED" in out and "learning rate is too high" in out  # an error-level finding: exit 1


def test_images_npz_roundtrip_in_worker_inputs(loaded_base, images_5_9, root):
    from tlviz.jobs.inputs import load_inputs, prepare_inputs

    inputs = prepare_inputs(loaded_base, images_5_9)
    again = prepare_inputs(loaded_base, images_5_9)
    assert inputs == again
    job = {**inputs, "model": {"filename": "digits_base.keras", "metadata": loaded_base.metadata},
           "images": {"source": images_5_9.source}}
    loaded, imgs = load_inputs(job)
    np.testing.assert_array_equal(imgs.images, images_5_9.images)
    assert imgs.class_names == images_5_9.class_names and loaded.class_names == ["0", "1", "2", "3", "4"]
    # What the checks read besides the pixels survives too (e.g. input-resized needs the original sizes).
    assert imgs.original_sizes == [tuple(x) for x in images_5_9.original_sizes] and imgs.original_sizes
    assert imgs.original_modes == images_5_9.original_modes and imgs.skipped == images_5_9.skipped
    assert imgs.files == images_5_9.files and imgs.label_order_from_file == images_5_9.label_order_from_file
    for a, b in zip(loaded.model.get_weights(), loaded_base.model.get_weights()):
        np.testing.assert_array_equal(a, b)


def test_tidy_removes_old_inputs_and_jobs_but_never_runs(root):
    import os

    from tlviz.jobs import tidy

    old = 1_000_000_000  # 2001
    (root / ".inputs").mkdir(parents=True)
    (root / ".inputs" / "old.keras").write_bytes(b"x")
    (root / ".inputs" / "new.keras").write_bytes(b"y")
    os.utime(root / ".inputs" / "old.keras", (old, old))
    job = root / ".jobs" / "20010101-000000-000abcd"
    job.mkdir(parents=True)
    (job / "status.json").write_text('{"state": "done"}')
    os.utime(job, (old, old))
    w = RunWriter(root / "20010101-000000-000dcba")
    w.write_config(RunConfig(epochs=1))
    w.status("completed")
    os.utime(w.dir, (old, old))
    # The queue's own folders are never removed (a held slot's lock file must outlive every job);
    # results not read for a week are.
    slots = root / ".jobs" / ".slots"
    slots.mkdir()
    (slots / "slot-0.lock").write_text("")
    os.utime(slots, (old, old))
    (root / ".results").mkdir()
    (root / ".results" / "normalize-abc.pkl").write_bytes(b"z")
    os.utime(root / ".results" / "normalize-abc.pkl", (old, old))
    assert tidy() == 3
    assert not (root / ".inputs" / "old.keras").exists() and (root / ".inputs" / "new.keras").exists()
    assert not job.exists() and w.dir.exists()
    assert (slots / "slot-0.lock").exists() and not (root / ".results" / "normalize-abc.pkl").exists()
