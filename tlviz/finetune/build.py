"""The model a run trains: a clone of the loaded model, with a new head if needed.

The loaded model is never touched: `clone` copies architecture and weights,
and every change (new head, trainable flags) happens on the copy. The copy runs
as the model is written: a nested model called with ``training=False`` (the
keras-io guide's ``base(inputs, training=False)``) stays in inference mode during
the run, which Keras 3 alone would not do (`tlviz.callargs`).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from tlviz.callargs import honour_recorded_training, recorded_training
from tlviz.contentkeys import model_key
from tlviz.errors import RunRefused
from tlviz.kerasinternals import tensor_history
from tlviz.finetune.config import RunConfig
from tlviz.layers import NOISE_CLASSES, freezing_findings, head_input, layer_table, totals, unique_name

#: Names given to the layers of a new head (a numeric suffix is added on clashes).
NEW_HEAD_NAMES = ("tlviz_head_pool", "tlviz_head_dropout", "tlviz_head")


@dataclass
class HeadDecision:
    """Whether a run replaces the classification head, and why.

    Attributes:
        new_head: the decision.
        forced: `True` when the class count leaves no choice.
        reason: one sentence for the user.
    """

    new_head: bool
    forced: bool
    reason: str


@dataclass
class BuiltModel:
    """The run's own model.

    Attributes:
        model: the Keras model to train (a clone; owns its weights).
        new_head: whether the head was replaced.
        from_logits: whether the output is logits (a linear last layer).
        notes: remarks for the user (e.g. a dropout skipped below a new head).
    """

    model: object
    new_head: bool
    from_logits: bool
    notes: list[str] = field(default_factory=list)


def clone(model):
    """A copy of `model` with its own weights and the same trainable flags.

    Uses ``keras.models.clone_model`` followed by ``set_weights``; the
    original model is only read. The copy honours the recorded ``training``
    arguments of nested models (`tlviz.callargs.honour_recorded_training`).
    """
    import keras

    copy = keras.models.clone_model(model)
    copy.set_weights(model.get_weights())
    honour_recorded_training(copy)
    return copy


def random_clone(model, seed: int):
    """The same architecture with fresh random weights, seeded (a random-init control's starting point).

    Every initializer is seeded from `seed` (`tlviz.diagnose.clones.fresh_clone`), BatchNormalization
    statistics start at their initial values, and the copy honours the recorded ``training``
    arguments of nested models as `clone` does. The original model is only read.
    """
    from tlviz.diagnose.clones import fresh_clone

    copy = fresh_clone(model, seed)
    honour_recorded_training(copy)
    return copy


def inference_call_notes(model) -> list[str]:
    """Sentences for the user on nested models the run keeps in inference mode (``training=False`` calls).

    Args:
        model: the run's model.

    Returns:
        One sentence per nested model called with ``training=False`` that holds
        BatchNormalization or dropout layers; empty otherwise.
    """
    from tlviz.layers import BN_CLASSES, iter_leaves, random_in_training

    out = []
    for path, value in recorded_training(model).items():
        if value is not False:
            continue
        leaves = [leaf.layer for leaf in iter_leaves(model) if leaf.path.startswith(path + "/")]
        n_bn = sum(type(layer).__name__ in BN_CLASSES for layer in leaves)
        n_noise = sum(random_in_training(layer) for layer in leaves)
        if not n_bn and not n_noise:
            continue
        what = " and ".join(part for part in (
            f"{n_bn} BatchNormalization layer{'s' if n_bn != 1 else ''} (moving statistics unchanged)" if n_bn else "",
            f"{n_noise} dropout / noise layer{'s' if n_noise != 1 else ''}" if n_noise else "") if part)
        out.append(f"The model calls '{path}' with `training=False`: its {what} stay in inference mode during "
                   "this run, as the model is written.")
    return out


def decide_head(n_outputs: int, model_class_names: list[str] | None, image_class_names: list[str],
                requested: bool | None = None) -> HeadDecision:
    """Decide whether a run needs a new classification head.

    Args:
        n_outputs: the model's number of outputs.
        model_class_names: class names the model records (metadata), if any.
        image_class_names: the image set's classes.
        requested: the user's choice; `None` decides automatically.
            Defaults to `None`.

    Returns:
        A `HeadDecision`.

    Raises:
        RunRefused: `requested=False` while the class count differs.
    """
    n = len(image_class_names)
    if n_outputs != n:
        if requested is False:
            raise RunRefused(
                f"The model has {n_outputs} outputs but the image set has {n} classes, so its head cannot be "
                "fine-tuned as it is. Choose 'new head' (or leave it automatic) to replace the head by a fresh "
                f"one with {n} outputs.")
        return HeadDecision(True, True, f"new head forced: the model has {n_outputs} outputs, the image set {n} class{'es' if n != 1 else ''}")
    if requested is not None:
        return HeadDecision(bool(requested), False, "new head chosen" if requested else "the model's own head is fine-tuned")
    if model_class_names and list(model_class_names) != list(image_class_names):
        return HeadDecision(True, False, "new head: the model records other class names "
                            f"({', '.join(map(str, model_class_names[:5]))}…) than the image set's")
    return HeadDecision(False, False, "the model's own head is fine-tuned (same number of classes)")


def check_trainable(loaded, config: RunConfig) -> None:
    """Refuse a run on a model with no trainable weights unless the user opted in.

    Raises:
        RunRefused: with the "no trainable weights" explanation and the way out.
    """
    findings = [f for f in freezing_findings(loaded.model) if f.id == "no-trainable-weights"]
    if findings and not config.unfreeze_frozen:
        f = findings[0]
        raise RunRefused(
            f"{f.title}: all {f.evidence['non_trainable_params']:,} parameters are frozen. {f.fix} To see what training can do anyway, let the run unfreeze the head for "
            "you (the 'Unfreeze the head for this run' option, `unfreeze_frozen=True`).")


def build_run_model(loaded, n_classes: int, config: RunConfig, head: HeadDecision):
    """Clone the loaded model (fresh random weights for a random-init control) and, if decided, replace its head.

    Args:
        loaded: the `LoadedModel` (read only).
        n_classes: classes of the image set.
        config: the run's configuration (uses `head_dropout`).
        head: the `HeadDecision`.

    Returns:
        A `BuiltModel`. Trainable flags are not set yet (see
        `tlviz.unfreeze.apply_unfreeze`).
    """
    import keras

    model = random_clone(loaded.model, config.seed) if config.random_init else clone(loaded.model)
    notes: list[str] = inference_call_notes(model)
    if not head.new_head:
        return BuiltModel(model, False, not _outputs_probabilities(model), notes)
    try:
        _, features = head_input(model)
    except ValueError as exc:
        raise RunRefused(f"A new head cannot be attached: {exc} Fine-tune the model's own head instead "
                         "(keep the class count of its outputs).") from None
    # A dropout directly below the old classifier belonged to it: the new head brings its own.
    while True:
        producer = tensor_history(features)[0]
        if producer is None or type(producer).__name__ not in NOISE_CLASSES:
            break
        notes.append(f"'{producer.name}' (a {type(producer).__name__} just below the old head) is left out: the new "
                     "head has its own dropout.")
        features = producer.input
    taken = {layer.name for layer in model.layers}
    names = [unique_name(n, taken) for n in NEW_HEAD_NAMES]
    x = features
    if len(x.shape) == 4:
        x = keras.layers.GlobalAveragePooling2D(name=names[0])(x)
    elif len(x.shape) != 2:
        x = keras.layers.Flatten(name=names[0])(x)
    if config.head_dropout > 0:
        x = keras.layers.Dropout(config.head_dropout, name=names[1])(x)
    out = keras.layers.Dense(n_classes, activation="softmax", name=names[2])(x)
    new = keras.Model(model.inputs, out, name=f"{model.name}_finetuned")
    honour_recorded_training(new)  # the layers are the clone's (already honoured): idempotent
    return BuiltModel(new, True, False, notes)


def start_weights_key(loaded, config: RunConfig) -> str:
    """A key of the weights a run starts from, for the activation cache: the model file's content key
    (`tlviz.contentkeys.model_key`), with the seed of a random-init control's fresh weights.

    Args:
        loaded: the `LoadedModel`.
        config: the run's configuration (``random_init``, ``seed``).

    Returns:
        The key.
    """
    key = model_key(loaded)
    return f"{key}|random-init:{config.seed}" if config.random_init else key


def trainable_params(model) -> int:
    """Trainable parameters, counted as Keras does (shared weights once)."""
    return totals(layer_table(model))["trainable_params"]


def _outputs_probabilities(model) -> bool:
    """Whether the model ends in a softmax (probabilities) rather than logits."""
    from tlviz.layers import iter_leaves

    leaves = [leaf.layer for leaf in iter_leaves(model)]
    for layer in reversed(leaves):
        cls = type(layer).__name__
        if cls == "Softmax":
            return True
        act = getattr(layer, "activation", None)
        if act is None:
            continue  # shape-only layers (Dropout, Flatten, ...)
        name = getattr(act, "__name__", "")
        if name == "softmax":
            return True
        if name == "linear":
            if cls == "Activation":
                continue
            return False
        break
    # Unusual last layer: look at what it outputs (a compiled pass, as many probe images as the budget allows).
    from tlviz.memory import forward, plan_batch

    shape = tuple(int(d or 8) for d in model.inputs[0].shape[1:])
    n = plan_batch(model, "inference", n=4).batch_size
    probe = np.random.default_rng(0).normal(size=(n, *shape)).astype("float32")
    out = forward(model)(probe)
    return bool(np.all(out >= 0) and np.allclose(out.sum(axis=-1), 1.0, atol=1e-3))


def depth_choices(table) -> list[tuple[int, str]]:
    """Unfreeze depths worth offering, with labels, for a depth control that snaps to blocks.

    Args:
        table: `tlviz.layers.layer_table` of the model.

    Returns:
        ``[(0, "head only"), (d, "from block_16 (8 layers)"), ..., (n, "whole base (n layers)")]``;
        without named blocks, every depth from 0 to n.
    """
    from tlviz.unfreeze import base_weight_layers, block_boundaries

    n = len(base_weight_layers(table))
    out = [(0, "head only")]
    blocks = block_boundaries(table)
    if blocks:
        out += [(d, f"from {name} ({d} layers)") for d, name in blocks if 0 < d < n]
    else:
        out += [(d, f"top {d} layers") for d in range(1, n)]
    if n > 0:
        out.append((n, f"whole base ({n} layers)"))
    return out


def snap_depth(depth: int, choices: list[tuple[int, str]]) -> int:
    """The block-boundary depth nearest to `depth` (ties go to the shallower one)."""
    depths = [d for d, _ in choices]
    return min(depths, key=lambda d: (abs(d - depth), d))
