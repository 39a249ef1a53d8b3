"""The triage worklist of an index folder: received studies, most urgent first, then first arrived first.

  hlip worklist DIR [--json] [--status done]

Filled by `hlip listen`; each row: priority, status (received / scoring / done / failed and why), arrival,
modality, top finding and its probability, StudyInstanceUID. Not for clinical use with the demo model.
"""
from __future__ import annotations

import json

NAME = "worklist"
HELP = "show the triage worklist of an index folder (filled by hlip listen)"


def add_arguments(p) -> None:
    p.add_argument("index_dir", metavar="DIR", help="the index folder hlip listen writes to")
    p.add_argument("--json", action="store_true", help="print the rows as JSON")
    p.add_argument("--status", choices=("received", "scoring", "done", "failed"), help="only studies in this state")


def run(args) -> int:
    from hlip_engine.triage.worklist import Worklist, format_rows, worklist_path

    with Worklist(worklist_path(args.index_dir), readonly=True) as wl:
        rows = wl.rows(args.status)
    if args.json:
        print(json.dumps({"worklist": rows}, indent=1))
    else:
        print("\n".join(format_rows(rows)))
    return 0
