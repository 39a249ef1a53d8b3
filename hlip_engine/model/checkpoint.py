"""Checkpoints in, checkpoints out: official 2025 ``.pt``, official 2026 Hugging Face folders, our own files.

One function, :func:`to_hlip_keys`, maps every foreign key layout onto our modules; the rest reads the
files (``torch.load(weights_only=True)`` only), guesses the architecture from weight shapes, and
describes a checkpoint when it does not fit. Our format: one ``.safetensors`` file whose metadata
holds the JSON config (architecture, text model, preprocessing), written atomically.
"""
from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass, field
from pathlib import Path

import torch

FORMAT = "hlip-explorer/1"
WEIGHT_FILES = ("model.safetensors", "open_clip_model.safetensors", "pytorch_model.bin",
                "open_clip_pytorch_model.bin")
# keys of official checkpoints that our modules do not have and do not need
IGNORED_PREFIXES = ("text.transformer.embeddings.position_ids", "text.transformer.pooler.")


def to_hlip_keys(state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """THE mapping of foreign key layouts onto our modules (our own keys pass through unchanged).

    official open_clip layout (2025 ``.pt`` with ``module.``; 2026 HF without)  ->  ours
      module.X                                 -> X
      visual.trunk.sequential_posemb           -> visual.scan_posemb
      visual.trunk.{cls_token, reg_token, spatial_posemb, patch_embed.*, blocks.*, norm.*} -> visual.*
      visual.head.proj.weight                  -> visual.proj.weight
      text.transformer.*, text.proj.weight, logit_scale, logit_bias -> unchanged
      text.transformer.embeddings.position_ids, text.transformer.pooler.* -> dropped (unused buffers/pooler)
    """
    out = {}
    for key, value in state_dict.items():
        if key.startswith("module."):
            key = key[len("module."):]
        if key.startswith(IGNORED_PREFIXES):
            continue
        if key == "visual.trunk.sequential_posemb":
            key = "visual.scan_posemb"
        elif key.startswith("visual.trunk."):
            key = "visual." + key[len("visual.trunk."):]
        elif key.startswith("visual.head.proj."):
            key = "visual.proj." + key[len("visual.head.proj."):]
        out[key] = value
    return out


@dataclass
class CheckpointFile:
    """What a checkpoint path holds, before any model is built."""

    path: Path
    kind: str  # "hlip" (ours), "official-2025" (.pt), "official-hf" (2026 folder), "state-dict"
    state_dict: dict[str, torch.Tensor]  # already in our key layout
    config: dict | None = None  # ours embeds its full config
    hints: list[str] = field(default_factory=list)  # names that may tell the architecture (file, 'name', ...)
    tokenizer_folder: Path | None = None  # a HF folder that carries tokenizer files


def _has_tokenizer(folder: Path) -> bool:
    return any((folder / f).is_file() for f in ("tokenizer.json", "vocab.txt"))


def _load_weights(path: Path) -> tuple[dict, dict]:
    """-> (raw state dict, extra): safetensors (+ metadata) or a torch pickle read with weights_only."""
    if path.suffix == ".safetensors":
        from safetensors import safe_open
        from safetensors.torch import load_file

        try:
            with safe_open(str(path), framework="pt") as f:
                meta = f.metadata() or {}
            return load_file(str(path)), {"metadata": meta}
        except Exception as e:
            raise ValueError(f"{path}: not a readable safetensors file ({e})") from None
    try:
        obj = torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as e:
        raise ValueError(f"{path}: not a readable PyTorch checkpoint with plain tensors "
                         f"(torch.load weights_only=True failed: {str(e).splitlines()[0][:200]})") from None
    if not isinstance(obj, dict):
        raise ValueError(f"{path}: expected a dict of tensors or {{'state_dict': ...}}, got {type(obj).__name__}")
    extra = {k: v for k, v in obj.items() if not isinstance(v, (dict, torch.Tensor))}
    for key in ("state_dict", "model", "module"):
        if isinstance(obj.get(key), dict):
            obj = obj[key]
            break
    return obj, extra


def read_checkpoint(path: str | os.PathLike) -> CheckpointFile:
    """Read any supported checkpoint file or folder; keys are mapped with :func:`to_hlip_keys`."""
    path = Path(path).expanduser()
    if not path.exists():
        raise FileNotFoundError(f"checkpoint not found: {path}")
    hints = [path.stem, path.parent.name]
    tokenizer_folder = None
    if path.is_dir():
        weights = next((path / f for f in WEIGHT_FILES if (path / f).is_file()), None)
        if weights is None:
            raise FileNotFoundError(f"{path}: a model folder needs one of {', '.join(WEIGHT_FILES)}")
        hints = [path.name] + [p.stem for p in sorted((path / "hlip" / "model_configs").glob("*.json"))]
        oc = path / "open_clip_config.json"
        if oc.is_file():
            try:
                hints.append(json.loads(oc.read_text()).get("model_cfg", {}).get("vision_cfg", {})
                             .get("timm_model_name", ""))
            except (ValueError, AttributeError):
                pass
        tokenizer_folder = path if _has_tokenizer(path) else None
        kind = "official-hf"
    else:
        weights, kind = path, "state-dict"
    raw, extra = _load_weights(weights)
    bad = [k for k, v in raw.items() if not isinstance(v, torch.Tensor)]
    if not raw or bad:
        raise ValueError(f"{weights}: does not look like model weights "
                         f"({'empty' if not raw else f'non-tensor entries such as {bad[:3]}'})")
    config = None
    meta = extra.get("metadata", {})
    if meta.get("format") == FORMAT and "config" in meta:
        config, kind = json.loads(meta["config"]), "hlip"
    elif any(k.startswith("module.") for k in raw) or "epoch" in extra:
        kind = "official-2025"
    if isinstance(extra.get("name"), str):
        hints.append(extra["name"])
    return CheckpointFile(path, kind, to_hlip_keys(raw), config, [h for h in hints if h], tokenizer_folder)


# --------------------------------------------------------------------------------------------------
# architecture from shapes
# --------------------------------------------------------------------------------------------------
def visual_signature(state_dict: dict) -> dict | None:
    """The shape facts of a visual tower (our key layout); None when there is no visual tower."""
    sd = state_dict
    if "visual.cls_token" not in sd or "visual.patch_embed.proj.weight" not in sd:
        return None
    width = int(sd["visual.cls_token"].shape[-1])
    blocks = {int(k.split(".")[2]) for k in sd if k.startswith("visual.blocks.")}
    proj = sd.get("visual.proj.weight")
    pe = sd.get("visual.spatial_posemb")
    fc1 = sd.get("visual.blocks.0.mlp.fc1.weight")
    return {
        "width": width,
        "depth": max(blocks) + 1 if blocks else 0,
        "patch_size": [int(s) for s in sd["visual.patch_embed.proj.weight"].shape[2:]],
        "grid": [int(s) for s in pe.shape[1:4]] if pe is not None else None,
        "register_tokens": int(sd["visual.reg_token"].shape[1]) if "visual.reg_token" in sd else 0,
        "scan_table": int(sd["visual.scan_posemb"].shape[1]) if "visual.scan_posemb" in sd else 0,
        "pool": "dinotxt" if proj is not None and proj.shape[1] == 2 * width else "token",
        "mlp_hidden": int(fc1.shape[0]) if fc1 is not None else None,
    }


def config_signature(cfg: dict) -> dict:
    v = cfg["visual"]
    return {
        "width": v["width"], "depth": v["depth"], "patch_size": list(v["patch_size"]),
        "grid": [s // p for s, p in zip(v["input_size"], v["patch_size"])],
        "register_tokens": v.get("register_tokens", 0), "scan_table": v.get("scan_table", 0),
        "pool": v.get("pool", "token"), "mlp_hidden": int(v["width"] * v.get("mlp_ratio", 4.0)),
    }


def describe(state_dict: dict) -> str:
    """One line a person can read: what this checkpoint looks like."""
    sig = visual_signature(state_dict)
    parts = []
    if sig is None:
        tops = sorted({k.split(".")[0] + ("." + k.split(".")[1] if k.count(".") else "") for k in state_dict})
        parts.append(f"no HLIP visual tower (top-level keys: {', '.join(tops[:8])}{' ...' if len(tops) > 8 else ''})")
    else:
        grid = "x".join(map(str, sig["grid"])) if sig["grid"] else "?"
        inp = ("x".join(str(g * p) for g, p in zip(sig["grid"], sig["patch_size"])) if sig["grid"] else "?")
        parts.append(f"ViT width {sig['width']}, depth {sig['depth']}, patch {'x'.join(map(str, sig['patch_size']))}, "
                     f"token grid {grid} (input {inp}), {1 + sig['register_tokens']} prefix token(s), "
                     f"scan table {sig['scan_table'] or 'none'}, pool {sig['pool']}")
        if "visual.proj.weight" in state_dict:
            parts.append(f"embedding {state_dict['visual.proj.weight'].shape[0]}")
    if "text.transformer.embeddings.word_embeddings.weight" in state_dict:
        from .text import bert_config_from_shapes

        t = bert_config_from_shapes(state_dict)
        parts.append(f"text BERT hidden {t['hidden_size']} x {t['num_hidden_layers']} layers, vocab {t['vocab_size']}")
    parts.append(f"{len(state_dict)} tensors")
    return "; ".join(parts)


def compare_state(expected: dict, got: dict) -> tuple[list, list, list]:
    """-> (missing, unexpected, mis-shaped as 'key: checkpoint [..] vs model [..]')."""
    missing = sorted(k for k in expected if k not in got)
    unexpected = sorted(k for k in got if k not in expected)
    shaped = sorted(f"{k}: checkpoint {list(got[k].shape)} vs model {list(expected[k].shape)}"
                    for k in expected if k in got and tuple(got[k].shape) != tuple(expected[k].shape))
    return missing, unexpected, shaped


def mismatch_message(path, expected: dict, got: dict, arch: str) -> str | None:
    missing, unexpected, shaped = compare_state(expected, got)
    if not (missing or unexpected or shaped):
        return None

    def few(items):
        return ", ".join(items[:6]) + (f" (+{len(items) - 6} more)" if len(items) > 6 else "")

    lines = [f"{path}: checkpoint does not fit architecture {arch!r}"]
    if missing:
        lines.append(f"  missing ({len(missing)}): {few(missing)}")
    if unexpected:
        lines.append(f"  unexpected ({len(unexpected)}): {few(unexpected)}")
    if shaped:
        lines.append(f"  mis-shaped ({len(shaped)}): {few(shaped)}")
    lines.append(f"  the checkpoint looks like: {describe(got)}")
    return "\n".join(lines)


# --------------------------------------------------------------------------------------------------
# writing ours
# --------------------------------------------------------------------------------------------------
def save_checkpoint(state_dict: dict[str, torch.Tensor], config: dict, path: str | os.PathLike) -> Path:
    """Write our format atomically (:func:`hlip_engine.atomic.atomic_write`)."""
    from safetensors.torch import save_file

    from ..atomic import atomic_write

    path = Path(path).expanduser()
    if path.suffix != ".safetensors":
        raise ValueError(f"{path}: our checkpoints are .safetensors files")
    tensors = {k: v.detach().to("cpu").contiguous() for k, v in state_dict.items() if v is not None}
    with atomic_write(path) as tmp:
        save_file(tensors, str(tmp), metadata={"format": FORMAT, "config": json.dumps(config)})
    return path


# --------------------------------------------------------------------------------------------------
# which weights these are
# --------------------------------------------------------------------------------------------------
_FINGERPRINTS: dict[tuple, str] = {}


def model_fingerprint(checkpoint: str | os.PathLike) -> str:
    """sha256 of a checkpoint file, or of a checkpoint folder's weight files (2026 Hugging Face layout).

    What an index records as ``model_hash``; remembered per (path, size, mtime) so a search that checks
    its model against the index does not re-read gigabytes of weights each time.
    """
    path = Path(checkpoint).resolve()
    weights = [path] if path.is_file() else sorted(
        p for p in path.rglob("*") if p.suffix in (".safetensors", ".bin", ".pt", ".pth"))
    key = tuple((str(p), p.stat().st_size, p.stat().st_mtime_ns) for p in weights)
    if key not in _FINGERPRINTS:
        h = hashlib.sha256()
        for p in weights:
            h.update(p.name.encode())
            with open(p, "rb") as f:
                while block := f.read(8 << 20):
                    h.update(block)
        _FINGERPRINTS[key] = h.hexdigest()
    return _FINGERPRINTS[key]
