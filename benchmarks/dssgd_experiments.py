"""Experiments of distributed selective SGD (``protocol = "dssgd"``, Shokri & Shmatikov 2015).

Produces the table of ``docs/experiments/dssgd.md``.  Every number is one full simulated run
(``crowdlearn.experiment.Simulation``) in this one process, seed 0, Fashion-MNIST, MLP 784-128-64-10,
30 participants (iid, 2,000 samples each), batch 32, the same lr for every run:

* ``centralized`` (one model on the union of the participants' data, ``R`` epochs);
* DSSGD round robin with θu = 1, 0.1, 0.01 (θd = 1, top-k selection, γ clipping);
* ``standalone`` (each participant alone, ``R`` epochs; the mean of the 30 models);
* DSSGD θu = 0.1 with the sparse vector technique at a few ε per parameter, both releases: the
  default clipped one (differentially private) and the paper's as published (nominal ε; the
  auditor's lower bound on the per-parameter ε is reported beside it);
* DSSGD θu = 0.1 with the random and asynchronous orders of access (skip with ``--no-orders``).

``R`` (``--rounds``) is the number of epochs per participant (DSSGD) or of epochs (baselines).

Usage::

    .venv/bin/python benchmarks/dssgd_experiments.py --rounds 10                # print the table
    .venv/bin/python benchmarks/dssgd_experiments.py --rounds 10 --write-docs   # + rewrite the doc
    .venv/bin/python benchmarks/dssgd_experiments.py --rounds 5 --dp-only --write-docs  # DP rows
"""

from __future__ import annotations

import argparse
import math
import os
import platform
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from crowdlearn.config import from_dict  # noqa: E402
from crowdlearn.experiment import Simulation  # noqa: E402

DOC = ROOT / "docs" / "experiments" / "dssgd.md"
DEVICES = 30
LR = 0.05
BATCH = 32
GAMMA = 0.05
DP_EPSILONS = (0.1, 1.0, 10.0)
RELEASES = ("clipped", "paper")
BEGIN, END = "<!-- BEGIN MEASURED (benchmarks/dssgd_experiments.py) -->", "<!-- END MEASURED -->"
DP_BEGIN = "<!-- BEGIN MEASURED DP (benchmarks/dssgd_experiments.py --dp-only) -->"
DP_END = "<!-- END MEASURED DP -->"
AUDIT_BEGIN = "<!-- BEGIN MEASURED AUDIT (benchmarks/dssgd_experiments.py --audit-only) -->"
AUDIT_END = "<!-- END MEASURED AUDIT -->"
AUDIT_VALUES = (0.05, 0.1, 0.166, 0.5, 1.0)
AUDIT_TRIALS = 100_000


def base(protocol: str, rounds: int, seed: int) -> dict:
    raw = {"protocol": protocol, "rounds": rounds, "seed": seed, "name": protocol,
           "data": {"dataset": "fashion_mnist", "partition": "iid"},
           "model": {"arch": "mlp", "hidden": [128, 64]},
           "fleet": {"devices": DEVICES, "cells": 3}}
    if protocol in ("centralized", "standalone"):
        raw["fedavg"] = {"local_epochs": 1, "batch_size": BATCH, "lr": LR}
    return raw


def dssgd(rounds: int, seed: int, *, theta_u: float, order: str = "round_robin",
          epsilon: float | None = None, release: str = "clipped") -> dict:
    raw = base("dssgd", rounds, seed)
    raw["dssgd"] = {"order": order, "theta_u": theta_u, "theta_d": 1.0, "selection": "topk",
                    "gamma": GAMMA, "local_epochs": 1, "batch_size": BATCH, "lr": LR}
    if epsilon is not None:
        raw["dssgd"].update(dp=True, epsilon=epsilon, release=release)
    return raw


def dp_plan(rounds: int, seed: int) -> list[tuple[str, dict]]:
    return [(f"DSSGD θu = 0.1, DP ε = {e:g} per parameter, {r} release",
             dssgd(rounds, seed, theta_u=0.1, epsilon=e, release=r))
            for r in RELEASES for e in DP_EPSILONS]


def plan(rounds: int, seed: int, orders: bool) -> list[tuple[str, dict]]:
    runs = [("centralized", base("centralized", rounds, seed))]
    runs += [(f"DSSGD round robin θu = {t:g}", dssgd(rounds, seed, theta_u=t))
             for t in (1.0, 0.1, 0.01)]
    runs.append(("standalone", base("standalone", rounds, seed)))
    runs += dp_plan(rounds, seed)
    if orders:
        runs += [(f"DSSGD {o.replace('_', ' ')} θu = 0.1", dssgd(rounds, seed, theta_u=0.1, order=o))
                 for o in ("random_order", "asynchronous")]
    return runs


def composed_epsilon(res) -> float | None:
    """The largest composed ε over participants, as ``summary.json`` reports it."""
    eps = res.summary.get("epsilon")
    return None if eps is None else float(eps)


