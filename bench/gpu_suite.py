"""Every GPU measurement of the project in one call: one JSON document.

    bench/gpu_suite.sh              # on one H200, <= 8 minutes; JSON on stdout and in $OUT/gpu_suite.json
    bench/gpu_suite.sh --dry-run    # the same code paths on CPU at tiny sizes, < 2 minutes (tests run it)

Sections (each timed on its own; one that fails records its error and the others still run):
  encode      ViT-B token1176 visual tower, bf16 autocast, batch 8 studies x 10 scans: studies/s, eager and
              torch.compile'd (the anchors' case: official 80.5 / 89.7 studies/s on an H200)
  latency     one 40-scan study, bf16: seconds (official 97.9 ms)
  relevance   ``hlip_engine.relevance.relevance`` on that 40-scan study: time and peak memory against one
              forward pass of it (target <= 1.5x both)
  train       the training step of the visual tower (AdamW, bf16 autocast, loss mean(y^2): the official
              benchmark's step, as ``bench/train_bench.py --mode visual``), 8 x 8 scans, with and without
              gradient checkpointing: studies/s, peak memory (official 33.8 / 27.3 studies/s, 26.5 / 7.2 GB)
  faiss       exact inner-product search over 1M 512-d vectors through ``hlip_engine.index.faiss_index``
              (GPU when faiss has GPU support, else CPU with ``"gpu": false``)
  official    the official encoder measured beside ours (``.ref/official_bench.py``, see gpu_suite.sh);
              ``"ran": false`` with the reason when its files are not in ``.ref/``
Ratios against the official implementation's figures on an H200 (measured with the same benchmark as the
"official" section, table ``OFFICIAL`` below) come under "ratios" (ours / official; > 1 is better for speed,
< 1 is better for memory).

The text tower is a small random stand-in (the GPU machine holds no text weights, and no measurement
here uses text: the relevance prompt is given as an embedding).
"""
from __future__ import annotations

import argparse
import json
import math
import os
import platform
import statistics
import subprocess
import sys
import time
import traceback
from pathlib import Path

from _common import REPO, peak_tflops, sync, timed  # timed: median seconds after warm-up

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import numpy as np  # noqa: E402
import torch  # noqa: E402

# the official implementation on one H200 (its encoder and training step, measured by official_bench.py)
OFFICIAL = {"encode_bf16_8x10_studies_per_s": 80.5, "encode_compiled_8x10_studies_per_s": 89.7,
            "latency_bf16_1x40_s": 0.0979, "train_8x8_studies_per_s": 33.8, "train_8x8_peak_GiB": 26.5,
            "train_8x8_ckpt_studies_per_s": 27.3, "train_8x8_ckpt_peak_GiB": 7.2}

# sizes: the real case, and the dry run's (same code, tiny)
FULL = dict(arch="vit_base_multiscan_h2_token1176", batch=8, scans=10, latency_scans=40, train_batch=8,
            train_scans=8, faiss_n=1_000_000, faiss_dim=512, faiss_queries=1024, warmup=2, iters=5,
            official_timeout_s=210)
DRY = dict(arch="hlip_tiny", batch=2, scans=2, latency_scans=3, train_batch=2, train_scans=2, faiss_n=5000,
           faiss_dim=64, faiss_queries=64, warmup=1, iters=2, official_timeout_s=60)


# --- helpers ------------------------------------------------------------------------------------------
def reset_peak(device) -> None:
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)


def peak_gib(device) -> float | None:
    """Peak GPU memory since the last reset (None on CPU: the suite's CPU run checks code, not memory)."""
    return round(torch.cuda.max_memory_allocated(device) / 2**30, 3) if device.type == "cuda" else None


def ratio(a, b) -> float | None:
    return round(a / b, 3) if a and b else None


