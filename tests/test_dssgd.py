"""DSSGD: machines driven by hand, wire sizes, and small fleets for each order of access."""
import math

import numpy as np
import pytest

from crowdlearn.protocols.dssgd import (
    CONFIG_SECTION,
    DownloadRequest,
    DSSGDParams,
    DSSGDParticipant,
    DSSGDServer,
    ParamsDownload,
    SparseUpdate,
    TurnDecline,
    TurnGrant,
    cross_check,
    flatten,
    select_random_threshold,
    select_topk,
    unflatten,
)
from crowdlearn.training.jobs import TrainJob
from crowdlearn.training.models import mlp
from sim import wire
from sim.machine import (
    CancelJob,
    Disconnected,
    Halt,
    JobDone,
    JobFailed,
    PeerJoined,
    PeerLost,
    Received,
    Report,
    RunJob,
    Send,
    Start,
    TimerFired,
)


def sends(effects):
    return [e for e in effects if isinstance(e, Send)]


def reports(effects, name):
    return [e for e in effects if isinstance(e, Report) and e.name == name]


def upd(turn, idx, vals):
    return SparseUpdate(turn, np.asarray(idx, np.int32), np.asarray(vals, np.float32))


def make_server(n=10, participants=(0, 1, 2), present=None, **kw):
    kw.setdefault("rounds", 2)
    if not kw.get("dp"):
        kw.setdefault("gamma", math.inf)     # these tests upload unclipped values
    s = DSSGDServer("server", [np.zeros(n, np.float32)], list(participants), DSSGDParams(**kw),
                    rng=np.random.default_rng(0))
    for p in participants if present is None else present:
        s.handle(PeerJoined(p), 0.0)
    return s


def take_turn(s, p, idx, vals, now=1.0, theta_d=1.0, criterion="most_updated"):
    """Participant ``p`` requests a download and uploads; returns (download msg, effects)."""
    (dl,) = sends(s.handle(Received(p, DownloadRequest(theta_d, criterion)), now))
    assert dl.dst == p
    return dl.message, s.handle(Received(p, upd(dl.message.turn, idx, vals)), now + 0.5)


# ---------------------------------------------------------------- wire sizes
@pytest.mark.parametrize("k", [0, 1, 17, 1000])
def test_sparse_update_costs_four_bytes_per_index_and_per_value_plus_a_header(k):
    rng = np.random.default_rng(k)
    msg = upd(3, rng.choice(10_000, k, replace=False), rng.normal(size=k))
    data = wire.encode(msg)
    assert wire.size(msg) == len(data) == 4 * k + 4 * k + 25
    back = wire.decode(data)
    assert back.turn == 3 and np.array_equal(back.indices, msg.indices)
    assert np.array_equal(back.values, msg.values)


def test_download_sizes_sparse_and_dense():
    sparse = ParamsDownload(1, np.arange(5, dtype=np.int32), np.ones(5, np.float32))
    dense = ParamsDownload(1, None, np.ones(100, np.float32))
    assert wire.size(sparse) == len(wire.encode(sparse)) == 25 + 8 * 5
    assert wire.size(dense) == len(wire.encode(dense)) == 2 + 9 + 1 + 7 + 400
    assert wire.decode(wire.encode(dense)).indices is None
    for m in (TurnGrant(4), DownloadRequest(0.5, "most_recent"), TurnDecline(2, "memory")):
        assert wire.size(m) == len(wire.encode(m))
    with pytest.raises(ValueError):
        SparseUpdate(0, np.arange(3, dtype=np.int64), np.ones(3, np.float32))   # int32 only
    with pytest.raises(ValueError):
        SparseUpdate(0, np.arange(3, dtype=np.int32), np.ones(2, np.float32))
    with pytest.raises(ValueError):
        DownloadRequest(0.0, "most_updated")


# ---------------------------------------------------------------- selection (pure)
def test_topk_selects_the_largest_changes_and_never_zeros():
    dw = np.array([0.0, -0.9, 0.1, 0.5, 0.0, -0.05, 0.3])
    assert select_topk(dw, 3, np.random.default_rng(0)).tolist() == [1, 3, 6]
    assert select_topk(dw, 10, np.random.default_rng(0)).tolist() == [1, 2, 3, 5, 6]


