"""Fixtures for the output builders: a real NIfTI training case as a DICOM series, with its
ground-truth label standing in for the model output (so the tests do not need weights)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import highdicom as hd
import numpy as np
import pydicom
import pytest
from pydicom import Dataset

from hippo_scp.imaging.series_volume import SeriesVolume, series_to_volume
from hippo_scp.outputs.identity import OutputIdentity
from hippo_scp.outputs.report_image import (
    build_report_sc,
    render_report,
    report_content_from_dataset,
)
from hippo_scp.outputs.seg import build_segmentation
from hippo_scp.outputs.sr import build_volume_sr
from hippo_scp.pipeline.measurement import HippocampusVolumes, measure_volumes, qc_flags
from tests.dicom_factory import INTEGER_CASE, load_nifti_case, require_data, series_from_volume

IDENTITY = OutputIdentity(model_version="test-model-1", weights_sha256="0123456789abcdef" * 4)


@dataclass
class BuiltOutputs:
    """Source series, labels, and the three objects written to disk and read back."""

    sources: list[Dataset]
    volume: SeriesVolume
    labels: np.ndarray
    volumes: HippocampusVolumes
    seg_path: Path
    sr_path: Path
    sc_path: Path
    seg: Dataset
    sr: Dataset
    sc: Dataset


def build_outputs(sources: list[Dataset], labels: np.ndarray, folder: Path) -> BuiltOutputs:
    """Build SEG, SR and SC like the analyzer does, write them, read them back."""
    volume = series_to_volume(sources)
    volumes = measure_volumes(labels, volume.voxel_volume_mm3)
    uids = {0: hd.UID(), 1: hd.UID(), 2: hd.UID()}
    ordered = list(volume.source_datasets)
    label_frames = volume.to_frames(labels)
    seg = build_segmentation(ordered, label_frames, IDENTITY, tracking_uids=uids)
    sr = build_volume_sr(ordered, seg, volumes, IDENTITY, tracking_uids=uids)
    content = report_content_from_dataset(ordered[0], volumes, qc_flags(volumes), IDENTITY)
    rgb = render_report(content, volume.to_frames(volume.voxels), label_frames)
    sc = build_report_sc(ordered[0], rgb, IDENTITY)
    folder.mkdir(parents=True, exist_ok=True)
    paths = {name: folder / f"{name}.dcm" for name in ("seg", "sr", "sc")}
    for name, ds in (("seg", seg), ("sr", sr), ("sc", sc)):
        ds.save_as(paths[name], enforce_file_format=True)
    return BuiltOutputs(
        sources=ordered,
        volume=volume,
        labels=labels,
        volumes=volumes,
        seg_path=paths["seg"],
        sr_path=paths["sr"],
        sc_path=paths["sc"],
        seg=pydicom.dcmread(paths["seg"]),
        sr=pydicom.dcmread(paths["sr"]),
        sc=pydicom.dcmread(paths["sc"]),
    )


@pytest.fixture(scope="session")
def nifti_case() -> tuple[np.ndarray, np.ndarray]:
    require_data()
    return load_nifti_case(INTEGER_CASE)


@pytest.fixture(scope="session")
def built(nifti_case, tmp_path_factory) -> BuiltOutputs:
    """Case 1 as an anisotropic series (0.9 x 0.8 x 1.5 mm) so mm³ != voxel count."""
    image, label = nifti_case
    sources = series_from_volume(image, spacing=(0.9, 0.8, 1.5))
    return build_outputs(sources, label, tmp_path_factory.mktemp("outputs"))
