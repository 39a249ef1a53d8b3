"""``LiveIndex``: an index folder that takes new studies while it is being searched, without a rebuild.

::

    live = LiveIndex.open("lib.index", dim=256, model_id="hlip_demo.safetensors", model_hash=sha, recipe="auto")
    outcome = live.add(embeddings, [{"key": ..., "study_uid": ..., "path": ..., "fingerprint": ...}])
    live.search(query, k=10)            # the studies just added are found at once
    live.close()

Each ``add`` is durable first (the build store, durable_store.py), then published as a new version
(files.py: a new folder, then the CURRENT pointer switched), so a reader opening the index at any moment
sees the old version or the new one, never half of one. The new version reuses the published one: its
embedding and metadata files are copied and extended, its FAISS index cloned and added to, its coarse
quantiser (IVF) kept, so an add costs a copy of the files, not a training.

A study is one study however often it arrives: it is matched by its key, else by its StudyInstanceUID.
One that matches and has not changed (same ``fingerprint`` when both have one, else the same embedding)
is left as it is; one that changed is replaced in place, keeping its row id.

When the index has grown ``growth``-fold since its quantiser was trained (or outgrows an exact index), a
background thread trains a new one from a snapshot of the embeddings, then, under the writer's lock, adds
what arrived meanwhile and publishes it like any other version. A writer killed at any moment leaves the
build store ahead of (or equal to) the published version; the next ``open`` publishes what is missing.
"""
from __future__ import annotations

import json
import os
import shutil
import sqlite3
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from . import faiss_index, files
from .files import IndexFormatError
from .store import StudyIndex
from .vectors import DTYPE, EmbeddingFile, normalise
from .version_writer import TUNING_QUERIES, IndexBuild, _tuning_queries

GROWTH = 4.0  # retrain the coarse quantiser once the index holds this many times what it was trained on
SAME_EMBEDDING = 2e-3  # max |difference| of two float16-stored unit embeddings of one unchanged study
_SEALED = ("files", "version", "format", "format_version")


@dataclass(frozen=True)
class Added:
    """What ``add`` did with one study: 'added', 'replaced' or 'unchanged', and its row id."""

    key: str
    outcome: str
    row: int


