"""What the comparison starts from: the model, the images, their labels, a typed custom preset.

- `label_match(model, images)` maps the image set's classes onto the model's outputs (by the
  class names recorded with the model, else by position) or says why accuracy is hidden.
- `custom_preset(scale, mean, std)` builds a `CustomPreset` from typed text, with clear errors.
- The private checks every entry point runs first: the model summarised (`as_loaded`), the
  images a ``uint8`` ``(N, H, W, C)`` array (`image_array`) at the model's input size
  (`check_shapes`).
"""

from __future__ import annotations

import math

import numpy as np

from tlviz.errors import NormalizationRefused
from tlviz.imagesets import ImageSet
from tlviz.normalize.results import LabelMatch
from tlviz.presets import CustomPreset


def as_loaded(model):
    """A `tlviz.models.LoadedModel` as it is; a bare Keras model summarized into one (`tlviz.models.summarize`)."""
    from tlviz.models import LoadedModel, summarize

    if isinstance(model, LoadedModel):
        return model
    return summarize(model)


def image_array(images) -> np.ndarray:
    """The uint8 ``(N, height, width, channels)`` pixels of an `ImageSet` or an array.

    Raises:
        NormalizationRefused: not uint8 images of rank 4, or none at all.
    """
    arr = images.images if isinstance(images, ImageSet) else np.asarray(images)
    if arr.ndim != 4 or arr.dtype != np.uint8:
        raise NormalizationRefused(
            f"Expected uint8 images of shape (N, height, width, channels), got {arr.dtype} {arr.shape}. "
            "Load them with tlviz.imagesets.load_image_set at the model's input size.")
    if not len(arr):
        raise NormalizationRefused("The image set is empty. Give at least one image.")
    return arr


def check_shapes(loaded, arr: np.ndarray) -> None:
    """Refuse images whose size differs from the model's input (a `None` dimension takes any size).

    Raises:
        NormalizationRefused: the sizes differ; the message says how to decode them at the model's size.
    """
    want = loaded.input_shape
    got = arr.shape[1:]
    for w, g in zip(want, got):
        if w is not None and int(w) != int(g):
            raise NormalizationRefused(
                f"The images are {got[0]}x{got[1]}x{got[2]} but {loaded.name} expects "
                f"{'x'.join('?' if d is None else str(d) for d in want)}. Decode them at the model's input size "
                "(ImageSource.load(loaded.image_size, loaded.channels)).")


def label_match(model, images: ImageSet) -> LabelMatch:
    """Map the image set's classes onto the model's outputs.

    Classes are matched by name when the model records its class names
    (tlviz metadata), otherwise by position (the image set's sorted folder
    names, or the order in its ``labels.txt``).

    Args:
        model: a `LoadedModel` or Keras model.
        images: the `ImageSet`.

    Returns:
        A `LabelMatch`; its ``reason`` says why accuracy is hidden when
        ``labels`` is None.
    """
    loaded = as_loaded(model)
    k = 2 if loaded.n_outputs == 1 else loaded.n_outputs
    names = list(images.class_names)
    recorded = loaded.class_names if loaded.class_names and len(loaded.class_names) == k else None
    output_names = recorded or (names if len(names) == k else [str(i) for i in range(k)])
    present = [names[i] for i in np.unique(images.labels)]
    if recorded:
        missing = [c for c in present if c not in recorded]
        if missing:
            return LabelMatch(None, (
                f"The image set's classes ({_list(present)}) are not the classes recorded with the model "
                f"({_list(recorded)}), so accuracy cannot be measured and only the label-free fingerprint is "
                "shown. Use images of the model's own classes to see accuracy."), False, output_names)
        index = np.array([recorded.index(c) if c in recorded else -1 for c in names], dtype=np.int64)
        labels = index[images.labels]
        remapped = bool(np.any(labels != images.labels))
        return LabelMatch(labels, None, remapped, output_names)
    if len(names) != k:
        return LabelMatch(None, (
            f"The image set has {len(names)} classes but the model has {k} outputs, so accuracy cannot be "
            "measured and only the label-free fingerprint is shown. Use an image set with one folder per "
            "model output (a labels.txt listing them fixes the output order) to see accuracy."),
            False, output_names)
    return LabelMatch(np.asarray(images.labels, dtype=np.int64), None, False, output_names)


def _list(items, limit: int = 8) -> str:
    items = list(items)
    text = ", ".join(str(i) for i in items[:limit])
    return text + (f", … ({len(items)} in all)" if len(items) > limit else "")


def custom_preset(scale: float | str | None = None, mean: float | str | tuple | None = None,
                  std: float | str | tuple | None = None) -> CustomPreset:
    """Build a `CustomPreset` from typed values: ``(x * scale - mean) / std``.

    Args:
        scale: a number or its text. Defaults to `1/255`.
        mean: a number, ``R,G,B`` values, or their text (``"0.5, 0.5, 0.5"``). Defaults to `0`.
        std: like `mean`; must not contain 0. Defaults to `1`.

    Returns:
        The `CustomPreset`.

    Raises:
        NormalizationRefused: a value is not a number, is empty, has neither
            one nor three values, or `std` contains 0.
    """
    scale_v = 1.0 / 255.0 if scale in (None, "") else _values(scale, "scale", allow_three=False)
    mean_v = 0.0 if mean in (None, "") else _values(mean, "mean")
    std_v = 1.0 if std in (None, "") else _values(std, "std")
    if any(v == 0 for v in (std_v if isinstance(std_v, tuple) else (std_v,))):
        raise NormalizationRefused("The custom std must not contain 0. Use 1 to leave a channel unscaled.")
    if scale_v == 0:
        raise NormalizationRefused("The custom scale must not be 0 (that would blank every image). "
                                   "Use 1/255 = 0.00392 to scale to [0, 1].")
    return CustomPreset(scale=scale_v, mean=mean_v, std=std_v)


def _values(v, what: str, allow_three: bool = True):
    if isinstance(v, str):
        try:
            parts = tuple(float(x) for x in v.replace(";", ",").split(",") if x.strip())
        except ValueError:
            raise NormalizationRefused(f"The custom {what} must be a number" + (" or three comma-separated numbers "
                                       "such as 0.5, 0.5, 0.5" if allow_three else "") + f"; got {v!r}.") from None
    elif isinstance(v, (list, tuple)):
        parts = tuple(float(x) for x in v)
    else:
        parts = (float(v),)
    if not parts:
        raise NormalizationRefused(f"The custom {what} is empty. Give a number such as 0.5.")
    if any(math.isnan(x) or math.isinf(x) for x in parts):
        raise NormalizationRefused(f"The custom {what} must be a finite number; got {v!r}.")
    if len(parts) == 1:
        return parts[0]
    if not allow_three or len(parts) != 3:
        raise NormalizationRefused(f"The custom {what} takes " + ("one number" if not allow_three else
                                   "one number or three (one per R, G, B channel)") + f"; got {len(parts)}.")
    return parts
