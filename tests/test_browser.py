"""End to end in a real browser (Debian's Chromium driven by Playwright) against a served app.

One server is started for the module on a free localhost port with the project's
`.streamlit/config.toml`; each test opens its own page, i.e. its own session.
Every test saves a screenshot (see `browser.screenshot_dir`); the README's page
tour is made from them by ``python tools/screenshots.py``.
"""

from __future__ import annotations

import io
import os
import re
import urllib.error
import urllib.parse
import urllib.request
import zipfile

import pytest

from browser import CHROMIUM, browser_page, save_screenshot, streamlit_server

pytestmark = pytest.mark.browser

if not os.path.exists(CHROMIUM):  # CI installs it; say loudly why it did not run elsewhere
    pytest.skip(f"{CHROMIUM} not installed (apt-get install chromium)", allow_module_level=True)

# page title in the navigation -> (url path, text that shows the page finished, screenshot name)
PAGES = {
    "Model & images": ("", "5 classes match the model's 5 outputs", "overview.png"),
    "Freezing status": ("layers", "Preview: unfreeze", "layers.png"),
    "Fine-tuning runs": ("finetune", "No runs yet", None),  # its screenshot shows a finished run (below)
    "Normalization": ("normalization", "Best setting", "normalization.png"),
    "Diagnose": ("diagnose", "Checks skipped", "diagnose.png"),
}


def no_exception(page):
    shown = page.locator('[data-testid="stException"]')
    assert shown.count() == 0, shown.first.inner_text()


def sidebar(page):
    return page.locator('[data-testid="stSidebar"]')


def test_sample_preloaded_and_every_page_renders(server):
    with browser_page(1400, 1100) as page:
        page.goto(server)
        page.get_by_role("heading", name="Model & images").wait_for()
        for title, (path, done_text, shot) in PAGES.items():
            sidebar(page).get_by_role("link", name=title).click()
            page.get_by_role("heading", name=title).first.wait_for()
            page.get_by_text(done_text).first.wait_for(timeout=120_000)
            page.wait_for_timeout(800)  # let charts finish drawing
            no_exception(page)
            url = urllib.parse.urlparse(page.url)
            assert url.path.strip("/") == path, page.url
            assert "ws=" in url.query, page.url  # the workspace token stays in the address
            if shot:
                save_screenshot(page, shot)


def test_normalization_ranks_tf_first_for_the_sample(server):
    with browser_page() as page:
        page.goto(server + "/normalization")
        best = page.locator('[data-testid="stAlert"]', has_text="Best setting:").first
        best.wait_for(timeout=120_000)
        text = best.inner_text()
        assert "Best setting: tf (accuracy" in text and "both put tf first" in text, text
        page.locator('[data-testid="stDataFrame"]').first.wait_for()  # the ranked table
        no_exception(page)
        save_screenshot(page, "browser_normalization_tf_first.png")


def test_page_url_opened_directly_keeps_router_and_sidebar(tmp_path):
    """A bookmarked or reloaded page URL must still go through app.py's navigation.

    On its own, freshly started server: until a session has run the router's
    `st.navigation`, Streamlit treats ``pages/`` as a legacy multipage app and
    runs the page without the router (the case `ui.page_start` handles).
    """
    with streamlit_server(env={"TLVIZ_RUNS_DIR": str(tmp_path / "runs")}) as fresh, browser_page() as page:
        page.goto(fresh + "/layers")
        page.get_by_role("heading", name="Freezing status").wait_for()
        nav = page.locator('[data-testid="stSidebarNav"]')
        nav.get_by_text("Normalization").wait_for()
        assert nav.get_by_text("app", exact=True).count() == 0  # no legacy auto-discovered list
        sidebar(page).locator('[data-testid="stSelectbox"]').nth(1).wait_for()  # model and image pickers
        page.get_by_text("Preview: unfreeze").first.wait_for()
        save_screenshot(page, "browser_direct_url.png")


def _tiny_model_file(tmp_path):
    import keras

    inp = keras.Input((24, 24, 3), name="pixels")
    x = keras.layers.Conv2D(4, 3, name="uploaded_conv")(inp)
    x = keras.layers.GlobalAveragePooling2D()(x)
    out = keras.layers.Dense(2, activation="softmax", name="two_way")(x)
    model = keras.Model(inp, out, name="uploaded_net")
    model.layers[1].trainable = False
    path = tmp_path / "uploaded_net.keras"
    model.save(path)
    return path, model.count_params()


def _zip_of_two_classes(tmp_path):
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(0)
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        for cls in ("cats", "dogs"):
            for i in range(6):
                img = Image.fromarray(rng.integers(0, 255, (30, 30, 3), dtype=np.uint8))
                b = io.BytesIO()
                img.save(b, "PNG")
                zf.writestr(f"pets/{cls}/{i}.png", b.getvalue())
        zf.writestr("pets/dogs/broken.jpg", b"\xff\xd8\xff not really a jpeg")
    path = tmp_path / "pets.zip"
    path.write_bytes(buf.getvalue())
    return path


def test_upload_model_and_zip_through_the_file_inputs(server, tmp_path):
    model_path, n_params = _tiny_model_file(tmp_path)
    zip_path = _zip_of_two_classes(tmp_path)
    with browser_page(1400, 1100) as page:
        page.goto(server + "/layers")
        page.get_by_text("24,021").first.wait_for()  # the sample's parameters
        sidebar(page).get_by_text("Upload", exact=True).first.click()
        sidebar(page).locator('input[type="file"]').first.set_input_files(str(model_path))
        # the freezing table (a canvas grid; its cells are in an accessible hidden table)
        page.get_by_text("uploaded_conv").first.wait_for(state="attached", timeout=60_000)
        page.get_by_text(f"{n_params:,}").first.wait_for()
        assert page.get_by_text("24,021").count() == 0
        sidebar(page).get_by_text("Upload .zip", exact=True).click()
        zip_input = sidebar(page).locator('input[type="file"]').nth(1)  # the model's is the first
        zip_input.wait_for(state="attached")
        zip_input.set_input_files(str(zip_path))
        sidebar(page).get_by_text("12 images").wait_for(timeout=60_000)
        sidebar(page).get_by_text("1 files skipped").wait_for()
        no_exception(page)
        save_screenshot(page, "browser_upload.png")


