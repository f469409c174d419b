"""docs/validation_plan.md carries the numbers of the committed files; the PDF is built from it."""

from __future__ import annotations

import build_validation_plan as plan

STALE = "run .venv/bin/python docs/build_validation_plan.py and commit the .md and the .pdf"


def test_markdown_numbers_are_up_to_date() -> None:
    current = plan.MARKDOWN.read_text(encoding="utf-8")
    assert plan.render(current) == current, f"docs/validation_plan.md is stale: {STALE}"


def test_pdf_was_built_from_the_committed_markdown() -> None:
    assert plan.PDF.read_bytes().startswith(b"%PDF-"), "docs/validation_plan.pdf is not a PDF"
    markdown = plan.MARKDOWN.read_text(encoding="utf-8")
    assert plan.pdf_source_hash() == plan.source_hash(markdown), (
        f"docs/validation_plan.pdf was built from another version of the Markdown: {STALE}"
    )


def test_pdf_renders(tmp_path) -> None:
    target = tmp_path / "plan.pdf"
    plan.build_pdf("# Title\n\n| a | b |\n|---|---|\n| 1 mm³ | `x` |\n", target)
    assert plan.pdf_source_hash(target) is not None


def test_missing_inputs_leave_a_marked_placeholder(monkeypatch, tmp_path) -> None:
    monkeypatch.setattr(plan, "VALIDATION", tmp_path / "absent.json")
    assert plan.block_validation().startswith("**PENDING**")
    assert plan.block_acceptance().startswith("**PENDING**")
