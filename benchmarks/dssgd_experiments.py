"""Experiments of distributed selective SGD (``protocol = "dssgd"``, Shokri & Shmatikov 2015).

Produces ``docs/experiments/dssgd.md`` from the per-seed values in
``docs/experiments/data/dssgd.csv`` (one row per dataset, setting and seed; the doc is rendered
from it, never edited by hand).  Every row is one full simulated run
(``crowdlearn.experiment.Simulation``), MLP input-128-64-10, 30 participants (iid), batch 32,
lr 0.05, γ = 0.05, θd = 1, top-k selection unless the setting says otherwise:

* ``centralized`` (one model on the union of the participants' data) and ``standalone`` (each
  participant alone; the mean of the 30 models), ``R`` epochs;
* the three orders of access (round robin, random order, asynchronous) × θu ∈ {1, 0.1, 0.01};
* round robin θu = 0.1 with the sparse vector technique (clipped release) at ε_p = 1 and 10;
* the asynchronous study: γ = 0.005, lr = 0.01, and 5 or 10 participants (the first 5 / 10 of the
  30 shards, so each keeps its data), beside round robin on the same 5 / 10.

``R`` (``--rounds``) is the number of epochs per participant (DSSGD) or of epochs (baselines).
Runs are batched per process (one TensorFlow graph per model shape) and appended to the CSV as
they finish, so an interrupted measurement resumes where it stopped.

Usage::

    nice -n 10 .venv/bin/python benchmarks/dssgd_experiments.py --dataset digits --rounds 10 \\
        --seeds 0-9                                   # measure (appends to the CSV)
    .venv/bin/python benchmarks/dssgd_experiments.py --write-docs    # render the doc from the CSV
    .venv/bin/python benchmarks/dssgd_experiments.py --audit-only --write-docs   # auditor table
"""

from __future__ import annotations

import argparse
import csv
import os
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import results_doc as R  # noqa: E402
from crowdlearn.config import from_dict  # noqa: E402

DOC = ROOT / "docs" / "experiments" / "dssgd.md"
DATA = ROOT / "docs" / "experiments" / "data" / "dssgd.csv"
DEVICES = 30
LR = 0.05
BATCH = 32
GAMMA = 0.05
ORDERS = ("round_robin", "random_order", "asynchronous")
THETAS = (1.0, 0.1, 0.01)
DP_EPSILONS = (1.0, 10.0)
RELEASES = ("clipped", "paper")
AUDIT_BEGIN = "<!-- BEGIN MEASURED AUDIT (benchmarks/dssgd_experiments.py --audit-only) -->"
AUDIT_END = "<!-- END MEASURED AUDIT -->"
BEGIN, END = "<!-- BEGIN MEASURED (benchmarks/dssgd_experiments.py) -->", "<!-- END MEASURED -->"
AUDIT_VALUES = (0.05, 0.1, 0.166, 0.5, 1.0)
AUDIT_TRIALS = 100_000
#: a claim needs at least this many paired seeds
MIN_SEEDS = 10
FIELDS = ("dataset", "setting", "seed", "rounds", "devices", "final", "best", "bytes_up",
          "bytes_down", "sim_s", "energy_device_mean_j", "energy_device_max_j",
          "flops_device_mean", "epsilon", "staleness_mean", "staleness_median", "staleness_max",
          "fraction_at_gamma", "completed", "cpu_s", "wall_s")


def short(t: float) -> str:
    return f"{t:g}"


