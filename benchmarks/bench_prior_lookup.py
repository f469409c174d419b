#!/usr/bin/env python3
"""What the prior lookup adds to the analysis of a series (asserts no timing).

    .venv/bin/python benchmarks/bench_prior_lookup.py [--quick] [--reps 7] [--out FILE]

With ``priors.enabled`` the node asks the PACS (C-FIND + C-GET, Study Root) for its own
earlier SR of the patient before it makes the report, and reads that SR with highdicom. This
script measures, in one process with the shipped model (``Segmenter``, 2 threads), the wall
time of ``SeriesAnalyzer.analyze`` on Study1's HippoCrop series, and its ``priors`` stage,
against a real Orthanc (``deploy_scripts/orthanc.json.template``, free ports, a scratch folder,
the AE title ``HIPPOAI`` it grants C-FIND / C-GET to), under four conditions, interleaved
(A B C D, A B C D, ... after one warm-up of each):

* **baseline**: no prior source (``priors.enabled: false``);
* **none**: the PACS is asked; the patient has an earlier examination there (images) but no
  hippo-scp result, so the lookup answers ``none`` (STUDY and SERIES C-FIND, no C-GET);
* **found**: the PACS holds one SR of the patient's examination a year earlier (Study1's
  series re-labelled as that examination and analysed once): one C-GET, one SR read, and the
  report shows the change;
* **found, 3 SR series**: the earlier examination was analysed three times (three SR series);
  only the newest is retrieved and read, so this should cost what ``found`` costs.

Each patient is a copy of the series under its own PatientID and study; the SRs are made by
the same analyzer and stored through Orthanc's REST API before the timing starts. Printed and
saved: per condition the median (min, max) of the analyze time and of ``timings_ms["priors"]``,
and the ratios of the median analyze times to the baseline's.
"""

from __future__ import annotations

import argparse
import datetime
import io
import logging
import re
import shutil
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
    summary,
    work_dir,
    write_result,
)
from benchmarks.study_factory import as_new_study, source_study

CROP_FOLDER = "13_HCropVolume"
#: the AE title orthanc.json.template grants C-FIND / C-GET to (the node's)
CALLING_AET = "HIPPOAI"
#: condition -> what it measures (the order is the order of each round)
CONDITIONS: dict[str, str] = {
    "baseline": "no prior source",
    "none": "PACS asked, no earlier result of the patient",
    "found": "PACS asked, one earlier SR of the patient",
    "found_3_series": "PACS asked, the earlier study analysed 3 times (3 SR series)",
}
#: what the lookup must answer in each condition (else the timings mean nothing)
EXPECTED_STATUS: dict[str, str | None] = {
    "baseline": None,
    "none": "none",
    "found": "found",
    "found_3_series": "found",
}
PATIENT_IDS = {
    "none": "HIPPO-BENCH-NO-RESULTS",
    "found_3_series": "HIPPO-BENCH-THREE-SR",
}  # "baseline" and "found": Study1's own patient
STAGES = ("load", "infer", "priors", "seg", "sr", "report", "total")
_SRS_READ = re.compile(r"(\d+) SR\(s\) read")


class LookupLog(logging.Handler):
    """Keeps the prior lookup's INFO summary line ("... N SR(s) read ...") of the last call."""

    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.last: str | None = None

    def emit(self, record: logging.LogRecord) -> None:
        message = record.getMessage()
        if "SR(s) read" in message:
            self.last = message

    def take_srs_read(self) -> int | None:
        found = _SRS_READ.search(self.last or "")
        self.last = None
        return int(found.group(1)) if found else None


def year_before(dicom_date: str) -> str:
    day = datetime.datetime.strptime(dicom_date, "%Y%m%d").date()
    try:
        earlier = day.replace(year=day.year - 1)
    except ValueError:  # 29 February
        earlier = day - datetime.timedelta(days=365)
    return earlier.strftime("%Y%m%d")


def store(orthanc: P.Orthanc, ds) -> None:
    """One instance into Orthanc through its REST API (``POST /instances``)."""
    buffer = io.BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    orthanc.rest("POST", "/instances", buffer.getvalue(), timeout=60)


