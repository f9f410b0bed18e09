"""Shared fixtures: the committed samples, tiny models and image folders."""

from __future__ import annotations

import os
import sys
import tempfile
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
# Runs and jobs of a test that names no runs folder go to one of this process's own, never to the user's
# ~/.tlviz (and never to another test process's, when the suite runs in parallel).
os.environ["TLVIZ_RUNS_DIR"] = tempfile.mkdtemp(prefix="tlviz-test-runs-")

SAMPLES = ROOT / "sample_models"


@pytest.fixture(scope="session")
def samples_dir() -> Path:
    return SAMPLES


@pytest.fixture(scope="session")
def base_model_path() -> Path:
    return SAMPLES / "digits_base.keras"


@pytest.fixture(scope="session")
def frozen_model_path() -> Path:
    return SAMPLES / "digits_frozen.keras"


@pytest.fixture(scope="session")
def digits_0_4() -> Path:
    return SAMPLES / "digits_0_4"


@pytest.fixture(scope="session")
def digits_5_9() -> Path:
    return SAMPLES / "digits_5_9"


@pytest.fixture(scope="session")
def loaded_base(base_model_path):
    from tlviz.models import load_model

    return load_model(base_model_path)


@pytest.fixture(scope="session")
def base_images(loaded_base, digits_0_4):
    from tlviz.imagesets import load_image_set

    return load_image_set(digits_0_4, loaded_base.image_size, loaded_base.channels)


@pytest.fixture()
def runs(tmp_path, monkeypatch) -> Path:
    """A fresh runs folder (``TLVIZ_RUNS_DIR``) for one test."""
    d = tmp_path / "runs"
    monkeypatch.setenv("TLVIZ_RUNS_DIR", str(d))
    return d


@pytest.fixture(scope="module")
def module_runs(tmp_path_factory):
    """A fresh runs folder (``TLVIZ_RUNS_DIR``) shared by the tests of one module (e.g. one AppTest page)."""
    d = tmp_path_factory.mktemp("runs")
    mp = pytest.MonkeyPatch()
    mp.setenv("TLVIZ_RUNS_DIR", str(d))
    yield d
    mp.undo()


def write_image(path: Path, size=(20, 20), mode="RGB", color=(200, 30, 30), fmt=None) -> Path:
    """Write a small image file; helper for tests that build image folders."""
    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(abs(hash(path.name)) % 2**32)
    if mode in ("RGB", "RGBA", "CMYK"):
        n = len(mode)
        arr = rng.integers(0, 255, (size[1], size[0], n), dtype=np.uint8)
        img = Image.fromarray(arr) if mode != "CMYK" else Image.fromarray(arr[..., :3]).convert("CMYK")
    elif mode == "I;16":
        arr = rng.integers(0, 65535, (size[1], size[0]), dtype=np.uint16)
        img = Image.fromarray(arr)
    else:
        img = Image.fromarray(rng.integers(0, 255, (size[1], size[0]), dtype=np.uint8)).convert(mode)
    img.save(path, format=fmt)
    return path


#: Keras 2 files `tools/keras2_models.py` writes for the tests (plain, and the older spelling).
KERAS2_MODELS = ("mobilenet", "teachable", "resnet", "cnn", "guide", "mixed", "stacked")


@pytest.fixture(scope="session")
def keras2(tmp_path_factory) -> Path:
    """Genuine Keras 2 `.h5` files with tf_keras's own predictions (see tools/keras2_models.py)."""
    import importlib.util
    import subprocess

    if importlib.util.find_spec("tf_keras") is None:
        pytest.fail("The tf_keras package is missing: `pip install -r requirements-dev.txt` installs it.")
    out = tmp_path_factory.mktemp("keras2")
    done = subprocess.run([sys.executable, str(ROOT / "tools" / "keras2_models.py"), str(out), *KERAS2_MODELS,
                           "--legacy"], capture_output=True, text=True, timeout=600,
                          env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"})
    assert done.returncode == 0, done.stderr[-3000:]
    return out


def teachable_zip(keras2: Path, labels: str | None, folder: str = "") -> bytes:
    """A Teachable Machine Keras export zip around the generated `teachable.h5`."""
    import io
    import zipfile

    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        zf.writestr(folder + "keras_model.h5", (keras2 / "teachable.h5").read_bytes())
        if labels is not None:
            zf.writestr(folder + "labels.txt", labels)
    return buf.getvalue()


def guide_model(pin: bool = True, softmax: bool = True):
    """The keras-io transfer-learning guide's fine-tuning phase (issue 13), uncompiled.

    A MobileNetV2 base (alpha 0.35, 96x96, ``weights=None``) frozen, called as ``base(x, training=False)``
    (or without it, `pin=False`), pooling, dropout, a 5-class head; then ``base.trainable = True``.

    Returns:
        ``(model, base)``.
    """
    import keras

    keras.utils.set_random_seed(0)
    base = keras.applications.MobileNetV2(weights=None, input_shape=(96, 96, 3), alpha=0.35, include_top=False)
    base.trainable = False
    inputs = keras.Input((96, 96, 3))
    x = base(inputs, training=False) if pin else base(inputs)
    x = keras.layers.GlobalAveragePooling2D(name="pool")(x)
    x = keras.layers.Dropout(0.2, name="dropout")(x)
    outputs = keras.layers.Dense(5, activation="softmax" if softmax else None, name="head")(x)
    model = keras.Model(inputs, outputs, name="guide")
    base.trainable = True
    return model, base


#: The end-to-end tier: whole journeys in a real browser, a real Ray cluster, every benchmark's smoke run, the
#: planted-fault matrix, every pair of run options and a real `pip install`. `python -m pytest` leaves them out
#: (pytest.ini); `python -m pytest -m e2e` runs them; CI (.ci/run) runs both.
E2E_FILES = ("test_journeys.py", "test_browser.py", "test_chart_legibility.py", "test_browser_try.py",
             "test_bench_smoke.py", "test_ray.py", "test_truth_matrix.py", "test_finetune_combos.py",
             "test_packaging.py", "test_signin_browser.py", "test_diskcap_jobs.py")


@pytest.hookimpl(tryfirst=True)
def pytest_collection_modifyitems(config, items):
    for item in items:
        if item.path.name in E2E_FILES:
            item.add_marker(pytest.mark.e2e)


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """One served app per test module (real-browser tests), with its own runs folder; yields its URL."""
    from browser import streamlit_server

    with streamlit_server(env={"TLVIZ_RUNS_DIR": str(tmp_path_factory.mktemp("served_runs"))}) as url:
        yield url
