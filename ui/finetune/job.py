"""The running job: progress, live curves and Cancel (polled by a fragment), the range test's result, and the
offer to follow runs still in progress after a reload."""

from __future__ import annotations

import streamlit as st

from tlviz import charts
from tlviz.finetune import ACTIVE_STATES, LRFinderResult, list_runs, load_run, sweep_table
from tlviz.jobs import cancel, poll
from ui.finetune.common import POLL_S
from ui.state import workspace


def follow_job() -> None:
    """The job this session follows (``ft_job``): progress, live curves and Cancel, polled every `POLL_S`."""
    if st.session_state.get("ft_job"):
        st.fragment(run_every=POLL_S)(_job_panel)()


def _job_panel() -> None:
    job_id = st.session_state.get("ft_job")
    if not job_id:
        return
    status = poll(job_id)
    with st.container(border=True):
        st.progress(status.fraction, text=status.text)  # every heavy job goes through one queue
        if status.executor == "ray":
            placed = sorted({r.ran_on for r in status.running_runs if r.ran_on})
            st.caption("On the Ray cluster" + (": " + "; ".join(placed) if placed else "") + ".")
        if status.kind != "lrfind" and not status.queue_position:
            if status.current is not None and len(status.current.history):
                st.altair_chart(charts.curves_chart(status.current.history))
            if status.sweep_id is not None:
                table = sweep_table(list_runs(owner=workspace()), status.sweep_id)
                if len(table):
                    st.altair_chart(charts.sweep_heatmap(table))
        st.button("Cancel", key="ft_cancel", icon=":material/stop:", on_click=cancel, args=(job_id,),
                  help="Stops after the current batch; what was measured is kept.")
    if not status.active:
        st.session_state["ft_job"] = None
        if status.unreachable:  # controls are queued again, linked to the new runs
            st.session_state["ft_offer_local"] = {
                "message": status.message, "kind": status.kind,
                "configs": [c for c in status.configs if not c.get("control")],
                "controls": sorted({c["control"] for c in status.configs if c.get("control")})}
        shown = next((r for r in status.runs if r.run_id == status.run_to_show), None)
        if shown is not None and shown.ran_on:
            st.session_state["ft_last_ran_on"] = shown.ran_on
        if status.kind == "lrfind":
            st.session_state["ft_lr_result"] = status.result
            if status.state == "failed":
                st.session_state["ft_lr_error"] = status.message
        elif status.runs:
            st.session_state["ft_compare_add"] = [r.run_id for r in status.runs]
            st.session_state["ft_show_run"] = status.run_to_show
        st.rerun()


def lr_result_panel() -> None:
    """The last range test's failure, or its curve and a button that copies the suggested rate."""
    if st.session_state.get("ft_lr_error"):
        st.error(st.session_state.pop("ft_lr_error"), icon=":material/block:")
    if not st.session_state.get("ft_lr_result"):
        return
    res = LRFinderResult.from_dict(st.session_state["ft_lr_result"])
    with st.container(border=True):
        st.markdown("#### Learning-rate range test")
        st.write(res.message)
        if len(res.curve):
            st.altair_chart(charts.lr_finder_chart(res.curve, res.suggestion), width="stretch")
        if res.suggestion:
            st.button(f"Use {res.suggestion:.1e} as the learning rate", key="ft_use_lr", on_click=_set_lr,
                      args=(res.suggestion,))


def runs_in_progress(runs, owner: str) -> None:
    """When runs of this workspace are in progress but no job is followed (after a reload): offer to follow them."""
    active = runs[runs["state"].isin(ACTIVE_STATES)]
    if not len(active) or st.session_state.get("ft_job"):
        return
    job_ids = sorted({load_run(r, owner=owner).job_id for r in active["run_id"]} - {None})
    st.info(f"{len(active)} run(s) in progress (started before a reload, or in another tab).",
            icon=":material/hourglass_top:")
    if job_ids and st.button("Follow the runs in progress", key="ft_follow"):
        st.session_state["ft_job"] = job_ids[-1]
        st.session_state["ft_job_kind"] = "runs"
        st.rerun()


def _set_lr(value: float) -> None:
    st.session_state["ft_lr"] = float(f"{value:.2g}")
