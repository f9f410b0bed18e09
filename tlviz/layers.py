"""The freezing-status table: every layer, nested models included.

Keras rule this module encodes: a layer's weights train only if the layer *and
every model containing it* have ``trainable=True``. BatchNormalization with
``trainable=False`` also runs in inference mode (moving statistics), and so does
every layer of a nested model the graph calls with ``training=False`` (the keras-io
guide's ``base(inputs, training=False)``; read by `tlviz.callargs`, not guessed).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from tlviz.callargs import keras_honours_recorded_training, recorded_training
from tlviz.findings import Finding

#: BatchNormalization layers: batch statistics in training, moving statistics in inference.
BN_CLASSES = ("BatchNormalization", "SyncBatchNormalization")
#: Layers that draw random numbers in training (dropout, noise) and carry no weights.
NOISE_CLASSES = ("Dropout", "SpatialDropout1D", "SpatialDropout2D", "SpatialDropout3D", "GaussianDropout",
                 "AlphaDropout", "GaussianNoise")
#: Keras augmentation layers that are random in training but not named ``Random…``.
AUGMENT_CLASSES = ("RandAugment", "AugMix", "CutMix", "MixUp", "Solarization")
#: Layers that prepare the input rather than compute features (see `is_preprocessing`).
PREPROCESSING_CLASSES = ("Rescaling", "Normalization", "Resizing", "CenterCrop", "AutoContrast", "Equalization")

LAYER_COLUMNS = [
    "depth", "path", "class", "output_shape", "trainable_params", "non_trainable_params",
    "own_trainable", "trainable", "is_bn", "role", "holds_weights", "frozen_container", "inference_by_call",
]


@dataclass
class _Leaf:
    path: str
    layer: object
    ancestors: tuple  # containing models, outermost first (excluding the root)


def random_in_training(layer) -> bool:
    """Whether a layer draws random numbers when called with ``training=True``.

    Dropout and noise layers (`NOISE_CLASSES`), augmentation layers (``Random…`` and
    `AUGMENT_CLASSES`); one whose ``rate`` or ``stddev`` is 0 does nothing and is not counted.
    BatchNormalization (batch statistics in training) is not random: see `BN_CLASSES`.

    Args:
        layer: a Keras layer.

    Returns:
        True when the layer's output in training mode is random.
    """
    cls = type(layer).__name__
    if cls in NOISE_CLASSES or cls in AUGMENT_CLASSES or cls.startswith("Random"):
        rate = getattr(layer, "rate", None)
        stddev = getattr(layer, "stddev", None)
        if rate is not None and float(rate) == 0.0:
            return False
        if stddev is not None and float(stddev) == 0.0:
            return False
        return True
    return False


def unique_name(name: str, taken: set[str]) -> str:
    """`name`, or `name_2`, `name_3`, ... : the first not in `taken` (which then holds it)."""
    out, i = name, 1
    while out in taken:
        i += 1
        out = f"{name}_{i}"
    taken.add(out)
    return out


def tensor_producer(tensor):
    """The operation (layer) that produced a symbolic Keras tensor, and the tensors it was called on.

    Returns:
        ``(operation, input_tensors)``; ``(None, [])`` for a tensor with no Keras history.
    """
    from tlviz.kerasinternals import input_tensors_of, tensor_history

    op, node_index, _ = tensor_history(tensor)
    if op is None:
        return None, []
    return op, input_tensors_of(op, node_index)


def iter_leaves(model, _prefix: str = "", _ancestors: tuple = ()):
    """Yield every non-model layer, depth first, descending into nested models."""
    import keras

    for layer in model.layers:
        if type(layer).__name__ == "InputLayer":
            continue
        path = f"{_prefix}{layer.name}"
        if isinstance(layer, keras.Model):
            yield from iter_leaves(layer, path + "/", _ancestors + (layer,))
        else:
            yield _Leaf(path, layer, _ancestors)


def has_initial_statistics(bn_layer) -> bool:
    """Whether a BatchNormalization layer still holds its initial moving statistics (mean 0, variance 1).

    Such a layer never saw a training batch: the file itself proves it, no
    measurement on images is needed.
    """
    import keras

    mm = keras.ops.convert_to_numpy(bn_layer.moving_mean).astype(np.float64)
    mv = keras.ops.convert_to_numpy(bn_layer.moving_variance).astype(np.float64)
    return bool(np.allclose(mm, 0.0) and np.allclose(mv, 1.0))


def param_count(v) -> int:
    """Number of values in a variable (1 for a scalar)."""
    return int(np.prod(v.shape)) if len(v.shape) else 1


def _output_shape(layer) -> str:
    try:
        return str(tuple(layer.output.shape))
    except Exception:  # shared layers have several outputs
        return "multiple"


def _output_rank(layer) -> int | None:
    """Rank of a layer's output (batch axis included), or None when it cannot be read."""
    try:
        return len(layer.output.shape)
    except Exception:  # a shared layer has several outputs: read its first call
        nodes = getattr(layer, "_inbound_nodes", None) or []
        outs = list(getattr(nodes[0], "output_tensors", None) or []) if nodes else []
        return len(outs[0].shape) if outs else None


