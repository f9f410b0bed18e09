"""Representation drift: linear CKA itself, the base's blocks, and what real runs on the digits sample measure."""

from __future__ import annotations

import warnings

import numpy as np
import pytest

from tlviz.cka import centred_gram, cka_from_grams, linear_cka
from tlviz.finetune.config import RunConfig

warnings.filterwarnings("ignore", module="keras")


def _cka_by_centering_matrix(x, y) -> float:
    """Kornblith et al.'s HSIC form, written independently: tr(K H L H) / sqrt(tr(K H K H) tr(L H L H))."""
    x = np.asarray(x, np.float64).reshape(len(x), -1)
    y = np.asarray(y, np.float64).reshape(len(y), -1)
    n = len(x)
    h = np.eye(n) - np.ones((n, n)) / n
    k, l = x @ x.T, y @ y.T
    hsic = lambda a, b: np.trace(a @ h @ b @ h)  # noqa: E731
    return hsic(k, l) / np.sqrt(hsic(k, k) * hsic(l, l))


# -- linear CKA -------------------------------------------------------------------------------

@pytest.mark.parametrize("n,p,q", [(40, 5, 7), (12, 30, 50), (25, 25, 3)])
def test_linear_cka_matches_the_hsic_form_in_both_feature_and_gram_forms(n, p, q):
    rng = np.random.default_rng(n + p)
    x = rng.normal(size=(n, p))
    y = np.tanh(x @ rng.normal(size=(p, q))) + 0.3 * rng.normal(size=(n, q))
    assert linear_cka(x, y) == pytest.approx(_cka_by_centering_matrix(x, y), rel=1e-10)
    assert cka_from_grams(centred_gram(x), centred_gram(y)) == pytest.approx(linear_cka(x, y), rel=1e-10)


def test_linear_cka_is_one_for_the_same_features_up_to_rotation_and_scale():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(50, 8, 2))  # anything after the first axis is flattened
    q, _ = np.linalg.qr(rng.normal(size=(16, 16)))
    rotated = 3.7 * x.reshape(50, 16) @ q + 5.0  # rotation, isotropic scale, offset
    assert linear_cka(x, x) == pytest.approx(1.0, abs=1e-12)
    assert linear_cka(x, rotated) == pytest.approx(1.0, abs=1e-10)
    # An anisotropic scaling is a real change of the representation.
    assert linear_cka(x.reshape(50, 16), x.reshape(50, 16) * np.linspace(0.1, 3, 16)) < 0.99


def test_linear_cka_of_unrelated_features_is_low_and_degenerate_cases_are_named():
    rng = np.random.default_rng(1)
    x, y = rng.normal(size=(400, 4)), rng.normal(size=(400, 4))
    assert linear_cka(x, y) < 0.05
    assert np.isnan(linear_cka(np.ones((10, 3)), x[:10]))  # no variance: nothing to compare
    assert np.isnan(linear_cka(np.full((10, 3), np.nan), x[:10]))
    with pytest.raises(ValueError, match="same images"):
        linear_cka(x, y[:10])
    with pytest.raises(ValueError, match="at least 2"):
        linear_cka(x[:1], y[:1])


# -- blocks -------------------------------------------------------------------------------------

def test_the_digits_base_has_the_blocks_the_depth_control_snaps_to(loaded_base):
    from tlviz.finetune.build import depth_choices
    from tlviz.finetune.drift import base_blocks
    from tlviz.layers import layer_table

    blocks = base_blocks(loaded_base.model)
    assert [(b.name, b.paths, b.output) for b in blocks] == [
        ("block1", ["block1_conv", "block1_bn"], "block1_pool"),
        ("block2", ["block2_conv", "block2_bn"], "block2_pool"),
        ("block3", ["block3_conv", "block3_bn"], "block3_relu"),
    ]
    labels = [label for _, label in depth_choices(layer_table(loaded_base.model))]
    assert all(any(b.name in label for label in labels) for b in blocks[1:])


def test_blocks_of_a_keras_application_and_of_a_model_without_named_blocks():
    import keras

    from tlviz.finetune.drift import base_blocks

    mnet = keras.applications.MobileNetV2(weights=None, input_shape=(32, 32, 3), alpha=0.35, classes=3)
    names = [b.name for b in base_blocks(mnet)]
    assert names[0] == "Conv1" and names[1] == "expanded_conv" and names[-1] == "Conv_1"
    assert names[2:-1] == [f"block_{i}" for i in range(1, 17)]
    block2 = next(b for b in base_blocks(mnet) if b.name == "block_2")
    assert block2.output == "block_2_add"  # the residual sum, not the last weighted layer
    # Without named blocks: one block per weight-holding layer, up to the next one (or to the base's end: the
    # Flatten that collapses the feature map starts the head).
    plain = keras.Sequential([keras.Input((8, 8, 3)), keras.layers.Conv2D(4, 3, name="c1"),
                              keras.layers.ReLU(name="r1"), keras.layers.Conv2D(4, 3, name="c2"),
                              keras.layers.Flatten(name="f"), keras.layers.Dense(2, name="head")])
    assert [(b.name, b.output) for b in base_blocks(plain)] == [("c1", "r1"), ("c2", "c2")]


