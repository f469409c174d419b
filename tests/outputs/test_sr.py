"""The TID 1500 SR: three volumetric groups whose volumes equal SEG voxel counts x voxel
volume, references to the SEG and the source images, and a clean dcmtk parse."""

from __future__ import annotations

import shutil
import subprocess

import highdicom as hd
import numpy as np
import pytest
from pydicom import Dataset
from pydicom.multival import MultiValue
from pydicom.sr.codedict import codes

from hippo_scp import MANUFACTURER, SOFTWARE_NAME
from hippo_scp.assembly.selection import is_own_output
from hippo_scp.outputs.identity import SR_SERIES_DESCRIPTION, model_version_of
from hippo_scp.outputs.sr import read_volumes
from tests.outputs.conftest import IDENTITY

#: Fixed tracking UIDs, so two builds of one SR can be compared item by item.
TRACKING_UIDS = {
    0: "1.2.826.0.1.3680043.10.1",
    1: "1.2.826.0.1.3680043.10.2",
    2: "1.2.826.0.1.3680043.10.3",
}


def _groups(built):
    sr = hd.sr.srread(built.sr_path)
    assert isinstance(sr, hd.sr.Comprehensive3DSR)
    groups = sr.content.get_volumetric_roi_measurement_groups()
    return {g.tracking_identifier: g for g in groups}


def test_sr_volumes_equal_seg_voxel_counts_times_voxel_volume(built):
    seg = hd.seg.segread(built.seg_path)
    masks = seg.get_pixels_by_source_instance(
        source_sop_instance_uids=[ds.SOPInstanceUID for ds in built.sources],
    )  # (frames, rows, cols, segments)
    voxel = float(np.prod(built.volume.spacing_mm))
    assert voxel == pytest.approx(0.9 * 0.8 * 1.5)
    counts = {n: int(masks[..., n - 1].sum()) for n in (1, 2)}
    expected = {
        "Anterior hippocampus": counts[1] * voxel,
        "Posterior hippocampus": counts[2] * voxel,
        "Hippocampus": (counts[1] + counts[2]) * voxel,
    }
    groups = _groups(built)
    assert set(groups) == set(expected)
    for name, group in groups.items():
        (measurement,) = group.get_measurements(name=codes.SCT.Volume)
        assert measurement.unit == codes.UCUM.CubicMillimeter
        assert measurement.value == pytest.approx(expected[name], rel=1e-9)
    assert counts[1] == int((built.labels == 1).sum())


def test_sr_groups_reference_segments_sites_and_sources(built):
    groups = _groups(built)
    source_uids = {ds.SOPInstanceUID for ds in built.sources}
    segments = {"Anterior hippocampus": [1], "Posterior hippocampus": [2], "Hippocampus": [1, 2]}
    modifiers = {"Anterior hippocampus": "255549009", "Posterior hippocampus": "255551008"}
    seg_uids = {g.tracking_uid for g in groups.values()}
    assert len(seg_uids) == 3
    for name, group in groups.items():
        assert group.reference_type == codes.DCM.ReferencedSegment
        item = group[0].ContentSequence
        (ref,) = [i for i in item if i.ConceptNameCodeSequence[0].CodeValue == "121191"]
        sop = ref.ReferencedSOPSequence[0]
        assert sop.ReferencedSOPInstanceUID == built.seg.SOPInstanceUID
        numbers = sop.ReferencedSegmentNumber
        numbers = list(numbers) if isinstance(numbers, MultiValue | list) else [numbers]
        assert [int(n) for n in numbers] == segments[name]
        sources = {
            i.ReferencedSOPSequence[0].ReferencedSOPInstanceUID
            for i in item
            if i.ConceptNameCodeSequence[0].CodeValue == "121233"  # Source Image for Segmentation
        }
        assert sources == source_uids
        (site,) = group.finding_sites
        assert site.value == codes.SCT.Hippocampus
        modifier = site.topographical_modifier
        if name in modifiers:
            assert modifier is not None and modifier.value == modifiers[name]
        else:
            assert modifier is None


