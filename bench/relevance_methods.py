"""Is it the model or the method? Relevance methods side by side on phantom lesions, with faithfulness.

For every focal lesion of a phantom library (tumour, infarct, haemorrhage: the generator records the centre
and size), each method gives a token map; its peak on the most relevant scan (as ``bench/relevance_pointing.py``
and the plugin take it) is scored:

- hit   : the peak lies within the lesion's radius + 10 mm of its centre;
- side  : the peak is nearer the lesion than the lesion's mirror image across the midline (chance 0.5);
- dist  : peak-to-centre distance (median, mm).

Methods: ``last-block`` (the official HLIP grad x attention), ``rollout`` (Chefer et al. 2021, all blocks),
``guided-rollout`` (the engine's: rollout x the smoothed voxel input gradient, as Guided Grad-CAM),
``input-grad`` (|d logit / d input * input| summed per token patch) and ``occlusion`` (the logit drop when
one token's patch is blanked, token by token; slow, ``--occlusion``); bench-only variants at voxel resolution
``input-grad-voxels`` (the smoothed input gradient alone) and ``guided-last-block`` (last-block as the coarse
map), with ``--sigma``. Maps finer than tokens are summed per token for the deletion test.

Faithfulness (deletion): blank the top 10 % of tokens by a method's map and record the logit drop, against
blanking 10 % at random (mean of 3 draws); a faithful method removes more logit than chance (ratio > 1).
"Blank" = the scan's background value (its minimum in the model input).

Diagnostics of the known causes (the model, not the method):
- artifact tokens (Darcet et al. 2024): max / median norm of the last block's input tokens, and the share
  of the last block's CLS attention that goes to the 2 % highest-norm tokens;
- global shortcuts: the logit drop when every token within the lesion's reach is blanked, against blanking
  as many tokens around the lesion's mirror point (a model that reads the lesion loses more on the lesion).

    .venv/bin/python bench/relevance_methods.py --seed 5                  # validation library, 40 studies
    .venv/bin/python bench/relevance_methods.py --model RUN/model.safetensors --seed 6 --studies 100 --json out.json
"""
from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import numpy as np
from _common import library_parser, peak_of

FOCAL = ("tumour", "infarct", "haemorrhage")


def blank(x, token_mask, patch):
    """x [1, N, 1, D, H, W]; token_mask [K, N, d, h, w] bool -> K copies with those patches set to background."""
    import torch

    pd, ph, pw = patch
    m = torch.as_tensor(token_mask)
    m = m.repeat_interleave(pd, 2).repeat_interleave(ph, 3).repeat_interleave(pw, 4)[:, :, None]  # [K,N,1,D,H,W]
    background = x.amin(dim=(3, 4, 5), keepdim=True)  # per scan
    return torch.where(m, background, x.expand(m.shape[0], *x.shape[1:]))


def logits(model, xs, text, scale, batch: int = 16):
    import torch
    import torch.nn.functional as F

    out = []
    with torch.no_grad():
        for i in range(0, xs.shape[0], batch):
            emb = model.visual(xs[i:i + batch])[:, 0]
            out.append(scale * (F.normalize(emb.float(), dim=-1) @ text))
    return torch.cat(out)


