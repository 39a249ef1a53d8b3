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
from typing import Any

from .instance_check import (  # noqa: F401 - the statuses and checks, also for the listener's callers
    CANNOT_UNDERSTAND,
    MISMATCH,
    NATIVE,
    OUT_OF_RESOURCES,
    SUCCESS,
    check_instance,
    instance_attributes,
    readable_transfer_syntaxes,
)
from .spool import Spool, SpoolFull, check_uid

log = logging.getLogger("hlip.listen")



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
