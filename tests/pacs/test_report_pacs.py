"""`hlip report --send`: the SR and the relevance maps stored into a real Orthanc over STOW-RS and C-STORE,
found again under the source study by QIDO-RS / C-FIND, retrieved byte-equal over WADO-RS; a store the node
refuses (or drops) is one line naming the node and the status, and nothing is recorded as sent."""
from __future__ import annotations

import json
import logging

import pydicom
import pytest
import torch
from pacs_server import AET, PASSWORD, Orthanc, dicom_files

from hlip_engine.cli import main
from hlip_engine.demo import make_studies
from hlip_engine.demo.showcase import DEMO_MODEL
from hlip_engine.io import load_study
from hlip_engine.model import load_model
from hlip_engine.pacs import PacsError, StudyCache, connect
from hlip_engine.report import send_report, write_report
from hlip_engine.report.compute import analyse

torch.set_num_threads(2)
SR_CLASS, PM_CLASS = "1.2.840.10008.5.1.4.1.1.88.34", "1.2.840.10008.5.1.4.1.1.30"


@pytest.fixture(scope="module")
def phantom(tmp_path_factory):
    return make_studies(tmp_path_factory.mktemp("report-pacs"), 1, seed=3)[0]


@pytest.fixture(scope="module")
def analysis(phantom):
    model = load_model(DEMO_MODEL, device="cpu")
    study = load_study(phantom["path"])
    return analyse(model, study, prompt_set="pub-brain-5", relevance_prompts=["glioma"], method="last-block")


@pytest.fixture
def report(analysis, tmp_path):
    return write_report(analysis, tmp_path / "report")


def _orthanc(root, phantom, reject_lua: bool = False) -> Orthanc:
    server = Orthanc(root)
    if reject_lua:  # a routing rule that drops our objects while answering success
        lua = server.root / "drop.lua"
        lua.write_text('function ReceivedInstanceFilter(dicom, origin, info)\n'
                       '  return dicom.Modality ~= "SR" and dicom.Modality ~= "OT"\nend\n')
        cfg = json.loads(server.config.read_text())
        cfg["LuaScripts"] = [str(lua)]
        server.config.write_text(json.dumps(cfg))
    server.start()
    server.upload(dicom_files(phantom["path"]))
    return server


@pytest.fixture
def orthanc(tmp_path, phantom):
    server = _orthanc(tmp_path / "orthanc", phantom)
    yield server
    server.stop()


def _dataset_bytes(data: bytes) -> bytes:
    """A Part 10 file's data set, after the preamble and the File Meta Information group (which a C-STORE
    receiver writes anew)."""
    group_length = int.from_bytes(data[140:144], "little")  # (0002,0000) UL, explicit VR little endian
    return data[144 + group_length:]


@pytest.mark.parametrize("protocol", ["dicomweb", "dimse"])
def test_report_is_stored_found_and_retrieved_byte_equal(protocol, orthanc, report, analysis, tmp_path, caplog):
    caplog.set_level(logging.DEBUG)
    study_uid = analysis.study.uid
    send_report(report, orthanc.url(protocol))
    assert report.sent["protocol"] == {"dicomweb": "STOW-RS", "dimse": "C-STORE"}[protocol]
    assert report.sent["instances"] == len(report.files)
    assert json.loads((report.out_dir / "report.json").read_text())["sent"]["instances"] == len(report.files)
    ours = {pydicom.dcmread(p, stop_before_pixels=True).SeriesInstanceUID: p for p in report.files}
    with connect(orthanc.url(protocol)) as client:  # QIDO-RS, or C-FIND
        held = {s["series_uid"]: s for s in client.find_series(study_uid)}
    assert {held[uid]["modality"] for uid in ours} == {"SR", "OT"}
    assert all(held[uid]["instances"] == 1 for uid in ours)
    with connect(orthanc.dicomweb_url) as web:  # WADO-RS
        folder = web.retrieve(study_uid, StudyCache(tmp_path / "cache"), series=list(ours))
    back = {pydicom.dcmread(p, stop_before_pixels=True).SOPInstanceUID: p.read_bytes() for p in folder.rglob("*")
            if p.is_file() and p.suffix == ".dcm"}
    for path in report.files:
        data = path.read_bytes()
        got = back[pydicom.dcmread(path, stop_before_pixels=True).SOPInstanceUID]
        if protocol == "dicomweb":
            assert got == data, f"{path.name} came back changed"
        else:
            assert _dataset_bytes(got) == _dataset_bytes(data), f"{path.name}'s data set came back changed"
    patient = pydicom.dcmread(report.sr, stop_before_pixels=True)
    for secret in (PASSWORD, patient.PatientID, str(patient.PatientName)):
        assert secret not in caplog.text


def test_sending_again_replaces_instead_of_adding(orthanc, report, analysis):
    send_report(report, orthanc.dicomweb_url)
    send_report(report, orthanc.dimse_url)
    with connect(orthanc.dicomweb_url) as client:
        series = [s for s in client.find_series(analysis.study.uid) if s["modality"] in ("SR", "OT")]
    assert len(series) == len(report.files) and all(s["instances"] == 1 for s in series)


def test_refused_store_is_one_line_and_nothing_is_recorded(orthanc, report, monkeypatch):
    monkeypatch.setenv("HLIP_PACS_PASSWORD", "wrong-password")
    with pytest.raises(PacsError) as err:
        send_report(report, orthanc.dicomweb_url)
    text = str(err.value)
    assert orthanc.dicomweb_url in text and "HTTP 401" in text and "\n" not in text
    assert "wrong-password" not in text and PASSWORD not in text
    assert report.sent is None and json.loads((report.out_dir / "report.json").read_text())["sent"] is None


def test_objects_the_node_drops_are_not_recorded_as_sent(tmp_path, phantom, report):
    server = _orthanc(tmp_path / "dropping", phantom, reject_lua=True)
    try:
        with pytest.raises(PacsError, match=r"does not hold (\d+) of the \1 report series") as err:
            send_report(report, server.dimse_url)
        assert server.dimse_url in str(err.value)
    finally:
        server.stop()
    assert report.sent is None and json.loads((report.out_dir / "report.json").read_text())["sent"] is None


def test_cli_send_to_a_node_that_refuses_the_association(orthanc, phantom, tmp_path, capsys):
    wrong = orthanc.dimse_url.replace(f"dicom://{AET}@", "dicom://NOTORTHANC@")
    rc = main(["report", phantom["path"], "--model", str(DEMO_MODEL), "--device", "cpu", "--prompt-set",
               "pub-brain-5", "--method", "last-block", "--out", str(tmp_path / "cli"), "--send", wrong])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 1 and err[-1].startswith("hlip report: error: not stored: ") and "NOTORTHANC" in err[-1]
    assert "rejected" in err[-1]
    assert json.loads((tmp_path / "cli" / "report.json").read_text())["sent"] is None
