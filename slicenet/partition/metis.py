"""METIS strategy (pymetis, k-way) with exact-traffic refinement and balance repair (ring 0).

* ``objective="cut"`` -- the paper's problem: METIS minimises the edge cut with edge weight =
  multiplicity of the model edge (1 per weight), vertex weight = compute.
* ``objective="volume"`` -- the weighted-sum refinement.  The real traffic is the connectivity−1
  metric of the hypergraph with one net ``{j} ∪ sources(j)`` of weight ``2·units(j)`` per target
  ``j`` (see :func:`slicenet.graph.traffic_per_sample`).  METIS has no hypergraph mode, and pymetis
  2025.2 exposes neither ``vsize`` nor a second constraint, so **[ours]** we run METIS's
  communication-volume objective (``METIS_OBJTYPE_VOL``, k-way, unit ``vsize``; it counts, for every
  vertex, the foreign pieces among its sources *and* targets, a close proxy) and then a greedy
  refinement pass that moves single vertices when that strictly lowers the *exact* traffic while
  keeping every piece under its compute cap.

Both objectives: heterogeneous targets go to METIS as ``tpwgts``; ``ufactor = 1000·imbalance``
(30 → 1.03, the paper's figure); empty parts are filled; pieces still above
``(1 + imbalance)·target`` are repaired by moving the cheapest-in-traffic vertices out.

References
----------
L. Chen, T. Jung, H. Du, J. Qian, J. Hou, X.-Y. Li, "Crowdlearning: Crowded Deep Learning with
Data Privacy", IEEE SECON 2018.
G. Karypis, V. Kumar, "A fast and high quality multilevel scheme for partitioning irregular graphs",
SIAM J. Sci. Comput. 1998 (METIS).
"""

from __future__ import annotations

import numpy as np

from slicenet.graph import CostGraph
from slicenet.partition._common import TrafficState, caps, fill_empty, refine_traffic, repair_balance

__all__ = ["metis_assignment"]


def metis_assignment(graph: CostGraph, n: int, *, objective: str, targets: np.ndarray, seed: int,
                     imbalance: float) -> np.ndarray:
    """Assignment from pymetis, refined (see the module docstring).

    Examples
    --------
    >>> from slicenet.graph import CostGraph, paper_mlp_description
    >>> g = paper_mlp_description().graph()
    >>> a = metis_assignment(g, 5, objective="cut", targets=np.full(5, 0.2), seed=0, imbalance=0.03)
    >>> sorted(set(a.tolist()))
    [0, 1, 2, 3, 4]
    """
    import pymetis

    if n == 1:
        return np.zeros(graph.num_vertices, dtype=np.int64)
    opts = pymetis.Options(ufactor=max(1, int(round(imbalance * 1000))), seed=int(seed) & 0x7FFFFFFF)
    if objective == "volume":
        opts.objtype = int(pymetis.ObjType.VOL)
    uniform = bool(np.allclose(targets, 1.0 / n))
    res = pymetis.part_graph(
        n,
        pymetis.CSRAdjacency(graph.xadj, graph.adjncy),
        vweights=np.maximum(graph.compute, 1),
        eweights=np.maximum(graph.eweights, 1) if graph.num_edges else None,
        tpwgts=None if uniform else [float(t) for t in targets],
        options=opts,
        recursive=False,
    )
    st = TrafficState(graph, np.asarray(res.vertex_part, dtype=np.int64), n)
    rng = np.random.default_rng(seed)
    cap = caps(int(graph.compute.sum()), targets, imbalance)
    fill_empty(st)
    if objective == "volume":
        refine_traffic(st, cap, rng)
    repair_balance(st, cap, rng)
    return st.a
