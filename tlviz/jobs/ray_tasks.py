"""What runs on a Ray worker (the Ray executor's tasks): one fine-tuning run (a Ray task, or a Ray Tune trial) or a
range test.

Nothing here reads a path of the server. The model's bytes and the image
arrays come from the cluster's object store (the ``inputs`` dict holds their
object refs; a worker process loads them once and keeps them for its next run).
A run writes its folder in a temporary folder on the worker's node, exactly as
`tlviz.finetune.run.run_finetune` writes one on the server, and sends back:

- while it runs, through the job's `Board` actor: ``status`` (where it runs),
  ``progress`` (at most every half second) and ``history`` with the TensorBoard
  event files (every epoch);
- at the end, the files of its folder (`pack`: history, metrics, weight
  changes, ``model.keras``, TensorBoard events) as bytes: a task returns them,
  a trial posts them to the board (``result``) before it ends.

Cancelling: the driver raises the board's flag; every run looks at it twice a
second (`_CancelWatch`) and stops after the current batch, keeping what it
measured, as on this machine.

Early stopping (Ray Tune's ASHA): a trial reports each epoch but its last to
Tune; when the scheduler stops it, Tune ends the trial's thread at that report
(``SystemExit``): the trial posts ``stopped`` with the epoch and its TensorBoard
files, and ends. The final report is made only after the results were posted.

This module imports ``ray`` inside its functions only: it is imported on the
worker, where ``ray`` is installed.
"""

from __future__ import annotations

import math
import os
import socket
import tempfile
import threading
from pathlib import Path

#: Seconds between two looks at the board's cancel flag.
CANCEL_POLL_S = 0.5
#: The board's key for the range test's events (it has no run folder).
LRFIND = "__lrfind__"
#: Files of a run folder that are not sent back (the driver writes its own).
_NOT_SENT = {"progress.json", "status.json", "config.json"}

# Per worker process: the inputs of the last job (a reused worker skips loading them again) and the cache.
_STATE: dict = {"key": None, "inputs": None, "cache": None}


class Board:
    """The job's mailbox on the cluster (a Ray actor, created by the driver).

    Runs post events (``put``), the driver collects them (``drain``) about three
    times a second and writes them into the run folders; it also raises the cancel
    flag (``cancel``) that the runs look at (``cancelled``).
    """

    def __init__(self):
        self._events: list = []
        self._cancel = False

    def put(self, run_id: str, kind: str, payload=None) -> bool:
        self._events.append((run_id, kind, payload))
        return True

    def drain(self) -> list:
        out, self._events = self._events, []
        return out

    def cancel(self) -> bool:
        self._cancel = True
        return True

    def cancelled(self) -> bool:
        return self._cancel


class _CancelWatch:
    """``watch()`` is True once the board's cancel flag is up (looked at every `CANCEL_POLL_S` in a thread)."""

    def __init__(self, board):
        import ray

        self._ray, self._board = ray, board
        self._flag, self._done = threading.Event(), threading.Event()
        if self._ask():
            self._flag.set()
        self._thread = threading.Thread(target=self._loop, daemon=True, name="tlviz-cancel-watch")
        self._thread.start()

    def _ask(self) -> bool:
        try:
            return bool(self._ray.get(self._board.cancelled.remote(), timeout=10))
        except Exception:  # noqa: BLE001 - an unanswered look is not a cancel
            return False

    def _loop(self) -> None:
        while not self._flag.is_set() and not self._done.wait(CANCEL_POLL_S):
            if self._ask():
                self._flag.set()

    def __call__(self) -> bool:
        return self._flag.is_set()

    def stop(self) -> None:
        self._done.set()


def _writer(folder: Path, run_id: str, board, on_epoch=None):
    """A `RunWriter` in a temporary folder that also posts progress and history to the board."""
    from tlviz.finetune.store import RunWriter

    class RemoteWriter(RunWriter):
        def progress(self, info: dict) -> None:
            board.put.remote(run_id, "progress", info)

        def epoch(self, history: list[dict]) -> None:
            super().epoch(history)  # history.json and TensorBoard events, in the temporary folder
            # The TensorBoard files (a few hundred bytes an epoch) travel with the history: a trial that the
            # scheduler stops, or a lost node, leaves them behind in the run folder too.
            board.put.remote(run_id, "history", {"history": history, "files": pack(self.dir, "tb")})
            if on_epoch is not None:
                on_epoch(history)

    return RemoteWriter(folder)


