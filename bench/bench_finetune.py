"""Benchmark: fine-tuning runs against plain ``model.fit`` of the same configuration.

Run: ``python bench/bench_finetune.py`` (about 5-10 minutes on 2 CPU cores);
``--n 300 --memory-runs 5`` for a quick check; ``--smoke`` (100 images, 1 epoch, a sweep of 2 rates, 1 worker run)
proves in about a minute that every case still runs (its ratios mean little at that size).

Prints wall times and ratios, each measured in this same process:

1. sample model (digits_base) on digits_5_9, new head, head only, 5 epochs;
2. a MobileNetV2-shaped model (``weights=None``, alpha 0.35, 96x96) with
   ``--n`` images (default 1,000) and 10 classes:
   a. head only, 5 epochs — target >= 3x faster than plain fit;
   b. a sweep of 4 learning rates at that depth — target >= 4x faster than 4 plain fits;
   c. the top quarter of the base unfrozen, 5 epochs — target >= 1.5x faster;
3. the server's memory (this process's RSS) after 20 runs in worker
   processes, against after the first — target within 10 %.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
import warnings
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
warnings.filterwarnings("ignore")


def _rss_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def plain_fit(loaded, images, cfg) -> float:
    """What a user would write: clone, (new head), freeze to the depth, compile, fit. Returns seconds."""
    import keras
    import numpy as np

    from tlviz.finetune.build import build_run_model, decide_head
    from tlviz.finetune.split import stratified_split
    from tlviz.finetune.training import make_optimizer
    from tlviz.unfreeze import apply_unfreeze
    from tlviz.presets import apply_preset

    t0 = time.perf_counter()
    x = apply_preset(images.images, cfg.preset)
    y = np.asarray(images.labels)
    tr, va = stratified_split(y, cfg.val_fraction, cfg.seed)
    keras.utils.set_random_seed(cfg.seed)
    head = decide_head(loaded.n_outputs, loaded.class_names, images.class_names, cfg.new_head)
    model = build_run_model(loaded, len(images.class_names), cfg, head).model
    apply_unfreeze(model, cfg.unfreeze, train_bn=cfg.train_bn)
    model.compile(optimizer=make_optimizer(cfg, cfg.lr), loss="sparse_categorical_crossentropy", metrics=["accuracy"])
    model.fit(x[tr], y[tr], batch_size=cfg.batch_size, epochs=cfg.epochs, validation_data=(x[va], y[va]), verbose=0)
    return time.perf_counter() - t0


def ours(loaded, images, cfg, cache=None) -> tuple[float, object]:
    from tlviz.finetune.run import run_finetune

    t0 = time.perf_counter()
    res = run_finetune(loaded, images, cfg, cache=cache)
    return time.perf_counter() - t0, res


def _sweep(loaded, images, cfgs) -> float:
    from tlviz.finetune.cache import ActivationCache

    cache = ActivationCache()
    return sum(ours(loaded, images, c, cache=cache)[0] for c in cfgs)


def mobilenet_case(n: int):
    """A MobileNetV2-shaped classifier (random weights) and n digit images at 96x96, 10 classes."""
    import keras
    import numpy as np
    from PIL import Image

    from tlviz.imagesets import ImageSet
    from tlviz.models import summarize
    from tlviz.samples import digit_images

    imgs, labels = digit_images()
    rng = np.random.default_rng(0)
    pick = rng.choice(len(imgs), size=n, replace=n > len(imgs))
    big = np.stack([np.asarray(Image.fromarray(imgs[i]).resize((96, 96), Image.BILINEAR)) for i in pick])
    images = ImageSet(images=big, labels=labels[pick].astype(np.int64), class_names=[str(i) for i in range(10)],
                      files=[f"{labels[i]}/{k}.png" for k, i in enumerate(pick)], source="digits@96")
    keras.utils.set_random_seed(0)
    base = keras.applications.MobileNetV2(input_shape=(96, 96, 3), alpha=0.35, include_top=False, weights=None)
    inp = keras.Input((96, 96, 3), name="image")
    x = base(inp)
    x = keras.layers.GlobalAveragePooling2D(name="pool")(x)
    x = keras.layers.Dropout(0.2, name="head_dropout")(x)
    out = keras.layers.Dense(10, activation="softmax", name="predictions")(x)
    model = keras.Model(inp, out, name="mobilenetv2_035_96")
    loaded = summarize(model, filename="mobilenetv2_035_96", sha256="bench-mobilenetv2-035-96")
    return loaded, images


def _best(repeat, plain, mine):
    """Fastest of `repeat` alternating measurements of plain and ours."""
    b, o = [], []
    for _ in range(max(repeat, 1)):
        b.append(plain())
        o.append(mine())
    return min(b), min(o)


def _line(name, base_s, ours_s, target):
    ratio = base_s / ours_s if ours_s > 0 else float("inf")
    ok = "ok" if ratio >= target else "BELOW TARGET"
    print(f"{name:<46} plain {base_s:7.2f} s   ours {ours_s:7.2f} s   {ratio:5.2f}x  (target >= {target}x: {ok})",
          flush=True)
    return ratio


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, default=1000, help="images for the MobileNetV2 case (default 1000)")
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--memory-runs", type=int, default=20, help="worker runs for the memory check (0: skip)")
    parser.add_argument("--skip-mobilenet", action="store_true")
    parser.add_argument("--repeat", type=int, default=1,
                        help="measure each case this many times, alternating plain and ours, and keep the fastest "
                             "of each (steadier on a busy machine)")
    parser.add_argument("--smoke", action="store_true",
                        help="100 images, 1 epoch, 2 rates, 1 worker run, one repeat: proves every case still runs")
    args = parser.parse_args(argv)
    if args.smoke:
        args.n, args.epochs, args.memory_runs, args.repeat = 100, 1, 1, 1

    import keras
    import tensorflow as tf

    tf.get_logger().setLevel("ERROR")
    from tlviz.finetune.config import RunConfig
    from tlviz.imagesets import load_image_set
    from tlviz.layers import layer_table
    from tlviz.unfreeze import base_weight_layers
    from tlviz.finetune.build import depth_choices, snap_depth
    from tlviz.models import load_model
    from tlviz.samples import sample_path

    print(f"TensorFlow {tf.__version__}, Keras {keras.__version__}, {os.cpu_count()} CPUs", flush=True)
    loaded = load_model(sample_path("digits_base.keras"))
    images = load_image_set(sample_path("digits_5_9"), loaded.image_size, loaded.channels)
    cfg = RunConfig(unfreeze=0, lr=1e-2, epochs=args.epochs, preset="tf")
    plain_fit(loaded, images, RunConfig(unfreeze=0, lr=1e-2, epochs=1, preset="tf"))  # TF warm-up
    print(f"\n== sample: digits_base on digits_5_9 ({len(images)} images, 32x32), new head ==")
    b, o = _best(args.repeat, lambda: plain_fit(loaded, images, cfg), lambda: ours(loaded, images, cfg)[0])
    _line(f"head only, {args.epochs} epochs", b, o, 3)

    if not args.skip_mobilenet:
        mloaded, mimages = mobilenet_case(args.n)
        table = layer_table(mloaded.model)
        n_base = len(base_weight_layers(table))
        quarter = snap_depth(max(1, n_base // 4), depth_choices(table))
        print(f"\n== MobileNetV2 alpha 0.35, 96x96, weights=None, {len(mimages)} images, 10 classes "
              f"({n_base} weighted base layers; top quarter -> depth {quarter}) ==", flush=True)
        mcfg = RunConfig(unfreeze=0, lr=1e-3, epochs=args.epochs, preset="tf", new_head=False)
        b, o = _best(args.repeat, lambda: plain_fit(mloaded, mimages, mcfg), lambda: ours(mloaded, mimages, mcfg)[0])
        _line(f"head only, {args.epochs} epochs", b, o, 3)

        rates = [1e-4, 3e-4, 1e-3, 3e-3][:2 if args.smoke else 4]
        cfgs = [RunConfig(**{**mcfg.to_dict(), "lr": r}) for r in rates]
        b, o = _best(args.repeat, lambda: sum(plain_fit(mloaded, mimages, c) for c in cfgs),
                     lambda: _sweep(mloaded, mimages, cfgs))
        _line(f"sweep of {len(rates)} learning rates, head only", b, o, 4)

        qcfg = RunConfig(**{**mcfg.to_dict(), "unfreeze": quarter})
        b, o = _best(args.repeat, lambda: plain_fit(mloaded, mimages, qcfg), lambda: ours(mloaded, mimages, qcfg)[0])
        _line(f"top quarter unfrozen (depth {quarter}), {args.epochs} epochs", b, o, 1.5)
        res = ours(mloaded, mimages, qcfg)[1]
        print(f"   ({'cached' if res.cache_used else 'NOT cached'}: {res.notes[-1] if res.notes else ''})")
        print("   (each run starts from a fresh activation cache, except within the sweep; plain and ours both "
              "clone the model)")

    if args.memory_runs:
        from tlviz.jobs import start_job, wait

        root = tempfile.mkdtemp(prefix="tlviz_bench_runs_")
        small = RunConfig(unfreeze=0, lr=1e-2, epochs=1, preset="tf")
        print(f"\n== server memory over {args.memory_runs} runs in worker processes (runs in {root}) ==", flush=True)
        first = None
        t0 = time.perf_counter()
        for i in range(args.memory_runs):
            job = start_job(loaded, images, [small], root=root)
            st = wait(job.job_id, root=root, timeout=300, interval=0.2)
            if st.state != "done":
                print(f"run {i + 1}: job {st.state}: {st.message}")
            if i == 0:
                first = _rss_mb()
        last = _rss_mb()
        growth = (last - first) / first * 100
        print(f"RSS after run 1: {first:.0f} MB; after run {args.memory_runs}: {last:.0f} MB; growth {growth:+.1f} % "
              f"(target within 10 %: {'ok' if abs(growth) <= 10 else 'ABOVE TARGET'}); "
              f"{(time.perf_counter() - t0) / args.memory_runs:.1f} s per run incl. worker start")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