def input_gradient(model, x, text, scale, patch):
    import torch
    import torch.nn.functional as F

    xg = x.clone().requires_grad_(True)
    emb = model.visual(xg)[:, 0]
    logit = scale * (F.normalize(emb.float(), dim=-1) @ text)[0]
    (g,) = torch.autograd.grad(logit, xg)
    sal = (g * xg).abs()[0, :, 0].detach()  # [N, D, H, W]
    n, dd, hh, ww = sal.shape
    pd, ph, pw = patch
    return sal.reshape(n, dd // pd, pd, hh // ph, ph, ww // pw, pw).sum(dim=(2, 4, 6)).numpy()


def input_gradient_voxels(model, x, text, scale):
    """|d logit / d input * input| at voxel resolution: [N, D, H, W]."""
    import torch
    import torch.nn.functional as F

    xg = x.clone().requires_grad_(True)
    emb = model.visual(xg)[:, 0]
    logit = scale * (F.normalize(emb.float(), dim=-1) @ text)[0]
    (g,) = torch.autograd.grad(logit, xg)
    return (g * xg).abs()[0, :, 0].detach().numpy()


def guided(coarse_tokens, fine, sigma_vox):
    """The engine's guided map (hlip_engine.relevance.guided) over any coarse token map, with this sigma."""
    import torch

    from hlip_engine.relevance.guided import guided_map

    return guided_map(torch.as_tensor(coarse_tokens), torch.as_tensor(fine), sigma_vox).numpy()


def pool_tokens(fine, patch):
    n, dd, hh, ww = fine.shape
    pd, ph, pw = patch
    return fine.reshape(n, dd // pd, pd, hh // ph, ph, ww // pw, pw).sum(axis=(2, 4, 6))


def occlusion(model, x, text, scale, grid, patch, base):
    n = x.shape[1]
    total = n * int(np.prod(grid))
    drops = np.zeros(total, dtype=np.float32)
    chunk = 48
    for start in range(0, total, chunk):
        idx = np.arange(start, min(total, start + chunk))
        mask = np.zeros((len(idx), total), dtype=bool)
        mask[np.arange(len(idx)), idx] = True
        drops[idx] = (base - logits(model, blank(x, mask.reshape(len(idx), n, *grid), patch), text, scale)).numpy()
    return np.clip(drops.reshape(n, *grid), 0, None)


def main(argv=None) -> int:

    ap = library_parser(__doc__.split("\n\n")[0])
    ap.add_argument("--methods", nargs="+", default=["last-block", "rollout", "input-grad"])
    ap.add_argument("--occlusion", action="store_true", help="also token-by-token occlusion (slow)")
    ap.add_argument("--deletion", type=float, default=0.10, help="share of tokens blanked in the deletion test")
    ap.add_argument("--json", type=Path, help="write every number here")
    ap.add_argument("--argmax", action="store_true",
                    help="score the maximum voxel of the most relevant scan, not the hot spot's centre of mass")
    ap.add_argument("--sigma", type=float, nargs=3, default=(0.5, 2.0, 2.0),
                    help="Gaussian sigma (model voxels: slice, row, column) of the gradient map of the bench's own "
                         "variants guided-last-block and input-grad-voxels (guided-rollout: the engine's)")
    args = ap.parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")

    import torch

    from hlip_engine.demo.quality import FINDING_PROMPTS, TEMPLATES
    from hlip_engine.demo.showcase import ensure_library
    from hlip_engine.io import load_study
    from hlip_engine.model import load_model
    from hlip_engine.relevance import prompt_embedding, relevance
    from hlip_engine.relevance.last_block import _run_to_last_block, cls_attention_row
    from hlip_engine.relevance.maps import scan_volumes, token_centres
    from training.lesions import lesion_radius_mm

    torch.manual_seed(0)
    rng = np.random.default_rng(0)
    methods = list(args.methods) + (["occlusion"] if args.occlusion else [])
    records = ensure_library(args.out / f"library-seed{args.seed}", args.studies, seed=args.seed)
    model = load_model(args.model, device="cpu").eval()
    visual = model.visual
    scale = float(model.logit_scale.exp())
    patch = tuple(visual.cfg.patch_size)
    rows = []
    for r in records:
        details = r.get("details") or {}
        if "centre_lps" not in details or r["findings"][0] not in FOCAL:
            continue
        finding = r["findings"][0]
        study = load_study(r["path"])
        prepared = model.prepare(study)
        x = prepared.tensor[None].float()
        text = prompt_embedding(model, FINDING_PROMPTS[finding], TEMPLATES).float()
        grid = tuple(s // p for s, p in zip(x.shape[3:], patch))
        centres = token_centres(prepared, study, grid, patch)  # [N, d, h, w, 3]
        centre, mirror = np.array(details["centre_lps"]), np.array(details["mirror_lps"])
        reach = lesion_radius_mm(details) + 10.0
        base = float(logits(model, x, text, scale)[0])
        row = {"finding": finding, "subtype": details.get("subtype", ""), "modality": r["modality"],
               "reach_mm": reach, "methods": {}}
        # --- the methods
        maps = {}
        for m in methods:
            if m in ("last-block", "rollout", "guided-rollout", "mirrored-guided-rollout"):
                rel = relevance(model, prepared, FINDING_PROMPTS[finding], templates=TEMPLATES, method=m,
                                volumes=False)
                maps[m] = rel.fine if rel.fine is not None else rel.tokens
            elif m == "input-grad":
                maps[m] = input_gradient(model, x, text, scale, patch)
            elif m in ("guided-last-block", "input-grad-voxels"):
                if "_fine" not in maps:
                    maps["_fine"] = input_gradient_voxels(model, x, text, scale)
                if m == "input-grad-voxels":
                    maps[m] = guided(np.ones((x.shape[1], 1, 1, 1), np.float32), maps["_fine"], tuple(args.sigma))
                else:
                    coarse = maps.get("last-block")
                    if coarse is None:
                        coarse = relevance(model, prepared, FINDING_PROMPTS[finding], templates=TEMPLATES,
                                           method="last-block", volumes=False).tokens
                    maps[m] = guided(coarse, maps["_fine"], tuple(args.sigma))
            elif m == "occlusion":
                maps[m] = occlusion(model, x, text, scale, grid, patch, base)
        n_del = max(1, int(round(args.deletion * centres[..., 0].size)))
        rand_masks = np.zeros((3, centres[..., 0].size), dtype=bool)
        for j in range(3):
            rand_masks[j, rng.choice(rand_masks.shape[1], n_del, replace=False)] = True
        rand_drop = float(np.mean(base - logits(model, blank(x, rand_masks.reshape(3, *centres.shape[:4]), patch),
                                                 text, scale).numpy()))
        maps.pop("_fine", None)
        for m, tok in maps.items():
            p = peak_of(tok, prepared, study, scan_volumes, centre_of_mass=not args.argmax)
            if tok.shape[1:] != centres.shape[1:4]:
                tok = pool_tokens(tok, patch)  # the deletion test blanks whole tokens
            dist = float(np.linalg.norm(p - centre))
            top = np.zeros(tok.size, dtype=bool)
            top[np.argsort(tok.reshape(-1))[::-1][:n_del]] = True
            drop = float(base - logits(model, blank(x, top.reshape(1, *tok.shape), patch), text, scale)[0])
            row["methods"][m] = {"hit": dist <= reach, "side": dist < float(np.linalg.norm(p - mirror)),
                                 "dist": dist, "deletion_drop": drop, "random_drop": rand_drop}
        # --- diagnostics: artifact tokens, and lesion vs mirror removal
        with torch.no_grad():
            _, last_in, layout = _run_to_last_block(visual, x, full=False)
            blk = visual.blocks[-1]
            att = cls_attention_row(blk.attn, blk.norm1(last_in.float()), 0).mean(dim=1)  # [U, T]
            pfx = layout.prefix
            norms = last_in[:, pfx:].float().norm(dim=-1).reshape(-1).numpy()
            a = att[:, pfx:].reshape(-1).numpy()
        k2 = max(1, int(0.02 * norms.size))
        high = np.argsort(norms)[::-1][:k2]
        d_lesion = np.linalg.norm(centres - centre, axis=-1)
        d_mirror = np.linalg.norm(centres - mirror, axis=-1)
        lesion_mask = d_lesion <= reach
        n_les = int(lesion_mask.sum())
        mirror_mask = np.zeros(d_mirror.size, dtype=bool)
        mirror_mask[np.argsort(d_mirror.reshape(-1))[:n_les]] = True
        drops = base - logits(model, blank(x, np.stack([lesion_mask, mirror_mask.reshape(lesion_mask.shape)]),
                                           patch), text, scale).numpy()
        row.update({"logit": base, "norm_ratio": float(norms.max() / np.median(norms)),
                    "attention_on_high_norm": float(a[high].sum() / max(a.sum(), 1e-12)),
                    "attention_on_lesion": float(a[lesion_mask.reshape(-1)].sum() / max(a.sum(), 1e-12)),
                    "lesion_tokens": n_les / lesion_mask.size,
                    "lesion_removal_drop": float(drops[0]), "mirror_removal_drop": float(drops[1])})
        rows.append(row)
        print(f"  {r['modality']} {finding:11s} {row['subtype'][:5]:5s} " + "  ".join(
            f"{m}: {v['dist']:5.0f}mm{'*' if v['hit'] else ' '}" for m, v in row["methods"].items()), flush=True)
    if not rows:
        print("no focal lesions in this library")
        return 1
    summary = {"seed": args.seed, "studies": args.studies, "lesions": len(rows), "model": str(args.model),
               "methods": {}, "by_finding": {}}
    print(f"\n{len(rows)} focal lesions, library seed {args.seed} ({args.studies} studies), model {args.model}")
    print(f"{'method':12s} {'hit':>5s} {'side':>5s} {'median mm':>9s} {'deletion drop':>13s} {'random drop':>11s}")
    for m in methods:
        v = [x["methods"][m] for x in rows]
        s = {"hit": float(np.mean([y["hit"] for y in v])), "side": float(np.mean([y["side"] for y in v])),
             "median_dist_mm": float(np.median([y["dist"] for y in v])),
             "deletion_drop": float(np.mean([y["deletion_drop"] for y in v])),
             "random_drop": float(np.mean([y["random_drop"] for y in v]))}
        summary["methods"][m] = s
        print(f"{m:12s} {s['hit']:5.2f} {s['side']:5.2f} {s['median_dist_mm']:9.0f} {s['deletion_drop']:13.3f} "
              f"{s['random_drop']:11.3f}")
        for f in FOCAL:
            sel = [x["methods"][m] for x in rows if x["finding"] == f]
            if sel:
                summary["by_finding"].setdefault(f, {})[m] = {
                    "n": len(sel), "hit": float(np.mean([y["hit"] for y in sel])),
                    "side": float(np.mean([y["side"] for y in sel])),
                    "median_dist_mm": float(np.median([y["dist"] for y in sel]))}
    diag = {k: float(np.mean([x[k] for x in rows])) for k in
            ("norm_ratio", "attention_on_high_norm", "attention_on_lesion", "lesion_tokens",
             "lesion_removal_drop", "mirror_removal_drop")}
    summary["diagnostics"] = diag
    print(f"artifact tokens: last-block input norm max/median {diag['norm_ratio']:.2f}; CLS attention on the 2% "
          f"highest-norm tokens {diag['attention_on_high_norm']:.3f} (uniform: 0.02)")
    print(f"lesion: {diag['lesion_tokens']:.3f} of tokens lie within reach and get {diag['attention_on_lesion']:.3f} "
          f"of the last block's CLS attention")
    print(f"shortcut: blanking the lesion's tokens drops the logit by {diag['lesion_removal_drop']:.3f}, "
          f"as many mirror tokens by {diag['mirror_removal_drop']:.3f}")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({"summary": summary, "lesions": rows}, indent=1, default=float))
    return 0


if __name__ == "__main__":
    sys.exit(main())
