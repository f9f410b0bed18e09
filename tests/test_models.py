"""Model loading: good files, and every kind of bad file gets a clear, specific refusal."""

import io
import zipfile

import numpy as np
import pytest

from tlviz.errors import ModelRefused
from tlviz.models import load_model


def _tiny(name="tiny", rescaling=False):
    import keras

    inp = keras.Input((16, 16, 3))
    x = keras.layers.Rescaling(1 / 255.0, name="rescale")(inp) if rescaling else inp
    x = keras.layers.Conv2D(4, 3, name="conv")(x)
    x = keras.layers.GlobalAveragePooling2D()(x)
    return keras.Model(inp, keras.layers.Dense(3, activation="softmax", name="out")(x), name=name)


def test_load_sample_with_metadata(base_model_path):
    loaded = load_model(base_model_path)
    assert loaded.name == "digits_base"
    assert loaded.input_shape == (32, 32, 3)
    assert loaded.n_outputs == 5
    assert loaded.recorded_preset == "tf"
    assert loaded.class_names == ["0", "1", "2", "3", "4"]
    assert loaded.total_params == loaded.trainable_params + loaded.non_trainable_params == loaded.model.count_params()
    assert loaded.builtin_preprocessing == []


def test_metadata_travels_inside_the_archive(base_model_path):
    # an upload has no sidecar file: the embedded tlviz.json must be enough
    loaded = load_model(base_model_path.read_bytes(), filename="upload.keras")
    assert loaded.recorded_preset == "tf"


@pytest.mark.parametrize("fmt", ["keras", "h5"])
def test_keras_and_h5_round_trip(tmp_path, fmt):
    model = _tiny(rescaling=True)
    path = tmp_path / f"m.{fmt}"
    model.save(path)
    loaded = load_model(path.read_bytes(), filename=path.name)
    x = np.random.default_rng(0).random((2, 16, 16, 3)).astype("float32") * 255
    np.testing.assert_allclose(loaded.model.predict(x, verbose=0), model.predict(x, verbose=0), rtol=1e-5)
    assert loaded.builtin_preprocessing and loaded.builtin_preprocessing[0].startswith("Rescaling 'rescale'")


def test_lambda_layer_refused_by_name(tmp_path):
    import keras

    inp = keras.Input((8, 8, 3))
    x = keras.layers.Lambda(lambda t: t / 255.0, name="my_scaler")(inp)
    model = keras.Model(inp, keras.layers.Dense(2)(keras.layers.Flatten()(x)))
    for fmt in ("keras", "h5"):
        path = tmp_path / f"lam.{fmt}"
        model.save(path)
        with pytest.raises(ModelRefused) as err:
            load_model(path)
        msg = str(err.value)
        assert "Lambda layer ('my_scaler')" in msg and "refuses" in msg
        assert "safe_mode=False" not in msg


def test_custom_layer_refused_by_name(tmp_path):
    import keras

    @keras.saving.register_keras_serializable(package="mypkg")
    class Doubler(keras.layers.Layer):
        def call(self, x):
            return x * 2

    inp = keras.Input((4,))
    model = keras.Model(inp, keras.layers.Dense(2)(Doubler(name="doubler")(inp)))
    path = tmp_path / "custom.keras"
    model.save(path)
    with pytest.raises(ModelRefused) as err:
        load_model(path)
    assert "custom layer 'doubler'" in str(err.value) and "mypkg>Doubler" in str(err.value)


def test_not_a_model():
    with pytest.raises(ModelRefused, match="not a Keras model"):
        load_model(b"hello, I am a text file", filename="notes.keras")
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        zf.writestr("cats/1.jpg", b"x")
    with pytest.raises(ModelRefused, match="not a Keras model.*Image set"):
        load_model(buf.getvalue(), filename="images.zip")
    with pytest.raises(ModelRefused, match="empty"):
        load_model(b"", filename="empty.keras")


def test_savedmodel_refused_with_resave_instructions(tmp_path):
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        zf.writestr("my_model/saved_model.pb", b"\x08\x01")
        zf.writestr("my_model/variables/variables.index", b"")
    for data, name in [(buf.getvalue(), "my_model.zip"), (b"\x08\x01\x12", "saved_model.pb")]:
        with pytest.raises(ModelRefused) as err:
            load_model(data, filename=name)
        assert "SavedModel" in str(err.value) and "model.save('model.keras')" in str(err.value)
    folder = tmp_path / "exported"
    folder.mkdir()
    (folder / "saved_model.pb").write_bytes(b"\x08")
    with pytest.raises(ModelRefused, match="SavedModel"):
        load_model(folder)


def test_weights_only_h5_refused(tmp_path):
    model = _tiny()
    path = tmp_path / "w.weights.h5"
    model.save_weights(path)
    with pytest.raises(ModelRefused, match="weights only"):
        load_model(path)


def test_size_limit(monkeypatch, base_model_path):
    monkeypatch.setenv("TLVIZ_MAX_MODEL_MB", "0.01")
    with pytest.raises(ModelRefused, match="over the 0 MB limit|TLVIZ_MAX_MODEL_MB"):
        load_model(base_model_path)
    with pytest.raises(ModelRefused, match="TLVIZ_MAX_MODEL_MB"):
        load_model(base_model_path.read_bytes(), filename="big.keras")


def test_damaged_archive(base_model_path):
    data = bytearray(base_model_path.read_bytes())
    data[len(data) // 2: len(data) // 2 + 400] = b"\0" * 400
    with pytest.raises(ModelRefused):
        load_model(bytes(data), filename="damaged.keras")


def test_multi_input_model_refused(tmp_path):
    import keras

    a, b = keras.Input((8, 8, 3)), keras.Input((4,))
    model = keras.Model([a, b], keras.layers.Dense(2)(keras.layers.Concatenate()([keras.layers.Flatten()(a), b])))
    path = tmp_path / "two.keras"
    model.save(path)
    with pytest.raises(ModelRefused, match="2 inputs"):
        load_model(path)