def test_random_threshold_samples_among_changes_above_tau():
    dw = np.random.default_rng(1).normal(0, 1, 1000)
    above = set(np.flatnonzero(np.abs(dw) > 0.5).tolist())
    a = select_random_threshold(dw, 50, 0.5, np.random.default_rng(2))
    b = select_random_threshold(dw, 50, 0.5, np.random.default_rng(2))
    c = select_random_threshold(dw, 50, 0.5, np.random.default_rng(3))
    assert len(a) == 50 and set(a.tolist()) <= above and np.array_equal(a, b)
    assert not np.array_equal(a, c)
    assert set(select_random_threshold(dw, 10**6, 0.5, np.random.default_rng(0))) == above


def test_flatten_round_trips_layer_shapes():
    w = mlp(4, [3], 2).init_weights(np.random.default_rng(0))
    flat = flatten(w)
    assert flat.shape == (4 * 3 + 3 + 3 * 2 + 2,)
    assert all(np.array_equal(a, b) for a, b in zip(unflatten(flat, [x.shape for x in w]), w, strict=True))


# ---------------------------------------------------------------- the server
def test_server_adds_uploads_and_counts_updates_per_parameter():
    s = make_server(n=6, participants=(0,), rounds=3, theta_u=0.5)
    s.handle(Start(), 0.0)
    _, eff = take_turn(s, 0, [1, 4], [0.5, -0.25])
    (rep,) = reports(eff, "dssgd_upload")
    assert rep.tag("device") == 0 and rep.tag("entries") == 2
    _, eff = take_turn(s, 0, [4, 5], [1.0, 2.0], now=2.0)
    np.testing.assert_allclose(s.weights, [0, 0.5, 0, 0, 0.75, 2.0])
    assert s.counters.tolist() == [0, 1, 0, 0, 2, 1]
    assert s.last_update.tolist() == [-1, 0, -1, -1, 1, 1]
    # a global model per cycle, in the model's layer shapes
    (gm,) = reports(eff, "global_model")
    assert gm.tag("round") == 1 and gm.value[0].shape == (6,)


@pytest.mark.parametrize("idx,vals,why", [
    ([1, 2, 3, 4], [1, 1, 1, 1], "entries > c"),
    ([1, 99], [1, 1], "index out of range"),
    ([2, 2], [1, 1], "repeated index"),
    ([1, 2], [1, np.nan], "non-finite value"),
])
def test_server_drops_malformed_uploads_and_moves_on(idx, vals, why):
    s = make_server(n=10, participants=(0, 1), theta_u=0.3)
    s.handle(Start(), 0.0)
    _, eff = take_turn(s, 0, idx, vals)
    (bad,) = reports(eff, "bad_update")
    assert why in bad.value
    assert not s.weights.any() and not s.counters.any()
    assert [e.dst for e in sends(eff)] == [1]                 # the next participant's grant


def test_download_takes_the_most_updated_or_most_recent_parameters():
    s = make_server(n=10, participants=(0,), rounds=9, theta_u=0.5)
    s.handle(Start(), 0.0)
    take_turn(s, 0, [2, 3, 7], [1, 1, 1])
    take_turn(s, 0, [3, 7], [1, 1], now=2.0)
    take_turn(s, 0, [3, 5], [1, 1], now=3.0)
    # counters: 3 → 3, 7 → 2, {2, 5} → 1
    dl, _ = take_turn(s, 0, [0], [0.0], now=4.0, theta_d=0.2)
    assert dl.indices.dtype == np.int32 and dl.indices.tolist() == [3, 7]
    np.testing.assert_array_equal(dl.values, s.weights[[3, 7]])
    dl, _ = take_turn(s, 0, [1], [0.0], now=5.0, theta_d=0.3)      # ties at 1: 0, 2 or 5
    assert {3, 7} < set(dl.indices.tolist()) and len(dl.indices) == 3
    # most recent: the upload of turn 4 touched 1, before it turn 3 touched 0
    dl, _ = take_turn(s, 0, [9], [0.0], now=6.0, theta_d=0.2, criterion="most_recent")
    assert dl.indices.tolist() == [0, 1]
    # θd = 1: the whole vector, dense
    dl, _ = take_turn(s, 0, [9], [0.0], now=7.0)
    assert dl.indices is None and np.array_equal(dl.values, s.weights)


