"""What makes the node's receive path fast: PDU size, TCP_NODELAY, pynetdicom knobs.

Parts (``--parts micro,assoc,bare,bare_installed,node,send,idle``):

- ``node``: the node itself (``hippo-scp serve``) with ``node.max_pdu_bytes`` 16384 / 131072
  (shipped) / 1048576 / 0 (unlimited), and at 131072 with pynetdicom's polling reactor loops
  (``HIPPO_EVENT_REACTOR=0``) instead of the node's event-driven ones, and with pynetdicom's
  C-STORE-RSP encoder (``HIPPO_FAST_STORE_RSP=0``) or its 4 KiB socket reads
  (``HIPPO_WHOLE_PDU_READS=0``) or parsing every header up to Pixel Data
  (``HIPPO_SHORT_HEADERS=0``), receiving Study1 from
  storescu with ``TCP_NODELAY=1``, alternating with dcmtk storescp (``TCP_NODELAY=1``) as the
  baseline of the same run.
- ``bare``: a bare pynetdicom SCP (:mod:`benchmarks.bare_scp`, no node code) with one knob at a
  time on top of "pynetdicom as shipped": PDU size, TCP_NODELAY on the accepted socket, pydicom
  validation off, fewer transfer syntaxes, ``recv_into``, a shorter association-reactor sleep,
  event-driven reactor loops. Same alternation, same baseline. Wall time and receiver CPU time
  per study.
- ``send``: the node's way of sending results (one association, three small C-STOREs, release;
  :mod:`benchmarks.send_probe`) with pynetdicom as shipped, with the event-driven loops, and
  with those plus ``TCP_NODELAY`` (pynetdicom connects with Nagle on).
- ``idle``: the node's CPU while four associations sit open and idle, event-driven loops vs
  pynetdicom's polling ones.
- ``micro``: in-process CPU cost of the per-association and per-instance steps pynetdicom
  takes in the node's configuration (deep copy of the node's presentation contexts, encoding
  one C-STORE-RSP with and without pydicom validation, parsing one instance header), so the
  knobs above can be explained without network noise.

Printed and saved; it asserts nothing.

    python benchmarks/bench_node_tuning.py [--quick] [--parts micro,bare,node]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks import processes as P
from benchmarks.common import (
    add_common_args,
    machine,
    ratio,
    reps,
    result_path,
    run_provenance,
    summary,
    work_dir,
    write_result,
)
from benchmarks.study_factory import cached_study, list_series, source_study

BARE_VARIANTS: dict[str, list[str]] = {
    "shipped (pdu 16382)": [],
    "pdu 131072": ["--pdu", "131072"],
    "pdu 0 (unlimited)": ["--pdu", "0"],
    "pdu 131072 + nodelay": ["--pdu", "131072", "--nodelay"],
    "pdu 131072 + no validation": ["--pdu", "131072", "--no-validation"],
    "pdu 131072 + lean contexts": ["--pdu", "131072", "--contexts", "lean"],
    "pdu 131072 + recv_into": ["--pdu", "131072", "--fast-recv"],
    "pdu 131072 + reactor 0.1 ms": ["--pdu", "131072", "--reactor-sleep", "0.0001"],
    "pdu 131072 + cheap context copy": ["--pdu", "131072", "--fast-contexts"],
    "pdu 131072 + nodelay + cheap context copy": [
        "--pdu",
        "131072",
        "--nodelay",
        "--fast-contexts",
    ],
    "pdu 131072 + nodelay + cheap context copy + event-driven reactors": [
        "--pdu",
        "131072",
        "--nodelay",
        "--fast-contexts",
        "--event-reactor",
    ],
    "pdu 131072 + nodelay + no validation + recv_into + cheap context copy": [
        "--pdu",
        "131072",
        "--nodelay",
        "--no-validation",
        "--fast-recv",
        "--fast-contexts",
    ],
}
QUICK_BARE = [
    "shipped (pdu 16382)",
    "pdu 131072 + nodelay + cheap context copy + event-driven reactors",
]
NODE_PDUS = {
    "node pdu 16384": 16384,
    "node pdu 131072 (shipped)": 131072,
    "node pdu 1048576": 1048576,
    "node pdu 0": 0,
}


# --------------------------------------------------------------------------- micro


def _time_op(fn, number: int, repeat: int) -> dict:
    """CPU microseconds per call: median and min over ``repeat`` batches of ``number`` calls."""
    per_call = []
    for _ in range(repeat):
        start = time.process_time()
        for _ in range(number):
            fn()
        per_call.append((time.process_time() - start) / number * 1e6)
    return {"median_us": statistics.median(per_call), "min_us": min(per_call)}


def micro(quick: bool) -> dict:
    import copy
    from io import BytesIO

    import pydicom
    from pydicom import config
    from pydicom.filereader import read_dataset
    from pydicom.uid import UID
    from pynetdicom.dimse_messages import C_STORE_RSP
    from pynetdicom.dimse_primitives import C_STORE
    from pynetdicom.dsutils import encode

    from hippo_scp.network.presentation import per_association_contexts, supported_contexts

    number, repeat = (20, 3) if quick else (200, 7)
    out: dict = {}
    contexts = supported_contexts()
    out["node_presentation_contexts"] = len(contexts)
    out["node_transfer_syntaxes_per_context"] = len(contexts[-1].transfer_syntax)
    out["deepcopy_contexts_per_association"] = _time_op(
        lambda: copy.deepcopy(contexts), max(1, number // 20), repeat
    )
    fast = per_association_contexts(contexts)  # what the node has used since 2026-11-28
    out["deepcopy_contexts_cheap_copy"] = _time_op(lambda: copy.deepcopy(fast), number, repeat)

    def store_response() -> C_STORE:
        """The response primitive pynetdicom's Storage SCP builds for a stored instance."""
        rsp = C_STORE()
        rsp.MessageIDBeingRespondedTo = 7
        rsp.AffectedSOPClassUID = "1.2.840.10008.5.1.4.1.1.4"
        rsp.AffectedSOPInstanceUID = "1.2.826.0.1.3680043.8.498.12345678901234567890123456789"
        rsp.Status = 0x0000
        return rsp

    def encode_rsp() -> None:
        msg = C_STORE_RSP()
        msg.primitive_to_message(store_response())
        list(msg.encode_msg(1, 131072))

    saved = (config.settings.reading_validation_mode, config.settings.writing_validation_mode)
    out["c_store_rsp_encode_validation_default"] = _time_op(encode_rsp, number, repeat)
    config.settings.reading_validation_mode = config.IGNORE
    config.settings.writing_validation_mode = config.IGNORE
    try:
        out["c_store_rsp_encode_validation_off"] = _time_op(encode_rsp, number, repeat)
    finally:
        config.settings.reading_validation_mode, config.settings.writing_validation_mode = saved

    from hippo_scp.network.store_response import _plain_store_response

    def encode_rsp_node() -> None:
        """What the node sends instead (network/store_response.py): same bytes."""
        _plain_store_response(store_response())

    out["c_store_rsp_encode_node_fast_path"] = _time_op(encode_rsp_node, number, repeat)

    # one MR instance of Study1 (512x512), as the node's C-STORE handler sees it
    first = next(iter(list_series(source_study("Study1")).values()))[0]
    ds = pydicom.dcmread(first)
    # the encoded data set without file meta, as it arrives in the P-DATA of a C-STORE
    data = encode(ds, False, True)

    def header_only() -> None:
        read_dataset(BytesIO(data), False, True, stop_when=lambda t, vr, n: t >= 0x7FE00010)

    pixel = 0x7FE00010
    int_ge = int.__ge__

    def header_only_int_ge() -> None:
        read_dataset(BytesIO(data), False, True, stop_when=lambda t, vr, n: int_ge(t, pixel))

    def full_decode() -> None:
        read_dataset(BytesIO(data), False, True)

    out["instance_bytes"] = len(data)
    out["parse_header_only"] = _time_op(header_only, number, repeat)
    out["parse_header_only_int_ge"] = _time_op(header_only_int_ge, number, repeat)
    out["parse_full_dataset"] = _time_op(full_decode, number, repeat)

    from hippo_scp.network.receiver import _parse_header

    def node_header_known_series() -> None:
        """What the node parses for an instance of a series it already holds."""
        _parse_header(BytesIO(data), UID("1.2.840.10008.1.2.1"), full=False)

    out["parse_header_node_known_series"] = _time_op(node_header_known_series, number, repeat)
    return out