def is_preprocessing(layer) -> bool:
    """Whether a layer prepares the input (scaling, resizing, augmentation) rather than computing features.

    `PREPROCESSING_CLASSES` (a `Normalization` layer holds weights but learns nothing in `fit`),
    and every layer that is random in training (`random_in_training`: augmentation, noise).

    Args:
        layer: a Keras layer.

    Returns:
        True for a preprocessing layer.
    """
    cls = type(layer).__name__
    return cls in PREPROCESSING_CLASSES or cls.startswith("Random") or random_in_training(layer)


def _roles(model) -> dict[int, str]:
    """Map id(layer) -> 'input' / 'base' / 'head' for every leaf, found by structure.

    The leaves are read in order (`iter_leaves`, nested models expanded), whatever
    wraps them:

    - **input**: every leaf before the first *feature layer* (a leaf that holds
      weights and is not preprocessing, `is_preprocessing`): Rescaling,
      Normalization, augmentation, a preprocessing sub-model.
    - **head**: where the feature map ends. The last leaf (from the first feature
      layer on) whose output keeps spatial axes (rank 3 or more) is the last
      feature layer; the head starts right after it, at the pooling or Flatten
      that collapses the map, and runs to the output. When that layer sits inside
      a nested model holding no weights after it (the feature extractor: a
      MobileNetV2, or a ``Sequential`` of it and its pooling as Teachable Machine
      writes it), the outermost such model belongs to the base whole, and the head
      starts after it. Without spatial layers (a model on vectors), the head is
      the last ``Dense`` layer and what follows it. A head holding no weights (a
      fully convolutional classifier) starts at the last layer that holds some.
    - **base**: the leaves between.

    Args:
        model: a Keras model.

    Returns:
        ``{id(leaf layer): role}``.
    """
    leaves = list(iter_leaves(model))
    n = len(leaves)
    if not n:
        return {}
    weighted = [i for i, leaf in enumerate(leaves) if leaf.layer.weights]
    features = [i for i in weighted if not is_preprocessing(leaves[i].layer)]
    first = features[0] if features else 0
    spatial = [i for i in range(first, n) if (_output_rank(leaves[i].layer) or 0) >= 3]
    if spatial and spatial[-1] < n - 1:
        last = spatial[-1]
        cut = last + 1
        # The outermost nested model around the last feature layer with no weights after it is the extractor.
        span: dict[int, list[int]] = {}
        for i, leaf in enumerate(leaves):
            for a in leaf.ancestors:
                span.setdefault(id(a), []).append(i)
        for a in leaves[last].ancestors:
            end = span[id(a)][-1]
            if not any(leaves[i].layer.weights for i in range(last + 1, end + 1)):
                cut = end + 1
                break
    else:
        dense = [i for i in range(first, n) if type(leaves[i].layer).__name__ == "Dense"]
        cut = dense[-1] if dense else (weighted[-1] if weighted else n)
    if weighted and weighted[-1] < cut and weighted[-1] >= first:
        cut = weighted[-1]  # a head without weights (fully convolutional): the last layer with weights classifies
    cut = max(cut, first)
    roles: dict[int, str] = {}
    for i, leaf in enumerate(leaves):
        roles[id(leaf.layer)] = "input" if i < first else "base" if i < cut else "head"
    return roles


