"""A search hit of the server's index opens on the client: ``GET /v1/studies/{study_uid}`` streams the indexed
study's files as a zip, and ``RemoteEngine.download_study`` unpacks it (zip-slip safe, atomically) into a
fresh folder that loads equal to the study on the server. The UID is only a key of the index: path
characters get a 4xx, never a file, and nothing outside the study's folder is ever in the zip."""
from __future__ import annotations

import http.client
import io
import json
import os
import shutil
import sqlite3
import zipfile
from pathlib import Path
from urllib.parse import quote

import httpx
import numpy as np
import pytest

from hlip_engine.io import load_study
from hlip_engine.remote import EngineError, RemoteEngine, unpack_study_zip


def _serve_helpers():
    """tests/serve/conftest.py's helpers, loaded under a name of their own (``import conftest`` clashes with
    the conftest of whichever test folder pytest imported first)."""
    import importlib.util
    import sys

    name = "hlip_serve_test_helpers"
    module = sys.modules.get(name)
    if module is None:
        spec = importlib.util.spec_from_file_location(name, Path(__file__).with_name("conftest.py"))
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        spec.loader.exec_module(module)
    return module


free_port, start_server, stop_server = (getattr(_serve_helpers(), n) for n in ("free_port", "start_server",
                                                                              "stop_server"))


def _study_names(folder: Path) -> set[str]:
    return {p.relative_to(folder).as_posix() for p in folder.rglob("*")
            if p.is_file() and not any(part.startswith(".") for part in p.relative_to(folder).parts)}


def _assert_same_study(a, b) -> None:
    assert a.uid == b.uid and len(a.scans) == len(b.scans) > 0
    for x, y in zip(sorted(a.scans, key=lambda s: s.series_uid), sorted(b.scans, key=lambda s: s.series_uid)):
        assert x.series_uid == y.series_uid and x.voxels.shape == y.voxels.shape
        np.testing.assert_array_equal(x.voxels, y.voxels)
        np.testing.assert_allclose(x.affine, y.affine, atol=1e-9)


def _raw_get(server, path: str, token: bool = True) -> tuple[int, bytes, dict]:
    """A request with its path sent exactly as written (no client-side normalising of '..' or '%2F')."""
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=60)
    try:
        conn.request("GET", path, headers=server.headers() if token else {})
        resp = conn.getresponse()
        return resp.status, resp.read(), {k.lower(): v for k, v in resp.getheaders()}
    finally:
        conn.close()


# --- the route --------------------------------------------------------------------------------------
def test_downloaded_studies_load_equal_to_the_local_ones(server, library, tmp_path):
    client = RemoteEngine(server.url, server.token)
    for record in library["records"][:3]:
        dest = tmp_path / "dl" / record["uid"]
        assert client.download_study(record["uid"], dest) == dest
        assert _study_names(dest) == _study_names(Path(record["path"]))  # every file, relative names kept
        _assert_same_study(load_study(dest), load_study(record["path"]))
    assert sorted(p.name for p in (tmp_path / "dl").iterdir()) == sorted(r["uid"] for r in library["records"][:3])
    with pytest.raises(FileExistsError):  # a fresh folder only: never over an earlier download
        client.download_study(library["records"][0]["uid"], tmp_path / "dl" / library["records"][0]["uid"])


def test_the_zip_holds_the_study_files_as_stored_and_nothing_outside(server, library):
    record = library["records"][4]
    r = httpx.get(f"{server.url}/v1/studies/{record['uid']}", headers=server.headers(), timeout=60)
    assert r.status_code == 200 and r.headers["content-type"] == "application/zip"
    assert "content-length" not in r.headers and r.headers.get("transfer-encoding") == "chunked"  # streamed
    folder = Path(record["path"])
    with zipfile.ZipFile(io.BytesIO(r.content)) as archive:
        names = archive.namelist()
        assert len(names) == len(set(names)) == len(_study_names(folder))
        for name in names:
            assert not name.startswith("/") and ".." not in Path(name).parts and "\\" not in name
            assert archive.read(name) == (folder / name).read_bytes()  # as stored, byte for byte
    assert set(names) == _study_names(folder)


def test_a_download_needs_the_token(server, library):
    uid = library["records"][0]["uid"]
    assert httpx.get(f"{server.url}/v1/studies/{uid}", timeout=30).status_code == 401
    wrong = httpx.get(f"{server.url}/v1/studies/{uid}", headers={"Authorization": "Bearer nope"}, timeout=30)
    assert wrong.status_code == 401 and wrong.headers["www-authenticate"] == "Bearer"
    with pytest.raises(EngineError) as e:
        RemoteEngine(server.url, "not-the-token-at-all").download_study(uid, Path("/nonexistent-hlip") / uid)
    assert e.value.status == 401 and e.value.kind == "auth"


