"""Non-ASCII patient names survive into SEG, SR and SC (SpecificCharacterSet copied)."""

from __future__ import annotations

import pydicom
import pytest

from tests.dicom_factory import series_from_volume
from tests.outputs.conftest import build_outputs


@pytest.mark.parametrize(
    ("charset", "name"),
    [
        ("ISO_IR 192", "Müller^Jürgen"),
        ("ISO_IR 192", "Yamada^Tarou=山田^太郎=やまだ^たろう"),
        ("ISO_IR 100", "Søren^Ærø"),
    ],
    ids=["utf8-german", "utf8-japanese", "latin1"],
)
def test_non_ascii_patient_name_round_trips(nifti_case, tmp_path, charset, name):
    image, label = nifti_case
    middle = image.shape[2] // 2
    window = slice(middle - 4, middle + 4)  # 8 slices keep the test fast
    sources = series_from_volume(
        image[:, :, window], patient_name=name, patient_id="ÄÖÜ-1", character_set=charset
    )
    out = build_outputs(sources, label[:, :, window], tmp_path)
    for path in (out.seg_path, out.sr_path, out.sc_path):
        ds = pydicom.dcmread(path)
        assert ds.SpecificCharacterSet == charset, path.name
        assert str(ds.PatientName) == name, path.name
        assert ds.PatientID == "ÄÖÜ-1", path.name


def test_iso2022_japanese_with_implicit_default_repertoire(nifti_case, tmp_path):
    """``\\ISO 2022 IR 87`` (empty first value) is how Japanese scanners send names; the
    outputs spell the default repertoire out (ISO 2022 IR 6) and keep every name intact."""
    image, label = nifti_case
    middle = image.shape[2] // 2
    window = slice(middle - 4, middle + 4)
    name = "ヤマダ^タロウ=山田^太郎"
    sources = series_from_volume(
        image[:, :, window], patient_name=name, character_set=["", "ISO 2022 IR 87"]
    )
    out = build_outputs(sources, label[:, :, window], tmp_path)
    for path in (out.seg_path, out.sr_path, out.sc_path):
        ds = pydicom.dcmread(path)
        assert list(ds.SpecificCharacterSet) == ["ISO 2022 IR 6", "ISO 2022 IR 87"], path.name
        assert str(ds.PatientName) == name, path.name
