"""Starting a job: runs, a sweep or the learning-rate range test, on this machine or a Ray cluster, the offer
to run on this machine when the cluster cannot be reached, and what starting it removed to free disk space."""

from __future__ import annotations

import threading
from dataclasses import dataclass, field

import streamlit as st
from streamlit.runtime.scriptrunner import get_script_run_ctx

from tlviz import diskcap
from tlviz.errors import ClusterUnreachable, ConfigError, TlvizError
from tlviz.finetune import RunConfig, RunRefused
from tlviz.jobs import default_executor, describe_executor, poll, start_job, start_lr_finder
from tlviz.presets import preset_resize
from ui.finetune.original import current_original
from ui.state import workspace


def on_ray() -> bool:
    """Whether new runs go to a Ray cluster (``TLVIZ_RAY_ADDRESS``; a nonsensical value counts as no)."""
    try:
        return default_executor() == "ray"
    except ConfigError:
        return False


def start(kind: str, loaded, images, config: RunConfig, configs: list[RunConfig] | None = None,
          executor: str | None = None, asha: bool = False, controls: list[str] | tuple[str, ...] = ()) -> None:
    """Start runs (`kind` ``"runs"``: `configs`, else `config`) or the range test (``"lrfind"``) and rerun.

    A Ray cluster that cannot be reached leaves an offer to run on this machine (`offer_local`).

    Args:
        kind: ``"runs"`` or ``"lrfind"``.
        loaded: the current `LoadedModel`.
        images: the current `ImageSet`.
        config: the configuration from `config_form`.
        configs: several configurations (a sweep). Defaults to ``[config]``.
        executor: ``"local"`` or ``"ray"``. Defaults to the configured one.
        asha: stop poor runs of a sweep early (Ray Tune's ASHA). Defaults to `False`.
        controls: controls to queue after each run (``"random-init"``, ``"head-only"``). Defaults to none.

    Every run of the job reports the original task's retention when that image set is loaded (`original_task`).
    """
    # A second click (a double-click on Start) may land in a second run of this page while the first is still
    # starting a job (a large model's inputs take seconds to save), and what that first run writes to the session
    # state is then lost: wait for it, and follow the job it started rather than start another.
    starting = _starting()
    if not starting.lock.acquire(timeout=START_WAIT_S):
        return
    try:
        if st.session_state.get("ft_job"):
            return  # this session follows a job already: nothing runs twice
        if starting.job_id is not None and poll(starting.job_id).active:
            st.session_state["ft_job"], st.session_state["ft_job_kind"] = starting.job_id, starting.kind
            st.rerun()
        _start(starting, kind, loaded, images, config, configs, executor, asha, controls)
    finally:
        starting.lock.release()


@dataclass
class _Starting:
    """One session's job start: a lock around it, and the last job it started (shared by overlapping runs)."""

    lock: threading.Lock = field(default_factory=threading.Lock)
    job_id: str | None = None
    kind: str | None = None


_STARTING: dict[tuple[str, str], _Starting] = {}
_STARTING_GUARD = threading.Lock()
#: How long a click waits for another run of the page that is starting a job.
START_WAIT_S = 120.0


def _starting() -> _Starting:
    """This browser session's `_Starting`, kept by session id and workspace: not in the session state, which a
    run cut short does not update (the workspace too, as test sessions share one id)."""
    ctx = get_script_run_ctx()
    with _STARTING_GUARD:
        return _STARTING.setdefault((ctx.session_id if ctx else "", workspace()), _Starting())


def _start(starting: _Starting, kind: str, loaded, images, config: RunConfig, configs, executor, asha,
           controls) -> None:
    configs = configs or [config]
    try:
        diskcap.max_bytes()  # a bad TLVIZ_RUNS_MAX_GB stops here, before any run folder is written
    except ConfigError as exc:
        st.error(str(exc), icon=":material/block:")
        return
    images = images_for_preset(loaded, images, config.preset)
    try:
        if kind == "lrfind":
            job = start_lr_finder(loaded, images, config, owner=workspace(), executor=executor)
        else:
            job = start_job(loaded, images, configs, owner=workspace(), executor=executor, asha=asha,
                            controls=list(controls), original=current_original(loaded))
    except ClusterUnreachable as exc:
        st.session_state["ft_offer_local"] = {"message": str(exc), "kind": kind,
                                              "configs": [c.to_dict() for c in configs], "controls": list(controls)}
        return
    except TlvizError as exc:
        st.error(str(exc), icon=":material/block:")
        return
    starting.job_id, starting.kind = job.job_id, kind  # first, before any Streamlit call can cut this run short
    st.session_state["ft_job"] = job.job_id
    st.session_state.pop("ft_offer_local", None)
    st.session_state["ft_job_kind"] = kind
    _remember_evicted(job.job_id)
    st.rerun()


def _remember_evicted(job_id: str) -> None:
    """Keep the sentence on what creating `job_id` removed to stay under the disk cap (shown by `offer_local`)."""
    st.session_state.pop("ft_evicted", None)
    try:
        removed = diskcap.evicted_of_job(job_id)
        text = diskcap.job_removed_text(removed, workspace(), diskcap.max_bytes()) if removed else ""
    except TlvizError:  # the job folder or the setting went away since: nothing to tell
        return
    if text:
        st.session_state["ft_evicted"] = {"job": job_id, "text": text}


def evicted_by_job() -> None:
    """While this session follows the job it started, what starting it removed to stay under the disk cap
    (``TLVIZ_RUNS_MAX_GB``): this person's runs by name, other people's runs, results and caches as counts."""
    note = st.session_state.get("ft_evicted")
    if note and note["job"] == st.session_state.get("ft_job"):
        st.info(note["text"], icon=":material/auto_delete:")


def images_for_preset(loaded, images, preset: str):
    """`images`, or the same image source decoded again with the resize `preset` fixes (``teachable``: a centre
    crop), so a run trains on what the model's own pipeline would show it."""
    from ui.cache import decode_images

    resize = preset_resize(preset, images.resize)
    source = st.session_state.get("image_source")
    if resize == images.resize or source is None:
        return images
    with st.spinner(f"Decoding the images with the `{preset}` preset's resize ({resize})…"):
        return decode_images(st.session_state["image_source_key"], loaded, source, resize=resize)


def offer_local(loaded, images) -> None:
    """When the Ray cluster could not be reached: the reason, and a button that runs the same job on this machine.
    Drawn under the Start buttons, so it first says what starting the current job removed (`evicted_by_job`)."""
    evicted_by_job()
    offer = st.session_state.get("ft_offer_local")
    if not offer:
        return
    with st.container(border=True):
        st.error(offer["message"], icon=":material/cloud_off:")
        what = "the range test" if offer["kind"] == "lrfind" else (
            f"the {len(offer['configs'])} runs" if len(offer["configs"]) > 1 else "the run")
        c1, c2, _ = st.columns([2, 1, 2])
        if c1.button(f"Run {what} on this machine instead", key="ft_run_local", icon=":material/computer:",
                     type="primary"):
            try:
                configs = [RunConfig.from_dict(c) for c in offer["configs"]]
            except RunRefused as exc:
                st.session_state.pop("ft_offer_local", None)
                st.error(str(exc), icon=":material/block:")
                return
            start(offer["kind"], loaded, images, configs[0], configs, executor="local",
                  controls=offer.get("controls") or ())
        if c2.button("Dismiss", key="ft_offer_dismiss"):
            st.session_state.pop("ft_offer_local", None)
            st.rerun()


def where_runs_go() -> str:
    """One line for the page: where a new run will run."""
    return f"Runs go to: {describe_executor()}."
