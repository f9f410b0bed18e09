"""Small charts and tables for the Diagnose page's finding cards: pure functions of a finding's evidence.

- `evidence_table(evidence)` — the evidence's numbers as a two-column DataFrame.
- `comparison_frame(finding)` / `comparison_chart(frame)` — bars of the measured
  accuracies (normalization-mismatch, bn-statistics-mismatch,
  pretraining-no-better-than-random, no-better-than-chance, double-normalization,
  label-order-mismatch).
- `finding_chart(finding)` — the chart that helps for a finding, or None: the
  confusion heatmap (`confusion_chart`) for label-order-mismatch, images per class
  (`class_counts`, the flagged classes marked) for class-imbalance and too-few-images,
  predictions per class (the absorbing class marked) for prediction-collapse, the
  comparison otherwise (exif-orientation: accuracy as loaded vs turned; likely-mislabelled:
  the probe against chance).
"""

from __future__ import annotations

import altair as alt
import pandas as pd

from tlviz.charts import palette
from tlviz.charts.confusion import confusion_chart
from tlviz.charts.overview import class_counts
from tlviz.findings import Finding
from tlviz.evidence import evidence_text

# Evidence keys shown as charts or image strips rather than in the table.
_NOT_IN_TABLE = ("confusion_matrix", "example_files", "classes", "pairs", "ranked_suspects", "cells")


def evidence_table(evidence: dict) -> pd.DataFrame:
    """The evidence as rows of (what, value) strings for people (`evidence_text`); matrices and file lists left
    out (they are drawn as charts and images). The raw numbers stay in the report's JSON."""
    rows = [{"evidence": k.replace("_", " "), "value": evidence_text(k, v)}
            for k, v in evidence.items() if k not in _NOT_IN_TABLE]
    return pd.DataFrame(rows, columns=["evidence", "value"])


def comparison_frame(finding: Finding) -> pd.DataFrame | None:
    """The accuracies a finding compares (columns ``what``, ``accuracy``, ``role``), or None.

    ``role`` is `palette.EXPECTED` (what it should be), `palette.MEASURED` (what
    the user gets) or `palette.OTHER`.
    """
    expected, measured, other = palette.EXPECTED, palette.MEASURED, palette.OTHER
    e = finding.evidence
    rows = []
    if finding.id == "normalization-mismatch" and e.get("accuracy_by_preset"):
        for p, a in e["accuracy_by_preset"].items():
            role = (expected if p == e.get("expected_preset")
                    else measured if p == e.get("inference_preset") else other)
            rows = rows + [{"what": p, "accuracy": a, "role": role}]
    elif finding.id == "bn-statistics-mismatch":
        rows = [{"what": "moving statistics (inference)", "accuracy": e.get("accuracy_inference_mode"),
                 "role": measured},
                {"what": "batch statistics", "accuracy": e.get("accuracy_batch_statistics"), "role": expected}]
    elif finding.id == "pretraining-no-better-than-random":
        rows = [{"what": "pre-trained features", "accuracy": e.get("probe_accuracy_pretrained"), "role": measured},
                {"what": "random features", "accuracy": e.get("probe_accuracy_random"), "role": other},
                {"what": "chance", "accuracy": e.get("chance"), "role": other}]
    elif finding.id == "no-better-than-chance" and e.get("accuracy_by_preset"):
        rows = [{"what": f"model, {p}", "accuracy": a, "role": measured} for p, a in e["accuracy_by_preset"].items()]
        rows.append({"what": "chance (most common class)", "accuracy": e.get("chance"), "role": other})
        if e.get("probe_accuracy_pretrained") is not None:
            rows += [{"what": "probe on the base's features", "accuracy": e.get("probe_accuracy_pretrained"),
                      "role": expected if e.get("features_carry_signal") else other},
                     {"what": "probe chance", "accuracy": e.get("probe_chance"), "role": other}]
    elif finding.id == "double-normalization" and e.get("accuracy_raw") is not None:
        rows = [{"what": "raw (0-255)", "accuracy": e.get("accuracy_raw"), "role": expected},
                {"what": str(e.get("inference_preset")), "accuracy": e.get("accuracy_inference"), "role": measured}]
    elif finding.id == "label-order-mismatch":
        rows = [{"what": "model's output order", "accuracy": e.get("accuracy"), "role": measured},
                {"what": "classes re-ordered", "accuracy": e.get("accuracy_with_mapping"), "role": expected}]
    elif finding.id == "exif-orientation" and e.get("accuracy_as_loaded") is not None:
        rows = [{"what": f"as loaded ({e.get('images_seen_by_the_model')})", "accuracy": e.get("accuracy_as_loaded"),
                 "role": measured},
                {"what": "the other way", "accuracy": e.get("accuracy_other_way"), "role": other}]
    elif finding.id == "likely-mislabelled":
        rows = [{"what": "probe, held-out images", "accuracy": e.get("probe_accuracy"), "role": measured},
                {"what": "chance (most common class)", "accuracy": e.get("chance"), "role": other}]
    rows = [r for r in rows if r["accuracy"] is not None]
    return pd.DataFrame(rows, columns=["what", "accuracy", "role"]) if rows else None


@palette.legible
def comparison_chart(frame: pd.DataFrame) -> alt.LayerChart:
    """Horizontal accuracy bars of a `comparison_frame`, coloured by role (`palette.ROLE_COLORS`)."""
    base = alt.Chart(frame).encode(
        y=alt.Y("what:N", sort=None, title=None, axis=alt.Axis(labelLimit=240)),
        x=alt.X("accuracy:Q", scale=alt.Scale(domain=[0, 1]), axis=alt.Axis(format="%"), title="accuracy"),
        tooltip=["what", alt.Tooltip("accuracy:Q", format=".1%")],
    )
    bars = base.mark_bar().encode(color=alt.Color("role:N", scale=palette.scale(palette.ROLE_COLORS), legend=None))
    text = base.mark_text(align="left", dx=3).encode(text=alt.Text("accuracy:Q", format=".1%"))
    return (bars + text).properties(height=alt.Step(24))


@palette.legible
def finding_chart(finding: Finding):
    """The small chart that helps read a finding's evidence, or None when none helps."""
    e = finding.evidence
    if finding.id == "label-order-mismatch" and e.get("confusion_matrix"):
        matrix = e["confusion_matrix"]
        return confusion_chart(matrix, e.get("classes", range(len(matrix))), e.get("mapping"),
                               title="Predictions vs labels", true_title="image-set class",
                               predicted_title="model output")
    if finding.id in ("class-imbalance", "too-few-images") and e.get("counts"):
        return class_counts(e["counts"], _flagged_classes(e), title="Images per class")
    if finding.id == "prediction-collapse" and e.get("prediction_histogram"):
        return class_counts(e["prediction_histogram"], {str(e.get("predicted_class"))},
                            title=f"Predictions per class ({e.get('preset')})")
    frame = comparison_frame(finding)
    if frame is not None:
        return comparison_chart(frame)
    return None


def _flagged_classes(evidence: dict) -> set[str]:
    """The classes a class-imbalance / too-few-images finding names."""
    flagged = {str(c) for c in evidence.get("classes_below") or {}}
    flagged |= {str(evidence[key]) for key in ("largest", "smallest") if evidence.get(key) is not None}
    return flagged
