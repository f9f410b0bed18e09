"""The Diagnose page's Repair actions: options, a worker job, the before / after proof, the download.

Every fixable finding gets `repair_action` under its card; `repair_several` repairs several at once.
The repair runs as a ``"repair"`` analysis job (`ui.analysis`, `tlviz.jobs`): the model is never run
in the server. A result shows the held-out accuracy before and after with its 95 % interval, how
the images were split, each step's proof, a download of the repaired ``.keras`` and a button that
makes it the current model (the replaced one stays in the sidebar's history, `ui.state.adopt_model`).

Session-state keys: ``rep_<id>_*`` / ``rep_several_*`` (widgets and jobs), ``repairs_made``
(``{(model key, image-set key): {parameters: RepairResult}}``, for the report's "Repairs applied").
"""

from __future__ import annotations

import json

import pandas as pd
import streamlit as st

from tlviz.repair import ORDER, ORDER_NOTE, REPAIRS, RepairResult
from tlviz.stats import format_points
from ui import cache
from ui.analysis import analysis
from ui.state import adopt_model, image_set_key, current

#: What each option of a repair is called on the page.
TARGET_LABELS = {"raw": "raw 0-255 pixels", "inference": "what my code sends"}
DOUBLE_LABELS = {"drop-layer": "a copy without the model's own scaling", "feed-raw": "keep the model, send raw pixels"}
FREEZING = ("no-trainable-weights", "head-frozen")
FINETUNE_PAGE = "pages/finetune.py"


def _options(ids, prefix: str, preset: str) -> dict:
    """The option widgets the repairs `ids` take; their values as repair parameters."""
    out = {}
    if "normalization-mismatch" in ids:
        out["target"] = st.radio(
            "The repaired model takes", list(TARGET_LABELS), horizontal=True, key=f"{prefix}_target",
            format_func=lambda t: TARGET_LABELS[t] + (f" (`{preset}`)" if t == "inference" else ""),
            help="Raw pixels: your code stops normalizing and the model does it. What my code sends: the model "
                 "converts your current input to what it expects.")
    if "double-normalization" in ids:
        out["double_normalization"] = st.radio(
            "Way out", list(DOUBLE_LABELS), horizontal=True, key=f"{prefix}_variant", format_func=DOUBLE_LABELS.get,
            help="Both are measured on the same images either way; this picks the copy you download.")
    if any(i in FREEZING for i in ids):
        out["top_block"] = st.checkbox("Also unfreeze the base's top block", key=f"{prefix}_top",
                                       help="BatchNormalization layers stay frozen, as the Keras guide advises.")
    return out


def _remember(result: RepairResult) -> None:
    loaded, _ = current()
    made = st.session_state.setdefault("repairs_made", {})
    made.setdefault((cache.remembered_key(loaded), image_set_key()), {})[json.dumps(result.params, sort_keys=True)] = result


def repairs_made() -> list[RepairResult]:
    """The repairs made in this session for the current model and image set (for the Markdown report)."""
    loaded, _ = current()
    if loaded is None:
        return []
    made = (st.session_state.get("repairs_made") or {}).get((cache.remembered_key(loaded), image_set_key()), {})
    return list(made.values())


def _run(ids: list[str], prefix: str, preset: str, label: str) -> None:
    params = {"fixes": ids, "inference_preset": preset, **_options(ids, prefix, preset)}
    clicked = st.button(label, key=f"{prefix}_run", icon=":material/build:",
                        help="Works on a copy in a separate worker process; the loaded model never changes.")
    result, note = analysis("repair", params, start=clicked, prefix=prefix)
    if result is None:
        return
    if note:  # an earlier repair of this model and image set, made with other options
        st.caption(note if st.session_state.get(f"{prefix}_job") else
                   "Below: the repair made with other options; press the button to make it with these.")
    _remember(result)
    show_result(result, prefix)


def repair_action(finding, preset: str) -> None:
    """Under a fixable finding's card: its options, a Repair button and, once measured, the proof.

    Args:
        finding: the `tlviz.findings.Finding` (its id is one of `tlviz.repair.REPAIRS`).
        preset: the preset the user's inference code applies.
    """
    with st.container(border=True):
        st.markdown(f"**Repair** `{finding.id}`: {REPAIRS[finding.id]}.")
        _run([finding.id], f"rep_{finding.id}", preset, "Repair")


def repair_several(ids: list[str], preset: str) -> None:
    """Several fixable findings repaired in one copy, in the order `tlviz.repair.ORDER` explains."""
    st.subheader("Repair several at once", divider="gray")
    chosen = st.multiselect("Findings to repair together", ids, default=ids, key="rep_several_ids")
    st.caption(f"Applied in this order, whatever you pick first: {ORDER_NOTE}")
    if chosen:
        _run([i for i in ORDER if i in chosen], "rep_several", preset, "Repair together")


def _pct(v) -> str:
    return "—" if v is None else f"{v:.1%}"


def _steps_table(result: RepairResult) -> pd.DataFrame:
    rows = []
    for s in result.steps:
        accuracy = s.measure == "accuracy"
        rows.append({"repair": s.id, "what was done": s.title,
                     "before": _pct(s.before) if accuracy else f"{s.before:,} trainable",
                     "after": _pct(s.after) if accuracy else f"{s.after:,} trainable",
                     "95 % interval of the gain": format_points(*s.interval) if s.interval else "—",
                     "images estimated on": s.n_fit, "images measured on": s.n_eval})
    return pd.DataFrame(rows)


