"""The layer table against Keras's own ground truth, on nested keras.applications models."""

import json
import subprocess
import sys

import numpy as np
import pytest

from tlviz.layers import freezing_findings, layer_table, totals
from tlviz.unfreeze import apply_unfreeze, base_weight_layers, block_boundaries, block_of, unfreeze_plan


def _keras_counts(model):
    def count(ws):
        seen, n = set(), 0
        for w in ws:
            if id(w) not in seen:
                seen.add(id(w))
                n += int(np.prod(w.shape))
        return n
    return count(model.trainable_weights), count(model.non_trainable_weights)


def _mobilenet(top_trainable: int | None, pin: bool = True):
    """MobileNetV2 (alpha 0.35, weights=None) as a nested base under a new head, called with training=False."""
    import keras

    base = keras.applications.MobileNetV2(input_shape=(64, 64, 3), alpha=0.35, include_top=False, weights=None)
    if top_trainable is None:
        base.trainable = False
    else:
        base.trainable = True
        for layer in base.layers[:-top_trainable]:
            layer.trainable = False
    inp = keras.Input((64, 64, 3))
    x = base(inp, training=False) if pin else base(inp)
    x = keras.layers.GlobalAveragePooling2D()(x)
    x = keras.layers.Dropout(0.2)(x)
    out = keras.layers.Dense(3, activation="softmax", name="head")(x)
    return keras.Model(inp, out), base


@pytest.fixture(scope="module")
def frozen_mobilenet():
    return _mobilenet(None)


@pytest.fixture(scope="module")
def partly_unfrozen_mobilenet():
    return _mobilenet(20)


@pytest.mark.parametrize("which", ["frozen_mobilenet", "partly_unfrozen_mobilenet"])
def test_totals_match_keras(which, request):
    model, base = request.getfixturevalue(which)
    table = layer_table(model)
    tot = totals(table)
    k_train, k_non = _keras_counts(model)
    assert tot["trainable_params"] == k_train
    assert tot["non_trainable_params"] == k_non
    assert tot["total_params"] == model.count_params()
    # every layer of the nested base appears with its path
    assert any(p.startswith(base.name + "/block_3_expand") for p in table["path"])
    assert len(table) == len([l for l in base.layers if type(l).__name__ != "InputLayer"]) + 3


def test_effective_trainability_per_layer(partly_unfrozen_mobilenet):
    model, base = partly_unfrozen_mobilenet
    table = layer_table(model)
    trainable_ids = {id(w) for w in model.trainable_weights}
    by_path = {r.path: r for r in table.itertuples()}
    for layer in base.layers:
        if not layer.weights:
            continue
        row = by_path[f"{base.name}/{layer.name}"]
        keras_says = any(id(w) in trainable_ids for w in layer.weights)
        assert bool(row.trainable) == keras_says, layer.name
    assert by_path["head"].trainable


def test_nested_model_frozen_container(frozen_mobilenet):
    model, base = frozen_mobilenet
    table = layer_table(model)
    inside = table[table["path"].str.startswith(base.name + "/")]
    assert not inside["trainable"].any()
    assert inside["trainable_params"].sum() == 0
    assert set(inside["frozen_container"]) == {base.name}


def test_layer_unfrozen_inside_frozen_model_follows_keras3():
    """Keras 3 trains a layer set trainable after its container was frozen: the table says so."""
    import keras

    inp = keras.Input((4,))
    inner = keras.layers.Dense(4, name="inner")
    base = keras.Model(inp, inner(inp), name="base")
    base.trainable = False
    inner.trainable = True
    i2 = keras.Input((4,))
    model = keras.Model(i2, keras.layers.Dense(2, name="head")(base(i2)))
    table = layer_table(model).set_index("path")
    assert table.loc["base/inner", "trainable"]
    assert totals(layer_table(model))["trainable_params"] == _keras_counts(model)[0]
    ids = [f.id for f in freezing_findings(model)]
    assert "trainable-inside-frozen-model" in ids
    # and Keras really trains it: the weights move
    model.compile(keras.optimizers.SGD(0.1), "mse")
    k0 = inner.kernel.numpy().copy()
    rng = np.random.default_rng(0)
    model.fit(rng.random((32, 4)), rng.random((32, 2)), epochs=2, verbose=0)
    assert np.abs(k0 - inner.kernel.numpy()).max() > 0


def test_roles_nested_and_flat(frozen_mobilenet, loaded_base):
    model, base = frozen_mobilenet
    table = layer_table(model)
    assert set(table[table["path"].str.startswith(base.name + "/")]["role"]) == {"base"}
    assert table.set_index("path").loc["head", "role"] == "head"
    flat = layer_table(loaded_base.model)
    roles = flat.set_index("path")["role"]
    assert roles["predictions"] == "head" and roles["block1_conv"] == "base"


