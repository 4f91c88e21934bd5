"""The network's per-event fast paths (sim.network) give the transfers of the code they replaced
bit for bit: every completion time, rate, delivered byte and byte count, over random flow sets
on cell trees (with d2d links, ties, zero latencies, cancellations) and on arbitrary graphs.

:class:`ReferenceNetwork` is :class:`sim.network.Network` with the rate model's per-event
methods as they were before issue 15's sixth session (verbatim, docstrings dropped): events
made by ``env.timeout`` / ``Event`` + ``env.schedule`` rather than pushed on SimPy's heap, each
flow's own cap found by a loop over its route at every join, the refill's link matrix filled
column by column, the join's groups and contention by comprehensions, ``NodeBytes.add`` by
item access, the link bytes in a numpy array.  (The refill differs only in its link matrix and
own caps: the reference runs the current one with those two put back.  ``_on_timer`` now skips
sorting a single completion, which changes nothing: the reference uses the current one.)"""

from __future__ import annotations

import heapq
import math
import operator

import numpy as np
import simpy
from hypothesis import given, settings
from hypothesis import strategies as st
from simpy.events import Event

from sim import network as N
from sim.network import (  # noqa: F401 (the names the copied methods use)
    _CAPD,
    _DONE,
    _DONE_TOL_S,
    _FLOWING,
    _LATE,
    _LOST,
    _NEW,
    _PENDING,
    _PIN,
    _SOLO,
    _UNC,
    _WAIT,
    Network,
    Node,
    NodeBytes,
    Transfer,
    _Group,
    _progressive_filling,
    _water_level,
    cell_tree,
)
from tests.test_network import at, graph, scenarios


class _ReferenceBytes(NodeBytes):
    def add(self, node, n):
        if type(node) is int and 0 <= node < self._n:
            self._dev[node] += n
        else:
            self[node] = self[node] + n


class ReferenceNetwork(Network):
    """The rate model as it was (see the module docstring)."""

    def __init__(self, env, graph):
        super().__init__(env, graph)
        self._link_bytes = np.zeros(len(self._link_bytes), dtype=np.int64)
        for name in ("bytes_sent", "bytes_received", "bytes_partial_sent",
                     "bytes_partial_received"):
            setattr(self, name, _ReferenceBytes(getattr(self, name)._n))

    def cancel(self, transfer):
        state = transfer._state
        if state == N._DONE or state == N._CANCELLED:
            return False
        now = self.env.now
        if state == N._FLOWING:
            left = self._leave(transfer, now)
            delivered = min(float(transfer.nbytes), max(0.0, transfer.nbytes - left))
            self._mark_dirty()
            transfer._delivered = delivered
            whole = int(delivered)
            if whole:
                self.bytes_partial_sent[transfer.src] += whole
                self.bytes_partial_received[transfer.dst] += whole
                self._link_bytes[transfer._route.links] += whole
        transfer._state = N._CANCELLED
        transfer._on_done = None
        transfer.end_time = now
        self._forget(transfer)
        return True

    @property
    def bytes_on_link(self):
        from collections import Counter
        nz = np.flatnonzero(self._link_bytes)
        return Counter({self._edge_of(k): int(self._link_bytes[k]) for k in nz})

    def transfer(self, src: Node, dst: Node, nbytes: int) -> Transfer:
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
        ev = self.env.timeout(route.latency, t)
        ev.callbacks.append(self._on_latency)
        return t

    def _mark_dirty(self) -> None:
        if not self._dirty:
            self._dirty = True
            ev = Event(self.env)
            ev._ok = True  # trigger it by hand, as simpy's own Initialize does
            ev._value = None
            ev.callbacks.append(self._recompute)
            self.env.schedule(ev, _LATE)

    def _enter(self, t: Transfer, g: _Group, left: float) -> None:
        t._grp = g
        glink = g.link
        ocap = math.inf          # the smallest capacity of its other links
        for link, c in zip(t._route.ids, t._route.caps, strict=True):
            if link != glink and c < ocap:
                ocap = c
        t._ocap = ocap
        g.members[t] = None
        self._place_level(t, g, left)
        self._dirty_groups[g] = None

    def _join(self, t: Transfer, now: float) -> None:
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
        if npin and any(link in npin for link in ids):
            self._bad.update(ids)
            return
        mine = [groups[link] for link in ids if link in groups]
        if len(mine) > 1:
            self._bad.update(ids)
            return
        left = float(t.nbytes)
        t._mode = _NEW
        if mine:
            g = mine[0]
            self._advance_group(g, now)
            self._enter(t, g, left)
            return
        # no group on its path: found one on its most contended shared link whose other flows
        # all flow alone, or flow alone (its shared links are checked for room afterwards)
        cap = self._capl
        shared = sorted((cap[link] / len(on_link[link]), link) for link in ids
                        if len(on_link[link]) >= 2)
        for _, link in shared:
            on = on_link[link]
            if all(o._mode == _SOLO for o in on if o is not t):
                others = [o for o in on if o is not t]
                g = self._new_group(link, now)
                for o in others:
                    self._enter(o, g, self._unplace(o, now))
                self._enter(t, g, left)
                return
        t._grp = None
        self._place_fixed(t, _SOLO, t._route.bottleneck, left, now)

    def _refill(self, now: float) -> None:
        # the current refill with what it did differently put back: the link matrix filled
        # column by column, each member's own cap by a loop over its route (_OwnCapsByLoop)
        fast, N._compact_links = N._compact_links, _compact_links_by_column
        try:
            super()._refill(now)
        finally:
            N._compact_links = fast

    def _route(self, src, dst):
        route = super()._route(src, dst)
        if route._ocap is None:
            route._ocap = _OwnCapsByLoop(route)
        return route

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
        timer = self.env.timeout(max(0.0, when - now), self._version)
        timer.callbacks.append(self._on_timer)

    def _recompute(self, _ev: Event | None = None) -> None:
        self._dirty = False
        now = self.env.now
        joins, self._joins = self._joins, []
        for t in joins:
            if t._mode == _WAIT and t._state == _FLOWING:
                self._join(t, now)
        for g in list(self._dirty_groups):
            self._advance_group(g, now)
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
            ev = Event(self.env)
            ev.callbacks.append(t._on_done)
            t._on_done = None
            ev.succeed()

