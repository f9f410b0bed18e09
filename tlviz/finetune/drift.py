"""Representation drift: how far a run moved the base's features, block by block (linear CKA).

Every run measures, for each block of the base (the named blocks the unfreeze-depth control
snaps to: `tlviz.unfreeze.block_of`), the linear CKA (`tlviz.cka`) between the block's output
on a fixed sample of the user's images before the run and after it. 1.0 means the block
still represents these images the same way (up to rotation and scale); a low value means the
run rebuilt it, which, without a gain in accuracy, is catastrophic forgetting.

**Which blocks get exactly 1.0.** A block *did not train* when neither its own weights nor any
weights below it changed during the run (the weight-change report says exactly zero): its
output is then the same function of the same pixels, so its CKA is exactly 1.0, written
without running the model. A frozen block *above* a trained one is different: its weights are
unchanged but its input moved, so its CKA is measured like a trained block's and labelled
``input changed``. Blocks are listed input to output with their status:

- ``unchanged`` — nothing at or below it changed: exactly 1.0;
- ``trained`` — it holds layers that trained in some phase: measured;
- ``input changed`` — frozen, but a block below it trained: measured.

**The sample and the features.** At most `DRIFT_IMAGES` images, seeded and class-balanced
(the same for every run on the same image set, whatever the run's seed), under the run's
preset, in inference mode. A block's output map is averaged over its positions (one mean per
channel, what a ``GlobalAveragePooling2D`` head sees), for three reasons: memory stays small at
any input size; it is what a transfer-learning head reads; and on flattened maps the layout of
the image dominates linear CKA, so that even fresh random weights score 0.8 or more against the
digits sample's pre-trained blocks, while on channel means they score 0.1–0.2 at its top block
(measured: `tests/test_finetune_drift.py`). The features before the run are cached with the
activation cache (`tlviz.finetune.cache.ActivationCache`), so the runs of a sweep compute them
once per block.

**Blocks.** The weight-holding layers of the base (``role == "base"`` in `tlviz.layers.layer_table`)
grouped by `block_of`; the block's output is its last layer with that block name. Layers outside
any named block form blocks of consecutive unnamed layers. A model without named blocks has one
block per weight-holding layer (as the depth control then offers every depth), each ending at the
last layer before the next one.

Public API: `base_blocks(model, table=None)`, `block_features(model, blocks, images, preset)`,
`DriftProbe`, `DRIFT_IMAGES`, `STATUSES`.
"""

from __future__ import annotations

import hashlib
import time
from dataclasses import dataclass

import numpy as np

#: Images (seeded, class-balanced) whose features are compared before and after a run.
DRIFT_IMAGES = 128
#: The status of a block in a run's drift report (see the module docstring).
STATUSES = ("unchanged", "trained", "input changed")
#: The sample's seed: fixed, so that every run on an image set is measured on the same images.
SAMPLE_SEED = 0
_VERSION = "cka-channel-means-1"


@dataclass
class Block:
    """One block of the base.

    Attributes:
        name: the block's name (``block_3``; the first layer's name for an unnamed block).
        paths: its weight-holding layers' paths, input to output.
        output: the path of the layer whose output is the block's features.
        index: position of its first layer among the model's leaves (input to output).
    """

    name: str
    paths: list[str]
    output: str
    index: int


def base_blocks(model, table=None) -> list[Block]:
    """The base's blocks, input to output (see the module docstring for the grouping).

    Args:
        model: a Keras model.
        table: its `tlviz.layers.layer_table`. Defaults to computing it.

    Returns:
        The blocks (empty when the base holds no weights).
    """
    from tlviz.layers import layer_table
    from tlviz.unfreeze import block_boundaries, block_of

    table = layer_table(model) if table is None else table
    named = bool(block_boundaries(table))
    blocks: list[dict] = []
    current: dict | None = None
    for i, row in enumerate(table.itertuples()):
        if row.role != "base":
            continue
        b = block_of(row.path)
        if named and b is not None:
            if current is None or current["key"] != b:
                current = {"key": b, "name": b, "paths": [], "output": row.path, "index": i}
                blocks.append(current)
            current["output"] = row.path
            if row.holds_weights:
                current["paths"].append(row.path)
            continue
        # An unnamed layer (or any layer of a model without named blocks).
        if row.holds_weights:
            joins = named and current is not None and current["key"] is None
            if not joins:
                current = {"key": None, "name": row.path.rsplit("/", 1)[-1], "paths": [], "output": row.path,
                           "index": i}
                blocks.append(current)
            current["paths"].append(row.path)
            current["output"] = row.path
        elif current is not None and current["key"] is None:
            current["output"] = row.path  # a trailing activation or pooling of an unnamed block
    return [Block(b["name"], b["paths"], b["output"], b["index"]) for b in blocks if b["paths"]]


