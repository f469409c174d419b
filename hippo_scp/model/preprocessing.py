"""Preprocessing shared by training and inference - the only place these rules live.

A volume goes through, in order:

1. **Resampling to the 1 mm training grid** (only when the input spacing differs from 1 mm by
   more than :data:`SPACING_TOLERANCE_MM`). Grid points are aligned on the first voxel centre,
   which is how a DICOM ImagePositionPatient anchors a series, so the mapping is a pure scale.
2. **Intensity normalisation**: clip to the 0.5-99.5 percentiles, then z-score. Every step is
   equivariant to ``a * x + b`` with ``a > 0``, so RescaleSlope/RescaleIntercept, 12- vs 16-bit
   storage or a scanner gain change leave the network input unchanged (up to float rounding).
3. **Padding** (centred, with 0 = the normalised mean) to a multiple of the network's stride, so
   every down-sampling halves an even size and the skip connections line up.

and the network output is returned the reverse way: crop the padding, resample the class
probabilities (not the hard labels - interpolating probabilities keeps boundaries smooth) back to
the native grid, and take the arg-max.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage

#: The grid the network was trained on (every MSD Task04 volume is 1 mm isotropic).
TRAINING_SPACING_MM: tuple[float, float, float] = (1.0, 1.0, 1.0)
#: Spacings closer than this to the training grid are treated as equal (no resampling).
SPACING_TOLERANCE_MM = 1e-3
#: Percentiles used to clip outliers (bright vessels, fat) before the z-score.
CLIP_PERCENTILES = (0.5, 99.5)


def normalize_intensity(volume: np.ndarray) -> np.ndarray:
    """Percentile clip then z-score, as float32; invariant to any positive affine rescaling."""
    v = np.asarray(volume, dtype=np.float32)
    lo, hi = np.percentile(v, CLIP_PERCENTILES)
    v = np.clip(v, lo, hi)
    mean = float(v.mean())
    std = float(v.std())
    if std < 1e-6 * max(1.0, abs(mean)):  # constant volume: nothing to see, avoid dividing by 0
        return np.zeros_like(v)
    return (v - mean) / std


@dataclass(frozen=True)
class PadInfo:
    """How a volume was padded, so the exact original extent can be cut back out."""

    shape: tuple[int, int, int]
    before: tuple[int, int, int]
    after: tuple[int, int, int]


def pad_to_multiple(
    volume: np.ndarray, multiple: int, min_shape: tuple[int, int, int] | None = None
) -> tuple[np.ndarray, PadInfo]:
    """Zero-pad the last three axes, centred, up to a multiple of ``multiple`` / ``min_shape``."""
    shape = tuple(int(s) for s in volume.shape[-3:])
    before: list[int] = []
    after: list[int] = []
    for i, s in enumerate(shape):
        target = max(s, min_shape[i] if min_shape else 0)
        target = -(-target // multiple) * multiple
        total = target - s
        before.append(total // 2)
        after.append(total - total // 2)
    pad_width = [(0, 0)] * (volume.ndim - 3) + list(zip(before, after, strict=True))
    padded = np.pad(volume, pad_width, mode="constant", constant_values=0)
    return padded, PadInfo(shape, tuple(before), tuple(after))  # type: ignore[arg-type]


def crop_padding(array: np.ndarray, info: PadInfo) -> np.ndarray:
    """Inverse of :func:`pad_to_multiple` on the last three axes (any leading axes kept)."""
    sl = tuple(slice(b, b + s) for b, s in zip(info.before, info.shape, strict=True))
    return array[(..., *sl)]


def needs_resampling(spacing_mm: tuple[float, float, float]) -> bool:
    return any(
        abs(float(s) - t) > SPACING_TOLERANCE_MM
        for s, t in zip(spacing_mm, TRAINING_SPACING_MM, strict=True)
    )


def resampled_shape(
    shape: tuple[int, ...], src_spacing: tuple[float, ...], dst_spacing: tuple[float, ...]
) -> tuple[int, int, int]:
    """Number of destination voxels that cover the source extent (at least 1 per axis)."""
    return tuple(  # type: ignore[return-value]
        max(1, int(round(n * s / d)))
        for n, s, d in zip(shape[-3:], src_spacing, dst_spacing, strict=True)
    )


def resample(
    volume: np.ndarray,
    src_spacing: tuple[float, ...],
    dst_spacing: tuple[float, ...],
    out_shape: tuple[int, int, int],
    order: int,
) -> np.ndarray:
    """Resample the last three axes from one grid to another, first voxel centres aligned.

    Destination voxel ``j`` sits at physical ``j * dst``, i.e. at source index ``j * dst / src``.
    ``order=0`` (nearest) for labels, ``order=1`` (linear) for intensities / probabilities; at
    integer source positions both reproduce the source values exactly, which makes an integer
    up-sampling followed by the way back an exact round trip.
    """
    factors = [d / s for s, d in zip(src_spacing, dst_spacing, strict=True)]
    coords = np.meshgrid(
        *[np.arange(n, dtype=np.float64) * f for n, f in zip(out_shape, factors, strict=True)],
        indexing="ij",
    )
    grid = np.stack(coords)
    if volume.ndim == 3:
        return ndimage.map_coordinates(volume, grid, order=order, mode="nearest")
    lead = volume.shape[:-3]
    flat = volume.reshape(-1, *volume.shape[-3:])
    out = np.stack([ndimage.map_coordinates(v, grid, order=order, mode="nearest") for v in flat])
    return out.reshape(*lead, *out_shape)


@dataclass(frozen=True)
class PreparedVolume:
    """Network input plus everything needed to map the output back to the caller's grid."""

    array: np.ndarray  # (X', Y', Z') float32, normalised, padded, on the 1 mm grid
    native_shape: tuple[int, int, int]
    native_spacing: tuple[float, float, float]
    resampled: bool
    pad: PadInfo


