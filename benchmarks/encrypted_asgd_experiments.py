"""Encrypted ASGD (Phong et al.) against plaintext ASGD, DSSGD and FedAvg on one fleet.

Every run: MLP 784-128-64-10 (109,386 weights) on Fashion-MNIST, ``--devices`` participants with
an iid split, ``--rounds`` epochs per participant (a Phong/DSSGD turn and a FedAvg round are both
one local epoch per participant), batch 32, lr 0.05, seeds ``--seeds``.

* ``phong`` with ``he.scheme`` = none / paillier (3072-bit, prec 32, pad 15) / lwe (Phong's
  parameters, one processing unit), ``round_robin`` so all three follow the same schedule; the
  encrypted runs use ``he.mode = "priced"`` (identical weights and bytes to ``real``, proven in
  ``tests/test_phong.py``) with crypto times from the calibration on this machine;
* ``hres`` (2048-bit, prec 32, pad 15), round robin, priced, the same schedule;
* ``dssgd`` round robin, θu = 0.1, θd = 1 (the paper's setting);
* ``fedavg`` with every participant in every round.

Prints a Markdown table (final accuracy mean ± std over seeds, bytes and simulated seconds per
epoch, comm_factor, crypto calibration).

Run::

    .venv/bin/python benchmarks/encrypted_asgd_experiments.py [--devices 10] [--rounds 5] [--seeds 0 1 2]
"""

from __future__ import annotations

import argparse
import os
import statistics

from crowdlearn.config import from_dict
from crowdlearn.experiment import run


def configs(devices: int, rounds: int, seed: int) -> dict[str, dict]:
    base = {"seed": seed, "rounds": rounds,
            "data": {"dataset": "fashion_mnist", "partition": "iid"},
            "model": {"arch": "mlp", "hidden": [128, 64]},
            "fleet": {"devices": devices, "cells": 1}}
    he = {"order": "round_robin", "mode": "priced", "batch_size": 32, "lr": 0.05}
    return {
        "ASGD plaintext (phong, none)": {**base, "protocol": "phong", "he": {**he, "scheme": "none"}},
        "Phong Paillier-3072": {**base, "protocol": "phong",
                                "he": {**he, "scheme": "paillier", "key_bits": 3072}},
        "Phong LWE": {**base, "protocol": "phong", "he": {**he, "scheme": "lwe"}},
        "HRES-2048 (Tang et al.)": {**base, "protocol": "hres", "he": {**he, "key_bits": 2048}},
        "DSSGD θu=0.1": {**base, "protocol": "dssgd",
                         "dssgd": {"order": "round_robin", "theta_u": 0.1, "batch_size": 32, "lr": 0.05}},
        "FedAvg (all)": {**base, "protocol": "fedavg",
                         "fedavg": {"clients_per_round": devices, "batch_size": 32, "lr": 0.05}},
    }


def main(argv=None):
    ap = argparse.ArgumentParser()
    ap.add_argument("--devices", type=int, default=10)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    args = ap.parse_args(argv)
    print(f"load_avg_start {os.getloadavg()[0]:.2f}")
    rows: dict[str, list[dict]] = {}
    for seed in args.seeds:
        for name, raw in configs(args.devices, args.rounds, seed).items():
            rows.setdefault(name, []).append(run(from_dict(raw)).summary)
    print("| run | final accuracy (mean ± std) | bytes per epoch (MB) | simulated s per epoch | "
          "comm_factor |")
    print("| --- | --- | --- | --- | --- |")
    for name, ss in rows.items():
        acc = [s["final_accuracy"] for s in ss]
        sd = statistics.stdev(acc) if len(acc) > 1 else 0.0
        mb = statistics.mean(s["bytes_total"] for s in ss) / args.rounds / 1e6
        st = statistics.mean(s["sim_time_s"] for s in ss) / args.rounds
        cf = ss[0].get("comm_factor", "")
        cf = f"{cf:.3f}" if isinstance(cf, float) else "—"
        print(f"| {name} | {statistics.mean(acc):.4f} ± {sd:.4f} | {mb:.2f} | {st:.1f} | {cf} |")
    for name, ss in rows.items():
        if "crypto_calibration" in ss[0]:
            cal = ss[0]["crypto_calibration"]
            print(f"calibration {name}: " + ", ".join(f"{k}={v:.4g}" for k, v in cal.items()))
    print(f"load_avg_end {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
