"""Heavy analyses (normalization comparison, diagnosis) in a worker process, followed by a polling panel."""

from __future__ import annotations

import streamlit as st

from tlviz import diskcap, jobs
from tlviz.errors import TlvizError
from tlviz.jobs import waiting_text
from ui import cache
from ui.state import image_set_key, current, image_source, workspace

ANALYSIS_POLL_S = 2.0
#: A job waiting in the queue changes rarely: its page polls less often (each poll is a script run).
QUEUED_POLL_S = 4.0


def _cancel(job_id: str) -> None:
    try:
        jobs.cancel(job_id)
    except TlvizError:
        pass


def _job_panel(job_id: str, prefix: str, drawn_state: str = "running") -> None:
    status = jobs.poll(job_id)
    if not status.active or status.state != drawn_state:
        st.rerun()  # the whole page: the result (or the failure), or a panel polling at the new state's pace
    with st.container(border=True):
        if status.state == "queued":
            st.progress(0.0, text=waiting_text(status.queue_position, status.next_is_yours))
        else:
            st.progress(status.fraction, text=status.text or "Starting the worker…")
        st.button("Cancel", key=f"{prefix}_cancel", icon=":material/stop:", on_click=_cancel, args=(job_id,),
                  help="Stops the analysis; nothing partial is kept.")
        st.caption("Measured in a separate worker process: the other pages stay usable meanwhile.")


def analysis(kind: str, params: dict | None = None, *, start: bool = False, auto: bool = False,
             prefix: str, model=None) -> tuple[object | None, str | None]:
    """The current model's `kind` report (``"normalize"`` or ``"diagnose"``), run in a worker when needed.

    A stored result is returned at once (`tlviz.jobs` computes each one once).
    Otherwise this session's latest job for it is followed: a polling fragment
    shows its progress, place in the queue and a Cancel button; a failure shows
    its message.

    Args:
        kind: ``"normalize"`` or ``"diagnose"``.
        params: the job's parameters (`tlviz.jobs.start_analysis`). Defaults to none.
        start: start a job unless one is running (the page's button was pressed). Defaults to `False`.
        auto: start one if this session never started one for these inputs. Defaults to `False`.
        prefix: the page's widget-key prefix.
        model: a `LoadedModel` to analyse instead of the current one (e.g. a fine-tuning run's saved
            model, for a Grad-CAM gallery of its confusion cells). Defaults to the current model.

    Returns:
        ``(report, note)``: the report, or the one this page showed last for the
        same model and image set (with a sentence saying so in `note`), or
        ``(None, None)`` when nothing was measured yet.
    """
    loaded, images = current()
    loaded = loaded if model is None else model
    source, owner, ikey = image_source(), workspace(), image_set_key()
    pair = (cache.remembered_key(loaded), ikey)
    try:
        key = jobs.analysis_key(kind, loaded, images, params, source=source, image_key=ikey)
        report = cache.stored_report(kind, key)
        job_id = None if report is not None else jobs.latest_job(kind, key, owner)
        status = jobs.poll(job_id) if job_id else None
        if report is None and (start or (auto and status is None)) and (status is None or not status.active):
            job_id = jobs.start_analysis(kind, loaded, images, params, source=source, owner=owner, image_key=ikey)
            removed = diskcap.evicted_of_job(job_id)  # making room under TLVIZ_RUNS_MAX_GB: say what went
            st.session_state[f"{prefix}_evicted"] = (job_id, diskcap.job_removed_text(
                removed, owner, diskcap.max_bytes())) if removed else None
            status = jobs.poll(job_id)
            report = cache.stored_report(kind, key)
    except TlvizError as exc:
        st.error(str(exc), icon=":material/block:")
        report, status = None, None
    st.session_state[f"{prefix}_job"] = None
    if report is not None:
        st.session_state[f"_{prefix}_shown"] = (pair, kind, key)
        if kind in ("normalize", "diagnose") and not jobs.can_reopen(source):  # the kinds that decode files again
            st.caption(jobs.NO_SOURCE_NOTE)
        return report, None
    evicted = st.session_state.get(f"{prefix}_evicted")
    if evicted and status is not None and evicted[0] == status.job_id:
        st.info(evicted[1], icon=":material/auto_delete:")
    if status is not None and status.active:
        st.session_state[f"{prefix}_job"] = status.job_id
        every = QUEUED_POLL_S if status.state == "queued" else ANALYSIS_POLL_S
        st.fragment(run_every=every)(_job_panel)(status.job_id, prefix, status.state)
    elif status is not None and status.state == "failed":
        st.error(status.message, icon=":material/block:")
    elif status is not None and status.state == "cancelled":
        st.info("The analysis was cancelled.", icon=":material/stop_circle:")
    shown = st.session_state.get(f"_{prefix}_shown")
    if shown and shown[0] == pair and shown[1] == kind:
        earlier = cache.stored_report(kind, shown[2])
        if earlier is not None:
            return earlier, "Below: the earlier result for this model and image set, until a new one is ready."
    return None, None
