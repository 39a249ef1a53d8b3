"""The report inside a study: a Basic Text SR written with pydicom beside an image series is read back as the
study's report (impression and findings sections), the SR stays out of the scans, and bad SRs are harmless."""
from __future__ import annotations

import numpy as np
from pydicom.data import get_testdata_file
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

from hlip_engine.io import load_study
from hlip_engine.io.dicom_sr import read_sr_report
from hlip_engine.io.dicom_write import write_dicom_series
from hlip_engine.study import Scan

STUDY = "1.2.826.0.1.3680043.8.498.4242"
BASIC_TEXT_SR = "1.2.840.10008.5.1.4.1.1.88.11"


def _code(meaning: str, value: str, scheme: str = "DCM") -> Dataset:
    c = Dataset()
    c.CodeValue, c.CodingSchemeDesignator, c.CodeMeaning = value, scheme, meaning
    return c


def _text(name: str, code: str, text: str) -> Dataset:
    item = Dataset()
    item.RelationshipType, item.ValueType = "CONTAINS", "TEXT"
    item.ConceptNameCodeSequence = [_code(name, code)]
    item.TextValue = text
    return item


def _container(name: str, code: str, children) -> Dataset:
    item = Dataset()
    item.RelationshipType, item.ValueType, item.ContinuityOfContent = "CONTAINS", "CONTAINER", "SEPARATE"
    item.ConceptNameCodeSequence = [_code(name, code)]
    item.ContentSequence = list(children)
    return item


def write_sr(path, sections, *, study_uid=STUDY, content_date="20260301", content_time="101500") -> None:
    """A Basic Text SR: document title "Radiology Report", one CONTAINER per section (name, code, [texts])."""
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = BASIC_TEXT_SR
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID, ds.SOPInstanceUID = BASIC_TEXT_SR, meta.MediaStorageSOPInstanceUID
    ds.StudyInstanceUID, ds.SeriesInstanceUID = study_uid, generate_uid()
    ds.Modality, ds.SeriesNumber, ds.InstanceNumber = "SR", 900, 1
    ds.PatientID, ds.PatientName, ds.StudyDate = "ANON", "Anon^Patient", "20260301"
    ds.ContentDate, ds.ContentTime = content_date, content_time
    ds.ValueType, ds.ContinuityOfContent = "CONTAINER", "SEPARATE"
    ds.ConceptNameCodeSequence = [_code("Radiology Report", "18748-4", "LN")]
    ds.CompletionFlag, ds.VerificationFlag = "COMPLETE", "UNVERIFIED"
    ds.ContentSequence = [_container(name, code, [_text(name, code, t) for t in texts])
                          for name, code, texts in sections]
    ds.save_as(str(path), enforce_file_format=True)


def _study_folder(tmp_path):
    vox = np.random.default_rng(1).integers(0, 300, size=(10, 24, 24)).astype(np.int16)
    write_dicom_series(Scan(vox, np.diag([1.0, 1.0, 4.0, 1.0]), modality="MR"), tmp_path / "ax", study_uid=STUDY,
                       series_number=2)
    (tmp_path / "sr").mkdir()
    return tmp_path


def test_study_report_from_a_basic_text_sr(tmp_path):
    folder = _study_folder(tmp_path)
    write_sr(folder / "sr" / "report.dcm", [
        ("Findings", "121070", ["A 3 cm enhancing mass in the right temporal lobe.", "No midline shift."]),
        ("Impression", "121073", ["Right temporal mass, likely high-grade glioma."]),
    ])
    study = load_study(folder)
    assert len(study.scans) == 1  # the SR is not a scan
    assert study.report["impression"] == "Right temporal mass, likely high-grade glioma."
    assert study.report["findings"] == "A 3 cm enhancing mass in the right temporal lobe.\nNo midline shift."
    assert study.report["title"] == "Radiology Report"
    assert any("structured report" in why for _, why in study.skipped)


def test_latest_report_wins_and_plain_text_is_the_impression(tmp_path):
    folder = _study_folder(tmp_path)
    write_sr(folder / "sr" / "prelim.dcm", [("Impression", "121073", ["Preliminary: possible mass."])],
             content_time="080000")
    write_sr(folder / "sr" / "final.dcm", [("Impression", "121073", ["Final: right temporal glioma."])],
             content_time="120000")
    assert load_study(folder).report["impression"] == "Final: right temporal glioma."
    # a report without named sections: its text is the impression
    flat = tmp_path / "flat.dcm"
    write_sr(flat, [("Report Text", "121111", ["Normal study."])])
    assert read_sr_report(flat)["impression"] == "Normal study."


def test_sr_test_file_and_non_sr_files():
    rep = read_sr_report(get_testdata_file("test-SR.dcm"))  # pydicom's Comprehensive SR
    assert rep["title"] == "Diagnosis" and "A mass of" in rep["text"]
    assert read_sr_report(get_testdata_file("CT_small.dcm")) is None  # an image is not a report
    assert read_sr_report(__file__) is None  # not DICOM at all


def test_study_without_sr_has_no_report(tmp_path):
    assert load_study(_study_folder(tmp_path)).report == {}


def test_index_build_records_the_sr_impression_and_reports_override_it(tmp_path):
    """A study's own report reaches its index entry (what search hits show); a --reports file wins."""
    import json

    import torch

    from hlip_engine.cli import main as hlip
    from hlip_engine.index import StudyIndex
    from hlip_engine.model import create_model

    library = tmp_path / "library"
    folder = _study_folder(library / "study01")
    write_sr(folder / "sr" / "report.dcm", [("Impression", "121073", ["Small right frontal meningioma."])])
    other_uid = "1.2.826.0.1.3680043.8.498.4243"
    vox = np.random.default_rng(2).integers(0, 300, size=(10, 24, 24)).astype(np.int16)
    write_dicom_series(Scan(vox, np.diag([1.0, 1.0, 4.0, 1.0]), modality="MR"), library / "study02" / "ax",
                       study_uid=other_uid, series_number=2)
    torch.manual_seed(0)
    ckpt = create_model("hlip_tiny").save(tmp_path / "tiny.safetensors")
    args = ["index", "build", str(library), "--model", str(ckpt), "--workers", "0", "--no-progress"]
    assert hlip(args + ["--index", str(tmp_path / "a")]) == 0
    index = StudyIndex.open(tmp_path / "a")
    by_uid = {m["study_uid"]: m for m in index.metadata(range(len(index)))}
    assert by_uid[STUDY]["impression"] == "Small right frontal meningioma."
    assert "impression" not in by_uid[other_uid]  # no report, nothing invented
    reports = tmp_path / "reports.json"
    reports.write_text(json.dumps({STUDY: "IMPRESSION: Meningioma, unchanged from the prior."}))
    assert hlip(args + ["--index", str(tmp_path / "b"), "--reports", str(reports)]) == 0
    index = StudyIndex.open(tmp_path / "b")
    by_uid = {m["study_uid"]: m for m in index.metadata(range(len(index)))}
    assert "unchanged from the prior" in by_uid[STUDY]["impression"]
