"""Siemens MOSAIC images (one DICOM image = one volume tiled in a grid) against dcm2niix.

Real headers: nibabel's Siemens DWI mosaics (b=0 and b=1000, 896 x 896 images of 7 x 7 tiles of 128 x 128,
48 slices) whose pixel data nibabel zeroed; a seeded pattern is written into them with pydicom. Synthetic:
mosaics written by ``write_mosaic_series`` with a padded grid (10 slices in 4 x 4 tiles, non-square tiles,
a slice normal against row x column, an oblique plane). Every case is compared with dcm2niix in patient
space: sampled voxels are mapped through both affines, and one global linear intensity fit must be exact.
"""
import gzip
from pathlib import Path

import nibabel as nib
import numpy as np
import pydicom
import pytest
from dcm2niix_compare import NIBABEL_DATA, agree_with_nifti, run_dcm2niix

from hlip_engine import load_study
from hlip_engine.io.dicom_write_mosaic import write_mosaic_dwi, write_mosaic_series
from hlip_engine.study import Scan

STUDY = "1.2.826.0.1.3680043.8.498.2101"


def _bvals(nii: Path) -> np.ndarray:
    return np.atleast_1d(np.loadtxt(nii.with_suffix(".bval")))


# --- nibabel's real Siemens DWI mosaics ---------------------------------------------------------------
@pytest.fixture(scope="module")
def siemens_dwi(tmp_path_factory):
    root = tmp_path_factory.mktemp("siemens_dwi")
    rng = np.random.default_rng(21)
    for name in ("siemens_dwi_0", "siemens_dwi_1000"):
        ds = pydicom.dcmread(gzip.open(NIBABEL_DATA / f"{name}.dcm.gz"))
        assert not np.any(np.frombuffer(ds.PixelData, np.uint16)), "nibabel's test data was expected zeroed"
        ds.PixelData = rng.integers(0, 4000, (ds.Rows, ds.Columns)).astype(np.uint16).tobytes()
        ds.save_as(root / f"{name}.dcm")
    return root


def test_real_siemens_dwi_mosaics_load_as_b0_and_b1000_volumes(siemens_dwi, tmp_path):
    study = load_study(siemens_dwi)
    assert study.skipped == []
    b0, b1000 = study.scans
    assert b0.shape == b1000.shape == (48, 128, 128)
    assert b0.attributes["DiffusionBValue"] == 0 and b1000.attributes["DiffusionBValue"] == 1000
    assert b0.description == "CBU_DTI_64D_1A [DWI b=0]"
    assert b1000.description == "CBU_DTI_64D_1A [DWI b=1000 (1 direction)]"
    assert b0.spacing == pytest.approx((3.0, 1.796875, 1.796875))
    assert b0.orientation == "axial" and b0.attributes["NumberOfImagesInMosaic"] == 48
    # Against dcm2niix: the same 128 x 128 x 48 x 2 series, voxel for voxel in patient space.
    (nii,) = run_dcm2niix(siemens_dwi, tmp_path / "nii")
    assert nib.load(nii).shape == (128, 128, 48, 2)
    bvals = _bvals(nii)
    assert list(bvals) == [0, 1000]
    for scan in (b0, b1000):
        vol = np.nonzero(bvals == scan.attributes["DiffusionBValue"])[0]
        assert agree_with_nifti(scan, nii, vol) < 1e-9
    # The tiles really are cut where dcm2niix cuts them: the two volumes differ, each matches its own.
    assert agree_with_nifti(b0, nii, [1]) > 0.1


def test_mosaic_values_are_the_dicom_rescale_of_the_tile(siemens_dwi):
    scan = load_study(siemens_dwi).scans[0]
    ds = pydicom.dcmread(siemens_dwi / "siemens_dwi_0.dcm")
    mosaic = ds.pixel_array.astype(np.float32) * float(ds.get("RescaleSlope", 1)) + float(ds.get("RescaleIntercept", 0))
    # Tile 9 (row 1, column 2 of the 7 x 7 grid) is the 10th slice along the slice normal.
    np.testing.assert_array_equal(scan.voxels[9], mosaic[128:256, 256:384])


# --- synthetic mosaics with a padded grid ----------------------------------------------------------
def _oblique_affine(flip: bool) -> np.ndarray:
    a = np.eye(4)
    t = np.radians(12)
    rot = np.array([[1, 0, 0], [0, np.cos(t), -np.sin(t)], [0, np.sin(t), np.cos(t)]])
    a[:3, :3] = rot @ np.diag([1.5, 1.25, -3.0 if flip else 3.0])
    a[:3, 3] = [-20.0, -30.0, 40.0]
    return a


