"""DIMSE: C-ECHO, C-FIND (study and series level, Study Root), C-GET, and C-MOVE to our own storage SCP.

Our AE title (the *calling* AE, ``HLIPX`` by default) must be known to the PACS: for C-GET only the AE title
usually matters; for C-MOVE the PACS also needs our host and the ``--move-port`` our storage SCP listens on.
Received instances are written as they arrive, undecoded (File Meta Information, then the data set as it came
over the wire), into the series' temporary folder. A C-GET streams each data set into its file fragment by
fragment on pynetdicom's DUL thread and answers it there (dimse_receive.py: that, 128 kB PDUs and an
event-driven reactor make it ~2.5 x faster than pynetdicom's own path). Association problems become one PacsError naming the cause (refused connection, unknown
called AE, our AE not registered, timeout, association broken off mid-transfer).
"""
from __future__ import annotations

import contextlib
import io
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path

from .client import PacsClient
from .dimse_receive import (
    PENDING,
    _store_on_reactor,
    _tune,
    _untune,
    _write_instance,
)
from .errors import PacsError
from .nodes import Node
from .query import (
    PATIENT_FIELDS,
    SERIES_FIELDS,
    STUDY_FIELDS,
    check_uid,
    from_dataset,
    matching_keys,
    series_record,
    sort_series,
    study_record,
)

# Storage SOP classes we accept in C-GET/C-MOVE (cross-sectional imaging first; 128 contexts at most in all)
STORAGE_CLASSES = (
    "1.2.840.10008.5.1.4.1.1.2", "1.2.840.10008.5.1.4.1.1.2.1", "1.2.840.10008.5.1.4.1.1.2.2",  # CT
    "1.2.840.10008.5.1.4.1.1.4", "1.2.840.10008.5.1.4.1.1.4.1", "1.2.840.10008.5.1.4.1.1.4.4",  # MR
    "1.2.840.10008.5.1.4.1.1.4.2", "1.2.840.10008.5.1.4.1.1.4.3",
    "1.2.840.10008.5.1.4.1.1.128", "1.2.840.10008.5.1.4.1.1.130", "1.2.840.10008.5.1.4.1.1.128.1",  # PET
    "1.2.840.10008.5.1.4.1.1.20",  # NM
    "1.2.840.10008.5.1.4.1.1.7", "1.2.840.10008.5.1.4.1.1.7.1", "1.2.840.10008.5.1.4.1.1.7.2",  # SC
    "1.2.840.10008.5.1.4.1.1.7.3", "1.2.840.10008.5.1.4.1.1.7.4",
    "1.2.840.10008.5.1.4.1.1.1", "1.2.840.10008.5.1.4.1.1.1.1", "1.2.840.10008.5.1.4.1.1.1.1.1",  # CR, DX
    "1.2.840.10008.5.1.4.1.1.1.2", "1.2.840.10008.5.1.4.1.1.13.1.3",  # MG, tomosynthesis
    "1.2.840.10008.5.1.4.1.1.6.1", "1.2.840.10008.5.1.4.1.1.3.1",  # US
    "1.2.840.10008.5.1.4.1.1.12.1", "1.2.840.10008.5.1.4.1.1.12.1.1", "1.2.840.10008.5.1.4.1.1.12.2",  # XA, RF
    "1.2.840.10008.5.1.4.1.1.66", "1.2.840.10008.5.1.4.1.1.66.1", "1.2.840.10008.5.1.4.1.1.66.4",  # raw, reg, SEG
    "1.2.840.10008.5.1.4.1.1.481.2", "1.2.840.10008.5.1.4.1.1.481.3",  # RT dose, structures
    "1.2.840.10008.5.1.4.1.1.11.1", "1.2.840.10008.5.1.4.1.1.88.11", "1.2.840.10008.5.1.4.1.1.88.22",  # GSPS, SR
    "1.2.840.10008.5.1.4.1.1.88.33", "1.2.840.10008.5.1.4.1.1.88.59", "1.2.840.10008.5.1.4.1.1.104.1",
    "1.2.840.10008.5.1.4.1.1.77.1.4",  # VL photographic
    "1.2.840.10008.5.1.4.1.1.88.34", "1.2.840.10008.5.1.4.1.1.88.35",  # Comprehensive 3D SR, Extensible SR
    "1.2.840.10008.5.1.4.1.1.30",  # Parametric Map (hlip report's relevance maps)
)
TRANSFER_SYNTAXES = (
    "1.2.840.10008.1.2.1", "1.2.840.10008.1.2",  # explicit / implicit VR little endian
    "1.2.840.10008.1.2.4.70", "1.2.840.10008.1.2.4.57", "1.2.840.10008.1.2.4.80", "1.2.840.10008.1.2.4.90",
    "1.2.840.10008.1.2.5", "1.2.840.10008.1.2.4.50", "1.2.840.10008.1.2.4.51", "1.2.840.10008.1.2.4.81",
    "1.2.840.10008.1.2.4.91", "1.2.840.10008.1.2.1.99", "1.2.840.10008.1.2.2",
)
# The maximum PDU length we propose. pynetdicom's AE.maximum_pdu_size only applies to associations it *accepts*;
# a requested one takes associate(max_pdu=...), 16382 by default. 0 means unlimited: DCMTK (Orthanc) then sends
# PDUs of up to 128 kB (its ASC_MAXIMUMPDUSIZE) whatever its own "MaximumPduLength", 8 x fewer than 16 kB ones.
MAX_PDU = 0


