"""The fine-tuning page's panels: the run configuration, the running job, one run's results, the run list.

Widgets -> `tlviz.finetune` (runs happen in a worker process, polled by a
fragment) -> `tlviz.charts`. Widget keys start with ``ft_``.

With each run: its representation drift next to the weight changes, its controls
(random-init, head-only: one click each) compared on the same validation images,
the ``catastrophic-forgetting`` verdict, and, when the original task's image set is
loaded (`original_task`), how much of that task survives.
"""

from __future__ import annotations

import math

import streamlit as st

from tlviz import charts
from tlviz.errors import ClusterUnreachable, ConfigError, ImageSetRefused, TlvizError
from tlviz.finetune import (ACTIVE_STATES, CONTROL_LABELS, CONTROLS, OPTIMIZER_LABELS, OPTIMIZERS, LRFinderResult,
                            RunConfig, RunRecord, RunRefused, cancel_job, compare, control_config, controls_of,
                            decide_head, default_executor, default_preset, delete_run, depth_choices,
                            describe_executor, format_seconds, largest_movers, list_runs, load_run, original_labels,
                            poll_job, start_job, start_lr_finder, sweep_table)
from tlviz.layers import freezing_findings
from tlviz.unfreeze import base_weight_layers, unfreeze_plan
from tlviz.presets import PRESET_DESCRIPTIONS, applicable_presets, preset_resize
from tlviz.stats import format_points, wilson_interval
from ui.cache import load_model_bytes, remembered_key
from ui.state import workspace
from ui.widgets import GalleryEntry, finding_card, finding_cards, gallery

RATES = [1e-6, 3e-6, 1e-5, 3e-5, 1e-4, 3e-4, 1e-3, 3e-3, 1e-2, 3e-2, 1e-1, 3e-1, 1.0]
POLL_S = 1.0
GALLERY = 24
STATE_ICONS = {"completed": ":material/check_circle:", "cancelled": ":material/stop_circle:",
               "diverged": ":material/warning:", "failed": ":material/error:", "refused": ":material/block:",
               "running": ":material/hourglass_top:", "queued": ":material/schedule:",
               "stopped": ":material/content_cut:"}


def _val(v, fmt: str = "") -> str:
    return "?" if v is None or (isinstance(v, float) and not math.isfinite(v)) else format(v, fmt)


def _pct(v) -> str:
    return "–" if v is None or (isinstance(v, float) and not math.isfinite(v)) else f"{float(v):.1%}"


#: The run settings keep their values while the person looks at another page and comes back (Streamlit drops
#: a widget's value when its page is not drawn, unless it persists for the session).
SESSION = "session"


def keep_valid(key: str, options) -> None:
    """Drop remembered multiselect values that are no longer options (another model, deleted runs)."""
    if key in st.session_state:
        st.session_state[key] = [v for v in st.session_state[key] if v in options]


def _set_lr(value: float) -> None:
    st.session_state["ft_lr"] = float(f"{value:.2g}")


# -- configuration ---------------------------------------------------------------

def _depth_control(table) -> int:
    choices = depth_choices(table)
    n = len(base_weight_layers(table))
    has_blocks = len(choices) < n + 1
    snap = has_blocks and st.toggle("Snap to block boundaries", value=True, key="ft_snap", persist_state=SESSION,
                                    help="Unfreeze whole named blocks (as MobileNet, ResNet and EfficientNet "
                                         "name them), not the middle of one.")
    if snap:
        labels = dict(choices)
        if st.session_state.get("ft_depth_block") not in labels:
            st.session_state.pop("ft_depth_block", None)
        return int(st.select_slider("Unfreeze depth", options=[d for d, _ in choices], format_func=labels.get,
                                    key="ft_depth_block", persist_state=SESSION,
                                    help="Layers holding weights, counted from the top of the base, that train."))
    if n == 0:
        st.caption("The base holds no weights: only the head can train.")
        return 0
    if st.session_state.get("ft_depth", 0) > n:
        st.session_state["ft_depth"] = n
    return int(st.slider("Unfreeze depth (base layers with weights, from the top)", 0, n, 0, key="ft_depth",
                         persist_state=SESSION,
                         help="0 trains only the head; the maximum unfreezes the whole base."))


