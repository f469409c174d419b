"""Build realistic DICOM series from the project's NIfTI training data, for any test.

Tests must exercise the node with what a PACS really sends, so fixtures start from the
hippocampus NIfTI pairs in ``../shared/data`` (never random bytes) and produce complete MR Image
Storage instances -- Patient, General Study/Series, Frame of Reference, General Equipment, Image
Plane, Image Pixel and MR Image modules, real UIDs -- that highdicom accepts as source images.

The pixel convention is the data README's: slice ``k`` of a series built from ``volume`` has
``pixel_array == numpy.flip(volume[:, :, k].T)``, so reading the series back in the model's
orientation must give ``volume`` again. Geometry is free: spacing, oblique orientation, origin.

Every transfer syntax a PACS may choose can be produced: the native ones and Deflated directly
with pydicom, RLE / JPEG-LS / JPEG 2000 with pydicom's encoders, JPEG (baseline, extended,
lossless) with dcmtk's ``dcmcjpeg`` (tests needing it skip when it is absent, see
:func:`require_transfer_syntax`). Returned datasets have been encoded to bytes and parsed back,
so they look exactly like instances read from disk or received over the network.

Typical use::

    from tests.dicom_factory import load_nifti_case, series_from_volume, write_series

    image, label = load_nifti_case(1)
    datasets = series_from_volume(image, transfer_syntax=RLELossless)
    write_series(datasets, tmp_path / "in")          # shuffled file names and order
"""

from __future__ import annotations

import copy
import io
import os
import random
import shutil
import subprocess
import tempfile
from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np
import pydicom
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.encaps import encapsulate, generate_frames
from pydicom.uid import (
    JPEG2000,
    UID,
    DeflatedExplicitVRLittleEndian,
    ExplicitVRBigEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    JPEG2000Lossless,
    JPEGBaseline8Bit,
    JPEGExtended12Bit,
    JPEGLossless,
    JPEGLosslessSV1,
    JPEGLSLossless,
    JPEGLSNearLossless,
    MRImageStorage,
    MultiFrameGrayscaleByteSecondaryCaptureImageStorage,
    MultiFrameGrayscaleWordSecondaryCaptureImageStorage,
    RLELossless,
    generate_uid,
)

REPO_ROOT = Path(__file__).resolve().parents[1]


def data_dir() -> Path:
    """The shared data folder: ``$HIPPO_DATA_DIR`` or ``<repo>/../shared/data``."""
    override = os.environ.get("HIPPO_DATA_DIR")
    return Path(override) if override else (REPO_ROOT / ".." / "shared" / "data").resolve()


DATA_DIR = data_dir()
HIPPOCAMPUS_DIR = DATA_DIR / "hippocampus"
TEST_VOLUMES_DIR = DATA_DIR / "TestVolumes"

#: A case stored as uint8 (integer intensities, 2..139): exact round trips, even 8-bit JPEG.
INTEGER_CASE = 1
#: A case stored as float32 with fractional intensities (most of the 208 are like this, despite
#: the data README saying "int-valued"): DICOM needs a rescale slope to carry it.
FLOAT_CASE = 3

#: Syntaxes whose decoded values equal the encoded ones bit for bit.
LOSSLESS_TRANSFER_SYNTAXES: tuple[UID, ...] = (
    ImplicitVRLittleEndian,
    ExplicitVRLittleEndian,
    ExplicitVRBigEndian,
    DeflatedExplicitVRLittleEndian,
    RLELossless,
    JPEGLossless,
    JPEGLosslessSV1,
    JPEGLSLossless,
    JPEG2000Lossless,
)
#: Lossy syntaxes: values come back only approximately.
LOSSY_TRANSFER_SYNTAXES: tuple[UID, ...] = (
    JPEGBaseline8Bit,
    JPEGExtended12Bit,
    JPEGLSNearLossless,
    JPEG2000,
)
#: dcmcjpeg options per JPEG syntax (pydicom has no JPEG encoder). ``+sr`` keeps lossy stored
#: values on their own scale: dcmcjpeg's default (+sp) stretches min..max of the data over the
#: sample range without writing a rescale, which shifts every value read back.
_DCMCJPEG_OPTIONS = {
    JPEGBaseline8Bit: ["+eb", "+q", "95", "+sr"],
    JPEGExtended12Bit: ["+ee", "+q", "95", "+sr"],
    JPEGLossless: ["+el"],
    JPEGLosslessSV1: ["+e1"],
}
#: Largest stored value each syntax can carry (bits), where narrower than 16.
_MAX_BITS = {JPEGBaseline8Bit: 8, JPEGExtended12Bit: 12}

