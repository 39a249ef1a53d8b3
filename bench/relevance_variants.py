"""Variants of the guided relevance map, scored as bench/relevance_methods.py scores methods (hit, side, median
distance of the most relevant scan's peak to each focal lesion of a phantom library). The variants
docs/demo-model.md lists as measured and not taken:

- ``--family fine``: the guided map's fine factor, on the same rollout token map: |grad x input| (shipped),
  positive grad x input, |grad|, |grad x (input - scan mean)| and its positive part, positive grad x (input -
  scan minimum);
- ``--family mirror``: how the study's and its left-right mirror image's guided maps combine: mean, minimum,
  geometric mean (shipped as ``mirrored-guided-rollout``);
- ``--family shift``: the mirrored map averaged over copies of the grid shifted by half a token and back.

    .venv/bin/python bench/relevance_variants.py --family fine --seed 6 --studies 100
"""
from __future__ import annotations

import argparse
import dataclasses
import os
import sys
from pathlib import Path

import numpy as np
from _common import REPO, peak_of

FOCAL = ("tumour", "infarct", "haemorrhage")


def fine_factors(model, prep, prompt, templates):
    """{name: guided map} for each fine factor, on the rollout token map of ``prep``."""
    import torch
    import torch.nn.functional as F

    from hlip_engine.relevance import prompt_embedding, relevance
    from hlip_engine.relevance.guided import guided_map

    cam = torch.as_tensor(relevance(model, prep, prompt, templates=templates, method="rollout", volumes=False).tokens)
    x = prep.tensor[None].float().clone().requires_grad_(True)
    text = prompt_embedding(model, prompt, templates).float()
    scale = model.logit_scale.detach().exp()
    logit = scale * (F.normalize(model.visual(x)[:, 0].float(), dim=-1) @ text)[0]
    (g,) = torch.autograd.grad(logit, x)
    g, xx = g[0, :, 0], x.detach()[0, :, 0]
    mean, low = xx.mean(dim=(1, 2, 3), keepdim=True), xx.amin(dim=(1, 2, 3), keepdim=True)
    factors = {"|grad x input|": (g * xx).abs(), "positive grad x input": (g * xx).clamp(min=0),
               "|grad|": g.abs(), "|grad x (input - mean)|": (g * (xx - mean)).abs(),
               "positive grad x (input - mean)": (g * (xx - mean)).clamp(min=0),
               "positive grad x (input - min)": (g * (xx - low)).clamp(min=0)}
    return {k: guided_map(cam, f).numpy() for k, f in factors.items()}


def mirror_combinations(model, prep, prompt, templates):
    import torch

    from hlip_engine.relevance import relevance

    a = relevance(model, prep, prompt, templates=templates, method="guided-rollout", volumes=False).fine
    flipped = torch.stack([torch.flip(t, dims=[1 + ax]) for t, ax in zip(prep.tensor, prep.mirror_axes)])
    b = relevance(model, dataclasses.replace(prep, tensor=flipped), prompt, templates=templates,
                  method="guided-rollout", volumes=False).fine
    b = np.stack([np.flip(m, axis=ax) for m, ax in zip(b, prep.mirror_axes)])
    return {"guided (one view)": a, "mean": (a + b) / 2, "minimum": np.minimum(a, b), "geometric mean": np.sqrt(a * b)}


def shifted(model, prep, prompt, templates):
    import torch

    from hlip_engine.relevance import relevance

    pd, ph, pw = model.visual.cfg.patch_size
    fines = []
    for shift in ((0, 0, 0), (pd // 2, ph // 2, pw // 2), (0, ph // 2, 0), (0, 0, pw // 2)):
        t = torch.roll(prep.tensor, shifts=shift, dims=(2, 3, 4))
        f = relevance(model, dataclasses.replace(prep, tensor=t), prompt, templates=templates,
                      method="mirrored-guided-rollout", volumes=False).fine
        fines.append(np.roll(f, shift=[-s for s in shift], axis=(1, 2, 3)))
    return {"mirrored": fines[0], "+ 1 shift, mean": (fines[0] + fines[1]) / 2,
            "+ 1 shift, geometric mean": np.sqrt(fines[0] * fines[1]), "+ 3 shifts, mean": np.mean(fines, axis=0)}


FAMILIES = {"fine": fine_factors, "mirror": mirror_combinations, "shift": shifted}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--family", choices=FAMILIES, required=True)
    ap.add_argument("--seed", type=int, default=5)
    ap.add_argument("--studies", type=int, default=40)
    ap.add_argument("--model", default=str(REPO / "hlip_engine/weights/hlip_demo.safetensors"))
    ap.add_argument("--out", type=Path, default=Path("bench-output"), help="where the phantom library is made")
    args = ap.parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import torch

    from hlip_engine.demo.quality import FINDING_PROMPTS, TEMPLATES
    from hlip_engine.demo.showcase import ensure_library
    from hlip_engine.io import load_study
    from hlip_engine.model import load_model
    from hlip_engine.relevance.maps import scan_volumes
    from training.lesions import lesion_radius_mm

    torch.manual_seed(0)
    model = load_model(args.model, device="cpu").eval()
    rows: dict[str, list] = {}
    for r in ensure_library(args.out / f"library-seed{args.seed}", args.studies, seed=args.seed):
        details = r.get("details") or {}
        if not r["findings"] or r["findings"][0] not in FOCAL or "centre_lps" not in details:
            continue
        finding = r["findings"][0]
        study = load_study(r["path"])
        prep = model.prepare(study)
        centre, mirror = np.array(details["centre_lps"]), np.array(details["mirror_lps"])
        reach = lesion_radius_mm(details) + 10.0
        for name, fine in FAMILIES[args.family](model, prep, FINDING_PROMPTS[finding], TEMPLATES).items():
            peak = peak_of(np.ascontiguousarray(fine), prep, study, scan_volumes)
            dist = float(np.linalg.norm(peak - centre))
            rows.setdefault(name, []).append((finding, dist <= reach, dist < float(np.linalg.norm(peak - mirror)), dist))
    if not rows:
        print("no focal lesions in this library")
        return 1
    print(f"{len(next(iter(rows.values())))} focal lesions, library seed {args.seed} ({args.studies} studies)")
    for name, v in rows.items():
        per = " ".join(f"{f} {np.mean([x[1] for x in v if x[0] == f]):.2f}" for f in FOCAL if any(x[0] == f for x in v))
        print(f"{name:32s} hit {np.mean([x[1] for x in v]):.2f}  side {np.mean([x[2] for x in v]):.2f}  "
              f"median {np.median([x[3] for x in v]):.0f} mm   ({per})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
