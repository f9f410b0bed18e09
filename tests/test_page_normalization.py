"""The Normalization page, driven through the router with the sample preloaded.

The comparison runs in a real worker process (`tlviz.jobs`); `settle` reruns the
page as its polling fragment would until the job is done.
"""

from __future__ import annotations

import os
import signal
from pathlib import Path

import pytest
from apptest_helpers import open_page, settle, texts, upload_model
from streamlit.testing.v1 import AppTest

from tlviz import jobs
from tlviz.jsonfiles import read_json

ROOT = Path(__file__).resolve().parent.parent
PAGE = "pages/normalization.py"


@pytest.fixture(scope="module")
def page(module_runs) -> AppTest:
    at = open_page(PAGE)
    assert at.session_state["norm_job"] is not None  # the sample starts on its own, in a worker
    assert at.button(key="norm_cancel")  # its progress panel
    return settle(at, "norm_job")


def _worker_pid(job_id: str) -> int:
    return int(read_json(jobs.job_dir(job_id) / "status.json", {})["pid"])


def test_page_ranks_tf_first_and_sets_best_preset(page):
    at = page
    assert at.session_state["best_preset"] == "tf"
    assert at.session_state["inference_preset"] == "unit"
    assert "Best setting: tf" in at.success[0].value
    assert "agrees" in at.success[0].value
    code = at.get("code")
    assert code and "x / 127.5 - 1.0" in code[0].value
    table = at.dataframe[0].value
    assert table["setting"].iloc[0] == "tf"
    assert "accuracy" in table.columns and len(table) == 9  # 5 presets, 3 resize methods, BGR
    assert len(at.get("vega_lite_chart")) == 3  # fingerprint, ranking, per-class heatmap
    # Inference code using `unit` is flagged, and the gallery shows images whose prediction changes.
    assert any("Your inference preset `unit`" in e.value for e in at.error)
    assert len(at.get("image")) == 12
    assert any("get another prediction with `unit`" in c.value for c in at.caption)


def test_gallery_shows_where_the_model_looks_under_the_best_and_the_inference_preset(page):
    """Grad-CAM on request: a worker job computes each shown image's heatmap under `tf` and under `unit`."""
    at = page
    assert at.session_state["inference_preset"] == "unit"
    at.toggle(key="norm_cam_gradcam").set_value(True).run()
    assert not at.exception
    settle(at, "norm_cam_job")
    shown = [i.caption for element in at.get("image") for i in element.proto.imgs]
    assert len(at.get("image")) == 12 and len(shown) == 24  # 12 images, each under both presets
    assert sum(c.startswith("tf: explains '") for c in shown) == 12
    assert sum(c.startswith("unit: explains '") for c in shown) == 12
    assert any("Grad-CAM at 'block3_relu' (8×8 grid" in c.value for c in at.caption)
    at.toggle(key="norm_cam_gradcam").set_value(False).run()
    assert len(at.get("image")) == 12


def test_inference_preset_select_box_is_bound_to_session_state(page):
    at = page
    at.selectbox(key="norm_inference_widget").set_value("tf").run()
    assert not at.exception
    assert at.session_state["inference_preset"] == "tf"
    assert not at.get("image")
    assert any("is the best one" in c.value for c in at.caption)
    assert not any("Your inference preset" in e.value for e in at.error)


def test_custom_preset_is_compared_and_bad_values_are_explained(page):
    at = page
    at.toggle(key="norm_custom_on").set_value(True).run()
    assert not at.exception
    # A new comparison runs in the worker; the earlier one stays on the page meanwhile.
    assert at.session_state["norm_job"] is not None
    assert "earlier result for this model and image set" in texts(at)
    assert at.dataframe[0].value["setting"].iloc[0] == "tf"
    settle(at, "norm_job")
    assert any(s.startswith("custom(") for s in at.dataframe[0].value["setting"])
    assert at.session_state["best_preset"] == "tf"  # a tie with the custom preset goes to the named one
    at.text_input(key="norm_custom_std").set_value("0").run()
    assert not at.exception
    assert any("must not contain 0" in e.value for e in at.error)
    assert not any(s.startswith("custom(") for s in at.dataframe[0].value["setting"])
    at.toggle(key="norm_custom_on").set_value(False).run()


