"""Shared helpers of the documentation generators (``docs/generate_*.py``).

Generated parts of a hand-written Markdown file live between marker comments::

    <!-- BEGIN GENERATED: name (docs/generate_x.py; do not edit by hand) -->
    ...
    <!-- END GENERATED: name -->

A generator renders each named block from the product's own code or data and replaces what is
between the markers; everything outside them stays as written. ``--check`` makes a generator
exit 1 instead of writing when the file is not up to date (what the tests assert).
"""

from __future__ import annotations

import re
import sys
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path

DOCS_DIR = Path(__file__).resolve().parent
REPO_ROOT = DOCS_DIR.parent

_BLOCK = re.compile(
    r"(?P<begin><!-- BEGIN GENERATED: (?P<name>[\w-]+)[^>]*-->\n)"
    r"(?P<body>.*?)"
    r"(?P<end><!-- END GENERATED: (?P=name) -->)",
    re.DOTALL,
)


class MarkerError(ValueError):
    """A block the generator renders has no markers in the file (or vice versa)."""


def replace_blocks(text: str, blocks: Mapping[str, str]) -> str:
    """Return ``text`` with the body of every named block replaced by ``blocks[name]``."""
    found: set[str] = set()

    def substitute(match: re.Match[str]) -> str:
        name = match["name"]
        if name not in blocks:
            raise MarkerError(f"the file has a generated block {name!r} nobody renders")
        found.add(name)
        body = blocks[name].rstrip("\n") + "\n"
        return match["begin"] + body + match["end"]

    result = _BLOCK.sub(substitute, text)
    missing = sorted(set(blocks) - found)
    if missing:
        raise MarkerError(f"no markers for generated block(s): {', '.join(missing)}")
    return result


def table(header: Iterable[str], rows: Iterable[Iterable[object]]) -> str:
    """A GitHub-flavoured Markdown table (cells: ``|`` escaped, newlines flattened)."""
    head = [str(h) for h in header]

    def cell(value: object) -> str:
        return str(value).replace("|", "\\|").replace("\n", " ")

    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in rows]
    return "\n".join(lines)


def rel(path: Path) -> str:
    """``path`` relative to the repository root when it is inside it (stable across hosts)."""
    try:
        return Path(path).resolve().relative_to(REPO_ROOT).as_posix()
    except ValueError:
        return str(path)


def run(target: Path, render: Callable[[str], str], argv: list[str] | None = None) -> int:
    """Command-line body shared by the generators: write ``target`` or ``--check`` it."""
    args = sys.argv[1:] if argv is None else argv
    current = target.read_text(encoding="utf-8")
    fresh = render(current)
    if "--check" in args:
        if fresh != current:
            print(f"{rel(target)} is out of date: run python {rel(Path(sys.argv[0]))}")
            return 1
        print(f"{rel(target)} is up to date")
        return 0
    if fresh != current:
        target.write_text(fresh, encoding="utf-8")
        print(f"updated {rel(target)}")
    else:
        print(f"{rel(target)} unchanged")
    return 0
