"""One self-contained HTML file of a diagnosis or a fine-tuning run: the thing a team hands around after a demo.

Everything is inside the file: the charts as SVG rendered by ``vl-convert`` (the Vega tooling Altair uses for
offline export), the images as PNG data URLs, the styles inline. It holds no script and fetches nothing, so it
opens offline and in a mail client's preview. Numbers are written for people (`tlviz.charts.evidence_table`);
the raw numbers stay in the JSON export.

Public API:

- `diagnosis_html(report, images=None, loaded=None, gradcam=None) -> str`, and `example_items(report, images)`:
  the (image, preset) pairs whose Grad-CAM it draws (`tlviz.gradcam.explain` computes them);
- `run_html(record, loaded=None) -> str`;
- `chart_svg(chart, width)`, `image_tag(array, width, caption)`, `markdown_html(text)`: the pieces.
"""
from __future__ import annotations

import base64
import datetime as _dt
import html
import io
import re
from pathlib import Path

import numpy as np

#: Charts that fill the width are drawn this wide (px) in the file (`tlviz.charts.export.FILE_WIDTH`).
CHART_WIDTH = 640
#: Example images and overlays are drawn this wide (px).
THUMB_WIDTH = 128
#: At most this many example images per finding.
MAX_EXAMPLES = 8

_STYLE = """
body{font-family:system-ui,-apple-system,"Segoe UI",Roboto,Helvetica,Arial,sans-serif;max-width:960px;margin:2em auto;
padding:0 1em;color:#222;line-height:1.45}
h1{font-size:1.7em;margin-bottom:.2em}h2{border-bottom:1px solid #ddd;padding-bottom:.2em;margin-top:1.6em}
.meta{color:#666;font-size:.9em}.card{border:1px solid #ddd;border-radius:8px;padding:.8em 1em;margin:1em 0}
.sev{display:inline-block;border-radius:4px;padding:0 .5em;font-size:.85em;font-weight:600;color:#fff}
.error{background:#C62828}.warning{background:#B26A00}.info{background:#1565C0}
table{border-collapse:collapse;margin:.5em 0}td,th{border-bottom:1px solid #eee;padding:.2em .8em .2em 0;
text-align:left;vertical-align:top}code,pre{background:#f5f5f5;border-radius:4px;font-size:.9em}
code{padding:0 .25em}pre{padding:.6em;overflow-x:auto}.figs{display:flex;flex-wrap:wrap;gap:.6em}
figure{margin:0;text-align:center}figcaption{font-size:.8em;color:#555;max-width:160px;word-break:break-all}
.chart svg{max-width:100%;height:auto}.counts span{margin-right:1.2em}
"""


# -- pieces --------------------------------------------------------------------------------------------

def chart_svg(chart, width: int = CHART_WIDTH) -> str:
    """An Altair chart as inline SVG (no script). A chart without a width of its own is drawn `width` px wide.

    Args:
        chart: an Altair chart (None gives ``""``).
        width: the width of a chart that fills the page. Defaults to `CHART_WIDTH`.
    """
    if chart is None:
        return ""
    from tlviz.charts import to_svg

    return f'<div class="chart">{to_svg(chart, width)}</div>'


def image_tag(array, width: int = THUMB_WIDTH, caption: str = "") -> str:
    """A ``uint8`` image as an ``<img>`` with a PNG data URL, in a ``<figure>`` with its caption."""
    from PIL import Image

    arr = np.asarray(array)
    if arr.dtype != np.uint8:
        arr = np.clip(arr, 0, 255).astype(np.uint8)
    if arr.ndim == 3 and arr.shape[-1] == 1:
        arr = arr[..., 0]
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, "PNG", optimize=True)
    data = base64.b64encode(buf.getvalue()).decode("ascii")
    cap = f"<figcaption>{html.escape(caption)}</figcaption>" if caption else ""
    return (f'<figure><img src="data:image/png;base64,{data}" width="{int(width)}" '
            f'style="image-rendering:pixelated" alt="{html.escape(caption)}">{cap}</figure>')


