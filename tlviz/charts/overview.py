"""Altair charts for the Overview page: pure functions of the image set's numbers."""

from __future__ import annotations

import altair as alt
import pandas as pd


def class_counts(counts: dict[str, int]) -> alt.Chart:
    """Bar chart of images per class."""
    df = pd.DataFrame({"class": list(counts), "images": list(counts.values())})
    return (
        alt.Chart(df)
        .mark_bar()
        .encode(x=alt.X("class:N", sort=None), y="images:Q", tooltip=["class", "images"])
        .properties(height=200)
    )
