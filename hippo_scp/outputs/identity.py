"""Who made an output object, and how it is labelled.

Everything the node writes into its DICOM results to identify itself lives here, in one place,
because three different consumers depend on it staying consistent:

* the node itself, which recognises (and ignores) its own results when a PACS routes them back
  (``Manufacturer`` == :data:`hippo_scp.MANUFACTURER` and ``SoftwareVersions`` starting with
  :data:`hippo_scp.SOFTWARE_NAME`);
* viewers (OHIF), which show ``SeriesDescription`` / ``SeriesNumber`` and the segment colours;
* auditors, who need the algorithm name, version and the SHA-256 of the weights that produced a
  number.
"""

from __future__ import annotations

import copy
import datetime
from collections.abc import Sequence
from dataclasses import dataclass

import highdicom as hd
from pydicom import Dataset
from pydicom.sr.codedict import codes
from pydicom.sr.coding import Code
from pydicom.uid import generate_uid

from hippo_scp import MANUFACTURER, SOFTWARE_NAME, __version__

#: Name of the algorithm as written into SEG / SR algorithm identification.
ALGORITHM_NAME = "HippoAI U-Net hippocampus segmentation"
#: Device / model name written as ManufacturerModelName.
MODEL_NAME = "HippoAI"
#: Stable UID of this software "device" (SR device observer). Derived deterministically, so the
#: same software always reports as the same observer device.
DEVICE_OBSERVER_UID = generate_uid(entropy_srcs=[MANUFACTURER, SOFTWARE_NAME, MODEL_NAME])
DEVICE_SERIAL_NUMBER = "1"

#: Series numbers of the three result series: high, fixed numbers so they sort after the
#: acquired series in a viewer and never clash with scanner-assigned numbers.
SR_SERIES_NUMBER = 9701
SEG_SERIES_NUMBER = 9702
REPORT_SERIES_NUMBER = 9703

SR_SERIES_DESCRIPTION = "HippoAI Volumes SR"
SEG_SERIES_DESCRIPTION = "HippoAI Segmentation"
REPORT_SERIES_DESCRIPTION = "HippoAI Report"

NOT_FOR_DIAGNOSTIC_USE = "NOT FOR DIAGNOSTIC USE"
#: The SoftwareVersions value that names the model: ``model <version>``.
MODEL_VERSION_PREFIX = "model "


@dataclass(frozen=True)
class StructureCode:
    """One segmented structure: its label value in the model output and its coded meaning."""

    label: int
    name: str
    #: SNOMED CT topographical modifier (anterior / posterior); ``None`` for the whole structure.
    modifier: Code | None
    #: Display colour (sRGB) used in the SEG, the SR-linked viewer overlay and the report image.
    rgb: tuple[int, int, int]


#: SNOMED CT codes shared by SEG and SR so that a viewer can match them.
HIPPOCAMPUS: Code = codes.SCT.Hippocampus  # 5366008
ANATOMICAL_STRUCTURE: Code = codes.SCT.AnatomicalStructure  # 91723000
ANTERIOR: Code = codes.SCT.Anterior  # 255549009
POSTERIOR: Code = codes.SCT.Posterior  # 255551008

# Okabe-Ito orange / sky blue: distinguishable with the common colour-vision deficiencies.
ANTERIOR_STRUCTURE = StructureCode(1, "Anterior hippocampus", ANTERIOR, (230, 159, 0))
POSTERIOR_STRUCTURE = StructureCode(2, "Posterior hippocampus", POSTERIOR, (86, 180, 233))
WHOLE_STRUCTURE = StructureCode(0, "Hippocampus", None, (255, 255, 255))
SEGMENTED_STRUCTURES: tuple[StructureCode, ...] = (ANTERIOR_STRUCTURE, POSTERIOR_STRUCTURE)


def series_created_now() -> dict[str, datetime.date | datetime.time]:
    """``series_date`` / ``series_time`` keyword arguments for a result series: when it was
    made. Viewers list series by them, and the prior lookup takes the newest of a study's
    SR series first (a study analysed again has several)."""
    now = datetime.datetime.now()
    return {"series_date": now.date(), "series_time": now.time()}


def model_version_of(ds: Dataset) -> str:
    """The model version an output of this node records (its SoftwareVersions value
    ``model <version>``); "" when there is none (another product's object, or none at all)."""
    values = ds.get("SoftwareVersions")
    if values is None:
        return ""
    if isinstance(values, str | bytes):
        values = [values]
    for value in values:
        text = str(value).strip()
        if text.startswith(MODEL_VERSION_PREFIX):
            return text[len(MODEL_VERSION_PREFIX) :].strip()
    return ""


