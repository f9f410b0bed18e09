"""Fine-tuning on a Ray cluster: a real local Ray instance started by the tests, real runs on the digits sample.

The same jobs run on this machine (executor ``local``) and through Ray (a task, or Ray Tune for a sweep);
the stored results must be the same (same seeds, same history within float tolerance). Cancel, a lost
worker, an unreachable address and the range test are covered too. Needs ``pip install -r requirements-ray.txt``.
"""

from __future__ import annotations

import json
import os
import socket
import time
import warnings

import numpy as np
import pandas as pd
import pytest

ray = pytest.importorskip("ray", reason="the Ray executor needs `pip install -r requirements-ray.txt`")

from tlviz.errors import ClusterUnreachable  # noqa: E402
from tlviz.finetune.config import RunConfig  # noqa: E402

warnings.filterwarnings("ignore", module="keras")

#: Same seeds, different thread counts and processes: float rounding only.
TOL = dict(rtol=2e-3, atol=2e-3)
#: Files every finished run folder holds (TensorBoard's file names carry the host and process id).
RUN_FILES = {"config.json", "status.json", "progress.json", "history.json", "metrics.json", "weight_change.csv",
             "model.keras"}


@pytest.fixture(scope="module")
def ray_cluster():
    """A real Ray cluster on this machine: a head node and a worker node, 1 CPU each; shut down afterwards.

    Two nodes (``ray.cluster_utils.Cluster``: a raylet each) so that a test can take one away mid-run.
    """
    from ray.cluster_utils import Cluster

    cl = Cluster(initialize_head=True, connect=True, head_node_args={
        "num_cpus": 1, "include_dashboard": False,
        "_system_config": {"health_check_period_ms": 500, "health_check_failure_threshold": 3}})
    cl.add_node(num_cpus=1)
    cl.wait_for_nodes()
    yield cl
    ray.shutdown()
    cl.shutdown()


@pytest.fixture(scope="module")
def cluster(ray_cluster):
    """The test cluster's address (what ``TLVIZ_RAY_ADDRESS`` names)."""
    return ray_cluster.address


@pytest.fixture()
def on_ray(cluster, tmp_path, monkeypatch):
    """``TLVIZ_RAY_ADDRESS`` pointing at the test cluster, and a fresh runs folder."""
    monkeypatch.setenv("TLVIZ_RAY_ADDRESS", cluster)
    monkeypatch.setenv("TLVIZ_RUNS_DIR", str(tmp_path / "runs"))
    return tmp_path / "runs"


@pytest.fixture(scope="module")
def images(loaded_base, digits_5_9):
    from tlviz.imagesets import load_image_set

    return load_image_set(digits_5_9, loaded_base.image_size, loaded_base.channels)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait_all(job_ids, timeout=240, on_poll=None):
    from tlviz.jobs import poll

    deadline = time.monotonic() + timeout
    out = {}
    while len(out) < len(job_ids):
        assert time.monotonic() < deadline, f"jobs did not finish: {[poll(j).text for j in job_ids]}"
        for j in job_ids:
            if j not in out:
                st = poll(j)
                if on_poll is not None:
                    on_poll(j, st)
                if not st.active:
                    out[j] = st
        time.sleep(0.1)
    return [out[j] for j in job_ids]


def _assert_same_history(ray_hist: pd.DataFrame, local_hist: pd.DataFrame, prefix: bool = False):
    if prefix:
        local_hist = local_hist.iloc[:len(ray_hist)]
    assert len(ray_hist) == len(local_hist) > 0
    assert list(ray_hist["epoch"]) == list(local_hist["epoch"])
    for col in ("loss", "accuracy", "val_loss", "val_accuracy"):
        np.testing.assert_allclose(ray_hist[col].astype(float), local_hist[col].astype(float), **TOL, err_msg=col)


