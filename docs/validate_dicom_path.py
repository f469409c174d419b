"""Score the model through the full DICOM path, the way the project's hidden cases are scored.

The model card's numbers come from NIfTI arrays run in-process. The released model is also
checked on cases nobody here has, sent to the node as DICOM; this script rehearses that check
on labelled cases (default: the validation split, ``model_weights/split.json``):

1. each case becomes a ``HippoCrop`` MR series following the data README's pixel convention,
   with int16 stored values and no rescale like ``TestVolumes`` (intensities rounded to
   integers; a case whose range does not fit int16 gets a power-of-two RescaleSlope), its own
   study and patient;
2. dcmtk's ``storescu`` sends all of them in one association to a real ``hippo-scp serve``
   process on 127.0.0.1, as Orthanc's router would;
3. a Storage SCP standing in for the PACS receives the SEG and SR the node sends back; the SEG
   is decoded with highdicom onto the source images and put back into model orientation, the
   SR's volumes are read with :func:`hippo_scp.outputs.sr.read_volumes`;
4. both are scored against the reference labels (Dice, volume error from the SR's mm³) and the
   SEG is compared voxel by voxel with the model run in-process on the NIfTI array.

    .venv/bin/python docs/validate_dicom_path.py [--cases ID ...] [--out FILE]

Writes ``docs/examples/dicom_path_metrics.json`` (``docs/build_validation_plan.py`` puts its
summary into the validation plan). Needs dcmtk and the shared data; about a minute.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

# This checkout's package, docs/ and tests/ helpers first (not another checkout's install).
sys.path[:0] = [str(Path(__file__).resolve().parents[1]), str(Path(__file__).resolve().parent)]

from docgen import DOCS_DIR, REPO_ROOT, rel  # noqa: E402

OUT_JSON = DOCS_DIR / "examples" / "dicom_path_metrics.json"
SPLIT_FILE = REPO_ROOT / "model_weights" / "split.json"
NODE_AE = "HIPPOAI"
SINK_AE = "VALIDPACS"
MODEL_THREADS = 2


def case_series(case_id: str, image: np.ndarray, spacing: tuple[float, float, float]) -> list:
    """The case as a scanner-like HippoCrop series (see the module docstring, step 1)."""
    from tests.dicom_factory import series_from_volume

    rounded = np.round(np.asarray(image, dtype=np.float64))
    fits_int16 = rounded.min() >= -32768 and rounded.max() <= 32767
    return series_from_volume(
        rounded if fits_int16 else image,
        spacing=spacing,
        patient_name=f"Validation^{case_id}",
        patient_id=case_id,
        series_description="HippoCrop",
    )


def decode_seg(seg_ds: Any, sources: list) -> np.ndarray:
    """SEG -> (X, Y, Z) labels in model orientation, frame k on source slice k."""
    import highdicom as hd

    seg = hd.seg.Segmentation.from_dataset(seg_ds, copy=False)
    frames = seg.get_pixels_by_source_instance(
        source_sop_instance_uids=[str(ds.SOPInstanceUID) for ds in sources],
        combine_segments=True,
    )
    return np.stack([np.flip(frame).T for frame in frames], axis=-1).astype(np.uint8)


def run(case_ids: list[str], weights: Path, data: Path, settle: float) -> dict[str, Any]:
    from hippo_scp.model.dataset import load_case
    from hippo_scp.model.evaluation import STRUCTURES, dice, percent_error
    from hippo_scp.model.inference import Segmenter
    from hippo_scp.outputs.identity import (
        ANTERIOR_STRUCTURE,
        POSTERIOR_STRUCTURE,
        WHOLE_STRUCTURE,
    )
    from hippo_scp.outputs.sr import read_volumes
    from tests.dicom_factory import write_series
    from tests.network.conftest import NodeProcess, Sink, free_port, write_node_config
    from tests.result_sets import kind

    if shutil.which("storescu") is None:
        raise SystemExit("dcmtk's storescu is needed (apt install dcmtk)")
    segmenter = Segmenter(weights, num_threads=MODEL_THREADS)
    work = Path(tempfile.mkdtemp(prefix="hippo-dicom-path-"))
    cases: dict[str, dict[str, Any]] = {}
    for case_id in case_ids:
        case = load_case(data, case_id)
        sources = case_series(case_id, case.image, case.spacing)
        write_series(sources, work / "studies" / case_id)
        cases[str(sources[0].StudyInstanceUID)] = {
            "case_id": case_id,
            "sources": sources,
            "reference": case.label,
            "in_process": segmenter.segment(case.image, case.spacing),
            "voxel_mm3": float(np.prod(case.spacing)),
            "rescaled": "RescaleSlope" in sources[0],
        }

    sink = Sink(ae_title=SINK_AE).start()
    (work / "node").mkdir()
    # The node's model threads = the in-process segmenter's, so the two may be compared voxel
    # for voxel (a different thread count may sum in another order).
    config = write_node_config(
        work / "node" / "ae_config.yaml", weights, model={"threads": MODEL_THREADS}
    )
    node = NodeProcess(config, free_port(), sink.destination, settle=settle).start()
    try:
        started = time.monotonic()
        sent = subprocess.run(
            ["storescu", "-aet", "VALIDATION", "-aec", NODE_AE, "+sd", "+r",
             "127.0.0.1", str(node.port), str(work / "studies")],
            capture_output=True, text=True, timeout=600,
        )  # fmt: skip
        if sent.returncode != 0:
            raise SystemExit(f"storescu failed: {sent.stderr.strip()}")
        received = sink.wait_for(3 * len(cases), timeout=60 + 5 * len(cases))
        seconds = time.monotonic() - started
    finally:
        status = node.terminate()
        sink.stop()
    shutil.rmtree(work, ignore_errors=True)

    # evaluation's structure keys -> the SR's tracking identifiers (read_volumes keys).
    sr_names = {
        "anterior": ANTERIOR_STRUCTURE.name,
        "posterior": POSTERIOR_STRUCTURE.name,
        "total": WHOLE_STRUCTURE.name,
    }
    rows = []
    for study_uid, info in cases.items():
        results = {kind(ds): ds for ds in received if str(ds.StudyInstanceUID) == study_uid}
        row: dict[str, Any] = {"case_id": info["case_id"], "rescaled": info["rescaled"]}
        if "SEG" not in results or "SR" not in results:
            row["error"] = f"received {sorted(results)}"
            rows.append(row)
            continue
        labels = decode_seg(results["SEG"], info["sources"])
        reference, in_process = info["reference"], info["in_process"]
        sr_volumes = read_volumes(results["SR"])
        row["voxels_differing_from_in_process"] = int((labels != in_process).sum())
        for key, values in STRUCTURES.items():
            sr_mm3 = sr_volumes[sr_names[key]]
            predicted, truth = np.isin(labels, values), np.isin(reference, values)
            truth_mm3 = float(truth.sum()) * info["voxel_mm3"]
            row[f"dice_{key}"] = dice(predicted, truth)
            row[f"dice_{key}_in_process"] = dice(np.isin(in_process, values), truth)
            row[f"sr_volume_{key}_mm3"] = sr_mm3
            row[f"seg_volume_{key}_mm3"] = float(predicted.sum()) * info["voxel_mm3"]
            row[f"volume_error_{key}_pct"] = percent_error(sr_mm3, truth_mm3)
        rows.append(row)
    return {"node_exit_status": status, "seconds_send_to_last_result": seconds, "cases": rows}


def summarise(result: dict[str, Any]) -> dict[str, Any]:
    rows = [r for r in result["cases"] if "error" not in r]
    mean = lambda key: float(np.mean([r[key] for r in rows])) if rows else float("nan")  # noqa: E731
    return {
        "cases": len(result["cases"]),
        "cases_with_results": len(rows),
        "cases_stored_with_rescale": sum(r["rescaled"] for r in result["cases"]),
        "mean_dice_anterior": mean("dice_anterior"),
        "mean_dice_posterior": mean("dice_posterior"),
        "mean_dice_anterior_in_process": mean("dice_anterior_in_process"),
        "mean_dice_posterior_in_process": mean("dice_posterior_in_process"),
        "mean_abs_volume_error_total_pct": float(
            np.mean([abs(r["volume_error_total_pct"]) for r in rows])
        ),
        "voxels_differing_from_in_process": sum(
            r["voxels_differing_from_in_process"] for r in rows
        ),
        "cases_differing_from_in_process": sum(
            r["voxels_differing_from_in_process"] > 0 for r in rows
        ),
        "max_sr_minus_seg_volume_mm3": max(
            abs(r[f"sr_volume_{k}_mm3"] - r[f"seg_volume_{k}_mm3"])
            for r in rows
            for k in ("anterior", "posterior", "total")
        ),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cases", nargs="+", default=None, help="case IDs (default: validation)")
    parser.add_argument("--weights", type=Path, default=None, help="default: shipped weights")
    parser.add_argument("--data", type=Path, default=None, help="hippocampus data folder")
    parser.add_argument("--settle", type=float, default=2.0, help="node settle window, s")
    parser.add_argument("--out", type=Path, default=OUT_JSON)
    args = parser.parse_args(argv)

    from hippo_scp.model.dataset import Split, default_data_dir
    from hippo_scp.model.inference import default_weights_path
    from hippo_scp.model.weights import load_weights, model_version

    weights = args.weights or default_weights_path()
    data = args.data or default_data_dir()
    case_ids = args.cases or list(Split.load(SPLIT_FILE).validation)
    result = run(case_ids, weights, data, args.settle)
    payload = {
        "what": "validation cases sent as DICOM to a hippo-scp node; SEG / SR scored",
        "generated_by": rel(Path(__file__)),
        "model_version": model_version(load_weights(weights).sha256),
        "summary": summarise(result),
        **result,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(payload, indent=1) + "\n")
    s = payload["summary"]
    print(
        f"{s['cases_with_results']}/{s['cases']} cases through the node: Dice "
        f"{s['mean_dice_anterior']:.4f} / {s['mean_dice_posterior']:.4f} (in-process "
        f"{s['mean_dice_anterior_in_process']:.4f} / {s['mean_dice_posterior_in_process']:.4f}), "
        f"|total volume error| {s['mean_abs_volume_error_total_pct']:.2f} %, "
        f"{s['voxels_differing_from_in_process']} voxels differ from the in-process labels "
        f"({s['cases_differing_from_in_process']} cases) -> {rel(args.out)}"
    )
    return 0 if s["cases_with_results"] == s["cases"] and result["node_exit_status"] == 0 else 1


if __name__ == "__main__":
    raise SystemExit(main())