def config_form(loaded, images, table) -> RunConfig | None:
    """Draw the config widgets.

    Args:
        loaded: the current `LoadedModel`.
        images: the current `ImageSet`.
        table: the model's layer table (`ui.current_layer_table`).

    Returns:
        The validated `RunConfig`, or None with the reason shown.
    """
    presets = applicable_presets(loaded.channels, teachable=loaded.teachable_machine)
    preset_default = default_preset(st.session_state.get("best_preset"), loaded.recorded_preset)
    if st.session_state.get("ft_preset_default") != (remembered_key(loaded), preset_default):
        st.session_state["ft_preset_default"] = (remembered_key(loaded), preset_default)
        st.session_state["ft_preset"] = preset_default if preset_default in presets else presets[0]
    st.session_state.setdefault("ft_lr", 1e-3)
    head = None
    try:
        head = decide_head(loaded.n_outputs, loaded.class_names, images.class_names, None)
    except RunRefused:
        pass

    c1, c2, c3 = st.columns(3)
    with c1:
        depth = _depth_control(table)
        train_bn = st.session_state.get("ft_bn", "frozen") == "train"
        plan = unfreeze_plan(loaded.model, depth, train_bn, table=table)
        base_rows = plan[(plan["role"] == "base") & plan["would_train"]]
        st.caption(f"Base layers that train: **{len(base_rows)}** ({int(base_rows['would_train_params'].sum()):,} "
                   "parameters), plus the head.")
    with c2:
        lr = st.number_input("Learning rate", min_value=1e-7, max_value=10.0, step=1e-4, format="%.2e",
                             key="ft_lr", persist_state=SESSION, help="The learning-rate finder below suggests one.")
        epochs = st.number_input("Epochs", 1, 500, 5, key="ft_epochs", persist_state=SESSION)
        batch = st.select_slider("Batch size", [8, 16, 32, 64, 128, 256], value=32, key="ft_batch",
                                 persist_state=SESSION)
    with c3:
        optimizer = st.radio("Optimizer", OPTIMIZERS, format_func=OPTIMIZER_LABELS.get, horizontal=True,
                             key="ft_optimizer", persist_state=SESSION)
        preset = st.selectbox("Preset", presets, key="ft_preset", persist_state=SESSION,
                              format_func=lambda p: f"{p} — {PRESET_DESCRIPTIONS[p]}",
                              help="Default: the best preset found on the Normalization page, else the one the "
                                   "model records, else unit.")
        val_fraction = st.slider("Validation share (stratified)", 0.1, 0.5, 0.2, 0.05, key="ft_val",
                                 persist_state=SESSION)

    head_key = f"ft_new_head_{remembered_key(loaded)[:12]}_{st.session_state.get('image_source_key')}"
    if head is not None and head.forced:
        new_head = st.checkbox("New head for the image set's classes", value=True, disabled=True, key=head_key,
                               persist_state=SESSION)
    else:
        new_head = st.checkbox("New head for the image set's classes", value=bool(head and head.new_head),
                               key=head_key, persist_state=SESSION,
                               help="Replace the classification head by a fresh one (pooling, dropout, dense "
                                    "softmax): the standard transfer-learning step.")
    if head is not None:
        st.caption(head.reason[:1].upper() + head.reason[1:] + ".")

    with st.expander("Regularization, BatchNormalization and schedule"):
        r1, r2, r3 = st.columns(3)
        dropout = r1.slider("Dropout of a new head", 0.0, 0.8, 0.2, 0.05, key="ft_dropout", persist_state=SESSION)
        wd = r1.number_input("Weight decay", 0.0, 0.1, 0.0, step=1e-4, format="%.0e", key="ft_wd",
                             persist_state=SESSION)
        augment = r1.checkbox("Light augmentation (flips, shifts)", value=False, key="ft_augment",
                              persist_state=SESSION,
                              help="Off by default. Augmentation changes the images every epoch, so base "
                                   "activations cannot be cached: runs get slower.")
        bn = r2.radio("BatchNormalization", ["frozen", "train"], key="ft_bn", persist_state=SESSION,
                      format_func={"frozen": "keep frozen (inference mode, recommended)",
                                   "train": "train it in the unfrozen part"}.get)
        seed = r2.number_input("Seed", 0, 10**6, 0, key="ft_seed", persist_state=SESSION)
        two_phase = r3.checkbox("Train the new head first (two phases)", value=False, key="ft_two_phase",
                                persist_state=SESSION,
                                help="First the head alone with the base frozen, then unfreeze to the chosen "
                                     "depth at the chosen rate (fastai's fine_tune).")
        head_epochs = r3.number_input("Head-phase epochs", 1, 100, 2, key="ft_head_epochs", persist_state=SESSION,
                                      disabled=not two_phase)
        head_lr = r3.number_input("Head-phase learning rate", 1e-7, 10.0, 1e-3, format="%.2e", step=1e-4,
                                  key="ft_head_lr", persist_state=SESSION, disabled=not two_phase)
        label = st.text_input("Label (shown in the run list)", key="ft_label", persist_state=SESSION, max_chars=80)

    unfreeze_frozen = False
    frozen = [f for f in freezing_findings(loaded.model, table) if f.id == "no-trainable-weights"]
    if frozen:
        finding_card(frozen[0], note="A run on this model as it is refuses to start: training would change nothing.")
        unfreeze_frozen = st.checkbox("Unfreeze the head for this run (and the chosen depth of the base)",
                                      key="ft_unfreeze_frozen", persist_state=SESSION)
        if not unfreeze_frozen:
            return None
    try:
        return RunConfig(unfreeze=depth, lr=float(lr), epochs=int(epochs), batch_size=int(batch), optimizer=optimizer,
                         preset=preset, val_fraction=float(val_fraction), seed=int(seed), new_head=bool(new_head),
                         head_dropout=float(dropout), weight_decay=float(wd), augment=bool(augment), bn=bn,
                         two_phase=bool(two_phase), head_epochs=int(head_epochs), head_lr=float(head_lr),
                         unfreeze_frozen=unfreeze_frozen, label=label)
    except RunRefused as exc:
        st.error(str(exc), icon=":material/block:")
        return None


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
    if st.session_state.get("ft_job"):
        return  # a second click (a double-click on Start) while this session follows a job: nothing runs twice
    configs = configs or [config]
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
    st.session_state.pop("ft_offer_local", None)
    st.session_state["ft_job"] = job.job_id
    st.session_state["ft_job_kind"] = kind
    st.rerun()


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
    """When the Ray cluster could not be reached: the reason, and a button that runs the same job on this machine."""
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


