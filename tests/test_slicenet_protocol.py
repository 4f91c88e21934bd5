"""Crowdlearning in the fleet: layout, sliding window, and full runs on small fleets."""
import numpy as np
import pytest

from crowdlearn.experiment import Simulation
from crowdlearn.protocols.crowdlearning.machines import (
    DOMINATOR,
    SlidingWindow,
    description_for,
    layout_from_plan,
    whole_model_layout,
)
from sim import wire
from sim.machine import Received
from slicenet.graph import paper_mlp_description, traffic_per_sample
from slicenet.partition import partition
from tests.conftest import small_config


@pytest.mark.parametrize("n", [5, 10])
def test_layout_traffic_and_ownership_match_the_plan(n):
    desc = description_for([400, 200, 100], 784, 10)
    graph = desc.graph()
    plan = partition(graph, n)
    lay = layout_from_plan(desc, graph, plan)
    assert lay.pair_floats.sum() == traffic_per_sample(graph, plan.assignment).floats
    # source ownership: the dominator holds input->hidden-1 (313,600) and the output bias
    assert lay.params_per_owner[DOMINATOR + 1] == 784 * 400 + 10
    assert lay.params_per_owner.sum() == 784 * 400 + 400 * 200 + 200 * 100 + 100 * 10 + 710
    # a piece owns its neurons' outgoing weights and biases
    for p in range(n):
        owned = plan.pieces[p].weights if hasattr(plan.pieces[p], "weights") else None
        if owned is not None:
            biases = int(sum(np.sum(u == p) for u in lay.piece_of_unit))
            assert lay.params_per_owner[p + 1] == owned + biases
    assert np.all(np.diag(lay.pair_floats) == 0)
    assert lay.flops_share([DOMINATOR] + list(range(n))) == pytest.approx(1.0)


def test_paper_mlp_batchnorm_parameters_follow_their_neurons():
    desc = paper_mlp_description()
    graph = desc.graph()
    plan = partition(graph, 5)
    lay = layout_from_plan(desc, graph, plan)
    # dominator: input BN (4 x 784), input->hidden-1 kernel, output bias
    assert lay.params_per_owner[0] == 4 * 784 + 784 * 400 + 10
    for p in range(5):      # each piece: its neurons' outgoing rows, biases and 4 BN values
        units = sum(int(np.sum(u == p)) for u in lay.piece_of_unit)
        outgoing = sum(int(np.sum(u == p)) * w for u, w in zip(lay.piece_of_unit, (200, 100, 10), strict=True))
        assert lay.params_per_owner[p + 1] == outgoing + 5 * units


def test_whole_model_layout_has_no_traffic():
    lay = whole_model_layout(description_for([32], 64, 10))
    assert lay.pair_floats.sum() == 0 and lay.params_per_owner[0] == lay.num_params


def test_sliding_window_counts_and_threshold():
    w = SlidingWindow(np.zeros(4, np.float32), omega=3)
    w.upload(np.array([0, 1, 2]), np.array([1.0, 1.0, 1.0]), tick=1)
    w.upload(np.array([0, 1]), np.array([3.0, 5.0]), tick=2)
    w.upload(np.array([0]), np.array([5.0]), tick=3)
    idx, val = w.query(np.arange(4), tick=3, min_count=0)     # tau = 0: all in the window
    assert idx.tolist() == [0, 1, 2] and val.tolist() == [3.0, 3.0, 1.0]
    idx, _ = w.query(np.arange(4), tick=3, min_count=1.5)     # more than 1.5 uploads
    assert idx.tolist() == [0, 1]
    assert w.query(np.arange(4), tick=3, min_count=3)[0].size == 0   # tau = 1: nothing
    idx, val = w.query(np.arange(4), tick=4, min_count=0)     # tick 1 slid out
    assert idx.tolist() == [0, 1] and val.tolist() == [4.0, 5.0]
    w.upload(np.array([0]), np.array([7.0]), tick=4)          # ring buffer overwrites oldest
    assert w.query(np.array([0]), tick=4, min_count=0)[1].tolist() == [5.0]


