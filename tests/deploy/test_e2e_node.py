"""End to end, all real processes on 127.0.0.1: Orthanc + Lua routing + the hippo-scp node.

Study1..3 are sent to Orthanc like a scanner would (storescu, all series); within a bounded
wait Orthanc must hold exactly one SR + SEG + Secondary Capture per study, with the volumes
``hippo-scp analyze`` computes on the same files, and nothing may loop afterwards.
The OHIF browser tests (test_ohif_browser.py) reuse the same stack (session fixtures).
"""

from __future__ import annotations

import datetime
import json
import subprocess
import time
from pathlib import Path

import pydicom
import pytest

from benchmarks.study_factory import as_new_study

from .conftest import (
    REPO,
    STUDIES,
    WEIGHTS,
    Stack,
    all_complete,
    require_node,
    require_orthanc,
    wait_for,
)

pytestmark = [pytest.mark.network, pytest.mark.e2e, pytest.mark.timeout(900)]

RESULT_WAIT_S = 300
SR_NAMES = {
    "Anterior hippocampus": "anterior_mm3",
    "Posterior hippocampus": "posterior_mm3",
    "Hippocampus": "total_mm3",
}


def store_jobs(stack: Stack) -> list[dict]:
    return [j for j in stack.get("/jobs?expand") if j["Type"] == "DicomModalityStore"]


