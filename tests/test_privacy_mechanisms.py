"""Privacy mechanisms (Laplace, clipping, the sparse vector technique) and the ε ledger."""
import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from crowdlearn.privacy import (
    RELEASES,
    PrivacyLedger,
    clip,
    composed_epsilon,
    composition,
    laplace,
    svt_draws,
    svt_scales,
    svt_select,
    svt_select_reference,
    turn_event,
)


# ---------------------------------------------------------------- Laplace and clipping
def test_laplace_is_reproducible_with_a_seed_and_has_the_right_scale():
    a = laplace(0.5, 20_000, np.random.default_rng(3))
    b = laplace(0.5, 20_000, np.random.default_rng(3))
    c = laplace(0.5, 20_000, np.random.default_rng(4))
    assert np.array_equal(a, b) and not np.array_equal(a, c)
    assert abs(np.mean(np.abs(a)) - 0.5) < 0.02          # E|Lap(b)| = b
    assert abs(np.median(a)) < 0.02
    assert laplace(0.0, 3, None).tolist() == [0.0, 0.0, 0.0]
    for bad in (-1.0, math.inf, math.nan):
        with pytest.raises(ValueError):
            laplace(bad, 3, np.random.default_rng(0))


def test_clip_bounds_values():
    x = np.array([-3.0, -0.1, 0.0, 0.2, 9.0])
    assert clip(x, 0.5).tolist() == [-0.5, -0.1, 0.0, 0.2, 0.5]
    assert clip(x, math.inf).tolist() == x.tolist()
    with pytest.raises(ValueError):
        clip(x, 0.0)


# ---------------------------------------------------------------- SVT
def test_svt_scales_follow_the_spec():
    # threshold Lap(2cΔf/ε1), test Lap(4cΔf/ε1), release Lap(2cΔf/ε2)
    assert svt_scales(c=5, eps1=2.0, eps2=4.0, sensitivity=0.2) == (1.0, 2.0, 0.5)


def test_svt_draws_come_in_the_documented_order():
    n, c, scales = 50, 4, (1.0, 2.0, 3.0)
    d = svt_draws(n, c, scales, np.random.default_rng(9))
    rng = np.random.default_rng(9)
    assert np.array_equal(d.perm, rng.permutation(n))
    assert np.array_equal(d.query, rng.laplace(0, 2.0, n))
    assert np.array_equal(d.threshold, rng.laplace(0, 1.0, c))
    assert np.array_equal(d.release, rng.laplace(0, 3.0, c))


def _both(dw, seed, **kw):
    fast = svt_select(dw, rng=np.random.default_rng(seed), **kw)
    slow = svt_select_reference(dw, rng=np.random.default_rng(seed), **kw)
    return fast, slow


@settings(max_examples=150, deadline=None)
@given(n=st.integers(1, 400), c_frac=st.floats(0.001, 1.0), tau=st.floats(0.0, 0.3),
       gamma=st.floats(0.01, 1.0), log_eps=st.floats(-2.0, 8.0), share=st.floats(0.1, 0.9),
       seed=st.integers(0, 2**32 - 1), release=st.sampled_from(RELEASES),
       spread=st.floats(1e-4, 2.0))
def test_vectorised_svt_equals_the_literal_walk(n, c_frac, tau, gamma, log_eps, share, seed,
                                                release, spread):
    # small ε: noise dominates and segments are short (the Python probe); large ε: the noisy
    # test is close to |Δw| ≥ τ and long segments go through the numpy search
    dw = np.random.default_rng(seed ^ 0x5EED).normal(0.0, spread, n)
    c = max(1, int(c_frac * n))
    eps = 10.0 ** log_eps
    (fi, fv), (si, sv) = _both(dw, seed, c=c, tau=tau, gamma=gamma, eps1=share * eps,
                               eps2=(1 - share) * eps, release=release)
    assert np.array_equal(fi, si)
    assert np.array_equal(fv, sv)


@pytest.mark.parametrize("eps,tau", [(1.0, 1e-4), (1e3, 1e-3), (1e9, 0.02), (1e12, 0.2)])
def test_vectorised_svt_equals_the_literal_walk_at_model_scale(eps, tau):
    dw = np.random.default_rng(0).normal(0.0, 0.01, 20_000)
    c = 2_000
    (fi, fv), (si, sv) = _both(dw, 1, c=c, tau=tau, gamma=0.05, eps1=eps * c / 2,
                               eps2=eps * c / 2)
    assert np.array_equal(fi, si) and np.array_equal(fv, sv)
    assert len(fi) <= c


