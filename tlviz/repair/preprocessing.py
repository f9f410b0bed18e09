"""The input repairs: bake the expected normalization into the model, or undo a double normalization.

``normalization-mismatch``: the preset the model expects is the one that scores best on the
estimation half (every applicable preset is compared there); built-in layers computing it are put
in front of the model (`tlviz.repair.affine`), so that it takes

- raw 0-255 RGB pixels (target ``"raw"``), or
- what the user's inference code sends already (target ``"inference"``: the layers undo the
  user's preset and apply the expected one).

Fed that way the repaired model computes what the original computes under its expected preset,
up to float rounding; the step's details show both accuracies and how many predictions agree.

``double-normalization``: the model scales its own input (Rescaling / Normalization at the input)
and the user's code normalizes again. Both ways out are measured on the same images:

- ``"drop-layer"``: a copy without the model's own scaling layers, so it takes what the user's code
  sends; when that is not the arithmetic those layers did, one Rescaling layer converting the
  user's values to what they produced takes their place;
- ``"feed-raw"``: the model unchanged, the user's code sends raw pixels (the `raw` preset).
"""

from __future__ import annotations

import numpy as np

from tlviz.errors import RepairRefused
from tlviz.repair.affine import preset_affine, set_flip_kernels
from tlviz.repair.result import RepairStep

TARGETS = ("raw", "inference")
DOUBLE_VARIANTS = ("drop-layer", "feed-raw")
#: Name stem of the layers a repair puts in front of the model.
INPUT_LAYER_NAME = "tlviz_input"
_SCALING = ("Rescaling", "Normalization")


def leading_scaling(model) -> list[str]:
    """Paths of the Rescaling / Normalization layers at the model's input (before any other weighted layer).

    Args:
        model: the Keras model (nested models followed, as `tlviz.models.builtin_preprocessing` does).

    Returns:
        `tlviz.layers.iter_leaves` paths, input first.
    """
    import keras

    out: list[str] = []

    def walk(m, prefix: str) -> bool:
        for layer in m.layers:
            cls = type(layer).__name__
            if cls == "InputLayer":
                continue
            if isinstance(layer, keras.Model):
                return walk(layer, f"{prefix}{layer.name}/")
            if cls in _SCALING:
                out.append(prefix + layer.name)
                continue
            if layer.weights:
                return False
        return True

    walk(model, "")
    return out


def prepend_affine(model, affine):
    """A copy of `model` with layers computing `affine` in front (the copy itself when it is the identity)."""
    from tlviz.repair.graph import copy_model, prepend_layers

    layers = affine.layers(INPUT_LAYER_NAME)
    if not layers:
        return copy_model(model), []
    new = prepend_layers(model, layers)  # may rename them: read the names after
    names = [layer.name for layer in layers]
    set_flip_kernels(new, [layer.name for layer in layers if type(layer).__name__ == "Conv2D"])
    return new, names


def choose_expected(chain, presets: list[str], with_mapping: bool, adabn: bool = False) -> tuple[str, dict]:
    """The preset the chain's model scores best with on the estimation half.

    Args:
        chain: the `tlviz.repair.chain.Chain`.
        presets: the candidates (applicable named presets).
        with_mapping: score each preset after the best re-ordering of the classes (when the label
            order is repaired in the same chain). Defaults to plain accuracy.
        adabn: the BatchNormalization statistics are re-estimated in the same chain: score each preset
            with every BatchNormalization layer on the statistics of the images prepared that way
            (the stored ones cannot tell the presets apart when they are wrong). The statistics
            estimated on the way are kept for the AdaBN step (``chain.bn_statistics``). Defaults to `False`.

    Returns:
        ``(preset, {preset: accuracy on the estimation half})``; ties go to the user's preset, then
        to the earlier preset in `presets`.
    """
    from tlviz.diagnose.assignment import best_assignment
    from tlviz.repair.adabn import estimate_statistics

    labels = chain.labels[chain.fit]
    scores = {}
    for i, p in enumerate(presets):
        chain.sub(i / len(presets) * 0.6, (i + 1) / len(presets) * 0.6)
        if adabn:
            chain.bn_statistics[p], preds = estimate_statistics(
                chain.model, chain.images[chain.fit], p, lambda f, t, p=p: chain.say(
                    f, f"Comparing presets with re-estimated statistics on the estimation images ({p})…"),
                with_predictions=True)
        else:
            preds = chain.predictions(chain.model, p, "fit", f"Comparing presets on the estimation images ({p})…")
        if with_mapping:
            c = np.zeros((chain.k, chain.k), dtype=np.int64)
            np.add.at(c, (labels, np.clip(preds, 0, chain.k - 1)), 1)
            perm = best_assignment(c)
            scores[p] = float(np.mean(preds == perm[labels]))
        else:
            scores[p] = float(np.mean(preds == labels))
    top = max(scores.values())
    tied = [p for p in presets if scores[p] >= top - 1e-12]
    return (chain.inference_preset if chain.inference_preset in tied else tied[0]), scores


