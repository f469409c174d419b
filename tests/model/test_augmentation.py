"""Spatial augmentation and the head/body boundary convention.

Every reference splits head from body at a plane across the A/P array axis (the annotators chose
a slice). These tests pin down that the training augmentation can keep that convention: rotating
about the A/P axis keeps the plane, rotating about the others tilts it, and snapping re-splits a
tilted sample at a plane without touching its outline.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from hippo_scp.model.dataset import AP_AXIS, list_case_ids, load_case
from hippo_scp.model.training import (
    TrainConfig,
    clone_config,
    describe_augmentation,
    snap_ap_boundary,
    spatial_augment,
)

CANVAS = (40, 56, 40)


def _off_plane(labels: torch.Tensor) -> int:
    """Voxels on the wrong side of the best head/body plane across the A/P axis."""
    return int((snap_ap_boundary(labels) != labels).sum())


@pytest.fixture(scope="module")
def batch(data_dir: Path) -> tuple[torch.Tensor, torch.Tensor]:
    """Four real cases whose reference boundary is exactly a plane (157 of the 208 are), placed
    in the training canvas: image and labels."""
    x = torch.zeros(4, 1, *CANVAS)
    y = torch.zeros(4, *CANVAS, dtype=torch.int64)
    i = 0
    for case_id in list_case_ids(data_dir):
        case = load_case(data_dir, case_id)
        if any(n > c for n, c in zip(case.image.shape, CANVAS, strict=True)):
            continue
        label = torch.from_numpy(case.label.astype(np.int64))
        if _off_plane(label) > 0:
            continue
        sl = tuple(slice(0, n) for n in case.image.shape)
        x[(i, 0, *sl)] = torch.from_numpy(case.image)
        y[(i, *sl)] = label
        i += 1
        if i == 4:
            return x, y
    raise AssertionError("fewer than four references with a plane boundary")


def _augment(batch, **kwargs) -> torch.Tensor:
    x, y = batch
    gen = torch.Generator().manual_seed(7)
    return spatial_augment(x.clone(), y.clone(), gen, prob=1.0, **kwargs)[1]


def test_snap_keeps_a_reference_that_is_already_a_plane(data_dir: Path) -> None:
    label = torch.from_numpy(load_case(data_dir, "hippocampus_001").label.astype(np.int64))
    assert _off_plane(label) == 0
    assert torch.equal(snap_ap_boundary(label), label)


def test_snap_puts_the_head_at_the_higher_indices_and_keeps_the_outline() -> None:
    labels = torch.zeros(6, 10, 6, dtype=torch.int64)
    labels[1:5, 2:8, 1:5] = 2
    labels[1:5, 5:8, 1:5] = 1
    labels[1, 4, 1] = 1  # one head voxel on the body side of the plane
    snapped = snap_ap_boundary(labels)
    assert torch.equal(snapped > 0, labels > 0)
    index = torch.arange(10).reshape(1, -1, 1).expand_as(labels)
    assert int(index[snapped == 1].min()) == 5 and int(index[snapped == 2].max()) == 4
    body_only = torch.where(labels > 0, 2, 0)
    assert torch.equal(snap_ap_boundary(body_only), body_only)


def test_rotation_about_other_axes_tilts_the_boundary(batch) -> None:
    tilted = _augment(batch, rotation_axes=(0, 1, 2))
    assert all(_off_plane(tilted[i]) > 0 for i in range(4))


def test_rotation_about_the_ap_axis_keeps_a_plane(batch) -> None:
    assert AP_AXIS == 1
    rotated = _augment(batch, rotation_axes=(AP_AXIS,))
    assert all(_off_plane(rotated[i]) == 0 for i in range(4))
    assert not torch.equal(rotated, batch[1])  # it did rotate


def test_snapping_restores_the_plane_and_keeps_the_rotated_outline(batch) -> None:
    tilted = _augment(batch, rotation_axes=(0, 1, 2))
    snapped = _augment(batch, rotation_axes=(0, 1, 2), snap_boundary=True)
    assert all(_off_plane(snapped[i]) == 0 for i in range(4))
    assert torch.equal(snapped > 0, tilted > 0)


def test_sidecar_recipe_says_when_the_augmentation_departs_from_the_shipped_one(
    tmp_path: Path,
) -> None:
    shipped = TrainConfig(data_dir=tmp_path, out_dir=tmp_path)
    shipped_text = json.loads(
        (Path(__file__).resolve().parents[2] / "model_weights" / "hippo_unet.json").read_text()
    )["training"]["augmentation"]
    assert describe_augmentation(shipped) == shipped_text
    ap_only = describe_augmentation(clone_config(shipped, rotation_axes=(AP_AXIS,)))
    assert "about array axes [1] only" in ap_only
    assert "re-split" in describe_augmentation(clone_config(shipped, snap_boundary=True))
    assert describe_augmentation(clone_config(shipped, augment=False)) == "none"
