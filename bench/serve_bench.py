"""`hlip serve` benchmark: what the HTTP hop costs against the same engine calls in-process.

    .venv/bin/python bench/serve_bench.py                       # phantom library, demo model, CPU
    .venv/bin/python bench/serve_bench.py --device cuda --studies 16 --out serve_bench.json

Measures:
- search p50/p95 over HTTP (hlip_engine.remote.RemoteEngine, kept-alive connections) against the local
  p50 (``search.text_vector`` + ``search.search`` in this process), at 1 and at 8 concurrent clients,
  ``--requests`` each (default 1,000), counting errors. Every request is a different query text.
  Locally, 8 threads share one lock around the text encoder, as the server's text thread does
  (``text_vector`` changes torch's global thread count, so it is not safe to call from 8 threads at once).
- zero-shot throughput (studies/s) with 8 concurrent zip uploads against the local batch throughput:
  the same 8 studies loaded and prepared in this process, then ONE ``encode_prepared`` of all 8, then
  classified -- what a batch job on this machine would do.
- the server's resident memory (RSS) every 100 of ``--requests`` mixed requests (text searches, and an
  upload to /v1/embed every 20th), to show it is flat.
The server runs as a real subprocess on a free loopback port; local phases run while it is idle.
"""
from __future__ import annotations

import argparse
import json
import os
import secrets
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
DEMO = REPO / "hlip_engine" / "weights" / "hlip_demo.safetensors"
FINDINGS = ["glioma", "meningioma", "metastasis", "infarct", "haemorrhage", "atrophy", "oedema", "mass",
            "lesion", "normal brain", "small vessel disease", "hydrocephalus", "abscess", "cyst", "contusion",
            "subdural haematoma", "calcification", "demyelination", "enhancing lesion", "midline shift"]
PLACES = ["left frontal", "right frontal", "left parietal", "right temporal", "occipital", "cerebellar",
          "periventricular", "basal ganglia", "brainstem", "thalamic"]


