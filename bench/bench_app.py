"""Issue 10's app targets in a real browser: ``python bench/bench_app.py`` (needs /usr/bin/chromium).

Two measurements, each against a baseline taken in the same run, on the real
app (``streamlit run app.py`` on a free loopback port, a fresh temporary
``TLVIZ_RUNS_DIR``, so nothing is already computed) driven by headless Chromium.

1. **Many users at once.** Before heavy work moved to worker processes, an
   Overview visit took 22 s with 5 Normalization and 2 Diagnose sessions open on
   the sample (2.5 s idle). Target: a light page, *Model & images*, answers within
   3x its idle time under that load. One *visit* is a fresh navigation to the
   page (a new Streamlit session) timed until the last part of the page's script
   has rendered (the caption above the image strip, after the image counts and the
   chart). First `--repeats` visits on the idle server (after one warm-up visit,
   reported apart), then 7 more browser contexts are opened and set up, and
   their heavy pages opened in quick succession:

   - 5 *Normalization* sessions on the sample. The page starts the sample's
     comparison on its own; results are computed once and shared, so these five
     alone would make one job that really runs (the other four workers find the
     stored result when their turn comes). To give each session work of its own,
     each then switches on the *Custom preset* with its own scale (0.00390,
     0.00391, ...): a distinct key, so a distinct comparison that must really
     run (the presets, the resize variants and channel order, plus its custom one).
   - 2 *Diagnose* sessions, whose sample pair is changed in the sidebar on the
     Overview page *before* the page is opened: ``digits_frozen`` on
     ``digits_0_4`` and ``digits_base`` on ``digits_5_9``. Neither pair is
     measured by any other session, so each diagnosis runs in full (including
     its own normalization comparison).

   That is 8 real analyses plus 4 duplicate workers, all in the one queue
   (``TLVIZ_MAX_JOBS``, default half the cores). Overview visits are then timed
   again, from the moment the heavy pages are opened until every job has ended; a
   visit counts as *loaded* when a job was queued or running during at least half
   of it (the job folders under the runs folder, sampled every 0.25 s, say so).
   Prints idle and loaded median / fastest / spread, the ratio of medians and
   PASS/FAIL against 3x, then waits for every job and checks none failed. Each
   loaded visit's line shows where the CPU went meanwhile (server process, worker
   processes and their nice value, Chromium, other processes on the machine), so a
   miss can be told apart: a busy server (work in the server process) or a full
   machine (workers and the browser competing for the cores).

2. **The app with a ~100 MB model.** ``bench/realsize.py``'s ResNet50
   (weights=None, 224x224, ~95 MB ``.keras``; built once under ``--data``, default
   /tmp/tlviz_real) is checked against the documented upload limits
   (``server.maxUploadSize`` in ``.streamlit/config.toml`` and
   ``TLVIZ_MAX_MODEL_MB``, both 500 MB), uploaded through the sidebar's real file
   input (Model source: Upload) and timed until the sidebar names it. Then the
   *Freezing status* page is opened and timed until its table has all 176 rows
   (the grid's ``aria-rowcount``), the baseline for the page switches that follow
   (Overview -> Freezing status, `--switches` times), which should be no slower,
   with the server's CPU time per switch (no heavy work repeated). Unless
   `--no-zip`: the 180-JPEG set (``make_images``) is zipped and uploaded through
   the "Upload .zip" input, *Compare* is pressed on the Normalization page, the
   bench checks that a worker job starts (place in the queue or progress shown)
   and times the Freezing status page while that job runs, against its idle time
   measured just before. The comparison is then cancelled (`--wait-normalize` lets
   it finish and reports its duration).

Options: ``--repeats 5`` (visits per condition), ``--switches 4``, ``--quick``
(3 repeats, 2 switches, no zip), ``--only load|model``, ``--no-zip``,
``--wait-normalize``, ``--data DIR``, ``--timeout S``; for finding out why a
target is missed, ``--env KEY=VALUE`` (server environment, e.g.
``TLVIZ_MAX_JOBS=2`` or ``STREAMLIT_RUNNER_POST_SCRIPT_GC=false``) and
``--py-spy PATH`` (samples the server's threads during the load and prints
where its CPU went). ``--smoke``: a proof that both measurements still run, in
a few minutes: 1 Normalization + 1 Diagnose session, 1 visit per condition, the
ResNet50 built at 64x64 (the same 176 layers and ~90 MB) in a temporary folder,
1 page switch, no zip; exit status 0 unless a step fails (the verdicts mean
little at that size). Every server, worker and browser process started here is
ended before the script exits. The machine should be otherwise idle: the
``other`` CPU column shows when it was not.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import tomllib
import zipfile
from contextlib import ExitStack
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
BENCH = ROOT / "bench"
for _p in (ROOT, ROOT / "tests", BENCH):
    sys.path.insert(0, str(_p))

from bench_memory import rss_mb  # noqa: E402
from browser import CHROMIUM, browser_page, streamlit_server  # noqa: E402
from playwright.sync_api import Error as PlaywrightError  # noqa: E402

TARGET_RATIO = 3.0
OVERVIEW_DONE = "A few images as the model sees them"  # the Overview script's last caption
RESNET_LAYERS = 176  # ResNet50's nested layers + GAP + Dense, as the Freezing table lists them
N_NORMALIZATION, N_DIAGNOSE = 5, 2
DIAGNOSE_PAIRS = [("digits_frozen.keras", "digits_0_4"), ("digits_base.keras", "digits_5_9")]
CLK = os.sysconf("SC_CLK_TCK")
PAGE = os.sysconf("SC_PAGE_SIZE")


class BenchFailure(RuntimeError):
    """A step did not happen in time or showed something unexpected."""


# -- processes and jobs -----------------------------------------------------------------------

class ProcWatch:
    """Samples /proc every `interval` s: CPU seconds per group, the server's descendants (for cleanup).

    Groups: ``server`` (the Streamlit process), ``workers`` (its descendants),
    ``browser`` (this script's other descendants: Playwright's driver and
    Chromium), ``other`` (every other process on the machine). A process's last
    sampled CPU time stays counted after it exits.
    """

    GROUPS = ("server", "workers", "browser", "other")

    def __init__(self, server_pid: int, runs_dir: str | None = None, interval: float = 0.25):
        self.server_pid = server_pid
        self.runs_dir = runs_dir
        self.jobs: list[tuple[float, int, int]] = []  # (time, running, queued or running)
        self.interval = interval
        self.me = os.getpid()
        self._cpu: dict[tuple[int, int], tuple[str, float, str]] = {}  # (pid, start) -> (group, cpu s, name)
        self.descendants: dict[int, int] = {}  # pid -> start time, ever seen under the server
        self.worker_nice: set[int] = set()
        self.peak_workers, self.peak_worker_rss = 0, 0  # most child processes of the server at once, their RSS
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)

    def __enter__(self):
        self.sample()
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join(5)

    def _loop(self):
        while not self._stop.wait(self.interval):
            try:
                self.sample()
                if self.runs_dir:
                    states = job_states(self.runs_dir)
                    with self._lock:
                        self.jobs.append((time.time(), n_state(states, "running"),
                                          n_state(states, "queued", "running")))
            except Exception:  # noqa: BLE001 - a sampling hiccup must not end the bench
                pass

    @property
    def jobs_seen(self) -> bool:
        """Whether any job was ever seen queued or running."""
        with self._lock:
            return any(active for _, _, active in self.jobs)

    def jobs_now(self) -> tuple[int, int]:
        """(running, queued or running) at the last sample."""
        with self._lock:
            return self.jobs[-1][1:] if self.jobs else (0, 0)

    def load_fraction(self, t0: float, t1: float) -> tuple[float, float]:
        """Shares of the job samples between wall-clock times `t0` and `t1` with a job (queued or running, running)."""
        with self._lock:
            inside = [(active, running) for t, running, active in self.jobs if t0 <= t <= t1]
        if not inside:
            return 0.0, 0.0
        return sum(a > 0 for a, _ in inside) / len(inside), sum(r > 0 for _, r in inside) / len(inside)

    @staticmethod
    def _read_all() -> dict[int, tuple[int, float, int, int, str]]:
        procs = {}
        for entry in os.scandir("/proc"):
            if not entry.name.isdigit():
                continue
            try:
                with open(f"/proc/{entry.name}/stat") as f:
                    head, tail = f.read().rsplit(")", 1)
            except (OSError, ValueError):
                continue
            rest = tail.split()
            procs[int(entry.name)] = (int(rest[1]), (int(rest[11]) + int(rest[12])) / CLK, int(rest[19]),
                                      int(rest[16]), head.split("(", 1)[-1])  # ppid, cpu s, start, nice, name
        return procs

    def sample(self) -> None:
        procs = self._read_all()

        def group(pid: int) -> str:
            if pid == self.server_pid:
                return "server"
            seen = 0
            p = procs[pid][0]
            while p > 1 and p in procs and seen < 64:
                if p == self.server_pid:
                    return "workers"
                if p == self.me:
                    return "browser"
                p, seen = procs[p][0], seen + 1
            return "other"

        with self._lock:
            workers, rss = 0, 0
            for pid, (_, cpu, start, nice, name) in procs.items():
                if pid == self.me:
                    continue
                g = group(pid)
                self._cpu[(pid, start)] = (g, cpu, name)
                if g == "workers":
                    self.descendants[pid] = start
                    self.worker_nice.add(nice)
                    workers += 1
                    try:
                        with open(f"/proc/{pid}/statm") as f:
                            rss += int(f.read().split()[1]) * PAGE
                    except (OSError, IndexError, ValueError):
                        pass
            self.peak_workers = max(self.peak_workers, workers)
            self.peak_worker_rss = max(self.peak_worker_rss, rss)

    def totals(self) -> dict[str, float]:
        """CPU seconds used so far per group (sampled now)."""
        self.sample()
        with self._lock:
            out = dict.fromkeys(self.GROUPS, 0.0)
            for g, cpu, _ in self._cpu.values():
                out[g] += cpu
            return out

    def mark(self) -> dict:
        """Every process's CPU seconds now (for `top`)."""
        self.sample()
        with self._lock:
            return {k: v[1] for k, v in self._cpu.items()}

    def top(self, mark: dict, n: int = 6) -> str:
        """The `n` processes that used the most CPU since `mark`, e.g. ``server:streamlit 41.2 s, ...``."""
        self.sample()
        with self._lock:
            used = sorted(((cpu - mark.get(k, 0.0), g, name, k[0]) for k, (g, cpu, name) in self._cpu.items()),
                          reverse=True)[:n]
        return ", ".join(f"{g}:{name}[{pid}] {d:.1f} s" for d, g, name, pid in used if d > 0.05) or "-"

    def leftovers(self) -> dict[int, str]:
        """Processes seen under the server that still run (same pid *and* start time): pid -> command line."""
        procs, out = self._read_all(), {}
        for pid, start in self.descendants.items():
            if pid in procs and procs[pid][2] == start:  # the very process seen, not a reused pid
                try:
                    with open(f"/proc/{pid}/stat") as f:
                        if f.read().rsplit(")", 1)[-1].split()[0] == "Z":
                            continue  # already ended, not yet reaped
                    out[pid] = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()[:160].strip()
                except OSError:
                    pass
        return out

    def kill_leftovers(self, wait_s: float = 5.0) -> dict[int, str]:
        """Give the server's child processes `wait_s` to end, then SIGKILL those left; return them."""
        deadline = time.monotonic() + wait_s
        while self.leftovers() and time.monotonic() < deadline:
            time.sleep(0.25)
        left = self.leftovers()
        for pid in left:
            try:
                os.kill(pid, signal.SIGKILL)
            except OSError:
                pass
        return left


