"""Experiments of the functional-mechanism protocol (``protocol = "fm"``).

Produces the tables and the plot of ``docs/experiments/functional_mechanism.md``:

1. accuracy (breast cancer) and RMSE (diabetes) against ε for collaborative FM (spec Δ and our
   ``l2`` Δ), next to centralized FM at the same ε, the non-private collaborative model (FM
   without noise, and FedAvg on the same linear model) and centralized non-private models
   (``centralized`` protocol, scikit-learn);
2. 0–50 % unreliable participants of each kind (label flips, feature noise, random data), at
   ε = 10 and without FM noise: plain averaging vs quality-weighted aggregation (noisy and exact
   scores), the loss, the recovered fraction ``(mitigated − plain) / (clean − plain)`` and the
   acceptance "recovers ≥ 70 %", each paired over seeds;
3. the consensus tolerance: how far the global model is from the minimiser of the summed noisy
   objectives after the rounds used (20) and after 200;
4. deep mode: hidden layers pre-trained on the server's public rows, FM on the output layer
   (digits; Fashion-MNIST when it is installed).

Every collaborative number is a full simulated run (10 devices, always online); linear runs are
evaluated with the numpy ``LinearEvaluator`` (same metrics as ``FleetTrainer``), in worker
processes (``--jobs``; the sweep runner's ``Simulation`` would train and write a folder per run,
~10x slower for these numpy-only runs).  Cells are means with 95 % intervals over seeds
(``results_doc``); the per-seed values are kept in
``docs/experiments/data/functional_mechanism.json``, from which the doc is rendered.

Usage::

    .venv/bin/python benchmarks/fm_experiments.py --quick                   # 2 seeds, smoke
    .venv/bin/python benchmarks/fm_experiments.py --jobs 2 --write-docs     # the doc (~1 h CPU)
    .venv/bin/python benchmarks/fm_experiments.py --only consensus --write-docs   # one section
"""

from __future__ import annotations

import argparse
import json
import math
import os
import re
import sys
import time
from pathlib import Path

# one BLAS thread per process: the matrices are tiny (d ≤ 31) and on a loaded machine a threaded
# eigh of 31×31 spin-waits for ~0.1 s (measured: 10 eigh calls were half of a run's time)
for _var in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_var, "1")

import numpy as np  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import results_doc as R  # noqa: E402
import crowdlearn.experiment as experiment  # noqa: E402
from crowdlearn.config import from_dict  # noqa: E402
from crowdlearn.privacy import functional as F  # noqa: E402
from crowdlearn.protocols import fm  # noqa: E402

EPSILONS = (0.1, 0.5, 1.0, 2.0, 5.0, 10.0, math.inf)
FRACTIONS = (0.0, 0.1, 0.2, 0.3, 0.4, 0.5)
DATASETS = {"breast_cancer": "accuracy", "diabetes": "rmse"}
DEVICES = 10
ROUNDS = 20
DOC = ROOT / "docs" / "experiments" / "functional_mechanism.md"
PLOT = ROOT / "docs" / "experiments" / "functional_mechanism.png"
#: every per-seed value behind the doc (the doc is rendered from it)
DATA = ROOT / "docs" / "experiments" / "data" / "functional_mechanism.json"


def config(dataset, seed, *, protocol="fm", rounds=ROUNDS, fm_opts=None, quality=None,
           model=None, extra=None):
    raw = {"protocol": protocol, "rounds": rounds, "seed": seed,
           "fleet": {"devices": DEVICES, "cells": 2}, "data": {"dataset": dataset},
           "model": model or {"arch": "linear"}, "fm": dict(fm_opts or {})}
    if quality:
        raw["quality"] = dict(quality)
    for k, v in (extra or {}).items():
        raw.setdefault(k, {}).update(v)
    return from_dict(raw)


def fm_run(dataset, seed, **kw):
    """Final metric of one simulated FM run (and the simulation; ``sim.first`` is round 0's)."""
    sim = experiment.Simulation(config(dataset, seed, **kw), trainer_factory=fm.LinearEvaluator)
    res = sim.run()
    sim.first = res.metrics[0][DATASETS[dataset]]
    return res.metrics[-1][DATASETS[dataset]], sim


def eps_label(e):
    return "∞" if math.isinf(e) else f"{e:g}"


def _pool(jobs):
    import concurrent.futures as cf
    import multiprocessing as mp
    return cf.ProcessPoolExecutor(max_workers=jobs, mp_context=mp.get_context("spawn"))


def _map(fn, tasks, jobs):
    """``[fn(t) for t in tasks]``, in ``jobs`` spawned processes when ``jobs > 1``."""
    if jobs <= 1:
        return [fn(t) for t in tasks]
    with _pool(jobs) as ex:
        return list(ex.map(fn, tasks, chunksize=8))


