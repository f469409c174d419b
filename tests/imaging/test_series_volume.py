"""Series -> volume: every transfer syntax, real geometry, and one test per refusal.

Series are built from the hippocampus NIfTI training pairs (see ``tests/dicom_factory.py``), so
"read back equals the NIfTI array" is the pixel convention of the data README checked end to
end. InstanceNumbers are shuffled and the dataset lists are shuffled before reading: only the
position along the slice normal may order slices.
"""

from __future__ import annotations

import copy
import math
import random
from collections.abc import Callable

import numpy as np
import pydicom
import pytest
from pydicom.dataset import Dataset
from pydicom.uid import (
    ExplicitVRBigEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    JPEG2000Lossless,
    JPEGBaseline8Bit,
    JPEGLosslessSV1,
    JPEGLSLossless,
    RLELossless,
    generate_uid,
)

from hippo_scp.imaging.series_volume import (
    AbsurdSizeError,
    DuplicateSliceError,
    InconsistentGeometryError,
    MissingGeometryError,
    MissingPixelDataError,
    NonUniformSpacingError,
    SeriesVolume,
    SliceGapError,
    TooFewSlicesError,
    UndecodablePixelDataError,
    UnsupportedPhotometricError,
    VolumeError,
    series_to_volume,
)
from tests.dicom_factory import (
    FLOAT_CASE,
    INTEGER_CASE,
    LOSSLESS_TRANSFER_SYNTAXES,
    LOSSY_TRANSFER_SYNTAXES,
    TEST_VOLUMES_DIR,
    enhanced_from_series,
    load_nifti_case,
    read_series,
    require_data,
    require_transfer_syntax,
    series_from_volume,
    write_series,
)

PATIENT_NAME = "Test^Patient"
PATIENT_ID = "TEST-0001"


@pytest.fixture(scope="module")
def case() -> tuple[np.ndarray, np.ndarray]:
    require_data()
    return load_nifti_case(INTEGER_CASE)


@pytest.fixture(scope="module")
def image(case: tuple[np.ndarray, np.ndarray]) -> np.ndarray:
    return case[0]


@pytest.fixture(scope="module")
def slab(image: np.ndarray) -> np.ndarray:
    """12 slices through the hippocampus: enough for geometry tests, quick to encode."""
    return image[:, :, 10:22]


@pytest.fixture(scope="module")
def base_series(slab: np.ndarray) -> list[Dataset]:
    """A plain Explicit VR Little Endian series, built once; tests mutate deep copies."""
    return series_from_volume(slab)


def shuffled(datasets: list[Dataset], seed: int = 7) -> list[Dataset]:
    result = list(datasets)
    random.Random(seed).shuffle(result)
    return result


def read(datasets: list[Dataset], **kwargs: int) -> SeriesVolume:
    return series_to_volume(shuffled(datasets), **kwargs)


def tilted_orientation() -> tuple[float, ...]:
    """Row/column directions rotated 20 degrees about x, then 10 degrees about z."""
    a, b = math.radians(20), math.radians(10)
    rx = np.array([[1, 0, 0], [0, math.cos(a), -math.sin(a)], [0, math.sin(a), math.cos(a)]])
    rz = np.array([[math.cos(b), -math.sin(b), 0], [math.sin(b), math.cos(b), 0], [0, 0, 1]])
    rotation = rz @ rx
    return tuple(rotation[:, 0]) + tuple(rotation[:, 1])


# --- round trips -----------------------------------------------------------------------------


@pytest.mark.parametrize("transfer_syntax", LOSSLESS_TRANSFER_SYNTAXES, ids=lambda ts: ts.name)
def test_lossless_syntaxes_read_back_the_nifti_array_exactly(
    image: np.ndarray, transfer_syntax: str
) -> None:
    require_transfer_syntax(transfer_syntax)
    datasets = series_from_volume(image, transfer_syntax=transfer_syntax)
    assert datasets[0].file_meta.TransferSyntaxUID == transfer_syntax

    volume = read(datasets)

    assert volume.voxels.dtype == np.float32
    np.testing.assert_array_equal(volume.voxels, image)
    assert volume.spacing_mm == (1.0, 1.0, 1.0)
    assert volume.voxel_volume_mm3 == 1.0
    # slice k cites the instance built for slice k, whatever the InstanceNumbers say
    assert [s.sop_instance_uid for s in volume.slices] == [d.SOPInstanceUID for d in datasets]
    assert [d.SOPInstanceUID for d in volume.source_datasets] == [
        d.SOPInstanceUID for d in datasets
    ]