def crowd_config(**kw):
    base = {"protocol": "crowdlearning", "rounds": 2, "fleet.devices": 10,
            "model.hidden": [32, 16], "slicenet.group_size": 5, "slicenet.lr": 0.1}
    base.update(kw)
    return small_config(**base)


def test_crowdlearning_run_trains_groups_and_counts_relayed_traffic():
    sim = Simulation(crowd_config(rounds=3))
    sent = []
    orig = sim.network.transfer
    sim.network.transfer = lambda s, d, n: (sent.append(n), orig(s, d, n))[1]
    res = sim.run()
    assert res.summary["completed"] and len(res.metrics) == 3
    acc = [r["accuracy"] for r in res.metrics]
    assert acc[-1] > acc[0] and acc[-1] > 0.3
    # every byte counted is a delivered message's encoded size (nothing was cancelled here)
    assert res.summary["bytes_total"] == sum(sent)
    # 2 groups x 5 passes x 3 epochs, each a job per participant (the dominator and 4
    # followers), batched across groups
    assert res.summary["jobs_run"]["slice_pass"] == 30 * 5
    assert res.summary["batches_run"]["slice_pass"] < 30
    plan = sim.ctx.extra["plan"]
    # relayed boundary traffic at least the plan's traffic per sample x samples, twice (2 hops)
    samples = sum(len(p) for p in sim.parts)
    assert res.summary["bytes_total"] > 2 * plan.traffic_bytes_per_sample * samples * 3 * 0.9


def test_peer_to_peer_mode_keeps_slice_traffic_off_the_server():
    relayed = Simulation(crowd_config()).run().summary
    p2p_sim = Simulation(crowd_config(**{"slicenet.peer_to_peer": True}))
    p2p = p2p_sim.run().summary
    assert p2p["completed"]
    server_bytes = p2p_sim.network.bytes_received.get("server", 0) + \
        p2p_sim.network.bytes_sent.get("server", 0)
    assert server_bytes < 0.2 * p2p["bytes_total"]
    assert p2p["bytes_total"] < relayed["bytes_total"]


def test_a_disconnected_follower_is_replaced_by_a_dummy_and_training_continues():
    # 3 pieces in groups of 5: each group keeps one dummy; churn knocks followers out mid-pass
    cfg = crowd_config(**{"rounds": 3, "slicenet.pieces": 3, "availability.churn": 0.3,
                          "availability.churn_offline_s": 30.0})
    sim = Simulation(cfg)
    res = sim.run()
    assert res.summary["takeovers"] > 0
    assert res.summary["completed"] and len(res.metrics) == 3
    assert res.metrics[-1]["accuracy"] > 0.2


def test_ssgd_baseline_has_no_slice_traffic():
    res = Simulation(crowd_config(protocol="ssgd")).run()
    s = res.summary
    assert s["completed"] and "slice_balance" not in s
    # only sharing traffic: each device uploads theta of all weights and downloads
    n_params = 64 * 32 + 32 + 32 * 16 + 16 + 16 * 10 + 10
    assert s["bytes_up"] < 10 * 2 * (8 * n_params + 200)


def test_same_seed_same_crowdlearning_metrics():
    a = Simulation(crowd_config()).run().metrics
    b = Simulation(crowd_config()).run().metrics
    assert a == b


def test_tau_one_and_theta_zero_both_mean_no_collaboration():
    """τ = 1 downloads nothing and θ = 0 uploads nothing: the groups train alone either way."""
    no_down = Simulation(crowd_config(**{"slicenet.tau": 1.0})).run()
    no_up = Simulation(crowd_config(**{"slicenet.theta": 0.0})).run()
    shared = Simulation(crowd_config(**{"slicenet.tau": 0.0})).run()
    acc = [[r["accuracy"] for r in res.metrics] for res in (no_down, no_up, shared)]
    assert acc[0] == acc[1]
    assert acc[2] != acc[0]
    assert no_down.summary["bytes_up"] > no_up.summary["bytes_up"]


