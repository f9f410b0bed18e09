"""Ten signed-in sessions (issue 25 item 7): ``python bench/bench_team.py`` (needs /usr/bin/chromium).

The measurement the README's "Running tlviz for a team" section quotes, on the real app with sign-in on:

1. A real OpenID Connect provider (``python -m oidc_provider_mock``) on a free loopback port, and the app
   (``streamlit run app.py``) with an ``[auth]`` section in its own secrets file pointing at it,
   ``TLVIZ_ALLOWED_USERS=@team.example`` and a fresh temporary ``TLVIZ_RUNS_DIR``.
2. `--sessions` (default 10) browser contexts in headless Chromium, each with its own cookies, sign in
   ``person1@team.example``, ``person2@team.example``, ... through the provider's own form.
3. **Idle baseline.** Session 1 (the observer) switches pages through the sidebar, *Freezing status* then
   *Model & images*, `--repeats` times (default 8), every session open and idle. One switch is timed from the
   click until the new page has rendered fully (Freezing status: its layer table and the "Preview: unfreeze"
   section; Model & images: the caption above its image strip) *and* Streamlit's running indicator is gone.
4. **Load.** Sessions 2..N each start a fine-tuning run of their own on the *Fine-tuning runs* page
   (``--epochs``, default 5; head only, the sample model and images), so N-1 jobs are queued or running in
   the one queue (``TLVIZ_MAX_JOBS``), and each of those pages polls its job every second. The observer's
   switches are then timed again; a switch counts as *loaded* only when the job folders
   (``<runs>/.jobs/*/status.json``) show a job queued or running both when it starts and when it ends.
5. Prints idle and loaded median / fastest / spread, the ratio of medians and PASS/FAIL against the
   issue's target (loaded within 3x idle), then memory and CPU: the server process's RSS before any session,
   after the first sign-in and after all N (per session), the largest worker process (one job) and the most
   the workers held at once, the server's CPU seconds per page switch, and a sizing line.

Every job is waited for (and cancelled after `--timeout` x 6 s); the server, its workers, the provider and
the browser are stopped at the end, also when a step fails.

Options: ``--sessions 10``, ``--repeats 8``, ``--epochs 5``, ``--timeout 120`` (seconds for one step).
``--smoke``: 2 sessions, 1 repeat, 1 epoch: the same code path and result lines (the figures mean little).
The machine should be otherwise idle.
"""

from __future__ import annotations

import argparse
import math
import os
import statistics
import sys
import tempfile
import time
from contextlib import ExitStack
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
BENCH = ROOT / "bench"
for _p in (ROOT, ROOT / "tests", BENCH):
    sys.path.insert(0, str(_p))

from bench_app import (
    OVERVIEW_DONE,
    TARGET_RATIO,
    BenchFailure,
    ProcWatch,
    cpu_note,
    describe_states,
    job_panel_or_result,
    job_states,
    n_state,
    nav,
    no_exception,
    say,
    summary,
    wait_text,
)
from bench_memory import rss_mb
from browser import CHROMIUM, CHROMIUM_ARGS, oidc_provider, sign_in, streamlit_server, team_secrets
from playwright.sync_api import Error as PlaywrightError

DOMAIN = "team.example"
PAGES = ("Freezing status", "Model & images")
RUNNING = '[data-testid="stStatusWidgetRunningIcon"]'
PAGE_SIZE = os.sysconf("SC_PAGE_SIZE")


class TeamWatch(ProcWatch):
    """`ProcWatch` that also keeps the largest resident memory of any one of the server's child processes."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.peak_one, self.peak_one_cmd = 0, ""
        self.most_at_once: list[int] = []  # the workers' RSS when most of them ran at once, largest first

    def sample(self) -> None:
        super().sample()
        now = []
        for pid in list(self.descendants):
            try:
                with open(f"/proc/{pid}/statm") as f:
                    rss = int(f.read().split()[1]) * PAGE_SIZE
            except (OSError, IndexError, ValueError):
                continue
            now.append(rss)
            if rss > self.peak_one:
                try:
                    cmd = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()[:120].strip()
                except OSError:
                    cmd = "?"
                self.peak_one, self.peak_one_cmd = rss, cmd
        if (len(now), sum(now)) > (len(self.most_at_once), sum(self.most_at_once)):
            self.most_at_once = sorted(now, reverse=True)

    def queued_mb(self) -> float:
        """A waiting job's worker process (MB): the median of the others when most workers ran at once."""
        rest = self.most_at_once[1:]
        return statistics.median(rest) / 2**20 if rest else float("nan")


