"""Where the CLS token looks inside the hierarchy: one head-averaged attention row per unit, per block.

A slice block gives one CLS copy per token slab of each scan, a scan block one per scan, a study block
one for the whole study. Each copy's row of attention (softmax over its own unit) is read during the
same no-grad forward that the relevance needs, through a forward pre-hook on the block: O(tokens)
memory per block (no T x T matrix), computed and reduced inside the hook.
"""
from __future__ import annotations

import contextlib

import numpy as np
import torch

from .last_block import cls_attention_row
from .maps import HierarchyView


class CLSAttentionRecorder:
    """Context manager: while active, records the CLS row of attention at ``blocks`` of ``visual``.

    ``rows[b]`` is [U, heads, T]. By default it is read without grad (relevance views); ``in_graph=True``
    keeps it in the autograd graph (training.lesions reads it as a loss term).
    """

    def __init__(self, visual, blocks, *, in_graph: bool = False):
        depth = len(visual.blocks)
        self.visual = visual
        self.blocks = sorted({b % depth if -depth <= b < depth else _bad_block(b, depth) for b in blocks})
        self.in_graph = in_graph
        self.rows: dict[int, torch.Tensor] = {}  # block -> [U, heads, T]
        self._handles = []

    def __enter__(self):
        for b in self.blocks:
            blk = self.visual.blocks[b]

            def hook(module, args, b=b, blk=blk):
                with contextlib.nullcontext() if self.in_graph else torch.no_grad():
                    h = blk.norm1(args[0] if self.in_graph else args[0].float())  # [U, T, C]
                    self.rows[b] = cls_attention_row(blk.attn, h, 0)  # [U, heads, T]

            self._handles.append(blk.register_forward_pre_hook(hook))
        return self

    def __exit__(self, *exc):
        for h in self._handles:
            h.remove()
        self._handles.clear()

    def views(self, layout) -> list[HierarchyView]:
        """Turn the recorded rows into token maps [N, d, h, w] (layout: the forward's TokenLayout)."""
        p = layout.prefix
        grid = (layout.scans, layout.slices, layout.rows, layout.cols)
        out = []
        for b in self.blocks:
            rows = self.rows[b].float().mean(dim=1).cpu()  # [U, P + L] mean over heads
            tokens = rows[:, p:].reshape(grid).numpy()  # units hold consecutive tokens in study order
            out.append(HierarchyView(b, self.visual.cfg.blocks[b], tokens.astype(np.float32),
                                     rows[:, :p].numpy().astype(np.float32)))
        return out


def _bad_block(b: int, depth: int) -> int:
    raise ValueError(f"block {b} does not exist: the model has {depth} blocks (0..{depth - 1}, or negative)")
