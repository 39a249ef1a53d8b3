"""Start a model at a finer patch size from a trained one (more tokens per scan, same voxels in).

    python -m training.resize_patches IN.safetensors OUT.safetensors --patch 8 8 8

Each new patch must tile the old one (old size = k x new size per axis). The new kernel is the old one
summed over each k-block: a new token of a patch equals the old token of that patch zoomed k-fold
(nearest neighbour), so on smooth images the model starts as if it saw the scan magnified k-fold, one
token per old token's worth of anatomy. The frozen position table is resampled (trilinear) to the new
grid, so each token keeps the position its anatomy had. Everything else is copied; the config records the
new patch size, and training (``python -m training.pretrain --init OUT``) then adapts the model to it.
"""
from __future__ import annotations

import argparse
import copy
import sys
from pathlib import Path

import torch

KERNEL = "visual.patch_embed.proj.weight"
TABLE = "visual.spatial_posemb"


def resize_patch_kernel(weight: torch.Tensor, patch: tuple[int, int, int]) -> torch.Tensor:
    """[O, C, pd, ph, pw] -> [O, C, *patch]: summed over each block of old kernel taps a new tap covers."""
    o, c, *old = weight.shape
    factors = []
    for n_old, n_new in zip(old, patch):
        if n_new <= 0 or n_old % n_new:
            raise ValueError(f"patch {tuple(patch)} does not tile the model's patch {tuple(old)}")
        factors.append(n_old // n_new)
    (fd, fh, fw), (d, h, w) = factors, patch
    return weight.reshape(o, c, d, fd, h, fh, w, fw).sum(dim=(3, 5, 7))


def resize_checkpoint(src: str | Path, dst: str | Path, patch: tuple[int, int, int]) -> dict:
    """Write ``dst``: ``src`` at patch size ``patch``. Returns the new config."""
    from hlip_engine.model.checkpoint import read_checkpoint, save_checkpoint
    from hlip_engine.model.vit import resample_spatial

    ck = read_checkpoint(src)
    if ck.config is None or KERNEL not in ck.state_dict:
        raise ValueError(f"{src}: needs one of our checkpoints (config and patch embedding inside)")
    config = copy.deepcopy(ck.config)
    vis = config["visual"]
    size = [int(v) for v in vis["input_size"]]
    old = [int(v) for v in vis["patch_size"]]
    patch = tuple(int(v) for v in patch)
    if any(s % p for s, p in zip(size, patch)):
        raise ValueError(f"patch {patch} does not tile the input size {tuple(size)}")
    sd = dict(ck.state_dict)
    sd[KERNEL] = resize_patch_kernel(sd[KERNEL], patch)
    grid = tuple(s // p for s, p in zip(size, patch))
    if TABLE in sd:
        sd[TABLE] = resample_spatial(sd[TABLE], grid).to(sd[TABLE].dtype).contiguous()
    vis["patch_size"] = list(patch)
    config["description"] = (f"{config.get('description', '')} -- patch resized {tuple(old)} -> {patch} "
                             f"({'x'.join(map(str, grid))} tokens per scan) by training.resize_patches").strip()
    save_checkpoint(sd, config, dst)
    return config


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m training.resize_patches", description=__doc__.split("\n\n")[0])
    p.add_argument("src", help="our checkpoint (.safetensors)")
    p.add_argument("dst", help="the new checkpoint (.safetensors)")
    p.add_argument("--patch", type=int, nargs=3, required=True, metavar=("D", "H", "W"))
    a = p.parse_args(argv)
    try:
        config = resize_checkpoint(a.src, a.dst, tuple(a.patch))
    except (ValueError, FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"{a.dst}: {config['description']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
