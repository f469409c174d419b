"""TID 1600 Image Library whose group carries the descriptors its slices share.

Why not highdicom's ``ImageLibrary`` as it is: it repeats every TID 1602/1604 descriptor
(modality, frame of reference, rows, columns, pixel spacing, slice thickness, image position
and orientation: 15 content items) under each of the series' slices, although TID 1600 lets an
Image Library Group carry the descriptors that apply to all of its entries (TID 1600 row 3,
"Image Library Group" > INCLUDE TID 1602). For a 32-slice HippoCrop series that is ~480 content
items, about two thirds of the SR, built item by item and serialised at every analysis. Here
the group holds the shared descriptors once and each entry only what differs between slices
(Image Position (Patient) X, Y, Z), so the library is ~4 items per slice.

The items come from highdicom's own TID 1602 template (``ImageLibraryEntryDescriptors``, for
the first slice) and content-item classes, so codes, units and value encoding are highdicom's;
a test checks that group + entry descriptors equal highdicom's per-entry descriptors for every
slice. Slices that do not share modality, frame of reference, matrix, spacing, thickness and
orientation (or are not cross-sectional images) get highdicom's per-entry library unchanged.
"""

from __future__ import annotations

from collections.abc import Sequence

import highdicom as hd
from pydicom import Dataset
from pydicom.multival import MultiValue
from pydicom.sr.codedict import codes

#: The descriptors that differ from slice to slice of one series (TID 1604).
PER_SLICE_CONCEPTS = (
    codes.DCM.ImagePositionPatientX,
    codes.DCM.ImagePositionPatientY,
    codes.DCM.ImagePositionPatientZ,
)
_PER_SLICE_VALUES = frozenset(c.value for c in PER_SLICE_CONCEPTS)
#: "Source" (SCT 260753009), the concept name highdicom gives each library entry.
SOURCE = hd.sr.CodedConcept(value="260753009", meaning="Source", scheme_designator="SCT")
_SHARED_ATTRIBUTES = (
    "SOPClassUID",
    "FrameOfReferenceUID",
    "Rows",
    "Columns",
    "PixelSpacing",
    "SliceThickness",
    "ImageOrientationPatient",
)


def _shared_key(ds: Dataset) -> tuple | None:
    """What must be equal for two slices to share their descriptors; None if incomplete."""
    if "ImagePositionPatient" not in ds or any(a not in ds for a in _SHARED_ATTRIBUTES):
        return None
    key = []
    for attribute in _SHARED_ATTRIBUTES:
        value = ds[attribute].value
        key.append(tuple(value) if isinstance(value, MultiValue | list) else value)
    return tuple(key)


def _is_per_slice(item: Dataset) -> bool:
    return item.ConceptNameCodeSequence[0].CodeValue in _PER_SLICE_VALUES


def build_image_library(headers: Sequence[Dataset]) -> hd.sr.ContainerContentItem:
    """The "Image Library" container (TID 1600) for ``headers``, single-frame source slices.

    One group when all slices share their geometry descriptors; highdicom's
    ``ImageLibrary`` otherwise. Raises :class:`ValueError` for an empty sequence (as
    highdicom does).
    """
    if not headers:
        raise ValueError("an image library needs at least one image")
    keys = {_shared_key(ds) for ds in headers}
    if len(keys) != 1 or None in keys:
        return hd.sr.ImageLibrary(headers)[0]
    first = hd.sr.ImageLibraryEntryDescriptors(headers[0])
    if not any(_is_per_slice(item) for item in first):  # not a cross-sectional image
        return hd.sr.ImageLibrary(headers)[0]
    group = hd.sr.ContainerContentItem(
        name=codes.DCM.ImageLibraryGroup,
        relationship_type=hd.sr.RelationshipTypeValues.CONTAINS,
    )
    group.ContentSequence = hd.sr.ContentSequence(
        [item for item in first if not _is_per_slice(item)]
    )
    for ds in headers:
        entry = hd.sr.ImageContentItem(
            name=SOURCE,
            referenced_sop_class_uid=ds.SOPClassUID,
            referenced_sop_instance_uid=ds.SOPInstanceUID,
            relationship_type=hd.sr.RelationshipTypeValues.CONTAINS,
        )
        entry.ContentSequence = hd.sr.ContentSequence(
            [
                hd.sr.NumContentItem(
                    name=concept,
                    value=position,
                    unit=codes.UCUM.Millimeter,
                    relationship_type=hd.sr.RelationshipTypeValues.HAS_ACQ_CONTEXT,
                )
                for concept, position in zip(
                    PER_SLICE_CONCEPTS, ds.ImagePositionPatient, strict=True
                )
            ]
        )
        group.ContentSequence.append(entry)
    library = hd.sr.ContainerContentItem(
        name=codes.DCM.ImageLibrary,
        relationship_type=hd.sr.RelationshipTypeValues.CONTAINS,
    )
    library.ContentSequence = hd.sr.ContentSequence([group])
    return library
