"""Relevance maps: where in a whole study the model sees a prompt (``hlip attention``, deprecated, is the old name).

--method chooses how: ``last-block`` (the official HLIP method: grad x attention of the last block, exact,
O(tokens)), ``rollout`` (Chefer et al. 2021 over every block), ``guided-rollout`` (rollout x the smoothed
input gradient) or ``mirrored-guided-rollout`` (the same on the study and its left-right mirror image, their
geometric mean); the default is the model's own choice (its config's ``relevance.method``, set where a method
won on validation data), else ``last-block``.

Writes into --out: one NIfTI per used scan on that scan's own voxel grid (RAS affine: overlay it on the
scan in any viewer), montage PNG(s) (rows = scans, columns = token slabs, thresholded colour over grey),
and relevance.json (scan importance, slice profiles, the logit, most relevant slice per scan).

Examples:
  hlip relevance /data/study_0001 --model hlip_demo.safetensors --prompt "glioma" --out rel_glioma
  hlip relevance head_ct/ --model m.pt --prompt "intraparenchymal hemorrhage" \\
      --template "This CT study shows: {}." --out rel_iph --threshold 0.3
"""
from __future__ import annotations

import argparse

from .embed import add_model_arguments

NAME = "relevance"
HELP = "relevance maps of one study for a prompt (NIfTI + PNG montage + JSON)"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("study", metavar="STUDY", help="DICOM folder, NIfTI file/folder or HLIP tensor folder")
    add_model_arguments(p)
    p.add_argument("--prompt", required=True, action="append", metavar="TEXT",
                   help="what to look for; repeat for several phrasings of one finding (averaged)")
    p.add_argument("--template", action="append", default=None,
                   help="template with {} for the prompt, repeatable (e.g. 'This MRI study shows: {}.')")
    p.add_argument("--out", required=True, metavar="DIR", help="folder for the NIfTI, PNG and JSON files")
    p.add_argument("--threshold", type=float, default=0.25,
                   help="montage: show relevance >= this fraction of the study maximum (default 0.25)")
    p.add_argument("--method", default=None, metavar="NAME",
                   help="relevance method: last-block (official HLIP), rollout (Chefer 2021), guided-rollout, "
                        "mirrored-guided-rollout; default: the model's own choice, else last-block")
    p.add_argument("--output", type=int, default=0,
                   help="2026 models: which embedding to explain (0 sentence head, 1 report head)")


def run(args) -> int:
    import sys

    from hlip_engine.io import load_study
    from hlip_engine.model import load_model
    from hlip_engine.relevance import check_method, export, relevance

    if not 0.0 <= args.threshold < 1.0:
        raise ValueError(f"--threshold must be in [0, 1), got {args.threshold}")
    if args.method is not None:
        check_method(args.method)  # a typo fails before the model loads
    model = load_model(args.model, arch=args.arch, text_model=args.text_model, device=args.device)
    study = load_study(args.study)
    for item, reason in study.skipped:
        print(f"skipped {item}: {reason}", file=sys.stderr)
    options = {"slices": args.slices} if args.slices else {}
    prepared = model.prepare(study, args.recipe, **options)
    prompt = args.prompt[0] if len(args.prompt) == 1 else args.prompt
    rel = relevance(model, prepared, prompt, templates=args.template, output=args.output,
                    method=args.method)
    files = export(rel, args.out, study=study, threshold=args.threshold)
    labels = prepared.labels or [f"scan {k}" for k in prepared.scan_indices]
    print(f"study {study.uid or study.source}: {len(prepared.scan_indices)} model scans, "
          f"prompt {rel.prompt!r}, method {rel.method}, logit {rel.logit:.3f}")
    peaks = dict(zip(rel.volume_scans or [], rel.peak_slices()))
    for i, share in sorted(enumerate(rel.scan_importance), key=lambda t: -t[1]):
        k = prepared.scan_indices[i]
        bar = "#" * int(round(40 * float(share)))
        print(f"  {labels[i][:32]:32s} {100 * share:5.1f}% {bar}  (peak slice {peaks.get(k, 0)} of scan {k})")
    print(f"wrote {len(files)} files to {args.out}")
    return 0
