"""One fine-tuning run: clone, (new head), unfreeze, train, measure.

`run_finetune` is synchronous and self-contained: the CLI and tests call it
directly; the app calls it in a worker process (a ``runs`` job of `tlviz.jobs`).
It reads as its three stages, each delegated: plan (`tlviz.finetune.preflight`,
`split`, `build`, `phases`), train (`training`, with `callbacks` and `data`, the
measurements around it in `probes`), evaluate (`evaluate`).

Public API: `RunResult`, `run_finetune`, `linear_probe`.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from tlviz.contentkeys import pixels_key
from tlviz.finetune.build import HeadDecision, build_run_model, start_weights_key
from tlviz.finetune.cache import ActivationCache
from tlviz.finetune.config import RunConfig
from tlviz.finetune.evaluate import predict_validation, save_model, score_validation
from tlviz.finetune.phases import phase_list, plan_phases
from tlviz.finetune.preflight import check_preset, check_run, memory_budget
from tlviz.finetune.probes import finish_probes, start_probes
from tlviz.finetune.split import split_groups, stratified_split
from tlviz.finetune.state import RunState
from tlviz.finetune.store import HISTORY_COLUMNS, RunWriter
from tlviz.finetune.summary import describe_curves, frozen_changed, snapshot, weight_change
from tlviz.finetune.training import train_phases
from tlviz.findings import Finding
from tlviz.jsonsafe import json_safe
from tlviz.stats import chance_level


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
        memory: how the run fit the memory budget (see `tlviz.finetune.preflight.check_train_memory`):
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
        return json_safe({
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
            `tlviz.finetune.preflight.check_train_memory`, ...).
    """
    import keras

    # Plan: refuse what cannot run, split, build, plan every phase (a run over the memory budget stops here).
    head = check_run(loaded, images, config)
    cache = cache if cache is not None else ActivationCache()
    save = writer is not None if save is None else save
    check_preset(images, config.preset)  # the preset is applied batch by batch: no float copy of the whole set
    u8 = images.images
    y = np.asarray(images.labels, dtype=np.int64)
    n_classes = len(images.class_names)
    img_key = image_key or pixels_key(images.images)
    seconds: dict[str, float] = {}
    t = time.monotonic()
    groups, duplicates = split_groups(images.images, cache, img_key)
    seconds["duplicates"] = round(time.monotonic() - t, 3)
    train_idx, val_idx = stratified_split(y, config.val_fraction, config.seed, groups)
    budget = memory_budget()
    run_state = RunState(config, len(train_idx), writer, progress, should_cancel)
    run_state.report("preparing", force=True, message="building the model")
    keras.utils.set_random_seed(config.seed)
    built = build_run_model(loaded, n_classes, config, head)
    model = built.model
    notes = _opening_notes(built.notes, head, config, duplicates)
    before = snapshot(model)
    phases = phase_list(config)
    cuts, memory, may_train = plan_phases(model, phases, config, cache, len(u8), budget, notes)
    model_key = start_weights_key(loaded, config)

    # Train, with the drift and retention measurements around it.
    run_state.report("preparing", force=True, message="measuring the base's features before training")
    drift_probe, retention_probe = start_probes(model, loaded, images, original, config, cache, model_key, img_key,
                                                budget, may_train, notes, seconds, cuts[-1])
    trained = train_phases(model, phases, cuts, config, x=u8, y=y, n_classes=n_classes, train_idx=train_idx,
                           val_idx=val_idx, from_logits=built.from_logits, cache=cache, model_key=model_key,
                           image_key=img_key, budget=budget, state=run_state, drift_probe=drift_probe, notes=notes)
    memory["eval_batch_size"] = trained.eval_batch_size
    state = run_state.stop_reason or "completed"

    # Evaluate: the final model on the validation images, what moved, what the curves say; save.
    run_state.report("evaluating", force=True, message="scoring the validation images")
    last_cut, last_feats = trained.last_cut, trained.last_activations
    y_val = y[val_idx]
    val = score_validation(predict_validation(model, last_cut, last_feats, u8, val_idx, config.preset, budget), y_val,
                           list(images.class_names))
    last = run_state.history[-1] if run_state.history else {}
    # Keras validated the final weights at the end of the last (or cancelled) epoch.
    final = {"loss": last.get("loss"), "accuracy": last.get("accuracy"), "val_loss": last.get("val_loss"),
             "val_accuracy": val.accuracy}
    report = weight_change(before, model, trained.trained_paths)
    run_state.report("evaluating", force=True, message="measuring how far the base's features moved")
    drift, retention = finish_probes(drift_probe, retention_probe, model, report, notes, seconds, last_cut, last_feats)
    history = pd.DataFrame(run_state.history, columns=HISTORY_COLUMNS)
    findings = describe_curves(history, state, chance_level(y_val, n_classes), config, trained.initial)
    result = RunResult(
        config=config, state=state, history=history, initial=trained.initial, final=final,
        class_names=list(images.class_names), val_indices=val_idx, val_true=y_val, val_pred=val.pred,
        per_class=val.per_class, confusion=val.confusion, weight_change=report,
        frozen_layers_changed=frozen_changed(report), findings=findings, trainable_params=trained.trainable_params,
        head=head, cache_used=trained.cache_used, memory=memory, notes=notes,
        elapsed_s=round(time.monotonic() - run_state.t0, 3), model=model,
        run_dir=str(writer.dir) if writer is not None else None, drift=drift,
        drift_images=drift_probe.n_images if drift_probe is not None else 0, retention=retention,
        duplicates=duplicates, seconds=seconds,
    )
    if writer is not None and save:
        run_state.report("saving", force=True, message="saving model.keras")
        save_model(model, writer.model_path, config.preset, list(images.class_names),
                   {"finetuned_from": loaded.filename, "run_id": writer.run_id, "state": state})
        result.model_path = str(writer.model_path)
    if writer is not None:
        writer.finish(result.to_metrics(), report)
    return result


def _opening_notes(build_notes: list[str], head: HeadDecision, config: RunConfig, duplicates: dict) -> list[str]:
    """The run's first remarks: the head decision, a random-init control, the building notes, the duplicates."""
    notes = list(build_notes)
    if head.forced or head.new_head:
        notes.insert(0, head.reason)
    if config.random_init:
        notes.insert(0, f"Random-init control: the same architecture with fresh random weights (seed {config.seed}), "
                        "trained exactly as configured.")
    if duplicates["groups"]:
        notes.append(f"{duplicates['images']} images are copies of one another ({duplicates['groups']} groups of exact "
                     "or near duplicates): each group was kept on one side of the train / validation split.")
    return notes


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
