"""The hierarchical ViT of HLIP, read top to bottom: attention -> block -> study/scan/slice units -> encoder.

A plain ViT block attends over every token it is given. HLIP keeps the blocks and changes only *what*
each block is given: the tokens of one slice slab, of one scan, or of the whole study. Between blocks
the token rows are regrouped; the prefix tokens (CLS, + register for the 2026 models) are copied into
every unit when a study is split and the copies are averaged when units are merged back -- exactly
the official implementation (github Zch0414/hlip, ``visual_encoder.py``), so official checkpoints give
the same embeddings (bench/official_equivalence.py measures it).

Names follow timm (``blocks.i.norm1 / attn.qkv / attn.proj / norm2 / mlp.fc1 / mlp.fc2``) so official
weights map one to one (see checkpoint.py). Shapes use
B studies, N scans per study, d x h x w tokens per scan, P prefix tokens, C width, U units, E embedding.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field, fields

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint

LEVELS = ("study", "scan", "slice")  # coarse -> fine: the unit a block attends within


# --------------------------------------------------------------------------------------------------
# attention and block (timm ViT layout, fused qkv)
# --------------------------------------------------------------------------------------------------
class Attention(nn.Module):
    """Multi-head self-attention over each unit independently; SDPA picks flash/memory-efficient kernels."""

    def __init__(self, dim: int, num_heads: int, qkv_bias: bool = True):
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"width {dim} is not divisible by {num_heads} heads")
        self.num_heads = num_heads
        self.head_dim = dim // num_heads
        self.scale = self.head_dim ** -0.5  # SDPA's default; kept for the relevance code that recomputes A
        self.qkv = nn.Linear(dim, dim * 3, bias=qkv_bias)
        self.proj = nn.Linear(dim, dim)

    def qkv_heads(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """[U, T, C] -> q, k, v each [U, heads, T, head_dim]."""
        u, t, c = x.shape
        qkv = self.qkv(x).reshape(u, t, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4)
        return qkv.unbind(0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # [U, T, C] -> [U, T, C]
        u, t, c = x.shape
        q, k, v = self.qkv_heads(x)
        x = F.scaled_dot_product_attention(q, k, v)  # [U, heads, T, head_dim]
        return self.proj(x.transpose(1, 2).reshape(u, t, c))


class Mlp(nn.Module):
    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(x)))


def drop_path(x: torch.Tensor, rate: float, training: bool) -> torch.Tensor:
    """Stochastic depth: drop the whole residual branch of some units (timm's drop_path)."""
    if rate == 0.0 or not training:
        return x
    keep = x.new_empty((x.shape[0],) + (1,) * (x.ndim - 1)).bernoulli_(1.0 - rate)
    return x * keep / (1.0 - rate)


class Block(nn.Module):
    """Pre-norm transformer block; LayerNorm eps 1e-6 as timm's ViT."""

    def __init__(self, dim: int, num_heads: int, mlp_ratio: float = 4.0, drop_path: float = 0.0):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=1e-6)
        self.attn = Attention(dim, num_heads)
        self.norm2 = nn.LayerNorm(dim, eps=1e-6)
        self.mlp = Mlp(dim, int(dim * mlp_ratio))
        self.drop_path = drop_path

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # [U, T, C]
        x = x + drop_path(self.attn(self.norm1(x)), self.drop_path, self.training)
        x = x + drop_path(self.mlp(self.norm2(x)), self.drop_path, self.training)
        return x


# --------------------------------------------------------------------------------------------------
# study / scan / slice units
# --------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class TokenLayout:
    """How the token rows of one forward pass are arranged (all studies of a call have N scans).

    At ``level`` the rows are ``[units(level), prefix + tokens_per_unit, C]``; tokens inside a study are
    ordered (scan, slice, row, column), so every regrouping is a reshape.
    """

    studies: int  # B
    scans: int  # N
    slices: int  # d (token slabs per scan)
    rows: int  # h
    cols: int  # w
    prefix: int  # P

    def units(self, level: str) -> int:
        return {"study": self.studies, "scan": self.studies * self.scans,
                "slice": self.studies * self.scans * self.slices}[level]


