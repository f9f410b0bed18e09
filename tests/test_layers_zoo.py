"""A zoo of model structures: base and head found by structure, whatever nesting wraps them (issue 22, E).

Each structure is built twice from one builder in `tools/keras2_models.py`: with Keras 3 here, and with
``tf_keras`` into a genuine Keras 2 `.h5` file (one subprocess for the whole zoo), loaded with tlviz's
loader. Both must give the same paths and the same roles.
"""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from tlviz.layers import freezing_findings, layer_table, totals
from tlviz.unfreeze import apply_unfreeze, base_weight_layers, unfreeze_plan

ROOT = Path(__file__).resolve().parent.parent
MOBILENET = "mobilenetv2_0.35_96"


def _builders():
    spec = importlib.util.spec_from_file_location("keras2_models", ROOT / "tools" / "keras2_models.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)  # imports numpy only: tf_keras is imported by the builders when called
    return module


k2 = _builders()

#: Per structure: the paths that are 'input', the paths that are 'head' (in order), and the prefix every
#: other path starts with ('' for a flat model): all of those are 'base'.
EXPECTED = {
    "zoo_flat": ([], ["gap", "drop", "hidden", "out"], "", ["scale"]),
    "zoo_nested": ([], ["gap", "drop", "out"], f"{MOBILENET}/", []),
    "zoo_teachable": ([], ["head/hidden", "head/out"], "trunk/", []),
    "zoo_wrapped": ([], ["gap", "out"], f"wrapper/{MOBILENET}/", []),
    "zoo_preprocess": (["preprocess/scale"], ["gap", "out"], f"{MOBILENET}/", []),
}


@pytest.fixture(scope="module")
def keras2_zoo(tmp_path_factory) -> Path:
    """The zoo as Keras 2 `.h5` files, written by tf_keras in one subprocess."""
    if importlib.util.find_spec("tf_keras") is None:
        pytest.fail("The tf_keras package is missing: `pip install -r requirements-dev.txt` installs it.")
    out = tmp_path_factory.mktemp("keras2_zoo")
    done = subprocess.run([sys.executable, str(ROOT / "tools" / "keras2_models.py"), str(out), *k2.ZOO],
                          capture_output=True, text=True, timeout=600,
                          env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"})
    assert done.returncode == 0, done.stderr[-3000:]
    return out


def _keras3(name: str):
    """The Keras 3 build, its weights replaced by the same seeded noise as the Keras 2 file's (a freshly
    initialised MobileNetV2 in inference mode outputs zeros, and nothing would train)."""
    import keras

    keras.utils.set_random_seed(0)
    model = getattr(k2, name)(keras)
    k2._noise_weights(model, np.random.default_rng(0))
    return model


def _keras2(folder: Path, name: str):
    from tlviz.models import load_model

    loaded = load_model(folder / f"{name}.h5")
    assert loaded.conversion is not None  # really read as a Keras 2 file
    return loaded.model


def assert_roles(model, name: str) -> None:
    """Every path of `model` has the role `EXPECTED` gives it."""
    inputs, head, base_prefix, flat_inputs = EXPECTED[name]
    table = layer_table(model)
    roles = dict(zip(table["path"], table["role"]))
    assert [p for p, r in roles.items() if r == "input"] == inputs + flat_inputs
    assert [p for p, r in roles.items() if r == "head"] == head
    base = [p for p, r in roles.items() if r == "base"]
    assert base and all(p.startswith(base_prefix) for p in base)
    assert len(base) + len(head) + len(inputs) + len(flat_inputs) == len(table)
    # the head holds weights, the base holds the rest of the feature layers
    assert table[table["role"] == "head"]["holds_weights"].any()
    weighted_base = set(base_weight_layers(table)["path"])
    assert weighted_base == {p for p, w in zip(table["path"], table["holds_weights"]) if w and roles[p] == "base"}
    if base_prefix.endswith(f"{MOBILENET}/"):
        assert len(weighted_base) == 104  # every weight-holding layer of MobileNetV2 (52 conv + 52 BN)


@pytest.mark.parametrize("name", k2.ZOO)
def test_roles_keras3(name):
    assert_roles(_keras3(name), name)


@pytest.mark.parametrize("name", k2.ZOO)
def test_roles_keras2_file(keras2_zoo, name):
    model = _keras2(keras2_zoo, name)
    assert_roles(model, name)
    assert list(layer_table(model)["path"]) == list(layer_table(_keras3(name))["path"])


def test_an_applications_model_with_its_own_top_inside_a_wrapper():
    """A nested model that classifies too (include_top=True) is not all base: its pooling and Dense are the head."""
    import keras

    net = keras.applications.MobileNetV2(alpha=0.35, input_shape=(96, 96, 3), include_top=True, weights=None,
                                         classes=3)
    model = keras.Sequential([keras.Input((96, 96, 3)), net], name="wrapped_with_top")
    table = layer_table(model)
    roles = dict(zip(table["path"], table["role"]))
    pooling = next(layer.name for layer in net.layers if isinstance(layer, keras.layers.GlobalAveragePooling2D))
    assert [p for p, r in roles.items() if r == "head"] == [f"{net.name}/{pooling}", f"{net.name}/predictions"]
    assert roles[f"{net.name}/out_relu"] == roles[f"{net.name}/Conv1"] == "base"


def test_an_augmentation_model_before_the_base_is_input():
    import keras

    augment = keras.Sequential([keras.layers.RandomFlip("horizontal", name="flip"),
                                keras.layers.RandomRotation(0.1, name="turn")], name="augment")
    inner = keras.Input((32, 32, 3))
    y = keras.layers.Conv2D(4, 3, name="conv")(inner)
    base = keras.Model(inner, keras.layers.BatchNormalization(name="bn")(y), name="features")
    inp = keras.Input((32, 32, 3))
    x = keras.layers.Normalization(mean=0.5, variance=0.25, name="norm")(augment(inp))
    x = keras.layers.GlobalAveragePooling2D(name="gap")(base(x))
    model = keras.Model(inp, keras.layers.Dense(2, name="out")(x))
    roles = layer_table(model).set_index("path")["role"].to_dict()
    assert roles == {"augment/flip": "input", "augment/turn": "input", "norm": "input", "features/conv": "base",
                     "features/bn": "base", "gap": "head", "out": "head"}


def test_a_model_on_vectors_has_its_last_dense_as_head():
    """No spatial layer: the head is the last Dense, as before."""
    import keras

    model = keras.Sequential([keras.Input((12,)), keras.layers.Dense(8, name="d1"), keras.layers.Dense(8, name="d2"),
                              keras.layers.Dense(3, name="out"), keras.layers.Softmax(name="probs")])
    assert layer_table(model).set_index("path")["role"].to_dict() == {
        "d1": "base", "d2": "base", "out": "head", "probs": "head"}


# -- Teachable Machine: fine-tuning trains the head and the top of MobileNetV2 ----------------------------------

def _expected_training(model, depth: int, train_bn: bool) -> set[str]:
    """The head's layers and the top `depth` weight-holding MobileNetV2 layers (BN only with `train_bn`)."""
    from tlviz.layers import iter_leaves

    net = [leaf for leaf in iter_leaves(model) if leaf.path.startswith("trunk/model1/") and leaf.layer.weights]
    top = [leaf for leaf in net[-depth:] if train_bn or type(leaf.layer).__name__ != "BatchNormalization"]
    return {leaf.path for leaf in top} | {"head/hidden", "head/out"}


@pytest.mark.parametrize("source", ["keras3", "keras2"])
@pytest.mark.parametrize("train_bn", [False, True])
def test_teachable_machine_unfreeze_trains_the_head_and_the_top_of_mobilenet(keras2_zoo, source, train_bn):
    import keras

    from tlviz.layers import iter_leaves

    model = _keras3("zoo_teachable") if source == "keras3" else _keras2(keras2_zoo, "zoo_teachable")
    model.trainable = False  # as a user may hand it over: everything frozen, the head Sequential too
    expected = _expected_training(model, 10, train_bn)
    assert len(expected) == (12 if train_bn else 7)  # 10 layers (5 conv + 5 BN) and the two Dense
    plan = unfreeze_plan(model, 10, train_bn=train_bn)
    assert set(plan[plan["would_train"]]["path"]) == expected
    apply_unfreeze(model, 10, train_bn=train_bn)
    assert model.get_layer("head").trainable
    model.compile(keras.optimizers.SGD(0.05), "sparse_categorical_crossentropy")
    assert totals(layer_table(model))["trainable_params"] == int(plan["would_train_params"].sum())
    before = {leaf.path: [np.array(w) for w in leaf.layer.get_weights()] for leaf in iter_leaves(model)}
    rng = np.random.default_rng(0)
    model.fit(rng.uniform(-1, 1, (8, 96, 96, 3)).astype("float32"), np.arange(8) % 3, batch_size=8, epochs=1,
              verbose=0)
    # a layer's trainable weights move exactly when it was meant to train (BN moving statistics aside)
    moved = set()
    for leaf in iter_leaves(model):
        trainable = {id(v) for v in leaf.layer.trainable_weights}
        for v, old in zip(leaf.layer.weights, before[leaf.path]):
            if id(v) in trainable and not np.array_equal(np.asarray(v), old):
                moved.add(leaf.path)
    assert moved == expected


def test_teachable_machine_shape_gets_bn_advice_not_a_warning():
    """Trainable BatchNormalization in the MobileNetV2 base, read from the file: advice at info severity."""
    found = [f for f in freezing_findings(_keras3("zoo_teachable")) if f.id == "bn-trainable-in-base"]
    assert len(found) == 1 and found[0].severity == "info"
    assert found[0].evidence["trainable_bn_layers"] == 52 and found[0].evidence["measured_on_images"] is False