# --------------------------------------------------------------------------- network parts


def _alternate(
    procs: dict[str, P.Proc], folder: Path, n: int, manifest: dict, nodelay: bool = True
) -> dict:
    names = list(procs)
    runs: dict[str, list[dict]] = {k: [] for k in names}
    for rep in range(n):
        order = names if rep % 2 == 0 else list(reversed(names))
        for name in order:
            proc = procs[name]
            cpu0 = P.cpu_seconds(proc.pid)
            wall = P.storescu(proc.port, proc.aet, folder, nodelay=nodelay)
            cpu = P.cpu_seconds(proc.pid) - cpu0
            if name == "storescp":
                P.clear_folder(proc.extra["out"])
            elif name.startswith("node"):
                P.wait_node_quiet(proc)
            runs[name].append({"wall_s": wall, "receiver_cpu_s": cpu})
            print(f"tuning {name:30} rep {rep}: {wall:.3f} s, cpu {cpu:.2f} s", flush=True)
    base = statistics.median(r["wall_s"] for r in runs["storescp"]) if "storescp" in runs else None
    out = {}
    for name, rows in runs.items():
        wall = summary([r["wall_s"] for r in rows])
        out[name] = {
            "wall_s": wall,
            "receiver_cpu_s": summary([r["receiver_cpu_s"] for r in rows]),
            "ratio_vs_storescp": ratio(wall["median"], base) if name != "storescp" else None,
        }
    return {"instances": manifest["instances"], "bytes": manifest["bytes"], "receivers": out}


