"""`hlip report` on phantom DICOM studies with the shipped demo model: a TID 1500 Comprehensive 3D SR and
float Parametric Maps that dciodvfy passes, highdicom reads back, whose values are the engine's relevance
volumes and whose peak is ``Relevance.peak()`` in patient space; deterministic UIDs; the SR read back."""
import json
import shutil
import subprocess
from dataclasses import replace
from pathlib import Path

import highdicom as hd
import numpy as np
import pydicom
import pytest
import torch

from hlip_engine.cli import main
from hlip_engine.demo import make_studies
from hlip_engine.demo.showcase import DEMO_MODEL
from hlip_engine.io import load_study
from hlip_engine.model import load_model
from hlip_engine.model.checkpoint import model_fingerprint
from hlip_engine.report import findings_from_sr, study_findings, write_report
from hlip_engine.report.compute import analyse

torch.set_num_threads(2)
PROMPT_SET = "pub-brain-5"
RELEVANCE = ["glioma", "acute stroke"]


def dciodvfy(path) -> tuple[list[str], list[str]]:
    """(errors, warnings) of dicom3tools' validator on one file."""
    exe = shutil.which("dciodvfy")
    assert exe, "dciodvfy not found: install the Debian package dicom3tools (scripts/setup.sh does)"
    run = subprocess.run([exe, str(path)], capture_output=True, text=True, timeout=120)
    lines = (run.stdout + run.stderr).splitlines()
    return [x for x in lines if x.startswith("Error")], [x for x in lines if x.startswith("Warning")]


@pytest.fixture(scope="module")
def model():
    return load_model(DEMO_MODEL, device="cpu")


@pytest.fixture(scope="module")
def library(tmp_path_factory):
    root = tmp_path_factory.mktemp("report-lib")
    # study 1: one folder per series; study 2: every series in the study folder
    return make_studies(root, 2, seed=3)


@pytest.fixture(scope="module")
def report(model, library, tmp_path_factory):
    study = load_study(library[1]["path"])
    analysis = analyse(model, study, prompt_set=PROMPT_SET, relevance_prompts=RELEVANCE, method="last-block")
    out = tmp_path_factory.mktemp("report-out")
    return {"study": study, "analysis": analysis, "result": write_report(analysis, out), "out": out}


def test_every_object_passes_dciodvfy_and_reads_back_in_highdicom(report):
    result = report["result"]
    assert result.sr.name == "hlip_sr.dcm" and len(result.maps) == 2 * len(report["analysis"].scan_indices)
    for path in result.files:
        errors, warnings = dciodvfy(path)
        assert errors == [], f"{path.name}: dciodvfy errors:\n" + "\n".join(errors)
        print(path.name, sorted(set(warnings)))
        ds = pydicom.dcmread(path)
        if path == result.sr:
            sr = hd.sr.Comprehensive3DSR.from_dataset(ds)
            assert sr.SOPClassUID == "1.2.840.10008.5.1.4.1.1.88.34" and sr.VerificationFlag == "UNVERIFIED"
            assert sr.ContentTemplateSequence[0].TemplateIdentifier == "1500"
            assert "not for clinical use" in sr.SeriesDescription
        else:
            pm = hd.pm.ParametricMap.from_dataset(ds)
            assert pm.SOPClassUID == "1.2.840.10008.5.1.4.1.1.30" and pm.pixel_array.dtype == np.float32
            assert pm.ContentQualification == "RESEARCH"


def test_objects_belong_to_the_source_study_and_copy_its_patient(report):
    study, result = report["study"], report["result"]
    source = pydicom.dcmread(sorted(p for p in Path(study.source).rglob("*.dcm"))[-1])
    for path in result.files:
        ds = pydicom.dcmread(path, stop_before_pixels=True)
        assert ds.StudyInstanceUID == study.uid
        assert (ds.PatientID, str(ds.PatientName), ds.PatientBirthDate) == \
            (source.PatientID, str(source.PatientName), source.PatientBirthDate)
    text = json.dumps(json.loads((report["out"] / "report.json").read_text()))
    assert source.PatientID not in text and str(source.PatientName) not in text


def _frame_slices(ds, scan) -> list[int]:
    inv = np.linalg.inv(scan.affine)
    out = []
    for item in ds.PerFrameFunctionalGroupsSequence:
        col, row, k = (inv @ np.r_[np.asarray(item.PlanePositionSequence[0].ImagePositionPatient, float), 1])[:3]
        assert abs(col) < 1e-3 and abs(row) < 1e-3 and abs(k - round(k)) < 1e-3
        out.append(int(round(k)))
    return out


