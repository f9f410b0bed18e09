"""Recorded call arguments: a base called with training=False stays in inference mode (tlviz.callargs)."""

from __future__ import annotations

import numpy as np

from tlviz.callargs import honour_recorded_training, inference_only_paths, recorded_training


def _guide_model(pin: bool = True):
    """The keras-io guide's pattern: base(x, training=False), then base.trainable = True."""
    import keras

    keras.utils.set_random_seed(0)
    i = keras.Input((6,))
    x = keras.layers.Dense(4, name="d")(i)
    x = keras.layers.BatchNormalization(name="bn")(x)
    base = keras.Model(i, x, name="base")
    base.get_layer("bn").set_weights([np.ones(4), np.zeros(4), np.full(4, 5.0), np.full(4, 9.0)])
    j = keras.Input((6,))
    y = base(j, training=False) if pin else base(j)
    y = keras.layers.Dense(2, name="head")(y)
    model = keras.Model(j, y)
    base.trainable = True
    return model, base


def test_recorded_training_is_read_from_the_graph_and_survives_clone_and_save(tmp_path):
    import keras

    model, _ = _guide_model()
    assert recorded_training(model) == {"base": False}
    inside = inference_only_paths(model)
    assert all(p.startswith("base/") for p in inside) and {"base/d", "base/bn"} <= inside
    unpinned, _ = _guide_model(pin=False)
    assert recorded_training(unpinned) == {}
    model.save(tmp_path / "m.keras")
    again = keras.models.load_model(tmp_path / "m.keras")
    assert recorded_training(again) == {"base": False}
    assert recorded_training(keras.models.clone_model(model)) == {"base": False}


def test_keras_ignores_the_pinned_argument_until_it_is_honoured():
    import keras

    model, base = _guide_model()
    x = np.random.default_rng(0).random((8, 6)).astype("float32")
    # Keras 3 passes the outer training=True into the pinned base: BN uses batch statistics.
    assert not np.allclose(model(x, training=True), model(x, training=False))
    assert honour_recorded_training(model) == ["base"]
    assert np.allclose(model(x, training=True), model(x, training=False))
    assert honour_recorded_training(model) == ["base"]  # idempotent
    # fit respects it too: the moving statistics stay, the weights still train.
    bn = base.get_layer("bn")
    before_mean, before_gamma = bn.moving_mean.numpy().copy(), bn.gamma.numpy().copy()
    model.compile(keras.optimizers.SGD(0.1), "mse")
    model.fit(x, np.ones((8, 2)), epochs=2, verbose=0)
    assert np.allclose(bn.moving_mean.numpy(), before_mean)
    assert not np.allclose(bn.gamma.numpy(), before_gamma)


def _conv_guide_model():
    """A pinned base of two conv + BN blocks: the lower one frozen, the upper one (BN included) trainable."""
    import keras

    keras.utils.set_random_seed(0)
    i = keras.Input((5, 5, 3))
    x = keras.layers.Conv2D(4, 1, name="c1")(i)
    x = keras.layers.BatchNormalization(name="bn1")(x)
    x = keras.layers.Conv2D(4, 1, name="c2")(x)
    x = keras.layers.BatchNormalization(name="bn2")(x)
    base = keras.Model(i, x, name="base")
    for name in ("bn1", "bn2"):
        base.get_layer(name).set_weights([np.ones(4), np.zeros(4), np.full(4, 5.0), np.full(4, 9.0)])
    j = keras.Input((5, 5, 3))
    y = keras.layers.GlobalAveragePooling2D(name="pool")(base(j, training=False))
    model = keras.Model(j, keras.layers.Dense(2, name="head")(y))
    base.get_layer("c1").trainable = False
    base.get_layer("bn1").trainable = False
    return model, base


def test_layers_inside_a_pinned_base_stay_in_inference_mode_in_a_flattened_graph():
    """The fine-tuning cache trains a flat copy of the graph (shared layers): the pinned BN must not switch there."""
    import keras

    from tlviz.finetune.cache import find_cut

    model, base = _conv_guide_model()
    assert honour_recorded_training(model) == ["base"]
    cut, message = find_cut(model)
    assert cut is not None and cut.name == "bn1", message
    x = np.random.default_rng(0).random((8, 5, 5, 3)).astype("float32")
    feats = cut.lower(x)
    assert np.allclose(cut.upper(feats, training=True), cut.upper(feats, training=False))
    bn2 = base.get_layer("bn2")
    mean, gamma = bn2.moving_mean.numpy().copy(), bn2.gamma.numpy().copy()
    cut.upper.compile(keras.optimizers.SGD(0.1), "mse")
    cut.upper.fit(feats, np.ones((8, 2)), epochs=2, verbose=0)
    assert np.allclose(bn2.moving_mean.numpy(), mean) and not np.allclose(bn2.gamma.numpy(), gamma)


def test_training_mode_clone_honours_the_recorded_argument_unless_told_not_to():
    from tlviz.diagnose.clones import clone_for_training_mode

    model, base = _guide_model()
    x = np.random.default_rng(1).random((8, 6)).astype("float32")
    honoured = clone_for_training_mode(model)
    assert recorded_training(honoured) == {"base": False}
    assert np.allclose(honoured(x, training=True), model(x, training=False), atol=1e-5)
    measuring = clone_for_training_mode(model, honour_training=False)
    assert not np.allclose(measuring(x, training=True), model(x, training=False), atol=1e-5)
    assert np.allclose(base.get_layer("bn").moving_mean.numpy(), 5.0)  # the original is never run in training mode
