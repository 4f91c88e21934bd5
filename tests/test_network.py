"""Tests for sim.network: routes, hand-computed finish times, max-min fairness, cancellation."""

from __future__ import annotations

from itertools import pairwise

import networkx as nx
import numpy as np
import pytest
import simpy
from hypothesis import given, settings
from hypothesis import strategies as st

from sim.network import Network, build_topology, max_min_rates

approx = lambda x: pytest.approx(x, rel=1e-9, abs=1e-12)  # noqa: E731


def tree(n=2, *, up=10e6, down=10e6, lat=0.0, backhaul=4e6, bh_lat=0.0, server=1e9,
         sv_lat=0.0, **kw):
    return build_topology(n, device_up_bps=up, device_down_bps=down, device_latency_s=lat,
                          backhaul_bps=backhaul, backhaul_latency_s=bh_lat, server_bps=server,
                          server_latency_s=sv_lat, **kw)


def graph(edges):
    """A DiGraph from ``(u, v, bandwidth, latency)``, one direction per tuple."""
    g = nx.DiGraph()
    for u, v, b, lt in edges:
        g.add_edge(u, v, bandwidth=b, latency=lt)
    return g


def at(env, t, fn):
    """Call ``fn()`` at simulated time ``t``."""
    def proc():
        yield env.timeout(t - env.now)
        fn()
    env.process(proc())


# ------------------------------------------------------------------------------ topology
def test_topology_shape_and_attributes():
    g = build_topology(5, device_up_bps=np.arange(1, 6) * 1e6, device_down_bps=2e6,
                       device_latency_s=[0.01] * 5, cells=2, cell_of=[0, 0, 1, 1, 1],
                       d2d_pairs=[(1, 3)], d2d_bps=[7e6], d2d_latency_s=0.003)
    assert g.graph["topology"] == "cell_tree"
    assert g.edges[4, "cell1"] == {"bandwidth": 5e6, "latency": 0.01}
    assert g.edges["cell1", 4]["bandwidth"] == 2e6
    assert g.edges["cell0", "core"]["bandwidth"] == 1.25e9
    assert g.edges["server", "core"]["latency"] == 0.001
    assert g.edges[1, 3] == g.edges[3, 1] == {"bandwidth": 7e6, "latency": 0.003}
    assert g.nodes[2] == {"kind": "device", "cell": 1}
    assert set(g) == {"server", "core", "cell0", "cell1", 0, 1, 2, 3, 4}
    # 5 devices x 2 + 2 cells x 2 + server x 2 + d2d x 2
    assert g.number_of_edges() == 10 + 4 + 2 + 2


@pytest.mark.parametrize("kwargs, needle", [
    (dict(device_up_bps=[1e6, -1.0, 1e6]), "device_up_bps[1]"),
    (dict(device_down_bps=[1e6, 1e6]), "device_down_bps"),
    (dict(device_latency_s=float("nan")), "device_latency_s[0]"),
    (dict(backhaul_bps=0.0), "backhaul_bps"),
    (dict(server_latency_s=-1.0), "server_latency_s"),
    (dict(cells=0), "cells"),
    (dict(cells=2, cell_of=[0, 2, 1]), "cell_of[1]"),
    (dict(d2d_pairs=[(0, 0)]), "d2d_pairs[0]"),
    (dict(d2d_pairs=[(0, 5)]), "d2d_pairs[0]"),
    (dict(d2d_pairs=[(0, 1)], d2d_bps=[1e6, 2e6]), "d2d_bps"),
])
def test_topology_validation_names_the_bad_value(kwargs, needle):
    args = dict(device_up_bps=1e6, device_down_bps=1e6, device_latency_s=0.01) | kwargs
    with pytest.raises(ValueError) as info:
        build_topology(3, **args)
    assert needle in str(info.value)


