"""Receiving a C-GET fast: instances streamed to their files on pynetdicom's DUL thread, undecoded.

pynetdicom hands every PDU of a C-STORE from its reader thread to the thread that runs ``send_c_get``, builds
each data set in memory and encodes its File Meta Information and response with pydicom: with a PACS that
waits for each response before sending the next instance, those hand-offs sit on the critical path. Here:

- ``_tune``: the reader blocks on the socket and a wake-up socket (poked when we queue something to send)
  instead of napping, reads each PDU in as few calls as the kernel allows, and a release takes ~1 ms;
- ``_store_on_reactor`` / ``_StreamingStore``: each C-STORE command is parsed by hand, its file opened with
  hand-encoded file meta (``file_meta_bytes``), each data fragment written as it arrives, and the C-STORE
  response (``c_store_rsp_command``) sent at once, all on the reader thread; pixel data is never decoded.

Every piece checks that pynetdicom's internals look as expected and otherwise leaves pynetdicom's own path in
place (tests/pacs/test_pacs_dimse_speed.py fails if the fast path silently goes unused).
"""
from __future__ import annotations

import contextlib
import io
import logging
import queue
import select
import socket
import struct
import time

PENDING = (0xFF00, 0xFF01)
REACTOR_DELAY = 0.00005  # s; pynetdicom's reactor naps 1 ms between PDUs by default (used where we cannot tune it)
# pending C-GET responses are handed to ``send_c_get`` (progress) at most this often: pynetdicom builds a pydicom
# data set of each on the requesting thread (~0.15 ms apiece, on the CPU the PACS and the reader share)
PROGRESS_INTERVAL = 0.02  # s
IDLE_WAIT = 0.005  # s; the tuned reactor blocks in select() this long at most when there is nothing to do


# --- writing received instances --------------------------------------------------------------------
def _write_instance(f, req, transfer_syntax: str) -> None:
    """Write a received C-STORE data set to the open file ``f`` in the DICOM file format: preamble, File Meta
    Information, then the data set exactly as it came over the wire (never decoded, pixel data included),
    from pynetdicom's buffer, uncopied."""
    f.write(file_meta_bytes(req.AffectedSOPClassUID, req.AffectedSOPInstanceUID, transfer_syntax))
    with req.DataSet.getbuffer() as view:
        f.write(view)


def file_meta_bytes(sop_class_uid: str, sop_instance_uid: str, transfer_syntax: str) -> bytes:
    """Preamble, ``DICM`` and the File Meta Information (group 0002, explicit VR little endian), byte for byte
    what pynetdicom's ``Event.encoded_dataset()`` writes, without building and encoding a pydicom dataset
    (about 0.2 ms an instance, a tenth of a C-GET sub-operation)."""
    from pynetdicom import PYNETDICOM_IMPLEMENTATION_UID, PYNETDICOM_IMPLEMENTATION_VERSION

    def text(value, pad: bytes) -> bytes:
        b = str(value).encode("ascii")
        return b + pad if len(b) % 2 else b

    def short(elem: int, vr: bytes, value: bytes) -> bytes:
        return struct.pack("<HH2sH", 2, elem, vr, len(value)) + value

    body = b"".join((
        struct.pack("<HH2sxxI", 2, 0x0001, b"OB", 2), b"\x00\x01",
        short(0x0002, b"UI", text(sop_class_uid, b"\x00")),
        short(0x0003, b"UI", text(sop_instance_uid, b"\x00")),
        short(0x0010, b"UI", text(transfer_syntax, b"\x00")),
        short(0x0012, b"UI", text(PYNETDICOM_IMPLEMENTATION_UID, b"\x00")),
        short(0x0013, b"SH", text(PYNETDICOM_IMPLEMENTATION_VERSION, b" ")),
    ))
    return b"\x00" * 128 + b"DICM" + struct.pack("<HH2sHI", 2, 0x0000, b"UL", 4, len(body)) + body


# --- an event-driven reactor for pynetdicom's DUL thread ------------------------------------------------
# pynetdicom's DUL thread polls: select() with a zero timeout on the socket, then a nap of ``_run_loop_delay``
# (1 ms) whenever a loop found nothing to do, and it reads a PDU 4 kB per recv(). Over a C-GET that is two
# Python threads trading the GIL thousands of times a second, and each sub-operation waits for a nap before
# its C-STORE response leaves. ``_tune`` makes one established association's reactor block in select() on its
# socket *and* on a wake-up socket that is poked whenever our side queues a primitive (a C-STORE response, a
# release): it sleeps while idle, wakes at once for either, and reads each PDU with recv_into in as few calls
# as the kernel allows. Where pynetdicom's internals are not what this expects it only shortens the nap.
class _WakingQueue(queue.Queue):
    """The DUL's to-provider queue that also pokes the reactor's select()."""

    def __init__(self, wake: socket.socket):
        super().__init__()
        self._wake = wake

    def put(self, item, block=True, timeout=None):
        super().put(item, block, timeout)
        with contextlib.suppress(OSError):  # full (the reactor is already poked) or closed (it is gone)
            self._wake.send(b"\x00")


