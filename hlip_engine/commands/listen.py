"""Receive studies as a DICOM node; index, score and rank each complete one on the worklist.

  hlip listen --model CKPT --index DIR --rules RULES.json [--aet HLIP --port 11112] [--quiet-s 30]
              [--results-to NODE]

A C-STORE SCP (every storage SOP class; the transfer syntaxes the loader decodes), in --receivers processes
sharing the port; `hlip serve` on the same index folder adds a STOW-RS endpoint into the same spool. Instances are spooled
durably (DIR/inbox, one folder per StudyInstanceUID) before they are acknowledged; a study is complete once
no instance has arrived for --quiet-s seconds (as Orthanc's StableAge); it is then moved to DIR/studies,
added to the index without a rebuild (one entry per study), scored by the rules and put on the worklist
(DIR/worklist.sqlite; see `hlip worklist`); with --results-to its DICOM results (`hlip report`: SR + map) are
stored on that node. A malformed instance gets a failure status and the rest of the
study is kept; a spool over --max-spool-gb answers out of resources (0xA700). After a kill, a restart
finishes what was received and the sender's retry completes the rest. Logs carry UIDs, never patient names
or IDs. The demo model and its rules (hlip_engine/data/triage_rules_demo.json) are not for clinical use;
thresholds must be calibrated on the site's own labelled studies (`hlip evaluate`).
"""
from __future__ import annotations

import logging
import signal
import sys
import threading

NAME = "listen"
HELP = "receive studies over DICOM (C-STORE), then index, score and rank them on the worklist"


def add_arguments(p) -> None:
    p.add_argument("--model", required=True, help="model checkpoint (the index's model)")
    p.add_argument("--index", required=True, dest="index_dir", help="index folder (created if absent)")
    p.add_argument("--rules", default=None, help="triage rules JSON (default: the demo model's rules)")
    p.add_argument("--aet", default="HLIP", help="our AE title (default HLIP)")
    p.add_argument("--host", default="", help="address to listen on (default: all)")
    p.add_argument("--port", type=int, default=11112, help="TCP port (default 11112; 0 picks a free one)")
    p.add_argument("--quiet-s", type=float, default=30.0, help="seconds without a new instance after which a "
                   "study is complete (default 30)")
    p.add_argument("--spool", default=None, help="folder for inbox/, studies/, pending/ (default: the index folder)")
    p.add_argument("--max-spool-gb", type=float, default=20.0, help="inbox size limit (default 20 GB)")
    p.add_argument("--fsync", action="store_true", help="acknowledge each instance only once it is on the disk "
                   "(survives a power cut too; slower). Without it an acknowledged instance survives a killed "
                   "listener (it is in the file system), as with dcmtk's storescp")
    p.add_argument("--receivers", type=int, default=2, help="processes receiving on the port (default 2; 0: "
                   "receive in the listener's own process)")
    p.add_argument("--device", default=None, help="torch device (default: CUDA when available, else CPU)")
    p.add_argument("--results-to", default=None, metavar="NODE",
                   help="store each scored study's results on this node (a DICOMweb URL, dicom://AET@host:port or "
                        "a nodes-file name): a TID 1500 SR of the findings and, when a finding raised the "
                        "priority, its relevance map (hlip report)")


def run(args) -> int:
    from hlip_engine.triage.listen import Listener

    if args.quiet_s < 0 or args.max_spool_gb <= 0 or args.receivers < 0:
        raise ValueError("--quiet-s and --receivers must be >= 0 and --max-spool-gb > 0")
    logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    logging.getLogger("pynetdicom").setLevel(logging.WARNING)  # its debug output would show data sets
    listener = Listener(args.index_dir, args.model, args.rules, aet=args.aet, host=args.host, port=args.port,
                        quiet_s=args.quiet_s, spool_dir=args.spool, max_spool_bytes=int(args.max_spool_gb * 2**30),
                        fsync=args.fsync, device=args.device, results_to=args.results_to,
                        receivers=args.receivers)
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    listener.start()
    print(f"hlip listen: listening as {args.aet} on port {listener.port}", file=sys.stderr, flush=True)
    stop.wait()
    print("hlip listen: stopping", file=sys.stderr, flush=True)
    listener.stop()
    return 0
