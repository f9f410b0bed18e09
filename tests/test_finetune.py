"""The fine-tuning engine on the committed samples: real models, real images, short runs."""

from __future__ import annotations

import warnings

import numpy as np
import pandas as pd
import pytest

from tlviz.finetune.config import RunConfig, RunRefused, default_preset

warnings.filterwarnings("ignore", module="keras")


@pytest.fixture(scope="module")
def images_5_9(loaded_base, digits_5_9):
    from tlviz.imagesets import load_image_set

    return load_image_set(digits_5_9, loaded_base.image_size, loaded_base.channels)


@pytest.fixture(scope="module")
def loaded_frozen(frozen_model_path):
    from tlviz.models import load_model

    return load_model(frozen_model_path)


@pytest.fixture(scope="module")
def head_run(loaded_base, images_5_9):
    from tlviz.finetune.run import run_finetune

    return run_finetune(loaded_base, images_5_9, RunConfig(unfreeze=0, lr=1e-2, epochs=10, preset="tf"))


@pytest.fixture(scope="module")
def deep_run(loaded_base, images_5_9, tmp_path_factory):
    """All of the base unfrozen at a sensible rate, stored on disk (model.keras included)."""
    from tlviz.finetune.run import run_finetune
    from tlviz.finetune.store import RunWriter

    writer = RunWriter(tmp_path_factory.mktemp("runs") / "deep")
    return run_finetune(loaded_base, images_5_9, RunConfig(unfreeze=6, lr=3e-3, epochs=10, preset="tf"),
                        writer=writer)


# -- what the issue requires on the samples -------------------------------------

def test_frozen_model_is_refused_with_explanation(loaded_frozen, images_5_9):
    from tlviz.finetune.run import run_finetune

    with pytest.raises(RunRefused, match="No trainable weights") as exc:
        run_finetune(loaded_frozen, images_5_9, RunConfig(epochs=1, preset="tf"))
    msg = str(exc.value)
    assert "compile" in msg and "Unfreeze the head for this run" in msg


def test_frozen_model_trains_when_user_opts_to_unfreeze_head(loaded_frozen, images_5_9):
    from tlviz.finetune.run import run_finetune

    res = run_finetune(loaded_frozen, images_5_9, RunConfig(epochs=2, lr=1e-2, preset="tf", unfreeze_frozen=True))
    assert res.state == "completed"
    assert res.trainable_params == 64 * 5 + 5
    moved = res.weight_change.set_index("path")["l2_change"]
    assert moved["new_head"] > 0
    assert (moved.drop("new_head") == 0).all()
    # The loaded model itself is still completely frozen.
    assert loaded_frozen.model.trainable_weights == []


def test_head_only_new_head_learns_clearly_above_chance(head_run):
    res = head_run
    assert res.head.new_head and not res.head.forced  # class names 5..9 differ from the recorded 0..4
    assert res.cache_used
    assert res.trainable_params == 64 * 5 + 5
    assert res.state == "completed"
    assert len(res.history) == 10
    assert res.final["val_accuracy"] >= 0.6  # chance is 0.2
    assert res.initial["val_accuracy"] < 0.4
    assert list(res.history.columns[:6]) == ["epoch", "phase", "loss", "accuracy", "val_loss", "val_accuracy"]
    assert res.per_class["n"].sum() == len(res.val_indices) == res.confusion.sum()
    assert res.confusion.trace() == round(res.final["val_accuracy"] * len(res.val_indices))


def test_unfreezing_deeper_reaches_95_percent(deep_run):
    assert deep_run.state == "completed"
    assert deep_run.final["val_accuracy"] >= 0.95
    assert not deep_run.cache_used  # the first conv trains: nothing below it to cache


def test_learning_rate_one_diverges_and_is_marked(loaded_base, images_5_9):
    from tlviz.finetune.run import run_finetune

    res = run_finetune(loaded_base, images_5_9, RunConfig(unfreeze=6, lr=1.0, epochs=4, preset="tf"))
    assert res.state == "diverged"
    assert len(res.history) < 4  # stopped early
    assert res.findings[0].id == "run-diverged"
    assert "learning rate is too high" in res.findings[0].fix


