"""Guided rollout (rollout x the smoothed voxel input gradient): each piece against an independent computation,
then end to end on real DICOM with a tiny model: maps on the scans' voxels at finer than token resolution."""
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from scipy import ndimage
from test_relevance_api import brain_scan
from test_relevance_exact import tiny

from hlip_engine.io import load_study, write_dicom_series
from hlip_engine.model import create_model
from hlip_engine.relevance import relevance
from hlip_engine.relevance.guided import DEFAULT_SIGMA, guided_map, pool_to_tokens, smooth
from hlip_engine.relevance.methods import METHODS
from hlip_engine.relevance.rollout import rollout_relevance

torch.set_num_threads(1)


@pytest.mark.parametrize("sigma", [DEFAULT_SIGMA, (1.0, 0.0, 3.0), (0.0, 0.0, 0.0)])
def test_smooth_is_a_gaussian_filter(sigma):
    vol = np.random.default_rng(0).random((3, 9, 20, 17)).astype(np.float32)
    got = smooth(torch.from_numpy(vol), sigma).numpy()
    want = np.stack([ndimage.gaussian_filter(v, sigma=sigma, mode="nearest", truncate=3.0) for v in vol])
    np.testing.assert_allclose(got, want, atol=1e-5, rtol=1e-5)


def test_rollout_input_gradient_is_dlogit_dx_times_x_and_leaves_rollout_alone():
    visual = tiny(["scan", "study"])
    torch.manual_seed(3)
    x = torch.randn(1, 2, 1, 8, 16, 16)
    text = F.normalize(torch.randn(24), dim=0)
    scale = torch.tensor(10.0)
    plain = rollout_relevance(visual, x, text, scale)
    both = rollout_relevance(visual, x, text, scale, input_gradient=True)
    assert plain.input_grad is None
    torch.testing.assert_close(both.cam, plain.cam)  # the same rollout
    xg = x.clone().requires_grad_(True)
    logit = scale * (F.normalize(visual(xg)[:, 0], dim=-1) @ text)[0]
    (g,) = torch.autograd.grad(logit, xg)
    torch.testing.assert_close(both.input_grad, (g * x).abs()[0, :, 0], atol=1e-6, rtol=1e-4)
    assert float(both.input_grad.max()) > 0 and not x.requires_grad
    assert all(p.grad is None for p in visual.parameters())


def test_guided_map_is_upsampled_tokens_times_smoothed_gradient():
    rng = np.random.default_rng(1)
    cam = torch.from_numpy(rng.random((2, 2, 2, 2)).astype(np.float32))
    grad = torch.from_numpy(rng.random((2, 8, 16, 16)).astype(np.float32))
    fine = guided_map(cam, grad, (0.0, 0.0, 0.0))
    up = F.interpolate(cam[:, None], size=(8, 16, 16), mode="trilinear", align_corners=False)[:, 0]
    torch.testing.assert_close(fine, up * grad)
    pooled = pool_to_tokens(fine, (4, 8, 8))
    assert pooled.shape == (2, 2, 2, 2)
    assert float(pooled[1, 0, 1, 0]) == pytest.approx(float(fine[1, 0:4, 8:16, 0:8].sum()), rel=1e-5)
    with pytest.raises(ValueError, match="2 scans"):
        guided_map(cam, grad[:1])


def test_guided_rollout_end_to_end_on_dicom(tmp_path):
    torch.manual_seed(0)
    model = create_model("hlip_tiny").eval()
    with torch.no_grad():
        for blk in model.visual.blocks:
            blk.attn.qkv.weight.mul_(6.0)
    write_dicom_series(brain_scan(), tmp_path / "S2", study_uid="1.2.826.0.1.3680043.8.498.5006", series_number=2)
    study = load_study(tmp_path)
    prepared = model.prepare(study)
    assert "guided-rollout" in METHODS
    rel = relevance(model, prepared, "glioma", method="guided-rollout")
    ref = relevance(model, prepared, "glioma", method="rollout")
    grid = tuple(prepared.tensor.shape[-3:])
    assert rel.method == "guided-rollout" and rel.fine.shape == (1, *grid)
    np.testing.assert_allclose(rel.tokens, pool_to_tokens(torch.from_numpy(rel.fine),
                                                          model.visual.cfg.patch_size).numpy(), rtol=1e-5)
    assert rel.logit == pytest.approx(ref.logit, abs=1e-5)
    # the overlay on the scan's voxels comes from the voxel map: finer than the token map's trilinear ramp
    vol = rel.volumes[0]
    assert vol.shape == study.scans[0].voxels.shape and vol.max() > 0
    assert np.array_equal(rel.upsampled(0), rel.fine[0])
    k, voxel = rel.peak()
    assert k == 0 and all(0 <= v < s for v, s in zip(voxel, vol.shape))
    # the voxel map is the rollout's upsampled token map reweighted voxel by voxel: not a smooth ramp
    up = F.interpolate(torch.from_numpy(ref.tokens)[:, None], size=grid, mode="trilinear", align_corners=False)
    ratio = rel.fine[0] / np.maximum(up[0, 0].numpy(), 1e-12)
    assert float(ratio.std()) > 0.1 * float(ratio.mean())