# -- runs -------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def images_5_9(loaded_base, digits_5_9):
    from tlviz.imagesets import load_image_set

    return load_image_set(digits_5_9, loaded_base.image_size, loaded_base.channels)


def _drift(result) -> dict:
    return {d["block"]: d for d in result.drift}


def test_only_blocks_at_or_above_the_trained_layers_move_and_the_others_are_exactly_one(loaded_base, images_5_9):
    from tlviz.finetune.run import run_finetune

    top = run_finetune(loaded_base, images_5_9, RunConfig(unfreeze=2, lr=3e-3, epochs=2, preset="tf"))
    d = _drift(top)
    assert [r["block"] for r in top.drift] == ["block1", "block2", "block3"]
    assert d["block1"]["cka"] == 1.0 and d["block2"]["cka"] == 1.0  # exactly: nothing at or below them changed
    assert d["block1"]["status"] == d["block2"]["status"] == "unchanged" and not d["block2"]["trained"]
    assert d["block3"]["trained"] and d["block3"]["status"] == "trained" and 0 < d["block3"]["cka"] < 1
    assert top.drift_images == 125 and top.seconds["drift"] > 0  # 128 images, class-balanced: 25 of each of 5
    head = run_finetune(loaded_base, images_5_9, RunConfig(unfreeze=0, lr=1e-2, epochs=1, preset="tf"))
    assert [r["cka"] for r in head.drift] == [1.0, 1.0, 1.0]
    assert all(r["status"] == "unchanged" and not r["trained"] for r in head.drift)
    metrics = head.to_metrics()
    assert metrics["representation_drift"] == head.drift and metrics["drift_images"] == 125


def test_a_frozen_block_above_a_trained_one_is_measured_not_assumed():
    """BatchNormalization kept frozen above a trained convolution: unchanged weights, moved input, so measured."""
    import keras

    from tlviz.finetune.run import run_finetune
    from tlviz.imagesets import ImageSet
    from tlviz.models import summarize

    keras.utils.set_random_seed(3)
    inputs = keras.Input((12, 12, 3))
    x = keras.layers.Conv2D(6, 3, padding="same", name="c1")(inputs)
    x = keras.layers.BatchNormalization(name="bn1")(x)
    x = keras.layers.ReLU(name="r1")(x)
    x = keras.layers.Conv2D(6, 3, padding="same", name="c2")(x)
    x = keras.layers.BatchNormalization(name="bn2")(x)
    x = keras.layers.GlobalAveragePooling2D(name="gap")(x)
    model = keras.Model(inputs, keras.layers.Dense(2, activation="softmax", name="head")(x))
    rng = np.random.default_rng(0)
    labels = np.repeat([0, 1], 40)
    pixels = rng.integers(0, 120, (80, 12, 12, 3)).astype(np.uint8)
    pixels[labels == 1, :, :6] += 100  # class 1: a brighter left half
    images = ImageSet(images=pixels, labels=labels, class_names=["a", "b"], files=[f"{i}.png" for i in range(80)])
    res = run_finetune(summarize(model), images, RunConfig(unfreeze=2, lr=3e-2, epochs=3, preset="unit"))
    d = _drift(res)
    assert list(d) == ["c1", "bn1", "c2", "bn2"]
    assert d["c1"]["cka"] == 1.0 and d["bn1"]["cka"] == 1.0 and d["c1"]["status"] == "unchanged"
    assert d["c2"]["status"] == "trained" and d["c2"]["cka"] < 1.0
    assert d["bn2"]["status"] == "input changed" and not d["bn2"]["trained"]  # frozen BN, but c2 below it moved
    assert d["bn2"]["cka"] is not None and d["bn2"]["cka"] < 1.0
    moved = res.weight_change.set_index("path")["l2_change"]
    assert moved["bn2"] == 0 and moved["c2"] > 0


def test_the_threshold_sits_between_a_gentle_fine_tune_and_random_weights(loaded_base, images_5_9):
    """The registry's reason for ``cka`` 0.5, measured: a gentle whole-base fine-tune keeps the top block above
    0.85, fresh random weights of the same architecture score under 0.3 against the pre-trained features."""
    from tlviz.diagnose.registry import threshold
    from tlviz.finetune.build import random_clone
    from tlviz.finetune.drift import base_blocks, block_features
    from tlviz.finetune.run import run_finetune

    gentle = run_finetune(loaded_base, images_5_9, RunConfig(unfreeze=6, lr=1e-4, epochs=10, preset="tf"))
    assert min(r["cka"] for r in gentle.drift) > 0.85
    x = images_5_9.images[:128]
    pre = block_features(loaded_base.model, base_blocks(loaded_base.model), x, "tf")
    for seed in (0, 1):
        rnd = random_clone(loaded_base.model, seed)
        post = block_features(rnd, base_blocks(rnd), x, "tf")
        assert linear_cka(pre["block3"], post["block3"]) < 0.3
    assert 0.3 < threshold("catastrophic-forgetting", "cka") < 0.85