def test_frozen_layers_show_exactly_zero_weight_change(deep_run, head_run):
    for res in (deep_run, head_run):
        wc = res.weight_change
        frozen = wc[~wc["trainable"]]
        assert len(frozen) > 0
        assert (frozen["l2_change"] == 0).all() and (frozen["rel_change"] == 0).all()
        assert res.frozen_layers_changed == []
        assert (wc[wc["trainable"]]["rel_change"] > 0).all()
    # BN layers stay frozen (inference mode) by default even inside the unfrozen range.
    bn = deep_run.weight_change[deep_run.weight_change["class"] == "BatchNormalization"]
    assert len(bn) == 3 and not bn["trainable"].any()


def test_bn_train_mode_moves_bn_statistics(loaded_base, images_5_9):
    from tlviz.finetune.run import run_finetune

    res = run_finetune(loaded_base, images_5_9, RunConfig(unfreeze=2, lr=1e-3, epochs=1, preset="tf", bn="train"))
    wc = res.weight_change.set_index("path")
    assert wc.loc["block3_bn", "trainable"] and wc.loc["block3_bn", "l2_change"] > 0
    assert wc.loc["block2_bn", "l2_change"] == 0 and wc.loc["block2_conv", "l2_change"] == 0


def test_saved_model_reloads_and_rescores_to_same_accuracy(deep_run, images_5_9):
    from tlviz.models import load_model
    from tlviz.presets import apply_preset

    reloaded = load_model(deep_run.model_path)
    assert reloaded.recorded_preset == "tf"
    assert reloaded.class_names == ["5", "6", "7", "8", "9"]
    x = apply_preset(images_5_9.images[deep_run.val_indices], reloaded.recorded_preset)
    pred = np.argmax(reloaded.model.predict(x, verbose=0), axis=1)
    acc = float(np.mean(pred == images_5_9.labels[deep_run.val_indices]))
    assert acc == pytest.approx(deep_run.final["val_accuracy"], abs=1e-9)


def test_saved_model_opens_in_plain_keras_without_warnings(deep_run):
    """The download holds the trained weights without the run's optimizer state, which Keras warned about."""
    import keras

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        model = keras.saving.load_model(deep_run.model_path, safe_mode=True)
    assert not [str(w.message) for w in caught if "keras" in str(w.filename)], [str(w.message) for w in caught]
    assert len(model.layers) > 1


@pytest.mark.parametrize("depth", [0, 4])
def test_cached_activations_match_training_the_whole_model(loaded_base, images_5_9, depth):
    from tlviz.finetune.run import run_finetune

    cfg = dict(unfreeze=depth, lr=3e-3, epochs=3, preset="tf", head_dropout=0.3)
    fast = run_finetune(loaded_base, images_5_9, RunConfig(use_cache=True, **cfg))
    slow = run_finetune(loaded_base, images_5_9, RunConfig(use_cache=False, **cfg))
    assert fast.cache_used and not slow.cache_used
    cols = ["loss", "accuracy", "val_loss", "val_accuracy"]
    np.testing.assert_allclose(fast.history[cols].to_numpy(float), slow.history[cols].to_numpy(float),
                               rtol=1e-4, atol=1e-4)
    for a, b in zip(fast.model.get_weights(), slow.model.get_weights()):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5)


def test_cache_over_budget_falls_back_and_says_so(loaded_base, images_5_9, monkeypatch):
    from tlviz.finetune.run import run_finetune

    monkeypatch.setenv("TLVIZ_ACTIVATION_CACHE_MB", "0.01")
    res = run_finetune(loaded_base, images_5_9, RunConfig(unfreeze=0, lr=1e-2, epochs=1, preset="tf"))
    assert not res.cache_used
    assert any("TLVIZ_ACTIVATION_CACHE_MB" in n and "training the whole model" in n for n in res.notes)


