"""Fine-tuning runs: short what-if runs at a chosen unfreeze depth and learning rate, compared.

Each run also shows how far the base's features moved (CKA per block), its controls (random-init,
head-only; one click) and, with the original task's images loaded, how much of that task survives.

Thin page: the panels of `ui.finetune` (configuration, the running job, one run's
results, the run list) -> `tlviz.finetune` (runs happen in a worker process, or on
the Ray cluster of ``TLVIZ_RAY_ADDRESS``, polled by a fragment) -> `tlviz.charts`.
"""

from __future__ import annotations

import streamlit as st

import ui
from tlviz.errors import TlvizError
from tlviz.finetune import (RunRefused, depth_choices, list_runs, load_run, runs_dir, runs_of_model_first,
                            sweep_configs)
from ui import finetune as panels

ui.page_start()
ws = ui.workspace()  # this session's runs only
loaded, images = ui.require_images()
table = ui.current_layer_table(loaded)
current_key = ui.pixels_key()
st.session_state.setdefault("ft_job", None)

st.title("Fine-tuning runs")
st.caption("What if you unfreeze the last N layers at this learning rate? Each run trains a copy of the loaded model "
           "(the model itself is never changed) for a few epochs, in a separate process, and is kept on disk for "
           "comparison. When everything below the trained layers is frozen, their output is computed once and "
           "reused: same results, much faster. " + panels.where_runs_go())

for warning in images.class_warnings():
    st.warning(warning, icon=":material/warning:")
config = panels.config_form(loaded, images, table)
panels.original_task(loaded)
# One class cannot be fine-tuned: say so now rather than after starting a worker.
too_few_classes = not images.two_classes_present
busy = st.session_state.get("ft_job") is not None or too_few_classes
b1, b2, b3 = st.columns([1, 1, 2])
with b3:
    controls = panels.controls_choice(config)
if b1.button("Start run", type="primary", key="ft_start", disabled=busy or config is None,
             icon=":material/play_arrow:"):
    panels.start("runs", loaded, images, config, controls=controls)
if b2.button("Find a learning rate", key="ft_lrfind", disabled=busy or config is None, icon=":material/search:",
             help="Smith's range test: about 100 steps with the rate rising from 1e-7 to 10; weights are restored."):
    panels.start("lrfind", loaded, images, config)
panels.offer_local(loaded, images)

with st.expander("Sweep: several depths × learning rates"):
    choices = dict(depth_choices(table))
    panels.keep_valid("ft_sweep_depths", choices)
    depths = st.multiselect("Unfreeze depths", list(choices), default=list(choices)[:2], format_func=choices.get,
                            key="ft_sweep_depths", persist_state=panels.SESSION)
    rates = st.multiselect("Learning rates", panels.RATES, default=[1e-4, 1e-3, 1e-2],
                           format_func=lambda r: f"{r:.0e}", key="ft_sweep_rates", persist_state=panels.SESSION)
    n_runs = len(depths) * len(rates)
    order = "through Ray Tune, as many at once as the cluster has room for" if panels.on_ray() else \
        "one after another"
    st.caption(f"{n_runs} runs of {config.epochs if config else '?'} epochs each, {order}; the other settings come "
               "from above. Runs at one depth share the cached activations.")
    asha = panels.asha_option()
    if st.button("Start sweep", key="ft_sweep_start", disabled=busy or config is None or n_runs == 0):
        try:
            panels.start("runs", loaded, images, config, sweep_configs(config, depths, rates), asha=asha)
        except RunRefused as exc:
            st.error(str(exc))

panels.follow_job()
panels.lr_result_panel()

runs = runs_of_model_first(list_runs(owner=ws), loaded.sha256)  # this model's runs first, the others marked
panels.runs_in_progress(runs, ws)
st.divider()
st.subheader("Results")
if runs.empty:
    panels.evicted_note(ws)  # all of them may have been removed to stay under the disk cap: say so
    st.info("No runs yet. Configure one above and press **Start run**.", icon=":material/info:")
    st.stop()

labels = panels.run_labels(runs)
ids = list(runs["run_id"])
mine = [r for r, this in zip(ids, runs["this_model"]) if this]
shown_now = st.session_state.get("ft_show_run")
# Another model's run opens only when picked for this model; after a model change the page opens this model's.
if shown_now not in ids or (shown_now not in mine and st.session_state.get("ft_show_for") != loaded.sha256):
    st.session_state["ft_show_run"] = mine[0] if mine else None
if not mine:
    st.info(f"No runs of **{loaded.name}** yet. The runs below fine-tuned other models: pick one to look at it.",
            icon=":material/info:")
show = st.selectbox("Run", ids, format_func=labels.get, key="ft_show_run", placeholder="A run of another model",
                    on_change=panels.remember_pick, args=(loaded.sha256,))
if show is not None:
    try:
        controls_of_shown = [load_run(r, owner=ws) for r in runs.loc[runs["control_of"] == show, "run_id"]]
        panels.show_run(load_run(show, owner=ws), images, current_key, loaded, controls_of_shown)
    except TlvizError as exc:
        st.warning(str(exc))

st.divider()
st.subheader("All runs")
st.caption(f"Only the runs started in this browser session are listed; the page's address (`?ws=…`) keeps them "
           f"across reloads, so share it only with people who may see them. Stored in `{runs_dir()}` (set "
           f"`TLVIZ_RUNS_DIR` to move it). Open them in TensorBoard with `tensorboard --logdir {runs_dir()}`.")
panels.runs_table(runs)
panels.compare_curves(runs, labels, ws)
with st.expander("Delete runs"):
    panels.delete_runs(ids, labels, ws)
panels.sweeps(runs)