class _OwnCapsByLoop:
    """A route's own caps as the refill found them: the smallest bandwidth of its links other
    than the asked one, by ``min`` over the route at every ask."""

    def __init__(self, route):
        self.route = route

    def __getitem__(self, link):
        r = self.route
        return min((c for k, c in zip(r.ids, r.caps, strict=True) if k != link),
                   default=math.inf)


def _compact_links_by_column(rows, links):
    """The refill's link matrix as it was filled: column by column."""
    cid = {link: k for k, link in enumerate(links)}
    lk = np.full((max(map(len, rows)), len(rows)), len(links), dtype=np.intp)
    for f, ids in enumerate(rows):
        lk[:len(ids), f] = [cid[link] for link in ids]
    return lk



# ------------------------------------------------------------------------------ the laws
def _run(cls, topology, flows, cancels, drops, checks):
    """Run ``flows`` ``(src, dst, bytes, start)`` on a fresh ``cls`` network; return what can be
    observed, floats as hex: each transfer's state, end time and delivered bytes, the rates at
    the check times, the byte counts, refills and recomputations."""
    env = simpy.Environment()
    net = cls(env, topology)
    started, seen, done = [], [], []
    for s, d, nbytes, t0 in flows:
        at(env, t0, lambda s=s, d=d, nb=nbytes: started.append(net.transfer(s, d, nb)))
    for k, t in cancels:
        at(env, t, lambda k=k: started[k].cancel() if k < len(started) else None)
    for node, t in drops:
        at(env, t, lambda node=node: net.cancel_all(node))
    for t in checks:
        at(env, t, lambda: seen.append(sorted((x._seq, x.rate.hex(), x.delivered.hex())
                                              for x in net.active)))
    at(env, 0.0, lambda: None)
    env.run()
    for t in started:
        done.append((t.state, None if t.end_time is None else float(t.end_time).hex(),
                     float(t.delivered).hex()))
    counts = [dict(getattr(net, name)) for name in (
        "bytes_sent", "bytes_received", "bytes_partial_sent", "bytes_partial_received")]
    return done, seen, counts, dict(net.bytes_on_link), net.refills, net.recomputations


@st.composite
def tree_flows(draw):
    """A small cell tree (ties in bandwidth on purpose, some zero latencies, d2d pairs) and
    flows between its devices, cells and the server, starting at a few shared instants."""
    n = draw(st.integers(2, 7))
    cells = draw(st.integers(1, 3))
    bw = st.sampled_from([1.0, 2.0, 3.0, 4.0, 8.0])
    lat = st.sampled_from([0.0, 0.0, 0.01, 0.25])
    pairs = draw(st.lists(st.tuples(st.integers(0, n - 1), st.integers(0, n - 1)).filter(
        lambda p: p[0] < p[1]), max_size=2, unique=True))
    topology = cell_tree(n, device_up_bps=[draw(bw) for _ in range(n)],
                         device_down_bps=[draw(bw) for _ in range(n)],
                         device_latency_s=[draw(lat) for _ in range(n)], cells=cells,
                         backhaul_bps=draw(bw), backhaul_latency_s=draw(lat),
                         server_bps=draw(bw), server_latency_s=draw(lat),
                         server_down_bps=draw(st.none() | bw), d2d_pairs=pairs,
                         d2d_bps=draw(bw), d2d_latency_s=draw(lat))
    nodes = list(range(n)) + ["server"] + [f"cell{c}" for c in range(cells)]
    node = st.sampled_from(nodes)
    flows = draw(st.lists(st.tuples(node, node, st.integers(0, 30),
                                    st.sampled_from([0.0, 0.0, 0.5, 1.0, 1.25, 3.0])),
                          min_size=1, max_size=24).filter(
        lambda fs: all(s != d for s, d, _, _ in fs)))
    cancels = draw(st.lists(st.tuples(st.integers(0, 23), st.sampled_from([0.5, 1.0, 2.0, 4.5])),
                            max_size=3))
    drops = draw(st.lists(st.tuples(node, st.sampled_from([1.0, 2.5, 6.0])), max_size=2))
    checks = draw(st.lists(st.floats(0.01, 30), min_size=1, max_size=5))
    return topology, flows, cancels, drops, checks


