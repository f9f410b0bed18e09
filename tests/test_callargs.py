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
