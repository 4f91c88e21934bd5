"""The Crowdlearning machines' fast paths equal the straightforward code they replaced, bit for
bit: top-θ by a partition against the stable sort, the weight-major sliding window against the
slot-major one (same float32 sums)."""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from crowdlearn.protocols.crowdlearning import machines as sp
from crowdlearn.protocols.crowdlearning.reference import full_length_share, owns_all_by_search
from crowdlearn.protocols.crowdlearning.sharing import top_k
from slicenet.weak import ByIdentity


@settings(max_examples=200, deadline=None)
@given(st.lists(st.sampled_from([0.0, -0.0, 1.0, 2.5, 2.5, 3.0, 1e-30, np.nan]) |
                st.floats(0, 10, width=32), max_size=60), st.integers(-2, 65))
def test_top_k_is_the_stable_sort_s_first_k(scores, k):
    a = np.asarray(scores, np.float64)
    want = np.sort(np.argsort(-a, kind="stable")[:max(k, 0)])
    got = top_k(a, k)
    assert got.tolist() == want.tolist()


class _SlotMajorWindow:
    """The window as it was: ``values[slot, weight]``, summed over the slot axis of a gathered
    ``[:, idx]`` view."""

    def __init__(self, n, omega):
        self.omega = omega
        self.values = np.zeros((omega, n), np.float32)
        self.ticks = np.full((omega, n), -(10 ** 9), np.int64)

    def upload(self, idx, vals, tick):
        slot = tick % self.omega
        newer = self.ticks[slot, idx] <= tick
        self.values[slot, idx[newer]] = vals[newer]
        self.ticks[slot, idx[newer]] = tick

    def query(self, idx, tick, min_count):
        live = self.ticks[:, idx] > tick - self.omega
        count = live.sum(axis=0)
        keep = count > min_count
        if min_count <= 0:
            keep &= count > 0
        sums = np.where(live[:, keep], self.values[:, idx[keep]], 0.0).sum(axis=0)
        return idx[keep], (sums / count[keep]).astype(np.float32)


@settings(max_examples=60, deadline=None)
@given(st.integers(1, 14), st.integers(0, 2 ** 32 - 1), st.sampled_from([0.0, 0.5, 0.3, 1.0]))
def test_window_query_equals_the_slot_major_window_bit_for_bit(omega, seed, tau):
    rng = np.random.default_rng(seed)
    n = int(rng.integers(1, 400))
    w, ref = sp.SlidingWindow(np.zeros(n, np.float32), omega), _SlotMajorWindow(n, omega)
    for now in _random_uploads(rng, n, omega, w, ref):
        _same_answers(rng, n, w, ref, now, omega * tau)


def _random_uploads(rng, n, omega, *windows):
    """Upload the same random values to every window, one tick at a time in a random order;
    yield a random query tick after each."""
    for tick in rng.permutation(np.arange(1, int(rng.integers(2, 3 * omega + 3)))).tolist():
        idx = np.sort(rng.choice(n, int(rng.integers(0, n + 1)), replace=False))
        vals = (rng.standard_normal(len(idx)) * 10.0 ** rng.uniform(-4, 4, len(idx))) \
            .astype(np.float32)
        for w in windows:
            w.upload(idx, vals, tick)
        yield int(rng.integers(0, 3 * omega + 4))


def _same_answers(rng, n, w, ref, now, min_count):
    q = np.sort(rng.choice(n, int(rng.integers(0, n + 1)), replace=False))
    got, want = w.query(q, now, min_count), ref.query(q, now, min_count)
    assert got[0].tolist() == want[0].tolist()
    assert got[1].tobytes() == want[1].tobytes()


@settings(max_examples=60, deadline=None)
@given(st.integers(1, 14), st.integers(0, 2 ** 32 - 1), st.sampled_from([0.0, 0.5, 0.3, 1.0]),
       st.sampled_from([50, 400, 20_000]))
