"""The finding card's galleries (`ui.widgets`): ranked suspects with Grad-CAM, duplicate pairs side by side.

A small Streamlit script loads the sample as the app does (`ui.init_state`), plants label errors
or copies in the session's image set, diagnoses it with the real engine and draws the cards;
the Grad-CAM toggle runs a real worker job (`tlviz.jobs`, kind ``"gradcam"``).
"""

from __future__ import annotations

from pathlib import Path

import keras
from apptest_helpers import settle
from streamlit.testing.v1 import AppTest

SCRIPT = '''
from dataclasses import replace

import numpy as np
import streamlit as st

import ui
from tlviz.diagnose import diagnose

ui.init_state()
loaded, images = ui.current()
plant = st.session_state.get("plant", "labels")
if plant == "labels":  # 5 % of the images filed under the next class
    labels = images.labels.copy()
    moved = np.arange(0, len(labels), 20)
    labels[moved] = (labels[moved] + 1) % 5
    report = diagnose(loaded, replace(images, labels=labels), "tf", checks=["likely-mislabelled"])
elif plant == "order":  # every class in the next class's folder: the model's output order differs
    if "planted" not in st.session_state:  # once: a rerun must not shift the labels again
        st.session_state["images"] = st.session_state["planted"] = replace(images, labels=(images.labels + 1) % 5)
    images = st.session_state["planted"]
    report = diagnose(loaded, images, "tf", checks=["label-order-mismatch"])
else:  # three '0's filed under '4' as well
    extra = np.flatnonzero(images.labels == 0)[:3]
    planted = replace(images, images=np.concatenate([images.images, images.images[extra]]),
                      labels=np.concatenate([images.labels, [4, 4, 4]]),
                      files=images.files + [f"4/copy_{k}.png" for k in range(3)], orientations=[])
    st.session_state["images"] = planted
    images = planted
    report = diagnose(loaded, planted, "tf", checks=["duplicate-images"])
ui.finding_cards(report.findings, evidence=True, images=images)
'''


def _app(plant: str) -> AppTest:
    at = AppTest.from_string(SCRIPT, default_timeout=180)
    at.session_state["plant"] = plant
    at.run()
    assert not at.exception, at.exception
    return at


def test_suspects_gallery_and_its_gradcam(module_runs):
    at = _app("labels")
    captions = [i.caption for element in at.get("image") for i in element.proto.imgs]
    assert len(captions) == 12 and all(c.startswith("label '") and "→ probe '" in c for c in captions)
    assert any("Ranked suspects" in c.value for c in at.caption)
    at.toggle(key="card_likely-mislabelled_gradcam").set_value(True).run()
    assert not at.exception
    settle(at, "card_likely-mislabelled_job")
    shown = [i.caption for element in at.get("image") for i in element.proto.imgs]
    assert len(shown) == 12 and all(c.startswith("tf: explains '") for c in shown)
    assert any("Grad-CAM at 'block3_relu'" in c.value for c in at.caption)


def test_duplicate_pairs_side_by_side(module_runs):
    at = _app("copies")
    pairs = [[i.caption for i in element.proto.imgs] for element in at.get("image")]
    assert len(pairs) == 3 and all(p[0].startswith("0: ") and p[1].startswith("4: copy_") for p in pairs)
    assert sum("exact copy" in c.value for c in at.caption) == 3


def test_label_order_confusion_cells_show_their_images_and_where_the_model_looks(module_runs):
    at = _app("order")
    cell = at.selectbox(key="card_label-order-mismatch_cell")
    first = cell.options[0]
    assert "→ output" in first and not first.startswith("1 → output 1 ")  # the largest cell off the diagonal
    images = at.session_state["images"]
    true_name, count = first.split(" → ")[0], int(first.split(": ")[-1].split()[0])
    captions = [i.caption for element in at.get("image") for i in element.proto.imgs]
    assert len(captions) == min(count, 12)
    shown_classes = {images.class_names[images.labels[i]] for i, f in enumerate(images.files)
                     if Path(f).stem in captions}
    assert shown_classes == {true_name}
    at.toggle(key="card_label-order-mismatch_gradcam").set_value(True).run()
    assert not at.exception
    settle(at, "card_label-order-mismatch_job")
    shown = [i.caption for element in at.get("image") for i in element.proto.imgs]
    assert len(shown) == min(count, 12) and all(c.startswith("tf: explains '") for c in shown)
    if len(cell.options) > 1:
        at.selectbox(key="card_label-order-mismatch_cell").select_index(1).run()
        assert not at.exception


GALLERY_OF_ANOTHER_MODEL = '''
import numpy as np
import streamlit as st

import ui
from tlviz.models import load_model
from ui.widgets import GalleryEntry, gallery

ui.init_state()
loaded, images = ui.current()
other = load_model(st.session_state["other_model"])  # e.g. a fine-tuning run's saved model
cell = np.flatnonzero(images.labels == 2)[:4]  # a confusion cell's images
gallery(images, [GalleryEntry(int(i), images.files[i], ("tf",)) for i in cell], key="cell", model=other)
'''


def test_a_gallery_explains_another_model_than_the_current_one(module_runs, tmp_path):
    """What a fine-tuning run's confusion cell needs: the heatmaps of the run's model, not the loaded one."""
    inp = keras.Input((32, 32, 3))
    x = keras.layers.Conv2D(3, 3, padding="same", activation="relu", name="run_conv")(inp)
    out = keras.layers.Dense(5, activation="softmax")(keras.layers.GlobalAveragePooling2D()(x))
    keras.Model(inp, out, name="run_model").save(tmp_path / "run.keras")
    at = AppTest.from_string(GALLERY_OF_ANOTHER_MODEL, default_timeout=180)
    at.session_state["other_model"] = str(tmp_path / "run.keras")
    at.run()
    assert not at.exception
    assert len(at.get("image")) == 4
    at.toggle(key="cell_gradcam").set_value(True).run()
    settle(at, "cell_job")
    assert any("Grad-CAM at 'run_conv' (32×32 grid" in c.value for c in at.caption)
    assert all(i.caption.startswith("tf: explains '") for element in at.get("image") for i in element.proto.imgs)
