"""Every chart legible as drawn (issue 24 item 1): in a real browser, on every page, in the states that draw the
most charts, each Altair chart draws its plot at least as high as its spec asks, its title and SVG are not cut, and
it stays inside the page's main column.

One served app, one browser session walking the pages on the sample: Model & images, Freezing status,
Normalization (after its analysis), Try it (an image of the image set), Fine-tuning runs (two finished one-epoch
runs, the learning-rate range test, the comparison of the two), and Diagnose on a zip of the sample's images whose
class folders are permuted (digit 0's images in folder ``2``, ...): the sample model records its class names, so the
images are matched by name and the model's answers are a permutation of the labels, which is the
``label-order-mismatch`` finding with its "Predictions vs labels" heatmap. (A permuted ``labels.txt`` would not do
it: the labels are matched to the model's recorded names, whatever their order.)

The specs are the ones the server sent: every websocket frame is parsed as a `ForwardMsg`; a chart's element holds
its Vega-Lite spec (JSON) and its data (Arrow). Before measuring a page, it is rerun (the ``r`` shortcut) so the
specs held are exactly the ones drawn; collapsed expanders are opened. A chart's requested plot height is its
``height`` (a number, or ``{"step": s}`` times the number of categories on its y axis, counted in its data), per
view of a concatenation; in the SVG each view's plot is the ``path.background`` of its group. DOM charts are
matched to specs by their title texts, untitled ones by order.
"""

from __future__ import annotations

import io
import json
import os
import re
import threading
import zipfile

import pytest
from playwright.sync_api import TimeoutError as PlaywrightTimeout

from browser import CHROMIUM, ROOT, browser_page, save_screenshot

pytestmark = [pytest.mark.browser, pytest.mark.slow]

if not os.path.exists(CHROMIUM):  # CI installs it; say loudly why it did not run elsewhere
    pytest.skip(f"{CHROMIUM} not installed (apt-get install chromium)", allow_module_level=True)

#: A chart that asks no height must still draw a plot at least this high (px).
MIN_PLOT = 80
#: Rounding slack when comparing drawn pixels (px).
SLACK = 1.0
#: Digit i's images go into class folder PERMUTED[i] of the uploaded zip.
PERMUTED = {"0": "2", "1": "3", "2": "4", "3": "0", "4": "1"}


# -- the specs the server sent ----------------------------------------------------------------------------------

class SpecLog:
    """The Vega-Lite charts the server sent this page, by delta path (a later element at a path replaces it)."""

    def __init__(self):
        self.lock = threading.Lock()
        self.charts: dict[tuple, dict] = {}
        self.by_hash: dict[str, bytes] = {}
        self.finished = 0

    def attach(self, page) -> None:
        page.on("websocket", lambda ws: ws.on("framereceived", self._frame))

    def clear(self) -> None:
        with self.lock:
            self.charts.clear()
            self.finished = 0

    def _frame(self, payload) -> None:
        if isinstance(payload, str):
            return
        from streamlit.proto.ForwardMsg_pb2 import ForwardMsg

        try:
            msg = ForwardMsg.FromString(payload)
        except Exception:  # not a ForwardMsg: nothing to learn from it
            return
        with self.lock:
            if msg.hash:
                self.by_hash[msg.hash] = payload
            if msg.ref_hash and msg.ref_hash in self.by_hash:  # a cached message, sent by reference
                cached = ForwardMsg.FromString(self.by_hash[msg.ref_hash])
                cached.metadata.CopyFrom(msg.metadata)
                msg = cached
            kind = msg.WhichOneof("type")
            if kind == "script_finished":
                self.finished += 1
            if kind != "delta":
                return
            path = tuple(msg.metadata.delta_path)
            if msg.delta.WhichOneof("type") == "add_block":  # a block replaced: what it held goes
                for p in [p for p in self.charts if p[:len(path)] == path]:
                    del self.charts[p]
                return
            if msg.delta.WhichOneof("type") != "new_element":
                return
            el = msg.delta.new_element
            if el.WhichOneof("type") != "vega_lite_chart":
                self.charts.pop(path, None)
                return
            chart = el.vega_lite_chart
            self.charts[path] = {"spec": json.loads(chart.spec),
                                 "datasets": {d.name: d.data.data for d in chart.datasets}}

    def snapshot(self) -> list[dict]:
        with self.lock:
            return [self.charts[p] for p in sorted(self.charts)]