def asha_option() -> bool:
    """The sweep's early-stopping choice: shown (and possible) only when runs go to a Ray cluster."""
    if not on_ray():
        st.caption("On a Ray cluster (set `TLVIZ_RAY_ADDRESS`) a sweep runs through Ray Tune, several runs at once, "
                   "and can stop poor configurations early.")
        return False
    return st.checkbox("Stop poor configurations early (ASHA)", value=True, key="ft_asha", persist_state=SESSION,
                       help="Ray Tune's asynchronous successive halving: after each epoch (from the first), a run "
                            "whose validation loss is worse than most runs' at that epoch stops; the heatmap marks "
                            "it with the epoch it stopped at.")


def where_runs_go() -> str:
    """One line for the page: where a new run will run."""
    return f"Runs go to: {describe_executor()}."


def controls_choice(config: RunConfig | None) -> list[str]:
    """The controls to run after the run (multiselect); a head-only control is offered only when the base trains."""
    options = [c for c in CONTROLS if not (c == "head-only" and config is not None and config.unfreeze == 0)]
    keep_valid("ft_controls", options)
    return st.multiselect(
        "Also run controls", options, key="ft_controls", persist_state=SESSION, format_func=CONTROL_LABELS.get,
        help="Random-init: the same configuration on the same architecture with fresh random weights (do the "
             "pre-trained weights help at all?). Head-only: the same configuration with the base frozen (does "
             "unfreezing help?). Each is compared with the run on the same validation images, with a 95 % interval.")


