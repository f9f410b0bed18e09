"""Normalization: find the preprocessing the model really expects.

Thin page: widgets -> a `tlviz.jobs` normalize job (a worker process; each
comparison is computed once and stored, see `ui.analysis`) -> tables and
`tlviz.charts`. Changing the inference preset only re-judges the
stored comparison; the sample runs on its own, other models on the button. The gallery of
changed predictions shows, on request, where the model looks under the best and the inference
preset (`ui.widgets.gallery`: Grad-CAM in a worker job).
"""

from __future__ import annotations

import streamlit as st

import ui
from tlviz import charts, normalize
from ui.widgets import GalleryEntry, gallery
from tlviz.presets import PRESET_DESCRIPTIONS, applicable_presets

GALLERY_SIZE = 12


def _custom_preset():
    """The custom preset the user typed (None when off or invalid; the error is shown)."""
    with st.expander("Custom preset (optional)"):
        st.caption("Also try `(x × scale − mean) / std` on 0–255 pixels, e.g. the mean and std from your "
                   "training code.")
        on = st.toggle("Include a custom preset", key="norm_custom_on", persist_state="session")
        c1, c2, c3 = st.columns(3)
        scale = c1.text_input("scale", value="0.00392157", key="norm_custom_scale", persist_state="session",
                              help="1/255 = 0.00392157")
        mean = c2.text_input("mean (one value or R, G, B)", value="0.5", key="norm_custom_mean",
                             persist_state="session")
        std = c3.text_input("std (one value or R, G, B)", value="0.5", key="norm_custom_std", persist_state="session")
        if not on:
            return None
        try:
            return normalize.custom_preset(scale, mean, std)
        except normalize.NormalizationRefused as exc:
            st.error(str(exc), icon=":material/block:")
            return None


def _table_view(table, accuracy_available: bool):
    cols = ["rank", "setting", "accuracy", "interval", "mean_confidence", "agreement", "n"]
    if not accuracy_available:
        return table[[c for c in cols if c not in ("accuracy", "interval")]]
    view = table.copy()
    view["interval"] = [f"{lo:.1%} – {hi:.1%}" for lo, hi in zip(view["accuracy_low"], view["accuracy_high"])]
    return view[cols]


_COLUMN_CONFIG = {
    "accuracy": st.column_config.NumberColumn("accuracy", format="percent"),
    "mean_confidence": st.column_config.NumberColumn("mean confidence", format="percent",
                                                     help="Mean probability of the predicted class"),
    "agreement": st.column_config.NumberColumn("agreement", format="percent",
                                               help="Share of images predicted as by the best setting"),
    "interval": st.column_config.TextColumn("95 % interval", help="Where the accuracy on all such images "
                                            "would lie, given these images (Wilson interval)"),
    "n": st.column_config.NumberColumn("images"),
}


def _show_table(table, accuracy_available: bool) -> None:
    st.dataframe(_table_view(table, accuracy_available), hide_index=True, column_config=_COLUMN_CONFIG,
                 width="stretch")


ui.page_start()
loaded, images = ui.require_images()

st.title("Normalization")
st.caption("Which preprocessing does this model really expect? Each preset, resize method and channel order is "
           "measured on your own images: the most common reason a model works in training and fails at "
           "inference is that the inference code prepares images differently.")

if loaded.builtin_preprocessing:
    text = "The model has preprocessing layers at its input: " + "; ".join(loaded.builtin_preprocessing) + "."
    if normalize.expects_raw_pixels(loaded.builtin_preprocessing):
        text += (" It normalizes its input itself, so it expects **raw 0–255 pixels** (`raw`); feeding it an "
                 "already normalized image is double normalization.")
    st.info(text, icon=":material/input:")

custom = _custom_preset()
options = list(applicable_presets(loaded.channels, teachable=loaded.teachable_machine)) + ([custom.name] if custom is not None else [])
current = st.session_state.get("inference_preset") or "unit"
if current not in options:
    current = "unit" if "unit" in options else options[0]
