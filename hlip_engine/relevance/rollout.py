"""Multi-block relevance: Chefer et al. 2021, "Generic Attention-model Explainability", on HLIP's hierarchy.

Chefer's rule for a self-attention encoder: start from the identity ``R = I`` and, block by block,
``R <- R + mean_heads(max(dL/dA * A, 0)) @ R``; the relevance of the image tokens is the CLS row of the
final ``R``. Only that row is ever read, so we never build ``R``: with ``R_L = (I + B_L) ... (I + B_1)``
(``B_l`` the head-averaged positive grad x attention of block ``l``), the CLS row is
``e_cls^T (I + B_L) ... (I + B_1)``, a row vector pushed from the last block to the first,
``v <- v + v @ B_l``: one vector-matrix product per unit and block, O(tokens) memory for ``v``.

HLIP's prefix copies. Each unit of a block (a scan, a slab, the study) has its own CLS copy; a split copies
the CLS into every sub-unit and a merge averages the copies. Going backwards, a merge hands each copy
``1/k`` of the merged CLS's relevance (the merged row is the mean of k copies) and a split sums the copies'
relevance back into the one CLS they came from; image tokens only move between units (a reshape).

Cost against a forward pass: one forward and one backward with every block's attention written out
(``heads x T_u x T_u`` per unit, kept for the backward: the memory of an eager, non-flash forward), then
one ``[T_u] x [T_u, T_u]`` product per unit and block. For scan-level blocks that is small; a study-level
block over 40 ViT-B scans (47k tokens) needs its ``heads x T x T`` matrix (about 26 GB in fp32 for 12 heads)
and its gradient, so on such studies prefer the exact last-block method (``method="last-block"``), which
stays O(tokens). This method is for models and studies where the attention fits, like the demo model.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from ..model.vit import TokenLayout


@dataclass
class RolloutRelevance:
    cam: torch.Tensor  # [N, d, h, w] relevance of each image token
    logit: torch.Tensor
    level: str
    layout: object
    input_grad: torch.Tensor | None = None  # [N, D, H, W] |dlogit/dx * x| (``input_gradient=True``)


class _AttentionTape:
    """While active, each block's attention runs explicitly and its probabilities are kept (in the graph)."""

    def __init__(self, visual):
        self.visual = visual
        self.probs: list[torch.Tensor] = []  # per block [U, heads, T, T]
        self._saved = []

    def __enter__(self):
        for blk in self.visual.blocks:
            attn = blk.attn

            def forward(x, attn=attn):  # [U, T, C]
                u, t, c = x.shape
                q, k, v = attn.qkv_heads(x)
                a = torch.softmax((q @ k.transpose(-2, -1)).float() * attn.scale, dim=-1)
                self.probs.append(a)
                out = (a.to(v.dtype) @ v).transpose(1, 2).reshape(u, t, c)
                return attn.proj(out)

            self._saved.append((attn, attn.__dict__.get("forward")))
            attn.forward = forward  # an instance attribute shadows the class's forward while active
        return self

    def __exit__(self, *exc):
        for attn, own in self._saved:
            if own is None:
                del attn.forward
            else:
                attn.forward = own
        self._saved.clear()


def rollout_relevance(visual, x: torch.Tensor, text: torch.Tensor, scale: torch.Tensor, *,
                      output: int = 0, input_gradient: bool = False) -> RolloutRelevance:
    """Chefer's grad x attention rollout of one study ``x`` [1, N, 1, D, H, W] for the unit text ``text``.

    ``input_gradient``: the same backward also gives |dlogit/dx * x| on the model grid (``input_grad``)."""
    if x.ndim != 6 or x.shape[0] != 1:
        raise ValueError(f"relevance explains one study at a time: expected [1, N, 1, D, H, W], got {tuple(x.shape)}")
    if input_gradient:
        x = x.detach().clone().requires_grad_(True)
    with torch.enable_grad(), _AttentionTape(visual) as tape:
        emb = visual(x)[:, output]  # [1, E]
        logit = scale.float() * (F.normalize(emb.float(), dim=-1) @ text.float())[0]
        wrt = list(tape.probs) + ([x] if input_gradient else [])
        grads = torch.autograd.grad(logit, wrt)  # dL/dA of every block (and dL/dx); parameters get no .grad
    input_grad = (grads[-1] * x).abs()[0, :, 0].detach().float() if input_gradient else None
    grads = grads[:len(tape.probs)]
    b, n, _, *size = x.shape
    d, h, w = (s // p for s, p in zip(size, visual.cfg.patch_size))
    layout = TokenLayout(1, n, d, h, w, visual.num_prefix_tokens)
    levels = list(visual.cfg.blocks)
    p = layout.prefix
    with torch.no_grad():
        # relevance row at the output of the last block, in its units: the merged CLS is the mean of copies
        u_last = layout.units(levels[-1])
        v = torch.zeros(u_last, p + layout.scans * d * h * w // u_last, device=x.device)
        v[:, 0] = 1.0 / u_last
        for i in range(len(levels) - 1, -1, -1):
            bl = (grads[i] * tape.probs[i]).clamp(min=0).mean(dim=1)  # [U, T, T]
            v = v + torch.einsum("ut,uts->us", v, bl)
            if i > 0:
                v = _back_regroup(v, layout, src=levels[i - 1], dst=levels[i])
        # v now holds relevance at the input of block 0 (in its units); image tokens in study order
        cam = v[:, p:].reshape(layout.scans, d, h, w)
    return RolloutRelevance(cam.float(), logit.detach(), levels[-1], layout, input_grad)


def _back_regroup(v: torch.Tensor, layout, src: str, dst: str) -> torch.Tensor:
    """The adjoint of ``regroup(., src -> dst)`` on a relevance row [U_dst, P + L_dst] -> [U_src, P + L_src]."""
    u_src, u_dst = layout.units(src), layout.units(dst)
    if u_src == u_dst:
        return v
    p = layout.prefix
    prefix, tokens = v[:, :p], v[:, p:]
    if u_dst < u_src:  # forward merged k copies by their mean: each copy gets 1/k of the merged relevance
        k = u_src // u_dst
        prefix = (prefix[:, None] / k).expand(u_dst, k, p).reshape(u_src, p)
        tokens = tokens.reshape(u_src, -1)
    else:  # forward split one prefix into k copies: their relevance sums back into it
        k = u_dst // u_src
        prefix = prefix.reshape(u_src, k, p).sum(dim=1)
        tokens = tokens.reshape(u_src, -1)
    return torch.cat([prefix, tokens], dim=1)