def fill_pacs(orthanc: P.Orthanc, analyzer, series: list) -> dict[str, list]:
    """Store what each condition's patient has in the PACS; returns the series to analyse.

    Every patient's current study is in the PACS (one instance; Orthanc routed it to the
    node), so is an examination a year earlier (one instance); the ``found`` patients also
    have that examination's SR(s), made by ``analyzer``.
    """
    prior_date = year_before(str(series[0].StudyDate))
    current = {
        "baseline": series,
        "none": as_new_study(series, PatientID=PATIENT_IDS["none"]),
        "found": series,
        "found_3_series": as_new_study(series, PatientID=PATIENT_IDS["found_3_series"]),
    }
    analyses = {"none": 0, "found": 1, "found_3_series": 3}
    for name, count in analyses.items():
        patient = str(current[name][0].PatientID)
        earlier = as_new_study(series, StudyDate=prior_date, PatientID=patient)
        store(orthanc, current[name][0])
        store(orthanc, earlier[0])
        for _ in range(count):  # each analysis: a new SR series, SeriesDate/Time = now
            store(orthanc, analyzer.analyze(earlier).sr)
    return current


def measure(analyzer, datasets: list, source, log: LookupLog) -> dict:
    log.last = None
    t0 = time.perf_counter()
    result = analyzer.analyze(datasets, prior_source=source)
    wall_ms = (time.perf_counter() - t0) * 1000
    lookup = result.prior_lookup
    comparison = result.prior_comparison
    return {
        "analyze_ms": round(wall_ms, 1),
        "timings_ms": {k: round(v, 1) for k, v in result.timings_ms.items()},
        "status": None if lookup is None else lookup.status,
        "reason": None if lookup is None else lookup.reason,
        "srs_read": log.take_srs_read() if lookup is not None else None,
        "compared": comparison is not None,
        "interval_days": None if comparison is None else comparison.interval_days,
        "change_total_pct": _round(None if comparison is None else comparison.total.change_pct),
    }


def _round(value: float | None) -> float | None:
    return None if value is None else round(float(value), 2)


def check(name: str, row: dict) -> None:
    """The lookup answered what the condition is about (else stop: the timings would lie)."""
    expected = EXPECTED_STATUS[name]
    if row["status"] != expected:
        raise RuntimeError(f"{name}: lookup answered {row['status']!r} ({row['reason']})")
    if (expected == "found") != row["compared"]:
        raise RuntimeError(f"{name}: comparison {'missing' if expected else 'unexpected'}")


def per_condition(runs: list[dict]) -> dict:
    stages = {
        stage: summary([r["timings_ms"][stage] for r in runs if stage in r["timings_ms"]])
        for stage in STAGES
    }
    return {
        "analyze_ms": summary([r["analyze_ms"] for r in runs]),
        "priors_ms": stages["priors"],
        "stages_ms": {k: v for k, v in stages.items() if v["n"]},
        "status": sorted({r["status"] or "not asked" for r in runs}),
        "srs_read": sorted({r["srs_read"] for r in runs if r["srs_read"] is not None}),
        "compared": all(r["compared"] for r in runs),
        "interval_days": runs[-1]["interval_days"] if runs else None,
        "change_total_pct": runs[-1]["change_total_pct"] if runs else None,
    }