def test_sr_has_image_library_and_algorithm_identity(built):
    sr = built.sr
    text = str(sr)
    assert sr.SeriesDescription == SR_SERIES_DESCRIPTION
    assert sr.Manufacturer == MANUFACTURER
    assert str(sr.SoftwareVersions[0]).startswith(SOFTWARE_NAME)
    assert is_own_output(sr)
    assert sr.StudyInstanceUID == built.sources[0].StudyInstanceUID
    assert "Image Library" in text
    assert IDENTITY.algorithm_name in text
    assert IDENTITY.model_version in text
    assert IDENTITY.weights_sha256 in text
    evidence = {
        i.ReferencedSOPInstanceUID
        for study in sr.CurrentRequestedProcedureEvidenceSequence
        for series in study.ReferencedSeriesSequence
        for i in series.ReferencedSOPSequence
    }
    assert {ds.SOPInstanceUID for ds in built.sources} | {built.seg.SOPInstanceUID} <= evidence
    assert any(
        IDENTITY.weights_sha256 in str(item.get("ContributionDescription", ""))
        and item.Manufacturer == MANUFACTURER
        for item in sr.ContributingEquipmentSequence
    )


@pytest.mark.skipif(shutil.which("dsrdump") is None, reason="dcmtk dsrdump not installed")
def test_dsrdump_reads_the_sr_without_warnings(built):
    run = subprocess.run(
        ["dsrdump", "-v", str(built.sr_path)], capture_output=True, text=True, timeout=60
    )
    output = (run.stdout + run.stderr).lower()
    assert run.returncode == 0, output[-2000:]
    assert "warning" not in output and "error" not in output, output[:2000]
    assert "imaging measurement report" in output


def _is_library(item) -> bool:
    return item.ConceptNameCodeSequence[0].CodeValue == codes.DCM.ImageLibrary.value


def _descriptors(items) -> list[dict]:
    """Descriptor content items (not IMAGE entries) as JSON, in a canonical order."""
    found = [i.to_json_dict() for i in items if i.ValueType != "IMAGE"]
    return sorted(found, key=lambda d: str(d["0040A043"]))  # Concept Name Code Sequence


def _library_entries(library) -> list[tuple[str, list[dict]]]:
    """(referenced SOP Instance UID, all descriptors that apply to it) per library entry:
    its group's descriptors (TID 1600 row 3) plus its own."""
    entries = []
    for group in library.ContentSequence:
        shared = [i for i in group.ContentSequence if i.ValueType != "IMAGE"]
        for entry in group.ContentSequence:
            if entry.ValueType == "IMAGE":
                own = list(entry.get("ContentSequence", []))
                uid = entry.ReferencedSOPSequence[0].ReferencedSOPInstanceUID
                entries.append((uid, _descriptors(shared + own)))
    return entries


def test_image_library_describes_each_slice_as_highdicom_would(built, monkeypatch):
    """The library is inserted after the document is built (for speed) and shares the
    descriptors common to all slices at group level: the rest of the content tree must be
    exactly what ``MeasurementReport(referenced_images=...)`` gives, and every entry must be
    described by the same descriptors (codes, values, units) as in highdicom's library."""
    from hippo_scp.outputs import sr as sr_module
    from hippo_scp.outputs.identity import reference_header

    def build():
        return sr_module.build_volume_sr(
            built.sources,
            built.seg,
            built.volumes,
            IDENTITY,
            tracking_uids=TRACKING_UIDS,
            series_instance_uid="1.2.826.0.1.3680043.10.4",
            sop_instance_uid="1.2.826.0.1.3680043.10.5",
        )

    fast = build()
    library_headers = [reference_header(ds) for ds in built.sources]
    highdicom_report = hd.sr.MeasurementReport

    def with_library(*args, **kwargs):
        kwargs["referenced_images"] = library_headers
        return highdicom_report(*args, **kwargs)

    monkeypatch.setattr(sr_module.hd.sr, "MeasurementReport", with_library)
    monkeypatch.setattr(sr_module, "_insert_image_library", lambda sr, headers: None)
    reference = build()

    def content(sr):
        return [i for i in sr.ContentSequence if not _is_library(i)]

    def library(sr):
        (found,) = [i for i in sr.ContentSequence if _is_library(i)]
        return found

    assert [i.to_json_dict() for i in content(fast)] == [
        i.to_json_dict() for i in content(reference)
    ]
    # at the same place: after "Procedure reported", before "Imaging Measurements"
    assert [_is_library(i) for i in fast.ContentSequence] == [
        _is_library(i) for i in reference.ContentSequence
    ]
    fast_entries = _library_entries(library(fast))
    assert fast_entries == _library_entries(library(reference))
    assert [uid for uid, _ in fast_entries] == [ds.SOPInstanceUID for ds in built.sources]
    (group,) = library(fast).ContentSequence
    own = [len(e.ContentSequence) for e in group.ContentSequence if e.ValueType == "IMAGE"]
    assert own == [3] * len(built.sources)  # only Image Position (Patient) X, Y, Z per slice


