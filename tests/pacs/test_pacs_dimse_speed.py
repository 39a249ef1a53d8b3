"""The DIMSE C-GET fast path (hlip_engine/pacs/dimse_receive.py): what it encodes by hand equals what pynetdicom
encodes, it is really in use against a real Orthanc, and what it writes is the PACS's data set byte for byte."""
from __future__ import annotations

import io
import socket
import time

import pydicom
import pytest
from pacs_server import CT_STUDY_UID, dicom_files

from hlip_engine.pacs import StudyCache, connect
from hlip_engine.pacs import dimse as DM
from hlip_engine.pacs import dimse_receive as D

CT = "1.2.840.10008.5.1.4.1.1.2"


def _dataset_bytes(path) -> bytes:
    """The encoded data set of a DICOM file: everything after the File Meta Information."""
    raw = open(path, "rb").read()
    assert raw[128:132] == b"DICM"
    group_length = int.from_bytes(raw[140:144], "little")  # (0002,0000) UL, value at 132 + 8
    return raw[144 + group_length:]


@pytest.mark.parametrize("instance", ["1.2.3.4", "1.2.3.45", "1.2.826.0.1.3680043.8.498.1234567890123"])
@pytest.mark.parametrize("syntax", ["1.2.840.10008.1.2.1", "1.2.840.10008.1.2", "1.2.840.10008.1.2.4.90"])
def test_file_meta_equals_pynetdicoms(instance, syntax):
    from pynetdicom.dsutils import create_file_meta, encode_file_meta

    ours = D.file_meta_bytes(CT, instance, syntax)
    theirs = b"\x00" * 128 + b"DICM" + encode_file_meta(
        create_file_meta(sop_class_uid=CT, sop_instance_uid=instance, transfer_syntax=syntax))
    assert ours == theirs
    meta = pydicom.dcmread(io.BytesIO(ours)).file_meta  # a file of File Meta Information only
    assert meta.MediaStorageSOPInstanceUID == instance and meta.TransferSyntaxUID == syntax


@pytest.mark.parametrize("status", [0x0000, 0xA700, 0xC211])
def test_c_store_response_equals_pynetdicoms(status):
    from pynetdicom.dimse_messages import C_STORE_RSP
    from pynetdicom.dimse_primitives import C_STORE
    from pynetdicom.pdu import P_DATA_TF

    rsp = C_STORE()
    rsp.MessageIDBeingRespondedTo = 7
    rsp.AffectedSOPClassUID = CT
    rsp.AffectedSOPInstanceUID = "1.2.3.45"
    rsp.Status = status
    msg = C_STORE_RSP()
    msg.primitive_to_message(rsp)
    [p_data] = list(msg.encode_msg(3, 16382))
    [[context_id, pdv]] = p_data.presentation_data_value_list
    assert context_id == 3
    assert b"\x03" + D.c_store_rsp_command(CT, "1.2.3.45", 7, status) == pdv
    pdu = P_DATA_TF()
    pdu.from_primitive(p_data)
    assert D.p_data_tf(3, pdv) == pdu.encode()


def test_command_parsing_reads_pynetdicoms_encoding():
    from pynetdicom.dimse_messages import C_GET_RSP, C_STORE_RQ
    from pynetdicom.dimse_primitives import C_GET, C_STORE

    rq = C_STORE()
    rq.MessageID, rq.AffectedSOPClassUID, rq.AffectedSOPInstanceUID, rq.Priority = 12, CT, "1.2.3.4", 2
    rq.DataSet = io.BytesIO(b"\x08\x00\x16\x00\x06\x00\x00\x001.2.3\x00")
    msg = C_STORE_RQ()
    msg.primitive_to_message(rq)
    first = next(iter(msg.encode_msg(1, 16382))).presentation_data_value_list[0][1]
    assert first[0] & 3 == 3  # a whole command set
    assert D.parse_c_store_rq(first) == (CT, "1.2.3.4", 12)

    rsp = C_GET()
    rsp.MessageIDBeingRespondedTo, rsp.Status = 5, 0xFF00
    rsp.NumberOfRemainingSuboperations, rsp.NumberOfCompletedSuboperations = 3, 4
    rsp.NumberOfFailedSuboperations, rsp.NumberOfWarningSuboperations = 0, 0
    msg = C_GET_RSP()
    msg.primitive_to_message(rsp)
    first = next(iter(msg.encode_msg(1, 16382))).presentation_data_value_list[0][1]
    found = D.parse_command(first)
    assert found[0x0100] == 0x8010 and found[0x0120] == 5 and found[0x0900] == 0xFF00
    assert found[0x0800] == 0x0101 and found[0x1020] == 3 and found[0x1021] == 4
    assert D.parse_c_store_rq(first) is None  # not a C-STORE-RQ
    assert D.parse_command(b"\x03\x02\x00") is None  # truncated


