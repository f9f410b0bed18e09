"""Scoring: TP / FP / FN / TN per check and overall, Wilson intervals, the printed report and its JSON."""

from __future__ import annotations

from dataclasses import dataclass

from bench.truth.models import MODEL_KINDS
from bench.truth.running import Result, scored_checks
from bench.truth.settings import RUN_CHECKS, TARGET_OVERALL, TARGET_PER_CHECK


@dataclass
class Tally:
    tp: int = 0
    fp: int = 0
    fn: int = 0
    tn: int = 0

    def add(self, truth: bool, fired: bool) -> None:
        if truth and fired:
            self.tp += 1
        elif truth:
            self.fn += 1
        elif fired:
            self.fp += 1
        else:
            self.tn += 1

    @property
    def precision(self) -> float | None:
        return self.tp / (self.tp + self.fp) if self.tp + self.fp else None

    @property
    def recall(self) -> float | None:
        return self.tp / (self.tp + self.fn) if self.tp + self.fn else None


INFO_SCORED = ("input-resized", "training-mode-inference")


PROBE_CHECK = "pretraining-no-better-than-random"


def score(results: list[Result], weak_bases_unscored: bool = False) -> dict:
    """Per-check and overall tallies (error + warning checks), and info tallies.

    Args:
        results: the cases run.
        weak_bases_unscored: leave `PROBE_CHECK` unscored on cases whose trained base the reference
            (`Env.reference`) finds no better than random features. Defaults to `False` (the truth by
            construction: a trained base is a negative case).
    """
    scored, info = scored_checks()
    # An info check that raised a finding to a warning somewhere (a measured effect) is scored like a warning.
    raised = set().union(*(r.scored_fired for r in results)) if results else set()
    scored = scored + [c for c in info if c.id in raised]
    info = [c for c in info if c.id not in raised]
    per = {c.id: Tally() for c in scored}
    overall = Tally()
    for r in results:
        fired = r.scored_fired
        for c in scored:
            if not r.case.scores(c.id) or c.id in r.case.allowed or (
                    weak_bases_unscored and r.weak_base and c.id == PROBE_CHECK):
                continue
            truth, got = c.id in r.case.planted, c.id in fired
            per[c.id].add(truth, got)
            overall.add(truth, got)
    info_tally = {i: Tally() for i in INFO_SCORED}
    info_counts = {c.id: 0 for c in info if c.id not in INFO_SCORED}
    for r in results:
        if r.case.run is not None:  # a fine-tuning case runs the run-judging checks only
            continue
        for i in INFO_SCORED:
            info_tally[i].add(bool(r.info_truth.get(i)), i in r.fired)
        for i in info_counts:
            info_counts[i] += i in r.fired
    return {"per_check": per, "overall": overall, "info": info_tally, "info_counts": info_counts,
            "severity": {c.id: c.severity for c in scored}}


def _fmt(v: float | None) -> str:
    return "  n/a" if v is None else f"{v:5.2f}"


def _interval(k: int, n: int) -> str:
    from tlviz.stats import wilson_interval

    if not n:
        return ""
    lo, hi = wilson_interval(k, n)
    return f"[{lo:.2f}, {hi:.2f}]"