def cpu_note(before: dict, after: dict, wall: float) -> str:
    """CPU use between two `ProcWatch.totals` as a share of one core, e.g. ``server 35% workers 98% ...``."""
    return " ".join(f"{g} {100 * (after[g] - before[g]) / max(wall, 1e-6):3.0f}%" for g in ProcWatch.GROUPS)


def job_states(runs_dir: str) -> dict[str, list[dict]]:
    """Analysis and fine-tuning jobs of the runs folder by state: ``{"running": [job, ...], ...}``."""
    out: dict[str, list[dict]] = {}
    for jdir in (Path(runs_dir) / ".jobs").glob("*"):
        try:
            status = json.loads((jdir / "status.json").read_text())
            job = json.loads((jdir / "job.json").read_text())
        except (OSError, ValueError):
            continue
        state = status.get("state", "?")
        out.setdefault(state, []).append({"id": jdir.name, "kind": job.get("kind"), "owner": job.get("owner"),
                                          "custom": bool((job.get("params") or {}).get("custom")),
                                          "from_store": bool(job.get("from_store") or status.get("from_store")),
                                          "message": status.get("message", ""),
                                          "started": status.get("started_at"), "ended": status.get("ended_at")})
    return out


def n_state(states: dict, *names: str) -> int:
    return sum(len(states.get(n, [])) for n in names)


