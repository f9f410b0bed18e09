"""Grad-CAM (`tlviz.gradcam`): where the model looks, on real small models and images.

A hand-built two-channel network (a red detector and a green detector, each feeding one
class) shows that the heatmap follows the class asked for; the digits sample, a nested base
with its pooling inside, a single sigmoid unit and a dense network cover the feature-map
search; the worker job runs the same engine in its own process.
"""

from __future__ import annotations

import keras
import numpy as np
import pytest

from tlviz import gradcam, jobs
from tlviz.presets import CustomPreset


def _red_green_model():
    """Channel 0 of the feature map fires on red pixels, channel 1 on green ones; class 0 = red, class 1 = green."""
    inp = keras.Input((16, 16, 3))
    conv = keras.layers.Conv2D(2, 1, activation="relu", name="detect")
    fmap = conv(inp)
    pooled = keras.layers.GlobalAveragePooling2D()(fmap)
    head = keras.layers.Dense(2, activation="softmax", name="head")
    out = head(pooled)
    conv.set_weights([np.array([[[[1.0, -1.0], [-1.0, 1.0], [0.0, 0.0]]]]), np.zeros(2)])
    head.set_weights([np.array([[4.0, -4.0], [-4.0, 4.0]]), np.zeros(2)])
    return keras.Model(inp, out, name="redgreen")


def _red_top_left_green_bottom_right() -> np.ndarray:
    img = np.zeros((16, 16, 3), np.uint8)
    img[:6, :6, 0] = 255
    img[10:, 10:, 1] = 255
    return img


def test_the_heatmap_follows_the_class_asked_for():
    model = _red_green_model()
    image = _red_top_left_green_bottom_right()[None]
    target = gradcam.feature_map(model)
    assert (target.layer, target.shape, target.score, target.reason) == ("detect", (16, 16), "logit", None)
    red, cls_r, conf_r, _ = gradcam.gradcam(model, image, "unit", classes=[0], target=target)
    green, cls_g, conf_g, _ = gradcam.gradcam(model, image, "unit", classes=[1], target=target)
    assert cls_r.tolist() == [0] and cls_g.tolist() == [1]
    assert red.shape == (1, 16, 16) and red.max() == pytest.approx(1.0)
    assert red[0, :6, :6].mean() > 0.9 and red[0, 10:, 10:].max() == 0.0  # red's evidence is the red square
    assert green[0, 10:, 10:].mean() > 0.9 and green[0, :6, :6].max() == 0.0
    probs = model.predict(image / 255.0, verbose=0)[0]
    assert conf_r[0] == pytest.approx(probs[0], abs=1e-5) and conf_g[0] == pytest.approx(probs[1], abs=1e-5)


def test_the_digits_sample_explained_under_two_presets(loaded_base, base_images):
    items = [(0, "tf"), (0, "unit"), (500, "tf"), (3, CustomPreset(1 / 127.5, 1.0, 1.0))]
    report = gradcam.explain(loaded_base, base_images, items)
    assert report.reason is None and report.layer == "block3_relu" and report.shape == (8, 8)
    assert len(report.maps) == 4
    probs = loaded_base.model.predict((base_images.images[[0, 500]] / 127.5 - 1.0).astype("float32"), verbose=0)
    for k, index in enumerate((0, 500)):
        m = report.get(index, "tf")
        assert m.class_index == int(probs[k].argmax()) and m.confidence == pytest.approx(float(probs[k].max()), abs=1e-4)
        assert m.heatmap.shape == (8, 8) and 0.0 <= m.heatmap.min() and m.heatmap.max() <= 1.0
    assert report.get(3, CustomPreset(1 / 127.5, 1.0, 1.0)) is not None  # the custom preset by its name
    assert report.caption(report.get(0, "tf")).startswith("explains '0' (")
    with pytest.raises(ValueError, match="outside the image set"):
        gradcam.explain(loaded_base, base_images, [(len(base_images), "tf")])


