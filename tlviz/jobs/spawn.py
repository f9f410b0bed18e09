"""Worker processes: start one per job, see it alive or dead, stop it, and say why it died.

`spawn` starts a fresh Python interpreter (``subprocess``, at priority `WORKER_NICE` from
its first line) that imports only the job system's worker module (`tlviz.jobs.worker`):
no TensorFlow state is shared with the server, the app script is not re-run in it (as
multiprocessing's "spawn" would, Streamlit's main module being app.py), and all its memory
is returned when it exits. The server keeps the handles of the processes it started, to
reap them and to read their exit codes (`exitcode`, `death_reason`).
"""

from __future__ import annotations

import atexit
import logging
import os
import signal
import subprocess
import sys
import threading
from pathlib import Path

from tlviz.jobs import queue
from tlviz.jobs.folder import job_dir, jobs_dir, read_job, read_status
from tlviz.jsonfiles import write_json
from tlviz.processes import pid_alive

# Handles of the worker processes this server started (to reap them and see
# them die). Keyed by job id; a lock guards it because Streamlit runs one
# script thread per session.
_PROCS: dict[str, subprocess.Popen] = {}
# Exit codes of reaped workers, so a death can be explained after the handle is gone.
_EXITCODES: dict[str, int | None] = {}
_PROCS_LOCK = threading.Lock()
_CLEANUP_REGISTERED = False
#: The folder holding the `tlviz` package: the workers import it from there, whatever the server's directory.
PROJECT_ROOT = Path(__file__).resolve().parent.parent.parent
#: An argument every worker's command line carries, so a later server can tell its workers from other processes.
WORKER_MARKER = "tlviz-worker"
#: How much a worker lowers its priority, so the server's light pages stay responsive.
WORKER_NICE = 19
#: The sentence a fine-tuning job's death ends with (an analysis kind gives its own: `tlviz.jobs.registry`).
RUNS_TAIL = ("Earlier runs are kept; start the run again (with a smaller batch size or fewer images if "
             "memory was short).")


#: The one worker entry point every job's process runs: ``worker_main(job folder)`` of this module.
WORKER_MODULE, WORKER_FUNCTION = "tlviz.jobs.worker", "worker_main"


def spawn(job_id: str, root=None) -> int:
    """Start the worker process of a job created by `tlviz.jobs.folder.new_job` (`tlviz.jobs.worker.worker_main`).

    Args:
        job_id: the job.
        root: the runs folder. Defaults to `runs_dir()`.

    Returns:
        The worker's process id (also recorded in ``status.json`` and in the queue).
    """
    jdir = job_dir(job_id, root)
    # A fresh interpreter that imports only the worker's module. Not multiprocessing's "spawn": under
    # Streamlit the main module is app.py, which "spawn" re-runs in every child (TensorFlow, the sample
    # model, ~0.75 GB per waiting worker, at full priority). The child lowers its priority first thing.
    code = ("import os, sys\ntry:\n    os.nice(int(sys.argv[4]))\nexcept OSError:\n    pass\n"
            "import importlib\ngetattr(importlib.import_module(sys.argv[1]), sys.argv[2])(sys.argv[3])\n")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(
        p for p in (str(PROJECT_ROOT), os.environ.get("PYTHONPATH", "")) if p)}
    with open(jdir / "worker.log", "ab") as log:
        proc = subprocess.Popen(
            [sys.executable, "-c", code, WORKER_MODULE, WORKER_FUNCTION, str(jdir), str(WORKER_NICE),
             WORKER_MARKER], stdin=subprocess.DEVNULL, stdout=log, stderr=log, env=env, cwd=str(PROJECT_ROOT))
    with _PROCS_LOCK:
        _PROCS[job_id] = proc
        _register_cleanup()
    seq = (read_job(jdir) or {}).get("queue_seq")
    if seq is not None:
        queue.claim(jobs_dir(root), job_id, seq, proc.pid)
    status = read_status(jdir)
    if "pid" not in status:
        status["pid"] = proc.pid
        write_json(jdir / "status.json", status)
    return proc.pid


