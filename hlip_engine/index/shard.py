"""Scale-out: which rank embeds which study under torchrun, and how rank 0 merges the shards.

Rank 0 lists the studies not done yet (discovered, minus those in the main store or in shards a
killed run left) and sends that list to every rank; rank r embeds every world_size-th study from
position r, so shards are balanced and no study is given to two ranks. Each rank writes its own
build store under ``DIR/shards/rank-N`` (rank 0 writes the main store ``DIR/build`` directly). When every rank is done, rank 0 copies the
shards' studies into the main store, skipping keys it already has (so a merge killed half-way is
simply merged again), removes the shards and commits one index. Multi-node: DIR must be on a
filesystem every node sees.
"""
from __future__ import annotations

import os
import shutil
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path

from . import files
from .durable_store import BuildStore, identity_mismatch
from .metadata import rows_to_dicts


@dataclass(frozen=True)
class Ranks:
    """This process's place in a torchrun job (rank 0 of 1 when run alone)."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @classmethod
    def from_env(cls) -> Ranks:
        world = int(os.environ.get("WORLD_SIZE", "1"))
        if world <= 1:
            return cls()
        return cls(int(os.environ["RANK"]), world, int(os.environ.get("LOCAL_RANK", "0")))

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


def shard_dir(root: Path, rank: int) -> Path:
    return Path(root) / files.SHARDS / f"rank-{rank:05d}"


class Group:
    """The few collectives a build needs (gloo works on CPU and GPU machines alike)."""

    def __init__(self, ranks: Ranks):
        self.ranks = ranks
        self._dist = None
        if ranks.distributed:
            import torch.distributed as dist

            if not dist.is_initialized():
                # embedding an archive can take days between two barriers
                dist.init_process_group("gloo", timeout=timedelta(days=7))
            self._dist = dist

    def broadcast(self, obj):
        """rank 0's ``obj`` on every rank."""
        if self._dist is None:
            return obj
        box = [obj]
        self._dist.broadcast_object_list(box, src=0)
        return box[0]

    def gather(self, obj) -> list:
        """Every rank's ``obj``, in rank order (on every rank)."""
        if self._dist is None:
            return [obj]
        out = [None] * self.ranks.world_size
        self._dist.all_gather_object(out, obj)
        return out

    def barrier(self) -> None:
        if self._dist is not None:
            self._dist.barrier()

    def close(self) -> None:
        if self._dist is not None and self._dist.is_initialized():
            self._dist.destroy_process_group()


def finished_keys(root: Path, retry=None) -> set[str]:
    """Keys done in the main store or in any shard (read-only: other ranks may be writing).

    ``retry(reason)``: True for a skip reason that does not make a study done (a PACS study that was not
    retrieved is tried again)."""
    done: set[str] = set()
    stores = [Path(root) / files.BUILD, *sorted((Path(root) / files.SHARDS).glob("rank-*"))]
    for folder in stores:
        if (folder / "build.sqlite").exists():
            store = BuildStore(folder, writable=False)
            try:
                if retry is None:
                    done |= store.done_keys()
                else:
                    done |= store.indexed_keys()
                    done |= {key for key, _path, reason in store.skipped() if not retry(reason)}
            finally:
                store.close()
    return done


def merge_shards(main: BuildStore, root: Path, log=None) -> int:
    """Copy every shard's studies and skips into ``main`` (keys it lacks); remove the shards. Returns studies added."""
    say = log or (lambda msg: None)
    have = main.done_keys()
    indexed = main.indexed_keys()  # a study a shard indexed that the main store only skipped (retried) joins
    added = 0
    for folder in sorted((Path(root) / files.SHARDS).glob("rank-*")):
        if not (folder / "build.sqlite").exists():
            continue
        shard = BuildStore(folder, writable=False)
        try:
            why = identity_mismatch(shard.identity, main.identity)
            if why:
                raise ValueError(f"{folder} was embedded with another model ({why}); rebuild with --rebuild")
            for start, rows in shard.chunks():
                q = "SELECT * FROM studies WHERE id >= ? AND id < ? ORDER BY id"
                metas = rows_to_dicts(shard.con.execute(q, (start, start + len(rows))))
                keep = [j for j, rid in enumerate(range(start, start + len(rows))) if metas[rid]["key"] not in indexed]
                if keep:
                    picked = [{k: v for k, v in metas[start + j].items() if k != "id"} for j in keep]
                    main.add(rows[keep], picked)
                    have.update(m["key"] for m in picked)
                    indexed.update(m["key"] for m in picked)
                    added += len(keep)
            for key, path, reason in shard.skipped():
                if key not in have:
                    main.skip(key, path, reason)
                    have.add(key)
        finally:
            shard.close()
        say(f"merged {folder.name}")
    shutil.rmtree(Path(root) / files.SHARDS, ignore_errors=True)
    return added
