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
    init_2d = cfg.init_2d
    if init_2d and init_2d.lower() == "mae" and cfg.init:
        init_2d = ""  # --init already carries trained image weights; the recipe's MAE start is for fresh runs
    if init_2d and init_2d.lower() == "none":
        log("image tower: random initialisation (--init-2d none)")
        init_2d = ""
    if init_2d:
        from .inflate import inflate_into, resolve_init_2d

        init_2d = resolve_init_2d(init_2d, width=model.visual.cfg.width)
        report = inflate_into(model.visual, init_2d)
        log(f"init from 2-D ViT {init_2d}: {len(report['loaded'])} tensors loaded, "
            f"{len(report['skipped'])} skipped ({', '.join(report['skipped'][:6])}{' ...' if len(report['skipped']) > 6 else ''})")
    model.visual.cfg.patch_dropout = float(cfg.patch_dropout)
    if getattr(model, "logit_bias", None) is not None and resolve_objective(cfg, model) == "single":
        # the 2026 models' second scale belongs to their whole-report head, which the single objective does
        # not train (it matches output [:, 0] with the report); frozen, so DDP sees no unused parameter
        model.logit_bias.requires_grad_(False)
    if cfg.lock_text:
        # open_clip's --lock-text: LayerNorms stay trainable (and, the tower being in train mode, dropout
        # stays active) unless --lock-text-norms asks for the stiffer lock
        model.text.lock(cfg.lock_text_unlocked_layers, freeze_layer_norm=bool(getattr(cfg, "lock_text_norms", False)))
    if cfg.grad_checkpointing:
        model.set_grad_checkpointing(True)
    return model


