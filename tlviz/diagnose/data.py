"""Checks on the image set itself: turned photos, copies, and labels the images contradict.

- ``exif-orientation`` (`check_exif_orientation`): images whose EXIF orientation is not
  "normal". Keras's ``load_img`` and ``image_dataset_from_directory`` ignore the tag, phones
  and browsers apply it, so a pipeline that trains one way and predicts the other sees turned
  images. How many, and the accuracy on them with and without the turn (the same images,
  a paired 95 % interval); the turned versions are decoded again from the original files.
- ``duplicate-images`` (`check_duplicate_images`): exact or near duplicates
  (`tlviz.duplicates`: a difference hash, confirmed on thumbnails) under two classes, or
  enough copies within classes that a random split leaks them into validation.
- ``likely-mislabelled`` (`check_likely_mislabelled`): out-of-fold predictions of a linear
  probe (`tlviz.diagnose.outoffold`: multinomial logistic regression, out of fold) on the frozen base's
  features (the head's input, as `tlviz.diagnose.probe` takes them) confidently name another
  class than the image's folder. Copies of one image stay in one fold, so a copy cannot vouch
  for itself. The probe is trained on the folder labels, not on the model's head: it works
  for a new set of classes (before fine-tuning) as well.

How a check is written (its registry entry, ``check.finding``, ``check.threshold``,
`CheckSkipped`): see `tlviz.diagnose.base.Check`.
"""

from __future__ import annotations

from collections import Counter

import numpy as np

from tlviz.diagnose.base import Check
from tlviz.diagnose.context import DiagnosisContext
from tlviz.diagnose.outoffold import FOLDS, mislabel_sample, out_of_fold
from tlviz.errors import CheckSkipped
from tlviz.findings import Finding
from tlviz.stats import chance_level, format_interval, paired_difference, wilson_interval

#: Pairs of duplicates shown in the evidence (as thumbnails on the page).
PAIRS_SHOWN = 12
#: Suspected mislabelled images shown in the evidence (a ranked gallery on the page).
SUSPECTS_SHOWN = 16


# -- shared measurements -----------------------------------------------------------------

def image_duplicates(ctx: DiagnosisContext, check: Check | None = None):
    """The diagnosed image set's copies (`tlviz.duplicates.DuplicateGroups`), found once per diagnosis.

    Args:
        ctx: the `DiagnosisContext`; the groups are kept on it.
        check: the ``duplicate-images`` entry, whose thresholds the search uses. Defaults to `None`
            (`tlviz.duplicates.find_duplicates`'s defaults, which are the same thresholds).

    Returns:
        The `DuplicateGroups`.
    """
    from tlviz.duplicates import find_duplicates

    cached = ctx.__dict__.get("_duplicate_groups")
    if cached is None:
        if check is not None:
            cached = find_duplicates(ctx.images.images, int(check.threshold("max_bits")), check.threshold("tolerance"))
        else:
            cached = find_duplicates(ctx.images.images)
        ctx.__dict__["_duplicate_groups"] = cached
    return cached


def _predict(ctx: DiagnosisContext, images: np.ndarray, preset: str) -> np.ndarray:
    """Predicted classes of `images` under `preset`, in batches planned from the memory budget."""
    from tlviz.memory import forward, plan_batch
    from tlviz.outputs import predicted_classes
    from tlviz.presets import apply_preset

    batch = plan_batch(ctx.model, n=len(images)).batch_size  # an inference pass (the default mode)
    run = forward(ctx.model)
    out = [predicted_classes(run(apply_preset(images[i:i + batch], preset))) for i in range(0, len(images), batch)]
    return np.concatenate(out).astype(np.int64) if out else np.empty(0, dtype=np.int64)


# -- exif-orientation ---------------------------------------------------------------------

def _orientations(ctx: DiagnosisContext) -> np.ndarray:
    images = ctx.images
    if images.orientation_known:
        return np.asarray(images.orientations, dtype=np.int64)
    if ctx.source is None:
        raise CheckSkipped("The images' EXIF orientation was not recorded and their original files cannot be "
                           "opened again (the image set was built in memory). Load it from a folder or a .zip.")
    found = ctx.source.orientations(images.files)
    return np.array([found.get(f, 1) for f in images.files], dtype=np.int64)


