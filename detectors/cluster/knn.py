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
import numba
import numpy as np
from threadpoolctl import threadpool_limits

from argus.detectors.cluster.compiled import CACHE_COMPILED

log = logging.getLogger(__name__)

KnnMethod = Literal["auto", "exact", "ivf", "hnsw"]
EXACT_BELOW = 20_000  # points; an exact flat search beats IVF's training below about this
_QUERY_BATCH = 65_536
_GATHER_FLOATS = 4_000_000  # float32s gathered at once when recomputing distances (16 MB)
# FAISS work (flops) below which it runs on one thread. Each OpenMP loop ends at a barrier; on busy
# cores a descheduled thread holds the others there for a time slice (a 600 x 5 exact search: 30 ms
# on two threads, 0.1 ms on one), so small searches and small k-means trainings stay serial.
SERIAL_BELOW = 1e9
# ivf_self_join searches each list against the lists nearest its centroid: as many as give about
# SELF_JOIN_CANDIDATES points, between 4 and 12 lists (12 up to ~250,000 points, 6 at 1,000,000).
# Measured at 1,000,000 x 32 blobs with noise: 6 lists of 500 points give recall@21 0.44 (12 lists:
# 0.65) and the same clustering as 12 lists (ARI 0.997) in 12.8 s of CPU instead of 23.5 s.
SELF_JOIN_CANDIDATES = 3_000
CELL_SIZE = 500  # points per inverted list at least on average (lists are 2 sqrt(n) up to 1,000,000 points)
# Above this many lists, k-means on a sample and assigning every point to its nearest centroid cost
# n x nlist distances (10,000,000 x 20,000 x 32: hours on two cores); the centroids are then trained
# and searched in two levels (sqrt(nlist) coarse cells, each split in proportion to its points).
FLAT_QUANTIZER_UP_TO = 4_096


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
    if use_gpu is None:
        use_gpu = gpu_available()
    elif use_gpu and not gpu_available():
        raise ValueError(
            "use_gpu=True, but FAISS sees no GPU: install faiss-gpu on a GPU machine, or leave use_gpu unset"
        )
    if method == "exact":
        index: faiss.Index = faiss.IndexFlatL2(dim)
    elif method == "ivf" and not use_gpu and ivf_list_count(n) > FLAT_QUANTIZER_UP_TO:
        return KnnIndex(index=_two_level_ivf_index(data32, ivf_list_count(n), seed), data=data32, method=method)
    elif method == "ivf":  # on a GPU, assignment is cheap: one level, 2 sqrt(n) lists
        index = _ivf_index(data32, seed, int(max(16, 2 * np.sqrt(n))) if use_gpu else ivf_list_count(n))
    elif method == "hnsw":
        index = faiss.IndexHNSWFlat(dim, 32)
        index.hnsw.efConstruction = 80
        index.hnsw.efSearch = 64
    else:
        raise ValueError(f"knn method must be auto, exact, ivf or hnsw, not {method!r}")
    if use_gpu and method != "hnsw":
        index = faiss.index_cpu_to_gpu(faiss.StandardGpuResources(), 0, index)
    if method == "ivf" and not index.is_trained:
        index.train(data32)
    index.add(data32)
    return KnnIndex(index=index, data=data32, method=method)


