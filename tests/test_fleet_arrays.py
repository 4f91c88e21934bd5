"""Fleets held as arrays: column-wise profiles, the CellTree topology, driver state views, lazy
machines, and the max-min recomputation restricted to the flows a change touches."""

from __future__ import annotations

import pickle

import numpy as np
import pytest
import simpy
from hypothesis import given, settings
from hypothesis import strategies as st

from crowdlearn.config import from_dict
from crowdlearn.experiment import DeviceRngs, Simulation
from crowdlearn.protocols.fedavg import FedAvgClient
from sim.driver import Driver, Fleet, LazyMachines
from sim.machine import Machine, Start
from sim.monitor import Monitor
from sim.network import Network, build_topology, cell_tree, max_min_rates
from sim.profiles import TIERS, FleetProfiles, sample_fleet, sample_fleet_table

TREE = dict(device_up_bps=[1e6, 2e6, 3e6, 4e6, 5e6], device_down_bps=[5e6, 4e6, 3e6, 2e6, 1e6],
            device_latency_s=[0.01, 0.02, 0.0, 0.03, 0.015], cells=2, cell_of=[0, 1, 1, 0, 1],
            backhaul_bps=6e6, backhaul_latency_s=0.004, server_bps=8e6, server_latency_s=0.001,
            server_down_bps=7e6, d2d_pairs=[(0, 3)], d2d_bps=9e6, d2d_latency_s=0.002)


# ------------------------------------------------------------------------------ profiles
@pytest.mark.parametrize("jitter", [0.0, 0.25, 0.8])
def test_fleet_table_equals_the_list_of_profiles(jitter):
    mix = "low_end:1,mid_range:2,flagship:1,tablet:1,edge_server:1"
    table = sample_fleet_table(500, mix, rng=np.random.default_rng(4), jitter=jitter)
    fleet = sample_fleet(500, mix, rng=np.random.default_rng(4), jitter=jitter)
    assert list(table) == fleet and table == fleet and table[-1] == fleet[-1]
    assert FleetProfiles.from_profiles(fleet) == table
    assert table.tier_of(7) == fleet[7].tier
    assert table.columns["up_bps"].tolist() == [p.up_bps for p in fleet]
    with pytest.raises(IndexError, match="500"):
        table[500]


def test_fleet_maps_nodes_to_rows():
    table = FleetProfiles.from_profiles([TIERS["low_end"], TIERS["tablet"]])
    f = Fleet(table, {"server": TIERS["edge_server"]})
    assert list(f) == [0, 1, "server"] and len(f) == 3
    assert [f.row_of(k) for k in (0, np.int64(1), "server", 2, -1, "x")] == [0, 1, 2, None,
                                                                          None, None]
    assert f["server"] == TIERS["edge_server"] and f[1] == TIERS["tablet"]
    g = Fleet.from_mapping({"a": TIERS["low_end"], 5: TIERS["flagship"]})
    assert g.row_of("a") == 0 and g.row_of(5) == 1 and g[5] == TIERS["flagship"]
    assert f.columns["flops"].tolist() == [p.flops for p in f.values()]


def test_device_generators_are_the_spawned_streams():
    a = np.random.SeedSequence(7).spawn(3)[-1]
    b = np.random.SeedSequence(7).spawn(3)[-1]
    spawned = [np.random.default_rng(s).random() for s in a.spawn(20)]
    lazy = DeviceRngs(b, 20)
    assert [lazy[i].random() for i in reversed(range(20))] == spawned[::-1]
    assert len(lazy) == 20
    with pytest.raises(IndexError):
        lazy[20]


# ------------------------------------------------------------------------------ topology
def test_cell_tree_graph_is_build_topology():
    t = cell_tree(5, **TREE)
    g = build_topology(5, **TREE)
    assert list(t.graph.nodes(data=True)) == list(g.nodes(data=True))
    assert list(t.graph.edges(data=True)) == list(g.edges(data=True))
    cap, lat = t.link_arrays()
    for k in range(t.num_links):
        u, v = t.edge(k)
        assert t.link(u, v) == k
        assert g.edges[u, v] == {"bandwidth": cap[k], "latency": lat[k]}
    assert t.num_links == g.number_of_edges()
    assert t.link(0, "cell1") is None and t.link(1, 2) is None and t.link("x", "core") is None


