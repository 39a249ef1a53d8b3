"""chest-ct and head-ct on synthetic CT volumes with known Hounsfield units."""
import nibabel as nib
import numpy as np
import pytest
import SimpleITK as sitk
import torch

from hlip_engine.io.nifti import load_nifti_study
from hlip_engine.preprocessing import preprocess
from hlip_engine.study import Scan, Study

MEAN = torch.as_tensor((0.485, 0.456, 0.406)).mean()
STD = torch.as_tensor((0.229, 0.224, 0.225)).mean()


def ct_scan(shape, spacing, fill=-1000.0, description="CT", direction=np.eye(3)):
    """An LPS scan of air with helpers to paint HU blocks; spacing (slice, row, column)."""
    affine = np.eye(4)
    affine[:3, :3] = direction @ np.diag([spacing[2], spacing[1], spacing[0]])
    return Scan(np.full(shape, fill, np.float32), affine, modality="CT", description=description)


def normalised(unit):
    return (torch.as_tensor(unit, dtype=torch.float32) - MEAN) / STD


# --- chest CT ----------------------------------------------------------------------------------------------
def test_chest_ct_window_values_are_exact_at_3x1x1_mm():
    scan = ct_scan((30, 64, 80), (3.0, 1.0, 1.0))
    v = scan.voxels
    v[:, :, :20] = -1150  # window floor -> 0
    v[:, :, 20:40] = -400  # middle of [-1150, 350] -> 0.5
    v[:, :, 40:60] = 350  # ceiling -> 1
    v[:, :, 60:] = 3000  # bone/metal, clipped -> 1
    v[:15, :32, :] = -2000  # below the floor -> 0
    p = preprocess(Study("chest", [scan]), "chest-ct", slices=16, crop=48)
    assert p.tensor.shape == (1, 1, 16, 48, 48) and p.scan_indices == [0]
    # no resampling at 3 x 1 x 1 mm: the tensor is the centre crop of the windowed voxels
    expected = np.clip((v + 1150.0) / 1500.0, 0, 1)[7:23, 8:56, 16:64]
    assert torch.equal(p.tensor[0, 0], normalised(expected))
    assert set(np.unique(expected).tolist()) == {0.0, 0.5, 1.0}


def test_chest_ct_pads_small_volumes_with_zero_before_normalising():
    scan = ct_scan((10, 20, 22), (3.0, 1.0, 1.0), fill=-400.0)
    p = preprocess(Study("small", [scan]), "chest-ct", slices=16, crop=32)
    t = p.tensor[0, 0]
    assert t.shape == (16, 32, 32)
    pad_value, inside = normalised(0.0).item(), normalised(0.5).item()
    assert t[3:13, 6:26, 5:27].eq(inside).all()  # pads: depth 3+3, rows 6+6, columns 5+5
    assert t[:3].eq(pad_value).all() and t[13:].eq(pad_value).all()
    assert t[:, :6].eq(pad_value).all() and t[:, :, 27:].eq(pad_value).all()