def pack(folder: Path, only: str | None = None) -> dict[str, bytes]:
    """The files of a run folder as ``{relative path: bytes}`` (what travels back to the server).

    Args:
        folder: the folder.
        only: only the files under this sub-folder (e.g. ``"tb"``). Defaults to every file.
    """
    folder = Path(folder)
    base = folder / only if only else folder
    out = {}
    for p in sorted(base.rglob("*")) if base.is_dir() else []:
        rel = p.relative_to(folder).as_posix()
        if p.is_file() and not p.name.startswith(".") and rel not in _NOT_SENT:
            out[rel] = p.read_bytes()
    return out


def where_here(device: dict) -> dict:
    """Where this Ray worker runs: ``executor`` ray, ``node`` (its IP), host name, device, process id."""
    import ray

    try:
        node_id = ray.get_runtime_context().get_node_id()[:12]
    except Exception:  # noqa: BLE001
        node_id = ""
    return {"executor": "ray", "node": ray.util.get_node_ip_address(), "host": socket.gethostname(),
            "node_id": node_id, "device": device.get("device", "?"), "device_name": device.get("device_name", ""),
            "threads": device.get("threads"), "pid": os.getpid()}


def _inputs(inputs: dict):
    """The job's `LoadedModel`, `ImageSet` and original task's `ImageSet` (None when the job has none), from
    the object store (kept for the next run in this process)."""
    import ray

    from tlviz.jobs.inputs import image_set_from, load_original, loaded_from

    meta = inputs["meta"]
    key = (meta.get("model_key"), meta.get("set_key") or meta.get("image_key"))
    if _STATE["key"] != key:
        _STATE["key"], _STATE["inputs"] = None, None  # let the previous job's model go first
        model_bytes, arrays = ray.get([inputs["model"], inputs["images"]])
        original = load_original(meta, ray.get(inputs["original"])) if "original" in inputs else None
        _STATE["inputs"] = (loaded_from(model_bytes, meta), image_set_from(arrays, meta), original)
        _STATE["key"] = key
    return _STATE["inputs"]


def _cache():
    """The activation cache of this worker process, on the node's own disk (shared by the node's runs)."""
    from tlviz.finetune.cache import ActivationCache

    if _STATE["cache"] is None:
        folder = Path(tempfile.gettempdir()) / f"tlviz-activations-{os.getuid() if hasattr(os, 'getuid') else 0}"
        _STATE["cache"] = ActivationCache(disk_dir=folder)
    return _STATE["cache"]