def test_a_killed_worker_shows_why_and_keeps_the_earlier_result(page):
    at = page
    at.text_input(key="norm_custom_std").set_value("0.5").run()
    at.text_input(key="norm_custom_scale").set_value("0.5").run()  # another custom preset: a new job
    at.toggle(key="norm_custom_on").set_value(True).run()
    job = at.session_state["norm_job"]
    assert job is not None
    os.kill(_worker_pid(job), signal.SIGKILL)  # what the out-of-memory killer does
    settle(at, "norm_job")
    assert any("killed (SIGKILL)" in e.value and "TLVIZ_MEMORY_MB" in e.value for e in at.error)
    assert "earlier result for this model and image set" in texts(at)
    assert at.dataframe[0].value["setting"].iloc[0] == "tf"  # the earlier comparison is still shown
    # The button starts it again, and it completes.
    at.button(key="norm_run").click().run()
    settle(at, "norm_job")
    assert not any("SIGKILL" in e.value for e in at.error)
    assert any(s.startswith("custom(scale=0.5") for s in at.dataframe[0].value["setting"])
    at.toggle(key="norm_custom_on").set_value(False).run()
    at.text_input(key="norm_custom_scale").set_value("0.00392157").run()


def test_a_reload_follows_the_running_job_instead_of_starting_another(module_runs):
    at = open_page(PAGE, images="digits_5_9")
    job = at.session_state["norm_job"]
    assert job is not None
    again = open_page(PAGE, images="digits_5_9", query={"ws": at.session_state["workspace"]})
    assert again.session_state["norm_job"] == job
    settle(again, "norm_job")
    at.run()
    assert at.session_state["norm_job"] is None and at.dataframe


def test_mismatched_classes_hide_accuracy(module_runs):
    at = open_page(PAGE)
    at.selectbox(key="images_choice").set_value("digits_5_9").run()
    settle(at, "norm_job")
    assert not at.exception
    assert any("accuracy cannot be measured" in i.value for i in at.info)
    assert "accuracy" not in at.dataframe[0].value.columns
    assert at.session_state["best_preset"] == "tf"  # from the label-free fingerprint
    assert "closest match to the BatchNormalization statistics" in at.success[0].value
    assert len(at.get("vega_lite_chart")) == 2  # no per-class heatmap without labels


def test_frozen_sample_model_with_a_nested_base(module_runs):
    """The fingerprint follows the nested feature extractor of digits_frozen.keras."""
    at = open_page(PAGE)
    at.selectbox(key="model_choice").set_value("digits_frozen.keras").run()
    settle(at, "norm_job")
    assert not at.exception
    assert any("digits_features/block1_bn" in c.value for c in at.caption)
    assert at.session_state["best_preset"] in ("raw", "unit", "tf", "torch", "caffe")


def test_uploaded_model_waits_for_the_button(tmp_path, module_runs):
    import keras

    inp = keras.Input((32, 32, 3))
    x = keras.layers.GlobalAveragePooling2D(name="pool")(keras.layers.Conv2D(4, 3, name="conv")(inp))
    keras.Model(inp, keras.layers.Dense(5, activation="softmax", name="head")(x), name="mine").save(
        tmp_path / "mine.keras")
    at = upload_model(open_page(PAGE), "mine.keras", (tmp_path / "mine.keras").read_bytes())
    assert not at.exception
    assert any("Press **Compare**" in i.value for i in at.info)
    assert at.session_state["norm_job"] is None and not at.dataframe
    at.button(key="norm_run").click().run()
    assert at.session_state["norm_job"] is not None
    settle(at, "norm_job")
    assert at.dataframe and len(at.dataframe[0].value) >= 5
    # An untrained head scores chance under every preset: no "best", the sentence says why (issue 10).
    assert any(e.value.startswith("**No best setting.**") and "better than chance" in e.value for e in at.error)
    assert not at.success and at.session_state["best_preset"] is None
    table = at.dataframe[0].value
    assert "interval" in table.columns and table["interval"].str.contains("–").all()
    assert any("No best preset could be determined" in c.value for c in at.caption)


def test_a_diagnosis_run_first_fills_this_page_without_a_new_job(runs):
    """Compute once: the Diagnose page's measurement is the Normalization page's result."""
    at = settle(open_page("pages/diagnose.py"), "diag_job")
    at.switch_page(PAGE)
    at.run()
    assert not at.exception
    assert at.session_state["norm_job"] is None  # no job: served from the diagnosis's stored comparison
    assert "Best setting: tf" in at.success[0].value
    assert len(list((runs / ".jobs").glob("*/job.json"))) == 1  # only the diagnosis ran
