"""Input normalization presets.

A *preset* turns a ``uint8`` image batch (RGB, 0-255) into the float input a
model was trained on. The ImageNet presets are computed by
``keras.applications.imagenet_utils.preprocess_input`` so the constants are the
library's, not retyped.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

PRESETS = ("raw", "unit", "tf", "torch", "caffe", "teachable")

PRESET_DESCRIPTIONS = {
    "raw": "0-255 floats, no scaling",
    "unit": "divided by 255 -> [0, 1]",
    "tf": "scaled to [-1, 1] (x / 127.5 - 1)",
    "torch": "divided by 255, then ImageNet mean / std per channel",
    "caffe": "RGB -> BGR, ImageNet channel means subtracted (0-255 range)",
    "teachable": "Teachable Machine: centre crop to a square, resize, then x / 127.5 - 1",
}

#: Named settings that also fix how images are resized (one of `tlviz.imagesets.RESIZE_METHODS`).
PRESET_RESIZE = {"teachable": "crop"}

#: Named settings whose pixel arithmetic is another preset's.
PIXEL_PRESET = {"teachable": "tf"}

# Presets that only make sense for three-channel (RGB) inputs.
_RGB_ONLY = ("torch", "caffe", "teachable")

#: Compared only when asked for (a Teachable Machine model, or the user's own pipeline).
_ON_REQUEST = ("teachable",)


@dataclass(frozen=True)
class CustomPreset:
    """A user-typed normalization: ``(x * scale - mean) / std``.

    Args:
        scale: multiplies the 0-255 pixels first. Defaults to `1/255`.
        mean: subtracted after scaling; one value or one per channel.
            Defaults to `0.0`.
        std: divides at the end; one value or one per channel. Defaults to `1.0`.
    """

    scale: float = 1.0 / 255.0
    mean: tuple[float, ...] | float = 0.0
    std: tuple[float, ...] | float = 1.0

    @property
    def name(self) -> str:
        return f"custom(scale={self.scale:g}, mean={_fmt(self.mean)}, std={_fmt(self.std)})"


def _fmt(v) -> str:
    if isinstance(v, (tuple, list)):
        return "[" + ", ".join(f"{x:g}" for x in v) + "]"
    return f"{v:g}"


def applicable_presets(channels: int, teachable: bool = False) -> tuple[str, ...]:
    """The presets that can be applied to images with `channels` channels.

    Args:
        channels: 1 or 3.
        teachable: include Teachable Machine's preprocessing (``"teachable"``: centre crop,
            resize, ``x / 127.5 - 1``). Defaults to `False`: it is compared for Teachable
            Machine models, or when asked for.
    """
    chosen = PRESETS if channels == 3 else tuple(p for p in PRESETS if p not in _RGB_ONLY)
    return tuple(p for p in chosen if teachable or p not in _ON_REQUEST)


def preset_resize(preset, default: str = "bilinear") -> str:
    """The resize method a named setting fixes (``"crop"`` for ``"teachable"``), else `default`."""
    return PRESET_RESIZE.get(preset, default) if isinstance(preset, str) else default


def apply_preset(images, preset: str | CustomPreset):
    """Normalize a batch of ``uint8`` images: the one implementation, for NumPy arrays and tensors alike.

    The same arithmetic serves every caller: the measurements (NumPy batches) and the
    fine-tuning pipeline (TensorFlow tensors inside ``tf.data``), so a preset cannot mean one
    thing on one page and another in a run.

    Args:
        images: ``uint8`` RGB of shape ``(N, H, W, C)`` (or one ``(H, W, C)`` image): a NumPy
            array (or anything `np.asarray` takes), or a TensorFlow tensor.
        preset: one of `PRESETS` or a `CustomPreset`.

    Returns:
        A new ``float32`` array of the same shape (a ``float32`` tensor for a tensor input).
        The input is never modified.
    """
    x = _as_float32(images)
    if isinstance(preset, CustomPreset):
        mean = np.asarray(preset.mean, dtype=np.float32)
        std = np.asarray(preset.std, dtype=np.float32)
        if np.any(std == 0):
            raise ValueError("Custom preset: `std` must not contain 0. Use 1 to leave a channel unscaled.")
        return (x * np.float32(preset.scale) - mean) / std
    if preset not in PRESETS:
        raise ValueError(f"Unknown preset {preset!r}. Use one of: {', '.join(PRESETS)}.")
    preset = PIXEL_PRESET.get(preset, preset)
    if preset == "raw":
        return x
    if preset == "unit":
        return x / np.float32(255.0)
    channels = x.shape[-1]
    if preset in ("torch", "caffe") and channels is not None and channels != 3:
        raise ValueError(
            f"Preset {preset!r} needs 3-channel RGB images; these have {channels}. "
            f"Use one of: {', '.join(applicable_presets(int(channels)))}."
        )
    from keras.applications import imagenet_utils

    # preprocess_input works in place on a float NumPy array: `x` is a fresh copy.
    return imagenet_utils.preprocess_input(x, data_format="channels_last", mode=preset)


def _as_float32(images):
    """A fresh ``float32`` copy: a NumPy array for array-likes, a tensor for a TensorFlow tensor."""
    if not type(images).__module__.startswith("tensorflow"):
        return np.asarray(images).astype(np.float32)
    import tensorflow as tf

    return tf.cast(images, tf.float32)


def preset_snippet(preset: str | CustomPreset, size: tuple[int, int], resize: str = "bilinear",
                   channel_order: str = "RGB") -> str:
    """A ready-to-paste Python snippet that prepares one image exactly this way."""
    h, w = size
    if isinstance(preset, str) and preset in PRESET_RESIZE:
        resize = PRESET_RESIZE[preset]  # a named setting fixes its resize
    lines = [
        "import numpy as np",
        "from PIL import Image",
        "",
        "def prepare(path):",
        '    img = Image.open(path).convert("RGB")',
    ]
    pil = {"bilinear": "BILINEAR", "nearest": "NEAREST", "area": "BOX", "bicubic": "BICUBIC"}
    if resize == "crop":
        lines += [
            "    side = min(img.size)",
            "    left, top = (img.width - side) // 2, (img.height - side) // 2",
            "    img = img.crop((left, top, left + side, top + side))",
            f"    img = img.resize(({w}, {h}), Image.BILINEAR)",
        ]
    else:
        lines.append(f"    img = img.resize(({w}, {h}), Image.{pil.get(resize, 'BILINEAR')})")
    lines.append("    x = np.asarray(img, dtype=np.float32)")
    if channel_order == "BGR":
        lines.append("    x = x[..., ::-1]  # RGB -> BGR")
    if isinstance(preset, CustomPreset):
        lines.append(f"    x = (x * {preset.scale!r} - np.array({preset.mean!r}, np.float32)) "
                     f"/ np.array({preset.std!r}, np.float32)")
    elif preset == "unit":
        lines.append("    x = x / 255.0")
    elif preset == "tf":
        lines.append("    x = x / 127.5 - 1.0")
    elif preset == "teachable":
        lines.append("    x = x / 127.5 - 1.0  # Teachable Machine: centre crop, resize, then [-1, 1]")
    elif preset in ("torch", "caffe"):
        lines = ["from keras.applications.imagenet_utils import preprocess_input"] + lines
        lines.append(f'    x = preprocess_input(x, mode="{preset}")')
    lines.append("    return x[np.newaxis]  # batch of one: model.predict(prepare(path))")
    return "\n".join(lines)