def associations(work: Path, quick: bool) -> dict:
    """CPU per association: N x C-ECHO (echoscu) to each receiver, receiver CPU / N."""
    count = 5 if quick else 30
    procs: dict[str, P.Proc] = {}
    sink = P.ResultSink()
    out: dict = {"echoes": count, "receivers": {}}
    try:
        procs["storescp"] = P.start_storescp(work / "assoc-storescp", nodelay=True)
        procs["bare pynetdicom, node's contexts"] = P.start_bare_scp(work / "assoc-b1")
        procs["bare + cheap context copy"] = P.start_bare_scp(
            work / "assoc-b2", args=["--fast-contexts"]
        )
        ok, _ = P.node_available()
        if ok:
            procs["node"] = P.start_node(work / "assoc-node", sink.destination, nodelay=True)
        for name, proc in procs.items():
            time.sleep(0.5)
            cpu0 = P.cpu_seconds(proc.pid)
            start = time.perf_counter()
            for _ in range(count):
                if not P.echo(proc.port, proc.aet):
                    raise RuntimeError(f"C-ECHO to {name} failed")
            wall = time.perf_counter() - start
            cpu = P.cpu_seconds(proc.pid) - cpu0
            out["receivers"][name] = {
                "receiver_cpu_ms_per_association": 1000 * cpu / count,
                "echoscu_wall_ms": 1000 * wall / count,
            }
            print(f"assoc {name:35} cpu {1000 * cpu / count:.1f} ms/association", flush=True)
    finally:
        P.stop_all(procs.values())
        sink.close()
    return out


def bare(work: Path, n: int, quick: bool) -> dict:
    folder, manifest = cached_study(1)
    variants = {k: BARE_VARIANTS[k] for k in (QUICK_BARE if quick else BARE_VARIANTS)}
    procs: dict[str, P.Proc] = {}
    try:
        procs["storescp"] = P.start_storescp(work / "storescp", nodelay=True)
        for i, (name, knobs) in enumerate(variants.items()):
            procs[name] = P.start_bare_scp(work / f"bare{i}", args=knobs)
        result = _alternate(procs, folder, n, manifest)
    finally:
        P.stop_all(procs.values())
    result["knobs"] = variants
    return result


BARE_INSTALLED_VARIANTS: dict[str, list[str]] = {
    "pdu 131072 + nodelay": ["--pdu", "131072", "--nodelay"],
    "pdu 131072 + nodelay + quickack": ["--pdu", "131072", "--nodelay", "--quickack"],
}


def bare_installed(work: Path, n: int) -> dict:
    """Sender as installed (storescu with Nagle on): does TCP_QUICKACK on the receiver help?"""
    folder, manifest = cached_study(1)
    procs: dict[str, P.Proc] = {}
    try:
        for i, (name, knobs) in enumerate(BARE_INSTALLED_VARIANTS.items()):
            procs[name] = P.start_bare_scp(work / f"bare-inst{i}", args=knobs)
        result = _alternate(procs, folder, n, manifest, nodelay=False)
    finally:
        P.stop_all(procs.values())
    result["knobs"] = BARE_INSTALLED_VARIANTS
    result["sender"] = "storescu as installed (no TCP_NODELAY)"
    return result


