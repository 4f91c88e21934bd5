"""Flow-level network model: links with bandwidth and latency shared max-min fairly by transfers.

A topology is a directed :class:`networkx.DiGraph` whose edges carry ``bandwidth`` (bytes/s) and
``latency`` (s).  :func:`build_topology` builds the standard shape of the simulator::

    device i  <->  cell c  <->  core  <->  server          (+ optional device i <-> device j)

:class:`Network` runs transfers over such a graph in SimPy time.  A transfer first waits the
path's total propagation latency, then its bytes flow through every link of the path at the rate
that progressive filling (water-filling) gives it: the **max-min fair** allocation of all active
flows.  Rates are recomputed whenever a flow starts or ends, so a busy server downlink or cell
uplink slows everyone on it.

How a start or an end stays cheap with 10,000 concurrent flows
--------------------------------------------------------------
The rates are always the exact max-min rates of the flowing transfers, but a start or an end
touches only what it changes:

* **Groups with a virtual clock.**  The flows crossing a shared link that may hold them (a
  cell's backhaul, say) form that link's *group*: one-link water-filling gives every member
  ``min(own cap, level)``, where its own cap is the smallest bandwidth of its other links.  The
  members at the level share one virtual clock ``V`` (the bytes each of them has received) and a
  heap of finish thresholds ``V_start + bytes``; the members below the level, and flows that
  share nothing (*solo*, at their path's bottleneck), have a fixed rate and a finish time on the
  network's heap.  A start or an end in a group moves its level in O(log F) and leaves every
  member's state alone: nobody's remaining bytes are rewritten, and the group's next finish is
  one heap entry.
* **Checked, not assumed.**  After the instant's changes, every shared link whose load changed
  and that is no group's (the server's link while the backhauls are full) must still have room;
  then each flow has a bottleneck (its group's saturated link or its own cap) and the levels
  are the max-min rates.  If a link overflows, a flow would need two groups, or a level does
  not settle, the flows connected to it get an **exact refill** (progressive filling,
  :func:`max_min_rates`), after which the links that one-link water-filling reproduces exactly
  become groups again and the rest are *pinned* at the refill's rates (any change reaching a
  pinned flow's links refills again).
* Starts and ends at one simulated instant are coalesced: they are applied by one update that
  runs *after* every ordinary event of that instant (scheduled with a priority below SimPy's
  ``NORMAL``).  No simulated time passes between a change and its update, so the rates are
  exact at every instant in which bytes move.
* One SimPy timeout is live for the earliest finish on the heap; flows due within a nanosecond
  of it complete together.

References: D. Bertsekas and R. Gallager, *Data Networks*, 2nd ed., sec. 6.5.2 (max-min fairness
and the progressive filling algorithm).
"""

from __future__ import annotations

import heapq
import math
import operator
from collections import Counter
from collections.abc import Callable, Hashable, Iterable, Iterator, MutableMapping, Sequence
from itertools import pairwise
from typing import Any

import networkx as nx
import numpy as np
import simpy
from simpy.events import Event

__all__ = [
    "Network",
    "NodeBytes",
    "Transfer",
    "CellTree",
    "build_topology",
    "cell_tree",
    "max_min_rates",
]

Node = Hashable  # "server", "core", "cell{c}" or an int device index

# SimPy pops events by (time, priority, insertion id); URGENT = 0 and NORMAL = 1.  An event with
# priority 2 therefore runs after every normal event of the same instant, including those that
# normal events schedule while that instant is processed: the place to coalesce recomputations.
_LATE = 2

# A flow is complete when it is due within this many seconds (plus a few ulps of ``now``): flows
# finishing within a nanosecond of each other complete together instead of each waking SimPy.
_DONE_TOL_S = 1e-9

# Routes kept at most (a round of a big fleet touches a fresh set of devices).
_ROUTE_CACHE = 1 << 16

_PENDING, _FLOWING, _DONE, _CANCELLED = "pending", "flowing", "done", "cancelled"

_NORMAL = 1     # simpy.events.NORMAL
_SIMPY_SCHEDULE = simpy.Environment.schedule
_new_event = object.__new__
_BY_SEQ = operator.attrgetter("_seq")

# Where a flowing transfer sits in the rate model (Transfer._mode): started at this instant and not
# placed yet; placed nowhere (in the middle of a move); on its links without a rate (its start
# needs the exact refill of this instant); at its group's level; at its own cap inside its group;
# alone at its path's bottleneck; pinned at a rate an exact refill gave it.  The last four are
# fixed-rate modes (>= _CAPD) except _UNC.
_WAIT, _NEW, _LOST, _UNC, _CAPD, _SOLO, _PIN = range(7)


# ---------------------------------------------------------------------------------- topology
def _per_device(name: str, value: Any, n: int, *, allow_zero: bool) -> np.ndarray:
    arr = np.asarray(value, dtype=float)
    if arr.ndim == 0:
        arr = np.full(n, float(arr))
    elif arr.shape != (n,):
        raise ValueError(f"{name} must be a scalar or have one value per item ({n}); "
                         f"got shape {arr.shape}")
    _check_values(name, arr, allow_zero=allow_zero)
    return arr


def _check_values(name: str, arr: np.ndarray, *, allow_zero: bool) -> None:
    bad = ~np.isfinite(arr) | ((arr < 0) if allow_zero else (arr <= 0))
    if bad.any():
        i = int(np.flatnonzero(bad)[0])
        what = "a finite number >= 0" if allow_zero else "a finite number > 0"
        where = f"{name}[{i}]" if arr.ndim else name
        raise ValueError(f"{where} must be {what}; got {arr.flat[i]!r}")


def build_topology(
    num_devices: int,
    *,
    device_up_bps: Sequence[float] | np.ndarray | float,
    device_down_bps: Sequence[float] | np.ndarray | float,
    device_latency_s: Sequence[float] | np.ndarray | float,
    cells: int = 1,
    cell_of: Sequence[int] | np.ndarray | None = None,
    backhaul_bps: float = 1.25e9,
    backhaul_latency_s: float = 0.005,
    server_bps: float = 1.25e9,
    server_latency_s: float = 0.001,
    server_down_bps: float | None = None,
    d2d_pairs: Iterable[tuple[int, int]] = (),
    d2d_bps: Sequence[float] | np.ndarray | float = 6.25e6,
    d2d_latency_s: Sequence[float] | np.ndarray | float = 0.002,
) -> nx.DiGraph:
    """Build the standard device / cell / core / server topology.

    Nodes are ``"server"``, ``"core"``, ``"cell0"`` ... ``"cell{cells-1}"`` and the devices, which
    are the **ints** ``0 .. num_devices-1`` (cheaper to hash and compare than strings, and the
    same ids the fleet uses).  Every link exists in both directions, each direction with its own
    ``bandwidth`` (bytes/s) and ``latency`` (s) edge attributes:

    ============================  =======================  ======================
    edge                          bandwidth                latency
    ============================  =======================  ======================
    device i -> its cell          ``device_up_bps[i]``     ``device_latency_s[i]``
    cell -> device i              ``device_down_bps[i]``   ``device_latency_s[i]``
    cell <-> core                 ``backhaul_bps``         ``backhaul_latency_s``
    server -> core                ``server_bps``           ``server_latency_s``
    core -> server                ``server_down_bps``      ``server_latency_s``
    device i <-> device j (d2d)   ``d2d_bps[k]``           ``d2d_latency_s[k]``
    ============================  =======================  ======================

    Parameters
    ----------
    num_devices
        Number of devices (>= 0).
    device_up_bps, device_down_bps, device_latency_s
        Per-device access uplink and downlink bandwidth (bytes/s) and one-way latency (s):
        sequences or numpy arrays of length ``num_devices``, or one scalar for every device.
    cells
        Number of cells (access points / base stations), >= 1.
    cell_of
        Cell index of every device; by default device ``i`` is in cell ``i % cells``.
    backhaul_bps, backhaul_latency_s
        Each cell's link to the core, per direction.
    server_bps, server_latency_s
        The server's link to the core, per direction (its up- and downlink).
    server_down_bps
        The server's downlink (core -> server) when it differs from its uplink; ``None``
        (default) = ``server_bps``.
    d2d_pairs
        Device pairs ``(i, j)`` joined by a direct device-to-device link (both directions).
    d2d_bps, d2d_latency_s
        Bandwidth and latency of the direct links: one scalar or one value per pair.  The
        defaults (50 Mbit/s, 2 ms) are ours, a modest Wi-Fi Direct link.

    Returns
    -------
    networkx.DiGraph
        Nodes carry ``kind`` (``"server" | "core" | "cell" | "device"``); devices also carry
        ``cell``.  ``graph.graph["topology"] == "cell_tree"`` tells :class:`Network` it may route
        along the tree without searching; remove that tag if you add edges of another shape.

    Raises
    ------
    ValueError
        A bandwidth that is not finite and > 0, a latency that is not finite and >= 0, a
        sequence of the wrong length, a cell index out of range or a bad d2d pair; the message
        names the argument, the index and the value.

    Examples
    --------
    >>> g = build_topology(4, device_up_bps=1e6, device_down_bps=[4e6, 4e6, 2e6, 2e6],
    ...                    device_latency_s=0.02, cells=2, d2d_pairs=[(0, 2)])
    >>> g.nodes[3]["cell"], g.edges[2, "cell0"]["bandwidth"], g.edges["cell0", 2]["bandwidth"]
    (1, 1000000.0, 2000000.0)
    >>> g.has_edge(2, 0)
    True
    """
    # the same topology as cell_tree (one validation, one construction), as a networkx graph
    return cell_tree(
        num_devices, device_up_bps=device_up_bps, device_down_bps=device_down_bps,
        device_latency_s=device_latency_s, cells=cells, cell_of=cell_of,
        backhaul_bps=backhaul_bps, backhaul_latency_s=backhaul_latency_s, server_bps=server_bps,
        server_latency_s=server_latency_s, server_down_bps=server_down_bps, d2d_pairs=d2d_pairs,
        d2d_bps=d2d_bps, d2d_latency_s=d2d_latency_s).graph


