"""The model families: how each network is built (a small CNN, MobileNetV2, a ResNet-shaped one, the sample)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from bench.truth.settings import SAMPLE_MODEL


# -- families ---------------------------------------------------------------------------------

@dataclass(frozen=True)
class Family:
    """One model family: how its network is built and trained.

    Attributes:
        name: short name (cache folder, case names).
        preset: the preset its training images were prepared with (outside the model).
        wrong_presets: two other presets, each a planted normalization mismatch.
        body: ``body(x) -> features`` builds the network from an input tensor up to global pooling
            (a layer named ``avg_pool``).
        dropout: whether the head has a Dropout layer.
        epochs: end-to-end epochs on the source task (then 2 more at a tenth of the rate).
        lr: the end-to-end learning rate.
        data: the data set (a key of `DATASETS`). Defaults to ``"digits"``.
        trained_file: a model trained outside the matrix, used as the trained model instead of training
            one (its architecture must be `body` with the `_flat` head). Defaults to None.
    """

    name: str
    preset: str
    wrong_presets: tuple[str, str]
    body: Callable
    dropout: bool
    epochs: int
    lr: float
    data: str = "digits"
    trained_file: Path | None = None


def _cnn_body(x):
    from tlviz.samples import conv_body  # the committed sample's architecture

    return conv_body(x)


def _mobilenet_body(x):
    import keras

    app = keras.applications.MobileNetV2(input_tensor=x, alpha=0.35, include_top=False, weights=None)
    return keras.layers.GlobalAveragePooling2D(name="avg_pool")(app.output)


def _residual_block(x, filters: int, stride: int, name: str):
    from keras import layers

    shortcut = x
    if stride != 1 or x.shape[-1] != filters:
        shortcut = layers.Conv2D(filters, 1, strides=stride, use_bias=False, name=f"{name}_0_conv")(x)
        shortcut = layers.BatchNormalization(name=f"{name}_0_bn")(shortcut)
    y = layers.Conv2D(filters, 3, strides=stride, padding="same", use_bias=False, name=f"{name}_1_conv")(x)
    y = layers.BatchNormalization(name=f"{name}_1_bn")(y)
    y = layers.Activation("relu", name=f"{name}_1_relu")(y)
    y = layers.Conv2D(filters, 3, padding="same", use_bias=False, name=f"{name}_2_conv")(y)
    y = layers.BatchNormalization(name=f"{name}_2_bn")(y)
    y = layers.Add(name=f"{name}_add")([shortcut, y])
    return layers.Activation("relu", name=f"{name}_out")(y)


def _resnet_body(x):
    from keras import layers

    x = layers.Conv2D(16, 3, padding="same", use_bias=False, name="conv1_conv")(x)
    x = layers.BatchNormalization(name="conv1_bn")(x)
    x = layers.Activation("relu", name="conv1_relu")(x)
    for stage, (filters, stride) in enumerate(((16, 1), (32, 2), (64, 2)), start=2):
        for block in (1, 2):
            x = _residual_block(x, filters, stride if block == 1 else 1, f"conv{stage}_block{block}")
    return layers.GlobalAveragePooling2D(name="avg_pool")(x)


FAMILIES: dict[str, Family] = {f.name: f for f in (
    Family("cnn", "unit", ("raw", "tf"), _cnn_body, dropout=True, epochs=12, lr=2e-3),
    Family("mobilenetv2", "tf", ("unit", "caffe"), _mobilenet_body, dropout=True, epochs=25, lr=2e-3),
    Family("resnet", "torch", ("raw", "caffe"), _resnet_body, dropout=False, epochs=12, lr=2e-3),
    # The committed sample model and its data set: digits 0-4 as the source task (the sample's own
    # held-out 20 %), digits 5-9 (the committed `digits_5_9` set) as the target; trained with `tf` by
    # `tlviz.samples`, not by this script.
    Family("sample", "tf", ("raw", "unit"), _cnn_body, dropout=True, epochs=0, lr=2e-3, data="sample",
           trained_file=SAMPLE_MODEL),
)}
QUICK_FAMILIES = ("cnn",)