def describe_states(states: dict) -> str:
    return ", ".join(f"{len(v)} {k}" for k, v in sorted(states.items())) or "no jobs"


# -- statistics and printing ---------------------------------------------------------------------

def summary(times: list[float]) -> str:
    if not times:
        return "no measurements"
    return (f"median {statistics.median(times):6.2f} s, fastest {min(times):6.2f} s, "
            f"spread {min(times):.2f}–{max(times):.2f} s (n={len(times)})")


def say(text: str = "") -> None:
    print(text, flush=True)


# -- the page --------------------------------------------------------------------------------------

def sidebar(page):
    return page.locator('[data-testid="stSidebar"]')


def no_exception(page, where: str) -> None:
    shown = page.locator('[data-testid="stException"]')
    if shown.count():
        raise BenchFailure(f"{where}: the page shows an exception:\n{shown.first.inner_text()[:2000]}")


def evidence(page, where: str) -> str:
    """A screenshot of `page` and the start of its main text, for a failure message."""
    shot = Path(tempfile.gettempdir()) / f"tlviz_bench_app_{''.join(c if c.isalnum() else '_' for c in where)}.png"
    try:
        page.screenshot(path=str(shot))
        text = " ".join(page.locator('[data-testid="stMain"]').first.inner_text(timeout=5000).split())[:400]
    except Exception as exc:  # noqa: BLE001 - best effort
        return f"(no screenshot: {type(exc).__name__})"
    return f"screenshot {shot}; the page reads: {text!r}"


def wait_text(page, text: str, timeout_s: float, where: str, scope=None) -> None:
    try:
        (scope or page).get_by_text(text).first.wait_for(timeout=timeout_s * 1000)
    except Exception as exc:  # noqa: BLE001 - Playwright's TimeoutError, with our context added
        no_exception(page, where)
        raise BenchFailure(f"{where}: {text!r} did not appear within {timeout_s:.0f} s ({type(exc).__name__}); "
                           f"{evidence(page, where)}") from None


def visit_overview(page, url: str, timeout_s: float) -> float:
    """One Overview visit in a new session: seconds until its last caption is rendered."""
    t0 = time.perf_counter()
    page.goto(url + "/", wait_until="commit", timeout=timeout_s * 1000)
    wait_text(page, OVERVIEW_DONE, timeout_s, "Overview visit")
    return time.perf_counter() - t0


def workspace_of(page) -> str:
    """The session's workspace token (``?ws=`` in its address; the jobs it starts carry it as owner)."""
    from urllib.parse import parse_qs, urlparse

    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        ws = parse_qs(urlparse(page.url).query).get("ws", [""])[0]
        if ws:
            return ws
        page.wait_for_timeout(200)
    raise BenchFailure(f"no workspace token in the page address {page.url}")


def nav(page, title: str) -> None:
    sidebar(page).get_by_role("link", name=title).click()


def choose(page, index: int, option: str) -> None:
    """Pick `option` in the sidebar's `index`-th select box."""
    sidebar(page).locator('[data-testid="stSelectbox"]').nth(index).click()
    page.get_by_role("option", name=option, exact=True).click()


