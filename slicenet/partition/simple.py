"""Baseline strategies: ``layerwise`` (split learning), ``random`` and ``contiguous`` (ring 0).

References
----------
L. Chen, T. Jung, H. Du, J. Qian, J. Hou, X.-Y. Li, "Crowdlearning: Crowded Deep Learning with
Data Privacy", IEEE SECON 2018.
"""

from __future__ import annotations

import numpy as np

from slicenet.graph import CostGraph
from slicenet.partition._common import split_contiguous

__all__ = ["contiguous_assignment", "layerwise_assignment", "random_assignment"]


def layerwise_assignment(graph: CostGraph, n: int, *, objective: str, targets: np.ndarray,
                         seed: int, imbalance: float) -> np.ndarray:
    """Contiguous layer cut, as in split learning.

    ``n ≤`` hidden layers: whole layers, cut into ``n`` contiguous groups (in order, piece ``k``
    gets group ``k``) minimising ``max_k compute_k / target_k`` (exact dynamic programme).
    ``n >`` hidden layers: every layer gets at least one piece and each further piece goes to the
    layer with the largest compute per piece (never more pieces than vertices); pieces are taken in
    index order, layer by layer, and a layer is cut into contiguous index ranges of
    target-proportional compute.  So every piece holds part of exactly one layer.

    Examples
    --------
    >>> from slicenet.graph import paper_mlp_description
    >>> g = paper_mlp_description().graph()
    >>> a = layerwise_assignment(g, 2, objective="cut", targets=np.full(2, .5), seed=0, imbalance=0)
    >>> [sorted(set(a[g.layer == l].tolist())) for l in range(3)]
    [[0], [1], [1]]
    """
    L = graph.num_layers
    lc = np.bincount(graph.layer, weights=graph.compute, minlength=L)
    nv = np.bincount(graph.layer, minlength=L)
    out = np.empty(graph.num_vertices, dtype=np.int64)
    if n <= L:
        pref = np.concatenate([[0.0], np.cumsum(lc)])
        INF = float("inf")
        f = np.full((n + 1, L + 1), INF)
        arg = np.zeros((n + 1, L + 1), dtype=np.int64)
        f[0, 0] = 0.0
        for k in range(1, n + 1):
            for i in range(k, L - (n - k) + 1):
                for j in range(k - 1, i):
                    val = max(f[k - 1, j], (pref[i] - pref[j]) / targets[k - 1])
                    if val < f[k, i]:
                        f[k, i], arg[k, i] = val, j
        i = L
        group = np.zeros(L, dtype=np.int64)
        for k in range(n, 0, -1):
            j = arg[k, i]
            group[j:i] = k - 1
            i = j
        return group[graph.layer].astype(np.int64)
    k = np.ones(L, dtype=np.int64)
    for _ in range(n - L):
        score = np.where(k < nv, lc / k, -1.0)
        k[int(np.argmax(score))] += 1
    nxt = 0
    for layer in range(L):
        sl = graph.layer_slice(layer)
        pieces = np.arange(nxt, nxt + k[layer])
        out[sl] = pieces[split_contiguous(graph.compute[sl], targets[pieces])]
        nxt += k[layer]
    return out


def contiguous_assignment(graph: CostGraph, n: int, *, objective: str, targets: np.ndarray,
                          seed: int, imbalance: float) -> np.ndarray:
    """Vertices in order (layer, index) cut into ``n`` ranges of target-proportional compute.

    Examples
    --------
    >>> from slicenet.graph import CostGraph, Dense
    >>> g = CostGraph.from_layers((3,), [Dense(2), Dense(2), Dense(1)])
    >>> contiguous_assignment(g, 2, objective="cut", targets=np.full(2, .5), seed=0,
    ...                       imbalance=0).tolist()
    [0, 0, 1, 1]
    """
    return split_contiguous(graph.compute, targets)


def random_assignment(graph: CostGraph, n: int, *, objective: str, targets: np.ndarray, seed: int,
                      imbalance: float) -> np.ndarray:
    """Balanced random assignment: vertices in a seeded random order, each to the piece whose
    ``(load + compute) / target`` is smallest.

    Examples
    --------
    >>> from slicenet.graph import paper_mlp_description
    >>> g = paper_mlp_description().graph()
    >>> a = random_assignment(g, 4, objective="cut", targets=np.full(4, .25), seed=1, imbalance=0)
    >>> np.bincount(a, weights=g.compute).max() / (g.compute.sum() / 4) < 1.01
    True
    """
    rng = np.random.default_rng(seed)
    load = np.zeros(n)
    out = np.empty(graph.num_vertices, dtype=np.int64)
    comp = graph.compute.astype(float)
    for v in rng.permutation(graph.num_vertices):
        p = int(np.argmin((load + comp[v]) / targets))
        out[v] = p
        load[p] += comp[v]
    return out