def test_counter_decay_favours_recent_updates():
    s = make_server(n=4, participants=(0,), rounds=5, theta_u=1.0, decay=0.5, decay_every=1)
    s.handle(Start(), 0.0)
    take_turn(s, 0, [0], [1.0])
    take_turn(s, 0, [1], [1.0], now=2.0)
    assert s.counters.tolist() == [0.25, 0.5, 0, 0]


def test_round_robin_grants_one_turn_at_a_time_in_fixed_order_and_halts():
    s = make_server(participants=(3, 1, 2), rounds=2, theta_u=0.5)
    grants = []
    eff = s.handle(Start(), 0.0)
    models = []
    t = 0.0
    while not any(isinstance(e, Halt) for e in eff):
        (g,) = sends(eff)
        assert isinstance(g.message, TurnGrant)
        grants.append(g.dst)
        # atomic: a request from anyone else is refused while the turn is open
        other = next(p for p in (1, 2, 3) if p != g.dst)
        assert reports(s.handle(Received(other, DownloadRequest(1.0, "most_updated")), t),
                       "unexpected_message")
        t += 1
        _, eff = take_turn(s, g.dst, [t % 10], [1.0], now=t)
        models += [r.tag("round") for r in reports(eff, "global_model")]
    assert grants == [3, 1, 2, 3, 1, 2]
    assert models == [0, 1]
    (info,) = [r.value for r in reports(eff, "round")]
    assert info["selected"] == info["aggregated"] == (3, 1, 2) and info["uploads"] == 3
    assert s.handle(Received(3, DownloadRequest(1.0, "most_updated")), 99.0) == []


def test_random_order_draws_a_fresh_permutation_every_cycle():
    s = make_server(participants=tuple(range(6)), rounds=4, order="random_order", theta_u=0.5)
    eff = s.handle(Start(), 0.0)
    grants = []
    while not any(isinstance(e, Halt) for e in eff):
        (g,) = sends(eff)
        grants.append(g.dst)
        _, eff = take_turn(s, g.dst, [1], [0.1], now=len(grants))
    cycles = [grants[i:i + 6] for i in range(0, 24, 6)]
    assert all(sorted(c) == list(range(6)) for c in cycles)
    assert len({tuple(c) for c in cycles}) > 1


def test_absent_lost_declining_and_slow_participants_are_skipped():
    s = make_server(participants=(0, 1, 2, 3), present=(0, 1, 3), rounds=1, theta_u=0.5,
                    turn_timeout_s=5.0)
    (g,) = sends(s.handle(Start(), 0.0))
    assert g.dst == 0
    (g,) = sends(s.handle(PeerLost(0), 1.0))                   # the grantee went away
    assert g.dst == 1
    (g,) = sends(s.handle(Received(1, TurnDecline(g.message.turn, "memory")), 2.0))
    assert g.dst == 3                                          # 2 is absent at its slot
    assert s.next_timer() == 7.0
    eff = s.handle(TimerFired(), 7.0)
    assert reports(eff, "turn_timeout") and isinstance(eff[-1], Halt)
    (info,) = [r.value for r in reports(eff, "round")]
    assert info["selected"] == (0, 1, 3) and info["aggregated"] == ()


def test_server_waits_when_nobody_is_present():
    s = make_server(participants=(0, 1), present=(), rounds=1)
    assert s.handle(Start(), 0.0) == [] and s.phase == "waiting"
    (g,) = sends(s.handle(PeerJoined(1), 5.0))
    assert g.dst == 1 and s.phase == "running"


