"""Training-step throughput of ``training.pretrain``'s step: studies/s, peak memory and MFU.

Two measurements per run:
  visual  the image tower alone, bf16 autocast, AdamW, loss = mean(y^2) -- exactly the training step
          the official implementation's figures were measured with, so the numbers compare;
  full    the real step of training.pretrain: image tower + text (locked, cached features, or
          trainable with --train-text) + CLIP loss + AdamW with the trainer's parameter groups.

GPU (default there: ViT-B token1176, 8 studies x 8 scans, bf16)::

    python bench/train_bench.py                       # official target: >= 50 studies/s in <= 26.5 GB (H200)
    python bench/train_bench.py --grad-checkpointing --compile
CPU (default there: the tiny test config)::

    python bench/train_bench.py --arch hlip_tiny      # steps/s of the tiny config
    python bench/train_bench.py --arch hlip_demo --studies 8 --scans 4

MFU = model FLOPs (3 x forward: forward + backward, recomputation not counted) x studies/s / peak.
Peak dense bf16 TFLOP/s by card name (H100/H200 SXM 989, A100 312), or --peak-tflops.
Prints one JSON line per measurement and writes them to --json when given.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
from pathlib import Path

from _common import peak_tflops, sync

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import torch  # noqa: E402


def timed(step, device, warmup: int, iters: int) -> float:
    """Mean seconds per step over ``iters`` steps after ``warmup`` untimed ones."""
    for _ in range(warmup):
        step()
    sync(device)
    t = time.perf_counter()
    for _ in range(iters):
        step()
    sync(device)
    return (time.perf_counter() - t) / iters


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--arch", default="", help="engine architecture (default: ViT-B token1176 on GPU, hlip_tiny on CPU)")
    p.add_argument("--studies", type=int, default=8, help="studies per step")
    p.add_argument("--scans", type=int, default=8, help="scans per study")
    p.add_argument("--steps", type=int, default=0, help="timed steps (default 10 GPU, 5 CPU)")
    p.add_argument("--warmup", type=int, default=3, help="untimed steps first")
    p.add_argument("--mode", choices=["visual", "full", "both"], default="both")
    p.add_argument("--grad-checkpointing", action="store_true")
    p.add_argument("--patch-dropout", type=float, default=0.0)
    p.add_argument("--compile", action="store_true", help="torch.compile the image tower")
    p.add_argument("--train-text", action="store_true", help="full mode: train the text tower (default: locked, cached)")
    p.add_argument("--precision", choices=["auto", "bf16", "fp32"], default="auto", help="auto: bf16 on GPU, fp32 on CPU")
    p.add_argument("--device", default="auto")
    p.add_argument("--threads", type=int, default=0, help="CPU threads (0 = torch's default)")
    p.add_argument("--peak-tflops", type=float, default=0.0, help="peak dense bf16 TFLOP/s for MFU")
    p.add_argument("--json", default="", help="also write the results here")
    p.add_argument("--recipe", default="", help="run training.pretrain itself with this training recipe (ct-rate): "
                                                "one step of the real configuration on a generated official-layout "
                                                "cache; CPU: at a reduced size, GPU: at full size")
    p.add_argument("--text-model", default="", help="--recipe: the recipe's text tower folder (default: the "
                                                    "installed one, else a small stand-in in the same layout)")
    p.add_argument("--init-2d", default="", help="--recipe: the MAE checkpoint (default: the cached one, else a "
                                                 "random ViT-B in timm's layout)")
    args = p.parse_args(argv)
    if args.recipe:
        return recipe_bench(args)

    from hlip_engine.model import create_model
    from hlip_engine.model.vit import flops_per_study
    from training.loss import ClipLoss
    from training.model_setup import ContrastiveStep, TextFeatureCache
    from training.optim import create_optimizer

    device = torch.device("cuda" if torch.cuda.is_available() else "cpu") if args.device == "auto" \
        else torch.device(args.device)
    if args.threads:
        torch.set_num_threads(args.threads)
    arch = args.arch or ("vit_base_multiscan_h2_token1176" if device.type == "cuda" else "hlip_tiny")
    bf16 = args.precision == "bf16" or (args.precision == "auto" and device.type == "cuda")
    steps = args.steps or (10 if device.type == "cuda" else 5)
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
        torch.backends.cudnn.benchmark = True

    torch.manual_seed(0)
    model = create_model(arch).to(device).train()
    model.visual.cfg.patch_dropout = args.patch_dropout
    model.set_grad_checkpointing(args.grad_checkpointing)
    cfg = model.visual.cfg
    x = torch.randn(args.studies, args.scans, 1, *cfg.input_size, device=device)
    reports = [f"This MRI study shows: finding number {i}. Nothing else." for i in range(args.studies)]
    peak = peak_tflops(device, args.peak_tflops)
    fwd_flops = flops_per_study(cfg, args.scans) * (1 - args.patch_dropout)  # approx. with dropout
    visual_params = sum(p.numel() for p in model.visual.parameters())
    results = []

    def autocast():
        return torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16)

    def report(mode: str, seconds: float):
        sps = args.studies / seconds
        row = {"mode": mode, "arch": arch, "device": torch.cuda.get_device_name(device) if device.type == "cuda"
               else f"cpu x{torch.get_num_threads()} threads", "precision": "bf16" if bf16 else "fp32",
               "studies": args.studies, "scans": args.scans, "grad_checkpointing": args.grad_checkpointing,
               "patch_dropout": args.patch_dropout, "compile": args.compile, "s_per_step": round(seconds, 5),
               "steps_per_s": round(1 / seconds, 3), "studies_per_s": round(sps, 2),
               "visual_params_M": round(visual_params / 1e6, 2),
               "train_gflop_per_study": round(3 * fwd_flops / 1e9, 2)}
        if device.type == "cuda":
            row["peak_GiB"] = round(torch.cuda.max_memory_allocated(device) / 2**30, 2)
        if peak:
            row["mfu"] = round(3 * fwd_flops * sps / (peak * 1e12), 4)
            row["peak_tflops_assumed"] = peak
        results.append(row)
        print(json.dumps(row), flush=True)

    visual = torch.compile(model.visual) if args.compile else model.visual

    if args.mode in ("visual", "both"):
        opt = torch.optim.AdamW(model.visual.parameters(), lr=1e-5, fused=device.type == "cuda" or None)
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)

        def visual_step():
            with autocast():
                y = visual(x)
            y.float().pow(2).mean().backward()
            opt.step()
            opt.zero_grad(set_to_none=True)

        report("visual", timed(visual_step, device, args.warmup, steps))
        del opt

    if args.mode in ("full", "both"):
        cache = None
        if not args.train_text:
            model.lock_text()
            cache = TextFeatureCache(model.text)
        if args.compile:
            model.visual = visual  # the step calls model.encode_image -> model.visual
        step_module = ContrastiveStep(model, ClipLoss(), cache).to(device).train()
        opt = create_optimizer([step_module], lr=1e-5, weight_decay=0.2)
        if device.type == "cuda":
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats(device)

        def full_step():
            with autocast():
                loss = step_module(x, reports)
            loss.backward()
            opt.step()
            opt.zero_grad(set_to_none=True)
            step_module.clamp_logit_scale(100.0)

        report("full", timed(full_step, device, args.warmup, steps))

    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=1))
    if device.type == "cuda" and math.isfinite(results[0]["studies_per_s"]):
        print("target (H200, ViT-B token1176, 8x8, bf16): >= 50 studies/s in <= 26.5 GB; official 33.8 studies/s")
    return 0


def _stand_in_text_tower(folder: Path, model_type: str) -> Path:
    """A small BERT laid out like the recipe's tower (CXR-BERT: custom model type, weights under 'bert.')."""
    import shutil

    from safetensors.torch import save_file
    from transformers import BertConfig, BertModel

    from hlip_engine.model.text import minilm_folder

    config = dict(vocab_size=30522, hidden_size=128, num_hidden_layers=2, num_attention_heads=2,
                  intermediate_size=256, max_position_embeddings=512, type_vocab_size=2, pad_token_id=0)
    bert = BertModel(BertConfig(**config), add_pooling_layer=False)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "config.json").write_text(json.dumps({**config, "model_type": model_type}))
    prefix = "bert." if model_type != "bert" else ""
    save_file({prefix + k: v.contiguous() for k, v in bert.state_dict().items()}, str(folder / "model.safetensors"))
    for f in ("vocab.txt", "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"):
        shutil.copy(minilm_folder() / f, folder / f)
    return folder


