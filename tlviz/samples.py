"""Build the committed sample models and image sets: ``python -m tlviz.samples``.

Deterministic and seeded. Data: scikit-learn's bundled 8x8 digits (a build-time
dependency only), upsampled to 32x32 and drawn as warm-coloured strokes on a
dark background so that channel order matters.

Outputs in ``sample_models/``:

- ``digits_0_4/`` and ``digits_5_9/``: image sets, one folder per class (PNG).
- ``digits_base.keras``: a small CNN with BatchNormalization trained on digits
  0-4 with the ``tf`` preset applied *outside* the model. Its expected preset
  and class names are embedded (``tlviz.json`` inside the archive) and written
  to the sidecar ``digits_base.json``.
- ``digits_frozen.keras``: the base's feature extractor under a fresh 5-class
  head with **every** layer frozen (the "my model doesn't learn" bug).
"""

from __future__ import annotations

import argparse
import json
import zipfile
from pathlib import Path

import numpy as np

SAMPLES_DIR = Path(__file__).resolve().parent.parent / "sample_models"
SEED = 1234
SIZE = 32
BASE_PRESET = "tf"


def sample_path(name: str) -> Path:
    """Path of a committed sample (``digits_base.keras``, ``digits_0_4``, ...)."""
    return SAMPLES_DIR / name


SAMPLE_MODELS = ("digits_base.keras", "digits_frozen.keras")
SAMPLE_IMAGE_SETS = ("digits_0_4", "digits_5_9")


def digit_images(seed: int = SEED) -> tuple[np.ndarray, np.ndarray]:
    """All sklearn digits as ``uint8`` RGB ``(N, 32, 32, 3)`` plus labels."""
    from PIL import Image
    from sklearn.datasets import load_digits

    d = load_digits()
    rng = np.random.default_rng(seed)
    out = np.empty((len(d.images), SIZE, SIZE, 3), dtype=np.uint8)
    for i, img in enumerate(d.images):
        g = Image.fromarray((img / 16.0 * 255.0).astype(np.uint8), "L").resize((SIZE, SIZE), Image.BILINEAR)
        mask = np.asarray(g, dtype=np.float32) / 255.0
        fg = np.array([235, 170, 60], np.float32) + rng.normal(0, 12, 3)   # warm ink
        bg = np.array([20, 30, 70], np.float32) + rng.normal(0, 8, 3)      # dark blue paper
        rgb = bg + (fg - bg) * mask[..., None] + rng.normal(0, 4, (SIZE, SIZE, 3))
        out[i] = np.clip(rgb + 0.5, 0, 255).astype(np.uint8)
    return out, d.target.astype(np.int64)


def conv_body(x):
    """The sample's convolutional base on tensor `x`: three conv / BN / ReLU blocks, up to global pooling
    (a layer named ``avg_pool``). The planted-fault matrix's small CNN family is built from it too."""
    from keras import layers

    for i, filters in enumerate((16, 32, 64), start=1):
        x = layers.Conv2D(filters, 3, padding="same", use_bias=False, name=f"block{i}_conv")(x)
        x = layers.BatchNormalization(name=f"block{i}_bn")(x)
        x = layers.Activation("relu", name=f"block{i}_relu")(x)
        if i < 3:
            x = layers.MaxPooling2D(name=f"block{i}_pool")(x)
    return layers.GlobalAveragePooling2D(name="avg_pool")(x)


def build_base_model(num_classes: int = 5):
    import keras
    from keras import layers

    inp = keras.Input((SIZE, SIZE, 3), name="image")
    x = conv_body(inp)
    x = layers.Dropout(0.2, name="dropout")(x)
    out = layers.Dense(num_classes, activation="softmax", name="predictions")(x)
    return keras.Model(inp, out, name="digits_base")


def build_frozen_model(base):
    """Base features (up to pooling) as a frozen nested model under a fresh, frozen head."""
    import keras
    from keras import layers

    features = keras.Model(base.input, base.get_layer("avg_pool").output, name="digits_features")
    features.trainable = False
    inp = keras.Input((SIZE, SIZE, 3), name="image")
    x = features(inp, training=False)
    x = layers.Dropout(0.2, name="head_dropout")(x)
    head = layers.Dense(5, activation="softmax", name="new_head")
    out = head(x)
    model = keras.Model(inp, out, name="digits_frozen")
    head.trainable = False  # the bug: the new head was frozen too
    return model