def test_asynchronous_serves_everyone_and_defers_a_request_that_overtakes_its_upload():
    s = make_server(participants=(0, 1), rounds=2, order="asynchronous", theta_u=0.5)
    assert s.handle(Start(), 0.0) == []
    req = DownloadRequest(1.0, "most_updated")
    (d0,) = sends(s.handle(Received(0, req), 0.1))
    (d1,) = sends(s.handle(Received(1, req), 0.2))
    assert d0.message.turn != d1.message.turn
    # participant 1's next request arrives before its upload: it is served after the upload
    assert s.handle(Received(1, req), 0.3) == []
    eff = s.handle(Received(1, upd(d1.message.turn, [2], [1.0])), 0.4)
    (d1b,) = sends(eff)
    assert d1b.dst == 1 and d1b.message.values[2] == 1.0
    eff = s.handle(Received(0, upd(d0.message.turn, [3], [1.0])), 0.5)
    assert [r.tag("round") for r in reports(eff, "global_model")] == [0]   # 2 uploads = 1 round
    assert reports(s.handle(Received(0, upd(d0.message.turn, [3], [1.0])), 0.6), "late_update")
    s.handle(Received(0, req), 0.7)
    eff = s.handle(Received(1, upd(d1b.message.turn, [4], [1.0])), 0.8)
    assert s.handle(Received(1, req), 0.9) == []                # participant 1 is done
    (d0b,) = [e for e in s.handle(PeerLost(0), 1.0) + s.handle(Received(0, req), 1.1)
              if isinstance(e, Send)]
    eff = s.handle(Received(0, upd(d0b.message.turn, [5], [1.0])), 1.2)
    assert isinstance(eff[-1], Halt)
    assert [r.tag("round") for r in reports(eff, "global_model")] == [1]
    assert s.accepted == {0: 2, 1: 2}


def test_staleness_counts_the_uploads_applied_between_a_download_and_its_upload():
    s = make_server(participants=(0, 1, 2), rounds=2, order="asynchronous", theta_u=0.5,
                    gamma=0.5)
    s.handle(Start(), 0.0)
    req = DownloadRequest(1.0, "most_updated")
    d = {p: sends(s.handle(Received(p, req), 0.1 * (p + 1)))[0].message for p in (0, 1, 2)}
    s.handle(Received(2, upd(d[2].turn, [1], [0.5])), 1.0)     # nobody before it: 0
    s.handle(Received(0, upd(d[0].turn, [2], [0.25])), 1.1)    # 2 uploaded since 0's download: 1
    s.handle(Received(1, upd(d[1].turn, [3, 4], [-0.5, 0.1])), 1.2)  # 2 and 0: 2
    assert s.staleness == [0, 1, 2]
    out = s.staleness_summary()
    assert (out["staleness_mean"], out["staleness_median"], out["staleness_max"]) == (1.0, 1.0, 2)
    assert out["upload_fraction_at_gamma"] == 2 / 4             # 0.5 and -0.5 of 4 values


def test_coordinated_turns_are_never_stale():
    s = make_server(participants=(0, 1), rounds=2)
    s.handle(Start(), 0.0)
    for _ in range(4):                       # 2 cycles of 2 turns
        take_turn(s, s.grant[0], [1], [1.0])
    assert s.staleness == [0, 0, 0, 0]
    assert s.staleness_summary()["upload_fraction_at_gamma"] == 0.0    # γ = ∞: never clipped


# ---------------------------------------------------------------- the participant
SPEC = mlp(4, [3], 2)


def participant(**kw):
    kw.setdefault("rounds", 2)
    w = SPEC.init_weights(np.random.default_rng(0))
    return DSSGDParticipant(5, SPEC, w, np.arange(10), DSSGDParams(**kw),
                            rng=np.random.default_rng(1)), flatten(w)