def settings() -> dict[str, dict]:
    """Setting name → what it changes: ``protocol``, ``dssgd`` options, ``devices``."""
    out: dict[str, dict] = {"centralized": {"protocol": "centralized"},
                            "standalone": {"protocol": "standalone"}}
    for o in ORDERS:
        for t in THETAS:
            out[f"{o} θu={short(t)}"] = {"dssgd": {"order": o, "theta_u": t}}
    for e in DP_EPSILONS:
        out[f"round_robin θu=0.1 DP ε_p={short(e)}"] = {
            "dssgd": {"theta_u": 0.1, "dp": True, "epsilon": e, "release": "clipped"}}
    out["asynchronous θu=0.1 γ=0.005"] = {"dssgd": {"order": "asynchronous", "theta_u": 0.1,
                                                     "gamma": 0.005}}
    out["asynchronous θu=0.1 lr=0.01"] = {"dssgd": {"order": "asynchronous", "theta_u": 0.1,
                                                     "lr": 0.01}}
    for n in (5, 10):
        for o in ("asynchronous", "round_robin"):
            out[f"{o} θu=0.1 N={n}"] = {"dssgd": {"order": o, "theta_u": 0.1}, "devices": n}
    return out


def config(dataset: str, setting: dict, rounds: int, seed: int, devices: int):
    protocol = setting.get("protocol", "dssgd")
    raw = {"protocol": protocol, "rounds": rounds, "seed": seed, "name": protocol,
           "data": {"dataset": dataset, "partition": "iid"},
           "model": {"arch": "mlp", "hidden": [128, 64]},
           "fleet": {"devices": devices, "cells": 3}}
    if protocol in ("centralized", "standalone"):
        raw["fedavg"] = {"local_epochs": 1, "batch_size": BATCH, "lr": LR}
    else:
        raw["dssgd"] = {"order": "round_robin", "theta_d": 1.0, "selection": "topk",
                        "gamma": GAMMA, "local_epochs": 1, "batch_size": BATCH, "lr": LR,
                        **setting["dssgd"]}
    return from_dict(raw)


def shards(dataset, seed: int) -> list[np.ndarray]:
    """The 30 iid shards a 30-device run of this seed gets (the same data stream)."""
    from crowdlearn.data.partition import partition
    from crowdlearn.experiment import STREAMS

    child = np.random.SeedSequence(seed).spawn(len(STREAMS))[STREAMS.index("data")]
    return partition(dataset.y_train, DEVICES, method="iid", rng=np.random.default_rng(child))


def run_one(dataset_name: str, name: str, setting: dict, rounds: int, seed: int, ds) -> dict:
    from crowdlearn.experiment import Simulation

    n = setting.get("devices", DEVICES)
    cfg = config(dataset_name, setting, rounds, seed, n)
    parts = shards(ds, seed)[:n] if n != DEVICES else None
    t0, c0 = time.perf_counter(), time.process_time()
    sim = Simulation(cfg, dataset=ds, parts=parts)
    res = sim.run()
    s = res.summary
    energy = [d["energy_j"] for d in res.devices]
    flops = [d["flops"] for d in res.devices]
    row = {"dataset": dataset_name, "setting": name, "seed": seed, "rounds": rounds,
           "devices": n, "final": s["final_accuracy"], "best": s["best_accuracy"],
           "bytes_up": s["bytes_up"], "bytes_down": s["bytes_down"], "sim_s": s["sim_time_s"],
           "energy_device_mean_j": float(np.mean(energy)),
           "energy_device_max_j": float(np.max(energy)),
           "flops_device_mean": float(np.mean(flops)), "epsilon": s.get("epsilon"),
           "staleness_mean": s.get("staleness_mean"), "staleness_median": s.get("staleness_median"),
           "staleness_max": s.get("staleness_max"),
           "fraction_at_gamma": s.get("upload_fraction_at_gamma"), "completed": s["completed"],
           "cpu_s": time.process_time() - c0, "wall_s": time.perf_counter() - t0}
    print(f"{dataset_name} seed {seed} {name:36s} final {row['final']:.4f} best {row['best']:.4f}"
          f" staleness {row['staleness_mean']} at γ {row['fraction_at_gamma']} "
          f"cpu {row['cpu_s']:.1f} s", flush=True)
    return row


