"""training.resize_patches: a model at a finer patch size whose new tokens are the old tokens of the scan
zoomed in (the init of the demo model's finer-token stage)."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from hlip_engine.model import create_model, load_model
from training.resize_patches import main, resize_patch_kernel


def test_kernel_sums_each_block_of_old_taps():
    w = torch.randn(3, 1, 4, 8, 8)
    new = resize_patch_kernel(w, (4, 4, 2))
    assert new.shape == (3, 1, 4, 4, 2)
    assert torch.allclose(new[1, 0, 2, 1, 0], w[1, 0, 2, 2:4, 0:4].sum())
    assert torch.allclose(new.sum(dim=(2, 3, 4)), w.sum(dim=(2, 3, 4)))  # a flat patch embeds as before
    with pytest.raises(ValueError, match="does not tile"):
        resize_patch_kernel(w, (4, 3, 8))


def test_finer_model_sees_what_the_old_one_sees_zoomed(tmp_path):
    torch.manual_seed(0)
    old = create_model("hlip_tiny").eval()  # patch 4x8x8 on 16x32x32: 4x4x4 tokens
    src, dst = tmp_path / "old.safetensors", tmp_path / "fine.safetensors"
    old.save(src)
    assert main([str(src), str(dst), "--patch", "4", "4", "4"]) == 0
    fine = load_model(dst, device="cpu").eval()
    assert tuple(fine.visual.cfg.patch_size) == (4, 4, 4) and fine.visual.cfg.grid == (4, 8, 8)
    assert fine.visual.spatial_posemb.shape[1:4] == (4, 8, 8)
    assert "(4, 8, 8) -> (4, 4, 4)" in fine.config["description"]
    x = torch.randn(2, 3, 1, 16, 32, 32)
    zoomed = F.interpolate(x.flatten(0, 1), scale_factor=(1, 2, 2), mode="nearest").unflatten(0, (2, 3))
    with torch.no_grad():
        assert torch.allclose(fine.visual(x), old.visual(zoomed), atol=1e-5)  # exactly the zoomed old model
        assert not torch.allclose(fine.visual(x), old.visual(x), atol=1e-2)   # and not the old model itself
    # the text tower and the rest are copied as they were
    for k, v in old.state_dict().items():
        if "patch_embed" not in k and "spatial_posemb" not in k:
            assert torch.equal(v, fine.state_dict()[k]), k


def test_bad_patch_is_refused_with_the_file_named(tmp_path, capsys):
    src = tmp_path / "old.safetensors"
    create_model("hlip_tiny").save(src)
    assert main([str(src), str(tmp_path / "x.safetensors"), "--patch", "4", "3", "8"]) == 2
    assert "does not tile" in capsys.readouterr().err
    assert not (tmp_path / "x.safetensors").exists()
