"""The raw study embeddings of a published index: one float16 file, rows in FAISS row-id order.

Why keep them beside the FAISS index: the approximate index holds 8-bit codes (a quarter of the
memory), and the few dozen candidates it returns are re-scored exactly from these rows, read from disk
one by one, so memory stays small while the ranking matches an exact search. They also give
``--like`` a study's stored vector and let a later build re-train the index without re-encoding.
float16 keeps normalised embeddings to ~1e-4 (the model itself runs in bf16 on GPU).
"""
from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path

import numpy as np

DTYPE = np.dtype("<f2")


class EmbeddingFile:
    """Read rows of ``[n, dim]`` float16 embeddings without mapping the whole file into memory."""

    def __init__(self, path: Path, n: int, dim: int):
        self.path, self.n, self.dim = Path(path), int(n), int(dim)
        self.row_bytes = self.dim * DTYPE.itemsize
        size = self.path.stat().st_size
        if size != self.n * self.row_bytes:
            raise ValueError(f"{self.path}: {size} bytes, expected {self.n} x {self.dim} float16 rows")
        self._f = open(self.path, "rb", buffering=0)  # noqa: SIM115 - kept open for the index's lifetime
        self._lock = threading.Lock()  # seek + read pairs: one search thread at a time (GUI workers)

    def close(self) -> None:
        self._f.close()

    def rows(self, ids: np.ndarray) -> np.ndarray:
        """float32 ``[len(ids), dim]`` for row ids (any order, repeats allowed).

        Read row by row rather than through a memory map: mapped pages would count as this process's
        resident memory (a 1M-study file is 1 GB), reads only pass through the OS page cache.
        """
        ids = np.asarray(ids, dtype=np.int64).ravel()
        if ids.size and (ids.min() < 0 or ids.max() >= self.n):
            raise ValueError(f"row id out of range 0..{self.n - 1}")
        uniq, inverse = np.unique(ids, return_inverse=True)
        buf = np.empty((len(uniq), self.dim), dtype=DTYPE)
        view = memoryview(buf).cast("B")
        rb = self.row_bytes
        j = 0
        with self._lock:
            while j < len(uniq):  # one read per run of consecutive ids
                run = 1
                while j + run < len(uniq) and uniq[j + run] == uniq[j] + run:
                    run += 1
                self._f.seek(int(uniq[j]) * rb)
                self._f.readinto(view[j * rb:(j + run) * rb])
                j += run
        return buf.astype(np.float32)[inverse.ravel()]

    def chunks(self, size: int = 65536) -> Iterator[tuple[int, np.ndarray]]:
        """(first row id, float32 [m, dim]) in row order, ``size`` rows at a time."""
        with open(self.path, "rb") as f:
            for start in range(0, self.n, size):
                m = min(size, self.n - start)
                raw = np.empty((m, self.dim), dtype=DTYPE)
                f.readinto(memoryview(raw).cast("B"))
                yield start, raw.astype(np.float32)


def normalise(vectors: np.ndarray, what: str = "vectors", dim: int | None = None) -> np.ndarray:
    """Check ``[n, dim]`` finite non-zero rows and L2-normalise them (float32)."""
    v = np.asarray(vectors, dtype=np.float32)
    if v.ndim == 1:
        v = v[None]
    if v.ndim != 2 or (dim is not None and v.shape[1] != dim):
        raise ValueError(f"{what} must be shaped [n, {dim if dim is not None else 'dim'}], got {tuple(v.shape)}")
    if not np.isfinite(v).all():
        raise ValueError(f"{what} contain NaN or infinite values")
    norms = np.linalg.norm(v, axis=1, keepdims=True)
    if v.shape[0] and norms.min() == 0:
        raise ValueError(f"{what} contain an all-zero row, which has no direction to search by")
    return np.ascontiguousarray(v / norms)