_FAST_SOCKET = None


def _fast_socket_class():
    global _FAST_SOCKET
    if _FAST_SOCKET is None:
        from pynetdicom.transport import AssociationSocket

        class FastSocket(AssociationSocket):
            _hlip_wake: socket.socket | None = None

            @property
            def ready(self) -> bool:
                raw, wake = self.socket, self._hlip_wake
                if raw is None or self._is_connected is False:
                    return False
                try:
                    readable, _, _ = select.select([raw, wake], [], [], IDLE_WAIT)
                except (OSError, TimeoutError, ValueError):
                    self.event_queue.put("Evt17")  # what pynetdicom does: transport connection closed
                    return False
                if wake in readable:
                    with contextlib.suppress(OSError):
                        wake.recv(4096)
                return raw in readable

            def recv(self, nr_bytes: int) -> bytearray:
                buf = bytearray(nr_bytes)
                got = 0
                with memoryview(buf) as view:
                    while got < nr_bytes:
                        n = self.socket.recv_into(view[got:])
                        if not n:  # connection closed: return what there is, as pynetdicom does
                            break
                        got += n
                if got < nr_bytes:
                    del buf[got:]
                return buf

        _FAST_SOCKET = FastSocket
    return _FAST_SOCKET


def _tune(assoc):
    """Make an established association's reactor event-driven (see above); returns what ``_untune`` closes."""
    dul = getattr(assoc, "dul", None)
    if dul is None or not hasattr(dul, "_run_loop_delay"):
        return None
    if not logging.getLogger("pynetdicom").isEnabledFor(logging.DEBUG):
        # pynetdicom's standard handlers log every PDU and DIMSE message at debug level, under the AE's lock
        from pynetdicom import _handlers, evt

        for event, handler in ((evt.EVT_PDU_RECV, _handlers.standard_pdu_recv_handler),
                               (evt.EVT_PDU_SENT, _handlers.standard_pdu_sent_handler),
                               (evt.EVT_DIMSE_RECV, _handlers.standard_dimse_recv_handler),
                               (evt.EVT_DIMSE_SENT, _handlers.standard_dimse_sent_handler)):
            with contextlib.suppress(Exception):
                assoc.unbind(event, handler)
    try:
        from pynetdicom.transport import AssociationSocket
    except ImportError:
        AssociationSocket = None
    sock = getattr(dul, "socket", None)
    raw = getattr(sock, "socket", None)
    old = getattr(dul, "to_provider_queue", None)
    if (AssociationSocket is None or type(sock) is not AssociationSocket or type(raw) is not socket.socket
            or type(old) is not queue.Queue or not hasattr(sock, "_is_connected")):
        dul._run_loop_delay = REACTOR_DELAY
        return None
    wake_r, wake_w = socket.socketpair()
    wake_r.setblocking(False)
    wake_w.setblocking(False)
    new = _WakingQueue(wake_w)
    dul.to_provider_queue = new
    while True:  # nothing should be pending once the association is up; keep it, in order, if it is
        try:
            new.put(old.get_nowait())
        except queue.Empty:
            break
    sock._hlip_wake = wake_r  # before the class changes: the reactor may call the new ``ready`` at once
    sock.__class__ = _fast_socket_class()
    dul._run_loop_delay = 0.0  # the reactor's own nap becomes a yield; the waiting happens in select()
    stop = getattr(dul, "stop_dul", None)
    state = getattr(getattr(dul, "state_machine", None), "current_state", None)
    if callable(stop) and isinstance(state, str):
        dul.stop_dul = _stopper(dul, stop, wake_w)
    return wake_r, wake_w


def _stopper(dul, stop, wake_w):
    """``dul.stop_dul`` that also wakes the reactor out of select(), and waits a moment for state Sta1.

    pynetdicom's ``Association.kill`` calls ``stop_dul`` and, when the state machine has not quite reached
    Sta1 (idle) yet, as right after a release, sleeps 10 ms before it tries again: 10 ms per association.
    """
    def stop_dul() -> bool:
        deadline = time.monotonic() + 0.05
        while dul.state_machine.current_state != "Sta1" and dul.is_alive() and time.monotonic() < deadline:
            time.sleep(0.0002)
        if dul.state_machine.current_state == "Sta1":
            dul._kill_thread = True
            with contextlib.suppress(OSError):
                wake_w.send(b"\x00")
        return stop()

    return stop_dul


