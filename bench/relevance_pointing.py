"""Does the relevance map point at the lesion? A pointing game on phantom studies, whose lesion centres are known.

For every phantom study with a focal finding (tumour, infarct, haemorrhage: the generator records the
lesion centre and its left-right mirror in patient millimetres), the relevance of the finding's zero-shot prompts is
computed as `hlip relevance` / the plugin compute it; its peak is ``Relevance.peak()`` (the maximum of the
most relevant source scan's map: where the plugin jumps), and the maximum of every scan's map. A hit: the peak lies within the lesion's radius + 10 mm of its
centre. Controls: the peak is nearer the lesion than the lesion's mirror image across the midline
(chance 0.5 for a map that ignores the side); and, to show the game can be won, the same rule applied to
the brightest region of each MR study's FLAIR (a 5-voxel box mean), where oedema and infarct are bright.

    .venv/bin/python bench/relevance_pointing.py                         # shipped model, library seed 5
    .venv/bin/python bench/relevance_pointing.py --model RUN/model.safetensors --seed 6 --studies 100
    .venv/bin/python bench/relevance_pointing.py --method rollout --json out.json     # another method

Goal, on libraries never trained on or selected with: hit >= 0.8, lesion side >= 0.95, median
peak-to-centre distance <= 15 mm.
"""
from __future__ import annotations

import os
import sys
from pathlib import Path

import numpy as np
from _common import library_parser


def main(argv=None) -> int:
    ap = library_parser(__doc__.split("\n\n")[0])
    ap.add_argument("--method", default=None, help="relevance method (default: the model's own)")
    ap.add_argument("--json", type=Path, help="write the per-finding figures here")
    ap.add_argument("--argmax", action="store_true",
                    help="score the maximum voxel instead of the hot spot's centre of mass (Relevance.peak)")
    args = ap.parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")

    from scipy.ndimage import uniform_filter

    from hlip_engine.demo.quality import FINDING_PROMPTS, TEMPLATES
    from hlip_engine.demo.showcase import ensure_library
    from hlip_engine.io import load_study
    from hlip_engine.model import load_model
    from hlip_engine.relevance import relevance
    from training.lesions import lesion_radius_mm

    records = ensure_library(args.out / f"library-seed{args.seed}", args.studies, seed=args.seed)
    model = load_model(args.model, device="cpu")
    rows = []
    for r in records:
        details = r.get("details") or {}
        if "centre_lps" not in details:
            continue
        finding = r["findings"][0]
        study = load_study(r["path"])
        rel = relevance(model, model.prepare(study), FINDING_PROMPTS[finding], templates=TEMPLATES,
                        method=args.method)
        centre, mirror = np.array(details["centre_lps"]), np.array(details["mirror_lps"])
        peaks = []
        for vol, k in zip(rel.volumes, rel.volume_scans):
            s, row, col = np.unravel_index(int(np.argmax(vol)), vol.shape)
            peaks.append(study.scans[k].world((s, row, col)))
        k_top, voxel = rel.peak(centre_of_mass=not args.argmax)  # where the plugin jumps
        top = rel.volume_scans.index(k_top)
        peaks[top] = study.scans[k_top].world(voxel)
        dist = [float(np.linalg.norm(p - centre)) for p in peaks]
        near = [float(np.linalg.norm(p - centre)) < float(np.linalg.norm(p - mirror)) for p in peaks]
        reach = lesion_radius_mm(details) + 10.0
        flair_series = {s["number"] for s in r["series"] if s["contrast"] == "FLAIR"}  # the generator's truth
        flair = [sc for sc in study.scans if sc.series_number in flair_series]
        flair_hit = None
        if flair:
            smooth = uniform_filter(flair[0].voxels.astype(np.float32), 5)
            peak = flair[0].world(np.unravel_index(int(np.argmax(smooth)), smooth.shape))
            flair_hit = float(np.linalg.norm(peak - centre)) <= reach
        rows.append({"flair_hit": flair_hit, "finding": f"{finding} ({details.get('subtype', '')})".replace(" ()", ""),
                     "hit_top": dist[top] <= reach, "hit_any": min(dist) <= reach,
                     "side_top": near[top], "dist_top": dist[top]})
        print(f"  {r['modality']} {rows[-1]['finding']:34s} top-scan peak {dist[top]:6.1f} mm from the lesion "
              f"(reach {reach:.0f}), {'lesion side' if near[top] else 'mirror side'}", flush=True)
    if not rows:
        print("no focal lesions in this library")
        return 1
    figures = {"model": str(args.model), "seed": args.seed, "studies": args.studies, "method": rel.method,
               "peak": "maximum voxel" if args.argmax else "centre of mass of the hot spot",
               "findings": {}}
    for name in sorted({x["finding"] for x in rows}) + ["all"]:
        sel = [x for x in rows if name in ("all", x["finding"])]
        figures["findings"][name] = {"n": len(sel), "hit": float(np.mean([x["hit_top"] for x in sel])),
                                     "hit_any_scan": float(np.mean([x["hit_any"] for x in sel])),
                                     "side": float(np.mean([x["side_top"] for x in sel])),
                                     "median_mm": float(np.median([x["dist_top"] for x in sel]))}
        print(f"{name:34s} n={len(sel):3d}  hit (most relevant scan) {np.mean([x['hit_top'] for x in sel]):.2f}  "
              f"hit (any scan) {np.mean([x['hit_any'] for x in sel]):.2f}  "
              f"lesion side, not mirror {np.mean([x['side_top'] for x in sel]):.2f}  "
              f"median distance {np.median([x['dist_top'] for x in sel]):.0f} mm")
    control = [x["flair_hit"] for x in rows if x["flair_hit"] is not None]
    if control:
        print(f"control: the brightest FLAIR region hits the lesion in {np.mean(control):.2f} of {len(control)} MR studies")
        figures["flair_control"] = float(np.mean(control))
    print(f"method: {rel.method}")
    if args.json:
        import json

        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(figures, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