def cell_tree(
    num_devices: int,
    *,
    device_up_bps: Sequence[float] | np.ndarray | float,
    device_down_bps: Sequence[float] | np.ndarray | float,
    device_latency_s: Sequence[float] | np.ndarray | float,
    cells: int = 1,
    cell_of: Sequence[int] | np.ndarray | None = None,
    backhaul_bps: float = 1.25e9,
    backhaul_latency_s: float = 0.005,
    server_bps: float = 1.25e9,
    server_latency_s: float = 0.001,
    server_down_bps: float | None = None,
    d2d_pairs: Iterable[tuple[int, int]] = (),
    d2d_bps: Sequence[float] | np.ndarray | float = 6.25e6,
    d2d_latency_s: Sequence[float] | np.ndarray | float = 0.002,
) -> CellTree:
    """The topology of :func:`build_topology` held as arrays, without a networkx graph.

    Same arguments, same checks and the same links as :func:`build_topology`; a
    :class:`Network` built on it routes and prices transfers exactly as on the graph, but the
    fleet costs a few arrays instead of two networkx nodes and four edge dictionaries per device
    (a million devices: ~50 MB instead of gigabytes, and milliseconds instead of a minute to
    build).  ``cell_tree(...).graph`` builds the networkx graph when someone asks for it.

    Examples
    --------
    >>> t = cell_tree(4, device_up_bps=1e6, device_down_bps=[4e6, 4e6, 2e6, 2e6],
    ...               device_latency_s=0.02, cells=2)
    >>> t.num_devices, t.cell_of.tolist(), t.graph.edges["cell0", 2]["bandwidth"]
    (4, [0, 1, 0, 1], 2000000.0)
    """
    num_devices = operator.index(num_devices)
    if num_devices < 0:
        raise ValueError(f"num_devices must be >= 0; got {num_devices}")
    cells = operator.index(cells)
    if cells < 1:
        raise ValueError(f"cells must be >= 1; got {cells}")
    up = _per_device("device_up_bps", device_up_bps, num_devices, allow_zero=False)
    down = _per_device("device_down_bps", device_down_bps, num_devices, allow_zero=False)
    lat = _per_device("device_latency_s", device_latency_s, num_devices, allow_zero=True)
    for name, value, allow_zero in [("backhaul_bps", backhaul_bps, False),
                                    ("backhaul_latency_s", backhaul_latency_s, True),
                                    ("server_bps", server_bps, False),
                                    ("server_latency_s", server_latency_s, True),
                                    ("server_down_bps", server_bps if server_down_bps is None
                                     else server_down_bps, False)]:
        _check_values(name, np.asarray(value, dtype=float), allow_zero=allow_zero)
    if cell_of is None:
        cell_idx = np.arange(num_devices, dtype=np.intp) % cells
    else:
        arr = np.asarray(cell_of)
        if arr.shape != (num_devices,):
            raise ValueError(f"cell_of must have one cell index per device ({num_devices}); "
                             f"got shape {arr.shape}")
        if arr.size and not np.issubdtype(arr.dtype, np.integer):
            raise ValueError(f"cell_of must hold integer cell indices; got dtype {arr.dtype}")
        bad = (arr < 0) | (arr >= cells)
        if bad.any():
            i = int(np.flatnonzero(bad)[0])
            raise ValueError(f"cell_of[{i}] must be in [0, {cells}); got {arr[i]}")
        cell_idx = arr.astype(np.intp)
    pairs = [tuple(p) for p in d2d_pairs]
    for k, p in enumerate(pairs):
        if (len(p) != 2 or not all(isinstance(x, (int, np.integer)) for x in p)
                or not all(0 <= x < num_devices for x in p) or p[0] == p[1]):
            raise ValueError(f"d2d_pairs[{k}] must be two distinct device indices in "
                             f"[0, {num_devices}); got {p!r}")
    d2d_b = _per_device("d2d_bps", d2d_bps, len(pairs), allow_zero=False)
    d2d_l = _per_device("d2d_latency_s", d2d_latency_s, len(pairs), allow_zero=True)

    return CellTree(num_devices=num_devices, cells=cells, cell_of=cell_idx, up=up, down=down,
                    latency=lat, backhaul_bps=float(backhaul_bps),
                    backhaul_latency_s=float(backhaul_latency_s), server_bps=float(server_bps),
                    server_down_bps=float(server_bps if server_down_bps is None
                                          else server_down_bps),
                    server_latency_s=float(server_latency_s), d2d_pairs=pairs, d2d_bps=d2d_b,
                    d2d_latency_s=d2d_l)


