"""Series selection: the real test studies, every matcher, rule order, and the own-output guard."""

from __future__ import annotations

import copy
import logging
from pathlib import Path

import pydicom
import pytest
from pydantic import ValidationError
from pydicom.dataset import Dataset
from pydicom.uid import (
    ComprehensiveSRStorage,
    LegacyConvertedEnhancedMRImageStorage,
    SecondaryCaptureImageStorage,
    SegmentationStorage,
)

from hippo_scp import MANUFACTURER, SOFTWARE_NAME
from hippo_scp.assembly.selection import (
    Condition,
    SelectionConfig,
    SelectionRule,
    SeriesSelector,
    is_own_output,
    routed_series_descriptions,
)
from tests.dicom_factory import TEST_VOLUMES_DIR, require_data, study_series_dirs


def first_header(folder: Path) -> Dataset:
    return pydicom.dcmread(next(iter(sorted(folder.glob("*.dcm")))), stop_before_pixels=True)


@pytest.fixture(scope="module")
def hippocrop() -> Dataset:
    """Header of Study1's HippoCrop series (real data)."""
    require_data()
    return first_header(TEST_VOLUMES_DIR / "Study1" / "13_HCropVolume")


def selector(*rules: SelectionRule, min_slices: int = 8) -> SeriesSelector:
    return SeriesSelector(SelectionConfig(rules=list(rules), min_slices=min_slices))


def rule(*conditions: Condition, name: str = "r", **kwargs: object) -> SelectionRule:
    return SelectionRule(name=name, conditions=list(conditions), **kwargs)


# --- the real studies ------------------------------------------------------------------------


@pytest.mark.parametrize("study", ["Study1", "Study2", "Study3"])
def test_exactly_the_hippocrop_series_is_selected(study: str) -> None:
    require_data()
    default = SeriesSelector(SelectionConfig())
    selected = []
    for name, folder in study_series_dirs(study).items():
        decision = default.decide(first_header(folder), len(list(folder.glob("*.dcm"))))
        if decision.selected:
            selected.append(name)
            assert decision.rule == "HippoCrop MR"
    assert len(selected) == 1 and selected[0].endswith("HCropVolume")


def test_secondary_capture_is_never_analysed_even_if_a_rule_matches() -> None:
    require_data()
    folder = study_series_dirs("Study2")["32500-dT1-49467"]
    header = first_header(folder)
    assert header.SOPClassUID == SecondaryCaptureImageStorage

    decision = selector(rule(Condition(attribute="SeriesDescription", equals="dT1"))).decide(
        header, 24
    )

    assert not decision.selected and "Secondary Capture" in decision.reason


def test_default_config_matches_the_documented_rule() -> None:
    config = SelectionConfig()
    assert config.min_slices == 8
    [default] = config.rules
    assert default.name == "HippoCrop MR" and default.action == "analyze"
    assert [c.model_dump(exclude_defaults=True) for c in default.conditions] == [
        {"attribute": "SeriesDescription", "regex": "(?i)^hippocrop$"},
        {"attribute": "Modality", "equals": "MR"},
    ]


@pytest.mark.parametrize(
    ("description", "selected"),
    [("HippoCrop", True), ("hippocrop", True), ("HIPPOCROP", True), ("HippoCrop 2", False)],
)
def test_default_rule_is_case_insensitive_and_anchored(
    hippocrop: Dataset, description: str, selected: bool
) -> None:
    ds = copy.deepcopy(hippocrop)
    ds.SeriesDescription = description
    assert SeriesSelector(SelectionConfig()).decide(ds, 32).selected is selected


# --- own outputs -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "attributes",
    [
        {"Manufacturer": MANUFACTURER},
        {"SoftwareVersions": f"{SOFTWARE_NAME} 0.1.0"},
        {"SoftwareVersions": ["other 1.0", f"{SOFTWARE_NAME} 0.1.0"]},
    ],
    ids=["manufacturer", "software", "software-multi"],
)
def test_own_outputs_are_never_selected(hippocrop: Dataset, attributes: dict) -> None:
    ds = copy.deepcopy(hippocrop)
    for keyword, value in attributes.items():
        setattr(ds, keyword, value)

    assert is_own_output(ds)
    decision = SeriesSelector(SelectionConfig()).decide(ds, 32)
    assert not decision.selected and "produced by this node" in decision.reason


def test_foreign_series_is_not_own_output(hippocrop: Dataset) -> None:
    assert not is_own_output(hippocrop)


@pytest.mark.parametrize(
    "sop_class", [ComprehensiveSRStorage, SegmentationStorage, SecondaryCaptureImageStorage]
)
def test_result_sop_classes_are_not_analysable(hippocrop: Dataset, sop_class: str) -> None:
    ds = copy.deepcopy(hippocrop)
    ds.SOPClassUID = sop_class

    decision = SeriesSelector(SelectionConfig()).decide(ds, 32)

    assert not decision.selected and "not analysable" in decision.reason