# -- the original task (retention) -------------------------------------------------------------

def _original_refused(message: str) -> None:
    st.session_state["ft_original_error"] = message
    st.session_state.pop("ft_original_source", None)
    st.session_state.pop("ft_original_key", None)


def original_task(loaded) -> None:
    """An optional second image set: the model's original task, whose accuracy each run reports before and after.

    A sample set or an uploaded ``.zip`` (one sub-folder per class); it is decoded at the model's input size and
    must match the model's outputs (`tlviz.finetune.retention.original_labels`), else it is refused with the
    reason and the previous choice is kept.
    """
    import hashlib

    from tlviz.imagesets import ImageSource, open_source
    from tlviz.samples import SAMPLE_IMAGE_SETS, sample_path

    chosen = current_original(loaded)
    title = "Original task (optional): how much of it survives each run"
    if chosen is not None:
        title += f" · {chosen.source or 'loaded'} ({len(chosen)} images)"
    with st.expander(title, expanded=bool(st.session_state.get("ft_original_error"))):
        st.caption("Load the images of the task the model file was trained for (its classes are the model's outputs, "
                   "with its original head still in the file). Each run then scores that task with the original "
                   "head on the base as the run left it, before and after, on the same images.")
        kind = st.radio("Original task's images", ["None", "Sample", "Upload .zip"], horizontal=True,
                        key="ft_original_kind", label_visibility="collapsed")
        if kind == "None":
            st.session_state.pop("ft_original_source", None)
            st.session_state.pop("ft_original_key", None)
            st.session_state.pop("ft_original_error", None)
        elif kind == "Sample":
            name = st.selectbox("Sample image set", SAMPLE_IMAGE_SETS, key="ft_original_sample")
            if st.session_state.get("ft_original_key") != f"sample:{name}":
                _use_original(loaded, open_source(sample_path(name)), f"sample:{name}")
        else:
            up = st.file_uploader("Zip of class folders", type=["zip"], key="ft_original_upload")
            if up is not None and st.session_state.get("_ft_original_upload_id") != up.file_id:
                data = up.getvalue()
                try:
                    _use_original(loaded, ImageSource.from_zip(data, up.name),
                                  "zip:" + hashlib.sha256(data).hexdigest())
                except ImageSetRefused as exc:
                    _original_refused(str(exc))
                # Marked handled only once used or refused: an interrupting rerun tries it again.
                st.session_state["_ft_original_upload_id"] = up.file_id
        if st.session_state.get("ft_original_error"):
            st.error(st.session_state["ft_original_error"], icon=":material/block:")
        chosen = current_original(loaded)
        if chosen is not None:
            st.caption(f"Each new run reports the original task on **{len(chosen)} images** of "
                       f"{len(chosen.class_names)} classes ({', '.join(chosen.class_names[:8])}).")


def _use_original(loaded, source, key: str) -> None:
    from ui.cache import decode_images

    try:
        images = decode_images(key, loaded, source)
        original_labels(loaded, images)
    except (ImageSetRefused, RunRefused) as exc:
        _original_refused(str(exc))
        return
    st.session_state["ft_original_source"] = source
    st.session_state["ft_original_key"] = key
    st.session_state.pop("ft_original_error", None)


def current_original(loaded):
    """The original task's `ImageSet` at the current model's input size, or None (none loaded, or it no longer
    matches the current model)."""
    from ui.cache import decode_images

    source, key = st.session_state.get("ft_original_source"), st.session_state.get("ft_original_key")
    if source is None or key is None:
        return None
    try:
        images = decode_images(key, loaded, source)
        original_labels(loaded, images)
    except (ImageSetRefused, RunRefused):
        return None
    return images


