"""Turn the instances of one received series into the volume the model measures.

The model was trained on the NIfTI arrays of ``../shared/data/hippocampus``; the data README's
"pixel convention" says how a DICOM slice relates to them::

    volume[:, :, k] == numpy.flip(pixel_array_of_slice_k).T

so axis 0 runs against the column direction (length Columns), axis 1 against the row direction
(length Rows) and axis 2 along the slice normal. :func:`series_to_volume` builds exactly that
array, with the modality LUT applied, and the geometry that goes with it (spacing, affine, the
instance each slice came from) so that the outputs can report millimetres and cite their sources.

Everything that would make a measurement silently wrong is refused with a specific
:class:`~hippo_scp.imaging.errors.VolumeError` subclass: slices ordered by the wrong key, a
missing slice, uneven spacing, mixed geometry, truncated or undecodable pixel data. Slices are
ordered by their position along the slice normal -- never by InstanceNumber or file name, which
PACS and anonymisers renumber freely.

Both classic single-frame series (one instance per slice) and enhanced / legacy-converted
multi-frame instances (per-frame functional groups) are accepted; a multi-frame instance simply
contributes several slices.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from pydicom.dataset import Dataset
from pydicom.pixels import apply_modality_lut

from hippo_scp.imaging.errors import (
    AbsurdSizeError,
    DuplicateSliceError,
    InconsistentGeometryError,
    MissingGeometryError,
    MissingPixelDataError,
    NonUniformSpacingError,
    SliceGapError,
    TooFewSlicesError,
    UndecodablePixelDataError,
    UnsupportedPhotometricError,
    VolumeError,
)
from hippo_scp.imaging.pixel_decoding import decode_stored_values, describe_instance, frame_count

#: Largest Rows or Columns accepted; no MR matrix comes near it, a corrupt header easily does.
MAX_MATRIX = 4096
#: Largest pixel spacing / slice step in mm accepted as plausible.
MAX_SPACING_MM = 100.0
#: Orientation cosines of different slices may differ by this much (DS rounding).
ORIENTATION_TOLERANCE = 1e-4
#: Relative tolerance on PixelSpacing agreement between slices.
PIXEL_SPACING_RTOL = 1e-4
#: Slice steps may deviate from the median step by max(abs, rel x step) before the stack is
#: called non-uniform (DS strings carry at most 16 characters, scanners round positions).
STEP_ATOL_MM = 0.01
STEP_RTOL = 0.01
#: A step this many times the median one means slices are missing, not merely uneven spacing.
GAP_FACTOR = 1.5

_MONOCHROME = ("MONOCHROME1", "MONOCHROME2")


@dataclass(frozen=True)
class SliceReference:
    """The instance (and, for multi-frame instances, the 1-based frame) a slice came from."""

    sop_class_uid: str
    sop_instance_uid: str
    frame_number: int | None = None


@dataclass(frozen=True, eq=False)
class SeriesVolume:
    """A series as the model sees it, plus what the outputs need to cite and measure it.

    ``source_datasets`` holds the distinct instances in slice order (one per slice for classic
    series; a single entry for an enhanced multi-frame series) -- highdicom wants them as
    ``source_images``. ``slices[k]`` names the instance/frame behind ``voxels[:, :, k]``.
    Equality is identity: comparing arrays element-wise is never what a caller means here.
    """

    voxels: np.ndarray
    spacing_mm: tuple[float, float, float]
    affine: np.ndarray
    slices: tuple[SliceReference, ...]
    source_datasets: tuple[Dataset, ...]

    @property
    def voxel_volume_mm3(self) -> float:
        """Real volume of one voxel: mm³ figures are voxel counts times this, never counts."""
        return float(self.spacing_mm[0] * self.spacing_mm[1] * self.spacing_mm[2])

    @property
    def rows(self) -> int:
        """Rows of the source frames (== voxels.shape[1])."""
        return int(self.voxels.shape[1])

    @property
    def columns(self) -> int:
        """Columns of the source frames (== voxels.shape[0])."""
        return int(self.voxels.shape[0])

    def to_frames(self, array_xyz: np.ndarray) -> np.ndarray:
        """Map an array in model orientation back to per-slice frames in the source layout.

        Returns ``(Z, Rows, Columns)`` with ``frames[k] == numpy.flip(array_xyz[:, :, k].T)``,
        i.e. frame ``k`` overlays the pixels of ``slices[k]`` -- what a SEG writer needs.
        """
        array = np.asarray(array_xyz)
        if array.shape != self.voxels.shape:
            raise ValueError(f"array shape {array.shape} does not match volume {self.voxels.shape}")
        return np.ascontiguousarray(np.flip(np.transpose(array, (2, 1, 0)), axis=(1, 2)))


@dataclass(frozen=True)
class _Frame:
    """One slice candidate: a frame of an instance with its plane geometry and rescale."""

    dataset: Dataset
    index: int  # 0-based frame index inside ``dataset``
    rows: int
    columns: int
    position: np.ndarray  # ImagePositionPatient of the first transmitted pixel
    orientation: np.ndarray  # 6 direction cosines: row direction, then column direction
    pixel_spacing: tuple[float, float]  # (between rows, between columns), as DICOM orders it
    slope: float
    intercept: float
    frame_of_reference: str | None

    def describe(self) -> str:
        where = describe_instance(self.dataset)
        if frame_count(self.dataset) > 1:
            where += f" frame {self.index + 1}"
        return where


def _floats(value: object, count: int, what: str, frame_desc: str) -> np.ndarray:
    """Parse a multi-valued DS into ``count`` finite floats or raise MissingGeometryError."""
    try:
        values = [float(v) for v in value]  # type: ignore[attr-defined]
    except (TypeError, ValueError) as exc:
        raise MissingGeometryError(f"{frame_desc}: {what} {value!r} is not numeric") from exc
    if len(values) != count or not all(math.isfinite(v) for v in values):
        raise MissingGeometryError(f"{frame_desc}: {what} must hold {count} finite numbers")
    return np.asarray(values, dtype=np.float64)


def _functional_item(ds: Dataset, frame_index: int, sequence: str) -> Dataset | None:
    """Look up a functional group macro per frame first, then in the shared groups."""
    for groups, index in (
        (ds.get("PerFrameFunctionalGroupsSequence"), frame_index),
        (ds.get("SharedFunctionalGroupsSequence"), 0),
    ):
        if groups is None or len(groups) <= index:
            continue
        macro = groups[index].get(sequence)
        if macro:
            return macro[0]
    return None


def _rescale(source: Dataset | None, frame_desc: str) -> tuple[float, float]:
    """RescaleSlope / RescaleIntercept of ``source``; identity when absent.

    A zero or non-numeric slope would silently flatten or poison every measurement, so it is
    refused rather than defaulted.
    """
    if source is None:
        return 1.0, 0.0
    slope = source.get("RescaleSlope")
    intercept = source.get("RescaleIntercept")
    try:
        slope_f = float(slope) if slope not in (None, "") else 1.0
        intercept_f = float(intercept) if intercept not in (None, "") else 0.0
    except (TypeError, ValueError) as exc:
        raise MissingGeometryError(f"{frame_desc}: rescale values are not numeric") from exc
    if not (math.isfinite(slope_f) and math.isfinite(intercept_f)) or slope_f == 0.0:
        raise MissingGeometryError(
            f"{frame_desc}: unusable rescale (slope {slope_f}, intercept {intercept_f})"
        )
    return slope_f, intercept_f


def _frames_of(ds: Dataset) -> list[_Frame]:
    """Expand one instance into its frames, reading geometry from the right place."""
    desc = describe_instance(ds)
    photometric = str(ds.get("PhotometricInterpretation", "")).strip()
    samples = ds.get("SamplesPerPixel", 1)
    if photometric not in _MONOCHROME or int(samples or 1) != 1:
        raise UnsupportedPhotometricError(
            f"{desc}: Photometric Interpretation {photometric or 'absent'!r} with "
            f"{samples} sample(s) per pixel; only single-sample MONOCHROME1/2 can be measured"
        )
    rows, columns = ds.get("Rows"), ds.get("Columns")
    if rows in (None, "") or columns in (None, ""):
        raise MissingGeometryError(f"{desc}: Rows/Columns absent")
    rows, columns = int(rows), int(columns)
    if not (1 <= rows <= MAX_MATRIX and 1 <= columns <= MAX_MATRIX):
        raise AbsurdSizeError(f"{desc}: matrix {rows}x{columns} outside 1..{MAX_MATRIX}")
    frames = frame_count(ds)
    if frames < 1:
        raise AbsurdSizeError(f"{desc}: Number of Frames {frames}")
    frame_of_reference = ds.get("FrameOfReferenceUID") or None
    if not ds.get("SOPInstanceUID") or not ds.get("SOPClassUID"):
        raise MissingGeometryError(f"{desc}: SOP Class/Instance UID absent; slice cannot be cited")

    result = []
    multi = "PerFrameFunctionalGroupsSequence" in ds or "SharedFunctionalGroupsSequence" in ds
    for index in range(frames):
        frame_desc = desc + (f" frame {index + 1}" if frames > 1 else "")
        if multi:
            position_src = _functional_item(ds, index, "PlanePositionSequence")
            orientation_src = _functional_item(ds, index, "PlaneOrientationSequence")
            spacing_src = _functional_item(ds, index, "PixelMeasuresSequence")
            rescale_src = _functional_item(ds, index, "PixelValueTransformationSequence")
            if rescale_src is None and "RescaleSlope" in ds:
                rescale_src = ds
        else:
            position_src = orientation_src = spacing_src = rescale_src = ds
        for source, keyword in (
            (position_src, "ImagePositionPatient"),
            (orientation_src, "ImageOrientationPatient"),
            (spacing_src, "PixelSpacing"),
        ):
            if source is None or source.get(keyword) in (None, ""):
                raise MissingGeometryError(f"{frame_desc}: {keyword} absent")
        spacing = _floats(spacing_src.PixelSpacing, 2, "PixelSpacing", frame_desc)
        if not all(0.0 < s <= MAX_SPACING_MM for s in spacing):
            raise AbsurdSizeError(f"{frame_desc}: PixelSpacing {list(spacing)} mm")
        slope, intercept = _rescale(rescale_src, frame_desc)
        result.append(
            _Frame(
                dataset=ds,
                index=index,
                rows=rows,
                columns=columns,
                position=_floats(position_src.ImagePositionPatient, 3, "IPP", frame_desc),
                orientation=_floats(orientation_src.ImageOrientationPatient, 6, "IOP", frame_desc),
                pixel_spacing=(float(spacing[0]), float(spacing[1])),
                slope=slope,
                intercept=intercept,
                frame_of_reference=frame_of_reference,
            )
        )
    return result


def _check_consistent(frames: list[_Frame]) -> None:
    """All slices must share one plane geometry, series and frame of reference."""
    first = frames[0]
    row_dir, col_dir = first.orientation[:3], first.orientation[3:]
    if (
        abs(np.linalg.norm(row_dir) - 1.0) > 1e-3
        or abs(np.linalg.norm(col_dir) - 1.0) > 1e-3
        or abs(float(row_dir @ col_dir)) > 1e-3
    ):
        raise InconsistentGeometryError(
            f"{first.describe()}: ImageOrientationPatient {list(first.orientation)} is not a pair "
            "of orthogonal unit vectors"
        )
    series_uids = {str(f.dataset.get("SeriesInstanceUID", "")) for f in frames}
    if len(series_uids) > 1:
        raise InconsistentGeometryError(f"slices come from {len(series_uids)} different series")
    for frame in frames[1:]:
        if (frame.rows, frame.columns) != (first.rows, first.columns):
            raise InconsistentGeometryError(
                f"{frame.describe()}: matrix {frame.rows}x{frame.columns} differs from "
                f"{first.rows}x{first.columns} of {first.describe()}"
            )
        if np.max(np.abs(frame.orientation - first.orientation)) > ORIENTATION_TOLERANCE:
            raise InconsistentGeometryError(
                f"{frame.describe()}: orientation {list(frame.orientation)} differs from "
                f"{list(first.orientation)} of {first.describe()}"
            )
        if not np.allclose(frame.pixel_spacing, first.pixel_spacing, rtol=PIXEL_SPACING_RTOL):
            raise InconsistentGeometryError(
                f"{frame.describe()}: PixelSpacing {list(frame.pixel_spacing)} differs from "
                f"{list(first.pixel_spacing)} of {first.describe()}"
            )
        if frame.frame_of_reference != first.frame_of_reference:
            raise InconsistentGeometryError(
                f"{frame.describe()}: Frame of Reference UID differs from {first.describe()}"
            )


def _order_and_step(frames: list[_Frame]) -> tuple[list[_Frame], np.ndarray, float]:
    """Sort along the slice normal; return the frames, the step vector and its normal length.

    The step vector (mean displacement between neighbours) goes into the affine, so a constant
    in-plane shift per slice (a sheared stack) is represented, not ignored; the slice spacing is
    the step's length along the normal, which is what the voxel volume needs.
    """
    normal = np.cross(frames[0].orientation[:3], frames[0].orientation[3:])
    normal /= np.linalg.norm(normal)
    ordered = sorted(frames, key=lambda f: float(normal @ f.position))
    distances = np.array([float(normal @ f.position) for f in ordered])
    steps = np.diff(distances)
    tolerance_abs = STEP_ATOL_MM

    for k, step in enumerate(steps):
        if step <= tolerance_abs:
            a, b = ordered[k], ordered[k + 1]
            same = a.dataset.get("SOPInstanceUID") == b.dataset.get("SOPInstanceUID")
            raise DuplicateSliceError(
                f"{b.describe()} and {a.describe()} share position {distances[k]:.3f} mm "
                f"along the slice normal" + (" (same instance received twice)" if same else "")
            )
    median = float(np.median(steps))
    if median > MAX_SPACING_MM:
        raise AbsurdSizeError(f"slice spacing {median:.3f} mm exceeds {MAX_SPACING_MM} mm")
    tolerance = max(tolerance_abs, STEP_RTOL * median)
    for k, step in enumerate(steps):
        a, b = ordered[k], ordered[k + 1]
        if step >= GAP_FACTOR * median:
            missing = max(1, round(step / median) - 1)
            raise SliceGapError(
                f"gap of {step:.3f} mm (usual step {median:.3f} mm, about {missing} slice(s) "
                f"missing) between {a.describe()} at {distances[k]:.3f} mm and {b.describe()} "
                f"at {distances[k + 1]:.3f} mm along the slice normal"
            )
        if abs(step - median) > tolerance:
            raise NonUniformSpacingError(
                f"step of {step:.3f} mm between {a.describe()} and {b.describe()} differs from "
                f"the usual {median:.3f} mm by more than {tolerance:.3f} mm"
            )

    positions = np.stack([f.position for f in ordered])
    step_vectors = np.diff(positions, axis=0)
    mean_step = step_vectors.mean(axis=0)
    deviation = np.linalg.norm(step_vectors - mean_step, axis=1)
    worst = int(np.argmax(deviation))
    if deviation[worst] > tolerance:
        raise NonUniformSpacingError(
            f"{ordered[worst + 1].describe()} is shifted in-plane by {deviation[worst]:.3f} mm "
            "relative to its neighbours (slices do not form a regular grid)"
        )
    slice_spacing = float((positions[-1] - positions[0]) @ normal) / (len(ordered) - 1)
    return ordered, mean_step, slice_spacing


def _modality_values(frame: _Frame, stored: np.ndarray) -> np.ndarray:
    """Apply the modality LUT: rescale for most objects, a LUT sequence where one is present."""
    if frame.dataset.get("ModalityLUTSequence") and frame_count(frame.dataset) == 1:
        return np.asarray(apply_modality_lut(stored, frame.dataset), dtype=np.float64)
    values = stored.astype(np.float64)
    if frame.slope != 1.0:
        values *= frame.slope
    if frame.intercept != 0.0:
        values += frame.intercept
    return values


def series_to_volume(
    datasets: Sequence[Dataset], *, min_slices: int = 2, max_voxels: int = 512 * 512 * 1024
) -> SeriesVolume:
    """Build the model-orientation volume, spacing, affine and slice references of a series.

    ``datasets`` are the instances of ONE series, in any order. ``min_slices`` counts slices
    (frames), not instances. ``max_voxels`` bounds memory before anything is decoded.

    Raises a :class:`~hippo_scp.imaging.errors.VolumeError` subclass naming the problem.
    """
    if min_slices < 1:
        raise ValueError("min_slices must be at least 1")
    frames: list[_Frame] = []
    for ds in datasets:
        frames.extend(_frames_of(ds))
    if len(frames) < max(min_slices, 1):
        raise TooFewSlicesError(
            f"series has {len(frames)} slice(s); at least {min_slices} are required"
        )
    first = frames[0]
    voxel_count = first.rows * first.columns * len(frames)
    if voxel_count > max_voxels:
        raise AbsurdSizeError(
            f"{first.rows}x{first.columns}x{len(frames)} = {voxel_count} voxels exceeds the "
            f"limit of {max_voxels}"
        )
    _check_consistent(frames)

    if len(frames) >= 2:
        ordered, step_vector, slice_spacing = _order_and_step(frames)
    else:  # only reachable with min_slices=1: thickness is the best we know
        ordered = frames
        thickness = float(first.dataset.get("SliceThickness") or 1.0)
        normal = np.cross(first.orientation[:3], first.orientation[3:])
        step_vector, slice_spacing = normal / np.linalg.norm(normal) * thickness, thickness

    # Decode each instance once; only multi-frame instances (several slices) are kept around.
    multi_frame: dict[int, np.ndarray] = {}
    rows, columns = first.rows, first.columns
    voxels = np.empty((columns, rows, len(ordered)), dtype=np.float32)
    for k, frame in enumerate(ordered):
        if frame_count(frame.dataset) == 1:
            stored = decode_stored_values(frame.dataset)[0]
        else:
            key = id(frame.dataset)
            if key not in multi_frame:
                multi_frame[key] = decode_stored_values(frame.dataset)
            stored = multi_frame[key][frame.index]
        values = _modality_values(frame, stored)
        voxels[:, :, k] = np.flip(values).T

    row_spacing, column_spacing = first.pixel_spacing
    row_dir, col_dir = ordered[0].orientation[:3], ordered[0].orientation[3:]
    # voxel (i, j, k) is pixel (row = Rows-1-j, column = Columns-1-i) of slice k (README flip).
    affine = np.eye(4)
    affine[:3, 0] = -column_spacing * row_dir
    affine[:3, 1] = -row_spacing * col_dir
    affine[:3, 2] = step_vector
    affine[:3, 3] = (
        ordered[0].position
        + (columns - 1) * column_spacing * row_dir
        + (rows - 1) * row_spacing * col_dir
    )

    slices = tuple(
        SliceReference(
            sop_class_uid=str(f.dataset.SOPClassUID),
            sop_instance_uid=str(f.dataset.SOPInstanceUID),
            frame_number=f.index + 1 if frame_count(f.dataset) > 1 else None,
        )
        for f in ordered
    )
    sources: list[Dataset] = []
    seen: set[int] = set()
    for frame in ordered:
        if id(frame.dataset) not in seen:
            seen.add(id(frame.dataset))
            sources.append(frame.dataset)
    return SeriesVolume(
        voxels=voxels,
        spacing_mm=(float(column_spacing), float(row_spacing), float(slice_spacing)),
        affine=affine,
        slices=slices,
        source_datasets=tuple(sources),
    )


__all__ = [
    "AbsurdSizeError",
    "DuplicateSliceError",
    "InconsistentGeometryError",
    "MissingGeometryError",
    "MissingPixelDataError",
    "NonUniformSpacingError",
    "SeriesVolume",
    "SliceGapError",
    "SliceReference",
    "TooFewSlicesError",
    "UndecodablePixelDataError",
    "UnsupportedPhotometricError",
    "VolumeError",
    "series_to_volume",
]