def _dataset_rows(chart: dict, name: str | None) -> list[dict]:
    import pyarrow as pa

    spec = chart["spec"]
    if name in (spec.get("datasets") or {}):
        return list(spec["datasets"][name])
    raw = chart["datasets"].get(name) if name is not None else None
    if raw is None and len(chart["datasets"]) == 1:
        raw = next(iter(chart["datasets"].values()))
    if raw is None:
        return []
    return pa.ipc.open_stream(raw).read_all().to_pylist()


def _title_texts(title) -> list[str]:
    """The lines a spec's ``title`` draws: its text and its subtitle (a list of lines is drawn as one text)."""
    if not title:
        return []
    if not isinstance(title, dict):
        title = {"text": title}
    out = []
    for part in (title.get("text"), title.get("subtitle")):
        if isinstance(part, list):
            part = "".join(part)
        if part:
            out.append(str(part))
    return out


def _titles(spec: dict) -> list[str]:
    """Every title a spec draws: its own, its views' (concatenations) and its layers'."""
    out = list(_title_texts(spec.get("title")))
    for key in ("hconcat", "vconcat", "concat", "layer"):
        for sub in spec.get(key) or []:
            out += _titles(sub)
    return out


def _y_field(view: dict) -> str | None:
    y = (view.get("encoding") or {}).get("y")
    if isinstance(y, dict) and y.get("field"):
        return y["field"]
    for sub in view.get("layer") or []:
        f = _y_field(sub)
        if f:
            return f
    return None


def _data_name(view: dict, top: dict) -> str | None:
    for v in [view] + list(view.get("layer") or []) + [top]:
        d = v.get("data")
        if isinstance(d, dict) and d.get("name"):
            return d["name"]
    return None


def requested_heights(chart: dict) -> list[tuple[float | None, str]]:
    """Per view (one, or each of a concatenation): the plot height the spec asks for (None: none asked) and how
    it was read."""
    spec = chart["spec"]
    views = spec.get("hconcat") or spec.get("vconcat") or spec.get("concat") or [spec]
    out = []
    for view in views:
        h = view.get("height")
        if h is None and view is not spec:
            h = spec.get("height")
        for sub in view.get("layer") or []:
            if h is None:
                h = sub.get("height")
        if isinstance(h, (int, float)):
            out.append((float(h), f"height {h}"))
        elif isinstance(h, dict) and "step" in h:
            field = _y_field(view)
            rows = _dataset_rows(chart, _data_name(view, spec))
            n = len({r.get(field) for r in rows}) if field else 0
            out.append((float(h["step"]) * n, f"step {h['step']} x {n} {field!r}"))
        else:
            out.append((None, "no height"))
    return out


# -- what the browser drew --------------------------------------------------------------------------------------

