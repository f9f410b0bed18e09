"""Checks on what the head puts out: one class for every image, and an output layer the loss misreads.

- ``prediction-collapse`` (`check_prediction_collapse`): the model gives nearly every image
  the same class (compared with how often that class occurs in the labels, on the same
  images, with a paired 95 % interval), or the base passes the same features whatever the
  image. Measured under the preset the model expects, from the preset comparison's own
  predictions (no extra pass; the features come from its feature tap, or from one pass over
  a small sample).
- ``output-loss-mismatch`` (`check_output_loss_mismatch`): the last layer's activation and
  the loss the model was compiled with disagree. Read from the model's graph and the loss the
  file records (`tlviz.models.compiled`; a compiled in-memory model's own loss first): no images.

How a check is written (its registry entry, ``check.finding``, ``check.threshold``,
`CheckSkipped`): see `tlviz.diagnose.base.Check`.
"""

from __future__ import annotations

import re

import numpy as np

from tlviz.diagnose.base import SEED, Check, balanced_sample
from tlviz.diagnose.context import DiagnosisContext
from tlviz.errors import CheckSkipped
from tlviz.findings import Finding
from tlviz.layers import tensor_producer
from tlviz.stats import decide, format_points, paired_difference

#: The features' spread is measured on at most this many images (a seeded, class-balanced sample).
SPREAD_IMAGES = 64
#: Layers that pass their input's meaning on unchanged (looked through to find the output's activation).
_PASS_THROUGH = ("Dropout", "SpatialDropout1D", "SpatialDropout2D", "GaussianNoise", "GaussianDropout",
                 "AlphaDropout", "Identity", "Reshape", "Flatten", "ActivityRegularization")
#: Losses that expect probabilities unless told ``from_logits=True``.
_PROBABILITY_LOSSES = ("categorical_crossentropy", "sparse_categorical_crossentropy", "binary_crossentropy",
                       "binary_focal_crossentropy", "categorical_focal_crossentropy")
_CATEGORICAL = ("categorical_crossentropy", "sparse_categorical_crossentropy", "categorical_focal_crossentropy")
_ALIASES = {"bce": "binary_crossentropy", "logcosh": "log_cosh", "mse": "mean_squared_error",
            "mae": "mean_absolute_error", "kld": "kl_divergence", "kullback_leibler_divergence": "kl_divergence"}


# -- prediction-collapse -----------------------------------------------------------------

def _feature_spread(ctx: DiagnosisContext, preset: str) -> tuple[float, int, str] | None:
    """How much the head's input changes from image to image: ``(spread, images, layer)``, or None.

    The spread is ``|F - mean(F)| / |F|`` (Frobenius norms) over a sample: 0 when every image gets the
    same feature vector (or all zeros), about 1 for features that vary as much as they are large.
    """
    from tlviz.diagnose.probe import layer_features, tapped_features

    try:
        setup = ctx.probe_setup
    except CheckSkipped:
        setup = None
    feats = None
    if setup is not None:
        feats = tapped_features(ctx, preset, setup["sample"])
        idx, layer = setup["idx"], setup["name"]
    else:
        from tlviz.diagnose.probe import feature_tensor

        try:
            idx, _, layer = feature_tensor(ctx.model)
        except CheckSkipped:
            return None
    if feats is None:
        sample = balanced_sample(np.asarray(ctx.images.labels), SPREAD_IMAGES, SEED)
        feats = layer_features(ctx.model, idx, ctx.images.images[sample], preset)
    feats = np.nan_to_num(np.asarray(feats, dtype=np.float64))
    if len(feats) < 2:
        return None
    size = float(np.linalg.norm(feats))
    spread = float(np.linalg.norm(feats - feats.mean(axis=0))) / size if size > 0 else 0.0
    return spread, int(len(feats)), layer


