"""`hlip inspect PATH [--json]`: the study tree of real DICOM written by pydicom."""
import json

import numpy as np

from hlip_engine import PatientInfo, Scan
from hlip_engine.cli import main
from hlip_engine.io import write_dicom_series


def _write_two_studies(root):
    aff = np.diag([0.5, 0.5, 2.0, 1.0])
    patient = PatientInfo(name="Doe^John", id="PID-555")
    write_dicom_series(Scan(np.zeros((6, 16, 12), np.float32), aff, modality="CT", description="Head 5mm"),
                       root / "a" / "ct", study_uid="1.2.3.100", series_number=2, study_description="CT HEAD",
                       study_date="20240501", patient=patient)
    write_dicom_series(Scan(np.zeros((1, 16, 16), np.float32), aff, modality="CT", description="Topogram"),
                       root / "a" / "scout", study_uid="1.2.3.100", series_number=1,
                       image_type=("ORIGINAL", "PRIMARY", "LOCALIZER"), patient=patient)
    write_dicom_series(Scan(np.zeros((4, 8, 8), np.float32), aff, modality="MR", description="T2 FLAIR"),
                       root / "b", study_uid="1.2.3.200", series_number=5, study_description="MRI BRAIN",
                       study_date="20240601", patient=patient)
    (root / "a" / "notes.txt").write_text("not dicom")


def test_inspect_text_shows_one_block_per_study(tmp_path, capsys):
    _write_two_studies(tmp_path)
    assert main(["inspect", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert out.count("Study 1.2.3.") == 2 and "2 studies, 2 scans" in out
    assert "2024-05-01" in out and "'CT HEAD'" in out and "Head 5mm" in out and "6 x 16 x 12" in out
    assert "2, 0.5, 0.5" in out and "axial" in out
    assert "localizer (ImageType LOCALIZER)" in out and "T2 FLAIR" in out
    assert "not part of any study (1)" in out and "notes.txt: not a DICOM file" in out
    assert "Doe" not in out and "PID-555" not in out


def test_inspect_json_lists_scans_and_skipped_items(tmp_path, capsys):
    _write_two_studies(tmp_path)
    assert main(["inspect", str(tmp_path / "a"), "--json"]) == 0
    tree = json.loads(capsys.readouterr().out)
    (study,) = tree["studies"]
    assert study["uid"] == "1.2.3.100" and study["modality"] == "CT" and study["kind"] == "dicom"
    (scan,) = study["scans"]
    assert scan["shape"] == [6, 16, 12] and scan["spacing_mm"] == [2.0, 0.5, 0.5]
    assert scan["orientation"] == "axial" and scan["series_number"] == 2
    assert {s["reason"] for s in study["skipped"]} == {"localizer (ImageType LOCALIZER)"}
    (stray,) = tree["not_in_any_study"]
    assert stray["item"].endswith("notes.txt") and "not a DICOM file" in stray["reason"]


def test_inspect_empty_folder_is_one_clear_error(tmp_path, capsys):
    assert main(["inspect", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("hlip inspect: error:") and "no study found" in err and "\n" not in err
