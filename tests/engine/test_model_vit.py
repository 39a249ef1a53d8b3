"""The hierarchical ViT against a slow dense reference, plus batching, checkpointing and bad input.

The reference keeps every unit of a study in ONE sequence and restricts attention with an explicit
block-diagonal mask, computing softmax(QK^T)V by hand; it shares only the weights with the model.
"""
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from hlip_engine.model.vit import (
    HLIPVisualEncoder,
    VisualConfig,
    resample_scans,
    resample_spatial,
    sincos_1d,
    spatial_table,
)

torch.set_num_threads(2)

TINY = dict(input_size=[16, 32, 32], patch_size=[4, 8, 8], width=64, depth=4, heads=4,
            blocks=["scan", "study", "scan", "study"], scan_table=40)


def encoder(**overrides) -> HLIPVisualEncoder:
    torch.manual_seed(0)
    v = HLIPVisualEncoder(VisualConfig.from_dict({**TINY, **overrides}), embed_dim=32)
    with torch.no_grad():  # give the tiny prefix tokens a real size so averaging them matters
        v.cls_token.normal_()
        if v.reg_token is not None:
            v.reg_token.normal_()
    return v.eval()


# --------------------------------------------------------------------------------------------------
# dense reference
# --------------------------------------------------------------------------------------------------
def unit_of(level, n, d, hw):
    """Unit id of each patch token (study order: scan, slice, row, col)."""
    t = torch.arange(n * d * hw)
    return {"study": torch.zeros_like(t), "scan": t // (d * hw), "slice": t // hw}[level]


def dense_block(blk, prefix, tokens, unit):
    """One block over one long sequence [prefix copies of all units ; patch tokens], block-diagonal mask."""
    u, p, c = prefix.shape
    seq = torch.cat([prefix.reshape(u * p, c), tokens])  # [S, C]
    owner = torch.cat([torch.arange(u).repeat_interleave(p), unit])  # unit of each row
    allowed = owner[:, None] == owner[None, :]
    h = blk.norm1(seq)
    heads, hd = blk.attn.num_heads, blk.attn.head_dim
    q, k, v = blk.attn.qkv(h).reshape(-1, 3, heads, hd).permute(1, 2, 0, 3)  # [heads, S, hd]
    scores = (q @ k.transpose(-1, -2)) / math.sqrt(hd)
    scores = scores.masked_fill(~allowed, float("-inf"))
    att = torch.exp(scores - scores.amax(-1, keepdim=True))
    att = att / att.sum(-1, keepdim=True)
    out = (att @ v).permute(1, 0, 2).reshape(-1, c)
    seq = seq + blk.attn.proj(out)
    seq = seq + blk.mlp.fc2(F.gelu(blk.mlp.fc1(blk.norm2(seq))))
    return seq[: u * p].reshape(u, p, c), seq[u * p:]


def move_prefix(prefix, src_units, dst_units):
    """Copies per unit: average when merging, copy when splitting (units are contiguous groups)."""
    if dst_units < src_units:
        return prefix.reshape(dst_units, src_units // dst_units, *prefix.shape[1:]).mean(1)
    return prefix.repeat_interleave(dst_units // src_units, dim=0)


def dense_reference(v: HLIPVisualEncoder, study: torch.Tensor) -> torch.Tensor:
    """study [N, 1, D, H, W] -> [outputs, E] through the dense masked path."""
    n = study.shape[0]
    x = v.patch_embed.proj(study)  # [N, C, d, h, w]
    c, d, h, w = x.shape[1:]
    tokens = x.permute(0, 2, 3, 4, 1).reshape(n, d, h, w, c)
    pos = resample_spatial(v.spatial_posemb, (d, h, w))[0]  # [d, h, w, C]
    tokens = tokens + pos[None]
    if v.scan_posemb is not None:
        tokens = tokens + resample_scans(v.scan_posemb, n, False)[0][:, None, None, None]
    tokens = tokens.reshape(-1, c)
    count = {"study": 1, "scan": n, "slice": n * d}
    prefix = [v.cls_token[0]] + ([v.reg_token[0]] if v.reg_token is not None else [])
    prefix = torch.cat(prefix)[None]  # one study unit [1, P, C]
    level = "study"
    for blk, nxt in zip(v.blocks, v.cfg.blocks):
        prefix = move_prefix(prefix, count[level], count[nxt])
        level = nxt
        prefix, tokens = dense_block(blk, prefix, tokens, unit_of(level, n, d, h * w))
    prefix = move_prefix(prefix, count[level], 1)[0]  # [P, C]
    seq = v.norm(torch.cat([prefix, tokens]))
    p = prefix.shape[0]
    if v.cfg.pool == "dinotxt":
        pooled = torch.cat([seq[:p], seq[p:].mean(0, keepdim=True).expand(p, -1)], dim=-1)
    else:
        pooled = seq[:1]
    return v.proj(pooled)


@pytest.mark.parametrize("overrides", [
    {},  # scan / study (2025 h2 style)
    {"blocks": ["slice", "scan", "study", "slice"]},  # three levels, ending on slices
    {"blocks": ["slice", "study", "slice", "scan"], "register_tokens": 1, "pool": "dinotxt", "scan_table": 0},
    {"blocks": ["study", "scan", "slice", "study"], "scan_table": 2},  # more scans than the table
], ids=["h2", "h3-slice-last", "dinotxt-register", "scan-table-interpolated"])
def test_model_equals_dense_block_diagonal_reference(overrides):
    v = encoder(**overrides)
    x = torch.randn(1, 3, 1, 16, 32, 32)
    with torch.no_grad():
        got = v(x)[0]  # [outputs, E]
        ref = dense_reference(v, x[0])
    assert got.shape == (v.num_outputs, 32)
    torch.testing.assert_close(got, ref, atol=2e-5, rtol=1e-4)


def test_other_input_size_resamples_the_position_table():
    v = encoder()
    x = torch.randn(1, 2, 1, 24, 40, 32)  # 6 x 5 x 4 tokens instead of 4 x 4 x 4
    with torch.no_grad():
        got, ref = v(x)[0], dense_reference(v, x[0])
    torch.testing.assert_close(got, ref, atol=2e-5, rtol=1e-4)
    table = resample_spatial(v.spatial_posemb, (6, 5, 4))
    assert table.shape == (1, 6, 5, 4, 64)
    assert resample_spatial(v.spatial_posemb, (4, 4, 4)) is v.spatial_posemb


def test_last_block_input_reproduces_the_output():
    v = encoder(blocks=["slice", "scan", "study", "scan"])
    x = torch.randn(2, 3, 1, 16, 32, 32)
    with torch.no_grad():
        tokens, last_in, layout = v.forward_features(x, return_last_block_input=True)
        assert last_in.shape == (layout.units("scan"), 1 + 64, 64)  # 2 studies x 3 scans
        again = v.finish(v.blocks[-1](last_in), layout)
        torch.testing.assert_close(again, tokens, atol=0, rtol=0)
        torch.testing.assert_close(v.forward_head(tokens), v(x), atol=0, rtol=0)


# --------------------------------------------------------------------------------------------------
# batching, checkpointing
# --------------------------------------------------------------------------------------------------
def test_batch_with_different_scan_counts_equals_each_study_alone():
    v = encoder(register_tokens=1, pool="dinotxt")
    studies = [torch.randn(n, 1, 16, 32, 32) for n in (3, 1, 2, 3)]
    with torch.no_grad():
        alone = torch.cat([v(s[None]) for s in studies])  # [4, 2, E]
        listed = v(studies)
        padded = torch.zeros(4, 3, 1, 16, 32, 32)
        for i, s in enumerate(studies):
            padded[i, : len(s)] = s
        masked = v(padded, scan_counts=[3, 1, 2, 3])
    torch.testing.assert_close(listed, alone, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(masked, alone, atol=1e-5, rtol=1e-5)
    assert listed.shape == (4, 2, 32)


def test_gradient_checkpointing_gives_identical_loss_and_gradients():
    v = encoder(blocks=["slice", "scan", "study", "slice"]).train()
    x = torch.randn(2, 2, 1, 16, 32, 32)

    def grads(flag):
        v.zero_grad()
        v.set_grad_checkpointing(flag)
        torch.manual_seed(1)  # training draws the scan positions at random
        loss = v(x).square().sum()
        loss.backward()
        return loss.detach(), {n: p.grad.clone() for n, p in v.named_parameters()}

    loss0, g0 = grads(False)
    loss1, g1 = grads(True)
    torch.testing.assert_close(loss1, loss0, atol=0, rtol=0)
    assert g0.keys() == g1.keys() and len(g0) > 10
    for name in g0:
        torch.testing.assert_close(g1[name], g0[name], atol=1e-6, rtol=1e-5, msg=name)


def test_training_draws_scan_positions_and_drops_patches():
    v = encoder(patch_dropout=0.5, blocks=["scan", "slice", "study", "scan"]).train()
    x = torch.randn(2, 3, 1, 16, 32, 32)
    out = v(x)
    assert out.shape == (2, 1, 32) and torch.isfinite(out).all()
    table = v.scan_posemb
    picked = resample_scans(table, 5, training=True)[0]
    rows = {tuple(r.tolist()) for r in table[0]}
    assert all(tuple(r.tolist()) in rows for r in picked)
    torch.testing.assert_close(resample_scans(table, 5, training=False), table[:, :5])
    assert resample_scans(table, 50, training=False).shape == (1, 50, 64)


# --------------------------------------------------------------------------------------------------
# position tables
# --------------------------------------------------------------------------------------------------
def test_spatial_tables_follow_the_sincos_layout():
    c = 12
    t = spatial_table((3, 4, 5), c, "2d+1d")[0].numpy()
    k, i, j = 2, 3, 1  # slab, row, column
    half = c // 2
    freq = [1 / 10000 ** (f / (half / 2)) for f in range(half // 2)]
    col = [math.sin(j * f) for f in freq] + [math.cos(j * f) for f in freq]
    row = [math.sin(i * f) for f in freq] + [math.cos(i * f) for f in freq]
    depth = sincos_1d(c, np.array([k]))[0]
    np.testing.assert_allclose(t[k, i, j], np.array(col + row) + depth, atol=1e-6)
    t3 = spatial_table((3, 4, 5), c, "3d")[0].numpy()
    third = c // 3
    np.testing.assert_allclose(t3[k, i, j], np.concatenate(
        [sincos_1d(third, np.array([j]))[0], sincos_1d(third, np.array([i]))[0],
         sincos_1d(third, np.array([k]))[0]]), atol=1e-6)
    with pytest.raises(ValueError, match="divisible by 6"):
        spatial_table((3, 4, 5), 64, "3d")


# --------------------------------------------------------------------------------------------------
# bad input
# --------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("shape, message", [
    ((2, 1, 16, 32, 32), "must be \\[studies, scans, 1, D, H, W\\]"),
    ((1, 2, 3, 16, 32, 32), "1 channel"),
    ((1, 2, 1, 18, 32, 32), "not a multiple of the patch"),
    ((1, 2, 1, 16, 4, 32), "not a multiple of the patch"),
])
def test_bad_input_shapes_are_named(shape, message):
    v = encoder()
    with pytest.raises(ValueError, match=message):
        v(torch.zeros(shape))


def test_too_many_scans_and_bad_configs():
    v = encoder(max_scans=2)
    with pytest.raises(ValueError, match="3 scans per study but this model takes at most 2"):
        v(torch.zeros(1, 3, 1, 16, 32, 32))
    with pytest.raises(ValueError, match="blocks lists 3 levels for depth 4"):
        VisualConfig.from_dict({**TINY, "blocks": ["scan"] * 3})
    with pytest.raises(ValueError, match="unknown block levels"):
        VisualConfig.from_dict({**TINY, "blocks": ["scan", "organ", "scan", "study"]})
    with pytest.raises(ValueError, match="unknown visual config keys"):
        VisualConfig.from_dict({**TINY, "wdth": 3})
    with pytest.raises(ValueError, match="scan_counts"):
        v(torch.zeros(2, 2, 1, 16, 32, 32), scan_counts=[2, 3])
