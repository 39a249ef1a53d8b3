"""``hlip index build NODE`` against a real Orthanc: the index a PACS gives equals the one its studies give as a
local folder, records node + StudyInstanceUID, leaves no pixels behind unless --keep, resumes after kill -9
without retrieving again what is indexed, skips (and reports) a study the PACS cannot deliver, and a hit opens
by retrieving it (``study_path_of_hit``)."""
from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import requests
import torch
from blob_scans import blob_scan
from pacs_server import PASSWORD, USER, Orthanc, dicom_files, free_port

from hlip_engine.cli import main as hlip
from hlip_engine.index import IndexFormatError, StudyIndex
from hlip_engine.io import load_study, write_dicom_series
from hlip_engine.pacs import PacsError, StudyCache
from hlip_engine.pacs.hits import study_path_of_hit
from hlip_engine.study import PatientInfo

REPO = Path(__file__).resolve().parents[2]
UID = "1.2.826.0.1.3680043.8.498.18."
N_MR = 6
BROKEN = f"{UID}99"  # on the PACS, with one file gone from Orthanc's storage: it cannot be delivered
PROTOCOLS = ("dicomweb", "dimse")


def _study(folder: Path, i: int, uid: str, modality: str = "MR", date: str = "") -> Path:
    for s in range(2):
        write_dicom_series(blob_scan(100 * i + s, modality, f"AX T{s + 1}"), folder / f"s{s}", study_uid=uid,
                           series_number=s + 1, study_description=f"BRAIN {i}", study_date=date or f"2024{1 + i:02d}10",
                           patient=PatientInfo(name="ROE^RICHARD", id=f"PX{i}18"))
    return folder


def _break_one_file(server: Orthanc, study_uid: str) -> None:
    """Delete one stored file of a study behind Orthanc's back; a restart empties its in-memory storage cache."""
    s = requests.Session()
    s.auth = (USER, PASSWORD)
    found = s.post(f"{server.http}/tools/lookup", data=study_uid).json()
    instances = s.get(f"{server.http}/studies/{found[0]['ID']}/instances").json()
    info = s.get(f"{server.http}/instances/{instances[-1]['ID']}/attachments/dicom/info").json()
    uuid = info["Uuid"]
    (server.root / "db" / uuid[:2] / uuid[2:4] / uuid).unlink()
    server.stop()
    server.start()


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    """A tiny model; a library of 6 MR studies + 1 CT (the brain-MRI recipe skips it), indexed locally; an Orthanc
    holding the same studies plus one it cannot deliver."""
    from hlip_engine.index.embed_pipeline import build_library
    from hlip_engine.model import create_model

    root = tmp_path_factory.mktemp("pacs_index")
    torch.manual_seed(0)
    ckpt = Path(create_model("hlip_tiny").save(root / "tiny.safetensors"))
    lib = root / "library"
    folders = {f"{UID}{i + 1}": _study(lib / f"study{i}", i, f"{UID}{i + 1}", "CT" if i == N_MR else "MR")
               for i in range(N_MR + 1)}
    broken = _study(root / "broken", 20, BROKEN, date="20231201")
    local = root / "local.index"
    report = build_library(lib, ckpt, local, workers=0, batch_size=1, progress=False, log=lambda m: None)
    assert report.indexed == N_MR and len(report.skipped) == 1
    server = Orthanc(root / "orthanc").start()
    try:
        for folder in [*folders.values(), broken]:
            server.upload(dicom_files(folder))
        _break_one_file(server, BROKEN)
        yield {"root": root, "ckpt": ckpt, "lib": lib, "folders": folders, "local": local, "orthanc": server,
               "mr": sorted(folders)[:N_MR]}
    finally:
        server.stop()


def _build(site, protocol, ix, *flags, capsys=None):
    rc = hlip(["index", "build", site["orthanc"].url(protocol), "--model", str(site["ckpt"]), "--index", str(ix),
               "--batch-size", "1", "--no-progress", *flags])
    out = capsys.readouterr() if capsys is not None else None
    return rc, out


