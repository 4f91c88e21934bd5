"""Functional mechanism (crowdlearn.privacy.functional) and the FM protocol (crowdlearn.protocols.fm)."""
import math
import subprocess
import sys

import numpy as np
import pytest

from crowdlearn.privacy import functional as F
from crowdlearn.protocols.fm import (
    FMDecline,
    FMFitJob,
    FMModel,
    FMParams,
    FMParticipant,
    FMRound,
    FMServer,
    FMUpload,
    LinearEvaluator,
    quality_weights,
    score_models,
)
from sim import wire
from sim.machine import (
    CancelJob,
    JobDone,
    PeerJoined,
    PeerLost,
    Received,
    Report,
    RunJob,
    Send,
    Start,
    TimerFired,
)


def rows(n, d, seed=0):
    rng = np.random.default_rng(seed)
    return F.unit_rows(rng.normal(size=(n, d)), math.sqrt(d) * 1.5), rng


# ---------------------------------------------------------------- coefficients
def test_linear_coefficients_are_the_exact_squared_loss():
    z, rng = rows(40, 5)
    y = rng.uniform(-1, 1, 40)
    poly = F.coefficients("linear", z, y)
    for _ in range(5):
        w = rng.normal(size=5) * 3
        assert poly(w) == pytest.approx(np.sum((y - z @ w) ** 2), rel=1e-12)
        assert np.allclose(poly.gradient(w), -2 * z.T @ (y - z @ w))


def test_logistic_coefficients_are_the_second_order_taylor_expansion():
    z, rng = rows(60, 4, seed=1)
    y = rng.integers(0, 2, 60)
    poly = F.coefficients("logistic", z, y)
    for scale in (0.01, 0.5, 2.0):
        w = rng.normal(size=4) * scale
        s = z @ w
        taylor = np.sum(math.log(2) + s / 2 + s ** 2 / 8 - y * s)
        assert poly(w) == pytest.approx(taylor, rel=1e-12)
    w = rng.normal(size=4) * 0.01                 # near 0 the surrogate is the loss
    s = z @ w
    assert poly(w) == pytest.approx(np.sum(np.logaddexp(0, s) - y * s), rel=1e-6)


def test_softmax_coefficients_are_the_second_order_taylor_expansion_of_cross_entropy():
    z, rng = rows(30, 3, seed=2)
    K = 4
    y = rng.integers(0, K, 30)
    poly = F.coefficients("softmax", z, y, num_classes=K)
    W = rng.normal(size=(3, K)) * 0.7
    S = z @ W
    onehot = np.eye(K)[y]
    hess = np.eye(K) / K - np.ones((K, K)) / K ** 2
    taylor = sum(math.log(K) + (1 / K - onehot[i]) @ S[i] + 0.5 * S[i] @ hess @ S[i]
                 for i in range(30))
    assert poly(W) == pytest.approx(taylor, rel=1e-12)
    W = W * 1e-3
    S = z @ W
    ce = np.sum(np.log(np.exp(S).sum(1)) - S[np.arange(30), y])
    assert poly(W) == pytest.approx(ce, rel=1e-6)


def test_sensitivities_follow_the_spec():
    for d in (1, 4, 31):
        assert F.sensitivity("linear", d) == 2 * (1 + 2 * d + d * d)
        assert F.sensitivity("logistic", d) == d * d / 4 + 3 * d
        assert F.sensitivity("linear", d, bound="l2") == pytest.approx(2 * (1 + math.sqrt(d)) ** 2)


# The sensitivities against adversarially chosen neighbouring rows (all three objectives, both
# bounds) and the audit of the perturbed coefficients: tests/test_audit.py.


