"""Running the model under one setting: presets applied batch by batch, predictions, the feature tap.

- `evaluate_preset(model, images, preset, ...)` — one preset on the already decoded images.
- `evaluate_setting(model, images, setting, source=None, ...)` — any `Setting`, resize variants
  included (decoded again from `source`).

Images stay ``uint8``; each batch is normalized on a helper thread while the model runs the
previous one, so there is never a float copy of the whole set. A `FeatureTap` keeps an inner
layer's output from the same forward pass.
"""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor
from typing import Callable

import numpy as np

from tlviz.errors import NormalizationRefused
from tlviz.imagesets import ImageSet
from tlviz.normalize.inputs import as_loaded, check_shapes, image_array, label_match
from tlviz.normalize.results import DEFAULT_BATCH_SIZE, Evaluation, FeatureTap, LabelMatch, Setting
from tlviz.outputs import first_output, top_class
from tlviz.presets import CustomPreset, applicable_presets, apply_preset


def _prepare(images: np.ndarray, preset, channel_order: str) -> np.ndarray:
    if channel_order == "BGR":
        images = images[..., ::-1]
    return apply_preset(images, preset)


def planned_batch_size(model, batch_size: int | None, n: int | None = None, mode: str = "inference") -> int:
    """`batch_size` when given, else the batch that fits the memory budget (at most `DEFAULT_BATCH_SIZE`)."""
    from tlviz.memory import plan_batch

    if batch_size is not None:
        if int(batch_size) < 1:
            raise NormalizationRefused(f"The batch size must be 1 or more, not {batch_size}.")
        return int(batch_size)
    return plan_batch(model, mode, n=n, max_batch=DEFAULT_BATCH_SIZE).batch_size


def _predict(keras_model, images: np.ndarray, preset, channel_order: str = "RGB",
             batch_size: int | None = None, progress: Callable[[int, int], None] | None = None,
             tap: FeatureTap | None = None):
    """Predictions for uint8 `images`, the preset applied one batch at a time.

    The next batch is normalized on a helper thread while the model runs, so at
    most two float batches exist at once. `model.predict_on_batch` reuses the
    model's compiled predict function across calls (measured faster than
    `model.predict` per chunk, which builds a tf.data pipeline each call).
    With a `tap`, its two-output model runs instead and the tapped features of
    ``tap.indices`` are kept (returned third, else None).
    """
    n = len(images)
    batch_size = planned_batch_size(keras_model, batch_size, n)
    preds = np.empty(n, dtype=np.int32)
    conf = np.empty(n, dtype=np.float32)
    feats = None
    starts = list(range(0, n, batch_size))
    with ThreadPoolExecutor(max_workers=1) as pool:
        nxt = pool.submit(_prepare, images[0:batch_size], preset, channel_order)
        for k, i in enumerate(starts):
            x = nxt.result()
            if k + 1 < len(starts):
                j = starts[k + 1]
                nxt = pool.submit(_prepare, images[j:j + batch_size], preset, channel_order)
            if tap is None:
                p, c = top_class(first_output(keras_model.predict_on_batch(x)))
            else:
                out, f = tap.model.predict_on_batch(x)
                p, c = top_class(out)
                feats = _keep_features(feats, np.asarray(f), tap.indices, i)
            preds[i:i + len(x)] = p
            conf[i:i + len(x)] = c
            del x
            if progress is not None:
                progress(min(i + batch_size, n), n)
    return preds, conf, feats


def _keep_features(feats, f: np.ndarray, indices: np.ndarray, start: int):
    """Copy the rows of batch `f` (images ``start...``) that `indices` asks for into `feats`."""
    if f.ndim > 2:
        f = f.mean(axis=tuple(range(1, f.ndim - 1)))
    f = f.reshape(len(f), -1).astype(np.float32, copy=False)
    if feats is None:
        feats = np.zeros((len(indices), f.shape[1]), dtype=np.float32)
    lo, hi = np.searchsorted(indices, [start, start + len(f)])
    feats[lo:hi] = f[indices[lo:hi] - start]
    return feats


