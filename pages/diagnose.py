"""Diagnose: one click from "it doesn't learn" to a ranked list of causes with fixes.

Thin page: the inference-preset select box and a Diagnose button -> a `tlviz.jobs`
diagnose job (a worker process; measured once per model and image set and stored,
see `ui.analysis`) -> finding cards (`ui.finding_card` with the evidence) grouped by
area, each fixable one with its Repair action (`ui.repair`: a repair job, the proof, the
repaired file, "make it current"), skipped checks, Markdown / JSON downloads. The preset
only re-judges two checks (`DiagnosisReport.for_preset`), so changing it is instant; the
sample runs on its own.
"""

from __future__ import annotations

import json

import streamlit as st

import ui
from tlviz import diagnose as dg
from tlviz.presets import PRESET_DESCRIPTIONS, applicable_presets
from tlviz.repair import REPAIRS, fixable
from ui import repair as repairs


def _keep_preset() -> None:
    st.session_state["inference_preset"] = st.session_state["diag_inference_widget"]


ui.page_start()
loaded, images = ui.require_images()

st.title("Diagnose")
repairs.adopted_notice(preset_widget="diag_inference_widget")
st.caption(f"Runs every check tlviz has — {len(dg.CHECKS)} of them, on pre-training, fine-tuning and the inference "
           "pipeline — on the loaded model and image set, and lists what it finds, most severe first, with the "
           "evidence measured on your images and the fix.")

options = list(applicable_presets(loaded.channels, teachable=loaded.teachable_machine))
current = st.session_state.get("inference_preset") or "unit"
left, right = st.columns([3, 1], vertical_alignment="bottom")
preset = left.selectbox(
    "Preset your inference code uses", options, index=options.index(current if current in options else "unit"),
    key="diag_inference_widget", format_func=lambda p: f"{p} — {PRESET_DESCRIPTIONS[p]}", on_change=_keep_preset,
    help="The normalization your own inference code applies; it is compared with the one the model expects.")
if current in options:
    st.session_state["inference_preset"] = preset
else:  # a custom preset chosen on the Normalization page stays the session's choice
    st.caption(f"Your inference preset `{current}` is a custom one; the diagnosis judges the named presets, "
               f"here `{preset}`. The Normalization page compares custom presets.")
clicked = right.button("Diagnose", type="primary", icon=":material/troubleshoot:", key="diag_run", width="stretch")

measured, note = ui.analysis("diagnose", start=clicked, auto=ui.is_sample(), prefix="diag")
if measured is None:
    if not st.session_state.get("diag_job"):
        st.info(f"Press **Diagnose** to check **{loaded.name}** on **{len(images)} images**. On a large model this "
                "takes a while (every preset is evaluated, and a linear probe compares the base with random "
                "weights); it runs in a separate worker process, and each diagnosis is kept.",
                icon=":material/troubleshoot:")
    st.stop()
if note:
    st.caption(note)
report = measured.for_preset(preset)
report = ui.finetune.judged_with_runs(report, loaded, ui.pixels_key())  # catastrophic-forgetting: this session's runs
st.session_state["diagnosis"] = report

counts = report.counts_by_severity
m = st.columns(4)
m[0].metric("Errors", counts["error"])
m[1].metric("Warnings", counts["warning"])
m[2].metric("Info", counts["info"])
m[3].metric("Checks skipped", len(report.skipped))
conflicts = report.preset_conflicts  # evidence on the expected preset that disagrees: no claim is made over it
if not counts["error"] and not counts["warning"]:
    st.success("No errors or warnings: nothing tlviz can measure explains a model that does not learn"
               + (f" (the model expects `{report.expected_preset}`, which is what you use)."
                  if report.expected_preset == preset and not conflicts else "."), icon=":material/check_circle:")
for sentence in conflicts:
    st.caption(f"Conflicting evidence on the preset the model expects: {sentence}")

for area, items in report.by_area():
    st.subheader(dg.AREA_TITLES[area], divider="gray")
    for finding in items:
        ui.finding_card(finding, evidence=True, images=images)
        if finding.id in REPAIRS:
            repairs.repair_action(finding, preset)
if len(fixable(f.id for f in report.findings)) > 1:
    repairs.repair_several(fixable(f.id for f in report.findings), preset)

if report.skipped:
    st.subheader("Skipped checks", divider="gray")
    st.markdown("\n".join(f"- **{s.title}** (`{s.id}`): {s.reason}" for s in report.skipped))

st.subheader("Download the report", divider="gray")
d1, d2, d3 = st.columns(3)
stem = f"tlviz-diagnosis-{loaded.name}"
d1.download_button("Markdown", report.to_markdown(repairs=repairs.repairs_made()), file_name=f"{stem}.md",
                   mime="text/markdown",
                   icon=":material/description:", key="diag_download_md", width="stretch")
d2.download_button("JSON", json.dumps(report.to_dict(), indent=2), file_name=f"{stem}.json",
                   mime="application/json", icon=":material/data_object:", key="diag_download_json",
                   width="stretch")
ui.html_report_download(d3, report, loaded, images, stem)
st.caption(f"Checks took {report.seconds.get('total', 0):.1f} s. The same report from the command line: "
           f"`python -m tlviz diagnose MODEL IMAGES --preset {preset} --json`.")