def set_custom_preset(page, scale: str, timeout_s: float, where: str) -> None:
    """On the Normalization page: type `scale` into the custom preset and switch it on (checked, retried)."""
    page.get_by_role("heading", name="Normalization").first.wait_for(timeout=timeout_s * 1000)
    box = page.locator(".st-key-norm_custom_scale input")
    if not box.is_visible():
        page.get_by_text("Custom preset (optional)").first.click()
    box.fill(scale, timeout=timeout_s * 1000)
    box.press("Enter")
    switch = page.locator(".st-key-norm_custom_on input")
    deadline = time.monotonic() + timeout_s
    while not switch.is_checked():
        if time.monotonic() > deadline:
            raise BenchFailure(f"{where}: the custom preset could not be switched on within {timeout_s:.0f} s")
        page.locator(".st-key-norm_custom_on label").first.click()
        page.wait_for_timeout(1000)
    if box.input_value() != scale:
        raise BenchFailure(f"{where}: the custom scale reads {box.input_value()!r}, not {scale!r}")


def freezing_table(page, rows: int):
    """The Freezing page's layer table once it lists `rows` layers (its grid counts the header row too)."""
    return page.locator(f'[data-testid="stDataFrame"] table[aria-rowcount="{rows + 1}"]').first


def wait_freezing(page, rows: int, timeout_s: float, where: str) -> None:
    try:
        freezing_table(page, rows).wait_for(state="attached", timeout=timeout_s * 1000)
        page.get_by_text("Preview: unfreeze").first.wait_for(timeout=timeout_s * 1000)
    except Exception as exc:  # noqa: BLE001
        no_exception(page, where)
        counts = page.locator('[data-testid="stDataFrame"] table').evaluate_all(
            "ts => ts.map(t => t.getAttribute('aria-rowcount'))")
        raise BenchFailure(f"{where}: no layer table with {rows} rows within {timeout_s:.0f} s (tables' "
                           f"aria-rowcount: {counts}; {type(exc).__name__})") from None


def job_panel_or_result(page, done_text: str, timeout_s: float, where: str) -> str:
    """Wait until the page shows its job (queue place, progress, Cancel) or its result; say which."""
    panel = page.get_by_role("button", name="Cancel")
    done = page.get_by_text(done_text).first
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if panel.count() and panel.first.is_visible():
            queued = page.get_by_text("Waiting for a free worker").count() > 0
            return "queued" if queued else "running"
        if done.count():
            return "result"
        page.wait_for_timeout(200)
    no_exception(page, where)
    raise BenchFailure(f"{where}: neither a job panel (Cancel) nor {done_text!r} appeared within {timeout_s:.0f} s")


# -- target 1: many users at once ------------------------------------------------------------------

class Probe(threading.Thread):
    """The measuring visitor: Overview visits from its own browser, in its own thread (own Playwright).

    Playwright's sync API is bound to its thread, so the probe's visits can go
    on while the main thread drives the seven loaded sessions. It makes one
    cold visit, `repeats` idle visits, then waits for `load_on` and visits
    again until `repeats` visits were *loaded* (a job queued or running during at
    least half of the visit, from `ProcWatch`'s job samples) or no job is left.
    """

    def __init__(self, url: str, watch: ProcWatch, args):
        super().__init__(daemon=True, name="probe")
        self.url, self.watch, self.args = url, watch, args
        self.idle_done, self.load_on, self.finished = threading.Event(), threading.Event(), threading.Event()
        self.stop = threading.Event()
        self.cold, self.idle, self.loaded, self.skipped = None, [], [], 0
        self.error: BaseException | None = None

    def log(self, text: str) -> None:
        say(text)

    def run(self) -> None:
        try:
            with browser_page(1400, 1000) as page:
                self._run(page)
        except BaseException as exc:  # noqa: BLE001 - handed to the main thread
            self.error = exc
        finally:
            self.idle_done.set()
            self.finished.set()

    def _visit(self, page) -> tuple[float, str, float]:
        c0, t0, w0 = self.watch.totals(), time.perf_counter(), time.time()
        dt = visit_overview(page, self.url, self.args.timeout)
        note = cpu_note(c0, self.watch.totals(), time.perf_counter() - t0)
        return dt, note, self.watch.load_fraction(w0, time.time())

    def _run(self, page) -> None:
        self.cold = visit_overview(page, self.url, self.args.timeout)
        self.log(f"first visit (cold server: loads the sample model and images): {self.cold:.2f} s")
        for i in range(self.args.repeats):
            dt, note, _ = self._visit(page)
            self.idle.append(dt)
            self.log(f"  idle visit {i + 1}: {dt:6.2f} s   cpu: {note}")
            page.wait_for_timeout(300)
        self.log(f"idle:   {summary(self.idle)}")
        self.idle_done.set()
        if not self.load_on.wait(self.args.timeout * 5) or self.stop.is_set():
            return
        deadline = time.monotonic() + self.args.timeout * 6
        while len(self.loaded) < self.args.repeats and time.monotonic() < deadline and not self.stop.is_set():
            if self.watch.jobs_now()[1] == 0 and self.watch.jobs_seen:
                break
            dt, note, (active, running) = self._visit(page)
            under = active >= 0.5
            self.log(f"  visit under load: {dt:6.2f} s   jobs queued or running {active:4.0%} of it (running "
                     f"{running:4.0%})   cpu: {note}" + ("" if under else "   (not counted: mostly no job)"))
            if under:
                self.loaded.append(dt)
            else:
                self.skipped += 1
            page.wait_for_timeout(300)