def check_prediction_collapse(ctx: DiagnosisContext, check: Check) -> list[Finding]:
    """``prediction-collapse``: one class for nearly every image, or features that ignore the image."""
    ctx.require_finite()
    report = ctx.normalization
    preset = ctx.working_preset
    if preset not in report.predictions:
        raise CheckSkipped(f"`{preset}` was not evaluated in this diagnosis, so its predictions are unknown.")
    preds = np.asarray(report.predictions[preset], dtype=np.int64)
    conf = np.asarray(report.confidences[preset], dtype=np.float64)
    n, k = len(preds), ctx.k
    names = list(ctx.match.output_names)
    counts = np.bincount(preds, minlength=k)
    top = int(counts.argmax())
    share = float(counts[top] / max(n, 1))
    measured = _feature_spread(ctx, preset)
    dead = measured is not None and measured[0] < check.threshold("feature_spread")
    ev = ctx.preset_evidence
    labels = ev.labels
    d = None
    if labels is not None and len(np.unique(labels)) >= 2:
        d = paired_difference(preds == top, np.asarray(labels) == top)
        looks = share >= check.threshold("share") and d.difference >= check.threshold("excess")
        verdict = decide(d.low, d.high, check.threshold("excess")) if looks else False
        if verdict is None and not dead:
            raise CheckSkipped(
                f"Too few images to decide: the model gives '{names[top]}' to {share:.1%} of {n} images, which hold "
                f"{d.accuracy_b:.1%} of that class; the 95 % interval of the excess ({format_points(d.low, d.high)}) "
                f"reaches below {check.threshold('excess') * 100:.0f} points. Add images to decide.")
        collapsed = bool(verdict)
    else:
        if measured is None:
            raise CheckSkipped(
                "Without labels a one-class image set cannot be told from a model that gives every image one class, "
                "and the features at the head's input could not be read to see whether they depend on the image.")
        collapsed = False
    if not (collapsed or dead):
        return []
    mean_conf = float(conf.mean()) if n else 0.0
    histogram = {names[c]: int(counts[c]) for c in np.argsort(-counts) if counts[c]}
    if dead:
        cause = (f"The features at the head's input barely change from image to image (relative spread "
                 f"{measured[0]:.2g} at '{measured[2]}'): the base passes the same vector whatever the image. A dead "
                 "base: weights that did not load (`weights=None`, a `load_weights` that skipped layers), a layer "
                 "that zeroes everything, or inputs so far off the expected scale that every unit saturates.")
    elif mean_conf >= 0.99:
        cause = (f"The head answers '{names[top]}' with near certainty (mean confidence {mean_conf:.1%}) whatever the "
                 "image: a saturated head (a huge bias after too high a learning rate, diverged training), or inputs "
                 "far off the scale the model was trained on.")
    else:
        cause = (f"The head barely uses the features (mean confidence {mean_conf:.1%}): an untrained or collapsed "
                 "head (all-frozen training, a head trained on one class, extreme class weights).")
    evidence = {"preset": preset, "predicted_class": names[top], "predicted_share": share,
                "prediction_histogram": histogram, "mean_confidence": mean_conf, "n_images": n,
                "feature_spread": None if measured is None else measured[0],
                "feature_layer": None if measured is None else measured[2],
                "feature_images": None if measured is None else measured[1]}
    if d is not None:
        evidence.update({"label_share": d.accuracy_b, "excess": d.difference, "excess_interval": [d.low, d.high]})
        title = (f"The model gives '{names[top]}' to {share:.0%} of the images, which hold {d.accuracy_b:.0%} of that "
                 "class")
        lead = (f"Under `{preset}` {counts[top]} of {n} images are predicted '{names[top]}', {d.difference * 100:.0f} "
                f"points more than the labels hold (95 % interval {format_points(d.low, d.high)}). ")
    else:
        title = f"The model's output does not depend on the image: every image is '{names[top]}'"
        lead = f"Under `{preset}` every one of the {n} images is predicted '{names[top]}'. "
    fix = (lead + cause + " (tensorflow issue 46999 shows this symptom.) Check the base's features and the "
           "prediction histogram on images prepared exactly as in training, then retrain the head at a lower "
           "learning rate, or reload the pre-trained weights:\n```python\nimport numpy as np\nimport keras\n\n"
           "probs = model.predict(images)  # images prepared exactly as in training\n"
           "print(np.bincount(probs.argmax(axis=1), minlength=probs.shape[1]))  # one class for nearly all?\n"
           "features = keras.Model(model.inputs, model.layers[-2].output).predict(images)\n"
           "print(features.std(axis=0).mean())  # about 0: the base passes the same vector for every image\n```")
    return [check.finding(title, evidence, fix)]