def test_a_run_on_ray_streams_progress_and_stores_what_a_local_run_stores(on_ray, loaded_base, images):
    from tlviz.jobs import start_job
    from tlviz.models import load_model

    cfg = RunConfig(unfreeze=6, lr=3e-3, epochs=6, preset="tf")  # the whole base trains: no cached activations
    local = start_job(loaded_base, images, [cfg], executor="local")
    remote = start_job(loaded_base, images, [cfg])  # TLVIZ_RAY_ADDRESS set: Ray
    seen = []

    def watch(job_id, st):
        if job_id == remote.job_id and st.current is not None:
            seen.append(len(st.current.history))

    st_local, st_ray = _wait_all([local.job_id, remote.job_id], on_poll=watch)
    assert st_local.state == st_ray.state == "done", (st_local.message, st_ray.message)
    assert st_ray.executor == "ray" and st_local.executor == "local"
    assert any(0 < n < 6 for n in seen), f"no per-epoch progress came back while the run ran: {seen}"
    a, b = st_local.runs[0], st_ray.runs[0]
    assert a.state == b.state == "completed"
    files = lambda rec: {p.name for p in rec.path.iterdir()}  # noqa: E731
    assert RUN_FILES <= files(a) and RUN_FILES <= files(b)
    for rec in (a, b):  # TensorBoard events, for both splits
        assert list((rec.path / "tb" / "train").glob("events.out.tfevents.*"))
        assert list((rec.path / "tb" / "validation").glob("events.out.tfevents.*"))
    _assert_same_history(b.history, a.history)
    assert b.metrics["val_indices"] == a.metrics["val_indices"]
    assert b.outcome.val_accuracy == pytest.approx(a.outcome.val_accuracy, abs=0.02)
    assert b.progress["epoch"] == 6 and b.progress["epochs"] == 6
    pd.testing.assert_frame_equal(b.weight_change[["path", "trainable"]], a.weight_change[["path", "trainable"]])
    np.testing.assert_allclose(b.weight_change["rel_change"], a.weight_change["rel_change"], rtol=0.05, atol=1e-6)
    assert b.outcome.frozen_layers_changed == a.outcome.frozen_layers_changed
    # Where each ran is recorded, and the model that came back loads and scores like the local one.
    assert a.where["executor"] == "local" and b.where["executor"] == "ray"
    assert b.where["device"] == "CPU" and b.where["node"] and b.ran_on.startswith("Ray · ")
    assert a.ran_on.startswith("local · ")
    m_local, m_ray = load_model(a.model_path).model, load_model(b.model_path).model
    x = images.images[:16].astype("float32") / 127.5 - 1
    np.testing.assert_allclose(m_ray.predict(x, verbose=0), m_local.predict(x, verbose=0), atol=0.02)
    # Nothing on the cluster read a server path: the job sent bytes and arrays, and says where it went.
    job = json.loads((on_ray / ".jobs" / remote.job_id / "job.json").read_text())
    assert job["executor"] == "ray" and job["ray_address"]
    cluster = json.loads((on_ray / ".jobs" / ".ray_cluster.json").read_text())
    assert cluster["CPU"] == 2 and cluster["nodes"] == 2 and cluster["ray_version"] == ray.__version__


def test_drift_a_linked_control_and_retention_come_back_from_ray_as_a_local_run_measures_them(
        on_ray, loaded_base, images, base_images):
    """Issue 14's measurements travel through Ray Tune like the rest: the run and its random-init control (one
    job, linked), each with its representation drift, and the original task's retention."""
    from tlviz.finetune.cache import ActivationCache
    from tlviz.finetune.config import control_config
    from tlviz.finetune.controls import compare
    from tlviz.finetune.run import run_finetune
    from tlviz.jobs import start_job

    cfg = RunConfig(unfreeze=2, lr=3e-3, epochs=2, preset="tf")
    remote = start_job(loaded_base, images, [cfg], controls=["random-init"], original=base_images)
    cache = ActivationCache()
    local = run_finetune(loaded_base, images, cfg, cache=cache, original=base_images)
    local_control = run_finetune(loaded_base, images, control_config(cfg, "random-init"), cache=cache,
                                 original=base_images)
    (st,) = _wait_all([remote.job_id])
    assert st.state == "done", st.message
    run, control = st.runs
    assert run.where["executor"] == control.where["executor"] == "ray"
    assert (control.control, control.control_of) == ("random-init", run.run_id)
    for got, ref in ((run, local), (control, local_control)):
        assert [d["block"] for d in got.outcome.drift] == [d["block"] for d in ref.drift]
        np.testing.assert_allclose([d["cka"] for d in got.outcome.drift], [d["cka"] for d in ref.drift], atol=0.02)
    assert run.outcome.drift[0]["cka"] == 1.0 and run.outcome.drift[-1]["cka"] < 1.0
    assert run.outcome.retention["n_images"] == len(base_images) == local.retention["n_images"]
    assert run.outcome.retention["after"] == pytest.approx(local.retention["after"], abs=0.02)
    assert control.outcome.retention is None
    c = compare(run, control)
    assert c.difference is not None and c.difference.n == len(local.val_indices)


