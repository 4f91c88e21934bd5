"""Privacy attacks against what each protocol's observers see (``crowdlearn.privacy.attacks``).

Measured on scikit-learn's digits (8×8, always) and Fashion-MNIST (28×28, when the files are
on the machine; ``--no-fashion`` skips it):

1. **One-sample reconstruction from full first-layer gradients** (Phong et al. 2018): the
   gradient of one sample under the initial weights, reconstruction = kernel column / bias
   entry; max absolute error and PSNR (``inf`` = bit-exact).
2. **Reconstruction from real DSSGD uploads** (``dssgd_participant_upload``: a
   ``DSSGDParticipant`` driven through one turn, its ``TrainJob`` run by ``FleetTrainer``, its
   own top-k selection and clipping γ = 0.05, lr = 0.05) at θu = 10 % and 1 %, for (a) one
   sample, batch 1, one step; (b) one sample, 5 local epochs (5 steps); (c) 4 samples, batch 1,
   one epoch (4 steps: the ratio mixes samples; we score the best per-neuron image per sample).
   Coverage (of all pixels and of the non-zero ones), max error on the recovered pixels,
   PSNR/SSIM with the gaps filled by the dataset mean ("mean fill") or by the mean clipped into
   the bound top-k leaks ("bounded fill"), the mean image alone as the no-attack baseline, and
   the accuracy of a reference classifier (logistic regression on the real training data) on
   the reconstructions.
3. **Gradient inversion** (Geiping et al. cosine loss, Adam, labels inferred from the output
   bias gradient) at batch 1, 4, 8 on the full gradient of one step; and at batch 4 from a
   DSSGD upload at θu = 10 % (only the uploaded entries matched).  PSNR/SSIM after Hungarian
   matching, label accuracy, classifier accuracy.
4. **Membership inference** (Yeom et al. loss threshold) on small simulations: FedAvg's final
   global model, DSSGD's final global model (θu = 10 %, and with DP), and standalone local models;
   AUC, advantage at the mean-training-loss threshold, best advantage over thresholds, test
   accuracy and bytes.
5. **SliceNet follower** holding a piece ``P`` of hidden layer 1 (weighted sums
   ``z = x·W1[:, P]``): without ``W1`` (its prior: the mean image), and with ``W1`` leaked --
   min-norm, prior-centred min-norm and Gaussian-prior reconstructions against ``|P|``, then the
   realistic cases for a METIS piece: exact ``W1``, the stale ``W1`` handed to the next dominator
   at the end of the pass, and the server's top-θ (θ = 0.5) uploaded weights of ``W1`` (unknown
   entries taken as 0).

Run::

    .venv/bin/python benchmarks/privacy_attacks.py --quick              # smoke, digits only
    .venv/bin/python benchmarks/privacy_attacks.py --write-docs         # full, rewrites
                                                                        # docs/experiments/privacy_attacks.md

All randomness is seeded (``--seed``).  Times are wall-clock on a shared 2-core machine and are
printed for orientation only.
"""

from __future__ import annotations

import argparse
import math
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

import crowdlearn.config  # noqa: E402,F401  (before crowdlearn.protocols.dssgd: import order)
from crowdlearn.data import fashion_mnist_available, load_dataset  # noqa: E402
from crowdlearn.privacy.attacks import metrics  # noqa: E402
from crowdlearn.privacy.attacks import reconstruction as rec  # noqa: E402
from crowdlearn.training.models import mlp  # noqa: E402

DOC = ROOT / "docs" / "experiments" / "privacy_attacks.md"
#: every per-seed value behind the doc (the doc is rendered from it: ``--render``)
DATA = ROOT / "docs" / "experiments" / "data" / "privacy_attacks.json"


# ---------------------------------------------------------------- helpers
def fmt(v, nd=2) -> str:
    if v is None:
        return "–"
    if isinstance(v, str):
        return v
    if isinstance(v, (int, np.integer)):
        return f"{int(v):,}"
    v = float(v)
    if math.isnan(v):
        return "–"
    if math.isinf(v):
        return "∞"
    if abs(v) >= 1e4 or (v != 0 and abs(v) < 10 ** (-nd)):
        return f"{v:.1e}"
    return f"{v:.{nd}f}"


def table(rows: list[dict], cols: list[tuple[str, str]]) -> str:
    head = "| " + " | ".join(h for _, h in cols) + " |"
    sep = "| " + " | ".join("---" for _ in cols) + " |"
    body = ["| " + " | ".join(fmt(r.get(k)) for k, _ in cols) + " |" for r in rows]
    return "\n".join([head, sep, *body])


def mean_finite(v) -> float:
    """Mean of PSNRs where ``inf`` (exact) is replaced by the cap of the docs (100 dB)."""
    a = np.minimum(np.asarray(v, np.float64), 100.0)
    return float(np.nanmean(a)) if a.size else math.nan


class Setting:
    """A dataset, its attacked MLP and helpers shared by the sections."""

    def __init__(self, name: str, hidden: list[int], seed: int):
        self.name = name
        self.ds = load_dataset(name, seed=seed)
        self.shape = self.ds.image_shape
        d = self.ds.x_train.shape[1]
        self.spec = mlp(d, hidden, self.ds.num_classes)
        self.w = self.spec.init_weights(np.random.default_rng(seed))
        # every prior comes from public data: the first half of the test images; the second
        # half is held out for the sections that score test images
        half = len(self.ds.x_test) // 2
        self.public = self.ds.x_test[:half].astype(np.float64)
        self.eval_x, self.eval_y = self.ds.x_test[half:], self.ds.y_test[half:]
        self.mean = self.public.mean(axis=0)
        self.cov = np.cov(self.public.T)
        self._clf = None
        self._trainer = None
        self.seed = seed

    @property
    def label(self) -> str:
        d = self.spec.input_dim
        return f"{self.name} (MLP {d}-{'-'.join(str(ly.units) for ly in self.spec.layers)})"

    @property
    def clf(self) -> metrics.ReferenceClassifier:
        if self._clf is None:
            self._clf = metrics.ReferenceClassifier(self.ds.x_train, self.ds.y_train,
                                                    seed=self.seed)
            self._clf.score_real(self.ds.x_test, self.ds.y_test)
        return self._clf

    @property
    def trainer(self):
        if self._trainer is None:
            from crowdlearn.training.fleet_trainer import FleetTrainer
            self._trainer = FleetTrainer(self.spec, self.ds.x_train, self.ds.y_train,
                                         jit_compile=False)
        return self._trainer

    def samples(self, n: int, salt: int) -> np.ndarray:
        return np.random.default_rng(self.seed + salt).choice(len(self.ds.y_train), n,
                                                              replace=False)


# ---------------------------------------------------------------- seeds
#: fields that name a row (equal across seeds), never averaged
ID_FIELDS = {"dataset", "theta_u", "case", "model", "observed", "batch", "piece", "w1", "method",
             "samples", "trials", "iterations", "n"}
DIGITS = {"psnr": 2, "ssim": 2, "bytes": 0, "epsilon": 0, "max_abs_error": None}


def _digits(key: str):
    for k, d in DIGITS.items():
        if key.startswith(k) or key.endswith(k):
            return d
    return 3


def merge_seeds(per_seed: list[list[dict]]) -> list[dict]:
    """One row per row position: numbers → ``mean ± half-width`` (95 % t) over the seeds.

    ``k/n`` counts are summed over the seeds; ``max_abs_error`` is the largest over seeds;
    a PSNR that is ∞ (exact) in every seed stays ``∞``; wall times are summed.
    """
    from results_doc import cell

    out = []
    for rows in zip(*per_seed, strict=True):
        m = {}
        for k, v0 in rows[0].items():
            vals = [r.get(k) for r in rows]
            nums = all(isinstance(v, (int, float, np.integer, np.floating)) and v is not None
                       for v in vals)
            if k in ID_FIELDS:      # equal across seeds, else (e.g. a METIS piece) listed
                m[k] = v0 if all(v == v0 for v in vals) else \
                    "; ".join(dict.fromkeys(map(str, vals)))
            elif k == "wall_s" and nums:
                m[k] = float(sum(vals))
            elif nums and k == "max_abs_error":
                fin = [float(v) for v in vals if not math.isnan(float(v))]
                m[k] = max(fin) if fin else math.nan
            elif nums and all(math.isinf(float(v)) for v in vals):
                m[k] = "∞"
            elif nums:
                d = _digits(k)
                m[k] = cell([min(float(v), 100.0) if "psnr" in k else float(v) for v in vals],
                            d if d is not None else 3)
            elif all(isinstance(v, str) and v.count("/") == 1 and v.split("/")[0].isdigit()
                     for v in vals):
                a = sum(int(v.split("/")[0]) for v in vals)
                b = sum(int(v.split("/")[1].split()[0]) for v in vals)
                tail = " ".join(v0.split("/")[1].split()[1:])
                m[k] = f"{a}/{b}" + (f" {tail}" if tail else "")
            else:
                m[k] = v0 if all(v == v0 for v in vals) else "; ".join(dict.fromkeys(map(str, vals)))
        out.append(m)
    return out


# ---------------------------------------------------------------- 1. full gradients
def section_full_gradients(s: Setting, n: int) -> dict:
    from crowdlearn.privacy.attacks.inversion import model_gradients

    errs, ps, exact = [], [], 0
    for i in s.samples(n, 1):
        x, y = s.ds.x_train[i:i + 1], s.ds.y_train[i:i + 1]
        g = model_gradients(s.spec, s.w, x, y)
        r = rec.reconstruct_from_first_layer(g[0], g[1])
        errs.append(float(np.max(np.abs(r - x[0]))))
        ps.append(metrics.psnr(x[0], r))
        exact += errs[-1] < 1e-6
    return {"dataset": s.label, "samples": n, "max_abs_error": max(errs),
            "median_psnr": float(np.median(ps)), "exact": f"{exact}/{n}"}


