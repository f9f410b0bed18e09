"""Checks on the inference pipeline: is the model fed and run at inference the way it was trained?

How a check is written (its entry in `tlviz.diagnose.registry`, ``check.finding``,
``check.threshold``, `CheckSkipped`): see `tlviz.diagnose.base.Check`. The two
``judge_<id>`` functions depend only on the inference preset, so that
`DiagnosisReport.for_preset` can judge them again without running the model.
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np

from tlviz.diagnose.base import EXAMPLES, Check, clears, jsonable
from tlviz.diagnose.context import DiagnosisContext, PresetEvidence
from tlviz.diagnose.thresholds import NORMALIZATION_MISMATCH
from tlviz.errors import CheckSkipped
from tlviz.findings import Finding
from tlviz.imagesets import RESIZE_DESCRIPTIONS
from tlviz.presets import PIXEL_PRESET, preset_snippet
from tlviz.stats import decide, format_interval, format_points, paired_difference, wilson_interval


def _decisively_closer(d_a: float, d_b: float, check: Check) -> bool:
    """Whether fingerprint distance `d_a` is decisively smaller than `d_b` (by `check`'s fingerprint thresholds)."""
    return d_b - d_a >= check.threshold("fingerprint_margin") and d_b >= check.threshold("fingerprint_ratio") * d_a


def judge_normalization_mismatch(ev: PresetEvidence, preset: str, check: Check) -> list[Finding]:
    """``normalization-mismatch``: the inference preset is clearly worse than the expected one (pure)."""
    if not ev.weights_finite:
        raise CheckSkipped("The model holds NaN or infinite weights (see weights-not-finite), so its outputs "
                           "mean nothing until that is fixed.")
    report = ev.report
    fp = report.fingerprint
    best = ev.best
    if ev.at_chance:
        raise CheckSkipped(ev.at_chance + " See no-better-than-chance.")
    if ev.bn_initial:
        raise CheckSkipped(
            f"Every BatchNormalization layer ({ev.bn_initial}) still holds its initial statistics (mean 0, variance "
            "1; see bn-statistics-mismatch), so the accuracy under each preset measures how inputs of each scale "
            "pass through layers that normalize nothing, not the preprocessing the model was trained with. Fix the "
            "statistics first, then compare presets again.")
    if best is None:
        raise CheckSkipped(f"Accuracy cannot be measured ({ev.label_note or 'no labels'}) and there is no "
                           f"label-free fingerprint ({fp.reason}), so there is no evidence of the preset the "
                           "model expects.")
    if best == preset:
        return []
    preds = report.predictions
    if preset not in preds and preset in PIXEL_PRESET:
        raise CheckSkipped(f"`{preset}` was not compared in this diagnosis. Run it again with `{preset}` as the "
                           "inference preset.")
    if ev.accuracy is None and PIXEL_PRESET.get(preset, preset) == PIXEL_PRESET.get(best, best):
        return []  # same arithmetic: the label-free fingerprint cannot tell them apart
    snippet = preset_snippet(best, ev.image_size, ev.resize)
    changed_idx = np.flatnonzero(preds[best] != preds[preset]) if preset in preds else np.array([], dtype=int)
    if ev.accuracy is not None:
        a_best, a_inf = ev.accuracy[best], ev.accuracy.get(preset)
        if a_inf is None or a_best - a_inf < check.threshold("drop"):
            return []
        # The same images under both presets: the paired interval of the drop must clear the threshold.
        d = clears(preds[best] == ev.labels, preds[preset] == ev.labels, check.threshold("drop"),
                    f"`{preset}` scores {a_inf:.1%} and `{best}` {a_best:.1%}")
        if d is None:
            return []
        if fp.ranking is not None:
            dist = dict(zip(fp.ranking["preset"], fp.ranking["distance"]))
            if preset in dist and _decisively_closer(dist[preset], dist[best], check):
                raise CheckSkipped(
                    f"The evidence conflicts: accuracy favours `{best}` ({a_best:.1%} against {a_inf:.1%} for your "
                    f"`{preset}`), but the label-free fingerprint says `{preset}` reproduces the statistics the first "
                    "BatchNormalization layer stored in training far better. That happens when the statistics "
                    "further up are off (see bn-statistics-mismatch) or the labels are wrong; no preset is "
                    "recommended until that is fixed (inference-preset-fails still judges your preset's own "
                    "accuracy).")
        right = changed_idx[(preds[best][changed_idx] == ev.labels[changed_idx])]
        evidence = {"inference_preset": preset, "expected_preset": best, "accuracy_expected": a_best,
                    "accuracy_inference": a_inf, "accuracy_by_preset": ev.accuracy,
                    "drop": d.difference, "drop_interval": [d.low, d.high],
                    "changed_predictions": int(len(changed_idx)), "n_images": len(ev.files),
                    "fingerprint_order": fp.order, "example_files": [ev.files[i] for i in right[:EXAMPLES]]}
        conflicts = ev.conflicts()
        if conflicts:
            evidence["conflicts"] = conflicts
        title = (f"Your inference preset `{preset}` scores {a_inf:.1%}; the model expects `{best}` ({a_best:.1%})")
        lead = (f"Preparing images with `{preset}` changes {len(changed_idx)} of {len(ev.files)} predictions and "
                f"costs {a_best - a_inf:.1%} accuracy (95 % interval {format_points(d.low, d.high)} on "
                f"{d.n} images).")
        if conflicts:
            lead += (" The evidence on the expected preset conflicts: " + "; ".join(conflicts) + ". `" + best
                     + "` is named for its accuracy on your labelled images; check the labels and the "
                     "BatchNormalization statistics (bn-statistics-mismatch) before relying on it.")
    else:
        dist = dict(zip(fp.ranking["preset"], fp.ranking["distance"]))
        d_best, d_inf = float(dist[best]), float(dist.get(preset, np.inf))
        if not _decisively_closer(d_best, d_inf, check):
            return []
        conf = report.confidences.get(best)
        order = changed_idx[np.argsort(-conf[changed_idx])] if conf is not None else changed_idx
        evidence = {"inference_preset": preset, "expected_preset": best, "fingerprint_distance": dist,
                    "fingerprint_layer": fp.layer, "changed_predictions": int(len(changed_idx)),
                    "n_images": len(ev.files), "accuracy_note": ev.label_note,
                    "example_files": [ev.files[i] for i in order[:EXAMPLES]]}
        title = (f"The label-free fingerprint says the model expects `{best}`, not your inference preset `{preset}`")
        lead = (f"With `{best}` the activations at '{fp.layer}' match the statistics stored in training "
                f"(distance {d_best:.3g}); with `{preset}` they do not ({d_inf:.3g}); {len(changed_idx)} of "
                f"{len(ev.files)} predictions change.")
    return [check.finding(title, evidence,
                          f"{lead} Prepare images with `{best}` at inference:\n```python\n{snippet}\n```")]


def _describe_pipeline(ev: PresetEvidence, preset: str, check: Check) -> dict:
    """How the model does under `preset` on the labelled images: accuracy against chance, and its top class.

    Returns:
        ``{"accuracy", "interval", "chance", "n", "top", "top_name", "share", "label_share", "excess",
        "at_chance", "collapsed", "other", "drop", "below"}``; ``other`` is the most accurate preset when it
        is not `preset` (else None) and ``drop`` the paired difference to it; ``at_chance`` / ``collapsed`` /
        ``below`` are True, False or None (the 95 % intervals cannot decide).
    """
    labels = np.asarray(ev.labels, dtype=np.int64)
    preds = np.asarray(ev.report.predictions[preset], dtype=np.int64)
    n = len(labels)
    k = max(int(preds.max(initial=0)), int(labels.max(initial=0))) + 1
    names = list(getattr(ev.report, "output_names", None) or [])
    k = max(k, len(names))
    correct = int(np.sum(preds == labels))
    lo, hi = wilson_interval(correct, n)
    level = ev.chance + check.threshold("margin")
    # At chance: the whole interval within `margin` of chance (no-better-than-chance's rule for one preset).
    at_chance = None if correct / n < level else False
    if hi < level:
        at_chance = True
    counts = np.bincount(preds, minlength=k)
    top = int(counts.argmax())
    d = paired_difference(preds == top, labels == top)
    looks = d.accuracy_a >= check.threshold("share") and d.difference >= check.threshold("excess")
    collapsed = decide(d.low, d.high, check.threshold("excess")) if looks else False
    other = ev.most_accurate if ev.most_accurate != preset else None
    drop, below = None, False
    if other is not None and other in ev.report.predictions:
        drop = paired_difference(np.asarray(ev.report.predictions[other]) == labels, preds == labels)
        if drop.difference >= check.threshold("drop"):
            below = decide(drop.low, drop.high, check.threshold("drop"))
    return {"other": other, "drop": drop, "below": below, "accuracy": correct / n, "interval": (lo, hi), "chance": ev.chance, "n": n, "top": top,
            "top_name": names[top] if top < len(names) else str(top), "share": d.accuracy_a,
            "label_share": d.accuracy_b, "excess": d, "at_chance": at_chance, "collapsed": collapsed,
            "histogram": {(names[c] if c < len(names) else str(c)): int(counts[c]) for c in np.argsort(-counts)
                          if counts[c]}}


def judge_inference_preset_fails(ev: PresetEvidence, preset: str, check: Check) -> list[Finding]:
    """``inference-preset-fails``: under the user's own preset the model guesses, gives one class to nearly
    every image, or scores far below another preset on the same images, whatever the cause (pure).

    The checks about the model (prediction-collapse, bn-statistics-mismatch, the probes) judge it under the
    preset it scores best with; this one judges the pipeline the user runs. It leaves the finding to
    normalization-mismatch when that names a preset that works for these images, and to no-better-than-chance
    when no preset is better than chance, so that one problem gives one finding; when the evidence on the
    expected preset conflicts (normalization-mismatch is skipped), or a fault other than the preprocessing
    breaks the user's preset, it is the finding that says the pipeline fails, and which evidence conflicts.
    """
    if not ev.weights_finite:
        raise CheckSkipped("The model holds NaN or infinite weights (see weights-not-finite), so its outputs "
                           "mean nothing until that is fixed.")
    if ev.report is None or ev.labels is None or ev.accuracy is None:
        raise CheckSkipped(f"Accuracy under your preset cannot be measured ({ev.label_note or 'no labels'}), so "
                           "whether your pipeline guesses cannot be told.")
    if preset not in ev.report.predictions:
        raise CheckSkipped(f"`{preset}` was not compared in this diagnosis. Run it again with `{preset}` as the "
                           "inference preset.")
    if len(np.unique(ev.labels)) < 2:
        raise CheckSkipped("Only one class is present in the image set, so a model that answers one class "
                           "cannot be told from one that is right.")
    p = _describe_pipeline(ev, preset, check)
    lo, hi = p["interval"]
    d = p["excess"]
    broken = p["at_chance"] is True or p["collapsed"] is True or p["below"] is True
    if not broken:
        if None in (p["at_chance"], p["collapsed"], p["below"]):
            raise CheckSkipped(
                f"Too few images to decide whether your pipeline works: under your `{preset}` the model scores "
                f"{p['accuracy']:.1%} on {p['n']} images (95 % interval {format_interval(lo, hi)}, chance "
                f"{p['chance']:.1%}) and gives '{p['top_name']}' to {p['share']:.1%} of them (excess over the labels "
                f"{format_points(d.low, d.high)})"
                + (f"; `{p['other']}` scores {p['drop'].difference * 100:.1f} points more on the same images "
                   f"({format_points(p['drop'].low, p['drop'].high)})" if p["drop"] is not None else "")
                + "; the intervals reach both sides of the thresholds. Add images to decide.")
        return []
    if ev.at_chance:
        raise CheckSkipped("No preset makes the model better than chance, yours included: no-better-than-chance "
                           "reports it, and says whether the head or the base fails.")
    if preset == ev.best and p["at_chance"] is not True and p["below"] is not True:
        raise CheckSkipped(f"Your `{preset}` is also the preset the model scores best with, so prediction-collapse, "
                           "which judges the model under that preset, reports the class that absorbs the others.")
    # normalization-mismatch's verdict on the same evidence, with that check's thresholds (only its title is read)
    mismatch_entry = replace(check, detects="", judge=judge_normalization_mismatch, thresholds=NORMALIZATION_MISMATCH)
    try:
        mismatch = judge_normalization_mismatch(ev, preset, mismatch_entry)
    except CheckSkipped:
        mismatch = []
    if mismatch:
        raise CheckSkipped(f"normalization-mismatch reports your `{preset}` and names the preset that works for "
                           f"these images: {mismatch[0].title}.")
    conflicts = ev.conflicts()
    top_acc = ev.most_accurate
    if p["at_chance"] and p["collapsed"]:
        what = (f"gives '{p['top_name']}' to {p['share']:.0%} of the images and scores {p['accuracy']:.1%}, "
                f"no better than chance ({p['chance']:.1%})")
    elif p["at_chance"]:
        what = f"scores {p['accuracy']:.1%}, no better than chance ({p['chance']:.1%})"
    elif p["collapsed"]:
        what = f"gives '{p['top_name']}' to {p['share']:.0%} of the images, which hold {p['label_share']:.0%} of that class"
    else:
        what = (f"scores {p['accuracy']:.1%}, {p['drop'].difference * 100:.0f} points below `{top_acc}` "
                f"({ev.accuracy[top_acc]:.1%}) on the same images")
    others = ""
    fp = ev.report.fingerprint
    if top_acc is not None and top_acc != preset:
        others = "" if p["below"] and not p["at_chance"] and not p["collapsed"] else \
            f"`{top_acc}` scores {ev.accuracy[top_acc]:.1%}"
        if fp.best is not None and fp.best != top_acc:
            others += f"{' but ' if others else ''}the fingerprint prefers `{fp.best}`"
    title = f"Under your inference preset `{preset}` the model {what}" + (f"; {others}" if others else "")
    evidence = {"inference_preset": preset, "accuracy_inference": p["accuracy"], "accuracy_interval": [lo, hi],
                "chance": p["chance"], "n_images": p["n"], "at_chance": bool(p["at_chance"]),
                "predicted_class": p["top_name"], "predicted_share": p["share"], "label_share": p["label_share"],
                "excess_interval": [d.low, d.high], "collapsed": bool(p["collapsed"]),
                "prediction_histogram": p["histogram"], "accuracy_by_preset": ev.accuracy,
                "below_most_accurate": bool(p["below"]),
                "drop": None if p["drop"] is None else p["drop"].difference,
                "drop_interval": None if p["drop"] is None else [p["drop"].low, p["drop"].high],
                "most_accurate_preset": top_acc, "fingerprint_order": ev.report.fingerprint.order,
                "fingerprint_distance": ev.fingerprint_distances, "conflicts": conflicts}
    lead = (f"Whatever the other presets do, the images your code prepares with `{preset}` get this: on "
            f"{p['n']} images the model scores {p['accuracy']:.1%} (95 % interval {format_interval(lo, hi)}; "
            f"always answering the most common class scores {p['chance']:.1%}) and predicts '{p['top_name']}' for "
            f"{p['share']:.1%} of them (the labels hold {p['label_share']:.1%}; excess "
            f"{format_points(d.low, d.high)})"
            + (f"; `{p['other']}` scores {p['drop'].difference * 100:.1f} points more on the same images (95 % "
               f"interval {format_points(p['drop'].low, p['drop'].high)})" if p["drop"] is not None else "") + ".")
    if conflicts:
        why = (" The evidence on which preset the model expects conflicts, so tlviz recommends none: "
               + "; ".join(conflicts) + ". Measurements disagree like this when BatchNormalization statistics "
               "further up are off (bn-statistics-mismatch), when the stored statistics were not made with the "
               "images the model was trained on, or when the labels are wrong.")
    elif top_acc is not None and top_acc != preset:
        why = (f" `{top_acc}` scores {ev.accuracy[top_acc]:.1%} on the same images, but not clearly enough above "
               "your preset for normalization-mismatch to name it; the cause may lie elsewhere.")
    else:
        why = " No preset does clearly better, so the cause lies in the model rather than the preprocessing."
    fix = (lead + why + " Find out what your pipeline really feeds the model and what comes out, on images "
           "prepared exactly as your inference code prepares them:\n```python\nimport numpy as np\n\n"
           "probs = model.predict(batch)  # batch: your inference code's own preprocessing\n"
           "print(batch.min(), batch.max(), batch.mean())  # the scale the model receives\n"
           "print(np.bincount(probs.argmax(axis=1), minlength=probs.shape[1]))  # one class for nearly all?\n```")
    return [check.finding(title, evidence, fix)]


def judge_double_normalization(ev: PresetEvidence, preset: str, check: Check) -> list[Finding]:
    """``double-normalization``: a Rescaling / Normalization layer at the input plus a normalizing preset (pure).

    Fires when a Rescaling / Normalization layer at the model's input means it
    wants raw 0-255 pixels and the preset normalizes again, unless the
    measurements show the model does clearly better with a normalizing preset
    than with `raw` (then it was trained on normalized images and
    normalization-mismatch speaks instead).
    """
    from tlviz.normalize.findings import expects_raw_pixels

    report = ev.report
    builtin = list(report.builtin_preprocessing)
    if preset == "raw" or not expects_raw_pixels(builtin):
        return []
    acc = ev.accuracy or {}
    if ev.best not in (None, "raw") and ev.best_by == "accuracy" and "raw" in acc:
        if acc[ev.best] - acc["raw"] >= check.threshold("drop"):
            return []
    layers = "; ".join(b for b in builtin if b.startswith(("Rescaling", "Normalization")))
    snippet = preset_snippet("raw", ev.image_size, ev.resize)
    return [check.finding(
        f"The model normalizes its input itself, and your inference code applies `{preset}` on top",
        {"builtin_preprocessing": builtin, "inference_preset": preset,
         "accuracy_raw": acc.get("raw"), "accuracy_inference": acc.get(preset)},
        (f"The model already normalizes its input ({layers}), so it expects raw 0-255 pixels, but your inference "
         f"code applies `{preset}` as well: the model sees images scaled twice. Feed raw pixels (the `raw` preset) "
         f"and let the model's own layer do the scaling:\n```python\n{snippet}\n```"))]


#: Files kept per confusion-matrix cell in a label-order finding's evidence (the cell gallery shows them).
CELL_FILES = 12


def _cells(labels, preds, files, names) -> list[dict]:
    """The non-empty cells of a confusion matrix with their first files, largest off-diagonal cell first.

    Returns:
        ``[{"true": class name, "output": model output index, "output_name", "count", "files"}]``.
    """
    cells = []
    for t in range(len(names)):
        for j in range(len(names)):
            idx = np.flatnonzero((labels == t) & (preds == j))
            if len(idx):
                cells.append({"true": names[t], "output": j, "output_name": names[j], "count": int(len(idx)),
                              "files": [files[i] for i in idx[:CELL_FILES]]})
    return sorted(cells, key=lambda c: (c["true"] == c["output_name"], -c["count"]))


def check_label_order_mismatch(ctx: DiagnosisContext, check: Check) -> list[Finding]:
    """``label-order-mismatch``: the confusion matrix is close to a permutation."""
    ctx.require_labels()
    ctx.require_finite()
    lo = ctx.label_order
    if lo is None:
        raise CheckSkipped("Only one class is present in the image set, so no class order can be compared.")
    if lo.undecided:
        raise CheckSkipped(lo.undecided)
    if not lo.fires:
        return []
    names = ctx.match.output_names
    inverse = np.empty(ctx.k, dtype=np.int64)
    inverse[lo.assignment] = np.arange(ctx.k)
    order = [names[int(t)] for t in inverse]  # the class behind each model output
    mapping = {names[t]: int(lo.assignment[t]) for t in range(ctx.k)}
    moved = {n: j for n, j in mapping.items() if names.index(n) != j}
    report = ctx.normalization
    preds = report.predictions[lo.preset]
    labels = ctx.match.labels
    wrong = np.flatnonzero((preds != labels) & (preds == lo.assignment[labels]))
    lines = "\n".join(order)
    return [check.finding(
        (f"The class order differs from the model's output order: accuracy {lo.accuracy:.1%}, "
         f"{lo.accuracy_with_mapping:.1%} once the classes are re-ordered"),
        {"preset": lo.preset, "accuracy": lo.accuracy, "accuracy_with_mapping": lo.accuracy_with_mapping,
         "gain_interval": list(lo.gain_interval), "n_images": lo.n_images,
         "mapping": mapping, "moved_classes": moved, "model_output_order": order, "classes": names,
         "confusion_matrix": lo.confusion, "example_files": [report.files[i] for i in wrong[:EXAMPLES]],
         "cells": _cells(labels, preds, report.files, names)},
        ("The model is right, but about other class names: its output i is the class listed at position i below, "
         "not the i-th folder. Use this order for the class names in your inference code, or put it in a "
         "`labels.txt` at the top of the image set (one class per line):\n```python\n"
         f"class_names = {order!r}  # model output order\n"
         "predicted = class_names[int(probs.argmax())]\n```\nlabels.txt:\n```text\n" + lines + "\n```"),
    )]


def check_input_resized(ctx: DiagnosisContext, check: Check) -> list[Finding]:
    """``input-resized``: images were resized or had their channels converted to fit the model."""
    images = ctx.images
    if not images.original_sizes:
        raise CheckSkipped("The image set does not record the images' original sizes (it was not loaded from files).")
    h, w = images.image_size
    sizes = [tuple(s) for s in images.original_sizes]
    resized = [s for s in sizes if s != (w, h)]
    target_mode = "RGB" if images.images.shape[-1] == 3 else "L"
    converted = {m: int(n) for m, n in images.original_modes.items() if m != target_mode}
    if not resized and not converted:
        return []
    common = {}
    for s in resized:
        key = f"{s[0]}x{s[1]}"
        common[key] = common.get(key, 0) + 1
    common = dict(sorted(common.items(), key=lambda kv: -kv[1])[:5])
    parts = []
    if resized:
        how = RESIZE_DESCRIPTIONS.get(images.resize, images.resize)
        parts.append(f"{len(resized)} of {len(sizes)} images were resized to {w}x{h} "
                     f"(most often from {next(iter(common))}) with {how}")
    if converted:
        parts.append(f"{sum(converted.values())} images were converted to {target_mode} from "
                     f"{', '.join(f'{m} ({n})' for m, n in converted.items())}")
    return [check.finding(
        "; ".join(parts[:1] + [p[0].lower() + p[1:] for p in parts[1:]]),
        {"target_size": f"{w}x{h}", "n_images": len(sizes), "n_resized": len(resized),
         "original_sizes": common, "resize_method": images.resize, "target_mode": target_mode,
         "converted_modes": converted},
        (f"The model sees {w}x{h} {target_mode} images. Your inference code must resize and convert the same "
         "way as training did; a different resize method or cropping shifts accuracy (the Normalization page "
         "compares them). This prepares one image like tlviz did:\n```python\n"
         f"{preset_snippet(ctx.working_preset, (h, w), images.resize)}\n```"),
    )]


def _sensitivity(ctx: DiagnosisContext, check: Check) -> list[Finding]:
    """`check`'s finding from `tlviz.normalize.normalization_findings`, with this check's severity and area."""
    from tlviz.normalize.findings import normalization_findings, undecided_findings

    ctx.require_labels()
    ctx.require_finite()
    lo = ctx.label_order
    if lo is not None and lo.fires:
        raise CheckSkipped("The class order differs from the model's output order (see label-order-mismatch); "
                           "fix that first, then compare resize methods and channel orders.")
    report = ctx.normalization
    if report.best_preset is None or report.best_preset != ctx.working_preset:
        return []  # the variants were measured against another preset: no clean comparison
    out = []
    for f in normalization_findings(report, report.best_preset):
        if f.id == check.id:
            out.append(check.adopt(f, evidence=jsonable(f.evidence)))
    if not out:
        undecided = undecided_findings(report, report.best_preset).get(check.id)
        if undecided:  # the interval of the drop straddles the threshold: neither a finding nor "fine"
            raise CheckSkipped(undecided)
    return out


def check_resize_sensitive(ctx: DiagnosisContext, check: Check) -> list[Finding]:
    """``resize-sensitive`` (info): accuracy depends on the resize method (needs the image source)."""
    if ctx.source is None:
        raise CheckSkipped("Resize methods can only be compared with the original image files (pass `source=`).")
    return _sensitivity(ctx, check)


def check_channel_order_sensitive(ctx: DiagnosisContext, check: Check) -> list[Finding]:
    """``channel-order-sensitive`` (info): accuracy depends on RGB vs BGR order."""
    if ctx.images.images.shape[-1] != 3:
        raise CheckSkipped("Channel order only applies to three-channel images.")
    return _sensitivity(ctx, check)
