"""AdamW with CLIP's settings and a cosine learning-rate schedule with linear warm-up.

Weight decay pulls weights toward zero; that is wrong for gains, biases, the logit scale, the CLS token
and position tables (they have a meaningful non-zero value), so those go in a group without decay.
"""
from __future__ import annotations

import math

import torch
import torch.nn as nn


def param_groups(modules: list[nn.Module], weight_decay: float, *, text_lr_scale: float = 1.0) -> list[dict]:
    """Trainable parameters split into decay / no-decay groups (names are the modules' own).

    ``text_lr_scale`` != 1 puts the pretrained text transformer's parameters in groups of their own whose
    learning rate is the schedule's times that scale (an unlocked BERT wants a far smaller step than a
    fresh image tower); its projection keeps the full rate.
    """
    decay, no_decay, seen = [], [], set()
    text_decay, text_no_decay = [], []
    for module in modules:
        skip = set(module.no_weight_decay()) if hasattr(module, "no_weight_decay") else set()
        for name, p in module.named_parameters():
            if not p.requires_grad or id(p) in seen:
                continue
            seen.add(id(p))
            leaf = name.rsplit(".", 1)[-1]
            scaled = text_lr_scale != 1.0 and "text.transformer." in name
            if (p.ndim < 2 or name in skip or leaf in skip or "logit_scale" in name or "logit_bias" in name
                    or "norm" in name.lower() or leaf == "bias" or "posemb" in name or "pos_embed" in name
                    or "cls_token" in name):
                (text_no_decay if scaled else no_decay).append(p)
            else:
                (text_decay if scaled else decay).append(p)
    groups = [{"params": decay, "weight_decay": weight_decay},
              {"params": no_decay, "weight_decay": 0.0}]
    if text_decay or text_no_decay:
        groups += [{"params": text_decay, "weight_decay": weight_decay, "lr_scale": text_lr_scale},
                   {"params": text_no_decay, "weight_decay": 0.0, "lr_scale": text_lr_scale}]
    return groups


def create_optimizer(modules: list[nn.Module], *, lr: float, weight_decay: float,
                     betas: tuple[float, float] = (0.9, 0.98), eps: float = 1e-6,
                     text_lr_scale: float = 1.0) -> torch.optim.AdamW:
    groups = [g for g in param_groups(modules, weight_decay, text_lr_scale=text_lr_scale) if g["params"]]
    if not groups:
        raise ValueError("nothing to train: every parameter is frozen")
    fused = all(p.is_cuda for g in groups for p in g["params"])
    return torch.optim.AdamW(groups, lr=lr, betas=betas, eps=eps, fused=fused or None)


class CosineSchedule:
    """lr(step): linear warm-up from 0 to ``lr`` over ``warmup`` steps, then cosine down to ``lr * min_ratio``.

    Pure function of the step, so resuming only needs the step (kept in ``state_dict`` for clarity).
    """

    def __init__(self, optimizer: torch.optim.Optimizer, *, lr: float, warmup: int, total: int,
                 min_ratio: float = 0.0):
        self.optimizer, self.lr, self.warmup, self.total, self.min_ratio = optimizer, lr, warmup, total, min_ratio
        self.step_count = 0

    def lr_at(self, step: int) -> float:
        if step < self.warmup:
            return self.lr * (step + 1) / self.warmup
        span = max(1, self.total - self.warmup)
        progress = min(1.0, (step - self.warmup) / span)
        return self.lr * (self.min_ratio + (1 - self.min_ratio) * 0.5 * (1 + math.cos(math.pi * progress)))

    def apply(self, step: int) -> float:
        """Set the learning rate for optimiser step ``step`` (0-based) and return it."""
        self.step_count = step
        lr = self.lr_at(step)
        for group in self.optimizer.param_groups:
            group["lr"] = lr * group.get("lr_scale", 1.0)
        return lr

    def state_dict(self) -> dict:
        return {"step": self.step_count, "lr": self.lr, "warmup": self.warmup, "total": self.total,
                "min_ratio": self.min_ratio}

    def load_state_dict(self, state: dict) -> None:
        self.step_count = int(state["step"])