def test_network_rejects_bad_graphs_and_requests():
    env = simpy.Environment()
    with pytest.raises(ValueError, match="bandwidth"):
        Network(env, graph([("a", "b", 0.0, 0.1)]))
    g = nx.DiGraph()
    g.add_edge("a", "b", bandwidth=1.0)
    with pytest.raises(ValueError, match="latency"):
        Network(env, g)
    net = Network(env, graph([("a", "b", 1.0, 0.0)]))
    with pytest.raises(ValueError, match="'b' to 'a'"):
        net.transfer("b", "a", 1)
    with pytest.raises(ValueError, match="'zz'"):
        net.transfer("a", "zz", 1)
    with pytest.raises(ValueError, match="src = dst"):
        net.transfer("a", "a", 1)
    with pytest.raises(ValueError, match="-5"):
        net.transfer("a", "b", -5)
    with pytest.raises(TypeError):
        net.transfer("a", "b", 1.5)


def test_tree_routes_are_shortest_paths():
    g = build_topology(12, device_up_bps=1e6, device_down_bps=1e6, device_latency_s=0.01,
                       cells=3, d2d_pairs=[(0, 1), (1, 5), (2, 9)])
    net = Network(simpy.Environment(), g)
    nodes = list(g.nodes)
    for s in nodes:
        for d in nodes:
            if s == d:
                continue
            p = net.path(s, d)
            assert p[0] == s and p[-1] == d
            assert all(g.has_edge(u, v) for u, v in pairwise(p))
            assert len(p) - 1 == nx.shortest_path_length(g, s, d), (s, d, p)
    assert net.path(4, "server") == [4, "cell1", "core", "server"]
    assert net.path("server", 6) == ["server", "core", "cell0", 6]
    assert net.path(3, 4) == [3, "cell0", "core", "cell1", 4]
    assert net.path(3, 6) == [3, "cell0", 6]


def test_path_helpers():
    g = tree(1, up=1e6, down=3e6, lat=0.02, backhaul=2e6, bh_lat=0.005, sv_lat=0.001)
    net = Network(simpy.Environment(), g)
    assert net.path_latency(0, "server") == approx(0.026)
    assert net.bottleneck_bps(0, "server") == 1e6
    assert net.bottleneck_bps("server", 0) == 2e6
    assert net.capacity("cell0", 0) == 3e6


# ------------------------------------------------------------------------------ timing
def test_single_transfer_takes_latency_plus_bytes_over_bottleneck():
    env = simpy.Environment()
    net = Network(env, tree(1, up=1e6, down=2e6, lat=0.01, backhaul=1e9, bh_lat=0.005,
                            sv_lat=0.001))
    up = net.transfer(0, "server", 2_000_000)
    down = net.transfer("server", 0, 2_000_000)
    env.run()
    assert up.end_time == approx(0.016 + 2.0)
    assert down.end_time == approx(0.016 + 1.0)
    assert up.done.value is up and up.completed and not up.cancelled
    assert net.bytes_sent[0] == net.bytes_received[0] == 2_000_000
    assert net.bytes_on_link[(0, "cell0")] == 2_000_000
    assert net.bytes_on_link[("core", "server")] == 2_000_000


def test_zero_byte_transfer_completes_after_latency_only():
    env = simpy.Environment()
    net = Network(env, tree(1, lat=0.25, bh_lat=0.5, sv_lat=0.125))
    t = net.transfer(0, "server", 0)
    env.run()
    assert t.completed and t.end_time == 0.875
    assert net.recomputations == 0


def test_two_simultaneous_flows_share_a_link_equally():
    # Both uploads cross the 4 MB/s backhaul of cell0: 2 MB/s each, 6 MB take 3 s.
    env = simpy.Environment()
    net = Network(env, tree(2, lat=0.01, bh_lat=0.005, sv_lat=0.001))
    a = net.transfer(0, "server", 6_000_000)
    b = net.transfer(1, "server", 6_000_000)
    at(env, 1.0, lambda: rates.extend([a.rate, b.rate]))
    rates = []
    env.run()
    assert rates == [approx(2e6), approx(2e6)]
    assert a.end_time == approx(0.016 + 3.0)
    assert b.end_time == approx(0.016 + 3.0)
    assert net.recomputations == 1  # both started and both ended together


