"""The official HLIP relevance (grad x attention of the last block, CLS row), exactly, in O(tokens) memory.

The official demo keeps every block's full attention matrix A [heads, T, T] and its gradient, then reads
one row of the last block's: ``cam = mean_heads max(G * A, 0)[CLS, image tokens]``. Only that row is
ever read, and it can be had without any T x T matrix:

1. CLS row of A. Per head, ``A[0, j] = softmax_j(q_cls . k_j * scale)``. With ``k_j = Wk h_j + bk``
   (h = norm1 of the block input) this is ``h_j . (Wk^T q_cls) + bk . q_cls``: one matrix-vector product
   per head, and no key is ever stored.
2. Its gradient. The CLS output row of the attention is ``o = sum_j A[0, j] v_j`` and, in the LAST block,
   ``A[0, :]`` touches nothing else: every other token's output uses other rows of A, and no block
   follows. So ``dL/dA[0, j] = g . v_j`` with ``g = dL/do`` -- the partial derivative the dense autograd
   computes too. We obtain it by autograd on a tiny graph whose leaf is the CLS row itself:
   ``o = Wv (sum_j A[0, j] h_j) + bv sum_j A[0, j]`` (again no value vector is stored), then the CLS
   token's own path: proj, residual, norm2 + MLP, residual, the merge of its copies, the final norm,
   the pooling head, the projection, L2 normalisation and the logit ``exp(logit_scale) * img . txt``.
3. Several CLS copies. When the last block attends within scans (or slabs), each unit u has its own CLS
   copy; the copies are averaged after the block. Each copy's row only reaches its own copy, so the
   leaf is [U, heads, T] and unit u's row lands on unit u's image tokens -- the dense computation with
   block-diagonal attention gives the same numbers.
4. DINO.txt pooling (2026 models): the pooled feature is ``[prefix token, mean of patch tokens]``. The
   patch tokens' outputs of the last block depend on their own rows of A, never on the CLS row, so they
   are constants for dL/dA[0, :]: the head is evaluated on the new CLS row beside the (no-grad) patch
   mean, and the gradient is still exact.

With CLS pooling the forward stops at the last block's input: only its CLS row is ever needed, so
the block's full attention (the most expensive of a study-level block) is never computed.

Memory: the no-grad forward, plus the last block's input and its norm1 ([U, T, C] each) and two [U, heads,
T] tensors. Time: one forward plus a few [T, C] x [C, heads] products.
"""
from __future__ import annotations

import contextlib
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from ..model.vit import TokenLayout


@dataclass
class LastBlockRelevance:
    """What the exact method returns, still as tensors on the model's device."""

    cam: torch.Tensor  # [U, T] mean over heads of max(G * A, 0), the queried prefix row of each unit
    attention: torch.Tensor  # [U, heads, T] that row of A (for the hierarchy view of the last block)
    logit: torch.Tensor  # [] the differentiated logit
    level: str  # level of the last block's units
    layout: object  # the forward's TokenLayout (scans, slices, rows, cols, prefix)

    def image_tokens(self) -> torch.Tensor:
        """cam of the image columns as the token grid [N, d, h, w] (units hold consecutive study tokens)."""
        lay = self.layout
        return self.cam[:, lay.prefix:].reshape(lay.scans, lay.slices, lay.rows, lay.cols)


def split_heads_weights(attn) -> tuple[torch.Tensor, ...]:
    """Fused qkv Linear -> (Wq, Wk, Wv) each [heads, head_dim, C] and (bq, bk, bv) each [heads, head_dim]."""
    w, b = attn.qkv.weight, attn.qkv.bias  # [3C, C], [3C]
    c = w.shape[1]
    w = w.reshape(3, attn.num_heads, attn.head_dim, c)
    b = b.reshape(3, attn.num_heads, attn.head_dim) if b is not None else w.new_zeros(3, attn.num_heads,
                                                                                     attn.head_dim)
    return w[0], w[1], w[2], b[0], b[1], b[2]


def cls_attention_row(attn, h: torch.Tensor, row: int = 0) -> torch.Tensor:
    """Softmax attention of token ``row`` over all tokens of its unit, per head, without storing keys.

    h: [U, T, C] (norm1 of the block input) -> [U, heads, T] float32.
    """
    wq, wk, _, bq, bk, _ = split_heads_weights(attn)
    q = torch.einsum("uc,hdc->uhd", h[:, row], wq) + bq  # [U, heads, hd]
    kq = torch.einsum("uhd,hdc->uhc", q, wk)  # [U, heads, C] = Wk^T q per head
    scores = torch.einsum("utc,uhc->uht", h, kq) + torch.einsum("uhd,hd->uh", q, bk)[..., None]
    return torch.softmax(scores.float() * attn.scale, dim=-1)  # [U, heads, T]


