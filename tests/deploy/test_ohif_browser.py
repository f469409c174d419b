"""OHIF in headless Chromium against the end-to-end stack (Orthanc + node results).

The screenshots go to the test's tmp folder; with HIPPO_KEEP_SCREENSHOTS=1 they replace the
ones in docs/img/ (the README shows them), so an ordinary test run leaves the checkout
unchanged. Assertions are on the rendered DOM and on viewport pixels.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from .conftest import REPO, STUDIES, Stack
from .ohif_browser import Ohif, PixelStats, chromium_path, largest_segment_slice

pytestmark = [pytest.mark.network, pytest.mark.e2e, pytest.mark.timeout(600)]


@pytest.fixture(scope="module")
def ohif(node_stack: Stack, processed: list[dict]):
    if chromium_path() is None:
        pytest.skip("chromium is not installed (apt package chromium; deploy_scripts/install.sh)")
    pytest.importorskip("playwright", reason="playwright is not installed (install.sh)")
    with Ohif(node_stack.ohif_url) as session:
        yield session


@pytest.fixture(scope="module")
def shots(tmp_path_factory: pytest.TempPathFactory) -> Path:
    if os.environ.get("HIPPO_KEEP_SCREENSHOTS", "0") == "1":
        return REPO / "docs" / "img"
    return tmp_path_factory.mktemp("screenshots")


@pytest.fixture(scope="module")
def study1(processed: list[dict]) -> dict:
    return next(s for s in processed if s["patient_id"] == "PGBM-002")  # Study1


def test_study_list_shows_every_study_with_the_results(ohif: Ohif, shots: Path):
    text = ohif.study_list(len(STUDIES))
    stats = PixelStats.of(ohif.screenshot(shots / "ohif_study_list.png"))
    assert text.count("MR\\OT\\SEG\\SR") == len(STUDIES), text
    assert f"1-{len(STUDIES)} of {len(STUDIES)}" in text
    assert stats.bright > 10_000  # not a blank page


def test_viewer_lists_the_node_series(ohif: Ohif, study1: dict):
    thumbnails = ohif.open_viewer(study1["study_instance_uid"])
    joined = "\n".join(thumbnails)
    assert "HippoCrop" in joined
    for modality in ("SR", "SEG", "OT"):
        assert any(t.startswith(modality + "\n") for t in thumbnails), thumbnails
    stats = PixelStats.of(ohif.viewport_png())
    assert stats.std > 5, f"the viewport is blank: {stats}"


def test_viewer_renders_the_report(ohif: Ohif, study1: dict, shots: Path):
    ohif.show_series("Report")
    stats = ohif.wait_for_colour(20_000)
    ohif.close_cine()
    ohif.screenshot(shots / "ohif_report.png")
    # The report is a coloured RGB page: large coloured areas, far from black.
    assert stats.saturated >= 20_000 and stats.mean > 30, stats


def test_viewer_overlays_the_segmentation(ohif: Ohif, study1: dict, shots: Path, node_stack: Stack):
    ohif.show_series("HippoCrop")
    before = ohif.viewport_stats()
    ohif.show_segmentation("SEG")
    ohif.close_cine()
    ohif.wait_for_colour(before.saturated + 200)  # the SEG is loaded and drawn
    target = largest_segment_slice(node_stack.orthanc_url, study1["study_instance_uid"])
    assert target is not None
    assert ohif.go_to_instance(target)  # the slice with the largest cross-section
    after = ohif.wait_for_colour(before.saturated + 2_000)
    ohif.screenshot(shots / "ohif_seg_overlay.png")
    assert after.saturated >= before.saturated + 2_000, (before, after)
    body = ohif.page.locator("body").inner_text()
    assert "HippoCrop" in body  # the overlay sits on the analysed series
