"""Orthanc + Lua routing with a DICOM sink playing the node (no model needed).

Checks the configuration (who may store), that route_dicoms.lua sends each stable series in
ONE association, that the node's own results are never routed back, and measures the
per-instance variant (route_dicoms_per_instance.lua) for comparison.
"""

from __future__ import annotations

import subprocess
import time
from pathlib import Path

import pydicom
import pytest
from pydicom.uid import generate_uid

from .conftest import Sink, Stack, wait_for

pytestmark = [pytest.mark.network, pytest.mark.e2e, pytest.mark.timeout(300)]

STUDY1_SERIES = 5
STUDY1_INSTANCES = 120


def study(data_dir: Path, n: int) -> Path:
    return data_dir / "TestVolumes" / f"Study{n}"


def routed_series(sink: Sink) -> set[str]:
    return {row[0] for a in sink.associations() for row in a["instances"]}


def log_text(stack: Stack) -> str:
    return "".join(p.read_text(errors="replace") for p in stack.run_dir.glob("orthanc*.log"))


def fake_result(source: Path, out: Path, *, modality: str, manufacturer: str) -> Path:
    """A folder with a one-instance series in the source's study, like (or unlike) a result."""
    ds = pydicom.dcmread(source)
    ds.SeriesInstanceUID = generate_uid()
    ds.SOPInstanceUID = generate_uid()
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    ds.Modality = modality
    ds.Manufacturer = manufacturer
    ds.SeriesDescription = f"fake {modality} by {manufacturer}"
    out.mkdir(parents=True, exist_ok=True)
    path = out / f"{modality}-{manufacturer}.dcm"
    ds.save_as(path, enforce_file_format=True)
    return out


def test_orthanc_refuses_unknown_calling_aet(sink_stack: tuple[Stack, Sink], data_dir: Path):
    stack, _ = sink_stack
    folder = study(data_dir, 1) / "13_HCropVolume"
    with pytest.raises(subprocess.CalledProcessError):
        stack.send(folder, calling_aet="NOBODY")
    assert stack.statistics()["CountInstances"] == 0
    stack.send(folder)  # the registered scanner AE
    assert stack.statistics()["CountInstances"] > 0


def test_echo_check_covers_every_link(sink_stack: tuple[Stack, Sink]):
    stack, _ = sink_stack
    result = stack.script("echo_check.sh", check=False)
    assert result.returncode == 0, result.stderr
    assert result.stderr.count("OK ") == 3


def test_each_stable_series_goes_in_one_association(sink_stack: tuple[Stack, Sink], data_dir: Path):
    stack, sink = sink_stack
    stack.send(study(data_dir, 1))
    wait_for(lambda: sink.instance_count() >= STUDY1_INSTANCES, 60, "Study1 routed to the sink")
    time.sleep(3)  # anything extra (a duplicate send) would arrive now
    associations = sink.associations()
    assert sink.instance_count() == STUDY1_INSTANCES
    assert len(associations) == STUDY1_SERIES
    for association in associations:
        assert association["calling_aet"] == "ORTHANC"
        assert len({row[0] for row in association["instances"]}) == 1  # one series each
    assert len(routed_series(sink)) == STUDY1_SERIES


@pytest.mark.parametrize(
    "sink_stack",
    [("series", " hippocrop ,Localizer"), ("instance", " hippocrop ,Localizer")],
    indirect=True,
)
def test_route_series_sends_only_the_listed_descriptions(
    sink_stack: tuple[Stack, Sink], data_dir: Path
):
    """HIPPO_ROUTE_SERIES (any case, spaces trimmed), with either routing script: only
    HippoCrop leaves Orthanc; the other four series stay in the PACS (series routing logs
    why for each; per-instance routing says what it routes once, at start-up)."""
    stack, sink = sink_stack
    per_instance = stack.env["ORTHANC_ROUTING"] == "instance"
    stack.send(study(data_dir, 1))
    hippocrop = data_dir / "TestVolumes" / "Study1" / "13_HCropVolume"
    wanted = {
        pydicom.dcmread(next(p for p in hippocrop.iterdir() if p.is_file())).SeriesInstanceUID
    }
    wait_for(lambda: routed_series(sink) == wanted, 60, "HippoCrop routed to the sink")
    if not per_instance:
        wait_for(
            lambda: log_text(stack).count("not in HippoScp.RouteSeriesDescriptions") >= 4,
            30,
            "the other four series logged as not routed",
        )
    time.sleep(2)  # a wrongly routed series would arrive by now
    assert routed_series(sink) == wanted
    assert sink.instance_count() == 32  # every HippoCrop slice, nothing else
    assert stack.statistics()["CountInstances"] == STUDY1_INSTANCES  # all kept in the PACS
    routed = "instances of series" if per_instance else "series"
    assert f"routing only {routed} described as (any case) hippocrop, localizer" in log_text(stack)


