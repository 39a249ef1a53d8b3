"""The PACS client against a real Orthanc, over DICOMweb and DIMSE: echo, find, get, errors, cache."""
from __future__ import annotations

import time

import numpy as np
import pydicom
import pytest
from pacs_server import CT_STUDY_UID, dicom_files

from hlip_engine.io import load_study
from hlip_engine.pacs import PacsError, StudyCache, connect

PROTOCOLS = ("dicomweb", "dimse")


def assert_same_study(local_folder, cached_folder):
    """Voxels and geometry of every kept scan equal between the local files and the retrieved copy."""
    local, got = load_study(local_folder), load_study(cached_folder)
    assert got.uid == local.uid and got.date == local.date
    assert len(local.scans) >= 1
    assert sorted(s.series_uid for s in got.scans) == sorted(s.series_uid for s in local.scans)
    by_uid = {s.series_uid: s for s in got.scans}
    for scan in local.scans:
        other = by_uid[scan.series_uid]
        assert other.shape == scan.shape
        np.testing.assert_array_equal(other.voxels, scan.voxels)
        np.testing.assert_allclose(other.affine, scan.affine, atol=1e-6)
        assert other.description == scan.description and other.modality == scan.modality


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_echo(orthanc, protocol):
    with connect(orthanc.url(protocol)) as pacs:
        seconds = pacs.echo()
    assert 0 < seconds < 5


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_find_with_each_filter(orthanc, library, protocol):
    phantoms = library["phantoms"]
    a, b = phantoms
    with connect(orthanc.url(protocol)) as pacs:
        everything = pacs.find_studies()
        uids = {r["study_uid"] for r in everything}
        assert {a["uid"], b["uid"], CT_STUDY_UID} <= uids and len(everything) == 6
        assert set(everything[0]) == {"study_uid", "date", "modality", "description", "series", "instances"}
        ct = next(r for r in everything if r["study_uid"] == CT_STUDY_UID)
        assert ct == {"study_uid": CT_STUDY_UID, "date": "20230615", "modality": "CT",
                      "description": "CT CHEST ABDOMEN", "series": 1, "instances": 300}
        rec_a = next(r for r in everything if r["study_uid"] == a["uid"])
        assert rec_a["series"] == len(a["series"])
        assert rec_a["instances"] == len(dicom_files(a["path"]))

        def found(**filters):
            return {r["study_uid"] for r in pacs.find_studies(**filters)}

        pid = pydicom.dcmread(dicom_files(a["path"])[0], stop_before_pixels=True)
        assert found(patient_id=pid.PatientID) == {a["uid"]}
        assert found(patient_id="CT300") == {CT_STUDY_UID}
        assert found(patient_id="NOBODY") == set()
        assert found(patient_name=str(pid.PatientName)) == {a["uid"]}
        assert found(patient_name="BIG^*") == {CT_STUDY_UID}
        assert found(accession=str(pid.AccessionNumber)) == {a["uid"]}
        assert found(modality="CT") == {CT_STUDY_UID, "1.3.6.1.4.1.5962.1.2.1.20040119072730.12322"} | (
            {p["uid"] for p in phantoms if p["modality"] == "CT"})
        day = f"{a['date'][:4]}-{a['date'][4:6]}-{a['date'][6:]}"
        assert a["uid"] in found(date_from=day, date_to=day)
        assert all(r["date"] == a["date"] for r in pacs.find_studies(date_from=day, date_to=day))
        assert found(date_from="2023-06-01", date_to="2023-06-30") == {CT_STUDY_UID}
        assert CT_STUDY_UID not in found(date_from="2024-01-01")
        assert found(date_to="1999-12-31") == set()
        assert found(date_to="2000-01-01") == {"1.2.826.0.1.3680043.2.1143.3365540476747857567072393009509418480"}
        assert found(description="CHEST") == {CT_STUDY_UID}
        assert a["uid"] in found(description=a["description"][2:-2])
        assert found(modality="CT", date_from="2023-01-01", date_to="2023-12-31", description="ABDOMEN") == {
            CT_STUDY_UID}
        # patient identifiers only when asked for
        assert "patient_id" not in everything[0]
        with_ids = pacs.find_studies(patient_id="CT300", include_patient=True)
        assert with_ids[0]["patient_id"] == "CT300" and with_ids[0]["patient_name"] == "BIG^CT"


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_find_series(orthanc, library, protocol):
    a = library["phantoms"][0]
    with connect(orthanc.url(protocol)) as pacs:
        series = pacs.find_series(a["uid"])
    assert [s["number"] for s in series] == sorted(s["number"] for s in a["series"])
    assert sum(s["instances"] for s in series) == len(dicom_files(a["path"]))
    assert {s["description"] for s in series} == {s["description"] for s in a["series"]}


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_get_phantom_study_equals_the_local_files(orthanc, library, tmp_path, protocol):
    a = library["phantoms"][1]
    cache = StudyCache(tmp_path / "cache")
    events = []
    with connect(orthanc.url(protocol)) as pacs:
        path = pacs.retrieve(a["uid"], cache, progress=events.append)
    assert path == cache.study_dir(a["uid"])
    assert_same_study(a["path"], path)
    n = len(dicom_files(a["path"]))
    assert sum(1 for _ in path.rglob("*.dcm")) == n
    assert events[-1]["done"] == events[-1]["total"] == n
    assert {e["series_index"] for e in events} == set(range(len(a["series"])))
    assert [e["done"] for e in events] == sorted(e["done"] for e in events)
    # nothing but DICOM files in the study folder, one folder per series
    assert sorted(p.name for p in path.iterdir()) == sorted(
        pydicom.dcmread(dicom_files(p)[0], stop_before_pixels=True).SeriesInstanceUID
        for p in {f.parent for f in dicom_files(a["path"])})

    # a repeated retrieve is served from the cache: it works with the server unreachable
    t0 = time.perf_counter()
    again = connect(orthanc.url(protocol).replace(str(orthanc.http_port), "9").replace(
        str(orthanc.dicom_port), "9")).retrieve(a["uid"], cache)
    assert again == path and time.perf_counter() - t0 < 1.0


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_get_pydicom_files_byte_for_byte_pixels(orthanc, library, tmp_path, protocol):
    """Compressed (RLE) and multi-frame objects come back with equal pixels: as stored over DICOMweb
    (``transfer-syntax=*``); over C-GET the server may transcode losslessly to the syntax it accepted."""
    cache = StudyCache(tmp_path / "cache")
    with connect(orthanc.url(protocol)) as pacs:
        for f in dicom_files(library["pydicom"]):
            local = pydicom.dcmread(f)
            path = pacs.retrieve(local.StudyInstanceUID, cache, series=local.SeriesInstanceUID)
            [got_file] = (path / local.SeriesInstanceUID).iterdir()
            got = pydicom.dcmread(got_file)
            assert got.SOPInstanceUID == local.SOPInstanceUID
            if protocol == "dicomweb":
                assert got.file_meta.TransferSyntaxUID == local.file_meta.TransferSyntaxUID
            np.testing.assert_array_equal(got.pixel_array, local.pixel_array)


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_300_slice_ct_retrieved_in_full(orthanc, library, tmp_path, protocol):
    cache = StudyCache(tmp_path / "cache")
    with connect(orthanc.url(protocol)) as pacs:
        path = pacs.retrieve(CT_STUDY_UID, cache)
    study = load_study(path)
    assert len(study.scans) == 1 and study.scans[0].shape == (300, 256, 256)
    assert_same_study(library["ct"], path)