def evaluate_preset(model, images: ImageSet, preset: str | CustomPreset, channel_order: str = "RGB",
                    batch_size: int | None = None, progress: Callable[[int, int], None] | None = None,
                    labels: LabelMatch | None = None) -> Evaluation:
    """Run the model on the decoded images under one preset.

    Args:
        model: a `LoadedModel` or Keras model.
        images: an `ImageSet` at the model's input size.
        preset: one of `PRESETS` or a `CustomPreset`.
        channel_order: ``"RGB"`` or ``"BGR"``. Defaults to `"RGB"`.
        batch_size: images per forward pass. Defaults to the batch that fits the
            memory budget (`tlviz.memory.plan_batch`, at most `DEFAULT_BATCH_SIZE`).
        progress: optional ``progress(done, total)`` called after each batch.
        labels: a precomputed `label_match(model, images)`. Defaults to computing it.

    Returns:
        An `Evaluation` (its ``accuracy`` is None when the classes do not match).

    Raises:
        NormalizationRefused: the images do not fit the model, or the preset
            does not apply to them (e.g. `caffe` on one-channel images).
    """
    return evaluate_setting(model, images, Setting(preset, images.resize, channel_order, images.resize),
                            batch_size=batch_size, progress=progress, labels=labels)


def evaluate_setting(model, images: ImageSet, setting: Setting, source=None,
                     batch_size: int | None = None, progress: Callable[[int, int], None] | None = None,
                     labels: LabelMatch | None = None, tap: FeatureTap | None = None) -> Evaluation:
    """Run the model under one `Setting`.

    A setting whose resize method differs from the one `images` were decoded
    with needs `source` to decode the images again.

    Args:
        model: a `LoadedModel` or Keras model.
        images: the `ImageSet` at the model's input size.
        setting: the `Setting`.
        source: the `ImageSource` the images came from. Defaults to `None`
            (then only ``setting.resize == images.resize`` is possible).
        batch_size: images per forward pass. Defaults to the batch that fits the
            memory budget (`tlviz.memory.plan_batch`, at most `DEFAULT_BATCH_SIZE`).
        progress: optional ``progress(done, total)`` called after each batch.
        labels: a precomputed `label_match(model, images)`. Defaults to computing it.
        tap: also keep an inner layer's features (`FeatureTap`). Defaults to `None`.

    Returns:
        An `Evaluation`.
    """
    t0 = time.perf_counter()
    loaded = as_loaded(model)
    if setting.resize != images.resize:
        if source is None:
            raise NormalizationRefused(
                f"The {setting.resize!r} resize variant needs the original images: pass `source=` (the "
                "ImageSource the image set came from).")
        images = source.load(images.image_size, int(images.images.shape[-1]), resize=setting.resize)
        labels = None
    arr = image_array(images)
    check_shapes(loaded, arr)
    if (not isinstance(setting.preset, CustomPreset)
            and setting.preset not in applicable_presets(arr.shape[-1], teachable=True)):
        raise NormalizationRefused(
            f"Preset {setting.preset!r} needs 3-channel RGB images; these have {arr.shape[-1]}. Use one of: "
            f"{', '.join(applicable_presets(arr.shape[-1]))}.")
    if setting.channel_order == "BGR" and arr.shape[-1] != 3:
        raise NormalizationRefused("Channel order BGR only applies to 3-channel images.")
    match = labels or label_match(loaded, images)
    tap = tap if setting.resize == images.resize else None
    try:
        preds, conf, feats = _predict(loaded.model, arr, setting.preset, setting.channel_order, batch_size, progress,
                                      tap=tap)
    except ValueError as exc:  # e.g. a custom preset with std 0
        raise NormalizationRefused(str(exc)) from None
    return Evaluation(setting, preds, conf, match.labels, list(images.files), time.perf_counter() - t0, feats,
                      None if feats is None else np.asarray(tap.indices))