#: name -> environment that switches one of the node's receive-path changes off
NODE_SWITCHED_OFF: dict[str, dict[str, str]] = {
    "node pdu 131072, polling reactors": {"HIPPO_EVENT_REACTOR": "0"},
    "node pdu 131072, pynetdicom's C-STORE-RSP encoder": {"HIPPO_FAST_STORE_RSP": "0"},
    "node pdu 131072, whole headers": {"HIPPO_SHORT_HEADERS": "0"},
    "node pdu 131072, pynetdicom's 4 KiB reads": {"HIPPO_WHOLE_PDU_READS": "0"},
}


def node(work: Path, n: int, quick: bool) -> dict:
    folder, manifest = cached_study(1)
    pdus = NODE_PDUS if not quick else {"node pdu 131072 (shipped)": 131072}
    procs: dict[str, P.Proc] = {}
    sink = P.ResultSink()
    try:
        procs["storescp"] = P.start_storescp(work / "storescp", nodelay=True)
        for name, pdu in pdus.items():
            procs[name] = P.start_node(
                work / f"node-{pdu}",
                sink.destination,
                nodelay=True,
                config_overrides={"node": {"max_pdu_bytes": pdu}},
            )
        # the shipped node with one of its receive-path changes switched off
        for index, (name, env) in enumerate(NODE_SWITCHED_OFF.items()):
            procs[name] = P.start_node(
                work / f"node-off-{index}", sink.destination, nodelay=True, extra_env=env
            )
        result = _alternate(procs, folder, n, manifest)
    finally:
        P.stop_all(procs.values())
        sink.close()
    return result


#: name -> send_probe.py options: how the node's result associations compare with pynetdicom's.
SEND_VARIANTS: dict[str, list[str]] = {
    "pynetdicom as shipped (polling loops, Nagle on)": [],
    "event-driven loops, Nagle on": ["--event-reactor"],
    "event-driven loops + TCP_NODELAY (the node's sender)": ["--event-reactor", "--nodelay"],
}


def send(work: Path, quick: bool) -> dict:
    """Associate, 3 small C-STOREs, release: the node's result sending, variant by variant.

    The receiver is a bare SCP with the node's receive-path settings; each variant runs in its
    own process (the loops are patched per process), alternating over 3 rounds.
    """
    import json
    import subprocess

    reps_per_probe = 5 if quick else 20
    rounds = 1 if quick else 3
    scp = P.start_bare_scp(
        work / "send-scp",
        args=["--pdu", "131072", "--nodelay", "--fast-contexts", "--event-reactor"],
    )
    rows: dict[str, list[dict]] = {k: [] for k in SEND_VARIANTS}
    try:
        for round_no in range(rounds):
            names = list(SEND_VARIANTS) if round_no % 2 == 0 else list(reversed(SEND_VARIANTS))
            for name in names:
                argv = [P.python(), "-m", "benchmarks.send_probe", "--port", str(scp.port)]
                argv += ["--reps", str(reps_per_probe), *SEND_VARIANTS[name]]
                out = subprocess.run(
                    argv, capture_output=True, text=True, cwd=P.REPO, timeout=300, check=False
                )
                row = json.loads(out.stdout.strip().splitlines()[-1])
                rows[name].append(row)
                print(f"send {name:55} round {round_no}: {row}", flush=True)
    finally:
        P.stop_all([scp])
    result = {"associations_per_probe": reps_per_probe, "rounds": rounds, "variants": {}}
    for name, probes in rows.items():
        result["variants"][name] = {
            key: statistics.median(p[key] for p in probes)
            for key in ("associate_ms", "c_store_ms", "release_ms")
        }
    return result


