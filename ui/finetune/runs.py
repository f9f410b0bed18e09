"""All runs of this workspace: the table (and which of its runs were removed to free disk space), overlaid curves,
deleting runs, and the heatmap of a sweep."""

from __future__ import annotations

import datetime as dt

import streamlit as st

from tlviz import charts, diskcap
from tlviz.errors import ConfigError, TlvizError
from tlviz.finetune import ACTIVE_STATES, delete_run, load_run, sweep_table
from ui.finetune.common import keep_valid
from ui.state import workspace

#: Runs removed to free disk space are told about for this many days.
EVICTED_DAYS = 7


def evicted_note(owner: str) -> None:
    """An info line naming this workspace's finished runs that were removed lately to stay under the disk cap."""
    try:
        removed = diskcap.evicted_for(owner, since=dt.datetime.now() - dt.timedelta(days=EVICTED_DAYS))
    except TlvizError:  # no runs folder: nothing was removed from it
        return
    if not removed:
        return
    try:
        cap = diskcap.max_bytes()
    except ConfigError:  # unset or changed since: the sentence names the setting without a size
        cap = None
    st.info(diskcap.runs_removed_text(removed, cap), icon=":material/auto_delete:")


def runs_table(runs) -> None:
    """The table of this workspace's runs (a `tlviz.finetune.list_runs` table), after the note on its runs
    removed to free disk space (`evicted_note`)."""
    evicted_note(workspace())
    view = runs[(["this_model"] if "this_model" in runs else []) + ["run_id", "state", "label", "unfreeze", "lr", "epochs", "batch_size", "optimizer", "preset",
                 "new_head", "two_phase", "bn", "augment", "best_val_accuracy", "final_val_accuracy", "time_s",
                 "ran_on", "stopped_at", "control", "control_of", "model", "images"] + (["kept"] if "kept" in runs else [])]
    st.dataframe(view, hide_index=True, key="ft_runs_table", column_config={
        "kept": st.column_config.CheckboxColumn("keep", help="Never removed to free disk space (mark it in the "
                                                "run's view above)"),
        "this_model": st.column_config.CheckboxColumn("this model", help="A run of the loaded model (listed first); "
                                                      "the others fine-tuned the model named in `model`"),
        "ran_on": st.column_config.TextColumn("ran on", help="local or Ray · node · CPU or GPU"),
        "stopped_at": st.column_config.NumberColumn("stopped after epoch",
                                                    help="Stopped early by ASHA (a sweep on Ray Tune)"),
        "lr": st.column_config.NumberColumn("lr", format="%.0e"),
        "best_val_accuracy": st.column_config.NumberColumn("best val acc", format="percent"),
        "final_val_accuracy": st.column_config.NumberColumn("final val acc", format="percent"),
        "time_s": st.column_config.NumberColumn("time (s)", format="%.1f"),
        "control": st.column_config.TextColumn("control", help="random-init or head-only control of another run"),
        "control_of": st.column_config.TextColumn("control of"),
    })


def compare_curves(runs, labels: dict[str, str], owner: str) -> None:
    """Overlay the curves of chosen runs (the finished ones, and those of the last job, preselected)."""
    ids = list(runs["run_id"])
    finished = [r for r, s in zip(ids, runs["state"]) if s not in ACTIVE_STATES]
    if "ft_compare" not in st.session_state:
        st.session_state["ft_compare"] = finished[:2]
    st.session_state["ft_compare"] = list(dict.fromkeys(st.session_state.pop("ft_compare_add", [])
                                                        + list(st.session_state["ft_compare"])))
    keep_valid("ft_compare", finished)
    compare = st.multiselect("Overlay the curves of", ids, format_func=labels.get, key="ft_compare")
    histories = {}
    for rid in compare:
        try:
            histories[labels[rid]] = load_run(rid, owner=owner).history
        except TlvizError:
            continue
    if histories:
        st.altair_chart(charts.compare_chart(histories))


def delete_runs(ids: list[str], labels: dict[str, str], owner: str) -> None:
    """Pick runs and delete them (each refusal shown)."""
    keep_valid("ft_delete_ids", ids)
    doomed = st.multiselect("Runs to delete", ids, format_func=labels.get, key="ft_delete_ids")
    if st.button("Delete", key="ft_delete", icon=":material/delete:", disabled=not doomed):
        errors = []
        for rid in doomed:
            try:
                delete_run(rid, owner=owner)
            except TlvizError as exc:
                errors.append(str(exc))
        for e in errors:
            st.error(e)
        if not errors:
            st.rerun()


def sweeps(runs) -> None:
    """The heatmap of a chosen sweep, when this workspace ran any."""
    ids = [s for s in runs["sweep_id"].dropna().unique()]
    if ids:
        st.subheader("Sweeps")
        sid = st.selectbox("Sweep", ids, key="ft_sweep_show")
        st.altair_chart(charts.sweep_heatmap(sweep_table(runs, sid)))
