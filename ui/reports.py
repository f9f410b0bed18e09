"""The self-contained HTML report on the Diagnose page: its Grad-CAM overlays come from a worker job."""
from __future__ import annotations

import streamlit as st

from tlviz.gradcam import job_params
from tlviz.htmlreport import diagnosis_html, example_items
from ui.analysis import analysis
from ui.cache import remembered_key


@st.cache_data(show_spinner="Writing the HTML report…", max_entries=4)
def _html(_report, _images, _loaded, _gradcam, key: tuple) -> str:
    return diagnosis_html(_report, _images, _loaded, _gradcam)


def html_report_download(where, report, loaded, images, stem: str) -> None:
    """A button that prepares the HTML report (where the model looks in each example image is measured in a worker
    job first), then the download button, both in the container `where`."""
    items = example_items(report, images)
    wanted = st.session_state.get("diag_html_wanted") == remembered_key(loaded)
    if items and not wanted:
        if where.button("HTML (self-contained)", icon=":material/html:", key="diag_html_prepare", width="stretch",
                     help="One file with the findings, charts, example images and where the model looks; "
                          "it opens offline. Where the model looks is measured first, in a worker process."):
            st.session_state["diag_html_wanted"] = remembered_key(loaded)
            st.rerun()
        return
    gradcam = None
    if items:
        with where:
            gradcam, _ = analysis("gradcam", job_params(items), auto=True, prefix="diag_html")
        if gradcam is None:
            return  # the job's progress panel is showing
    key = (remembered_key(loaded), report.n_images, report.inference_preset, tuple(f.id for f in report.findings),
           bool(gradcam))
    where.download_button("HTML (self-contained)", _html(report, images, loaded, gradcam, key),
                          file_name=f"{stem}.html", mime="text/html", icon=":material/html:", key="diag_download_html",
                          width="stretch", on_click="ignore")
