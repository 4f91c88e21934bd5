"""Privacy mechanisms (Laplace, clipping, the sparse vector technique) and the ε ledger."""
import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from crowdlearn.privacy import (
    PrivacyLedger,
    clip,
    composed_epsilon,
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
       seed=st.integers(0, 2**32 - 1), preclip=st.booleans(), spread=st.floats(1e-4, 2.0))
def test_vectorised_svt_equals_the_literal_walk(n, c_frac, tau, gamma, log_eps, share, seed,
                                                preclip, spread):
    # small ε: noise dominates and segments are short (the Python probe); large ε: the noisy
    # test is close to |Δw| ≥ τ and long segments go through the numpy search
    dw = np.random.default_rng(seed ^ 0x5EED).normal(0.0, spread, n)
    c = max(1, int(c_frac * n))
    eps = 10.0 ** log_eps
    (fi, fv), (si, sv) = _both(dw, seed, c=c, tau=tau, gamma=gamma, eps1=share * eps,
                               eps2=(1 - share) * eps, preclip=preclip)
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


def test_svt_preclip_bounds_the_noised_value_sensitivity():
    # the paper adds the release noise to the unclipped value: a huge Δw_j stays at +γ whatever
    # the noise, while preclip releases clip(γ + noise), which can land anywhere in [-γ, γ]
    dw = np.full(200, 50.0)
    kw = dict(c=200, tau=0.0, gamma=0.1, eps1=200.0, eps2=200.0)
    _, paper = svt_select(dw, rng=np.random.default_rng(0), **kw)
    _, pre = svt_select(dw, rng=np.random.default_rng(0), preclip=True, **kw)
    assert np.all(paper == np.float32(0.1))
    assert pre.min() < 0.05


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
def _direct(epsilons, delta):
    """ε of pure-DP turns composed by dp-accounting directly, without the ledger."""
    import dp_accounting
    from dp_accounting.pld import PLDAccountant
    from dp_accounting.privacy_accountant import NeighboringRelation

    acc = PLDAccountant(NeighboringRelation.REPLACE_ONE)
    for e in epsilons:
        acc.compose(dp_accounting.RandomizedResponseDpEvent(
            noise_parameter=2.0 / (1.0 + math.exp(e)), num_buckets=2))
    return acc.get_epsilon(delta)


def test_ledger_composed_epsilon_equals_dp_accounting_directly():
    ledger = PrivacyLedger(delta=1e-5)
    for _ in range(40):
        ledger.record("a", epsilon_turn=0.3, c=100)
    for e in (0.2, 1.0, 0.5):
        ledger.record("b", epsilon_turn=e, c=10)
    assert ledger.composed_epsilon("a") == pytest.approx(_direct([0.3] * 40, 1e-5), rel=1e-9)
    # three unequal turns: the PLD's pessimistic discretisation lands a hair above the basic
    # sum, which is itself a valid bound, so the ledger reports the smaller of the two
    assert ledger.composed_epsilon("b") == pytest.approx(
        min(_direct([0.2, 1.0, 0.5], 1e-5), 1.7), rel=1e-9)
    assert ledger.composed_epsilon("a", 1e-3) == pytest.approx(_direct([0.3] * 40, 1e-3),
                                                               rel=1e-9)
    # the paper's figure and basic composition
    assert ledger.per_parameter_epsilon("a") == pytest.approx(0.003)
    assert ledger.nominal_epsilon("a") == pytest.approx(12.0)
    # advanced composition beats the basic sum over many small turns, never exceeds it
    assert ledger.composed_epsilon("a") < 0.8 * ledger.nominal_epsilon("a")
    assert ledger.composed_epsilon("b") <= ledger.nominal_epsilon("b") + 1e-9
    rows = {r["participant"]: r for r in ledger.rows()}
    assert rows["a"]["turns"] == 40 and rows["b"]["turns"] == 3
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
    assert composed_epsilon([5000.0, 5000.0], 1e-5) == 10_000.0
    with pytest.raises(ValueError):
        PrivacyLedger(delta=0.0)
    with pytest.raises(ValueError):
        PrivacyLedger().record("a", epsilon_turn=0.0, c=1)
