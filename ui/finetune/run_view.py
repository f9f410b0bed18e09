"""One run's results: state, its keep mark, metrics, findings, curves, per-class accuracy and confusion (with the cell's
images), weight changes and representation drift, the original task's retention, then its controls."""

from __future__ import annotations

import streamlit as st

from tlviz import charts, diskcap
from tlviz.errors import TlvizError
from tlviz.finetune import RunRecord, format_seconds, largest_movers
from tlviz.stats import format_points
from ui.cache import load_model_bytes
from ui.finetune.common import GALLERY, STATE_ICONS, percent_text, value_text
from ui.finetune.controls import run_controls
from ui.state import workspace
from ui.widgets import GalleryEntry, finding_cards, gallery


def run_labels(runs) -> dict[str, str]:
    """One line per run of a `tlviz.finetune.list_runs` table, for select boxes: id, state, depth, rate, best; a run
    of another model than the loaded one (``this_model`` false, `tlviz.finetune.runs_of_model_first`) says whose."""
    def other(r) -> str:
        return "" if getattr(r, "this_model", True) else f" · another model: {r.model or '?'}"

    return {r.run_id: f"{r.run_id} · {r.state} · depth {value_text(r.unfreeze)} · lr {value_text(r.lr, '.0e')} · "
                      f"best {percent_text(r.best_val_accuracy)}" + (f" · {r.label}" if r.label else "") + other(r)
            for r in runs.itertuples()}


def remember_pick(model_sha256: str | None) -> None:
    """The run picker's callback: the run shown was picked while this model was loaded (another model's run stays
    open only then)."""
    st.session_state["ft_show_for"] = model_sha256



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
    if loaded is not None and rec.model_sha256 and rec.model_sha256 != loaded.sha256:
        st.warning(f"This run fine-tuned **{rec.model.get('filename') or rec.model.get('name') or 'another model'}**, "
                   f"not the loaded model **{loaded.name}**: everything below is that model's.",
                   icon=":material/swap_horiz:")
    described = rec.describe()
    if described:
        st.caption(described)
    keep_toggle(rec)
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
        k[0].metric("Val accuracy", percent_text(out.val_accuracy),
                    help="The final model on the validation images (inference mode).")
        k[1].metric("Val loss", "–" if out.val_loss is None else f"{out.val_loss:.3f}")
        k[2].metric("Train accuracy", percent_text(out.train_accuracy), help="Last epoch, training mode (dropout on).")
        k[3].metric("Best val accuracy", percent_text(out.best_val_accuracy))
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
    run_controls(rec, out, loaded, images, current_images_key, records or [])
    d1, d2 = st.columns(2)
    if rec.model_path is not None:
        d1.download_button("Download the fine-tuned model (.keras)", data=rec.model_path.read_bytes(),
                           file_name=f"finetuned_{rec.run_id}.keras", mime="application/octet-stream",
                           key="ft_download", icon=":material/download:", on_click="ignore")
    d2.download_button("Download this run as HTML", data=_run_html(rec.run_id, rec.state, rec, loaded),
                       file_name=f"tlviz-run-{rec.run_id}.html", mime="text/html", key="ft_download_html",
                       icon=":material/html:", on_click="ignore",
                       help="One self-contained file: settings, outcome, curves, confusion, weight changes, drift.")


def keep_toggle(rec: RunRecord) -> None:
    """The run's keep mark: a kept run is never removed to free disk space (``TLVIZ_RUNS_MAX_GB``)."""
    key = f"ft_keep_{rec.run_id}"
    st.session_state[key] = rec.kept  # the mark on disk, whatever this session last saw
    st.toggle("Keep this run (never removed to free disk space)", key=key, on_change=_set_keep,
              args=(rec.run_id, key),
              help="With a disk cap (TLVIZ_RUNS_MAX_GB), starting a job removes the oldest finished runs first; "
                   "a kept run stays until you delete it.")
    if st.session_state.get("ft_keep_error"):
        st.error(st.session_state.pop("ft_keep_error"), icon=":material/block:")


def _set_keep(run_id: str, key: str) -> None:
    try:
        diskcap.set_keep(run_id, bool(st.session_state[key]), owner=workspace())
    except TlvizError as exc:
        st.session_state["ft_keep_error"] = str(exc)


@st.cache_data(show_spinner=False, max_entries=8)
def _run_html(run_id: str, state: str, _rec, _loaded) -> str:
    from tlviz.htmlreport import run_html

    return run_html(_rec, _loaded)


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
    k[0].metric("Before the run", percent_text(r.get("before")))
    k[1].metric("After the run", percent_text(r.get("after")), delta=None if r.get("difference") is None else
                f"{r['difference'] * 100:+.1f} points", delta_color="normal")
    k[2].metric("Retained", percent_text(r.get("retained")), help="After / before.")
    if r.get("low") is not None:
        st.caption(f"{r.get('source') or 'The original task'}: {r.get('n_images')} images of "
                   f"{len(r.get('classes') or [])} classes, scored with the model file's original head on the base as "
                   f"the run left it; 95 % interval of the difference {format_points(r['low'], r['high'])}.")
