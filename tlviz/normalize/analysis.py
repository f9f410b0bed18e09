"""The full comparison: `analyze(model, images, ...)` -> `NormalizationReport`.

Order of work: the label-free fingerprint, one evaluation per preset (and a custom one), then,
against the best preset, each other resize method and the BGR channel order. The ranking and
the verdict on the results are in `tlviz.normalize.ranking`.
"""

from __future__ import annotations

import time
from typing import Callable

import pandas as pd

from tlviz.errors import NormalizationRefused
from tlviz.imagesets import RESIZE_METHODS, ImageSet
from tlviz.normalize.findings import expects_raw_pixels
from tlviz.normalize.inference import evaluate_setting
from tlviz.normalize.inputs import as_loaded, check_shapes, image_array, label_match
from tlviz.normalize.labelfree import fingerprint
from tlviz.normalize.ranking import (
    agreement_note,
    pick_best_preset,
    inconclusive_note,
    per_class_table,
    ranked_table,
    chance_verdict,
)
from tlviz.normalize.results import (
    DEFAULT_FINGERPRINT_IMAGES,
    PER_CLASS_COLUMNS,
    Evaluation,
    FeatureTap,
    Fingerprint,
    NormalizationReport,
    Setting,
)
from tlviz.presets import PRESETS, CustomPreset, applicable_presets, preset_resize