def test_participant_turn_downloads_trains_selects_clips_and_uploads():
    p, w0 = participant(theta_u=0.2, gamma=0.3)
    n = w0.size                                               # 23 parameters; c = 4
    assert p.handle(Start(), 0.0) == []                       # coordinated: waits for a grant
    (req,) = p.handle(Received("server", TurnGrant(7)), 0.0)
    assert isinstance(req.message, DownloadRequest) and req.message.theta_d == 1.0
    part = ParamsDownload(7, np.array([0, 5], np.int32), np.array([9.0, -9.0], np.float32))
    (run,) = p.handle(Received("server", part), 1.0)
    assert isinstance(run, RunJob) and isinstance(run.job, TrainJob) and run.job_id == 7
    start = flatten(run.job.task.weights)
    assert start[0] == 9.0 and start[5] == -9.0 and np.array_equal(start[1:5], w0[1:5])
    delta = np.zeros(n, np.float32)
    delta[[2, 8, 11, 15, 20]] = [0.1, -0.5, 0.4, 0.05, 2.0]
    result = list(unflatten(start + delta, p.shapes))
    eff = p.handle(JobDone(7, result), 2.0)
    (up,) = sends(eff)
    assert up.message.turn == 7
    assert up.message.indices.tolist() == [2, 8, 11, 20]       # the 4 largest |Δw|, not 15
    np.testing.assert_allclose(up.message.values, [0.1, -0.3, 0.3, 0.3], rtol=1e-5)
    assert np.array_equal(p.local, start + delta)              # keeps its own trained model
    assert reports(eff, "dssgd_turn")[0].value["uploaded"] == 4


def test_asynchronous_participant_requests_again_after_each_upload():
    p, w0 = participant(order="asynchronous", theta_u=0.1)
    (req,) = p.handle(Start(), 0.0)
    assert isinstance(req.message, DownloadRequest)
    (run,) = p.handle(Received("server", ParamsDownload(0, None, w0)), 0.1)
    eff = p.handle(JobDone(0, list(run.job.task.weights)), 1.0)   # nothing changed
    msgs = [e.message for e in sends(eff)]
    assert isinstance(msgs[0], SparseUpdate) and len(msgs[0].indices) == 0
    assert isinstance(msgs[1], DownloadRequest)


def test_participant_declines_a_failed_job_and_forgets_a_turn_when_disconnected():
    p, w0 = participant()
    p.handle(Received("server", TurnGrant(1)), 0.0)
    p.handle(Received("server", ParamsDownload(1, None, w0)), 0.0)
    eff = p.handle(JobFailed(1, "memory"), 1.0)
    assert reports(eff, "job_failed") and isinstance(sends(eff)[0].message, TurnDecline)
    p.handle(Received("server", TurnGrant(2)), 2.0)
    p.handle(Received("server", ParamsDownload(2, None, w0)), 2.0)
    assert isinstance(p.handle(Received("server", TurnGrant(3)), 2.5)[0], CancelJob)
    p.handle(Disconnected(), 3.0)
    assert p.handle(JobDone(3, list(unflatten(w0, p.shapes))), 4.0) == []
    assert p.handle(Received("server", ParamsDownload(3, None, w0)), 4.0) == []


def test_participant_with_dp_releases_exactly_the_clipped_svt_output():
    """The participant's DP upload is the SVT's clipped release at its turn's budget split; a
    participant without DP (or with the paper's release) uploads something else."""
    from crowdlearn.privacy.mechanisms import svt_select
    dw = np.random.default_rng(4).normal(0, 1.0, 23)          # mostly far above γ = 0.1
    p, _ = participant(theta_u=0.5, gamma=0.1, dp=True, epsilon=20.0)   # noise scale 0.04
    assert p.params.release == "clipped"                      # the default under DP
    ref_rng = np.random.default_rng(1)                        # the participant's generator
    idx, vals = p.select(dw)
    eps_turn, eps1, eps2 = p.params.turn_budget(dw.size)
    assert (eps_turn, eps1, eps2) == (20.0 * 11, 10.0 * 11, 10.0 * 11)
    r_idx, r_vals = svt_select(dw, c=11, tau=p.params.tau, gamma=0.1, eps1=eps1, eps2=eps2,
                               rng=ref_rng, release="clipped")
    order = np.argsort(r_idx)
    assert np.array_equal(idx, r_idx[order]) and np.array_equal(vals, r_vals[order])
    # the noise is really there: with |Δw| >> γ the plain top-k clip gives exactly ±γ
    plain, _ = participant(theta_u=0.5, gamma=0.1)
    _, plain_vals = plain.select(dw)
    assert np.all(np.abs(plain_vals) == np.float32(0.1))
    assert np.mean(np.abs(vals) < 0.0999) > 0.3
    # and the paper's release, from the same generator state, differs
    paper, _ = participant(theta_u=0.5, gamma=0.1, dp=True, epsilon=20.0, release="paper")
    assert not np.array_equal(paper.select(dw)[1], vals)


