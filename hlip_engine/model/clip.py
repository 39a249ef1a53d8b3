"""The HLIP pair: hierarchical ViT + text tower + learned logit scale; build, load, save, encode.

``create_model`` builds a fresh model from a named architecture (``configs/*.json``) with a pretrained
text tower; ``load_model`` rebuilds one from any supported checkpoint (see checkpoint.py).
``HLIPModel.config`` is plain JSON data and travels inside our checkpoints.
"""
from __future__ import annotations

import copy
import hashlib
import json
import math
import os
from contextlib import nullcontext
from functools import lru_cache
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F

from .checkpoint import (
    infer_arch,
    mismatch_message,
    read_checkpoint,
    save_checkpoint,
)
from .text import TextTower, bert_config_from_shapes, resolve_text_folder
from .vit import HLIPVisualEncoder, VisualConfig

CONFIG_DIR = Path(__file__).with_name("configs")


# --------------------------------------------------------------------------------------------------
# typical search queries per domain (HLIPModel.encode_query centres on them)
# --------------------------------------------------------------------------------------------------
QUERY_BANKS = Path(__file__).resolve().parent.parent / "data" / "query_bank.json"


@lru_cache(maxsize=1)
def _query_banks() -> dict[str, list[str]]:
    return {k: v for k, v in json.loads(QUERY_BANKS.read_text()).items() if not k.startswith("_")}


def query_bank(name: str) -> list[str]:
    """The typical queries of one domain (see ``HLIPModel.encode_query``)."""
    banks = _query_banks()
    if name not in banks:
        raise ValueError(f"unknown query bank {name!r} (text.query_bank in the model config); "
                         f"known: {', '.join(banks)}")
    return list(banks[name])


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


