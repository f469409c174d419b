"""Reading the node's result sets back in tests: what kind of object each one is.

Shared by the network, hardening and deploy tests, which all receive SEG + SR + SC sets from a
running node (volumes are read with the product's own :func:`hippo_scp.outputs.sr.read_volumes`).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable

from pydicom.dataset import Dataset
from pydicom.uid import SegmentationStorage


def kind(ds: Dataset) -> str:
    """``"SEG"``, ``"SR"``, ``"SC"`` or the SOP class name of anything else."""
    uid = ds.SOPClassUID
    if uid == SegmentationStorage:
        return "SEG"
    if "SR" in uid.name:
        return "SR"
    if "Secondary Capture" in uid.name:
        return "SC"
    return uid.name


def kinds(datasets: Iterable[Dataset]) -> Counter[str]:
    """How many objects of each kind, e.g. ``Counter({"SEG": 1, "SR": 1, "SC": 1})``."""
    return Counter(kind(ds) for ds in datasets)
