"""Bounded disk: the runs folder kept under ``TLVIZ_RUNS_MAX_GB`` by removing the oldest finished things first.

The runs folder (`tlviz.finetune.store.runs_dir`) holds run folders, job folders (``.jobs/<job id>/``),
saved inputs (``.jobs/.inputs``), stored analysis results (``.results/``) and cached activations
(``.cache/activations``). With ``TLVIZ_RUNS_MAX_GB`` set, `make_room` (called when a new job is created,
`tlviz.jobs.folder.new_job`) removes, oldest last-modified first, until the folder is under the cap:

- finished runs (not queued or running), never a run marked *keep* (`set_keep`) nor a run of a job that
  still runs;
- stored results (a ``.json`` and its ``.npz`` together);
- finished job folders (never one whose worker is alive);
- cached activation files.

Saved inputs, the queue's files and anything else are never removed here (`tlviz.jobs.folder.tidy` removes
what was unused for a week). When the cap cannot be met because everything left is running or kept, what
may go is removed and the result says by how much the folder is still over (`Removals.short_by`).

Every removal is appended to ``<runs>/.evicted.json`` (the last `LOG_ENTRIES`), so a page can tell a
person which of *their* runs were removed (`evicted_for`); a job records what its creation removed in
its ``job.json`` (``evicted``: `evicted_of_job`).

Public API: `SETTING`, `KEEP_FILE`, `Removed`, `Removals`, `max_bytes()`, `space_used(root)`,
`make_room(root, incoming)`, `job_folder_active(jdir)`, `set_keep(run_id, keep, root, owner)`, `is_kept(run_id, root)`,
`evicted_for(owner, root, since)`, `evicted_of_job(job_id, root)`, and the sentences the pages show:
`format_bytes`, `space_text`, `runs_removed_text`, `job_removed_text`.
"""

from __future__ import annotations

import datetime as _dt
import fcntl
import logging
import os
import shutil
import stat
import time
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path

from tlviz import config
from tlviz.errors import TlvizError
from tlviz.finetune.store import RUN_ID, check_run_id, load_run, run_path, runs_dir
from tlviz.finetune.store.records import KEEP_FILE
from tlviz.jsonfiles import now_iso, read_json, write_json
from tlviz.processes import pid_alive

_log = logging.getLogger(__name__)

#: The setting that caps the runs folder.
SETTING = "TLVIZ_RUNS_MAX_GB"
#: The eviction log, in the runs folder.
LOG_NAME = ".evicted.json"
#: How many removals the log keeps (the newest).
LOG_ENTRIES = 200
#: What can be removed, in words.
KINDS = ("run", "result", "job", "cache")
#: A job folder whose worker has not recorded its process id yet is taken as starting for this long
#: (as `tlviz.jobs.control.poll` does).
STARTING_S = 60.0
#: A run or job folder still missing its status (being written right now) is left alone for this long.
INCOMPLETE_S = 600.0
_LOCK_NAME = ".diskcap.lock"
_JOB_ACTIVE = ("queued", "running")


@dataclass(frozen=True)
class Removed:
    """One thing `make_room` removed.

    Attributes:
        kind: ``"run"``, ``"result"``, ``"job"`` or ``"cache"``.
        label: for people: a run's label (else its model's file name) and date; what a result, job or cache
            file was.
        bytes: how much it held.
        owner: the workspace whose run it was (None for other kinds, and for runs of the CLI).
        item_id: the run id, job id, result name or cache file name.
        when: when it was removed (ISO time).
    """

    kind: str
    label: str
    bytes: int = 0
    owner: str | None = None
    item_id: str = ""
    when: str = ""

    def to_dict(self) -> dict:
        """As plain JSON-ready data (``job.json``, the eviction log)."""
        return asdict(self)

    @classmethod
    def from_dict(cls, d) -> Removed | None:
        """Read one back (None when `d` is not such a dict)."""
        if not isinstance(d, dict) or d.get("kind") not in KINDS:
            return None
        try:
            return cls(kind=d["kind"], label=str(d.get("label") or ""), bytes=int(d.get("bytes") or 0),
                       owner=d.get("owner"), item_id=str(d.get("item_id") or ""), when=str(d.get("when") or ""))
        except (TypeError, ValueError):
            return None


