"""The memory budget, and batch sizes planned from it and from the model's own activation sizes.

Everything that runs the model over many images (the normalization comparison,
every diagnose check, the fingerprint, probes, the learning-rate finder,
fine-tuning) asks `plan_batch` how many images to put through at once. The
answer comes from one setting and the model's layer output shapes, never from
a fixed constant, so a 32x32 sample runs in large batches and a ResNet50 at
224x224 in small ones.

Setting: ``TLVIZ_MEMORY_MB`` — the memory one heavy job may use for the model's
working tensors, on top of the model's weights and the decoded ``uint8``
images. Defaults to an eighth of the machine's memory (or of the container's
limit), between 256 MB and 1,536 MB. Memory then does not grow with the number
of images beyond the decoded images themselves.

What one image costs (`activation_bytes`), by `mode`:

- ``"inference"`` — the model runs as a compiled graph (`forward`,
  ``predict_on_batch``): TensorFlow frees each intermediate tensor once its
  consumers have run, so only a few of the largest layer outputs are alive at
  once: `LIVE_FACTOR` times the largest layer output (at most the sum of all
  outputs), plus the float input.
- ``"training_forward"`` — the same, called with ``training=True`` but without
  gradients (batch statistics, dropout): like inference, plus the per-channel
  batch moments (small); the same estimate.
- ``"eager"`` — an eager call of a functional model keeps every layer's output
  until the call returns: the sum of all layer outputs.
- ``"train"`` — ``fit``: the backward pass needs every layer's output and a
  gradient of the same size: `TRAIN_FACTOR` times the sum of all layer
  outputs, plus the input.

Public API: `memory_budget_bytes()` (its default: `tlviz.machine.default_memory_mb`), `activation_bytes(model, mode)`,
`plan_batch(model, mode, n=None, budget=None, max_batch=MAX_BATCH) -> BatchPlan`,
`fit_bytes(model)` (one training step), `forward(model, training=False)` (a compiled forward pass,
built once per model),
`predict_batches(model, images, prepare, plan, progress=None)`, `ENV_MEMORY_MB`, `MODES`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np

from tlviz.outputs import first_output

ENV_MEMORY_MB = "TLVIZ_MEMORY_MB"
MODES = ("inference", "training_forward", "eager", "train")
#: Largest layer outputs alive at once in a compiled forward pass (input, output, a skip branch, workspace).
LIVE_FACTOR = 5
#: Training keeps every layer output and a gradient of the same size.
TRAIN_FACTOR = 2
#: Never more images per batch than this (larger batches stop paying off on a CPU).
MAX_BATCH = 256


def memory_budget_bytes() -> int:
    """The working-memory budget of one heavy job in bytes (``TLVIZ_MEMORY_MB``, read by `tlviz.config`).

    Raises:
        ConfigError: (a ValueError) the variable is set but is not a positive number (the
            message says how to set it).
    """
    from tlviz import config

    return config.megabytes(ENV_MEMORY_MB)


def _nbytes(shape, dtype) -> int:
    dims = [int(d) for d in shape[1:] if d is not None]
    if len(dims) != len(shape) - 1:
        return 0
    try:
        size = np.dtype(str(dtype)).itemsize
    except TypeError:
        size = 4
    return int(np.prod(dims, dtype=np.int64)) * size if dims else size


def _layer_output_bytes(model) -> list[int]:
    """Bytes per image of every leaf layer's output (nested models included)."""
    from tlviz.layers import iter_leaves

    sizes = []
    for leaf in iter_leaves(model):
        layer = leaf.layer
        try:
            outs = layer.output
        except Exception:  # a shared layer has several outputs: count each call
            outs = [node.outputs for node in getattr(layer, "_inbound_nodes", [])]
        sizes += [_nbytes(tuple(t.shape), getattr(t, "dtype", "float32")) for t in _tensors(outs)]
    return sizes


def _tensors(outs) -> list:
    """The tensors in a (nested) list / tuple / dict of layer outputs."""
    flat, stack = [], [outs]
    while stack:
        o = stack.pop()
        if isinstance(o, (list, tuple)):
            stack.extend(o)
        elif isinstance(o, dict):
            stack.extend(o.values())
        elif hasattr(o, "shape"):
            flat.append(o)
    return flat


def _input_bytes(model) -> int:
    try:
        shape = tuple(model.inputs[0].shape)
    except Exception:
        return 0
    return _nbytes(shape, "float32")


def activation_bytes(model, mode: str = "inference") -> int:
    """Estimated bytes one image costs while `model` runs in `mode` (see the module docstring).

    Args:
        model: a Keras model (functional or sequential; nested models are followed).
        mode: one of `MODES`. Defaults to `"inference"`.

    Returns:
        Bytes per image (at least 1).
    """
    if mode not in MODES:
        raise ValueError(f"Unknown mode {mode!r}. Use one of: {', '.join(MODES)}.")
    cached = getattr(model, "_tlviz_layer_bytes", None)
    if cached is None:
        cached = _layer_output_bytes(model)
        try:
            model._tlviz_layer_bytes = cached
        except Exception:
            pass
    inp = _input_bytes(model)
    largest = max(cached, default=inp)
    total = sum(cached)
    if mode in ("inference", "training_forward"):
        est = min(LIVE_FACTOR * largest, total) + inp  # never more than keeping every output
    elif mode == "eager":
        est = total + inp
    else:
        est = TRAIN_FACTOR * total + inp
    return max(int(est), 1)


