"""AppTest: the app starts with the sample preloaded; uploads go through the real engine."""

import io
import zipfile
from pathlib import Path

from apptest_helpers import open_app, texts, upload_model, upload_zip

ROOT = Path(__file__).resolve().parent.parent
APP = str(ROOT / "app.py")


def test_upload_model_and_zip(tmp_path):
    import keras

    inp = keras.Input((20, 20, 3))
    x = keras.layers.Rescaling(1 / 255.0)(inp)
    x = keras.layers.Conv2D(4, 3)(x)
    x = keras.layers.GlobalAveragePooling2D()(x)
    model = keras.Model(inp, keras.layers.Dense(2, activation="softmax", name="out")(x), name="uploaded_net")
    path = tmp_path / "up.keras"
    model.save(path)
    buf = io.BytesIO()
    digits = ROOT / "sample_models" / "digits_0_4"
    with zipfile.ZipFile(buf, "w") as zf:
        for cls in ("0", "1"):
            for p in sorted((digits / cls).glob("*.png"))[:6]:
                zf.write(p, f"two/{cls}/{p.name}")
        zf.writestr("two/1/broken.png", b"not a png")

    at = upload_model(open_app(), "up.keras", path.read_bytes())
    assert not at.exception
    assert at.session_state["model"].name == "uploaded_net"
    upload_zip(at, "two.zip", buf.getvalue())
    assert not at.exception
    images = at.session_state["images"]
    assert images.class_names == ["0", "1"] and len(images) == 12
    assert images.images.shape[1:] == (20, 20, 3)
    assert len(images.skipped) == 1 and images.skipped[0].file == "1/broken.png"
    text = texts(at)
    assert "Rescaling" in text and "match the model's 2 outputs" in text
    at.switch_page("pages/layers.py")
    at.run()
    assert "out" in set(at.dataframe[0].value["path"])


def test_refused_upload_keeps_previous_model():
    at = upload_model(open_app(), "bad.keras", b"garbage bytes")
    assert not at.exception
    assert any("not a Keras model" in e.value for e in at.error)
    assert at.session_state["model"].name == "digits_base"
    assert "Still using the previous model" in "\n".join(c.value for c in at.caption)


def test_refused_zip_keeps_previous_images():
    at = open_app()
    before = len(at.session_state["images"])
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        zf.writestr("../evil/1.png", b"x")
    upload_zip(at, "evil.zip", buf.getvalue())
    assert not at.exception
    assert any("outside the archive" in e.value for e in at.error)
    assert len(at.session_state["images"]) == before


def test_server_folder_loads_and_bad_folder_is_explained(tmp_path):
    from conftest import write_image

    for cls in ("cat", "dog"):
        for i in range(3):
            write_image(tmp_path / "pets" / cls / f"{i}.png")
    at = open_app()
    at.radio(key="images_kind").set_value("Server folder")
    at.run()
    at.text_input(key="images_folder").set_value(str(tmp_path / "missing"))
    at.button(key="images_folder_load").click()
    at.run()
    assert any("not found" in e.value for e in at.error)
    assert len(at.session_state["images"]) > 800  # the sample is still loaded
    at.text_input(key="images_folder").set_value(str(tmp_path / "pets"))
    at.button(key="images_folder_load").click()
    at.run()
    assert not at.exception
    images = at.session_state["images"]
    assert images.class_names == ["cat", "dog"] and len(images) == 6
    assert any("5 outputs" in w.value for w in at.warning)  # 2 classes vs 5 outputs explained


def test_pages_run_through_the_router_while_streamlit_treats_pages_as_legacy():
    """Every AppTest run starts as on a freshly started server: Streamlit treats ``pages/`` as a legacy
    multipage app and runs the page alone. `ui.page_start` switches that off and runs the router in the
    same script run, so each page is drawn once, with the sidebar and the router's navigation (a button
    click is kept: see the server-folder test's "Load folder")."""
    from streamlit.runtime.pages_manager import PagesManager

    at = open_app()
    for page, title in [("pages/layers.py", "Freezing status"), ("pages/finetune.py", "Fine-tuning runs"),
                        ("pages/overview.py", "Model & images")]:
        at.switch_page(page)
        at.run()
        assert not at.exception, at.exception
        assert [t.value for t in at.title] == [title]
        assert at.sidebar.selectbox(key="model_choice").value == "digits_base.keras"
        assert PagesManager.uses_pages_directory is False


def test_a_bad_setting_is_reported_not_raised(monkeypatch):
    """A server started with a nonsensical TLVIZ_* value says which one and how to fix it, on every page."""
    from apptest_helpers import texts
    from streamlit.testing.v1 import AppTest

    monkeypatch.setenv("TLVIZ_MAX_MODEL_MB", "lots")
    at = AppTest.from_file(str(Path(__file__).resolve().parent.parent / "app.py"), default_timeout=180)
    at.run()
    assert not at.exception, at.exception
    if "TLVIZ_MAX_MODEL_MB" not in texts(at):  # the sample model came from the cache: uploading reads the limit
        at.radio(key="model_kind").set_value("Upload")
        at.run()
        assert not at.exception, at.exception
    assert "TLVIZ_MAX_MODEL_MB='lots' is not a positive number" in texts(at)
