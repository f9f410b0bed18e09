"""``no-trainable-weights`` and ``head-frozen``: a copy whose head (and, if chosen, the top block) can train.

The copy keeps every other layer's ``trainable`` flag, makes the classification head trainable
(and, with `top_block`, the weighted layers of the base's top named block, BatchNormalization
excepted, as the Keras transfer-learning guide recommends), and is compiled, so ``fit`` trains it
at once. The proof is its freezing table (`tlviz.layers.layer_table`).
"""

from __future__ import annotations

from tlviz.errors import RepairRefused
from tlviz.layers import freezing_findings, iter_leaves, layer_table, totals
from tlviz.unfreeze import block_boundaries
from tlviz.repair.result import RepairStep

FREEZING_IDS = ("no-trainable-weights", "head-frozen")
#: The learning rate the repaired copy is compiled with (Adam), a common start for a new head.
LEARNING_RATE = 1e-3
_TABLE_COLUMNS = ("path", "class", "role", "trainable", "trainable_params", "non_trainable_params")


def _top_block(table) -> list[str]:
    """Paths of the base's weighted layers in its top named block (else its last weighted layer), BN excepted."""
    from tlviz.unfreeze import base_weight_layers

    base = base_weight_layers(table)
    if not len(base):
        return []
    bounds = block_boundaries(table)
    depth = min(d for d, _ in bounds) if bounds else 1
    top = base.iloc[len(base) - depth:]
    return [p for p, bn in zip(top["path"], top["is_bn"]) if not bn]


def _outputs_probabilities(model) -> bool:
    """Whether the model's output is probabilities (a softmax / sigmoid at the end) rather than logits."""
    from tlviz.repair.graph import leaf, output_dense

    try:
        path, after = output_dense(model)
    except RepairRefused:
        return True
    names = [getattr(getattr(layer, "activation", None), "__name__", "") for layer in after]
    names += [type(layer).__name__ for layer in after]
    names.append(getattr(getattr(leaf(model, path), "activation", None), "__name__", ""))
    return any(n in ("softmax", "sigmoid", "Softmax") for n in names)


def compile_for_fit(model, n_outputs: int) -> None:
    """Compile `model` with Adam (`LEARNING_RATE`), the cross-entropy its output calls for, and accuracy."""
    import keras

    probs = _outputs_probabilities(model)
    if n_outputs == 1:
        loss = keras.losses.BinaryCrossentropy(from_logits=not probs)
        metric = keras.metrics.BinaryAccuracy(name="accuracy", threshold=0.5 if probs else 0.0)
    else:
        loss = keras.losses.SparseCategoricalCrossentropy(from_logits=not probs)
        metric = keras.metrics.SparseCategoricalAccuracy(name="accuracy")
    model.compile(optimizer=keras.optimizers.Adam(LEARNING_RATE), loss=loss, metrics=[metric])
    # Built now, so the file holds its (zero) slots and Keras loads it without a warning about missing variables.
    model.optimizer.build(model.trainable_variables)


def freezing_table(model) -> list[dict]:
    """The weighted rows of the model's freezing table, as plain dicts (the proof of the repair)."""
    table = layer_table(model)
    rows = table[table["holds_weights"]]
    return [{c: (bool(v) if c == "trainable" else int(v) if c.endswith("params") else str(v))
             for c, v in zip(_TABLE_COLUMNS, values)}
            for values in rows[list(_TABLE_COLUMNS)].itertuples(index=False)]


def repair_freezing(chain, fix_id: str, top_block: bool, n_outputs: int, check_only: bool = False) -> RepairStep | None:
    """Make the head (and, with `top_block`, the top block) of the chain's copy trainable, and compile it.

    Args:
        chain: the `tlviz.repair.chain.Chain`.
        fix_id: ``"no-trainable-weights"`` or ``"head-frozen"`` (it must be what the model shows).
        top_block: also unfreeze the base's top block (BatchNormalization stays frozen).
        n_outputs: the model's output units (the loss follows them).
        check_only: only check that the repair applies. Defaults to `False`.

    Returns:
        The `RepairStep` (None with `check_only`).

    Raises:
        RepairRefused: the model does not show `fix_id`.
    """
    import keras

    from tlviz.repair.graph import copy_model

    table = layer_table(chain.model)
    found = {f.id for f in freezing_findings(chain.model, table)}
    before = totals(table)["trainable_params"]
    if fix_id not in found:
        why = {"no-trainable-weights": f"the model has {before:,} trainable parameters already",
               "head-frozen": "its classification head can already train, or nothing below it can"}[fix_id]
        raise RepairRefused(f"`{fix_id}` does not apply: {why}. Nothing to unfreeze.")
    head = [p for p, role, w in zip(table["path"], table["role"], table["holds_weights"]) if role == "head" and w]
    if not head:
        raise RepairRefused(f"`{fix_id}`: tlviz cannot tell which layers are the classification head of this model, "
                            "so it does not guess which to unfreeze.")
    if check_only:
        return None
    chosen = head + (_top_block(table) if top_block else [])
    new_model = copy_model(chain.model)
    flags = {leaf.path: leaf.layer.trainable for leaf in iter_leaves(new_model)}

    def open_containers(m):
        m.trainable = True  # Keras sets the flag of every layer inside too: restored below
        for layer in m.layers:
            if isinstance(layer, keras.Model):
                open_containers(layer)

    open_containers(new_model)
    for leaf in iter_leaves(new_model):
        leaf.layer.trainable = flags[leaf.path] or leaf.path in chosen
    compile_for_fit(new_model, n_outputs)
    after = totals(layer_table(new_model))["trainable_params"]
    chain.model = new_model
    return RepairStep(
        fix_id,
        f"Made {', '.join(chosen)} trainable" + (" (the head and the base's top block)" if top_block else
                                                 " (the classification head)")
        + f" and compiled the copy (Adam, learning rate {LEARNING_RATE:g}), ready for `fit`",
        "trainable_params", before, after, None, 0, 0,
        details={"unfrozen": chosen, "top_block": bool(top_block), "freezing_table": freezing_table(new_model)},
        notes=["The copy is compiled: `model.fit(...)` trains the layers listed; compile again only if you change "
               "`trainable` yourself. The Fine-tuning page runs it for a few epochs once it is the current model."])