def report(results: list[Result], envs: dict, seconds: float) -> dict:
    """Print the tables and the targets; return the targets as booleans."""
    s = score(results)
    per, overall = s["per_check"], s["overall"]
    n_clean = sum(r.case.clean for r in results)
    print()
    print(f"Planted-fault matrix: {len(results)} cases ({n_clean} clean controls) over "
          f"{len({r.case.family for r in results})} model families, {len(per)} error/warning checks scored; "
          f"{seconds / 60:.1f} min")
    print("Data: scikit-learn digits, 32x32 RGB: `digits` (source task 0-9, target task 5-9) and `sample` (the "
          "committed sample's: source 0-4, its own held-out 20 %, target 5-9); scikit-image is not installed, so "
          "no textures.")
    for name, env in envs.items():
        facts = ", ".join(f"{k} {v['held_out_accuracy']:.1%}" for k, v in env.facts.items() if k in MODEL_KINDS)
        print(f"  {name} (data `{env.family.data}`, trained with `{env.family.preset}`): held-out accuracy {facts}")
        ref = env.reference()
        print("    reference probe (logistic regression on the whole train split), trained base vs random weights: "
              + "; ".join(f"{task} {v['trained']:.1%} vs {v['random']:.1%}" for task, v in ref.items()))
    print()
    head = f"{'check':36s} {'severity':8s} {'TP':>4s} {'FP':>4s} {'FN':>4s} {'TN':>4s} {'precision':>9s} {'recall':>7s}"
    print(head)
    print("-" * len(head))
    check_ok = True
    for cid, t in per.items():
        ok = all(v is None or v >= TARGET_PER_CHECK for v in (t.precision, t.recall)) and t.tp + t.fn > 0
        check_ok &= ok
        print(f"{cid:36s} {s['severity'][cid]:8s} {t.tp:4d} {t.fp:4d} {t.fn:4d} {t.tn:4d} {_fmt(t.precision):>9s} "
              f"{_fmt(t.recall):>7s}{'' if ok else '   < 0.9'}")
    print("-" * len(head))
    print(f"{'overall (error + warning)':45s} {overall.tp:4d} {overall.fp:4d} {overall.fn:4d} {overall.tn:4d} "
          f"{_fmt(overall.precision):>9s} {_fmt(overall.recall):>7s}")
    print(f"  precision 95 % interval {_interval(overall.tp, overall.tp + overall.fp)}, "
          f"recall 95 % interval {_interval(overall.tp, overall.tp + overall.fn)}")
    n_runs = sum(r.case.run is not None for r in results)
    if n_runs:
        print(f"  {', '.join(RUN_CHECKS)}: scored on the {n_runs} fine-tuning cases only (it judges runs, not a file); "
              "every other check on the model-file cases only")
    print()
    n_files = sum(r.case.run is None for r in results)
    print("Info findings (not in the overall figures):")
    for cid, t in s["info"].items():
        print(f"  {cid:34s} TP {t.tp:3d}  FP {t.fp:3d}  FN {t.fn:3d}  TN {t.tn:3d}  precision {_fmt(t.precision)}"
              f"  recall {_fmt(t.recall)}")
    for cid, n in s["info_counts"].items():
        print(f"  {cid:34s} fired on {n} of {n_files} model-file cases (a measurement, not a plant: not scored)")
    print()
    clean_bad = [(r, sorted(r.scored_fired)) for r in results if r.case.clean and r.scored_fired]
    print(f"Clean controls with an error or warning: {len(clean_bad)} of {n_clean}")
    for r, got in clean_bad:
        for cid in got:
            print(f"  {r.case.label}: {cid} — {r.fired[cid][1]}")
    misses = [(r, c) for r in results for c in sorted(r.missed)]
    alarms = [(r, c) for r in results if not r.case.clean for c in sorted(r.false_alarms)]
    print(f"Misses (planted, not reported): {len(misses)}")
    for r, c in misses:
        why = r.error or r.skipped.get(c, "ran, no finding")
        print(f"  {r.case.label}: {c} — {why[:160]}")
    print(f"False alarms on fault cases (neither planted nor an allowed consequence): {len(alarms)}")
    for r, c in alarms:
        print(f"  {r.case.label}: {c} — {r.fired[c][1][:160]}")
    allowed_fired = [(r, c) for r in results for c in sorted(r.scored_fired & set(r.case.allowed))]
    if allowed_fired:
        print("Allowed consequences that fired (not scored): "
              + ", ".join(f"{r.case.label}: {c}" for r, c in allowed_fired))
    if any(r.weak_base for r in results):
        w = score(results, weak_bases_unscored=True)
        t, o = w["per_check"][PROBE_CHECK], w["overall"]
        n_weak = sum(r.weak_base for r in results)
        print(f"Where the reference finds the trained base no better than random features ({n_weak} cases), "
              f"the claim of {PROBE_CHECK} is arguably true. Leaving it unscored there: {PROBE_CHECK} precision "
              f"{_fmt(t.precision).strip()}, recall {_fmt(t.recall).strip()}; overall precision "
              f"{_fmt(o.precision).strip()}, recall {_fmt(o.recall).strip()} (the targets below use the main figures).")
    print()
    targets = {
        f"overall recall >= {TARGET_OVERALL}": overall.recall is not None and overall.recall >= TARGET_OVERALL,
        f"overall precision >= {TARGET_OVERALL}": overall.precision is not None
        and overall.precision >= TARGET_OVERALL,
        f"no check below {TARGET_PER_CHECK} on precision or recall": check_ok,
        "clean controls: zero errors or warnings": not clean_bad,
    }
    print("Targets (issue 13):")
    for what, ok in targets.items():
        print(f"  {'MET    ' if ok else 'NOT MET'}  {what}")
    return targets


def to_json(results: list[Result], targets: dict) -> dict:
    return {"targets": targets, "cases": [
        {"case": r.case.label, "planted": sorted(r.case.planted), "allowed": sorted(r.case.allowed),
         "clean": r.case.clean, "fired": {k: list(v) for k, v in r.fired.items()}, "skipped": r.skipped,
         "missed": sorted(r.missed), "false_alarms": sorted(r.false_alarms), "info_truth": r.info_truth,
         "seconds": round(r.seconds, 2), "error": r.error, "weak_base": r.weak_base, "detail": r.detail}
        for r in results]}
