"""Boundaries (DESIGN.md): the engine never imports Streamlit; only app.py, ui/ and pages/ do; they use public names;
Altair is imported only under tlviz/charts/."""

import ast
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_no_tlviz_module_imports_streamlit():
    modules = sorted(
        ".".join(p.relative_to(ROOT).with_suffix("").parts)
        for p in (ROOT / "tlviz").rglob("*.py")
        if p.name != "__main__.py"
    )
    code = ("import importlib, sys\n"
            f"for m in {modules!r}: importlib.import_module(m)\n"
            "print('streamlit' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True)
    assert out.stdout.strip().splitlines()[-1] == "False"
    assert len(modules) > 20


#: Where the project's own code lives (tests excluded: they drive the app with `streamlit.testing`).
_SOURCE_DIRS = ("tlviz", "ui", "pages", "bench", "tools")
#: The only places that may import Streamlit (DESIGN.md): the router, the shared UI package, the pages.
_STREAMLIT_ALLOWED = ("app.py", "ui/", "pages/")
#: The only place that may import Altair (DESIGN.md): the chart builders.
_ALTAIR_ALLOWED = "tlviz/charts/"


def _source_files() -> list[Path]:
    files = [ROOT / "app.py"]
    for folder in _SOURCE_DIRS:
        files += sorted((ROOT / folder).rglob("*.py"))
    return files


def _imported_modules(path: Path) -> list[tuple[str, list[str]]]:
    """``(module, imported names)`` of every import statement in a file (names empty for ``import x``)."""
    out = []
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            out += [(alias.name, []) for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            out.append((node.module, [alias.name for alias in node.names]))
    return out


def test_streamlit_is_imported_only_by_the_router_ui_and_pages():
    offenders = []
    for path in _source_files():
        rel = path.relative_to(ROOT).as_posix()
        if rel == "app.py" or rel.startswith(_STREAMLIT_ALLOWED):
            continue
        offenders += [f"{rel}: {m}" for m, _ in _imported_modules(path) if m.split(".")[0] == "streamlit"]
    assert offenders == []
    uses = [p for p in _source_files() if any(m.split(".")[0] == "streamlit" for m, _ in _imported_modules(p))]
    assert {p.relative_to(ROOT).parts[0] for p in uses} >= {"app.py", "ui", "pages"}


def test_pages_and_ui_use_the_engines_public_names():
    """Pages and ui/ import engine packages through their ``__init__`` (charts too), never a private name."""
    offenders = []
    for path in [ROOT / "app.py", *sorted((ROOT / "ui").rglob("*.py")), *sorted((ROOT / "pages").rglob("*.py"))]:
        rel = path.relative_to(ROOT).as_posix()
        for module, names in _imported_modules(path):
            parts = module.split(".")
            if parts[0] != "tlviz":
                continue
            offenders += [f"{rel}: {module}.{n}" for n in names if n.startswith("_")]
            package = ROOT.joinpath(*parts[:2])
            if len(parts) > 2 and package.is_dir():
                offenders.append(f"{rel}: {module} (import it from {'.'.join(parts[:2])})")
    assert offenders == []


def test_altair_is_imported_only_by_the_chart_builders():
    """Every chart is built in `tlviz.charts`; pages hand the finished chart to ``st.altair_chart``."""
    users = {path.relative_to(ROOT).as_posix() for path in _source_files()
             if any(m.split(".")[0] == "altair" for m, _ in _imported_modules(path))}
    assert [u for u in sorted(users) if not u.startswith(_ALTAIR_ALLOWED)] == []
    assert {"tlviz/charts/layers.py", "tlviz/charts/normalization.py", "tlviz/charts/finetune.py"} <= users
