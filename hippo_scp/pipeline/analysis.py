"""One series in, three DICOM results out: the analysis pipeline shared by ``serve`` and
``analyze``.

Operators in the MONAI-Deploy sense, each with one job, run in order by
:meth:`SeriesAnalyzer.analyze`::

    series_to_volume  ->  Segmenter.segment  ->  measure_volumes / qc_flags
      ->  [PriorSource.lookup -> compare_with_prior]
      ->  build_segmentation  ->  build_volume_sr  ->  render_report + build_report_sc

The analyzer is built once per process (the model is loaded once) and never touches the
network or the file system itself: the caller decides where results go, and passes the
optional prior source (the node's PACS query, :mod:`hippo_scp.network.prior_query`) per call,
so a warm-up or ``hippo-scp analyze`` run asks no PACS. Calls are serialised by a lock, so the
node's worker thread and anything else may share one instance safely.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

import highdicom as hd
import numpy as np
from pydicom import Dataset

from hippo_scp import __version__
from hippo_scp.imaging.series_volume import SeriesVolume, series_to_volume
from hippo_scp.outputs.identity import (
    ANTERIOR_STRUCTURE,
    POSTERIOR_STRUCTURE,
    WHOLE_STRUCTURE,
    OutputIdentity,
    reference_headers,
)
from hippo_scp.outputs.report_image import (
    PriorReport,
    build_report_sc,
    describe_model_error,
    png_bytes,
    render_report,
    report_content_from_dataset,
)
from hippo_scp.outputs.seg import build_segmentation
from hippo_scp.outputs.sr import build_volume_sr
from hippo_scp.pipeline.measurement import (
    HippocampusVolumes,
    QCThresholds,
    measure_volumes,
    qc_flags,
)
from hippo_scp.pipeline.prior_comparison import (
    PriorComparison,
    PriorComparisonSettings,
    PriorLookup,
    compare_with_prior,
    parse_dicom_date,
    prior_comparison_flags,
)

logger = logging.getLogger(__name__)


@runtime_checkable
class SegmenterLike(Protocol):
    """What the analyzer needs from :class:`hippo_scp.model.inference.Segmenter`.

    A segmenter may additionally offer ``segment_with_confidence(voxels, spacing_mm) ->
    (labels, confidence)`` (confidence = mean max-softmax over predicted foreground); the
    low-confidence QC flag is raised only when it does.
    """

    weights_sha256: str
    model_version: str

    def segment(self, voxels: np.ndarray, spacing_mm: tuple[float, float, float]) -> np.ndarray: ...


@runtime_checkable
class PriorSource(Protocol):
    """Where earlier results of the patient come from (the node: a PACS query). ``lookup``
    gets the first instance of the analysed series and must not raise: a failed lookup is a
    :class:`PriorLookup` with status ``failed``, and the report says so."""

    def lookup(self, current: Dataset) -> PriorLookup: ...


@dataclass(frozen=True)
class AnalysisSettings:
    """Knobs of the pipeline (defaults match the training data and the selection defaults)."""

    min_slices: int = 8
    qc: QCThresholds = field(default_factory=QCThresholds)
    priors: PriorComparisonSettings = field(default_factory=PriorComparisonSettings)


class AnalysisError(RuntimeError):
    """The model produced something the outputs cannot represent (wrong shape, labels)."""


@dataclass(frozen=True)
class OutputReference:
    """UIDs of one produced object (what a PACS / viewer will index it by)."""

    series_instance_uid: str
    sop_instance_uid: str
    sop_class_uid: str

    @classmethod
    def of(cls, ds: Dataset) -> OutputReference:
        return cls(str(ds.SeriesInstanceUID), str(ds.SOPInstanceUID), str(ds.SOPClassUID))


@dataclass(frozen=True, eq=False)
class AnalysisResult:
    """Everything one analysis produced. ``to_json_dict`` is safe to log or store: it holds no
    patient identifiers (the DICOM objects and the report image do, by design)."""

    study_instance_uid: str
    series_instance_uid: str
    series_description: str
    volumes: HippocampusVolumes
    labels: np.ndarray
    seg: Dataset
    sr: Dataset
    report: Dataset
    #: the rendered report page (rows, columns, 3) uint8, as in ``report``'s pixels
    report_rgb: np.ndarray
    model_version: str
    weights_sha256: str
    qc_flags: list[str]
    timings_ms: dict[str, float]
    confidence: float | None = None
    slice_count: int = 0
    spacing_mm: tuple[float, float, float] = (1.0, 1.0, 1.0)
    #: what the PACS said about earlier results (None: no prior source was asked)
    prior_lookup: PriorLookup | None = None
    #: the change since the most recent earlier examination (None: nothing to compare)
    prior_comparison: PriorComparison | None = None

    @property
    def report_png(self) -> bytes:
        """The report page as PNG, encoded on demand: only ``hippo-scp analyze`` writes it,
        and encoding costs ~0.1 s that the node would spend on every study for nothing."""
        return png_bytes(self.report_rgb)

    @property
    def datasets(self) -> tuple[Dataset, Dataset, Dataset]:
        """The three objects to send, in the order a PACS should receive them (SEG first so
        the SR's reference to it resolves)."""
        return (self.seg, self.sr, self.report)

    def to_json_dict(self) -> dict[str, Any]:
        return {
            "study_instance_uid": self.study_instance_uid,
            "series_instance_uid": self.series_instance_uid,
            "series_description": self.series_description,
            "slice_count": self.slice_count,
            "spacing_mm": list(self.spacing_mm),
            "volumes": self.volumes.to_json_dict(),
            "qc_flags": list(self.qc_flags),
            "confidence": self.confidence,
            "model_version": self.model_version,
            "weights_sha256": self.weights_sha256,
            "software_version": __version__,
            "outputs": {
                name: OutputReference.of(ds).__dict__
                for name, ds in (("sr", self.sr), ("seg", self.seg), ("report", self.report))
            },
            "prior_comparison": self.prior_summary(),
            "timings_ms": {k: round(v, 1) for k, v in self.timings_ms.items()},
        }

    def prior_summary(self) -> dict[str, Any] | None:
        """The comparison with the prior as numbers (or why there is none), no identifiers;
        None when no prior source was asked. The worker files it in the outbox summary."""
        if self.prior_lookup is None:
            return None
        if self.prior_comparison is not None:
            return {"status": "compared", **self.prior_comparison.to_json_dict()}
        return {"status": self.prior_lookup.status, "reason": self.prior_lookup.reason}


def _frames_in_source_order(volume: SeriesVolume, frames: np.ndarray) -> np.ndarray:
    """Reorder slice-ordered frames to the order highdicom pairs them with ``source_images``.

    Classic series: one instance per slice, already in slice order. A single multi-frame
    instance: frame ``slices[k].frame_number`` gets slice ``k``.
    """
    if len(volume.source_datasets) == len(volume.slices):
        return frames
    if len(volume.source_datasets) == 1 and all(
        getattr(s, "frame_number", None) for s in volume.slices
    ):
        ordered = np.zeros_like(frames)
        for k, ref in enumerate(volume.slices):
            ordered[int(ref.frame_number) - 1] = frames[k]  # type: ignore[attr-defined]
        return ordered
    raise AnalysisError("series mixes multi-frame and single-frame instances; not supported")


class SeriesAnalyzer:
    """Analyse one series at a time with a segmenter loaded once."""

    def __init__(self, segmenter: SegmenterLike, settings: AnalysisSettings | None = None):
        self._segmenter = segmenter
        self._settings = settings or AnalysisSettings()
        self._identity = OutputIdentity(
            model_version=str(segmenter.model_version),
            weights_sha256=str(segmenter.weights_sha256),
            model_error_lines=describe_model_error(getattr(segmenter, "metadata", None)),
        )
        self._lock = threading.Lock()

    @property
    def segmenter(self) -> SegmenterLike:
        """The loaded model (e.g. for evaluation scripts that reuse the same weights)."""
        return self._segmenter

    @property
    def identity(self) -> OutputIdentity:
        return self._identity

    @property
    def settings(self) -> AnalysisSettings:
        return self._settings

    def _segment(self, volume: SeriesVolume) -> tuple[np.ndarray, float | None]:
        with_confidence = getattr(self._segmenter, "segment_with_confidence", None)
        if callable(with_confidence):
            labels, confidence = with_confidence(volume.voxels, volume.spacing_mm)
            confidence = None if confidence is None else float(confidence)
        else:
            labels, confidence = self._segmenter.segment(volume.voxels, volume.spacing_mm), None
        labels = np.asarray(labels)
        if labels.shape != volume.voxels.shape:
            raise AnalysisError(
                f"segmenter returned shape {labels.shape}, expected {volume.voxels.shape}"
            )
        if labels.size and (labels.min() < 0 or labels.max() > POSTERIOR_STRUCTURE.label):
            raise AnalysisError(f"segmenter returned labels outside 0..2: {np.unique(labels)}")
        return labels.astype(np.uint8, copy=False), confidence

    def analyze(
        self, datasets: Sequence[Dataset], *, prior_source: PriorSource | None = None
    ) -> AnalysisResult:
        """Run the whole pipeline on the instances of ONE series.

        ``prior_source``: asked for the patient's earlier results once the series has been
        measured (a refused series asks nothing); the report then shows the change.

        Raises :class:`~hippo_scp.imaging.errors.VolumeError` (series refused: geometry,
        missing slices, ...) or :class:`AnalysisError`; the caller reports either as a refusal.
        """
        with self._lock:
            return self._analyze(datasets, prior_source)

    def _compare(
        self, first: Dataset, volumes: HippocampusVolumes, prior_source: PriorSource | None
    ) -> tuple[PriorLookup | None, PriorComparison | None]:
        if prior_source is None:
            return None, None
        lookup = prior_source.lookup(first)
        current_date = parse_dicom_date(first.get("StudyDate"))
        comparison = compare_with_prior(
            volumes,
            current_study_uid=str(first.get("StudyInstanceUID", "")),
            current_date=current_date,
            current_model_version=self._identity.model_version,
            lookup=lookup,
        )
        if lookup.status == "found" and comparison is None:
            # Results exist, but none is of an examination before this one: say which.
            lookup = (
                PriorLookup("unavailable", reason="the study has no StudyDate")
                if current_date is None
                else PriorLookup("none", reason="no result of a dated earlier examination")
            )
        return lookup, comparison

    def _analyze(
        self, datasets: Sequence[Dataset], prior_source: PriorSource | None
    ) -> AnalysisResult:
        timings: dict[str, float] = {}
        start = t0 = time.perf_counter()
        volume = series_to_volume(datasets, min_slices=self._settings.min_slices)
        timings["load"] = (time.perf_counter() - t0) * 1000

        t0 = time.perf_counter()
        labels, confidence = self._segment(volume)
        timings["infer"] = (time.perf_counter() - t0) * 1000

        volumes = measure_volumes(labels, volume.voxel_volume_mm3)
        first = volume.source_datasets[0]
        t0 = time.perf_counter()
        lookup, comparison = self._compare(first, volumes, prior_source)
        if prior_source is not None:
            timings["priors"] = (time.perf_counter() - t0) * 1000
        flags = qc_flags(volumes, self._settings.qc, confidence=confidence)
        flags += prior_comparison_flags(comparison, self._settings.priors)

        t0 = time.perf_counter()
        label_frames = volume.to_frames(labels)
        tracking_uids = {
            s.label: hd.UID() for s in (ANTERIOR_STRUCTURE, POSTERIOR_STRUCTURE, WHOLE_STRUCTURE)
        }
        # One header copy per source image, shared by the SEG and SR builders.
        sources = reference_headers(volume.source_datasets)
        seg = build_segmentation(
            sources,
            _frames_in_source_order(volume, label_frames),
            self._identity,
            tracking_uids=tracking_uids,
        )
        timings["seg"] = (time.perf_counter() - t0) * 1000
        t1 = time.perf_counter()
        sr = build_volume_sr(sources, seg, volumes, self._identity, tracking_uids=tracking_uids)
        timings["sr"] = (time.perf_counter() - t1) * 1000
        t1 = time.perf_counter()
        content = report_content_from_dataset(
            first, volumes, flags, self._identity, prior=PriorReport.of(lookup, comparison)
        )
        rgb = render_report(content, volume.to_frames(volume.voxels), label_frames)
        report = build_report_sc(first, rgb, self._identity)
        timings["report"] = (time.perf_counter() - t1) * 1000
        timings["encode"] = (time.perf_counter() - t0) * 1000
        timings["total"] = (time.perf_counter() - start) * 1000

        result = AnalysisResult(
            study_instance_uid=str(first.StudyInstanceUID),
            series_instance_uid=str(first.SeriesInstanceUID),
            series_description=str(first.get("SeriesDescription", "") or ""),
            volumes=volumes,
            labels=labels,
            seg=seg,
            sr=sr,
            report=report,
            report_rgb=rgb,
            model_version=self._identity.model_version,
            weights_sha256=self._identity.weights_sha256,
            qc_flags=flags,
            timings_ms=timings,
            confidence=confidence,
            slice_count=len(volume.slices),
            spacing_mm=tuple(float(s) for s in volume.spacing_mm),  # type: ignore[arg-type]
            prior_lookup=lookup,
            prior_comparison=comparison,
        )
        logger.debug(
            "analysed series %s: anterior %.0f mm3, posterior %.0f mm3, total %.0f mm3, "
            "%d QC flag(s), %.0f ms",
            result.series_instance_uid,
            volumes.anterior_mm3,
            volumes.posterior_mm3,
            volumes.total_mm3,
            len(flags),
            timings["total"],
        )
        return result