def test_original_model_weights_and_flags_unchanged(loaded_base, images_5_9):
    from tlviz.finetune.run import run_finetune
    from tlviz.layers import layer_table

    before_w = [w.copy() for w in loaded_base.model.get_weights()]
    before_t = layer_table(loaded_base.model)[["path", "own_trainable", "trainable"]].copy()
    res = run_finetune(loaded_base, images_5_9, RunConfig(unfreeze=6, lr=1e-3, epochs=1, preset="tf", bn="train",
                                                          two_phase=True, head_epochs=1))
    assert res.model is not loaded_base.model
    for a, b in zip(before_w, loaded_base.model.get_weights()):
        np.testing.assert_array_equal(a, b)
    pd.testing.assert_frame_equal(before_t, layer_table(loaded_base.model)[["path", "own_trainable", "trainable"]])
    assert loaded_base.model.get_layer("predictions").output.shape[-1] == 5


def test_two_phase_trains_head_first_then_deeper(loaded_base, images_5_9):
    from tlviz.finetune.run import run_finetune

    res = run_finetune(loaded_base, images_5_9, RunConfig(unfreeze=2, lr=1e-3, epochs=2, preset="tf",
                                                          two_phase=True, head_epochs=2, head_lr=1e-2))
    assert list(res.history["phase"]) == ["head", "head", "main", "main"]
    assert list(res.history["lr"]) == [1e-2, 1e-2, 1e-3, 1e-3]
    assert list(res.history["epoch"]) == [1, 2, 3, 4]
    wc = res.weight_change.set_index("path")
    assert wc.loc["block3_conv", "l2_change"] > 0 and wc.loc["block2_conv", "l2_change"] == 0


def test_cancel_stops_after_current_batch_and_keeps_history(loaded_base, images_5_9):
    from tlviz.finetune.run import run_finetune

    calls = {"n": 0}

    def should_cancel():
        calls["n"] += 1
        return calls["n"] >= 5  # during the first epoch of a plain (one batch per step) run

    res = run_finetune(loaded_base, images_5_9, RunConfig(unfreeze=6, lr=1e-3, epochs=5, preset="tf"),
                       should_cancel=should_cancel)
    assert res.state == "cancelled"
    assert len(res.history) == 1 and bool(res.history["partial"].iloc[0])
    assert any(f.id == "run-cancelled" for f in res.findings)


def test_progress_reports_epoch_batch_and_eta(loaded_base, images_5_9):
    from tlviz.finetune.run import run_finetune

    seen = []
    run_finetune(loaded_base, images_5_9, RunConfig(unfreeze=2, lr=1e-3, epochs=2, preset="tf", use_cache=False),
                 progress=seen.append)
    stages = {s["stage"] for s in seen}
    assert {"preparing", "main", "evaluating"} <= stages
    last_main = [s for s in seen if s["stage"] == "main"][-1]
    assert last_main["epoch"] == 2 and last_main["epochs"] == 2 and len(last_main["history"]) == 2
    assert any(s["eta_s"] is not None for s in seen if s["stage"] == "main")


def test_augmentation_disables_cache_with_reason(loaded_base, images_5_9):
    from tlviz.finetune.run import run_finetune

    res = run_finetune(loaded_base, images_5_9, RunConfig(unfreeze=0, lr=1e-2, epochs=1, preset="tf", augment=True,
                                                          weight_decay=1e-4, optimizer="sgd"))
    assert not res.cache_used and res.state == "completed"
    assert any("augmentation" in n for n in res.notes)


def test_linear_probe_helper(loaded_base, images_5_9):
    from tlviz.finetune.run import linear_probe

    res = linear_probe(loaded_base, images_5_9, "tf", epochs=5)
    assert res.cache_used and res.final["val_accuracy"] > 0.5
    assert res.trainable_params == 64 * 5 + 5


# -- config, split, head decision --------------------------------------------------

