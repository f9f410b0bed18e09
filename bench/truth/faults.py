"""The plants: each case's ``setup(env)``, which returns a model, images and preset with one fault (or none)."""

from __future__ import annotations

from dataclasses import replace

import numpy as np

from bench.truth.models import transfer


def _summarize(loaded, model=None):
    """A `LoadedModel` after the model was changed in place (or for a new `model`)."""
    from tlviz.models import summarize

    model = loaded.model if model is None else model
    return summarize(model, filename=loaded.filename, metadata=loaded.metadata)


def _in_memory_subset(images, per_class: dict[int, int]):
    """The first ``per_class[c]`` images of class c (classes missing from the dict: all)."""
    keep = []
    for c in range(len(images.class_names)):
        keep += list(np.flatnonzero(images.labels == c)[:per_class.get(c, 10 ** 9)])
    keep = np.array(sorted(keep))
    return replace(images, images=images.images[keep], labels=images.labels[keep],
                   files=[images.files[i] for i in keep],
                   original_sizes=[images.original_sizes[i] for i in keep] if images.original_sizes else [])


def _drop_class(images, drop: int):
    keep = np.flatnonzero(images.labels != drop)
    names = [n for i, n in enumerate(images.class_names) if i != drop]
    remap = np.array([i - (i > drop) for i in range(len(images.class_names))])
    return replace(images, images=images.images[keep], labels=remap[images.labels[keep]], class_names=names,
                   files=[images.files[i] for i in keep],
                   original_sizes=[images.original_sizes[i] for i in keep] if images.original_sizes else [])


def _numpy(variable) -> np.ndarray:
    import keras

    return np.array(keras.ops.convert_to_numpy(variable))


def _bn_layers(model):
    import keras

    return [layer for layer in model._flatten_layers(include_self=False, recursive=True)
            if isinstance(layer, keras.layers.BatchNormalization)]


def _weighted_convs(model):
    import keras

    return [layer for layer in model._flatten_layers(include_self=False, recursive=True)
            if isinstance(layer, (keras.layers.Conv2D, keras.layers.DepthwiseConv2D))]


# The setups: each returns (loaded model, image set, inference preset, image source or None).

def clean_trained(env):
    images, source = env.images("source")
    return env.load("trained"), images, env.family.preset, source


def clean_phase1(env):
    images, source = env.images("target")
    return env.load("phase1"), images, env.family.preset, source


def clean_recipe(env):
    images, source = env.images("target")
    return env.load("recipe"), images, env.family.preset, source