# ---------------------------------------------------------------- noise
def test_noise_is_laplace_delta_over_epsilon_added_once_per_coefficient():
    z, rng = rows(50, 30, seed=4)
    y = rng.uniform(-1, 1, 50)
    poly = F.coefficients("linear", z, y)
    eps = 0.5
    b = F.sensitivity("linear", 30) / eps
    noisy = F.perturb(poly, epsilon=eps, rng=np.random.default_rng(11))
    assert noisy.noise_scale == b
    d = 30
    iu = np.triu_indices(d)
    eta_quad = ((noisy.M - poly.M) * (2 - np.eye(d)))[iu]     # monomial noise
    eta = np.concatenate([eta_quad, noisy.alpha - poly.alpha, [noisy.const - poly.const]])
    assert eta.size == d * (d + 1) // 2 + d + 1
    # the draws are exactly the documented sequence
    assert np.allclose(eta, np.random.default_rng(11).laplace(0, b, eta.size), rtol=1e-9)
    # and statistically Laplace(b): E|η| = b, Var η = 2b²
    assert np.mean(np.abs(eta)) == pytest.approx(b, rel=0.1)
    assert np.var(eta) == pytest.approx(2 * b * b, rel=0.2)
    assert np.allclose(noisy.M, noisy.M.T)
    again = F.perturb(poly, epsilon=eps, rng=np.random.default_rng(11))
    assert np.array_equal(again.M, noisy.M) and np.array_equal(again.alpha, noisy.alpha)


def test_softmax_noise_goes_on_the_data_statistics():
    z, rng = rows(20, 5, seed=5)
    poly = F.coefficients("softmax", z, rng.integers(0, 3, 20), num_classes=3)
    noisy = F.perturb(poly, epsilon=2.0, rng=np.random.default_rng(0))
    b = F.sensitivity("softmax", 5, num_classes=3) / 2.0
    assert noisy.noise_scale == b
    eta = np.concatenate([((noisy.H - poly.H) * (2 - np.eye(5)))[np.triu_indices(5)],
                          (noisy.G - poly.G).ravel()])
    assert np.allclose(eta, np.random.default_rng(0).laplace(0, b, eta.size))
    assert noisy.const == poly.const


def test_infinite_epsilon_draws_nothing():
    z, rng = rows(10, 3)
    poly = F.coefficients("linear", z, rng.uniform(-1, 1, 10))
    assert F.perturb(poly, epsilon=math.inf, rng=None) is poly


# ---------------------------------------------------------------- solving
def test_trimming_makes_an_indefinite_noisy_objective_bounded():
    z, rng = rows(20, 8, seed=6)
    noisy = F.perturb(F.coefficients("linear", z, rng.uniform(-1, 1, 20)), epsilon=0.1,
                      rng=np.random.default_rng(0))
    assert np.linalg.eigvalsh(noisy.M).min() < 0
    t = F.trim(noisy)
    assert t.trimmed > 0 and np.all(t.lam > 0)
    w = F.solve(t)
    for _ in range(20):        # a minimum of the trimmed objective
        assert t(w) <= t(w + rng.normal(size=8) * 0.1) + 1e-9


def test_proximal_solve_is_the_minimiser_with_ridge_and_pull():
    z, rng = rows(30, 4, seed=7)
    t = F.trim(F.perturb(F.coefficients("linear", z, rng.uniform(-1, 1, 30)), epsilon=1.0,
                         rng=rng), ridge=0.7)
    c = rng.normal(size=4)
    w = F.solve(t, center=c, mu=2.0)
    obj = lambda v: t(v) + 0.7 * v @ v + 1.0 * (v - c) @ (v - c)   # noqa: E731
    for _ in range(20):
        assert obj(w) <= obj(w + rng.normal(size=4) * 0.05) + 1e-9


def test_infinite_epsilon_equals_least_squares():
    from sklearn.linear_model import LinearRegression

    from crowdlearn.data import load_dataset
    ds = load_dataset("diabetes", seed=0)
    d = ds.num_features
    sc = F.Scaling(x_bound=100.0, y_bound=10.0)        # no row or target is clipped
    assert np.linalg.norm(ds.x_train, axis=1).max() < 100 and np.abs(ds.y_train).max() < 10
    w = F.fit("linear", sc.rows(ds.x_train), sc.targets(ds.y_train), epsilon=math.inf,
              rng=None, ridge=1.0)
    kernel, bias = sc.to_dense(w, "linear")
    ref = LinearRegression().fit(ds.x_train, ds.y_train)
    assert np.allclose(kernel[:, 0], ref.coef_, atol=1e-4)
    assert bias[0] == pytest.approx(ref.intercept_, abs=1e-4)
    pred = ds.x_test @ kernel[:, 0] + bias[0]
    assert np.allclose(pred, ref.predict(ds.x_test), atol=1e-4)
    assert d == 10