def dp_turn(p, w0, turn, now, grow=2.0):
    """Drive a coordinated DP participant through one turn; returns the effects of JobDone."""
    p.handle(Received("server", TurnGrant(turn)), now)
    (run,) = p.handle(Received("server", ParamsDownload(turn, None, w0)), now)
    start = flatten(run.job.task.weights)
    return p.handle(JobDone(turn, list(unflatten(start + grow, p.shapes))), now + 1)


def test_dp_participant_charges_its_release_before_sending_it():
    p, w0 = participant(theta_u=0.2, dp=True, epsilon=0.5)    # c = 4
    eff = dp_turn(p, w0, 3, 0.0)
    names = [getattr(e, "name", type(e).__name__) for e in eff]
    assert names == ["dssgd_turn", "privacy_charge", "Send"]  # charged, then released
    charge = reports(eff, "privacy_charge")[0]
    assert charge.tag("device") == 5
    assert charge.value["epsilon_turn"] == pytest.approx(0.5 * 4) and charge.value["c"] == 4
    assert charge.value["guarantee"] is True and charge.value["max_abs_value"] == pytest.approx(2.0)
    (row,) = p.privacy_rows()
    assert row["releases"] == 1 and row["epsilon_per_parameter"] == pytest.approx(0.5)
    assert row["guarantee"] == "dp"
    paper, _ = participant(theta_u=0.2, dp=True, epsilon=0.5, release="paper")
    assert reports(dp_turn(paper, w0, 3, 0.0), "privacy_charge")[0].value["guarantee"] is False
    assert paper.privacy_rows()[0]["guarantee"] == "nominal"
    plain, _ = participant(theta_u=0.2)
    assert not reports(dp_turn(plain, w0, 3, 0.0), "privacy_charge")
    assert plain.privacy_rows() == []


@pytest.mark.parametrize("how", ["timeout", "peer_lost", "out_of_turn"])
def test_a_late_or_unexpected_upload_is_charged_although_the_server_drops_it(how):
    """The server drops the upload (late / after PeerLost / out of turn in asynchronous mode),
    but the value has left the participant: the run's ledger charges it."""
    from crowdlearn.privacy.accountant import PrivacyLedger
    from sim.monitor import Monitor
    order = "asynchronous" if how == "out_of_turn" else "round_robin"
    kw = dict(rounds=1, theta_u=0.2, dp=True, epsilon=0.5, order=order, turn_timeout_s=5.0)
    w = SPEC.init_weights(np.random.default_rng(0))
    server = DSSGDServer("server", w, [5, 6], DSSGDParams(**kw), rng=np.random.default_rng(0))
    p = DSSGDParticipant(5, SPEC, w, np.arange(10), DSSGDParams(**kw),
                         rng=np.random.default_rng(1))
    mon = Monitor([5, 6], ledger_factory=PrivacyLedger)
    for q in (5, 6):
        server.handle(PeerJoined(q), 0.0)
    server.handle(Start(), 0.0)
    if how == "out_of_turn":          # an upload of a turn the server never served
        p.phase, p.turn, p.start = "training", 99, flatten(w)
        eff = p.handle(JobDone(99, list(unflatten(flatten(w) + 2.0, p.shapes))), 1.0)
    else:
        (req,) = sends(p.handle(Received("server", TurnGrant(0)), 0.0))
        (dl,) = sends(server.handle(Received(5, req.message), 0.0))
        (run,) = p.handle(Received("server", dl.message), 0.0)
        if how == "timeout":
            server.handle(TimerFired(), 6.0)
        else:
            server.handle(PeerLost(5), 6.0)
        start = flatten(run.job.task.weights)
        eff = p.handle(JobDone(0, list(unflatten(start + 2.0, p.shapes))), 7.0)
    for e in eff:
        if isinstance(e, Report):
            mon.on_report(5, e, 7.0)
    (up,) = [e for e in sends(eff) if isinstance(e.message, SparseUpdate)]
    assert reports(server.handle(Received(5, up.message), 8.0), "late_update")
    assert server.uploads == 0                                  # not applied ...
    assert mon.ledger.turns(5) == 1                             # ... but charged
    from crowdlearn.privacy import composed_epsilon
    assert mon.device_epsilon() == composed_epsilon([0.5 * p.c], 1e-5) > 0