# -- the provider and the app ---------------------------------------------------------------------

# -- the page ---------------------------------------------------------------------------------------

def wait_settled(page, timeout_s: float) -> None:
    """Until Streamlit's running indicator is gone (the script run, and any fragment run, has ended)."""
    page.wait_for_function(f"() => !document.querySelector('{RUNNING}')", timeout=timeout_s * 1000, polling=50)


def wait_page(page, title: str, timeout_s: float) -> None:
    """Until `title`'s page has rendered fully and nothing runs any more."""
    if title == "Freezing status":
        page.get_by_role("heading", name="Freezing status").first.wait_for(timeout=timeout_s * 1000)
        wait_text(page, "Preview: unfreeze", timeout_s, "Freezing status")
        page.locator('[data-testid="stDataFrame"]').first.wait_for(timeout=timeout_s * 1000)
    else:
        wait_text(page, OVERVIEW_DONE, timeout_s, title)
    wait_settled(page, timeout_s)


def switch(page, title: str, watch: ProcWatch, timeout_s: float) -> tuple[float, float, str]:
    """One page switch through the sidebar: (seconds, server CPU seconds, CPU note)."""
    c0, t0 = watch.totals(), time.perf_counter()
    nav(page, title)
    wait_page(page, title, timeout_s)
    dt = time.perf_counter() - t0
    c1 = watch.totals()
    return dt, c1["server"] - c0["server"], cpu_note(c0, c1, dt)


def start_run(page, epochs: int, timeout_s: float, where: str) -> str:
    """On a session's page: open Fine-tuning runs, set Epochs, press Start run; 'queued' or 'running'."""
    nav(page, "Fine-tuning runs")
    page.get_by_role("heading", name="Fine-tuning runs").first.wait_for(timeout=timeout_s * 1000)
    box = page.get_by_label("Epochs", exact=True)
    box.fill(str(epochs), timeout=timeout_s * 1000)
    box.press("Enter")
    wait_settled(page, timeout_s)
    if box.input_value() != str(epochs):
        raise BenchFailure(f"{where}: Epochs reads {box.input_value()!r}, not {epochs}")
    page.get_by_role("button", name="Start run").click(timeout=timeout_s * 1000)
    return job_panel_or_result(page, "Download the fine-tuned model", timeout_s, where)


# -- the measurement --------------------------------------------------------------------------------

def active(runs_dir: str) -> int:
    return n_state(job_states(runs_dir), "queued", "running")


