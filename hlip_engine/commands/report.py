"""Zero-shot findings and relevance maps of one study as DICOM objects of that study, optionally stored on a PACS.

Writes into --out: hlip_sr.dcm (a Comprehensive 3D SR following TID 1500: one entry per finding with its
probability, the algorithm (model, version, checkpoint sha256, prompt set, templates), per --relevance prompt
its peak as a 3-D point in the study's frame of reference and the share of relevance per series), one
Parametric Map per --relevance prompt and source series (float relevance on the series' own geometry), and
report.json. Every object is marked UNVERIFIED: a research result, not for clinical use.

Examples:
  hlip report /data/study_0001 --model hlip_demo.safetensors --prompt-set pub-brain-5 \\
      --relevance "glioma" --out report_0001
  hlip report ct_study/ --model m.pt --prompts "hemorrhage" "no hemorrhage" --relevance hemorrhage \\
      --out rep --send orthanc          # a node of the nodes file, or a URL (https://.../dicom-web, dicom://AE@host:104)
"""
from __future__ import annotations

import argparse

from .embed import add_model_arguments

NAME = "report"
HELP = "DICOM SR + Parametric Maps of one study's findings (optionally stored on a PACS)"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("study", metavar="STUDY", help="DICOM folder, NIfTI file/folder or HLIP tensor folder")
    add_model_arguments(p)
    which = p.add_mutually_exclusive_group()
    which.add_argument("--prompt-set", default=None, metavar="NAME", help="a prompt set (pub-brain-5, ct-rate, ...)")
    which.add_argument("--prompts", nargs="+", default=None, metavar="TEXT", help="free-text classes (softmax)")
    p.add_argument("--relevance", action="append", default=[], metavar="PROMPT",
                   help="a prompt whose relevance map and peak go into the report; repeatable")
    p.add_argument("--template", action="append", default=None,
                   help="template with {} for the prompt, repeatable (default: the prompt set's)")
    p.add_argument("--template-set", default=None, help="for CT-RATE: volume, lung, heart, ... or organ")
    p.add_argument("--mode", choices=("softmax", "binary"), default=None, help="zero-shot mode (default: the set's)")
    p.add_argument("--method", default=None, metavar="NAME", help="relevance method (default: the model's)")
    p.add_argument("--out", required=True, metavar="DIR", help="folder for the DICOM objects and report.json")
    p.add_argument("--send", default=None, metavar="NODE",
                   help="store the objects on this PACS node (nodes-file name or URL): STOW-RS or C-STORE")
    p.add_argument("--json", action="store_true", help="print report.json instead of a summary")


def run(args) -> int:
    import json
    import sys

    from hlip_engine.io import load_study
    from hlip_engine.model import load_model
    from hlip_engine.pacs import PacsError
    from hlip_engine.relevance import check_method
    from hlip_engine.report import send_report
    from hlip_engine.report.api import make_report

    try:
        import highdicom  # noqa: F401  (the DICOM objects are built with it; part of the engine extra)
    except ModuleNotFoundError:
        raise ValueError('writing DICOM reports needs highdicom: pip install "hlip-napari[engine]" '
                         "(or pip install highdicom)") from None
    if args.prompt_set is None and args.prompts is None and not args.relevance:
        raise ValueError("nothing to report: give --prompt-set, --prompts or --relevance")
    if args.method is not None:
        check_method(args.method)
    model = load_model(args.model, arch=args.arch, text_model=args.text_model, device=args.device)
    study = load_study(args.study)
    for item, reason in study.skipped:
        print(f"skipped {item}: {reason}", file=sys.stderr)
    result = make_report(study, model, args.out, prompt_set=args.prompt_set, prompts=args.prompts,
                         relevance_prompts=args.relevance, templates=args.template, template_set=args.template_set,
                         mode=args.mode, recipe=args.recipe, slices=args.slices, method=args.method)
    for note in result.notes:
        print(f"note: {note}", file=sys.stderr)
    if args.send:
        try:
            send_report(result, args.send)
        except PacsError as e:
            print(f"hlip report: error: not stored: {e}", file=sys.stderr)
            return 1
    if args.json:
        print(json.dumps(result.to_json(), indent=2))
        return 0
    print(f"study {result.study_uid}: wrote {result.sr.name} and {len(result.maps)} relevance map(s) to {args.out} "
          "(research result, not for clinical use)")
    for name, p in result.findings.items():
        print(f"  {name:<32} {p:6.3f}")
    for peak in result.peaks:
        where = (f"peak at LPS ({', '.join(f'{v:.1f}' for v in peak['peak_lps'])}) mm" if peak["peak_lps"]
                 else "no spatial coordinates")
        print(f"  relevance '{peak['prompt']}': {where}")
    if result.sent:
        print(f"stored {result.sent['instances']} object(s) on {result.sent['node']} over {result.sent['protocol']}")
    return 0
