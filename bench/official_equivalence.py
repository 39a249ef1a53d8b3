"""Our HLIP model vs the official implementation, from the same random checkpoint in the official format.

Not part of the package or the tests: it imports the official code (github Zch0414/hlip, MIT) and its
pinned dependencies from the git-ignored ``.ref/`` folder, only when run. Set-up (once):

    git clone https://github.com/Zch0414/hlip .ref/hlip            # or any copy of its src/hlip
    pip download --no-deps timm==1.0.15 open_clip_torch ftfy wcwidth "torchvision==0.28.*" -d .ref/whl
    pip install --no-deps --target .ref/site .ref/whl/*.whl       # never into the project's venv
    HF_HUB_OFFLINE=1 .venv/bin/python bench/official_equivalence.py [--arch NAME ...] [--scans 2]

(timm 1.0.15: newer timm rejects the 3-D image size. The torchvision wheel on PyPI is a CUDA build whose
operators cannot load beside a CPU torch; only its Python modules are needed, so its operator
registration is skipped here.) For each architecture: build the official open_clip model (timm trunk +
MiniLM text tower), overwrite every tensor with random values, save it as the official 2025 ``.pt``
(``{'state_dict': {'module.…'}}``), load that file with ``hlip_engine.load_model``, and compare image and
text embeddings on the same inputs in fp32. Target: max |difference| <= 1e-5.
"""
from __future__ import annotations

import argparse
import importlib
import json
import os
import sys
import tempfile
import time
import types
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
REF = ROOT / ".ref"
TEXTS = ["This MRI study shows: glioma.", "No acute intracranial abnormality.",
         "Acute infarct in the left middle cerebral artery territory with mild mass effect."]


def import_official(src: Path):
    for p in (REF / "site", src):
        if not p.is_dir():
            raise SystemExit(f"missing {p}: see the set-up in this script's docstring")
        sys.path.insert(0, str(p))
    # CPU torch + CUDA torchvision wheel: skip torchvision's operator registration (unused here)
    sys.modules.setdefault("torchvision._meta_registrations", types.ModuleType("torchvision._meta_registrations"))
    import open_clip
    import timm

    importlib.import_module("hlip.visual_encoder")  # registers the official architectures with timm
    return open_clip, timm


def official_model(open_clip, arch: str, text_folder: str, embed_dim: int, bias: float | None):
    from open_clip.factory import _MODEL_CONFIGS

    name = f"bench_{arch}"
    _MODEL_CONFIGS[name] = {
        "embed_dim": embed_dim,
        **({"init_logit_bias": bias} if bias is not None else {}),
        "vision_cfg": {"timm_model_name": arch, "timm_model_pretrained": False, "timm_pool": "token",
                       "timm_proj": "linear", "timm_drop_path": 0.0},
        "text_cfg": {"hf_model_name": text_folder, "hf_tokenizer_name": text_folder,
                     "hf_pooler_type": "cls_last_hidden_state_pooler", "hf_proj_type": "linear",
                     "context_length": 256},
    }
    model = open_clip.create_model(name, pretrained=None)
    return model.eval(), open_clip.get_tokenizer(name)


@torch.no_grad()
def randomise(model, seed: int = 0) -> None:
    """Every tensor random (as any trained checkpoint may be): weights ~N(0, .02), norms ~1+N(0, .1)."""
    g = torch.Generator().manual_seed(seed)
    for name, t in model.state_dict().items():
        if not t.is_floating_point():
            continue
        noise = torch.randn(t.shape, generator=g)
        if "norm" in name.lower() and name.endswith("weight"):
            t.copy_(1 + 0.1 * noise)
        elif name.endswith(("cls_token", "reg_token", "posemb")):
            t.copy_(0.5 * noise)
        elif name in ("logit_scale", "logit_bias"):
            t.fill_(2.5 + 0.1 * float(noise.reshape(-1)[0]))
        else:
            t.copy_(0.02 * noise)


