"""Logging for the node: human text or JSON lines, with a guard against patient identifiers.

The code never formats patient names, IDs or birth dates into INFO-level messages. As a second
line of defence, :class:`PatientIdentifierGuard` remembers the identifiers of datasets the node
has seen and masks them in every record at INFO or above, so a careless message (or a library's
exception text) cannot leak them into a log that is shipped to a SIEM.
"""

from __future__ import annotations

import json
import logging
import logging.handlers
import sys
import threading
from collections import OrderedDict
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TextIO

from pydicom.dataset import Dataset
from pynetdicom import _config as pynetdicom_config

AUDIT_LOGGER_NAME = "hippo_scp.audit"
_MASK = "***"


#: SpecificCharacterSet (decoding depends on it), PatientName, PatientID, PatientBirthDate,
#: OtherPatientIDs
_IDENTIFIER_TAGS = (0x00080005, 0x00100010, 0x00100020, 0x00100030, 0x00101000)
_RECENT_RAW_CAPACITY = 64


def _raw_value(dataset: Dataset, tag: int) -> object:
    """The element's value as received (bytes) without decoding it; None when absent."""
    if tag not in dataset:
        return None
    element = dataset.get_item(tag)
    value = element.value
    return value if isinstance(value, bytes | None) else repr(value)


class PatientIdentifierGuard(logging.Filter):
    """Mask remembered patient identifiers in records at INFO and above.

    Bounded (LRU) so a node that runs for months does not grow without limit.
    """

    def __init__(self, capacity: int = 4096) -> None:
        super().__init__()
        self._identifiers: OrderedDict[str, None] = OrderedDict()
        self._capacity = capacity
        self._lock = threading.Lock()
        #: raw (undecoded) identifier elements of recent datasets -> their identifiers
        self._recent_raw: OrderedDict[tuple[object, ...], list[str]] = OrderedDict()

    def remember(self, dataset: Dataset) -> None:
        """Record the identifiers of ``dataset`` (PatientName, PatientID, PatientBirthDate).

        Called for every received instance, and the instances of a series carry the same
        identifiers: the values are decoded (character set, PersonName) only the first time
        their raw bytes are seen; later instances just refresh them (5 % of the receive
        path's CPU before, measured with py-spy).
        """
        raw_key = tuple(_raw_value(dataset, tag) for tag in _IDENTIFIER_TAGS)
        with self._lock:
            values = self._recent_raw.get(raw_key)
            if values is not None:
                self._recent_raw.move_to_end(raw_key)
                self._keep(values)
                return
        values = []
        for keyword in ("PatientName", "PatientID", "PatientBirthDate", "OtherPatientIDs"):
            value = dataset.get(keyword)
            if value is None:
                continue
            text = str(value).strip()
            if len(text) >= 3:
                values.append(text)
                # Also mask the name's components: "DOE^JOHN" may be logged as "DOE".
                values.extend(part for part in text.split("^") if len(part) >= 3)
        with self._lock:
            self._recent_raw[raw_key] = values
            while len(self._recent_raw) > _RECENT_RAW_CAPACITY:
                self._recent_raw.popitem(last=False)
            self._keep(values)

    def _keep(self, values: list[str]) -> None:
        """Add or refresh ``values`` in the LRU of identifiers (lock held)."""
        for text in values:
            self._identifiers[text] = None
            self._identifiers.move_to_end(text)
        while len(self._identifiers) > self._capacity:
            self._identifiers.popitem(last=False)

    def mask(self, text: str) -> str:
        with self._lock:
            identifiers = sorted(self._identifiers, key=len, reverse=True)
        for identifier in identifiers:
            if identifier in text:
                text = text.replace(identifier, _MASK)
        return text

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno < logging.INFO or not self._identifiers:
            return True
        message = record.getMessage()
        masked = self.mask(message)
        if masked != message:
            record.msg = masked
            record.args = None
        return True


#: The process-wide guard; the receiver calls ``PATIENT_GUARD.remember(ds)`` for each instance.
PATIENT_GUARD = PatientIdentifierGuard()


