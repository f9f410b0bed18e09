"""The Normalization page, driven through the router with the sample preloaded."""

from __future__ import annotations

from pathlib import Path

import pytest
from apptest_helpers import open_page
from streamlit.testing.v1 import AppTest

ROOT = Path(__file__).resolve().parent.parent
PAGE = "views/normalization.py"





@pytest.fixture(scope="module")
def page() -> AppTest:
    return open_page(PAGE)


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
    assert any(s.startswith("custom(") for s in at.dataframe[0].value["setting"])
    assert at.session_state["best_preset"] == "tf"  # a tie with the custom preset goes to the named one
    at.text_input(key="norm_custom_std").set_value("0").run()
    assert not at.exception
    assert any("must not contain 0" in e.value for e in at.error)
    assert not any(s.startswith("custom(") for s in at.dataframe[0].value["setting"])
    at.toggle(key="norm_custom_on").set_value(False).run()


def test_mismatched_classes_hide_accuracy():
    at = open_page(PAGE)
    at.selectbox(key="images_choice").set_value("digits_5_9").run()
    assert not at.exception
    assert any("accuracy cannot be measured" in i.value for i in at.info)
    assert "accuracy" not in at.dataframe[0].value.columns
    assert at.session_state["best_preset"] == "tf"  # from the label-free fingerprint
    assert "closest match to the BatchNormalization statistics" in at.success[0].value
    assert len(at.get("vega_lite_chart")) == 2  # no per-class heatmap without labels


def test_frozen_sample_model_with_a_nested_base():
    """The fingerprint follows the nested feature extractor of digits_frozen.keras."""
    at = open_page(PAGE)
    at.selectbox(key="model_choice").set_value("digits_frozen.keras").run()
    assert not at.exception
    assert any("digits_features/block1_bn" in c.value for c in at.caption)
    assert at.session_state["best_preset"] in ("raw", "unit", "tf", "torch", "caffe")