# ---------------------------------------------------------------- 2. DSSGD uploads
def section_dssgd(s: Setting, n: int, thetas=(0.1, 0.01)) -> list[dict]:
    rows = []
    cases = [("1 sample, 1 step", 1, 1), ("1 sample, 5 epochs", 1, 5),
             ("4 samples, batch 1", 4, 1)]
    for theta in thetas:
        for label, k, epochs in cases:
            sc_rows, fill_imgs, bound_imgs, labels = [], [], [], []
            t0 = time.perf_counter()
            picks = s.samples(n * k, 10 + k)
            for t in range(n):
                idx = picks[t * k:(t + 1) * k]
                up, _ = rec.dssgd_participant_upload(
                    s.spec, s.w, s.ds.x_train, s.ds.y_train, idx, theta_u=theta,
                    batch_size=1, local_epochs=epochs, lr=0.05, gamma=0.05, seed=t,
                    trainer=s.trainer)
                if k == 1:
                    x = s.ds.x_train[idx[0]].astype(np.float64)
                    r = rec.reconstruct_from_sparse(up.indices, up.values, s.spec, gamma=0.05)
                    sc = rec.score_reconstruction(r, x, mean=s.mean, image_shape=s.shape)
                    rnd = s.public[np.random.default_rng([s.seed, t]).integers(len(s.public))]
                    sc["psnr_random_public"] = metrics.psnr(x, rnd)
                    sc_rows.append(sc)
                    fill_imgs.append(r.filled("mean", mean=s.mean))
                    bound_imgs.append(r.filled("bounded", mean=s.mean))
                    labels.append(s.ds.y_train[idx[0]])
                else:
                    ni = rec.per_neuron_reconstructions(up.indices, up.values, s.spec,
                                                        gamma=0.05)
                    xs = s.ds.x_train[idx].astype(np.float64)
                    # the attacker (knowing k) keeps its k best-covered candidates, chosen
                    # without the truth; the evaluator pairs them with the k samples by an
                    # optimal one-to-one matching (Hungarian, on MSE)
                    from scipy.optimize import linear_sum_assignment
                    assign = {}
                    if ni.neurons.size:
                        visible = np.sum(~np.isnan(ni.images), axis=1)
                        chosen = np.argsort(-visible, kind="stable")[:k]
                        cm = ni.filled("mean", mean=s.mean)[chosen]
                        cb = ni.filled("bounded", mean=s.mean)[chosen]
                        cost = ((cb[:, None, :] - xs[None, :, :]) ** 2).mean(axis=2)
                        rows_, cols_ = linear_sum_assignment(cost)
                        assign = {int(c): int(r) for r, c in zip(rows_, cols_, strict=True)}
                    rnd = s.public[np.random.default_rng([s.seed, t]).integers(
                        len(s.public), size=k)]
                    rc = ((rnd[:, None, :] - xs[None, :, :]) ** 2).mean(axis=2)
                    rr, rcol = linear_sum_assignment(rc)
                    rand_for = {int(c): rnd[r] for r, c in zip(rr, rcol, strict=True)}
                    for j, x in enumerate(xs):
                        if j in assign:
                            bb = int(chosen[assign[j]])
                            fm, fb = cm[assign[j]], cb[assign[j]]
                        else:
                            bb = 0
                            fm = fb = s.mean
                        vis = ~np.isnan(ni.images[bb]) if ni.neurons.size else np.zeros(x.size,
                                                                                        bool)
                        nz = x != 0
                        sc_rows.append({
                            "coverage": float(vis.mean()),
                            "coverage_nonzero": float(vis[nz].mean()) if nz.any() else math.nan,
                            "max_abs_error": float(np.max(np.abs(ni.images[bb][vis] - x[vis])))
                            if vis.any() else math.nan,
                            "psnr_mean_fill": metrics.psnr(x, fm),
                            "ssim_mean_fill": metrics.ssim(x, fm, image_shape=s.shape),
                            "psnr_bounded_fill": metrics.psnr(x, fb),
                            "ssim_bounded_fill": metrics.ssim(x, fb, image_shape=s.shape),
                            "psnr_mean_only": metrics.psnr(x, s.mean),
                            "ssim_mean_only": metrics.ssim(x, s.mean, image_shape=s.shape),
                            "psnr_random_public": metrics.psnr(x, rand_for[j])})
                        fill_imgs.append(fm)
                        bound_imgs.append(fb)
                        labels.append(s.ds.y_train[idx[j]])

            def avg(key, sc_rows=sc_rows):
                return mean_finite([r[key] for r in sc_rows])

            def ci(key, sc_rows=sc_rows):
                # this seed's mean over its images (exact = 100 dB); the doc's interval is over
                # model seeds (see merge_seeds)
                return mean_finite([r[key] for r in sc_rows if r.get(key) is not None])

            rows.append({
                "dataset": s.name, "theta_u": f"{theta:.0%}", "case": label,
                "coverage": avg("coverage"), "coverage_nonzero": avg("coverage_nonzero"),
                "max_abs_error": float(np.nanmax([r["max_abs_error"] for r in sc_rows]))
                if any(not math.isnan(r["max_abs_error"]) for r in sc_rows) else math.nan,
                "psnr_mean_fill": ci("psnr_mean_fill"), "ssim_mean_fill": ci("ssim_mean_fill"),
                "psnr_bounded_fill": ci("psnr_bounded_fill"),
                "ssim_bounded_fill": ci("ssim_bounded_fill"),
                "psnr_mean_only": ci("psnr_mean_only"), "ssim_mean_only": ci("ssim_mean_only"),
                "psnr_random_public": ci("psnr_random_public"),
                "clf_mean_fill": s.clf.accuracy(np.array(fill_imgs), labels),
                "clf_bounded_fill": s.clf.accuracy(np.array(bound_imgs), labels),
                "n": len(sc_rows), "wall_s": time.perf_counter() - t0})
            print(f"  dssgd {s.name} θu={theta} {label}: coverage {rows[-1]['coverage']:.3f} "
                  f"bounded PSNR {rows[-1]['psnr_bounded_fill']} "
                  f"({rows[-1]['wall_s']:.1f} s)", flush=True)
    return rows


# ---------------------------------------------------------------- 3. inversion
def section_inversion(s: Setting, trials: int, iterations: int, batches=(1, 4, 8),
                      dssgd_batch: int = 4) -> list[dict]:
    from crowdlearn.privacy.attacks.inversion import (
        infer_labels,
        invert_gradients,
        match_and_score,
        mean_probs,
        model_gradients,
    )

    rows = []
    # the attacker's public data (the prior of every attack here): 256 test images
    pbar = mean_probs(s.spec, s.w, s.ds.x_test[:256])
    lr = 0.05
    setups = [(b, "full gradient") for b in batches] + \
        [(dssgd_batch, "DSSGD θu=10%, visible entries only"),
         (dssgd_batch, "DSSGD θu=10%, unseen entries = 0")]
    for b, what in setups:
        ps, ss, lab_ok, clf_hits, clf_n = [], [], [], 0, 0
        t0 = time.perf_counter()
        for t in range(trials):
            idx = s.samples(b, 100 + 17 * b + t)
            x, y = s.ds.x_train[idx], s.ds.y_train[idx]
            if what == "full gradient":
                g = model_gradients(s.spec, s.w, x, y)
                res = invert_gradients(s.spec, s.w, g, b, iterations=iterations, seed=t,
                                       image_shape=s.shape, mean_probs=pbar)
                lab = infer_labels(g[-1], b, mean_probs=pbar)
            else:
                # the participant holds exactly the batch: one step, Δw = −lr·g (lr is public)
                up, _ = rec.dssgd_participant_upload(
                    s.spec, s.w, s.ds.x_train, s.ds.y_train, idx, theta_u=0.1, batch_size=b,
                    local_epochs=1, lr=lr, gamma=0.05, seed=t, trainer=s.trainer)
                ok = np.abs(up.values) < 0.05 * (1 - 1e-6)           # drop clipped entries
                mask, obs = up.indices[ok], -up.values[ok].astype(np.float64) / lr
                res = invert_gradients(s.spec, s.w, obs, b, mask=mask, iterations=iterations,
                                       seed=t, image_shape=s.shape, mean_probs=pbar,
                                       unseen="zero" if "= 0" in what else "ignore")
                lab = res.labels
            sc = match_and_score(x, res.x, image_shape=s.shape)
            ps += sc["psnr"]
            ss += sc["ssim"]
            lab_ok.append(sorted(np.asarray(lab).tolist()) == sorted(y.tolist()))
            order = [j for _, j in sorted(sc["assignment"])]
            clf_hits += int(np.sum(s.clf.predict(res.x[order]) == y))
            clf_n += b
        rows.append({"dataset": s.name, "observed": what, "batch": b,
                     "psnr": mean_finite(ps),
                     "psnr_median": float(np.median(np.minimum(ps, 100.0))),
                     "ssim": float(np.mean(ss)), "labels_ok": f"{sum(lab_ok)}/{len(lab_ok)}",
                     "clf": clf_hits / clf_n, "trials": trials, "iterations": iterations,
                     "wall_s": time.perf_counter() - t0})
        print(f"  inversion {s.name} {what} B={b}: PSNR {rows[-1]['psnr']:.1f} "
              f"({rows[-1]['wall_s']:.1f} s)", flush=True)
    return rows


# ---------------------------------------------------------------- 4. membership
def section_membership(name: str, *, devices: int, per_device: int, rounds: int, hidden,
                       seed: int, max_samples: int) -> list[dict]:
    from crowdlearn.config import from_dict
    from crowdlearn.experiment import Simulation
    from crowdlearn.privacy.attacks.views import PrivacyProbe, privacy_report

    ds = load_dataset(name, seed=seed)
    rng = np.random.default_rng(seed)
    pick = rng.choice(len(ds.y_train), devices * per_device, replace=False)
    parts = [np.sort(pick[i * per_device:(i + 1) * per_device]) for i in range(devices)]
    runs = [("fedavg", "FedAvg global model", {}),
            ("dssgd", "DSSGD global model (θu=10%)", {}),
            ("dssgd", "DSSGD global model (θu=10%, DP ε_p=1)", {"dp": True, "epsilon": 1.0}),
            ("standalone", "standalone local models", {})]
    rows = []
    for proto, label, extra in runs:
        cfg = from_dict({
            "protocol": proto, "rounds": rounds, "seed": seed,
            "data": {"dataset": name},
            "fleet": {"devices": devices, "cells": 2}, "model": {"hidden": list(hidden)},
            "fedavg": {"clients_per_round": devices, "batch_size": 16, "lr": 0.1},
            "dssgd": {"theta_u": 0.1, "batch_size": 16, "lr": 0.1, **extra}})
        t0 = time.perf_counter()
        sim = Simulation(cfg, parts=parts)
        probe = PrivacyProbe(sim)
        res = sim.run()
        rep = privacy_report(sim, probe, max_samples=max_samples, uploads=0, seed=seed)
        rows.append({"dataset": name, "model": label, "auc": rep.get("membership_auc"),
                     "advantage": rep.get("membership_advantage"),
                     "max_advantage": rep.get("membership_max_advantage"),
                     "accuracy": res.summary.get("final_accuracy"),
                     "bytes": res.summary.get("bytes_total"),
                     "epsilon": rep.get("epsilon"), "wall_s": time.perf_counter() - t0})
        print(f"  membership {name} {label}: AUC {rows[-1]['auc']:.3f} "
              f"({rows[-1]['wall_s']:.1f} s)", flush=True)
        if proto == "dssgd" and not extra:
            from crowdlearn.privacy.attacks.membership import (
                local_models,
                membership_local_models,
            )
            loc = membership_local_models(sim.spec, local_models(sim), ds, parts,
                                          max_samples=max_samples, seed=seed)
            rows.append({"dataset": name, "model": "DSSGD participants' local models (θu=10%)",
                         "auc": loc["auc"], "advantage": loc["advantage"],
                         "max_advantage": loc["max_advantage"],
                         "accuracy": loc["nonmember_accuracy"],
                         "bytes": res.summary.get("bytes_total"), "epsilon": None,
                         "wall_s": 0.0})
    return rows


