"""What issue 14's five checks add to a diagnosis, at real size.

Run: ``python bench/bench_new_checks.py [OUT_DIR] [N_IMAGES] [REPEATS]`` (defaults ``/tmp/tlviz_real``, 180,
2). Builds (once, `bench/realsize.py`) a ``weights=None`` MobileNetV2 at 224x224 under a new head and
`N_IMAGES` generated JPEGs in three classes, then, in this process and in alternating order:

- the baseline: ``diagnose`` with every check except the five new ones;
- ``diagnose`` with every check;
- ``diagnose`` with every check, likely-mislabelled's features not kept by the preset comparison
  (``TAP_MB = 0``: its own pass over the images outside the pre-training probe's sample, as before
  the comparison kept them).

Prints the fastest and the spread of each over `REPEATS` runs, their ratio, the seconds of each new
check in the fastest full run, and Grad-CAM's cost for a gallery page (12 images).

``--smoke``: the same steps on a MobileNetV2 at 96x96 with 24 JPEGs in a temporary folder, one repeat: a
few seconds' proof that the benchmark still runs (its ratios mean little).
"""

from __future__ import annotations

import os
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import realsize  # noqa: E402

from tlviz import gradcam  # noqa: E402
from tlviz.diagnose import context  # noqa: E402
from tlviz.diagnose import CHECK_IDS, diagnose  # noqa: E402
from tlviz.imagesets import open_source  # noqa: E402
from tlviz.models import load_model  # noqa: E402

NEW = ("prediction-collapse", "output-loss-mismatch", "exif-orientation", "duplicate-images", "likely-mislabelled")


def main(argv: list[str]) -> int:
    import argparse

    parser = argparse.ArgumentParser(description="diagnose with and without issue 14's checks, at real size")
    parser.add_argument("out", nargs="?", default="/tmp/tlviz_real", help="where the model and images are built")
    parser.add_argument("n_images", nargs="?", type=int, default=180, help="generated JPEGs (default 180)")
    parser.add_argument("repeats", nargs="?", type=int, default=2, help="runs of each (default 2)")
    parser.add_argument("--size", type=int, default=224, help="the model's input size (default 224)")
    parser.add_argument("--smoke", action="store_true",
                        help="96x96, 24 JPEGs in a temporary folder, one repeat: proves the benchmark runs")
    args = parser.parse_args(argv)
    if args.smoke:
        with tempfile.TemporaryDirectory(prefix="tlviz_bench_smoke_") as tmp:
            return run(Path(tmp), 24, 1, 96)
    return run(Path(args.out), args.n_images, args.repeats, args.size)


def run(out: Path, n: int, repeats: int, size: int) -> int:
    """Build (once) the model and `n` JPEGs under `out`, then time and print as the module says."""
    name = "mobilenetv2.keras" if size == 224 else f"mobilenetv2_{size}.keras"
    model_path = realsize.build_model("MobileNetV2", out / name, size=size)
    folder = realsize.make_images(out / f"images_{n}", n)
    loaded = load_model(model_path)
    source = open_source(folder)
    images = source.load(loaded.image_size, loaded.channels)
    old = [c for c in CHECK_IDS if c not in NEW]
    diagnose(loaded, images, "tf", source=source, checks=old)  # warm-up: traces the forward passes

    times = {"baseline": [], "all": [], "unshared": []}
    reports = {}
    shared_mb = context.TAP_MB
    for _ in range(repeats):
        for name, checks in (("baseline", old), ("all", None), ("unshared", None)):
            context.TAP_MB = 0 if name == "unshared" else shared_mb
            t0 = time.perf_counter()
            reports[name] = diagnose(loaded, images, "tf", source=source, checks=checks)
            times[name].append(time.perf_counter() - t0)
    context.TAP_MB = shared_mb
    base, full, unshared = min(times["baseline"]), min(times["all"]), min(times["unshared"])
    print(f"model: {loaded.name} at {loaded.image_size[0]}x{loaded.image_size[1]}  images: {len(images)}  "
          f"CPU threads: {os.cpu_count()}  repeats: {repeats}")
    for name in times:
        t = times[name]
        print(f"  {name:9s} fastest {min(t):7.2f} s   spread {min(t):.2f}-{max(t):.2f} s")
    print(f"  ratio all / baseline (fastest): {full / base:.3f}  (+{full - base:.2f} s)")
    print(f"  ratio all / unshared (fastest): {full / unshared:.3f}  ({unshared - full:+.2f} s saved by keeping "
          "likely-mislabelled's features during the preset comparison)")
    print("  likely-mislabelled seconds, shared / unshared (last runs): "
          f"{reports['all'].seconds.get('likely-mislabelled', 0):.2f} / "
          f"{reports['unshared'].seconds.get('likely-mislabelled', 0):.2f}")
    report = reports["all"]
    print("  seconds per new check (last full run): "
          + ", ".join(f"{c} {report.seconds.get(c, 0):.2f}" for c in NEW))
    print(f"  findings: {[f.id for f in report.findings]}")
    print(f"  skipped: {[(s.id, s.reason[:90]) for s in report.skipped]}")
    t0 = time.perf_counter()
    g = gradcam.explain(loaded, images, [(i, "tf") for i in range(12)])
    print(f"  Grad-CAM, 12 images at '{g.layer}' {g.shape}: {time.perf_counter() - t0:.2f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