def test_map_values_are_the_relevance_volumes_on_the_series_own_geometry(report):
    study, analysis, result = report["study"], report["analysis"], report["result"]
    by_series = {study.scans[k].series_uid: k for k in analysis.scan_indices}
    seen = set()
    for path in result.maps:
        ds = pydicom.dcmread(path)
        k = by_series[ds.ReferencedSeriesSequence[0].SeriesInstanceUID]
        scan = study.scans[k]
        item = next(it for it in analysis.relevance if f"'{it.prompt}'" in ds.SeriesDescription)
        volume = item.relevance.volumes[item.relevance.volume_scans.index(k)]
        frames = hd.pm.ParametricMap.from_dataset(ds).pixel_array
        slices = _frame_slices(ds, scan)
        assert sorted(slices) == list(range(scan.shape[0])) and frames.shape == scan.voxels.shape
        np.testing.assert_array_equal(frames, volume[slices].astype(np.float32))  # float32: exact
        src = pydicom.dcmread(sorted(Path(study.source).rglob("*.dcm"))[0],
                              stop_before_pixels=True)
        shared = ds.SharedFunctionalGroupsSequence[0]
        orient = np.asarray(shared.PlaneOrientationSequence[0].ImageOrientationPatient, float)
        np.testing.assert_allclose(orient, np.r_[scan.direction[:, 0], scan.direction[:, 1]], atol=1e-6)
        assert ds.FrameOfReferenceUID == src.FrameOfReferenceUID and (ds.Rows, ds.Columns) == scan.shape[1:]
        rwv = shared.RealWorldValueMappingSequence[0]
        assert (rwv.RealWorldValueSlope, rwv.RealWorldValueIntercept) == (1.0, 0.0)
        seen.add((item.prompt, k))
    assert len(seen) == len(result.maps)


def test_sr_holds_findings_algorithm_and_the_relevance_peak_in_patient_space(report):
    study, analysis, result = report["study"], report["analysis"], report["result"]
    got = findings_from_sr(result.sr)
    assert got is not None and got["verification"] == "UNVERIFIED" and "not for clinical use" in got["statement"]
    assert list(got["findings"]) == list(analysis.findings) == ["Normal", "Stroke", "Glioma", "Meningioma",
                                                                 "Metastasis"]
    for name, p in analysis.findings.items():
        assert got["findings"][name] == pytest.approx(p, rel=1e-9, abs=1e-12)
    assert (got["model"], got["prompt_set"], got["fingerprint"]) == ("hlip_demo", PROMPT_SET,
                                                                    model_fingerprint(DEMO_MODEL))
    assert got["templates"] == ["This MRI study shows: {}."]
    assert [r["prompt"] for r in got["relevance"]] == RELEVANCE
    for item, rel in zip(analysis.relevance, got["relevance"]):
        k, voxel = item.relevance.peak()  # the engine's own answer, recomputed here
        expected = study.scans[k].world(voxel)
        np.testing.assert_allclose(rel["peak_lps"], expected, atol=1e-4 * max(1.0, np.abs(expected).max()))
        assert rel["frame_of_reference"] == pydicom.dcmread(result.maps[0], stop_before_pixels=True).FrameOfReferenceUID
        shares = {s["series_uid"]: s["value"] for s in rel["scan_importance"]}
        order, totals = item.relevance.source_importance()
        assert shares == pytest.approx({study.scans[j].series_uid: float(t) for j, t in zip(order, totals)})
    sr = pydicom.dcmread(result.sr)
    evidence = {s.SeriesInstanceUID for e in sr.CurrentRequestedProcedureEvidenceSequence
                for s in e.ReferencedSeriesSequence}
    assert evidence == {study.scans[k].series_uid for k in analysis.scan_indices}


def test_uids_are_deterministic_for_study_model_and_prompts(report, model, library, tmp_path, capsys):
    result = report["result"]
    again = write_report(report["analysis"], tmp_path / "again")
    uids = lambda r: [pydicom.dcmread(p, stop_before_pixels=True).SOPInstanceUID for p in r.files]  # noqa: E731
    assert uids(again) == uids(result) and len(set(uids(result))) == len(result.files)
    other = write_report(replace(report["analysis"], spec={**report["analysis"].spec, "prompt_set": "x"}),
                         tmp_path / "other")
    assert not set(uids(other)) & set(uids(result))
    # the command line computes the same report from scratch: the same UIDs
    rc = main(["report", library[1]["path"], "--model", str(DEMO_MODEL), "--device", "cpu", "--prompt-set",
               PROMPT_SET, *sum((["--relevance", p] for p in RELEVANCE), []), "--method", "last-block",
               "--out", str(tmp_path / "cli")])
    out = capsys.readouterr()
    assert rc == 0, out.err
    assert "hlip_sr.dcm" in out.out and "research result, not for clinical use" in out.out
    source = pydicom.dcmread(next(p for p in sorted((tmp_path / "cli").glob("*.dcm"))), stop_before_pixels=True)
    assert source.PatientID not in out.out + out.err and str(source.PatientName) not in out.out + out.err
    cli = sorted(pydicom.dcmread(p, stop_before_pixels=True).SOPInstanceUID for p in (tmp_path / "cli").glob("*.dcm"))
    assert cli == sorted(uids(result))