DEFAULT_ORIENTATION = (1.0, 0.0, 0.0, 0.0, 1.0, 0.0)


class MissingToolError(RuntimeError):
    """An external encoder needed for a transfer syntax is not installed."""


def require_data() -> Path:
    """Skip the calling test (pytest) when the shared data folder is absent."""
    if not HIPPOCAMPUS_DIR.is_dir() or not TEST_VOLUMES_DIR.is_dir():
        import pytest

        pytest.skip(f"shared data not found at {DATA_DIR} (set HIPPO_DATA_DIR)")
    return DATA_DIR


def require_transfer_syntax(transfer_syntax: str) -> None:
    """Skip the calling test when ``transfer_syntax`` cannot be encoded on this machine."""
    if UID(transfer_syntax) in _DCMCJPEG_OPTIONS and shutil.which("dcmcjpeg") is None:
        import pytest

        pytest.skip(f"dcmcjpeg (dcmtk) is needed to encode {UID(transfer_syntax).name}")


def nifti_case_paths(case_id: int | str) -> tuple[Path, Path]:
    """Image and label paths of ``hippocampus_NNN`` (``case_id`` 1, "1" or "001")."""
    name = f"hippocampus_{int(case_id):03d}.nii.gz"
    return HIPPOCAMPUS_DIR / "imagesTr" / name, HIPPOCAMPUS_DIR / "labelsTr" / name


def load_nifti_case(case_id: int | str) -> tuple[np.ndarray, np.ndarray]:
    """Return ``(image float32, label uint8)`` arrays of a training case, as nibabel stores them.

    The raw stored arrays are used (no scaling): that is the orientation and the values the
    model was trained on.
    """
    import nibabel as nib

    image_path, label_path = nifti_case_paths(case_id)
    image = np.asarray(nib.load(image_path).dataobj, dtype=np.float32)
    label = np.asarray(nib.load(label_path).dataobj).astype(np.uint8)
    return image, label


def _stored_values(
    volume: np.ndarray, rescale: tuple[float, float] | None, max_bits: int
) -> tuple[np.ndarray, tuple[float, float] | None, bool]:
    """Choose integer stored values (and the rescale that maps them back) for ``volume``.

    Returns ``(stored, rescale, signed)``. Without an explicit rescale, integer volumes are
    stored as they are; fractional ones get a power-of-two slope so that they fit the stored
    bits (read-back then equals the volume to within half that slope).
    """
    volume = np.asarray(volume, dtype=np.float64)
    if rescale is None and not np.array_equal(volume, np.round(volume)):
        peak = float(np.max(np.abs(volume))) or 1.0
        limit = 2 ** (max_bits - 1) - 1 if max_bits == 16 else 2**max_bits - 1
        slope = 2.0 ** np.floor(np.log2(limit / peak))
        rescale = (1.0 / slope, 0.0)
    slope, intercept = rescale if rescale is not None else (1.0, 0.0)
    stored = np.round((volume - intercept) / slope)
    if rescale is not None and not np.allclose(stored * slope + intercept, volume, atol=slope):
        raise ValueError("rescale cannot represent the volume")
    signed = bool(stored.min() < 0) or max_bits == 16
    low, high = (
        (-(2 ** (max_bits - 1)), 2 ** (max_bits - 1) - 1) if signed else (0, 2**max_bits - 1)
    )
    if stored.min() < low or stored.max() > high:
        raise ValueError(
            f"stored values {stored.min():.0f}..{stored.max():.0f} do not fit {max_bits} "
            f"{'signed' if signed else 'unsigned'} bits; pass a rescale"
        )
    return stored, rescale, signed


