"""k-nearest-neighbour graphs with FAISS: exact for small inputs, IVF or HNSW for large ones, on a
GPU when ``faiss-gpu`` and a device are present (same code and results otherwise).

FAISS searches in float32. For the exact index the distances of the neighbours it returns are
recomputed in float64 (its flat search expands |a-b|^2, which turns duplicates' 0 into rounding
noise), so edge weights are as exact as the input and ties stay ties. IVF and HNSW compute
differences directly, and their float32 distances are used as they come.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Literal

import faiss
import numpy as np

log = logging.getLogger(__name__)

KnnMethod = Literal["auto", "exact", "ivf", "hnsw"]
EXACT_BELOW = 20_000  # points; an exact flat search beats IVF's training below about this
_QUERY_BATCH = 65_536


def gpu_available() -> bool:
    return hasattr(faiss, "StandardGpuResources") and faiss.get_num_gpus() > 0


@dataclass(frozen=True)
class KnnIndex:
    """A searchable index over ``data`` (float32, C order) with the method that built it."""

    index: faiss.Index
    data: np.ndarray
    method: str

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
            squared, found = self.index.search(queries32[start:stop], k)
            idx[start:stop] = found
            if refine:
                dist[start:stop] = exact_distances(queries[start:stop], self.data, found)
            else:
                dist[start:stop] = np.sqrt(np.maximum(squared, 0))
        dist[idx < 0] = np.inf
        if not refine:
            return dist, idx
        order = np.argsort(dist, axis=1, kind="stable")  # the float64 order can differ slightly
        return np.take_along_axis(dist, order, 1), np.take_along_axis(idx, order, 1)


def exact_distances(queries: np.ndarray, data: np.ndarray, neighbours: np.ndarray) -> np.ndarray:
    """Euclidean distances in float64 between each query and its listed neighbours (-1: inf)."""
    q = np.asarray(queries, dtype=np.float64)
    out = np.full(neighbours.shape, np.inf)
    for j in range(neighbours.shape[1]):
        col = neighbours[:, j]
        ok = col >= 0
        diff = q[ok] - data[col[ok]].astype(np.float64)
        out[ok, j] = np.sqrt(np.einsum("ij,ij->i", diff, diff))
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
    dist, idx = index.search(data, k + 1)
    n = data.shape[0]
    # Drop each row's own entry; with duplicates it need not be first, so look for it.
    is_self = idx == np.arange(n)[:, None]
    no_self = ~is_self.any(axis=1)
    is_self[no_self, -1] = True  # self not returned: drop the farthest instead
    keep = ~is_self
    width = idx.shape[1] - 1
    return dist[keep].reshape(n, width), idx[keep].reshape(n, width), index