def check_exif_orientation(ctx: DiagnosisContext, check: Check) -> list[Finding]:
    """``exif-orientation``: images carry an EXIF orientation other than "normal"."""
    from tlviz.imagesets import ORIENTATION_NAMES

    images = ctx.images
    orient = _orientations(ctx)
    turned = np.flatnonzero(orient != 1)
    if not len(turned):
        return []
    kinds = {ORIENTATION_NAMES[int(o)]: int(c) for o, c in sorted(Counter(orient[turned].tolist()).items())}
    files = [images.files[i] for i in turned]
    as_loaded = "as stored (the tag ignored)" if images.orientation == "ignore" else "turned as the tag says"
    other = "apply" if images.orientation == "ignore" else "ignore"
    other_words = "turned as the tag says" if other == "apply" else "as stored (the tag ignored)"
    evidence = {"turned_images": int(len(turned)), "n_images": len(images), "orientations": kinds,
                "images_seen_by_the_model": as_loaded, "example_files": files[:8]}
    measured, note = None, None
    labels = ctx.preset_evidence.labels if ctx.weights_finite and not ctx.unlabelled else None
    if ctx.source is None:
        note = "the original files cannot be opened again, so the turned versions could not be compared"
    elif labels is None:
        note = ctx.match.reason or "without labels, accuracy cannot be measured"
    else:
        preset = ctx.working_preset
        ctx.say(0.2, f"Decoding the {len(turned)} turned images {other_words}…")
        again = ctx.source.load(images.image_size, int(images.images.shape[-1]), images.resize,
                                orientation=other, only=files)
        where = {f: i for i, f in enumerate(again.files)}
        keep = [k for k, f in enumerate(files) if f in where]
        if not keep:
            note = "the turned images could not be decoded again"
        else:
            idx = turned[keep]
            ctx.say(0.5, f"Predicting the {len(idx)} turned images {other_words}…")
            other_preds = _predict(ctx, again.images[[where[files[k]] for k in keep]], preset)
            current = np.asarray(ctx.normalization.predictions[preset], dtype=np.int64)[idx]
            truth = np.asarray(labels)[idx]
            d = paired_difference(other_preds == truth, current == truth)
            measured = d
            evidence.update({"preset": preset, "accuracy_as_loaded": d.accuracy_b, "accuracy_other_way": d.accuracy_a,
                             "difference": d.difference, "difference_interval": [d.low, d.high],
                             "changed_predictions": int(np.sum(other_preds != current)), "compared_images": d.n})
    if note:
        evidence["accuracy_note"] = note
    title = (f"{len(turned)} of {len(images)} images carry an EXIF orientation other than normal "
             f"({', '.join(f'{c} {k}' for k, c in kinds.items())})")
    if measured is not None:
        effect = (f"On these {measured.n} images the model scores {measured.accuracy_b:.1%} {as_loaded} and "
                  f"{measured.accuracy_a:.1%} {other_words} (difference {measured.describe()}). ")
    else:
        effect = f"Accuracy with and without the turn was not compared: {note}. "
    fix = ("Phones store a photo's pixels as the sensor saw them plus an EXIF tag saying how to turn them; Keras's "
           "`load_img` and `image_dataset_from_directory` ignore the tag (tensorflow issue 49834) while phones, "
           "browsers and `PIL.ImageOps.exif_transpose` apply it, so training and inference can see the same photo "
           "turned differently. " + effect + "Make both sides do the same, best by writing the turn into the files "
           "once:\n```python\nfrom pathlib import Path\nfrom PIL import Image, ImageOps\n\n"
           "for path in Path(\"images\").rglob(\"*.jp*g\"):\n    with Image.open(path) as img:\n"
           "        fixed = ImageOps.exif_transpose(img)  # turns the pixels and drops the tag\n"
           "    fixed.save(path, quality=95)\n```")
    return [check.finding(title, evidence, fix)]


# -- duplicate-images ---------------------------------------------------------------------