def analyze(model, images: ImageSet, *, source=None, custom: CustomPreset | None = None,
            presets: tuple | list | None = None, variants: bool = True,
            batch_size: int | None = None, fingerprint_images: int = DEFAULT_FINGERPRINT_IMAGES,
            precomputed_fingerprint: Fingerprint | None = None,
            evaluate: Callable[[Setting], Evaluation] | None = None,
            on_fingerprint: Callable[[Fingerprint], None] | None = None,
            progress: Callable[[float, str], None] | None = None,
            on_result: Callable[[pd.DataFrame], None] | None = None,
            feature_tap: FeatureTap | None = None) -> NormalizationReport:
    """Evaluate the model under every preset, then vary resize and channel order.

    Order of work: the label-free fingerprint first (reported through
    `on_fingerprint`), then one evaluation per preset (and `custom`), then,
    against the best preset, each other resize method and BGR channel order,
    one at a time.

    Args:
        model: a `LoadedModel` (its recorded class names are used) or Keras model.
        images: the `ImageSet` decoded at the model's input size.
        source: the `ImageSource` the images came from; needed for the resize
            variants (skipped without it). Defaults to `None`.
        custom: an extra user-typed `CustomPreset`. Defaults to `None`.
        presets: named presets to compare. Defaults to every applicable one.
        variants: also vary resize method and channel order. Defaults to `True`.
        batch_size: images per forward pass. Defaults to the batch that fits the
            memory budget (`tlviz.memory.plan_batch`, at most `DEFAULT_BATCH_SIZE`).
        fingerprint_images: sample size of the fingerprint. Defaults to
            `DEFAULT_FINGERPRINT_IMAGES`.
        precomputed_fingerprint: reuse a `fingerprint(...)` result. Defaults to
            computing it.
        evaluate: ``evaluate(setting) -> Evaluation`` used instead of
            `evaluate_setting` (a page passes a cached version). Defaults to `None`.
        on_fingerprint: called with the `Fingerprint` as soon as it is ready.
        progress: called as ``progress(fraction, text)`` while working.
        on_result: called with the partial ranked table after each setting.
        feature_tap: keep an inner layer's features under every named / custom
            preset (``Evaluation.features``). Defaults to `None`.

    Returns:
        A `NormalizationReport`.

    Raises:
        NormalizationRefused: the images do not fit the model, or a preset
            does not apply to them.
    """
    t_start = time.perf_counter()
    loaded = as_loaded(model)
    arr = image_array(images)
    check_shapes(loaded, arr)
    channels = int(arr.shape[-1])
    names = (list(presets) if presets is not None
             else list(applicable_presets(channels, teachable=bool(getattr(loaded, "teachable_machine", False)))))
    if source is None:  # a named setting with its own resize needs the original images
        names = [p for p in names if preset_resize(p, images.resize) == images.resize]
    for p in names:
        if p not in applicable_presets(channels, teachable=True):
            raise NormalizationRefused(f"Preset {p!r} does not apply to {channels}-channel images. Use one of: "
                                       f"{', '.join(applicable_presets(channels))}.")
    if not names and custom is None:
        raise NormalizationRefused("No preset to compare. Pass at least one preset name or a custom preset.")
    match = label_match(loaded, images)
    accuracy_available = match.labels is not None
    say = progress or (lambda fraction, text: None)

    say(0.0, "Taking the label-free fingerprint…")
    fp = precomputed_fingerprint or fingerprint(loaded, images, presets=names, custom=custom,
                                                max_images=fingerprint_images, batch_size=batch_size)
    if on_fingerprint is not None:
        on_fingerprint(fp)
    t_fp = time.perf_counter()

    r0 = images.resize
    base = ([Setting(p, preset_resize(p, r0), base_resize=preset_resize(p, r0)) for p in names]
            + ([Setting(custom, r0, base_resize=r0)] if custom else []))
    n_variants = ((len(RESIZE_METHODS) - 1) if source is not None else 0) + (1 if channels == 3 else 0)
    total = len(base) + (n_variants if variants else 0)
    evals: list[Evaluation] = []

    def run(setting: Setting, done: int) -> None:
        text = f"Evaluating {setting.label} ({done + 1} of {total})…"
        say(done / total, text)
        if evaluate is not None:
            ev = evaluate(setting)
        else:
            def batch_progress(k, n):
                say((done + k / n) / total, text)
            ev = evaluate_setting(loaded, images, setting, source=source, batch_size=batch_size,
                                  progress=batch_progress, labels=match if setting.resize == images.resize else None,
                                  tap=feature_tap if setting.kind in ("preset", "custom") else None)
        evals.append(ev)
        if on_result is not None:
            on_result(ranked_table(evals, fp, accuracy_available))

    for k, s in enumerate(base):
        run(s, k)
    t_presets = time.perf_counter()

    best_preset, best_by = pick_best_preset(ranked_table(evals, fp, accuracy_available), fp, accuracy_available)
    k = 2 if loaded.n_outputs == 1 else int(loaded.n_outputs)
    inconclusive, chance = chance_verdict(evals, match, k, loaded.name)
    if inconclusive:  # the variants are compared against a best setting: there is none
        best_preset, best_by = None, None
    if variants and best_preset is not None:
        best_obj = custom if custom is not None and best_preset == custom.name else best_preset
        rb = preset_resize(best_obj, r0)
        extra = []
        if source is not None:
            extra += [Setting(best_obj, m, base_resize=rb) for m in RESIZE_METHODS if m != rb]
        if channels == 3:
            extra.append(Setting(best_obj, rb, "BGR", base_resize=rb))
        for k, s in enumerate(extra):
            run(s, len(base) + k)
    say(1.0, "Done.")
    t_end = time.perf_counter()

    table = ranked_table(evals, fp, accuracy_available)
    best_preset, best_by = pick_best_preset(table, fp, accuracy_available)  # the final table has the last word
    if inconclusive:
        best_preset, best_by = None, None
        table["is_best"] = False
    by_label = {e.setting.label: e for e in evals}
    best_setting = by_label[table["setting"].iloc[0]].setting if len(table) else None
    named = [p for p in table[table["kind"] == "preset"]["preset"]] if accuracy_available else (fp.order or [])
    named = [p for p in named if p in PRESETS]
    builtin = list(loaded.builtin_preprocessing)
    return NormalizationReport(
        model_name=loaded.name,
        image_size=(int(arr.shape[1]), int(arr.shape[2])),
        n_images=int(len(arr)),
        results=table,
        per_class=per_class_table(evals, match) if accuracy_available else pd.DataFrame(columns=PER_CLASS_COLUMNS),
        evaluations=by_label,
        accuracy_available=accuracy_available,
        accuracy_note=match.reason,
        best_preset=best_preset,
        best_by=best_by,
        best_named_preset=named[0] if named and best_by else None,
        best_setting=best_setting if best_by else None,
        fingerprint=fp,
        agreement_note=(inconclusive_note(fp) if inconclusive else
                        agreement_note(best_preset if best_by == "accuracy" else None, fp, match.reason, table)),
        builtin_preprocessing=builtin,
        expects_raw_pixels=expects_raw_pixels(builtin),
        output_names=match.output_names,
        files=list(images.files),
        labels=match.labels,
        custom=custom,
        inconclusive=inconclusive,
        chance=chance,
        seconds={"fingerprint": fp.seconds if precomputed_fingerprint is None else 0.0,
                 "presets": t_presets - t_fp, "variants": t_end - t_presets, "total": t_end - t_start},
    )
