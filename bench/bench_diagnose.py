"""How much does a full diagnosis cost on top of the normalization comparison it contains?

Run: ``python bench/bench_diagnose.py [--repeat 3]`` (sample model + digits_0_4; ``--smoke``: one
repeat, no separate warm-up, a few seconds' proof that it still runs). Prints, measured in this
process: the baseline (``normalize.analyze`` with resize variants), a full ``diagnose``, the
ratio between them, the cost of each check, and how much cheaper re-judging another inference
preset (``DiagnosisReport.for_preset``, what the page does when the select box changes) is than
running the diagnosis again.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tlviz import normalize  # noqa: E402
from tlviz.diagnose import diagnose  # noqa: E402
from tlviz.imagesets import open_source  # noqa: E402
from tlviz.models import load_model  # noqa: E402
from tlviz.samples import sample_path  # noqa: E402


def best_of(fn, repeat: int = 3) -> float:
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return min(times)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=3, help="runs of each; the fastest counts (default 3)")
    parser.add_argument("--smoke", action="store_true",
                        help="one repeat and no warm-up: proves the benchmark runs (its ratios mean little)")
    args = parser.parse_args(argv)
    repeat = 1 if args.smoke else max(args.repeat, 1)
    loaded = load_model(sample_path("digits_base.keras"))
    source = open_source(sample_path("digits_0_4"))
    images = source.load(loaded.image_size, loaded.channels)
    if not args.smoke:
        diagnose(loaded, images, "tf", source=source)  # warm-up (traces the predict functions)

    t_norm = best_of(lambda: normalize.analyze(loaded, images, source=source), repeat)
    reports = []
    t_diag = best_of(lambda: reports.append(diagnose(loaded, images, "tf", source=source)), repeat)
    report = reports[-1]
    t_rejudge = best_of(lambda: report.for_preset("unit"), repeat=2 if args.smoke else 20)

    print(f"images: {len(images)}  model: {loaded.name}  CPU threads: {os.cpu_count()}")
    print(f"baseline normalize.analyze:          {t_norm:7.3f} s")
    print(f"diagnose (all {len(report.checks_run) + len(report.skipped)} checks):             {t_diag:7.3f} s"
          f"   = {t_diag / t_norm:.2f}x the baseline")
    print(f"for_preset('unit') instead of rerun: {t_rejudge * 1000:7.2f} ms  = {t_diag / t_rejudge:,.0f}x faster")
    print("seconds per check (the normalization comparison is paid by the first check that needs it):")
    for cid, sec in sorted(report.seconds.items(), key=lambda kv: -kv[1]):
        if cid != "total" and sec >= 0.005:
            print(f"  {cid:36s} {sec:6.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