def test_handover_payload_decrypts_to_the_pieces_real_weights():
    from crowdlearn.crypto.sealing import Header, KeyRing, SealError
    from crowdlearn.protocols.crowdlearning.machines import (
        KeyDirectory,
        PassPlan,
        Relay,
        SliceDevice,
        SliceParams,
    )

    desc = description_for([6, 4], 5, 3)
    graph = desc.graph()
    plan = partition(graph, 2, method="contiguous")
    lay = layout_from_plan(desc, graph, plan)
    rng = np.random.default_rng(0)
    weights = [rng.normal(size=s).astype(np.float32) for s in lay.shapes]
    rings = {n: KeyRing(n) for n in ("server", 7, 9, 11)}
    dev = SliceDevice(7, lay, 0, np.arange(4), SliceParams(epochs=1, group_size=3, pieces=2),
                      ring=rings[7], rng=rng)
    flat = np.concatenate([w.reshape(-1) for w in weights])
    dev.hold(1, flat[lay.owned_flat([1])])     # as the server's initial checkpoint gives it
    # the server vouches for the group's cards
    dev.handle(Received("server", KeyDirectory(0, (-1, 9, 11), tuple(
        rings[n].card().to_bytes() for n in ("server", 9, 11)))), 0.0)
    for n in (9, 11):
        rings[n].learn(7, rings[7].card())
    # a hand-over carries the weights and their |gradient| sums this epoch (none yet: zeros)
    nbytes = 4 * int(lay.params_per_owner[1 + 1]) + 4 * len(lay.owned_flat([1], trainable=True))
    eff = dev.handle(Received("server", PassPlan(0, 1, "follower", (0,), ((9, nbytes, 1),), 0,
                                                 (), 0, 10.0, 100, ())), 0.0)
    relay = next(e.message for e in eff if hasattr(e, "message") and isinstance(e.message, Relay))
    data = wire.encode(relay)
    assert len(data) == wire.size(relay)
    sealed = wire.decode(data).payload
    flat = np.concatenate([w.reshape(-1) for w in weights])
    h = Header("handover", 0, 1, owner=1)    # the owner is bound, not sent
    # the recipient and the other member (a future dummy) open it; the server cannot
    for n in (9, 11):
        plain = np.frombuffer(rings[n].open_escrow(7, h, sealed), np.float32)
        k = len(lay.owned_flat([1]))
        np.testing.assert_array_equal(plain[:k], flat[lay.owned_flat([1])])
        assert plain.size == k + len(lay.owned_flat([1], trainable=True)) and not plain[k:].any()
    rings["server"].learn(7, rings[7].card())
    with pytest.raises(SealError):
        rings["server"].open_escrow(7, h, sealed)


def test_every_sharing_member_gets_a_download_that_includes_its_groups_upload():
    # two groups, omega = 2, tau = 0: a weight uploaded by either group is sent back; before the
    # upload answered the download, a separate request overtook the upload and downloads were empty
    sim = Simulation(crowd_config(**{"slicenet.tau": 0.0, "slicenet.omega": 2}))
    res = sim.run()
    k = res.summary["messages_by_kind"]
    assert k["Download"] == k["Upload"] > 0
    from crowdlearn.protocols.crowdlearning.machines import Download
    empty = wire.size(Download(0, 0, np.zeros(0, np.int32), np.zeros(0, np.float32)))
    assert res.summary["bytes_by_kind"]["Download"] > 10 * empty * k["Download"]


def test_proximity_grouping_puts_devices_of_a_cell_together():
    sim = Simulation(crowd_config(**{"slicenet.grouping": "proximity", "rounds": 1}))
    cell = {d: next(iter(sim.ctx.graph.successors(d))) for d in range(10)}
    groups = sim.ctx.extra["groups"]
    assert all(len({cell[d] for d in g}) == 1 for g in groups)     # 2 cells of 5, groups of 5
    rnd = Simulation(crowd_config(**{"rounds": 1})).ctx.extra["groups"]
    assert any(len({cell[d] for d in g}) > 1 for g in rnd)


