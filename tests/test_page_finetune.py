"""AppTest: the Fine-tuning page, with real runs in the worker process (short ones)."""

from __future__ import annotations

from pathlib import Path

import pytest
from apptest_helpers import open_page, texts

from tlviz.jobs import wait

ROOT = Path(__file__).resolve().parent.parent
APP = str(ROOT / "app.py")
PAGE = "pages/finetune.py"



def _wait(at, timeout=120):
    """Wait for the session's job on its own status (`tlviz.jobs.wait`), then rerun the page (as the polling
    fragment would) until it sees the end."""
    job_id = at.session_state["ft_job"]
    if job_id is not None:
        assert not wait(job_id, timeout=timeout).active, "the job did not finish"
    for _ in range(5):
        if at.session_state["ft_job"] is None:
            break
        at.run()
        assert not at.exception, at.exception
    assert at.session_state["ft_job"] is None, "the page did not notice its job's end"
    at.run()
    assert not at.exception, at.exception


def test_page_shows_config_with_defaults_and_no_runs(runs):
    at = open_page(PAGE, images="digits_5_9")
    assert at.title[0].value == "Fine-tuning runs"
    assert at.session_state["ft_preset"] == "tf"  # the model's recorded preset
    assert "No runs yet" in texts(at)
    assert "New head: the model records other class names" in texts(at)
    head_box = [c for c in at.checkbox if c.label.startswith("New head")][0]
    assert head_box.value and not head_box.disabled
    # Block boundaries of the sample (block1..block3) drive the depth control.
    assert at.select_slider(key="ft_depth_block").options == ["head only", "from block3 (2 layers)",
                                                              "from block2 (4 layers)", "whole base (6 layers)"]
    at.session_state["best_preset"] = "unit"  # as the Normalization page would set it
    at.run()
    assert at.session_state["ft_preset"] == "unit"
    assert not at.button(key="ft_start").disabled


def test_frozen_sample_refuses_until_user_opts_in(runs):
    at = open_page(PAGE, model="digits_frozen.keras", images="digits_5_9")
    assert any("No trainable weights" in e.value for e in at.error)
    assert at.button(key="ft_start").disabled
    at.checkbox(key="ft_unfreeze_frozen").check()
    at.run()
    assert not at.button(key="ft_start").disabled


def test_head_only_run_learns_and_results_show(runs):
    at = open_page(PAGE, images="digits_5_9")
    at.number_input(key="ft_lr").set_value(1e-2)
    at.number_input(key="ft_epochs").set_value(3)
    at.button(key="ft_start").click()
    at.run()
    assert at.session_state["ft_job"] is not None
    _wait(at)
    text = texts(at)
    assert "completed" in text
    metrics = {m.label: m.value for m in at.metric}
    assert float(metrics["Val accuracy"].rstrip("%")) > 40  # chance is 20 %
    assert "frozen layers show exactly zero change" in text
    labels = [b.label for b in at.get("download_button")]
    assert labels == ["Download the fine-tuned model (.keras)", "Download this run as HTML"]
    # A confusion-matrix cell shows its images.
    at.selectbox(key="ft_cell_true").set_value(0)
    at.selectbox(key="ft_cell_pred").set_value(0)
    at.run()
    assert at.get("image"), "no images shown for the diagonal cell"
    # ... with "where the model looks" for the run's own saved model (issue 14).
    assert [t for t in at.toggle if t.key == "ft_cell_gradcam"], "no Grad-CAM toggle on the confusion cell"


def test_divergent_rate_is_marked_and_runs_compare_and_delete(runs):
    at = open_page(PAGE, images="digits_5_9")
    at.select_slider(key="ft_depth_block").set_value(6)
    at.number_input(key="ft_lr").set_value(1.0)
    at.number_input(key="ft_epochs").set_value(2)
    at.button(key="ft_start").click()
    at.run()
    _wait(at)
    text = texts(at)
    assert "diverged" in text and "The run diverged" in text
    # A second run to compare with.
    at.select_slider(key="ft_depth_block").set_value(0)
    at.number_input(key="ft_lr").set_value(1e-2)
    at.number_input(key="ft_epochs").set_value(1)
    at.button(key="ft_start").click()
    at.run()
    _wait(at)
    assert len(at.dataframe[-1].value) == 2 or any(len(d.value) == 2 for d in at.dataframe)
    assert len(at.multiselect(key="ft_compare").value) == 2
    ids = at.multiselect(key="ft_compare").value
    at.multiselect(key="ft_delete_ids").set_value(ids[:1])
    at.run()
    at.button(key="ft_delete").click()
    at.run()
    assert not at.exception
    assert len([p for p in runs.iterdir() if not p.name.startswith(".")]) == 1


