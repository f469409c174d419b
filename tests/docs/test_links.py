"""Relative links in the documentation point at files that exist (anchors: headings exist)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from docgen import DOCS_DIR

PAGES = [
    DOCS_DIR / name
    for name in ("README.md", "conformance.md", "operations.md", "validation_plan.md")
] + [DOCS_DIR / "examples" / "README.md"]
_LINK = re.compile(r"!?\[[^\]]*\]\(([^)\s]+)\)")


def _anchor(heading: str) -> str:
    """GitHub's anchor of a Markdown heading."""
    text = re.sub(r"[^\w\- ]", "", heading.strip().lower())
    return text.replace(" ", "-")


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(DOCS_DIR)))
def test_relative_links_resolve(page: Path) -> None:
    if not page.is_file():
        pytest.skip(f"{page.name} not generated yet")
    broken = []
    for target in _LINK.findall(page.read_text(encoding="utf-8")):
        if re.match(r"[a-z]+:", target):
            continue
        path, _, anchor = target.partition("#")
        file = (page.parent / path).resolve() if path else page
        if not file.exists():
            broken.append(target)
        elif anchor and file.suffix == ".md":
            headings = re.findall(r"^#+ (.+)$", file.read_text(encoding="utf-8"), flags=re.M)
            if anchor not in {_anchor(h) for h in headings}:
                broken.append(target)
    assert not broken, f"{page.name}: broken links {broken}"