def show_result(result: RepairResult, prefix: str) -> None:
    """The proof of a repair, its download, and the button that makes it the current model."""
    o = result.overall
    if o is not None:
        m = st.columns(3)
        m[0].metric(f"Before (original, fed `{result.inference_preset}`)", _pct(o["before"]))
        m[1].metric(f"After (repaired file, fed `{result.feed_preset}`)", _pct(o["after"]),
                    delta=f"{(o['after'] - o['before']) * 100:+.1f} points")
        m[2].metric("Held-out images", o["n_eval"])
        st.caption(f"95 % interval of the gain: {format_points(*o['interval'])}. Images: {result.split['how']}.")
    st.dataframe(_steps_table(result), hide_index=True, width="stretch")
    if len(result.steps) > 1:
        st.caption(f"Order: {result.order_note}")
    for step in result.steps:
        _details(step)
    for note in [n for s in result.steps for n in s.notes]:
        st.markdown(f"- {note}")
    c = st.columns(3)
    c[0].download_button("Download the repaired .keras", result.model_bytes, file_name=result.filename,
                         mime="application/octet-stream", icon=":material/download:", key=f"{prefix}_download",
                         width="stretch")
    adopt = c[1].button("Make this the current model", key=f"{prefix}_adopt", icon=":material/swap_horiz:",
                        width="stretch", help="The current model stays in the sidebar's History.")
    finetune = any(s.id in FREEZING for s in result.steps) and c[2].button(
        "Make current and fine-tune", key=f"{prefix}_finetune", icon=":material/model_training:", width="stretch",
        help="Opens the Fine-tuning page with the repaired copy as the current model.")
    if adopt or finetune:
        _adopt(result)
        if finetune:
            st.switch_page(FINETUNE_PAGE)
        st.rerun()
    st.caption("The file loads anywhere with `keras.models.load_model(path)` (built-in layers only, "
               "`safe_mode=True` works); what tlviz recorded about it is embedded.")


def _adopt(result: RepairResult) -> None:
    loaded, _ = current()
    repaired = cache.load_model_bytes(result.model_bytes, result.filename)  # the file itself, loaded safely
    adopt_model(repaired, f"{result.filename} ({', '.join(result.ids)})",
                f"{loaded.filename or loaded.name} (before repair)" if loaded is not None else None)
    st.session_state["inference_preset"] = result.feed_preset  # what the repaired model takes
    st.session_state["repair_adopted"] = (result.filename, result.feed_preset)


def adopted_notice(preset_widget: str | None = None) -> None:
    """Once, after a repaired model was made current: what it is and what to feed it.

    Args:
        preset_widget: the key of the page's inference-preset widget, set to what the repaired
            model takes (call this before the widget is drawn). Defaults to none.
    """
    done = st.session_state.pop("repair_adopted", None)
    if done:
        if preset_widget:
            st.session_state[preset_widget] = done[1]
        st.success(f"**{done[0]}** is the current model; the one before it is in the sidebar's History. It takes "
                   f"`{done[1]}` input, so the inference preset is now `{done[1]}`.", icon=":material/swap_horiz:")


def _details(step) -> None:
    d = step.details
    if step.id == "normalization-mismatch":
        scores = d.get("accuracy_by_preset_fit") or {}
        st.caption(f"`{step.id}`: the model expects `{d['expected_preset']}` (best on the estimation images: "
                   + ", ".join(f"`{p}` {v:.1%}" for p, v in scores.items())
                   + f"). The original fed `{d['expected_preset']}` scores "
                   f"{d['accuracy_original_expected_preset']:.1%} on the held-out images; the repaired file fed "
                   f"`{d['feed_preset']}` {step.after:.1%}, {d['agreement_with_original']:.1%} of predictions equal.")
    elif step.id == "label-order-mismatch":
        names = d["class_names"]
        st.dataframe(pd.DataFrame({"output": list(range(len(names))), "class now": names,
                                   "was output": d["assignment"]}), hide_index=True)
    elif step.id == "bn-statistics-mismatch":
        table = pd.DataFrame(d["layers"])
        st.caption(f"`{step.id}`: how far each layer's statistics moved (mean shift in stored standard deviations; "
                   "variance ratio new / stored, geometric mean over channels).")
        st.bar_chart(table, x="layer", y="mean_shift", height=220)
        st.dataframe(table, hide_index=True, width="stretch")
    elif step.id == "double-normalization":
        rows = [{"way out": DOUBLE_LABELS[k], "accuracy": _pct(v["accuracy"]),
                 "95 % interval of the gain": format_points(*v["interval"]), "send": f"`{v['feed_preset']}`",
                 "what": v["what"], "chosen": k == d["variant"]} for k, v in d["variants"].items()]
        st.dataframe(pd.DataFrame(rows), hide_index=True, width="stretch")
    elif step.id in FREEZING:
        st.caption(f"`{step.id}`: the freezing table of the copy.")
        st.dataframe(pd.DataFrame(d["freezing_table"]), hide_index=True, width="stretch")
