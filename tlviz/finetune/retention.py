"""Original-task retention: how much of the base model's old task survives a fine-tuning run.

When the user also loads the image set of the task the model file was trained for (its
classes are the model's outputs, matched by the class names the model records, else by
position), every run scores that task twice on the same images:

- **before**: the loaded model as it is (its own head, its own base);
- **after**: the model file's original head on the base *as the run left it* — the
  run's trained base weights copied into a fresh copy of the loaded model, whose head
  keeps its original weights (whether the run replaced the head or fine-tuned it).

The difference (after − before) comes with its 95 % paired interval
(`tlviz.stats.paired_difference`), and ``retained`` is the share of the old accuracy that
survives (after / before). Both use the run's preset. At most `RETENTION_MAX_IMAGES`
images are scored (seeded, class-balanced); the predictions before the run are cached
with the run's activation cache, so the runs of a sweep score the loaded model once.

Public API: `original_labels(loaded, original)`, `RetentionProbe`, `RETENTION_MAX_IMAGES`.
"""

from __future__ import annotations

import hashlib

import numpy as np

from tlviz.errors import RunRefused

#: The original task is scored on at most this many images (seeded, class-balanced).
RETENTION_MAX_IMAGES = 1000


def original_labels(loaded, original) -> np.ndarray:
    """The original task's labels in the model's output order, or why the set cannot serve.

    Args:
        loaded: the `LoadedModel` (its head must still be the original task's).
        original: the original task's `ImageSet`, decoded at the model's input size.

    Returns:
        One label per image, as the model's output index.

    Raises:
        RunRefused: the set is empty, not at the model's input size, or its classes are not
            the model's outputs (the message says what to load instead).
    """
    from tlviz.normalize.inputs import label_match

    if original is None or len(original) == 0:
        raise RunRefused("The original task's image set holds no images. Load the images of the task the model "
                         "was trained for, one sub-folder per class.")
    if tuple(original.image_size) != tuple(loaded.image_size) or original.images.shape[-1] != loaded.channels:
        raise RunRefused(f"The original task's images are {original.image_size} × {original.images.shape[-1]} but the "
                         f"model takes {loaded.image_size} × {loaded.channels}. Decode them at the model's input size.")
    match = label_match(loaded, original)
    if match.labels is None:
        k = 2 if loaded.n_outputs == 1 else loaded.n_outputs
        raise RunRefused(
            f"The original task's image set does not match the model's outputs: {match.reason.split(', so ')[0]}. "
            f"Retention needs the images of the task the model file's head was trained for ({k} classes"
            + (f": {', '.join(map(str, loaded.class_names[:8]))}" if loaded.class_names else "")
            + "), with the model's original head still in the file.")
    return np.asarray(match.labels, dtype=np.int64)


def _predictions(model, images: np.ndarray, preset: str, budget: int | None) -> np.ndarray:
    from tlviz.memory import plan_batch, predict_batches
    from tlviz.outputs import predicted_classes
    from tlviz.presets import apply_preset

    plan = plan_batch(model, "inference", n=len(images), budget=budget)
    out = predict_batches(model, images, lambda a: apply_preset(a, preset), plan)
    return predicted_classes(out).astype(np.int64)