def layer_table(model) -> pd.DataFrame:
    """One row per layer (nested models expanded), in order from input to output.

    Returns:
        DataFrame with columns `LAYER_COLUMNS`:
        ``trainable`` is the *effective* trainability (layer and all containing
        models trainable); parameter counts follow Keras (a frozen layer's
        weights count as non-trainable; weights shared by two layers are
        counted once, at the first); ``inference_by_call`` is the path of the
        outermost model around the layer that the graph calls with
        ``training=False`` (the layer always runs in inference mode), ``""`` when
        there is none.
    """
    roles = _roles(model)
    pinned = [p for p, value in recorded_training(model).items() if value is False]
    # Keras 3 trains exactly the variables in the root model's trainable_weights:
    # the root's flag and each layer's own flag count; a container's flag acts
    # only when it is set (it propagates to the layers inside at that moment).
    trainable_ids = {id(v) for v in model.trainable_weights}
    seen: set[int] = set()
    rows = []
    for depth, leaf in enumerate(iter_leaves(model)):
        layer = leaf.layer
        t = nt = 0
        for v in layer.weights:
            if id(v) in seen:
                continue
            seen.add(id(v))
            if id(v) in trainable_ids:
                t += param_count(v)
            else:
                nt += param_count(v)
        if any(getattr(v, "trainable", False) for v in layer.weights):
            effective = any(id(v) in trainable_ids for v in layer.weights)
        else:
            effective = bool(layer.trainable and all(a.trainable for a in leaf.ancestors) and model.trainable)
        containers_frozen = [a.name for a in leaf.ancestors if not a.trainable]
        cls = type(layer).__name__
        rows.append({
            "depth": depth,
            "path": leaf.path,
            "class": cls,
            "output_shape": _output_shape(layer),
            "trainable_params": t,
            "non_trainable_params": nt,
            "own_trainable": bool(layer.trainable),
            "trainable": effective,
            "is_bn": cls in BN_CLASSES,
            "role": roles.get(id(layer), "base"),
            "holds_weights": bool(layer.weights),
            "frozen_container": containers_frozen[0] if containers_frozen else "",
            "inference_by_call": next((p for p in pinned if leaf.path.startswith(p + "/")), ""),
        })
    return pd.DataFrame(rows, columns=LAYER_COLUMNS)


def head_input(model, table: pd.DataFrame | None = None):
    """Where the classification head starts in the model's top-level graph, and the features it reads.

    The head (`layer_table`'s ``role``) may be plain layers or a nested model (a Teachable Machine
    export's head ``Sequential``): the boundary is the first top-level layer whose layers are all head.

    Args:
        model: the Keras model.
        table: a precomputed `layer_table(model)`. Defaults to computing it.

    Returns:
        ``(index, tensor)``: the index in ``model.layers`` of the first head layer and its input
        tensor (the base's features).

    Raises:
        ValueError: no head, a head that starts inside a nested model that also holds base layers
            (its features are not a tensor of the top-level graph), or a head layer with several
            inputs; the message says which.
    """
    import keras

    table = layer_table(model) if table is None else table
    roles = dict(zip(table["path"], table["role"]))
    for idx, layer in enumerate(model.layers):
        if type(layer).__name__ == "InputLayer":
            continue
        if isinstance(layer, keras.Model):
            inside = {r for p, r in roles.items() if p.startswith(layer.name + "/")}
            if "head" in inside and inside != {"head"}:
                raise ValueError(f"The head starts inside the nested model '{layer.name}', which also holds base "
                                 "layers, so its features are not reachable from the outer model.")
            role = "head" if inside == {"head"} else "base"
        else:
            role = roles.get(layer.name, "base")
        if role != "head":
            continue
        try:
            tensor = layer.input
        except Exception as exc:  # a layer called several times
            raise ValueError(f"The input of the head layer '{layer.name}' could not be traced ({str(exc)[:120]}).") \
                from None
        if isinstance(tensor, (list, tuple)):
            raise ValueError(f"The head layer '{layer.name}' takes several inputs; one feature tensor is needed.")
        return idx, tensor
    raise ValueError("No classification head was found on top of the base.")


def totals(table: pd.DataFrame) -> dict[str, int]:
    """Total / trainable / non-trainable parameters of a `layer_table`."""
    t = int(table["trainable_params"].sum())
    nt = int(table["non_trainable_params"].sum())
    return {"total_params": t + nt, "trainable_params": t, "non_trainable_params": nt}


