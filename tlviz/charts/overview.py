"""Altair charts for the Overview page: pure functions of the image set's numbers."""

from __future__ import annotations

from collections.abc import Collection

import altair as alt
import pandas as pd

from tlviz.charts import palette


@palette.legible
def class_counts(counts: dict[str, int], flagged: Collection[str] = (), title: str | None = None) -> alt.Chart:
    """Bar chart of images per class; a finding about class counts draws the same chart.

    Args:
        counts: class name -> number of images, in class order.
        flagged: classes drawn in `palette.FLAG_COLOR` (the rest in blue).
            Defaults to none.
        title: the chart's title. Defaults to `None` (no title).

    Returns:
        An Altair bar chart.
    """
    marked = {str(c) for c in flagged}
    df = pd.DataFrame([{"class": str(c), "images": int(n), "flagged": str(c) in marked} for c, n in counts.items()],
                      columns=["class", "images", "flagged"])
    chart = (
        alt.Chart(df)
        .mark_bar()
        .encode(x=alt.X("class:N", sort=None, title="class"), y=alt.Y("images:Q", title="images"),
                color=palette.flag("flagged", palette.FLAG_COLOR, other=palette.BLUE), tooltip=["class", "images"])
        .properties(height=200)
    )
    return chart.properties(title=title) if title else chart