def test_an_unknown_uid_is_a_404_with_the_reason_and_leaves_no_folder(server, tmp_path):
    r = httpx.get(f"{server.url}/v1/studies/1.2.3.4.5.6.7", headers=server.headers(), timeout=30)
    assert r.status_code == 404 and r.headers["content-type"] == "application/json"
    detail = r.json()["detail"]
    assert "1.2.3.4.5.6.7" in detail and "not in the index" in detail and "\n" not in detail
    with pytest.raises(EngineError) as e:
        RemoteEngine(server.url, server.token).download_study("1.2.3.4.5.6.7", tmp_path / "gone")
    assert e.value.status == 404 and e.value.kind == "not_found" and "not in the index" in e.value.reason
    assert list(tmp_path.iterdir()) == []  # no folder, no half-written temporary file


@pytest.mark.parametrize("path", [
    "/v1/studies/..", "/v1/studies/../../etc/passwd", "/v1/studies/..%2F..%2F..%2Fetc%2Fpasswd",
    "/v1/studies/%2E%2E", "/v1/studies/%2Fetc%2Fpasswd", "/v1/studies/..%5C..%5Cetc%5Cpasswd",
    "/v1/studies/a%00b", "/v1/studies/~root", "/v1/studies/%20", "/v1/studies/" + "1" * 129,
])
def test_path_characters_in_the_uid_are_a_4xx_never_a_file(server, path):
    status, body, headers = _raw_get(server, path)
    assert 400 <= status < 500, (path, status, body[:200])
    assert headers.get("content-type") == "application/json" and b"root:" not in body and b"PK" not in body[:2]


def test_a_server_path_as_the_uid_is_not_read(server, library):
    """The server never reads a path the client names: a study's own folder on the server, sent as the UID."""
    folder = library["records"][0]["path"]
    status, body, _ = _raw_get(server, "/v1/studies/" + quote(str(folder), safe=""))
    assert 400 <= status < 500 and not body.startswith(b"PK")
    status, body, _ = _raw_get(server, "/v1/studies/" + quote(Path(folder).name, safe=""))  # a folder name
    assert status == 404 and not body.startswith(b"PK")


def test_the_route_is_in_the_openapi_document(server):
    spec = httpx.get(server.url + "/openapi.json", headers=server.headers(), timeout=30).json()
    op = spec["paths"]["/v1/studies/{study_uid}"]["get"]
    assert "application/zip" in op["responses"]["200"]["content"] and "404" in op["responses"]
    assert op["parameters"][0]["name"] == "study_uid" and op["parameters"][0]["in"] == "path"


# --- an index whose studies moved, came from a PACS, or hold links out of their folder ---------------------
def _edited_index(src: Path, dst: Path, edits: dict[str, dict]) -> Path:
    """A copy of the index ``src`` with some rows' path / extra changed (info.json's sizes and sums kept true)."""
    from hlip_engine.index import files

    shutil.copytree(src, dst)
    version = files.current_version(dst)
    db = version / "metadata.sqlite"
    con = sqlite3.connect(db)
    with con:
        for uid, change in edits.items():
            row = con.execute("SELECT extra FROM studies WHERE study_uid=?", (uid,)).fetchone()
            assert row is not None, uid
            extra = json.loads(row[0]) if row[0] else {}
            extra.update(change.get("extra", {}))
            con.execute("UPDATE studies SET path=?, extra=? WHERE study_uid=?",
                        (change["path"], json.dumps(extra), uid))
    con.close()
    info_path = version / "info.json"
    info = json.loads(info_path.read_text())
    info["files"]["metadata.sqlite"] = {**info["files"]["metadata.sqlite"], "bytes": db.stat().st_size,
                                        "sha256": files.sha256_of(db)}
    info_path.write_text(json.dumps(info, indent=1))
    return dst