class _StoreQueue(queue.Queue):
    """The DIMSE message queue of a C-GET association that answers C-STORE requests as they are put on it."""

    def __init__(self, assoc, store):
        from pynetdicom.dimse_primitives import C_STORE
        from pynetdicom.pdu_primitives import P_DATA

        super().__init__()
        self._assoc, self._store, self._c_store, self._p_data = assoc, store, C_STORE, P_DATA

    def put(self, item, block=True, timeout=None):
        req = item[1] if isinstance(item, tuple) and len(item) == 2 else None
        if not isinstance(req, self._c_store):
            return super().put(item, block, timeout)
        assoc = self._assoc
        if not isinstance(getattr(req, "DataSet", None), io.BytesIO):
            return assoc._c_store_scp(req)  # not what we know how to write: pynetdicom's own SCP and handler
        try:
            cx = assoc._get_valid_context(req.AffectedSOPClassUID, "", "scp", context_id=req._context_id)
        except ValueError:
            status = 0x0122  # SOP class not supported (as pynetdicom answers)
        else:
            try:
                status = self._store(req, cx.transfer_syntax[0])
            except Exception:  # noqa: BLE001  (the PACS is told, as pynetdicom tells it: 0xC211)
                logging.getLogger(__name__).exception("writing a received instance failed")
                status = 0xC211
        rsp = self._p_data()
        rsp.presentation_data_value_list.append(
            [req._context_id, b"\x03" + c_store_rsp_command(req.AffectedSOPClassUID, req.AffectedSOPInstanceUID,
                                                            req.MessageID, status)])
        assoc.dul.send_pdu(rsp)


_COMMAND_UIDS = (0x0002, 0x1000)  # Affected SOP Class UID, Affected SOP Instance UID
_COMMAND_US = (0x0100, 0x0110, 0x0120, 0x0800, 0x0900, 0x1020, 0x1021, 0x1022, 0x1023)


def parse_command(fragment) -> dict | None:
    """The elements of a whole command set (a PDV fragment, message control header first) that the C-GET fast
    path reads, ``{element number: value}`` (group 0000: UIDs as str, US as int); None if it is not that."""
    body = memoryview(fragment)[1:]
    found = {}
    off, end = 0, len(body)
    try:
        while off < end:
            group, elem, length = struct.unpack_from("<HHI", body, off)
            off += 8
            if group != 0 or off + length > end:
                return None
            if elem in _COMMAND_UIDS:
                found[elem] = bytes(body[off:off + length]).rstrip(b"\x00 ").decode("ascii")
            elif elem in _COMMAND_US:
                if length != 2:
                    return None
                found[elem] = struct.unpack_from("<H", body, off)[0]
            off += length
    except (struct.error, UnicodeDecodeError):
        return None
    return found


def parse_c_store_rq(fragment) -> tuple[str, str, int] | None:
    """``(SOP class UID, SOP instance UID, message ID)`` of a command fragment that holds a whole C-STORE-RQ
    command set with a data set to follow; None for anything else."""
    found = parse_command(fragment)
    if (not found or found.get(0x0100) != 0x0001 or found.get(0x0800, 0x0101) == 0x0101
            or not {0x0002, 0x1000, 0x0110} <= set(found)):
        return None
    return found[0x0002], found[0x1000], found[0x0110]


def p_data_tf(context_id: int, pdv: bytes) -> bytes:
    """A P-DATA-TF PDU with one presentation data value item (``pdv``: message control header, then data)."""
    return struct.pack(">BBIIB", 0x04, 0, 4 + 1 + len(pdv), 1 + len(pdv), context_id) + pdv


def c_store_rsp_command(sop_class_uid: str, sop_instance_uid: str, message_id: int, status: int) -> bytes:
    """A C-STORE-RSP command set (implicit VR little endian, group length first), byte for byte what pynetdicom
    encodes with pydicom for the same response (about 0.3 ms an instance)."""
    def elem(tag: int, value: bytes) -> bytes:
        return struct.pack("<HHI", 0, tag, len(value)) + value

    def uid(value) -> bytes:
        b = str(value).encode("ascii")
        return b + b"\x00" if len(b) % 2 else b

    body = b"".join((elem(0x0002, uid(sop_class_uid)), elem(0x0100, struct.pack("<H", 0x8001)),
                     elem(0x0120, struct.pack("<H", message_id)), elem(0x0800, struct.pack("<H", 0x0101)),
                     elem(0x0900, struct.pack("<H", status)), elem(0x1000, uid(sop_instance_uid))))
    return elem(0x0000, struct.pack("<I", len(body))) + body