@pytest.mark.parametrize("flip", [False, True])
def test_synthetic_padded_mosaic_dwi_agrees_with_dcm2niix(tmp_path, flip):
    rng = np.random.default_rng(5)
    vols = [rng.uniform(100, 3000, (10, 12, 16)).astype(np.float32) for _ in range(7)]  # 10 slices in 4 x 4
    bvals = [0, 500, 500, 500, 1000, 1000, 1000]
    grads = [None, (1, 0, 0), (0, 1, 0), (0, 0, 1), (1, 0, 0), (0, 1, 0), (0, 0, 1)]
    affine = _oblique_affine(flip)
    write_mosaic_series(vols, affine, tmp_path / "dcm", study_uid=STUDY, series_number=7, b_values=bvals,
                        gradients=grads, description="ep2d_diff_3scan")
    study = load_study(tmp_path / "dcm")
    assert study.skipped == []
    assert [s.attributes["ScanKind"] for s in study.scans] == [
        "DWI b=0", "DWI b=500 (trace of 3 directions)", "DWI b=1000 (trace of 3 directions)"]
    b0, b500, b1000 = study.scans
    assert b0.shape == (10, 12, 16) and b0.attributes["MosaicGrid"] == "4x4"
    # Our own ground truth: the written volumes (slices ascend along row x column, so a flipped normal
    # reverses them) and their mean over the three directions (16-bit rounding only).
    order = slice(None, None, -1) if flip else slice(None)
    np.testing.assert_allclose(b0.voxels, vols[0][order], atol=0.05)
    np.testing.assert_allclose(b1000.voxels, np.mean(vols[4:], axis=0)[order], atol=0.05)
    np.testing.assert_allclose(b0.world((0, 0, 0)), (affine @ [0, 0, 9 if flip else 0, 1])[:3], atol=1e-4)
    (nii,) = run_dcm2niix(tmp_path / "dcm", tmp_path / "nii")
    found = _bvals(nii)
    for scan in study.scans:
        assert agree_with_nifti(scan, nii, np.nonzero(found == scan.attributes["DiffusionBValue"])[0]) < 1e-6


def test_mosaic_padded_beyond_its_grid_takes_the_tile_size_from_acquisition_matrix(tmp_path):
    rng = np.random.default_rng(6)
    vol = rng.uniform(0, 1000, (5, 10, 14)).astype(np.float32)  # 5 slices in 3 x 3, plus 2 and 3 empty pixels
    write_mosaic_series([vol], _oblique_affine(False), tmp_path, study_uid=STUDY, series_number=3,
                        b_values=[0], pad_pixels=(2, 3))
    assert pydicom.dcmread(next(tmp_path.glob("*.dcm"))).Rows == 32  # not a multiple of 3
    (scan,) = load_study(tmp_path).scans
    assert scan.shape == (5, 10, 14)
    np.testing.assert_allclose(scan.voxels, vol, atol=0.01)
    np.testing.assert_allclose(scan.affine, _oblique_affine(False), atol=1e-5)
    assert any("larger than its 3x3 grid" in w for w in scan.attributes["warnings"])


def test_mosaic_dwi_writer_round_trips_a_trace_scan(tmp_path):
    trace = Scan(np.random.default_rng(7).uniform(50, 900, (9, 8, 8)).astype(np.float32), _oblique_affine(False),
                 modality="MR", description="ep2d_diff_tra")
    # As the phantom generator would call it: its plan's extra names the trace's b-value and the institution.
    write_mosaic_dwi(trace, tmp_path, study_uid=STUDY, series_number=12, n_directions=6,
                     extra={"DiffusionBValue": 1000.0, "Manufacturer": "GE MEDICAL SYSTEMS",
                            "InstitutionName": "HLIP phantoms"})
    b0, b1000 = load_study(tmp_path).scans
    assert b0.attributes["ScanKind"] == "DWI b=0" and b0.attributes["Manufacturer"] == "SIEMENS"
    assert b1000.attributes["ScanKind"] == "DWI b=1000 (trace of 6 directions)"
    assert b1000.attributes["AveragedVolumes"] == 6 and b1000.attributes["NumberOfImages"] == 54
    np.testing.assert_allclose(b1000.voxels, trace.voxels, atol=0.02)
    np.testing.assert_allclose(b0.voxels, 2 * trace.voxels, atol=0.02)
    np.testing.assert_allclose(b1000.affine, trace.affine, atol=1e-5)


