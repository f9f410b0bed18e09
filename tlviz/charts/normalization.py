"""Altair charts for the Normalization page: pure functions of the engine's DataFrames.

- `ranking_chart(results, metric)` — ranked bars, the winning setting highlighted.
- `per_class_heatmap(per_class)` — accuracy per class (columns) and preset (rows).
- `fingerprint_chart(ranking)` — label-free match per preset, best highlighted.
"""

from __future__ import annotations

import altair as alt
import numpy as np
import pandas as pd

from tlviz.charts import palette

METRICS = {
    "accuracy": "Accuracy",
    "mean_confidence": "Mean confidence",
    "agreement": "Agreement with the best setting",
}


@palette.legible
def ranking_chart(results: pd.DataFrame, metric: str = "accuracy", chance: float | None = None) -> alt.LayerChart:
    """Horizontal bars of `metric` per setting, best first, the winner in `palette.BEST_COLOR`.

    For accuracy, each bar carries its 95 % interval (``accuracy_low`` /
    ``accuracy_high``) as a whisker, and `chance` is drawn as a dashed line, so a
    reader sees at once whether any setting is clearly better than guessing.

    Args:
        results: `NormalizationReport.results` (columns ``setting``, ``rank``,
            ``is_best``, ``kind`` and the metric).
        metric: ``"accuracy"``, ``"mean_confidence"`` or ``"agreement"``.
            Defaults to `"accuracy"`.
        chance: the chance accuracy to mark (accuracy only). Defaults to `None` (no line).

    Returns:
        An Altair layer chart (bars plus value labels).

    Raises:
        ValueError: unknown metric, or accuracy asked for when it was not measured.
    """
    if metric not in METRICS:
        raise ValueError(f"Unknown metric {metric!r}. Use one of: {', '.join(METRICS)}.")
    interval = metric == "accuracy" and {"accuracy_low", "accuracy_high"} <= set(results.columns)
    cols = ["rank", "setting", "kind", "is_best", "n", metric] + (["accuracy_low", "accuracy_high"] if interval else [])
    data = results.sort_values("rank")[cols].copy()
    if data[metric].isna().all():
        raise ValueError(f"No {METRICS[metric].lower()} values to chart (accuracy is hidden when the image set's "
                         "classes do not match the model). Use metric='mean_confidence'.")
    order = list(data["setting"])
    base = alt.Chart(data).encode(
        y=alt.Y("setting:N", sort=order, title=None, axis=alt.Axis(labelLimit=320)),
        x=alt.X(f"{metric}:Q", title=METRICS[metric], scale=alt.Scale(domain=[0, 1]), axis=alt.Axis(format="%")),
        tooltip=[alt.Tooltip("rank:Q"), alt.Tooltip("setting:N"), alt.Tooltip("kind:N"),
                 alt.Tooltip(f"{metric}:Q", format=".1%", title=METRICS[metric]), alt.Tooltip("n:Q", title="images")],
    )
    bars = base.mark_bar().encode(color=palette.flag("is_best", palette.BEST_COLOR))
    layers = [bars]
    if interval:
        layers.append(base.mark_rule(color=palette.INK).encode(x="accuracy_low:Q", x2="accuracy_high:Q"))
        labels = base.mark_text(align="left", dx=3).encode(x="accuracy_high:Q",
                                                            text=alt.Text(f"{metric}:Q", format=".1%"))
    else:
        labels = base.mark_text(align="left", dx=3).encode(text=alt.Text(f"{metric}:Q", format=".1%"))
    layers.append(labels)
    title = f"{METRICS[metric]} (best first)"
    if interval and chance is not None:
        line = pd.DataFrame({"chance": [float(chance)]})
        rule = alt.Chart(line).mark_rule(strokeDash=palette.REFERENCE_DASH, color=palette.REFERENCE_COLOR)
        layers.append(rule.encode(x="chance:Q", tooltip=[alt.Tooltip("chance:Q", format=".1%", title="chance")]))
        title = f"{METRICS[metric]} with 95 % interval; dashed: chance ({chance:.1%})"
    return alt.layer(*layers).properties(height=alt.Step(22), title=title)


@palette.legible
def per_class_heatmap(per_class: pd.DataFrame, preset_order: list[str] | None = None) -> alt.LayerChart:
    """Accuracy per class and preset as a heatmap with the value in each cell.

    Args:
        per_class: `NormalizationReport.per_class` (``preset``, ``class``, ``accuracy``, ``n``).
        preset_order: rows top to bottom. Defaults to the order in `per_class`.

    Returns:
        An Altair layer chart (rectangles plus text).
    """
    data = per_class.copy()
    data["class"] = data["class"].astype(str)
    rows = preset_order or list(dict.fromkeys(data["preset"]))
    classes = list(dict.fromkeys(data["class"]))
    base = alt.Chart(data).encode(
        x=alt.X("class:N", sort=classes, title="Class", axis=alt.Axis(labelAngle=0)),
        y=alt.Y("preset:N", sort=rows, title="Preset", axis=alt.Axis(labelLimit=320)),
        tooltip=[alt.Tooltip("preset:N"), alt.Tooltip("class:N"), alt.Tooltip("accuracy:Q", format=".1%"),
                 alt.Tooltip("n:Q", title="images")],
    )
    rect = base.mark_rect().encode(
        color=alt.Color("accuracy:Q", scale=palette.sequential([0, 1]), title="Accuracy",
                        legend=alt.Legend(format="%")))
    text = base.mark_text(fontSize=11).encode(
        text=alt.Text("accuracy:Q", format=".0%"), color=palette.cell_text("datum.accuracy > 0.6"))
    return (rect + text).properties(title="Per-class accuracy by preset")


@palette.legible
def fingerprint_chart(ranking: pd.DataFrame) -> alt.LayerChart:
    """Label-free match per preset, closest first, best highlighted.

    Bars show ``match = exp(-distance)`` (1 = the activations have exactly the
    statistics the BatchNormalization layer stored in training, 0 = far off),
    which keeps the close candidates apart where a distance axis would be
    dominated by the far ones; the labels and tooltip give the distance itself.

    Args:
        ranking: `Fingerprint.ranking` (``rank``, ``preset``, ``distance``,
            ``mean_shift``, ``std_ratio``, ``is_best``).

    Returns:
        An Altair layer chart (bars plus distance labels).
    """
    data = ranking.sort_values("rank").copy()
    data["match"] = np.exp(-data["distance"].astype(float))
    order = list(data["preset"])
    base = alt.Chart(data).encode(
        y=alt.Y("preset:N", sort=order, title=None, axis=alt.Axis(labelLimit=240)),
        x=alt.X("match:Q", scale=alt.Scale(domain=[0, 1]), axis=alt.Axis(format="%"),
                title="match with the training statistics"),
        tooltip=[alt.Tooltip("rank:Q"), alt.Tooltip("preset:N"), alt.Tooltip("match:Q", format=".1%"),
                 alt.Tooltip("distance:Q", format=".4g"),
                 alt.Tooltip("mean_shift:Q", format=".3g", title="mean shift (in BN std)"),
                 alt.Tooltip("std_ratio:Q", format=".3g", title="std ratio (1 = match)")],
    )
    bars = base.mark_bar().encode(color=palette.flag("is_best", palette.BEST_COLOR))
    labels = base.mark_text(align="left", dx=3).encode(text=alt.Text("distance:Q", format=".3g"))
    return (bars + labels).properties(height=alt.Step(22))
