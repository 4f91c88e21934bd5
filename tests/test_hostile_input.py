"""Servers (and a device) driven by hand with hostile messages (issue 14): nothing crashes,
nothing changes the model, each is recorded as ``peer_misbehaved`` (DSSGD: ``bad_update``)."""
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from crowdlearn.crypto.sealing import Header, KeyRing, Sealed
from crowdlearn.protocols.crowdlearning.machines import (
    Download,
    KeyAnnounce,
    PassDone,
    PassPlan,
    Relay,
    ShareDone,
    ShareRequest,
    SliceDevice,
    SliceParams,
    SlicingServer,
    Upload,
    description_for,
    layout_from_plan,
)
from crowdlearn.protocols.dssgd import DownloadRequest, DSSGDParams, DSSGDServer, SparseUpdate
from crowdlearn.protocols.fedavg import FedAvgParams, FedAvgServer
from crowdlearn.protocols.messages import Update
from crowdlearn.protocols.validate import check_sparse
from sim.machine import PeerJoined, Received, Report, Send, Start
from slicenet.partition import partition


def names(effects):
    return [e.name for e in effects if isinstance(e, Report)]


def plans(effects):
    return [e for e in effects if isinstance(e, Send) and isinstance(e.message, PassPlan)]


# ---------------------------------------------------------------- Crowdlearning server
MEMBERS = (1, 2, 3)


def crowd_server():
    desc = description_for([6, 4], 5, 3)
    graph = desc.graph()
    lay = layout_from_plan(desc, graph, partition(graph, 2, method="contiguous"))
    rng = np.random.default_rng(0)
    weights = [rng.normal(size=s).astype(np.float32) for s in lay.shapes]
    s = SlicingServer("server", lay, [list(MEMBERS)], SliceParams(epochs=2, group_size=3,
                                                                  pieces=2, tau=0.0),
                      weights, data_sizes={d: 10 for d in MEMBERS},
                      ring=KeyRing("server"), rng=rng)
    for d in MEMBERS:
        s.handle(PeerJoined(d), 0.0)
    assert s.handle(Start(), 0.0) == []              # no pass before the keys are in
    eff = []
    for d in MEMBERS:
        eff = s.handle(Received(d, KeyAnnounce(KeyRing(d).card().to_bytes())), 0.1)
    return s, eff


def to_share_phase(s, eff):
    """Answer PassDone for every pass of the epoch; return the ShareRequests."""
    t = 1.0
    while plans(eff):
        attempt = plans(eff)[0].message.attempt
        for p in plans(eff):
            out = s.handle(Received(p.dst, PassDone(0, attempt)), t)
        eff, t = out, t + 1
    reqs = [e for e in eff if isinstance(e, Send) and isinstance(e.message, ShareRequest)]
    assert reqs
    return reqs


def state(s):
    return (s.window.values.copy(), s.window.ticks.copy(),
            s.initial.copy())


def assert_unchanged(s, before):
    after = state(s)
    for a, b in zip(before[:2], after[:2], strict=True):
        np.testing.assert_array_equal(a, b)
    for a, b in zip(before[2], after[2], strict=True):
        np.testing.assert_array_equal(a, b)


def upload(idx, vals, *, dtype=np.float32, group=0, epoch=0):
    return Upload(group, epoch, np.asarray(idx, np.int32), np.asarray(vals, dtype))


@pytest.mark.parametrize("case", ["negative", "past_end", "foreign", "nan", "inf", "repeated",
                                  "oversized", "unknown_group", "other_group"])
def test_sliding_window_server_drops_hostile_uploads(case):
    s, eff = crowd_server()
    reqs = to_share_phase(s, eff)
    req = reqs[0]
    member, owned = req.dst, s.layout.owned_flat(req.message.owners)
    foreign = np.setdiff1d(np.arange(s.layout.num_params), owned)
    n = s.layout.num_params
    msg = {"negative": upload([-1], [1.0]), "past_end": upload([n], [1.0]),
           "foreign": upload([foreign[0]], [1.0]), "nan": upload([owned[0]], [np.nan]),
           "inf": upload([owned[0]], [np.inf]), "repeated": upload([owned[0]] * 2, [1.0, 2.0]),
           "oversized": upload(np.arange(n + 5) % n, np.ones(n + 5)),
           "unknown_group": upload([owned[0]], [1.0], group=7),
           "other_group": upload([owned[0]], [1.0], group=1)}[case]
    before = state(s)
    out = s.handle(Received(member, msg), 50.0)
    assert "peer_misbehaved" in names(out)
    assert not [e for e in out if isinstance(e, Send) and isinstance(e.message, Download)]
    assert_unchanged(s, before)
    # the others still complete the epoch: the hostile member does not hold it up
    good = [r for r in reqs if r.dst != member]
    for r in good:
        idx = s.layout.owned_flat(r.message.owners)[:2]
        s.handle(Received(r.dst, upload(idx, [0.5, 0.5])), 51.0)
    if case not in ("unknown_group", "other_group"):
        last = [s.handle(Received(r.dst, ShareDone(0, 0)), 52.0) for r in good][-1]
        assert "group_model" in names(last)


