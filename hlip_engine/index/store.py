"""``StudyIndex``: a published study library (FAISS index + SQLite metadata + info JSON in one folder), read-only.

Writing one is :class:`~hlip_engine.index.version_writer.IndexBuild`'s work (create / add / skip / commit,
which returns a ``StudyIndex``). Reading::

    index = StudyIndex.open("lib.index")
    scores, ids = index.search(text_embedding, k=10, modality="MR", date_from="2024-01-01")
    hits = index.metadata(ids[0])

Cosine similarity = inner product of L2-normalised embeddings (``IndexBuild.add`` and ``search`` normalise).
See files.py for the folder layout and faiss_index.py for which FAISS index a library gets.
"""
from __future__ import annotations

import sqlite3
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from . import faiss_index, files
from . import metadata as md
from .durable_store import describe_identity, identity_mismatch
from .files import IndexFormatError, ModelMismatchError
from .vectors import EmbeddingFile, normalise


class StudyIndex:
    """A published study index, opened for searching; see the module docstring."""

    def __init__(self, root: Path):
        self.root = Path(root)
        self.info: dict[str, Any] = {}
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
            self.check_model(expect_model)
        return self

    @classmethod
    def attach(cls, root: str | Path, version: Path, index) -> StudyIndex:
        """A version just published by an IndexBuild, its FAISS index already in memory."""
        self = cls(root)
        self._load_version(version, verify=False, use_gpu=None, index=index)
        return self

    def check_model(self, expect_model: dict[str, Any]) -> None:
        """Raise IndexFormatError unless the index was built with this identity (dim, model_id, model_hash)."""
        want = {**self.identity, **expect_model}
        why = identity_mismatch(self.identity, want)
        if why:
            raise ModelMismatchError(f"{self.root} was built with {describe_identity(self.identity)}, "
                                     f"not {describe_identity(want)}: {why}; this is not the model this index "
                                     "was built with, and its embeddings are not comparable")

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

    def refresh(self) -> bool:
        """Switch to the newest published version when CURRENT names another one (studies added since by
        ``hlip index add`` or ``hlip listen``); True when it switched. One small read when nothing changed."""
        version = files.current_version(self.root)
        if self.version is not None and version.name == self.version.name:
            return False
        self._load_version(version, verify=False, use_gpu=self._searcher.gpu_index is not None
                           if self._searcher is not None else None)
        return True

    # --- reading ------------------------------------------------------------------------------
    def _reader(self) -> faiss_index.Searcher:
        if self._searcher is None:
            raise ValueError(f"{self.root}: nothing published yet; call commit() first")
        return self._searcher

    @property
    def identity(self) -> dict[str, Any]:
        """dim, model_id, model_hash, architecture, recipe, keep_identifiers of the embeddings."""
        return self.info["identity"]

    @property
    def dim(self) -> int:
        return int(self.identity["dim"])

    def __len__(self) -> int:
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

    def embedding_chunks(self, rows: int = 65536):
        """(first row id, float32 [<= rows, dim]) over every stored embedding, in row order."""
        self._reader()
        return self._embeddings.chunks(rows)

    def skipped(self) -> list[tuple[str, str, str]]:
        """(key, path, reason) of studies that could not be indexed."""
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

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def __repr__(self) -> str:
        return f"StudyIndex({str(self.root)!r}, {len(self)} studies, published, {describe_identity(self.identity)})"
