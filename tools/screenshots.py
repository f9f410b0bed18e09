"""Refresh the README's page tour: ``python tools/screenshots.py`` (needs /usr/bin/chromium; about 10 minutes).

The pictures are the ones the real-browser tests take: the sample's pages (tests/test_browser.py), the Try page
(tests/test_browser_try.py) and, for a real-size-shaped model, the Teachable Machine journey's pages on a
MobileNetV2 export (tests/test_journeys.py). This runs those tests with their screenshots going to a temporary
folder and copies the tour's pictures into docs/. A failing test means no new pictures.
"""

import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
#: picture the tests save -> name under docs/
TOUR = {
    "overview.png": "overview.png",
    "layers.png": "layers.png",
    "finetune.png": "finetune.png",
    "normalization.png": "normalization.png",
    "diagnose.png": "diagnose.png",
    "try.png": "try.png",
    "journey_teachable_layers.png": "realsize_layers.png",
    "journey_teachable_run.png": "realsize_finetune.png",
    "journey_teachable_diagnose.png": "realsize_diagnose.png",
    "team_signed_in.png": "team_signed_in.png",
    "team_refused.png": "team_refused.png",
}
TESTS = ["tests/test_browser.py", "tests/test_browser_try.py", "tests/test_journeys.py::test_teachable_machine_user",
         "tests/test_signin_browser.py"]


def main() -> int:
    shots = Path(tempfile.mkdtemp(prefix="tlviz_shots_"))
    env = {**os.environ, "TLVIZ_SCREENSHOT_DIR": str(shots)}
    done = subprocess.run([sys.executable, "-m", "pytest", "-q", "-n", "0", "-m", "browser", *TESTS],
                          cwd=ROOT, env=env)
    if done.returncode != 0:
        print("The browser tests failed; docs/ left unchanged.", file=sys.stderr)
        return done.returncode
    for taken, name in TOUR.items():
        shutil.copyfile(shots / taken, ROOT / "docs" / name)
        print("docs/" + name)
    return 0


if __name__ == "__main__":
    sys.exit(main())
