"""Memory bounds of an inference process (malloc arenas, oneDNN primitive cache).

The RSS figures themselves are measured by ``benchmarks/bench_inference.py``, not here; these
tests pin the behaviour the figures rely on: the bounds are applied by the process itself,
an operator's own setting wins, and the primitive cache really stops growing with new grids.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from hippo_scp.model import inference, memory_limits
from hippo_scp.model.memory_limits import (
    ARENA_ENV,
    DEFAULT_PRIMITIVE_CACHE_CAPACITY,
    PRIMITIVE_CACHE_ENV,
    bound_primitive_cache,
    limit_malloc_arenas,
)

REPO = Path(__file__).resolve().parents[2]


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc mallopt")
def test_arena_limit_is_accepted_by_glibc(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(ARENA_ENV, raising=False)
    assert limit_malloc_arenas() is True


def test_operator_arena_setting_wins(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(ARENA_ENV, "4")
    called: list[int] = []
    monkeypatch.setattr(memory_limits, "_call_mallopt", lambda n: called.append(n) or True)
    assert limit_malloc_arenas() is False
    assert called == []


def test_invalid_limits_are_refused() -> None:
    with pytest.raises(ValueError, match="max_arenas"):
        limit_malloc_arenas(0)
    with pytest.raises(ValueError, match="capacity"):
        bound_primitive_cache(0)


def test_primitive_cache_default_and_operator_override(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(PRIMITIVE_CACHE_ENV, raising=False)
    assert bound_primitive_cache() == DEFAULT_PRIMITIVE_CACHE_CAPACITY
    assert os.environ[PRIMITIVE_CACHE_ENV] == str(DEFAULT_PRIMITIVE_CACHE_CAPACITY)
    monkeypatch.setenv(PRIMITIVE_CACHE_ENV, "2048")
    assert bound_primitive_cache() == 2048
    assert os.environ[PRIMITIVE_CACHE_ENV] == "2048"


def test_segmenter_applies_both_bounds_before_loading(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[str] = []
    monkeypatch.setattr(inference, "limit_malloc_arenas", lambda: calls.append("arenas"))
    monkeypatch.setattr(inference, "bound_primitive_cache", lambda: calls.append("cache"))

    def load_fails(path: Path) -> None:
        calls.append("load")
        raise inference.WeightsIntegrityError("stop here")

    monkeypatch.setattr(inference, "load_weights", load_fails)
    with pytest.raises(inference.WeightsIntegrityError):
        inference.Segmenter(Path("unused.safetensors"))
    assert calls == ["arenas", "cache", "load"]


_CYCLE_GRIDS = textwrap.dedent(
    """
    import torch
    from hippo_scp.model.inference import Segmenter
    seg = Segmenter(num_threads=1)
    grids = [(x, y, z) for x in (16, 24) for y in (16, 24) for z in (16, 24)]
    with torch.inference_mode():
        for grid in grids:
            seg.network(torch.zeros(1, 1, *grid))
        print("=== second pass", flush=True)
        for grid in grids:
            seg.network(torch.zeros(1, 1, *grid))
    """
)


def _second_pass_cache_misses(extra_env: dict[str, str]) -> int:
    env = {k: v for k, v in os.environ.items() if k != PRIMITIVE_CACHE_ENV}
    env.update(ONEDNN_VERBOSE="2", PYTHONPATH=str(REPO), **extra_env)
    out = subprocess.run(
        [sys.executable, "-c", _CYCLE_GRIDS],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        check=True,
    ).stdout
    second = out.split("=== second pass", 1)[1]
    return sum("cache_miss" in line for line in second.splitlines())


def test_node_process_does_not_keep_every_grid_compiled() -> None:
    """Eight grids (~32 primitives each) overflow the bounded cache: the second pass
    recompiles; with the operator's larger capacity everything stays cached, so the bound is
    what the process itself applied (oneDNN verbose log, not timing)."""
    assert _second_pass_cache_misses({}) > 0
    assert _second_pass_cache_misses({PRIMITIVE_CACHE_ENV: "1024"}) == 0