def test_the_fast_path_is_in_use(orthanc, monkeypatch):
    """Against the real Orthanc: unlimited PDUs proposed, Orthanc's PDUs bigger than 16 kB, and pynetdicom
    tuned (event-driven reactor, streaming C-STORE), Nagle off on our socket: a newer pynetdicom that silently
    falls back shows here."""
    from pynetdicom import dul

    seen = []
    read = dul.DULServiceProvider._read_pdu_data

    def spy(self):
        read(self)
        seen.append(self._recv_pdu.queue[-1] if self._recv_pdu.queue else None)

    client = connect(orthanc.dimse_url)
    tuned = {}
    store_on_reactor = DM._store_on_reactor  # as the client calls it

    def spy_store(assoc, *args):
        tuned["socket"] = type(assoc.dul.socket).__name__
        tuned["nodelay"] = assoc.dul.socket.socket.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY) != 0
        tuned["max_pdu"] = assoc.requestor.maximum_length
        tuned["stream"] = store_on_reactor(assoc, *args)
        tuned["receive"] = getattr(assoc.dimse.receive_primitive, "__qualname__", "")
        return tuned["stream"]

    monkeypatch.setattr(DM, "_store_on_reactor", spy_store)
    monkeypatch.setattr(dul.DULServiceProvider, "_read_pdu_data", spy)
    cache = StudyCache(orthanc.root / "fast-path-cache")
    client.retrieve(CT_STUDY_UID, cache)
    assert tuned == {"socket": "FastSocket", "nodelay": True, "max_pdu": 0, "stream": True,
                     "receive": "_StreamingStore.receive"}
    biggest = max(len(p.encode()) for p in seen if type(p).__name__ == "P_DATA_TF")
    assert biggest > 16384 * 2, biggest  # DCMTK sends 128 kB PDUs when we take any size


def test_c_get_writes_the_stored_data_sets_byte_for_byte(orthanc, library, tmp_path):
    """Every instance of the 300-slice CT, retrieved over C-GET, holds the data set as stored (pixel data
    included) after a File Meta Information naming it, and nothing is left over in the folder."""
    cache = StudyCache(tmp_path / "cache")
    with connect(orthanc.dimse_url) as pacs:
        path = pacs.retrieve(CT_STUDY_UID, cache)
    local = {}
    for f in dicom_files(library["ct"]):
        ds = pydicom.dcmread(f, stop_before_pixels=True)
        local[ds.SOPInstanceUID] = (f, ds.file_meta.TransferSyntaxUID)
    got = dicom_files(path)
    assert len(got) == len(local) == 300
    for f in got:
        meta = pydicom.dcmread(f, stop_before_pixels=True).file_meta
        src, syntax = local[meta.MediaStorageSOPInstanceUID]
        assert meta.TransferSyntaxUID == syntax
        assert meta.MediaStorageSOPClassUID == CT
        assert _dataset_bytes(f) == _dataset_bytes(src), f.name
    assert sorted(p.name for p in got) == [f"{i:06d}.dcm" for i in range(1, 301)]


def test_streaming_store_writes_each_data_set_as_it_arrives(tmp_path):
    """Fed P-DATA primitives as Orthanc sends them (and two messages in one PDU, which DICOM allows), the
    C-GET fast path writes each instance whole and answers each with a C-STORE-RSP, success."""
    import queue
    from types import SimpleNamespace

    from pynetdicom.dimse_messages import C_STORE_RQ
    from pynetdicom.dimse_primitives import C_STORE
    from pynetdicom.pdu_primitives import P_DATA

    def command(uid: str, message_id: int) -> bytes:
        rq = C_STORE()
        rq.MessageID, rq.AffectedSOPClassUID, rq.AffectedSOPInstanceUID, rq.Priority = message_id, CT, uid, 2
        rq.DataSet = io.BytesIO(b"")
        msg = C_STORE_RQ()
        msg.primitive_to_message(rq)
        return next(iter(msg.encode_msg(1, 16382))).presentation_data_value_list[0][1]

    def p_data(*pdvs):
        p = P_DATA()
        p.presentation_data_value_list = [[1, pdv] for pdv in pdvs]
        return p

    sent, opened, done = [], [], []
    dul = SimpleNamespace(state_machine=SimpleNamespace(current_state="Sta6"), socket=None, send_pdu=sent.append)
    assoc = SimpleNamespace(dimse=SimpleNamespace(message=None, msg_queue=queue.Queue()), dul=dul,
                            _get_valid_context=lambda *a, **k: SimpleNamespace(transfer_syntax=["1.2.840.10008.1.2.1"]))

    def open_next():
        opened.append(tmp_path / f"{len(opened) + 1:06d}.dcm")
        return open(opened[-1], "wb")

    store = D._StreamingStore(assoc, lambda p: pytest.fail("nothing here is pynetdicom's"), open_next, done.append)
    one, two = b"\x08\x00\x16\x00" + bytes(range(200)), b"\x10\x00\x10\x00" + bytes(100)
    store.receive(p_data(command("1.2.3.1", 1)))
    store.receive(p_data(b"\x00" + one[:50]))
    store.receive(p_data(b"\x02" + one[50:], command("1.2.3.2", 2), b"\x00" + two[:3]))
    store.receive(p_data(b"\x02" + two[3:]))
    assert done == [True, True] and len(sent) == 2
    for path, uid, body in zip(opened, ("1.2.3.1", "1.2.3.2"), (one, two)):
        assert path.read_bytes() == D.file_meta_bytes(CT, uid, "1.2.840.10008.1.2.1") + body
    for rsp, uid, message_id in zip(sent, ("1.2.3.1", "1.2.3.2"), (1, 2)):
        assert rsp.presentation_data_value_list == [[1, b"\x03" + D.c_store_rsp_command(CT, uid, message_id, 0)]]