def suite_model(arch: str, device):
    """HLIPModel with the registered visual tower (random weights) and a small random text stand-in."""
    from hlip_engine.model import HLIPModel, get_config
    from hlip_engine.model.text import TextTower

    torch.manual_seed(0)
    cfg = get_config(arch)
    text = TextTower.build("stand-in", int(cfg["embed_dim"]), 32, pretrained=False, hf_config={
        "model_type": "bert", "vocab_size": 512, "hidden_size": 64, "num_hidden_layers": 1,
        "num_attention_heads": 2, "intermediate_size": 128, "max_position_embeddings": 64})
    model = HLIPModel(cfg, text).to(device).eval()
    model.autocast_dtype = torch.bfloat16 if device.type == "cuda" else None  # as load_model on CUDA
    return model


def studies(b: int, n: int, model, device, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(b, n, 1, *model.visual.cfg.input_size, generator=g).to(device)


# --- sections -----------------------------------------------------------------------------------------
def encode(model, device, size) -> dict:
    """Batch b x n scans through model.encode_image (bf16 autocast on CUDA), eager then compiled."""
    x = studies(size["batch"], size["scans"], model, device)
    out = {"batch": size["batch"], "scans": size["scans"], "precision": "bf16" if device.type == "cuda" else "fp32"}

    def run(m):
        with torch.inference_mode():
            return m.encode_image(x)

    reset_peak(device)
    s = timed(lambda: run(model), device, size["warmup"], size["iters"])
    out["eager"] = {"s_per_batch": round(s, 5), "studies_per_s": round(size["batch"] / s, 2),
                    "peak_GiB": peak_gib(device)}
    reference = run(model).float()
    eager_visual = model.visual
    t0 = time.perf_counter()
    # the dry run traces the same graph (dynamo + AOT autograd) without the minute of C++ code generation
    backend = "inductor" if device.type == "cuda" else "aot_eager"
    model.visual = torch.compile(eager_visual, backend=backend)
    try:
        first = run(model).float()
        sync(device)
        compile_s = time.perf_counter() - t0
        reset_peak(device)
        s = timed(lambda: run(model), device, size["warmup"], size["iters"])
    finally:
        model.visual = eager_visual
    out["compiled"] = {"s_per_batch": round(s, 5), "studies_per_s": round(size["batch"] / s, 2),
                       "compile_s": round(compile_s, 1), "backend": backend, "peak_GiB": peak_gib(device),
                       "cosine_to_eager_min": round(float((first * reference).sum(-1).min()), 5)}
    return out


def latency(model, device, size) -> dict:
    x = studies(1, size["latency_scans"], model, device, seed=1)

    def run():
        with torch.inference_mode():
            return model.encode_image(x)

    reset_peak(device)
    s = timed(run, device, size["warmup"], size["iters"])
    return {"scans": size["latency_scans"], "s": round(s, 5), "peak_GiB": peak_gib(device)}


def relevance_vs_forward(model, device, size) -> dict:
    """hlip_engine.relevance.relevance on one study vs one forward pass of it: time and peak memory."""
    from hlip_engine.relevance import relevance

    x = studies(1, size["latency_scans"], model, device, seed=2)
    prompt = torch.nn.functional.normalize(torch.randn(model.embed_dim, generator=torch.Generator().manual_seed(3)),
                                           dim=0)

    def forward():
        with torch.no_grad():
            return model.encode_image(x)

    def explain():
        return relevance(model, x, text_embedding=prompt, volumes=False)

    reset_peak(device)
    base = torch.cuda.memory_allocated(device) / 2**30 if device.type == "cuda" else None
    fwd_s = timed(forward, device, size["warmup"], size["iters"])
    fwd_mem = peak_gib(device)
    reset_peak(device)
    rel_s = timed(explain, device, 1, max(2, size["iters"] // 2))
    rel_mem = peak_gib(device)
    tokens = explain().tokens  # [N, d, h, w]
    return {"scans": size["latency_scans"], "relevance_s": round(rel_s, 5), "forward_s": round(fwd_s, 5),
            "time_ratio": ratio(rel_s, fwd_s), "relevance_peak_GiB": rel_mem, "forward_peak_GiB": fwd_mem,
            "memory_ratio": ratio(rel_mem, fwd_mem), "allocated_before_GiB": round(base, 3) if base else base,
            "tokens_shape": list(tokens.shape), "tokens_finite": bool(np.isfinite(tokens).all()),
            "tokens_positive": bool(tokens.sum() > 0)}


def train(device, size) -> list[dict]:
    """The official benchmark's training step of the visual tower, with and without gradient checkpointing."""
    rows = [_train_step(device, size, ckpt) for ckpt in (False, True)]
    return rows


def _train_step(device, size, ckpt: bool) -> dict:
    from hlip_engine.model.vit import flops_per_study

    bf16 = device.type == "cuda"
    model = suite_model(size["arch"], device)
    visual = model.visual.train()
    visual.set_grad_checkpointing(ckpt)
    x = studies(size["train_batch"], size["train_scans"], model, device, seed=4)
    del model  # the text stand-in is not trained here
    opt = torch.optim.AdamW(visual.parameters(), lr=1e-5, fused=True if device.type == "cuda" else None)
    reset_peak(device)

    def step():
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
            y = visual(x)
        y.float().pow(2).mean().backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    s = timed(step, device, size["warmup"] + 1, size["iters"] + 3)
    sps = size["train_batch"] / s
    peak = peak_tflops(device, 0.0)
    fwd = flops_per_study(visual.cfg, size["train_scans"])
    row = {"grad_checkpointing": ckpt, "batch": size["train_batch"], "scans": size["train_scans"],
           "precision": "bf16" if bf16 else "fp32", "s_per_step": round(s, 5), "studies_per_s": round(sps, 2),
           "peak_GiB": peak_gib(device), "mfu": round(3 * fwd * sps / (peak * 1e12), 4) if peak else None}
    if device.type == "cuda":
        del opt, visual, x
        torch.cuda.empty_cache()
    return row


def faiss_search(device, size) -> dict:
    """Exact inner-product search (the index's 'flat' plan) over n unit vectors, GPU when FAISS has it."""
    from hlip_engine.index import faiss_index

    n, dim, q = size["faiss_n"], size["faiss_dim"], size["faiss_queries"]
    g = torch.Generator(device=device.type).manual_seed(5) if device.type == "cuda" else torch.Generator().manual_seed(5)
    chunk = 131072
    t0 = time.perf_counter()

    def chunks():
        for start in range(0, n, chunk):
            rows = torch.randn(min(chunk, n - start), dim, device=device, generator=g)
            yield torch.nn.functional.normalize(rows, dim=1).cpu().numpy()

    plan = {"type": "flat"}
    index = faiss_index.build(dim, plan, chunks, np.zeros((0, dim), np.float32))
    build_s = time.perf_counter() - t0
    gpu = faiss_index.gpu_available()
    searcher = faiss_index.Searcher(index, plan, None, use_gpu=gpu)
    picks = np.random.default_rng(6).choice(n, size=q, replace=False)
    queries = np.stack([index.reconstruct(int(i)) for i in picks]).astype(np.float32)
    searcher.search(queries[:8], 10)  # warm-up
    t = time.perf_counter()
    _scores, ids = searcher.search(queries, 10)
    batch_s = time.perf_counter() - t
    singles = []
    for i in range(min(20, q)):
        t = time.perf_counter()
        searcher.search(queries[i:i + 1], 10)
        singles.append(time.perf_counter() - t)
    return {"n": n, "dim": dim, "gpu": gpu, "fallback": None if gpu else "faiss-cpu (no GPU support in this faiss)",
            "faiss": getattr(__import__("faiss"), "__version__", "?"), "build_s": round(build_s, 2),
            "batch_queries": q, "batch_s": round(batch_s, 4), "queries_per_s": round(q / batch_s, 1),
            "single_query_ms": round(1000 * statistics.median(singles), 3),
            "self_found_at_1": float((ids[:, 0] == picks).mean())}


def official(device, size, dry_run: bool) -> dict:
    """Run the official encoder's benchmark beside ours (files carried under .ref/; see gpu_suite.sh)."""
    ref = Path(os.environ.get("REF_DIR", REPO / ".ref"))
    script, code = ref / "official_bench.py", ref / "hlip" / "visual_encoder.py"
    missing = [str(p) for p in (script, code) if not p.exists()]
    if missing:
        return {"ran": False, "why": f"not carried: {', '.join(missing)} (gpu_suite.sh --prepare makes them)"}
    if device.type != "cuda":
        return {"ran": False, "why": "the official benchmark is CUDA-only; its files are in place",
                "carried_code_builds": _official_builds(ref)}
    out = Path(os.environ.get("TMPDIR", "/tmp")) / "official_out"
    out.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "REF_DIR": str(ref), "OUT": str(out), "PYTHONUNBUFFERED": "1"}
    t0 = time.perf_counter()
    try:
        proc = subprocess.run([sys.executable, str(script)], env=env, capture_output=True, text=True,
                              timeout=size["official_timeout_s"])
        status = {"returncode": proc.returncode, "stderr_tail": proc.stderr[-600:] if proc.returncode else ""}
    except subprocess.TimeoutExpired:
        status = {"returncode": None, "timed_out_after_s": size["official_timeout_s"]}
    rows = json.loads((out / "ref_bench.json").read_text()) if (out / "ref_bench.json").exists() else []
    return {"ran": True, "seconds": round(time.perf_counter() - t0, 1), **status, "results": rows}


def _official_builds(ref: Path) -> dict:
    """CPU check of what the GPU run carries: timm from .whl/ + the official code build the anchors' model."""
    import importlib.util

    wheels = sorted((REPO / ".whl").glob("timm-*.whl"))
    if not wheels:
        return {"checked": False, "why": "no timm wheel in .whl/ (gpu_suite.sh --prepare)"}
    if importlib.util.find_spec("torchvision") is None:  # timm imports it; the GPU machine has it
        return {"checked": False, "why": "timm needs torchvision, which this Python lacks", "timm_wheel": wheels[-1].name}
    site = Path(os.environ.get("TMPDIR", "/tmp")) / f"gpu_suite_site_{os.getpid()}"
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-index", "--no-deps", "--target", str(site),
                    str(wheels[-1])], check=True, capture_output=True)
    code = ("import sys, json; sys.path.insert(0, sys.argv[1]); import timm; from hlip import visual_encoder; "
            "m = timm.create_model('vit_base_multiscan_h2_token1176', pretrained=False); "
            "print(json.dumps({'timm': timm.__version__, 'params_M': sum(p.numel() for p in m.parameters()) / 1e6}))")
    env = {**os.environ, "PYTHONPATH": str(site)}
    proc = subprocess.run([sys.executable, "-c", code, str(ref)], env=env, capture_output=True, text=True, timeout=120)
    if proc.returncode:
        raise RuntimeError(f"the carried official code does not build: {proc.stderr[-400:]}")
    return {"checked": True, **json.loads(proc.stdout.strip().splitlines()[-1])}


