"""Load (issue #9), CI-sized: 4 concurrent senders re-sending Study1..3 for a bounded time.

The same loop as ``benchmarks/soak_load.py`` (8 senders, minutes), smaller so it fits CI
(~60-90 s on 2 cores): the HippoCrop series of the three test studies, dcmtk ``storescu``.

* phase 1: each study sent once, concurrently; the three result sets arrive (analysis runs
  while the other studies are still being received);
* phase 2: 4 senders loop over the studies for ``SOAK_S`` seconds; ``node.max_associations``
  is set to exactly the number of senders, so any refusal is a refusal *below* the maximum;
* then: still exactly one result set per study (re-sends of unchanged content are not
  re-analysed, ``triggers.reanalyze_unchanged`` is false), every set covers the whole series,
  no association refused, no C-STORE failed, node peak RSS (psutil + VmHWM) < 1 GiB.
"""

from __future__ import annotations

import json
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pydicom
import pytest

from benchmarks.soak_load import RssSampler, first_delivery, run_load, study_folders
from tests.hardening.conftest import (
    HardNode,
    Sink,
    assert_sane_result_set,
    for_study,
    free_port,
    kind,
    wait_until,
    write_node_config,
)

pytestmark = [pytest.mark.network, pytest.mark.timeout(300)]

SENDERS = 4
SOAK_S = 25.0
SETTLE_S = 3
RSS_LIMIT = 1024**3
CROP_SLICES = {"Study1": 32, "Study2": 35, "Study3": 40}


@pytest.fixture
def load_node(
    tmp_path: Path, hardening_weights: Path, test_volumes: Path
) -> Iterator[tuple[HardNode, Sink]]:
    sink = Sink(ae_title="LOADSINK").start()
    config = write_node_config(
        tmp_path / "ae_config.yaml",
        hardening_weights,
        node={"max_associations": SENDERS},
        triggers={"reanalyze_unchanged": False},
    )
    node = HardNode(config, free_port(), sink.destination, settle=SETTLE_S).start()
    try:
        yield node, sink
    finally:
        node.kill()
        sink.stop()


def test_concurrent_senders_one_result_set_per_study_bounded_memory(
    load_node: tuple[HardNode, Sink], test_volumes: Path, record_property
) -> None:
    node, sink = load_node
    studies = study_folders(root=test_volumes)
    sampler = RssSampler(node.pid)
    sampler.start()

    # Phase 1: first delivery of each study, concurrently.
    outcomes = first_delivery(node.port, studies)
    assert all(code == 0 and not refused and not failed for _, code, refused, failed, _ in
               outcomes), outcomes  # fmt: skip
    study_uids, identifiers = {}, set()
    for name, folder in studies.items():
        first = pydicom.dcmread(next(folder.glob("*.dcm")), stop_before_pixels=True)
        study_uids[name] = str(first.StudyInstanceUID)
        for keyword in ("PatientName", "PatientID", "PatientBirthDate"):
            value = str(first.get(keyword) or "")
            identifiers.update(p for p in [value, *value.split("^")] if len(p) >= 3)
    assert wait_until(
        lambda: all(len(for_study(sink.snapshot(), uid)) >= 3 for uid in study_uids.values()),
        180,
    ), node.output[-3000:]

    # Phase 2: soak.
    report = run_load(node.port, studies, SENDERS, SOAK_S)
    time.sleep(SETTLE_S + 1 + 3)  # settle + release grace + margin: a re-analysis would show
    memory = sampler.stop()

    received = sink.snapshot()
    summary = {**report.to_dict(), "peak_rss_mib": round(memory["peak_rss_bytes"] / 2**20, 1)}
    record_property("load", json.dumps(summary))
    print("load:", json.dumps(summary))

    assert report.sends >= 3 * SENDERS, summary  # every sender re-sent several times
    node_warnings = [line for line in node.output.splitlines() if "WARNING" in line][-10:]
    assert not report.refused, (report.refused[:3], node_warnings)
    assert not report.failed, (report.failed[:3], node_warnings)
    for name, uid in study_uids.items():
        results = for_study(received, uid)
        assert Counter(kind(ds) for ds in results) == Counter(SEG=1, SR=1, SC=1), (
            name,
            sorted(kind(ds) for ds in results),
        )
        volumes = assert_sane_result_set(results, CROP_SLICES[name])
        assert volumes
    assert {str(ds.StudyInstanceUID) for ds in received} == set(study_uids.values())
    assert node.running
    assert 0 < memory["peak_rss_bytes"] < RSS_LIMIT, memory

    audit = [
        json.loads(line)
        for line in (node.config.parent / "audit.jsonl").read_text().splitlines()
        if line.strip()
    ]
    assert not [r for r in audit if r.get("event") == "association_rejected"]
    accepted = sum(1 for r in audit if r.get("event") == "association_accepted")
    assert accepted >= report.sends + len(outcomes)
    # Privacy: the real studies' patient name / ID / birth date never reach the log.
    leaked = [i for i in identifiers if i in node.output]
    assert not leaked, leaked
