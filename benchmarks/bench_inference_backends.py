#!/usr/bin/env python3
"""Inference backends side by side: speed AND accuracy (prints and saves, asserts nothing).

    .venv/bin/python benchmarks/bench_inference_backends.py [--backends a,b,...] [--quick]
        [--threads 2] [--runs 20] [--out benchmarks/results/inference_backends.json]

Issue #10 asks to try torch.compile, ONNX Runtime and int8 and to keep the fastest backend
that keeps Dice. Every backend runs in its own subprocess (so peak RSS is its own and a
backend that crashes cannot take the others down) through the product's own pipeline,
:func:`hippo_scp.model.inference.predict_labels` (preprocessing and label restoration
included), and reports:

* the median ms per HippoCrop-sized volume (same shapes and method as ``bench_inference.py``:
  ``--runs`` timed calls after ``--warmup`` untimed ones, 2 threads);
* mean Dice (anterior / posterior) on the validation cases of ``model_weights/split.json``
  against the reference labels, and the share of voxels whose label differs from the
  shipped backend;
* time to prepare the backend (tracing, compiling, exporting, quantising) and peak RSS.

Backends:

``eager``        the PyTorch module (BatchNorm folded), as loaded with ``HIPPO_TORCH_JIT=0``.
``torchscript``  what the node ships: traced, frozen, ``optimize_for_inference`` (oneDNN).
``compile``      ``torch.compile`` (inductor, dynamic shapes; needs a C++ compiler).
``onnxruntime``  ONNX export (dynamic D/H/W) run by ONNX Runtime's CPU provider.
``ort-int8``     the same graph statically quantised to int8 (QDQ, per-channel weights),
                 calibrated on 16 *training* cases (never the validation cases).

``onnxruntime``/``ort-int8`` need ``pip install -r benchmarks/requirements-backends.txt``
(``onnx``, ``onnxscript``, ``onnxruntime``); without them they are reported as skipped. They are
benchmark-only dependencies: the product does not ship or need them.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.bench_inference import SHAPES, fit_to_shape

REPO = Path(__file__).resolve().parent.parent
BACKENDS = ("eager", "torchscript", "compile", "onnxruntime", "ort-int8")
CALIBRATION_CASES = 16


# ----------------------------------------------------------------------------- backends
def _onnx_model(module, folder: Path) -> Path:
    """Export the eval module to ONNX with dynamic spatial axes (multiples of 8 in use)."""
    import torch

    path = folder / "hippo_unet.onnx"
    example = torch.zeros(1, 1, 40, 56, 40)
    torch.onnx.export(
        module,
        (example,),
        str(path),
        input_names=["image"],
        output_names=["logits"],
        dynamic_axes={"image": {2: "d", 3: "h", 4: "w"}, "logits": {2: "d", 3: "h", 4: "w"}},
        opset_version=17,
        dynamo=False,
    )
    return path


def _ort_runner(path: Path, threads: int) -> Callable:
    import onnxruntime as ort
    import torch

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])

    def run(x: torch.Tensor) -> torch.Tensor:
        (logits,) = session.run(None, {"image": x.numpy()})
        return torch.from_numpy(logits)

    return run


def _calibration_arrays(multiple: int) -> list[np.ndarray]:
    from hippo_scp.model.dataset import Split, default_data_dir, load_case
    from hippo_scp.model.preprocessing import prepare_volume

    split = Split.load(REPO / "model_weights" / "split.json")
    arrays = []
    for case_id in split.train[:CALIBRATION_CASES]:
        case = load_case(default_data_dir(), case_id)
        prepared = prepare_volume(case.image, case.spacing, multiple)
        arrays.append(prepared.array[None, None].astype(np.float32))
    return arrays


def _int8_model(fp32: Path, folder: Path, multiple: int) -> Path:
    from onnxruntime.quantization import (
        CalibrationDataReader,
        QuantFormat,
        QuantType,
        quantize_static,
    )
    from onnxruntime.quantization.shape_inference import quant_pre_process

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self._items = iter({"image": a} for a in _calibration_arrays(multiple))

        def get_next(self):  # noqa: ANN201 - ORT's interface
            return next(self._items, None)

    prepared = folder / "hippo_unet.pre.onnx"
    quant_pre_process(str(fp32), str(prepared), skip_symbolic_shape=True)
    out = folder / "hippo_unet.int8.onnx"
    quantize_static(
        str(prepared),
        str(out),
        Reader(),
        quant_format=QuantFormat.QDQ,
        per_channel=True,
        activation_type=QuantType.QUInt8,
        weight_type=QuantType.QInt8,
    )
    return out


def build_backend(name: str, threads: int, scratch: Path) -> tuple[Callable, int, str]:
    """(runner, network multiple, model version) for ``name``; raises ImportError if absent."""
    import torch

    from hippo_scp.model.inference import JIT_ENV, Segmenter

    if name == "eager":
        os.environ[JIT_ENV] = "0"
    segmenter = Segmenter(num_threads=threads)
    multiple, version = segmenter.config.multiple, segmenter.model_version
    module = segmenter._model  # the eval nn.Module behind the node's backend
    if name == "eager":
        return module, multiple, version
    if name == "torchscript":
        if segmenter.backend != "torchscript":
            raise RuntimeError("the TorchScript backend fell back to eager on this machine")
        return segmenter._runner, multiple, version
    if name == "compile":
        # dynamic=True fails in inductor's lowering here (torch 2.13: "LoweringException:
        # ValueRangeError: Invalid ranges [0:-1]"), so shapes are static: one compilation per
        # padded network grid (multiples of 8), each counted in "first_call_s" / warm-up.
        torch._dynamo.config.cache_size_limit = 64
        compiled = torch.compile(module, dynamic=False)
        return compiled, multiple, version
    if name in ("onnxruntime", "ort-int8"):
        import onnxruntime  # noqa: F401 - ImportError -> skipped

        path = _onnx_model(module, scratch)
        if name == "ort-int8":
            path = _int8_model(path, scratch, multiple)
        return _ort_runner(path, threads), multiple, version
    raise ValueError(f"unknown backend {name!r}")


# ----------------------------------------------------------------------------- one backend
def measure_backend(name: str, threads: int, runs: int, warmup: int, cases: int) -> dict:
    """Runs in the child process: speed over SHAPES, accuracy on the validation split."""
    import torch

    from hippo_scp.model.dataset import Split, default_data_dir, load_case
    from hippo_scp.model.evaluation import dice
    from hippo_scp.model.inference import JIT_ENV, Segmenter, predict_labels

    torch.set_num_threads(threads)
    device = torch.device("cpu")
    with tempfile.TemporaryDirectory(prefix="hippo-backend-") as scratch:
        t0 = time.perf_counter()
        runner, multiple, version = build_backend(name, threads, Path(scratch))
        prepare_s = time.perf_counter() - t0

        def segment(volume: np.ndarray, spacing=(1.0, 1.0, 1.0)) -> np.ndarray:
            return predict_labels(runner, volume, spacing, multiple, device)

        base = load_case(default_data_dir(), "hippocampus_001").image
        shapes, all_times = [], []
        first_call_s = None
        for shape in SHAPES:
            volume = fit_to_shape(base, shape).astype(np.float64)
            for index in range(warmup):
                t = time.perf_counter()
                segment(volume)
                if first_call_s is None and index == 0:
                    first_call_s = time.perf_counter() - t
            times = []
            for _ in range(runs):
                t = time.perf_counter()
                segment(volume)
                times.append((time.perf_counter() - t) * 1000)
            all_times += times
            shapes.append({"shape": list(shape), "median_ms": round(statistics.median(times), 1)})

        split = Split.load(REPO / "model_weights" / "split.json")
        os.environ.pop(JIT_ENV, None)  # the reference is the shipped (TorchScript) backend
        shipped = Segmenter(num_threads=threads)
        dices, changed, voxels = [], 0, 0
        for case_id in split.validation[:cases]:
            case = load_case(default_data_dir(), case_id)
            labels = segment(case.image, case.spacing)
            reference = shipped.segment(case.image, case.spacing)
            changed += int((labels != reference).sum())
            voxels += labels.size
            dices.append([dice(labels == k, case.label == k) for k in (1, 2)])
    mean = np.mean(dices, axis=0)
    return {
        "backend": name,
        "model_version": version,
        "prepare_s": round(prepare_s, 2),
        "first_call_s": round(first_call_s or 0.0, 2),
        "shapes": shapes,
        "median_ms_all": round(statistics.median(all_times), 1),
        "validation_cases": len(dices),
        "dice_anterior": round(float(mean[0]), 4),
        "dice_posterior": round(float(mean[1]), 4),
        "voxels_differing_from_shipped_pct": round(100.0 * changed / max(voxels, 1), 4),
        "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
    }


# ----------------------------------------------------------------------------- driver
def run_child(name: str, args: argparse.Namespace) -> dict:
    command = [
        sys.executable, str(Path(__file__).resolve()), "--child", name,
        "--threads", str(args.threads), "--runs", str(args.runs),
        "--warmup", str(args.warmup), "--cases", str(args.cases),
    ]  # fmt: skip
    env = dict(os.environ, PYTHONPATH=str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    try:
        proc = subprocess.run(
            command, capture_output=True, text=True, timeout=args.timeout, env=env, cwd=REPO
        )
    except subprocess.TimeoutExpired:
        return {"backend": name, "error": f"timed out after {args.timeout} s"}
    for line in reversed(proc.stdout.splitlines()):
        if line.startswith("{"):
            return json.loads(line)
    tail = (proc.stderr or proc.stdout).strip().splitlines()[-3:]
    return {"backend": name, "error": " | ".join(tail) or f"exit {proc.returncode}"}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backends", default=",".join(BACKENDS), help="comma list")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--runs", type=int, default=20)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--cases", type=int, default=10_000, help="validation cases (all)")
    parser.add_argument("--timeout", type=float, default=1800, help="per backend (s)")
    parser.add_argument("--quick", action="store_true", help="3 runs, 1 warm-up, 3 cases")
    parser.add_argument("--out", type=Path, default=None)
    parser.add_argument("--child", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.quick:
        args.runs, args.warmup, args.cases = 3, 1, 3
    if args.child:
        try:
            result = measure_backend(args.child, args.threads, args.runs, args.warmup, args.cases)
        except ImportError as error:
            result = {"backend": args.child, "skipped": f"not installed: {error.name}"}
        print(json.dumps(result))
        return 0

    import torch

    names = [n.strip() for n in args.backends.split(",") if n.strip()]
    unknown = sorted(set(names) - set(BACKENDS))
    if unknown:
        parser.error(f"unknown backend(s): {', '.join(unknown)} (choose from {BACKENDS})")
    load = os.getloadavg()[0]
    rows = []
    for name in names:
        row = run_child(name, args)
        rows.append(row)
        if "median_ms_all" in row:
            print(
                f"{name:>12}: median {row['median_ms_all']:6.1f} ms, Dice "
                f"{row['dice_anterior']:.4f} / {row['dice_posterior']:.4f} "
                f"({row['validation_cases']} cases), labels differing from shipped "
                f"{row['voxels_differing_from_shipped_pct']:.3f} %, prepare {row['prepare_s']} s, "
                f"peak RSS {row['peak_rss_mb']:.0f} MB",
                flush=True,
            )
        else:
            print(f"{name:>12}: {row.get('skipped') or row.get('error')}", flush=True)
    measured = [r for r in rows if "median_ms_all" in r]
    reference = next((r for r in measured if r["backend"] == "torchscript"), None)
    keeps_dice = [
        r
        for r in measured
        if reference is not None
        and r["dice_anterior"] >= reference["dice_anterior"] - 0.001
        and r["dice_posterior"] >= reference["dice_posterior"] - 0.001
    ]
    fastest = min(keeps_dice, key=lambda r: r["median_ms_all"], default=None)
    summary = {
        "benchmark": "inference_backends",
        "quick": args.quick,
        "threads": args.threads,
        "runs_per_shape": args.runs,
        "torch": torch.__version__,
        "python": platform.python_version(),
        "cpu_count": os.cpu_count(),
        "loadavg_at_start": round(load, 2),
        "loadavg_at_end": round(os.getloadavg()[0], 2),
        "backends": rows,
        "rule": "fastest backend whose validation Dice is within 0.001 of the shipped one",
        "fastest_keeping_dice": fastest["backend"] if fastest else None,
    }
    if fastest:
        print(f"fastest that keeps Dice: {fastest['backend']} ({fastest['median_ms_all']} ms)")
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(summary, indent=1) + "\n")
        print(f"saved {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