def test_prepared_window_answers_every_query_as_the_per_query_path_bit_for_bit(
        omega, seed, tau, size):
    """SlidingWindow.prepare (one pass over every weight, used by the server for an epoch's
    downloads) against query's own gather of the asked rows: same indices, same float32 bits."""
    rng = np.random.default_rng(seed)
    n = int(rng.integers(1, size))
    w, ref = sp.SlidingWindow(np.zeros(n, np.float32), omega), \
        sp.SlidingWindow(np.zeros(n, np.float32), omega)
    for now in _random_uploads(rng, n, omega, w, ref):
        w.prepare(now, omega * tau)
        for _ in range(3):
            _same_answers(rng, n, w, ref, now, omega * tau)
    # an upload drops the prepared answers: the next query sees it
    w.prepare(10 ** 6, 0.0)
    assert w.query(np.arange(n), 10 ** 6, 0.0)[0].tolist() == []
    w.upload(np.array([0]), np.array([7.0], np.float32), 10 ** 6)
    got = w.query(np.arange(n), 10 ** 6, 0.0)
    assert got[0].tolist() == [0] and got[1].tolist() == [7.0]


@settings(max_examples=80, deadline=None)
@given(st.integers(1, 300), st.integers(1, 6), st.integers(0, 2 ** 32 - 1),
       st.sampled_from(["whole", "repeat", "missing"]), st.booleans())
def test_a_pass_s_parts_are_checked_to_cover_every_weight_once_cached_or_not(
        size, k, seed, case, readonly):
    """run_passes' cover check (remembered for a layout's read-only index arrays) against the
    plain count: whole covers pass, every time; a repeated or missing weight raises, also
    after the whole cover of the same sizes was remembered."""
    import pytest

    from crowdlearn.protocols.crowdlearning.build import _check_cover

    rng = np.random.default_rng(seed)
    owner = rng.integers(0, k, size)
    parts = [np.flatnonzero(owner == o) for o in range(k)]
    for a in parts:
        a.setflags(write=not readonly)
    for _ in range(2):                   # the second time from the remembered cover
        _check_cover("p", parts, size)
    bad = [a.copy() for a in parts]
    j = int(np.argmax([len(a) for a in bad]))
    if case == "repeat":
        bad.append(bad[j][:1].copy())
        match = "two parts hold the same weights"
    elif case == "missing":
        bad[j] = bad[j][1:]
        match = "without all its parts"
    else:
        _check_cover("p", bad, size)
        return
    for a in bad:
        a.setflags(write=not readonly)
    with pytest.raises(RuntimeError, match=match):
        _check_cover("p", bad, size)


@settings(max_examples=100, deadline=None)
@given(st.lists(st.integers(-1, 6), max_size=300))
def test_rank_in_owner_is_the_position_searchsorted_finds_in_the_owner_s_indices(owners):
    """The device applies a download at rank_in_owner (computed once per layout) instead of a
    searchsorted in the owner's sorted flat indices per owner and download: same positions."""
    from crowdlearn.protocols.crowdlearning.device import rank_in_owner

    class Lay:
        flat_owner = np.asarray(owners, np.int64)

    lay = Lay()
    rank = rank_in_owner(lay)
    for o in set(owners):
        own = np.flatnonzero(lay.flat_owner == o)
        assert rank[own].tolist() == np.searchsorted(own, own).tolist()
    assert rank_in_owner(lay) is rank          # computed once


