"""Bounded disk (issue 25 item 4): the runs folder kept under ``TLVIZ_RUNS_MAX_GB`` (`tlviz.diskcap`).

Run folders are made by the engine's own writer (`RunWriter`) with a few hundred KB in them, under a tiny cap;
their files' times are set so that "oldest first" is decided by the test, not by the clock.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import time
from pathlib import Path

import pytest

from tlviz import config, diskcap
from tlviz.errors import ConfigError, TlvizError
from tlviz.finetune.config import RunConfig
from tlviz.finetune.store import RunWriter, list_runs, load_run
from tlviz.jobs import cancel
from tlviz.jsonfiles import now_iso

OWNER, OTHER = "a" * 24, "b" * 24
KB = 1024
#: 0.0005 GB: about 524 KB.
CAP = "0.0005"


def _age(path: Path, days: float) -> None:
    """Set every file under `path` (or `path` itself) `days` old."""
    t = time.time() - days * 86400
    for p in [path, *path.rglob("*")] if path.is_dir() else [path]:
        os.utime(p, (t, t), follow_symlinks=False)


def _run(root: Path, rid: str, days: float, state: str = "completed", owner: str | None = OWNER,
         size: int = 200 * KB, label: str = "", pid: int | None = None) -> Path:
    """A run folder as a real run leaves it: config, status, history, metrics and a model file of `size` bytes."""
    w = RunWriter(root / rid)
    w.write_config(RunConfig(epochs=1, label=label), {"filename": "digits_base.keras"}, {"source": "digits"},
                   owner=owner)
    w.status(state, **({"pid": pid} if pid is not None else {}))
    w.epoch([{"epoch": 1, "phase": "main", "loss": 1.0, "accuracy": 0.5, "val_loss": 1.1, "val_accuracy": 0.4,
              "lr": 1e-3, "elapsed_s": 1.0, "partial": False}])
    if state == "completed":
        w.finish({"final": {"val_accuracy": 0.4}, "elapsed_s": 1.0})
    (w.dir / "model.keras").write_bytes(os.urandom(size))
    _age(w.dir, days)
    return w.dir


def _job(root: Path, job_id: str, days: float, state: str = "done", pid: int | None = None, run_ids=(),
         size: int = 100 * KB) -> Path:
    d = root / ".jobs" / job_id
    d.mkdir(parents=True)
    (d / "job.json").write_text(json.dumps({"job_id": job_id, "kind": "runs", "run_ids": list(run_ids)}))
    (d / "status.json").write_text(json.dumps({"state": state, "pid": pid}))
    (d / "worker.log").write_bytes(b"x" * size)
    _age(d, days)
    return d


def _result(root: Path, stem: str, days: float, size: int = 100 * KB) -> tuple[Path, Path]:
    d = root / ".results"
    d.mkdir(parents=True, exist_ok=True)
    js, npz = d / f"{stem}.json", d / f"{stem}.npz"
    js.write_text("{}")
    npz.write_bytes(os.urandom(size))
    _age(js, days)
    _age(npz, days)
    return js, npz


@pytest.fixture()
def capped(runs, monkeypatch):
    """A fresh runs folder under a 524 KB cap."""
    monkeypatch.setenv("TLVIZ_RUNS_MAX_GB", CAP)
    runs.mkdir(parents=True, exist_ok=True)
    return runs


def test_the_reader_no_cap_a_cap_and_a_bad_value(runs, monkeypatch):
    monkeypatch.delenv("TLVIZ_RUNS_MAX_GB", raising=False)
    assert diskcap.max_bytes() is None
    monkeypatch.setenv("TLVIZ_RUNS_MAX_GB", "  ")  # empty means unset
    assert diskcap.max_bytes() is None
    monkeypatch.setenv("TLVIZ_RUNS_MAX_GB", "20")
    assert diskcap.max_bytes() == 20 * 2**30
    monkeypatch.setenv("TLVIZ_RUNS_MAX_GB", "0.5")
    assert diskcap.max_bytes() == 2**29
    for bad in ("lots", "0", "-1", "nan", "inf"):
        monkeypatch.setenv("TLVIZ_RUNS_MAX_GB", bad)
        with pytest.raises(ConfigError, match=rf"^TLVIZ_RUNS_MAX_GB={bad!r} is not a positive number of gigabytes. "
                                              r"Set it to e\.g\. 20, or unset it"):
            diskcap.max_bytes()
        with pytest.raises(ConfigError, match="TLVIZ_RUNS_MAX_GB"):
            diskcap.make_room()
    assert config.SETTINGS["TLVIZ_RUNS_MAX_GB"].kind == "gb"


def test_no_cap_removes_nothing_and_space_used_counts_everything(runs, monkeypatch):
    monkeypatch.delenv("TLVIZ_RUNS_MAX_GB", raising=False)
    _run(runs, "20240101-000000-000aaaa", days=30)
    _result(runs, "diagnose-k1", days=30)
    used = diskcap.space_used()
    assert 300 * KB < used < 320 * KB
    assert diskcap.make_room(incoming=10 * 2**30) == []
    assert (runs / "20240101-000000-000aaaa").is_dir()
    # A stored result hard-linked into its job's folder is counted once.
    os.makedirs(runs / ".jobs" / "j1")
    os.link(runs / ".results" / "diagnose-k1.npz", runs / ".jobs" / "j1" / "result.npz")
    assert diskcap.space_used() == used


def test_the_oldest_finished_runs_go_first_and_are_logged_for_their_owner(capped):
    a = _run(capped, "20240101-000000-000aaaa", days=30, label="first try")
    b = _run(capped, "20240102-000000-000bbbb", days=20, owner=OTHER)
    c = _run(capped, "20240103-000000-000cccc", days=10)
    assert diskcap.space_used() > 600 * KB
    created = load_run(a.name).created
    removed = diskcap.make_room()
    assert [r.item_id for r in removed] == [a.name] and removed.met
    assert not a.exists() and b.is_dir() and c.is_dir()
    r = removed[0]
    assert (r.kind, r.owner) == ("run", OWNER) and r.bytes > 200 * KB
    assert r.label == f"first try ({created[:10]} {created[11:16]})"
    assert diskcap.space_used() <= diskcap.max_bytes() == removed.cap
    # The log tells the owner, and only the owner.
    assert [e.item_id for e in diskcap.evicted_for(OWNER)] == [a.name]
    assert diskcap.evicted_for(OTHER) == [] and diskcap.evicted_for(None) == []
    assert diskcap.evicted_for(OWNER, since=dt.datetime.now() + dt.timedelta(minutes=5)) == []
    assert len(diskcap.evicted_for(OWNER, since=(dt.datetime.now() - dt.timedelta(minutes=5)).isoformat())) == 1
    # More incoming data takes the next oldest (another person's run), and a run without a label goes by its model.
    removed = diskcap.make_room(incoming=300 * KB)
    assert [(x.item_id, x.owner) for x in removed] == [(b.name, OTHER)] and removed[0].label.startswith(
        "digits_base.keras (")
    assert [e.item_id for e in diskcap.evicted_for(OTHER)] == [b.name]


def test_running_kept_and_a_running_jobs_runs_survive_even_over_the_cap(capped):
    me = os.getpid()
    running = _run(capped, "20240101-000000-000aaaa", days=50, state="running", pid=me)
    queued = _run(capped, "20240101-000001-000bbbb", days=50, state="queued")  # its worker not started yet
    kept = _run(capped, "20240101-000002-000cccc", days=40)
    diskcap.set_keep(kept.name, True, owner=OWNER)
    _age(kept, 40)
    of_job = _run(capped, "20240101-000003-000dddd", days=40)  # finished, but its job (a sweep) still runs
    job = _job(capped, "20240101-000004-000eeee", days=40, state="running", pid=me, run_ids=[of_job.name])
    dead = _run(capped, "20240101-000005-000ffff", days=45, state="running", pid=2**22 + 12345)  # worker gone
    done = _run(capped, "20240101-000006-0001111", days=30)
    old_job = _job(capped, "20240101-000007-0002222", days=35)
    removed = diskcap.make_room()
    assert {r.item_id for r in removed} == {dead.name, done.name, old_job.name}
    assert [r.kind for r in removed] == ["run", "job", "run"]  # oldest first, whatever the kind
    assert not removed.met and removed.short_by > 0 and removed.used > removed.cap
    for kept_path in (running, queued, kept, of_job, job):
        assert kept_path.is_dir(), kept_path
    assert load_run(kept.name).kept and diskcap.is_kept(kept.name)


def test_results_go_in_pairs_with_job_folders_and_caches_oldest_first(capped):
    old = _result(capped, "diagnose-k1", days=30, size=150 * KB)
    cache = capped / ".cache" / "activations" / "abc.npy"
    cache.parent.mkdir(parents=True)
    cache.write_bytes(os.urandom(150 * KB))
    _age(cache, 25)
    job = _job(capped, "20240101-000000-000aaaa", days=20, size=150 * KB)
    new = _result(capped, "normalize-k2", days=1, size=150 * KB)
    running_job = _job(capped, "20240101-000001-000bbbb", days=40, state="queued", pid=os.getpid(), size=150 * KB)
    removed = diskcap.make_room()
    assert [(r.kind, r.item_id) for r in removed] == [("result", "diagnose-k1"), ("cache", "abc.npy")]
    assert removed[0].label == "stored diagnose result" and removed[0].bytes > 150 * KB
    assert not any(p.exists() for p in old) and not cache.exists()
    assert all(p.exists() for p in new) and job.is_dir() and running_job.is_dir()
    assert diskcap.evicted_for(OWNER) == []  # only runs are told to their owner
    removed = diskcap.make_room(incoming=400 * KB)
    assert [r.kind for r in removed] == ["job", "result"] and removed[0].label.startswith("runs job folder")
    assert running_job.is_dir() and not job.exists()


def test_a_run_folder_being_written_is_left_alone(capped):
    young = capped / "20240101-000000-000aaaa"
    young.mkdir()
    (young / "model.keras").write_bytes(os.urandom(600 * KB))  # no config.json / status.json yet
    removed = diskcap.make_room()
    assert removed == [] and young.is_dir() and not removed.met
    _age(young, 1)  # a day later it is a damaged folder: it may go
    assert [r.item_id for r in diskcap.make_room()] == [young.name]


def test_keep_mark_refuses_another_workspace_and_shows_in_the_list(capped):
    rid = _run(capped, "20240101-000000-000aaaa", days=1).name
    assert not diskcap.is_kept(rid) and not load_run(rid).kept
    with pytest.raises(TlvizError, match="another session"):
        diskcap.set_keep(rid, True, owner=OTHER)
    assert not diskcap.is_kept(rid)
    diskcap.set_keep(rid, True, owner=OWNER)
    assert diskcap.is_kept(rid) and load_run(rid).kept
    assert list_runs(owner=OWNER).set_index("run_id").loc[rid, "kept"] == True  # noqa: E712
    diskcap.set_keep(rid, False, owner=OWNER)
    assert not diskcap.is_kept(rid) and not bool(list_runs().iloc[0]["kept"])
    with pytest.raises(TlvizError, match="No run"):
        diskcap.set_keep("20240101-000000-000zzzz", True)
    with pytest.raises(TlvizError, match="not a run id"):
        diskcap.set_keep("../etc", True)


def test_the_log_keeps_the_last_entries(capped, monkeypatch):
    monkeypatch.setattr(diskcap, "LOG_ENTRIES", 3)
    for i in range(5):
        _run(capped, f"2024010{i + 1}-000000-000aaaa", days=50 - i, size=600 * KB)
        diskcap.make_room()
    log = json.loads((capped / diskcap.LOG_NAME).read_text())
    assert [e["item_id"] for e in log] == [f"2024010{i}-000000-000aaaa" for i in (3, 4, 5)]


def test_new_job_makes_room_and_records_it_in_job_json(capped, monkeypatch):
    from tlviz.jobs.folder import new_job

    gone = _run(capped, "20240101-000000-000aaaa", days=30, size=300 * KB)
    other = _run(capped, "20240102-000000-000bbbb", days=20, owner=OTHER, size=300 * KB)
    stays = _run(capped, "20240103-000000-000cccc", days=10, size=300 * KB)
    job_id, jdir = new_job("lrfind", {"run_ids": []}, queued=False, state="done")
    job = json.loads((jdir / "job.json").read_text())
    assert [e["item_id"] for e in job["evicted"]] == [gone.name, other.name]
    assert job["evicted"][0]["owner"] == OWNER and job["evicted"][0]["kind"] == "run"
    assert not gone.exists() and not other.exists() and stays.is_dir() and jdir.is_dir()
    assert [r.item_id for r in diskcap.evicted_of_job(job_id)] == [gone.name, other.name]
    text = diskcap.job_removed_text(diskcap.evicted_of_job(job_id), OWNER, diskcap.max_bytes())
    assert text.startswith(f"To stay under the {diskcap.format_bytes(diskcap.max_bytes())} cap (TLVIZ_RUNS_MAX_GB), "
                           "starting this job removed 1 of your finished runs (digits_base.keras (")
    assert "1 finished run of other people" in text and OTHER not in text
    # Under the cap nothing goes and the job says so.
    job_id, jdir = new_job("lrfind", {"run_ids": []}, queued=False, state="done")
    assert json.loads((jdir / "job.json").read_text())["evicted"] == [] and diskcap.evicted_of_job(job_id) == []
    # A bad value stops the job before its folder is made.
    monkeypatch.setenv("TLVIZ_RUNS_MAX_GB", "lots")
    before = set((capped / ".jobs").iterdir())
    with pytest.raises(ConfigError, match="TLVIZ_RUNS_MAX_GB='lots'"):
        new_job("lrfind", {"run_ids": []}, queued=False, state="done")
    assert set((capped / ".jobs").iterdir()) == before


def test_the_sentences():
    assert [diskcap.format_bytes(n) for n in (0, 900, 12 * KB, 340 * 2**20, int(1.24 * 2**30), 20 * 2**30)] == [
        "0 B", "900 B", "12 KB", "340 MB", "1.2 GB", "20 GB"]
    assert diskcap.space_text(int(1.2 * 2**30), 20 * 2**30) == "Runs folder: 1.2 GB of 20 GB"
    assert diskcap.space_text(int(1.2 * 2**30), None) == "Runs folder: 1.2 GB, no cap (TLVIZ_RUNS_MAX_GB)"
    runs = [diskcap.Removed("run", f"run {i} (2024-01-0{i} 12:00)", 10, OWNER) for i in range(1, 8)]
    assert diskcap.runs_removed_text([], 20 * 2**30) == ""
    assert diskcap.runs_removed_text(runs[:2], 20 * 2**30) == (
        "To stay under the 20 GB cap (TLVIZ_RUNS_MAX_GB), tlviz removed 2 of your finished runs: "
        "run 1 (2024-01-01 12:00), run 2 (2024-01-02 12:00). Mark a run **Keep** to keep it.")
    assert "and 2 more" in diskcap.runs_removed_text(runs, None)
    mixed = [runs[0], diskcap.Removed("run", "secret (2024-01-01 00:00)", 10, OTHER),
             diskcap.Removed("result", "stored diagnose result", 10), diskcap.Removed("cache", "x", 10)]
    text = diskcap.job_removed_text(mixed, OWNER, None)
    assert "1 of your finished runs (run 1 (2024-01-01 12:00))" in text and "secret" not in text
    assert "1 finished run of other people, 1 stored analysis result, 1 cached activation file" in text
    assert diskcap.job_removed_text([], OWNER, None) == ""
    assert diskcap.Removed.from_dict(runs[0].to_dict()) == runs[0] and diskcap.Removed.from_dict({"kind": "x"}) is None


def test_page_sidebar_shows_the_space_used_and_the_keep_toggle_marks_the_run(capped, monkeypatch):
    """AppTest: the sidebar says how full the runs folder is; on the Fine-tuning page the run view's toggle sets
    the keep mark, and the runs list tells this workspace which of its runs were removed (and no one else's)."""
    from apptest_helpers import open_page

    monkeypatch.setenv("TLVIZ_RUNS_MAX_GB", "20")
    ws = "c" * 24
    at = open_page("pages/finetune.py", query={"ws": ws})
    assert at.session_state["workspace"] == ws
    captions = [c.value for c in at.sidebar.caption]
    assert any(c.startswith("Runs folder: ") and c.endswith(" of 20 GB") for c in captions), captions
    log = [diskcap.Removed("run", "old one (2024-01-01 10:00)", 1, ws, "20240101-000000-000aaaa", now_iso()),
           diskcap.Removed("run", "theirs (2024-01-01 11:00)", 1, OTHER, "20240101-000000-000bbbb", now_iso())]
    (capped / diskcap.LOG_NAME).write_text(json.dumps([r.to_dict() for r in log]))
    at.run()  # every run of this workspace was removed: "No runs yet" still says why
    info = " ".join(i.value for i in at.info)
    assert "tlviz removed 1 of your finished runs: old one (2024-01-01 10:00)" in info and "No runs yet" in info
    assert "theirs" not in info
    sha = at.session_state["model"].sha256
    rid = "20240105-000000-000aaaa"
    w = RunWriter(capped / rid)
    w.write_config(RunConfig(epochs=1, label="mine"), {"filename": "digits_base.keras", "sha256": sha}, {}, owner=ws)
    w.status("completed")
    w.finish({"final": {"val_accuracy": 0.5}, "elapsed_s": 1.0})
    at.run()
    assert not at.exception, at.exception
    toggle = at.toggle(key=f"ft_keep_{rid}")
    assert toggle.label == "Keep this run (never removed to free disk space)" and not toggle.value
    toggle.set_value(True).run()
    assert not at.exception, at.exception
    assert diskcap.is_kept(rid) and at.toggle(key=f"ft_keep_{rid}").value
    info = " ".join(i.value for i in at.info)
    assert ("To stay under the 20 GB cap (TLVIZ_RUNS_MAX_GB), tlviz removed 1 of your finished runs: "
            "old one (2024-01-01 10:00)") in info and "theirs" not in info
    at.toggle(key=f"ft_keep_{rid}").set_value(False).run()
    assert not diskcap.is_kept(rid)
    monkeypatch.setenv("TLVIZ_RUNS_MAX_GB", "lots")  # misconfigured: the sidebar says what is wrong
    at.run()
    assert not at.exception, at.exception
    assert any("TLVIZ_RUNS_MAX_GB='lots' is not a positive number" in c.value for c in at.sidebar.caption)
    at.button(key="ft_start").click().run()  # ... and Start refuses before writing any run folder
    assert any("TLVIZ_RUNS_MAX_GB='lots' is not a positive number" in e.value for e in at.error)
    assert list(list_runs(owner=ws)["run_id"]) == [rid] and at.session_state["ft_job"] is None


def test_an_analysis_page_says_what_starting_its_job_removed(capped, monkeypatch):
    """AppTest: the Normalization page starts the sample's comparison; making room for it removed another
    person's old run, which the page counts without naming."""
    from apptest_helpers import open_page

    theirs = _run(capped, "20240101-000000-000dddd", days=30, owner=OTHER, size=600 * KB, label="their secret run")
    at = open_page("pages/normalization.py", query={"ws": "d" * 24})
    assert not at.exception, at.exception
    info = " ".join(i.value for i in at.info)
    assert "starting this job removed" in info and "1 finished run of other people" in info, info
    assert "their secret run" not in info and not theirs.exists()
    jobs_started = [j for j in (capped / ".jobs").iterdir() if not j.name.startswith(".")]
    assert len(jobs_started) == 1 and at.session_state["norm_job"] == jobs_started[0].name
    cancel(jobs_started[0].name)