# ---------------------------------------------------------------- 1. utility against ε
def centralized_fm(dataset, seed):
    """FM fitted once on the union of the devices' rows (same rows, same scaling as the fleet).

    Returns ``{(ε, bound): metric}``.
    """
    sim = experiment.Simulation(config(dataset, seed, rounds=1), trainer_factory=fm.LinearEvaluator)
    ds, model = sim.dataset, sim.ctx.extra["model"]
    union = np.concatenate(sim.ctx.extra["parts"])
    z, y = model.rows(ds.x_train[union]), model.targets(ds.y_train[union])
    ev = fm.LinearEvaluator(sim.spec, None, None)
    out = {}
    for eps in EPSILONS:
        for bound in ("spec", "l2"):
            w = F.fit(model.kind, z, y, epsilon=eps, rng=np.random.default_rng(1000 + seed),
                      bound=bound, ridge=1.0)
            (_, metric), = ev.evaluate([model.to_weights(w)], ds.x_test, ds.y_test)
            out[eps_label(eps), bound] = metric
    return out


def _utility_task(t):
    dataset, seed = t
    out = {}
    for eps in EPSILONS:
        for bound in ("spec", "l2"):
            m, sim = fm_run(dataset, seed, fm_opts={"epsilon": eps, "bound": bound})
            out[f"{eps_label(eps)}|collab_{bound}"] = m
            out[f"{eps_label(eps)}|oneshot_{bound}"] = sim.first
    for (e, bound), m in centralized_fm(dataset, seed).items():
        out[f"{e}|central_{bound}"] = m
    return out


def utility_table(dataset, seeds, jobs, log):
    """``{ε label: {column: [value per seed]}}``."""
    per_seed = _map(_utility_task, [(dataset, s) for s in seeds], jobs)
    out: dict = {}
    for res in per_seed:
        for key, v in res.items():
            e, col = key.split("|")
            out.setdefault(e, {}).setdefault(col, []).append(v)
    for e, row in out.items():
        log(f"  {dataset} ε={e}: " + ", ".join(f"{k} {np.mean(v):.3f}" for k, v in row.items()))
    return out


def sklearn_references(dataset, seeds):
    """scikit-learn on each seed's own train/test split (the split the FM runs of that seed
    use), all training rows, and the trivial predictor: ``{"sklearn": [...], "trivial": [...]}``
    per seed, so the comparison with FM can be paired."""
    from sklearn.linear_model import LinearRegression, LogisticRegression

    from crowdlearn.data import load_dataset
    out = {"sklearn": [], "trivial": [], "rows_shrunk": [], "lstsq_fm_rows": []}
    for seed in seeds:
        ds = load_dataset(dataset, seed=seed)
        # FM's own preprocessing of the devices' rows: divided by B, shrunk onto the unit sphere
        # when longer (the bound its sensitivity needs)
        sim = experiment.Simulation(config(dataset, seed, rounds=1),
                                    trainer_factory=fm.LinearEvaluator)
        model, union = sim.ctx.extra["model"], np.concatenate(sim.ctx.extra["parts"])
        out["rows_shrunk"].append(float(np.mean(
            np.linalg.norm(ds.x_train[union], axis=1) > model.scaling.x_bound)))
        if DATASETS[dataset] == "rmse":   # exact least squares on those rows (no FM, no ADMM)
            w = np.linalg.lstsq(model.rows(ds.x_train[union]),
                                model.targets(ds.y_train[union]), rcond=None)[0]
            (_, m), = fm.LinearEvaluator(sim.spec, None, None).evaluate(
                [model.to_weights(w)], ds.x_test, ds.y_test)
            out["lstsq_fm_rows"].append(float(m))
        if DATASETS[dataset] == "accuracy":
            m = LogisticRegression(max_iter=5000).fit(ds.x_train, ds.y_train)
            out["sklearn"].append(float(np.mean(m.predict(ds.x_test) == ds.y_test)))
            out["trivial"].append(float(max(np.mean(ds.y_test == c) for c in (0, 1))))
        else:
            m = LinearRegression().fit(ds.x_train, ds.y_train)
            out["sklearn"].append(float(np.sqrt(np.mean((m.predict(ds.x_test) - ds.y_test)
                                                        ** 2))))
            out["trivial"].append(float(np.sqrt(np.mean((ds.y_test - ds.y_train.mean()) ** 2))))
    return out


def nonprivate_references(dataset, seeds):
    """FedAvg and the centralized protocol (TensorFlow, linear model)."""
    key = DATASETS[dataset]
    out = {}
    for proto in ("fedavg", "centralized"):
        vals = []
        for seed in seeds:
            cfg = config(dataset, seed, protocol=proto,
                         extra={"fedavg": {"clients_per_round": DEVICES, "local_epochs": 1,
                                           "batch_size": 16, "lr": 0.05}})
            res = experiment.Simulation(cfg).run()
            vals.append(res.metrics[-1][key])
        out[proto] = vals
    return out


# ---------------------------------------------------------------- 2. unreliable participants
KINDS = ("label_flip", "feature_noise", "random")
#: fractions per kind (compute: label flips, the spec's acceptance case, on the full grid)
KIND_FRACTIONS = {"label_flip": (0.1, 0.2, 0.3, 0.4, 0.5), "feature_noise": (0.1, 0.3, 0.5),
                  "random": (0.1, 0.3, 0.5)}
