"""Study-index benchmark: build time, query latency, recall@10 against exact search, resident memory.

Vectors: 512-d, L2-normalised, drawn from a mixture of ~1,000 Gaussian clusters with unequal sizes
(Dirichlet weights) and unequal spreads (cosine to the centre 0.6-0.9): real study embeddings cluster
by protocol and finding, and uniform random vectors would be no fair stand-in. Queries are fresh
draws from the same mixture. Ground truth is an exact float32 search over the generated vectors.

    .venv/bin/python bench/index_bench.py --n 1000000        # the 1M-study figures
    .venv/bin/python bench/index_bench.py --n 100000 --text  # plus text-query encoding on CPU (MiniLM)

Phases run in separate processes so that each resident-memory peak (VmHWM) is its own:
build (IndexBuild.create/add/commit), query (StudyIndex.open + single-query searches), and the
exact IndexFlatIP baseline (which needs n x dim x 4 bytes; 2 GB at 1M).
"""
from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from hlip_engine.index import IndexBuild, StudyIndex  # noqa: E402
from hlip_engine.index.faiss_index import recall_at  # noqa: E402

CHUNK = 20_000


class Mixture:
    """A reproducible mixture of Gaussian clusters on the unit sphere."""

    def __init__(self, dim: int, clusters: int, seed: int = 0):
        rng = np.random.default_rng(seed)
        self.dim = dim
        self.centres = rng.standard_normal((clusters, dim), dtype=np.float32)
        self.centres /= np.linalg.norm(self.centres, axis=1, keepdims=True)
        self.weights = rng.dirichlet(np.full(clusters, 2.0))
        # noise norm relative to the unit centre: 0.5 -> cosine ~0.9 to the centre, 1.2 -> ~0.64
        self.spread = rng.uniform(0.5, 1.2, clusters).astype(np.float32)

    def draw(self, m: int, seed: int) -> np.ndarray:
        rng = np.random.default_rng(seed)
        label = rng.choice(len(self.centres), size=m, p=self.weights)
        x = self.centres[label] + (self.spread[label, None] / np.sqrt(self.dim)) * rng.standard_normal(
            (m, self.dim), dtype=np.float32)
        return x / np.linalg.norm(x, axis=1, keepdims=True)


def memory_mb() -> dict:
    """Current and peak resident set size of this process (Linux /proc; peak via getrusage elsewhere)."""
    out = {}
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(("VmRSS", "VmHWM")):
                key, val = line.split(":")
                out[key] = round(int(val.split()[0]) / 1024, 1)
    except OSError:
        import resource

        out["VmHWM"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)
    return out


def fake_metadata(start: int, m: int) -> list[dict]:
    mods = ("MR", "CT")
    return [{"key": f"s{i:08d}", "path": f"/archive/{i // 1000:04d}/{i:08d}", "study_uid": f"1.2.826.0.1.{i}",
             "date": f"20{10 + i % 15:02d}{1 + i % 12:02d}{1 + i % 28:02d}", "modality": mods[i % 2],
             "description": "MRI BRAIN W/WO" if i % 2 == 0 else "CT HEAD WO", "n_scans": 1 + i % 9}
            for i in range(start, start + m)]