def inference_by_call(table: pd.DataFrame) -> dict[str, dict[str, int]]:
    """Layers kept in inference mode by a ``training=False`` call, per pinned model.

    Args:
        table: a `layer_table`.

    Returns:
        ``{model path: {"layers": n, "bn": n_batchnorm, "trainable_bn": n}}`` in table order;
        empty when no nested model is called with ``training=False``.
    """
    if "inference_by_call" not in table:
        return {}
    out: dict[str, dict[str, int]] = {}
    for path, rows in table[table["inference_by_call"] != ""].groupby("inference_by_call", sort=False):
        out[path] = {"layers": int(len(rows)), "bn": int(rows["is_bn"].sum()),
                     "trainable_bn": int((rows["is_bn"] & rows["trainable"]).sum())}
    return out


def inference_by_call_notes(table: pd.DataFrame) -> list[str]:
    """One sentence per model called with ``training=False`` that holds BatchNormalization layers.

    Args:
        table: a `layer_table`.

    Returns:
        E.g. ``["BatchNormalization runs in inference mode: the base `mobilenetv2_0.35_96` is called
        with `training=False` (52 layers, 52 of them trainable: their scale and offset train, their
        moving statistics stay)."]``.
    """
    out = []
    for path, n in inference_by_call(table).items():
        if not n["bn"]:
            continue
        trainable = (f", {n['trainable_bn']} of them trainable: their scale and offset train, their moving "
                     "statistics stay" if n["trainable_bn"] else "")
        out.append(f"BatchNormalization runs in inference mode: the base `{path}` is called with "
                   f"`training=False` ({n['bn']} layer{'s' if n['bn'] != 1 else ''}{trainable}).")
    return out


#: Why trainable BatchNormalization in a base matters, said without a measurement (`freezing_findings`).
BN_TRAINABLE_ADVICE = ("Advice for fine-tuning, not a fault measured on this model: it matters once you fine-tune "
                       "the base, the more so with small batches. In `fit`, a trainable BatchNormalization layer "
                       "normalizes with each batch's statistics and updates its moving statistics from your "
                       "batches, which can wreck what the base learned.")
#: What to do about it (`freezing_findings`, and the measured finding of `tlviz.diagnose`).
BN_TRAINABLE_FIX = ("Keep BN frozen when you fine-tune (it then runs in inference mode): call the base with "
                    "`base(x, training=False)` or set `layer.trainable = False` on every BatchNormalization "
                    "layer, then compile again.")


