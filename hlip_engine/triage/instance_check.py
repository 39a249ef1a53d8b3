"""What the listener checks in each received instance, and the DIMSE statuses it answers with.

Shared by pynetdicom's C-STORE path (receive.py) and the streaming path (stream.py).
"""
from __future__ import annotations

import struct

from .spool import check_uid

SUCCESS, OUT_OF_RESOURCES, MISMATCH, CANNOT_UNDERSTAND = 0x0000, 0xA700, 0xA900, 0xC000
NATIVE = ("1.2.840.10008.1.2", "1.2.840.10008.1.2.1", "1.2.840.10008.1.2.2", "1.2.840.10008.1.2.1.99")


def readable_transfer_syntaxes() -> list[str]:
    """Native syntaxes + each compressed one pydicom can decode here (with the installed plugins)."""
    from pydicom import uid
    from pydicom.pixels import get_decoder

    out = list(NATIVE)
    for ts in uid.AllTransferSyntaxes:
        if ts in out or not uid.UID(ts).is_compressed:
            continue
        try:
            if get_decoder(ts).is_available:
                out.append(str(ts))
        except (NotImplementedError, ValueError):
            continue
    return out


def instance_attributes(data, transfer_syntax: str) -> dict:
    """The attributes ``check_instance`` reads, from a data set's bytes (pydicom where the fast reader cannot)."""
    from pydicom.uid import UID

    from .headers import WANTED, Unreadable, scan

    uid = UID(transfer_syntax)
    if uid.is_little_endian and not uid.is_deflated:
        try:
            with data.getbuffer() as view:
                return scan(view, uid.is_implicit_VR)
        except (Unreadable, struct.error, ValueError):
            pass
    from pynetdicom.dsutils import decode

    ds = decode(data, uid.is_implicit_VR, uid.is_little_endian, uid.is_deflated)
    out = {name: ds.get(name) for name in WANTED.values() if name in ds}
    if "PixelData" in ds:
        out["PixelDataLength"] = len(ds.PixelData)
    return out


def check_instance(attrs: dict, sop_uid: str, transfer_syntax: str) -> tuple[str, str]:
    """(StudyInstanceUID, SeriesInstanceUID) of a received instance's attributes; ValueError saying what is
    wrong."""
    study = check_uid(attrs.get("StudyInstanceUID", ""), "StudyInstanceUID")
    series = check_uid(attrs.get("SeriesInstanceUID", ""), "SeriesInstanceUID")
    own = str(attrs.get("SOPInstanceUID", "") or "").strip()
    if own and own != sop_uid:
        raise ValueError(f"SOPInstanceUID {own} differs from the C-STORE request's")
    if "PixelDataLength" in attrs and transfer_syntax in NATIVE[:3]:
        bits = int(attrs.get("BitsAllocated") or 0)
        if bits >= 8:
            want = (int(attrs.get("Rows") or 0) * int(attrs.get("Columns") or 0)
                    * int(attrs.get("SamplesPerPixel") or 1) * (bits // 8) * int(attrs.get("NumberOfFrames") or 1))
            have = int(attrs["PixelDataLength"])
            if have < want:
                raise ValueError(f"pixel data truncated: {have} bytes, rows x columns x frames need {want}")
    return study, series