def test_lr_finder_suggestion_copies_into_config(runs):
    at = open_page(PAGE, images="digits_5_9")
    at.button(key="ft_lrfind").click()
    at.run()
    _wait(at)
    assert "Suggested learning rate" in texts(at)
    use = at.button(key="ft_use_lr")
    use.click()
    at.run()
    suggested = at.session_state["ft_lr_result"]["suggestion"]
    assert at.session_state["ft_lr"] == pytest.approx(float(f"{suggested:.2g}"))


def test_sweep_fills_heatmap(runs):
    at = open_page(PAGE, images="digits_5_9")
    at.number_input(key="ft_epochs").set_value(1)
    at.multiselect(key="ft_sweep_depths").set_value([0])
    at.multiselect(key="ft_sweep_rates").set_value([1e-3, 1e-2])
    at.run()
    at.button(key="ft_sweep_start").click()
    at.run()
    _wait(at)
    from tlviz.finetune.store import list_runs

    df = list_runs()
    assert len(df) == 2 and df["sweep_id"].nunique() == 1 and set(df["state"]) == {"completed"}
    assert at.selectbox(key="ft_sweep_show").value == df["sweep_id"].iloc[0]


def test_half_written_run_folders_show_as_failed(runs):
    import json

    at = open_page(PAGE, images="digits_5_9")
    ws = at.session_state["workspace"]
    no_status = runs / "20240101-000000-000aaaa"  # stopped right after writing its config
    no_status.mkdir(parents=True)
    (no_status / "config.json").write_text(json.dumps({"config": {"unfreeze": 2, "lr": 0.01}, "owner": ws}))
    no_metrics = runs / "20240101-000001-000bbbb"  # stopped while saving its results
    no_metrics.mkdir()
    (no_metrics / "config.json").write_text(json.dumps({"config": {"unfreeze": 0, "lr": 0.01}, "owner": ws}))
    (no_metrics / "status.json").write_text('{"state": "completed"}')
    cut = runs / "20240101-000002-000cccc"  # config cut off mid-write: nobody's run, so not on this page
    cut.mkdir()
    (cut / "config.json").write_text('{"config": {"unfreeze": 2, "lr"')
    at.run()
    assert not at.exception
    states = list(at.dataframe[-1].value["state"])
    assert states == ["failed", "failed"]
    # they record no model, so none opens as the loaded model's run; picked, one shows why it failed
    assert at.session_state["ft_show_run"] is None
    at.selectbox(key="ft_show_run").set_value("20240101-000000-000aaaa").run()
    assert "incomplete run folder" in texts(at)