def check_duplicate_images(ctx: DiagnosisContext, check: Check) -> list[Finding]:
    """``duplicate-images``: copies under two classes, or enough copies within classes to leak across a split."""
    from tlviz.duplicates import thumbnail_difference

    images = ctx.images
    n = len(images)
    if n < 2:
        raise CheckSkipped("A single image cannot have a duplicate.")
    ctx.say(0.1, f"Hashing {n} images…")
    found = image_duplicates(ctx, check)
    if not len(found):
        return []
    labels = np.asarray(images.labels)
    classes = found.classes(labels)
    cross = [g for g, c in zip(found.groups, classes) if len(c) > 1]
    within_copies = int(sum(len(g) - 1 for g, c in zip(found.groups, classes) if len(c) == 1))
    share = within_copies / n
    if not cross and share < check.threshold("leak_share"):
        return []
    names = images.class_names
    pairs = []
    order = sorted(range(len(found.groups)), key=lambda k: (len(classes[k]) == 1, k))
    for k in order:
        g = found.groups[k]
        for other in g[1:]:  # each copy against the group's first image (copies may be joined through a third)
            i, j = int(g[0]), int(other)
            pairs.append({"a": images.files[i], "b": images.files[j], "class_a": names[labels[i]],
                          "class_b": names[labels[j]],
                          "difference": thumbnail_difference(images.images[i], images.images[j]),
                          "exact": bool(np.array_equal(images.images[i], images.images[j]))})
            if len(pairs) >= PAIRS_SHOWN:
                break
        if len(pairs) >= PAIRS_SHOWN:
            break
    evidence = {"groups": len(found), "images_in_groups": int(sum(len(g) for g in found.groups)),
                "cross_class_groups": len(cross), "copies_within_classes": within_copies,
                "share_within_classes": share, "exact_groups": int(sum(found.exact)), "n_images": n,
                "hash_bits": found.max_bits, "tolerance": found.tolerance, "pairs": pairs,
                "example_files": [f for p in pairs[:4] for f in (p["a"], p["b"])]}
    parts = []
    if cross:
        parts.append(f"{len(cross)} group{'s' if len(cross) != 1 else ''} of copies under two or more classes")
    if within_copies:
        parts.append(f"{within_copies} extra cop{'ies' if within_copies != 1 else 'y'} within classes "
                     f"({share:.1%} of the images)")
    title = "Duplicate images: " + " and ".join(parts)
    lead = []
    if cross:
        lead.append("The same image under two labels teaches the model nothing but noise, and caps accuracy: decide "
                    "which class each belongs to and delete the other copy.")
    if within_copies:
        lead.append("Copies within a class land on both sides of a random train / validation split, so validation "
                    "accuracy measures memory instead of generalisation: remove the extra copies, or split by group "
                    "so that copies stay on one side.")
    fix = (" ".join(lead) + " Exact copies and near copies (re-encoded or resized) are found by a difference hash "
           "and confirmed on thumbnails:\n```python\nfrom sklearn.model_selection import GroupShuffleSplit\n"
           "from tlviz.duplicates import duplicate_group_ids\n\n"
           "groups = duplicate_group_ids(images)  # one id per image; copies share it\n"
           "split = GroupShuffleSplit(n_splits=1, test_size=0.2, random_state=0)\n"
           "train_idx, val_idx = next(split.split(images, labels, groups))\n```")
    return [check.finding(title, evidence, fix)]


# -- likely-mislabelled ---------------------------------------------------------------------

def _features_for(ctx: DiagnosisContext, preset: str, indices: np.ndarray) -> tuple[np.ndarray, str]:
    """Features at the head's input for `indices` (those the preset comparison kept are reused)."""
    from tlviz.diagnose.probe import layer_features, tapped_features

    setup = ctx.probe_setup
    idx, layer = setup["idx"], setup["name"]
    out = np.zeros((len(indices), 0))
    tapped = tapped_features(ctx, preset, indices)
    if tapped is not None:  # the preset comparison kept them all: no pass of its own
        return tapped, layer
    have = {}
    tapped = tapped_features(ctx, preset, setup["sample"])
    if tapped is not None:
        have = {int(i): tapped[k] for k, i in enumerate(setup["sample"])}
    missing = [int(i) for i in indices if int(i) not in have]
    if missing:
        ctx.say(0.1, f"Features of the frozen base for {len(missing)} images…")
        computed = layer_features(ctx.model, idx, ctx.images.images[np.array(missing)], preset)
        have.update({i: computed[k] for k, i in enumerate(missing)})
    out = np.stack([have[int(i)] for i in indices]) if len(indices) else out
    return out, layer