# --- matchers --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("condition", "expected"),
    [
        ({"attribute": "SeriesDescription", "equals": "HippoCrop"}, True),
        ({"attribute": "SeriesDescription", "equals": "hippocrop"}, False),
        ({"attribute": "SeriesDescription", "iequals": "HIPPOCROP"}, True),
        ({"attribute": "SeriesDescription", "regex": "Crop$"}, True),
        ({"attribute": "SeriesDescription", "regex": "^Crop"}, False),
        ({"attribute": "SliceThickness", "range": [0.5, 1.5]}, True),
        ({"attribute": "SliceThickness", "range": [2, None]}, False),
        ({"attribute": "SliceThickness", "range": [None, 1]}, True),
        ({"attribute": "Rows", "equals": 51}, True),
        ({"attribute": "SliceThickness", "equals": 1.0}, True),
        ({"attribute": "Modality", "one_of": ["CT", "MR"]}, True),
        ({"attribute": "Modality", "one_of": ["CT", "PT"]}, False),
        ({"attribute": "ImageType", "equals": "DERIVED"}, True),  # any single value
        ({"attribute": "ImageType", "equals": "DERIVED\\SECONDARY\\AXIAL"}, True),  # whole
        ({"attribute": "ImageType", "regex": "^ORIGINAL$"}, False),
        ({"attribute": "ImageType", "regex": "DERIVED", "negate": True}, False),
        ({"attribute": "Modality", "equals": "CT", "negate": True}, True),
        ({"attribute": "BodyPartExamined", "equals": "BRAIN"}, False),  # absent
        ({"attribute": "BodyPartExamined", "equals": "BRAIN", "negate": True}, True),
    ],
    ids=lambda v: str(v) if isinstance(v, bool) else "-".join(map(str, v.values())),
)
def test_condition_matchers(hippocrop: Dataset, condition: dict, expected: bool) -> None:
    assert Condition(**condition).matches(hippocrop) is expected


def test_first_matching_rule_wins(hippocrop: Dataset) -> None:
    skip = rule(Condition(attribute="Modality", equals="MR"), name="skip MR", action="skip")
    crop = rule(Condition(attribute="SeriesDescription", regex="Crop"), name="crop")

    skipped = selector(skip, crop).decide(hippocrop, 32)
    chosen = selector(crop, skip).decide(hippocrop, 32)

    assert (skipped.selected, skipped.rule) == (False, "skip MR")
    assert (chosen.selected, chosen.rule) == (True, "crop")


def test_no_matching_rule_means_not_selected(hippocrop: Dataset) -> None:
    decision = selector(rule(Condition(attribute="Modality", equals="CT"), name="ct only")).decide(
        hippocrop, 32
    )

    assert not decision.selected and decision.rule is None
    assert "'ct only': Modality equals 'CT' failed (value 'MR')" in decision.reason


def test_no_rules_selects_nothing(hippocrop: Dataset) -> None:
    assert not selector().decide(hippocrop, 32).selected


# --- slice counts ----------------------------------------------------------------------------


def test_slice_count_unknown_selects_provisionally(hippocrop: Dataset) -> None:
    decision = SeriesSelector(SelectionConfig()).decide(hippocrop)
    assert decision.selected and "not yet known" in decision.reason


def test_too_few_slices_are_not_selected(hippocrop: Dataset) -> None:
    decision = SeriesSelector(SelectionConfig(min_slices=8)).decide(hippocrop, 7)
    assert not decision.selected and "7 slice(s) < minimum 8" in decision.reason


def test_rule_minimum_overrides_the_global_one(hippocrop: Dataset) -> None:
    strict = rule(Condition(attribute="Modality", equals="MR"), min_slices=40)
    assert not selector(strict, min_slices=2).decide(hippocrop, 32).selected
    assert selector(strict, min_slices=2).decide(hippocrop, 40).selected


def test_multiframe_instance_counts_its_frames(hippocrop: Dataset) -> None:
    ds = copy.deepcopy(hippocrop)
    ds.SOPClassUID = LegacyConvertedEnhancedMRImageStorage
    ds.NumberOfFrames = 32
    assert SeriesSelector(SelectionConfig()).decide(ds, 1).selected


# --- configuration validation ----------------------------------------------------------------


