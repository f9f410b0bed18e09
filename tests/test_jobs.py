"""Heavy analyses in worker processes (`tlviz.jobs`) and the one queue of heavy jobs (`tlviz.jobs.queue`).

Real engine, real worker processes, on the small digits sample.
"""

from __future__ import annotations

import io
import os
import signal
import subprocess
import sys
import zipfile

import numpy as np
import pytest

from tlviz import config, jobs
from tlviz.jobs import queue as jobqueue
from tlviz.jobs.sources import open_source as reopen_source
from tlviz.jobs.sources import source_spec
from tlviz.jobs.control import wait_until
from tlviz.jobs.spawn import worker_alive
from tlviz.jsonfiles import read_json
from tlviz.errors import TlvizError
from tlviz.imagesets import ImageSource, open_source


@pytest.fixture(scope="module")
def source(digits_0_4):
    return open_source(digits_0_4)


@pytest.fixture(scope="module")
def images(loaded_base, source):
    return source.load(loaded_base.image_size, loaded_base.channels)


@pytest.fixture(scope="module")
def zip_source(digits_0_4):
    """The same images as an uploaded .zip held in memory (no file on disk)."""
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        for path in sorted(digits_0_4.rglob("*")):
            if path.is_file():
                zf.write(path, "digits/" + path.relative_to(digits_0_4).as_posix())
    return ImageSource.from_zip(buf.getvalue(), "digits.zip")


def _wait_for(job_id, root, predicate, timeout=120, what="the condition"):
    """The job's first status (`jobs.poll`) for which `predicate` holds; fails early if the job ends first."""
    def reached(st):
        assert predicate(st) or st.active, f"job {job_id} ended ({st.state}: {st.message}) before {what}"
        return predicate(st)

    try:
        return wait_until(lambda: jobs.poll(job_id, root), reached, timeout=timeout)
    except TimeoutError:
        raise AssertionError(f"timed out waiting for {what}") from None


def _status(job_id, root):
    return read_json(jobs.job_dir(job_id, root) / "status.json", {})


def _log(job_id, root) -> str:
    path = jobs.job_dir(job_id, root) / "progress.log"
    return path.read_text() if path.exists() else ""


def _same_normalization(a, b) -> None:
    assert list(a.results["setting"]) == list(b.results["setting"])
    np.testing.assert_allclose(a.results["accuracy"].astype(float), b.results["accuracy"].astype(float))
    assert a.best_preset == b.best_preset and a.best_setting == b.best_setting
    for label, ev in b.evaluations.items():
        np.testing.assert_array_equal(a.evaluations[label].predictions, ev.predictions)


def test_normalize_job_gives_the_engines_result_and_is_then_served_from_disk(loaded_base, images, zip_source,
                                                                              runs):
    from tlviz import normalize

    job = jobs.start_analysis("normalize", loaded_base, images, source=zip_source, root=runs, owner="w1")
    st = jobs.wait(job, runs, timeout=300)
    assert st.state == "done", st.message
    assert st.fraction == 1.0 and not st.from_store and not st.notes
    report = jobs.load_result(job, runs)
    direct = normalize.analyze(loaded_base, images, source=zip_source)
    _same_normalization(report, direct)
    assert len(report.results) == 9  # 5 presets, 2 other resize methods (the zip was re-opened), BGR
    assert "Evaluating tf" in _log(job, runs)  # the engine's own progress text reached the job folder

    # Compute once: the same request (any session) is served from disk, without a worker.
    again = jobs.start_analysis("normalize", loaded_base, images, source=zip_source, root=runs, owner="w2")
    st2 = jobs.poll(again, runs)
    assert st2.state == "done" and st2.from_store
    assert "pid" not in _status(again, runs) and not (jobs.job_dir(again, runs) / "worker.log").exists()
    _same_normalization(jobs.load_result(again, runs), direct)
    # A reload finds each session's latest job by its workspace token and key.
    key = jobs.analysis_key("normalize", loaded_base, images, source=zip_source)
    assert jobs.latest_job("normalize", key, "w1", runs) == job
    assert jobs.latest_job("normalize", key, "w2", runs) == again
    assert jobs.latest_job("normalize", key, "someone-else", runs) is None
    # Other parameters are another result.
    other = jobs.analysis_key("normalize", loaded_base, images, {"variants": False}, source=zip_source)
    assert other != key and not jobs.has_result("normalize", other, runs)