def test_get_by_c_move_to_our_storage_scp(orthanc, library, tmp_path):
    a = library["phantoms"][0]
    cache = StudyCache(tmp_path / "cache")
    with connect(orthanc.dimse_url, move_port=orthanc.move_port) as pacs:
        path = pacs.retrieve(a["uid"], cache)
    assert_same_study(a["path"], path)


def test_retrieve_one_series_only(orthanc, library, tmp_path):
    a = library["phantoms"][0]
    cache = StudyCache(tmp_path / "cache")
    with connect(orthanc.dicomweb_url) as pacs:
        series = pacs.find_series(a["uid"])
        pick = series[1]["series_uid"]
        path = pacs.retrieve(a["uid"], cache, series=pick)
        assert [p.name for p in path.iterdir()] == [pick]
        assert not cache.complete(a["uid"])  # one series is not the whole study
        assert cache.complete(a["uid"], [pick])
        # the whole study later fetches only what is missing
        events = []
        pacs.retrieve(a["uid"], cache, progress=events.append)
    assert [e["cached"] for e in events if e["series_uid"] == pick] == [True]
    assert cache.complete(a["uid"])
    assert_same_study(a["path"], path)


# --- errors ----------------------------------------------------------------------------------------
def test_wrong_called_ae(orthanc):
    url = orthanc.dimse_url.replace("ORTHANC@", "NOTORTHANC@")
    with pytest.raises(PacsError, match="called AE title 'NOTORTHANC' not recognised"):
        connect(url).echo()
    with pytest.raises(PacsError, match="not recognised"):
        connect(url).find_studies()


