"""The tf.data pipeline a run trains and validates on: batches gathered by index, normalized, augmented.

Public API: `batch_dataset(x, y, idx, batch_size, seed, augment, preset)`. TensorFlow is imported
when it is called.
"""

from __future__ import annotations

import numpy as np

from tlviz.presets import apply_preset


def batch_dataset(x: np.ndarray, y: np.ndarray, idx: np.ndarray, batch_size: int, seed: int | None = None,
                  augment: bool = False, preset=None):
    """Batches of ``(x[idx], y[idx])``: shuffled with `seed`, normalized with `preset`, augmented.

    Only the indices enter the pipeline (and its shuffle buffer); each batch
    is gathered from `x` when it is read, so neither the images nor cached
    activations are copied (``from_tensor_slices`` on the arrays would copy
    them, and a shuffle buffer would hold a second copy).

    Args:
        x: the images (``uint8``, with `preset`) or cached activations.
        y: the labels, ``int64``.
        idx: the rows of `x` and `y` to serve.
        batch_size: rows per batch.
        seed: seeds the shuffle (reshuffled every epoch) and the augmentation. Defaults to `None` (in order).
        augment: random horizontal flips and translations by up to 10 % (needs a `seed`). Defaults to `False`.
        preset: normalization applied batch by batch (`tlviz.presets.apply_preset`). Defaults to `None`
            (`x` is ready).

    Returns:
        A prefetching ``tf.data.Dataset`` of ``(x batch, y batch)``.
    """
    import tensorflow as tf

    idx = np.asarray(idx, dtype=np.int64)
    ds = tf.data.Dataset.from_tensor_slices(idx)
    if seed is not None:
        ds = ds.shuffle(len(idx), seed=seed, reshuffle_each_iteration=True)
    ds = ds.batch(batch_size)
    x_shape, x_dtype = (None, *x.shape[1:]), tf.as_dtype(x.dtype)

    def gather(i):
        i = np.asarray(i)
        return x[i], y[i]

    def load(i):
        a, b = tf.numpy_function(gather, [i], (x_dtype, tf.int64), stateful=False)
        a.set_shape(x_shape)
        b.set_shape((None,))
        return a, b

    ds = ds.map(load, num_parallel_calls=tf.data.AUTOTUNE)
    if preset is not None:
        ds = ds.map(lambda a, b: (apply_preset(a, preset), b), num_parallel_calls=tf.data.AUTOTUNE)
    if augment:
        import keras

        aug = keras.Sequential([
            keras.layers.RandomFlip("horizontal", seed=seed),
            keras.layers.RandomTranslation(0.1, 0.1, fill_mode="reflect", seed=seed + 1),
        ], name="tlviz_augment")
        ds = ds.map(lambda a, b: (aug(a, training=True), b), num_parallel_calls=tf.data.AUTOTUNE)
    return ds.prefetch(tf.data.AUTOTUNE)
