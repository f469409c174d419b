"""The documented split and its cross-validation folds (hippo-scp train --fold K)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from hippo_scp.model.dataset import Split, fold_count, list_case_ids, make_split

SHIPPED_SPLIT = Path(__file__).resolve().parents[2] / "model_weights" / "split.json"


def test_fold_zero_is_the_split_the_shipped_model_was_validated_on(data_dir: Path) -> None:
    shipped = Split.load(SHIPPED_SPLIT)
    fold0 = make_split(list_case_ids(data_dir), fold=0)
    assert fold0.validation == shipped.validation
    assert fold0.train == shipped.train
    assert shipped.fold == 0  # written before folds existed: read as the documented split


def test_folds_hold_out_every_case_exactly_once(data_dir: Path) -> None:
    ids = list_case_ids(data_dir)
    folds = fold_count(len(ids))
    assert folds == 10  # 208 cases, validation blocks of round(20.8) = 21
    held_out: list[str] = []
    for k in range(folds):
        split = make_split(ids, fold=k)
        assert not set(split.train) & set(split.validation)
        assert sorted(split.train + split.validation) == ids
        held_out += split.validation
    assert sorted(held_out) == ids
    assert [len(make_split(ids, fold=k).validation) for k in (0, 8, 9)] == [21, 21, 19]


def test_a_fold_beyond_the_data_is_refused_with_the_valid_range(data_dir: Path) -> None:
    with pytest.raises(ValueError, match="folds 0-9"):
        make_split(list_case_ids(data_dir), fold=10)


def test_split_file_records_its_fold(tmp_path: Path, data_dir: Path) -> None:
    split = make_split(list_case_ids(data_dir), fold=3)
    split.save(tmp_path / "split.json")
    assert json.loads((tmp_path / "split.json").read_text())["fold"] == 3
    assert Split.load(tmp_path / "split.json") == split