def _extractor(model, blocks: list[Block], layers: dict | None = None):
    """A model from `model`'s input to the outputs of `blocks` (layers shared with `model`).

    Args:
        model: the graph to take the outputs from: the run model, or the part of it above a cut
            (`tlviz.finetune.cache.Cut.upper`, whose input is the cut's activations).
        blocks: the blocks.
        layers: the layer of each path (`iter_leaves` of the run model). Defaults to `model`'s own.

    Returns:
        ``(extractor, kept)``: the blocks whose output could be found once in the graph.
    """
    import keras

    from tlviz.finetune.cache import flatten
    from tlviz.layers import iter_leaves

    flat = flatten(model)
    nodes: dict[int, list] = {}
    for depth in flat._nodes_by_depth:
        for node in flat._nodes_by_depth[depth]:
            if node.operation is not None and not node.is_input:
                nodes.setdefault(id(node.operation), []).append(node)
    layers = layers if layers is not None else {leaf.path: leaf.layer for leaf in iter_leaves(model)}
    kept, outs = [], []
    for b in blocks:
        found = nodes.get(id(layers.get(b.output)), [])
        if len(found) != 1 or len(found[0].outputs) != 1:
            continue  # a shared layer (called twice) has no single output to compare
        kept.append(b)
        outs.append(found[0].outputs[0])
    if not outs:
        return None, []
    return keras.Model(flat.inputs[0] if len(flat.inputs) == 1 else flat.inputs, outs, name="tlviz_drift"), kept


def _pool(t):
    """A block's output as ``(n, features)``: the mean of every channel over the positions of a map."""
    import tensorflow as tf

    t = tf.cast(t, tf.float32)
    if len(t.shape) > 2:
        t = tf.reduce_mean(t, axis=list(range(1, len(t.shape) - 1)))
    return t


def _runner(extractor):
    """A compiled pass of `extractor` returning every block's channel means (built once per extractor)."""
    import tensorflow as tf

    @tf.function(reduce_retracing=True, autograph=False)
    def run(x):
        outs = extractor(x, training=False)
        outs = outs if isinstance(outs, (list, tuple)) else [outs]
        return [_pool(o) for o in outs]

    return run


def _features(extractor, images: np.ndarray, preset: str | None, budget: int | None, run=None) -> list[np.ndarray]:
    """Every block's channel means of `images` (inference mode, compiled, in planned batches).

    `preset` None: `images` are already the extractor's input (activations at a cut).
    """
    import tensorflow as tf

    from tlviz.memory import plan_batch
    from tlviz.presets import apply_preset

    run = run or _runner(extractor)
    batch = plan_batch(extractor, "inference", n=len(images), budget=budget).batch_size
    parts: list[list[np.ndarray]] = []
    for start in range(0, len(images), batch):
        chunk = images[start:start + batch]
        x = tf.convert_to_tensor(chunk if preset is None else apply_preset(chunk, preset))
        parts.append([o.numpy() for o in run(x)])
    return [np.concatenate([p[k] for p in parts]) for k in range(len(parts[0]))] if parts else []


def block_features(model, blocks: list[Block], images: np.ndarray, preset: str,
                   budget: int | None = None) -> dict[str, np.ndarray]:
    """The channel means of each block's output for `images`, as a drift measurement takes them.

    Args:
        model: the Keras model.
        blocks: blocks of its base (`base_blocks`).
        images: ``uint8`` images at the model's input size.
        preset: the input normalization.
        budget: memory budget in bytes. Defaults to ``TLVIZ_MEMORY_MB``.

    Returns:
        ``{block name: (n, channels) float32}`` for the blocks whose output could be found.
    """
    extractor, kept = _extractor(model, blocks)
    if extractor is None:
        return {}
    return dict(zip([b.name for b in kept], _features(extractor, images, preset, budget)))


