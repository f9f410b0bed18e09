"""`repair`: apply one or more repairs to a copy of the model, prove each on held-out images, save the copy.

The order is fixed, whatever order the repairs were asked in (`ORDER`, explained by `ORDER_NOTE`):

1. ``bn-statistics-mismatch`` (AdaBN) first: with wrong BatchNormalization statistics the
   predictions the next steps estimate from mean little;
2. ``label-order-mismatch``: the class order is read from the predictions of the model with its
   statistics repaired;
3. ``normalization-mismatch`` / ``double-normalization``: the input layers change only the format
   the model takes, not what it computes, so they come after everything estimated from images,
   which runs on images prepared with the preset the model expects (the *working preset*);
4. ``no-trainable-weights`` / ``head-frozen`` last: they change only ``trainable`` flags, and the
   copy is compiled after the last change, ready for ``fit``.

Honest measurement: when any step estimates something from the images (the expected preset, the
class order, the statistics), the images are split once, seeded and class by class, into an
estimation half and a held-out half (`tlviz.repair.chain.split_halves`); every accuracy is measured
on the held-out half only, each step's ``n_fit`` / ``n_eval`` say how many images each side had,
and each comparison carries the 95 % paired interval (`tlviz.stats.paired_difference`). The
repaired file itself is loaded back (``safe_mode=True``) and must reproduce the copy's outputs on
held-out images (within `FILE_TOLERANCE`) before it is returned.
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np

from tlviz.errors import RepairRefused
from tlviz.repair.chain import Chain
from tlviz.repair.freezing import FREEZING_IDS
from tlviz.repair.preprocessing import DOUBLE_VARIANTS, TARGETS
from tlviz.repair.result import RepairResult

#: Every repair, in the order a chain applies them.
ORDER = ("bn-statistics-mismatch", "label-order-mismatch", "normalization-mismatch", "double-normalization",
         "no-trainable-weights", "head-frozen")
#: What each repair does, in one line (the command's help, the page's buttons).
REPAIRS = {
    "normalization-mismatch": "bake the preprocessing the model expects into it (Rescaling, and a channel flip for "
                              "caffe), so it takes raw pixels or what your code sends",
    "label-order-mismatch": "re-order the output layer's units so outputs follow the image set's class order",
    "bn-statistics-mismatch": "re-estimate every BatchNormalization layer's moving statistics on your images (AdaBN)",
    "no-trainable-weights": "a compiled copy with the head (and optionally the top block) trainable",
    "head-frozen": "a compiled copy with the head (and optionally the top block) trainable",
    "double-normalization": "a copy without the model's own input scaling, or keep it and send raw pixels",
}
#: Repairs that estimate something from the images (so the images are split in two).
ESTIMATING = ("bn-statistics-mismatch", "label-order-mismatch", "normalization-mismatch")
ORDER_NOTE = ("BatchNormalization statistics first (wrong statistics make every prediction the next steps read "
              "meaningless), then the class order (read from the predictions of the repaired statistics), then the "
              "input layers (they change the format the model takes, not what it computes; the steps before run on "
              "images prepared as the model expects), then the trainable flags, compiled last.")
DEFAULTS = {"inference_preset": "unit", "target": "raw", "double_normalization": "drop-layer", "top_block": False}


def check_fixes(fixes) -> list[str]:
    """The requested repair ids in the order they are applied, or `RepairRefused` naming the unknown ones.

    Args:
        fixes: ids (a list, or one comma-separated string).

    Returns:
        The ids, duplicates dropped, in `ORDER`.
    """
    if isinstance(fixes, str):
        fixes = [f for f in fixes.split(",")]
    ids = [str(f).strip() for f in fixes if str(f).strip()]
    if not ids:
        raise RepairRefused(f"No repair named. Give one or more of: {', '.join(ORDER)}.")
    from tlviz.diagnose.registry import CHECK_IDS

    for i in ids:
        if i not in REPAIRS:
            if i in CHECK_IDS:
                raise RepairRefused(f"`{i}` has no automatic repair: follow the fix the diagnosis shows. Repairs "
                                    f"exist for: {', '.join(ORDER)}.")
            raise RepairRefused(f"Unknown repair {i!r}. Repairs exist for: {', '.join(ORDER)}.")
    if "normalization-mismatch" in ids and "double-normalization" in ids:
        raise RepairRefused("`normalization-mismatch` and `double-normalization` both change how the model's input "
                            "is scaled: choose one of them.")
    return [i for i in ORDER if i in ids]


def repair_params(params: dict | None) -> dict:
    """The parameters of a repair in their stored form (the analysis job's key), checked.

    Args:
        params: ``{"fixes": [...], "inference_preset", "target", "double_normalization", "top_block"}``;
            missing entries take `DEFAULTS`.

    Returns:
        The complete, checked dict (fixes in `ORDER`).

    Raises:
        RepairRefused: an unknown key, repair or option.
    """
    from tlviz.presets import PRESETS

    params = dict(params or {})
    unknown = set(params) - set(DEFAULTS) - {"fixes"}
    if unknown:
        raise RepairRefused(f"Unknown repair parameter(s) {', '.join(sorted(unknown))}. Use fixes, "
                            + ", ".join(DEFAULTS) + ".")
    out = {**DEFAULTS, **params, "fixes": check_fixes(params.get("fixes") or [])}
    if out["inference_preset"] not in PRESETS:
        raise RepairRefused(f"Unknown inference preset {out['inference_preset']!r}. Use one of: {', '.join(PRESETS)}.")
    if out["target"] not in TARGETS:
        raise RepairRefused(f"Unknown target {out['target']!r}: use `raw` (the repaired model takes raw pixels) or "
                            "`inference` (it takes what your code sends).")
    if out["double_normalization"] not in DOUBLE_VARIANTS:
        raise RepairRefused(f"Unknown double-normalization variant {out['double_normalization']!r}. Use one of: "
                            f"{', '.join(DOUBLE_VARIANTS)}.")
    out["top_block"] = bool(out["top_block"])
    return out


def repair(loaded, images, fixes, inference_preset: str = "unit", *, target: str = "raw",
           double_normalization: str = "drop-layer", top_block: bool = False, progress=None) -> RepairResult:
    """Repair a copy of the model and prove it on the images.

    Args:
        loaded: the `LoadedModel` (never changed).
        images: the `ImageSet` at the model's input size (labelled, its classes the model's outputs,
            for every repair but the two freezing ones).
        fixes: finding ids to repair (`REPAIRS`; a list or a comma-separated string).
        inference_preset: the preset the user's inference code applies. Defaults to `"unit"`.
        target: for ``normalization-mismatch``: ``"raw"`` (the repaired model takes raw 0-255 pixels)
            or ``"inference"`` (it takes what `inference_preset` sends). Defaults to `"raw"`.
        double_normalization: for ``double-normalization``: ``"drop-layer"`` (a copy without the
            model's own scaling) or ``"feed-raw"`` (the model unchanged; send raw pixels).
            Defaults to `"drop-layer"`.
        top_block: for the freezing repairs: also unfreeze the base's top block. Defaults to `False`.
        progress: ``progress(fraction, text)``. Defaults to none.

    Returns:
        The `RepairResult`, with the repaired `.keras` file's bytes.

    Raises:
        RepairRefused: an unknown repair, or one that does not apply (the message says why).
    """
    from tlviz.normalize.inputs import label_match
    from tlviz.presets import PRESET_RESIZE, applicable_presets
    from tlviz.repair.preprocessing import choose_expected, repair_normalization

    t0 = time.monotonic()
    params = repair_params({"fixes": fixes, "inference_preset": inference_preset, "target": target,
                            "double_normalization": double_normalization, "top_block": top_block})
    ids = params["fixes"]
    say = progress or (lambda f, t: None)
    channels = int(images.images.shape[-1])
    teachable = bool(getattr(loaded, "teachable_machine", False)) or inference_preset == "teachable"
    if inference_preset not in applicable_presets(channels, teachable=True):
        raise RepairRefused(f"Preset `{inference_preset}` needs 3-channel RGB images; these have {channels}.")
    measured = [i for i in ids if i not in FREEZING_IDS]
    match = label_match(loaded, images)
    k = 2 if loaded.n_outputs == 1 else int(loaded.n_outputs)
    if measured and match.labels is None:
        raise RepairRefused(f"{', '.join(f'`{i}`' for i in measured)} must be proven on labelled images whose classes "
                            f"are the model's outputs: {match.reason or 'these images carry no labels.'}")
    from tlviz.repair.graph import copy_model

    chain = Chain(copy_model(loaded.model), images.images, match.labels if measured else None, k, inference_preset,
                  estimate=any(i in ESTIMATING for i in ids), progress=say)
    if "double-normalization" in ids:
        chain.working = "raw"  # what the model's own input layer expects
    steps = {i: _step(i, chain, params, loaded, match, check_only=True) for i in ids}  # refuse early
    expected, scores = None, {}
    share = 0.85 / (len(ids) + (1 if "normalization-mismatch" in ids else 0))
    at = 0.0
    if "normalization-mismatch" in ids:
        chain.span(at, at + share)
        presets = list(applicable_presets(channels, teachable=teachable))
        expected, scores = choose_expected(chain, presets, with_mapping="label-order-mismatch" in ids,
                                           adabn="bn-statistics-mismatch" in ids)
        chain.working = expected
        at += share
    original = chain.model
    for i in ids:
        chain.span(at, at + share)
        if i == "normalization-mismatch":
            steps[i] = repair_normalization(chain, expected, scores, params["target"], expected in PRESET_RESIZE)
        else:
            steps[i] = _step(i, chain, params, loaded, match)
        _no_clear_gain(steps[i])
        at += share
    chain.span(0.85, 1.0)
    chain.say(0.0, "Saving the repaired model and measuring the saved file…")
    result = _finish(loaded, chain, original, [steps[i] for i in ids], params, match)
    result.seconds = time.monotonic() - t0
    say(1.0, "Done.")
    return result


def _no_clear_gain(step) -> None:
    """Say so when the held-out images do not show this step's gain clearly (its interval reaches 0)."""
    if step.measure != "accuracy" or not step.interval or step.interval[0] > 0:
        return
    step.notes.append(
        f"The {step.n_eval} held-out images show no clear gain from `{step.id}` (95 % interval of the gain "
        f"{step.interval[0] * 100:+.1f} to {step.interval[1] * 100:+.1f} points): the copy is not proven better "
        "than the original; keep the original unless more images say otherwise.")


def _step(fix_id, chain, params, loaded, match, check_only: bool = False):
    from tlviz.repair.adabn import repair_bn_statistics
    from tlviz.repair.freezing import repair_freezing
    from tlviz.repair.labels import repair_label_order
    from tlviz.repair.preprocessing import repair_double_normalization

    if fix_id == "bn-statistics-mismatch":
        return repair_bn_statistics(chain, check_only)
    if fix_id == "label-order-mismatch":
        return repair_label_order(chain, list(match.output_names), check_only)
    if fix_id == "double-normalization":
        return repair_double_normalization(chain, params["double_normalization"], check_only)
    if fix_id in FREEZING_IDS:
        return repair_freezing(chain, fix_id, params["top_block"], loaded.n_outputs, check_only)
    if fix_id == "normalization-mismatch":
        if chain.labels is None:
            raise RepairRefused("`normalization-mismatch` needs labelled images to find the preset the model expects.")
        chain.require_halves("find the preset the model expects")
        return None
    raise RepairRefused(f"Unknown repair {fix_id!r}.")  # check_fixes lets none through


def _finish(loaded, chain, original, steps, params, match) -> RepairResult:
    """Save the repaired copy (with its metadata), load the file back and measure it."""
    from tlviz.jsonsafe import json_safe
    from tlviz.models import keras_bytes, load_model, summarize
    from tlviz.repair.freezing import FREEZING_IDS as _freezing

    model = chain.model
    if not any(s.id in _freezing for s in steps):
        _keep_compile(loaded.model, model)
    stem = Path(loaded.filename or loaded.name or "model").stem
    name = f"{loaded.name}_repaired" if not str(loaded.name).endswith("_repaired") else loaded.name
    metadata = {k: v for k, v in dict(loaded.metadata).items() if k not in ("repairs",)}
    metadata.pop("converted_from", None)
    metadata["preset"] = chain.feed
    names = next((s.details.get("class_names") for s in steps if s.id == "label-order-mismatch"), None)
    if names is None and loaded.class_names is None and chain.labels is not None:
        names = list(match.output_names)
    # One name per output unit: tlviz (`tlviz.models.load_model`) refuses other counts, so a single-unit
    # (sigmoid) model keeps its class order in the recorded repairs only.
    if names and len(names) == loaded.n_outputs:
        metadata["class_names"] = list(names)
    metadata["repairs"] = [s.to_json() | {"details": None} for s in steps]
    metadata["repaired_from"] = {"name": loaded.name, "file": loaded.filename, "sha256": loaded.sha256}
    metadata = json_safe(metadata)
    renamed = _renamed(model, name)
    summary = summarize(renamed, filename=f"{stem}_repaired.keras", metadata=metadata)
    data = keras_bytes(summary)
    reloaded = load_model(data, filename=f"{stem}_repaired.keras")  # the file, as anyone will load it
    file_check = _file_check(chain, model, reloaded.model)
    overall = None
    if chain.labels is not None:
        overall = chain.compare((original, chain.inference_preset), (model, chain.feed))
        overall["file_max_abs_difference"] = file_check
    how = (f"split once (seed 0, class by class) into {len(chain.fit)} images to estimate from and {len(chain.eval)} "
           "held-out images every accuracy is measured on" if chain.estimate else
           (f"all {len(chain.eval)} images measure; nothing is estimated from them" if chain.labels is not None else
            "no images needed: nothing is measured on them"))
    return RepairResult(
        steps=steps, order_note=ORDER_NOTE, split={"seed": 0, "n_fit": int(len(chain.fit)),
                                                   "n_eval": int(len(chain.eval)) if chain.labels is not None else 0,
                                                   "how": how},
        inference_preset=chain.inference_preset, feed_preset=chain.feed, overall=overall, model_bytes=data,
        filename=f"{stem}_repaired.keras", model_name=renamed.name, metadata=metadata,
        source={"name": loaded.name, "file": loaded.filename, "sha256": loaded.sha256}, params=params)


#: The saved file is checked against the copy in memory on this many held-out images.
FILE_CHECK_IMAGES = 16
#: Largest difference between the outputs of the file and of the copy it was saved from.
FILE_TOLERANCE = 1e-5


def _file_check(chain, model, reloaded) -> float:
    """The largest output difference between the saved file and the copy in memory on a few held-out images.

    Raises:
        RepairRefused: the file does not reproduce the copy (it would be a bug: nothing is saved then).
    """
    from tlviz.memory import forward
    from tlviz.presets import apply_preset

    idx = chain.eval[:FILE_CHECK_IMAGES]
    x = apply_preset(chain.images[idx], chain.feed)
    diff = float(np.max(np.abs(forward(model)(x) - forward(reloaded)(x)))) if len(idx) else 0.0
    if not diff <= FILE_TOLERANCE:
        raise RepairRefused(f"The saved repaired model does not reproduce the repaired copy (outputs differ by up to "
                            f"{diff:.3g}); nothing was saved. Please report this with the model.")
    return diff


def _renamed(model, name: str):
    """`model` under another name (the name is part of its config)."""
    try:
        model.name = name
    except AttributeError:
        pass
    return model


def _keep_compile(src, dst) -> None:
    """Compile `dst` as `src` was compiled, when it was and Keras can say how."""
    if not getattr(src, "compiled", False):
        return
    try:
        config = src.get_compile_config()
        if config:
            dst.compile_from_config(config)
    except Exception:  # a loss or metric Keras cannot rebuild: the copy is saved uncompiled
        pass
