"""Embeddings of evaluated cases on disk, keyed by the checkpoint's fingerprint and the case.

One ``.npy`` per case under ``<cache>/<fingerprint>/``; the key hashes the case id, its files (name, size,
modification time) and the input grid, so a changed file or another grid is encoded again, while another
protocol with the same input (or re-running the metrics) reuses every embedding.
"""
from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import numpy as np


class EmbeddingCache:
    def __init__(self, folder, fingerprint: str):
        self.folder = Path(folder) / fingerprint[:24]
        self.hits = 0
        self.misses = 0

    @staticmethod
    def key(case, grid: dict) -> str:
        files = case.files or [case.folder]
        stamp = []
        for p in files:
            try:
                st = p.stat()
                stamp.append([str(p.name), st.st_size, st.st_mtime_ns])
            except OSError:
                stamp.append([str(p.name), -1, -1])
        blob = json.dumps({"id": case.id, "folder": str(case.folder), "files": stamp, "grid": grid}, sort_keys=True)
        return hashlib.sha256(blob.encode()).hexdigest()[:32]

    def get(self, case, grid: dict) -> np.ndarray | None:
        path = self.folder / f"{self.key(case, grid)}.npy"
        if path.is_file():
            try:
                value = np.load(path)
                self.hits += 1
                return value
            except (OSError, ValueError):
                pass
        self.misses += 1
        return None

    def put(self, case, grid: dict, embedding: np.ndarray) -> None:
        self.folder.mkdir(parents=True, exist_ok=True)
        path = self.folder / f"{self.key(case, grid)}.npy"
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        with open(tmp, "wb") as f:
            np.save(f, np.asarray(embedding, dtype=np.float32))
        os.replace(tmp, path)
