"""AppTest: the Try page: a photo through the model under the user's preparation and the model's own."""
from __future__ import annotations

import io

import numpy as np
from PIL import Image

from apptest_helpers import open_page, texts

PAGE = "pages/try.py"


def _png(seed: int = 0, size=(48, 40)) -> bytes:
    rng = np.random.default_rng(seed)
    buf = io.BytesIO()
    Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)).save(buf, "PNG")
    return buf.getvalue()


def test_an_image_from_the_set_is_answered_under_both_preparations():
    at = open_page(PAGE)
    assert at.title[0].value == "Try it"
    assert "Take a photo, upload one or pick one" in texts(at)
    # the sample records its preset: the model expects `tf`; the session's pipeline is `unit`
    assert at.selectbox(key="try_expected").value == "tf" and at.selectbox(key="try_yours").value == "unit"
    assert "recorded in the model file" in texts(at)
    at.radio(key="try_source").set_value("From the image set").run()
    at.selectbox(key="try_class").set_value("3").run()
    assert not at.exception, at.exception
    shown = texts(at)
    assert "**Your pipeline** · `unit`" in shown and "**What the model expects** · `tf`" in shown
    assert len(at.get("vega_lite_chart")) == 2  # one chart of top classes per preparation
    assert "Answered in" in shown
    # under its own preset the trained sample calls a '3' a '3'
    assert "gives **3**" in shown or "Both preparations give **3**" in shown
    # the user's choice here is the session's inference preset (the other pages read it)
    at.selectbox(key="try_yours").set_value("tf").run()
    assert at.session_state["inference_preset"] == "tf"
    assert "Both sides use `tf`" in texts(at)


def test_an_uploaded_photo_and_a_broken_one():
    at = open_page(PAGE)
    at.radio(key="try_source").set_value("Upload a photo").run()
    at.file_uploader(key="try_upload").set_value(("photo.png", _png(), "image/png")).run()
    assert not at.exception, at.exception
    assert "Answered in" in texts(at) and not at.error
    at.file_uploader(key="try_upload").set_value(("photo.png", b"not an image at all", "image/png")).run()
    assert not at.exception, at.exception
    assert at.error and "The photo cannot be used" in at.error[0].value and "PNG, JPEG" in at.error[0].value