@pytest.mark.parametrize("transfer_syntax", LOSSY_TRANSFER_SYNTAXES, ids=lambda ts: ts.name)
def test_lossy_syntaxes_read_back_approximately(slab: np.ndarray, transfer_syntax: str) -> None:
    require_transfer_syntax(transfer_syntax)
    volume = read(series_from_volume(slab, transfer_syntax=transfer_syntax))

    difference = volume.voxels - slab
    assert volume.voxels.shape == slab.shape
    assert abs(difference.mean()) < 0.5  # no shift of the intensity scale
    assert np.abs(difference).mean() < 2.0  # intensities span 2..139
    assert np.abs(difference).max() < 16.0


@pytest.mark.parametrize(
    "transfer_syntax",
    [ExplicitVRLittleEndian, ExplicitVRBigEndian, RLELossless, JPEGLosslessSV1, JPEGLSLossless,
     JPEG2000Lossless],
    ids=lambda ts: ts.name,
)  # fmt: skip
def test_rescale_intercept_with_negative_stored_values(
    slab: np.ndarray, transfer_syntax: str
) -> None:
    require_transfer_syntax(transfer_syntax)
    datasets = series_from_volume(slab, transfer_syntax=transfer_syntax, rescale=(1.0, 1024.0))
    assert datasets[0].PixelRepresentation == 1
    assert datasets[0].pixel_array.min() < 0  # int16 stored values really are negative

    np.testing.assert_array_equal(read(datasets).voxels, slab)


def test_fractional_rescale_slope(slab: np.ndarray) -> None:
    datasets = series_from_volume(slab, rescale=(0.5, -3.0))
    assert float(datasets[0].RescaleSlope) == 0.5

    np.testing.assert_array_equal(read(datasets).voxels, slab)


def test_float_intensities_come_back_within_the_rescale_step() -> None:
    require_data()
    image = load_nifti_case(FLOAT_CASE)[0][:, :, 10:22]
    datasets = series_from_volume(image)  # fractional values: the factory picks a slope
    slope = float(datasets[0].RescaleSlope)

    volume = read(datasets)

    assert np.max(np.abs(volume.voxels - image)) <= slope / 2 + 1e-3


def test_written_files_read_back_in_any_order(image: np.ndarray, tmp_path) -> None:
    paths = write_series(series_from_volume(image, transfer_syntax=RLELossless), tmp_path)
    assert len(paths) == image.shape[2]

    np.testing.assert_array_equal(series_to_volume(read_series(tmp_path)).voxels, image)


# --- geometry --------------------------------------------------------------------------------


def test_non_1mm_oblique_series_spacing_affine_and_mm3(
    case: tuple[np.ndarray, np.ndarray],
) -> None:
    image, label = case[0][:, :, 10:22], case[1][:, :, 10:22]
    orientation = tilted_orientation()
    datasets = series_from_volume(
        image, spacing=(0.9, 0.8, 1.2), orientation=orientation, origin=(-30.5, 12.25, 40.0)
    )
    assert [float(v) for v in datasets[0].PixelSpacing] == [0.8, 0.9]

    volume = read(datasets)

    np.testing.assert_array_equal(volume.voxels, image)
    assert volume.spacing_mm == pytest.approx((0.9, 0.8, 1.2), abs=1e-6)
    assert volume.voxel_volume_mm3 == pytest.approx(0.864, abs=1e-6)
    assert abs(np.linalg.det(volume.affine[:3, :3])) == pytest.approx(0.864, abs=1e-6)
    labelled = int(np.count_nonzero(label))
    assert labelled * volume.voxel_volume_mm3 == pytest.approx(labelled * 0.864)

    # affine maps voxel (i, j, k) onto pixel (row Y-1-j, column X-1-i) of slice k in LPS mm
    columns, rows, _ = image.shape
    row_dir, col_dir = np.array(orientation[:3]), np.array(orientation[3:])
    for i, j, k in [(0, 0, 0), (columns - 1, rows - 1, 5), (7, 30, image.shape[2] - 1)]:
        ds = datasets[k]
        expected = (
            np.array([float(v) for v in ds.ImagePositionPatient])
            + (columns - 1 - i) * 0.9 * row_dir
            + (rows - 1 - j) * 0.8 * col_dir
        )
        np.testing.assert_allclose((volume.affine @ [i, j, k, 1])[:3], expected, atol=1e-4)