def test_mosaic_without_a_slice_count_is_skipped_naming_series_and_cause(tmp_path):
    vol = np.ones((4, 6, 6), np.float32)
    (path,) = write_mosaic_series([vol], _oblique_affine(False), tmp_path, study_uid=STUDY, series_number=4,
                                  b_values=[0], description="ep2d_broken")
    ds = pydicom.dcmread(path)
    del ds[0x0019, 0x100A]
    del ds[0x0029, 0x1010]
    ds.save_as(path)
    study = load_study(tmp_path)
    assert study.scans == []
    ((item, why),) = study.skipped
    assert item == str(path)
    assert "series 4 'ep2d_broken'" in why and "NumberOfImagesInMosaic" in why
    assert "too few slices" not in why


def test_mosaic_fmri_is_one_mean_scan_and_agrees_with_dcm2niix(tmp_path):
    rng = np.random.default_rng(10)
    vols = [rng.uniform(200, 2500, (7, 8, 10)).astype(np.float32) for _ in range(20)]  # 7 slices in 3 x 3
    write_mosaic_series(vols, _oblique_affine(False), tmp_path / "dcm", study_uid=STUDY, series_number=20,
                        description="ep2d_bold_rest", repetition_time_ms=2000.0)
    (scan,) = load_study(tmp_path / "dcm").scans
    assert scan.description == "ep2d_bold_rest [fMRI mean of 20 volumes]"
    assert scan.attributes["NumberOfTimePoints"] == 20 and scan.attributes["TimeStepSeconds"] == 2.0
    np.testing.assert_allclose(scan.voxels, np.mean(vols, axis=0), atol=0.05)
    (nii,) = run_dcm2niix(tmp_path / "dcm", tmp_path / "nii")
    assert nib.load(nii).shape == (10, 8, 7, 20)
    assert agree_with_nifti(scan, nii) < 1e-6


def test_inspect_names_each_scan_for_what_it_is(siemens_dwi, tmp_path, capsys):
    import json

    from hlip_engine.cli import main

    assert main(["inspect", str(siemens_dwi)]) == 0
    out = capsys.readouterr().out
    assert "scans kept (2)" in out and "48 x 128 x 128" in out
    assert "= DWI b=0; from Siemens MOSAIC (48 slices per image)" in out
    assert "= DWI b=1000 (1 direction); from Siemens MOSAIC (48 slices per image)" in out
    assert "too few slices" not in out and "skipped (0)" in out
    vols = [np.full((4, 6, 6), 100.0 * (t + 1), np.float32) for t in range(5)]
    write_mosaic_series(vols, _oblique_affine(False), tmp_path / "perf", study_uid=STUDY, series_number=8,
                        description="ep2d_perf", repetition_time_ms=1500.0)
    assert main(["inspect", str(tmp_path / "perf"), "--json"]) == 0
    (record,) = json.loads(capsys.readouterr().out)["studies"][0]["scans"]
    assert record["kind"] == ("DSC perfusion mean of 5 volumes, every 1.5 s; from Siemens MOSAIC "
                              "(4 slices per image)")
    assert record["attributes"]["NumberOfTimePoints"] == 5


def test_phantom_generator_writes_a_siemens_mosaic_dwi_when_asked(tmp_path):
    """make_studies(mosaic_dwi=True): the same studies (reports, scans), but each DWI is a real MOSAIC that
    loads as b=0 + the b=1000 trace; off by default."""
    from hlip_engine.demo import make_studies

    plain = make_studies(tmp_path / "plain", 3, seed=21)
    mosaic = make_studies(tmp_path / "mosaic", 3, seed=21, mosaic_dwi=True)
    found = 0
    for a, b in zip(plain, mosaic):
        assert a["report"] == b["report"] and a["details"] == b["details"]
        sa, sb = load_study(a["path"]), load_study(b["path"])
        dwi = [s for s in sa.scans if "diff" in s.description.lower() or "dwi" in s.description.lower()]
        if not dwi:
            assert [s.description for s in sa.scans] == [s.description for s in sb.scans]
            continue
        found += 1
        pair = [s for s in sb.scans if s.description.startswith(dwi[0].description + " [DWI b=")]
        assert [s.description.split("[")[1] for s in pair] == ["DWI b=0]", "DWI b=1000 (trace of 3 directions)]"]
        trace = pair[1]
        assert trace.shape == dwi[0].shape
        np.testing.assert_allclose(trace.affine, dwi[0].affine, atol=1e-3)
        assert np.corrcoef(trace.voxels.ravel(), dwi[0].voxels.ravel())[0, 1] > 0.999
    assert found >= 1