# -- output-loss-mismatch ----------------------------------------------------------------

def _activation_of(layer) -> str | None:
    name = type(layer).__name__
    if name == "Softmax":
        return "softmax"
    act = getattr(layer, "activation", None)
    if act is None:
        return None
    return str(getattr(act, "__name__", None) or type(act).__name__).lower()


def output_activation(model) -> tuple[str | None, str | None, int]:
    """``(layer name, activation, units)`` of the model's (first) output.

    Looks through nested models and layers that do not change the values' meaning (Dropout,
    Reshape...). The activation is None when the last layer's cannot be read (a Lambda, a custom op).
    """
    import keras

    units = int(model.outputs[0].shape[-1] or 0)
    if isinstance(model, keras.Sequential):
        layers = list(model.layers)
        while layers and type(layers[-1]).__name__ in _PASS_THROUGH:
            layers.pop()
        if not layers:
            return None, None, units
        last = layers[-1]
        if isinstance(last, keras.Model):
            name, act, _ = output_activation(last)
            return name, act, units
        return last.name, _activation_of(last), units
    tensor = model.outputs[0]
    while True:
        op, inputs = tensor_producer(tensor)
        if op is None:
            return None, None, units
        if isinstance(op, keras.Model):
            name, act, _ = output_activation(op)
            return name, act, units
        if type(op).__name__ in _PASS_THROUGH and inputs:
            tensor = inputs[0]
            continue
        return op.name, _activation_of(op), units


def _snake(name: str) -> str:
    return re.sub(r"(?<!^)(?=[A-Z])", "_", name).lower()


def read_loss(loss) -> tuple[str, bool] | None:
    """``(loss name, from_logits)`` of a loss as Keras serializes it, or None when it names none.

    Args:
        loss: a name (``"sparse_categorical_crossentropy"``), a serialized loss object
            (``{"class_name": "CategoricalCrossentropy", "config": {"from_logits": true}}``), a
            serialized function (``{"class_name": "function", "config": "..."}``), or a list / dict of
            them for several outputs (the first output's is read).
    """
    if isinstance(loss, (list, tuple)):
        return read_loss(loss[0]) if loss else None
    if isinstance(loss, dict) and "class_name" not in loss and "config" not in loss:
        return read_loss(next(iter(loss.values()))) if loss else None
    if isinstance(loss, str):
        name = _ALIASES.get(loss.lower(), loss.lower())
        return name, False
    if isinstance(loss, dict):
        cls, cfg = loss.get("class_name"), loss.get("config")
        if cls == "function" and isinstance(cfg, str):
            return _ALIASES.get(cfg.lower(), cfg.lower()), False
        if isinstance(cls, str):
            cfg = cfg if isinstance(cfg, dict) else {}
            name = _snake(cls)
            return _ALIASES.get(name, name), bool(cfg.get("from_logits", False))
    return None


def _model_loss(loaded) -> tuple[object, str] | None:
    """The loss and where it was read: the model's own compile config first, then the file's."""
    from tlviz.models.compiled import SAVED_LOSS_KEY

    model = loaded.model
    if getattr(model, "compiled", False):
        try:
            config = model.get_compile_config() or {}
        except Exception:  # noqa: BLE001 - a compile config Keras cannot serialize is "unknown"
            config = {}
        if config.get("loss") is not None:
            return config["loss"], "the compiled model"
    loss = (loaded.metadata or {}).get(SAVED_LOSS_KEY)
    return (loss, "the file's compile config") if loss is not None else None


