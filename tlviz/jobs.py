"""Heavy analyses in a worker process: the normalization comparison and the diagnosis, computed once.

On a ResNet50 at 224x224 `tlviz.normalize.analyze` and `tlviz.diagnose.diagnose`
take minutes and gigabytes; run inside the Streamlit server, a crash there
would end every user's session. `start_analysis` runs them like fine-tuning
runs (`tlviz.finetune.worker`): the inputs are saved once per content under
``<runs dir>/.inputs``, a spawned worker process waits for its turn in the
queue of heavy jobs (`tlviz.jobqueue`), writes its progress into its job
folder ``<runs dir>/.jobs/<job id>/`` and pickles the report there.

Compute once. Every result is stored by key (`analysis_key`: the model's hash,
the image set's content key, the parameters) under ``<runs dir>/.results/``:

- a request whose result is stored is served from disk, without a worker;
- a diagnosis reuses the stored normalization comparison of the same model
  and images with the default parameters (no custom preset, with variants),
  and stores the comparison it made under that key, so the Normalization page
  shows it without running the model again;
- a queued job looks again when its turn comes, so two sessions asking for the
  same result at once run the model once.

A page finds its job again after a browser reload with `latest_job` (per
workspace token and key) and reads it with `poll_analysis`.

Job folder files (besides those of `tlviz.finetune.worker`): ``progress.json``
(``fraction``, ``text``), ``progress.log`` (one line per step the engine
reported) and ``result.pkl``.

Kinds and their parameters (`start_analysis`):

- ``"normalize"`` — `normalize_params`: ``custom`` (a `CustomPreset`, its
  ``{"scale", "mean", "std"}`` dict, or None) and ``variants`` (also compare
  resize methods and channel order; default True);
- ``"diagnose"`` — none: the diagnosis is measured for the ``unit`` inference
  preset, and a page judges another preset with
  `tlviz.diagnose.DiagnosisReport.for_preset`, which needs no model run;
- ``"repair"`` — `tlviz.repair.repair_params`: ``fixes``, ``inference_preset``,
  ``target``, ``double_normalization``, ``top_block``; the result is a
  `tlviz.repair.RepairResult` (the repaired ``.keras`` bytes and the proof);
- ``"gradcam"`` — `tlviz.gradcam.job_params`: ``items``, the ``[image index, preset]`` pairs a
  gallery shows; the result is a `tlviz.gradcam.GradcamReport` (a heatmap per item, or the
  sentence saying the model has no convolutional feature map).

The resize variants decode the original files again: a server folder is
re-opened by its path, an uploaded ``.zip`` is saved once per content under
``.inputs``. A source that cannot be re-opened (built by hand) runs without
resize variants, and the status's ``notes`` say so.
"""

from __future__ import annotations

import hashlib
import json
import os
import pickle
import time
import traceback
from dataclasses import asdict, dataclass, field
from pathlib import Path

from tlviz import jobqueue
from tlviz.contentkeys import image_set_key, model_key
from tlviz.errors import AnalysisRefused, TlvizError  # AnalysisRefused: defined in tlviz.errors, still importable here
from tlviz.finetune import worker
from tlviz.finetune.store import check_run_id, now_iso, read_json, runs_dir, write_json

ANALYSIS_KINDS = ("normalize", "diagnose", "repair", "gradcam")
STATES = ("queued", "running", "done", "failed", "cancelled")
ACTIVE_STATES = ("queued", "running")
#: What a killed or crashed analysis worker's message tells the user to change.
MEMORY_HINT = ("Earlier results are kept. Start it again with fewer images, or give each job less memory: set "
               "TLVIZ_MEMORY_MB lower (e.g. 512) or TLVIZ_MAX_JOBS to 1, and restart the server.")
NO_SOURCE_NOTE = ("The resize methods were not compared: the original image files cannot be opened again in the "
                  "worker process (load the image set from a folder or a .zip to compare them).")
#: A job whose worker has not recorded its process id yet is taken as starting for this many seconds.
_STARTING_S = 60.0