def series_from_volume(
    volume: np.ndarray,
    *,
    spacing: Sequence[float] = (1.0, 1.0, 1.0),
    orientation: Sequence[float] = DEFAULT_ORIENTATION,
    origin: Sequence[float] = (0.0, 0.0, 0.0),
    series_description: str = "HippoCrop",
    transfer_syntax: str = ExplicitVRLittleEndian,
    rescale: tuple[float, float] | None = None,
    patient_name: str = "Test^Patient",
    patient_id: str = "TEST-0001",
    character_set: str | None = None,
    study_uid: str | None = None,
    series_uid: str | None = None,
    frame_of_reference_uid: str | None = None,
    series_number: int = 13,
    modality: str = "MR",
    manufacturer: str = "dicom_factory",
    shuffle_instance_numbers: bool = True,
    seed: int = 0,
) -> list[Dataset]:
    """Turn a volume in model orientation ``(X, Y, Z)`` into one MR Image Storage series.

    ``spacing`` is along axes 0, 1, 2 (so PixelSpacing = [spacing[1], spacing[0]] and the
    slice step is spacing[2]); ``orientation`` is ImageOrientationPatient (row direction, then
    column direction); ``origin`` is ImagePositionPatient of slice 0, and slice ``k`` sits at
    ``origin + k * spacing[2] * normal``. ``rescale = (slope, intercept)`` stores
    ``(volume - intercept) / slope`` (e.g. ``(1, 1024)`` gives negative int16 values).

    Returns the datasets in slice order (k = 0..Z-1). Their InstanceNumbers are shuffled by
    default, because readers must order slices by position, never by number.
    """
    volume = np.asarray(volume)
    if volume.ndim != 3:
        raise ValueError(f"volume must be 3-D (X, Y, Z), got shape {volume.shape}")
    transfer_syntax = UID(transfer_syntax)
    max_bits = _MAX_BITS.get(transfer_syntax, 16)
    stored, rescale, signed = _stored_values(volume, rescale, max_bits)
    # Always 16 bits allocated (BitsStored 8/12 for the narrow JPEG processes): dcmcjpeg
    # misplaces frames of odd byte length in multi-frame 8-bit input.
    bits_allocated = 16
    dtype = {(8, False): np.uint8, (16, False): np.uint16, (16, True): np.int16}[
        (bits_allocated, signed)
    ]
    columns, rows, slices = volume.shape
    row_dir = np.asarray(orientation[:3], dtype=np.float64)
    col_dir = np.asarray(orientation[3:], dtype=np.float64)
    normal = np.cross(row_dir, col_dir)
    study_uid = study_uid or generate_uid()
    series_uid = series_uid or generate_uid()
    frame_of_reference_uid = frame_of_reference_uid or generate_uid()
    numbers = list(range(1, slices + 1))
    if shuffle_instance_numbers:
        random.Random(seed).shuffle(numbers)

    datasets = []
    for k in range(slices):
        ds = _base_dataset(
            patient_name=patient_name,
            patient_id=patient_id,
            character_set=character_set,
            study_uid=study_uid,
            series_uid=series_uid,
            frame_of_reference_uid=frame_of_reference_uid,
            series_number=series_number,
            series_description=series_description,
            modality=modality,
            manufacturer=manufacturer,
        )
        ds.InstanceNumber = numbers[k]
        position = np.asarray(origin, dtype=np.float64) + k * float(spacing[2]) * normal
        ds.ImagePositionPatient = [_ds(v) for v in position]
        ds.ImageOrientationPatient = [_ds(v) for v in orientation]
        ds.PixelSpacing = [_ds(spacing[1]), _ds(spacing[0])]
        ds.SliceThickness = _ds(spacing[2])
        ds.SliceLocation = _ds(float(position @ normal))
        pixels = np.ascontiguousarray(np.flip(stored[:, :, k].T)).astype(dtype)
        ds.Rows, ds.Columns = rows, columns
        ds.SamplesPerPixel = 1
        ds.PhotometricInterpretation = "MONOCHROME2"
        ds.BitsAllocated = bits_allocated
        ds.BitsStored = max_bits if max_bits < 16 else 16
        ds.HighBit = ds.BitsStored - 1
        ds.PixelRepresentation = 1 if signed else 0
        if rescale is not None:
            ds.RescaleSlope = _ds(rescale[0])
            ds.RescaleIntercept = _ds(rescale[1])
            ds.RescaleType = "US"
        ds.PixelData = pixels.tobytes()
        datasets.append(ds)
    return _encode(datasets, transfer_syntax)