def queries(n: int) -> list[str]:
    """n different query texts (finding x place x phrasing)."""
    out = []
    i = 0
    while len(out) < n:
        f, p = FINDINGS[i % len(FINDINGS)], PLACES[(i // len(FINDINGS)) % len(PLACES)]
        out.append(f"{p} {f}" + ("" if i < 200 else f" case {i}"))
        i += 1
    return out


def pct(values: list[float], q: float) -> float:
    values = sorted(values)
    return values[min(len(values) - 1, int(round(q * (len(values) - 1))))]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(model: Path, index: Path, work: Path, device: str) -> tuple[subprocess.Popen, str, str]:
    token = secrets.token_urlsafe(24)
    token_file = work / "token"
    token_file.write_text(token)
    token_file.chmod(0o600)
    port = free_port()
    log = open(work / "server.log", "wb")
    proc = subprocess.Popen([sys.executable, "-m", "hlip_engine.cli", "serve", "--model", str(model), "--index",
                             str(index), "--port", str(port), "--token-file", str(token_file), "--device", device,
                             "--log-level", "warning"], cwd=REPO, stdout=log, stderr=subprocess.STDOUT,
                            start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    for _ in range(600):
        if proc.poll() is not None:
            raise SystemExit(f"hlip serve exited: {(work / 'server.log').read_text()[-2000:]}")
        try:
            urllib.request.urlopen(url + "/v1/health", timeout=2).read()
            return proc, url, token
        except OSError:
            time.sleep(0.2)
    proc.kill()
    raise SystemExit("hlip serve did not start")


def rss_mb(pid: int) -> float:
    import psutil

    return psutil.Process(pid).memory_info().rss / 2**20


def timed_calls(fn, items, clients: int) -> tuple[list[float], int, float]:
    """Run fn(item) for every item over ``clients`` threads; (latencies s, errors, wall s)."""
    latencies: list[float] = []
    errors = 0
    lock = threading.Lock()

    def one(item):
        nonlocal errors
        t0 = time.perf_counter()
        try:
            fn(item)
        except Exception as e:  # noqa: BLE001 - counted, first few printed
            with lock:
                errors += 1
                if errors <= 3:
                    print(f"  error: {e}", file=sys.stderr)
            return
        dt = time.perf_counter() - t0
        with lock:
            latencies.append(dt)

    t0 = time.perf_counter()
    with ThreadPoolExecutor(clients) as pool:
        list(pool.map(one, items))
    return latencies, errors, time.perf_counter() - t0


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default=str(DEMO))
    ap.add_argument("--library", help="a study library with --index (default: phantom studies made here)")
    ap.add_argument("--index", help="index of --library built with --model")
    ap.add_argument("--studies", type=int, default=8, help="phantom studies to make (default 8)")
    ap.add_argument("--requests", type=int, default=1000)
    ap.add_argument("--rounds", type=int, default=3, help="zero-shot rounds of 8 studies (default 3)")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--out", help="write the figures as JSON here")
    args = ap.parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

    import torch

    from hlip_engine import search as retrieval
    from hlip_engine.cli import main as hlip
    from hlip_engine.io import load_study
    from hlip_engine.model import load_model
    from hlip_engine.remote import RemoteEngine
    from hlip_engine.zeroshot import build_classifier

    work = Path(tempfile.mkdtemp(prefix="serve_bench_"))
    if args.library and args.index:
        library, index_dir = Path(args.library), Path(args.index)
    else:
        from hlip_engine.demo import make_studies

        library, index_dir = work / "lib", work / "lib.index"
        make_studies(library, args.studies, seed=7)
        assert hlip(["index", "build", str(library), "--model", args.model, "--index", str(index_dir),
                     "--workers", "0", "--no-progress", "--device", args.device]) == 0
    proc, url, token = start_server(Path(args.model), index_dir, work, args.device)
    figures: dict = {"device": args.device, "cpus": os.cpu_count(), "requests": args.requests,
                     "torch_threads": torch.get_num_threads()}
    try:
        model = load_model(args.model, device=args.device)
        index = retrieval.open_index(index_dir, model)
        client = RemoteEngine(url, token)
        info = client.info()
        figures["index_size"] = info["index"]["size"]
        texts = queries(args.requests)
        for q in texts[:20]:  # warm both sides
            client.search(q, k=10)
            retrieval.search(index, retrieval.text_vector(model, q), 10)

        text_lock = threading.Lock()

        def local_search(q):
            with text_lock:
                vec = retrieval.text_vector(model, q)
            return retrieval.search(index, vec, 10)

        def http_search(q):
            return client.search(q, k=10)

        for clients in (1, 8):
            loc, loc_err, loc_wall = timed_calls(local_search, texts, clients)
            rem, rem_err, rem_wall = timed_calls(http_search, texts, clients)
            row = {"local_p50_ms": 1e3 * statistics.median(loc), "local_p95_ms": 1e3 * pct(loc, 0.95),
                   "http_p50_ms": 1e3 * statistics.median(rem), "http_p95_ms": 1e3 * pct(rem, 0.95),
                   "local_errors": loc_err, "http_errors": rem_err,
                   "local_qps": len(loc) / loc_wall, "http_qps": len(rem) / rem_wall}
            row["overhead_p50_ms"] = row["http_p50_ms"] - row["local_p50_ms"]
            figures[f"search_{clients}_clients"] = row
            print(f"search, {clients} client(s): local p50 {row['local_p50_ms']:.1f} ms, HTTP p50 "
                  f"{row['http_p50_ms']:.1f} ms (+{row['overhead_p50_ms']:.1f}), p95 {row['local_p95_ms']:.1f} / "
                  f"{row['http_p95_ms']:.1f} ms, errors {loc_err}/{rem_err}", flush=True)

        # zero-shot: 8 concurrent uploads vs one local batch of the same 8 studies
        folders = sorted(p for p in library.iterdir() if p.is_dir())[:8]
        folders = (folders * 8)[:8]
        clf = build_classifier(model, prompt_set="pub-brain-5")
        client.zeroshot(folders[0], prompt_set="pub-brain-5")  # warm: the server builds its classifier once

        def local_round():
            prepared = [model.prepare(load_study(f)).tensor for f in folders]
            vecs = retrieval.encode_prepared(model, prepared)
            return [clf.classify(torch.from_numpy(v)) for v in vecs]

        local_round()
        t0 = time.perf_counter()
        for _ in range(args.rounds):
            local_round()
        local_tp = 8 * args.rounds / (time.perf_counter() - t0)
        before = info["server"]["batches"]
        lat, err, wall = timed_calls(lambda f: client.zeroshot(f, prompt_set="pub-brain-5"), folders * args.rounds, 8)
        after = client.info()["server"]
        http_tp = len(lat) / wall
        figures["zeroshot"] = {"local_batch_studies_per_s": local_tp, "http_8_uploads_studies_per_s": http_tp,
                               "ratio": http_tp / local_tp, "errors": err, "forwards": after["batches"] - before,
                               "largest_batch": after["largest_batch"], "studies": len(lat)}
        print(f"zero-shot: local batch {local_tp:.2f} studies/s, 8 concurrent uploads {http_tp:.2f} studies/s "
              f"(x{http_tp / local_tp:.2f}); {len(lat)} studies in {after['batches'] - before} forwards, "
              f"largest batch {after['largest_batch']}, errors {err}", flush=True)

        # memory over --requests mixed requests
        samples = [rss_mb(proc.pid)]
        for i, q in enumerate(queries(args.requests)):
            if i % 20 == 19:
                client.embed(folders[i % len(folders)])
            else:
                client.search(q + " again", k=10)
            if i % 100 == 99:
                samples.append(rss_mb(proc.pid))
        figures["rss_mb"] = [round(s, 1) for s in samples]
        figures["rss_growth_mb_after_first_100"] = round(samples[-1] - samples[1], 1) if len(samples) > 2 else 0.0
        print(f"server RSS (MB) every 100 requests: {figures['rss_mb']} "
              f"(growth after the first 100: {figures['rss_growth_mb_after_first_100']} MB)", flush=True)
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
        shutil.rmtree(work, ignore_errors=True)
    if args.out:
        Path(args.out).write_text(json.dumps(figures, indent=1))
    print(json.dumps(figures, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
