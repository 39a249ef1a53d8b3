"""Which FAISS index a library gets, how it is trained and tuned, and how a query runs through it.

The rule (inner product on L2-normalised vectors, i.e. cosine similarity):

* up to ``FLAT_MAX`` (20,000) studies: ``IndexFlatIP``, exact. A brute-force query over 20k x 512
  float32 costs about 2 ms on one core, so nothing is gained by approximating.
* above: ``IVF{nlist},SQ8``, an inverted file whose lists hold 8-bit codes (512 bytes per 512-d study:
  1M studies = 0.5 GB of RAM instead of 2 GB), with ``nlist`` the power of two nearest sqrt(n)
  (1M -> 1024, 10M -> 4096; at most n/32 so that each list is worth probing). The k-means is
  trained on 30 points per list, 10 iterations: on 2 CPU cores 1M studies train in ~5 s; the
  textbook 4*sqrt(n) lists would take minutes for no recall gain once results are re-scored.
  The top ``max(40, 4k)`` candidates are re-scored exactly from the float16 embeddings on disk
  (vectors.py), which removes the 8-bit quantisation error from the final ranking.
* ``nprobe`` is tuned at build time: the smallest power of two whose recall@10 against exact search
  reaches ``TARGET_RECALL`` on held-out queries made from the library itself (stored studies plus
  mid-points of random pairs, which stand in for text queries that fall between clusters).

GPU: with faiss-gpu and a visible GPU the trained index is copied to GPU 0 for queries (the CPU
copy stays for filtered queries, whose ID selectors GPU FAISS does not take) and k-means trains on it.
"""
from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from contextlib import contextmanager

import numpy as np

FLAT_MAX = 20_000
TARGET_RECALL = 0.97  # margin above the 0.95 the bench promises
TRAIN_POINTS_PER_LIST = 30
EXACT_SELECTION_MAX = 1_000  # a filter leaving at most this many studies: score them from disk, exactly
SINGLE_THREAD_BELOW = 16  # query batches smaller than this run on one thread (see Searcher.search)


def _faiss():
    import faiss

    return faiss


def gpu_available() -> bool:
    faiss = _faiss()
    return hasattr(faiss, "StandardGpuResources") and faiss.get_num_gpus() > 0


