"""Loading the MSD Task04 hippocampus pairs and the fixed-seed train/validation split."""

from __future__ import annotations

import json
import math
import os
import random
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np

#: Data folder relative to the project root (``<repo>/../shared/data/hippocampus``).
DEFAULT_DATA_DIR = Path("../shared/data/hippocampus")
#: Seed of the documented split; changing it changes which cases are validation.
SPLIT_SEED = 20240404

#: Array axis along which the reference labels split anterior (1) from posterior (2): in all
#: 208 labelled cases the split is a plane across this axis (exact in 157, at most 2.4 % of the
#: voxels off in the rest) with the head at the higher indices.
AP_AXIS = 1

_CASE_RE = re.compile(r"^(hippocampus_\d+)\.nii(\.gz)?$")


def default_data_dir() -> Path:
    """``$HIPPO_DATA_DIR`` if set, else ``../shared/data/hippocampus`` next to the repository."""
    env = os.environ.get("HIPPO_DATA_DIR")
    if env:
        p = Path(env)
        return p / "hippocampus" if (p / "hippocampus" / "imagesTr").is_dir() else p
    return (
        Path(__file__).resolve().parents[2] / ".." / "shared" / "data" / "hippocampus"
    ).resolve()


@dataclass(frozen=True)
class Case:
    """One image/label pair in the training-array orientation (nibabel ``get_fdata`` order)."""

    case_id: str
    image: np.ndarray  # (X, Y, Z) float32, raw intensities
    label: np.ndarray  # (X, Y, Z) uint8, 0/1/2
    spacing: tuple[float, float, float]


def list_case_ids(data_dir: Path) -> list[str]:
    """Case ids having both an image and a label, sorted."""
    images = Path(data_dir) / "imagesTr"
    labels = Path(data_dir) / "labelsTr"
    if not images.is_dir() or not labels.is_dir():
        raise FileNotFoundError(f"{data_dir} must contain imagesTr/ and labelsTr/")
    ids = []
    for p in sorted(images.iterdir()):
        m = _CASE_RE.match(p.name)
        if m and (labels / p.name).exists():
            ids.append(m.group(1))
    if not ids:
        raise FileNotFoundError(f"no hippocampus_NNN.nii.gz pairs in {data_dir}")
    return ids


def _find(folder: Path, case_id: str) -> Path:
    for suffix in (".nii.gz", ".nii"):
        p = folder / f"{case_id}{suffix}"
        if p.exists():
            return p
    raise FileNotFoundError(f"{case_id} not in {folder}")


def load_case(data_dir: Path, case_id: str) -> Case:
    import nibabel as nib  # imported lazily: inference never needs it

    img = nib.load(str(_find(Path(data_dir) / "imagesTr", case_id)))
    lab = nib.load(str(_find(Path(data_dir) / "labelsTr", case_id)))
    image = np.asarray(img.get_fdata(dtype=np.float32), dtype=np.float32)
    label = np.asarray(np.rint(lab.get_fdata(dtype=np.float32)), dtype=np.uint8)
    if image.shape != label.shape:
        raise ValueError(f"{case_id}: image {image.shape} != label {label.shape}")
    spacing = tuple(float(z) for z in img.header.get_zooms()[:3])
    return Case(case_id, image, label, spacing)  # type: ignore[arg-type]


def load_cases(data_dir: Path, case_ids: list[str]) -> list[Case]:
    return [load_case(data_dir, c) for c in case_ids]


@dataclass(frozen=True)
class Split:
    """The documented train/validation partition (stored as JSON next to the weights).

    ``fold`` 0 is the documented split. Fold ``k`` holds out the ``k``-th block of the same
    shuffled order instead, so folds ``0 .. fold_count(n, f) - 1`` are a cross-validation
    whose every validation set has the documented size and whose training sets never see it.
    """

    seed: int
    val_fraction: float
    train: list[str]
    validation: list[str]
    fold: int = 0

    def save(self, path: Path) -> None:
        payload = {
            "seed": self.seed,
            "val_fraction": self.val_fraction,
            "fold": self.fold,
            "rule": "sorted case ids shuffled with random.Random(seed); validation is block "
            "'fold' (0 = the first) of round(n * val_fraction) ids in that order",
            "train": self.train,
            "validation": self.validation,
        }
        Path(path).write_text(json.dumps(payload, indent=2) + "\n")

    @classmethod
    def load(cls, path: Path) -> Split:
        d = json.loads(Path(path).read_text())
        return cls(
            int(d["seed"]),
            float(d["val_fraction"]),
            d["train"],
            d["validation"],
            int(d.get("fold", 0)),
        )


def _validation_size(n_cases: int, val_fraction: float) -> int:
    return max(1, int(round(n_cases * val_fraction))) if n_cases > 1 else 0


def fold_count(n_cases: int, val_fraction: float = 0.1) -> int:
    """How many disjoint validation blocks ``n_cases`` hold (the last one may be smaller)."""
    n_val = _validation_size(n_cases, val_fraction)
    return math.ceil(n_cases / n_val) if n_val else 1


def make_split(
    case_ids: list[str], seed: int = SPLIT_SEED, val_fraction: float = 0.1, fold: int = 0
) -> Split:
    """Shuffle the sorted ids with a fixed seed; block ``fold`` of ``round(n * f)`` ids in
    that order is validation (fold 0, the first block, is the documented split)."""
    ids = sorted(case_ids)
    random.Random(seed).shuffle(ids)
    n_val = _validation_size(len(ids), val_fraction)
    folds = fold_count(len(ids), val_fraction)
    if not 0 <= fold < folds:
        raise ValueError(
            f"fold {fold} does not exist: {len(ids)} cases with validation fraction "
            f"{val_fraction} give folds 0-{folds - 1}"
        )
    held_out = ids[fold * n_val : (fold + 1) * n_val]
    rest = ids[: fold * n_val] + ids[(fold + 1) * n_val :]
    return Split(seed, val_fraction, sorted(rest), sorted(held_out), fold)