def _stand_in_mae(path: Path, width: int = 768, depth: int = 12) -> Path:
    """Random weights in the layout of timm's vit_base_patch16_224.mae (model.safetensors)."""
    from safetensors.torch import save_file

    sd = {"cls_token": torch.randn(1, 1, width) * 0.02, "pos_embed": torch.randn(1, 197, width) * 0.02,
          "patch_embed.proj.weight": torch.randn(width, 3, 16, 16) * 0.02, "patch_embed.proj.bias": torch.zeros(width),
          "norm.weight": torch.ones(width), "norm.bias": torch.zeros(width)}
    for i in range(depth):
        for name, shape in (("attn.qkv", (3 * width, width)), ("attn.proj", (width, width)),
                            ("mlp.fc1", (4 * width, width)), ("mlp.fc2", (width, 4 * width))):
            sd[f"blocks.{i}.{name}.weight"] = torch.randn(shape) * 0.02
            sd[f"blocks.{i}.{name}.bias"] = torch.zeros(shape[0])
        for name in ("norm1", "norm2"):
            sd[f"blocks.{i}.{name}.weight"] = torch.ones(width)
            sd[f"blocks.{i}.{name}.bias"] = torch.zeros(width)
    save_file(sd, str(path))
    return path


def recipe_bench(args) -> int:
    """One optimiser step of ``python -m training.pretrain --recipe NAME`` on a generated cache in the official
    CT-RATE layout (raw HU tensors larger and smaller than the grid, official report strings, an invalid
    volume). CPU: the recipe's architecture at half the input size with batch 2 x 2 accumulated; GPU: full size,
    the recipe's batch. Text tower and MAE weights are the installed ones when present, else stand-ins in
    their layouts (so the CXR-BERT mapping and the 2-D inflation run either way)."""
    import tempfile

    from hlip_engine.model import get_config
    from hlip_engine.model.text import resolve_text_folder
    from training.config import parse_config
    from training.ct_rate import official_report
    from training.inflate import resolve_init_2d
    from training.pretrain import train
    from training.recipes import recipe_options

    if args.recipe != "ct-rate":
        raise SystemExit("bench --recipe: only ct-rate has a generated data set here")
    options = recipe_options(args.recipe)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu") if args.device == "auto" \
        else torch.device(args.device)
    full = device.type == "cuda"
    work = Path(tempfile.mkdtemp(prefix="hlip-recipe-bench-"))
    arch = get_config(options["arch"])
    if not full:  # the same layout (patch, blocks, width, depth) on half the grid: 7 x 7 x 7 tokens
        arch["visual"]["input_size"] = [d // 2 for d in arch["visual"]["input_size"]]
        arch["name"] = arch["name"] + "_half"
    grid = arch["visual"]["input_size"]
    arch_file = work / "arch.json"
    arch_file.write_text(json.dumps(arch))
    text = args.text_model or options["text_model"]
    stand_ins = []
    if resolve_text_folder(text) is None:
        text = str(_stand_in_text_tower(work / "cxr-bert", "cxr-bert"))
        stand_ins.append("text tower (CXR-BERT layout, 2 layers)")
    init_2d = args.init_2d or "mae"
    try:
        init_2d = str(resolve_init_2d(init_2d, width=arch["visual"]["width"]))
    except FileNotFoundError:
        init_2d = str(_stand_in_mae(work / "mae.safetensors", arch["visual"]["width"], arch["visual"]["depth"]))
        stand_ins.append("MAE weights (random, timm layout)")
    batch, accum = (options["batch_size"], 1) if full else (2, 2)
    root, manifest = work / "train", {}
    g = torch.Generator().manual_seed(0)
    for i in range(batch * accum + 1):
        study = f"train_{i + 1}_a"
        folder = root / f"train_{i + 1}" / study
        folder.mkdir(parents=True)
        shape = [max(8, int(n * (0.8 + 0.4 * float(torch.rand(1, generator=g))))) for n in grid]
        torch.save(torch.rand(shape, generator=g) * 3000 - 1500, folder / f"{study}_1.pt")
        manifest[study] = {"recons": [f"{study}_1.nii.gz"],
                           "report": [official_report(f"Finding {i} in the right lung.", f"Lungs: finding {i}.")]}
    manifest["train_1267_a"] = {"recons": ["train_1267_a_4.nii.gz"], "report": ["The volume shows: invalid."]}
    (work / "raw_annotation.json").write_text(json.dumps(manifest))
    argv = ["--recipe", args.recipe, "--data", str(work / "raw_annotation.json"), "--data-root", str(root),
            "--arch", str(arch_file), "--text-model", text, "--init-2d", init_2d, "--steps", "1",
            "--batch-size", str(batch), "--accum-steps", str(accum), "--workers", "0", "--device", device.type,
            "--tensorboard", "off", "--out", str(work / "run")]
    cfg = parse_config(argv)
    t = time.perf_counter()
    train(cfg)
    seconds = time.perf_counter() - t
    with open(work / "run" / "metrics.csv") as f:
        import csv

        row = list(csv.DictReader(f))[-1]
    result = {"mode": f"recipe:{args.recipe}", "device": str(device), "grid": grid, "batch": batch,
              "accum_steps": accum, "loss": float(row["loss"]), "lr": float(row["lr"]),
              "wall_s_incl_setup": round(seconds, 2), "stand_ins": stand_ins}
    if device.type == "cuda":
        result["peak_GiB"] = round(torch.cuda.max_memory_allocated(device) / 2**30, 2)
    import shutil

    shutil.rmtree(work, ignore_errors=True)
    print(json.dumps(result), flush=True)
    if args.json:
        Path(args.json).write_text(json.dumps([result], indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
