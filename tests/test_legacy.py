"""Keras 2 `.h5` files and Teachable Machine exports (tlviz.models.legacy, tlviz.models).

The Keras 2 files are genuine: `tools/keras2_models.py` writes them with the `tf_keras` package in
a separate process (it cannot share one with Keras 3), together with tf_keras's own predictions
on seeded inputs, its parameter counts and every leaf layer's trainable flag. Every weight,
BatchNormalization statistics included, is seeded noise, so a weight copied into the wrong
variable shows in the predictions.
"""

from __future__ import annotations

import io
import json
import subprocess
import sys
import zipfile


import h5py
import numpy as np
import pytest

from tlviz.errors import ModelRefused
from tlviz.models.legacy import translate
from tlviz.models.teachable import is_teachable_machine
from tlviz.models import keras_bytes, load_model

from conftest import KERAS2_MODELS as PARITY
from conftest import teachable_zip as _tm_zip

#: Written again the way Keras 2.3-2.12 wrote files (no module / registered_name / build_config).
LEGACY = ("mobilenet", "teachable", "resnet", "guide")


def _leaves(model, prefix=""):
    import keras

    for layer in model.layers:
        path = prefix + layer.name
        if isinstance(layer, keras.Model):
            yield from _leaves(layer, path + "/")
        elif not isinstance(layer, keras.layers.InputLayer):
            yield path, bool(layer.trainable)


@pytest.mark.parametrize("name", list(PARITY) + [f"{n}_legacy" for n in LEGACY])
def test_keras2_file_predicts_like_tf_keras(keras2, name):
    base = name.removesuffix("_legacy")
    loaded = load_model(keras2 / f"{name}.h5")
    expected = json.loads((keras2 / f"{base}.json").read_text())
    saved = np.load(keras2 / f"{base}.npz")
    out = np.asarray(loaded.model(saved["inputs"], training=False), dtype=np.float32)
    assert out.shape == saved["outputs"].shape
    assert float(np.max(np.abs(out - saved["outputs"]))) <= 1e-5
    assert loaded.trainable_params == expected["trainable_params"]
    assert loaded.non_trainable_params == expected["non_trainable_params"]
    # Every layer's flag (an InputLayer has nothing to train; Keras 3 leaves its flag alone).
    assert list(_leaves(loaded.model)) == [(la["path"], la["trainable"]) for la in expected["layers"]
                                           if la["class"] != "InputLayer"]
    assert loaded.conversion is not None and loaded.conversion["weights_by"] == "name"
    assert loaded.conversion["keras_version"] == ("2.4.0" if name.endswith("_legacy") else expected["keras_version"])


def test_conversion_says_what_was_translated(keras2):
    mobilenet = load_model(keras2 / "mobilenet_legacy.h5").conversion
    assert mobilenet["summary"].startswith("Converted from a Keras 2.4.0 `.h5`: 13 `DepthwiseConv2D` layer(s) "
                                           "dropped `groups: 1`")
    assert mobilenet["notes"]["bn_axis"] == 27
    teachable = load_model(keras2 / "teachable.h5").conversion["notes"]
    assert teachable["groups:DepthwiseConv2D"] == 17 and teachable["module"] > 0
    assert load_model(keras2 / "stacked.h5").conversion["notes"]["tfop"] == 1
    guide = load_model(keras2 / "guide.h5")
    assert guide.conversion["notes"]["tfop"] == 2 and guide.conversion["notes"]["nested"] == 1
    # x / 127.5 - 1 became built-in Rescaling layers: the model now says it expects raw pixels.
    assert [p.split(" '")[0] for p in guide.builtin_preprocessing] == ["Rescaling", "Rescaling"]


def test_the_original_failures_are_what_keras3_alone_gives(keras2):
    """Without the translator, Keras 3 refuses these files (the issue's two errors)."""
    import keras

    with pytest.raises(Exception, match="BatchNormalization"):
        keras.saving.load_model(keras2 / "mobilenet.h5", compile=False, safe_mode=True)
    with pytest.raises(Exception, match="groups"):
        keras.saving.load_model(keras2 / "teachable_legacy.h5", compile=False, safe_mode=True)


def test_call_arguments_survive_translation(keras2):
    """The guide calls its base with training=False; the rebuilt model records that call argument.

    (Keras 3 itself lets an outer ``training=True`` override it, for its own models too; the
    engine reads the recorded argument instead of relying on Keras for that.)
    """
    import keras

    loaded = load_model(keras2 / "guide.h5")
    config = loaded.model.get_config()
    base = next(la for la in config["layers"] if la["class_name"] == "Functional")
    assert [node["kwargs"].get("training") for node in base["inbound_nodes"]] == [False]
    assert any(isinstance(la, keras.Model) and la.trainable for la in loaded.model.layers)


