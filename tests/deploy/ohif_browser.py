"""Drive the OHIF viewer in headless Chromium (Playwright's API, the system's /usr/bin/chromium).

Used by test_ohif_browser.py; also runnable by hand against any running stack to refresh the
README screenshots:

    .venv/bin/python tests/deploy/ohif_browser.py \\
        http://127.0.0.1:3000 http://127.0.0.1:8042 docs/img

Every check looks at what was rendered (DOM text, pixels of the viewport), not at HTTP codes.
"""

from __future__ import annotations

import io
import json
import os
import re
import shutil
import sys
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path

CHROMIUM = os.environ.get("CHROMIUM", "/usr/bin/chromium")
# WebGL through SwiftShader: without --enable-unsafe-swiftshader Chromium 156 headless leaves
# OHIF's viewport black (its CPU-rendering fallback does not draw either).
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--enable-unsafe-swiftshader",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
VIEWPORT = {"width": 1400, "height": 900}
THUMBNAIL = "[data-cy^='study-browser-thumbnail']"
TIMEOUT_MS = 120_000


def chromium_path() -> str | None:
    return CHROMIUM if Path(CHROMIUM).exists() else shutil.which("chromium")


@dataclass
class PixelStats:
    """What a screenshot region holds: enough to tell an image from a blank/black canvas."""

    mean: float
    std: float
    saturated: int  # clearly coloured pixels (|R-B| or |G-B| large): overlays, the report
    bright: int  # pixels brighter than 40/255

    @classmethod
    def of(cls, png: bytes) -> PixelStats:
        import numpy as np
        from PIL import Image

        rgb = np.asarray(Image.open(io.BytesIO(png)).convert("RGB")).astype(np.int32)
        r, g, b = rgb[..., 0], rgb[..., 1], rgb[..., 2]
        spread = np.maximum(np.abs(r - g), np.maximum(np.abs(r - b), np.abs(g - b)))
        return cls(
            mean=float(rgb.mean()),
            std=float(rgb.std()),
            saturated=int((spread > 60).sum()),
            bright=int((rgb.max(axis=-1) > 40).sum()),
        )


class Ohif:
    """One browser session on an OHIF server."""

    def __init__(self, url: str) -> None:
        from playwright.sync_api import sync_playwright

        self.url = url.rstrip("/")
        self._playwright = sync_playwright().start()
        executable = chromium_path()
        if executable is None:
            raise RuntimeError("chromium not found")
        self._browser = self._playwright.chromium.launch(
            executable_path=executable, headless=True, args=CHROMIUM_ARGS
        )
        context = self._browser.new_context(viewport=VIEWPORT)
        # A first-time visitor gets an onboarding tour over the viewer: mark it as seen.
        context.add_init_script(
            "localStorage.setItem('shownTours', JSON.stringify(['basicViewerTour']))"
        )
        self.page = context.new_page()
        self.console: list[str] = []
        self.page.on("console", lambda m: self.console.append(f"{m.type}: {m.text[:300]}"))

    def close(self) -> None:
        self._browser.close()
        self._playwright.stop()

    def __enter__(self) -> Ohif:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- study list ---------------------------------------------------------------------------
    def study_list(self, expected_rows: int) -> str:
        """Open the study list; return its text once ``expected_rows`` studies are listed."""
        self.page.goto(self.url + "/")
        self.page.get_by_text("Study List").first.wait_for(timeout=TIMEOUT_MS)
        rows = self.page.locator("tbody tr")
        deadline = time.monotonic() + TIMEOUT_MS / 1000
        while rows.count() < expected_rows and time.monotonic() < deadline:
            time.sleep(0.5)
        time.sleep(1)  # let the table finish painting
        return self.page.locator("body").inner_text()

    # -- viewer ---------------------------------------------------------------------------------
    def open_viewer(self, study_uid: str) -> list[str]:
        """Open the viewer on a study; return the study browser's thumbnail texts."""
        self.page.goto(f"{self.url}/viewer?StudyInstanceUIDs={study_uid}")
        self.page.locator(THUMBNAIL).first.wait_for(timeout=TIMEOUT_MS)
        self.page.locator("canvas").first.wait_for(timeout=TIMEOUT_MS)
        self._wait_viewport_painted()
        thumbnails = self.page.locator(THUMBNAIL)
        return [thumbnails.nth(i).inner_text() for i in range(thumbnails.count())]

    def viewport_png(self) -> bytes:
        """Screenshot of the active viewport's element (the canvas and its overlays)."""
        viewport = self.page.locator("[data-viewportid]").first
        if viewport.count() == 0:
            viewport = self.page.locator("canvas").first
        return viewport.screenshot()

    def viewport_stats(self) -> PixelStats:
        """Pixel statistics of the viewport once it shows an image (or after a minute)."""
        time.sleep(1)
        return self._wait_viewport_painted()

    def _wait_viewport_painted(self, timeout: float = 60) -> PixelStats:
        deadline = time.monotonic() + timeout
        while True:
            stats = PixelStats.of(self.viewport_png())
            if stats.std > 5 or time.monotonic() >= deadline:
                return stats
            time.sleep(1)

    def show_series(self, label: str) -> None:
        """Double-click the thumbnail whose text has ``label`` (e.g. the series description)."""
        thumbnail = self.page.locator(THUMBNAIL, has_text=label).first
        thumbnail.wait_for(timeout=TIMEOUT_MS)
        thumbnail.dblclick()

    def show_segmentation(self, label: str) -> None:
        """Load a SEG over its referenced series, answering OHIF's "open it?" prompt."""
        self.show_series(label)
        yes = self.page.get_by_role("button", name="Yes")
        try:
            yes.first.wait_for(timeout=30_000)
            yes.first.click()
        except Exception:  # noqa: BLE001 - no prompt in this OHIF configuration
            pass

    def close_cine(self) -> None:
        """OHIF opens its cine player for some series; close it (it hides the image)."""
        close = self.page.locator("[data-cy='cine-player-close']")
        if close.count():
            close.first.click()

    def instance_number(self) -> int | None:
        """InstanceNumber shown in the viewport's overlay ("I:25 (8/32)")."""
        overlay = self.page.get_by_text(re.compile(r"^I:\s*\d+ \(\d+/\d+\)$"))
        if overlay.count() == 0:
            return None
        return int(re.match(r"I:\s*(\d+)", overlay.first.inner_text())[1])

    def go_to_instance(self, target: int, max_steps: int = 64) -> bool:
        """Step through the stack with the arrow keys until the overlay shows ``target``."""
        self.page.locator("[data-viewportid]").first.hover()
        key = "ArrowDown"
        for _ in range(max_steps):
            current = self.instance_number()
            if current is None or current == target:
                return current == target
            self.page.keyboard.press(key)
            moved = self.instance_number()
            if moved is not None and abs(moved - target) > abs(current - target):
                key = "ArrowUp" if key == "ArrowDown" else "ArrowDown"
        return self.instance_number() == target

    def wait_for_colour(self, minimum: int, timeout: float = 90) -> PixelStats:
        """Wait until the viewport shows at least ``minimum`` clearly coloured pixels."""
        deadline = time.monotonic() + timeout
        while True:
            stats = PixelStats.of(self.viewport_png())
            if stats.saturated >= minimum or time.monotonic() >= deadline:
                return stats
            time.sleep(1)

    def wait_toasts_gone(self, timeout: float = 15) -> None:
        """Notifications fade out by themselves; keep them out of the screenshots."""
        deadline = time.monotonic() + timeout
        while self.page.locator("[data-sonner-toast]").count() and time.monotonic() < deadline:
            time.sleep(0.5)

    def screenshot(self, path: Path) -> bytes:
        self.wait_toasts_gone()
        path.parent.mkdir(parents=True, exist_ok=True)
        return self.page.screenshot(path=str(path))


