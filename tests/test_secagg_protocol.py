"""SecAgg / SecAgg+ machines: exact sums under drop-outs, aborts below t, uniform uploads,
priced mode equal to the real one."""

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from crowdlearn.crypto import masking
from crowdlearn.crypto.agreement_process import AgreementProcess
from crowdlearn.protocols.secagg import MaskedInput, SecAggParams, SharedCrypto, run_round
from sim import wire

STAGES = ("advertise", "share", "masked_input", "unmask")


def _quantised_sum(xs, ids, p):
    total = np.zeros(len(next(iter(xs.values()))), np.uint64)
    for u in ids:
        total = masking.add_mod(total, masking.quantise(xs[u], clip=p.clip, quant_bits=p.quant_bits,
                                                        modulus_bits=p.modulus_bits),
                                p.modulus_bits)
    return total


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(n=st.integers(3, 7), d=st.integers(1, 20), seed=st.integers(0, 2**31),
       mode=st.sampled_from(["secagg", "secagg+"]), data=st.data())
def test_unmasked_sum_is_the_quantised_sum_under_dropouts(n, d, seed, mode, data):
    rng = np.random.default_rng(seed)
    xs = {u: rng.normal(0, 0.5, d) for u in range(n)}
    k = 2 if mode == "secagg+" else 0
    t = data.draw(st.integers(1, min(n, 3 if mode == "secagg+" else n)))
    p = SecAggParams(mode=mode, threshold=t, neighbours=k, quant_bits=10,
                     modulus_bits=masking.min_modulus_bits(n, 10), clip=1.0)
    drop = {s: set(data.draw(st.lists(st.sampled_from(range(n)), max_size=2, unique=True)))
            for s in STAGES}
    out = run_round(xs, p, rng=np.random.default_rng(seed + 1), drop=drop)
    if out.status == "ok":
        # exactly the survivors' quantised inputs, nothing else
        expected_u3 = tuple(sorted(set(range(n)) - drop["advertise"] - drop["share"]
                                   - drop["masked_input"]))
        assert out.u3 == expected_u3
        assert np.array_equal(out.server.last_sum, _quantised_sum(xs, out.u3, p))
    else:
        assert out.sum is None and out.server.last_sum is None


def test_no_dropouts_secagg_and_secagg_plus_agree_with_plaintext(rng):
    xs = {u: rng.normal(0, 0.3, 50) for u in range(9)}
    for mode, k in (("secagg", 0), ("secagg+", 4)):
        p = SecAggParams(mode=mode, threshold=3, neighbours=k, quant_bits=16, modulus_bits=24)
        out = run_round(xs, p, rng=np.random.default_rng(3))
        assert out.status == "ok" and out.u3 == tuple(range(9))
        assert np.array_equal(out.server.last_sum, _quantised_sum(xs, range(9), p))
        np.testing.assert_allclose(out.sum, sum(xs.values()), atol=9 * 0.5 / 32767)


def test_below_threshold_the_round_aborts_and_nothing_is_revealed(rng):
    xs = {u: rng.normal(0, 0.3, 20) for u in range(6)}
    p = SecAggParams(threshold=5, quant_bits=12, modulus_bits=16)
    # two clients drop before the masked input: 4 < t survive
    out = run_round(xs, p, rng=np.random.default_rng(0), drop={"masked_input": {1, 4}})
    assert out.status == "abort" and out.sum is None
    log = out.server.log[-1]
    assert log["status"] == "abort" and "masked_input: 4 < t = 5" in log["reason"]
    # the server never asked for shares: no unmasking message was sent or received
    kinds = {type(m).__name__ for _, _, m in out.messages}
    assert "UnmaskRequest" not in kinds and "UnmaskShares" not in kinds
    assert out.server.weights[0].tolist() == [0.0] * 20        # the model did not move

    # survivors drop during unmasking: 3 < t shares of each b_u; the server holds 3 shares and
    # rebuilding from them gives a wrong seed, so masked inputs stay masked
    out = run_round(xs, p, rng=np.random.default_rng(0), drop={"unmask": {0, 2, 5}})
    assert out.status == "abort" and "unmask" in out.server.log[-1]["reason"]
    held = out.server.resp["unmask"]
    assert len(held) == 3
    from crowdlearn.crypto import shamir
    c1 = out.clients[1]
    shares = [((h + 1), shamir.share_from_bytes(m.shares[m.ids.index(1)])) for h, m in held.items()]
    assert shamir.reconstruct(shares) != int.from_bytes(c1.b_seed, "big")


