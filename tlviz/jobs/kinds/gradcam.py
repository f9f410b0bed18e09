"""The ``"gradcam"`` job: Grad-CAM heatmaps for the images a gallery shows.

Parameters: `tlviz.gradcam.job_params`: ``items``, the ``[image index, preset]`` pairs; the
result is a `tlviz.gradcam.GradcamReport` (a heatmap per item, or the sentence saying the model
has no convolutional feature map).
"""

from __future__ import annotations

from tlviz.errors import AnalysisRefused
from tlviz.jobs.kind import JobKind


def params(given: dict | None) -> dict:
    """Check a Grad-CAM job's parameters (`tlviz.gradcam.job_params`)."""
    from tlviz.gradcam import job_params

    try:
        return job_params((given or {}).get("items") or [])
    except (TypeError, ValueError) as exc:
        raise AnalysisRefused(f"Grad-CAM: {exc}") from None


def compute(job: dict, progress, notes: list[str], log):
    """Run `tlviz.gradcam.explain` on the job's items."""
    from tlviz import gradcam
    from tlviz.jobs.inputs import load_inputs

    loaded, images = load_inputs(job)
    return gradcam.explain(loaded, images, gradcam.items_from_params(job.get("params")), progress=progress)


KIND = JobKind("gradcam", "the Grad-CAM heatmaps", params=params, compute=compute)