class CellTree:
    """A device / cell / core / server topology as arrays (made by :func:`cell_tree`).

    Link numbering (what :class:`Network` indexes its arrays by): 0 = core → server,
    1 = server → core, ``2 + 2c`` = cell c → core, ``3 + 2c`` = core → cell c, then
    ``B + 2i`` = device i → its cell and ``B + 2i + 1`` = its cell → device i with
    ``B = 2 + 2·cells``, then the d2d links (``i → j`` and ``j → i`` per pair).

    Attributes
    ----------
    graph : networkx.DiGraph
        The same graph :func:`build_topology` returns, built on first access and kept.
    """

    def __init__(self, *, num_devices, cells, cell_of, up, down, latency, backhaul_bps,
                 backhaul_latency_s, server_bps, server_down_bps, server_latency_s, d2d_pairs,
                 d2d_bps, d2d_latency_s):
        self.num_devices, self.cells = num_devices, cells
        self.cell_of, self.up, self.down, self.latency = cell_of, up, down, latency
        self.backhaul_bps, self.backhaul_latency_s = backhaul_bps, backhaul_latency_s
        self.server_bps, self.server_down_bps = server_bps, server_down_bps
        self.server_latency_s = server_latency_s
        self.d2d_pairs = [(int(i), int(j)) for i, j in d2d_pairs]
        first = 2 + 2 * cells + 2 * num_devices
        self._d2d_link = {}
        for k, (i, j) in enumerate(self.d2d_pairs):
            self._d2d_link[(i, j)] = first + 2 * k
            self._d2d_link[(j, i)] = first + 2 * k + 1
        self.d2d_bps, self.d2d_latency_s = d2d_bps, d2d_latency_s
        self._graph: nx.DiGraph | None = None

    @property
    def first_device_link(self) -> int:
        return 2 + 2 * self.cells

    @property
    def num_links(self) -> int:
        return self.first_device_link + 2 * self.num_devices + 2 * len(self.d2d_pairs)

    def link_arrays(self) -> tuple[np.ndarray, np.ndarray]:
        """``(bandwidth, latency)`` of every link, in the numbering above."""
        cap, lat = np.empty(self.num_links), np.empty(self.num_links)
        cap[:2] = self.server_down_bps, self.server_bps
        lat[:2] = self.server_latency_s
        b, n = self.first_device_link, self.num_devices
        cap[2:b], lat[2:b] = self.backhaul_bps, self.backhaul_latency_s
        cap[b:b + 2 * n:2], cap[b + 1:b + 2 * n:2] = self.up, self.down
        lat[b:b + 2 * n:2] = lat[b + 1:b + 2 * n:2] = self.latency
        k = b + 2 * n
        cap[k::2] = cap[k + 1::2] = self.d2d_bps
        lat[k::2] = lat[k + 1::2] = self.d2d_latency_s
        return cap, lat

    def is_device(self, node: Node) -> bool:
        return (isinstance(node, (int, np.integer)) and not isinstance(node, bool)
                and 0 <= node < self.num_devices)

    def cell_index(self, node: Node) -> int | None:
        """``c`` for the node ``"cell{c}"``, else None."""
        if isinstance(node, str) and node.startswith("cell") and node[4:].isdigit():
            c = int(node[4:])
            if c < self.cells and node == f"cell{c}":
                return c
        return None

    def has_node(self, node: Node) -> bool:
        return node in ("server", "core") or self.is_device(node) \
            or self.cell_index(node) is not None

    def parent(self, node: Node) -> Node | None:
        """The next node towards the server on the tree (None for the server)."""
        if self.is_device(node):
            return f"cell{self.cell_of[node]}"
        if node == "core":
            return "server"
        if self.cell_index(node) is not None:
            return "core"
        return None

    def path_latency(self, src: Node, dst: Node) -> float:
        """Latency (s) of the tree path between two nodes, summed from ``src`` as
        :func:`networkx.shortest_path_length` with ``weight="latency"`` sums it; only for a tree
        without d2d links (a d2d link may give a shorter path: ask :attr:`graph`).

        >>> t = cell_tree(2, device_up_bps=1e6, device_down_bps=1e6, device_latency_s=[0.02, 0.03],
        ...               cells=2, backhaul_latency_s=0.005, server_latency_s=0.001)
        >>> round(t.path_latency(0, "server"), 9), round(t.path_latency(0, 1), 9)
        (0.026, 0.06)
        """
        if self.d2d_pairs:
            raise ValueError("path_latency on a cell tree with d2d links: use "
                             "networkx on .graph (a d2d link may give a shorter path)")
        for node in (src, dst):
            if not self.has_node(node):
                raise ValueError(f"node {node!r} is not in the topology")

        def up(node):   # (node, latency of its link to its parent) up to the server
            chain = []
            while node != "server":
                parent = self.parent(node)
                if self.is_device(node):
                    chain.append((node, float(self.latency[node])))
                elif parent == "core":
                    chain.append((node, self.backhaul_latency_s))
                else:
                    chain.append((node, self.server_latency_s))
                node = parent
            chain.append(("server", 0.0))
            return chain

        a, b = up(src), up(dst)
        on_b = {node: k for k, (node, _) in enumerate(b)}
        total = 0.0
        for node, lat in a:
            if node in on_b:
                for _, lat_b in reversed(b[:on_b[node]]):
                    total += lat_b
                return total
            total += lat
        raise AssertionError("a tree path always meets at the server")

    def link(self, u: Node, v: Node) -> int | None:
        """The index of link ``(u, v)``, or None if there is none."""
        if u == "core" and v == "server":
            return 0
        if u == "server" and v == "core":
            return 1
        b = self.first_device_link
        cu, cv = self.cell_index(u), self.cell_index(v)
        if cu is not None and v == "core":
            return 2 + 2 * cu
        if u == "core" and cv is not None:
            return 3 + 2 * cv
        if self.is_device(u) and cv is not None and self.cell_of[u] == cv:
            return b + 2 * int(u)
        if cu is not None and self.is_device(v) and self.cell_of[v] == cu:
            return b + 2 * int(v) + 1
        if self.is_device(u) and self.is_device(v):
            return self._d2d_link.get((int(u), int(v)))
        return None

    def edge(self, k: int) -> tuple[Node, Node]:
        """The ``(u, v)`` of link ``k`` (the inverse of :meth:`link`)."""
        if k < 2:
            return (("core", "server"), ("server", "core"))[k]
        b = self.first_device_link
        if k < b:
            c = f"cell{(k - 2) // 2}"
            return (c, "core") if k % 2 == 0 else ("core", c)
        k -= b
        if k < 2 * self.num_devices:
            i = k // 2
            c = f"cell{self.cell_of[i]}"
            return (i, c) if k % 2 == 0 else (c, i)
        i, j = self.d2d_pairs[(k - 2 * self.num_devices) // 2]
        return (i, j) if k % 2 == 0 else (j, i)

    @property
    def graph(self) -> nx.DiGraph:
        if self._graph is None:
            self._graph = self._build_graph()
        return self._graph

    def _build_graph(self) -> nx.DiGraph:
        cells, num_devices, pairs = self.cells, self.num_devices, self.d2d_pairs
        bh, bhl = self.backhaul_bps, self.backhaul_latency_s
        sv, svl, sv_down = self.server_bps, self.server_latency_s, self.server_down_bps
        up, down, lat = self.up.tolist(), self.down.tolist(), self.latency.tolist()
        cell_idx = self.cell_of.tolist()
        d2d_b, d2d_l = self.d2d_bps.tolist(), self.d2d_latency_s.tolist()
        g = nx.DiGraph(topology="cell_tree", cells=cells)
        g.add_node("server", kind="server")
        g.add_node("core", kind="core")
        g.add_edge("core", "server", bandwidth=sv_down, latency=svl)
        g.add_edge("server", "core", bandwidth=sv, latency=svl)
        for c in range(cells):
            name = f"cell{c}"
            g.add_node(name, kind="cell")
            g.add_edge(name, "core", bandwidth=bh, latency=bhl)
            g.add_edge("core", name, bandwidth=bh, latency=bhl)
        for i in range(num_devices):
            cell = f"cell{cell_idx[i]}"
            g.add_node(i, kind="device", cell=cell_idx[i])
            g.add_edge(i, cell, bandwidth=up[i], latency=lat[i])
            g.add_edge(cell, i, bandwidth=down[i], latency=lat[i])
        for (i, j), b, lt in zip(pairs, d2d_b, d2d_l, strict=True):
            i, j = int(i), int(j)
            g.add_edge(i, j, bandwidth=b, latency=lt)
            g.add_edge(j, i, bandwidth=b, latency=lt)
        return g


# ---------------------------------------------------------------------------------- max-min
def _progressive_filling(lk: np.ndarray, cap: np.ndarray) -> np.ndarray:
    """Max-min fair rates of ``lk.shape[1]`` flows.

    ``lk`` is ``(P, F)``: column f lists flow f's link indices, padded with ``len(cap) - 1``,
    whose capacity must be ``inf``.  (Flows are columns so that per-flow reductions run along
    axis 0, which numpy vectorises well; along a short axis 1 it loops row by row.)
    """
    n_links = cap.shape[0]
    pad = n_links - 1
    cnt = np.bincount(lk.ravel(), minlength=n_links)
    cnt[pad] = 0
    # A link crossed by one flow only is a fixed cap of that flow (usually its access link).
    cap_flow = np.where(cnt == 1, cap, np.inf)[lk].min(axis=0, initial=np.inf)
    # Shared links are renumbered 0..k-1; k is the new padding, with capacity inf.
    shared = cnt >= 2
    k = int(np.count_nonzero(shared))
    renum = np.full(n_links, k, dtype=np.intp)
    renum[shared] = np.arange(k)
    sub = renum[lk]
    used_rows = (sub != k).any(axis=1)
    if not used_rows.all():
        sub = np.compress(used_rows, sub, axis=0)
    rc = np.append(cap[shared], np.inf)
    rate = np.empty(lk.shape[1])
    idx = np.arange(lk.shape[1])
    share = np.empty(k + 1)
    while idx.size:
        # Unfrozen flows all rise at one level; link l would fill at level rc_l / cnt_l.
        cnt = np.bincount(sub.ravel(), minlength=k + 1)
        cnt[k] = 0
        share.fill(np.inf)
        np.divide(rc, cnt, out=share, where=cnt > 0)
        level = share[sub]
        lowest = level.min(axis=0, initial=np.inf)  # each flow's tightest link
        # Levels only rise as flows freeze, so an event nothing nearby can pre-empt happens as
        # in progressive filling, whatever happens elsewhere first.  Freeze, in one step:
        # * every flow whose own cap is at or below all its links' levels, at its cap;
        # * every flow on a link that is the tightest link of all the flows crossing it, none
        #   of which is capped below it, at that link's level.
        capped = cap_flow <= lowest
        off = (level > lowest * (1.0 + 1e-12)) | capped
        ripe = np.bincount(sub[off], minlength=k + 1) == 0
        ripe[k] = False
        freeze = capped | ripe[sub].any(axis=0)
        r = np.where(capped, cap_flow, lowest)[freeze]
        fr = np.compress(freeze, sub, axis=1)  # much faster than sub[:, freeze]
        rc -= np.bincount(fr.ravel(), weights=np.tile(r, fr.shape[0]), minlength=k + 1)
        rc[k] = np.inf
        rate[idx[freeze]] = r
        keep = ~freeze
        idx = idx[keep]
        sub = np.compress(keep, sub, axis=1)
        cap_flow = cap_flow[keep]
    return rate


def _compact_links(rows: list[list[int]], links: list[int]) -> np.ndarray:
    """The ``(P, F)`` matrix of :func:`_progressive_filling` for flows whose link ids are
    ``rows``: each id replaced by its position in the sorted ``links`` (which hold every one),
    short rows padded with ``len(links)``.

    >>> _compact_links([[7, 2], [2]], [2, 7]).tolist()
    [[1, 0], [0, 2]]
    """
    width = max(map(len, rows))
    pad = len(links)
    if all(len(r) == width for r in rows):      # one route shape (a tree's device <-> server)
        ids = np.array(rows, dtype=np.intp)
        return np.ascontiguousarray(np.searchsorted(np.array(links, dtype=np.intp), ids).T)
    cid = {link: k for k, link in enumerate(links)}
    lk = np.full((width, len(rows)), pad, dtype=np.intp)
    for f, ids in enumerate(rows):
        lk[:len(ids), f] = [cid[link] for link in ids]
    return lk


def max_min_rates(flow_links: np.ndarray | Sequence[Sequence[int]],
                  capacity: np.ndarray | Sequence[float]) -> np.ndarray:
    """Max-min fair rates of flows over links, by progressive filling.

    Every flow's rate rises at the same pace; when a link is full, the flows crossing it freeze
    at their current rate and the others keep rising.  The result is the unique allocation in
    which every flow crosses a *bottleneck*: a saturated link on which no flow gets more.

    Parameters
    ----------
    flow_links
        ``(F, P)`` integer array: row f lists the link indices of flow f's path, padded with
        ``-1``.  A link must not appear twice in one row.
    capacity
        ``(L,)`` link capacities (> 0).

    Returns
    -------
    numpy.ndarray
        ``(F,)`` rates; a flow that crosses no link gets ``inf``.

    Examples
    --------
    Two flows capped by their own links at 1 and 10 share a link of 6 (link 2):

    >>> max_min_rates([[0, 2], [1, 2]], [1.0, 10.0, 6.0]).tolist()
    [1.0, 5.0]
    """
    cap = np.asarray(capacity, dtype=float)
    if cap.ndim != 1:
        raise ValueError(f"capacity must be one-dimensional; got shape {cap.shape}")
    _check_values("capacity", cap, allow_zero=False)
    links = np.asarray(flow_links, dtype=np.intp)
    if links.ndim != 2:
        links = links.reshape(len(links), -1) if links.size else links.reshape(len(links), 0)
    if links.size and (links.max() >= cap.size or links.min() < -1):
        raise ValueError(f"flow_links must hold link indices in [-1, {cap.size}); "
                         f"got range [{links.min()}, {links.max()}]")
    lk = np.where(links < 0, cap.size, links).T
    with np.errstate(invalid="ignore"):
        return _progressive_filling(lk, np.append(cap, np.inf))


def _water_level(capacity: float, caps: Iterable[float]) -> float:
    """The level of one link of ``capacity`` shared max-min fairly by flows held by their own
    ``caps`` elsewhere: flows whose cap is below it get their cap, the others the level
    (``inf`` if every cap fits).

    >>> _water_level(6.0, [1.0, 10.0]), _water_level(6.0, [1.0, 2.0])
    (5.0, inf)
    """
    caps = sorted(caps)
    used, n = 0.0, len(caps)
    for i, c in enumerate(caps):
        level = (capacity - used) / (n - i)
        if c >= level:
            return level
        used += c
    return math.inf


class _Group:
    """The flows crossing one shared link, which is the only link that may hold them below
    their own caps: a water level and a virtual clock (Network's docstring)."""

    __slots__ = ("link", "cap", "gid", "members", "unc", "capd", "thr", "n_unc", "n_cap",
                 "s_cap", "lam", "V", "t", "touch", "multi", "ver")

    def __init__(self, link: int, cap: float, now: float, gid: int):
        self.link, self.cap, self.gid = link, cap, gid
        self.members: dict[Transfer, None] = {}
        self.unc: list = []     # heap (own cap, seq, token, flow) of the members at the level
        self.capd: list = []    # heap (-own cap, seq, token, flow) of those at their own cap
        self.thr: list = []     # heap (finish threshold, seq, token, flow), at the level
        self.n_unc = self.n_cap = 0
        self.s_cap = 0.0        # sum of the capped members' rates
        self.lam = math.inf     # the level: the rate of every member at the level
        self.V = 0.0            # virtual time: bytes each member at the level got, up to t
        self.t = now
        self.touch: dict[int, int] = {}    # other link -> members at the level crossing it
        self.multi: dict[int, None] = {}   # those of the touched links that are shared
        self.ver = 0


class NodeBytes(MutableMapping):
    """Bytes per node, a :class:`collections.Counter` look-alike (missing nodes read as 0) that
    keeps the devices ``0 .. n-1`` of a :class:`CellTree` in one numpy column instead of a
    dictionary entry each (a million devices: 8 MB, allocated by the OS page by page as devices
    send).  Only nodes with a non-zero count are listed.

    >>> b = NodeBytes(3)
    >>> b[1] += 5; b["server"] += 7
    >>> dict(b), b[2], b == {1: 5, "server": 7}
    ({1: 5, 'server': 7}, 0, True)
    """

    def __init__(self, devices: int = 0):
        self._dev = np.zeros(devices, dtype=np.int64)
        self._n = devices
        self._other: dict[Node, int] = {}

    def _row(self, node: Node) -> int | None:
        if type(node) is int or (isinstance(node, (int, np.integer))
                                 and not isinstance(node, bool)):
            if 0 <= node < self._n:
                return int(node)
        return None

    def __getitem__(self, node: Node) -> int:
        i = self._row(node)
        return int(self._dev[i]) if i is not None else self._other.get(node, 0)

    def __setitem__(self, node: Node, value: int) -> None:
        i = self._row(node)
        if i is not None:
            self._dev[i] = value
        elif value:
            self._other[node] = value
        else:
            self._other.pop(node, None)

    def __delitem__(self, node: Node) -> None:
        self[node] = 0

    def add(self, node: Node, n: int) -> None:
        """``self[node] += n`` (a device's count by one numpy update)."""
        if type(node) is int and 0 <= node < self._n:
            self._dev[node] += n
        elif type(node) is str or self._row(node) is None:    # the server, a cell, ...
            other = self._other
            value = other.get(node, 0) + n
            if value:
                other[node] = value
            else:
                other.pop(node, None)
        else:
            self[node] = self[node] + n

    def __iter__(self) -> Iterator[Node]:
        yield from np.flatnonzero(self._dev).tolist()
        yield from self._other

    def __len__(self) -> int:
        return int(np.count_nonzero(self._dev)) + len(self._other)

    def __repr__(self) -> str:
        return f"NodeBytes({dict(self)!r})"


# ---------------------------------------------------------------------------------- transfers
class _Route:
    __slots__ = ("path", "latency", "bottleneck", "ids", "caps", "_ocap")

    def __init__(self, path, latency, bottleneck, caps, ids):
        self.path = path              # tuple of nodes
        self.latency = latency        # sum of edge latencies (s)
        self.bottleneck = bottleneck  # min edge bandwidth (bytes/s)
        self.ids = ids                # link indices, a list of ints (per-event code)
        self.caps = caps              # their bandwidths, a list of floats
        self._ocap = None

    @property
    def ocap(self) -> dict[int, float]:
        """Link -> the smallest bandwidth of the route's other links: a flow's own cap in a
        group on that link (the same ``min`` of the same floats, once per route instead of
        once per join; made on first use, so that routes used by no group cost nothing)."""
        oc = self._ocap
        if oc is None:
            ids, caps = self.ids, self.caps
            oc = self._ocap = {k: min((c for j, c in zip(ids, caps, strict=True) if j != k),
                                      default=math.inf) for k in ids}
        return oc

    @property
    def links(self) -> np.ndarray:
        """The link indices as an array (intp)."""
        return np.array(self.ids, dtype=np.intp)


class Transfer:
    """One message crossing the network; made by :meth:`Network.transfer`, never directly.

    Attributes
    ----------
    src, dst, nbytes
        Endpoints and size in bytes.
    path
        Tuple of the nodes crossed, ``src`` first.
    done
        SimPy event that succeeds with this transfer when its last byte arrives.  It is
        **never triggered** for a cancelled transfer: wait on ``done | something_else`` or use
        ``done.callbacks`` if the transfer may be cancelled.  Made on first access (a
        transfer whose ``done`` nobody reads holds no event: see :meth:`on_done`).
    start_time
        When :meth:`Network.transfer` was called.
    end_time
        When the transfer completed or was cancelled; ``None`` while it runs.
    cancelled
        ``True`` once :meth:`cancel` took effect.

    Examples
    --------
    >>> import simpy
    >>> env = simpy.Environment()
    >>> net = Network(env, build_topology(1, device_up_bps=1e6, device_down_bps=1e6,
    ...                                   device_latency_s=0.01))
    >>> t = net.transfer(0, "server", 500_000)
    >>> _ = env.run(t.done)
    >>> round(t.end_time - t.start_time, 6)      # 0.016 s latency + 0.5 s at 1 MB/s
    0.516
    """

    __slots__ = ("src", "dst", "nbytes", "path", "_done", "start_time", "end_time", "_net",
                 "_route", "_state", "_seq", "_delivered", "_mode", "_grp", "_tok", "_ocap",
                 "_r", "_rem0", "_t0", "_thr", "_on_done")

    def __init__(self, net: Network, src: Node, dst: Node, nbytes: int, route: _Route,
                 seq: int):
        self._net = net
        self.src = src
        self.dst = dst
        self.nbytes = nbytes
        self.path = route.path
        self._route = route
        # A done event holds the transfer as its value and the transfer holds it: a reference
        # cycle that outlives the young generations.  So it is made only when someone reads
        # ``done``; the driver uses on_done(), whose event does not point back (a finished
        # transfer is then freed by reference counting).
        self._done: Event | None = None
        self._on_done: Callable[[Event], None] | None = None
        self.start_time = net.env.now
        self.end_time: float | None = None
        self._state = _PENDING
        self._seq = seq
        self._delivered = 0.0
        # placement in the network's rate model (see Network): mode, group, heap-entry token,
        # own cap, fixed rate with (bytes left, at time) or the finish threshold in the group's
        # virtual time
        self._mode = _NEW
        self._grp: _Group | None = None
        self._tok = 0
        self._ocap = math.inf
        self._r = 0.0
        self._rem0 = float(nbytes)
        self._t0 = 0.0
        self._thr = 0.0

    @property
    def done(self) -> Event:
        ev = self._done
        if ev is None:
            ev = self._done = Event(self._net.env)
            if self._state == _DONE:       # finished before anyone asked: already processed
                ev._ok, ev._value, ev.callbacks = True, self, None
        return ev

    def on_done(self, callback: Callable[[Event], None]) -> None:
        """Call ``callback(event)`` when the last byte arrives (never if cancelled), at the point
        of the event queue where ``done``'s callbacks would run, without making ``done``: the
        transfer and the event then form no reference cycle.  One callback per transfer."""
        if self._on_done is not None:
            raise RuntimeError(f"{self!r} already has an on_done callback")
        if self._state == _DONE or self._state == _CANCELLED:
            raise RuntimeError(f"{self!r} has already ended")
        self._on_done = callback

    @property
    def cancelled(self) -> bool:
        """Whether the transfer was cancelled (its ``done`` will never fire)."""
        return self._state == _CANCELLED

    @property
    def completed(self) -> bool:
        """Whether every byte arrived (``done`` has been triggered)."""
        return self._state == _DONE

    @property
    def state(self) -> str:
        """``"pending"`` (in propagation), ``"flowing"``, ``"done"`` or ``"cancelled"``."""
        return self._state

    @property
    def latency(self) -> float:
        """Propagation latency of the path (s), paid before the first byte flows."""
        return self._route.latency

    @property
    def rate(self) -> float:
        """Current rate in bytes/s (0 unless flowing).  A flow that started at this very
        instant shows 0 until the instant's coalesced recomputation has run."""
        if self._state != _FLOWING:
            return 0.0
        return self._grp.lam if self._mode == _UNC else self._r

    @property
    def delivered(self) -> float:
        """Bytes delivered so far (fractional in this fluid model)."""
        if self._state == _FLOWING:
            left = self._net._left(self, self._net.env.now)
            return float(min(self.nbytes, max(0.0, self.nbytes - left)))
        return self._delivered

    def cancel(self) -> bool:
        """Abort the transfer; same as ``network.cancel(self)``."""
        return self._net.cancel(self)

    def __repr__(self) -> str:
        return (f"Transfer({self.src!r} -> {self.dst!r}, {self.nbytes} B, {self._state}, "
                f"start={self.start_time:g})")


class Network:
    """Transfers over a topology in SimPy time, sharing links max-min fairly.

    Parameters
    ----------
    env
        The SimPy environment.
    graph
        A directed graph whose edges all have ``bandwidth`` (bytes/s, finite, > 0) and
        ``latency`` (s, finite, >= 0), e.g. from :func:`build_topology`.  The network takes a
        snapshot of the edges: change the graph afterwards and build a new ``Network``.

    Notes
    -----
    * Routes are shortest paths by hop count, computed once per ``(src, dst)`` and cached.  On a
      ``"cell_tree"`` graph the tree route is built directly; pairs that d2d links could shorten
      (a device with d2d links talking to another device or a cell), and graphs of any other
      shape, use :func:`networkx.shortest_path`.
    * A transfer waits its path latency, then flows.  Zero-byte transfers complete after the
      latency alone.  ``src == dst`` is rejected.
    * Starts and ends are coalesced per instant: the rates are recomputed once, after every
      other event of that instant, so :attr:`Transfer.rate` of a flow that began at this very
      instant reads 0 until then (no simulated time passes in between).
    * :meth:`cancel` and :meth:`cancel_all` remove flows at once and speed the others up.  A
      cancelled transfer's ``done`` is **never triggered** (``cancelled`` becomes true), so a
      process that may see its transfer cancelled should wait on ``done | other_event`` or
      attach ``done.callbacks`` rather than ``yield done`` alone.
    * Accounting: ``bytes_sent[node]`` / ``bytes_received[node]`` count the bytes of
      **completed** transfers by source and destination; ``bytes_partial_sent`` /
      ``bytes_partial_received`` count the (floored) bytes that cancelled transfers had already
      delivered; :attr:`bytes_on_link` counts what crossed each link, completed plus partial.
      All are :class:`NodeBytes` mappings (missing keys read as 0, like a Counter).

    Examples
    --------
    Two devices upload to the server through one cell whose backhaul (3 MB/s) is the shared
    bottleneck; each gets 1.5 MB/s:

    >>> import simpy
    >>> env = simpy.Environment()
    >>> g = build_topology(2, device_up_bps=2e6, device_down_bps=2e6, device_latency_s=0.0,
    ...                    backhaul_bps=3e6, backhaul_latency_s=0.0, server_latency_s=0.0)
    >>> net = Network(env, g)
    >>> a, b = net.transfer(0, "server", 3_000_000), net.transfer(1, "server", 3_000_000)
    >>> _ = env.run(a.done & b.done)
    >>> a.end_time, b.end_time, net.bytes_received["server"]
    (2.0, 2.0, 6000000)
    >>> net.path(0, "server")
    [0, 'cell0', 'core', 'server']
    """

    def __init__(self, env: simpy.Environment, graph: nx.DiGraph | CellTree):
        self.env = env
        # events go straight on SimPy's heap when its schedule is SimPy's own (see _post)
        self._own_schedule = getattr(type(env), "schedule", None) is _SIMPY_SCHEDULE and \
            hasattr(env, "_queue") and hasattr(env, "_eid")
        self._parent: dict[Node, Node] | None = None
        self._d2d: set[Node] = set()
        if isinstance(graph, CellTree):
            # no networkx graph unless someone asks for one (the `graph` property)
            self._tree: CellTree | None = graph
            caps, lat = graph.link_arrays()
            self._cap = np.append(caps, np.inf)
            self._latency = lat.tolist() if lat.size < 4096 else lat
            self._pad = lat.size
            self._link_bytes = [0] * lat.size
            self._d2d = {i for pair in graph.d2d_pairs for i in pair}
        else:
            self._tree = None
            self._init_graph(graph)
        self._routes: dict[tuple[Node, Node], _Route] = {}
        # the capacities as Python floats too, for per-event code (the same float64 values:
        # a numpy scalar costs more to index and to compute with)
        self._capl: list[float] = self._cap.tolist()

        # The rate model (see "How a start or an end stays cheap" in the module docstring).
        self._active: dict[Transfer, None] = {}            # flowing transfers
        self._on_link: dict[int, dict[Transfer, None]] = {}  # link -> flowing transfers on it
        self._group: dict[int, _Group] = {}                # group link -> its group
        self._fix_sum: dict[int, float] = {}   # link -> sum of the fixed rates crossing it
        self._fix_n: dict[int, int] = {}       # link -> number of fixed-rate flows crossing it
        self._gon: dict[int, dict[_Group, int]] = {}  # link -> groups whose level members
        self._npin: dict[int, int] = {}        # cross it (how many); link -> pinned flows on it
        self._heap: list = []                  # (finish time, seq, token, flow or group)
        self._joins: list[Transfer] = []       # flows that started flowing at this instant
        self._dirty_groups: dict[_Group, None] = {}
        self._touched: set[int] = set()        # links whose load changed at this instant
        self._bad: set[int] = set()            # links whose component needs an exact refill
        self._gid = 0
        self._armed: float | None = None       # when the live timer fires
        self._version = 0
        self._dirty = False
        #: Exact refills (progressive filling of a connected group of flows) so far.
        self.refills = 0
        self._seq = 0
        self._by_node: dict[Node, dict[Transfer, None]] = {}

        n_dev = graph.num_devices if isinstance(graph, CellTree) else 0
        self.bytes_sent = NodeBytes(n_dev)
        self.bytes_received = NodeBytes(n_dev)
        self.bytes_partial_sent = NodeBytes(n_dev)
        self.bytes_partial_received = NodeBytes(n_dev)
        #: Number of rate updates so far (one per instant with a start or an end).
        self.recomputations = 0

    def _init_graph(self, graph: nx.DiGraph) -> None:
        self._graph = graph
        edges = list(graph.edges(data=True))
        caps = np.empty(len(edges) + 1)
        self._link_index: dict[tuple[Node, Node], int] = {}
        self._edges: list[tuple[Node, Node]] = []
        self._latency: list[float] = []
        for k, (u, v, data) in enumerate(edges):
            if "bandwidth" not in data or "latency" not in data:
                raise ValueError(f"edge ({u!r}, {v!r}) needs 'bandwidth' and 'latency' "
                                 f"attributes; got {sorted(data)}")
            b, lt = data["bandwidth"], data["latency"]
            if not (isinstance(b, (int, float, np.number)) and math.isfinite(b) and b > 0):
                raise ValueError(f"edge ({u!r}, {v!r}) bandwidth must be finite and > 0; "
                                 f"got {b!r}")
            if not (isinstance(lt, (int, float, np.number)) and math.isfinite(lt) and lt >= 0):
                raise ValueError(f"edge ({u!r}, {v!r}) latency must be finite and >= 0; "
                                 f"got {lt!r}")
            caps[k] = float(b)
            self._link_index[(u, v)] = k
            self._edges.append((u, v))
            self._latency.append(float(lt))
        caps[-1] = np.inf  # the padding "link" of the path-links x flows matrix
        self._cap = caps
        self._pad = len(edges)
        # bytes per link: a list (an int's += is a fraction of a numpy item's, 3 per transfer)
        self._link_bytes = [0] * len(edges)

        # Tree routing on cell_tree graphs: each node's chain of ancestors up to the server.
        if graph.graph.get("topology") == "cell_tree" and "server" in graph and "core" in graph:
            parent: dict[Node, Node] = {"core": "server"}
            for node, data in graph.nodes(data=True):
                kind = data.get("kind")
                if kind == "cell":
                    parent[node] = "core"
                elif kind == "device":
                    parent[node] = f"cell{data['cell']}"
                    if any(not isinstance(m, str) for m in graph.successors(node)):
                        self._d2d.add(node)
            self._parent = parent

    @property
    def graph(self) -> nx.DiGraph:
        """The topology as a networkx graph (built on first access for a :class:`CellTree`)."""
        return self._tree.graph if self._tree is not None else self._graph

    def _link_of(self, u: Node, v: Node) -> int | None:
        if self._tree is not None:
            return self._tree.link(u, v)
        return self._link_index.get((u, v))

    def _edge_of(self, k: int) -> tuple[Node, Node]:
        return self._tree.edge(k) if self._tree is not None else self._edges[k]

    def _parent_of(self, node: Node) -> Node | None:
        if self._tree is not None:
            return self._tree.parent(node)
        return self._parent.get(node) if self._parent is not None else None

    def _has_node(self, node: Node) -> bool:
        return self._tree.has_node(node) if self._tree is not None else node in self._graph

    # ------------------------------------------------------------------ routes
    def _tree_path(self, src: Node, dst: Node) -> list[Node] | None:
        if self._parent is None and self._tree is None:
            return None
        for node in (src, dst):
            if node != "server" and self._parent_of(node) is None:
                return None  # a node that is not part of the tree
        # A d2d link can shorten a device's route to another device or to a cell (never to
        # the core or the server): let networkx search those.
        d2d = self._d2d
        if (src in d2d and dst not in ("server", "core")) or \
                (dst in d2d and src not in ("server", "core")):
            return None
        up_src = [src]
        while (p := self._parent_of(up_src[-1])) is not None:
            up_src.append(p)
        up_dst = [dst]
        while (p := self._parent_of(up_dst[-1])) is not None:
            up_dst.append(p)
        pos = {node: k for k, node in enumerate(up_dst)}
        for k, node in enumerate(up_src):
            if node in pos:
                return up_src[:k + 1] + up_dst[:pos[node]][::-1]
        return None

    def _device_server_route(self, src: Node, dst: Node) -> _Route | None:
        """The route between a device and the server of a :class:`CellTree`, straight from its
        arrays (kept in the bounded route cache: a round of a big fleet touches a fresh set of
        devices, a Crowdlearning group the same few many times)."""
        tree = self._tree
        if dst == "server" and type(src) is int and 0 <= src < tree.num_devices \
                and src not in self._d2d:
            c = int(tree.cell_of[src])
            ids = [tree.first_device_link + 2 * src, 2 + 2 * c, 0]
            path = (src, f"cell{c}", "core", "server")
        elif src == "server" and type(dst) is int and 0 <= dst < tree.num_devices \
                and dst not in self._d2d:
            c = int(tree.cell_of[dst])
            ids = [1, 3 + 2 * c, tree.first_device_link + 2 * dst + 1]
            path = ("server", "core", f"cell{c}", dst)
        else:
            return None
        cap, lat = self._capl, self._latency
        k0, k1, k2 = ids
        caps = [cap[k0], cap[k1], cap[k2]]
        return _Route(path, float(lat[k0]) + float(lat[k1]) + float(lat[k2]), min(caps), caps,
                      ids)

    def _route(self, src: Node, dst: Node) -> _Route:
        key = (src, dst)
        route = self._routes.get(key)
        if route is not None:
            return route
        if self._tree is not None:
            route = self._device_server_route(src, dst)
            if route is not None:
                # kept like any route (the cache is bounded): a Crowdlearning epoch sends
                # ~27,000 messages between 120 devices and the server
                if len(self._routes) >= _ROUTE_CACHE:
                    self._routes.clear()
                self._routes[key] = route
                return route
        if src == dst:
            raise ValueError(f"a transfer needs two different nodes; got src = dst = {src!r}")
        for node in key:
            if not self._has_node(node):
                raise ValueError(f"node {node!r} is not in the network")
        path = self._tree_path(src, dst)
        ids = None if path is None else [self._link_of(u, v) for u, v in pairwise(path)]
        if ids is not None and None in ids:
            path = None  # the graph was edited away from the tree shape
        if path is None:
            try:
                path = nx.shortest_path(self.graph, src, dst)
            except nx.NetworkXNoPath:
                raise ValueError(f"no path from {src!r} to {dst!r}") from None
            ids = [self._link_of(u, v) for u, v in pairwise(path)]
        lat = self._latency
        caps = self._cap[np.array(ids, dtype=np.intp)].tolist()
        route = _Route(tuple(path), float(sum(lat[k] for k in ids)), min(caps), caps,
                       [int(k) for k in ids])
        if len(self._routes) >= _ROUTE_CACHE:
            self._routes.clear()   # a big fleet's routes would otherwise pile up for ever
        self._routes[key] = route
        return route

    def path(self, src: Node, dst: Node) -> list[Node]:
        """Nodes crossed from ``src`` to ``dst`` (shortest by hop count), both included."""
        return list(self._route(src, dst).path)

    def path_latency(self, src: Node, dst: Node) -> float:
        """Sum of the link latencies from ``src`` to ``dst`` (s)."""
        return self._route(src, dst).latency

    def bottleneck_bps(self, src: Node, dst: Node) -> float:
        """Smallest link bandwidth on the path (bytes/s): the rate of a flow that runs alone."""
        return self._route(src, dst).bottleneck

    # ------------------------------------------------------------------ public API
    def transfer(self, src: Node, dst: Node, nbytes: int) -> Transfer:
        """Start sending ``nbytes`` from ``src`` to ``dst`` now.

        Returns
        -------
        Transfer
            Its ``done`` event succeeds (with the transfer) after the path latency plus the
            time the bytes take at their max-min fair rate, which changes as other flows come
            and go.

        Raises
        ------
        ValueError
            Unknown node, ``src == dst``, no path, or ``nbytes < 0``.
        TypeError
            ``nbytes`` is not an integer.
        """
        if type(nbytes) is not int:
            nbytes = operator.index(nbytes)
        if nbytes < 0:
            raise ValueError(f"nbytes must be >= 0; got {nbytes}")
        route = self._route(src, dst)
        self._seq += 1
        t = Transfer(self, src, dst, nbytes, route, self._seq)
        by_node = self._by_node
        for node in route.path:
            bucket = by_node.get(node)
            if bucket is None:
                by_node[node] = {t: None}
            else:
                bucket[t] = None
        self._post(route.latency, _NORMAL, t, self._on_latency)    # env.timeout(latency, t)
        return t

    def cancel(self, transfer: Transfer) -> bool:
        """Abort ``transfer``: its flow leaves the network, the others speed up, ``done`` is
        never triggered and ``cancelled`` becomes true.  Returns ``False`` (and does nothing) if
        it had already completed or been cancelled.  Works during the latency phase too."""
        state = transfer._state
        if state == _DONE or state == _CANCELLED:
            return False
        now = self.env.now
        if state == _FLOWING:
            left = self._leave(transfer, now)
            delivered = min(float(transfer.nbytes), max(0.0, transfer.nbytes - left))
            self._mark_dirty()
            transfer._delivered = delivered
            whole = int(delivered)
            if whole:
                self.bytes_partial_sent[transfer.src] += whole
                self.bytes_partial_received[transfer.dst] += whole
                lb = self._link_bytes
                for k in transfer._route.ids:
                    lb[k] += whole
        transfer._state = _CANCELLED
        transfer._on_done = None
        transfer.end_time = now
        self._forget(transfer)
        return True

    def cancel_all(self, node: Node) -> list[Transfer]:
        """Cancel every pending or flowing transfer whose path includes ``node`` (as source,
        destination or relay), e.g. when a device goes offline.  Returns them, oldest first."""
        bucket = self._by_node.get(node)
        if not bucket:
            return []
        victims = list(bucket)
        for t in victims:
            self.cancel(t)
        return victims

    @property
    def active(self) -> list[Transfer]:
        """Transfers whose bytes are flowing now (in no particular order)."""
        return list(self._active)

    @property
    def bytes_on_link(self) -> Counter:
        """A snapshot ``{(u, v): bytes}`` of what crossed each link: completed transfers plus
        the delivered part of cancelled ones."""
        return Counter({self._edge_of(k): b for k, b in enumerate(self._link_bytes) if b})

    def capacity(self, u: Node, v: Node) -> float:
        """Bandwidth of link ``(u, v)`` in bytes/s."""
        k = self._link_of(u, v)
        if k is None:
            raise KeyError((u, v))
        return float(self._cap[k])

    # ------------------------------------------------------------------ machinery
    def _forget(self, t: Transfer) -> None:
        by_node = self._by_node
        for node in t.path:
            bucket = by_node[node]
            bucket.pop(t, None)
            if not bucket:
                del by_node[node]   # idle nodes cost nothing

    def _mark_dirty(self) -> None:
        if not self._dirty:
            self._dirty = True
            self._post(0, _LATE, None, self._recompute)

    def _post(self, delay: float, priority: int, value: Any,
              callback: Callable[[Event], None]) -> Event:
        """A triggered event with one callback, processed at ``now + delay`` with
        ``priority``: what ``env.timeout(delay, value)`` (priority NORMAL) or a hand-triggered
        ``env.schedule(ev, priority)`` make, built without their calls.  With SimPy's own
        ``Environment.schedule`` the entry pushed is the one it would push (same time,
        priority and insertion id, so the same order); an environment that overrides
        ``schedule`` gets the call."""
        env = self.env
        ev = _new_event(Event)
        ev.env = env
        ev.callbacks = [callback]
        ev._ok = True           # triggered by hand, as simpy's own Initialize is
        ev._value = value
        if self._own_schedule:
            heapq.heappush(env._queue, (env._now + delay, priority, next(env._eid), ev))
        else:
            env.schedule(ev, priority, delay)
        return ev

    def _on_latency(self, ev: Event) -> None:
        t: Transfer = ev._value
        if t._state != _PENDING:
            return  # cancelled while propagating
        if t.nbytes == 0:
            self._complete(t)
            return
        t._state = _FLOWING
        t._mode = _WAIT
        t._t0 = self.env.now
        self._active[t] = None
        self._joins.append(t)
        self._mark_dirty()

    # -------------------------------------------------------------- the rate model
    def _left(self, t: Transfer, now: float) -> float:
        """Bytes ``t`` still has to send at ``now``."""
        if t._mode == _UNC:
            g = t._grp
            return t._thr - g.V if now == g.t else t._thr - (g.V + g.lam * (now - g.t))
        return t._rem0 - t._r * (now - t._t0)

    @staticmethod
    def _advance_group(g: _Group, now: float) -> None:
        if g.t != now:
            if g.n_unc:
                g.V += g.lam * (now - g.t)
            g.t = now

    def _unplace(self, t: Transfer, now: float) -> float:
        """Take ``t`` out of the rate model's sums and heaps; return its bytes left."""
        left = self._left(t, now)
        mode = t._mode
        t._tok += 1                                  # its heap entries go stale
        if mode == _UNC:
            g = t._grp
            g.n_unc -= 1
            touch, gon, glink = g.touch, self._gon, g.link
            for link in t._route.ids:
                if link != glink:
                    c = touch[link] - 1
                    on = gon[link]
                    if c:
                        touch[link] = c
                        on[g] -= 1
                    else:
                        del touch[link]
                        g.multi.pop(link, None)
                        del on[g]
                        if not on:
                            del gon[link]
        elif mode >= _CAPD:
            r = t._r
            fs, fn = self._fix_sum, self._fix_n
            for link in t._route.ids:
                c = fn[link] - 1
                if c:
                    fn[link] = c
                    fs[link] -= r
                else:
                    del fn[link], fs[link]
            if mode == _CAPD:
                g = t._grp
                g.n_cap -= 1
                g.s_cap = g.s_cap - r if g.n_cap else 0.0   # no drift once none is left
            elif mode == _PIN:
                npin = self._npin
                for link in t._route.ids:
                    c = npin[link] - 1
                    if c:
                        npin[link] = c
                    else:
                        del npin[link]
        t._mode = _NEW
        return left

    def _place_fixed(self, t: Transfer, mode: int, rate: float, left: float,
                     now: float) -> None:
        """``t`` flows at a fixed ``rate`` until something re-places it."""
        t._mode, t._r, t._rem0, t._t0 = mode, rate, left, now
        fs, fn = self._fix_sum, self._fix_n
        for link in t._route.ids:
            fs[link] = fs.get(link, 0.0) + rate
            fn[link] = fn.get(link, 0) + 1
        if mode == _CAPD:
            g = t._grp
            g.s_cap += rate
            g.n_cap += 1
            heapq.heappush(g.capd, (-t._ocap, t._seq, t._tok, t))
        elif mode == _PIN:
            npin = self._npin
            for link in t._route.ids:
                npin[link] = npin.get(link, 0) + 1
        heapq.heappush(self._heap, (now + left / rate, t._seq, t._tok, t))

    def _place_level(self, t: Transfer, g: _Group, left: float) -> None:
        """``t`` flows at its group's level: it finishes when the group's virtual time has
        grown by ``left``."""
        t._mode = _UNC
        t._thr = thr = g.V + left
        g.n_unc += 1
        heapq.heappush(g.unc, (t._ocap, t._seq, t._tok, t))
        heapq.heappush(g.thr, (thr, t._seq, t._tok, t))
        touch, gon, glink, on_link = g.touch, self._gon, g.link, self._on_link
        for link in t._route.ids:
            if link != glink:
                c = touch.get(link, 0)
                touch[link] = c + 1
                on = gon.get(link)
                if on is None:
                    gon[link] = {g: 1}
                else:
                    on[g] = on.get(g, 0) + 1
                if not c and len(on_link[link]) >= 2:
                    g.multi[link] = None

    def _enter(self, t: Transfer, g: _Group, left: float) -> None:
        """Make ``t`` a member of ``g`` (at the level; :meth:`_level` sorts it out)."""
        t._grp = g
        t._ocap = t._route.ocap[g.link]      # the smallest capacity of its other links
        g.members[t] = None
        self._place_level(t, g, left)
        self._dirty_groups[g] = None

    def _new_group(self, link: int, now: float) -> _Group:
        self._gid += 1
        g = _Group(link, self._capl[link], now, self._gid)
        self._group[link] = g
        return g

    def _drop_group(self, g: _Group) -> None:
        del self._group[g.link]
        g.ver += 1
        self._dirty_groups.pop(g, None)

    def _level(self, g: _Group, now: float) -> None:
        """Water-filling on one link: members below the level keep their own caps, the others
        share what is left equally (Bertsekas and Gallager, sec. 6.5.2, on one link)."""
        unc, capd, touched = g.unc, g.capd, self._touched
        for _ in range(2 * len(g.members) + 8):
            if g.n_unc:
                lam = (g.cap - g.s_cap) / g.n_unc
            else:
                lam = math.inf if g.s_cap <= g.cap else -math.inf
            while unc and (e := unc[0])[2] != e[3]._tok:
                heapq.heappop(unc)
            if unc and unc[0][0] < lam:          # held below the level by its own cap
                t = unc[0][3]
                left = self._unplace(t, now)
                self._place_fixed(t, _CAPD, t._ocap, left, now)
                touched.update(t._route.ids)
                continue
            while capd and (e := capd[0])[2] != e[3]._tok:
                heapq.heappop(capd)
            if capd and -capd[0][0] > lam:       # its cap is above the level now
                t = capd[0][3]
                left = self._unplace(t, now)
                self._place_level(t, g, left)
                touched.update(t._route.ids)
                continue
            g.lam = lam
            return
        g.lam = lam
        self._bad.add(g.link)   # did not settle (rounding at a tie): refill exactly

    def _join(self, t: Transfer, now: float) -> None:
        """Place a flow that starts now, in a group if it can go in one, else alone."""
        on_link, gon = self._on_link, self._gon
        ids = t._route.ids
        for link in ids:
            on = on_link.get(link)
            if on is None:
                on_link[link] = {t: None}
            else:
                on[t] = None
                if len(on) == 2 and link in gon:
                    for g in gon[link]:
                        g.multi[link] = None
        self._touched.update(ids)
        t._mode = _LOST
        npin, groups = self._npin, self._group
        if npin and not npin.keys().isdisjoint(ids):
            self._bad.update(ids)
            return
        mine = None          # the one group on its path
        for link in ids:
            g = groups.get(link)
            if g is not None:
                if mine is not None:      # it would need two groups
                    self._bad.update(ids)
                    return
                mine = g
        left = float(t.nbytes)
        t._mode = _NEW
        if mine is not None:
            self._advance_group(mine, now)
            self._enter(t, mine, left)
            return
        # no group on its path: found one on its most contended shared link whose other flows
        # all flow alone, or flow alone (its shared links are checked for room afterwards)
        cap = self._capl
        shared = [(cap[link] / n, link) for link in ids if (n := len(on_link[link])) >= 2]
        if len(shared) > 1:
            shared.sort()
        for _, link in shared:
            on = on_link[link]
            for o in on:
                if o is not t and o._mode != _SOLO:
                    break
            else:           # every other flow on it flows alone
                others = [o for o in on if o is not t]
                g = self._new_group(link, now)
                for o in others:
                    self._enter(o, g, self._unplace(o, now))
                self._enter(t, g, left)
                return
        t._grp = None
        self._place_fixed(t, _SOLO, t._route.bottleneck, left, now)

    def _leave(self, t: Transfer, now: float) -> float:
        """Take a flowing transfer out (it ended or was cancelled); return its bytes left."""
        self._active.pop(t, None)
        if t._mode == _WAIT:
            t._mode = _NEW
            return float(t.nbytes)   # started at this instant, not placed yet (_recompute skips it)
        on_link, gon = self._on_link, self._gon
        ids = t._route.ids
        for link in ids:
            on = on_link[link]
            del on[t]
            if not on:
                del on_link[link]
            elif len(on) == 1 and link in gon:
                for g in gon[link]:
                    g.multi.pop(link, None)
        self._touched.update(ids)
        if t._mode == _PIN:
            self._bad.update(ids)
        g = t._grp
        if g is not None:
            self._advance_group(g, now)
        left = self._unplace(t, now)
        if g is not None:
            del g.members[t]
            t._grp = None
            if g.members:
                self._dirty_groups[g] = None
            else:
                self._drop_group(g)
        return left

    def _usage(self, link: int) -> float:
        used = self._fix_sum.get(link, 0.0)
        on = self._gon.get(link)
        if on:
            for g, c in on.items():
                used += g.lam * c
        return used

    def _check(self) -> None:
        """Links whose load changed: a shared link that is no group's must have room (then
        nobody is held by it and the groups' levels are the max-min rates), and must carry no
        pinned flow (whose rate came from an exact refill that this change may upset)."""
        links = set(self._touched)
        for g in self._dirty_groups:
            links.update(g.multi)
        groups, on_link, npin, cap, bad = self._group, self._on_link, self._npin, self._capl, \
            self._bad
        fix_sum, gon = self._fix_sum, self._gon
        for link in links:
            if link in groups:
                continue
            if link in npin:
                bad.add(link)
                continue
            on = on_link.get(link)
            if on is not None and len(on) >= 2:
                used = fix_sum.get(link, 0.0)        # self._usage(link), inline
                by = gon.get(link)
                if by:
                    for g, c in by.items():
                        used += g.lam * c
                if used > cap[link] * (1.0 + 1e-12):
                    bad.add(link)

    def _refill(self, now: float) -> None:
        """Exact max-min rates of every flow connected to a bad link (progressive filling),
        then as many of them as possible put back in groups."""
        on_link = self._on_link
        comp: dict[Transfer, None] = {}
        seen: set[int] = set()
        stack = list(self._bad)
        while stack:
            link = stack.pop()
            if link in seen:
                continue
            seen.add(link)
            for t in on_link.get(link, ()):
                if t not in comp:
                    comp[t] = None
                    stack.extend(t._route.ids)
        if not comp:
            return
        self.refills += 1
        flows = list(comp)
        for t in flows:
            if t._grp is not None:
                self._advance_group(t._grp, now)
        lefts = [self._unplace(t, now) for t in flows]
        for t in flows:
            g = t._grp
            if g is not None:
                t._grp = None
                if self._group.get(g.link) is g:
                    self._drop_group(g)
        # progressive filling over compact link ids (the padding id is the last)
        links = sorted(seen)
        lk = _compact_links([t._route.ids for t in flows], links)
        capc = np.append(self._cap[links], np.inf)
        rates = _progressive_filling(lk, capc).tolist()
        rate_of = dict(zip(flows, rates, strict=True))
        left_of = dict(zip(flows, lefts, strict=True))
        # groups: a shared link all of whose flows are free and get what one-link water-filling
        # with their own caps gives them (most contended links first)
        cap = self._capl
        free = set(flows)
        for _, link in sorted((cap[link] / len(on_link[link]), link) for link in links
                              if len(on_link.get(link, ())) >= 2):
            members = list(on_link[link])
            if not free.issuperset(members):
                continue
            ocaps = [t._route.ocap[link] for t in members]
            lam = _water_level(cap[link], ocaps)
            if all(abs(min(oc, lam) - rate_of[t]) <= 1e-10 * rate_of[t]
                   for t, oc in zip(members, ocaps, strict=True)):
                g = self._new_group(link, now)
                for t in members:
                    free.discard(t)
                    self._enter(t, g, left_of[t])
                self._level(g, now)
        for t in flows:
            if t in free:
                r = rate_of[t]
                if r >= t._route.bottleneck * (1.0 - 1e-12):
                    self._place_fixed(t, _SOLO, t._route.bottleneck, left_of[t], now)
                else:
                    self._place_fixed(t, _PIN, r, left_of[t], now)

    def _push_group(self, g: _Group) -> None:
        """The group's next finish time goes on the heap (older entries go stale)."""
        g.ver += 1
        thr = g.thr
        while thr and (e := thr[0])[2] != e[3]._tok:
            heapq.heappop(thr)
        if len(thr) > 2 * g.n_unc + 64:
            g.thr = thr = [e for e in thr if e[2] == e[3]._tok]
            heapq.heapify(thr)
        if len(g.unc) > 2 * g.n_unc + 64:
            g.unc = [e for e in g.unc if e[2] == e[3]._tok]
            heapq.heapify(g.unc)
        if len(g.capd) > 2 * (len(g.members) - g.n_unc) + 64:
            g.capd = [e for e in g.capd if e[2] == e[3]._tok]
            heapq.heapify(g.capd)
        if g.n_unc and thr:
            heapq.heappush(self._heap, (g.t + (thr[0][0] - g.V) / g.lam, -g.gid, g.ver, g))

    def _valid(self, e: tuple) -> bool:
        obj = e[3]
        if type(obj) is _Group:
            return e[2] == obj.ver
        return e[2] == obj._tok and obj._mode >= _CAPD

    def _arm(self, now: float) -> None:
        heap = self._heap
        while heap:         # drop stale entries (self._valid, inline: once per event)
            e = heap[0]
            obj = e[3]
            if (e[2] == obj.ver) if type(obj) is _Group else \
                    (e[2] == obj._tok and obj._mode >= _CAPD):
                break
            heapq.heappop(heap)
        if len(heap) > 2 * len(self._active) + 64:
            self._heap = heap = [e for e in heap if self._valid(e)]
            heapq.heapify(heap)
        if not heap:
            return
        when = heap[0][0]
        if self._armed is not None and self._armed <= when:
            return   # an earlier wake-up is due; it arms the next one
        self._version += 1
        self._armed = when
        self._post(max(0.0, when - now), _NORMAL, self._version, self._on_timer)  # a timeout

    def _recompute(self, _ev: Event | None = None) -> None:
        self._dirty = False
        now = self.env.now
        joins, self._joins = self._joins, []
        for t in joins:
            if t._mode == _WAIT and t._state == _FLOWING:
                self._join(t, now)
        for g in self._dirty_groups:        # (_level adds and removes no dirty group)
            if g.t != now:                  # self._advance_group(g, now), inline
                if g.n_unc:
                    g.V += g.lam * (now - g.t)
                g.t = now
            self._level(g, now)
        self._check()
        if self._bad:
            self._refill(now)
        for g in self._dirty_groups:
            self._push_group(g)
        self._dirty_groups.clear()
        self._touched.clear()
        self._bad.clear()
        if self._active:
            self.recomputations += 1
        self._arm(now)

    def _on_timer(self, ev: Event) -> None:
        if ev._value != self._version:
            return  # superseded by an earlier wake-up
        self._armed = None
        now = self.env.now
        if self._dirty:
            return  # the pending recomputation arms the next timer
        limit = now + _DONE_TOL_S + 4.0 * math.ulp(now)     # = np.spacing for now >= 0
        heap = self._heap
        ended: list[Transfer] = []
        while heap:
            e = heap[0]
            obj = e[3]
            if type(obj) is not _Group:
                if e[2] != obj._tok or obj._mode < _CAPD:      # stale (self._valid)
                    heapq.heappop(heap)
                    continue
                if e[0] > limit:   # (it may wake early: rates fell since it was armed)
                    break
                heapq.heappop(heap)
                ended.append(obj)
                continue
            if e[2] != obj.ver:
                heapq.heappop(heap)
                continue
            if e[0] > limit:
                break
            heapq.heappop(heap)
            g = obj
            g.ver += 1
            self._advance_group(g, now)
            due = g.V + g.lam * (limit - now)
            thr, first = g.thr, True
            while thr:
                te = thr[0]
                if te[2] != te[3]._tok:
                    heapq.heappop(thr)
                    continue
                if te[0] > due and not first:
                    break
                heapq.heappop(thr)
                ended.append(te[3])
                first = False
        if not ended:
            self._arm(now)
            return
        for t in ended:
            self._leave(t, now)
        self._mark_dirty()
        if len(ended) > 1:
            ended.sort(key=_BY_SEQ)
        for t in ended:
            self._complete(t)

    def _complete(self, t: Transfer) -> None:
        t._state = _DONE
        t._delivered = float(t.nbytes)
        t.end_time = self.env.now
        nbytes = t.nbytes
        if nbytes:
            self.bytes_sent.add(t.src, nbytes)
            self.bytes_received.add(t.dst, nbytes)
            lb = self._link_bytes
            for k in t._route.ids:     # a route crosses a link once; 3 scalar adds beat a gather
                lb[k] += nbytes
        self._forget(t)
        if t._done is not None:
            t._done.succeed(t)
        if t._on_done is not None:
            cb, t._on_done = t._on_done, None
            self._post(0, _NORMAL, None, cb)       # Event(env) with cb, then succeed()