class DimseClient(PacsClient):
    def __init__(self, node: Node):
        super().__init__(node)
        import pynetdicom  # noqa: F401  (fail early, with the import error, if it is missing)

    # --- associations ----------------------------------------------------------------------------
    def _ae(self, contexts, scp_roles=()):
        from pynetdicom import AE

        ae = AE(ae_title=self.node.calling_aet)
        t = self.node.timeout
        ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = t
        ae.connection_timeout = t
        ae.maximum_pdu_size = MAX_PDU
        for uid in contexts:
            ae.add_requested_context(uid, list(TRANSFER_SYNTAXES) if uid in scp_roles else None)
        return ae

    def _associate(self, contexts, scp_roles=(), handlers=()):
        from pynetdicom import build_role, evt

        ae = self._ae(contexts, scp_roles)
        answer = {}

        def on_acse(event):
            answer.update(_rejection(event.primitive))

        roles = [build_role(uid, scp_role=True) for uid in scp_roles]
        t0 = time.monotonic()
        assoc = ae.associate(self.node.host, self.node.port, ae_title=self.node.called_aet, ext_neg=roles or None,
                             max_pdu=MAX_PDU, evt_handlers=[(evt.EVT_ACSE_RECV, on_acse), *handlers])
        if assoc.is_established:
            _no_delay(assoc)
            return assoc
        if not answer:
            # pynetdicom races here: when the A-ASSOCIATE-RJ arrives (and the DUL closes the connection) before
            # its requesting thread checks that the socket is still connected, it aborts instead, leaving the
            # rejection unread in the DUL's queue; read it from there
            queued = getattr(getattr(getattr(assoc, "dul", None), "to_user_queue", None), "queue", ())
            for primitive in list(queued):
                answer.update(_rejection(primitive))
        if assoc.is_rejected or answer:  # the A-ASSOCIATE-RJ may arrive just before the server hangs up
            raise PacsError(self._rejected(answer))
        if time.monotonic() - t0 >= 0.9 * self.node.timeout:
            raise PacsError(f"{self.node}: no answer to the association request within {self.node.timeout:g} s "
                            "(is the PACS up, and not overloaded?)")
        why = self._unreachable()
        if not why.endswith("association request"):
            raise PacsError(why)
        if assoc.is_aborted:
            raise PacsError(f"{self.node}: the server aborted the association request (is our AE title "
                            f"{self.node.calling_aet!r} allowed there?)")
        raise PacsError(why)

    def _rejected(self, answer: dict) -> str:
        reason, diag, source = answer.get("reason", ""), answer.get("diagnostic"), answer.get("source")
        if source == 1 and diag == 7:
            return (f"{self.node}: association rejected: called AE title {self.node.called_aet!r} not recognised "
                    "(check the PACS's AE title)")
        if source == 1 and diag == 3:
            return (f"{self.node}: association rejected: our AE title {self.node.calling_aet!r} is not registered "
                    "on the PACS (register it, or use --calling-aet)")
        return f"{self.node}: association rejected ({reason or 'no reason given'})"

    def _unreachable(self) -> str:
        t = self.node.timeout
        try:
            with socket.create_connection((self.node.host, self.node.port), timeout=min(t, 5.0)):
                pass
        except ConnectionRefusedError:
            return f"{self.node}: connection refused (is the PACS up, and the host and port right?)"
        except TimeoutError:
            return f"{self.node}: no answer within {min(t, 5.0):g} s (is the PACS up and reachable?)"
        except OSError as e:
            return f"{self.node}: cannot connect ({e.strerror or type(e).__name__})"
        return f"{self.node}: the server closed the connection without answering the association request"

    @contextlib.contextmanager
    def _open(self, contexts, scp_roles=(), handlers=()):
        assoc = self._associate(contexts, scp_roles, handlers)
        wake = _tune(assoc)
        ok = False
        try:
            yield assoc
            ok = True
        finally:
            try:
                if assoc.is_established:
                    if ok:
                        assoc.release()
                    else:
                        assoc.abort()
            finally:
                _untune(assoc, wake)

    def _broken(self, what: str, kept: bool = False) -> PacsError:
        tail = "; nothing of it was kept" if kept else ""
        return PacsError(f"{self.node}: the server broke off the association during {what} (server gone, our AE "
                         f"title {self.node.calling_aet!r} not allowed there, or no answer within "
                         f"{self.node.timeout:g} s){tail}")

    # --- the interface ---------------------------------------------------------------------------
    def echo(self) -> float:
        from pynetdicom.sop_class import Verification

        t0 = time.perf_counter()
        with self._open([Verification]) as assoc:
            status = assoc.send_c_echo()
            if not status or status.get("Status") != 0:
                raise PacsError(f"{self.node}: C-ECHO failed ({_status_text(status)})")
        return time.perf_counter() - t0

    def _find(self, identifier, assoc=None) -> list:
        """C-FIND on an association of its own, or on ``assoc`` (a retrieve's) when it accepted C-FIND."""
        from pynetdicom.sop_class import StudyRootQueryRetrieveInformationModelFind as FIND

        if assoc is not None and any(cx.abstract_syntax == FIND for cx in assoc.accepted_contexts):
            return self._find_on(assoc, identifier)
        with self._open([FIND]) as own:
            return self._find_on(own, identifier)

    def _find_on(self, assoc, identifier) -> list:
        from pynetdicom.sop_class import StudyRootQueryRetrieveInformationModelFind as FIND

        out = []
        for status, ident in assoc.send_c_find(identifier, FIND):
            if not status or "Status" not in status:
                raise self._broken("C-FIND")
            code = status.Status
            if code in PENDING:
                if ident is not None:
                    out.append(ident)
            elif code == 0:
                break
            else:
                raise PacsError(f"{self.node}: C-FIND failed ({_status_text(status)})")
        return out

    def _find_studies(self, filters: dict, include_patient: bool, limit: int | None) -> list[dict]:
        from pydicom.dataset import Dataset

        ds = Dataset()
        ds.QueryRetrieveLevel = "STUDY"
        keep = STUDY_FIELDS + (PATIENT_FIELDS if include_patient else ())
        for kw in keep:  # identifiers are not even asked for unless wanted
            setattr(ds, kw, "")
        for kw, value in matching_keys(filters).items():
            setattr(ds, kw, value)
        out = [study_record(from_dataset(d, keep), include_patient) for d in self._find(ds)]
        return out[:limit] if limit else out

    def find_series(self, study_uid: str, assoc=None) -> list[dict]:
        from pydicom.dataset import Dataset

        ds = Dataset()
        ds.QueryRetrieveLevel = "SERIES"
        ds.StudyInstanceUID = check_uid(study_uid, "StudyInstanceUID")
        for kw in SERIES_FIELDS:
            setattr(ds, kw, "")
        return sort_series([series_record(from_dataset(d, SERIES_FIELDS)) for d in self._find(ds, assoc)])

    def _series_of(self, session, study_uid: str) -> list[dict]:
        return self.find_series(study_uid, assoc=session[0])  # no second association: ~5 ms less

    # --- retrieval -------------------------------------------------------------------------------
    @contextlib.contextmanager
    def _session(self):
        from pynetdicom import evt
        from pynetdicom.sop_class import StudyRootQueryRetrieveInformationModelFind as FIND

        # C-STORE sub-operations are answered on pynetdicom's threads (the DUL thread for C-GET, see
        # _store_on_reactor; the storage SCP's for C-MOVE); the lock keeps a series' folder from being
        # written to once _fetch_series has let go of it
        # "n": files named so far in the series' folder, "done": instances written whole
        state = {"folder": None, "n": 0, "done": 0, "lock": threading.Lock()}

        def new_file():  # under the lock
            state["n"] += 1
            return open(state["folder"] / f"{state['n']:06d}.dcm", "wb")

        def store(req, transfer_syntax) -> int:
            with state["lock"]:
                if state["folder"] is None:
                    return 0xA702  # refused: out of resources (nothing asked for this)
                with new_file() as f:
                    _write_instance(f, req, transfer_syntax)
                state["done"] += 1
            return 0x0000

        def open_next():
            """The next instance's file, opened for writing, or None when no series is being fetched."""
            with state["lock"]:
                return None if state["folder"] is None else new_file()

        def finished(ok: bool) -> None:
            """An instance was answered, and written whole if ``ok``."""
            if ok:
                with state["lock"]:
                    state["done"] += 1

        def on_store(event):
            if not isinstance(getattr(event.request, "DataSet", None), io.BytesIO):
                return 0xA700  # not pynetdicom's in-memory data set (STORE_RECV_CHUNKED_DATASET set elsewhere?)
            return store(event.request, event.context.transfer_syntax)

        if self.node.move_port:
            from pynetdicom import AE
            from pynetdicom.sop_class import StudyRootQueryRetrieveInformationModelMove as MOVE

            scp = AE(ae_title=self.node.calling_aet)
            scp.maximum_pdu_size = MAX_PDU
            scp.network_timeout = scp.dimse_timeout = scp.acse_timeout = self.node.timeout
            for uid in STORAGE_CLASSES:
                scp.add_supported_context(uid, list(TRANSFER_SYNTAXES))
            try:
                server = scp.start_server(("", self.node.move_port), block=False,
                                          evt_handlers=[(evt.EVT_C_STORE, on_store),
                                                        (evt.EVT_CONN_OPEN, lambda e: _no_delay(e.assoc))])
            except OSError as e:
                raise PacsError(f"cannot listen on --move-port {self.node.move_port} for C-MOVE "
                                f"({e.strerror or e})") from None
            try:
                with self._open([MOVE, FIND]) as assoc:
                    yield assoc, state
            finally:
                server.shutdown()
        else:
            from pynetdicom.sop_class import StudyRootQueryRetrieveInformationModelGet as GET

            with self._open([GET, FIND, *STORAGE_CLASSES], scp_roles=STORAGE_CLASSES,
                            handlers=[(evt.EVT_C_STORE, on_store)]) as assoc:
                _store_on_reactor(assoc, store, open_next, finished)
                yield assoc, state

    def _fetch_series(self, session, study_uid: str, series: dict, folder: Path) -> Iterator[int]:
        from pydicom.dataset import Dataset
        from pynetdicom.sop_class import StudyRootQueryRetrieveInformationModelGet as GET
        from pynetdicom.sop_class import StudyRootQueryRetrieveInformationModelMove as MOVE

        assoc, state = session
        ds = Dataset()
        ds.QueryRetrieveLevel = "SERIES"
        ds.StudyInstanceUID = study_uid
        ds.SeriesInstanceUID = series["series_uid"]
        with state["lock"]:
            state["folder"], state["n"], state["done"] = folder, 0, 0
        what = "C-MOVE" if self.node.move_port else "C-GET"
        try:
            if self.node.move_port:
                responses = assoc.send_c_move(ds, self.node.calling_aet, MOVE)
            else:
                responses = assoc.send_c_get(ds, GET)
            final = None
            for status, _ident in responses:
                if not status or "Status" not in status:
                    raise self._broken(f"{what} of series {series['series_uid']}", kept=True)
                if status.Status in PENDING:
                    # a progress tick (C-GET hands on one pending response per 20 ms): the instances written
                    with state["lock"]:
                        done = state["done"]
                    yield done
                    continue
                final = status
            if final is None or not assoc.is_established:
                raise self._broken(f"{what} of series {series['series_uid']}", kept=True)
            if final.Status != 0:
                failed = final.get("NumberOfFailedSuboperations", "?")
                raise PacsError(f"{self.node}: {what} of series {series['series_uid']} failed "
                                f"({_status_text(final)}, {failed} sub-operations failed); nothing of it was kept")
            yield state["done"]
        finally:
            with state["lock"]:  # waits for a store in progress: nothing is written here after this
                state["folder"] = None