class Removals(list):
    """`make_room`'s answer: a list of `Removed`, plus where the folder stands.

    Attributes:
        cap: the cap in bytes (None: no cap).
        used: the runs folder's size after the removals, in bytes.
        short_by: bytes the folder is still over the cap (with what comes in) because everything left is
            running, kept, or not removable; 0 when the cap is met.
    """

    def __init__(self, items=(), cap: int | None = None, used: int = 0, short_by: int = 0):
        super().__init__(items)
        self.cap = cap
        self.used = used
        self.short_by = short_by

    @property
    def met(self) -> bool:
        """Whether the folder (with what comes in) is under the cap."""
        return self.short_by <= 0


def max_bytes() -> int | None:
    """The cap of the runs folder (``TLVIZ_RUNS_MAX_GB``) in bytes, or None when unset (no cap).

    Raises:
        ConfigError: the value is set but is not a positive number (the message names the variable).
    """
    return config.gigabytes(SETTING)


# -- walking the folder -------------------------------------------------------------------------------

@dataclass
class _File:
    parts: tuple[str, ...]
    key: tuple[int, int]
    size: int
    mtime: float


def _walk(base: Path) -> list[_File]:
    """Every regular file under `base` (links not followed): its path parts, inode, size and time."""
    out: list[_File] = []
    stack = [(base, ())]
    while stack:
        folder, parts = stack.pop()
        try:
            entries = list(os.scandir(folder))
        except OSError:
            continue
        for e in entries:
            try:
                st = e.stat(follow_symlinks=False)
            except OSError:
                continue
            if stat.S_ISDIR(st.st_mode):
                stack.append((Path(e.path), parts + (e.name,)))
            elif stat.S_ISREG(st.st_mode):
                out.append(_File(parts + (e.name,), (st.st_dev, st.st_ino), st.st_size, st.st_mtime))
    return out


def _total(files: list[_File]) -> int:
    """Bytes held, a file hard-linked in two places (a stored result and its job's copy) counted once."""
    seen: set[tuple[int, int]] = set()
    total = 0
    for f in files:
        if f.key not in seen:
            seen.add(f.key)
            total += f.size
    return total


def space_used(root: str | os.PathLike | None = None) -> int:
    """Bytes the whole runs folder holds: runs, job folders, saved inputs, results, caches.

    One `os.scandir` walk (links not followed; a hard-linked file counted once).

    Args:
        root: the runs folder. Defaults to `runs_dir()`.

    Returns:
        The size in bytes.
    """
    return _total(_walk(runs_dir(root)))


@dataclass
class _Item:
    kind: str
    item_id: str
    path: Path
    files: list[_File] = field(default_factory=list)

    @property
    def mtime(self) -> float:
        return max((f.mtime for f in self.files), default=0.0)


def _items(base: Path, files: list[_File]) -> list[_Item]:
    """What may be removed, by kind, each with its files; oldest last-modified first."""
    items: dict[tuple[str, str], _Item] = {}

    def add(kind: str, item_id: str, path: Path, f: _File) -> None:
        items.setdefault((kind, item_id), _Item(kind, item_id, path)).files.append(f)

    for f in files:
        p = f.parts
        if len(p) >= 2 and not p[0].startswith(".") and RUN_ID.match(p[0]):
            add("run", p[0], base / p[0], f)
        elif len(p) >= 3 and p[0] == ".jobs" and not p[1].startswith(".") and RUN_ID.match(p[1]):
            add("job", p[1], base / ".jobs" / p[1], f)
        elif len(p) == 2 and p[0] == ".results" and not p[1].startswith(".") and p[1].endswith((".json", ".npz")):
            stem = p[1].rsplit(".", 1)[0]
            add("result", stem, base / ".results" / stem, f)
        elif len(p) == 3 and p[:2] == (".cache", "activations") and not p[2].startswith("."):
            add("cache", p[2], base / ".cache" / "activations" / p[2], f)
    return sorted(items.values(), key=lambda i: (i.mtime, i.kind, i.item_id))