#: (column, fm options beyond ε and the l2 bound)
VARIANTS = (("plain", {}),
            ("quality", {"aggregation": "quality"}),
            ("exact", {"aggregation": "quality", "score_epsilon": math.inf}))


def _unreliable_task(t):
    dataset, seed, eps = t
    out = {}
    cells = [("clean", 0.0)] + [(k, f) for k in KINDS for f in KIND_FRACTIONS[k]]
    for kind, frac in cells:
        q = {"fraction": frac, "kind": "label_flip" if kind == "clean" else kind}
        # exact scores (a bound on what less score noise could give): clean and label flips
        for col, opts in VARIANTS if kind in ("clean", "label_flip") else VARIANTS[:2]:
            m, _ = fm_run(dataset, seed, fm_opts={"epsilon": eps, "bound": "l2", **opts},
                          quality=q)
            out[f"{kind}|{frac:g}|{col}"] = m
    return out


def unreliable_table(dataset, seeds, eps, jobs, log):
    """``{kind: {fraction: {variant: [value per seed]}}}`` (kind ``clean``: fraction 0)."""
    per_seed = _map(_unreliable_task, [(dataset, s, eps) for s in seeds], jobs)
    out: dict = {}
    for res in per_seed:
        for key, v in res.items():
            kind, frac, col = key.split("|")
            out.setdefault(kind, {}).setdefault(frac, {}).setdefault(col, []).append(v)
    for kind, rows in out.items():
        for frac, row in rows.items():
            log(f"  {dataset} ε={eps_label(eps)} {kind} {frac}: " +
                ", ".join(f"{k} {np.mean(v):.3f}" for k, v in row.items()))
    return out


# ---------------------------------------------------------------- 3. consensus tolerance
def consensus(dataset, seeds, eps, rounds=(ROUNDS, 200)):
    """Relative L2 distance of the global model to the minimiser of the summed noisy objectives.

    The minimiser is computed in closed form from the participants' own (noisy, trimmed)
    objectives, as in ``tests/test_functional_mechanism.py``.
    """
    out = {str(r): [] for r in rounds}
    for seed in seeds:
        for r in rounds:
            _, _, w, z = summed_minimiser(dataset, seed, eps, r)
            out[str(r)].append(float(np.linalg.norm(z - w) / np.linalg.norm(w)))
    return out


def summed_minimiser(dataset, seed, eps, rounds):
    """One run's summed objective ``f(v) = gᵀv + vᵀHv`` (participants' noisy, trimmed
    objectives with their ridge), its minimiser ``w*`` and the global model ``z``."""
    _, sim = fm_run(dataset, seed, rounds=rounds, fm_opts={"epsilon": eps, "bound": "l2"})
    ts = [sim.driver.machines[d].objective for d in range(DEVICES)]
    H = sum(t.Q @ np.diag(t.lam + t.ridge) @ t.Q.T
            + t.ridge * (np.eye(t.dim) - t.Q @ t.Q.T) for t in ts)
    g = sum(t.Q @ t.qa for t in ts)
    return H, g, -0.5 * np.linalg.solve(H, g), sim.driver.machines["server"].z


#: quality-weighting variants tried at the acceptance cell (30 % flipped, ε = 10, breast cancer)
ACCEPT_VARIANTS = {"median (default)": ({"aggregation": "quality"}, 40),
                   "trim 30 %": ({"aggregation": "quality", "weighting": "trim"}, 40),
                   "softmax": ({"aggregation": "quality", "weighting": "softmax"}, 40),
                   "median, 100 validation rows": ({"aggregation": "quality"}, 100)}


def _variants_task(t):
    seed, eps = t
    q = {"fraction": 0.3, "kind": "label_flip"}
    out = {}
    for public in (40, 100):
        base = {"epsilon": eps, "bound": "l2", "public_size": public}
        out[f"clean|{public}"], _ = fm_run("breast_cancer", seed, fm_opts=base)
        out[f"plain|{public}"], _ = fm_run("breast_cancer", seed, fm_opts=base, quality=q)
    for name, (opts, public) in ACCEPT_VARIANTS.items():
        out[name], _ = fm_run("breast_cancer", seed, quality=q,
                              fm_opts={"epsilon": eps, "bound": "l2", "public_size": public,
                                       **opts})
    return out


def acceptance_variants(seeds, eps, jobs):
    """``{name: [per seed]}`` of the variants and their clean / plain references."""
    out: dict = {}
    for res in _map(_variants_task, [(s, eps) for s in seeds], jobs):
        for k, v in res.items():
            out.setdefault(k, []).append(v)
    return out