def largest_segment_slice(orthanc_url: str, study_uid: str) -> int | None:
    """InstanceNumber of the analysed slice where the study's SEG covers the most pixels."""
    import numpy as np
    import pydicom

    def call(path: str, body: dict | None = None):
        data = json.dumps(body).encode() if body is not None else None
        with urllib.request.urlopen(orthanc_url + path, data=data, timeout=60) as answer:
            return answer.read()

    query = {"Level": "Instance", "Query": {"StudyInstanceUID": study_uid, "Modality": "SEG"}}
    segs = json.loads(call("/tools/find", query))
    if not segs:
        return None
    seg = pydicom.dcmread(io.BytesIO(call(f"/instances/{segs[0]}/file")))
    frames = seg.pixel_array.reshape(int(seg.NumberOfFrames), int(seg.Rows), int(seg.Columns))
    area: dict[float, int] = {}
    for frame, group in zip(frames, seg.PerFrameFunctionalGroupsSequence, strict=True):
        z = round(float(group.PlanePositionSequence[0].ImagePositionPatient[2]), 3)
        area[z] = area.get(z, 0) + int(np.count_nonzero(frame))
    best_z = max(area, key=area.__getitem__)
    series_uid = seg.ReferencedSeriesSequence[0].SeriesInstanceUID
    query = {"Level": "Instance", "Query": {"SeriesInstanceUID": series_uid}, "Expand": True}
    for instance in json.loads(call("/tools/find", query)):
        tags = instance["MainDicomTags"]
        z = round(float(tags["ImagePositionPatient"].split("\\")[2]), 3)
        if z == best_z:
            return int(tags["InstanceNumber"])
    return None


def capture_all(
    url: str, orthanc_url: str, study_uid: str, out: Path, studies: int
) -> dict[str, PixelStats]:
    """The three README screenshots: study list, SC report, SEG overlay."""
    stats: dict[str, PixelStats] = {}
    with Ohif(url) as ohif:
        ohif.study_list(studies)
        stats["list"] = PixelStats.of(ohif.screenshot(out / "ohif_study_list.png"))
        ohif.open_viewer(study_uid)
        ohif.show_series("Report")
        stats["report"] = ohif.wait_for_colour(20_000)
        ohif.close_cine()
        ohif.screenshot(out / "ohif_report.png")
        ohif.show_series("HippoCrop")
        before = ohif.viewport_stats()
        ohif.show_segmentation("SEG")
        ohif.close_cine()
        ohif.wait_for_colour(before.saturated + 200)
        target = largest_segment_slice(orthanc_url, study_uid)
        if target is not None:
            ohif.go_to_instance(target)
        stats["seg"] = ohif.wait_for_colour(before.saturated + 2_000)
        ohif.screenshot(out / "ohif_seg_overlay.png")
    return stats


if __name__ == "__main__":
    base, orthanc, folder = sys.argv[1], sys.argv[2], Path(sys.argv[3])
    with urllib.request.urlopen(base + "/dicom-web/studies") as answer:
        listed = json.load(answer)
    # Study1 (PGBM-002) when present: the README's screenshots show it.
    listed.sort(key=lambda s: s.get("00100020", {}).get("Value", [""])[0] != "PGBM-002")
    uid = listed[0]["0020000D"]["Value"][0]
    print(capture_all(base, orthanc, uid, folder, len(listed)))
