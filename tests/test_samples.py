"""The committed samples are what tlviz.samples builds, small, and as good as documented."""

import json

import numpy as np
from PIL import Image

from tlviz.presets import apply_preset
from tlviz.samples import SAMPLES_DIR, digit_images


def test_samples_under_5_mb():
    total = sum(p.stat().st_size for p in SAMPLES_DIR.rglob("*") if p.is_file())
    assert total < 5 * 1024 * 1024


def test_committed_images_are_the_deterministic_build():
    images, labels = digit_images()
    for cls in (0, 4, 5, 9):
        idx = np.flatnonzero(labels == cls)[:3]
        folder = SAMPLES_DIR / ("digits_0_4" if cls < 5 else "digits_5_9") / str(cls)
        for k, i in enumerate(idx):
            committed = np.asarray(Image.open(folder / f"{cls}_{k:04d}.png").convert("RGB"))
            np.testing.assert_array_equal(committed, images[i])


def test_base_sample_accuracy_and_metadata(loaded_base, base_images):
    meta = json.loads((SAMPLES_DIR / "digits_base.json").read_text())
    assert meta["preset"] == "tf" and meta["heldout_accuracy"] >= 0.97
    probs = loaded_base.model.predict(apply_preset(base_images.images, "tf"), verbose=0)
    acc = float((probs.argmax(1) == base_images.labels).mean())
    assert acc >= 0.97
    # the wrong preset really hurts: what the Normalization page is for
    wrong = float((loaded_base.model.predict(apply_preset(base_images.images, "unit"), verbose=0).argmax(1)
                   == base_images.labels).mean())
    assert wrong < acc - 0.1
