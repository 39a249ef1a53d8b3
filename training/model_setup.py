"""The engine's model made ready for training: initialisation, locking, the text-feature cache, the step.

Why a text cache: with the text transformer frozen (``--lock-text``), a report's CLS feature never
changes, so it is computed once per distinct report text and reused; only the small projection after
it trains. On CPU this removes most of the text tower's cost from every step. The transformer is kept
in eval mode then (no dropout), which is what makes the feature a constant.
"""
from __future__ import annotations

import math
from collections import OrderedDict

import torch
import torch.nn as nn


def build_model(cfg, log=print) -> nn.Module:
    """create_model / load_model per the config, then 2-D inflation, locking, checkpointing, patch dropout."""
    from hlip_engine.model import create_model, load_model

    if cfg.init:
        model = load_model(cfg.init, text_model=cfg.text_model or None, device="cpu")
    else:
        model = create_model(cfg.arch, text_model=cfg.text_model or None)
    model.train()
    if cfg.init_2d:
        from .inflate import inflate_into

        report = inflate_into(model.visual, cfg.init_2d)
        log(f"init from 2-D ViT {cfg.init_2d}: {len(report['loaded'])} tensors loaded, "
            f"{len(report['skipped'])} skipped ({', '.join(report['skipped'][:6])}{' ...' if len(report['skipped']) > 6 else ''})")
    model.visual.cfg.patch_dropout = float(cfg.patch_dropout)
    if getattr(model, "logit_bias", None) is not None:
        # the 2026 models' second scale belongs to their whole-report head, which this trainer does not
        # train (it matches output [:, 0] with the report); frozen, so DDP sees no unused parameter
        model.logit_bias.requires_grad_(False)
    if cfg.lock_text:
        model.lock_text(unlocked_layers=cfg.lock_text_unlocked_layers)
    if cfg.grad_checkpointing:
        model.set_grad_checkpointing(True)
    return model


def text_is_frozen(model: nn.Module) -> bool:
    return not any(p.requires_grad for p in model.text.transformer.parameters())


class TextFeatureCache:
    """report text -> CLS feature of the frozen text transformer [H], least-recently-used, on CPU."""

    def __init__(self, text_tower: nn.Module, max_items: int = 200_000):
        self.tower, self.max_items = text_tower, max_items
        self.store: OrderedDict[str, torch.Tensor] = OrderedDict()
        self.hits = self.misses = 0

    @torch.no_grad()
    def features(self, texts: list[str], device: torch.device) -> torch.Tensor:
        missing = list(dict.fromkeys(t for t in texts if t not in self.store))
        self.hits += len(texts) - len(missing)
        self.misses += len(missing)
        if missing:
            ids = self.tower.tokenize(missing)["input_ids"].to(device)
            pad = self.tower.transformer.config.pad_token_id
            mask = (ids != (0 if pad is None else pad)).long()  # the tower's own padding rule
            hidden = self.tower.transformer(input_ids=ids, attention_mask=mask).last_hidden_state[:, 0]
            for t, h in zip(missing, hidden.float().cpu()):
                self.store[t] = h
            while len(self.store) > self.max_items:
                self.store.popitem(last=False)
        for t in texts:
            self.store.move_to_end(t)
        return torch.stack([self.store[t] for t in texts]).to(device)  # [T, H]


class ContrastiveStep(nn.Module):
    """One forward of training: studies + reports -> loss. DDP/FSDP wrap this module, so the loss's own
    parameters (SigLIP's bias) are synchronised like the model's."""

    def __init__(self, model: nn.Module, loss: nn.Module, text_cache: TextFeatureCache | None = None):
        super().__init__()
        self.model, self.loss = model, loss
        self.text_cache = text_cache

    def forward(self, images: torch.Tensor, reports: list[str]) -> torch.Tensor:
        model = self.model
        image = model.encode_image(images, normalize=True)  # [B, E]
        if self.text_cache is not None:
            hidden = self.text_cache.features(reports, images.device)  # [B, H]
            text = model.text.proj(hidden.to(model.text.proj.weight.dtype))
            text = text / text.norm(dim=-1, keepdim=True)
        else:
            text = model.encode_text(reports, normalize=True)  # [B, E]
        # SigLIP's bias is the loss's own (a 2026 model's ``logit_bias`` is a second scale, not this)
        return self.loss(image.float(), text.float(), model.logit_scale)

    def train(self, mode: bool = True):
        super().train(mode)
        if self.text_cache is not None:  # a frozen tower stays deterministic
            self.model.text.transformer.eval()
        return self

    @torch.no_grad()
    def clamp_logit_scale(self, max_scale: float) -> None:
        self.model.logit_scale.clamp_(0, math.log(max_scale))
