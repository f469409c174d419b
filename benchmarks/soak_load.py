"""Soak / load: N concurrent senders re-sending Study1..3 to the node for a bounded time.

What it shows (issue #9):

* every study gets exactly **one** result set (SEG + SR + SC) for its content, however often
  it is re-sent (``triggers.reanalyze_unchanged: false``, the default), and each result covers
  the whole series;
* no association is refused while the senders stay below ``node.max_associations``;
* the node's peak RSS (psutil samples and the kernel's VmHWM high-water mark) stays bounded.

Two phases, so analysis happens *under* load and re-sends are provably not re-analysed:

1. *first delivery*: each study is sent once (one sender per study, concurrently); the run
   continues as soon as all three result sets are at the destination (bounded wait);
2. *soak*: ``--senders`` threads each run dcmtk ``storescu`` in a loop over the studies
   (staggered start) until ``--minutes`` are over. No further result may arrive.

Usage (the node as users start it, a pynetdicom sink as the PACS)::

    .venv/bin/python -m benchmarks.soak_load                  # 8 senders, 2 minutes
    .venv/bin/python -m benchmarks.soak_load --senders 8 --minutes 10 --all-series

``--all-series`` sends whole studies (5 series each; only HippoCrop is analysed), otherwise only
the HippoCrop series. Results go to ``benchmarks/results/soak_load.json``; exit status 1 when a
check fails. The CI test ``tests/hardening/test_load.py`` runs the same loop, smaller.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

#: HippoCrop series folder of each test study (../shared/data/TestVolumes).
CROP_FOLDERS = {"Study1": "13_HCropVolume", "Study2": "14_HCropVolume", "Study3": "11_HCropVolume"}
SEG_SOP_CLASS = "1.2.840.10008.5.1.4.1.1.66.4"


def data_root() -> Path:
    from tests.dicom_factory import TEST_VOLUMES_DIR

    return TEST_VOLUMES_DIR


def study_folders(all_series: bool = False, root: Path | None = None) -> dict[str, Path]:
    """Study name -> folder to send (the HippoCrop series, or the whole study)."""
    root = root or data_root()
    return {
        name: (root / name) if all_series else (root / name / crop)
        for name, crop in CROP_FOLDERS.items()
    }


# --------------------------------------------------------------------------- memory
class RssSampler(threading.Thread):
    """Samples a process's RSS with psutil every ``interval`` s; also reads VmHWM at the end."""

    def __init__(self, pid: int, interval: float = 0.25) -> None:
        super().__init__(name=f"rss-{pid}", daemon=True)
        self.pid = pid
        self.interval = interval
        self.peak_rss = 0
        self.samples = 0
        self._stop_event = threading.Event()

    def run(self) -> None:
        import psutil

        try:
            process = psutil.Process(self.pid)
        except psutil.Error:
            return
        while not self._stop_event.is_set():
            try:
                rss = process.memory_info().rss
            except psutil.Error:
                break
            self.peak_rss = max(self.peak_rss, rss)
            self.samples += 1
            self._stop_event.wait(self.interval)

    def high_water_mark(self) -> int:
        """The kernel's peak RSS of the process (VmHWM), in bytes; 0 if unreadable."""
        try:
            for line in Path(f"/proc/{self.pid}/status").read_text().splitlines():
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
        except OSError:
            pass
        return 0

    def stop(self) -> dict[str, int]:
        hwm = self.high_water_mark()
        self._stop_event.set()
        self.join(5)
        return {"peak_rss_bytes": max(self.peak_rss, hwm), "sampled_peak_rss_bytes":
                self.peak_rss, "vm_hwm_bytes": hwm, "samples": self.samples}  # fmt: skip


# --------------------------------------------------------------------------- sending
@dataclass
class SendRecord:
    sender: int
    study: str
    started: float
    seconds: float
    returncode: int
    refused: bool
    failed_instances: int
    #: storescu's last output lines when the send did not succeed (why: reject reason, status)
    diagnostics: str = ""