class LiveIndex:
    """The writer of an index folder that grows one batch at a time; see the module docstring."""

    def __init__(self, build: IndexBuild, *, index_type: str | None, growth: float, background: bool, log):
        self.build, self.root = build, build.root
        self.index_type, self.growth, self.background = index_type, float(growth), bool(background)
        self._say = log or (lambda msg: None)
        self._lock = threading.RLock()
        self._current: StudyIndex | None = None
        self._previous: StudyIndex | None = None  # closed one swap later: a search may still be using it
        self._replaced_log: list[int] = []  # rows replaced, in order (what a retrain must catch up with)
        self._retrainer: threading.Thread | None = None
        self.retrain_error = ""
        self.retrains = 0

    @classmethod
    def open(cls, path: str | Path, *, dim: int, model_id: str, model_hash: str = "", architecture: str = "",
             recipe: str = "", keep_identifiers: bool = False, index_type: str | None = None,
             growth: float = GROWTH, background: bool = True, extra_info: dict | None = None,
             log=None) -> LiveIndex:
        """Open (or create) the index at ``path`` for adding, holding its build lock until ``close``.

        An index made by another model is refused (ModelMismatchError), as by ``hlip index build``.
        ``index_type``: None keeps the published index's kind ('ivf' stays IVF; exact grows into IVF above
        faiss_index.FLAT_MAX); 'auto', 'flat', 'ivf' as for a build. ``background=False`` retrains in the
        calling thread (tests, ``hlip index add``)."""
        if growth <= 1:
            raise ValueError(f"growth must be above 1, got {growth}")
        build = IndexBuild.create(path, dim, model_id, model_hash=model_hash, architecture=architecture,
                                  recipe=recipe, keep_identifiers=keep_identifiers, resume=True)
        self = cls(build, index_type=index_type, growth=growth, background=background, log=log)
        self.extra_info = dict(extra_info or {})
        try:
            self._current = self._open_current()
        except BaseException:
            build.close()
            raise
        return self

    def _open_current(self) -> StudyIndex | None:
        store = self.build.store
        try:
            current = StudyIndex.open(self.root)
        except (FileNotFoundError, IndexFormatError):
            current = None  # nothing published yet (IndexBuild.create refused a foreign or broken one)
        if len(store) and (current is None or current.info.get("store_generation") != store.generation):
            # killed between a durable add and its publication: publish everything stored now
            if current is not None:
                current.close()
            self._say(f"{self.root}: publishing {len(store)} studies the last writer left unpublished")
            current = self.build.commit(index_type=self._requested(current), extra_info=self.extra_info)
        return current

    # --- reading ------------------------------------------------------------------------------
    @property
    def current(self) -> StudyIndex | None:
        """The published version, opened (None before the first study)."""
        return self._current

    def __len__(self) -> int:
        return len(self._current) if self._current is not None else 0

    def search(self, vectors: np.ndarray, k: int = 10, **filters):
        """StudyIndex.search on the newest version."""
        current = self._current
        if current is None:
            raise ValueError(f"{self.root}: no study indexed yet")
        return current.search(vectors, k, **filters)

    def lookup(self, key: str = "", study_uid: str = "") -> dict[str, Any] | None:
        """The stored metadata of a study by key, else StudyInstanceUID (``id`` = its row); None if absent."""
        with self._lock:
            row = self.build.store.find(key, study_uid)
            if row is None:
                return None
            out = {k: row[k] for k in row.keys() if k != "extra"}
            out.update(json.loads(row["extra"]) if row["extra"] else {})
            return out

    # --- writing ------------------------------------------------------------------------------
    def add(self, vectors: np.ndarray, metas: list[dict[str, Any]]) -> list[Added]:
        """Add studies (float32 [n, dim] + one metadata dict each, as IndexBuild.add); searchable on return.

        A study already in the index is replaced when it changed and left alone when it did not; within one
        call the last of two entries for one study wins. Returns one :class:`Added` per entry given."""
        v = normalise(vectors, "study embeddings", self.build.dim)
        if len(metas) != len(v):
            raise ValueError(f"{len(v)} embeddings but {len(metas)} metadata entries")
        metas = [{**m, "key": _key_of(m)} for m in metas]
        with self._lock:
            store = self.build.store
            found = [store.find(m["key"], str(m.get("study_uid") or "")) for m in metas]
            # one entry per study: its stored row, else its StudyInstanceUID (or key); the last entry wins
            idents = [("row", int(r["id"])) if r is not None else ("new", m.get("study_uid") or m["key"])
                      for r, m in zip(found, metas)]
            winner = {ident: j for j, ident in enumerate(idents)}
            won = sorted(winner.values())
            new = [j for j in won if found[j] is None]
            changed = [j for j in won if found[j] is not None and not self._same(found[j], v[j], metas[j])]
            row_of = {ident: ident[1] for ident in winner if ident[0] == "row"}
            if new:
                for j, r in zip(new, store.add(v[new], [metas[j] for j in new])):
                    row_of[idents[j]] = int(r)
            if changed:
                store.replace([row_of[idents[j]] for j in changed], v[changed], [metas[j] for j in changed])
                self._replaced_log += [row_of[idents[j]] for j in changed]
            if new or changed:
                rounded = v.astype(DTYPE).astype(np.float32)  # as the embeddings file holds them
                self._publish(new_rows=[(row_of[idents[j]], rounded[j]) for j in new],
                              replaced=[(row_of[idents[j]], rounded[j]) for j in changed])
            outcome = {j: "added" for j in new} | {j: "replaced" for j in changed}
            result = [Added(m["key"], outcome.get(j, "unchanged"), row_of[idents[j]]) for j, m in enumerate(metas)]
        self._maybe_retrain()
        return result

    def skip(self, key: str, path: str, reason: str) -> None:
        """Record a study that could not be indexed (listed by ``hlip index info --skipped``)."""
        with self._lock:
            self.build.store.skip(key, path, reason)
            if self._current is not None:
                self._publish(new_rows=[], replaced=[])

    def _same(self, row, vector: np.ndarray, meta: dict[str, Any]) -> bool:
        extra = json.loads(row["extra"]) if row["extra"] else {}
        if extra.get("fingerprint") and meta.get("fingerprint"):
            return extra["fingerprint"] == meta["fingerprint"]
        stored = self._current.vectors([int(row["id"])])[0] if self._current is not None else None
        return stored is not None and float(np.abs(stored - vector).max()) < SAME_EMBEDDING

    def _publish(self, new_rows: list[tuple[int, np.ndarray]], replaced: list[tuple[int, np.ndarray]]) -> None:
        """A new version = the current one with these (row, float16-rounded vector) replaced and appended,
        their metadata from the build store; see the module docstring."""
        store = self.build.store
        current = self._current
        if current is None:  # the first studies: a full build (trains the quantiser when IVF)
            self._swap(self.build.commit(index_type=self._requested(None), extra_info=self.extra_info))
            return
        import faiss

        n_old, dim = len(current), current.dim
        rows = [r for r, _ in replaced] + [r for r, _ in new_rows]
        vecs = np.stack([v for _, v in replaced + new_rows]) if rows else np.zeros((0, dim), np.float32)
        index = faiss.clone_index(current._reader().index)
        _set_rows(index, current.info["index"]["type"], rows[:len(replaced)], vecs[:len(replaced)])
        if new_rows:
            index.add(np.ascontiguousarray(vecs[len(replaced):]))
        tmp, name = files.new_version_dir(self.root)
        try:
            shutil.copyfile(current.version / "embeddings.f16", tmp / "embeddings.f16")
            with open(tmp / "embeddings.f16", "r+b") as f:
                rb = dim * DTYPE.itemsize
                for r, vec in zip(rows, vecs):
                    f.seek(r * rb)
                    f.write(vec.astype(DTYPE).tobytes())
            faiss.write_index(index, str(tmp / "index.faiss"))
            shutil.copyfile(current.version / "metadata.sqlite", tmp / "metadata.sqlite")
            _update_metadata(tmp / "metadata.sqlite", store.folder / "build.sqlite", rows)
            info = {k: v for k, v in current.info.items() if k not in _SEALED}
            info.update(count=n_old + len(new_rows), skipped=len(store.skipped()), store_generation=store.generation,
                        updated_at=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()))
            info.setdefault("trained_count", n_old)
            version = files.publish(self.root, tmp, name, info)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        self._swap(StudyIndex.attach(self.root, version, index))

    def _swap(self, new: StudyIndex) -> None:
        if self._previous is not None:
            self._previous.close()
        self._previous, self._current = self._current, new

    # --- retraining ---------------------------------------------------------------------------
    def _requested(self, current: StudyIndex | None) -> str:
        if self.index_type:
            return self.index_type
        if current is not None and current.info["index"]["type"] != "flat":
            return "ivf"
        return "auto"

    def needs_retrain(self) -> bool:
        """Whether the quantiser is stale: grown ``growth``-fold since trained, or another kind is due."""
        current = self._current
        if current is None:
            return False
        plan, n = current.info["index"], len(current)
        if faiss_index.plan_for(n, self._requested(current))["type"] != plan["type"]:
            return True
        return plan["type"] != "flat" and n >= self.growth * int(current.info.get("trained_count") or n)

    def _maybe_retrain(self) -> None:
        if not self.needs_retrain() or (self._retrainer is not None and self._retrainer.is_alive()):
            return
        if self.background:
            self._retrainer = threading.Thread(target=self.retrain, name="hlip-index-retrain", daemon=True)
            self._retrainer.start()
        else:
            self.retrain()

    def wait_retrain(self, timeout: float | None = None) -> bool:
        """Wait for a background retrain; True when none is running (any more)."""
        t = self._retrainer
        if t is not None:
            t.join(timeout)
            return not t.is_alive()
        return True

    def retrain(self) -> None:
        """Train a new index on a snapshot, catch up with what arrived meanwhile, publish it (never raises:
        a failure is kept in ``retrain_error`` and the current index stays)."""
        try:
            self._retrain()
            self.retrain_error = ""
        except Exception as e:  # noqa: BLE001 - a background thread has nobody to raise to
            self.retrain_error = f"{type(e).__name__}: {e}"
            self._say(f"{self.root}: retraining the index failed ({self.retrain_error}); the current one stays")

    def _retrain(self) -> None:
        import faiss

        with self._lock:
            current = self._current
            snap_n, snap_log, dim = len(current), len(self._replaced_log), current.dim
            plan = faiss_index.plan_for(snap_n, self._requested(current))
            # the fd stays valid when newer versions replace this one and it is deleted
            snap = EmbeddingFile(current.version / "embeddings.f16", snap_n, dim)
        t0 = time.time()
        try:
            index = _train(snap, plan)
        finally:
            snap.close()
        with self._lock:
            current = self._current
            n = len(current)
            stale = sorted({r for r in self._replaced_log[snap_log:] if r < snap_n})
            _set_rows(index, plan["type"], stale, current.vectors(stale) if stale else np.zeros((0, dim), np.float32))
            if n > snap_n:
                index.add(np.ascontiguousarray(current.vectors(np.arange(snap_n, n))))
            tmp, name = files.new_version_dir(self.root)
            try:
                for fname in ("embeddings.f16", "metadata.sqlite"):  # unchanged: versions are never edited
                    os.link(current.version / fname, tmp / fname)
                faiss.write_index(index, str(tmp / "index.faiss"))
                info = {k: v for k, v in current.info.items() if k not in _SEALED}
                info.update(index=plan, trained_count=snap_n, retrained_at=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                            retrain_seconds=round(time.time() - t0, 2))
                version = files.publish(self.root, tmp, name, info)
            except BaseException:
                shutil.rmtree(tmp, ignore_errors=True)
                raise
            self._swap(StudyIndex.attach(self.root, version, index))
            self.retrains += 1
            self._say(f"{self.root}: index retrained on {snap_n} studies ({plan['type']}), {n} searchable")

    def close(self) -> None:
        """Wait for a running retrain, close the versions and release the build lock."""
        self.wait_retrain()
        with self._lock:
            for ix in (self._previous, self._current):
                if ix is not None:
                    ix.close()
            self._previous = self._current = None
            self.build.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def _key_of(meta: dict[str, Any]) -> str:
    if meta.get("key"):
        return str(meta["key"])
    if not (meta.get("path") or meta.get("study_uid")):
        raise ValueError("study metadata needs a 'key', or a 'path' / 'study_uid' to make one from")
    return f"{meta.get('path', '')}#{meta.get('study_uid', '')}"


