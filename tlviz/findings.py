"""The `Finding`: one diagnosed problem, with evidence and fix."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

SEVERITIES = ("error", "warning", "info")
AREAS = ("pretraining", "finetuning", "inference")


@dataclass
class Finding:
    """One diagnosed problem.

    Attributes:
        id: stable identifier, e.g. ``"no-trainable-weights"``.
        severity: ``"error"``, ``"warning"`` or ``"info"``.
        area: ``"pretraining"``, ``"finetuning"`` or ``"inference"``.
        title: one line in plain language.
        evidence: the numbers measured on the user's model and images.
        fix: what to do, in words; may contain a code snippet in a fenced block.
    """

    id: str
    severity: str
    area: str
    title: str
    evidence: dict = field(default_factory=dict)
    fix: str = ""

    def __post_init__(self):
        if self.severity not in SEVERITIES:
            raise ValueError(f"severity must be one of {SEVERITIES}, not {self.severity!r}")
        if self.area not in AREAS:
            raise ValueError(f"area must be one of {AREAS}, not {self.area!r}")

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> "Finding":
        """The finding `to_dict` wrote (e.g. read back from a run's ``metrics.json``).

        Args:
            data: a dict with ``id``, ``severity``, ``area`` and ``title``, and
                optionally ``evidence`` and ``fix``; other keys are ignored.

        Returns:
            The `Finding`.

        Raises:
            ValueError: a key is missing, or the severity or area is unknown.
        """
        try:
            return cls(id=str(data["id"]), severity=data["severity"], area=data["area"], title=str(data["title"]),
                       evidence=dict(data.get("evidence") or {}), fix=str(data.get("fix") or ""))
        except (KeyError, TypeError) as exc:
            raise ValueError(f"not a stored finding ({exc!r}): {data!r}") from None


def sort_findings(findings: list[Finding]) -> list[Finding]:
    """Most severe first; stable within a severity."""
    return sorted(findings, key=lambda f: SEVERITIES.index(f.severity))