def run_one(label: str, raw: dict) -> dict:
    cfg = from_dict(raw)
    t0 = time.perf_counter()
    sim = Simulation(cfg)
    res = sim.run()
    s = res.summary
    row = {"label": label, "final": s["final_accuracy"], "best": s["best_accuracy"],
           "up": s["bytes_up"], "down": s["bytes_down"], "sim_s": s["sim_time_s"],
           "eps": composed_epsilon(res), "wall": time.perf_counter() - t0,
           "rounds": s["rounds_completed"], "completed": s["completed"],
           "guarantee": s.get("epsilon_guarantee"), "basic": s.get("accountant_fallback_to_basic"),
           "audit": s.get("epsilon_audit"), "dp_eps": raw.get("dssgd", {}).get("epsilon")}
    print(f"{label:45s} final {fmt_acc(row['final'])} best {fmt_acc(row['best'])} "
          f"up {row['up'] / 1e6:9.1f} MB down {row['down'] / 1e6:9.1f} MB "
          f"sim {row['sim_s']:8.1f} s ε {fmt_eps(row['eps'])} ({row['guarantee']}, basic "
          f"composition: {row['basic']}) audit {fmt_audit(row['audit'])} "
          f"wall {row['wall']:6.1f} s", flush=True)
    return row


def fmt_acc(v) -> str:
    return "—" if v is None else f"{100 * v:.2f} %"


def fmt_audit(a) -> str:
    if not a:
        return "—"
    return (f"ε_p ≥ {a['epsilon_lower_bound']:.3f} (claimed {a['claimed_epsilon']:g}; "
            f"|Δw| = {a['value']:.3f}, {a['trials']} + {a['trials']} runs, "
            f"{100 * a['confidence']:.0f} %)")


def dp_table(rows: list[dict]) -> str:
    out = ["| ε_p | release | final acc. | best acc. | composed ε (δ = 1e-5) | ε is | "
           "auditor: per-parameter ε ≥ | largest released \\|Δw\\| | wall |",
           "|---:|---|---:|---:|---:|---|---:|---:|---:|"]
    for r in rows:
        a = r["audit"]
        how = "nominal" if r["guarantee"] == "nominal" else "DP guarantee"
        if r["basic"]:
            how += " (basic composition)"
        audit = f"{a['epsilon_lower_bound']:.3f} (claimed {a['claimed_epsilon']:g}) | " \
            f"{a['value']:.3f}" if a else "— | —"
        out.append(f"| {r['dp_eps']:g} | {'paper' if 'paper' in r['label'] else 'clipped'} | "
                   f"{fmt_acc(r['final'])} | {fmt_acc(r['best'])} | {fmt_eps(r['eps'])} | "
                   f"{how} | {audit} | {r['wall']:.0f} s |")
    return "\n".join(out)


def block(begin: str, end: str, flags: str, setting: str, body: list[str], args,
          total_wall: float) -> str:
    """A measured block of the doc: the command that produced it, then ``body``."""
    return "\n".join([
        begin,
        f"Command: `.venv/bin/python benchmarks/dssgd_experiments.py --rounds {args.rounds}"
        f"{flags} --write-docs` — {setting}; total wall time "
        f"{total_wall / 60:.1f} min on 2 CPU cores shared with other jobs "
        f"({platform.python_version()}, {time.strftime('%Y-%m-%d')}).",
        "",
        *body,
        end,
    ])


def dp_measured(rows: list[dict], args, total_wall: float) -> str:
    return block(DP_BEGIN, DP_END, " --dp-only",
                 f"R = {args.rounds} epochs per participant, seed {args.seed}",
                 [dp_table(rows), "", *verdicts(rows)], args, total_wall)


def fmt_eps(v) -> str:
    return "—" if v is None else ("∞" if math.isinf(v) else f"{v:.4g}")


def table(rows: list[dict]) -> str:
    out = ["| run | final acc. | best acc. | bytes up | bytes down | simulated time | "
           "composed ε (δ = 1e-5) | wall |",
           "|---|---:|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        out.append(f"| {r['label']} | {fmt_acc(r['final'])} | {fmt_acc(r['best'])} | "
                   f"{r['up'] / 1e6:.1f} MB | {r['down'] / 1e6:.1f} MB | {r['sim_s']:.0f} s | "
                   f"{fmt_eps(r['eps'])} | {r['wall']:.0f} s |")
    return "\n".join(out)