def regroup(x: torch.Tensor, layout: TokenLayout, src: str, dst: str) -> torch.Tensor:
    """Move the rows from ``src`` units to ``dst`` units: [U_src, P + L_src, C] -> [U_dst, P + L_dst, C].

    Split (coarse -> fine): each unit's prefix tokens are copied into each of its k sub-units.
    Merge (fine -> coarse): the k copies are averaged in one step (as the official slice->study merge
    does) and the tokens concatenated in order.
    """
    u_src, u_dst = layout.units(src), layout.units(dst)
    if u_src == u_dst:
        return x
    p = layout.prefix
    prefix, tokens = x[:, :p], x[:, p:]  # [U, P, C], [U, L, C]
    _, length, c = tokens.shape
    if u_dst < u_src:  # merge
        k = u_src // u_dst
        prefix = prefix.reshape(u_dst, k, p, c).mean(dim=1)  # [U_dst, P, C]
        tokens = tokens.reshape(u_dst, k * length, c)
    else:  # split
        k = u_dst // u_src
        prefix = prefix[:, None].expand(u_src, k, p, c).reshape(u_dst, p, c)
        tokens = tokens.reshape(u_dst, length // k, c)
    return torch.cat([prefix, tokens], dim=1)


# --------------------------------------------------------------------------------------------------
# frozen sin-cos position tables
# --------------------------------------------------------------------------------------------------
def sincos_1d(dim: int, positions: np.ndarray) -> np.ndarray:
    """[M] positions -> [M, dim]: sin of dim/2 frequencies, then cos (MAE's layout)."""
    if dim % 2:
        raise ValueError(f"sin-cos position table needs an even width, got {dim}")
    omega = 1.0 / 10000 ** (np.arange(dim // 2, dtype=np.float64) / (dim / 2.0))
    out = np.asarray(positions, dtype=np.float64).reshape(-1)[:, None] * omega[None]  # [M, dim/2]
    return np.concatenate([np.sin(out), np.cos(out)], axis=1)


def spatial_table(grid: tuple[int, int, int], dim: int, kind: str = "2d+1d") -> torch.Tensor:
    """The per-scan position table [1, d, h, w, C].

    "2d+1d": what every released checkpoint holds -- the 2-D sin-cos table of MAE (first half encodes the
    column, second half the row), built at (h, w), plus a 1-D sin-cos over the token slab (depth).
    "3d": the official random-init table, thirds for (column, row, depth); needs C divisible by 6.
    """
    d, h, w = grid
    if kind == "2d+1d":
        rows, cols = np.meshgrid(np.arange(h), np.arange(w), indexing="ij")  # [h, w]
        plane = np.concatenate([sincos_1d(dim // 2, cols), sincos_1d(dim // 2, rows)], 1).reshape(h, w, dim)
        depth = sincos_1d(dim, np.arange(d)).reshape(d, 1, 1, dim)
        table = depth + plane[None]
    elif kind == "3d":
        if dim % 6:
            raise ValueError(f"a 3-D sin-cos table needs a width divisible by 6, got {dim}")
        zz, yy, xx = np.meshgrid(np.arange(d), np.arange(h), np.arange(w), indexing="ij")
        table = np.concatenate([sincos_1d(dim // 3, xx), sincos_1d(dim // 3, yy), sincos_1d(dim // 3, zz)], 1)
        table = table.reshape(d, h, w, dim)
    else:
        raise ValueError(f"unknown spatial position table {kind!r}: use '2d+1d' or '3d'")
    return torch.from_numpy(table).float()[None]


def resample_spatial(table: torch.Tensor, grid: tuple[int, int, int]) -> torch.Tensor:
    """[1, d0, h0, w0, C] -> [1, d, h, w, C], trilinear (e.g. 144 slices at test time)."""
    if tuple(table.shape[1:4]) == tuple(grid):
        return table
    t = F.interpolate(table.float().permute(0, 4, 1, 2, 3), size=tuple(grid), mode="trilinear")
    return t.permute(0, 2, 3, 4, 1)


def resample_scans(table: torch.Tensor, n: int, training: bool) -> torch.Tensor:
    """[1, T, C] -> [1, n, C]: scans 0..n-1 at inference, a random subset of the T positions in training,
    linear interpolation when a study has more scans than the table (as the official code)."""
    length = table.shape[1]
    if n > length:
        return F.interpolate(table.float().permute(0, 2, 1), size=n, mode="linear").permute(0, 2, 1)
    index = torch.randperm(length, device=table.device)[:n] if training else torch.arange(n, device=table.device)
    return table[:, index]


# --------------------------------------------------------------------------------------------------
# the encoder
# --------------------------------------------------------------------------------------------------
@dataclass
class VisualConfig:
    """One architecture of the visual tower; ``configs/*.json`` hold these as data."""

    input_size: tuple[int, int, int] = (48, 224, 224)  # D, H, W per scan at training
    patch_size: tuple[int, int, int] = (8, 16, 16)
    width: int = 768
    depth: int = 12
    heads: int = 12
    mlp_ratio: float = 4.0
    blocks: list[str] = field(default_factory=list)  # one of LEVELS per block
    scan_table: int = 40  # length of the scan-index position table; 0 = none (single-scan and 2026 models)
    max_scans: int | None = None  # hard limit on scans per study (1 for single-scan models); None = any
    register_tokens: int = 0  # 1 for the 2026 models
    pool: str = "token"  # "token": CLS; "dinotxt": each prefix token ++ mean of patch tokens (2 outputs)
    spatial_posemb: str = "2d+1d"  # how create_model builds the table; checkpoints carry their own
    drop_path: float = 0.0  # training only (official: 0.2)
    patch_dropout: float = 0.0  # training only: fraction of patch tokens dropped per unit

    @classmethod
    def from_dict(cls, d: dict) -> VisualConfig:
        names = {f.name for f in fields(cls)}
        unknown = sorted(set(d) - names)
        if unknown:
            raise ValueError(f"unknown visual config keys {unknown}; known: {sorted(names)}")
        cfg = cls(**d)
        cfg.input_size = tuple(int(v) for v in cfg.input_size)
        cfg.patch_size = tuple(int(v) for v in cfg.patch_size)
        cfg.blocks = list(cfg.blocks)
        cfg.validate()
        return cfg

    def to_dict(self) -> dict:
        d = asdict(self)
        d["input_size"], d["patch_size"] = list(self.input_size), list(self.patch_size)
        return d

    @property
    def grid(self) -> tuple[int, int, int]:
        return tuple(s // p for s, p in zip(self.input_size, self.patch_size))

    def validate(self) -> None:
        if len(self.input_size) != 3 or len(self.patch_size) != 3:
            raise ValueError("input_size and patch_size need three numbers (D, H, W)")
        if any(s % p for s, p in zip(self.input_size, self.patch_size)):
            raise ValueError(f"input {self.input_size} is not a multiple of patch {self.patch_size}")
        if len(self.blocks) != self.depth:
            raise ValueError(f"blocks lists {len(self.blocks)} levels for depth {self.depth}")
        bad = [b for b in self.blocks if b not in LEVELS]
        if bad:
            raise ValueError(f"unknown block levels {bad}: use {LEVELS}")
        if self.pool not in ("token", "dinotxt"):
            raise ValueError(f"unknown pool {self.pool!r}: use 'token' or 'dinotxt'")


class HLIPVisualEncoder(nn.Module):
    """Study tensor [B, N, 1, D, H, W] -> embeddings [B, outputs, E] (outputs = 1, or P for DINO.txt).

    forward_features(x) -> tokens [B, P + N*d*h*w, C] after the final norm (study order);
    forward_head(tokens) -> [B, outputs, E]. For relevance maps,
    ``forward_features(x, return_last_block_input=True)`` returns ``(tokens, last_in, layout)``:
    ``last_in`` [U, P + L, C] is what ``blocks[-1]`` receives (partitioned into its units) and
    ``self.finish(self.blocks[-1](last_in), layout)`` equals ``tokens``.
    """

    def __init__(self, cfg: VisualConfig, embed_dim: int):
        super().__init__()
        self.cfg = cfg
        c = cfg.width
        self.embed_dim = embed_dim
        self.num_prefix_tokens = 1 + cfg.register_tokens
        self.grad_checkpointing = False
        self.kept_index = None  # set by drop_patches (training with patch dropout)

        self.patch_embed = nn.Module()
        self.patch_embed.proj = nn.Conv3d(1, c, kernel_size=cfg.patch_size, stride=cfg.patch_size)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, c))
        self.reg_token = nn.Parameter(torch.zeros(1, cfg.register_tokens, c)) if cfg.register_tokens else None
        # frozen tables: buffers, so optimisers never see them, but checkpoints carry them
        self.register_buffer("spatial_posemb", spatial_table(cfg.grid, c, cfg.spatial_posemb))  # [1,d,h,w,C]
        scan_table = torch.from_numpy(sincos_1d(c, np.arange(cfg.scan_table))).float()[None]
        self.register_buffer("scan_posemb", scan_table if cfg.scan_table else None)  # [1, 40, C]
        rates = np.linspace(0, cfg.drop_path, cfg.depth).tolist()
        self.blocks = nn.ModuleList(Block(c, cfg.heads, cfg.mlp_ratio, r) for r in rates)
        self.norm = nn.LayerNorm(c, eps=1e-6)
        features = 2 * c if cfg.pool == "dinotxt" else c
        self.proj = nn.Linear(features, embed_dim, bias=False)
        self.init_weights()

    def init_weights(self) -> None:
        """timm's ViT init: trunc-normal 0.02 linears, tiny prefix tokens; the proj as open_clip."""
        nn.init.normal_(self.cls_token, std=1e-6)
        if self.reg_token is not None:
            nn.init.normal_(self.reg_token, std=1e-6)
        for m in self.blocks.modules():
            if isinstance(m, nn.Linear):
                nn.init.trunc_normal_(m.weight, std=0.02)
                nn.init.zeros_(m.bias)
        nn.init.normal_(self.proj.weight, std=self.cfg.width ** -0.5)

    @property
    def num_outputs(self) -> int:
        return self.num_prefix_tokens if self.cfg.pool == "dinotxt" else 1

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        self.grad_checkpointing = enable

    # -- input -> first units -----------------------------------------------------------------------
    def check_input(self, x: torch.Tensor) -> None:
        if not isinstance(x, torch.Tensor) or x.ndim != 6:
            shape = tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__
            raise ValueError(f"the image input must be [studies, scans, 1, D, H, W], got {shape} "
                             "(one study: x[None])")
        b, n, ch, *size = x.shape
        if ch != 1:
            raise ValueError(f"the image input must have 1 channel at dim 2, got {ch} (shape {tuple(x.shape)})")
        if n < 1 or b < 1:
            raise ValueError(f"empty image input {tuple(x.shape)}")
        if self.cfg.max_scans is not None and n > self.cfg.max_scans:
            raise ValueError(f"{n} scans per study but this model takes at most {self.cfg.max_scans}")
        bad = [s % p for s, p in zip(size, self.cfg.patch_size)]
        if any(bad) or any(s < p for s, p in zip(size, self.cfg.patch_size)):
            raise ValueError(f"scan size {tuple(size)} is not a multiple of the patch {self.cfg.patch_size} "
                             f"(trained on {self.cfg.input_size})")

    def embed(self, x: torch.Tensor) -> tuple[torch.Tensor, TokenLayout]:
        """[B, N, 1, D, H, W] -> rows of the first block's units [U, P + L, C], and their layout."""
        self.check_input(x)
        b, n = x.shape[:2]
        x = self.patch_embed.proj(x.flatten(0, 1))  # [B*N, C, d, h, w]
        _, c, d, h, w = x.shape
        x = x.permute(0, 2, 3, 4, 1).reshape(b, n, d, h, w, c)
        pos = resample_spatial(self.spatial_posemb, (d, h, w))[:, None]  # [1, 1, d, h, w, C]
        if self.scan_posemb is not None:
            pos = pos + resample_scans(self.scan_posemb, n, self.training)[:, :, None, None, None]
        x = (x + pos).reshape(b, n * d * h * w, c)  # study order (fp32 add under autocast, as official)
        layout = TokenLayout(b, n, d, h, w, self.num_prefix_tokens)
        first = self.cfg.blocks[0]
        x = x.reshape(layout.units(first), -1, c)  # [U, L, C]
        prefix = [self.cls_token] + ([self.reg_token] if self.reg_token is not None else [])
        prefix = torch.cat(prefix, dim=1).to(x.dtype).expand(x.shape[0], -1, -1)  # [U, P, C]
        x = torch.cat([prefix, self.drop_patches(x, layout)], dim=1)
        return x, layout

    def drop_patches(self, x: torch.Tensor, layout: TokenLayout) -> torch.Tensor:
        """Patch dropout (training): keep the same random number of tokens in every first-level unit,
        a multiple of the finer split that follows so the later reshapes stay exact."""
        rate = self.cfg.patch_dropout
        self.kept_index = None  # [U, keep] token positions kept in each first-level unit (None: all)
        if not self.training or rate <= 0:
            return x
        u, length, c = x.shape
        finest = max(self.cfg.blocks, key=LEVELS.index)
        factor = layout.units(finest) // u
        keep = max(factor, int(length * (1 - rate)) // factor * factor)
        index = torch.argsort(torch.randn(u, length, device=x.device), dim=-1)[:, :keep]
        self.kept_index = index
        return x.gather(1, index[..., None].expand(-1, -1, c))

    # -- blocks -------------------------------------------------------------------------------------
    def forward_features(self, x: torch.Tensor, return_last_block_input: bool = False):
        x, layout = self.embed(x)  # [U0, P + L0, C]
        level = self.cfg.blocks[0]
        last_in = None
        for i, (blk, nxt) in enumerate(zip(self.blocks, self.cfg.blocks)):
            x = regroup(x, layout, level, nxt)
            level = nxt
            if return_last_block_input and i == len(self.blocks) - 1:
                last_in = x
            if self.grad_checkpointing and torch.is_grad_enabled():
                x = checkpoint(blk, x, use_reentrant=False)
            else:
                x = blk(x)
        tokens = self.finish(x, layout)
        return (tokens, last_in, layout) if return_last_block_input else tokens

    def finish(self, x: torch.Tensor, layout: TokenLayout) -> torch.Tensor:
        """Output of the last block (its units) -> study tokens [B, P + N*d*h*w, C] after the final norm."""
        return self.norm(regroup(x, layout, self.cfg.blocks[-1], "study"))

    def forward_head(self, tokens: torch.Tensor) -> torch.Tensor:
        """[B, P + L, C] -> [B, outputs, E]."""
        p = self.num_prefix_tokens
        if self.cfg.pool == "dinotxt":
            mean = tokens[:, p:].mean(dim=1, keepdim=True).expand(-1, p, -1)  # [B, P, C]
            pooled = torch.cat([tokens[:, :p], mean], dim=-1)  # [B, P, 2C]
        else:
            pooled = tokens[:, :1]  # CLS [B, 1, C]
        return self.proj(pooled)

    def forward(self, x, scan_counts=None) -> torch.Tensor:
        """x: [B, N, 1, D, H, W], or a list of [N_i, 1, D, H, W], or padded with ``scan_counts`` [B].

        Studies with different scan counts are encoded in groups of equal count, so each result equals
        encoding that study alone (no masks: flash attention stays available).
        """
        if isinstance(x, (list, tuple)):
            studies = list(x)
        elif scan_counts is not None:
            counts = [int(n) for n in scan_counts]
            if len(counts) != x.shape[0] or min(counts, default=0) < 1 or max(counts) > x.shape[1]:
                raise ValueError(f"scan_counts {counts} do not fit the input {tuple(x.shape)}")
            if len(set(counts)) == 1:
                return self.forward_head(self.forward_features(x[:, : counts[0]]))
            studies = [x[i, :n] for i, n in enumerate(counts)]
        else:
            return self.forward_head(self.forward_features(x))
        if not studies:
            raise ValueError("no studies to encode")
        for i, s in enumerate(studies):
            if not isinstance(s, torch.Tensor) or s.ndim != 5:
                raise ValueError(f"study {i}: expected [scans, 1, D, H, W], got "
                                 f"{tuple(s.shape) if isinstance(s, torch.Tensor) else type(s).__name__}")
        groups: dict[tuple, list[int]] = {}
        for i, s in enumerate(studies):
            groups.setdefault(tuple(s.shape), []).append(i)
        out: list[torch.Tensor | None] = [None] * len(studies)
        for idx in groups.values():
            y = self.forward_head(self.forward_features(torch.stack([studies[i] for i in idx])))
            for j, i in enumerate(idx):
                out[i] = y[j]
        return torch.stack(out)


def count_parameters(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def flops_per_study(cfg: VisualConfig, scans: int) -> float:
    """Forward FLOPs of the visual tower for one study (2 per multiply-add), for benchmarks."""
    d, h, w = cfg.grid
    c, tokens = cfg.width, scans * d * h * w
    linear = cfg.depth * 2 * tokens * (4 * c * c + 2 * c * int(c * cfg.mlp_ratio))  # qkv, proj, mlp
    unit = {"study": tokens, "scan": d * h * w, "slice": h * w}  # tokens each query attends to
    attention = sum(2 * 2 * tokens * unit[level] * c for level in cfg.blocks)  # q.k and a.v
    patches = 2 * tokens * c * math.prod(cfg.patch_size)
    return float(linear + attention + patches)
