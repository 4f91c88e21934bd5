"""The privacy attack suite (``crowdlearn.privacy.attacks``): metrics, Phong et al.'s
reconstruction on real DSSGD uploads, gradient inversion, membership inference, the SliceNet
follower's view and the simulation report."""

from __future__ import annotations

import math

import numpy as np
import pytest

from crowdlearn.privacy.attacks import metrics
from crowdlearn.privacy.attacks.membership import auc
from crowdlearn.privacy.attacks.reconstruction import (
    first_layer,
    per_neuron_reconstructions,
    reconstruct_from_first_layer,
    reconstruct_from_sparse,
    score_reconstruction,
)
from crowdlearn.privacy.attacks.views import reconstruct_from_weighted_sums
from crowdlearn.training.models import mlp


@pytest.fixture(scope="module")
def digits():
    from crowdlearn.data import load_dataset
    return load_dataset("digits")


@pytest.fixture(scope="module")
def spec_w():
    spec = mlp(64, [32], 10)
    return spec, spec.init_weights(np.random.default_rng(0))


@pytest.fixture(scope="module")
def trainer(digits, spec_w):
    from crowdlearn.training.fleet_trainer import FleetTrainer
    # no XLA: one-sample jobs are tiny and compiling would dominate the test time
    return FleetTrainer(spec_w[0], digits.x_train, digits.y_train, jit_compile=False)


# ---------------------------------------------------------------- metrics
def test_psnr_ssim_identical_and_noisy():
    rng = np.random.default_rng(0)
    x = rng.uniform(size=(4, 64))
    assert metrics.psnr(x[0], x[0]) == math.inf
    assert np.all(np.isinf(metrics.psnr(x, x)))
    assert np.allclose(metrics.ssim(x, x, image_shape=(8, 8)), 1.0)
    s_small, s_big = (np.clip(x + rng.normal(0, sd, x.shape), 0, 1) for sd in (0.05, 0.3))
    p_small, p_big = metrics.psnr(x, s_small), metrics.psnr(x, s_big)
    assert np.all(p_big < p_small) and np.all(p_small < 40)
    q_small = metrics.ssim(x, s_small, image_shape=(8, 8))
    q_big = metrics.ssim(x, s_big, image_shape=(8, 8))
    assert np.all(q_big < q_small) and np.all(q_small < 1.0)
    # PSNR by hand: MSE 0.01 on range 1 is 20 dB
    assert metrics.psnr(np.zeros(10), np.full(10, 0.1)) == pytest.approx(20.0)
    # masked PSNR ignores the other pixels
    assert metrics.psnr(np.zeros(4), np.array([0, 0, 1.0, 1.0]), mask=[1, 1, 0, 0]) == math.inf


def test_ssim_properties():
    rng = np.random.default_rng(1)
    a = rng.uniform(size=(28, 28))
    b = rng.uniform(size=(28, 28))
    assert metrics.ssim(a, b) == pytest.approx(metrics.ssim(b, a))
    assert -1.0 <= metrics.ssim(a, b) < 0.2                    # unrelated noise images
    assert metrics.ssim(a, 0.5 * a + 0.25) < 1.0               # contrast/luminance change


def test_reference_classifier(digits):
    clf = metrics.ReferenceClassifier(digits.x_train, digits.y_train)
    assert clf.score_real(digits.x_test, digits.y_test) > 0.9
    mean = np.tile(digits.x_train.mean(axis=0), (len(digits.y_test), 1))
    assert clf.accuracy(mean, digits.y_test) < 0.2             # the mean image is no digit


# ---------------------------------------------------------------- Phong et al.
def test_one_sample_reconstruction_from_full_gradients_is_exact(digits, spec_w):
    from crowdlearn.privacy.attacks.inversion import model_gradients

    spec, w = spec_w
    for i in (0, 7, 123):
        x, y = digits.x_train[i:i + 1], digits.y_train[i:i + 1]
        g = model_gradients(spec, w, x, y)
        rec = reconstruct_from_first_layer(g[0], g[1])
        assert np.max(np.abs(rec - x[0])) < 1e-4
        per = reconstruct_from_first_layer(g[0], g[1], per_neuron=True)
        assert per.shape[1] == 64 and len(per) >= 1
        assert np.max(np.abs(per - x[0])) < 1e-3                 # every active neuron gives x