@pytest.mark.parametrize("kwargs, match", [
    ({"lr": 0}, "learning rate"),
    ({"lr": float("nan")}, "learning rate"),
    ({"lr": 1000}, "far too large"),
    ({"epochs": 0}, "epochs"),
    ({"unfreeze": -1}, "unfreeze"),
    ({"unfreeze": 1.5}, "whole number"),
    ({"optimizer": "rmsprop"}, "Unknown optimizer"),
    ({"bn": "yes"}, "BatchNormalization"),
    ({"preset": "imagenet"}, "Unknown preset"),
    ({"val_fraction": 0.9}, "val_fraction"),
    ({"head_dropout": 1.0}, "head_dropout"),
    ({"augment": "yes"}, "augment"),
    ({"new_head": "auto"}, "new_head"),
])
def test_config_rejects_bad_values(kwargs, match):
    with pytest.raises(RunRefused, match=match):
        RunConfig(**kwargs)


def test_config_roundtrip_and_unknown_keys():
    cfg = RunConfig(unfreeze=3, lr=1e-4, epochs=2, two_phase=True)
    assert RunConfig.from_dict(cfg.to_dict()) == cfg
    assert cfg.total_epochs == 2 + cfg.head_epochs
    with pytest.raises(RunRefused, match="Unknown run option.*learning_rate"):
        RunConfig.from_dict({"learning_rate": 1e-3})
    assert "depth 3" in cfg.describe()


@pytest.mark.parametrize("best, recorded, expected", [
    ("torch", "tf", "torch"), (None, "tf", "tf"), (None, None, "unit"), ("bogus", None, "unit"),
    (None, "teachable", "teachable"), ("teachable", "tf", "teachable")])
def test_default_preset(best, recorded, expected):
    assert default_preset(best, recorded) == expected


def test_stratified_split_is_stratified_and_seeded():
    from tlviz.finetune.split import stratified_split

    labels = np.repeat(np.arange(4), [50, 30, 10, 1])
    tr, va = stratified_split(labels, 0.2, seed=3)
    assert len(np.intersect1d(tr, va)) == 0 and len(tr) + len(va) == len(labels)
    assert list(np.bincount(labels[va], minlength=4)) == [10, 6, 2, 0]
    tr2, va2 = stratified_split(labels, 0.2, seed=3)
    np.testing.assert_array_equal(va, va2)
    assert not np.array_equal(va, stratified_split(labels, 0.2, seed=4)[1])


@pytest.mark.parametrize("n_out, recorded, names, requested, new, forced", [
    (5, None, list("abcde"), None, False, False),
    (5, list("abcde"), list("abcde"), None, False, False),
    (5, list("01234"), list("56789"), None, True, False),
    (5, list("01234"), list("56789"), False, False, False),
    (3, None, list("abcde"), None, True, True),
    (5, None, list("abcde"), True, True, False),
])
def test_decide_head(n_out, recorded, names, requested, new, forced):
    from tlviz.finetune.build import decide_head

    d = decide_head(n_out, recorded, names, requested)
    assert (d.new_head, d.forced) == (new, forced)


def test_decide_head_refuses_keeping_a_head_of_the_wrong_size():
    from tlviz.finetune.build import decide_head

    with pytest.raises(RunRefused, match="3 outputs but the image set has 5 classes"):
        decide_head(3, None, list("abcde"), False)


def test_run_refuses_images_at_wrong_size(loaded_base, digits_5_9):
    from tlviz.finetune.run import run_finetune
    from tlviz.imagesets import load_image_set

    small = load_image_set(digits_5_9, (16, 16), 3)
    with pytest.raises(RunRefused, match="Decode the image set at the model's input size"):
        run_finetune(loaded_base, small, RunConfig(epochs=1))


# -- graph splitting on tiny models ---------------------------------------------------

def _tiny_residual():
    import keras
    from keras import layers

    inp = keras.Input((8, 8, 3))
    a = layers.Conv2D(4, 3, padding="same", name="c1")(inp)
    b = layers.Conv2D(4, 3, padding="same", name="c2")(a)
    s = layers.Add(name="add")([a, b])
    c = layers.Conv2D(4, 3, padding="same", name="c3")(s)
    g = layers.GlobalAveragePooling2D(name="gap")(c)
    out = layers.Dense(2, activation="softmax", name="out")(g)
    return keras.Model(inp, out)