def embed_metadata(path: Path, metadata: dict) -> None:
    """Write tlviz metadata into a `.keras` archive (Keras ignores the extra file)."""
    with zipfile.ZipFile(path, "a") as zf:
        zf.writestr("tlviz.json", json.dumps(metadata, indent=2))


def _write_image_set(folder: Path, images: np.ndarray, labels: np.ndarray, classes: list[int]) -> None:
    from PIL import Image

    if folder.exists():
        for p in sorted(folder.rglob("*.png")):
            p.unlink()
    for c in classes:
        (folder / str(c)).mkdir(parents=True, exist_ok=True)
    counters = {c: 0 for c in classes}
    for img, y in zip(images, labels):
        y = int(y)
        if y not in counters:
            continue
        Image.fromarray(img, "RGB").save(folder / str(y) / f"{y}_{counters[y]:04d}.png", optimize=True)
        counters[y] += 1


def build(out_dir: Path = SAMPLES_DIR, epochs: int = 25, verbose: int = 0) -> dict:
    """Build every sample into `out_dir`. Returns the recorded metadata of the base model."""
    import keras
    import tensorflow as tf

    from tlviz.presets import apply_preset

    keras.utils.set_random_seed(SEED)
    tf.config.experimental.enable_op_determinism()
    out_dir.mkdir(parents=True, exist_ok=True)

    images, labels = digit_images()
    _write_image_set(out_dir / "digits_0_4", images, labels, [0, 1, 2, 3, 4])
    _write_image_set(out_dir / "digits_5_9", images, labels, [5, 6, 7, 8, 9])

    sel = labels < 5
    x, y = images[sel], labels[sel]
    rng = np.random.default_rng(SEED)
    order = rng.permutation(len(x))
    n_train = int(0.8 * len(x))
    tr, te = order[:n_train], order[n_train:]

    model = build_base_model()
    model.compile(optimizer=keras.optimizers.Adam(2e-3), loss="sparse_categorical_crossentropy",
                  metrics=["accuracy"])
    model.fit(apply_preset(x[tr], BASE_PRESET), y[tr], epochs=epochs, batch_size=32, verbose=verbose,
              shuffle=True)
    # A few more epochs at a low rate let the BN moving statistics settle.
    model.optimizer.learning_rate.assign(2e-4)
    model.fit(apply_preset(x[tr], BASE_PRESET), y[tr], epochs=5, batch_size=32, verbose=verbose)
    heldout = float(model.evaluate(apply_preset(x[te], BASE_PRESET), y[te], verbose=0)[1])
    full = float(model.evaluate(apply_preset(x, BASE_PRESET), y, verbose=0)[1])

    class_names = [str(i) for i in range(5)]
    metadata = {
        "preset": BASE_PRESET,
        "class_names": class_names,
        "image_set": "digits_0_4",
        "heldout_accuracy": round(heldout, 4),
        "accuracy_on_digits_0_4": round(full, 4),
        "trained_on": "80% of digits_0_4 (seeded split), preset tf applied outside the model",
    }
    base_path = out_dir / "digits_base.keras"
    model.save(base_path)
    embed_metadata(base_path, metadata)
    (out_dir / "digits_base.json").write_text(json.dumps(metadata, indent=2) + "\n")

    frozen = build_frozen_model(model)
    frozen_path = out_dir / "digits_frozen.keras"
    frozen.save(frozen_path)
    frozen_meta = {"preset": BASE_PRESET, "note": "every layer frozen on purpose (sample of the bug)"}
    embed_metadata(frozen_path, frozen_meta)
    (out_dir / "digits_frozen.json").write_text(json.dumps(frozen_meta, indent=2) + "\n")
    return metadata


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description="Build tlviz's sample models and image sets.")
    parser.add_argument("--out", type=Path, default=SAMPLES_DIR, help="output folder (default: sample_models/)")
    parser.add_argument("--epochs", type=int, default=25)
    args = parser.parse_args(argv)
    meta = build(args.out, epochs=args.epochs, verbose=2)
    print(json.dumps(meta, indent=2))
    if meta["heldout_accuracy"] < 0.97:
        print("warning: held-out accuracy below 97 %")
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
