"""Benchmarks that cannot rot: every script in ``bench/`` runs its ``--smoke`` mode here.

A smoke run takes the benchmark's own code path at tiny sizes (one repeat, a few images, small inputs) and
prints the same result lines, ratios against its baseline included; its figures mean little. Each runs in a
child process from the repository root, as a person would run it; the test asserts exit status 0 and that
the lines a reader looks for are printed, so a benchmark that no longer runs (an import that moved, an
option that went away, a result that changed shape) fails the suite.

The slow ones (each over about 30 seconds on two shared cores) are marked ``slow``; the ones that drive the
served app in Chromium are marked ``browser`` and skip without ``/usr/bin/chromium``; the Ray one skips
without ``ray``.
"""

from __future__ import annotations

import importlib.util
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
CHROMIUM = Path("/usr/bin/chromium")
NUMBER = r"[-+]?[\d.]+"

browser = [pytest.mark.browser, pytest.mark.slow,
           pytest.mark.skipif(not CHROMIUM.exists(), reason=f"{CHROMIUM} not found")]
ray = [pytest.mark.slow, pytest.mark.skipif(importlib.util.find_spec("ray") is None, reason="ray is not installed")]

#: (command after ``python``, patterns the output must hold (each at least once), marks)
SMOKES = {
    "truth": (["-m", "bench.truth"], [
        r"^  clean/trained ", r"^  weights-not-finite ",
        rf"^overall \(error \+ warning\)\s+\d+\s+\d+\s+\d+\s+\d+\s+{NUMBER}", r"^Targets \(issue 13\):"], []),
    "diagnose": (["bench/bench_diagnose.py"], [
        rf"^baseline normalize\.analyze:\s+{NUMBER} s",
        rf"^diagnose \(all \d+ checks\):\s+{NUMBER} s\s+= {NUMBER}x the baseline",
        r"^for_preset\('unit'\) instead of rerun: .* faster"], []),
    "new_checks": (["bench/bench_new_checks.py"], [
        rf"ratio all / baseline \(fastest\): {NUMBER}", rf"ratio all / unshared \(fastest\): {NUMBER}",
        r"seconds per new check", r"Grad-CAM, 12 images"], []),
    "normalize": (["bench/bench_normalize.py"], [
        r"=== case 1 \(compute-bound\)", r"=== case 2 \(decode-bound\)",
        rf"ratio tlviz / compute bound:\s+{NUMBER}x", rf"speed-up vs baseline:\s+{NUMBER}x",
        r"best preset: "], []),
    "finetune": (["bench/bench_finetune.py"], [
        rf"^head only, 1 epochs\s+plain\s+{NUMBER} s\s+ours\s+{NUMBER} s\s+{NUMBER}x",
        rf"^sweep of 2 learning rates, head only\s+plain\s+{NUMBER} s\s+ours\s+{NUMBER} s\s+{NUMBER}x",
        rf"^top quarter unfrozen \(depth \d+\), 1 epochs\s+plain", rf"^RSS after run 1: .* growth {NUMBER} %"],
        [pytest.mark.slow]),
    "finetune_extras": (["bench/bench_finetune_extras.py"], [
        rf"^head only: plain {NUMBER} s .* ratio {NUMBER}", r"^  retention: ", r"^  random-init control: "], []),
    "legacy": (["bench/bench_legacy.py"], [
        rf"^mobilenet\s+\d+\s+{NUMBER}/{NUMBER}/{NUMBER}\s+{NUMBER}/{NUMBER}/{NUMBER}\s+{NUMBER}",
        r"target: ratio <= 2\.0, \|diff\| <= 1e-5\) (PASS|FAIL)"], [pytest.mark.slow]),
    "repair": (["bench/bench_repair.py"], [
        rf"baseline \(one inference pass, tf\): {NUMBER} s",
        rf"^normalization-mismatch\s+{NUMBER}%\s+{NUMBER}%\s+\d+\s+\d+\s+{NUMBER}\s+{NUMBER}",
        rf"^label-order-mismatch\s+{NUMBER}%", rf"^bn-statistics-mismatch\s+{NUMBER}%"], [pytest.mark.slow]),
    "real": (["bench/bench_real.py"], [
        r"^  layers\s+.* ok$", r"^  normalize\s+.* ok$", r"^  diagnose\s+.* ok$", r"^  finetune top-5\s+.* ok$",
        r"^  diagnose, 48\s+.* ok$", rf"diagnose {NUMBER} s <= 1\.5 x normalize {NUMBER} s \(ratio {NUMBER}\)",
        r"^  PASS  MobileNetV2: no command killed or failed"], [pytest.mark.slow]),
    "realsize": (["bench/realsize.py"], [
        r"^built ResNet50 at 64x64", r"^built EfficientNetB0 at 64x64", r"^built MobileNetV2 at 64x64",
        r"^wrote 12 JPEGs"], []),
    "try": (["bench/bench_try.py"], [
        r"^baseline, plain prediction x2: median", rf"^first photo \(cold explainer\): .* = {NUMBER}x baseline",
        rf"^next photos \(warm\): .* = {NUMBER}x baseline", r"^target: every warm answer within 2 s"], []),
    "ray": (["bench/bench_ray.py"], [
        rf"^repeat 1: local\s+{NUMBER} s\s+Ray\s+{NUMBER} s\s+ratio {NUMBER}x",
        rf"^Ray / local: median {NUMBER}x"], ray),
    "memory": (["bench/bench_memory.py"], [
        rf"^run  2: server RSS {NUMBER} MB", rf"^RSS after run 1: .* ratio {NUMBER} \(growth {NUMBER} %"], browser),
    "app": (["bench/bench_app.py"], [
        rf"^RESULT 1: loaded/idle median ratio {NUMBER}x", rf"ratio of medians {NUMBER}x",
        r"^RESULT 2: (PASS|FAIL)", r"^1\. many users at once: (PASS|FAIL)"], browser),
    "team": (["bench/bench_team.py"], [
        rf"^idle page switch \(\d+ sessions open\): median\s+{NUMBER} s",
        rf"^loaded page switch \(\d+ runs queued or running\): median\s+{NUMBER} s",
        rf"^RESULT: loaded/idle median ratio {NUMBER}x .*: (PASS|FAIL)",
        rf"^memory: server RSS {NUMBER} MB before any session, .* \({NUMBER} MB per session over all",
        rf"^memory: largest worker process \(one job\) {NUMBER} MB", rf"^cpu: server {NUMBER} s per page switch",
        rf"^sizing: server {NUMBER} MB \+ {NUMBER} MB per open session; each running job: {NUMBER} MB; "
        r".*TLVIZ_MAX_JOBS=\d+"], browser),
}

