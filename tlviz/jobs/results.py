"""The analyses' result store: every result computed once, kept by key under ``<runs dir>/.results/``.

A result is stored as ``<kind>-<key>.json`` + ``<kind>-<key>.npz`` (`tlviz.jobs.resultfiles`:
data, never a pickle). The key (`tlviz.jobs.analysis.analysis_key`) covers the model's hash,
the image set's content key, the parameters and whether the resize variants could run. A
stored result that does not parse or decode is treated as absent: its files are removed and
the next request computes it again.
"""

from __future__ import annotations

import logging
import os
import shutil
from pathlib import Path

from tlviz.errors import TlvizError
from tlviz.finetune.store import check_run_id, runs_dir
from tlviz.jobs.folder import job_dir, read_job
from tlviz.jobs.resultfiles import read_header, read_result, remove_result, result_files

_log = logging.getLogger(__name__)


def results_dir(root=None) -> Path:
    """The ``.results`` folder of the runs folder (created if needed)."""
    d = runs_dir(root) / ".results"
    d.mkdir(parents=True, exist_ok=True)
    return d


def result_stem(kind: str, key: str, root=None) -> Path:
    """Where the result of (`kind`, `key`) is stored, without the ``.json`` / ``.npz`` suffix."""
    return results_dir(root) / f"{kind}-{check_run_id(key)}"


def stored_result(kind: str, key: str, root=None):
    """The stored result for `key`, or None (also when its files are damaged: they are then removed).

    Args:
        kind: an analysis kind (``"normalize"``: a `NormalizationReport`; ``"diagnose"``: a
            `DiagnosisReport`; ``"repair"``: a `RepairResult`; ``"gradcam"``: a `GradcamReport`).
        key: from `tlviz.jobs.analysis.analysis_key`.
        root: the runs folder. Defaults to `runs_dir()`.
    """
    stem = result_stem(kind, key, root)
    if not result_files(stem)[0].is_file():
        return None
    try:
        obj = read_result(stem)
    except ValueError as exc:
        _log.warning("stored result %s is not used: %s", stem.name, exc)
        remove_result(stem)
        return None
    for p in result_files(stem):
        try:
            os.utime(p)  # recently used: kept by `tidy`
        except OSError:
            pass
    return obj


def has_result(kind: str, key: str, root=None) -> bool:
    """Whether a result is stored for `key` (its header is checked; the arrays are not read)."""
    try:
        read_header(result_stem(kind, key, root))
    except ValueError:
        return False
    return True


def store_result(stem: Path, kind: str, key: str, root=None) -> None:
    """Put a job's result files (``<stem>.json`` / ``.npz``) into the store under its key (hard links when
    possible; the ``.npz`` first, the JSON that names it last)."""
    target = result_stem(kind, key, root)
    for src, dst in reversed(list(zip(result_files(stem), result_files(target)))):
        tmp = dst.with_name(f".{dst.name}.{os.getpid()}.tmp")
        tmp.unlink(missing_ok=True)
        try:
            os.link(src, tmp)
        except OSError:
            shutil.copyfile(src, tmp)
        os.replace(tmp, dst)


def load_result(job_id: str, root=None):
    """The result of a ``done`` analysis job (a `NormalizationReport`, `DiagnosisReport`, ...).

    Raises:
        TlvizError: the job has no result (not done, cleaned up, or its stored files were damaged).
    """
    jdir = job_dir(job_id, root)
    job = read_job(jdir) or {}
    if job.get("kind") and job.get("key"):
        report = stored_result(job["kind"], job["key"], root)
        if report is not None:
            return report
    if result_files(jdir / "result")[0].is_file():
        try:
            return read_result(jdir / "result")
        except ValueError:
            pass
    raise TlvizError(f"Job {job_id} has no result (it has not finished, was cleaned up, or its stored result was "
                     "damaged). Start it again.")