class DriftProbe:
    """Measures a run's representation drift: features before training (`__init__`, or `before_from_cut` when
    the run's last phase trains above a cut), CKA after (`measure`).

    Args:
        model: the run's model (its layers are the ones that train; read only).
        images: the run's ``uint8`` images.
        labels: their labels (the sample is class-balanced).
        preset: the run's preset.
        may_train: paths of the layers that train in some phase of the run.
        cache: the run's `ActivationCache` (the features before the run are kept there).
        model_key: a key of the weights the run starts from (the file's hash; a random start has its own).
        image_key: `tlviz.contentkeys.pixels_key` of the images.
        budget: memory budget in bytes for the batch plan. Defaults to ``TLVIZ_MEMORY_MB``.
        defer: leave the features before the run to `before_from_cut` (the run calls it once the activations at
            its last phase's cut exist, before any layer of the base trains). Defaults to `False`.
    """

    def __init__(self, model, images: np.ndarray, labels: np.ndarray, preset: str, may_train: set[str], cache,
                 model_key: str, image_key: str, budget: int | None = None, defer: bool = False):
        from tlviz.diagnose.base import balanced_sample
        from tlviz.layers import iter_leaves

        t0 = time.monotonic()
        self.model, self.preset, self.budget = model, preset, budget
        self.layers = {leaf.path: leaf.layer for leaf in iter_leaves(model)}
        self.blocks = base_blocks(model)
        self.trained = {b.name for b in self.blocks if set(b.paths) & set(may_train)}
        first = next((i for i, b in enumerate(self.blocks) if b.name in self.trained), len(self.blocks))
        self.watched = self.blocks[first:]  # may change; those below keep exactly the same function
        self.sample = balanced_sample(np.asarray(labels), DRIFT_IMAGES, seed=SAMPLE_SEED)
        self.images = images[self.sample]
        self.before: dict[str, np.ndarray] = {}
        self.extractor, kept = (None, [])
        if self.watched:
            self.extractor, kept = _extractor(model, self.watched, self.layers)
        self.kept = {b.name for b in kept}
        self._run = _runner(self.extractor) if self.extractor is not None else None
        sample_key = hashlib.sha1(np.ascontiguousarray(self.sample).tobytes()).hexdigest()[:12]
        self._keys = {b.name: cache.key(model_key, image_key, preset, f"{_VERSION}:{sample_key}:{b.output}")
                      for b in kept}
        self._cache = cache
        cached = {name: cache.get(key, count=False) for name, key in self._keys.items()}
        self.before = {name: f for name, f in cached.items() if f is not None}
        if not defer:
            self.compute_before()
        self.seconds = time.monotonic() - t0

    @property
    def missing(self) -> list[Block]:
        """Watched blocks whose features before the run are not known yet."""
        return [b for b in self.watched if b.name in self.kept and b.name not in self.before]

    def _keep(self, blocks: list[Block], feats: list[np.ndarray]) -> None:
        for b, f in zip(blocks, feats):
            self._cache.put(self._keys[b.name], f)
            self.before[b.name] = f

    def compute_before(self) -> None:
        """The features before the run from the pixels (a pass through the base up to the highest block)."""
        if not self.missing:
            return
        feats = dict(zip([b.name for b in self.watched if b.name in self.kept],
                         _features(self.extractor, self.images, self.preset, self.budget, self._run)))
        missing = self.missing
        self._keep(missing, [feats[b.name] for b in missing])

    def before_from_cut(self, cut, activations: np.ndarray) -> None:
        """The features before the run from the activations at the run's cut (only the part above it runs).

        Call it before any layer of the base trains; it falls back on the pixels when a block's output is not
        above the cut.
        """
        t0 = time.monotonic()
        missing = self.missing
        if missing and activations is not None and len(activations) > int(np.max(self.sample)):
            upper, kept = _extractor(cut.upper, missing, self.layers)
            if upper is not None and len(kept) == len(missing):
                self._keep(kept, _features(upper, np.asarray(activations[self.sample]), None, self.budget))
        self.compute_before()
        self.seconds += time.monotonic() - t0

    def measure(self, weight_change, cut=None, activations: np.ndarray | None = None) -> list[dict]:
        """The drift report after the run.

        Args:
            weight_change: the run's weight-change report (`tlviz.finetune.summary.weight_change`).
            cut: the `tlviz.finetune.cache.Cut` the run's last phase trained above, when it used cached
                activations: the features after the run are then computed from the activations at the cut
                (nothing below it changed), not from the pixels. Defaults to `None`.
            activations: the cached activations at `cut` of every image of the run. Defaults to `None`.

        Returns:
            One dict per block, input to output: ``block``, ``cka`` (None when it could not be
            measured: non-finite weights after a diverged run, features without variance, a block
            whose output is shared), ``trained``, ``status`` (`STATUSES`) and ``layers`` (its
            weight-holding layers).
        """
        t0 = time.monotonic()
        moved = {p for p, d in zip(weight_change["path"], weight_change["l2_change"]) if d != 0}
        changed_below = False
        rows, to_measure = [], []
        for b in self.blocks:
            changed_below = changed_below or bool(set(b.paths) & moved)
            status = "unchanged" if not changed_below else ("trained" if b.name in self.trained else "input changed")
            row = {"block": b.name, "cka": 1.0 if status == "unchanged" else None, "trained": b.name in self.trained,
                   "status": status, "layers": len(b.paths)}
            rows.append(row)
            if status != "unchanged" and b.name in self.before:
                to_measure.append((row, b))
        if to_measure:
            from tlviz.cka import linear_cka

            feats = self._after(cut, activations, [b for _, b in to_measure])
            for row, b in to_measure:
                before, after = self.before[b.name], feats[b.name]
                if before.shape == after.shape and np.array_equal(before, after):
                    row["cka"] = 1.0
                else:
                    v = linear_cka(before, after)
                    row["cka"] = float(v) if np.isfinite(v) else None
        self.seconds += time.monotonic() - t0
        return rows

    def _after(self, cut, activations, blocks: list[Block]) -> dict[str, np.ndarray]:
        """The features after the run: from the activations at the cut when every block's output lies above it,
        else from the pixels."""
        if cut is not None and activations is not None and len(activations) > int(np.max(self.sample)):
            upper, kept = _extractor(cut.upper, blocks, self.layers)
            if upper is not None and len(kept) == len(blocks):
                x = np.asarray(activations[self.sample])
                return dict(zip([b.name for b in kept], _features(upper, x, None, self.budget)))
        return dict(zip([b.name for b in self.blocks if b.name in self.kept],
                        _features(self.extractor, self.images, self.preset, self.budget, self._run)))

    @property
    def n_images(self) -> int:
        return int(len(self.sample))