#: Longest a smoke may take here before it counts as broken (the app's takes about 3 minutes on 2 busy cores).
TIMEOUT_S = 600


def test_every_bench_script_has_a_smoke_case():
    scripts = {p.stem.removeprefix("bench_") for p in (ROOT / "bench").glob("*.py")}
    packages = {p.parent.name for p in (ROOT / "bench").glob("*/__main__.py")}
    assert scripts | packages == set(SMOKES), "a script in bench/ without a smoke case here (or the reverse)"


@pytest.mark.parametrize("name", [pytest.param(name, marks=marks) for name, (_, _, marks) in SMOKES.items()])
def test_smoke(name, tmp_path):
    command, patterns, _ = SMOKES[name]
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3", "TLVIZ_RUNS_DIR": str(tmp_path / "runs")}
    proc = subprocess.run([sys.executable, *command, "--smoke"], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=TIMEOUT_S)
    tail = f"\n--- stdout ---\n{proc.stdout[-3000:]}\n--- stderr ---\n{proc.stderr[-3000:]}"
    assert proc.returncode == 0, f"`python {' '.join(command)} --smoke` exited {proc.returncode}{tail}"
    missing = [p for p in patterns if not re.search(p, proc.stdout, re.MULTILINE)]
    assert not missing, f"`python {' '.join(command)} --smoke` printed none of {missing}{tail}"