@dataclass
class LoadReport:
    senders: int
    duration_s: float
    records: list[SendRecord] = field(default_factory=list)

    @property
    def sends(self) -> int:
        return len(self.records)

    @property
    def refused(self) -> list[SendRecord]:
        return [r for r in self.records if r.refused]

    @property
    def failed(self) -> list[SendRecord]:
        return [r for r in self.records if r.returncode != 0 or r.failed_instances]

    def per_study(self) -> Counter[str]:
        return Counter(r.study for r in self.records)

    def to_dict(self) -> dict:
        seconds = sorted(r.seconds for r in self.records)
        return {
            "senders": self.senders,
            "duration_s": round(self.duration_s, 1),
            "sends": self.sends,
            "sends_per_study": dict(self.per_study()),
            "refused": len(self.refused),
            "failed": len(self.failed),
            "send_seconds_median": round(seconds[len(seconds) // 2], 3) if seconds else None,
            "send_seconds_max": round(seconds[-1], 3) if seconds else None,
        }


def storescu_once(
    port: int, folder: Path, *, calling: str, called: str = "HIPPOAI", timeout: float = 120
) -> tuple[int, bool, int, str]:
    """One association sending ``folder``; (returncode, refused, failed instances, stderr)."""
    argv = ["storescu", "-aet", calling, "-aec", called, "+sd", "+r", "-nh",
            "127.0.0.1", str(port), str(folder)]  # fmt: skip
    try:
        done = subprocess.run(argv, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return -1, False, 0, "timeout"
    text = done.stdout + done.stderr
    refused = "Association Rejected" in text or "Association Request Failed" in text
    # dcmtk reports every non-success C-STORE status (and any other error) on an E:/F: line
    failed = sum(1 for line in text.splitlines() if line.startswith(("E:", "F:")))
    return done.returncode, refused, failed, text[-2000:]


def first_delivery(port: int, studies: dict[str, Path], calling: str = "LOAD") -> list[tuple]:
    """Send each study once, concurrently (one association each); returns the outcomes."""
    outcomes: list[tuple] = []
    lock = threading.Lock()

    def send(name: str, folder: Path) -> None:
        result = storescu_once(port, folder, calling=calling)
        with lock:
            outcomes.append((name, *result))

    threads = [threading.Thread(target=send, args=item) for item in studies.items()]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(180)
    return outcomes


def run_load(
    port: int,
    studies: dict[str, Path],
    senders: int,
    duration_s: float,
    *,
    calling_prefix: str = "LOAD",
    stagger_s: float = 0.3,
    on_record: Callable[[SendRecord], None] | None = None,
) -> LoadReport:
    """``senders`` threads, each looping storescu over the studies until ``duration_s``."""
    names = list(studies)
    report = LoadReport(senders=senders, duration_s=duration_s)
    lock = threading.Lock()
    t0 = time.monotonic()
    deadline = t0 + duration_s

    def sender(index: int) -> None:
        time.sleep(index * stagger_s)
        k = index
        while time.monotonic() < deadline:
            name = names[k % len(names)]
            k += 1
            started = time.monotonic()
            code, refused, failed, output = storescu_once(
                port, studies[name], calling=f"{calling_prefix}{index:02d}"
            )
            diagnostics = output[-600:] if code or refused or failed else ""
            record = SendRecord(index, name, started - t0, time.monotonic() - started,
                                code, refused, failed, diagnostics)  # fmt: skip
            with lock:
                report.records.append(record)
            if on_record:
                on_record(record)

    threads = [threading.Thread(target=sender, args=(i,), daemon=True) for i in range(senders)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(duration_s + 180)
    report.duration_s = time.monotonic() - t0
    return report


# --------------------------------------------------------------------------- checks
def expected_instances(studies: dict[str, Path]) -> dict[str, tuple[str, int]]:
    """Study name -> (StudyInstanceUID, instances in its HippoCrop series)."""
    import pydicom

    out = {}
    for name, crop in CROP_FOLDERS.items():
        folder = studies[name] if studies[name].name == crop else studies[name] / crop
        files = sorted(folder.glob("*.dcm"))
        first = pydicom.dcmread(files[0], stop_before_pixels=True)
        out[name] = (str(first.StudyInstanceUID), len(files))
    return out


def result_sets_per_study(items: list[tuple[str, str]]) -> dict[str, Counter[str]]:
    """(study UID, SOP class UID) arrivals -> per study, count of SEG / SR / SC."""
    per: dict[str, Counter[str]] = {}
    for study_uid, sop_class in items:
        kind = "SEG" if sop_class == SEG_SOP_CLASS else (
            "SR" if sop_class.startswith("1.2.840.10008.5.1.4.1.1.88.") else "SC")  # fmt: skip
        per.setdefault(study_uid, Counter())[kind] += 1
    return per


# --------------------------------------------------------------------------- main
def main(argv: list[str] | None = None) -> int:
    from benchmarks import common
    from benchmarks import processes as P

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--senders", type=int, default=8)
    parser.add_argument("--minutes", type=float, default=2.0, help="soak phase duration")
    parser.add_argument("--all-series", action="store_true", help="send whole studies")
    parser.add_argument("--max-associations", type=int, default=16)
    parser.add_argument("--rss-limit-mib", type=float, default=1024)
    parser.add_argument("--out", type=Path, default=REPO / "benchmarks/results/soak_load.json")
    parser.add_argument("--work", type=Path, default=None)
    args = parser.parse_args(argv)

    studies = study_folders(args.all_series)
    expected = expected_instances(study_folders(False))
    work = args.work or Path(common.work_dir(argparse.Namespace(work=None), "soak"))
    problems: list[str] = []
    with P.ResultSink(aet="SOAKSINK") as sink:
        node = P.start_node(
            work,
            sink.destination,
            settle=3,
            config_overrides={"node": {"max_associations": args.max_associations}},
        )
        sampler = RssSampler(node.pid)
        sampler.start()
        try:
            t0 = time.monotonic()
            first = first_delivery(node.port, studies)
            bad_first = [o for o in first if o[1] != 0 or o[2]]
            if bad_first:
                problems.append(f"first delivery failed: {bad_first}")
            uids = {uid: name for name, (uid, _) in expected.items()}

            def all_three(items) -> bool:
                got = result_sets_per_study([(r.study_uid, r.sop_class) for r in items])
                return all(sum(got.get(uid, Counter()).values()) >= 3 for uid in uids)

            if not sink.wait_for(all_three, timeout=300):
                problems.append("first results did not all arrive within 300 s")
            first_results_s = time.monotonic() - t0
            print(f"first delivery: 3 result sets after {first_results_s:.1f} s", flush=True)

            report = run_load(node.port, studies, args.senders, args.minutes * 60)
            print(f"soak: {report.sends} sends by {args.senders} senders in "
                  f"{report.duration_s:.0f} s", flush=True)  # fmt: skip
            time.sleep(3 + 1 + 5)  # settle + grace + margin: any re-analysis would show
            memory = sampler.stop()
        finally:
            status = node.stop(60)
        if status != 0:
            problems.append(f"node exit status {status}")
        arrivals = [(r.study_uid, r.sop_class) for r in sink.snapshot()]

    per_study = result_sets_per_study(arrivals)
    for uid, name in uids.items():
        kinds = per_study.get(uid, Counter())
        if kinds != Counter({"SEG": 1, "SR": 1, "SC": 1}):
            problems.append(f"{name}: result objects {dict(kinds)} (want one SEG, SR, SC)")
    strays = set(per_study) - set(uids)
    if strays:
        problems.append(f"results for unknown studies: {strays}")
    if report.refused:
        problems.append(f"{len(report.refused)} association(s) refused below the maximum")
    if report.failed:
        problems.append(f"{len(report.failed)} send(s) failed")
    peak_mib = memory["peak_rss_bytes"] / 1024**2
    if peak_mib >= args.rss_limit_mib:
        problems.append(f"peak RSS {peak_mib:.0f} MiB >= {args.rss_limit_mib:.0f} MiB")

    payload = {
        "benchmark": "soak_load",
        "studies": {n: {"instances": expected[n][1]} for n in expected},
        "all_series": args.all_series,
        "max_associations": args.max_associations,
        "first_results_s": round(first_results_s, 1),
        "load": report.to_dict(),
        "memory": {**memory, "peak_rss_mib": round(peak_mib, 1)},
        "result_objects_per_study": {uids[u]: dict(c) for u, c in per_study.items() if u in uids},
        "node_launcher": node.extra.get("launcher"),
        "weights": node.extra.get("weights"),
        "problems": problems,
    }
    path = common.write_result(args.out, payload)
    print(json.dumps({k: payload[k] for k in ("load", "memory", "problems")}, indent=1))
    print(f"written {path}")
    return 1 if problems else 0


if __name__ == "__main__":
    raise SystemExit(main())
