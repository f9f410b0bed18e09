"""One fine-tuning run: clone, (new head), unfreeze, train, measure.

`run_finetune` is synchronous and self-contained: the CLI and tests call it
directly; the app calls it in a worker process (see `tlviz.finetune.worker`).
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from tlviz.errors import RunRefused
from tlviz.finetune.build import (BuiltModel, HeadDecision, build_run_model, check_trainable, clone, decide_head,
                                  trainable_params)
from tlviz.contentkeys import model_key as content_model_key, pixels_key
from tlviz.finetune.cache import ActivationCache, Cut, compute_activations, find_cut
from tlviz.finetune.config import RunConfig
from tlviz.finetune.store import HISTORY_COLUMNS, RunWriter, clean_json
from tlviz.finetune.summary import describe_curves, frozen_changed, snapshot, weight_change
from tlviz.findings import Finding
from tlviz.memory import ENV_MEMORY_MB, fit_bytes, memory_budget_bytes, plan_batch, predict_batches
from tlviz.presets import PIXEL_PRESET, PRESET_DESCRIPTIONS, PRESET_RESIZE, apply_preset
from tlviz.stats import chance_level

#: The running training loss above this many times the reference loss means divergence.
DIVERGE_FACTOR = 4.0
#: Most steps one compiled call runs when training a small head on cached activations.
CACHED_STEPS_PER_EXECUTION = 32
#: Models with at most this many layers count as small: their training uses `CACHED_STEPS_PER_EXECUTION`.
#: Larger ones run one step per call (tracing a multi-step loop over a large graph costs more than it saves).
SMALL_MODEL_LAYERS = 8
#: Seconds between two progress reports within an epoch.
PROGRESS_EVERY_S = 0.5


@dataclass
class RunResult:
    """What a run produced.

    Attributes:
        config: the configuration it ran with.
        state: ``completed``, ``cancelled`` or ``diverged``.
        history: per-epoch DataFrame with `HISTORY_COLUMNS`.
        initial: validation ``val_loss`` / ``val_accuracy`` before training.
        final: ``loss`` / ``accuracy`` (last epoch, training mode) and
            ``val_loss`` / ``val_accuracy`` (the final model on the validation images).
        class_names: the image set's classes.
        val_indices: indices into the image set of the validation images.
        val_true / val_pred: their labels and the final model's predictions.
        per_class: DataFrame ``class, n, correct, accuracy`` on validation.
        confusion: ``(n_classes, n_classes)`` counts, rows true, columns predicted.
        weight_change: the weight-change report (see `summary.weight_change`).
        frozen_layers_changed: frozen layers whose weights moved (should be empty).
        findings: what the curves show, in words.
        trainable_params: trainable parameters of the last phase.
        head: the new-head decision.
        cache_used: whether training ran on cached activations.
        memory: how the run fit the memory budget (see `check_train_memory`):
            ``budget_bytes``, ``train_bytes_per_image`` and ``largest_batch``
            (of the most demanding phase), ``batch_size`` (training, as
            chosen) and ``eval_batch_size`` (validation, planned).
        notes: remarks (cache fallback reason, skipped layers, ...).
        elapsed_s: wall time.
        model: the trained Keras model (a clone; the loaded model is untouched).
        model_path / run_dir: where it was saved, when a writer was given.
        drift: representation drift per block of the base, input to output
            (`tlviz.finetune.drift.DriftProbe.measure`: ``block``, ``cka``,
            ``trained``, ``status``, ``layers``); empty when it could not be measured.
        drift_images: images the drift was measured on.
        retention: the original task's accuracy before and after the run (when
            an original-task image set was given: `tlviz.finetune.retention`), else None.
        duplicates: copies the split kept on one side (``groups``: groups of two or more
            images, ``images``: images in them).
        seconds: time spent on the extra measurements (``duplicates``, ``drift``, ``retention``).
    """

    config: RunConfig
    state: str
    history: pd.DataFrame
    initial: dict
    final: dict
    class_names: list[str]
    val_indices: np.ndarray
    val_true: np.ndarray
    val_pred: np.ndarray
    per_class: pd.DataFrame
    confusion: np.ndarray
    weight_change: pd.DataFrame
    frozen_layers_changed: list[str]
    findings: list[Finding]
    trainable_params: int
    head: HeadDecision
    cache_used: bool
    memory: dict = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    elapsed_s: float = 0.0
    model: object = None
    model_path: str | None = None
    run_dir: str | None = None
    drift: list[dict] = field(default_factory=list)
    drift_images: int = 0
    retention: dict | None = None
    duplicates: dict = field(default_factory=dict)
    seconds: dict = field(default_factory=dict)

    @property
    def diverged(self) -> bool:
        return self.state == "diverged"

    @property
    def best_val_accuracy(self) -> float:
        v = self.history["val_accuracy"].astype(float)
        return float(v.max()) if len(v) and not v.isna().all() else float("nan")

    def to_metrics(self) -> dict:
        """The JSON-able content of ``metrics.json``."""
        return clean_json({
            "state": self.state, "initial": self.initial, "final": self.final,
            "best_val_accuracy": self.best_val_accuracy, "class_names": self.class_names,
            "val_indices": self.val_indices, "val_true": self.val_true, "val_pred": self.val_pred,
            "per_class": self.per_class.to_dict(orient="records"), "confusion": self.confusion,
            "frozen_layers_changed": self.frozen_layers_changed,
            "findings": [f.to_dict() for f in self.findings], "trainable_params": self.trainable_params,
            "new_head": self.head.new_head, "head_reason": self.head.reason, "cache_used": self.cache_used,
            "memory": self.memory, "notes": self.notes, "elapsed_s": self.elapsed_s, "model_path": self.model_path,
            "representation_drift": self.drift, "drift_images": self.drift_images, "retention": self.retention,
            "control": self.config.control, "control_of": self.config.control_of, "duplicates": self.duplicates,
            "seconds": self.seconds,
        })


def stratified_split(labels: np.ndarray, val_fraction: float = 0.2, seed: int = 0,
                     groups: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Split indices into train and validation, the same share of every class.

    Args:
        labels: class index per image.
        val_fraction: share of each class held out. Defaults to `0.2`.
        seed: seeds the shuffle. Defaults to `0`.
        groups: a group id per image (`tlviz.duplicates.duplicate_group_ids`): the images of
            one group always land on the same side, so a copy of a validation image is never
            trained on. A group belongs to the class of its first image, and whole groups are
            drawn for validation until the class's share is reached. Defaults to `None` (every
            image its own group; the split is then the same as with all-distinct groups).

    Returns:
        ``(train_idx, val_idx)``, sorted. A class with a single image (or a single group) goes to
        training; every class with two or more groups has at least one in each part.
    """
    labels = np.asarray(labels)
    n = len(labels)
    groups = np.arange(n, dtype=np.int64) if groups is None else np.asarray(groups, dtype=np.int64)
    if len(groups) != n:
        raise ValueError(f"`groups` must hold one id per image: {len(groups)} ids for {n} images.")
    order = np.argsort(groups, kind="stable")
    _, starts = np.unique(groups[order], return_index=True)
    members = sorted(np.split(order, starts[1:]), key=lambda m: m[0]) if n else []  # by first image
    home = np.array([labels[m[0]] for m in members]) if members else np.zeros(0, labels.dtype)
    rng = np.random.default_rng(seed)
    train, val = [], []
    for c in np.unique(labels):
        mine = np.flatnonzero(home == c)  # this class's groups (positions in `members`), by first image
        perm = rng.permutation(mine)
        n_val = int(round(int(np.sum(labels == c)) * val_fraction))
        k = 0
        if len(perm) >= 2:
            n_val, taken = max(n_val, 1), 0
            while k < len(perm) - 1 and taken < n_val:  # whole groups; at least one stays in training
                taken += len(members[perm[k]])
                k += 1
        val.extend(members[g] for g in perm[:k])
        train.extend(members[g] for g in perm[k:])
    cat = lambda parts: np.sort(np.concatenate(parts)) if parts else np.zeros(0, np.int64)  # noqa: E731
    return cat(train).astype(np.int64), cat(val).astype(np.int64)