def prepare_volume(
    volume: np.ndarray, spacing_mm: tuple[float, float, float], multiple: int
) -> PreparedVolume:
    """Resample (if needed), normalise and pad one (X, Y, Z) volume for the network."""
    v = np.asarray(volume, dtype=np.float32)
    if v.ndim != 3:
        raise ValueError(f"expected a 3-D (X, Y, Z) volume, got shape {v.shape}")
    spacing = tuple(float(s) for s in spacing_mm)
    if len(spacing) != 3 or any(s <= 0 for s in spacing):
        raise ValueError(f"spacing must be three positive numbers, got {spacing_mm}")
    do_resample = needs_resampling(spacing)  # type: ignore[arg-type]
    if do_resample:
        shape = resampled_shape(v.shape, spacing, TRAINING_SPACING_MM)
        v = resample(v, spacing, TRAINING_SPACING_MM, shape, order=1).astype(np.float32)
    v = normalize_intensity(v)
    padded, pad = pad_to_multiple(v, multiple)
    return PreparedVolume(
        array=np.ascontiguousarray(padded, dtype=np.float32),
        native_shape=tuple(int(s) for s in volume.shape),  # type: ignore[arg-type]
        native_spacing=spacing,  # type: ignore[arg-type]
        resampled=do_resample,
        pad=pad,
    )


def restore_labels(probabilities: np.ndarray, prepared: PreparedVolume) -> np.ndarray:
    """(C, X', Y', Z') class scores on the padded network grid -> uint8 labels, native grid."""
    p = crop_padding(probabilities, prepared.pad)
    if prepared.resampled:
        p = resample(
            np.ascontiguousarray(p, dtype=np.float32),
            TRAINING_SPACING_MM,
            prepared.native_spacing,
            prepared.native_shape,
            order=1,
        )
    return np.argmax(p, axis=0).astype(np.uint8)