def test_diagnose_job_matches_the_engine_and_reuses_the_stored_normalization(loaded_base, images, source, runs):
    from tlviz import diagnose

    norm_job = jobs.start_analysis("normalize", loaded_base, images, source=source, root=runs)
    assert jobs.wait(norm_job, runs, timeout=300).state == "done"
    stored = jobs.load_result(norm_job, runs)

    job = jobs.start_analysis("diagnose", loaded_base, images, source=source, root=runs)
    st = jobs.wait(job, runs, timeout=300)
    assert st.state == "done", st.message
    report = jobs.load_result(job, runs)
    # The normalization was not measured again: no fingerprint, no preset evaluated in this job.
    log = _log(job, runs)
    assert "Reusing the stored normalization comparison" in log
    assert "fingerprint" not in log and "Evaluating" not in log, log
    assert report.normalization.seconds == stored.seconds
    direct = diagnose.diagnose(loaded_base, images, "unit", source=source)
    assert [f.id for f in report.findings] == [f.id for f in direct.findings]
    assert [s.id for s in report.skipped] == [s.id for s in direct.skipped]
    assert report.expected_preset == direct.expected_preset == "tf"
    assert [f.id for f in report.for_preset("tf").findings] == [f.id for f in direct.for_preset("tf").findings]


def test_a_diagnosis_stores_its_normalization_for_the_normalization_page(loaded_base, images, source, runs):
    job = jobs.start_analysis("diagnose", loaded_base, images, source=source, root=runs)
    assert jobs.wait(job, runs, timeout=300).state == "done"
    assert "Evaluating tf" in _log(job, runs)  # measured here, nothing was stored before
    norm = jobs.start_analysis("normalize", loaded_base, images, source=source, root=runs)
    st = jobs.poll(norm, runs)
    assert st.state == "done" and st.from_store
    assert jobs.load_result(norm, runs).seconds == jobs.load_result(job, runs).normalization.seconds


def test_queue_runs_jobs_one_after_another_and_reports_the_place_in_line(loaded_base, images, source, runs,
                                                                         monkeypatch):
    monkeypatch.setenv(jobqueue.ENV_MAX_JOBS, "1")
    first = jobs.start_analysis("normalize", loaded_base, images, source=source, root=runs)
    second = jobs.start_analysis("normalize", loaded_base, images, {"variants": False}, source=source, root=runs)
    waiting = _wait_for(second, runs, lambda s: s.queue_position, what="the second job to report its place")
    assert waiting.state == "queued" and waiting.queue_position == 2 and waiting.jobs_ahead == 1
    assert jobs.poll(first, runs).state in ("queued", "running")
    a = jobs.wait(first, runs, timeout=300)
    b = jobs.wait(second, runs, timeout=300)
    assert a.state == b.state == "done", (a.message, b.message)
    assert jobs.poll(second, runs).queue_position is None
    sa, sb = _status(first, runs), _status(second, runs)
    assert sb["started_at"] >= sa["ended_at"], "the second job started before the first let go of the slot"


def test_fine_tuning_jobs_wait_in_the_same_queue(loaded_base, images, source, runs, monkeypatch):
    from tlviz.finetune.config import RunConfig
    from tlviz.jobs import cancel, poll, start_job, wait

    monkeypatch.setenv(jobqueue.ENV_MAX_JOBS, "1")
    diag = jobs.start_analysis("diagnose", loaded_base, images, source=source, root=runs)
    run = start_job(loaded_base, images, [RunConfig(unfreeze=0, lr=1e-2, epochs=1, preset="tf")], root=runs)
    dropped = start_job(loaded_base, images, [RunConfig(unfreeze=0, lr=1e-2, epochs=1, preset="tf")], root=runs)
    _wait_for(dropped, runs, lambda s: s.queue_position == 3, what="the third job's place")
    # each worker records its place once it has started (at the lowest priority: it may start late)
    _wait_for(run, runs, lambda s: s.queue_position == 2, what="the second job's place")
    assert poll(run.job_id, runs).state == "queued"  # one vocabulary: a waiting fine-tuning job is queued
    assert poll(run.job_id, runs).runs[0].state == "queued"
    cancel(dropped.job_id, runs)  # a queued fine-tuning job is dropped before it loads anything
    st = wait(dropped.job_id, runs, timeout=60)
    assert st.state == "cancelled" and st.runs[0].state == "cancelled" and "before it started" in st.runs[0].message
    assert jobs.wait(diag, runs, timeout=300).state == "done"
    st = wait(run.job_id, runs, timeout=300)
    assert st.state == "done" and st.runs[0].state == "completed", st.message
    assert _status(run.job_id, runs).get("waiting") is None