def test_a_sweep_through_ray_tune_with_asha_stops_the_hopeless_runs(on_ray, loaded_base, images):
    from tlviz import charts
    from tlviz.finetune.store import list_runs
    from tlviz.finetune.sweep import sweep_configs, sweep_table
    from tlviz.jobs import start_job

    from tlviz.finetune.cache import ActivationCache
    from tlviz.finetune.run import run_finetune

    base = RunConfig(epochs=4, preset="tf")
    cfgs = sweep_configs(base, [0, 2], [1e-7, 1e-2])  # 1e-7 learns nothing: ASHA should stop such runs
    remote = start_job(loaded_base, images, cfgs, asha=True)
    # The same runs on this machine, as a local worker runs them (one process, one activation cache), meanwhile.
    cache = ActivationCache()
    by_cfg = {(c.unfreeze, c.lr): run_finetune(loaded_base, images, c, cache=cache) for c in cfgs}
    (st_ray,) = _wait_all([remote.job_id])
    assert st_ray.state == "done", st_ray.message
    states = {}
    for rec in st_ray.runs:
        ref = by_cfg[(rec.config["unfreeze"], rec.config["lr"])]
        states[(rec.config["unfreeze"], rec.config["lr"])] = rec.state
        assert rec.where["executor"] == "ray"
        if rec.state == "stopped":
            assert 1 <= rec.stopped_at < 4 and len(rec.history) == rec.stopped_at
            assert "stopped early by ASHA after epoch" in rec.message
            assert list((rec.path / "tb" / "train").glob("events.out.tfevents.*"))
            _assert_same_history(rec.history, ref.history, prefix=True)
        else:
            assert rec.state == ref.state == "completed"
            _assert_same_history(rec.history, ref.history)
            assert rec.outcome.val_accuracy == pytest.approx(ref.final["val_accuracy"], abs=0.02)
            assert rec.model_path is not None
    # ASHA stops a run at a rung when its validation loss is worse than the runs already there: a stopped run
    # was worse, at that epoch, than another configuration (measured by the local runs). A run that starts after
    # the first two reached epoch 1 meets one that learns: a hopeless one is always stopped; some run completes.
    for rec in st_ray.runs:
        if rec.state == "stopped":
            e = rec.stopped_at
            mine = by_cfg[(rec.config["unfreeze"], rec.config["lr"])].history.set_index("epoch").loc[e, "val_loss"]
            others = [r.history.set_index("epoch").loc[e, "val_loss"] for k, r in by_cfg.items()
                      if k != (rec.config["unfreeze"], rec.config["lr"])]
            assert mine > min(others), (rec.config, e)
    assert "stopped" in {states[(0, 1e-7)], states[(2, 1e-7)]}
    assert "completed" in states.values()
    table = sweep_table(list_runs(), st_ray.sweep_id)
    stopped = table[table["state"] == "stopped"]
    assert len(stopped) >= 1 and stopped["stopped_at"].notna().all()
    spec = json.dumps(charts.sweep_heatmap(table).to_dict())
    assert f"stopped ep {int(stopped['stopped_at'].iloc[0])}" in spec


def test_cancel_stops_a_run_on_ray_and_the_range_test_runs_there(on_ray, loaded_base, images):
    from tlviz.jobs import cancel, poll, start_job, start_lr_finder, wait

    job = start_job(loaded_base, images, [RunConfig(unfreeze=6, lr=1e-3, epochs=300, preset="tf")])
    lrfind = start_lr_finder(loaded_base, images, RunConfig(unfreeze=0, preset="tf"), steps=40)  # alongside
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        st = poll(job.job_id)
        if st.current is not None and len(st.current.history) >= 1:
            break
        time.sleep(0.2)
    else:
        pytest.fail(f"the run never started training on Ray: {poll(job.job_id).message}")
    cancel(job.job_id)
    st = wait(job.job_id, timeout=90)
    assert st.state == "cancelled", st.message
    rec = st.runs[0]
    assert rec.state == "cancelled" and 1 <= len(rec.history) < 300
    assert rec.model_path is not None and rec.metrics  # what was trained came back
    lr = wait(lrfind.job_id, timeout=120)
    assert lr.state == "done" and lr.executor == "ray", lr.message
    res = lr.lr_result
    assert res is not None and len(res.curve) >= 5 and res.message


