"""Ranking the evaluated settings and saying what the ranking means.

With labels: accuracy first; when the most accurate settings differ by less than `TIE_Z`
standard errors (paired McNemar test), the fingerprint's favourite among them wins. Without
labels: the fingerprint order. With labels but no setting whose accuracy is clearly above chance
(its 95 % Wilson interval above the share of the most common class), no preset is best
(`chance_verdict`). The sentences on whether fingerprint and accuracy agree are written here too.
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd

from tlviz.normalize.results import PER_CLASS_COLUMNS, RESULT_COLUMNS, Evaluation, Fingerprint, LabelMatch
from tlviz.presets import PIXEL_PRESET
from tlviz.stats import chance_level, clearly_above, format_interval, wilson_interval

#: Accuracy differences below this many standard errors (paired McNemar test)
#: are sampling noise; the label-free fingerprint then picks the best preset.
TIE_Z = 2.0


def pick_best_preset(table: pd.DataFrame, fp: Fingerprint, accuracy_available: bool):
    """The best preset: the top preset row of the ranked table when labels match, else the fingerprint's."""
    base = table[table["kind"].isin(["preset", "custom"])]
    if accuracy_available and len(base):
        return str(base["preset"].iloc[0]), "accuracy"
    if fp.best is not None:
        return fp.best, "fingerprint"
    return None, None


def _agree(ev: Evaluation, ref: Evaluation) -> float:
    if ev.files == ref.files:
        return float(np.mean(ev.predictions == ref.predictions))
    pos = {f: i for i, f in enumerate(ref.files)}
    pairs = [(i, pos[f]) for i, f in enumerate(ev.files) if f in pos]
    if not pairs:
        return float("nan")
    a, b = np.array(pairs).T
    return float(np.mean(ev.predictions[a] == ref.predictions[b]))


def ranked_table(evals: list[Evaluation], fp: Fingerprint, accuracy_available: bool) -> pd.DataFrame:
    """Rows best first. With labels: accuracy (ties: fingerprint rank, then mean
    confidence), except that the top row is the fingerprint's favourite among the
    settings whose accuracy is within sampling noise of the best (`TIE_Z`). Without
    labels: presets in fingerprint order (or by confidence), then the variants."""
    if not evals:
        return pd.DataFrame(columns=RESULT_COLUMNS)
    fp_dist = {} if fp.ranking is None else dict(zip(fp.ranking["preset"], fp.ranking["distance"]))
    fp_dist.update({p: fp_dist[q] for p, q in PIXEL_PRESET.items() if q in fp_dist})
    kind_order = {"preset": 0, "custom": 1, "resize": 2, "channel order": 3}
    rows = []
    for pos, e in enumerate(evals):
        s = e.setting
        base_kind = s.kind in ("preset", "custom")
        rows.append({
            "setting": s.label, "kind": s.kind, "preset": s.preset_name, "resize": s.resize,
            "channel_order": s.channel_order, "accuracy": e.accuracy if accuracy_available else np.nan,
            **_interval_columns(e, accuracy_available),
            "mean_confidence": e.mean_confidence, "n": e.n,
            "fingerprint_distance": fp_dist.get(s.preset_name, np.nan) if base_kind else np.nan,
            "_pos": pos, "_kind": kind_order[s.kind],
        })
    df = pd.DataFrame(rows)
    df["accuracy"] = df["accuracy"].astype(float)
    # Differences below float noise are ties. Equal accuracy goes to the preset closer by the
    # fingerprint (a model that predicts one class for everything ties on accuracy), then to
    # higher confidence, then to the named preset, then to the listing order.
    df["_conf"] = -df["mean_confidence"].round(5)
    fp_rank = {p: i for i, p in enumerate(fp.order or [])}
    fp_rank.update({p: fp_rank[q] for p, q in PIXEL_PRESET.items() if q in fp_rank})
    df["_fp"] = [fp_rank.get(p, len(fp_rank)) if k < 2 else len(fp_rank) for p, k in zip(df["preset"], df["_kind"])]
    if accuracy_available:
        df["_acc"] = -df["accuracy"].round(9)
        df = df.sort_values(["_acc", "_fp", "_conf", "_kind", "_pos"], kind="mergesort")
        if fp.ranking is not None:
            df = _settle_ties_by_fingerprint(df, evals)
    else:
        df["_group"] = (df["_kind"] >= 2).astype(int)  # presets first, then the variants
        df = df.sort_values(["_group", "_conf" if fp.ranking is None else "_fp", "_pos"], kind="mergesort")
    df = df.reset_index(drop=True)
    top = evals[int(df["_pos"].iloc[0])]
    df["agreement"] = [_agree(evals[int(p)], top) for p in df["_pos"]]
    df.insert(0, "rank", np.arange(1, len(df) + 1))
    df["is_best"] = df["rank"] == 1
    return df[RESULT_COLUMNS]


def _interval_columns(e: Evaluation, accuracy_available: bool) -> dict:
    if not accuracy_available or e.correct is None:
        return {"accuracy_low": np.nan, "accuracy_high": np.nan}
    lo, hi = wilson_interval(int(e.correct.sum()), e.n)
    return {"accuracy_low": lo, "accuracy_high": hi}


