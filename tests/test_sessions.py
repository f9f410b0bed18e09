"""Many users on one server: separate sessions, a worker that dies, the shared model cache."""

from __future__ import annotations

import hashlib
import os
import signal
import time

import pytest
from apptest_helpers import open_page, texts

from tlviz.finetune.store import list_runs, load_run
from tlviz import jobs
from tlviz.jobs.spawn import death_reason

PAGE = "pages/finetune.py"



def weights_hash(model) -> str:
    h = hashlib.sha256()
    for w in model.weights:  # trainable and not (BatchNormalization statistics too)
        h.update(w.path.encode())
        h.update(w.numpy().tobytes())
    return h.hexdigest()


def start(at, lr=1e-2, epochs=2):
    at.select_slider(key="ft_depth_block").set_value(0)
    at.number_input(key="ft_lr").set_value(lr)
    at.number_input(key="ft_epochs").set_value(epochs)
    at.button(key="ft_start").click()
    at.run()
    assert not at.exception, at.exception
    job = at.session_state["ft_job"]
    assert job is not None, texts(at)
    return job


def wait(*sessions, timeout=180):
    """Wait for each session's job to end (on the job's own status), then let its page see the end."""
    for at in sessions:
        job_id = at.session_state["ft_job"]
        if job_id is not None:
            assert not jobs.wait(job_id, timeout=timeout).active, "a job did not finish"
        for _ in range(5):  # the page notices the end on its next run, and clears its job
            at.run()
            assert not at.exception, at.exception
            if at.session_state["ft_job"] is None:
                break
        assert at.session_state["ft_job"] is None, "the page did not notice its job's end"
        at.run()


def test_two_sessions_fine_tune_side_by_side_without_seeing_each_other(runs):
    a = open_page(PAGE, images="digits_5_9")
    b = open_page(PAGE, images="digits_0_4")
    model_a, model_b = a.session_state["model"], b.session_state["model"]
    assert model_a.model is model_b.model, "the sample should be one cached model shared by both sessions"
    before = weights_hash(model_a.model)
    assert a.session_state["workspace"] != b.session_state["workspace"]

    start(a)
    start(b, lr=3e-3)  # both workers run at the same time
    wait(a, b)

    ws_a, ws_b = a.session_state["workspace"], b.session_state["workspace"]
    runs_a, runs_b = list_runs(owner=ws_a), list_runs(owner=ws_b)
    assert len(runs_a) == 1 and len(runs_b) == 1
    assert set(runs_a["state"]) == {"completed"} and set(runs_b["state"]) == {"completed"}
    assert runs_a["lr"].iloc[0] == pytest.approx(1e-2) and runs_b["lr"].iloc[0] == pytest.approx(3e-3)
    # Each session's own run on its own images; the other's is not listed on its page.
    assert load_run(runs_a["run_id"].iloc[0]).images["class_names"] == ["5", "6", "7", "8", "9"]
    assert load_run(runs_b["run_id"].iloc[0]).images["class_names"] == ["0", "1", "2", "3", "4"]
    (shown_a,), (shown_b,) = a.selectbox(key="ft_show_run").options, b.selectbox(key="ft_show_run").options
    assert shown_a.startswith(runs_a["run_id"].iloc[0]) and shown_b.startswith(runs_b["run_id"].iloc[0])
    # Neither session can open or delete the other's run, even by id.
    from tlviz.errors import TlvizError
    from tlviz.finetune.store import delete_run
    with pytest.raises(TlvizError, match="another session"):
        load_run(runs_b["run_id"].iloc[0], owner=ws_a)
    with pytest.raises(TlvizError, match="another session"):
        delete_run(runs_b["run_id"].iloc[0], owner=ws_a)

    # The shared model was never trained in place.
    assert weights_hash(model_a.model) == before
    assert all(layer.trainable == layer2.trainable for layer, layer2 in zip(model_a.model.layers,
                                                                           model_b.model.layers))

    # One session changing its model and images leaves the other's alone.
    b.selectbox(key="model_choice").set_value("digits_frozen.keras")
    b.run()
    a.run()
    assert b.session_state["model"].name == "digits_frozen"
    assert a.session_state["model"].name == "digits_base"
    assert a.session_state["images"].class_names == ["5", "6", "7", "8", "9"]
    assert b.session_state["images"].class_names == ["0", "1", "2", "3", "4"]