def test_one_masked_upload_is_uniform_in_Z_R():
    """Chi-square: the masked vector of one client is indistinguishable from uniform in Z_R,
    whatever the input (here all zeros, the most structured input there is)."""
    from scipy.stats import chisquare
    d = 40_000
    xs = {u: np.zeros(d) for u in range(4)}
    p = SecAggParams(threshold=3, quant_bits=12, modulus_bits=16)
    out = run_round(xs, p, rng=np.random.default_rng(5))
    y = out.server.resp["masked_input"][0].vector.values
    counts = np.bincount((y >> np.uint64(8)).astype(np.int64), minlength=256)
    assert chisquare(counts).pvalue > 1e-3
    # and the plain quantised input is all zeros: far from uniform
    plain = masking.quantise(xs[0], clip=1.0, quant_bits=12, modulus_bits=16)
    assert chisquare(np.bincount((plain >> np.uint64(8)).astype(np.int64), minlength=256)
                     + 1).pvalue < 1e-10


@pytest.mark.parametrize("mode,k", [("secagg", 0), ("secagg+", 2)])
def test_priced_mode_has_the_real_sizes_and_sum(mode, k, rng):
    xs = {u: rng.normal(0, 0.3, 30) for u in range(6)}
    drop = {"share": {2}, "unmask": {4}}
    outs = {}
    for priced in (False, True):
        p = SecAggParams(mode=mode, threshold=2, neighbours=k, quant_bits=12, modulus_bits=16,
                         priced=priced)
        outs[priced] = run_round(xs, p, rng=np.random.default_rng(9), drop=drop)
    real, priced = outs[False], outs[True]
    sizes = lambda o: [(s, d, type(m).__name__, wire.size(m)) for s, d, m in o.messages]  # noqa
    assert sizes(real) == sizes(priced)
    assert np.array_equal(real.server.last_sum, priced.server.last_sum)
    # and the sizes are the encoded lengths
    for _, _, m in real.messages:
        assert wire.size(m) == len(wire.encode(m))


def test_a_tampered_share_box_is_dropped_not_trusted(rng):
    xs = {u: rng.normal(0, 0.3, 5) for u in range(4)}
    from crowdlearn.protocols.secagg import ShareRelay
    from sim.machine import Received
    p = SecAggParams(threshold=2, quant_bits=12, modulus_bits=16)
    out = run_round(xs, p, rng=np.random.default_rng(1))
    relay = next(m for s, d, m in out.messages if isinstance(m, ShareRelay) and d == 0)
    c = out.clients[0]
    c.held = {0: c.held[0]}
    bad = ShareRelay(relay.round, relay.srcs, tuple(bytes(len(b)) for b in relay.boxes))
    c.handle(Received("server", bad), 0.0)
    assert set(c.held) == {0}
    assert isinstance(out.messages[-1][2], type(out.messages[-1][2]))
    assert any(isinstance(m, MaskedInput) for _, _, m in out.messages)