def check_likely_mislabelled(ctx: DiagnosisContext, check: Check) -> list[Finding]:
    """``likely-mislabelled``: out-of-fold probe predictions confidently contradict images' labels."""
    ctx.require_labelled()
    ctx.require_finite()
    images = ctx.images
    all_labels = np.asarray(images.labels, dtype=np.int64)
    chosen = mislabel_sample(all_labels, len(images.class_names))
    if not len(chosen):
        raise CheckSkipped(f"The probe needs at least two classes with {FOLDS} or more images each (one per fold).")
    usable = np.unique(all_labels[chosen])
    preset = ctx.working_preset
    feats, layer = _features_for(ctx, preset, chosen)
    if not np.all(np.isfinite(feats)):
        raise CheckSkipped("The base's features contain NaN or infinite values, so no probe can be trained on them.")
    remap = {int(c): k for k, c in enumerate(usable)}
    y = np.array([remap[int(c)] for c in all_labels[chosen]], dtype=np.int64)
    groups = image_duplicates(ctx).group_ids()[chosen]
    ctx.say(0.6, f"Out-of-fold probe on {len(chosen)} images ({FOLDS} folds)…")
    probs = out_of_fold(feats, y, groups, len(usable))
    pred = probs.argmax(axis=1)
    n = len(y)
    right = int(np.sum(pred == y))
    lo, hi = wilson_interval(right, n)
    chance = chance_level(y, len(usable))
    if lo < check.threshold("min_probe_accuracy"):
        raise CheckSkipped(
            f"The probe on the base's features gets {right / n:.1%} of {n} held-out images right (95 % interval "
            f"{format_interval(lo, hi)}; chance {chance:.1%}), below the {check.threshold('min_probe_accuracy'):.0%} "
            "it needs before its disagreement with a label means anything. The base's features do not separate "
            "these classes well enough (see pretraining-no-better-than-random).")
    confident = probs[np.arange(n), pred]
    suspect = np.flatnonzero((pred != y) & (confident >= check.threshold("confidence")))
    share = len(suspect) / n
    min_share = check.threshold("min_share")
    if share < min_share:
        return []
    share_lo, share_hi = wilson_interval(len(suspect), n)
    if share_lo < min_share:  # the share itself is measured on these images: its interval must clear the threshold
        raise CheckSkipped(
            f"Too few images to decide whether labels are wrong: a probe on the base's features confidently names "
            f"another class for {len(suspect)} of {n} images ({share:.1%}, 95 % interval "
            f"{format_interval(share_lo, share_hi)}), which may be no more than the {min_share:.0%} of hard images "
            "any probe misjudges. More images narrow the interval.")
    suspect = suspect[np.argsort(-confident[suspect], kind="stable")]
    names = [images.class_names[int(c)] for c in usable]
    rows = [{"file": images.files[int(chosen[i])], "label": names[y[i]], "predicted": names[pred[i]],
             "confidence": float(confident[i]), "label_probability": float(probs[i, y[i]])}
            for i in suspect[:SUSPECTS_SHOWN]]
    moves = Counter((r["label"], r["predicted"]) for r in rows)
    evidence = {"suspects": len(suspect), "share": share, "share_interval": [share_lo, share_hi], "n_scored": n,
                "n_images": len(images),
                "probe_accuracy": right / n, "probe_accuracy_interval": [lo, hi], "chance": chance,
                "feature_layer": layer, "preset": preset, "folds": FOLDS, "ranked_suspects": rows,
                "example_files": [r["file"] for r in rows[:8]]}
    most = ", ".join(f"'{a}' → '{b}' ({c})" for (a, b), c in moves.most_common(3))
    title = (f"{len(suspect)} image{'s' if len(suspect) != 1 else ''} look mislabelled: a probe that never saw them "
             f"confidently names another class")
    fix = (f"A linear probe on the frozen base's features ('{layer}', under `{preset}`), trained on the other folds, "
           f"gets {right / n:.1%} of the {n} images right (95 % interval {format_interval(lo, hi)}), yet gives "
           f"{len(suspect)} images ({share:.1%}) another class with at least {check.threshold('confidence'):.0%} "
           f"confidence (most often {most}). Look at the ranked suspects: move each truly mislabelled image to its "
           "class folder (or delete it), then train again. Labels the images contradict cap the accuracy any model "
           "can reach, and fine-tuning on them teaches the mistakes:\n```python\nimport shutil\n\n"
           "shutil.move(\"images/cat/0042.jpg\", \"images/dog/0042.jpg\")  # one suspect, checked by eye\n```")
    return [check.finding(title, evidence, fix)]