def _start(board, run_id: str, threads):
    """Common start of a run or range test: the cancel watch, where (posted at once, then with the device)."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    watch = _CancelWatch(board)
    if watch():
        return watch, None
    board.put.remote(run_id, "status", {"state": "running", "where": where_here({"device": "?"})})
    import warnings

    warnings.filterwarnings("ignore", module="keras")
    from tlviz.finetune.device import setup_device

    where = where_here(setup_device(threads))  # imports TensorFlow: GPU memory growth before anything runs
    board.put.remote(run_id, "status", {"state": "running", "where": where})
    return watch, where


def _run(inputs: dict, config: dict, run_id: str, board, threads=None, on_epoch=None) -> dict:
    from tlviz.errors import RunRefused
    from tlviz.finetune.config import RunConfig
    from tlviz.finetune.run import run_finetune

    watch, where = _start(board, run_id, threads)
    if where is None:
        watch.stop()
        return {"state": "cancelled", "message": "cancelled before it started", "files": {}, "where": {}}
    try:
        loaded, images, original = _inputs(inputs)
        cfg = RunConfig.from_dict(config)
        with tempfile.TemporaryDirectory(prefix="tlviz-run-") as tmp:
            writer = _writer(Path(tmp) / run_id, run_id, board, on_epoch)
            try:
                res = run_finetune(loaded, images, cfg, writer=writer, should_cancel=watch, cache=_cache(),
                                   image_key=inputs["meta"].get("image_key"), original=original)
                state, message, final = res.state, (res.findings[0].title if res.findings else ""), res.final
            except RunRefused as exc:
                state, message, final = "refused", str(exc), {}
            except SystemExit:  # Ray Tune's scheduler stopped this trial at its last report
                writer.close()
                _post_stopped(board, run_id, writer)
                raise
            finally:
                writer.close()
            return {"state": state, "message": message, "final": final, "where": where, "files": pack(writer.dir)}
    finally:
        watch.stop()


def _post_stopped(board, run_id: str, writer) -> None:
    import ray

    history = []
    try:
        import json

        history = json.loads((writer.dir / "history.json").read_text())
    except (OSError, ValueError):
        pass
    epoch = int(history[-1]["epoch"]) if history else 0
    try:
        ray.get(board.put.remote(run_id, "stopped", {"epoch": epoch, "files": pack(writer.dir, "tb")}), timeout=30)
    except Exception:  # noqa: BLE001 - the driver falls back on the streamed history
        pass


def run_task(inputs: dict, config: dict, run_id: str, board) -> dict:
    """One fine-tuning run as a Ray task.

    Args:
        inputs: ``{"model": ref, "images": ref, "meta": {...}}`` (`tlviz.jobs.ray_executor`).
        config: the `RunConfig` as a dict.
        run_id: the run's id (its folder's name on the server).
        board: the job's `Board` actor.

    Returns:
        ``{"state", "message", "final", "where", "files"}``; ``files`` maps paths in
        the run folder to their bytes.
    """
    return _run(inputs, config, run_id, board)


def _tune_metrics(entry: dict, epoch: int) -> dict:
    """What a trial reports to Tune: validation loss (the scheduler's metric; a missing one counts as very bad)."""
    def num(v, bad):
        return float(v) if v is not None and math.isfinite(float(v)) else bad

    return {"val_loss": num(entry.get("val_loss"), 1e9), "val_accuracy": num(entry.get("val_accuracy"), 0.0),
            "epoch": int(epoch)}


def tune_trial(config: dict, inputs: dict | None = None, board=None, runs: list | None = None,
               threads: int | None = None) -> None:
    """One run of a sweep as a Ray Tune trial (function trainable).

    Args:
        config: Tune's config: ``{"run_index": i}``, the index into `runs`.
        inputs: as for `run_task`.
        board: the job's `Board` actor.
        runs: ``[(run_id, config dict), ...]`` of the sweep.
        threads: the trial's CPU share: TensorFlow's thread pools are limited to it.
    """
    import ray
    from ray import tune

    from tlviz.finetune.config import RunConfig

    run_id, cfg = runs[int(config["run_index"])]
    total = RunConfig.from_dict(cfg).total_epochs

    def report(history: list[dict]) -> None:
        entry = history[-1]
        finite = all(entry.get(k) is not None and math.isfinite(float(entry[k])) for k in ("loss", "val_loss"))
        # Not the last epoch (the final report follows the results), not a cut-short or diverging one (the run
        # ends by itself and says why).
        if int(entry["epoch"]) < total and not entry.get("partial") and finite:
            tune.report(_tune_metrics(entry, entry["epoch"]))  # may end this thread (the scheduler stopped it)

    out = _run(inputs, cfg, run_id, board, threads=threads, on_epoch=report)
    ray.get(board.put.remote(run_id, "result", out))
    if out["state"] not in ("refused",) and out.get("where"):
        last = {"val_loss": (out.get("final") or {}).get("val_loss"),
                "val_accuracy": (out.get("final") or {}).get("val_accuracy")}
        tune.report(_tune_metrics(last, total))


def lrfind_task(inputs: dict, config: dict, steps: int, board) -> dict:
    """The learning-rate range test as a Ray task (progress posted under `LRFIND`).

    Returns:
        ``{"result": LRFinderResult.to_dict(), "where"}``; ``result`` is None when cancelled before it started.
    """
    from tlviz.finetune.config import RunConfig
    from tlviz.finetune.lrfinder import lr_range_test

    watch, where = _start(board, LRFIND, None)
    if where is None:
        watch.stop()
        return {"result": None, "where": {}}
    try:
        loaded, images, _ = _inputs(inputs)
        res = lr_range_test(loaded, images, RunConfig.from_dict(config), steps=int(steps), should_cancel=watch,
                            progress=lambda info: board.put.remote(LRFIND, "progress", info), cache=_cache(),
                            image_key=inputs["meta"].get("image_key"))
        return {"result": res.to_dict(), "where": where}
    finally:
        watch.stop()
