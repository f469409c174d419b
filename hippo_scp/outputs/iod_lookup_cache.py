"""A cache for highdicom's per-image SOP class look-ups, which it repeats for every image.

highdicom 0.28 answers two questions about the SOP class of every referenced image from scratch:

* ``does_iod_have_pixel_data(sop_class_uid)`` ("is it an image?") scans every attribute of
  every module of the IOD in its tables of the standard: ~5 ms per call, 35 calls per HippoCrop
  analysis (the SR's TID 1600 image library has one entry per source slice);
* ``_get_coded_modality(sop_class_uid)`` builds a dictionary of ~40 modality codes to look one
  up: ~0.8 ms per call, 64 calls per analysis.

Together ~0.2 s of a ~1 s encode stage on the 2-core box (docs/benchmarks.md). Both answers
depend only on the SOP Class UID and highdicom's static copy of the standard, and both are
immutable (a ``bool``, a ``pydicom`` ``Code`` named tuple), so remembering them cannot change
any output; an unknown SOP class still raises every time (``functools.lru_cache`` does not
cache exceptions).

highdicom imports the functions by name into the modules that use them, so each of those names
is pointed at the cached function. A name that is not highdicom's function any more (a future
release) is left alone: the cache then simply does not apply there, and the test in
``tests/outputs/test_iod_lookup_cache.py`` says so. Worth proposing upstream (an ``lru_cache``
on both); remove this module once highdicom caches them.
"""

from __future__ import annotations

import functools
import importlib

#: function name -> (module that defines it, modules that import it by name), highdicom 0.28
CACHED_LOOKUPS: dict[str, tuple[str, ...]] = {
    "does_iod_have_pixel_data": (
        "highdicom._standard_utils",
        "highdicom.sr.templates",
        "highdicom.image",
        "highdicom.content",
        "highdicom.base_content",
    ),
    "_get_coded_modality": ("highdicom.sr.templates",),
}


def memoize_iod_lookups() -> list[str]:
    """Point highdicom's modules at cached look-ups; returns ``module.function`` now cached.

    Idempotent: a second call finds the cached functions in place and changes nothing.
    """
    patched = []
    for function, modules in CACHED_LOOKUPS.items():
        current = getattr(importlib.import_module(modules[0]), function, None)
        if current is None:
            continue
        original = getattr(current, "__wrapped__", current)
        if hasattr(current, "cache_info"):
            cached = current
        else:
            cached = functools.lru_cache(maxsize=256)(original)
        for name in modules:
            module = importlib.import_module(name)
            if getattr(module, function, None) in (original, cached):
                setattr(module, function, cached)
                patched.append(f"{name}.{function}")
    return patched