# -- strictness stays the same -------------------------------------------------------------------

def _edited(src: Path, dst: Path, edit) -> Path:
    data = src.read_bytes()
    dst.write_bytes(data)
    with h5py.File(dst, "r+") as f:
        config = json.loads(f.attrs["model_config"])
        edit(config)
        f.attrs["model_config"] = json.dumps(config)
    return dst


def _layer(config, cls):
    for item in config["config"]["layers"]:
        if item["class_name"] == cls:
            return item
    raise AssertionError(cls)


def test_keras2_lambda_is_refused(keras2, tmp_path):
    def edit(config):
        dense = _layer(config, "Dense")
        dense["class_name"] = "Lambda"
        dense["config"] = {"name": dense["config"]["name"], "function": ["4wEAAAA=", None, None],
                           "function_type": "lambda", "module": "__main__"}

    path = _edited(keras2 / "cnn.h5", tmp_path / "lambda.h5", edit)
    with pytest.raises(ModelRefused, match="Lambda layer"):
        load_model(path)


def test_keras2_foreign_module_and_custom_class_are_refused(keras2, tmp_path):
    def foreign(config):
        _layer(config, "Dense")["module"] = "os"

    with pytest.raises(ModelRefused, match="custom layer .* from module 'os'"):
        load_model(_edited(keras2 / "cnn.h5", tmp_path / "foreign.h5", foreign))

    def custom(config):
        _layer(config, "Dense")["class_name"] = "MyDense"

    with pytest.raises(ModelRefused, match="Keras could not build it.*MyDense"):
        load_model(_edited(keras2 / "cnn.h5", tmp_path / "custom.h5", custom))


def test_keras2_tf_op_other_than_arithmetic_is_refused(keras2, tmp_path):
    def edit(config):
        for item in config["config"]["layers"]:
            if item["class_name"] == "TFOpLambda" and item["config"]["function"] == "math.subtract":
                item["config"]["function"] = "reverse"

    with pytest.raises(ModelRefused, match=r"'tf.math.subtract' is a TensorFlow operation \(`tf.reverse`\)"):
        load_model(_edited(keras2 / "guide.h5", tmp_path / "op.h5", edit))


def test_weights_that_do_not_fit_are_refused(keras2, tmp_path):
    path = tmp_path / "short.h5"
    path.write_bytes((keras2 / "cnn.h5").read_bytes())
    with h5py.File(path, "r+") as f:
        group = f["model_weights"]
        names = [n for n in group.attrs["layer_names"]]
        dense = [n for n in names if (n.decode() if isinstance(n, bytes) else n).startswith("dense")][-1]
        g = group[dense]
        first = g.attrs["weight_names"][0]
        first = first.decode() if isinstance(first, bytes) else first
        del g[first]
        g.create_dataset(first, data=np.zeros((3, 3), np.float32))
    with pytest.raises(ModelRefused, match="has shape .* but the file holds \\(3, 3\\)"):
        load_model(path)


def test_translate_is_data_only_and_leaves_input_alone(keras2):
    with h5py.File(keras2 / "teachable.h5", "r") as f:
        config = json.loads(f.attrs["model_config"])
    before = json.dumps(config, sort_keys=True)
    new, t = translate(config)
    assert json.dumps(config, sort_keys=True) == before
    text = json.dumps(new)
    assert '"module": "tf_keras' not in text and "batch_input_shape" not in text
    features = new["config"]["layers"][1]["config"]["layers"][1]["config"]["layers"]
    depthwise = [la["config"] for la in features if la["class_name"] == "DepthwiseConv2D"]
    assert len(depthwise) == 17 and not any("groups" in c for c in depthwise)
    assert all(isinstance(la["config"]["axis"], int) for la in features if la["class_name"] == "BatchNormalization")
    assert is_teachable_machine(config) and is_teachable_machine(new)


# -- Teachable Machine ---------------------------------------------------------------------------

