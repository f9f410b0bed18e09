"""Real-size models through every command: wall time and peak memory, each in its own child process.

Run: ``python bench/bench_real.py`` (about half an hour on 2 CPU cores; ``--quick`` for MobileNetV2 only;
``--smoke``: every command on a MobileNetV2 at 96x96 with 24 and 48 JPEGs in a temporary folder, no sample
comparison, exit status 0 whatever the verdicts: a proof that the benchmark still runs).

Builds ``keras.applications`` ResNet50, EfficientNetB0 (built-in rescaling) and MobileNetV2 at 224x224
(``weights=None``, every base layer frozen, a new ``GlobalAveragePooling2D`` + ``Dense(3)`` head) and
generated sets of 180 and 900 JPEGs (256x256, three classes) under ``--data`` (reused when present), then
runs ``python -m tlviz layers | normalize | diagnose | finetune --unfreeze 5 --lr 1e-4 --epochs 2`` on each model,
each command in a fresh child process, and prints its wall time and peak resident memory (the child's
``ru_maxrss``). Diagnose also runs on the 900-image set.

Targets (issue 10), judged in the same run and printed as PASS / FAIL:

- diagnose peak RSS <= 4 GB on every model with 180 images;
- with 900 images, no more than the 180-image peak plus the extra decoded images
  (720 x 224 x 224 x 3 bytes) plus `NOISE_MB` of allocator noise;
- full diagnose wall time <= 1.5x the normalization comparison's wall time (same model and images);
- no command killed, none slower than the baseline commit on the digits sample: the same commands run on
  the sample in a ``git worktree`` of ``--baseline`` (default: the commit before issue 10's work) and in
  this checkout, ``--repeats`` times each, alternating; the ratio of the fastest runs is printed with the
  spread.

Nothing here is a test; the figures go to the "What to expect on a laptop CPU" table of docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "bench"))

from realsize import ARCHS, build_model, make_images  # noqa: E402

#: The last commit before issue 10's changes (the baseline for "no slower on the sample").
DEFAULT_BASELINE = "e3f43bb"
GB = 2**30
NOISE_MB = 64


_WRAPPER = """
import resource, runpy, sys
sys.argv = ["tlviz", *sys.argv[1:]]
code = 0
try:
    runpy.run_module("tlviz", run_name="__main__")
except SystemExit as exc:
    code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
finally:
    print(f"TLVIZ_BENCH_MAXRSS_KB={resource.getrusage(resource.RUSAGE_SELF).ru_maxrss}", file=sys.stderr)