def test_infinite_epsilon_logistic_is_close_to_logistic_regression():
    from sklearn.linear_model import LogisticRegression

    from crowdlearn.data import load_dataset
    ds = load_dataset("breast_cancer", seed=0)
    sc = F.Scaling(x_bound=math.sqrt(ds.num_features))
    w = F.fit("logistic", sc.rows(ds.x_train), ds.y_train, epsilon=math.inf, rng=None)
    kernel, bias = sc.to_dense(w, "logistic")
    ours = np.argmax(ds.x_test @ kernel + bias, axis=1)
    ref = LogisticRegression(max_iter=5000).fit(ds.x_train, ds.y_train).predict(ds.x_test)
    assert np.mean(ours == ds.y_test) >= np.mean(ref == ds.y_test) - 0.03
    assert np.mean(ours == ref) >= 0.95


@pytest.mark.parametrize("name,kind", [("breast_cancer", "logistic"), ("diabetes", "linear")])
def test_utility_improves_with_epsilon(name, kind):
    from crowdlearn.data import load_dataset
    ds = load_dataset(name, seed=0)
    sc = F.Scaling(x_bound=math.sqrt(ds.num_features), y_bound=3.0)
    z = sc.rows(ds.x_train)
    y = sc.targets(ds.y_train) if kind == "linear" else ds.y_train
    curve = []
    for eps in (0.3, 3.0, 30.0, math.inf):
        vals = []
        for seed in range(6):
            w = F.fit(kind, z, y, epsilon=eps, rng=np.random.default_rng(seed), bound="l2",
                      ridge=1.0)
            kernel, bias = sc.to_dense(w, kind)
            out = ds.x_test @ kernel + bias
            vals.append(np.mean(out.argmax(1) == ds.y_test) if kind == "logistic"
                        else -np.sqrt(np.mean((out[:, 0] - ds.y_test) ** 2)))
        curve.append(np.mean(vals))
    assert all(a < b for a, b in zip(curve, curve[1:], strict=False)), curve


def test_scaling_maps_rows_into_the_unit_ball_and_back_to_an_affine_model():
    rng = np.random.default_rng(8)
    x = rng.normal(size=(100, 6)) * 3
    sc = F.Scaling(x_bound=4.0)
    z = sc.rows(x)
    assert np.linalg.norm(z, axis=1).max() <= 1 + 1e-12
    w = rng.normal(size=7)
    kernel, bias = sc.to_dense(w, "logistic")
    inside = np.linalg.norm(x, axis=1) <= 4.0
    logits = x @ kernel + bias
    assert np.allclose(logits[inside, 1], (z @ w)[inside], atol=1e-5)
    assert np.all(logits[:, 0] == 0)


# ---------------------------------------------------------------- scores and weights
def test_scores_and_weights():
    model = FMModel("logistic", F.Scaling(), 2, 2)
    z = np.array([[0.5, 0.0, 0.5], [-0.5, 0.0, 0.5], [0.0, 0.5, 0.5]])
    y = np.array([1, 0, 1])
    good, bad = np.array([1.0, 1.0, 0.0]), np.array([-1.0, -1.0, 0.0])
    s, C = score_models(model, [good, bad], z, y, clip=0.5)
    assert s.tolist() == [0.0, 1.0] and C == 1.0
    assert quality_weights(np.array([0.2, 0.25, 0.9, 0.3]), margin=0.1).tolist() == [1, 1, 0, 1]
    sm = quality_weights(np.array([0.0, 0.1]), rule="softmax", margin=0.1)
    assert sm[0] == 1 and sm[1] == pytest.approx(math.exp(-1))


# ---------------------------------------------------------------- messages and machines
def test_messages_round_trip_on_the_wire():
    up = FMUpload(3, np.arange(5, dtype=np.float32))
    assert wire.size(up) == len(wire.encode(up)) == 2 + 9 + 3 + 4 + 20 + 0
    back = wire.decode(wire.encode(up))
    assert back.round == 3 and np.array_equal(back.params, up.params)
    r = FMRound(0, None, (np.ones((2, 3), np.float32), np.zeros(3, np.float32)))
    back = wire.decode(wire.encode(r))
    assert back.params is None and np.array_equal(back.hidden[0], r.hidden[0])
    assert wire.decode(wire.encode(FMDecline(1, "memory"))).reason == "memory"


