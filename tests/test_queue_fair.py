"""A fair share of the machine (`tlviz.jobs.queue`): people served in turn, a cap per person, sweeps that yield.

The queue is driven for real: its files and `fcntl` locks, waiting workers in threads (each with its own
lock file descriptors, which exclude each other like processes do), and in the last test real worker
processes of a sweep and an analysis.
"""

from __future__ import annotations

import datetime as dt
import os
import threading
import time

import pytest

from tlviz import jobs
from tlviz.errors import ConfigError
from tlviz.jobs import queue as jobqueue
from tlviz.jobs.status import JobStatus
from tlviz.jsonfiles import read_json

A, B, C = "user-aaaa1111", "user-bbbb2222", "ws-cccc3333"  # owner tokens: never shown to anyone


@pytest.fixture()
def stop():
    """Set at the end of a test: every waiting thread it started gives up (a failed assertion never hangs)."""
    event = threading.Event()
    yield event
    event.set()


def _deadline(seconds: float = 30.0):
    """A `should_stop` that gives up after `seconds`: a broken queue fails the test instead of hanging it."""
    end = time.monotonic() + seconds
    return lambda: time.monotonic() > end


def _queued(d, owner, name):
    seq = jobqueue.enqueue(d, name, owner)
    jobqueue.claim(d, name, seq, os.getpid())
    return seq


def _serve(d, names_seqs, stop):
    """Each job waits for its turn in a thread of its own; the order in which they took the slot."""
    order, lock, errors = [], threading.Lock(), []

    def worker(name, seq):
        try:
            slot = jobqueue.wait_turn(d, name, seq, should_stop=stop.is_set, poll_s=0.005)
            if slot is None:
                return
            with lock:
                order.append(name)
            slot.release()
            jobqueue.leave(d, name, seq)
        except Exception as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=worker, args=ns, daemon=True) for ns in names_seqs]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert not errors and not any(t.is_alive() for t in threads), errors
    return order


def test_owners_are_served_in_turn_and_first_come_within_one_owner(tmp_path, monkeypatch, stop):
    monkeypatch.setenv(jobqueue.ENV_MAX_JOBS, "1")
    monkeypatch.delenv(jobqueue.ENV_MAX_JOBS_PER_USER, raising=False)
    d = tmp_path / ".jobs"
    queued = [(n, _queued(d, A, n)) for n in ("A1", "A2", "A3", "A4")]
    queued += [("B1", _queued(d, B, "B1")), ("C1", _queued(d, C, "C1")), ("N1", _queued(d, None, "N1"))]
    assert _serve(d, queued, stop) == ["A1", "B1", "C1", "N1", "A2", "A3", "A4"]
    assert not list((d / ".queue").glob("*.json"))


def test_a_later_owner_goes_before_the_rest_of_a_batch_while_it_runs(tmp_path, monkeypatch, stop):
    """The rank counts the owner's running jobs: B's job queued while A1 runs is next, then A2, A3."""
    monkeypatch.setenv(jobqueue.ENV_MAX_JOBS, "1")
    d = tmp_path / ".jobs"
    a = [(n, _queued(d, A, n)) for n in ("A1", "A2", "A3")]
    slot = jobqueue.wait_turn(d, "A1", a[0][1], should_stop=_deadline(), poll_s=0.005)
    b1 = _queued(d, B, "B1")
    assert jobqueue.queue_place(d, "B1", b1) == jobqueue.QueuePlace(2, True)  # 1 running ahead; its turn next
    assert jobqueue.queue_place(d, "A2", a[1][1]) == jobqueue.QueuePlace(3, False)
    assert jobqueue.queue_position(d, "A3", a[2][1]) == 4
    slot.release()
    jobqueue.leave(d, "A1", a[0][1])
    assert _serve(d, [a[1], a[2], ("B1", b1)], stop) == ["B1", "A2", "A3"]