def test_svt_output_is_bounded_distinct_and_reproducible():
    dw = np.random.default_rng(5).normal(0.0, 0.05, 5_000)
    kw = dict(c=300, tau=0.01, gamma=0.03, eps1=30.0, eps2=30.0)
    i1, v1 = svt_select(dw, rng=np.random.default_rng(11), **kw)
    i2, v2 = svt_select(dw, rng=np.random.default_rng(11), **kw)
    i3, _ = svt_select(dw, rng=np.random.default_rng(12), **kw)
    assert np.array_equal(i1, i2) and np.array_equal(v1, v2)
    assert not np.array_equal(i1, i3)
    assert len(i1) <= 300 and len(set(i1.tolist())) == len(i1)
    assert v1.dtype == np.float32 and np.all(np.abs(v1) <= 0.03)


def test_svt_without_noise_is_the_threshold_walk():
    # with an enormous budget the noise vanishes: the first c parameters of the walk with
    # |clip(Δw_j)| ≥ τ are released, with their clipped values
    dw = np.random.default_rng(2).normal(0.0, 1.0, 1_000)
    gamma, tau, c = 0.8, 0.5, 40
    idx, vals = svt_select(dw, c=c, tau=tau, gamma=gamma, eps1=1e15, eps2=1e15,
                           rng=np.random.default_rng(3))
    perm = np.random.default_rng(3).permutation(dw.size)
    expect = [j for j in perm if abs(np.clip(dw[j], -gamma, gamma)) >= tau][:c]
    assert idx.tolist() == expect
    np.testing.assert_allclose(vals, np.clip(dw[idx], -gamma, gamma), atol=1e-6)


@settings(max_examples=60, deadline=None)
@given(seed=st.integers(0, 2**32 - 1), scale=st.floats(1.0, 1e4), gamma=st.floats(0.01, 1.0))
def test_the_default_release_depends_on_the_clipped_change_only(seed, scale, gamma):
    """Same draws, Δw and clip(Δw, γ) give the *same* output under the default release: no
    value leaves with a sensitivity above the clipping bound, however large Δw is.  The
    paper's release does not have this property (its noise is added to the unclipped Δw)."""
    dw = np.random.default_rng(seed ^ 0xD0).normal(0.0, scale * gamma, 300)
    kw = dict(c=60, tau=0.0, gamma=gamma, eps1=30.0, eps2=30.0)
    out = svt_select(dw, rng=np.random.default_rng(seed), **kw)
    clipped = svt_select(clip(dw, gamma), rng=np.random.default_rng(seed), **kw)
    assert np.array_equal(out[0], clipped[0]) and np.array_equal(out[1], clipped[1])
    explicit = svt_select(dw, rng=np.random.default_rng(seed), release="clipped", **kw)
    assert np.array_equal(out[1], explicit[1])                # "clipped" is the default
    # the paper's form: a far-out Δw_j is pinned at ±γ whatever the noise
    kw.update(c=200, eps1=4000.0, eps2=4000.0)               # release noise scale γ/5
    paper = svt_select(np.full(200, 50.0 * gamma), rng=np.random.default_rng(seed),
                       release="paper", **kw)[1]
    assert np.all(paper == np.float32(gamma))
    ours = svt_select(np.full(200, 50.0 * gamma), rng=np.random.default_rng(seed), **kw)[1]
    assert np.mean(ours < np.float32(gamma)) > 0.3
    with pytest.raises(ValueError, match="release"):
        svt_select(dw, rng=np.random.default_rng(0), release="preclip", **kw)


def test_svt_release_noise_has_the_documented_scale():
    """Released values of Δw = 0 are clip(Lap(2cΔf/ε2)): their mean |value| pins the scale, so
    removing or mis-scaling the noise fails here (c = 50, Δf = 2γ = 2, ε2 = 100: b = 2)."""
    kw = dict(c=50, tau=-1e9, gamma=1e3, eps1=1e12, eps2=100.0, sensitivity=2.0)
    vals = np.concatenate([svt_select(np.zeros(50), rng=np.random.default_rng(s), **kw)[1]
                           for s in range(400)])
    assert vals.size == 20_000
    assert np.mean(np.abs(vals)) == pytest.approx(2.0, rel=0.04)        # E|Lap(b)| = b


def test_svt_stops_after_c_releases_and_may_release_fewer():
    dw = np.ones(100)
    idx, _ = svt_select(dw, c=7, tau=0.0, gamma=1.0, eps1=1e12, eps2=1e12,
                        rng=np.random.default_rng(0))
    assert len(idx) == 7
    idx, _ = svt_select(np.zeros(100), c=7, tau=0.5, gamma=1.0, eps1=1e12, eps2=1e12,
                        rng=np.random.default_rng(0))
    assert len(idx) == 0
    with pytest.raises(ValueError):
        svt_select(dw, c=3, tau=0.0, gamma=math.inf, eps1=1.0, eps2=1.0,
                   rng=np.random.default_rng(0))


