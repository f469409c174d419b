"""The Secondary Capture report: expected size, RGB, not blank, flagged as burned-in."""

from __future__ import annotations

import datetime
import json
from dataclasses import replace
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from hippo_scp import MANUFACTURER, SOFTWARE_NAME
from hippo_scp.outputs.identity import REPORT_SERIES_DESCRIPTION
from hippo_scp.outputs.report_image import (
    HEIGHT,
    WIDTH,
    PriorReport,
    _flag_lines,
    _font,
    _person_name,
    describe_model_error,
    render_report,
    report_content_from_dataset,
)
from hippo_scp.pipeline.measurement import HippocampusVolumes
from hippo_scp.pipeline.prior_comparison import PriorLookup, PriorMeasurement, compare_with_prior
from tests.outputs.conftest import IDENTITY


def test_report_sc_is_rgb_of_expected_size_and_not_blank(built):
    sc = built.sc
    assert (sc.Rows, sc.Columns) == (HEIGHT, WIDTH) == (1024, 1024)
    assert sc.PhotometricInterpretation == "RGB" and sc.SamplesPerPixel == 3
    pixels = sc.pixel_array
    assert pixels.shape == (HEIGHT, WIDTH, 3) and pixels.dtype == np.uint8
    assert pixels.std() > 20
    grey_levels = np.unique(pixels[..., 0][pixels[..., 0] == pixels[..., 1]])
    assert grey_levels.size > 50  # anti-aliased text and the greyscale MR montage
    # The label colours of the contours are present in the montage.
    for colour in ((230, 159, 0), (86, 180, 233)):
        assert (pixels == colour).all(axis=-1).sum() > 50


def test_report_sc_header(built):
    sc = built.sc
    src = built.sources[0]
    assert sc.SeriesDescription == REPORT_SERIES_DESCRIPTION
    assert sc.Manufacturer == MANUFACTURER
    assert str(sc.SoftwareVersions[0]).startswith(SOFTWARE_NAME)
    assert sc.BurnedInAnnotation == "YES"
    assert sc.StudyInstanceUID == src.StudyInstanceUID
    assert sc.SeriesInstanceUID not in {src.SeriesInstanceUID, built.seg.SeriesInstanceUID}
    assert sc.PatientName == src.PatientName and sc.PatientID == src.PatientID
    assert sc.PatientSex == src.PatientSex and sc.PatientBirthDate == src.PatientBirthDate


def test_shipped_fonts_load():
    assert _font(20).getname()[0] == "DejaVu Sans"
    assert _font(20, bold=True).getname()[1] == "Bold"


def test_person_name_formatting():
    assert _person_name("Müller^Jürgen") == "Müller, Jürgen"
    assert _person_name("Yamada^Tarou=山田^太郎=やまだ^たろう") == "Yamada, Tarou"
    assert _person_name("") == "not recorded"


SHIPPED_SIDECAR = Path(__file__).resolve().parents[2] / "model_weights" / "hippo_unet.json"


def test_the_model_error_lines_come_from_the_shipped_sidecar():
    sidecar = json.loads(SHIPPED_SIDECAR.read_text())
    stats = sidecar["calibration"]["out_of_fold_volume_error_pct"]
    lines = describe_model_error(sidecar)
    assert lines[0] == f"Volume error in cross-validation, median ({stats['n_cases']} cases):"
    assert f"total ±{stats['total']['median_abs']:.1f} %" in lines[1]
    assert f"90 % of cases: ±{stats['total']['p90_abs']:.0f} %" in lines[1]
    assert f"ant. ±{stats['anterior']['median_abs']:.0f} %" in lines[1]
    # weights without the record (trained, never calibrated) print nothing rather than guess
    assert describe_model_error({"training": {}}) == ()
    assert describe_model_error(None) == ()
    broken = {"calibration": {"out_of_fold_volume_error_pct": {"n_cases": "x"}}}
    assert describe_model_error(broken) == ()