def _sharing_server(groups: int, *, epochs: int = 1, tau: float = 0.5):
    """A hand-driven S-SGD server (every device its own group, no slicing) brought to the
    sharing step of epoch 0: keys announced, every lone dominator's pass done."""
    from itertools import chain

    from crowdlearn.crypto.sealing import KeyRing
    from crowdlearn.protocols.crowdlearning.machines import (
        KeyAnnounce,
        PassDone,
        PassPlan,
        SliceParams,
        SlicingServer,
    )
    from sim.machine import PeerJoined, Send, Start

    lay = whole_model_layout(description_for([4], 3, 2))
    init = [np.zeros(s, np.float32) for s in lay.shapes]
    members = list(range(1, groups + 1))
    server = SlicingServer("server", lay, [[d] for d in members],
                           SliceParams(epochs=epochs, group_size=1, pieces=0, tau=tau), init,
                           data_sizes={d: 8 for d in members},
                           ring=KeyRing("server"), rng=np.random.default_rng(0))
    out = list(chain.from_iterable(server.handle(PeerJoined(d), 0.0) for d in members))
    out += server.handle(Start(), 0.0)
    for d in members:
        out += server.handle(Received(d, KeyAnnounce(KeyRing(d).card().to_bytes())), 0.0)
    plans = [(e.dst, e.message) for e in out
             if isinstance(e, Send) and isinstance(e.message, PassPlan)]
    assert sorted(d for d, _ in plans) == members
    requests = []
    for d, plan in plans:
        requests += server.handle(Received(d, PassDone(plan.group, plan.attempt)), 1.0)
    return server, lay, members, requests


@pytest.mark.parametrize("order", [(0, 1, 2), (2, 1, 0), (1, 2, 0)])
def test_downloads_wait_for_every_groups_upload_and_do_not_depend_on_arrival_order(order):
    from crowdlearn.protocols.crowdlearning.machines import Download, ShareRequest, Upload
    from sim.machine import Send

    server, lay, members, requests = _sharing_server(3)
    asked = {e.dst: e.message for e in requests if isinstance(e, Send)
             and isinstance(e.message, ShareRequest)}
    assert sorted(asked) == members
    owned = lay.owned_flat([DOMINATOR], trainable=True)
    # group g uploads weights owned[g:g + 3] with values 10·(g + 1) + position
    ups = {g: (owned[g:g + 3].astype(np.int32), 10.0 * (g + 1) + np.arange(3, dtype=np.float32))
           for g in range(3)}
    answers = []
    for k, g in enumerate(order):
        got = server.handle(Received(members[g], Upload(g, 0, *ups[g])), 2.0 + k)
        answers += [(e.dst, e.message) for e in got if isinstance(e, Send)]
        if k < 2:
            assert answers == []          # other groups' uploads of the epoch are not all in
    # every member answered once, in group order, whatever the arrival order
    assert [d for d, _ in answers] == members
    # ω = 3 groups, τ = 0.5: a weight uploaded by more than 1.5 groups comes back with the mean
    # of its uploads; owned[1] by groups 0 and 1 (11, 20), owned[2] by all three (12, 21, 30),
    # owned[3] by groups 1 and 2 (22, 31)
    want = {owned[1]: (11 + 20) / 2, owned[2]: (12 + 21 + 30) / 3, owned[3]: (22 + 31) / 2}
    for _, msg in answers:
        assert isinstance(msg, Download)
        assert dict(zip(msg.indices.tolist(), msg.values.tolist(), strict=True)) == \
            pytest.approx(want)


def test_a_group_waiting_for_members_does_not_hold_up_the_other_groups_downloads():
    from crowdlearn.protocols.crowdlearning.machines import Download, Upload
    from sim.machine import Send

    server, lay, members, _ = _sharing_server(2)
    server.groups[1].phase = "waiting"     # as if too few of its members were online
    owned = lay.owned_flat([DOMINATOR], trainable=True)
    got = server.handle(Received(members[0], Upload(0, 0, owned[:2].astype(np.int32),
                                                     np.ones(2, np.float32))), 2.0)
    assert [type(e.message) for e in got if isinstance(e, Send)] == [Download]