def test_cancel_drops_a_queued_job_and_stops_a_running_one(loaded_base, images, source, runs, monkeypatch):
    monkeypatch.setenv(jobqueue.ENV_MAX_JOBS, "1")
    running = jobs.start_analysis("diagnose", loaded_base, images, source=source, root=runs)
    queued = jobs.start_analysis("normalize", loaded_base, images, source=source, root=runs)
    _wait_for(running, runs, lambda s: s.state == "running", what="the first job to run")
    assert jobs.poll(queued, runs).state == "queued"
    jobs.cancel(queued, runs)
    assert jobs.poll(queued, runs).state == "cancelled"
    pid = _status(running, runs)["pid"]
    jobs.cancel(running, runs)
    st = jobs.poll(running, runs)
    assert st.state == "cancelled" and not st.message
    assert not worker_alive(running, pid)
    assert not jobs.has_result("diagnose", st.key, runs)  # nothing partial is kept
    # Nothing is left holding the one slot or the queue: the next job runs.
    assert not list((runs / ".jobs" / ".queue").glob("*.json"))
    nxt = jobs.start_analysis("normalize", loaded_base, images, {"variants": False}, root=runs)
    assert jobs.wait(nxt, runs, timeout=300).state == "done"


def test_a_worker_killed_mid_diagnosis_fails_with_the_reason_and_the_next_job_works(loaded_base, images, source,
                                                                                    runs):
    job = jobs.start_analysis("diagnose", loaded_base, images, source=source, root=runs)
    _wait_for(job, runs, lambda s: "Check " in _log(job, runs), what="the diagnosis to start its checks")
    pid = _status(job, runs)["pid"]
    assert pid != os.getpid()
    os.kill(pid, signal.SIGKILL)  # what the out-of-memory killer does
    st = jobs.wait(job, runs, timeout=60)
    assert st.state == "failed"
    assert "killed (SIGKILL)" in st.message and "ran out of memory" in st.message
    assert "TLVIZ_MEMORY_MB" in st.message and "fewer images" in st.message
    assert not jobs.has_result("diagnose", st.key, runs)
    # The same request again starts a fresh job, which completes.
    again = jobs.start_analysis("diagnose", loaded_base, images, source=source, root=runs)
    assert again != job
    assert jobs.wait(again, runs, timeout=300).state == "done"


def test_sources_are_reopened_in_the_worker_or_the_report_says_why_not(loaded_base, images, source, zip_source,
                                                                        runs):
    # A zip held in memory is saved once under .inputs and opened again from there.
    spec = source_spec(zip_source, runs)
    assert spec["kind"] == "zip" and spec["path"].startswith(str(runs / ".inputs"))
    assert source_spec(zip_source, runs) == spec
    notes = []
    again = reopen_source(spec, notes)
    assert not notes and again.load(loaded_base.image_size).files == images.files
    assert source_spec(source, runs) == {"kind": "folder", "path": source.name, "name": source.name}
    # A folder that disappeared: no resize variants, and a sentence saying why.
    assert reopen_source({"kind": "folder", "path": str(runs / "gone"), "name": "gone"}, notes) is None
    assert "could not be opened again" in notes[0]
    # A source built by hand cannot be opened elsewhere: another key, and the job says so.
    handmade = ImageSource(source.name, source._entries, None, [])
    assert source_spec(handmade, runs) is None
    assert jobs.analysis_key("normalize", loaded_base, images, source=handmade) != jobs.analysis_key(
        "normalize", loaded_base, images, source=source)