@dataclass
class AnalysisStatus:
    """What `poll_analysis` found.

    Attributes:
        job_id / kind / key: the job, its kind and its result key.
        state: ``queued`` (waiting for a free worker), ``running``, ``done``,
            ``failed`` or ``cancelled``.
        fraction: progress between 0 and 1.
        text: the engine's current step ("Evaluating tf (2 of 9)…").
        message: why it failed, if it did.
        queue_position: while queued, its place in the line (1 + the older jobs
            not finished yet); None otherwise.
        notes: sentences about what the analysis could not do (e.g. no resize variants).
        from_store: the result was already stored; no worker ran.
    """

    job_id: str
    kind: str
    key: str
    state: str
    fraction: float = 0.0
    text: str = ""
    message: str = ""
    queue_position: int | None = None
    notes: list[str] = field(default_factory=list)
    from_store: bool = False

    @property
    def active(self) -> bool:
        return self.state in ACTIVE_STATES

    @property
    def jobs_ahead(self) -> int:
        """Jobs ahead of this one in the queue (0 when it is not waiting)."""
        return max((self.queue_position or 1) - 1, 0)


# -- keys and parameters ------------------------------------------------------------

def normalize_params(custom=None, variants: bool = True) -> dict:
    """The parameters of a ``"normalize"`` job in their stored form.

    Args:
        custom: a `tlviz.presets.CustomPreset`, its ``{"scale", "mean", "std"}``
            dict, or None. Defaults to `None`.
        variants: also compare resize methods and channel order against the
            best preset. Defaults to `True`.

    Returns:
        ``{"custom": dict or None, "variants": bool}``.
    """
    if custom is not None and not isinstance(custom, dict):
        custom = asdict(custom)
    if custom is not None:
        unknown = set(custom) - {"scale", "mean", "std"}
        if unknown:
            raise AnalysisRefused(f"Unknown custom preset field(s) {', '.join(sorted(unknown))}. Give scale, mean "
                                  "and std (tlviz.normalize.custom_preset builds one from typed values).")
        custom = {k: (list(v) if isinstance(v, (list, tuple)) else float(v)) for k, v in custom.items()}
    return {"custom": custom, "variants": bool(variants)}


def _params(kind: str, params: dict | None) -> dict:
    if kind not in ANALYSIS_KINDS:
        raise AnalysisRefused(f"Unknown analysis kind {kind!r}. Use one of: {', '.join(ANALYSIS_KINDS)}.")
    params = dict(params or {})
    if kind == "repair":
        from tlviz.repair import RepairRefused, repair_params

        try:
            return repair_params(params)
        except RepairRefused as exc:
            raise AnalysisRefused(str(exc)) from None
    if kind == "gradcam":
        from tlviz.gradcam import job_params

        try:
            return job_params((params or {}).get("items") or [])
        except (TypeError, ValueError) as exc:
            raise AnalysisRefused(f"Grad-CAM: {exc}") from None
    if kind == "diagnose":
        if params:
            raise AnalysisRefused(
                f"A diagnose job takes no parameters (got {', '.join(sorted(params))}): it is measured for the "
                "`unit` inference preset; judge another preset with DiagnosisReport.for_preset(preset).")
        return {}
    unknown = set(params) - {"custom", "variants"}
    if unknown:
        raise AnalysisRefused(f"Unknown normalize parameter(s) {', '.join(sorted(unknown))}. Use custom and "
                              "variants (see tlviz.jobs.normalize_params).")
    return normalize_params(params.get("custom"), params.get("variants", True))


def _custom_preset(params: dict):
    from tlviz.presets import CustomPreset

    c = params.get("custom")
    if c is None:
        return None
    return CustomPreset(**{k: (tuple(v) if isinstance(v, list) else v) for k, v in c.items()})


def can_reopen(source) -> bool:
    """Whether a worker process can open `source` again (for the resize variants): a folder or a zip."""
    origin = getattr(source, "origin", None)
    return isinstance(origin, tuple) and len(origin) == 2 and origin[0] in ("folder", "zip")


def _key(kind: str, mkey: str, ikey: str, params: dict, variants_source: bool) -> str:
    text = json.dumps({"kind": kind, "model": mkey, "images": ikey, "params": params,
                       "resize_variants": bool(variants_source)}, sort_keys=True)
    return hashlib.sha1(text.encode()).hexdigest()[:24]