def _pixels(folder: Path) -> list[Path]:
    return [p for p in Path(folder).rglob("*") if p.is_file() and p.suffix == ".dcm"] if Path(folder).exists() else []


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_build_from_node_equals_the_local_build(site, protocol, tmp_path, capsys):
    node = site["orthanc"].url(protocol)
    ix, cache = tmp_path / "ix", tmp_path / "cache"
    # DICOMweb: everything on the node, two workers retrieving at once; DIMSE: a filter, --keep, one process
    flags = ["--workers", "2"] if protocol == "dicomweb" else ["--workers", "0", "--modality", "MR", "--keep"]
    rc, out = _build(site, protocol, ix, "--cache", str(cache), *flags, capsys=capsys)
    assert rc == 0, out.err
    assert f"found on {site['orthanc'].url(protocol)}" in out.out
    assert f"skipped {node}#{BROKEN}: not retrieved: " in out.out  # reported, and the build went on
    if protocol == "dicomweb":  # the CT the recipe refuses: reported by where it lives, not by a cache folder
        assert f"skipped {node}#{UID}{N_MR + 1}: " in out.out and "is CT" in out.out
    index, local = StudyIndex.open(ix), StudyIndex.open(site["local"])
    assert len(index) == N_MR and index.info["library"] == node and index.info["pacs"]["keep"] == (protocol == "dimse")
    assert [k for k, _p, _r in index.skipped() if k.endswith(BROKEN)] == [f"{node}#{BROKEN}"]
    metas = index.metadata(np.arange(len(index)))
    assert sorted(m["study_uid"] for m in metas) == site["mr"]  # the same studies as the local folder's index
    for m in metas:
        assert m["node"] == node and m["key"] == f"{node}#{m['study_uid']}"
        row = local.find(study_uid=m["study_uid"])
        lm = local.metadata([row])[0]
        np.testing.assert_allclose(index.vectors([m["id"]])[0], local.vectors([row])[0], atol=1e-5)
        assert (m["date"], m["modality"], m["description"], m["n_scans"]) == (
            lm["date"], lm["modality"], lm["description"], lm["n_scans"])
    stored = b"".join(p.read_bytes() for p in ix.rglob("*") if p.is_file())
    assert PASSWORD.encode() not in stored and b"ROE^RICHARD" not in stored  # no credential, no identifier

    # search hits say where their study lives
    assert hlip(["search", str(ix), "small bright lesion", "-k", "3", "--json"]) == 0
    hits = json.loads(capsys.readouterr().out)["hits"]
    assert len(hits) == 3 and all(h["node"] == node and h["study_uid"] in site["mr"] for h in hits)

    studies = StudyCache(cache).studies()
    if protocol == "dimse":  # --keep: every indexed study whole in the cache, and its hit opens from there
        assert sorted(s["study_uid"] for s in studies if s["complete"]) == site["mr"]
        down = {**hits[0], "node": f"dicom://NOBODY@127.0.0.1:{free_port()}"}  # no network needed
        assert study_path_of_hit(down) == Path(hits[0]["path"]) == StudyCache(cache).study_dir(hits[0]["study_uid"])
    else:  # not kept: no pixels left behind (not even the broken study's series that did arrive)
        assert _pixels(cache) == [] and [s for s in studies if s["series"]] == []
        assert not Path(hits[0]["path"]).exists()


