"""Shared machinery of the partition strategies: exact traffic deltas and repair passes (ring 0).

:class:`TrafficState` keeps, for every vertex ``j`` and piece ``p``, how many sources of ``j`` lie in
``p``; with it the exact change of :func:`slicenet.graph.traffic_per_sample` caused by moving one
vertex to each other piece costs ``O(out-degree · n)``.  The repair passes built on it:

* :func:`fill_empty` gives every empty piece one vertex (METIS may leave parts empty);
* :func:`refine_traffic` greedy single-vertex moves that strictly lower the exact traffic while
  keeping every piece under its compute cap (used after METIS's volume objective);
* :func:`repair_balance` moves vertices out of pieces over their compute cap;
* :func:`repair_memory` moves vertices (boundary vertices first) out of pieces over their memory
  limit into pieces with room, and reports what it could not fix.

References
----------
L. Chen, T. Jung, H. Du, J. Qian, J. Hou, X.-Y. Li, "Crowdlearning: Crowded Deep Learning with
Data Privacy", IEEE SECON 2018.
"""

from __future__ import annotations

import numpy as np

from slicenet.graph import CostGraph

__all__ = ["TrafficState", "fill_empty", "refine_traffic", "repair_balance", "repair_memory",
           "split_contiguous"]


class TrafficState:
    """Mutable assignment with incremental exact-traffic bookkeeping.

    Examples
    --------
    >>> from slicenet.graph import CostGraph, Dense, traffic_per_sample
    >>> g = CostGraph.from_layers((3,), [Dense(2), Dense(2), Dense(1)])
    >>> s = TrafficState(g, np.array([0, 1, 0, 1]), 2)
    >>> d = s.delta(1)          # moving vertex 1 to piece 0 saves 1 float each way
    >>> int(d[0]), traffic_per_sample(g, [0, 0, 0, 1]).floats - traffic_per_sample(g, [0, 1, 0, 1]).floats
    (-2, -2)
    """

    def __init__(self, graph: CostGraph, assignment: np.ndarray, n: int):
        self.g = graph
        self.n = int(n)
        self.a = np.array(assignment, dtype=np.int64)
        V = graph.num_vertices
        self.soff, self.stgt = graph.successors_csr()
        self.cnt = np.zeros((V, self.n), dtype=np.int32)
        np.add.at(self.cnt, (graph.edge_dst, self.a[graph.edge_src]), 1)
        self.u = graph.units
        self.comp = graph.compute
        self.memv = graph.memory_bytes
        self.is_last = graph.layer == graph.num_layers - 1
        self.lastcnt = np.bincount(self.a[self.is_last], minlength=self.n)
        self.load = np.bincount(self.a, weights=self.comp, minlength=self.n).astype(np.int64)
        self.mem = np.bincount(self.a, weights=self.memv, minlength=self.n).astype(np.int64)
        self.count = np.bincount(self.a, minlength=self.n)
        self._pieces = np.arange(self.n)

    def delta(self, v: int) -> np.ndarray:
        """Change of total traffic floats (forward + backward) if ``v`` moved to each piece."""
        a = self.a[v]
        s = self.stgt[self.soff[v]:self.soff[v + 1]]
        d = np.zeros(self.n, dtype=np.int64)
        if len(s):
            c = self.cnt[s]
            pj = self.a[s]
            uj = self.u[s]
            lose = (c[:, a] == 1) & (pj != a)
            gain = (c == 0) & (pj[:, None] != self._pieces[None, :])
            d += uj @ gain.astype(np.int64) - int(uj[lose].sum())
        own = self.cnt[v] > 0
        d += self.u[v] * (int(own[a]) - own.astype(np.int64))
        if self.is_last[v]:
            d += self.g.output_units * ((self.lastcnt == 0).astype(np.int64) - int(self.lastcnt[a] == 1))
        d[a] = 0
        return 2 * d

    def move(self, v: int, b: int) -> None:
        a = self.a[v]
        if a == b:
            return
        s = self.stgt[self.soff[v]:self.soff[v + 1]]
        self.cnt[s, a] -= 1
        self.cnt[s, b] += 1
        self.a[v] = b
        if self.is_last[v]:
            self.lastcnt[a] -= 1
            self.lastcnt[b] += 1
        c, m = self.comp[v], self.memv[v]
        self.load[a] -= c
        self.load[b] += c
        self.mem[a] -= m
        self.mem[b] += m
        self.count[a] -= 1
        self.count[b] += 1

    def neighbour_pieces(self, v: int) -> np.ndarray:
        """Boolean mask of the pieces holding a source or a target of ``v``."""
        mask = self.cnt[v] > 0
        s = self.stgt[self.soff[v]:self.soff[v + 1]]
        mask[self.a[s]] = True
        return mask


