"""Study-encoding speed of the HLIP visual tower, on the anchors' model and input.

Model ``vit_base_multiscan_h2_token1176`` (ViT-B, 48 x 224 x 224 per scan, 1,176 tokens per scan), random
weights, visual tower only -- the case the official implementation was measured on (official on an
H200: bf16 batch 8 x 10 scans 80.5 studies/s; 1 x 10 scans 14.0 ms; 1 x 40 scans 97.9 ms).

GPU (CUDA): for each precision mode -- ``autocast`` (fp32 weights, bf16 autocast: what load_model does)
and ``bf16`` (weights cast to bf16) -- batch 8 x 10 scans (studies/s), latency of 1 x 1, 1 x 10 and
1 x 40 scans, peak memory, and the cosine of each bf16 embedding to the fp32 one (target >= 0.999).
SDPA picks flash / memory-efficient kernels (no masks are used). ``--compile`` adds torch.compile.
CPU: a reduced set (1 study x 1 and x 2 scans, fp32) in seconds.

    .venv/bin/python bench/encode_bench.py [--device cuda|cpu] [--arch NAME] [--compile] [--json out.json]
"""
from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

import torch
import torch.nn.functional as F
from _common import timed  # median seconds after warm-up

from hlip_engine.model import get_config  # noqa: E402
from hlip_engine.model.vit import HLIPVisualEncoder, VisualConfig, count_parameters, flops_per_study  # noqa: E402


def study_batch(b: int, n: int, size, device, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(b, n, 1, *size, generator=g).to(device)


def run_gpu(visual: HLIPVisualEncoder, cfg: VisualConfig, device, args) -> list[dict]:
    torch.backends.cuda.matmul.allow_tf32 = True  # the fp32 reference as the official demo runs it
    torch.backends.cudnn.allow_tf32 = True
    size = cfg.input_size
    cases = [(8, 10), (1, 1), (1, 10), (1, 40)]
    rows = []
    with torch.no_grad():
        ref = {}
        for b, n in [(8, 10), (1, 40)]:  # fp32 references (TF32 matmuls off for the cosine)
            torch.backends.cuda.matmul.allow_tf32 = False
            ref[(b, n)] = visual(study_batch(b, n, size, device))[:, 0].float()
            torch.backends.cuda.matmul.allow_tf32 = True
        for mode in args.modes:
            model = visual
            if mode == "bf16":
                model = HLIPVisualEncoder(cfg, visual.embed_dim).to(device)
                model.load_state_dict(visual.state_dict())
                model = model.to(torch.bfloat16).eval()
            fwd = torch.compile(model) if args.compile else model
            dtype = torch.float32 if mode == "fp32" else torch.bfloat16

            def call(x, fwd=fwd, mode=mode, dtype=dtype):
                if mode == "autocast":
                    with torch.autocast("cuda", dtype=torch.bfloat16):
                        return fwd(x)
                return fwd(x.to(dtype))

            for b, n in cases:
                x = study_batch(b, n, size, device)
                torch.cuda.reset_peak_memory_stats(device)
                sec = timed(lambda x=x: call(x), device, args.warmup, args.repeat)
                row = {"mode": mode, "studies": b, "scans": n, "ms": round(sec * 1e3, 2),
                       "studies_per_s": round(b / sec, 1),
                       "peak_gb": round(torch.cuda.max_memory_allocated(device) / 1e9, 2),
                       "tflops": round(flops_per_study(cfg, n) * b / sec / 1e12, 1)}
                if (b, n) in ref and mode != "fp32":
                    out = call(x)[:, 0].float()
                    row["cosine_to_fp32_min"] = round(float(F.cosine_similarity(out, ref[(b, n)]).min()), 5)
                rows.append(row)
                print(json.dumps(row), flush=True)
            if mode == "bf16":
                del model
            torch.cuda.empty_cache()
    return rows


def run_cpu(visual: HLIPVisualEncoder, cfg: VisualConfig, args) -> list[dict]:
    rows = []
    with torch.no_grad():
        for n in args.cpu_scans:
            x = study_batch(1, n, cfg.input_size, torch.device("cpu"))
            sec = timed(lambda x=x: visual(x), torch.device("cpu"), 1, args.cpu_repeat)
            row = {"mode": "fp32", "device": "cpu", "threads": torch.get_num_threads(), "studies": 1, "scans": n,
                   "seconds": round(sec, 2), "gflops_per_s": round(flops_per_study(cfg, n) / sec / 1e9, 1)}
            rows.append(row)
            print(json.dumps(row), flush=True)
    return rows


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--arch", default="vit_base_multiscan_h2_token1176")
    parser.add_argument("--device", default=None, help="cuda or cpu (default: cuda if available)")
    parser.add_argument("--modes", nargs="+", default=["autocast", "bf16"], choices=["autocast", "bf16", "fp32"])
    parser.add_argument("--compile", action="store_true", help="torch.compile the visual tower (GPU)")
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--repeat", type=int, default=10)
    parser.add_argument("--cpu-scans", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--cpu-repeat", type=int, default=2)
    parser.add_argument("--json", default=None, help="write the rows here")
    args = parser.parse_args()

    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    cfg_dict = get_config(args.arch)
    cfg = VisualConfig.from_dict({**cfg_dict["visual"], "drop_path": 0.0})
    torch.manual_seed(0)
    visual = HLIPVisualEncoder(cfg, cfg_dict["embed_dim"]).to(device).eval()
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else f"CPU ({os.cpu_count()} cores)"
    print(f"{args.arch}: {count_parameters(visual) / 1e6:.1f} M parameters, input {cfg.input_size} per scan, "
          f"{flops_per_study(cfg, 10) / 1e12:.2f} TFLOP per 10-scan study | {name} | torch {torch.__version__}",
          flush=True)
    rows = run_gpu(visual, cfg, device, args) if device.type == "cuda" else run_cpu(visual, cfg, args)
    if args.json:
        Path(args.json).write_text(json.dumps({"arch": args.arch, "device": name, "rows": rows}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