def _problems(act: str | None, units: int, loss: tuple[str, bool] | None) -> list[tuple[str, str]]:
    """``(what is wrong, corrected line)`` for each disagreement."""
    out = []
    if units == 1 and act == "softmax":
        out.append(("a softmax over a single unit always outputs 1.0, whatever the image, so nothing can be learned",
                    'outputs = keras.layers.Dense(1, activation="sigmoid")(x)  # with loss="binary_crossentropy"'))
    if loss is None:
        return out
    name, from_logits = loss
    pretty = "".join(p.capitalize() for p in name.split("_"))  # the loss class: SparseCategoricalCrossentropy
    if from_logits and act in ("softmax", "sigmoid"):
        out.append((f"the output already applies {act}, but the loss is told it gets logits (`from_logits=True`), so "
                    f"it applies {act} again: the loss flattens and the gradients shrink",
                    f"model.compile(loss=keras.losses.{pretty}(from_logits=False), ...)  # or drop the {act} and "
                    "keep from_logits=True"))
    if not from_logits and act == "linear" and name in _PROBABILITY_LOSSES:
        out.append((f"the output is linear (logits), but `{name}` expects probabilities (`from_logits=False`): Keras "
                    "clips and rescales the logits, and training goes astray",
                    f"model.compile(loss=keras.losses.{pretty}(from_logits=True), ...)"))
    if act == "sigmoid" and units > 1 and name in _CATEGORICAL:
        out.append((f"a sigmoid on a {units}-class head gives independent probabilities that need not sum to 1, but "
                    f"`{name}` treats them as one distribution over the classes",
                    f'outputs = keras.layers.Dense({units}, activation="softmax")(x)'))
    if units == 1 and name == "categorical_crossentropy" and act != "softmax":
        out.append(("one output unit with `categorical_crossentropy`: the single value is normalised to 1.0, so the "
                    "loss is always 0 and nothing is learned",
                    'model.compile(loss="binary_crossentropy", ...)  # one sigmoid unit'))
    return out


def check_output_loss_mismatch(ctx: DiagnosisContext, check: Check) -> list[Finding]:
    """``output-loss-mismatch``: the last layer's activation and the saved loss disagree (no images)."""
    layer, act, units = output_activation(ctx.model)
    found = _model_loss(ctx.loaded)
    loss = read_loss(found[0]) if found is not None else None
    problems = _problems(act, units, loss)
    if not problems:
        if act is None:
            raise CheckSkipped(f"The activation of the output layer '{layer or '?'}' cannot be read (a custom or "
                               "Lambda layer), so it cannot be compared with the loss.")
        if loss is None:
            raise CheckSkipped(
                f"The file records no loss (it was saved without `compile()`, or the loss is custom), so only the "
                f"output layer was checked: '{layer}' applies {act} over {units} unit{'s' if units != 1 else ''}, "
                "which is consistent by itself.")
        return []
    what, line = problems[0]
    name, from_logits = loss if loss is not None else (None, None)
    title = (f"The output layer '{layer}' ({act} over {units} unit{'s' if units != 1 else ''}) and the loss "
             + (f"`{name}`" + (" with from_logits=True" if from_logits else "") if name else "(none recorded)")
             + " disagree")
    evidence = {"output_layer": layer, "activation": act, "units": units, "loss": name, "from_logits": from_logits,
                "loss_read_from": found[1] if found is not None else None,
                "problems": [p for p, _ in problems], "measured_on_images": False}
    fix = ("Read from the model's configuration and the loss it was compiled with: " + "; and ".join(
        p for p, _ in problems) + ". Change the line that builds the output or compiles the model, then train the "
        "head again:\n```python\n" + "\n".join(dict.fromkeys(fixline for _, fixline in problems)) + "\n```")
    return [check.finding(title[:1].upper() + title[1:], evidence, fix)]

