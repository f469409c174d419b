"""Decode the stored pixel values of one instance, whatever transfer syntax the PACS chose.

Decoding itself is pydicom 3's job (with the pylibjpeg / pyjpegls plugins for JPEG, JPEG-LS,
JPEG 2000 and RLE). This module adds what the pipeline needs around it:

* a check, before decoding, that native (uncompressed) Pixel Data is present and long enough,
  so a truncated C-STORE is reported as :class:`MissingPixelDataError` rather than as a numpy
  reshape failure;
* a fallback transfer syntax for datasets that arrive without File Meta (a dataset decoded from
  the network may carry only its encoding flags);
* one exception type, :class:`UndecodablePixelDataError`, for every codec failure.

The result is always a ``(frames, rows, columns)`` array of *stored* values: the modality LUT is
applied by the caller, which knows the per-frame rescale of enhanced objects.
"""

from __future__ import annotations

import numpy as np
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.pixels import pixel_array
from pydicom.uid import (
    UID,
    ExplicitVRBigEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
)

from hippo_scp.imaging.errors import MissingPixelDataError, UndecodablePixelDataError

#: The pixel data elements a monochrome image may carry its values in.
_PIXEL_KEYWORDS = ("PixelData", "FloatPixelData", "DoubleFloatPixelData")
#: (FFFE,E000) Item tag, little endian: the first bytes of encapsulated Pixel Data.
_ITEM_TAG = b"\xfe\xff\x00\xe0"


def describe_instance(ds: Dataset) -> str:
    """Say which instance a message is about, without any patient identifier."""
    number = ds.get("InstanceNumber")
    uid = ds.get("SOPInstanceUID", "?")
    return f"instance {number if number not in (None, '') else '?'} (SOP Instance UID {uid})"


def transfer_syntax_of(ds: Dataset) -> UID:
    """Return the dataset's transfer syntax, inferring a native one when File Meta is absent.

    pynetdicom attaches File Meta to received datasets, but datasets built in memory or copied
    between processes may lack it; their encoding flags then tell which native syntax applies.
    Encapsulated (compressed) data cannot be inferred and raises.
    """
    meta = getattr(ds, "file_meta", None)
    ts = meta.get("TransferSyntaxUID") if meta is not None else None
    if ts:
        return UID(ts)
    pixel_data = ds.get("PixelData")
    if isinstance(pixel_data, bytes) and pixel_data[:4] == _ITEM_TAG:
        # Encapsulated: only the (unknown) compressed syntax can decode it. Receivers must
        # attach event.file_meta / the context's transfer syntax to what they store.
        raise UndecodablePixelDataError(
            f"{describe_instance(ds)}: compressed pixel data but no Transfer Syntax UID"
        )
    implicit, little = ds.original_encoding
    if implicit is None or little is None:
        implicit = getattr(ds, "is_implicit_VR", None)
        little = getattr(ds, "is_little_endian", None)
    if little is False:
        return ExplicitVRBigEndian
    if implicit is True:
        return ImplicitVRLittleEndian
    if implicit is False:
        return ExplicitVRLittleEndian
    raise UndecodablePixelDataError(
        f"{describe_instance(ds)}: no Transfer Syntax UID in File Meta and no known encoding"
    )


def frame_count(ds: Dataset) -> int:
    """NumberOfFrames, defaulting to 1 (single-frame IODs do not carry it)."""
    raw = ds.get("NumberOfFrames")
    try:
        return int(raw) if raw not in (None, "") else 1
    except (TypeError, ValueError) as exc:
        raise MissingPixelDataError(
            f"{describe_instance(ds)}: Number of Frames {raw!r} is not an integer"
        ) from exc


def _check_native_length(ds: Dataset, keyword: str, frames: int) -> None:
    """Refuse absent, empty or truncated uncompressed pixel data before numpy sees it."""
    value = ds.get(keyword)
    if value is None or len(value) == 0:
        raise MissingPixelDataError(f"{describe_instance(ds)}: {keyword} is empty")
    rows, cols = int(ds.Rows), int(ds.Columns)
    samples = int(ds.get("SamplesPerPixel", 1) or 1)
    if keyword == "PixelData":
        bits = int(ds.get("BitsAllocated") or 0)
        if bits not in (1, 8, 16, 32, 64):
            raise UndecodablePixelDataError(
                f"{describe_instance(ds)}: Bits Allocated {bits or 'absent'} is not decodable"
            )
    else:
        bits = 32 if keyword == "FloatPixelData" else 64
    expected_bits = rows * cols * samples * frames * bits
    expected = (expected_bits + 7) // 8
    if len(value) < expected:
        raise MissingPixelDataError(
            f"{describe_instance(ds)}: {keyword} holds {len(value)} bytes, "
            f"{rows}x{cols}x{frames} frame(s) at {bits} bits need {expected} (truncated)"
        )


def decode_stored_values(ds: Dataset) -> np.ndarray:
    """Decode ``ds``'s pixel data to stored values shaped ``(frames, rows, columns)``.

    Uses :func:`pydicom.pixels.pixel_array` rather than ``ds.pixel_array`` so the decoded array
    is not cached on the dataset: the datasets are kept for the output writers and a cached
    copy per slice would double the memory held per study.
    """
    keyword = next((k for k in _PIXEL_KEYWORDS if k in ds), None)
    if keyword is None:
        raise MissingPixelDataError(f"{describe_instance(ds)}: no Pixel Data element")
    frames = frame_count(ds)
    ts = transfer_syntax_of(ds)
    if not ts.is_compressed:
        _check_native_length(ds, keyword, frames)
    elif not ds.get(keyword):
        raise MissingPixelDataError(f"{describe_instance(ds)}: encapsulated {keyword} is empty")

    meta = getattr(ds, "file_meta", None)
    if meta is None or "TransferSyntaxUID" not in meta:
        # pydicom's decoders read the syntax from File Meta only; record the inferred one.
        if meta is None:
            ds.file_meta = FileMetaDataset()
        ds.file_meta.TransferSyntaxUID = ts
    try:
        array = pixel_array(ds)
    except MissingPixelDataError:
        raise
    except Exception as exc:  # every codec has its own exception types; unify them.
        raise UndecodablePixelDataError(
            f"{describe_instance(ds)}: cannot decode {ts.name or ts} pixel data "
            f"({type(exc).__name__}: {exc})"
        ) from exc
    return array.reshape(frames, int(ds.Rows), int(ds.Columns))


__all__ = ["decode_stored_values", "describe_instance", "frame_count", "transfer_syntax_of"]
