"""Fine-tuning within the memory budget: planned batches, the training-step estimate, refusals."""

from __future__ import annotations

import re
import warnings

import numpy as np
import pytest

from tlviz.finetune.config import RunConfig, RunRefused

warnings.filterwarnings("ignore", module="keras")

MB = 2**20
COLS = ["loss", "accuracy", "val_loss", "val_accuracy"]


@pytest.fixture(scope="module")
def images_5_9(loaded_base, digits_5_9):
    from tlviz.imagesets import load_image_set

    return load_image_set(digits_5_9, loaded_base.image_size, loaded_base.channels)


class _BatchLog(list):
    """``(model name, batch size)`` of every batch a compiled inference pass (`tlviz.memory.forward`) receives."""

    def sizes(self, model_name: str | None = None) -> list[int]:
        return [n for name, n in self if model_name is None or name == model_name]


@pytest.fixture()
def batch_log(monkeypatch):
    import tlviz.memory as memory

    sizes = _BatchLog()
    real = memory.forward

    def spy(model, training=False):
        run = real(model, training)

        def wrapped(x):
            sizes.append((model.name, len(x)))
            return run(x)

        return wrapped

    monkeypatch.setattr(memory, "forward", spy)
    return sizes


def _fit_bytes_of(loaded, images, config) -> int:
    """What `check_train_memory` estimates for `config` (built the way a run builds it)."""
    from tlviz.finetune.build import build_run_model
    from tlviz.finetune.cache import find_cut
    from tlviz.finetune.preflight import check_run
    from tlviz.unfreeze import apply_unfreeze
    from tlviz.memory import fit_bytes

    built = build_run_model(loaded, len(images.class_names), config, check_run(loaded, images, config))
    apply_unfreeze(built.model, config.unfreeze, train_bn=config.train_bn)
    cut = find_cut(built.model)[0] if config.use_cache and not config.augment else None
    return fit_bytes(cut.upper if cut is not None else built.model)


def _same(a, b):
    np.testing.assert_allclose(a.history[COLS].to_numpy(float), b.history[COLS].to_numpy(float), rtol=1e-5,
                               atol=1e-5)
    np.testing.assert_array_equal(a.val_pred, b.val_pred)
    assert a.initial == pytest.approx(b.initial, rel=1e-5, abs=1e-6)
    for wa, wb in zip(a.model.get_weights(), b.model.get_weights()):
        np.testing.assert_allclose(wa, wb, rtol=1e-5, atol=1e-6)


# -- the estimate ---------------------------------------------------------------------

def _chain(trainable_from: int):
    """Input 8x8x3 -> c1 (8x8x4) -> c2 (8x8x8) -> gap (8) -> out (2); layers from `trainable_from` train."""
    import keras
    from keras import layers

    inp = keras.Input((8, 8, 3))
    x = layers.Conv2D(4, 3, padding="same", name="c1")(inp)
    x = layers.Conv2D(8, 3, padding="same", name="c2")(x)
    x = layers.GlobalAveragePooling2D(name="gap")(x)
    model = keras.Model(inp, layers.Dense(2, name="out")(x))
    for i, layer in enumerate(model.layers[1:]):
        layer.trainable = i >= trainable_from
    return model


@pytest.mark.parametrize("trainable_from, frozen, trained", [
    (0, [], [8 * 8 * 4, 8 * 8 * 8, 8, 2]),  # everything trains
    (1, [8 * 8 * 4], [8 * 8 * 8, 8, 2]),  # c1 frozen: inference cost only
    (3, [8 * 8 * 4, 8 * 8 * 8, 8], [2]),  # head only
])
def test_fit_bytes_counts_frozen_prefix_at_inference_cost(trainable_from, frozen, trained):
    from tlviz.memory import LIVE_FACTOR, TRAIN_FACTOR, fit_bytes

    model = _chain(trainable_from)
    inference = min(LIVE_FACTOR * max(frozen, default=0), sum(frozen))
    expected = 4 * (8 * 8 * 3 + inference + TRAIN_FACTOR * sum(trained))
    assert fit_bytes(model) == expected


def test_fit_bytes_of_a_frozen_model_is_its_inference_cost():
    from tlviz.memory import activation_bytes, fit_bytes

    model = _chain(99)
    assert fit_bytes(model) == activation_bytes(model, "inference")