@pytest.mark.parametrize("mode,k", [("secagg", 0), ("secagg+", 2)])
def test_sizes_and_ops_without_running_equal_a_real_round(mode, k, rng):
    from crowdlearn.crypto.costs import CryptoCosts
    from crowdlearn.protocols.secagg import client_round_bytes, client_round_ops
    from sim.machine import RunJob
    n, d = 6, 30
    costs = CryptoCosts(1.0, keygen=3.0, agree=5.0, prg_byte=0.5, aead_byte=0.25, field_mul=7.0)
    xs = {u: rng.normal(0, 0.3, d) for u in range(n)}
    p = SecAggParams(mode=mode, threshold=2, neighbours=k, quant_bits=12, modulus_bits=16)
    charged = []
    from crowdlearn.protocols import secagg as sa
    orig = sa.SecAggClient._after

    def spy(self, stage, ops, reply):
        out = orig(self, stage, ops, reply)
        if self.node_id == n - 1:
            charged.extend(e.job.flops for e in out if isinstance(e, RunJob))
        return out
    sa.SecAggClient._after = spy
    try:
        out = run_round(xs, p, rng=np.random.default_rng(0), costs=costs)
    finally:
        sa.SecAggClient._after = orig
    peers = n - 1 if mode == "secagg" else k
    assert sum(charged) == pytest.approx(costs.flops(**client_round_ops(peers=peers, t=2, d=d,
                                                                        bits=16)))
    sent = {type(m).__name__: wire.size(m) for s, _, m in out.messages if s == n - 1}
    got = {type(m).__name__: wire.size(m) for _, dst, m in out.messages if dst == n - 1}
    want = client_round_bytes(n=n, d=d, modulus_bits=16, mode=mode, k=k)
    assert [sent[m] for m in ("AdvertiseKeys", "ShareKeys", "MaskedInput", "UnmaskShares")] \
        == list(want["sent"].values())
    assert [got[m] for m in ("KeyList", "ShareRelay", "UnmaskRequest")] \
        == list(want["received"].values())


@settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(seed=st.integers(0, 2**31), data=st.data())
def test_stage_deadlines_close_stages_without_the_slow_clients(seed, data):
    """Clients too slow for a stage's deadline are left out like drop-outs (they stay online);
    the sum is still exactly the survivors' and their late messages are refused."""
    n = 6
    rng = np.random.default_rng(seed)
    xs = {u: rng.normal(0, 0.5, 8) for u in range(n)}
    p = SecAggParams(threshold=3, quant_bits=10, modulus_bits=masking.min_modulus_bits(n, 10),
                     stage_timeout_s=5.0)
    stall = {s: set(data.draw(st.lists(st.sampled_from(range(n)), max_size=1, unique=True)))
             for s in STAGES}
    out = run_round(xs, p, rng=np.random.default_rng(seed + 1), stall=stall)
    slow = stall["advertise"] | stall["share"] | stall["masked_input"]
    u3 = set(range(n)) - slow
    if len(u3) < 3 or len(u3 - stall["unmask"]) < 3:    # fewer than t inputs or share holders
        assert out.status == "abort" and out.server.last_sum is None
        return
    assert out.status == "ok", out.server.log
    assert out.u3 == tuple(sorted(set(range(n)) - slow))
    assert np.array_equal(out.server.last_sum, _quantised_sum(xs, out.u3, p))


def test_a_client_refuses_to_reveal_both_secrets_of_a_peer(rng):
    from crowdlearn.protocols.secagg import UnmaskRequest
    from sim.machine import Received, Report
    xs = {u: rng.normal(0, 0.3, 5) for u in range(4)}
    out = run_round(xs, SecAggParams(threshold=2, quant_bits=12, modulus_bits=16),
                    rng=np.random.default_rng(2))
    c = out.clients[0]
    c.rnd = 0
    both = c.handle(Received("server", UnmaskRequest(0, (1, 2), (2,))), 0.0)
    assert [type(e) for e in both] == [Report] and both[0].name == "secagg_client_abort"
    few = c.handle(Received("server", UnmaskRequest(0, (1,), ())), 0.0)
    assert [type(e) for e in few] == [Report]


@settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(n=st.integers(3, 7), d=st.integers(1, 30), seed=st.integers(0, 2**31),
       mode=st.sampled_from(["secagg", "secagg+"]), data=st.data())
