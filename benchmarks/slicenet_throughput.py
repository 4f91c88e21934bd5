"""Benchmark: one simulated 120-device Crowdlearning epoch against a centralized Keras epoch.

Times, in one process and on the same 60,000 Fashion-MNIST training samples:

* **simulated epoch** — one epoch of ``paper-mlp`` Crowdlearning on a 120-device fleet (groups of
  ``--group-size``), *everything* included: building the simulation (partition, keys, topology),
  the discrete-event simulator, the protocol machines, the fused trainer, the evaluation.  Run
  twice: ``cold`` (first, TensorFlow traces its functions) and ``warm`` (a second simulation of
  the same configuration, the trainer's traced functions reused as a sweep would);
* **centralized epoch** — ``keras.Model.fit`` of the same network (BatchNorm included, SGD at
  the same learning rate and mini-batch) for one epoch, after a warm-up epoch on 2,048 samples.

and prints ``ratio X`` = warm simulated epoch ÷ centralized epoch (target ≤ 1), plus the fused
trainer's throughput: training FLOPs of the epoch (3 × forward, ``Layout.train_flops_per_sample``
× samples) over the wall time spent inside ``FusedTrainer.train``.

Run::

    .venv/bin/python benchmarks/slicenet_throughput.py [--group-size 10] [--devices 120]
"""

from __future__ import annotations

import argparse
import os
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


def simulated_epoch(devices: int, group_size: int, seed: int) -> dict:
    from crowdlearn.config import from_dict
    from crowdlearn.experiment import Simulation
    from slicenet.fused import FusedTrainer

    cfg = from_dict({"protocol": "crowdlearning", "rounds": 1, "seed": seed,
                     "data": {"dataset": "fashion_mnist"},
                     "fleet": {"devices": devices, "cells": 12},
                     "slicenet": {"model": "paper-mlp", "group_size": group_size}})
    spent = [0.0]
    orig = FusedTrainer.train

    def timed(self, tasks, **kw):
        t = time.perf_counter()
        try:
            return orig(self, tasks, **kw)
        finally:
            spent[0] += time.perf_counter() - t

    FusedTrainer.train = timed
    try:
        t0 = time.perf_counter()
        sim = Simulation(cfg)
        res = sim.run()
        wall = time.perf_counter() - t0
    finally:
        FusedTrainer.train = orig
    s = res.summary
    samples = sum(len(p) for p in sim.parts)
    flops = sim.ctx.extra["layout"].train_flops_per_sample * samples
    return {"wall_s": wall, "train_s": spent[0], "flops": flops, "samples": samples,
            "accuracy": s["final_accuracy"], "sim_time_s": s["sim_time_s"],
            "completed": s["completed"]}


def keras_epoch(seed: int, lr: float = 0.05, batch: int = 32) -> dict:
    import keras
    import numpy as np

    from crowdlearn.data.datasets import load_dataset
    from slicenet.keras_io import paper_mlp

    ds = load_dataset("fashion_mnist")
    x = np.asarray(ds.x_train, np.float32).reshape(len(ds.x_train), -1)
    y = np.asarray(ds.y_train, np.int32)
    keras.utils.set_random_seed(seed)
    model = paper_mlp()[1]()
    model.compile(optimizer=keras.optimizers.SGD(lr),
                  loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    model.fit(x[:2048], y[:2048], batch_size=batch, epochs=1, verbose=0)     # tracing
    t = time.perf_counter()
    model.fit(x, y, batch_size=batch, epochs=1, verbose=0, shuffle=True)
    return {"wall_s": time.perf_counter() - t, "samples": len(x)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--devices", type=int, default=120)
    ap.add_argument("--group-size", type=int, default=10)
    ap.add_argument("--seed", type=int, default=0)
    a = ap.parse_args()
    cold = simulated_epoch(a.devices, a.group_size, a.seed)
    warm = simulated_epoch(a.devices, a.group_size, a.seed)
    ker = keras_epoch(a.seed)
    for name, r in (("cold", cold), ("warm", warm)):
        print(f"simulated epoch ({name}): {r['wall_s']:.1f} s wall for {r['samples']} samples "
              f"({a.devices} devices, n = {a.group_size}; {r['sim_time_s']:.1f} s simulated, "
              f"accuracy {r['accuracy']:.4f}, completed {r['completed']}); fused trainer "
              f"{r['train_s']:.1f} s, {r['flops'] / r['train_s'] / 1e9:.1f} GFLOP/s")
    print(f"centralized Keras fit: {ker['wall_s']:.1f} s for {ker['samples']} samples")
    print(f"ratio {warm['wall_s'] / ker['wall_s']:.2f}  (cold {cold['wall_s'] / ker['wall_s']:.2f})")
    print(f"fused trainer GFLOP/s {warm['flops'] / warm['train_s'] / 1e9:.1f}")


if __name__ == "__main__":
    main()