def test_a_node_lost_mid_run_fails_its_run_with_the_reason_and_the_sweep_goes_on(on_ray, ray_cluster, loaded_base,
                                                                                 images):
    from tlviz.finetune.store import load_run
    from tlviz.finetune.sweep import sweep_configs
    from tlviz.jobs import poll, start_job, wait

    doomed = ray_cluster.add_node(num_cpus=1)  # a third node for this test: 3 CPUs, one trial on each node
    ray_cluster.wait_for_nodes()
    cfgs = sweep_configs(RunConfig(unfreeze=6, epochs=4, preset="tf"), [6], [3e-4, 1e-3, 3e-3])
    job = start_job(loaded_base, images, cfgs)
    victim, deadline = None, time.monotonic() + 120
    while victim is None and time.monotonic() < deadline:
        for rid in job.run_ids:
            rec = load_run(rid)
            if rec.state == "running" and doomed.node_id.startswith(rec.where.get("node_id") or "-") \
                    and len(rec.history) >= 1:
                victim = rec
                break
        time.sleep(0.1)
    assert victim is not None, poll(job.job_id).text
    ray_cluster.remove_node(doomed, allow_graceful=False)  # the node goes away, with the worker running the run
    st = wait(job.job_id, timeout=180)
    assert st.state == "done", st.message
    lost = next(r for r in st.runs if r.run_id == victim.run_id)
    assert lost.state == "failed" and "was lost" in lost.message and "sweep went on" in lost.message
    assert victim.where["node_id"] in lost.message
    assert len(lost.history) >= 1  # what it streamed is kept
    others = [r for r in st.runs if r.run_id != victim.run_id]
    assert all(r.state == "completed" and r.metrics for r in others), [(r.state, r.message) for r in others]
    assert all(not doomed.node_id.startswith(r.where["node_id"]) for r in others)


def test_an_unreachable_cluster_is_refused_before_anything_is_created(tmp_path, monkeypatch, loaded_base, images):
    from tlviz.jobs import executors, start_job

    monkeypatch.setenv("TLVIZ_RUNS_DIR", str(tmp_path / "runs"))
    port = _free_port()
    monkeypatch.setenv("TLVIZ_RAY_ADDRESS", f"ray://127.0.0.1:{port}")
    # refused by the quick probe, before any connection (ray.init would wait for its own, much longer, timeout)
    monkeypatch.setattr(ray, "init", lambda *a, **k: pytest.fail("tried to connect to an unreachable cluster"))
    with pytest.raises(ClusterUnreachable, match=f"127.0.0.1:{port}.*run on this machine"):
        start_job(loaded_base, images, [RunConfig(epochs=1)])
    assert not [p for p in (tmp_path / "runs").glob("*") if not p.name.startswith(".")]  # no run folder
    monkeypatch.setenv("TLVIZ_RAY_ADDRESS", "auto")
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    monkeypatch.setattr(executors, "RAY_CURRENT_CLUSTER", tmp_path / "no_cluster")
    with pytest.raises(ClusterUnreachable, match="no Ray cluster runs on this machine"):
        executors.check_reachable()


def test_the_driver_reports_a_cluster_lost_before_it_connects(tmp_path, monkeypatch, loaded_base, images):
    """The cluster went away between the check and the driver's connection: the job and its runs fail, flagged."""
    from tlviz.jobs import poll
    from tlviz.jobs.folder import new_job
    from tlviz.jobs.inputs import images_info, model_info, prepare_inputs
    from tlviz.jobs.worker import worker_main
    from tlviz.finetune.store import RunWriter, load_run, new_run_id, runs_dir

    monkeypatch.setenv("TLVIZ_RUNS_DIR", str(tmp_path / "runs"))
    inputs = prepare_inputs(loaded_base, images)
    rid = new_run_id()
    w = RunWriter(runs_dir() / rid)
    w.write_config(RunConfig(epochs=1))
    w.status("queued")
    job_id, jdir = new_job("runs", {"model": model_info(loaded_base), "images": images_info(images, "k"),
                                    **inputs, "run_ids": [rid], "configs": [RunConfig(epochs=1).to_dict()],
                                    "executor": "ray", "ray_address": f"127.0.0.1:{_free_port()}"}, queued=False)
    worker_main(str(jdir))  # the one worker entry point, on the Ray executor
    st = poll(job_id)
    assert st.state == "failed" and st.unreachable and "cannot be reached" in st.message
    assert load_run(rid).state == "failed" and "cannot be reached" in load_run(rid).message
    assert st.configs and st.configs[0]["epochs"] == 1  # what the page needs to offer a local run


