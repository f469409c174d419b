"""Decide which received series the node analyses.

A PACS forwards whole studies; only one series in each (by default the ``HippoCrop`` MR crop)
is what the model was trained on. The rules live in ``ae_config.yaml`` under ``selection``::

    selection:
      min_slices: 8
      rules:                       # first rule whose conditions ALL hold wins
        - name: HippoCrop MR
          action: analyze          # or: skip
          conditions:
            - attribute: SeriesDescription
              regex: "(?i)^hippocrop$"
            - attribute: Modality
              equals: MR

Each condition names a DICOM keyword and uses exactly one matcher: ``equals`` (exact; numbers
compare numerically), ``iequals`` (case-insensitive), ``regex`` (:func:`re.search`; inline flags
such as ``(?i)`` allowed), ``range: [min, max]`` (numeric, inclusive, either bound may be
null) or ``one_of`` (exact, any of a list); ``negate: true`` inverts it. For multi-valued
attributes (e.g. ImageType) a matcher holds if any single value -- or the whole value joined with
``\\`` -- matches. An absent or empty attribute matches nothing (so a negated condition holds).

Whatever the rules say, the node never analyses what it cannot measure or what it produced
itself: its own SR / SEG / Secondary Capture results come back when a PACS routes a study
onward, and analysing them would loop forever. Every decision is logged at DEBUG with its reason
(and never with patient identifiers).

This module must not import :mod:`hippo_scp.config` -- the config imports it.
"""

from __future__ import annotations

import logging
import math
import re
from dataclasses import dataclass
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator
from pydicom.datadict import dictionary_VR, tag_for_keyword
from pydicom.dataset import Dataset
from pydicom.multival import MultiValue
from pydicom.sequence import Sequence as DicomSequence
from pydicom.uid import (
    CTImageStorage,
    EnhancedCTImageStorage,
    EnhancedMRImageStorage,
    EnhancedPETImageStorage,
    LegacyConvertedEnhancedCTImageStorage,
    LegacyConvertedEnhancedMRImageStorage,
    LegacyConvertedEnhancedPETImageStorage,
    MRImageStorage,
    PositronEmissionTomographyImageStorage,
)

from hippo_scp import MANUFACTURER, SOFTWARE_NAME
from hippo_scp.assembly.headers import number_of_frames

logger = logging.getLogger(__name__)

#: Cross-sectional image storage classes that ``series_to_volume`` can turn into a volume.
#: Everything else -- SR, SEG, Secondary Capture (Study2's ``dT1``), presentation states --
#: has no plane geometry worth measuring and is never selected.
ANALYSABLE_SOP_CLASSES: frozenset[str] = frozenset(
    {
        MRImageStorage,
        EnhancedMRImageStorage,
        LegacyConvertedEnhancedMRImageStorage,
        CTImageStorage,
        EnhancedCTImageStorage,
        LegacyConvertedEnhancedCTImageStorage,
        PositronEmissionTomographyImageStorage,
        EnhancedPETImageStorage,
        LegacyConvertedEnhancedPETImageStorage,
    }
)

#: Attributes whose values must never appear in a log line even when a rule tests them.
_IDENTIFYING_KEYWORDS = frozenset(
    {
        "AccessionNumber",
        "InstitutionName",
        "InstitutionAddress",
        "OperatorsName",
        "PerformingPhysicianName",
        "ReferringPhysicianName",
        "RequestingPhysician",
        "StudyID",
    }
)
_MATCHERS = ("equals", "iequals", "regex", "range", "one_of")

Scalar = str | int | float


