"""``hippo-scp status`` reads what the node leaves on disk: outbox backlog and audit counts.

The outbox is filled through the node's own :class:`~hippo_scp.network.outbox.Outbox` and the
audit log through its own logger, so the reader follows what the node writes. The C-ECHO
against a running node is tested in ``tests/network/test_node_network.py``.
"""

from __future__ import annotations

import io
import json
import subprocess
import sys
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from hippo_scp.config import config_from_mapping
from hippo_scp.logging_setup import audit_event, configure_logging
from hippo_scp.network.outbox import Outbox, destination_folder_name
from hippo_scp.node_status import (
    echo_node,
    format_status,
    node_status,
    read_outbox_backlog,
    summarise_audit_log,
)
from tests.dicom_factory import INTEGER_CASE, load_nifti_case, require_data, series_from_volume

REPO_ROOT = Path(__file__).resolve().parents[1]
PACS = {"ae_title": "ORTHANC", "host": "127.0.0.1", "port": 4242}
OLD_PACS = {"ae_title": "OLDPACS", "host": "10.0.0.9", "port": 104}


def _config(tmp_path: Path, destinations: list[dict]) -> object:
    return config_from_mapping(
        {
            "node": {"port": 1},  # nothing listens on port 1
            "destinations": destinations,
            "outbox": {"directory": str(tmp_path / "outbox")},
            "logging": {"audit_log": str(tmp_path / "audit.jsonl")},
        }
    )


@pytest.fixture(scope="module")
def result_objects() -> list:
    """Two real MR slices standing in for a result set (the outbox stores any DICOM)."""
    require_data()
    image, _ = load_nifti_case(INTEGER_CASE)
    return series_from_volume(image[:, :, :2])


def test_outbox_backlog_counts_waiting_sets_and_their_age(tmp_path, result_objects) -> None:
    # A set queued while OLDPACS was a destination, then OLDPACS removed from the config.
    Outbox(
        tmp_path / "outbox", [destination_folder_name(**PACS), destination_folder_name(**OLD_PACS)]
    ).put("s-1", result_objects, {"series": "s-1"})
    quarantine = tmp_path / "outbox" / "quarantine" / "ORTHANC@127.0.0.1_4242" / "x"
    quarantine.mkdir(parents=True)
    (quarantine / "00-seg.dcm").write_bytes(b"not dicom")
    config = _config(tmp_path, [PACS])

    backlog = read_outbox_backlog(config, now_s=time.time() + 3600)
    folders = {f.name: f for f in backlog.folders}
    assert folders["ORTHANC@127.0.0.1_4242"].waiting == 1
    assert folders["ORTHANC@127.0.0.1_4242"].configured
    assert 3599 < folders["ORTHANC@127.0.0.1_4242"].oldest_age_s < 3700
    assert not folders["OLDPACS@10.0.0.9_104"].configured  # reported, not counted as waiting
    assert backlog.waiting == 1 and backlog.quarantined_files == 1

    fresh = read_outbox_backlog(config)
    assert fresh.oldest_age_s is not None and fresh.oldest_age_s < 60


def test_problems_name_what_needs_a_person(tmp_path, result_objects) -> None:
    config = _config(tmp_path, [PACS])
    clean = node_status(config, echo=False, stale_after_s=600)
    assert clean.problems == [] and "status: OK" in format_status(clean)
    assert "not created yet" in format_status(clean)

    Outbox(tmp_path / "outbox", [destination_folder_name(**PACS)]).put("s-2", result_objects, {})
    waiting = node_status(config, echo=False, stale_after_s=0)
    assert len(waiting.problems) == 1 and "waited" in waiting.problems[0]
    assert "status: ATTENTION" in format_status(waiting)
    assert node_status(config, echo=False, stale_after_s=600).problems == []


