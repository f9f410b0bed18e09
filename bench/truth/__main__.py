"""The command line: ``python -m bench.truth`` (``--quick``, ``--family``, ``--case``, ``--cache``, ``--json``;
``--smoke``: `SMOKE_CASES` of the CNN family trained for one epoch in a fresh temporary cache, a few seconds'
proof that the matrix still runs end to end, its figures meaningless)."""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from dataclasses import replace
from pathlib import Path

from bench.truth.case_table import cases
from bench.truth.families import FAMILIES, QUICK_FAMILIES
from bench.truth.models import Env
from bench.truth.running import run_case
from bench.truth.scoring import report, to_json
from bench.truth.settings import DEFAULT_CACHE


#: The cases a smoke run diagnoses: a clean control and one plant, both on the trained model only.
SMOKE_CASES = ("clean/trained", "weights-not-finite")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Precision and recall of tlviz's diagnose over planted faults.")
    parser.add_argument("--quick", action="store_true", help=f"only the {', '.join(QUICK_FAMILIES)} family")
    parser.add_argument("--family", action="append", choices=sorted(FAMILIES), help="run this family (repeatable)")
    parser.add_argument("--case", action="append", help="run cases whose name contains this text (repeatable)")
    parser.add_argument("--cache", type=Path, default=DEFAULT_CACHE, help=f"trained models (default {DEFAULT_CACHE})")
    parser.add_argument("--json", type=Path, help="write every case's findings here")
    parser.add_argument("--smoke", action="store_true",
                        help="a few seconds: two CNN cases, one epoch of training, a fresh temporary cache")
    args = parser.parse_args(argv)
    if args.smoke:
        with tempfile.TemporaryDirectory(prefix="tlviz_truth_smoke_") as cache:
            args.family, args.case, args.cache = ["cnn"], list(SMOKE_CASES), Path(cache)
            return _run(args, epochs=1)
    return _run(args)


def _run(args, epochs: int | None = None) -> int:

    import tensorflow as tf

    tf.get_logger().setLevel("ERROR")
    families = args.family or (list(QUICK_FAMILIES) if args.quick else list(FAMILIES))
    t0 = time.perf_counter()
    envs, results = {}, []
    for fam in families:
        family = FAMILIES[fam] if epochs is None else replace(FAMILIES[fam], epochs=epochs)
        env = envs[fam] = Env(family, args.cache)
        print(f"{fam}:")
        for case in cases([fam], args.case):
            r = run_case(case, env)
            r.weak_base = not case.random_base and env.base_no_better_than_random(r.task or case.task)
            results.append(r)
            marks = ([f"MISSED {sorted(r.missed)}"] if r.missed else []) + (
                [f"FALSE ALARM {sorted(r.false_alarms)}"] if r.false_alarms else [])
            print(f"  {case.name:32s} {r.seconds:5.1f} s  fired {sorted(r.scored_fired) or '-'}  "
                  f"{'; '.join(marks) or 'ok'}" + (f"\n      {r.detail}" if r.detail else ""))
    targets = report(results, envs, time.perf_counter() - t0)
    if args.json:
        args.json.write_text(json.dumps(to_json(results, targets), indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