def analysis_key(kind: str, loaded, images, params: dict | None = None, *, source=None,
                 image_key: str | None = None) -> str:
    """The key a result is stored under: model, image set, parameters, and whether resize variants can run.

    Args:
        kind: ``"normalize"`` or ``"diagnose"``.
        loaded: the `LoadedModel`.
        images: the `ImageSet`.
        params: the job's parameters (see the module docstring). Defaults to none.
        source: the `ImageSource` the images came from. Defaults to `None`.
        image_key: the set's `image_key`, if already computed. Defaults to computing it.

    Returns:
        A 24-character hex string.
    """
    return _key(kind, model_key(loaded), image_key or image_set_key(images), _params(kind, params),
                can_reopen(source))


# -- the result store -------------------------------------------------------------------

def _results_dir(root=None) -> Path:
    d = runs_dir(root) / ".results"
    d.mkdir(parents=True, exist_ok=True)
    return d


def _result_path(kind: str, key: str, root=None) -> Path:
    return _results_dir(root) / f"{kind}-{check_run_id(key)}.pkl"


def stored_result(kind: str, key: str, root=None):
    """The stored report for `key`, or None.

    Args:
        kind: ``"normalize"`` (a `NormalizationReport`) or ``"diagnose"`` (a `DiagnosisReport`).
        key: from `analysis_key`.
        root: the runs folder. Defaults to `runs_dir()`.
    """
    path = _result_path(kind, key, root)
    if not path.is_file():
        return None
    return _read_pickle(path)


def has_result(kind: str, key: str, root=None) -> bool:
    """Whether a report is stored for `key` (without reading it)."""
    return _result_path(kind, key, root).is_file()


def _read_pickle(path: Path):
    # Safe to unpickle: these files are written only by tlviz's own worker process
    # (`_write_result`) into the server's own runs folder; nothing a user uploads is
    # ever stored or read as a pickle (uploaded pickles are refused as models).
    try:
        with open(path, "rb") as f:
            obj = pickle.load(f)
    except (OSError, EOFError, pickle.UnpicklingError, AttributeError, ImportError, TypeError) as exc:
        raise TlvizError(f"The stored result {path.name} cannot be read ({type(exc).__name__}); delete it and run "
                         "the analysis again.") from None
    try:
        os.utime(path)  # recently used: kept by `tidy`
    except OSError:
        pass
    return obj


def _write_pickle(path: Path, obj) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with open(tmp, "wb") as f:
        pickle.dump(obj, f, protocol=pickle.HIGHEST_PROTOCOL)
    os.replace(tmp, path)


def _store(path: Path, store: Path) -> None:
    """Put the job's result file into the store under its key (a hard link when possible)."""
    tmp = store.with_name(f".{store.name}.{os.getpid()}.tmp")
    tmp.unlink(missing_ok=True)
    try:
        os.link(path, tmp)
    except OSError:
        import shutil

        shutil.copyfile(path, tmp)
    os.replace(tmp, store)


# -- starting, finding, polling, cancelling ---------------------------------------------------

def _latest_path(kind: str, key: str, owner: str | None, root=None) -> Path:
    d = worker.jobs_dir(root) / ".latest"
    d.mkdir(parents=True, exist_ok=True)
    return d / hashlib.sha1(f"{owner or ''}|{kind}|{key}".encode()).hexdigest()[:32]


def latest_job(kind: str, key: str, owner: str | None = None, root=None) -> str | None:
    """The newest job of workspace `owner` for (`kind`, `key`), or None (also when it was cleaned up).

    A page calls it after a browser reload to find its job again.
    """
    job_id = (read_json(_latest_path(kind, key, owner, root), {}) or {}).get("job_id")
    if not job_id:
        return None
    try:
        if not (worker.job_dir(job_id, root) / "job.json").is_file():
            return None
    except TlvizError:
        return None
    return job_id


def _source_spec(source, root) -> dict | None:
    """What the worker needs to open `source` again (an uploaded zip is saved once), or None."""
    if not can_reopen(source):
        return None
    kind, value = source.origin
    if kind == "folder":
        return {"kind": "folder", "path": str(value), "name": source.name}
    sha = hashlib.sha256(value).hexdigest()[:32]
    path = runs_dir(root) / ".inputs" / f"{sha}.zip"
    path.parent.mkdir(parents=True, exist_ok=True)
    if not path.exists():
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        tmp.write_bytes(value)
        os.replace(tmp, path)
    os.utime(path)
    return {"kind": "zip", "path": str(path), "name": source.name}