@pytest.fixture(scope="module")
def moved_server(library, tmp_path_factory):
    root = tmp_path_factory.mktemp("serve_moved")
    records = library["records"]
    linked = root / "linked_study"  # a study with a hidden file and links that lead out of its folder
    shutil.copytree(records[2]["path"], linked)
    secret = root / "secret.txt"
    secret.write_text("not part of any study\n")
    (linked / "outside_file").symlink_to(secret)
    (linked / "outside_folder").symlink_to(root, target_is_directory=True)
    (linked / ".hidden").write_text("a dotfile\n")
    first = sorted(linked / n for n in _study_names(Path(records[2]["path"])))[0]
    os.utime(first, (0, 0))  # dated 1970: a zip cannot say so, and must still be sent
    dead_node = f"http://127.0.0.1:{free_port()}/dicom-web"  # a PACS node nobody answers on
    index = _edited_index(library["index"], root / "moved.index", {
        records[0]["uid"]: {"path": str(root / "gone" / "study0")},
        records[1]["uid"]: {"path": str(root / "gone" / "study1"), "extra": {"node": dead_node}},
        records[2]["uid"]: {"path": str(linked)},
        records[3]["uid"]: {"path": records[3]["path"], "extra": {"node": dead_node}},
    })
    srv = start_server(root / "server", index, name="moved")
    yield {"server": srv, "linked": linked, "records": records, "node": dead_node}
    stop_server(srv.proc)


def test_a_study_whose_folder_is_gone_is_a_404_saying_so(moved_server):
    srv, records = moved_server["server"], moved_server["records"]
    r = httpx.get(f"{srv.url}/v1/studies/{records[0]['uid']}", headers=srv.headers(), timeout=30)
    assert r.status_code == 404 and "no longer on the server" in r.json()["detail"]
    # of a PACS-built index: retrieved from its node when the server can, else 404 naming the node
    r = httpx.get(f"{srv.url}/v1/studies/{records[1]['uid']}", headers=srv.headers(), timeout=120)
    assert r.status_code == 404, r.text
    detail = r.json()["detail"]
    assert "cannot be retrieved" in detail and moved_server["node"] in detail and "\n" not in detail
    # a PACS-built index's study still on the server is sent from there, without asking the node
    client = RemoteEngine(srv.url, srv.token)
    path = client.download_study(records[3]["uid"], srv.tmp_dir.parent / "dl" / records[3]["uid"])
    _assert_same_study(load_study(path), load_study(records[3]["path"]))


def _pacs_helpers():
    import pacs_server  # tests/pacs_server.py: the real Orthanc the PACS tests use

    return pacs_server


@pytest.mark.skipif(shutil.which("Orthanc") is None, reason="needs Orthanc (the PACS tests' real PACS)")
def test_a_pacs_built_study_whose_folder_is_gone_is_retrieved_from_its_node(library, tmp_path, monkeypatch):
    """A real Orthanc holds the study; the index records its node and a folder that is gone: the server
    retrieves it (study_path_of_hit, into its study cache) and sends it; the client's copy loads equal."""
    pacs = _pacs_helpers()
    record = library["records"][5]
    orthanc = pacs.Orthanc(tmp_path / "orthanc").start()
    try:
        orthanc.upload(pacs.dicom_files(Path(record["path"])))
        index = _edited_index(library["index"], tmp_path / "pacs.index", {
            record["uid"]: {"path": str(tmp_path / "cache" / record["uid"]), "extra": {"node": orthanc.dicomweb_url}}})
        for key, value in (("HLIP_PACS_USERNAME", pacs.USER), ("HLIP_PACS_PASSWORD", pacs.PASSWORD),
                           ("HLIP_PACS_CACHE", str(tmp_path / "server_cache")),
                           ("HLIP_NAPARI_CONFIG_DIR", str(tmp_path / "config"))):
            monkeypatch.setenv(key, value)
        monkeypatch.delenv("HLIP_PACS_NODES", raising=False)
        srv = start_server(tmp_path / "server", index, name="pacs")
        try:
            path = RemoteEngine(srv.url, srv.token).download_study(record["uid"], tmp_path / "dl" / record["uid"])
        finally:
            stop_server(srv.proc)
        _assert_same_study(load_study(path), load_study(record["path"]))
        assert (tmp_path / "server_cache").is_dir()  # retrieved on the server, into its study cache
    finally:
        orthanc.stop()


def test_links_out_of_the_study_folder_and_hidden_files_are_never_sent(moved_server, tmp_path):
    srv, linked = moved_server["server"], moved_server["linked"]
    uid = moved_server["records"][2]["uid"]
    assert (linked / "outside_file").is_symlink() and (linked / "outside_folder" / "secret.txt").exists()
    r = httpx.get(f"{srv.url}/v1/studies/{uid}", headers=srv.headers(), timeout=60)
    assert r.status_code == 200
    names = set(zipfile.ZipFile(io.BytesIO(r.content)).namelist())
    assert names == _study_names(Path(moved_server["records"][2]["path"]))
    assert not any(n.startswith(("outside", ".")) for n in names) and b"not part of any study" not in r.content
    path = RemoteEngine(srv.url, srv.token).download_study(uid, tmp_path / uid)
    _assert_same_study(load_study(path), load_study(moved_server["records"][2]["path"]))