@pytest.mark.parametrize("depth, cut_name", [(0, "gap"), (1, "add"), (2, "c1")])
def test_find_cut_never_splits_a_skip_connection(depth, cut_name):
    from tlviz.finetune.cache import find_cut
    from tlviz.unfreeze import apply_unfreeze

    m = _tiny_residual()
    apply_unfreeze(m, depth)
    cut, msg = find_cut(m)
    assert cut is not None, msg
    assert cut.name == cut_name
    x = np.random.default_rng(0).normal(size=(2, 8, 8, 3)).astype("float32")
    np.testing.assert_allclose(cut.upper(cut.lower(x)), m(x), rtol=1e-5, atol=1e-6)


def test_find_cut_expands_nested_base():
    import keras
    from keras import layers

    from tlviz.finetune.cache import find_cut
    from tlviz.unfreeze import apply_unfreeze

    binp = keras.Input((8, 8, 3))
    h = layers.Conv2D(4, 3, name="b1")(binp)
    h = layers.BatchNormalization(name="bn1")(h)
    h = layers.Conv2D(4, 3, name="b2")(h)
    base = keras.Model(binp, h, name="base")
    inp = keras.Input((8, 8, 3))
    x = base(inp)
    x = layers.GlobalAveragePooling2D(name="gap")(x)
    model = keras.Model(inp, layers.Dense(2, name="head")(x))
    apply_unfreeze(model, 1)  # b2 trains
    cut, msg = find_cut(model)
    assert cut is not None and cut.name == "bn1", msg
    xin = np.random.default_rng(1).normal(size=(2, 8, 8, 3)).astype("float32")
    np.testing.assert_allclose(cut.upper(cut.lower(xin)), model(xin), rtol=1e-5, atol=1e-6)


def test_activation_cache_memory_and_disk(tmp_path):
    from tlviz.finetune.cache import ActivationCache

    c = ActivationCache(budget_bytes=1000, disk_dir=tmp_path)
    k = ActivationCache.key("m", "i", "tf", "cut")
    assert c.get(k) is None
    c.put(k, np.ones((10, 10), np.float32))  # 400 bytes
    assert c.get(k) is not None
    c2 = ActivationCache(budget_bytes=1000, disk_dir=tmp_path)
    np.testing.assert_array_equal(c2.get(k), np.ones((10, 10), np.float32))
    c.put("big", np.ones((100, 100), np.float32))  # over budget: not kept
    assert c.get("big") is None and not c.fits(40_000)


# -- words and charts ------------------------------------------------------------------

def _hist(acc, val_acc, loss=None, val_loss=None):
    n = len(acc)
    return pd.DataFrame({"epoch": range(1, n + 1), "phase": "main", "loss": loss or [1.0] * n, "accuracy": acc,
                         "val_loss": val_loss or [1.0] * n, "val_accuracy": val_acc, "lr": 1e-3,
                         "elapsed_s": range(n), "partial": False})


@pytest.mark.parametrize("hist, state, ids", [
    (_hist([0.2, 0.21, 0.2], [0.2, 0.22, 0.19]), "completed", {"no-learning"}),
    (_hist([0.8, 0.95, 0.99], [0.7, 0.78, 0.77], val_loss=[0.9, 0.8, 0.85]), "completed", {"overfitting"}),
    (_hist([0.5, 0.6, 0.7], [0.5, 0.6, 0.7], val_loss=[1.2, 1.0, 0.8]), "completed", {"still-improving"}),
    (_hist([0.5, 0.8, 0.9], [0.5, 0.85, 0.85], val_loss=[1.2, 0.5, 0.5]), "completed", {"learning-ok"}),
    (_hist([0.3], [0.2], loss=[float("nan")]), "diverged", {"run-diverged"}),
])
def test_describe_curves(hist, state, ids):
    from tlviz.finetune.summary import describe_curves

    found = {f.id for f in describe_curves(hist, state, chance=0.2)}
    assert found == ids


