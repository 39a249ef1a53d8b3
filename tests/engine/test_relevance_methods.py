"""Relevance methods beyond the official one: Chefer's rollout over HLIP's hierarchy, and choosing a method.

The rollout is checked against the dense computation written out: every block's attention as a full
matrix of the whole study (block-diagonal over its units), every regroup (split copies the prefix, merge
averages it) as an explicit matrix built by running ``regroup`` on an identity, and Chefer's loop
``R = R + B R`` on the full [rows, rows] matrix; the CLS row of the merged study must equal the O(tokens)
vector pushed backwards.
"""
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from test_relevance_exact import tiny

from hlip_engine.model.vit import TokenLayout, regroup
from hlip_engine.relevance.methods import METHODS, check_method, default_method
from hlip_engine.relevance.rollout import _AttentionTape, rollout_relevance

torch.set_num_threads(1)


def regroup_matrix(layout, src, dst):
    rows_src = layout.units(src) * (layout.prefix + layout.scans * layout.slices * layout.rows * layout.cols
                                    // layout.units(src))
    eye = torch.eye(rows_src).reshape(layout.units(src), -1, rows_src)
    return regroup(eye, layout, src, dst).reshape(-1, rows_src)  # [rows_dst, rows_src]


def dense_rollout(visual, x, text, scale):
    with torch.enable_grad(), _AttentionTape(visual) as tape:
        emb = visual(x)[:, 0]
        logit = scale * (F.normalize(emb, dim=-1) @ text)[0]
        grads = torch.autograd.grad(logit, tape.probs)
    n, (d, h, w) = x.shape[1], tuple(s // p for s, p in zip(x.shape[3:], visual.cfg.patch_size))
    lay = TokenLayout(1, n, d, h, w, visual.num_prefix_tokens)
    levels = visual.cfg.blocks
    r = None
    for i, lvl in enumerate(levels):
        b = (grads[i] * tape.probs[i]).clamp(min=0).mean(dim=1).detach()  # [U, T, T]
        big = torch.block_diag(*b)  # the whole study's rows
        if r is None:
            r = torch.eye(big.shape[0])
        else:
            r = regroup_matrix(lay, levels[i - 1], lvl) @ r
        r = r + big @ r
    r = regroup_matrix(lay, levels[-1], "study") @ r  # copies merged into the study's prefix
    row = r[0].reshape(lay.units(levels[0]), -1)[:, lay.prefix:]  # image columns of block 0's units
    return row.reshape(n, d, h, w), logit.detach()


@pytest.mark.parametrize("blocks,registers,scans", [
    (["study", "study", "study"], 0, 1),            # a plain ViT: Chefer's own setting
    (["scan", "study", "scan", "study"], 0, 3),     # the demo model's pattern
    (["slice", "scan", "study", "slice"], 1, 2),    # slabs, a register token, a fine last block
])
def test_rollout_equals_dense_chefer(blocks, registers, scans):
    visual = tiny(blocks, registers=registers)
    torch.manual_seed(1)
    x = torch.randn(1, scans, 1, 8, 16, 16)
    text = F.normalize(torch.randn(24), dim=0)
    scale = torch.tensor(10.0)
    ref, ref_logit = dense_rollout(visual, x, text, scale)
    res = rollout_relevance(visual, x, text, scale)
    assert res.cam.shape == ref.shape
    assert float(res.logit) == pytest.approx(float(ref_logit), abs=1e-5)
    torch.testing.assert_close(res.cam, ref.float(), atol=1e-6, rtol=1e-4)
    assert float(ref.max()) > 0  # the check bites: there is relevance to compare


def test_attention_tape_keeps_the_forward_and_restores_sdpa():
    visual = tiny(["scan", "study"])
    x = torch.randn(1, 2, 1, 8, 16, 16)
    with torch.no_grad():
        plain = visual(x)
        with _AttentionTape(visual) as tape:
            taped = visual(x)
    torch.testing.assert_close(taped, plain, atol=1e-5, rtol=1e-5)
    assert len(tape.probs) == 2 and tape.probs[0].shape[-1] == tape.probs[0].shape[-2]
    assert all("forward" not in blk.attn.__dict__ for blk in visual.blocks)  # the class's SDPA forward is back


def test_rollout_leaves_no_parameter_gradients_and_points_at_a_planted_token():
    """A model whose only signal is one bright token: rollout's peak lies on that token's scan."""
    visual = tiny(["scan", "study"])
    x = torch.zeros(1, 2, 1, 8, 16, 16)
    x[0, 1, 0, 4:8, 8:16, 0:8] = 5.0  # scan 1, slab 1, row 1, column 0
    with torch.no_grad():
        text = F.normalize(visual(x)[0, 0] - visual(torch.zeros_like(x))[0, 0], dim=0)
    res = rollout_relevance(visual, x, text, torch.tensor(10.0))
    assert all(p.grad is None for p in visual.parameters())
    assert np.unravel_index(int(res.cam.argmax()), res.cam.shape)[0] == 1


def test_method_names_and_model_default():
    assert set(METHODS) >= {"last-block", "rollout"}
    with pytest.raises(ValueError, match="unknown relevance method 'gradcam'.*last-block"):
        check_method("gradcam")

    class M:
        config = {"relevance": {"method": "rollout"}}

    assert default_method(M()) == "rollout"
    M.config = {}
    assert default_method(M()) == "last-block"  # official checkpoints: the official method