top, button = st.columns([3, 1], vertical_alignment="bottom")
inference = top.selectbox(
    "Preset your inference code uses", options, index=options.index(current), key="norm_inference_widget",
    format_func=lambda p: f"{p} — {PRESET_DESCRIPTIONS[p]}" if p in PRESET_DESCRIPTIONS else p,
    help="Compared with the best preset below: findings and the gallery of changed predictions.")
st.session_state["inference_preset"] = inference
clicked = button.button("Compare", type="primary", icon=":material/tune:", key="norm_run", width="stretch")

report, note = ui.analysis("normalize", {"custom": custom, "variants": True}, start=clicked, auto=ui.is_sample(),
                           prefix="norm")
if report is None:
    if not st.session_state.get("norm_job"):
        st.info(f"Press **Compare** to evaluate **{loaded.name}** on **{len(images)} images** under every preset, "
                "resize method and channel order. On a large model this takes a while; it runs in a separate "
                "worker process, and each comparison is kept.", icon=":material/tune:")
    st.stop()
if note:
    st.caption(note)

left, right = st.columns([2, 3], gap="large")
with left:
    st.subheader("Label-free fingerprint")
    fp = report.fingerprint
    if fp.ranking is None:
        st.info(fp.reason, icon=":material/info:")
    else:
        st.altair_chart(charts.fingerprint_chart(fp.ranking), width="stretch")
        st.caption(f"Activation statistics at `{fp.layer}` (the first BatchNormalization layer) on {fp.n_images} "
                   "images, compared with the statistics it stored in training; the numbers are the distance "
                   "(0 = identical). No labels needed.")
with right:
    st.subheader("Accuracy by setting")
    _show_table(report.results, report.accuracy_available)
    if not report.accuracy_available:
        st.info(report.accuracy_note, icon=":material/visibility_off:")

st.session_state["best_preset"] = report.best_named_preset

st.divider()
if report.inconclusive:
    st.error(f"**No best setting.** {report.inconclusive}", icon=":material/block:")
    st.caption(report.agreement_note)
elif report.best_setting is None:
    st.warning(report.agreement_note, icon=":material/help:")
else:
    row = report.results.iloc[0]
    measured = (f"accuracy {row['accuracy']:.1%}" if report.accuracy_available
                else "closest match to the BatchNormalization statistics")
    st.success(f"**Best setting: {report.best_setting.label}** ({measured}). {report.agreement_note}",
               icon=":material/check_circle:")
    st.markdown("Prepare one image exactly this way:")
    st.code(report.snippet(), language="python")

metric = "accuracy" if report.accuracy_available else "mean_confidence"
c1, c2 = st.columns(2, gap="large")
c1.altair_chart(charts.ranking_chart(report.results, metric, chance=report.chance), width="stretch")
if report.accuracy_available and len(report.per_class):
    c2.altair_chart(charts.per_class_heatmap(report.per_class, report.presets), width="stretch")

findings = normalize.normalization_findings(report, inference)
if findings:
    st.subheader("What this means for your inference code")
    ui.finding_cards(findings)

st.subheader("Images whose prediction changes")
best = report.best_preset
if best is None:
    st.caption("No best preset could be determined, so there is nothing to compare with.")
elif inference not in report.presets:
    st.caption(f"`{inference}` is not in this comparison yet: press **Compare** to measure it.")
elif inference == best:
    st.caption(f"Your inference preset `{inference}` is the best one: no prediction changes.")
else:
    changes = normalize.changed_predictions(report, best, inference)
    st.caption(f"{len(changes)} of {report.n_images} images get another prediction with `{inference}` than with "
               f"`{best}`" + (f"; the first {GALLERY_SIZE} are shown." if len(changes) > GALLERY_SIZE else "."))
    custom_ = report.custom
    presets = tuple(custom_ if custom_ is not None and p == custom_.name else p for p in (best, inference))
    gallery(images, [GalleryEntry(int(r.index), (f"true {r.label} · " if r.label is not None else "")
                                  + f"{best}: {r.prediction_a} ({r.confidence_a:.0%}) → "
                                    f"{inference}: {r.prediction_b} ({r.confidence_b:.0%})", presets)
                     for r in changes.head(GALLERY_SIZE).itertuples()], key="norm_cam")
