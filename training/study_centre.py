"""``python -m training.study_centre MODEL LIBRARY --out MODEL2``: give a trained model its study centre.

The centre is the mean normalised embedding of the model's training studies (up to ``--studies`` of them,
spread evenly over the library), each encoded as at inference (every scan, the model's own recipe).
``HLIPModel.encode_image`` then measures cosine similarity from that centre instead of from the origin
(see ``HLIPModel.study_centre``): worth it for a model whose study embeddings sit in a narrow cone, which
this command reports as the centre's length (near 1: a narrow cone; near 0: already centred). Whether a
model searches better with it is a question for a validation library, never the test one.

A study that cannot be read or preprocessed is skipped and reported; the output model is written only
at the end, atomically (``--out`` may name MODEL itself). ``--remove`` writes MODEL without a centre.
"""
from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path


def study_centre(model, refs, *, studies: int = 256, progress: bool = True, log=print):
    """Mean of the normalised (uncentred) embeddings of up to ``studies`` of ``refs`` -> ([E] tensor, used)."""
    import numpy as np
    import torch
    from tqdm import tqdm

    from hlip_engine.index.build import prepare_study

    if studies < 1:
        raise ValueError(f"--studies must be >= 1, got {studies}")
    picked = [refs[int(i)] for i in np.unique(np.linspace(0, len(refs) - 1, min(studies, len(refs))).round())]
    recipe, options = _recipe(model)
    total, used = None, 0
    for ref in tqdm(picked, unit="study", desc="study centre", disable=not progress):
        item = prepare_study(ref, recipe, options)
        if item["tensor"] is None:
            log(f"skipped {ref.source}: {item['reason']}")
            continue
        with torch.no_grad():
            emb = model.encode_image(torch.as_tensor(item["tensor"])[None], centre=False)[0].float().cpu()
        total = emb if total is None else total + emb
        used += 1
    if not used:
        raise ValueError("no study of the library could be encoded (see the skipped lines above)")
    return total / used, used


def _recipe(model) -> tuple[str, dict]:
    from hlip_engine.preprocessing import model_recipe

    return model_recipe(model.config.get("preprocess"), None)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m training.study_centre", description=__doc__.split("\n\n")[0])
    ap.add_argument("model", type=Path, help="trained model (our safetensors format)")
    ap.add_argument("library", type=Path, nargs="?", help="the studies it was trained on (DICOM / NIfTI / HLIP folders)")
    ap.add_argument("--out", type=Path, required=True, help="where to write the model with its centre")
    ap.add_argument("--studies", type=int, default=256, help="how many studies to average (spread over the library)")
    ap.add_argument("--remove", action="store_true", help="write the model without a study centre")
    args = ap.parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")

    from hlip_engine.io import discover
    from hlip_engine.model import load_model

    try:
        if not args.model.is_file():
            raise ValueError(f"{args.model}: no such model file")
        model = load_model(args.model, device="cpu").eval()
        if args.remove:
            model.config.pop("study_centre", None)
        else:
            if args.library is None:
                raise ValueError("name the LIBRARY of training studies (or pass --remove)")
            refs = discover(args.library)
            if not refs:
                raise ValueError(f"{args.library}: no studies found")
            centre, used = study_centre(model, refs, studies=args.studies, log=lambda m: print(m, file=sys.stderr))
            model.config["study_centre"] = [round(float(v), 6) for v in centre]
            print(f"study centre from {used} studies of {args.library}: length {float(centre.norm()):.3f} "
                  "(1 = every study in one direction, 0 = centred already)")
        model.save(args.out, text_weights=False)
    except (ValueError, OSError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"written: {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
