"""docs/conformance.md says what the node does: its generated tables match the code."""

from __future__ import annotations

import generate_conformance as gen
import pytest
from docgen import MarkerError, replace_blocks

from hippo_scp.network import presentation


def test_committed_conformance_statement_is_up_to_date() -> None:
    current = gen.TARGET.read_text(encoding="utf-8")
    assert gen.render(current) == current, (
        "docs/conformance.md is out of date: run .venv/bin/python docs/generate_conformance.py"
    )


def test_every_negotiated_uid_is_in_the_document() -> None:
    text = gen.TARGET.read_text(encoding="utf-8")
    for uid in presentation.ACCEPTED_TRANSFER_SYNTAXES + presentation.STORAGE_SOP_CLASSES:
        assert f"`{uid}`" in text


def test_every_config_key_has_a_description() -> None:
    for line in gen.block_config_keys().splitlines()[2:]:
        description = line.rstrip(" |").rsplit(" | ", 1)[-1]
        assert description.strip(), f"no description for {line.split(' | ')[0]}"


def test_block_replacement_keeps_hand_written_text() -> None:
    text = "intro\n<!-- BEGIN GENERATED: a (x) -->\nold\n<!-- END GENERATED: a -->\noutro\n"
    assert replace_blocks(text, {"a": "new"}) == text.replace("old", "new")
    with pytest.raises(MarkerError):
        replace_blocks(text, {"a": "new", "b": "missing"})
    with pytest.raises(MarkerError):
        replace_blocks(text, {})