def conditioning(dataset, seeds, eps, rounds=(ROUNDS, 200)):
    """Where the consensus error lives: the summed objective's condition number, the share of
    ``‖z − w*‖²`` in the directions with eigenvalue ``< 1e-3·λ_max``, and the relative
    objective gap ``(f(z) − f(w*)) / |f(w*)|`` (``f`` the summed trimmed objective, without its
    constant), per seed and round count."""
    out: dict = {"cond": [], **{f"small_share_{r}": [] for r in rounds},
                 **{f"gap_{r}": [] for r in rounds}, "small_dirs": []}
    for seed in seeds:
        for r in rounds:
            H, g, w, z = summed_minimiser(dataset, seed, eps, r)
            lam, Q = np.linalg.eigh(H)
            e = Q.T @ (z - w)
            small = lam < 1e-3 * lam.max()
            fz, fw = (float(g @ v + v @ H @ v) for v in (z, w))
            out[f"small_share_{r}"].append(float(np.sum(e[small] ** 2) / np.sum(e ** 2)))
            out[f"gap_{r}"].append((fz - fw) / abs(fw))
            if r == rounds[0]:
                out["cond"].append(float(lam.max() / lam.min()))
                out["small_dirs"].append(int(small.sum()))
    return out


# ---------------------------------------------------------------- 4. deep mode
def deep_table(dataset, seeds, log, hidden=32, public=100, epsilons=(1.0, 10.0, 100.0,
                                                                       math.inf)):
    from crowdlearn.data import fashion_mnist_available
    if dataset == "fashion_mnist" and not fashion_mnist_available():
        return None
    rows = {}
    pretrained = []
    for eps in epsilons:
        row = {}
        for bound in ("spec", "l2"):
            vals = []
            for seed in seeds:
                cfg = config(dataset, seed, rounds=5, model={
                    "arch": "mlp", "hidden": [hidden], "activation": "tanh"},
                    fm_opts={"epsilon": eps, "bound": bound, "public_size": public})
                sim = experiment.Simulation(cfg)
                res = sim.run()
                vals.append(res.metrics[-1]["accuracy"])
                if len(pretrained) < len(seeds):
                    srv = sim.driver.machines["server"]
                    (loss, acc), = sim.trainer.evaluate([srv.pretrained], sim.dataset.x_test,
                                                        sim.dataset.y_test)
                    pretrained.append(acc)
            row[bound] = vals
        log(f"  deep {dataset} ε={eps_label(eps)}: spec {np.mean(row['spec']):.3f} "
            f"l2 {np.mean(row['l2']):.3f}")
        rows[eps_label(eps)] = row
    return {"rows": rows, "pretrained": pretrained, "hidden": hidden, "public": public,
            "seeds": list(seeds)}


# ---------------------------------------------------------------- output
def _sign(key):
    return 1.0 if key == "accuracy" else -1.0


def acceptance(rows, key, kind, frac, target=0.7):
    """The paired statistics of one unreliable cell (per-seed clean = plain at 0 %)."""
    s = _sign(key)
    clean = np.asarray(rows["clean"]["0"]["plain"])
    r = rows[kind][frac]
    plain, q = (np.asarray(r[c]) for c in ("plain", "quality"))
    ex = np.asarray(r["exact"]) if "exact" in r else None
    lost = R.paired(s * clean, s * plain)
    gain = R.paired(s * q, s * plain)
    rec = R.bootstrap_ratio(s * (q - plain), s * (clean - plain))
    rec_ex = R.bootstrap_ratio(s * (ex - plain), s * (clean - plain)) if ex is not None \
        else (math.nan, math.nan, math.nan)
    # H: gain ≥ target · loss, per seed: s(q − plain) − target · s(clean − plain) > 0
    accept = R.paired(s * (q - plain) - target * s * (clean - plain), np.zeros_like(q))
    exact_vs_noisy = R.paired(s * ex, s * q) if ex is not None else None
    return {"lost": lost, "gain": gain, "recovered": rec, "recovered_exact": rec_ex,
            "accept": accept, "exact_vs_noisy": exact_vs_noisy}


def _pct(r, a=None):
    if a is not None and not a["lost"]["lo"] > 0:
        return "n/a (no loss shown)"
    est, lo, hi = r
    return "—" if not math.isfinite(est) else f"{est:.0%} [{lo:.0%}, {hi:.0%}]"


def _accept(a) -> str:
    """The ≥ 70 % verdict, only where plain averaging is shown to lose something."""
    return R.verdict(a["accept"]) if a["lost"]["lo"] > 0 else "n/a (no loss shown)"


