"""What do issue 14's fine-tuning additions cost at real size, against a plain run in the same process?

Run: ``python bench/bench_finetune_extras.py [--images 200] [--original 120] [--epochs 2] [--repeat 2]
[--out /tmp/tlviz_real]``; ``--smoke``: the head-only configuration at 96x96 with 30 + 12 JPEGs in a
temporary folder, one epoch, one repeat, no empty-cache runs: a proof that it still runs (its ratios mean little).

A MobileNetV2 at 224x224 (``weights=None``, `bench/realsize.py`) fine-tuned on generated JPEGs, at two
depths: the head only (activations cached) and the top block (``block_16``, cached below it). Each
configuration runs, in alternating order, ``--repeat`` times each way:

- **plain**: the run with the additions switched off (no duplicate groups, no drift, no retention);
- **all**: the run as tlviz makes it: duplicate-aware split, representation drift (CKA per block on 128
  images, features before and after), and the original task's retention (``--original`` images of the
  model's own 3 classes, scored before and after).

It prints the fastest and the spread of each (the activation cache warm, as in a sweep or a second run),
the ratio all / plain, the seconds each addition took inside the run (``RunResult.seconds``), the
random-init control's time against its run (a control is a second run, on a random base whose activations
are not cached yet), and a first run on an empty cache each way (every measurement then computes what it
keeps for later runs: the duplicate groups, the features and predictions before the run).
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

from realsize import build_model, make_images  # noqa: E402


def _plain(monkeypatch_targets):
    """Switch the additions off (bench only): no duplicate groups, no drift, no retention."""
    from tlviz.finetune import run as run_mod

    def no_groups(images, cache=None, image_key=None):
        return np.arange(len(images), dtype=np.int64), {"groups": 0, "images": 0}

    def nothing_before(*args, **kwargs):
        return None, None

    saved = {name: getattr(run_mod, name) for name in ("split_groups", "start_probes")}
    run_mod.split_groups, run_mod.start_probes = no_groups, nothing_before
    monkeypatch_targets.append(saved)


def _restore(monkeypatch_targets):
    from tlviz.finetune import run as run_mod

    for saved in monkeypatch_targets:
        for name, fn in saved.items():
            setattr(run_mod, name, fn)
    monkeypatch_targets.clear()


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", type=int, default=200, help="generated JPEGs to fine-tune on (default 200)")
    parser.add_argument("--original", type=int, default=120, help="images of the original task (default 120)")
    parser.add_argument("--epochs", type=int, default=2, help="epochs per run (default 2)")
    parser.add_argument("--repeat", type=int, default=2, help="runs of each kind per configuration (default 2)")
    parser.add_argument("--out", default="/tmp/tlviz_real", help="cache folder for the model and images")
    parser.add_argument("--size", type=int, default=224, help="the model's input size (default 224)")
    parser.add_argument("--smoke", action="store_true",
                        help="head only at 96x96, 30 + 12 JPEGs in a temporary folder, 1 epoch, 1 repeat, "
                             "no empty-cache runs: proves it still runs")
    args = parser.parse_args(argv)
    if args.smoke:
        with tempfile.TemporaryDirectory(prefix="tlviz_bench_smoke_") as tmp:
            args.images, args.original, args.epochs, args.repeat, args.size, args.out = 30, 12, 1, 1, 96, tmp
            return run(args, smoke=True)
    return run(args)


def run(args, smoke: bool = False) -> int:
    """Build (once) the model and images under ``args.out``, then time and print as the module says."""
    import warnings

    warnings.filterwarnings("ignore")
    from tlviz.finetune.build import depth_choices
    from tlviz.contentkeys import pixels_key
    from tlviz.finetune.cache import ActivationCache
    from tlviz.finetune.config import RunConfig, control_config
    from tlviz.finetune.run import run_finetune
    from tlviz.imagesets import open_source
    from tlviz.layers import layer_table
    from tlviz.models import load_model

    out = Path(args.out)
    name = "mobilenetv2.keras" if args.size == 224 else f"mobilenetv2_{args.size}.keras"
    loaded = load_model(build_model("MobileNetV2", out / name, size=args.size))
    images = open_source(make_images(out / f"images_{args.images}", args.images)).load(loaded.image_size,
                                                                                          loaded.channels)
    original = open_source(make_images(out / f"original_{args.original}", args.original, seed=1)).load(
        loaded.image_size, loaded.channels)
    top = next(d for d, label in depth_choices(layer_table(loaded.model)) if "block_16" in label)
    configs = {"head only": RunConfig(unfreeze=0, lr=1e-3, epochs=args.epochs, preset="tf"),
               f"top block (depth {top})": RunConfig(unfreeze=top, lr=1e-4, epochs=args.epochs, preset="tf")}
    if smoke:
        configs = dict(list(configs.items())[:1])
    key = pixels_key(images.images)
    print(f"model: {loaded.name} {args.size}x{args.size}, {len(images)} images to fine-tune on, {len(original)} "
          f"of the original task, {args.epochs} epochs, {args.repeat} repeats per kind; CPU threads: {os.cpu_count()}")
    patched: list = []
    for name, cfg in configs.items():
        cache = ActivationCache()
        run_finetune(loaded, images, cfg, cache=cache, image_key=key)  # warm-up: traces, activations cached
        times = {"plain": [], "all": []}
        extras = []
        last = None
        for _ in range(args.repeat):
            for kind in ("plain", "all"):
                if kind == "plain":
                    _plain(patched)
                t0 = time.perf_counter()
                res = run_finetune(loaded, images, cfg, cache=cache, image_key=key,
                                   original=original if kind == "all" else None)
                times[kind].append(time.perf_counter() - t0)
                _restore(patched)
                if kind == "all":
                    extras.append(res.seconds)
                    last = res
        plain, full = min(times["plain"]), min(times["all"])
        spread = {k: max(v) - min(v) for k, v in times.items()}
        print(f"\n{name}: plain {plain:.1f} s (spread {spread['plain']:.1f}), with the additions {full:.1f} s "
              f"(spread {spread['all']:.1f}): ratio {full / plain:.2f}")
        for part in ("duplicates", "drift", "retention"):
            vals = [e.get(part, 0.0) for e in extras]
            print(f"  {part:<10} {min(vals):6.2f} s fastest ({min(vals) / plain:.2f} of the plain run)")
        print("  drift: " + ", ".join(f"{d['block']} {d['cka']:.3f}" for d in last.drift if d["status"] != "unchanged")
              + (" (every block unchanged: exactly 1.0, no pass)" if all(d["status"] == "unchanged"
                                                                         for d in last.drift) else ""))
        r = last.retention
        print(f"  retention: {r['before']:.1%} before, {r['after']:.1%} after on {r['n_images']} images")
        t0 = time.perf_counter()
        run_finetune(loaded, images, control_config(cfg, "random-init"), cache=cache, image_key=key)
        control = time.perf_counter() - t0
        print(f"  random-init control: {control:.1f} s, {control / full:.2f} of the (warm) run with the additions "
              "(its random base has no cached activations yet)")
        if smoke:
            continue
        # A first run on a fresh cache: every measurement computes what it keeps for later runs.
        cold = {}
        for kind in ("plain", "all"):
            if kind == "plain":
                _plain(patched)
            t0 = time.perf_counter()
            res = run_finetune(loaded, images, cfg, cache=ActivationCache(), image_key=key,
                               original=original if kind == "all" else None)
            cold[kind] = time.perf_counter() - t0
            _restore(patched)
        print(f"  first run on an empty cache: plain {cold['plain']:.1f} s, with the additions {cold['all']:.1f} s: "
              f"ratio {cold['all'] / cold['plain']:.2f} (duplicates {res.seconds.get('duplicates', 0):.2f} s, drift "
              f"{res.seconds.get('drift', 0):.2f} s, retention {res.seconds.get('retention', 0):.2f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
