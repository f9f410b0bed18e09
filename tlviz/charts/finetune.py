"""Altair charts for the Fine-tuning page: pure functions of a run's DataFrames.

- `history_long(history)` — per-epoch history in long form; `curves_chart(history)`
  and `compare_chart(histories)` draw it (train / validation in `palette.SPLIT_COLORS`).
- `weight_change_chart(report)` — how far each layer moved, trainable / frozen.
- `drift_chart(drift, threshold)` — linear CKA per block of the base, before vs after a run (1.0:
  unchanged), coloured by what the block did (trained / frozen with a moved input / unchanged), the
  catastrophic-forgetting threshold as a dashed line.
- `control_chart(rows)` — a run's validation accuracy next to its controls', with 95 % intervals.
- `sweep_heatmap(table)` — best validation accuracy per (unfreeze depth, learning rate); runs stopped
  early (ASHA on Ray Tune) faded, dashed, with the epoch they stopped at.
- `lr_finder_chart(curve, suggestion)` — the learning-rate range test.
- The run's confusion matrix is `tlviz.charts.confusion_chart`.
"""

from __future__ import annotations

import altair as alt
import numpy as np
import pandas as pd

from tlviz.charts import palette

#: Keras's metric prefix -> the split's word.
SPLIT_LABELS = {"": palette.TRAIN, "val_": palette.VALIDATION}
#: A block's status in a drift report (`tlviz.finetune.drift.STATUSES`) -> its colour: trained blocks as
#: trainable layers, unchanged ones as frozen layers, frozen blocks whose input moved in between.
DRIFT_COLORS = {"trained": palette.TRAINABLE_COLOR, "input changed": palette.ORANGE, "unchanged": palette.FROZEN_COLOR}


def history_long(history: pd.DataFrame, run: str | None = None) -> pd.DataFrame:
    """Per-epoch history in long form: ``epoch, metric, split, value`` (and ``run`` when given)."""
    rows = []
    for _, r in history.iterrows():
        for metric in ("loss", "accuracy"):
            for prefix, split in SPLIT_LABELS.items():
                v = r.get(prefix + metric)
                if v is None or (isinstance(v, float) and not np.isfinite(v)):
                    continue
                row = {"epoch": int(r["epoch"]), "metric": metric, "split": split, "value": float(v),
                       "phase": r.get("phase", "")}
                if run is not None:
                    row["run"] = run
                rows.append(row)
    cols = ["epoch", "metric", "split", "value", "phase"] + (["run"] if run is not None else [])
    return pd.DataFrame(rows, columns=cols)


def _metric_chart(long: pd.DataFrame, metric: str, color: str, dash: str | None, width: int = 320):
    data = long[long["metric"] == metric]
    y_scale = alt.Scale(domain=[0, 1]) if metric == "accuracy" else alt.Scale(zero=False, type="symlog")
    c_scale = palette.scale(palette.SPLIT_COLORS) if color == "split" else alt.Scale(range=palette.CATEGORY_COLORS)
    enc = {
        "x": alt.X("epoch:Q", title="epoch", axis=alt.Axis(tickMinStep=1, format="d")),  # "1", not "1.000000"
        "y": alt.Y("value:Q", title=metric, scale=y_scale),
        "color": alt.Color(f"{color}:N", title=color, scale=c_scale),
        "tooltip": [f"{c}:{t}" for c, t in (("run", "N"), ("split", "N"), ("epoch", "Q"), ("value", "Q"),
                                                ("phase", "N")) if c in data.columns],
    }
    if dash:
        enc["strokeDash"] = alt.StrokeDash(f"{dash}:N", title=dash)
    return alt.Chart(data).mark_line(point=True).encode(**enc).properties(title=metric, width=width, height=220)


@palette.legible
def curves_chart(history: pd.DataFrame) -> alt.HConcatChart:
    """Loss and accuracy per epoch, train and validation, side by side."""
    long = history_long(history)
    return alt.hconcat(_metric_chart(long, "loss", "split", None), _metric_chart(long, "accuracy", "split", None))


@palette.legible
def compare_chart(histories: dict[str, pd.DataFrame]) -> alt.HConcatChart:
    """Overlaid curves of several runs: colour = run, dash = train / validation."""
    frames = [history_long(h, run=name) for name, h in histories.items()]
    long = pd.concat(frames, ignore_index=True) if frames else history_long(pd.DataFrame(), run="")
    # The legends go under the panels, one entry per line: beside the panels, or in one row, the runs' long labels
    # pushed the chart past the page's column (four runs' labels in one row: 1,542 px wide; in a column: 756).
    return alt.hconcat(_metric_chart(long, "loss", "run", "split"), _metric_chart(long, "accuracy", "run", "split")
                       ).configure_legend(orient="bottom", labelLimit=320, columns=1)