def load_rows() -> list[dict]:
    if not DATA.exists():
        return []
    with DATA.open() as f:
        rows = list(csv.DictReader(f))
    num = set(FIELDS) - {"dataset", "setting", "completed"}
    for r in rows:
        for k in num:
            r[k] = float(r[k]) if r.get(k) not in (None, "", "None") else None
        r["seed"], r["rounds"], r["devices"] = int(r["seed"]), int(r["rounds"]), int(r["devices"])
    return rows


def append_row(row: dict) -> None:
    DATA.parent.mkdir(parents=True, exist_ok=True)
    new = not DATA.exists()
    with DATA.open("a", newline="") as f:
        w = csv.DictWriter(f, fieldnames=FIELDS)
        if new:
            w.writeheader()
        w.writerow({k: row[k] for k in FIELDS})


def parse_seeds(text: str) -> list[int]:
    out: list[int] = []
    for part in text.split(","):
        a, _, b = part.partition("-")
        out += list(range(int(a), int(b) + 1)) if b else [int(a)]
    return out


def measure(dataset_name: str, rounds: int, seeds: list[int], only: list[str] | None,
            exact: list[str] | None = None) -> None:
    """Run the grid's missing rows: seed by seed, or (``exact``: setting names in priority
    order) setting by setting, so that the first settings reach every seed first."""
    from crowdlearn.data import load_dataset

    plan = settings()
    if exact:
        bad = [n for n in exact if n not in plan]
        if bad:
            raise SystemExit(f"--setting: unknown {bad}; choose from {list(plan)}")
        cells = [(seed, n) for n in exact for seed in seeds]
    else:
        names = [k for k in plan if only is None or any(o in k for o in only)]
        cells = [(seed, n) for seed in seeds for n in names]
    cache: dict = {}
    for seed, name in cells:
        # re-read before each run: another process may measure the same grid
        done = {(r["dataset"], r["setting"], r["seed"], r["rounds"]) for r in load_rows()}
        if (dataset_name, name, seed, rounds) in done:
            continue
        if seed not in cache:
            cache.clear()
            cache[seed] = load_dataset(dataset_name, seed=seed)
        append_row(run_one(dataset_name, name, plan[name], rounds, seed, cache[seed]))


# ---------------------------------------------------------------- rendering
DATASET_NAMES = {"fashion_mnist": "Fashion-MNIST", "digits": "digits (scikit-learn, 8×8)"}


def by_setting(rows: list[dict], dataset: str) -> tuple[dict, int]:
    """``{setting: {seed: row}}`` of the dataset's most measured ``rounds``; that ``rounds``."""
    rows = [r for r in rows if r["dataset"] == dataset and r["completed"] == "True"]
    if not rows:
        return {}, 0
    counts: dict[int, int] = {}
    for r in rows:
        counts[r["rounds"]] = counts.get(r["rounds"], 0) + 1
    rounds = max(counts, key=counts.get)
    out: dict = {}
    for r in rows:
        if r["rounds"] == rounds:
            out.setdefault(r["setting"], {})[r["seed"]] = r
    return out, rounds


def col(d: dict, setting: str, key: str, scale: float = 1.0) -> list[float]:
    return [None if r[key] is None else r[key] * scale for _, r in sorted(d.get(setting, {}).items())]


def pair(d: dict, a: str, b: str, key: str = "final") -> dict | None:
    """Paired ``a − b`` over the seeds both settings have (accuracy in points)."""
    seeds = sorted(set(d.get(a, {})) & set(d.get(b, {})))
    if len(seeds) < 2:
        return None
    return R.paired([100 * d[a][s][key] for s in seeds], [100 * d[b][s][key] for s in seeds])


