"""Run HLIP Explorer end to end on phantom studies: generate a library (once), index it with the demo
model, run three free-text searches, a zero-shot prompt set and a relevance map, and write PNGs.

The demo model was trained on phantom studies only. It is not for clinical use.
"""
from __future__ import annotations

import os
from pathlib import Path

NAME = "demo"
HELP = "run the whole product on phantom studies (the README's main command)"


def add_arguments(p) -> None:
    p.add_argument("--out", default="demo-output", help="folder for the library, index and pictures (default: %(default)s)")
    p.add_argument("--studies", type=int, default=40, help="phantom studies in the demo library (default: %(default)s)")
    p.add_argument("--evaluate", action="store_true", help="also print zero-shot macro AUC and search precision@5")
    p.add_argument("--model", default=None, help="another checkpoint instead of the shipped demo model")
    gui = p.add_mutually_exclusive_group()
    gui.add_argument("--gui", action="store_true", help="open napari with the study, index and model loaded")
    gui.add_argument("--no-gui", action="store_true", help="never open napari, even with a display")


def run(args) -> int:
    from hlip_engine.demo.showcase import run as run_demo

    has_display = bool(os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY"))
    gui = args.gui or (has_display and not args.no_gui)
    run_demo(Path(args.out), n=args.studies, evaluate=args.evaluate, gui=gui,
             model_path=Path(args.model) if args.model else None)
    return 0