# --------------------------------------------------------------------------------------------------
# the model
# --------------------------------------------------------------------------------------------------
class HLIPModel(nn.Module):
    """Visual tower (``.visual``), text tower (``.text``) and ``.logit_scale`` (log of the temperature)."""

    def __init__(self, config: dict, text: TextTower):
        super().__init__()
        self.config = config
        self.embed_dim = int(config["embed_dim"])
        self.visual = HLIPVisualEncoder(VisualConfig.from_dict(config["visual"]), self.embed_dim)
        self.text = text
        self.logit_scale = nn.Parameter(torch.tensor(float(config.get("init_logit_scale", math.log(1 / 0.07)))))
        bias = config.get("init_logit_bias")
        self.logit_bias = nn.Parameter(torch.tensor(float(bias))) if bias is not None else None
        self.autocast_dtype: torch.dtype | None = None  # load_model sets bf16 on CUDA

    @property
    def device(self) -> torch.device:
        return self.logit_scale.device

    def _autocast(self):
        if self.autocast_dtype is None or self.device.type != "cuda":
            return nullcontext()
        return torch.autocast("cuda", dtype=self.autocast_dtype)

    # -- encoding ----------------------------------------------------------------------------------
    def encode_image(self, x, normalize: bool = True, scan_counts=None, all_outputs: bool = False):
        """x [B, N, 1, D, H, W] (or a list of [N_i, 1, D, H, W], or padded + ``scan_counts``) -> [B, E].

        ``all_outputs=True`` returns every output [B, outputs, E] (the 2026 models have two: [:, 0] for
        single report sentences -- what zero-shot uses -- and [:, 1] for whole reports).
        """
        if isinstance(x, (list, tuple)):
            x = [torch.as_tensor(s).to(self.device, torch.float32) for s in x]
        else:
            x = torch.as_tensor(x).to(self.device, torch.float32)
        with self._autocast():
            out = self.visual(x, scan_counts=scan_counts).float()  # [B, outputs, E]
        if not all_outputs:
            out = out[:, 0]
        return F.normalize(out, dim=-1) if normalize else out

    def tokenize(self, texts: list[str]) -> torch.Tensor:
        return self.text.tokenize(texts)["input_ids"]

    def encode_text(self, texts, normalize: bool = True) -> torch.Tensor:
        """list[str] (or token ids [T, L]) -> [T, E]."""
        ids = texts if isinstance(texts, torch.Tensor) else self.tokenize(texts)
        with self._autocast():
            out = self.text(ids.to(self.device)).float()
        return F.normalize(out, dim=-1) if normalize else out

    def encode_query(self, texts: list[str], normalize: bool = True, centre: bool = True) -> torch.Tensor:
        """Free-text search queries -> [T, E], phrased as the model read reports in training.

        The config's ``text.query_prefix`` (e.g. "This study shows: ", recorded by training.pretrain from
        its report prefix) goes before each query, so a query meets the studies where their reports did.

        centre: subtract the mean embedding of typical queries of the model's domain (``query_bank_name``) from
        each query. Ranking studies by the centred query ranks them by how much more they match this
        query than they match typical queries, so a study close to every finding query (a hub; with the
        demo model, any head CT for any "haemorrhage" phrasing) stops topping every search. Zero-shot
        is untouched (its softmax over classes already cancels any shift shared by all classes). The
        "modality gap" of CLIP spaces (Liang et al. 2022) and query-bank normalisation (Bogolin et al.
        2022) are the same observation. ``centre=False`` gives the plain text embedding.
        normalize=False: the vector before its final normalisation (the normalised text embedding,
        centred or not).
        """
        prefix = (self.config.get("text") or {}).get("query_prefix", "")
        query = self.encode_text([prefix + str(t).strip() for t in texts], normalize=True)
        if centre and (bank := self.query_bank_name()):
            query = query - self._bank_mean(bank)
        return F.normalize(query, dim=-1) if normalize else query

    def query_bank_name(self) -> str | None:
        """The bank of typical queries ``encode_query`` centres on: ``text.query_bank`` in the config
        (a name in hlip_engine/data/query_bank.json, or null for none), else by the model's recipe:
        "chest" for chest CT models, "neuro" for the brain MRI / head CT ones."""
        text = self.config.get("text") or {}
        if "query_bank" in text:
            return text["query_bank"] or None
        recipe = str((self.config.get("preprocess") or {}).get("recipe") or "")
        return "chest" if "chest" in recipe else "neuro"

    def _bank_mean(self, bank: str) -> torch.Tensor:
        """Mean of the bank's normalised query embeddings, cached until a text weight changes."""
        try:
            version = (str(self.device), *(p._version for p in self.text.parameters()))
        except RuntimeError:  # a model built under torch.inference_mode: its tensors keep no version counter
            version = (str(self.device), *(p.data_ptr() for p in self.text.parameters()))
        cached = getattr(self, "_bank_cache", None)
        if cached is not None and cached[:2] == (bank, version):
            return cached[2]
        with torch.no_grad():
            mean = self.encode_query(query_bank(bank), centre=False).mean(0)
        self._bank_cache = (bank, version, mean)
        return mean

    def forward(self, image=None, text=None, scan_counts=None) -> dict:
        """open_clip-style: normalised features + the scales, for training loops."""
        out = {"logit_scale": self.logit_scale.exp()}
        if self.logit_bias is not None:
            out["logit_bias"] = self.logit_bias
        if image is not None:
            out["image_features"] = self.encode_image(image, scan_counts=scan_counts)
        if text is not None:
            out["text_features"] = self.encode_text(text)
        return out

    # -- studies -----------------------------------------------------------------------------------
    def prepare(self, study, recipe: str | None = None, **options):
        """Study -> PreparedStudy with this model's recipe and input size (options override them)."""
        from hlip_engine.preprocessing import model_recipe, preprocess

        recipe, pre = model_recipe(self.config.get("preprocess"), recipe)
        return preprocess(study, recipe, **{**pre, **options})

    @torch.no_grad()
    def encode_study(self, study, recipe: str | None = None, normalize: bool = True, **options) -> torch.Tensor:
        """Study -> its embedding [E] (on CPU), through hlip_engine.preprocessing."""
        prepared = self.prepare(study, recipe, **options)
        tensor = torch.as_tensor(prepared.tensor)  # [N, 1, D, H, W]
        return self.encode_image(tensor[None], normalize=normalize)[0].cpu()

    # -- training helpers --------------------------------------------------------------------------
    def set_grad_checkpointing(self, enable: bool = True) -> None:
        self.visual.set_grad_checkpointing(enable)
        t = self.text.transformer
        new_api = hasattr(t, "activation_checkpointing_enable")  # transformers >= 5 renamed it
        if enable and new_api:
            t.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
        elif enable and hasattr(t, "gradient_checkpointing_enable"):
            t.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        else:
            off = t.activation_checkpointing_disable if new_api else getattr(t, "gradient_checkpointing_disable", None)
            if off is not None:
                off()

    def lock_text(self, unlocked_layers: int = 0) -> None:
        self.text.lock(unlocked_layers)

    def no_weight_decay(self) -> set[str]:
        """Parameter names to keep out of weight decay: biases, norms, prefix tokens, scales (open_clip's rule)."""
        return {n for n, p in self.named_parameters()
                if p.ndim < 2 or "norm" in n.lower() or n.endswith(("bias", "cls_token", "reg_token"))
                or n.startswith("logit_")}

    # -- saving ------------------------------------------------------------------------------------
    def full_config(self) -> dict:
        cfg = copy.deepcopy(self.config)
        cfg["visual"] = self.visual.cfg.to_dict()
        cfg["text"] = {**cfg.get("text", {}), "model": self.text.name, "context_length": self.text.context_length,
                       "hf_config": self.text.hf_config()}
        cfg["init_logit_bias"] = float(self.logit_bias) if self.logit_bias is not None else None
        return cfg

    def save(self, path: str | os.PathLike, *, text_weights: bool = True) -> Path:
        """Our format: safetensors + the JSON config in its metadata, written atomically.

        ``text_weights=False`` leaves out the text transformer's tensors that are exactly those of the
        pretrained model the config names: a locked tower is not stored at all, a tower with its last layers
        fine-tuned stores those layers only (a small model stays small: the demo model is tens of MB, not
        100). The pretrained model's fingerprint is recorded; :func:`load_model` takes the missing tensors
        from that model's local folder and checks them. If nothing is shared, every tensor is written.
        """
        sd, cfg = self.state_dict(), self.full_config()
        same, pretrained = _shared_with_pretrained(self.text) if not text_weights else (set(), None)
        if same:
            sd = {k: v for k, v in sd.items() if not (k.startswith(_TEXT_PREFIX) and k[len(_TEXT_PREFIX):] in same)}
            cfg["text"]["weights"] = {"from": "pretrained", "sha256": text_fingerprint(pretrained)}
        return save_checkpoint(sd, cfg, path)


_TEXT_PREFIX = "text.transformer."


def _shared_with_pretrained(text: TextTower) -> tuple[set[str], TextTower | None]:
    """Names of the text transformer's tensors equal to the pretrained model's, and that model (when local)."""
    try:
        pretrained = TextTower.build(text.name, text.proj.out_features, text.context_length, pretrained=True)
    except (OSError, ValueError):  # not on this machine: nothing can be referenced, everything is stored
        return set(), None
    base, mine = pretrained.transformer.state_dict(), text.transformer.state_dict()
    if not set(mine) <= set(base):
        return set(), None
    same = {k for k, v in mine.items()
            if base[k].shape == v.shape and torch.equal(base[k].to(v.device, v.dtype), v)}
    return same, pretrained


def text_fingerprint(text: TextTower) -> str:
    """sha256 of the text transformer's weights (float32 bytes, key order): which pretrained tower this is."""
    h = hashlib.sha256()
    for key, value in sorted(text.transformer.state_dict().items()):
        h.update(key.encode())
        h.update(value.detach().float().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()


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
