"""The model card's cross-validation numbers are the committed per-case CSVs' means, not
hand-typed: a re-run that changes the CSVs fails here until the card is updated."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest

WEIGHTS = Path(__file__).resolve().parents[2] / "model_weights"
CARD = WEIGHTS / "MODEL_CARD.md"


def _column(path: Path, name: str) -> np.ndarray:
    with open(path) as f:
        return np.array([float(row[name]) for row in csv.DictReader(f)])


@pytest.mark.parametrize("seed", [0, 1])
def test_cross_validation_table_matches_the_per_case_csv(seed: int) -> None:
    path = WEIGHTS / f"cross_validation_seed{seed}.csv"
    with open(path) as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 208 and len({r["case_id"] for r in rows}) == 208  # every case once
    assert len({r["run"] for r in rows}) == 10
    line = next(
        line for line in CARD.read_text().splitlines() if line.startswith(f"| seed {seed} |")
    )
    anterior = _column(path, "dice_anterior").mean()
    posterior = _column(path, "dice_posterior").mean()
    total = _column(path, "dice_total").mean()
    volume = np.abs(_column(path, "volume_error_total_pct")).mean()
    for value in (f"{anterior:.4f}", f"{posterior:.4f}", f"{total:.4f}", f"{volume:.2f} %"):
        assert value in line, (value, line)