@dataclass(frozen=True)
class BatchPlan:
    """How many images go through the model at once, and why.

    Attributes:
        batch_size: images per batch (at least 1).
        bytes_per_image: the estimate it rests on.
        budget: the budget in bytes.
        mode: the `MODES` entry planned for.
        over_budget: True when even one image exceeds the budget (it then
            runs one at a time).
    """

    batch_size: int
    bytes_per_image: int
    budget: int
    mode: str
    over_budget: bool = False

    @property
    def estimated_bytes(self) -> int:
        return self.batch_size * self.bytes_per_image

    def describe(self) -> str:
        return (f"{self.batch_size} images per batch ({self.bytes_per_image / 2**20:,.1f} MB each in {self.mode} "
                f"mode, {self.budget / 2**20:,.0f} MB budget, {ENV_MEMORY_MB})")


def plan_batch(model, mode: str = "inference", n: int | None = None, budget: int | None = None,
               max_batch: int = MAX_BATCH) -> BatchPlan:
    """The batch size that keeps one pass of `model` within the memory budget.

    Args:
        model: a Keras model (or a `LoadedModel`).
        mode: one of `MODES`. Defaults to `"inference"`.
        n: the number of images to process; the batch is never larger.
            Defaults to no limit.
        budget: bytes. Defaults to `memory_budget_bytes()`.
        max_batch: upper bound. Defaults to `MAX_BATCH`.

    Returns:
        A `BatchPlan`.
    """
    model = getattr(model, "model", model)
    budget = memory_budget_bytes() if budget is None else int(budget)
    per = activation_bytes(model, mode)
    fits = budget // per
    size = int(max(1, min(fits, max_batch, n if n else max_batch)))
    return BatchPlan(size, per, budget, mode, over_budget=fits < 1)


def forward(model, training: bool = False) -> Callable:
    """A compiled forward pass of `model` (built once per model and `training` value).

    Runs as a graph, so intermediate tensors are freed as soon as they are used
    (an eager call of a functional model keeps all of them to the end). With
    ``training=True`` BatchNormalization uses (and updates) batch statistics and
    Dropout is active: use it on a private copy only.

    Returns:
        ``f(x) -> numpy array`` (the first output when the model has several).
    """
    import tensorflow as tf

    attr = "_tlviz_forward_train" if training else "_tlviz_forward"
    fn = getattr(model, attr, None)
    if fn is None:
        @tf.function(reduce_retracing=True, autograph=False)
        def fn(x):
            return model(x, training=training)

        try:
            setattr(model, attr, fn)
        except Exception:
            pass

    def run(x):
        return first_output(fn(tf.convert_to_tensor(x)))

    return run


def batch_starts(n: int, batch_size: int) -> range:
    return range(0, int(n), max(1, int(batch_size)))


def predict_batches(model, images, prepare: Callable | None, plan: BatchPlan,
                    progress: Callable | None = None) -> np.ndarray:
    """Run `model` (inference mode, compiled: `forward`) over `images` in batches of ``plan.batch_size``.

    Only one batch is ever prepared (e.g. normalized to floats) at a time, and
    the outputs go into one array allocated after the first batch: no float
    copy of the whole set, no list of chunks to concatenate.

    Args:
        model: a Keras model.
        images: anything with ``len()`` and slicing by ``[start:stop]``
            returning a numpy array (a ``uint8`` image array, cached
            activations, a view through an index).
        prepare: turns one slice into the model's input (e.g. applies a
            preset); `None` feeds the slice as it is.
        plan: the `BatchPlan` (from `plan_batch`) giving the batch size.
        progress: called as ``progress(done, total)`` after every batch.
            Defaults to `None`.

    Returns:
        The model's (first) output for every image, in order, with the
        output's own dtype; an empty ``float32`` array when `images` is empty.
    """
    n = len(images)
    run = forward(model, training=False)
    out = None
    for start in batch_starts(n, plan.batch_size):
        chunk = images[start:start + plan.batch_size]
        y = run(chunk if prepare is None else prepare(chunk))
        if out is None:
            out = np.empty((n, *y.shape[1:]), dtype=y.dtype)
        out[start:start + len(y)] = y
        if progress is not None:
            progress(min(start + plan.batch_size, n), n)
    return out if out is not None else np.zeros((0,), np.float32)


def _first_call_bytes(layer) -> int:
    """Bytes per image of `layer`'s output in its first call (a layer shared by a clone or a split model
    has one call per graph, all of the same shape)."""
    nodes = getattr(layer, "_inbound_nodes", None) or []
    if not nodes:
        return 0
    return sum(_nbytes(tuple(t.shape), getattr(t, "dtype", "float32")) for t in _tensors(nodes[0].outputs))


def fit_bytes(model) -> int:
    """Estimated bytes one image costs in a training step (``fit``, ``train_on_batch``) of `model`.

    Layers below the first trainable one (in the order of ``model.layers``,
    nested models followed) take no gradient, so their outputs are freed as
    in a compiled forward pass: ``"inference"`` mode over that part. From the
    first trainable layer up, every output is kept for the backward pass with
    a gradient of the same size: ``"train"`` mode over that part. Pass the
    model that actually trains (with cached activations below a cut, the part
    above the cut), with its trainable flags set.

    Args:
        model: a Keras model (or a `LoadedModel`).

    Returns:
        Bytes per image (at least 1).
    """
    from tlviz.layers import iter_leaves

    model = getattr(model, "model", model)
    trainable = {id(v) for v in model.trainable_weights}
    sizes: list[int] = []
    first = None
    for leaf in iter_leaves(model):
        if first is None and any(id(v) in trainable for v in leaf.layer.weights):
            first = len(sizes)
        sizes.append(_first_call_bytes(leaf.layer))
    first = len(sizes) if first is None else first
    frozen, trained = sizes[:first], sizes[first:]
    inference = min(LIVE_FACTOR * max(frozen, default=0), sum(frozen))  # as `activation_bytes` counts it
    est = _input_bytes(model) + inference + TRAIN_FACTOR * sum(trained)
    return max(int(est), 1)