class _StreamingStore:
    """Writes each C-STORE request's data set straight into its file as the P-DATA fragments arrive.

    Installed as the association's ``dimse.receive_primitive`` (the DUL thread calls it with every P-DATA
    primitive): command sets go to pynetdicom as usual; once one turns out to be a C-STORE-RQ with a data set,
    the file is opened with its File Meta Information, and each following data set fragment is written to it
    from the received PDU (no assembling in memory, no copy per fragment); after the last one the file is
    closed and the C-STORE response queued. Anything else, or anything unexpected, is pynetdicom's.
    """

    def __init__(self, assoc, receive, open_next, finished=None):
        from pynetdicom.dimse_messages import C_STORE_RQ
        from pynetdicom.dimse_primitives import C_GET
        from pynetdicom.pdu_primitives import P_DATA

        self._assoc, self._receive, self._open_next, self._finished = assoc, receive, open_next, finished
        self._rq_type, self._p_data, self._c_get = C_STORE_RQ, P_DATA, C_GET
        self._current = None  # [file or None, status, context id, SOP class, SOP instance, message id]
        self._last_pending = 0.0  # when a pending C-GET-RSP was last handed to send_c_get

    def receive(self, primitive) -> None:
        items = primitive.presentation_data_value_list
        if self._current is None:
            # a whole C-STORE-RQ command set in the first fragment (as PACSes send it) is read here, without
            # pydicom; anything else is pynetdicom's
            found = None
            if items and self._assoc.dimse.message is None and items[0][1][0] & 3 == 3:
                found = parse_command(items[0][1])
            if found and found.get(0x0100) == 0x0001 and found.get(0x0800, 0x0101) != 0x0101 and (
                    {0x0002, 0x1000, 0x0110} <= set(found)):  # a C-STORE-RQ, its data set to follow
                self._start(items[0][0], found[0x0002], found[0x1000], found[0x0110])
                items = items[1:]
            elif found and len(items) == 1 and self._pending_get_rsp(items[0][0], found):
                return
            else:
                self._receive(primitive)
                self._maybe_take_over()
                return
        for i, (context_id, data) in enumerate(items):
            cur = self._current
            if cur is None:  # the data set ended and this PDU goes on with another message: start over with it
                rest = self._p_data()
                rest.presentation_data_value_list.extend(items[i:])
                self.receive(rest)
                return
            header = data[0]
            if header & 1 or context_id != cur[2]:
                raise ValueError("a command fragment or another context inside a C-STORE data set")
            f = cur[0]
            if f is not None:
                try:
                    with memoryview(data) as view:
                        f.write(view[1:])
                except OSError:
                    logging.getLogger(__name__).exception("writing a received instance failed")
                    cur[0], cur[1] = None, 0xA700  # out of resources
                    f.close()
            if header & 2:
                self._finish()

    def _maybe_take_over(self) -> None:
        dimse = self._assoc.dimse
        msg = dimse.message
        if (not isinstance(msg, self._rq_type) or getattr(msg, "_data_set_file", None) is not None
                or not isinstance(getattr(msg, "data_set", None), io.BytesIO)):
            return
        cs = msg.command_set
        self._start(msg.context_id, cs.AffectedSOPClassUID, cs.AffectedSOPInstanceUID, cs.MessageID, msg.data_set)
        dimse.message = None  # pynetdicom starts a new message with the next primitive

    def _start(self, context_id, sop_class, sop_instance, message_id, data_set=None) -> None:
        cur = [None, 0x0000, context_id, sop_class, sop_instance, message_id]
        try:
            cx = self._assoc._get_valid_context(sop_class, "", "scp", context_id=context_id)
        except ValueError:
            cur[1] = 0x0122  # SOP class not supported (as pynetdicom answers)
        else:
            try:
                f = self._open_next()
            except OSError:
                logging.getLogger(__name__).exception("cannot create the file for a received instance")
                f, cur[1] = None, 0xA700
            if f is None:
                cur[1] = cur[1] or 0xA702  # refused: nothing asked for this
            else:
                try:
                    f.write(file_meta_bytes(sop_class, sop_instance, cx.transfer_syntax[0]))
                    if data_set is not None:
                        with data_set.getbuffer() as view:  # fragments that came with the command, if any
                            f.write(view)
                    cur[0] = f
                except OSError:
                    logging.getLogger(__name__).exception("writing a received instance failed")
                    f.close()
                    cur[1] = 0xA700
        self._current = cur

    def _pending_get_rsp(self, context_id: int, found: dict) -> bool:
        """A pending C-GET-RSP without identifier, handed to ``send_c_get`` as the primitive pynetdicom would
        build (without decoding its command set with pydicom on the DUL thread, 0.3 ms an instance); at most
        one per ``PROGRESS_INTERVAL`` (and the one saying none remain), the others taken as read."""
        if found.get(0x0100) != 0x8010 or found.get(0x0900) not in PENDING or found.get(0x0800) != 0x0101:
            return False
        if 0x0120 not in found:
            return False
        now = time.monotonic()
        if now - self._last_pending < PROGRESS_INTERVAL and found.get(0x1020, 1) != 0:
            return True  # answered; not handed on: send_c_get decodes each one with pydicom (a progress tick)
        self._last_pending = now
        rsp = self._c_get()
        rsp.MessageIDBeingRespondedTo = found[0x0120]
        rsp.Status = found[0x0900]
        if 0x0002 in found:
            rsp.AffectedSOPClassUID = found[0x0002]
        for elem, name in ((0x1020, "NumberOfRemainingSuboperations"), (0x1021, "NumberOfCompletedSuboperations"),
                           (0x1022, "NumberOfFailedSuboperations"), (0x1023, "NumberOfWarningSuboperations")):
            if elem in found:
                setattr(rsp, name, found[elem])
        rsp.Identifier = io.BytesIO()
        rsp._context_id = context_id
        rsp._dataset_path = rsp._dataset_file = None
        self._assoc.dimse.msg_queue.put((context_id, rsp))
        return True

    def _finish(self) -> None:
        f, status, context_id, sop_class, sop_instance, message_id = self._current
        self._current = None
        if f is not None:
            try:
                f.close()
            except OSError:
                logging.getLogger(__name__).exception("writing a received instance failed")
                status = 0xA700
        pdv = b"\x03" + c_store_rsp_command(sop_class, sop_instance, message_id, status)
        dul = self._assoc.dul
        sock = dul.socket
        if dul.state_machine.current_state == "Sta6" and isinstance(sock, _fast_socket_class()):
            # we are the DUL thread, in Sta6, where sending P-DATA changes no state: send it now rather than
            # queue it for the next turn of the reactor (what pynetdicom's DT-1 would do, minus the wait)
            sock.send(p_data_tf(context_id, pdv))
        else:
            rsp = self._p_data()
            rsp.presentation_data_value_list.append([context_id, pdv])
            dul.send_pdu(rsp)
        if self._finished is not None:
            self._finished(status == 0x0000 and f is not None)


