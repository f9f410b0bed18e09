"""Input normalizations as per-channel affine maps, and the built-in Keras layers that compute them.

Every named preset (`tlviz.presets`) is ``y = W x + b`` on an RGB pixel ``x``: `W` diagonal (a scale
per channel), or a scale per channel after a channel flip (``caffe``: RGB -> BGR). `preset_affine`
reads `W` and `b` off `tlviz.presets.apply_preset` itself (which calls
``keras.applications.imagenet_utils.preprocess_input``), so no ImageNet constant is retyped here.
The model's own leading Rescaling / Normalization layers are read the same way (`layers_affine`).

`Affine` composes and inverts; `Affine.layers()` builds the layers for one map: a `Rescaling` with
a scale and an offset per channel, then, for a flip, a 1x1 `Conv2D` whose fixed kernel swaps the
first and last channel (built-in layers only; no `Lambda`, so the file loads with ``safe_mode=True``).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from tlviz.errors import RepairRefused

#: Two maps whose coefficients differ by less than this (relative) are taken as the same.
_SAME = 1e-5


@dataclass(frozen=True)
class Affine:
    """``y[c] = scale[c] * x[order[c]] + offset[c]`` per channel: `order` is the identity or a flip.

    Attributes:
        scale / offset: one value per channel (float64).
        flip: whether the channels are reversed (RGB <-> BGR) before scaling.
    """

    scale: tuple[float, ...]
    offset: tuple[float, ...]
    flip: bool = False

    def __post_init__(self):
        object.__setattr__(self, "scale", tuple(float(v) for v in self.scale))
        object.__setattr__(self, "offset", tuple(float(v) for v in self.offset))
        object.__setattr__(self, "flip", bool(self.flip))

    @property
    def channels(self) -> int:
        return len(self.scale)

    def apply(self, x: np.ndarray) -> np.ndarray:
        """The map applied to ``(..., C)`` values (float64)."""
        x = np.asarray(x, dtype=np.float64)
        if self.flip:
            x = x[..., ::-1]
        return x * np.asarray(self.scale) + np.asarray(self.offset)

    def then(self, other: "Affine") -> "Affine":
        """`other` applied after this map."""
        s1, o1 = np.asarray(self.scale), np.asarray(self.offset)
        s2, o2 = np.asarray(other.scale), np.asarray(other.offset)
        if other.flip:  # other flips this map's output: reverse this map's coefficients first
            s1, o1 = s1[::-1], o1[::-1]
        return Affine(tuple(s1 * s2), tuple(o1 * s2 + o2), self.flip != other.flip)

    def inverse(self) -> "Affine":
        """The map that undoes this one."""
        s, o = np.asarray(self.scale), np.asarray(self.offset)
        if np.any(s == 0):
            raise RepairRefused("A preprocessing step multiplies a channel by 0, so it cannot be undone.")
        inv_s, inv_o = 1.0 / s, -o / s
        if self.flip:  # x = flip((y - o) / s)
            inv_s, inv_o = inv_s[::-1], inv_o[::-1]
        return Affine(tuple(inv_s), tuple(inv_o), self.flip)

    @property
    def is_identity(self) -> bool:
        return (not self.flip and np.allclose(self.scale, 1.0, rtol=0, atol=_SAME)
                and np.allclose(self.offset, 0.0, rtol=0, atol=_SAME))

    def same_as(self, other: "Affine") -> bool:
        return self.then(other.inverse()).is_identity

    def describe(self) -> str:
        """``"x * 0.007843 - 1"`` or, per channel, ``"x * [..] + [..]"``, with the flip named."""
        s, o = np.asarray(self.scale), np.asarray(self.offset)
        uniform = np.allclose(s, s[0], rtol=_SAME) and np.allclose(o, o[0], rtol=_SAME, atol=_SAME)
        if uniform:
            text = f"x * {s[0]:.6g}" + (f" {'-' if o[0] < 0 else '+'} {abs(o[0]):.6g}" if abs(o[0]) > _SAME else "")
        else:
            text = ("x * [" + ", ".join(f"{v:.6g}" for v in s) + "] + [" + ", ".join(f"{v:.6g}" for v in o) + "]")
        return ("RGB -> BGR, then " if self.flip else "") + text

    def layers(self, name: str) -> list:
        """Built-in Keras layers computing this map on a channels-last image batch (none for the identity).

        Args:
            name: the layers' name stem (``<name>_scale``, ``<name>_rgb_to_bgr``).

        Returns:
            ``[Rescaling]`` (when not the identity's scaling), then ``[Conv2D]`` for a flip.
        """
        import keras

        out = []
        s, o = np.asarray(self.scale), np.asarray(self.offset)
        if self.flip:  # scale in the input's channel order, then flip: flip(x) * s + o = flip(x * s' + o')
            s, o = s[::-1], o[::-1]
        if not (np.allclose(s, 1.0, rtol=0, atol=_SAME) and np.allclose(o, 0.0, rtol=0, atol=_SAME)):
            uniform = np.allclose(s, s[0], rtol=0, atol=0) and np.allclose(o, o[0], rtol=0, atol=0)
            scale = float(s[0]) if uniform else [float(v) for v in s]
            offset = float(o[0]) if uniform else [float(v) for v in o]
            out.append(keras.layers.Rescaling(scale=scale, offset=offset, name=f"{name}_scale"))
        if self.flip:
            c = self.channels
            out.append(_FlipConv(c, name=f"{name}_rgb_to_bgr"))
        return out


def _FlipConv(channels: int, name: str):
    """A 1x1 `Conv2D` (no bias, not trainable) that will reverse the channel order.

    Its kernel is written by `set_flip_kernels` once the layer is in a built model (it starts at zeros,
    so a forgotten kernel shows as a blank image rather than as a silent mistake).
    """
    import keras

    return keras.layers.Conv2D(channels, 1, use_bias=False, trainable=False, name=name, kernel_initializer="zeros")


def set_flip_kernels(model, names: list[str]) -> None:
    """Write the channel-reversing kernel into the flip layers `names` of a built `model`."""
    for n in names:
        layer = model.get_layer(n)
        c = int(layer.kernel.shape[-1])
        layer.kernel.assign(np.eye(c, dtype=np.float32)[::-1].reshape(1, 1, c, c))


def preset_affine(preset: str, channels: int = 3) -> Affine:
    """The map `tlviz.presets.apply_preset` applies for `preset`, read off the library's own output.

    Args:
        preset: a named preset (``raw``, ``unit``, ``tf``, ``torch``, ``caffe``, ``teachable``).
        channels: 1 or 3. Defaults to `3`.

    Returns:
        The `Affine` (``teachable``: its pixel arithmetic, ``tf``; its crop happens before the model).

    Raises:
        RepairRefused: the preset is unknown or is not a per-channel affine map.
    """
    from tlviz.presets import PRESETS, apply_preset

    if preset not in PRESETS:
        raise RepairRefused(f"Unknown preset {preset!r}. Use one of: {', '.join(PRESETS)}.")
    probes = np.zeros((1 + channels, 1, 1, channels), dtype=np.uint8)
    for c in range(channels):
        probes[1 + c, 0, 0, c] = 255
    y = apply_preset(probes, preset).reshape(1 + channels, channels).astype(np.float64)
    b = y[0]
    w = (y[1:] - b).T / 255.0  # w[out, in]
    return _from_matrix(w, b, f"preset `{preset}`")


def _from_matrix(w: np.ndarray, b: np.ndarray, what: str) -> Affine:
    c = len(b)
    diag = np.diag(np.diag(w))
    anti = np.fliplr(np.diag(np.diag(np.fliplr(w)))) if c > 1 else diag
    tol = _SAME * max(1.0, float(np.abs(w).max()))
    if np.allclose(w, diag, atol=tol):
        return Affine(tuple(np.diag(w)), tuple(b), False)
    if c > 1 and np.allclose(w, anti, atol=tol):
        return Affine(tuple(np.diag(np.fliplr(w))[::-1]), tuple(b), True)
    raise RepairRefused(f"The {what} mixes colour channels; tlviz can only bake per-channel scaling into a model.")


def layers_affine(model, paths: list[str]) -> Affine:
    """The map the model's leading preprocessing layers at `paths` compute, read off their output.

    Args:
        model: the Keras model.
        paths: `tlviz.layers.iter_leaves` paths of Rescaling / Normalization layers, input first.

    Returns:
        The `Affine` they compute together.

    Raises:
        RepairRefused: together they are not a per-channel affine map.
    """
    from tlviz.repair.graph import leaf

    c = int(model.inputs[0].shape[-1] or 3)
    x = np.zeros((1 + c, 1, 1, c), dtype=np.float32)
    for i in range(c):
        x[1 + i, 0, 0, i] = 255.0
    y = x
    for p in paths:
        layer = leaf(model, p)
        y = np.asarray(layer(y), dtype=np.float64)
        if y.shape[-1] != c:
            raise RepairRefused(f"The input layer '{p}' changes the number of channels; it cannot be rewritten.")
    y = y.reshape(1 + c, c)
    b = y[0]
    w = (y[1:] - b).T / 255.0
    return _from_matrix(w, b, "model's own input scaling (" + ", ".join(paths) + ")")
