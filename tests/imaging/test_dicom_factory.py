"""The shared fixture library builds what a scanner would send (other suites rely on it)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.uid import MRImageStorage

from hippo_scp.imaging.series_volume import series_to_volume
from tests.dicom_factory import (
    INTEGER_CASE,
    load_nifti_case,
    read_series,
    require_data,
    series_from_volume,
    write_series,
)

#: Type 1 / 2 attributes of the modules highdicom and PACS viewers read from a source image.
REQUIRED = [
    "SOPClassUID",
    "SOPInstanceUID",
    "StudyInstanceUID",
    "SeriesInstanceUID",
    "FrameOfReferenceUID",
    "PatientName",
    "PatientID",
    "PatientBirthDate",
    "PatientSex",
    "StudyDate",
    "StudyTime",
    "StudyID",
    "AccessionNumber",
    "ReferringPhysicianName",
    "Modality",
    "SeriesNumber",
    "InstanceNumber",
    "Manufacturer",
    "PositionReferenceIndicator",
    "ImagePositionPatient",
    "ImageOrientationPatient",
    "PixelSpacing",
    "SliceThickness",
    "SamplesPerPixel",
    "PhotometricInterpretation",
    "Rows",
    "Columns",
    "BitsAllocated",
    "BitsStored",
    "HighBit",
    "PixelRepresentation",
    "PixelData",
    "ImageType",
    "ScanningSequence",
    "SequenceVariant",
    "ScanOptions",
    "MRAcquisitionType",
    "EchoTime",
    "EchoTrainLength",
]


@pytest.fixture(scope="module")
def slab() -> np.ndarray:
    require_data()
    image, label = load_nifti_case(INTEGER_CASE)
    assert image.shape == label.shape and image.dtype == np.float32 and label.dtype == np.uint8
    assert set(np.unique(label)) <= {0, 1, 2}
    return image[:, :, 10:16]


def test_series_has_complete_modules_and_one_study(slab: np.ndarray) -> None:
    datasets = series_from_volume(slab, study_uid="1.2.3.4")

    for ds in datasets:
        missing = [k for k in REQUIRED if k not in ds]
        assert not missing
        assert ds.SOPClassUID == MRImageStorage
        assert ds.file_meta.MediaStorageSOPInstanceUID == ds.SOPInstanceUID
    assert {ds.StudyInstanceUID for ds in datasets} == {"1.2.3.4"}
    assert len({ds.SeriesInstanceUID for ds in datasets}) == 1
    assert len({ds.SOPInstanceUID for ds in datasets}) == len(datasets)
    numbers = [int(ds.InstanceNumber) for ds in datasets]
    assert sorted(numbers) == list(range(1, len(datasets) + 1)) and numbers != sorted(numbers)


def test_pixel_convention_matches_the_data_readme(slab: np.ndarray) -> None:
    datasets = series_from_volume(slab, shuffle_instance_numbers=False)
    for k, ds in enumerate(datasets):
        np.testing.assert_array_equal(ds.pixel_array, np.flip(slab[:, :, k].T))
        assert [float(v) for v in ds.ImagePositionPatient] == [0.0, 0.0, float(k)]


def test_character_set_round_trips_through_files(slab: np.ndarray, tmp_path: Path) -> None:
    datasets = series_from_volume(
        slab, patient_name="Müller^Jörg", character_set="ISO_IR 192", series_description="Hippo"
    )
    write_series(datasets, tmp_path)

    read_back = read_series(tmp_path)

    assert {str(ds.PatientName) for ds in read_back} == {"Müller^Jörg"}
    np.testing.assert_array_equal(series_to_volume(read_back).voxels, slab)


def test_write_series_hides_order_in_names(slab: np.ndarray, tmp_path: Path) -> None:
    datasets = series_from_volume(slab)
    paths = write_series(datasets, tmp_path, seed=3)

    written_order = [pydicom.dcmread(p, stop_before_pixels=True).SOPInstanceUID for p in paths]
    assert written_order != [ds.SOPInstanceUID for ds in datasets]
    assert sorted(written_order) == sorted(ds.SOPInstanceUID for ds in datasets)
