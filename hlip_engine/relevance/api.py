"""``relevance(model, study_input, "glioma")``: where in a whole study the model sees a prompt.

One call = one no-grad forward of the study (with hooks for the hierarchy views) + a backward through
the CLS token's own path (see last_block.py). The text side is a constant: the prompt (or several
phrasings, or templates filled with it) is encoded, L2-normalised, averaged and re-normalised exactly
as a zero-shot classifier builds a class embedding, so the map explains the logit zero-shot reports.
"""
from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F

from .guided import guided_map, pool_to_tokens
from .hierarchy import CLSAttentionRecorder
from .last_block import last_block_relevance
from .maps import Relevance, scan_volumes
from .methods import check_method, default_method
from .rollout import rollout_relevance


def prompt_embedding(model, prompt: str | Sequence[str], templates: Sequence[str] | None = None) -> torch.Tensor:
    """Prompt text -> [E] L2-normalised: mean of the normalised embeddings of every phrasing x template."""
    phrases = [prompt] if isinstance(prompt, str) else list(prompt)
    if not phrases or any(not isinstance(p, str) or not p.strip() for p in phrases):
        raise ValueError(f"the prompt must be non-empty text, got {prompt!r}")
    if templates:
        bad = [t for t in templates if "{}" not in t and "{c}" not in t]
        if bad:
            raise ValueError(f"templates need a '{{}}' (or '{{c}}') where the prompt goes: {bad}")
        phrases = [t.replace("{c}", "{}").format(p) for p in phrases for t in templates]
    with torch.no_grad():
        emb = model.encode_text(phrases, normalize=True).float()  # [T, E]
    return F.normalize(emb.mean(dim=0), dim=0)


def _study_tensor(inputs, device) -> tuple[torch.Tensor, object | None]:
    """PreparedStudy or [1, N, 1, D, H, W] -> (tensor on device, prepared or None)."""
    prepared = None
    if hasattr(inputs, "tensor") and hasattr(inputs, "to_scan"):
        prepared, x = inputs, torch.as_tensor(inputs.tensor)[None]
    elif isinstance(inputs, (torch.Tensor, np.ndarray)):
        x = torch.as_tensor(inputs)
    else:
        raise ValueError(f"relevance needs a PreparedStudy or a tensor [1, N, 1, D, H, W], got {type(inputs).__name__}")
    if x.ndim != 6 or x.shape[0] != 1 or x.shape[2] != 1:
        raise ValueError(f"relevance explains one study: expected a tensor [1, N, 1, D, H, W], got {tuple(x.shape)}")
    if not torch.isfinite(x).all():
        raise ValueError("the study tensor holds NaN or infinite values")
    return x.to(device=device, dtype=torch.float32), prepared


MIRRORED = "mirrored-guided-rollout"


def _mirror_axes(prepared, x) -> list[int]:
    axes = list(getattr(prepared, "mirror_axes", None) or [])
    if len(axes) != x.shape[1]:
        raise ValueError(f"relevance method {MIRRORED!r} needs a PreparedStudy (model.prepare(study)): it "
                         "mirrors each scan across the patient's left-right axis, which a bare tensor does not say")
    return axes


def mirror_scans(x: torch.Tensor, axes: Sequence[int]) -> torch.Tensor:
    """[1, N, 1, D, H, W] -> the same with model scan i flipped along its grid axis ``axes[i]`` (0, 1, 2)."""
    return torch.stack([torch.flip(x[:, i], dims=[2 + int(a)]) for i, a in enumerate(axes)], dim=1)


def mirror_maps(maps: torch.Tensor, axes: Sequence[int]) -> torch.Tensor:
    """[N, D, H, W] -> map i flipped along its grid axis ``axes[i]`` (back from the mirror image)."""
    return torch.stack([torch.flip(maps[i], dims=[int(a)]) for i, a in enumerate(axes)])


