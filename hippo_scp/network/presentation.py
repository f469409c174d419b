"""Presentation contexts: which SOP classes and transfer syntaxes the node accepts and proposes.

Everything here is a plain list so that the DICOM Conformance Statement can be generated from
the same source the node negotiates with (``docs/conformance``): what the document says is what
the node does.

Why the order of :data:`ACCEPTED_TRANSFER_SYNTAXES` matters: pynetdicom's acceptor walks *its
own* list in order and picks the first syntax the requestor also proposed. Uncompressed syntaxes
come first, so a sender that offers JPEG *and* Explicit VR Little Endian for the same SOP class
gets Explicit VR Little Endian: no decoding cost, no codec risk, and the byte-exact instance.
Compressed syntaxes follow because a PACS that stores compressed may only offer those.
"""

from __future__ import annotations

import copy
from collections.abc import Iterable
from typing import Any

from pydicom.uid import (
    JPEG2000,
    UID,
    DeflatedExplicitVRLittleEndian,
    ExplicitVRBigEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    JPEG2000Lossless,
    JPEGBaseline8Bit,
    JPEGExtended12Bit,
    JPEGLossless,
    JPEGLosslessSV1,
    JPEGLSLossless,
    JPEGLSNearLossless,
    RLELossless,
)
from pynetdicom import AllStoragePresentationContexts, build_context
from pynetdicom.presentation import PresentationContext
from pynetdicom.sop_class import Verification

#: Uncompressed transfer syntaxes, in order of preference (Explicit VR LE first: it carries
#: VRs, so private and unknown elements survive, and it is what the reader handles fastest).
UNCOMPRESSED_TRANSFER_SYNTAXES: list[UID] = [
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    DeflatedExplicitVRLittleEndian,
    ExplicitVRBigEndian,
]

#: Compressed transfer syntaxes the pixel reader can decode (pydicom + pylibjpeg / pyjpegls).
#: Lossless ones before lossy ones.
COMPRESSED_TRANSFER_SYNTAXES: list[UID] = [
    RLELossless,
    JPEGLosslessSV1,
    JPEGLossless,
    JPEGLSLossless,
    JPEG2000Lossless,
    JPEGLSNearLossless,
    JPEG2000,
    JPEGBaseline8Bit,
    JPEGExtended12Bit,
]

#: Every transfer syntax the SCP accepts for storage, most preferred first.
ACCEPTED_TRANSFER_SYNTAXES: list[UID] = (
    UNCOMPRESSED_TRANSFER_SYNTAXES + COMPRESSED_TRANSFER_SYNTAXES
)

#: Transfer syntaxes accepted for Verification (C-ECHO has no data set; any native one will do).
VERIFICATION_TRANSFER_SYNTAXES: list[UID] = [ExplicitVRLittleEndian, ImplicitVRLittleEndian]

#: Every storage SOP class the node accepts as SCP (pynetdicom's complete storage list, which
#: includes the SR, SEG and Secondary Capture classes the node itself produces).
STORAGE_SOP_CLASSES: list[UID] = [UID(cx.abstract_syntax) for cx in AllStoragePresentationContexts]

#: Transfer syntaxes the SCU proposes when it sends results, after the one a file is stored in:
#: every Storage SCP must accept Implicit VR Little Endian (PS3.5 Section 10.1).
SCU_FALLBACK_TRANSFER_SYNTAXES: list[UID] = [ExplicitVRLittleEndian, ImplicitVRLittleEndian]


class CheaplyCopiedContext(PresentationContext):
    """A presentation context whose deep copy copies only what can change.

    pynetdicom's server deep-copies the acceptor's contexts for every association, so that
    negotiation results do not leak between associations. For 171 SOP classes x 13 transfer
    syntaxes the generic ``copy.deepcopy`` walks thousands of UID objects: ~20 ms of CPU per
    association, half of what an association costs the node (C-ECHO monitoring, one
    association per series from Orthanc; docs/benchmarks.md). A context holds immutable values
    (UIDs are ``str``, ids ``int``, roles ``bool`` / ``None``) and lists of UIDs, so copying
    the instance dictionary with fresh lists *is* a deep copy; any other attribute value (a
    future pynetdicom may add one) still goes through ``copy.deepcopy``, so this can change
    speed, never behaviour.
    """

    def __deepcopy__(self, memo: dict[int, Any]) -> CheaplyCopiedContext:
        new = type(self).__new__(type(self))
        memo[id(self)] = new
        new.__dict__.update((key, _copy_value(value, memo)) for key, value in self.__dict__.items())
        return new

    @classmethod
    def of(cls, context: PresentationContext) -> CheaplyCopiedContext:
        new = cls.__new__(cls)
        new.__dict__.update(copy.deepcopy(context.__dict__))
        return new


def _copy_value(value: Any, memo: dict[int, Any]) -> Any:
    if value is None or isinstance(value, (str, int, float, bool)):
        return value  # immutable (pydicom's UID is a str)
    if isinstance(value, list) and all(isinstance(item, str) for item in value):
        return list(value)
    return copy.deepcopy(value, memo)


def per_association_contexts(contexts: Iterable[PresentationContext]) -> list[PresentationContext]:
    """The acceptor's contexts as :class:`CheaplyCopiedContext`, for ``start_server(contexts=)``."""
    return [CheaplyCopiedContext.of(context) for context in contexts]


def supported_contexts() -> list[PresentationContext]:
    """Build the acceptor's presentation contexts: Verification + every storage SOP class."""
    contexts = [build_context(Verification, VERIFICATION_TRANSFER_SYNTAXES)]
    contexts.extend(build_context(uid, ACCEPTED_TRANSFER_SYNTAXES) for uid in STORAGE_SOP_CLASSES)
    return contexts


def requested_contexts(sop_classes_and_syntaxes: dict[str, set[str]]) -> list[PresentationContext]:
    """Build the requestor's contexts for sending results.

    ``sop_classes_and_syntaxes`` maps each SOP Class UID to the transfer syntaxes its files are
    stored in. Each stored syntax is proposed first, then the native fallbacks, so the file is
    sent as written when the peer accepts that and re-encoded otherwise.
    """
    contexts = []
    for sop_class, syntaxes in sorted(sop_classes_and_syntaxes.items()):
        ordered = [UID(ts) for ts in sorted(syntaxes)]
        ordered += [ts for ts in SCU_FALLBACK_TRANSFER_SYNTAXES if ts not in ordered]
        contexts.append(build_context(sop_class, ordered))
    return contexts
