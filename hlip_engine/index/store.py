"""``StudyIndex``: the study library as a FAISS index + SQLite metadata + info JSON, in one folder.

Writing::

    index = StudyIndex.create("lib.index", dim=512, model_id="hlip_demo", model_hash=sha)
    index.add(embeddings, [{"key": ..., "path": ..., "study_uid": ..., "date": "20240301",
                            "modality": "MR", "description": ..., "n_scans": 7, "recipe": "brain-mri"}])
    index.commit()           # trains/tunes the FAISS index and publishes it atomically

Reading::

    index = StudyIndex.open("lib.index")
    scores, ids = index.search(text_embedding, k=10, modality="MR", date_from="2024-01-01")
    hits = index.metadata(ids[0])

Cosine similarity = inner product of L2-normalised embeddings (``add`` and ``search`` normalise).
See files.py for the folder layout and faiss_index.py for which FAISS index a library gets.
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
from .build_store import BuildStore, describe_identity, identity_mismatch, remove_store
from .files import IndexFormatError
from .vectors import EmbeddingFile, normalise

TUNING_QUERIES = 256


class StudyIndex:
    """A published study index (read) or a build in progress (write); see the module docstring."""

    def __init__(self, root: Path):
        self.root = Path(root)
        self.info: dict[str, Any] = {}
        self._store: BuildStore | None = None
        self._con: sqlite3.Connection | None = None
        self._searcher: faiss_index.Searcher | None = None
        self._embeddings: EmbeddingFile | None = None
        self._filters: md.FilterColumns | None = None
        self._selections: dict[tuple, faiss_index.Selection] = {}
        self.version: Path | None = None

    # --- opening ------------------------------------------------------------------------------
    @classmethod
    def open(cls, path: str | Path, *, verify: bool = False, use_gpu: bool | None = None,
             expect_model: dict[str, Any] | None = None) -> StudyIndex:
        """Open the published index in ``path`` for searching.

        Always checked: the CURRENT pointer, info.json, every file's size, FAISS and SQLite row counts
        (a half-copied index fails here). verify: also every file's sha256 against info.json (about
        1.5 s per GB; ``hlip index info`` does it), which catches bit-level damage. expect_model: an identity dict
        (dim, model_id, model_hash, recipe) the index must have been built with.
        """
        self = cls(path)
        version = files.current_version(self.root)
        self._load_version(version, verify=verify, use_gpu=use_gpu)
        if expect_model is not None:
            why = identity_mismatch(self.identity, {**self.identity, **expect_model})
            if why:
                raise IndexFormatError(f"{self.root} was built with {describe_identity(self.identity)}, "
                                       f"not {describe_identity({**self.identity, **expect_model})}: {why}")
        return self

    @classmethod
    def create(cls, path: str | Path, dim: int, model_id: str, *, model_hash: str = "", architecture: str = "",
               recipe: str = "", keep_identifiers: bool = False, resume: bool = False, rebuild: bool = False,
               store: str | Path | None = None) -> StudyIndex:
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
                raise IndexFormatError(
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
                raise IndexFormatError(
                    f"{store_dir} holds an unfinished build with {describe_identity(have)}; this build uses "
                    f"{describe_identity(ident)} ({why}). Pass --rebuild to start over.")
            if have.get("keep_identifiers", False) != ident["keep_identifiers"]:
                raise ValueError(f"{store_dir} was started {'with' if have.get('keep_identifiers') else 'without'}"
                                 " --keep-identifiers; resume it the same way or pass --rebuild")
            if not resume and (n or published is not None):
                raise ValueError(f"{self.root} already holds {n} studies; pass --resume to continue or add "
                                 "new studies, or --rebuild to start over")
        elif published is not None and not resume:
            raise ValueError(f"{self.root} already holds a published index of {published['count']} studies; "
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
            for start, rows in reader._embeddings.chunks(65536):
                metas = reader.metadata(np.arange(start, start + len(rows)))
                self._store.add(rows, [{k: v for k, v in m.items() if k != "id"} for m in metas])
            for key, path, reason in reader.skipped():
                self._store.skip(key, path, reason)
        finally:
            reader.close()

    def _load_version(self, version: Path, verify: bool, use_gpu: bool | None, index=None) -> None:
        """Attach a published version (its FAISS index read from disk unless already in memory)."""
        import faiss

        info = files.read_info(version, verify=verify)
        n, dim = int(info["count"]), int(info["identity"]["dim"])
        if index is None:
            try:
                index = faiss.read_index(str(version / "index.faiss"))
            except RuntimeError as e:
                raise IndexFormatError(f"{version / 'index.faiss'}: corrupted index "
                                       f"({str(e).splitlines()[0]})") from None
        if index.ntotal != n or index.d != dim:
            raise IndexFormatError(f"{version}: corrupted index: FAISS holds {index.ntotal} x {index.d}, "
                                   f"info.json says {n} x {dim}")
        con = sqlite3.connect(f"file:{version / 'metadata.sqlite'}?mode=ro", uri=True, check_same_thread=False)
        con.row_factory = sqlite3.Row
        try:
            rows = con.execute("SELECT COUNT(*) FROM studies").fetchone()[0]
        except sqlite3.DatabaseError as e:
            raise IndexFormatError(f"{version / 'metadata.sqlite'}: corrupted metadata ({e})") from None
        if rows != n:
            raise IndexFormatError(f"{version}: corrupted index: {rows} metadata rows for {n} embeddings")
        self.close()
        self.info, self.version, self._con = info, version, con
        self._embeddings = EmbeddingFile(version / "embeddings.f16", n, dim)
        self._searcher = faiss_index.Searcher(index, dict(info["index"]), self._embeddings, use_gpu=use_gpu)

    # --- writing ------------------------------------------------------------------------------
    def _writer(self) -> BuildStore:
        if self._store is None:
            raise ValueError(f"{self.root} was opened for searching; use StudyIndex.create(...) to add studies")
        return self._store

    def add(self, vectors: np.ndarray, metadata: Sequence[dict[str, Any]]) -> np.ndarray:
        """Durably record studies (float32 [n, dim] embeddings + one metadata dict each); returns row ids.

        Metadata keys: key (unique; default 'path#study_uid'), path, study_uid, date, modality,
        description, n_scans, recipe; others are kept as JSON. Patient identifiers are dropped
        unless the index was created with keep_identifiers.
        """
        return self._writer().add(vectors, metadata)

    def skip(self, key: str, path: str, reason: str) -> None:
        """Record a study that could not be indexed (shown in the report; not retried by --resume)."""
        self._writer().skip(key, path, reason)

    def done_keys(self) -> set[str]:
        """Keys of studies already indexed or skipped: what a resumed build must not redo."""
        return self._writer().done_keys()

    def commit(self, *, index_type: str = "auto", extra_info: dict[str, Any] | None = None,
               log=None) -> dict[str, Any]:
        """Build the FAISS index over everything added so far and publish it atomically; returns info.

        A failure or kill here leaves the previously published index (if any) untouched.
        """
        store = self._writer()
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
                    "index": plan, "built_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                    "commit_seconds": round(time.time() - t0, 2), **(extra_info or {})}
            version = files.publish(self.root, tmp, name, info)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        self._load_version(version, verify=False, use_gpu=None, index=index)  # searchable right away
        return self.info

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

    # --- reading ------------------------------------------------------------------------------
    def _reader(self) -> faiss_index.Searcher:
        if self._searcher is None:
            raise ValueError(f"{self.root}: nothing published yet; call commit() first")
        return self._searcher

    @property
    def identity(self) -> dict[str, Any]:
        """dim, model_id, model_hash, architecture, recipe, keep_identifiers of the embeddings."""
        if self.info:
            return self.info["identity"]
        return self._writer().identity

    @property
    def dim(self) -> int:
        return int(self.identity["dim"])

    def __len__(self) -> int:
        if self._store is not None:
            return len(self._store)
        return int(self.info.get("count", 0))

    def search(self, vectors: np.ndarray, k: int = 10, *, modality: str | Sequence[str] | None = None,
               date_from: Any = None, date_to: Any = None, exclude: Sequence[int] = ()):
        """Most similar studies: (scores float32 [q, k], ids int64 [q, k]), best first.

        vectors: [q, dim] or [dim] query embeddings (text or study), normalised here. Filters keep
        studies of the given modality/modalities and with a date in [date_from, date_to] (inclusive;
        '2024-03-01' or '20240301'). Where fewer than k studies match, ids are -1 and scores -inf.
        exclude: row ids never returned (the query study itself in a 'more like this' search).
        """
        searcher = self._reader()
        if int(k) < 1:
            raise ValueError(f"k must be at least 1, got {k}")
        q = normalise(vectors, "query embeddings", self.dim)
        selection = self._selection(modality, date_from, date_to)
        drop = np.asarray(sorted({int(i) for i in exclude}), dtype=np.int64)
        if not len(drop):
            return searcher.search(q, int(k), selection)
        # over-fetch by the number excluded, then drop them: cheaper than a selection of n - 1 rows
        scores, ids = searcher.search(q, int(k) + len(drop), selection)
        keep = ~np.isin(ids, drop)
        order = np.argsort(~keep, axis=1, kind="stable")[:, : int(k)]  # kept ones first, order preserved
        scores, ids = np.take_along_axis(scores, order, 1), np.take_along_axis(ids, order, 1)
        gone = ~np.take_along_axis(keep, order, 1)
        return np.where(gone, -np.inf, scores).astype(np.float32), np.where(gone, -1, ids)

    def _selection(self, modality, date_from, date_to) -> faiss_index.Selection | None:
        """The filter as a Selection, cached: a search box repeats the same filter query after query."""
        if not (modality or date_from or date_to):
            return None
        mods = (modality,) if isinstance(modality, str) else tuple(modality or ())
        key = (mods, str(date_from or ""), str(date_to or ""))
        if key not in self._selections:
            if self._filters is None:
                self._filters = md.FilterColumns(self._con)
            if len(self._selections) >= 8:
                self._selections.pop(next(iter(self._selections)))
            self._selections[key] = faiss_index.Selection(self._filters.select(*key))
        return self._selections[key]

    def metadata(self, ids: Sequence[int] | np.ndarray) -> list[dict[str, Any] | None]:
        """Metadata dicts for row ids, in order (None for -1, FAISS's 'no result')."""
        if self._con is None:
            raise ValueError(f"{self.root}: nothing published yet; call commit() first")
        return md.fetch(self._con, ids)

    def vectors(self, ids: Sequence[int] | np.ndarray) -> np.ndarray:
        """Stored embeddings float32 [len(ids), dim] (float16 precision)."""
        self._reader()
        return self._embeddings.rows(np.asarray(ids, dtype=np.int64))

    def find(self, key: str | None = None, *, path: str | None = None, study_uid: str | None = None) -> int | None:
        """Row id of a study by key, path or StudyInstanceUID; None when absent."""
        if self._con is None:
            raise ValueError(f"{self.root}: nothing published yet; call commit() first")
        for col, val in (("key", key), ("path", path), ("study_uid", study_uid)):
            if val:
                row = self._con.execute(f"SELECT id FROM studies WHERE {col}=? ORDER BY id LIMIT 1",
                                        (str(val),)).fetchone()
                if row:
                    return int(row[0])
        return None

    def skipped(self) -> list[tuple[str, str, str]]:
        """(key, path, reason) of studies that could not be indexed."""
        if self._store is not None:
            return self._store.skipped()
        return [tuple(r) for r in self._con.execute("SELECT key, path, reason FROM skipped ORDER BY key")]

    def close(self) -> None:
        if self._con is not None:
            self._con.close()
            self._con = None
        if self._embeddings is not None:
            self._embeddings.close()
            self._embeddings = None
        self._searcher = None
        self._filters = None
        self._selections = {}

    def close_writer(self) -> None:
        """Release the build lock (also released when the process ends)."""
        if self._store is not None:
            self._store.close()
            self._store = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
        self.close_writer()

    def __repr__(self) -> str:
        state = "build" if self._store is not None else "published"
        return f"StudyIndex({str(self.root)!r}, {len(self)} studies, {state}, {describe_identity(self.identity)})"


def _tuning_queries(embeddings: EmbeddingFile, m: int) -> np.ndarray:
    """Half stored studies, half mid-points of random pairs (stand-ins for queries between clusters)."""
    rng = np.random.default_rng(1)
    n = embeddings.n
    a = embeddings.rows(rng.choice(n, size=m, replace=n < m))
    b = embeddings.rows(rng.choice(n, size=m, replace=n < m))
    q = np.concatenate([a[: m // 2], a[m // 2:] + b[m // 2:]])
    return normalise(q, "tuning queries")

