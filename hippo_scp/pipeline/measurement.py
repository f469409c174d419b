"""Hippocampus volumes from a label array, and the quality-control flags derived from them.

Volumes are *voxel counts x voxel volume*: no partial-volume correction and no resampling, so
the SR numbers can be re-derived exactly from the SEG (the tests check this identity).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

ANTERIOR_LABEL = 1
POSTERIOR_LABEL = 2


@dataclass(frozen=True)
class HippocampusVolumes:
    """Voxel counts per label and the physical voxel size they are multiplied by."""

    anterior_voxels: int
    posterior_voxels: int
    voxel_volume_mm3: float

    @property
    def total_voxels(self) -> int:
        return self.anterior_voxels + self.posterior_voxels

    @property
    def anterior_mm3(self) -> float:
        return self.anterior_voxels * self.voxel_volume_mm3

    @property
    def posterior_mm3(self) -> float:
        return self.posterior_voxels * self.voxel_volume_mm3

    @property
    def total_mm3(self) -> float:
        return self.total_voxels * self.voxel_volume_mm3

    @property
    def anterior_share(self) -> float:
        """Anterior fraction of the total (0 when nothing was segmented)."""
        return self.anterior_voxels / self.total_voxels if self.total_voxels else 0.0

    @property
    def posterior_share(self) -> float:
        return self.posterior_voxels / self.total_voxels if self.total_voxels else 0.0

    def to_json_dict(self) -> dict[str, float | int]:
        return {
            "anterior_mm3": self.anterior_mm3,
            "posterior_mm3": self.posterior_mm3,
            "total_mm3": self.total_mm3,
            "anterior_voxels": self.anterior_voxels,
            "posterior_voxels": self.posterior_voxels,
            "total_voxels": self.total_voxels,
            "voxel_volume_mm3": self.voxel_volume_mm3,
            "anterior_share": self.anterior_share,
            "posterior_share": self.posterior_share,
        }


def measure_volumes(labels: np.ndarray, voxel_volume_mm3: float) -> HippocampusVolumes:
    """Count anterior (1) and posterior (2) voxels.

    Raises ``ValueError`` for labels outside {0, 1, 2}: silently ignoring them would make the SR
    disagree with the SEG.
    """
    if voxel_volume_mm3 <= 0 or not np.isfinite(voxel_volume_mm3):
        raise ValueError(f"voxel volume must be positive, got {voxel_volume_mm3!r}")
    counts = np.bincount(np.asarray(labels, dtype=np.int64).ravel(), minlength=3)
    if counts.size > 3 and counts[3:].any():
        raise ValueError(f"unexpected label values {np.flatnonzero(counts[3:]) + 3}")
    return HippocampusVolumes(
        anterior_voxels=int(counts[ANTERIOR_LABEL]),
        posterior_voxels=int(counts[POSTERIOR_LABEL]),
        voxel_volume_mm3=float(voxel_volume_mm3),
    )


@dataclass(frozen=True)
class QCThresholds:
    """Plausibility limits. Defaults: the range of total volumes seen in the training data
    (Decathlon Task04, ~2,400-4,400 mm³ per hippocampus); outside it the model extrapolates."""

    total_min_mm3: float = 2400.0
    total_max_mm3: float = 4400.0
    #: Mean max-softmax over the predicted foreground below which a result is flagged.
    min_confidence: float = 0.80


def qc_flags(
    volumes: HippocampusVolumes,
    thresholds: QCThresholds | None = None,
    *,
    confidence: float | None = None,
) -> list[str]:
    """Human-readable QC flags (empty list: nothing to flag). Flags never block the result:
    they are shown on the report so a reader can judge it."""
    t = thresholds or QCThresholds()
    flags: list[str] = []
    if volumes.total_voxels == 0:
        flags.append("No hippocampus segmented (both labels empty)")
    else:
        if volumes.anterior_voxels == 0:
            flags.append("Anterior hippocampus label empty")
        if volumes.posterior_voxels == 0:
            flags.append("Posterior hippocampus label empty")
        if not t.total_min_mm3 <= volumes.total_mm3 <= t.total_max_mm3:
            flags.append(
                f"Total volume {volumes.total_mm3:,.0f} mm³ outside training range "
                f"{t.total_min_mm3:,.0f}-{t.total_max_mm3:,.0f} mm³"
            )
    if confidence is not None and confidence < t.min_confidence:
        flags.append(f"Low model confidence (mean max-softmax {confidence:.2f})")
    return flags
