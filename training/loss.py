"""Contrastive losses for study-report pre-training; the loss owns the all-gather across ranks.

Why the loss gathers (as open_clip does): a contrastive loss wants every study of the *global* batch as
a negative for every report. Each rank computes its own features, the loss gathers them, and the
gradient either flows back only through the local slice (``gather_with_grad=False``: cheap, and exact
anyway because every rank computes the same global loss) or through the gathered copies too
(``gather_with_grad=True``: needed with ``local_loss``, where each rank only scores its own rows).

Shapes: image/text features [B, E] on each rank, L2-normalised; ``logit_scale`` is the *log* scale
(a scalar tensor), so the temperature is ``exp(logit_scale)``, clamped to 100 by the trainer.
"""
from __future__ import annotations

import torch
import torch.distributed as dist
import torch.nn as nn
import torch.nn.functional as F


def _world() -> tuple[int, int]:
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def gather_features(features: torch.Tensor, *, with_grad: bool) -> torch.Tensor:
    """[B, E] on each rank -> [world * B, E], rank-major. Without grad the local slice keeps its graph."""
    rank, world = _world()
    if world == 1:
        return features
    if with_grad:
        import torch.distributed.nn.functional as dist_fn  # autograd-aware collectives

        return torch.cat(dist_fn.all_gather(features), dim=0)
    parts = [torch.empty_like(features) for _ in range(world)]
    dist.all_gather(parts, features.detach().contiguous())
    parts[rank] = features  # gradient through our own rows only
    return torch.cat(parts, dim=0)


class ClipLoss(nn.Module):
    """Symmetric InfoNCE (CLIP): each study must pick its own report among the batch's, and vice versa.

    local_loss: score only this rank's rows against all gathered columns (B x world*B logits instead of
    world*B squared); needs ``gather_with_grad`` to be exact.
    text_target_tau: 0 (CLIP) or the temperature of soft targets built from the reports themselves: the
    target of study i over reports j is softmax_j(cos(report_i, report_j) / tau) (detached text features).
    Uncurated reports repeat ("No acute intracranial abnormality."), and plain CLIP pushes two studies
    with the same report apart as negatives; soft targets let same-meaning reports share the target
    instead (the false-negative problem MedCLIP's semantic matching loss addresses). As tau -> 0 the
    target is uniform over identical reports and one-hot otherwise.
    """

    def __init__(self, *, local_loss: bool = False, gather_with_grad: bool = False, text_target_tau: float = 0.0):
        super().__init__()
        if text_target_tau < 0:
            raise ValueError(f"text_target_tau must be >= 0, got {text_target_tau}")
        self.local_loss = local_loss
        self.gather_with_grad = gather_with_grad
        self.text_target_tau = float(text_target_tau)

    def forward(self, image: torch.Tensor, text: torch.Tensor, logit_scale: torch.Tensor,
                logit_bias: torch.Tensor | None = None) -> torch.Tensor:
        rank, world = _world()
        scale = logit_scale.exp()
        b = image.shape[0]
        if world > 1:
            all_image = gather_features(image, with_grad=self.gather_with_grad)  # [W*B, E]
            all_text = gather_features(text, with_grad=self.gather_with_grad)
        else:
            all_image, all_text = image, text
        if self.local_loss and world > 1:
            logits_per_image = scale * image @ all_text.T  # [B, W*B]
            logits_per_text = scale * text @ all_image.T
            labels = torch.arange(b, device=image.device) + rank * b
        else:
            logits_per_image = scale * all_image @ all_text.T  # [W*B, W*B]
            logits_per_text = logits_per_image.T
            labels = torch.arange(all_image.shape[0], device=image.device)
        if self.text_target_tau > 0:
            rows = text if (self.local_loss and world > 1) else all_text
            with torch.no_grad():
                sims = rows.detach().float() @ all_text.detach().float().T  # same shape as the logits
                labels = torch.softmax(sims / self.text_target_tau, dim=1)  # soft targets (rows sum to 1)
        return (F.cross_entropy(logits_per_image.float(), labels)
                + F.cross_entropy(logits_per_text.float(), labels)) / 2


class SigLipLoss(nn.Module):
    """Sigmoid loss (SigLIP): every study-report pair is an independent yes/no, so no softmax over the batch.

    Each rank scores its own studies against the reports of every rank (gathered; with grad when
    ``gather_with_grad``), which equals SigLIP's neighbour exchange summed over all blocks.
    The bias (init -10) lives here when the model has none, and is trained with the model.
    """

    def __init__(self, *, gather_with_grad: bool = True, bias_init: float = -10.0):
        super().__init__()
        self.gather_with_grad = gather_with_grad
        self.logit_bias = nn.Parameter(torch.tensor(float(bias_init)))

    def forward(self, image: torch.Tensor, text: torch.Tensor, logit_scale: torch.Tensor,
                logit_bias: torch.Tensor | None = None) -> torch.Tensor:
        rank, world = _world()
        bias = self.logit_bias if logit_bias is None else logit_bias
        all_text = gather_features(text, with_grad=self.gather_with_grad) if world > 1 else text
        logits = logit_scale.exp() * image @ all_text.T + bias  # [B, W*B]
        b = image.shape[0]
        targets = -torch.ones_like(logits)
        targets[torch.arange(b), torch.arange(b) + rank * b] = 1.0
        return -F.logsigmoid(targets * logits.float()).sum() / b


def create_loss(name: str, *, local_loss: bool = False, gather_with_grad: bool = False,
                text_target_tau: float = 0.0) -> nn.Module:
    if name == "clip":
        return ClipLoss(local_loss=local_loss, gather_with_grad=gather_with_grad, text_target_tau=text_target_tau)
    if name == "siglip":
        if text_target_tau:
            raise ValueError("--text-target-tau applies to the CLIP loss only")
        return SigLipLoss(gather_with_grad=True)
    raise ValueError(f"unknown loss {name!r}: choose 'clip' or 'siglip'")