@pytest.mark.parametrize(
    ("condition", "message"),
    [
        ({"attribute": "NotADicomKeyword", "equals": "x"}, "not a DICOM keyword"),
        ({"attribute": "ReferencedImageSequence", "equals": "x"}, "sequence"),
        ({"attribute": "Modality"}, "exactly one of"),
        ({"attribute": "Modality", "equals": "MR", "regex": "MR"}, "exactly one of"),
        ({"attribute": "Modality", "regex": "(unclosed"}, "invalid regular expression"),
        ({"attribute": "Rows", "range": [10, 5]}, "exceeds maximum"),
        ({"attribute": "Rows", "range": [None, None]}, "at least one bound"),
        ({"attribute": "Modality", "one_of": []}, "at least one value"),
        ({"attribute": "Modality", "equals": "MR", "typo": 1}, "Extra inputs"),
    ],
    ids=lambda v: v if isinstance(v, str) else None,
)
def test_invalid_conditions_are_rejected(condition: dict, message: str) -> None:
    with pytest.raises(ValidationError, match=message):
        Condition(**condition)


def test_config_loads_from_plain_data() -> None:
    config = SelectionConfig.model_validate(
        {
            "min_slices": 4,
            "rules": [
                {"name": "localizers", "action": "skip", "conditions": [
                    {"attribute": "ImageType", "regex": "LOCALIZER"}]},
                {"name": "T1", "conditions": [
                    {"attribute": "SeriesDescription", "iequals": "hippocrop"}]},
            ],
        }
    )  # fmt: skip
    assert [r.name for r in config.rules] == ["localizers", "T1"]
    with pytest.raises(ValidationError):
        SelectionConfig.model_validate({"rules": [{"name": "x", "action": "maybe"}]})


# --- logging ---------------------------------------------------------------------------------


def test_every_decision_is_logged_at_debug_without_patient_identifiers(
    hippocrop: Dataset, caplog: pytest.LogCaptureFixture
) -> None:
    by_name = rule(Condition(attribute="PatientName", equals="Nobody^Else"), name="by name")
    by_id = rule(Condition(attribute="PatientID", regex="^XYZ"), name="by id")

    with caplog.at_level(logging.DEBUG, logger="hippo_scp.assembly.selection"):
        selector(by_name, by_id).decide(hippocrop, 32)
        SeriesSelector(SelectionConfig()).decide(hippocrop, 32)

    records = [r for r in caplog.records if r.name == "hippo_scp.assembly.selection"]
    assert len(records) == 2 and all(r.levelno == logging.DEBUG for r in records)
    text = "\n".join(r.getMessage() for r in records)
    assert "not selected" in text and "selected by rule 'HippoCrop MR'" in text
    assert "value withheld" in text
    assert str(hippocrop.PatientName) not in text and str(hippocrop.PatientID) not in text


# --------------------------------------------------------------------------- router filter
def _rules(*rules: SelectionRule) -> SelectionConfig:
    return SelectionConfig(rules=list(rules))


def _description(**matcher) -> Condition:
    return Condition(attribute="SeriesDescription", **matcher)


def test_default_rules_route_only_hippocrop(hippocrop: Dataset) -> None:
    """The shipped rule (regex (?i)^hippocrop$ and Modality MR) gives a one-name filter that
    lets the real HippoCrop series through, compared the way route_dicoms*.lua compare."""
    names = routed_series_descriptions(SelectionConfig())
    assert names is not None and len(names) == 1
    assert names[0].strip().lower() == str(hippocrop.SeriesDescription).strip().lower()


def test_literal_matchers_of_every_analyze_rule_are_collected() -> None:
    config = _rules(
        SelectionRule(name="skip scouts", action="skip", conditions=[_description(regex="scout")]),
        SelectionRule(name="a", conditions=[_description(iequals="Hippo T1")]),
        SelectionRule(
            name="b",
            conditions=[
                Condition(attribute="Modality", equals="MR"),
                _description(one_of=["Cor_T1", "HIPPO T1"]),
            ],
        ),
        SelectionRule(name="c", conditions=[_description(regex="^Sag_3D$")]),
    )
    assert routed_series_descriptions(config) == ["Cor_T1", "Hippo T1", "Sag_3D"]


@pytest.mark.parametrize(
    "conditions",
    [
        [],  # catch-all analyze rule
        [Condition(attribute="Modality", equals="MR")],  # no description condition
        [_description(regex="(?i)hippo")],  # a pattern, not one literal
        [_description(regex="^hippo.*$")],
        [_description(iequals="HippoCrop", negate=True)],  # everything but one name
    ],
    ids=["catch-all", "no-description", "substring-regex", "wildcard-regex", "negated"],
)
def test_rules_without_literal_descriptions_route_everything(conditions) -> None:
    """A filter narrower than the rules would starve the node silently: rather none."""
    config = _rules(
        SelectionRule(name="named", conditions=[_description(iequals="HippoCrop")]),
        SelectionRule(name="open", conditions=conditions),
    )
    assert routed_series_descriptions(config) is None
