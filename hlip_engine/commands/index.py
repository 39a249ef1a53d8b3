"""Build a searchable index of a study library or of a PACS, or show what an index holds.

  hlip index build LIBRARY --model CKPT --index DIR [--recipe NAME] [--workers N] [--resume] [--rebuild]
  hlip index build NODE --model CKPT --index DIR [--modality MR --date-from 2024-01-01 ...] [--keep] [--cache DIR]
  hlip index add LIBRARY --model CKPT --index DIR [--recipe NAME] [--batch-size N]
  hlip index info DIR

NODE is a PACS (a DICOMweb URL, dicom://CALLED_AET@host:port or a name from pacs_nodes.json; a folder that
exists is a library): its studies matching the filters are retrieved one by one into the study cache,
embedded, and dropped from the cache again unless --keep. Each records its node and StudyInstanceUID, so a
search hit opens by retrieving it (hlip_engine.pacs.hits.study_path_of_hit). --resume retrieves only the
studies not yet in the index (and those the PACS failed to deliver before).

Scale-out: ``torchrun --nproc_per_node=G -m hlip_engine.index build ...`` shards the library
across GPUs/nodes (DIR on a shared filesystem); rank 0 merges and publishes one index.
A build killed at any moment continues with --resume; the index searches see is replaced atomically.

``add`` puts the studies under LIBRARY into an existing index (or a new one) without a rebuild, each batch
searchable at once: a study already there (same StudyInstanceUID) is skipped when unchanged and replaced when
it changed; once the index has grown several-fold since its coarse quantiser was trained it is retrained.
The DICOM listener (``hlip listen``) adds the studies it receives the same way.
"""
from __future__ import annotations

import json
import sys

NAME = "index"
HELP = ("build a searchable index of a study library or a PACS (hlip index build ...), or show one "
        "(hlip index info)")
PACS_FILTERS = (("--patient-id", "only this patient's studies"), ("--patient-name", "DICOM name, e.g. DOE^JANE"),
                ("--accession", "only this accession number"), ("--modality", "a modality in the study, e.g. MR"),
                ("--date-from", "YYYY-MM-DD (inclusive)"), ("--date-to", "YYYY-MM-DD (inclusive)"),
                ("--description", "a part of the study description"))
PACS_OPTIONS = tuple((flag, flag[2:].replace("-", "_")) for flag, _ in PACS_FILTERS) + tuple(
    (flag, flag[2:].replace("-", "_")) for flag in ("--limit", "--keep", "--cache", "--calling-aet", "--move-port",
                                                   "--timeout"))


def add_arguments(parser) -> None:
    sub = parser.add_subparsers(dest="index_command", metavar="ACTION", required=True)
    b = sub.add_parser("build", help="embed every study under LIBRARY into the index DIR",
                       description="Embed every study under LIBRARY with a model into a FAISS + SQLite index.")
    b.add_argument("library", metavar="LIBRARY|NODE",
                   help="folder of studies (DICOM, NIfTI, HLIP tensors), searched recursively; or a PACS node: "
                        "https://host/dicom-web, dicom://CALLED_AET@host:port, or a nodes-file name")
    b.add_argument("--model", required=True, help="model checkpoint (ours, official .pt, or a 2026 folder)")
    b.add_argument("--index", required=True, dest="index_dir", help="index folder to create or update")
    b.add_argument("--recipe", help="preprocessing recipe (default: the model's)")
    b.add_argument("--workers", type=int, default=2, help="CPU processes loading + preprocessing (default 2)")
    b.add_argument("--batch-size", type=int, default=4, help="studies encoded together (default 4)")
    b.add_argument("--resume", action="store_true", help="continue an interrupted build / add new studies")
    b.add_argument("--rebuild", action="store_true", help="start over, even with another model")
    b.add_argument("--reports", metavar="FILE",
                   help="JSON/CSV of report texts by study (as training.prepare --reports): each study's "
                        "impression is recorded, for search hits to show")
    b.add_argument("--keep-identifiers", action="store_true",
                   help="also store patient names and IDs (off by default)")
    b.add_argument("--device", help="torch device for encoding (default: CUDA when available, else CPU)")
    b.add_argument("--index-type", choices=("auto", "flat", "ivf"), default="auto",
                   help="FAISS index: exact up to 20,000 studies, IVF-SQ8 above (default auto)")
    b.add_argument("--flush-every", type=int, default=256, metavar="N",
                   help="studies per durable write to the build store (also every 30 s; default 256)")
    b.add_argument("--no-progress", action="store_true", help="no progress bar")
    p = b.add_argument_group("PACS (NODE only)", "which studies of the node, and where they pass through")
    for flag, what in PACS_FILTERS:
        p.add_argument(flag, default=None, help=what)
    p.add_argument("--limit", type=int, default=None, help="at most this many studies")
    p.add_argument("--keep", action="store_true",
                   help="keep the retrieved studies in the study cache (default: dropped once embedded)")
    p.add_argument("--cache", default=None, metavar="DIR",
                   help="study cache folder (default: $HLIP_PACS_CACHE or the user cache)")
    p.add_argument("--calling-aet", default=None, help="our AE title for DIMSE (default HLIPX)")
    p.add_argument("--move-port", type=int, default=None,
                   help="retrieve by C-MOVE to our own storage SCP on this port (PACSes that refuse C-GET)")
    p.add_argument("--timeout", type=float, default=None, help="seconds to wait for each PACS answer (default 30)")
    a = sub.add_parser("add", help="add the studies under LIBRARY to the index DIR without a rebuild",
                       description="Add studies to an index at once (one entry per StudyInstanceUID).")
    a.add_argument("library", metavar="LIBRARY", help="folder of studies (DICOM, NIfTI, HLIP tensors)")
    a.add_argument("--model", required=True, help="model checkpoint the index was (or is to be) built with")
    a.add_argument("--index", required=True, dest="index_dir", help="index folder to add to (created if absent)")
    a.add_argument("--recipe", help="preprocessing recipe (default: the model's)")
    a.add_argument("--batch-size", type=int, default=4, help="studies encoded together (default 4)")
    a.add_argument("--keep-identifiers", action="store_true", help="also store patient names and IDs")
    a.add_argument("--device", help="torch device for encoding (default: CUDA when available, else CPU)")
    i = sub.add_parser("info", help="what an index holds: model, counts, index type, skipped studies")
    i.add_argument("index_dir", metavar="DIR")
    i.add_argument("--json", action="store_true", help="print info.json")
    i.add_argument("--skipped", action="store_true", help="list the skipped studies with their reasons")
    i.add_argument("--no-verify", action="store_true", help="skip the sha256 check of every file")


