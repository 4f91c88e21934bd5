"""The empirical privacy auditor (crowdlearn.privacy.audit) and the audits of our mechanisms.

An auditor can only refute a claim; so every mechanism is audited twice: as implemented (the
lower bound must stay within the claimed ε) and broken or mis-scaled (the auditor must catch
it), so that these tests fail if the mechanism's noise is removed or mis-scaled.
"""
import functools
import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from crowdlearn.privacy import functional as F
from crowdlearn.privacy.audit import audit, clopper_pearson, epsilon_lower_bound
from crowdlearn.privacy.mechanisms import svt_select


# ---------------------------------------------------------------- the statistics
@settings(max_examples=40, deadline=None)
@given(n=st.integers(1, 500), frac=st.floats(0, 1), alpha=st.sampled_from([0.01, 0.05, 0.2]))
def test_clopper_pearson_matches_scipy_exact_interval(n, frac, alpha):
    from scipy.stats import binomtest
    k = int(round(frac * n))
    ref = binomtest(k, n).proportion_ci(confidence_level=1 - alpha, method="exact")
    lo, hi = clopper_pearson(k, n, alpha)
    assert lo == pytest.approx(ref.low, abs=1e-9) and hi == pytest.approx(ref.high, abs=1e-9)


def test_clopper_pearson_covers_the_true_proportion_at_its_level():
    rng = np.random.default_rng(0)
    p, n = 0.1, 200
    ks = rng.binomial(n, p, 4000)
    covered = np.mean([clopper_pearson(int(k), n, 0.1)[0] <= p <= clopper_pearson(int(k), n,
                                                                                  0.1)[1]
                       for k in ks])
    assert covered >= 0.9                                     # exact: conservative


def test_epsilon_lower_bound_is_below_the_true_ratio_and_grows_with_trials():
    # true probabilities 0.5 and 0.5·e^-1: ε = 1 exactly for that event
    small = epsilon_lower_bound(500, 1000, 184, 1000)
    large = epsilon_lower_bound(50_000, 100_000, 18_394, 100_000)
    assert 0 < small < large < 1.0
    assert large > 0.95
    assert epsilon_lower_bound(10, 100, 90, 100) == 0.0        # nothing proven
    assert epsilon_lower_bound(600, 1000, 100, 1000, delta=0.5) < \
        epsilon_lower_bound(600, 1000, 100, 1000)
    with pytest.raises(ValueError):
        epsilon_lower_bound(1, 10, 1, 10, confidence=1.0)


def test_laplace_mechanism_audits_close_to_its_epsilon_and_a_misscaled_one_is_refuted():
    lap = lambda d, rng, n: d + rng.laplace(0.0, 1.0, n)      # noqa: E731  ε = 1 for |d−d'| = 1
    res = audit(lap, 0.0, 1.0, trials=200_000, vectorized=True, rng=np.random.default_rng(1),
                claimed_epsilon=1.0)
    assert 0.85 < res.epsilon_lower_bound <= 1.0 and not res.refutes_claim
    assert res.trials == 150_000                              # a quarter chose the event
    half = lambda d, rng, n: d + rng.laplace(0.0, 0.5, n)     # noqa: E731  really ε = 2
    bad = audit(half, 0.0, 1.0, trials=200_000, vectorized=True, rng=np.random.default_rng(1),
                claimed_epsilon=1.0)
    assert bad.refutes_claim and 1.5 < bad.epsilon_lower_bound <= 2.0


def test_a_users_own_mechanism_with_a_fixed_event():
    """Randomized response with p(truth) = 3/4 is ln 3-DP; the event "answered yes" shows it."""
    def rr(bit, rng):
        return bit if rng.random() < 0.75 else 1 - bit
    res = audit(rr, 1, 0, trials=40_000, event=lambda out: out == 1,
                rng=np.random.default_rng(2), claimed_epsilon=math.log(3))
    assert 0.9 < res.epsilon_lower_bound <= math.log(3) and not res.refutes_claim
    assert res.p0 == pytest.approx(0.75, abs=0.01) and res.p1 == pytest.approx(0.25, abs=0.01)
    d = res.as_dict()
    assert d["refutes_claim"] is False and d["trials"] == 40_000