def start_analysis(kind: str, loaded, images, params: dict | None = None, *, source=None, root=None,
                   owner: str | None = None, image_key: str | None = None) -> str:
    """Start a normalization comparison or a diagnosis in a worker process (or serve its stored result).

    Args:
        kind: ``"normalize"`` or ``"diagnose"``.
        loaded: the `LoadedModel` (only read: saved once under ``.inputs``).
        images: the `ImageSet` at the model's input size.
        params: for ``"normalize"``, ``{"custom": ..., "variants": ...}`` (see
            `normalize_params`); for ``"diagnose"``, none. Defaults to none.
        source: the `ImageSource` the images came from; enables the resize
            variants. Defaults to `None`.
        root: the runs folder. Defaults to `runs_dir()`.
        owner: the workspace starting it (the app's session token), for `latest_job`.
        image_key: the set's `image_key`, if already computed. Defaults to computing it.

    Returns:
        The job id. When the result is already stored, the job is ``done`` at
        once and no worker starts; when the same workspace already has this
        job queued or running, that job's id.

    Raises:
        AnalysisRefused: unknown kind or parameters.
    """
    params = _params(kind, params)
    mkey = model_key(loaded)
    ikey = image_key or image_set_key(images)
    reopen = can_reopen(source)
    key = _key(kind, mkey, ikey, params, reopen)
    previous = latest_job(kind, key, owner, root)
    if previous is not None and poll_analysis(previous, root).active:
        return previous
    notes = [] if reopen or kind in ("repair", "gradcam") or (kind == "normalize" and not params["variants"]) else [NO_SOURCE_NOTE]
    if has_result(kind, key, root):
        job_id, _ = worker.new_job(kind, {"key": key, "owner": owner, "params": params, "notes": [],
                                          "from_store": True}, root, state="done", queued=False)
    else:
        worker.tidy(root)
        inputs = worker.prepare_inputs(loaded, images, root)
        spec = {"key": key, "owner": owner, "params": params, "notes": notes, "source": _source_spec(source, root),
                "model": worker._model_info(loaded), "images": worker._images_info(images, inputs["image_key"]),
                "normalize_key": _key("normalize", mkey, ikey, normalize_params(), reopen), **inputs}
        job_id, _ = worker.new_job(kind, spec, root, state="queued")
        worker.spawn(job_id, _analysis_main, root)
    write_json(_latest_path(kind, key, owner, root), {"job_id": job_id, "updated": now_iso()})
    return job_id


def poll_analysis(job_id: str, root=None) -> AnalysisStatus:
    """Read a job's state and progress from disk (cheap; a page calls it every second).

    A worker that died without recording an end (killed by the out-of-memory
    killer, crashed) is recorded as ``failed`` with the likely cause and what
    to change (`MEMORY_HINT`); one stopped by `cancel_analysis` as ``cancelled``.
    """
    jdir = worker.job_dir(job_id, root)
    job = read_json(jdir / "job.json")
    if not isinstance(job, dict) or job.get("kind") not in ANALYSIS_KINDS:
        return AnalysisStatus(job_id, "", "", "failed", message="The job folder is missing or damaged (cleaned up?). "
                                                                "Start the analysis again.")
    status = read_json(jdir / "status.json", {}) or {}
    state = status.get("state", "failed")
    if state in ACTIVE_STATES and not _worker_alive(job_id, jdir, status):
        status = read_json(jdir / "status.json", {}) or {}  # it may have just finished
        state = status.get("state", "failed")
        if state in ACTIVE_STATES:
            if (jdir / "cancel").exists():
                state, message = "cancelled", ""
            else:
                state, message = "failed", worker.death_reason(worker.exitcode(job_id), tail=MEMORY_HINT)
            status = {**status, "state": state, "message": message, "updated": now_iso()}
            write_json(jdir / "status.json", status)
            jobqueue.leave(jdir.parent, job_id, job.get("queue_seq"))
    progress = read_json(jdir / "progress.json", {}) or {}
    position = None
    if state == "queued":
        position = jobqueue.queue_position(jdir.parent, job_id, job.get("queue_seq"))
    fraction = 1.0 if state == "done" else float(progress.get("fraction") or 0.0)
    return AnalysisStatus(job_id, job["kind"], job.get("key", ""), state, min(max(fraction, 0.0), 1.0),
                          str(progress.get("text") or status.get("message") or ""),
                          str(status.get("message") or "") if state == "failed" else "", position,
                          list(job.get("notes") or []) + list(status.get("notes") or []),
                          bool(job.get("from_store") or status.get("from_store")))


