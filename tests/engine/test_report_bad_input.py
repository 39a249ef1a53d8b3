"""`hlip report` on input a map cannot be written for: a NIfTI study (no frame of reference: an SR without
spatial coordinates, no map, and the reason), and a series whose missing slice the loader filled (that
series' map reported as not written, never resampled; the other series still get theirs)."""
import json
import os
import shutil
import subprocess

import nibabel as nib
import numpy as np
import pydicom
import pytest
import torch

from hlip_engine.demo import make_studies
from hlip_engine.demo.showcase import DEMO_MODEL
from hlip_engine.io import load_study
from hlip_engine.model import load_model
from hlip_engine.report import findings_from_sr, make_report

torch.set_num_threads(2)


def dciodvfy_errors(path) -> list[str]:
    exe = shutil.which("dciodvfy")
    assert exe, "dciodvfy not found: install the Debian package dicom3tools (scripts/setup.sh does)"
    run = subprocess.run([exe, str(path)], capture_output=True, text=True, timeout=120)
    return [x for x in (run.stdout + run.stderr).splitlines() if x.startswith("Error")]


@pytest.fixture(scope="module")
def model():
    return load_model(DEMO_MODEL, device="cpu")


@pytest.fixture(scope="module")
def phantom(tmp_path_factory):
    root = tmp_path_factory.mktemp("bad-input")
    return make_studies(root / "lib", 1, seed=3)[0]  # one folder per series (SE0001 ... SE0004)


def test_nifti_study_gets_an_sr_without_coordinates_and_no_map(model, phantom, tmp_path):
    scan = next(s for s in load_study(phantom["path"]).scans if s.shape[0] > 20)
    ras = np.diag([-1.0, -1.0, 1.0, 1.0]) @ scan.affine  # LPS -> RAS, voxel order (column, row, slice)
    nib.save(nib.Nifti1Image(np.ascontiguousarray(scan.voxels.transpose(2, 1, 0)), ras), tmp_path / "brain.nii.gz")
    study = load_study(tmp_path / "brain.nii.gz")
    result = make_report(study, model, tmp_path / "out", prompt_set="pub-brain-5", relevance_prompts=["glioma"],
                         method="last-block")
    assert result.maps == [] and list(tmp_path.joinpath("out").glob("hlip_map*")) == []
    assert any("no DICOM frame of reference" in n for n in result.notes), result.notes
    assert dciodvfy_errors(result.sr) == []
    ds = pydicom.dcmread(result.sr)
    assert not any(str(getattr(it, "ValueType", "")) == "SCOORD3D" for it in _walk(ds))
    assert "CurrentRequestedProcedureEvidenceSequence" not in ds  # no image was its evidence
    assert ds.StudyInstanceUID == study.uid
    got = findings_from_sr(result.sr)
    assert got["findings"] == pytest.approx(result.findings) and len(got["findings"]) == 5
    assert got["relevance"][0]["peak_lps"] is None and got["relevance"][0]["scan_importance"][0]["value"] == 1.0
    assert any("no DICOM frame of reference" in n for n in got["notes"])
    assert json.loads((tmp_path / "out" / "report.json").read_text())["relevance"][0]["peak_lps"] is None


def _walk(ds):
    for it in ds.get("ContentSequence") or []:
        yield it
        yield from _walk(it)


def test_a_series_the_loader_filled_is_reported_not_resampled(model, phantom, tmp_path):
    study_dir = tmp_path / "study"
    shutil.copytree(phantom["path"], study_dir)
    files = sorted((study_dir / "SE0002").glob("*.dcm"))
    os.remove(files[len(files) // 2])  # one slice lost in transfer: the loader fills it by interpolation
    study = load_study(study_dir)
    filled = next(k for k, s in enumerate(study.scans) if "filled" in " ".join(s.attributes.get("warnings", [])))
    result = make_report(study, model, tmp_path / "out", relevance_prompts=["glioma"], method="last-block")
    number = study.scans[filled].series_number
    assert any(n.startswith(f"relevance map of series {number} ") and "not resampled" in n for n in result.notes)
    mapped = {pydicom.dcmread(p, stop_before_pixels=True).ReferencedSeriesSequence[0].SeriesInstanceUID
              for p in result.maps}
    assert study.scans[filled].series_uid not in mapped and len(mapped) >= 1
    for path in result.files:
        assert dciodvfy_errors(path) == [], path.name
    got = findings_from_sr(result.sr)
    assert got["findings"] == {} and got["relevance"][0]["prompt"] == "glioma"
    assert any("not resampled" in n for n in got["notes"])


def test_nothing_to_report_is_one_clear_error(model, phantom, tmp_path):
    with pytest.raises(ValueError, match="nothing to report"):
        make_report(phantom["path"], model, tmp_path / "out")


def test_a_study_holding_an_earlier_report_gets_the_same_report_again(model, phantom, tmp_path):
    first = make_report(phantom["path"], model, tmp_path / "first", relevance_prompts=["glioma"],
                        method="last-block")
    study_dir = tmp_path / "study"
    shutil.copytree(phantom["path"], study_dir)
    for path in first.files:  # as retrieved from a PACS the report was sent to
        shutil.copy(path, study_dir / path.name)
    study = load_study(study_dir)
    assert not any(s.modality == "OT" for s in study.scans)  # the loader skips our maps: results, not scans
    assert sum("parametric map" in why for _item, why in study.skipped) == len(first.maps)
    again = make_report(study, model, tmp_path / "again", relevance_prompts=["glioma"], method="last-block")
    uids = lambda r: sorted(pydicom.dcmread(p, stop_before_pixels=True).SOPInstanceUID for p in r.files)  # noqa: E731
    assert uids(again) == uids(first)  # no map of a map; sending it replaces the stored one
    for a, b in zip(sorted(first.maps), sorted(again.maps)):
        assert pydicom.dcmread(a).FloatPixelData == pydicom.dcmread(b).FloatPixelData
