"""Bound the memory of an inference process: glibc malloc arenas and oneDNN's primitive cache.

Issue #4 caps the peak RSS of an inference process at 400 MB; the node runs for months and sees
HippoCrop volumes of many sizes. Two process-wide defaults work against both, and both are set
here from inside the process, before the first forward pass, so that ``hippo-scp serve``,
``hippo-scp analyze``, the benchmarks and any embedding application get them, not only processes
started through the Docker image or ``start_listener.sh``:

* glibc gives each thread that allocates concurrently its own heap ("arena", up to 8 per core)
  and returns little of it. torch's OpenMP workers and the node's threads each get one:
  ``benchmarks/bench_inference.py`` peaked at 401-409 MB without a limit and 362-396 MB with
  one arena (4 runs each, 2-core VM), at the same speed.
* oneDNN caches up to 1024 compiled primitives (convolution kernels, reorders); one network
  grid needs about 32 of them, so a node that meets many volume sizes keeps ~32 grids' kernels:
  64 different grids drove a process to 518-777 MB, 489-516 MB with 128 entries. 128 entries
  keep four grids compiled (the three test studies' grids and the largest training crop);
  a grid not in the cache costs one slower first call (~+20 ms), not a different result.

An operator's own ``MALLOC_ARENA_MAX`` or ``ONEDNN_PRIMITIVE_CACHE_CAPACITY`` always wins.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
import os

__all__ = [
    "ARENA_ENV",
    "DEFAULT_MAX_ARENAS",
    "DEFAULT_PRIMITIVE_CACHE_CAPACITY",
    "PRIMITIVE_CACHE_ENV",
    "bound_primitive_cache",
    "limit_malloc_arenas",
]

#: glibc's own environment variable for the arena limit.
ARENA_ENV = "MALLOC_ARENA_MAX"
#: One arena: what the Docker image and ``start_listener.sh`` have always set (measured there).
DEFAULT_MAX_ARENAS = 1
#: oneDNN reads this when it creates its primitive cache, i.e. at the first primitive.
PRIMITIVE_CACHE_ENV = "ONEDNN_PRIMITIVE_CACHE_CAPACITY"
#: About five network grids' worth of primitives (about 32 each, plus the probes at load).
DEFAULT_PRIMITIVE_CACHE_CAPACITY = 192
#: ``M_ARENA_MAX`` from glibc's ``<malloc.h>``.
_M_ARENA_MAX = -8

log = logging.getLogger(__name__)


def limit_malloc_arenas(max_arenas: int = DEFAULT_MAX_ARENAS) -> bool:
    """Ask glibc to create at most ``max_arenas`` malloc arenas from now on.

    Returns True when glibc accepted the limit, False when the environment already decides
    (``MALLOC_ARENA_MAX``) or the C library has no ``mallopt`` (musl, macOS). Safe to call
    repeatedly; arenas that already exist are kept, so call it before the first forward pass.
    """
    if max_arenas < 1:
        raise ValueError(f"max_arenas must be >= 1, got {max_arenas}")
    if os.environ.get(ARENA_ENV):
        return False
    applied = _call_mallopt(max_arenas)
    if applied:
        log.debug("malloc arenas limited to %d (mallopt M_ARENA_MAX)", max_arenas)
    return applied


def bound_primitive_cache(capacity: int = DEFAULT_PRIMITIVE_CACHE_CAPACITY) -> int:
    """Set oneDNN's primitive-cache capacity unless the environment already does; returns
    the capacity in effect. Takes effect only if no oneDNN primitive was created yet in this
    process (oneDNN reads the variable once), which holds for a node or CLI process that loads
    its :class:`~hippo_scp.model.inference.Segmenter` before running anything else in torch.
    """
    if capacity < 1:
        raise ValueError(f"capacity must be >= 1, got {capacity}")
    current = os.environ.setdefault(PRIMITIVE_CACHE_ENV, str(capacity))
    try:
        return int(current)
    except ValueError:
        log.warning("%s=%r is not an integer; oneDNN will ignore it", PRIMITIVE_CACHE_ENV, current)
        return capacity


def _call_mallopt(max_arenas: int) -> bool:
    name = ctypes.util.find_library("c")
    if name is None:
        return False
    try:
        mallopt = ctypes.CDLL(name).mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes = (ctypes.c_int, ctypes.c_int)
    mallopt.restype = ctypes.c_int
    return mallopt(_M_ARENA_MAX, max_arenas) == 1