def test_overfitting_advice_names_the_remedies():
    from tlviz.finetune.summary import describe_curves

    f = describe_curves(_hist([0.8, 0.99], [0.6, 0.7], val_loss=[0.9, 0.95]), "completed", 0.2)[0]
    assert f.id == "overfitting" and all(w in f.fix for w in ("dropout", "weight decay", "augmentation", "fewer"))


def test_charts_are_well_formed(head_run):
    from tlviz import charts
    from tlviz.finetune.lrfinder import suggest_lr

    spec = charts.curves_chart(head_run.history).to_dict()
    assert len(spec["hconcat"]) == 2
    assert spec["hconcat"][1]["encoding"]["y"]["scale"]["domain"] == [0, 1]
    comp = charts.compare_chart({"a": head_run.history, "b": head_run.history.iloc[:3]}).to_dict()
    assert comp["hconcat"][0]["encoding"]["color"]["field"] == "run"
    cm = charts.confusion_chart(head_run.confusion, head_run.class_names).to_dict()
    assert cm["layer"][1]["encoding"]["text"]["field"] == "count"
    df = charts.confusion_frame(head_run.confusion, head_run.class_names)
    assert df["count"].sum() == head_run.confusion.sum()
    wc = charts.weight_change_chart(head_run.weight_change).to_dict()
    assert wc["encoding"]["y"]["field"] == "rel_change"
    table = pd.DataFrame({"unfreeze": [0, 0, 2], "lr": [1e-3, 1e-2, 1e-3], "state": ["completed"] * 2 + ["queued"],
                          "best_val_accuracy": [0.5, 0.7, None], "run_id": ["a", "b", "c"]})
    hm = charts.sweep_heatmap(table).to_dict()
    assert hm["layer"][0]["encoding"]["x"]["field"] == "rate"
    lrs = np.logspace(-7, 1, 50)
    curve = pd.DataFrame({"step": range(50), "lr": lrs, "loss": 2 - np.tanh(np.log10(lrs) + 3),
                          "smoothed": 2 - np.tanh(np.log10(lrs) + 3)})
    sug, _ = suggest_lr(curve)
    assert 1e-4 < sug < 1e-2  # steepest fall of tanh centred at 1e-3
    lr_spec = charts.lr_finder_chart(curve, sug).to_dict()
    assert lr_spec["layer"][0]["encoding"]["x"]["scale"]["type"] == "log"


def test_lr_range_test_suggests_a_sensible_rate(loaded_base, images_5_9):
    from tlviz.finetune.lrfinder import lr_range_test

    before = [w.copy() for w in loaded_base.model.get_weights()]
    res = lr_range_test(loaded_base, images_5_9, RunConfig(unfreeze=6, preset="tf"))
    assert res.stopped_early and len(res.curve) < 100  # the loss blows up before lr = 10
    assert res.curve["lr"].iloc[0] == pytest.approx(1e-7)
    assert res.suggestion is not None and 1e-5 <= res.suggestion <= 1.0
    assert res.suggestion < res.curve["lr"].iloc[-1]
    for a, b in zip(before, loaded_base.model.get_weights()):
        np.testing.assert_array_equal(a, b)


def test_sweep_grid_reuses_cached_activations(loaded_base, images_5_9):
    from tlviz.finetune.cache import ActivationCache
    from tlviz.finetune.sweep import log_spaced_rates, run_sweep, sweep_configs

    base = RunConfig(epochs=1, preset="tf")
    cfgs = sweep_configs(base, [2, 0], [1e-3, 1e-2])
    assert [(c.unfreeze, c.lr) for c in cfgs] == [(0, 1e-3), (0, 1e-2), (2, 1e-3), (2, 1e-2)]
    assert len({c.sweep_id for c in cfgs}) == 1
    with pytest.raises(RunRefused):
        sweep_configs(base, [], [1e-3])
    assert log_spaced_rates(1e-4, 1e-2, 3) == [1e-4, 1e-3, 1e-2]
    cache = ActivationCache()
    out = run_sweep(loaded_base, images_5_9, base, [0], [1e-3, 1e-2, 3e-2], cache=cache)
    assert len(out) == 3 and all(r.cache_used for _, r in out)
    assert cache.misses == 1 and cache.hits == 2


