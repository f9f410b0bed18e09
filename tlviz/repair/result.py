"""What a repair returns: `RepairStep` per repair applied, `RepairResult` for the chain, and their exports.

- `RepairStep.to_json()` is one entry of the command line's ``"applied"`` list:
  ``{"id", "before", "after", "n_fit", "n_eval", ...}``.
- `RepairResult.to_json(model_path)` is the command line's object ``{"applied": [...], "model_path": ...}``.
- `repairs_markdown(results)` is the "Repairs applied" section of the diagnosis report.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from tlviz.jsonsafe import json_safe
from tlviz.stats import format_points

#: How `RepairStep.before` / `after` are measured.
MEASURES = ("accuracy", "trainable_params")


@dataclass
class RepairStep:
    """One repair applied to the copy, with its proof.

    Attributes:
        id: the finding it repairs (``normalization-mismatch``, ...).
        title: what was done, in one sentence.
        measure: ``"accuracy"`` (on the held-out images) or ``"trainable_params"``.
        before / after: the measure before and after this step.
        interval: the 95 % paired interval of ``after - before`` (accuracy only), else None.
        n_fit: images the step estimated something from (0 when it estimated nothing).
        n_eval: images `before` and `after` were measured on (0 when no images were needed).
        feed_before / feed_after: the preset the model was fed before and is fed after the step
            (None for a step that does not measure accuracy).
        details: what the step's proof rests on (its variants, the class mapping, per-layer
            statistics, the freezing table...), JSON-safe.
        notes: sentences the user should read (what changed for their inference code).
    """

    id: str
    title: str
    measure: str
    before: float | int | None
    after: float | int | None
    interval: list | None = None
    n_fit: int = 0
    n_eval: int = 0
    feed_before: str | None = None
    feed_after: str | None = None
    details: dict = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)

    def to_json(self) -> dict:
        """``{"id", "before", "after", "n_fit", "n_eval", "measure", "interval", "title", "feed_before",
        "feed_after", "notes", "details"}``."""
        return json_safe({"id": self.id, "before": self.before, "after": self.after, "n_fit": self.n_fit,
                          "n_eval": self.n_eval, "measure": self.measure, "interval": self.interval,
                          "title": self.title, "feed_before": self.feed_before, "feed_after": self.feed_after,
                          "notes": list(self.notes), "details": self.details})

    def describe(self) -> str:
        """One line: ``"accuracy 61.2 % -> 98.4 % (+37.2 points, 95 % interval ..., 455 held-out images)"``."""
        if self.measure == "trainable_params":
            return f"trainable parameters {self.before:,} -> {self.after:,}"
        text = f"accuracy {_pct(self.before)} -> {_pct(self.after)}"
        if self.interval is not None and self.before is not None and self.after is not None:
            text += (f" ({(self.after - self.before) * 100:+.1f} points, 95 % interval "
                     f"{format_points(*self.interval)}")
            text += f"; {self.n_eval} held-out images" + (f", estimated on {self.n_fit} others" if self.n_fit else "")
            text += ")"
        return text


def _pct(v) -> str:
    return "—" if v is None else f"{v:.1%}"


@dataclass
class RepairResult:
    """A repaired copy of a model and the proof, step by step.

    Attributes:
        steps: the repairs applied, in the order they were applied.
        order_note: why they were applied in that order.
        split: ``{"seed", "n_fit", "n_eval", "how"}``: how the images were divided between
            estimating and measuring.
        inference_preset: what the user's inference code sends (before the repair).
        feed_preset: what the repaired model takes (send this from now on).
        overall: ``{"before", "after", "interval", "n_eval", "file_max_abs_difference"}``: the
            original model fed `inference_preset` against the repaired copy fed `feed_preset` on the
            held-out images, and how far the saved file's outputs are from the copy's on some of them
            (None when no step measures accuracy).
        model_bytes: the repaired `.keras` file.
        filename / model_name: its file name and the model's name.
        metadata: what is embedded in the file (``preset``, ``class_names``, ``repairs``, ...).
        source: ``{"name", "file", "sha256"}`` of the model it was made from.
        params: the parameters it was asked with (`tlviz.repair.repair_params`).
        seconds: how long it took.
    """

    steps: list[RepairStep]
    order_note: str
    split: dict
    inference_preset: str
    feed_preset: str
    overall: dict | None
    model_bytes: bytes
    filename: str
    model_name: str
    metadata: dict
    source: dict
    params: dict
    seconds: float = 0.0

    @property
    def ids(self) -> list[str]:
        return [s.id for s in self.steps]

    def to_json(self, model_path: str | None = None) -> dict:
        """The command line's object: ``{"applied": [...], "model_path", "feed_preset", "overall", "split",
        "order_note"}``."""
        return json_safe({"applied": [s.to_json() for s in self.steps], "model_path": model_path,
                          "feed_preset": self.feed_preset, "inference_preset": self.inference_preset,
                          "overall": self.overall, "split": self.split, "order_note": self.order_note,
                          "source": self.source})

    def summary(self) -> str:
        """One sentence: what the repaired model takes and how much better it does."""
        o = self.overall
        text = f"The repaired copy takes `{self.feed_preset}` input"
        if o:
            text += (f"; held-out accuracy {_pct(o['before'])} (original, fed `{self.inference_preset}`) -> "
                     f"{_pct(o['after'])} ({(o['after'] - o['before']) * 100:+.1f} points, 95 % interval "
                     f"{format_points(*o['interval'])}, {o['n_eval']} images)")
        return text + "."

    def to_markdown(self) -> str:
        """This repair as a Markdown block (used by `repairs_markdown`)."""
        lines = [f"### {', '.join(f'`{i}`' for i in self.ids)} → `{self.filename}`", "", self.summary(), "",
                 f"Order: {self.order_note}", "", f"Images: {self.split.get('how', '')}", "",
                 "| repair | what was done | before | after | 95 % interval | n_fit | n_eval |",
                 "|---|---|---|---|---|---|---|"]
        for s in self.steps:
            if s.measure == "accuracy":
                b, a = _pct(s.before), _pct(s.after)
                iv = format_points(*s.interval) if s.interval else "—"
            else:
                b, a, iv = f"{s.before:,} trainable", f"{s.after:,} trainable", "—"
            lines.append(f"| `{s.id}` | {s.title.replace('|', '/')} | {b} | {a} | {iv} | {s.n_fit} | {s.n_eval} |")
        notes = [n for s in self.steps for n in s.notes]
        if notes:
            lines += [""] + [f"- {n}" for n in notes]
        return "\n".join(lines) + "\n"


def repairs_markdown(results: list[RepairResult]) -> str:
    """The "Repairs applied" section of a report: one block per `RepairResult`.

    Args:
        results: the repairs made (in the order they were made).

    Returns:
        Markdown starting with ``## Repairs applied``; empty when `results` is empty.
    """
    if not results:
        return ""
    return "\n".join(["## Repairs applied", "", "Each repair works on a copy; the loaded model is unchanged.", ""]
                     + [r.to_markdown() for r in results])