def test_frozen_sample_has_no_trainable_weights(frozen_model_path):
    from tlviz.models import load_model

    loaded = load_model(frozen_model_path)
    table = layer_table(loaded.model)
    assert totals(table)["trainable_params"] == 0
    ids = [f.id for f in freezing_findings(loaded.model, table)]
    assert ids == ["no-trainable-weights"]
    assert any("/" in p for p in table["path"])  # nested model expanded


def test_base_sample_is_clean(loaded_base):
    # all layers trainable, but the base is not a nested "pre-trained base": only the BN warning
    ids = [f.id for f in freezing_findings(loaded_base.model)]
    assert "no-trainable-weights" not in ids and "head-frozen" not in ids


def test_head_frozen_and_bn_warnings():

    model, base = _mobilenet(10)
    model.get_layer("head").trainable = False
    ids = [f.id for f in freezing_findings(model)]
    assert "head-frozen" in ids
    # base(x, training=False) keeps the trainable BN of the unfrozen top in inference mode as written: no
    # "call the base with training=False" warning (issue 13); only the Keras-version one where Keras overrides it
    assert_pinned_bn_judged_honestly(freezing_findings(model))
    # without it, trainable BN inside the unfrozen top of the base is the fault
    unpinned, _ = _mobilenet(10, pin=False)
    assert "bn-trainable-in-base" in [f.id for f in freezing_findings(unpinned)]
    clean, base2 = _mobilenet(None)
    assert freezing_findings(clean) == []


def test_unfreeze_plan_preview_does_not_change_model(partly_unfrozen_mobilenet):
    model, base = partly_unfrozen_mobilenet
    before = [l.trainable for l in base.layers]
    table = layer_table(model)
    n_base = len(base_weight_layers(table))
    head_only = unfreeze_plan(model, 0, table=table)
    assert list(head_only[head_only["would_train"]]["path"]) == ["head"]
    all_in = unfreeze_plan(model, n_base + 100, train_bn=True, table=table)
    assert all_in[all_in["holds_weights"]]["would_train"].all()
    five = unfreeze_plan(model, 5, table=table)
    chosen = five[(five["role"] == "base") & five["would_train"]]
    assert len(chosen) <= 5 and not chosen["is_bn"].any()
    assert [l.trainable for l in base.layers] == before


def test_apply_unfreeze_matches_plan_and_keras():
    import keras

    model, base = _mobilenet(None)
    clone = keras.models.clone_model(model)
    clone.set_weights(model.get_weights())
    plan = unfreeze_plan(clone, 7)
    apply_unfreeze(clone, 7)
    assert totals(layer_table(clone))["trainable_params"] == int(plan["would_train_params"].sum())
    assert _keras_counts(clone)[0] == int(plan["would_train_params"].sum())


def test_block_boundaries_mobilenet(frozen_mobilenet):
    model, base = frozen_mobilenet
    table = layer_table(model)
    bounds = block_boundaries(table)
    labels = [b for _, b in bounds]
    assert "block_16" in labels and "block_1" in labels
    depths = dict((b, d) for d, b in bounds)
    base_rows = list(base_weight_layers(table)["path"])
    # unfreezing block_16's depth starts exactly at the first weighted layer of block_16
    first = base_rows[len(base_rows) - depths["block_16"]]
    assert block_of(first) == "block_16"
    assert block_of(base_rows[len(base_rows) - depths["block_16"] - 1]) != "block_16"


def test_cli_layers_json(frozen_model_path):
    out = subprocess.run([sys.executable, "-m", "tlviz", "layers", str(frozen_model_path), "--json"],
                         capture_output=True, text=True)
    assert out.returncode == 1, out.stderr  # the exit-status contract: an error-level finding (nothing trains)
    data = json.loads(out.stdout)
    assert [(f["id"], f["severity"]) for f in data["findings"]] == [("no-trainable-weights", "error")]
    assert {l["path"]: l["role"] for l in data["layers"]}["new_head"] == "head"
    assert data["model"] == "digits_frozen"
    assert data["input_shape"] == [32, 32, 3]
    assert data["trainable_params"] == 0
    assert data["total_params"] == data["non_trainable_params"] > 0
    assert {"path", "class", "trainable", "trainable_params", "non_trainable_params"} <= set(data["layers"][0])
    assert any(l["path"] == "digits_features/block1_bn" for l in data["layers"])


def test_cli_layers_table_and_refusal(base_model_path, tmp_path):
    out = subprocess.run([sys.executable, "-m", "tlviz", "layers", str(base_model_path)],
                         capture_output=True, text=True)
    assert out.returncode == 0 and "block1_conv" in out.stdout and "Total params: 24,245" in out.stdout
    bad = tmp_path / "notes.keras"
    bad.write_text("not a model")
    out = subprocess.run([sys.executable, "-m", "tlviz", "layers", str(bad)], capture_output=True, text=True)
    assert out.returncode == 2
    assert "not a Keras model" in out.stderr and "model.save" in out.stderr