def test_slice_spacing_comes_from_positions_not_slice_thickness(slab: np.ndarray) -> None:
    datasets = series_from_volume(slab, spacing=(1.0, 1.0, 1.5))
    for ds in datasets:
        ds.SliceThickness = "5"
        ds.SpacingBetweenSlices = "5"

    assert read(datasets).spacing_mm[2] == pytest.approx(1.5)


def test_slices_are_ordered_by_position_not_instance_number(slab: np.ndarray) -> None:
    datasets = series_from_volume(slab, shuffle_instance_numbers=False)
    for k, ds in enumerate(datasets):  # numbering runs against the geometry
        ds.InstanceNumber = len(datasets) - k

    np.testing.assert_array_equal(read(datasets).voxels, slab)


def test_stack_built_against_the_normal_is_read_along_it(slab: np.ndarray) -> None:
    """Positions decreasing along the normal: ascending order along it reverses the stack."""
    volume = read(series_from_volume(slab, spacing=(1.0, 1.0, -1.0), origin=(0, 0, 50)))

    np.testing.assert_array_equal(volume.voxels, slab[:, :, ::-1])
    assert volume.spacing_mm[2] == pytest.approx(1.0)
    assert volume.affine[2, 2] == pytest.approx(1.0)


def test_to_frames_gives_back_the_source_pixel_layout(slab: np.ndarray) -> None:
    datasets = series_from_volume(slab)
    volume = read(datasets)

    frames = volume.to_frames(volume.voxels)

    assert frames.shape == (slab.shape[2], slab.shape[1], slab.shape[0])
    for k in (0, 11, slab.shape[2] - 1):
        np.testing.assert_array_equal(frames[k], datasets[k].pixel_array)


def test_enhanced_multiframe_mr(slab: np.ndarray) -> None:
    datasets = series_from_volume(slab, spacing=(0.9, 0.8, 1.2), rescale=(1.0, 1024.0))
    enhanced = enhanced_from_series(datasets)
    assert int(enhanced.NumberOfFrames) == slab.shape[2]

    volume = series_to_volume([enhanced])

    np.testing.assert_array_equal(volume.voxels, slab)
    assert volume.spacing_mm == pytest.approx((0.9, 0.8, 1.2))
    assert volume.source_datasets == (enhanced,)
    assert {s.sop_instance_uid for s in volume.slices} == {enhanced.SOPInstanceUID}
    assert sorted(s.frame_number for s in volume.slices) == list(range(1, slab.shape[2] + 1))


@pytest.mark.parametrize("study", ["Study1", "Study2", "Study3"])
def test_real_hippocrop_series_follow_the_readme_convention(study: str) -> None:
    require_data()
    folder = next((TEST_VOLUMES_DIR / study).glob("*HCropVolume"))
    datasets = read_series(folder)

    volume = series_to_volume(datasets)

    by_position = sorted(datasets, key=lambda d: float(d.ImagePositionPatient[2]))
    expected = np.stack([np.flip(d.pixel_array).T for d in by_position], axis=-1)
    np.testing.assert_array_equal(volume.voxels, expected)
    assert volume.spacing_mm == (1.0, 1.0, 1.0)
    assert volume.voxels.shape[2] == len(datasets)


# --- refusals --------------------------------------------------------------------------------


def _drop_middle(series: list[Dataset]) -> list[Dataset]:
    return series[:10] + series[11:]


