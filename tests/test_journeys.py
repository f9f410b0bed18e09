"""User journeys, end to end in a real browser (issue 22, C): one person each, from upload to a fixed model.

One served app for the module (its own ``TLVIZ_RUNS_DIR``); each journey opens its own browser page, i.e.
its own session, and clicks through the pages as that person would: the Teachable Machine user, the Keras 2
tutorial user, the keras-io guide user, the impatient user and the PyTorch-habit user. The models are shaped
like the real ones but small: MobileNetV2 (alpha 0.35, ``weights=None``; its BatchNormalization statistics set
from the images and its head trained briefly, except the Teachable Machine export, which is conftest's
seeded-noise one), the Keras 2 and Teachable Machine files written by ``tf_keras`` itself. Each journey saves
screenshots at its key steps (``journey_*.png`` in `browser.screenshot_dir`; on failure also where it stood
and the server log's end) and prints the seconds each step took (``pytest -s``).

Order matters for one step: the impatient user reloads while the sample's normalization comparison runs,
so that journey comes before the PyTorch-habit one, which has the same comparison computed (and stored).
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import re
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import numpy as np
import pytest

from browser import CHROMIUM, ROOT, browser_page, save_screenshot, streamlit_server

pytestmark = [pytest.mark.browser, pytest.mark.slow]

if not os.path.exists(CHROMIUM):  # CI installs it; say loudly why it did not run elsewhere
    pytest.skip(f"{CHROMIUM} not installed (apt-get install chromium)", allow_module_level=True)

#: Colours and bright-corner positions that tell the classes of a made-up image set apart.
_PALETTE = [(200, 40, 40), (40, 60, 200), (40, 180, 60), (220, 200, 40), (160, 40, 200)]
_CORNERS = [(0, 0), (0, 2), (2, 0), (2, 2), (1, 1)]
#: Weight-holding layer classes in the models below (for counting layers from tf_keras's own listing).
_WEIGHTED = {"Conv2D", "DepthwiseConv2D", "BatchNormalization", "Dense"}


# -- made-up image sets ---------------------------------------------------------------------------------

def class_images(classes, per_class: int, size: int, seed: int = 0) -> dict[str, list[np.ndarray]]:
    """Per class, `per_class` noisy ``uint8`` images of its colour with a bright square at its corner."""
    rng = np.random.default_rng(seed)
    out = {}
    third = size // 3
    for k, name in enumerate(classes):
        colour = np.array(_PALETTE[k % len(_PALETTE)], float)
        y, x = (third * c for c in _CORNERS[k % len(_CORNERS)])
        imgs = []
        for _ in range(per_class):
            arr = colour + rng.normal(0, 30, (size, size, 3))
            arr[y:y + third, x:x + third] = 255 - colour
            imgs.append(np.clip(arr, 0, 255).astype(np.uint8))
        out[name] = imgs
    return out


def write_image_zip(path: Path, images: dict[str, list[np.ndarray]], top: str = "images") -> Path:
    """A ``.zip`` of class folders of PNGs (what the sidebar's "Upload .zip" takes)."""
    from PIL import Image

    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        for name, imgs in images.items():
            for i, arr in enumerate(imgs):
                png = io.BytesIO()
                Image.fromarray(arr).save(png, "PNG")
                zf.writestr(f"{top}/{name}/{i:02d}.png", png.getvalue())
    path.write_bytes(buf.getvalue())
    return path


def stack(images: dict[str, list[np.ndarray]]) -> tuple[np.ndarray, np.ndarray]:
    x = np.concatenate([np.stack(v) for v in images.values()])
    y = np.concatenate([np.full(len(v), k) for k, v in enumerate(images.values())])
    return x, y


# -- the models ------------------------------------------------------------------------------------------

#: Run by `tf_keras` in its own process: the guide model of tools/keras2_models.py (``x / 127.5 - 1`` inside,
#: saved as TFOpLambda), its BatchNormalization statistics set from the images (a base that was "pre-trained":
#: a weights=None base's features vanish otherwise) and its head trained briefly on raw pixels, saved as .h5.
_TRAIN_KERAS2 = r"""
import sys
import numpy as np
sys.path.insert(0, sys.argv[1])
import keras2_models
import tf_keras as k

k.utils.set_random_seed(0)
data = np.load(sys.argv[2])
x, y = data["x"].astype("float32"), data["y"]
model = keras2_models.guide()
base = next(l for l in model.layers if hasattr(l, "layers"))
bns = [l for l in base.layers if isinstance(l, k.layers.BatchNormalization)]
for l in bns:
    l.momentum = 0.0
base(x / 127.5 - 1, training=True)
for l in bns:
    l.momentum = 0.99
base.trainable = False
model.compile(k.optimizers.Adam(1e-2), k.losses.SparseCategoricalCrossentropy(from_logits=True),
              metrics=["accuracy"])
model.fit(x, y, epochs=30, batch_size=len(x), verbose=0)
raw = model.evaluate(x, y, verbose=0)[1]
unit = model.evaluate(x / 255.0, y, verbose=0)[1]
base.trainable = True
model.save(sys.argv[3], save_format="h5")
np.savez(sys.argv[4], p=model.predict(x, verbose=0))
print(f"accuracy raw {raw:.3f} unit {unit:.3f}")
"""


def _calibrate_and_train_head(model, base, x, y, epochs: int) -> None:
    """Keras 3: set `base`'s BatchNormalization statistics from `x` (tf preset), then train the head (base frozen)."""
    import keras

    bns = [l for l in base.layers if isinstance(l, keras.layers.BatchNormalization)]
    for layer in bns:
        layer.momentum = 0.0
    base(x.astype("float32") / 127.5 - 1, training=True)
    for layer in bns:
        layer.momentum = 0.99
    base.trainable = False
    model.compile(keras.optimizers.Adam(1e-2), "sparse_categorical_crossentropy", metrics=["accuracy"])
    model.fit(x.astype("float32") / 127.5 - 1, y, epochs=epochs, batch_size=len(x), verbose=0)


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    """One served app for the module: ``(url, runs folder)``."""
    runs = tmp_path_factory.mktemp("journey_runs")
    with streamlit_server(env={"TLVIZ_RUNS_DIR": str(runs)}) as url:
        yield url, runs


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    return tmp_path_factory.mktemp("journey_files")


class Laps:
    """Seconds per journey step, printed (``pytest -s``, or with a failure) to keep the module's time in view."""

    def __init__(self, name: str):
        self.name, self.t0, self.last = name, time.time(), time.time()

    def __call__(self, step: str) -> None:
        now = time.time()
        print(f"[{self.name}] {step}: {now - self.last:.1f} s (total {now - self.t0:.1f} s)", flush=True)
        self.last = now


@contextlib.contextmanager
def journey_page(server, name: str, width: int = 1400, height: int = 1100):
    """`browser_page`; when the journey fails, a screenshot of where it stood and the server log's end are
    saved next to the other screenshots (``journey_<name>_FAILED.png`` / ``.log``) and named in the error."""
    with browser_page(width, height) as page:
        try:
            yield page
        except BaseException as exc:
            try:
                where = save_screenshot(page, f"journey_{name}_FAILED.png")
                log = where.with_suffix(".log")
                log.write_text(server.log_tail(20_000))
                exc.add_note(f"Screenshot at failure: {where}; server log: {log}")
            except Exception:  # the page itself may be gone
                pass
            raise


# -- driving the app ------------------------------------------------------------------------------------

def sidebar(page):
    return page.locator('[data-testid="stSidebar"]')


def no_exception(page, server=None):
    shown = page.locator('[data-testid="stException"]')
    if shown.count():
        log = server.log_tail() if server is not None else ""
        raise AssertionError(shown.first.inner_text() + ("\n--- server log ---\n" + log if log else ""))


def go(page, title: str) -> None:
    """Open a page through the sidebar's navigation and wait for its title."""
    sidebar(page).get_by_role("link", name=title).click()
    page.get_by_role("heading", name=title, exact=True).first.wait_for()


def sidebar_model(page, name: str, timeout: float = 90_000):
    """Wait until the sidebar's summary names model `name`; return that line."""
    line = sidebar(page).get_by_text(re.compile(rf"^{re.escape(name)} · input "))
    line.wait_for(timeout=timeout)
    return line


def upload_model(page, path: Path) -> None:
    sidebar(page).get_by_text("Upload", exact=True).first.click()
    sidebar(page).locator('input[type="file"]').first.set_input_files(str(path))


def upload_images(page, path: Path) -> None:
    sidebar(page).get_by_text("Upload .zip", exact=True).click()
    zip_input = sidebar(page).locator('input[type="file"]').nth(1)  # the model's uploader is the first
    zip_input.wait_for(state="attached")
    zip_input.set_input_files(str(path))


def choose(page, label: str, option: str) -> None:
    """Pick the option starting with `option` in the select box labelled `label`."""
    page.get_by_role("combobox", name=label, exact=True).click()
    page.get_by_role("option", name=re.compile("^" + re.escape(option))).first.click()


def options_of(page, label: str) -> list[str]:
    """The options of the select box labelled `label` (opens it, reads them, closes it)."""
    page.get_by_role("combobox", name=label, exact=True).click()
    opts = page.get_by_role("option")
    opts.first.wait_for()
    names = [o.inner_text() for o in opts.all()]
    page.keyboard.press("Escape")
    return names


def set_number(page, label: str, value) -> None:
    box = page.get_by_label(label, exact=True)
    box.fill(str(value))
    box.press("Enter")


def set_slider(page, label: str, value: int) -> None:
    """Move the slider labelled `label` to `value` with the keyboard, as a person using arrows would."""
    slider = page.get_by_role("slider", name=label)  # its accessible name also holds the value
    now = int(slider.get_attribute("value"))
    slider.focus()
    for _ in range(abs(value - now)):
        page.keyboard.press("ArrowRight" if value > now else "ArrowLeft")
    page.wait_for_function("([el, v]) => el.value === String(v)", arg=[slider.element_handle(), value])


def grid_rows(frame) -> list[list[str]]:
    """The body rows of an ``st.dataframe`` (its accessible table; the rows drawn so far)."""
    return [[c.inner_text() for c in row.locator('[role="gridcell"]').all()]
            for row in frame.locator('tbody [role="row"]').all()]


def metric_value(page, label_start: str) -> str:
    """The value line of the ``st.metric`` whose label starts with `label_start`."""
    m = page.locator('[data-testid="stMetric"]', has_text=label_start).first
    return m.locator('[data-testid="stMetricValue"]').inner_text().strip()


def percent(text: str) -> float:
    return float(re.search(r"([\d.]+)\s*%", text).group(1)) / 100


def held_out(labels, n_eval: int) -> np.ndarray:
    """The images a repair's "after" was measured on: all of them, or the seeded held-out half when it
    estimated something from the other half (`tlviz.repair.chain.split_halves`, seed 0, as the page says)."""
    from tlviz.repair.chain import split_halves

    if n_eval == len(labels):
        return np.arange(len(labels))
    _, held = split_halves(labels, seed=0)
    assert len(held) == n_eval, (len(held), n_eval)
    return held


def workspace_of(page) -> str:
    m = re.search(r"[?&]ws=([0-9a-f]{24})", page.url)
    assert m, page.url
    return m.group(1)


def drawn_heights(chart, mark: str) -> list[float]:
    """Heights in pixels of the marks of kind `mark` (``"bar"``, ``"rect mark"``) an Altair chart drew (SVG)."""
    chart.locator(f'[role="graphics-symbol"][aria-roledescription="{mark}"]').first.wait_for(state="attached")
    return chart.evaluate("""(el, mark) => Array.from(el.querySelectorAll('[role="graphics-symbol"]'))
        .filter(e => e.getAttribute('aria-roledescription') === mark)
        .map(e => e.getBoundingClientRect().height)""", mark)


def shot(page, name: str) -> Path:
    """`save_screenshot` with the mouse moved off the page (no tooltip over what the screenshot shows)."""
    page.mouse.move(1, 1)
    page.locator('[role="tooltip"]').first.wait_for(state="hidden")
    return save_screenshot(page, name)


def download(page, button_name: str, to: Path) -> Path:
    with page.expect_download(timeout=60_000) as got:
        page.get_by_role("button", name=button_name).click()
    got.value.save_as(to)
    return to


def leaf_weights(model, prefix: str = "") -> dict[str, list[np.ndarray]]:
    """Every leaf layer's weights by path (nested models followed), as NumPy arrays."""
    import keras

    out = {}
    for layer in model.layers:
        if isinstance(layer, keras.Model):
            out.update(leaf_weights(layer, f"{prefix}{layer.name}/"))
        elif layer.weights:
            out[prefix + layer.name] = [np.asarray(w) for w in layer.get_weights()]
    return out


def moved_layers(before: dict, after: dict) -> list[str]:
    assert set(before) == set(after), sorted(set(before) ^ set(after))
    return [p for p in before if any(not np.array_equal(a, b) for a, b in zip(before[p], after[p]))]


def analysis_jobs(runs: Path, kind: str, owner: str) -> list[dict]:
    """The analysis job folders of `kind` that workspace `owner` started (``<runs>/.jobs/*/job.json``)."""
    jobs = []
    for f in (runs / ".jobs").glob("*/job.json"):
        job = json.loads(f.read_text())
        if job.get("kind") == kind and job.get("owner") == owner:
            jobs.append(job)
    return jobs


# -- 1. Teachable Machine user ----------------------------------------------------------------------------

TM_CLASSES = ["a", "b", "c"]


def test_teachable_machine_user(served, files, keras2):
    """Export .zip + image .zip -> MobileNetV2 is the base -> a `teachable` run with augmentation, depth 10 and
    BatchNormalization trained trains exactly the head and the top 10 weight-holding base layers -> Diagnose ->
    the fine-tuned model downloads."""
    from conftest import teachable_zip

    server, runs = served
    listing = json.loads((keras2 / "teachable.json").read_text())["layers"]  # tf_keras's own listing
    weighted = [layer["path"] for layer in listing if layer["class"] in _WEIGHTED]
    base_weighted = [p for p in weighted if p.startswith("sequential_1/model1/")]  # the MobileNetV2 features
    head_weighted = [p for p in weighted if p.startswith("sequential_3/")]  # the head Sequential's two Dense
    assert len(base_weighted) > 100 and len(head_weighted) == 2
    model_zip = files / "converted_keras.zip"
    model_zip.write_bytes(teachable_zip(keras2, "".join(f"{i} {c}\n" for i, c in enumerate(TM_CLASSES))))
    images_zip = write_image_zip(files / "tm_images.zip", class_images(TM_CLASSES, 6, 64), top="my_photos")

    lap = Laps("teachable")
    with journey_page(server, "teachable") as page:
        page.goto(server)
        page.get_by_role("heading", name="Model & images").wait_for()
        upload_model(page, model_zip)
        upload_images(page, images_zip)
        sidebar_model(page, "sequential_4")
        sidebar(page).get_by_text("18 images").wait_for(timeout=60_000)
        page.get_by_text("Teachable Machine image model").first.wait_for()
        page.get_by_text("3 classes match the model's 3 outputs").wait_for()
        no_exception(page, server)
        lap("uploads")

        # Freezing status: the base is MobileNetV2 (all its weight-holding layers), the head the two Dense layers.
        go(page, "Freezing status")
        preview = "Unfreeze depth (layers with weights, counted from the top of the base)"
        depth = page.get_by_role("slider", name=preview)
        depth.wait_for()
        assert depth.get_attribute("max") == str(len(base_weighted)), depth.get_attribute("max")
        set_slider(page, preview, 10)
        page.get_by_text("Also train BatchNormalization layers in that range").click()
        page.get_by_text(re.compile(r"With depth 10, 12 layers would train")).wait_for()
        page.get_by_text("Layers that would train").click()
        table = page.locator('[data-testid="stExpander"]', has_text="Layers that would train") \
            .locator('[data-testid="stDataFrame"]')
        table.wait_for()
        table.get_by_text(head_weighted[-1], exact=True).wait_for(state="attached")
        roles = {row[0]: row[-1] for row in grid_rows(table)}
        assert roles == {**{p: "base" for p in base_weighted[-10:]}, **{p: "head" for p in head_weighted}}, roles
        no_exception(page, server)
        shot(page, "journey_teachable_layers.png")
        lap("freezing status")

        # Fine-tuning: teachable preset, augmentation, BN trained in the unfrozen part, depth 10, one epoch.
        go(page, "Fine-tuning runs")
        page.get_by_role("switch", name="Snap to block boundaries").click(force=True)
        set_slider(page, "Unfreeze depth (base layers with weights, from the top)", 10)
        page.get_by_text("Base layers that train: 5").wait_for()  # BatchNormalization still frozen here
        # The export's own preprocessing is offered, and where a Teachable Machine model starts.
        assert any(o.startswith("teachable") for o in options_of(page, "Preset"))
        assert page.get_by_role("combobox", name="Preset", exact=True).input_value().startswith("teachable")
        set_number(page, "Epochs", 1)
        page.get_by_text("Regularization, BatchNormalization and schedule").click()
        page.get_by_text("Light augmentation (flips, shifts)").click()
        page.get_by_text("train it in the unfrozen part").click()
        page.get_by_text("Base layers that train: 10").wait_for()
        lap("run configured")
        page.get_by_role("button", name="Start run").click()
        done = page.get_by_text(re.compile(r"All \d+ frozen layers show exactly zero change: freezing works"))
        done.wait_for(timeout=240_000)
        n_frozen = int(re.search(r"All (\d+) frozen", done.inner_text()).group(1))
        assert n_frozen == len(base_weighted) + len(head_weighted) - 12, done.inner_text()
        no_exception(page, server)
        lap("run")
        chart = page.locator('[data-testid="stVegaLiteChart"]', has_text="how far each layer")
        chart.scroll_into_view_if_needed()
        drawn_heights(chart, "bar")  # drawn
        shot(page, "journey_teachable_run.png")

        from tlviz.finetune import list_runs, load_run

        ws = workspace_of(page)
        listed = list_runs(runs, owner=ws)
        assert len(listed) == 1 and listed["state"].iloc[0] == "completed", listed
        rec = load_run(listed["run_id"].iloc[0], runs, owner=ws)
        assert rec.config["preset"] == "teachable" and rec.config["augment"] and rec.config["unfreeze"] == 10
        wc = rec.weight_change
        moved = sorted(wc.loc[wc["rel_change"] > 0, "path"])
        assert moved == sorted(base_weighted[-10:] + head_weighted), moved

        # Diagnose with the preset Teachable Machine's own code uses.
        go(page, "Diagnose")
        choose(page, "Preset your inference code uses", "teachable")
        lap("to Diagnose")
        page.get_by_role("button", name="Diagnose").click()
        page.get_by_text("Checks skipped").wait_for(timeout=240_000)
        no_exception(page, server)
        assert page.get_by_text("class-count-mismatch").count() == 0  # the folders are labels.txt's classes
        shot(page, "journey_teachable_diagnose.png")
        lap("diagnose")

        # Back to the run: the fine-tuned model downloads, and it moved exactly those layers.
        go(page, "Fine-tuning runs")
        out = download(page, "Download the fine-tuned model (.keras)", files / "tm_finetuned.keras")
        lap("download")

    import keras

    from tlviz.models import load_model

    original = leaf_weights(load_model(model_zip.read_bytes(), model_zip.name).model)
    tuned = leaf_weights(keras.saving.load_model(out, safe_mode=True))
    assert sorted(moved_layers(original, tuned)) == sorted(base_weighted[-10:] + head_weighted)
    lap("downloaded model checked")


# -- 2. Keras 2 tutorial user -------------------------------------------------------------------------------

K2_CLASSES = ["cat", "dog"]


@pytest.fixture(scope="module")
def keras2_tutorial(files):
    """The keras-io guide's model written by tf_keras (``x / 127.5 - 1`` inside, as TFOpLambda), head trained
    on raw pixels: ``(h5 path, image zip, tf_keras's own predictions on the images)``."""
    import importlib.util

    if importlib.util.find_spec("tf_keras") is None:
        pytest.fail("The tf_keras package is missing: `pip install -r requirements-dev.txt` installs it.")
    images = class_images(K2_CLASSES, 12, 96, seed=1)
    x, y = stack(images)
    np.savez(files / "k2_data.npz", x=x, y=y)
    script = files / "train_keras2.py"
    script.write_text(_TRAIN_KERAS2)
    h5 = files / "tutorial_model.h5"
    preds = files / "k2_preds.npz"
    done = subprocess.run([sys.executable, str(script), str(ROOT / "tools"), str(files / "k2_data.npz"), str(h5),
                           str(preds)],
                          capture_output=True, text=True, timeout=600, env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"})
    assert done.returncode == 0, done.stderr[-3000:]
    raw, unit = map(float, re.search(r"accuracy raw ([\d.]+) unit ([\d.]+)", done.stdout).groups())
    assert raw >= 0.9 and unit <= 0.6, done.stdout  # trained for raw pixels: its own scaling does the rest
    return h5, write_image_zip(files / "pets.zip", images, top="pets"), np.load(preds)["p"]


def test_keras2_tutorial_user(served, files, keras2_tutorial):
    """A Keras 2 .h5 with the rescaling inside -> converted on upload (said, downloadable) -> Normalization
    shows it wants raw pixels -> Diagnose names the double normalization -> the repair's copy, fed what the
    user's code sends, scores as promised."""
    import keras

    from tlviz.imagesets import load_image_set
    from tlviz.presets import apply_preset

    server, runs = served
    h5, images_zip, keras2_preds = keras2_tutorial
    lap = Laps("keras2")
    with journey_page(server, "keras2") as page:
        page.goto(server)
        page.get_by_role("heading", name="Model & images").wait_for()
        upload_model(page, h5)
        upload_images(page, images_zip)
        sidebar_model(page, "guide_model")
        sidebar(page).get_by_text("24 images").wait_for(timeout=60_000)
        converted = page.get_by_text(re.compile(r"^Converted from a Keras 2")).first
        converted.wait_for()
        assert re.search(r"2 TensorFlow arithmetic op\(s\) \(such as .*\) rebuilt as `?Rescaling`? layers",
                         converted.inner_text()), converted.inner_text()
        page.get_by_text("Preprocessing built into the model (it expects raw 0–255 pixels)").wait_for()
        page.get_by_text("2 classes match the model's 2 outputs").wait_for()
        no_exception(page, server)
        shot(page, "journey_keras2_converted.png")
        out = download(page, "Download the converted model (.keras)", files / "tutorial_converted.keras")
        lap("upload, converted download")
        # The converted file predicts what tf_keras predicted (plain Keras 3, nothing from tlviz).
        x, _ = stack(class_images(K2_CLASSES, 12, 96, seed=1))
        again = keras.saving.load_model(out, safe_mode=True)
        np.testing.assert_allclose(np.asarray(again.predict(x.astype("float32"), verbose=0)), keras2_preds,
                                   atol=1e-3, rtol=1e-3)

        # Normalization: the user's code applies `tf` on top of the model's own scaling.
        go(page, "Normalization")
        page.get_by_text("It normalizes its input itself, so it expects").wait_for()
        choose(page, "Preset your inference code uses", "tf")
        page.get_by_role("button", name="Compare").click()
        best = page.locator('[data-testid="stAlert"]', has_text="Best setting:").first
        best.wait_for(timeout=240_000)
        assert "Best setting: raw (" in best.inner_text(), best.inner_text()
        page.get_by_text("What this means for your inference code").wait_for()
        no_exception(page, server)
        shot(page, "journey_keras2_normalization.png")
        lap("normalization")

        # Diagnose (the preset carries over), then repair the double normalization.
        go(page, "Diagnose")
        assert page.get_by_role("combobox", name="Preset your inference code uses").input_value().startswith("tf")
        page.get_by_role("button", name="Diagnose").click()
        page.get_by_text("Checks skipped").wait_for(timeout=240_000)
        page.get_by_text(re.compile(r"The model normalizes its input itself, and your inference code applies `?tf")) \
            .first.wait_for()
        no_exception(page, server)
        lap("diagnose")
        box = page.locator('[data-testid="stVerticalBlock"]').filter(
            has_text=re.compile(r"Repair double-normalization")).filter(
            has=page.get_by_role("button", name="Repair", exact=True)).last
        box.get_by_text("a copy without the model's own scaling").click()
        box.get_by_role("button", name="Repair", exact=True).click()
        box.get_by_text("After (repaired file, fed").wait_for(timeout=240_000)
        before = percent(metric_value(box, "Before (original"))
        after = percent(metric_value(box, "After (repaired file"))
        n_eval = int(metric_value(box, "Held-out images"))
        assert after >= 0.9 and after - before >= 0.3, (before, after)
        no_exception(page, server)
        box.get_by_text("After (repaired file, fed").scroll_into_view_if_needed()
        shot(page, "journey_keras2_repaired.png")
        repaired = download(page, "Download the repaired .keras", files / "tutorial_repaired.keras")
        lap("repair")

        # Made current: the sidebar and the pages show the repaired copy, without its own scaling now.
        box.get_by_role("button", name="Make this the current model").click()
        page.get_by_text(re.compile(r"is the current model; the one before it is in the sidebar's History")).wait_for()
        go(page, "Model & images")
        page.get_by_text("No preprocessing layers (Rescaling / Normalization) at the model's input").wait_for()
        no_exception(page, server)
        lap("made current")

    # What the page promised, in plain Keras: the repaired file fed `tf` on the images it was measured on.
    ims = load_image_set(images_zip, (96, 96), 3)
    model = keras.saving.load_model(repaired, safe_mode=True)
    held = held_out(ims.labels, n_eval)
    pred = np.argmax(model.predict(apply_preset(ims.images[held], "tf"), verbose=0), axis=1)
    assert abs(float(np.mean(pred == ims.labels[held])) - after) < 0.0006, (np.mean(pred == ims.labels[held]), after)


# -- 3. keras-io guide user ---------------------------------------------------------------------------------

GUIDE_CLASSES = ["daisy", "iris", "rose", "sunflower", "tulip"]  # sorted: the folders' order is the outputs'


@pytest.fixture(scope="module")
def guide_files(files):
    """The keras-io guide's fine-tuning model (conftest `guide_model`: the base called with ``training=False``,
    then unfrozen), its head trained briefly, saved as .keras; and a matching image set .zip."""

    from conftest import guide_model

    images = class_images(GUIDE_CLASSES, 6, 96, seed=2)
    x, y = stack(images)
    model, base = guide_model()
    _calibrate_and_train_head(model, base, x, y, epochs=40)
    base.trainable = True  # the guide's second phase
    path = files / "guide.keras"
    model.save(path)
    return path, write_image_zip(files / "flowers.zip", images, top="flowers")


def test_keras_io_guide_user(served, files, guide_files):
    """A base called with training=False, a two-phase run (head first, then the top 10 weight-holding layers
    with BatchNormalization kept frozen): no BatchNormalization statistic moves, though the installed Keras
    passes fit's training=True into such a base."""
    import keras

    from tlviz.finetune import list_runs, load_run

    server, runs = served
    model_path, images_zip = guide_files
    original = keras.saving.load_model(model_path, safe_mode=True)
    base = original.get_layer(next(l.name for l in original.layers if isinstance(l, keras.Model)))
    base_weighted = [f"{base.name}/{l.name}" for l in base.layers if l.weights]
    bn = {f"{base.name}/{l.name}" for l in base.layers if isinstance(l, keras.layers.BatchNormalization)}
    trains = [p for p in base_weighted[-10:] if p not in bn] + ["head"]
    lap = Laps("guide")
    with journey_page(server, "guide") as page:
        page.goto(server)
        page.get_by_role("heading", name="Model & images").wait_for()
        upload_model(page, model_path)
        upload_images(page, images_zip)
        sidebar_model(page, "guide")
        sidebar(page).get_by_text("30 images").wait_for(timeout=60_000)
        go(page, "Freezing status")
        page.get_by_text(re.compile("tlviz runs it that way in its diagnosis and fine-tuning runs")).wait_for()
        no_exception(page, server)
        lap("uploads, freezing status")

        go(page, "Fine-tuning runs")
        page.get_by_role("switch", name="Snap to block boundaries").click(force=True)
        set_slider(page, "Unfreeze depth (base layers with weights, from the top)", 10)
        page.get_by_text(f"Base layers that train: {len(trains) - 1}").wait_for()
        choose(page, "Preset", "tf")  # the guide's preprocess_input
        set_number(page, "Epochs", 1)
        page.get_by_text("Regularization, BatchNormalization and schedule").click()
        assert page.get_by_role("radio", name=re.compile("keep frozen")).is_checked()
        page.get_by_text("Train the new head first (two phases)").click()
        set_number(page, "Head-phase epochs", 1)
        page.get_by_role("button", name="Start run").click()
        done = page.get_by_text(re.compile(r"All \d+ frozen layers show exactly zero change: freezing works"))
        done.wait_for(timeout=240_000)
        assert int(re.search(r"All (\d+) frozen", done.inner_text()).group(1)) == len(base_weighted) + 1 - len(trains)
        no_exception(page, server)
        chart = page.locator('[data-testid="stVegaLiteChart"]', has_text="how far each layer")
        chart.scroll_into_view_if_needed()
        # What the user reads off the charts: the largest mover's bar, the confusion matrix's cells.
        bars = drawn_heights(chart, "bar")
        # The chart asks for a 240-px plot: the largest mover's bar spans most of it, whatever the labels take.
        assert max(bars) >= 150, \
            f"the weight-change chart of {len(bars)} layers draws its tallest bar {max(bars):.1f} px"
        cells = drawn_heights(page.locator('[data-testid="stVegaLiteChart"]', has_text="confusion"), "rect mark")
        assert min(cells) >= 30, \
            f"the confusion matrix of {len(GUIDE_CLASSES)} classes draws cells {min(cells):.1f} px high"
        shot(page, "journey_guide_run.png")
        lap("two-phase run")
        out = download(page, "Download the fine-tuned model (.keras)", files / "guide_finetuned.keras")

    ws = workspace_of(page)
    listed = list_runs(runs, owner=ws)
    assert len(listed) == 1 and listed["state"].iloc[0] == "completed", listed
    rec = load_run(listed["run_id"].iloc[0], runs, owner=ws)
    assert rec.config["two_phase"] and rec.config["bn"] == "frozen" and rec.config["unfreeze"] == 10
    tuned = keras.saving.load_model(out, safe_mode=True)
    before, after = leaf_weights(original), leaf_weights(tuned)
    moved = moved_layers(before, after)
    assert sorted(moved) == sorted(trains), moved  # the run did train the top of the base ...
    for path in sorted(bn):  # ... and every BatchNormalization layer, its moving statistics included, is as it was
        layer = tuned.get_layer(base.name).get_layer(path.split("/")[-1])
        was = original.get_layer(base.name).get_layer(path.split("/")[-1])
        np.testing.assert_array_equal(np.asarray(layer.moving_mean), np.asarray(was.moving_mean), err_msg=path)
        np.testing.assert_array_equal(np.asarray(layer.moving_variance), np.asarray(was.moving_variance), err_msg=path)
    lap("downloaded model checked")


# -- 4. Impatient user --------------------------------------------------------------------------------------

SAMPLE = "digits_base"


@pytest.fixture(scope="module")
def impatient_model(files):
    """A model that takes about a second to load (MobileNetV2 alpha 1.0 at 128, weights=None, 9.6 MB), with the
    sample image set's 5 outputs: ``(path, name, total parameters)``."""
    import keras

    keras.utils.set_random_seed(0)
    base = keras.applications.MobileNetV2(weights=None, input_shape=(128, 128, 3), alpha=1.0, include_top=False)
    inputs = keras.Input((128, 128, 3))
    x = keras.layers.GlobalAveragePooling2D()(base(inputs, training=False))
    model = keras.Model(inputs, keras.layers.Dense(5, activation="softmax", name="digit")(x), name="impatient_net")
    path = files / "impatient_net.keras"
    model.save(path)
    return path, model.name, model.count_params()


def _depth_steps(path) -> int:
    """The Fine-tuning page's unfreeze-depth control's last step for the model file at `path`."""
    from tlviz.finetune import depth_choices
    from tlviz.layers import layer_table
    from tlviz.models import load_model

    return len(depth_choices(layer_table(load_model(path).model))) - 1


def pages_show(page, name: str, total_params: int, depth_steps: int, sample: bool) -> None:
    """Every page measures the model the sidebar names: its name, its parameter count, its depth control, and
    (for a model that is not the sample, so nothing runs by itself) the pages' offers to measure it by name."""
    sidebar_model(page, name)
    go(page, "Model & images")
    page.get_by_role("heading", name=f"Model: {name}").wait_for()
    go(page, "Freezing status")
    assert metric_value(page, "Total params") == f"{total_params:,}"
    go(page, "Fine-tuning runs")
    page.get_by_role("slider", name="Unfreeze depth").first.wait_for()
    assert page.get_by_role("slider", name="Unfreeze depth").first.get_attribute("max") == str(depth_steps)
    go(page, "Normalization")
    if sample:
        best = page.locator('[data-testid="stAlert"]', has_text="Best setting:").first
        best.wait_for(timeout=180_000)
        assert "Best setting: tf (" in best.inner_text(), best.inner_text()  # digits_base was trained on tf
    else:
        page.get_by_text(re.compile(rf"Press Compare to evaluate {re.escape(name)} on \d+ images")).wait_for()
    go(page, "Diagnose")
    if sample:
        page.get_by_text("Checks skipped").wait_for(timeout=180_000)
        page.get_by_text(re.compile(r"the model expects `?tf")).first.wait_for()
    else:
        page.get_by_text(re.compile(rf"Press Diagnose to check {re.escape(name)} on \d+ images")).wait_for()
    sidebar_model(page, name)
    no_exception(page)


def test_impatient_user(served, files, impatient_model, base_model_path):
    """(a) picks the image source right after choosing a model file; (d) reloads during a comparison; (c)
    double-clicks Start; (b) starts a run and looks at another page meanwhile: nothing lost, nothing run twice,
    every page shows the model the sidebar shows."""
    from tlviz.finetune import list_runs, load_run

    server, runs = served
    path, name, n_params = impatient_model
    steps, sample_steps = _depth_steps(path), _depth_steps(base_model_path)
    assert steps != sample_steps
    lap = Laps("impatient")
    with journey_page(server, "impatient") as page:
        page.goto(server)
        page.get_by_role("heading", name="Model & images").wait_for()
        sidebar_model(page, SAMPLE)
        ws = workspace_of(page)

        # (a) Choose the model file, then within 0.2 s the next thing: the image set's "Upload .zip".
        sidebar(page).get_by_text("Upload", exact=True).first.click()
        sidebar(page).locator('input[type="file"]').first.set_input_files(str(path))
        page.wait_for_timeout(200)  # the impatient human's gap
        loading = page.get_by_text("Loading model…").count() > 0
        sidebar(page).get_by_text("Upload .zip", exact=True).click()
        sidebar_model(page, name, timeout=60_000)
        shot(page, "journey_impatient_switched.png")
        pages_show(page, name, n_params, steps, sample=False)
        lap(f"(a) upload interrupted {'while loading' if loading else '(load not seen)'}, every page checked")

        # (a2) Start clicked twice 0.2 s apart on the uploaded model: the first click's run is still saving its
        # inputs (seconds for this model) when the second lands, in a second script run: one run, not two.
        go(page, "Fine-tuning runs")
        set_number(page, "Epochs", 1)
        start = page.get_by_role("button", name="Start run")
        start.click()
        page.wait_for_timeout(200)
        start.click(force=True)  # force: lands even once the button is disabled (then it does nothing)
        page.get_by_text("Download the fine-tuned model").first.wait_for(timeout=240_000)
        page.wait_for_timeout(2000)
        uploaded_runs = set(list_runs(runs, owner=ws)["run_id"])
        assert len(uploaded_runs) == 1, list_runs(runs, owner=ws)[["run_id", "state"]]
        no_exception(page, server)
        lap("(a2) Start twice on the uploaded model")

        # (d) Back to the sample; the Normalization page starts its comparison; reload while it runs.
        sidebar(page).get_by_text("Sample", exact=True).first.click()
        sidebar_model(page, SAMPLE)
        go(page, "Normalization")
        page.locator('[data-testid="stProgress"]').first.wait_for(timeout=60_000)
        assert len(analysis_jobs(runs, "normalize", ws)) == 1, "the comparison ran before this journey"
        page.reload()
        page.get_by_role("heading", name="Normalization").wait_for()
        best = page.locator('[data-testid="stAlert"]', has_text="Best setting:").first
        best.wait_for(timeout=180_000)
        sidebar_model(page, SAMPLE)
        assert workspace_of(page) == ws
        assert len(analysis_jobs(runs, "normalize", ws)) == 1, analysis_jobs(runs, "normalize", ws)
        no_exception(page, server)
        shot(page, "journey_impatient_after_reload.png")
        lap("(d) reload during a comparison")

        # (c) Double-click Start: one run.
        go(page, "Fine-tuning runs")
        set_number(page, "Epochs", 1)
        page.get_by_role("button", name="Start run").dblclick()
        page.get_by_text("freezing works").first.wait_for(timeout=180_000)
        listed = list_runs(runs, owner=ws)
        assert len(listed) == 2, listed[["run_id", "state"]]  # (a2)'s and this one
        first = next(r for r in listed["run_id"] if r not in uploaded_runs)
        no_exception(page, server)
        lap("(c) double-click")

        # (b) Start a run, look at another page meanwhile, come back: it went on and shows, as set up.
        set_number(page, "Epochs", 3)
        settings = run_settings(page)
        assert settings == ("tf", "3"), settings  # the sample records `tf`; the Normalization page found it too
        page.get_by_role("button", name="Start run").click()
        page.locator('[data-testid="stProgress"]').first.wait_for(timeout=60_000)
        go(page, "Model & images")
        page.get_by_role("heading", name=f"Model: {SAMPLE}").wait_for()
        page.wait_for_timeout(1000)  # reading the other page
        go(page, "Fine-tuning runs")
        back = run_settings(page)
        assert back == settings, f"coming back to the Fine-tuning page changed its settings: {back} (were {settings})"
        listed = list_runs(runs, owner=ws)
        assert len(listed) == 3, listed[["run_id", "state"]]
        second = next(r for r in listed["run_id"] if r != first and r not in uploaded_runs)
        if listed.set_index("run_id").loc[second, "state"] in ("queued", "running"):
            page.locator('[data-testid="stProgress"]').first.wait_for()  # followed again, not forgotten
        page.get_by_text(re.compile(rf"{second} · completed")).first.wait_for(timeout=180_000)
        assert len(load_run(second, runs, owner=ws).history) == 3
        assert len(list_runs(runs, owner=ws)) == 3
        no_exception(page, server)
        shot(page, "journey_impatient_run_followed.png")
        lap("(b) navigate away and back")
        pages_show(page, SAMPLE, load_sample_params(base_model_path), sample_steps, sample=True)
        lap("every page shows the sample")


def run_settings(page) -> tuple[str, str]:
    """The Fine-tuning page's chosen preset and epochs, as shown."""
    preset = page.get_by_role("combobox", name="Preset", exact=True).input_value().split(" ")[0]
    return preset, page.get_by_label("Epochs", exact=True).input_value()


def load_sample_params(path) -> int:
    import keras

    return keras.saving.load_model(path, safe_mode=True).count_params()


# -- 5. PyTorch-habit user ----------------------------------------------------------------------------------

def test_pytorch_habit_user(served, files, guide_files):
    """Inference code that prepares images the torch way, on models trained on `tf` inputs. The preloaded sample
    shrugs it off (a point or two): the Normalization page still ranks `tf` first and shows what changes. On the
    user's own model, which it breaks, Normalization names the mismatch, Diagnose's repair bakes the conversion
    in, and the repaired download, fed `torch` in plain Keras, scores what the page promised."""
    import keras

    from tlviz.imagesets import load_image_set
    from tlviz.presets import apply_preset

    server, runs = served
    model_path, images_zip = guide_files  # a MobileNetV2 whose head was trained on `tf` inputs
    lap = Laps("pytorch")
    with journey_page(server, "pytorch") as page:
        # The sample first (the app preloads it): what the user's torch preparation costs there.
        page.goto(server + "/normalization")
        page.get_by_role("heading", name="Normalization").wait_for()
        sidebar_model(page, SAMPLE)
        choose(page, "Preset your inference code uses", "torch")
        best = page.locator('[data-testid="stAlert"]', has_text="Best setting:").first
        best.wait_for(timeout=180_000)
        assert "Best setting: tf (" in best.inner_text(), best.inner_text()
        changed = page.get_by_text(re.compile(r"^\d+ of \d+ images get another prediction with `?torch`? than with"))
        changed.wait_for()
        assert int(changed.inner_text().split()[0]) > 0, changed.inner_text()
        no_exception(page, server)
        lap("the sample")

        # Their own model, trained on `tf` inputs.
        upload_model(page, model_path)
        upload_images(page, images_zip)
        sidebar_model(page, "guide")
        sidebar(page).get_by_text("30 images").wait_for(timeout=60_000)
        assert page.get_by_role("combobox", name="Preset your inference code uses").input_value().startswith("torch")
        page.get_by_role("button", name="Compare").click()
        best.wait_for(timeout=240_000)
        assert "Best setting: tf (" in best.inner_text(), best.inner_text()
        named = page.get_by_text(re.compile(r"Your inference preset `?torch`? is not the one the model expects \(`?tf"))
        named.wait_for()
        no_exception(page, server)
        named.scroll_into_view_if_needed()
        shot(page, "journey_pytorch_normalization.png")
        lap("normalization names it")

        go(page, "Diagnose")
        assert page.get_by_role("combobox", name="Preset your inference code uses").input_value().startswith("torch")
        page.get_by_role("button", name="Diagnose").click()
        page.get_by_text("Checks skipped").wait_for(timeout=240_000)
        page.get_by_text(re.compile(r"Your inference preset `?torch`? scores [\d.]+%; the model expects `?tf")) \
            .first.wait_for()
        lap("diagnose")
        box = page.locator('[data-testid="stVerticalBlock"]').filter(
            has_text=re.compile(r"Repair normalization-mismatch")).filter(
            has=page.get_by_role("button", name="Repair", exact=True)).last
        box.get_by_text("what my code sends").click()
        box.get_by_role("button", name="Repair", exact=True).click()
        box.get_by_text("After (repaired file, fed").wait_for(timeout=240_000)
        assert "fed torch" in box.locator('[data-testid="stMetric"]', has_text="After (repaired file").inner_text()
        before = percent(metric_value(box, "Before (original"))
        after = percent(metric_value(box, "After (repaired file"))
        n_eval = int(metric_value(box, "Held-out images"))
        assert after >= 0.9 and after - before >= 0.3, (before, after)
        no_exception(page, server)
        box.get_by_text("After (repaired file, fed").scroll_into_view_if_needed()
        shot(page, "journey_pytorch_repaired.png")
        repaired = download(page, "Download the repaired .keras", files / "pytorch_repaired.keras")
        lap("repaired")

    # Plain Keras, the user's own torch preparation: the promised accuracy on the images it was measured on.
    model = keras.saving.load_model(repaired, safe_mode=True)
    ims = load_image_set(images_zip, tuple(model.input_shape[1:3]), 3)
    held = held_out(ims.labels, n_eval)
    pred = np.argmax(model.predict(apply_preset(ims.images[held], "torch"), verbose=0), axis=1)
    got = float(np.mean(pred == ims.labels[held]))
    assert abs(got - after) < 0.0006, (got, after, n_eval)
    lap("download scores as promised")
