"""Relevance map vs one forward pass of the same study: time and peak memory (issue 5).

Model: ViT-B token1176 (``vit_base_multiscan_h2_token1176``, random weights, 48 x 224 x 224 per scan,
6 x 14 x 14 tokens per scan), text tower all-MiniLM-L6-v2 (the prompt's embedding is a constant of the
map; its cost is included in the relevance time). Target: relevance <= 1.5 x the forward in time and
peak memory for a 40-scan study (the official dense method needs 79 GB at 10 scans, fails at 20).

  python bench/attention_bench.py                      # GPU if present: 10 and 40 scans, bf16 + fp32
  python bench/attention_bench.py --device cpu --scans 4 --dtype fp32     # this machine's CPU case

Memory. GPU: ``torch.cuda.max_memory_allocated`` (peak, weights and input included; the "extra" column
subtracts what was allocated before the call). CPU (Linux): tracemalloc cannot see torch's allocations, so
the kernel's own peak-RSS counter is used: freed memory is returned to the OS (malloc_trim), the
counter is reset (``/proc/self/clear_refs`` = 5), the call runs, and VmHWM - VmRSS(before) is the memory
the call itself added on top of the model and the input ("extra"); "peak" is the whole process's RSS.
Prints one JSON line per measurement; ``--json F`` (or $OUT/attention_bench.json) keeps them all.
"""
from __future__ import annotations

import argparse
import ctypes
import gc
import json
import os
import sys
import time
from functools import partial
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from hlip_engine.model import create_model  # noqa: E402
from hlip_engine.relevance import relevance  # noqa: E402

ARCH = "vit_base_multiscan_h2_token1176"


def make_model(device: torch.device, dtype: str):
    torch.manual_seed(0)
    model = create_model(ARCH, text_model="all-MiniLM-L6-v2").to(device).eval()
    model.autocast_dtype = torch.bfloat16 if dtype == "bf16" and device.type == "cuda" else None
    return model


def forward(model, x):
    with torch.no_grad():
        return model.encode_image(x)


def explain(model, x):
    return relevance(model, x, "glioma", templates=["This MRI study shows: {}."])


# -- GPU ------------------------------------------------------------------------------------------
def gpu_measure(fn, warm: int, iters: int) -> dict:
    for _ in range(warm):
        fn()
    torch.cuda.synchronize()
    base = torch.cuda.memory_allocated()
    torch.cuda.reset_peak_memory_stats()
    t = time.perf_counter()
    for _ in range(iters):
        fn()
    torch.cuda.synchronize()
    sec = (time.perf_counter() - t) / iters
    peak = torch.cuda.max_memory_allocated()
    return {"seconds": sec, "peak_gb": peak / 2**30, "extra_gb": (peak - base) / 2**30}


# -- CPU ------------------------------------------------------------------------------------------
def _status(key: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(key):
                return int(line.split()[1]) * 1024  # kB
    raise RuntimeError(f"{key} not in /proc/self/status")


def _reset_peak() -> None:
    """Give freed memory back to the OS, then restart the kernel's peak-RSS counter (VmHWM) at the current RSS."""
    gc.collect()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except OSError:  # not glibc: the freed memory may stay counted, the delta is then a lower bound
        pass
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")


def cpu_measure(fn, iters: int) -> dict:
    """Peak RSS the call adds on top of what was resident before (model, input), and its time."""
    _reset_peak()
    start = _status("VmRSS")
    t, cpu = time.perf_counter(), time.process_time()
    for _ in range(iters):
        fn()
    sec = (time.perf_counter() - t) / iters
    cpu = (time.process_time() - cpu) / iters  # CPU-seconds of all threads: what a busy machine can't hide
    peak = _status("VmHWM")
    return {"seconds": sec, "cpu_seconds": cpu, "peak_gb": peak / 2**30, "extra_gb": (peak - start) / 2**30}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--scans", type=int, nargs="+", default=None, help="default: 10 40 on GPU, 4 on CPU")
    ap.add_argument("--dtype", nargs="+", choices=("fp32", "bf16"), default=None,
                    help="default: bf16 fp32 on GPU, fp32 on CPU")
    ap.add_argument("--iters", type=int, default=None, help="timed repeats (default 5 GPU, 1 CPU)")
    ap.add_argument("--threads", type=int, default=None, help="CPU threads (default: torch's)")
    ap.add_argument("--json", default=None, help="write all results here (default $OUT/attention_bench.json)")
    args = ap.parse_args()

    device = torch.device(args.device)
    gpu = device.type == "cuda"
    if gpu:
        torch.backends.cuda.matmul.allow_tf32 = True  # the official demo's fp32 setting
        torch.backends.cudnn.allow_tf32 = True
    if args.threads:
        torch.set_num_threads(args.threads)
    scans = args.scans or ([10, 40] if gpu else [4])
    dtypes = args.dtype or (["bf16", "fp32"] if gpu else ["fp32"])
    iters = args.iters or (5 if gpu else 1)
    out_path = args.json or (os.path.join(os.environ["OUT"], "attention_bench.json") if os.environ.get("OUT") else None)
    results = []
    for dtype in dtypes:
        model = make_model(device, dtype)
        for n in scans:
            x = torch.randn(1, n, 1, 48, 224, 224, device=device)
            row = {"device": torch.cuda.get_device_name(device) if gpu else f"cpu x{torch.get_num_threads()}",
                   "dtype": dtype, "scans": n, "tokens": n * 1176}
            for name, fn in (("forward", partial(forward, model, x)), ("relevance", partial(explain, model, x))):
                r = gpu_measure(fn, 2, iters) if gpu else cpu_measure(fn, iters)
                row.update({f"{name}_{k}": round(v, 4) for k, v in r.items()})
            row["time_ratio"] = round(row["relevance_seconds"] / row["forward_seconds"], 3)
            if not gpu:
                row["cpu_time_ratio"] = round(row["relevance_cpu_seconds"] / row["forward_cpu_seconds"], 3)
            row["peak_ratio"] = round(row["relevance_peak_gb"] / row["forward_peak_gb"], 3)
            row["extra_ratio"] = round(row["relevance_extra_gb"] / max(row["forward_extra_gb"], 1e-9), 3)
            results.append(row)
            print(json.dumps(row), flush=True)
            if out_path:
                Path(out_path).write_text(json.dumps(results, indent=1))
            del x
            if gpu:
                torch.cuda.empty_cache()
        del model
    return 0


if __name__ == "__main__":
    sys.exit(main())
