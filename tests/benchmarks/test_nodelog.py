"""benchmarks/nodelog.py reads the node's delivery log lines into the end-to-end breakdown."""

from __future__ import annotations

import json
from pathlib import Path

from benchmarks.nodelog import deliveries


def _log(tmp_path: Path, *messages: str) -> Path:
    path = tmp_path / "node.log"
    lines = [json.dumps({"time": "2026-11-28T01:00:00+00:00", "message": m}) for m in messages]
    path.write_text("\n".join(lines) + "\n")
    return path


def test_release_to_sent_counts_the_grace_once_in_old_and_new_logs(tmp_path: Path) -> None:
    old = (
        "series s-0000000001: results delivered to SINK@127.0.0.1:1 (32 instances, trigger "
        "release): receive 100 ms, queue 0 ms, assemble 40 ms, infer 60 ms, encode 900 ms, "
        "write 400 ms, send 200 ms; total 1.0 mm3"
    )
    new = (
        "series s-0000000002: results delivered to SINK@127.0.0.1:1 (32 instances, trigger "
        "release): receive 100 ms, queue 0 ms, assemble 40 ms, infer 60 ms, encode 500 ms, "
        "write 300 ms, grace 100 ms, send 200 ms; total 1.0 mm3"
    )
    settle = new.replace("s-0000000002", "s-0000000003").replace(
        "trigger release", "trigger settle"
    )
    first, second, third = deliveries(_log(tmp_path, old, new, settle), release_grace_s=1.0)
    # old node: the grace (1 s) elapsed before "queue" started and is not in the line
    assert first["release_to_sent_ms"] == 1000 + 0 + 40 + 60 + 900 + 400 + 200
    # new node: analysed during the grace; what was left of it is the "grace" part
    assert second["release_to_sent_ms"] == 0 + 40 + 60 + 500 + 300 + 100 + 200
    assert second["grace_ms"] == 0.0
    assert third["release_to_sent_ms"] == second["release_to_sent_ms"]