# --- the run ------------------------------------------------------------------------------------------
def ratios(doc: dict) -> dict:
    enc, lat, tr = doc.get("encode") or {}, doc.get("latency") or {}, doc.get("train") or []
    by_ckpt = {r["grad_checkpointing"]: r for r in tr if isinstance(r, dict)}
    return {
        "encode_eager_vs_official": ratio((enc.get("eager") or {}).get("studies_per_s"),
                                          OFFICIAL["encode_bf16_8x10_studies_per_s"]),
        "encode_compiled_vs_official_compiled": ratio((enc.get("compiled") or {}).get("studies_per_s"),
                                                      OFFICIAL["encode_compiled_8x10_studies_per_s"]),
        "latency_40_scans_official_over_ours": ratio(OFFICIAL["latency_bf16_1x40_s"], lat.get("s")),
        "train_vs_official": ratio((by_ckpt.get(False) or {}).get("studies_per_s"), OFFICIAL["train_8x8_studies_per_s"]),
        "train_memory_vs_official": ratio((by_ckpt.get(False) or {}).get("peak_GiB"), OFFICIAL["train_8x8_peak_GiB"]),
        "train_ckpt_vs_official": ratio((by_ckpt.get(True) or {}).get("studies_per_s"),
                                        OFFICIAL["train_8x8_ckpt_studies_per_s"]),
        "train_ckpt_memory_vs_official": ratio((by_ckpt.get(True) or {}).get("peak_GiB"),
                                               OFFICIAL["train_8x8_ckpt_peak_GiB"]),
    }


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--dry-run", action="store_true", help="CPU, tiny sizes, same code paths (< 2 minutes)")
    p.add_argument("--out", default=os.environ.get("OUT", ""), help="folder for gpu_suite.json (default $OUT)")
    p.add_argument("--only", action="append", help="run only these sections (repeatable)")
    args = p.parse_args(argv)
    size = DRY if args.dry_run else FULL
    device = torch.device("cpu" if args.dry_run or not torch.cuda.is_available() else "cuda")
    if args.dry_run:
        torch.set_num_threads(min(2, os.cpu_count() or 1))
    else:
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
        torch.backends.cudnn.benchmark = True
    t_start = time.perf_counter()
    doc = {"suite": "hlip gpu_suite", "dry_run": args.dry_run, "device": torch.cuda.get_device_name(device)
           if device.type == "cuda" else f"cpu ({platform.machine()})", "torch": torch.__version__,
           "python": platform.python_version(), "arch": size["arch"], "errors": {}, "section_s": {}}
    model = suite_model(size["arch"], device)
    doc["visual_params_M"] = round(sum(q.numel() for q in model.visual.parameters()) / 1e6, 2)
    sections = [("encode", lambda: encode(model, device, size)), ("latency", lambda: latency(model, device, size)),
                ("relevance", lambda: relevance_vs_forward(model, device, size)),
                ("train", lambda: train(device, size)), ("faiss", lambda: faiss_search(device, size)),
                ("official", lambda: official(device, size, args.dry_run))]
    for name, fn in sections:
        if args.only and name not in args.only:
            continue
        if name == "train":  # it builds its own models: the encoding model leaves the GPU first
            model.to("cpu")
            if device.type == "cuda":
                torch.cuda.empty_cache()
        t0 = time.perf_counter()
        try:
            doc[name] = fn()
        except Exception as e:  # noqa: BLE001 - one failing section must not lose the others' figures
            doc[name] = None
            doc["errors"][name] = f"{type(e).__name__}: {str(e)[:400]}"
            traceback.print_exc()
            if device.type == "cuda":
                torch.cuda.empty_cache()
        doc["section_s"][name] = round(time.perf_counter() - t0, 1)
    doc["ratios"] = ratios(doc)
    if args.dry_run:  # tiny CPU figures against H200 ones mean nothing: the path ran, the numbers are void
        doc["ratios"] = {k: None for k in doc["ratios"]}
    doc["official_figures"] = OFFICIAL
    doc["seconds"] = round(time.perf_counter() - t_start, 1)
    text = json.dumps(doc, indent=1, default=lambda o: o if not isinstance(o, float) or math.isfinite(o) else None)
    print(text, flush=True)
    if args.out:
        from hlip_engine.atomic import atomic_write_text

        atomic_write_text(Path(args.out) / "gpu_suite.json", text + "\n")
    return 1 if doc["errors"] else 0


if __name__ == "__main__":
    sys.exit(main())
