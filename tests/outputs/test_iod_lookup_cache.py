"""highdicom's per-image SOP class look-ups are cached once per process, with the same answers."""

from __future__ import annotations

import importlib

import pytest
from pydicom.uid import (
    ComprehensiveSRStorage,
    MRImageStorage,
    SecondaryCaptureImageStorage,
    SegmentationStorage,
)

from hippo_scp.outputs.iod_lookup_cache import CACHED_LOOKUPS, memoize_iod_lookups

EVERY_USE = [f"{m}.{f}" for f, modules in CACHED_LOOKUPS.items() for m in modules]


def _functions(function: str) -> set:
    return {getattr(importlib.import_module(m), function) for m in CACHED_LOOKUPS[function]}


def test_every_highdicom_module_that_uses_a_lookup_shares_one_cache() -> None:
    assert memoize_iod_lookups() == EVERY_USE  # a highdicom upgrade that moves one shows here
    for function in CACHED_LOOKUPS:
        (cached,) = _functions(function)
        assert hasattr(cached, "cache_info"), function
    before = {function: _functions(function) for function in CACHED_LOOKUPS}
    assert memoize_iod_lookups() == EVERY_USE  # idempotent
    assert {function: _functions(function) for function in CACHED_LOOKUPS} == before


def test_cached_answers_are_highdicom_answers() -> None:
    memoize_iod_lookups()
    from highdicom import _standard_utils
    from highdicom.sr import templates

    is_image = _standard_utils.does_iod_have_pixel_data
    for uid in (MRImageStorage, SecondaryCaptureImageStorage, SegmentationStorage,
                ComprehensiveSRStorage):  # fmt: skip
        assert is_image(uid) == is_image.__wrapped__(uid)
    assert is_image(MRImageStorage) is True and is_image(ComprehensiveSRStorage) is False
    modality = templates._get_coded_modality
    assert modality(MRImageStorage) == modality.__wrapped__(MRImageStorage)
    assert modality(MRImageStorage).value == "MR"
    # An unknown SOP class is still an error, every time (exceptions are not cached).
    for _ in range(2):
        with pytest.raises(KeyError):
            is_image("1.2.3.4")
        with pytest.raises(ValueError):
            modality("1.2.3.4")
