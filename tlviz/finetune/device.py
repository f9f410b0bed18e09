"""The device a run trains on: a GPU when TensorFlow sees one (memory growth on), else the CPU.

Called first thing in every process that trains (a local worker, a Ray task or
trial), before TensorFlow touches a GPU: with memory growth on, TensorFlow takes
GPU memory as it needs it instead of all of it at once, so parallel trials (or a
run beside another program) can share one card.
"""

from __future__ import annotations

import platform


def setup_device(threads: int | None = None) -> dict:
    """Turn on GPU memory growth (when there is a GPU) and say which device runs will use.

    Args:
        threads: limit TensorFlow's CPU thread pools to this many threads (a
            Ray trial's CPU share), when TensorFlow has not started yet. Defaults
            to `None` (TensorFlow's default: every core).

    Returns:
        ``{"device": "GPU" | "CPU", "device_name", "gpus", "memory_growth", "threads"}``.
    """
    import tensorflow as tf

    if threads:
        try:
            tf.config.threading.set_intra_op_parallelism_threads(int(threads))
            tf.config.threading.set_inter_op_parallelism_threads(max(1, min(2, int(threads))))
        except RuntimeError:  # TensorFlow already started in this process (a reused Ray worker)
            pass
    gpus = tf.config.list_physical_devices("GPU")
    growth = True
    for g in gpus:
        try:
            tf.config.experimental.set_memory_growth(g, True)
        except (RuntimeError, ValueError):  # already initialised: keeps the setting it started with
            try:
                growth = growth and bool(tf.config.experimental.get_memory_growth(g))
            except (RuntimeError, ValueError):
                growth = False
    info = {"gpus": len(gpus), "threads": tf.config.threading.get_intra_op_parallelism_threads() or None}
    if gpus:
        name = gpus[0].name
        try:
            name = tf.config.experimental.get_device_details(gpus[0]).get("device_name") or name
        except (RuntimeError, ValueError):
            pass
        return {**info, "device": "GPU", "device_name": name, "memory_growth": growth}
    return {**info, "device": "CPU", "device_name": platform.processor() or platform.machine(), "memory_growth": None}