def repair_normalization(chain, expected: str, scores: dict, target: str, teachable_crop: bool,
                         check_only: bool = False) -> RepairStep | None:
    """Bake `expected` into the chain's model so that it takes `target` input.

    Args:
        chain: the `tlviz.repair.chain.Chain` (its `working` preset is `expected`).
        expected: the preset the model expects (`choose_expected`, on the estimation half).
        scores: the accuracy of each preset on the estimation half.
        target: ``"raw"`` (raw 0-255 pixels) or ``"inference"`` (what the user's code sends).
        teachable_crop: the expected setting is Teachable Machine's (its centre crop stays outside the model).
        check_only: only check that the repair applies. Defaults to `False`.

    Returns:
        The `RepairStep` (None with `check_only`).

    Raises:
        RepairRefused: the model already takes `target` input best.
    """
    feed = "raw" if target == "raw" else chain.inference_preset
    conversion = preset_affine(feed, chain.images.shape[-1]).inverse().then(
        preset_affine(expected, chain.images.shape[-1]))
    if conversion.is_identity:
        what = "raw 0-255 pixels" if target == "raw" else f"what your code sends (`{feed}`)"
        raise RepairRefused(
            f"`normalization-mismatch`: the model already scores best with {what} (`{expected}`: "
            f"{scores.get(expected, float('nan')):.1%} on the {len(chain.fit)} estimation images), so there is "
            "nothing to bake in.")
    if check_only:
        return None
    before_model = chain.model
    new_model, names = prepend_affine(before_model, conversion)
    chain.sub(0.6, 1.0)
    cmp = chain.compare((before_model, chain.inference_preset), (new_model, feed))
    expected_acc = chain.accuracy(before_model, expected)
    agree = float(np.mean(chain.predictions(new_model, feed, "eval") == chain.predictions(before_model, expected,
                                                                                            "eval")))
    chain.model, chain.feed = new_model, feed
    send = ("raw 0-255 RGB pixels (the `raw` preset: no scaling at all)" if target == "raw" else
            f"what your code sends now (`{feed}`)")
    notes = [f"Feed the repaired model {send}; its first layers ({', '.join(names)}) compute `{expected}` from that."]
    if teachable_crop:
        notes.append("Teachable Machine's centre crop to a square happens before the model: keep cropping images "
                     "as before.")
    return RepairStep(
        "normalization-mismatch",
        f"Put {' and '.join(names)} ({conversion.describe()}) in front of the model, so that it takes "
        f"{'raw pixels' if target == 'raw' else f'`{feed}` input'} and computes `{expected}` itself",
        "accuracy", cmp["before"], cmp["after"], cmp["interval"], len(chain.fit), cmp["n_eval"],
        chain.inference_preset, feed,
        details={"expected_preset": expected, "target": target, "feed_preset": feed, "layers": names,
                 "arithmetic": conversion.describe(), "accuracy_by_preset_fit": scores,
                 "accuracy_original_expected_preset": expected_acc, "agreement_with_original": agree},
        notes=notes)


def repair_double_normalization(chain, variant: str, check_only: bool = False) -> RepairStep | None:
    """Measure both ways out of a double normalization and apply `variant`.

    Args:
        chain: the `tlviz.repair.chain.Chain`.
        variant: ``"drop-layer"`` or ``"feed-raw"``.
        check_only: only check that the repair applies. Defaults to `False`.

    Returns:
        The `RepairStep` (None with `check_only`); ``details["variants"]`` holds both accuracies.

    Raises:
        RepairRefused: the model has no scaling layer at its input, or the user's code sends raw pixels.
    """
    from tlviz.repair.affine import layers_affine
    from tlviz.repair.graph import remove_layers

    paths = leading_scaling(chain.model)
    if not paths:
        raise RepairRefused("`double-normalization`: the model has no Rescaling or Normalization layer at its "
                            "input, so nothing is normalized twice.")
    user = chain.inference_preset
    if user == "raw":
        raise RepairRefused("`double-normalization`: your code sends raw pixels (`raw`), so the model's own "
                            "input layer is the only normalization: nothing is normalized twice.")
    own = layers_affine(chain.model, paths)
    correction = preset_affine(user, chain.images.shape[-1]).inverse().then(own)
    if check_only:
        return None
    before_model = chain.model
    dropped = remove_layers(before_model, paths)
    replaced, names = prepend_affine(dropped, correction)
    chain.sub(0.0, 1.0)
    drop = chain.compare((before_model, user), (replaced, user))
    raw = chain.compare((before_model, user), (before_model, "raw"))
    variants = {
        "drop-layer": {"accuracy": drop["after"], "interval": drop["interval"], "feed_preset": user,
                       "removed": paths, "added": names,
                       "what": (f"a copy without {', '.join(paths)}"
                                + (f", with {', '.join(names)} ({correction.describe()}) converting your `{user}` "
                                   f"values to what they produced" if names else "")
                                + f"; keep sending `{user}`")},
        "feed-raw": {"accuracy": raw["after"], "interval": raw["interval"], "feed_preset": "raw",
                     "what": "the model unchanged; send raw 0-255 pixels (drop your own scaling)"},
    }
    chosen = variants[variant]
    if variant == "drop-layer":
        chain.model = replaced
        title = "Removed the model's own input scaling (" + ", ".join(paths) + ")" + (
            f" and put {', '.join(names)} in its place, which converts `{user}` values to what it produced"
            if names else f", which did exactly what your `{user}` preset does")
    else:
        title = "Kept the model as it is: your code should send raw 0-255 pixels (drop its own scaling)"
    chain.feed = chosen["feed_preset"]
    return RepairStep(
        "double-normalization", title, "accuracy", drop["before"], chosen["accuracy"], chosen["interval"], 0,
        drop["n_eval"], user, chosen["feed_preset"],
        details={"variant": variant, "variants": variants, "own_scaling": own.describe(),
                 "inference_preset": user},
        notes=[f"Send the repaired model `{chosen['feed_preset']}` input: {chosen['what']}."])
