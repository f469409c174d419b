"""Shared fixtures for the model tests: the training data folder (skip cleanly without it)."""

from __future__ import annotations

from pathlib import Path

import pytest

from hippo_scp.model.dataset import default_data_dir


@pytest.fixture(scope="session")
def data_dir() -> Path:
    """``../shared/data/hippocampus`` relative to the repository (or ``$HIPPO_DATA_DIR``)."""
    path = default_data_dir()
    if not (path / "imagesTr").is_dir():
        pytest.skip(f"training data not found at {path} (set HIPPO_DATA_DIR)")
    return path