def _duplicate(series: list[Dataset]) -> list[Dataset]:
    twin = copy.deepcopy(series[4])
    twin.SOPInstanceUID = generate_uid()
    return [*series, twin]


def _same_instance_twice(series: list[Dataset]) -> list[Dataset]:
    return [*series, series[4]]


def _move(series: list[Dataset], index: int, offset: tuple[float, float, float]) -> list[Dataset]:
    position = [float(v) for v in series[index].ImagePositionPatient]
    series[index].ImagePositionPatient = [p + o for p, o in zip(position, offset, strict=True)]
    return series


def _set(index: int, **attributes: object) -> Callable[[list[Dataset]], list[Dataset]]:
    def mutate(series: list[Dataset]) -> list[Dataset]:
        for keyword, value in attributes.items():
            if value is None:
                delattr(series[index], keyword)
            else:
                setattr(series[index], keyword, value)
        return series

    return mutate


def _other_matrix(series: list[Dataset]) -> list[Dataset]:
    smaller = series_from_volume(np.zeros((20, 30, 1), dtype=np.float32))[0]
    smaller.ImagePositionPatient = series[3].ImagePositionPatient
    smaller.SeriesInstanceUID = series[3].SeriesInstanceUID
    smaller.FrameOfReferenceUID = series[3].FrameOfReferenceUID
    series[3] = smaller
    return series


def _corrupt_rle(series: list[Dataset]) -> list[Dataset]:
    ds = series[2]
    ds.compress(RLELossless)
    ds.file_meta.TransferSyntaxUID = RLELossless
    fragment = bytes(random.Random(0).getrandbits(8) for _ in range(64))
    ds.PixelData = pydicom.encaps.encapsulate([fragment])
    return series


REFUSALS: dict[str, tuple[Callable[[list[Dataset]], list[Dataset]], type[VolumeError], str]] = {
    "gap": (_drop_middle, SliceGapError, "1 slice(s) missing"),
    "duplicate position": (_duplicate, DuplicateSliceError, "share position"),
    "same instance twice": (_same_instance_twice, DuplicateSliceError, "received twice"),
    "uneven step": (lambda s: _move(s, 8, (0, 0, 0.3)), NonUniformSpacingError, "differs"),
    "in-plane shift": (lambda s: _move(s, 8, (2.0, 0, 0)), NonUniformSpacingError, "in-plane"),
    "mixed orientation": (
        _set(5, ImageOrientationPatient=[1, 0, 0, 0, 0.9986295, 0.0523360]),
        InconsistentGeometryError,
        "orientation",
    ),
    "mixed matrix": (_other_matrix, InconsistentGeometryError, "matrix 30x20"),
    "mixed pixel spacing": (
        _set(6, PixelSpacing=[1.0, 1.1]),
        InconsistentGeometryError,
        "PixelSpacing",
    ),
    "mixed series": (
        _set(7, SeriesInstanceUID=generate_uid()),
        InconsistentGeometryError,
        "2 different series",
    ),
    "mixed frame of reference": (
        _set(7, FrameOfReferenceUID=generate_uid()),
        InconsistentGeometryError,
        "Frame of Reference",
    ),
    "non-orthogonal orientation": (
        lambda s: [
            _set(k, ImageOrientationPatient=[1, 0, 0, 0.5, 0.5, 0])(s)[k] for k in range(len(s))
        ],
        InconsistentGeometryError,
        "orthogonal unit vectors",
    ),  # fmt: skip
    "missing position": (
        _set(9, ImagePositionPatient=None),
        MissingGeometryError,
        "ImagePositionPatient",
    ),
    "zero rescale slope": (
        _set(4, RescaleSlope="0", RescaleIntercept="0"),
        MissingGeometryError,
        "unusable rescale",
    ),
    "missing pixel data": (_set(3, PixelData=None), MissingPixelDataError, "no Pixel Data"),
    "truncated pixel data": (
        lambda s: _set(3, PixelData=s[3].PixelData[:-100])(s),
        MissingPixelDataError,
        "truncated",
    ),
    "bits allocated absent": (
        _set(2, BitsAllocated=None),
        UndecodablePixelDataError,
        "Bits Allocated absent",
    ),
    "corrupt compressed data": (_corrupt_rle, UndecodablePixelDataError, "cannot decode"),
    "one slice": (lambda s: s[:1], TooFewSlicesError, "1 slice(s)"),
    "no slices": (lambda s: [], TooFewSlicesError, "0 slice(s)"),
    "rgb": (
        _set(0, PhotometricInterpretation="RGB", SamplesPerPixel=3),
        UnsupportedPhotometricError,
        "'RGB'",
    ),
    "palette colour": (
        _set(0, PhotometricInterpretation="PALETTE COLOR"),
        UnsupportedPhotometricError,
        "PALETTE COLOR",
    ),
    "zero pixel spacing": (_set(0, PixelSpacing=[0, 1]), AbsurdSizeError, "PixelSpacing"),
    "huge matrix": (_set(0, Rows=60000), AbsurdSizeError, "matrix 60000x35"),
}