class RateLimitFilter(logging.Filter):
    """Let through at most ``burst`` records per message template every ``period_s`` seconds.

    pynetdicom logs an ERROR for every malformed PDU a peer sends; an unauthenticated peer
    streaming garbage could otherwise fill the disk with identical lines. The first record
    after a quiet period says how many were suppressed.
    """

    def __init__(self, prefix: str = "pynetdicom", burst: int = 20, period_s: float = 60.0) -> None:
        super().__init__()
        self._prefix = prefix
        self._burst = burst
        self._period_s = period_s
        self._windows: dict[str, list[float]] = {}  # template -> [window start, count, dropped]
        self._lock = threading.Lock()

    def filter(self, record: logging.LogRecord) -> bool:
        if not record.name.startswith(self._prefix):
            return True
        key = f"{record.name}:{record.levelno}:{record.msg}"
        now = record.created
        with self._lock:
            window = self._windows.get(key)
            if window is None or now - window[0] >= self._period_s:
                dropped = int(window[2]) if window is not None else 0
                if len(self._windows) > 1024:
                    self._windows.clear()
                self._windows[key] = [now, 1, 0]
                if dropped:
                    record.msg = f"{record.msg} ({dropped} similar messages suppressed)"
                return True
            window[1] += 1
            if window[1] <= self._burst:
                return True
            window[2] += 1
            return False


class JsonLineFormatter(logging.Formatter):
    """One JSON object per line: machine-readable for log shippers (Loki, ELK, Splunk)."""

    def format(self, record: logging.LogRecord) -> str:
        payload: dict[str, Any] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        fields = getattr(record, "fields", None)
        if isinstance(fields, dict):
            payload.update(fields)
        if record.exc_info:
            payload["exception"] = self.formatException(record.exc_info)
        return json.dumps(payload, default=str, ensure_ascii=False)


def configure_logging(
    level: str = "INFO",
    fmt: str = "text",
    *,
    stream: TextIO | None = None,
    audit_log: Path | None = None,
) -> None:
    """Configure the root logger once per process (idempotent: handlers are replaced)."""
    root = logging.getLogger()
    for handler in list(root.handlers):
        root.removeHandler(handler)
    handler = logging.StreamHandler(stream or sys.stderr)
    if fmt == "json":
        handler.setFormatter(JsonLineFormatter())
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)-7s %(name)s: %(message)s"))
    handler.addFilter(PATIENT_GUARD)
    root.addHandler(handler)
    root.setLevel(level)
    # pynetdicom is chatty at INFO (one line per PDU summary); keep it at WARNING unless
    # the operator asks for DEBUG.
    logging.getLogger("pynetdicom").setLevel("DEBUG" if level == "DEBUG" else "WARNING")
    # pynetdicom's "standard" notification handlers build their DEBUG text for every PDU and
    # DIMSE message before the logger drops it (the C-STORE one even copies the whole data
    # set to test it for emptiness): about a tenth of the receive path's CPU. Bind them only
    # when that text is wanted. Read when an association is created, so this must run first.
    pynetdicom_config.LOG_HANDLER_LEVEL = "standard" if level == "DEBUG" else "none"
    # The prior lookup's C-FIND identifiers carry the PatientID; pynetdicom logs them at INFO
    # whatever LOG_HANDLER_LEVEL says. Never wanted, not even at DEBUG.
    pynetdicom_config.LOG_REQUEST_IDENTIFIERS = False
    pynetdicom_config.LOG_RESPONSE_IDENTIFIERS = False
    if level != "DEBUG":
        handler.addFilter(RateLimitFilter("pynetdicom"))

    audit = logging.getLogger(AUDIT_LOGGER_NAME)
    for existing in list(audit.handlers):
        audit.removeHandler(existing)
        existing.close()
    if audit_log is not None:
        audit_log.parent.mkdir(parents=True, exist_ok=True)
        # Watched: when logrotate (or an operator) moves the file away, the next record
        # reopens the path instead of going on writing into the rotated file.
        audit_handler = logging.handlers.WatchedFileHandler(audit_log, encoding="utf-8")
        audit_handler.setFormatter(JsonLineFormatter())
        audit_handler.addFilter(PATIENT_GUARD)
        audit.addHandler(audit_handler)
    audit.setLevel(logging.INFO)


def audit_event(event: str, **fields: Any) -> None:
    """Write one audit record (association accepted / rejected / released, results sent)."""
    logging.getLogger(AUDIT_LOGGER_NAME).info(event, extra={"fields": {"event": event, **fields}})
