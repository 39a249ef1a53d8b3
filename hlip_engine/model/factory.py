"""Making models: the architecture registry (``configs/*.json``), overrides, ``infer_arch``,
``create_model`` and ``load_model``.

Imports run one way: factory -> clip (the model) -> vit / text, and factory -> checkpoint (file work).
Neither the model nor the checkpoint code imports this module (open_clip keeps ``model.py`` apart from
``factory.py`` the same way).
"""
from __future__ import annotations

import copy
import json
import os
import warnings
from functools import lru_cache
from pathlib import Path

import torch

from .checkpoint import config_signature, describe, mismatch_message, read_checkpoint, visual_signature
from .clip import _TEXT_PREFIX, HLIPModel, text_fingerprint
from .text import TextTower, bert_config_from_shapes, resolve_text_folder
from .vit import VisualConfig

CONFIG_DIR = Path(__file__).with_name("configs")


# --------------------------------------------------------------------------------------------------
# architecture registry
# --------------------------------------------------------------------------------------------------
@lru_cache(maxsize=1)
def _registry() -> dict[str, dict]:
    return {p.stem: json.loads(p.read_text()) for p in sorted(CONFIG_DIR.glob("*.json"))}


def list_architectures() -> list[str]:
    """Registered architecture names (official ones first, then ours)."""
    names = list(_registry())
    return sorted(names, key=lambda n: (n.startswith("hlip_"), n))


def get_config(arch: str | dict | os.PathLike) -> dict:
    """A config by name, from a JSON file, or a dict (copied, so callers may edit it)."""
    if isinstance(arch, dict):
        return copy.deepcopy(arch)
    reg = _registry()
    if str(arch) in reg:
        return copy.deepcopy(reg[str(arch)])
    path = Path(arch)
    if path.suffix == ".json" and path.is_file():
        try:
            return json.loads(path.read_text())
        except ValueError as e:
            raise ValueError(f"{path}: not valid JSON ({e})") from None
    raise ValueError(f"unknown architecture {str(arch)!r}; registered: {', '.join(list_architectures())} "
                     "(or a path to a .json config)")


def _apply_overrides(cfg: dict, overrides: dict) -> dict:
    """Top-level keys replace (dicts merge); visual keys may be given directly (depth=2, blocks=[...])."""
    visual_keys = set(VisualConfig.__dataclass_fields__)
    for key, value in overrides.items():
        if key in cfg and isinstance(cfg[key], dict) and isinstance(value, dict):
            cfg[key] = {**cfg[key], **value}
        elif key in visual_keys and key not in cfg:
            cfg["visual"][key] = value
        else:
            cfg[key] = value
    return cfg



def infer_arch(state_dict: dict, hints: list[str] = ()) -> str:
    """The registered architecture whose shapes match; file/folder names break ties (h2 vs h3 ...)."""
    sig = visual_signature(state_dict)
    if sig is None:
        raise ValueError(f"this is not an HLIP checkpoint: {describe(state_dict)}")
    names = list_architectures()
    candidates = [n for n in names if config_signature(get_config(n)) == sig]
    if not candidates:
        raise ValueError(f"no registered architecture has these shapes: {describe(state_dict)}. Pass arch= "
                         f"a config name or dict; registered: {', '.join(names)}")
    if len(candidates) == 1:
        return candidates[0]
    text = " ".join(h.lower().replace("-", "_") for h in hints)

    def score(name: str) -> int:
        keys = [name, *get_config(name).get("aliases", [])]
        return max((len(k) for k in keys if k.lower() in text), default=0)

    best = max(candidates, key=score)
    if score(best) == 0 or sum(score(c) == score(best) for c in candidates) > 1:
        best = candidates[0]
        warnings.warn(f"checkpoint shapes fit {candidates}; their block layouts differ and nothing in the "
                      f"file names says which: using {best!r}. Pass arch= to choose.", stacklevel=3)
    return best


# --------------------------------------------------------------------------------------------------
# create / load
# --------------------------------------------------------------------------------------------------
def create_model(arch: str | dict = "hlip_tiny", text_model: str | None = None, **overrides) -> HLIPModel:
    """A fresh model (random visual tower, pretrained text tower from ``text_model`` or the config's)."""
    cfg = _apply_overrides(get_config(arch), overrides)
    cfg.setdefault("text", {})
    if text_model is not None:
        cfg["text"] = {"model": str(text_model), "context_length": cfg["text"].get("context_length", 256)}
    t = cfg["text"]
    text = TextTower.build(t.get("model"), int(cfg["embed_dim"]), t.get("context_length", 256), pretrained=True,
                           tokenizer_folder=resolve_text_folder(t["tokenizer"]) if t.get("tokenizer") else None)
    cfg["text"]["model"] = text.name
    return HLIPModel(cfg, text)


