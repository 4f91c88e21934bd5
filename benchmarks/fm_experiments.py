"""Experiments of the functional-mechanism protocol (``protocol = "fm"``).

Produces the tables and the plot of ``docs/experiments/functional_mechanism.md``:

1. accuracy (breast cancer) and RMSE (diabetes) against ε for collaborative FM (spec Δ and our
   ``l2`` Δ), next to centralized FM at the same ε, the non-private collaborative model (FM
   without noise, and FedAvg on the same linear model) and centralized non-private models
   (``centralized`` protocol, scikit-learn);
2. 0–50 % label-flipped participants: plain averaging vs quality-weighted aggregation, and the
   recovered fraction ``(mitigated − plain) / (clean − plain)``;
3. deep mode (``--deep``): hidden layers pre-trained on the server's public rows, FM on the
   output layer (digits; Fashion-MNIST when it is installed).

Every collaborative number is a full simulated run (``crowdlearn.experiment.Simulation``, 10 devices,
always online) averaged over seeds; linear runs are evaluated with the numpy
``LinearEvaluator`` (same metrics as ``FleetTrainer``).

Usage::

    .venv/bin/python benchmarks/fm_experiments.py                 # all tables, 10 seeds (~10 min)
    .venv/bin/python benchmarks/fm_experiments.py --quick         # 2 seeds, smoke
    .venv/bin/python benchmarks/fm_experiments.py --write-docs    # + rewrite the doc's tables/plot
"""

from __future__ import annotations

import argparse
import math
import os
import re
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

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


def mean_sd(values):
    a = np.asarray(values, float)
    return float(a.mean()), float(a.std(ddof=1)) if a.size > 1 else 0.0


def fmt(ms, digits=3):
    m, s = ms
    return f"{m:.{digits}f} ± {s:.{digits}f}"


def eps_label(e):
    return "∞" if math.isinf(e) else f"{e:g}"


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
            out[eps, bound] = metric
    return out


def nonprivate_references(dataset, seeds):
    """FedAvg and the centralized protocol (TensorFlow, linear model) and scikit-learn."""
    from sklearn.linear_model import LinearRegression, LogisticRegression

    from crowdlearn.data import load_dataset
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
        out[proto] = mean_sd(vals)
    ds = load_dataset(dataset, seed=0)
    if key == "accuracy":
        m = LogisticRegression(max_iter=5000).fit(ds.x_train, ds.y_train)
        out["sklearn"] = (float(np.mean(m.predict(ds.x_test) == ds.y_test)), 0.0)
    else:
        m = LinearRegression().fit(ds.x_train, ds.y_train)
        out["sklearn"] = (float(np.sqrt(np.mean((m.predict(ds.x_test) - ds.y_test) ** 2))), 0.0)
    out["predict_mean"] = (float(np.sqrt(np.mean((ds.y_test - ds.y_train.mean()) ** 2))), 0.0) \
        if key == "rmse" else (float(max(np.mean(ds.y_test == c) for c in (0, 1))), 0.0)
    return out


def utility_table(dataset, seeds, log):
    rows = []
    central = [centralized_fm(dataset, s) for s in seeds]
    for eps in EPSILONS:
        row = {"epsilon": eps}
        for bound in ("spec", "l2"):
            runs = [fm_run(dataset, s, fm_opts={"epsilon": eps, "bound": bound})
                    for s in seeds]
            row[f"collab_{bound}"] = mean_sd([m for m, _ in runs])
            row[f"oneshot_{bound}"] = mean_sd([sim.first for _, sim in runs])
            row[f"central_{bound}"] = mean_sd([c[eps, bound] for c in central])
        log(f"  {dataset} ε={eps_label(eps)}: " + ", ".join(
            f"{k} {v[0]:.3f}" for k, v in row.items() if k != "epsilon"))
        rows.append(row)
    return rows


# ---------------------------------------------------------------- 2. unreliable participants
def unreliable_table(dataset, seeds, eps, log):
    rows = []
    for frac in FRACTIONS:
        q = {"fraction": frac, "kind": "label_flip"}
        plain = [fm_run(dataset, s, fm_opts={"epsilon": eps, "bound": "l2"}, quality=q)[0]
                 for s in seeds]
        mitig = [fm_run(dataset, s, fm_opts={"epsilon": eps, "bound": "l2",
                                             "aggregation": "quality"}, quality=q)[0]
                 for s in seeds]
        exact = [fm_run(dataset, s, fm_opts={"epsilon": eps, "bound": "l2",
                                             "aggregation": "quality",
                                             "score_epsilon": math.inf}, quality=q)[0]
                 for s in seeds]
        rows.append({"fraction": frac, "plain": mean_sd(plain), "mitigated": mean_sd(mitig),
                     "exact": mean_sd(exact)})
        log(f"  {dataset} ε={eps_label(eps)} {frac:.0%}: plain {np.mean(plain):.3f} "
            f"mitigated {np.mean(mitig):.3f} exact scores {np.mean(exact):.3f}")
    clean = rows[0]["plain"][0]
    for r in rows:
        gap = clean - r["plain"][0]
        r["recovered"] = (r["mitigated"][0] - r["plain"][0]) / gap if abs(gap) > 1e-9 else None
    return rows


