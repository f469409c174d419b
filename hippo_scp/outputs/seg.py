"""DICOM Segmentation (BINARY, two segments) of the anterior / posterior hippocampus.

The SEG is built frame-for-frame on the source series: frame ``k`` of the label frames belongs
to ``source_datasets[k]``, so it shares the source Frame of Reference and OHIF can overlay it on
the HippoCrop series without resampling.
"""

from __future__ import annotations

from collections.abc import Sequence

import highdicom as hd
import numpy as np
from pydicom import Dataset
from pydicom.sr.coding import Code

from hippo_scp.outputs.identity import (
    ANATOMICAL_STRUCTURE,
    HIPPOCAMPUS,
    SEG_SERIES_DESCRIPTION,
    SEG_SERIES_NUMBER,
    SEGMENTED_STRUCTURES,
    OutputIdentity,
    StructureCode,
    reference_headers,
    series_created_now,
)


def _segment_description(
    structure: StructureCode, identity: OutputIdentity, tracking_uid: str
) -> hd.seg.SegmentDescription:
    description = hd.seg.SegmentDescription(
        segment_number=structure.label,
        segment_label=structure.name,
        segmented_property_category=ANATOMICAL_STRUCTURE,
        segmented_property_type=HIPPOCAMPUS,
        algorithm_type=hd.seg.SegmentAlgorithmTypeValues.AUTOMATIC,
        algorithm_identification=identity.seg_algorithm_identification(),
        tracking_uid=tracking_uid,
        tracking_id=structure.name,
        display_color=hd.color.CIELabColor.from_rgb(*structure.rgb),
    )
    modifier: Code | None = structure.modifier
    if modifier is not None:
        # Segmented Property Type Modifier (Segment Description macro): SNOMED anterior/posterior.
        property_type = description.SegmentedPropertyTypeCodeSequence[0]
        property_type.SegmentedPropertyTypeModifierCodeSequence = [
            hd.sr.CodedConcept.from_code(modifier)
        ]
    return description


def build_segmentation(
    source_datasets: Sequence[Dataset],
    label_frames: np.ndarray,
    identity: OutputIdentity,
    *,
    tracking_uids: dict[int, str],
    series_instance_uid: str | None = None,
    sop_instance_uid: str | None = None,
) -> hd.seg.Segmentation:
    """Build the SEG.

    ``label_frames`` is ``(Z, Rows, Columns)`` uint8 with 0 background, 1 anterior,
    2 posterior, frame ``k`` aligned pixel-for-pixel with ``source_datasets[k]``.
    ``tracking_uids`` maps label -> tracking UID, shared with the SR so both objects name the
    same finding. Empty frames are omitted (unless every frame is empty: a SEG needs at least
    one frame, so then the empty frames are kept).
    """
    expected = (
        int(source_datasets[0].get("NumberOfFrames") or 1)
        if len(source_datasets) == 1
        else len(source_datasets)
    )
    if label_frames.ndim != 3 or label_frames.shape[0] != expected:
        raise ValueError(
            f"label frames {label_frames.shape} do not match {len(source_datasets)} source images"
        )
    frames = np.ascontiguousarray(label_frames, dtype=np.uint8)
    descriptions = [
        _segment_description(s, identity, tracking_uids[s.label]) for s in SEGMENTED_STRUCTURES
    ]
    # Header copies: highdicom reads Type 2 patient attributes unconditionally (absent in the
    # test studies) and needs no pixel data.
    headers = reference_headers(source_datasets)
    seg = hd.seg.Segmentation(
        source_images=headers,
        pixel_array=frames,
        segmentation_type=hd.seg.SegmentationTypeValues.BINARY,
        segment_descriptions=descriptions,
        series_instance_uid=series_instance_uid or hd.UID(),
        series_number=SEG_SERIES_NUMBER,
        sop_instance_uid=sop_instance_uid or hd.UID(),
        instance_number=1,
        manufacturer=identity.manufacturer,
        manufacturer_model_name=identity.model_name,
        software_versions=identity.software_versions,
        device_serial_number=identity.device_serial_number,
        content_description="Hippocampus segmentation",
        content_label="HIPPOCAMPUS",
        omit_empty_frames=bool(frames.any()),
        series_description=SEG_SERIES_DESCRIPTION,
        contributing_equipment=identity.contributing_equipment(),
        **series_created_now(),
    )
    return seg
