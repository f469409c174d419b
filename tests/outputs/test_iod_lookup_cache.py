"""highdicom's per-image IOD look-up is cached once per process, with the same answers."""

from __future__ import annotations

import importlib

import pytest
from pydicom.uid import (
    ComprehensiveSRStorage,
    MRImageStorage,
    SecondaryCaptureImageStorage,
    SegmentationStorage,
)

from hippo_scp.outputs.iod_lookup_cache import USING_MODULES, memoize_iod_lookups


def test_every_highdicom_module_that_uses_the_lookup_shares_one_cache() -> None:
    patched = memoize_iod_lookups()
    assert patched == list(USING_MODULES)  # a highdicom upgrade that moves it shows up here
    functions = {importlib.import_module(m).does_iod_have_pixel_data for m in USING_MODULES}
    (cached,) = functions
    assert hasattr(cached, "cache_info")
    assert memoize_iod_lookups() == patched  # idempotent
    assert {importlib.import_module(m).does_iod_have_pixel_data for m in USING_MODULES} == {cached}


def test_cached_answers_are_highdicom_answers() -> None:
    memoize_iod_lookups()
    from highdicom import _standard_utils

    cached = _standard_utils.does_iod_have_pixel_data
    original = cached.__wrapped__
    for uid in (MRImageStorage, SecondaryCaptureImageStorage, SegmentationStorage,
                ComprehensiveSRStorage):  # fmt: skip
        assert cached(uid) == original(uid)
    assert cached(MRImageStorage) is True and cached(ComprehensiveSRStorage) is False
    with pytest.raises(KeyError):  # an unknown SOP class is still an error, every time
        cached("1.2.3.4")
    with pytest.raises(KeyError):
        cached("1.2.3.4")