def _worker_alive(job_id: str, jdir: Path, status: dict) -> bool:
    pid = status.get("pid")
    if pid is None:  # created, its process not recorded yet
        try:
            return time.time() - (jdir / "job.json").stat().st_mtime < _STARTING_S
        except OSError:
            return False
    return worker.worker_alive(job_id, pid)


def load_result(job_id: str, root=None):
    """The report of a ``done`` job: a `NormalizationReport` or a `DiagnosisReport`.

    Raises:
        TlvizError: the job has no result (not done, or cleaned up).
    """
    jdir = worker.job_dir(job_id, root)
    job = read_json(jdir / "job.json", {}) or {}
    if job.get("kind") in ANALYSIS_KINDS and job.get("key"):
        report = stored_result(job["kind"], job["key"], root)
        if report is not None:
            return report
    if (jdir / "result.pkl").is_file():
        return _read_pickle(jdir / "result.pkl")
    raise TlvizError(f"Job {job_id} has no result (it has not finished, or was cleaned up). Start it again.")


def cancel_analysis(job_id: str, root=None, timeout: float = 5.0) -> None:
    """Stop a job: a queued job is dropped, a running one is stopped (nothing partial is kept).

    Args:
        job_id: the job.
        root: the runs folder. Defaults to `runs_dir()`.
        timeout: seconds to wait for the worker process to end. Defaults to `5.0`.
    """
    jdir = worker.job_dir(job_id, root)
    if not jdir.is_dir():
        raise TlvizError(f"No job {job_id}; it may have been cleaned up.")
    (jdir / "cancel").write_text(now_iso())
    status = read_json(jdir / "status.json", {}) or {}
    if status.get("state") not in ACTIVE_STATES:
        return
    worker.stop_worker(job_id, status.get("pid"))
    deadline = time.monotonic() + timeout
    while _worker_alive(job_id, jdir, read_json(jdir / "status.json", {}) or {}) and time.monotonic() < deadline:
        time.sleep(0.05)
    poll_analysis(job_id, root)  # records `cancelled` (or what it reached: `done`)


def wait_analysis(job_id: str, root=None, timeout: float = 600.0, interval: float = 0.3) -> AnalysisStatus:
    """Poll until the job ends (for scripts and tests)."""
    return worker.poll_until_done(lambda: poll_analysis(job_id, root), timeout, interval)


# -- the worker process ---------------------------------------------------------------------

class _Progress:
    """``progress(fraction, text)`` for the engine: ``progress.json`` (throttled) and ``progress.log``."""

    def __init__(self, jdir: Path, interval: float = 0.25):
        self.jdir = jdir
        self.interval = interval
        self._last = (-1.0, None, 0.0)

    def __call__(self, fraction: float, text: str) -> None:
        last_f, last_text, last_t = self._last
        now = time.monotonic()
        if text != last_text:
            with open(self.jdir / "progress.log", "a") as f:
                f.write(f"{fraction:.3f}\t{text}\n")
        if text != last_text or fraction >= 1.0 or now - last_t >= self.interval:
            write_json(self.jdir / "progress.json", {"fraction": float(fraction), "text": text, "updated": now_iso()})
            self._last = (fraction, text, now)


def _open_source(spec: dict | None, notes: list[str]):
    if not spec:
        return None
    from tlviz.imagesets import ImageSource

    try:
        if spec["kind"] == "folder":
            return ImageSource.from_folder(spec["path"])
        return ImageSource.from_zip(Path(spec["path"]).read_bytes(), spec.get("name") or "upload.zip")
    except (OSError, TlvizError) as exc:
        notes.append(f"The resize methods were not compared: the original images could not be opened again "
                     f"({exc}).")
        return None