def test_after_a_reload_the_page_can_follow_a_run_in_progress(runs):
    from tlviz.finetune.config import RunConfig
    from tlviz.jobs import start_job
    from tlviz.imagesets import load_image_set
    from tlviz.models import load_model
    from tlviz.samples import sample_path

    loaded = load_model(sample_path("digits_base.keras"))
    imgs = load_image_set(sample_path("digits_5_9"), loaded.image_size, loaded.channels)
    ws = "0123456789abcdef01234567"  # the workspace token kept in the page's address
    job = start_job(loaded, imgs, [RunConfig(unfreeze=0, lr=1e-2, epochs=500, preset="tf")], owner=ws)
    other = open_page(PAGE, images="digits_5_9")  # another person's session: not theirs to see
    assert "in progress" not in texts(other) and "No runs yet" in texts(other)
    at = open_page(PAGE, images="digits_5_9", query={"ws": ws})  # the same person after a reload
    assert at.session_state["workspace"] == ws
    assert "in progress" in texts(at)
    at.button(key="ft_follow").click()
    at.run()
    assert at.session_state["ft_job"] == job.job_id
    at.button(key="ft_cancel").click()
    at.run()
    _wait(at)
    assert "cancelled" in texts(at)


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_unreachable_ray_cluster_is_said_and_the_run_goes_local_on_request(runs, monkeypatch):
    port = _free_port()
    monkeypatch.setenv("TLVIZ_RAY_ADDRESS", f"ray://127.0.0.1:{port}")
    at = open_page(PAGE, images="digits_5_9")
    assert f"Runs go to: Ray cluster `ray://127.0.0.1:{port}`" in texts(at)
    assert any(f"Fine-tuning runs on: Ray cluster" in c.value for c in at.sidebar.caption)
    assert at.checkbox(key="ft_asha").value  # a sweep on Ray may stop poor runs early
    at.number_input(key="ft_lr").set_value(1e-2)
    at.number_input(key="ft_epochs").set_value(1)
    at.button(key="ft_start").click()
    at.run()
    assert not at.exception, at.exception
    assert at.session_state["ft_job"] is None  # nothing started, nothing created
    assert not [p for p in runs.glob("*") if not p.name.startswith(".")]
    assert any(f"127.0.0.1:{port}" in e.value and "cannot be reached" in e.value for e in at.error)
    at.button(key="ft_run_local").click()
    at.run()
    assert at.session_state["ft_job"] is not None and "ft_offer_local" not in at.session_state
    _wait(at)
    text = texts(at)
    assert "completed" in text and "Ran on: local · " in text
    table = at.dataframe[-1].value
    assert table["ran_on"].iloc[0].startswith("local · ")
    assert any(c.value.startswith("Last run: local · ") for c in at.sidebar.caption)


def test_a_run_stopped_early_shows_why_and_the_sweep_heatmap_marks_it(runs):
    from tlviz.finetune.config import RunConfig
    from tlviz.finetune.store import RunWriter

    at = open_page(PAGE, images="digits_5_9")
    ws = at.session_state["workspace"]
    for rid, lr, state in (("20240101-000000-000aaaa", 1e-7, "stopped"), ("20240101-000001-000bbbb", 1e-2, None)):
        w = RunWriter(runs / rid)
        w.write_config(RunConfig(epochs=3, lr=lr, sweep_id="sweep-x"), owner=ws)
        w.epoch([{"epoch": 1, "phase": "main", "loss": 1.6, "accuracy": 0.2, "val_loss": 1.6, "val_accuracy": 0.2,
                  "lr": lr, "elapsed_s": 1.0, "partial": False}])
        where = {"executor": "ray", "node": "10.0.0.7", "device": "GPU", "device_name": "NVIDIA A100"}
        if state == "stopped":
            w.status("stopped", "stopped early by ASHA after epoch 1: its validation loss was worse", stopped_at=1,
                     where=where)
        else:
            w.status("failed", "the Ray worker running this run on node 10.0.0.7 was lost", where=where)
    at.run()
    assert not at.exception, at.exception
    at.selectbox(key="ft_show_run").set_value("20240101-000000-000aaaa")
    at.run()
    assert any("stopped early by ASHA after epoch 1" in w.value for w in at.warning)
    assert "Ran on: Ray · 10.0.0.7 · GPU (NVIDIA A100)" in texts(at)
    table = at.dataframe[-1].value
    assert set(table["ran_on"]) == {"Ray · 10.0.0.7 · GPU (NVIDIA A100)"}
    assert list(table.sort_values("run_id")["stopped_at"].fillna(-1)) == [1, -1]
    assert at.selectbox(key="ft_sweep_show").value == "sweep-x"
    specs = [c.proto.spec for c in at.get("vega_lite_chart")]  # the heatmap's title says what the dashes mean
    assert any("faded, dashed: stopped early by ASHA" in spec for spec in specs)


