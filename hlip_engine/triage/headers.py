"""The few attributes the listener checks in a received data set, read straight from its bytes.

A full pydicom parse of each instance costs more than writing it; the listener only needs the study, series
and instance UIDs and the pixel data's declared size and actual length. ``scan`` walks the top-level elements
of a little-endian data set (explicit or implicit VR), stepping over sequences of any length, and returns those
values; anything it does not expect raises ``Unreadable``, and the caller falls back to pydicom.
"""
from __future__ import annotations

import struct

WANTED = {0x0020000D: "StudyInstanceUID", 0x0020000E: "SeriesInstanceUID", 0x00080018: "SOPInstanceUID",
          0x00280010: "Rows", 0x00280011: "Columns", 0x00280100: "BitsAllocated", 0x00280002: "SamplesPerPixel",
          0x00280008: "NumberOfFrames"}
PIXEL_DATA = 0x7FE00010
LONG_VRS = {b"OB", b"OD", b"OF", b"OL", b"OV", b"OW", b"SQ", b"SV", b"UC", b"UN", b"UR", b"UT", b"UV"}
UNDEFINED = 0xFFFFFFFF
ITEM, ITEM_END, SEQ_END = 0xFFFEE000, 0xFFFEE00D, 0xFFFEE0DD
_TAG = struct.Struct("<HH")
_U16, _U32 = struct.Struct("<H"), struct.Struct("<I")


class Unreadable(ValueError):
    """Not a data set this reader walks (the caller parses it with pydicom instead)."""


def scan(buf, implicit: bool) -> dict:
    """{keyword: value} of WANTED (UIDs as str, numbers as int) + "PixelDataLength" when present."""
    out: dict = {}
    end = len(buf)
    off = 0
    while off < end:
        tag, off, length, vr = _element(buf, off, implicit)
        if tag == PIXEL_DATA:
            out["PixelDataLength"] = end - off if length == UNDEFINED else length
            return out
        if length == UNDEFINED:
            off = _skip_undefined(buf, off, implicit)
            continue
        if off + length > end:
            raise Unreadable("an element runs past the end of the data set")
        name = WANTED.get(tag)
        if name is not None:
            raw = bytes(buf[off:off + length])
            if name.endswith("UID"):
                out[name] = raw.rstrip(b"\x00 ").decode("ascii", "replace")
            elif name == "NumberOfFrames":
                out[name] = int(raw.strip(b"\x00 ") or 1)
            elif length == 2:
                out[name] = _U16.unpack(raw)[0]
            else:
                raise Unreadable(f"{name} of length {length}")
        off += length
    return out


def _element(buf, off: int, implicit: bool) -> tuple[int, int, int, bytes]:
    """(tag, offset of the value, value length, VR) of the element at ``off``."""
    if off + 8 > len(buf):
        raise Unreadable("truncated element header")
    group, elem = _TAG.unpack_from(buf, off)
    tag = group << 16 | elem
    if group == 0xFFFE:
        return tag, off + 8, _U32.unpack_from(buf, off + 4)[0], b""
    if implicit:
        return tag, off + 8, _U32.unpack_from(buf, off + 4)[0], b""
    vr = bytes(buf[off + 4:off + 6])
    if vr in LONG_VRS:
        if off + 12 > len(buf):
            raise Unreadable("truncated element header")
        return tag, off + 12, _U32.unpack_from(buf, off + 8)[0], vr
    if not vr.isalpha():
        raise Unreadable("not explicit VR")
    return tag, off + 8, _U16.unpack_from(buf, off + 6)[0], vr


def _skip_undefined(buf, off: int, implicit: bool, depth: int = 0) -> int:
    """Offset after an undefined-length sequence (or item) starting at ``off``."""
    if depth > 32:
        raise Unreadable("sequences nested too deep")
    end = len(buf)
    while off < end:
        group, elem = _TAG.unpack_from(buf, off)
        tag = group << 16 | elem
        if tag == SEQ_END:
            return off + 8
        if tag == ITEM:
            length = _U32.unpack_from(buf, off + 4)[0]
            off += 8
            if length != UNDEFINED:
                off += length
                continue
            while True:  # the item's elements, to its delimiter
                if off + 8 > end:
                    raise Unreadable("truncated sequence item")
                if _TAG.unpack_from(buf, off) == (0xFFFE, 0xE00D):
                    off += 8
                    break
                _, off, length, _ = _element(buf, off, implicit)
                off = _skip_undefined(buf, off, implicit, depth + 1) if length == UNDEFINED else off + length
            continue
        raise Unreadable("unexpected element inside a sequence")
    raise Unreadable("unterminated sequence")