def idle(work: Path, quick: bool) -> dict:
    """Node CPU while 4 associations sit open and idle: event-driven loops vs polling."""
    from pynetdicom import AE
    from pynetdicom.sop_class import Verification

    seconds = 3.0 if quick else 10.0
    sink = P.ResultSink()
    result: dict = {"associations": 4, "seconds": seconds, "node_cpu_percent": {}}
    try:
        for index, (name, env) in enumerate(
            (
                ("event-driven loops (shipped)", {}),
                ("pynetdicom's polling loops", {"HIPPO_EVENT_REACTOR": "0"}),
            )
        ):
            node = P.start_node(
                work / f"idle-{index}", sink.destination, nodelay=True, extra_env=env
            )
            try:
                ae = AE(ae_title="IDLE")
                ae.add_requested_context(Verification)
                assocs = [ae.associate(P.HOST, node.port, ae_title=node.aet) for _ in range(4)]
                time.sleep(1)
                cpu0 = P.cpu_seconds(node.pid)
                time.sleep(seconds)
                busy = P.cpu_seconds(node.pid) - cpu0
                for assoc in assocs:
                    assoc.release()
                result["node_cpu_percent"][name] = round(100 * busy / seconds, 1)
                print(f"idle {name}: {result['node_cpu_percent'][name]} % of a core", flush=True)
            finally:
                P.stop_all([node])
    finally:
        sink.close()
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_common_args(parser, default_reps=7)
    parser.add_argument("--parts", default="micro,assoc,bare,bare_installed,node,send,idle")
    parser.add_argument(
        "--merge-into",
        type=Path,
        help="also replace the parts measured now in an earlier result file (the old ones are "
        "kept under 'superseded'), e.g. to re-measure 'micro,assoc' after a node change",
    )
    args = parser.parse_args(argv)
    n = reps(args, 7)
    parts = args.parts.split(",")
    work = work_dir(args, "tuning")
    result: dict = {
        "machine": machine(),
        "benchmark": "node_tuning",
        "quick": args.quick,
        "reps": n,
        "sender": "storescu with TCP_NODELAY=1, Study1 (120 instances, 45 MB), one association",
    }
    if "micro" in parts:
        result["micro"] = micro(args.quick)
        for key, value in result["micro"].items():
            print(f"micro {key}: {value}")
    if "assoc" in parts:
        result["assoc"] = associations(work, args.quick)
    if "bare" in parts:
        result["bare"] = bare(work, n, args.quick)
    if "bare_installed" in parts:
        result["bare_installed"] = bare_installed(work, min(n, 5))
    if "send" in parts:
        result["send"] = send(work, args.quick)
    if "idle" in parts:
        ok, why = P.node_available()
        if ok:
            result["idle"] = idle(work, args.quick)
        else:
            result["idle_error"] = why
    if "node" in parts:
        ok, why = P.node_available()
        if ok:
            result["node"] = node(work, n, args.quick)
        else:
            result["node_error"] = why
    for part in ("bare", "bare_installed", "node"):
        if part in result:
            print(f"\n== {part}: median wall s / receiver cpu s / ratio vs storescp ==")
            for name, data in result[part]["receivers"].items():
                r = data["ratio_vs_storescp"]
                print(
                    f"{name:30} {data['wall_s']['median']:.3f}  "
                    f"{data['receiver_cpu_s']['median']:.2f}  " + (f"x{r:.2f}" if r else "")
                )
    if args.merge_into and args.out is None:
        # Not also saved to the default file: that is usually the merge target, and saving
        # first would leave only this run's parts in it.
        merged = merge_into(args.merge_into, result, [p for p in PARTS if p in result])
        print(f"merged parts {merged} into {args.merge_into}")
        return 0
    path = write_result(result_path(args, "node_tuning"), result)
    print(f"saved {path}")
    if args.merge_into:
        merged = merge_into(args.merge_into, result, [p for p in PARTS if p in result])
        print(f"merged parts {merged} into {args.merge_into}")
    return 0


PARTS = ("micro", "assoc", "bare", "bare_installed", "node", "send", "idle")


def merge_into(target: Path, result: dict, parts: list[str]) -> list[str]:
    """Replace ``parts`` in ``target``; each records the run it comes from (``remeasured``)."""
    import json

    data = json.loads(target.read_text())
    for part in parts:
        if part in data:
            data.setdefault("superseded", {})[part] = data[part]
        data[part] = result[part]
        data.setdefault("remeasured", {})[part] = run_provenance(result)
    target.write_text(json.dumps(data, indent=1, default=str) + "\n")
    return parts


if __name__ == "__main__":
    sys.exit(main())
