"""The ``"repair"`` job: apply fixes to the model and prove them on held-out images.

Parameters: `tlviz.repair.repair_params` (``fixes``, ``inference_preset``, ``target``,
``double_normalization``, ``top_block``); the result is a `tlviz.repair.RepairResult` (the
repaired ``.keras`` bytes and the proof).
"""

from __future__ import annotations

from tlviz.errors import AnalysisRefused
from tlviz.jobs.kind import JobKind


def params(given: dict | None) -> dict:
    """Check a repair job's parameters (`tlviz.repair.repair_params`)."""
    from tlviz.repair import RepairRefused, repair_params

    try:
        return repair_params(dict(given or {}))
    except RepairRefused as exc:
        raise AnalysisRefused(str(exc)) from None


def compute(job: dict, progress, notes: list[str], log):
    """Run `tlviz.repair.repair` with the job's parameters."""
    from tlviz.jobs.inputs import load_inputs
    from tlviz.repair import repair

    loaded, images = load_inputs(job)
    stored = dict(job.get("params") or {})
    return repair(loaded, images, stored.pop("fixes"), stored.pop("inference_preset"), progress=progress, **stored)


KIND = JobKind("repair", "the repair", params=params, compute=compute)