def ivf_list_count(n: int) -> int:
    """Inverted lists for ``n`` points: 2 sqrt(n) (at least 16), and at least n / CELL_SIZE."""
    return int(max(16, 2 * np.sqrt(n), n // CELL_SIZE))


def _ivf_index(data32: np.ndarray, seed: int, nlist: int) -> faiss.IndexIVF:
    n, dim = data32.shape
    quantizer = faiss.IndexFlatL2(dim)
    index = faiss.IndexIVFFlat(quantizer, dim, nlist)
    index.cp.seed = seed
    # Train on a seeded sample: FAISS would subsample anyway, less reproducibly.
    sample = min(n, 40 * nlist)  # FAISS asks for at least 39 points per list
    rng = np.random.default_rng(seed)
    # k-means runs 25 iterations of short parallel loops (50,000 x 7-d: 0.8 s on two busy threads, 0.1 s on one).
    with faiss_threads_for(25 * 2 * sample * nlist * dim):
        index.train(data32[np.sort(rng.choice(n, sample, replace=False))] if sample < n else data32)
    _set_query_probes(index)
    return index


def _set_query_probes(index: faiss.IndexIVF) -> None:
    # Eight probes: the clustering barely needs exact neighbours. Measured on blobs with noise:
    # 50,000 x 64-d, ARI 0.996 against the exact graph's clustering; 1,000,000 x 32-d, ARI 0.998
    # against 22 probes, in 42% of the search time.
    index.nprobe = 8
    log.debug("IVF index: nlist=%d nprobe=%d", index.nlist, index.nprobe)


def _two_level_ivf_index(data32: np.ndarray, nlist: int, seed: int) -> faiss.IndexIVF:
    """An IVF index of ``nlist`` lists trained and filled in two levels (no n x nlist work).

    k-means with sqrt(nlist) centroids on a sample gives coarse cells; each cell's share of the
    sample is clustered into its share of the lists. Every point goes to the nearest list of its
    nearest coarse cell (not always its nearest list overall, which the self-join's probes absorb).
    Queries (component links, ``approximate_predict``) find their lists through an HNSW graph over
    the centroids.
    """
    n, dim = data32.shape
    rng = np.random.default_rng(seed)
    sample = data32[np.sort(rng.choice(n, min(n, 16 * nlist), replace=False))]
    coarse_count = int(np.sqrt(nlist))
    coarse = faiss.Kmeans(
        dim, coarse_count, niter=10, seed=seed, max_points_per_centroid=1 << 30, min_points_per_centroid=1
    )
    coarse.train(sample)
    coarse_centroids = np.asarray(coarse.centroids)
    _, sample_cell = faiss.knn(sample, coarse_centroids, 1)
    sample_cell = sample_cell.ravel()
    shares = np.bincount(sample_cell, minlength=coarse_count)
    fine_counts = np.maximum(1, np.round(shares * (nlist / sample.shape[0]))).astype(np.int64)
    fine_counts = np.minimum(fine_counts, np.maximum(shares, 1))
    centroids = []
    for cell in range(coarse_count):
        members = sample[sample_cell == cell]
        if members.shape[0] <= fine_counts[cell]:  # too few points to cluster: they are the centroids
            centroids.append(members if members.shape[0] else coarse_centroids[cell : cell + 1])
            continue
        fine = faiss.Kmeans(
            dim,
            int(fine_counts[cell]),
            niter=10,
            seed=seed + cell,
            max_points_per_centroid=1 << 30,
            min_points_per_centroid=1,
        )
        with faiss_threads_for(10 * 2 * members.shape[0] * fine_counts[cell] * dim):
            fine.train(members)
        centroids.append(np.asarray(fine.centroids))
    first_list = np.r_[0, np.cumsum([c.shape[0] for c in centroids])]
    all_centroids = np.ascontiguousarray(np.vstack(centroids), dtype=np.float32)
    _, cell_of = faiss.knn(data32, coarse_centroids, 1)
    cell_of = cell_of.ravel()
    assigned = np.empty(n, dtype=np.int64)
    for cell, members in enumerate(_groups(cell_of, coarse_count)):
        if members.size:
            _, nearest = faiss.knn(data32[members], centroids[cell], 1)
            assigned[members] = first_list[cell] + nearest.ravel()
    quantizer = faiss.IndexHNSWFlat(dim, 32)
    quantizer.hnsw.efSearch = 64
    quantizer.add(all_centroids)
    index = faiss.IndexIVFFlat(quantizer, dim, all_centroids.shape[0])
    index.is_trained = True
    index.add_core(n, faiss.swig_ptr(data32), None, faiss.swig_ptr(assigned))  # the lists found above
    _set_query_probes(index)
    return index


def _groups(labels: np.ndarray, count: int) -> list[np.ndarray]:
    """The indices holding each label 0..count-1, in order."""
    order = np.argsort(labels, kind="stable")
    return np.split(order, np.cumsum(np.bincount(labels, minlength=count))[:-1])


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


def self_join_probes(list_size: float) -> int:
    """Lists searched per list: about SELF_JOIN_CANDIDATES candidates, 4 to 12 lists."""
    return int(np.clip(round(SELF_JOIN_CANDIDATES / max(list_size, 1.0)), 4, 12))


def ivf_lists(ivf: faiss.IndexIVF) -> list[np.ndarray]:
    """The ids held by each inverted list (copied out of FAISS)."""
    invlists = ivf.invlists
    if invlists is None:
        raise ValueError("the IVF index has no inverted lists")
    return [
        faiss.rev_swig_ptr(invlists.get_ids(lst), invlists.list_size(lst)).copy()
        if invlists.list_size(lst)
        else np.empty(0, dtype=np.int64)
        for lst in range(ivf.nlist)
    ]


def ivf_self_join(index: KnnIndex, k: int, probes: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Every indexed point's ``k`` nearest indexed points (itself included), list by list:
    (distances float32, indices int32; -1 and inf where a list and its probes held fewer than k).

    A per-query IVF search scans its candidates one vector at a time. Here the points of each
    inverted list are searched together against the lists nearest its centroid: one matrix product
    (BLAS) per list, about 3x faster for the same candidates. A point near the border of its list
    sees the lists nearest its centroid rather than itself, hence more probes than a query uses
    (``probes``, default ``self_join_probes``). Distances are recomputed from coordinates as for
    the exact search. The graph is kept in 4-byte values (10,000,000 x 21 neighbours: 1.7 GB).
    """
    ivf = faiss.extract_index_ivf(index.index)
    data = index.data
    n = data.shape[0]
    nlist = ivf.nlist
    lists = ivf_lists(ivf)
    probes = probes or self_join_probes(n / nlist)
    centroids = ivf.quantizer.reconstruct_n(0, nlist)
    with faiss_threads_for(2.0 * nlist * nlist * centroids.shape[1]):
        _, near = faiss.knn(centroids, centroids, min(probes, nlist))
    dist = np.full((n, k), np.inf, dtype=np.float32)
    idx = np.full((n, k), -1, dtype=np.int32)

    def join(lst: int) -> None:
        members = lists[lst]
        if members.size == 0:
            return
        candidates = np.concatenate([lists[j] for j in near[lst] if j >= 0])
        width = min(k, candidates.size)
        queries = data[members]
        found = _nearest_columns(queries @ data[candidates].T, norms[candidates], width)
        neighbours = candidates[found]
        exact = exact_distances(queries, data, neighbours)
        row_order = np.argsort(exact, axis=1, kind="stable")
        dist[members, :width] = np.take_along_axis(exact, row_order, 1)
        idx[members, :width] = np.take_along_axis(neighbours, row_order, 1)

    # One thread per list and one list per core: each product is small, and BLAS's own threads
    # would meet at a barrier after every one of them.
    norms = np.einsum("ij,ij->i", data, data)
    with threadpool_limits(1, user_api="blas"), ThreadPoolExecutor(max_workers=faiss.omp_get_max_threads()) as pool:
        list(pool.map(join, range(nlist)))
    return dist, idx


@numba.njit(nogil=True, cache=CACHE_COMPILED)
def _nearest_columns(products: np.ndarray, column_norms: np.ndarray, k: int) -> np.ndarray:
    """Per row, the ``k`` columns of smallest |c|^2 - 2 <r, c> (the row's nearest candidates).

    One pass with a sorted insertion list: after the first few hundred columns almost every
    candidate fails one comparison. 1.6x less CPU than FAISS's heap for 500 x 3,000 candidates.
    """
    m, c = products.shape
    found = np.empty((m, k), dtype=np.int64)
    best = np.empty(k, dtype=np.float32)
    for r in range(m):
        row = products[r]
        filled = 0
        worst = np.inf
        for j in range(c):
            value = column_norms[j] - 2.0 * row[j]
            if value >= worst:
                continue
            pos = filled if filled < k else k - 1
            filled = min(filled + 1, k)
            while pos > 0 and best[pos - 1] > value:
                best[pos] = best[pos - 1]
                found[r, pos] = found[r, pos - 1]
                pos -= 1
            best[pos] = value
            found[r, pos] = j
            if filled == k:
                worst = best[k - 1]
    return found