def test_trial_and_task_resources_follow_the_cluster():
    from tlviz.jobs.ray_executor import task_resources, trial_resources

    assert trial_resources({"CPU": 2, "GPU": 0, "max_node_CPU": 2}, 4) == {"cpu": 1}
    assert trial_resources({"CPU": 16, "GPU": 0, "max_node_CPU": 16}, 4) == {"cpu": 4}
    assert trial_resources({"CPU": 32, "GPU": 0, "max_node_CPU": 8}, 2) == {"cpu": 8}  # at most one node's CPUs
    assert trial_resources({"CPU": 16, "GPU": 2, "max_node_CPU": 8}, 4) == {"cpu": 1, "gpu": 1}
    assert task_resources({"CPU": 2, "GPU": 0}) == {"num_cpus": 1, "num_gpus": 0}
    assert task_resources({"CPU": 8, "GPU": 1}) == {"num_cpus": 1, "num_gpus": 1}


def test_the_finetune_command_runs_on_ray_and_prints_what_a_local_run_prints(cluster, tmp_path, monkeypatch,
                                                                               base_model_path, digits_5_9, capsys):
    from tlviz.cli import main

    args = ["finetune", str(base_model_path), str(digits_5_9), "--unfreeze", "0", "--lr", "1e-2", "--epochs", "2",
            "--json"]
    monkeypatch.delenv("TLVIZ_RAY_ADDRESS", raising=False)
    assert main(args + ["--out", str(tmp_path / "local")]) == 0
    local = json.loads(capsys.readouterr().out)
    monkeypatch.setenv("TLVIZ_RAY_ADDRESS", cluster)
    assert main(args + ["--out", str(tmp_path / "ray")]) == 0
    captured = capsys.readouterr()
    remote = json.loads(captured.out)
    assert "running on Ray · " in captured.err
    assert remote["trainable_params"] == local["trainable_params"]
    assert remote["frozen_layers_changed"] == local["frozen_layers_changed"] == []
    for a, b in zip(remote["history"], local["history"], strict=True):
        for k in ("loss", "accuracy", "val_loss", "val_accuracy"):
            assert a[k] == pytest.approx(b[k], rel=2e-3, abs=2e-3), k
    assert remote["model_path"].startswith(str(tmp_path / "ray")) and os.path.exists(remote["model_path"])


def test_a_run_that_does_not_stop_by_itself_is_stopped_by_ray(cluster, tmp_path, monkeypatch):
    from pathlib import Path

    from tlviz.jobs import ray_executor, ray_tasks
    from tlviz.finetune.store import RunWriter, load_run

    w = RunWriter(tmp_path / "20240101-000000-000aaaa")
    w.write_config(RunConfig(epochs=1))
    w.status("running")
    board = ray.remote(num_cpus=0)(ray_tasks.Board).remote()
    store = ray_executor.RunFolders(ray, board, {"root": str(tmp_path), "run_ids": [w.run_id]}, Path(tmp_path))
    monkeypatch.setattr(ray_executor, "CANCEL_GRACE_S", 1.0)

    def stubborn():  # a task that never looks at the cancel flag (defined here: it travels by value)
        time.sleep(120)

    ref = ray.remote(stubborn).options(max_retries=0).remote()
    assert ray_executor.follow(ray, [ref], store, lambda: True)  # the Cancel flag is up from the start
    assert ray.get(board.cancelled.remote())
    with pytest.raises((ray.exceptions.TaskCancelledError, ray.exceptions.WorkerCrashedError)):
        ray.get(ref, timeout=100)  # Ray stopped it (left alone it would sleep 120 s and return)
    ray_executor.outcome(ray, ref, store, w.run_id)
    rec = load_run(w.run_id, tmp_path)
    assert rec.state == "cancelled" and "Ray stopped it" in rec.message, rec.message