# ---------------------------------------------------------------- 3. deep mode
def deep_table(dataset, seeds, log, hidden=32, public=100, epsilons=(1.0, 10.0, 100.0,
                                                                       math.inf)):
    from crowdlearn.data import fashion_mnist_available
    if dataset == "fashion_mnist" and not fashion_mnist_available():
        return None
    rows = []
    pretrained = []
    for eps in epsilons:
        row = {"epsilon": eps}
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
            row[bound] = mean_sd(vals)
        log(f"  deep {dataset} ε={eps_label(eps)}: spec {row['spec'][0]:.3f} "
            f"l2 {row['l2'][0]:.3f}")
        rows.append(row)
    return {"rows": rows, "pretrained": mean_sd(pretrained), "hidden": hidden,
            "public": public}


# ---------------------------------------------------------------- output
def markdown(results) -> str:
    out = []
    ref = results["references"]
    for dataset, key in DATASETS.items():
        name = "Breast cancer — accuracy" if key == "accuracy" else "Diabetes — RMSE " \
            "(standardised target; lower is better)"
        out.append(f"#### {name}\n")
        out.append("| ε | collaborative FM, spec Δ | collaborative FM, l2 Δ [ours] | "
                   "one-shot average (round 0), l2 Δ | centralized FM, spec Δ | "
                   "centralized FM, l2 Δ [ours] |")
        out.append("| --- | --- | --- | --- | --- | --- |")
        for r in results["utility"][dataset]:
            out.append(f"| {eps_label(r['epsilon'])} | {fmt(r['collab_spec'])} | "
                       f"{fmt(r['collab_l2'])} | {fmt(r['oneshot_l2'])} | "
                       f"{fmt(r['central_spec'])} | {fmt(r['central_l2'])} |")
        rr = ref[dataset]
        out.append("")
        out.append("| non-private reference | " + key + " |")
        out.append("| --- | --- |")
        out.append(f"| collaborative FM without noise (ε = ∞ row) | "
                   f"{fmt(results['utility'][dataset][-1]['collab_l2'])} |")
        out.append(f"| collaborative FedAvg, same linear model ({ROUNDS} rounds, SGD; 3 seeds) | "
                   f"{fmt(rr['fedavg'])} |")
        out.append(f"| centralized SGD (`centralized` protocol, {ROUNDS} epochs; 3 seeds) | "
                   f"{fmt(rr['centralized'])} |")
        sk = "LogisticRegression" if key == "accuracy" else "LinearRegression"
        out.append(f"| centralized scikit-learn {sk} (all training rows) | "
                   f"{rr['sklearn'][0]:.3f} |")
        triv = "majority class" if key == "accuracy" else "predict the training mean"
        out.append(f"| trivial: {triv} | {rr['predict_mean'][0]:.3f} |")
        out.append("")
    for eps_key, rows_by_ds in results["unreliable"].items():
        for dataset, key in DATASETS.items():
            rows = rows_by_ds[dataset]
            out.append(f"#### Label-flipped participants — {dataset}, ε = {eps_key} "
                       f"(l2 Δ), {key}\n")
            out.append("| unreliable | plain averaging | quality-weighted [ours] | "
                       "lost by plain | recovered | quality-weighted, exact scores |")
            out.append("| --- | --- | --- | --- | --- | --- |")
            clean = rows[0]["plain"][0]
            for r in rows:
                rec = "—" if r["recovered"] is None or r["fraction"] == 0 else \
                    f"{r['recovered']:.0%}"
                sign = 1 if key == "accuracy" else -1
                lost = "—" if r["fraction"] == 0 else f"{sign * (clean - r['plain'][0]):+.3f}"
                out.append(f"| {r['fraction']:.0%} | {fmt(r['plain'])} | "
                           f"{fmt(r['mitigated'])} | {lost} | {rec} | {fmt(r['exact'])} |")
            out.append("")
    for dataset, d in (results.get("deep") or {}).items():
        if d is None:
            continue
        out.append(f"#### Deep mode — {dataset}, accuracy (MLP, one tanh hidden layer of "
                   f"{d['hidden']}, pre-trained on {d['public']} public rows; 5 rounds)\n")
        out.append("| ε | FM output layer, spec Δ | FM output layer, l2 Δ [ours] |")
        out.append("| --- | --- | --- |")
        for r in d["rows"]:
            out.append(f"| {eps_label(r['epsilon'])} | {fmt(r['spec'])} | {fmt(r['l2'])} |")
        out.append(f"\nThe pre-trained network alone (the server's {d['public']} public rows, "
                   f"no participant data): {fmt(d['pretrained'])}.\n")
    out.append(f"_Measured {results['when']} in {results['wall_s']:.0f} s wall time; "
               f"{results['seeds']} seeds per cell (mean ± sd)._")
    return "\n".join(out) + "\n"


