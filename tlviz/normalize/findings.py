"""What the results mean for the user's inference code.

- `changed_predictions(report, a, b)` — images whose prediction changes between two presets.
- `expects_raw_pixels(builtin_preprocessing)` — whether the model normalizes its input itself.
- `double_normalization(report, inference_preset)` — the warning when it does and the inference
  code normalizes again.
- `normalization_findings(report, inference_preset)` — the inference-pipeline findings.
- `accuracy_drop(report, a, b)` — how much setting `b` loses against `a` on the same images, with its
  interval (`tlviz.stats.PairedDifference`).
- `undecided_findings(report, inference_preset)` — ``{finding id: sentence}`` for the accuracy
  comparisons whose interval straddles the drop (too few images to decide); Diagnose skips those checks
  with the sentence.

Every accuracy comparison is paired (the same images under both settings): a finding needs the whole
95 % interval of the drop (`tlviz.stats.paired_difference`) at or above `NOTICEABLE_DROP`; its evidence
shows the interval and the number of images.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from tlviz.findings import Finding
from tlviz.imagesets import RESIZE_DESCRIPTIONS
from tlviz.normalize.results import CHANGE_COLUMNS, Evaluation, NormalizationReport, Setting
from tlviz.stats import NOTICEABLE_DROP, PairedDifference, decide, format_points, paired_difference

_RAW_PIXEL_LAYERS = ("Rescaling", "Normalization")


def expects_raw_pixels(builtin: list[str]) -> bool:
    """Whether the model's own input layers normalize (so it wants raw 0-255 pixels).

    Args:
        builtin: the model's `LoadedModel.builtin_preprocessing` descriptions.

    Returns:
        True when one of them is a Rescaling or Normalization layer.
    """
    return any(b.startswith(_RAW_PIXEL_LAYERS) for b in builtin)


def changed_predictions(report: NormalizationReport, a: str, b: str, limit: int | None = None) -> pd.DataFrame:
    """Images whose prediction changes between preset `a` and preset `b`.

    Args:
        report: a `NormalizationReport`.
        a: a preset name in the report (usually `best_preset`).
        b: another preset name (usually the one the user's inference code uses).
        limit: keep at most this many rows. Defaults to all.

    Returns:
        DataFrame with `CHANGE_COLUMNS` (``index`` into the image set); images
        right under `a` and wrong under `b` first, then by confidence under `a`.
    """
    preds, confs = report.predictions, report.confidences
    for name in (a, b):
        if name not in preds:
            raise ValueError(f"Preset {name!r} was not evaluated. Use one of: {', '.join(preds)}.")
    pa, pb = preds[a], preds[b]
    idx = np.flatnonzero(pa != pb)
    names = report.output_names
    labels = report.labels
    df = pd.DataFrame({
        "index": idx.astype(int),
        "file": [report.files[i] for i in idx],
        "label": [names[labels[i]] for i in idx] if labels is not None else [None] * len(idx),
        "prediction_a": [names[pa[i]] for i in idx],
        "confidence_a": confs[a][idx].astype(float),
        "prediction_b": [names[pb[i]] for i in idx],
        "confidence_b": confs[b][idx].astype(float),
        "correct_a": (pa[idx] == labels[idx]) if labels is not None else [None] * len(idx),
        "correct_b": (pb[idx] == labels[idx]) if labels is not None else [None] * len(idx),
    }, columns=CHANGE_COLUMNS)
    if labels is not None and len(df):
        df["_o"] = ~(df["correct_a"].astype(bool) & ~df["correct_b"].astype(bool))
        df = df.sort_values(["_o", "confidence_a"], ascending=[True, False], kind="mergesort").drop(columns="_o")
    else:
        df = df.sort_values("confidence_a", ascending=False, kind="mergesort")
    df = df.reset_index(drop=True)
    return df if limit is None else df.head(limit)


def double_normalization(report: NormalizationReport, inference_preset: str) -> str | None:
    """A warning sentence when normalized images are fed to a model that normalizes itself.

    Args:
        report: a `NormalizationReport`.
        inference_preset: the preset the user's inference code applies.

    Returns:
        None when the model has no Rescaling / Normalization layer at its input,
        the inference preset is `raw`, or the measurements show the model was
        itself trained on normalized images (its best preset is not `raw`;
        then `normalization_findings` reports any mismatch as ``preset-mismatch``).
    """
    if not report.expects_raw_pixels or inference_preset == "raw":
        return None
    if report.best_preset not in (None, "raw"):
        return None
    layers = "; ".join(b for b in report.builtin_preprocessing if b.startswith(_RAW_PIXEL_LAYERS))
    return (f"Double normalization: the model already normalizes its input ({layers}), so it expects raw "
            f"0-255 pixels, but your inference code applies `{inference_preset}` as well. Feed raw pixels "
            "(the `raw` preset) and let the model's own layer do the scaling.")


def _paired(a: Evaluation, b: Evaluation) -> PairedDifference:
    """`a`'s accuracy minus `b`'s on the images both evaluated (matched by file)."""
    if a.files == b.files:
        return paired_difference(a.correct, b.correct)
    pos = {f: i for i, f in enumerate(b.files)}
    pairs = [(i, pos[f]) for i, f in enumerate(a.files) if f in pos]
    ia = np.array([i for i, _ in pairs], dtype=int)
    ib = np.array([j for _, j in pairs], dtype=int)
    return paired_difference(a.correct[ia], b.correct[ib])


def accuracy_drop(report: NormalizationReport, a: str, b: str) -> PairedDifference | None:
    """How much accuracy setting `b` loses against setting `a` on the same images.

    Args:
        report: a `NormalizationReport` with accuracy available.
        a: the reference setting: a preset name, or a setting's label in ``report.evaluations``
            (e.g. ``"tf · BGR"``).
        b: the other setting's label.

    Returns:
        The `PairedDifference` (accuracy of `a` minus accuracy of `b`, with its 95 %
        interval), or None when either was not evaluated or accuracy is hidden.
    """
    presets = report._preset_evals()
    ea, eb = (presets.get(x) or report.evaluations.get(x) for x in (a, b))
    if ea is None or eb is None or ea.correct is None or eb.correct is None:
        return None
    return _paired(ea, eb)


def _best_snippet(report: NormalizationReport) -> str:
    resize = report.best_setting.resize if report.best_setting else "bilinear"
    return report.snippet(Setting(report.preset_object(report.best_preset), resize))


def _drop_sentence(d: PairedDifference) -> str:
    """``"12.0 points (95 % interval +7.5 to +16.4 points, 901 images)"``."""
    return f"{d.difference * 100:.1f} points (95 % interval {format_points(d.low, d.high)}, {d.n} images)"


def _drop_evidence(d: PairedDifference) -> dict:
    return {"drop": d.difference, "drop_interval": [d.low, d.high], "n_images": d.n,
            "only_expected_right": d.only_a, "only_variant_right": d.only_b}


def _undecided(what: str, a: str, b: str, d: PairedDifference) -> str:
    return (f"Too few images to decide whether {what}: `{b}` scores {d.accuracy_b:.1%} against {d.accuracy_a:.1%} "
            f"for `{a}` on {d.n} images, a drop of {d.difference * 100:.1f} points (95 % interval "
            f"{format_points(d.low, d.high)}), which straddles the {NOTICEABLE_DROP * 100:g} points that count. "
            "More images narrow the interval.")


def _comparisons(report: NormalizationReport, inference_preset: str):
    """``(finding id, reference label, other label, what the comparison asks)`` for each accuracy comparison."""
    best = report.best_preset
    if not report.accuracy_available or best is None:
        return
    if inference_preset in report.accuracy and inference_preset != best:
        yield "preset-mismatch", best, inference_preset, f"`{inference_preset}` costs accuracy against `{best}`"
    rows = report.results
    for kind, fid, what in (("resize", "resize-sensitive", "the resize method"),
                            ("channel order", "channel-order-sensitive", "the channel order")):
        sub = rows[rows["kind"] == kind]
        if len(sub):
            worst = sub.sort_values("accuracy").iloc[0]
            yield fid, best, str(worst["setting"]), f"accuracy depends on {what}"


def undecided_findings(report: NormalizationReport, inference_preset: str = "unit") -> dict[str, str]:
    """The accuracy comparisons these images cannot decide, each with the sentence saying so.

    A comparison is undecided when the 95 % interval of the drop straddles
    `NOTICEABLE_DROP`: neither a finding nor a clean result can be claimed.

    Args:
        report: a `NormalizationReport`.
        inference_preset: the preset the user's inference code applies.
            Defaults to `"unit"`.

    Returns:
        ``{finding id: sentence}`` for ``preset-mismatch``, ``resize-sensitive`` and
        ``channel-order-sensitive`` where undecided (often empty).
    """
    out = {}
    for fid, a, b, what in _comparisons(report, inference_preset):
        d = accuracy_drop(report, a, b)
        if d is not None and decide(d.low, d.high, NOTICEABLE_DROP) is None:
            out[fid] = _undecided(what, a, b, d)
    return out


def normalization_findings(report: NormalizationReport, inference_preset: str = "unit") -> list[Finding]:
    """Inference-pipeline findings from a report, most severe first.

    Args:
        report: a `NormalizationReport`.
        inference_preset: the preset the user's inference code applies.
            Defaults to `"unit"`.

    Returns:
        Findings with ids ``double-normalization``, ``preset-mismatch``,
        ``resize-sensitive`` and ``channel-order-sensitive`` (each only when it applies).
    """
    from tlviz.findings import sort_findings

    out: list[Finding] = []
    acc = report.accuracy
    dn = double_normalization(report, inference_preset)
    if dn:
        out.append(Finding(
            id="double-normalization", severity="error", area="inference",
            title="The model normalizes its input itself, and the inference code normalizes again",
            evidence={"builtin_preprocessing": report.builtin_preprocessing, "inference_preset": inference_preset,
                      "accuracy_raw": acc.get("raw"), "accuracy_inference": acc.get(inference_preset)},
            fix=dn))
    best = report.best_preset
    if best is not None and inference_preset in acc and inference_preset != best and not report.accuracy_available \
            and report.fingerprint.order and report.fingerprint.order[0] != inference_preset:
        out.append(Finding(
            id="preset-mismatch", severity="warning", area="inference",
            title=f"The fingerprint suggests `{best}`, not your inference preset `{inference_preset}`",
            evidence={"fingerprint": report.fingerprint.order,
                      "distance_expected": float(report.fingerprint.ranking["distance"].iloc[0])},
            fix=f"Prepare images with `{best}` at inference:\n```python\n{_best_snippet(report)}\n```"))
    for fid, ref, other, _ in _comparisons(report, inference_preset):
        d = accuracy_drop(report, ref, other)
        if d is None or not decide(d.low, d.high, NOTICEABLE_DROP):
            continue  # no drop, or too few images to decide (`undecided_findings`)
        if fid == "preset-mismatch":
            changed = int(np.sum(report.predictions[ref] != report.predictions[other]))
            out.append(Finding(
                id=fid, severity="error", area="inference",
                title=f"Your inference preset `{other}` is not the one the model expects (`{ref}`)",
                evidence={"accuracy_expected": acc[ref], "accuracy_inference": acc[other], **_drop_evidence(d),
                          "changed_predictions": changed, "n": report.n_images},
                fix=(f"`{other}` costs {_drop_sentence(d)} against `{ref}`. Prepare images with `{ref}` at "
                     f"inference:\n```python\n{_best_snippet(report)}\n```")))
            continue
        row = report.results[report.results["setting"] == other].iloc[0]
        resize = fid == "resize-sensitive"
        what = "resize method" if resize else "channel order"
        how = (RESIZE_DESCRIPTIONS.get(row["resize"], row["resize"]) if resize
               else "BGR channel order (what OpenCV's `cv2.imread` returns)")
        out.append(Finding(
            id=fid, severity="warning", area="inference",
            title=f"Accuracy depends on the {what}",
            evidence={"accuracy_expected": d.accuracy_a, "accuracy_variant": d.accuracy_b, "variant": other,
                      **_drop_evidence(d)},
            fix=(f"With {how} accuracy drops from {d.accuracy_a:.1%} to {d.accuracy_b:.1%}, "
                 f"{_drop_sentence(d)}. Make the inference code use the same {what} as training (the snippet on "
                 "the Normalization page).")))
    return sort_findings(out)