def official_chest_ct(path, spacing_zyx, target=(3, 1, 1), depth=112, side=336):
    """CT-RATE: data/ct_rate/process.py (resample) + src/hlip_test/zeroshot_ct_rate.py (window, pad, crop)."""
    img = sitk.GetArrayFromImage(sitk.ReadImage(str(path)))
    z, y, x = spacing_zyx
    size = (int(img.shape[0] * z / target[0]), int(img.shape[1] * y / target[1]), int(img.shape[2] * x / target[2]))
    img = torch.nn.functional.interpolate(torch.from_numpy(img).float()[None, None, ...], size=size,
                                          mode="trilinear").squeeze()
    img = (img - (-1150.0)) / (350.0 - (-1150.0))
    img = torch.clip(img, 0.0, 1.0)[None, ...].float()
    _, d, h, w = img.shape
    pd, ph, pw = max(depth - d, 0), max(side - h, 0), max(side - w, 0)
    img = torch.nn.functional.pad(img[None, ...], (pw // 2, pw - pw // 2, ph // 2, ph - ph // 2, pd // 2, pd - pd // 2),
                                  mode="constant", value=0).squeeze(0)
    _, d, h, w = img.shape
    sd, sh, sw = (d - depth) // 2, (h - side) // 2, (w - side) // 2
    img = img[:, sd:sd + depth, sh:sh + side, sw:sw + side]
    return (img - MEAN) / STD


def test_chest_ct_resampling_matches_official_ct_rate_steps(tmp_path):
    rng = np.random.default_rng(0)
    hu = rng.normal(-300, 500, size=(24, 20, 60)).astype(np.float32)  # NIfTI (i, j, k), k = slices
    hu[10:30, 5:15, 20:40] = 60.0
    affine = np.diag([-0.75, -0.75, 1.5, 1.0])  # LPS-aligned voxels written as RAS
    path = tmp_path / "chest.nii.gz"
    nib.save(nib.Nifti1Image(hu, affine), str(path))
    study = load_nifti_study(path)
    p = preprocess(study, "chest-ct", slices=24, crop=16)
    ref = official_chest_ct(path, (1.5, 0.75, 0.75), depth=24, side=16)
    assert p.tensor.shape == (1, 1, 24, 16, 16) and ref.shape == (1, 24, 16, 16)
    assert torch.abs(p.tensor[0] - ref).max().item() < 1e-5


# --- head CT -----------------------------------------------------------------------------------------------
def head_phantom():
    scan = ct_scan((20, 64, 64), (5.0, 0.5, 0.5), description="HEAD 5mm")
    v = scan.voxels
    v[:, 8:56, 8:56] = 1000.0  # skull
    v[:, 12:52, 12:52] = 40.0  # brain
    v[8:14, 20:36, 20:36] = 75.0  # a bleed
    return scan


def official_style_square_steps(unit, slices, size, crop):
    """The brain pipeline's grid steps (src/hlip_test loader) on a [D, H, W] array in [0, 1]."""
    x = torch.from_numpy(np.ascontiguousarray(unit))[None].float()
    _, _, h, w = x.shape
    s = max(h, w)
    x = torch.nn.functional.pad(x, ((s - w) // 2, s - w - (s - w) // 2, (s - h) // 2, s - h - (s - h) // 2))
    x = torch.nn.functional.interpolate(x, size=(size, size), mode="bilinear")
    x = torch.nn.functional.interpolate(x[None], size=(slices, size, size), mode="nearest-exact").squeeze(0)
    c = (size - crop) // 2
    return (x[:, :, c:c + crop, c:c + crop] - MEAN) / STD


def test_head_ct_makes_blood_brain_bone_scans_per_series():
    scan = head_phantom()
    p = preprocess(Study("head", [scan, head_phantom()]), "head-ct", slices=16, size=40, crop=32)
    assert p.tensor.shape == (6, 1, 16, 32, 32)
    assert p.scan_indices == [0, 0, 0, 1, 1, 1]
    assert [lab.split("[")[1] for lab in p.labels[:3]] == ["blood]", "brain]", "bone]"]
    assert p.options["windows"] == {"blood": [-25.0, 175.0], "brain": [0.0, 80.0], "bone": [-800.0, 2000.0]}
    # RPI from LPS axial: columns and slices reversed; depth stays the 5 mm slice axis
    rpi = scan.voxels[::-1, :, ::-1]
    for k, (low, high) in enumerate(p.options["windows"].values()):
        ref = official_style_square_steps(np.clip((rpi - low) / (high - low), 0, 1), 16, 40, 32)
        assert torch.abs(p.tensor[k] - ref).max().item() < 1e-6
    # known HU -> known window values, read in the middle of the uniform brain
    centre = p.tensor[:, 0, 2, 16, 6]  # a slice without the bleed, inside the brain, away from edges
    assert torch.allclose(centre[:3], normalised([0.325, 0.5, 0.3]), atol=1e-6)


def test_head_ct_windows_are_configurable():
    p = preprocess(Study("head", [head_phantom()]), "head-ct", slices=8, size=32, crop=32,
                   windows={"stroke": {"width": 40, "level": 40}, "wide": [-1000, 1000]})
    assert p.tensor.shape == (2, 1, 8, 32, 32) and p.labels[0].endswith("[stroke]")
    assert p.options["windows"] == {"stroke": [20.0, 60.0], "wide": [-1000.0, 1000.0]}
    with pytest.raises(ValueError, match="high > low"):
        preprocess(Study("head", [head_phantom()]), "head-ct", windows={"bad": [100, 0]})
