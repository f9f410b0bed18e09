"""A run's phases and what each trains: the plan, the trainable flags, the cut into cached activations.

A run has one phase (``main``: the config's unfreeze depth, learning rate and epochs), or two when
``two_phase`` is set (``head`` first: depth 0 at ``head_lr`` for ``head_epochs``). Every phase is
planned before any of them trains (`plan_phases`), so that a run over the memory budget is refused
before it starts.

Public API: `Phase`, `phase_list(config)`, `plan_phases(model, phases, config, cache, n_images, budget,
notes)`, `set_trainable(model, phase, config)`, `plan_cut(model, phase, config, cache, n_images, notes)`.
"""

from __future__ import annotations

from dataclasses import dataclass

from tlviz.errors import RunRefused
from tlviz.finetune.build import trainable_params
from tlviz.finetune.cache import ActivationCache, Cut, find_cut
from tlviz.finetune.config import RunConfig
from tlviz.finetune.preflight import check_train_memory


@dataclass
class Phase:
    """One phase of a run.

    Attributes:
        name: ``head`` or ``main``.
        depth: the unfreeze depth it trains at.
        lr: its learning rate.
        epochs: its epochs.
        steps: batches per epoch (set when it starts).
        first_epoch: the run's epoch number of its first epoch (set when it starts).
    """

    name: str
    depth: int
    lr: float
    epochs: int
    steps: int = 0
    first_epoch: int = 0


def phase_list(config: RunConfig) -> list[Phase]:
    """The phases `config` asks for, in order: ``head`` (when ``two_phase``), then ``main``."""
    phases = []
    if config.two_phase:
        phases.append(Phase("head", 0, config.head_lr, config.head_epochs))
    phases.append(Phase("main", config.unfreeze, config.lr, config.epochs))
    return phases


def plan_phases(model, phases: list[Phase], config: RunConfig, cache: ActivationCache, n_images: int, budget: int,
                notes: list[str]) -> tuple[list[Cut | None], dict, set[str]]:
    """Plan every phase before any of them runs: what trains, where the cut is, what a step needs.

    Args:
        model: the run's model (its trainable flags are set phase after phase; the last phase's stay).
        phases: `phase_list`.
        config: the `RunConfig`.
        cache: the run's `ActivationCache` (whether a cut's activations fit in it).
        n_images: images in the set.
        budget: the memory budget in bytes.
        notes: where each phase's cut decision is said, as a sentence for the user.

    Returns:
        ``(cut per phase (None: it trains the whole model), memory, paths of the layers that train in some
        phase)``; ``memory`` is `tlviz.finetune.preflight.check_train_memory`'s answer for the most demanding
        phase.

    Raises:
        RunRefused: nothing would train in a phase, or a phase's training step does not fit in `budget`.
    """
    cuts: list[Cut | None] = []
    memory: dict = {}
    may_train: set[str] = set()
    for phase in phases:
        may_train |= set_trainable(model, phase, config)[1]
        cut = plan_cut(model, phase, config, cache, n_images, notes)
        mem = check_train_memory(cut.upper if cut is not None else model, config.batch_size, budget,
                                 phase.name if len(phases) > 1 else None)
        if not memory or mem["train_bytes_per_image"] > memory["train_bytes_per_image"]:
            memory = mem
        cuts.append(cut)
    return cuts, memory, may_train


def set_trainable(model, phase: Phase, config: RunConfig) -> tuple[int, set[str]]:
    """Set the trainable flags of `phase`.

    Args:
        model: the run's model.
        phase: the `Phase` (its unfreeze depth).
        config: the `RunConfig` (``train_bn``).

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


def plan_cut(model, phase: Phase, config: RunConfig, cache: ActivationCache, n_images: int,
             notes: list[str]) -> Cut | None:
    """Where `phase` splits the model into cached activations and trained layers.

    Args:
        model: the run's model, trainable flags set for `phase`.
        phase: the `Phase`.
        config: the `RunConfig` (``use_cache``, ``augment``).
        cache: the run's `ActivationCache` (a cut whose activations do not fit in it is not taken).
        n_images: images in the set.
        notes: the reason goes here, as a sentence for the user.

    Returns:
        The `Cut`, or None: the phase trains the whole model.
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