def test_staggered_flows_alone_then_shared_then_alone():
    # Backhaul 4 MB/s, latency 0.016 s.  A (8 MB) flows alone from 0.016 to 1.016: 4 MB left.
    # B (10 MB) joins: 2 MB/s each; A's 4 MB take 2 s -> A ends at 3.016 and B has 6 MB left,
    # which it sends alone at 4 MB/s in 1.5 s -> B ends at 4.516.
    env = simpy.Environment()
    net = Network(env, tree(2, lat=0.01, bh_lat=0.005, sv_lat=0.001))
    a = net.transfer(0, "server", 8_000_000)
    box = {}
    at(env, 1.0, lambda: box.setdefault("b", net.transfer(1, "server", 10_000_000)))
    env.run()
    b = box["b"]
    assert a.end_time == approx(3.016)
    assert b.end_time == approx(4.516)
    assert b.start_time == 1.0


def test_max_min_leaves_the_rest_of_a_shared_link_to_unconstrained_flows():
    # a is capped at 1 MB/s by its own link, b at 10 MB/s; they share x->s of 6 MB/s: rates 1 and 5.
    # a: 3 MB in 3 s.  b: 15 MB by t=3, the remaining 5 MB alone at 6 MB/s -> 3 + 5/6 s.
    env = simpy.Environment()
    net = Network(env, graph([("a", "x", 1e6, 0.0), ("b", "x", 10e6, 0.0),
                              ("x", "s", 6e6, 0.0)]))
    fa = net.transfer("a", "s", 3_000_000)
    fb = net.transfer("b", "s", 20_000_000)
    rates = []
    at(env, 1.0, lambda: rates.extend([fa.rate, fb.rate]))
    at(env, 3.5, lambda: rates.append(fb.rate))
    env.run()
    assert rates == [approx(1e6), approx(5e6), approx(6e6)]
    assert fa.end_time == approx(3.0)
    assert fb.end_time == approx(3.0 + 5 / 6)


def test_busy_server_downlink_slows_every_download():
    env = simpy.Environment()
    net = Network(env, tree(4, down=10e6, backhaul=1e9, server=8e6, cells=2))
    ts = [net.transfer("server", i, 4_000_000) for i in range(4)]
    env.run()
    assert [t.end_time for t in ts] == [approx(2.0)] * 4  # 8 MB/s / 4 = 2 MB/s each


def test_many_flows_starting_together_recompute_once():
    env = simpy.Environment()
    net = Network(env, tree(10, lat=0.01, cells=2))
    for i in range(10):
        net.transfer(i, "server", 1_000_000 * (i + 1))
    env.run(until=0.5)
    assert net.recomputations == 1
    assert len(net.active) == 10


# ------------------------------------------------------------------------------ cancellation
def test_cancelling_a_flow_speeds_up_the_others():
    # Two 8 MB uploads share 4 MB/s.  At t=1 B is cancelled having sent 2 MB; A has 6 MB left
    # and sends them alone in 1.5 s -> 2.5.
    env = simpy.Environment()
    net = Network(env, tree(2))
    a = net.transfer(0, "server", 8_000_000)
    b = net.transfer(1, "server", 8_000_000)
    at(env, 1.0, b.cancel)
    env.run()
    assert a.end_time == approx(2.5)
    assert b.cancelled and not b.done.triggered and b.end_time == 1.0
    assert b.delivered == approx(2e6)
    assert b.cancel() is False
    assert net.bytes_sent[1] == 0 and net.bytes_partial_sent[1] == 2_000_000
    assert net.bytes_partial_received["server"] == 2_000_000
    assert net.bytes_received["server"] == 8_000_000
    assert net.bytes_on_link[("cell0", "core")] == 10_000_000


def test_cancel_during_latency_never_flows():
    env = simpy.Environment()
    net = Network(env, tree(2, lat=1.0))
    a = net.transfer(0, "server", 4_000_000)
    b = net.transfer(1, "server", 4_000_000)
    at(env, 0.5, b.cancel)
    env.run()
    assert b.cancelled and b.state == "cancelled" and b.delivered == 0
    assert a.end_time == approx(1.0 + 1.0)  # a alone at 4 MB/s
    assert net.active == [] and net.bytes_partial_sent[1] == 0