def _server(participants=(0, 1, 2), rounds=2, **kw):
    model = FMModel("logistic", F.Scaling(), 2, 2)
    val = (np.array([[0.5, 0.1], [-0.5, 0.2]], np.float32), np.array([1, 0]))
    s = FMServer("server", model, list(participants), FMParams(rounds=rounds, **kw),
                 validation=val, rng=np.random.default_rng(0))
    for p in participants:
        s.handle(PeerJoined(p), 0.0)
    return s


def test_server_runs_rounds_averages_and_halts():
    s = _server()
    eff = s.handle(Start(), 0.0)
    assert [e.dst for e in eff] == [0, 1, 2] and eff[0].message.params is None
    for p, v in [(0, [1, 0, 0]), (1, [0, 1, 0])]:
        assert s.handle(Received(p, FMUpload(0, np.array(v, np.float32))), 1.0) == []
    eff = s.handle(Received(2, FMUpload(0, np.array([0, 0, 4], np.float32))), 1.5)
    names = [e.name for e in eff if isinstance(e, Report)]
    assert names == ["round", "global_model"]      # ε is the monitor's (participants charge)
    assert np.allclose(s.z, [1 / 3, 1 / 3, 4 / 3])
    sends = [e for e in eff if isinstance(e, Send)]
    assert len(sends) == 3 and np.allclose(sends[0].message.params, s.z)
    # round 1: participant 2 is lost, a late round-0 upload is ignored
    eff = s.handle(PeerLost(2), 2.0)
    late = s.handle(Received(0, FMUpload(0, np.zeros(3, np.float32))), 2.1)
    assert [e.name for e in late] == ["late_update"]
    s.handle(Received(0, FMUpload(1, np.zeros(3, np.float32))), 3.0)
    eff = s.handle(Received(1, FMUpload(1, np.ones(3, np.float32))), 3.0)
    assert np.allclose(s.z, 0.5) and any(type(e).__name__ == "Halt" for e in eff)
    assert s.privacy_rows() == []                  # plain averaging: the server releases nothing


def test_server_deadline_closes_a_round_with_what_arrived():
    s = _server(deadline_s=5.0)
    s.handle(Start(), 0.0)
    assert s.next_timer() == 5.0
    s.handle(Received(1, FMUpload(0, np.full(3, 2.0, np.float32))), 1.0)
    eff = s.handle(TimerFired(), 5.0)
    info = next(e.value for e in eff if isinstance(e, Report) and e.name == "round")
    assert info["closed_by"] == "deadline" and info["aggregated"] == (1,)
    assert np.allclose(s.z, 2.0)


def test_quality_server_scores_once_with_noise_and_records_the_score_epsilon():
    def run(seed):
        s = _server(rounds=2, aggregation="quality", score_epsilon=0.5)
        s.rng = np.random.default_rng(seed)
        s.handle(Start(), 0.0)
        for p, v in [(0, [1, 0, 0]), (1, [2, 0, 0]), (2, [-1, 0, 0])]:
            s.eff = s.handle(Received(p, FMUpload(0, np.array(v, np.float32))), 1.0)
        return s
    s = run(5)
    names = [e.name for e in s.eff if isinstance(e, Report)]
    assert names[:3] == ["round", "privacy_charge", "global_model"]
    charge = s.eff[1].value
    assert charge["subject"] == "validation" and charge["epsilon_turn"] == 0.5
    assert charge["mechanism"] == "quality_scores"
    assert s.raw_scores == {0: 0.0, 1: 0.0, 2: 1.0}
    assert s.scores == run(5).scores and s.scores != run(6).scores      # reproducible noise
    noise = np.array([s.scores[p] - s.raw_scores[p] for p in (0, 1, 2)])
    b = 3 * 1.0 / (2 * 0.5)                          # k·C/(m·ε_s)
    assert np.allclose(noise, np.random.default_rng(5).laplace(0, b, 3))
    rows = {r["participant"]: r for r in s.privacy_rows()}
    assert rows["validation"]["epsilon_basic"] == 0.5 and rows["validation"]["releases"] == 1
    assert rows["validation"]["epsilon_per_parameter"] is None
    for p in (0, 1, 2):                              # round 1: no new scores, no new charge
        eff = s.handle(Received(p, FMUpload(1, np.zeros(3, np.float32))), 2.0)
    assert not [e for e in eff if isinstance(e, Report) and e.name == "privacy_charge"]
    rows = {r["participant"]: r for r in s.privacy_rows()}
    assert rows["validation"]["releases"] == 1