def bench(args) -> bool:
    from playwright.sync_api import sync_playwright

    from tlviz import signin
    from tlviz.jobs.queue import max_jobs

    tmp = Path(tempfile.mkdtemp(prefix="tlviz_bench_team_"))
    runs_dir = str(tmp / "runs")
    env = {"TLVIZ_RUNS_DIR": runs_dir, signin.ENV_ALLOWED: f"@{DOMAIN}"}
    os.environ.update(env)  # so that max_jobs() and cancel() here read what the server reads
    n_jobs = max_jobs()
    say(f"== {args.sessions} signed-in sessions: page switches idle vs with {args.sessions - 1} fine-tuning runs "
        f"of {args.epochs} epochs queued or running ==")
    say(f"runs folder {runs_dir} (fresh); TLVIZ_MAX_JOBS = {n_jobs}; {os.cpu_count()} CPU cores; "
        f"{os.sysconf('SC_PHYS_PAGES') * PAGE_SIZE / 2**30:.0f} GB memory; load average at the start "
        f"{Path('/proc/loadavg').read_text().split()[0]}")
    idle, loaded, idle_cpu, loaded_cpu, skipped = [], [], [], [], 0
    with ExitStack() as stack:
        try:
            provider = stack.enter_context(oidc_provider(args.timeout))
        except RuntimeError as exc:
            raise BenchFailure(str(exc)) from None
        secrets = team_secrets(tmp, provider)
        url = stack.enter_context(streamlit_server(env=env, timeout=args.timeout,
                                                     args=["--secrets.files", str(secrets)]))
        watch = TeamWatch(url.pid, runs_dir)
        stack.callback(lambda: _cleanup(watch))
        stack.enter_context(watch)
        time.sleep(2)
        rss0 = rss_mb(url.pid)
        say(f"server RSS before any session: {rss0:.0f} MB")

        p = stack.enter_context(sync_playwright())
        browser = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS)
        stack.callback(browser.close)
        pages, t0, c0 = [], time.perf_counter(), watch.totals()
        for i in range(args.sessions):
            ctx = browser.new_context(viewport={"width": 1400, "height": 1000})
            page = ctx.new_page()
            page.set_default_timeout(args.timeout * 1000)
            email = f"person{i + 1}@{DOMAIN}"
            sign_in(page, url, email, args.timeout)
            wait_page(page, "Model & images", args.timeout)
            no_exception(page, f"{email} after signing in")
            pages.append(page)
            if i == 0:
                rss1 = rss_mb(url.pid)
                say(f"server RSS after person1 signed in (sample model and images loaded): {rss1:.0f} MB")
        t_sign = time.perf_counter() - t0
        c1 = watch.totals()
        time.sleep(2)
        rss_n = rss_mb(url.pid)
        say(f"{args.sessions} people signed in ({t_sign:.1f} s, server CPU {c1['server'] - c0['server']:.1f} s); "
            f"server RSS {rss_n:.0f} MB")
        observer = pages[0]

        # Idle baseline: every session open and idle.
        for r in range(args.repeats):
            for title in PAGES:
                dt, cpu, note = switch(observer, title, watch, args.timeout)
                idle.append(dt)
                idle_cpu.append(cpu)
                say(f"  idle   {r + 1}: {title:<16} {dt:6.2f} s   server CPU {cpu:5.2f} s   cpu: {note}")
        no_exception(observer, "the observer, idle")

        # Load: sessions 2..N each start a fine-tuning run of their own.
        t_load0, c_load0, mark = time.perf_counter(), watch.totals(), watch.mark()
        for i, page in enumerate(pages[1:], start=2):
            shown = start_run(page, args.epochs, args.timeout, f"person{i}'s run")
            say(f"  person{i} pressed Start run: {shown}; jobs: {describe_states(job_states(runs_dir))}")
        owners = {j["owner"] for js in job_states(runs_dir).values() for j in js}
        if len(owners) < args.sessions - 1:
            raise BenchFailure(f"{args.sessions - 1} people started runs, but the jobs belong to {len(owners)} owners")
        say(f"(all {args.sessions - 1} runs started {time.perf_counter() - t_load0:.1f} s after the first Start; "
            f"jobs: {describe_states(job_states(runs_dir))})")

        deadline = time.monotonic() + args.timeout * 6
        r = 0
        while len(loaded) < len(idle) and time.monotonic() < deadline:
            if active(runs_dir) == 0:
                break
            r += 1
            for title in PAGES:
                before = active(runs_dir)
                dt, cpu, note = switch(observer, title, watch, args.timeout)
                after = active(runs_dir)
                counted = before > 0 and after > 0
                say(f"  loaded {r}: {title:<16} {dt:6.2f} s   server CPU {cpu:5.2f} s   jobs active {before}->{after}"
                    f"   cpu: {note}" + ("" if counted else "   (no job active: not counted)"))
                if counted:
                    loaded.append(dt)
                    loaded_cpu.append(cpu)
                else:
                    skipped += 1
        no_exception(observer, "the observer, loaded")
        if len(loaded) < len(idle):
            say(f"  note: the jobs ended after {len(loaded)} of {len(idle)} loaded switches")

        # Every job ends (or is cancelled), every session shows no exception.
        deadline = time.monotonic() + args.timeout * 6
        while active(runs_dir) and time.monotonic() < deadline:
            time.sleep(1)
        t_load = time.perf_counter() - t_load0
        left = job_states(runs_dir)
        if n_state(left, "queued", "running"):
            from tlviz.jobs import cancel

            for j in left.get("queued", []) + left.get("running", []):
                cancel(j["id"], root=Path(runs_dir))
            say(f"  cancelled {n_state(left, 'queued', 'running')} jobs still active after {t_load:.0f} s")
        c_load1 = watch.totals()
        server_share = (c_load1["server"] - c_load0["server"]) / max(t_load, 1e-6)
        say(f"  CPU from the first Start to the last job's end ({t_load:.0f} s): "
            f"{cpu_note(c_load0, c_load1, t_load)} (100% = one core)")
        say(f"  busiest processes meanwhile: {watch.top(mark)}")
        states = job_states(runs_dir)
        spans = [j["ended"] - j["started"] for js in states.values() for j in js if j["started"] and j["ended"]]
        say(f"jobs at the end: {describe_states(states)}"
            + (f"; each held a worker {min(spans):.1f}–{max(spans):.1f} s" if spans else ""))
        for j in states.get("failed", []):
            say(f"  FAILED job {j['id']} ({j['kind']}): {j['message'][:300]}")
        for i, page in enumerate(pages, start=1):
            no_exception(page, f"person{i} at the end")
        rss_end = rss_mb(url.pid)
        peak_one, peak_all, peak_n = watch.peak_one / 2**20, watch.peak_worker_rss / 2**20, watch.peak_workers
        queued_mb = watch.queued_mb()
    waiting = "-" if math.isnan(queued_mb) else f"{queued_mb:.0f}"  # none waited (one job only)

    # -- results --
    say("")
    say(f"idle page switch ({args.sessions} sessions open): {summary(idle)}")
    say(f"loaded page switch ({args.sessions - 1} runs queued or running): {summary(loaded)}"
        + (f"; {skipped} switches not counted" if skipped else ""))
    ok = bool(idle and loaded) and not states.get("failed")
    if idle and loaded:
        ratio = statistics.median(loaded) / statistics.median(idle)
        ok &= ratio <= TARGET_RATIO
        say(f"RESULT: loaded/idle median ratio {ratio:.2f}x (fastest {min(loaded) / min(idle):.2f}x), "
            f"target <= {TARGET_RATIO:.0f}x: {'PASS' if ok else 'FAIL'}")
    else:
        say("RESULT: FAIL (not enough measurements)")
    per_session = (rss_n - rss0) / args.sessions
    marginal = (rss_n - rss1) / max(args.sessions - 1, 1)
    say(f"memory: server RSS {rss0:.0f} MB before any session, {rss1:.0f} MB after the first sign-in, "
        f"{rss_n:.0f} MB with {args.sessions} signed in ({per_session:.1f} MB per session over all "
        f"{args.sessions}, {marginal:.1f} MB per session after the first), {rss_end:.0f} MB at the end")
    say(f"memory: largest worker process (one job) {peak_one:.0f} MB; workers at once: at most {peak_n} processes, "
        f"{peak_all:.0f} MB together; a waiting job's process {waiting} MB")
    cpu_idle = statistics.median(idle_cpu) if idle_cpu else float("nan")
    cpu_loaded = statistics.median(loaded_cpu) if loaded_cpu else float("nan")
    say(f"cpu: server {cpu_idle:.2f} s per page switch idle, {cpu_loaded:.2f} s loaded (medians); while the "
        f"{args.sessions - 1} sessions followed their jobs the server used {100 * server_share:.0f}% of a core "
        f"({100 * server_share / (args.sessions - 1):.1f}% per following session, page switches included)")
    say(f"sizing: server {rss1:.0f} MB + {marginal:.1f} MB per open session; each running job: {peak_one:.0f} MB; "
        f"each waiting job: {waiting} MB; TLVIZ_MAX_JOBS={n_jobs} on this machine ({os.cpu_count()} cores); "
        f"{cpu_idle:.2f} s of server CPU per page switch")
    import shutil

    shutil.rmtree(tmp, ignore_errors=True)
    return ok