def test_cancel_all_removes_every_transfer_touching_a_node():
    env = simpy.Environment()
    net = Network(env, tree(3, lat=0.1, cells=1))
    up0 = net.transfer(0, "server", 8_000_000)
    down0 = net.transfer("server", 0, 8_000_000)
    up1 = net.transfer(1, "server", 8_000_000)
    d2 = net.transfer(2, 0, 1_000)  # still in its latency phase at t=0
    done = []
    for t in (up0, down0, up1, d2):
        t.done.callbacks.append(lambda ev: done.append(ev.value))
    cancelled = net.cancel_all(0)
    assert cancelled == [up0, down0, d2]
    assert net.cancel_all(0) == []
    env.run()
    assert done == [up1]
    assert up1.end_time == approx(0.1 + 2.0)  # alone on the 4 MB/s backhaul


def test_cancel_all_of_a_relay_cancels_through_traffic():
    env = simpy.Environment()
    net = Network(env, tree(3, cells=2))
    t = net.transfer(0, 1, 1_000_000)  # 0 -> cell0 -> core -> cell1 -> 1
    net.transfer(2, "server", 1_000_000)
    assert len(net.cancel_all("cell1")) == 1 and t.cancelled


# ------------------------------------------------------------------------------ d2d
def test_d2d_route_bypasses_the_server():
    env = simpy.Environment()
    net = Network(env, tree(2, lat=0.01, cells=2, d2d_pairs=[(0, 1)], d2d_bps=2e6,
                            d2d_latency_s=0.002))
    assert net.path(0, 1) == [0, 1]
    t = net.transfer(0, 1, 1_000_000)
    env.run()
    assert t.end_time == approx(0.002 + 0.5)
    assert net.bytes_received["server"] == 0 and net.bytes_received[1] == 1_000_000
    assert set(net.bytes_on_link) == {(0, 1)}


# ------------------------------------------------------------------------------ laws
def check_max_min(rates, flows, capacity, rel=1e-9):
    """Feasible and every flow has a saturated link where its rate is the largest."""
    load = {}
    for r, links in zip(rates, flows, strict=True):
        for link in links:
            load[link] = load.get(link, 0.0) + r
    for link, total in load.items():
        assert total <= capacity[link] * (1 + rel), (link, total, capacity[link])
    for f, (r, links) in enumerate(zip(rates, flows, strict=True)):
        assert r > 0
        assert any(load[link] >= capacity[link] * (1 - rel)
                   and all(r >= rates[g] * (1 - rel) for g, other in enumerate(flows)
                           if link in other)
                   for link in links), (f, r, links)


def test_max_min_rates_by_hand():
    # Link 0 (cap 2) carries flows 0 and 1, link 1 (cap 9) flows 1, 2 and 3.  Link 0 fills first
    # at 1 each; link 1 has 8 left for flows 2 and 3: 4 each.  Link 2 caps flow 3 alone at 3,
    # which leaves 5 for flow 2.
    assert max_min_rates([[0, -1], [0, 1], [1, -1], [1, -1]], [2.0, 9.0]).tolist() == [1, 1, 4, 4]
    assert max_min_rates([[0, -1], [0, 1], [1, -1], [1, 2]], [2.0, 9.0, 3.0]).tolist() == \
        [1, 1, 5, 3]
    assert max_min_rates(np.zeros((0, 2), dtype=int), [1.0]).shape == (0,)


@st.composite
def flow_sets(draw):
    n_links = draw(st.integers(1, 8))
    capacity = draw(st.lists(st.sampled_from([1.0, 2.0, 3.0, 5.0, 7.5, 10.0, 0.3]),
                             min_size=n_links, max_size=n_links))
    flows = draw(st.lists(st.lists(st.integers(0, n_links - 1), min_size=1, max_size=4,
                                   unique=True), min_size=1, max_size=12))
    return flows, capacity