@pytest.mark.parametrize("name", list(REFUSALS))
def test_refusal(base_series: list[Dataset], name: str) -> None:
    mutate, error, fragment = REFUSALS[name]
    series = mutate(copy.deepcopy(base_series))

    with pytest.raises(error) as raised:
        series_to_volume(shuffled(series))

    message = str(raised.value)
    assert fragment in message
    assert PATIENT_NAME not in message and PATIENT_ID not in message


def test_refusal_names_the_instance_and_position(base_series: list[Dataset]) -> None:
    series = _drop_middle(copy.deepcopy(base_series))
    with pytest.raises(SliceGapError, match=r"instance \d+ \(SOP Instance UID [\d.]+\) at 9\.000"):
        series_to_volume(series)


def test_minimum_slice_count_is_configurable(base_series: list[Dataset]) -> None:
    with pytest.raises(TooFewSlicesError, match="at least 40"):
        series_to_volume(base_series, min_slices=40)
    assert series_to_volume(base_series[:3], min_slices=3).voxels.shape[2] == 3
    single = series_to_volume(base_series[:1], min_slices=1)  # thickness is all there is
    assert single.voxels.shape[2] == 1 and single.spacing_mm[2] == 1.0


def test_voxel_limit_is_checked_before_decoding(base_series: list[Dataset]) -> None:
    with pytest.raises(AbsurdSizeError, match="exceeds the limit"):
        series_to_volume(base_series, max_voxels=1000)


def test_lossy_jpeg_needs_eight_bit_values(image: np.ndarray) -> None:
    """The factory refuses what 8-bit baseline JPEG cannot carry instead of clipping."""
    require_transfer_syntax(JPEGBaseline8Bit)
    with pytest.raises(ValueError, match="do not fit 8"):
        series_from_volume(image * 4, transfer_syntax=JPEGBaseline8Bit)


# --- datasets as a receiver may hold them ----------------------------------------------------


@pytest.mark.parametrize(
    "transfer_syntax", [ImplicitVRLittleEndian, ExplicitVRBigEndian], ids=lambda ts: ts.name
)
def test_native_dataset_without_file_meta_is_decoded_from_its_encoding(
    slab: np.ndarray, transfer_syntax: str
) -> None:
    datasets = series_from_volume(slab, transfer_syntax=transfer_syntax)
    for ds in datasets:
        del ds.file_meta

    np.testing.assert_array_equal(read(datasets).voxels, slab)


def test_compressed_dataset_without_file_meta_is_refused(slab: np.ndarray) -> None:
    datasets = series_from_volume(slab, transfer_syntax=RLELossless)
    for ds in datasets:
        del ds.file_meta

    with pytest.raises(UndecodablePixelDataError, match="no Transfer Syntax UID"):
        read(datasets)


def test_monochrome1_values_are_not_inverted(base_series: list[Dataset], slab: np.ndarray) -> None:
    """MONOCHROME1 changes only the display; the modality values the model sees are the same."""
    series = copy.deepcopy(base_series)
    for ds in series:
        ds.PhotometricInterpretation = "MONOCHROME1"

    np.testing.assert_array_equal(read(series).voxels, slab)
