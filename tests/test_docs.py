"""The README and the pages under docs/: every relative link points to a file that exists, and to a heading of it."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
#: Screenshots the README already shows that another change adds (remove a name once its picture is committed).
SCREENSHOTS_TO_COME: set[str] = set()

LINK = re.compile(r"\[[^\]]*\]\(([^)\s]+)\)")


def _slug(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, punctuation dropped, spaces to hyphens."""
    text = re.sub(r"[`*]", "", heading.strip().lower())
    text = re.sub(r"[^\w\- ]", "", text)
    return text.replace(" ", "-")


def _anchors(path: Path) -> set[str]:
    text = re.sub(r"```.*?```", "", path.read_text(encoding="utf-8"), flags=re.S)
    return {_slug(m) for m in re.findall(r"^#{1,6} (.+)$", text, flags=re.M)}


def _links(path: Path) -> list[str]:
    text = re.sub(r"```.*?```", "", path.read_text(encoding="utf-8"), flags=re.S)
    return [t for t in LINK.findall(text) if not re.match(r"[a-z]+:", t)]


def test_the_docs_pages_exist():
    names = {p.name for p in PAGES}
    assert {"command-line.md", "configuration.md", "security.md", "diagnose.md", "ray.md", "benchmarks.md",
            "keras2.md", "layout.md"} <= names


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.relative_to(ROOT).as_posix())
def test_every_relative_link_points_to_a_file_and_heading(page):
    broken = []
    for target in _links(page):
        file_part, _, anchor = target.partition("#")
        dest = (page.parent / file_part).resolve() if file_part else page
        rel = dest.relative_to(ROOT).as_posix() if dest.is_relative_to(ROOT) else str(dest)
        if not dest.exists():
            if rel not in SCREENSHOTS_TO_COME:
                broken.append(f"{target}: no file {rel}")
            continue
        if anchor and dest.suffix == ".md" and anchor not in _anchors(dest):
            broken.append(f"{target}: no heading #{anchor} in {rel}")
    assert not broken, broken


def test_slug_follows_github():
    assert _slug("Model & images") == "model--images"
    assert _slug("How far to trust it: a planted-fault matrix") == "how-far-to-trust-it-a-planted-fault-matrix"
    assert _slug("`TLVIZ_RAY_ADDRESS` and Ray") == "tlviz_ray_address-and-ray"