def relevance(model, inputs, prompt: str | Sequence[str] | None = None, *, templates: Sequence[str] | None = None,
              text_embedding: torch.Tensor | None = None, blocks: Sequence[int] = (), output: int = 0,
              volumes: bool = True, method: str | None = None) -> Relevance:
    """Explain ``prompt`` on one study: by default the model's method (official HLIP: last block, exact).

    model          : HLIPModel (``create_model`` / ``load_model``); run on its device, bf16 forward on CUDA
                     when the model says so (``model.autocast_dtype``), the gradient path in fp32.
    inputs         : PreparedStudy (then ``.volumes`` holds maps on each source scan's voxels) or [1, N, 1, D, H, W].
    prompt         : text (or several phrasings, averaged); ``templates`` like "This MRI study shows: {}.".
    text_embedding : [E] instead of a prompt (e.g. a zero-shot class embedding already built).
    blocks         : blocks whose CLS attention to record as hierarchy views (e.g. ``range(depth)``).
    output         : which embedding to explain (2026 models: 0 = sentence head, as zero-shot; 1 = report head).
    method         : a key of ``METHODS``; None = ``default_method(model)``.
    """
    method = check_method(method) if method is not None else default_method(model)
    visual = model.visual
    device = next(visual.parameters()).device
    x, prepared = _study_tensor(inputs, device)
    if text_embedding is None:
        if prompt is None:
            raise ValueError("relevance needs a prompt (or a text_embedding)")
        text = prompt_embedding(model, prompt, templates)
    else:
        text = F.normalize(torch.as_tensor(text_embedding).float().reshape(-1), dim=0)
    if text.numel() != model.embed_dim:
        raise ValueError(f"text embedding has {text.numel()} values, the model's embedding has {model.embed_dim}")
    text = text.to(device)
    if output == 1 and getattr(model, "logit_bias", None) is not None:
        scale = model.logit_bias.detach().exp()  # the 2026 report head's own scale
    else:
        scale = model.logit_scale.detach().exp()
    amp = getattr(model, "autocast_dtype", None) if device.type == "cuda" else None

    was_training = visual.training
    visual.eval()
    fine = None
    try:
        with CLSAttentionRecorder(visual, blocks) as recorder:
            if method in ("rollout", "guided-rollout", MIRRORED):
                res = rollout_relevance(visual, x, text, scale, output=output, input_gradient=method != "rollout")
                cam = res.cam
                if res.input_grad is not None:
                    fine = guided_map(res.cam, res.input_grad)  # [N, D, H, W] on the model grid
            else:
                res = last_block_relevance(visual, x, text, scale, output=output, autocast_dtype=amp)
                cam = res.image_tokens()
        if method == MIRRORED:  # the same on the study's left-right mirror image, mapped back
            axes = _mirror_axes(prepared, x)
            res_m = rollout_relevance(visual, mirror_scans(x, axes), text, scale, output=output,
                                      input_gradient=True)
            fine_m = mirror_maps(guided_map(res_m.cam, res_m.input_grad), axes)
            fine = torch.sqrt(fine * fine_m)  # geometric mean: what both views agree on
        if fine is not None:
            cam = pool_to_tokens(fine, visual.cfg.patch_size)
    finally:
        visual.train(was_training)

    tokens = cam.float().cpu().numpy()  # [N, d, h, w]
    d = tokens.shape[1]
    big_d = x.shape[3]
    centres = ((np.arange(d) + 0.5) * big_d / d).astype(int)
    text_label = prompt if isinstance(prompt, str) else ("; ".join(prompt) if prompt else "<embedding>")
    rel = Relevance(
        tokens=tokens, prompt=text_label, logit=float(res.logit), patch_size=tuple(visual.cfg.patch_size),
        model_grid=tuple(int(s) for s in x.shape[3:]), last_level=res.level,
        scan_indices=list(prepared.scan_indices) if prepared is not None else None,
        hierarchy=recorder.views(res.layout),
        slab_images=x[0, :, 0, centres].float().cpu().numpy(),  # [N, d, H, W]
        meta={"labels": list(getattr(prepared, "labels", []) or [])} if prepared is not None else {},
        method=method, fine=fine.cpu().numpy() if fine is not None else None,
    )
    if prepared is not None and volumes:
        rel.volumes, rel.volume_scans = scan_volumes(rel.fine if rel.fine is not None else tokens, prepared)
    return rel