def caps(total: int, targets: np.ndarray, imbalance: float) -> np.ndarray:
    """Compute cap of every piece: ``(1 + imbalance) · target · total``."""
    return (1.0 + imbalance) * targets * total


def fill_empty(st: TrafficState) -> None:
    """Give each empty piece the cheapest-to-move vertex of the piece with the most vertices."""
    for b in np.flatnonzero(st.count == 0):
        donor = int(np.argmax(st.count))
        vs = np.flatnonzero(st.a == donor)
        if len(vs) > 64:
            vs = vs[np.argsort(st.comp[vs], kind="stable")[:64]]
        best = min(vs, key=lambda v: (int(st.delta(int(v))[b]), int(st.comp[v])))
        st.move(int(best), int(b))


def refine_traffic(st: TrafficState, cap: np.ndarray, rng: np.random.Generator,
                   max_passes: int = 8, limits: np.ndarray | None = None) -> int:
    """Greedy passes of strictly improving single moves; returns the number of moves made."""
    moves = 0
    V = len(st.a)
    for _ in range(max_passes):
        improved = 0
        for v in rng.permutation(V):
            a = st.a[v]
            if st.count[a] <= 1:
                continue
            d = st.delta(int(v))
            ok = st.load + st.comp[v] <= cap
            if limits is not None:
                ok &= st.mem + st.memv[v] <= limits
            ok[a] = False
            if not ok.any():
                continue
            d = np.where(ok, d, np.iinfo(np.int64).max)
            b = int(np.argmin(d))
            if d[b] < 0:
                st.move(int(v), b)
                improved += 1
        moves += improved
        if not improved:
            break
    return moves


def _candidates(st: TrafficState, piece: int, rng: np.random.Generator, k: int = 128) -> np.ndarray:
    vs = np.flatnonzero(st.a == piece)
    if len(vs) > k:
        vs = rng.choice(vs, size=k, replace=False)
    return vs


def repair_balance(st: TrafficState, cap: np.ndarray, rng: np.random.Generator,
                   max_moves: int | None = None, limits: np.ndarray | None = None) -> None:
    """Move vertices out of the piece most over its compute cap until none is over (if possible).

    A move must keep the receiver under its cap, or at least leave the receiver's load/cap ratio
    below the donor's current one, and respect ``limits`` (memory) if given.  Among allowed moves
    the one adding least traffic wins.
    """
    max_moves = max_moves or 4 * len(st.a) + 10
    for _ in range(max_moves):
        ratio = st.load / cap
        a = int(np.argmax(ratio))
        if ratio[a] <= 1.0 + 1e-12 or st.count[a] <= 1:
            return
        best: tuple | None = None
        for v in _candidates(st, a, rng):
            c = st.comp[v]
            new = (st.load + c) / cap
            under = st.load + c <= cap
            ok = under | (new < ratio[a] - 1e-12)
            if limits is not None:
                ok &= st.mem + st.memv[v] <= limits
            ok[a] = False
            if not ok.any():
                continue
            d = st.delta(int(v))
            for b in np.flatnonzero(ok):
                key = (not under[b], int(d[b]), new[b])
                if best is None or key < best[0]:
                    best = (key, int(v), int(b))
        if best is None:
            return
        st.move(best[1], best[2])


