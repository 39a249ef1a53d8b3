"""Pure functions of the PACS client: node parsing, credentials, filters, query strings, multipart parsing."""
from __future__ import annotations

import io
import json

import pytest

from hlip_engine.pacs import PacsError, StudyCache, normalize_filters, parse_node
from hlip_engine.pacs.dicomweb import _write_parts, qido_query
from hlip_engine.pacs.nodes import credentials
from hlip_engine.pacs.query import check_uid, matching_keys, qido_params


def test_dicomweb_urls():
    n = parse_node("https://PACS.example.org:8443/dicom-web/")
    assert (n.kind, n.url, n.host, n.port) == ("dicomweb", "https://pacs.example.org:8443/dicom-web",
                                               "pacs.example.org", 8443)
    assert parse_node("http://radiology@10.0.0.5/wado").username == "radiology"
    with pytest.raises(PacsError, match="password in the URL is refused"):
        parse_node("https://user:secret@pacs/dicom-web")
    with pytest.raises(PacsError, match="no host"):
        parse_node("https:///dicom-web")


def test_dimse_urls():
    n = parse_node("dicom://ORTHANC@127.0.0.1:4242")
    assert (n.kind, n.called_aet, n.host, n.port, n.calling_aet, n.move_port) == (
        "dimse", "ORTHANC", "127.0.0.1", 4242, "HLIPX", None)
    n = parse_node("dicom://PACS@[::1]:104?calling_aet=WS01&move_port=11113")
    assert (n.host, n.port, n.calling_aet, n.move_port) == ("::1", 104, "WS01", 11113)
    n = parse_node("dicom://PACS@host:104", calling_aet="ME", move_port=5000, timeout=3)
    assert (n.calling_aet, n.move_port, n.timeout) == ("ME", 5000, 3.0)
    assert str(n) == "dicom://PACS@host:104"
    for bad, why in [("dicom://host:104", "CALLED_AET@host:port"), ("dicom://PACS@host", "no port"),
                     ("dicom://PACS@host:99999", "out of range"), ("dicom://PACS@host:x", "not a number"),
                     ("dicom://WAY_TOO_LONG_AE_TITLE@host:104", "not a valid AE title"),
                     ("ftp://host/x", "unknown scheme"), ("", "no PACS node")]:
        with pytest.raises(PacsError, match=why):
            parse_node(bad)
    with pytest.raises(PacsError, match="calling AE title"):
        parse_node("dicom://PACS@host:104", calling_aet="BAD\\AET")


def test_nodes_file(tmp_path, monkeypatch):
    path = tmp_path / "config" / "pacs_nodes.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"hospital": {"url": "dicom://PACS@10.1.2.3:104", "calling_aet": "HLIPWS",
                                             "move_port": 11113},
                                "cloud": {"url": "https://pacs.example.org/dicom-web", "username": "rad",
                                          "auth": "basic"}}))
    h = parse_node("hospital")
    assert (h.kind, h.name, h.called_aet, h.calling_aet, h.move_port, h.key) == (
        "dimse", "hospital", "PACS", "HLIPWS", 11113, "hospital")
    c = parse_node("cloud")
    assert (c.kind, c.url, c.username, c.auth) == ("dicomweb", "https://pacs.example.org/dicom-web", "rad", "basic")
    with pytest.raises(PacsError, match="unknown PACS node 'elsewhere'.*cloud, hospital"):
        parse_node("elsewhere")
    path.write_text(json.dumps({"bad": {"url": "https://x/dicom-web", "password": "plain"}}))
    with pytest.raises(PacsError, match="holds a password"):
        parse_node("bad")


def test_credentials_from_env_and_keyring(monkeypatch):
    import keyring
    from keyring.backend import KeyringBackend

    class MemoryKeyring(KeyringBackend):  # an OS keyring stand-in: keyring's own backend interface
        priority = 1
        store = {("hlip-pacs", "cloud:rad"): "from-keyring", ("hlip-pacs", "tok:token"): "tok-from-keyring"}

        def get_password(self, service, username):
            return self.store.get((service, username))

        def set_password(self, service, username, password):
            self.store[(service, username)] = password

        def delete_password(self, service, username):
            self.store.pop((service, username), None)

    previous = keyring.get_keyring()
    keyring.set_keyring(MemoryKeyring())
    try:
        for k in ("HLIP_PACS_USERNAME", "HLIP_PACS_PASSWORD", "HLIP_PACS_TOKEN"):
            monkeypatch.delenv(k, raising=False)
        web = parse_node("https://pacs/dicom-web")
        assert credentials(web) == ("", "", "")
        monkeypatch.setenv("HLIP_PACS_TOKEN", "abc")
        assert credentials(web) == ("bearer", "", "abc")
        monkeypatch.delenv("HLIP_PACS_TOKEN")
        from dataclasses import replace

        cloud = replace(web, name="cloud", username="rad")
        assert credentials(cloud) == ("basic", "rad", "from-keyring")
        monkeypatch.setenv("HLIP_PACS_CLOUD_PASSWORD", "from-env")
        assert credentials(cloud) == ("basic", "rad", "from-env")
        assert credentials(replace(web, name="tok", auth="bearer")) == ("bearer", "", "tok-from-keyring")
        # the session carries the secret, the node's text never does
        from hlip_engine.pacs import connect

        client = connect(cloud)
        assert client.session.auth == ("rad", "from-env") and "from-env" not in repr(client) + str(cloud)
    finally:
        keyring.set_keyring(previous)