def _node_of(args):
    """The PACS node ``args.library`` names, or None when it is a library (a file or folder that exists)."""
    from pathlib import Path

    from hlip_engine.pacs import PacsError, parse_node

    text = args.library
    if Path(text).exists():
        given = [flag for flag, dest in PACS_OPTIONS if getattr(args, dest) not in (None, False)]
        if given:
            raise ValueError(f"{', '.join(given)}: for a PACS node only; {text} is a library folder")
        return None
    try:
        return parse_node(text, calling_aet=args.calling_aet, move_port=args.move_port, timeout=args.timeout)
    except PacsError as e:
        if "://" in text:
            raise ValueError(str(e)) from None
        raise ValueError(f"{text}: no such library folder, and not a PACS node ({e})") from None


def run(args) -> int:
    if args.index_command == "info":
        return _info(args)
    if args.index_command == "add":
        return _add(args)
    from hlip_engine.index.embed_pipeline import build_library, build_node
    from hlip_engine.pacs import PacsError

    if args.workers < 0 or args.batch_size < 1:
        raise ValueError("--workers must be >= 0 and --batch-size >= 1")
    options = dict(recipe=args.recipe, workers=args.workers, resume=args.resume, rebuild=args.rebuild,
                   keep_identifiers=args.keep_identifiers, batch_size=args.batch_size, device=args.device,
                   index_type=args.index_type, progress=not args.no_progress, flush_every=max(1, args.flush_every),
                   log=lambda msg: print(msg, file=sys.stderr), reports=args.reports)
    node = _node_of(args)
    try:
        if node is None:
            report = build_library(args.library, args.model, args.index_dir, **options)
        else:
            filters = {dest: getattr(args, dest) for flag, dest in PACS_OPTIONS[:len(PACS_FILTERS)]}
            report = build_node(node, args.model, args.index_dir, filters=filters, keep=args.keep,
                                cache=args.cache, limit=args.limit, **options)
    except PacsError as e:  # a bad filter, a node that is down or refuses us: one line, never a traceback
        print(f"hlip index: error: {e}", file=sys.stderr)
        return 2
    if report.rank != 0:
        print(f"rank {report.rank}: " + report.lines()[0], file=sys.stderr)
        return 0
    for line in report.lines():
        print(line)
    if report.error:
        print(f"hlip index: error: {report.error}", file=sys.stderr)
        return 2
    return 0


def _add(args) -> int:
    from hlip_engine.index.add_studies import add_library

    if args.batch_size < 1:
        raise ValueError("--batch-size must be >= 1")
    report = add_library(args.library, args.model, args.index_dir, recipe=args.recipe, batch_size=args.batch_size,
                         device=args.device, keep_identifiers=args.keep_identifiers,
                         log=lambda msg: print(msg, file=sys.stderr))
    for line in report.lines():
        print(line)
    return 0


def _info(args) -> int:
    from hlip_engine.index import StudyIndex

    index = StudyIndex.open(args.index_dir, verify=not args.no_verify)
    info = index.info
    if args.json:
        print(json.dumps(info, indent=2))
    else:
        ident, plan = info["identity"], info["index"]
        kind = "exact (Flat)" if plan["type"] == "flat" else (
            f"IVF-SQ8, {plan['nlist']} lists, nprobe {plan['nprobe']} "
            f"(recall@10 {plan.get('tuned_recall_at_10', 0):.3f} when built)")
        print(f"{args.index_dir}: {info['count']} studies, {info['skipped']} skipped; {kind}")
        print(f"model {ident['model_id']} ({ident.get('architecture') or '?'}, {ident['dim']}-d, "
              f"sha256 {ident.get('model_hash', '')[:12]}), recipe {ident.get('recipe') or '?'}")
        print(f"built {info['built_at']} from {info.get('library', '?')}; version {info['version']}")
    if args.skipped:
        for _, path, reason in index.skipped():
            print(f"  skipped {path}: {reason}")
    return 0