@dataclass(frozen=True)
class OutputIdentity:
    """Identity of the producing software + model, passed to every output builder.

    ``model_version`` and ``weights_sha256`` come from the loaded Segmenter, so that every
    object records exactly which weights produced it.
    """

    model_version: str
    weights_sha256: str
    #: the model's measured volume error, as printed on the report (empty: not known)
    model_error_lines: tuple[str, ...] = ()
    manufacturer: str = MANUFACTURER
    model_name: str = MODEL_NAME
    algorithm_name: str = ALGORITHM_NAME
    device_serial_number: str = DEVICE_SERIAL_NUMBER

    @property
    def software_version(self) -> str:
        """First SoftwareVersions value: ``"<SOFTWARE_NAME> <version>"`` (how the node
        recognises its own outputs)."""
        return f"{SOFTWARE_NAME} {__version__}"

    @property
    def software_versions(self) -> list[str]:
        """SoftwareVersions (LO, multi-valued): software first, then the model version
        (read back by :func:`model_version_of`)."""
        return [self.software_version, f"{MODEL_VERSION_PREFIX}{self.model_version}"[:64]]

    @property
    def weights_parameter(self) -> str:
        """Algorithm parameter string that pins the exact weights."""
        return f"weights_sha256={self.weights_sha256}"

    def seg_algorithm_identification(self) -> hd.AlgorithmIdentificationSequence:
        """Algorithm identification for the SEG segment descriptions."""
        return hd.AlgorithmIdentificationSequence(
            name=self.algorithm_name,
            family=codes.cid7162.ArtificialIntelligence,
            version=self.model_version,
            source=self.manufacturer,
            parameters={"weights_sha256": self.weights_sha256},
        )

    def sr_algorithm_identification(self) -> hd.sr.AlgorithmIdentification:
        """TID 4019 algorithm identification for SR measurement groups."""
        return hd.sr.AlgorithmIdentification(
            name=self.algorithm_name,
            version=self.model_version,
            parameters=[self.weights_parameter],
        )

    def contributing_equipment(self) -> list[hd.ContributingEquipment]:
        """Processing-equipment item naming the software and the weights hash."""
        return [
            hd.ContributingEquipment(
                manufacturer=self.manufacturer,
                purpose_of_reference=codes.DCM.ProcessingEquipment,
                manufacturer_model_name=self.model_name,
                software_versions=self.software_versions,
                device_serial_number=self.device_serial_number,
                contribution_description=(
                    f"{self.algorithm_name} {self.model_version}; {self.weights_parameter}"
                ),
            )
        ]


#: Patient / study attributes that highdicom's constructors read unconditionally (``ds.X``)
#: although they are Type 2 in the source IODs and often absent (the test studies have no
#: PatientSex / PatientBirthDate).
_TYPE2_HEADER_KEYWORDS = (
    "PatientName",
    "PatientID",
    "PatientBirthDate",
    "PatientSex",
    "AccessionNumber",
    "StudyID",
    "StudyDate",
    "StudyTime",
    "ReferringPhysicianName",
)


def reference_header(source: Dataset) -> Dataset:
    """Header-only copy of ``source`` with absent Type 2 patient/study attributes set empty.

    Used as the "reference" dataset the builders copy Patient/Study modules from. Pixel data
    is dropped (highdicom only needs metadata) and the source dataset is never mutated, so the
    same datasets can be reused by the caller.
    """
    header = Dataset()
    for element in source:
        if element.tag.group == 0x7FE0:
            continue
        header.add(copy.deepcopy(element))
    if hasattr(source, "file_meta"):
        header.file_meta = copy.deepcopy(source.file_meta)
    for keyword in _TYPE2_HEADER_KEYWORDS:
        if keyword not in header:
            setattr(header, keyword, None)
    charset = normalized_character_set(header.get("SpecificCharacterSet"))
    if charset is not None:
        header.SpecificCharacterSet = charset
    return header


class ReferenceHeaders(tuple):
    """Headers already made by :func:`reference_header`, one per source image.

    The SEG and SR builders take them as they are instead of copying every source header
    again, so one analysis copies each header once (32 HippoCrop headers: ~30-50 ms per copy
    set on 2 cores). highdicom only reads them; a test checks that building the SEG from them
    leaves them unchanged and the SR built from them identical to one built from fresh copies.
    """

    __slots__ = ()


def reference_headers(sources: Sequence[Dataset]) -> ReferenceHeaders:
    """:func:`reference_header` of each source, or ``sources`` itself if already made so."""
    if isinstance(sources, ReferenceHeaders):
        return sources
    return ReferenceHeaders(reference_header(ds) for ds in sources)


def normalized_character_set(value: str | list[str] | None) -> str | list[str] | None:
    """Spell out the implicit default repertoire of an ISO 2022 Specific Character Set.

    PS3.5 6.1.2.5.3: with code extensions, an empty first value means "ISO 2022 IR 6"
    (e.g. Japanese ``\\ISO 2022 IR 87``). highdicom only accepts the defined term, so the
    outputs carry it explicitly; the meaning, and every decoded name, is unchanged.
    """
    if value is None or isinstance(value, str):
        return value
    values = [str(v).strip() for v in value]
    if len(values) > 1 and values[0] == "":
        values[0] = "ISO 2022 IR 6"
    return values