@pytest.mark.parametrize("make, random", [
    (lambda k: k.layers.Dropout(0.5), True),
    (lambda k: k.layers.SpatialDropout2D(0.2), True),
    (lambda k: k.layers.GaussianNoise(0.1), True),
    (lambda k: k.layers.RandomFlip(), True),
    (lambda k: k.layers.Dropout(0.0), False),  # does nothing
    (lambda k: k.layers.GaussianNoise(0.0), False),
    (lambda k: k.layers.BatchNormalization(), False),  # batch statistics, not random
    (lambda k: k.layers.Dense(2), False),
])
def test_random_in_training_is_one_rule(make, random):
    """One rule for "this layer is random in training": diagnose's clones and the fine-tuning cache both use it."""
    import keras

    from tlviz.diagnose import clones
    from tlviz.finetune import cache
    from tlviz.layers import random_in_training

    assert random_in_training(make(keras)) is random
    assert clones.random_in_training is cache.random_in_training is random_in_training


def _guide_mobilenet(pin: bool = True):
    """The keras-io transfer-learning guide's recipe, fine-tuning phase: base(x, training=False), then unfrozen."""
    import keras
    from conftest import guide_model

    model, base = guide_model(pin, softmax=False)
    model.compile(optimizer=keras.optimizers.Adam(1e-5), loss="sparse_categorical_crossentropy")
    return model, base


def test_guide_recipe_keeps_bn_in_inference_mode_and_gets_no_bn_warning():
    """The guide's own fine-tuning recipe is not a fault; the same model without training=False is (issue 13)."""
    from tlviz.layers import inference_by_call, inference_by_call_notes

    model, base = _guide_mobilenet()
    table = layer_table(model)
    inside = table[table["path"].str.startswith(base.name + "/")]
    assert set(inside["inference_by_call"]) == {base.name}
    assert set(table[~table["path"].str.startswith(base.name + "/")]["inference_by_call"]) == {""}
    n_bn = int(inside["is_bn"].sum())
    assert n_bn > 10 and inside[inside["is_bn"]]["trainable"].all()
    assert inference_by_call(table) == {base.name: {"layers": len(inside), "bn": n_bn, "trainable_bn": n_bn}}
    notes = inference_by_call_notes(table)
    assert len(notes) == 1 and notes[0].startswith(
        f"BatchNormalization runs in inference mode: the base `{base.name}` is called with `training=False`")
    assert_pinned_bn_judged_honestly(freezing_findings(model, table))
    unpinned, _ = _guide_mobilenet(pin=False)
    table = layer_table(unpinned)
    assert set(table["inference_by_call"]) == {""} and inference_by_call_notes(table) == []
    found = [f for f in freezing_findings(unpinned, table) if f.id == "bn-trainable-in-base"]
    assert found and "training=False" in found[0].fix and found[0].evidence["trainable_bn_layers"] == n_bn


def assert_pinned_bn_judged_honestly(findings) -> None:
    """BN inside a base called with training=False: never a ``bn-trainable-in-base`` warning (the model is
    written as the keras-io guide recommends). Where Keras keeps that argument in `fit` there is nothing to
    say; where it does not (Keras 3.15, measured by tlviz.callargs), an info finding says so and never tells
    the user to do what the model already does."""
    from tlviz.callargs import keras_honours_recorded_training

    assert not [f for f in findings if f.id == "bn-trainable-in-base"]
    found = [f for f in findings if f.id == "keras-overrides-training-false"]
    if keras_honours_recorded_training():
        assert not found
        return
    assert len(found) == 1
    f = found[0]
    assert f.severity == "info"
    assert f.evidence["keras_honours_training_false"] is False and f.evidence["called_with_training_false"]
    assert "call the base with `base(x, training=False)`" not in f.fix
    assert "layer.trainable = False" in f.fix and "passes `fit`'s `training=True`" in f.fix


def test_keras_overriding_a_recorded_training_false_is_measured():
    """The measurement agrees with what a real `fit` does to a pinned base's BN statistics."""
    import keras

    from tlviz.callargs import keras_honours_recorded_training

    keras.utils.set_random_seed(0)
    i = keras.Input((6,))
    bn = keras.layers.BatchNormalization()
    base = keras.Model(i, bn(keras.layers.Dense(4)(i)))
    j = keras.Input((6,))
    model = keras.Model(j, keras.layers.Dense(2)(base(j, training=False)))
    model.compile("sgd", "mse")
    before = bn.moving_mean.numpy().copy()
    x = np.random.default_rng(0).random((32, 6)).astype("float32") * 5
    model.fit(x, np.zeros((32, 2)), epochs=1, verbose=0)
    assert keras_honours_recorded_training() == bool(np.allclose(before, bn.moving_mean.numpy()))
