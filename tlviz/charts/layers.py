"""Altair charts for the Freezing status page: pure functions of the layer table."""

from __future__ import annotations

import altair as alt
import pandas as pd

from tlviz.charts import palette


@palette.legible
def params_by_depth(table: pd.DataFrame, status_column: str = "trainable") -> alt.Chart:
    """Bar chart of parameters per layer, in depth order, coloured trainable / frozen (`palette.STATUS_COLORS`).

    Args:
        table: a `tlviz.layers.layer_table` (optionally with ``would_train``).
        status_column: boolean column that decides the colour. Defaults to
            `"trainable"` (effective trainability); use `"would_train"` for an
            unfreeze preview.

    Returns:
        An Altair bar chart; layers without weights are left out.
    """
    if status_column not in table.columns:
        raise ValueError(f"Column {status_column!r} not in the layer table; use 'trainable' or 'would_train'.")
    df = table[table["holds_weights"]].copy()
    df["params"] = df["trainable_params"] + df["non_trainable_params"]
    df["status"] = df[status_column].map({True: palette.TRAINABLE, False: palette.FROZEN})
    return (
        alt.Chart(df)
        .mark_bar()
        .encode(
            x=alt.X("depth:O", title="layer depth (input → output)",
                    axis=alt.Axis(labelOverlap=True, labelAngle=0)),
            y=alt.Y("params:Q", title="parameters"),
            color=alt.Color("status:N", scale=palette.scale(palette.STATUS_COLORS), title=None),
            tooltip=["path", "class", "params", "status", "role"],
        )
        .properties(height=240)
    )