def build_phase(args, folder: Path, queries: np.ndarray, q) -> None:
    """Generate, add and commit; exact ground truth is computed on the side (not timed)."""
    mix = Mixture(args.dim, args.clusters)
    index = IndexBuild.create(folder, args.dim, "bench-mixture", recipe="bench")
    t_store = cpu_store = 0.0
    best_s = np.full((len(queries), 0), -np.inf, np.float32)
    best_i = np.zeros((len(queries), 0), np.int64)
    for start in range(0, args.n, CHUNK):
        m = min(CHUNK, args.n - start)
        x = mix.draw(m, seed=1000 + start // CHUNK)
        for sub in range(0, m, 10_000):  # exact top-10, 10k rows at a time to keep memory flat
            s = queries @ x[sub:sub + 10_000].T  # (q, rows)
            kk = min(10, s.shape[1])
            part = np.argpartition(-s, kk - 1, axis=1)[:, :kk]
            s = np.concatenate([best_s, np.take_along_axis(s, part, 1)], 1)
            i = np.concatenate([best_i, part + start + sub], 1)
            top = np.argsort(-s, axis=1)[:, :10]
            best_s, best_i = np.take_along_axis(s, top, 1), np.take_along_axis(i, top, 1)
        meta = fake_metadata(start, m)
        t, c = time.perf_counter(), _cpu_s()
        index.add(x, meta)
        t_store += time.perf_counter() - t
        cpu_store += _cpu_s() - c
    add_mem = memory_mb()
    _reset_peak_rss()  # so that VmHWM below is the commit's own peak, not the data generator's
    cpu0 = _cpu_s()
    t = time.perf_counter()
    info = index.commit(index_type=args.index_type).info
    t_commit = time.perf_counter() - t
    q.put({"store_s": t_store, "commit_s": t_commit, "build_s": t_store + t_commit, "index": info["index"],
           "commit_cpu_s": _cpu_s() - cpu0, "store_cpu_s": cpu_store, "truth": best_i, "mem": memory_mb(), "add_mem": add_mem, "disk_mb": _disk_mb(folder)})


def query_phase(args, folder: Path, queries: np.ndarray, q) -> None:
    t = time.perf_counter()
    index = StudyIndex.open(folder)
    t_open = time.perf_counter() - t
    lat, found = [], []
    for v in queries:
        t = time.perf_counter()
        _, ids = index.search(v[None], 10)
        lat.append(time.perf_counter() - t)
        found.append(ids[0])
    filtered_lat = []
    for v in queries[:200]:
        t = time.perf_counter()
        index.search(v[None], 10, modality="CT")
        filtered_lat.append(time.perf_counter() - t)
    q.put({"open_s": t_open, "lat": lat, "found": np.array(found), "filtered_lat": filtered_lat, "mem": memory_mb()})


def flat_phase(args, folder: Path, queries: np.ndarray, q) -> None:
    import faiss

    index = StudyIndex.open(folder, verify=False)
    faiss.omp_set_num_threads(1)  # as the index does for single queries (fair on a shared machine)
    flat = faiss.IndexFlatIP(args.dim)
    for _, rows in index._embeddings.chunks():
        flat.add(rows)
    lat, found = [], []
    for v in queries[: args.flat_queries]:
        t = time.perf_counter()
        _, ids = flat.search(v[None], 10)
        lat.append(time.perf_counter() - t)
        found.append(ids[0])
    q.put({"lat": lat, "found": np.array(found), "mem": memory_mb()})


def text_phase(q) -> None:
    """Encode one free-text query at a time with the default text tower (MiniLM) on CPU.

    Timed with 1 and with 2 intra-op threads: a 6-token query is too small to split, and on a busy
    machine a second thread mostly waits (the search command encodes with one thread).
    """
    import torch

    from hlip_engine.model import create_model

    model = create_model("hlip_tiny").eval()
    texts = ["acute left MCA stroke", "ring-enhancing lesion with oedema", "normal study",
             "subdural haematoma with midline shift", "glioblastoma", "chronic small vessel disease"]
    out = {}
    with torch.inference_mode():
        for threads in (1, 2):
            torch.set_num_threads(threads)
            model.encode_text(texts[:1])  # warm-up: tokenizer + first-call allocations
            lat = []
            for i in range(60):
                t = time.perf_counter()
                model.encode_text([texts[i % len(texts)]])
                lat.append(time.perf_counter() - t)
            out[threads] = lat
    q.put(out)


def _reset_peak_rss() -> None:
    """Linux: writing 5 to clear_refs resets VmHWM to the current RSS (no-op elsewhere)."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        pass


def _cpu_s() -> float:
    """CPU seconds of this process (user + system): what the build costs on an idle machine."""
    import resource

    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def _disk_mb(folder: Path) -> dict:
    def size(p: Path) -> float:
        return sum(f.stat().st_size for f in p.rglob("*") if f.is_file()) / 2**20

    return {"published": round(size(folder / "versions"), 1), "build_store": round(size(folder / "build"), 1)}


def _run(target, *args):
    ctx = mp.get_context("spawn")
    q = ctx.Queue()
    p = ctx.Process(target=target, args=(*args, q))
    p.start()
    out = q.get()
    p.join()
    if p.exitcode:
        raise SystemExit(f"{target.__name__} failed with exit code {p.exitcode}")
    return out


def ms(values) -> str:
    v = np.asarray(values) * 1e3
    return f"p50 {np.percentile(v, 50):.3f} ms, p95 {np.percentile(v, 95):.3f} ms"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=1_000_000, help="studies in the library")
    ap.add_argument("--dim", type=int, default=512)
    ap.add_argument("--clusters", type=int, default=1000)
    ap.add_argument("--queries", type=int, default=1000)
    ap.add_argument("--flat-queries", type=int, default=50, help="queries timed on the exact Flat baseline")
    ap.add_argument("--no-flat", action="store_true", help="skip the exact Flat baseline")
    ap.add_argument("--index-type", choices=("auto", "flat", "ivf"), default="auto",
                    help="force the FAISS index type (default: the size rule)")
    ap.add_argument("--text", action="store_true", help="also time text-query encoding (MiniLM, CPU)")
    ap.add_argument("--dir", type=Path, help="where to build the index (default: a temporary folder)")
    ap.add_argument("--json", type=Path, help="also write the figures to this JSON file")
    args = ap.parse_args(argv)
    if args.n < 20:
        ap.error("--n must be at least 20")

    folder = args.dir or Path(tempfile.mkdtemp(prefix="hlip-index-bench-")) / "index"
    if folder.exists():
        shutil.rmtree(folder)
    queries = Mixture(args.dim, args.clusters).draw(args.queries, seed=7)
    print(f"library: {args.n:,} studies x {args.dim}-d from {args.clusters} clusters; {args.queries} queries; "
          f"{os.cpu_count()} CPU cores", flush=True)
    try:
        b = _run(build_phase, args, folder, queries)
        print(f"build: {b['build_s']:.1f} s (add {b['store_s']:.1f} s + commit {b['commit_s']:.1f} s, "
              f"CPU time add {b['store_cpu_s']:.1f} s + commit {b['commit_cpu_s']:.1f} s; "
              f"load average {os.getloadavg()[0]:.1f}), "
              f"index {json.dumps(b['index'])}, peak RSS: adding (with the bench's data generator) "
              f"{b['add_mem'].get('VmHWM')} MB, commit {b['mem'].get('VmHWM')} MB; disk MB {b['disk_mb']}", flush=True)
        r = _run(query_phase, args, folder, queries)
        recall = recall_at(r["found"], b["truth"])
        print(f"query (k=10, one at a time): {ms(r['lat'])}; recall@10 vs exact {recall:.4f}; "
              f"open {r['open_s']:.2f} s; peak RSS {r['mem'].get('VmHWM')} MB "
              f"(now {r['mem'].get('VmRSS')} MB)", flush=True)
        print(f"query with modality filter (half the library): {ms(r['filtered_lat'])}", flush=True)
        figures = {"n": args.n, "dim": args.dim, "build_s": b["build_s"],
                   "build_cpu_s": b["store_cpu_s"] + b["commit_cpu_s"], "commit_peak_rss_mb": b["mem"].get("VmHWM"),
                   "query_p50_ms": float(np.median(r["lat"]) * 1e3), "recall_at_10": recall,
                   "query_peak_rss_mb": r["mem"].get("VmHWM"), "index": b["index"]}
        if not args.no_flat:
            f = _run(flat_phase, args, folder, queries)
            flat_recall = recall_at(f["found"], b["truth"][: len(f["found"])])
            print(f"exact IndexFlatIP baseline: {ms(f['lat'])}; recall@10 {flat_recall:.4f} (float16 storage); "
                  f"peak RSS {f['mem'].get('VmHWM')} MB", flush=True)
            figures["flat_p50_ms"] = float(np.median(f["lat"]) * 1e3)
        if args.text:
            t = _run(text_phase)
            for threads, lat in t.items():
                print(f"text query encoding (MiniLM, CPU, one query, {threads} thread{'s' * (threads > 1)}): "
                      f"{ms(lat)}", flush=True)
            figures["text_p50_ms"] = float(np.median(t[1]) * 1e3)
        if args.json:
            args.json.write_text(json.dumps(figures, indent=2))
    finally:
        if args.dir is None:
            shutil.rmtree(folder.parent, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