def test_participant_fits_once_then_takes_admm_steps():
    rng = np.random.default_rng(9)
    x = rng.normal(size=(30, 2)).astype(np.float32)
    y = (x[:, 0] > 0).astype(np.int64)
    model = FMModel("logistic", F.Scaling(x_bound=3.0), 2, 2)
    p = FMParticipant(4, model, np.arange(30), FMParams(rounds=3, epsilon=2.0, mu=1.5),
                      rng=np.random.default_rng(0))
    (run,) = p.handle(Received("server", FMRound(0, None)), 0.0)
    assert isinstance(run, RunJob) and run.job.objective is None and run.job.kind == "fm_fit"
    assert run.job.flops == 30 * 3 * 4 + 2 * 30 * 3 + 9 * 27
    res = run.job.run(x, y)
    eff = p.handle(JobDone(0, res), 1.0)
    up = next(e.message for e in eff if isinstance(e, Send))
    assert np.allclose(up.params, res.w.astype(np.float32))
    # the first upload is the release: charged by the participant, once, before it is sent
    (charge,) = [e for e in eff if isinstance(e, Report) and e.name == "privacy_charge"]
    assert eff.index(charge) < next(i for i, e in enumerate(eff) if isinstance(e, Send))
    assert charge.value["epsilon_turn"] == 2.0 and charge.tag("device") == 4
    assert charge.value["mechanism"] == "functional_mechanism" and charge.value["c"] is None
    z = np.array([0.3, -0.1, 0.05])
    (run,) = p.handle(Received("server", FMRound(1, z.astype(np.float32))), 2.0)
    assert run.job.objective is res.objective            # perturbed once, reused
    assert np.allclose(p.u, res.w - z, atol=1e-6)
    res2 = run.job.run(x, y)
    assert np.allclose(res2.w, F.solve(res.objective, center=z - p.u, mu=1.5), atol=1e-6)
    eff = p.handle(JobDone(1, res2), 3.0)
    up = next(e.message for e in eff if isinstance(e, Send))
    assert np.allclose(up.params, res2.w + p.u, atol=1e-5)
    assert not [e for e in eff if isinstance(e, Report)]  # post-processing: no new charge
    assert [r["releases"] for r in p.privacy_rows()] == [1]
    # a new round while a job runs cancels it
    p.handle(Received("server", FMRound(2, z.astype(np.float32))), 4.0)
    eff = p.handle(Received("server", FMRound(3, z.astype(np.float32))), 4.5)
    assert isinstance(eff[0], CancelJob) and eff[0].job_id == 2


def test_fit_job_is_reproducible_from_its_seed():
    rng = np.random.default_rng(10)
    x = rng.normal(size=(25, 3)).astype(np.float32)
    y = rng.normal(size=25).astype(np.float32)
    model = FMModel("linear", F.Scaling(x_bound=3.0), 1, 3)
    mk = lambda: FMFitJob.build(model, np.arange(25), epsilon=1.0, bound="spec",  # noqa
                                ridge=1.0, seed=42)
    assert np.array_equal(mk().run(x, y).w, mk().run(x, y).w)


# ---------------------------------------------------------------- fleets
@pytest.fixture(scope="module")
def registered():
    """FM is a built-in protocol: nothing to register (kept for the tests' signatures)."""
    yield


def fm_config(dataset="breast_cancer", **over):
    from crowdlearn.config import from_dict
    raw = {"protocol": "fm", "rounds": 10, "seed": 0, "fleet": {"devices": 10, "cells": 2},
           "data": {"dataset": dataset}, "model": {"arch": "linear"},
           "fm": {"epsilon": 10.0, "bound": "l2"}}
    for key, value in over.items():
        sec, _, k = key.rpartition(".")
        (raw.setdefault(sec, {}) if sec else raw)[k] = value
    return from_dict(raw)


def run_fm(cfg, **kw):
    from crowdlearn.experiment import Simulation
    kw.setdefault("trainer_factory", LinearEvaluator)
    sim = Simulation(cfg, **kw)
    return sim, sim.run()