def test_the_model_error_is_printed_under_the_volumes(built):
    content = report_content_from_dataset(
        built.sources[0], built.volumes, (), replace(IDENTITY, model_error_lines=("a", "b"))
    )
    assert tuple(content.model_error_lines) == ("a", "b")
    frames = built.volume.to_frames(built.volume.voxels)
    labels = built.volume.to_frames(built.labels)
    fixed = {"generated": "2026-01-01 00:00"}
    with_lines = render_report(
        replace(
            content,
            model_error_lines=describe_model_error(json.loads(SHIPPED_SIDECAR.read_text())),
            **fixed,
        ),
        frames,
        labels,
    )
    without = render_report(replace(content, model_error_lines=(), **fixed), frames, labels)
    changed = np.argwhere((with_lines != without).any(axis=2))
    assert changed.size
    rows, cols = changed[:, 0], changed[:, 1]
    # only the block under the volume table (right half, above the montage) differs
    assert rows.min() >= 270 and rows.max() < 320
    assert cols.min() >= 500


def _comparison(interval_days: int, model_version: str = "m1", count: int = 1):
    today = datetime.date(2026, 3, 1)
    priors = tuple(
        PriorMeasurement(
            f"1.2.{i}",
            today - datetime.timedelta(days=interval_days + i * 400),
            1900.0,
            1500.0,
            3400.0,
            model_version=model_version,
        )
        for i in range(count)
    )
    return compare_with_prior(
        HippocampusVolumes(1800, 1450, 1.0),
        current_study_uid="1.2.now",
        current_date=today,
        current_model_version="m1",
        lookup=PriorLookup("found", priors),
    )


def test_prior_block_wording():
    assert PriorReport.of(None, None) is None  # no source asked: no block
    report = PriorReport(_comparison(365))
    assert report.heading() == "Prior 2025-03-01 (1.0 years earlier)"
    assert report.footnote() == "total -4.4 %/year"
    short = PriorReport(_comparison(45, model_version="m0", count=2))
    assert short.heading().endswith("(45 days earlier)")
    assert short.footnote() == "prior by another model; latest of 2 exams"
    assert PriorReport(_comparison(0)).heading().endswith("(same day)")
    assert PriorReport(_comparison(120)).heading().endswith("(4 months earlier)")
    none = PriorReport.of(PriorLookup("none", reason="x"), None)
    assert none is not None and none.comparison is None and "No earlier" in none.note
    failed = PriorReport.of(PriorLookup("failed", reason="ORTHANC@pacs:104: refused"), None)
    assert failed is not None and "failed" in failed.note
    unavailable = PriorReport.of(
        PriorLookup("unavailable", reason="the series has no PatientID"), None
    )
    assert unavailable is not None and "no PatientID" in unavailable.note


def test_the_prior_block_is_drawn_in_the_bottom_panel_only(built):
    content = report_content_from_dataset(built.sources[0], built.volumes, (), IDENTITY)
    frames = built.volume.to_frames(built.volume.voxels)
    labels = built.volume.to_frames(built.labels)
    fixed = {"generated": "2026-01-01 00:00"}
    without = render_report(replace(content, **fixed), frames, labels)
    for prior in (
        PriorReport(_comparison(365)),
        PriorReport.of(PriorLookup("failed", reason="x"), None),
    ):
        page = render_report(replace(content, prior=prior, **fixed), frames, labels)
        changed = np.argwhere((page != without).any(axis=2))
        assert changed.size
        rows, cols = changed[:, 0], changed[:, 1]
        # the bottom panel (y 790-926): the QC text re-wraps on the left, the block on the right
        assert rows.min() >= 790 and rows.max() <= 926
        assert (cols >= WIDTH // 2).sum() > (cols < WIDTH // 2).sum()


def test_no_qc_flag_is_silently_dropped_from_the_page() -> None:
    """Three long flags (a wrong crop raises them together) do not fit wrapped in 4 lines:
    each gets one shortened line; more than four: the last line counts the rest."""
    draw = ImageDraw.Draw(Image.new("RGB", (10, 10)))
    font = _font(18)
    flags = [
        "Total volume 6,100 mm³ outside training range 2,400-4,400 mm³",
        "Low model confidence (mean max-softmax 0.61)",
        "Total volume changed +85 % since the prior: check both crops show the same hippocampus",
    ]
    lines = _flag_lines(draw, flags, font, 430)
    assert len(lines) == 3
    assert [line[:14] for line in lines] == [f"!  {flag}"[:14] for flag in flags]
    assert _flag_lines(draw, flags[:1], font, 430)[1].startswith("    ")  # wrapped when it fits
    many = _flag_lines(draw, [f"flag {i}" for i in range(6)], font, 430)
    assert many[-1] == "!  ... and 3 more flag(s)" and len(many) == 4