_FENCE = re.compile(r"```[a-zA-Z0-9_-]*\n(.*?)```", re.S)


def _inline(text: str) -> str:
    out = html.escape(text, quote=False)
    out = re.sub(r"`([^`]+)`", r"<code>\1</code>", out)
    out = re.sub(r"\*\*([^*]+)\*\*", r"<strong>\1</strong>", out)
    out = re.sub(r"(?<![*\w])\*([^*\n]+)\*(?!\*)", r"<em>\1</em>", out)
    return re.sub(r"\[([^\]]+)\]\(([^)\s]+)\)", r'<a href="\2">\1</a>', out)


def markdown_html(text: str) -> str:
    """The little Markdown tlviz writes (fenced code, inline code, bold, italics, links, ``-`` lists, paragraphs)
    as HTML, everything else escaped."""
    parts, pos = [], 0
    for m in _FENCE.finditer(text or ""):
        parts.append(_blocks(text[pos:m.start()]))
        parts.append(f"<pre><code>{html.escape(m.group(1))}</code></pre>")
        pos = m.end()
    parts.append(_blocks((text or "")[pos:]))
    return "".join(parts)


def _blocks(text: str) -> str:
    out = []
    for block in re.split(r"\n\s*\n", text.strip()):
        if not block.strip():
            continue
        lines = block.splitlines()
        if all(x.lstrip().startswith(("- ", "* ")) for x in lines):
            out.append("<ul>" + "".join(f"<li>{_inline(x.lstrip()[2:])}</li>" for x in lines) + "</ul>")
        else:
            out.append(f"<p>{_inline(' '.join(x.strip() for x in lines))}</p>")
    return "".join(out)


def _table(rows: list[tuple[str, str]]) -> str:
    body = "".join(f"<tr><th>{html.escape(str(k))}</th><td>{html.escape(str(v))}</td></tr>" for k, v in rows)
    return f"<table>{body}</table>" if body else ""


def _page(title: str, body: str) -> str:
    from tlviz import __version__

    made = _dt.datetime.now().strftime("%Y-%m-%d %H:%M")
    return ("<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
            f"<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\"><title>{html.escape(title)}"
            f"</title><style>{_STYLE}</style></head><body><h1>{html.escape(title)}</h1>"
            f"<p class=\"meta\">Made by tlviz {__version__} on {made}. Self-contained: it opens offline; the raw "
            f"numbers are in the JSON export.</p>{body}</body></html>\n")


def _model_rows(loaded) -> list[tuple[str, str]]:
    if loaded is None:
        return []
    rows = [("model", loaded.name), ("file", loaded.filename or "–"),
            ("input", "×".join(str(d) for d in loaded.input_shape)), ("outputs", f"{loaded.n_outputs:,}"),
            ("parameters", f"{loaded.total_params:,} ({loaded.trainable_params:,} trainable)")]
    if loaded.recorded_preset:
        rows.append(("preset recorded in the file", loaded.recorded_preset))
    if loaded.sha256:
        rows.append(("sha256", loaded.sha256[:16] + "…"))
    return rows


# -- a diagnosis ---------------------------------------------------------------------------------------

_SEVERITY = {"error": "Error", "warning": "Warning", "info": "Info"}


def _example_files(finding, images) -> list[tuple[int, str]]:
    """``(index in the image set, file)`` of a finding's example images, at most `MAX_EXAMPLES`."""
    e = finding.evidence
    files: list[str] = list(e.get("example_files") or [])
    for r in e.get("ranked_suspects") or []:
        files.append(r.get("file"))
    for c in e.get("cells") or []:
        files.extend(c.get("files") or [])
    for p in e.get("pairs") or []:
        files.extend([p.get("a"), p.get("b")])
    where = {f: i for i, f in enumerate(images.files)}
    return [(where[f], f) for f in dict.fromkeys(files) if f in where][:MAX_EXAMPLES]


