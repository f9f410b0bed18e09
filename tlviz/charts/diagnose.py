"""Small charts and tables for the Diagnose page: pure functions of a finding's evidence.

- `evidence_table(evidence)` — the evidence's numbers as a two-column DataFrame.
- `confusion_frame(evidence)` / `confusion_heatmap(frame)` — label-order-mismatch.
- `counts_frame(evidence)` / `counts_chart(frame)` — class-imbalance, too-few-images.
- `comparison_frame(finding)` / `comparison_chart(frame)` — bars of the measured
  accuracies (normalization-mismatch, bn-statistics-mismatch,
  pretraining-no-better-than-random, double-normalization).
- `finding_chart(finding)` — the chart that helps for a finding, or None.
"""

from __future__ import annotations

import altair as alt
import pandas as pd

from tlviz.findings import Finding

HIGHLIGHT = "#c62828"
OTHER = "#9e9e9e"
GOOD = "#2e7d32"

# Evidence keys shown as charts or image strips rather than in the table.
_NOT_IN_TABLE = ("confusion_matrix", "example_files", "classes")


_PERCENT_WORDS = ("accuracy", "share", "chance")


def _text(v, percent: bool = False) -> str:
    """A value as short text; with `percent`, fractions in [0, 1] read as percentages."""
    if v is None:
        return "—"
    if isinstance(v, bool):
        return "yes" if v else "no"
    if isinstance(v, (int, float)) and percent and 0.0 <= v <= 1.0:
        return f"{float(v):.1%}"
    if isinstance(v, float):
        return f"{v:.4g}"
    if isinstance(v, dict):
        items = list(v.items())
        return ", ".join(f"{k}: {_text(x, percent)}" for k, x in items[:10]) + (" …" if len(items) > 10 else "")
    if isinstance(v, list):
        return ", ".join(_text(x, percent) for x in v[:10]) + (f" … ({len(v)} in all)" if len(v) > 10 else "")
    return str(v)


def evidence_table(evidence: dict) -> pd.DataFrame:
    """The evidence as rows of (what, value) strings; matrices and file lists left out.

    Values whose name mentions accuracy, share or chance read as percentages.
    """
    rows = [{"evidence": k.replace("_", " "), "value": _text(v, any(w in k for w in _PERCENT_WORDS))}
            for k, v in evidence.items() if k not in _NOT_IN_TABLE]
    return pd.DataFrame(rows, columns=["evidence", "value"])


def confusion_frame(evidence: dict) -> pd.DataFrame:
    """Long-form confusion matrix from label-order-mismatch evidence.

    Returns:
        Columns ``true`` (image-set class), ``predicted`` (model output name),
        ``count``, ``matched`` (True where the best mapping puts that class).
    """
    matrix = evidence["confusion_matrix"]
    names = [str(n) for n in evidence.get("classes", range(len(matrix)))]
    mapping = {str(k): int(v) for k, v in (evidence.get("mapping") or {}).items()}
    rows = []
    for t, row in enumerate(matrix):
        for j, count in enumerate(row):
            rows.append({"true": names[t], "predicted": names[j], "count": int(count),
                         "matched": mapping.get(names[t]) == j})
    return pd.DataFrame(rows, columns=["true", "predicted", "count", "matched"])


def confusion_heatmap(frame: pd.DataFrame) -> alt.LayerChart:
    """Heatmap of a `confusion_frame`; the counts in the cells of the best mapping are drawn in red."""
    order = list(dict.fromkeys(frame["true"]))
    base = alt.Chart(frame).encode(
        x=alt.X("predicted:N", sort=order, title="model output"),
        y=alt.Y("true:N", sort=order, title="image-set class"),
    )
    cells = base.mark_rect().encode(
        color=alt.Color("count:Q", scale=alt.Scale(scheme="blues"), title="images"),
        tooltip=["true", "predicted", "count"],
    )
    labels = base.mark_text().encode(
        text="count:Q",
        color=alt.condition("datum.matched", alt.value(HIGHLIGHT), alt.value("#333333")),
    )
    return (cells + labels).properties(height=alt.Step(28), width=alt.Step(36), title="Predictions vs labels")


def counts_frame(evidence: dict) -> pd.DataFrame:
    """Images per class from class-imbalance / too-few-images evidence (columns ``class``, ``images``, ``flagged``)."""
    counts = evidence.get("counts") or {}
    flagged = set(evidence.get("classes_below") or {})
    for key in ("largest", "smallest"):
        if evidence.get(key) is not None:
            flagged.add(str(evidence[key]))
    return pd.DataFrame([{"class": str(c), "images": int(n), "flagged": str(c) in flagged} for c, n in counts.items()],
                        columns=["class", "images", "flagged"])


