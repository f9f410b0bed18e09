"""Train only what trains: cached base activations below the cut.

When every layer below some point of the network is frozen and behaves the
same in training and inference (frozen BatchNormalization runs on its moving
statistics; no dropout or noise), its output for the same images and preset
never changes during a run. The run then computes that output once — the
*activations at the cut* — and trains only the layers above the cut on them.
The results match training the whole model up to float rounding.

Activations are cached per (model, image set, preset, cut) so that a sweep of
learning rates at one depth computes them once: in memory within a worker
process, and on disk (``<runs dir>/.cache/activations``) across processes.

Memory budget: ``TLVIZ_ACTIVATION_CACHE_MB`` (`DEFAULT_CACHE_MB`, from `tlviz.config`). When the
activations of all images at the cut would take more than that, the run
trains the whole model instead (slower, same results) and says so. The disk
cache holds at most the same amount; the oldest files are removed first.
"""

from __future__ import annotations

import hashlib
import os
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from tlviz import config
from tlviz.kerasinternals import run_through_graph
from tlviz.layers import BN_CLASSES, random_in_training

ENV_CACHE_MB = "TLVIZ_ACTIVATION_CACHE_MB"
DEFAULT_CACHE_MB = int(config.default(ENV_CACHE_MB))


def cache_budget_bytes() -> int:
    """The activation-cache budget.

    Returns:
        ``TLVIZ_ACTIVATION_CACHE_MB`` in bytes (default `DEFAULT_CACHE_MB`).

    Raises:
        ConfigError: the variable is set but is not a positive number (the message says how to set it).
    """
    return config.megabytes(ENV_CACHE_MB)


# -- graph surgery -------------------------------------------------------------

def flatten(model):
    """A flat functional model that calls the same leaf layers as `model`.

    Nested models (a base inside a classifier) are expanded so that a cut can
    fall inside them. The layers are shared, not copied: training the flat
    model trains `model`.

    Args:
        model: a Keras functional or sequential model.

    Returns:
        A functional model without nested models (`model` itself when it has
        none).
    """
    import keras

    if not isinstance(model, keras.Sequential) and not any(isinstance(layer, keras.Model) for layer in model.layers):
        return model
    inputs = [keras.Input(shape=tuple(t.shape[1:]), dtype=t.dtype) for t in model.inputs]
    out = _replay(model, inputs, None)
    return keras.Model(inputs if len(inputs) > 1 else inputs[0], out, name=f"{model.name}_flat")


def _replay(model, inputs, training):
    import keras

    inputs = list(inputs) if isinstance(inputs, (list, tuple)) else [inputs]
    if isinstance(model, keras.Sequential):
        x = inputs[0]
        for layer in model.layers:
            x = _call(layer, (x,), {}, training)
        return x

    def operation_fn(op):
        return lambda *args, **kwargs: _call(op, args, kwargs, training)

    out = run_through_graph(model, inputs, operation_fn)
    if isinstance(out, (list, tuple)) and len(out) == 1:
        return out[0]
    return out


def _call(layer, args, kwargs, training):
    import keras

    kwargs = dict(kwargs)
    if isinstance(layer, keras.Model):
        t = kwargs.pop("training", None)
        inner = training if t is None else (False if training is False else t)
        return _replay(layer, args[0], inner)
    if training is False and getattr(layer, "_call_has_training_arg", False):
        kwargs["training"] = False
    return layer(*args, **kwargs)


@dataclass
class Cut:
    """Where a model splits into a cached lower part and a trained upper part.

    Attributes:
        lower: model from the input to the cut (frozen, deterministic).
        upper: model from the cut to the output (shares layers with the run model).
        name: the layer whose output is the cut (stable across clones).
        shape: the cut tensor's shape without the batch axis.
        lower_layers: number of layers below the cut (not run during training).
    """

    lower: object
    upper: object
    name: str
    shape: tuple
    lower_layers: int

    def bytes_for(self, n_images: int) -> int:
        """Memory the activations of `n_images` take (float32)."""
        return int(n_images * np.prod(self.shape) * 4)