def bench_load(args) -> bool:
    runs_dir = tempfile.mkdtemp(prefix="tlviz_bench_app_load_")
    from tlviz.jobs.queue import max_jobs

    say(f"== 1. Many users at once: Overview visits idle vs with {N_NORMALIZATION} Normalization + "
        f"{N_DIAGNOSE} Diagnose sessions working ==")
    say(f"runs folder {runs_dir} (fresh); TLVIZ_MAX_JOBS = {max_jobs()}; {os.cpu_count()} CPU cores")
    with ExitStack() as stack:
        url = stack.enter_context(streamlit_server(env={**args.server_env, "TLVIZ_RUNS_DIR": runs_dir},
                                                     timeout=args.timeout))
        watch = ProcWatch(url.pid, runs_dir)
        stack.callback(lambda: _cleanup(watch, "load"))
        stack.enter_context(watch)
        probe = Probe(url, watch, args)
        probe.start()
        stack.callback(lambda: (probe.stop.set(), probe.load_on.set(), probe.join(args.timeout * 2)))
        probe.idle_done.wait()
        if probe.error:
            raise probe.error
        browser = stack.enter_context(browser_page(1400, 1000)).context.browser

        # Set up the seven sessions (no job starts on the Overview page).
        say(f"opening {N_NORMALIZATION + N_DIAGNOSE} sessions in their own browser contexts…")
        sessions = []
        for i in range(N_NORMALIZATION + N_DIAGNOSE):
            ctx = browser.new_context(viewport={"width": 1400, "height": 1000})
            page = ctx.new_page()
            page.goto(url + "/", timeout=args.timeout * 1000)
            wait_text(page, OVERVIEW_DONE, args.timeout, f"session {i + 1}: Overview")
            kind = "Normalization" if i < N_NORMALIZATION else "Diagnose"
            if kind == "Diagnose":
                model, images = DIAGNOSE_PAIRS[i - N_NORMALIZATION]
                choose(page, 0, model)
                wait_text(page, f"File: {model}", args.timeout, f"session {i + 1}: Overview after {model}")
                choose(page, 1, images)
                wait_text(page, f"{images} · class order", args.timeout, f"session {i + 1}: Overview after {images}")
                wait_text(page, OVERVIEW_DONE, args.timeout, f"session {i + 1}: Overview after {images}")
            sessions.append((kind, page))
        owners = [workspace_of(page) for _, page in sessions]

        # Open the heavy pages one right after the other (the probe starts visiting), then give each
        # Normalization session its own custom preset.
        spy = start_py_spy(args, url.pid)
        t_load0, c_load0, mark = time.perf_counter(), watch.totals(), watch.mark()
        for kind, page in sessions:
            nav(page, kind)
        probe.load_on.set()
        for i, (kind, page) in enumerate(sessions[:N_NORMALIZATION]):
            set_custom_preset(page, f"{0.0039 + i * 0.00001:.5f}", args.timeout, f"session {i + 1}")
        # Every session's own job exists (the job folders name their workspace and parameters).
        deadline = time.monotonic() + args.timeout * 3
        while True:
            jobs = [j for js in job_states(runs_dir).values() for j in js]
            custom = {j["owner"] for j in jobs if j["kind"] == "normalize" and j["custom"]}
            diag = {j["owner"] for j in jobs if j["kind"] == "diagnose"}
            missing = [i + 1 for i, o in enumerate(owners) if o not in (custom if i < N_NORMALIZATION else diag)]
            if not missing:
                break
            if time.monotonic() > deadline:
                shots = []
                for i in missing:
                    shots.append(str(Path(tempfile.gettempdir()) / f"tlviz_bench_app_session{i}.png"))
                    sessions[i - 1][1].screenshot(path=shots[-1])
                raise BenchFailure(f"sessions {missing} started no job of their own within {args.timeout * 3:.0f} s "
                                   f"(screenshots: {', '.join(shots)})")
            time.sleep(0.25)
        say(f"(all {len(sessions)} sessions had started their own jobs {time.perf_counter() - t_load0:.1f} s after "
            f"the heavy pages were opened; jobs: {describe_states(job_states(runs_dir))})")

        # Let every job finish and the probe end, then check the outcomes.
        deadline = time.monotonic() + args.timeout * 6
        while n_state(job_states(runs_dir), "queued", "running") and time.monotonic() < deadline:
            time.sleep(1)
        t_load = time.perf_counter() - t_load0
        say(f"  CPU while the jobs ran ({t_load:.0f} s): {cpu_note(c_load0, watch.totals(), t_load)} (100% = one core)")
        say(f"  busiest processes meanwhile: {watch.top(mark)}")
        stop_py_spy(spy)
        probe.finished.wait(args.timeout * 2)
        if probe.error:
            raise probe.error
        loaded = probe.loaded
        say(f"loaded: {summary(loaded)}" + (f"; {probe.skipped} visits not counted" if probe.skipped else ""))
        if len(loaded) < args.repeats:
            say(f"  note: the jobs finished before {args.repeats} loaded visits were made")

        states = job_states(runs_dir)
        real = [j for js in states.values() for j in js if j["started"] and not j["from_store"]]
        spans = [j["ended"] - j["started"] for j in real if j["ended"]]
        say(f"jobs at the end: {describe_states(states)}; the server's child processes: at most "
            f"{watch.peak_workers} at once holding {watch.peak_worker_rss / 2**30:.1f} GB resident together, "
            f"niceness seen {sorted(watch.worker_nice) or '-'}")
        if spans:
            say(f"  jobs that held a worker slot: {len(spans)}, each {min(spans):.1f}–{max(spans):.1f} s "
                "(duplicates that found the stored result included)")
        for j in states.get("failed", []):
            say(f"  FAILED job {j['id']} ({j['kind']}): {j['message'][:300]}")
        for i, (kind, page) in enumerate(sessions):
            done = "Best setting" if kind == "Normalization" else "Checks skipped"
            wait_text(page, done, args.timeout, f"session {i + 1} ({kind}) at the end")
            no_exception(page, f"session {i + 1} ({kind})")
        say(f"every session shows its result; {len(real)} jobs held a worker slot")
        say(f"server RSS at the end: {rss_mb(url.pid):.0f} MB")

        idle = probe.idle
        if not idle or not loaded:
            say("RESULT 1: FAIL (not enough measurements)")
            return False
        ratio = statistics.median(loaded) / statistics.median(idle)
        ok = ratio <= TARGET_RATIO and not states.get("failed")
        say(f"RESULT 1: loaded/idle median ratio {ratio:.2f}x (fastest {min(loaded) / min(idle):.2f}x), "
            f"target <= {TARGET_RATIO:.0f}x: {'PASS' if ok else 'FAIL'}")
        return ok