def test_the_per_person_cap_holds_a_job_back_without_blocking_the_others(tmp_path, monkeypatch):
    monkeypatch.setenv(jobqueue.ENV_MAX_JOBS, "2")
    monkeypatch.setenv(jobqueue.ENV_MAX_JOBS_PER_USER, "1")
    d = tmp_path / ".jobs"
    a1, a2, b1 = _queued(d, A, "A1"), _queued(d, A, "A2"), _queued(d, B, "B1")
    first = jobqueue.wait_turn(d, "A1", a1, should_stop=_deadline(), poll_s=0.005)
    ticks = iter(range(6))
    # A slot is free, but A already runs its one job: A2 waits (six looks at the queue, no slot) ...
    assert jobqueue.wait_turn(d, "A2", a2, should_stop=lambda: next(ticks) >= 5, poll_s=0.005) is None
    # ... and does not block B's job behind it.
    second = jobqueue.wait_turn(d, "B1", b1, should_stop=_deadline(), poll_s=0.005)
    assert second is not None and {first.index, second.index} == {0, 1}
    assert jobqueue.queue_place(d, "A2", a2) == jobqueue.QueuePlace(3, True)
    first.release()
    jobqueue.leave(d, "A1", a1)
    third = jobqueue.wait_turn(d, "A2", a2, should_stop=_deadline(), poll_s=0.005)
    assert third is not None
    for s in (second, third):
        s.release()


@pytest.mark.parametrize("raw, expected", [(None, None), ("", None), ("2", 2), ("1", 1)])
def test_max_jobs_per_user_reads_the_setting(raw, expected, monkeypatch):
    if raw is None:
        monkeypatch.delenv(jobqueue.ENV_MAX_JOBS_PER_USER, raising=False)
    else:
        monkeypatch.setenv(jobqueue.ENV_MAX_JOBS_PER_USER, raw)
    assert jobqueue.max_jobs_per_user() == expected


@pytest.mark.parametrize("bad", ["2.5", "0", "lots", "-1"])
def test_a_bad_max_jobs_per_user_is_refused_naming_the_variable(bad, monkeypatch):
    monkeypatch.setenv(jobqueue.ENV_MAX_JOBS_PER_USER, bad)
    with pytest.raises(ConfigError, match=rf"^TLVIZ_MAX_JOBS_PER_USER='{bad}' is not a positive"):
        jobqueue.max_jobs_per_user()


def test_a_sweep_yields_its_slot_only_to_another_persons_turn(tmp_path, monkeypatch, stop):
    monkeypatch.setenv(jobqueue.ENV_MAX_JOBS, "1")
    d = tmp_path / ".jobs"
    sweep = _queued(d, A, "sweep")
    slot = jobqueue.wait_turn(d, "sweep", sweep, should_stop=_deadline(), poll_s=0.005)
    own = _queued(d, A, "A2")  # the owner's own next job: the sweep keeps its slot
    assert not jobqueue.should_yield(d, "sweep", sweep)
    assert jobqueue.yield_turn(d, "sweep", sweep, slot, should_stop=_deadline()) is slot and slot.held
    b1 = _queued(d, B, "B1")
    assert jobqueue.should_yield(d, "sweep", sweep)
    renumbered, got = [], []

    def sweep_between_runs():
        got.append(jobqueue.yield_turn(d, "sweep", sweep, slot, should_stop=stop.is_set,
                                       on_requeue=renumbered.append, poll_s=0.005))

    t = threading.Thread(target=sweep_between_runs, daemon=True)
    t.start()
    # B's turn comes next, not A2's: the sweep keeps the turn it had (A2 was queued while it ran)
    b_slot = jobqueue.wait_turn(d, "B1", b1, should_stop=_deadline(), poll_s=0.005)
    assert renumbered and renumbered[0] > b1 and not slot.held
    place = jobqueue.queue_place(d, "sweep", renumbered[0])
    assert place is not None and place.position == 3  # B runs, then A2 (queued before the sweep came back)
    b_slot.release()
    jobqueue.leave(d, "B1", b1)
    a2_slot = jobqueue.wait_turn(d, "A2", own, should_stop=_deadline(), poll_s=0.005)
    a2_slot.release()
    jobqueue.leave(d, "A2", own)
    t.join(timeout=30)
    assert got == [slot] and slot.held
    assert not (d / ".queue" / f"{sweep:012d}-sweep.json").exists()  # the old number is gone
    slot.release()
    jobqueue.leave(d, "sweep", renumbered[0])
    assert not list((d / ".queue").glob("*"))