@palette.legible
def weight_change_chart(report: pd.DataFrame) -> alt.Chart:
    """Relative weight change per layer, in model order; frozen layers sit at exactly zero.

    Args:
        report: `RunResult.weight_change` (``path``, ``class``, ``trainable``,
            ``rel_change``, ``params``).

    Returns:
        An Altair bar chart coloured trainable / frozen (`palette.STATUS_COLORS`).
    """
    df = report.copy()
    df["status"] = np.where(df["trainable"].astype(bool), palette.TRAINABLE, palette.FROZEN)
    df["rel_change"] = df["rel_change"].astype(float).replace([np.inf, -np.inf], np.nan)
    order = list(df["path"])
    return alt.Chart(df).mark_bar().encode(
        x=alt.X("path:N", sort=order, title="layer (input → output)", axis=alt.Axis(labelAngle=-45, labelLimit=160)),
        y=alt.Y("rel_change:Q", title="relative L2 change"),
        color=alt.Color("status:N", scale=palette.scale(palette.STATUS_COLORS)),
        tooltip=["path", "class", "status", alt.Tooltip("rel_change:Q", format=".4g"), "params"],
    ).properties(height=240, title="how far each layer's weights moved")


@palette.legible
def sweep_heatmap(table: pd.DataFrame) -> alt.LayerChart:
    """Best validation accuracy per (unfreeze depth, learning rate); pending cells show their state.

    A run an early-stopping scheduler stopped (state ``stopped``, ``stopped_at`` its last epoch) is drawn
    faded with a dashed outline, its text says ``stopped ep N`` under the accuracy it had reached.
    """
    df = table.copy()
    if "stopped_at" not in df.columns:
        df["stopped_at"] = None
    df["rate"] = df["lr"].map(lambda v: f"{float(v):.0e}")
    df["stopped"] = df["state"] == "stopped"
    acc = pd.to_numeric(df["best_val_accuracy"], errors="coerce")
    df["text"] = [f"{v:.0%}" if v is not None and np.isfinite(v) else s for v, s in zip(acc, df["state"])]
    df["text"] = [f"{t}\nstopped ep {int(at)}" if stopped and pd.notna(at) else t
                  for t, stopped, at in zip(df["text"], df["stopped"], df["stopped_at"])]
    df["stopped_at"] = df["stopped_at"].astype(object).where(df["stopped_at"].notna(), None)
    rates = [f"{v:.0e}" for v in sorted(df["lr"].astype(float).unique())]
    base = alt.Chart(df).encode(x=alt.X("rate:O", sort=rates, title="learning rate"),
                                y=alt.Y("unfreeze:O", title="unfreeze depth", sort="descending"))
    rect = base.mark_rect(strokeWidth=2).encode(
        color=alt.Color("best_val_accuracy:Q", scale=palette.sequential([0, 1]), title="best val accuracy"),
        opacity=alt.condition("datum.stopped", alt.value(0.45), alt.value(1.0)),
        stroke=alt.condition("datum.stopped", alt.value(palette.REFERENCE_COLOR), alt.value(None)),
        strokeDash=alt.condition("datum.stopped", alt.value(palette.REFERENCE_DASH), alt.value([1, 0])),
        tooltip=["unfreeze", "rate", "state", alt.Tooltip("best_val_accuracy:Q", format=".1%"),
                 alt.Tooltip("stopped_at:Q", title="stopped after epoch"), "run_id"])
    text = base.mark_text(lineBreak="\n").encode(text="text:N",
                                                  color=palette.cell_text("datum.best_val_accuracy > 0.6"))
    title = "sweep: best validation accuracy"
    if df["stopped"].any():
        title += " (faded, dashed: stopped early by ASHA)"
    return (rect + text).properties(title=title, width=max(200, 70 * len(rates)) + palette.DECORATIONS,
                                    height=max(120, 40 * df["unfreeze"].nunique()))


@palette.legible
def lr_finder_chart(curve: pd.DataFrame, suggestion: float | None = None) -> alt.LayerChart:
    """Loss against learning rate (log axis): raw loss as dots, smoothed loss as a line, the suggestion as a rule.

    Args:
        curve: `LRFinderResult.curve` (``lr``, ``loss``, ``smoothed``).
        suggestion: the suggested rate, drawn as a dashed `palette.REFERENCE_COLOR`
            line. Defaults to `None` (no line).

    Returns:
        An Altair layer chart.
    """
    df = curve.copy()
    df = df[np.isfinite(df["loss"].astype(float)) & (df["loss"].astype(float) < 1e6)]
    x = alt.X("lr:Q", scale=alt.Scale(type="log"), title="learning rate (log scale)", axis=alt.Axis(format=".0e"))
    raw = alt.Chart(df).mark_circle(opacity=0.3, size=15).encode(x=x, y=alt.Y("loss:Q", title="loss"))
    smooth = alt.Chart(df).mark_line().encode(x=x, y="smoothed:Q", tooltip=[alt.Tooltip("lr:Q", format=".2e"),
                                                                           alt.Tooltip("smoothed:Q", format=".3f")])
    layers = [raw, smooth]
    title = "learning-rate range test"
    if suggestion:
        sug = pd.DataFrame({"lr": [suggestion], "label": [f"suggested {suggestion:.1e}"]})
        layers.append(alt.Chart(sug).mark_rule(color=palette.REFERENCE_COLOR, strokeDash=palette.REFERENCE_DASH,
                                               size=2).encode(x="lr:Q", tooltip=["label"]))
        title += f" (dashed line: suggested rate {suggestion:.1e})"
    return alt.layer(*layers).properties(title=title, height=260, width=520 + palette.DECORATIONS)


