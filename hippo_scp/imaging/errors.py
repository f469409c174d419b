"""Exceptions raised when a received series cannot become a trustworthy volume.

Every refusal has its own class so that the pipeline can report *why* a study was not analysed
(and tests can assert the exact reason) without parsing messages. Messages name the offending
instance by InstanceNumber / SOPInstanceUID / position only: they end up in logs and in
failure reports, so they must never carry patient identifiers.
"""

from __future__ import annotations


class VolumeError(ValueError):
    """Base class: the series cannot be turned into a volume the model may measure."""


class TooFewSlicesError(VolumeError):
    """Fewer slices (frames) than the configured minimum."""


class MissingGeometryError(VolumeError):
    """An attribute needed to place a slice in space (position, orientation, spacing), to cite
    it (SOP Class / Instance UID) or to scale its values (rescale) is absent or malformed."""


class InconsistentGeometryError(VolumeError):
    """Slices disagree on orientation, matrix size, pixel spacing, frame of reference or series,
    or the orientation itself is not a valid pair of orthonormal vectors."""


class DuplicateSliceError(VolumeError):
    """Two slices occupy the same position along the slice normal."""


class SliceGapError(VolumeError):
    """At least one slice is missing: a step between neighbours is a multiple of the usual one."""


class NonUniformSpacingError(VolumeError):
    """Steps between neighbouring slices differ by more than the tolerance (no single voxel
    size describes the stack, so mm and mm³ would be wrong)."""


class MissingPixelDataError(VolumeError):
    """Pixel Data is absent, empty or shorter than Rows x Columns x Frames requires."""


class UnsupportedPhotometricError(VolumeError):
    """Not a single-sample MONOCHROME1/MONOCHROME2 image (e.g. RGB, palette colour)."""


class AbsurdSizeError(VolumeError):
    """Matrix, voxel count or voxel spacing outside anything a real MR series can have."""


class UndecodablePixelDataError(VolumeError):
    """The pixel data could not be decoded (unknown transfer syntax, missing codec, corrupt
    compressed stream)."""


__all__ = [
    "AbsurdSizeError",
    "DuplicateSliceError",
    "InconsistentGeometryError",
    "MissingGeometryError",
    "MissingPixelDataError",
    "NonUniformSpacingError",
    "SliceGapError",
    "TooFewSlicesError",
    "UndecodablePixelDataError",
    "UnsupportedPhotometricError",
    "VolumeError",
]
