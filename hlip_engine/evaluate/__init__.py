"""Zero-shot benchmark evaluation with the official HLIP protocols: ``hlip evaluate`` and training's
in-run evaluation (one evaluation in the project). See docs/evaluation.md."""
from __future__ import annotations

from .protocols import Protocol, benchmarks, get_protocol
from .run import evaluate, measure

__all__ = ["Protocol", "benchmarks", "evaluate", "evaluate_command", "get_protocol", "measure"]


def evaluate_command(args) -> int:
    """``hlip evaluate`` / ``torchrun -m hlip_engine.evaluate``: load the model, evaluate, print."""
    import os
    import sys

    from ..model import load_model
    from .encode import rank_and_world
    from .report import text_summary, to_json

    distributed = int(os.environ.get("WORLD_SIZE", "1")) > 1
    device = args.device
    if distributed:
        import torch
        import torch.distributed as dist

        if not dist.is_initialized():
            dist.init_process_group("nccl" if torch.cuda.is_available() and device != "cpu" else "gloo")
        if torch.cuda.is_available() and device != "cpu":
            device = f"cuda:{int(os.environ.get('LOCAL_RANK', '0'))}"
    rank = 0
    try:
        model = load_model(args.model, arch=args.arch, text_model=args.text_model, device=device)
        result = evaluate(args.benchmark, args.data, args.labels, model=model, protocol=args.protocol,
                          checkpoint=args.model, out=args.out, bootstrap=args.bootstrap, seed=args.seed,
                          cache_dir=args.cache, allow_text_tower=args.allow_text_tower,
                          allow_missing=args.allow_missing, progress=not args.no_progress)
        rank = rank_and_world()[0]
    finally:
        if distributed:
            import torch.distributed as dist

            dist.barrier()
            dist.destroy_process_group()
    if rank == 0 and result is not None:
        print(to_json(result) if args.json else text_summary(result))
        for why in result["deviations"]:
            print(f"hlip evaluate: note: {why}", file=sys.stderr)
    return 0
