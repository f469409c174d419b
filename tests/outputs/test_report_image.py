"""The Secondary Capture report: expected size, RGB, not blank, flagged as burned-in."""

from __future__ import annotations

import numpy as np

from hippo_scp import MANUFACTURER, SOFTWARE_NAME
from hippo_scp.outputs.identity import REPORT_SERIES_DESCRIPTION
from hippo_scp.outputs.report_image import HEIGHT, WIDTH, _font, _person_name


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
