"""Baseline strategies: ``layerwise`` (split learning), ``random`` and ``contiguous`` (ring 0).

References
----------
L. Chen, T. Jung, H. Du, J. Qian, J. Hou, X.-Y. Li, "Crowdlearning: Crowded Deep Learning with
Data Privacy", IEEE SECON 2018.
"""

from __future__ import annotations

import numpy as np

from slicenet.graph import CostGraph
from slicenet.partition._common import caps, split_contiguous

__all__ = ["contiguous_assignment", "layerwise_assignment", "random_assignment"]


def layerwise_assignment(graph: CostGraph, n: int, *, objective: str, targets: np.ndarray,
                         seed: int, imbalance: float) -> np.ndarray:
    """Contiguous layer cut, as in split learning.

    ``n ≤`` hidden layers: whole layers, cut into ``n`` contiguous groups (in order, piece ``k``
    gets group ``k``) minimising ``max_k compute_k / target_k`` (exact dynamic programme).
    ``n >`` hidden layers: every piece holds part of exactly one layer.  Pieces, largest target
    first, join the layer with the most compute per unit of target already given to it (every
    layer gets at least one piece, none more pieces than vertices); moves and swaps of pieces
    between layers then lower ``max_layer compute / targets`` while they can.  A layer is cut into
    contiguous index ranges of target-proportional compute, its pieces taken in index order.

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
    members = _pieces_per_layer(lc, nv, targets)
    for layer in range(L):
        sl = graph.layer_slice(layer)
        pieces = np.flatnonzero(members == layer)
        out[sl] = pieces[split_contiguous(graph.compute[sl], targets[pieces])]
    return out


def _pieces_per_layer(lc: np.ndarray, nv: np.ndarray, targets: np.ndarray) -> np.ndarray:
    """Layer of every piece (n > L): greedy, then hill-climbing on max(compute / target sum)."""
    L, n = len(lc), len(targets)
    layer_of = np.empty(n, dtype=np.int64)
    tsum = np.zeros(L)
    cnt = np.zeros(L, dtype=np.int64)
    for i, p in enumerate(np.argsort(-targets, kind="stable")):
        empty = np.flatnonzero(cnt == 0)
        cand = empty if n - i == len(empty) else np.flatnonzero(cnt < nv)
        with np.errstate(divide="ignore"):
            score = np.where(tsum[cand] > 0, lc[cand] / np.maximum(tsum[cand], 1e-300),
                             lc[cand] / targets[p])
        layer = int(cand[int(np.argmax(score))])
        layer_of[p] = layer
        tsum[layer] += targets[p]
        cnt[layer] += 1

    def cost(lo: np.ndarray) -> float:
        c = np.bincount(lo, minlength=L)
        if np.any(c == 0) or np.any(c > nv):
            return float("inf")
        return float((lc / np.bincount(lo, weights=targets, minlength=L)).max())

    best = cost(layer_of)
    for _ in range(4 * n):
        trial_best, trial = best, None
        for p in range(n):
            for layer in range(L):
                if layer != layer_of[p]:
                    t = layer_of.copy()
                    t[p] = layer
                    c = cost(t)
                    if c < trial_best - 1e-12:
                        trial_best, trial = c, t
            for q in range(p + 1, n):
                if layer_of[q] != layer_of[p] and targets[q] != targets[p]:
                    t = layer_of.copy()
                    t[p], t[q] = layer_of[q], layer_of[p]
                    c = cost(t)
                    if c < trial_best - 1e-12:
                        trial_best, trial = c, t
        if trial is None:
            break
        best, layer_of = trial_best, trial
    return layer_of


def contiguous_assignment(graph: CostGraph, n: int, *, objective: str, targets: np.ndarray,
                          seed: int, imbalance: float) -> np.ndarray:
    """Vertices in order (layer, index) cut into ``n`` ranges of target-proportional compute,
    each within the same compute cap ``(1 + imbalance) · target`` as the other strategies when
    contiguous ranges can meet it.

    Examples
    --------
    >>> from slicenet.graph import CostGraph, Dense
    >>> g = CostGraph.from_layers((3,), [Dense(2), Dense(2), Dense(1)])
    >>> contiguous_assignment(g, 2, objective="cut", targets=np.full(2, .5), seed=0,
    ...                       imbalance=0).tolist()
    [0, 0, 1, 1]
    """
    return split_contiguous(graph.compute, targets,
                            caps(int(graph.compute.sum()), targets, imbalance))


def random_assignment(graph: CostGraph, n: int, *, objective: str, targets: np.ndarray, seed: int,
                      imbalance: float) -> np.ndarray:
    """Balanced random assignment: vertices in a seeded random order, each to the piece whose
    ``(load + compute) / target`` is smallest.

    Examples
    --------
    >>> from slicenet.graph import paper_mlp_description
    >>> g = paper_mlp_description().graph()
    >>> a = random_assignment(g, 4, objective="cut", targets=np.full(4, .25), seed=1, imbalance=0)
    >>> bool(np.bincount(a, weights=g.compute).max() / (g.compute.sum() / 4) < 1.01)
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