class Condition(BaseModel):
    """One test on one attribute of the series' first instance."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    attribute: str = Field(description="DICOM keyword, e.g. SeriesDescription")
    equals: Scalar | None = None
    iequals: str | None = None
    regex: str | None = None
    range: tuple[float | None, float | None] | None = None
    one_of: list[Scalar] | None = None
    negate: bool = False

    @field_validator("attribute")
    @classmethod
    def _known_keyword(cls, value: str) -> str:
        tag = tag_for_keyword(value)
        if tag is None:
            raise ValueError(f"{value!r} is not a DICOM keyword (pydicom data dictionary)")
        if dictionary_VR(tag) == "SQ":
            raise ValueError(f"{value!r} is a sequence; conditions test plain attributes only")
        return value

    @field_validator("regex")
    @classmethod
    def _compiles(cls, value: str | None) -> str | None:
        if value is not None:
            try:
                re.compile(value)
            except re.error as exc:
                raise ValueError(f"invalid regular expression {value!r}: {exc}") from exc
        return value

    @model_validator(mode="after")
    def _exactly_one_matcher(self) -> Condition:
        used = [name for name in _MATCHERS if getattr(self, name) is not None]
        if len(used) != 1:
            raise ValueError(
                f"use exactly one of {', '.join(_MATCHERS)} (got {', '.join(used) or 'none'})"
            )
        if self.range is not None:
            low, high = self.range
            if low is None and high is None:
                raise ValueError("range needs at least one bound")
            if low is not None and high is not None and low > high:
                raise ValueError(f"range minimum {low} exceeds maximum {high}")
        if self.one_of is not None and not self.one_of:
            raise ValueError("one_of needs at least one value")
        return self

    def matches(self, ds: Dataset) -> bool:
        """Whether the condition (including ``negate``) holds for ``ds``."""
        return self._raw_match(ds) != self.negate

    def _raw_match(self, ds: Dataset) -> bool:
        candidates = _candidates(ds.get(self.attribute))
        if not candidates:
            return False
        if self.equals is not None:
            return any(_same(c, self.equals) for c in candidates)
        if self.iequals is not None:
            wanted = self.iequals.casefold()
            return any(c.casefold() == wanted for c in candidates)
        if self.regex is not None:
            pattern = re.compile(self.regex)
            return any(pattern.search(c) for c in candidates)
        if self.range is not None:
            low, high = self.range
            numbers = [n for n in map(_number, candidates) if n is not None]
            return any((low is None or n >= low) and (high is None or n <= high) for n in numbers)
        assert self.one_of is not None
        return any(_same(c, option) for c in candidates for option in self.one_of)

    def describe(self) -> str:
        """Human-readable form of the test, for decision reasons."""
        name = next(n for n in _MATCHERS if getattr(self, n) is not None)
        value = getattr(self, name)
        shown = list(value) if isinstance(value, tuple) else value
        return f"{'NOT ' if self.negate else ''}{self.attribute} {name} {shown!r}"


class SelectionRule(BaseModel):
    """Conditions that must all hold; the first rule that matches decides.

    An empty ``conditions`` list matches every series -- useful as a final catch-all ``skip``
    or ``analyze``. ``min_slices`` overrides the section-wide minimum for this rule.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = Field(min_length=1)
    action: Literal["analyze", "skip"] = "analyze"
    conditions: list[Condition] = Field(default_factory=list)
    min_slices: int | None = Field(default=None, ge=1)


def _default_rules() -> list[SelectionRule]:
    return [
        SelectionRule(
            name="HippoCrop MR",
            conditions=[
                Condition(attribute="SeriesDescription", regex="(?i)^hippocrop$"),
                Condition(attribute="Modality", equals="MR"),
            ],
        )
    ]


class SelectionConfig(BaseModel):
    """The ``selection`` section of ``ae_config.yaml``."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    rules: list[SelectionRule] = Field(default_factory=_default_rules)
    min_slices: int = Field(default=8, ge=1)


@dataclass(frozen=True)
class SelectionDecision:
    """Outcome for one series: ``rule`` is the rule that decided (None if none matched)."""

    selected: bool
    rule: str | None
    reason: str


def is_own_output(ds: Dataset) -> bool:
    """Whether ``ds`` is an object this node created (and a PACS has routed back to it)."""
    if str(ds.get("Manufacturer", "") or "").strip() == MANUFACTURER:
        return True
    versions = ds.get("SoftwareVersions")
    if versions in (None, ""):
        return False
    values = versions if isinstance(versions, MultiValue | list | tuple) else [versions]
    return any(str(v).strip().startswith(SOFTWARE_NAME) for v in values)


class SeriesSelector:
    """Applies a :class:`SelectionConfig` to series as they arrive."""

    def __init__(self, config: SelectionConfig) -> None:
        self._config = config

    @property
    def config(self) -> SelectionConfig:
        return self._config

    def decide(
        self, first_instance: Dataset, instance_count: int | None = None
    ) -> SelectionDecision:
        """Decide on a series from its first instance and, once known, its instance count.

        With ``instance_count=None`` (series still arriving) only the attributes are judged and
        a matching series is provisionally selected; call again with the final count. For a
        multi-frame instance the slices counted are instances x NumberOfFrames.
        """
        decision = self._decide(first_instance, instance_count)
        logger.debug(
            "series %s: %s%s -- %s",
            first_instance.get("SeriesInstanceUID", "?"),
            "selected" if decision.selected else "not selected",
            f" by rule {decision.rule!r}" if decision.rule else "",
            decision.reason,
        )
        return decision

    def _decide(self, ds: Dataset, instance_count: int | None) -> SelectionDecision:
        if is_own_output(ds):
            return SelectionDecision(False, None, "produced by this node (hippo-scp output)")
        sop_class = str(ds.get("SOPClassUID", "") or "")
        if sop_class not in ANALYSABLE_SOP_CLASSES:
            name = getattr(ds.get("SOPClassUID"), "name", "") or sop_class or "absent"
            return SelectionDecision(False, None, f"SOP class {name} is not analysable")

        misses = []
        for rule in self._config.rules:
            failed = next((c for c in rule.conditions if not c.matches(ds)), None)
            if failed is not None:
                misses.append(f"{rule.name!r}: {failed.describe()} failed ({_shown(ds, failed)})")
                continue
            if rule.action == "skip":
                return SelectionDecision(False, rule.name, f"skip rule {rule.name!r} matched")
            return self._check_count(ds, rule, instance_count)
        if not self._config.rules:
            return SelectionDecision(False, None, "no selection rules configured")
        return SelectionDecision(False, None, "no rule matched: " + "; ".join(misses))

    def _check_count(
        self, ds: Dataset, rule: SelectionRule, instance_count: int | None
    ) -> SelectionDecision:
        minimum = rule.min_slices if rule.min_slices is not None else self._config.min_slices
        if instance_count is None:
            return SelectionDecision(
                True, rule.name, f"attributes match; slice count (>= {minimum}) not yet known"
            )
        slices = instance_count * number_of_frames(ds)
        if slices < minimum:
            return SelectionDecision(
                False, rule.name, f"rule matched but {slices} slice(s) < minimum {minimum}"
            )
        return SelectionDecision(True, rule.name, f"rule matched with {slices} slice(s)")


def _candidates(value: object) -> list[str]:
    """Strings a matcher tries: each single value and the whole value joined with ``\\``."""
    if value is None or isinstance(value, DicomSequence | Dataset | bytes):
        return []
    if isinstance(value, MultiValue | list | tuple):
        items = [str(v).strip() for v in value]
        items = [i for i in items if i]
        return items + (["\\".join(items)] if len(items) > 1 else [])
    text = str(value).strip()
    return [text] if text else []


def _number(text: str) -> float | None:
    try:
        number = float(text)
    except ValueError:
        return None
    return number if math.isfinite(number) else None


def _same(candidate: str, expected: Scalar) -> bool:
    """Exact comparison; numbers compare numerically so ``1`` equals DICOM's ``"1.0"``."""
    if isinstance(expected, bool) or not isinstance(expected, int | float):
        return candidate == str(expected)
    number = _number(candidate)
    return number is not None and math.isclose(number, float(expected), rel_tol=1e-9)


