"""`pip install .` gives a `tlviz` command with the same sub-commands and output as `python -m tlviz`."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_pip_install_gives_the_tlviz_command(tmp_path):
    # Built from a copy: setuptools writes build/ and *.egg-info next to the sources.
    src = tmp_path / "src"
    shutil.copytree(ROOT / "tlviz", src / "tlviz", ignore=shutil.ignore_patterns("__pycache__"))
    for name in ("pyproject.toml", "README.md", "requirements.txt"):
        shutil.copyfile(ROOT / name, src / name)
    target = tmp_path / "site"
    done = subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--no-build-isolation",
                           "--target", str(target), str(src)], capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    script = target / "bin" / "tlviz"
    assert script.exists()
    # The installed copy, not this checkout, must answer: run from elsewhere with only the target on the path.
    env = {**os.environ, "PYTHONPATH": str(target)}
    helped = subprocess.run([sys.executable, str(script), "--help"], capture_output=True, text=True, cwd=tmp_path,
                            env=env, timeout=300)
    assert helped.returncode == 0, helped.stderr[-2000:]
    for sub in ("layers", "normalize", "finetune", "diagnose", "convert"):
        assert sub in helped.stdout
    model = str(ROOT / "sample_models" / "digits_frozen.keras")
    installed = subprocess.run([sys.executable, str(script), "layers", model, "--json"], capture_output=True,
                               text=True, cwd=tmp_path, env=env, timeout=300)
    module = subprocess.run([sys.executable, "-m", "tlviz", "layers", model, "--json"], capture_output=True,
                            text=True, cwd=ROOT, timeout=300)
    assert installed.returncode == module.returncode == 1, installed.stderr[-2000:]  # no-trainable-weights: exit 1
    assert json.loads(installed.stdout) == json.loads(module.stdout)
    assert installed.stderr.strip() == ""  # TensorFlow's start-up lines stay off the terminal
