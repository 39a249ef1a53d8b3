"""The O(N) relevance equals the official dense computation (full A with autograd) within 1e-5 in fp32.

The dense reference here is the official demo's recipe written out: the last block's attention is
recomputed as an explicit [U, heads, T, T] softmax that keeps its gradient, the model's own forward and
head run unchanged, the prompt's logit is back-propagated, and cam = mean_heads max(G * A, 0) is read on
each unit's prefix row. Tiny configs cover a study-level, a scan-level and a slice-level last block,
the register token + DINO.txt pooling (both outputs), and more scans than the scan-index table.
"""
import pytest
import torch
import torch.nn.functional as F

from hlip_engine.model.vit import HLIPVisualEncoder, VisualConfig
from hlip_engine.relevance.last_block import cls_attention_row, last_block_relevance

torch.set_num_threads(1)


def tiny(blocks, pool="token", registers=0, scan_table=40, heads=4):
    cfg = VisualConfig(input_size=(8, 16, 16), patch_size=(4, 8, 8), width=48, depth=len(blocks), heads=heads,
                       blocks=list(blocks), scan_table=scan_table, register_tokens=registers, pool=pool)
    torch.manual_seed(0)
    visual = HLIPVisualEncoder(cfg, embed_dim=24).eval()
    with torch.no_grad():  # random init gives near-uniform attention and zero biases: perturb so the test bites
        for blk in visual.blocks:
            blk.attn.qkv.weight.mul_(8.0)
        for name, prm in visual.named_parameters():
            if name.endswith("bias") or "norm" in name:
                prm.add_(0.1 * torch.randn_like(prm))
        visual.cls_token.normal_(std=0.5)
        if visual.reg_token is not None:
            visual.reg_token.normal_(std=0.5)
    return visual


def dense_relevance(visual, x, text, scale, output=0):
    """Official method: explicit last-block attention with autograd; returns cam [U, T] of the prefix row."""
    attn = visual.blocks[-1].attn
    store = {}

    def dense_forward(h):  # [U, T, C]
        u, t, c = h.shape
        q, k, v = attn.qkv_heads(h)  # [U, heads, T, hd]
        a = torch.softmax((q * attn.scale) @ k.transpose(-2, -1), dim=-1)  # [U, heads, T, T]
        a.retain_grad()
        store["A"] = a
        return attn.proj((a @ v).transpose(1, 2).reshape(u, t, c))

    attn.forward = dense_forward
    try:
        emb = visual(x)[:, output]  # the model's own forward + head
        logit = scale * (F.normalize(emb, dim=-1) @ text)[0]
        logit.backward()
    finally:
        del attn.forward
    a = store["A"]
    row = output if visual.cfg.pool == "dinotxt" else 0
    cam = (a.grad * a).clamp(min=0).mean(dim=1)  # [U, T, T]
    return cam[:, row], logit.detach(), a[:, :, row].detach()


CASES = {
    "study last": (["scan", "study", "scan", "study"], "token", 0, 40),
    "scan last (one CLS copy per scan)": (["study", "scan", "study", "scan"], "token", 0, 40),
    "slice last (one CLS copy per slab)": (["slice", "scan", "study", "slice"], "token", 0, 40),
    "dinotxt + register, study last": (["scan", "study", "scan", "study"], "dinotxt", 1, 0),
    "dinotxt + register, scan last": (["scan", "study", "study", "scan"], "dinotxt", 1, 0),
    "more scans than the scan table": (["scan", "study"], "token", 0, 2),
}


@pytest.mark.parametrize("name", list(CASES))
def test_exact_equals_dense(name):
    blocks, pool, registers, table = CASES[name]
    visual = tiny(blocks, pool, registers, table)
    torch.manual_seed(1)
    x = torch.randn(1, 3, 1, 8, 16, 16)
    text = F.normalize(torch.randn(24), dim=0)
    scale = torch.tensor(14.3)
    for output in range(visual.num_outputs):
        dense_cam, dense_logit, dense_row = dense_relevance(visual, x, text, scale, output)
        fast = last_block_relevance(visual, x, text, scale, output=output)
        assert fast.cam.shape == dense_cam.shape
        assert torch.allclose(fast.logit, dense_logit, atol=1e-5, rtol=1e-5)
        assert torch.allclose(fast.attention, dense_row, atol=1e-6)
        # the check must bite: a real, non-trivial map
        assert dense_cam[:, visual.num_prefix_tokens:].max() > 1e-3
        err = (fast.cam - dense_cam).abs().max().item()
        assert err <= 1e-5 * max(1.0, dense_cam.abs().max().item()), (name, output, err)


def test_cls_row_matches_softmax_of_full_matrix():
    visual = tiny(["scan", "study"])
    h = torch.randn(2, 9, 48)
    attn = visual.blocks[0].attn
    q, k, _ = attn.qkv_heads(h)
    full = torch.softmax((q * attn.scale) @ k.transpose(-2, -1), dim=-1)  # [U, heads, T, T]
    for row in (0, 3):
        assert torch.allclose(cls_attention_row(attn, h, row), full[:, :, row], atol=1e-6)


def test_hierarchy_recorder_matches_dense_rows_at_every_level():
    """Slice, scan and study blocks: the O(N) CLS row averaged over heads equals the dense softmax row."""
    from hlip_engine.relevance.hierarchy import CLSAttentionRecorder

    visual = tiny(["slice", "scan", "study", "slice"], registers=1, pool="dinotxt", scan_table=0)
    x = torch.randn(1, 2, 1, 8, 16, 16)
    dense = {}

    def grab(i):
        def hook(module, args):
            q, k, _ = module.attn.qkv_heads(module.norm1(args[0]))
            a = torch.softmax((q * module.attn.scale) @ k.transpose(-2, -1), dim=-1)
            dense[i] = a[:, :, 0].mean(dim=1)  # [U, T]
        return hook

    handles = [blk.register_forward_pre_hook(grab(i)) for i, blk in enumerate(visual.blocks)]
    with torch.no_grad(), CLSAttentionRecorder(visual, [0, 1, 2, -1]) as rec:
        _, _, layout = visual.forward_features(x, return_last_block_input=True)
    for h in handles:
        h.remove()
    views = rec.views(layout)
    assert [v.block for v in views] == [0, 1, 2, 3]
    assert [v.level for v in views] == ["slice", "scan", "study", "slice"]
    units = {"slice": 2 * 2, "scan": 2, "study": 1}  # 2 scans x 2 token slabs
    for v in views:
        rows = dense[v.block]
        assert rows.shape[0] == units[v.level] and v.prefix.shape == (units[v.level], 2)
        assert v.tokens.shape == (2, 2, 2, 2)
        assert torch.allclose(torch.from_numpy(v.tokens).reshape(-1), rows[:, 2:].reshape(-1), atol=1e-6)
        assert torch.allclose(torch.from_numpy(v.prefix), rows[:, :2], atol=1e-6)
    with pytest.raises(ValueError, match="block 4 does not exist"):
        CLSAttentionRecorder(visual, [4])
