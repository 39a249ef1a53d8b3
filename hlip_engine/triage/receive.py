"""The DICOM side of the listener: a pynetdicom C-STORE SCP that checks each instance and spools it.

Accepted: every storage SOP class pynetdicom knows, in the transfer syntaxes the loader decodes (the native
ones always, each compressed one whose pydicom decoder is available here). Each C-STORE answers:

* 0x0000 once the instance is durably in the spool (spool.py);
* 0xA700 (out of resources) when the spool is over its size limit or the disk refuses the write;
* 0xA900 (data set does not match SOP class) when a UID is missing or invalid, or the pixel data is shorter
  than its rows, columns, samples, bits and frames say;
* 0xC000 (cannot understand) when the data set cannot be parsed.

The other instances of the association and of the study are kept. Every refusal is logged with the
instance's SOPInstanceUID and the reason; the logs never carry a patient's name or ID.
"""
from __future__ import annotations

import logging
import struct
from typing import Any

from .spool import Spool, SpoolFull, check_uid

log = logging.getLogger("hlip.listen")

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


class StoreHandler:
    """The EVT_C_STORE handler; ``on_study(uid)`` is called at each study's first instance of a delivery."""

    def __init__(self, spool: Spool, on_study=None):
        self.spool, self.on_study = spool, on_study
        self.received = self.refused = 0

    def __call__(self, event) -> int:
        """pynetdicom's EVT_C_STORE path (an association the fast path could not take over)."""
        return self.store(event.request, str(event.context.transfer_syntax))

    def store(self, req, ts: str) -> int:
        """Check and spool one C-STORE request's data set; the DIMSE status to answer."""
        sop_uid = str(req.AffectedSOPInstanceUID or "")
        try:
            study_uid, _ = check_instance(instance_attributes(req.DataSet, ts), sop_uid, ts)
            check_uid(sop_uid, "SOPInstanceUID")
        except ValueError as e:
            return self._refuse(MISMATCH, sop_uid, str(e))
        except Exception as e:  # noqa: BLE001 - whatever a broken data set makes the parser raise
            return self._refuse(CANNOT_UNDERSTAND, sop_uid, f"cannot parse the data set ({type(e).__name__})")
        size = 132 + 256 + req.DataSet.getbuffer().nbytes
        try:
            first = self.spool.store(study_uid, sop_uid, lambda f: _write(f, req, ts), size)
        except SpoolFull as e:
            return self._refuse(OUT_OF_RESOURCES, sop_uid, str(e))
        except OSError as e:
            return self._refuse(OUT_OF_RESOURCES, sop_uid, f"cannot write to the spool ({e.strerror or e})")
        self.received += 1
        if first and self.on_study is not None:
            self.on_study(study_uid)
        return SUCCESS

    def established(self, event) -> None:
        """Stream this association's C-STOREs into the spool on its reader thread (stream.py); pynetdicom's
        own path (``__call__``) where that cannot be."""
        from .stream import install

        try:
            install(event.assoc, self)
        except Exception as e:  # noqa: BLE001 - the plain path still works
            log.warning("fast receive path unavailable (%s); using pynetdicom's", e)

    def _refuse(self, status: int, sop_uid: str, reason: str) -> int:
        self.refused += 1
        log.warning("refused instance %s (status 0x%04X): %s", sop_uid or "(no SOPInstanceUID)", status, reason)
        return status


def _write(f, req, transfer_syntax: str) -> None:
    from ..pacs.dimse_receive import _write_instance

    _write_instance(f, req, transfer_syntax)


def make_ae(aet: str, handler: StoreHandler, *, max_associations: int = 16) -> tuple[Any, list]:
    """A pynetdicom AE that takes storage, and its event handlers."""
    from pynetdicom import AE, AllStoragePresentationContexts, evt
    from pynetdicom.sop_class import Verification

    ae = AE(ae_title=aet)
    ae.maximum_associations = max_associations
    ae.maximum_pdu_size = 4 << 20  # senders may send an instance in few large PDUs
    ae.network_timeout = ae.acse_timeout = ae.dimse_timeout = 60
    syntaxes = readable_transfer_syntaxes()
    for cx in AllStoragePresentationContexts:
        ae.add_supported_context(cx.abstract_syntax, syntaxes)
    ae.add_supported_context(Verification)
    return ae, [(evt.EVT_C_STORE, handler), (evt.EVT_ESTABLISHED, handler.established)]