def test_batch_of_two_relu_neurons_that_one_sample_reached_leak_it(digits, spec_w):
    """With a batch, a column ratio mixes the samples that reached the neuron; ReLU neurons that
    only one sample activated still give that sample exactly."""
    from crowdlearn.privacy.attacks.inversion import model_gradients

    spec, w = spec_w
    x, y = digits.x_train[:2], digits.y_train[:2]
    g = model_gradients(spec, w, x, y)
    per = reconstruct_from_first_layer(g[0], g[1], per_neuron=True)
    err = np.abs(per[:, None, :] - x[None]).max(axis=2)         # (neurons, 2 samples)
    assert np.all(err.min(axis=0) < 1e-4)                       # both samples leak exactly
    assert np.any(err.min(axis=1) > 1e-2)                       # and some neurons mix them


def test_dssgd_upload_one_sample_partial_recovery_is_exact(digits, spec_w, trainer):
    from crowdlearn.privacy.attacks.reconstruction import dssgd_participant_upload

    spec, w = spec_w
    i = 5
    x = digits.x_train[i].astype(np.float64)
    up, delta = dssgd_participant_upload(spec, w, digits.x_train, digits.y_train, [i],
                                         theta_u=0.1, batch_size=1, lr=0.05, gamma=0.05,
                                         trainer=trainer)
    n = first_layer(spec).size
    assert up.indices.size == math.floor(0.1 * n)              # the participant's top-k
    rec = reconstruct_from_sparse(up.indices, up.values, spec, gamma=0.05)
    assert 0.0 < rec.coverage < 1.0
    assert np.max(np.abs(rec.x[rec.mask] - x[rec.mask])) < 1e-4
    # with every entry uploaded all non-zero pixels come back, and the top-k bound pins the zeros
    up_all, _ = dssgd_participant_upload(spec, w, digits.x_train, digits.y_train, [i],
                                         theta_u=1.0, trainer=trainer)
    full = reconstruct_from_sparse(up_all.indices, up_all.values, spec, gamma=0.05)
    assert np.all(full.mask[x != 0])
    assert np.max(np.abs(full.filled("bounded", mean=digits.x_train.mean(0)) - x)) < 5e-3
    sc = score_reconstruction(rec, x, mean=digits.x_train.mean(0), image_shape=(8, 8))
    assert sc["psnr_recovered"] > 80 and sc["psnr_mean_fill"] > sc["psnr_mean_only"]


def test_dssgd_several_local_steps_on_one_sample_still_exact(digits, spec_w, trainer):
    from crowdlearn.privacy.attacks.reconstruction import dssgd_participant_upload

    spec, w = spec_w
    x = digits.x_train[9].astype(np.float64)
    up, _ = dssgd_participant_upload(spec, w, digits.x_train, digits.y_train, [9],
                                     theta_u=0.1, local_epochs=4, trainer=trainer)
    rec = reconstruct_from_sparse(up.indices, up.values, spec, gamma=0.05)
    assert rec.coverage > 0
    assert np.max(np.abs(rec.x[rec.mask] - x[rec.mask])) < 1e-3


def test_clipped_values_are_censored():
    x, delta = np.array([0.5, 1.0]), np.array([0.1, 0.2])
    dw = np.concatenate([np.outer(x, delta).ravel(), delta])   # kernel (2, 2), bias (2,)
    clipped = np.clip(dw, -0.15, 0.15)                          # 0.2 entries hit gamma
    rec = reconstruct_from_sparse(np.arange(6), clipped, [(2, 2), (2,)], gamma=0.15)
    assert rec.censored == 2
    assert rec.x.tolist() == pytest.approx([0.5, 1.0])          # from neuron 0 only
    naive = reconstruct_from_sparse(np.arange(6), clipped, [(2, 2), (2,)])
    assert not np.allclose(naive.x, x)                          # ignoring γ gives wrong pixels


def test_per_neuron_images_separate_samples():
    x1, x2 = np.array([1.0, 0.0, 0.5, 0.25]), np.array([0.0, 1.0, 1.0, 0.5])
    gw = np.outer(x1, [0.2, 0.0, 0.1]) + np.outer(x2, [0.0, 0.4, 0.1])
    dw = np.concatenate([gw.ravel(), [0.2, 0.4, 0.2]])
    r = per_neuron_reconstructions(np.arange(dw.size), dw, [(4, 3), (3,)])
    imgs = r.filled("zero")
    assert np.allclose(imgs[0], x1) and np.allclose(imgs[1], x2)
    assert np.allclose(imgs[2], (x1 + x2) / 2)                  # a neuron both samples reached


# ---------------------------------------------------------------- gradient inversion
def test_gradient_inversion_batch_one_recovers_the_input(digits, spec_w):
    from crowdlearn.privacy.attacks.inversion import (
        infer_labels,
        invert_gradients,
        match_and_score,
        model_gradients,
    )

    spec, w = spec_w
    x, y = digits.x_train[3:4], digits.y_train[3:4]
    g = model_gradients(spec, w, x, y)
    assert infer_labels(g[-1], 1).tolist() == y.tolist()        # iDLG
    res = invert_gradients(spec, w, g, 1, iterations=150, seed=0, image_shape=(8, 8))
    sc = match_and_score(x, res.x, image_shape=(8, 8))
    # measured 143 dB (exact up to float32) with this seed; threshold far below
    assert sc["psnr_mean"] > 40 and sc["ssim_mean"] > 0.99