def compare(arch: str, inputs: list[tuple[int, tuple[int, int, int]]], text_folder: str, open_clip) -> list[dict]:
    from hlip_engine.model import get_config, load_model

    cfg = get_config(arch)
    bias = cfg.get("init_logit_bias")
    off, tokenizer = official_model(open_clip, arch, text_folder, cfg["embed_dim"], bias)
    randomise(off)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / f"{arch}.pt"
        state = {f"module.{k}": v.clone() for k, v in off.state_dict().items()}
        torch.save({"epoch": 1, "name": arch, "state_dict": state}, path)
        ours = load_model(path, arch=arch, text_model=text_folder, device="cpu")
    with torch.no_grad():
        t_off = off.encode_text(tokenizer(TEXTS), normalize=True)
        t_ours = ours.encode_text(TEXTS)
        rows.append({"arch": arch, "what": f"text x{len(TEXTS)}", "max_abs_diff": float((t_off - t_ours).abs().max())})
        for scans, size in inputs:
            torch.manual_seed(1)
            x = torch.randn(1, scans, 1, *size)
            t0 = time.perf_counter()
            i_off = off.encode_image(x, normalize=True)  # [1, E] or [1, outputs, E] (2026)
            t1 = time.perf_counter()
            i_ours = ours.encode_image(x, all_outputs=i_off.ndim == 3)
            t2 = time.perf_counter()
            raw_off = off.encode_image(x, normalize=False)
            raw_ours = ours.encode_image(x, normalize=False, all_outputs=raw_off.ndim == 3)
            rows.append({"arch": arch, "what": f"image 1 x {scans} x {'x'.join(map(str, size))}",
                         "max_abs_diff": float((i_off - i_ours).abs().max()),
                         "max_abs_diff_unnormalised": float((raw_off - raw_ours).abs().max()),
                         "official_s": round(t1 - t0, 2), "ours_s": round(t2 - t1, 2)})
    return rows


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--arch", nargs="+", default=["vit_base_multiscan_h2_token1176",
                                                      "vit_base_multiscan_h3_token1176"])
    parser.add_argument("--scans", type=int, default=2)
    parser.add_argument("--official-src", default=str(REF / "hlip" / "src"),
                        help="folder holding the official 'hlip' package (2025 code)")
    parser.add_argument("--official-2026-src", default=str(REF / "hlip2026" / "src"),
                        help="folder holding a later official 'hlip' package whose timm registry has the "
                             "dualdinotxt encoders under our config names")
    parser.add_argument("--json", default=None, help="also write the rows here")
    args = parser.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    torch.set_num_threads(max(1, (os.cpu_count() or 2)))

    from hlip_engine.model import get_config
    from hlip_engine.model.text import minilm_folder

    text_folder = str(minilm_folder())
    new = [a for a in args.arch if "dinotxt" in a]
    old = [a for a in args.arch if a not in new]
    if old and new:
        raise SystemExit("run 2025 and 2026 architectures separately (two versions of the 'hlip' package)")
    src = args.official_2026_src if new else args.official_src
    open_clip, timm = import_official(Path(src))
    print(f"official code: {src} | timm {timm.__version__} | open_clip {open_clip.__version__} | "
          f"torch {torch.__version__} | fp32 CPU")
    rows = []
    for arch in args.arch:
        v = get_config(arch)["visual"]
        size = tuple(v["input_size"])
        more_slices = (size[0] + 2 * v["patch_size"][0],) + size[1:]  # other grid: trilinear table
        inputs = [(args.scans, size), (1, more_slices)] if v.get("max_scans") != 1 else [(1, size)]
        for row in compare(arch, inputs, text_folder, open_clip):
            rows.append(row)
            extra = (f" (unnormalised {row['max_abs_diff_unnormalised']:.2e}; official {row['official_s']} s, "
                     f"ours {row['ours_s']} s)") if "official_s" in row else ""
            print(f"{row['arch']:<44} {row['what']:<28} max|diff| {row['max_abs_diff']:.2e}{extra}", flush=True)
    worst = max(r["max_abs_diff"] for r in rows)
    print(f"worst max|diff| {worst:.2e} -> {'PASS' if worst <= 1e-5 else 'FAIL'} (target <= 1e-5)")
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=2))
    return 0 if worst <= 1e-5 else 1


if __name__ == "__main__":
    sys.exit(main())