def start_py_spy(args, pid: int):
    """With ``--py-spy``: sample the server process's threads (on CPU only) until `stop_py_spy`."""
    if not args.py_spy:
        return None
    out = Path(tempfile.mkdtemp(prefix="tlviz_bench_app_spy_")) / "server.txt"
    proc = subprocess.Popen([args.py_spy, "record", "-p", str(pid), "-r", "100", "-f", "raw", "--threads",
                             "-o", str(out), "--nonblocking"], stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
    return proc, out


def stop_py_spy(spy) -> None:
    """Stop the recording and print where the server's CPU went: per thread, and the busiest project frames."""
    if spy is None:
        return
    proc, out = spy
    proc.send_signal(signal.SIGINT)
    try:
        proc.wait(30)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
    if not out.exists():
        say("  py-spy wrote nothing (is ptrace allowed?)")
        return
    threads, frames, leaves, total = {}, {}, {}, 0
    for line in out.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if not count.isdigit():
            continue
        n, parts = int(count), stack.split(";")
        total += n
        threads[parts[0]] = threads.get(parts[0], 0) + n
        leaves[parts[-1]] = leaves.get(parts[-1], 0) + n
        for f in set(parts[1:]):
            if any(k in f for k in ("/work/main/", "ui/", "pages/", "tlviz/", "app.py")):
                frames[f] = frames.get(f, 0) + n
    top = lambda d, k: "; ".join(f"{v / max(total, 1):.0%} {f}" for f, v in sorted(d.items(), key=lambda x: -x[1])[:k])
    say(f"  py-spy ({out}, {total} samples on CPU): threads: {top(threads, 5)}")
    say(f"    project frames (inclusive): {top(frames, 10)}")
    say(f"    leaf frames: {top(leaves, 10)}")


def _cleanup(watch: ProcWatch, part: str) -> None:
    # Runs after the server was stopped (ExitStack unwinds in reverse): its workers normally end with it.
    killed = watch.kill_leftovers()
    if killed:
        say(f"({part}: {len(killed)} of the server's child processes were still running 5 s after it stopped; "
            "ended them: " + "; ".join(f"{pid} {cmd}" for pid, cmd in killed.items()) + ")")


# -- target 2: a ~100 MB model ----------------------------------------------------------------

def real_inputs(data: Path, size: int = 224, n_images: int = 180) -> tuple[Path, Path]:
    model = data / ("resnet50.keras" if size == 224 else f"resnet50_{size}.keras")
    images = data / f"images_{n_images}"
    if not model.exists() or not (images / ".complete").exists():
        say(f"building {model} and {images} (once)…")
        code = ("import sys; from realsize import build_model, make_images; "
                f"build_model('ResNet50', {str(model)!r}, size={size}); make_images({str(images)!r}, {n_images})")
        subprocess.run([sys.executable, "-c", code], cwd=BENCH, check=True,
                       env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"})
    return model, images


def zip_folder(folder: Path, out: Path) -> Path:
    with zipfile.ZipFile(out, "w", zipfile.ZIP_STORED) as zf:
        for f in sorted(folder.rglob("*.jpg")):
            zf.write(f, f"{folder.name}/{f.relative_to(folder)}")
    return out


def bench_model(args) -> bool:
    from tlviz.models import max_model_bytes

    model_path, images_path = real_inputs(Path(args.data), args.size, 12 if args.smoke else 180)
    size_mb = model_path.stat().st_size / 2**20
    upload_mb = tomllib.loads((ROOT / ".streamlit" / "config.toml").read_text())["server"]["maxUploadSize"]
    model_mb = max_model_bytes() / 2**20
    within = size_mb < min(upload_mb, model_mb)
    say(f"\n== 2. The app with a {size_mb:.0f} MB model ({model_path.name}) ==")
    say(f"limits: server.maxUploadSize {upload_mb} MB, TLVIZ_MAX_MODEL_MB {model_mb:.0f} MB -> "
        f"{'within' if within else 'OVER'} the limits")
    ok = within
    runs_dir = tempfile.mkdtemp(prefix="tlviz_bench_app_model_")
    tmp = Path(tempfile.mkdtemp(prefix="tlviz_bench_app_zip_"))
    with ExitStack() as stack:
        url = stack.enter_context(streamlit_server(env={**args.server_env, "TLVIZ_RUNS_DIR": runs_dir},
                                                     timeout=args.timeout))
        watch = ProcWatch(url.pid, runs_dir)
        stack.callback(lambda: _cleanup(watch, "model"))
        stack.enter_context(watch)
        page = stack.enter_context(browser_page(1400, 1000))

        page.goto(url + "/", timeout=args.timeout * 1000)
        wait_text(page, OVERVIEW_DONE, args.timeout, "Overview")
        sidebar(page).get_by_text("Upload", exact=True).first.click()
        label = f"up to {min(int(upload_mb), int(model_mb))} MB"
        wait_text(page, label, args.timeout, "the model uploader's label", scope=sidebar(page))
        file_input = sidebar(page).locator('input[type="file"]').first
        file_input.wait_for(state="attached", timeout=args.timeout * 1000)
        rss0, c0, t0 = rss_mb(url.pid), watch.totals(), time.perf_counter()
        file_input.set_input_files(str(model_path))
        wait_text(page, "resnet50_tl", args.timeout * 3, "sidebar after the upload", scope=sidebar(page))
        t_upload = time.perf_counter() - t0
        note = cpu_note(c0, watch.totals(), t_upload)
        say(f"upload until the sidebar names resnet50_tl: {t_upload:.2f} s (the sample images re-decoded at "
            f"{args.size}x{args.size} included)   cpu: {note}; server RSS {rss0:.0f} -> {rss_mb(url.pid):.0f} MB")
        no_exception(page, "after the upload")

        c0, t0 = watch.totals(), time.perf_counter()
        nav(page, "Freezing status")
        wait_freezing(page, RESNET_LAYERS, args.timeout, "Freezing status (first)")
        t_first = time.perf_counter() - t0
        say(f"Freezing status, first open, until the {RESNET_LAYERS}-row table is rendered: {t_first:.2f} s   "
            f"server CPU {watch.totals()['server'] - c0['server']:.2f} s")
        switches, overview_times, server_cpu = [], [], []
        for i in range(args.switches):
            t0 = time.perf_counter()
            nav(page, "Model & images")
            wait_text(page, OVERVIEW_DONE, args.timeout, f"switch {i + 1}: Overview")
            overview_times.append(time.perf_counter() - t0)
            c0, t0 = watch.totals(), time.perf_counter()
            nav(page, "Freezing status")
            wait_freezing(page, RESNET_LAYERS, args.timeout, f"switch {i + 1}: Freezing status")
            switches.append(time.perf_counter() - t0)
            server_cpu.append(watch.totals()["server"] - c0["server"])
            say(f"  switch {i + 1}: Overview {overview_times[-1]:5.2f} s, Freezing status {switches[-1]:5.2f} s "
                f"(server CPU {server_cpu[-1]:.2f} s)")
        no_exception(page, "Freezing status")
        say(f"Freezing status after a page switch: {summary(switches)}; first open {t_first:.2f} s "
            f"-> ratio of medians {statistics.median(switches) / t_first:.2f}x")
        say(f"Overview after a page switch: {summary(overview_times)}")
        if statistics.median(switches) > t_first * 1.5:
            say("  FAIL: switching back to Freezing status is slower than opening it first")
            ok = False

        if not args.no_zip:
            ok &= _zip_and_normalize(args, page, url, watch, runs_dir, images_path, tmp)
        say(f"server RSS at the end: {rss_mb(url.pid):.0f} MB")
    say(f"RESULT 2: {'PASS' if ok else 'FAIL'} (within the upload limits, pages render, reruns repeat no heavy work"
        + ("" if args.no_zip else ", a comparison runs in a worker while the pages stay usable") + ")")
    return ok


def _zip_and_normalize(args, page, url, watch, runs_dir, images_path, tmp) -> bool:
    zip_path = zip_folder(images_path, tmp / "images_180.zip")
    say(f"image set: {zip_path.name}, {zip_path.stat().st_size / 2**20:.1f} MB")
    sidebar(page).get_by_text("Upload .zip", exact=True).click()
    zip_input = sidebar(page).locator('input[type="file"]').nth(1)  # the model's is the first
    zip_input.wait_for(state="attached", timeout=args.timeout * 1000)
    t0 = time.perf_counter()
    zip_input.set_input_files(str(zip_path))
    wait_text(page, "180 images", args.timeout * 2, "sidebar after the zip upload", scope=sidebar(page))
    say(f"zip upload until the sidebar shows 180 images: {time.perf_counter() - t0:.2f} s")

    idle = []
    for _ in range(max(2, args.repeats // 2)):
        nav(page, "Model & images")
        wait_text(page, OVERVIEW_DONE, args.timeout, "Overview")
        t0 = time.perf_counter()
        nav(page, "Freezing status")
        wait_freezing(page, RESNET_LAYERS, args.timeout, "Freezing status (no job)")
        idle.append(time.perf_counter() - t0)

    nav(page, "Normalization")
    page.get_by_role("button", name="Compare").wait_for(timeout=args.timeout * 1000)
    t0 = time.perf_counter()
    page.get_by_role("button", name="Compare").click()
    shown = job_panel_or_result(page, "Best setting", args.timeout, "Normalization after Compare")
    say(f"Compare pressed: the page shows the job ({shown}) after {time.perf_counter() - t0:.2f} s; "
        f"jobs: {describe_states(job_states(runs_dir))}")
    t_job0 = t0
    ok = shown in ("queued", "running")
    deadline = time.monotonic() + args.timeout * 2
    while n_state(job_states(runs_dir), "running") == 0 and time.monotonic() < deadline:
        time.sleep(0.5)
    page.wait_for_timeout(3000)
    progress = page.locator('[data-testid="stProgress"]').first
    say(f"  progress shown: {progress.inner_text().strip()[:120] if progress.count() else '(none)'}")

    busy = []
    for i in range(max(2, args.repeats // 2)):
        nav(page, "Model & images")
        wait_text(page, OVERVIEW_DONE, args.timeout, "Overview while the comparison runs")
        before = n_state(job_states(runs_dir), "running")
        c0, t0 = watch.totals(), time.perf_counter()
        nav(page, "Freezing status")
        wait_freezing(page, RESNET_LAYERS, args.timeout, "Freezing status while the comparison runs")
        dt = time.perf_counter() - t0
        running = before and n_state(job_states(runs_dir), "running")
        say(f"  Freezing status while the comparison runs: {dt:5.2f} s   cpu: "
            f"{cpu_note(c0, watch.totals(), dt)}" + ("" if running else "   (job not running: not counted)"))
        if running:
            busy.append(dt)
    say(f"Freezing status, no job running: {summary(idle)}")
    say(f"Freezing status, comparison running: {summary(busy)}")
    if idle and busy:
        ratio = statistics.median(busy) / statistics.median(idle)
        say(f"  ratio of medians {ratio:.2f}x (target <= {TARGET_RATIO:.0f}x): "
            f"{'PASS' if ratio <= TARGET_RATIO else 'FAIL'}")
        ok &= ratio <= TARGET_RATIO
    else:
        say("  FAIL: the comparison was not running while the page was timed")
        ok = False

    nav(page, "Normalization")
    if args.wait_normalize:
        wait_text(page, "Best setting", args.timeout * 20, "Normalization result")
        say(f"comparison on 180 images finished {time.perf_counter() - t_job0:.0f} s after Compare; "
            f"jobs: {describe_states(job_states(runs_dir))}")
    else:
        cancel = page.get_by_role("button", name="Cancel")
        cancel.wait_for(timeout=args.timeout * 1000)
        progress = page.locator('[data-testid="stProgress"]').first
        text = progress.inner_text().strip()[:120] if progress.count() else "?"
        cancel.click()
        wait_text(page, "The analysis was cancelled", args.timeout, "Normalization after Cancel")
        say(f"cancelled {time.perf_counter() - t_job0:.0f} s after Compare at: {text}; "
            f"jobs: {describe_states(job_states(runs_dir))}")
    no_exception(page, "Normalization")
    return ok


# -- main ------------------------------------------------------------------------------------------

def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter,
                                     epilog="\n\n".join(__doc__.split("\n\n")[1:]))
    parser.add_argument("--repeats", type=int, default=5, help="timed visits per condition (default 5)")
    parser.add_argument("--switches", type=int, default=4, help="page switches back to Freezing status (default 4)")
    parser.add_argument("--quick", action="store_true", help="3 repeats, 2 switches, no zip upload")
    parser.add_argument("--only", choices=["load", "model"], help="run one target only")
    parser.add_argument("--no-zip", action="store_true", help="skip the image-zip upload and the comparison")
    parser.add_argument("--wait-normalize", action="store_true",
                        help="let the ResNet50 comparison finish instead of cancelling it")
    parser.add_argument("--data", default=str(Path(tempfile.gettempdir()) / "tlviz_real"),
                        help="folder for resnet50.keras and images_180 (built there if missing)")
    parser.add_argument("--env", action="append", default=[], metavar="KEY=VALUE",
                        help="extra environment for the server, for experiments (e.g. TLVIZ_MAX_JOBS=2, "
                             "STREAMLIT_RUNNER_POST_SCRIPT_GC=false); repeatable")
    parser.add_argument("--py-spy", metavar="PATH", help="py-spy binary: profile the server during the loaded visits")
    parser.add_argument("--timeout", type=float, default=120, help="seconds for one step (default 120)")
    parser.add_argument("--smoke", action="store_true",
                        help="1 Normalization + 1 Diagnose session, 1 visit each, ResNet50 at 64x64 in a temporary "
                             "folder, 1 switch, no zip; exit status 0 unless a step fails")
    args = parser.parse_args()
    args.size = 224
    if args.smoke:
        global N_NORMALIZATION, N_DIAGNOSE
        N_NORMALIZATION, N_DIAGNOSE = 1, 1
        args.repeats, args.switches, args.no_zip, args.size = 1, 1, True, 64
        args.data = tempfile.mkdtemp(prefix="tlviz_bench_app_smoke_")
    if args.quick:
        args.repeats, args.switches, args.no_zip = min(args.repeats, 3), min(args.switches, 2), True
    if args.repeats < 1 or args.switches < 1:
        parser.error("--repeats and --switches must be at least 1")
    if any("=" not in e for e in args.env):
        parser.error("--env takes KEY=VALUE")
    args.server_env = dict(e.split("=", 1) for e in args.env)
    if args.server_env:
        say(f"server environment added: {args.server_env}")
    if not Path(CHROMIUM).exists():
        parser.error(f"{CHROMIUM} not found (apt-get install chromium)")
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    results = {}
    try:
        if args.only in (None, "load"):
            results["1. many users at once"] = bench_load(args)
        if args.only in (None, "model"):
            results["2. ~100 MB model"] = bench_model(args)
    except BenchFailure as exc:
        say(f"\nFAILED: {exc}")
        return 2
    except PlaywrightError as exc:
        say(f"\nFAILED: the browser step did not complete: {str(exc)[:2000]}")
        return 2
    say("\n" + "\n".join(f"{name}: {'PASS' if ok else 'FAIL'}" for name, ok in results.items()))
    if args.smoke:
        import shutil

        shutil.rmtree(args.data, ignore_errors=True)
        return 0
    return 0 if all(results.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