def test_fine_tuning_progress_curves_and_cancel(server):
    with browser_page(1400, 1100) as page:
        page.goto(server + "/finetune")
        page.get_by_role("heading", name="Fine-tuning runs").wait_for()
        epochs = page.get_by_label("Epochs", exact=True)
        epochs.fill("2")
        epochs.press("Enter")
        page.get_by_role("button", name="Start run").click()
        # While it runs: a progress bar and the Cancel button.
        page.locator('[data-testid="stProgress"]').first.wait_for(timeout=60_000)
        page.get_by_text("freezing works").first.wait_for(timeout=180_000)
        page.get_by_text("Download the fine-tuned model").first.wait_for(timeout=30_000)
        page.locator('[data-testid="stVegaLiteChart"]').first.wait_for(timeout=30_000)  # the curves
        no_exception(page)
        page.wait_for_timeout(1000)
        page.get_by_text("Weight changes").first.scroll_into_view_if_needed()
        save_screenshot(page, "finetune.png")

        # A longer run, stopped with Cancel.
        page.evaluate("window.scrollTo(0, 0)")
        epochs.fill("500")
        epochs.press("Enter")
        page.get_by_role("button", name="Start run").click()
        page.get_by_text(re.compile(r"epoch \d+/500")).first.wait_for(timeout=120_000)
        page.get_by_role("button", name="Cancel").click()
        page.get_by_text("cancelled").first.wait_for(timeout=60_000)
        no_exception(page)
        assert page.get_by_text("epoch 500/500").count() == 0
        save_screenshot(page, "browser_finetune_cancelled.png")

        # A reload keeps the workspace (in the address), so both runs are still listed ...
        page.reload()
        page.get_by_role("heading", name="Fine-tuning runs").wait_for()
        page.get_by_text(re.compile(r"· cancelled · depth")).first.wait_for(timeout=60_000)
        # ... while someone else opening the page gets an empty workspace of their own.
        other = page.context.browser.new_page()
        other.goto(server + "/finetune")
        other.get_by_text("No runs yet").wait_for(timeout=60_000)
        assert other.get_by_text("· cancelled · depth").count() == 0


def test_uploads_without_the_xsrf_token_are_refused(server):
    """XSRF protection is on: a forged upload (no token from the page) gets 403."""
    req = urllib.request.Request(server + "/_stcore/upload_file/some-session/some-file", method="PUT",
                                 data=b"--x--", headers={"Content-Type": "multipart/form-data; boundary=x"})
    with pytest.raises(urllib.error.HTTPError) as info:
        urllib.request.urlopen(req, timeout=10)
    assert info.value.code == 403


def test_hostile_model_upload_is_refused_and_the_sample_stays(server, tmp_path):
    import keras

    marker = tmp_path / "ran.txt"
    inp = keras.Input((8, 8, 3))
    touch = str(marker)
    x = keras.layers.Lambda(lambda t: (__import__("pathlib").Path(touch).touch(), t)[1], name="sneaky")(inp)
    model = keras.Model(inp, keras.layers.Dense(2)(keras.layers.Flatten()(x)))
    path = tmp_path / "innocent.keras"
    model.save(path)
    marker.unlink(missing_ok=True)  # building the model ran the function once; loading must not
    with browser_page() as page:
        page.goto(server + "/layers")
        page.get_by_text("24,021").first.wait_for()
        sidebar(page).get_by_text("Upload", exact=True).first.click()
        sidebar(page).locator('input[type="file"]').first.set_input_files(str(path))
        sidebar(page).get_by_text("Lambda layer ('sneaky')").wait_for(timeout=60_000)
        sidebar(page).get_by_text("Still using the previous model: digits_base.keras").wait_for()
        page.get_by_text("24,021").first.wait_for()  # the freezing table still shows the sample
        no_exception(page)
        save_screenshot(page, "browser_hostile_model.png")
    assert not marker.exists()


def test_teachable_machine_zip_upload_and_converted_download(server, tmp_path, keras2):
    """A Teachable Machine export uploads as one model; the converted .keras downloads and loads."""
    from conftest import teachable_zip

    zpath = tmp_path / "converted_keras.zip"
    zpath.write_bytes(teachable_zip(keras2, "0 Cat\n1 Dog\n2 Bird\n"))
    with browser_page(1400, 1100) as page:
        page.goto(server)
        page.get_by_text("5 classes match the model's 5 outputs").wait_for(timeout=60_000)
        sidebar(page).get_by_text("Upload", exact=True).first.click()
        sidebar(page).locator('input[type="file"]').first.set_input_files(str(zpath))
        page.get_by_text("Teachable Machine image model").first.wait_for(timeout=90_000)
        page.get_by_text("Converted from a Keras 2").first.wait_for()
        no_exception(page)
        save_screenshot(page, "browser_teachable.png")
        with page.expect_download(timeout=60_000) as got:
            page.get_by_text("Download the converted model (.keras)").click()
        out = tmp_path / "download.keras"
        got.value.save_as(out)
    from tlviz.models import load_model

    again = load_model(out)
    assert again.class_names == ["Cat", "Dog", "Bird"] and again.teachable_machine