def test_a_mechanism_without_noise_is_refuted_at_any_claim():
    res = audit(lambda d, rng: d, 0.0, 1.0, trials=2000, rng=np.random.default_rng(3),
                claimed_epsilon=5.0)
    assert res.refutes_claim and res.epsilon_lower_bound > 5.0


# ---------------------------------------------------------------- the SVT release of DSSGD
GAMMA = 0.05


def _svt_turn(release, *, eps1=0.5, eps2=0.5, n=1):
    """One DSSGD turn (c = 1) on a Δw vector; the statistic: the first parameter's released
    value, or −inf when it was not released."""
    def mech(dw, rng):
        idx, vals = svt_select(dw, c=1, tau=1e-3, gamma=GAMMA, eps1=eps1, eps2=eps2, rng=rng,
                               release=release)
        hit = np.flatnonzero(idx == 0)
        return float(vals[hit[0]]) if hit.size else -math.inf
    return mech


@pytest.mark.parametrize("far", [1.0, 20.0])
def test_clipped_svt_release_stays_within_its_claim_with_values_far_above_gamma(far):
    """Neighbouring Δw at ±far (20 and 400 times γ): the default release clips them to ±γ
    before the noise, so the lower bound stays within ε_turn = ε1 + ε2 = 1."""
    res = audit(_svt_turn("clipped"), np.array([far]), np.array([-far]), trials=30_000,
                rng=np.random.default_rng(4), claimed_epsilon=1.0)
    assert not res.refutes_claim, res
    # the release alone moves by 2γ under noise 2cΔf/ε2 = 4γ/ε2: a loss of ε2/2 = 0.25 (the
    # selection adds at most ε1/2): the auditor sees most of it, so the noise is really there
    assert 0.15 < res.epsilon_lower_bound <= 0.5


def test_paper_svt_release_is_caught_by_the_same_audit():
    res = audit(_svt_turn("paper"), np.array([1.0]), np.array([-1.0]), trials=30_000,
                rng=np.random.default_rng(4), claimed_epsilon=1.0)
    assert res.refutes_claim and res.epsilon_lower_bound > 2.0, res


def test_svt_release_noise_scale_is_pinned_by_the_audit():
    """With the selection certain (ε1 huge) the clipped release's loss on neighbours ±γ is
    exactly ε2/2 on the event "released at +γ": the auditor's estimate must be close, so a
    noise scale off by 2× either way (loss ε2 or ε2/4) fails here."""
    mech = _svt_turn("clipped", eps1=1e9, eps2=2.0)
    res = audit(mech, np.array([GAMMA]), np.array([-GAMMA]), trials=60_000,
                rng=np.random.default_rng(5), claimed_epsilon=1.0)
    assert res.epsilon_estimate == pytest.approx(1.0, abs=0.12), res
    assert res.epsilon_lower_bound <= 1.0


def test_svt_on_a_longer_vector_with_one_parameter_changed():
    """A turn over 8 parameters, c = 1, the neighbours differ in one far-out parameter."""
    base = np.full(8, 0.02)
    d0, d1 = base.copy(), base.copy()
    d0[0], d1[0] = 5.0, -5.0
    for release, refuted in (("clipped", False), ("paper", True)):
        res = audit(_svt_turn(release, n=8), d0, d1, trials=20_000,
                    rng=np.random.default_rng(6), claimed_epsilon=1.0)
        assert res.refutes_claim is refuted, (release, res)


def test_dssgd_audit_release_helper_at_the_run_scales():
    from crowdlearn.protocols.dssgd import DSSGDParams, audit_release
    paper = DSSGDParams(rounds=1, dp=True, epsilon=1.0, release="paper")
    clipped = DSSGDParams(rounds=1, dp=True, epsilon=1.0)
    assert audit_release(paper, 1.0, rng=np.random.default_rng(7)).refutes_claim
    res = audit_release(clipped, 1.0, rng=np.random.default_rng(7))
    assert not res.refutes_claim and res.claimed_epsilon == 1.0


