"""Take the README screenshots: ``python tools/screenshots.py`` (needs /usr/bin/chromium).

Starts the app on a free port with the preloaded sample and saves one PNG per page in docs/.
"""

import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))

from browser import browser_page, streamlit_server  # noqa: E402

PAGES = {  # url path -> (file name, text to wait for, extra seconds for long computations)
    "": ("overview.png", "match the model", 2),
    "layers": ("layers.png", "Preview: unfreeze", 2),
    "normalization": ("normalization.png", "Best setting", 3),
    "finetune": ("finetune.png", "Fine-tuning runs", 2),
    "diagnose": ("diagnose.png", "Checks skipped", 3),
}


def main(only=None) -> None:
    import tempfile

    runs = tempfile.mkdtemp(prefix="tlviz_shots_")
    with streamlit_server(env={"TLVIZ_RUNS_DIR": runs}) as url, browser_page(1400, 1100) as page:
        for path, (name, wait_text, extra) in PAGES.items():
            if only and path not in only:
                continue
            if path and not (ROOT / "views" / f"{path}.py").exists():
                continue
            page.goto(f"{url}/{path}")
            try:
                page.get_by_text(wait_text).first.wait_for(timeout=120_000)
            except Exception:
                print(f"{path or 'overview'}: '{wait_text}' did not appear; screenshot anyway")
            if path == "finetune":  # show a finished run, not an empty form
                page.get_by_role("button", name="Start run").click()
                page.get_by_text("freezing works").first.wait_for(timeout=180_000)
                time.sleep(2)
                page.get_by_text("Weight changes").first.scroll_into_view_if_needed()
            time.sleep(extra)
            page.screenshot(path=str(ROOT / "docs" / name), full_page=False)
            print("saved", name)


if __name__ == "__main__":
    main(sys.argv[1:] or None)