def test_a_single_file_study_is_sent_as_that_file(tmp_path):
    from hlip_engine.serve.downloads import study_files, zip_stream

    nifti = tmp_path / "brain.nii.gz"
    nifti.write_bytes(os.urandom(3 << 20))  # over one chunk
    assert study_files(nifti) == [(nifti, "brain.nii.gz")]
    chunks = list(zip_stream(study_files(nifti)))
    assert len(chunks) > 1 and max(len(c) for c in chunks) <= 3 << 20  # sent piece by piece
    with zipfile.ZipFile(io.BytesIO(b"".join(chunks))) as archive:
        assert archive.namelist() == ["brain.nii.gz"] and archive.read("brain.nii.gz") == nifti.read_bytes()


# --- the client's unpacking ------------------------------------------------------------------------------
def _zip(entries: dict[str, bytes], link: str | None = None) -> io.BytesIO:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        for name, data in entries.items():
            z.writestr(name, data)
        if link:
            info = zipfile.ZipInfo(link)
            info.external_attr = (0o120777 << 16)
            z.writestr(info, "/etc/passwd")
    buf.seek(0)
    return buf


@pytest.mark.parametrize("evil", ["../escaped.dcm", "/tmp/absolute.dcm", "a/../../escaped.dcm", "..\\escaped.dcm",
                                  "C:/windows.dcm"])
def test_unpacking_refuses_an_entry_outside_the_folder(tmp_path, evil):
    root = tmp_path / "deep" / "study"
    root.mkdir(parents=True)
    with pytest.raises(EngineError, match="outside the study"):
        unpack_study_zip(_zip({"ok.dcm": b"x", evil: b"evil"}), root)
    assert not (tmp_path / "deep" / "escaped.dcm").exists() and not (tmp_path / "escaped.dcm").exists()
    assert not Path("/tmp/absolute.dcm").exists()


def test_unpacking_refuses_links(tmp_path):
    with pytest.raises(EngineError, match="link"):
        unpack_study_zip(_zip({"ok.dcm": b"x"}, link="passwd"), tmp_path)
    assert not (tmp_path / "passwd").exists()


def test_an_interrupted_or_refused_download_leaves_no_folder(tmp_path, monkeypatch):
    client = RemoteEngine("http://127.0.0.1:9", "token")
    whole = _zip({"s1/a.dcm": b"a" * 5000, "s1/b.dcm": b"b" * 5000}).getvalue()

    def half(_route, out):  # the connection dropped halfway
        out.write(whole[: len(whole) // 2])
        return len(whole) // 2

    monkeypatch.setattr(client, "_download", half)
    with pytest.raises(EngineError, match="not a zip"):
        client.download_study("1.2.3", tmp_path / "1.2.3")
    monkeypatch.setattr(client, "_download", lambda _r, out: out.write(_zip({"a.dcm": b"a", "../x": b"x"}).read()))
    with pytest.raises(EngineError, match="outside the study"):
        client.download_study("1.2.3", tmp_path / "1.2.3")
    assert list(tmp_path.iterdir()) == []  # no study folder, no hidden temporary folder or file

    monkeypatch.setattr(client, "_download", lambda _r, out: out.write(whole))
    path = client.download_study("1.2.3", tmp_path / "1.2.3")
    assert _study_names(path) == {"s1/a.dcm", "s1/b.dcm"} and os.listdir(tmp_path) == ["1.2.3"]


def test_a_down_server_is_down_and_leaves_no_folder(tmp_path):
    with pytest.raises(EngineError) as e:
        RemoteEngine(f"http://127.0.0.1:{free_port()}", "token").download_study("1.2.3", tmp_path / "1.2.3")
    assert e.value.kind == "down" and list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("uid", ["..", "../x", "a/b", "", "1.2\x00", "x" * 129])
def test_the_client_asks_only_for_uids(tmp_path, uid):
    with pytest.raises(EngineError) as e:
        RemoteEngine("http://127.0.0.1:9", "token").download_study(uid, tmp_path / "study")
    assert e.value.kind == "bad_request" and list(tmp_path.iterdir()) == []
