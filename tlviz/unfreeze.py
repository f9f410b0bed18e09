"""The unfreeze preview: which layers an unfreeze depth would train, and setting those flags on a copy.

Unfreeze depth counts the weight-holding layers of the base (`tlviz.layers` ``role``) from the top; named
blocks (``block_3``, ``conv4_block2``) give the depths a slider can snap to.
"""

from __future__ import annotations

import re

import pandas as pd

from tlviz.layers import iter_leaves, layer_table, param_count

_BLOCK_PATTERNS = [
    re.compile(r"^(conv\d+_block\d+)_"),          # ResNet: conv4_block2_1_conv
    re.compile(r"^(block_?\d+[a-z]?)_"),          # MobileNetV2 block_3_expand, EfficientNet block2a_...
    re.compile(r"^(expanded_conv(?:_\d+)?)_"),    # MobileNetV3
    re.compile(r"^conv_(?:dw|pw)_(\d+)"),         # MobileNet v1
    re.compile(r"^(mixed\d+)"),                   # Inception
    re.compile(r"^(stage\d+(?:_unit\d+)?)_"),
]


def block_of(name: str) -> str | None:
    """The named block a layer belongs to (``block_3`` for ``block_3_expand``), if any."""
    leaf = name.rsplit("/", 1)[-1]
    for pat in _BLOCK_PATTERNS:
        m = pat.match(leaf)
        if m:
            return m.group(1)
    return None


def base_weight_layers(table: pd.DataFrame) -> pd.DataFrame:
    """Rows of the base that hold weights, input to output (what unfreeze depth counts)."""
    return table[(table["role"] == "base") & table["holds_weights"]]


def block_boundaries(table: pd.DataFrame) -> list[tuple[int, str]]:
    """Unfreeze depths that start exactly at a named block.

    Returns:
        ``[(depth, label), ...]`` sorted by depth, e.g. ``(3, "block_16")``;
        empty when the architecture has no named blocks.
    """
    base = list(base_weight_layers(table)["path"])
    n = len(base)
    out = []
    for i in range(n):
        b = block_of(base[i])
        if b is None:
            continue
        if i == 0 or block_of(base[i - 1]) != b:
            out.append((n - i, b))
    return sorted(out)


def unfreeze_plan(model, depth: int, train_bn: bool = False, table: pd.DataFrame | None = None) -> pd.DataFrame:
    """Which layers *would* train with the last `depth` weighted base layers unfrozen.

    The head always trains; ``depth=0`` trains only the head; a depth larger
    than the base unfreezes all of it. The model is not changed.

    Args:
        model: the Keras model.
        depth: number of weight-holding base layers, counted from the top.
        train_bn: whether BatchNormalization layers in the unfrozen range train.
            Defaults to `False` (they stay frozen, in inference mode, as the
            Keras transfer-learning guide recommends).
        table: a precomputed `layer_table(model)`. Defaults to computing it.

    Returns:
        The layer table with extra columns ``would_train`` (bool) and
        ``would_train_params``.
    """
    if depth < 0:
        raise ValueError(f"Unfreeze depth must be 0 or more, not {depth}.")
    table = (layer_table(model) if table is None else table).copy()
    base = base_weight_layers(table)
    chosen = set(base["path"].iloc[len(base) - min(depth, len(base)):]) if depth > 0 else set()
    trainable_size = _trainable_sizes(model)
    would, params = [], []
    for _, row in table.iterrows():
        if not row["holds_weights"]:
            would.append(False)
            params.append(0)
            continue
        if row["role"] == "head":
            w = True
        elif row["role"] == "base":
            w = row["path"] in chosen and (train_bn or not row["is_bn"])
        else:
            w = False
        would.append(bool(w))
        params.append(trainable_size.get(row["path"], 0) if w else 0)
    table["would_train"] = would
    table["would_train_params"] = params
    return table


def _capable_ids(layer) -> set[int]:
    """Ids of the variables a layer would train if trainable (BN moving statistics excluded)."""
    own = getattr(layer, "_trainable_variables", None)
    if own is None:  # fall back on names
        return {id(v) for v in layer.weights if "moving_" not in v.path}
    ids = {id(v) for v in own}
    for sub in getattr(layer, "_layers", []) or []:
        ids |= _capable_ids(sub)
    return ids


def _trainable_sizes(model) -> dict[str, int]:
    """Per leaf path, parameters in variables that can train (BN moving stats excluded)."""
    seen: set[int] = set()
    out = {}
    for leaf in iter_leaves(model):
        capable = _capable_ids(leaf.layer)
        n = 0
        for v in leaf.layer.weights:
            if id(v) in seen:
                continue
            seen.add(id(v))
            if id(v) in capable:
                n += param_count(v)
        out[leaf.path] = n
    return out


def apply_unfreeze(model, depth: int, train_bn: bool = False) -> None:
    """Set ``trainable`` flags on `model` (a clone you own!) to follow `unfreeze_plan`.

    Compile the model afterwards: Keras only honours ``trainable`` changes at compile.
    """
    import keras

    plan = unfreeze_plan(model, depth, train_bn)
    would = dict(zip(plan["path"], plan["would_train"]))

    def _set_models(m):
        m.trainable = True
        for layer in m.layers:
            if isinstance(layer, keras.Model):
                _set_models(layer)

    _set_models(model)
    for leaf in iter_leaves(model):
        if leaf.layer.weights:
            leaf.layer.trainable = bool(would.get(leaf.path, False))