# -- what may go --------------------------------------------------------------------------------------

def _age(path: Path) -> float:
    try:
        return time.time() - path.stat().st_mtime
    except OSError:
        return float("inf")


def job_folder_active(jdir: Path) -> bool:
    """Whether a job folder belongs to a job still queued or running (or one being created right now)."""
    status = read_json(jdir / "status.json")
    if not isinstance(status, dict):
        return _age(jdir) < INCOMPLETE_S  # being written (or damaged: then old enough to go)
    if status.get("state") not in _JOB_ACTIVE:
        return False
    pid = status.get("pid")
    if pid is None:  # created, its worker's process id not recorded yet
        return _age(jdir / "job.json") < STARTING_S
    return pid_alive(pid)


def _active_jobs(base: Path) -> tuple[set[str], set[str]]:
    """The ids of the job folders still active, and the run ids of those jobs."""
    jobs, runs = set(), set()
    jobs_folder = base / ".jobs"
    for j in jobs_folder.iterdir() if jobs_folder.is_dir() else []:
        if j.name.startswith(".") or not j.is_dir() or not job_folder_active(j):
            continue
        jobs.add(j.name)
        job = read_json(j / "job.json", {})
        ids = job.get("run_ids") if isinstance(job, dict) else None
        runs.update(str(r) for r in ids or [] if isinstance(r, str))
    return jobs, runs


def _run_removal(item: _Item, root, protected: set[str]) -> Removed | None:
    """The `Removed` of a run that may go, or None: active, kept, of an active job, or still being written."""
    if item.item_id in protected or (item.path / KEEP_FILE).exists():
        return None
    if not (item.path / "status.json").exists() or not (item.path / "config.json").exists():
        if _age(item.path) < INCOMPLETE_S:
            return None  # being created (`start_job` writes config.json, then status.json)
    try:
        rec = load_run(item.item_id, root)
    except TlvizError:
        return None
    if rec.active or rec.kept:
        return None
    name = rec.label or rec.model.get("filename") or rec.model.get("name") or rec.run_id
    date = rec.created.replace("T", " ")[:16] if rec.created else rec.run_id[:8]
    return Removed("run", f"{name} ({date})", owner=rec.owner, item_id=rec.run_id)


def _label(item: _Item) -> str:
    if item.kind == "result":
        return f"stored {item.item_id.split('-', 1)[0]} result"
    if item.kind == "job":
        job = read_json(item.path / "job.json", {})
        kind = job.get("kind") if isinstance(job, dict) else None
        return f"{kind or 'old'} job folder {item.item_id}"
    return f"cached activations {item.item_id}"


def _remove(item: _Item) -> None:
    if item.kind in ("run", "job"):
        shutil.rmtree(item.path, ignore_errors=True)
        return
    for f in item.files:
        try:
            item.path.parent.joinpath(f.parts[-1]).unlink()
        except OSError:
            pass


class _Lock:
    """One process at a time makes room in a runs folder (an exclusive `fcntl.flock`)."""

    def __init__(self, base: Path):
        self.path = base / _LOCK_NAME
        self.fd = -1

    def __enter__(self):
        self.fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        fcntl.flock(self.fd, fcntl.LOCK_EX)
        return self

    def __exit__(self, *exc):
        os.close(self.fd)  # releases the lock


