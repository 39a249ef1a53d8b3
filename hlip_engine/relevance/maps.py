"""What a relevance map says, in a radiologist's units: tokens, scans, slices, and each scan's own voxels.

The model sees a study as ``N`` model scans, each a grid of ``d x h x w`` tokens (a token covers one patch of
``pd x ph x pw`` voxels of the model grid). Everything here starts from that token grid and summarises it:

- ``scan_importance``: the share of the study's relevance that falls on each model scan (sums to 1);
- ``slice_profiles``: per model scan, the relevance of each token slab (one slab = ``pd`` model slices);
- ``volumes``: the token map taken back through the preprocessing onto each source scan's own voxel grid
  (``PreparedStudy.to_scan``), so a viewer can overlay it with the scan's true geometry.

Head CT feeds one source series as several model scans (one per window: blood, brain, bone). Their maps
are combined per source scan with the voxel-wise **maximum**: a finding that lights up in any window stays
visible, and the maximum keeps the scale of a single map (a sum would favour series with more windows).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np


@dataclass
class HierarchyView:
    """Where the CLS token(s) of one block look, averaged over heads.

    level : "slice" (a CLS copy per slab of each scan), "scan" (one per scan) or "study" (one CLS).
    tokens: [N, d, h, w]; each image token holds the attention its own unit's CLS copy pays to it, so each
            unit's tokens sum to at most 1 (the rest goes to prefix tokens).
    prefix: [U, P] attention each unit's CLS pays to the prefix tokens (itself, register tokens).
    """

    block: int
    level: str
    tokens: np.ndarray
    prefix: np.ndarray


@dataclass
class Relevance:
    """Relevance of every image token of one study for one prompt (official HLIP recipe, computed in O(N)).

    tokens          : [N, d, h, w] float32 >= 0, cam = mean_heads max(dlogit/dA * A, 0) on the CLS row(s)
                      of the last block.
    scan_importance : [N] share of the total relevance per model scan (sums to 1; zeros if all relevance is 0).
    slice_profiles  : [N, d] relevance summed over each token slab of each model scan.
    volumes         : one float32 array per used source scan, shaped like ``Study.scans[k].voxels``
                      (``volume_scans[i]`` = k), or None when the input was a bare tensor.
    logit           : exp(logit_scale) * image . text for the prompt (the number that was differentiated).
    hierarchy       : the CLS attention of the blocks asked for (``blocks=`` in :func:`relevance`).
    """

    tokens: np.ndarray
    prompt: str
    logit: float
    patch_size: tuple[int, int, int]
    model_grid: tuple[int, int, int]  # (D, H, W) of one model scan
    last_level: str = "study"
    scan_indices: list[int] | None = None  # model scan -> source scan index (PreparedStudy.scan_indices)
    volumes: list[np.ndarray] | None = None
    volume_scans: list[int] | None = None
    hierarchy: list[HierarchyView] = field(default_factory=list)
    slab_images: np.ndarray | None = None  # [N, d, H, W] model input at each slab centre (for montages)
    meta: dict[str, Any] = field(default_factory=dict)
    method: str = "last-block"  # how ``tokens`` were computed (``hlip_engine.relevance.METHODS``)
    fine: np.ndarray | None = None  # [N, D, H, W] on the model grid, for methods finer than tokens (guided)

    @property
    def scan_importance(self) -> np.ndarray:
        return scan_importance(self.tokens)

    @property
    def slice_profiles(self) -> np.ndarray:
        return self.tokens.sum(axis=(2, 3))  # [N, d]

    @property
    def slab_centres(self) -> np.ndarray:
        """Model-grid slice index at the centre of each token slab, [d] (where the montage samples)."""
        d = self.tokens.shape[1]
        return ((np.arange(d) + 0.5) * self.model_grid[0] / d).astype(int)

    def volume_slice_profiles(self) -> list[np.ndarray]:
        """Per source scan, the relevance summed over each of its own slices (``[slices]``)."""
        return [v.sum(axis=(1, 2)) for v in (self.volumes or [])]

    def peak_slices(self) -> list[int]:
        """Per source scan, the slice holding the most relevance: where a viewer should jump to."""
        return [int(np.argmax(p)) if p.size else 0 for p in self.volume_slice_profiles()]

    def source_importance(self) -> tuple[list[int], np.ndarray]:
        """(source scans in first-use order, their share of the relevance): the model scans of one source
        are summed (head CT: one series is three windows). What the plugin charts and ranks by."""
        return source_importance(self.scan_importance, self.scan_indices)

    def peak(self, centre_of_mass: bool = True) -> tuple[int, tuple[int, int, int]] | None:
        """(source scan k, voxel (slice, row, column)) of the hot spot on the most important source scan:
        where the plugin jumps and what the pointing benchmarks score. None without volumes.

        The map has one value per token (16-40 mm), so its maximum always sits on a token centre. The hot
        spot's position is read at finer than token resolution as its centre of mass: the voxels at or
        above half the maximum that are connected to it, weighted by their relevance (``centre_of_mass=
        False``: the maximum voxel itself).
        """
        if not self.volumes:
            return None
        order, totals = self.source_importance()
        k = order[int(np.argmax(totals))]
        volume = self.volumes[list(self.volume_scans).index(k)]
        return k, hot_spot(volume, centre_of_mass)

    def display_volumes(self) -> list[np.ndarray]:
        """``volumes`` divided by the study's maximum (0..1), so one threshold means the same on every scan."""
        top = max((float(v.max()) for v in self.volumes or [] if v.size), default=0.0)
        scale = 1.0 / top if top > 0 else 1.0
        return [np.asarray(v, dtype=np.float32) * scale for v in self.volumes or []]

    def upsampled(self, i: int) -> np.ndarray:
        """Model scan ``i``'s map on the model grid [D, H, W]: the token map resized (trilinear, as the official
        demo), or a voxel-resolution method's own map."""
        if self.fine is not None:
            return np.asarray(self.fine[i], dtype=np.float32)
        import torch
        import torch.nn.functional as F

        t = torch.from_numpy(np.ascontiguousarray(self.tokens[i]))[None, None]
        return F.interpolate(t, size=self.model_grid, mode="trilinear", align_corners=False)[0, 0].numpy()

    def summary(self) -> dict[str, Any]:
        """JSON-friendly numbers (what ``hlip relevance`` writes beside the images)."""
        out: dict[str, Any] = {
            "prompt": self.prompt,
            "method": self.method,
            "logit": self.logit,
            "token_grid": list(self.tokens.shape),
            "patch_size": list(self.patch_size),
            "model_grid": list(self.model_grid),
            "last_block_level": self.last_level,
            "scan_importance": [round(float(x), 6) for x in self.scan_importance],
            "slice_profiles": [[round(float(x), 8) for x in row] for row in self.slice_profiles],
        }
        if self.scan_indices is not None:
            out["scan_indices"] = list(self.scan_indices)
        if self.volume_scans is not None:
            out["volume_scans"] = list(self.volume_scans)
            out["peak_slices"] = self.peak_slices()
            if (found := self.peak()) is not None:
                out["peak"] = {"scan": found[0], "voxel": list(found[1])}
        out.update(self.meta)
        return out