def test_the_waiting_text_says_jobs_ahead_and_whose_turn_without_naming_anyone(tmp_path, monkeypatch):
    monkeypatch.setenv(jobqueue.ENV_MAX_JOBS, "1")
    d = tmp_path / ".jobs"
    a1, a2, b1 = _queued(d, A, "A1"), _queued(d, A, "A2"), _queued(d, B, "B1")
    slot = jobqueue.wait_turn(d, "A1", a1, should_stop=_deadline(), poll_s=0.005)
    mine, theirs = jobqueue.queue_place(d, "B1", b1), jobqueue.queue_place(d, "A2", a2)
    texts = [jobqueue.waiting_text(p.position, p.next_is_yours) for p in (mine, theirs)]
    assert texts == ["Waiting for a free worker: 1 job ahead; next turn: yours",
                     "Waiting for a free worker: 2 jobs ahead; next turn: another person's job"]
    status = JobStatus("B1", "diagnose", "queued", queue_position=mine.position, next_is_yours=mine.next_is_yours)
    assert status.text == texts[0]
    assert all(token not in text for token in (A, B, "aaaa", "bbbb") for text in texts)
    assert jobqueue.waiting_text(3) == "Waiting for a free worker: 2 jobs ahead"  # callers that do not know
    sweep = JobStatus("s", "runs", "queued", runs=[], queue_position=2, next_is_yours=False)
    assert sweep.text.endswith("next turn: another person's job")
    slot.release()


def test_a_persons_diagnosis_runs_between_the_runs_of_anothers_sweep(loaded_base, base_images, digits_0_4, runs,
                                                                    monkeypatch):
    """Real workers: A's 3-run sweep gives its slot to B's analysis after its first run, then finishes."""
    from tlviz.finetune.config import RunConfig
    from tlviz.imagesets import open_source
    from tlviz.jobs.control import wait_until

    monkeypatch.setenv(jobqueue.ENV_MAX_JOBS, "1")
    monkeypatch.delenv(jobqueue.ENV_MAX_JOBS_PER_USER, raising=False)
    configs = [RunConfig(unfreeze=0, lr=lr, epochs=2, preset="tf") for lr in (1e-2, 3e-3, 1e-3)]
    sweep = jobs.start_job(loaded_base, base_images, configs, root=runs, owner=A)
    first_seq = read_json(jobs.job_dir(sweep, runs) / "job.json")["queue_seq"]
    wait_until(lambda: jobs.poll(sweep, runs), lambda s: s.current is not None or not s.active, timeout=120)
    other = jobs.start_analysis("normalize", loaded_base, base_images, {"variants": False},
                                source=open_source(digits_0_4), root=runs, owner=B)
    b = jobs.wait(other, runs, timeout=300)
    a = jobs.wait(sweep, runs, timeout=300)
    assert b.state == "done", b.message
    assert a.state == "done" and [r.state for r in a.runs] == ["completed"] * 3, (a.message, a.runs)
    b_started = read_json(jobs.job_dir(other, runs) / "status.json")["started_at"]
    last_started = dt.datetime.fromisoformat(read_json(runs / a.runs[-1].run_id / "status.json")["started"])
    assert b_started < last_started.timestamp(), "B's job waited for the whole sweep"
    job = read_json(jobs.job_dir(sweep, runs) / "job.json")
    assert job["queue_seq"] > first_seq  # it gave its slot back and came back under a new number
    assert not list((runs / ".jobs" / ".queue").glob("*.json"))  # nothing left in the queue
