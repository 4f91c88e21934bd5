"""A slicing plan: which piece holds which vertex, and what each piece costs (ring 0).

Examples
--------
>>> from slicenet.graph import CostGraph, Dense
>>> g = CostGraph.from_layers((3,), [Dense(2), Dense(2), Dense(1)])
>>> plan = SlicePlan.from_assignment(g, [0, 1, 0, 1], 2, method="manual")
>>> plan.compute, plan.balance, plan.traffic_bytes_per_sample
((5, 5), 1.0, 48)

References
----------
L. Chen, T. Jung, H. Du, J. Qian, J. Hou, X.-Y. Li, "Crowdlearning: Crowded Deep Learning with
Data Privacy", IEEE SECON 2018.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from slicenet.errors import UserError
from slicenet.graph import BYTES_PER_VALUE, CostGraph, traffic_per_sample

__all__ = ["PieceStats", "SlicePlan"]


@dataclass(frozen=True)
class PieceStats:
    """The cost of one piece.

    ``compute`` (cost units), ``memory_bytes`` (owned weights, own params and per-sample
    activations, see :mod:`slicenet.graph`), ``neurons`` (hidden units held), ``weights`` (weights
    owned: the outgoing weights of its units), ``vertices``, and ``traffic_bytes_per_sample``: bytes
    the piece sends plus bytes it receives per training sample, forward and backward.
    """

    compute: int
    memory_bytes: int
    neurons: int
    weights: int
    vertices: int
    traffic_bytes_per_sample: int

    def to_dict(self) -> dict[str, int]:
        return {
            "compute": self.compute,
            "memory_bytes": self.memory_bytes,
            "neurons": self.neurons,
            "weights": self.weights,
            "vertices": self.vertices,
            "traffic_bytes_per_sample": self.traffic_bytes_per_sample,
        }


@dataclass(frozen=True, eq=False)
class SlicePlan:
    """The result of :func:`slicenet.partition.partition`.

    Attributes
    ----------
    method, objective : str
        Strategy used; ``objective`` is None for strategies without one.
    n : int
        Number of pieces.
    assignment : numpy.ndarray
        Read-only int64 array, the piece of every graph vertex.
    pieces : tuple of PieceStats
    targets : tuple of float
        Relative piece sizes (sum 1).
    balance : float
        ``max_p compute_p / (targets_p · total compute)``; with equal targets this is max compute
        ÷ ideal (``total / n``), the paper's figure.  **[ours]** the target-relative form for
        heterogeneous targets.
    traffic_bytes_per_sample : int
        All bytes exchanged per training sample, forward + backward, each message counted once,
        including the dominator↔hidden-1 and last-hidden↔output boundaries (float32).
    dominator_traffic_bytes_per_sample : int
        The dominator's share (sent + received).
    edge_cut : int
        The paper's objective: model weights on cut edges.
    memory_limits : tuple of int or None
    violations : tuple of str
        Problems the partitioner could not repair (memory over a limit).

    Examples
    --------
    >>> from slicenet.graph import CostGraph, Dense
    >>> g = CostGraph.from_layers((3,), [Dense(2), Dense(2), Dense(1)])
    >>> SlicePlan.from_assignment(g, [0, 0, 1, 1], 2).to_dict()["pieces"][0]["compute"]
    6
    """

    method: str
    objective: str | None
    n: int
    assignment: np.ndarray
    pieces: tuple[PieceStats, ...]
    targets: tuple[float, ...]
    balance: float
    traffic_bytes_per_sample: int
    dominator_traffic_bytes_per_sample: int
    edge_cut: int
    total_compute: int
    memory_limits: tuple[int, ...] | None = None
    violations: tuple[str, ...] = ()

    @classmethod
    def from_assignment(
        cls,
        graph: CostGraph,
        assignment: Sequence[int] | np.ndarray,
        n: int,
        *,
        method: str = "manual",
        objective: str | None = None,
        targets: Sequence[float] | None = None,
        memory_limits: Sequence[int] | None = None,
        violations: Sequence[str] = (),
    ) -> SlicePlan:
        """Compute every statistic of a plan from a vertex → piece assignment."""
        a = np.array(assignment, dtype=np.int64)
        if a.shape != (graph.num_vertices,):
            raise UserError(f"assignment has shape {a.shape}, expected ({graph.num_vertices},)")
        if len(a) and (a.min() < 0 or a.max() >= n):
            raise UserError(f"assignment values must lie in 0..{n - 1}")
        t = np.full(n, 1.0 / n) if targets is None else np.asarray(targets, dtype=float)
        t = t / t.sum()
        a.setflags(write=False)

        def per(x: np.ndarray) -> np.ndarray:
            return np.bincount(a, weights=x, minlength=n).round().astype(np.int64)

        comp, mem = per(graph.compute), per(graph.memory_bytes)
        neu, wts = per(graph.units), per(graph.weights_owned)
        cnt = np.bincount(a, minlength=n)
        tr = traffic_per_sample(graph, a, n, bytes_per_value=BYTES_PER_VALUE)
        total = int(graph.compute.sum())
        balance = float((comp / (t * total)).max()) if total else 1.0
        pieces = tuple(
            PieceStats(int(comp[p]), int(mem[p]), int(neu[p]), int(wts[p]), int(cnt[p]),
                       int(tr.piece_bytes[p]))
            for p in range(n)
        )
        return cls(
            method=method,
            objective=objective,
            n=int(n),
            assignment=a,
            pieces=pieces,
            targets=tuple(float(x) for x in t),
            balance=balance,
            traffic_bytes_per_sample=int(tr.bytes),
            dominator_traffic_bytes_per_sample=int(tr.dominator_bytes),
            edge_cut=graph.edge_cut(a),
            total_compute=total,
            memory_limits=None if memory_limits is None else tuple(int(m) for m in memory_limits),
            violations=tuple(violations),
        )

    # per-piece views ----------------------------------------------------------------------
    @property
    def compute(self) -> tuple[int, ...]:
        return tuple(p.compute for p in self.pieces)

    @property
    def memory_bytes(self) -> tuple[int, ...]:
        return tuple(p.memory_bytes for p in self.pieces)

    @property
    def neurons(self) -> tuple[int, ...]:
        return tuple(p.neurons for p in self.pieces)

    @property
    def weights(self) -> tuple[int, ...]:
        return tuple(p.weights for p in self.pieces)

    @property
    def piece_traffic_bytes_per_sample(self) -> tuple[int, ...]:
        return tuple(p.traffic_bytes_per_sample for p in self.pieces)

    @property
    def ideal_compute(self) -> float:
        """``total compute / n``."""
        return self.total_compute / self.n

    def vertices_of(self, piece: int) -> np.ndarray:
        """Vertex indices held by ``piece``."""
        return np.flatnonzero(self.assignment == piece)

    # rendering ---------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict: ``pieces`` (list of per-piece dicts), ``balance``,
        ``traffic_bytes_per_sample``, ``method``, ``n`` and a few more fields."""
        return {
            "method": self.method,
            "objective": self.objective,
            "n": self.n,
            "balance": self.balance,
            "traffic_bytes_per_sample": self.traffic_bytes_per_sample,
            "dominator_traffic_bytes_per_sample": self.dominator_traffic_bytes_per_sample,
            "edge_cut": self.edge_cut,
            "total_compute": self.total_compute,
            "ideal_compute": self.ideal_compute,
            "targets": list(self.targets),
            "memory_limits": None if self.memory_limits is None else list(self.memory_limits),
            "violations": list(self.violations),
            "pieces": [p.to_dict() for p in self.pieces],
        }

    def table(self) -> str:
        """A plain-text table, one row per piece, then the totals.

        Examples
        --------
        >>> from slicenet.graph import CostGraph, Dense
        >>> g = CostGraph.from_layers((3,), [Dense(2), Dense(2), Dense(1)])
        >>> print(SlicePlan.from_assignment(g, [0, 1, 0, 1], 2).table().splitlines()[0])
        piece  vertices  neurons  weights  compute  target  memory (B)  sent+received/sample (B)
        """
        head = ("piece", "vertices", "neurons", "weights", "compute", "target", "memory (B)",
                "sent+received/sample (B)")
        rows = [
            (str(i), str(p.vertices), str(p.neurons), str(p.weights), str(p.compute),
             f"{self.targets[i] * self.total_compute:.0f}", str(p.memory_bytes),
             str(p.traffic_bytes_per_sample))
            for i, p in enumerate(self.pieces)
        ]
        widths = [max(len(h), *(len(r[k]) for r in rows)) for k, h in enumerate(head)]
        fmt = "  ".join(f"{{:>{w}}}" if k else f"{{:<{w}}}" for k, w in enumerate(widths))
        lines = [fmt.format(*head)] + [fmt.format(*r) for r in rows]
        obj = f", objective {self.objective}" if self.objective else ""
        lines.append(
            f"method {self.method}{obj}, n = {self.n}: balance (max/ideal) {self.balance:.4f}, "
            f"traffic {self.traffic_bytes_per_sample} B/sample (dominator "
            f"{self.dominator_traffic_bytes_per_sample} B), edge cut {self.edge_cut}")
        for v in self.violations:
            lines.append(f"violation: {v}")
        return "\n".join(lines)
