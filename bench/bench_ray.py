"""Benchmark: a 4-configuration sweep on this machine's worker vs through a local Ray instance (Ray Tune).

Run: ``python bench/bench_ray.py`` (a few minutes on 2 CPU cores; needs ``pip install -r requirements-ray.txt``).

Both sides run the same job the page starts — `tlviz.jobs.start_job` with the same 4 configurations
(the top quarter and the top half of the base unfrozen x 2 learning rates of a MobileNetV2-shaped model, ``weights=None``, alpha 0.35, 96x96,
``--n`` digit images, 10 classes) — timed from the call to the job's end, results stored in a runs folder:

- **local**: one worker process runs the 4 runs one after another (TensorFlow on every core);
- **Ray**: a Ray instance started in this process (``ray.init(num_cpus=<cores>)``, the way
  ``TLVIZ_RAY_ADDRESS`` would name a cluster); the driver sends the model and images through the object
  store and Ray Tune runs the 4 trials, a CPU share each, as many at once as the cores allow.

Repeats alternate local and Ray. Prints every time, the ratio Ray / local per repeat (median and spread),
and the ratio of the fastest of each; target: Ray <= 1.2x local. Then one Ray run with ASHA, for information.
``--smoke``: 100 images, 1 epoch, 2 configurations (the top quarter x 2 rates), one repeat, no ASHA run: a
proof that both executors still run (the ratio means little).
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
import warnings
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
warnings.filterwarnings("ignore")

TARGET = 1.2


def _job(loaded, images, cfgs, root, executor, asha=False) -> tuple[float, object]:
    from tlviz.jobs import start_job, wait

    t0 = time.perf_counter()
    job = start_job(loaded, images, cfgs, root=root, executor=executor, asha=asha)
    st = wait(job.job_id, root=root, timeout=3600, interval=0.1)
    dt = time.perf_counter() - t0
    if st.state != "done" or any(r.state not in ("completed", "stopped") for r in st.runs):
        print(f"  {executor}: job {st.state} {st.message}; runs: {[(r.state, r.message) for r in st.runs]}")
    return dt, st


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, default=600, help="images (default 600)")
    parser.add_argument("--epochs", type=int, default=3, help="epochs per run (default 3)")
    parser.add_argument("--repeat", type=int, default=3, help="alternating local / Ray repeats (default 3)")
    parser.add_argument("--cpus", type=int, default=os.cpu_count() or 2, help="CPUs of the local Ray instance")
    parser.add_argument("--smoke", action="store_true",
                        help="100 images, 1 epoch, 2 configurations, one repeat, no ASHA: proves it runs")
    args = parser.parse_args(argv)
    if args.smoke:
        args.n, args.epochs, args.repeat = 100, 1, 1

    import ray
    import tensorflow as tf

    tf.get_logger().setLevel("ERROR")
    from bench_finetune import mobilenet_case

    from tlviz.finetune.build import depth_choices, snap_depth
    from tlviz.finetune.config import RunConfig
    from tlviz.finetune.sweep import sweep_configs
    from tlviz.layers import layer_table
    from tlviz.unfreeze import base_weight_layers

    loaded, images = mobilenet_case(args.n)
    table = layer_table(loaded.model)
    n_base = len(base_weight_layers(table))
    quarter = snap_depth(max(1, n_base // 4), depth_choices(table))
    half = snap_depth(max(1, n_base // 2), depth_choices(table))
    base = RunConfig(epochs=args.epochs, preset="tf", new_head=False)
    cfgs = sweep_configs(base, [quarter] if args.smoke else [quarter, half], [1e-3, 3e-3])
    print(f"ray {ray.__version__}, TensorFlow {tf.__version__}, {os.cpu_count()} CPUs; MobileNetV2 alpha 0.35 96x96 "
          f"weights=None, {len(images)} images, 10 classes; sweep depths "
          f"{sorted({c.unfreeze for c in cfgs})} x rates [1e-3, 3e-3], "
          f"{args.epochs} epochs each", flush=True)

    ctx = ray.init(address="local", num_cpus=args.cpus, include_dashboard=False, log_to_driver=False)
    os.environ["TLVIZ_RAY_ADDRESS"] = ctx.address_info["gcs_address"]
    root = tempfile.mkdtemp(prefix="tlviz_bench_ray_")
    local, remote, ratios = [], [], []
    try:
        for i in range(max(args.repeat, 1)):
            lt, lst = _job(loaded, images, cfgs, root, "local")
            rt, rst = _job(loaded, images, cfgs, root, "ray")
            local.append(lt)
            remote.append(rt)
            ratios.append(rt / lt)
            where = sorted({r.ran_on for r in rst.runs})
            print(f"repeat {i + 1}: local {lt:6.1f} s   Ray {rt:6.1f} s   ratio {rt / lt:4.2f}x   "
                  f"(Ray runs on: {'; '.join(where)})", flush=True)
            if i == 0:
                for a, b in zip(lst.runs, rst.runs):
                    va = a.history["val_accuracy"].astype(float).tolist()
                    vb = b.history["val_accuracy"].astype(float).tolist()
                    print(f"  depth {a.config['unfreeze']:>3} lr {a.config['lr']:.0e}: val accuracy per epoch "
                          f"local {[round(v, 3) for v in va]} / Ray {[round(v, 3) for v in vb]}")
        med = statistics.median(ratios)
        fastest = min(remote) / min(local)
        ok = "ok" if fastest <= TARGET else "ABOVE TARGET"
        print(f"\nRay / local: median {med:.2f}x (spread {min(ratios):.2f}-{max(ratios):.2f}x over {len(ratios)} "
              f"repeats); fastest Ray {min(remote):.1f} s vs fastest local {min(local):.1f} s = {fastest:.2f}x "
              f"(target <= {TARGET}x: {ok})", flush=True)
        if args.smoke:
            return 0
        at, ast = _job(loaded, images, cfgs, root, "ray", asha=True)
        stopped = [f"depth {r.config['unfreeze']} lr {r.config['lr']:.0e} after epoch {r.stopped_at}"
                   for r in ast.runs if r.state == "stopped"]
        print(f"with ASHA (for information): {at:.1f} s, {len(stopped)} of {len(ast.runs)} runs stopped early"
              + (f" ({'; '.join(stopped)})" if stopped else ""), flush=True)
    finally:
        ray.shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(main())
