"""The report of a diagnosis: findings in order, skipped checks, and its Markdown / JSON exports.

- `DiagnosisReport`: ``findings`` (sorted), ``skipped``, ``checks_run``, context
  fields, ``normalization`` (the `tlviz.normalize.NormalizationReport` it used,
  or None); ``by_area()``, ``counts_by_severity``, ``has_errors``, ``exit_code``,
  ``for_preset(preset)`` (re-judge the preset-dependent checks without running
  the model again), ``to_json()`` (the CLI object ``{"findings": [...]}``),
  ``to_dict()`` (the whole report), ``to_markdown()``.
- `SkippedCheck(id, title, reason)`.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

from tlviz.evidence import evidence_text
from tlviz.diagnose.base import SkippedCheck, jsonable, in_report_order
from tlviz.diagnose.context import PresetEvidence, check_preset
from tlviz.diagnose.registry import AREA_TITLES, CHECK_IDS, CHECKS, SEVERITY_TITLES
from tlviz.errors import CheckSkipped
from tlviz.findings import AREAS, SEVERITIES, Finding


@dataclass
class DiagnosisReport:
    """The result of `diagnose`.

    Attributes:
        findings: most severe first (ties by area, then check order).
        skipped: checks that could not run, each with the sentence saying why.
        checks_run: ids of the checks that ran (whether or not they found something).
        model_name / model_file / model_sha256: the model diagnosed.
        images_source / n_images / class_names / counts: the image set.
        inference_preset: the preset the user's inference code applies.
        expected_preset / expected_by: the preset the model expects and the
            evidence (``"accuracy"`` / ``"fingerprint"``), or None.
        seconds: time per check id, plus ``total``.
        evidence: the `PresetEvidence` behind the preset-dependent checks.
    """

    findings: list[Finding]
    skipped: list[SkippedCheck]
    checks_run: list[str]
    model_name: str
    model_file: str
    model_sha256: str
    images_source: str
    n_images: int
    class_names: list[str]
    counts: dict
    inference_preset: str
    expected_preset: str | None
    expected_by: str | None
    seconds: dict = field(default_factory=dict)
    evidence: PresetEvidence | None = None

    @property
    def normalization(self):
        """The `tlviz.normalize.NormalizationReport` used, or None."""
        return None if self.evidence is None else self.evidence.report

    @property
    def preset_conflicts(self) -> list[str]:
        """The evidence on the expected preset that disagrees (`PresetEvidence.conflicts`), one sentence each."""
        return [] if self.evidence is None or self.evidence.report is None else self.evidence.conflicts()

    @property
    def counts_by_severity(self) -> dict[str, int]:
        return {s: sum(f.severity == s for f in self.findings) for s in SEVERITIES}

    @property
    def has_errors(self) -> bool:
        return any(f.severity == "error" for f in self.findings)

    @property
    def exit_code(self) -> int:
        """The command line's exit status: 1 with an error-level finding, else 0."""
        return 1 if self.has_errors else 0

    def by_area(self) -> list[tuple[str, list[Finding]]]:
        """``[(area, findings), ...]``: areas ordered by their most severe finding
        (ties in `AREAS` order), findings most severe first; empty areas left out."""
        groups = {}
        for f in self.findings:
            groups.setdefault(f.area, []).append(f)
        def worst(area):
            return min(SEVERITIES.index(f.severity) for f in groups[area])
        return [(a, groups[a]) for a in sorted(groups, key=lambda a: (worst(a), AREAS.index(a)))]

    def for_preset(self, inference_preset: str) -> "DiagnosisReport":
        """The same diagnosis judged for another inference preset (no model run).

        Args:
            inference_preset: one of `tlviz.presets.PRESETS` applicable to the images.

        Returns:
            A new `DiagnosisReport`; only the preset-dependent checks (those with a ``judge``:
            ``normalization-mismatch``, ``inference-preset-fails``, ``double-normalization``) change.
        """
        check_preset(inference_preset, self.evidence.channels if self.evidence is not None else None)
        if inference_preset == self.inference_preset:
            return self
        dependent = [c for c in CHECKS if c.preset_dependent]
        ids = {c.id for c in dependent}
        findings = [f for f in self.findings if f.id not in ids]
        skipped = [s for s in self.skipped if s.id not in ids]
        ran = [i for i in self.checks_run if i not in ids]
        for check in dependent:
            if check.id not in self.checks_run and not any(s.id == check.id for s in self.skipped):
                continue  # not selected in the original run
            if self.evidence is None or self.evidence.report is None:
                skipped.append(SkippedCheck(check.id, check.title, "The normalization measurement did not run."))
                continue
            try:
                findings += check.judge(self.evidence, inference_preset, check)
                ran.append(check.id)
            except CheckSkipped as exc:
                skipped.append(SkippedCheck(check.id, check.title, str(exc)))
        order = {c: i for i, c in enumerate(CHECK_IDS)}
        ran.sort(key=lambda c: order[c])
        skipped.sort(key=lambda s: order.get(s.id, 0))
        findings = in_report_order(sorted(findings, key=lambda f: order.get(f.id, len(order))))
        return replace(self, findings=findings, skipped=skipped, checks_run=ran, inference_preset=inference_preset)

    # exports -----------------------------------------------------------------
    def to_json(self) -> dict:
        """The command line's JSON object: ``{"findings": [{id, severity, area, title, evidence, fix}, ...]}``."""
        return {"findings": [jsonable(f.to_dict()) for f in self.findings]}

    def to_dict(self) -> dict:
        """The whole report (the `to_json` object plus skipped checks and context), for downloads."""
        return {
            **self.to_json(),
            "skipped": [s.to_dict() for s in self.skipped],
            "checks_run": list(self.checks_run),
            "model": {"name": self.model_name, "file": self.model_file, "sha256": self.model_sha256},
            "images": {"source": self.images_source, "n_images": self.n_images, "classes": self.class_names,
                       "counts": self.counts},
            "inference_preset": self.inference_preset,
            "expected_preset": self.expected_preset,
            "expected_by": self.expected_by,
            "preset_conflicts": self.preset_conflicts,
            "summary": self.counts_by_severity,
            "seconds": {k: round(v, 3) for k, v in self.seconds.items()},
        }

    def to_markdown(self, repairs=None) -> str:
        """The report as Markdown: summary, findings by area with evidence and fix, skipped checks.

        Args:
            repairs: `tlviz.repair.RepairResult` objects made for this model, listed in a
                "Repairs applied" section at the end. Defaults to none.
        """
        c = self.counts_by_severity
        conflicts = self.preset_conflicts
        expected = ""
        if self.expected_preset and conflicts:  # a claim the other evidence contradicts is not made
            expected = f" (`{self.expected_preset}` scores best on these images, but see the conflict below)"
        elif self.expected_preset:
            expected = f" (the model expects `{self.expected_preset}`, by {self.expected_by})"
        lines = [f"# tlviz diagnosis: {self.model_name}", "",
                 f"- Model: `{self.model_file or self.model_name}`",
                 f"- Image set: `{self.images_source}` — {self.n_images} images, {len(self.class_names)} classes",
                 f"- Inference preset: `{self.inference_preset}`{expected}",
                 f"- Checks run: {len(self.checks_run)}, skipped: {len(self.skipped)}"]
        if conflicts:
            lines.append("- The evidence on the expected preset conflicts: " + "; ".join(conflicts) + ".")
        lines.append("")
        if not self.findings:
            lines += ["**No findings.**", ""]
        else:
            lines += ["**" + ", ".join(f"{c[s]} {s}{'s' if c[s] != 1 and s != 'info' else ''}"
                                       for s in SEVERITIES) + "**", ""]
            if not c["error"] and not c["warning"]:
                lines += ["No errors or warnings: nothing here explains a model that does not learn.", ""]
        for area, items in self.by_area():
            lines += [f"## {AREA_TITLES[area]}", ""]
            for f in items:
                lines += [f"### {SEVERITY_TITLES[f.severity]}: {f.title}", "", f"`{f.id}`", ""]
                lines += _evidence_markdown(f.evidence)
                lines += ["", f"**Fix.** {f.fix}", ""]
        if self.skipped:
            lines += ["## Skipped checks", ""]
            lines += [f"- `{s.id}` ({s.title}): {s.reason}" for s in self.skipped]
            lines.append("")
        if repairs:
            from tlviz.repair.result import repairs_markdown

            lines += [repairs_markdown(list(repairs))]
        return "\n".join(lines)


def _evidence_markdown(evidence: dict) -> list[str]:
    rows = ["| evidence | value |", "|---|---|"]
    matrix = None
    for k, v in evidence.items():
        if k == "confusion_matrix" and isinstance(v, list):
            matrix = v
            continue
        if k == "cells":  # each cell's files: in the JSON export and the page's cell gallery, not this table
            continue
        rows.append(f"| {k.replace('_', ' ')} | {evidence_text(k, v).replace('|', '/')} |")
    if matrix is not None:
        names = [str(n) for n in evidence.get("classes", range(len(matrix)))]
        rows += ["", "Confusion matrix (rows: image-set class, columns: model output):", "",
                 "| | " + " | ".join(names) + " |", "|---" * (len(names) + 1) + "|"]
        rows += [f"| **{names[i]}** | " + " | ".join(str(x) for x in row) + " |" for i, row in enumerate(matrix)]
    return rows