# -- the running job -------------------------------------------------------------------

def follow_job() -> None:
    """The job this session follows (``ft_job``): progress, live curves and Cancel, polled every `POLL_S`."""
    if st.session_state.get("ft_job"):
        st.fragment(run_every=POLL_S)(_job_panel)()


def _job_panel() -> None:
    job_id = st.session_state.get("ft_job")
    if not job_id:
        return
    status = poll_job(job_id)
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
        st.button("Cancel", key="ft_cancel", icon=":material/stop:", on_click=cancel_job, args=(job_id,),
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


# -- results of one run ---------------------------------------------------------------------

def run_labels(runs) -> dict[str, str]:
    """One line per run of a `tlviz.finetune.list_runs` table, for select boxes: id, state, depth, rate, best."""
    return {r.run_id: f"{r.run_id} · {r.state} · depth {_val(r.unfreeze)} · lr {_val(r.lr, '.0e')} · "
                      f"best {_pct(r.best_val_accuracy)}" + (f" · {r.label}" if r.label else "")
            for r in runs.itertuples()}



def show_run(rec: RunRecord, images, current_images_key: str, loaded=None, records: list | None = None) -> None:
    """One run: state, config, metrics, findings, curves, per-class accuracy and confusion, weight changes and
    representation drift, its controls and the catastrophic-forgetting verdict, the original task's retention.

    Args:
        rec: the `RunRecord`.
        images: the current `ImageSet` (a confusion cell shows its images when the run used it).
        current_images_key: `ui.pixels_key` of the current image set.
        loaded: the current `LoadedModel` (a control can start when the run used it). Defaults to `None`.
        records: this workspace's `RunRecord`s (to find the run's controls). Defaults to none.
    """
    st.markdown(f"#### {STATE_ICONS.get(rec.state, '')} Run `{rec.run_id}` — {rec.state}")
    described = rec.describe()
    if described:
        st.caption(described)
    if rec.active:
        st.info("In progress: follow it above.", icon=":material/hourglass_top:")
        return
    if rec.ran_on:
        st.caption(f"Ran on: {rec.ran_on}")
    if rec.state in ("failed", "refused"):
        st.error(rec.message or "The run failed.", icon=":material/block:")
    elif rec.state == "stopped":
        st.warning(rec.message or "Stopped early by the sweep's scheduler.", icon=":material/content_cut:")
    out = rec.outcome
    if out.final:
        k = st.columns(5)
        k[0].metric("Val accuracy", _pct(out.val_accuracy),
                    help="The final model on the validation images (inference mode).")
        k[1].metric("Val loss", "–" if out.val_loss is None else f"{out.val_loss:.3f}")
        k[2].metric("Train accuracy", _pct(out.train_accuracy), help="Last epoch, training mode (dropout on).")
        k[3].metric("Best val accuracy", _pct(out.best_val_accuracy))
        k[4].metric("Time", format_seconds(out.elapsed_s))
    finding_cards(out.findings)
    for note in out.notes:
        st.caption("• " + note)
    if len(rec.history):
        st.altair_chart(charts.curves_chart(rec.history))
    if out.empty:
        return
    _confusion(rec, out, images, current_images_key)
    _weight_changes(rec, out)
    _retention(out)
    _controls(rec, out, loaded, images, current_images_key, records or [])
    if rec.model_path is not None:
        st.download_button("Download the fine-tuned model (.keras)", data=rec.model_path.read_bytes(),
                           file_name=f"finetuned_{rec.run_id}.keras", mime="application/octet-stream",
                           key="ft_download", icon=":material/download:", on_click="ignore")


def _confusion(rec: RunRecord, out, images, current_images_key: str) -> None:
    names = out.class_names
    left, right = st.columns([2, 3])
    with left:
        if len(out.per_class):
            st.dataframe(out.per_class, hide_index=True, column_config={
                "accuracy": st.column_config.ProgressColumn("val accuracy", min_value=0.0, max_value=1.0,
                                                            format="percent")})
    with right:
        if out.confusion is not None:
            st.altair_chart(charts.confusion_chart(out.confusion, names))
    if not names:
        return
    s1, s2 = st.columns(2)
    t = s1.selectbox("True class", range(len(names)), format_func=lambda i: names[i], key="ft_cell_true")
    p = s2.selectbox("Predicted as", range(len(names)), format_func=lambda i: names[i], key="ft_cell_pred")
    idx = out.cell(t, p)
    if rec.image_key != current_images_key:
        st.caption(f"{len(idx)} validation images in this cell. Load the image set this run used "
                   f"({rec.images_source}) to see them.")
    elif len(idx) == 0:
        st.caption("No validation image in this cell.")
    else:
        shown = idx[:GALLERY]
        preset = rec.config.get("preset")
        run_model = None
        if rec.model_path is not None:  # Grad-CAM explains the run's own model (cached by content, once)
            try:
                run_model = load_model_bytes(rec.model_path.read_bytes(), rec.model_path.name)
            except TlvizError:
                run_model = None
        if run_model is None:
            st.image([images.images[i] for i in shown], caption=[images.files[i] for i in shown], width=72)
        else:
            gallery(images, [GalleryEntry(int(i), images.files[i], (preset,) if preset else ()) for i in shown],
                    key="ft_cell", model=run_model)
        if len(idx) > GALLERY:
            st.caption(f"First {GALLERY} of {len(idx)}.")


def _weight_changes(rec: RunRecord, out) -> None:
    wc = rec.weight_change
    if wc is None or not len(wc):
        return
    st.markdown("##### Weight changes")
    if out.frozen_layers_changed:
        st.error(f"Frozen layers whose weights moved: {', '.join(out.frozen_layers_changed)}.")
    else:
        n_frozen = int((~wc["trainable"].astype(bool)).sum())
        st.success(f"All {n_frozen} frozen layers show exactly zero change: freezing works.",
                   icon=":material/check:")
    left, right = st.columns(2)
    with left:
        st.altair_chart(charts.weight_change_chart(wc), width="stretch")
    with right:
        _drift(out)
    movers = largest_movers(wc)
    if len(movers):
        st.caption("Largest movers (relative L2 change). Large changes deep in the base are the sign of "
                   "catastrophic forgetting.")
        st.dataframe(movers[["path", "class", "rel_change", "params"]], hide_index=True,
                     column_config={"rel_change": st.column_config.NumberColumn("relative change", format="%.3g")})


def _drift(out) -> None:
    from tlviz.diagnose import threshold

    drift = out.drift_table
    if not len(drift):
        st.caption("No representation drift was stored for this run.")
        return
    limit = threshold("catastrophic-forgetting", "cka")
    st.altair_chart(charts.drift_chart(drift, limit), width="stretch")
    n = out.metrics.get("drift_images")
    moved = drift[drift["status"] != "unchanged"]
    unmeasured = list(drift.loc[drift["cka"].isna(), "block"])
    st.caption(f"Linear CKA of each block's features on {n} of your images (seeded, the same for every run), before "
               "vs after the run: 1.0 means the block represents them as before. Blocks with nothing trained at or "
               "below them are exactly 1.0"
               + (f"; {len(moved)} block(s) moved" if len(moved) else "; the base did not move") + "."
               + (f" Not measured (dashed outline): {', '.join(unmeasured)}: their features do not vary on these "
                  "images, so CKA is undefined." if unmeasured else ""))


def _retention(out) -> None:
    r = out.retention
    if not r:
        return
    st.markdown("##### Original task")
    k = st.columns(3)
    k[0].metric("Before the run", _pct(r.get("before")))
    k[1].metric("After the run", _pct(r.get("after")), delta=None if r.get("difference") is None else
                f"{r['difference'] * 100:+.1f} points", delta_color="normal")
    k[2].metric("Retained", _pct(r.get("retained")), help="After / before.")
    if r.get("low") is not None:
        st.caption(f"{r.get('source') or 'The original task'}: {r.get('n_images')} images of "
                   f"{len(r.get('classes') or [])} classes, scored with the model file's original head on the base as "
                   f"the run left it; 95 % interval of the difference {format_points(r['low'], r['high'])}.")


def _controls(rec: RunRecord, out, loaded, images, current_images_key: str, records: list) -> None:
    """The run's controls: the comparison with each, buttons for the missing ones, and the forgetting verdict."""
    from tlviz.diagnose import judge_run

    if rec.control is not None:
        st.caption(f"This run is the {CONTROL_LABELS.get(rec.control, rec.control)} of run `{rec.control_of}`: "
                   "open that run to see the comparison.")
        return
    st.markdown("##### Controls")
    mine = controls_of(rec.run_id, records)
    comparisons = [compare(rec, c) for c in mine]
    rows = [{"run": "this run", "accuracy": out.val_accuracy, "n": len(out.val_indices)}]
    for c, cmp in zip(mine, comparisons):
        st.write(cmp.sentence())
        if cmp.difference is not None:
            rows.append({"run": f"{CONTROL_LABELS[cmp.kind]} ({c.run_id})", "accuracy": cmp.control_accuracy,
                         "n": cmp.difference.n})
    if len(rows) > 1 and out.val_accuracy is not None:
        import pandas as pd

        frame = pd.DataFrame(rows)
        bounds = [wilson_interval(int(round(a * n)), n) for a, n in zip(frame["accuracy"], frame["n"])]
        frame["low"], frame["high"] = [b[0] for b in bounds], [b[1] for b in bounds]
        st.altair_chart(charts.control_chart(frame))
    have = {c.control for c in mine}
    missing = [k for k in CONTROLS if k not in have and not (k == "head-only" and rec.config.get("unfreeze") == 0)]
    same = (loaded is not None and rec.model_sha256 == loaded.sha256 and rec.image_key == current_images_key
            and rec.run_config is not None)
    busy = st.session_state.get("ft_job") is not None
    if missing:
        if not same:
            st.caption("Load the model and the image set this run used to run its controls.")
        cols = st.columns(len(missing))
        for col, kind in zip(cols, missing):
            if col.button(f"Run the {CONTROL_LABELS[kind]}", key=f"ft_control_{kind}", disabled=not same or busy,
                          icon=":material/science:",
                          help="The same configuration with fresh random weights (seeded)" if kind == "random-init"
                          else "The same configuration with the base frozen (unfreeze depth 0)"):
                try:
                    cfg = control_config(rec.run_config, kind, rec.run_id)
                except RunRefused as exc:
                    st.error(str(exc), icon=":material/block:")
                else:
                    start("runs", loaded, images, cfg, [cfg])
    verdict = judge_run(rec, mine)
    if verdict.finding is not None:
        finding_card(verdict.finding, evidence=True)
    elif verdict.fires is None:
        st.info(f"Catastrophic forgetting: {verdict.reason}", icon=":material/help:")
    else:
        st.caption(f"Catastrophic forgetting: no. {verdict.reason}")


def judged_with_runs(report, loaded, current_images_key: str):
    """A `DiagnosisReport` with ``catastrophic-forgetting`` judged on this workspace's runs of the current model on
    the current images (`tlviz.diagnose.forgetting.with_runs`); the report itself when there are none."""
    from tlviz.diagnose import runs_for, with_runs

    try:
        records = runs_for(loaded.sha256, current_images_key, workspace())
    except TlvizError:
        return report
    return with_runs(report, records) if records else report


# -- all runs -------------------------------------------------------------------------

def runs_table(runs) -> None:
    """The table of this workspace's runs (a `tlviz.finetune.list_runs` table)."""
    view = runs[["run_id", "state", "label", "unfreeze", "lr", "epochs", "batch_size", "optimizer", "preset",
                 "new_head", "two_phase", "bn", "augment", "best_val_accuracy", "final_val_accuracy", "time_s",
                 "ran_on", "stopped_at", "control", "control_of", "model", "images"]]
    st.dataframe(view, hide_index=True, key="ft_runs_table", column_config={
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
