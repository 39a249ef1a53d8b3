"""The HLIP pair: hierarchical ViT + text tower + learned logit scale; encode and save.

The model alone: building one from a named architecture or loading a checkpoint is factory.py's work
(``create_model`` / ``load_model``), reading and writing files is checkpoint.py's.
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

from .checkpoint import save_checkpoint
from .text import TextTower
from .vit import HLIPVisualEncoder, VisualConfig

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
        cfg["init_logit_bias"] = float(self.logit_bias.detach()) if self.logit_bias is not None else None
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