def test_the_features_before_a_run_are_computed_once_per_model_images_and_preset(loaded_base, images_5_9,
                                                                                   monkeypatch):
    from tlviz.finetune import drift
    from tlviz.finetune.cache import ActivationCache
    from tlviz.finetune.run import run_finetune

    calls = []
    real = drift._features
    monkeypatch.setattr(drift, "_features", lambda *a, **k: calls.append(1) or real(*a, **k))
    cache = ActivationCache()
    cfg = RunConfig(unfreeze=2, lr=1e-3, epochs=1, preset="tf")
    first = run_finetune(loaded_base, images_5_9, cfg, cache=cache)
    assert len(calls) == 2  # before and after
    second = run_finetune(loaded_base, images_5_9, RunConfig(**{**cfg.to_dict(), "lr": 3e-3}), cache=cache)
    assert len(calls) == 3  # after only: the features before came from the cache
    assert cache.misses == 1 and cache.hits == 1  # the activation counters count activations only
    assert first.drift[0]["cka"] == second.drift[0]["cka"] == 1.0


# -- the charts -------------------------------------------------------------------------------------

def test_the_drift_chart_draws_every_block_by_status_with_the_threshold():
    import json

    import pandas as pd

    from tlviz import charts
    from tlviz.charts.finetune import DRIFT_COLORS
    from tlviz.charts import palette

    df = pd.DataFrame([{"block": "block1", "cka": 1.0, "trained": False, "status": "unchanged", "layers": 2},
                       {"block": "block2", "cka": None, "trained": True, "status": "trained", "layers": 2},
                       {"block": "block3", "cka": 0.31, "trained": False, "status": "input changed", "layers": 1}])
    spec = charts.drift_chart(df, 0.5).to_dict()
    bars, outline, rule = spec["layer"]  # the bars, the unmeasured block's outline, the threshold
    assert bars["encoding"]["x"]["sort"] == ["block1", "block2", "block3"]
    assert bars["encoding"]["color"]["scale"] == {"domain": list(DRIFT_COLORS), "range": list(DRIFT_COLORS.values())}
    assert bars["encoding"]["y"]["scale"]["domain"] == [0, 1]
    assert rule["mark"]["color"] == palette.REFERENCE_COLOR and "threshold 0.5" in spec["title"]
    text = json.dumps(spec["datasets"])
    assert "not measured" in text and "0.310" in text
    assert outline["mark"]["fillOpacity"] == 0
    assert len(charts.drift_chart(df).to_dict()["layer"]) == 2  # no threshold: no rule
    measured = df.assign(cka=[1.0, 0.5, 0.31])
    assert "layer" not in charts.drift_chart(measured).to_dict() or len(charts.drift_chart(measured).to_dict()["layer"]) == 1


def test_the_control_chart_shows_each_run_with_its_interval():
    import pandas as pd

    from tlviz import charts

    rows = pd.DataFrame([{"run": "run", "accuracy": 0.9, "low": 0.85, "high": 0.94, "n": 180},
                         {"run": "random-init control", "accuracy": 0.3, "low": 0.24, "high": 0.37, "n": 180}])
    spec = charts.control_chart(rows).to_dict()
    rule, point = spec["layer"]
    assert rule["encoding"]["x"]["field"] == "low" and rule["encoding"]["x2"]["field"] == "high"
    assert point["encoding"]["y"]["sort"] == ["run", "random-init control"]


def test_above_a_cut_drift_and_retention_match_full_passes(loaded_base, images_5_9, base_images, monkeypatch):
    """Above a cut the drift's features before and after the run come from the activations at the cut (nothing
    below it changes), and the original task is scored from its own activations there (computed once, cached);
    the same run without the cache measures both from the pixels: the same results up to float rounding."""
    from tlviz.finetune import drift
    from tlviz.finetune.cache import ActivationCache
    from tlviz.finetune.run import run_finetune

    inputs = []
    real = drift._features
    monkeypatch.setattr(drift, "_features", lambda ext, x, *a, **k: inputs.append(x.dtype) or real(ext, x, *a, **k))
    cfg = RunConfig(unfreeze=2, lr=3e-3, epochs=2, preset="tf")
    cache = ActivationCache()
    cached = run_finetune(loaded_base, images_5_9, cfg, original=base_images, cache=cache)
    assert cached.cache_used and inputs == [np.float32, np.float32]  # from the activations at the cut, both
    assert any(a.ndim == 4 and len(a) == len(base_images) for a in cache._mem.values())  # the original task's
    plain = run_finetune(loaded_base, images_5_9, RunConfig(**{**cfg.to_dict(), "use_cache": False}),
                         original=base_images)
    assert not plain.cache_used and inputs[2:] == [np.uint8, np.uint8]
    np.testing.assert_allclose([d["cka"] for d in cached.drift], [d["cka"] for d in plain.drift], atol=2e-3)
    assert cached.retention["before"] == plain.retention["before"]
    assert cached.retention["after"] == pytest.approx(plain.retention["after"], abs=2 / len(base_images))
