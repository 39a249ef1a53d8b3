"""End to end from real DICOM: MNI152 written as axial and sagittal MR series, read back, preprocessed."""
import numpy as np
import pytest
import SimpleITK as sitk
import torch
from nilearn.datasets import load_mni152_template
from test_preprocess_ct import official_style_square_steps

from hlip_engine.io import load_study, write_dicom_series
from hlip_engine.preprocessing import preprocess
from hlip_engine.study import Scan

OPTS = {"slices": 24, "size": 64, "crop": 56}


def official_from_dicom_folder(folder, slices, size, crop):
    """The official steps with SimpleITK's own DICOM series reader in front."""
    reader = sitk.ImageSeriesReader()
    reader.SetFileNames(reader.GetGDCMSeriesFileNames(str(folder)))
    img = sitk.DICOMOrient(reader.Execute(), "RPI")
    spacing = np.array(img.GetSpacing(), dtype=float)[::-1]
    arr = sitk.GetArrayFromImage(img).astype(np.float32)
    side = int(np.argmax(spacing))
    arr = arr if side == 0 else np.transpose(arr, ((1, 0, 2), (2, 0, 1))[side - 1])
    lower, upper = np.percentile(arr, 0.5), np.percentile(arr, 99.5)
    arr = np.clip(arr, lower, upper)
    arr = (arr - arr.min()) / (arr.max() - arr.min() + 1e-8)
    return official_style_square_steps(arr, slices, size, crop)  # the grid steps, stated once


@pytest.fixture(scope="module")
def mni_series(tmp_path_factory):
    img = load_mni152_template(resolution=2)
    data = np.round(np.asarray(img.get_fdata()) * 255).astype(np.float32)  # integers: stored exactly
    vox = np.ascontiguousarray(np.transpose(data, (2, 1, 0)))  # (k, j, i)
    axial = Scan(vox, np.diag([-1.0, -1.0, 1.0, 1.0]) @ img.affine, modality="MR", description="AX T1")
    # sagittal reformat: slices along x (every 2nd plane: 4 mm, the thickest axis), rows S->I, columns A->P
    nz, nx = vox.shape[0], vox.shape[2]
    sag_vox = np.ascontiguousarray(np.transpose(vox, (2, 0, 1))[::2, ::-1, ::-1])
    to_axial = np.array([[0, 0, 2, 0], [-1, 0, 0, vox.shape[1] - 1], [0, -1, 0, nz - 1], [0, 0, 0, 1]], float)
    sagittal = Scan(sag_vox, axial.affine @ to_axial, modality="MR", description="SAG T1")
    assert sagittal.orientation == "sagittal" and nx > 0
    root = tmp_path_factory.mktemp("dicom_study")
    for n, scan in ((1, axial), (2, sagittal)):
        write_dicom_series(scan, root / f"series{n}", study_uid="1.2.826.0.1.3680043.8.498.1", series_number=n,
                           study_description="MR BRAIN")
    return root, axial, sagittal


def test_dicom_study_preprocesses_like_the_official_pipeline(mni_series):
    root, axial, sagittal = mni_series
    study = load_study(root)
    assert sorted(s.description for s in study.scans) == ["AX T1", "SAG T1"]
    p = preprocess(study, "brain-mri", **OPTS)
    assert p.tensor.shape == (2, 1, 24, 56, 56)
    for i, scan in enumerate(study.scans):
        folder = root / ("series1" if scan.description == "AX T1" else "series2")
        ref = official_from_dicom_folder(folder, **OPTS)
        assert torch.abs(p.tensor[i] - ref).max().item() < 1e-4, scan.description
    # the in-memory scans give the same tensors: the DICOM round trip kept voxels and geometry
    direct = preprocess(type(study)("mem", [axial, sagittal]), "brain-mri", **OPTS).tensor
    order = [0, 1] if study.scans[0].description == "AX T1" else [1, 0]
    assert torch.abs(p.tensor - direct[order]).max().item() < 1e-5
