"""Training losses on a real reference label: the boundary profile term sees where the
anterior/posterior boundary lies, and is small when the prediction matches."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from hippo_scp.model.dataset import AP_AXIS, list_case_ids, load_case
from hippo_scp.model.evaluation import split_at_plane
from hippo_scp.model.training import boundary_profile_loss, deep_supervision_loss


def _logits(labels: np.ndarray) -> torch.Tensor:
    """Confident logits (N=1, C=3, X, Y, Z) for a label volume."""
    onehot = np.stack([labels == c for c in range(3)]).astype(np.float32)
    return torch.from_numpy(onehot * 20.0 - 10.0)[None].requires_grad_(True)


def _moved_boundary(labels: np.ndarray, slices: int) -> np.ndarray:
    """``labels`` with the head starting ``slices`` later across the A/P axis."""
    first_anterior = int(np.indices(labels.shape)[AP_AXIS][labels == 1].min())
    return split_at_plane(labels, first_anterior + slices)


def test_boundary_profile_loss_grows_with_a_misplaced_boundary(data_dir: Path) -> None:
    label = load_case(data_dir, list_case_ids(data_dir)[0]).label
    target = torch.from_numpy(label.astype(np.int64))[None]
    exact = boundary_profile_loss(_logits(label), target)
    shifted = [boundary_profile_loss(_logits(_moved_boundary(label, k)), target) for k in (1, 3)]
    assert exact.item() < shifted[0].item() < shifted[1].item()
    shifted[1].backward()  # differentiable: it can train the network


def test_boundary_term_is_added_only_when_weighted(data_dir: Path) -> None:
    label = load_case(data_dir, list_case_ids(data_dir)[0]).label
    target = torch.from_numpy(label.astype(np.int64))[None]
    logits = _logits(_moved_boundary(label, 2))
    plain = deep_supervision_loss(logits, target)
    weighted = deep_supervision_loss(logits, target, boundary_weight=0.5)
    expected = plain + 0.5 * boundary_profile_loss(logits, target)
    assert torch.isclose(weighted, expected)
    assert weighted.item() > plain.item()