def test_match_and_score_uses_the_best_assignment():
    from crowdlearn.privacy.attacks.inversion import match_and_score

    rng = np.random.default_rng(0)
    x = rng.uniform(size=(3, 64))
    sc = match_and_score(x, x[[2, 0, 1]])
    assert sorted(sc["assignment"]) == [(0, 1), (1, 2), (2, 0)]
    assert all(math.isinf(p) for p in sc["psnr"])


# ---------------------------------------------------------------- membership
def test_auc_chance_for_identical_distributions():
    rng = np.random.default_rng(0)
    vals = [auc(rng.exponential(size=500), rng.exponential(size=500)) for _ in range(20)]
    assert abs(np.mean(vals) - 0.5) < 0.02
    assert auc([1, 1, 1], [1, 1]) == 0.5                        # ties count one half
    assert auc([0.0, 0.1], [0.2, 0.3]) == 1.0
    from sklearn.metrics import roc_auc_score
    m, n = rng.normal(0, 1, 300), rng.normal(0.5, 1, 200)
    ref = roc_auc_score(np.r_[np.ones(300), np.zeros(200)], -np.r_[m, n])
    assert auc(m, n) == pytest.approx(ref)


def test_membership_auc_near_one_for_a_memorising_model(digits):
    from crowdlearn.privacy.attacks.inversion import model_gradients
    from crowdlearn.privacy.attacks.membership import loss_threshold_attack

    rng = np.random.default_rng(0)
    spec = mlp(64, [64], 10)
    w = [np.asarray(a, np.float64) for a in spec.init_weights(rng)]
    xm = digits.x_train[:24]
    ym = rng.integers(0, 10, 24)                 # random labels: only memorisation fits them
    for _ in range(300):
        w = [a - 0.5 * g for a, g in zip(w, model_gradients(spec, w, xm, ym), strict=True)]
    xn = digits.x_test[:200]
    yn = rng.integers(0, 10, 200)
    res = loss_threshold_attack(spec, w, xm, ym, xn, yn)
    assert res["member_accuracy"] == 1.0
    assert res["auc"] > 0.97 and res["max_advantage"] > 0.9 and res["advantage"] > 0.3


# ---------------------------------------------------------------- SliceNet follower
def test_follower_messages_are_the_weighted_sums():
    """PiecewiseNetwork sends a hidden-1 piece exactly x·W1[:, P] (what the view assumes)."""
    from crowdlearn.privacy.attacks.views import SliceNetFollowerView
    from slicenet.execution import PiecewiseNetwork, weight_specs
    from slicenet.graph import Dense, ModelDescription

    rng = np.random.default_rng(0)
    desc = ModelDescription((6,), [Dense(8, activation="relu"), Dense(3)])
    ws = [rng.normal(size=s.shape).astype("float32") for s in weight_specs(desc)]
    assignment = np.array([0, 1] * 4 + [0, 0, 1])            # 8 hidden-1 + (output not sliced)
    assignment = assignment[:desc.graph().num_vertices]
    net = PiecewiseNetwork(desc, assignment, ws)
    x, y = rng.uniform(size=(5, 6)).astype("float32"), rng.integers(0, 3, 5)
    view = SliceNetFollowerView(piece=1)
    _, msgs = net.step(x, y, 0.1)
    z = view.observe_messages(msgs)
    assert view.units.tolist() == [1, 3, 5, 7]
    assert np.allclose(z, x.astype(np.float64) @ ws[0][:, view.units], atol=1e-5)


def test_follower_min_norm_improves_with_piece_size(digits):
    rng = np.random.default_rng(0)
    x = digits.x_test[:50].astype(np.float64)
    w1 = rng.uniform(-0.2, 0.2, size=(64, 128))
    mean = digits.x_train.mean(0)
    prev = -np.inf
    scores = []
    for k in (4, 16, 32, 48, 64):
        cols = rng.choice(128, size=k, replace=False)
        z = x @ w1[:, cols]
        rec = reconstruct_from_weighted_sums(z, w1[:, cols], method="min_norm")
        scores.append(float(np.mean(metrics.psnr(x, np.clip(rec, 0, 1)))))
    for s in scores:
        assert s > prev
        prev = s
    assert scores[-1] > 100                                      # |P| = d: exact
    # without W1 the follower has its prior and nothing else
    blind = reconstruct_from_weighted_sums(z, None, prior_mean=mean)
    assert np.allclose(blind, mean)
    # the prior-centred and Gaussian variants beat plain min-norm when underdetermined
    cols = rng.choice(128, size=16, replace=False)
    z = x @ w1[:, cols]
    cov = np.cov(digits.x_train.T)
    p = {m: np.mean(metrics.psnr(x, reconstruct_from_weighted_sums(
        z, w1[:, cols], method=m, prior_mean=mean, prior_cov=cov, data_range=(0, 1))))
        for m in ("min_norm", "mean_centred", "gaussian")}
    assert p["min_norm"] < p["mean_centred"] < p["gaussian"]


