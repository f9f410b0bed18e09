"""Everything that can refuse a run before it trains: the image set, the preset, the memory budget.

Public API: `check_run(loaded, images, config)` (the run's inputs; returns the head decision),
`check_preset(images, preset)`, `check_train_memory(model, batch_size, budget, phase)` (one training
step against the budget) and `memory_budget()` (``TLVIZ_MEMORY_MB`` in bytes, a malformed value refused).
Each raises `tlviz.errors.RunRefused` with what to do.
"""

from __future__ import annotations

import math

import numpy as np

from tlviz.errors import RunRefused
from tlviz.finetune.build import HeadDecision, check_trainable, decide_head
from tlviz.finetune.config import RunConfig
from tlviz.memory import ENV_MEMORY_MB, fit_bytes, memory_budget_bytes
from tlviz.presets import PIXEL_PRESET, PRESET_DESCRIPTIONS, PRESET_RESIZE, apply_preset


def check_run(loaded, images, config: RunConfig) -> HeadDecision:
    """Everything that can refuse a run before any training.

    Args:
        loaded: the `tlviz.models.LoadedModel`.
        images: the `tlviz.imagesets.ImageSet` to train on.
        config: the `RunConfig`.

    Returns:
        The head decision.

    Raises:
        RunRefused: what is wrong and what to do.
    """
    config.validate()
    check_trainable(loaded, config)
    if len(images) == 0:
        raise RunRefused("The image set holds no images. Load an image set with one sub-folder per class.")
    if not images.two_classes_present:
        raise RunRefused("Fine-tuning needs images of at least two classes; this image set has "
                         f"{len(np.unique(images.labels))}. Add class folders.")
    if tuple(images.image_size) != tuple(loaded.image_size) or images.images.shape[-1] != loaded.channels:
        raise RunRefused(f"The images are {images.image_size} × {images.images.shape[-1]} but the model takes "
                         f"{loaded.image_size} × {loaded.channels}. Decode the image set at the model's input size.")
    fixed = PRESET_RESIZE.get(config.preset)
    if fixed is not None and images.resize != fixed:
        raise RunRefused(f"The `{config.preset}` preset resizes with `{fixed}` ({PRESET_DESCRIPTIONS[config.preset]}), "
                         f"but these images were resized with `{images.resize}`, so the run would not train on "
                         f"what the model sees. Decode the image set with resize='{fixed}' (the page and the "
                         "command line do this for you), or pick the preset with the same arithmetic "
                         f"(`{PIXEL_PRESET.get(config.preset, config.preset)}`) to keep this resize.")
    counts = np.bincount(images.labels, minlength=len(images.class_names))
    if counts[counts > 0].min() < 2:
        small = [images.class_names[i] for i in np.flatnonzero((counts > 0) & (counts < 2))]
        raise RunRefused(f"Class(es) {', '.join(small)} have a single image: a validation split needs at least two "
                         "per class. Add images.")
    return decide_head(loaded.n_outputs, loaded.class_names, images.class_names, config.new_head)


def check_train_memory(model, batch_size: int, budget: int | None = None, phase: str | None = None) -> dict:
    """Refuse a training step that would not fit in the memory budget.

    The estimate is `tlviz.memory.fit_bytes`: the layers below the first
    trainable one cost a compiled forward pass, the trainable part keeps every
    output and a gradient of the same size. The batch size is the user's
    hyperparameter and is never changed here: a run that does not fit is
    refused before it starts, with the batch size that would fit.

    Args:
        model: the model that trains (`Cut.upper` when the layers below a cut
            run on cached activations), trainable flags set.
        batch_size: the training batch size.
        budget: bytes. Defaults to `tlviz.memory.memory_budget_bytes()`
            (``TLVIZ_MEMORY_MB``).
        phase: the phase's name, for the message. Defaults to `None`.

    Returns:
        ``{"budget_bytes", "train_bytes_per_image", "largest_batch", "batch_size"}``.

    Raises:
        RunRefused: the estimate for `batch_size` exceeds the budget; the
            message names the estimate, the budget, the largest batch size
            that fits and ``TLVIZ_MEMORY_MB``.
    """
    budget = memory_budget() if budget is None else int(budget)
    per = fit_bytes(model)
    largest = budget // per
    info = {"budget_bytes": budget, "train_bytes_per_image": per, "largest_batch": int(largest),
            "batch_size": int(batch_size)}
    if per * batch_size <= budget:
        return info
    where = f" of phase '{phase}'" if phase else ""
    msg = (f"One training step{where} at batch size {batch_size} needs about {_mb(per * batch_size)} "
           f"({_mb(per)} per image: outputs and gradients of the trainable layers, a forward pass through the "
           f"frozen ones), over the {_mb(budget)} memory budget ({ENV_MEMORY_MB}). ")
    if largest >= 1:
        msg += (f"The largest batch size that fits is {largest}: choose a batch size of {largest} or less, unfreeze "
                f"fewer layers, or raise {ENV_MEMORY_MB} if this machine has more memory to give.")
    else:
        msg += (f"Not even one image fits (the largest batch size that fits is 0): unfreeze fewer layers, or raise "
                f"{ENV_MEMORY_MB} to at least {math.ceil(per / 2**20)}.")
    raise RunRefused(msg)


def check_preset(images, preset) -> None:
    """Refuse a preset that cannot apply to these images, before any work.

    Args:
        images: a `tlviz.imagesets.ImageSet`.
        preset: the run's preset (a name or a `tlviz.presets.CustomPreset`).

    Raises:
        RunRefused: the preset's own message (`tlviz.presets.apply_preset`).
    """
    try:
        apply_preset(images.images[:1], preset)
    except ValueError as exc:
        raise RunRefused(str(exc)) from None


def memory_budget() -> int:
    """``TLVIZ_MEMORY_MB`` in bytes; a malformed value refuses the run (the message says how to set it).

    Raises:
        RunRefused: the setting does not parse.
    """
    try:
        return memory_budget_bytes()
    except ValueError as exc:
        raise RunRefused(str(exc)) from None


def _mb(nbytes: float) -> str:
    mb = nbytes / 2**20
    return f"{mb:,.1f} MB" if mb < 10 else f"{mb:,.0f} MB"
