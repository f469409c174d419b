"""``hippo-scp analyze``: the node's pipeline on files, for validation and scripting.

Same selection rules, same model, same SR / SEG / SC as ``serve``; the results are written to a
folder instead of being sent to a PACS. The model is loaded once per process, however many
studies the folder holds.

Exit codes: 0 every selected series analysed; 1 nothing matched the selection rules;
2 bad arguments / configuration / weights; 3 at least one selected series was refused or failed
(the others are still written).
"""

from __future__ import annotations

import json
import logging
import re
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import typer

logger = logging.getLogger(__name__)

EXIT_OK = 0
EXIT_NOTHING_MATCHED = 1
EXIT_USAGE = 2
EXIT_REFUSED = 3


@dataclass
class SeriesOutcome:
    """What happened to one selected series (serialisable, without patient identifiers)."""

    series_instance_uid: str
    study_instance_uid: str
    series_description: str
    folder: Path
    status: str  # "ok", "refused" (VolumeError / AnalysisError) or "failed" (unexpected)
    reason: str = ""
    result: dict[str, Any] | None = None

    def to_json_dict(self) -> dict[str, Any]:
        data: dict[str, Any] = {
            "status": self.status,
            "study_instance_uid": self.study_instance_uid,
            "series_instance_uid": self.series_instance_uid,
            "series_description": self.series_description,
            "folder": str(self.folder),
        }
        if self.reason:
            data["reason"] = self.reason
        if self.result is not None:
            data["result"] = self.result
        return data


def _folder_name(series_uid: str) -> str:
    """A file-system-safe subfolder per series (UIDs are safe already; be defensive)."""
    return re.sub(r"[^0-9A-Za-z._-]", "_", series_uid) or "series"


def write_result(result: Any, folder: Path) -> dict[str, Any]:
    """Write SR / SEG / SC, ``report.png`` and ``result.json`` for one analysed series."""
    folder.mkdir(parents=True, exist_ok=True)
    files = {"sr": "sr.dcm", "seg": "seg.dcm", "report": "report.dcm"}
    result.sr.save_as(folder / files["sr"], enforce_file_format=True)
    result.seg.save_as(folder / files["seg"], enforce_file_format=True)
    result.report.save_as(folder / files["report"], enforce_file_format=True)
    (folder / "report.png").write_bytes(result.report_png)
    data = result.to_json_dict()
    data["files"] = {**files, "report_png": "report.png"}
    (folder / "result.json").write_text(json.dumps(data, indent=2, ensure_ascii=False) + "\n")
    return data


def _summary_table(outcomes: list[SeriesOutcome]) -> str:
    header = (
        f"{'Series':<24} {'Slices':>6} {'Anterior':>10} {'Posterior':>10} {'Total':>10}  "
        f"{'Status / QC'}"
    )
    lines = [header, "-" * len(header)]
    for o in outcomes:
        name = (o.series_description or o.series_instance_uid)[:24]
        if o.result is None:
            status = o.status.upper()
            lines.append(f"{name:<24} {'':>6} {'':>10} {'':>10} {'':>10}  {status}: {o.reason}")
            continue
        v = o.result["volumes"]
        flags = o.result["qc_flags"]
        status = "ok" if not flags else "QC: " + "; ".join(flags)
        lines.append(
            f"{name:<24} {o.result['slice_count']:>6} {v['anterior_mm3']:>10,.0f} "
            f"{v['posterior_mm3']:>10,.0f} {v['total_mm3']:>10,.0f}  {status}"
        )
    lines.append("(volumes in mm³)")
    return "\n".join(lines)


