"""Ingest: storescu of a study into the node vs into dcmtk storescp (writing to disk).

For each study size (Study1 x1, x4, x16: every series duplicated with new UIDs) and each mode
- ``installed``: every program as installed (dcmtk keeps Nagle on without ``TCP_NODELAY``);
- ``tuned``: ``TCP_NODELAY=1`` in the environment of sender and receiver;
it sends the study with dcmtk ``storescu`` (one association) to each receiver in turn,
alternating the order every repetition (ABBA), and reports the median wall time of >= 7 runs
and the ratio node / storescp. Optional receiver ``bare``: a bare pynetdicom SCP (the floor of
a pynetdicom receiver). Then Orthanc (started with ``TCP_NODELAY=1``) sends Study1 to the node
and to storescp (REST ``/modalities/{id}/store``, synchronous), alternating too.

Between node runs it waits until the node is idle again (analysis of the first copy; re-sent
identical series are not re-analysed), so runs do not overlap. It prints and saves; it asserts
nothing about timings.

    python benchmarks/bench_ingest.py [--quick] [--sizes x1,x4,x16] [--receivers storescp,node]
"""

from __future__ import annotations

import argparse
import sys
import threading
import time
import traceback
from pathlib import Path

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks import processes as P
from benchmarks.common import (
    add_common_args,
    fmt_s,
    loadavg,
    machine,
    ratio,
    reps,
    result_path,
    run_provenance,
    summary,
    work_dir,
    write_result,
)
from benchmarks.study_factory import cached_study

SIZES = {
    "tiny": {"factor": 1, "series_filter": ["HippoCrop"]},
    "x1": {"factor": 1},
    "x4": {"factor": 4},
    "x16": {"factor": 16},
}
MODES = {"installed": False, "tuned": True}
#: repetitions of the slowest cell (x16, installed: ~2 min per storescp run) are capped at this
LARGE_INSTALLED_REPS = 3


def study_for(size: str) -> tuple[Path, dict]:
    spec = SIZES[size]
    return cached_study(spec["factor"], "Study1", spec.get("series_filter"))


class Receivers:
    """One receiver process per (receiver, mode), started once for the whole benchmark."""

    def __init__(self, work: Path, names: list[str], modes: list[str], sink: P.ResultSink):
        self.procs: dict[tuple[str, str], P.Proc] = {}
        self.errors: dict[str, str] = {}
        self.work = work
        if "node" in names:
            P.node_command()  # probe the launcher once, before the parallel start
            P.node_weights()

        def start(name: str, mode: str) -> None:
            try:
                self.procs[(name, mode)] = self._start(name, MODES[mode], sink, work / mode)
            except Exception as error:  # noqa: BLE001 - recorded in the JSON
                self.errors[f"{name}/{mode}"] = f"{type(error).__name__}: {error}"[:2000]
                print(f"!! {name} ({mode}) did not start: {error}", file=sys.stderr)

        # started in parallel (a node loads its model for several seconds)
        threads = [
            threading.Thread(target=start, args=(name, mode)) for mode in modes for name in names
        ]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        order = {(n, m): i for i, (m, n) in enumerate((m, n) for m in modes for n in names)}
        self.procs = dict(sorted(self.procs.items(), key=lambda kv: order[kv[0]]))

    @staticmethod
    def _start(name: str, nodelay: bool, sink: P.ResultSink, work: Path) -> P.Proc:
        if name == "storescp":
            return P.start_storescp(work, nodelay)
        if name == "node":
            ok, why = P.node_available()
            if not ok:
                raise RuntimeError(why)
            return P.start_node(work / "node", sink.destination, settle=3, nodelay=nodelay)
        if name == "bare":
            return P.start_bare_scp(
                work, args=["--pdu", "131072", *(["--nodelay"] if nodelay else [])]
            )
        raise ValueError(name)

    def close(self) -> None:
        P.stop_all(self.procs.values())