# ---------------------------------------------------------------- 5. SliceNet follower
def section_follower(s: Setting, h1: int, sizes, n_eval: int, *, pieces: int = 4,
                     pass_samples: int = 256) -> tuple[list[dict], list[dict]]:
    from crowdlearn.privacy.attacks.views import follower_pass, reconstruct_from_weighted_sums

    rng = np.random.default_rng(s.seed)
    d = s.spec.input_dim
    spec = mlp(d, [h1], s.ds.num_classes)
    w = spec.init_weights(np.random.default_rng(s.seed))
    w1 = w[0].astype(np.float64)
    xs = s.eval_x[:n_eval].astype(np.float64)
    ys = s.eval_y[:n_eval]

    def score(xh):
        xh = np.clip(xh, 0, 1)
        return (mean_finite(metrics.psnr(xs, xh)),
                float(np.mean(metrics.ssim(xs, xh, image_shape=s.shape))),
                s.clf.accuracy(xh, ys))

    sweep = []
    p, q, c = score(reconstruct_from_weighted_sums(np.zeros((n_eval, 1)), None,
                                                   prior_mean=s.mean))
    sweep.append({"dataset": s.name, "piece": "any", "w1": "unknown (prior mean)",
                  "psnr": p, "ssim": q, "clf": c})
    for k in sizes:
        cols = np.sort(rng.choice(h1, size=k, replace=False))
        z = xs @ w1[:, cols]
        for method in ("min_norm", "mean_centred", "gaussian"):
            xh = reconstruct_from_weighted_sums(z, w1[:, cols], method=method,
                                                prior_mean=s.mean, prior_cov=s.cov)
            p, q, c = score(xh)
            sweep.append({"dataset": s.name, "piece": k, "w1": f"leaked, {method}",
                          "psnr": p, "ssim": q, "clf": c})
    # a realistic piece: METIS on the group's network, one pass over a dominator's data
    from slicenet.graph import Activation, CostGraph, Dense
    from slicenet.partition import partition as slice_partition

    g = CostGraph.from_layers((d,), [Dense(h1), Activation("relu"), Dense(s.ds.num_classes)])
    plan = slice_partition(g, pieces, method="metis", seed=s.seed)
    sl = g.layer_slice(0)
    a, first, size = plan.assignment[sl], g.first[sl], g.size[sl]
    unit_piece = np.empty(h1, np.int64)
    for f, sz, pc in zip(first, size, a, strict=True):
        unit_piece[f:f + sz] = pc
    units = np.flatnonzero(unit_piece == 0)
    dom = s.samples(pass_samples, 999)
    xd, yd = s.ds.x_train[dom].astype(np.float64), s.ds.y_train[dom]
    obs = follower_pass(spec, w, xd, yd, units, batch_size=32, lr=0.05, seed=s.seed)
    order = np.concatenate(obs["batches"])
    truth = xd[order]
    z = np.concatenate(obs["z"])
    acc = obs["acc"]
    k_top = int(0.5 * acc.size)
    top = np.argsort(-acc.ravel(), kind="stable")[:k_top]
    partial = np.zeros(acc.size)
    partial[top] = obs["w1_end"].ravel()[top]
    partial = partial.reshape(acc.shape)
    real = []
    variants = [("W1 at each step (exact)", None), ("W1 after the pass (hand-over)",
                                                   obs["w1_end"][:, units]),
                ("server's top-50% of W1 (rest 0)", partial[:, units])]
    for label, wp in variants:
        for method in ("min_norm", "gaussian"):
            if wp is None:
                xh = np.concatenate([reconstruct_from_weighted_sums(
                    zb, wb, method=method, prior_mean=s.mean, prior_cov=s.cov)
                    for zb, wb in zip(obs["z"], obs["w1_steps"], strict=True)])
            else:
                xh = reconstruct_from_weighted_sums(z, wp, method=method, prior_mean=s.mean,
                                                    prior_cov=s.cov)
            xh = np.clip(xh, 0, 1)
            real.append({"dataset": s.name, "piece": len(units), "w1": label, "method": method,
                         "psnr": mean_finite(metrics.psnr(truth, xh)),
                         "ssim": float(np.mean(metrics.ssim(truth, xh, image_shape=s.shape))),
                         "clf": s.clf.accuracy(xh, yd[order])})
    from crowdlearn.privacy.attacks.views import labels_from_output_errors
    got = np.concatenate([labels_from_output_errors(e) for e in obs["errors"]])
    real.append({"dataset": s.name, "piece": len(units), "w1": "not needed",
                 "method": "labels: argmin of the output errors",
                 "psnr": "—", "ssim": "—",
                 "clf": f"{int(np.sum(got == yd[order]))}/{len(got)} labels exact"})
    real.append({"dataset": s.name, "piece": len(units), "w1": "unknown", "method": "prior mean",
                 "psnr": mean_finite(metrics.psnr(truth, s.mean[None])),
                 "ssim": float(np.mean(metrics.ssim(truth, np.tile(s.mean, (len(truth), 1)),
                                                    image_shape=s.shape))),
                 "clf": s.clf.accuracy(np.tile(s.mean, (len(truth), 1)), yd[order])})
    real += follower_from_run(s, h1, pieces=pieces, pass_samples=pass_samples)
    real += follower_from_run(s, h1, pieces=pieces, pass_samples=pass_samples, batchnorm=True)
    print(f"  follower {s.name}: sweep {len(sweep)} rows, METIS piece |P|={len(units)}",
          flush=True)
    return sweep, real


