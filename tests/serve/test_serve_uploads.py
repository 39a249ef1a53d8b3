"""Studies sent to a real `hlip serve`: zip uploads and indexed studies give the engine's answers (to 1e-5),
and every malformed upload is a 4xx with a one-line reason, written nowhere outside the server's folder."""
from __future__ import annotations

import io
import json
import os
import stat
import zipfile
from pathlib import Path

import httpx
import numpy as np
import pytest

PUB = "pub-brain-5"


@pytest.fixture(scope="module")
def http(server):
    with httpx.Client(base_url=server.url, headers=server.headers(), timeout=120) as client:
        yield client


def zipped(folder: Path) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        for p in sorted(Path(folder).rglob("*")):
            if p.is_file():
                z.write(p, p.relative_to(folder).as_posix())
    return buf.getvalue()


def local_embedding(local, folder):
    from hlip_engine.io import load_study
    from hlip_engine.search import encode_prepared

    prepared = local["model"].prepare(load_study(folder))
    return encode_prepared(local["model"], [prepared.tensor])[0]


def local_probabilities(local, folder, **spec):
    import torch

    from hlip_engine.zeroshot import build_classifier

    clf = build_classifier(local["model"], **spec)
    return clf.classify(torch.from_numpy(local_embedding(local, folder)))


def assert_empty_uploads(server):
    assert list(server.tmp_dir.iterdir()) == [], "uploads must be deleted after the request"


def test_zeroshot_upload_and_indexed_study_equal_the_cli(http, server, library, local, demo_checkpoint, capsys):
    from hlip_engine.cli import main as hlip

    rec = library["records"][1]
    r = http.post("/v1/zeroshot", params={"prompt_set": PUB}, content=zipped(rec["path"]),
                  headers={"Content-Type": "application/zip"})
    assert r.status_code == 200, r.text
    served = r.json()
    assert hlip(["zeroshot", rec["path"], "--model", str(demo_checkpoint), "--prompt-set", PUB, "--json",
                 "--device", "cpu"]) == 0
    cli = json.loads(capsys.readouterr().out)
    assert set(served) == set(cli) and served["mode"] == cli["mode"] == "softmax"
    assert list(served["probabilities"]) == list(cli["probabilities"])
    np.testing.assert_allclose(list(served["probabilities"].values()), list(cli["probabilities"].values()),
                               atol=1e-5)
    by_uid = http.post("/v1/zeroshot", params={"prompt_set": PUB}, json={"study_uid": rec["uid"]}).json()
    assert by_uid["study"] == rec["uid"] == cli["study"]
    np.testing.assert_allclose(list(by_uid["probabilities"].values()), list(cli["probabilities"].values()),
                               atol=1e-5)
    assert_empty_uploads(server)


def test_zeroshot_free_prompts_templates_and_binary_classes(http, library, local):
    rec = library["records"][3]
    cases = [
        ([("prompt", "glioma"), ("prompt", "no abnormality"), ("prompt", "haemorrhage")],
         {"prompts": ["glioma", "no abnormality", "haemorrhage"]}),
        ([("prompt", "glioma"), ("prompt", "normal"), ("template", "This MRI study shows: {}.")],
         {"prompts": ["glioma", "normal"], "templates": ["This MRI study shows: {}."]}),
        ([("classes", json.dumps({"Bleed": ["No hemorrhage.", "Hemorrhage."]})), ("mode", "binary")],
         {"prompts": {"Bleed": ("No hemorrhage.", "Hemorrhage.")}, "mode": "binary"}),
        ([("prompt_set", "head-ct-hemorrhage")], {"prompt_set": "head-ct-hemorrhage"}),
    ]
    for params, spec in cases:
        r = http.post("/v1/zeroshot", params=params, json={"study_uid": rec["uid"]})
        assert r.status_code == 200, (params, r.text)
        want = local_probabilities(local, rec["path"], **spec)
        got = r.json()["probabilities"]
        assert list(got) == list(want)
        np.testing.assert_allclose(list(got.values()), list(want.values()), atol=1e-5)


@pytest.mark.parametrize("params, words", [
    ([("prompt", "glioma")], "two or more"),
    ([("prompt_set", "no-such-set")], "unknown prompt set"),
    ([("prompt", "a"), ("prompt_set", PUB)], "one of them"),
    ([("prompt", "a"), ("prompt", "b"), ("mode", "sideways")], "mode"),
    ([("prompt", "a"), ("prompt", "b"), ("template", "no placeholder")], "template"),
    ([("classes", "{not json")], "not JSON"),
    ([("classes", '{"a": 3}')], "classes must be"),
    ([("prompt", "a"), ("prompt", "b"), ("mode", "binary")], "binary"),
])
def test_zeroshot_without_usable_prompts_is_422(http, library, params, words):
    r = http.post("/v1/zeroshot", params=params, json={"study_uid": library["records"][0]["uid"]})
    assert r.status_code == 422, r.text
    assert words.lower() in r.json()["detail"].lower()


def test_embed_upload_equals_the_engine(http, server, library, local):
    rec = library["records"][4]
    r = http.post("/v1/embed", content=zipped(rec["path"]), headers={"Content-Type": "application/zip"})
    assert r.status_code == 200, r.text
    doc = r.json()
    vec = np.asarray(doc["embedding"], dtype=np.float32)
    np.testing.assert_allclose(vec, local_embedding(local, rec["path"]), atol=1e-5)
    assert doc["dim"] == local["model"].embed_dim == vec.shape[0] and abs(np.linalg.norm(vec) - 1) < 1e-4
    by_uid = np.asarray(http.post("/v1/embed", json={"study_uid": rec["uid"]}).json()["embedding"])
    np.testing.assert_allclose(by_uid, vec, atol=1e-6)
    assert_empty_uploads(server)


