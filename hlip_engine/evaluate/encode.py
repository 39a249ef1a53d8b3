"""Cases -> embeddings: batch of one study, every scan, the model's first output (what zero-shot uses).

Cached embeddings are reused; under ``torchrun`` (an initialised process group) each rank encodes every
world-size-th missing case and the results are gathered on every rank. A case that fails to load is
skipped with its reason, never ending the run.
"""
from __future__ import annotations

import sys

import numpy as np

from ..study import StudyLoadError
from .datasets import load_case

CASE_ERRORS = (StudyLoadError, ValueError, OSError, RuntimeError)


def rank_and_world() -> tuple[int, int]:
    """(rank, world size) of the initialised process group (torchrun), else (0, 1)."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def encode_cases(model, cases, grid: dict, *, cache=None, progress: bool = True, desc: str = "encoding"):
    """-> (embeddings [C, E] float32 with NaN rows for skipped cases, [(case id, reason)] skipped,
    {"world_size", "encoded_per_rank"})."""
    import torch
    from tqdm import tqdm

    rank, world = rank_and_world()
    found: dict[int, np.ndarray] = {}
    if cache is not None:
        for i, case in enumerate(cases):
            value = cache.get(case, grid)
            if value is not None:
                found[i] = value
    todo = [i for i in range(len(cases)) if i not in found]
    mine = todo[rank::world]
    done: dict[int, np.ndarray] = {}
    failed: dict[int, str] = {}
    was_training = model.training
    model.eval()
    bar = tqdm(mine, desc=desc, unit="study", disable=not progress or rank != 0, file=sys.stderr,
               dynamic_ncols=True)
    with torch.no_grad():
        for i in bar:
            try:
                x = load_case(cases[i], grid, model)
                done[i] = model.encode_image(x[None].to(model.device), normalize=True)[0].float().cpu().numpy()
            except CASE_ERRORS as e:
                failed[i] = f"{type(e).__name__}: {e}"
    model.train(was_training)
    per_rank = [len(done) + len(failed)]
    if world > 1:
        import torch.distributed as dist

        gathered: list = [None] * world
        dist.all_gather_object(gathered, (done, failed))
        per_rank = [len(d) + len(f) for d, f in gathered]
        done, failed = {}, {}
        for d, f in gathered:
            done.update(d)
            failed.update(f)
    if cache is not None and rank == 0:
        for i, value in done.items():
            cache.put(cases[i], grid, value)
    found.update(done)
    dim = next((len(v) for v in found.values()), int(getattr(model, "embed_dim", 1)))
    out = np.full((len(cases), dim), np.nan, dtype=np.float32)
    for i, value in found.items():
        out[i] = value
    stats = {"world_size": world, "encoded_per_rank": per_rank}
    return out, [(cases[i].id, failed[i]) for i in sorted(failed)], stats
