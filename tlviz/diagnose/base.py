"""What every part of the diagnosis shares: the `Check` record and its thresholds.

A `Check` is one entry of the registry (`tlviz.diagnose.registry.CHECKS`): the
only place where a check's id, severity, area, title and thresholds are
written. A check function receives its own entry and makes its findings with
`Check.finding`, so no severity or area is ever repeated in a check's body.

Also here: the seed every sample and copy is drawn with, and the small evidence
helpers the check modules share. The two exceptions live in `tlviz.errors`:
`CheckSkipped` (a check cannot decide) and `DiagnosisRefused` (nothing can be diagnosed).
"""

from __future__ import annotations

import string
from dataclasses import dataclass, field, replace
from typing import Callable, Mapping

import numpy as np

from tlviz.errors import CheckSkipped
from tlviz.findings import AREAS, SEVERITIES, Finding, sort_findings
from tlviz.jsonsafe import json_safe
from tlviz.stats import decide, format_points, paired_difference

#: Seeds every sample, shuffle and fresh copy, so that a diagnosis is reproducible.
SEED = 0
#: Example images attached to a finding (file names, for the page's image strip).
EXAMPLES = 8


@dataclass(frozen=True)
class Threshold:
    """A number a check compares a measurement against.

    Attributes:
        value: the number (accuracies and gaps as fractions, counts and ratios as they are).
        why: one sentence on why that value.
    """

    value: float
    why: str