def _presets_of(finding) -> tuple:
    """The presets a finding's images are shown under: the expected and the user's, when the evidence names them."""
    e = finding.evidence
    both = tuple(dict.fromkeys(p for p in (e.get("expected_preset"), e.get("inference_preset")) if p))
    return both if both else ((e["preset"],) if e.get("preset") else ())


def example_items(report, images, default_preset: str | None = None) -> list[tuple[int, str]]:
    """The ``(image index, preset)`` pairs whose Grad-CAM the HTML report draws beside the example images (at most
    `tlviz.gradcam.GRADCAM_MAX_ITEMS`): pass them to `tlviz.gradcam.explain` or a ``gradcam`` job.

    Args:
        report: the `DiagnosisReport`.
        images: its `ImageSet`.
        default_preset: for findings whose evidence names no preset. Defaults to the report's inference preset.
    """
    from tlviz.gradcam import GRADCAM_MAX_ITEMS

    items: list[tuple[int, str]] = []
    for f in report.findings:
        presets = _presets_of(f) or (default_preset or report.inference_preset,)
        for i, _ in _example_files(f, images):
            items.extend((i, p) for p in presets)
    return list(dict.fromkeys(items))[:GRADCAM_MAX_ITEMS]


def _examples(finding, images, gradcam) -> str:
    """A finding's example images (and, given a Grad-CAM report, where the model looks in each)."""
    if images is None:
        return ""
    picked = _example_files(finding, images)
    if not picked:
        return ""
    figs = []
    for i, f in picked:
        figs.append(image_tag(images.images[i], caption=Path(f).name))
        if gradcam is not None:
            from tlviz.gradcam import overlay

            for m in (m for (idx, _), m in gradcam.maps.items() if idx == i):
                figs.append(image_tag(overlay(images.images[i], m.heatmap),
                                      caption=f"{m.preset}: {gradcam.caption(m)}"))
    return f'<p class="meta">Example images</p><div class="figs">{"".join(figs)}</div>'


def diagnosis_html(report, images=None, loaded=None, gradcam=None) -> str:
    """A `DiagnosisReport` as one self-contained HTML page.

    Args:
        report: the `tlviz.diagnose.DiagnosisReport` (already judged for the user's inference preset).
        images: the `ImageSet` it was measured on (for the example images). Defaults to none.
        loaded: the `LoadedModel` (for its summary). Defaults to the report's own model fields.
        gradcam: a `tlviz.gradcam.GradcamReport` of the example images, drawn beside them. Defaults to none.

    Returns:
        The HTML text.
    """
    from tlviz.charts import evidence_table, finding_chart
    from tlviz.diagnose import AREA_TITLES

    counts = report.counts_by_severity
    body = ['<p class="counts">' + "".join(f"<span><b>{counts.get(s, 0)}</b> {t.lower()}"
                                           f"{'s' if counts.get(s, 0) != 1 else ''}</span>"
                                           for s, t in _SEVERITY.items())
            + f"<span><b>{len(report.skipped)}</b> checks skipped</span></p>"]
    summary = _model_rows(loaded) or [("model", report.model_name), ("file", report.model_file or "–")]
    summary += [("images", f"{report.n_images:,} from {report.images_source}"),
                ("classes", ", ".join(str(c) for c in report.class_names)),
                ("your inference preset", report.inference_preset),
                ("the model expects", f"{report.expected_preset} ({report.expected_by})" if report.expected_preset
                 else "not determined")]
    if images is not None and getattr(images, "skipped", None):
        summary.append(("files skipped", f"{len(images.skipped):,}"))
    body.append("<h2>Model and images</h2>" + _table(summary))
    if not counts.get("error") and not counts.get("warning"):
        body.append("<p><b>No errors or warnings</b>: nothing tlviz can measure explains a model that does not "
                    "learn.</p>")
    for sentence in report.preset_conflicts:
        body.append(f'<p class="meta">Conflicting evidence on the preset the model expects: '
                    f"{_inline(sentence)}</p>")
    for area, items in report.by_area():
        body.append(f"<h2>{html.escape(AREA_TITLES.get(area, area))}</h2>")
        for f in items:
            table = evidence_table(f.evidence)
            rows = list(zip(table["evidence"], table["value"])) if len(table) else []
            body.append(
                f'<div class="card"><span class="sev {f.severity}">{_SEVERITY.get(f.severity, f.severity)}</span> '
                f"<b>{_inline(f.title)}</b> <span class=\"meta\"><code>{html.escape(f.id)}</code></span>"
                + _table(rows) + chart_svg(finding_chart(f)) + _examples(f, images, gradcam)
                + f"<h4>Fix</h4>{markdown_html(f.fix)}</div>")
    if report.skipped:
        body.append("<h2>Skipped checks</h2><ul>" + "".join(
            f"<li><b>{html.escape(s.title)}</b> (<code>{html.escape(s.id)}</code>): {_inline(s.reason)}</li>"
            for s in report.skipped) + "</ul>")
    return _page(f"tlviz diagnosis: {report.model_name}", "".join(body))


