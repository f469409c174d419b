"""docs/examples/ is what the product produces: same volumes, same weights, same SOP classes.

When a test here fails after a change of the model weights or of the output builders, run
``.venv/bin/python docs/generate_examples.py`` and commit docs/examples/.
"""

from __future__ import annotations

import json
from pathlib import Path

import generate_conformance
import generate_examples as gen
import numpy as np
import pytest
from pydicom import dcmread

from hippo_scp.outputs.identity import ANTERIOR_STRUCTURE, POSTERIOR_STRUCTURE
from hippo_scp.outputs.sr import read_volumes

EXAMPLES = gen.EXAMPLES_DIR
REGENERATE = "run .venv/bin/python docs/generate_examples.py and commit docs/examples/"
FILES = ("sr.dcm", "seg.dcm", "report.dcm", "report.png", "sr_dsrdump.txt", gen.STUDIES_JSON)
#: Relative volume tolerance between the committed and a fresh analysis: inference is
#: deterministic on one machine, but float reductions may flip a boundary voxel on another CPU.
VOLUME_RTOL = 0.005


@pytest.fixture(scope="module")
def weights() -> Path:
    from hippo_scp.model.inference import default_weights_path

    path = default_weights_path()  # $HIPPO_WEIGHTS, else the shipped model_weights/ file
    if not path.is_file():
        pytest.skip(f"no model weights at {path} (the examples are made with the shipped model)")
    return path


@pytest.fixture(scope="module")
def examples(weights: Path) -> Path:
    missing = [name for name in FILES if not (EXAMPLES / name).is_file()]
    assert not missing, f"docs/examples/ lacks {missing}: {REGENERATE}"
    return EXAMPLES


def _sidecar_version(weights: Path) -> str:
    from hippo_scp.model.weights import model_version, sidecar_path

    return model_version(json.loads(sidecar_path(weights).read_text())["sha256"])


def test_examples_were_made_with_the_shipped_weights(examples: Path, weights: Path) -> None:
    expected = _sidecar_version(weights)
    for name in ("sr.dcm", "seg.dcm", "report.dcm"):
        made_with = gen.model_version_of(dcmread(examples / name, stop_before_pixels=True))
        assert made_with == expected, (
            f"{name} was made by {made_with}, not {expected}: {REGENERATE}"
        )
    studies = json.loads((examples / gen.STUDIES_JSON).read_text())
    assert studies["model_version"] == expected, REGENERATE


def test_examples_have_the_sop_classes_and_syntaxes_the_conformance_statement_lists(
    examples: Path,
) -> None:
    files = {
        "Segmentation": "seg.dcm",
        "Volumes SR (TID 1500)": "sr.dcm",
        "Report image": "report.dcm",
    }
    for name, sop_class, syntax, series_number, description in generate_conformance.RESULT_OBJECTS:
        ds = dcmread(examples / files[name], stop_before_pixels=True)
        assert ds.SOPClassUID == sop_class
        assert ds.file_meta.TransferSyntaxUID == syntax
        assert ds.SeriesNumber == series_number
        assert ds.SeriesDescription == description


def test_sr_volumes_rederive_from_the_seg_and_match_the_dump(examples: Path) -> None:
    sr = dcmread(examples / "sr.dcm")
    volumes = read_volumes(sr)
    seg = dcmread(examples / "seg.dcm")
    measures = seg.SharedFunctionalGroupsSequence[0].PixelMeasuresSequence[0]
    voxel_mm3 = float(np.prod([float(v) for v in measures.PixelSpacing])) * float(
        measures.SliceThickness
    )
    frames = seg.pixel_array.reshape(-1, seg.Rows, seg.Columns)
    counts: dict[int, int] = {}
    for frame, item in zip(frames, seg.PerFrameFunctionalGroupsSequence, strict=True):
        number = int(item.SegmentIdentificationSequence[0].ReferencedSegmentNumber)
        counts[number] = counts.get(number, 0) + int(frame.sum())
    anterior = counts.get(ANTERIOR_STRUCTURE.label, 0) * voxel_mm3
    posterior = counts.get(POSTERIOR_STRUCTURE.label, 0) * voxel_mm3
    assert volumes[ANTERIOR_STRUCTURE.name] == pytest.approx(anterior)
    assert volumes[POSTERIOR_STRUCTURE.name] == pytest.approx(posterior)
    assert volumes["Hippocampus"] == pytest.approx(anterior + posterior)
    dump = (examples / "sr_dsrdump.txt").read_text()
    for value in volumes.values():
        assert f'"Volume")="{value}"' in dump or f'"Volume")="{value:g}"' in dump, (
            f"sr_dsrdump.txt does not show volume {value}: {REGENERATE}"
        )


def test_fresh_analysis_of_study1_reproduces_the_committed_volumes(
    examples: Path, weights: Path, data_dir: Path
) -> None:
    _, analyzer = gen.load_analyzer(weights, threads=2)
    result = gen.analyse_study(analyzer, data_dir / "TestVolumes" / gen.EXAMPLE_STUDY)
    committed = read_volumes(dcmread(examples / "sr.dcm"))
    fresh = read_volumes(result.sr)
    assert committed.keys() == fresh.keys()
    for name, value in fresh.items():
        assert committed[name] == pytest.approx(value, rel=VOLUME_RTOL, abs=1.0), (
            f"{name}: committed {committed[name]} mm³, fresh {value} mm³: {REGENERATE}"
        )
    studies = json.loads((examples / gen.STUDIES_JSON).read_text())["studies"]
    assert studies[gen.EXAMPLE_STUDY]["volumes_mm3"]["total_mm3"] == pytest.approx(
        result.volumes.total_mm3, rel=VOLUME_RTOL, abs=1.0
    )