def test_a_rejection_pynetdicom_left_unread_is_still_reported(monkeypatch):
    """pynetdicom's race (the A-ASSOCIATE-RJ arrives, and the DUL closes the connection, before the requesting
    thread checks the socket; it then aborts and leaves the rejection in the DUL's queue) reads as the
    rejection, not as "the server aborted": why test_wrong_called_ae failed now and then on a busy machine."""
    import queue
    from types import SimpleNamespace

    import pynetdicom
    from pynetdicom.pdu_primitives import A_ASSOCIATE

    rj = A_ASSOCIATE()
    rj.result, rj.result_source, rj.diagnostic = 0x01, 0x01, 0x07
    q = queue.Queue()
    q.put(rj)
    fake = SimpleNamespace(is_established=False, is_rejected=False, is_aborted=True,
                           dul=SimpleNamespace(to_user_queue=q))
    monkeypatch.setattr(pynetdicom.AE, "associate", lambda self, *a, **k: fake)
    with pytest.raises(DM.PacsError, match="called AE title 'NOTORTHANC' not recognised"):
        connect("dicom://NOTORTHANC@127.0.0.1:9").echo()


def test_a_series_find_does_not_wait_for_a_delayed_ack(orthanc):
    """Nagle off (TCP_NODELAY) on the association: a C-FIND's identifier PDU no longer waits for the server's
    delayed ACK of its command PDU (~40 ms on Linux). A find takes a few ms on loopback; with Nagle on, at
    least 40 ms every time."""
    client = connect(orthanc.dimse_url)
    client.find_series(CT_STUDY_UID)  # warm: imports
    took = []
    for _ in range(5):
        t0 = time.perf_counter()
        assert client.find_series(CT_STUDY_UID)
        took.append(time.perf_counter() - t0)
    assert min(took) < 0.035, took


@pytest.mark.parametrize("move", [False, True])
def test_a_retrieve_takes_one_association(orthanc, library, tmp_path, monkeypatch, move):
    """The series C-FIND goes over the association the study is retrieved on (C-GET, or C-MOVE's request
    association): one association per retrieve, as getscu needs, not a second one for the find."""
    opened = []
    real = DM.DimseClient._open

    def counting(self, contexts, *args, **kwargs):
        opened.append(len(contexts))
        return real(self, contexts, *args, **kwargs)

    monkeypatch.setattr(DM.DimseClient, "_open", counting)
    client = connect(orthanc.dimse_url, move_port=orthanc.move_port if move else None)
    folder = client.retrieve(CT_STUDY_UID, StudyCache(tmp_path / "cache"))
    assert len(opened) == 1, opened
    assert len(dicom_files(folder)) == len(dicom_files(library["ct"])) == 300


def test_c_get_progress_ticks_without_a_response_per_instance(orthanc, library, tmp_path):
    """send_c_get gets a pending C-GET response at most every PROGRESS_INTERVAL (pynetdicom decodes each with
    pydicom on the requesting thread): progress still rises to every instance, in order, with fewer ticks."""
    events = []
    client = connect(orthanc.dimse_url)
    t0 = time.perf_counter()
    client.retrieve(CT_STUDY_UID, StudyCache(tmp_path / "cache"), progress=lambda e: events.append(e["done"]))
    took = time.perf_counter() - t0
    assert events == sorted(events) and events[-1] == 300
    assert len(events) <= took / D.PROGRESS_INTERVAL + 5, (len(events), took)
    assert len(events) < 300 or took > 300 * D.PROGRESS_INTERVAL  # not one per instance (unless that slow)
