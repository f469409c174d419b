"""Regenerate ``docs/examples/`` with the real pipeline on the shared test studies.

What it does, with the same code the node runs (selection rules, ``SeriesAnalyzer``, the SR /
SEG / SC builders, ``hippo-scp analyze``'s writer):

* Study1: ``sr.dcm``, ``seg.dcm``, ``report.dcm``, ``report.png``, ``result.json`` and
  ``sr_dsrdump.txt`` (dcmtk's ``dsrdump`` of the SR); ``report_with_prior.png``, the page
  with a comparison (Study1's own SR standing in for the examination a year earlier);
* Study1..3: ``test_studies.json`` -- volumes, QC flags and model version per study;
* the validation split of the training data (``model_weights/split.json``, else the documented
  fixed-seed split): ``validation_metrics.json`` -- Dice, HD95 and volume error per case
  (``hippo_scp.model.evaluation``, as ``hippo-scp evaluate``) and summarised, measured with the
  shipped weights through the inference pipeline;

``docs/build_validation_plan.py`` turns the two JSON files into the validation plan's numbers;
* ``README.md``: what is in the folder, with the OHIF screenshots of ``docs/img/``.

Run it again whenever the model weights change (``tests/docs`` fails until you do)::

    .venv/bin/python docs/generate_examples.py [--weights FILE] [--data ../shared/data]

``--weights`` defaults to ``$HIPPO_WEIGHTS`` or the shipped ``model_weights/`` file.

The examples hold the anonymised test patients' names and IDs (``PGBM-0xx``) as the real node
would write them; they carry no other patient data.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np

# This checkout's package and docs/ first (not another checkout's editable install).
sys.path[:0] = [str(Path(__file__).resolve().parents[1]), str(Path(__file__).resolve().parent)]

from docgen import DOCS_DIR, REPO_ROOT, rel  # noqa: E402
from pydicom import Dataset  # noqa: E402

EXAMPLES_DIR = DOCS_DIR / "examples"
IMAGES_DIR = DOCS_DIR / "img"
DEFAULT_DATA = REPO_ROOT.parent / "shared" / "data"
EXAMPLE_STUDY = "Study1"
TEST_STUDIES = ("Study1", "Study2", "Study3")
STUDIES_JSON = "test_studies.json"
VALIDATION_JSON = "validation_metrics.json"
PRIOR_REPORT_PNG = "report_with_prior.png"
SPLIT_FILE = REPO_ROOT / "model_weights" / "split.json"


def model_version_of(ds: Dataset) -> str:
    """The model version an output records; an example without one is an error."""
    from hippo_scp.outputs.identity import model_version_of as recorded

    version = recorded(ds)
    if not version:
        raise ValueError("no 'model <version>' value in SoftwareVersions")
    return version


def load_analyzer(weights: Path, threads: int) -> tuple[Any, Any]:
    """``(Segmenter, SeriesAnalyzer)`` for ``weights``: the model is loaded once."""
    from hippo_scp.model.inference import Segmenter
    from hippo_scp.pipeline.analysis import AnalysisSettings, SeriesAnalyzer

    segmenter = Segmenter(weights_path=weights, num_threads=threads)
    return segmenter, SeriesAnalyzer(segmenter, AnalysisSettings())


def analyse_study(analyzer: Any, study: Path, prior_source: Any = None) -> Any:
    """Select and analyse the one series of ``study`` the default rules pick."""
    from hippo_scp.assembly.selection import SeriesSelector
    from hippo_scp.config import NodeConfig
    from hippo_scp.pipeline.folder_source import scan_folder

    scan = scan_folder(study, SeriesSelector(NodeConfig().selection))
    if len(scan.selected) != 1:
        raise SystemExit(f"{study}: expected one selected series, found {len(scan.selected)}")
    return analyzer.analyze(scan.selected[0].load(), prior_source=prior_source)


class OwnResultAYearEarlier:
    """A prior source for the example page: the study's own SR, read back the way the node's
    PACS query reads one (``prior_from_sr``), as if it were the examination a year earlier.
    Same images, so the page shows +0.0 % -- real numbers, not invented ones."""

    def __init__(self, sr: Dataset) -> None:
        self._sr = sr

    def lookup(self, current: Dataset) -> Any:
        import datetime

        from pydicom.uid import generate_uid

        from hippo_scp.network.prior_query import StudyAnswer, prior_from_sr
        from hippo_scp.pipeline.prior_comparison import PriorLookup, parse_dicom_date

        date = parse_dicom_date(current.StudyDate) or datetime.date(2020, 1, 1)
        earlier = date.replace(year=date.year - 1).strftime("%Y%m%d")
        sr = self._sr.copy()
        sr.StudyDate, sr.StudyInstanceUID = earlier, generate_uid()
        study = StudyAnswer(str(sr.StudyInstanceUID), earlier)
        return PriorLookup("found", (prior_from_sr(sr, study),), studies_with_results=1)


def _dsrdump(sr_path: Path) -> str:
    dsrdump = shutil.which("dsrdump")
    if dsrdump is None:
        raise SystemExit("dsrdump (dcmtk) not found: apt-get install dcmtk")
    # +Pc: print the codes of coded concepts. Run in the folder so nothing names this machine.
    done = subprocess.run(
        [dsrdump, "+Pc", sr_path.name],
        cwd=sr_path.parent,
        check=True,
        capture_output=True,
        text=True,
    )
    return done.stdout


def _summary(values: list[float]) -> dict[str, float]:
    array = np.asarray(values, dtype=float)
    return {
        "mean": round(float(array.mean()), 4),
        "median": round(float(np.median(array)), 4),
        "min": round(float(array.min()), 4),
        "max": round(float(array.max()), 4),
    }


def evaluate_validation_split(segmenter: Any, data: Path) -> dict[str, Any]:
    """Dice, HD95 and volume error of the shipped model on the validation split.

    Per-case metrics come from :func:`hippo_scp.model.evaluation.case_metrics` (what
    ``hippo-scp evaluate`` reports); the split is ``model_weights/split.json`` when present,
    else the documented fixed-seed split.
    """
    from dataclasses import asdict

    from hippo_scp.model.dataset import Split, list_case_ids, load_case, make_split
    from hippo_scp.model.evaluation import case_metrics

    training = (getattr(segmenter, "metadata", None) or {}).get("training") or {}
    hippocampus = data / "hippocampus"
    if SPLIT_FILE.is_file():
        split, source = Split.load(SPLIT_FILE), rel(SPLIT_FILE)
    else:
        split = make_split(
            list_case_ids(hippocampus),
            seed=int(training.get("split_seed", 20240404)),
            val_fraction=float(training.get("val_fraction", 0.1)),
        )
        source = f"make_split(seed={split.seed}, val_fraction={split.val_fraction})"
    cases = []
    for case_id in split.validation:
        case = load_case(hippocampus, case_id)
        predicted = segmenter.segment(case.image, case.spacing)
        row = asdict(case_metrics(case_id, predicted, case.label, case.spacing))
        row.pop("inference_ms", None)
        cases.append({k: round(v, 4) if isinstance(v, float) else v for k, v in row.items()})
    summary: dict[str, Any] = {}
    for name in ("anterior", "posterior", "total"):
        summary[f"dice_{name}"] = _summary([c[f"dice_{name}"] for c in cases])
        hd95 = [c[f"hd95_{name}_mm"] for c in cases if np.isfinite(c[f"hd95_{name}_mm"])]
        if hd95:
            summary[f"hd95_{name}_mm"] = _summary(hd95)
        errors = [c[f"volume_error_{name}_pct"] for c in cases]
        summary[f"{name}_error_pct"] = _summary(errors)
        summary[f"{name}_abs_error_pct"] = _summary([abs(e) for e in errors])
    return {
        "split": source,
        "train_cases": len(split.train),
        "validation_cases": len(cases),
        "summary": summary,
        "cases": cases,
    }


def _readme(files: list[str], images: list[Path], version: str, sha: str) -> str:
    lines = [
        "# Example outputs",
        "",
        "Produced from the shared test study `TestVolumes/Study1` (series `HippoCrop`) by",
        "[`docs/generate_examples.py`](../generate_examples.py) with the real pipeline; do not",
        "edit. `tests/docs/test_examples.py` fails when they no longer match what the code and",
        "the shipped weights produce.",
        "",
        f"Model: `{version}` (weights SHA-256 `{sha}`).",
        "",
        "| file | what it is |",
        "|---|---|",
    ]
    what = {
        "sr.dcm": "Comprehensive 3D SR, TID 1500 measurement report (volumes)",
        "seg.dcm": "DICOM Segmentation, BINARY, segments 1 anterior and 2 posterior",
        "report.dcm": "RGB Secondary Capture report page",
        "report.png": "the same page as PNG",
        PRIOR_REPORT_PNG: "the page with the comparison the node prints when the PACS holds an "
        "earlier result (here Study1's own SR presented as a year older: +0.0 %)",
        "sr_dsrdump.txt": "`dsrdump +Pc sr.dcm` (dcmtk)",
        "result.json": "what `hippo-scp analyze` writes next to the objects (no patient data)",
        STUDIES_JSON: "volumes and QC flags for Study1-3 (input of the validation plan)",
        VALIDATION_JSON: "Dice and volume error on the validation split (validation plan)",
        "dicom_path_metrics.json": "the validation split sent as DICOM through a running node, "
        "its SEG / SR scored (`docs/validate_dicom_path.py`)",
    }
    lines += [f"| [`{name}`]({name}) | {what.get(name, '')} |" for name in files]
    lines += ["", "![report](report.png)", ""]
    if PRIOR_REPORT_PNG in files:
        lines += [
            "With `priors.enabled`, the bottom panel compares with the patient's most recent "
            'earlier examination (docs/operations.md, "Prior comparison"):',
            "",
            f"![report with prior]({PRIOR_REPORT_PNG})",
            "",
        ]
    if images:
        lines += ["## In OHIF", "", "Screenshots taken by `tests/deploy` (OHIF on Orthanc).", ""]
        for image in images:
            lines += [f"![{image.stem}](../img/{image.name})", ""]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    from hippo_scp.cli.analyze import write_result
    from hippo_scp.model.inference import default_weights_path

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--weights", type=Path, default=default_weights_path())
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", type=Path, default=EXAMPLES_DIR)
    parser.add_argument(
        "--no-validation", action="store_true", help="skip the validation-split evaluation"
    )
    parser.add_argument(
        "--readme-only",
        action="store_true",
        help="only rewrite README.md (e.g. after new OHIF screenshots in docs/img)",
    )
    args = parser.parse_args(argv)
    out: Path = args.out
    if args.readme_only:
        studies = json.loads((out / STUDIES_JSON).read_text(encoding="utf-8"))
        _write_readme(out, studies["model_version"], studies["weights_sha256"])
        return 0

    segmenter, analyzer = load_analyzer(args.weights, args.threads)
    out.mkdir(parents=True, exist_ok=True)
    studies: dict[str, Any] = {}
    for name in TEST_STUDIES:
        result = analyse_study(analyzer, args.data / "TestVolumes" / name)
        if name == EXAMPLE_STUDY:
            write_result(result, out)
            (out / "sr_dsrdump.txt").write_text(_dsrdump(out / "sr.dcm"), encoding="utf-8")
            compared = analyse_study(
                analyzer, args.data / "TestVolumes" / name, OwnResultAYearEarlier(result.sr)
            )
            (out / PRIOR_REPORT_PNG).write_bytes(compared.report_png)
        studies[name] = {
            "series_description": result.series_description,
            "slice_count": result.slice_count,
            "spacing_mm": list(result.spacing_mm),
            "volumes_mm3": {
                key: round(value, 3)
                for key, value in result.volumes.to_json_dict().items()
                if key.endswith("_mm3")
            },
            "qc_flags": result.qc_flags,
            "confidence": None if result.confidence is None else round(result.confidence, 4),
        }
        print(f"{name}: {studies[name]['volumes_mm3']}")
    document = {
        "generated_by": "docs/generate_examples.py",
        "model_version": analyzer.identity.model_version,
        "weights_sha256": analyzer.identity.weights_sha256,
        "studies": studies,
    }
    (out / STUDIES_JSON).write_text(json.dumps(document, indent=2) + "\n", encoding="utf-8")
    if not args.no_validation:
        metrics = evaluate_validation_split(segmenter, args.data)
        metrics = {"model_version": analyzer.identity.model_version, **metrics}
        (out / VALIDATION_JSON).write_text(json.dumps(metrics, indent=2) + "\n", encoding="utf-8")
        print(f"validation split: {json.dumps(metrics['summary'])}")
    _write_readme(out, analyzer.identity.model_version, analyzer.identity.weights_sha256)
    print(f"examples written to {rel(out)}")
    return 0


def _write_readme(out: Path, version: str, sha: str) -> None:
    files = sorted(p.name for p in out.iterdir() if p.is_file() and p.name != "README.md")
    images = sorted(IMAGES_DIR.glob("ohif_*.png")) if IMAGES_DIR.is_dir() else []
    (out / "README.md").write_text(_readme(files, images, version, sha), encoding="utf-8")


if __name__ == "__main__":
    raise SystemExit(main())