def markdown(results) -> str:
    out = []
    ref = results.get("references", {})
    env = results["environment"]
    seeds = results["seeds"]
    if "utility" not in results:
        out.append("_Utility tables: not measured in this run._\n")
    for dataset, key in (DATASETS.items() if "utility" in results else ()):
        name = "Breast cancer — accuracy" if key == "accuracy" else "Diabetes — RMSE " \
            "(standardised target; lower is better)"
        out.append(f"#### {name} (seeds {R.seeds_text(seeds['utility'])})\n")
        out.append("| ε | collaborative FM, spec Δ | collaborative FM, l2 Δ [ours] | "
                   "one-shot average (round 0), l2 Δ | centralized FM, spec Δ | "
                   "centralized FM, l2 Δ [ours] |")
        out.append("| --- | --- | --- | --- | --- | --- |")
        util = results["utility"][dataset]
        for e in map(eps_label, EPSILONS):
            r = util[e]
            out.append(f"| {e} | {R.cell(r['collab_spec'])} | {R.cell(r['collab_l2'])} | "
                       f"{R.cell(r['oneshot_l2'])} | {R.cell(r['central_spec'])} | "
                       f"{R.cell(r['central_l2'])} |")
        rr = {**ref[dataset], **results.get("sklearn", {}).get(dataset, {})}
        nref = len(rr["fedavg"])
        out.append("")
        out.append("| non-private reference | " + key + " |")
        out.append("| --- | --- |")
        out.append(f"| collaborative FM without noise (ε = ∞ row) | "
                   f"{R.cell(util['∞']['collab_l2'])} |")
        out.append(f"| collaborative FedAvg, same linear model ({ROUNDS} rounds, SGD; seeds "
                   f"{R.seeds_text(seeds['references'])}) | {R.cell(rr['fedavg'])} |")
        out.append(f"| centralized SGD (`centralized` protocol, {ROUNDS} epochs; {nref} seeds) | "
                   f"{R.cell(rr['centralized'])} |")
        sk = "LogisticRegression" if key == "accuracy" else "LinearRegression"
        nsk = len(rr["sklearn"])
        per_seed = f"each seed's own split, seeds {R.seeds_text(seeds.get('sklearn', []))}" \
            if nsk > 1 else "seed 0's split only"
        out.append(f"| centralized scikit-learn {sk} (all training rows; {per_seed}) | "
                   f"{R.cell(rr['sklearn'])} |")
        triv = "majority class" if key == "accuracy" else "predict the training mean"
        out.append(f"| trivial: {triv} | {R.cell(rr['trivial'])} |")
        out.append("")
        if rr.get("lstsq_fm_rows"):
            out.append(f"| exact least squares on FM's preprocessed rows (rows ÷ B, shrunk onto "
                       f"the unit sphere when longer; no noise, no ADMM) | "
                       f"{R.cell(rr['lstsq_fm_rows'])} |")
            out.append("")
        if rr.get("rows_shrunk"):
            out.append(f"Training rows longer than FM's bound B (shrunk onto the unit sphere): "
                       f"{R.cell([100 * v for v in rr['rows_shrunk']], 1)} %.\n")
        if nsk > 1 and seeds.get("sklearn") == seeds["utility"]:
            d = R.paired(_sign(key) * np.asarray(util["∞"]["collab_l2"]),
                         _sign(key) * np.asarray(rr["sklearn"]))
            out.append(f"Collaborative FM without noise minus scikit-learn {sk}, paired over "
                       f"the seeds (same split; positive = FM better): {R.fmt_paired(d)} — "
                       f"{R.verdict(d)}.\n")
        ut = results["utility"][dataset]
        d = R.paired(_sign(key) * np.asarray(ut["10"]["collab_l2"]),
                     _sign(key) * np.asarray(ut["10"]["oneshot_l2"]))
        d0 = R.paired(_sign(key) * np.asarray(ut["∞"]["collab_l2"]),
                      _sign(key) * np.asarray(ut["∞"]["oneshot_l2"]))
        dc = R.paired(_sign(key) * np.asarray(ut["10"]["central_l2"]),
                      _sign(key) * np.asarray(ut["10"]["collab_l2"]))
        out.append(f"Paired over seeds (positive = first is better): ADMM rounds vs one-shot "
                   f"average, ε = 10: {R.fmt_paired(d)}; ε = ∞: {R.fmt_paired(d0)}; "
                   f"centralized vs collaborative FM, ε = 10: {R.fmt_paired(dc)}.\n")
    kind_name = {"label_flip": "label-flipped", "feature_noise": "feature-noise (σ = "
                 "quality.feature_sigma)", "random": "random-data"}
    summary = []
    for eps_key, by_ds in results.get("unreliable", {}).items():
        for dataset, key in DATASETS.items():
            rows = by_ds[dataset]
            clean = rows["clean"]["0"]
            for kind in KINDS:
                out.append(f"#### {dataset}, ε = {eps_key} (l2 Δ), {kind_name[kind]} "
                           f"participants — {key} (seeds {R.seeds_text(seeds['unreliable'])})\n")
                out.append("| unreliable | plain averaging | quality-weighted [ours] | "
                           "quality-weighted, exact scores | lost by plain (paired) | "
                           "recovered [bootstrap 95 %] | recovered − 70 % of lost (paired) | "
                           "≥ 70 % |")
                out.append("| --- | --- | --- | --- | --- | --- | --- | --- |")
                out.append(f"| 0% | {R.cell(clean['plain'])} | {R.cell(clean['quality'])} | "
                           f"{R.cell(clean['exact'])} | — | — | — | — |")
                for frac in (f"{f:g}" for f in KIND_FRACTIONS[kind]):
                    r = rows[kind][frac]
                    a = acceptance(rows, key, kind, frac)
                    out.append(f"| {float(frac):.0%} | {R.cell(r['plain'])} | "
                               f"{R.cell(r['quality'])} | {R.cell(r.get('exact', []))} | "
                               f"{R.fmt_paired(a['lost'])} | {_pct(a['recovered'], a)} | "
                               f"{R.fmt_paired(a['accept'])} | {_accept(a)} |")
                    if frac == "0.3":
                        summary.append((eps_key, dataset, kind, a))
                out.append("")
    out.append("#### Acceptance at 30 % unreliable (recover ≥ 70 % of what plain averaging "
               "loses), paired over seeds\n")
    out.append("| ε | dataset | kind | lost by plain | recovered, noisy scores | "
               "recovered, exact scores | ≥ 70 % | exact − noisy scores |")
    out.append("| --- | --- | --- | --- | --- | --- | --- | --- |")
    for eps_key, dataset, kind, a in summary:
        out.append(f"| {eps_key} | {dataset} | {kind} | {R.fmt_paired(a['lost'])} | "
                   f"{_pct(a['recovered'], a)} | {_pct(a['recovered_exact'], a)} | "
                   f"{_accept(a)} | "
                   f"{R.fmt_paired(a['exact_vs_noisy']) if a['exact_vs_noisy'] else '—'} |")
    out.append("")
    out.append("With no unreliable participant, quality-weighted minus plain (paired; positive = "
               "weighting helps):")
    for eps_key, by_ds in results.get("unreliable", {}).items():
        for dataset, key in DATASETS.items():
            c = by_ds[dataset]["clean"]["0"]
            d = R.paired(_sign(key) * np.asarray(c["quality"]),
                         _sign(key) * np.asarray(c["plain"]))
            out.append(f"* {dataset}, ε = {eps_key}: {R.fmt_paired(d)} — {R.verdict(d)}")
    out.append("")
    cons = results.get("consensus")
    if cons:
        out.append(f"#### Consensus tolerance: ‖z − w*‖₂ / ‖w*‖₂ after the rounds "
                   f"(w* the minimiser of the summed noisy objectives; seeds "
                   f"{R.seeds_text(seeds['consensus'])})\n")
        rounds = list(next(iter(next(iter(cons.values())).values())))
        out.append("| dataset | ε | " + " | ".join(f"{r} rounds" for r in rounds) + " |")
        out.append("| --- | --- | " + " | ".join("---" for _ in rounds) + " |")
        for dataset, by_eps in cons.items():
            for e, vals in by_eps.items():
                out.append(f"| {dataset} | {e} | " + " | ".join(
                    R.cell(vals[r], 4) for r in rounds) + " |")
        out.append("")
    if results.get("variants"):
        v = results["variants"]
        out.append(f"#### Acceptance cell (breast cancer, 30 % flipped, ε = 10, l2 Δ): weighting "
                   f"variants (seeds {R.seeds_text(seeds['variants'])})\n")
        out.append("| variant | accuracy | plain averaging | clean | recovered [bootstrap 95 %] "
                   "| recovered − 70 % of lost (paired) | ≥ 70 % |")
        out.append("| --- | --- | --- | --- | --- | --- | --- |")
        for name, (_, public) in ACCEPT_VARIANTS.items():
            q, pl, cl = (np.asarray(v[k]) for k in (name, f"plain|{public}", f"clean|{public}"))
            est, lo, hi = R.bootstrap_ratio(q - pl, cl - pl)
            acc = R.paired(q - pl - 0.7 * (cl - pl), np.zeros_like(q))
            out.append(f"| {name} | {R.cell(q)} | {R.cell(pl)} | {R.cell(cl)} | "
                       f"{100 * est:.0f} % [{100 * lo:.0f} %, {100 * hi:.0f} %] | "
                       f"{R.fmt_paired(acc)} | {R.verdict(acc)} |")
        out.append("")
    for dataset, by_eps in (results.get("conditioning") or {}).items():
        out.append(f"#### Why the parameter distance stays large: {dataset}, conditioning of the "
                   f"summed objective (seeds {R.seeds_text(seeds['conditioning'])})\n")
        out.append("| ε | condition number | directions with λ < 1e-3·λ_max | share of "
                   "‖z − w*‖² in them, 20 / 200 rounds | relative objective gap, 20 / 200 "
                   "rounds |")
        out.append("| --- | --- | --- | --- | --- |")
        for e, c in by_eps.items():
            out.append(f"| {e} | {np.median(c['cond']):.2e} (median) | "
                       f"{R.cell(c['small_dirs'], 1)} | {R.cell(c['small_share_20'], 4)} / "
                       f"{R.cell(c['small_share_200'], 4)} | {R.cell(c['gap_20'], 4)} / "
                       f"{R.cell(c['gap_200'], 4)} |")
        out.append("")
    for dataset, d in (results.get("deep") or {}).items():
        if d is None:
            continue
        out.append(f"#### Deep mode — {dataset}, accuracy (MLP, one tanh hidden layer of "
                   f"{d['hidden']}, pre-trained on {d['public']} public rows; 5 rounds; "
                   f"seeds {R.seeds_text(d['seeds'])}: TensorFlow runs, fewer seeds)\n")
        out.append("| ε | FM output layer, spec Δ | FM output layer, l2 Δ [ours] |")
        out.append("| --- | --- | --- |")
        for e, r in d["rows"].items():
            out.append(f"| {e} | {R.cell(r['spec'])} | {R.cell(r['l2'])} |")
        out.append(f"\nThe pre-trained network alone (the server's {d['public']} public rows, "
                   f"no participant data): {R.cell(d['pretrained'])}.  Paired over seeds, FM "
                   f"output layer (l2 Δ) minus the public-only network: " + "; ".join(
                       f"ε = {e}: {R.fmt_paired(R.paired(d['rows'][e]['l2'], d['pretrained']))}"
                       for e in ("∞", "100", "10") if e in d["rows"]) + ".\n")
    out.append(f"_Each cell: mean ± half-width of the 95 % Student-t interval over the seeds "
               f"listed; paired differences: mean [95 % interval], paired t-test p; recovered "
               f"fractions: ratio of means with a 95 % percentile bootstrap over seeds. "
               f"Measured {results['when']} ({results['wall']}). {env}_\n")
    out.append("_Drift on rerun: with the same seeds and environment every figure reproduces "
               "exactly (seeded runs, numpy only for the linear rows); with other seeds of the "
               "same number a cell's mean moves by up to about √2 × its half-width (95 % of "
               "reruns); another BLAS or numpy version may change the last digits of single "
               "runs._")
    return "\n".join(out) + "\n"


