"""The folder scanner groups DICOM files by series whatever the nesting and names, ignores
non-DICOM files, and applies the node's selection rules."""

from __future__ import annotations

import logging

import numpy as np

from hippo_scp.assembly.selection import SelectionConfig, SeriesSelector
from hippo_scp.pipeline.folder_source import scan_folder
from tests.dicom_factory import series_from_volume, write_series


def test_scan_groups_selects_and_ignores_junk(tmp_path):
    volume = np.arange(12 * 10 * 9, dtype=np.float32).reshape(12, 10, 9) % 50
    crop = series_from_volume(volume, series_description="HippoCrop")
    other = series_from_volume(
        volume, series_description="T2_reg", study_uid=crop[0].StudyInstanceUID
    )
    write_series(crop, tmp_path / "a" / "deep" / "x")
    write_series(other, tmp_path / "b")
    (tmp_path / "README.txt").write_text("not dicom")
    (tmp_path / "a" / "DICOMDIR.bak").write_bytes(b"\x00" * 300)
    (tmp_path / "b" / "empty").write_bytes(b"")

    scan = scan_folder(tmp_path, SeriesSelector(SelectionConfig()))

    assert scan.non_dicom_files == 3
    assert len(scan.series) == 2
    (selected,) = scan.selected
    assert selected.series_instance_uid == crop[0].SeriesInstanceUID
    assert len(selected.files) == 9
    (rejected,) = scan.not_selected
    assert rejected.series_description == "T2_reg"
    assert rejected.decision is not None and not rejected.decision.selected
    loaded = selected.load()
    assert {ds.SOPInstanceUID for ds in loaded} == {ds.SOPInstanceUID for ds in crop}
    assert all("PixelData" in ds for ds in loaded)


def test_info_logs_do_not_name_the_folder(tmp_path, caplog):
    """Folders are often named after the patient; INFO logs must not carry the path."""
    volume = np.arange(12 * 10 * 9, dtype=np.float32).reshape(12, 10, 9) % 50
    write_series(series_from_volume(volume), tmp_path / "DOE_JANE_1970")
    with caplog.at_level(logging.INFO):
        scan = scan_folder(tmp_path, SeriesSelector(SelectionConfig()))
    assert len(scan.selected) == 1
    info = [r.getMessage() for r in caplog.records if r.levelno >= logging.INFO]
    assert info and not any("DOE_JANE" in message for message in info)