def main_table(d: dict) -> list[str]:
    head = ("| setting | seeds | final accuracy % | best accuracy % | MB up | MB down | "
            "energy per device, mean J | energy, busiest device J | simulated time s | "
            "composed ε (δ = 1e-5) |")
    out = [head, "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    names = ["centralized", *[f"{o} θu={short(t)}" for o in ORDERS for t in THETAS],
             *[f"round_robin θu=0.1 DP ε_p={short(e)}" for e in DP_EPSILONS], "standalone"]
    for n in names:
        if n not in d:
            continue
        eps = col(d, n, "epsilon")
        out.append(f"| {n} | {len(d[n])} | {R.cell(col(d, n, 'final', 100), 2)} | "
                   f"{R.cell(col(d, n, 'best', 100), 2)} | {R.cell(col(d, n, 'bytes_up', 1e-6), 2)} | "
                   f"{R.cell(col(d, n, 'bytes_down', 1e-6), 2)} | "
                   f"{R.cell(col(d, n, 'energy_device_mean_j'), 2)} | "
                   f"{R.cell(col(d, n, 'energy_device_max_j'), 2)} | "
                   f"{R.cell(col(d, n, 'sim_s'), 0)} | "
                   f"{'—' if not any(e is not None for e in eps) else R.cell(eps, 0)} |")
    return out


def claim_row(name: str, d: dict, a: str, b: str, *, within: float | None = None) -> str:
    """One paired comparison (points of final accuracy) and its verdict."""
    c = pair(d, a, b)
    if c is None:
        return f"| {name} | — | — | not measured |"
    if c["n"] < MIN_SEEDS:
        return f"| {name} | {c['n']} | {R.fmt_paired(c, 2)} | not claimed (< {MIN_SEEDS} seeds) |"
    if within is None:
        v = R.verdict(c)
    else:   # "≈": the whole interval inside ±within points
        v = (f"holds (within ±{within:g})" if -within <= c["lo"] and c["hi"] <= within
             else f"not shown (interval leaves ±{within:g})")
    return f"| {name} | {c['n']} | {R.fmt_paired(c, 2)} | {v} |"


def claims_table(d: dict) -> list[str]:
    out = ["| claim (final accuracy, points) | seeds | paired difference [95 %], p | verdict |",
           "|---|---:|---|---|"]
    for o in ORDERS:
        def t(x, o=o):
            return f"{o} θu={short(x)}"
        out += [claim_row(f"{o}: centralized > θu = 100 %", d, "centralized", t(1.0)),
                claim_row(f"{o}: θu = 100 % ≈ θu = 10 %", d, t(1.0), t(0.1), within=1.0),
                claim_row(f"{o}: θu = 10 % > θu = 1 %", d, t(0.1), t(0.01)),
                claim_row(f"{o}: θu = 1 % > standalone", d, t(0.01), "standalone")]
    out.append(claim_row("random order ≈ round robin (θu = 10 %)", d, "random_order θu=0.1",
                         "round_robin θu=0.1", within=1.0))
    out += [claim_row(name, d, a, b) for name, a, b in OTHER_CLAIMS]
    return out


#: (claim, setting a, setting b): "a > b", paired over seeds
OTHER_CLAIMS = (
    ("round robin > asynchronous (θu = 10 %)", "round_robin θu=0.1", "asynchronous θu=0.1"),
    ("DP: ε_p = 10 > ε_p = 1", "round_robin θu=0.1 DP ε_p=10", "round_robin θu=0.1 DP ε_p=1"),
    ("no DP > DP ε_p = 10", "round_robin θu=0.1", "round_robin θu=0.1 DP ε_p=10"))
#: (claim, a, b): "a > b", paired over seeds
ASYNC_CLAIMS = (
    ("round robin > asynchronous, 30 participants", "round_robin θu=0.1", "asynchronous θu=0.1"),
    ("round robin > asynchronous, 10 participants", "round_robin θu=0.1 N=10",
     "asynchronous θu=0.1 N=10"),
    ("round robin > asynchronous, 5 participants", "round_robin θu=0.1 N=5",
     "asynchronous θu=0.1 N=5"),
    ("asynchronous: γ = 0.005 > γ = 0.05", "asynchronous θu=0.1 γ=0.005", "asynchronous θu=0.1"),
    ("asynchronous: lr = 0.01 > lr = 0.05", "asynchronous θu=0.1 lr=0.01", "asynchronous θu=0.1"),
    ("round robin > asynchronous with γ = 0.005", "round_robin θu=0.1",
     "asynchronous θu=0.1 γ=0.005"))


