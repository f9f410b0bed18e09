"""The Try page's chart: one preparation's top classes as bars of probability."""
from __future__ import annotations

import altair as alt
import pandas as pd

from tlviz.charts import palette


def top_classes_frame(top: list) -> pd.DataFrame:
    """``[(class name, probability), ...]`` as rows (``rank``, ``class``, ``probability``, ``is_top``)."""
    rows = [{"rank": i + 1, "class": str(name), "probability": float(p), "is_top": i == 0}
            for i, (name, p) in enumerate(top)]
    return pd.DataFrame(rows, columns=["rank", "class", "probability", "is_top"])


@palette.legible
def top_classes_chart(top: list, title: str = "") -> alt.LayerChart:
    """Horizontal bars of the top classes' probabilities, the first in `palette.BEST_COLOR`, each labelled in %.

    Args:
        top: ``[(class name, probability), ...]``, most probable first.
        title: the chart's title. Defaults to none.

    Returns:
        An Altair layer chart, 34 px per class.
    """
    data = top_classes_frame(top)
    order = list(data["class"])
    base = alt.Chart(data).encode(
        y=alt.Y("class:N", sort=order, title=None, axis=alt.Axis(labelLimit=260, labelFontSize=14)),
        x=alt.X("probability:Q", title="probability", scale=alt.Scale(domain=[0, 1]), axis=alt.Axis(format="%")),
        tooltip=[alt.Tooltip("class:N"), alt.Tooltip("probability:Q", format=".1%")],
    )
    bars = base.mark_bar().encode(color=palette.flag("is_top", palette.BEST_COLOR))
    labels = base.mark_text(align="left", dx=4, fontSize=14).encode(text=alt.Text("probability:Q", format=".0%"))
    chart = (bars + labels).properties(height=34 * max(1, len(data)))
    return chart.properties(title=title) if title else chart
