"""Memory of a loop of simulations in one process, as a notebook or a hand-written sweep runs them.

Runs FM in deep mode (the loop of ``benchmarks/fm_experiments.py``'s deep table: ε × bound per
seed, a new seed each time, so a new cached trainer per seed) on a dataset, ``--seeds`` seeds of
four runs each, each simulation dropped by the loop and **no** ``gc.collect()`` between them, and
prints the process's resident memory after each seed.  A loop that gives its memory back
levels off once the trainer cache (two trainers) is full; one that keeps dropped objects in
reference cycles until the interpreter's full collection grows by what each kept.

    .venv/bin/python benchmarks/loop_memory.py --dataset fashion_mnist --seeds 7
    .venv/bin/python benchmarks/loop_memory.py --dataset digits --seeds 10

``--fleet N`` runs instead a loop of FedAvg simulations of ``N`` devices with the simulator alone
(``training.backend = "none"``, 3 rounds of 1,000 clients, 8 digits samples a device): what a
dropped simulation's driver, network and fleet columns keep.

    .venv/bin/python benchmarks/loop_memory.py --fleet 200000 --seeds 6

Figures: ``docs/benchmarks.md``, "Memory of a loop of simulations".
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def rss_mb() -> float:
    """The process's resident set (MB, ``/proc/self/status``)."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS"):
                return int(line.split()[1]) / 1024
    raise RuntimeError("no VmRSS in /proc/self/status")


def loop(dataset: str, seeds: int, log=print) -> list[float]:
    """RSS (MB) after each seed's four deep-mode FM runs (ε 1 and 10 × bound spec and l2)."""
    from crowdlearn import experiment
    from crowdlearn.config import from_dict

    out = []
    t0 = time.perf_counter()
    for seed in range(seeds):
        for eps in (1.0, 10.0):
            for bound in ("spec", "l2"):
                cfg = from_dict({"protocol": "fm", "rounds": 5, "seed": seed,
                                 "fleet": {"devices": 12, "cells": 2},
                                 "data": {"dataset": dataset},
                                 "model": {"arch": "mlp", "hidden": [32], "activation": "tanh"},
                                 "fm": {"epsilon": eps, "bound": bound, "public_size": 100}})
                experiment.Simulation(cfg).run()      # dropped at once
        out.append(rss_mb())
        log(f"seed {seed}: RSS {out[-1]:,.0f} MB ({time.perf_counter() - t0:.0f} s)")
    return out


def fleet_loop(devices: int, seeds: int, log=print) -> list[float]:
    """RSS (MB) after each of ``seeds`` simulator-only FedAvg runs of ``devices`` devices."""
    import numpy as np

    from crowdlearn import experiment
    from crowdlearn.config import from_dict

    out = []
    t0 = time.perf_counter()
    for seed in range(seeds):
        rng = np.random.default_rng(seed)
        parts = list(rng.integers(0, 1347, (devices, 8)))       # digits' training rows
        cfg = from_dict({"protocol": "fedavg", "rounds": 3, "seed": seed,
                         "training": {"backend": "none"},
                         "fleet": {"devices": devices, "cells": 50},
                         "data": {"dataset": "digits"},
                         "fedavg": {"clients_per_round": min(1000, devices)}})
        experiment.Simulation(cfg, parts=parts).run()       # dropped at once
        del parts
        out.append(rss_mb())
        log(f"run {seed}: RSS {out[-1]:,.0f} MB ({time.perf_counter() - t0:.0f} s)")
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--dataset", default="fashion_mnist")
    ap.add_argument("--seeds", type=int, default=7)
    ap.add_argument("--fleet", type=int, default=0, metavar="N",
                    help="a loop of simulator-only FedAvg runs of N devices instead")
    a = ap.parse_args(argv)
    if a.seeds < 2:
        ap.error(f"--seeds must be >= 2 (growth is read between seeds); got {a.seeds}")
    if a.fleet:
        rss = fleet_loop(a.fleet, a.seeds)
        print(f"growth per run after the first: {(rss[-1] - rss[0]) / (len(rss) - 1):,.0f} MB")
        return 0
    if a.dataset == "fashion_mnist":
        from crowdlearn.data import fashion_mnist_available
        if not fashion_mnist_available():
            ap.error("Fashion-MNIST is not installed (apt-get install dataset-fashion-mnist), "
                     "or pass --dataset digits")
    rss = loop(a.dataset, a.seeds)
    tail = rss[2:] if len(rss) > 3 else rss
    print(f"growth per seed after the cache fills: "
          f"{(tail[-1] - tail[0]) / max(1, len(tail) - 1):,.0f} MB")
    return 0


if __name__ == "__main__":
    sys.exit(main())