def check_run(loaded, images, config: RunConfig) -> HeadDecision:
    """Everything that can refuse a run before any training.

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
    budget = _budget() if budget is None else int(budget)
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


def _budget() -> int:
    """``TLVIZ_MEMORY_MB`` in bytes; a malformed value refuses the run (the message says how to set it)."""
    try:
        return memory_budget_bytes()
    except ValueError as exc:
        raise RunRefused(str(exc)) from None


def _mb(nbytes: float) -> str:
    mb = nbytes / 2**20
    return f"{mb:,.1f} MB" if mb < 10 else f"{mb:,.0f} MB"


def _optimizer(config: RunConfig, lr: float):
    import keras

    wd = config.weight_decay or None
    if config.optimizer == "adam":
        return keras.optimizers.Adam(learning_rate=lr, weight_decay=wd)
    return keras.optimizers.SGD(learning_rate=lr, momentum=config.momentum, weight_decay=wd)


def _dataset(x, y, idx, batch_size, seed=None, augment=False, preset=None):
    """Batches of ``(x[idx], y[idx])``: shuffled with `seed` (None: in order), normalized with `preset`, augmented.

    Only the indices enter the pipeline (and its shuffle buffer); each batch
    is gathered from `x` when it is read, so neither the images nor cached
    activations are copied (``from_tensor_slices`` on the arrays would copy
    them, and a shuffle buffer would hold a second copy).
    """
    import tensorflow as tf

    idx = np.asarray(idx, dtype=np.int64)
    ds = tf.data.Dataset.from_tensor_slices(idx)
    if seed is not None:
        ds = ds.shuffle(len(idx), seed=seed, reshuffle_each_iteration=True)
    ds = ds.batch(batch_size)
    x_shape, x_dtype = (None, *x.shape[1:]), tf.as_dtype(x.dtype)

    def gather(i):
        i = np.asarray(i)
        return x[i], y[i]

    def load(i):
        a, b = tf.numpy_function(gather, [i], (x_dtype, tf.int64), stateful=False)
        a.set_shape(x_shape)
        b.set_shape((None,))
        return a, b

    ds = ds.map(load, num_parallel_calls=tf.data.AUTOTUNE)
    if preset is not None:
        ds = ds.map(lambda a, b: (apply_preset(a, preset), b), num_parallel_calls=tf.data.AUTOTUNE)
    if augment:
        import keras

        aug = keras.Sequential([
            keras.layers.RandomFlip("horizontal", seed=seed),
            keras.layers.RandomTranslation(0.1, 0.1, fill_mode="reflect", seed=seed + 1),
        ], name="tlviz_augment")
        ds = ds.map(lambda a, b: (aug(a, training=True), b), num_parallel_calls=tf.data.AUTOTUNE)
    return ds.prefetch(tf.data.AUTOTUNE)


class _Stop:
    def __init__(self):
        self.reason = None  # "cancelled" / "diverged"


def _tracker(run, phase, stop: _Stop):
    """A Keras callback: progress, cancel after the current batch, divergence, history."""
    import keras

    class Tracker(keras.callbacks.Callback):
        def on_epoch_begin(self, epoch, logs=None):
            run.epoch += 1
            run.batch = 0
            run.report(phase.name, force=True)

        def on_train_batch_end(self, batch, logs=None):
            run.batch = batch + 1
            run.batches_done = run.batches_before + (run.epoch - phase.first_epoch) * phase.steps + batch + 1
            loss = (logs or {}).get("loss")
            if loss is not None:
                loss = float(loss)
                if not math.isfinite(loss) or loss > run.diverge_above:
                    stop.reason = "diverged"
                    run.diverged_loss = loss
                    self.model.stop_training = True
            if stop.reason is None and run.should_cancel is not None and run.should_cancel():
                stop.reason = "cancelled"
                self.model.stop_training = True
            run.report(phase.name)

        def on_epoch_end(self, epoch, logs=None):
            logs = dict(logs or {})
            entry = {
                "epoch": run.epoch, "phase": phase.name,
                "loss": _f(logs.get("loss")), "accuracy": _f(logs.get("accuracy")),
                "val_loss": _f(logs.get("val_loss")), "val_accuracy": _f(logs.get("val_accuracy")),
                "lr": phase.lr, "elapsed_s": round(time.monotonic() - run.t0, 3),
                "partial": stop.reason is not None and run.batch < phase.steps,
            }
            for k in ("loss", "val_loss"):
                v = entry[k]
                if stop.reason is None and (v is None or not math.isfinite(v)
                                            or (k == "loss" and v > run.diverge_above)):
                    stop.reason = "diverged"
                    self.model.stop_training = True
            run.history.append(entry)
            if run.writer is not None:
                run.writer.epoch(run.history)
            run.report(phase.name, force=True)

    return Tracker()


def _f(v):
    if v is None:
        return None
    v = float(v)
    return v


@dataclass
class _Phase:
    name: str
    depth: int
    lr: float
    epochs: int
    steps: int = 0
    first_epoch: int = 0


class _Run:
    """Mutable state of one run in progress (progress reporting and history)."""

    def __init__(self, config, n_train, writer, progress, should_cancel):
        self.config = config
        self.t0 = time.monotonic()
        self.writer = writer
        self.on_progress = progress
        self.should_cancel = should_cancel
        self.history: list[dict] = []
        self.epoch = 0
        self.batch = 0
        self.batches_before = 0
        self.batches_done = 0
        self.steps = max(1, math.ceil(n_train / config.batch_size))
        self.total_batches = self.steps * config.total_epochs
        self.diverge_above = float("inf")
        self.diverged_loss = None
        self.train_started = None
        self._last = 0.0
        self.stage = "preparing"

    def report(self, phase: str, force: bool = False, message: str = "") -> None:
        now = time.monotonic()
        if not force and now - self._last < PROGRESS_EVERY_S:
            return
        self._last = now
        elapsed = now - self.t0
        eta = None
        if self.train_started is not None and self.batches_done > 0:
            per = (now - self.train_started) / self.batches_done
            eta = per * max(self.total_batches - self.batches_done, 0)
        info = {"stage": phase, "epoch": self.epoch, "epochs": self.config.total_epochs, "batch": self.batch,
                "batches": self.steps, "batches_done": self.batches_done, "total_batches": self.total_batches,
                "elapsed_s": round(elapsed, 2), "eta_s": None if eta is None else round(eta, 1),
                "message": message, "history": self.history}
        if self.writer is not None:
            self.writer.progress(info)
        if self.on_progress is not None:
            self.on_progress(info)


def run_finetune(loaded, images, config: RunConfig, *, writer: RunWriter | None = None, progress=None,
                 should_cancel=None, cache: ActivationCache | None = None, image_key: str | None = None,
                 save: bool | None = None, original=None) -> RunResult:
    """Fine-tune a clone of `loaded` on `images` as `config` says.

    Memory: the training batch size is the config's; every other pass (cached
    activations, validation, final predictions) runs in batches planned from
    ``TLVIZ_MEMORY_MB`` and the model's own layer output sizes
    (`tlviz.memory.plan_batch`). Images stay ``uint8``: batches are gathered
    and normalized one at a time.

    Args:
        loaded: a `tlviz.models.LoadedModel`; never modified.
        images: a `tlviz.imagesets.ImageSet` at the model's input size.
        config: the `RunConfig`.
        writer: a `RunWriter` to record the run on disk (history every epoch,
            metrics, weight changes, model.keras, TensorBoard). Defaults to `None`.
        progress: called with a progress dict (stage, epoch, batch, elapsed,
            eta, history) at most every 0.5 s and at each epoch. Defaults to `None`.
        should_cancel: called after every batch (every compiled chunk on
            cached activations); returning True stops the run cleanly and keeps
            what was measured. Defaults to `None`.
        cache: an `ActivationCache` shared between runs (a sweep). Defaults to
            a fresh one.
        image_key: a content hash of the image array. Defaults to computing it.
        save: save ``model.keras`` into the writer's folder. Defaults to `True`
            when a writer is given.
        original: the image set of the base model's original task (its classes
            are the loaded model's outputs), to measure how much of that task's
            accuracy survives the run (`tlviz.finetune.retention`). Defaults to
            `None` (not measured).

    Besides the curves, every run measures its representation drift (linear CKA
    per block of the base, `tlviz.finetune.drift`), and splits so that exact and
    near-duplicate images (`tlviz.duplicates`) stay on one side.

    Returns:
        A `RunResult`; a diverged or cancelled run returns normally with that state.

    Raises:
        RunRefused: the run cannot start (no trainable weights, class count, a
            training step over the memory budget ``TLVIZ_MEMORY_MB``: see
            `check_train_memory`, ...).
    """
    import keras

    head = check_run(loaded, images, config)
    cache = cache if cache is not None else ActivationCache()
    save = writer is not None if save is None else save
    try:
        apply_preset(images.images[:1], config.preset)  # refuse a preset that cannot apply, before any work
    except ValueError as exc:
        raise RunRefused(str(exc)) from None
    u8 = images.images  # the preset is applied batch by batch: no float copy of the whole set
    y = np.asarray(images.labels, dtype=np.int64)
    n_classes = len(images.class_names)
    img_key = image_key or pixels_key(images.images)
    seconds: dict[str, float] = {}
    t = time.monotonic()
    groups, duplicates = duplicate_groups(images.images, cache, img_key)
    seconds["duplicates"] = round(time.monotonic() - t, 3)
    train_idx, val_idx = stratified_split(y, config.val_fraction, config.seed, groups)
    budget = _budget()
    run = _Run(config, len(train_idx), writer, progress, should_cancel)
    run.report("preparing", force=True, message="building the model")

    keras.utils.set_random_seed(config.seed)
    built: BuiltModel = build_run_model(loaded, n_classes, config, head)
    model = built.model
    notes = list(built.notes)
    if head.forced or head.new_head:
        notes.insert(0, head.reason)
    if config.random_init:
        notes.insert(0, f"Random-init control: the same architecture with fresh random weights (seed {config.seed}), "
                        "trained exactly as configured.")
    if duplicates["groups"]:
        notes.append(f"{duplicates['images']} images are copies of one another ({duplicates['groups']} groups of exact "
                     "or near duplicates): each group was kept on one side of the train / validation split.")
    loss_fn = keras.losses.SparseCategoricalCrossentropy(from_logits=built.from_logits)
    before = snapshot(model)

    phases = []
    if config.two_phase:
        phases.append(_Phase("head", 0, config.head_lr, config.head_epochs))
    phases.append(_Phase("main", config.unfreeze, config.lr, config.epochs))

    # Every phase is planned (what trains, where the cut is, what a step needs) before any of them runs,
    # so that a run over the memory budget is refused before it starts.
    cuts: list[Cut | None] = []
    memory: dict = {}
    may_train: set[str] = set()
    for phase in phases:
        may_train |= _set_trainable(model, phase, config)[1]
        cut = _plan_cut(model, phase, config, cache, len(u8), notes)
        mem = check_train_memory(cut.upper if cut is not None else model, config.batch_size, budget,
                                 phase.name if len(phases) > 1 else None)
        if not memory or mem["train_bytes_per_image"] > memory["train_bytes_per_image"]:
            memory = mem
        cuts.append(cut)

    model_key = content_model_key(loaded)
    if config.random_init:
        model_key = f"{model_key}|random-init:{config.seed}"
    run.report("preparing", force=True, message="measuring the base's features before training")
    drift_probe, retention_probe = _before_training(model, loaded, images, original, config, cache, model_key,
                                                    img_key, budget, may_train, notes, seconds, cuts[-1])
    stop = _Stop()
    initial: dict = {}
    trained_paths: set[str] = set()
    tparams = 0
    cache_used = False
    last_cut: Cut | None = None
    last_feats = None
    for phase, cut in zip(phases, cuts):
        tparams, paths = _set_trainable(model, phase, config)
        trained_paths |= paths
        feats = None
        if cut is not None:
            cache_used = True
            key = cache.key(model_key, img_key, config.preset, cut.name)
            feats = cache.get(key)
            if feats is None:
                run.report("caching", force=True, message=f"computing activations at '{cut.name}' once")
                feats = compute_activations(cut.lower, u8, preset=config.preset, budget=budget)
                cache.put(key, feats)
        if phase is phases[-1]:
            _drift_before(drift_probe, cut, feats, notes)  # nothing of the base has trained yet
        fit_model = cut.upper if cut is not None else model
        vbs = plan_batch(fit_model, "inference", n=len(val_idx), budget=budget).batch_size
        memory["eval_batch_size"] = max(memory.get("eval_batch_size", 0), vbs)
        if cut is not None:  # activations are already normalized
            train_ds = _dataset(feats, y, train_idx, config.batch_size, config.seed)
            val_ds = _dataset(feats, y, val_idx, vbs)
        else:
            train_ds = _dataset(u8, y, train_idx, config.batch_size, config.seed, config.augment,
                                preset=config.preset)
            val_ds = _dataset(u8, y, val_idx, vbs, preset=config.preset)
        phase.steps = run.steps
        phase.first_epoch = run.epoch + 1
        spe = min(run.steps, CACHED_STEPS_PER_EXECUTION) if cut is not None and _small(cut.upper) else 1
        fit_model.compile(optimizer=_optimizer(config, phase.lr), loss=loss_fn, metrics=["accuracy"],
                          steps_per_execution=spe)
        if not initial:
            ev = fit_model.evaluate(val_ds, verbose=0, return_dict=True)
            initial = {"val_loss": _f(ev["loss"]), "val_accuracy": _f(ev["accuracy"])}
            ref = initial["val_loss"] if initial["val_loss"] is not None and math.isfinite(initial["val_loss"]) \
                else math.log(n_classes)
            run.diverge_above = DIVERGE_FACTOR * max(ref, math.log(max(n_classes, 2)))
        if run.train_started is None:
            run.train_started = time.monotonic()
        run.batches_before = run.batches_done
        fit_model.fit(train_ds, validation_data=val_ds, epochs=phase.epochs, verbose=0,
                      callbacks=[_tracker(run, phase, stop)], shuffle=False)
        last_cut, last_feats = cut, feats
        if stop.reason is not None:
            break

    state = stop.reason or "completed"
    run.report("evaluating", force=True, message="scoring the validation images")
    if last_cut is not None:
        probs = _predict(last_cut.upper, last_feats, val_idx, budget=budget)
    else:
        probs = _predict(model, u8, val_idx, preset=config.preset, budget=budget)
    finite = np.all(np.isfinite(probs), axis=1)
    pred = np.where(finite, np.argmax(np.nan_to_num(probs, nan=-np.inf), axis=1), -1).astype(np.int64)
    y_val = y[val_idx]
    val_acc = float(np.mean(pred == y_val)) if len(y_val) else float("nan")
    last = run.history[-1] if run.history else {}
    # Keras validated the final weights at the end of the last (or cancelled) epoch.
    final = {"loss": last.get("loss"), "accuracy": last.get("accuracy"), "val_loss": last.get("val_loss"),
             "val_accuracy": val_acc}
    confusion = np.zeros((n_classes, n_classes), dtype=np.int64)
    for t, q in zip(y_val, pred):
        if q >= 0:
            confusion[t, q] += 1
    per_class = pd.DataFrame([
        {"class": name, "n": int((y_val == i).sum()), "correct": int(((y_val == i) & (pred == i)).sum())}
        for i, name in enumerate(images.class_names)], columns=["class", "n", "correct"])
    per_class["accuracy"] = np.where(per_class["n"] > 0, per_class["correct"] / per_class["n"].clip(lower=1), np.nan)

    report = weight_change(before, model, trained_paths)
    run.report("evaluating", force=True, message="measuring how far the base's features moved")
    drift, retention = _after_training(drift_probe, retention_probe, model, report, notes, seconds, last_cut,
                                       last_feats)
    history = pd.DataFrame(run.history, columns=HISTORY_COLUMNS)
    findings = describe_curves(history, state, chance_level(y_val, n_classes), config, initial)
    result = RunResult(
        config=config, state=state, history=history, initial=initial, final=final,
        class_names=list(images.class_names), val_indices=val_idx, val_true=y_val, val_pred=pred,
        per_class=per_class, confusion=confusion, weight_change=report,
        frozen_layers_changed=frozen_changed(report), findings=findings, trainable_params=tparams, head=head,
        cache_used=cache_used, memory=memory, notes=notes, elapsed_s=round(time.monotonic() - run.t0, 3), model=model,
        run_dir=str(writer.dir) if writer is not None else None, drift=drift,
        drift_images=drift_probe.n_images if drift_probe is not None else 0, retention=retention,
        duplicates=duplicates, seconds=seconds,
    )
    if writer is not None and save:
        run.report("saving", force=True, message="saving model.keras")
        save_model(model, writer.model_path, config.preset, list(images.class_names),
                   {"finetuned_from": loaded.filename, "run_id": writer.run_id, "state": state})
        result.model_path = str(writer.model_path)
    if writer is not None:
        writer.finish(result.to_metrics(), report)
    return result


def duplicate_groups(images: np.ndarray, cache: ActivationCache | None = None,
                     image_key: str | None = None) -> tuple[np.ndarray, dict]:
    """Duplicate groups of an image set, for the split (`tlviz.duplicates.duplicate_group_ids`), found once per set.

    Args:
        images: the ``uint8`` images.
        cache: keeps the group ids for the next run on the same images. Defaults to `None`.
        image_key: `tlviz.contentkeys.pixels_key` of `images`. Defaults to computing it.

    Returns:
        ``(group ids, {"groups": groups of two or more, "images": images in them})``.
    """
    from tlviz.duplicates import duplicate_group_ids

    key = None
    ids = None
    if cache is not None:
        key = cache.key("duplicates", image_key or pixels_key(images), "-", "groups-v1")
        ids = cache.get(key, count=False)
    if ids is None:
        ids = duplicate_group_ids(images)
        if cache is not None:
            cache.put(key, ids)
    ids = np.asarray(ids, dtype=np.int64)
    sizes = np.bincount(ids) if len(ids) else np.zeros(0, np.int64)
    return ids, {"groups": int(np.sum(sizes >= 2)), "images": int(np.sum(sizes[sizes >= 2]))}


def _before_training(model, loaded, images, original, config: RunConfig, cache, model_key: str, img_key: str,
                     budget: int, may_train: set[str], notes: list[str], seconds: dict, cut: Cut | None = None):
    """The drift and retention measurements' first halves (features and predictions before the run).

    A measurement that cannot be made leaves a note and None; it never stops the run.
    """
    from tlviz.errors import TlvizError
    from tlviz.finetune.drift import DriftProbe

    drift = retention = None
    t = time.monotonic()
    try:  # with a cut, the features before come from its activations (`_drift_before`), computed anyway
        drift = DriftProbe(model, images.images, images.labels, config.preset, may_train, cache, model_key, img_key,
                           budget, defer=cut is not None)
    except Exception as exc:  # noqa: BLE001 - an unusual graph: say so, train anyway
        notes.append(f"The representation drift could not be measured ({type(exc).__name__}: {str(exc)[:160]}).")
    seconds["drift"] = round(time.monotonic() - t, 3)
    if original is not None:
        from tlviz.finetune.retention import RetentionProbe

        t = time.monotonic()
        if config.random_init:
            notes.append("Original-task retention is not measured for a random-init control: its base never held "
                         "the original task.")
        else:
            try:
                retention = RetentionProbe(loaded, original, config.preset, cache, budget, cut)
            except TlvizError as exc:
                notes.append(f"Original-task retention not measured: {exc}")
        seconds["retention"] = round(time.monotonic() - t, 3)
    return drift, retention


def _drift_before(drift_probe, cut, activations, notes: list[str]) -> None:
    """The drift's features before the run, from the last phase's cut when it has one (before it trains)."""
    if drift_probe is None or not drift_probe.missing:
        return
    try:
        if cut is not None:
            drift_probe.before_from_cut(cut, activations)
        else:
            drift_probe._compute_before()
    except Exception as exc:  # noqa: BLE001 - never stop a run for a measurement
        notes.append(f"The representation drift could not be measured ({type(exc).__name__}: {str(exc)[:160]}).")


def _after_training(drift_probe, retention_probe, model, report: pd.DataFrame, notes: list[str], seconds: dict,
                    cut: Cut | None = None, activations=None) -> tuple[list[dict], dict | None]:
    """The drift and retention measurements' second halves, on the trained model (above the last phase's cut,
    from its cached activations, when it had one)."""
    def attempt(what: str, measure):
        try:
            return measure()
        except Exception as exc:  # noqa: BLE001 - a measurement that fails leaves the run intact, with a note
            notes.append(f"{what} could not be measured after training ({type(exc).__name__}: {str(exc)[:160]}).")
            return None

    drift, retention = [], None
    if drift_probe is not None:
        drift = attempt("The representation drift", lambda: drift_probe.measure(report, cut, activations)) or []
        seconds["drift"] = round(drift_probe.seconds, 3)
    if retention_probe is not None:
        t = time.monotonic()
        retention = attempt("Original-task retention", lambda: retention_probe.measure(model, report, cut))
        seconds["retention"] = round(seconds.get("retention", 0.0) + time.monotonic() - t, 3)
    return drift, retention


def _set_trainable(model, phase: _Phase, config: RunConfig) -> tuple[int, set[str]]:
    """Set the trainable flags of `phase`.

    Returns:
        ``(trainable parameters, paths of the layers that train)``.

    Raises:
        RunRefused: nothing would train.
    """
    from tlviz.layers import iter_leaves
    from tlviz.unfreeze import apply_unfreeze

    apply_unfreeze(model, phase.depth, train_bn=config.train_bn)
    tparams = trainable_params(model)
    if tparams == 0:
        raise RunRefused("Nothing would train: the model has no layer holding weights in its head or in the "
                         "unfrozen part of the base. Increase the unfreeze depth.")
    paths = {leaf.path for leaf in iter_leaves(model) if leaf.layer.trainable and leaf.layer.trainable_weights}
    return tparams, paths


def _plan_cut(model, phase: _Phase, config: RunConfig, cache: ActivationCache, n_images: int,
              notes: list[str]) -> Cut | None:
    """Where `phase` splits the model into cached activations and trained layers (None: it trains all of it).

    The reason goes into `notes`, as a sentence for the user.
    """
    cut, cut_msg = (None, "cached activations are off for this run")
    if config.use_cache and not config.augment:
        cut, cut_msg = find_cut(model)
    elif config.augment:
        cut_msg = "augmentation changes the images every epoch, so activations cannot be cached"
    if cut is not None:
        need = cut.bytes_for(n_images)
        if not cache.fits(need):
            notes.append(f"Cached activations at '{cut.name}' would take {need / 2**20:,.0f} MB, over the "
                         f"{cache.budget / 2**20:,.0f} MB budget (TLVIZ_ACTIVATION_CACHE_MB): training the "
                         "whole model instead (slower, same results).")
            return None
        notes.append(f"Phase '{phase.name}': {cut_msg}.")
    elif config.use_cache:
        notes.append(f"Phase '{phase.name}': no activation cache ({cut_msg}).")
    return cut


def _small(model) -> bool:
    """A model small enough that Keras's per-step overhead dominates (a head on cached activations)."""
    return len(model.layers) <= SMALL_MODEL_LAYERS


