"""Comparison with the patient's earlier examination: how much the volumes changed.

Why: hippocampal volumetry is read longitudinally. A single volume says little about one
patient (normal volumes vary by ±15 % between people); the change since the last examination,
measured the same way, is what a reader following a patient with suspected dementia looks for.
The node finds the earlier results in the PACS (its own SRs, see
:mod:`hippo_scp.network.prior_query`), and this module turns them into the numbers the report
prints. It is pure computation: no network, no files.

The comparison is deliberately conservative:

* only an *earlier* examination is compared (a re-sent old study is not compared with a newer
  one), the most recent of them;
* the yearly rate is printed only over at least :data:`MIN_ANNUALISED_DAYS` (a rate from a few
  weeks multiplies the measurement error by the inverse of the interval);
* a prior measured with other weights is compared, but the report says so: a model change
  alone moves volumes by a few percent;
* a change beyond :attr:`PriorComparisonSettings.max_plausible_change_pct` raises a QC flag:
  that is more than atrophy does between two examinations, and the usual cause is that the two
  crops show different hippocampi (left vs right) or different protocols.
"""

from __future__ import annotations

import datetime
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

from hippo_scp.pipeline.measurement import HippocampusVolumes

#: Shortest interval over which a yearly rate of change is printed (half a year).
MIN_ANNUALISED_DAYS = 182
DAYS_PER_YEAR = 365.25

#: What a lookup found: ``found`` (one or more earlier results), ``none`` (the PACS answered,
#: nothing earlier), ``unavailable`` (cannot be asked: no patient ID), ``failed`` (the PACS did
#: not answer or refused; the report says the comparison was not possible).
LookupStatus = Literal["found", "none", "unavailable", "failed"]


@dataclass(frozen=True)
class PriorMeasurement:
    """The volumes of one earlier examination, as its hippo-scp SR states them."""

    study_instance_uid: str
    #: the examination's StudyDate (None when the prior study has none)
    study_date: datetime.date | None
    anterior_mm3: float
    posterior_mm3: float
    total_mm3: float
    #: the model version the SR records (SoftwareVersions "model ..."), "" when unknown
    model_version: str = ""
    #: the SR's ContentDate + ContentTime ("YYYYMMDDHHMMSS..."), to pick the newest SR of a study
    content_datetime: str = ""

    def __post_init__(self) -> None:
        for name in ("anterior_mm3", "posterior_mm3", "total_mm3"):
            value = getattr(self, name)
            if not value >= 0:  # also rejects NaN
                raise ValueError(f"{name} must be a non-negative volume, got {value!r}")


@dataclass(frozen=True)
class PriorLookup:
    """Outcome of asking the PACS for earlier results of the patient."""

    status: LookupStatus
    priors: tuple[PriorMeasurement, ...] = ()
    #: one line for the report and the log when not ``found``; never patient data
    reason: str = ""
    #: earlier studies holding results (the source may read only the latest of them)
    studies_with_results: int = 0

    def __post_init__(self) -> None:
        if (self.status == "found") != bool(self.priors):
            raise ValueError("status 'found' needs priors, and only 'found' may carry them")


@dataclass(frozen=True)
class PriorComparisonSettings:
    """Knobs of the comparison."""

    #: |total change| (percent) above which the report raises a QC flag
    max_plausible_change_pct: float = 20.0


@dataclass(frozen=True)
class VolumeChange:
    """One structure: prior and current volume and the relative change."""

    structure: str  # "Anterior" | "Posterior" | "Total"
    prior_mm3: float
    current_mm3: float

    @property
    def change_pct(self) -> float | None:
        """Percent change from prior to current; None when the prior volume is zero."""
        if self.prior_mm3 <= 0:
            return None
        return (self.current_mm3 - self.prior_mm3) / self.prior_mm3 * 100.0