def _cleanup(watch: ProcWatch) -> None:
    killed = watch.kill_leftovers()
    if killed:
        say(f"({len(killed)} of the server's child processes were still running 5 s after it stopped; ended them: "
            + "; ".join(f"{pid} {cmd}" for pid, cmd in killed.items()) + ")")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter,
                                     epilog="\n\n".join(__doc__.split("\n\n")[1:]))
    parser.add_argument("--sessions", type=int, default=10, help="people signed in at once (default 10)")
    parser.add_argument("--repeats", type=int, default=8, help="page-switch rounds per condition (default 8)")
    parser.add_argument("--epochs", type=int, default=5, help="epochs of each fine-tuning run (default 5)")
    parser.add_argument("--timeout", type=float, default=120, help="seconds for one step (default 120)")
    parser.add_argument("--smoke", action="store_true", help="2 sessions, 1 repeat, 1 epoch")
    args = parser.parse_args()
    if args.smoke:
        args.sessions, args.repeats, args.epochs = 2, 1, 1
    if args.sessions < 2 or args.repeats < 1 or args.epochs < 1:
        parser.error("--sessions must be at least 2, --repeats and --epochs at least 1")
    if not Path(CHROMIUM).exists():
        parser.error(f"{CHROMIUM} not found (apt-get install chromium)")
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    try:
        ok = bench(args)
    except BenchFailure as exc:
        say(f"\nFAILED: {exc}")
        return 2
    except PlaywrightError as exc:
        say(f"\nFAILED: the browser step did not complete: {str(exc)[:2000]}")
        return 2
    return 0 if ok or args.smoke else 1


if __name__ == "__main__":
    sys.exit(main())
