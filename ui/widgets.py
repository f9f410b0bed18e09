"""Widgets shared by the pages: the severity -> alert mapping, the one finding card, and image galleries.

A gallery (`gallery`) shows images with captions and, on request, where the model looks:
a "Where the model looks (Grad-CAM)" toggle asks a worker job (`ui.analysis`, kind
``"gradcam"``, `tlviz.gradcam`) for the heatmaps of the shown images under each preset an
entry names, and lays them over the images; a model without a convolutional feature map
gets the engine's sentence. The finding card shows its images this way: the suspects of
likely-mislabelled (ranked, with label and predicted class), one confusion cell at a time of
label-order-mismatch (picked under its matrix), the example images of the other
findings (under the expected and the inference preset when both are known), and the pairs
of duplicate-images side by side.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import streamlit as st

from tlviz import charts
from tlviz.diagnose import AREA_TITLES, SEVERITY_TITLES
from tlviz.findings import Finding
from tlviz.gradcam import job_params, overlay

#: The alert box of each severity.
ALERTS = {"error": st.error, "warning": st.warning, "info": st.info}
#: The icon of each severity.
SEVERITY_ICONS = {"error": ":material/error:", "warning": ":material/warning:", "info": ":material/info:"}
#: Width in pixels of a finding's example images.
STRIP_WIDTH = 80
#: Width in pixels of a gallery's images.
GALLERY_WIDTH = 96
#: Images (entries) a gallery shows at most.
GALLERY_MAX = 12


@dataclass(frozen=True)
class GalleryEntry:
    """One image of a gallery.

    Attributes:
        index: its position in the `ImageSet`.
        caption: the line under it.
        presets: the presets to show its Grad-CAM under (one heatmap each, side by side);
            none: no Grad-CAM for it.
    """

    index: int
    caption: str
    presets: tuple = ()


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


def gallery(images, entries: list[GalleryEntry], *, key: str, columns: int = 6, width: int = GALLERY_WIDTH,
            strip: bool = False, model=None) -> None:
    """Images with captions, and on request where the model looks (Grad-CAM).

    A fine-tuning run's confusion cell shows its images this way with the run's own model::

        gallery(images, [GalleryEntry(i, images.files[i], (run_preset,)) for i in cell_indices],
                key="ft_cell", model=load_model(rec.model_path))


    Args:
        images: the current `ImageSet` (the entries' indices point into it).
        entries: the `GalleryEntry` list, at most `GALLERY_MAX` shown.
        key: the widget-key prefix (the toggle is ``<key>_gradcam``, its job ``<key>_job``).
        columns: entries per row. Defaults to `6` (halved when Grad-CAM shows two presets each).
        width: image width in pixels. Defaults to `GALLERY_WIDTH`.
        strip: without heatmaps, show the images as one strip (a finding's examples) instead of in
            columns. Defaults to `False`.
        model: the `LoadedModel` to explain (it must take `images` as they are). Defaults to the current model.
    """
    entries = [e for e in entries if 0 <= e.index < len(images)][:GALLERY_MAX]
    if not entries:
        return
    items = [(e.index, p) for e in entries for p in e.presets]
    report = None
    if items and st.toggle("Where the model looks (Grad-CAM)", key=f"{key}_gradcam",
                           help="Heatmaps of the regions that raise the predicted class's score, from the "
                                "convolutional feature map that feeds the head. Computed in a worker process."):
        from ui.analysis import analysis  # here: ui.analysis imports the package that imports this module

        report, _ = analysis("gradcam", job_params(items), auto=True, prefix=key, model=model)
        if report is not None and report.reason:
            st.info(report.reason, icon=":material/visibility_off:")
            report = None
    if report is None and strip:
        st.image([images.images[e.index] for e in entries], width=width, caption=[e.caption for e in entries])
        return
    per_entry = max((len(e.presets) for e in entries), default=1) if report is not None else 1
    cols = st.columns(max(1, columns // per_entry))
    for k, e in enumerate(entries):
        cell = cols[k % len(cols)]
        if report is None:
            cell.image(images.images[e.index], width=width, caption=e.caption)
            continue
        shown, captions = [], []
        for p in e.presets:
            m = report.get(e.index, p)
            if m is None:
                continue
            shown.append(overlay(images.images[e.index], m.heatmap))
            captions.append(f"{getattr(p, 'name', p)}: {report.caption(m)}")
        if not shown:
            cell.image(images.images[e.index], width=width, caption=e.caption)
            continue
        cell.image(shown, width=width, caption=captions)
        cell.caption(e.caption)
    if report is not None:
        st.caption(f"Grad-CAM at '{report.layer}' ({report.shape[0]}×{report.shape[1]} grid, upsampled): bright "
                   "regions raise the score of the class named under each image; dark ones do not."
                   if report.shape else f"Grad-CAM at '{report.layer}'.")


def _positions(images) -> dict[str, int]:
    return {f: i for i, f in enumerate(images.files)}


def _gallery_presets(finding: Finding) -> tuple:
    """The presets a finding's images are best shown under: expected and inference when both are known."""
    e = finding.evidence
    both = tuple(dict.fromkeys(p for p in (e.get("expected_preset"), e.get("inference_preset")) if p))
    if len(both) == 2:
        return both
    return (e["preset"],) if e.get("preset") else both


def _example_images(finding: Finding, images) -> None:
    if images is None:
        return
    e = finding.evidence
    where = _positions(images)
    if e.get("pairs"):
        _pairs(e["pairs"], images, where)
        return
    if e.get("cells"):
        _cell_gallery(finding, images, where)
        return
    if e.get("ranked_suspects"):
        entries = [GalleryEntry(where[r["file"]], f"label '{r['label']}' → probe '{r['predicted']}' "
                                                  f"({r['confidence']:.0%})", _gallery_presets(finding))
                   for r in e["ranked_suspects"] if r.get("file") in where]
        st.caption("Ranked suspects: the image's folder, and the class a probe that never saw it names.")
        gallery(images, entries, key=f"card_{finding.id}")
        return
    files = e.get("example_files") or []
    shown = [(where[x], x) for x in files if x in where]
    if not shown:
        return
    presets = _gallery_presets(finding)
    if presets:
        gallery(images, [GalleryEntry(i, Path(x).stem, presets) for i, x in shown], key=f"card_{finding.id}",
                width=STRIP_WIDTH, strip=True)
    else:
        st.image([images.images[i] for i, _ in shown], width=STRIP_WIDTH, caption=[Path(x).stem for _, x in shown])
    st.caption("Example images: " + ", ".join(x for _, x in shown))


def _cell_gallery(finding: Finding, images, where: dict[str, int]) -> None:
    """A confusion matrix's cells (a label-order finding's): pick one, see its images (and where the model looks)."""
    cells = [c for c in finding.evidence["cells"] if any(f in where for f in c.get("files", ()))]
    if not cells:
        return
    names = [f"{c['true']} → output {c['output']} ('{c['output_name']}'): {c['count']} image"
             f"{'s' if c['count'] != 1 else ''}" for c in cells]
    k = st.selectbox("Images of one cell", range(len(cells)), format_func=names.__getitem__,
                     key=f"card_{finding.id}_cell",
                     help="Image-set class → model output. The largest cell off the diagonal comes first.")
    cell = cells[k]
    entries = [GalleryEntry(where[f], Path(f).stem, _gallery_presets(finding)) for f in cell["files"] if f in where]
    gallery(images, entries, key=f"card_{finding.id}")
    if cell["count"] > len(entries):
        st.caption(f"First {len(entries)} of {cell['count']}.")


def _pairs(pairs: list[dict], images, where: dict[str, int]) -> None:
    """Duplicate pairs side by side, with their classes."""
    cols = st.columns(3)
    k = 0
    for p in pairs:
        if p.get("a") not in where or p.get("b") not in where:
            continue
        diff = "exact copy" if p.get("exact") else f"differ by {p.get('difference') or 0:.2g} grey levels"
        cols[k % 3].image([images.images[where[p["a"]]], images.images[where[p["b"]]]], width=STRIP_WIDTH,
                          caption=[f"{p['class_a']}: {Path(p['a']).name}", f"{p['class_b']}: {Path(p['b']).name}"])
        cols[k % 3].caption(diff)
        k += 1
