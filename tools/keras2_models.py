"""Write genuine Keras 2 `.h5` files with the `tf_keras` package, for parity tests and trials.

Run it in its own process (``tf_keras`` cannot share a process with Keras 3 imported as
``keras``)::

    python tools/keras2_models.py OUT_DIR [NAME ...]

For every NAME (default: all of `BUILDERS` but the real-size `REAL_SIZE` ones) it writes into OUT_DIR:

- ``NAME.h5``: the model, saved by ``tf_keras`` (``model.save(path)``, HDF5 format);
- ``NAME.npz``: ``inputs`` (seeded random images in the model's input range) and ``outputs``
  (``tf_keras``'s own predictions on them, inference mode);
- ``NAME.json``: what ``tf_keras`` reports: ``keras_version``, ``trainable_params``,
  ``non_trainable_params``, ``layers`` (every leaf layer's path, class and ``trainable`` flag,
  depth first).

Every weight, BatchNormalization moving statistics included, is replaced by seeded noise
before saving, so a weight loaded into the wrong variable changes the predictions.

With ``--legacy`` the files also get a copy (``NAME_legacy.h5``) rewritten the way Keras
2.3-2.12 wrote them: no ``module`` / ``registered_name`` / ``build_config`` entries and a
``keras_version`` of ``2.4.0`` (the shape of most tutorial files and Teachable Machine exports).
"""

from __future__ import annotations

import json
import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import numpy as np  # noqa: E402


def _k():
    import tf_keras

    return tf_keras


def mobilenet():
    """The README's example: a frozen MobileNet (alpha 0.25, 128x128) base, pooling, dropout, Dense(3)."""
    k = _k()
    base = k.applications.MobileNet(alpha=0.25, input_shape=(128, 128, 3), include_top=False, weights=None)
    base.trainable = False
    return k.Sequential([base, k.layers.GlobalAveragePooling2D(), k.layers.Dropout(0.2),
                         k.layers.Dense(3, activation="softmax")], name="mobilenet_classifier")


def teachable():
    """Shaped like a Teachable Machine image-model export (`keras_model.h5`).

    A ``Sequential`` holding a ``Sequential`` of MobileNetV2 (alpha 0.35, 224x224) features cut at
    ``out_relu`` plus pooling, and a ``Sequential`` head ``Dense(100, relu)`` ->
    ``Dense(3, softmax, use_bias=False)``.
    """
    k = _k()
    net = k.applications.MobileNetV2(alpha=0.35, input_shape=(224, 224, 3), include_top=False, weights=None)
    features = k.Model(inputs=net.inputs, outputs=net.get_layer("out_relu").output, name="model1")
    trunk = k.Sequential([features, k.layers.GlobalAveragePooling2D()], name="sequential_1")
    head = k.Sequential([k.layers.Dense(100, activation="relu", input_shape=(features.output_shape[-1],)),
                         k.layers.Dense(3, activation="softmax", use_bias=False)], name="sequential_3")
    return k.Sequential([trunk, head], name="sequential_4")


def resnet():
    """A small ResNet-style functional model: conv stem, two residual blocks (one projecting), head."""
    k = _k()
    L = k.layers

    def block(x, filters, stride, name):
        shortcut = x
        y = L.Conv2D(filters, 3, strides=stride, padding="same", use_bias=False, name=f"{name}_1_conv")(x)
        y = L.BatchNormalization(name=f"{name}_1_bn")(y)
        y = L.Activation("relu", name=f"{name}_1_relu")(y)
        y = L.Conv2D(filters, 3, padding="same", use_bias=False, name=f"{name}_2_conv")(y)
        y = L.BatchNormalization(name=f"{name}_2_bn")(y)
        if stride != 1 or x.shape[-1] != filters:
            shortcut = L.Conv2D(filters, 1, strides=stride, name=f"{name}_0_conv")(x)
            shortcut = L.BatchNormalization(name=f"{name}_0_bn")(shortcut)
        y = L.Add(name=f"{name}_add")([shortcut, y])
        return L.Activation("relu", name=f"{name}_out")(y)

    inputs = k.Input((64, 64, 3))
    x = L.ZeroPadding2D(3, name="conv1_pad")(inputs)
    x = L.Conv2D(16, 7, strides=2, name="conv1_conv")(x)
    x = L.BatchNormalization(epsilon=1.001e-5, name="conv1_bn")(x)
    x = L.Activation("relu", name="conv1_relu")(x)
    x = L.MaxPooling2D(3, strides=2, padding="same", name="pool1_pool")(x)
    x = block(x, 16, 1, "conv2_block1")
    x = block(x, 32, 2, "conv3_block1")
    base = k.Model(inputs, x, name="resnet_base")
    base.trainable = False
    inp = k.Input((64, 64, 3), name="image")
    y = base(inp, training=False)
    y = L.GlobalAveragePooling2D(name="avg_pool")(y)
    y = L.Dense(4, activation="softmax", name="predictions")(y)
    return k.Model(inp, y, name="resnet_classifier")


