"""Triage figures: arrival-to-ranked latency of the listener, and its ingest throughput against dcmtk's storescp.

    python bench/triage_bench.py                      # 10 latency studies, 20 throughput studies, 4 associations
    python bench/triage_bench.py --throughput-studies 200 --json figures.json

Studies are demo phantoms: a 4-series brain MR (localizer, T1, T2, FLAIR...) cloned under new UIDs.

* latency: each study is sent alone (storescu), the listener (in this process, the demo model, CPU) waits its
  quiet period, then loads, embeds, adds it to the index and scores it; the figure is the time from its last
  instance to its row being done on the worklist, minus the quiet period (target p50 <= 5 s).
* throughput: the same instances pushed by ``--associations`` concurrent storescu processes, first to dcmtk's
  storescp writing them to disk, then to the listener (receiving only; its quiet period outlasts the run), in
  the same run; instances per second of each and their ratio (target >= 0.8).

storescu and storescp run with TCP_NODELAY=1: without it this dcmtk waits ~40 ms per message for delayed ACKs.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "tests" / "triage"))

ENV = {**os.environ, "TCP_NODELAY": "1"}
MODEL = REPO / "hlip_engine" / "weights" / "hlip_demo.safetensors"


def phantoms(root: Path, n: int) -> list[Path]:
    """``n`` clones of a 4-series MR phantom."""
    from triage_helpers import clone_study

    from hlip_engine.demo import make_studies

    done = root / "send" / ".done"
    if done.exists() and int(done.read_text()) >= n:  # a --dir of an earlier run: the same studies again
        return [root / "send" / f"s{i:04d}" for i in range(n)]
    shutil.rmtree(root / "send", ignore_errors=True)
    records = make_studies(root / "base", 6, seed=3)
    mr = next(r for r in records if r["modality"] == "MR" and len(r["series"]) == 4)
    out = [clone_study(Path(mr["path"]), root / "send" / f"s{i:04d}", f"bench{i}") for i in range(n)]
    done.write_text(str(n))
    return out


def push(port: int, groups: list[list[Path]]) -> float:
    """Send each group over its own association at once; seconds until all are acknowledged."""
    def one(paths):
        done = subprocess.run(["storescu", "-aec", "HLIP", "-nh", "+sd", "+r", "+sp", "*.dcm", "127.0.0.1",
                               str(port), *map(str, paths)], env=ENV, capture_output=True, text=True)
        if done.returncode:
            raise SystemExit(f"storescu failed: {done.stderr[-1000:]}")

    t0 = time.perf_counter()
    threads = [threading.Thread(target=one, args=(g,)) for g in groups if g]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return time.perf_counter() - t0


def wait_port(port: int, timeout: float = 10) -> None:
    import socket

    deadline = time.time() + timeout
    while time.time() < deadline:
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.05)
    raise SystemExit(f"nothing listens on port {port}")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--studies", type=int, default=10, help="studies timed for latency (default 10)")
    ap.add_argument("--throughput-studies", type=int, default=20, help="studies pushed for throughput (default 20)")
    ap.add_argument("--associations", type=int, default=4)
    ap.add_argument("--quiet-s", type=float, default=1.0, help="the listener's quiet period in the latency run")
    ap.add_argument("--receivers", type=int, default=2, help="the listener's receiver processes (default 2)")
    ap.add_argument("--dir", default=None, help="work folder (default: a temporary one, removed)")
    ap.add_argument("--json", default=None, help="write the figures here")
    args = ap.parse_args(argv)

    from triage_helpers import free_port, study_uid_of

    from hlip_engine.triage.listen import Listener

    work = Path(args.dir) if args.dir else Path(tempfile.mkdtemp(prefix="triage-bench-"))
    try:
        studies = phantoms(work, max(args.studies, args.throughput_studies))
        n_inst = [len(list(s.rglob("*.dcm"))) for s in studies]
        groups = [studies[:args.throughput_studies][a::args.associations] for a in range(args.associations)]
        inst = sum(n_inst[:args.throughput_studies])

        # throughput: storescp, then the listener, same instances, same sending pattern
        for old in ("storescp", "ingest.index", "lat.index"):  # an earlier run's, with --dir
            shutil.rmtree(work / old, ignore_errors=True)
        out = work / "storescp"
        out.mkdir()
        port = free_port()
        scp = subprocess.Popen(["storescp", "-aet", "HLIP", "-od", str(out), str(port)], env=ENV,
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            wait_port(port)
            t_scp = push(port, groups)
        finally:
            scp.terminate()
            scp.wait()
        listener = Listener(work / "ingest.index", MODEL, None, port=0, quiet_s=3600, device="cpu",
                            receivers=args.receivers)
        listener.start()
        try:
            t_us = push(listener.port, groups)
            received = sum(1 for _ in (work / "ingest.index" / "inbox").rglob("*.dcm"))
        finally:
            listener.stop()
        if received != inst:
            raise SystemExit(f"the listener received {received} of {inst} instances")

        # latency: one study at a time, through the whole pipeline
        listener = Listener(work / "lat.index", MODEL, None, port=0, quiet_s=args.quiet_s, device="cpu",
                            receivers=args.receivers)
        listener.start()
        lat, total = [], []
        try:
            for s in studies[:args.studies]:
                t0 = time.time()
                push(listener.port, [[s]])
                uid = study_uid_of(s)
                while True:
                    row = listener.worklist.get(uid)
                    if row and row["status"] in ("done", "failed"):
                        break
                    time.sleep(0.02)
                if row["status"] != "done":
                    raise SystemExit(f"study failed: {row['reason']}")
                lat.append(row["completed_at"] - row["last_instance_at"] - args.quiet_s)
                total.append(row["completed_at"] - t0)
        finally:
            listener.stop()
        figures = {
            "cpu_count": os.cpu_count(), "model": MODEL.name, "series_per_study": 4,
            "instances_per_study": n_inst[0], "latency_studies": args.studies, "quiet_s": args.quiet_s,
            "latency_p50_s": round(statistics.median(lat), 3), "latency_max_s": round(max(lat), 3),
            "send_to_ranked_p50_s": round(statistics.median(total), 3),
            "throughput_studies": args.throughput_studies, "associations": args.associations, "instances": inst,
            "receivers": args.receivers,
            "storescp_inst_per_s": round(inst / t_scp, 1), "listener_inst_per_s": round(inst / t_us, 1),
            "ratio": round(t_scp / t_us, 3),
        }
    finally:
        if not args.dir:
            shutil.rmtree(work, ignore_errors=True)
    print(f"arrival-to-ranked latency (last instance -> done on the worklist, quiet period excluded), "
          f"{figures['latency_studies']} 4-series MR studies: p50 {figures['latency_p50_s']:.2f} s, "
          f"max {figures['latency_max_s']:.2f} s (target p50 <= 5 s)")
    print(f"ingest, {inst} instances over {args.associations} associations: storescp "
          f"{figures['storescp_inst_per_s']:.0f}/s, listener {figures['listener_inst_per_s']:.0f}/s, "
          f"ratio {figures['ratio']:.2f} (target >= 0.8)")
    if args.json:
        Path(args.json).write_text(json.dumps(figures, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
