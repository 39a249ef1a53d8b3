"""STOW-RS on `hlip serve`: instances POSTed with the server's token land in the listener's spool and the
running `hlip listen` indexes, scores and ranks the study (real server, real listener, demo model)."""
from __future__ import annotations

import json
import os
import secrets
import subprocess
import sys
import time
import urllib.error
import urllib.request

import pydicom
from triage_helpers import DEMO_MODEL, ENV, REPO, clone_study, free_port, storescu, study_uid_of, wait_done

TOKEN = "stow-test-token-0123456789abcdef"


def multipart(files, boundary: str) -> bytes:
    out = b""
    for data in files:
        out += f"--{boundary}\r\nContent-Type: application/dicom\r\n\r\n".encode() + data + b"\r\n"
    return out + f"--{boundary}--\r\n".encode()


def post(url: str, body: bytes, boundary: str, token: str | None = TOKEN) -> tuple[int, dict]:
    headers = {"Content-Type": f'multipart/related; type="application/dicom"; boundary={boundary}'}
    if token:
        headers["Authorization"] = f"Bearer {token}"
    req = urllib.request.Request(url, data=body, headers=headers, method="POST")
    try:
        with urllib.request.urlopen(req, timeout=60) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read() or b"{}")


def test_stow_rs_instances_are_indexed_scored_and_ranked(phantoms, tmp_path, listener_factory):
    base = sorted((phantoms["root"] / "base").glob("phantom_*"))
    first = clone_study(base[1], tmp_path / "first", "stow0")
    second = clone_study(base[3], tmp_path / "second", "stow1")
    lp = listener_factory(quiet_s=1.5).start()
    storescu(lp.port, first)  # the index the server opens
    wait_done(lp.index, {study_uid_of(first)})

    (tmp_path / "token").write_text(TOKEN + "\n")
    (tmp_path / "token").chmod(0o600)
    (tmp_path / "up").mkdir()
    port = free_port()
    log = open(tmp_path / "serve.log", "wb")  # noqa: SIM115
    server = subprocess.Popen([sys.executable, "-m", "hlip_engine.cli", "serve", "--model", str(DEMO_MODEL), "--index",
                               str(lp.index), "--port", str(port), "--token-file", str(tmp_path / "token"),
                               "--tmp-dir", str(tmp_path / "up"), "--device", "cpu"], cwd=REPO,
                              env={**ENV, "HLIP_TOKEN": ""}, stdout=log, stderr=subprocess.STDOUT)
    try:
        url = f"http://127.0.0.1:{port}"
        deadline = time.time() + 120
        while time.time() < deadline:
            try:
                urllib.request.urlopen(url + "/v1/health", timeout=2).read()
                break
            except OSError:
                assert server.poll() is None, (tmp_path / "serve.log").read_text()[-3000:]
                time.sleep(0.3)
        files = sorted(second.rglob("*.dcm"))
        blobs = [f.read_bytes() for f in files]
        bad = pydicom.dcmread(files[0])
        bad.PixelData = bad.PixelData[:100]
        bad.SOPInstanceUID = pydicom.uid.generate_uid()
        bad.file_meta.MediaStorageSOPInstanceUID = bad.SOPInstanceUID
        bad.save_as(tmp_path / "bad.dcm", enforce_file_format=True)
        boundary = secrets.token_hex(8)
        body = multipart([*blobs, (tmp_path / "bad.dcm").read_bytes()], boundary)

        partials = set((lp.index / "inbox").glob(".partial-*"))  # the listener's receiver processes'
        assert post(url + "/dicom-web/studies", body, boundary, token=None)[0] == 401
        assert post(url + "/dicom-web/studies", body, boundary, token="wrong")[0] == 401
        # refused before the body is read, yet answered, not cut off mid-upload (a broken pipe once, in CI)
        req = urllib.request.Request(url + "/dicom-web/studies", data=body, method="POST", headers={
            "Content-Type": "application/zip", "Authorization": f"Bearer {TOKEN}"})
        try:
            urllib.request.urlopen(req, timeout=60)
            raise AssertionError("a zip body was taken for STOW-RS")
        except urllib.error.HTTPError as e:
            assert e.code == 415 and "multipart/related" in json.loads(e.read())["detail"]
        status, answer = post(url + "/dicom-web/studies", body, boundary)
        assert status == 202, (status, answer)
        assert len(answer["00081199"]["Value"]) == len(blobs)
        failed = answer["00081198"]["Value"]
        assert [f["00081197"]["Value"][0] for f in failed] == [0xA900]
        assert failed[0]["00081155"]["Value"] == [str(bad.SOPInstanceUID)]

        uid = study_uid_of(second)
        row = next(r for r in wait_done(lp.index, {uid}) if r["study_uid"] == uid)
        assert row["status"] == "done" and row["instances"] == len(blobs) and row["priority"] == "STAT"
        assert set((lp.index / "inbox").glob(".partial-*")) == partials  # the server's own one is gone
        # an instance of another study sent to /studies/{uid}: refused, nothing stored
        other = multipart([(sorted(first.rglob("*.dcm"))[0]).read_bytes()], boundary)
        status, answer = post(url + f"/dicom-web/studies/{uid}", other, boundary)
        assert status == 409 and answer["00081198"]["Value"][0]["00081197"]["Value"] == [0xA900]
        assert post(url + "/dicom-web/studies", b"not multipart", boundary)[0] == 400
    finally:
        server.terminate()
        server.wait(30)
        log.close()
    assert os.path.exists(lp.index / "worklist.sqlite")
