"""Judging fine-tuning runs for ``catastrophic-forgetting``, with the check's registry entry.

The check itself (what a run's verdict rests on) is `tlviz.diagnose.runverdict`, which the
registry imports; this module, above the registry and the report, gives it its entry and puts
its verdict into a `DiagnosisReport`:

- `judge_run(run, controls)` and `judge_runs(records)`: the verdict on one run, and on a model's
  runs on one image set;
- `with_runs(report, records)` and `with_cli_runs(report, loaded, images, root)`: a report with the
  check judged on those runs; `runs_for(model_sha256, image_key, owner, root)`: the runs to judge.
"""

from __future__ import annotations

from dataclasses import replace

from tlviz.diagnose.base import Check, SkippedCheck, in_report_order
from tlviz.diagnose.runverdict import CHECK_ID, NO_RUNS, Judgement, verdict, verdicts
from tlviz.errors import CheckSkipped
from tlviz.findings import Finding

__all__ = ["CHECK_ID", "NO_RUNS", "Judgement", "judge_run", "judge_runs", "runs_for", "with_cli_runs", "with_runs"]


def _entry() -> Check:
    from tlviz.diagnose.registry import CHECKS_BY_ID

    return CHECKS_BY_ID[CHECK_ID]


def judge_run(run, controls: list, check: Check | None = None) -> Judgement:
    """Judge one run against its controls (`tlviz.diagnose.runverdict.verdict`).

    Args:
        run: the run's `tlviz.finetune.RunRecord` (finished, with its drift stored).
        controls: its controls' `RunRecord`s (`tlviz.finetune.controls.controls_of`).
        check: the registry entry. Defaults to the ``catastrophic-forgetting`` entry.

    Returns:
        A `Judgement`.
    """
    return verdict(run, controls, check or _entry())


def judge_runs(records, check: Check | None = None) -> tuple[list[Finding], list[Judgement]]:
    """Judge every ordinary run among `records` (`tlviz.diagnose.runverdict.verdicts`).

    Args:
        records: `tlviz.finetune.RunRecord`s of one model on one image set, controls included.
        check: the registry entry. Defaults to the ``catastrophic-forgetting`` entry.

    Returns:
        ``(findings, judgements)``: at most one finding (the newest run that forgot; the other
        runs that did are named in its evidence), and the verdict on every run judged.

    Raises:
        CheckSkipped: no run could be judged, or none fires and some cannot be decided (the
            sentence names the run and the control to run); `NO_RUNS` when there is none.
    """
    return verdicts(records, check or _entry())


class _RunsContext:
    """The little a run-judging check needs of a `DiagnosisContext`: the runs."""

    def __init__(self, runs):
        self.finetune_runs = list(runs)


def with_runs(report, records):
    """A copy of a `DiagnosisReport` with ``catastrophic-forgetting`` judged on `records`.

    Args:
        report: the `tlviz.diagnose.DiagnosisReport` (not changed).
        records: the `RunRecord`s of the same model on the same images (`runs_for`), controls included.

    Returns:
        The report with the check's finding, or its skip sentence, replaced by this verdict.
    """
    check = _entry()
    findings = [f for f in report.findings if f.id != CHECK_ID]
    skipped = [s for s in report.skipped if s.id != CHECK_ID]
    ran = [c for c in report.checks_run if c != CHECK_ID]
    try:
        findings += check(_RunsContext(records))
        ran.append(CHECK_ID)
    except CheckSkipped as exc:
        skipped.append(SkippedCheck(CHECK_ID, check.title, str(exc)))
    return replace(report, findings=in_report_order(findings), skipped=skipped, checks_run=ran)


def with_cli_runs(report, loaded, images, root=None):
    """`with_runs` on the command line's runs (no workspace) of `loaded` on `images`, when a runs folder exists.

    Args:
        report: the `DiagnosisReport`.
        loaded: the `LoadedModel` diagnosed.
        images: the `ImageSet` diagnosed.
        root: the runs folder. Defaults to ``TLVIZ_RUNS_DIR``, else ``~/.tlviz/runs``; nothing is created.

    Returns:
        The report, judged on those runs when there are any; else unchanged.
    """
    from pathlib import Path

    from tlviz import config
    from tlviz.contentkeys import pixels_key
    from tlviz.finetune.store import ENV_RUNS_DIR

    folder = Path(root or config.path(ENV_RUNS_DIR) or Path.home() / ".tlviz" / "runs").expanduser()
    if not folder.is_dir():
        return report
    records = runs_for(loaded.sha256, pixels_key(images.images), None, folder)
    return with_runs(report, records) if records else report


def runs_for(model_sha256: str | None, image_key: str | None, owner: str | None = None, root=None) -> list:
    """The finished runs (controls included) of one model on one image set.

    Args:
        model_sha256: the model file's hash (`LoadedModel.sha256`).
        image_key: `tlviz.contentkeys.pixels_key` of the image set's pixels.
        owner: only this workspace's runs (the app); None: the runs started without an owner (the CLI).
        root: the runs folder. Defaults to `tlviz.finetune.runs_dir()`.

    Returns:
        `RunRecord`s, newest first.
    """
    from tlviz.errors import TlvizError
    from tlviz.finetune.store import list_runs, load_run

    table = list_runs(root)
    out = []
    for rid in table["run_id"]:
        try:
            rec = load_run(rid, root)
        except TlvizError:
            continue
        if rec.owner != owner or rec.model_sha256 != model_sha256 or rec.image_key != image_key:
            continue
        out.append(rec)
    return out