def _no_delay(assoc) -> None:
    """Nagle off on the association's socket (TCP_NODELAY), as DCMTK sets it with TCP_NODELAY=1: a DIMSE
    request goes out as two PDUs (command, then identifier), and with Nagle on the second waits for the
    server's delayed ACK of the first, ~40 ms on Linux, for every C-FIND and C-GET."""
    import socket

    raw = getattr(getattr(getattr(assoc, "dul", None), "socket", None), "socket", None)
    if raw is not None:
        try:
            raw.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        except OSError:  # not a TCP socket (a test's socket pair), or already closed
            pass


def _rejection(primitive) -> dict:
    """``{reason, diagnostic, source}`` of an A-ASSOCIATE rejection primitive; {} for anything else."""
    if type(primitive).__name__ != "A_ASSOCIATE" or getattr(primitive, "result", None) in (None, 0):
        return {}
    return {"reason": getattr(primitive, "reason_str", "") or "", "diagnostic": getattr(primitive, "diagnostic", None),
            "source": getattr(primitive, "result_source", None)}


def _status_text(status) -> str:
    if not status or "Status" not in status:
        return "no answer"
    code = int(status.Status)
    names = {0xA700: "out of resources", 0xA701: "out of resources (matches)", 0xA702: "out of resources "
             "(sub-operations)", 0xA801: "move destination unknown (register our AE title with its host and "
             "port on the PACS)", 0xA900: "identifier does not match SOP class", 0xB000: "some sub-operations "
             "failed", 0xC000: "unable to process", 0xFE00: "cancelled", 0x0122: "SOP class not supported",
             0x0124: "not authorised"}
    return f"status 0x{code:04X}" + (f", {names[code]}" if code in names else "")
