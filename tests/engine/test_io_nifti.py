"""NIfTI -> Study: voxels and LPS geometry as SimpleITK reads them; folders, label maps, bad files."""
import nibabel as nib
import numpy as np
import pytest
import SimpleITK as sitk

from hlip_engine.io.nifti import is_nifti, load_nifti_study
from hlip_engine.study import StudyLoadError


def write(path, data, affine):
    nib.save(nib.Nifti1Image(np.asarray(data), affine), str(path))
    return path


def oblique_affine():
    theta = np.deg2rad(20)
    rot = np.array([[1, 0, 0], [0, np.cos(theta), -np.sin(theta)], [0, np.sin(theta), np.cos(theta)]])
    affine = np.eye(4)
    affine[:3, :3] = rot @ np.diag([-0.9, 1.2, 3.0])  # x flipped: an LAS-like, tilted acquisition
    affine[:3, 3] = (40.0, -20.0, 15.0)
    return affine


@pytest.mark.parametrize("dtype", [np.float32, np.int16])
def test_voxels_and_geometry_equal_simpleitk(tmp_path, dtype):
    data = np.random.default_rng(0).integers(-1000, 2000, size=(7, 9, 5)).astype(dtype)
    path = write(tmp_path / "scan.nii.gz", data, oblique_affine())
    study = load_nifti_study(path)
    scan = study.scans[0]
    ref = sitk.ReadImage(str(path))
    assert scan.shape == (5, 9, 7) and scan.voxels.dtype == np.float32
    np.testing.assert_array_equal(scan.voxels, sitk.GetArrayFromImage(ref).astype(np.float32))
    np.testing.assert_allclose(scan.direction, np.reshape(ref.GetDirection(), (3, 3)), atol=1e-5)
    np.testing.assert_allclose(scan.origin, ref.GetOrigin(), atol=1e-4)
    np.testing.assert_allclose(scan.spacing, ref.GetSpacing()[::-1], atol=1e-5)
    # the voxel (slice 4, row 2, column 6) is the NIfTI voxel (i=6, j=2, k=4) in RAS, sign-flipped
    ras = oblique_affine() @ [6, 2, 4, 1]
    np.testing.assert_allclose(scan.world((4, 2, 6)), [-ras[0], -ras[1], ras[2]], atol=1e-4)
    assert scan.voxels[4, 2, 6] == data[6, 2, 4]
    assert study.uid.startswith("2.25.") and study.uid == load_nifti_study(path).uid
    assert scan.attributes["modality_guess"] == "CT" and scan.description == "scan"


def test_folder_is_one_study_with_one_scan_per_file(tmp_path):
    rng = np.random.default_rng(1)
    for name in ("t1.nii.gz", "flair.nii"):
        write(tmp_path / name, rng.uniform(0, 500, (6, 6, 4)).astype(np.float32), np.eye(4))
    write(tmp_path / "case-seg.nii.gz", np.zeros((6, 6, 4), np.uint8), np.eye(4))
    (tmp_path / "broken.nii.gz").write_bytes(b"\x1f\x8b not really gzip")
    (tmp_path / "notes.txt").write_text("not an image")
    assert is_nifti(tmp_path) and is_nifti(tmp_path / "t1.nii.gz") and not is_nifti(tmp_path / "notes.txt")
    study = load_nifti_study(tmp_path)
    assert [s.description for s in study.scans] == ["flair", "t1"]
    assert [s.series_number for s in study.scans] == [1, 2]
    assert all(s.attributes["modality_guess"] == "MR" for s in study.scans)
    reasons = dict(study.skipped)
    assert "label map" in reasons[str(tmp_path / "case-seg.nii.gz")]
    assert "broken.nii.gz: not a readable NIfTI file" in reasons[str(tmp_path / "broken.nii.gz")]


def test_four_d_file_keeps_the_first_volume(tmp_path):
    data = np.stack([np.full((4, 5, 3), v, np.float32) for v in (1.0, 2.0)], axis=-1)
    scan = load_nifti_study(write(tmp_path / "dwi.nii.gz", data, np.eye(4))).scans[0]
    assert scan.shape == (3, 5, 4) and (scan.voxels == 1.0).all()
    assert "2 volumes" in scan.attributes["warnings"][0]


def test_bad_paths_raise_study_load_error(tmp_path):
    assert not is_nifti(tmp_path) and not is_nifti(tmp_path / "missing.nii")
    with pytest.raises(StudyLoadError, match="no .nii"):
        load_nifti_study(tmp_path)
    with pytest.raises(StudyLoadError, match="no such file"):
        load_nifti_study(tmp_path / "missing.nii.gz")
    (tmp_path / "truncated.nii").write_bytes(b"\x5c\x01" + b"\0" * 100)
    with pytest.raises(StudyLoadError, match="truncated.nii: not a readable NIfTI"):
        load_nifti_study(tmp_path / "truncated.nii")
    with pytest.raises(StudyLoadError, match="none of its 1 NIfTI files"):
        load_nifti_study(tmp_path)


def test_load_study_dispatches_nifti_files_and_folders(tmp_path):
    from hlip_engine import load_study

    write(tmp_path / "t2.nii.gz", np.ones((4, 4, 3), np.float32), np.eye(4))
    for path in (tmp_path, tmp_path / "t2.nii.gz"):
        study = load_study(path)
        assert [s.description for s in study.scans] == ["t2"] and study.scans[0].shape == (3, 4, 4)