# ---------------------------------------------------------------- the ε ledger
def _optimal_composition(epsilons, delta):
    """ε at δ of the composition of pure ε_j-DP mechanisms, computed exactly and independently
    of dp-accounting: every ε-DP mechanism is dominated by binary randomized response
    (Kairouz, Oh & Viswanath 2015), whose privacy loss is ±ε_j with probabilities
    e^ε/(1+e^ε), 1/(1+e^ε); the k-fold loss L is their convolution and
    δ(ε') = E[max(0, 1 − e^(ε' − L))].  ε(δ) by bisection."""
    dist = {0.0: 1.0}
    for e in epsilons:
        p = 1.0 / (1.0 + math.exp(-e))
        nxt: dict = {}
        for loss, pr in dist.items():
            for step, q in ((e, p), (-e, 1.0 - p)):
                key = round(loss + step, 9)
                nxt[key] = nxt.get(key, 0.0) + pr * q
        dist = nxt

    def hockey(eps):
        return sum(pr * (1.0 - math.exp(eps - loss)) for loss, pr in dist.items() if loss > eps)

    lo, hi = 0.0, float(sum(epsilons))
    if hockey(0.0) <= delta:
        return 0.0
    for _ in range(200):
        mid = (lo + hi) / 2
        lo, hi = (lo, mid) if hockey(mid) <= delta else (mid, hi)
    return hi


@pytest.mark.parametrize("epsilons,delta", [([0.5] * 100, 1e-5), ([0.3] * 40, 1e-5),
                                            ([0.3] * 40, 1e-3), ([0.2, 1.0, 0.5], 1e-5),
                                            ([2.0] * 5 + [0.1] * 10, 1e-6)])
def test_ledger_matches_an_independent_optimal_composition(epsilons, delta):
    exact = _optimal_composition(epsilons, delta)
    ledger = PrivacyLedger(delta=delta)
    for e in epsilons:
        ledger.record("a", epsilon_turn=e, c=10)
    got = ledger.composed_epsilon("a")
    # the PLD discretises pessimistically: never below the exact figure, and within 1e-3
    assert exact - 1e-9 <= got <= exact * (1 + 1e-3)


def test_ledger_rows_say_what_was_composed_and_how():
    ledger = PrivacyLedger(delta=1e-5)
    for _ in range(40):
        ledger.record("a", epsilon_turn=0.3, c=100)
    ledger.record("fm", epsilon_turn=1.0, mechanism="functional_mechanism")
    ledger.record("paper", epsilon_turn=800.0, c=10, guarantee=False)
    rows = {r["participant"]: r for r in ledger.rows()}
    assert rows["a"]["releases"] == 40 and rows["a"]["accountant"] == "pld"
    assert rows["a"]["epsilon_per_parameter"] == pytest.approx(0.003)
    assert rows["a"]["epsilon_basic"] == pytest.approx(12.0)
    assert rows["a"]["epsilon"] < 0.8 * rows["a"]["epsilon_basic"]   # composition pays off
    assert rows["fm"]["epsilon_per_parameter"] is None                # no per-parameter figure
    assert rows["fm"]["mechanism"] == "functional_mechanism" and rows["fm"]["guarantee"] == "dp"
    assert rows["paper"]["accountant"] == "basic" and rows["paper"]["guarantee"] == "nominal"
    assert rows["paper"]["epsilon"] == 800.0
    assert ledger.composed_epsilon("nobody") == 0.0 and ledger.turns("nobody") == 0


def test_one_turn_is_exactly_epsilon_dp_and_laplace_would_understate_composition():
    import dp_accounting
    from dp_accounting.pld import PLDAccountant

    ev = turn_event(0.7)
    p = ev.noise_parameter
    assert math.log((1 - p / 2) / (p / 2)) == pytest.approx(0.7)     # randomized response, e^ε
    assert composed_epsilon([0.7], 1e-6) == pytest.approx(0.7, abs=1e-3)
    lap = PLDAccountant()
    lap.compose(dp_accounting.SelfComposedDpEvent(dp_accounting.LaplaceDpEvent(1 / 0.5), 100))
    assert lap.get_epsilon(1e-5) < composed_epsilon([0.5] * 100, 1e-5)


def test_huge_turn_budgets_fall_back_to_basic_composition():
    assert composition([5000.0, 5000.0], 1e-5) == (10_000.0, "basic")
    assert composition([0.5] * 10, 1e-5)[1] == "pld"
    with pytest.raises(ValueError):
        PrivacyLedger(delta=0.0)
    with pytest.raises(ValueError):
        PrivacyLedger().record("a", epsilon_turn=0.0, c=1)