def test_a_nested_base_with_its_pooling_inside_and_a_sigmoid_unit():
    keras.utils.set_random_seed(1)
    inner_in = keras.Input((24, 24, 3))
    y = keras.layers.Conv2D(8, 3, activation="relu", name="inner_conv")(inner_in)
    y = keras.layers.Conv2D(8, 3, strides=2, activation="relu", name="inner_last")(y)
    base = keras.Model(inner_in, keras.layers.GlobalAveragePooling2D()(y), name="base")
    inp = keras.Input((24, 24, 3))
    out = keras.layers.Dense(1, activation="sigmoid", name="out")(keras.layers.Dropout(0.3)(base(inp, training=False)))
    model = keras.Model(inp, out)
    target = gradcam.feature_map(model)
    assert target.layer == "inner_last" and target.shape == (10, 10) and target.score == "logit"
    images = np.random.default_rng(0).integers(0, 255, (3, 24, 24, 3)).astype(np.uint8)
    heat, classes, conf, _ = gradcam.gradcam(model, images, "unit", target=target)
    p = model.predict(images / 255.0, verbose=0)[:, 0]
    assert classes.tolist() == (p >= 0.5).astype(int).tolist()
    assert np.allclose(conf, np.where(p >= 0.5, p, 1 - p), atol=1e-5)
    assert heat.shape == (3, 10, 10) and np.all((heat >= 0) & (heat <= 1))
    assert len(model.layers) == 4 and len(base.layers) == 4  # the model was not changed (layers shared, not added)


@pytest.mark.parametrize("build,word", [
    (lambda: keras.Sequential([keras.Input((16, 16, 3)), keras.layers.Rescaling(1 / 255), keras.layers.Flatten(),
                               keras.layers.Dense(2, activation="softmax")]), "no convolutional layer precedes"),
    (lambda: keras.Sequential([keras.Input((16, 16, 3)), keras.layers.Conv2D(4, 16), keras.layers.Flatten(),
                               keras.layers.Dense(2, activation="softmax")]), "has a single cell"),
])
def test_a_model_without_a_conv_feature_map_gets_a_sentence(build, word):
    model = build()
    target = gradcam.feature_map(model)
    assert target.reason and word in target.reason and not target.available
    images = np.zeros((2, 16, 16, 3), np.uint8)
    report = gradcam.explain(model, images, [(0, "unit"), (1, "unit")])
    assert report.reason == target.reason and report.maps == {}
    heat, classes, conf, _ = gradcam.gradcam(model, images, "unit")
    assert heat is None and classes is None


def test_overlay_colours_the_hot_region_and_leaves_the_cold_one():
    image = np.full((32, 32, 3), 128, np.uint8)
    heat = np.zeros((4, 4), np.float32)
    heat[0, 0] = 1.0
    out = gradcam.overlay(image, heat)
    assert out.shape == (32, 32, 3) and out.dtype == np.uint8
    assert np.abs(out[:3, :3].astype(int) - 128).max() > 30  # hot: coloured
    assert np.array_equal(out[20:, 20:], image[20:, 20:])  # cold: the image as it is
    gray = gradcam.overlay(image[..., :1], heat)
    assert gray.shape == (32, 32, 3)


def test_job_params_are_checked():
    params = gradcam.job_params([(1, "tf"), (1, "tf"), (2, CustomPreset(0.5, (1, 2, 3), 2.0))])
    assert params == {"items": [[1, "tf"], [2, {"scale": 0.5, "mean": [1, 2, 3], "std": 2.0}]]}
    assert gradcam.items_from_params(params)[1] == (2, CustomPreset(0.5, (1, 2, 3), 2.0))
    with pytest.raises(ValueError, match="Unknown preset"):
        gradcam.job_params([(0, "bgr")])
    with pytest.raises(ValueError, match="At most"):
        gradcam.job_params([(i, "tf") for i in range(gradcam.GRADCAM_MAX_ITEMS + 1)])
    with pytest.raises(ValueError, match="at least one"):
        gradcam.job_params([])


def test_the_gradcam_job_runs_in_a_worker_and_is_stored(loaded_base, base_images, runs):
    params = {"items": [[0, "tf"], [7, "unit"]]}
    job = jobs.start_analysis("gradcam", loaded_base, base_images, params, root=runs)
    status = jobs.wait(job, runs, timeout=300)
    assert status.state == "done", status.message
    assert status.notes == []  # no note about resize methods
    report = jobs.load_result(job, runs)
    direct = gradcam.explain(loaded_base, base_images, [(0, "tf"), (7, "unit")])
    for key, m in direct.maps.items():
        assert report.maps[key].class_index == m.class_index
        assert np.allclose(report.maps[key].heatmap, m.heatmap, atol=1e-4)
    again = jobs.start_analysis("gradcam", loaded_base, base_images, params, root=runs)
    assert jobs.poll(again, runs).from_store  # computed once
    with pytest.raises(jobs.AnalysisRefused, match="Unknown preset"):
        jobs.start_analysis("gradcam", loaded_base, base_images, {"items": [[0, "nope"]]}, root=runs)