@settings(max_examples=150, deadline=None)
@given(flow_sets())
def test_max_min_rates_law(case):
    flows, capacity = case
    width = max(map(len, flows))
    matrix = np.array([f + [-1] * (width - len(f)) for f in flows])
    rates = max_min_rates(matrix, capacity)
    check_max_min(rates.tolist(), flows, capacity)


@st.composite
def scenarios(draw):
    n = draw(st.integers(3, 8))
    rnd = draw(st.randoms(use_true_random=False))
    tree_ = nx.random_labeled_tree(n, seed=rnd.randrange(2**31))
    extra = draw(st.lists(st.tuples(st.integers(0, n - 1), st.integers(0, n - 1)), max_size=4))
    bw = st.sampled_from([1.0, 2.0, 4.0, 5.0, 10.0])
    edges = []
    for u, v in list(tree_.edges) + [e for e in extra if e[0] != e[1]]:
        edges.append((u, v, draw(bw), draw(st.sampled_from([0.0, 0.1, 0.25]))))
        edges.append((v, u, draw(bw), draw(st.sampled_from([0.0, 0.1]))))
    flows = draw(st.lists(st.tuples(st.integers(0, n - 1), st.integers(0, n - 1),
                                    st.integers(0, 40), st.floats(0, 3)),
                          min_size=1, max_size=15).filter(
        lambda fs: all(s != d for s, d, _, _ in fs)))
    checks = draw(st.lists(st.floats(0.01, 20), min_size=1, max_size=6))
    cancels = draw(st.lists(st.tuples(st.integers(0, 14), st.floats(0, 5)), max_size=3))
    return edges, flows, checks, cancels


@settings(max_examples=60, deadline=None)
@given(scenarios())
def test_network_rates_are_feasible_and_max_min_at_all_times(case):
    edges, flows, checks, cancels = case
    env = simpy.Environment()
    net = Network(env, graph(edges))
    started = []
    for s, d, nbytes, t0 in flows:
        at(env, t0, lambda s=s, d=d, nb=nbytes: started.append(net.transfer(s, d, nb)))
    for k, t in cancels:
        at(env, t, lambda k=k: started[k].cancel() if k < len(started) else None)

    def check():
        active = net.active
        if not active:
            return
        paths = [list(pairwise(t.path)) for t in active]
        cap = {e: net.capacity(*e) for p in paths for e in p}
        check_max_min([t.rate for t in active], paths, cap)

    for t in checks:
        at(env, t + 1e-7, check)  # off any event instant: after its recomputation
    env.run()
    assert net.active == []
    for t in started:
        assert t.completed != t.cancelled
        if t.completed:
            assert t.end_time >= t.start_time + net.path_latency(t.src, t.dst) - 1e-12
            assert t.end_time >= t.start_time + t.nbytes / net.bottleneck_bps(t.src, t.dst) - 1e-9
    link_bytes = {}
    for t in started:
        moved = t.nbytes if t.completed else int(t.delivered)
        for e in pairwise(t.path):
            link_bytes[e] = link_bytes.get(e, 0) + moved
    assert net.bytes_on_link == {e: b for e, b in link_bytes.items() if b}


def test_server_downlink_may_differ_from_its_uplink():
    g = tree(2, server=3e6, server_down_bps=1e6, sv_lat=0.002)
    assert g.edges["server", "core"]["bandwidth"] == 3e6
    assert g.edges["core", "server"]["bandwidth"] == 1e6
    assert g.edges["core", "server"]["latency"] == g.edges["server", "core"]["latency"] == 0.002
    assert tree(1, server=3e6).edges["core", "server"]["bandwidth"] == 3e6
    with pytest.raises(ValueError, match="server_down_bps"):
        tree(1, server_down_bps=0.0)
    # an upload to the server is limited by the server's downlink (1 MB/s): 2 MB in 2 s
    env = simpy.Environment()
    net = Network(env, tree(1, up=10e6, backhaul=10e6, server=3e6, server_down_bps=1e6))
    tr = net.transfer(0, "server", 2_000_000)
    env.run()
    assert tr.end_time == approx(2.0)


