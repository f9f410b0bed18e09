"""Where the model looks: Grad-CAM heatmaps, computed with ``tf.GradientTape``, and their overlay on the image.

Grad-CAM (Selvaraju et al., 2017) weighs each channel of a convolutional feature
map by how much the class score rises with it (the gradient, averaged over the
map), sums the weighted channels and keeps the positive part: the regions that
speak *for* the class. tlviz takes the feature map that feeds the head (the
last tensor with a spatial grid on the way from the output back to the input,
e.g. MobileNetV2's ``out_relu`` before the pooling), inside a nested base too:
the model is flattened (`tlviz.finetune.cache.flatten`, the layers shared, not
copied) and a two-output model returns the map and the prediction. The class
score is the logit when the last layer is a softmax / sigmoid (recomputed from
its input, so a confident prediction does not saturate the gradient), else the
output itself.

A model without such a map (a dense network on flattened pixels, a vision
transformer's tokens, a map of one cell) gets a sentence (`GradcamReport.reason`),
not an error. Heavy: the pages ask for it as a worker job (`tlviz.jobs`, kind
``"gradcam"``), for the few images a gallery shows.

Public API:

- `feature_map(model) -> FeatureMap` (what a heatmap is computed on, or the reason there is none);
- `gradcam(model, images, preset, classes=None) -> (heatmaps, classes, confidences, FeatureMap)`;
- `explain(loaded, images, items, progress=None) -> GradcamReport`: heatmaps for ``(index, preset)``
  items of an `ImageSet` (what a gallery shows), each for the class predicted under that preset;
- `overlay(image, heatmap, alpha=0.5) -> uint8 RGB`: the heatmap upsampled, coloured and laid over the image;
- `job_params(items)` / `items_from_params(params)`: the JSON form of the items a job carries;
- `CONV_CLASSES`, `GRADCAM_MAX_ITEMS`.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field
from typing import Callable

import numpy as np

from tlviz.layers import tensor_producer

#: Layers that make a feature map convolutional.
CONV_CLASSES = ("Conv2D", "DepthwiseConv2D", "SeparableConv2D", "Conv2DTranspose", "Conv3D")
#: At most this many (image, preset) heatmaps per request: a gallery shows a page of images, not a data set.
GRADCAM_MAX_ITEMS = 64
#: Colours of the heatmap from cold to hot (dark purple, magenta, orange, pale yellow).
_COLOURS = np.array([[0, 0, 4], [87, 16, 110], [188, 55, 84], [249, 142, 9], [252, 255, 164]], dtype=np.float32)


@dataclass
class FeatureMap:
    """Where a model's Grad-CAM is computed, or why it cannot be.

    Attributes:
        layer: the layer whose output is the feature map (None when there is none).
        shape: its grid, ``(height, width)``.
        score: ``"logit"`` (recomputed from the input of the last layer's softmax / sigmoid)
            or ``"output"`` (the output as it is).
        reason: None when a map was found, else the sentence saying why there is none.
    """

    layer: str | None
    shape: tuple[int, int] | None = None
    score: str = "output"
    reason: str | None = None
    _model: object = field(default=None, repr=False, compare=False)  # the two-output model
    _logits: object = field(default=None, repr=False, compare=False)  # (h) -> logits, or None

    @property
    def available(self) -> bool:
        return self.reason is None


@dataclass
class GradcamMap:
    """One heatmap: image `index` under `preset`, for class `class_index`.

    Attributes:
        index: the image's position in the `ImageSet`.
        preset: the preset the image was prepared with (a name, or a custom preset's name).
        class_index: the model output explained (the class predicted under `preset`).
        confidence: the model's probability for that class.
        heatmap: ``float32`` ``(h, w)`` on the feature map's grid, scaled to [0, 1]
            (all zeros when nothing in the image speaks for the class).
    """

    index: int
    preset: str
    class_index: int
    confidence: float
    heatmap: np.ndarray


@dataclass
class GradcamReport:
    """Heatmaps for a gallery.

    Attributes:
        layer: the feature map's layer (None without one).
        shape: its grid.
        reason: the sentence when there is no convolutional feature map (then `maps` is empty).
        maps: ``{(index, preset): GradcamMap}``.
        model_name: the model explained.
        output_names: class names in output order (the image set's when they match).
    """

    layer: str | None
    shape: tuple[int, int] | None
    reason: str | None
    maps: dict = field(default_factory=dict)
    model_name: str = ""
    output_names: list = field(default_factory=list)

    def get(self, index: int, preset) -> GradcamMap | None:
        """The map of image `index` under `preset` (a name or a `CustomPreset`), or None."""
        return self.maps.get((int(index), _preset_key(preset)))

    def caption(self, m: GradcamMap) -> str:
        """``"explains 'cat' (93%)"``."""
        names = self.output_names
        name = names[m.class_index] if 0 <= m.class_index < len(names) else str(m.class_index)
        return f"explains '{name}' ({m.confidence:.0%})"


# -- the feature map ------------------------------------------------------------------

def _has_conv_below(tensor) -> bool:
    seen, stack = set(), [tensor]
    while stack:
        t = stack.pop()
        if id(t) in seen:
            continue
        seen.add(id(t))
        op, inputs = tensor_producer(t)
        if op is None:
            continue
        if type(op).__name__ in CONV_CLASSES:
            return True
        stack.extend(inputs)
    return False


def _spatial(shape) -> bool:
    if len(shape) != 4:
        return False
    h, w = shape[1], shape[2]
    return h is None or w is None or int(h) * int(w) > 1


def _activation_name(layer) -> str | None:
    act = getattr(layer, "activation", None)
    if act is None:
        return None
    name = getattr(act, "__name__", None) or type(act).__name__
    return str(name).lower()


def feature_map(model) -> FeatureMap:
    """The convolutional feature map that feeds the head, or the sentence saying there is none.

    Args:
        model: a Keras model (or a `LoadedModel`).

    Returns:
        A `FeatureMap`; ``reason`` is set when Grad-CAM cannot be computed.
    """
    import keras

    from tlviz.finetune.cache import flatten

    model = getattr(model, "model", model)
    try:
        flat = flatten(model)
    except Exception as exc:  # an unusual graph: say so, do not fail the page
        return FeatureMap(None, reason=f"Grad-CAM needs the model's layers as a graph, and this one could not be "
                                       f"traced ({type(exc).__name__}: {str(exc)[:120]}).")
    out = flat.outputs[0]
    t = out
    single = None  # a 4-D map of one cell passed on the way (a grid pooled or convolved away)
    while not _spatial(tuple(t.shape)):
        op, inputs = tensor_producer(t)
        if single is None and len(t.shape) == 4 and op is not None:
            single = t
        if op is None or not inputs:
            return FeatureMap(None, reason=(
                "The model has no convolutional feature map before its head (no layer output with a grid of "
                "positions feeds it), so there is no image region to weigh: Grad-CAM applies to convolutional "
                "networks."))
        t = inputs[0]
    op, _ = tensor_producer(t)
    name = getattr(op, "name", "?")
    if single is not None and _has_conv_below(single):
        return FeatureMap(None, reason=(
            f"The convolutional feature map that feeds the head ('{tensor_producer(single)[0].name}') has a single cell, so "
            "there is no "
            "region of the image to weigh: Grad-CAM needs a map with a grid of positions."))
    if not _has_conv_below(t):
        return FeatureMap(None, reason=(
            f"The head is fed by '{name}', which no convolutional layer precedes (the model works on the pixels "
            "directly), so Grad-CAM has no learned feature map to weigh."))
    last, inputs = tensor_producer(out)
    act = _activation_name(last)
    logits_from = None
    if type(last).__name__ == "Dense" and act in ("softmax", "sigmoid") and inputs:
        logits_from, score = inputs[0], "logit"
    elif (type(last).__name__ == "Softmax" or (type(last).__name__ == "Activation" and act in ("softmax", "sigmoid"))) \
            and inputs:
        logits_from, score = inputs[0], "logit"
    else:
        score = "output"
    outputs = [t, out] + ([logits_from] if logits_from is not None else [])
    two = keras.Model(flat.inputs, outputs, name=f"{model.name}_gradcam")
    logits = None
    if logits_from is not None and type(last).__name__ == "Dense":
        def logits(h, layer=last):
            z = keras.ops.matmul(h, layer.kernel)
            return z + layer.bias if layer.bias is not None else z
    elif logits_from is not None:
        def logits(h):
            return h
    shape = tuple(t.shape[1:3])
    return FeatureMap(name, (None if None in shape else (int(shape[0]), int(shape[1]))), score, None, two, logits)


# -- heatmaps -------------------------------------------------------------------------

def gradcam(model, images: np.ndarray, preset, classes=None, *, target: FeatureMap | None = None,
            progress: Callable[[float, str], None] | None = None):
    """Grad-CAM heatmaps of `images` prepared with `preset`.

    Args:
        model: a Keras model (or a `LoadedModel`).
        images: ``uint8`` ``(N, H, W, C)`` at the model's input size.
        preset: one of `tlviz.presets.PRESETS` or a `CustomPreset`.
        classes: the output to explain per image. Defaults to the predicted class.
        target: the `feature_map` of `model`, when already found. Defaults to finding it.
        progress: ``progress(fraction, text)``. Defaults to none.

    Returns:
        ``(heatmaps, classes, confidences, target)``: ``float32`` ``(N, h, w)`` scaled to
        [0, 1] per image (None when `target` has a `reason`), the explained classes, the
        model's probability of each, and the `FeatureMap`.
    """
    import tensorflow as tf

    from tlviz.memory import plan_batch
    from tlviz.outputs import first_output, top_class
    from tlviz.presets import apply_preset

    target = target or feature_map(model)
    if not target.available:
        return None, None, None, target
    images = np.asarray(images)
    n = len(images)
    two = target._model
    batch = plan_batch(two, "train", n=n).batch_size
    maps, explained, confidence = [], [], []
    say = progress or (lambda fraction, text: None)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for start in range(0, n, batch):
            x = tf.convert_to_tensor(apply_preset(images[start:start + batch], preset))
            with tf.GradientTape() as tape:
                outs = two(x, training=False)
                fmap, probs = outs[0], outs[1]
                predicted, probability = top_class(first_output(probs))
                wanted = predicted if classes is None else np.asarray(classes[start:start + batch], dtype=np.int32)
                scores = target._logits(outs[2]) if target._logits is not None else probs
                scores = tf.reshape(tf.cast(scores, tf.float32), (tf.shape(scores)[0], -1))
                if scores.shape[-1] == 1:  # one sigmoid unit: class 1 is the logit, class 0 its negative
                    sign = tf.constant(np.where(wanted == 1, 1.0, -1.0), dtype=tf.float32)
                    picked = scores[:, 0] * sign
                else:
                    picked = tf.gather(scores, tf.constant(wanted, dtype=tf.int32), axis=1, batch_dims=1)
                total = tf.reduce_sum(picked)
            grads = tape.gradient(total, fmap)
            fmap_np = np.asarray(fmap, dtype=np.float32)
            grads_np = np.zeros_like(fmap_np) if grads is None else np.asarray(grads, dtype=np.float32)
            weights = grads_np.mean(axis=(1, 2), keepdims=True)
            cam = np.maximum((fmap_np * weights).sum(axis=-1), 0.0)
            top = cam.reshape(len(cam), -1).max(axis=1)
            cam = np.where(top[:, None, None] > 0, cam / np.maximum(top, 1e-12)[:, None, None], 0.0)
            maps.append(cam.astype(np.float32))
            explained.append(np.asarray(wanted, dtype=np.int32))
            probs_np = first_output(probs)
            if probs_np.shape[-1] == 1:  # `probability` is the predicted class's
                confidence.append(np.where(wanted == predicted, probability, 1.0 - probability).astype(np.float32))
            else:
                rows = np.arange(len(wanted))
                p = probs_np if _is_distribution(probs_np) else _softmax(probs_np)
                confidence.append(p[rows, wanted].astype(np.float32))
            say((start + len(x)) / max(n, 1), f"Grad-CAM: {min(start + batch, n)} of {n} images…")
    return np.concatenate(maps), np.concatenate(explained), np.concatenate(confidence), target


def _is_distribution(p: np.ndarray) -> bool:
    return bool(np.all(p >= -1e-6) and np.allclose(p.sum(axis=1), 1.0, atol=1e-3))


def _softmax(z: np.ndarray) -> np.ndarray:
    z = z - z.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


# -- a gallery's request ----------------------------------------------------------------

def _preset_key(preset) -> str:
    from tlviz.presets import CustomPreset

    return preset.name if isinstance(preset, CustomPreset) else str(preset)


def _preset_from(spec):
    from tlviz.presets import PRESETS, CustomPreset

    if isinstance(spec, dict):
        unknown = set(spec) - {"scale", "mean", "std"}
        if unknown:
            raise ValueError(f"A custom preset takes scale, mean and std, not {', '.join(sorted(unknown))}.")
        return CustomPreset(**{k: (tuple(v) if isinstance(v, list) else v) for k, v in spec.items()})
    if isinstance(spec, CustomPreset):
        return spec
    if spec not in PRESETS:
        raise ValueError(f"Unknown preset {spec!r}. Use one of: {', '.join(PRESETS)}, or a custom preset's "
                         "{'scale', 'mean', 'std'}.")
    return spec


def job_params(items) -> dict:
    """The JSON form of a gallery's request: ``{"items": [[index, preset], ...]}``.

    Args:
        items: ``(index, preset)`` pairs: an image's position in the `ImageSet` and a preset
            name or `CustomPreset` (its fields are stored).

    Returns:
        The parameters, each item once, in the order given.

    Raises:
        ValueError: no item, more than `GRADCAM_MAX_ITEMS`, or an unknown preset.
    """
    from dataclasses import asdict

    from tlviz.presets import CustomPreset

    out, seen = [], set()
    for index, preset in items:
        _preset_from(preset)
        spec = asdict(preset) if isinstance(preset, CustomPreset) else str(preset)
        if isinstance(spec, dict):
            spec = {k: (list(v) if isinstance(v, tuple) else float(v)) for k, v in spec.items()}
        key = (int(index), _preset_key(preset))
        if key in seen:
            continue
        seen.add(key)
        out.append([int(index), spec])
    if not out:
        raise ValueError("Ask for at least one (image index, preset) heatmap.")
    if len(out) > GRADCAM_MAX_ITEMS:
        raise ValueError(f"At most {GRADCAM_MAX_ITEMS} heatmaps at once (a gallery's page); {len(out)} were asked.")
    return {"items": out}


def items_from_params(params: dict) -> list[tuple[int, object]]:
    """The ``(index, preset)`` items of `job_params`' dict (presets as names or `CustomPreset`)."""
    return [(int(i), _preset_from(p)) for i, p in (params or {}).get("items", [])]


def explain(loaded, images, items, progress: Callable[[float, str], None] | None = None) -> GradcamReport:
    """Heatmaps for a gallery: each ``(index, preset)`` item, for the class predicted under that preset.

    Args:
        loaded: a `LoadedModel` (or a Keras model).
        images: the `ImageSet` the indices point into (or a ``uint8`` array).
        items: ``(index, preset)`` pairs (`job_params` checks them).
        progress: ``progress(fraction, text)``. Defaults to none.

    Returns:
        A `GradcamReport` (with `reason` and no maps when the model has no convolutional feature map).

    Raises:
        ValueError: an index outside the image set, or a bad item.
    """
    items = items_from_params(job_params(items))
    arr = getattr(images, "images", images)
    names = list(getattr(images, "class_names", []) or [])
    model = getattr(loaded, "model", loaded)
    n_out = int(model.outputs[0].shape[-1] or 0)
    k = 2 if n_out == 1 else n_out
    outputs = names if len(names) == k else [str(i) for i in range(k)]
    bad = [i for i, _ in items if not 0 <= i < len(arr)]
    if bad:
        raise ValueError(f"Image index {bad[0]} is outside the image set ({len(arr)} images).")
    say = progress or (lambda fraction, text: None)
    say(0.0, "Grad-CAM: finding the convolutional feature map…")
    target = feature_map(model)
    report = GradcamReport(target.layer, target.shape, target.reason, {}, getattr(model, "name", ""), outputs)
    if not target.available:
        return report
    by_preset: dict[str, list] = {}
    for index, preset in items:
        by_preset.setdefault(_preset_key(preset), []).append((index, preset))
    done = 0
    for key, group in by_preset.items():
        idx = np.array([i for i, _ in group], dtype=np.int64)

        def part(fraction, text, _done=done, _n=len(group)):
            say((_done + fraction * _n) / len(items), text)

        heat, cls, conf, _ = gradcam(model, arr[idx], group[0][1], target=target, progress=part)
        for k, i in enumerate(idx):
            report.maps[(int(i), key)] = GradcamMap(int(i), key, int(cls[k]), float(conf[k]), heat[k])
        done += len(group)
    say(1.0, "Grad-CAM: done.")
    return report


# -- drawing ------------------------------------------------------------------------------

def colourize(values: np.ndarray) -> np.ndarray:
    """``float`` values in [0, 1] as ``float32`` RGB colours (0-255) from cold to hot."""
    v = np.clip(np.asarray(values, dtype=np.float32), 0.0, 1.0) * (len(_COLOURS) - 1)
    lo = np.floor(v).astype(np.int64).clip(0, len(_COLOURS) - 2)
    t = (v - lo)[..., None]
    return _COLOURS[lo] * (1 - t) + _COLOURS[lo + 1] * t


def overlay(image: np.ndarray, heatmap: np.ndarray, alpha: float = 0.5) -> np.ndarray:
    """The heatmap laid over the image: hot regions coloured, cold ones left as they are.

    Args:
        image: ``uint8`` ``(H, W, 1 or 3)``.
        heatmap: ``(h, w)`` values in [0, 1] (e.g. `GradcamMap.heatmap`), upsampled to the image.
        alpha: the opacity of the hottest colour. Defaults to `0.5`.

    Returns:
        ``uint8`` ``(H, W, 3)``.
    """
    from PIL import Image

    img = np.asarray(image)
    if img.ndim == 2:
        img = img[..., None]
    if img.shape[-1] == 1:
        img = np.repeat(img, 3, axis=-1)
    h, w = img.shape[:2]
    hm = np.asarray(heatmap, dtype=np.float32)
    if hm.shape != (h, w):
        hm = np.asarray(Image.fromarray(hm).resize((w, h), Image.BILINEAR), dtype=np.float32)
    hm = np.clip(hm, 0.0, 1.0)
    weight = (alpha * np.sqrt(hm))[..., None]
    out = img.astype(np.float32) * (1 - weight) + colourize(hm) * weight
    return np.clip(out + 0.5, 0, 255).astype(np.uint8)