def test_sliding_window_server_drops_hostile_relays():
    s, eff = crowd_server()
    (p, *_), attempt = plans(eff), plans(eff)[0].message.attempt
    parts = {e.dst for e in plans(eff)}
    src = p.dst
    dst = next(d for d in parts if d != src)
    boundary = dict(p.message.send_boundary)
    ring = KeyRing(src)
    ring.learn(dst, KeyRing(dst).card())
    h = Header("boundary", 0, attempt)
    ok = Relay(0, attempt, dst, "boundary", Sealed.opaque(ring, dst, h, boundary[dst]))
    hostile = [
        Relay(9, attempt, dst, "boundary", ok.payload),                   # unknown group
        Relay(0, attempt, 99, "boundary", ok.payload),                    # dst not in group
        Relay(0, attempt, src, "boundary", ok.payload),                   # to itself
        Relay(0, attempt, dst, "boundary", Sealed.opaque(ring, dst, h, boundary[dst] + 1)),
        Relay(0, attempt, dst, "boundary", bytes(10 ** 6)),               # oversized
        Relay(0, attempt, dst, "handover", bytes(64)),                    # no hand-over planned
    ]
    before = state(s)
    for m in hostile:
        out = s.handle(Received(src, m), 1.0)
        assert names(out) == ["peer_misbehaved"] and not [e for e in out if isinstance(e, Send)]
    # a non-member relays into the group
    assert names(s.handle(Received(42, ok), 1.0)) == ["peer_misbehaved"]
    assert names(s.handle(Received(42, PassDone(0, attempt)), 1.0)) == ["peer_misbehaved"]
    assert names(s.handle(Received(42, KeyAnnounce(bytes(48))), 1.0)) == ["peer_misbehaved"]
    assert_unchanged(s, before)
    # the planned payload goes through
    out = s.handle(Received(src, ok), 1.0)
    assert [e.dst for e in out if isinstance(e, Send)] == [dst]


# ---------------------------------------------------------------- device: Download
def test_device_applies_only_downloads_of_what_it_owns():
    desc = description_for([6, 4], 5, 3)
    graph = desc.graph()
    lay = layout_from_plan(desc, graph, partition(graph, 2, method="contiguous"))
    rng = np.random.default_rng(0)
    dev = SliceDevice(5, lay, 0, np.arange(4), SliceParams(epochs=1, group_size=3, pieces=2),
                      ring=KeyRing(5), rng=rng)
    owned = lay.owned_flat([1])
    dev.hold(1, rng.normal(size=len(owned)).astype(np.float32),
             [np.ones(len(lay.owned_flat([1], trainable=True)), np.float32)])
    dev.handle(Received("server", ShareRequest(0, 0, (1,))), 0.0)
    foreign = np.setdiff1d(np.arange(lay.num_params), owned)
    before = [dev.held[1].copy()]
    for idx, val in (([-1], [1.0]), ([lay.num_params], [1.0]), ([foreign[0]], [1.0]),
                     ([owned[0]], [np.nan])):
        out = dev.handle(Received("server", Download(0, 0, np.array(idx, np.int32),
                                                     np.array(val, np.float32))), 1.0)
        assert "peer_misbehaved" in names(out)
        for a, b in zip(before, [dev.held[1]], strict=True):
            np.testing.assert_array_equal(a, b)
    out = dev.handle(Received("server", Download(1, 0, owned[:1].astype(np.int32),
                                                 np.ones(1, np.float32))), 1.0)
    assert names(out) == ["peer_misbehaved"]
    dev.handle(Received("server", Download(0, 0, owned[:1].astype(np.int32),
                                           np.full(1, 7.0, np.float32))), 2.0)
    assert dev.held[1][0] == 7.0        # owned[0] is the first entry the device holds