def test_smaller_series_get_the_higher_job_priority(sink_stack: tuple[Stack, Sink], data_dir: Path):
    """Jobs waiting for a ConcurrentJobs slot go smallest first: the HippoCrop series (32 tiny
    slices, ~150 KiB) outranks the 22-slice 512x512 series (~11 MiB each)."""
    stack, sink = sink_stack
    stack.send(study(data_dir, 1))
    wait_for(lambda: sink.instance_count() >= STUDY1_INSTANCES, 60, "Study1 routed to the sink")
    jobs = [j for j in stack.get("/jobs?expand") if j["Type"] == "DicomModalityStore"]
    assert len(jobs) == STUDY1_SERIES, jobs
    by_size = {}
    for job in jobs:
        series = stack.get(f"/series/{job['Content']['ParentResources'][0]}")
        kib = int(stack.get(f"/series/{series['ID']}/statistics")["DiskSize"]) // 1024
        by_size[kib] = (job["Priority"], series["MainDicomTags"].get("SeriesDescription"))
    assert [by_size[k][0] for k in sorted(by_size)] == [-k for k in sorted(by_size)]
    smallest = by_size[min(by_size)]
    assert smallest[1] == "HippoCrop" and smallest[0] == max(p for p, _ in by_size.values())


@pytest.mark.parametrize("sink_stack", ["series", "instance"], indirect=True)
def test_node_results_are_never_routed_back(
    sink_stack: tuple[Stack, Sink], data_dir: Path, tmp_path: Path
):
    stack, sink = sink_stack
    source = next((study(data_dir, 1) / "13_HCropVolume").glob("*.dcm"))
    # What the node sends back: Manufacturer hippo-scp, calling AE HIPPOAI.
    stack.send(
        fake_result(source, tmp_path / "a", modality="OT", manufacturer="hippo-scp"),
        calling_aet="HIPPOAI",
    )
    # Marker alone (uploaded by someone else) and origin alone (no marker) must both stop it.
    stack.send(
        fake_result(source, tmp_path / "b", modality="OT", manufacturer="hippo-scp"),
    )
    stack.send(
        fake_result(source, tmp_path / "c", modality="MR", manufacturer="ACME"),
        calling_aet="HIPPOAI",
    )
    # A non-image object from the scanner is not worth routing either.
    stack.send(fake_result(source, tmp_path / "d", modality="SEG", manufacturer="ACME"))
    assert stack.statistics()["CountSeries"] == 4
    # Then a real series, which must be routed: once it arrived, Orthanc has had time to
    # consider the fakes too (they were stable earlier).
    stack.send(study(data_dir, 1) / "13_HCropVolume")
    wait_for(lambda: sink.instance_count() > 0, 60, "the HippoCrop series routed")
    time.sleep(int(stack.env["ORTHANC_STABLE_AGE"]) + 2)
    routed = {(row[2], row[3]) for a in sink.associations() for row in a["instances"]}
    assert all(manufacturer not in ("hippo-scp", "ACME") for _, manufacturer in routed), routed
    assert {modality for modality, _ in routed} == {"MR"}
    assert len(routed_series(sink)) == 1


@pytest.mark.parametrize("sink_stack", ["instance"], indirect=True)
def test_per_instance_routing_mixes_series_in_one_association(
    sink_stack: tuple[Stack, Sink], data_dir: Path
):
    """The course's OnStoredInstance routing: everything arrives, but not one series each."""
    stack, sink = sink_stack
    stack.send(study(data_dir, 1))
    wait_for(lambda: sink.instance_count() >= STUDY1_INSTANCES, 60, "Study1 routed to the sink")
    time.sleep(3)
    associations = sink.associations()
    assert sink.instance_count() == STUDY1_INSTANCES
    assert len(routed_series(sink)) == STUDY1_SERIES
    series_per_association = [len({r[0] for r in a["instances"]}) for a in associations]
    print(
        f"per-instance routing: {len(associations)} association(s) for {STUDY1_SERIES} "
        f"series, series per association: {series_per_association}"
    )
    # Measured on Orthanc 1.10.1: a single association carrying all five series.
    assert max(series_per_association) > 1
