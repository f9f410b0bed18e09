"""``catastrophic-forgetting``: a fine-tuning run rebuilt the base's representation and gained nothing for it.

This check judges fine-tuning runs, not the model file: every run stores its representation
drift (linear CKA per block of the base, before vs after, on the user's images:
`tlviz.finetune.drift`) and its validation predictions, and a run can have controls
(`tlviz.finetune.controls`: the same configuration from random weights, or with the base
frozen). A run is judged (`verdict`):

- **moved far**: some block that trained (an *unfrozen* block) has CKA below the ``cka``
  threshold; a run whose base stayed frozen, or stayed close, cannot have forgotten;
- **no gain**: its validation accuracy does not clearly beat (95 % paired interval above 0,
  same validation images) its head-only or its random-init control.

Both: the finding, with the CKA of every unfrozen block, each control's accuracy and the
interval of the difference. Moved far without a finished control: it cannot decide, and says
which control to run. The Fine-tuning page shows the verdict with each run; the Diagnose
report includes it when runs of the current model on the current images exist
(`tlviz.diagnose.forgetting.with_runs`, which gives this check its registry entry), and skips
it with a sentence otherwise (the stored diagnosis of a model file has no runs).

How a check is written (its registry entry, ``check.finding``, ``check.threshold``,
`CheckSkipped`): see `tlviz.diagnose.base.Check`.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from tlviz.diagnose.base import Check
from tlviz.errors import CheckSkipped
from tlviz.findings import Finding

CHECK_ID = "catastrophic-forgetting"
#: What the check says when it has no run to judge.
NO_RUNS = ("This check judges fine-tuning runs: the representation drift a run measured (linear CKA per block) and "
           "its head-only or random-init control. No finished run of this model on these images was found; start "
           "one on the Fine-tuning page (with a control) and the verdict appears there and here.")


@dataclass
class Judgement:
    """The verdict on one run.

    Attributes:
        run_id: the run.
        fires: True (forgetting), False (no forgetting), None (cannot decide).
        reason: one sentence on why (the finding's title when it fires).
        finding: the finding when it fires, else None.
        lowest_cka: the lowest CKA of an unfrozen block (None: no unfrozen block measured).
    """

    run_id: str
    fires: bool | None
    reason: str
    finding: Finding | None = None
    lowest_cka: float | None = None


def _fix(run) -> str:
    cfg = run.run_config
    lr = getattr(cfg, "lr", None)
    lower = f"{lr / 10:.0e}" if lr else "10 times lower"
    return ("The run changed what the pre-trained base computes without buying accuracy for it: fine-tuning erased "
            "features the head could have used. Unfreeze fewer layers (only the top block, or the head alone), lower "
            f"the learning rate (try {lower}; the learning-rate finder suggests one), or train in two phases — the "
            "new head first with the base frozen, then unfreeze at a low rate (the 'Train the new head first' option):\n"
            "```python\nbase.trainable = False\nmodel.compile(optimizer=keras.optimizers.Adam(1e-3), loss=loss)\n"
            "model.fit(train, epochs=5)                     # phase 1: the head alone\n"
            "for layer in base.layers[-20:]:                # phase 2: the top of the base only\n"
            "    if not isinstance(layer, keras.layers.BatchNormalization):\n        layer.trainable = True\n"
            "model.compile(optimizer=keras.optimizers.Adam(1e-5), loss=loss)  # recompile after unfreezing\n"
            "model.fit(train, epochs=5)\n```")


def verdict(run, controls: list, check: Check) -> Judgement:
    """Judge one run against its controls.

    Args:
        run: the run's `tlviz.finetune.RunRecord` (finished, with its drift stored).
        controls: its controls' `RunRecord`s (`tlviz.finetune.controls.controls_of`).
        check: the ``catastrophic-forgetting`` registry entry.

    Returns:
        A `Judgement`.
    """
    from tlviz.finetune.controls import compare

    threshold = check.threshold("cka")
    out = run.outcome
    if out.empty or not out.drift:
        return Judgement(run.run_id, None, f"Run {run.run_id} has no representation drift stored (it "
                                           f"{run.state} before measuring it, or ran with an older tlviz).")
    unfrozen = [d for d in out.drift if d.get("trained")]
    if not unfrozen:
        return Judgement(run.run_id, False, f"Run {run.run_id} kept the whole base frozen: its representation cannot "
                                            "have moved (CKA 1.0 in every block).")
    measured = [d for d in unfrozen if d.get("cka") is not None]
    if not measured:
        return Judgement(run.run_id, None, f"Run {run.run_id}: the drift of its unfrozen blocks could not be measured "
                                           "(features without variance or not finite, as after a diverged run).")
    lowest = min(measured, key=lambda d: d["cka"])
    far = [d for d in measured if d["cka"] < threshold]
    if not far:
        return Judgement(run.run_id, False, f"Run {run.run_id} stayed close to the pre-trained representation: the "
                                            f"lowest CKA of an unfrozen block is {lowest['cka']:.2f} ({lowest['block']}), "
                                            f"above {threshold:g}.", lowest_cka=lowest["cka"])
    comparisons = [compare(run, c) for c in controls]
    usable = [c for c in comparisons if c.difference is not None]
    if not usable:
        waiting = "; ".join(c.sentence() for c in comparisons)
        return Judgement(run.run_id, None, (
            f"Run {run.run_id} moved the base far (CKA {lowest['cka']:.2f} in {lowest['block']}, below {threshold:g}), "
            "but whether that cost anything needs a control: run its random-init or head-only control (one click "
            "on the Fine-tuning page, or `--control` on the command line)." + (f" {waiting}" if waiting else "")),
            lowest_cka=lowest["cka"])
    beaten = [c for c in usable if not c.clearly_better]
    if not beaten:
        return Judgement(run.run_id, False, (
            f"Run {run.run_id} moved the base far (CKA {lowest['cka']:.2f} in {lowest['block']}) and it paid off: "
            + " ".join(c.sentence() for c in usable)), lowest_cka=lowest["cka"])
    worst = beaten[0]
    from tlviz.finetune.config import CONTROL_LABELS

    title = (f"Catastrophic forgetting: run {run.run_id} rebuilt the base (CKA {lowest['cka']:.2f} in "
             f"{lowest['block']}) and does not clearly beat its {CONTROL_LABELS[worst.kind]} "
             f"({_pct(worst.run_accuracy)} vs {_pct(worst.control_accuracy)})")
    evidence = {
        "run_id": run.run_id, "run": run.describe(), "val_accuracy": out.val_accuracy,
        "cka_per_unfrozen_block": {d["block"]: d["cka"] for d in unfrozen},
        "blocks_below_threshold": [d["block"] for d in far], "cka_threshold": threshold,
        "drift_images": out.metrics.get("drift_images"),
        "controls": [{k: v for k, v in c.to_dict().items() if k not in ("sentence", "state")} for c in comparisons],
    }
    finding = check.finding(title, evidence, " ".join(c.sentence() for c in usable) + " " + _fix(run))
    return Judgement(run.run_id, True, title, finding, lowest["cka"])


def _pct(v) -> str:
    return "?" if v is None else f"{float(v):.1%}"


def verdicts(records, check: Check) -> tuple[list[Finding], list[Judgement]]:
    """Judge every ordinary run among `records` (a model's runs on one image set, controls included).

    Args:
        records: `tlviz.finetune.RunRecord`s.
        check: the ``catastrophic-forgetting`` registry entry.

    Returns:
        ``(findings, judgements)``: at most one finding (the newest run that forgot; the other
        runs that did are named in its evidence), and the verdict on every run judged.

    Raises:
        CheckSkipped: no run could be judged, or none fires and some cannot be decided (the
            sentence names the run and the control to run).
    """
    from tlviz.finetune.controls import controls_of

    runs = sorted((r for r in records if r.control is None and not r.active and not r.outcome.empty),
                  key=lambda r: r.created, reverse=True)
    if not runs:
        raise CheckSkipped(NO_RUNS)
    judged = [verdict(r, controls_of(r.run_id, records), check) for r in runs]
    fired = [j for j in judged if j.fires]
    if fired:
        finding = fired[0].finding
        if len(fired) > 1:
            finding = replace(finding, evidence={**finding.evidence, "other_runs": [j.run_id for j in fired[1:]]})
        return [finding], judged
    moved_undecided = [j for j in judged if j.fires is None and j.lowest_cka is not None]
    if moved_undecided:  # a run moved far and has no control yet: say which control to run
        raise CheckSkipped(moved_undecided[0].reason)
    if not any(j.fires is False for j in judged):
        raise CheckSkipped(judged[0].reason)
    return [], judged


def check_catastrophic_forgetting(ctx, check: Check) -> list[Finding]:
    """``catastrophic-forgetting``: judge the runs given with the diagnosis (``ctx.finetune_runs``).

    The diagnosis of a model file (the stored, shared one) has no runs: it skips with `NO_RUNS`;
    `tlviz.diagnose.forgetting.with_runs` judges a workspace's runs of the same model and images into a report.
    """
    runs = getattr(ctx, "finetune_runs", None)
    if not runs:
        raise CheckSkipped(NO_RUNS)
    return verdicts(runs, check)[0]
