"""Zero-shot classification of one study against a prompt set or free-text prompts.

Examples:
  hlip zeroshot /data/study_0001 --model hlip_demo.safetensors --prompt-set pub-brain-5
  hlip zeroshot brain.nii.gz --model m.safetensors --prompts "glioma" "meningioma" "metastasis" \\
      --template "This MRI study shows: {}." --chart probs.png
  hlip zeroshot ct_study/ --model m.pt --prompt-set head-ct-hemorrhage --json
  hlip zeroshot /data/study_0001 --model hlip_demo.safetensors      # the model's default set for the study

Without --prompt-set or --prompts, the model's default prompt set for the study is used (its config's own,
else a CT or brain MRI set by the study: ``hlip_engine.zeroshot.default_prompt_set``), as the napari
widget and the server do. --json prints ``hlip_engine.zeroshot.zeroshot_document``.
"""
from __future__ import annotations

import argparse

from .embed import add_model_arguments

NAME = "zeroshot"
HELP = "zero-shot class probabilities for one study (prompt set or free prompts)"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("study", metavar="STUDY", help="DICOM folder, NIfTI file/folder or HLIP tensor folder")
    add_model_arguments(p)
    which = p.add_mutually_exclusive_group()
    which.add_argument("--prompt-set", default=None, metavar="NAME",
                       help="a prompt set of the paper (pub-brain-5, ct-rate, rad-chestct, head-ct-hemorrhage); "
                            "default: the model's default set for the study")
    which.add_argument("--prompts", nargs="+", default=None, metavar="TEXT", help="free-text classes (softmax)")
    p.add_argument("--template", action="append", default=None,
                   help="template with {} for the class, repeatable (default: the set's, or the prompt as is)")
    p.add_argument("--template-set", default=None, help="for CT-RATE: volume, lung, heart, ... or organ")
    p.add_argument("--mode", choices=("softmax", "binary"), default=None,
                   help="softmax over classes, or one negative/positive pair per class (default: the set's)")
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    p.add_argument("--chart", default=None, metavar="F.png", help="also save a bar chart")


def run(args) -> int:
    import json
    import sys

    from hlip_engine.zeroshot import bar_chart, text_bars, zeroshot_document

    from .embed import load_and_embed

    model, study, prepared, embedding = load_and_embed(args)
    doc = zeroshot_document(model, study, embedding, prompt_set=args.prompt_set, prompts=args.prompts,
                            templates=args.template, mode=args.mode, template_set=args.template_set)
    probs, binary = doc["probabilities"], doc["mode"] == "binary"
    if args.json:
        print(json.dumps(doc, indent=2))
    else:
        if doc.get("default_because"):
            print(f"prompt set {doc['prompt_set']} ({doc['default_because']}; --prompt-set or --prompts to choose)",
                  file=sys.stderr)
        what = "P(positive) per class" if binary else "softmax over classes"
        print(f"study {doc['study']}: {len(prepared.scan_indices)} model scans; {what}")
        print(text_bars(probs))
    if args.chart:
        bar_chart(probs, args.chart, title=f"{doc['prompt_set'] or 'prompts'} - {doc['study']}",
                  xlabel="P(positive)" if binary else "probability")
    return 0
