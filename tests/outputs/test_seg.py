"""The SEG decodes back to exactly the labels, references every source image and carries the
codes and identity a viewer and the node rely on."""

from __future__ import annotations

import highdicom as hd
import numpy as np
from pydicom.sr.codedict import codes

from hippo_scp import MANUFACTURER, SOFTWARE_NAME
from hippo_scp.assembly.selection import is_own_output
from hippo_scp.outputs.identity import SEG_SERIES_DESCRIPTION
from tests.outputs.conftest import IDENTITY


def test_seg_decodes_to_exactly_the_labels(built):
    seg = hd.seg.segread(built.seg_path)
    decoded = seg.get_pixels_by_source_instance(
        source_sop_instance_uids=[ds.SOPInstanceUID for ds in built.sources],
        combine_segments=True,
    )
    np.testing.assert_array_equal(decoded, built.volume.to_frames(built.labels))
    # Back in model orientation too: frame k == flip(labels[:, :, k].T).
    restored = np.stack([np.flip(f).T for f in decoded], axis=-1)
    np.testing.assert_array_equal(restored, built.labels)


def test_seg_is_binary_with_two_coded_segments(built):
    ds = built.seg
    assert ds.SegmentationType == "BINARY"
    assert ds.Modality == "SEG"
    assert len(ds.SegmentSequence) == 2
    expected = {1: ("Anterior hippocampus", "255549009"), 2: ("Posterior hippocampus", "255551008")}
    for item in ds.SegmentSequence:
        label, modifier = expected[item.SegmentNumber]
        assert item.SegmentLabel == label
        assert item.SegmentedPropertyCategoryCodeSequence[0].CodeValue == "91723000"
        prop = item.SegmentedPropertyTypeCodeSequence[0]
        assert (prop.CodeValue, prop.CodingSchemeDesignator) == ("5366008", "SCT")
        assert prop.SegmentedPropertyTypeModifierCodeSequence[0].CodeValue == modifier
        assert item.SegmentAlgorithmType == "AUTOMATIC"
        assert item.SegmentAlgorithmName == IDENTITY.algorithm_name
        algo = item.SegmentationAlgorithmIdentificationSequence[0]
        assert algo.AlgorithmVersion == IDENTITY.model_version
        assert IDENTITY.weights_sha256 in str(algo.AlgorithmParameters)
        family = algo.AlgorithmFamilyCodeSequence[0]
        assert family.CodeValue == codes.DCM.ArtificialIntelligence.value


def test_seg_references_every_source_image_and_shares_frame_of_reference(built):
    ds = built.seg
    src = built.sources[0]
    assert ds.FrameOfReferenceUID == src.FrameOfReferenceUID
    assert ds.StudyInstanceUID == src.StudyInstanceUID
    assert ds.SeriesInstanceUID != src.SeriesInstanceUID
    referenced = {
        item.ReferencedSOPInstanceUID
        for series in ds.ReferencedSeriesSequence
        for item in series.ReferencedInstanceSequence
    }
    assert referenced == {s.SOPInstanceUID for s in built.sources}


def test_seg_omits_empty_frames(built):
    frames = built.volume.to_frames(built.labels)
    non_empty = sum(int((frames == label).any(axis=(1, 2)).sum()) for label in (1, 2))
    assert built.seg.NumberOfFrames == non_empty < 2 * frames.shape[0]


def test_seg_identifies_the_node(built):
    ds = built.seg
    assert ds.Manufacturer == MANUFACTURER
    assert str(ds.SoftwareVersions[0]).startswith(SOFTWARE_NAME)
    assert ds.SeriesDescription == SEG_SERIES_DESCRIPTION
    assert is_own_output(ds)
    assert ds.PatientName == built.sources[0].PatientName
    assert ds.PatientID == built.sources[0].PatientID


def test_empty_prediction_still_gives_valid_objects(nifti_case, tmp_path):
    """No hippocampus found: the SEG keeps its (empty) frames, the SR reports 0 mm³."""
    from tests.dicom_factory import series_from_volume
    from tests.outputs.conftest import build_outputs

    image, label = nifti_case
    sources = series_from_volume(image[:, :, 10:18])
    out = build_outputs(sources, np.zeros_like(label[:, :, 10:18]), tmp_path)
    assert out.seg.NumberOfFrames == 2 * 8
    seg = hd.seg.segread(out.seg_path)
    decoded = seg.get_pixels_by_source_instance(
        source_sop_instance_uids=[ds.SOPInstanceUID for ds in out.sources],
        combine_segments=True,
    )
    assert not decoded.any()
    groups = hd.sr.srread(out.sr_path).content.get_volumetric_roi_measurement_groups()
    assert [g.get_measurements(name=codes.SCT.Volume)[0].value for g in groups] == [0, 0, 0]
