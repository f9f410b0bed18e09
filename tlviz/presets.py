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


def apply_preset(images: np.ndarray, preset: str | CustomPreset) -> np.ndarray:
    """Normalize a batch of ``uint8`` images.

    Args:
        images: array of shape ``(N, H, W, C)`` (or a single ``(H, W, C)``
            image), ``uint8`` RGB.
        preset: one of `PRESETS` or a `CustomPreset`.

    Returns:
        A new ``float32`` array of the same shape. The input is never modified.
    """
    x = np.asarray(images)
    if isinstance(preset, CustomPreset):
        out = x.astype(np.float32) * np.float32(preset.scale)
        mean = np.asarray(preset.mean, dtype=np.float32)
        std = np.asarray(preset.std, dtype=np.float32)
        if np.any(std == 0):
            raise ValueError("Custom preset: `std` must not contain 0. Use 1 to leave a channel unscaled.")
        return (out - mean) / std
    if preset not in PRESETS:
        raise ValueError(f"Unknown preset {preset!r}. Use one of: {', '.join(PRESETS)}.")
    preset = PIXEL_PRESET.get(preset, preset)
    if preset == "raw":
        return x.astype(np.float32)
    if preset == "unit":
        return x.astype(np.float32) / np.float32(255.0)
    if preset in ("torch", "caffe") and x.shape[-1] != 3:
        raise ValueError(
            f"Preset {preset!r} needs 3-channel RGB images; these have {x.shape[-1]}. "
            f"Use one of: {', '.join(applicable_presets(x.shape[-1]))}."
        )
    from keras.applications import imagenet_utils

    out = x.astype(np.float32)  # preprocess_input works in place on float input
    return imagenet_utils.preprocess_input(out, data_format="channels_last", mode=preset)


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
