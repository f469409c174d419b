"""Make test studies for the benchmarks: bigger studies and fresh copies with new UIDs.

A "k-times larger" study is the source study with every series duplicated k times; each copy
gets a new SeriesInstanceUID, new SOPInstanceUIDs and a distinct SeriesNumber, and all copies
share one new StudyInstanceUID. A "fresh copy" (k = 1) is the same study under new UIDs, so a
node that skips re-sent series analyses it again.

Generated studies go to a cache folder outside the repository (``HIPPO_BENCH_CACHE``, default
``$TMPDIR/hippo-bench-cache``), never into the repo or into ``../shared/data``.

    python -m benchmarks.study_factory --factor 16 --out /tmp/study16
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Iterable
from copy import deepcopy
from pathlib import Path

import pydicom
from pydicom.uid import generate_uid

REPO = Path(__file__).resolve().parent.parent
DATA = REPO.parent / "shared" / "data" / "TestVolumes"
MANIFEST = "manifest.json"
#: bump when the generated layout changes, so cached studies are regenerated
LAYOUT_VERSION = 1


def as_new_study(datasets: Iterable[pydicom.Dataset], **attributes: str) -> list[pydicom.Dataset]:
    """Copies of ``datasets`` as one new study and series (new Study / Series / SOP Instance
    UIDs), with ``attributes`` set on every copy -- e.g. ``StudyDate`` for a follow-up
    examination or ``PatientID`` for another patient. The originals are not modified."""
    study_uid, series_uid = generate_uid(), generate_uid()
    copies = []
    for ds in datasets:
        twin = deepcopy(ds)
        twin.StudyInstanceUID = study_uid
        twin.SeriesInstanceUID = series_uid
        twin.SOPInstanceUID = generate_uid()
        if hasattr(twin, "file_meta"):
            twin.file_meta.MediaStorageSOPInstanceUID = twin.SOPInstanceUID
        for keyword, value in attributes.items():
            setattr(twin, keyword, value)
        copies.append(twin)
    return copies


def cache_root() -> Path:
    root = os.environ.get("HIPPO_BENCH_CACHE") or os.path.join(
        tempfile.gettempdir(), "hippo-bench-cache"
    )
    path = Path(root).resolve()
    if path.is_relative_to(REPO) or path.is_relative_to(DATA.parent):
        raise SystemExit(f"refusing to generate studies inside {REPO} or the shared data: {path}")
    path.mkdir(parents=True, exist_ok=True)
    return path


def source_study(name: str = "Study1") -> Path:
    path = DATA / name
    if not path.is_dir():
        raise SystemExit(f"test study not found: {path} (expected ../shared/data/TestVolumes)")
    return path


def list_series(study: Path) -> dict[str, list[Path]]:
    """Files of ``study`` grouped by their sub-folder (one folder per series in TestVolumes)."""
    groups: dict[str, list[Path]] = {}
    for file in sorted(study.rglob("*.dcm")):
        groups.setdefault(str(file.parent.relative_to(study)), []).append(file)
    return groups


def study_stats(folder: Path) -> dict:
    files = [p for p in folder.rglob("*.dcm")]
    return {"instances": len(files), "bytes": sum(p.stat().st_size for p in files)}


def _uid(*parts: object) -> str:
    return generate_uid(entropy_srcs=[str(p) for p in parts])


def make_study(
    src: Path,
    dst: Path,
    factor: int = 1,
    tag: str = "bench",
    series_filter: Iterable[str] | None = None,
) -> dict:
    """Write ``src`` with every series duplicated ``factor`` times under new UIDs to ``dst``.

    UIDs are derived from ``tag`` (same tag, same UIDs: reproducible caches; new tag, new
    study). ``series_filter``: keep only series whose SeriesDescription is in it (e.g.
    ``["HippoCrop"]`` for a tiny study). Returns the manifest (also written to dst).
    """
    if dst.exists():
        shutil.rmtree(dst)
    dst.mkdir(parents=True)
    keep = set(series_filter) if series_filter else None
    study_uid = _uid("study", tag, src.name)
    hippo_series: list[str] = []
    n_files = 0
    n_bytes = 0
    for copy in range(factor):
        for folder, files in list_series(src).items():
            series_uid = None
            out_dir = dst / f"{copy:02d}_{Path(folder).name}"
            for file in files:
                ds = pydicom.dcmread(file)
                if keep is not None and str(ds.get("SeriesDescription", "")) not in keep:
                    break
                if series_uid is None:
                    series_uid = _uid("series", tag, copy, ds.SeriesInstanceUID)
                    out_dir.mkdir()
                    if str(ds.get("SeriesDescription", "")).lower() == "hippocrop":
                        hippo_series.append(series_uid)
                sop_uid = _uid("sop", tag, copy, ds.SOPInstanceUID)
                ds.StudyInstanceUID = study_uid
                ds.SeriesInstanceUID = series_uid
                ds.SOPInstanceUID = sop_uid
                ds.file_meta.MediaStorageSOPInstanceUID = sop_uid
                if "SeriesNumber" in ds and ds.SeriesNumber is not None:
                    ds.SeriesNumber = int(ds.SeriesNumber) + 1000 * copy
                out = out_dir / file.name
                ds.save_as(out, enforce_file_format=True)
                n_files += 1
                n_bytes += out.stat().st_size
    manifest = {
        "layout_version": LAYOUT_VERSION,
        "source": src.name,
        "factor": factor,
        "tag": tag,
        "series_filter": sorted(keep) if keep else None,
        "study_instance_uid": study_uid,
        "hippocrop_series": hippo_series,
        "instances": n_files,
        "bytes": n_bytes,
    }
    (dst / MANIFEST).write_text(json.dumps(manifest, indent=1))
    return manifest


def cached_study(
    factor: int = 1,
    source: str = "Study1",
    series_filter: Iterable[str] | None = None,
    tag: str = "cached",
) -> tuple[Path, dict]:
    """A generated study kept in the cache across runs (regenerated if parameters changed)."""
    keep = sorted(series_filter) if series_filter else None
    key = hashlib.sha1(json.dumps([LAYOUT_VERSION, source, factor, keep, tag]).encode()).hexdigest()
    name = f"{source}_x{factor}{'_' + '-'.join(keep) if keep else ''}_{key[:8]}"
    dst = cache_root() / name
    manifest_path = dst / MANIFEST
    if manifest_path.exists():
        manifest = json.loads(manifest_path.read_text())
        if manifest.get("layout_version") == LAYOUT_VERSION:
            return dst, manifest
    return dst, make_study(source_study(source), dst, factor, tag, keep)


def fresh_study(
    dst: Path, source: str = "Study1", tag: str | None = None, series_filter=None
) -> dict:
    """A copy of ``source`` under brand-new UIDs (a new study for the node)."""
    tag = tag or f"fresh-{os.getpid()}-{os.urandom(6).hex()}"
    return make_study(source_study(source), dst, 1, tag, series_filter)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--source", default="Study1")
    parser.add_argument("--factor", type=int, default=4)
    parser.add_argument("--out", type=Path, help="output folder (default: the cache)")
    parser.add_argument("--only", action="append", help="keep only this SeriesDescription")
    args = parser.parse_args()
    if args.out:
        manifest = make_study(source_study(args.source), args.out, args.factor, "cli", args.only)
        print(json.dumps(manifest, indent=1))
    else:
        path, manifest = cached_study(args.factor, args.source, args.only)
        print(path)
        print(json.dumps(manifest, indent=1))


if __name__ == "__main__":
    main()
