"""The ``"diagnose"`` job: every check of `tlviz.diagnose` on the user's model and images.

It takes no parameters: the diagnosis is measured for the ``unit`` inference preset, and a
page judges another preset with `tlviz.diagnose.DiagnosisReport.for_preset`, which needs no
model run. It reuses the stored normalization comparison of the same model and images with
the default parameters, and stores the one it made under that key (``also_store``), so the
Normalization page shows it without running the model again.
"""

from __future__ import annotations

from tlviz.errors import AnalysisRefused
from tlviz.jobs.kind import JobKind
from tlviz.jobs.results import stored_result
from tlviz.jobs.sources import open_source


def params(given: dict | None) -> dict:
    """A diagnose job takes no parameters."""
    if given:
        raise AnalysisRefused(
            f"A diagnose job takes no parameters (got {', '.join(sorted(given))}): it is measured for the "
            "`unit` inference preset; judge another preset with DiagnosisReport.for_preset(preset).")
    return {}


def compute(job: dict, progress, notes: list[str], log):
    """Run `tlviz.diagnose.diagnose` for the ``unit`` preset, reusing a stored normalization comparison."""
    from tlviz import diagnose
    from tlviz.jobs.inputs import load_inputs

    loaded, images = load_inputs(job)
    source = open_source(job.get("source"), notes)
    normalization = stored_result("normalize", job["normalize_key"], job.get("root"))
    if normalization is not None:
        log.info("reusing the stored normalization comparison %s", job["normalize_key"])
        progress(0.0, "Reusing the stored normalization comparison.")
    return diagnose.diagnose(loaded, images, "unit", progress=progress, source=source, normalization=normalization)


def also_store(report, job: dict) -> list:
    """The normalization comparison the diagnosis made, under the default normalize job's key."""
    if report.normalization is None:
        return []
    return [("normalize", job["normalize_key"], report.normalization)]


KIND = JobKind("diagnose", "the diagnosis", params=params, compute=compute, also_store=also_store,
               uses_source=lambda stored: True)