def test_a_small_crowdlearning_run_is_the_same_by_the_reference_paths(monkeypatch):
    """The whole of a small Crowdlearning run (3 epochs, relayed, 12 devices in groups of 4)
    with the epoch-speed paths and again with the reference code each replaced: the generic
    wire recursion for message sizes, one window query per download, a searchsorted per owner
    for downloads, every pass's cover counted out, the owned-index checks of uploads and
    downloads by check_sparse's searchsorted (allowed=), a device's share on full-length
    vectors, a pass's collective key made at each ask, every metrics row evaluated on
    the event loop's thread, the network's rate model as it was before its per-event paths
    were cut (``tests/test_network_fastpaths.py``), each message sized afresh and the
    window's uploads by 2-d indexing.  Same summary (accuracy, bytes, simulated time, events,
    messages; the passes in as many batches or fewer), the same metrics, device and round rows, and every message delivered at the
    same simulated time (the float's bits), bit for bit."""
    from crowdlearn import experiment
    from crowdlearn.experiment import run
    from crowdlearn.protocols.crowdlearning import build, device, passjob
    from crowdlearn.protocols.crowdlearning.layout import Layout
    from sim import wire
    from slicenet.fused import FusedTrainer
    from tests.conftest import small_config
    from tests.test_network_fastpaths import ReferenceNetwork

    cfg = small_config(protocol="crowdlearning", rounds=3, **{
        "fleet.devices": 12, "fleet.cells": 3, "model.hidden": [32, 16],
        "slicenet.group_size": 4, "slicenet.lr": 0.1})
    log = delivery_log(monkeypatch)
    fast = run(cfg)
    fast_log, log[:] = list(log), []

    def searchsorted_rank(lay):
        rank = np.empty(len(lay.flat_owner), np.int64)
        for o in np.unique(lay.flat_owner):
            own = lay.owned_flat([int(o)])
            rank[own] = np.searchsorted(own, own)
        return rank

    class Forgetful(ByIdentity):
        def put(self, arrays, value):
            pass

    monkeypatch.setattr(wire, "size", wire._generic_message_size)
    monkeypatch.setattr(sp.SlidingWindow, "prepare", lambda self, tick, min_count: None)
    monkeypatch.setattr(device, "rank_in_owner", searchsorted_rank)
    monkeypatch.setattr(build, "_COVERS", Forgetful())
    monkeypatch.setattr(Layout, "owns_all", owns_all_by_search)
    monkeypatch.setattr(device.SliceDevice, "_share", full_length_share)
    monkeypatch.setattr(passjob.SlicePassJob, "collective",
                        property(lambda self: ("slice_pass",) + tuple(self.key)))
    monkeypatch.setattr(FusedTrainer, "concurrent_evaluate", False)
    monkeypatch.setattr(experiment, "Network", ReferenceNetwork)
    monkeypatch.setattr(sp.SlidingWindow, "upload", upload_by_2d_indexing)
    ref = run(cfg)
    for res in (fast, ref):
        res.summary.pop("wall_time_s")
    # how the passes were batched is the executor's bookkeeping: the lazy share reads them
    # later (when the server releases the uploads), so they run in as many waves or fewer
    fast_batches, ref_batches = fast.summary.pop("batches_run"), ref.summary.pop("batches_run")
    assert fast_batches["slice_pass"] <= ref_batches["slice_pass"]
    assert fast_batches["pipeline_drain"] == ref_batches["pipeline_drain"]
    assert fast.summary == ref.summary
    assert fast.summary["completed"] and fast.summary["bytes_total"] > 0
    assert fast.metrics == ref.metrics and len(fast.metrics) == 3
    assert fast.devices == ref.devices and fast.rounds == ref.rounds
    assert fast_log == log and len(log) == fast.summary["messages"] > 1000


def delivery_log(monkeypatch) -> list:
    """A list to which every message delivered from now on adds (source, destination, bytes,
    type, arrival time as a float's hex)."""
    from sim.driver import Driver

    log: list = []
    delivered = Driver._delivered

    def logged(self, src, dst, msg, nbytes, s, d):
        log.append((src, dst, nbytes, type(msg).__name__, float(self.env.now).hex()))
        return delivered(self, src, dst, msg, nbytes, s, d)

    monkeypatch.setattr(Driver, "_delivered", logged)
    return log


