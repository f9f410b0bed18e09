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
    "normalization": ("normalization.png", "Best setting", 20),
    "finetune": ("finetune.png", "Fine-tuning", 5),
    "diagnose": ("diagnose.png", "Diagnose", 30),
}


def main(only=None) -> None:
    with streamlit_server() as url, browser_page(1400, 1100) as page:
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
            time.sleep(extra)
            page.screenshot(path=str(ROOT / "docs" / name), full_page=False)
            print("saved", name)


if __name__ == "__main__":
    main(sys.argv[1:] or None)