sys.exit(code)
"""


def measure(args: list[str], cwd: Path, timeout: float = 3600) -> dict:
    """Run ``python -m tlviz ARGS`` in `cwd` in a child process: wall time, its own peak RSS, exit status.

    The child runs through a small wrapper that prints its ``ru_maxrss`` on stderr as it exits.
    """
    wrapper = Path(tempfile.gettempdir()) / "tlviz_bench_wrapper.py"
    wrapper.write_text(_WRAPPER)
    cmd = [sys.executable, str(wrapper), *args]
    e = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3", "PYTHONPATH": str(cwd)}
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, cwd=cwd, env=e, capture_output=True, text=True, timeout=timeout)
    wall = time.perf_counter() - t0
    peak = None
    for line in proc.stderr.splitlines()[::-1]:
        if line.startswith("TLVIZ_BENCH_MAXRSS_KB="):
            peak = int(line.split("=", 1)[1]) * 1024
            break
    killed = proc.returncode < 0
    return {"args": args, "rc": proc.returncode, "wall": wall, "peak": peak, "killed": killed,
            "stdout": proc.stdout, "stderr": proc.stderr}


def ops_for(model: Path, images: Path) -> dict[str, list[str]]:
    m, i = str(model), str(images)
    return {
        "layers": ["layers", m, "--json"],
        "normalize": ["normalize", m, i, "--quiet"],
        "diagnose": ["diagnose", m, i, "--json", "--quiet"],
        "finetune top-5": ["finetune", m, i, "--unfreeze", "5", "--lr", "1e-4", "--epochs", "2", "--json",
                           "--quiet"],
    }


def _fmt(r: dict) -> str:
    peak = "   ?   " if r["peak"] is None else f"{r['peak'] / GB:5.2f} GB"
    status = "killed" if r["killed"] else ("ok" if r["rc"] in (0, 1) else f"exit {r['rc']}")
    return f"{r['wall']:8.1f} s  {peak}  {status}"


def real_size(data: Path, archs, report: list, size: int = 224, counts: tuple[int, int] = (180, 900)) -> list[str]:
    verdicts = []
    small, large = counts
    imgs = {n: make_images(data / f"images_{n}", n) for n in counts}
    for arch in archs:
        name = f"{arch.lower()}.keras" if size == 224 else f"{arch.lower()}_{size}.keras"
        model = build_model(arch, data / name, size=size)
        print(f"\n{arch} at {size}x{size} ({model.stat().st_size / 2**20:.0f} MB), {small} images:", flush=True)
        res = {}
        for name, args in ops_for(model, imgs[small]).items():
            res[name] = r = measure(args, ROOT)
            print(f"  {name:16s} {_fmt(r)}", flush=True)
            if r["rc"] not in (0, 1):
                print("    " + "\n    ".join(r["stderr"].strip().splitlines()[-5:]))
        big = measure(ops_for(model, imgs[large])["diagnose"], ROOT)
        res[f"diagnose {large}"] = big
        print(f"  {f'diagnose, {large}':16s} {_fmt(big)}", flush=True)
        report.append({"arch": arch, **{k: {"wall": v["wall"], "peak": v["peak"], "rc": v["rc"]}
                                          for k, v in res.items()}})
        d, n = res["diagnose"], res["normalize"]
        if d["peak"] is not None:
            verdicts.append(_verdict(f"{arch}: diagnose peak {d['peak'] / GB:.2f} GB <= 4 GB", d["peak"] <= 4 * GB))
        if d["peak"] is not None and big["peak"] is not None:
            allowed = d["peak"] + (large - small) * size * size * 3 + NOISE_MB * 2**20
            verdicts.append(_verdict(
                f"{arch}: diagnose peak with {large} images {big['peak'] / GB:.2f} GB <= {small}-image peak + extra "
                f"decoded images + {NOISE_MB} MB = {allowed / GB:.2f} GB", big["peak"] <= allowed))
        verdicts.append(_verdict(f"{arch}: diagnose {d['wall']:.0f} s <= 1.5 x normalize {n['wall']:.0f} s "
                                 f"(ratio {d['wall'] / n['wall']:.2f})", d["wall"] <= 1.5 * n["wall"]))
        verdicts.append(_verdict(f"{arch}: no command killed or failed",
                                 all(r["rc"] in (0, 1) for r in res.values())))
    return verdicts


def sample_vs_baseline(baseline: str, repeats: int) -> list[str]:
    """The digits sample through every command, this checkout against a worktree of `baseline`."""
    verdicts = []
    tmp = Path(tempfile.mkdtemp(prefix="tlviz-baseline-"))
    wt = tmp / "baseline"
    subprocess.run(["git", "worktree", "add", "--detach", str(wt), baseline], cwd=ROOT, check=True,
                   capture_output=True)
    try:
        m = "sample_models/digits_base.keras"
        i = "sample_models/digits_0_4"
        cmds = {
            "layers": ["layers", m, "--json"],
            "normalize": ["normalize", m, i],
            "diagnose": ["diagnose", m, i, "--preset", "tf", "--json"],
            "finetune": ["finetune", m, "sample_models/digits_5_9", "--unfreeze", "0", "--lr", "1e-3", "--epochs", "3",
                         "--json"],
        }
        print(f"\nDigits sample, this checkout vs {baseline} ({repeats} runs each, alternating):")
        for name, args in cmds.items():
            new, old = [], []
            for _ in range(repeats):
                old.append(measure(args, wt)["wall"])
                q = args + (["--quiet"] if name != "layers" else [])
                r = measure(q, ROOT)
                if r["rc"] not in (0, 1):  # an option the new CLI lacks: run it as the baseline did
                    r = measure(args, ROOT)
                new.append(r["wall"])
            ratio = min(new) / min(old)
            print(f"  {name:10s} new fastest {min(new):6.2f} s (median {statistics.median(new):6.2f}, "
                  f"max {max(new):6.2f})   baseline fastest {min(old):6.2f} s (median {statistics.median(old):6.2f},"
                  f" max {max(old):6.2f})   ratio {ratio:.2f}", flush=True)
            verdicts.append(_verdict(f"sample {name}: fastest new / fastest baseline = {ratio:.2f} <= 1.10",
                                     ratio <= 1.10))
    finally:
        subprocess.run(["git", "worktree", "remove", "--force", str(wt)], cwd=ROOT, capture_output=True)
    return verdicts


def _verdict(text: str, ok: bool) -> str:
    return f"{'PASS' if ok else 'FAIL'}  {text}"


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data", default=str(Path(tempfile.gettempdir()) / "tlviz_real"),
                   help="where the models and images are built (reused when present)")
    p.add_argument("--quick", action="store_true", help="MobileNetV2 only")
    p.add_argument("--archs", nargs="*", default=None, help=f"subset of {', '.join(ARCHS)}")
    p.add_argument("--baseline", default=DEFAULT_BASELINE, help="git ref to compare the sample timings with")
    p.add_argument("--repeats", type=int, default=3, help="runs per sample command (default 3)")
    p.add_argument("--no-sample", action="store_true", help="skip the digits-sample comparison")
    p.add_argument("--json", default=None, help="also write the measurements to this file")
    p.add_argument("--smoke", action="store_true",
                   help="MobileNetV2 at 96x96, 24 and 48 JPEGs in a temporary folder, no sample comparison; exit "
                        "status 0 whatever the verdicts")
    a = p.parse_args(argv)
    if a.smoke:
        with tempfile.TemporaryDirectory(prefix="tlviz_bench_smoke_") as tmp:
            report: list = []
            verdicts = real_size(Path(tmp), ["MobileNetV2"], report, size=96, counts=(24, 48))
            print("\nTargets (smoke: sizes too small to judge):")
            print("\n".join("  " + v for v in verdicts))
        return 0
    archs = ["MobileNetV2"] if a.quick else (a.archs or list(ARCHS))
    data = Path(a.data)
    data.mkdir(parents=True, exist_ok=True)
    print(f"CPU cores: {os.cpu_count()}   TLVIZ_MEMORY_MB: {os.environ.get('TLVIZ_MEMORY_MB', 'default')}")
    report = []
    verdicts = real_size(data, archs, report)
    if not a.no_sample:
        verdicts += sample_vs_baseline(a.baseline, a.repeats)
    print("\nTargets:")
    print("\n".join("  " + v for v in verdicts))
    if a.json:
        Path(a.json).write_text(json.dumps(report, indent=2))
    return 0 if all(v.startswith("PASS") for v in verdicts) else 1


if __name__ == "__main__":
    sys.exit(main())