def upload_by_2d_indexing(self, idx, vals, tick):
    """``SlidingWindow.upload`` as it was: 2-d fancy indexing of the (weight, slot) window."""
    idx = np.asarray(idx, np.int64)
    if idx.size == 0:
        return
    self._answers = None
    slot = int(tick) % self.omega
    newer = self.ticks[idx, slot] <= tick
    self.values[idx[newer], slot] = np.asarray(vals)[newer]
    self.ticks[idx[newer], slot] = tick


@settings(max_examples=60, deadline=None)
@given(st.lists(st.integers(-1, 3), min_size=1, max_size=40),
       st.lists(st.integers(-1, 3), min_size=1, max_size=4),
       st.lists(st.integers(0, 39), max_size=12), st.booleans())
def test_owned_index_checks_by_mask_and_positions_equal_the_searches(owner_of, owners, idx,
                                                                     trainable):
    """``Layout.owns_all`` (a mask per owner set) answers as check_sparse's ``allowed``
    search; ``Layout.position_in`` places each owner's trainable entries where they sit in the
    owner set's, and picks them out of the owner's own entries."""
    from crowdlearn.protocols.crowdlearning.layout import Layout
    from crowdlearn.protocols.validate import check_sparse

    lay = Layout.__new__(Layout)
    lay.flat_owner = np.asarray(owner_of, np.int64)
    lay.flat_trainable = np.arange(len(owner_of)) % 3 != 1
    lay.num_params = len(owner_of)
    lay._owned = {}
    ind = np.unique(np.asarray(idx, np.int64) % len(owner_of))
    allowed = lay.owned_flat(owners, trainable=trainable)
    want = check_sparse(ind, np.zeros(len(ind), np.float32), size=len(owner_of),
                        allowed=allowed) is None
    assert lay.owns_all(owners, ind, trainable=trainable) is want
    assert lay.owns_all(owners, ind, trainable=trainable) is want      # (the cached mask)
    full = lay.owned_flat(owners, trainable=True)
    for o in set(owners):
        at, which = lay.position_in(owners, o)
        assert full[at].tolist() == lay.owned_flat([o], trainable=True).tolist()
        assert lay.owned_flat([o])[which].tolist() == lay.owned_flat([o], trainable=True).tolist()


def test_a_finished_pass_is_freed_without_waiting_for_a_full_garbage_collection(monkeypatch):
    """A pass's job, its handle and the promise its messages hold formed a reference cycle;
    with full collections rare during a run (sim.driver), every pass's weights stayed in
    memory until one ran: gigabytes over a 50-epoch paper-scale run (killed for memory).  The
    promise lets the handle go once the runner has filled it, so reference counting frees
    each pass as soon as nothing uses it: with the collector off, the passes of the first
    epochs are gone by the end of the run."""
    import gc
    import weakref

    from crowdlearn.experiment import Simulation
    from crowdlearn.protocols.crowdlearning import passjob
    from tests.conftest import small_config

    seen = []
    submit = passjob.SlicePassJob.on_submit

    def watched(self, executor, handle):
        seen.append((self.key, weakref.ref(self)))
        return submit(self, executor, handle)

    monkeypatch.setattr(passjob.SlicePassJob, "on_submit", watched)
    cfg = small_config(protocol="crowdlearning", rounds=4, **{
        "fleet.devices": 12, "fleet.cells": 3, "model.hidden": [32, 16],
        "slicenet.group_size": 4, "slicenet.lr": 0.1})
    alive_at_end = []
    gc.collect()
    gc.disable()
    try:
        def on_row(row):
            if row["round"] == 3:
                alive_at_end.append(sum(r() is not None for _, r in seen))
        Simulation(cfg, on_row=on_row).run()
    finally:
        gc.enable()
    assert len(seen) > 40                       # 3 groups × 4 passes × 4 epochs, 4 parts each
    assert alive_at_end and alive_at_end[0] <= len(seen) // 4, (alive_at_end, len(seen))


