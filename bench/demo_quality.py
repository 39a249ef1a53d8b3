"""Demo-model quality on a phantom library of any seed: zero-shot AUC, search precision@5, nearest study.

The zero-shot figures are those of ``hlip evaluate demo --data <library>`` (the demo protocol of
hlip_engine.evaluate); this script runs that evaluation too and records its report next to the figures.

`hlip demo --evaluate` measures the shipped model on the held-out library (seed 2026). Comparing
candidate models must not touch that library, so model selection uses another seed never trained on
(5, the validation library) and any model file:

    .venv/bin/python bench/demo_quality.py                                   # shipped model, seed 5
    .venv/bin/python bench/demo_quality.py --model RUN/model.safetensors --seed 5
    .venv/bin/python bench/demo_quality.py --seed 2026                       # = hlip demo --evaluate

The library is generated once under --out (about 1 s per study) and an index is built per model file.
Prints the figures and writes them to <out>/quality-<model hash>.json.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def main(argv=None) -> int:
    from hlip_engine.demo.showcase import DEMO_MODEL

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", type=Path, default=DEMO_MODEL, help="engine checkpoint (default: the shipped demo model)")
    ap.add_argument("--seed", type=int, default=5, help="phantom library seed (2026 = the demo's held-out library)")
    ap.add_argument("--studies", type=int, default=40)
    ap.add_argument("--out", type=Path, default=Path("demo-output/quality"))
    args = ap.parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")

    import torch

    from hlip_engine.demo.showcase import ensure_index, ensure_library, evaluate_library
    from hlip_engine.model import load_model

    if not args.model.is_file():
        print(f"{args.model}: no such model file", file=sys.stderr)
        return 2
    tag = hashlib.sha256(args.model.read_bytes()).hexdigest()[:10]
    library = args.out / f"library-seed{args.seed}"
    records = ensure_library(library, args.studies, seed=args.seed)
    index = ensure_index(library, args.model, args.out / f"index-seed{args.seed}-{tag}")
    model = load_model(args.model, device="cpu")
    print(f"model {args.model} (sha256 {tag}...)")
    with torch.no_grad():
        quality = evaluate_library(model, index, records, seed=args.seed)
    from hlip_engine.evaluate import evaluate
    from hlip_engine.evaluate.report import text_summary

    report = evaluate("demo", library, model=model, checkpoint=args.model, protocol="2026",
                      out=args.out / f"evaluate-seed{args.seed}-{tag}")
    print(f"\n`hlip evaluate demo --data {library} --model {args.model}`:\n{text_summary(report)}")
    quality["evaluate"] = {"metrics": report["metrics"], "cases": report["cases"], "skipped": report["skipped"]}
    out = args.out / f"quality-seed{args.seed}-{tag}.json"
    out.write_text(json.dumps({"model": str(args.model), "seed": args.seed, **quality}, indent=1))
    print(f"written: {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