_MEASURE = """
(charts) => charts.map((c) => {
  const svg = c.querySelector('svg');
  const r = (e) => { const b = e.getBoundingClientRect(); return {l: b.left, t: b.top, r: b.right, b: b.bottom,
                                                                   w: b.width, h: b.height}; };
  if (!svg) return {svg: null};
  const root = svg.querySelector('g.mark-group.role-frame.root');
  const inLegend = (g) => g.closest('.role-legend') !== null;
  const cells = root ? Array.from(root.querySelectorAll('g.mark-group.role-scope'))
      .filter((g) => !inLegend(g) && !(g.parentElement.closest('g.mark-group.role-scope'))) : [];
  const background = (g) => { for (const item of g.children) { for (const k of item.children) {
      if (k.tagName === 'path' && k.classList.contains('background')) return k; } } return null; };
  const groups = cells.length ? cells : (root ? [root] : []);
  const plots = groups.map((g) => { const b = background(g); return b ? r(b).h : 0; });
  const titles = Array.from(svg.querySelectorAll('g.role-title text'))
      .filter((t) => !t.closest('.role-legend') && !t.closest('.role-axis'))
      .map((t) => ({text: t.textContent, rect: r(t)}));
  const clips = [];
  for (let a = c.parentElement; a && a.getAttribute('data-testid') !== 'stMain'; a = a.parentElement) {
    const s = getComputedStyle(a);
    if (s.overflowX !== 'visible' || s.overflowY !== 'visible') {
      clips.push({what: a.getAttribute('data-testid') || a.tagName, rect: r(a)});
    }
  }
  const block = c.closest('[data-testid="stMainBlockContainer"]');
  let column = null;  // the main column's content box: a chart wider than it spills into the page's margin
  if (block) { const b = r(block), s = getComputedStyle(block);
    column = {l: b.l + parseFloat(s.paddingLeft), r: b.r - parseFloat(s.paddingRight), t: b.t, b: b.b}; }
  return {svg: r(svg), el: r(c), plots, titles, clips, column,
          scroll: {sw: c.scrollWidth, cw: c.clientWidth, sh: c.scrollHeight, ch: c.clientHeight}};
})
"""


def _inside(inner: dict, outer: dict) -> bool:
    return (inner["l"] >= outer["l"] - SLACK and inner["t"] >= outer["t"] - SLACK
            and inner["r"] <= outer["r"] + SLACK and inner["b"] <= outer["b"] + SLACK)


def _charts(page):
    return page.locator('[data-testid="stMain"] [data-testid="stVegaLiteChart"]')


def open_expanders(page) -> int:
    """Open the main area's collapsed expanders; how many were opened."""
    closed = page.locator('[data-testid="stMain"] [data-testid="stExpander"] details:not([open]) > summary')
    n = 0
    while closed.count():
        closed.first.click()
        n += 1
        page.wait_for_timeout(150)
        assert n < 50, "expanders keep closing"
    return n


def rerun_and_collect(page, log: SpecLog) -> None:
    """Rerun the page (the ``r`` shortcut), so the spec log holds exactly what is drawn, and let it draw."""
    log.clear()
    page.get_by_role("heading").first.click()  # focus the page, not an input
    page.keyboard.press("r")
    page.wait_for_function("() => true")
    for _ in range(300):
        if log.finished:
            break
        page.wait_for_timeout(100)
    assert log.finished, "the page did not rerun"
    page.wait_for_timeout(500)