def test_shared_computation_sends_exactly_what_each_client_computes_alone(n, d, seed, mode,
                                                                           data):
    """The simulator's shortcut (pairwise keys and mask keystreams derived once for both ends,
    the keystreams expanded on worker threads or not, the agreements computed ahead in a worker
    process or not, a client's agreements in one memo call, the pairs of a tile of
    registrations expanded together or each registration's at once, the masked vectors in
    shared slabs or allocated one by one) changes no byte any machine sends and not the
    unmasked sum, with drop-outs at every stage."""
    rng = np.random.default_rng(seed)
    xs = {u: rng.normal(0, 0.5, d) for u in range(n)}
    p = SecAggParams(mode=mode, threshold=2, neighbours=2 if mode == "secagg+" else 0,
                     quant_bits=10, modulus_bits=data.draw(st.sampled_from(
                         [masking.min_modulus_bits(n, 10), 40])))
    drop = {s: set(data.draw(st.lists(st.sampled_from(range(n)), max_size=1))) for s in STAGES}
    threads = data.draw(st.integers(1, 3))
    with_process = SharedCrypto(threads=threads, process=AgreementProcess())
    tile, slab = data.draw(st.integers(1, 5)), data.draw(st.sampled_from([1, 64, 1 << 24]))
    try:
        runs = [run_round(xs, p, rng=np.random.default_rng(seed + 1), drop=drop, shared=sh)
                for sh in (False, SharedCrypto(threads=0), SharedCrypto(threads=threads),
                           with_process)]
        with pytest.MonkeyPatch.context() as mp:
            mp.setattr(masking, "_TILE", tile)
            mp.setattr(masking, "_SLAB_BYTES", slab)
            runs.append(run_round(xs, p, rng=np.random.default_rng(seed + 1), drop=drop,
                                  shared=SharedCrypto(threads=threads)))
    finally:
        with_process.close()
    assert with_process.process.frames > 0        # the agreements went through the process
    logs = [[(s, t, wire.encode(m)) for s, t, m in r.messages] for r in runs]
    for r, log in zip(runs[1:], logs[1:], strict=True):
        assert r.status == runs[0].status
        assert log == logs[0]
        if r.status == "ok":
            assert np.array_equal(r.server.last_sum, runs[0].server.last_sum)


def test_shared_computation_derives_each_pair_key_and_keystream_once(rng):
    n, d = 6, 40
    xs = {u: rng.normal(0, 0.3, d) for u in range(n)}
    p = SecAggParams(threshold=4, quant_bits=12, modulus_bits=16)
    out = run_round(xs, p, rng=np.random.default_rng(2))
    assert out.status == "ok"
    shared = out.clients[0].shared
    pairs = n * (n - 1) // 2
    assert shared.memo.exchanges == 2 * pairs          # share key and mask seed, once a pair
    assert shared.memo.hits == 2 * pairs               # the other end's lookups
    assert shared.batch(d, 16).expansions == pairs + n     # pairwise masks + self masks
    alone = run_round(xs, p, rng=np.random.default_rng(2), shared=False)
    assert alone.clients[0].shared is None
    assert np.array_equal(alone.server.last_sum, out.server.last_sum)


@pytest.mark.parametrize("mode", ["secagg", "secagg+"])
def test_masks_registered_at_key_sharing_give_the_same_messages(mode, monkeypatch, rng):
    """With a shared computation each client registers its masks at key sharing (expanded
    while the round trains) and adds its input, and takes back the masks of peers whose shares
    never arrived, at the masked-input stage: the path is taken by every client that masks, and
    every byte sent equals what each client computing alone sends, with a client lost before
    it sent its shares (its peers' corrections) and one lost before its masked input."""
    from crowdlearn.crypto.masking import PendingMask
    calls = []
    plus = PendingMask.plus
    monkeypatch.setattr(PendingMask, "plus", lambda self, base, terms=(): calls.append(
        len(terms)) or plus(self, base, terms))
    n, d = 8, 37
    xs = {u: rng.normal(0, 0.4, d) for u in range(n)}
    p = SecAggParams(mode=mode, threshold=3, neighbours=4 if mode == "secagg+" else 0,
                     quant_bits=12, modulus_bits=masking.min_modulus_bits(n, 12))
    drop = {"share": {2}, "masked_input": {5}}
    shared = run_round(xs, p, rng=np.random.default_rng(4), drop=drop)
    alone = run_round(xs, p, rng=np.random.default_rng(4), drop=drop, shared=False)
    assert shared.status == alone.status == "ok"
    assert [(s, t, wire.encode(m)) for s, t, m in shared.messages] == \
        [(s, t, wire.encode(m)) for s, t, m in alone.messages]
    assert np.array_equal(shared.server.last_sum, _quantised_sum(xs, shared.u3, p))
    # clients 0..7 but 2 (lost at sharing) computed a masked input (5 was lost sending it)
    assert len(calls) == n - 1
    peers_of_2 = {u for u in range(n) if u != 2 and 2 in shared.server.graph[u]}
    assert sum(1 for c in calls if c == 1) == len(peers_of_2) and set(calls) <= {0, 1}