def _replay(topology, plan):
    env = simpy.Environment()
    net = Network(env, topology)
    done = []

    def go(src, dst, nbytes, at, cancel_at):
        yield env.timeout(at)
        tr = net.transfer(src, dst, nbytes)
        tr.done.callbacks.append(lambda _e: done.append((tr.src, tr.dst, env.now)))
        if cancel_at is not None:
            yield env.timeout(cancel_at)
            tr.cancel()

    for args in plan:
        env.process(go(*args))
    env.run()
    return done, dict(net.bytes_on_link), dict(net.bytes_sent), net.recomputations


NODES = [0, 1, 2, 3, 4, "server", "cell0", "cell1"]


@settings(max_examples=25, deadline=None)
@given(st.lists(st.tuples(st.sampled_from(NODES), st.sampled_from(NODES),
                          st.integers(0, 3_000_000), st.floats(0, 2),
                          st.one_of(st.none(), st.floats(0.01, 1))),
                min_size=1, max_size=12))
def test_network_on_a_cell_tree_equals_the_network_on_its_graph(plan):
    plan = [p for p in plan if p[0] != p[1]]
    assert _replay(cell_tree(5, **TREE), plan) == _replay(build_topology(5, **TREE), plan)


def test_network_builds_no_graph_for_a_cell_tree():
    t = cell_tree(1000, device_up_bps=1e6, device_down_bps=1e6, device_latency_s=0.01, cells=4)
    net = Network(simpy.Environment(), t)
    assert net.path(17, "server") == [17, "cell1", "core", "server"]
    assert net.capacity("cell1", 17) == 1e6
    assert t._graph is None            # nobody asked for networkx yet
    assert net.graph.number_of_nodes() == 1006 and t._graph is not None


def test_cell_tree_path_latency_is_networkx_without_building_the_graph():
    import networkx as nx

    rng = np.random.default_rng(3)
    t = cell_tree(12, device_up_bps=1e6, device_down_bps=1e6, device_latency_s=rng.random(12) / 20,
                  cells=3, cell_of=rng.integers(0, 3, 12), backhaul_latency_s=0.004,
                  server_latency_s=0.0015)
    nodes = [*range(12), "server", "core", "cell0", "cell1", "cell2"]
    got = {(a, b): t.path_latency(a, b) for a in nodes for b in nodes}
    assert t._graph is None
    assert got == {(a, b): nx.shortest_path_length(t.graph, a, b, weight="latency")
                   for a in nodes for b in nodes}
    with pytest.raises(ValueError, match="d2d"):
        cell_tree(2, device_up_bps=1e6, device_down_bps=1e6, device_latency_s=0.0,
                  d2d_pairs=[(0, 1)]).path_latency(0, "server")


# ------------------------------------------------------------------------------ max-min groups
@settings(max_examples=60, deadline=None)
@given(st.lists(st.tuples(st.sampled_from(NODES), st.sampled_from(NODES),
                          st.integers(1, 3_000_000), st.floats(0, 1)),
                min_size=2, max_size=20),
       st.sampled_from([8e6, 1e9]), st.sampled_from([6e6, 2.5e6]))
def test_rates_are_the_max_min_rates_of_the_active_flows_after_every_change(plan, server,
                                                                           backhaul):
    # a big server link stays loose while cells fill up: the groups on either side refill alone
    env = simpy.Environment()
    net = Network(env, cell_tree(5, **{**TREE, "server_bps": server, "server_down_bps": server,
                                       "backhaul_bps": backhaul}))
    checked = []
    original = net._recompute

    def checked_recompute(ev=None):
        original(ev)
        flows = net.active
        if flows:
            paths = [t._route.links.tolist() for t in flows]
            width = max(map(len, paths))
            want = max_min_rates([p + [-1] * (width - len(p)) for p in paths], net._cap[:-1])
            np.testing.assert_allclose([t.rate for t in flows], want, rtol=1e-12)
            checked.append(len(flows))

    net._recompute = checked_recompute

    def go(src, dst, nbytes, at):
        yield env.timeout(at)
        net.transfer(src, dst, nbytes)

    for src, dst, nbytes, at in plan:
        if src != dst:
            env.process(go(src, dst, nbytes, at))
    env.run()
    assert net.active == []