@dataclass(frozen=True)
class Check:
    """One registered check: its finding's id, severity and area, and how it runs.

    A check is a function in the module of its area (`tlviz.diagnose.pretraining`,
    `.finetuning`, `.inference`): ``check_<id>(ctx, check) -> list[Finding]`` takes the
    `DiagnosisContext` and its own entry, makes its findings with ``check.finding``,
    reads its thresholds with ``check.threshold(name)`` and raises
    `tlviz.errors.CheckSkipped` with a sentence when it cannot run. Its id, severity,
    area, title and thresholds are written in its entry only.

    Attributes:
        id: the stable id of the finding it produces.
        severity: of that finding (one of `tlviz.findings.SEVERITIES`).
        area: of that finding (one of `tlviz.findings.AREAS`).
        title: what it looks for, in a few words (shown while it runs and when skipped).
        detects: when it fires, in one line for the table of docs/diagnose.md and the package
            docstring; ``{name}`` stands for the value of threshold `name`, with an
            optional format spec (``{ratio:g}``, ``{min_accuracy:.0%}``, or ``{drop:pts}``
            for an accuracy gap in points: ``5 points``).
        run: ``run(ctx, check) -> list[Finding]`` with the `DiagnosisContext` and
            this entry; raises `CheckSkipped`. None when `judge` is given.
        judge: for a check that depends only on the inference preset:
            ``judge(evidence, preset, check) -> list[Finding]`` with the
            `PresetEvidence`; `DiagnosisReport.for_preset` calls it again without
            running the model. None otherwise.
        thresholds: ``{name: Threshold}``, the numbers the check compares against.
            Defaults to none.
        measured_severity: for a check whose finding is advice read from the
            model file until a measurement on the images shows an effect: the
            more severe level `Check.measured` gives the finding then, while
            `severity` stays that of the advice. Defaults to `None` (every
            finding of the check has `severity`).
    """

    id: str
    severity: str
    area: str
    title: str
    detects: str
    run: Callable | None = None
    judge: Callable | None = None
    thresholds: Mapping[str, Threshold] = field(default_factory=dict)
    measured_severity: str | None = None

    def __post_init__(self):
        if self.severity not in SEVERITIES:
            raise ValueError(f"Check {self.id!r}: severity must be one of {SEVERITIES}, not {self.severity!r}.")
        if self.measured_severity is not None and (
                self.measured_severity not in SEVERITIES
                or SEVERITIES.index(self.measured_severity) >= SEVERITIES.index(self.severity)):
            raise ValueError(f"Check {self.id!r}: measured_severity must be one of {SEVERITIES} more severe than "
                             f"{self.severity!r}, not {self.measured_severity!r}; leave it out when a measurement "
                             "does not change the severity.")
        if self.area not in AREAS:
            raise ValueError(f"Check {self.id!r}: area must be one of {AREAS}, not {self.area!r}.")
        if (self.run is None) == (self.judge is None):
            raise ValueError(f"Check {self.id!r}: pass exactly one of `run` and `judge`.")
        used = {name for _, name, _, _ in string.Formatter().parse(self.detects) if name}
        if used - set(self.thresholds):
            raise ValueError(f"Check {self.id!r}: `detects` names {', '.join(sorted(used - set(self.thresholds)))}, "
                             "which are not among its thresholds.")
        for name, t in self.thresholds.items():
            if not isinstance(t, Threshold) or not t.why.strip():
                raise ValueError(f"Check {self.id!r}: threshold {name!r} needs a `Threshold(value, why)`.")

    @property
    def preset_dependent(self) -> bool:
        """Whether `DiagnosisReport.for_preset` re-judges this check (it has a `judge`)."""
        return self.judge is not None

    def __call__(self, ctx) -> list[Finding]:
        """Runs the check on a `DiagnosisContext`.

        Args:
            ctx: the `DiagnosisContext`.

        Returns:
            The findings (often none).

        Raises:
            CheckSkipped: the check cannot run on these inputs.
        """
        if self.judge is not None:
            return self.judge(ctx.preset_evidence, ctx.inference_preset, self)
        return self.run(ctx, self)

    def threshold(self, name: str) -> float:
        """The value of threshold `name` (a `KeyError` names the ones there are)."""
        try:
            return self.thresholds[name].value
        except KeyError:
            raise KeyError(f"Check {self.id!r} has no threshold {name!r}; it has: "
                           f"{', '.join(self.thresholds) or 'none'}.") from None

    def finding(self, title: str, evidence: dict, fix: str) -> Finding:
        """A finding of this check, with the check's id, severity and area.

        Args:
            title: one line in plain language.
            evidence: the numbers measured (made JSON-safe, floats rounded to 6 digits).
            fix: what to do; may contain a fenced code block.

        Returns:
            The `Finding`.
        """
        return Finding(id=self.id, severity=self.severity, area=self.area, title=title,
                       evidence=jsonable(evidence), fix=fix)

    def adopt(self, finding: Finding, **changes) -> Finding:
        """A finding measured elsewhere (`tlviz.layers`, `tlviz.normalize`) as this check reports it.

        Args:
            finding: a finding with this check's id.
            **changes: other fields to replace (e.g. ``evidence``).

        Returns:
            A copy with this check's severity and area.
        """
        if finding.id != self.id:
            raise ValueError(f"Check {self.id!r} cannot adopt a {finding.id!r} finding.")
        return replace(finding, severity=self.severity, area=self.area, **changes)

    def measured(self, finding: Finding, **changes) -> Finding:
        """`finding` at this check's `measured_severity`: a measurement on the images showed the effect.

        Args:
            finding: a finding of this check (from `Check.adopt` or `Check.finding`).
            **changes: other fields to replace (the measured title, evidence and fix).

        Returns:
            A copy with severity `measured_severity`.

        Raises:
            ValueError: the check has no `measured_severity`, or the finding is another check's.
        """
        if self.measured_severity is None:
            raise ValueError(f"Check {self.id!r} has no measured_severity: its findings keep {self.severity!r}.")
        if finding.id != self.id:
            raise ValueError(f"Check {self.id!r} cannot raise a {finding.id!r} finding.")
        return replace(finding, severity=self.measured_severity, area=self.area, **changes)

    def describe(self) -> str:
        """`detects` with the threshold values filled in."""
        return _DetectsFormatter().format(self.detects, **{name: t.value for name, t in self.thresholds.items()})


