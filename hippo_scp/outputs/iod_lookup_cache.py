"""A cache for highdicom's "is this SOP class an image?" look-up, which it repeats per image.

highdicom 0.28 answers ``does_iod_have_pixel_data(sop_class_uid)`` by scanning every attribute
of every module of the IOD in its tables of the standard: ~5 ms per call on the 2-core box. It
asks once per referenced image (the SR's TID 1600 image library has one entry per source
slice), 35 times per HippoCrop analysis: ~0.13-0.17 s of a ~1 s encode stage (measured,
docs/benchmarks.md). The answer depends only on the SOP Class UID and highdicom's static copy
of the standard, so remembering it cannot change any output; an unknown SOP class still raises
(``functools.lru_cache`` does not cache exceptions).

highdicom imports the function by name into the modules that use it, so each of those names is
pointed at the cached function. A module whose name is not highdicom's function any more (a
future release) is left alone: the cache then simply does not apply there. Worth proposing
upstream (an ``lru_cache`` on the function); remove this module once highdicom caches it.
"""

from __future__ import annotations

import functools
import importlib
from collections.abc import Callable

#: highdicom modules that import ``does_iod_have_pixel_data`` by name (0.28)
USING_MODULES = (
    "highdicom._standard_utils",
    "highdicom.sr.templates",
    "highdicom.image",
    "highdicom.content",
    "highdicom.base_content",
)
_NAME = "does_iod_have_pixel_data"


def memoize_iod_lookups() -> list[str]:
    """Point highdicom's modules at one cached look-up; returns the modules now using it.

    Idempotent: a second call finds the cached function in place and changes nothing.
    """
    source = importlib.import_module(USING_MODULES[0])
    current: Callable[[str], bool] | None = getattr(source, _NAME, None)
    if current is None:
        return []
    original = getattr(current, "__wrapped__", current)
    cached = (
        current if hasattr(current, "cache_info") else functools.lru_cache(maxsize=256)(original)
    )
    patched = []
    for name in USING_MODULES:
        module = importlib.import_module(name)
        if getattr(module, _NAME, None) in (original, cached):
            setattr(module, _NAME, cached)
            patched.append(name)
    return patched
