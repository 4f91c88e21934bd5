"""The Crowdlearning machines' fast paths equal the straightforward code they replaced, bit for
bit: top-θ by a partition against the stable sort, the weight-major sliding window against the
slot-major one (same float32 sums)."""

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from crowdlearn.protocols.crowdlearning import machines as sp
from crowdlearn.protocols.crowdlearning.sharing import top_k


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
    for tick in rng.permutation(np.arange(1, int(rng.integers(2, 3 * omega + 3)))).tolist():
        idx = np.sort(rng.choice(n, int(rng.integers(0, n + 1)), replace=False))
        vals = (rng.standard_normal(len(idx)) * 10.0 ** rng.uniform(-4, 4, len(idx))) \
            .astype(np.float32)
        w.upload(idx, vals, tick)
        ref.upload(idx, vals, tick)
        q = np.sort(rng.choice(n, int(rng.integers(0, n + 1)), replace=False))
        now = int(rng.integers(0, 3 * omega + 4))
        got, want = w.query(q, now, omega * tau), ref.query(q, now, omega * tau)
        assert got[0].tolist() == want[0].tolist()
        assert got[1].tobytes() == want[1].tobytes()


@settings(max_examples=60, deadline=None)
@given(st.integers(1, 130), st.integers(0, 2 ** 32 - 1), st.sampled_from([0.0, 0.5, 1.0]))
def test_many_queries_of_one_window_state_equal_the_slot_major_window(omega, seed, tau):
    # the server's pattern: a tick's uploads, then every member's download from the same state
    # (from the second query on, answered from one pass over the whole window); uploads
    # between queries start a new state
    rng = np.random.default_rng(seed)
    n = int(rng.integers(1, 300))
    w, ref = sp.SlidingWindow(np.zeros(n, np.float32), omega), _SlotMajorWindow(n, omega)
    for tick in range(1, int(rng.integers(2, 2 * omega + 4))):
        for _ in range(int(rng.integers(0, 3))):
            idx = np.sort(rng.choice(n, int(rng.integers(0, n + 1)), replace=False))
            vals = rng.standard_normal(len(idx)).astype(np.float32)
            w.upload(idx, vals, tick)
            ref.upload(idx, vals, tick)
        for _ in range(int(rng.integers(0, 5))):
            q = np.sort(rng.choice(n, int(rng.integers(0, n + 1)), replace=False))
            now = tick + int(rng.integers(0, 2))
            got, want = w.query(q, now, omega * tau), ref.query(q, now, omega * tau)
            assert got[0].tolist() == want[0].tolist()
            assert got[1].tobytes() == want[1].tobytes()