def _analysis_main(job_dir: str) -> None:
    """Entry point of an analysis worker process: run the job described in ``job.json``."""
    jdir = Path(job_dir)
    log = worker.begin_worker(jdir)
    job = read_json(jdir / "job.json", {}) or {}
    root = job.get("root")
    status = {"state": "queued", "pid": os.getpid(), "message": "waiting for a free worker", "updated": now_iso()}
    write_json(jdir / "status.json", status)

    def cancelled() -> bool:
        return (jdir / "cancel").exists()

    slot = None
    try:
        slot = worker.await_turn(jdir, job, status, cancelled)
        if slot is None:
            write_json(jdir / "status.json", {**status, "state": "cancelled", "message": "", "updated": now_iso()})
            return
        status.update(state="running", message="", started_at=time.time())
        write_json(jdir / "status.json", {**status, "updated": now_iso()})
        kind, key = job["kind"], job["key"]
        if has_result(kind, key, root):  # another job stored it while this one waited
            write_json(jdir / "status.json", {**status, "state": "done", "from_store": True, "updated": now_iso()})
            return
        progress = _Progress(jdir)
        progress(0.0, "Loading the model…")
        notes: list[str] = []
        report = _run_analysis(job, progress, notes, log)
        _write_pickle(jdir / "result.pkl", report)
        _store(jdir / "result.pkl", _result_path(kind, key, root))
        if kind == "diagnose" and report.normalization is not None and not has_result(
                "normalize", job["normalize_key"], root):
            _write_pickle(_result_path("normalize", job["normalize_key"], root), report.normalization)
        progress(1.0, "Done.")
        write_json(jdir / "status.json", {**status, "state": "done", "notes": notes, "updated": now_iso()})
    except BaseException as exc:  # the worker must always leave a readable state behind
        log.error("job failed:\n%s", traceback.format_exc())
        if isinstance(exc, TlvizError):
            msg = str(exc)
        else:
            msg = f"{type(exc).__name__}: {exc}"
            if isinstance(exc, MemoryError) or "ResourceExhausted" in type(exc).__name__:
                msg = f"The worker ran out of memory ({msg}). {MEMORY_HINT}"
        write_json(jdir / "status.json", {**status, "state": "failed", "message": msg, "updated": now_iso()})
    finally:
        _ended(jdir)
        if slot is not None:
            slot.release()
        jobqueue.leave(jdir.parent, job.get("job_id", jdir.name), job.get("queue_seq"))


def _ended(jdir: Path) -> None:
    """Record when the worker let go of its slot (``ended_at`` in ``status.json``)."""
    status = read_json(jdir / "status.json", {}) or {}
    write_json(jdir / "status.json", {**status, "ended_at": time.time()})


def _run_analysis(job: dict, progress, notes: list[str], log):
    import warnings

    warnings.filterwarnings("ignore", module="keras")
    import tensorflow as tf

    tf.get_logger().setLevel("ERROR")
    loaded, images = worker._load_inputs(job)
    if job["kind"] == "repair":
        from tlviz.repair import repair

        params = dict(job.get("params") or {})
        return repair(loaded, images, params.pop("fixes"), params.pop("inference_preset"), progress=progress, **params)
    if job["kind"] == "gradcam":
        from tlviz import gradcam

        return gradcam.explain(loaded, images, gradcam.items_from_params(job.get("params")), progress=progress)
    source = _open_source(job.get("source"), notes)
    if job["kind"] == "normalize":
        from tlviz import normalize

        params = job.get("params") or {}
        return normalize.analyze(loaded, images, source=source, custom=_custom_preset(params),
                                 variants=bool(params.get("variants", True)), progress=progress)
    from tlviz import diagnose

    normalization = stored_result("normalize", job["normalize_key"], job.get("root"))
    if normalization is not None:
        log.info("reusing the stored normalization comparison %s", job["normalize_key"])
        progress(0.0, "Reusing the stored normalization comparison.")
    return diagnose.diagnose(loaded, images, "unit", progress=progress, source=source, normalization=normalization)
