"""Shared pytest set-up: import paths and the shared-data fixture.

Keep this file minimal -- module-specific fixtures belong in the sub-folders' conftest files.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

_TESTS_DIR = Path(__file__).resolve().parent
# Both `import tests.dicom_factory` and `import dicom_factory` work.
for _path in (_TESTS_DIR.parent, _TESTS_DIR):
    if str(_path) not in sys.path:
        sys.path.insert(0, str(_path))

from tests.dicom_factory import require_data  # noqa: E402


@pytest.fixture(scope="session")
def data_dir() -> Path:
    """``../shared/data`` (or ``$HIPPO_DATA_DIR``); skips the test when it is absent."""
    return require_data()