class _NoScan(tuple):
    """A cohort that may be counted but not searched or walked."""

    def __contains__(self, item):
        raise AssertionError("the cohort tuple was scanned")

    def __iter__(self):
        raise AssertionError("the cohort tuple was walked")


@settings(max_examples=30, deadline=None)
@given(n=st.integers(4, 30), data=st.data())
def test_a_loss_or_a_stage_message_costs_no_scan_of_the_cohort(n, data):
    """The server tracks who each stage still waits for (a set): a peer loss or a message never
    walks the selected tuple, and a stage closes exactly when everyone it expected has answered
    or gone (the rule the set replaced), in any order of answers and losses."""
    from crowdlearn.protocols.fedavg import FedAvgParams
    from crowdlearn.protocols.secagg import AdvertiseKeys, KeyList, SecAggServer, ShareKeys
    from sim.machine import PeerJoined, PeerLost, Received, Send, Start

    t = 2
    fp = FedAvgParams(rounds=1, clients_per_round=n, min_clients=n)
    server = SecAggServer("server", [np.zeros(3, np.float32)], fp, rng=np.random.default_rng(0),
                          secagg=SecAggParams(threshold=t, quant_bits=10, modulus_bits=16))
    server.handle(Start(), 0.0)
    for u in range(n):
        server.handle(PeerJoined(u), 0.0)
    assert server.stage == "advertise" and len(server.selected) == n
    cohort = server.book.selected
    server.book.selected = _NoScan(cohort)
    fate = data.draw(st.lists(st.sampled_from(["answer", "lost"]), min_size=n, max_size=n))
    order = data.draw(st.permutations(range(n)))
    answered: list = []
    for i, u in enumerate(order):
        if i == n - 1:      # the event that may end the stage, so the round: its report
            server.book.selected = cohort       # names the cohort once (per round, not per loss)
        if fate[u] == "answer":
            out = server.handle(Received(u, AdvertiseKeys(0, bytes(32), bytes(32))), 0.0)
            answered.append(u)
        else:
            out = server.handle(PeerLost(u), 0.0)
        done = i == n - 1
        lists = [e for e in out if isinstance(e, Send) and isinstance(e.message, KeyList)]
        if not done:
            assert out == [] and server.stage == "advertise"
        elif len(answered) >= t:
            assert server.stage == "share" and sorted(e.dst for e in lists) == sorted(answered)
            assert lists[0].message.ids == tuple(sorted(answered))
        else:
            assert server.stage is None and not lists      # aborted below t
    if server.stage != "share":
        return
    # the share stage waits for the advertisers only; a late or foreign message is refused
    late = server.handle(Received(order[0], AdvertiseKeys(0, bytes(32), bytes(32))), 0.0)
    assert [e.name for e in late] == ["late_update"]
    rest = list(answered)
    server.book.selected = _NoScan(cohort)
    for u in rest[:-1]:
        assert server.handle(Received(u, ShareKeys(0, (), ())), 0.0) == []
    assert server.stage == "share"
    server.book.selected = cohort
    server.handle(PeerLost(rest[-1]), 0.0)
    assert server.stage == ("masked_input" if len(rest) - 1 >= t else None)


def test_a_late_decline_of_an_earlier_round_does_not_drop_the_client_from_this_one():
    from crowdlearn.protocols.fedavg import FedAvgParams
    from crowdlearn.protocols.messages import Decline
    from crowdlearn.protocols.secagg import SecAggServer
    from sim.machine import PeerJoined, Received, Start

    fp = FedAvgParams(rounds=3, clients_per_round=3, min_clients=3)
    server = SecAggServer("server", [np.zeros(3, np.float32)], fp, rng=np.random.default_rng(0),
                          secagg=SecAggParams(threshold=2, quant_bits=10, modulus_bits=16))
    server.handle(Start(), 0.0)
    for u in range(3):
        server.handle(PeerJoined(u), 0.0)
    assert server.stage == "advertise" and server.round == 0
    server.round = 1                    # as if round 0 had ended and round 1 begun
    server.handle(Received(0, Decline(0, "memory")), 0.0)
    assert 0 not in server.gone
    server.handle(Received(1, Decline(1, "memory")), 0.0)
    assert 1 in server.gone
