"""Maximum-weight bipartite matching on sparse candidate links, the solver of the linker's LAPs.

:mod:`snakescope.tracking.linking` turns each of its linear assignment problems (frame to
frame; gap closing and divisions) into a maximum-weight matching of candidate links and
calls :func:`max_weight_matching`, which splits the candidate graph into its connected
components and solves small ones by enumeration, the rest by one sparse LAPJV call.
"""

from __future__ import annotations

import itertools

import numpy as np

__all__ = ["max_weight_matching"]

#: Components with at most this many sources and targets are solved by enumeration.
_SMALL = 3
_PERMUTATIONS = np.array(list(itertools.permutations(range(_SMALL))), dtype=np.int64)


def max_weight_matching(sources: np.ndarray, targets: np.ndarray, weight: np.ndarray) -> np.ndarray:
    """Maximum-weight bipartite matching on positive-weight edges; a mask of chosen edges.

    Source and target ids are separate name spaces (non-negative integers). The candidate
    graph falls apart into small connected components (local neighbourhoods of one frame
    pair), and the optimum of the whole is the optimum of each: an edge whose two ends have
    no other edge is taken directly; components of at most 3 x 3 nodes (almost all others)
    are solved at once, vectorised, by trying the 6 assignments of their zero-padded 3 x 3
    weight matrices; the rest go to one sparse LAPJV call (:func:`_sparse_lap_matching`).
    """
    n_edges = sources.size
    chosen = np.zeros(n_edges, dtype=bool)
    if n_edges == 0:
        return chosen
    src_degree = np.bincount(sources)
    dst_degree = np.bincount(targets)
    lonely = (src_degree[sources] == 1) & (dst_degree[targets] == 1)
    chosen[lonely] = True
    rest = np.flatnonzero(~lonely)
    if rest.size == 0:
        return chosen
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import connected_components

    _, s = np.unique(sources[rest], return_inverse=True)
    _, d = np.unique(targets[rest], return_inverse=True)
    w = weight[rest].astype(np.float64)
    ns, nd = int(s.max()) + 1, int(d.max()) + 1
    graph = coo_matrix((np.ones(s.size, np.int8), (s, ns + d)), shape=(ns + nd, ns + nd))
    n_comp, node_comp = connected_components(graph, directed=False)
    src_local, src_count = _local_ranks(node_comp[:ns], n_comp)
    dst_local, dst_count = _local_ranks(node_comp[ns:], n_comp)
    edge_comp = node_comp[s]
    small_comp = (src_count <= _SMALL) & (dst_count <= _SMALL)
    small = small_comp[edge_comp]
    picked = np.zeros(rest.size, dtype=bool)
    if small.any():
        # Dense (component, 3, 3) weights, 0 where there is no edge; the best of the 6
        # permutations, minus its zero entries, is the component's maximum-weight matching.
        small_ids = np.flatnonzero(small_comp)
        slot = np.full(n_comp, -1, dtype=np.int64)
        slot[small_ids] = np.arange(small_ids.size)
        edges = np.flatnonzero(small)
        c, r, q = slot[edge_comp[edges]], src_local[s[edges]], dst_local[d[edges]]
        dense = np.zeros((small_ids.size, _SMALL, _SMALL))
        index = np.full((small_ids.size, _SMALL, _SMALL), -1, dtype=np.int64)
        dense[c, r, q] = w[edges]
        index[c, r, q] = edges
        rows = np.arange(_SMALL)
        totals = dense[:, rows[None, :], _PERMUTATIONS].sum(axis=2)  # (components, 6)
        best = _PERMUTATIONS[np.argmax(totals, axis=1)]  # first best: deterministic ties
        assigned = index[np.arange(small_ids.size)[:, None], rows[None, :], best].ravel()
        picked[assigned[assigned >= 0]] = True
    if (~small).any():
        large = np.flatnonzero(~small)
        picked[large] = _sparse_lap_matching(s[large], d[large], w[large])
    chosen[rest] = picked
    return chosen


def _local_ranks(component: np.ndarray, n_comp: int):
    """Rank of each node within its component (stable), and the component sizes."""
    order = np.argsort(component, kind="stable")
    count = np.bincount(component, minlength=n_comp)
    start = np.cumsum(count) - count
    local = np.empty(component.size, dtype=np.int64)
    local[order] = np.arange(component.size) - start[component[order]]
    return local, count


def _sparse_lap_matching(s: np.ndarray, d: np.ndarray, w: np.ndarray) -> np.ndarray:
    """Max-weight matching by one sparse LAPJV call on Jaqaman's augmented matrix.

    Link ``(i, j)`` costs ``K - w``, every node may stay unmatched at ``K`` (its own dummy),
    and the lower-right block repeats the candidate pattern (transposed) at ``K``; every full
    matching then has ``n_sources + n_targets`` entries, so the minimum is
    ``K (n_s + n_t) - max sum of w``. ``K = max w + 1`` keeps all entries non-zero, which
    scipy requires.
    """
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import min_weight_full_bipartite_matching

    _, s = np.unique(s, return_inverse=True)
    _, d = np.unique(d, return_inverse=True)
    ns, nd = int(s.max()) + 1, int(d.max()) + 1
    big = float(w.max()) + 1.0
    size = ns + nd
    rows = np.concatenate([s, np.arange(ns), ns + np.arange(nd), ns + d])
    cols = np.concatenate([d, nd + np.arange(ns), np.arange(nd), nd + s])
    values = np.concatenate([big - w, np.full(ns + nd, big), np.full(s.size, big)])
    matrix = coo_matrix((values, (rows, cols)), shape=(size, size)).tocsr()
    row_ind, col_ind = min_weight_full_bipartite_matching(matrix)
    partner = np.full(size, -1, dtype=np.int64)
    partner[row_ind] = col_ind
    return partner[s] == d