def _predict(model, x: np.ndarray, idx: np.ndarray, preset: str | None = None,
             budget: int | None = None) -> np.ndarray:
    """Class probabilities (or logits) of ``x[idx]`` in inference mode, as ``float64``.

    A compiled forward pass in batches planned from the memory budget
    (`tlviz.memory.plan_batch`, mode ``"inference"``); rows are gathered and
    normalized one batch at a time.

    Args:
        model: the model.
        x: its input; ``uint8`` images when `preset` is given.
        idx: the rows of `x` to score.
        preset: applied batch by batch. Defaults to `None` (x is ready).
        budget: bytes. Defaults to ``TLVIZ_MEMORY_MB``.
    """
    prepare = None if preset is None else (lambda a: apply_preset(a, preset))
    plan = plan_batch(model, "inference", n=len(idx), budget=budget)
    out = predict_batches(model, _Rows(x, idx), prepare, plan)
    return out.astype(np.float64) if len(idx) else np.zeros((0, 0))


class _Rows:
    """``x[idx]`` without the copy: slicing gathers only the rows of that slice."""

    def __init__(self, x: np.ndarray, idx: np.ndarray):
        self.x, self.idx = x, np.asarray(idx, dtype=np.int64)

    def __len__(self) -> int:
        return len(self.idx)

    def __getitem__(self, s: slice) -> np.ndarray:
        return self.x[self.idx[s]]


