"""What does each repair cost at real size, against one inference pass over the same images?

Run: ``python bench/bench_repair.py [--images 200] [--repeat 1] [--out /tmp/tlviz_real]``.

Builds (once, cached under ``--out``) a MobileNetV2 at 224x224 (``weights=None``, as
`bench/realsize.py`) whose BatchNormalization statistics are first estimated on the images and
whose 3-class head is then fitted on the base's features under ``tf`` (a few seconds of
least-squares, no download), so the model is good on the generated JPEGs. Then plants each fault
and repairs it, printing the held-out accuracy before / after and the time, as a ratio to the
baseline measured in the same process: one inference pass (``tf``) over all the images.

- ``normalization-mismatch``: the model fed ``unit``; baked in to take raw pixels;
- ``label-order-mismatch``: the head's units rotated by one;
- ``bn-statistics-mismatch``: every BatchNormalization layer back to its initial statistics (mean 0,
  variance 1: what ``weights=None`` leaves); AdaBN;
- ``bn-statistics-mismatch`` + ``normalization-mismatch`` together (fed ``unit``).

``--smoke``: each repair once (not the pair) at 96x96 with 40 JPEGs (AdaBN needs 16 per half) in a temporary
folder, a proof that it still runs.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import numpy as np  # noqa: E402

from realsize import make_images  # noqa: E402


def _trained_model(folder: Path, images, size: int = 224):
    """MobileNetV2 (weights=None) with statistics estimated on the images and a least-squares head (cached)."""
    import keras

    from tlviz.models import load_model
    from tlviz.presets import apply_preset
    from tlviz.repair.adabn import estimate_statistics
    from tlviz.repair.graph import leaf

    path = folder / ("mobilenetv2_trained_head.keras" if size == 224 else f"mobilenetv2_{size}_trained_head.keras")
    if path.exists():
        return load_model(path)
    keras.utils.set_random_seed(0)
    base = keras.applications.MobileNetV2(weights=None, include_top=False, input_shape=(size, size, 3))
    inputs = keras.Input((size, size, 3))
    x = keras.layers.GlobalAveragePooling2D(name="pool")(base(inputs, training=False))
    outputs = keras.layers.Dense(3, activation="softmax", name="head")(x)
    model = keras.Model(inputs, outputs, name="mobilenetv2_tl")
    for p, (mean, var) in estimate_statistics(model, images.images, "tf").items():
        layer = leaf(model, p)
        layer.moving_mean.assign(mean.astype("float32"))
        layer.moving_variance.assign(var.astype("float32"))
    features = keras.Model(inputs, x).predict(apply_preset(images.images, "tf"), batch_size=16, verbose=0)
    f = (features - features.mean(0)) / (features.std(0) + 1e-6)
    onehot = np.eye(3)[images.labels] * 2 - 1
    a = np.hstack([f, np.ones((len(f), 1))])
    w = np.linalg.solve(a.T @ a + 10.0 * np.eye(a.shape[1]), a.T @ onehot)
    kernel = (w[:-1] / (features.std(0) + 1e-6)[:, None]) * 4.0
    bias = (w[-1] - (features.mean(0) / (features.std(0) + 1e-6)) @ w[:-1]) * 4.0
    model.get_layer("head").set_weights([kernel.astype("float32"), bias.astype("float32")])
    base.trainable = False
    model.save(path)
    return load_model(path)


def _plant(loaded, kind: str):
    import keras

    from tlviz.layers import BN_CLASSES, iter_leaves
    from tlviz.models import summarize
    from tlviz.repair.graph import copy_model

    model = copy_model(loaded.model)
    if kind == "labels":
        head = model.get_layer("head")
        k, b = head.get_weights()
        head.set_weights([np.roll(k, 1, axis=1), np.roll(b, 1)])
    elif kind == "bn":
        for x in iter_leaves(model):
            if type(x.layer).__name__ in BN_CLASSES:
                x.layer.moving_mean.assign(keras.ops.zeros_like(x.layer.moving_mean))
                x.layer.moving_variance.assign(keras.ops.ones_like(x.layer.moving_variance))
    return summarize(model, filename=f"planted_{kind}.keras")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=200)
    parser.add_argument("--repeat", type=int, default=1)
    parser.add_argument("--out", default="/tmp/tlviz_real")
    parser.add_argument("--size", type=int, default=224, help="the model's input size (default 224)")
    parser.add_argument("--smoke", action="store_true", help="96x96, 40 JPEGs in a temporary folder")
    args = parser.parse_args(argv)
    if args.smoke:
        with tempfile.TemporaryDirectory(prefix="tlviz_bench_smoke_") as tmp:
            args.images, args.repeat, args.size, args.out = 40, 1, 96, tmp
            return run(args)
    args.smoke = False
    return run(args)


def run(args) -> int:
    """Build (once) the model and images under ``args.out``, then time and print as the module says."""

    from tlviz.imagesets import load_image_set
    from tlviz.memory import plan_batch, predict_batches
    from tlviz.presets import apply_preset
    from tlviz.repair import repair

    out = Path(args.out)
    folder = make_images(out / f"images_{args.images}", args.images)
    images = load_image_set(folder, (args.size, args.size), 3)
    t0 = time.perf_counter()
    loaded = _trained_model(out, images, args.size)
    print(f"model ready in {time.perf_counter() - t0:.1f} s (cached in {out})")
    plan = plan_batch(loaded.model, "inference", n=len(images))
    predict_batches(loaded.model, images.images[:plan.batch_size], lambda x: apply_preset(x, "tf"), plan)  # warm-up

    def one_pass():
        return predict_batches(loaded.model, images.images, lambda x: apply_preset(x, "tf"), plan)

    passes = []
    for _ in range(max(args.repeat, 1)):
        t = time.perf_counter()
        one_pass()
        passes.append(time.perf_counter() - t)
    base = min(passes)
    print(f"images: {len(images)}  CPU threads: {os.cpu_count()}  baseline (one inference pass, tf): "
          f"{base:.2f} s (fastest of {len(passes)}, spread {max(passes) - base:.2f} s)")
    cases = [("normalization-mismatch", None, "unit"), ("label-order-mismatch", "labels", "tf"),
             ("bn-statistics-mismatch", "bn", "tf"), ("bn-statistics-mismatch,normalization-mismatch", "bn", "unit")]
    if args.smoke:
        cases = cases[:3]  # one of each repair; the pair takes as long as two
    print(f"{'repair':48s} {'before':>7s} {'after':>7s} {'n_fit':>5s} {'n_eval':>6s} {'seconds':>8s} {'x pass':>7s}")
    for fixes, plant, preset in cases:
        model = loaded if plant is None else _plant(loaded, plant)
        times, result = [], None
        for _ in range(max(args.repeat, 1)):
            t = time.perf_counter()
            result = repair(model, images, fixes, preset)
            times.append(time.perf_counter() - t)
        o, s = result.overall, result.steps[-1]
        print(f"{fixes:48s} {o['before']:7.1%} {o['after']:7.1%} {s.n_fit:5d} {s.n_eval:6d} {min(times):8.1f} "
              f"{min(times) / base:7.1f}" + (f"  (spread {max(times) - min(times):.1f} s)" if len(times) > 1 else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())