# ---------------------------------------------------------------- the functional mechanism
def _monomials(p, kind):
    d = p.dim
    return np.concatenate([(p.M * (2 - np.eye(d)))[np.triu_indices(d)], p.alpha,
                           [p.const if kind == "linear" else 0.0]])


def _row_coefficients(kind, z, y, K=None):
    p = F.coefficients(kind, z[None, :], np.array([y]), num_classes=K)
    if kind == "softmax":       # the data statistics the noise goes on: H (upper), G
        H = p.H * (2 - np.eye(p.H.shape[0]))
        return np.concatenate([H[np.triu_indices(H.shape[0])], p.G.reshape(-1)])
    return _monomials(p, kind)


@functools.cache
def _adversarial_pair(kind, d, K=None, starts=4, seed=0):
    """Two unit-ball rows (and targets) whose coefficient vectors are as far apart in L1 as a
    local search from several starts finds: the worst case Δ must cover."""
    from scipy.optimize import minimize

    rng = np.random.default_rng(seed)
    # up to symmetry: softmax labels equal or different, logistic labels different
    labels = [(0, 1), (0, 0)] if kind == "softmax" else \
        [(1, 0)] if kind == "logistic" else [(1.0, -1.0)]

    def unit(v):
        return v / max(1.0, np.linalg.norm(v))

    best = (-1.0, None)
    for ya, yb in labels:
        def neg(v, ya=ya, yb=yb):
            z0, z1 = unit(v[:d]), unit(v[d:])
            return -np.abs(_row_coefficients(kind, z0, ya, K)
                           - _row_coefficients(kind, z1, yb, K)).sum()
        for _ in range(starts):
            r = minimize(neg, rng.normal(size=2 * d), method="Nelder-Mead",
                         options={"maxiter": 1500, "xatol": 1e-6, "fatol": 1e-8})
            if -r.fun > best[0]:
                best = (-r.fun, (unit(r.x[:d]), ya, unit(r.x[d:]), yb))
    return best


@pytest.mark.parametrize("kind,K", [("linear", None), ("logistic", None), ("softmax", 3)])
def test_fm_sensitivity_covers_adversarially_chosen_neighbouring_rows(kind, K):
    """Rows chosen to maximise the coefficient change (not random ones, whose change stays far
    below Δ): within Δ for both bounds, and a sizeable share of the ``l2`` bound, so a Δ formula
    that were too small would fail."""
    d = 4
    change, _ = _adversarial_pair(kind, d, K)
    delta_l2 = F.sensitivity(kind, d, num_classes=K, bound="l2")
    assert change <= delta_l2 + 1e-9
    assert change <= F.sensitivity(kind, d, num_classes=K) + 1e-9
    assert change >= 0.55 * delta_l2, (change, delta_l2)     # found: 64 %, 77 %, 71 % (d = 4)


def test_fm_audit_with_adversarial_rows_stays_within_epsilon_and_catches_misscaled_noise():
    """The functional mechanism on two datasets differing in the adversarial row, audited with
    the log-likelihood-ratio statistic of the Laplace noise: within ε at Δ, refuted at Δ/4."""
    kind, d, eps = "linear", 4, 1.0
    _, (z0, y0, z1, y1) = _adversarial_pair(kind, d)
    rest = F.unit_rows(np.random.default_rng(8).normal(size=(5, d)), 2.0)
    rest_y = np.random.default_rng(9).uniform(-1, 1, 5)
    D0 = (np.vstack([rest, z0]), np.append(rest_y, y0))
    D1 = (np.vstack([rest, z1]), np.append(rest_y, y1))
    lam0 = _monomials(F.coefficients(kind, *D0), kind)
    lam1 = _monomials(F.coefficients(kind, *D1), kind)
    delta = F.sensitivity(kind, d, bound="l2")

    polys = {0: F.coefficients(kind, *D0), 1: F.coefficients(kind, *D1)}

    def run(scale_div):
        def mech(which, rng):
            return F.perturb(polys[which], epsilon=eps, rng=rng, delta_f=delta / scale_div)

        b = delta / scale_div / eps

        def llr(noisy):             # log p(x | D0) − log p(x | D1) for Laplace(b) noise
            x = _monomials(noisy, kind)
            return float((np.abs(x - lam1) - np.abs(x - lam0)).sum() / b)

        return audit(mech, 0, 1, statistic=llr, trials=10_000,
                     rng=np.random.default_rng(10), claimed_epsilon=eps)

    honest = run(1.0)
    assert not honest.refutes_claim and honest.epsilon_lower_bound > 0.1, honest
    assert run(4.0).refutes_claim


