"""Widgets shared by the pages: the severity -> alert mapping and the one finding card."""

from __future__ import annotations

from pathlib import Path

import streamlit as st

from tlviz import charts
from tlviz.diagnose import AREA_TITLES, SEVERITY_TITLES
from tlviz.findings import Finding

#: The alert box of each severity.
ALERTS = {"error": st.error, "warning": st.warning, "info": st.info}
#: The icon of each severity.
SEVERITY_ICONS = {"error": ":material/error:", "warning": ":material/warning:", "info": ":material/info:"}
#: Width in pixels of a finding's example images.
STRIP_WIDTH = 80


def alert(severity: str, body: str, icon: str | None = None) -> None:
    """An alert box of `severity`'s kind (an unknown severity shows as info).

    Args:
        severity: ``"error"``, ``"warning"`` or ``"info"``.
        body: Markdown.
        icon: a ``:material/…:`` icon. Defaults to the severity's icon.
    """
    ALERTS.get(severity, st.info)(body, icon=icon or SEVERITY_ICONS.get(severity, SEVERITY_ICONS["info"]))


def finding_card(finding: Finding, *, evidence: bool = False, images=None, note: str = "") -> None:
    """One finding, the same way on every page.

    Args:
        finding: the `tlviz.findings.Finding`.
        evidence: also show what it rests on: a bordered card with its id,
            severity and area, and an expander (open for errors) with the
            evidence table, its chart, example images and the fix. Defaults to
            `False`: one alert of its severity with the title and the fix.
        images: the `ImageSet` its ``example_files`` come from (shown with
            `evidence`). Defaults to `None` (no example images).
        note: a sentence added after the fix (what this page does about it).
            Defaults to none.
    """
    if not evidence:
        alert(finding.severity, f"**{finding.title}.**\n\n{finding.fix}" + (f" {note}" if note else ""))
        return
    with st.container(border=True):
        alert(finding.severity, f"**{finding.title}**")
        st.caption(f"`{finding.id}` · {SEVERITY_TITLES[finding.severity]} · {AREA_TITLES[finding.area]}")
        with st.expander("Evidence and fix", expanded=finding.severity == "error"):
            table = charts.evidence_table(finding.evidence)
            if len(table):
                st.dataframe(table, hide_index=True, width="stretch")
            chart = charts.finding_chart(finding)
            if chart is not None:
                st.altair_chart(chart, width="stretch")
            _example_images(finding, images)
            st.markdown(f"**Fix.** {finding.fix}" + (f" {note}" if note else ""))


def finding_cards(findings, **options) -> None:
    """`finding_card` for each finding, in order (`options` as there)."""
    for finding in findings:
        finding_card(finding, **options)


def _example_images(finding: Finding, images) -> None:
    files = finding.evidence.get("example_files") or []
    if not files or images is None:
        return
    positions = {f: i for i, f in enumerate(images.files)}
    shown = [(positions[x], x) for x in files if x in positions]
    if shown:
        st.image([images.images[i] for i, _ in shown], width=STRIP_WIDTH, caption=[Path(x).stem for _, x in shown])
        st.caption("Example images: " + ", ".join(x for _, x in shown))