class RetentionProbe:
    """Scores the original task before a run (`__init__`) and on the run's trained base (`measure`).

    Args:
        loaded: the `LoadedModel` the run starts from (read only).
        original: the original task's `ImageSet`.
        preset: the run's preset.
        cache: the run's `ActivationCache` (keeps the predictions before the run). Defaults to none.
        budget: memory budget in bytes for the batch plan. Defaults to ``TLVIZ_MEMORY_MB``.
        cut: the `tlviz.finetune.cache.Cut` the run's last phase will train above: the original task's
            activations at it are computed once (and cached), and the scores before and after run only the
            part above it. Defaults to `None` (full passes).

    Raises:
        RunRefused: the set cannot serve (`original_labels`).
    """

    def __init__(self, loaded, original, preset: str, cache=None, budget: int | None = None, cut=None):
        from tlviz.diagnose.base import balanced_sample
        from tlviz.finetune.build import clone
        from tlviz.contentkeys import model_key, pixels_key
        from tlviz.layers import layer_table

        labels = original_labels(loaded, original)
        self.sample = balanced_sample(labels, RETENTION_MAX_IMAGES, seed=0)
        self.images, self.labels = original.images[self.sample], labels[self.sample]
        self.preset, self.budget = preset, budget
        self.source = str(original.source or "")
        self.classes = list(original.class_names)
        before = None
        key = None
        self.cache = cache
        tag = hashlib.sha1(np.ascontiguousarray(self.sample).tobytes()).hexdigest()[:12]
        self._key_parts = (model_key(loaded), pixels_key(original.images), preset, tag)
        if cache is not None:
            key = cache.key(*self._key_parts[:3], f"retention-v1:{tag}")
            before = cache.get(key, count=False)
        table = layer_table(loaded.model)
        self.head_paths = set(table.loc[table["role"] == "head", "path"])
        self._loaded = loaded
        self.old_model = None  # a copy whose head keeps the original weights, made when needed
        self._split: dict = {}
        if before is None:
            if cut is not None:  # the copy still holds the original weights: its part above the cut scores "before"
                self.old_model = clone(loaded.model)
                before = self._above_cut(cut)
            if before is None:
                before = _predictions(loaded.model, self.images, preset, budget)
            if cache is not None:
                cache.put(key, before)
        self.before = np.asarray(before, dtype=np.int64)

    def measure(self, run_model, weight_change=None, cut=None) -> dict:
        """The original task on the run's trained base under the original head.

        Args:
            run_model: the run's model after training.
            weight_change: the run's weight-change report; when no layer of the original base moved, the
                scores after are the scores before (no pass). Defaults to `None` (always score again).
            cut: the `tlviz.finetune.cache.Cut` of the run's last phase (nothing below it changed): the original
                task's activations at the cut are computed once (kept in the cache for the next run) and only the
                part above it runs. Defaults to `None` (a full pass).

        Returns:
            ``before`` / ``after`` (accuracies), ``difference``, ``low`` / ``high`` (its 95 %
            paired interval), ``retained`` (after / before; None when before is 0),
            ``n_images``, ``classes``, ``source`` and ``layers_copied``.

        Raises:
            RunRefused: the run's model lacks a layer of the loaded model's base.
        """
        from tlviz.finetune.build import clone
        from tlviz.layers import iter_leaves

        trained = {leaf.path: leaf.layer for leaf in iter_leaves(run_model)}
        base_paths = {leaf.path for leaf in iter_leaves(self._loaded.model)
                      if leaf.path not in self.head_paths and leaf.layer.weights}
        if weight_change is not None:
            moved = set(weight_change.loc[weight_change["l2_change"] != 0, "path"])
            if base_paths <= set(weight_change["path"]) and not moved & base_paths:
                return self._result(self.before, 0)  # the base as it was: the same predictions, exactly
        if self.old_model is None:
            self.old_model = clone(self._loaded.model)
        copied = 0
        for leaf in iter_leaves(self.old_model):
            if leaf.path in self.head_paths or not leaf.layer.weights:
                continue
            src = trained.get(leaf.path)
            if src is None:
                raise RunRefused(f"The run's model has no layer '{leaf.path}' of the original base, so the original "
                                 "task cannot be scored on it.")
            leaf.layer.set_weights(src.get_weights())
            copied += 1
        after = self._above_cut(cut) if cut is not None else None
        if after is None:
            after = _predictions(self.old_model, self.images, self.preset, self.budget)
        return self._result(after, copied)

    def _above_cut(self, cut) -> np.ndarray | None:
        """The predictions of the trained copy from the original images' activations at `cut` (None: no such
        single point in the copy's graph)."""
        import keras

        from tlviz.finetune.cache import compute_activations, flatten
        from tlviz.memory import plan_batch, predict_batches
        from tlviz.outputs import predicted_classes

        if cut.name not in self._split:
            try:
                flat = flatten(self.old_model)
                found = [n for depth in flat._nodes_by_depth for n in flat._nodes_by_depth[depth]
                         if n.operation is not None and not n.is_input and n.operation.name == cut.name]
                if len(found) != 1 or len(found[0].outputs) != 1 or len(flat.inputs) != 1:
                    self._split[cut.name] = None
                else:
                    tensor = found[0].outputs[0]
                    self._split[cut.name] = (keras.Model(flat.inputs[0], tensor), keras.Model(tensor, flat.outputs[0]))
            except Exception:  # noqa: BLE001 - an unusual graph: a full pass instead
                self._split[cut.name] = None
        if self._split[cut.name] is None:
            return None
        lower, upper = self._split[cut.name]
        acts, key = self._split.get(("acts", cut.name)), None
        if acts is None and self.cache is not None:
            model_key, image_key, preset, tag = self._key_parts
            key = self.cache.key(model_key, image_key, preset, f"retention-cut-v1:{tag}:{cut.name}")
            acts = self.cache.get(key, count=False)
        if acts is None:  # below the cut the copy holds the original weights: the same for every run
            acts = compute_activations(lower, self.images, preset=self.preset, budget=self.budget)
            if self.cache is not None:
                self.cache.put(key, acts)
        self._split[("acts", cut.name)] = acts
        plan = plan_batch(upper, "inference", n=len(acts), budget=self.budget)
        return predicted_classes(predict_batches(upper, acts, None, plan)).astype(np.int64)

    def _result(self, after: np.ndarray, copied: int) -> dict:
        from tlviz.stats import paired_difference

        ok_after, ok_before = after == self.labels, self.before == self.labels
        d = paired_difference(ok_after, ok_before)
        before_acc, after_acc = float(np.mean(ok_before)), float(np.mean(ok_after))
        return {"before": before_acc, "after": after_acc, "difference": d.difference, "low": d.low, "high": d.high,
                "retained": after_acc / before_acc if before_acc > 0 else None, "n_images": int(len(self.labels)),
                "classes": self.classes, "source": self.source, "layers_copied": copied}