def plan_for(n: int, index_type: str = "auto") -> dict:
    """The documented size rule; ``index_type`` 'flat' or 'ivf' forces one (tests, experiments)."""
    if index_type not in ("auto", "flat", "ivf"):
        raise ValueError(f"index type {index_type!r}: choose auto, flat or ivf")
    if index_type == "flat" or (index_type == "auto" and n <= FLAT_MAX):
        return {"type": "flat"}
    nlist = 2 ** round(math.log2(math.sqrt(n)))
    nlist = int(max(16, min(nlist, 65536, max(16, n // 32))))
    return {"type": "ivf_sq8", "nlist": nlist, "rerank": 40}


def build(dim: int, plan: dict, chunks: Callable[[], Iterable[np.ndarray]], sample: np.ndarray):
    """Train (IVF) on ``sample`` and add every row from ``chunks()`` in row-id order."""
    faiss = _faiss()
    if plan["type"] == "flat":
        index = faiss.IndexFlatIP(dim)
    else:
        index = faiss.index_factory(dim, f"IVF{plan['nlist']},SQ8", faiss.METRIC_INNER_PRODUCT)
        ivf = faiss.extract_index_ivf(index)
        ivf.cp.niter = 10
        ivf.cp.min_points_per_centroid = 5  # we deliberately train on ~30 per list
        ivf.cp.seed = 1234
        if gpu_available():
            ivf.clustering_index = faiss.index_cpu_to_all_gpus(faiss.IndexFlatIP(dim))
        index.train(np.ascontiguousarray(sample, dtype=np.float32))
    if plan["type"] == "flat":
        for part in chunks():
            index.add(np.ascontiguousarray(part, dtype=np.float32))
        return index
    _add_reserved(index, chunks)
    return index


def _add_reserved(index, chunks: Callable[[], Iterable[np.ndarray]]) -> None:
    """Add to an IVF index with every list allocated once at its final size.

    Plain ``add`` grows each list's code array by doubling, which leaves on average ~40 % of the
    codes' memory allocated but unused (measured: +160 MB at 300k studies). Assigning first, then
    reserving each list and adding with the precomputed assignment avoids it at no extra
    quantisation cost (only a second read of the rows).
    """
    faiss = _faiss()
    ivf = faiss.extract_index_ivf(index)
    assign = [ivf.quantizer.assign(np.ascontiguousarray(part, dtype=np.float32), 1).ravel().astype(np.int64)
              for part in chunks()]
    counts = np.bincount(np.concatenate(assign), minlength=ivf.nlist) if assign else np.zeros(ivf.nlist, int)
    lists = faiss.downcast_InvertedLists(ivf.invlists)
    for list_no, count in enumerate(counts):
        lists.resize(list_no, int(count))  # allocates the final size ...
        lists.resize(list_no, 0)  # ... and keeps the capacity (std::vector) while emptying it
    for part, a in zip(chunks(), assign):
        x = np.ascontiguousarray(part, dtype=np.float32)
        ivf.add_core(len(x), faiss.swig_ptr(x), None, faiss.swig_ptr(a))


def set_nprobe(index, nprobe: int) -> None:
    faiss = _faiss()
    faiss.extract_index_ivf(index).nprobe = int(nprobe)


def exact_top_k(queries: np.ndarray, chunks: Iterable[tuple[int, np.ndarray]], k: int) -> np.ndarray:
    """Ground truth ids [q, k] by brute force over (first row id, float32 rows) chunks."""
    best_s = np.full((len(queries), 0), -np.inf, dtype=np.float32)
    best_i = np.zeros((len(queries), 0), dtype=np.int64)
    for start, rows in chunks:
        s = queries @ rows.T  # (q, m)
        kk = min(k, s.shape[1])
        part = np.argpartition(-s, kk - 1, axis=1)[:, :kk]  # this chunk's top kk, unordered
        s = np.concatenate([best_s, np.take_along_axis(s, part, 1)], 1)
        i = np.concatenate([best_i, part + start], 1)
        top = np.argsort(-s, axis=1, kind="stable")[:, :k]
        best_s, best_i = np.take_along_axis(s, top, 1), np.take_along_axis(i, top, 1)
    return best_i


def recall_at(found: np.ndarray, truth: np.ndarray) -> float:
    k = truth.shape[1]
    return float(np.mean([len(set(f[:k]) & set(t)) / k for f, t in zip(found, truth)]))


def tune_nprobe(searcher: Searcher, queries: np.ndarray, truth: np.ndarray) -> tuple[int, float]:
    """Smallest power-of-two nprobe reaching TARGET_RECALL@k (k = truth's width)."""
    nlist = searcher.plan["nlist"]
    nprobe, recall = 1, 0.0
    while True:
        searcher.plan["nprobe"] = nprobe
        _, ids = searcher.search(queries, truth.shape[1])
        recall = recall_at(ids, truth)
        if recall >= TARGET_RECALL or nprobe >= nlist:
            return nprobe, recall
        nprobe *= 2


class Selection:
    """The studies a filter allows, in the forms the search paths need (built once, reused per query)."""

    def __init__(self, mask: np.ndarray):
        self.mask = np.asarray(mask, dtype=bool)  # [n]
        self.count = int(self.mask.sum())
        self._ids = None
        self._bitmap = None

    @classmethod
    def from_ids(cls, ids, n: int) -> Selection:
        mask = np.zeros(n, dtype=bool)
        mask[np.asarray(ids, dtype=np.int64)] = True
        return cls(mask)

    @property
    def ids(self) -> np.ndarray:
        if self._ids is None:
            self._ids = np.flatnonzero(self.mask).astype(np.int64)
        return self._ids

    def selector(self):
        """A FAISS ID selector; the bitmap it points into lives as long as this object."""
        faiss = _faiss()
        if self._bitmap is None:
            self._bitmap = np.packbits(self.mask, bitorder="little")
        return faiss.IDSelectorBitmap(len(self.mask), faiss.swig_ptr(self._bitmap))


class Searcher:
    """One FAISS index + the float16 rows that re-score its candidates."""

    def __init__(self, index, plan: dict, embeddings, use_gpu: bool | None = None):
        self.index, self.plan, self.embeddings = index, plan, embeddings
        self.gpu_index = None
        if use_gpu is None:
            use_gpu = gpu_available()
        if use_gpu:
            faiss = _faiss()
            self._gpu_res = faiss.StandardGpuResources()
            self.gpu_index = faiss.index_cpu_to_gpu(self._gpu_res, 0, index)

    @property
    def ntotal(self) -> int:
        return int(self.index.ntotal)

    def search(self, queries: np.ndarray, k: int, selection: Selection | None = None):
        """(scores [q, k] float32, ids [q, k] int64); ids -1 / scores -inf where fewer than k studies match.

        queries: float32 [q, dim], already normalised. selection: the studies allowed, or None for all.
        """
        # One query is one thread's work in FAISS; letting OpenMP spin up a team for it costs more than
        # the search on a busy machine (measured 4x slower on 2 shared cores).
        with _omp_threads(1 if len(queries) < SINGLE_THREAD_BELOW else None):
            return self._search(queries, k, selection)

    def _search(self, queries, k, selection):
        q = len(queries)
        if selection is not None and selection.count == 0:
            return np.full((q, k), -np.inf, np.float32), np.full((q, k), -1, np.int64)
        if selection is not None and selection.count <= EXACT_SELECTION_MAX:
            return self._exact_subset(queries, k, selection.ids)
        approx = self.plan["type"] != "flat"
        fetch = max(self.plan.get("rerank", 40), 4 * k) if approx else k
        fetch = min(fetch, self.ntotal)
        scores, ids = self._faiss_search(queries, fetch, selection)
        if approx:
            scores, ids = self._rescore(queries, ids)
        return _pad(scores[:, :k], ids[:, :k], k)

    def _faiss_search(self, queries, fetch, selection):
        faiss = _faiss()
        nprobe = self.plan.get("nprobe", 1)
        if selection is None:
            index = self.gpu_index if self.gpu_index is not None else self.index
            if self.plan["type"] != "flat":
                if self.gpu_index is not None:
                    faiss.GpuParameterSpace().set_index_parameter(index, "nprobe", nprobe)
                else:
                    set_nprobe(index, nprobe)
            return index.search(queries, fetch)
        # a broad filter: FAISS skips rows outside the selection; probe more lists in proportion
        sel = selection.selector()
        if self.plan["type"] == "flat":
            params = faiss.SearchParameters(sel=sel)
        else:
            boost = math.ceil(nprobe * self.ntotal / selection.count)
            params = faiss.SearchParametersIVF(sel=sel, nprobe=min(self.plan["nlist"], boost))
        return self.index.search(queries, fetch, params=params)

    def _rescore(self, queries, ids):
        """Exact inner products of each query's candidates from the float16 rows, best first."""
        valid = ids >= 0
        rows = self.embeddings.rows(np.where(valid, ids, 0))  # (q*f, dim)
        rows = rows.reshape(ids.shape[0], ids.shape[1], -1)
        scores = np.einsum("qfd,qd->qf", rows, queries)
        scores[~valid] = -np.inf
        order = np.argsort(-scores, axis=1, kind="stable")
        return np.take_along_axis(scores, order, 1), np.take_along_axis(np.where(valid, ids, -1), order, 1)

    def _exact_subset(self, queries, k, selection):
        rows = self.embeddings.rows(selection)  # (m, dim)
        scores = np.einsum("md,qd->qm", rows, queries)  # no BLAS threads for a few hundred rows
        order = np.argsort(-scores, axis=1, kind="stable")[:, :k]
        return _pad(np.take_along_axis(scores, order, 1), selection[order], k)


@contextmanager
def _omp_threads(n: int | None):
    """Run FAISS with ``n`` OpenMP threads in this thread, then restore (None: leave as is)."""
    if n is None:
        yield
        return
    faiss = _faiss()
    before = faiss.omp_get_max_threads()
    faiss.omp_set_num_threads(n)
    try:
        yield
    finally:
        faiss.omp_set_num_threads(before)


def _pad(scores, ids, k):
    q, have = ids.shape
    scores = np.asarray(scores, dtype=np.float32)
    ids = np.asarray(ids, dtype=np.int64)
    scores = np.where(ids >= 0, scores, -np.inf).astype(np.float32)
    if have < k:
        scores = np.concatenate([scores, np.full((q, k - have), -np.inf, np.float32)], 1)
        ids = np.concatenate([ids, np.full((q, k - have), -1, np.int64)], 1)
    return scores, ids