def save_model(model, path, preset: str, class_names: list[str], extra: dict | None = None) -> None:
    """Save a fine-tuned model as ``.keras`` with tlviz metadata (preset, class names) embedded.

    The file holds the architecture and the trained weights without the run's optimizer state: that state
    (built for the part that trained, phase by phase) means nothing to whoever loads the file, and Keras
    warned about every mismatched optimizer variable when it opened one that carried it. Compile it with
    your own optimizer and learning rate to train on.
    """
    from pathlib import Path

    from tlviz.samples import embed_metadata

    path = Path(path)
    tmp = path.with_name(f".{path.stem}.tmp.keras")
    clone(model).save(tmp)  # the clone's optimizer is fresh: it has no state to save
    embed_metadata(tmp, {"preset": preset, "class_names": list(class_names), **(extra or {})})
    tmp.replace(path)


def linear_probe(loaded, images, preset: str, *, epochs: int = 10, lr: float = 1e-2, val_fraction: float = 0.2,
                 seed: int = 0, cache: ActivationCache | None = None) -> RunResult:
    """Train a fresh softmax head on the frozen base: how separable are the classes?

    A quick measure of how useful the base's features are for these classes
    (the base is never trained, activations are computed once).

    Args:
        loaded: the `LoadedModel` (not modified).
        images: the `ImageSet`.
        preset: the input normalization.
        epochs: epochs of head training. Defaults to `10`.
        lr: Adam learning rate. Defaults to `1e-2`.
        val_fraction: stratified validation share. Defaults to `0.2`.
        seed: seed. Defaults to `0`.
        cache: an `ActivationCache` to reuse. Defaults to a fresh one.

    Returns:
        A `RunResult` (``final["val_accuracy"]`` is the probe accuracy).
    """
    cfg = RunConfig(unfreeze=0, lr=lr, epochs=epochs, preset=preset, val_fraction=val_fraction, seed=seed,
                    new_head=True, head_dropout=0.0, unfreeze_frozen=True, batch_size=32)
    return run_finetune(loaded, images, cfg, cache=cache)