def default_device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def load_model(checkpoint: str | os.PathLike, arch: str | dict | None = None, text_model: str | None = None,
               device: str | torch.device | None = None) -> HLIPModel:
    """Any supported checkpoint -> HLIPModel in eval mode (CUDA + bf16 autocast when available, else CPU fp32).

    arch: None infers it (our files carry it; official ones by weight shapes + file names).
    text_model: a folder / HF id for the tokenizer (and text config) when the checkpoint's is not local.
    """
    ck = read_checkpoint(checkpoint)
    sd = ck.state_dict
    if arch is not None:
        cfg = get_config(arch)
    elif ck.config is not None:
        cfg = copy.deepcopy(ck.config)
    else:
        cfg = get_config(infer_arch(sd, ck.hints))
    name = cfg.get("name", "custom")
    if "visual.proj.weight" in sd:  # the embedding size is the checkpoint's, whatever the config says
        cfg["embed_dim"] = int(sd["visual.proj.weight"].shape[0])
    cfg["init_logit_bias"] = 0.0 if "logit_bias" in sd else None
    text = _text_for_checkpoint(ck, cfg, text_model)
    try:
        model = HLIPModel(cfg, text)
    except ValueError as e:
        raise ValueError(f"{ck.path}: architecture {name!r}: {e}") from None
    if _pretrained_text(cfg, sd):  # the text tensors it left out are the pretrained model's
        sd = {**{k: v for k, v in model.state_dict().items() if k.startswith(_TEXT_PREFIX)}, **sd}
    message = mismatch_message(ck.path, model.state_dict(), sd, name)
    if message:
        raise ValueError(message)
    model.load_state_dict(sd)
    model.config["source"] = {"path": str(ck.path), "kind": ck.kind}
    device = torch.device(device) if device is not None else default_device()
    model.to(device).eval()
    model.autocast_dtype = torch.bfloat16 if device.type == "cuda" else None
    return model


def _pretrained_text(cfg: dict, sd: dict) -> bool:
    """Saved with (all or part of) its text transformer left out: the rest is the named pretrained model's."""
    weights = (cfg.get("text") or {}).get("weights")
    return isinstance(weights, dict) and weights.get("from") == "pretrained"


def _text_for_checkpoint(ck, cfg: dict, text_model: str | None) -> TextTower:
    """Build the text tower to receive the checkpoint's weights, without reading any other weights."""
    t = dict(cfg.get("text") or {})
    sd = ck.state_dict
    if _pretrained_text(cfg, sd):
        name = str(text_model) if text_model is not None else t.get("model")
        embed_dim = int(sd["text.proj.weight"].shape[0]) if "text.proj.weight" in sd else int(cfg["embed_dim"])
        try:
            tower = TextTower.build(name, embed_dim, int(t.get("context_length", 256)), pretrained=True)
        except (OSError, ValueError) as e:
            raise ValueError(f"{ck.path}: this checkpoint takes its text transformer from the pretrained model "
                             f"{name!r}, which cannot be loaded here ({e}); install it or pass text_model=FOLDER") from e
        if text_fingerprint(tower) != t["weights"].get("sha256"):
            raise ValueError(f"{ck.path}: the local text model {name!r} is not the one this checkpoint was "
                             "trained with (weights differ); pass the right folder as text_model")
        return tower
    if "text.transformer.embeddings.word_embeddings.weight" not in sd:
        raise ValueError(f"{ck.path}: no text tower in this checkpoint ({len(sd)} tensors)")
    shapes = bert_config_from_shapes(sd)
    name = str(text_model) if text_model is not None else t.get("model")
    folder = resolve_text_folder(name) if name else None
    if text_model is None and folder is None and shapes["hidden_size"] == 384 and shapes["num_hidden_layers"] == 6:
        name, folder = "all-MiniLM-L6-v2", resolve_text_folder("all-MiniLM-L6-v2")  # official-layout MiniLM
    hf_config = None
    if folder is not None and (folder / "config.json").is_file():
        hf_config = json.loads((folder / "config.json").read_text())
        if hf_config.get("hidden_size") != shapes["hidden_size"] or "model_type" not in hf_config:
            hf_config = None  # not this model's config (e.g. an open_clip folder): fall back
    hf_config = hf_config or t.get("hf_config") or shapes
    tokenizer = ck.tokenizer_folder if text_model is None and ck.tokenizer_folder else None
    if tokenizer is None and t.get("tokenizer") and text_model is None:
        tokenizer = resolve_text_folder(t["tokenizer"])
    if tokenizer is None:
        tokenizer = folder
    embed_dim = int(sd["text.proj.weight"].shape[0]) if "text.proj.weight" in sd else int(cfg["embed_dim"])
    return TextTower.build(name or "unknown", embed_dim, int(t.get("context_length", 256)), pretrained=False,
                           hf_config=hf_config, tokenizer_folder=tokenizer)
