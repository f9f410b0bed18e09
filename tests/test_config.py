"""The shipped Streamlit settings: what a shared demo server needs."""

import tomllib
from pathlib import Path

from apptest_helpers import open_app

from tlviz.models import DEFAULT_MAX_MODEL_MB

CONFIG = Path(__file__).resolve().parent.parent / ".streamlit" / "config.toml"


def test_config_toml_keeps_the_server_safe_and_offline():
    cfg = tomllib.loads(CONFIG.read_text())
    server, browser = cfg["server"], cfg["browser"]
    assert server["maxUploadSize"] == DEFAULT_MAX_MODEL_MB  # the documented model/archive upload limit
    assert server["enableXsrfProtection"] is True
    assert server.get("enableCORS", True) is True  # Streamlit turns XSRF off when CORS is off
    assert server["headless"] is True
    assert browser["gatherUsageStats"] is False
    assert cfg["runner"]["postScriptGC"] is False  # a full collection per run starved light pages under load


def test_upload_labels_show_the_limit(monkeypatch):
    at = open_app()
    at.radio(key="model_kind").set_value("Upload")
    at.radio(key="images_kind").set_value("Upload .zip")
    at.run()
    assert "up to 500 MB" in at.file_uploader(key="model_upload").label
    assert "up to 500 MB" in at.file_uploader(key="images_upload").label
    # Raising only the model limit says how to raise the server's upload limit too.
    monkeypatch.setenv("TLVIZ_MAX_MODEL_MB", "2000")
    at.run()
    assert any("--server.maxUploadSize 2000" in c.value for c in at.caption)