def counts_chart(frame: pd.DataFrame) -> alt.Chart:
    """Bar chart of a `counts_frame`, flagged classes highlighted."""
    return (
        alt.Chart(frame)
        .mark_bar()
        .encode(
            x=alt.X("class:N", sort=None, title="class"),
            y=alt.Y("images:Q", title="images"),
            color=alt.Color("flagged:N", scale=alt.Scale(domain=[True, False], range=[HIGHLIGHT, OTHER]), legend=None),
            tooltip=["class", "images"],
        )
        .properties(height=180, title="Images per class")
    )


def comparison_frame(finding: Finding) -> pd.DataFrame | None:
    """The accuracies a finding compares (columns ``what``, ``accuracy``, ``role``), or None.

    ``role`` is ``"expected"`` (what it should be), ``"measured"`` (what the
    user gets) or ``"other"``.
    """
    e = finding.evidence
    rows = []
    if finding.id == "normalization-mismatch" and e.get("accuracy_by_preset"):
        for p, a in e["accuracy_by_preset"].items():
            role = ("expected" if p == e.get("expected_preset")
                    else "measured" if p == e.get("inference_preset") else "other")
            rows = rows + [{"what": p, "accuracy": a, "role": role}]
    elif finding.id == "bn-statistics-mismatch":
        rows = [{"what": "moving statistics (inference)", "accuracy": e.get("accuracy_inference_mode"),
                 "role": "measured"},
                {"what": "batch statistics", "accuracy": e.get("accuracy_batch_statistics"), "role": "expected"}]
    elif finding.id == "pretraining-no-better-than-random":
        rows = [{"what": "pre-trained features", "accuracy": e.get("probe_accuracy_pretrained"), "role": "measured"},
                {"what": "random features", "accuracy": e.get("probe_accuracy_random"), "role": "other"},
                {"what": "chance", "accuracy": e.get("chance"), "role": "other"}]
    elif finding.id == "no-better-than-chance" and e.get("accuracy_by_preset"):
        rows = [{"what": f"model, {p}", "accuracy": a, "role": "measured"} for p, a in e["accuracy_by_preset"].items()]
        rows.append({"what": "chance (most common class)", "accuracy": e.get("chance"), "role": "other"})
        if e.get("probe_accuracy_pretrained") is not None:
            rows += [{"what": "probe on the base's features", "accuracy": e.get("probe_accuracy_pretrained"),
                      "role": "expected" if e.get("features_carry_signal") else "other"},
                     {"what": "probe chance", "accuracy": e.get("probe_chance"), "role": "other"}]
    elif finding.id == "double-normalization" and e.get("accuracy_raw") is not None:
        rows = [{"what": "raw (0-255)", "accuracy": e.get("accuracy_raw"), "role": "expected"},
                {"what": str(e.get("inference_preset")), "accuracy": e.get("accuracy_inference"), "role": "measured"}]
    elif finding.id == "label-order-mismatch":
        rows = [{"what": "model's output order", "accuracy": e.get("accuracy"), "role": "measured"},
                {"what": "classes re-ordered", "accuracy": e.get("accuracy_with_mapping"), "role": "expected"}]
    rows = [r for r in rows if r["accuracy"] is not None]
    return pd.DataFrame(rows, columns=["what", "accuracy", "role"]) if rows else None


def comparison_chart(frame: pd.DataFrame) -> alt.LayerChart:
    """Horizontal accuracy bars of a `comparison_frame`: expected green, measured red."""
    base = alt.Chart(frame).encode(
        y=alt.Y("what:N", sort=None, title=None, axis=alt.Axis(labelLimit=240)),
        x=alt.X("accuracy:Q", scale=alt.Scale(domain=[0, 1]), axis=alt.Axis(format="%"), title="accuracy"),
        tooltip=["what", alt.Tooltip("accuracy:Q", format=".1%")],
    )
    bars = base.mark_bar().encode(color=alt.Color(
        "role:N", scale=alt.Scale(domain=["expected", "measured", "other"], range=[GOOD, HIGHLIGHT, OTHER]),
        legend=None))
    text = base.mark_text(align="left", dx=3).encode(text=alt.Text("accuracy:Q", format=".1%"))
    return (bars + text).properties(height=alt.Step(24))


def finding_chart(finding: Finding):
    """The small chart that helps read a finding's evidence, or None when none helps."""
    e = finding.evidence
    if finding.id == "label-order-mismatch" and e.get("confusion_matrix"):
        return confusion_heatmap(confusion_frame(e))
    if finding.id in ("class-imbalance", "too-few-images") and e.get("counts"):
        return counts_chart(counts_frame(e))
    frame = comparison_frame(finding)
    if frame is not None:
        return comparison_chart(frame)
    return None