def run_one(proc: P.Proc, name: str, folder: Path, nodelay: bool, manifest: dict) -> dict:
    cpu0 = P.cpu_seconds(proc.pid)
    wall = P.storescu(proc.port, proc.aet, folder, nodelay)
    cpu = P.cpu_seconds(proc.pid) - cpu0
    row = {"wall_s": wall, "receiver_cpu_s": cpu, "loadavg1": loadavg()[:1]}
    if name == "storescp":
        row["files_written"] = P.clear_folder(proc.extra["out"])
        if row["files_written"] != manifest["instances"]:
            raise RuntimeError(
                f"storescp wrote {row['files_written']} of {manifest['instances']} files"
            )
    elif name == "node":
        # the node analyses after release; wait until it is quiet before the next run
        row["settle_wait_s"] = P.wait_node_quiet(proc)
        if not proc.alive():
            raise RuntimeError(f"node died:\n{proc.log_tail()}")
    return row


def bench_sizes(
    receivers: Receivers, names: list[str], modes: list[str], sizes: list[str], n: int
) -> dict:
    out: dict = {}
    for size in sizes:
        folder, manifest = study_for(size)
        out[size] = {"instances": manifest["instances"], "bytes": manifest["bytes"], "modes": {}}
        for mode in modes:
            nodelay = MODES[mode]
            present = [r for r in names if (r, mode) in receivers.procs]
            cell_reps = n
            if size == "x16" and mode == "installed" and n > LARGE_INSTALLED_REPS:
                cell_reps = LARGE_INSTALLED_REPS
            runs: dict[str, list[dict]] = {r: [] for r in present}
            for rep in range(cell_reps):
                order = present if rep % 2 == 0 else list(reversed(present))
                for name in order:
                    row = run_one(receivers.procs[(name, mode)], name, folder, nodelay, manifest)
                    row["rep"] = rep
                    runs[name].append(row)
                    print(
                        f"ingest {size:>4} {mode:9} {name:8} rep {rep}: {row['wall_s']:.3f} s "
                        f"(receiver cpu {row['receiver_cpu_s']:.2f} s, load {row['loadavg1']})",
                        flush=True,
                    )
            cell = {"reps": cell_reps, "receivers": {}}
            for name, rows in runs.items():
                cell["receivers"][name] = {
                    "wall_s": summary([r["wall_s"] for r in rows]),
                    "receiver_cpu_s": summary([r["receiver_cpu_s"] for r in rows]),
                    "runs": rows,
                }
            add_ratios(cell)
            out[size]["modes"][mode] = cell
    return out


def add_ratios(cell: dict, key: str = "wall_s") -> None:
    recv = cell["receivers"]
    base = recv.get("storescp", {}).get(key, {}).get("median")
    cell["ratios_vs_storescp"] = {
        name: ratio(data[key]["median"], base) for name, data in recv.items() if name != "storescp"
    }


def bench_orthanc(receivers: Receivers, work: Path, n: int, modes: list[str]) -> dict:
    """Orthanc (TCP_NODELAY=1) -> node / storescp: REST store of Study1, synchronous."""
    folder, manifest = study_for("x1")
    node_any = next((p for (r, _), p in receivers.procs.items() if r == "node"), None)
    orthanc = P.start_orthanc(
        work / "orthanc", node_port=node_any.port if node_any else P.free_port(), routing=False
    )
    try:
        P.storescu(orthanc.dicom_port, "ORTHANC", folder, True)
        study_id = orthanc.study_id(manifest["study_instance_uid"])
        targets = []
        for (name, mode), proc in receivers.procs.items():
            if mode not in modes:
                continue
            key = f"{name}-{mode}"
            orthanc.add_modality(key, proc.aet, proc.port)
            targets.append((key, name, proc))
        runs: dict[str, list[float]] = {key: [] for key, _, _ in targets}
        for rep in range(n):
            order = targets if rep % 2 == 0 else list(reversed(targets))
            for key, name, proc in order:
                start = time.perf_counter()
                answer = orthanc.rest(
                    "POST",
                    f"/modalities/{key}/store",
                    {"Resources": [study_id], "Synchronous": True},
                )
                wall = time.perf_counter() - start
                if isinstance(answer, dict) and answer.get("FailedInstancesCount"):
                    raise RuntimeError(f"Orthanc -> {key}: {answer}")
                if name == "storescp":
                    P.clear_folder(proc.extra["out"])
                elif name == "node":
                    P.wait_node_quiet(proc)
                runs[key].append(wall)
                print(f"orthanc -> {key:18} rep {rep}: {wall:.3f} s", flush=True)
        result = {
            "study": "x1",
            "instances": manifest["instances"],
            "orthanc_env": "TCP_NODELAY=1",
            "targets": {key: {"wall_s": summary(vals)} for key, vals in runs.items()},
        }
        ratios = {}
        for mode in modes:
            base = result["targets"].get(f"storescp-{mode}", {}).get("wall_s", {}).get("median")
            for key, data in result["targets"].items():
                if key.endswith(f"-{mode}") and not key.startswith("storescp"):
                    ratios[key] = ratio(data["wall_s"]["median"], base)
        result["ratios_vs_storescp_same_mode"] = ratios
        return result
    finally:
        orthanc.stop()