def last_block_relevance(visual, x: torch.Tensor, text: torch.Tensor, scale: torch.Tensor, *,
                         output: int = 0, autocast_dtype: torch.dtype | None = None) -> LastBlockRelevance:
    """Exact official relevance of one study.

    visual : HLIPVisualEncoder (eval mode);  x : [1, N, 1, D, H, W];  text : [E] L2-normalised prompt;
    scale  : exp(logit_scale), the multiplier of the cosine in the logit;
    output : which embedding to explain (DINO.txt models have one per prefix token; 0 = the zero-shot one);
             the attention row differentiated is that prefix token's.
    autocast_dtype : run the big forward in bf16/fp16 (GPU); the tiny graph always runs in fp32.
    """
    if x.ndim != 6 or x.shape[0] != 1:
        raise ValueError(f"relevance explains one study at a time: expected [1, N, 1, D, H, W], "
                         f"got {tuple(x.shape)}")
    if not 0 <= output < visual.num_outputs:
        raise ValueError(f"output {output} does not exist: this model has {visual.num_outputs} output(s)")
    row = output if visual.cfg.pool == "dinotxt" else 0
    p = visual.num_prefix_tokens
    amp = torch.autocast(x.device.type, dtype=autocast_dtype) if autocast_dtype else contextlib.nullcontext()
    with torch.no_grad(), amp:
        # CLS pooling needs nothing from the last block but the CLS row: stop before it (saves the
        # block's full attention, the costliest of a study-level block). DINO.txt needs the patch mean.
        tokens, last_in, layout = _run_to_last_block(visual, x, full=visual.cfg.pool != "token")
    last_in = last_in.float()  # [U, T, C]
    blk = visual.blocks[-1]
    with torch.no_grad():
        h = blk.norm1(last_in)  # [U, T, C]
        attention = cls_attention_row(blk.attn, h, row)  # [U, heads, T]
        if tokens is not None:
            patch_mean = tokens[:, p:].float().mean(dim=1, keepdim=True)  # [1, 1, C], constant (point 4)
            prefix_out = tokens[:, :p].float()  # [1, P, C] merged + normed prefix rows of the forward
        else:  # CLS pooling reads row 0 only; the other rows are never used
            prefix_out = last_in.new_zeros(1, p, last_in.shape[2])
            patch_mean = last_in.new_zeros(1, 1, last_in.shape[2])
    del tokens

    leaf = attention.clone().requires_grad_(True)  # the CLS row(s) of A, [U, heads, T]
    with torch.enable_grad():
        y = _cls_path(blk, last_in[:, row], h, leaf)  # [U, C] the prefix row after the last block
        rows = last_in.new_zeros(last_in.shape[0], p, last_in.shape[2])  # other prefix rows: not used
        rows = torch.cat([rows[:, :row], y[:, None], rows[:, row + 1:]], dim=1)  # [U, P, C]
        merged = visual.finish(rows, layout)[:, row]  # [1, C] copies averaged, final norm
        prefix = torch.cat([prefix_out[:, :row], merged[:, None], prefix_out[:, row + 1:]], dim=1)
        # one "patch token" equal to the mean: the head's mean over patch tokens is then exactly it
        emb = visual.forward_head(torch.cat([prefix, patch_mean], dim=1))[:, output]  # [1, E]
        logit = scale.float() * (F.normalize(emb.float(), dim=-1) @ text.float())[0]
        (grad,) = torch.autograd.grad(logit, leaf)
    cam = (grad * attention).clamp(min=0).mean(dim=1)  # [U, T]
    return LastBlockRelevance(cam, attention, logit.detach(), visual.cfg.blocks[-1], layout)


class _LastBlockReached(Exception):
    def __init__(self, rows: torch.Tensor):
        super().__init__("last block reached")
        self.rows = rows


def _run_to_last_block(visual, x: torch.Tensor, full: bool):
    """-> (study tokens after the final norm or None, the last block's input [U, T, C], TokenLayout).

    ``full=False`` stops the forward at the last block's input (a pre-hook raising once it has it).
    """
    if full:
        return visual.forward_features(x, return_last_block_input=True)

    def stop(module, args):
        raise _LastBlockReached(args[0])

    handle = visual.blocks[-1].register_forward_pre_hook(stop)  # after any recorder hook: they still run
    try:
        visual.forward_features(x)
    except _LastBlockReached as reached:
        last_in = reached.rows
    else:  # pragma: no cover - the hook always fires
        raise RuntimeError("the last block was never reached")
    finally:
        handle.remove()
    b, n, _, *size = x.shape
    d, h, w = (s // ps for s, ps in zip(size, visual.cfg.patch_size))
    return None, last_in, TokenLayout(b, n, d, h, w, visual.num_prefix_tokens)


def _cls_path(blk, x_row: torch.Tensor, h: torch.Tensor, a_row: torch.Tensor) -> torch.Tensor:
    """One token's way through the last block given its attention row: [U, C] -> [U, C].

    Mirrors ``Block.forward`` (pre-norm, two residuals; drop-path is off in eval) for that token alone.
    """
    attn = blk.attn
    _, _, wv, _, _, bv = split_heads_weights(attn)
    mixed = torch.einsum("uht,utc->uhc", a_row, h)  # [U, heads, C] attention-weighted inputs
    o = torch.einsum("uhc,hdc->uhd", mixed, wv) + bv * a_row.sum(dim=-1, keepdim=True)  # [U, heads, hd]
    x = x_row + attn.proj(o.reshape(o.shape[0], -1))
    return x + blk.mlp(blk.norm2(x))
