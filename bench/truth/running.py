"""Running a case: diagnose (or judge fine-tuning runs) and compare the findings with what was planted."""

from __future__ import annotations

import time
from dataclasses import dataclass, field

from bench.truth.case_table import Case
from bench.truth.models import Env
from bench.truth.settings import RUN_CHECKS


# -- running and scoring -----------------------------------------------------------------------------

def _training_mode_truth(model) -> bool:
    """Whether ``training=True`` changes how the model computes: a Dropout / noise layer with a non-zero
    rate, or a BatchNormalization layer that is trainable and not inside a nested model called with a
    fixed ``training=False`` (read from the graph's recorded call arguments)."""
    import keras

    from tlviz.layers import random_in_training

    def pinned(layer) -> bool:
        nodes = getattr(layer, "_inbound_nodes", None) or []
        return bool(nodes) and all((getattr(getattr(n, "arguments", None), "kwargs", None) or {})
                                   .get("training", None) is False for n in nodes)

    def walk(m, under_pinned: bool):
        for layer in m.layers:
            if isinstance(layer, keras.Model):
                yield from walk(layer, under_pinned or pinned(layer))
            else:
                yield layer, under_pinned

    for layer, under in walk(model, False):
        if random_in_training(layer):
            return True
        if isinstance(layer, keras.layers.BatchNormalization) and layer.trainable and not under:
            return True
    return False


@dataclass
class Result:
    case: Case
    fired: dict            # id -> (severity, title)
    skipped: dict          # id -> reason
    seconds: float
    info_truth: dict = field(default_factory=dict)
    error: str | None = None
    #: the reference finds this case's trained base no better than random features on its task
    weak_base: bool = False
    #: a fine-tuning case: what its runs measured (CKA, accuracies)
    detail: str = ""
    #: the task whose images were diagnosed (``source`` / ``target``); None: the case's own
    task: str | None = None

    @property
    def scored_fired(self) -> set:
        """Checks with an error or warning finding (a check the registry lists as info may raise its finding
        to a warning on a measured effect: that counts too)."""
        return {i for i, (sev, _) in self.fired.items() if sev in ("error", "warning")}

    @property
    def missed(self) -> set:
        """Planted checks not reported: an error / warning check without an error or warning finding, an
        info check (advice read from the file) without any finding."""
        info = {c.id for c in scored_checks()[1]}
        return {c for c in self.case.planted if c not in (set(self.fired) if c in info else self.scored_fired)}

    @property
    def false_alarms(self) -> set:
        return self.scored_fired - set(self.case.planted) - set(self.case.allowed)


def run_case(case: Case, env: Env, keep_report: bool = False) -> Result:
    """Plant the fault, run every check, and record what fired and what was skipped.

    Args:
        case / env: the case and its family's `Env`.
        keep_report: keep the `DiagnosisReport` on the result (``result.report``), e.g. to judge it again
            for another preset with `rejudged`. Defaults to `False`.
    """
    from tlviz.diagnose import diagnose

    t0 = time.perf_counter()
    loaded, images, preset, source = case.setup(env)
    if case.run is not None:
        info_truth = {}
    else:
        info_truth = {"input-resized": case.resized, "training-mode-inference": _training_mode_truth(loaded.model)}
    try:
        detail = ""
        if case.run is not None:
            report, detail = _diagnose_with_runs(case, env, loaded, images, preset, source)
        else:
            report = diagnose(loaded, images, preset, source=source)
    except Exception as exc:  # a refusal or a crash: every planted check is missed
        return Result(case, {}, {}, time.perf_counter() - t0, info_truth, f"{type(exc).__name__}: {exc}")
    names = list(images.class_names)
    task = ("target" if names == list(env.data["target_names"]) else
            "source" if names == list(env.data["source_names"]) else None)
    return _result(case, report, time.perf_counter() - t0, info_truth, detail, task, keep_report)


def _result(case: Case, report, seconds: float, info_truth: dict, detail: str, task, keep_report: bool) -> Result:
    fired = {f.id: (f.severity, f.title) for f in report.findings}
    skipped = {s.id: s.reason for s in report.skipped}
    r = Result(case, fired, skipped, seconds, info_truth, detail=detail, task=task)
    if keep_report:
        r.report = report
    return r


def rejudged(result: Result, case: Case, preset: str) -> Result | None:
    """`case` (the same plant as `result`'s, under `preset`) judged from `result`'s report, without running
    the model again (`DiagnosisReport.for_preset`, as the Diagnose page does when the preset changes).

    Only the preset-dependent checks depend on the inference preset while the model's expected preset is
    known (the other checks judge the model under that one); without it (no preset above chance) they run
    under the user's preset, so None is returned and the case must run.
    """
    report = getattr(result, "report", None)
    if report is None or result.error or report.expected_preset is None or case.run is not None:
        return None
    t0 = time.perf_counter()
    return _result(case, report.for_preset(preset), time.perf_counter() - t0, dict(result.info_truth), "",
                   result.task, False)


def _diagnose_with_runs(case: Case, env: Env, loaded, images, preset: str, source):
    """A fine-tuning case: the run and its control, stored in a runs folder, then the diagnosis judged on them."""
    import shutil

    from tlviz.diagnose import diagnose
    from tlviz.diagnose.forgetting import runs_for, with_runs
    from tlviz.contentkeys import pixels_key
    from tlviz.finetune.cache import ActivationCache
    from tlviz.finetune.config import RunConfig, control_config
    from tlviz.finetune.run import run_finetune
    from tlviz.finetune.store import RunWriter

    settings, control = case.run
    root = env.dir / "runs" / case.name.replace("/", "_")
    shutil.rmtree(root, ignore_errors=True)  # every case starts from no runs
    key, cache = pixels_key(images.images), ActivationCache()
    config = RunConfig(preset=preset, label=case.name, **settings)
    for run_id, cfg in (("run", config), ("control", control_config(config, control, "run"))):
        writer = RunWriter(root / run_id)
        writer.write_config(cfg, {"sha256": loaded.sha256, "filename": loaded.filename},
                            {"image_key": key, "source": images.source})
        result = run_finetune(loaded, images, cfg, writer=writer, cache=cache, image_key=key, save=False)
        writer.status(result.state)
    records = runs_for(loaded.sha256, key, None, root)
    report = with_runs(diagnose(loaded, images, preset, source=source, checks=list(RUN_CHECKS)), records)
    return report, _runs_detail(records)


def _runs_detail(records) -> str:
    """One line on what the runs measured: the lowest CKA of an unfrozen block, and each accuracy."""
    from tlviz.errors import CheckSkipped
    from tlviz.diagnose.forgetting import judge_runs

    try:
        judged = judge_runs(records)[1]
    except CheckSkipped as exc:
        return f"skipped: {exc}"[:160]
    accs = ", ".join(f"{r.control or 'run'} {r.outcome.val_accuracy:.1%}" for r in records
                     if r.outcome.val_accuracy is not None)
    ckas = ", ".join(f"lowest CKA {j.lowest_cka:.2f}" for j in judged if j.lowest_cka is not None)
    return "; ".join(x for x in (ckas, f"val accuracy {accs}") if x)


def scored_checks():
    """``(scored, info)``: the checks whose findings can be errors or warnings (their registry severity, or the
    `measured_severity` a measurement on the images raises an advice to), and the others."""
    from tlviz.diagnose import CHECKS

    def scored_check(c):
        return c.severity in ("error", "warning") or getattr(c, "measured_severity", None) in ("error", "warning")

    return [c for c in CHECKS if scored_check(c)], [c for c in CHECKS if not scored_check(c)]
