"""The self-contained HTML report (`tlviz.htmlreport`): a diagnosis and a fine-tuning run as one file that opens
offline with every chart drawn, from the engine and from the command line (``--html``)."""
from __future__ import annotations

import os
import re

import pytest

from tlviz.cli import main as cli_main

CHROMIUM = "/usr/bin/chromium"


@pytest.fixture(scope="module")
def frozen_html(samples_dir, tmp_path_factory):
    """The command line's HTML report of the frozen sample (errors with example images and charts)."""
    path = tmp_path_factory.mktemp("html") / "diagnosis.html"
    code = cli_main(["diagnose", str(samples_dir / "digits_frozen.keras"), str(samples_dir / "digits_0_4"),
                     "--html", str(path), "-q"])
    assert code == 1  # an error-level finding: the exit status is the same with --html
    return path.read_text(encoding="utf-8")


def _offline_check(path):
    """Open `path` in Chromium with the network off; return (requests made, [(width, height, marks) per chart])."""
    from playwright.sync_api import sync_playwright

    requests = []
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox", "--disable-gpu",
                                                                    "--disable-background-networking"])
        context = browser.new_context()
        context.set_offline(True)
        page = context.new_page()
        page.on("request", lambda r: requests.append(r.url) if not r.url.startswith(("file:", "data:")) else None)
        page.goto(path.as_uri())
        charts = page.eval_on_selector_all(
            ".chart > svg", "els => els.map(e => [e.getBoundingClientRect().width, e.getBoundingClientRect().height,"
                            " e.querySelectorAll('path, rect, text').length])")
        images = page.eval_on_selector_all("img", "els => els.map(e => e.complete && e.naturalWidth > 0)")
        browser.close()
    return requests, charts, images


def test_the_diagnosis_file_holds_everything_and_fetches_nothing(frozen_html, tmp_path):
    html = frozen_html
    assert "<script" not in html.lower()
    text = re.sub(r"data:image/png;base64,[A-Za-z0-9+/=]+", "", html)  # the images are inside the file
    external = set(re.findall(r"(?:https?:)?//[^\s\"'<>)]+", text))
    assert external <= {"http://www.w3.org/2000/svg", "http://www.w3.org/1999/xlink"}, external  # namespaces only
    for fid in ("no-trainable-weights", "normalization-mismatch"):
        assert fid in html
    assert "tlviz 0." in html and "digits_frozen" in html and "901 from" in html  # version, model, image set
    assert "39.4%" in html and "points" in html  # evidence written for people
    assert "0.1662" not in html
    assert html.count("data:image/png") >= 8  # example images and their Grad-CAM overlays
    assert "explains &#x27;" in html  # an overlay's caption: the class it explains
    assert len(html.encode()) < 3 * 2**20
    if not os.path.exists(CHROMIUM):
        pytest.skip(f"{CHROMIUM} not installed")
    path = tmp_path / "d.html"
    path.write_text(html, encoding="utf-8")
    requests, charts, images = _offline_check(path)
    assert requests == []
    assert charts and all(w > 100 and h > 50 and marks > 5 for w, h, marks in charts), charts
    assert images and all(images)


def test_a_run_as_html_from_the_finetune_command(samples_dir, tmp_path, monkeypatch):
    monkeypatch.setenv("TLVIZ_RUNS_DIR", str(tmp_path / "runs"))
    path = tmp_path / "run.html"
    code = cli_main(["finetune", str(samples_dir / "digits_base.keras"), str(samples_dir / "digits_5_9"),
                     "--epochs", "1", "--unfreeze", "1", "--lr", "1e-3", "--html", str(path), "-q"])
    assert code in (0, 1)
    html = path.read_text(encoding="utf-8")
    assert "<script" not in html.lower()
    for part in ("Training curves", "Validation confusion", "How much each layer moved", "digits_base"):
        assert part in html
    assert html.count("<svg") >= 3
    if os.path.exists(CHROMIUM):
        requests, charts, _ = _offline_check(path)
        assert requests == [] and all(w > 100 and h > 50 and marks > 5 for w, h, marks in charts), charts


def test_markdown_in_a_fix_becomes_html_and_nothing_else_does():
    from tlviz.htmlreport import markdown_html

    out = markdown_html("Use `tf` **now**.\n\n```python\nx = a < b\n```\n- one <b>\n- two")
    assert "<code>tf</code>" in out and "<strong>now</strong>" in out
    assert "<pre><code>x = a &lt; b\n</code></pre>" in out
    assert "<li>one &lt;b&gt;</li>" in out
