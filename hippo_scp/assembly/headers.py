"""The header of a received data set: its elements before Pixel Data, or only the first ones.

One place for what the receiver (every C-STORE), the series store (a lone instance's frame
count) and the spool (instances read back after a restart) parse, so they stop at the same
tags the same way and count frames alike.
"""

from __future__ import annotations

from io import BytesIO

from pydicom.dataset import Dataset
from pydicom.filereader import read_dataset
from pydicom.uid import UID

#: (7FE0,0010) Pixel Data
PIXEL_DATA = 0x7FE00010
#: the last tag a C-STORE of a series already held needs: the UIDs and patient identifiers
#: come before it (groups 0008, 0010), image and private groups after it
SERIES_INSTANCE_UID = 0x0020000E
NUMBER_OF_FRAMES = 0x00280008
#: ``through`` for a whole header: every element before Pixel Data
BEFORE_PIXEL_DATA = PIXEL_DATA - 1


def read_header(data: bytes | BytesIO, syntax: UID, *, through: int = BEFORE_PIXEL_DATA) -> Dataset:
    """The data set's top-level elements up to and including tag ``through``.

    ``data`` is a data set without File Meta, encoded in ``syntax`` (a ``BytesIO`` is read
    from its start, not copied). The tag test uses ``int.__gt__``, not pydicom's Python-level
    ``BaseTag`` comparison, because it runs for every element of every received header (a
    512x512 MR header: 1.22 ms instead of 1.43 ms per instance).
    """
    stream = data if isinstance(data, BytesIO) else BytesIO(data)
    stream.seek(0)
    return read_dataset(
        stream,
        syntax.is_implicit_VR,
        syntax.is_little_endian,
        stop_when=lambda tag, vr, length: int.__gt__(tag, through),
    )


def number_of_frames(header: Dataset) -> int:
    """NumberOfFrames, 1 when absent or unreadable (a single-frame instance)."""
    try:
        return max(1, int(header.get("NumberOfFrames") or 1))
    except (TypeError, ValueError):
        return 1