def test_fleet_reports_global_models_epsilon_and_the_encoded_bytes(registered):
    sim, res = run_fm(fm_config(rounds=3))
    assert [r["round"] for r in res.metrics] == [0, 1, 2]
    assert all(r["epsilon"] == pytest.approx(10.0, abs=1e-3) for r in res.metrics)
    s = res.summary
    assert s["dp"] is True and s["privacy_mechanism"] == "functional_mechanism"
    assert s["epsilon"] == pytest.approx(10.0, abs=1e-3) and s["epsilon_guarantee"] == "dp"
    assert s["epsilon_quality_scores"] is None and s["accountant_fallback_to_basic"] is False
    assert sorted(r["participant"] for r in res.privacy) == list(range(10))
    assert all(r["releases"] == 1 and r["epsilon_per_parameter"] is None for r in res.privacy)
    assert res.summary["jobs_run"]["fm_fit"] == 30 and res.summary["completed"]
    p = sim.ctx.extra["model"].num_params
    up = 10 * 3 * wire.size(FMUpload(0, np.zeros(p, np.float32)))
    assert res.summary["bytes_up"] == up
    public = sim.ctx.extra["public"]
    assert public.size == 40
    assert not set(public.tolist()) & set(np.concatenate(sim.ctx.extra["parts"]).tolist())
    assert res.metrics[-1]["accuracy"] > 0.7


def test_admm_reaches_the_minimiser_of_the_summed_noisy_objectives(registered):
    sim, res = run_fm(fm_config(rounds=80, **{"fm.rho": 1.0, "fm.epsilon": 5.0}))
    ts = [sim.driver.machines[d].objective for d in range(10)]
    H = sum(t.Q @ np.diag(t.lam + t.ridge) @ t.Q.T + t.ridge * (np.eye(t.dim) - t.Q @ t.Q.T)
            for t in ts)
    w = -0.5 * np.linalg.solve(H, sum(t.Q @ t.qa for t in ts))
    z = sim.driver.machines["server"].z
    assert np.linalg.norm(z - w) <= 1e-2 * np.linalg.norm(w)


def test_quality_weighting_beats_plain_averaging_with_30_percent_flipped(registered):
    plain, quality, clean = [], [], []
    for seed in range(3):
        common = {"seed": seed, "quality.fraction": 0.3}
        _, r = run_fm(fm_config(**common))
        plain.append(r.metrics[-1]["accuracy"])
        sim, r = run_fm(fm_config(**common, **{"fm.aggregation": "quality"}))
        quality.append(r.metrics[-1]["accuracy"])
        flipped = set(sim.ctx.extra["corrupted"].unreliable)
        assert len(flipped) == 3
        server = sim.driver.machines["server"]
        assert {r["participant"] for r in server.privacy_rows()} == {"validation"}
        assert {row["participant"] for row in r.privacy} == set(range(10)) | {"validation"}
        assert r.summary["epsilon_quality_scores"] == pytest.approx(1.0, abs=1e-3)
        assert r.summary["epsilon"] == pytest.approx(10.0, abs=1e-3)   # the devices' only
        _, r = run_fm(fm_config(seed=seed))
        clean.append(r.metrics[-1]["accuracy"])
    p, q, c = np.mean(plain), np.mean(quality), np.mean(clean)
    assert q > p + 0.03, (plain, quality, clean)
    assert (q - p) / (c - p) >= 0.5, (plain, quality, clean)


def test_standard_evaluator_agrees_and_deep_mode_learns(registered):
    pytest.importorskip("tensorflow")
    from crowdlearn.training.fleet_trainer import FleetTrainer
    sim, res = run_fm(fm_config(rounds=2))
    ds = sim.dataset
    model = sim.driver.machines["server"].model
    w = model.to_weights(sim.driver.machines["server"].z)
    tf_scores = FleetTrainer(sim.spec, ds.x_train, ds.y_train).evaluate([w], ds.x_test, ds.y_test)
    np_scores = LinearEvaluator(sim.spec, None, None).evaluate([w], ds.x_test, ds.y_test)
    assert np.allclose(tf_scores, np_scores, atol=1e-4)
    # deep mode: hidden layers pre-trained on the server's public rows, FM on the output layer
    cfg = fm_config("digits", rounds=2, **{"model.arch": "mlp", "model.hidden": [16],
                                           "model.activation": "tanh", "fm.epsilon": math.inf,
                                           "fm.public_size": 100, "fm.pretrain_epochs": 10})
    sim, res = run_fm(cfg, trainer_factory=None)
    assert res.summary["jobs_run"] == {"train_read": 1, "fm_fit": 20}
    assert res.metrics[-1]["accuracy"] > 0.8


