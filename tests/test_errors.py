"""Every error class of tlviz lives in `tlviz.errors`; the old import paths still work."""

import ast
from pathlib import Path

from tlviz import errors

ROOT = Path(__file__).resolve().parent.parent


def _exception_classes(path: Path) -> list[str]:
    """Public classes defined in `path` whose bases look like exceptions."""
    out = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ClassDef) and not node.name.startswith("_"):
            bases = [ast.unparse(b) for b in node.bases]
            if any(b.endswith(("Error", "Exception", "Refused", "Skipped")) for b in bases):
                out.append(node.name)
    return out


def test_error_classes_are_defined_only_in_errors():
    """Every exception class, the signals raised and caught inside a package included (``ImageSkipped``)."""
    elsewhere = {}
    for folder in ("tlviz", "ui", "pages"):
        for path in (ROOT / folder).rglob("*.py"):
            if path != ROOT / "tlviz" / "errors.py" and _exception_classes(path):
                elsewhere[str(path.relative_to(ROOT))] = _exception_classes(path)
    assert not elsewhere, f"define error classes in tlviz/errors.py: {elsewhere}"


def test_old_import_paths_are_the_same_classes():
    from tlviz.finetune import RunRefused
    from tlviz.finetune.config import RunRefused as config_run_refused
    from tlviz.jobs import AnalysisRefused

    assert RunRefused is config_run_refused is errors.RunRefused
    assert AnalysisRefused is errors.AnalysisRefused
    for name in ("ModelRefused", "ImageSetRefused", "NormalizationRefused", "DiagnosisRefused", "RunRefused",
                 "AnalysisRefused", "ConfigError"):
        assert issubclass(getattr(errors, name), errors.TlvizError), name