@palette.legible
def drift_chart(drift: pd.DataFrame, threshold: float | None = None) -> alt.LayerChart:
    """Linear CKA per block of the base, before vs after a run, input to output.

    Args:
        drift: `RunOutcome.drift_table` (``block``, ``cka``, ``status``, ``layers``); a block whose CKA
            could not be measured (None: its features do not vary on the images) is drawn as a dashed outline
            over the whole axis, ``not measured`` in its tooltip, so it is not mistaken for a block at 0.
        threshold: the catastrophic-forgetting threshold, drawn as a dashed `palette.REFERENCE_COLOR`
            line. Defaults to `None` (no line).

    Returns:
        An Altair bar chart (with the line when a threshold is given), y from 0 to 1.
    """
    df = drift.copy()
    df["cka"] = pd.to_numeric(df["cka"], errors="coerce")
    df["shown"] = df["cka"].fillna(0.0)
    df["value"] = [f"{v:.3f}" if np.isfinite(v) else "not measured" for v in df["cka"]]
    order = list(df["block"])
    bars = alt.Chart(df).mark_bar().encode(
        x=alt.X("block:N", sort=order, title="block of the base (input → output)",
                axis=alt.Axis(labelAngle=-45, labelLimit=160)),
        y=alt.Y("shown:Q", title="linear CKA, before vs after (1 = same)", scale=alt.Scale(domain=[0, 1])),
        color=alt.Color("status:N", title="block", scale=palette.scale(DRIFT_COLORS)),
        tooltip=["block", "status", alt.Tooltip("value:N", title="CKA"), "layers"],
    )
    layers = [bars]
    unmeasured = df[df["cka"].isna()].assign(top=1.0)
    if len(unmeasured):
        layers.append(alt.Chart(unmeasured).mark_bar(fillOpacity=0, stroke=palette.INK, strokeDash=[3, 3]).encode(
            x=alt.X("block:N", sort=order), y="top:Q",
            tooltip=["block", "status", alt.Tooltip("value:N", title="CKA"), "layers"]))
    # Drawn in half the page's width: a title longer than about 50 characters is cut short there ("…").
    title = "how far each block's features moved"
    if threshold is not None:
        rule = pd.DataFrame({"cka": [float(threshold)], "label": [f"forgetting threshold {threshold:g}"]})
        layers.append(alt.Chart(rule).mark_rule(color=palette.REFERENCE_COLOR, strokeDash=palette.REFERENCE_DASH,
                                                size=2).encode(y="cka:Q", tooltip=["label"]))
        title += f" · threshold {threshold:g}"
    return alt.layer(*layers).properties(height=240, title=title)


@palette.legible
def control_chart(rows: pd.DataFrame) -> alt.LayerChart:
    """A run's validation accuracy next to its controls', each with its 95 % Wilson interval.

    Args:
        rows: one row per run: ``run`` (its label), ``accuracy``, ``low``, ``high``, ``n``.

    Returns:
        An Altair chart: a point per run and its interval as a rule, accuracy from 0 to 1.
    """
    df = rows.copy()
    y = alt.Y("run:N", title=None, sort=list(df["run"]))
    x = alt.X("accuracy:Q", title="validation accuracy (95 % interval)", scale=alt.Scale(domain=[0, 1]),
              axis=alt.Axis(format="%"))
    tip = ["run", alt.Tooltip("accuracy:Q", format=".1%"), alt.Tooltip("low:Q", format=".1%"),
           alt.Tooltip("high:Q", format=".1%"), "n"]
    rule = alt.Chart(df).mark_rule(size=2, color=palette.INK).encode(x="low:Q", x2="high:Q", y=y, tooltip=tip)
    point = alt.Chart(df).mark_point(filled=True, size=80, color=palette.INK).encode(x=x, y=y, tooltip=tip)
    return alt.layer(rule, point).properties(height=40 * max(len(df), 1) + 40, width=420 + palette.DECORATIONS,
                                             title="the run and its controls, on the same validation images")