def test_slices_of_differing_geometry_get_full_descriptors_per_entry(built):
    """Shared descriptors only when they really are shared: otherwise highdicom's library."""
    from hippo_scp.outputs.identity import reference_header
    from hippo_scp.outputs.image_library import build_image_library

    headers = [reference_header(ds) for ds in built.sources[:3]]
    headers[1].PixelSpacing = [2.0, 2.0]
    library = build_image_library(headers)
    assert library.to_json_dict() == hd.sr.ImageLibrary(headers)[0].to_json_dict()


def test_read_volumes_returns_what_the_sr_encodes(built):
    from hippo_scp.outputs.sr import read_volumes

    volumes = read_volumes(built.sr)  # the SR as written to disk and read back
    assert volumes == {
        "Anterior hippocampus": pytest.approx(built.volumes.anterior_mm3),
        "Posterior hippocampus": pytest.approx(built.volumes.posterior_mm3),
        "Hippocampus": pytest.approx(built.volumes.total_mm3),
    }
    assert volumes["Anterior hippocampus"] != volumes["Posterior hippocampus"]


def test_seg_and_sr_share_one_set_of_reference_headers(built):
    """The analyzer copies each source header once for both builders: building the SEG from
    the shared copies must leave them as they were, and the SR built from them must equal the
    SR built from the sources."""
    from hippo_scp.outputs.identity import reference_headers
    from hippo_scp.outputs.seg import build_segmentation
    from hippo_scp.outputs.sr import build_volume_sr

    sources = list(built.volume.source_datasets)
    headers = reference_headers(sources)
    assert reference_headers(headers) is headers  # no second copy
    before = [h.to_json_dict() for h in headers]
    uids = TRACKING_UIDS
    frames = built.volume.to_frames(built.labels)
    seg = build_segmentation(headers, frames, IDENTITY, tracking_uids=uids)
    assert [h.to_json_dict() for h in headers] == before

    def sr_from(datasets):
        return build_volume_sr(
            datasets,
            seg,
            built.volumes,
            IDENTITY,
            tracking_uids=uids,
            series_instance_uid="1.2.826.0.1.3680043.10.4",
            sop_instance_uid="1.2.826.0.1.3680043.10.5",
        )

    shared, fresh = sr_from(headers), sr_from(sources)
    for keyword in ("ContentSequence", "CurrentRequestedProcedureEvidenceSequence"):
        assert shared[keyword].to_json() == fresh[keyword].to_json()
    assert [h.to_json_dict() for h in headers] == before


def test_model_version_is_read_back_from_software_versions(built) -> None:
    """What the prior lookup and the examples read: the SoftwareVersions value the builders
    write (OutputIdentity.software_versions)."""
    assert model_version_of(built.sr) == IDENTITY.model_version
    ds = Dataset()
    assert model_version_of(ds) == ""
    ds.SoftwareVersions = "hippo-scp 0.1.0"
    assert model_version_of(ds) == ""


def test_reading_without_the_image_library_gives_the_same_volumes(built) -> None:
    """The prior lookup's faster reading: same volumes, the SR itself untouched."""
    before = len(built.sr.ContentSequence)
    assert read_volumes(built.sr, image_library=False) == read_volumes(built.sr)
    assert len(built.sr.ContentSequence) == before
    meanings = [item.ConceptNameCodeSequence[0].CodeMeaning for item in built.sr.ContentSequence]
    assert "Image Library" in meanings  # there was something to leave out