def test_flows_that_share_no_link_keep_their_rates(monkeypatch):
    # an upload from cell 0 and a download to cell 1 share no link (each direction of a link is
    # its own link): the download's start and end leave the upload untouched, and neither
    # needs an exact refill
    import sim.network as netmod

    env = simpy.Environment()
    net = Network(env, build_topology(4, device_up_bps=1e6, device_down_bps=1e6,
                                      device_latency_s=0.0, cells=2, backhaul_latency_s=0.0,
                                      server_latency_s=0.0))
    up = net.transfer(0, "server", 10_000_000)
    env.run(until=1.0)
    rate_before, placed = up.rate, up._tok
    sizes = []
    real = netmod._progressive_filling
    monkeypatch.setattr(netmod, "_progressive_filling",
                        lambda lk, cap: sizes.append(lk.shape[1]) or real(lk, cap))
    down = net.transfer("server", 1, 500_000)
    env.run(until=2.0)
    assert down.completed and down.end_time == pytest.approx(1.5)
    assert up.rate == rate_before and up._tok == placed and sizes == []


def test_starts_and_ends_on_a_saturated_link_move_its_level_without_a_refill():
    # 40 uploads through one 4 MB/s backhaul, access links 1 MB/s: from the fifth on the
    # backhaul is the bottleneck; every start and end moves the cell's level, never a refill
    env = simpy.Environment()
    net = Network(env, cell_tree(40, device_up_bps=1e6, device_down_bps=1e6,
                                 device_latency_s=0.0, backhaul_bps=4e6, backhaul_latency_s=0.0,
                                 server_latency_s=0.0))
    flows = []
    for i in range(40):
        at = 0.01 * i
        env.process((lambda i=i, at=at: (yield env.timeout(at)) or
                     flows.append(net.transfer(i, "server", 200_000)))())
    env.run(until=0.395)
    assert [t.rate for t in net.active] == pytest.approx([1e5] * 40)
    env.run()
    assert all(t.completed for t in flows) and net.refills == 0
    # 8 MB cross the 4 MB/s backhaul: the last byte arrives after 2 s at the earliest
    assert net.bytes_received["server"] == 8_000_000
    assert max(t.end_time for t in flows) >= 2.0


# ------------------------------------------------------------------------------ driver
class Quiet(Machine):
    def __init__(self, node):
        super().__init__(node)
        self.seen = []

    def handle(self, event, now):
        self.seen.append(type(event).__name__)
        return []


def test_lazy_machines_are_made_on_first_input_and_see_start_first():
    n = 50
    env = simpy.Environment()
    net = Network(env, cell_tree(n, device_up_bps=1e6, device_down_bps=1e6,
                                 device_latency_s=0.0))
    lazy = LazyMachines({"server": Quiet("server")}, Quiet, range(n))
    profiles = {i: TIERS["mid_range"] for i in range(n)} | {"server": TIERS["edge_server"]}
    driver = Driver(env, net, lazy, profiles, executor=None, monitor=Monitor(range(n)),
                    rng=np.random.default_rng(0))
    driver.start()
    assert lazy.made == 0
    assert lazy["server"].seen == ["PeerJoined"] * n + ["Start"]
    driver.deliver(7, Start())             # nothing to tell a machine that does not exist
    assert lazy.made == 0
    driver._send("server", 7, "hello", 10)
    env.run()
    assert lazy.made == 1 and lazy[7].seen == ["Start", "Received"]
    assert driver.devices[7].online and driver.devices[7].online_s == 0.0


def test_device_state_views_read_and_write_the_columns():
    env = simpy.Environment()
    net = Network(env, build_topology(3, device_up_bps=1e6, device_down_bps=1e6,
                                      device_latency_s=0.0))
    driver = Driver(env, net, {}, {i: TIERS["low_end"] for i in range(3)}, executor=None,
                    monitor=Monitor(range(3)), rng=np.random.default_rng(0), server=None)
    driver.start()
    dev = driver.devices[2]
    assert dev.profile == TIERS["low_end"] and dev.battery_j == TIERS["low_end"].battery_j
    dev.drops["churn"] += 2
    assert driver.devices[2].drops == {"availability": 0, "battery": 0, "churn": 2}
    driver._set_flag(2, "avail_on", False)
    assert not driver.devices[2].online and driver.devices[2].drops["availability"] == 1
    assert set(driver.devices) == {0, 1, 2} and 3 not in driver.devices
    assert dev.running is None and not driver._jobs         # idle: no job table


