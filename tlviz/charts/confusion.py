"""The one confusion-matrix heatmap, drawn for a fine-tuning run and for a label-order finding."""

from __future__ import annotations

from collections.abc import Sequence

import altair as alt
import numpy as np
import pandas as pd

from tlviz.charts import palette


def confusion_frame(confusion, class_names: Sequence, mapping: dict | None = None) -> pd.DataFrame:
    """Confusion counts in long form, one row per (true, predicted) cell.

    Args:
        confusion: square matrix of counts, rows = true class, columns = predicted output.
        class_names: the name of each row and column, in order.
        mapping: class name -> the column the class's images should be predicted as
            (a label-order finding's best re-ordering); those cells get ``matched``.
            Defaults to `None` (no cell matched).

    Returns:
        Columns ``true``, ``predicted``, ``count``, ``share`` (of the true class's
        images) and ``matched``.
    """
    cm = np.asarray(confusion)
    names = [str(c) for c in class_names]
    wanted = {str(k): int(v) for k, v in (mapping or {}).items()}
    rows = []
    for i, t in enumerate(names):
        total = cm[i].sum()
        for j, p in enumerate(names):
            rows.append({"true": t, "predicted": p, "count": int(cm[i, j]),
                         "share": float(cm[i, j] / total) if total else 0.0, "matched": wanted.get(t) == j})
    return pd.DataFrame(rows, columns=["true", "predicted", "count", "share", "matched"])


@palette.legible
def confusion_chart(confusion, class_names: Sequence, mapping: dict | None = None, *,
                    title: str = "validation confusion matrix", true_title: str = "true class",
                    predicted_title: str = "predicted") -> alt.LayerChart:
    """Heatmap of a confusion matrix: shade = share of the true class, the count written in.

    Args:
        confusion: square matrix of counts, rows = true class, columns = predicted output.
        class_names: the name of each row and column, in order.
        mapping: class name -> column; those cells are outlined in `palette.FLAG_COLOR`.
            Defaults to `None` (no outline).
        title: the chart's title. Defaults to `"validation confusion matrix"`.
        true_title: the rows' axis title. Defaults to `"true class"`.
        predicted_title: the columns' axis title. Defaults to `"predicted"`.

    Returns:
        An Altair layer chart: cells, counts, and the outlined cells when `mapping` is given.
    """
    frame = confusion_frame(confusion, class_names, mapping)
    order = [str(c) for c in class_names]
    base = alt.Chart(frame).encode(
        x=alt.X("predicted:N", sort=order, title=predicted_title),
        y=alt.Y("true:N", sort=order, title=true_title),
    )
    cells = base.mark_rect().encode(
        color=alt.Color("share:Q", scale=palette.sequential([0, 1]), title="share of class"),
        tooltip=["true", "predicted", "count", alt.Tooltip("share:Q", format=".0%")])
    counts = base.mark_text().encode(text="count:Q", color=palette.cell_text("datum.share > 0.5"))
    layers = [cells, counts]
    if frame["matched"].any():
        layers.append(base.transform_filter("datum.matched").mark_rect(
            fillOpacity=0, stroke=palette.FLAG_COLOR, strokeWidth=2.5))
    side = max(180, 28 * len(order))
    return alt.layer(*layers).properties(width=side + palette.DECORATIONS, height=side, title=title)
