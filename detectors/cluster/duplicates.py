"""Exact duplicate rows, collapsed to one row with a count and expanded back afterwards.

Duplicate-heavy data (rounded sensor readings, coordinates of the same address, default-valued
embeddings) is a problem for a k-NN graph: a point with more than k copies sees only its copies,
the graph falls apart into many duplicate groups, and joining them costs a search per group. The
clustering is instead computed on the distinct rows, each weighted by its count, which gives the
same hierarchy as the full data:

- a row's core distance counts its ``count - 1`` copies as neighbours at distance 0, then its
  distinct neighbours with their counts;
- the minimum spanning tree of the full data is the distinct rows' tree plus, for each group of
  copies, ``count - 1`` edges at the group's core distance (an edge between two copies weighs
  ``max(core, core, 0)``, no more than any edge leaving the group).

Rows are compared as float32 bit patterns (the precision the k-NN search works in), found by a
64-bit row hash and checked element by element, so a hash collision can never merge two rows.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd


@dataclass(frozen=True)
class UniqueRows:
    """``first[g]``: the first row of group ``g``; ``group[i]``: row i's group; ``counts[g]``: its size."""

    first: np.ndarray
    group: np.ndarray
    counts: np.ndarray

    @property
    def n_unique(self) -> int:
        return int(self.first.shape[0])


def unique_rows(data32: np.ndarray) -> UniqueRows | None:
    """Group the identical rows of a C-ordered float32 matrix; None when every row is distinct."""
    n = data32.shape[0]
    if n < 2:
        return None
    hashes = pd.util.hash_pandas_object(pd.DataFrame(data32.view(np.uint32), copy=False), index=False).to_numpy()
    group, _ = pd.factorize(hashes)
    n_groups = int(group.max()) + 1
    if n_groups == n:
        return None
    # factorize numbers groups in order of first appearance: a row starts a group where its id
    # exceeds every id before it.
    first = np.flatnonzero(np.r_[True, group[1:] > np.maximum.accumulate(group)[:-1]])
    if not np.array_equal(data32[first[group]], data32):  # a hash collision: fall back to sorting
        _, first, group = np.unique(data32, axis=0, return_index=True, return_inverse=True)
        group = group.ravel()
        if first.shape[0] == n:
            return None
    return UniqueRows(first=first.astype(np.int64), group=group.astype(np.int64), counts=np.bincount(group))


def weighted_core_distances(
    knn_dist: np.ndarray, knn_idx: np.ndarray, counts: np.ndarray, copies: np.ndarray | int, wanted: int
) -> np.ndarray:
    """Distance to the ``wanted``-th nearest other point when listed neighbours stand for ``counts`` points.

    ``knn_idx`` lists each query's nearest distinct rows (-1: missing), ``counts`` is every
    distinct row's number of copies and ``copies`` the query's own other copies (at distance 0).
    With all counts 1 and no copies this is ``knn_dist[:, wanted - 1]``, hdbscan's definition.
    """
    need = wanted - np.asarray(copies)  # still to find among the listed neighbours
    listed = np.where(knn_idx >= 0, counts[np.maximum(knn_idx, 0)], 0)
    reached = np.cumsum(listed, axis=1) >= np.reshape(need, (-1, 1))
    column = np.where(reached.any(axis=1), reached.argmax(axis=1), knn_dist.shape[1] - 1)
    core = knn_dist[np.arange(knn_dist.shape[0]), column]
    return np.where(need <= 0, 0.0, core)


def expand_tree(mst_unique: np.ndarray, core_unique: np.ndarray, rows: UniqueRows) -> np.ndarray:
    """The full data's MST, sorted by weight, from the distinct rows' MST (in distinct-row ids)."""
    edges = mst_unique.copy()
    edges[:, 0] = rows.first[mst_unique[:, 0].astype(np.int64)]
    edges[:, 1] = rows.first[mst_unique[:, 1].astype(np.int64)]
    n = rows.group.shape[0]
    copies = np.ones(n, dtype=bool)
    copies[rows.first] = False
    copy_rows = np.flatnonzero(copies)
    groups = rows.group[copy_rows]
    chain = np.column_stack([rows.first[groups].astype(np.float64), copy_rows.astype(np.float64), core_unique[groups]])
    tree = np.vstack([edges, chain])
    return tree[np.argsort(tree[:, 2], kind="mergesort")]