def _fmt(s: dict) -> str:
    if not s.get("n"):
        return "-"
    return f"{s['median']:7.1f} ({s['min']:.1f}-{s['max']:.1f})"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_common_args(parser, default_reps=7)
    parser.add_argument("--threads", type=int, default=2, help="torch threads (default 2)")
    parser.add_argument(
        "--timeout", type=float, default=10.0, help="lookup timeout_s (priors.timeout_s: 10)"
    )
    args = parser.parse_args(argv)
    n = reps(args, 7)
    started = machine()  # the load average at the start, next to the one write_result adds

    import pydicom

    from hippo_scp.config import Destination
    from hippo_scp.model.inference import Segmenter
    from hippo_scp.network.prior_query import PriorResultsQuery
    from hippo_scp.pipeline.analysis import SeriesAnalyzer

    folder = source_study("Study1") / CROP_FOLDER
    series = [pydicom.dcmread(p) for p in sorted(folder.glob("*.dcm"))]
    weights, weights_note = P.node_weights()
    analyzer = SeriesAnalyzer(Segmenter(weights_path=weights, num_threads=args.threads))
    log = LookupLog()
    query_logger = logging.getLogger("hippo_scp.network.prior_query")
    query_logger.addHandler(log)
    query_logger.setLevel(logging.INFO)

    work = work_dir(args, "prior_lookup")
    runs: dict[str, list[dict]] = {name: [] for name in CONDITIONS}
    warm_up: dict[str, dict] = {}
    orthanc = None
    finished = False
    try:
        orthanc = P.start_orthanc(work / "orthanc", node_port=P.free_port(), node_aet=CALLING_AET)
        t0 = time.perf_counter()
        current = fill_pacs(orthanc, analyzer, series)
        fill_s = time.perf_counter() - t0
        source = Destination(ae_title="ORTHANC", host=P.HOST, port=orthanc.dicom_port)
        # one query object for the run, as the node keeps one
        query = PriorResultsQuery(source, calling_ae_title=CALLING_AET, timeout_s=args.timeout)
        sources = {name: None if name == "baseline" else query for name in CONDITIONS}
        for name in CONDITIONS:
            warm_up[name] = measure(analyzer, current[name], sources[name], log)
            check(name, warm_up[name])
        for rep in range(n):
            for name in CONDITIONS:  # interleaved: drift and load hit every condition alike
                row = measure(analyzer, current[name], sources[name], log)
                check(name, row)
                runs[name].append(row)
                print(
                    f"rep {rep + 1} {name:>14}: analyze {row['analyze_ms']:6.0f} ms, priors "
                    f"{row['timings_ms'].get('priors', 0):5.0f} ms, lookup {row['status']}, "
                    f"SRs read {row['srs_read']}",
                    flush=True,
                )
        finished = True
    finally:
        if orthanc is not None:
            orthanc.stop()
        query_logger.removeHandler(log)
        if args.work is None and finished:
            shutil.rmtree(work, ignore_errors=True)
        elif not finished:
            print(f"!! failed; Orthanc's log and storage are kept in {work}", file=sys.stderr)

    conditions = {name: per_condition(rows) for name, rows in runs.items()}
    median = {name: c["analyze_ms"]["median"] for name, c in conditions.items()}
    for name, c in conditions.items():
        c["ratio_vs_baseline"] = ratio(median[name], median["baseline"])
    payload = {
        "machine": started,
        "benchmark": "prior_lookup",
        "quick": args.quick,
        "reps": n,
        "threads": args.threads,
        "weights": weights_note,
        "series": f"Study1 {CROP_FOLDER} ({len(series)} instances)",
        "pacs": "Orthanc (deploy_scripts/orthanc.json.template), calling AE "
        f"{CALLING_AET}, timeout_s {args.timeout}",
        "fill_pacs_s": round(fill_s, 1),
        "condition_descriptions": CONDITIONS,
        "conditions": conditions,
        "ratio_none_vs_baseline": ratio(median["none"], median["baseline"]),
        "ratio_found_vs_baseline": ratio(median["found"], median["baseline"]),
        "ratio_found_3_series_vs_baseline": ratio(median["found_3_series"], median["baseline"]),
        "ratio_found_3_series_vs_found": ratio(median["found_3_series"], median["found"]),
        "priors_ms_found_minus_none": (
            conditions["found"]["priors_ms"]["median"] - conditions["none"]["priors_ms"]["median"]
        ),
        "warm_up": warm_up,
        "runs": runs,
    }
    path = write_result(result_path(args, "prior_lookup"), payload)
    print(f"\n== prior lookup, median (min-max) of {n}, ms ==")
    print(f"{'condition':>15} | {'analyze':>22} | {'priors':>22} | / baseline")
    for name, c in conditions.items():
        print(
            f"{name:>15} | {_fmt(c['analyze_ms']):>22} | {_fmt(c['priors_ms']):>22} | "
            f"{c['ratio_vs_baseline']:.2f}"
        )
    spread = statistics.median(r["timings_ms"]["infer"] for r in runs["baseline"])
    print(
        f"ratios: none/baseline {payload['ratio_none_vs_baseline']:.2f}, found/baseline "
        f"{payload['ratio_found_vs_baseline']:.2f}, 3 SR series/found "
        f"{payload['ratio_found_3_series_vs_found']:.2f} (SR series read with 3 stored: "
        f"{conditions['found_3_series']['srs_read']}); baseline infer median {spread:.0f} ms "
        f"-> {path}"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
