"""How fast the Try page answers one photo, and whether it stalls the server's other sessions.

A MobileNetV2 at 224x224 (``weights=None``, the real architecture; a new 3-class head, as `bench/realsize.py`
builds it) answers JPEG photos under two presets (each: top classes and a Grad-CAM overlay), as the Try page
does (`tlviz.tryit.Explainer.answer`). Printed, over the repeats: the first photo (the feature map found, the
graph traced), the next photos (the page's steady state), and as the baseline, measured in the same process on
the same photos, one plain prediction (``model(x)``) per preset. Meanwhile a second thread, standing for another
session's script run, ticks every 5 ms; its longest wait shows whether an answer holds the interpreter.

Run: ``python bench/bench_try.py [--repeats 5] [--photos 5]``; ``--smoke``: a 64x64 model, 2 photos, 1 repeat.
Target (issue 24): an answer within 2 s of the photo on a 2-core CPU.
"""
from __future__ import annotations

import argparse
import io
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))


def _photos(n: int, size: int = 480) -> list[bytes]:
    from PIL import Image

    rng = np.random.default_rng(0)
    out = []
    for _ in range(n):
        buf = io.BytesIO()
        Image.fromarray(rng.integers(0, 256, (size, size * 4 // 3, 3), dtype=np.uint8)).save(buf, "JPEG", quality=90)
        out.append(buf.getvalue())
    return out


class _Ticker:
    """Another session's thread: records the longest gap between its 5 ms ticks."""

    def __init__(self):
        self.longest = 0.0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self):
        last = time.perf_counter()
        while not self._stop.is_set():
            time.sleep(0.005)
            now = time.perf_counter()
            self.longest = max(self.longest, now - last - 0.005)
            last = now

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5, help="fresh explainers (cold answers) to time")
    parser.add_argument("--photos", type=int, default=5, help="photos per repeat (the first is the cold one)")
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--smoke", action="store_true", help="a 64x64 model, 2 photos, 1 repeat: seconds")
    args = parser.parse_args(argv)
    if args.smoke:
        args.repeats, args.photos, args.size = 1, 2, 64
    from tlviz.quiet import quiet_tensorflow

    quiet_tensorflow()
    from realsize import build_model

    from tlviz.models import load_model
    from tlviz.presets import apply_preset
    from tlviz.tryit import Explainer, decode_photo

    folder = Path(tempfile.mkdtemp(prefix="tlviz-bench-try-"))
    path = build_model("MobileNetV2", folder / f"mobilenetv2_{args.size}.keras", size=args.size)
    loaded = load_model(path)
    presets = [("your pipeline", "unit"), ("what the model expects", "tf")]
    photos = _photos(max(2, args.photos))
    print(f"MobileNetV2 at {args.size}x{args.size} (weights=None), presets {[p for _, p in presets]}, "
          f"{args.repeats} repeats x {len(photos)} photos")

    # baseline: one plain prediction per preset, same photos, same process (warmed first)
    xs = {p: apply_preset(decode_photo(photos[0], loaded, p)[None], p) for _, p in presets}
    for x in xs.values():
        loaded.model(x, training=False)
    base = []
    for _ in range(max(3, args.repeats)):
        t = time.perf_counter()
        for x in xs.values():
            np.asarray(loaded.model(x, training=False))
        base.append(time.perf_counter() - t)

    cold, warm, stall = [], [], []
    for _ in range(args.repeats):
        ex = Explainer(loaded)
        with _Ticker() as ticker:
            for i, photo in enumerate(photos):
                t = time.perf_counter()
                result = ex.answer(photo, presets)
                (cold if i == 0 else warm).append(time.perf_counter() - t)
                assert all(a.overlay is not None for a in result.answers), result.heatmap_reason
        stall.append(ticker.longest)

    def spread(xs):
        return f"median {statistics.median(xs):.3f} s (fastest {min(xs):.3f}, slowest {max(xs):.3f}, n={len(xs)})"

    b = statistics.median(base)
    print(f"baseline, plain prediction x{len(presets)}: {spread(base)}")
    print(f"first photo (cold explainer): {spread(cold)}  = {statistics.median(cold) / b:.1f}x baseline")
    print(f"next photos (warm):           {spread(warm)}  = {statistics.median(warm) / b:.1f}x baseline")
    print(f"another thread's longest wait while answering: {spread(stall)}")
    met = max(warm) < 2.0
    print(f"target: every warm answer within 2 s: {'met' if met else 'NOT met'} (slowest {max(warm):.3f} s); "
          f"cold within 2 s: {'met' if max(cold) < 2.0 else 'not met'} (slowest {max(cold):.3f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