def test_a_hit_opens_by_retrieving_it(site, tmp_path, capsys):
    """Built by C-MOVE to our own storage SCP (one retrieving worker: one port), so the node recorded carries
    the move port, and the hit is retrieved again through it."""
    ix, server = tmp_path / "ix", site["orthanc"]
    rc, out = _build(site, "dimse", ix, "--workers", "2", "--cache", str(tmp_path / "build-cache"),
                     "--move-port", str(server.move_port), "--date-from", "2024-02-01", "--date-to", "2024-04-30",
                     capsys=capsys)
    assert rc == 0, out.err
    index = StudyIndex.open(ix)
    metas = index.metadata(np.arange(len(index)))
    assert sorted(m["study_uid"] for m in metas) == [f"{UID}{i}" for i in (2, 3, 4)] and index.skipped() == []
    assert {m["node"] for m in metas} == {f"{server.dimse_url}?move_port={server.move_port}"}
    hit = {"score": 0.5, **metas[0]}
    assert not Path(hit["path"]).exists()
    events = []
    path = study_path_of_hit(hit, cache=tmp_path / "open", progress=events.append)
    assert path == StudyCache(tmp_path / "open").study_dir(hit["study_uid"]) and events
    original, got = load_study(site["folders"][hit["study_uid"]]), load_study(path)
    assert got.uid == original.uid and len(got.scans) == len(original.scans) == 2
    by_uid = {s.series_uid: s for s in got.scans}
    for scan in original.scans:
        np.testing.assert_array_equal(by_uid[scan.series_uid].voxels, scan.voxels)
        np.testing.assert_allclose(by_uid[scan.series_uid].affine, scan.affine, atol=1e-6)
    # a local hit is its own path; a PACS that is down or a hit with nowhere to go: one clear error
    from hlip_engine.search import Hit

    folder = site["folders"][f"{UID}1"]
    assert study_path_of_hit({"path": str(folder), "study_uid": f"{UID}1"}) == folder
    assert study_path_of_hit(Hit(0, 0.5, {"path": str(folder), "study_uid": f"{UID}1"})) == folder
    dead = f"dicom://ORTHANC@127.0.0.1:{free_port()}"
    with pytest.raises(PacsError, match=f"from PACS node {dead}: .*(refused|reach|answer)"):
        study_path_of_hit({**hit, "node": dead}, cache=tmp_path / "other")
    with pytest.raises(PacsError, match="no PACS node"):
        study_path_of_hit({"path": str(tmp_path / "gone"), "study_uid": f"{UID}1"})


def test_kill_9_then_resume_retrieves_only_the_missing_studies(site, tmp_path, monkeypatch):
    node, server = site["orthanc"].dicomweb_url, site["orthanc"]
    ix = tmp_path / "ix"
    cmd = [sys.executable, "-m", "hlip_engine.index", "build", node, "--model", str(site["ckpt"]), "--index", str(ix),
           "--workers", "0", "--batch-size", "1", "--flush-every", "1", "--no-progress", "--cache",
           str(tmp_path / "cache1")]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    store = ix / "build" / "build.sqlite"
    deadline, done = time.time() + 120, 0
    stopped = False
    try:
        while time.time() < deadline and proc.poll() is None:
            if store.exists():
                with sqlite3.connect(f"file:{store}?mode=ro", uri=True) as con:
                    try:
                        done = con.execute("SELECT COUNT(*) FROM studies").fetchone()[0]
                    except sqlite3.OperationalError:
                        done = 0
                if done >= 2:
                    os.kill(server.proc.pid, signal.SIGSTOP)  # the builder now waits on the PACS: mid-build
                    stopped = True
                    break
            time.sleep(0.02)
        assert proc.poll() is None, f"the build ended before it could be killed: {proc.stderr.read().decode()[-800:]}"
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    finally:
        if stopped:
            os.kill(server.proc.pid, signal.SIGCONT)
    assert not (ix / "CURRENT").exists()
    with pytest.raises(IndexFormatError, match="not finished"):
        StudyIndex.open(ix)
    with sqlite3.connect(f"file:{store}?mode=ro", uri=True) as con:
        before = {r[0] for r in con.execute("SELECT study_uid FROM studies")}
        skipped_before = {r[0] for r in con.execute("SELECT key FROM skipped")}
    assert len(before) >= 2 and set(site["mr"]) - before  # killed with studies left to do

    from hlip_engine.pacs.client import PacsClient

    retrieved = []
    real = PacsClient.retrieve
    monkeypatch.setattr(PacsClient, "retrieve", lambda self, uid, *a, **k: (retrieved.append(uid), real(self, uid, *a, **k))[1])
    cache2 = tmp_path / "cache2"
    rc = hlip(["index", "build", node, "--model", str(site["ckpt"]), "--index", str(ix), "--resume", "--workers", "0",
               "--no-progress", "--keep", "--cache", str(cache2)])
    assert rc == 0
    on_pacs = set(site["folders"]) | {BROKEN}
    done_then = before | {k.rsplit("#", 1)[1] for k in skipped_before if not k.endswith(BROKEN)}  # the CT: not again
    # nothing indexed is retrieved again; the broken one is tried again (twice: once more on a new connection)
    assert sorted(retrieved) == sorted([*(on_pacs - done_then - {BROKEN}), BROKEN, BROKEN])
    assert {s["study_uid"] for s in StudyCache(cache2).studies() if s["complete"]} == on_pacs - done_then - {BROKEN}
    index = StudyIndex.open(ix)
    metas = index.metadata(np.arange(len(index)))
    assert sorted(m["study_uid"] for m in metas) == site["mr"]  # each study exactly once
    assert index.info["skipped"] == 2  # the CT (recipe) and the study the PACS cannot deliver
    local = StudyIndex.open(site["local"])
    for m in metas:
        np.testing.assert_allclose(index.vectors([m["id"]])[0], local.vectors([local.find(study_uid=m["study_uid"])])[0],
                                   atol=1e-5)