def follower_from_run(s: Setting, h1: int, *, pieces: int = 4, pass_samples: int = 256,
                      batchnorm: bool = False) -> list[dict]:
    """The same attack on what a follower received in a real Crowdlearning run (issue 8): one
    epoch of groups of 5 (METIS, ``pieces`` pieces, batch 32, lr 0.05, devices holding about
    ``pass_samples`` samples each); the follower of group 0 holding piece 0 in the first pass
    opens the dominator's sealed boundary payload (the view :class:`SliceNetFollowerView`, fed
    by the delivered messages) and reconstructs the dominator's images from its sums, with the
    dominator's ``W1`` after the pass (what the next dominator receives in the hand-over).

    With ``batchnorm`` (``slicenet.batchnorm = true``: BatchNorm on the input and before every
    activation, as in the paper's MLP) the dominator sends ``BN_B(x)·W1_P``, normalised with the
    statistics ``μ_B, σ_B`` of its mini-batch, which never leave it.  The follower (with the
    hand-over: ``W1``, the input BatchNorm's ``γ, β`` and moving statistics) replaces ``μ_B, σ_B``
    by an estimate ``μ̂, σ̂`` -- the public images' per-pixel mean and variance, or the handed-over
    moving statistics -- and inverts ``z − (β − μ̂·γ/σ̂)·W1_P = x·diag(γ/σ̂)·W1_P``; the rows
    "BN ignored" invert ``z`` as if it were ``x·W1_P``."""
    from crowdlearn.config import from_dict
    from crowdlearn.experiment import Simulation
    from crowdlearn.privacy.attacks.views import (
        SliceNetFollowerView,
        attach,
        labels_from_output_errors,
        reconstruct_from_weighted_sums,
    )

    n_train = len(s.ds.x_train)
    cfg = from_dict({"protocol": "crowdlearning", "rounds": 1, "seed": s.seed,
                     "data": {"dataset": s.name},
                     "fleet": {"devices": max(5, n_train // pass_samples), "cells": 1},
                     "model": {"hidden": [h1]},
                     "slicenet": {"group_size": 5, "pieces": pieces, "strategy": "metis",
                                  "batch_size": 32, "lr": 0.05, "batchnorm": batchnorm}})
    sim = Simulation(cfg)
    handles = []
    submit = sim.executor.submit
    sim.executor.submit = lambda job: (lambda h: (handles.append(h), h)[1])(submit(job))
    lay = sim.ctx.extra["layout"]
    views = {d: SliceNetFollowerView(node=d, layout=lay, batch_size=32)
             for d in sim.ctx.extra["groups"][0]}
    attach(sim, *views.values())
    sim.run()
    dom = next(h for h in handles if type(h.job).__name__ == "SlicePassJob"      # not drains
               and h.job.key == (0, 1) and h.job.batches is not None)
    view = next(v for v in views.values() if 1 in v.plans and 0 in v.plans[1].pieces
                and (1, dom.job.node) in v.payloads)
    got = view.sums_from(dom.job.node, 1)
    x = np.asarray(sim.dataset.x_train, np.float64).reshape(n_train, -1)
    order = np.concatenate([b[b >= 0] for b in dom.job.batches])
    truth, labels = x[order], np.asarray(sim.dataset.y_train)[order]
    hand = _handed_over(sim.executor.result(dom)[0], lay)
    w1_end = hand["dense0/kernel"].astype(np.float64)
    units = got["units"]
    z = np.concatenate(got["z"])
    tag = ", input BN" if batchnorm else ""
    cases = [("unknown", None, "prior mean", None)]
    if batchnorm:
        from slicenet.layout import BN_EPSILON

        gamma, beta = hand["input/bn/gamma"], hand["input/bn/beta"]
        stats = [("public mean/var", s.mean, np.diag(s.cov)),
                 ("moving mean/var", hand["input/bn/moving_mean"],
                  hand["input/bn/moving_variance"])]
        cases += [("W1 after the pass, BN ignored", w1_end[:, units], m, None)
                  for m in ("min_norm", "gaussian")]
        for name, mu, var in stats:
            w_eff, shift = bn_unfold(w1_end[:, units], gamma, beta, mu, var, eps=BN_EPSILON)
            cases += [(f"W1, γ, β after the pass; μ_B, σ_B ≈ {name}", w_eff, m, shift)
                      for m in ("min_norm", "gaussian")]
    else:
        cases += [("W1 after the pass (hand-over)", w1_end[:, units], m, None)
                  for m in ("min_norm", "gaussian")]
    rows = []
    for label, wp, method, shift in cases:
        zz = z if shift is None else z - shift
        xh = np.tile(s.mean, (len(truth), 1)) if wp is None else reconstruct_from_weighted_sums(
            zz, wp, method=method, prior_mean=s.mean, prior_cov=s.cov)
        xh = np.clip(xh, 0, 1)
        rows.append({"dataset": s.name, "piece": len(got["units"]),
                     "w1": f"{label}, run's payload{tag}", "method": method,
                     "psnr": mean_finite(metrics.psnr(truth, xh)),
                     "ssim": float(np.mean(metrics.ssim(truth, xh, image_shape=s.shape))),
                     "clf": s.clf.accuracy(xh, labels)})
    ok = np.concatenate([labels_from_output_errors(e) for e in got["errors"]]) == labels
    rows.append({"dataset": s.name, "piece": len(got["units"]),
                 "w1": f"not needed, run's payload{tag}",
                 "method": "labels: argmin of the output errors", "psnr": "—", "ssim": "—",
                 "clf": f"{int(ok.sum())}/{len(ok)} labels exact"})
    return rows


def bn_unfold(w1_piece, gamma, beta, mean, var, *, eps: float):
    """``(W', c)`` with ``BN(x)·W1_P = x·W' + c`` when the batch statistics are ``mean, var``:
    ``W' = diag(γ/σ)·W1_P``, ``c = (β − mean·γ/σ)·W1_P``, ``σ = sqrt(var + eps)``.

    >>> import numpy as np
    >>> w, c = bn_unfold(np.eye(2), np.ones(2), np.zeros(2), np.zeros(2), np.full(2, 4.0), eps=0)
    >>> w.tolist(), c.tolist()
    ([[0.5, 0.0], [0.0, 0.5]], [0.0, 0.0])
    """
    scale = np.asarray(gamma, np.float64) / np.sqrt(np.asarray(var, np.float64) + eps)
    w = np.asarray(w1_piece, np.float64)
    return scale[:, None] * w, (np.asarray(beta, np.float64)
                                - np.asarray(mean, np.float64) * scale) @ w


#: the comparisons the reading makes: (id, text, section, row a, key a, row b, key b, digits);
#: rows are matched by their naming fields, within one dataset
CLAIMS = [
    ("bounded", "bounded fill above mean fill (θu = 10 %, 1 sample, 1 step), PSNR dB", "dssgd",
     {"theta_u": "10%", "case": "1 sample, 1 step"}, "psnr_bounded_fill", None,
     "psnr_mean_fill", 2),
    ("one_vs_mean", "bounded fill above the public mean (θu = 1 %, 1 sample, 1 step), PSNR dB",
     "dssgd", {"theta_u": "1%", "case": "1 sample, 1 step"}, "psnr_bounded_fill", None,
     "psnr_mean_only", 2),
    ("four_vs_mean_10", "4 samples: attacker's candidates (bounded) above the public mean "
     "(θu = 10 %), PSNR dB", "dssgd", {"theta_u": "10%", "case": "4 samples, batch 1"},
     "psnr_bounded_fill", None, "psnr_mean_only", 2),
    ("four_vs_mean_1", "4 samples: attacker's candidates (bounded) above the public mean "
     "(θu = 1 %), PSNR dB", "dssgd", {"theta_u": "1%", "case": "4 samples, batch 1"},
     "psnr_bounded_fill", None, "psnr_mean_only", 2),
    ("inv_1_4", "inversion, full gradient: B = 1 above B = 4, PSNR dB", "inversion",
     {"observed": "full gradient", "batch": 1}, "psnr",
     {"observed": "full gradient", "batch": 4}, "psnr", 2),
    ("inv_4_8", "inversion, full gradient: B = 4 above B = 8, PSNR dB", "inversion",
     {"observed": "full gradient", "batch": 4}, "psnr",
     {"observed": "full gradient", "batch": 8}, "psnr", 2),
    ("inv_full_dssgd", "inversion, B = 4: full gradient above the DSSGD upload (visible "
     "entries only), PSNR dB", "inversion", {"observed": "full gradient", "batch": 4}, "psnr",
     {"observed": "DSSGD θu=10%, visible entries only", "batch": 4}, "psnr", 2),
    ("inv_zero", "inversion, DSSGD upload: unseen entries = 0 above visible entries only, "
     "PSNR dB", "inversion", {"observed": "DSSGD θu=10%, unseen entries = 0"}, "psnr",
     {"observed": "DSSGD θu=10%, visible entries only"}, "psnr", 2),
    ("mem_fedavg", "membership AUC: standalone local models above the FedAvg global model",
     "membership", {"model": "standalone local models"}, "auc",
     {"model": "FedAvg global model"}, "auc", 3),
    ("mem_dssgd", "membership AUC: standalone local models above the DSSGD global model "
     "(θu=10%)", "membership", {"model": "standalone local models"}, "auc",
     {"model": "DSSGD global model (θu=10%)"}, "auc", 3),
    ("handover_clf", "follower, hand-over W1, Gaussian prior, above the prior mean, clf",
     "follower_real", {"w1": "W1 after the pass (hand-over)", "method": "gaussian"}, "clf",
     {"w1": "unknown", "method": "prior mean"}, "clf", 3),
    ("handover_psnr", "follower, hand-over W1, Gaussian prior, above the prior mean, PSNR dB",
     "follower_real", {"w1": "W1 after the pass (hand-over)", "method": "gaussian"}, "psnr",
     {"w1": "unknown", "method": "prior mean"}, "psnr", 2),
    ("top50_psnr", "follower: the prior mean above the server's top-50 % of W1 (Gaussian), "
     "PSNR dB", "follower_real", {"w1": "unknown", "method": "prior mean"}, "psnr",
     {"w1": "server's top-50% of W1 (rest 0)", "method": "gaussian"}, "psnr", 2),
    ("top50_clf", "follower: the server's top-50 % of W1 (Gaussian) above the prior mean, clf",
     "follower_real", {"w1": "server's top-50% of W1 (rest 0)", "method": "gaussian"}, "clf",
     {"w1": "unknown", "method": "prior mean"}, "clf", 3),
    ("bn_public", "input BN, run's payload: W1, γ, β with public mean/var (Gaussian) above the "
     "prior mean, PSNR dB", "follower_real",
     {"w1": "W1, γ, β after the pass; μ_B, σ_B ≈ public mean/var, run's payload, input BN",
      "method": "gaussian"}, "psnr",
     {"w1": "unknown, run's payload, input BN", "method": "prior mean"}, "psnr", 2),
    ("bn_public_clf", "input BN, run's payload: W1, γ, β with public mean/var (Gaussian) above "
     "the prior mean, clf", "follower_real",
     {"w1": "W1, γ, β after the pass; μ_B, σ_B ≈ public mean/var, run's payload, input BN",
      "method": "gaussian"}, "clf",
     {"w1": "unknown, run's payload, input BN", "method": "prior mean"}, "clf", 3),
]


#: the claims the reading stated as facts before they were tested (issue 17)
STATED_BEFORE = {"bounded", "inv_1_4", "inv_4_8", "inv_full_dssgd", "inv_zero", "mem_fedavg",
                 "mem_dssgd", "top50_psnr", "top50_clf", "bn_public", "bn_public_clf"}


def seed_values(out: dict, name: str, section: str, match: dict, key: str) -> dict[int, float]:
    """``{seed: value}`` of the row of ``section`` for dataset ``name`` whose fields equal
    ``match`` (PSNRs capped at 100 dB, as in the cells); seeds without that row are left out."""
    got = {}
    for s in out["seeds"].get(name, []):
        for r in out["per_seed"][str(s)].get(section, []):
            if _of(r, name) and all(r.get(k) == v for k, v in match.items()):
                v = r.get(key)
                if isinstance(v, (int, float)) and v is not None:
                    got[s] = min(float(v), 100.0) if "psnr" in key else float(v)
                break
    return got


def paired_claims(out: dict) -> list[dict]:
    """:data:`CLAIMS` tested per dataset, paired over the seeds that have both cells."""
    from results_doc import fmt_paired, paired, verdict

    rows = []
    for name in out["seeds"]:
        for cid, text, section, ma, ka, mb, kb, nd in CLAIMS:
            a = seed_values(out, name, section, ma, ka)
            b = seed_values(out, name, section, mb if mb is not None else ma, kb)
            both = sorted(set(a) & set(b))
            if len(both) < 2:
                continue
            d = paired([a[s] for s in both], [b[s] for s in both])
            rows.append({"id": cid, "dataset": name, "text": text, "n": len(both),
                         "diff": fmt_paired(d, nd), "verdict": verdict(d), "d": d, "nd": nd})
    return rows


def _batchnorm_reading(rows: list[dict], claims=()) -> list[str]:
    """The input-BatchNorm case read from the run's-payload rows (Gaussian prior), with the
    paired verdicts of :func:`paired_claims` (``bn_public``, ``bn_public_clf``)."""
    out = []
    verdicts = {(c["dataset"], c["id"]): c["verdict"] for c in claims}
    for name in sorted({r["dataset"] for r in rows}):
        def find(w1, method="gaussian", name=name):
            return next((r for r in rows if r["dataset"] == name and r["w1"] == w1
                         and r["method"] == method), None)
        plain = find("W1 after the pass (hand-over), run's payload")
        ign = find("W1 after the pass, BN ignored, run's payload, input BN")
        pub = find("W1, γ, β after the pass; μ_B, σ_B ≈ public mean/var, run's payload, input BN")
        mov = find("W1, γ, β after the pass; μ_B, σ_B ≈ moving mean/var, run's payload, input BN")
        prior = find("unknown, run's payload, input BN", "prior mean")
        if None in (plain, ign, pub, mov, prior):
            continue

        def f(r):
            return f"PSNR {r['psnr']} dB, SSIM {r['ssim']}, clf {r['clf']}"
        v = (verdicts.get((name, "bn_public"), "not tested"),
             verdicts.get((name, "bn_public_clf"), "not tested"))
        head = ("Input BatchNorm does not hide the inputs" if v == ("holds", "holds") else
                "Whether input BatchNorm hides the inputs")
        out.append(f"* **{head}** ({name}, Gaussian prior, "
                   f"run's payload; above the prior mean, paired: PSNR {v[0]}, clf {v[1]}): "
                   f"with the batch statistics replaced by the public images' "
                   f"per-pixel mean and variance the follower gets {f(pub)}, against {f(plain)} "
                   f"without BatchNorm and {f(prior)} for the prior mean alone; the handed-over "
                   f"moving statistics (a momentum-0.99 average over the pass's few batches, "
                   f"started from Keras' initial 0 / 1) give "
                   f"{f(mov)}, and ignoring BatchNorm {f(ign)}.")
    return out + ([""] if out else [])


def _handed_over(weights, lay) -> dict[str, np.ndarray]:
    """The weights the dominator holds after a pass (the flat values at ``lay.owned_flat``
    of the dominator, what the hand-over sends), by name; weights it does not hold are NaN."""
    from slicenet.layout import DOMINATOR

    owned = lay.owned_flat([DOMINATOR])
    vals = np.asarray(weights, np.float64).ravel()
    if vals.size != owned.size:
        raise ValueError(f"{vals.size} values for the dominator's {owned.size} weights")
    flat = np.full(sum(int(np.prod(sp.shape)) for sp in lay.specs), np.nan)
    flat[owned] = vals
    out, pos = {}, 0
    for sp in lay.specs:
        size = int(np.prod(sp.shape))
        out[sp.name] = flat[pos:pos + size].reshape(sp.shape)
        pos += size
    return out


# ---------------------------------------------------------------- docs
#: what differs between the datasets' settings (beside the tables' own captions)
SETUP = {
    "digits": "scikit-learn's 8×8 digits (1,797 images; the model seed also draws the "
              "train/test split); attacked MLP 64-64-10; section 2: `--samples` images per row; "
              "section 3: `--iterations` Adam steps; section 5: first layer of 128 (d = 64).",
    "fashion_mnist": "Fashion-MNIST 28×28 (its fixed 60,000 / 10,000 split: the model seed "
                     "draws everything else); attacked MLP 784-128-64-10; section 2: half of "
                     "`--samples` images per row; section 3: "
                     "`--fashion-iterations` Adam steps; section 5: first layer of 400, the "
                     "paper's (d = 784, so no piece reaches d and the exact-inversion rows "
                     "of digits have no Fashion-MNIST counterpart).",
}
#: how many seeds issue 17 asks for
WANTED_SEEDS = 10


def _seeds_paragraph(out: dict) -> list[str]:
    """Per dataset: its seeds, the measured CPU per seed, and why fewer than 10 where so."""
    from results_doc import seeds_text

    L = ["**Datasets and seeds.**"]
    for n, ss in out["seeds"].items():
        cpu = out.get("cpu_s", {}).get(n, [])
        c = (f"CPU per seed (the measuring process, every thread, user + system) "
             f"{np.mean(cpu):,.0f} s (range {min(cpu):,.0f}–{max(cpu):,.0f} s over "
             f"{len(cpu)} seeds)" if cpu else "CPU per seed not recorded (measured before the "
             "script recorded it; see the wall time above)")
        few = ""
        if len(ss) < WANTED_SEEDS:
            few = (f"  **{len(ss)} seeds, not the {WANTED_SEEDS} issue 17 asks for**: the "
                   "seeds that fitted the CPU budget of the measuring session on the shared "
                   "2-core machine (two other engineers and a nice-19 experiment running)")
            if cpu:
                few += (f"; the {WANTED_SEEDS - len(ss)} missing seeds would cost about "
                        f"{(WANTED_SEEDS - len(ss)) * np.mean(cpu) / 60:,.0f} CPU-minutes more "
                        f"(`--seed {max(ss) + 1} --seeds {WANTED_SEEDS - len(ss)}`, then "
                        "`--render` with the existing file)")
            few += ".  The intervals are correspondingly wide; a claim whose paired interval "
            few += "contains 0 is marked *not shown*, not as false."
        L.append(f"* *{n}*: {SETUP.get(n, '')}  Model seeds {seeds_text(ss)} ({len(ss)}); "
                 f"{c}.{few}")
    missing = [n for n in NAMES if n not in out["seeds"]]
    for n in missing:
        L.append(f"* *{n}*: **not measured in this version**; `--write-docs` without "
                 f"`--no-{n.split('_')[0]}` measures it.")
    return ["\n".join(L) + "\n"]


def write_docs(out: dict, cmd: str, elapsed: float, earlier: dict | None = None) -> None:
    """The doc from :func:`merged`'s view; ``earlier``: the seeds per dataset of the previous
    version (``earlier_seeds`` of the data file), whose claims are set beside the new ones."""
    from results_doc import environment, seeds_text

    seeds = out["seeds"]
    seeds_line = "; ".join(f"{n} {seeds_text(ss)} ({len(ss)} seeds)" for n, ss in seeds.items())
    L = []
    L.append("# Privacy attacks: what each protocol's observers can learn\n")
    L.append("Generated by `benchmarks/privacy_attacks.py` (do not edit by hand; rerun with "
             "`--write-docs`).\n")
    L.append(f"Command: {cmd}; model seeds: {seeds_line}; wall "
             f"time {elapsed / 60:.1f} min (summed over the measuring processes) on the shared 2-core "
             "machine.  Per-seed values: "
             f"`{DATA.relative_to(ROOT)}` (`--render` rewrites this doc from them).  Library: "
             "`crowdlearn.privacy.attacks` (see its module docstrings for the definitions).  "
             f"{environment()}\n")
    L.append("""## What is measured, and how to read it

* **PSNR** `10·log10(1 / MSE)` in dB on pixels in [0, 1]; ∞ means bit-exact.  In averages an
  exact reconstruction counts as 100 dB.  **SSIM** (our convention, `metrics.ssim`): Gaussian
  window σ = 1.5 (7×7 on digits, 11×11 on Fashion-MNIST), reflective borders, averaged over
  *all* pixels.  scikit-image's `structural_similarity(..., gaussian_weights=True)` averages
  only the pixels away from the border and reports values that differ from ours by up to
  0.32 on real images: compare SSIMs only within these tables.  Both are also given for the
  **public mean image alone**, the score of an attacker who learnt nothing, and (section 2) for
  a **random public image**: a reconstruction is a leak only as far as it beats those lines.
* **Attacker assumptions.**  Every prior (mean image, Gaussian covariance) comes from public
  data: the first half of the test images; the second half is held out for the images scored
  in section 5.  The attacker knows the model architecture and the weights it attacks (initial
  weights here), the learning rate only where a method needs it (none of sections 1, 2, 5;
  section 3 matches gradient directions, which do not depend on it), the number of samples in
  an upload (section 2's "4 samples" rows, section 3's batch size B: **assumed known**); labels
  are inferred, never given (section 3: from the output-bias gradient; section 5: a SliceNet
  follower receives the output errors, whose only negative entry is the true label).  Choices
  among candidates are made without the truth; only the scoring uses it.
* **Seeds.**  Every section runs once per *model seed*: the seed draws the dataset's
  train/test split (digits), the attacked model's initial weights, the attacked samples and
  batches, the membership simulations' fleets and data.  A cell is the mean over the seeds
  ± the half-width of a 95 % Student-t interval over the seeds (within a seed, the per-image or
  per-batch values are first averaged: the seeds, not the images, are the independent units);
  counts such as "exact" or "labels right" are summed over the seeds; "max err" is the largest
  over all seeds.  A rerun on another machine may move single values in the last digits
  (floating-point order in TensorFlow and BLAS); the intervals are the result.
* **clf**: the fraction of reconstructions that a logistic regression trained on the real
  training data (at most 5,000 seeded training images: all of digits' training split, a subset
  of Fashion-MNIST's) assigns to the true label (its accuracy on real test images is the
  ceiling, given per dataset below).
* Sections 1-3 and 5 attack models at their initial (Glorot) weights, as in a run's first
  turn; how the figures change as training progresses is not measured here.  Section 4 attacks
  the final models of whole (small) runs.
""")
    L += _seeds_paragraph(out)
    for name, clf_acc in out.get("clf_ceiling", {}).items():
        L.append(f"Reference classifier on real {name} test images: {clf_acc:.3f}.\n")
    L.append("## 1 · One sample, full first-layer gradients (Phong et al.)\n")
    L.append("Reconstruction = kernel-gradient column / bias-gradient entry of the neuron with "
             "the largest bias gradient.\n")
    L.append(table(out["full"], [("dataset", "model"), ("samples", "samples"),
                                 ("exact", "max error < 1e-6"),
                                 ("median_psnr", "median PSNR (dB)"),
                                 ("max_abs_error", "max abs error")]) + "\n")
    L.append("## 2 · Real DSSGD uploads (top-k selection, γ = 0.05, lr = 0.05, batch 1)\n")
    L.append("""The server sees the indices and clipped values of the top θu of |Δw| after the
participant's local epoch.  *coverage*: pixels recovered exactly (a neuron with both its kernel
entry and bias entry visible and unclipped); *nz cov.*: the same among the image's non-zero
pixels -- zero pixels give zero kernel changes and are never uploaded, so they can only be
*bounded*: every entry top-k left out is at most the smallest uploaded magnitude `t`, so
`|x_i| ≤ t / |Δb_j|` for any visible bias `j` ("bounded fill" clips the mean image into that
bound; it holds for top-k selection without DP only).  *max err*: on the recovered pixels.
For "4 samples, batch 1" the upload mixes four one-sample steps: the attacker, knowing that
the upload holds four samples but not which, keeps the four per-neuron ratio images with the
most recovered pixels (chosen **without the truth**); the evaluator pairs them one-to-one with
the four samples (Hungarian matching on MSE).  *PSNR random public*: a random public test image
per sample (the same matching for four), and *mean only*: the public mean image -- the two
no-attack baselines.  Cells: mean ± 95 % t half-width over the model seeds of each seed's
mean over its images.
""")
    L.append(table(out["dssgd"], [
        ("dataset", "data"), ("theta_u", "θu"), ("case", "participant"),
        ("coverage", "coverage"), ("coverage_nonzero", "nz cov."),
        ("max_abs_error", "max err"),
        ("psnr_mean_fill", "PSNR mean fill"), ("ssim_mean_fill", "SSIM mean fill"),
        ("psnr_bounded_fill", "PSNR bounded"), ("ssim_bounded_fill", "SSIM bounded"),
        ("psnr_mean_only", "PSNR mean only"), ("ssim_mean_only", "SSIM mean only"),
        ("psnr_random_public", "PSNR random public"),
        ("clf_mean_fill", "clf mean fill"), ("clf_bounded_fill", "clf bounded"),
        ("n", "images per seed")]) + "\n")
    L.append("## 3 · Gradient inversion (Geiping et al. cosine loss)\n")
    its = sorted({r["iterations"] for r in out["inversion"]})
    L.append(f"Adam (step 0.1) on the dummy inputs, projected on [0, 1], labels inferred from "
             f"the output-bias gradient (iDLG for one sample; LLG counts with the model's mean "
             f"prediction on 256 public test images for more); {', '.join(map(str, its))} "
             "iterations (digits, Fashion-MNIST), one restart, several random batches per row. "
             "'DSSGD θu=10%': one participant holding exactly the batch (batch size = its data, "
             "so one step and `Δw = −lr·g`, with the public lr), its real upload; either only "
             "the uploaded, unclipped entries are matched, or the unseen entries are taken as "
             "0 (top-k left them out because they are small).  PSNR/SSIM after Hungarian "
             "matching; *labels right*: batches whose label multiset was inferred exactly.\n")
    L.append(table(out["inversion"], [
        ("dataset", "data"), ("observed", "observed"), ("batch", "batch"), ("psnr", "PSNR"),
        ("psnr_median", "median PSNR"), ("ssim", "SSIM"), ("labels_ok", "labels right"),
        ("clf", "clf"), ("trials", "batches")]) + "\n")
    L.append("## 4 · Membership inference (Yeom et al. loss threshold)\n")
    setups = out["membership_setup"]
    m = next(iter(setups.values()))
    L.append("Simulations with " + "; ".join(
        f"{name}: `{v['devices']}` devices holding `{v['per_device']}` samples each, MLP hidden "
        f"`{v['hidden']}`" for name, v in setups.items()) +
             f"; `{m['rounds']}` rounds, batch 16, lr 0.1. "
             "Members: all devices' samples (for standalone, each device's own, against its "
             "own model, averaged); non-members: the test set; at most "
             f"{m['max_samples']} of each.  *adv.*: TPR − FPR at the threshold 'loss ≤ mean "
             "training loss'; *max adv.*: best over thresholds.  ε: the DSSGD server's "
             "ledger, the largest composed ε (δ = 1e-5) over participants at the end of the "
             "run (a turn spends ε_p·c with c = θu·|w| releases, hence the size).\n")
    L.append(table(out["membership"], [
        ("dataset", "data"), ("model", "attacked model"), ("auc", "AUC"),
        ("advantage", "adv."), ("max_advantage", "max adv."), ("accuracy", "test acc."),
        ("bytes", "bytes"), ("epsilon", "ε")]) + "\n")
    L.append("## 5 · SliceNet: a follower holding a piece of hidden layer 1\n")
    L.append("""Per sample the follower receives `z = x·W1[:, P]` (no bias).  `W1` belongs to the
dominator; without it `z` is an unknown random projection and the follower's best guess we know
of is its prior, the mean image (row "unknown").  With `W1` leaked, `min_norm` is
`z·pinv(W1_P)`, `mean_centred` is `μ + (z − μW1_P)·pinv(W1_P)`, `gaussian` the conditional mean
under a Gaussian prior (mean and covariance of the public images: the first half of the test
set, as every prior here).  The first layer here is wider than the fleet default so that the
sweep can pass `d`: 128 neurons on digits (d = 64), 400 (the paper's) on Fashion-MNIST
(d = 784).  Held-out test images.
""")
    L.append(table(out["follower_sweep"], [("dataset", "data"), ("piece", "|P|"),
                                           ("w1", "W1"), ("psnr", "PSNR"), ("ssim", "SSIM"),
                                           ("clf", "clf")]) + "\n")
    L.append("""**A realistic piece.**  METIS slices the group's network (`n = 5`, four
pieces); the follower holds piece 0 of hidden layer 1 and observes one pass of SGD (batch 32,
lr 0.05) over the dominator's 256 samples.  *exact*: `W1` as it was at each step; *hand-over*:
`W1` after the pass -- what the next dominator receives when pieces are reshuffled, and every
member is dominator once per epoch, so every follower gets it without colluding with anyone;
*server's top-50 %*: the plain values of the half of `W1` with the largest accumulated
|gradient|, which the dominator uploads at the end of the epoch (θ = 0.5), the rest taken as 0.
*labels*: backpropagation sends the output errors `softmax − onehot(y)` of every sample back
through the pieces, so the follower also receives them; their argmin is the label, exactly.
*run's payload* (issue 8): the same attack on what a follower received in a real Crowdlearning
run (one epoch, groups of 5, METIS, four pieces, devices of about 256 samples): the follower
holding piece 0 in group 0's first pass opens the sealed boundary payload the dominator sent it
(`SliceNetFollowerView` fed by the delivered messages: the pass's real sums and errors, batch by
batch), with the dominator's `W1` after that pass.
*input BN* (the same run with `slicenet.batchnorm = true`: BatchNorm on the input and before
every activation, as in the paper's MLP): the dominator normalises its inputs with the mean
`μ_B` and variance `σ_B²` of each mini-batch before the first layer, so the follower receives
`BN_B(x)·W1_P = ((x − μ_B)·γ/σ_B + β)·W1_P`, not `x·W1_P`, and `μ_B, σ_B` never leave the
dominator.  With the hand-over (`W1`, the input BatchNorm's `γ`, `β` and moving statistics) the
follower replaces `μ_B, σ_B` by an estimate -- the public images' per-pixel mean and variance,
or the handed-over moving statistics -- and inverts `z − (β − μ̂·γ/σ̂)·W1_P = x·diag(γ/σ̂)·W1_P`
with the same methods; *BN ignored* inverts `z` as if it were `x·W1_P` (the view without
BatchNorm).  The labels row reads the same output errors.
""")
    L.append(table(out["follower_real"], [("dataset", "data"), ("piece", "|P|"), ("w1", "W1"),
                                          ("method", "method"), ("psnr", "PSNR"),
                                          ("ssim", "SSIM"), ("clf", "clf")]) + "\n")
    one = [r for r in out["dssgd"] if r["case"].startswith("1 sample")]
    max_err = max(r["max_abs_error"] for r in one) if one else math.nan
    inv = {(r["dataset"], r["observed"], r["batch"]): r["psnr"] for r in out["inversion"]}
    mem: dict = {}
    for r in out["membership"]:          # the first run of each protocol (DSSGD: without DP)
        mem.setdefault((r["dataset"], r["model"].split(" ")[0]), r["auc"])
    claims = paired_claims(out)
    L.append("## Comparisons, paired over the model seeds\n")
    L.append("Every comparison the reading below makes: the difference *a − b* of the two "
             "cells, seed by seed (the same seed gives both the same model, samples and "
             "fleet), its mean, 95 % t interval and the paired t-test's p-value.  *holds*: the "
             "interval lies above 0; *fails*: below; *not shown*: it contains 0.\n")
    L.append("| data | claim | a − b [95 % interval], p | seeds | verdict |\n"
             "| --- | --- | --- | --- | --- |")
    for c in claims:
        L.append(f"| {c['dataset']} | {c['text']} | {c['diff']} | {c['n']} | {c['verdict']} |")
    L.append("")

    def said(cid: str) -> str:
        got = [f"{c['dataset']}: {c['verdict']}" for c in claims if c["id"] == cid]
        return "; ".join(got) if got else "not measured"

    L.append("## Reading the results\n")
    L.append(f"""* **Phong et al.'s leak is exact** on full one-sample gradients, and on DSSGD uploads
  every pixel it reaches comes back to float32 rounding (max error {max_err:.1e} over all
  one-sample rows), also after several local epochs on the same sample.  Top-k helps the
  attacker twice: the largest kernel changes are those of the brightest pixels, and the cut-off
  bounds the pixels left out ("bounded" above "mean fill", θu = 10 %: {said("bounded")}).
  Even the sparsest one-sample upload beats the public mean image (θu = 1 %:
  {said("one_vs_mean")}).  Several samples mix the ratio; whether the attacker's own four
  candidates still beat the public mean: θu = 10 %: {said("four_vs_mean_10")}; θu = 1 %:
  {said("four_vs_mean_1")}.
* **Gradient inversion** degrades with the batch size
  ({", ".join(f"{d}: " + " / ".join(fmt(inv.get((d, "full gradient", b)), 1) for b in (1, 4, 8))
            + " dB at B = 1 / 4 / 8" for d in sorted({k[0] for k in inv}))}; B = 1 above
  B = 4: {said("inv_1_4")}; B = 4 above B = 8: {said("inv_4_8")}); matching only a DSSGD
  upload is weaker than the full gradient ({said("inv_full_dssgd")}); a top-k-aware attacker
  that takes the unseen entries as 0 against one that ignores them: {said("inv_zero")}.
* **Membership inference** tracks overfitting: AUC of the standalone local models
  ({", ".join(f"{d} {fmt(mem.get((d, 'standalone')), 2)}" for d in sorted({k[0] for k in mem}))})
  against the global models ({", ".join(f"{d} FedAvg {fmt(mem.get((d, 'FedAvg')), 2)}, DSSGD "
                                 f"{fmt(mem.get((d, 'DSSGD')), 2)}" for d in sorted({k[0] for k in mem}))};
  standalone above FedAvg: {said("mem_fedavg")}; above DSSGD: {said("mem_dssgd")}).
* **SliceNet's claim holds only while `W1` stays with the dominator**: without it the follower
  is at the mean-image line; with it the sums are inverted exactly once `|P| ≥ d` (digits; on
  Fashion-MNIST no piece of the sweep reaches d = 784), and with a Gaussian prior
  reconstructions that the reference classifier labels right appear well below `d` (see the
  *clf* column).  The protocol itself hands `W1` to every member in turn (each pass ends with a
  shuffle that moves the input layer to the next dominator), so "no collusion" is not enough:
  the hand-over row is the realistic one (its Gaussian reconstruction above the prior mean, clf:
  {said("handover_clf")}; PSNR: {said("handover_psnr")}).  The server's top-50 % of `W1` alone,
  with the rest set to 0: the prior mean above it in PSNR: {said("top50_psnr")}; it above the
  prior mean in clf (a partial leak): {said("top50_clf")}.
""")
    L += _batchnorm_reading(out["follower_real"], claims)
    four = {(r["dataset"], r["theta_u"]): r for r in out["dssgd"]
            if r["case"].startswith("4 samples")}
    old = {("digits", "10%"): ("14.34", "0.62"), ("digits", "1%"): ("11.82", "0.23"),
           ("fashion_mnist", "10%"): ("15.67", "0.49"), ("fashion_mnist", "1%"): ("11.82", "0.21")}
    L.append("## Claims that changed (issue 17)\n")
    L.append("The \"4 samples, batch 1\" rows used to score each true sample against the "
             "candidate closest to it (a choice only the evaluator can make).  With the "
             "attacker's own choice (its best-covered candidates) -- old → new, bounded-fill "
             "PSNR and clf:\n")
    for key, (op, oc) in old.items():
        r = four.get(key)
        if r is not None:
            L.append(f"* {key[0]}, θu = {key[1]}: PSNR {op} → {r['psnr_bounded_fill']}, clf "
                     f"{oc} → {fmt(r['clf_bounded_fill'], 2)} (random public image "
                     f"{r['psnr_random_public']}, public mean {r['psnr_mean_only']}).")
    L.append("\nThe mean-image prior and the Gaussian prior now come from public test images "
             "(first half) instead of the private training set; the SliceNet sweep scores the "
             "second half.  `privacy_report`'s `reconstruction_best_psnr` / "
             "`reconstruction_leaked_fraction` (the same oracle choice) are replaced by "
             "`reconstruction_psnr` beside `reconstruction_random_public_psnr` and "
             "`reconstruction_prior_psnr`; see `privacy_table.md`.  Every section is now measured over "
             f"model seeds ({seeds_line}; previously one seed, with intervals over images in "
             "section 2 only).  The SliceNet follower's *run's payload* rows (one seed before) and the "
             "input-BatchNorm case (not modelled before) are measured over the same seeds."
             + ("  Fashion-MNIST, withdrawn from the previous version (its figures were one "
                "seed), is measured again: every Fashion-MNIST row above is new."
                if "fashion_mnist" in seeds else "") + "\n")
    untested = [c for c in claims if c["id"] in STATED_BEFORE and c["verdict"] != "holds"]
    if untested:
        L.append("The reading used to state these comparisons as facts, without a test; "
                 "paired over the seeds they are not established:\n")
        L += [f"* {c['dataset']}: {c['text']}: {c['diff']} over {c['n']} seeds -- "
              f"**{c['verdict']}**." for c in untested]
        L.append("")
    L += more_seeds_section(out, earlier or {})
    DOC.parent.mkdir(parents=True, exist_ok=True)
    DOC.write_text("\n".join(L))
    print(f"wrote {DOC}")


# ---------------------------------------------------------------- main
LISTS = ("full", "dssgd", "inversion", "membership", "follower_sweep", "follower_real")


def run_seed(seed: int, args, names: list[str]) -> dict:
    """Every section for one model seed (model init, dataset split, sample choice)."""
    out = {k: [] for k in LISTS}
    out["clf_ceiling"] = {}
    hidden = {"digits": [64], "fashion_mnist": [128, 64]}
    for name in names:
        print(f"== {name}, seed {seed}", flush=True)
        cpu0, wall0 = time.process_time(), time.perf_counter()
        s = Setting(name, hidden[name], seed)
        out["clf_ceiling"][name] = s.clf.test_accuracy
        if args.follower_only:
            h1 = 128 if name == "digits" else 400
            sizes = (4, 16) if name == "digits" else (8, 32)
            sw, real = section_follower(s, h1, sizes, 20 if args.quick else 100,
                                        pass_samples=64 if args.quick else 256)
            out["follower_sweep"] += sw
            out["follower_real"] += real
            continue
        out["full"].append(section_full_gradients(s, 10 if args.quick else 50))
        print(f"  full gradients: {out['full'][-1]}", flush=True)
        out["dssgd"] += section_dssgd(s, args.samples if name == "digits"
                                      else max(1, args.samples // 2))
        out["inversion"] += section_inversion(
            s, args.trials, args.iterations if name == "digits" else args.fashion_iterations)
        sizes = (4, 16, 32, 48, 64, 96) if name == "digits" else (8, 32, 100, 200, 400)
        h1 = 128 if name == "digits" else 400
        sw, real = section_follower(s, h1, sizes, 20 if args.quick else 100,
                                    pass_samples=64 if args.quick else 256)
        out["follower_sweep"] += sw
        out["follower_real"] += real
        mem = dict(devices=10, per_device=100 if name == "digits" else 300,
                   rounds=args.rounds, hidden=hidden[name], max_samples=1000)
        out.setdefault("membership_setup", {})[name] = mem
        out["membership"] += section_membership(name, seed=seed, **mem)
        # this process's CPU (every thread, user + system) and wall time for the dataset
        out.setdefault("cpu_s", {})[name] = time.process_time() - cpu0
        out.setdefault("wall_s", {})[name] = time.perf_counter() - wall0
        print(f"  {name} seed {seed}: {out['cpu_s'][name]:.0f} s CPU, "
              f"{out['wall_s'][name]:.0f} s wall", flush=True)
    return out


def _plain(v):
    """JSON-able copies of numpy scalars (∞ and NaN kept as JSON's Infinity / NaN)."""
    if isinstance(v, dict):
        return {str(k): _plain(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [_plain(x) for x in v]
    if isinstance(v, np.integer):
        return int(v)
    if isinstance(v, np.floating):
        return float(v)
    return v


#: the datasets, in the doc's row order
NAMES = ("digits", "fashion_mnist")
#: per-seed entries that are per-dataset dicts (merged across files by dataset)
PER_NAME = ("clf_ceiling", "membership_setup", "cpu_s", "wall_s")


def _of(row: dict, name: str) -> bool:
    """Whether ``row`` is about dataset ``name`` (section 1 names it with its model)."""
    return str(row.get("dataset", "")).split(" ")[0] == name


def commands(cmds) -> str:
    """Commands of separate processes joined by `` + ``, those that differ only in
    ``--seed S --seeds K`` and ``--data`` written once with their ``(S, K)``.

    >>> commands(["`p --seed 0 --seeds 1 --data /tmp/a.json`", "`x`",
    ...           "`p --seed 1 --seeds 4 --data /tmp/b.json`"])
    '`p --seed S --seeds K --data PART_S.json` for (S, K) = (0, 1), (1, 4) + `x`'
    """
    import re

    pat = re.compile(r"`([^`]*?)--seed (\d+) --seeds (\d+)(.*?)(?:--data \S+)?`")
    groups: dict[str, list] = {}
    for c in cmds:
        m = pat.fullmatch(c)
        if m is None:
            groups.setdefault(c, [])
            continue
        tpl = f"`{m[1]}--seed S --seeds K{m[4]}" + ("--data PART_S.json`" if "--data" in c
                                                   else "`")
        groups.setdefault(tpl, []).append(f"({m[2]}, {m[3]})")
    return " + ".join(f"{t} for (S, K) = {', '.join(sk)}" if sk else t
                      for t, sk in groups.items())


def combine(parts: list[dict]) -> dict:
    """One ``{seed: out}`` from several per-seed files (separate processes): a seed measured in
    several files gets every file's datasets (e.g. digits from one, Fashion-MNIST from another).

    >>> a = {"per_seed": {"0": {"clf_ceiling": {"digits": 0.9}, "full": [{"dataset": "digits"}]}}}
    >>> b = {"per_seed": {"0": {"clf_ceiling": {"fashion_mnist": 0.8},
    ...                         "full": [{"dataset": "fashion_mnist"}]}}}
    >>> o = combine([a, b])["0"]
    >>> sorted(o["clf_ceiling"]), [r["dataset"] for r in o["full"]]
    (['digits', 'fashion_mnist'], ['digits', 'fashion_mnist'])
    """
    per: dict = {}
    for d in parts:
        for seed, o in d["per_seed"].items():
            have = per.setdefault(str(seed), {**{k: [] for k in LISTS},
                                              **{k: {} for k in PER_NAME}})
            twice = set(have["clf_ceiling"]) & set(o.get("clf_ceiling", {}))
            if twice:
                raise SystemExit(f"seed {seed} of {sorted(twice)} is in two of the files given "
                                 "to --render; give each (seed, dataset) once")
            for k in LISTS:
                have[k] += o.get(k, [])
            for k in PER_NAME:
                have[k].update(o.get(k, {}))
    return per


def merged(per_seed: dict) -> dict:
    """The doc's view of ``{seed: out}``: every list section merged over the seeds, dataset by
    dataset (each over the seeds that measured it); ``seeds`` and ``cpu_s`` per dataset, and
    the per-seed values themselves (``per_seed``, for the paired comparisons)."""
    seeds = {n: sorted(int(k) for k, o in per_seed.items() if n in o.get("clf_ceiling", {}))
             for n in NAMES}
    seeds = {n: v for n, v in seeds.items() if v}
    out: dict = {k: [] for k in LISTS}
    for n, ss in seeds.items():
        for k in LISTS:
            out[k] += merge_seeds([[r for r in per_seed[str(s)].get(k, []) if _of(r, n)]
                                   for s in ss])
    out["clf_ceiling"] = {n: float(np.mean([per_seed[str(s)]["clf_ceiling"][n] for s in ss]))
                          for n, ss in seeds.items()}
    out["membership_setup"] = {n: per_seed[str(ss[0])]["membership_setup"][n]
                               for n, ss in seeds.items()
                               if n in per_seed[str(ss[0])].get("membership_setup", {})}
    out["cpu_s"] = {n: [per_seed[str(s)]["cpu_s"][n] for s in ss
                        if n in per_seed[str(s)].get("cpu_s", {})] for n, ss in seeds.items()}
    out["seeds"] = seeds
    out["per_seed"] = per_seed
    return out


def restrict(per_seed: dict, seeds: dict) -> dict:
    """``per_seed`` cut to ``seeds`` (``{dataset: [seed, ...]}``): each seed keeps only the
    datasets it is listed for (their rows and per-dataset entries).

    >>> per = {"0": {"full": [{"dataset": "digits"}, {"dataset": "fashion_mnist (MLP)"}],
    ...              "clf_ceiling": {"digits": 0.9, "fashion_mnist": 0.8}},
    ...        "1": {"full": [{"dataset": "digits"}], "clf_ceiling": {"digits": 0.9}}}
    >>> cut = restrict(per, {"fashion_mnist": [0]})
    >>> sorted(cut), cut["0"]["full"], cut["0"]["clf_ceiling"]
    (['0'], [{'dataset': 'fashion_mnist (MLP)'}], {'fashion_mnist': 0.8})
    """
    out: dict = {}
    for seed, o in per_seed.items():
        names = [n for n, ss in seeds.items() if int(seed) in {int(x) for x in ss}]
        if not names:
            continue
        out[seed] = {k: ([r for r in v if any(_of(r, n) for n in names)] if k in LISTS else
                         {n: x for n, x in v.items() if n in names} if k in PER_NAME else v)
                     for k, v in o.items()}
    return out


def earlier_seeds(previous: dict | None, per_seed: dict) -> dict:
    """The seeds per dataset of the version a render replaces: those of the ``previous`` data
    file if this render adds seeds to it, else the ``earlier_seeds`` it recorded itself (a
    re-render keeps them).

    >>> old = {"per_seed": {"0": {"clf_ceiling": {"digits": 1}}}}
    >>> new = {"0": {"clf_ceiling": {"digits": 1}}, "1": {"clf_ceiling": {"digits": 1}}}
    >>> earlier_seeds(old, new), earlier_seeds({**old, "earlier_seeds": {"x": [7]}}, old["per_seed"])
    ({'digits': [0]}, {'x': [7]})
    """
    if not previous:
        return {}
    before = merged(previous["per_seed"])["seeds"]
    if before != merged(per_seed)["seeds"]:
        return before
    return previous.get("earlier_seeds", {})


def more_seeds_section(out: dict, earlier: dict) -> list[str]:
    """"With more seeds": for every dataset whose seeds grew since the previous version
    (``earlier``), each paired claim over the earlier seeds beside the same claim over all
    seeds (old → new), rendered from the per-seed values (the earlier seeds are a subset)."""
    from results_doc import more_seeds_changes

    grown = {n: ss for n, ss in earlier.items()
             if n in out["seeds"] and set(ss) < set(out["seeds"][n])}
    if not grown:
        return []
    old = {(c["dataset"], c["id"]): c
           for c in paired_claims(merged(restrict(out["per_seed"], grown)))}
    L = ["### With more seeds\n",
         "The previous version of this page measured "
         + "; ".join(f"{n} over {len(ss)} seeds" for n, ss in grown.items())
         + ".  Every comparison of the reading, over those seeds and over all seeds now "
         "(old → new; the same per-seed values, so the old column is the previous page's):\n"]
    for n, ss in grown.items():
        rows = [(c["text"], old[(n, c["id"])]["d"], c["d"], c["nd"]) for c in paired_claims(out)
                if c["dataset"] == n and (n, c["id"]) in old]
        L.append(f"*{n}*:\n")
        L += more_seeds_changes(rows, old_seeds=ss, new_seeds=out["seeds"][n])
        L.append("")
    return L


def update_follower(args) -> int:
    """Section 5's realistic-piece rows (``follower_real``) re-measured for the seeds given,
    merged into the per-seed file, rendered; the |P| sweep rows are kept."""
    import json

    data = json.loads(DATA.read_text())
    t0 = time.perf_counter()
    names = _datasets(args)
    args.follower_only = True
    for seed in range(args.seed, args.seed + args.seeds):
        have = data["per_seed"].get(str(seed), {}).get("clf_ceiling", {})
        if any(n not in have for n in names):
            raise SystemExit(f"--update-follower: seed {seed} of {names} is not in {DATA}; "
                             "measure every section for it first (--write-docs), or leave the "
                             "dataset out (--no-digits / --no-fashion)")
        got = run_seed(seed, args, names)      # (its sweep is --follower-only's short one)
        o = data["per_seed"][str(seed)]        # this seed's other datasets' rows are kept
        o["follower_real"] = [r for r in o["follower_real"]
                              if not any(_of(r, n) for n in names)] + \
            _plain(got["follower_real"])
    elapsed = time.perf_counter() - t0
    data["command"] += (f" + `nice -n {os.nice(0)} .venv/bin/python benchmarks/privacy_attacks.py "
                        + " ".join(sys.argv[1:]) + "` (section 5's realistic-piece rows re-measured, "
                        "with the input-BatchNorm case)")
    data["elapsed_s"] += elapsed
    data["when"] = time.strftime("%Y-%m-%d")
    DATA.write_text(json.dumps(data, indent=1))
    write_docs(merged(data["per_seed"]), data["command"], data["elapsed_s"],
               data.get("earlier_seeds"))
    return 0


def _datasets(args) -> list[str]:
    """The datasets ``--no-digits`` / ``--no-fashion`` leave (Fashion-MNIST if on the machine)."""
    names = [] if args.no_digits else ["digits"]
    if not args.no_fashion and fashion_mnist_available():
        names.append("fashion_mnist")
    elif not args.no_fashion:
        print("Fashion-MNIST not found: skipped")
    if not names:
        raise SystemExit("no dataset left to measure (--no-digits without Fashion-MNIST): drop "
                         "--no-digits, or put Fashion-MNIST where crowdlearn.data finds it")
    return names


def main(argv=None) -> int:
    import json

    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="tiny sizes, digits only (smoke)")
    ap.add_argument("--no-fashion", action="store_true", help="skip Fashion-MNIST")
    ap.add_argument("--no-digits", action="store_true",
                    help="skip digits (e.g. to add Fashion-MNIST seeds to a file whose digits "
                         "seeds were measured before: --render merges them per dataset)")
    ap.add_argument("--write-docs", action="store_true",
                    help=f"write {DOC.relative_to(ROOT)} and the per-seed values "
                         f"{DATA.relative_to(ROOT)}")
    ap.add_argument("--data", type=Path, default=DATA,
                    help="where --write-docs keeps the per-seed values (default: the one "
                         "the doc is rendered from)")
    ap.add_argument("--render", nargs="*", type=Path, metavar="DATA",
                    help=f"only render the doc from per-seed files (default "
                         f"{DATA.relative_to(ROOT)}); several files (seeds measured by "
                         f"separate processes) are merged into {DATA.relative_to(ROOT)}")
    ap.add_argument("--seed", type=int, default=0, help="first model seed")
    ap.add_argument("--seeds", type=int, default=5, help="model seeds (default 5)")
    ap.add_argument("--samples", type=int, default=40, help="images per DSSGD row")
    ap.add_argument("--trials", type=int, default=4, help="batches per inversion row")
    ap.add_argument("--iterations", type=int, default=300, help="inversion iterations (digits)")
    ap.add_argument("--fashion-iterations", type=int, default=600)
    ap.add_argument("--rounds", type=int, default=20, help="membership simulation rounds")
    ap.add_argument("--follower-only", action="store_true",
                    help="only section 5 (the SliceNet follower); never with --write-docs")
    ap.add_argument("--update-follower", action="store_true",
                    help=f"re-measure section 5's realistic-piece rows for --seed/--seeds, "
                         f"replace them in {DATA.relative_to(ROOT)} (everything else is kept) "
                         "and render")
    args = ap.parse_args(argv)
    if args.update_follower:
        return update_follower(args)
    if args.follower_only and args.write_docs:
        ap.error("--follower-only leaves out the other sections: it cannot --write-docs")
    if args.render is not None:
        parts = [json.loads(f.read_text()) for f in (args.render or [DATA])]
        data = {"command": commands(d["command"] for d in parts),
                "elapsed_s": sum(d["elapsed_s"] for d in parts),
                "when": max(d["when"] for d in parts),
                "per_seed": combine(parts)}
        previous = json.loads(DATA.read_text()) if DATA.exists() else None
        data["earlier_seeds"] = earlier_seeds(previous, data["per_seed"])
        if args.render:
            DATA.write_text(json.dumps(data, indent=1))
        write_docs(merged(data["per_seed"]), data["command"], data["elapsed_s"],
                   data["earlier_seeds"])
        return 0
    if args.quick:
        args.samples, args.trials, args.iterations, args.fashion_iterations, args.rounds = \
            5, 1, 100, 100, 3
        args.no_fashion = True
        args.seeds = min(args.seeds, 2)
    t0 = time.perf_counter()
    names = _datasets(args)
    per_seed = {str(seed): run_seed(seed, args, names)
                for seed in range(args.seed, args.seed + args.seeds)}
    elapsed = time.perf_counter() - t0
    out = merged(per_seed)
    print()
    print(table(out["full"], [("dataset", "model"), ("exact", "exact"),
                              ("max_abs_error", "max err")]))
    print(table(out["dssgd"], [("dataset", "data"), ("theta_u", "θu"), ("case", "case"),
                               ("coverage", "cov"), ("coverage_nonzero", "nz cov"),
                               ("max_abs_error", "max err"), ("psnr_bounded_fill", "PSNR b"),
                               ("ssim_bounded_fill", "SSIM b"), ("psnr_mean_only", "PSNR mean"),
                               ("psnr_random_public", "PSNR random"),
                               ("clf_bounded_fill", "clf")]))
    print(table(out["inversion"], [("dataset", "data"), ("observed", "observed"),
                                   ("batch", "B"), ("psnr", "PSNR"), ("ssim", "SSIM"),
                                   ("labels_ok", "labels"), ("clf", "clf")]))
    print(table(out["membership"], [("dataset", "data"), ("model", "model"), ("auc", "AUC"),
                                    ("advantage", "adv"), ("accuracy", "acc")]))
    print(table(out["follower_sweep"], [("dataset", "data"), ("piece", "|P|"), ("w1", "W1"),
                                        ("psnr", "PSNR"), ("ssim", "SSIM"), ("clf", "clf")]))
    print(table(out["follower_real"], [("dataset", "data"), ("piece", "|P|"), ("w1", "W1"),
                                       ("method", "method"), ("psnr", "PSNR"),
                                       ("ssim", "SSIM"), ("clf", "clf")]))
    print(f"total {elapsed:.0f} s")
    if args.write_docs:
        command = (f"`nice -n {os.nice(0)} .venv/bin/python benchmarks/privacy_attacks.py "
                   + " ".join(sys.argv[1:]) + "`")
        args.data.parent.mkdir(parents=True, exist_ok=True)
        args.data.write_text(json.dumps({"command": command, "elapsed_s": elapsed,
                                    "when": time.strftime("%Y-%m-%d"),
                                    "per_seed": _plain(per_seed)}, indent=1))
        write_docs(out, command, elapsed)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
