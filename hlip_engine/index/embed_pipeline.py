"""Index a library of studies with a model: discover -> load + preprocess (worker processes) -> encode -> store.

The same function runs alone or under torchrun (each rank embeds its shard, rank 0 merges and
publishes; see shard.py). Everything finished is durable (durable_store.py): kill -9 at any moment,
then ``--resume`` continues with the studies not yet indexed or skipped.

``build_node`` is the same build over the studies of a PACS node (sources.py): found by C-FIND / QIDO-RS,
each retrieved into the study cache by a worker, embedded, then dropped from the cache unless ``keep``.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..model.checkpoint import model_fingerprint
from ..preprocessing import model_recipe
from ..search import encode_prepared
from .files import IndexFormatError
from .reports import match_impression, read_impressions
from .shard import Group, Ranks, finished_keys, merge_shards, shard_dir
from .sources import FolderSource, NodeSource, _one_line, prepare_study, study_key
from .version_writer import IndexBuild

__all__ = ["BuildReport", "build_library", "build_node", "prepare_study", "study_key"]


def _as_is(item):
    return item


@dataclass
class BuildReport:
    library: str
    index: str
    discovered: int = 0
    already_done: int = 0
    indexed: int = 0
    skipped: list[tuple[str, str]] = field(default_factory=list)  # (path, reason), this run, this rank
    total_indexed: int = 0
    total_skipped: int = 0
    seconds: float = 0.0
    published: str = ""  # version name, "" when this rank did not publish
    index_type: str = ""
    error: str = ""
    rank: int = 0
    where: str = "under"  # "under" a library folder, "on" a PACS node

    @property
    def rate(self) -> float:
        """Studies indexed per second in this run (finding them, loading the model and publishing included)."""
        return self.indexed / self.seconds if self.seconds else 0.0

    def lines(self, max_skipped: int = 50) -> list[str]:
        rate = self.rate
        out = [f"{self.discovered} studies found {self.where} {self.library}; {self.already_done} done in earlier runs; "
               f"indexed {self.indexed}, skipped {len(self.skipped)} in {self.seconds:.1f} s ({rate:.2f} studies/s)"]
        for path, reason in self.skipped[:max_skipped]:
            out.append(f"  skipped {path}: {reason}")
        if len(self.skipped) > max_skipped:
            out.append(f"  ... and {len(self.skipped) - max_skipped} more skipped")
        if self.published:
            out.append(f"{self.index}: {self.total_indexed} studies searchable ({self.index_type}), "
                       f"{self.total_skipped} skipped in total; published version {self.published}")
        return out


def build_library(library: str | Path, checkpoint: str | Path, index_dir: str | Path, *, recipe: str | None = None,
                  workers: int = 2, resume: bool = False, rebuild: bool = False, keep_identifiers: bool = False,
                  batch_size: int = 4, device: str | None = None, index_type: str = "auto", progress: bool = True,
                  flush_every: int = 256, flush_seconds: float = 30.0, log=print,
                  reports: str | Path | None = None) -> BuildReport:
    """Embed every study under ``library`` with ``checkpoint`` into the index at ``index_dir``; see module doc.

    reports: a JSON/CSV of report texts (as ``training.prepare --reports``): each study's impression is
    recorded with it (``impression``), for search hits to show."""
    return _run(FolderSource(library), checkpoint, index_dir, recipe=recipe, workers=workers, resume=resume,
                rebuild=rebuild, keep_identifiers=keep_identifiers, batch_size=batch_size, device=device,
                index_type=index_type, progress=progress, flush_every=flush_every, flush_seconds=flush_seconds,
                log=log, reports=reports)


def build_node(node, checkpoint: str | Path, index_dir: str | Path, *, filters: dict | None = None,
               keep: bool = False, cache=None, limit: int | None = None, **options) -> BuildReport:
    """Embed every study on the PACS ``node`` (a :class:`~hlip_engine.pacs.Node`, a URL or a nodes-file name)
    that matches ``filters`` (those of ``find_studies``: patient_id, accession, modality, date_from, date_to,
    description, ...) into the index at ``index_dir``. Each study is retrieved into ``cache`` (a StudyCache or
    its folder; default the user's study cache), embedded, and dropped from the cache again unless ``keep``.
    Its metadata records ``node`` and ``study_uid``. Other options as :func:`build_library`; ``workers``
    processes retrieve and load studies at once. A PacsError names the node when it cannot be searched."""
    return _run(NodeSource(node, filters=filters, keep=keep, cache=cache, limit=limit), checkpoint, index_dir,
                **options)


def _run(source, checkpoint, index_dir, *, reports=None, **options) -> BuildReport:
    impressions = read_impressions(reports) if reports else {}
    ranks = Ranks.from_env()
    group = Group(ranks)
    try:
        return _build(source, Path(checkpoint), Path(index_dir), ranks, group, impressions=impressions,
                      **_defaults(options))
    finally:
        group.close()


def _defaults(options: dict) -> dict:
    out = dict(recipe=None, workers=2, resume=False, rebuild=False, keep_identifiers=False, batch_size=4,
               device=None, index_type="auto", progress=True, flush_every=256, flush_seconds=30.0, log=print)
    unknown = set(options) - set(out)
    if unknown:
        raise TypeError(f"unknown build option(s): {', '.join(sorted(unknown))}")
    return {**out, **options}


def _build(source, checkpoint, root, ranks, group, *, recipe, workers, resume, rebuild, keep_identifiers,
           batch_size, device, index_type, progress, flush_every, flush_seconds, log,
           impressions=None) -> BuildReport:
    import torch

    from hlip_engine.model import load_model

    t0 = time.time()
    report = BuildReport(source.label, str(root), rank=ranks.rank, where=source.where)
    say = log if ranks.rank == 0 else (lambda msg: None)

    # 1. rank 0 finds the studies (headers only, or a C-FIND / QIDO-RS search) and tells the others
    found: Any = None
    if ranks.rank == 0:
        try:
            if not Path(checkpoint).exists():
                raise FileNotFoundError(f"{checkpoint}: no such model checkpoint")
            found = source.find(progress)
        except (ValueError, OSError, RuntimeError) as e:  # RuntimeError: a PacsError (down, refused, ...)
            found = ValueError(str(e))
    found = group.broadcast(found)
    if isinstance(found, Exception):
        raise found
    refs = found
    report.discovered = len(refs)

    # 2. the model, and the identity its embeddings are recorded with
    if device is None and ranks.distributed and torch.cuda.is_available():
        device = f"cuda:{ranks.local_rank}"
    model = load_model(checkpoint, device=device)
    recipe, options = model_recipe(model.config.get("preprocess"), recipe)
    ident = dict(dim=int(model.embed_dim), model_id=checkpoint.name, model_hash=model_fingerprint(checkpoint),
                 architecture=str(model.config.get("name", "")), recipe=recipe, keep_identifiers=keep_identifiers)

    # 3. rank 0 checks the folder (other model? unfinished build?) and lists what is not done yet,
    #    before any other rank writes; then each rank takes every world_size-th study of that list
    index = None
    todo: Any = None
    if ranks.rank == 0:
        try:
            index = IndexBuild.create(root, resume=resume, rebuild=rebuild, **ident)
            # the main store and any shards left by a killed torchrun build; a PACS study that was not
            # retrieved then is tried again
            done = finished_keys(root, retry=source.retry_skip)
            todo = [r for r in refs if study_key(r) not in done]
        except (ValueError, OSError) as e:  # every rank raises the same error type (ModelMismatchError, ...)
            todo = e if isinstance(e, IndexFormatError) else ValueError(str(e))
    todo = group.broadcast(todo)
    if isinstance(todo, Exception):
        raise todo
    if ranks.rank != 0:
        index = IndexBuild.create(root, resume=True, store=shard_dir(root, ranks.rank), **ident)
    report.already_done = len(refs) - len(todo) if ranks.rank == 0 else 0
    say(f"{len(refs)} studies found, {len(refs) - len(todo)} done earlier; embedding with "
        f"{ident['architecture']} ({recipe}) on {model.device}" + (f" x {ranks.world_size} ranks" if ranks.distributed else ""))
    todo = todo[ranks.rank::ranks.world_size]

    dataset = source.dataset(todo, recipe, options)
    try:
        _embed(model, index, dataset, report, workers=workers, batch_size=batch_size, progress=progress,
               flush_every=flush_every, flush_seconds=flush_seconds, ranks=ranks, impressions=impressions or {})
    finally:
        dataset.close()

    # 5. every rank done -> rank 0 merges the shards and publishes
    group.barrier()
    if ranks.rank == 0:
        added = merge_shards(index.store, root, log=say)
        if added:
            say(f"merged {added} studies from other ranks")
        try:
            published = index.commit(index_type=index_type, log=say, extra_info={
                "checkpoint": str(checkpoint.resolve()), **source.info(),
                "preprocess": {"recipe": recipe, **options},
                "build": {"world_size": ranks.world_size, "workers": workers, "device": str(model.device)}})
            info = published.info
            published.close()
            report.published = info["version"]
            report.index_type = info["index"]["type"]
            report.total_indexed, report.total_skipped = info["count"], info["skipped"]
        except ValueError as e:
            report.error = str(e)
    index.close()
    report.seconds = time.time() - t0
    return report


def _embed(model, index, dataset, report, *, workers, batch_size, progress, flush_every,
           flush_seconds, ranks, impressions=None) -> None:
    """The loop: workers prepare studies (and retrieve them, from a PACS), this process encodes them in
    batches and stores them durably."""
    import torch
    from torch.utils.data import DataLoader
    from tqdm import tqdm

    if not len(dataset):
        return
    workers = min(workers, len(dataset), getattr(dataset, "max_workers", None) or workers)
    loader = DataLoader(dataset, batch_size=None, shuffle=False, num_workers=workers,
                        collate_fn=_as_is, prefetch_factor=2 if workers else None)
    bar = tqdm(total=len(dataset), unit="study", desc=f"rank {ranks.rank}" if ranks.distributed else "indexing",
               disable=not progress, dynamic_ncols=True, position=ranks.rank if ranks.distributed else None)
    ready: list[dict] = []  # prepared, waiting for a batch
    vectors: list[np.ndarray] = []  # encoded, waiting to be stored
    metas: list[dict] = []
    last_flush = time.time()

    def store(force: bool = False) -> None:
        nonlocal last_flush, vectors, metas
        if metas and (force or len(metas) >= flush_every or time.time() - last_flush >= flush_seconds):
            index.add(np.stack(vectors), metas)
            report.indexed += len(metas)
            vectors, metas, last_flush = [], [], time.time()

    def encode(batch: list[dict]) -> None:
        for item, vec, reason in _encode_batch(model, batch):
            if vec is None:
                skip(item["meta"], reason)
            else:
                impression = match_impression(impressions, item["meta"]) if impressions else ""
                if impression:
                    item["meta"]["impression"] = impression
                vectors.append(vec)
                metas.append(item["meta"])
        bar.update(len(batch))

    def skip(meta: dict, reason: str) -> None:
        index.skip(meta["key"], meta["path"], reason)
        report.skipped.append((meta["path"], reason))

    with torch.inference_mode():
        for item in loader:
            if item["tensor"] is None:
                skip(item["meta"], item["reason"])
                bar.update(1)
            else:
                ready.append(item)
                if len(ready) >= batch_size:
                    encode(ready)
                    ready = []
            store()
            bar.set_postfix(indexed=report.indexed + len(metas), skipped=len(report.skipped), refresh=False)
        if ready:
            encode(ready)
        store(force=True)
    bar.set_postfix(indexed=report.indexed, skipped=len(report.skipped))
    bar.close()


def _encode_batch(model, batch: list[dict]):
    """[(item, vector float32 [E] or None, reason)]; a batch that fails is retried one study at a time."""
    try:
        out = encode_prepared(model, [item["tensor"] for item in batch])
        return [(item, out[i], "") for i, item in enumerate(batch)]
    except Exception as e:  # noqa: BLE001
        if len(batch) == 1:
            return [(batch[0], None, f"encoding failed: {type(e).__name__}: {_one_line(e)}")]
    return [r for item in batch for r in _encode_batch(model, [item])]