def test_config_section_and_params_agree(registered):
    from crowdlearn.config import from_dict
    cfg = from_dict({"protocol": "dssgd", "rounds": 2, "dssgd": {"order": "asynchronous"}})
    from crowdlearn.protocols.dssgd import params_from_config
    p = params_from_config(cfg)
    assert p.order == "asynchronous" and p.rounds == 2
    assert set(CONFIG_SECTION) == {f for f in DSSGDParams.__dataclass_fields__} - {"rounds"}
    assert cross_check({**{k: v.default for k, v in CONFIG_SECTION.items()},
                        "dp": True, "gamma": math.inf})
    with pytest.raises(ValueError, match="theta_u"):
        DSSGDParams(rounds=1, theta_u=0.0)


# ---------------------------------------------------------------- small fleets
@pytest.fixture(scope="module")
def registered():
    """DSSGD is a built-in protocol: nothing to register (kept for the tests' signatures)."""
    yield


def fleet(**overrides):
    from tests.conftest import small_config
    return small_config(**{"protocol": "dssgd", "rounds": 3, "fleet.devices": 6,
                           "dssgd.theta_u": 0.1, **overrides})


def run_counting_sends(cfg):
    """Run a simulation, recording every message each machine sent (independently of the driver)."""
    from crowdlearn.experiment import Simulation
    sim = Simulation(cfg)
    sent = []
    for node, m in sim.driver.machines.items():
        def handle(event, now, _orig=m.handle, _node=node):
            effects = _orig(event, now)
            sent.extend((_node, e.message) for e in effects if isinstance(e, Send))
            return effects
        m.handle = handle
    return sim, sim.run(), sent


@pytest.mark.parametrize("order", ["round_robin", "random_order", "asynchronous"])
def test_fleet_learns_and_bytes_are_the_encoded_sizes(registered, order):
    sim, res, sent = run_counting_sends(fleet(**{"dssgd.order": order}))
    acc = [r["accuracy"] for r in res.metrics]
    assert [r["round"] for r in res.metrics] == [0, 1, 2]
    assert acc[-1] > acc[0] + 0.1 and acc[-1] > 0.5, acc
    assert res.summary["messages_dropped"] == 0
    up = sum(len(wire.encode(m)) for node, m in sent if node != "server")
    down = sum(len(wire.encode(m)) for node, m in sent if node == "server")
    assert (res.summary["bytes_up"], res.summary["bytes_down"]) == (up, down)
    uploads = [m for node, m in sent if isinstance(m, SparseUpdate)]
    assert len(uploads) == 6 * 3                              # rounds epochs per participant
    c = sim.driver.machines["server"].c
    assert all(len(u.indices) <= c for u in uploads) and c == sim.spec.num_params() // 10
    if order != "asynchronous":                               # one turn per device per cycle
        assert all(d["rounds_aggregated"] == 3 for d in res.devices)
    # staleness in summary.json: 0 when turns are atomic, > 0 when six devices race
    assert (res.summary["staleness_max"] == 0) == (order != "asynchronous")
    assert res.summary["staleness_mean"] == np.mean(sim.driver.machines["server"].staleness)