def source_importance(scan_importance, scan_indices) -> tuple[list[int], np.ndarray]:
    """Per source scan (first-use order) the summed share of its model scans; see ``Relevance``."""
    importance = np.asarray(scan_importance, dtype=np.float64)
    sources = list(scan_indices) if scan_indices is not None else list(range(len(importance)))
    order = list(dict.fromkeys(int(k) for k in sources))
    totals = np.array([importance[[i for i, k in enumerate(sources) if int(k) == s]].sum() for s in order])
    return order, totals


def hot_spot(volume: np.ndarray, centre_of_mass: bool = True) -> tuple[int, int, int]:
    """Voxel (slice, row, column) of a map's hot spot: the centre of mass of the voxels at or above half the
    maximum that are connected to it, weighted by relevance (or the maximum voxel itself)."""
    top = np.unravel_index(int(np.argmax(volume)), volume.shape)
    if not centre_of_mass or float(volume[top]) <= 0:
        return tuple(int(v) for v in top)
    from scipy import ndimage

    labels, _ = ndimage.label(volume >= 0.5 * float(volume[top]))
    centre = ndimage.center_of_mass(np.where(labels == labels[top], volume, 0.0))
    return tuple(int(round(v)) for v in centre)


def token_centres(prepared, study, token_grid, patch_size) -> np.ndarray:
    """Patient position (LPS mm) of the centre of every token of every model scan: [N, d, h, w, 3].

    prepared: the PreparedStudy the tokens came from; study: its Study (for each source scan's affine).
    """
    d, h, w = token_grid
    ps = np.asarray(patch_size, dtype=np.float64)
    grid = np.stack(np.meshgrid(np.arange(d), np.arange(h), np.arange(w), indexing="ij"), axis=-1)
    model_points = (grid + 0.5) * ps - 0.5  # centre of each token's patch, in model voxels
    out = np.empty((len(prepared.geometry), d, h, w, 3))
    for i, (geom, k) in enumerate(zip(prepared.geometry, prepared.scan_indices)):
        src = geom.source_index(model_points).reshape(-1, 3)  # (slice, row, column)
        affine = study.scans[k].affine
        homog = np.c_[src[:, 2], src[:, 1], src[:, 0], np.ones(len(src))]  # (column, row, slice, 1)
        out[i] = (homog @ affine.T)[:, :3].reshape(d, h, w, 3)
    return out


def scan_importance(tokens: np.ndarray) -> np.ndarray:
    mass = tokens.reshape(tokens.shape[0], -1).sum(axis=1).astype(np.float64)  # [N]
    total = mass.sum()
    return (mass / total if total > 0 else np.zeros_like(mass)).astype(np.float32)


def scan_volumes(tokens: np.ndarray, prepared) -> tuple[list[np.ndarray], list[int]]:
    """Token maps [N, d, h, w] -> one map per used source scan on its voxel grid (max over its model scans).

    ``prepared.to_scan(map, i)`` undoes model scan ``i``'s preprocessing (crop, resize, reorientation)
    from any grid covering the model grid; the token grid is passed directly, so the upsampling is the
    same trilinear interpolation the official demo applies, done once on the source grid.
    """
    indices = [int(k) for k in prepared.scan_indices]
    if len(indices) != tokens.shape[0]:
        raise ValueError(f"relevance has {tokens.shape[0]} model scans but the prepared study maps "
                         f"{len(indices)} (scan_indices={indices})")
    order = list(dict.fromkeys(indices))  # source scans, in first-use order
    volumes: dict[int, np.ndarray] = {}
    for i, k in enumerate(indices):
        v = np.asarray(prepared.to_scan(tokens[i], i), dtype=np.float32)
        volumes[k] = v if k not in volumes else np.maximum(volumes[k], v)
    return [volumes[k] for k in order], order