def _reap() -> None:
    with _PROCS_LOCK:
        for jid, p in list(_PROCS.items()):
            if p.poll() is not None:  # ended: collected, so no zombie is left
                _EXITCODES[jid] = p.returncode
                _PROCS.pop(jid, None)


def _register_cleanup() -> None:
    """Once per server: stop the workers it started when it exits (as daemon processes would be)."""
    global _CLEANUP_REGISTERED
    if not _CLEANUP_REGISTERED:
        atexit.register(_terminate_all)
        _CLEANUP_REGISTERED = True


def _terminate_all() -> None:
    with _PROCS_LOCK:
        procs = list(_PROCS.values())
    for p in procs:
        if p.poll() is None:
            p.terminate()


def exitcode(job_id: str) -> int | None:
    """The exit code of a job's worker that this server started and that has ended (else None)."""
    _reap()
    with _PROCS_LOCK:
        return _EXITCODES.get(job_id)


def worker_alive(job_id: str, pid) -> bool:
    """Whether a job's worker process still runs (this server's handle, else its process id)."""
    _reap()
    with _PROCS_LOCK:
        p = _PROCS.get(job_id)
    if p is not None:
        return p.poll() is None
    return pid_alive(pid)


def stop_worker(job_id: str, pid) -> None:
    """Terminate a job's worker process (SIGTERM), if it is one: this server's child, or a tlviz worker."""
    with _PROCS_LOCK:
        proc = _PROCS.get(job_id)
    if proc is not None:
        if proc.poll() is None:
            proc.terminate()
        return
    if not pid_alive(pid):
        return
    try:  # started by an earlier server: make sure the id is still one of our spawned workers
        cmdline = Path(f"/proc/{int(pid)}/cmdline").read_bytes()
    except (OSError, ValueError):
        return
    if WORKER_MARKER.encode() in cmdline:
        try:
            os.kill(int(pid), signal.SIGTERM)
        except OSError:
            pass


def death_reason(exitcode: int | None, tail: str | None = None) -> str:
    """Why a worker that stopped without recording an end most likely stopped.

    Args:
        exitcode: the process's exit code (negative: killed by that signal), or
            None when this server did not start it (e.g. after a restart).
        tail: the sentence saying what to do next. Defaults to the one for
            fine-tuning runs (`RUNS_TAIL`).
    """
    tail = tail or RUNS_TAIL
    if exitcode is None:
        return "the worker process stopped unexpectedly (a crash, or the server restarted). " + tail
    if exitcode < 0:
        try:
            name = signal.Signals(-exitcode).name
        except ValueError:
            name = f"signal {-exitcode}"
        if -exitcode == signal.SIGKILL:
            return (f"the worker process was killed ({name}): most often the machine ran out of memory and the "
                    "system stopped it, or someone stopped it by hand. " + tail)
        return f"the worker process was stopped by {name}. " + tail
    return f"the worker process exited with code {exitcode} before the run finished (see worker.log). " + tail


def own_output(path: Path) -> None:
    """Send this process's stdout and stderr (TensorFlow's C++ logs too) to `path`.

    A worker inherits the server's output; when that is a pipe nobody drains
    (a process manager, a test harness) a chatty worker would block on a full
    pipe and hang. Its own log file cannot fill up that way.
    """
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    except OSError:
        return
    for stream, target in ((sys.stdout, 1), (sys.stderr, 2)):
        try:
            if stream is not None:
                stream.flush()
            os.dup2(fd, target)
        except (OSError, ValueError):
            pass
    os.close(fd)


def begin_worker(jdir: Path) -> logging.Logger:
    """The first lines of every worker process: own log, lower priority, quiet TensorFlow.

    Returns:
        The worker's `logging.Logger` (writing to ``worker.log``).
    """
    own_output(jdir / "worker.log")
    try:
        current = os.nice(0)
        if current < WORKER_NICE:  # `spawn` already lowered it; a worker started otherwise gets it here
            os.nice(WORKER_NICE - current)
    except OSError:
        pass
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    logging.basicConfig(filename=str(jdir / "worker.log"), level=logging.INFO,
                        format="%(asctime)s %(levelname)s %(message)s")
    return logging.getLogger("tlviz.worker")