def make_room(root: str | os.PathLike | None = None, incoming: int = 0) -> Removals:
    """Keep the runs folder under ``TLVIZ_RUNS_MAX_GB``: when its size plus `incoming` would pass the cap,
    remove the oldest finished things first (runs, stored results, job folders, cached activations, by last
    modification) until it does not.

    Never removed: a queued or running run, a run marked keep (`set_keep`), a run of a job that still runs,
    the folder of a job still queued or running, saved inputs. Each removal is logged (`evicted_for`).

    Args:
        root: the runs folder. Defaults to `runs_dir()`.
        incoming: bytes about to be written. Defaults to `0`.

    Returns:
        The `Removals` (a list of `Removed`, oldest first); empty when there is no cap or room enough. When
        what is left cannot be removed, its ``short_by`` says how far over the cap the folder still is.

    Raises:
        ConfigError: ``TLVIZ_RUNS_MAX_GB`` is set to something that is not a positive number.
    """
    cap = max_bytes()
    base = runs_dir(root)
    if cap is None:
        return Removals(cap=None)
    with _Lock(base):
        files = _walk(base)
        used = _total(files)
        if used + incoming <= cap:
            return Removals(cap=cap, used=used)
        links = Counter(f.key for f in files)
        sizes = {f.key: f.size for f in files}
        active_jobs, protected = _active_jobs(base)
        removed: list[Removed] = []
        for item in _items(base, files):
            if used + incoming <= cap:
                break
            if item.kind == "run":
                entry = _run_removal(item, base, protected)
            elif item.kind == "job":
                entry = None if item.item_id in active_jobs else Removed("job", _label(item), item_id=item.item_id)
            else:
                entry = Removed(item.kind, _label(item), item_id=item.item_id)
            if entry is None:
                continue
            _remove(item)
            held, freed = 0, 0
            for f in {f.key: f for f in item.files}.values():
                held += f.size
                if not os.path.lexists(base.joinpath(*f.parts)):
                    links[f.key] -= sum(1 for g in item.files if g.key == f.key)
                    if links[f.key] <= 0:
                        freed += sizes[f.key]
            used -= freed
            removed.append(Removed(entry.kind, entry.label, held, entry.owner, entry.item_id, now_iso()))
        short_by = max(0, used + incoming - cap)
        if short_by:
            _log.warning("the runs folder %s stays %d bytes over TLVIZ_RUNS_MAX_GB: everything left is running, "
                         "kept or not removable", base, short_by)
        if removed:
            _append_log(base, removed)
    return Removals(removed, cap=cap, used=used, short_by=short_by)


# -- the eviction log ---------------------------------------------------------------------------------

def _append_log(base: Path, removed: list[Removed]) -> None:
    old = read_json(base / LOG_NAME, [])
    entries = (old if isinstance(old, list) else []) + [r.to_dict() for r in removed]
    write_json(base / LOG_NAME, entries[-LOG_ENTRIES:])


def _when(text: str) -> _dt.datetime | None:
    try:
        return _dt.datetime.fromisoformat(text)
    except (TypeError, ValueError):
        return None


def evicted_for(owner: str | None, root: str | os.PathLike | None = None,
                since: _dt.datetime | str | None = None) -> list[Removed]:
    """The runs of `owner` that `make_room` removed (from the eviction log), oldest first.

    Args:
        owner: the workspace (None: the runs of the CLI and scripts).
        root: the runs folder. Defaults to `runs_dir()`.
        since: only those removed at or after this time (a `datetime` or an ISO string). Defaults to all
            the log holds (the last `LOG_ENTRIES` removals).

    Returns:
        The `Removed` entries.
    """
    since_dt = _when(since) if isinstance(since, str) else since
    log = read_json(runs_dir(root) / LOG_NAME, [])
    out = []
    for d in log if isinstance(log, list) else []:
        r = Removed.from_dict(d)
        if r is None or r.kind != "run" or r.owner != owner:
            continue
        when = _when(r.when)
        if since_dt is not None and (when is None or when < since_dt):
            continue
        out.append(r)
    return out


def evicted_of_job(job_id: str, root: str | os.PathLike | None = None) -> list[Removed]:
    """What creating job `job_id` removed to make room (``evicted`` in its ``job.json``); empty when nothing
    was, or the job folder is gone.

    Args:
        job_id: the job.
        root: the runs folder. Defaults to `runs_dir()`.
    """
    job = read_json(runs_dir(root) / ".jobs" / check_run_id(str(job_id)) / "job.json", {})
    entries = job.get("evicted") if isinstance(job, dict) else None
    return [r for r in (Removed.from_dict(d) for d in entries or []) if r is not None]


# -- the keep mark ------------------------------------------------------------------------------------