def cnn():
    """A plain Sequential CNN with BatchNormalization and Dropout, fully trainable."""
    k = _k()
    L = k.layers
    return k.Sequential([
        k.Input((32, 32, 3)),
        L.Rescaling(1.0 / 255),
        L.Conv2D(8, 3, activation="relu", padding="same"),
        L.BatchNormalization(),
        L.MaxPooling2D(),
        L.Conv2D(16, 3, activation="relu"),
        L.BatchNormalization(),
        L.MaxPooling2D(),
        L.Dropout(0.25),
        L.Flatten(),
        L.Dense(32, activation="relu"),
        L.Dropout(0.5),
        L.Dense(5, activation="softmax"),
    ], name="plain_cnn")


def guide():
    """The keras-io transfer-learning guide's model after its fine-tuning phase.

    Preprocessing written as tensor arithmetic (``x / 127.5 - 1`` inside a functional model is
    saved by Keras 2 as two ``TFOpLambda`` layers); the base called with ``training=False`` and
    then unfrozen (``base.trainable = True``), as the guide's second phase does.
    """
    k = _k()
    base = k.applications.MobileNetV2(alpha=0.35, input_shape=(96, 96, 3), include_top=False, weights=None)
    base.trainable = False
    inputs = k.Input((96, 96, 3))
    x = inputs / 127.5
    x = x - 1.0
    x = base(x, training=False)
    x = k.layers.GlobalAveragePooling2D()(x)
    x = k.layers.Dropout(0.2)(x)
    outputs = k.layers.Dense(2)(x)
    model = k.Model(inputs, outputs, name="guide_model")
    base.trainable = True
    return model


def efficientnet():
    """EfficientNetB0 at 64x64 (Rescaling + Normalization layers, swish, squeeze-excite)."""
    k = _k()
    base = k.applications.EfficientNetB0(include_top=False, weights=None, input_shape=(64, 64, 3))
    x = k.layers.GlobalAveragePooling2D()(base.output)
    return k.Model(base.input, k.layers.Dense(3, activation="softmax")(x), name="effnet")


def mixed():
    """Xception-style separable convolutions, DenseNet-style concatenation, a mixed-precision Dense."""
    k = _k()
    L = k.layers
    inputs = k.Input((48, 48, 3))
    a = L.SeparableConv2D(8, 3, padding="same", name="sep")(inputs)
    b = L.DepthwiseConv2D(3, padding="same", depth_multiplier=2, name="dw")(inputs)
    x = L.Concatenate(name="concat")([a, b])
    x = L.LayerNormalization(name="ln")(x)
    x = L.Conv2D(8, 3, kernel_initializer=k.initializers.VarianceScaling(2.0, "fan_in", "truncated_normal"),
                 name="conv")(x)
    x = L.GlobalMaxPooling2D()(x)
    x = L.Dense(6, dtype=k.mixed_precision.Policy("mixed_float16"), name="mp_dense")(x)
    x = L.Activation("softmax", dtype="float32", name="probs")(x)
    return k.Model(inputs, x, name="mixed_layers")


def _stacked(head_has_input: bool):
    k = _k()
    L = k.layers
    i = k.Input((32, 32, 3))
    x = L.Conv2D(8, 3, name="c1")(i)
    x = L.BatchNormalization(name="b1")(x)
    base = k.Model(i, x, name="inner_base")
    mid = k.Sequential([k.Input((8,)), L.Dense(8, activation="relu", name="mid_dense")], name="mid")
    head_layers = [L.Dense(6, activation="relu", name="head_hidden"), L.Dense(3, activation="softmax", name="head_out")]
    head = k.Sequential(([k.Input((8,))] if head_has_input else []) + head_layers, name="head")
    inp = k.Input((32, 32, 3), name="pixels")
    y = base(inp) * 0.5  # a TensorFlow op right after a nested model (saved as TFOpLambda)
    y = L.GlobalAveragePooling2D(name="gap")(y)
    y = mid(y)
    return k.Model(inp, head(y), name="stacked")


def stacked():
    """Nested models at every position: a functional base (its output scaled by a TensorFlow op), a
    Sequential with an input in the middle, and a Sequential head without one (built when first
    called) as the model's output."""
    return _stacked(head_has_input=False)


def stacked_input():
    """As `stacked`, with a head Sequential that has its own input as the model's output."""
    return _stacked(head_has_input=True)


