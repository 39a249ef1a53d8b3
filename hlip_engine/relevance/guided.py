"""Guided rollout: token-level evidence placed at voxel resolution.

A token map says *which* patch (8 x 8 x 8 voxels in the demo model) carried the evidence (rollout, Chefer
et al. 2021); it cannot say where inside the patch. Selvaraju et al. 2017 ("Grad-CAM", their Guided
Grad-CAM) meet the same problem with CNN maps and multiply the upsampled coarse map by a fine-resolution
gradient map. Here:

    guided = trilinear_upsample(rollout tokens) x gaussian(|d logit / d x * x|, sigma)

on the model grid, both factors from one forward and one backward of the model (rollout.py takes the input
gradient in the same backward). The token map decides the region, the gradient x input map the voxels
inside it; neither uses anything but the model's own gradients. ``tokens`` of such a result are the guided
map summed per patch, so scan importance and slice profiles describe the same map the overlay shows.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F

# Gaussian sigma in model voxels (slice, row, column): chosen on validation phantoms (bench/relevance_methods.py)
DEFAULT_SIGMA = (0.5, 2.0, 2.0)


def _gaussian_1d(sigma: float, device) -> torch.Tensor:
    radius = max(1, int(math.ceil(3.0 * sigma)))
    t = torch.arange(-radius, radius + 1, device=device, dtype=torch.float32)
    k = torch.exp(-0.5 * (t / sigma) ** 2)
    return k / k.sum()


def smooth(volumes: torch.Tensor, sigma=DEFAULT_SIGMA) -> torch.Tensor:
    """[N, D, H, W] -> the same, Gaussian-smoothed per axis (separable; edges replicated; sigma 0 = none)."""
    x = volumes.float()[:, None]  # [N, 1, D, H, W]
    for axis, s in enumerate(sigma):
        if not s or s <= 0:
            continue
        k = _gaussian_1d(float(s), x.device)
        shape = [1, 1, 1, 1, 1]
        shape[2 + axis] = k.numel()
        pad = [0, 0, 0, 0, 0, 0]
        r = k.numel() // 2
        pad[2 * (2 - axis)] = pad[2 * (2 - axis) + 1] = r  # F.pad orders the last axis first
        x = F.conv3d(F.pad(x, pad, mode="replicate"), k.reshape(shape))
    return x[:, 0]


def guided_map(cam: torch.Tensor, input_grad: torch.Tensor, sigma=DEFAULT_SIGMA) -> torch.Tensor:
    """cam [N, d, h, w] (token relevance) x smoothed input_grad [N, D, H, W] -> [N, D, H, W] >= 0."""
    if cam.shape[0] != input_grad.shape[0]:
        raise ValueError(f"token map has {cam.shape[0]} scans, the input gradient {input_grad.shape[0]}")
    up = F.interpolate(cam.float().clamp(min=0)[:, None], size=tuple(input_grad.shape[1:]), mode="trilinear",
                       align_corners=False)[:, 0]
    return up * smooth(input_grad.abs(), sigma)


def pool_to_tokens(fine: torch.Tensor, patch) -> torch.Tensor:
    """[N, D, H, W] -> [N, d, h, w]: summed per token patch."""
    n, dd, hh, ww = fine.shape
    pd, ph, pw = patch
    return fine.reshape(n, dd // pd, pd, hh // ph, ph, ww // pw, pw).sum(dim=(2, 4, 6))