@dataclass(frozen=True)
class PriorComparison:
    """The current measurement against the most recent earlier one."""

    prior: PriorMeasurement
    #: days from the prior examination to this one (None when a StudyDate is missing)
    interval_days: int | None
    changes: tuple[VolumeChange, VolumeChange, VolumeChange]
    #: the prior was measured with the same model version as now
    same_model: bool
    #: how many earlier examinations with results the PACS holds
    prior_count: int = 1

    @property
    def total(self) -> VolumeChange:
        return self.changes[2]

    @property
    def annual_total_change_pct(self) -> float | None:
        """Total change per year, only over an interval of at least half a year."""
        change = self.total.change_pct
        if change is None or self.interval_days is None:
            return None
        if self.interval_days < MIN_ANNUALISED_DAYS:
            return None
        return change / (self.interval_days / DAYS_PER_YEAR)

    def to_json_dict(self) -> dict[str, Any]:
        """Numbers only (interval, volumes, changes): no dates, no identifiers."""
        return {
            "interval_days": self.interval_days,
            "same_model": self.same_model,
            "prior_model_version": self.prior.model_version,
            "prior_count": self.prior_count,
            "changes": {
                c.structure.lower(): {
                    "prior_mm3": round(c.prior_mm3, 1),
                    "current_mm3": round(c.current_mm3, 1),
                    "change_pct": None if c.change_pct is None else round(c.change_pct, 2),
                }
                for c in self.changes
            },
            "annual_total_change_pct": (
                None
                if self.annual_total_change_pct is None
                else round(self.annual_total_change_pct, 2)
            ),
        }


def parse_dicom_date(value: object) -> datetime.date | None:
    """A DICOM DA (``YYYYMMDD``) as a date; None when absent or malformed."""
    text = str(value or "").strip()
    if len(text) != 8 or not text.isdigit():
        return None
    try:
        return datetime.date(int(text[:4]), int(text[4:6]), int(text[6:]))
    except ValueError:
        return None


def _earlier_results(
    priors: Sequence[PriorMeasurement],
    *,
    current_study_uid: str,
    current_date: datetime.date | None,
) -> list[PriorMeasurement]:
    """Results of examinations before this one: a different study with a StudyDate on or
    before the current one; without a current StudyDate nothing can be called earlier."""
    if current_date is None:
        return []
    return [
        p
        for p in priors
        if p.study_instance_uid != current_study_uid
        and p.study_date is not None
        and p.study_date <= current_date
    ]


def _most_recent(earlier: Sequence[PriorMeasurement]) -> PriorMeasurement:
    """The latest examination's newest result (``earlier`` is not empty)."""
    return max(earlier, key=lambda p: (p.study_date, p.content_datetime))


def select_prior(
    priors: Sequence[PriorMeasurement],
    *,
    current_study_uid: str,
    current_date: datetime.date | None,
) -> PriorMeasurement | None:
    """The most recent earlier examination's newest result, or None (see
    :func:`_earlier_results` for what counts as earlier)."""
    earlier = _earlier_results(
        priors, current_study_uid=current_study_uid, current_date=current_date
    )
    return _most_recent(earlier) if earlier else None


def compare_with_prior(
    current: HippocampusVolumes,
    *,
    current_study_uid: str,
    current_date: datetime.date | None,
    current_model_version: str,
    lookup: PriorLookup | None,
) -> PriorComparison | None:
    """Compare the current volumes with the most recent earlier result in ``lookup``."""
    if lookup is None or lookup.status != "found" or current_date is None:
        return None
    earlier = _earlier_results(
        lookup.priors, current_study_uid=current_study_uid, current_date=current_date
    )
    if not earlier:
        return None
    prior = _most_recent(earlier)
    assert prior.study_date is not None  # _earlier_results keeps dated results only
    return PriorComparison(
        prior=prior,
        interval_days=(current_date - prior.study_date).days,
        changes=(
            VolumeChange("Anterior", prior.anterior_mm3, current.anterior_mm3),
            VolumeChange("Posterior", prior.posterior_mm3, current.posterior_mm3),
            VolumeChange("Total", prior.total_mm3, current.total_mm3),
        ),
        same_model=bool(prior.model_version) and prior.model_version == current_model_version,
        prior_count=max(len({p.study_instance_uid for p in earlier}), lookup.studies_with_results),
    )


def prior_comparison_flags(
    comparison: PriorComparison | None, settings: PriorComparisonSettings | None = None
) -> list[str]:
    """QC flags from the comparison (empty: nothing to flag)."""
    if comparison is None:
        return []
    limit = (settings or PriorComparisonSettings()).max_plausible_change_pct
    change = comparison.total.change_pct
    if change is not None and abs(change) > limit:
        return [
            f"Total volume changed {change:+.0f} % since the prior: check both crops show "
            "the same hippocampus"
        ]
    return []


__all__ = [
    "MIN_ANNUALISED_DAYS",
    "LookupStatus",
    "PriorComparison",
    "PriorComparisonSettings",
    "PriorLookup",
    "PriorMeasurement",
    "VolumeChange",
    "compare_with_prior",
    "parse_dicom_date",
    "prior_comparison_flags",
    "select_prior",
]