def _frozen_and_deterministic(layer) -> bool:
    if random_in_training(layer):
        return False
    if layer.trainable and layer.trainable_weights:
        return False
    if getattr(layer, "_call_has_training_arg", False):
        # Frozen BatchNormalization uses its moving statistics; anything else with a
        # training argument might behave differently in training.
        return type(layer).__name__ in BN_CLASSES and not layer.trainable
    return True


def find_cut(model) -> tuple[Cut | None, str]:
    """The highest point below which everything is frozen and deterministic.

    Args:
        model: the run model, trainable flags already set (compile not needed).

    Returns:
        ``(cut, message)``; `cut` is None (with the reason in `message`) when
        no layer below the first trainable one can be cached.
    """
    import keras

    try:
        flat = flatten(model)
        nodes = []
        for depth in sorted(flat._nodes_by_depth, reverse=True):
            for node in flat._nodes_by_depth[depth]:
                if node.operation is None or node.is_input:
                    continue
                nodes.append(node)
    except Exception as exc:  # unusual graph: private Keras structures differ
        return None, f"the model's graph could not be split ({type(exc).__name__}); training the whole model"
    if not nodes:
        return None, "the model has no layers to split"
    last_use: dict[int, int] = {}
    for i, node in enumerate(nodes):
        for t in node.input_tensors:
            last_use[id(t)] = max(last_use.get(id(t), -1), i)
    for t in flat.outputs:
        last_use[id(t)] = len(nodes)
    first_live = next((i for i, n in enumerate(nodes) if not _frozen_and_deterministic(n.operation)), len(nodes))
    if first_live == 0:
        return None, f"the first layer ('{nodes[0].operation.name}') trains, so there is nothing to cache"
    # Sweep: tensors alive after node i; a cut is a point where exactly one is.
    live: dict[int, object] = {}
    for t in flat.inputs:
        live[id(t)] = t
    best = None
    for i, node in enumerate(nodes[:first_live]):
        for t in node.input_tensors:
            if last_use.get(id(t), -1) <= i:
                live.pop(id(t), None)
        outs = node.outputs
        for t in outs:
            if last_use.get(id(t), -1) > i:
                live[id(t)] = t
        if len(live) == 1 and len(outs) == 1 and id(outs[0]) in live:
            best = (i, outs[0], node.operation.name)
    if best is None:
        return None, "no single point below the trainable layers separates the frozen part (skip connections)"
    i, tensor, name = best
    try:
        lower = keras.Model(flat.inputs[0] if len(flat.inputs) == 1 else flat.inputs, tensor, name="tlviz_lower")
        upper = keras.Model(tensor, flat.outputs[0] if len(flat.outputs) == 1 else flat.outputs, name="tlviz_upper")
    except Exception as exc:
        return None, f"the model could not be split at '{name}' ({type(exc).__name__}); training the whole model"
    if _count(upper.trainable_weights) != _count(model.trainable_weights):
        return None, "the split would lose trainable weights; training the whole model"
    return Cut(lower, upper, name, tuple(int(d) for d in tensor.shape[1:]), i + 1), \
        f"layers up to '{name}' ({i + 1} of {len(nodes)}) are frozen: their activations are computed once"


def _count(weights) -> int:
    return sum(int(np.prod(w.shape)) for w in {id(w): w for w in weights}.values())


# -- the cache -----------------------------------------------------------------