def freezing_findings(model, table: pd.DataFrame | None = None) -> list[Finding]:
    """Plain-language problems with the freezing setup, most severe first.

    A trainable BatchNormalization layer inside a base the model calls with
    ``training=False`` runs in inference mode as the model is written (`layer_table`'s
    ``inference_by_call``), so it does not count for ``bn-trainable-in-base``: the model is
    written the way the keras-io guide recommends. When the installed Keras does not honour that
    argument in ``fit`` (Keras 3.15 does not: `tlviz.callargs.keras_honours_recorded_training`),
    the info finding ``keras-overrides-training-false`` says so, with the explicit fix for a user
    who trains with that Keras (tlviz's own runs keep the call's ``training=False``).

    ``bn-trainable-in-base`` is advice at ``info`` severity: read from the file alone, trainable
    BatchNormalization in an unfrozen base says what *would* happen in a fine-tuning run, not
    that anything is wrong with the model (one trained end to end has it by design).
    `tlviz.diagnose` measures its effect on the user's images and raises it to a warning only
    when that effect is real.

    Args:
        model: the Keras model.
        table: its `layer_table`. Defaults to computing it.

    Returns:
        Findings with ids ``no-trainable-weights``, ``head-frozen``, ``trainable-inside-frozen-model``,
        ``bn-trainable-in-base`` and ``keras-overrides-training-false`` (each only when it applies).
    """
    table = layer_table(model) if table is None else table
    out: list[Finding] = []
    tot = totals(table)
    weighted = table[table["holds_weights"]]
    if tot["total_params"] > 0 and tot["trainable_params"] == 0:
        frozen_models = sorted({p.split("/")[0] for p in table["path"] if "/" in p})
        out.append(Finding(
            id="no-trainable-weights", severity="error", area="finetuning",
            title="No trainable weights — this model cannot learn",
            evidence={"trainable_params": 0, "non_trainable_params": tot["non_trainable_params"],
                      "frozen_layers": int(len(weighted))},
            fix=("Every layer is frozen, so `fit` changes nothing. Make at least the classification head "
                 "trainable (`model.layers[-1].trainable = True`), then call `model.compile(...)` again "
                 "— a change of `trainable` only takes effect after `compile`."
                 + (f" Nested models found: {', '.join(frozen_models)}; a layer inside one trains only if "
                    "that model is trainable too." if frozen_models else "")),
        ))
        return out
    head = weighted[weighted["role"] == "head"]
    others = weighted[weighted["role"] != "head"]
    if len(head) and head["trainable_params"].sum() == 0 and others["trainable_params"].sum() > 0:
        out.append(Finding(
            id="head-frozen", severity="error", area="finetuning",
            title="The classification head is frozen",
            evidence={"head_layers": list(head["path"]),
                      "trainable_params_below_head": int(others["trainable_params"].sum())},
            fix=("Layers below the head can train but the head cannot, so the outputs cannot adapt to your "
                 f"classes. Set `trainable = True` on {', '.join(head['path'])} and compile again."),
        ))
    odd = table[table["holds_weights"] & table["trainable"] & (table["frozen_container"] != "")]
    if len(odd):
        containers = sorted(set(odd["frozen_container"]))
        out.append(Finding(
            id="trainable-inside-frozen-model", severity="warning", area="finetuning",
            title="Layers are trainable inside a model marked as frozen",
            evidence={"layers": list(odd["path"][:10]), "n_layers": int(len(odd)), "frozen_models": containers},
            fix=(f"{', '.join(containers)} has `trainable=False`, but {len(odd)} layers inside it were set "
                 "trainable afterwards. Keras 3 trains them anyway (tf.keras 2 did not), so the flags say "
                 "\"frozen\" while training changes these weights. Make the intent explicit: set "
                 "`base.trainable = True`, then freeze the layers you want frozen one by one, and compile again."),
        ))
    # BN inside a base called with training=False runs in inference mode whatever its flag (as the model is
    # written; tlviz's own runs honour it, see tlviz.callargs).
    by_call = table["inference_by_call"] != "" if "inference_by_call" in table else pd.Series(False, table.index)
    base_bn = table[(table["role"] == "base") & table["is_bn"] & table["trainable"] & ~by_call]
    base_train = table[(table["role"] == "base") & table["holds_weights"] & table["trainable"]]
    base_frozen = table[(table["role"] == "base") & table["holds_weights"] & ~table["trainable"]]
    nested_base = bool(table[table["role"] == "base"]["path"].str.contains("/").any())
    # A plain model trained end to end has trainable BN by design; the warning is for a
    # pre-trained base being fine-tuned: a nested base, or a base partly frozen.
    if len(base_bn) and len(base_train) and (nested_base or len(base_frozen)):
        # Advice read from the file: whether it hurts is measured on images (tlviz.diagnose's check).
        out.append(Finding(
            id="bn-trainable-in-base", severity="info", area="finetuning",
            title="BatchNormalization layers are trainable inside the base: they would update if you fine-tune it",
            evidence={"trainable_bn_layers": int(len(base_bn)), "examples": list(base_bn["path"][:5]),
                      "measured_on_images": False},
            fix=BN_TRAINABLE_ADVICE + " " + BN_TRAINABLE_FIX,
        ))
        return out
    pinned_bn = table[(table["role"] == "base") & table["is_bn"] & table["trainable"] & by_call]
    if len(pinned_bn) and len(base_train) and not keras_honours_recorded_training():
        import keras

        bases = sorted(set(pinned_bn["inference_by_call"]))
        out.append(Finding(
            id="keras-overrides-training-false", severity="info", area="finetuning",
            title=f"Keras {keras.__version__} updates these BatchNormalization layers in `fit` despite `training=False`",
            evidence={"trainable_bn_layers": int(len(pinned_bn)), "examples": list(pinned_bn["path"][:5]),
                      "called_with_training_false": bases, "keras_version": keras.__version__,
                      "keras_honours_training_false": False},
            fix=(f"The model calls {', '.join(f'`{b}`' for b in bases)} with `training=False`, which kept "
                 "BatchNormalization in inference mode in tf.keras 2 and in the keras-io fine-tuning guide. The "
                 f"installed Keras ({keras.__version__}, measured in this process) passes `fit`'s `training=True` "
                 f"into the nested model anyway, so its {len(pinned_bn)} trainable BatchNormalization layers "
                 "update their moving statistics from your batches. Freeze them explicitly before compiling:\n"
                 "```python\nfor layer in base.layers:\n    if isinstance(layer, keras.layers.BatchNormalization):\n"
                 "        layer.trainable = False\nmodel.compile(...)\n```\ntlviz's own fine-tuning runs keep the "
                 "call's `training=False`."),
        ))
    return out