def repair_memory(st: TrafficState, limits: np.ndarray, cap: np.ndarray,
                  rng: np.random.Generator) -> list[str]:
    """Move vertices out of pieces over their memory limit; return the violations left.

    Preference order for a move ``v → b`` (``b`` must have room for ``v``): ``b`` stays under its
    compute cap (else: the lowest resulting load/cap), ``v`` is a boundary vertex (``b`` already
    holds a neighbour of ``v``), least added traffic.  A piece is never emptied.
    """
    stuck: set[int] = set()
    for _ in range(4 * len(st.a) + 10):
        over = st.mem - limits
        over[list(stuck)] = 0
        a = int(np.argmax(over))
        if over[a] <= 0:
            break
        best: tuple | None = None
        if st.count[a] > 1:
            for v in _candidates(st, a, rng, k=256):
                room = st.mem + st.memv[v] <= limits
                room[a] = False
                if not room.any():
                    continue
                d = st.delta(int(v))
                nb = st.neighbour_pieces(int(v))
                under = st.load + st.comp[v] <= cap
                for b in np.flatnonzero(room):
                    over_ratio = 0.0 if under[b] else float((st.load[b] + st.comp[v]) / cap[b])
                    key = (over_ratio, not nb[b], int(d[b]), -int(st.memv[v]))
                    if best is None or key < best[0]:
                        best = (key, int(v), int(b))
        if best is None:
            stuck.add(a)
            continue
        st.move(best[1], best[2])
    short = "" if int(st.mem.sum()) <= int(limits.sum()) else (
        f" (the pieces need {int(st.mem.sum())} bytes in all, the limits allow {int(limits.sum())})")
    return [
        f"piece {p} needs {int(st.mem[p])} bytes of memory but its limit is {int(limits[p])} "
        f"bytes and no vertex move fits{short}; raise the memory limits or use more pieces"
        for p in np.flatnonzero(st.mem > limits)
    ]


def split_contiguous(weights: np.ndarray, fractions: np.ndarray,
                     caps: np.ndarray | None = None) -> np.ndarray:
    """Cut a sequence into ``len(fractions)`` non-empty contiguous ranges whose sums are as close as
    possible to ``fractions · total``; return the range label of each element.

    Examples
    --------
    >>> split_contiguous(np.array([1, 1, 1, 1, 4]), np.array([0.5, 0.5])).tolist()
    [0, 0, 0, 0, 1]

    With ``caps`` (the most each range may sum to), each cut is the one closest to its goal among
    those that keep this range under its cap and leave the rest able to fit under theirs; when no
    cut can (the caps are infeasible for contiguous ranges) the uncapped cuts are returned:

    >>> split_contiguous(np.array([3, 2, 2, 1]), np.array([0.5, 0.5])).tolist()
    [0, 1, 1, 1]
    >>> split_contiguous(np.array([3, 2, 2, 1]), np.array([0.5, 0.5]), np.array([6, 4.5])).tolist()
    [0, 0, 1, 1]
    """
    m, k = len(weights), len(fractions)
    if k > m:
        raise ValueError("more ranges than elements")
    pref = np.cumsum(weights, dtype=np.float64)
    goals = np.cumsum(fractions)[:-1] / np.sum(fractions) * pref[-1]
    labels = np.zeros(m, dtype=np.int64)
    prev = 0
    for i, goal in enumerate(goals):
        idx = int(np.searchsorted(pref, goal))          # pref[idx] is the first prefix ≥ goal
        # keep idx elements (sum pref[idx-1]) or idx+1 elements (sum pref[idx]), the closer one
        if idx >= 1 and (idx >= m or abs(pref[idx - 1] - goal) <= abs(pref[idx] - goal)):
            cnt = idx
        else:
            cnt = idx + 1
        cnt = min(max(cnt, prev + 1), m - (k - 1 - i))
        if caps is not None:
            base = pref[prev - 1] if prev else 0.0
            ends = np.arange(prev + 1, m - (k - 1 - i) + 1)      # candidate counts
            fits = (pref[ends - 1] - base <= caps[i]) & \
                (pref[-1] - pref[ends - 1] <= float(np.sum(caps[i + 1:])))
            if fits.any() and not fits[cnt - prev - 1]:
                ok = ends[fits]
                cnt = int(ok[np.argmin(np.abs(pref[ok - 1] - goal))])
        labels[cnt:] += 1
        prev = cnt
    if caps is not None and np.any(np.bincount(labels, weights=weights, minlength=k) > caps):
        return split_contiguous(weights, fractions)
    return labels