def _ds(value: float) -> str:
    """A DS string that round-trips the float as closely as 16 characters allow."""
    text = repr(float(value))
    if len(text) > 16:
        text = f"{float(value):.10g}"
    return text


def _base_dataset(
    *,
    patient_name: str,
    patient_id: str,
    character_set: str | None,
    study_uid: str,
    series_uid: str,
    frame_of_reference_uid: str,
    series_number: int,
    series_description: str,
    modality: str,
    manufacturer: str,
) -> Dataset:
    """The non-pixel modules every slice shares (values fixed so fixtures are reproducible)."""
    ds = Dataset()
    if character_set:
        ds.SpecificCharacterSet = character_set
    ds.SOPClassUID = MRImageStorage
    ds.SOPInstanceUID = generate_uid()
    ds.ImageType = ["DERIVED", "SECONDARY", "AXIAL"]
    ds.StudyDate = ds.SeriesDate = ds.ContentDate = ds.AcquisitionDate = "20240101"
    ds.StudyTime = ds.SeriesTime = ds.ContentTime = ds.AcquisitionTime = "120000"
    ds.AccessionNumber = "ACC0001"
    ds.Modality = modality
    ds.Manufacturer = manufacturer
    ds.ManufacturerModelName = "fixture"
    ds.SoftwareVersions = "1"
    ds.ReferringPhysicianName = ""
    ds.StudyDescription = "MR BRAIN"
    ds.SeriesDescription = series_description
    ds.PatientName = patient_name
    ds.PatientID = patient_id
    ds.PatientBirthDate = "19700101"
    ds.PatientSex = "O"
    ds.ScanningSequence = "GR"
    ds.SequenceVariant = "SP"
    ds.ScanOptions = ""
    ds.MRAcquisitionType = "3D"
    ds.RepetitionTime = "8.0"
    ds.EchoTime = "3.0"
    ds.EchoTrainLength = "1"
    ds.MagneticFieldStrength = "3"
    ds.StudyInstanceUID = study_uid
    ds.SeriesInstanceUID = series_uid
    ds.StudyID = "1"
    ds.SeriesNumber = series_number
    ds.FrameOfReferenceUID = frame_of_reference_uid
    ds.PositionReferenceIndicator = ""
    ds.BodyPartExamined = "BRAIN"
    return ds


def encode_series(datasets: Iterable[Dataset], transfer_syntax: str) -> list[Dataset]:
    """Re-encode native (uncompressed, little endian) datasets in ``transfer_syntax``.

    The result is each dataset written to bytes and parsed back (fresh objects; the inputs are
    left alone), so it is what a receiver would hold.
    """
    return _encode([copy.deepcopy(ds) for ds in datasets], UID(transfer_syntax))