def test_filters_and_query_building():
    f = normalize_filters(patient_id="PH1", accession="A7", modality="ct", date_from="2024-01-02",
                          date_to="20240131", description="HEAD WO")
    assert f == {"patient_id": "PH1", "accession": "A7", "modality": "CT", "date_from": "20240102",
                 "date_to": "20240131", "description": "HEAD WO"}
    assert matching_keys(f) == {"PatientID": "PH1", "AccessionNumber": "A7", "StudyDate": "20240102-20240131",
                                "ModalitiesInStudy": "CT", "StudyDescription": "*HEAD WO*"}
    assert matching_keys(normalize_filters(date_from="2024-01-02"))["StudyDate"] == "20240102-"
    assert matching_keys(normalize_filters(date_to="2024-01-02"))["StudyDate"] == "-20240102"
    assert matching_keys(normalize_filters(date_from="2024-01-02", date_to="2024-01-02"))["StudyDate"] == "20240102"
    assert matching_keys(normalize_filters(description="T1*"))["StudyDescription"] == "T1*"
    assert normalize_filters(patient_id="", modality=None) == {}
    for bad, why in [({"date_from": "2024-02-30"}, "calendar"), ({"date_to": "yesterday"}, "not a date"),
                     ({"date_from": "2024-02-01", "date_to": "2024-01-01"}, "after"),
                     ({"patient_id": "a\\b"}, "backslash"), ({"modalty": "CT"}, "unknown filter")]:
        with pytest.raises(PacsError, match=why):
            normalize_filters(**bad)
    params = qido_params(f, include_patient=False, limit=5)
    assert ("includefield", "PatientID") not in params and ("limit", "5") in params
    assert ("includefield", "PatientID") in qido_params(f, include_patient=True)
    assert qido_query([("PatientName", "DOE^JANE"), ("StudyDescription", "*HEAD WO*"),
                       ("StudyDate", "20240102-20240131")]) == \
        "PatientName=DOE?JANE&StudyDescription=*HEAD?WO*&StudyDate=20240102-20240131"
    assert qido_query([("PatientID", "A&B=C")]) == "PatientID=A?B?C"  # never breaks the query string


def test_uids_are_checked_before_they_name_a_folder():
    assert check_uid("1.2.840.10008") == "1.2.840.10008"
    for bad in ("../../etc", "1.2.3/4", "", "1." * 40, "1..2"):
        with pytest.raises(PacsError, match="not a DICOM UID"):
            check_uid(bad)
    with pytest.raises(PacsError):
        StudyCache("/tmp/x").study_dir("../evil")


def _multipart(parts, boundary=b"XyZ", lengths=True, close=True) -> bytes:
    out = b""
    for p in parts:
        out += b"--" + boundary + b"\r\nContent-Type: application/dicom\r\n"
        if lengths:
            out += b"Content-Length: %d\r\n" % len(p)
        out += b"\r\n" + p + b"\r\n"
    return out + (b"--" + boundary + b"--\r\n" if close else b"")


@pytest.mark.parametrize("lengths", [True, False])
def test_multipart_parts_written_as_they_come(tmp_path, lengths, monkeypatch):
    import hlip_engine.pacs.dicomweb as dw

    monkeypatch.setattr(dw, "CHUNK", 7)  # parts straddle every read
    parts = [b"DICM" + bytes(range(256)) * 3, b"\r\n--Xy not the boundary\r\n", b"x"]
    stream = io.BytesIO(_multipart(parts, lengths=lengths))
    counts = list(_write_parts(stream.read, b"XyZ", tmp_path))
    assert counts == [1, 2, 3]
    assert [p.read_bytes() for p in sorted(tmp_path.iterdir())] == parts


def test_multipart_cut_short_is_an_error(tmp_path):
    data = _multipart([b"a" * 100, b"b" * 100], close=False)[:-30]
    with pytest.raises(PacsError, match="closed the connection"):
        list(_write_parts(io.BytesIO(data).read, b"XyZ", tmp_path))


def test_cache_lru_order_and_clear(tmp_path):
    import time

    cache = StudyCache(tmp_path, max_bytes=2500)
    for uid in ("1.1", "1.2", "1.3"):
        with cache.writing_series(uid, "2.1") as tmp:
            (tmp / "000001.dcm").write_bytes(b"x" * 1000)
        cache.mark_series(uid, "2.1", 1)
        cache.touch(uid, all_series=["2.1"])
        time.sleep(0.01)
    cache.touch("1.1")  # used again: now the newest
    assert [s["study_uid"] for s in cache.studies()] == ["1.2", "1.3", "1.1"]
    assert cache.evict(keep={"1.3"}) == ["1.2"]
    assert {s["study_uid"] for s in cache.studies()} == {"1.1", "1.3"} and cache.complete("1.1")
    # a half-written series (a killed process) is swept, never served
    (cache.study_dir("1.1") / ".2.9.abcd.tmp").mkdir()
    (cache.study_dir("1.1") / "2.8").mkdir()
    cache.sweep("1.1")
    assert [p.name for p in cache.study_dir("1.1").iterdir()] == ["2.1"]
    assert sorted(cache.clear()) == ["1.1", "1.3"] and cache.studies() == []
