"""`POST /v1/report`: the same DICOM objects as `hlip report` for the same study, model and prompts (the same
deterministic UIDs), zipped; a request naming nothing is 422; no PACS node on the server, no send."""
from __future__ import annotations

import io
import zipfile

import httpx
import pydicom
import pytest
from conftest import DEMO

from hlip_engine.cli import main as hlip


@pytest.fixture(scope="module")
def http(server):
    with httpx.Client(base_url=server.url, headers=server.headers(), timeout=300) as client:
        yield client


def test_the_server_report_equals_the_cli_report(http, library, tmp_path):
    record = library["records"][0]
    r = http.post("/v1/report", params={"prompt_set": "pub-brain-5", "relevance": "glioma"},
                  json={"study_uid": record["uid"]})
    assert r.status_code == 200, r.text
    served = zipfile.ZipFile(io.BytesIO(r.content))
    names = served.namelist()
    assert "hlip_sr.dcm" in names and "report.json" in names and any(n.startswith("hlip_map_") for n in names)
    assert hlip(["report", str(record["path"]), "--model", str(DEMO), "--prompt-set", "pub-brain-5",
                 "--relevance", "glioma", "--out", str(tmp_path / "cli"), "--device", "cpu"]) == 0
    for name in [n for n in names if n.endswith(".dcm")]:
        ours = pydicom.dcmread(io.BytesIO(served.read(name)))
        cli = pydicom.dcmread(tmp_path / "cli" / name)
        assert ours.SOPInstanceUID == cli.SOPInstanceUID and ours.StudyInstanceUID == record["uid"]
    sr = pydicom.dcmread(io.BytesIO(served.read("hlip_sr.dcm")))
    assert sr.VerificationFlag == "UNVERIFIED"


def test_a_report_request_naming_nothing_or_sending_without_a_node_is_422(http, library):
    uid = library["records"][0]["uid"]
    nothing = http.post("/v1/report", json={"study_uid": uid})
    assert nothing.status_code == 422 and "prompt_set" in nothing.json()["detail"]
    send = http.post("/v1/report", params={"prompt_set": "pub-brain-5", "send": "true"}, json={"study_uid": uid})
    assert send.status_code == 422 and "--pacs" in send.json()["detail"]