def test_experiment_server_link_follows_the_server_profile():
    from crowdlearn.config import from_dict
    from crowdlearn.experiment import MBPS, _server_link
    from sim.profiles import TIERS

    edge = TIERS["edge_server"]
    link = _server_link(from_dict({}))
    assert link == {"server_bps": edge.up_bps, "server_down_bps": edge.down_bps,
                    "server_latency_s": edge.latency_s}
    tab = TIERS["tablet"]
    link = _server_link(from_dict({"fleet": {"server_tier": "tablet"}}))
    assert (link["server_bps"], link["server_down_bps"]) == (tab.up_bps, tab.down_bps)
    link = _server_link(from_dict({"fleet": {"server_mbps": 2000.0}}))
    assert link["server_bps"] == link["server_down_bps"] == 2000.0 * MBPS
    assert link["server_latency_s"] == edge.latency_s



def test_on_done_transfers_end_with_done_events_and_leave_no_reference_cycle():
    """``on_done`` runs where ``done``'s callbacks would (same times, same order), and a finished
    transfer whose ``done`` nobody read is freed by reference counting alone."""
    import gc

    from sim.network import Transfer

    def run(hook):
        env = simpy.Environment()
        net = Network(env, tree(3, lat=0.01, up=1e6, down=2e6, backhaul=1.5e6))
        ends = []
        for k, (src, dst, n, t0) in enumerate([(0, "server", 400_000, 0.0),
                                               (1, "server", 300_000, 0.05),
                                               ("server", 2, 500_000, 0.05),
                                               (2, "server", 0, 0.1)]):
            def go(src=src, dst=dst, n=n, k=k):
                t = net.transfer(src, dst, n)
                if hook:
                    t.on_done(lambda _ev, k=k: ends.append((k, env.now)))
                else:
                    t.done.callbacks.append(lambda _ev, k=k: ends.append((k, env.now)))
            at(env, t0, go)
        env.run()
        return ends

    gc.collect()
    gc.disable()
    try:
        with_hook = run(True)
        alive = sum(1 for o in gc.get_objects() if type(o) is Transfer)
    finally:
        gc.enable()
    assert with_hook == run(False) and len(with_hook) == 4
    assert alive == 0


def test_on_done_is_never_called_for_a_cancelled_transfer_and_done_read_late_is_processed():
    env = simpy.Environment()
    net = Network(env, tree(2))
    called = []
    t = net.transfer(0, "server", 10_000_000)
    t.on_done(lambda _ev: called.append(env.now))
    u = net.transfer(1, "server", 1000)
    u.on_done(lambda _ev: called.append(env.now))
    with pytest.raises(RuntimeError, match="already has an on_done"):
        u.on_done(print)
    at(env, 0.5, lambda: net.cancel(t))
    env.run()
    # both uploads share the 4 MB/s backhaul (2 MB/s each) until u's 1,000 bytes are in
    assert t.cancelled and u.completed and called == [approx(1000 / 2e6)]
    # ``done`` made after the end: already processed, valued with the transfer
    assert u.done.processed and u.done.value is u and not t.done.triggered
    with pytest.raises(RuntimeError, match="already ended"):
        u.on_done(print)
    assert env.run(u.done) is u


@settings(max_examples=300, deadline=None)
@given(st.floats(0, 1e15, allow_nan=False) | st.integers(0, 10 ** 6))
def test_the_completion_tolerance_uses_math_ulp_which_is_numpy_spacing_for_times_from_zero(now):
    """Network._on_timer's tolerance ``4 ulp(now)`` by math.ulp (no numpy call per wake-up):
    np.spacing's value for every time a simulation can have (>= 0)."""
    import math
    assert math.ulp(now) == float(np.spacing(now))
    assert now + 1e-9 + 4.0 * math.ulp(now) == now + 1e-9 + 4.0 * np.spacing(now)
