"""Configuration: the shipped Streamlit settings (what a shared demo server needs) and the ``TLVIZ_*``
settings (`tlviz.config`: one table, one parser, docs/configuration.md's tables generated from it)."""

import ast
import re
import tomllib
from pathlib import Path

import pytest
from apptest_helpers import open_app

from tlviz import config
from tlviz.errors import ConfigError, TlvizError
from tlviz.models import DEFAULT_MAX_MODEL_MB

ROOT = Path(__file__).resolve().parent.parent
CONFIG = ROOT / ".streamlit" / "config.toml"


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


# -- TLVIZ_* settings ------------------------------------------------------------------------------

def _readers():
    """Every public function that reads a numeric ``TLVIZ_*`` setting, by variable."""
    from tlviz import diskcap, memory
    from tlviz.jobs import queue as jobqueue
    from tlviz.finetune import cache
    from tlviz.imagesets import limits
    from tlviz.models import max_model_bytes

    return {
        "TLVIZ_MEMORY_MB": memory.memory_budget_bytes,
        "TLVIZ_ACTIVATION_CACHE_MB": cache.cache_budget_bytes,
        "TLVIZ_MAX_JOBS": jobqueue.max_jobs,
        "TLVIZ_MAX_JOBS_PER_USER": jobqueue.max_jobs_per_user,
        "TLVIZ_RUNS_MAX_GB": diskcap.max_bytes,
        "TLVIZ_MAX_MODEL_MB": max_model_bytes,
        "TLVIZ_MAX_ARCHIVE_ENTRIES": limits.max_archive_entries,
        "TLVIZ_MAX_ARCHIVE_MB": limits.max_archive_bytes,
        "TLVIZ_MAX_IMAGE_MB": limits.max_image_bytes,
        "TLVIZ_MAX_IMAGE_PIXELS": limits.max_image_pixels,
        "TLVIZ_MAX_DECODED_MB": limits.max_decoded_bytes,
    }


def test_every_numeric_setting_has_a_reader():
    numeric = {name for name, s in config.SETTINGS.items() if s.kind in ("mb", "gb", "count")}
    assert set(_readers()) == numeric


@pytest.mark.parametrize("name", sorted(_readers()))
def test_unset_gives_the_default_and_a_value_is_read(name, monkeypatch):
    read, s = _readers()[name], config.SETTINGS[name]
    unit = {"mb": 2**20, "gb": 2**30}.get(s.kind, 1)
    unset = None if config.default(name) is None else int(config.default(name) * unit)  # no default: no cap
    monkeypatch.delenv(name, raising=False)
    assert read() == unset
    monkeypatch.setenv(name, "  ")  # empty means unset
    assert read() == unset
    monkeypatch.setenv(name, "3")
    assert read() == 3 * unit
    if s.kind in ("mb", "gb"):
        monkeypatch.setenv(name, "1.5")  # fractions of a megabyte (a gigabyte) are allowed
        assert read() == int(1.5 * unit)


@pytest.mark.parametrize("name", sorted(_readers()))
@pytest.mark.parametrize("bad", ["lots", "0", "-1", "nan", "inf"])
def test_a_bad_value_is_refused_naming_the_variable(name, bad, monkeypatch):
    """No setting falls back to its default silently: the message names the variable and a value to set."""
    s = config.SETTINGS[name]
    monkeypatch.setenv(name, bad)
    with pytest.raises(ConfigError, match=rf"^{name}={re.escape(repr(bad))} is not a positive .*"
                                          rf"Set it to e\.g\. {s.example}, or unset it (for the default )?\(") as info:
        _readers()[name]()
    assert isinstance(info.value, ValueError) and isinstance(info.value, TlvizError)


@pytest.mark.parametrize("name", [n for n, s in config.SETTINGS.items() if s.kind == "count"])
def test_a_count_must_be_whole(name, monkeypatch):
    monkeypatch.setenv(name, "2.5")
    with pytest.raises(ConfigError, match=f"{name}='2.5' is not a positive whole number"):
        _readers()[name]()
    monkeypatch.setenv(name, "2.0")
    assert _readers()[name]() == 2


def test_runs_dir_and_image_roots_are_read_through_config(tmp_path, monkeypatch):
    from tlviz.finetune import runs_dir
    from tlviz.imagesets.folders import server_folder_roots

    monkeypatch.setenv("TLVIZ_RUNS_DIR", str(tmp_path / "r"))
    assert runs_dir() == tmp_path / "r" and (tmp_path / "r").is_dir()
    monkeypatch.setenv("TLVIZ_IMAGE_ROOTS", "off")
    assert server_folder_roots() == []