@pytest.mark.parametrize("overrides", [
    {"fleet.devices": 14, "slicenet.peer_to_peer": True, "availability.churn": 0.1},
    {"fleet.devices": 26, "slicenet.group_size": 6, "slicenet.pieces": 2,
     "availability.churn": 0.1},
], ids=["peer-to-peer-churn", "dummies-churn"])
def test_crowdlearning_with_churn_delivers_every_message_as_by_the_reference_network(
        monkeypatch, overrides):
    """Peer-to-peer slices with churn (device-to-device routes, transfers cancelled by
    drop-outs), and groups with dummies and churn: the same summary, rows and every message
    delivered at the same simulated time with the network's fast paths as with the rate
    model's previous per-event methods (``tests/test_network_fastpaths.py``)."""
    from crowdlearn import experiment
    from crowdlearn.experiment import run
    from sim.driver import Driver
    from tests.conftest import small_config
    from tests.test_network_fastpaths import ReferenceNetwork

    cfg = small_config(protocol="crowdlearning", rounds=3, **{
        "fleet.cells": 3, "model.hidden": [32, 16], "slicenet.group_size": 4,
        "slicenet.lr": 0.1, **overrides})
    logs: list = [[], []]
    delivered = Driver._delivered

    def logged(self, src, dst, msg, nbytes, s, d):
        logs[-1].append((src, dst, nbytes, type(msg).__name__, float(self.env.now).hex()))
        return delivered(self, src, dst, msg, nbytes, s, d)

    monkeypatch.setattr(Driver, "_delivered", logged)
    fast = run(cfg)
    fast_log = logs.pop()
    monkeypatch.setattr(experiment, "Network", ReferenceNetwork)
    ref = run(cfg)
    for res in (fast, ref):
        res.summary.pop("wall_time_s")
    assert fast.summary == ref.summary and fast.summary["bytes_total"] > 0
    assert fast.metrics == ref.metrics and fast.devices == ref.devices
    assert fast.rounds == ref.rounds
    assert fast_log == logs[-1] and len(fast_log) == fast.summary["messages"] > 400


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 40), st.integers(0, 900)), min_size=0, max_size=6),
       st.booleans(), st.integers(0, 2 ** 31 - 1))
def test_gather_and_scatter_by_runs_are_take_and_fancy_assignment(runs, frozen, seed):
    """``slicenet.ownership.gather`` / ``scatter`` (slice copies where the indices are long runs,
    as a dominator's part is) equal ``np.take`` / ``dst[idx] = v`` for any sorted distinct
    indices: short runs, long ones, gaps, none; read-only (remembered) or not, asked twice."""
    from slicenet.ownership import gather, scatter

    parts, at = [], 0
    for gap, length in runs:
        at += gap
        parts.append(np.arange(at, at + length))
        at += length
    idx = np.concatenate(parts).astype(np.int64) if parts else np.zeros(0, np.int64)
    size = at + 3
    if frozen:
        idx.setflags(write=False)
    rng = np.random.default_rng(seed)
    src = rng.normal(size=size).astype(np.float32)
    vals = rng.normal(size=len(idx)).astype(np.float32)
    for _ in range(2):
        got = gather(src, idx)
        assert got.dtype == src.dtype and np.array_equal(got, np.take(src, idx))
        got[:] = 7                                   # a copy, never a view of src
        assert not np.any(src == 7)
        a, b = src.copy(), src.copy()
        scatter(a, idx, vals)
        b[idx] = vals
        assert np.array_equal(a, b)


def test_long_runs_are_copied_as_slices_and_scattered_indices_gathered():
    """The dominator's part of a sliced paper-mlp (two runs, 316,746 entries) is copied in
    slices; a piece's (hundreds of runs of tens) by a gather."""
    from slicenet.ownership import _runs

    dom = np.concatenate([np.arange(0, 316_736), np.arange(421_236, 421_246)])
    piece = np.concatenate([np.arange(s, s + 34) for s in range(316_736, 420_000, 300)])
    assert _runs(dom) == [(0, 0, 316_736), (421_236, 316_736, 10)]
    assert _runs(piece) is None