# ---------------------------------------------------------------- views in a simulation
def test_privacy_report_on_a_small_dssgd_run():
    from crowdlearn.config import from_dict
    from crowdlearn.experiment import Simulation
    from crowdlearn.privacy.attacks.views import PrivacyProbe, privacy_report

    cfg = from_dict({"protocol": "dssgd", "rounds": 2, "seed": 3,
                     "fleet": {"devices": 4, "cells": 1}, "model": {"hidden": [16]},
                     "dssgd": {"theta_u": 0.1, "batch_size": 16, "lr": 0.1}})
    sim = Simulation(cfg)
    probe = PrivacyProbe(sim)
    sim.run()
    assert len(probe.server.uploads) == 8                       # 4 participants × 2 rounds
    up = probe.server.uploads[0]
    assert up.start is not None and up.indices.size <= math.floor(0.1 * sim.spec.num_params())
    rep = privacy_report(sim, probe, max_samples=200, uploads=4)
    assert rep["membership_target"] == "global"
    assert 0.0 <= rep["membership_auc"] <= 1.0
    assert rep["reconstruction_uploads"] == 4
    import json
    json.dumps(rep, allow_nan=False)                             # JSON-ready
    from crowdlearn.privacy.attacks.membership import local_models
    loc = local_models(sim)                                      # participants' own copies
    assert sorted(loc) == [0, 1, 2, 3]
    assert [a.shape for a in loc[0]] == [tuple(s) for s in sim.spec.param_shapes()]


def test_upload_attack_picks_its_candidate_without_the_truth():
    """The attacker picks the best-covered neuron's image, whatever the samples are."""
    from crowdlearn.privacy.attacks.views import _upload_leak
    x1 = np.array([1.0, 0.0, 0.5, 0.25])              # neuron 0: every pixel visible
    x2 = np.array([0.0, 1.0, 1.0, 0.75])              # neuron 1: three pixels visible
    gw = np.outer(x1, [0.2, 0.0]) + np.outer(x2, [0.0, 0.4])
    flat = np.concatenate([gw.ravel(), [0.2, 0.4]])
    keep = np.array([i for i in range(flat.size) if i != 3 * 2 + 1])   # hide W1[3, 1]
    spec = [(4, 2), (2,)]
    prior = np.full(4, 0.5)
    public = np.stack([prior, np.zeros(4)])
    rng = np.random.default_rng(0)
    r1 = _upload_leak(keep, flat[keep], spec, x1[None], prior, public, gamma=None,
                      topk_bound=False, rng=rng)
    assert math.isinf(r1["psnr"])                                   # the pick is x1 exactly
    r2 = _upload_leak(keep, flat[keep], spec, x2[None], prior, public, gamma=None,
                      topk_bound=False, rng=rng)
    # an oracle would score neuron 1 (x2 on 3 of 4 pixels); the attacker still picks x1
    assert r2["psnr"] == pytest.approx(10 * np.log10(1 / np.mean((x1 - x2) ** 2)))
    assert r2["prior_psnr"] == pytest.approx(10 * np.log10(1 / np.mean((prior - x2) ** 2)))
    assert any(r2["random_public_psnr"] == pytest.approx(v)
               for v in (r2["prior_psnr"], 10 * np.log10(1 / np.mean(x2 ** 2))))


def test_a_follower_reads_every_label_off_the_output_errors():
    from crowdlearn.privacy.attacks.views import follower_pass, labels_from_output_errors
    rng = np.random.default_rng(0)
    spec = mlp(6, [8], 4)
    w = spec.init_weights(rng)
    x = rng.random((20, 6)).astype(np.float32)
    y = rng.integers(0, 4, 20)
    obs = follower_pass(spec, w, x, y, [0, 1, 2], batch_size=8, seed=1)
    assert len(obs["errors"]) == len(obs["batches"]) == 3
    got = np.concatenate([labels_from_output_errors(e) for e in obs["errors"]])
    assert np.array_equal(got, y[np.concatenate(obs["batches"])])
    assert np.allclose([e.sum(axis=1) for e in obs["errors"]][0], 0, atol=1e-6)   # p − onehot
