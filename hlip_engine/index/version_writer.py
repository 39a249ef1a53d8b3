"""``IndexBuild``: a study index being written; ``commit()`` publishes it and returns a ``StudyIndex``.

::

    build = IndexBuild.create("lib.index", dim=512, model_id="hlip_demo.safetensors", model_hash=sha)
    build.add(embeddings, [{"key": ..., "path": ..., "study_uid": ..., "date": "20240301",
                            "modality": "MR", "description": ..., "n_scans": 7, "recipe": "brain-mri"}])
    build.skip(key, path, "reason")   # a study that could not be indexed
    index = build.commit()            # trains/tunes the FAISS index, publishes atomically -> StudyIndex
    build.close()                     # releases the build lock

Everything added is durable at once (durable_store.py): a killed build resumes with ``resume=True``.
Reading is :class:`~hlip_engine.index.store.StudyIndex`'s alone; this class never searches.
"""
from __future__ import annotations

import shutil
import sqlite3
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from . import faiss_index, files
from . import metadata as md
from .durable_store import BuildStore, describe_identity, identity_mismatch, remove_store
from .files import BuildConflictError, IndexFormatError, ModelMismatchError
from .store import StudyIndex
from .vectors import EmbeddingFile, normalise

TUNING_QUERIES = 256


