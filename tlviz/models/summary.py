"""What was loaded: `LoadedModel`, `summarize(model)` and `builtin_preprocessing(model)`.

`summarize` checks that a Keras model is an image classifier tlviz can handle (one image input,
channels last) and records its signature: input shape, number of outputs, parameter counts, and
the preprocessing layers at its input (Rescaling, Normalization, Resizing, CenterCrop).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from tlviz.errors import ModelRefused
from tlviz.models.messages import clean

_PREPROCESSING_CLASSES = ("Rescaling", "Normalization", "Resizing", "CenterCrop")


@dataclass
class LoadedModel:
    """A model accepted by `load_model`, with a summary of its signature.

    Attributes:
        model: the Keras model. Treat as read-only: clone before training.
        name: the model's name.
        filename: the file it came from.
        sha256: hash of the file's bytes (cache key).
        input_shape: input shape without the batch axis, e.g. ``(224, 224, 3)``.
        n_outputs: number of output units (classes) of the first output.
        total_params / trainable_params / non_trainable_params: as Keras counts them.
        builtin_preprocessing: descriptions of Rescaling / Normalization / ...
            layers found at the model's input.
        metadata: what tlviz recorded about the model (``preset``,
            ``class_names``, ...), from the embedded ``tlviz.json``, a sidecar,
            or a Teachable Machine export's ``labels.txt``.
        conversion: for a Keras 2 `.h5`, what the translator rewrote
            (`tlviz.models.legacy.Translation.to_json`); None for a file Keras 3 reads as is.
        teachable_machine: True when the model is shaped like a Teachable Machine
            image-model export (MobileNetV2 features, then a two-layer head).
    """

    model: object
    name: str
    filename: str
    sha256: str
    input_shape: tuple
    n_outputs: int
    total_params: int
    trainable_params: int
    non_trainable_params: int
    builtin_preprocessing: list[str] = field(default_factory=list)
    metadata: dict = field(default_factory=dict)
    conversion: dict | None = None
    teachable_machine: bool = False

    @property
    def origin(self) -> str:
        """One line on where the model came from, for the overview page."""
        if self.teachable_machine:
            what = "A Teachable Machine image model"
            return what + (" (a Keras 2 `.h5` export, converted for Keras 3)" if self.conversion else "")
        if self.conversion:
            return f"A Keras {self.conversion.get('keras_version') or '2'} `.h5` file, converted for Keras 3"
        return "A Keras 3 model"

    @property
    def image_size(self) -> tuple[int, int]:
        """(height, width) the images must be resized to (224 if the model accepts any)."""
        h, w = self.input_shape[0], self.input_shape[1]
        return (int(h or 224), int(w or 224))

    @property
    def channels(self) -> int:
        return int(self.input_shape[2] or 3)

    @property
    def recorded_preset(self) -> str | None:
        """The preset the file records (tlviz's metadata), else ``teachable`` for a Teachable Machine model (its
        exporter's own preprocessing), else None."""
        return self.metadata.get("preset") or ("teachable" if self.teachable_machine else None)

    @property
    def class_names(self) -> list[str] | None:
        names = self.metadata.get("class_names")
        return list(names) if names else None


def summarize(model, filename: str = "", sha256: str = "", metadata: dict | None = None) -> LoadedModel:
    """Build a `LoadedModel` summary for an in-memory Keras model.

    Args:
        model: a `keras.Model` with one image input, channels last.
        filename: the file it came from. Defaults to `""`.
        sha256: the hash of the file's bytes. Defaults to `""`.
        metadata: what tlviz recorded about the model (``class_names``, ``preset``...).
            Defaults to `None` (nothing recorded).

    Returns:
        A `LoadedModel`.

    Raises:
        ModelRefused: not a Keras model, or not one image input of shape (height, width, 1 or 3).
    """
    import keras

    if not isinstance(model, keras.Model):
        raise ModelRefused(f"{clean(filename or 'The file', 120)} holds a {type(model).__name__}, not a Keras model.")
    inputs = model.inputs
    if len(inputs) != 1:
        raise ModelRefused(
            f"{clean(model.name)} has {len(inputs)} inputs; tlviz handles image classifiers with exactly one "
            "image input. Save a model that takes one image tensor."
        )
    shape = tuple(inputs[0].shape[1:])
    if len(shape) != 3 or shape[-1] not in (1, 3, None):
        raise ModelRefused(
            f"{clean(model.name)} expects input of shape {shape}; tlviz needs an image input of shape "
            "(height, width, 1 or 3) in channels-last order."
        )
    out_shape = model.outputs[0].shape
    n_outputs = int(out_shape[-1]) if out_shape[-1] is not None else 0
    trainable = _count(model.trainable_weights)
    non_trainable = _count(model.non_trainable_weights)
    return LoadedModel(
        model=model,
        name=model.name,
        filename=filename,
        sha256=sha256,
        input_shape=shape,
        n_outputs=n_outputs,
        total_params=trainable + non_trainable,
        trainable_params=trainable,
        non_trainable_params=non_trainable,
        builtin_preprocessing=builtin_preprocessing(model),
        metadata=dict(metadata or {}),
    )


def builtin_preprocessing(model) -> list[str]:
    """Describe preprocessing layers at the model's input (before any weighted layer).

    Args:
        model: a `keras.Model` (nested models are followed).

    Returns:
        One string per layer, e.g. ``"Rescaling 'rescaling' (scale=0.00392, offset=0)"``.
    """
    found = []
    for path, layer in _walk_leading(model):
        cls = type(layer).__name__
        if cls in _PREPROCESSING_CLASSES:
            found.append(_describe_preprocessing(path, layer))
    return found


def _walk_leading(model, prefix=""):
    """Leaf layers from the input until the first layer holding weights."""
    import keras

    for layer in model.layers:
        path = f"{prefix}{layer.name}"
        if isinstance(layer, keras.Model):
            for item in _walk_leading(layer, prefix=path + "/"):
                yield item
            return
        cls = type(layer).__name__
        if layer.weights and cls not in _PREPROCESSING_CLASSES:
            return
        yield path, layer


def _describe_preprocessing(path, layer) -> str:
    import numpy as np

    cls = type(layer).__name__
    if cls == "Rescaling":
        return f"Rescaling '{path}' (scale={_short(layer.scale)}, offset={_short(layer.offset)})"
    if cls == "Normalization":
        try:
            mean = np.asarray(layer.mean).ravel()
            var = np.asarray(layer.variance).ravel()
            return f"Normalization '{path}' (mean={_short(mean)}, variance={_short(var)})"
        except Exception:  # not adapted yet
            return f"Normalization '{path}'"
    return f"{cls} '{path}'"


def _short(v) -> str:
    import numpy as np

    arr = np.asarray(v, dtype=float).ravel()
    if arr.size == 1:
        return f"{arr[0]:.4g}"
    return "[" + ", ".join(f"{a:.4g}" for a in arr[:4]) + (", ..." if arr.size > 4 else "") + "]"


def _count(weights) -> int:
    import numpy as np

    seen, total = set(), 0
    for w in weights:
        if id(w) in seen:
            continue
        seen.add(id(w))
        total += int(np.prod(w.shape))
    return total