def run_analyze(
    path: Path,
    out: Path,
    *,
    as_json: bool = False,
    config: Path | None = None,
    weights: Path | None = None,
    threads: int | None = None,
) -> int:
    """The command's body, callable from tests; returns the exit code."""
    from hippo_scp.assembly.selection import SeriesSelector
    from hippo_scp.config import ConfigError, load_config
    from hippo_scp.pipeline.folder_source import scan_folder

    if not path.exists():
        typer.echo(f"error: {path} does not exist", err=True)
        return EXIT_USAGE
    try:
        node_config = load_config(config)
    except ConfigError as error:
        typer.echo(f"error: {error}", err=True)
        return EXIT_USAGE
    weights_path = weights or node_config.model.weights
    num_threads = threads or node_config.model.threads

    started = time.perf_counter()
    scan = scan_folder(path, SeriesSelector(node_config.selection))
    document: dict[str, Any] = {
        "input": str(path),
        "output": str(out),
        "series_found": len(scan.series),
        "non_dicom_files": scan.non_dicom_files,
        "unreadable_files": scan.unreadable_files,
        "not_selected": [
            {
                "series_instance_uid": s.series_instance_uid,
                "series_description": s.series_description,
                "reason": s.decision.reason if s.decision else "",
            }
            for s in scan.not_selected
        ],
        "series": [],
    }
    if not scan.selected:
        message = (
            f"error: no series matched the selection rules ({len(scan.series)} series, "
            f"{scan.non_dicom_files} non-DICOM files found under {path})"
        )
        typer.echo(message, err=True)
        for s in scan.not_selected:
            reason = s.decision.reason if s.decision else "?"
            typer.echo(f"  - {s.series_description or s.series_instance_uid}: {reason}", err=True)
        if as_json:
            document["error"] = "no series matched the selection rules"
            typer.echo(json.dumps(document, indent=2, ensure_ascii=False))
        return EXIT_NOTHING_MATCHED

    analyzer = _load_analyzer(weights_path, num_threads, node_config.selection.min_slices)
    if analyzer is None:
        return EXIT_USAGE

    from hippo_scp.imaging.errors import VolumeError
    from hippo_scp.logging_setup import PATIENT_GUARD
    from hippo_scp.pipeline.analysis import AnalysisError

    outcomes: list[SeriesOutcome] = []
    for entry in scan.selected:
        PATIENT_GUARD.remember(entry.first_header)  # mask them should any message carry them
        folder = out / _folder_name(entry.series_instance_uid)
        outcome = SeriesOutcome(
            series_instance_uid=entry.series_instance_uid,
            study_instance_uid=entry.study_instance_uid,
            series_description=entry.series_description,
            folder=folder,
            status="ok",
        )
        try:
            result = analyzer.analyze(entry.load())
        except Exception as error:
            # One bad series must not cost the others their results: record it and go on.
            # VolumeError / AnalysisError are expected refusals; anything else is a failure.
            expected = isinstance(error, VolumeError | AnalysisError)
            outcome.status = "refused" if expected else "failed"
            outcome.reason = f"{type(error).__name__}: {error}"
            logger.warning(
                "series %s %s: %s",
                entry.series_instance_uid,
                outcome.status,
                outcome.reason,
                exc_info=not expected,
            )
            folder.mkdir(parents=True, exist_ok=True)
            (folder / "result.json").write_text(
                json.dumps(outcome.to_json_dict(), indent=2, ensure_ascii=False) + "\n"
            )
        else:
            outcome.result = write_result(result, folder)
        outcomes.append(outcome)

    document["series"] = [o.to_json_dict() for o in outcomes]
    document["elapsed_ms"] = round((time.perf_counter() - started) * 1000, 1)
    refused = [o for o in outcomes if o.status != "ok"]
    if as_json:
        typer.echo(json.dumps(document, indent=2, ensure_ascii=False))
    else:
        typer.echo(_summary_table(outcomes))
        typer.echo(f"results written to {out}")
    if refused:
        typer.echo(
            f"error: {len(refused)} of {len(outcomes)} selected series refused or failed "
            "(see result.json in their folders)",
            err=True,
        )
        return EXIT_REFUSED
    return EXIT_OK


def _load_analyzer(weights_path: Path, threads: int, min_slices: int) -> Any:
    """Load torch + the model once; returns None (after printing why) when it cannot."""
    from hippo_scp.pipeline.analysis import AnalysisSettings, SeriesAnalyzer

    if not Path(weights_path).is_file():
        typer.echo(f"error: model weights not found: {weights_path}", err=True)
        return None
    try:  # torch is imported here, once, and only when there is something to analyse
        from hippo_scp.model.inference import Segmenter, WeightsIntegrityError
    except ImportError as error:  # pragma: no cover - model package missing in a broken install
        typer.echo(f"error: cannot import the model: {error}", err=True)
        return None
    try:
        segmenter = Segmenter(weights_path=Path(weights_path), num_threads=threads)
    except (WeightsIntegrityError, OSError, ValueError, RuntimeError) as error:
        typer.echo(f"error: cannot load model weights {weights_path}: {error}", err=True)
        return None
    return SeriesAnalyzer(segmenter, AnalysisSettings(min_slices=min_slices))


def register(app: typer.Typer) -> None:
    @app.command("analyze")
    def analyze(
        path: Path = typer.Argument(
            ...,
            help=(
                "Folder holding one or many studies (any nesting, any file names; non-DICOM "
                "files are ignored), or a single DICOM file."
            ),
        ),
        out: Path = typer.Option(
            ...,
            "--out",
            "-o",
            help="Output folder: one subfolder per analysed series with sr.dcm, seg.dcm, "
            "report.dcm, report.png and result.json.",
            file_okay=False,
        ),
        as_json: bool = typer.Option(
            False,
            "--json",
            help="Print one machine-readable JSON document to stdout instead of the table.",
        ),
        config: Path | None = typer.Option(
            None,
            "--config",
            "-c",
            help="ae_config.yaml whose 'selection' rules and 'model' section are used "
            "(defaults when omitted).",
            dir_okay=False,
        ),
        weights: Path | None = typer.Option(
            None,
            "--weights",
            help="Model weights (.safetensors) to load instead of the configured / shipped.",
            dir_okay=False,
        ),
        threads: int | None = typer.Option(
            None, "--threads", min=1, help="CPU threads for inference (default: config, 2)."
        ),
        log_level: str = typer.Option(
            "WARNING", "--log-level", help="DEBUG, INFO, WARNING or ERROR (logs go to stderr)."
        ),
    ) -> None:
        """Analyse every selected series under PATH and write SR, SEG and report to --out.

        Exits 1 when nothing matched the selection rules and 3 when a selected series was
        refused (results of the other series are still written).
        """
        from hippo_scp.logging_setup import configure_logging

        # Warnings (refusals) on stderr through the node's patient-identifier guard; stdout
        # stays clean for the table or the JSON document.
        configure_logging(level=log_level.upper(), stream=sys.stderr)
        raise typer.Exit(
            run_analyze(path, out, as_json=as_json, config=config, weights=weights, threads=threads)
        )