@settings(max_examples=150, deadline=None)
@given(tree_flows())
def test_the_fast_paths_move_every_byte_as_the_reference_on_cell_trees(case):
    topology, flows, cancels, drops, checks = case
    got = _run(Network, topology, flows, cancels, drops, checks)
    want = _run(ReferenceNetwork, topology, flows, cancels, drops, checks)
    assert got == want


@settings(max_examples=80, deadline=None)
@given(scenarios())
def test_the_fast_paths_move_every_byte_as_the_reference_on_any_graph(case):
    edges, flows, checks, cancels = case
    got = _run(Network, graph(edges), flows, cancels, [], checks)
    want = _run(ReferenceNetwork, graph(edges), flows, cancels, [], checks)
    assert got == want


def test_a_busy_server_link_refills_and_still_matches_the_reference():
    """120 devices in 12 cells sending to and from the server at once, in waves: groups,
    pins and exact refills (the 120-device Crowdlearning epoch's shape) give the same times."""
    rng = np.random.default_rng(3)
    n = 120
    topology = cell_tree(n, device_up_bps=rng.choice([1e6, 2e6, 4e6], n),
                         device_down_bps=rng.choice([4e6, 8e6], n),
                         device_latency_s=rng.choice([0.0, 0.02], n), cells=12,
                         backhaul_bps=2e7, backhaul_latency_s=0.005, server_bps=5e7,
                         server_latency_s=0.001)
    flows = []
    for wave in range(6):
        for i in rng.choice(n, 60, replace=False).tolist():
            src, dst = (i, "server") if rng.random() < 0.5 else ("server", i)
            flows.append((src, dst, int(rng.integers(1, 4e6)), wave * 0.75))
    got = _run(Network, topology, flows, [(5, 0.3), (70, 1.0)], [(7, 2.0)], [0.4, 2.2])
    want = _run(ReferenceNetwork, topology, flows, [(5, 0.3), (70, 1.0)], [(7, 2.0)],
                [0.4, 2.2])
    assert got == want
    assert got[4] > 0          # exact refills happened


def test_events_go_on_the_heap_as_simpy_would_put_them():
    """With SimPy's own schedule the network pushes its events itself; an environment that
    overrides schedule gets the call, and the transfers end the same."""
    class Counting(simpy.Environment):
        calls = 0

        def schedule(self, event, priority=1, delay=0):
            Counting.calls += 1
            super().schedule(event, priority, delay)

    topology = cell_tree(3, device_up_bps=1e6, device_down_bps=2e6, device_latency_s=0.01,
                         cells=1, backhaul_bps=1.5e6)
    ends = []
    for env in (simpy.Environment(), Counting()):
        net = Network(env, topology)
        assert net._own_schedule == (type(env) is simpy.Environment)
        ts = [net.transfer(i, "server", 1_000_000) for i in range(3)]
        env.run()
        ends.append([t.end_time for t in ts])
    assert ends[0] == ends[1] and Counting.calls > 0


@settings(max_examples=200, deadline=None)
@given(st.lists(st.lists(st.integers(0, 9), min_size=1, max_size=4, unique=True),
                min_size=1, max_size=12))
def test_compact_links_equal_the_column_by_column_matrix(rows):
    links = sorted({k for r in rows for k in r})
    want = _compact_links_by_column(rows, links)
    got = N._compact_links(rows, links)
    assert got.dtype == want.dtype and got.tolist() == want.tolist()
    assert got.flags.c_contiguous


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(st.sampled_from([0, 1, 2, 5, "server", "cell0", np.int64(1)]),
                          st.integers(-3, 5)), max_size=20))
def test_node_bytes_add_is_item_addition(ops):
    got, want = NodeBytes(3), NodeBytes(3)
    for node, n in ops:
        got.add(node, n)
        want[node] = want[node] + n
    assert dict(got) == dict(want) and len(got) == len(want)