class IndexBuild:
    """A build in progress in an index folder (holds the folder's build lock until ``close``)."""

    def __init__(self, root: Path):
        self.root = Path(root)
        self._store: BuildStore | None = None

    @classmethod
    def create(cls, path: str | Path, dim: int, model_id: str, *, model_hash: str = "", architecture: str = "",
               recipe: str = "", keep_identifiers: bool = False, resume: bool = False, rebuild: bool = False,
               store: str | Path | None = None) -> IndexBuild:
        """Start (or with ``resume`` continue) a build into ``path``; nothing is published before commit().

        An index or unfinished build made with another model, embedding size or recipe is refused unless
        ``rebuild`` (which starts over; the published index stays searchable until the new commit).
        An existing build by the same model is refused unless ``resume`` (add new studies, keep the old)
        or ``rebuild``. ``store``: where the build store lives (default ``path/build``; torchrun ranks
        use ``path/shards/rank-N``).
        """
        if int(dim) <= 0:
            raise ValueError(f"embedding size must be positive, got {dim}")
        self = cls(path)
        self.root.mkdir(parents=True, exist_ok=True)
        ident = {"dim": int(dim), "model_id": str(model_id), "model_hash": model_hash,
                 "architecture": architecture, "recipe": recipe, "keep_identifiers": bool(keep_identifiers)}
        store_dir = Path(store) if store is not None else self.root / files.BUILD
        published = self._published_identity(rebuild)
        if published is not None and not rebuild:
            why = identity_mismatch(published["identity"], ident)
            if why:
                raise ModelMismatchError(
                    f"{self.root} holds an index built with {describe_identity(published['identity'])}; "
                    f"this build uses {describe_identity(ident)} ({why}). Pass --rebuild to replace it.")
        if rebuild:
            remove_store(store_dir)
            if store is None:
                for shard in sorted((self.root / files.SHARDS).glob("rank-*")):
                    remove_store(shard)
        elif (store_dir / "build.sqlite").exists():
            existing = BuildStore(store_dir, writable=False)
            have, n = existing.identity, len(existing)
            existing.close()
            why = identity_mismatch(have, ident)
            if why:
                raise ModelMismatchError(
                    f"{store_dir} holds an unfinished build with {describe_identity(have)}; this build uses "
                    f"{describe_identity(ident)} ({why}). Pass --rebuild to start over.")
            if have.get("keep_identifiers", False) != ident["keep_identifiers"]:
                raise BuildConflictError(f"{store_dir} was started {'with' if have.get('keep_identifiers') else 'without'}"
                                 " --keep-identifiers; resume it the same way or pass --rebuild")
            if not resume and (n or published is not None):
                raise BuildConflictError(f"{self.root} already holds {n} studies; pass --resume to continue or add "
                                 "new studies, or --rebuild to start over")
        elif published is not None and not resume:
            raise BuildConflictError(f"{self.root} already holds a published index of {published['count']} studies; "
                             "pass --resume to add new studies, or --rebuild to start over")
        self._store = BuildStore(store_dir, ident)
        if published is not None and resume and len(self._store) == 0 and store is None:
            self._seed_from_published()
        return self

    def _published_identity(self, rebuild: bool) -> dict[str, Any] | None:
        try:
            version = files.current_version(self.root)
            info = files.read_info(version, verify=False)
        except (FileNotFoundError, IndexFormatError):
            if rebuild or not (self.root / files.CURRENT).exists():
                return None
            raise
        return {"identity": info["identity"], "count": info["count"], "version": version}

    def _seed_from_published(self) -> None:
        """The build store was removed (e.g. only the published index was copied): refill it from there."""
        reader = StudyIndex.open(self.root, verify=True)
        try:
            for start, rows in reader.embedding_chunks(65536):
                metas = reader.metadata(np.arange(start, start + len(rows)))
                self._store.add(rows, [{k: v for k, v in m.items() if k != "id"} for m in metas])
            for key, path, reason in reader.skipped():
                self._store.skip(key, path, reason)
        finally:
            reader.close()

    def add(self, vectors: np.ndarray, metadata: Sequence[dict[str, Any]]) -> np.ndarray:
        """Durably record studies (float32 [n, dim] embeddings + one metadata dict each); returns row ids.

        Metadata keys: key (unique; default 'path#study_uid'), path, study_uid, date, modality,
        description, n_scans, recipe; others are kept as JSON. Patient identifiers are dropped
        unless the index was created with keep_identifiers.
        """
        return self.store.add(vectors, metadata)

    def skip(self, key: str, path: str, reason: str) -> None:
        """Record a study that could not be indexed (shown in the report; not retried by --resume)."""
        self.store.skip(key, path, reason)

    def done_keys(self) -> set[str]:
        """Keys of studies already indexed or skipped: what a resumed build must not redo."""
        return self.store.done_keys()

    def commit(self, *, index_type: str = "auto", extra_info: dict[str, Any] | None = None,
               log=None) -> StudyIndex:
        """Build the FAISS index over everything added so far, publish it atomically, and return it opened
        for searching (its ``info`` says what was published). The build stays open: add more, commit again.

        A failure or kill here leaves the previously published index (if any) untouched.
        """
        store = self.store
        n, dim = len(store), store.dim
        if n == 0:
            raise ValueError(f"{self.root}: nothing to publish: no study was indexed "
                             f"({len(store.skipped())} skipped)")
        say = log or (lambda msg: None)
        t0 = time.time()
        tmp, name = files.new_version_dir(self.root)
        try:
            plan = faiss_index.plan_for(n, index_type)
            say(f"writing {n} embeddings")
            sample = self._write_embeddings(store, tmp / "embeddings.f16", plan)
            embeddings = EmbeddingFile(tmp / "embeddings.f16", n, dim)
            say(f"building {'exact' if plan['type'] == 'flat' else 'IVF-SQ8 ' + str(plan['nlist'])} index")
            # 16k rows at a time: FAISS's per-batch temporaries stay ~100 MB (512-d)
            index = faiss_index.build(dim, plan, lambda: (rows for _, rows in embeddings.chunks(16384)), sample)
            if plan["type"] != "flat":
                say("tuning nprobe for recall@10")
                searcher = faiss_index.Searcher(index, plan, embeddings, use_gpu=False)
                queries = _tuning_queries(embeddings, TUNING_QUERIES)
                truth = faiss_index.exact_top_k(queries, embeddings.chunks(16384), min(10, n))
                plan["nprobe"], plan["tuned_recall_at_10"] = faiss_index.tune_nprobe(searcher, queries, truth)
                say(f"nprobe {plan['nprobe']} (recall@10 {plan['tuned_recall_at_10']:.3f}); writing metadata")
            import faiss

            faiss.write_index(index, str(tmp / "index.faiss"))
            embeddings.close()
            self._write_metadata(store, tmp / "metadata.sqlite")
            say("publishing")
            info = {"identity": store.identity, "count": n, "skipped": len(store.skipped()),
                    "index": plan, "trained_count": n, "store_generation": store.generation, "built_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                    "commit_seconds": round(time.time() - t0, 2), **(extra_info or {})}
            version = files.publish(self.root, tmp, name, info)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        return StudyIndex.attach(self.root, version, index)  # searchable right away, FAISS still in memory

    @staticmethod
    def _write_embeddings(store: BuildStore, path: Path, plan: dict) -> np.ndarray:
        """Copy the store's chunks into one float16 file; return a random training sample (float32)."""
        n = len(store)
        want = min(n, faiss_index.TRAIN_POINTS_PER_LIST * plan.get("nlist", 0))
        rng = np.random.default_rng(0)
        chosen = np.sort(rng.choice(n, size=want, replace=False)) if want else np.zeros(0, np.int64)
        sample = np.empty((want, store.dim), np.float32)
        with open(path, "wb") as f:
            for start, raw in store.raw_chunks():  # float16 as stored: copied, not converted
                f.write(raw.tobytes())
                lo, hi = np.searchsorted(chosen, [start, start + len(raw)])
                sample[lo:hi] = raw[chosen[lo:hi] - start]
        return sample

    @staticmethod
    def _write_metadata(store: BuildStore, path: Path) -> None:
        con = sqlite3.connect(path, isolation_level=None)
        try:
            con.execute(md.STUDIES_SQL)
            con.execute(md.SKIPPED_SQL)
            con.execute("ATTACH DATABASE ? AS build", (f"file:{store.folder / 'build.sqlite'}?mode=ro",))
            con.execute("BEGIN")
            con.execute("INSERT INTO studies SELECT * FROM build.studies ORDER BY id")
            con.execute("INSERT INTO skipped SELECT * FROM build.skipped")
            con.execute("COMMIT")
            con.execute("DETACH DATABASE build")
            for sql in md.FILTER_INDEXES_SQL:
                con.execute(sql)
        finally:
            con.close()


    # --- state --------------------------------------------------------------------------------
    @property
    def store(self) -> BuildStore:
        """The durable build store (torchrun's rank 0 merges the other ranks' shards into it)."""
        if self._store is None:
            raise ValueError(f"{self.root}: this index build was closed")
        return self._store

    @property
    def identity(self) -> dict[str, Any]:
        """dim, model_id, model_hash, architecture, recipe, keep_identifiers of the embeddings."""
        return self.store.identity

    @property
    def dim(self) -> int:
        return int(self.identity["dim"])

    def __len__(self) -> int:
        return len(self.store)

    def skipped(self) -> list[tuple[str, str, str]]:
        """(key, path, reason) of studies that could not be indexed."""
        return self.store.skipped()

    def close(self) -> None:
        """Release the build lock (also released when the process ends)."""
        if self._store is not None:
            self._store.close()
            self._store = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def __repr__(self) -> str:
        n = len(self._store) if self._store is not None else "closed"
        return f"IndexBuild({str(self.root)!r}, {n} studies, {describe_identity(self._store.identity) if self._store else ''})"


def _tuning_queries(embeddings: EmbeddingFile, m: int) -> np.ndarray:
    """Half stored studies, half mid-points of random pairs (stand-ins for queries between clusters)."""
    rng = np.random.default_rng(1)
    n = embeddings.n
    a = embeddings.rows(rng.choice(n, size=m, replace=n < m))
    b = embeddings.rows(rng.choice(n, size=m, replace=n < m))
    q = np.concatenate([a[: m // 2], a[m // 2:] + b[m // 2:]])
    return normalise(q, "tuning queries")