def test_unregistered_calling_ae_cannot_retrieve(orthanc, library, tmp_path):
    cache = StudyCache(tmp_path / "cache")
    with pytest.raises(PacsError, match="'STRANGER' not allowed") as err:
        connect(orthanc.dimse_url, calling_aet="STRANGER").retrieve(library["phantoms"][0]["uid"], cache)
    assert "Traceback" not in str(err.value)
    assert cache.studies() == [] and not cache.study_dir(library["phantoms"][0]["uid"]).exists()


def test_c_get_of_a_sop_class_we_do_not_accept_fails_at_once_and_keeps_nothing(tmp_path):
    """A series whose SOP class is none of the storage contexts we propose (here ophthalmic photography): the
    PACS cannot send it on our association; the C-GET ends with the reason in seconds (it once looked stalled)
    and nothing half-retrieved stays in the cache."""
    from pacs_server import Orthanc
    from pydicom.data import get_testdata_file
    from pydicom.uid import generate_uid

    from hlip_engine.pacs.dimse import STORAGE_CLASSES

    ds = pydicom.dcmread(get_testdata_file("CT_small.dcm"))
    ds.SOPClassUID = ds.file_meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.77.1.5.1"
    assert ds.SOPClassUID not in STORAGE_CLASSES
    ds.StudyInstanceUID, ds.SeriesInstanceUID = generate_uid(), generate_uid()
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    ds.save_as(tmp_path / "eye.dcm")
    server = Orthanc(tmp_path / "orthanc").start()
    try:
        server.upload([tmp_path / "eye.dcm"])
        cache = StudyCache(tmp_path / "cache")
        t0 = time.monotonic()
        with pytest.raises(PacsError, match=r"C-GET of series .* failed .*1 sub-operations failed.*nothing of it"):
            connect(server.dimse_url).retrieve(ds.StudyInstanceUID, cache)
        assert time.monotonic() - t0 < 10
        assert not cache.complete(ds.StudyInstanceUID)
        assert not any(cache.study_dir(ds.StudyInstanceUID).rglob("*.dcm"))
    finally:
        server.stop()


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_node_that_is_down(protocol):
    from pacs_server import free_port

    port = free_port()
    url = f"http://127.0.0.1:{port}/dicom-web" if protocol == "dicomweb" else f"dicom://ORTHANC@127.0.0.1:{port}"
    with pytest.raises(PacsError, match="connection refused"):
        connect(url).echo()
    with pytest.raises(PacsError, match="connection refused"):
        connect(url).find_studies(modality="CT")


def test_http_errors_are_one_clear_line(orthanc, monkeypatch):
    monkeypatch.setenv("HLIP_PACS_PASSWORD", "wrong")
    with pytest.raises(PacsError, match="HTTP 401.*refused our credentials"):
        connect(orthanc.dicomweb_url).find_studies()
    monkeypatch.setenv("HLIP_PACS_PASSWORD", "s3cret-pacs")
    with pytest.raises(PacsError, match="HTTP 404"):
        connect(orthanc.http + "/no-such-root").echo()
    with pytest.raises(PacsError, match="not found"):
        connect(orthanc.dicomweb_url).retrieve("1.2.3.4.5", StudyCache(orthanc.root / "c"))


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_server_killed_during_get(fresh_orthanc, library, tmp_path, protocol):
    """Orthanc SIGKILLed mid-series: a clear error, nothing half-cached, and a second get completes."""
    cache = StudyCache(tmp_path / "cache")
    seen = []

    def kill_midway(event):
        seen.append(event["done"])
        if event["done"] >= 40:
            fresh_orthanc.kill()

    with pytest.raises(PacsError) as err:
        connect(fresh_orthanc.url(protocol), timeout=5).retrieve(CT_STUDY_UID, cache, progress=kill_midway)
    assert "nothing of" in str(err.value) or "broke off" in str(err.value), str(err.value)
    assert 40 <= max(seen) < 300
    study_dir = cache.study_dir(CT_STUDY_UID)
    assert not study_dir.exists() or not any(study_dir.iterdir())  # no series folder, no temporary left
    assert not cache.complete(CT_STUDY_UID)

    fresh_orthanc.start()
    path = connect(fresh_orthanc.url(protocol)).retrieve(CT_STUDY_UID, cache)
    assert_same_study(library["ct"], path)


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_cancel_mid_series_keeps_nothing(orthanc, tmp_path, protocol):
    import threading

    from hlip_engine.pacs import PacsCancelled

    cache = StudyCache(tmp_path / "cache")
    cancel = threading.Event()
    seen = []

    def progress(event):
        seen.append(event["done"])
        if event["done"] >= 30:
            cancel.set()

    with connect(orthanc.url(protocol)) as pacs:
        with pytest.raises(PacsCancelled):
            pacs.retrieve(CT_STUDY_UID, cache, progress=progress, cancel=cancel)
        assert 30 <= max(seen) < 300  # stopped at the first progress tick past 30 (DIMSE ticks every 20 ms)
        folder = cache.study_dir(CT_STUDY_UID)
        assert not folder.exists() or not any(folder.iterdir())
        # the association / connection was cleaned up: the same client retrieves next
        path = pacs.retrieve(CT_STUDY_UID, cache)
    assert sum(1 for _ in path.rglob("*.dcm")) == 300


