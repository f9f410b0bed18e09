"""Heavy analyses as jobs: the normalization comparison, the diagnosis, a repair, Grad-CAM, computed once.

On a ResNet50 at 224x224 `tlviz.normalize.analyze` and `tlviz.diagnose.diagnose`
take minutes and gigabytes; run inside the Streamlit server, a crash there
would end every user's session. `start_analysis` runs them like fine-tuning
runs: the inputs are saved once per content under ``<runs dir>/.inputs``
(`tlviz.jobs.inputs`), a spawned worker process (`tlviz.jobs.worker`) waits for
its turn in the queue of heavy jobs (`tlviz.jobs.queue`), writes its progress into
its job folder (`tlviz.jobs.folder`) and stores the result there as data
(`tlviz.jobs.resultfiles`).

Compute once. Every result is stored by key (`analysis_key`: the model's hash,
the image set's content key, the parameters) under ``<runs dir>/.results/``
(`tlviz.jobs.results`):

- a request whose result is stored is served from disk, without a worker;
- a diagnosis reuses the stored normalization comparison of the same model
  and images with the default parameters (no custom preset, with variants),
  and stores the comparison it made under that key, so the Normalization page
  shows it without running the model again;
- a queued job looks again when its turn comes, so two sessions asking for the
  same result at once run the model once.

A page finds its job again after a browser reload with `latest_job` (per
workspace token and key) and follows it with `tlviz.jobs.poll`.

Kinds and their parameters: the analysis kinds of `tlviz.jobs.registry`
(``normalize``, ``diagnose``, ``repair``, ``gradcam``), one module each under
`tlviz.jobs.kinds`, which says its parameters and its result type.
"""

from __future__ import annotations

import hashlib
import json

from tlviz.contentkeys import image_set_key, model_key
from tlviz.errors import AnalysisRefused, TlvizError
from tlviz.jobs.folder import Progress, job_dir, jobs_dir, new_job, tidy
from tlviz.jobs.inputs import images_info, model_info, prepare_inputs
from tlviz.jobs.kind import JobKind, WorkerContext
from tlviz.jobs.kinds.normalize import normalize_params
from tlviz.jobs.registry import ANALYSIS_KINDS, KINDS
from tlviz.jobs.results import has_result, result_stem, stored_result, store_result
from tlviz.jobs.resultfiles import write_result
from tlviz.jobs.sources import NO_SOURCE_NOTE, can_reopen, source_spec
from tlviz.jobs.spawn import spawn
from tlviz.jsonfiles import now_iso, read_json, write_json


def analysis_kind(kind: str) -> JobKind:
    """The registered analysis kind `kind`.

    Raises:
        AnalysisRefused: not an analysis kind (the message names them).
    """
    found = KINDS.get(kind) if isinstance(kind, str) else None
    if found is None or not found.is_analysis:
        raise AnalysisRefused(f"Unknown analysis kind {kind!r}. Use one of: {', '.join(ANALYSIS_KINDS)}.")
    return found


def check_params(kind: str, params: dict | None) -> dict:
    """The stored form of an analysis's parameters (each kind checks its own; unknown ones are refused)."""
    return analysis_kind(kind).params(params)


def _key(kind: str, mkey: str, ikey: str, params: dict, variants_source: bool) -> str:
    text = json.dumps({"kind": kind, "model": mkey, "images": ikey, "params": params,
                       "resize_variants": bool(variants_source)}, sort_keys=True)
    return hashlib.sha1(text.encode()).hexdigest()[:24]


def analysis_key(kind: str, loaded, images, params: dict | None = None, *, source=None,
                 image_key: str | None = None) -> str:
    """The key a result is stored under: model, image set, parameters, and whether resize variants can run.

    Args:
        kind: an analysis kind (``"normalize"``, ``"diagnose"``, ``"repair"``, ``"gradcam"``).
        loaded: the `LoadedModel`.
        images: the `ImageSet`.
        params: the job's parameters (see the kind's module). Defaults to none.
        source: the `ImageSource` the images came from. Defaults to `None`.
        image_key: the set's `image_key`, if already computed. Defaults to computing it.

    Returns:
        A 24-character hex string.
    """
    return _key(kind, model_key(loaded), image_key or image_set_key(images), check_params(kind, params),
                can_reopen(source))