# -- a zoo of model structures for base / head detection (tests/test_layers_zoo.py) ---------------------
# Each builder takes the Keras module to build with (`tf_keras` here; the tests pass Keras 3), so that the
# Keras 3 model and the Keras 2 file have the same structure and the same layer paths.

def _zoo_net(k):
    """MobileNetV2 (alpha 0.35, 96x96, no top, ``weights=None``): the feature extractor of the nested cases."""
    return k.applications.MobileNetV2(alpha=0.35, input_shape=(96, 96, 3), include_top=False, weights=None)


def zoo_flat(k=None):
    """Zoo: a flat Sequential CNN, a Rescaling first and a two-layer Dense classifier after the pooling."""
    k = k or _k()
    L = k.layers
    return k.Sequential([
        k.Input((32, 32, 3)), L.Rescaling(1.0 / 255, name="scale"),
        L.Conv2D(8, 3, name="conv1"), L.BatchNormalization(name="bn1"), L.ReLU(name="relu1"),
        L.MaxPooling2D(name="pool1"), L.Conv2D(16, 3, name="conv2"), L.ReLU(name="relu2"),
        L.GlobalAveragePooling2D(name="gap"), L.Dropout(0.2, name="drop"),
        L.Dense(16, activation="relu", name="hidden"), L.Dense(3, activation="softmax", name="out"),
    ], name="zoo_flat")


def zoo_nested(k=None):
    """Zoo: a nested MobileNetV2 base under a head of top-level layers (pooling, dropout, Dense)."""
    k = k or _k()
    L = k.layers
    net = _zoo_net(k)
    inp = k.Input((96, 96, 3), name="pixels")
    x = L.GlobalAveragePooling2D(name="gap")(net(inp))
    x = L.Dropout(0.2, name="drop")(x)
    return k.Model(inp, L.Dense(3, activation="softmax", name="out")(x), name="zoo_nested")


def zoo_teachable(k=None):
    """Zoo: shaped like a Teachable Machine export at 96x96: a ``Sequential`` holding a features
    ``Sequential`` (MobileNetV2 cut at ``out_relu``, then pooling) and a head ``Sequential``
    ``Dense(100, relu)`` -> ``Dense(3, softmax, use_bias=False)``."""
    k = k or _k()
    L = k.layers
    net = _zoo_net(k)
    features = k.Model(inputs=net.inputs, outputs=net.get_layer("out_relu").output, name="model1")
    trunk = k.Sequential([features, L.GlobalAveragePooling2D(name="pool")], name="trunk")
    head = k.Sequential([k.Input((int(features.output.shape[-1]),)),
                         L.Dense(100, activation="relu", name="hidden"),
                         L.Dense(3, activation="softmax", use_bias=False, name="out")], name="head")
    return k.Sequential([k.Input((96, 96, 3)), trunk, head], name="zoo_teachable")


def zoo_wrapped(k=None):
    """Zoo: the MobileNetV2 base inside a ``Sequential`` inside a functional model, then pooling and Dense."""
    k = k or _k()
    L = k.layers
    wrapper = k.Sequential([k.Input((96, 96, 3)), _zoo_net(k)], name="wrapper")
    inp = k.Input((96, 96, 3), name="pixels")
    x = L.GlobalAveragePooling2D(name="gap")(wrapper(inp))
    return k.Model(inp, L.Dense(3, activation="softmax", name="out")(x), name="zoo_wrapped")


def zoo_preprocess(k=None):
    """Zoo: a preprocessing sub-model (Rescaling to [-1, 1]) before a nested MobileNetV2 base."""
    k = k or _k()
    L = k.layers
    prep = k.Sequential([k.Input((96, 96, 3)), L.Rescaling(1.0 / 127.5, offset=-1.0, name="scale")],
                        name="preprocess")
    net = _zoo_net(k)
    inp = k.Input((96, 96, 3), name="pixels")
    x = L.GlobalAveragePooling2D(name="gap")(net(prep(inp)))
    return k.Model(inp, L.Dense(3, activation="softmax", name="out")(x), name="zoo_preprocess")


#: The zoo's builders, in the order the tests list them.
ZOO = ("zoo_flat", "zoo_nested", "zoo_teachable", "zoo_wrapped", "zoo_preprocess")


def _real(app, **kwargs):
    """A keras.applications network at 224x224 (weights=None) with a 5-class softmax head, base frozen."""
    k = _k()
    base = getattr(k.applications, app)(include_top=False, weights=None, input_shape=(224, 224, 3), **kwargs)
    base.trainable = False
    inputs = k.Input((224, 224, 3))
    x = base(inputs, training=False)
    x = k.layers.GlobalAveragePooling2D()(x)
    return k.Model(inputs, k.layers.Dense(5, activation="softmax")(x), name=f"{app.lower()}_classifier")