def test_audit_summary_counts_the_window_and_skips_garbage(tmp_path) -> None:
    log = tmp_path / "audit.jsonl"
    configure_logging("INFO", audit_log=log)
    try:
        audit_event("node_started", ae_title="HIPPOAI", port=11112)
        audit_event("association_accepted", calling_ae_title="ORTHANC", outcome="accepted")
        audit_event(
            "association_released",
            calling_ae_title="ORTHANC",
            outcome="released",
            stores_received=33,
            instances_stored=32,
            instances_refused=1,
        )
        for _ in range(2):
            audit_event(
                "association_rejected", calling_ae_title="X", outcome="rejected",
                reason="calling AE title not allowed",
            )  # fmt: skip
        audit_event("results_sent", destination="ORTHANC@127.0.0.1:4242", outcome="success")
        audit_event("series_analysis", series="s-1", outcome="results_queued")
        audit_event("series_analysis", series="s-3", outcome="results_queued", prior="compared")
        audit_event(
            "series_analysis", series="s-4", outcome="results_queued", prior="failed",
            prior_reason="ORTHANC@h:1: Study Root C-GET not accepted",
        )  # fmt: skip
        for destination in ("A@h:1", "B@h:2"):
            audit_event(
                "destination_unreachable", destination=destination, outcome="failed",
                reason="association rejected",
            )  # fmt: skip
        audit_event("destination_recovered", destination="A@h:1", outcome="recovered")
        audit_event(
            "series_analysis", series="s-2", outcome="refused",
            reason="SliceGapError: slice 7 missing; no results sent",
        )  # fmt: skip
    finally:
        configure_logging("WARNING", "text", stream=io.StringIO(), audit_log=None)
    old = {"time": "2020-01-01T00:00:00.000+00:00", "event": "association_accepted"}
    with log.open("a", encoding="utf-8") as f:
        f.write(json.dumps(old) + "\n" + "{truncated line\n")

    summary = summarise_audit_log(log, datetime.now(UTC) - timedelta(hours=1))
    assert summary.events["association_accepted"] == 1  # the 2020 record is outside
    assert summary.rejection_reasons == {"calling AE title not allowed": 2}
    assert (summary.instances_stored, summary.instances_refused) == (32, 1)
    assert summary.results_sent == {"ORTHANC@127.0.0.1:4242": 1}
    assert summary.analyses == {"results_queued": 3, "refused": 1}
    assert summary.priors == {"compared": 1, "failed": 1}
    assert summary.last_prior_failure == "ORTHANC@h:1: Study Root C-GET not accepted"
    assert summary.refusal_kinds == {"SliceGapError": 1}
    assert summary.outages == {"A@h:1": 1, "B@h:2": 1}
    assert list(summary.failing) == ["B@h:2"]  # A recovered
    report = format_status(node_status(_config(tmp_path, [PACS]), echo=False))
    assert "B@h:2 failing since" in report
    assert (
        "prior comparisons: 1 compared, 0 without an earlier result, 1 failed "
        "(last: ORTHANC@h:1: Study Root C-GET not accepted), "
        "0 not possible (no PatientID or StudyDate)"
    ) in report
    assert summary.last_started is not None and summary.unreadable_lines == 1
    assert (
        summarise_audit_log(log, datetime(2019, 1, 1, tzinfo=UTC)).events["association_accepted"]
        == 2
    )


def test_echo_to_nothing_is_a_clear_no() -> None:
    result = echo_node("127.0.0.1", 1, "HIPPOAI", "HIPPOSTATUS", timeout_s=2)
    assert not result.answered and "refused" in result.detail


def test_cli_exit_codes(tmp_path) -> None:
    def status(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "hippo_scp", "status", *args],
            capture_output=True, text=True, cwd=REPO_ROOT, timeout=120,
        )  # fmt: skip

    config = tmp_path / "ae_config.yaml"
    config.write_text(f"outbox:\n  directory: {tmp_path / 'outbox'}\nlogging:\n  audit_log: null\n")
    quiet = status("--config", str(config), "--no-echo")
    assert quiet.returncode == 0, quiet.stdout + quiet.stderr
    assert "status: OK" in quiet.stdout and "audit log disabled" in quiet.stdout
    # serve's flags describe the node as it was started: a --destination replaces the file's.
    (tmp_path / "outbox").mkdir()
    flagged = status("--config", str(config), "--no-echo", "--destination", "PACS2@10.1.1.1:104")
    assert "PACS2@10.1.1.1_104" in flagged.stdout and "ORTHANC" not in flagged.stdout
    down = status("--config", str(config), "--port", "1", "--json")
    assert down.returncode == 1
    assert "does not answer C-ECHO" in json.loads(down.stdout)["problems"][0]
    config.write_text("node:\n  port: not-a-port\n")
    bad = status("--config", str(config))
    assert bad.returncode == 2 and "node.port" in bad.stderr
