"""A small, strict reader for the common case: a Part-10 file in little-endian transfer syntax.

Why: discovery must handle a 10,000-file archive in seconds on two cores. pydicom builds an object for
every element; here we walk the top-level elements with ``struct`` over one ``pread`` buffer, decode
only the tags asked for, skip everything else by its length (nested sequences included), and note where
(7FE0,0010) Pixel Data starts. Anything unusual (no preamble, big endian, deflate, explicit UN of
undefined length) returns None and the caller falls back to pydicom.
"""
from __future__ import annotations

import os
import struct

_LONG_VRS = {b"OB", b"OW", b"OF", b"OD", b"OL", b"OV", b"SQ", b"UN", b"UC", b"UR", b"UT", b"SV", b"UV"}
_IMPLICIT_LE = "1.2.840.10008.1.2"
_UNSUPPORTED_TS = {"1.2.840.10008.1.2.2", "1.2.840.10008.1.2.1.99"}  # big endian, deflate
_PIXEL_TAGS = {0x7FE00010, 0x7FE00008, 0x7FE00009}
_CHUNK = 16384
_SHORT_VRS = {b"AE", b"AS", b"AT", b"CS", b"DA", b"DS", b"DT", b"FL", b"FD", b"IS", b"LO", b"LT", b"PN", b"SH",
              b"SL", b"SS", b"ST", b"TM", b"UI", b"UL", b"US"}
_EXPLICIT = struct.Struct("<HH2sH")  # group, element, VR, 16-bit length
_IMPLICIT = struct.Struct("<HHI")  # group, element, 32-bit length
_U16 = struct.Struct("<H")
_U32 = struct.Struct("<I")
_TAG = struct.Struct("<HH")


class _Unsupported(Exception):
    """Layout this reader does not handle: use pydicom."""


class _File:
    """Random access to a file through one cached window (absolute offsets)."""

    def __init__(self, fd: int, size: int):
        self.fd, self.size = fd, size
        self.base, self.buf = 0, os.pread(fd, _CHUNK, 0)

    def get(self, pos: int, n: int) -> bytes:
        if pos < self.base or pos + n > self.base + len(self.buf):
            if pos + n > self.size:
                raise ValueError(f"element at byte {pos} runs past the end of the file ({self.size} bytes)")
            self.base, self.buf = pos, os.pread(self.fd, max(n, _CHUNK), pos)
        start = pos - self.base
        return self.buf[start:start + n]


def _skip_items(f: _File, pos: int, explicit: bool) -> int:
    """Skip the items of an undefined-length sequence starting at ``pos``; return the position after it."""
    while True:
        group, elem = _TAG.unpack(f.get(pos, 4))
        length = _U32.unpack(f.get(pos + 4, 4))[0]
        pos += 8
        if (group, elem) == (0xFFFE, 0xE0DD):  # sequence delimitation
            return pos
        if (group, elem) != (0xFFFE, 0xE000):
            raise ValueError(f"malformed sequence item ({group:04X},{elem:04X}) at byte {pos - 8}")
        if length != 0xFFFFFFFF:
            pos += length
            continue
        pos = _skip_elements(f, pos, explicit, until_item_end=True)


def _element_header(f: _File, pos: int, explicit: bool):
    """(tag, vr bytes or None, length, value start) of the element at ``pos``."""
    head = f.get(pos, 12) if pos + 12 <= f.size else f.get(pos, 8)
    group, elem = _TAG.unpack_from(head, 0)
    tag = group << 16 | elem
    if group == 0xFFFE:  # item / delimitation items carry no VR
        return tag, None, _U32.unpack_from(head, 4)[0], pos + 8
    if explicit:
        vr = head[4:6]
        if not (vr.isalpha() and vr.isupper()):  # e.g. implicit data under an explicit transfer syntax
            raise _Unsupported(f"no VR at byte {pos}")
        if vr in _LONG_VRS:
            if len(head) < 12:
                raise ValueError(f"element header cut short at byte {pos}")
            return tag, vr, _U32.unpack_from(head, 8)[0], pos + 12
        return tag, vr, _U16.unpack_from(head, 6)[0], pos + 8
    return tag, None, _U32.unpack_from(head, 4)[0], pos + 8


