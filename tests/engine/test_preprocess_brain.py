"""brain-mri against the official HLIP pipeline, re-stated literally below, on nilearn's MNI152 T1."""
import nibabel as nib
import numpy as np
import pytest
import SimpleITK as sitk
import torch
from nilearn.datasets import load_mni152_template

from hlip_engine.io.nifti import load_nifti_study
from hlip_engine.preprocessing import RECIPES, preprocess
from hlip_engine.study import Scan, Study


# --- the official steps (Zch0414/hlip: data/pub_brain_5/*/process.py, then src/hlip_test/*.py's loader) ---
def official_brain_mri(path, num_slices=48, size=256, crop=224):
    img = sitk.ReadImage(str(path))
    orienter = sitk.DICOMOrientImageFilter()
    orienter.SetDesiredCoordinateOrientation("RPI")
    img = orienter.Execute(img)
    spacing = np.array(img.GetSpacing(), dtype=float)[::-1]  # x, y, z -> z, y, x
    arr = sitk.GetArrayFromImage(img)
    side = int(np.argmax(spacing))
    if side == 1:
        arr = np.transpose(arr, (1, 0, 2))
    elif side == 2:
        arr = np.transpose(arr, (2, 0, 1))
    lower, upper = np.percentile(arr, 0.5), np.percentile(arr, 99.5)
    arr = np.clip(arr, lower, upper)
    arr = (arr - arr.min()) / (arr.max() - arr.min() + 1e-8)
    x = torch.from_numpy(arr)[None, ...].float()
    _, _, h, w = x.shape
    s = max(h, w)
    pad_h, pad_w = s - h, s - w
    left, top = pad_w // 2, pad_h // 2
    x = torch.nn.functional.pad(x, (left, pad_w - left, top, pad_h - top), mode="constant", value=0)
    x = torch.nn.functional.interpolate(x, size=(size, size), mode="bilinear")
    x = torch.nn.functional.interpolate(x[None, ...], size=(num_slices, size, size), mode="nearest-exact").squeeze(0)
    c = (size - crop) // 2
    x = x[:, :, c:c + crop, c:c + crop]
    mean = torch.as_tensor((0.485, 0.456, 0.406)).mean()
    std = torch.as_tensor((0.229, 0.224, 0.225)).mean()
    return (x - mean) / std  # [1, D, H, W]


@pytest.fixture(scope="module")
def mni1(tmp_path_factory):
    path = tmp_path_factory.mktemp("mni") / "mni152_t1_1mm.nii.gz"
    nib.save(load_mni152_template(resolution=1), str(path))
    return path


@pytest.fixture(scope="module")
def mni2():
    return load_mni152_template(resolution=2)


def test_brain_mri_matches_official_pipeline_on_mni152(mni1):
    prepared = preprocess(load_nifti_study(mni1), "brain-mri")
    ref = official_brain_mri(mni1)
    assert prepared.tensor.shape == (1, 1, 48, 224, 224) and prepared.tensor.dtype == torch.float32
    assert prepared.scan_indices == [0] and prepared.recipe == "brain-mri"
    assert torch.abs(prepared.tensor[0] - ref).max().item() < 1e-4
    assert ref.std() > 0.5  # a real brain, not a blank volume


def test_brain_mri_144_slices_matches_official(mni1):
    prepared = preprocess(load_nifti_study(mni1), "brain-mri", slices=144)
    ref = official_brain_mri(mni1, num_slices=144)
    assert prepared.tensor.shape == (1, 1, 144, 224, 224)
    assert prepared.options["slices"] == 144 and prepared.options["crop"] == 224
    assert torch.abs(prepared.tensor[0] - ref).max().item() < 1e-4


def test_thick_sagittal_scan_takes_largest_spacing_as_depth(mni2, tmp_path):
    # every 3rd sagittal plane: 6 mm along x, so x becomes the depth (the official 'sagittal' branch)
    data = np.asarray(mni2.dataobj)[::3].astype(np.float32)
    affine = mni2.affine.copy()
    affine[:3, 0] *= 3
    path = tmp_path / "sag.nii.gz"
    nib.save(nib.Nifti1Image(data, affine), str(path))
    prepared = preprocess(load_nifti_study(path), "brain-mri", slices=24, size=64, crop=56)
    ref = official_brain_mri(path, num_slices=24, size=64, crop=56)
    assert prepared.tensor.shape == (1, 1, 24, 56, 56)
    assert torch.abs(prepared.tensor[0] - ref).max().item() < 1e-4


def _scan_from_nifti(img):
    # our convention: voxels (k, j, i), affine to LPS
    data = np.transpose(np.asarray(img.dataobj, dtype=np.float32), (2, 1, 0))
    return Scan(np.ascontiguousarray(data), np.diag([-1.0, -1.0, 1.0, 1.0]) @ img.affine, modality="MR")


def test_sagittal_acquisition_gives_the_axial_tensor(mni2):
    axial = _scan_from_nifti(mni2)
    # the same voxels stored as sagittal slices: slice axis = patient left->right flipped, rows S->I
    vox = axial.voxels  # (z, y, x)
    sag_vox = np.ascontiguousarray(np.transpose(vox, (2, 0, 1))[::-1, ::-1, :])  # (x reversed, z reversed, y)
    nx, nz = vox.shape[2], vox.shape[0]
    a = axial.affine
    # sagittal index (c, r, s) = (y, nz-1-z, nx-1-x) -> world = A @ (x, y, z)
    to_axial = np.array([[0, 0, -1, nx - 1], [1, 0, 0, 0], [0, -1, 0, nz - 1], [0, 0, 0, 1]], float)
    sagittal = Scan(sag_vox, a @ to_axial, modality="MR", description="sag")
    assert sagittal.orientation == "sagittal" and axial.orientation == "axial"
    np.testing.assert_allclose(sagittal.world((3, 5, 7)), axial.world((nz - 1 - 5, 7, nx - 1 - 3)))
    t_ax = preprocess(Study("ax", [axial]), "brain-mri", slices=16, size=64, crop=56).tensor
    t_sag = preprocess(Study("sag", [sagittal]), "brain-mri", slices=16, size=64, crop=56).tensor
    assert torch.equal(t_ax, t_sag)


def test_recipe_is_data():
    r = RECIPES["brain-mri"]
    assert r.defaults["slices"] == 48 and r.defaults["size"] == 256 and r.defaults["crop"] == 224
    assert tuple(r.defaults["percentiles"]) == (0.5, 99.5) and r.defaults["orient"] == "RPI"
    assert RECIPES["chest-ct"].defaults["slices"] == 112 and RECIPES["chest-ct"].defaults["crop"] == 336
