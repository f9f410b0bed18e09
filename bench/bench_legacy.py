"""Keras 2 `.h5` files at real size: does translation cost more than Keras loading its own format?

    python bench/bench_legacy.py [--repeats 3] [--models resnet50,mobilenetv2,efficientnetb0]
    python bench/bench_legacy.py --smoke    # the small README MobileNet (alpha 0.25, 128x128), one repeat

For each real-size architecture (224x224, ``weights=None``, every weight seeded noise), the
Keras 2 file is written once by ``tf_keras`` in its own process (tools/keras2_models.py, cached in
``/tmp/tlviz_keras2``). Then, in this process and for the same model:

- baseline: ``keras.saving.load_model`` of the converted `.keras` file (Keras 3's own format);
- tlviz: ``tlviz.models.load_model`` of the Keras 2 `.h5` (checks, translation, build, weights).

It prints the spread over repeats (min / median / max seconds), the ratio tlviz / baseline on
medians, and the largest difference between tlviz's predictions and tf_keras's own.
Target: ratio <= 2.0 on every model, predictions within 1e-5 (the exit status is 1 when missed, except with
``--smoke``, which proves the benchmark runs and only prints the verdict).
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

CACHE = Path(tempfile.gettempdir()) / "tlviz_keras2"
TARGET = 2.0


def _generate(names: list[str]) -> None:
    missing = [n for n in names if not (CACHE / f"{n}.h5").exists()]
    if missing:
        print(f"writing Keras 2 files with tf_keras: {', '.join(missing)} …", flush=True)
        subprocess.run([sys.executable, str(ROOT / "tools" / "keras2_models.py"), str(CACHE), *missing], check=True,
                       stdout=subprocess.DEVNULL)


def _timed(fn, repeats: int) -> tuple[list[float], object]:
    times, out = [], None
    for _ in range(repeats):
        t0 = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - t0)
    return times, out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--models", default="resnet50,mobilenetv2,efficientnetb0")
    ap.add_argument("--smoke", action="store_true",
                    help="the small README MobileNet only, one repeat; exit status 0 whatever the verdict")
    args = ap.parse_args()
    if args.smoke:
        args.models, args.repeats = "mobilenet", 1
    names = [n for n in args.models.split(",") if n]
    _generate(names)

    import keras
    import numpy as np

    from tlviz.models import keras_bytes, load_model

    ok = True
    print(f"{'model':<16}{'MB':>6}  {'keras 3 .keras (s)':>22}  {'tlviz Keras 2 .h5 (s)':>24}  {'ratio':>6}  {'max |diff|':>10}")
    for name in names:
        h5 = CACHE / f"{name}.h5"
        loaded = load_model(h5)
        native = CACHE / f"{name}.keras"
        native.write_bytes(keras_bytes(loaded))
        base_t, _ = _timed(lambda: keras.saving.load_model(native, compile=False, safe_mode=True), args.repeats)
        tl_t, again = _timed(lambda: load_model(h5), args.repeats)
        saved = np.load(CACHE / f"{name}.npz")
        diff = float(np.max(np.abs(np.asarray(again.model(saved["inputs"], training=False)) - saved["outputs"])))
        ratio = statistics.median(tl_t) / statistics.median(base_t)
        spread = lambda t: f"{min(t):.2f}/{statistics.median(t):.2f}/{max(t):.2f}"  # noqa: E731
        print(f"{name:<16}{h5.stat().st_size / 2**20:6.0f}  {spread(base_t):>22}  {spread(tl_t):>24}  {ratio:6.2f}  "
              f"{diff:10.2e}", flush=True)
        ok &= ratio <= TARGET and diff <= 1e-5
    print(f"(seconds as min/median/max over {args.repeats} repeats; target: ratio <= {TARGET}, |diff| <= 1e-5) "
          + ("PASS" if ok else "FAIL"))
    return 0 if ok or args.smoke else 1


if __name__ == "__main__":
    sys.exit(main())