def test_module_defaults_come_from_the_table():
    from tlviz.finetune.cache import DEFAULT_CACHE_MB

    assert DEFAULT_MAX_MODEL_MB == config.default("TLVIZ_MAX_MODEL_MB") == 500
    assert DEFAULT_CACHE_MB == config.default("TLVIZ_ACTIVATION_CACHE_MB") == 1024
    # The computed defaults are described as the modules compute them.
    from tlviz import machine, memory

    assert f"{machine.MIN_DEFAULT_MB}–{machine.MAX_DEFAULT_MB:,} MB" in config.SETTINGS["TLVIZ_MEMORY_MB"].default_text
    assert config.default("TLVIZ_MEMORY_MB") == machine.default_memory_mb()
    assert f"{machine.JOB_OVERHEAD_BYTES / 2**30:g} GB" in config.SETTINGS["TLVIZ_MAX_JOBS"].default_text
    assert config.default("TLVIZ_MAX_JOBS") == machine.jobs_that_fit(memory.memory_budget_bytes())


def test_unknown_names_are_refused():
    with pytest.raises(KeyError, match="TLVIZ_NOPE is not a tlviz setting"):
        config.count("TLVIZ_NOPE")
    with pytest.raises(ValueError, match="Unknown section"):
        config.table("nope")


def test_readme_tables_are_generated_from_the_settings():
    """docs/configuration.md's "Settings" and "Limits" tables are `config.table(section)`, and list every setting."""
    page = (ROOT / "docs" / "configuration.md").read_text(encoding="utf-8")
    listed = set()
    for section in config.SECTIONS:
        start, end = config.readme_markers(section)
        assert page.count(start) == 1 and page.count(end) == 1, section
        block = page.split(start, 1)[1].split(end, 1)[0].strip()
        assert block == config.table(section), (
            f"docs/configuration.md's table of {section} differs from tlviz.config.SETTINGS: run "
            "`python -m tlviz.config --update docs/configuration.md`.")
        listed |= set(re.findall(r"^\| `(TLVIZ_[A-Z_]+)`", block, flags=re.M))
    assert listed == set(config.SETTINGS)
    assert config.update_readme(page) == page
    # Every variable the README and the docs mention is a setting (or a benchmark's own).
    for path in [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]:
        mentioned = set(re.findall(r"\bTLVIZ_[A-Z_]*[A-Z]\b", path.read_text(encoding="utf-8")))
        assert {m for m in mentioned if not m.startswith("TLVIZ_BENCH")} <= set(config.SETTINGS), path.name


def _source_files():
    for folder in ("tlviz", "ui", "pages"):
        yield from sorted((ROOT / folder).rglob("*.py"))
    yield ROOT / "app.py"


def test_only_config_reads_tlviz_variables():
    """Nothing but `tlviz.config` reads the environment, except a few non-tlviz variables by their literal name."""
    allowed = {"TF_CPP_MIN_LOG_LEVEL", "PYTHONPATH"}
    offenders = []
    for path in _source_files():
        if path == ROOT / "tlviz" / "config.py":
            continue
        tree = ast.parse(path.read_text(encoding="utf-8"))
        for node in ast.walk(tree):
            key = None
            if isinstance(node, ast.Call) and ast.unparse(node.func) in ("os.environ.get", "os.getenv") and node.args:
                key = node.args[0]
            elif (isinstance(node, ast.Subscript) and ast.unparse(node.value) == "os.environ"
                  and isinstance(node.ctx, ast.Load)):
                key = node.slice
            if key is not None and not (isinstance(key, ast.Constant) and key.value in allowed):
                offenders.append(f"{path.relative_to(ROOT)}:{node.lineno}: {ast.unparse(node)}")
    assert not offenders, "read TLVIZ_* settings through tlviz.config:\n" + "\n".join(offenders)
    # And every TLVIZ_* name the code mentions is a setting.
    names = set()
    for path in _source_files():
        names |= set(re.findall(r"\bTLVIZ_[A-Z_]*[A-Z]\b", path.read_text(encoding="utf-8")))
    assert names <= set(config.SETTINGS), names - set(config.SETTINGS)