def _set_rows(index, kind: str, rows: list[int], vecs: np.ndarray) -> None:
    """Overwrite the vectors of ``rows`` in a FAISS index, keeping their ids."""
    if not rows:
        return
    import faiss

    vecs = np.ascontiguousarray(vecs, dtype=np.float32)
    if kind == "flat":
        xb = faiss.rev_swig_ptr(index.get_xb(), index.ntotal * index.d).reshape(index.ntotal, index.d)
        xb[np.asarray(rows)] = vecs
        return
    ids = np.asarray(rows, dtype=np.int64)
    index.remove_ids(faiss.IDSelectorBatch(ids))
    index.add_with_ids(vecs, ids)


def _train(embeddings: EmbeddingFile, plan: dict):
    """A FAISS index of the given plan over every row (IVF: quantiser trained, nprobe tuned)."""
    n, dim = embeddings.n, embeddings.dim

    def chunks():
        for start in range(0, n, 16384):
            yield embeddings.rows(np.arange(start, min(n, start + 16384)))

    want = min(n, faiss_index.TRAIN_POINTS_PER_LIST * plan.get("nlist", 0))
    chosen = np.sort(np.random.default_rng(0).choice(n, size=want, replace=False)) if want else np.zeros(0, np.int64)
    index = faiss_index.build(dim, plan, chunks, embeddings.rows(chosen) if want else np.zeros((0, dim), np.float32))
    if plan["type"] != "flat":
        searcher = faiss_index.Searcher(index, plan, embeddings, use_gpu=False)
        queries = _tuning_queries(embeddings, TUNING_QUERIES)
        truth = faiss_index.exact_top_k(queries, ((s, c) for s, c in zip(range(0, n, 16384), chunks())), min(10, n))
        plan["nprobe"], plan["tuned_recall_at_10"] = faiss_index.tune_nprobe(searcher, queries, truth)
    return index


def _update_metadata(path: Path, build_db: Path, rows: list[int]) -> None:
    """Copy the studies at ``rows`` and every skipped entry from the build store into a version's metadata."""
    con = sqlite3.connect(path, isolation_level=None)
    try:
        con.execute("ATTACH DATABASE ? AS build", (f"file:{build_db}?mode=ro",))
        con.execute("BEGIN")
        for start in range(0, len(rows), 900):
            part = rows[start:start + 900]
            con.execute(f"INSERT OR REPLACE INTO studies SELECT * FROM build.studies WHERE id IN "
                        f"({','.join('?' * len(part))})", part)
        con.execute("DELETE FROM skipped")
        con.execute("INSERT INTO skipped SELECT * FROM build.skipped")
        con.execute("COMMIT")
        con.execute("DETACH DATABASE build")
    finally:
        con.close()
