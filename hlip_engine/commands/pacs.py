"""Find and retrieve studies on a PACS, over DICOMweb or DIMSE, into the local study cache.

NODE is a DICOMweb root (https://pacs.example.org/dicom-web), a DIMSE address (dicom://CALLED_AET@host:port,
our own AE title HLIPX unless --calling-aet), or a name from pacs_nodes.json in the config folder.
Credentials come from HLIP_PACS_USERNAME / HLIP_PACS_PASSWORD or HLIP_PACS_TOKEN, or the OS keyring
(service "hlip-pacs"); never from the command line. Patient identifiers are printed only with --show-patient.

examples:
  hlip pacs echo dicom://ORTHANC@pacs.local:4242
  hlip pacs find https://pacs.local/dicom-web --modality CT --date-from 2024-01-01 --description HEAD
  hlip pacs get dicom://ORTHANC@pacs.local:4242 1.2.840.113619.2.55.3.604688 --json
  hlip pacs cache            # what is cached, and how much room it takes;  --clear empties it
"""
from __future__ import annotations

import json
import sys

NAME = "pacs"
HELP = "find and retrieve studies on a PACS (DICOMweb or DIMSE) into the local cache"


def _node_args(p) -> None:
    p.add_argument("node", help="https://host/dicom-web, dicom://CALLED_AET@host:port, or a nodes-file name")
    p.add_argument("--calling-aet", default=None, help="our AE title for DIMSE (default HLIPX)")
    p.add_argument("--move-port", type=int, default=None,
                   help="retrieve by C-MOVE to our own storage SCP on this port (for PACSes that refuse C-GET)")
    p.add_argument("--timeout", type=float, default=None, help="seconds to wait for each answer (default 30)")


def add_arguments(parser) -> None:
    sub = parser.add_subparsers(dest="pacs_command", metavar="ACTION", required=True)
    p = sub.add_parser("echo", help="check that the node answers (C-ECHO, or a QIDO-RS request)")
    _node_args(p)
    p = sub.add_parser("find", help="search studies; prints a table, or JSON with --json")
    _node_args(p)
    p.add_argument("--patient-id", default=None)
    p.add_argument("--patient-name", default=None, help="DICOM name, e.g. DOE^JANE (wildcards * and ?)")
    p.add_argument("--accession", default=None)
    p.add_argument("--modality", default=None, help="a modality in the study, e.g. CT or MR")
    p.add_argument("--date-from", default=None, help="YYYY-MM-DD (inclusive)")
    p.add_argument("--date-to", default=None, help="YYYY-MM-DD (inclusive)")
    p.add_argument("--description", default=None, help="a part of the study description")
    p.add_argument("--limit", type=int, default=None, help="at most this many studies")
    p.add_argument("--show-patient", action="store_true", help="also show patient ID, name and accession")
    p.add_argument("--json", action="store_true", help="print a JSON list of studies")
    p = sub.add_parser("get", help="retrieve a study (or some series) into the cache; prints its folder")
    _node_args(p)
    p.add_argument("study_uid", help="StudyInstanceUID")
    p.add_argument("--series", action="append", default=None, metavar="UID",
                   help="only this series (repeat for more)")
    p.add_argument("--cache", default=None, help="cache folder (default: $HLIP_PACS_CACHE or the user cache)")
    p.add_argument("--json", action="store_true", help='print {"path": ...}')
    p = sub.add_parser("cache", help="show the local study cache, or --clear it")
    p.add_argument("--cache", default=None, help="cache folder (default: $HLIP_PACS_CACHE or the user cache)")
    p.add_argument("--clear", action="store_true", help="remove every cached study")
    p.add_argument("--json", action="store_true")


def _connect(args):
    from ..pacs import connect

    return connect(args.node, calling_aet=args.calling_aet, move_port=args.move_port, timeout=args.timeout)


def _size(n: float) -> str:
    for unit in ("B", "kB", "MB", "GB"):
        if n < 1024 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} TB"


