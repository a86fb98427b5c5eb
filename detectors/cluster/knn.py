"""k-nearest-neighbour graphs with FAISS: exact for small inputs, IVF or HNSW for large ones, on a
GPU when ``faiss-gpu`` and a device are present (same code and results otherwise).

FAISS searches in float32. For the exact index the distances of the neighbours it returns are
recomputed in float64 (its flat search expands |a-b|^2, which turns duplicates' 0 into rounding
noise), so edge weights are as exact as the input and ties stay ties. IVF and HNSW compute
differences directly, and their float32 distances are used as they come.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Literal

import faiss
import numpy as np

log = logging.getLogger(__name__)

KnnMethod = Literal["auto", "exact", "ivf", "hnsw"]
EXACT_BELOW = 20_000  # points; an exact flat search beats IVF's training below about this
_QUERY_BATCH = 65_536
_GATHER_FLOATS = 4_000_000  # float32s gathered at once when recomputing distances (16 MB)
# FAISS work (flops) below which it runs on one thread. Each OpenMP loop ends at a barrier; on busy
# cores a descheduled thread holds the others there for a time slice (a 600 x 5 exact search: 30 ms
# on two threads, 0.1 ms on one), so small searches and small k-means trainings stay serial.
SERIAL_BELOW = 1e9
_SELF_JOIN_PROBES = 12  # lists searched per list by ivf_self_join (a query searches nprobe = 8)


@contextmanager
def faiss_threads_for(flops: float) -> Iterator[None]:
    """One FAISS thread for less than ``SERIAL_BELOW`` flops of work, all of them otherwise."""
    threads = faiss.omp_get_max_threads()
    if flops < SERIAL_BELOW:
        faiss.omp_set_num_threads(1)
    try:
        yield
    finally:
        faiss.omp_set_num_threads(threads)


def gpu_available() -> bool:
    return hasattr(faiss, "StandardGpuResources") and faiss.get_num_gpus() > 0


@dataclass(frozen=True)
class KnnIndex:
    """A searchable index over ``data`` (float32, C order) with the method that built it."""

    index: faiss.Index
    data: np.ndarray
    method: str

    def _search_flops(self, n_queries: int) -> float:
        """Distance computations' flops for ``n_queries`` (an estimate, to choose the thread count)."""
        n, dim = self.data.shape
        if self.method == "ivf":
            ivf = faiss.extract_index_ivf(self.index)
            candidates = ivf.nlist + n * min(1.0, ivf.nprobe / ivf.nlist)
        elif self.method == "hnsw":
            candidates = 32.0 * max(64, self.index.hnsw.efSearch) if hasattr(self.index, "hnsw") else n
        else:
            candidates = n
        return float(2.0 * n_queries * candidates * dim)

    def search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """(distances float64 Euclidean, indices int64) of the ``k`` nearest points, nearest first.

        Missing neighbours (an IVF probe that found too few) have index -1 and distance inf.
        """
        k = min(k, self.data.shape[0])
        queries32 = np.ascontiguousarray(queries, dtype=np.float32)
        dist = np.empty((queries32.shape[0], k), dtype=np.float64)
        idx = np.empty((queries32.shape[0], k), dtype=np.int64)
        refine = self.method == "exact"
        for start in range(0, queries32.shape[0], _QUERY_BATCH):
            stop = start + _QUERY_BATCH
            batch = queries32[start:stop]
            with faiss_threads_for(self._search_flops(batch.shape[0])):
                squared, found = self.index.search(batch, k)
            idx[start:stop] = found
            if refine:
                dist[start:stop] = exact_distances(queries32[start:stop], self.data, found)
            else:
                dist[start:stop] = np.sqrt(np.maximum(squared, 0))
        dist[idx < 0] = np.inf
        if not refine:
            return dist, idx
        order = np.argsort(dist, axis=1, kind="stable")  # the float64 order can differ slightly
        return np.take_along_axis(dist, order, 1), np.take_along_axis(idx, order, 1)