def _skip_elements(f: _File, pos: int, explicit: bool, until_item_end: bool) -> int:
    while True:
        tag, vr, length, start = _element_header(f, pos, explicit)
        if tag == 0xFFFEE00D:  # item delimitation
            return start
        if length == 0xFFFFFFFF:
            if explicit and vr == b"UN":
                raise _Unsupported("undefined-length UN")
            pos = _skip_items(f, start, explicit)
        else:
            pos = start + length
        if not until_item_end:
            return pos


def read_fast(path: str, wanted: dict[int, str]):
    """Parse a Part-10 little-endian header.

    Returns (raw values {tag: (vr or None, bytes)}, transfer syntax, media SOP class, has_pixels, pixel offset,
    pixel length, explicit) or None when the layout needs pydicom. Raises OSError / ValueError on broken files.
    """
    fd = os.open(path, os.O_RDONLY | getattr(os, "O_BINARY", 0))
    try:
        f = _File(fd, os.fstat(fd).st_size)
        if len(f.buf) < 144 or f.buf[128:132] != b"DICM":
            return None
        # File meta information: explicit VR little endian, group 0002.
        pos, ts, media_sop = 132, "", ""
        while pos + 8 <= f.size:
            tag, vr, length, start = _element_header(f, pos, explicit=True)
            if tag >> 16 != 0x0002:
                break
            if length == 0xFFFFFFFF:
                return None
            if tag == 0x00020010:
                ts = f.get(start, length).decode("ascii", "replace").strip(" \x00")
            elif tag == 0x00020002:
                media_sop = f.get(start, length).decode("ascii", "replace").strip(" \x00")
            pos = start + length
        if not ts or ts in _UNSUPPORTED_TS:
            return None
        explicit = ts != _IMPLICIT_LE
        values: dict[int, tuple] = {}
        has_pixels, offset, pix_len = False, None, None
        size = f.size
        while pos + 8 <= size:
            i = pos - f.base
            if 0 <= i and i + 12 <= len(f.buf):  # the common case, inlined: the element header is in the window
                if explicit:
                    group, elem, vr, length = _EXPLICIT.unpack_from(f.buf, i)
                    if vr in _LONG_VRS:
                        length = _U32.unpack_from(f.buf, i + 8)[0]
                        start = pos + 12
                    elif vr in _SHORT_VRS:
                        start = pos + 8
                    else:
                        tag, vr, length, start = _element_header(f, pos, explicit)  # items, or raises
                        group, elem = tag >> 16, tag & 0xFFFF
                else:
                    group, elem, length = _IMPLICIT.unpack_from(f.buf, i)
                    vr, start = None, pos + 8
                tag = group << 16 | elem
            else:
                tag, vr, length, start = _element_header(f, pos, explicit)
            if tag in _PIXEL_TAGS:
                has_pixels = length != 0
                if length != 0xFFFFFFFF and tag == 0x7FE00010:
                    offset, pix_len = start, length
                break
            if length == 0xFFFFFFFF:
                if explicit and vr == b"UN":
                    return None
                pos = _skip_items(f, start, explicit)
                continue
            if tag in wanted:
                values[tag] = (vr.decode("ascii", "replace") if vr else None, f.get(start, length))
            pos = start + length
            if pos > size:
                raise ValueError(f"element ({tag >> 16:04X},{tag & 0xFFFF:04X}) runs past the end of the file")
        return values, ts, media_sop, has_pixels, offset, pix_len, explicit
    except _Unsupported:
        return None
    finally:
        os.close(fd)
