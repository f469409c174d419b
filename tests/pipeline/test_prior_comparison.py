"""The comparison with the prior examination: which prior, which numbers, which flags."""

from __future__ import annotations

import datetime
import json

import pytest

from hippo_scp.pipeline.measurement import HippocampusVolumes
from hippo_scp.pipeline.prior_comparison import (
    PriorComparisonSettings,
    PriorLookup,
    PriorMeasurement,
    compare_with_prior,
    parse_dicom_date,
    prior_comparison_flags,
    select_prior,
)

TODAY = datetime.date(2026, 3, 1)
CURRENT = HippocampusVolumes(anterior_voxels=1800, posterior_voxels=1400, voxel_volume_mm3=1.0)


def prior(
    uid: str, date: datetime.date | None, total: float = 3300.0, **kwargs
) -> PriorMeasurement:
    defaults = {"model_version": "m1", "content_datetime": "20250101120000"}
    defaults.update(kwargs)
    return PriorMeasurement(uid, date, total * 0.55, total * 0.45, total, **defaults)


def compare(lookup: PriorLookup | None, *, date=TODAY, model="m1"):
    return compare_with_prior(
        CURRENT,
        current_study_uid="1.2.current",
        current_date=date,
        current_model_version=model,
        lookup=lookup,
    )


def test_parse_dicom_date():
    assert parse_dicom_date("20250301") == datetime.date(2025, 3, 1)
    for bad in (None, "", "2025-03-01", "20251301", "2025030", b"x"):
        assert parse_dicom_date(bad) is None


def test_the_most_recent_earlier_study_is_chosen_never_the_current_or_a_later_one():
    priors = [
        prior("1.2.old", datetime.date(2023, 3, 1)),
        prior("1.2.recent", datetime.date(2025, 3, 1)),
        prior("1.2.current", datetime.date(2026, 3, 1)),  # this study's own earlier result
        prior("1.2.later", datetime.date(2026, 9, 1)),  # an old study re-sent after a newer one
        prior("1.2.undated", None),
    ]
    chosen = select_prior(priors, current_study_uid="1.2.current", current_date=TODAY)
    assert chosen is not None and chosen.study_instance_uid == "1.2.recent"
    # without a date for the current study nothing is "earlier"
    assert select_prior(priors, current_study_uid="1.2.current", current_date=None) is None


def test_the_newest_sr_of_the_chosen_study_wins():
    day = datetime.date(2025, 3, 1)
    older = prior("1.2.p", day, 3000.0, content_datetime="20250301100000")
    newer = prior("1.2.p", day, 3100.0, content_datetime="20250302090000")
    chosen = select_prior([newer, older], current_study_uid="x", current_date=TODAY)
    assert chosen == newer


def test_changes_interval_and_yearly_rate():
    comparison = compare(PriorLookup("found", (prior("1.2.p", datetime.date(2025, 3, 1)),)))
    assert comparison is not None
    assert comparison.interval_days == 365
    anterior, posterior, total = comparison.changes
    assert total.prior_mm3 == 3300.0 and total.current_mm3 == 3200.0
    assert total.change_pct == pytest.approx(-100 / 3300 * 100)
    assert anterior.change_pct == pytest.approx((1800 - 1815) / 1815 * 100)
    assert posterior.change_pct == pytest.approx((1400 - 1485) / 1485 * 100)
    assert comparison.annual_total_change_pct == pytest.approx(total.change_pct / (365 / 365.25))
    assert comparison.same_model and comparison.prior_count == 1


def test_no_yearly_rate_over_a_short_interval():
    lookup = PriorLookup("found", (prior("1.2.p", TODAY - datetime.timedelta(days=90)),))
    comparison = compare(lookup)
    assert comparison is not None and comparison.interval_days == 90
    assert comparison.total.change_pct is not None
    assert comparison.annual_total_change_pct is None


def test_a_prior_of_another_model_version_is_compared_but_marked():
    comparison = compare(
        PriorLookup("found", (prior("1.2.p", datetime.date(2025, 3, 1), model_version="m0"),))
    )
    assert comparison is not None and not comparison.same_model
    unknown = compare(
        PriorLookup("found", (prior("1.2.p", datetime.date(2025, 3, 1), model_version=""),))
    )
    assert unknown is not None and not unknown.same_model


def test_nothing_to_compare():
    assert compare(None) is None
    assert compare(PriorLookup("none", reason="nothing")) is None
    assert compare(PriorLookup("failed", reason="PACS down")) is None
    only_later = PriorLookup("found", (prior("1.2.later", datetime.date(2027, 1, 1)),))
    assert compare(only_later) is None


def test_prior_count_counts_earlier_studies_not_srs():
    day = datetime.date(2025, 3, 1)
    lookup = PriorLookup(
        "found",
        (
            prior("1.2.a", day, content_datetime="1"),
            prior("1.2.a", day, content_datetime="2"),
            prior("1.2.b", datetime.date(2024, 3, 1)),
            prior("1.2.later", datetime.date(2027, 1, 1)),
        ),
    )
    comparison = compare(lookup)
    assert comparison is not None and comparison.prior_count == 2
    # a source that read only the latest study says how many it saw
    latest_only = PriorLookup("found", lookup.priors[:1], studies_with_results=3)
    assert compare(latest_only).prior_count == 3


def test_an_implausible_change_raises_a_flag():
    small = compare(PriorLookup("found", (prior("1.2.p", datetime.date(2025, 3, 1), 3300.0),)))
    assert prior_comparison_flags(small) == []
    large = compare(PriorLookup("found", (prior("1.2.p", datetime.date(2025, 3, 1), 4400.0),)))
    flags = prior_comparison_flags(large)
    assert len(flags) == 1 and "-27 %" in flags[0] and "same hippocampus" in flags[0]
    assert prior_comparison_flags(large, PriorComparisonSettings(30.0)) == []
    assert prior_comparison_flags(None) == []


def test_json_has_numbers_but_no_dates_or_uids():
    comparison = compare(PriorLookup("found", (prior("1.2.p", datetime.date(2025, 3, 1)),)))
    assert comparison is not None
    text = json.dumps(comparison.to_json_dict())
    assert "2025" not in text and "1.2.p" not in text
    data = json.loads(text)
    assert data["interval_days"] == 365
    assert data["changes"]["total"]["prior_mm3"] == 3300.0
    assert data["changes"]["total"]["change_pct"] == pytest.approx(-3.03, abs=0.01)


def test_invalid_values_are_refused_early():
    with pytest.raises(ValueError, match="total_mm3"):
        PriorMeasurement("1.2.p", TODAY, 1.0, 1.0, float("nan"))
    with pytest.raises(ValueError, match="anterior_mm3"):
        PriorMeasurement("1.2.p", TODAY, -1.0, 1.0, 1.0)
    with pytest.raises(ValueError, match="found"):
        PriorLookup("found")
    with pytest.raises(ValueError, match="found"):
        PriorLookup("none", (prior("1.2.p", TODAY),))
