"""Slice a :class:`~slicenet.graph.CostGraph` into ``n`` pieces (ring 0).

One entry point, :func:`partition`, and a registry of strategies (:data:`STRATEGIES`):

* ``metis`` -- pymetis k-way, edge-cut (the paper) or communication-volume objective (+ exact
  traffic refinement), heterogeneous targets via ``tpwgts``, balance repair
  (:mod:`slicenet.partition.metis`);
* ``layerwise`` -- whole layers / contiguous layer ranges, as in split learning;
* ``random`` -- balanced random;
* ``contiguous`` -- vertices in order, cut into equal-compute ranges.

Every strategy is followed by the same checks: no piece is left empty, and with
``memory_limits`` pieces over their limit are repaired by moving vertices (boundary vertices
first) to pieces with room; what cannot be repaired is reported in ``SlicePlan.violations``.
After a memory repair, METIS plans get one more balance repair that respects the memory limits.

Examples
--------
>>> from slicenet.graph import paper_mlp_description
>>> plan = partition(paper_mlp_description().graph(), 5)
>>> plan.n, plan.balance <= 1.03
(5, True)

References
----------
L. Chen, T. Jung, H. Du, J. Qian, J. Hou, X.-Y. Li, "Crowdlearning: Crowded Deep Learning with
Data Privacy", IEEE SECON 2018.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np

from slicenet.errors import UserError
from slicenet.graph import CostGraph
from slicenet.partition._common import TrafficState, caps, fill_empty, repair_balance, repair_memory
from slicenet.partition.metis import metis_assignment
from slicenet.partition.simple import contiguous_assignment, layerwise_assignment, random_assignment
from slicenet.plan import SlicePlan

__all__ = ["OBJECTIVES", "STRATEGIES", "Strategy", "partition"]

Strategy = Callable[..., np.ndarray]
"""``(graph, n, *, objective, targets, seed, imbalance) -> int64 assignment``; ``targets`` sums to 1."""

STRATEGIES: dict[str, Strategy] = {
    "metis": metis_assignment,
    "layerwise": layerwise_assignment,
    "random": random_assignment,
    "contiguous": contiguous_assignment,
}
OBJECTIVES = ("cut", "volume")


def partition(
    graph: CostGraph,
    n: int,
    *,
    method: str = "metis",
    objective: str = "cut",
    targets: Sequence[float] | None = None,
    memory_limits: Sequence[int] | int | None = None,
    seed: int = 0,
    imbalance: float = 0.03,
) -> SlicePlan:
    """Split the hidden units of ``graph`` into ``n`` pieces.

    Parameters
    ----------
    graph : CostGraph
    n : int
        Number of pieces, ``1 ≤ n ≤ graph.num_vertices``.
    method : str
        A key of :data:`STRATEGIES`: ``"metis"``, ``"layerwise"``, ``"random"``, ``"contiguous"``.
    objective : {"cut", "volume"}
        METIS only: the paper's edge cut, or the communication volume refined on the exact
        weighted-sum traffic.  Ignored (recorded as None) by the other strategies.
    targets : sequence of float, optional
        Relative piece sizes (e.g. device speeds), any positive scale; default equal.
    memory_limits : int or sequence of int, optional
        Bytes available to each piece (one int = the same for all).
    seed : int
        Seeds METIS and every random choice; same seed, same plan.
    imbalance : float
        Allowed compute imbalance for METIS and the balance repair: a piece may reach
        ``(1 + imbalance) · target · total`` (0.03 → the paper's 1.03).

    Returns
    -------
    SlicePlan

    Raises
    ------
    UserError
        ``n < 1``, ``n`` above the vertex count, an unknown method or objective, a model with no
        hidden layer, malformed targets or memory limits.

    Examples
    --------
    >>> from slicenet.graph import paper_mlp_description
    >>> g = paper_mlp_description().graph()
    >>> p = partition(g, 4, method="layerwise")
    >>> p.method, len(p.pieces), p.objective is None
    ('layerwise', 4, True)
    """
    if method not in STRATEGIES:
        raise UserError(
            f"unknown partition method {method!r}; choose one of {', '.join(sorted(STRATEGIES))}")
    if objective not in OBJECTIVES:
        raise UserError(f"unknown objective {objective!r}; choose 'cut' or 'volume'")
    V = graph.num_vertices
    if V == 0:
        raise UserError(
            "the model has no hidden layer, so there is nothing to slice (SliceNet keeps the input "
            "and output layers with the dominator); add a hidden Dense or Conv2D layer")
    if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 1:
        raise UserError(f"the number of pieces must be an integer ≥ 1, got {n!r}")
    n = int(n)
    if n > V:
        hint = (" or a smaller block_size" if graph.granularity == "block" else "")
        raise UserError(
            f"cannot cut {V} vertices into {n} pieces; use at most {V} pieces{hint}")
    if targets is None:
        t = np.full(n, 1.0 / n)
    else:
        t = np.asarray(list(targets), dtype=float)
        if t.shape != (n,) or not np.all(np.isfinite(t)) or np.any(t <= 0):
            raise UserError(
                f"targets must be {n} positive numbers (one relative size per piece), got {list(targets)}")
        t = t / t.sum()
    limits: np.ndarray | None = None
    if memory_limits is not None:
        limits = np.broadcast_to(np.asarray(memory_limits, dtype=np.int64), (n,)).copy() \
            if np.ndim(memory_limits) == 0 else np.asarray(list(memory_limits), dtype=np.int64)
        if limits.shape != (n,) or np.any(limits <= 0):
            raise UserError(
                f"memory_limits must be one positive byte count or {n} of them, got {memory_limits!r}")
    if not imbalance >= 0:
        raise UserError(f"imbalance must be ≥ 0, got {imbalance}")

    a = STRATEGIES[method](graph, n, objective=objective, targets=t, seed=int(seed),
                           imbalance=float(imbalance))
    st = TrafficState(graph, np.asarray(a, dtype=np.int64), n)
    fill_empty(st)
    violations: list[str] = []
    if limits is not None:
        cap = caps(int(graph.compute.sum()), t, imbalance)
        rng = np.random.default_rng(seed + 1)
        violations = repair_memory(st, limits, cap, rng)
        if method == "metis":
            repair_balance(st, cap, rng, limits=limits)
    return SlicePlan.from_assignment(
        graph, st.a, n, method=method, objective=objective if method == "metis" else None,
        targets=t, memory_limits=None if limits is None else limits.tolist(), violations=violations)
