"""The learning-rate range test (Smith 2015, "Cyclical Learning Rates for Training Neural Networks").

Train for about 100 steps while raising the learning rate exponentially from
1e-7 to 10; stop when the smoothed loss exceeds 4x its minimum; put the
weights back; suggest the rate where the smoothed loss falls fastest.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from tlviz.contentkeys import pixels_key
from tlviz.errors import RunRefused
from tlviz.finetune.build import build_run_model, start_weights_key
from tlviz.finetune.cache import ActivationCache, compute_activations, find_cut
from tlviz.finetune.config import RunConfig
from tlviz.finetune.preflight import check_preset, check_run, check_train_memory, memory_budget
from tlviz.finetune.split import split_groups, stratified_split
from tlviz.finetune.training import make_optimizer
from tlviz.jsonsafe import json_safe
from tlviz.presets import apply_preset

LR_COLUMNS = ["step", "lr", "loss", "smoothed"]
#: The smoothed loss must fall by at least this share of its starting value for a suggestion.
MIN_DROP = 0.05


@dataclass
class LRFinderResult:
    """The range test's curve and its suggestion.

    Attributes:
        curve: DataFrame ``step, lr, loss, smoothed`` (one row per step run).
        suggestion: the rate of steepest descent of the smoothed loss (None
            when the curve is too short or never falls).
        min_loss_lr: the rate at the smoothed loss's minimum.
        stopped_early: whether the loss blew up before the last step.
        message: one sentence for the user.
        cache_used: whether the steps ran on cached activations.
        elapsed_s: wall time.
    """

    curve: pd.DataFrame
    suggestion: float | None
    min_loss_lr: float | None
    stopped_early: bool
    message: str
    cache_used: bool = False
    elapsed_s: float = 0.0
    notes: list[str] = field(default_factory=list)

    def to_dict(self) -> dict:
        return json_safe({"curve": self.curve.to_dict(orient="list"), "suggestion": self.suggestion,
                           "min_loss_lr": self.min_loss_lr, "stopped_early": self.stopped_early,
                           "message": self.message, "cache_used": self.cache_used, "elapsed_s": self.elapsed_s,
                           "notes": self.notes})

    @classmethod
    def from_dict(cls, d: dict) -> "LRFinderResult":
        curve = pd.DataFrame(d.get("curve") or {c: [] for c in LR_COLUMNS}, columns=LR_COLUMNS)
        return cls(curve=curve, suggestion=d.get("suggestion"), min_loss_lr=d.get("min_loss_lr"),
                   stopped_early=bool(d.get("stopped_early")), message=d.get("message", ""),
                   cache_used=bool(d.get("cache_used")), elapsed_s=float(d.get("elapsed_s") or 0),
                   notes=list(d.get("notes") or []))


def suggest_lr(curve: pd.DataFrame, skip_start: float = 0.1) -> tuple[float | None, float | None]:
    """Suggested rate and the rate at the minimum, from a range-test curve.

    The suggestion is the steepest descent of the smoothed loss against
    log10(rate), looked for between the first `skip_start` share of the steps
    (too noisy) and the minimum. A curve that falls by less than `MIN_DROP`
    of its starting value gets no suggestion.

    Returns:
        ``(suggestion, min_loss_lr)``; either may be None for a useless curve.
    """
    c = curve[np.isfinite(curve["smoothed"].astype(float))]
    if len(c) < 5:
        return None, None
    s = c["smoothed"].to_numpy(float)
    lr = c["lr"].to_numpy(float)
    i_min = int(np.argmin(s))
    lo = int(len(s) * skip_start)
    if i_min - lo < 3:
        return None, float(lr[i_min])
    start = float(np.mean(s[:max(lo, 1)]))
    if start - s[i_min] < max(MIN_DROP * abs(start), 1e-3):
        return None, float(lr[i_min])  # flat: no descent worth pointing at
    grad = np.gradient(s, np.log10(lr))
    i = lo + int(np.argmin(grad[lo:i_min + 1]))
    if grad[i] >= 0:
        return None, float(lr[i_min])
    return float(lr[i]), float(lr[i_min])


def lr_range_test(loaded, images, config: RunConfig, *, start: float = 1e-7, end: float = 10.0, steps: int = 100,
                  beta: float = 0.98, stop_factor: float = 4.0, should_cancel=None, progress=None,
                  cache: ActivationCache | None = None, image_key: str | None = None) -> LRFinderResult:
    """Run the learning-rate range test on a clone set up as `config` says.

    Uses the config's head choice, unfreeze depth, BN mode, optimizer,
    batch size, preset and seed; ignores its learning rate and epochs.

    Args:
        loaded: the `LoadedModel` (not modified).
        images: the `ImageSet`.
        config: the run configuration to test rates for.
        start: first rate. Defaults to `1e-7`.
        end: last rate. Defaults to `10.0`.
        steps: steps from `start` to `end`. Defaults to `100`.
        beta: smoothing of the loss (exponential moving average). Defaults to `0.98`.
        stop_factor: stop when the smoothed loss exceeds this times its
            minimum. Defaults to `4.0`.
        should_cancel: checked after each step. Defaults to `None`.
        progress: called with ``{"stage": "lrfind", "step", "steps", "elapsed_s"}``. Defaults to `None`.
        cache: activation cache. Defaults to a fresh one.
        image_key: content hash of the images. Defaults to computing it.

    Returns:
        An `LRFinderResult`. The clone's weights are restored afterwards.

    Raises:
        RunRefused: the configuration cannot run, e.g. one step at the
            config's batch size would not fit in the memory budget
            (``TLVIZ_MEMORY_MB``; see `tlviz.finetune.preflight.check_train_memory`).
    """
    import keras

    if not (0 < start < end) or steps < 5:
        raise RunRefused(f"The range test needs 0 < start < end and at least 5 steps (got {start}, {end}, {steps}).")
    t0 = time.monotonic()
    head = check_run(loaded, images, config)
    cache = cache if cache is not None else ActivationCache()
    check_preset(images, config.preset)
    budget = memory_budget()
    x = images.images
    y = np.asarray(images.labels, dtype=np.int64)
    groups, _ = split_groups(x, cache, image_key)
    train_idx, _ = stratified_split(y, config.val_fraction, config.seed, groups)  # as a run splits
    keras.utils.set_random_seed(config.seed)
    built = build_run_model(loaded, len(images.class_names), config, head)
    model = built.model
    from tlviz.unfreeze import apply_unfreeze

    apply_unfreeze(model, config.unfreeze, train_bn=config.train_bn)
    notes = list(built.notes)
    cut, msg = find_cut(model) if config.use_cache and not config.augment else (None, "cache off")
    fx, prep = x, (lambda a: apply_preset(a, config.preset))
    if cut is None or not cache.fits(cut.bytes_for(len(x))):
        cut = None
    check_train_memory(cut.upper if cut is not None else model, config.batch_size, budget)
    if cut is not None:
        key = cache.key(start_weights_key(loaded, config), image_key or pixels_key(images.images), config.preset, cut.name)
        feats = cache.get(key)
        if feats is None:
            feats = compute_activations(cut.lower, x, preset=config.preset, budget=budget)
            cache.put(key, feats)
        fx, fit_model, prep = feats, cut.upper, (lambda a: a)
        notes.append(msg)
    else:
        fit_model = model
    weights = [w.copy() for w in model.get_weights()]
    fit_model.compile(optimizer=make_optimizer(config, start), loss=keras.losses.SparseCategoricalCrossentropy(
        from_logits=built.from_logits))
    rng = np.random.default_rng(config.seed)
    order = rng.permutation(train_idx)
    bs = config.batch_size
    rows = []
    avg, best = 0.0, math.inf
    stopped = False
    pos = 0
    for i in range(steps):
        lr = start * (end / start) ** (i / (steps - 1))
        fit_model.optimizer.learning_rate.assign(lr)
        if pos + bs > len(order):
            order, pos = rng.permutation(train_idx), 0
        b = order[pos:pos + bs]
        pos += bs
        out = fit_model.train_on_batch(prep(fx[b]), y[b])
        loss = float(out[0] if isinstance(out, (list, tuple)) else out)
        avg = beta * avg + (1 - beta) * (loss if math.isfinite(loss) else 1e9)
        smooth = avg / (1 - beta ** (i + 1))
        rows.append({"step": i, "lr": lr, "loss": loss, "smoothed": smooth})
        if progress is not None:
            progress({"stage": "lrfind", "step": i + 1, "steps": steps, "elapsed_s": round(time.monotonic() - t0, 2)})
        if not math.isfinite(loss) or (i > 0 and smooth > stop_factor * best):
            stopped = i < steps - 1
            break
        best = min(best, smooth)
        if should_cancel is not None and should_cancel():
            notes.append("cancelled")
            break
    model.set_weights(weights)
    curve = pd.DataFrame(rows, columns=LR_COLUMNS)
    suggestion, min_lr = suggest_lr(curve)
    if suggestion is None:
        message = ("No clear descent: the loss hardly falls over the range (the model may already fit these "
                   "images, or nothing trains). Check the preset and what trains"
                   + (f"; the loss blows up beyond about {curve['lr'].iloc[-1]:.0e}, so stay well below that."
                      if stopped else "."))
    else:
        message = (f"Suggested learning rate {suggestion:.1e} (steepest fall of the loss); the loss is lowest near "
                   f"{min_lr:.1e}" + (" and blows up beyond." if stopped else "."))
    return LRFinderResult(curve=curve, suggestion=suggestion, min_loss_lr=min_lr, stopped_early=stopped,
                          message=message, cache_used=cut is not None, elapsed_s=round(time.monotonic() - t0, 3),
                          notes=notes)