def nonfinite(env):
    loaded = env.load("trained")
    conv = _weighted_convs(loaded.model)[len(_weighted_convs(loaded.model)) // 2]
    w = _numpy(conv.kernel)
    w.reshape(-1)[:3] = [np.nan, np.inf, -np.inf]
    conv.kernel.assign(w)
    images, source = env.images("source")
    return _summarize(loaded), images, env.family.preset, source


def all_frozen(env):
    loaded = env.load("phase1")
    loaded.model.trainable = False
    images, source = env.images("target")
    return _summarize(loaded), images, env.family.preset, source


def head_frozen(env):
    loaded = env.load("trained")
    loaded.model.get_layer("predictions").trainable = False
    images, source = env.images("source")
    return _summarize(loaded), images, env.family.preset, source


def trainable_inside_frozen(env):
    loaded = env.load("phase1")  # the base is frozen (trainable=False) ...
    base = loaded.model.get_layer(f"{env.family.name}_base")
    for conv in _weighted_convs(base)[-2:]:  # ... and its two top convolutions set trainable afterwards
        conv.trainable = True
    images, source = env.images("target")
    return _summarize(loaded), images, env.family.preset, source


def bn_trainable_unpinned(env):
    """Phase 1's weights, but the base called as ``base(inputs)`` (not pinned) and unfrozen."""
    import keras

    loaded = env.load("phase1")
    old = loaded.model.get_layer(f"{env.family.name}_base")
    clone = keras.models.clone_model(old)
    clone.set_weights(old.get_weights())
    base = keras.Model(clone.inputs[0], clone.outputs[0], name=old.name)
    base.trainable = False  # the clone starts "trainable" with frozen layers; False then True reaches them all
    base.trainable = True
    model = transfer(base, env.family, pinned=False, name=f"{env.family.name}_unpinned")
    model.get_layer("head").set_weights(loaded.model.get_layer("head").get_weights())
    images, source = env.images("target")
    return _summarize(loaded, model), images, env.family.preset, source


def bn_trainable_stats_off(env):
    """The model trained end to end (nested base, trainable BatchNormalization, ``base(inputs)``), its last
    BatchNormalization layer's moving mean moved 3 standard deviations with beta compensating: inference is
    unchanged, but `fit` normalizes with batch statistics and shifts that layer's output by 3 gamma."""
    loaded = env.load("end_to_end")
    bn = _bn_layers(loaded.model.get_layer(f"{env.family.name}_base"))[-1]
    if not bn.center:
        raise ValueError(f"{bn.name} has no beta to compensate with.")
    std = np.sqrt(_numpy(bn.moving_variance).astype(np.float64) + bn.epsilon)
    gamma = _numpy(bn.gamma).astype(np.float64) if bn.scale else np.ones_like(std)
    bn.moving_mean.assign((_numpy(bn.moving_mean) + 3.0 * std).astype(np.float32))
    bn.beta.assign((_numpy(bn.beta) + 3.0 * gamma).astype(np.float32))
    images, source = env.images("target")
    return _summarize(loaded), images, env.family.preset, source


def bn_trainable_partly_frozen(env):
    """The trained model with its lower convolutions frozen and every BatchNormalization left trainable."""
    loaded = env.load("trained")
    convs = _weighted_convs(loaded.model)
    for conv in convs[: len(convs) // 2]:
        conv.trainable = False
    images, source = env.images("source")
    return _summarize(loaded), images, env.family.preset, source


def class_count(env):
    images, _ = env.images("target")
    return env.load("phase1"), _drop_class(images, 4), env.family.preset, None


def imbalance(env):
    """One class cut to 21 images: the trained model on its own held-out digits, or the transfer model on the
    target task's where the source classes hold too few images for a ratio above 3 (the sample's 20 %)."""
    images, _ = env.images("source")
    model = "trained"
    if min(images.counts.values()) < 64:
        images, _ = env.images("target")
        model = "phase1"
    return env.load(model), _in_memory_subset(images, {1: 21}), env.family.preset, None


def too_few(env):
    images, _ = env.images("source")
    per_class = {c: 15 for c in range(len(images.class_names))}
    return env.load("trained"), _in_memory_subset(images, per_class), env.family.preset, None


def label_order(env):
    """labels.txt in another order than the model's outputs; a model that records its class names (the
    committed sample) is matched by name, so the names are left out, as a file saved without them is."""
    from tlviz.models import summarize

    images, source = env.images("source_labels_shuffled")
    loaded = env.load("trained")
    metadata = {k: v for k, v in (loaded.metadata or {}).items() if k != "class_names"}
    return summarize(loaded.model, filename=loaded.filename, metadata=metadata), images, env.family.preset, source


def wrong_preset(k: int):
    def setup(env):
        images, source = env.images("source")
        return env.load("trained"), images, env.family.wrong_presets[k], source
    return setup


def double_normalization(env):
    images, source = env.images("source")
    return env.load("inside"), images, env.family.preset, source


def bn_perturbed(env):
    """Moving statistics of every BatchNormalization layer but the first shifted by 3 std and scaled by 16."""
    loaded = env.load("trained")
    for bn in _bn_layers(loaded.model)[1:]:
        std = np.sqrt(_numpy(bn.moving_variance))
        bn.moving_mean.assign(_numpy(bn.moving_mean) + 3.0 * std)
        bn.moving_variance.assign(_numpy(bn.moving_variance) * 16.0)
    images, source = env.images("source")
    return _summarize(loaded), images, env.family.preset, source


def bn_reset(env):
    """Every BatchNormalization layer's moving statistics reset to their initial values (mean 0, variance 1)."""
    loaded = env.load("trained")
    for bn in _bn_layers(loaded.model):
        bn.moving_mean.assign(np.zeros(bn.moving_mean.shape, np.float32))
        bn.moving_variance.assign(np.ones(bn.moving_variance.shape, np.float32))
    images, source = env.images("source")
    return _summarize(loaded), images, env.family.preset, source


def random_phase1(env):
    images, source = env.images("target")
    return env.load("random_phase1"), images, env.family.preset, source


def random_recipe(env):
    images, source = env.images("target")
    return env.load("random_recipe"), images, env.family.preset, source


def untrained_head(env):
    """Phase 1's trained base under a head that was never trained (a zero kernel: one answer for all)."""
    loaded = env.load("phase1")
    head = loaded.model.get_layer("head")
    head.kernel.assign(np.zeros(head.kernel.shape, np.float32))
    head.bias.assign(np.resize(np.array([0.3, 0.1, 0.0, 0.2, 0.0], np.float32), head.bias.shape))
    images, source = env.images("target")
    return _summarize(loaded), images, env.family.preset, source


def output_loss(env):
    """The trained softmax model recompiled with ``from_logits=True`` (and saved, as a user's file holds it)."""
    import keras

    model = env.load("trained").model
    model.compile(optimizer="adam", loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
                  metrics=["accuracy"])
    images, source = env.images("source")
    return env.saved(model, "output_loss"), images, env.family.preset, source


def images_of(which: str):
    def setup(env):
        images, source = env.images(which)
        return env.load("trained"), images, env.family.preset, source
    setup.__name__ = f"_images_{which}"
    return setup


def resized_images(env):
    images, source = env.images("source_24px")
    return env.load("trained"), images, env.family.preset, source


def clean_end_to_end(env):
    images, source = env.images("target")
    return env.load("end_to_end"), images, env.family.preset, source


#: The preset whose statistics the ``fingerprint-fooled`` plant stores in the first BatchNormalization layer
#: (far from every family's training preset).
FOOLED_TOWARD = "raw"


def fooled(user_preset: str | None):
    """The trained model, whose first BatchNormalization layer now stores the mean and variance of its input
    under `FOOLED_TOWARD` (measured on the held-out images), with gamma and beta changed so that the layer
    computes exactly what it did: the same model, but the label-free fingerprint points at `FOOLED_TOWARD`
    while accuracy points at the training preset. `user_preset` None: the family's own."""
    def setup(env):
        import keras

        from tlviz.presets import apply_preset

        loaded = env.load("trained")
        model = loaded.model
        images, source = env.images("source")
        bn = _bn_layers(model)[0]
        before = keras.Model(model.inputs[0], bn.input)
        axis = bn.axis[0] if isinstance(bn.axis, (list, tuple)) else bn.axis
        acts = np.moveaxis(before.predict(apply_preset(images.images, FOOLED_TOWARD), verbose=0), axis, -1)
        acts = acts.reshape(-1, acts.shape[-1]).astype(np.float64)
        mean2, var2 = acts.mean(axis=0), acts.var(axis=0)
        mean, var = _numpy(bn.moving_mean).astype(np.float64), _numpy(bn.moving_variance).astype(np.float64)
        s, s2 = np.sqrt(var + bn.epsilon), np.sqrt(var2 + bn.epsilon)
        if not (bn.scale and bn.center):
            raise ValueError(f"{bn.name} has no gamma and beta to compensate with.")
        gamma = _numpy(bn.gamma).astype(np.float64)
        bn.gamma.assign((gamma * s2 / s).astype(np.float32))  # y = gamma (x - mean) / s + beta, unchanged
        bn.beta.assign((_numpy(bn.beta) + gamma * (mean2 - mean) / s).astype(np.float32))
        bn.moving_mean.assign(mean2.astype(np.float32))
        bn.moving_variance.assign(var2.astype(np.float32))
        return _summarize(loaded), images, user_preset or env.family.preset, source
    setup.__name__ = f"_fooled_{user_preset or 'own'}"
    return setup