def chance_verdict(evals: list[Evaluation], match: LabelMatch, k: int,
                   model_name: str) -> tuple[str | None, float | None]:
    """``(inconclusive sentence or None, chance level)``: is any setting clearly above chance?

    Chance is the accuracy of always answering the most common class. A setting
    is clearly above it when the 95 % Wilson interval of its accuracy lies
    entirely above chance; when none is, no preset can be called best.
    """
    scored = [e for e in evals if e.correct is not None and e.n]
    if match.labels is None or not scored:
        return None, None
    chance = chance_level(match.labels, k)
    top = max(scored, key=lambda e: (e.accuracy, -e.n))
    correct = int(top.correct.sum())
    if clearly_above(correct, top.n, chance):
        return None, chance
    lo, hi = wilson_interval(correct, top.n)
    return (f"No preprocessing makes {model_name} better than chance on these {top.n} images: the most accurate "
            f"setting, `{top.setting.label}`, scores {top.accuracy:.1%} (95 % interval {format_interval(lo, hi)}) "
            f"against {chance:.1%} for always answering the most common class, so no preset can be called best. "
            "That points to the model, not the preprocessing: a head not trained for these classes, base features "
            "that were never pre-trained (or whose weights did not load), or labels that do not match the model's "
            "outputs."), chance


def _mcnemar_z(a: Evaluation, b: Evaluation) -> float:
    """How much better `a` is than `b` on the same images, in standard errors (McNemar)."""
    ca, cb = a.correct, b.correct
    only_a = int(np.sum(ca & ~cb))
    only_b = int(np.sum(~ca & cb))
    return 0.0 if only_a + only_b == 0 else (only_a - only_b) / math.sqrt(only_a + only_b)


def _settle_ties_by_fingerprint(df: pd.DataFrame, evals: list[Evaluation]) -> pd.DataFrame:
    """Move to the top the fingerprint's favourite among the rows whose accuracy is not
    significantly below the most accurate one (paired McNemar test, `TIE_Z`)."""
    top = evals[int(df["_pos"].iloc[0])]
    tied = [pos for pos in df["_pos"]
            if evals[pos].files == top.files and _mcnemar_z(top, evals[pos]) < TIE_Z]
    sub = df[df["_pos"].isin(tied)].sort_values(["_fp", "_acc", "_conf", "_kind", "_pos"], kind="mergesort")
    winner = int(sub["_pos"].iloc[0])
    if winner == int(df["_pos"].iloc[0]):
        return df
    return pd.concat([df[df["_pos"] == winner], df[df["_pos"] != winner]])


def per_class_table(evals: list[Evaluation], match: LabelMatch) -> pd.DataFrame:
    """Accuracy per class under each preset (and custom preset) evaluated with labels (`PER_CLASS_COLUMNS`)."""
    rows = []
    for e in evals:
        if e.setting.kind not in ("preset", "custom") or e.labels is None:
            continue
        correct = e.correct
        for c in np.unique(e.labels):
            sel = e.labels == c
            rows.append({"preset": e.setting.preset_name, "class": match.output_names[int(c)],
                         "accuracy": float(correct[sel].mean()), "n": int(sel.sum())})
    return pd.DataFrame(rows, columns=PER_CLASS_COLUMNS)


def inconclusive_note(fp: Fingerprint) -> str:
    """The report's note when accuracy is at chance under every setting (what the fingerprint says, if anything)."""
    if fp.best is None:
        return "Accuracy is at chance under every setting, so the ranking shows no preferred preparation."
    return (f"The label-free fingerprint puts `{fp.best}` closest to the statistics the model was trained with, "
            "but with accuracy at chance under every setting that cannot be confirmed on these images.")


def agreement_note(best_by_accuracy: str | None, fp: Fingerprint, accuracy_note: str | None,
                    table: pd.DataFrame | None = None) -> str:
    """The report's note on how the accuracy ranking and the label-free fingerprint agree.

    Args:
        best_by_accuracy: the preset accuracy ranks first, or None when accuracy did not decide.
        fp: the `Fingerprint`.
        accuracy_note: why accuracy cannot be measured, when it cannot.
        table: the ranked table (`ranked_table`), to say when the top row is within sampling noise of a
            more accurate one. Defaults to `None`.

    Returns:
        One or two sentences.
    """
    if best_by_accuracy is not None and fp.best is not None:
        if table is not None and len(table) and table["accuracy"].iloc[0] < table["accuracy"].max():
            top = table.loc[table["accuracy"].idxmax()]
            return (f"`{table['setting'].iloc[0]}` ({table['accuracy'].iloc[0]:.1%}) is within sampling noise of "
                    f"the most accurate setting `{top['setting']}` ({top['accuracy']:.1%}), so the label-free "
                    f"fingerprint, which ranks `{fp.best}` first, decided.")
        if fp.best == best_by_accuracy:
            return (f"The label-free fingerprint agrees with the accuracy ranking: both put `{fp.best}` first.")
        return (f"The label-free fingerprint ranks `{fp.best}` first while accuracy favours `{best_by_accuracy}`. "
                "Accuracy on correctly labelled images is the stronger evidence; a disagreement can mean these "
                "images look different from the training images (colours, contrast, size).")
    if fp.best is not None:
        return (f"Accuracy cannot be measured on these images, so the ranking rests on the label-free fingerprint "
                f"alone: it puts `{fp.best}` first.")
    if best_by_accuracy is not None:
        return f"No label-free fingerprint: {fp.reason} The ranking rests on accuracy alone."
    return (f"Neither accuracy nor the fingerprint is available, so no preset can be recommended. "
            f"{accuracy_note or ''} {fp.reason or ''}").strip()