def test_a_pass_lasts_its_slowest_stage_plus_fill_plus_the_runtimes_latency_chain():
    """Hand-computed pass time under SimPy, peer-to-peer: a participant that starts its part at
    t is busy until ``e = max(t + c, arrivals)`` — its compute ``c`` (FLOPs ÷ its speed) and the
    boundary payloads it receives (sent when their senders start, each arriving ``ℓ + bytes ÷
    rate`` later over its d2d link: the slowest stage sets the pace) — then sends PassDone at
    ``e + (e − t)·(S − 1)/B + S·ℓ``: the pipeline's fill of ``S − 1`` batch times (S = 2(L + 1)
    stages, B batches of the dominator's data) and the latency chain ``S·ℓ`` over the d2d links
    (ℓ = fleet.d2d_latency_s), which the driver charges: the server is given no latency and
    sends none."""
    import math

    from crowdlearn.protocols.crowdlearning.machines import (
        PassDone,
        PassPlan,
        Relayed,
        SlicePassJob,
    )
    from sim.machine import RunJob, Send

    ell, mbps = 0.05, 80.0
    cfg = crowd_config(**{"rounds": 1, "fleet.devices": 3, "fleet.mix": "mid_range",
                          "fleet.jitter": 0.0, "fleet.d2d_mbps": mbps, "fleet.d2d_latency_s": ell,
                          "slicenet.group_size": 3, "slicenet.peer_to_peer": True,
                          "fedavg.clients_per_round": 3})
    sim = Simulation(cfg)
    log = []
    orig = sim.driver._apply

    def apply(node, effects):
        log.extend((sim.env.now, node, e) for e in effects)
        return orig(node, effects)
    sim.driver._apply = apply
    assert sim.run().summary["completed"]
    stages = 2 * (len(cfg.model.hidden) + 1)
    parts = sim.ctx.parts
    starts, done, plans, arrivals = {}, {}, {}, {}
    for t, node, e in log:
        if isinstance(e, Send) and isinstance(e.message, Relayed) and e.message.kind == "boundary":
            at = t + ell + wire.size(e.message) / (mbps * 1e6 / 8)
            key = (e.dst, e.message.attempt)
            arrivals[key] = max(arrivals.get(key, 0.0), at)
        if isinstance(e, RunJob) and isinstance(e.job, SlicePassJob):
            starts[(node, e.job_id)] = (t, e.job)
        elif isinstance(e, Send) and isinstance(e.message, PassDone):
            done[(node, e.message.attempt)] = t
        elif isinstance(e, Send) and isinstance(e.message, PassPlan):
            plans[(e.dst, e.message.attempt)] = e.message
            assert e.message.links                   # the pass's links, no time
    assert len(starts) == len(done) >= 4             # two passes of two participants at least
    for (node, attempt), (t, job) in starts.items():
        dom = next(d for (d, a), p in plans.items() if a == attempt and p.role == "dominator")
        batches = math.ceil(len(parts[dom]) / cfg.slicenet.batch_size)
        end = max(t + job.flops / sim.driver.devices[node].profile.flops,
                  arrivals[(node, attempt)])
        want = end + (end - t) * (stages - 1) / batches + stages * ell
        assert done[(node, attempt)] == pytest.approx(want, rel=1e-12, abs=1e-12)


def test_the_driver_prices_a_relayed_latency_chain_from_the_topology():
    """Relayed, a link's hop is ``src → server → dst``: the chain is S × the slowest of
    ``latency(src, server) + latency(dst, server)`` (the cell tree's path latencies, which the
    server was handed before issue 8); a job that declares no chain waits nothing."""
    from crowdlearn.protocols.crowdlearning.passjob import PipelineDrain

    sim = Simulation(crowd_config(**{"rounds": 1}))
    lat = {d: sim.ctx.path_latency(d, "server") for d in range(sim.config.fleet.devices)}
    links = ((0, 3), (3, 0), (2, 7), (9, 1))
    want = 6 * max(lat[a] + lat[b] for a, b in links)
    got = sim.driver._latency_chain_s(PipelineDrain(6, "server", links))
    assert got == pytest.approx(want, rel=1e-12) and got > 0
    assert sim.driver._latency_chain_s(PipelineDrain(6, "server", ())) == 0.0
    assert sim.driver._latency_chain_s(object()) == 0.0