def check_charts(page, log: SpecLog, name: str, at_least: int) -> tuple[list[str], list[str]]:
    """Measure every chart of the page against its spec; return the lines saying what was measured, and the
    problems found."""
    for attempt in range(3):  # a fragment's own run can end before the whole page's messages have all arrived
        open_expanders(page)
        charts = _charts(page)
        page.wait_for_function("""() => Array.from(document.querySelectorAll(
            '[data-testid="stMain"] [data-testid="stVegaLiteChart"]')).every(
            (c) => c.querySelector('svg g.mark-group.role-frame.root'))""", timeout=30_000)
        page.wait_for_timeout(800)  # a chart fitted to its width draws twice
        n = charts.count()
        assert n >= at_least, f"{name}: {n} charts drawn, expected at least {at_least}"
        drawn = charts.evaluate_all(_MEASURE)
        specs = log.snapshot()
        if len(specs) >= n:
            break
        rerun_and_collect(page, log)
    assert len(specs) >= n, f"{name}: {n} charts drawn but {len(specs)} specs received"
    # Match: same titles (in order among charts with the same titles); untitled ones in order.
    pool: dict[tuple, list[dict]] = {}
    for s in specs:
        pool.setdefault(tuple(sorted(_titles(s["spec"]))), []).append(s)
    problems, lines = [], []
    for i, d in enumerate(drawn):
        assert d["svg"], f"{name}: chart {i} drew no SVG"
        key = tuple(sorted(t["text"] for t in d["titles"]))
        candidates = pool.get(key)
        if not candidates:  # a title Vega shortened to its width ("…"): matched by its start, and reported
            short = [t["text"] for t in d["titles"] if t["text"].endswith("…")]
            candidates = [s for k, group in pool.items() for s in group
                          if len(k) == len(key) and short and all(any(full.startswith(cut[:-1]) for full in k)
                                                                  for cut in short)]
            if candidates:
                problems.append(f"{name} chart {i}: titles {short} are cut short to the chart's width; in full: "
                                f"{_titles(candidates[0]['spec'])}")
                pool[tuple(sorted(_titles(candidates[0]["spec"])))].remove(candidates[0])
                candidates = [candidates[0]]
        assert candidates, f"{name}: chart {i} titled {key} has no spec with those titles; specs: " \
                           f"{[tuple(sorted(_titles(s['spec']))) for s in specs]}"
        spec = candidates.pop(0)
        label = f"{name} chart {i} {key or '(untitled)'}"
        wants = requested_heights(spec)
        if len(wants) != len(d["plots"]):
            problems.append(f"{label}: {len(wants)} views in its spec, {len(d['plots'])} plots drawn")
        for (want, how), got in zip(wants, d["plots"]):
            need = MIN_PLOT if want is None else want
            lines.append(f"{label}: plot {got:.0f} px, asked {how}")
            if got + SLACK < need:
                problems.append(f"{label}: plot drawn {got:.1f} px high, the spec asks {how} = {need:.0f} px")
        for t in d["titles"]:
            if not _inside(t["rect"], d["svg"]) or not _inside(t["rect"], d["el"]):
                problems.append(f"{label}: title {t['text']!r} at {t['rect']} is clipped (svg {d['svg']}, "
                                f"element {d['el']})")
        if not _inside(d["svg"], d["el"]):
            problems.append(f"{label}: SVG {d['svg']} is cut by its element {d['el']}")
        for clip in d["clips"]:
            if not _inside(d["svg"], clip["rect"]):
                problems.append(f"{label}: SVG {d['svg']} is cut by its container {clip['what']} {clip['rect']}")
        if d["column"] and (d["svg"]["l"] < d["column"]["l"] - SLACK or d["svg"]["r"] > d["column"]["r"] + SLACK):
            problems.append(f"{label}: SVG {d['svg']} spills out of the page's column {d['column']}")
        if d["scroll"]["sw"] > d["scroll"]["cw"] + SLACK:
            problems.append(f"{label}: drawn {d['scroll']['sw']} px wide in a {d['scroll']['cw']}-px element")
    return lines, problems


# -- driving the app --------------------------------------------------------------------------------------------

def sidebar(page):
    return page.locator('[data-testid="stSidebar"]')


def go(page, title: str) -> None:
    """Open a page through the sidebar; a click that a rerun in progress swallows (an upload's) is repeated."""
    heading = page.get_by_role("heading", name=title, exact=True).first
    for _ in range(3):
        sidebar(page).get_by_role("link", name=title).click()
        try:
            heading.wait_for(timeout=20_000)
            return
        except Exception:  # playwright's TimeoutError
            continue
    heading.wait_for()


def no_exception(page, server=None):
    shown = page.locator('[data-testid="stException"]')
    if shown.count():
        raise AssertionError(shown.first.inner_text() + ("\n--- server log ---\n" + server.log_tail()
                                                         if server is not None else ""))


def permuted_zip(path):
    """The sample's digits_0_4 as a zip, each digit's images in another digit's folder (see `PERMUTED`)."""
    src = ROOT / "sample_models" / "digits_0_4"
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        for digit, folder in PERMUTED.items():
            for f in sorted((src / digit).iterdir()):
                zf.writestr(f"digits_permuted/{folder}/{f.name}", f.read_bytes())
    path.write_bytes(buf.getvalue())
    return path