def resnet50():
    """Real size: ResNet50 at 224x224 (about 95 MB as .h5), for bench/bench_legacy.py."""
    return _real("ResNet50")


def mobilenetv2():
    """Real size: MobileNetV2 (alpha 1.0) at 224x224."""
    return _real("MobileNetV2")


def efficientnetb0():
    """Real size: EfficientNetB0 at 224x224."""
    return _real("EfficientNetB0")


#: Real-size models (not part of the default list: they take a while to write).
REAL_SIZE = ("resnet50", "mobilenetv2", "efficientnetb0")

BUILDERS = {"mobilenet": mobilenet, "teachable": teachable, "resnet": resnet, "cnn": cnn, "guide": guide,
            "efficientnet": efficientnet, "mixed": mixed, "stacked": stacked, "stacked_input": stacked_input,
            "resnet50": resnet50, "mobilenetv2": mobilenetv2, "efficientnetb0": efficientnetb0,
            **{name: globals()[name] for name in ZOO}}


def _noise_weights(model, rng):
    for layer in model.layers:
        if layer.weights and not hasattr(layer, "layers"):
            new = []
            for w in layer.get_weights():
                if w.size == 0:
                    new.append(w)
                    continue
                scale = 0.2 if w.ndim > 1 else 0.1
                v = rng.normal(0, scale, size=w.shape).astype(w.dtype)
                new.append(v)
            names = [w.name for w in layer.weights]
            new = [np.abs(v) + 0.5 if "variance" in n else v for v, n in zip(new, names)]
            layer.set_weights(new)
        elif hasattr(layer, "layers"):
            _noise_weights(layer, rng)


def _leaves(model, prefix=""):
    for layer in model.layers:
        path = prefix + layer.name
        if hasattr(layer, "layers") and layer.__class__.__name__ in ("Functional", "Sequential", "Model"):
            yield from _leaves(layer, path + "/")
        else:
            yield {"path": path, "class": layer.__class__.__name__, "trainable": bool(layer.trainable)}


def _count(weights) -> int:
    return int(sum(int(np.prod(w.shape)) for w in weights))


def _strip_modern(node):
    if isinstance(node, dict):
        return {k: _strip_modern(v) for k, v in node.items() if k not in ("module", "registered_name", "build_config")}
    if isinstance(node, list):
        return [_strip_modern(v) for v in node]
    return node


def write(out: str, name: str, legacy: bool = False) -> None:
    k = _k()
    model = BUILDERS[name]()
    rng = np.random.default_rng(sum(map(ord, name)))
    _noise_weights(model, rng)
    shape = tuple(int(d) for d in model.input_shape[1:])
    low, high = (0.0, 255.0) if name in ("cnn", "guide") else (-1.0, 1.0)
    inputs = rng.uniform(low, high, size=(4,) + shape).astype("float32")
    outputs = np.asarray(model(inputs, training=False), dtype="float32")
    path = os.path.join(out, f"{name}.h5")
    model.save(path, save_format="h5")
    np.savez(os.path.join(out, f"{name}.npz"), inputs=inputs, outputs=outputs)
    info = {"keras_version": k.__version__, "trainable_params": _count(model.trainable_weights),
            "non_trainable_params": _count(model.non_trainable_weights), "layers": list(_leaves(model))}
    with open(os.path.join(out, f"{name}.json"), "w") as f:
        json.dump(info, f, indent=1)
    if legacy:
        import shutil

        import h5py

        old = os.path.join(out, f"{name}_legacy.h5")
        shutil.copyfile(path, old)
        with h5py.File(old, "r+") as f:
            config = json.loads(f.attrs["model_config"])
            f.attrs["model_config"] = json.dumps(_strip_modern(config))
            f.attrs["keras_version"] = "2.4.0"
            f["model_weights"].attrs["keras_version"] = "2.4.0"


def main(argv: list[str]) -> int:
    legacy = "--legacy" in argv
    args = [a for a in argv if a != "--legacy"]
    if not args:
        print(__doc__, file=sys.stderr)
        return 2
    out, names = args[0], args[1:] or [n for n in BUILDERS if n not in REAL_SIZE]
    unknown = [n for n in names if n not in BUILDERS]
    if unknown:
        print(f"Unknown model(s): {', '.join(unknown)}. Known: {', '.join(BUILDERS)}.", file=sys.stderr)
        return 2
    os.makedirs(out, exist_ok=True)
    for name in names:
        write(out, name, legacy=legacy)
        print(os.path.join(out, f"{name}.h5"))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