ASYNC_ROWS = ("round_robin θu=0.1", "asynchronous θu=0.1", "asynchronous θu=0.1 γ=0.005",
              "asynchronous θu=0.1 lr=0.01", "round_robin θu=0.1 N=10",
              "asynchronous θu=0.1 N=10", "round_robin θu=0.1 N=5", "asynchronous θu=0.1 N=5")


def async_table(d: dict) -> list[str]:
    out = ["| setting | participants | seeds | final accuracy % | best accuracy % | staleness mean |"
           " staleness median | staleness max | uploaded values at ±γ % |",
           "|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for n in ASYNC_ROWS:
        if n not in d:
            continue
        dev = int(next(iter(d[n].values()))["devices"])
        out.append(f"| {n.replace(' N=', ', N = ')} | {dev} | {len(d[n])} | "
                   f"{R.cell(col(d, n, 'final', 100), 2)} | {R.cell(col(d, n, 'best', 100), 2)} | "
                   f"{R.cell(col(d, n, 'staleness_mean'), 1)} | "
                   f"{R.cell(col(d, n, 'staleness_median'), 1)} | "
                   f"{R.cell(col(d, n, 'staleness_max'), 1)} | "
                   f"{R.cell(col(d, n, 'fraction_at_gamma', 100), 2)} |")
    out += ["", "| claim (final accuracy, points) | seeds | paired difference [95 %], p | "
            "verdict |", "|---|---:|---|---|"]
    out += [claim_row(name, d, a, b) for name, a, b in ASYNC_CLAIMS]
    return out


def seeds_arg(seeds) -> str:
    """``0-9`` or ``0,3,5``: the ``--seeds`` value that measures these seeds."""
    return R.seeds_text(seeds).replace("–", "-").replace(", ", ",")


def render(rows: list[dict]) -> str:
    out = [BEGIN]
    seeds_all, cpu = set(), 0.0
    for ds in ("fashion_mnist", "digits"):
        d, rounds = by_setting(rows, ds)
        if not d:
            continue
        seeds = sorted({s for v in d.values() for s in v})
        seeds_all |= set(seeds)
        cpu += sum(r["cpu_s"] or 0 for v in d.values() for r in v.values())
        out += [f"### {DATASET_NAMES[ds]}: R = {rounds} epochs per participant, seeds "
                f"{R.seeds_text(seeds)}", "",
                f"Command: `nice -n 10 .venv/bin/python benchmarks/dssgd_experiments.py "
                f"--dataset {ds} --rounds {rounds} --seeds {seeds_arg(seeds)}`"
                f", then `--write-docs`.", "", "#### Accuracy, traffic, energy", "",
                *main_table(d), "", "#### The spec's ordering and the other claims, paired over "
                "seeds", "", *claims_table(d), "", "#### The asynchronous order: staleness",
                "", *async_table(d), ""]
    out += [f"_Each cell: mean ± half-width of the 95 % Student-t interval over the seeds; paired "
            f"differences: mean [95 % interval] of the per-seed differences, paired t-test p; "
            f"'holds' = the interval lies above 0, 'fails' = below, 'not shown' = it contains 0. "
            f"Per-seed values: `{DATA.relative_to(ROOT)}`. Measured {time.strftime('%Y-%m-%d')}, "
            f"{cpu / 60:.0f} CPU min in all. {R.environment()} A rerun on another machine "
            f"(BLAS, thread count, TensorFlow build) may change single runs in the last digits "
            f"through floating-point order; the intervals, not the digits, are the result._",
            END]
    return "\n".join(out)


# ---------------------------------------------------------------- the auditor (no training)
def audit_rows(seed: int) -> list[dict]:
    """The auditor on the one-value SVT of a DSSGD turn (ε_p = 1, γ = 0.05), neighbours ±v."""
    from crowdlearn.protocols.dssgd import DSSGDParams, audit_release

    out = []
    for release in RELEASES:
        for v in AUDIT_VALUES:
            p = DSSGDParams(rounds=1, dp=True, epsilon=1.0, gamma=GAMMA, release=release)
            r = audit_release(p, v, rng=np.random.default_rng(seed), trials=AUDIT_TRIALS)
            out.append({"release": release, "value": v, "res": r})
            print(f"audit {release:7s} ±{v:<5g}: ε_p ≥ {r.epsilon_lower_bound:.3f} "
                  f"(estimate {r.epsilon_estimate:.3f}, event {r.event})", flush=True)
    return out


def audit_table(rows: list[dict]) -> str:
    out = ["| release | neighbours Δw = ±v | v / γ | ε_p lower bound (95 %) | point estimate | "
           "claimed ε_p | refuted |", "|---|---:|---:|---:|---:|---:|---|"]
    for r in rows:
        a = r["res"]
        out.append(f"| {r['release']} | ±{r['value']:g} | {r['value'] / GAMMA:g} | "
                   f"{a.epsilon_lower_bound:.3f} | {a.epsilon_estimate:.3f} | "
                   f"{a.claimed_epsilon:g} | {'**yes**' if a.refutes_claim else 'no'} |")
    return "\n".join(out)


def replace_block(text: str, begin: str, end: str) -> None:
    doc = DOC.read_text() if DOC.exists() else ""
    if begin in doc and end in doc:
        head, rest = doc.split(begin, 1)
        doc = head + text + rest.split(end, 1)[1]
    else:
        doc = doc + "\n" + text + "\n"
    DOC.write_text(doc)
    print(f"wrote {DOC.relative_to(ROOT)}")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dataset", choices=("digits", "fashion_mnist"),
                    help="measure this dataset (appends to the CSV)")
    ap.add_argument("--rounds", type=int, default=10, help="epochs per participant (default 10)")
    ap.add_argument("--seeds", default="0-9", help="seeds to measure, e.g. 0-9 or 0,3,5")
    ap.add_argument("--only", action="append",
                    help="measure only the settings whose name contains this (repeatable)")
    ap.add_argument("--setting", action="append",
                    help="measure exactly this setting, setting by setting in the order given "
                         "(repeatable; overrides --only)")
    ap.add_argument("--write-docs", action="store_true",
                    help=f"render the measured block of {DOC.relative_to(ROOT)} from "
                         f"{DATA.relative_to(ROOT)}")
    ap.add_argument("--audit-only", action="store_true",
                    help="only the auditor on one released value (both releases)")
    args = ap.parse_args(argv)
    if args.audit_only:
        t0 = time.perf_counter()
        text = audit_table(audit_rows(0))
        print(text)
        if args.write_docs:
            replace_block("\n".join([
                AUDIT_BEGIN,
                "Command: `.venv/bin/python benchmarks/dssgd_experiments.py --audit-only "
                f"--write-docs` — one DSSGD turn's single-value SVT at ε_p = 1, γ = {GAMMA}, "
                f"τ = 1e-3, seed 0, {AUDIT_TRIALS:,} runs per neighbour (a quarter choose the "
                f"event); {(time.perf_counter() - t0) / 60:.1f} min.", "", text, AUDIT_END]),
                AUDIT_BEGIN, AUDIT_END)
        return 0
    if args.dataset:
        measure(args.dataset, args.rounds, parse_seeds(args.seeds), args.only, args.setting)
    if args.write_docs:
        md = render(load_rows())
        replace_block(md, BEGIN, END)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