def _shown(ds: Dataset, condition: Condition) -> str:
    """The tested value for a log reason -- unless it could identify the patient."""
    keyword = condition.attribute
    tag = tag_for_keyword(keyword)
    if keyword not in ds or ds.get(keyword) in (None, ""):
        return "absent"
    if (tag is not None and tag >> 16 == 0x0010) or keyword in _IDENTIFYING_KEYWORDS:
        return "value withheld"
    value = ds.get(keyword)
    text = "\\".join(map(str, value)) if isinstance(value, MultiValue) else str(value)
    return f"value {text[:64]!r}"


#: ``regex`` conditions that spell one literal description: ``^Text$`` or ``(?i)^Text$``
_LITERAL_PATTERN = re.compile(r"^(?:\(\?i\))?\^([A-Za-z0-9 _\-]+)\$$")


def routed_series_descriptions(config: SelectionConfig) -> list[str] | None:
    """SeriesDescriptions a router may limit itself to without hiding any series these rules
    would analyse, or None when the rules do not allow such a list (route every image).

    Used for Orthanc's ``HippoScp.RouteSeriesDescriptions`` (``hippo-scp route-filter``),
    which compares trimmed descriptions case-insensitively: the list may let through more than
    the node analyses (it selects again), never less. Every ``analyze`` rule must therefore
    name its descriptions literally -- ``equals`` / ``iequals`` / ``one_of`` text, or a regex
    that is one anchored literal such as ``(?i)^hippocrop$`` -- in a condition that is not
    negated; ``skip`` rules only narrow what is analysed and do not matter.
    """
    descriptions: dict[str, str] = {}
    for rule in config.rules:
        if rule.action != "analyze":
            continue
        named: list[str] | None = None
        for condition in rule.conditions:
            if condition.attribute != "SeriesDescription" or condition.negate:
                continue
            literals = _description_literals(condition)
            if literals is not None:
                named = literals
                break
        if not named:
            return None
        for text in named:
            descriptions.setdefault(text.strip().casefold(), text.strip())
    return sorted(descriptions.values(), key=str.casefold) if descriptions else None


def _description_literals(condition: Condition) -> list[str] | None:
    if condition.iequals is not None:
        return [condition.iequals]
    if condition.equals is not None:
        return [str(condition.equals)]
    if condition.one_of is not None:
        return [str(value) for value in condition.one_of]
    if condition.regex is not None:
        literal = _LITERAL_PATTERN.match(condition.regex)
        return [literal.group(1)] if literal else None
    return None


__all__ = [
    "ANALYSABLE_SOP_CLASSES",
    "Condition",
    "SelectionConfig",
    "SelectionDecision",
    "SelectionRule",
    "SeriesSelector",
    "is_own_output",
    "routed_series_descriptions",
]
