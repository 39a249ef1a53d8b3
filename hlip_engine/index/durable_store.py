"""The durable build store: embeddings and metadata appended while a library is indexed.

Why: encoding an archive takes hours and may be killed at any moment (kill -9, power, a full GPU).
Every ``add`` first writes its embedding chunk to a new file (``atomic_write``: temp name, fsync, rename), then
records the chunk and its studies in one SQLite transaction. A kill between the two leaves an
orphan chunk file that the next open deletes; a kill anywhere else leaves a consistent store. The
rows of a chunk are the studies of that transaction, so row ids stay contiguous (0..n-1).
``--resume`` reopens the store and skips every study whose key it holds (indexed or skipped).
The store stays after a commit, so a later ``--resume`` adds new studies without re-encoding old ones.
``replace`` overwrites studies in place (same row ids): each touched chunk is rewritten under a new name and
swapped in by the same kind of transaction. Every change bumps ``generation``, which a published version
records, so a writer reopening the folder knows whether the published index shows everything stored.
"""
from __future__ import annotations

import json
import os
import secrets
import shutil
import sqlite3
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ..atomic import atomic_write_bytes
from . import metadata as md
from .files import IndexFormatError
from .vectors import DTYPE, normalise

try:  # POSIX advisory lock; released by the kernel when the process dies, even by kill -9
    import fcntl
except ImportError:  # pragma: no cover - Windows
    fcntl = None

# what must match for two sets of embeddings to be comparable
IDENTITY_KEYS = ("dim", "model_id", "model_hash", "recipe")


def describe_identity(ident: dict[str, Any]) -> str:
    h = ident.get("model_hash") or ""
    return (f"model {ident.get('model_id')!r}" + (f" (sha256 {h[:12]})" if h else "")
            + f", {ident.get('dim')}-d" + (f", recipe {ident['recipe']!r}" if ident.get("recipe") else ""))


def identity_mismatch(have: dict[str, Any], want: dict[str, Any]) -> str:
    """'' when the same model made both, else what differs (hash wins over names when both have one)."""
    if have.get("dim") != want.get("dim"):
        return f"embedding size {have.get('dim')} vs {want.get('dim')}"
    if have.get("model_hash") and want.get("model_hash"):
        if have["model_hash"] != want["model_hash"]:
            return "model weights differ (sha256)"
    elif have.get("model_id") != want.get("model_id"):
        return f"model {have.get('model_id')!r} vs {want.get('model_id')!r}"
    if (have.get("recipe") or "") != (want.get("recipe") or ""):
        return f"recipe {have.get('recipe')!r} vs {want.get('recipe')!r}"
    return ""