def verdicts(rows: list[dict]) -> list[str]:
    by = {r["label"]: r["final"] for r in rows}
    c = by.get("centralized")
    t10, t1 = by.get("DSSGD round robin θu = 0.1"), by.get("DSSGD round robin θu = 0.01")
    s = by.get("standalone")
    out = []
    if None not in (c, t10, t1, s):
        pts = lambda a, b: f"{100 * (a - b):+.2f} points"  # noqa: E731
        checks = [
            ("centralized ≥ DSSGD θu = 10 %", c >= t10, pts(c, t10)),
            ("DSSGD θu = 10 % within 2 points of centralized", c - t10 <= 0.02, pts(t10, c)),
            ("DSSGD θu = 10 % > DSSGD θu = 1 %", t10 > t1, pts(t10, t1)),
            ("DSSGD θu = 1 % > standalone", t1 > s, pts(t1, s)),
        ]
        for name, ok, diff in checks:
            out.append(f"* {name}: **{'holds' if ok else 'FAILS'}** ({diff})")
    for release in RELEASES:
        dp = [(float(r["label"].split("ε = ")[1].split()[0]), r["final"]) for r in rows
              if "DP ε" in r["label"] and release in r["label"] and r["final"] is not None]
        if len(dp) >= 2:
            dp.sort()
            ok = all(b[1] > a[1] for a, b in zip(dp, dp[1:], strict=False))
            seq = " → ".join(f"{100 * a:.2f} % (ε = {e:g})" for e, a in dp)
            out.append(f"* DP accuracy rises with ε ({release} release): "
                       f"**{'holds' if ok else 'FAILS'}** ({seq})")
    return out


def measured(rows: list[dict], args, total_wall: float) -> str:
    return block(BEGIN, END, "" if args.orders else " --no-orders",
                 f"R = {args.rounds} epochs per participant / baseline epochs, seed {args.seed}",
                 [table(rows), "", "Acceptance ordering (final accuracy):", "",
                  *verdicts(rows)], args, total_wall)


def write_docs(text: str, begin: str = BEGIN, end: str = END) -> None:
    doc = DOC.read_text() if DOC.exists() else ""
    if begin in doc and end in doc:
        head, rest = doc.split(begin, 1)
        doc = head + text + rest.split(end, 1)[1]
    else:
        doc = doc + "\n" + text + "\n"
    DOC.write_text(doc)
    print(f"wrote {DOC.relative_to(ROOT)}")


def audit_rows(seed: int) -> list[dict]:
    """The auditor on the one-value SVT of a DSSGD turn (ε_p = 1, γ = 0.05), neighbours ±v."""
    import numpy as np

    from crowdlearn.protocols.dssgd import DSSGDParams, audit_release

    out = []
    for release in RELEASES:
        for v in AUDIT_VALUES:
            t0 = time.perf_counter()
            p = DSSGDParams(rounds=1, dp=True, epsilon=1.0, gamma=GAMMA, release=release)
            r = audit_release(p, v, rng=np.random.default_rng(seed), trials=AUDIT_TRIALS)
            out.append({"release": release, "value": v, "res": r,
                        "wall": time.perf_counter() - t0})
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


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=10, help="epochs per participant (default 10)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--no-orders", dest="orders", action="store_false",
                    help="skip the random-order and asynchronous runs")
    ap.add_argument("--write-docs", action="store_true",
                    help="rewrite the measured block of docs/experiments/dssgd.md "
                         "(after every run, so a cut-short run still leaves its rows)")
    ap.add_argument("--dp-only", action="store_true",
                    help="only the DP rows (both releases); --write-docs rewrites their block")
    ap.add_argument("--audit-only", action="store_true",
                    help="only the auditor on one released value (both releases)")
    args = ap.parse_args(argv)
    t0 = time.perf_counter()
    rows = []
    if args.audit_only:
        table_text = audit_table(audit_rows(args.seed))
        print(table_text)
        if args.write_docs:
            write_docs(block(AUDIT_BEGIN, AUDIT_END, " --audit-only",
                           f"one DSSGD turn's single-value SVT at ε_p = 1, γ = {GAMMA}, τ = 1e-3, "
                           f"seed {args.seed}, {AUDIT_TRIALS:,} runs per neighbour (a quarter "
                           "choose the event)", [table_text], args, time.perf_counter() - t0),
                       AUDIT_BEGIN, AUDIT_END)
        return
    if args.dp_only:
        for label, raw in dp_plan(args.rounds, args.seed):
            rows.append(run_one(label, raw))
            if args.write_docs:
                write_docs(dp_measured(rows, args, time.perf_counter() - t0), DP_BEGIN, DP_END)
        print()
        print(dp_table(rows))
        print("\n".join(verdicts(rows)))
        print(f"\ntotal wall time {time.perf_counter() - t0:.0f} s")
        return
    for label, raw in plan(args.rounds, args.seed, args.orders):
        rows.append(run_one(label, raw))
        if args.write_docs:
            write_docs(measured(rows, args, time.perf_counter() - t0))
    total = time.perf_counter() - t0
    print()
    print(table(rows))
    print()
    print("\n".join(verdicts(rows)))
    print(f"\ntotal wall time {total:.0f} s")
    if args.write_docs:
        write_docs(measured(rows, args, total))


if __name__ == "__main__":
    main()