class _TimeoutPerDevice(Driver):
    """The reference: one SimPy timeout per device's next availability transition."""

    def _schedule_availability(self, node, row):
        import math
        t = self.availability.next_change(node, self.env.now, bool(self._avail_on[row]),
                                          self.rng)
        if not math.isfinite(t):
            return
        ev = self.env.timeout(max(0.0, t - self.env.now))

        def toggle(_ev):
            self._set_flag(node, "avail_on", not self._avail_on[row])
            self._schedule_availability(node, row)

        ev.callbacks.append(toggle)


def test_availability_transitions_wait_on_one_timer_and_match_per_device_timeouts():
    # 300 devices with sessions: one SimPy event waits for all their transitions, and the
    # transitions happen when (and in the order) one timeout per device makes them
    from sim.availability import Sessions

    n, av = 300, Sessions(mean_online_s=5.0, mean_offline_s=3.0)
    runs = []
    for cls in (Driver, _TimeoutPerDevice):
        env = simpy.Environment()
        net = Network(env, cell_tree(n, device_up_bps=1e6, device_down_bps=1e6,
                                     device_latency_s=0.0))
        driver = cls(env, net, {}, {i: TIERS["low_end"] for i in range(n)}, executor=None,
                     monitor=Monitor(range(n)), availability=av,
                     rng=np.random.default_rng(7), server=None)
        seen = []
        real = driver._set_flag
        driver._set_flag = lambda node, flag, value, real=real, env=env, seen=seen: (
            seen.append((env.now, node, value)), real(node, flag, value))
        driver.start()
        runs.append((len(env._queue), seen))
        env.run(until=20.0)
    (queued, seen), (queued_ref, ref) = runs
    assert queued == 1 and queued_ref == n
    assert len(seen) > n and seen == ref


def test_simulation_device_rows_match_a_list_and_pickle():
    cfg = from_dict({"rounds": 2, "fleet": {"devices": 30}, "training": {"backend": "none"},
                     "data": {"dataset": "digits"}, "model": {"hidden": [8]},
                     "fedavg": {"clients_per_round": 5}})
    sim = Simulation(cfg)
    res = sim.run()
    rows = list(res.devices)
    assert len(rows) == 30 and rows[3]["tier"] == sim.profiles[3].tier
    assert sum(r["rounds_selected"] for r in rows) == sum(len(r["selected"])
                                                          for r in res.rounds)
    assert pickle.loads(pickle.dumps(res.devices)) == rows
    assert isinstance(sim.driver.machines[4], FedAvgClient)


@settings(max_examples=40, deadline=None)
@given(st.lists(st.tuples(st.booleans(), st.one_of(st.integers(0, 30),
                                                   st.sampled_from(["a", "b", "x"]))),
                max_size=60))
def test_fedavg_server_pool_stays_sorted_as_peers_come_and_go(changes):
    from crowdlearn.protocols.fedavg import FedAvgParams, FedAvgServer
    from sim.machine import PeerJoined, PeerLost

    server = FedAvgServer("server", [np.zeros(1)], FedAvgParams(rounds=1, clients_per_round=50),
                          rng=np.random.default_rng(0))
    for k, (join, peer) in enumerate(changes):
        server.handle(PeerJoined(peer) if join else PeerLost(peer), 0.0)
        if k == len(changes) // 2:
            server._sorted_pool()            # from here on it is kept up to date
    assert server._sorted_pool() == sorted(server.present, key=str)


@settings(max_examples=40, deadline=None)
@given(st.integers(1, 120),
       st.lists(st.tuples(st.booleans(), st.one_of(st.integers(0, 130),
                                                  st.sampled_from(["a", "x"]))), max_size=40))
