"""PreparedStudy.to_scan: maps on the model grid land back on the right source voxels."""
import numpy as np
import pytest
import torch
from scipy.ndimage import binary_dilation

from hlip_engine.preprocessing import preprocess
from hlip_engine.recipes.orientation import reorient_view
from hlip_engine.study import Scan, Study


def sagittal_mr_with_cube():
    """A thick-slice sagittal MR (slices along L->R, rows S->I) with a bright cube off-centre."""
    rng = np.random.default_rng(1)
    vox = rng.uniform(50, 100, size=(24, 80, 70)).astype(np.float32)  # (slices, rows, columns)
    vox[5:11, 20:36, 40:58] = 1000.0
    direction = np.array([[0, 0, 1], [1, 0, 0], [0, -1, 0]], float)  # col -> P, row -> I, slice -> L
    affine = np.eye(4)
    affine[:3, :3] = direction @ np.diag([0.9, 0.9, 4.0])
    affine[:3, 3] = (-50, -30, 60)
    return Scan(vox, affine, modality="MR", description="SAG T2")


def test_cube_on_the_model_grid_lands_on_the_cube():
    scan = sagittal_mr_with_cube()
    cube = scan.voxels > 500
    p = preprocess(Study("s", [scan]), "brain-mri", slices=16, size=40, crop=32)
    mask = (p.tensor[0, 0] > 2.0).float()  # the bright cube after normalisation
    assert 0 < mask.mean() < 0.2
    back = p.to_scan(mask, 0)
    assert back.shape == scan.shape and back.dtype == np.float32
    hit = back > 0.5
    dice = 2 * (hit & cube).sum() / (hit.sum() + cube.sum())
    assert dice > 0.8, dice
    near = binary_dilation(cube, np.ones((3, 3, 3), bool), iterations=4)  # interpolation spreads ~1 cell
    assert back[~near].max() == 0


def test_token_grid_map_peaks_inside_the_cube():
    scan = sagittal_mr_with_cube()
    p = preprocess(Study("s", [scan]), "brain-mri", slices=16, size=40, crop=32)
    mask = (p.tensor[0, 0] > 2.0).float()
    tokens = torch.nn.functional.adaptive_avg_pool3d(mask[None, None], (4, 4, 4))[0, 0]  # token grid
    back = p.to_scan(tokens, 0)
    assert back.shape == scan.shape
    peak = np.unravel_index(np.argmax(back), back.shape)
    assert scan.voxels[peak] == 1000.0  # the strongest relevance sits on the cube


def test_full_grid_round_trip_is_exact_without_resampling():
    # chest CT already at 3 x 1 x 1 mm: to_scan(tensor) gives back the windowed voxels inside the crop
    rng = np.random.default_rng(2)
    vox = rng.uniform(-1200, 500, size=(30, 50, 70)).astype(np.float32)
    scan = Scan(vox, np.diag([1.0, 1.0, 3.0, 1.0]), modality="CT")
    p = preprocess(Study("c", [scan]), "chest-ct", slices=20, crop=40)
    back = p.to_scan(p.tensor[0, 0], 0)
    inside = np.zeros(vox.shape, bool)
    inside[5:25, 5:45, 15:55] = True
    windowed = (np.clip((vox + 1150) / 1500, 0, 1) - 0.449) / 0.226
    np.testing.assert_allclose(back[inside], windowed[inside], atol=1e-4)
    assert (back[~inside] == 0).all()
    ones = p.to_scan(np.ones((5, 5, 5), np.float32), 0)
    assert (ones[inside] == 1).all() and (ones[~inside] == 0).all()


def test_round_trip_after_resampling_and_reorientation_correlates():
    rng = np.random.default_rng(3)
    smooth = np.cumsum(np.cumsum(rng.normal(size=(20, 48, 40)), 1), 2).astype(np.float32)
    affine = np.diag([0.8, 1.1, 5.0, 1.0])  # LPS: RPI flips columns and slices; rows resized 48 -> 64
    scan = Scan(smooth, affine, modality="CT")
    low, high = float(smooth.min()) - 1, float(smooth.max()) + 1
    p = preprocess(Study("h", [scan]), "head-ct", slices=20, size=64, crop=64, windows={"all": [low, high]})
    back = p.to_scan(p.tensor[0, 0], 0)
    expected = ((smooth - low) / (high - low) - 0.449) / 0.226
    inner = (slice(None), slice(1, -1), slice(1, -1))  # border voxels blend with the zero padding
    corr = np.corrcoef(back[inner].ravel(), expected[inner].ravel())[0, 1]
    assert corr > 0.98, corr


def test_head_ct_windows_share_their_series_geometry():
    vox = np.full((10, 30, 30), 40.0, np.float32)
    p = preprocess(Study("h", [Scan(vox, np.diag([0.7, 0.7, 5, 1.0]), modality="CT")]), "head-ct",
                   slices=8, size=32, crop=24)
    maps = [p.to_scan(torch.ones(8, 24, 24), i) for i in range(3)]
    assert all(m.shape == vox.shape for m in maps) and np.array_equal(maps[0], maps[2])
    assert maps[0][:, 15, 15].min() == 1 and maps[0][:, 0, 0].max() == 0  # corners cropped away
    with pytest.raises(IndexError):
        p.to_scan(np.ones((8, 24, 24)), 3)
    with pytest.raises(ValueError, match=r"\[D, H, W\]"):
        p.to_scan(np.ones((8, 24)), 0)


def test_reorientation_matches_simpleitk_for_any_direction():
    import SimpleITK as sitk

    rng = np.random.default_rng(4)
    v = rng.normal(size=(3, 4, 5)).astype(np.float32)
    perms = [np.eye(3)[list(p)] for p in ((0, 1, 2), (2, 0, 1), (1, 2, 0), (0, 2, 1), (2, 1, 0), (1, 0, 2))]
    directions = [np.diag(rng.choice([-1.0, 1.0], 3)) @ p for p in perms]
    directions += [np.linalg.qr(rng.normal(size=(3, 3)))[0] for _ in range(30)]  # obliques
    for d in directions:
        img = sitk.GetImageFromArray(v)
        img.SetDirection(d.ravel().tolist())
        for target in ("RPI", "LPS", "ASL"):
            f = sitk.DICOMOrientImageFilter()
            f.SetDesiredCoordinateOrientation(target)
            expected = sitk.GetArrayFromImage(f.Execute(img))
            view = reorient_view(d, target)
            assert np.array_equal(view.apply(v), expected), (d, target)
            assert np.array_equal(view.undo(view.apply(v)), v)