# --- the cache ---------------------------------------------------------------------------------------
def test_cache_eviction_is_lru_and_size_bounded(orthanc, library, tmp_path):
    a, b = library["phantoms"]
    cache = StudyCache(tmp_path / "cache", max_bytes=10**9)
    with connect(orthanc.dicomweb_url) as pacs:
        pacs.retrieve(a["uid"], cache)
        time.sleep(0.02)
        pacs.retrieve(b["uid"], cache)
        assert {s["study_uid"] for s in cache.studies()} == {a["uid"], b["uid"]}
        limit = cache.max_bytes = cache.size() + 10_000  # room for the two phantoms, not for CT_small too
        time.sleep(0.02)
        pacs.retrieve(a["uid"], cache)  # a is now the most recently used
        small = next(r for r in pacs.find_studies(patient_id="1CT1"))
        time.sleep(0.02)
        pacs.retrieve(small["study_uid"], cache)  # a few kB more: b (least recently used) goes
        assert {s["study_uid"] for s in cache.studies()} == {a["uid"], small["study_uid"]}
        assert cache.size() <= limit
        # a study bigger than the whole cache is kept (it was just asked for), everything else goes
        pacs.retrieve(CT_STUDY_UID, cache)
    assert [s["study_uid"] for s in cache.studies()] == [CT_STUDY_UID]
    assert cache.clear() == [CT_STUDY_UID] and cache.studies() == []


# --- studies one by one, for the index builder -------------------------------------------------------
def test_iter_node_studies_retrieves_each_match_and_skips_known_ones(orthanc, library, tmp_path):
    from hlip_engine.pacs import iter_node_studies

    cache = StudyCache(tmp_path / "cache")
    a, b = library["phantoms"]
    items = list(iter_node_studies(orthanc.dicomweb_url, cache, skip={b["uid"]}, modality=a["modality"],
                                   date_from="2024-01-01"))
    uids = [it["study_uid"] for it in items]
    assert a["uid"] in uids and b["uid"] not in uids and CT_STUDY_UID not in uids
    item = items[uids.index(a["uid"])]
    assert item["error"] == "" and item["node"] == orthanc.dicomweb_url and item["record"]["study_uid"] == a["uid"]
    assert_same_study(a["path"], item["path"])
    item["drop"]()
    assert not cache.study_dir(a["uid"]).exists()


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_a_frozen_server_times_out(fresh_orthanc, protocol):
    """Orthanc stopped with SIGSTOP (the port accepts, nothing answers): a timeout, said so, in about its time."""
    import os
    import signal

    os.kill(fresh_orthanc.proc.pid, signal.SIGSTOP)
    try:
        t0 = time.perf_counter()
        with pytest.raises(PacsError, match="within 1 s"):
            connect(fresh_orthanc.url(protocol), timeout=1).echo()
        assert time.perf_counter() - t0 < 10
    finally:
        os.kill(fresh_orthanc.proc.pid, signal.SIGCONT)
    assert connect(fresh_orthanc.url(protocol)).echo() > 0


def test_thumbnails_where_the_server_renders_them(orthanc, library):
    a = library["phantoms"][0]
    png = connect(orthanc.dicomweb_url).thumbnail(a["uid"], size=64)
    assert png[:8] == b"\x89PNG\r\n\x1a\n"
    import io

    from PIL import Image

    img = Image.open(io.BytesIO(png))
    assert max(img.size) <= 64 and np.asarray(img).std() > 0  # an image, not a blank
    assert connect(orthanc.dimse_url).thumbnail(a["uid"]) is None
    assert connect(orthanc.dicomweb_url).thumbnail("1.2.3.4.5") is None
