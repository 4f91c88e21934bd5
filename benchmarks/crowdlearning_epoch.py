"""One 120-device Crowdlearning epoch with paper-mlp (the setting of
benchmarks/slicenet_experiments.py): wall time of ``Simulation(cfg).run()`` after a warm-up
construction (dataset loaded, fused trainer cached), with the run's accuracy, bytes and simulated
time, so that two versions of the code can be compared on the same results.

Run::

    .venv/bin/python benchmarks/crowdlearning_epoch.py
"""
import json
import time

from crowdlearn.config import from_dict
from crowdlearn.experiment import Simulation


def main() -> None:
    cfg = from_dict({"protocol": "crowdlearning", "rounds": 1, "seed": 0,
                     "data": {"dataset": "fashion_mnist"}, "fleet": {"devices": 120, "cells": 12},
                     "slicenet": {"model": "paper-mlp", "lr": 0.05, "theta": 0.5, "tau": 0.5}})
    Simulation(cfg)   # warm: dataset, fused trainer cache
    t = time.perf_counter()
    res = Simulation(cfg).run()
    wall = time.perf_counter() - t
    s = res.summary
    print(json.dumps({"wall_s": round(wall, 2), "acc": s["final_accuracy"],
                      "bytes": s["bytes_total"], "sim_time_s": s["sim_time_s"]}))


if __name__ == "__main__":
    main()
