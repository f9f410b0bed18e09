"""The configuration of one fine-tuning run, validated before anything trains."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields

from tlviz.errors import RunRefused  # defined in tlviz.errors; still importable from here
from tlviz.presets import PRESETS

OPTIMIZERS = ("adam", "sgd")
OPTIMIZER_LABELS = {"adam": "Adam", "sgd": "SGD with momentum"}
BN_MODES = ("frozen", "train")
#: What a control run is: the same configuration from fresh random weights, or with the base frozen.
CONTROLS = ("random-init", "head-only")
CONTROL_LABELS = {"random-init": "random-init control", "head-only": "head-only control"}


@dataclass
class RunConfig:
    """Everything that defines one fine-tuning run.

    Args:
        unfreeze: unfreeze depth: how many weight-holding layers of the base,
            counted from the top, train. `0` trains only the head; a number
            larger than the base unfreezes all of it. Defaults to `0`.
        lr: learning rate (of the second phase when `two_phase`). Defaults to `1e-3`.
        epochs: epochs at the chosen depth (after the head phase when
            `two_phase`). Defaults to `5`.
        batch_size: images per batch. Defaults to `32`.
        optimizer: `"adam"` or `"sgd"` (SGD with momentum). Defaults to `"adam"`.
        momentum: momentum of SGD (ignored by Adam). Defaults to `0.9`.
        preset: input normalization, one of `tlviz.presets.PRESETS`.
            Defaults to `"unit"` (see `default_preset` for the page's choice).
        val_fraction: share of each class held out for validation (stratified,
            seeded). Defaults to `0.2`.
        seed: seeds the split, the new head's initial weights, shuffling and
            dropout. Defaults to `0`.
        new_head: replace the classification head by a fresh one for the image
            set's classes (pooling if needed, dropout, dense softmax). `None`
            decides: forced when the class count differs from the model's
            outputs, on when the model records other class names, off otherwise.
            Defaults to `None`.
        head_dropout: dropout rate of a new head. Defaults to `0.2`.
        weight_decay: decoupled weight decay of the optimizer; `0` is none.
            Defaults to `0.0`.
        augment: light augmentation (horizontal flips, shifts up to 10 %).
            Defaults to `False`.
        bn: `"frozen"` keeps BatchNormalization layers frozen and in inference
            mode (the Keras guide's advice); `"train"` lets unfrozen ones train.
            Defaults to `"frozen"`.
        two_phase: first train the head alone (base frozen) for `head_epochs`
            at `head_lr`, then unfreeze to `unfreeze` at `lr` (fastai's
            ``fine_tune``). Defaults to `False`.
        head_epochs: epochs of the head phase. Defaults to `2`.
        head_lr: learning rate of the head phase. Defaults to `1e-3`.
        unfreeze_frozen: the loaded model has no trainable weights at all; a
            run refuses to start unless this is `True` (then the head, and the
            chosen depth, are unfrozen for the run). Defaults to `False`.
        use_cache: reuse base activations when everything below the cut is
            frozen (same results, much faster). Defaults to `True`.
        label: free text shown in the run list. Defaults to `""`.
        sweep_id: set on the runs of one sweep. Defaults to `None`.
        control: makes the run a control of another one (`control_config`):
            ``"random-init"`` starts from fresh random weights of the same
            architecture (seeded with `seed`), ``"head-only"`` trains with the
            base frozen (`unfreeze` 0). Defaults to `None` (an ordinary run).
        control_of: the id of the run it is a control of. Defaults to `None`.
    """

    unfreeze: int = 0
    lr: float = 1e-3
    epochs: int = 5
    batch_size: int = 32
    optimizer: str = "adam"
    momentum: float = 0.9
    preset: str = "unit"
    val_fraction: float = 0.2
    seed: int = 0
    new_head: bool | None = None
    head_dropout: float = 0.2
    weight_decay: float = 0.0
    augment: bool = False
    bn: str = "frozen"
    two_phase: bool = False
    head_epochs: int = 2
    head_lr: float = 1e-3
    unfreeze_frozen: bool = False
    use_cache: bool = True
    label: str = ""
    sweep_id: str | None = None
    control: str | None = None
    control_of: str | None = None

    def __post_init__(self):
        self.validate()

    def validate(self) -> "RunConfig":
        """Check every field; raise `RunRefused` naming the field and the fix.

        Returns:
            The config itself.
        """
        _int(self, "unfreeze", 0)
        _int(self, "epochs", 1, 1000)
        _int(self, "batch_size", 1, 65536)
        _int(self, "seed", 0)
        _int(self, "head_epochs", 1, 1000)
        _rate(self, "lr")
        _rate(self, "head_lr")
        if self.optimizer not in OPTIMIZERS:
            raise RunRefused(f"Unknown optimizer {self.optimizer!r}. Use one of: {', '.join(OPTIMIZERS)}.")
        if self.bn not in BN_MODES:
            raise RunRefused(f"Unknown BatchNormalization mode {self.bn!r}. Use 'frozen' (inference mode, "
                             "recommended) or 'train'.")
        if not isinstance(self.preset, str):
            raise RunRefused(
                f"Fine-tuning runs take a named preset, not {getattr(self.preset, 'name', repr(self.preset))}: "
                f"a run stores its preset by name. Use the named preset with the same arithmetic (one of: "
                f"{', '.join(PRESETS)}), or put your normalization inside the model as a `Rescaling` layer "
                "(scale and offset per channel) and fine-tune that model with `raw`.")
        if self.preset not in PRESETS:
            raise RunRefused(f"Unknown preset {self.preset!r}. Use one of: {', '.join(PRESETS)}.")
        _float(self, "momentum", 0.0, 1.0, hi_open=True)
        _float(self, "val_fraction", 0.0, 1.0, lo_open=True, hi_open=True)
        if not 0.05 <= self.val_fraction <= 0.5:
            raise RunRefused(f"val_fraction must be between 0.05 and 0.5 (a share of each class), "
                             f"not {self.val_fraction}.")
        _float(self, "head_dropout", 0.0, 1.0, hi_open=True)
        _float(self, "weight_decay", 0.0, 1.0)
        for name in ("augment", "two_phase", "unfreeze_frozen", "use_cache"):
            if not isinstance(getattr(self, name), bool):
                raise RunRefused(f"{name} must be True or False, not {getattr(self, name)!r}.")
        if self.new_head not in (None, True, False):
            raise RunRefused(f"new_head must be True, False or None (decide automatically), not {self.new_head!r}.")
        if not isinstance(self.label, str):
            raise RunRefused("label must be text.")
        if self.control is not None and self.control not in CONTROLS:
            raise RunRefused(f"Unknown control {self.control!r}. Use one of: {', '.join(CONTROLS)} (or none).")
        if self.control == "head-only" and self.unfreeze != 0:
            raise RunRefused(f"A head-only control trains the head alone: unfreeze must be 0, not {self.unfreeze}.")
        if self.control_of is not None and not isinstance(self.control_of, str):
            raise RunRefused(f"control_of must be a run id, not {self.control_of!r}.")
        return self

    @property
    def total_epochs(self) -> int:
        """Epochs over both phases."""
        return self.epochs + (self.head_epochs if self.two_phase else 0)

    @property
    def random_init(self) -> bool:
        """Whether the run starts from fresh random weights (a random-init control)."""
        return self.control == "random-init"

    @property
    def train_bn(self) -> bool:
        return self.bn == "train"

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> "RunConfig":
        """Build from a dict (e.g. a stored ``config.json``); unknown keys are refused.

        Raises:
            RunRefused: unknown keys or invalid values.
        """
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise RunRefused(f"Unknown run option(s): {', '.join(unknown)}. Known options: {', '.join(sorted(known))}.")
        return cls(**data)

    def describe(self) -> str:
        """A short one-line description, e.g. ``"depth 4 · Adam 1e-04 · 5 ep · tf"``."""
        head = " · new head" if self.new_head else ""
        phase = f" · head {self.head_epochs} ep first" if self.two_phase else ""
        control = f" · {CONTROL_LABELS[self.control]}" if self.control else ""
        return (f"depth {self.unfreeze} · {OPTIMIZER_LABELS[self.optimizer]} {self.lr:.0e} · "
                f"{self.epochs} ep · {self.preset}{head}{phase}{control}")


def control_config(config: RunConfig, kind: str, control_of: str | None = None) -> RunConfig:
    """The configuration of a control of a run: the same settings, from random weights or with the base frozen.

    Args:
        config: the run's configuration.
        kind: ``"random-init"`` (same configuration, same architecture, fresh random weights
            seeded with the run's seed) or ``"head-only"`` (same configuration with unfreeze depth 0:
            what the head alone learns on the pre-trained base; a two-phase schedule keeps both
            phases, at depth 0).
        control_of: the run's id, when it has one. Defaults to `None`.

    Returns:
        The control's `RunConfig` (labelled, outside any sweep).

    Raises:
        RunRefused: an unknown kind, a control of a control, or a head-only control of a run that
            already trains only the head.
    """
    if kind not in CONTROLS:
        raise RunRefused(f"Unknown control {kind!r}. Use one of: {', '.join(CONTROLS)}.")
    if config.control is not None:
        raise RunRefused("This run is itself a control; start a control of the run it controls.")
    if kind == "head-only" and config.unfreeze == 0:
        raise RunRefused("This run already trains only the head (unfreeze depth 0): its head-only control would be "
                         "the same run. Compare it with the random-init control instead.")
    changes = {"control": kind, "control_of": control_of, "sweep_id": None,
               "label": CONTROL_LABELS[kind] + (f" of {control_of}" if control_of else "")}
    if kind == "head-only":
        changes["unfreeze"] = 0
    return RunConfig(**{**config.to_dict(), **changes})


def default_preset(best_preset: str | None, recorded_preset: str | None) -> str:
    """The preset a new run starts with: the Normalization page's best, else the model's recorded one, else ``unit``.

    A named setting that also fixes the resize (``teachable``: a centre crop) stays itself: the run's images are
    then decoded with that resize (`tlviz.presets.preset_resize`; `tlviz.finetune.preflight.check_run` refuses
    images resized otherwise).
    """
    for p in (best_preset, recorded_preset):
        if p in PRESETS:
            return p
    return "unit"


def _int(cfg, name, lo, hi=None):
    v = getattr(cfg, name)
    if isinstance(v, bool) or not isinstance(v, int):
        if isinstance(v, float) and v.is_integer():
            v = int(v)
            setattr(cfg, name, v)
        else:
            raise RunRefused(f"{name} must be a whole number, not {v!r}.")
    if v < lo or (hi is not None and v > hi):
        rng = f"at least {lo}" if hi is None else f"between {lo} and {hi}"
        raise RunRefused(f"{name} must be {rng}, not {v}.")


def _float(cfg, name, lo, hi, lo_open=False, hi_open=False):
    v = getattr(cfg, name)
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
        raise RunRefused(f"{name} must be a number, not {v!r}.")
    v = float(v)
    setattr(cfg, name, v)
    bad = v < lo or v > hi or (lo_open and v == lo) or (hi_open and v == hi)
    if bad:
        raise RunRefused(f"{name} must be in {'(' if lo_open else '['}{lo}, {hi}{')' if hi_open else ']'}, not {v}.")


def _rate(cfg, name):
    v = getattr(cfg, name)
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) or v <= 0:
        raise RunRefused(f"{name} (learning rate) must be a positive number such as 1e-3, not {v!r}.")
    if v > 100:
        raise RunRefused(f"{name} = {v} is far too large for a learning rate; use a value such as 1e-3 "
                         "(the learning-rate finder suggests one).")
    setattr(cfg, name, float(v))