def _encode(datasets: list[Dataset], transfer_syntax: UID) -> list[Dataset]:
    """:func:`encode_series` that may modify ``datasets`` (the factory's own fresh objects)."""
    if transfer_syntax in _DCMCJPEG_OPTIONS:
        return _dcmcjpeg(datasets, transfer_syntax)
    result = []
    for ds in datasets:
        ds.file_meta = _file_meta(ds, ExplicitVRLittleEndian)  # the state compress() starts from
        if transfer_syntax == ExplicitVRBigEndian:
            ds.PixelData = _byteswapped(ds)
        elif transfer_syntax.is_compressed:
            options = {}
            if transfer_syntax == JPEGLSNearLossless:
                options = {"jls_error": 2}
            elif transfer_syntax == JPEG2000:
                options = {"j2k_cr": [4]}
            ds.compress(transfer_syntax, **options)
            if transfer_syntax in LOSSY_TRANSFER_SYNTAXES:
                ds.LossyImageCompression = "01"
        result.append(_parse(_to_bytes(ds, transfer_syntax)))
    return result


def _byteswapped(ds: Dataset) -> bytes:
    """Pixel Data as Explicit VR Big Endian stores it (pydicom writes OW bytes verbatim)."""
    if int(ds.BitsAllocated) == 8:
        return ds.PixelData
    return np.frombuffer(ds.PixelData, dtype="<u2").astype(">u2").tobytes()


def _to_bytes(ds: Dataset, transfer_syntax: UID) -> bytes:
    ds = copy.copy(ds)  # shallow: only file_meta is replaced, the caller's dataset is untouched
    ds.file_meta = _file_meta(ds, transfer_syntax)
    buffer = io.BytesIO()
    pydicom.dcmwrite(buffer, ds, enforce_file_format=True)
    return buffer.getvalue()


def data_set_bytes(ds: Dataset, *, implicit_vr: bool = False) -> bytes:
    """The data set as a C-STORE carries it: little endian, no File Meta."""
    from pydicom.filebase import DicomBytesIO
    from pydicom.filewriter import write_dataset

    buffer = DicomBytesIO()
    buffer.is_little_endian, buffer.is_implicit_VR = True, implicit_vr
    write_dataset(buffer, ds)
    return buffer.getvalue()


def _parse(data: bytes) -> Dataset:
    return pydicom.dcmread(io.BytesIO(data))


def _file_meta(ds: Dataset, transfer_syntax: UID) -> FileMetaDataset:
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = ds.SOPClassUID
    meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    meta.TransferSyntaxUID = transfer_syntax
    return meta


def _dcmcjpeg(datasets: list[Dataset], transfer_syntax: UID) -> list[Dataset]:
    """Encode with dcmtk's dcmcjpeg, one process per series.

    A process per slice costs ~50 ms each, too slow for the test budget, so the slices are
    stacked into one multi-frame carrier, compressed once, and each compressed frame is put
    back into its own slice (every JPEG frame is a self-contained code stream).
    """
    tool = shutil.which("dcmcjpeg")
    if tool is None:
        raise MissingToolError(f"dcmcjpeg (dcmtk) is needed to encode {transfer_syntax.name}")
    natives = datasets
    carrier = copy.deepcopy(natives[0])
    carrier.SOPClassUID = (
        MultiFrameGrayscaleByteSecondaryCaptureImageStorage
        if int(carrier.BitsAllocated) == 8
        else MultiFrameGrayscaleWordSecondaryCaptureImageStorage
    )
    carrier.NumberOfFrames = len(natives)
    carrier.PixelData = b"".join(ds.PixelData for ds in natives)
    with tempfile.TemporaryDirectory(prefix="dicom_factory_") as tmp:
        source, target = Path(tmp) / "in.dcm", Path(tmp) / "out.dcm"
        source.write_bytes(_to_bytes(carrier, ExplicitVRLittleEndian))
        subprocess.run(
            [tool, *_DCMCJPEG_OPTIONS[transfer_syntax], str(source), str(target)],
            check=True,
            capture_output=True,
        )
        encoded = pydicom.dcmread(target)
    if encoded.file_meta.TransferSyntaxUID != transfer_syntax:
        raise RuntimeError(
            f"dcmcjpeg produced {encoded.file_meta.TransferSyntaxUID.name}, "
            f"not {transfer_syntax.name}"
        )
    frames = list(generate_frames(encoded.PixelData, number_of_frames=len(natives)))
    result = []
    pixel_module = ("BitsAllocated", "BitsStored", "HighBit", "PhotometricInterpretation")
    for ds, frame in zip(natives, frames, strict=True):
        for keyword in pixel_module:  # dcmcjpeg may narrow them (baseline: 8 bits allocated)
            setattr(ds, keyword, encoded[keyword].value)
        ds.PixelData = encapsulate([frame])
        ds["PixelData"].VR = "OB"
        if transfer_syntax in LOSSY_TRANSFER_SYNTAXES:
            ds.LossyImageCompression = "01"
            ds.LossyImageCompressionMethod = "ISO_10918_1"
        result.append(_parse(_to_bytes(ds, transfer_syntax)))
    return result