def test_findings_are_read_back_only_from_our_sr(report, library):
    from pydicom.data import get_testdata_file

    theirs = get_testdata_file("test-SR.dcm")  # a Comprehensive SR of someone else's
    assert pydicom.dcmread(theirs).Modality == "SR" and findings_from_sr(theirs) is None
    assert findings_from_sr(sorted(Path(library[1]["path"]).rglob("*.dcm"))[0]) is None  # an image
    assert findings_from_sr(report["result"].maps[0]) is None
    found = study_findings(report["out"])
    assert [f["sop_instance_uid"] for f in found] == [pydicom.dcmread(report["result"].sr).SOPInstanceUID]
    assert findings_from_sr(pydicom.dcmread(report["result"].sr))["findings"] == found[0]["findings"]


def test_the_archive_an_http_answer_sends_holds_the_same_objects(report):
    import io
    import zipfile

    from hlip_engine.report import report_archive

    with zipfile.ZipFile(io.BytesIO(report_archive(report["analysis"]))) as z:
        names = sorted(z.namelist())
        assert names == sorted([p.name for p in report["result"].files] + ["report.json"])
        for path in report["result"].files:
            got = pydicom.dcmread(io.BytesIO(z.read(path.name)), stop_before_pixels=True)
            assert got.SOPInstanceUID == pydicom.dcmread(path, stop_before_pixels=True).SOPInstanceUID
        assert json.loads(z.read("report.json"))["sent"] is None


def test_a_multi_frame_source_gets_its_map_frame_by_frame(model, library, tmp_path):
    from hlip_engine.io import write_enhanced_series
    from hlip_engine.study import PatientInfo, Scan

    first = load_study(library[0]["path"]).scans[0]
    scan = Scan(first.voxels, first.affine, modality="MR", description="t2 enhanced",
                series_uid="1.2.826.0.1.3680043.8.498.7310001")
    write_enhanced_series(scan, tmp_path / "study" / "mf.dcm", study_uid="1.2.826.0.1.3680043.8.498.7310002",
                          series_number=5, study_date="20240101", patient=PatientInfo(name="MULTI^FRAME", id="MF1"))
    study = load_study(tmp_path / "study")
    analysis = analyse(model, study, relevance_prompts=["glioma"], method="last-block")
    result = write_report(analysis, tmp_path / "out")
    assert len(result.maps) == 1 and result.notes == []
    for path in result.files:
        errors, _ = dciodvfy(path)
        assert errors == [], f"{path.name}: dciodvfy errors:\n" + "\n".join(errors)
    ds = pydicom.dcmread(result.maps[0])
    slices = _frame_slices(ds, study.scans[0])
    rel = analysis.relevance[0].relevance
    np.testing.assert_array_equal(hd.pm.ParametricMap.from_dataset(ds).pixel_array, rel.volumes[0][slices])
    refs = {it.DerivationImageSequence[0].SourceImageSequence[0].ReferencedFrameNumber
            for it in ds.PerFrameFunctionalGroupsSequence}
    assert len(refs) == study.scans[0].shape[0]  # each map frame references its own source frame
    got = findings_from_sr(result.sr)["relevance"][0]
    np.testing.assert_allclose(got["peak_lps"], study.scans[0].world(rel.peak()[1]), atol=1e-3)
    assert got["scan_importance"][0]["series_uid"] == scan.series_uid


def test_a_study_filed_with_our_results_loads_as_before(report, library, tmp_path):
    """The SR and maps filed beside the source series are results, not scans or a radiologist's report: the
    loader skips the maps (saying why) and Study.report stays the study's own."""
    import shutil

    before = report["study"]
    folder = tmp_path / "with_results"
    shutil.copytree(library[1]["path"], folder)
    result = report["result"]
    assert result.maps
    for path in [result.sr, *result.maps]:
        shutil.copy(path, folder / path.name)
    after = load_study(folder)
    assert [s.series_uid for s in after.scans] == [s.series_uid for s in before.scans]
    assert after.report == before.report
    assert any("parametric map" in why for _item, why in after.skipped)
