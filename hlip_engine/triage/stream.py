"""The listener's fast C-STORE path: each instance streamed into the spool on the association's reader thread.

This is the C-GET fast path of :mod:`hlip_engine.pacs.dimse_receive` turned around: the reader thread parses
each C-STORE-RQ command by hand, writes the data set's fragments into a spool file as they arrive (no message
assembled in memory, no pydicom), and, when the last fragment is in, reads the file's header back
(headers.py), checks it as the C-STORE handler would (receive.py), renames it into its study's folder (or
deletes it) and sends the response at once. Where pynetdicom's internals are not what that path expects,
nothing is changed and the handler's path answers.
"""
from __future__ import annotations

import logging
import os
import struct
import threading
import time

from .headers import Unreadable, scan
from .instance_check import CANNOT_UNDERSTAND, MISMATCH, OUT_OF_RESOURCES, SUCCESS, check_instance
from .spool import SpoolFull, check_uid

log = logging.getLogger("hlip.listen")
META_START = 132  # preamble + "DICM"
CALM_S = 0.004


def install(assoc, handler) -> bool:
    """Take over ``assoc``'s C-STORE requests (see the module doc); False where it cannot."""
    from ..pacs.dimse_receive import _store_on_reactor, _tune

    _tune(assoc)
    if not _store_on_reactor(assoc, handler.store):  # whole messages (the fallback) answered on the reader
        return False
    dimse = assoc.dimse
    receive = getattr(dimse, "receive_primitive", None)
    if not callable(receive) or not hasattr(dimse, "message"):
        return False
    streaming = _spooling_store_class()(assoc, receive, handler)
    dimse.receive_primitive = streaming.receive
    checkpoint = getattr(assoc, "_reactor_checkpoint", None)
    if type(checkpoint) is threading.Event and checkpoint.is_set():
        # the association thread only serves what the reader thread does not (C-ECHO, release, abort): it
        # need not wake every millisecond, taking the interpreter from the readers each time
        assoc._reactor_checkpoint = _CalmCheckpoint()
    return True


class _CalmCheckpoint(threading.Event):
    """pynetdicom's reactor checkpoint (always set here) that makes each turn of its loop nap 4 ms longer."""

    def __init__(self):
        super().__init__()
        self.set()

    def wait(self, timeout=None) -> bool:
        time.sleep(CALM_S)
        return super().wait(timeout)


_CLASS = None


def _spooling_store_class():
    global _CLASS
    if _CLASS is None:
        from ..pacs.dimse_receive import _fast_socket_class, _StreamingStore, c_store_rsp_command, p_data_tf

        class SpoolingStore(_StreamingStore):
            """_StreamingStore whose files are spool files, checked before they are answered."""

            def __init__(self, assoc, receive, handler):
                self._handler = handler
                self._spool = handler.spool
                super().__init__(assoc, receive, self._open)

            def _open(self):
                if self._spool.bytes > self._spool.max_bytes:
                    return None  # answered out of resources
                return open(self._spool.new_partial(), "wb")  # noqa: SIM115 - closed in _finish

            def _finish(self) -> None:
                f, status, context_id, sop_class, sop_instance, message_id = self._current
                self._current = None
                if f is None:
                    status = OUT_OF_RESOURCES if status in (0xA702, 0xA700) else status
                    if status == OUT_OF_RESOURCES:
                        self._handler._refuse(status, sop_instance, "spool over its limit")
                else:
                    status = self._settle(f, status, context_id, sop_class, sop_instance)
                pdv = b"\x03" + c_store_rsp_command(sop_class, sop_instance, message_id, status)
                dul = self._assoc.dul
                if dul.state_machine.current_state == "Sta6" and isinstance(dul.socket, _fast_socket_class()):
                    dul.socket.send(p_data_tf(context_id, pdv))
                else:
                    rsp = self._p_data()
                    rsp.presentation_data_value_list.append([context_id, pdv])
                    dul.send_pdu(rsp)

            def _settle(self, f, status, context_id, sop_class, sop_instance) -> int:
                path = f.name
                try:
                    size = f.tell()
                    f.close()
                except OSError as e:
                    status, reason = OUT_OF_RESOURCES, f"cannot write to the spool ({e.strerror or e})"
                else:
                    reason = ""
                if status == SUCCESS:
                    status, reason = self._check_and_keep(path, size, context_id, sop_class, sop_instance)
                if status != SUCCESS:
                    try:
                        os.unlink(path)
                    except OSError:
                        pass
                    self._handler._refuse(status, sop_instance, reason or f"status 0x{status:04X}")
                return status

            def _check_and_keep(self, path, size, context_id, sop_class, sop_instance) -> tuple[int, str]:
                try:
                    cx = self._assoc._get_valid_context(sop_class, "", "scp", context_id=context_id)
                    ts = str(cx.transfer_syntax[0])
                    with open(path, "rb") as g:
                        data = g.read()
                    offset = META_START + 12 + struct.unpack_from("<I", data, META_START + 8)[0]
                    attrs = _attributes(memoryview(data)[offset:], ts)
                except (ValueError, OSError, struct.error, Unreadable) as e:
                    return CANNOT_UNDERSTAND, f"cannot parse the data set ({type(e).__name__})"
                try:
                    sop_uid = check_uid(sop_instance, "SOPInstanceUID")
                    study_uid, _ = check_instance(attrs, sop_uid, ts)
                except ValueError as e:
                    return MISMATCH, str(e)
                try:
                    first = self._spool.keep(path, study_uid, sop_uid, size)
                except SpoolFull as e:
                    return OUT_OF_RESOURCES, str(e)
                except OSError as e:
                    return OUT_OF_RESOURCES, f"cannot write to the spool ({e.strerror or e})"
                self._handler.received += 1
                if first and self._handler.on_study is not None:
                    self._handler.on_study(study_uid)
                return SUCCESS, ""

        _CLASS = SpoolingStore
    return _CLASS


def _attributes(view, ts: str) -> dict:
    from pydicom.uid import UID

    uid = UID(ts)
    if uid.is_little_endian and not uid.is_deflated:
        try:
            return scan(view, uid.is_implicit_VR)
        except (Unreadable, struct.error):
            pass
    import io

    from .instance_check import instance_attributes

    return instance_attributes(io.BytesIO(bytes(view)), ts)