def test_a_node_that_is_down_or_a_bad_filter_is_one_line(site, tmp_path, capsys):
    dead = f"dicom://ORTHANC@127.0.0.1:{free_port()}"
    args = ["--model", str(site["ckpt"]), "--index", str(tmp_path / "ix"), "--no-progress"]
    assert hlip(["index", "build", dead, *args]) == 2
    err = capsys.readouterr().err
    assert err.startswith("hlip index: error: ") and dead in err and "Traceback" not in err
    assert hlip(["index", "build", site["orthanc"].dicomweb_url, *args, "--date-from", "yesterday"]) == 2
    assert "not a date" in capsys.readouterr().err
    assert hlip(["index", "build", site["orthanc"].dimse_url, *args, "--patient-id", "NOBODY"]) == 2
    err = capsys.readouterr().err
    assert "no studies found matching patient_id (given)" in err and "NOBODY" not in err
    assert hlip(["index", "build", str(site["lib"]), *args, "--modality", "MR"]) == 2
    assert "for a PACS node only" in capsys.readouterr().err
    assert hlip(["index", "build", str(tmp_path / "nowhere"), *args]) == 2
    assert "no such library folder, and not a PACS node" in capsys.readouterr().err
    assert not (tmp_path / "ix" / "CURRENT").exists()


def test_a_bad_uid_from_the_server_is_skipped_and_never_drops_another_folder(site, tmp_path):
    from hlip_engine.pacs import iter_node_studies

    cache = StudyCache(tmp_path / "cache")
    (cache.root / "mine").mkdir(parents=True)
    items = list(iter_node_studies(site["orthanc"].dicomweb_url, cache,
                                   records=[{"study_uid": ""}, {"study_uid": ".."}, {"study_uid": f"{UID}1"}]))
    assert [bool(it["error"]) for it in items] == [True, True, False] and "not a DICOM UID" in items[0]["error"]
    for it in items:
        it["drop"]()
    assert (cache.root / "mine").is_dir() and not cache.study_dir(f"{UID}1").exists()


def test_a_study_whose_first_try_failed_late_is_still_dropped(site, tmp_path, monkeypatch):
    """A first try that fails after every series arrived whole (the cache's bookkeeping, a connection gone at
    the end) leaves the study whole in the cache; the retry then serves it from there. It was not in the cache
    before the build, so it is dropped after indexing all the same (no --keep); one that was, stays."""
    from hlip_engine.index.sources import NodeSource
    from hlip_engine.pacs import PacsError, StudyCache
    from hlip_engine.pacs.client import PacsClient

    node, uid = site["orthanc"].url("dicomweb"), site["mr"][0]
    cache = StudyCache(tmp_path / "cache")
    real, calls = PacsClient.retrieve, []

    def late_failure(self, study_uid, *args, **kwargs):
        path = real(self, study_uid, *args, **kwargs)
        calls.append(study_uid)
        if len(calls) == 1:
            raise PacsError("the connection went away after the last series")
        return path

    monkeypatch.setattr(PacsClient, "retrieve", late_failure)
    source = NodeSource(node, cache=cache)
    ref = next(r for r in source.find(progress=False) if r.uid == uid)
    data = source.dataset([ref], "brain-mri", {"slices": 16, "size": 40, "crop": 32})
    out = data[0]
    assert calls == [uid, uid] and out["tensor"] is not None  # failed once, then served from the cache
    assert _pixels(cache.root) == [] and not cache.complete(uid)  # dropped: it was not cached before

    kept = StudyCache(tmp_path / "kept")
    monkeypatch.setattr(PacsClient, "retrieve", real)
    data.client().retrieve(uid, kept)  # in the cache before the build
    again = NodeSource(node, cache=kept).dataset([ref], "brain-mri", {"slices": 16, "size": 40, "crop": 32})
    assert again[0]["tensor"] is not None and kept.complete(uid)  # a study cached before stays
