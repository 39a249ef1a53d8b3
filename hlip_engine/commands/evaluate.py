"""Zero-shot benchmark evaluation with the official protocols of the HLIP code (research use; not for
clinical use).

Reads a benchmark in its official layout (the .pt tensors of the official processing; CQ500 / RSNA study
folders may hold the DICOM release instead), scores every case as the official script does and prints the
metrics under the names the official script uses. The protocol version is part of the output.

Examples:
  hlip evaluate ct-rate --data /data/ct_rate --labels valid_labels.csv --model ct.pt
  hlip evaluate pub-brain-5 --data /data/pub_brain_5 --labels pub_brain_5.csv --model brain.pt --protocol paper
  hlip evaluate rsna --data /data/rsna --labels rsna.csv --model headct/ --protocol 2026 --bootstrap 1000 --out runs/rsna
  hlip evaluate demo --data demo-output/library --model hlip_engine/weights/hlip_demo.safetensors
  torchrun --nproc_per_node 4 -m hlip_engine.evaluate rsna --data ... --labels ... --model ...
"""
from __future__ import annotations

import argparse

NAME = "evaluate"
HELP = "zero-shot benchmark metrics with the official protocols (ct-rate, rad-chestct, pub-brain-5, rsna, cq500, mr-rate, demo)"
BENCHMARKS = ("ct-rate", "rad-chestct", "pub-brain-5", "rsna", "cq500", "mr-rate", "demo")


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("benchmark", choices=BENCHMARKS, metavar="BENCHMARK", help=" | ".join(BENCHMARKS))
    p.add_argument("--data", required=True, metavar="ROOT", help="the benchmark's data folder (official layout)")
    p.add_argument("--labels", default=None, metavar="CSV",
                   help="the official labels CSV (demo: ROOT/labels.csv when not given)")
    p.add_argument("--model", required=True, metavar="CKPT", help="checkpoint file or folder")
    p.add_argument("--arch", default=None, help="architecture name when the checkpoint's cannot be inferred")
    p.add_argument("--text-model", default=None, metavar="FOLDER", help="the text tower's Hugging Face folder")
    p.add_argument("--device", default=None, help="cpu, cuda, cuda:1 ... (default: cuda if available)")
    p.add_argument("--protocol", choices=("paper", "2026"), default="paper",
                   help="paper: the evaluation code the paper's numbers came from; 2026: the current scripts")
    p.add_argument("--out", default=None, metavar="DIR",
                   help="write results.json, scores.csv (per case) and roc/*.png here; embeddings are cached in DIR/embeddings")
    p.add_argument("--cache", default=None, metavar="DIR", help="embedding cache folder (default: DIR/embeddings of --out)")
    p.add_argument("--bootstrap", type=int, default=0, metavar="N", help="95%% confidence intervals from N resamples of the cases")
    p.add_argument("--seed", type=int, default=0, help="bootstrap seed")
    p.add_argument("--allow-missing", action="store_true", help="score the matched ids when some labels rows have no data")
    p.add_argument("--allow-text-tower", action="store_true",
                   help="evaluate a model whose text tower is not the protocol's (recorded as a deviation)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument("--json", action="store_true", help="print the JSON report instead of text")


def run(args) -> int:
    from hlip_engine.evaluate import evaluate_command

    return evaluate_command(args)