def plot(results, path: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(2, 2, figsize=(11, 8))
    xs = np.arange(len(EPSILONS))
    for col, (dataset, key) in enumerate(DATASETS.items()):
        ax = axes[0, col]
        rows = results["utility"][dataset]
        for label, k, style in (("collaborative FM, spec Δ", "collab_spec", "o-"),
                                ("collaborative FM, l2 Δ", "collab_l2", "s-"),
                                ("centralized FM, l2 Δ", "central_l2", "^--")):
            m = np.array([r[k][0] for r in rows])
            s = np.array([r[k][1] for r in rows])
            ax.errorbar(xs, m, yerr=s, fmt=style, capsize=3, label=label)
        ref = results["references"][dataset]
        ax.axhline(ref["fedavg"][0], color="grey", ls=":", label="FedAvg (non-private)")
        ax.axhline(ref["sklearn"][0], color="k", ls="-.", lw=0.8,
                   label="centralized sklearn (non-private)")
        ax.set_xticks(xs, [eps_label(e) for e in EPSILONS])
        ax.set_xlabel("ε per participant")
        ax.set_ylabel(key)
        ax.set_title(f"{dataset}: {key} against ε")
        ax.legend(fontsize=7)
        ax = axes[1, col]
        for eps_key, color in zip(results["unreliable"], ("C0", "C3"), strict=False):
            rows = results["unreliable"][eps_key][dataset]
            fr = [100 * r["fraction"] for r in rows]
            ax.plot(fr, [r["plain"][0] for r in rows], "o--", color=color,
                    label=f"plain, ε = {eps_key}")
            ax.plot(fr, [r["mitigated"][0] for r in rows], "s-", color=color,
                    label=f"quality-weighted, ε = {eps_key}")
        ax.set_xlabel("label-flipped participants (%)")
        ax.set_ylabel(key)
        ax.set_title(f"{dataset}: unreliable participants")
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


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seeds", type=int, default=10, help="seeds per cell (default 10)")
    ap.add_argument("--quick", action="store_true", help="2 seeds (smoke)")
    ap.add_argument("--no-deep", action="store_true", help="skip the deep-mode table")
    ap.add_argument("--write-docs", action="store_true",
                    help=f"rewrite the tables of {DOC.relative_to(ROOT)} and the plot")
    args = ap.parse_args(argv)
    n = 2 if args.quick else args.seeds
    seeds = list(range(n))
    t0 = time.perf_counter()
    log = lambda s: print(f"[{time.perf_counter() - t0:6.0f}s] {s}", flush=True)  # noqa: E731
    results = {"seeds": n, "utility": {}, "references": {}, "unreliable": {}, "deep": {}}
    for dataset in DATASETS:
        log(f"utility against ε: {dataset}")
        results["utility"][dataset] = utility_table(dataset, seeds, log)
        log(f"non-private references: {dataset}")
        results["references"][dataset] = nonprivate_references(dataset, seeds[:3])
    for eps in (10.0, math.inf):
        key = eps_label(eps)
        results["unreliable"][key] = {}
        for dataset in DATASETS:
            log(f"unreliable participants: {dataset}, ε = {key}")
            results["unreliable"][key][dataset] = unreliable_table(dataset, seeds, eps, log)
    if not args.no_deep:
        for dataset in ("digits", "fashion_mnist"):
            log(f"deep mode: {dataset}")
            hidden, public = (32, 100) if dataset == "digits" else (64, 1000)
            results["deep"][dataset] = deep_table(dataset, seeds[:3], log, hidden=hidden,
                                                  public=public)
    results["wall_s"] = time.perf_counter() - t0
    results["when"] = time.strftime("%Y-%m-%d")
    md = markdown(results)
    print(md)
    if args.write_docs:
        write_docs(md)
        plot(results, PLOT)
        log(f"wrote {DOC.relative_to(ROOT)} and {PLOT.relative_to(ROOT)}")
    for dataset in DATASETS:
        for eps_key, rows in results["unreliable"].items():
            r30 = next(r for r in rows[dataset] if abs(r["fraction"] - 0.3) < 1e-9)
            rec = r30["recovered"]
            print(f"acceptance {dataset} ε={eps_key}: recovered at 30% = "
                  f"{'n/a' if rec is None else f'{rec:.0%}'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