def _store_on_reactor(assoc, store, open_next=None, finished=None) -> bool:
    """Answer a C-GET's C-STORE sub-operations on the DUL thread, as each request arrives.

    pynetdicom hands each decoded C-STORE request through a queue to the thread in ``send_c_get``, which runs
    the handler and queues the response back to the DUL thread: two thread hand-offs per instance on the
    critical path, since the PACS waits for each response before it sends the next instance. Writing the
    instance and queueing the response where the request is decoded leaves one thread on that path, as in
    dcmtk's getscu; ``send_c_get``'s thread then only reads the C-GET responses. With ``open_next`` the data
    set is written to its file fragment by fragment as it arrives (:class:`_StreamingStore`); a request that
    still reaches the message queue whole is written by ``store(request, transfer_syntax) -> status``.
    Returns False (and changes nothing) where pynetdicom is not as expected.
    """
    dimse = getattr(assoc, "dimse", None)
    old = getattr(dimse, "msg_queue", None)
    if (type(old) is not queue.Queue or not callable(getattr(assoc, "_c_store_scp", None))
            or not callable(getattr(assoc, "_get_valid_context", None)) or getattr(assoc, "dul", None) is None):
        return False
    new = _StoreQueue(assoc, store)
    dimse.msg_queue = new
    while True:
        try:
            new.put(old.get_nowait())
        except queue.Empty:
            break
    receive = getattr(dimse, "receive_primitive", None)
    if open_next is not None and callable(receive) and hasattr(dimse, "message"):
        dimse.receive_primitive = _StreamingStore(assoc, receive, open_next, finished).receive
    return True


def _untune(assoc, wake) -> None:
    """Close the wake-up sockets once the reactor thread is gone (it may be in select() on them until then)."""
    if not wake:
        return
    dul = getattr(assoc, "dul", None)
    if dul is not None and dul.is_alive():
        dul.join(timeout=1.0)
        if dul.is_alive():
            return  # leave them to the garbage collector rather than close a descriptor in use
    for s in wake:
        s.close()
