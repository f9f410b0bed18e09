"""What the results mean for the user's inference code.

- `changed_predictions(report, a, b)` — images whose prediction changes between two presets.
- `expects_raw_pixels(builtin_preprocessing)` — whether the model normalizes its input itself.
- `double_normalization(report, inference_preset)` — the warning when it does and the inference
  code normalizes again.
- `normalization_findings(report, inference_preset)` — the inference-pipeline findings.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from tlviz.findings import Finding
from tlviz.imagesets import RESIZE_DESCRIPTIONS
from tlviz.normalize.results import CHANGE_COLUMNS, NormalizationReport, Setting
from tlviz.stats import NOTICEABLE_DROP

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
    if best is not None and inference_preset in acc and inference_preset != best:
        snippet = report.snippet(Setting(report.preset_object(best), report.best_setting.resize
                                         if report.best_setting else "bilinear"))
        if report.accuracy_available:
            drop = acc[best] - acc[inference_preset]
            if drop >= NOTICEABLE_DROP:
                changed = int(np.sum(report.predictions[best] != report.predictions[inference_preset]))
                out.append(Finding(
                    id="preset-mismatch", severity="error", area="inference",
                    title=f"Your inference preset `{inference_preset}` is not the one the model expects (`{best}`)",
                    evidence={"accuracy_expected": acc[best], "accuracy_inference": acc[inference_preset],
                              "changed_predictions": changed, "n": report.n_images},
                    fix=f"Prepare images with `{best}` at inference:\n```python\n{snippet}\n```"))
        elif report.fingerprint.order and report.fingerprint.order[0] != inference_preset:
            out.append(Finding(
                id="preset-mismatch", severity="warning", area="inference",
                title=f"The fingerprint suggests `{best}`, not your inference preset `{inference_preset}`",
                evidence={"fingerprint": report.fingerprint.order,
                          "distance_expected": float(report.fingerprint.ranking["distance"].iloc[0])},
                fix=f"Prepare images with `{best}` at inference:\n```python\n{snippet}\n```"))
    if report.accuracy_available and best is not None:
        ref = acc[best]
        rows = report.results
        for kind, fid, what in (("resize", "resize-sensitive", "resize method"),
                                ("channel order", "channel-order-sensitive", "channel order")):
            sub = rows[rows["kind"] == kind]
            if not len(sub):
                continue
            worst = sub.sort_values("accuracy").iloc[0]
            if ref - worst["accuracy"] >= NOTICEABLE_DROP:
                how = (RESIZE_DESCRIPTIONS.get(worst["resize"], worst["resize"]) if kind == "resize"
                       else "BGR channel order (what OpenCV's `cv2.imread` returns)")
                out.append(Finding(
                    id=fid, severity="warning", area="inference",
                    title=f"Accuracy depends on the {what}",
                    evidence={"accuracy_expected": ref, "accuracy_variant": float(worst["accuracy"]),
                              "variant": str(worst["setting"])},
                    fix=(f"With {how} accuracy drops from {ref:.1%} to {worst['accuracy']:.1%}. Make the inference "
                         f"code use the same {what} as training (the snippet on the Normalization page).")))
    return sort_findings(out)