def test_fleet_with_dp_metrics_summary_and_privacy_csv_agree_with_the_ledger(registered,
                                                                           tmp_path):
    """5 turns per participant: each metrics.csv row carries the ε spent up to its model (the
    k-th row: k turns composed), and the last row, summary.json and privacy.csv agree."""
    from crowdlearn import results as results_io
    from crowdlearn.privacy import composed_epsilon
    sim, res, sent = run_counting_sends(fleet(**{"dssgd.dp": True, "dssgd.epsilon": 0.001,
                                                 "rounds": 5, "fleet.devices": 4}))
    c = sim.driver.machines["server"].c
    eps_turn = 0.001 * c
    expected = [composed_epsilon([eps_turn] * k, 1e-5) for k in range(1, 6)]
    assert eps_turn < 700                                    # the PLD, not the fallback
    out = results_io.write(res, tmp_path / "run", plots=False)
    metrics = results_io.read_metrics(out)
    assert [r["epsilon"] for r in metrics] == pytest.approx(expected, rel=1e-9)
    summary = results_io.read_summary(out)
    assert summary["epsilon"] == pytest.approx(expected[-1], rel=1e-9)
    assert summary["dp"] is True and summary["delta"] == 1e-5
    assert summary["epsilon_guarantee"] == "dp" and summary["privacy_mechanism"] == "svt"
    assert summary["accountant_fallback_to_basic"] is False
    assert summary["epsilon_per_parameter"] == pytest.approx(0.001)
    audit = summary["epsilon_audit"]                        # beside the proven ε: within it
    assert audit["claimed_epsilon"] == 0.001 and not audit["refutes_claim"]
    rows = results_io.read_privacy(out)
    uploads = {}
    for node, m in sent:
        if isinstance(m, SparseUpdate):
            uploads[node] = uploads.get(node, 0) + 1
    assert {int(r["participant"]): r["releases"] for r in rows} == uploads
    assert all(r["releases"] == 5 and r["accountant"] == "pld" for r in rows)
    assert all(r["epsilon"] == pytest.approx(expected[-1], rel=1e-9) for r in rows)
    # every participant's own ledger says the same
    for d in range(4):
        assert sim.driver.machines[d].privacy_rows()[0]["epsilon"] == pytest.approx(expected[-1])


def test_fleet_with_the_paper_release_marks_its_epsilon_nominal_beside_the_audit(registered):
    sim, res, _ = run_counting_sends(fleet(**{"dssgd.dp": True, "dssgd.epsilon": 1.0,
                                              "dssgd.release": "paper", "rounds": 1,
                                              "fleet.devices": 4}))
    s = res.summary
    assert s["epsilon_guarantee"] == "nominal" and s["dp"] is True
    assert s["accountant_fallback_to_basic"] is False
    assert all(r["guarantee"] == "nominal" for r in res.privacy)
    # metrics.csv does not call a nominal figure "epsilon"
    assert all("epsilon" not in r and r["epsilon_nominal"] > 0 for r in res.metrics)
    assert res.metrics[-1]["epsilon_nominal"] == s["epsilon"]
    a = s["epsilon_audit"]
    assert a["claimed_epsilon"] == 1.0 and a["value"] == sim.monitor.max_released_value > 0
    assert 0 <= a["epsilon_lower_bound"] <= a["epsilon_estimate"] + 0.5
    assert a["trials"] > 1000 and a["confidence"] == 0.95


def test_fleet_without_dp_says_so(registered):
    _, res, _ = run_counting_sends(fleet(**{"rounds": 1, "fleet.devices": 4}))
    s = res.summary
    assert s["dp"] is False and s["epsilon"] is None and s["epsilon_guarantee"] == "none"
    assert res.privacy == [] and all("epsilon" not in r for r in res.metrics)


def test_fleet_charges_uploads_the_server_finds_late(registered):
    """A turn timeout shorter than a turn: the server drops the uploads as late, yet each one
    left its participant and is in the run's ledger (summary.json and privacy.csv)."""
    sim, res, sent = run_counting_sends(fleet(**{"dssgd.dp": True, "dssgd.epsilon": 0.001,
                                                 "dssgd.turn_timeout_s": 0.05, "rounds": 2,
                                                 "fleet.devices": 4}))
    uploads = {}
    for node, m in sent:
        if isinstance(m, SparseUpdate):
            uploads[node] = uploads.get(node, 0) + 1
    server = sim.driver.machines["server"]
    late = res.summary["late_updates"]
    assert late > 0 and server.uploads + late == sum(uploads.values())
    assert {r["participant"]: r["releases"] for r in res.privacy} == uploads
    eps_turn = 0.001 * server.c
    from crowdlearn.privacy import composed_epsilon
    assert res.summary["epsilon"] == pytest.approx(
        composed_epsilon([eps_turn] * max(uploads.values()), 1e-5), rel=1e-9)