def lock_folder(folder: Path) -> int | None:
    """Take the build lock of ``folder`` (a file descriptor to close later); refuse if a build holds it."""
    if fcntl is None:
        return None
    Path(folder).mkdir(parents=True, exist_ok=True)
    fd = os.open(Path(folder) / "LOCK", os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        os.close(fd)
        raise ValueError(f"{folder}: another index build is writing here right now") from None
    return fd


def remove_store(folder: Path) -> None:
    """Delete a build store, unless a running build holds it."""
    if not Path(folder).exists():
        return
    fd = lock_folder(folder)
    try:
        shutil.rmtree(folder, ignore_errors=True)
    finally:
        if fd is not None:
            os.close(fd)


class BuildStore:
    """Append-only embeddings + metadata of one build (or one torchrun rank's shard of it)."""

    def __init__(self, folder: Path, identity: dict[str, Any] | None = None, *, writable: bool = True):
        """Open (and lock) the store in ``folder``; create it when ``identity`` is given and none exists.

        ``writable=False`` only reads (another rank's shard): no lock, no clean-up of its files.
        """
        self.folder = Path(folder)
        self._lock_fd = None
        existed = (self.folder / "build.sqlite").exists()
        if not existed and identity is None:
            raise FileNotFoundError(f"no index build store at {self.folder}")
        self.con = None
        if writable:
            (self.folder / "chunks").mkdir(parents=True, exist_ok=True)
            self._lock()
        # one writer at a time (the build lock); a live index's threads take turns under its own lock
        self.con = sqlite3.connect(self.folder / "build.sqlite", isolation_level=None, timeout=60,
                                   check_same_thread=False)
        self.con.row_factory = sqlite3.Row
        if writable:
            self._create_tables(identity)
        self.identity = json.loads(self.con.execute("SELECT value FROM info WHERE name='identity'").fetchone()[0])
        self.dim = int(self.identity["dim"])
        self.keep_identifiers = bool(self.identity.get("keep_identifiers", False))
        if writable:
            self._check_chunks()

    def _create_tables(self, identity: dict[str, Any] | None) -> None:
        self.con.execute("PRAGMA journal_mode=WAL")  # readers (other ranks) never block the writer
        self.con.execute("PRAGMA synchronous=FULL")
        with self._transaction():
            self.con.execute("CREATE TABLE IF NOT EXISTS info (name TEXT PRIMARY KEY, value TEXT)")
            self.con.execute(md.STUDIES_SQL)
            self.con.execute(md.SKIPPED_SQL)
            self.con.execute("CREATE INDEX IF NOT EXISTS studies_uid ON studies(study_uid)")
            self.con.execute("CREATE TABLE IF NOT EXISTS chunks (id INTEGER PRIMARY KEY, file TEXT, "
                             "first_row INTEGER, n INTEGER)")
            if not self.con.execute("SELECT 1 FROM info WHERE name='identity'").fetchone():
                if identity is None:
                    raise IndexFormatError(f"{self.folder}: corrupted build store (no identity recorded)")
                self.con.execute("INSERT INTO info VALUES ('identity', ?)", (json.dumps(identity),))

    # --- housekeeping -------------------------------------------------------------------------
    def _lock(self) -> None:
        self._lock_fd = lock_folder(self.folder)

    def _transaction(self):
        con = self.con

        class _Tx:
            def __enter__(self):
                con.execute("BEGIN IMMEDIATE")

            def __exit__(self, exc_type, *_):
                con.execute("COMMIT" if exc_type is None else "ROLLBACK")

        return _Tx()

    def _check_chunks(self) -> None:
        """Delete orphan chunk files (a kill before their transaction); refuse if a recorded one is gone."""
        recorded = {r["file"]: r for r in self.con.execute("SELECT * FROM chunks")}
        for p in (self.folder / "chunks").iterdir():
            if p.name not in recorded:
                p.unlink(missing_ok=True)
        for name, r in recorded.items():
            p = self.folder / "chunks" / name
            want = r["n"] * self.dim * DTYPE.itemsize
            if not p.exists() or p.stat().st_size != want:
                raise IndexFormatError(f"{p}: build store corrupted (chunk missing or truncated); "
                                       "start over with --rebuild")

    def close(self) -> None:
        if getattr(self, "con", None) is not None:
            self.con.close()
            self.con = None
        if self._lock_fd is not None:
            os.close(self._lock_fd)
            self._lock_fd = None

    def destroy(self) -> None:
        self.close()
        shutil.rmtree(self.folder, ignore_errors=True)

    # --- writing ------------------------------------------------------------------------------
    def add(self, vectors: np.ndarray, metas: Sequence[dict[str, Any]]) -> np.ndarray:
        """Durably append studies; returns their row ids. vectors: [n, dim] (normalised here)."""
        v = normalise(vectors, "study embeddings", self.dim)
        if len(metas) != len(v):
            raise ValueError(f"{len(v)} embeddings but {len(metas)} metadata entries")
        if not len(v):
            return np.zeros(0, dtype=np.int64)
        recipe = self.identity.get("recipe", "")
        rows = [md.study_row({"recipe": recipe, **m}, self.keep_identifiers) for m in metas]
        keys = [(r[0],) for r in rows]
        name = f"chunk-{secrets.token_hex(8)}.f16"
        path = self.folder / "chunks" / name
        atomic_write_bytes(path, v.astype(DTYPE).tobytes())  # fsynced before it is recorded below
        try:
            with self._transaction():
                first = self.con.execute("SELECT COALESCE(MAX(id) + 1, 0) FROM studies").fetchone()[0]
                self.con.execute("INSERT INTO chunks (file, first_row, n) VALUES (?, ?, ?)",
                                       (name, first, len(v)))
                self.con.executemany(
                    "INSERT INTO studies (id, key, path, study_uid, date, modality, description, n_scans, "
                    "recipe, extra) VALUES (?,?,?,?,?,?,?,?,?,?)",
                    [(first + j, *r) for j, r in enumerate(rows)])
                self.con.executemany("DELETE FROM skipped WHERE key = ?", keys)  # a retried study now succeeded
                self._bump()
        except sqlite3.IntegrityError:
            path.unlink(missing_ok=True)
            dup = next((k for (k,) in keys if self.has(k)), None) or _first_duplicate([r[0] for r in rows])
            raise ValueError(f"study {dup!r} is already in this index (keys must be unique)") from None
        except BaseException:
            path.unlink(missing_ok=True)
            raise
        return np.arange(first, first + len(v), dtype=np.int64)

    def skip(self, key: str, path: str, reason: str) -> None:
        with self._transaction():
            self.con.execute("INSERT OR REPLACE INTO skipped VALUES (?, ?, ?)", (key, path, reason))
            self._bump()

    def replace(self, ids: Sequence[int], vectors: np.ndarray, metas: Sequence[dict[str, Any]]) -> None:
        """Durably overwrite the studies at row ``ids`` (embedding and metadata); their row ids stay.

        Each chunk holding one of them is rewritten whole under a new name (fsynced), then one transaction
        points the chunk table at the new files and updates the rows; the old files are deleted after it.
        A kill before the transaction leaves orphans the next open deletes, and the old data intact."""
        v = normalise(vectors, "study embeddings", self.dim)
        ids = [int(i) for i in ids]
        if len(ids) != len(v) or len(metas) != len(v):
            raise ValueError(f"{len(ids)} row ids, {len(v)} embeddings and {len(metas)} metadata entries")
        if not ids:
            return
        recipe = self.identity.get("recipe", "")
        rows = [md.study_row({"recipe": recipe, **m}, self.keep_identifiers) for m in metas]
        chunks = self.con.execute("SELECT id, file, first_row, n FROM chunks ORDER BY first_row").fetchall()
        starts = [int(c["first_row"]) for c in chunks]
        touched: dict[int, list[int]] = {}
        for j, row in enumerate(ids):
            c = int(np.searchsorted(starts, row, side="right")) - 1
            if c < 0 or row >= starts[c] + int(chunks[c]["n"]):
                raise ValueError(f"no study with row id {row} in this build store")
            touched.setdefault(c, []).append(j)
        written: list[tuple[int, str, str]] = []  # (chunk id, old file, new file)
        try:
            for c, js in touched.items():
                chunk = chunks[c]
                raw = np.fromfile(self.folder / "chunks" / chunk["file"], dtype=DTYPE).reshape(int(chunk["n"]), self.dim)
                for j in js:
                    raw[ids[j] - int(chunk["first_row"])] = v[j].astype(DTYPE)
                name = f"chunk-{secrets.token_hex(8)}.f16"
                atomic_write_bytes(self.folder / "chunks" / name, raw.tobytes())
                written.append((int(chunk["id"]), chunk["file"], name))
            with self._transaction():
                self.con.executemany("UPDATE chunks SET file=? WHERE id=?", [(new, cid) for cid, _, new in written])
                self.con.executemany(
                    "UPDATE studies SET key=?, path=?, study_uid=?, date=?, modality=?, description=?, n_scans=?, "
                    "recipe=?, extra=? WHERE id=?", [(*r, row) for r, row in zip(rows, ids)])
                self.con.executemany("DELETE FROM skipped WHERE key = ?", [(r[0],) for r in rows])
                self._bump()
        except BaseException:
            for _, _, new in written:
                (self.folder / "chunks" / new).unlink(missing_ok=True)
            raise
        for _, old, _ in written:
            (self.folder / "chunks" / old).unlink(missing_ok=True)

    def _bump(self) -> None:
        """Count one more change (inside the caller's transaction)."""
        self.con.execute("INSERT INTO info VALUES ('generation', '1') ON CONFLICT(name) DO UPDATE "
                         "SET value = CAST(value AS INTEGER) + 1")

    @property
    def generation(self) -> int:
        """How many changes (adds, replacements, skips) the store has taken: what a publication reflects."""
        row = self.con.execute("SELECT value FROM info WHERE name='generation'").fetchone()
        return int(row[0]) if row else 0

    # --- reading ------------------------------------------------------------------------------
    def __len__(self) -> int:
        return int(self.con.execute("SELECT COUNT(*) FROM studies").fetchone()[0])

    def find(self, key: str, study_uid: str = "") -> sqlite3.Row | None:
        """The stored row of a study by key, else by StudyInstanceUID (when given); None when absent."""
        row = self.con.execute("SELECT * FROM studies WHERE key=?", (key,)).fetchone()
        if row is None and study_uid:
            row = self.con.execute("SELECT * FROM studies WHERE study_uid=? ORDER BY id LIMIT 1",
                                   (study_uid,)).fetchone()
        return row

    def has(self, key: str) -> bool:
        return self.con.execute("SELECT 1 FROM studies WHERE key=?", (key,)).fetchone() is not None

    def indexed_keys(self) -> set[str]:
        """Keys of the studies indexed (not those skipped)."""
        return {r[0] for r in self.con.execute("SELECT key FROM studies")}

    def done_keys(self) -> set[str]:
        """Keys of studies finished in earlier runs: indexed or skipped with a reason."""
        done = {r[0] for r in self.con.execute("SELECT key FROM studies")}
        return done | {r[0] for r in self.con.execute("SELECT key FROM skipped")}

    def skipped(self) -> list[tuple[str, str, str]]:
        return [tuple(r) for r in self.con.execute("SELECT key, path, reason FROM skipped ORDER BY key")]

    def raw_chunks(self) -> Iterator[tuple[int, np.ndarray]]:
        """(first row id, float16 [m, dim]) in row order, as stored."""
        for r in self.con.execute("SELECT file, first_row, n FROM chunks ORDER BY first_row").fetchall():
            raw = np.fromfile(self.folder / "chunks" / r["file"], dtype=DTYPE)
            yield int(r["first_row"]), raw.reshape(int(r["n"]), self.dim)

    def chunks(self) -> Iterator[tuple[int, np.ndarray]]:
        """(first row id, float32 [m, dim]) in row order."""
        for start, raw in self.raw_chunks():
            yield start, raw.astype(np.float32)

    def metadata_rows(self) -> Iterator[sqlite3.Row]:
        yield from self.con.execute("SELECT * FROM studies ORDER BY id")


def _first_duplicate(keys: list[str]) -> str:
    seen = set()
    for k in keys:
        if k in seen:
            return k
        seen.add(k)
    return keys[0] if keys else ""