def set_keep(run_id: str, keep: bool, root: str | os.PathLike | None = None, owner: str | None = None) -> None:
    """Mark a run *keep* (never removed to free disk space), or take the mark off.

    Args:
        run_id: the run.
        keep: True to mark it, False to take the mark off.
        root: the runs folder. Defaults to `runs_dir()`.
        owner: when given, only a run of this workspace may be marked.

    Raises:
        TlvizError: no such run, or it belongs to another workspace.
    """
    rec = load_run(run_id, root, owner)
    path = rec.path / KEEP_FILE
    if keep:
        write_json(path, {"kept": now_iso(), "owner": owner})
    else:
        path.unlink(missing_ok=True)


def is_kept(run_id: str, root: str | os.PathLike | None = None) -> bool:
    """Whether run `run_id` is marked keep (`set_keep`)."""
    return (run_path(run_id, root) / KEEP_FILE).exists()


# -- sentences ----------------------------------------------------------------------------------------

def format_bytes(n: int | float) -> str:
    """A size for people: ``"1.2 GB"``, ``"20 GB"``, ``"340 MB"``, ``"12 KB"``, ``"0 B"`` (units of 1,024)."""
    n = float(n)
    for unit, size in (("GB", 2**30), ("MB", 2**20), ("KB", 2**10)):
        if n >= size:
            v = n / size
            text = f"{v:.1f}" if v < 10 else f"{v:.0f}"
            return f"{text.removesuffix('.0')} {unit}"
    return f"{int(n)} B"


def space_text(used: int, cap: int | None) -> str:
    """``"Runs folder: 1.2 GB of 20 GB"``, or ``"Runs folder: 1.2 GB, no cap (TLVIZ_RUNS_MAX_GB)"``."""
    if cap is None:
        return f"Runs folder: {format_bytes(used)}, no cap ({SETTING})"
    return f"Runs folder: {format_bytes(used)} of {format_bytes(cap)}"


def _cap_words(cap: int | None) -> str:
    return f"the {format_bytes(cap)} cap ({SETTING})" if cap else f"the disk cap ({SETTING})"


def _runs_list(runs: list[Removed], most: int = 5) -> str:
    names = ", ".join(r.label for r in runs[:most])
    return names + (f" and {len(runs) - most} more" if len(runs) > most else "")


def runs_removed_text(removed: list[Removed], cap: int | None) -> str:
    """The sentence telling a person which of their finished runs were removed (``""`` when none).

    Args:
        removed: their removed runs (`evicted_for`).
        cap: the cap in bytes (`max_bytes`), or None.
    """
    if not removed:
        return ""
    return (f"To stay under {_cap_words(cap)}, tlviz removed {len(removed)} of your finished runs: "
            f"{_runs_list(removed)}. Mark a run **Keep** to keep it.")


def job_removed_text(removed: list[Removed], owner: str | None, cap: int | None) -> str:
    """What making room for a new job removed, for the person who started it (``""`` when nothing).

    Their own runs are named; other people's runs are only counted, as are results, job folders and caches.

    Args:
        removed: `evicted_of_job`.
        owner: the person's workspace.
        cap: the cap in bytes (`max_bytes`), or None.
    """
    if not removed:
        return ""
    mine = [r for r in removed if r.kind == "run" and r.owner == owner]
    others = sum(1 for r in removed if r.kind == "run" and r.owner != owner)
    counts = Counter(r.kind for r in removed)
    parts = []
    if mine:
        parts.append(f"{len(mine)} of your finished runs ({_runs_list(mine)})")
    for n, one, many in ((others, "finished run of other people", "finished runs of other people"),
                         (counts["result"], "stored analysis result", "stored analysis results"),
                         (counts["job"], "old job folder", "old job folders"),
                         (counts["cache"], "cached activation file", "cached activation files")):
        if n:
            parts.append(f"{n} {one if n == 1 else many}")
    total = format_bytes(sum(r.bytes for r in removed))
    return f"To stay under {_cap_words(cap)}, starting this job removed {', '.join(parts)} ({total} in all)."
