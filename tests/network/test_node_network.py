"""The node as a process on 127.0.0.1, driven by dcmtk's echoscu / storescu.

Two nodes are started (one per scenario group) to keep the module fast on a small machine:

* node A (sink up): C-ECHO, access control, the three test studies in one association,
  the memory limit;
* node B (sink down at first): one instance per association, results kept across a restart
  and delivered when the destination comes back.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections import Counter, defaultdict
from collections.abc import Iterator
from pathlib import Path

import pydicom
import pytest
from pydicom.dataset import Dataset
from pydicom.uid import generate_uid

from tests.network.conftest import NodeProcess, Sink, free_port, wait_until, write_node_config
from tests.result_sets import kinds

pytestmark = [pytest.mark.network, pytest.mark.timeout(300)]

CROP_FOLDERS = {
    "Study1": "13_HCropVolume",
    "Study2": "14_HCropVolume",
    "Study3": "11_HCropVolume",
}
SERIES_LIMIT = 250_000  # bytes: every HippoCrop series (<= 183 kB) fits, 128 slices do not


def run(*args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run(args, capture_output=True, text=True, timeout=timeout)


def storescu(port: int, *paths: Path, calling: str = "STORESCU") -> subprocess.CompletedProcess:
    return run(
        "storescu", "-aet", calling, "-aec", "HIPPOAI", "+sd", "+r", "127.0.0.1", str(port),
        *map(str, paths),
    )  # fmt: skip


def numeric_items(sr: Dataset) -> dict[str, float]:
    """Every NUM content item of an SR as {concept meaning (+ finding site): value}."""
    values: dict[str, float] = {}

    def walk(items, context: str) -> None:
        for item in items:
            name = (
                item.ConceptNameCodeSequence[0].CodeMeaning
                if "ConceptNameCodeSequence" in item
                else ""
            )
            if item.get("ValueType") == "CODE" and "ConceptCodeSequence" in item:
                name = f"{name}={item.ConceptCodeSequence[0].CodeMeaning}"
            if item.get("ValueType") == "NUM" and "MeasuredValueSequence" in item:
                key = f"{context}/{name}"
                values[key] = float(item.MeasuredValueSequence[0].NumericValue)
            if "ContentSequence" in item:
                walk(item.ContentSequence, f"{context}/{name}")

    walk(sr.ContentSequence, "")
    return values  # fmt: skip


def by_study(datasets: list[Dataset]) -> dict[str, list[Dataset]]:
    grouped: dict[str, list[Dataset]] = defaultdict(list)
    for ds in datasets:
        grouped[str(ds.StudyInstanceUID)].append(ds)
    return grouped


def outbox_sets(outbox: Path) -> list[Path]:
    return [p for p in outbox.glob("*/*") if p.is_dir() and not p.name.startswith(".")]


# --------------------------------------------------------------------------- node A
@pytest.fixture(scope="module")
def sink_a() -> Iterator[Sink]:
    sink = Sink(ae_title="PACSA").start()
    yield sink
    sink.stop()


@pytest.fixture(scope="module")
def node_a(
    tmp_path_factory: pytest.TempPathFactory, network_weights: Path, sink_a: Sink
) -> Iterator[NodeProcess]:
    folder = tmp_path_factory.mktemp("node_a")
    config = write_node_config(
        folder / "ae_config.yaml",
        network_weights,
        access={"allowed_calling_ae_titles": ["STORESCU", "ECHOSCU"]},
        limits={"max_series_bytes": SERIES_LIMIT},
    )
    node = NodeProcess(config, free_port(), sink_a.destination, settle=3).start()
    yield node
    status = node.terminate()
    assert status == 0, node.output


def test_echo_and_access_control(node_a: NodeProcess) -> None:
    ok = run("echoscu", "-aec", "HIPPOAI", "127.0.0.1", str(node_a.port))
    assert ok.returncode == 0, ok.stderr

    wrong_called = run("echoscu", "-aec", "NOTME", "127.0.0.1", str(node_a.port))
    assert wrong_called.returncode != 0
    assert "Called AE Title Not Recognized" in wrong_called.stderr

    intruder = run("echoscu", "-aet", "INTRUDER", "-aec", "HIPPOAI", "127.0.0.1", str(node_a.port))
    assert intruder.returncode != 0
    assert "Calling AE Title Not Recognized" in intruder.stderr

    audit_log = node_a.config.parent / "audit.jsonl"
    assert wait_until(lambda: "INTRUDER" in audit_log.read_text(), 5)
    records = [json.loads(line) for line in audit_log.read_text().splitlines()]
    rejected = [r for r in records if r.get("event") == "association_rejected"]
    assert {r["calling_ae_title"] for r in rejected} >= {"ECHOSCU", "INTRUDER"}
    assert all(r["peer_address"] == "127.0.0.1" for r in rejected)


def test_status_command_asks_the_running_node(node_a: NodeProcess) -> None:
    """``hippo-scp status`` as a monitoring check: 0 while the node answers, 1 with the
    node's own rejection reason when the access rules refuse the status check's AE title."""

    def status(*args: str) -> subprocess.CompletedProcess[str]:
        return run(
            sys.executable, "-m", "hippo_scp", "status", "--config", str(node_a.config),
            "--port", str(node_a.port), *args,
        )  # fmt: skip

    up = status("--calling-ae", "ECHOSCU")
    assert up.returncode == 0, up.stdout + up.stderr
    assert f"HIPPOAI@127.0.0.1:{node_a.port}: answers C-ECHO" in up.stdout
    refused = status("--calling-ae", "NOTALLOWED")
    assert refused.returncode == 1
    assert "association rejected" in refused.stdout


def test_three_studies_in_one_association_give_one_result_set_each(
    node_a: NodeProcess, sink_a: Sink, test_volumes: Path, network_weights: Path
) -> None:
    studies = [test_volumes / name for name in ("Study1", "Study2", "Study3")]
    before = len(sink_a.snapshot())
    result = storescu(node_a.port, *studies)
    assert result.returncode == 0, result.stderr

    received = sink_a.wait_for(before + 9, timeout=150)[before:]
    time.sleep(4)  # longer than the settle window: nothing more may arrive
    received = sink_a.snapshot()[before:]
    grouped = by_study(received)
    assert len(grouped) == 3, [kinds(v) for v in grouped.values()]
    for datasets in grouped.values():
        assert kinds(datasets) == Counter({"SEG": 1, "SR": 1, "SC": 1})

    # Same volumes as the analysis run in-process with the same weights.
    from hippo_scp.model.inference import Segmenter
    from hippo_scp.pipeline.analysis import SeriesAnalyzer

    analyzer = SeriesAnalyzer(Segmenter(weights_path=network_weights, num_threads=1))
    for study in studies:
        crop = [pydicom.dcmread(p) for p in (study / CROP_FOLDERS[study.name]).glob("*.dcm")]
        expected = analyzer.analyze(crop)
        (sr,) = [ds for ds in grouped[str(crop[0].StudyInstanceUID)] if "SR" in ds.SOPClassUID.name]
        got = numeric_items(sr)
        assert got == numeric_items(expected.sr)
        assert any(abs(v - expected.volumes.total_mm3) < 0.05 for v in got.values())

    # No patient identifier reaches the node's log.
    assert "PGBM" not in node_a.output


def test_series_over_the_memory_limit_is_refused_and_node_keeps_serving(
    node_a: NodeProcess, sink_a: Sink, test_volumes: Path, tmp_path: Path
) -> None:
    # A 128-slice copy of a crop series with new UIDs: more than twice the per-series limit.
    sources = sorted((test_volumes / "Study1" / CROP_FOLDERS["Study1"]).glob("*.dcm"))
    series_uid = generate_uid()
    for k in range(128):
        ds = pydicom.dcmread(sources[k % len(sources)])
        ds.SeriesInstanceUID = series_uid
        ds.SOPInstanceUID = generate_uid()
        ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
        ds.ImagePositionPatient = [0, 0, k]
        ds.InstanceNumber = k + 1
        ds.save_as(tmp_path / f"{k:03d}.dcm")
    before = len(sink_a.snapshot())

    result = run(
        "storescu", "-v", "-aec", "HIPPOAI", "+sd", "127.0.0.1", str(node_a.port), str(tmp_path)
    )  # fmt: skip
    text = result.stdout + result.stderr
    assert "Refused: OutOfResources" in text, text[-2000:]

    ok = run("echoscu", "-aec", "HIPPOAI", "127.0.0.1", str(node_a.port))
    assert ok.returncode == 0
    time.sleep(5)  # settle + grace: the partial series must not be analysed
    assert len(sink_a.snapshot()) == before
    assert node_a.running
    assert "limits.max_series_bytes" in node_a.output


# --------------------------------------------------------------------------- node B
def test_one_instance_per_association_outage_and_restart(
    tmp_path: Path, network_weights: Path, test_volumes: Path
) -> None:
    sink = Sink(ae_title="PACSB")  # not started: the destination is down
    config = write_node_config(tmp_path / "ae_config.yaml", network_weights)
    outbox = tmp_path / "outbox"
    node = NodeProcess(config, free_port(), sink.destination, settle=3).start()
    try:
        crop = sorted((test_volumes / "Study3" / CROP_FOLDERS["Study3"]).glob("*.dcm"))
        for path in crop:  # one association per instance, like some modalities
            result = run("storescu", "-aec", "HIPPOAI", "127.0.0.1", str(node.port), str(path))
            assert result.returncode == 0, result.stderr
        assert wait_until(lambda: len(outbox_sets(outbox)) == 1, timeout=60), node.output
        time.sleep(1)
        assert len(outbox_sets(outbox)) == 1  # exactly one set, not one per slice
        assert "delivery failed" in node.output

        assert node.terminate() == 0
        assert len(outbox_sets(outbox)) == 1  # kept for the next start

        node = NodeProcess(config, node.port, sink.destination, settle=3).start()
        time.sleep(1)
        sink.start()  # the PACS comes back while the node is running
        received = sink.wait_for(3, timeout=30)
        assert kinds(received) == Counter({"SEG": 1, "SR": 1, "SC": 1}), node.output
        assert wait_until(lambda: not outbox_sets(outbox), timeout=10)
        time.sleep(2)
        assert len(sink.snapshot()) == 3
        assert "results delivered" in node.output
        assert node.terminate() == 0
        # The audit log tells the outage once per node run, with the reason, and its end.
        records = [json.loads(line) for line in (tmp_path / "audit.jsonl").read_text().splitlines()]
        outage = [r for r in records if r["event"].startswith("destination_")]
        assert outage[0]["event"] == "destination_unreachable", outage
        assert outage[0]["destination"] == sink.destination and outage[0]["reason"]
        assert outage[-1]["event"] == "destination_recovered", outage
        assert len(outage) <= 3, outage  # not one record per retry
    finally:
        node.kill()
        sink.stop()
