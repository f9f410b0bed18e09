"""Helpers for real-browser tests: a Streamlit server and headless Chromium."""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def stop(proc: subprocess.Popen) -> None:
    """Stop a server process: politely, then for good after 10 s."""
    proc.terminate()
    try:
        proc.wait(10)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


class ServerURL(str):
    """The served app's base URL; ``.pid`` is the server process's id, ``.log`` its output file."""

    pid: int
    log: Path

    def log_tail(self, chars: int = 4000) -> str:
        """The end of the server's output (for a failing test's message)."""
        try:
            return self.log.read_text(errors="replace")[-chars:]
        except OSError:
            return ""


@contextlib.contextmanager
def streamlit_server(env: dict | None = None, timeout: float = 90, args=()):
    """Start `streamlit run app.py` on a free port; yield its base URL.

    Only the port and address (and `args`, e.g. ``["--secrets.files", path]``) are given on the command
    line: every other setting comes from the project's ``.streamlit/config.toml``, as in use.
    """
    port = free_port()
    cmd = [sys.executable, "-m", "streamlit", "run", str(ROOT / "app.py"),
           "--server.port", str(port), "--server.address", "127.0.0.1", *args]
    # The server's output goes to a file: a pipe nobody reads would fill up and block it.
    log = tempfile.NamedTemporaryFile(prefix="tlviz_server_", suffix=".log", delete=False)
    proc = subprocess.Popen(cmd, cwd=ROOT, env={**os.environ, **(env or {})}, stdout=log, stderr=subprocess.STDOUT)
    url = ServerURL(f"http://127.0.0.1:{port}")
    url.pid = proc.pid
    url.log = Path(log.name)
    try:
        deadline = time.time() + timeout
        while time.time() < deadline:
            try:
                if urllib.request.urlopen(url + "/_stcore/health", timeout=2).status == 200:
                    break
            except OSError:
                time.sleep(0.5)
            if proc.poll() is not None:
                raise RuntimeError("streamlit exited:\n" + Path(log.name).read_text(errors="replace")[-5000:])
        else:
            raise RuntimeError("streamlit did not start in time")
        yield url
    finally:
        stop(proc)
        log.close()
        Path(log.name).unlink(missing_ok=True)


def screenshot_dir() -> Path:
    """Where the browser tests save their screenshots: ``TLVIZ_SCREENSHOT_DIR``, else a temp folder.

    ``python tools/screenshots.py`` points it at ``docs/`` so the README's
    page tour shows exactly what the tests saw.
    """
    d = Path(os.environ.get("TLVIZ_SCREENSHOT_DIR") or Path(os.environ.get("TMPDIR", "/tmp")) / "tlviz_screenshots")
    d.mkdir(parents=True, exist_ok=True)
    return d


def save_screenshot(page, name: str) -> Path:
    """Save a PNG of the visible page as `name` in `screenshot_dir()`."""
    path = screenshot_dir() / name
    page.screenshot(path=str(path), full_page=False)
    return path


#: Chromium's stand-in camera (a moving test pattern), with the permission prompt answered "allow":
#: ``browser_page(extra_args=FAKE_CAMERA_ARGS, permissions=["camera"])``.
FAKE_CAMERA_ARGS = ["--use-fake-device-for-media-stream", "--use-fake-ui-for-media-stream"]


@contextlib.contextmanager
def browser_page(width: int = 1400, height: int = 1000, extra_args=(), permissions=None):
    """A headless Chromium page of `width` x `height`.

    Args:
        extra_args: Chromium flags added to `CHROMIUM_ARGS` (e.g. `FAKE_CAMERA_ARGS`). Defaults to none.
        permissions: permissions granted to the page's context (e.g. ``["camera"]``). Defaults to `None` (none).
    """
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS + list(extra_args))
        try:
            page = browser.new_page(viewport={"width": width, "height": height},
                                    **({"permissions": list(permissions)} if permissions else {}))
            page.set_default_timeout(90_000)
            yield page
        finally:
            browser.close()


@contextlib.contextmanager
def oidc_provider(timeout: float = 30):
    """A real OpenID Connect provider (``python -m oidc_provider_mock``) on 127.0.0.1; yields its base URL.

    Its authorization form has a ``sub`` field: the text typed there becomes the person's ``sub`` and ``email``.
    """
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "oidc_provider_mock", "--host", "127.0.0.1", "--port", str(port)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.time() + timeout
        while True:
            try:
                urllib.request.urlopen(base + "/.well-known/openid-configuration", timeout=2)
                break
            except OSError:
                if time.time() > deadline or proc.poll() is not None:
                    raise RuntimeError("the OpenID Connect provider (python -m oidc_provider_mock) did not start") \
                        from None
                time.sleep(0.3)
        yield base
    finally:
        stop(proc)


def team_secrets(folder: Path, provider: str) -> Path:
    """Write a ``secrets.toml`` whose ``[auth]`` section signs people in at `provider`; its path (for
    ``streamlit_server(args=["--secrets.files", path])``)."""
    secrets = Path(folder) / "secrets.toml"
    secrets.write_text(f'''[auth]
redirect_uri = "http://127.0.0.1:{{port}}/oauth2callback"
cookie_secret = "tlviz-test-cookie-secret-0123456789abcdef0123456789"
client_id = "tlviz"
client_secret = "tlviz-secret"
server_metadata_url = "{provider}/.well-known/openid-configuration"
''')
    return secrets


def sign_in(page, url: str, email: str, timeout_s: float = 90, expect_in: bool = True) -> None:
    """Sign in as `email` through the provider's own form (`oidc_provider`), from the app's sign-in page."""
    page.goto(url + "/", timeout=timeout_s * 1000)
    page.get_by_role("button", name="Sign in").click(timeout=timeout_s * 1000)
    page.wait_for_url("**/oauth2/authorize**", timeout=timeout_s * 1000)
    page.fill("input[name=sub]", email)
    page.get_by_role("button", name="Authorize").click()
    if expect_in:
        page.get_by_text(f"Signed in as {email}").wait_for(timeout=timeout_s * 1000)