def test_every_chart_is_legible_as_drawn(server, tmp_path):
    report, problems = [], []
    with browser_page(1400, 1100) as page:
        log = SpecLog()
        log.attach(page)
        try:
            page.goto(server)
            page.get_by_text("5 classes match the model's 5 outputs").wait_for(timeout=120_000)

            def measure(name: str, at_least: int):
                no_exception(page, server)
                rerun_and_collect(page, log)
                lines, found = check_charts(page, log, name, at_least)
                report.extend(lines)
                problems.extend(found)
                no_exception(page, server)
                page.mouse.move(1, 1)
                save_screenshot(page, f"legible_{name}.png")

            measure("overview", 1)

            go(page, "Freezing status")
            page.get_by_text("Preview: unfreeze").first.wait_for()
            measure("layers", 2)

            go(page, "Normalization")
            page.locator('[data-testid="stAlert"]', has_text="Best setting:").first.wait_for(timeout=240_000)
            measure("normalization", 3)

            go(page, "Try it")
            page.get_by_text("From the image set", exact=True).click()
            page.get_by_text("Answered in").wait_for(timeout=120_000)
            measure("try", 2)

            go(page, "Fine-tuning runs")
            epochs = page.get_by_label("Epochs", exact=True)
            for n in (1, 2):
                epochs.fill("1")
                epochs.press("Enter")
                page.get_by_role("button", name="Start run").click()
                page.get_by_text(re.compile(r"· completed")).nth(n - 1).wait_for(state="attached", timeout=240_000)
                page.get_by_role("button", name="Start run").and_(page.locator(":enabled")).wait_for(timeout=60_000)
            find_lr = page.get_by_role("button", name="Find a learning rate")
            lr_chart = page.locator('[data-testid="stVegaLiteChart"]', has_text="learning-rate range test")
            for attempt in range(4):  # a click that lands while the page reruns is lost: click again if so
                if find_lr.is_enabled():  # disabled while the range test runs: then only wait
                    find_lr.click()
                try:
                    lr_chart.wait_for(timeout=90_000)
                    break
                except PlaywrightTimeout:
                    if attempt == 3:
                        raise
            compare = page.get_by_role("combobox", name="Overlay the curves of")
            compare.wait_for()
            chosen = page.locator('[data-testid="stMultiSelect"]', has_text="Overlay the curves of") \
                .locator('[data-testid="stMultiSelectTagsContainer"]').inner_text()
            assert chosen.count("completed") == 2, f"the two runs are not compared: {chosen!r}"
            page.get_by_text("freezing works").first.wait_for()
            measure("finetune", 6)  # curves, confusion, weight change, drift, LR test, comparison

            sidebar(page).get_by_text("Upload .zip", exact=True).click()
            zip_input = sidebar(page).locator('input[type="file"]').last  # the sample model: no model uploader
            zip_input.wait_for(state="attached")
            zip_input.set_input_files(str(permuted_zip(tmp_path / "digits_permuted.zip")))
            go(page, "Diagnose")
            page.get_by_text(re.compile(r"Press Diagnose to check digits_base on 901 images")).wait_for(
                timeout=120_000)  # the uploaded set (the sample's would be diagnosed by itself)
            page.get_by_role("button", name="Diagnose").click()
            page.get_by_text("label-order-mismatch").first.wait_for(timeout=300_000)
            page.locator('[data-testid="stVegaLiteChart"]', has_text="Predictions vs labels").wait_for()
            measure("diagnose", 1)
        except BaseException as exc:
            where = save_screenshot(page, "legible_FAILED.png")
            exc.add_note(f"Screenshot at failure: {where}")
            raise
    print("\n".join(report))
    # Every page is measured before judging, so one run names every chart that fails.
    assert not problems, "\n".join(problems + ["--- measured ---"] + report)