def _date(d: str) -> str:
    return f"{d[:4]}-{d[4:6]}-{d[6:]}" if len(d) == 8 and d.isdigit() else (d or "?")


def _table(rows: list[dict], show_patient: bool) -> str:
    head = f"{'date':<10}  {'mod':<6} {'series':>6} {'images':>6}  {'description':<34} study UID"
    if show_patient:
        head = f"{'patient ID':<14} {'name':<20} {'accession':<12} " + head
    lines = [head]
    for r in rows:
        desc = r["description"] if len(r["description"]) <= 34 else r["description"][:33] + "~"
        line = (f"{_date(r['date']):<10}  {r['modality'] or '?':<6} {r['series']:>6} {r['instances']:>6}  "
                f"{desc:<34} {r['study_uid']}")
        if show_patient:
            line = f"{r['patient_id'][:14]:<14} {r['patient_name'][:20]:<20} {r['accession'][:12]:<12} " + line
        lines.append(line)
    return "\n".join(lines)


def _run(args) -> int:
    from ..pacs import StudyCache

    action = args.pacs_command
    if action == "cache":
        cache = StudyCache(args.cache)
        if args.clear:
            removed = cache.clear()
            print(json.dumps({"removed": removed}) if args.json else f"removed {len(removed)} studies from "
                  f"{cache.root}")
            return 0
        studies = cache.studies()
        total = sum(s["bytes"] for s in studies)
        if args.json:
            print(json.dumps({"path": str(cache.root), "bytes": total, "max_bytes": cache.max_bytes,
                              "studies": studies}, indent=2))
            return 0
        import time

        print(f"cache {cache.root}: {len(studies)} studies, {_size(total)} of {_size(cache.max_bytes)}")
        for s in reversed(studies):  # most recently used first
            when = time.strftime("%Y-%m-%d %H:%M", time.localtime(s["last_used"]))
            state = "" if s["complete"] else "  (some series)"
            print(f"  {when}  {_size(s['bytes']):>9}  {s['series']:>3} series  {s['study_uid']}{state}")
        return 0
    with _connect(args) as pacs:
        if action == "echo":
            seconds = pacs.echo()
            print(f"{pacs.node}: answers ({seconds * 1000:.0f} ms)")
            return 0
        if action == "find":
            filters = {k: getattr(args, k) for k in ("patient_id", "patient_name", "accession", "modality",
                                                     "date_from", "date_to", "description")}
            rows = pacs.find_studies(include_patient=args.show_patient, limit=args.limit, **filters)
            if args.json:
                print(json.dumps(rows, indent=2))
            else:
                print(_table(rows, args.show_patient))
                print(f"{len(rows)} studies on {pacs.node}", file=sys.stderr)
            return 0
        # get
        show = sys.stderr.isatty() and not args.json
        bar = None

        def progress(event):
            nonlocal bar
            if not show:
                return
            if bar is None:
                from tqdm import tqdm

                bar = tqdm(total=event["total"], unit="image", desc="retrieving", file=sys.stderr, leave=False)
            bar.n = event["done"]
            bar.set_postfix_str(f"series {event['series_index'] + 1}/{event['n_series']}", refresh=True)

        try:
            path = pacs.retrieve(args.study_uid, StudyCache(args.cache), series=args.series, progress=progress)
        finally:
            if bar is not None:
                bar.close()
        print(json.dumps({"path": str(path)}) if args.json else str(path))
        return 0


def run(args) -> int:
    from ..pacs import PacsCancelled, PacsError

    try:
        return _run(args)
    except PacsCancelled:
        print(f"hlip pacs {args.pacs_command}: cancelled; nothing half-retrieved was kept", file=sys.stderr)
        return 130
    except PacsError as e:
        print(f"hlip pacs {args.pacs_command}: error: {e}", file=sys.stderr)
        return 1
    except OSError as e:  # a full disk, an unwritable cache folder
        print(f"hlip pacs {args.pacs_command}: error: {e.strerror or e}: {e.filename or ''}".rstrip(": "),
              file=sys.stderr)
        return 1