# -- a fine-tuning run ---------------------------------------------------------------------------------

def run_html(record, loaded=None) -> str:
    """A finished fine-tuning run (`tlviz.finetune.RunRecord`) as one self-contained HTML page: its settings,
    outcome, findings, curves, per-class accuracy and confusion, weight changes and representation drift."""
    from tlviz import charts
    from tlviz.finetune.store import format_seconds

    out = record.outcome
    body = [f"<p>{_inline(record.describe() or '')}</p>"]
    rows = [("state", record.state), ("ran on", record.ran_on or "–")]
    if out.final:
        pct = (lambda v: "–" if v is None else f"{v:.1%}")
        rows += [("validation accuracy", pct(out.val_accuracy)), ("best validation accuracy",
                                                                  pct(out.best_val_accuracy)),
                 ("training accuracy (last epoch)", pct(out.train_accuracy)),
                 ("time", format_seconds(out.elapsed_s))]
    if record.message:
        rows.append(("message", record.message))
    body.append("<h2>Outcome</h2>" + _table(rows))
    body.append("<h2>Model</h2>" + _table(_model_rows(loaded) + [
        ("settings", ", ".join(f"{k.replace('_', ' ')} {v}" for k, v in sorted(record.config.items())
                               if v not in (None, "") and not isinstance(v, (dict, list))))]))
    if out.findings:
        body.append("<h2>Findings</h2>" + "".join(
            f'<div class="card"><span class="sev {f.severity}">{_SEVERITY.get(f.severity, f.severity)}</span> '
            f"<b>{_inline(f.title)}</b>{markdown_html(f.fix)}</div>" for f in out.findings))
    if out.notes:
        body.append("<ul>" + "".join(f"<li>{_inline(n)}</li>" for n in out.notes) + "</ul>")
    if len(record.history):
        body.append("<h2>Training curves</h2>" + chart_svg(charts.curves_chart(record.history)))
    if out.confusion is not None:
        body.append("<h2>Validation confusion</h2>" + chart_svg(charts.confusion_chart(out.confusion,
                                                                                        out.class_names)))
    wc = record.weight_change
    if wc is not None and len(wc):
        moved = ", ".join(out.frozen_layers_changed)
        body.append("<h2>How much each layer moved</h2>"
                    + (f"<p><b>Frozen layers whose weights moved:</b> {html.escape(moved)}.</p>" if moved else "")
                    + chart_svg(charts.weight_change_chart(wc)))
    drift = out.drift_table
    if len(drift):
        body.append("<h2>Representation drift</h2>" + chart_svg(charts.drift_chart(drift)))
    return _page(f"tlviz fine-tuning run {record.run_id}", "".join(body))