def test_config_section_cross_check_and_params(registered):
    import dataclasses

    from crowdlearn.protocols.fm import CONFIG_SECTION, cross_check, params_from_config
    fields = {f.name for f in dataclasses.fields(FMParams)} - {"rounds", "mu"}
    assert set(CONFIG_SECTION) == fields
    cfg = fm_config()
    assert params_from_config(cfg).epsilon == 10.0
    section = {k: v.default for k, v in CONFIG_SECTION.items()}
    probs = cross_check(section, model={"arch": "mlp", "activation": "relu"})
    assert probs and "bounded" in probs[0]
    assert cross_check(section, model={"arch": "linear", "activation": "relu"}) == []
    with pytest.raises(ValueError, match="bound"):
        FMParams(rounds=1, bound="l1")


def test_fit_jobs_carry_row_ids_resolved_by_the_runner_in_the_rows_it_holds():
    import pickle
    import types

    from crowdlearn.protocols import fm
    rng = np.random.default_rng(11)
    x = rng.normal(size=(2000, 3)).astype(np.float32)
    y = rng.normal(size=2000).astype(np.float32)
    model = FMModel("linear", F.Scaling(x_bound=3.0), 1, 3)
    job = FMFitJob.build(model, np.arange(10, 40), epsilon=1.0, bound="spec", ridge=1.0, seed=3)
    assert len(pickle.dumps(job)) < x.nbytes / 4        # row ids, not the rows
    sim = types.SimpleNamespace(ctx=types.SimpleNamespace(extra={fm.jobs.ROWS: (x, y)}))
    (res,) = fm.runners(sim)["fm_fit"]([job])
    direct = FMFitJob.build(model, np.arange(30), epsilon=1.0, bound="spec", ridge=1.0,
                            seed=3).run(x[10:40], y[10:40])
    assert np.array_equal(res.w, direct.w)


def test_ring0_modules_import_no_driver_or_tensorflow():
    code = ("import sys\nimport crowdlearn.privacy.functional, crowdlearn.data.quality, "
            "crowdlearn.protocols.fm\n"
            "print(','.join(m for m in ('simpy', 'tensorflow', 'sklearn') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == ""


def test_doctests_of_the_fm_modules():
    import doctest
    import importlib

    import crowdlearn.data.quality as quality
    import crowdlearn.privacy.functional as functional
    import crowdlearn.protocols.fm as fm
    for module in (functional, quality, fm):
        result = doctest.testmod(module, optionflags=doctest.ELLIPSIS)
        assert result.failed == 0 and result.attempted > 0, module.__name__
    for name in ("messages", "params", "model", "jobs", "scoring", "machines", "evaluator",
                 "config"):     # the package's modules (those without examples attempt none)
        module = importlib.import_module(f"crowdlearn.protocols.fm.{name}")
        assert doctest.testmod(module, optionflags=doctest.ELLIPSIS).failed == 0, name


def test_rescore_scores_the_participants_models_not_their_duals(registered):
    from crowdlearn.protocols.fm import score_models
    cfg = fm_config(rounds=6, **{"fm.aggregation": "quality", "fm.rescore": True,
                                 "quality.fraction": 0.3})
    sim, res = run_fm(cfg)
    server = sim.driver.machines["server"]
    ws = [sim.driver.machines[d].w for d in range(10)]
    us = [sim.driver.machines[d].u for d in range(10)]
    assert max(np.linalg.norm(u) for u in us) > 1e-2       # the duals are not negligible
    for d in range(10):                                    # the server's rebuilt w_i = v_i − u_i
        assert np.allclose(server.models[d], ws[d], rtol=1e-5, atol=1e-5)
    ys = server.model.targets(server.val_y)
    raw, _ = score_models(server.model, ws, server.val_z, ys, clip=server.params.score_clip)
    assert np.allclose([server.raw_scores[d] for d in range(10)], raw, atol=1e-6)
    wrong, _ = score_models(server.model, [w + u for w, u in zip(ws, us, strict=True)],
                            server.val_z, ys, clip=server.params.score_clip)
    assert not np.allclose(raw, wrong)                     # scoring w_i + u_i would differ
    assert res.summary["epsilon_quality_scores"] > 1.0     # six scorings compose