def test_teachable_machine_zip_loads_with_class_names(keras2):
    loaded = load_model(_tm_zip(keras2, "0 Cat\n1 Dog\n2 Bird with space\n"), filename="converted_keras.zip")
    assert loaded.teachable_machine and loaded.class_names == ["Cat", "Dog", "Bird with space"]
    assert "Teachable Machine" in loaded.origin and loaded.conversion is not None
    # The labels' index fixes the order, and a plain one-name-per-line file works too.
    assert load_model(_tm_zip(keras2, "2 c\n0 a\n1 b\n"), filename="tm.zip").class_names == ["a", "b", "c"]
    assert load_model(_tm_zip(keras2, "cats\ndogs\nbirds\n", folder="export/"),
                      filename="tm.zip").class_names == ["cats", "dogs", "birds"]
    bare = load_model(keras2 / "teachable.h5")
    assert bare.teachable_machine and bare.class_names is None
    assert not load_model(keras2 / "mobilenet.h5").teachable_machine


def test_teachable_machine_zip_refusals(keras2):
    with pytest.raises(ModelRefused, match="labels.txt names 2 classes but the model has 3 outputs"):
        load_model(_tm_zip(keras2, "0 a\n1 b\n"), filename="tm.zip")
    with pytest.raises(ModelRefused, match="names a class twice"):
        load_model(_tm_zip(keras2, "0 a\n1 a\n2 b\n"), filename="tm.zip")
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        zf.writestr("keras_model.h5", b"not hdf5 at all")
    with pytest.raises(ModelRefused, match="keras_model.h5 is not an HDF5 file"):
        load_model(buf.getvalue(), filename="tm.zip")


def test_converted_model_loads_in_plain_keras(keras2, tmp_path):
    """The `.keras` download opens in a Keras 3 process without tlviz, safe_mode on, same predictions."""
    loaded = load_model(_tm_zip(keras2, "0 Cat\n1 Dog\n2 Bird\n"), filename="tm.zip")
    path = tmp_path / "converted.keras"
    path.write_bytes(keras_bytes(loaded))
    saved = np.load(keras2 / "teachable.npz")
    np.save(tmp_path / "x.npy", saved["inputs"])
    script = ("import sys, numpy as np, keras\n"
              "m = keras.models.load_model(sys.argv[1], safe_mode=True)\n"
              "np.save(sys.argv[3], np.asarray(m(np.load(sys.argv[2]), training=False)))\n"
              "assert 'tlviz' not in sys.modules\n")
    done = subprocess.run([sys.executable, "-c", script, str(path), str(tmp_path / "x.npy"), str(tmp_path / "y.npy")],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    out = np.load(tmp_path / "y.npy")
    assert float(np.max(np.abs(out - saved["outputs"]))) <= 1e-5
    again = load_model(path)
    assert again.class_names == ["Cat", "Dog", "Bird"] and again.teachable_machine
    assert again.recorded_preset == "teachable" and again.metadata["converted_from"]["keras_version"]


# -- other formats get a specific answer ---------------------------------------------------------

def _zip(entries: dict) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        for name, data in entries.items():
            zf.writestr(name, data)
    return buf.getvalue()


@pytest.mark.parametrize("name,data,pattern", [
    ("model.json", json.dumps({"format": "layers-model", "modelTopology": {}, "weightsManifest": []}).encode(),
     r"TensorFlow.js model.*tensorflowjs_converter --input_format=tfjs_layers_model --output_format=keras"),
    ("tm_tfjs.zip", _zip({"model.json": b"{}", "weights.bin": b"\0", "metadata.json": b"{}"}),
     r"TensorFlow.js model.*Teachable Machine, choose Export Model -> Tensorflow -> Keras"),
    ("model_unquant.tflite", b"\x1c\x00\x00\x00TFL3" + b"\0" * 64, r"TensorFlow Lite model"),
    ("converted_tflite.zip", _zip({"model_unquant.tflite": b"\x1c\x00\x00\x00TFL3", "labels.txt": b"0 a\n"}),
     r"TensorFlow Lite model"),
    ("resnet.pt", _zip({"archive/data.pkl": b"\x80\x02}q\x00.", "archive/version": b"3\n"}),
     r"PyTorch checkpoint \(`torch.save`\)"),
    ("resnet.pth", b"\x80\x02}q\x00.", r"PyTorch checkpoint"),
    ("model.onnx", b"\x08\x07\x12\x07pytorch" + b"\0" * 32, r"ONNX model.*onnx2tf"),
    ("frozen_graph.pb", b"\n\x0c\n\x05input" + b"\0" * 32, r"TensorFlow graph \(`.pb`\).*frozen graph"),
    ("converted_savedmodel.zip", _zip({"model.savedmodel/saved_model.pb": b"\0", "labels.txt": b"0 a\n"}),
     r"TensorFlow SavedModel.*tf_keras.models.load_model"),
])
def test_other_formats_are_named_with_the_way_out(name, data, pattern):
    with pytest.raises(ModelRefused, match=pattern):
        load_model(data, filename=name)