def test_drift_controls_forgetting_and_the_original_task_show_with_a_run(runs):
    """Issue 14 on the page: the original task loaded as a second image set, a planted run (whole base at Adam
    0.1) with its head-only control, then its random-init control by one click."""
    at = open_page(PAGE, images="digits_5_9")
    at.radio(key="ft_original_kind").set_value("Sample")
    at.run()
    at.selectbox(key="ft_original_sample").set_value("digits_5_9")  # not the model's own task
    at.run()
    assert any("does not match the model's outputs" in e.value for e in at.error)
    at.selectbox(key="ft_original_sample").set_value("digits_0_4")
    at.run()
    assert not at.error and "Each new run reports the original task on **901 images**" in texts(at)
    assert at.multiselect(key="ft_controls").options == ["random-init control"]  # depth 0: no head-only control
    at.select_slider(key="ft_depth_block").set_value(6)
    at.number_input(key="ft_lr").set_value(1e-1)
    at.number_input(key="ft_epochs").set_value(1)
    at.run()
    at.multiselect(key="ft_controls").set_value(["head-only"])
    at.run()
    at.button(key="ft_start").click()
    at.run()
    _wait(at)
    shown = at.session_state["ft_show_run"]
    from tlviz.finetune.store import load_run

    assert load_run(shown).control is None  # the run is shown, not its control
    text = texts(at)
    specs = [c.proto.spec for c in at.get("vega_lite_chart")]
    assert any("how far each block's features moved" in spec for spec in specs)
    assert any("the run and its controls" in spec for spec in specs)
    assert "Unfreezing hurts" in text and "Catastrophic forgetting: run" in text
    metrics = {m.label: m.value for m in at.metric}
    assert metrics["Before the run"] == "100.0%" and float(metrics["After the run"].rstrip("%")) < 60
    assert "random-init control" in [b.label.split("Run the ")[-1] for b in at.button if b.key and
                                     b.key.startswith("ft_control_")]
    at.button(key="ft_control_random-init").click()
    at.run()
    _wait(at)
    assert at.session_state["ft_show_run"] == shown  # the job of a control opens the run it controls
    assert "than the same configuration from random weights" in texts(at) or \
        "no better than a randomly initialised model" in texts(at)
    table = at.dataframe[-1].value
    assert sorted(table["control"].fillna("-")) == ["-", "head-only", "random-init"]
    assert set(table["control_of"].dropna()) == {shown}


def test_runs_of_the_loaded_model_come_first_and_another_models_run_says_so(runs):
    """Issue 24: after loading another model, Results never opens the previous model's run as this one's."""
    from tlviz.finetune.config import RunConfig
    from tlviz.finetune.store import RunWriter

    at = open_page(PAGE)
    ws, sample = at.session_state["workspace"], at.session_state["model"]
    for rid, sha, name in (("20240101-000000-000aaaa", sample.sha256, sample.filename),
                           ("20240101-000001-000bbbb", "f" * 64, "someone_elses.keras")):
        w = RunWriter(runs / rid)
        w.write_config(RunConfig(epochs=1, lr=1e-3), {"sha256": sha, "filename": name}, owner=ws)
        w.status("completed")
    at.run()
    assert not at.exception, at.exception
    table = at.dataframe[-1].value
    assert list(table["run_id"]) == ["20240101-000000-000aaaa", "20240101-000001-000bbbb"]  # this model's first
    assert list(table["this_model"]) == [True, False]
    assert at.session_state["ft_show_run"] == "20240101-000000-000aaaa"
    picker = at.selectbox(key="ft_show_run")
    assert "another model: someone_elses.keras" in picker.format_func("20240101-000001-000bbbb")
    assert "another model" not in picker.format_func("20240101-000000-000aaaa")
    assert not any("not the loaded model" in w.value for w in at.warning)
    picker.set_value("20240101-000001-000bbbb").run()  # picked on purpose: shown, and said whose it is
    assert any("This run fine-tuned **someone_elses.keras**, not the loaded model" in w.value for w in at.warning)
    # another model loaded: neither run is its own, so none opens until one is picked
    at.selectbox(key="model_choice").set_value("digits_frozen.keras").run()
    at.switch_page(PAGE).run()
    assert not at.exception, at.exception
    assert at.session_state["ft_show_run"] is None
    assert "No runs of **digits_frozen** yet" in texts(at)