def exact_distances(queries: np.ndarray, data: np.ndarray, neighbours: np.ndarray) -> np.ndarray:
    """Euclidean distances between each query and its listed neighbours (-1: inf), from coordinate
    differences in float32 (exactly 0 between equal rows, and symmetric) summed pairwise."""
    q = np.asarray(queries, dtype=np.float32)
    out = np.full(neighbours.shape, np.inf)
    if neighbours.size == 0:
        return out
    rows = max(1, _GATHER_FLOATS // max(1, neighbours.shape[1] * q.shape[1]))
    for start in range(0, q.shape[0], rows):
        found = neighbours[start : start + rows]
        diff = data[np.maximum(found, 0)] - q[start : start + rows, None, :]
        squared = np.square(diff, out=diff).sum(axis=2, dtype=np.float32)
        out[start : start + rows] = np.where(found >= 0, np.sqrt(squared, dtype=np.float64), np.inf)
    return out


def build_index(data: np.ndarray, method: KnnMethod = "auto", use_gpu: bool | None = None, seed: int = 0) -> KnnIndex:
    """Index ``data`` for k-NN search. ``auto``: exact below 20,000 points, IVF above."""
    data32 = np.ascontiguousarray(data, dtype=np.float32)
    n, dim = data32.shape
    if method == "auto":
        method = "exact" if n < EXACT_BELOW else "ivf"
    if method == "exact":
        index: faiss.Index = faiss.IndexFlatL2(dim)
    elif method == "ivf":
        index = _ivf_index(data32, seed)
    elif method == "hnsw":
        index = faiss.IndexHNSWFlat(dim, 32)
        index.hnsw.efConstruction = 80
        index.hnsw.efSearch = 64
    else:
        raise ValueError(f"knn method must be auto, exact, ivf or hnsw, not {method!r}")
    if use_gpu is None:
        use_gpu = gpu_available()
    elif use_gpu and not gpu_available():
        raise ValueError(
            "use_gpu=True, but FAISS sees no GPU: install faiss-gpu on a GPU machine, or leave use_gpu unset"
        )
    if use_gpu and method != "hnsw":
        index = faiss.index_cpu_to_gpu(faiss.StandardGpuResources(), 0, index)
    if method == "ivf" and not index.is_trained:
        index.train(data32)
    index.add(data32)
    return KnnIndex(index=index, data=data32, method=method)


def _ivf_index(data32: np.ndarray, seed: int) -> faiss.Index:
    n, dim = data32.shape
    nlist = int(np.clip(2 * np.sqrt(n), 16, 65_536))
    quantizer = faiss.IndexFlatL2(dim)
    index = faiss.IndexIVFFlat(quantizer, dim, nlist)
    index.cp.seed = seed
    # Train on a seeded sample: FAISS would subsample anyway, less reproducibly.
    sample = min(n, 40 * nlist)  # FAISS asks for at least 39 points per list
    rng = np.random.default_rng(seed)
    # k-means runs 25 iterations of short parallel loops (50,000 x 7-d: 0.8 s on two busy threads, 0.1 s on one).
    with faiss_threads_for(25 * 2 * sample * nlist * dim):
        index.train(data32[np.sort(rng.choice(n, sample, replace=False))] if sample < n else data32)
    # Eight probes: the clustering barely needs exact neighbours. Measured on blobs with noise:
    # 50,000 x 64-d, ARI 0.996 against the exact graph's clustering; 1,000,000 x 32-d, ARI 0.998
    # against 22 probes, in 42% of the search time.
    index.nprobe = 8
    log.debug("IVF index: nlist=%d nprobe=%d", nlist, index.nprobe)
    return index


def knn_graph(
    data: np.ndarray, k: int, method: KnnMethod = "auto", use_gpu: bool | None = None, seed: int = 0
) -> tuple[np.ndarray, np.ndarray, KnnIndex]:
    """Each point's ``k`` nearest other points: (distances, indices, index), self excluded."""
    index = build_index(data, method, use_gpu, seed)
    if index.method == "ivf" and not _on_gpu(index.index):
        dist, idx = ivf_self_join(index, k + 1)
    else:
        dist, idx = index.search(data, k + 1)
    n = data.shape[0]
    # Drop each row's own entry; with duplicates it need not be first, so look for it.
    is_self = idx == np.arange(n)[:, None]
    no_self = ~is_self.any(axis=1)
    is_self[no_self, -1] = True  # self not returned: drop the farthest instead
    keep = ~is_self
    width = idx.shape[1] - 1
    return dist[keep].reshape(n, width), idx[keep].reshape(n, width), index


def _on_gpu(index: faiss.Index) -> bool:
    return "Gpu" in type(index).__name__


def ivf_self_join(index: KnnIndex, k: int, probes: int = _SELF_JOIN_PROBES) -> tuple[np.ndarray, np.ndarray]:
    """Every indexed point's ``k`` nearest indexed points (itself included), list by list.

    A per-query IVF search scans its candidates one vector at a time. Here the points of each
    inverted list are searched together against the lists nearest its centroid: one matrix product
    (BLAS) per list, about 3x faster for the same candidates. A point near the border of its list
    sees the lists nearest its centroid rather than itself, hence more probes than a query uses.
    Distances are recomputed from coordinates as for the exact search.
    """
    ivf = faiss.extract_index_ivf(index.index)
    data = index.data
    n, dim = data.shape
    nlist = ivf.nlist
    with faiss_threads_for(2.0 * n * nlist * dim):
        _, assigned = ivf.quantizer.search(data, 1)
    order = np.argsort(assigned.ravel(), kind="stable")
    bounds = np.searchsorted(assigned.ravel()[order], np.arange(nlist + 1))
    centroids = ivf.quantizer.reconstruct_n(0, nlist)
    _, near = faiss.knn(centroids, centroids, min(probes, nlist))
    dist = np.full((n, k), np.inf)
    idx = np.full((n, k), -1, dtype=np.int64)

    def join(lst: int) -> None:
        members = order[bounds[lst] : bounds[lst + 1]]
        if members.size == 0:
            return
        candidates = np.concatenate([order[bounds[j] : bounds[j + 1]] for j in near[lst] if j >= 0])
        width = min(k, candidates.size)
        _, found = faiss.knn(data[members], data[candidates], width)
        neighbours = np.where(found >= 0, candidates[np.maximum(found, 0)], -1)
        exact = exact_distances(data[members], data, neighbours)
        row_order = np.argsort(exact, axis=1, kind="stable")
        dist[members, :width] = np.take_along_axis(exact, row_order, 1)
        idx[members, :width] = np.take_along_axis(neighbours, row_order, 1)

    # One thread per list and one list per core: each product is small, and FAISS's own threads
    # would meet at a barrier after every one of them.
    threads = faiss.omp_get_max_threads()
    faiss.omp_set_num_threads(1)
    try:
        with ThreadPoolExecutor(max_workers=threads) as pool:
            list(pool.map(join, range(nlist)))
    finally:
        faiss.omp_set_num_threads(threads)
    return dist, idx
