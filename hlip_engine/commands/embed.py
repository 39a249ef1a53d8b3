"""Embed one study: load it, preprocess it with the model's recipe, write its L2-normalised embedding.

Examples:
  hlip embed /data/study_0001 --model hlip_demo.safetensors --out study_0001.npy
  hlip embed brain.nii.gz --model vit_base_brainmri_h2_token1176.pt --recipe brain-mri --slices 144
"""
from __future__ import annotations

import argparse

NAME = "embed"
HELP = "embed one study with an HLIP model (prints or saves the vector)"


def add_model_arguments(p: argparse.ArgumentParser) -> None:
    """Model options shared by the commands that load a checkpoint."""
    p.add_argument("--model", required=True, metavar="CKPT",
                   help="checkpoint: our .safetensors, an official 2025 .pt, or a 2026 Hugging Face folder")
    p.add_argument("--arch", default=None, help="architecture name when the checkpoint's cannot be inferred")
    p.add_argument("--text-model", default=None, metavar="FOLDER",
                   help="folder (or cached Hugging Face id) holding the tokenizer / text model")
    p.add_argument("--device", default=None, help="cpu, cuda, cuda:1 ... (default: cuda if available)")
    p.add_argument("--recipe", default=None, help="preprocessing recipe (default: the model's)")
    p.add_argument("--slices", type=int, default=None, help="slices per scan (e.g. 144, the paper's test setting)")


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("study", metavar="STUDY", help="DICOM folder, NIfTI file/folder or HLIP tensor folder")
    add_model_arguments(p)
    p.add_argument("--out", default=None, metavar="F.npy", help="write the embedding here (float32 .npy)")


def load_and_embed(args):
    """-> (model, study, prepared, embedding [E] tensor); shared with ``hlip zeroshot``."""
    import torch

    from hlip_engine.io import load_study
    from hlip_engine.model import load_model
    from hlip_engine.search import encode_prepared

    model = load_model(args.model, arch=args.arch, text_model=args.text_model, device=args.device)
    study = load_study(args.study)
    options = {"slices": args.slices} if args.slices else {}
    prepared = model.prepare(study, args.recipe, **options)
    embedding = torch.from_numpy(encode_prepared(model, [prepared.tensor])[0])  # as `hlip index build` encodes
    return model, study, prepared, embedding


def run(args) -> int:
    import sys
    from pathlib import Path

    import numpy as np

    model, study, prepared, embedding = load_and_embed(args)
    for item, reason in study.skipped:
        print(f"skipped {item}: {reason}", file=sys.stderr)
    vec = embedding.numpy().astype(np.float32)
    summary = (f"study {study.uid or study.source}: {len(prepared.scan_indices)} model scans "
               f"{tuple(prepared.tensor.shape[-3:])} ({prepared.recipe}) -> embedding [{vec.shape[0]}] "
               f"with {model.config.get('name', 'model')}")
    if args.out:
        from hlip_engine.atomic import atomic_write

        out = Path(args.out)
        with atomic_write(out) as tmp, open(tmp, "wb") as f:
            np.save(f, vec)
        print(f"{summary}; saved to {out}")
    else:
        print(summary, file=sys.stderr)
        print(" ".join(f"{v:.6f}" for v in vec))
    return 0