def test_suggest_lr_gives_nothing_for_a_flat_curve():
    from tlviz.finetune.lrfinder import suggest_lr

    lrs = np.logspace(-7, 0, 60)
    flat = pd.DataFrame({"step": range(60), "lr": lrs, "loss": 0.01, "smoothed": 0.01 + 1e-5 * np.sin(np.arange(60))})
    assert suggest_lr(flat)[0] is None


# -- recorded call arguments (issue 13): a run keeps a base called with training=False in inference mode -------

def _guide_loaded(pin: bool = True):
    """The keras-io guide's model (MobileNetV2 base called with training=False, unfrozen) as a LoadedModel."""
    from conftest import guide_model

    from tlviz.models import summarize

    model, base = guide_model(pin)
    rng = np.random.default_rng(0)  # statistics that look trained, so a change would show
    for layer in base.layers:
        if type(layer).__name__ == "BatchNormalization":
            layer.moving_mean.assign(rng.normal(0, 0.5, layer.moving_mean.shape).astype("float32"))
            layer.moving_variance.assign(rng.uniform(0.5, 2.0, layer.moving_variance.shape).astype("float32"))
    return summarize(model, filename="guide.keras"), base.name


def _bn_state(model, base_name: str) -> dict:
    from tlviz.layers import iter_leaves

    return {leaf.path: [np.array(v) for v in leaf.layer.weights] for leaf in iter_leaves(model)
            if leaf.path.startswith(base_name + "/") and type(leaf.layer).__name__ == "BatchNormalization"}


@pytest.fixture(scope="module")
def images_96_5_9(digits_5_9):
    from dataclasses import replace

    from tlviz.imagesets import load_image_set

    images = load_image_set(digits_5_9, (96, 96), 3)
    keep = np.sort(np.concatenate([np.flatnonzero(images.labels == c)[:12] for c in range(5)]))
    return replace(images, images=images.images[keep], labels=images.labels[keep],
                   files=[images.files[i] for i in keep],
                   original_sizes=[images.original_sizes[i] for i in keep])


@pytest.mark.parametrize("pin, unfreeze, use_cache", [(True, 12, True), (True, 1000, False), (False, 1000, False)],
                         ids=["pinned-cached-top", "pinned-whole-base", "unpinned-whole-base"])
def test_a_run_keeps_a_base_called_with_training_false_in_inference_mode(images_96_5_9, pin, unfreeze, use_cache):
    """BatchNormalization trains its scale and offset (bn='train') but keeps its moving statistics when pinned."""
    from tlviz.finetune.run import run_finetune

    loaded, base_name = _guide_loaded(pin)
    before = _bn_state(loaded.model, base_name)
    res = run_finetune(loaded, images_96_5_9, RunConfig(unfreeze=unfreeze, lr=1e-2, epochs=1, batch_size=16,
                                                         preset="tf", bn="train", new_head=False,
                                                         use_cache=use_cache))
    assert res.state == "completed"
    after = _bn_state(res.model, base_name)
    trained = [p for p in after if not np.allclose(after[p][0], before[p][0])]  # gamma moved
    assert trained  # BatchNormalization did train
    moving = [p for p in after
              if not (np.allclose(after[p][2], before[p][2]) and np.allclose(after[p][3], before[p][3]))]
    if pin:
        assert moving == []  # inference mode, as the model is written
        assert any(f"'{base_name}' with `training=False`" in n for n in res.notes)
        assert res.cache_used is use_cache
    else:
        assert set(moving) == set(trained)  # batch statistics: the moving ones follow the batches
    assert _bn_state(loaded.model, base_name).keys() == before.keys()
    assert all(np.array_equal(a, b) for p in before for a, b in zip(before[p], _bn_state(loaded.model, base_name)[p]))
