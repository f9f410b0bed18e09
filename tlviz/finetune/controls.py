"""Controls of a run: the same configuration from random weights, or with the base frozen, compared honestly.

A *control* is an ordinary run whose config says what it controls (`RunConfig.control`,
`RunConfig.control_of`; made by `tlviz.finetune.config.control_config`):

- ``random-init``: the same configuration on the same architecture with fresh random
  weights (seeded). If the run does not clearly beat it, the pre-trained weights do not
  help at all ("no better than a randomly initialised model", the write-up's own symptom
  of catastrophic forgetting).
- ``head-only``: the same configuration with the base frozen (unfreeze depth 0). If the
  run does not clearly beat it, unfreezing the base bought nothing.

Both use the same seed and validation share, so they are scored on the same validation
images as the run (the split depends only on the labels, the duplicate groups, the seed
and the share), and `compare` gives the difference image by image with its 95 % interval
(`tlviz.stats.paired_difference`).

Public API: `ControlComparison`, `compare(run, control)`, `controls_of(run_id, records)`.
"""

from __future__ import annotations

from dataclasses import dataclass

from tlviz.finetune.config import CONTROL_LABELS
from tlviz.stats import PairedDifference, format_points, paired_difference

#: Control states whose validation predictions can be compared.
COMPARABLE_STATES = ("completed", "diverged", "cancelled", "stopped")


@dataclass
class ControlComparison:
    """A run against one of its controls, on the same validation images.

    Attributes:
        kind: ``"random-init"`` or ``"head-only"``.
        control_id: the control run's id.
        state: the control's state.
        run_accuracy / control_accuracy: final validation accuracies (None: not measured).
        control_loss: the control's final validation loss (None: not measured).
        difference: run minus control, image by image, with its 95 % interval; None when
            the two cannot be compared (the reason is in `note`).
        note: why there is no comparison yet (in progress, failed, other images), else ``""``.
    """

    kind: str
    control_id: str
    state: str
    run_accuracy: float | None
    control_accuracy: float | None
    control_loss: float | None
    difference: PairedDifference | None
    note: str = ""

    @property
    def clearly_better(self) -> bool | None:
        """True when the run clearly beats the control (the whole interval above 0), False when it does not,
        None when they could not be compared."""
        if self.difference is None:
            return None
        return self.difference.low > 0

    @property
    def verdict(self) -> str:
        """``better`` (interval above 0), ``worse`` (below 0), ``no clear difference``, or ``not compared``."""
        d = self.difference
        if d is None:
            return "not compared"
        return "better" if d.low > 0 else "worse" if d.high < 0 else "no clear difference"

    def sentence(self) -> str:
        """What the comparison says, in one or two sentences, with the interval and the image count."""
        label = CONTROL_LABELS[self.kind]
        if self.difference is None:
            return f"The {label} ({self.control_id}): {self.note}"
        d = self.difference
        nums = (f"{_pct(self.run_accuracy)} against {_pct(self.control_accuracy)}: {d.difference * 100:+.1f} points "
                f"(95 % interval {format_points(d.low, d.high)}, {d.n} validation images)")
        if self.kind == "random-init":
            what = {"better": "The pre-trained weights help: the run beats the same configuration from random weights",
                    "worse": "The run is worse than the same configuration from random weights: the pre-trained "
                             "weights hurt as it is set up",
                    "no clear difference": "The run is no better than a randomly initialised model (the pre-trained "
                                           "weights do not clearly help on these images)"}[self.verdict]
        else:
            what = {"better": "Unfreezing pays off: the run beats training the head alone on the frozen base",
                    "worse": "Unfreezing hurts: the run is worse than training the head alone on the frozen base",
                    "no clear difference": "Unfreezing does not clearly help: the run is no better than training the "
                                           "head alone on the frozen base"}[self.verdict]
        return f"{what}, {nums}."

    def to_dict(self) -> dict:
        d = self.difference
        return {"kind": self.kind, "run_id": self.control_id, "state": self.state,
                "val_accuracy": self.control_accuracy, "val_loss": self.control_loss,
                "difference": None if d is None else d.difference, "low": None if d is None else d.low,
                "high": None if d is None else d.high, "n_images": None if d is None else d.n,
                "verdict": self.verdict, "sentence": self.sentence()}


def _pct(v) -> str:
    return "?" if v is None else f"{float(v):.1%}"


def compare(run, control) -> ControlComparison:
    """Compare a run with one of its controls on their validation images.

    Args:
        run: the run's `tlviz.finetune.RunRecord`.
        control: the control's `RunRecord` (its config's ``control`` names the kind).

    Returns:
        A `ControlComparison`; without a difference (and with the reason) while the control
        runs, when it failed, or when the two were not scored on the same validation images.
    """
    kind = control.control or "random-init"
    out, ctl = run.outcome, control.outcome
    base = dict(kind=kind, control_id=control.run_id, state=control.state, run_accuracy=out.val_accuracy,
                control_accuracy=ctl.val_accuracy, control_loss=ctl.val_loss)
    if control.active:
        return ControlComparison(**base, difference=None, note="still running.")
    if control.state not in COMPARABLE_STATES or ctl.empty:
        return ControlComparison(**base, difference=None,
                                 note=f"it {control.state} without results ({control.message or 'no message'}).")
    if out.empty:
        return ControlComparison(**base, difference=None, note="the run itself has no results.")
    same = (run.image_key is None or control.image_key is None or run.image_key == control.image_key)
    a, b = out.val_indices, ctl.val_indices
    if not same or len(a) != len(b) or (a != b).any():
        return ControlComparison(**base, difference=None,
                                 note="it was not scored on the same validation images as the run (another image set, "
                                      "seed or validation share), so the two cannot be compared image by image.")
    return ControlComparison(**base, difference=paired_difference(out.val_correct, ctl.val_correct))


def controls_of(run_id: str, records) -> list:
    """The controls of run `run_id` among `records` (`RunRecord`s), newest first."""
    found = [r for r in records if r.control_of == run_id and r.control in CONTROL_LABELS]
    return sorted(found, key=lambda r: r.created, reverse=True)