def _latest_path(kind: str, key: str, owner: str | None, root=None):
    d = jobs_dir(root) / ".latest"
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
        if not (job_dir(job_id, root) / "job.json").is_file():
            return None
    except TlvizError:
        return None
    return job_id


def start_analysis(kind: str, loaded, images, params: dict | None = None, *, source=None, root=None,
                   owner: str | None = None, image_key: str | None = None) -> str:
    """Start an analysis in a worker process (or serve its stored result).

    Args:
        kind: an analysis kind: ``"normalize"``, ``"diagnose"``, ``"repair"`` or ``"gradcam"``.
        loaded: the `LoadedModel` (only read: saved once under ``.inputs``).
        images: the `ImageSet` at the model's input size.
        params: the kind's parameters: for ``"normalize"``, ``{"custom": ..., "variants": ...}`` (see
            `normalize_params`); for ``"diagnose"``, none; for ``"repair"``, `tlviz.repair.repair_params`'s;
            for ``"gradcam"``, ``{"items": [[index, preset], ...]}``. Defaults to none.
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
    from tlviz.jobs.control import poll

    spec_kind = analysis_kind(kind)
    params = spec_kind.params(params)
    mkey = model_key(loaded)
    ikey = image_key or image_set_key(images)
    reopen = can_reopen(source)
    key = _key(kind, mkey, ikey, params, reopen)
    previous = latest_job(kind, key, owner, root)
    if previous is not None and poll(previous, root).active:
        return previous
    uses_source = spec_kind.uses_source is not None and spec_kind.uses_source(params)
    notes = [NO_SOURCE_NOTE] if uses_source and not reopen else []
    if stored_result(kind, key, root) is not None:  # decoded: a damaged file is removed and computed again
        job_id, _ = new_job(kind, {"key": key, "owner": owner, "params": params, "notes": [], "from_store": True},
                            root, state="done", queued=False)
    else:
        tidy(root)
        inputs = prepare_inputs(loaded, images, root)
        spec = {"key": key, "owner": owner, "params": params, "notes": notes, "source": source_spec(source, root),
                "model": model_info(loaded), "images": images_info(images, inputs["image_key"]),
                "normalize_key": _key("normalize", mkey, ikey, normalize_params(), reopen), **inputs}
        job_id, _ = new_job(kind, spec, root, state="queued")
        spawn(job_id, root)
    write_json(_latest_path(kind, key, owner, root), {"job_id": job_id, "updated": now_iso()})
    return job_id


def run_analysis(ctx: WorkerContext, kind: JobKind) -> dict:
    """An analysis's work in its worker process (after it got its slot): compute, store, say ``done``.

    Returns:
        What ends the job's ``status.json``: ``state`` and ``notes``, or ``from_store`` when another
        job stored the result while this one waited.
    """
    job, root = ctx.job, ctx.job.get("root")
    key = job["key"]
    if stored_result(kind.name, key, root) is not None:  # another job stored it while this one waited
        return {"state": "done", "from_store": True}
    import warnings

    warnings.filterwarnings("ignore", module="keras")
    import tensorflow as tf

    tf.get_logger().setLevel("ERROR")
    progress = Progress(ctx.jdir)
    progress(0.0, "Loading the model…")
    notes: list[str] = []
    result = kind.compute(job, progress, notes, ctx.log)
    write_result(ctx.jdir / "result", result)
    store_result(ctx.jdir / "result", kind.name, key, root)
    for other_kind, other_key, other in (kind.also_store(result, job) if kind.also_store else []):
        if not has_result(other_kind, other_key, root):
            write_result(result_stem(other_kind, other_key, root), other)
    progress(1.0, "Done.")
    return {"state": "done", "notes": notes}