def write_series(
    datasets: Iterable[Dataset], folder: Path, *, shuffle: bool = True, seed: int = 0
) -> list[Path]:
    """Write datasets as DICOM files into ``folder`` (created), in shuffled order and with
    meaningless file names by default, so nothing can rely on file order or naming."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    datasets = list(datasets)
    order = list(range(len(datasets)))
    if shuffle:
        random.Random(seed).shuffle(order)
    rng = random.Random(seed + 1)
    paths = []
    for position, index in enumerate(order):
        ds = datasets[index]
        name = f"{rng.getrandbits(48):012x}.dcm" if shuffle else f"{position:05d}.dcm"
        path = folder / name
        if getattr(ds, "file_meta", None) is None or "TransferSyntaxUID" not in ds.file_meta:
            ds.file_meta = _file_meta(ds, ExplicitVRLittleEndian)
        pydicom.dcmwrite(path, ds, enforce_file_format=True)
        paths.append(path)
    return paths


def read_series(folder: Path) -> list[Dataset]:
    """Read every ``*.dcm`` in ``folder`` (in directory order -- deliberately unsorted)."""
    return [pydicom.dcmread(path) for path in Path(folder).glob("*.dcm")]


def study_series_dirs(study: str) -> dict[str, Path]:
    """Series folders of ``TestVolumes/<study>`` keyed by folder name."""
    return {p.name: p for p in sorted((TEST_VOLUMES_DIR / study).iterdir()) if p.is_dir()}


def enhanced_from_series(datasets: Sequence[Dataset]) -> Dataset:
    """Convert a single-frame MR series into one Legacy Converted Enhanced MR instance.

    Exercises the multi-frame path (per-frame PlanePositionSequence, shared PlaneOrientation /
    PixelMeasures / PixelValueTransformation) with highdicom's standard conversion.
    """
    from highdicom.legacy import LegacyConvertedEnhancedMRImage

    ordered = sorted(datasets, key=lambda d: int(d.InstanceNumber))
    enhanced = LegacyConvertedEnhancedMRImage(
        legacy_datasets=ordered,
        series_instance_uid=generate_uid(),
        series_number=int(ordered[0].SeriesNumber) + 100,
        sop_instance_uid=generate_uid(),
        instance_number=1,
    )
    return _parse(_to_bytes(enhanced, UID(enhanced.file_meta.TransferSyntaxUID)))


__all__ = [
    "DATA_DIR",
    "DEFAULT_ORIENTATION",
    "FLOAT_CASE",
    "HIPPOCAMPUS_DIR",
    "INTEGER_CASE",
    "LOSSLESS_TRANSFER_SYNTAXES",
    "LOSSY_TRANSFER_SYNTAXES",
    "MissingToolError",
    "TEST_VOLUMES_DIR",
    "data_dir",
    "encode_series",
    "enhanced_from_series",
    "load_nifti_case",
    "nifti_case_paths",
    "read_series",
    "require_data",
    "require_transfer_syntax",
    "series_from_volume",
    "study_series_dirs",
    "write_series",
]
