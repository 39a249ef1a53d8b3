"""Start the 3-D image tower from a 2-D ViT (e.g. MAE ImageNet ViT-B), as the paper did.

The transformer blocks of a 2-D ViT work unchanged on 3-D tokens; only the patch embedding differs. Its
2-D kernel [C, 3, ph, pw] is *inflated by averaging*: summed over RGB (one input channel), repeated over
the patch depth and divided by it, so a volume of identical slices embeds like the 2-D image did.
Position tables are skipped (ours are fixed sin-cos tables); so is anything else whose shape or name
has no counterpart, and the caller gets the list.
"""
from __future__ import annotations

from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F

_PREFIXES = ("module.", "model.", "encoder.", "backbone.", "visual.trunk.", "visual.", "trunk.")
_SKIP = ("pos_embed", "posemb", "head.", "fc_norm", "decoder", "mask_token")


# timm's MAE ImageNet ViTs (the official HLIP start: its model configs set timm_model_pretrained: true)
MAE_BY_WIDTH = {768: "timm/vit_base_patch16_224.mae", 1024: "timm/vit_large_patch16_224.mae"}
_MAE_FILE = "model.safetensors"


def _hub_cached(repo: str, filename: str = _MAE_FILE, cache_dir: str | Path | None = None) -> Path | None:
    try:
        from huggingface_hub import try_to_load_from_cache
    except ImportError:
        return None
    found = try_to_load_from_cache(repo, filename, cache_dir=str(cache_dir) if cache_dir else None)
    return Path(found) if isinstance(found, str) and Path(found).is_file() else None


def resolve_init_2d(spec: str, *, width: int, cache_dir: str | Path | None = None) -> Path:
    """``--init-2d`` -> a local file: a path, ``mae`` (timm's MAE ViT of this width, from the Hugging Face
    cache) or a timm/Hugging Face name such as ``vit_base_patch16_224.mae``. Never downloads."""
    path = Path(spec).expanduser()
    if path.is_file():
        return path
    name = str(spec)
    if name.lower() == "mae":
        if width not in MAE_BY_WIDTH:
            raise ValueError(f"--init-2d mae: no MAE ImageNet ViT of width {width} (known widths: "
                             f"{sorted(MAE_BY_WIDTH)}); pass a 2-D checkpoint file or --init-2d none")
        name = MAE_BY_WIDTH[width]
    looks_like_hub = name.count("/") <= 1 and path.suffix not in (".pt", ".pth", ".bin", ".safetensors")
    if looks_like_hub:
        repo = name if "/" in name else f"timm/{name}"
        found = _hub_cached(repo, cache_dir=cache_dir)
        if found is not None:
            return found
        raise FileNotFoundError(
            f"--init-2d: the image tower starts from {repo} ({_MAE_FILE}), which is not in the Hugging Face "
            f"cache of this machine and is never downloaded at run time. Get it once where there is a network "
            f"(`huggingface-cli download {repo} {_MAE_FILE}`, or https://huggingface.co/{repo}) and pass "
            f"--init-2d /path/to/{_MAE_FILE}, or copy the cache; --init-2d none trains from scratch on purpose.")
    raise FileNotFoundError(f"{path}: 2-D ViT checkpoint not found (--init-2d takes a file, 'mae' or 'none')")


def read_2d_checkpoint(path: str | Path) -> dict[str, torch.Tensor]:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: 2-D ViT checkpoint not found")
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            sd = load_file(str(path))
        else:
            sd = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        raise ValueError(f"{path}: cannot read the 2-D checkpoint ({e})") from e
    for wrapper in ("model", "state_dict", "module"):
        if isinstance(sd, dict) and wrapper in sd and isinstance(sd[wrapper], dict):
            sd = sd[wrapper]
    if not isinstance(sd, dict) or not sd:
        raise ValueError(f"{path}: no state dict found in the 2-D checkpoint")
    out = {}
    for key, value in sd.items():
        if not isinstance(value, torch.Tensor):
            continue
        for prefix in _PREFIXES:
            if key.startswith(prefix):
                key = key[len(prefix):]
        out[key] = value
    return out


def inflate_patch_kernel(w2d: torch.Tensor, target_shape: torch.Size) -> torch.Tensor:
    """[C, 3 or 1, ph, pw] -> [C, 1, pd, ph', pw']: sum over RGB, resize in-plane if needed, average over depth."""
    c, _, pd, ph, pw = target_shape
    w = w2d.float().sum(dim=1, keepdim=True)  # [C, 1, ph, pw]
    if w.shape[-2:] != (ph, pw):
        w = F.interpolate(w, size=(ph, pw), mode="bicubic", align_corners=False)
    return (w[:, :, None].repeat(1, 1, pd, 1, 1) / pd).to(w2d.dtype)  # [C, 1, pd, ph, pw]


def inflate_into(visual: nn.Module, checkpoint: str | Path) -> dict[str, list[str]]:
    """Copy a 2-D ViT's weights into the 3-D image tower ``visual``; returns {'loaded', 'skipped'} key lists."""
    source = read_2d_checkpoint(checkpoint)
    target = visual.state_dict()
    loaded, skipped, new = [], [], {}
    for key, value in source.items():
        if any(s in key for s in _SKIP):
            skipped.append(f"{key} (position table or 2-D head)")
            continue
        matches = [t for t in target if t == key or t.endswith("." + key)]
        if len(matches) != 1:
            skipped.append(f"{key} ({'no' if not matches else 'ambiguous'} counterpart)")
            continue
        name = matches[0]
        want = target[name].shape
        if value.ndim == 4 and len(want) == 5:
            value = inflate_patch_kernel(value, want)
        elif value.shape != want:
            if value.numel() == target[name].numel():
                value = value.reshape(want)  # e.g. cls_token [1, 1, C] vs [1, C]
            else:
                skipped.append(f"{key} (shape {tuple(value.shape)} vs {tuple(want)})")
                continue
        new[name] = value.to(target[name].dtype)
        loaded.append(name)
    if not loaded:
        raise ValueError(f"{checkpoint}: no weight matched the image tower; is it a ViT checkpoint?")
    visual.load_state_dict(new, strict=False)
    return {"loaded": loaded, "skipped": skipped}