def test_fedavg_bulk_join_selects_what_one_peer_joined_per_device_selects(n, changes):
    # peers_joined(range(n)) is n PeerJoined inputs in one: same pool, same sampled cohorts
    from crowdlearn.protocols.fedavg import FedAvgParams, FedAvgServer
    from sim.machine import PeerJoined, PeerLost

    def server():
        return FedAvgServer("server", [np.zeros(1)],
                            FedAvgParams(rounds=50, clients_per_round=7),
                            rng=np.random.default_rng(n))

    one, bulk = server(), server()
    for p in range(n):
        one.handle(PeerJoined(p), 0.0)
    bulk.peers_joined(range(n), 0.0)
    assert bulk.present == set() and bulk._bulk is not None
    picks = []
    for s in (one, bulk):
        s.handle(Start(), 0.0)
        got = [s.selected]
        for join, peer in changes:
            s.handle(PeerJoined(peer) if join else PeerLost(peer), 1.0)
            s._close_round(1.0, reason="deadline")
            got.append(s.selected)
        picks.append(got)
    assert picks[0] == picks[1]
    assert list(bulk._sorted_pool()) == list(one._sorted_pool())


def test_a_device_runs_its_jobs_one_at_a_time_and_a_cancelled_queued_job_never_runs():
    from dataclasses import dataclass

    from crowdlearn.training.jobs import Executor
    from sim.machine import CancelJob, JobDone, RunJob, TimerFired

    @dataclass(frozen=True)
    class Task:
        flops: float
        kind: str = "noop"
        memory_bytes: int = 0

    flops = TIERS["mid_range"].flops

    class Three(Machine):
        def __init__(self, node):
            super().__init__(node)
            self.done, self.timer = [], None

        def handle(self, event, now):
            if isinstance(event, Start):
                self.timer = 1.0
                return [RunJob(k, Task(d * flops)) for k, d in ((1, 10.0), (2, 5.0), (3, 2.0))]
            if isinstance(event, TimerFired):
                self.timer = None
                return [CancelJob(2)]
            if isinstance(event, JobDone):
                self.done.append((event.job_id, now))
            return []

        def next_timer(self):
            return self.timer

    env = simpy.Environment()
    net = Network(env, cell_tree(1, device_up_bps=1e6, device_down_bps=1e6,
                                 device_latency_s=0.0))
    mon = Monitor(range(1))
    m = Three(0)
    driver = Driver(env, net, {0: m}, {0: TIERS["mid_range"]},
                    executor=Executor({"noop": lambda jobs: [None] * len(jobs)}), monitor=mon,
                    rng=np.random.default_rng(0), server=None)
    driver.start()
    driver.run()
    assert m.done == [(1, pytest.approx(10.0)), (3, pytest.approx(12.0))]
    assert mon.dev[0]["busy_s"] == pytest.approx(12.0)      # job 2 never ran
    assert not driver._jobs and not driver._running and not driver._queued


def test_parked_fedavg_clients_resume_their_generator_streams():
    from crowdlearn.protocols.fedavg_family import _rng_from_state, _rng_state

    g = np.random.default_rng(11)
    g.random(3), g.integers(0, 5, size=7)
    h = _rng_from_state(_rng_state(g))
    assert h.random(5).tolist() == g.random(5).tolist()
    cfg = from_dict({"rounds": 3, "fleet": {"devices": 40}, "training": {"backend": "none"},
                     "data": {"dataset": "digits"}, "model": {"hidden": [8]},
                     "fedavg": {"clients_per_round": 6}})
    sim = Simulation(cfg)
    sim.run()
    lazy = sim.driver.machines
    assert lazy.made > 0 and not lazy._made          # every selected client is parked now
    assert isinstance(lazy[next(iter(lazy._parked))], FedAvgClient)


def test_a_run_leaves_no_cyclic_garbage_and_restores_the_collector_thresholds():
    """Driver.run makes full collections rarer only because its transfers and jobs are freed
    by reference counting: a FedAvg run produces no cyclic garbage from the driver or network."""
    import gc

    from sim.driver import _Job
    from sim.network import Transfer

    cfg = from_dict({"rounds": 3, "fleet": {"devices": 40}, "training": {"backend": "none"},
                     "data": {"dataset": "digits"}, "model": {"hidden": [8]},
                     "fedavg": {"clients_per_round": 10}})
    sim = Simulation(cfg)
    before = gc.get_threshold()
    gc.collect()
    gc.disable()
    try:
        sim.run()
        gc.set_debug(gc.DEBUG_SAVEALL)
        gc.collect()
        cyclic = [o for o in gc.garbage if type(o) in (Transfer, _Job)]
    finally:
        gc.set_debug(0)
        gc.garbage.clear()
        gc.enable()
    assert sim.monitor.messages >= 60 and cyclic == []
    assert gc.get_threshold() == before
