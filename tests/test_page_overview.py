"""AppTest: the Model & images page (the app's first page)."""

from pathlib import Path

from streamlit.testing.v1 import AppTest

from apptest_helpers import open_app, open_page, texts

ROOT = Path(__file__).resolve().parent.parent
PAGE = "pages/overview.py"


def test_first_start_shows_sample_model_and_images():
    at = open_app()
    assert at.title[0].value == "Model & images"
    assert at.session_state["model"].name == "digits_base"
    assert len(at.session_state["images"]) > 800
    metrics = {m.label: m.value for m in at.metric}
    assert metrics["Outputs"] == "5" and metrics["Classes"] == "5"
    assert "match the model's 5 outputs" in texts(at)


def test_overview_of_the_frozen_sample_on_the_other_image_set():
    at = open_page(PAGE, model="digits_frozen.keras", images="digits_5_9")
    assert at.title[0].value == "Model & images"
    metrics = {m.label: m.value for m in at.metric}
    assert metrics["Trainable params"] == "0" and metrics["Outputs"] == "5" and metrics["Skipped files"] == "0"
    assert "class order sorted folder names" in texts(at)
    assert at.get("imgs") or at.get("image"), "the images as the model sees them"


def test_page_file_runs_on_its_own():
    """``streamlit run pages/overview.py``: no router, so the page draws the state and sidebar itself."""
    at = AppTest.from_file(str(ROOT / PAGE), default_timeout=180)
    at.run()
    assert not at.exception, at.exception
    assert at.title[0].value == "Model & images"
    assert at.session_state["model"].name == "digits_base"
    assert at.sidebar.selectbox(key="model_choice").value == "digits_base.keras"
