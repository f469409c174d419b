"""Figures from the result JSON files (matplotlib, Agg): ``docs/img/bench_*.png``.

python benchmarks/plots.py [--results benchmarks/results] [--out docs/img]
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

REPO = Path(__file__).resolve().parent.parent
COLORS = {"storescp": "tab:gray", "node": "tab:blue", "bare": "tab:green"}
STYLES = {"installed": "--", "tuned": "-"}


def _load(results: Path, name: str) -> dict | None:
    path = results / f"{name}.json"
    if not path.exists():
        return None
    return json.loads(path.read_text())


def _subtitle(data: dict) -> str:
    m = data.get("machine", {})
    quick = " - QUICK (1 rep)" if data.get("quick") else ""
    return f"{m.get('cpus', '?')} CPUs, load {m.get('loadavg_at_start', '?')}{quick}"


def plot_ingest(data: dict, out: Path) -> Path:
    fig, ax = plt.subplots(figsize=(7, 4.5))
    sizes = data.get("sizes", {})
    by_line: dict[tuple[str, str], list[tuple[float, float, float, float]]] = {}
    for size in sizes.values():
        mb = size["bytes"] / 1e6
        for mode, cell in size["modes"].items():
            for name, recv in cell["receivers"].items():
                w = recv["wall_s"]
                by_line.setdefault((name, mode), []).append((mb, w["median"], w["min"], w["max"]))
    for (name, mode), points in sorted(by_line.items()):
        points.sort()
        xs = [p[0] for p in points]
        ys = [p[1] for p in points]
        err = [[p[1] - p[2] for p in points], [p[3] - p[1] for p in points]]
        ax.errorbar(
            xs,
            ys,
            yerr=err,
            fmt="o" + STYLES.get(mode, "-"),
            color=COLORS.get(name),
            label=f"{name} ({mode})",
            capsize=3,
        )
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("study size (MB); Study1 x1 / x4 / x16")
    ax.set_ylabel("storescu wall time (s), median, min-max")
    again = sorted(k for k, v in sizes.items() if "remeasured" in v)
    note = f"; {', '.join(again)} re-measured at a later commit" if again else ""
    ax.set_title("Ingest: storescu -> receiver\n" + _subtitle(data) + note, fontsize=10)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    path = out / "bench_ingest.png"
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def plot_throughput(data: dict, out: Path) -> Path:
    levels = sorted(data.get("levels", {}).items(), key=lambda kv: int(kv[0]))
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 4))
    cs = [int(c) for c, _ in levels]
    spm = [d["studies_per_min"]["median"] or 0 for _, d in levels]
    ax1.plot(cs, spm, "o-", color="tab:blue")
    ax1.set_xscale("log", base=2)
    ax1.set_xticks(cs, [str(c) for c in cs])
    ax1.set_ylim(bottom=0)
    ax1.set_xlabel("concurrent senders")
    ax1.set_ylabel("studies / minute (median)")
    ax1.set_title("Throughput (Study1, results to sink)", fontsize=10)
    ax1.grid(True, alpha=0.3)
    for key, label, color in (
        ("round_s", "round (all SRs in)", "tab:blue"),
        ("sr_latency_s", "SR latency per study", "tab:orange"),
        ("ingest_s", "ingest per study", "tab:gray"),
    ):
        ys = [d[key]["median"] or 0 for _, d in levels]
        ax2.plot(cs, ys, "o-", label=label, color=color)
    ax2.set_xscale("log", base=2)
    ax2.set_xticks(cs, [str(c) for c in cs])
    ax2.set_xlabel("concurrent senders")
    ax2.set_ylabel("seconds (median)")
    ax2.set_title("Time vs concurrency\n" + _subtitle(data), fontsize=10)
    ax2.grid(True, alpha=0.3)
    ax2.legend(fontsize=8)
    fig.tight_layout()
    path = out / "bench_throughput.png"
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def plot_memory(data: dict, out: Path) -> Path | None:
    timeline = data.get("timeline")
    if not timeline:
        return None
    fig, ax = plt.subplots(figsize=(7, 4))
    ts = [p[0] for p in timeline["rss_mib"]]
    vs = [p[1] for p in timeline["rss_mib"]]
    ax.plot(ts, vs, color="tab:blue", label="node RSS (sampled)")
    ax.axhline(data.get("target_mib", 600), color="tab:red", ls="--", label="target")
    for key, label in (("send_at_s", "4 senders start"), ("done_at_s", "all SRs in")):
        if key in timeline:
            ax.axvline(timeline[key], color="tab:gray", ls=":")
            ax.text(timeline[key], max(vs) * 0.5, label, rotation=90, fontsize=8)
    ax.set_xlabel("seconds since start")
    ax.set_ylabel("MiB")
    ax.set_title("Node memory, idle then studies in flight\n" + _subtitle(data), fontsize=10)
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    path = out / "bench_memory.png"
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def plot_tuning(data: dict, out: Path) -> Path | None:
    rows = []
    for part in ("node", "bare"):
        for name, d in data.get(part, {}).get("receivers", {}).items():
            if name == "storescp" and part == "bare" and "node" in data:
                continue
            label = name if part == "node" or name == "storescp" else f"bare: {name}"
            rows.append((label, d["wall_s"]["median"], d["receiver_cpu_s"]["median"]))
    if not rows:
        return None
    fig, ax = plt.subplots(figsize=(8, 0.45 * len(rows) + 1.5))
    ys = range(len(rows))
    ax.barh(ys, [r[1] for r in rows], color="tab:blue", label="wall")
    ax.barh(ys, [r[2] for r in rows], color="tab:orange", alpha=0.7, label="receiver CPU")
    ax.set_yticks(list(ys), [r[0] for r in rows], fontsize=8)
    ax.invert_yaxis()
    ax.set_xlabel("seconds per Study1 (median), storescu TCP_NODELAY=1")
    ax.set_title("Receive-path knobs\n" + _subtitle(data), fontsize=10)
    ax.legend(fontsize=8)
    ax.grid(True, axis="x", alpha=0.3)
    fig.tight_layout()
    path = out / "bench_tuning.png"
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def plot_all(results: Path, out: Path) -> list[Path]:
    out.mkdir(parents=True, exist_ok=True)
    made = []
    for name, fn in (
        ("ingest", plot_ingest),
        ("throughput", plot_throughput),
        ("memory", plot_memory),
        ("node_tuning", plot_tuning),
    ):
        data = _load(results, name)
        if data is None:
            continue
        try:
            path = fn(data, out)
        except (KeyError, TypeError, ValueError) as error:
            print(f"plot {name}: skipped ({type(error).__name__}: {error})", file=sys.stderr)
            continue
        if path:
            made.append(path)
            print(f"figure {path}")
    return made


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--results", type=Path, default=REPO / "benchmarks" / "results")
    parser.add_argument("--out", type=Path, default=REPO / "docs" / "img")
    args = parser.parse_args(argv)
    plot_all(args.results, args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