def print_table(result: dict) -> None:
    print("\n== ingest: median wall seconds (ratio vs storescp) ==")
    for size, data in result["sizes"].items():
        for mode, cell in data["modes"].items():
            parts = []
            for name, recv in cell["receivers"].items():
                med = recv["wall_s"]["median"]
                r = cell["ratios_vs_storescp"].get(name)
                parts.append(f"{name} {fmt_s(med)}" + (f" (x{r:.2f})" if r else ""))
            print(f"{size:>4} {mode:9} n={cell['reps']}: " + ", ".join(parts))
    if result.get("orthanc"):
        for key, data in result["orthanc"]["targets"].items():
            r = result["orthanc"]["ratios_vs_storescp_same_mode"].get(key)
            extra = f" (x{r:.2f})" if r else ""
            print(f"orthanc -> {key:18} {fmt_s(data['wall_s']['median'])}{extra}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_common_args(parser)
    parser.add_argument("--sizes", default=None, help="comma list of tiny,x1,x4,x16")
    parser.add_argument("--receivers", default="storescp,node", help="storescp,node,bare")
    parser.add_argument("--modes", default="installed,tuned")
    parser.add_argument(
        "--orthanc", choices=["yes", "no"], default="yes", help="also Orthanc -> node"
    )
    parser.add_argument(
        "--merge-into",
        type=Path,
        default=None,
        help="also replace these sizes in an earlier result file (the old cells are kept "
        "under 'superseded'), e.g. to re-measure one size after a node change",
    )
    args = parser.parse_args(argv)
    n = reps(args, 7)
    sizes = (args.sizes or ("x1" if args.quick else "x1,x4,x16")).split(",")
    names = args.receivers.split(",")
    modes = args.modes.split(",")
    work = work_dir(args, "ingest")
    result: dict = {
        "machine": machine(),
        "benchmark": "ingest",
        "quick": args.quick,
        "reps": n,
        "sizes_requested": sizes,
        "receivers_requested": names,
        "modes": {
            m: ("TCP_NODELAY=1 sender+receiver" if v else "as installed")
            for m, v in MODES.items()
            if m in modes
        },
        "sender": "dcmtk storescu +sd +r (one association)",
        "baseline": "dcmtk storescp -od <dir> (default options, writes to disk)",
    }
    sink = P.ResultSink()
    receivers = Receivers(work, names, modes, sink)
    result["start_errors"] = receivers.errors
    try:
        result["sizes"] = bench_sizes(receivers, names, modes, sizes, n)
        if args.orthanc == "yes":
            try:
                result["orthanc"] = bench_orthanc(receivers, work, n, modes)
            except Exception as error:  # noqa: BLE001
                traceback.print_exc()
                result["orthanc_error"] = f"{type(error).__name__}: {error}"[:2000]
    finally:
        receivers.close()
        sink.close()
    print_table(result)
    path = write_result(result_path(args, "ingest"), result)
    print(f"saved {path}")
    if args.merge_into:
        merge_into(args.merge_into, result)
        print(f"merged sizes {list(result['sizes'])} into {args.merge_into}")
    return 0


def merge_into(target: Path, result: dict) -> None:
    """Replace ``result``'s sizes in ``target``; each merged size records its own run."""
    import json

    data = json.loads(target.read_text())
    for size, cell in result.get("sizes", {}).items():
        if size in data.get("sizes", {}):
            data.setdefault("superseded", {})[size] = data["sizes"][size]
        cell["remeasured"] = run_provenance(result)
        data.setdefault("sizes", {})[size] = cell
    target.write_text(json.dumps(data, indent=1, default=str) + "\n")


if __name__ == "__main__":
    sys.exit(main())
