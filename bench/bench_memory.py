"""Server memory over many fine-tuning runs: ``python bench/bench_memory.py`` (needs /usr/bin/chromium).

Starts the real app (``streamlit run app.py``) on a free port, opens the
Fine-tuning page in headless Chromium and starts `--runs` short head-only runs
one after the other through the page, like a user would. After each run it
reads the *server* process's resident memory (VmRSS) and prints it. The
figure that matters is the growth from run 1 to the last run; the target is
within 10 %. Runs train in worker processes, so the server should only hold
the page state and the run records it shows.

Options: ``--runs 20`` (default), ``--epochs 2``; ``--smoke``: 2 runs of 1 epoch, a proof that the
benchmark still runs (the growth over 2 runs means little).
"""

import argparse
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))

from browser import browser_page, streamlit_server  # noqa: E402


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError("no VmRSS")


def _completed(runs_dir: str) -> int:
    import json

    n = 0
    for status in Path(runs_dir).glob("*/status.json"):
        try:
            n += json.loads(status.read_text()).get("state") == "completed"
        except ValueError:
            pass
    return n


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=20)
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--smoke", action="store_true", help="2 runs of 1 epoch: proves the benchmark runs")
    args = parser.parse_args(argv)
    if args.smoke:
        args.runs, args.epochs = 2, 1
    runs_dir = tempfile.mkdtemp(prefix="tlviz_bench_mem_")
    with streamlit_server(env={"TLVIZ_RUNS_DIR": runs_dir}) as url, browser_page(1400, 1000) as page:
        page.goto(url + "/finetune")
        page.get_by_role("heading", name="Fine-tuning runs").wait_for()
        epochs = page.get_by_label("Epochs", exact=True)
        epochs.fill(str(args.epochs))
        epochs.press("Enter")
        start_mb = rss_mb(url.pid)
        print(f"server pid {url.pid}; RSS with the page open, before any run: {start_mb:.0f} MB", flush=True)
        sizes = []
        t0 = time.perf_counter()
        for i in range(1, args.runs + 1):
            page.evaluate("window.scrollTo(0, 0)")
            page.get_by_role("button", name="Start run").click()
            deadline = time.monotonic() + 300
            while _completed(runs_dir) < i:
                if time.monotonic() > deadline:
                    raise RuntimeError(f"run {i} did not complete")
                time.sleep(0.5)
            page.get_by_role("button", name="Cancel").wait_for(state="detached", timeout=60_000)
            page.get_by_text("Download the fine-tuned model").first.wait_for(timeout=60_000)
            page.wait_for_timeout(500)
            sizes.append(rss_mb(url.pid))
            print(f"run {i:2d}: server RSS {sizes[-1]:.0f} MB", flush=True)
        growth = (sizes[-1] / sizes[0] - 1) * 100
        print(f"\nRSS after run 1: {sizes[0]:.0f} MB; after run {args.runs}: {sizes[-1]:.0f} MB; "
              f"ratio {sizes[-1] / sizes[0]:.3f} (growth {growth:+.1f} %, target within 10 %); "
              f"peak {max(sizes):.0f} MB; {(time.perf_counter() - t0) / args.runs:.1f} s per run")
    return 0


if __name__ == "__main__":
    sys.exit(main())