def plot(results, path: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from crowdlearn.sweeps import interval95
    fig, axes = plt.subplots(2, 2, figsize=(11, 8))
    xs = np.arange(len(EPSILONS))
    for col, (dataset, key) in enumerate(DATASETS.items()):
        ax = axes[0, col]
        util = results["utility"][dataset]
        for label, k, style in (("collaborative FM, spec Δ", "collab_spec", "o-"),
                                ("collaborative FM, l2 Δ", "collab_l2", "s-"),
                                ("centralized FM, l2 Δ", "central_l2", "^--")):
            mh = np.array([interval95(util[eps_label(e)][k]) for e in EPSILONS])
            ax.errorbar(xs, mh[:, 0], yerr=mh[:, 1], fmt=style, capsize=3, label=label)
        ref = results["references"][dataset]
        ax.axhline(np.mean(ref["fedavg"]), color="grey", ls=":", label="FedAvg (non-private)")
        sk = results.get("sklearn", {}).get(dataset, ref)["sklearn"]
        ax.axhline(np.mean(sk), color="k", ls="-.", lw=0.8,
                   label="centralized sklearn (non-private)")
        ax.set_xticks(xs, [eps_label(e) for e in EPSILONS])
        ax.set_xlabel("ε per participant")
        ax.set_ylabel(key)
        ax.set_title(f"{dataset}: {key} against ε (95 % intervals)")
        ax.legend(fontsize=7)
        ax = axes[1, col]
        for eps_key, color in zip(results["unreliable"], ("C0", "C3"), strict=False):
            rows = results["unreliable"][eps_key][dataset]
            fr = [100 * f for f in FRACTIONS]
            for c, style, lab in (("plain", "o--", "plain"), ("quality", "s-", "quality-weighted")):
                vals = [rows["clean"]["0"][c]] + [rows["label_flip"][f"{f:g}"][c]
                                                  for f in FRACTIONS if f > 0]
                mh = np.array([interval95(v) for v in vals])
                ax.errorbar(fr, mh[:, 0], yerr=mh[:, 1], fmt=style, color=color, capsize=2,
                            label=f"{lab}, ε = {eps_key}")
        ax.set_xlabel("label-flipped participants (%)")
        ax.set_ylabel(key)
        ax.set_title(f"{dataset}: unreliable participants (95 % intervals)")
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def write_docs(table_md: str) -> None:
    text = DOC.read_text()
    start, end = "<!-- fm-tables:start -->", "<!-- fm-tables:end -->"
    if start not in text or end not in text:
        raise SystemExit(f"{DOC} has no {start} … {end} markers")
    new = re.sub(re.escape(start) + r".*?" + re.escape(end),
                 lambda _m: f"{start}\n{table_md}{end}", text, flags=re.S)
    DOC.write_text(new)


SECTIONS = ("utility", "unreliable", "consensus", "deep", "sklearn", "conditioning",
            "variants")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seeds", type=int, default=20, help="seeds of the utility table (20)")
    ap.add_argument("--unreliable-seeds", type=int, default=50,
                    help="seeds of the unreliable-participant tables (50)")
    ap.add_argument("--quick", action="store_true", help="2 seeds everywhere (smoke)")
    ap.add_argument("--jobs", type=int, default=1, help="worker processes (default 1)")
    ap.add_argument("--only", default=",".join(SECTIONS),
                    help="comma-separated sections to (re)measure; the others are read from "
                         f"{DATA.relative_to(ROOT)} (default: all)")
    ap.add_argument("--write-docs", action="store_true",
                    help=f"rewrite the tables of {DOC.relative_to(ROOT)}, the plot and "
                         f"{DATA.relative_to(ROOT)}")
    args = ap.parse_args(argv)
    only = [s.strip() for s in args.only.split(",") if s.strip()]
    bad = sorted(set(only) - set(SECTIONS))
    if bad:
        ap.error(f"--only: unknown section(s) {bad}; choose from {list(SECTIONS)}")
    n_util = 2 if args.quick else args.seeds
    n_unrel = 2 if args.quick else args.unreliable_seeds
    t0 = time.perf_counter()
    log = lambda s: print(f"[{time.perf_counter() - t0:6.0f}s] {s}", flush=True)  # noqa: E731
    results: dict = {"seeds": {}, "wall_s": {}}
    if "utility" in only:
        seeds = list(range(n_util))
        results["seeds"]["utility"] = seeds
        results["seeds"]["references"] = seeds[:3]
        results["utility"], results["references"] = {}, {}
        t = time.perf_counter()
        for dataset in DATASETS:
            log(f"utility against ε: {dataset}")
            results["utility"][dataset] = utility_table(dataset, seeds, args.jobs, log)
            log(f"non-private references: {dataset}")
            results["references"][dataset] = nonprivate_references(dataset, seeds[:3])
        results["wall_s"]["utility"] = time.perf_counter() - t
    if "utility" in only or "sklearn" in only:
        # per seed, on the utility seeds' own splits (cheap: scikit-learn only)
        seeds = list(range(n_util))
        results["seeds"]["sklearn"] = seeds
        results.setdefault("sklearn", {})
        for dataset in DATASETS:
            results["sklearn"][dataset] = sklearn_references(dataset, seeds)
    if "unreliable" in only:
        seeds = list(range(n_unrel))
        results["seeds"]["unreliable"] = seeds
        results["unreliable"] = {}
        t = time.perf_counter()
        for eps in (10.0, math.inf):
            results["unreliable"][eps_label(eps)] = {}
            for dataset in DATASETS:
                log(f"unreliable participants: {dataset}, ε = {eps_label(eps)}")
                results["unreliable"][eps_label(eps)][dataset] = unreliable_table(
                    dataset, seeds, eps, args.jobs, log)
        results["wall_s"]["unreliable"] = time.perf_counter() - t
    if "consensus" in only:
        seeds = list(range(min(n_util, 10)))
        results["seeds"]["consensus"] = seeds
        t = time.perf_counter()
        results["consensus"] = {d: {eps_label(e): consensus(d, seeds, e)
                                    for e in (10.0, math.inf)} for d in DATASETS}
        log("consensus tolerance measured")
        results["wall_s"]["consensus"] = time.perf_counter() - t
    if "variants" in only:
        seeds = list(range(n_unrel))
        results["seeds"]["variants"] = seeds
        t = time.perf_counter()
        results["variants"] = acceptance_variants(seeds, 10.0, args.jobs)
        results["wall_s"]["variants"] = time.perf_counter() - t
    if "conditioning" in only:
        seeds = list(range(min(n_util, 10)))
        results["seeds"]["conditioning"] = seeds
        t = time.perf_counter()
        results["conditioning"] = {"breast_cancer": {"∞": conditioning("breast_cancer", seeds,
                                                                       math.inf)}}
        log("conditioning measured")
        results["wall_s"]["conditioning"] = time.perf_counter() - t
    if "deep" in only:
        t = time.perf_counter()
        results["deep"] = {}
        for dataset in ("digits", "fashion_mnist"):
            log(f"deep mode: {dataset}")
            hidden, public = (32, 100) if dataset == "digits" else (64, 1000)
            results["deep"][dataset] = deep_table(dataset, list(range(2 if args.quick else 3)),
                                                  log, hidden=hidden, public=public)
        results["wall_s"]["deep"] = time.perf_counter() - t
    results["when"] = time.strftime("%Y-%m-%d")
    results["environment"] = R.environment()
    results["jobs"] = args.jobs
    if args.write_docs and DATA.exists() and set(only) != set(SECTIONS):
        # the sections not measured now come from the stored per-seed values
        stored = json.loads(DATA.read_text())
        for key in ("seeds", "wall_s"):
            results[key] = {**stored.get(key, {}), **results[key]}
        for sec in SECTIONS:
            if sec not in only and sec in stored:
                results[sec] = stored[sec]
                if sec == "utility":
                    results["references"] = stored["references"]
    results["wall"] = ", ".join(f"{k} {v:.0f} s" for k, v in results["wall_s"].items()) + \
        " wall time"
    md = markdown(results)
    print(md)
    if args.write_docs:
        DATA.parent.mkdir(parents=True, exist_ok=True)
        DATA.write_text(json.dumps(results, indent=1, ensure_ascii=False))
        write_docs(md)
        if "utility" in results and "unreliable" in results:
            plot(results, PLOT)
        log(f"wrote {DOC.relative_to(ROOT)}, {PLOT.relative_to(ROOT)}, "
            f"{DATA.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
