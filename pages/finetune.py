"""Fine-tuning runs: short what-if runs at a chosen unfreeze depth and learning rate, compared.

Thin page: widgets -> `tlviz.finetune` (runs happen in a worker process, polled
by a fragment) -> `tlviz.finetune.charts`.
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import streamlit as st

import ui
from tlviz.errors import TlvizError
from tlviz.finetune import charts
from tlviz.finetune.build import decide_head, depth_choices
from tlviz.finetune.cache import images_key
from tlviz.finetune.config import OPTIMIZER_LABELS, OPTIMIZERS, RunConfig, RunRefused, default_preset
from tlviz.finetune.lrfinder import LRFinderResult
from tlviz.finetune.store import ACTIVE_STATES, delete_run, list_runs, load_run, runs_dir
from tlviz.finetune.summary import confusion_cell, largest_movers
from tlviz.finetune.sweep import sweep_configs, sweep_table
from tlviz.finetune.worker import cancel_job, poll_job, start_job, start_lr_finder
from tlviz.layers import base_weight_layers, freezing_findings, unfreeze_plan
from tlviz.presets import PRESET_DESCRIPTIONS, applicable_presets

RATES = [1e-6, 3e-6, 1e-5, 3e-5, 1e-4, 3e-4, 1e-3, 3e-3, 1e-2, 3e-2, 1e-1, 3e-1, 1.0]
POLL_S = 1.0
GALLERY = 24
_BOX = {"error": st.error, "warning": st.warning, "info": st.info}
_STATE_ICON = {"completed": ":material/check_circle:", "cancelled": ":material/stop_circle:",
               "diverged": ":material/warning:", "failed": ":material/error:", "refused": ":material/block:",
               "running": ":material/hourglass_top:", "queued": ":material/schedule:"}


@st.cache_data(show_spinner=False, max_entries=16)
def _images_key(source_key: str, shape: tuple, _images) -> str:
    return images_key(_images.images)


def _fmt_s(s) -> str:
    if s is None or (isinstance(s, float) and not math.isfinite(s)):
        return "–"
    s = int(round(float(s)))
    return f"{s // 60}:{s % 60:02d}" if s >= 60 else f"{s} s"


def _val(v, fmt: str = "") -> str:
    return "?" if v is None or (isinstance(v, float) and not math.isfinite(v)) else format(v, fmt)


def _pct(v) -> str:
    return "–" if v is None or (isinstance(v, float) and not math.isfinite(v)) else f"{float(v):.1%}"


def _keep_valid(key: str, options) -> None:
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
    snap = has_blocks and st.toggle("Snap to block boundaries", value=True, key="ft_snap",
                                    help="Unfreeze whole named blocks (as MobileNet, ResNet and EfficientNet "
                                         "name them), not the middle of one.")
    if snap:
        labels = dict(choices)
        if st.session_state.get("ft_depth_block") not in labels:
            st.session_state.pop("ft_depth_block", None)
        return int(st.select_slider("Unfreeze depth", options=[d for d, _ in choices], format_func=labels.get,
                                    key="ft_depth_block",
                                    help="Layers holding weights, counted from the top of the base, that train."))
    if n == 0:
        st.caption("The base holds no weights: only the head can train.")
        return 0
    if st.session_state.get("ft_depth", 0) > n:
        st.session_state["ft_depth"] = n
    return int(st.slider("Unfreeze depth (base layers with weights, from the top)", 0, n, 0, key="ft_depth",
                         help="0 trains only the head; the maximum unfreezes the whole base."))


def _config(loaded, images, table) -> RunConfig | None:
    """Draw the config widgets; the validated config, or None with the error shown."""
    presets = applicable_presets(loaded.channels)
    preset_default = default_preset(st.session_state.get("best_preset"), loaded.recorded_preset)
    if st.session_state.get("ft_preset_default") != (loaded.sha256, preset_default):
        st.session_state["ft_preset_default"] = (loaded.sha256, preset_default)
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
                             key="ft_lr", help="The learning-rate finder below suggests one.")
        epochs = st.number_input("Epochs", 1, 500, 5, key="ft_epochs")
        batch = st.select_slider("Batch size", [8, 16, 32, 64, 128, 256], value=32, key="ft_batch")
    with c3:
        optimizer = st.radio("Optimizer", OPTIMIZERS, format_func=OPTIMIZER_LABELS.get, horizontal=True,
                             key="ft_optimizer")
        preset = st.selectbox("Preset", presets, key="ft_preset",
                              format_func=lambda p: f"{p} — {PRESET_DESCRIPTIONS[p]}",
                              help="Default: the best preset found on the Normalization page, else the one the "
                                   "model records, else unit.")
        val_fraction = st.slider("Validation share (stratified)", 0.1, 0.5, 0.2, 0.05, key="ft_val")

    head_key = f"ft_new_head_{loaded.sha256[:12]}_{st.session_state.get('image_source_key')}"
    if head is not None and head.forced:
        new_head = st.checkbox("New head for the image set's classes", value=True, disabled=True, key=head_key)
    else:
        new_head = st.checkbox("New head for the image set's classes", value=bool(head and head.new_head),
                               key=head_key,
                               help="Replace the classification head by a fresh one (pooling, dropout, dense "
                                    "softmax): the standard transfer-learning step.")
    if head is not None:
        st.caption(head.reason[:1].upper() + head.reason[1:] + ".")

    with st.expander("Regularization, BatchNormalization and schedule"):
        r1, r2, r3 = st.columns(3)
        dropout = r1.slider("Dropout of a new head", 0.0, 0.8, 0.2, 0.05, key="ft_dropout")
        wd = r1.number_input("Weight decay", 0.0, 0.1, 0.0, step=1e-4, format="%.0e", key="ft_wd")
        augment = r1.checkbox("Light augmentation (flips, shifts)", value=False, key="ft_augment",
                              help="Off by default. Augmentation changes the images every epoch, so base "
                                   "activations cannot be cached: runs get slower.")
        bn = r2.radio("BatchNormalization", ["frozen", "train"], key="ft_bn",
                      format_func={"frozen": "keep frozen (inference mode, recommended)",
                                   "train": "train it in the unfrozen part"}.get)
        seed = r2.number_input("Seed", 0, 10**6, 0, key="ft_seed")
        two_phase = r3.checkbox("Train the new head first (two phases)", value=False, key="ft_two_phase",
                                help="First the head alone with the base frozen, then unfreeze to the chosen "
                                     "depth at the chosen rate (fastai's fine_tune).")
        head_epochs = r3.number_input("Head-phase epochs", 1, 100, 2, key="ft_head_epochs", disabled=not two_phase)
        head_lr = r3.number_input("Head-phase learning rate", 1e-7, 10.0, 1e-3, format="%.2e", step=1e-4,
                                  key="ft_head_lr", disabled=not two_phase)
        label = st.text_input("Label (shown in the run list)", key="ft_label", max_chars=80)

    unfreeze_frozen = False
    frozen = [f for f in freezing_findings(loaded.model, table) if f.id == "no-trainable-weights"]
    if frozen:
        st.error(f"**{frozen[0].title}.** {frozen[0].fix} A run on this model as it is refuses to start: training "
                 "would change nothing.", icon=":material/block:")
        unfreeze_frozen = st.checkbox("Unfreeze the head for this run (and the chosen depth of the base)",
                                      key="ft_unfreeze_frozen")
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


def _start(kind: str, loaded, images, config, configs=None) -> None:
    try:
        if kind == "lrfind":
            job = start_lr_finder(loaded, images, config, owner=ui.workspace())
        else:
            job = start_job(loaded, images, configs or [config], owner=ui.workspace())
    except TlvizError as exc:
        st.error(str(exc), icon=":material/block:")
        return
    st.session_state["ft_job"] = job.job_id
    st.session_state["ft_job_kind"] = kind
    st.rerun()


# -- the running job -------------------------------------------------------------------

def _job_panel() -> None:
    job_id = st.session_state.get("ft_job")
    if not job_id:
        return
    status = poll_job(job_id)
    prog = status.progress or {}
    with st.container(border=True):
        if status.queue_position:  # every heavy job goes through one queue (TLVIZ_MAX_JOBS at once)
            st.progress(0.0, text=ui.queue_text(status.queue_position))
        elif status.kind == "lrfind":
            step, steps = int(prog.get("step") or 0), int(prog.get("steps") or 100)
            st.progress(min(step / max(steps, 1), 1.0),
                        text=f"Learning-rate range test: step {step} of about {steps}" if step
                        else "Learning-rate range test: starting the worker…")
        else:
            n = len(status.runs)
            done = status.done_runs
            cur = status.current
            if cur is None:
                st.progress(done / max(n, 1), text="Starting the worker…" if done == 0 else f"{done} of {n} runs done")
            else:
                total = max(int(prog.get("total_batches") or 1), 1)
                frac = min(float(prog.get("batches_done") or 0) / total, 1.0)
                stage = prog.get("stage", "")
                if stage in ("caching", "preparing", "evaluating", "saving"):
                    text = prog.get("message") or stage
                else:
                    text = (f"epoch {prog.get('epoch', 0)}/{prog.get('epochs', '?')} · batch {prog.get('batch', 0)}/"
                            f"{prog.get('batches', '?')} · {_fmt_s(prog.get('elapsed_s'))} elapsed · "
                            f"~{_fmt_s(prog.get('eta_s'))} left")
                prefix = f"Run {done + 1} of {n} · " if n > 1 else ""
                st.progress(frac, text=prefix + text)
                if len(cur.history):
                    st.altair_chart(charts.curves_chart(cur.history))
            sweep_ids = {r.config.get("sweep_id") for r in status.runs} - {None}
            if len(sweep_ids) == 1:
                table = sweep_table(list_runs(owner=ui.workspace()), sweep_ids.pop())
                if len(table):
                    st.altair_chart(charts.sweep_heatmap(table))
        st.button("Cancel", key="ft_cancel", icon=":material/stop:", on_click=cancel_job, args=(job_id,),
                  help="Stops after the current batch; what was measured is kept.")
    if not status.active:
        st.session_state["ft_job"] = None
        if status.kind == "lrfind":
            st.session_state["ft_lr_result"] = status.result
            if status.state == "failed":
                st.session_state["ft_lr_error"] = status.message
        elif status.runs:
            st.session_state["ft_compare_add"] = [r.run_id for r in status.runs]
            st.session_state["ft_show_run"] = status.runs[-1].run_id if len(status.runs) == 1 else \
                max(status.runs, key=lambda r: r.best_val_accuracy or -1).run_id
        st.rerun()


# -- results of one run ---------------------------------------------------------------------

def _show_run(rec, images, current_images_key: str) -> None:
    icon = _STATE_ICON.get(rec.state, "")
    cfg = rec.config
    st.markdown(f"#### {icon} Run `{rec.run_id}` — {rec.state}")
    if cfg:
        try:
            st.caption(RunConfig.from_dict(cfg).describe() + (f" · {cfg.get('label')}" if cfg.get("label") else ""))
        except RunRefused:
            pass
    if rec.state in ACTIVE_STATES:
        st.info("In progress: follow it above.", icon=":material/hourglass_top:")
        return
    if rec.state in ("failed", "refused"):
        st.error(rec.message or "The run failed.", icon=":material/block:")
    m = rec.metrics
    final = m.get("final") or {}
    if final:
        k = st.columns(5)
        k[0].metric("Val accuracy", _pct(final.get("val_accuracy")),
                    help="The final model on the validation images (inference mode).")
        k[1].metric("Val loss", "–" if final.get("val_loss") is None else f"{final['val_loss']:.3f}")
        k[2].metric("Train accuracy", _pct(final.get("accuracy")), help="Last epoch, training mode (dropout on).")
        k[3].metric("Best val accuracy", _pct(m.get("best_val_accuracy")))
        k[4].metric("Time", _fmt_s(m.get("elapsed_s")))
    for f in m.get("findings") or []:
        _BOX.get(f["severity"], st.info)(f"**{f['title']}.** {f.get('fix', '')}")
    for note in m.get("notes") or []:
        st.caption("• " + note)
    if len(rec.history):
        st.altair_chart(charts.curves_chart(rec.history))
    if not m:
        return
    names = m.get("class_names") or []
    left, right = st.columns([2, 3])
    with left:
        pc = pd.DataFrame(m.get("per_class") or [])
        if len(pc):
            st.dataframe(pc, hide_index=True, column_config={
                "accuracy": st.column_config.ProgressColumn("val accuracy", min_value=0.0, max_value=1.0,
                                                            format="percent")})
    with right:
        if m.get("confusion"):
            st.altair_chart(charts.confusion_chart(np.asarray(m["confusion"]), names))
    if names:
        s1, s2 = st.columns(2)
        t = s1.selectbox("True class", range(len(names)), format_func=lambda i: names[i], key="ft_cell_true")
        p = s2.selectbox("Predicted as", range(len(names)), format_func=lambda i: names[i], key="ft_cell_pred")
        idx = confusion_cell(m, t, p)
        if rec.images.get("image_key") != current_images_key:
            st.caption(f"{len(idx)} validation images in this cell. Load the image set this run used "
                       f"({rec.images.get('source', '?')}) to see them.")
        elif len(idx) == 0:
            st.caption("No validation image in this cell.")
        else:
            shown = idx[:GALLERY]
            st.image([images.images[i] for i in shown], caption=[images.files[i] for i in shown], width=72)
            if len(idx) > GALLERY:
                st.caption(f"First {GALLERY} of {len(idx)}.")
    wc = rec.weight_change
    if wc is not None and len(wc):
        st.markdown("##### Weight changes")
        changed = m.get("frozen_layers_changed") or []
        if changed:
            st.error(f"Frozen layers whose weights moved: {', '.join(changed)}.")
        else:
            n_frozen = int((~wc["trainable"].astype(bool)).sum())
            st.success(f"All {n_frozen} frozen layers show exactly zero change: freezing works.",
                       icon=":material/check:")
        st.altair_chart(charts.weight_change_chart(wc), width="stretch")
        movers = largest_movers(wc)
        if len(movers):
            st.caption("Largest movers (relative L2 change). Large changes deep in the base are the sign of "
                       "catastrophic forgetting.")
            st.dataframe(movers[["path", "class", "rel_change", "params"]], hide_index=True,
                         column_config={"rel_change": st.column_config.NumberColumn("relative change", format="%.3g")})
    if rec.model_path is not None:
        st.download_button("Download the fine-tuned model (.keras)", data=rec.model_path.read_bytes(),
                           file_name=f"finetuned_{rec.run_id}.keras", mime="application/octet-stream",
                           key="ft_download", icon=":material/download:", on_click="ignore")


# -- the page ---------------------------------------------------------------------

ui.page_start()
ws = ui.workspace()  # this session's runs only
loaded, images = ui.require_images()
table = ui.current_layer_table(loaded)
current_key = _images_key(str(st.session_state.get("image_source_key")), images.images.shape, images)
st.session_state.setdefault("ft_job", None)

st.title("Fine-tuning runs")
st.caption("What if you unfreeze the last N layers at this learning rate? Each run trains a copy of the loaded model "
           "(the model itself is never changed) for a few epochs, in a separate process, and is kept on disk for "
           "comparison. When everything below the trained layers is frozen, their output is computed once and "
           "reused: same results, much faster.")

for warning in images.class_warnings():
    st.warning(warning, icon=":material/warning:")
config = _config(loaded, images, table)
# One class cannot be fine-tuned: say so now rather than after starting a worker.
too_few_classes = sum(n > 0 for n in images.counts.values()) < 2
busy = st.session_state.get("ft_job") is not None or too_few_classes
b1, b2, _ = st.columns([1, 1, 2])
if b1.button("Start run", type="primary", key="ft_start", disabled=busy or config is None,
             icon=":material/play_arrow:"):
    _start("runs", loaded, images, config)
if b2.button("Find a learning rate", key="ft_lrfind", disabled=busy or config is None, icon=":material/search:",
             help="Smith's range test: about 100 steps with the rate rising from 1e-7 to 10; weights are restored."):
    _start("lrfind", loaded, images, config)

with st.expander("Sweep: several depths × learning rates"):
    choices = dict(depth_choices(table))
    _keep_valid("ft_sweep_depths", choices)
    depths = st.multiselect("Unfreeze depths", list(choices), default=list(choices)[:2], format_func=choices.get,
                            key="ft_sweep_depths")
    rates = st.multiselect("Learning rates", RATES, default=[1e-4, 1e-3, 1e-2], format_func=lambda r: f"{r:.0e}",
                           key="ft_sweep_rates")
    n_runs = len(depths) * len(rates)
    st.caption(f"{n_runs} runs of {config.epochs if config else '?'} epochs each, one after another; the other "
               "settings come from above. Runs at one depth share the cached activations.")
    if st.button("Start sweep", key="ft_sweep_start", disabled=busy or config is None or n_runs == 0):
        try:
            _start("runs", loaded, images, config, sweep_configs(config, depths, rates))
        except RunRefused as exc:
            st.error(str(exc))

if st.session_state.get("ft_job"):
    st.fragment(run_every=POLL_S)(_job_panel)()

if st.session_state.get("ft_lr_error"):
    st.error(st.session_state.pop("ft_lr_error"), icon=":material/block:")
lr_result = st.session_state.get("ft_lr_result")
if lr_result:
    res = LRFinderResult.from_dict(lr_result)
    with st.container(border=True):
        st.markdown("#### Learning-rate range test")
        st.write(res.message)
        if len(res.curve):
            st.altair_chart(charts.lr_finder_chart(res.curve, res.suggestion), width="stretch")
        if res.suggestion:
            st.button(f"Use {res.suggestion:.1e} as the learning rate", key="ft_use_lr", on_click=_set_lr,
                      args=(res.suggestion,))

runs = list_runs(owner=ws)
active = runs[runs["state"].isin(ACTIVE_STATES)]
if len(active) and not st.session_state.get("ft_job"):
    job_ids = sorted({load_run(r, owner=ws).status.get("job_id") for r in active["run_id"]} - {None})
    st.info(f"{len(active)} run(s) in progress (started before a reload, or in another tab).",
            icon=":material/hourglass_top:")
    if job_ids and st.button("Follow the runs in progress", key="ft_follow"):
        st.session_state["ft_job"] = job_ids[-1]
        st.session_state["ft_job_kind"] = "runs"
        st.rerun()
st.divider()
st.subheader("Results")
if runs.empty:
    st.info("No runs yet. Configure one above and press **Start run**.", icon=":material/info:")
    st.stop()

labels = {r.run_id: f"{r.run_id} · {r.state} · depth {_val(r.unfreeze)} · lr {_val(r.lr, '.0e')} · "
                    f"best {_pct(r.best_val_accuracy)}" + (f" · {r.label}" if r.label else "")
          for r in runs.itertuples()}
ids = list(runs["run_id"])
if st.session_state.get("ft_show_run") not in ids:
    st.session_state["ft_show_run"] = ids[0]
show = st.selectbox("Run", ids, format_func=labels.get, key="ft_show_run")
try:
    _show_run(load_run(show, owner=ws), images, current_key)
except TlvizError as exc:
    st.warning(str(exc))

st.divider()
st.subheader("All runs")
st.caption(f"Only the runs started in this browser session are listed; the page's address (`?ws=…`) keeps them "
           f"across reloads, so share it only with people who may see them. Stored in `{runs_dir()}` (set "
           f"`TLVIZ_RUNS_DIR` to move it). Open them in TensorBoard with `tensorboard --logdir {runs_dir()}`.")
view = runs[["run_id", "state", "label", "unfreeze", "lr", "epochs", "batch_size", "optimizer", "preset", "new_head",
             "two_phase", "bn", "augment", "best_val_accuracy", "final_val_accuracy", "time_s", "model", "images"]]
st.dataframe(view, hide_index=True, key="ft_runs_table", column_config={
    "lr": st.column_config.NumberColumn("lr", format="%.0e"),
    "best_val_accuracy": st.column_config.NumberColumn("best val acc", format="percent"),
    "final_val_accuracy": st.column_config.NumberColumn("final val acc", format="percent"),
    "time_s": st.column_config.NumberColumn("time (s)", format="%.1f"),
})
finished = [r for r, s in zip(ids, runs["state"]) if s not in ACTIVE_STATES]
if "ft_compare" not in st.session_state:
    st.session_state["ft_compare"] = finished[:2]
st.session_state["ft_compare"] = list(dict.fromkeys(st.session_state.pop("ft_compare_add", [])
                                                    + list(st.session_state["ft_compare"])))
_keep_valid("ft_compare", finished)
compare = st.multiselect("Overlay the curves of", ids, format_func=labels.get, key="ft_compare")
histories = {}
for rid in compare:
    try:
        histories[labels[rid]] = load_run(rid, owner=ws).history
    except TlvizError:
        continue
if histories:
    st.altair_chart(charts.compare_chart(histories))
with st.expander("Delete runs"):
    _keep_valid("ft_delete_ids", ids)
    doomed = st.multiselect("Runs to delete", ids, format_func=labels.get, key="ft_delete_ids")
    if st.button("Delete", key="ft_delete", icon=":material/delete:", disabled=not doomed):
        errors = []
        for rid in doomed:
            try:
                delete_run(rid, owner=ws)
            except TlvizError as exc:
                errors.append(str(exc))
        for e in errors:
            st.error(e)
        if not errors:
            st.rerun()

sweeps = [s for s in runs["sweep_id"].dropna().unique()]
if sweeps:
    st.subheader("Sweeps")
    sid = st.selectbox("Sweep", sweeps, key="ft_sweep_show")
    st.altair_chart(charts.sweep_heatmap(sweep_table(runs, sid)))
