"""Refresh the README's page tour: ``python tools/screenshots.py`` (needs /usr/bin/chromium).

The pictures are the ones the real-browser tests take (tests/test_browser.py):
this runs those tests with their screenshots going to a temporary folder and
copies the tour's pictures into docs/. A failing test means no new pictures.
"""

import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
TOUR = ("overview.png", "layers.png", "finetune.png", "normalization.png", "diagnose.png")


def main() -> int:
    shots = Path(tempfile.mkdtemp(prefix="tlviz_shots_"))
    env = {**os.environ, "TLVIZ_SCREENSHOT_DIR": str(shots)}
    done = subprocess.run([sys.executable, "-m", "pytest", "-q", "-m", "browser", "tests/test_browser.py"],
                          cwd=ROOT, env=env)
    if done.returncode != 0:
        print("The browser tests failed; docs/ left unchanged.", file=sys.stderr)
        return done.returncode
    for name in TOUR:
        shutil.copyfile(shots / name, ROOT / "docs" / name)
        print("docs/" + name)
    return 0


if __name__ == "__main__":
    sys.exit(main())