@dataclass
class SkippedCheck:
    """A check that did not run, and the sentence saying why (a `DiagnosisReport` lists them)."""

    id: str
    title: str
    reason: str

    def to_dict(self) -> dict:
        return {"id": self.id, "title": self.title, "reason": self.reason}


def in_report_order(findings: list[Finding]) -> list[Finding]:
    """Findings in a report's order: most severe first; within a severity, by area (pre-training, fine-tuning,
    inference), and stable within an area.

    Args:
        findings: the findings.

    Returns:
        A new list.
    """
    return sort_findings(sorted(findings, key=lambda f: AREAS.index(f.area)))


class _DetectsFormatter(string.Formatter):
    """`str.format` plus the spec ``pts``: a fraction as accuracy points (``0.05`` -> ``5 points``)."""

    def format_field(self, value, format_spec):
        if format_spec == "pts":
            return f"{value * 100:g} points"
        return super().format_field(value, format_spec)


# -- evidence helpers ---------------------------------------------------------------

def jsonable(v):
    """Evidence values as plain JSON types, floats rounded to 6 digits (`tlviz.jsonsafe.json_safe`).

    Args:
        v: a value, a dict or a list of them (NumPy scalars and arrays included).

    Returns:
        The same structure in JSON types.
    """
    return json_safe(v, digits=6)


def name_list(items, limit: int = 6) -> str:
    """Items joined for a sentence: the first `limit`, then "and N more".

    Args:
        items: anything printable.
        limit: how many to name. Defaults to 6.

    Returns:
        ``"a, b, c and 4 more"``.
    """
    items = [str(i) for i in items]
    text = ", ".join(items[:limit])
    return text + (f" and {len(items) - limit} more" if len(items) > limit else "")


def sample_note(sample: np.ndarray, n: int) -> str:
    """How a measurement's images were chosen, for its evidence: ``all n images`` or ``k of n images, seeded ...``.

    Args:
        sample: the indices measured.
        n: the images in the set.

    Returns:
        The phrase.
    """
    return f"all {n} images" if len(sample) == n else f"{len(sample)} of {n} images, seeded and class-balanced"


def balanced_sample(labels: np.ndarray, max_images: int, seed: int = SEED) -> np.ndarray:
    """Sorted indices of a seeded, class-balanced sample of at most about `max_images` images (all when fewer).

    Shared with `tlviz.finetune` (the drift and retention probes draw their images with it).

    Args:
        labels: the class of each image.
        max_images: the sample's size at most (each class gets ``max_images // classes``, at least 1).
        seed: the seed. Defaults to `SEED`.

    Returns:
        Sorted int indices into `labels`.
    """
    if len(labels) <= max_images:
        return np.arange(len(labels))
    rng = np.random.default_rng(seed)
    classes = np.unique(labels)
    per_class = max(1, max_images // len(classes))
    chosen = [rng.permutation(np.flatnonzero(labels == c))[:per_class] for c in classes]
    return np.sort(np.concatenate(chosen))


def clears(correct_a, correct_b, threshold: float, what: str):
    """The paired difference of two accuracies on the same images when its 95 % interval clears `threshold`.

    Args:
        correct_a: per image, whether the first way is right (the one expected to score higher).
        correct_b: per image, whether the second way is right, on the same images.
        threshold: the gap, as a fraction, the whole interval must clear.
        what: the numbers in words, opening the sentence when there are too few images.

    Returns:
        The `PairedDifference`, or None when the whole interval is below `threshold`.

    Raises:
        CheckSkipped: the interval straddles `threshold` (too few images to decide); `what` opens the numbers.
    """
    d = paired_difference(correct_a, correct_b)
    verdict = decide(d.low, d.high, threshold)
    if verdict is None:
        raise CheckSkipped(
            f"Too few images to decide: {what} on {d.n} images; the difference of {d.difference * 100:.1f} points has "
            f"a 95 % interval of {format_points(d.low, d.high)}, which reaches below the {threshold * 100:.0f}-point "
            "threshold. Add images to decide.")
    return d if verdict else None
