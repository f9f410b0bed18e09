"""Real-size inputs for the benchmarks: Keras applications at 224x224 and generated JPEG sets.

`build_model(arch, path)` saves ``keras.applications.<arch>(weights=None)`` at
224x224, every base layer frozen, under ``GlobalAveragePooling2D`` + a new
``Dense(3, softmax)`` head (the write-up's Example 1). `make_images(folder, n)`
writes `n` 256x256 JPEGs in three class folders: each class a different
seeded mix of colour and stripe direction, so a probe can tell them apart.
Nothing is downloaded.

Run: ``python bench/realsize.py [OUT]`` (default ``/tmp/tlviz_real``) builds every architecture and the
180- and 900-JPEG sets; ``--smoke`` builds them at 64x64 with 12 JPEGs in a temporary folder.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import numpy as np

ARCHS = ("ResNet50", "EfficientNetB0", "MobileNetV2")
CLASSES = ("cat", "dog", "fox")


def build_model(arch: str, path: str | Path, size: int = 224, n_classes: int = 3) -> Path:
    """Save `arch` (weights=None, frozen base) + GAP + Dense head as a `.keras` file at `path`."""
    path = Path(path)
    if path.exists():
        return path
    import keras

    path.parent.mkdir(parents=True, exist_ok=True)
    base = getattr(keras.applications, arch)(weights=None, include_top=False, input_shape=(size, size, 3))
    base.trainable = False
    inputs = keras.Input((size, size, 3))
    x = base(inputs, training=False)
    x = keras.layers.GlobalAveragePooling2D()(x)
    outputs = keras.layers.Dense(n_classes, activation="softmax")(x)
    model = keras.Model(inputs, outputs, name=f"{arch.lower()}_tl")
    model.compile(optimizer="adam", loss="sparse_categorical_crossentropy", metrics=["accuracy"])
    model.save(path)
    return path


def make_images(folder: str | Path, n: int, size: int = 256, seed: int = 0) -> Path:
    """Write `n` JPEGs (size x size) into one sub-folder per class under `folder`."""
    from PIL import Image

    folder = Path(folder)
    done = folder / ".complete"
    if done.exists():
        return folder
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    for i in range(n):
        c = i % len(CLASSES)
        d = folder / CLASSES[c]
        d.mkdir(parents=True, exist_ok=True)
        angle = (c * np.pi / 3) + rng.normal(0, 0.2)
        freq = 0.05 + 0.03 * c + rng.normal(0, 0.005)
        stripes = 0.5 + 0.5 * np.sin(freq * (xx * np.cos(angle) + yy * np.sin(angle)))
        tint = np.array([[0.9, 0.4, 0.3], [0.3, 0.8, 0.4], [0.4, 0.4, 0.9]][c]) + rng.normal(0, 0.1, 3)
        img = stripes[..., None] * tint[None, None, :] * 200 + rng.normal(0, 20, (size, size, 3))
        Image.fromarray(np.clip(img, 0, 255).astype(np.uint8)).save(d / f"img_{i:04d}.jpg", quality=90)
    done.write_text("ok")
    return folder


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", nargs="?", default="/tmp/tlviz_real", help="where to build (default /tmp/tlviz_real)")
    parser.add_argument("--smoke", action="store_true", help="64x64 models and 12 JPEGs in a temporary folder")
    args = parser.parse_args(argv)
    if args.smoke:
        with tempfile.TemporaryDirectory(prefix="tlviz_realsize_smoke_") as tmp:
            out = Path(tmp)
            for a in ARCHS:
                path = build_model(a, out / f"{a.lower()}.keras", size=64)
                print(f"built {a} at 64x64: {path.stat().st_size / 2**20:.1f} MB")
            n = sum(1 for _ in make_images(out / "images_12", 12).rglob("*.jpg"))
            print(f"wrote {n} JPEGs")
        return 0
    out = Path(args.out)
    for a in ARCHS:
        print(build_model(a, out / f"{a.lower()}.keras"))
    print(make_images(out / "images_180", 180))
    print(make_images(out / "images_900", 900))
    return 0


if __name__ == "__main__":
    sys.exit(main())