def test_bad_kinds_and_parameters_are_refused_with_the_fix(loaded_base, images, runs):
    with pytest.raises(jobs.AnalysisRefused, match="Use one of: normalize, diagnose"):
        jobs.start_analysis("train", loaded_base, images, root=runs)
    with pytest.raises(jobs.AnalysisRefused, match="for_preset"):
        jobs.start_analysis("diagnose", loaded_base, images, {"preset": "tf"}, root=runs)
    with pytest.raises(jobs.AnalysisRefused, match="custom and variants"):
        jobs.start_analysis("normalize", loaded_base, images, {"presets": ["tf"]}, root=runs)


def test_max_jobs_setting(monkeypatch):
    from tlviz import machine, memory

    monkeypatch.delenv(jobqueue.ENV_MAX_JOBS, raising=False)
    expected = max(1, min(machine.cpu_count() // 2, machine.machine_bytes() // (
        memory.memory_budget_bytes() + machine.JOB_OVERHEAD_BYTES)))
    assert jobqueue.max_jobs() == config.default("TLVIZ_MAX_JOBS") == expected
    monkeypatch.setenv(jobqueue.ENV_MAX_JOBS, "3")
    assert jobqueue.max_jobs() == 3
    for bad in ("0", "two", "-1"):
        monkeypatch.setenv(jobqueue.ENV_MAX_JOBS, bad)
        with pytest.raises(TlvizError, match="TLVIZ_MAX_JOBS=.*Set it to e.g. 2"):
            jobqueue.max_jobs()


def test_queue_order_positions_and_dead_markers(tmp_path, monkeypatch):
    """First in, first out across processes; a marker whose process is gone never blocks the line."""
    monkeypatch.setenv(jobqueue.ENV_MAX_JOBS, "1")
    d = tmp_path / ".jobs"
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        a, b, c = (jobqueue.enqueue(d, name) for name in ("a", "b", "c"))
        assert a < b < c
        jobqueue.claim(d, "a", a, sleeper.pid)
        jobqueue.claim(d, "b", b, 999_999_999)  # no such process
        jobqueue.claim(d, "c", c, os.getpid())
        assert jobqueue.queue_position(d, "a", a) == 1
        assert jobqueue.queue_position(d, "b", b) is None  # dead: taken out of the line
        assert jobqueue.queue_position(d, "c", c) == 2
        # `c` may not overtake `a`, which still waits.
        assert jobqueue.wait_turn(d, "c", c, should_stop=lambda: True) is None
        slot = jobqueue.wait_turn(d, "a", a, should_stop=lambda: False, poll_s=0.01)
        assert slot is not None and jobqueue.queue_position(d, "a", a) is None
        assert jobqueue.queue_position(d, "c", c) == 2  # a runs
        ticks = iter(range(5))
        assert jobqueue.wait_turn(d, "c", c, should_stop=lambda: next(ticks) >= 4, poll_s=0.01) is None  # slot busy
        slot.release()
        jobqueue.leave(d, "a", a)
        got = jobqueue.wait_turn(d, "c", c, should_stop=lambda: False, poll_s=0.01)
        assert got is not None
        got.release()
    finally:
        sleeper.kill()
        sleeper.wait()


def test_one_status_type_and_one_set_of_states_for_every_kind():
    """An analysis and a fine-tuning job are read with the same `JobStatus` and the same state words."""
    from tlviz.jobs import ACTIVE_STATES, STATES, JobStatus
    from tlviz.jobs.queue import waiting_text

    assert STATES == ("queued", "running", "done", "failed", "cancelled") and ACTIVE_STATES == ("queued", "running")
    queued = JobStatus("j", "normalize", "queued", queue_position=3)
    assert queued.active and queued.jobs_ahead == 2 and queued.text == waiting_text(3) and queued.fraction == 0.0
    running = JobStatus("j", "diagnose", "running", progress={"fraction": 0.4, "text": "Check 2 of 9: …"})
    assert running.active and running.fraction == 0.4 and running.text.startswith("Check 2")
    assert not running.has_runs and JobStatus("j", "runs", "queued").has_runs
    done = JobStatus("j", "gradcam", "done", progress={"fraction": 0.9, "text": "Done."})
    assert not done.active and done.fraction == 1.0
    assert JobStatus("j", "runs", "queued", queue_position=2).text == waiting_text(2)
    assert all(not JobStatus("j", k, s).active for k in ("normalize", "runs") for s in ("done", "failed", "cancelled"))
