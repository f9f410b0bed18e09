"""Training a run's phases: the optimizer, the data, the first evaluation, ``fit`` with the run's callback.

Public API: `train_phases(...) -> Training`, `make_optimizer(config, lr)`, and the constants
`DIVERGE_FACTOR`, `CACHED_STEPS_PER_EXECUTION`, `SMALL_MODEL_LAYERS`. Keras is imported when a
phase trains.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass

import numpy as np

from tlviz.finetune.cache import ActivationCache, Cut, compute_activations
from tlviz.finetune.config import RunConfig
from tlviz.finetune.data import batch_dataset
from tlviz.finetune.phases import Phase, set_trainable
from tlviz.finetune.probes import drift_before
from tlviz.finetune.state import RunState, float_or_none
from tlviz.memory import plan_batch

#: The running training loss above this many times the reference loss means divergence.
DIVERGE_FACTOR = 4.0
#: Most steps one compiled call runs when training a small head on cached activations.
CACHED_STEPS_PER_EXECUTION = 32
#: Models with at most this many layers count as small: their training uses `CACHED_STEPS_PER_EXECUTION`.
#: Larger ones run one step per call (tracing a multi-step loop over a large graph costs more than it saves).
SMALL_MODEL_LAYERS = 8


@dataclass
class Training:
    """What the phases left behind.

    Attributes:
        initial: ``val_loss`` / ``val_accuracy`` of the model before training (the first phase's evaluation).
        trainable_params: trainable parameters of the last phase that ran.
        trained_paths: paths of the layers that trained in some phase.
        cache_used: whether a phase trained on cached activations.
        eval_batch_size: the largest validation batch size planned.
        last_cut: the cut of the last phase that ran (None: it trained the whole model).
        last_activations: the cached activations at `last_cut`.
    """

    initial: dict
    trainable_params: int
    trained_paths: set[str]
    cache_used: bool
    eval_batch_size: int
    last_cut: Cut | None
    last_activations: np.ndarray | None


def make_optimizer(config: RunConfig, lr: float):
    """The optimizer `config` names (Adam, or SGD with its momentum), with its weight decay, at rate `lr`.

    Args:
        config: the run's configuration (``optimizer``, ``momentum``, ``weight_decay``).
        lr: the learning rate.

    Returns:
        A fresh Keras optimizer.
    """
    import keras

    wd = config.weight_decay or None
    if config.optimizer == "adam":
        return keras.optimizers.Adam(learning_rate=lr, weight_decay=wd)
    return keras.optimizers.SGD(learning_rate=lr, momentum=config.momentum, weight_decay=wd)


def train_phases(model, phases: list[Phase], cuts: list[Cut | None], config: RunConfig, *, x: np.ndarray,
                 y: np.ndarray, n_classes: int, train_idx: np.ndarray, val_idx: np.ndarray, from_logits: bool,
                 cache: ActivationCache, model_key: str, image_key: str, budget: int, state: RunState,
                 drift_probe=None, notes: list[str]) -> Training:
    """Train the phases in order, each on its cut's cached activations or on the images.

    The first phase's model is evaluated on the validation images before it trains (the reference for
    divergence: `DIVERGE_FACTOR` times that loss, or log(classes) when it is not finite). The drift's
    features before the run are taken when the last phase starts (`tlviz.finetune.probes.drift_before`).
    A phase that stops (``state.stop_reason``: cancelled or diverged) ends the training.

    Args:
        model: the run's model.
        phases: the `Phase` list (`tlviz.finetune.phases.phase_list`).
        cuts: the cut of each phase (`tlviz.finetune.phases.plan_phases`).
        config: the `RunConfig`.
        x: the ``uint8`` images.
        y: their labels, ``int64``.
        n_classes: classes of the image set.
        train_idx: the training images.
        val_idx: the validation images.
        from_logits: whether the model outputs logits.
        cache: the run's `ActivationCache` (activations at a cut are computed once).
        model_key: the key of the weights the run starts from (`tlviz.finetune.build.start_weights_key`).
        image_key: `tlviz.contentkeys.pixels_key` of `x`.
        budget: the memory budget in bytes.
        state: the run's `RunState`.
        drift_probe: the run's `DriftProbe`, or None. Defaults to `None`.
        notes: remarks for the user go here.

    Returns:
        The `Training`.
    """
    import keras

    from tlviz.finetune.callbacks import RunTracker

    loss_fn = keras.losses.SparseCategoricalCrossentropy(from_logits=from_logits)
    initial: dict = {}
    trained_paths: set[str] = set()
    tparams = 0
    cache_used = False
    eval_batch_size = 0
    last_cut: Cut | None = None
    last_feats = None
    for phase, cut in zip(phases, cuts):
        tparams, paths = set_trainable(model, phase, config)
        trained_paths |= paths
        feats = None
        if cut is not None:
            cache_used = True
            key = cache.key(model_key, image_key, config.preset, cut.name)
            feats = cache.get(key)
            if feats is None:
                state.report("caching", force=True, message=f"computing activations at '{cut.name}' once")
                feats = compute_activations(cut.lower, x, preset=config.preset, budget=budget)
                cache.put(key, feats)
        if phase is phases[-1]:
            drift_before(drift_probe, cut, feats, notes)  # nothing of the base has trained yet
        fit_model = cut.upper if cut is not None else model
        vbs = plan_batch(fit_model, "inference", n=len(val_idx), budget=budget).batch_size
        eval_batch_size = max(eval_batch_size, vbs)
        if cut is not None:  # activations are already normalized
            train_ds = batch_dataset(feats, y, train_idx, config.batch_size, config.seed)
            val_ds = batch_dataset(feats, y, val_idx, vbs)
        else:
            train_ds = batch_dataset(x, y, train_idx, config.batch_size, config.seed, config.augment,
                                     preset=config.preset)
            val_ds = batch_dataset(x, y, val_idx, vbs, preset=config.preset)
        phase.steps = state.steps
        phase.first_epoch = state.epoch + 1
        spe = min(state.steps, CACHED_STEPS_PER_EXECUTION) if cut is not None and _small(cut.upper) else 1
        fit_model.compile(optimizer=make_optimizer(config, phase.lr), loss=loss_fn, metrics=["accuracy"],
                          steps_per_execution=spe)
        if not initial:
            initial = _evaluate_before(fit_model, val_ds, n_classes, state)
        if state.train_started is None:
            state.train_started = time.monotonic()
        state.batches_before = state.batches_done
        fit_model.fit(train_ds, validation_data=val_ds, epochs=phase.epochs, verbose=0,
                      callbacks=[RunTracker(state, phase)], shuffle=False)
        last_cut, last_feats = cut, feats
        if state.stop_reason is not None:
            break
    return Training(initial=initial, trainable_params=tparams, trained_paths=trained_paths, cache_used=cache_used,
                    eval_batch_size=eval_batch_size, last_cut=last_cut, last_activations=last_feats)


def _evaluate_before(fit_model, val_ds, n_classes: int, state: RunState) -> dict:
    """The validation loss and accuracy before training; sets the divergence threshold from them."""
    ev = fit_model.evaluate(val_ds, verbose=0, return_dict=True)
    initial = {"val_loss": float_or_none(ev["loss"]), "val_accuracy": float_or_none(ev["accuracy"])}
    ref = initial["val_loss"] if initial["val_loss"] is not None and math.isfinite(initial["val_loss"]) \
        else math.log(n_classes)
    state.diverge_above = DIVERGE_FACTOR * max(ref, math.log(max(n_classes, 2)))
    return initial


def _small(model) -> bool:
    """A model small enough that Keras's per-step overhead dominates (a head on cached activations)."""
    return len(model.layers) <= SMALL_MODEL_LAYERS