# -- planned batches, same results -----------------------------------------------------------

def test_predict_batches_matches_predict_at_any_batch_size():
    from tlviz.memory import plan_batch, predict_batches

    model = _chain(0)
    x = np.random.default_rng(0).integers(0, 256, (23, 8, 8, 3), dtype=np.uint8)
    ref = model.predict(x.astype("float32") / 255, verbose=0)
    seen = []
    for budget in (1, 10 * 4096, None):
        plan = plan_batch(model, "inference", n=len(x), budget=budget)
        out = predict_batches(model, x, lambda a: a.astype("float32") / 255, plan,
                              progress=lambda done, total: seen.append((done, total)))
        np.testing.assert_allclose(out, ref, rtol=1e-5, atol=1e-6)
    assert seen[:2] == [(1, 23), (2, 23)] and seen[-1] == (23, 23)


def test_compute_activations_in_tiny_batches_match_one_batch(batch_log):
    from tlviz.finetune.cache import compute_activations

    model = _chain(99)
    x = np.random.default_rng(1).integers(0, 256, (10, 8, 8, 3), dtype=np.uint8)
    one = compute_activations(model, x, preset="unit")
    assert batch_log.sizes() == [10]
    batch_log.clear()
    tiny = compute_activations(model, x, preset="unit", budget=1)
    assert batch_log.sizes() == [1] * 10
    assert tiny.dtype == np.float32 and tiny.shape == (10, 2)
    np.testing.assert_allclose(tiny, one, rtol=1e-5, atol=1e-6)


def test_tiny_budget_runs_in_tiny_batches_with_the_same_results(loaded_base, images_5_9, monkeypatch, batch_log):
    from tlviz.finetune.run import run_finetune

    cached = RunConfig(unfreeze=0, lr=1e-2, epochs=2, preset="tf")
    whole = RunConfig(unfreeze=6, lr=3e-3, epochs=1, preset="tf", batch_size=4)
    default_cached = run_finetune(loaded_base, images_5_9, cached)
    default_whole = run_finetune(loaded_base, images_5_9, whole)
    assert max(batch_log.sizes("tlviz_lower")) == 256  # activations of the base: the largest batches there are
    assert default_whole.memory["eval_batch_size"] == len(default_whole.val_indices)
    assert batch_log.sizes()[-1] == len(default_whole.val_indices)  # final predictions: one batch

    monkeypatch.setenv("TLVIZ_MEMORY_MB", "4")
    batch_log.clear()
    tiny_cached = run_finetune(loaded_base, images_5_9, cached)
    assert tiny_cached.cache_used
    assert max(batch_log.sizes("tlviz_lower")) <= 13  # 4 MB / 0.33 MB per image through the base
    batch_log.clear()
    tiny_whole = run_finetune(loaded_base, images_5_9, whole)
    assert max(batch_log.sizes()) <= 13 and tiny_whole.memory["eval_batch_size"] <= 13
    assert tiny_whole.memory["batch_size"] == 4 <= tiny_whole.memory["largest_batch"]
    assert tiny_whole.memory["budget_bytes"] == 4 * MB

    _same(tiny_cached, default_cached)
    _same(tiny_whole, default_whole)


def test_dataset_shuffles_like_the_arrays_it_no_longer_copies():
    """Same seed, same order as shuffling ``x[idx]`` itself (what runs did before): histories stay the same."""
    import tensorflow as tf

    from tlviz.finetune.data import batch_dataset

    x = np.arange(40, dtype=np.uint8).reshape(10, 2, 2, 1) * 5
    y = np.arange(10, dtype=np.int64) % 3
    idx = np.array([0, 2, 3, 5, 6, 8, 9])
    tf.random.set_seed(0)
    ours = [(a.numpy(), b.numpy()) for a, b in batch_dataset(x, y, idx, 3, seed=7)]
    tf.random.set_seed(0)
    ref = tf.data.Dataset.from_tensor_slices((x[idx], y[idx])).shuffle(len(idx), seed=7).batch(3)
    ref = [(a.numpy(), b.numpy()) for a, b in ref]
    assert [len(b) for _, b in ours] == [3, 3, 1]
    for (a, b), (ra, rb) in zip(ours, ref):
        np.testing.assert_array_equal(a, ra)
        np.testing.assert_array_equal(b, rb)