def resolve_objective(cfg, model: nn.Module) -> str:
    """'single' or 'two-head' ('auto': two-head for models with two outputs and a second scale)."""
    objective = getattr(cfg, "objective", "single")
    two_outputs = getattr(model.visual, "num_outputs", 1) >= 2 and getattr(model, "logit_bias", None) is not None
    if objective == "auto":
        return "two-head" if two_outputs else "single"
    if objective == "two-head" and not two_outputs:
        raise ValueError("--objective two-head needs a model with two outputs and a logit_bias (the 2026 "
                         "dualdinotxt architectures)")
    return objective


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
    parameters (SigLIP's bias) are synchronised like the model's.

    ``objective='two-head'`` (HLIP 2026): ``reports`` are (whole report, one sentence) pairs; output 0 of
    the image tower is matched with the sentences at scale exp(logit_scale), output 1 with the whole
    reports at scale exp(logit_bias) (the 2026 models' second scale), and the loss is the mean of the two.

    Gradient accumulation (open_clip's ``accum_freq``) calls it twice per micro-batch: ``mode='features'``
    (under no_grad) returns the features to cache, then the default mode recomputes this micro-batch's
    features with grad and puts them in ``slot`` of the cached list, so the loss (and its negatives) spans
    the whole accumulated batch.
    """

    def __init__(self, model: nn.Module, loss: nn.Module, text_cache: TextFeatureCache | None = None,
                 objective: str = "single", lesion_guidance: float = 0.0,
                 lesion_guidance_levels: tuple[str, ...] = ("study",)):
        super().__init__()
        self.model, self.loss = model, loss
        self.text_cache = text_cache
        self.lesion_guidance = float(lesion_guidance)  # weight of training.lesions.guidance_loss (0 = off)
        self.lesion_guidance_levels = tuple(lesion_guidance_levels)
        self.last_guidance = 0.0  # the term's value at the last step (for the progress bar and the log)
        if objective not in ("single", "two-head"):
            raise ValueError(f"objective must be 'single' or 'two-head', got {objective!r}")
        self.objective = objective

    def _text(self, texts: list[str], device) -> torch.Tensor:
        model = self.model
        if self.text_cache is not None:
            hidden = self.text_cache.features(texts, device)  # [B, H]
            text = model.text.proj(hidden.to(model.text.proj.weight.dtype))
            return text / text.norm(dim=-1, keepdim=True)
        return model.encode_text(texts, normalize=True)  # [B, E]

    def features(self, images: torch.Tensor, reports: list) -> dict[str, torch.Tensor]:
        model = self.model
        if self.objective == "two-head":
            image = model.encode_image(images, normalize=True, all_outputs=True)  # [B, 2, E]
            whole = [r[0] if isinstance(r, (tuple, list)) else r for r in reports]
            sentence = [r[1] if isinstance(r, (tuple, list)) else r for r in reports]
            return {"image0": image[:, 0].float(), "image1": image[:, 1].float(),
                    "sentence": self._text(sentence, images.device).float(),
                    "report": self._text(whole, images.device).float()}
        whole = [r[0] if isinstance(r, (tuple, list)) else r for r in reports]
        return {"image": model.encode_image(images, normalize=True).float(),
                "text": self._text(whole, images.device).float()}

    def loss_from(self, f: dict[str, torch.Tensor], scales_grad: bool = True) -> torch.Tensor:
        """The loss of (possibly accumulated) features; ``scales_grad=False`` detaches the learnt scales,
        so that over k accumulated backward passes they get their gradient once, not k times."""
        model = self.model
        scale = model.logit_scale if scales_grad else model.logit_scale.detach()
        if self.objective == "two-head":
            bias = model.logit_bias if scales_grad else model.logit_bias.detach()
            return (self.loss(f["image0"], f["sentence"], scale) + self.loss(f["image1"], f["report"], bias)) / 2
        # SigLIP's bias is the loss's own (a 2026 model's ``logit_bias`` is a second scale, not this)
        return self.loss(f["image"], f["text"], scale)

    def forward(self, images: torch.Tensor, reports: list, mode: str = "loss",
                cached: list[dict] | None = None, slot: int = 0, scales_grad: bool = True,
                lesion_masks: torch.Tensor | None = None):
        if self.lesion_guidance > 0 and lesion_masks is not None and mode == "loss" and not cached:
            return self._guided(images, reports, lesion_masks, scales_grad)
        feats = self.features(images, reports)
        if mode == "features":
            return {k: v.detach() for k, v in feats.items()}
        if cached:
            feats = {k: torch.cat([c[k] for c in cached[:slot]] + [v] + [c[k] for c in cached[slot + 1:]])
                     for k, v in feats.items()}
        return self.loss_from(feats, scales_grad=scales_grad)

    def _guided(self, images, reports, lesion_masks, scales_grad):
        """The contrastive loss + ``lesion_guidance`` x the lesion-guidance term (training/lesions.py)."""
        from .lesions import StudyAttentionTap, guidance_loss, kept_masks

        with StudyAttentionTap(self.model.visual, self.lesion_guidance_levels) as tap:
            feats = self.features(images, reports)
        masks = lesion_masks.to(images.device)
        has = masks.flatten(1).any(dim=1)
        guidance = guidance_loss(tap.image_attention(), kept_masks(masks, self.model.visual), has)
        self.last_guidance = float(guidance.detach())
        return self.loss_from(feats, scales_grad=scales_grad) + self.lesion_guidance * guidance

    def train(self, mode: bool = True):
        super().train(mode)
        if self.text_cache is not None:  # a frozen tower stays deterministic
            self.model.text.transformer.eval()
        return self

    @torch.no_grad()
    def clamp_logit_scale(self, max_scale: float) -> None:
        self.model.logit_scale.clamp_(0, math.log(max_scale))
        if self.objective == "two-head":  # the second head's scale, same bounds
            self.model.logit_bias.clamp_(0, math.log(max_scale))


def accumulated_backward(wrapped, micro_batches: list, *, autocast, scaler, no_sync=None) -> float:
    """open_clip's ``accum_freq``: the gradient of ONE contrastive loss over all micro-batches together.

    1. features of every micro-batch without grad (cached; the RNG state is kept so dropout draws the same
       masks again in step 2);
    2. per micro-batch j: recompute its features with grad, splice them into the cache at j, compute the
       loss over the whole accumulated batch and backward. Summed over j this is the full-batch gradient
       (the learnt scales take theirs in the last pass only: the one DDP synchronises). Returns the loss value.
    ``no_sync``: a context factory for the passes whose gradients need not be all-reduced yet (DDP).
    """
    import contextlib

    cached, states = [], []
    with torch.no_grad():
        for images, reports in micro_batches:
            states.append(_rng_state(images.device))
            with autocast():
                cached.append(wrapped(images, reports, mode="features"))
    loss_value = 0.0
    for j, (images, reports) in enumerate(micro_batches):
        last = j == len(micro_batches) - 1
        ctx = no_sync() if (no_sync is not None and not last) else contextlib.nullcontext()
        _set_rng_state(states[j], images.device)
        with ctx:
            with autocast():
                loss = wrapped(images, reports, cached=cached, slot=j, scales_grad=last)
            scaler.scale(loss).backward()
        loss_value = float(loss.detach())
    return loss_value


def _rng_state(device: torch.device):
    return (torch.get_rng_state(), torch.cuda.get_rng_state(device) if device.type == "cuda" else None)


def _set_rng_state(state, device: torch.device) -> None:
    torch.set_rng_state(state[0])
    if state[1] is not None:
        torch.cuda.set_rng_state(state[1], device)