@pytest.fixture(scope="session")
def analyzed(node_stack: Stack, data_dir: Path, tmp_path_factory) -> dict[str, dict]:
    """``hippo-scp analyze --json`` on the same studies: volumes by StudyInstanceUID."""
    out = tmp_path_factory.mktemp("analyze")
    answer = subprocess.run(
        [
            str(REPO / ".venv" / "bin" / "hippo-scp"),
            "analyze",
            str(data_dir / "TestVolumes"),  # Study1..3 in one run: the model loads once
            "--out",
            str(out),
            "--json",
            "--weights",
            str(WEIGHTS),
        ],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert answer.returncode == 0, answer.stderr
    volumes: dict[str, dict] = {}
    for series in json.loads(answer.stdout)["series"]:
        assert series["status"] == "ok", series
        volumes[series["study_instance_uid"]] = series["result"]["volumes"]
    assert len(volumes) == len(STUDIES)
    return volumes


def test_one_sr_seg_sc_per_study(processed: list[dict], node_stack: Stack):
    assert len(processed) == len(STUDIES)
    for study in processed:
        counts = {kind: len(ids) for kind, ids in study["results"].items()}
        assert counts == {"sr": 1, "seg": 1, "sc": 1}, (study["study_instance_uid"], counts)
    # Orthanc's own view: 3 studies, 5 scanner series + 3 result series each.
    assert node_stack.statistics()["CountStudies"] == len(STUDIES)
    modalities = node_stack.series_by_modality()
    assert modalities["SR"] == modalities["SEG"] == modalities["OT"] == len(STUDIES)


def test_results_come_from_the_node(processed: list[dict], node_stack: Stack):
    for study in processed:
        for kind in ("sr", "seg", "sc"):
            instance = study["results"][kind][0]
            metadata = node_stack.get(f"/instances/{instance}/metadata?expand")
            assert metadata["RemoteAET"] == "HIPPOAI"
            assert metadata["Origin"] == "DicomProtocol"
            tags = node_stack.get(f"/instances/{instance}/simplified-tags")
            assert tags["Manufacturer"] == "hippo-scp"


def test_volumes_equal_hippo_scp_analyze(processed: list[dict], analyzed: dict[str, dict]):
    for study in processed:
        expected = analyzed[study["study_instance_uid"]]
        got = study["volumes_mm3"]
        assert set(got) == set(SR_NAMES), got
        for name, key in SR_NAMES.items():
            assert got[name] == pytest.approx(expected[key], abs=1e-6), (name, got, expected)


def test_orthanc_routing_stable_series_is_trusted_to_send_them_whole(
    processed: list[dict], node_stack: Stack
):
    """start_listener.sh names Orthanc a whole-series sender when it routes per series: the
    node says so at start-up and files each study's results without the release grace."""
    log = node_stack.log("hippo-scp")
    assert "reported without the 1.0 s release grace" in log
    assert "ORTHANC" in log.split("reported without the")[0].splitlines()[-1]
    delivered = [line for line in log.splitlines() if "results delivered" in line]
    assert len(delivered) >= len(STUDIES)
    assert all("trigger whole-series release" in line for line in delivered), delivered


def test_nothing_loops(processed: list[dict], node_stack: Stack):
    """Results are not routed back: counts and jobs stay put well past every timer."""
    before = node_stack.statistics()
    jobs_before = len(store_jobs(node_stack))
    wait_s = int(node_stack.env["ORTHANC_STABLE_AGE"]) + float(node_stack.env["HIPPO_SETTLE"]) + 6
    time.sleep(wait_s)
    after = node_stack.statistics()
    assert after["CountInstances"] == before["CountInstances"]
    assert after["CountSeries"] == before["CountSeries"]
    jobs = store_jobs(node_stack)
    assert len(jobs) == jobs_before
    # Exactly one store job per scanner series (5 per study), none for the node's results.
    assert len(jobs) == 5 * len(STUDIES)
    assert all(j["State"] == "Success" for j in jobs), [j["State"] for j in jobs]


@pytest.fixture
def instance_routed_stack(tmp_path: Path) -> Stack:
    require_orthanc()
    require_node()
    stack = Stack.create(tmp_path / "run", routing="instance", route_series="")
    stack.start("--no-ohif")
    try:
        yield stack
    finally:
        stack.stop()


def test_node_is_correct_under_per_instance_routing(instance_routed_stack: Stack, data_dir):
    """route_dicoms_per_instance.lua mixes series (and studies) in associations; the node
    must still produce exactly one result set per study."""
    stack = instance_routed_stack
    for n in (1, 2):
        stack.send(data_dir / "TestVolumes" / f"Study{n}")
    studies = wait_for(
        lambda: all_complete(stack, 2),
        RESULT_WAIT_S,
        "results under per-instance routing\n" + stack.log("hippo-scp")[-3000:],
        interval=1.0,
    )
    time.sleep(int(stack.env["ORTHANC_STABLE_AGE"]) + float(stack.env["HIPPO_SETTLE"]) + 6)
    studies = all_complete(stack, 2)
    for study in studies:
        counts = {kind: len(ids) for kind, ids in study["results"].items()}
        assert counts == {"sr": 1, "seg": 1, "sc": 1}, counts
    # Per-instance routing may split a series: Orthanc must not be a whole-series sender.
    log = stack.log("hippo-scp")
    assert "whole-series release" not in log and "reported without the" not in log


def test_demo_script_end_to_end(tmp_path: Path):
    """The README's main command, on its own ports and run folder (install step skipped:
    tests/run_all.sh has just run install.sh)."""
    require_orthanc()
    require_node()
    stack = Stack.create(tmp_path / "run")
    if WEIGHTS != REPO / "model_weights" / "hippo_unet.safetensors":
        stack.env["HIPPO_WEIGHTS"] = str(WEIGHTS)
    try:
        answer = stack.script(
            "demo.sh", "--no-install", "--timeout", "300", timeout=600, check=False
        )
        assert answer.returncode == 0, answer.stderr[-3000:]
        out = answer.stdout
        assert "SR x1, SEG x1, SC x1" in out
        for name in SR_NAMES:
            assert name in out
        assert f"{stack.ohif_url}/viewer?StudyInstanceUIDs=1." in out
        assert f"{stack.orthanc_url}/app/explorer.html" in out
        # The default routing: each HippoCrop image as Orthanc stores it (the filter derived
        # from ae_config.yaml's rules), the other four series stay in the PACS; Orthanc is
        # not a whole-series sender then, so the node keeps its release grace.
        orthanc_log = stack.log("orthanc")
        assert "routing only instances of series described as (any case) hippocrop" in orthanc_log
        node_log = stack.log("hippo-scp")
        delivered = [line for line in node_log.splitlines() if "results delivered" in line]
        assert delivered and all("trigger release" in line for line in delivered), delivered
    finally:
        stopped = stack.script("stop_stack.sh", check=False)
    assert stopped.returncode == 0
    assert not list((tmp_path / "run").glob("*.pid")), "stop_stack.sh left PID files"


def _follow_up_of(series: Path, out: Path, years: int) -> None:
    """The HippoCrop series of ``series`` as the same patient's examination ``years`` later."""
    out.mkdir(parents=True)
    files = sorted(series.glob("*.dcm"))
    datasets = [pydicom.dcmread(path) for path in files]
    date = str(datasets[0].StudyDate)
    later = f"{int(date[:4]) + years:04d}{date[4:]}"
    for path, ds in zip(
        files, as_new_study(datasets, StudyDate=later, SeriesDate=later), strict=True
    ):
        ds.save_as(out / path.name)


def test_a_follow_up_is_compared_with_the_prior_result_in_the_pacs(
    instance_routed_stack: Stack, data_dir: Path, tmp_path: Path
):
    """The node asks Orthanc (C-FIND / C-GET, as the demo's config grants it) for the
    patient's earlier SR and reports the change: the same images two years later -> 0.0 %."""
    stack = instance_routed_stack
    crop = data_dir / "TestVolumes" / "Study1" / "13_HCropVolume"
    header = pydicom.dcmread(next(crop.glob("*.dcm")), stop_before_pixels=True)
    stack.send(crop)
    wait_for(lambda: all_complete(stack, 1), RESULT_WAIT_S, "results of Study1", interval=1.0)
    _follow_up_of(crop, tmp_path / "later", years=2)
    stack.send(tmp_path / "later")
    studies = wait_for(
        lambda: all_complete(stack, 2), RESULT_WAIT_S, "results of the follow-up", interval=1.0
    )
    assert len(studies) == 2
    log = stack.log("hippo-scp")
    assert "no comparison with a prior (none:" in log  # the first: nothing earlier in the PACS
    compared = [line for line in log.splitlines() if "compared with the prior examination" in line]
    assert len(compared) == 1, log[-3000:]
    year, month, day = (
        int(header.StudyDate[:4]),
        int(header.StudyDate[4:6]),
        int(header.StudyDate[6:]),
    )
    days = (datetime.date(year + 2, month, day) - datetime.date(year, month, day)).days
    assert f"examination {days} days earlier" in compared[0]
    assert compared[0].endswith("(+0.0 %)"), compared[0]
    delivered = [line for line in log.splitlines() if "results delivered" in line]
    assert len(delivered) == 2 and all(", priors " in line for line in delivered), delivered
    # the audit log (in the stack's run folder) records both outcomes; status sums them
    audit = [json.loads(line) for line in (stack.run_dir / "audit.jsonl").read_text().splitlines()]
    priors = [r.get("prior") for r in audit if r["event"] == "series_analysis"]
    assert priors == ["none", "compared"], priors
    status = subprocess.run(
        [
            str(REPO / ".venv" / "bin" / "hippo-scp"), "status",
            "--config", str(REPO / "ae_config.yaml"),
            "--port", stack.env["HIPPO_PORT"], "--outbox", str(stack.run_dir / "outbox"),
            "--audit-log", str(stack.run_dir / "audit.jsonl"),
        ],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert status.returncode == 0, status.stdout + status.stderr
    assert "prior comparisons: 1 compared, 1 without an earlier result, 0 failed" in status.stdout
    assert str(header.PatientID) not in log and str(header.PatientName) not in log
