"""The ``"normalize"`` job: compare the input normalizations on the user's model and images.

Parameters (`params`): ``custom`` (a `CustomPreset`, its ``{"scale", "mean", "std"}`` dict, or
None) and ``variants`` (also compare resize methods and channel order; default True). The
result is a `tlviz.normalize.NormalizationReport`.
"""

from __future__ import annotations

from dataclasses import asdict

from tlviz.errors import AnalysisRefused
from tlviz.jobs.kind import JobKind
from tlviz.jobs.sources import open_source


def normalize_params(custom=None, variants: bool = True) -> dict:
    """The parameters of a ``"normalize"`` job in their stored form.

    Args:
        custom: a `tlviz.presets.CustomPreset`, its ``{"scale", "mean", "std"}``
            dict, or None. Defaults to `None`.
        variants: also compare resize methods and channel order against the
            best preset. Defaults to `True`.

    Returns:
        ``{"custom": dict or None, "variants": bool}``.
    """
    if custom is not None and not isinstance(custom, dict):
        custom = asdict(custom)
    if custom is not None:
        unknown = set(custom) - {"scale", "mean", "std"}
        if unknown:
            raise AnalysisRefused(f"Unknown custom preset field(s) {', '.join(sorted(unknown))}. Give scale, mean "
                                  "and std (tlviz.normalize.custom_preset builds one from typed values).")
        custom = {k: (list(v) if isinstance(v, (list, tuple)) else float(v)) for k, v in custom.items()}
    return {"custom": custom, "variants": bool(variants)}


def params(given: dict | None) -> dict:
    """Check a normalize job's parameters; return their stored form (`normalize_params`)."""
    given = dict(given or {})
    unknown = set(given) - {"custom", "variants"}
    if unknown:
        raise AnalysisRefused(f"Unknown normalize parameter(s) {', '.join(sorted(unknown))}. Use custom and "
                              "variants (see tlviz.jobs.normalize_params).")
    return normalize_params(given.get("custom"), given.get("variants", True))


def custom_preset(stored: dict):
    """The `CustomPreset` of stored parameters, or None."""
    from tlviz.presets import CustomPreset

    c = stored.get("custom")
    if c is None:
        return None
    return CustomPreset(**{k: (tuple(v) if isinstance(v, list) else v) for k, v in c.items()})


def compute(job: dict, progress, notes: list[str], log):
    """Run `tlviz.normalize.analyze` on the job's inputs (the source re-opened for the resize variants)."""
    from tlviz import normalize
    from tlviz.jobs.inputs import load_inputs

    loaded, images = load_inputs(job)
    source = open_source(job.get("source"), notes)
    stored = job.get("params") or {}
    return normalize.analyze(loaded, images, source=source, custom=custom_preset(stored),
                             variants=bool(stored.get("variants", True)), progress=progress)


KIND = JobKind("normalize", "the normalization comparison", params=params, compute=compute,
               uses_source=lambda stored: bool(stored.get("variants", True)))
