"""Try one photo: the model's top classes and where it looks, under two preparations side by side.

What a presenter shows a room: a photo (from the camera, a file or the image set) goes through the
model prepared the way the user's code prepares it and the way the model expects, and for each the
top classes with their probabilities and a Grad-CAM overlay come back. One image, a few model
passes: light enough to answer in the page (measured in ``bench/bench_try.py``).

Public API:

- `tlviz.errors.PhotoRefused` (raised): the bytes are not a usable image (the message says why and what to do);
- `decode_photo(data, loaded, preset)`: the photo at the model's input size, resized as `preset` needs;
- `output_names(loaded, class_names)`: a name for every output of the model;
- `Explainer(loaded)`: keeps what one model needs between photos (its Grad-CAM feature map);
  `Explainer.answer(photo, presets, class_names, top)` gives a `TryResult`.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field

import numpy as np

from tlviz.errors import ImageSkipped, PhotoRefused

#: How many classes each answer lists.
TOP = 3


@dataclass
class PresetAnswer:
    """The model's answer for the photo under one preparation.

    Attributes:
        role: what the preparation stands for (``"your pipeline"``, ``"what the model expects"``).
        preset: the preset's name.
        top: ``[(class name, probability), ...]``, most probable first.
        overlay: ``uint8`` RGB of the photo with its Grad-CAM heatmap, or None when there is none.
        explained: which class the overlay explains.
    """

    role: str
    preset: str
    top: list = field(default_factory=list)
    overlay: np.ndarray | None = None
    explained: str = ""


@dataclass
class TryResult:
    """Answers for one photo.

    Attributes:
        photo: the photo at the model's input size (``uint8``), as the first answer's preset resized it.
        answers: one `PresetAnswer` per preparation, in the order asked.
        heatmap_reason: why there are no overlays (a model without a convolutional feature map), else None.
        seconds: how long the answers took.
    """

    photo: np.ndarray
    answers: list
    heatmap_reason: str | None = None
    seconds: float = 0.0

    @property
    def agree(self) -> bool:
        """Whether every preparation's top class is the same."""
        tops = {a.top[0][0] for a in self.answers if a.top}
        return len(tops) <= 1


def decode_photo(data: bytes, loaded, preset: str = "raw") -> np.ndarray:
    """The photo as ``uint8`` ``(H, W, C)`` at the model's input size, resized as `preset` needs.

    Args:
        data: the file's bytes (PNG, JPEG, BMP, GIF, WebP).
        loaded: the `LoadedModel`.
        preset: the preset the photo is for: ``"teachable"`` centre-crops, others resize the whole photo.
            Defaults to ``"raw"``.

    Raises:
        PhotoRefused: the bytes are not a usable image (the message says why).
    """
    from tlviz.imagesets import decode_image
    from tlviz.presets import preset_resize

    if not data:
        raise PhotoRefused("The photo is empty. Take the photo again or choose another file.")
    try:
        arr, _, _ = decode_image(bytes(data), loaded.image_size, loaded.channels, preset_resize(preset))
    except ImageSkipped as exc:  # the decoder's skip reason is the message
        raise PhotoRefused(f"The photo cannot be used: {exc}. Choose a PNG, JPEG, BMP, GIF or WebP "
                           "image.") from None
    return arr


def output_names(loaded, class_names=None) -> list[str]:
    """A name for every output of the model: the names the file records (a Teachable Machine export's
    labels), else `class_names` (the image set's) when the count matches, else ``"class 0"``, ...

    Args:
        loaded: the `LoadedModel`.
        class_names: the image set's class names. Defaults to none.
    """
    n = int(loaded.n_outputs or 0)
    for names in (loaded.class_names, class_names):
        if names and len(names) == n:
            return [str(x) for x in names]
    if n == 1:  # one sigmoid unit: two classes
        for names in (loaded.class_names, class_names):
            if names and len(names) == 2:
                return [str(x) for x in names]
        return ["class 0", "class 1"]
    return [f"class {i}" for i in range(n)]


def _probabilities(out: np.ndarray) -> np.ndarray:
    """One image's output as probabilities over the classes (logits softmaxed, one sigmoid unit made two)."""
    from tlviz.outputs import first_output

    z = np.asarray(first_output(out), dtype=np.float64).reshape(-1)
    if z.size == 1:
        p = z[0] if 0.0 <= z[0] <= 1.0 else 1.0 / (1.0 + np.exp(-z[0]))
        return np.array([1.0 - p, p])
    if np.all(z >= 0) and np.all(z <= 1) and abs(z.sum() - 1.0) < 1e-3:
        return z
    e = np.exp(z - z.max())
    return e / e.sum()


class Explainer:
    """What one model needs between photos: its Grad-CAM feature map, found once.

    Args:
        loaded: the `LoadedModel`. The model is only read (never trained or re-flagged).
    """

    def __init__(self, loaded):
        self.loaded = loaded
        self._target = None

    def _feature_map(self):
        from tlviz.gradcam import feature_map

        if self._target is None:
            self._target = feature_map(self.loaded.model)
        return self._target

    def answer(self, data: bytes, presets: list[tuple[str, str]], class_names=None, top: int = TOP,
               heatmaps: bool = True) -> TryResult:
        """The model's answer for the photo under each preparation.

        Args:
            data: the photo's bytes.
            presets: ``[(role, preset name), ...]``, e.g. ``[("your pipeline", "raw"), ("what the model
                expects", "tf")]``; the same preset twice is answered once.
            class_names: the image set's class names (used when the model records none). Defaults to none.
            top: how many classes each answer lists. Defaults to `TOP`.
            heatmaps: compute the Grad-CAM overlays. Defaults to `True`.

        Returns:
            A `TryResult`.

        Raises:
            PhotoRefused: the photo is not a usable image.
        """
        from tlviz.gradcam import gradcam, overlay
        from tlviz.memory import forward
        from tlviz.presets import apply_preset, preset_resize

        t0 = time.perf_counter()
        names = output_names(self.loaded, class_names)
        target = self._feature_map() if heatmaps else None
        photos: dict[str, np.ndarray] = {}
        done: dict[str, PresetAnswer] = {}
        answers = []
        for role, preset in presets:
            resize = preset_resize(preset)
            if resize not in photos:
                photos[resize] = decode_photo(data, self.loaded, preset)
            photo = photos[resize]
            if preset in done:
                answers.append(PresetAnswer(role, preset, done[preset].top, done[preset].overlay,
                                            done[preset].explained))
                continue
            probs = _probabilities(forward(self.loaded.model)(apply_preset(photo[None], preset)))
            order = np.argsort(-probs)[:max(1, int(top))]
            ranked = [(names[i] if i < len(names) else f"class {i}", float(probs[i])) for i in order]
            picture, explained = None, ""
            if target is not None and target.available:
                maps, classes, confidences, _ = gradcam(self.loaded.model, photo[None], preset, target=target)
                if maps is not None:
                    picture = overlay(photo, maps[0])
                    k = int(classes[0])
                    explained = f"where it sees '{names[k] if k < len(names) else k}' ({float(confidences[0]):.0%})"
            answer = PresetAnswer(role, preset, ranked, picture, explained)
            done[preset] = answer
            answers.append(answer)
        first = photos[preset_resize(presets[0][1])] if presets else decode_photo(data, self.loaded)
        reason = target.reason if target is not None and not target.available else None
        return TryResult(first, answers, reason, time.perf_counter() - t0)
