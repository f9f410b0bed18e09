"""Shared helpers for the AppTest page tests."""

from __future__ import annotations

from pathlib import Path

from streamlit.testing.v1 import AppTest

ROOT = Path(__file__).resolve().parent.parent
APP = str(ROOT / "app.py")


def open_app(model: str | None = None, images: str | None = None, query: dict | None = None) -> AppTest:
    """The app after its first runs, optionally with another sample model / image set chosen.

    The first run goes through the router; a second run makes the sidebar's
    widget ids stable before a test interacts with them. `query` sets the
    page address's query parameters (e.g. ``{"ws": token}`` as after a reload).
    """
    at = AppTest.from_file(APP, default_timeout=180)
    at.query_params.update(query or {})
    at.run()
    assert not at.exception, at.exception
    at.run()
    assert not at.exception, at.exception
    if model:
        at.selectbox(key="model_choice").set_value(model)
        at.run()
    if images:
        at.selectbox(key="images_choice").set_value(images)
        at.run()
    assert not at.exception, at.exception
    return at


def open_page(page: str, model: str | None = None, images: str | None = None, query: dict | None = None) -> AppTest:
    """`open_app`, then switch to `page` (e.g. ``"pages/layers.py"``)."""
    at = open_app(model, images, query)
    at.switch_page(page)
    at.run()
    assert not at.exception, at.exception
    return at


def texts(at: AppTest) -> str:
    """All markdown, captions and alerts of the last run, as one string."""
    parts = [m.value for m in at.markdown] + [m.value for m in at.caption]
    parts += [e.value for e in at.error] + [w.value for w in at.warning] + [s.value for s in at.success]
    parts += [i.value for i in at.info]
    return "\n".join(str(p) for p in parts)


def upload_model(at: AppTest, name: str, data: bytes) -> AppTest:
    """Choose 'Upload' as the model source and upload `data` as file `name` (runs the app)."""
    at.radio(key="model_kind").set_value("Upload")
    at.run()
    at.file_uploader(key="model_upload").set_value((name, data, "application/octet-stream"))
    return at.run()


def upload_zip(at: AppTest, name: str, data: bytes) -> AppTest:
    """Choose 'Upload .zip' as the image source and upload `data` as file `name` (runs the app)."""
    at.radio(key="images_kind").set_value("Upload .zip")
    at.run()
    at.file_uploader(key="images_upload").set_value((name, data, "application/zip"))
    return at.run()


def settle(at: AppTest, job_key: str, timeout: float = 600) -> AppTest:
    """Wait for the analysis job in ``session_state[job_key]`` on its own status (`tlviz.jobs.wait`), then rerun
    the page (as its polling fragment would) until the page has seen it end.

    The timeout only stops a test that would otherwise hang: a slow, shared machine makes a job slower, not wrong.
    """
    from tlviz.jobs import wait

    for _ in range(10):
        job_id = at.session_state[job_key] if job_key in at.session_state else None
        if not job_id:
            return at
        assert not wait(job_id, timeout=timeout).active, f"the {job_key} job did not finish in {timeout:.0f} s"
        at.run()
        assert not at.exception, at.exception
    raise AssertionError(f"the page kept following a {job_key} job after it ended")
