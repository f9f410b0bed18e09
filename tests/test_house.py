"""The shape of the house (issue 23): `tools/house.py`'s rules hold for the whole engine.

- no import circle among ``tlviz/`` modules (function-level imports count);
- no ``_private`` name imported from another package (inside a package a shared helper is public);
- no module in ``tlviz/`` or ``ui/`` over `house.MAX_LINES` lines.
"""

import importlib.util
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def house():
    spec = importlib.util.spec_from_file_location("house", ROOT / "tools" / "house.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def edges(house):
    known = house.modules("tlviz")
    return known, house.imports(known)


def test_no_import_circle(house, edges):
    _, found = edges
    assert house.circles(found) == []


def test_no_private_name_imported_across_packages(house, edges):
    known, found = edges
    _, across = house.private_imports(found, known)
    assert [f"{a} imports {b}.{name} (line {line})" for a, b, name, line in across] == []


def test_no_module_over_the_line_limit(house):
    assert {path: n for path, n in house.sizes(("tlviz", "ui")).items() if n > house.MAX_LINES} == {}


def test_the_rules_catch_what_they_name(house, tmp_path):
    """The checks themselves: a circle through a function-level import, a private name imported from another
    package (directly and through a module name), and a package re-exporting its own modules are told apart."""
    pkg = tmp_path / "toy"
    (pkg / "a").mkdir(parents=True)
    (pkg / "b").mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "a" / "__init__.py").write_text("from toy.a.low import helper\n")
    (pkg / "a" / "low.py").write_text("def helper():\n    from toy.b.high import _secret\n    return _secret\n")
    (pkg / "b" / "__init__.py").write_text("")
    (pkg / "b" / "high.py").write_text("import toy.a.low as low\n\n_secret = 1\n\n\ndef f():\n    return low._x\n")
    known = house.modules("toy", root=tmp_path)
    found = house.imports(known)
    assert house.circles(found) == [["toy.a.low", "toy.b.high"]]
    _, across = house.private_imports(found, known)
    assert sorted((a, b, name) for a, b, name, _ in across) == [
        ("toy.a.low", "toy.b.high", "_secret"), ("toy.b.high", "toy.a.low", "_x")]
