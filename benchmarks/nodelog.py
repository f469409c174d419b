"""Read the node's own timing breakdown from its JSON log (``--log-format json``).

The sender logs one line per delivered result set::

    series s-0635db4369: results delivered to SINK@127.0.0.1:34887 (32 instances, trigger
    release): receive 102 ms, queue 0 ms, assemble 1134 ms, infer 1002 ms, encode 8502 ms,
    write 450 ms, send 1288 ms; anterior ...

``release_to_sent_ms`` = queue + assemble + infer + encode + write + grace + send: inside the
node, from the trigger (association release, or the end of the settle window) to the results
stored at the destination. Since 2026-11-28 the node analyses and serialises a released series
during its release grace (``triggers.analyze_during_grace``) and logs ``grace``, what was left
of it afterwards; ``queue`` counts from the release. Older logs (no ``grace`` part) counted
``queue`` from the end of the grace, so ``triggers.release_grace_seconds`` (default 1 s) is
added for them. ``write`` (serialising the objects for the outbox) is logged since 2026-11-27;
``priors`` (the PACS query for earlier results, with ``priors.enabled``) since 2026-11-28.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import re
from datetime import datetime
from pathlib import Path

_DELIVERED = re.compile(
    r"series (?P<series>s-[0-9a-f]+): results delivered to (?P<dest>\S+) "
    r"\((?P<instances>\S+) instances, trigger (?P<trigger>[^)]+)\): (?P<parts>[^;]*)"
)
_PART = re.compile(r"(\w+) (\d+(?:\.\d+)?) ms")
AFTER_TRIGGER = ("queue", "assemble", "infer", "priors", "encode", "write", "grace", "send")


def series_label(series_uid: str) -> str:
    """Same label the node logs (hippo_scp.assembly.series_store.series_label)."""
    return "s-" + hashlib.sha256(series_uid.encode("ascii", "replace")).hexdigest()[:10]


def _lines_with(log_path: Path, marker: str) -> list[str]:
    """The log's lines that contain ``marker`` (none when the log cannot be read)."""
    try:
        text = log_path.read_text(errors="replace")
    except OSError:
        return []
    return [line for line in text.splitlines() if marker in line]


def deliveries(log_path: Path, release_grace_s: float = 1.0) -> list[dict]:
    out = []
    for line in _lines_with(log_path, "results delivered"):
        try:
            record = json.loads(line)
            message, stamp = record.get("message", ""), record.get("time")
        except ValueError:
            message, stamp = line, None
        match = _DELIVERED.search(message)
        if not match:
            continue
        timings = {name: float(ms) for name, ms in _PART.findall(match["parts"])}
        item = {
            "series": match["series"],
            "destination": match["dest"],
            "trigger": match["trigger"],
            "timings_ms": timings,
            "due_to_sent_ms": sum(timings.get(k, 0.0) for k in AFTER_TRIGGER),
        }
        released = item["trigger"].strip() == "release"
        grace = release_grace_s * 1000 if released and "grace" not in timings else 0.0
        item["grace_ms"] = grace
        item["release_to_sent_ms"] = item["due_to_sent_ms"] + grace
        if stamp:
            with contextlib.suppress(ValueError):
                item["time"] = datetime.fromisoformat(stamp).timestamp()
        out.append(item)
    return out


def delivery_for(log_path: Path, series_uid: str) -> dict | None:
    label = series_label(series_uid)
    found = [d for d in deliveries(log_path) if d["series"] == label]
    return found[-1] if found else None


def audit_events(log_path: Path, since: float = 0.0) -> list[dict]:
    """The node's audit events (``association_accepted`` / ``_released`` ...) after ``since``
    (epoch seconds), each with its ``time`` as epoch seconds."""
    out = []
    for line in _lines_with(log_path, '"hippo_scp.audit"'):
        try:
            record = json.loads(line)
            stamp = datetime.fromisoformat(record["time"]).timestamp()
        except (ValueError, KeyError):
            continue
        if stamp >= since:
            record["time"] = stamp
            out.append(record)
    return out