# ---------------------------------------------------------------- DSSGD server
@pytest.mark.parametrize("idx,vals", [([-1], [0.01]), ([10], [0.01]), ([1, 1], [0.01, 0.01]),
                                      ([2], [np.nan]), ([2], [np.inf]), ([2], [3e38]),
                                      ([2], [0.06]), (list(range(9)), [0.01] * 9)])
def test_dssgd_server_drops_hostile_uploads(idx, vals):
    s = DSSGDServer("server", [np.zeros(10, np.float32)], [0], DSSGDParams(
        rounds=2, gamma=0.05, theta_u=0.5), rng=np.random.default_rng(0))
    s.handle(PeerJoined(0), 0.0)
    s.handle(Start(), 0.0)
    (dl,) = [e for e in s.handle(Received(0, DownloadRequest(1.0, "most_updated")), 1.0)
             if isinstance(e, Send)]
    before = s.weights.copy()
    out = s.handle(Received(0, SparseUpdate(dl.message.turn, np.array(idx, np.int32),
                                            np.array(vals, np.float32))), 2.0)
    assert "bad_update" in names(out)
    np.testing.assert_array_equal(s.weights, before)
    assert np.all(np.isfinite(s.weights))


# ---------------------------------------------------------------- FedAvg server
@pytest.mark.parametrize("weights,n", [
    ((np.zeros(4, np.float32),), 1),                              # wrong shape
    ((np.zeros(3, np.float32), np.zeros(3, np.float32)), 1),     # too many arrays
    ((), 1),                                                      # none
    ((np.array([0, np.nan, 0], np.float32),), 1),                # non-finite
    ((np.array([0, np.inf, 0], np.float32),), 1),
    ((np.zeros(3, np.int64),), 1),                               # not floats
    ((np.zeros(3, np.float32),), 2.5),                           # fractional sample count
    ((np.zeros(3, np.float32),), 10.0 ** 300),
])
def test_fedavg_server_drops_hostile_updates(weights, n):
    s = FedAvgServer("server", [np.ones(3, np.float32)],
                     FedAvgParams(rounds=2, clients_per_round=2), rng=np.random.default_rng(0))
    for d in range(2):
        s.handle(PeerJoined(d), 0.0)
    a, b = (e.dst for e in s.handle(Start(), 0.0) if isinstance(e, Send))
    out = s.handle(Received(a, Update(0, weights, n)), 1.0)
    assert "peer_misbehaved" in names(out)
    np.testing.assert_array_equal(s.weights[0], np.ones(3, np.float32))
    # the honest device's update is then the round's whole average
    s.handle(Received(b, Update(0, (np.full(3, 2.0, np.float32),), 4)), 2.0)
    np.testing.assert_array_equal(s.weights[0], np.full(3, 2.0, np.float32))


@settings(max_examples=80, deadline=None)
@given(data=st.data())
def test_any_upload_changes_at_most_the_senders_own_finite_entries(data):
    s, eff = crowd_server()
    req, *others = to_share_phase(s, eff)
    owned = s.layout.owned_flat(req.message.owners)
    honest = data.draw(st.booleans())
    idx = data.draw(st.lists(st.sampled_from(owned.tolist()), unique=True, max_size=8)
                    if honest else st.lists(st.integers(-5, 200), max_size=12))
    vals = data.draw(st.lists(st.floats(allow_nan=not honest, allow_infinity=not honest,
                                        width=32), min_size=len(idx), max_size=len(idx)))
    before = state(s)
    out = s.handle(Received(req.dst, upload(idx, vals)), 50.0)
    for other in others:      # the epoch's uploads are applied once every member's is in
        s.handle(Received(other.dst, upload([], [])), 51.0)
    changed = np.flatnonzero(np.any(s.window.ticks != before[1], axis=1))
    assert set(changed.tolist()) <= set(owned.tolist())
    assert np.all(np.isfinite(s.window.values))
    ok = "peer_misbehaved" not in names(out)
    assert ok == (check_sparse(np.asarray(idx, np.int32), np.asarray(vals, np.float32),
                               size=s.layout.num_params, allowed=owned) is None)
    if honest:
        assert ok and sorted(changed.tolist()) == sorted(idx)
    else:
        if not ok:
            assert_unchanged(s, before)