def _running_pid(run_id, timeout=120):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        rec = load_run(run_id)
        if rec.state == "running" and rec.status.get("pid"):
            return int(rec.status["pid"])
        assert rec.state in ("queued", "running"), rec.message
        time.sleep(0.3)
    raise AssertionError("the run never started")


def test_killed_worker_is_reported_and_the_next_run_works(runs):
    at = open_page(PAGE, images="digits_5_9")
    other = open_page(PAGE, images="digits_0_4")  # another user on the same server
    start(at, epochs=500)
    run_id = list_runs(owner=at.session_state["workspace"])["run_id"].iloc[0]
    pid = _running_pid(run_id)
    assert pid != os.getpid()
    os.kill(pid, signal.SIGKILL)  # what the out-of-memory killer does
    wait(at)
    text = texts(at)
    assert "killed (SIGKILL)" in text and "ran out of memory" in text
    rec = load_run(run_id)
    assert rec.state == "failed" and "SIGKILL" in rec.message

    # The other session is unaffected and the next run in the same session works.
    other.run()
    assert not other.exception
    start(at, epochs=2)
    wait(at)
    df = list_runs(owner=at.session_state["workspace"])
    assert list(df["state"]) == ["completed", "failed"]  # newest first; the failed run is kept


@pytest.mark.parametrize("code, words", [
    (-signal.SIGKILL, "ran out of memory"),
    (-signal.SIGTERM, "SIGTERM"),
    (3, "exited with code 3"),
    (None, "server restarted"),
])
def test_death_reasons_say_what_happened_and_what_to_do(code, words):
    msg = death_reason(code)
    assert words in msg and "start the run again" in msg


def test_worker_output_cannot_block_on_an_undrained_pipe(tmp_path):
    """A worker writes its output to its own log, so a server whose pipe nobody reads never hangs it."""
    import subprocess
    import sys

    script = (
        "import sys, os\n"
        "from pathlib import Path\n"
        "from tlviz.jobs.spawn import own_output\n"
        f"own_output(Path({str(tmp_path / 'worker.log')!r}))\n"
        "chunk = 'x' * 1023 + '\\n'\n"
        "for _ in range(1024):\n"  # 1 MB on each stream: far more than a pipe buffer holds
        "    sys.stdout.write(chunk); sys.stderr.write(chunk)\n"
        "sys.stdout.flush(); os.write(2, b'C-level write\\n')\n"
    )
    proc = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            cwd=str(tmp_path), env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)})
    try:
        assert proc.wait(timeout=60) == 0  # without the redirect it blocks once 64 KB sit in the pipe
    finally:
        proc.kill()
    log = (tmp_path / "worker.log").read_text()
    assert log.count("x" * 1023) == 2048 and "C-level write" in log


def test_sessions_measuring_the_shared_model_at_once_get_their_own_answers(loaded_base, digits_0_4, digits_5_9):
    """Streamlit runs each session in its own thread on the one cached model: results must not mix."""
    import threading

    import numpy as np

    from tlviz import normalize
    from tlviz.imagesets import load_image_set

    sets = {name: load_image_set(path, loaded_base.image_size, loaded_base.channels)
            for name, path in (("0-4", digits_0_4), ("5-9", digits_5_9))}
    alone = {name: normalize.analyze(loaded_base, s) for name, s in sets.items()}
    before = weights_hash(loaded_base.model)
    together, errors = {}, []

    def session(key, name):
        try:
            together[key] = (name, normalize.analyze(loaded_base, sets[name]))
        except Exception as exc:  # surfaced below with the thread's name
            errors.append(f"{key}: {exc!r}")

    threads = [threading.Thread(target=session, args=(f"s{i}", name)) for i, name in enumerate(["0-4", "5-9"] * 2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=300)
    assert not errors, errors
    assert len(together) == 4
    for name, report in together.values():
        ref = alone[name]
        assert list(report.evaluations) == list(ref.evaluations)
        for key, ev in ref.evaluations.items():
            assert np.array_equal(report.evaluations[key].predictions, ev.predictions), (name, key)
    assert alone["0-4"].best_setting.label == "tf"
    assert weights_hash(loaded_base.model) == before