# -- refusals ---------------------------------------------------------------------------------

def test_training_over_budget_is_refused_naming_the_largest_batch_that_fits(loaded_base, images_5_9, monkeypatch):
    from tlviz.finetune.run import run_finetune

    cfg = RunConfig(unfreeze=6, lr=3e-3, epochs=1, preset="tf", use_cache=False)
    per = _fit_bytes_of(loaded_base, images_5_9, cfg)
    monkeypatch.setenv("TLVIZ_MEMORY_MB", "4")
    largest = 4 * MB // per
    assert 1 <= largest < 32
    stages = []
    with pytest.raises(RunRefused) as exc:
        run_finetune(loaded_base, images_5_9, cfg, progress=lambda info: stages.append(info["stage"]))
    msg = str(exc.value)
    est = 32 * per / MB
    shown = f"{est:,.1f}" if est < 10 else f"{est:,.0f}"
    assert f"batch size 32 needs about {shown} MB" in msg
    assert "4.0 MB memory budget (TLVIZ_MEMORY_MB)" in msg
    assert f"The largest batch size that fits is {largest}" in msg
    assert set(stages) == {"preparing"}  # refused before anything was computed or trained

    res = run_finetune(loaded_base, images_5_9, RunConfig(**{**cfg.to_dict(), "batch_size": largest}))
    assert res.state == "completed" and res.memory["largest_batch"] == largest


def test_refusal_when_not_even_one_image_fits(loaded_base, images_5_9, monkeypatch):
    from tlviz.finetune.run import run_finetune

    monkeypatch.setenv("TLVIZ_MEMORY_MB", "0.1")
    with pytest.raises(RunRefused, match=r"largest batch size that fits is 0.*raise TLVIZ_MEMORY_MB to at least 1"):
        run_finetune(loaded_base, images_5_9, RunConfig(unfreeze=6, epochs=1, preset="tf", use_cache=False))


def test_two_phase_run_is_refused_before_its_head_phase_trains(loaded_base, images_5_9, monkeypatch):
    from tlviz.finetune.run import run_finetune

    monkeypatch.setenv("TLVIZ_MEMORY_MB", "4")
    stages = []
    cfg = RunConfig(unfreeze=6, epochs=1, preset="tf", two_phase=True, head_epochs=1, batch_size=64)
    with pytest.raises(RunRefused, match="phase 'main' at batch size 64"):
        run_finetune(loaded_base, images_5_9, cfg, progress=lambda info: stages.append(info["stage"]))
    assert set(stages) == {"preparing"}


def test_lr_finder_refuses_over_budget_too(loaded_base, images_5_9, monkeypatch):
    from tlviz.finetune.lrfinder import lr_range_test

    monkeypatch.setenv("TLVIZ_MEMORY_MB", "4")
    with pytest.raises(RunRefused, match=r"TLVIZ_MEMORY_MB\)\. The largest batch size that fits is \d+"):
        lr_range_test(loaded_base, images_5_9, RunConfig(unfreeze=6, preset="tf", use_cache=False))


def test_cached_head_training_fits_where_the_whole_model_would_not(loaded_base, images_5_9, monkeypatch):
    """Below the cut nothing runs during training: a head on cached activations fits a small budget."""
    from tlviz.finetune.run import run_finetune

    monkeypatch.setenv("TLVIZ_MEMORY_MB", "2")
    res = run_finetune(loaded_base, images_5_9, RunConfig(unfreeze=0, lr=1e-2, epochs=1, preset="tf"))
    assert res.cache_used and res.memory["largest_batch"] > 256
    with pytest.raises(RunRefused, match="memory budget"):
        run_finetune(loaded_base, images_5_9, RunConfig(unfreeze=0, epochs=1, preset="tf", use_cache=False))


def test_malformed_budget_is_refused_with_how_to_set_it(loaded_base, images_5_9, monkeypatch):
    from tlviz.finetune.run import run_finetune

    monkeypatch.setenv("TLVIZ_MEMORY_MB", "lots")
    with pytest.raises(RunRefused, match=re.escape("TLVIZ_MEMORY_MB='lots' is not a positive number")):
        run_finetune(loaded_base, images_5_9, RunConfig(epochs=1, preset="tf"))