def test_search_like_an_uploaded_study_equals_the_engine(http, library, local):
    from hlip_engine import search as retrieval
    from hlip_engine.io import load_study

    rec = library["records"][2]
    r = http.post("/v1/search", params={"k": 4}, content=zipped(rec["path"]),
                  headers={"Content-Type": "application/zip"})
    assert r.status_code == 200, r.text
    study = load_study(rec["path"])  # a study of the index: its stored vector, as `hlip search --like`
    row = retrieval.stored_row(local["index"], study)
    want = [h.as_dict() for h in retrieval.search(local["index"], local["index"].vectors([row]), 4, exclude=[row])]
    got = r.json()["hits"]
    assert [h["study_uid"] for h in got] == [h["study_uid"] for h in want] and rec["uid"] not in str(got)
    np.testing.assert_allclose([h["score"] for h in got], [h["score"] for h in want], atol=1e-5)


def _zip_of(entries: dict[str, bytes], links: dict[str, str] | None = None) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        for name, data in entries.items():
            z.writestr(name, data)
        for name, target in (links or {}).items():
            info = zipfile.ZipInfo(name)
            info.external_attr = (stat.S_IFLNK | 0o777) << 16
            z.writestr(info, target)
    return buf.getvalue()


def _no_pixel_dicom() -> bytes:
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, generate_uid

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.4"
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID, ds.SOPInstanceUID = meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID
    ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.Modality = generate_uid(), generate_uid(), "MR"
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    return buf.getvalue()


def test_bad_uploads_are_4xx_with_one_line_and_nothing_escapes(http, server, tmp_path):
    outside = server.tmp_dir.parent
    before = {p for p in outside.rglob("*")}
    rng = np.random.default_rng(18)
    cases = [
        ("random bytes", rng.bytes(5000), 400, "not a zip"),
        ("empty", b"", 400, "empty upload"),
        ("zip-slip ..", _zip_of({"../../evil.txt": b"x", "ok.dcm": b"y"}), 400, "outside the upload folder"),
        ("zip-slip abs", _zip_of({"/tmp/evil_abs.txt": b"x"}), 400, "outside the upload folder"),
        ("zip-slip nested", _zip_of({"a/b/../../../evil.txt": b"x"}), 400, "outside the upload folder"),
        ("windows abs", _zip_of({"C:\\evil.txt": b"x"}), 400, "outside the upload folder"),
        ("symlink", _zip_of({}, {"link.dcm": "/etc/passwd"}), 400, "symbolic link"),
        ("non-DICOM", _zip_of({"notes.txt": b"hello", "img/readme.md": b"# hi"}), 422, "no readable study"),
        ("no readable scan", _zip_of({"sr.dcm": _no_pixel_dicom()}), 422, "no readable scan"),
        ("empty zip", _zip_of({}), 422, "no files"),
        ("truncated zip", _zip_of({"a.dcm": b"x" * 1000})[:-30], 400, "not a zip"),
    ]
    for name, data, status, words in cases:
        for route in ("/v1/zeroshot?prompt_set=pub-brain-5", "/v1/embed", "/v1/relevance?prompt=glioma",
                      "/v1/search?k=3"):
            r = http.post(route, content=data, headers={"Content-Type": "application/zip"})
            assert r.status_code == status, (name, route, r.text)
            detail = r.json()["detail"]
            assert words in detail and "\n" not in detail and str(server.tmp_dir) not in detail, (name, detail)
        assert_empty_uploads(server)
    after = {p for p in outside.rglob("*")}
    assert {p.name for p in after - before} <= {"server.log"}, after - before
    assert not Path("/tmp/evil_abs.txt").exists() and not (outside.parent / "evil.txt").exists()


def test_oversized_uploads_are_413(http, server):
    from_limit = 8 << 20  # the test server runs with --max-upload-mb 8
    big = os.urandom(from_limit + 1024)
    r = http.post("/v1/embed", content=big, headers={"Content-Type": "application/zip"})
    assert r.status_code == 413 and "limit" in r.json()["detail"]

    def chunks():  # no Content-Length: counted as it streams
        for _ in range(10):
            yield b"\0" * (1 << 20)

    r = http.post("/v1/zeroshot?prompt_set=pub-brain-5", content=chunks(), headers={"Content-Type": "application/zip"})
    assert r.status_code == 413
    # a zip bomb: small on the wire, larger than 8x the limit unpacked
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as z:
        z.writestr("bomb.dcm", b"\0" * (70 << 20))
    assert len(buf.getvalue()) < from_limit
    r = http.post("/v1/embed", content=buf.getvalue(), headers={"Content-Type": "application/zip"})
    assert r.status_code == 413 and "unpacks to more than" in r.json()["detail"]
    assert_empty_uploads(server)


def test_a_refused_upload_is_answered_not_cut_off(server):
    """A client sends the whole body before it reads the answer (urllib, requests, curl without Expect): a 401
    or 415 given before the body is read must still reach it, not a broken pipe (CI once saw one)."""
    import urllib.error
    import urllib.request

    body = os.urandom(6 << 20)  # under the test server's 8 MB limit, many socket buffers long
    cases = [({"Content-Type": "application/zip"}, 401, "token"),
             ({"Content-Type": "application/zip", "Authorization": "Bearer wrong-token"}, 401, "token"),
             ({"Content-Type": "text/plain", **server.headers()}, 415, "application/zip")]
    for headers, status, word in cases * 3:
        req = urllib.request.Request(server.url + "/v1/embed", data=body, headers=headers, method="POST")
        with pytest.raises(urllib.error.HTTPError) as e:
            urllib.request.urlopen(req, timeout=60)
        assert e.value.code == status and word in json.loads(e.value.read())["detail"]
    assert_empty_uploads(server)