class ActivationCache:
    """Activations at a cut, keyed by (model, image set, preset, cut).

    Args:
        budget_bytes: memory budget. Defaults to `cache_budget_bytes()`.
        disk_dir: folder for a cache that outlives the process; `None` keeps
            it in memory only. Defaults to `None`.
    """

    def __init__(self, budget_bytes: int | None = None, disk_dir: str | os.PathLike | None = None):
        self.budget = cache_budget_bytes() if budget_bytes is None else int(budget_bytes)
        self.disk_dir = Path(disk_dir) if disk_dir else None
        self._mem: OrderedDict[str, np.ndarray] = OrderedDict()
        self.hits = 0
        self.misses = 0

    @staticmethod
    def key(model_key: str, image_key: str, preset: str, cut_name: str) -> str:
        return hashlib.sha1(f"{model_key}|{image_key}|{preset}|{cut_name}".encode()).hexdigest()[:24]

    def fits(self, nbytes: int) -> bool:
        return nbytes <= self.budget

    def get(self, key: str, count: bool = True) -> np.ndarray | None:
        """The cached array, or None.

        Args:
            key: the key (`key`).
            count: count the look-up in `hits` / `misses` (the activations at a cut). Defaults to `True`;
                the smaller arrays kept alongside (duplicate groups, drift features, predictions before a
                run) pass False.
        """
        if key in self._mem:
            self._mem.move_to_end(key)
            self.hits += count
            return self._mem[key]
        if self.disk_dir is not None:
            path = self.disk_dir / f"{key}.npy"
            try:
                arr = np.load(path)
                os.utime(path)
            except (OSError, ValueError):
                arr = None
            if arr is not None:
                self._remember(key, arr)
                self.hits += count
                return arr
        self.misses += count
        return None

    def put(self, key: str, arr: np.ndarray) -> None:
        """Keep `arr` (in memory, and on disk when a folder was given), within the budget."""
        if arr.nbytes > self.budget:
            return
        self._remember(key, arr)
        if self.disk_dir is not None:
            try:
                self.disk_dir.mkdir(parents=True, exist_ok=True)
                tmp = self.disk_dir / f".{key}.{os.getpid()}.tmp.npy"
                np.save(tmp, arr)
                os.replace(tmp, self.disk_dir / f"{key}.npy")
                self._trim_disk()
            except OSError:
                pass

    def _remember(self, key, arr):
        self._mem[key] = arr
        self._mem.move_to_end(key)
        while sum(a.nbytes for a in self._mem.values()) > self.budget and len(self._mem) > 1:
            self._mem.popitem(last=False)

    def _trim_disk(self):
        files = sorted(self.disk_dir.glob("*.npy"), key=lambda p: p.stat().st_mtime, reverse=True)
        total = 0
        for p in files:
            total += p.stat().st_size
            if total > self.budget:
                try:
                    p.unlink()
                except OSError:
                    pass


def compute_activations(lower, x: np.ndarray, batch_size: int | None = None, preset=None, progress=None,
                        budget: int | None = None) -> np.ndarray:
    """Run the frozen lower part once over `x` (inference mode, compiled).

    Batches are sized from the memory budget and the lower part's own layer
    output sizes (`tlviz.memory.plan_batch`, mode ``"inference"``); only one
    batch is normalized at a time and the result is written into one
    preallocated array.

    Args:
        lower: the `Cut.lower` model.
        x: images: ``uint8`` when `preset` is given, else already normalized.
        batch_size: images per forward pass. Defaults to the planned size.
        preset: normalization applied batch by batch (no float copy of the
            whole set). Defaults to `None`.
        progress: optional ``progress(done, total)``.
        budget: memory budget in bytes for the plan. Defaults to
            ``TLVIZ_MEMORY_MB``.

    Returns:
        ``float32`` activations, one row per image.
    """
    from dataclasses import replace

    from tlviz.memory import plan_batch, predict_batches
    from tlviz.presets import apply_preset

    plan = plan_batch(lower, "inference", n=len(x), budget=budget)
    if batch_size is not None:
        plan = replace(plan, batch_size=max(1, int(batch_size)))
    prepare = None if preset is None else (lambda chunk: apply_preset(chunk, preset))
    out = predict_batches(lower, x, prepare, plan, progress)
    return out if out.dtype == np.float32 else out.astype(np.float32)