# ---------------------------------------------------------------- DP-FedAvg (central, fixed C)
def _fedavg_round_mechanism(z: float, *, clip: bool = True):
    """One round of DP-FedAvg's own server aggregation (``DPFedAvg.server_aggregate``) on 1-d
    updates: the data is the list of the round's client updates; the output is the noisy mean."""
    from crowdlearn.privacy import dp_fedavg

    params = dp_fedavg.DPParams(mode="central", noise_multiplier=z, clip_norm=1.0, cohort=4,
                                population=4)
    dp = dp_fedavg.DPFedAvg(params)
    dp.accountant.epsilon = lambda rounds: 0.0      # the ledger is not the mechanism audited
    if not clip:                                    # the bug the audit must catch
        dp_fedavg_clip = dp_fedavg.clip_update
        dp_fedavg.clip_update = lambda d, c: (d, 1.0)

    def run(updates, rng):
        mean, _ = dp.server_aggregate([np.asarray(u, np.float64) for u in updates], rng)
        return float(mean[0])

    if not clip:
        return run, lambda: setattr(dp_fedavg, "clip_update", dp_fedavg_clip)
    return run, lambda: None


# add/remove one client whose update (100) is far beyond the clipping norm C = 1
_WITH = [[100.0], [0.0], [0.0], [0.0]]
_WITHOUT = [[0.0], [0.0], [0.0]]


def test_dp_fedavg_round_stays_within_its_epsilon_and_a_missing_clip_or_noise_is_caught():
    from crowdlearn.privacy.dp_fedavg import epsilon_direct

    claim = epsilon_direct(1.0, 1.0, 1, 1e-5)       # one full-participation Gaussian round
    mech, undo = _fedavg_round_mechanism(1.0)
    ok = audit(mech, _WITH, _WITHOUT, rng=np.random.default_rng(0), trials=20_000,
               delta=1e-5, claimed_epsilon=claim)
    assert 0 < ok.epsilon_lower_bound <= claim and not ok.refutes_claim

    mech, undo = _fedavg_round_mechanism(1.0, clip=False)
    try:
        unclipped = audit(mech, _WITH, _WITHOUT, rng=np.random.default_rng(1), trials=20_000,
                          delta=1e-5, claimed_epsilon=claim)
    finally:
        undo()
    assert unclipped.refutes_claim

    mech, _ = _fedavg_round_mechanism(0.1)          # a tenth of the noise the claim assumes
    weak = audit(mech, _WITH, _WITHOUT, rng=np.random.default_rng(2), trials=20_000,
                 delta=1e-5, claimed_epsilon=claim)
    assert weak.refutes_claim


