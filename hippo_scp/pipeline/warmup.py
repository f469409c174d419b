"""One analysis of a synthetic series at start-up, before the node accepts associations.

Why: the first analysis in a process pays for everything Python, pydicom and highdicom load
lazily (highdicom's standard tables are JSON files parsed on first use, pydicom's encoders,
the first TorchScript call). Measured in the end-to-end benchmark, the first study after
start-up spent 1.03-1.12 s in building its SEG / SR / report against 0.43 s for the studies
after it: without a warm-up the first patient after every restart waits ~0.6 s longer. The
synthetic series is built here (a small MR volume with plain geometry, no patient data),
analysed, and its results serialised and dropped; nothing is sent or stored.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, MRImageStorage, generate_uid

LOGGER = logging.getLogger(__name__)

#: Slices x rows x columns of the synthetic volume: above any sensible ``min_slices`` and
#: large enough for the network's padding, small enough to cost well under a second.
WARM_UP_SHAPE = (24, 40, 32)


def synthetic_series(shape: tuple[int, int, int] = WARM_UP_SHAPE) -> list[Dataset]:
    """A single-frame MR series of ``shape`` (slices, rows, columns), 1 mm isotropic, axial.

    The intensities form a bright ellipsoid on a dark background so the model sees an image,
    not noise; the identifiers say what it is (no patient data).
    """
    slices, rows, columns = shape
    z, y, x = np.meshgrid(
        np.linspace(-1, 1, slices), np.linspace(-1, 1, rows), np.linspace(-1, 1, columns),
        indexing="ij",
    )  # fmt: skip
    volume = np.where(x**2 + (y / 0.6) ** 2 + (z / 0.8) ** 2 < 0.5, 900, 100).astype(np.uint16)
    study_uid, series_uid, frame_uid = generate_uid(), generate_uid(), generate_uid()
    datasets = []
    for index in range(slices):
        ds = Dataset()
        ds.SOPClassUID = MRImageStorage
        ds.SOPInstanceUID = generate_uid()
        ds.file_meta = FileMetaDataset()
        ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian  # as the worker decodes them
        ds.StudyInstanceUID, ds.SeriesInstanceUID = study_uid, series_uid
        ds.FrameOfReferenceUID = frame_uid
        ds.Modality = "MR"
        ds.SeriesDescription = "hippo-scp warm-up"
        ds.PatientName, ds.PatientID = "WARM-UP^SYNTHETIC", "WARM-UP"
        ds.PatientBirthDate, ds.PatientSex = "", "O"
        ds.StudyDate, ds.StudyTime, ds.StudyID, ds.AccessionNumber = "20260101", "000000", "1", ""
        ds.ReferringPhysicianName = ""
        ds.SeriesNumber, ds.InstanceNumber = 1, index + 1
        ds.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
        ds.ImagePositionPatient = [0, 0, float(index)]
        ds.PixelSpacing, ds.SliceThickness = [1, 1], 1
        ds.Rows, ds.Columns = rows, columns
        ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 0
        ds.PixelData = volume[index].tobytes()
        datasets.append(ds)
    return datasets


def warm_up(
    analyze: Callable[[Sequence[Dataset]], Any],
    serialise: Callable[[Sequence[Dataset]], object] | None = None,
) -> float:
    """Analyse :func:`synthetic_series` once (and serialise its outputs); returns the ms taken.

    Never raises: a warm-up that fails only means the first real series is slower, so it is
    logged and start-up goes on (a real series then reports its own problem).
    """
    started = time.perf_counter()
    try:
        result = analyze(synthetic_series())
        if serialise is not None:
            serialise([result.seg, result.sr, result.report])
    except Exception as error:  # noqa: BLE001 - see the docstring
        LOGGER.warning("warm-up analysis failed (%s); the first series will be slower", error)
        return (time.perf_counter() - started) * 1000
    elapsed = (time.perf_counter() - started) * 1000
    LOGGER.info("warm-up analysis of a synthetic series: %.0f ms", elapsed)
    return elapsed