# ---------------------------------------------------------------- DP-FedAvg, distributed noise
def _distributed_round(z: float, *, delivered: int, cohort: int = 4, quant_bits: int = 12,
                       clip: float = 2.0, bits: int = 48):
    """One round of distributed DP-FedAvg under secure aggregation, run by the code the
    simulation runs: each delivering client clips (``client_privatise``), quantises to the
    ``quant_bits`` grid of ``[-clip, clip]`` (``masking.quantise``), adds its integer noise share
    (``client_noise``); the sum in Z_R is dequantised and averaged by the server
    (``server_aggregate_sum``, which also records the round's ε).  Vectorised: coordinate ``i``
    of the vectors is trial ``i`` of the 1-d mechanism (the rounding bound is charged for one
    coordinate).  Data: the delivering clients' 1-d updates; the first may be far beyond C."""
    from crowdlearn.crypto import masking
    from crowdlearn.privacy import dp_fedavg

    dp = dp_fedavg.DPFedAvg(dp_fedavg.DPParams(mode="distributed", noise_multiplier=z,
                                               clip_norm=1.0, cohort=cohort, population=cohort))
    step = clip / masking.levels(quant_bits)
    dp.set_quantisation(step=step, dim=1)

    def run(updates, rng, trials):
        assert len(updates) == delivered
        total = np.zeros(trials, np.uint64)
        for u in updates:
            clipped, count = dp.client_privatise(np.array([u], np.float64), dp.clip_norm, rng)
            assert count is None                 # fixed clipping: no count coordinate
            x = np.full(trials, clipped[0])
            y = masking.quantise(x, clip=clip, quant_bits=quant_bits, modulus_bits=bits)
            noise = dp.client_noise(trials, dp.clip_norm, step, rng)
            y = masking.add_mod(y, noise.view(np.uint64), bits)
            total = masking.add_mod(total, y, bits)
        vec = masking.dequantise(total, clip=clip, quant_bits=quant_bits, modulus_bits=bits)
        mean, _ = dp.server_aggregate_sum(vec, delivered, rng=rng, bit_scale=2 * clip)
        return mean
    return run, dp


@pytest.mark.parametrize("delivered", [4, 1])
def test_distributed_dp_round_stays_within_the_reported_epsilon_with_and_without_dropouts(
        delivered):
    # neighbours: the first client's update is 100 (far beyond C = 1) or 0; the others send 0.
    # With 1 of 4 delivering, the sum carries one noise share (z·sqrt(1/4)) and the reported ε
    # is the accountant's for that; the ε of a full round would be refuted.
    from crowdlearn.crypto.masking import levels
    from crowdlearn.privacy.dp_fedavg import epsilon_direct

    mech, dp = _distributed_round(1.0, delivered=delivered)
    d0, d1 = [100.0] + [0.0] * (delivered - 1), [0.0] * delivered
    res = audit(mech, d0, d1, rng=np.random.default_rng(delivered), trials=400_000,
                vectorized=True, delta=1e-5)
    reported = dp.summary()["epsilon"]          # the ledger after the audit's rounds
    per_round = dp.history[-1]["noise_multiplier_effective"]
    rounding = (2.0 / levels(12)) / 2                   # √1 · step / 2
    assert per_round == pytest.approx(1.0 / (1.0 + rounding) * (delivered / 4) ** 0.5)
    claim = epsilon_direct(per_round, 1.0, 1, 1e-5)      # one round, as the audit runs it
    assert 0 < res.epsilon_lower_bound <= claim
    full = epsilon_direct(1.0, 1.0, 1, 1e-5)
    if delivered < 4:
        assert res.epsilon_lower_bound > full          # "m shares" would be a false claim
    assert reported >= claim                    # (the audit ran two rounds on the ledger)
    print(f"delivered {delivered}/4: lower bound {res.epsilon_lower_bound:.2f}, "
          f"reported for the round {claim:.2f}, full-noise claim {full:.2f}")


def test_distributed_dp_audit_catches_a_tenth_of_the_noise():
    from crowdlearn.privacy.dp_fedavg import epsilon_direct

    mech, dp = _distributed_round(0.1, delivered=4)
    res = audit(mech, [100.0, 0.0, 0.0, 0.0], [0.0] * 4, rng=np.random.default_rng(9),
                trials=100_000, vectorized=True, delta=1e-5,
                claimed_epsilon=epsilon_direct(1.0, 1.0, 1, 1e-5))
    assert res.refutes_claim
