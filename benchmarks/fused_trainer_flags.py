"""The fused trainer alone, per XLA setting: what ``XLA_FLAGS`` does to its speed on this machine.

``slicenet.fused.FusedTrainer.train`` on ``--groups`` copies of ``paper-mlp`` (784 → 400 → 200 →
100 → 10 with BatchNorm), ``--steps`` mini-batches of 32 Fashion-MNIST samples each, as a
Crowdlearning pass of 120 devices (n = 10) trains them.  XLA reads ``XLA_FLAGS`` once per process,
so each setting runs in its own process, the settings alternating ``--rounds`` times (the
machine's load drifts); each process times ``--repeats`` calls after two warm-up calls (the first
compiles) and reports the median.  Then a 2048² matrix product's rate in this process, for scale,
and the machine's memory-copy rate (numpy, one thread, in cache and out of it).

Run::

    .venv/bin/python benchmarks/fused_trainer_flags.py                 # the default flag sets
    .venv/bin/python benchmarks/fused_trainer_flags.py --flag= --flag=--xla_cpu_use_xnnpack=true

Prints, per setting, the median call time over its processes, GFLOP/s (training FLOPs of the call ÷
its wall time) and the ratio to the first setting (the baseline, no flags).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_FLAGS = [
    "",
    "--xla_cpu_copy_insertion_use_region_analysis=true",
    "--xla_cpu_use_xnnpack=true --xla_cpu_experimental_xnn_fusion_type=dot",
    "--xla_cpu_use_onednn=true --xla_cpu_experimental_onednn_custom_call=true",
    "--xla_cpu_use_thunk_runtime=false",
]


def child(groups: int, steps: int, repeats: int, shares: int = 0) -> dict:
    """Time ``train`` in this process (its ``XLA_FLAGS`` as inherited)."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    import numpy as np

    from crowdlearn.data.datasets import load_dataset
    from crowdlearn.training.batching import TrainTask
    from slicenet.fused import FusedTrainer
    from slicenet.graph import paper_mlp_description

    ds = load_dataset("fashion_mnist")
    x = np.asarray(ds.x_train, np.float32).reshape(len(ds.x_train), -1)
    t = FusedTrainer(paper_mlp_description(), x, ds.y_train)
    if shares:
        t.threads = shares          # the calls the groups are cut into (default: one per core)
    rng = np.random.default_rng(0)
    w = tuple(t.init_weights(rng))
    tasks = [TrainTask(weights=w, batches=rng.integers(0, len(x), (steps, 32)), lr=0.05)
             for _ in range(groups)]
    t.train(tasks)
    t.train(tasks)                                            # compiled, then warm
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        t.train(tasks)
        times.append(time.perf_counter() - t0)
    flops = t.flops_per_sample * 32 * steps * groups
    return {"median_s": statistics.median(times), "min_s": min(times), "flops": flops}


def scale() -> dict:
    """A 2048² float32 matrix product's GFLOP/s (TensorFlow) and numpy's copy rate (GB/s)."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    import numpy as np
    import tensorflow as tf

    a = tf.random.uniform([2048, 2048])
    tf.matmul(a, a).numpy()
    t0 = time.perf_counter()
    for _ in range(10):
        tf.matmul(a, a).numpy()
    mm = 10 * 2 * 2048 ** 3 / (time.perf_counter() - t0) / 1e9
    copy = {}
    for mb in (4, 64):
        src = np.ones(mb * 2 ** 20 // 4, np.float32)
        dst = np.empty_like(src)
        np.copyto(dst, src)
        t0 = time.perf_counter()
        for _ in range(20):
            np.copyto(dst, src)
        copy[mb] = 2 * mb / 1024 * 20 / (time.perf_counter() - t0)
    return {"matmul_gflops": mm, "copy_gbs": copy}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--flag", action="append", dest="flags", metavar="XLA_FLAGS",
                    help="an XLA_FLAGS setting to compare (repeat; written --flag=VALUE, and "
                         "--flag= for no flags); the first is the baseline (default: no flags "
                         "and four settings that might speed up small matrix products)")
    ap.add_argument("--groups", type=int, default=12)
    ap.add_argument("--steps", type=int, default=16)
    ap.add_argument("--repeats", type=int, default=15)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--shares", type=int, default=0,
                    help="cut the groups into this many calls (FusedTrainer.threads; default one "
                         "per core)")
    ap.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    a = ap.parse_args(argv)
    a.flags = a.flags or DEFAULT_FLAGS
    if a.child:
        print(json.dumps(child(a.groups, a.steps, a.repeats, a.shares)))
        return 0
    print(f"{time.strftime('%Y-%m-%d %H:%M:%S UTC', time.gmtime())}; load average at the start "
          f"{os.getloadavg()[0]:.2f}; {a.groups} groups x {a.steps} steps of 32, paper-mlp")
    got: dict[str, list[dict]] = {f: [] for f in a.flags}
    for r in range(a.rounds):
        for f in a.flags:
            env = {**os.environ, "XLA_FLAGS": f, "PYTHONPATH": str(ROOT)}
            out = subprocess.run([sys.executable, __file__, "--child", "--groups", str(a.groups),
                                  "--steps", str(a.steps), "--repeats", str(a.repeats),
                                  "--shares", str(a.shares)],
                                 env=env, capture_output=True, text=True)
            if out.returncode:
                print(f"[{f or 'no flags'}] failed:\n{out.stderr[-2000:]}")
                return 1
            got[f].append(json.loads(out.stdout.strip().splitlines()[-1]))
            print(f"round {r + 1} [{f or 'no flags'}]: median {got[f][-1]['median_s']:.3f} s "
                  f"(load {os.getloadavg()[0]:.2f})", flush=True)
    base = statistics.median(g["median_s"] for g in got[a.flags[0]])
    for f in a.flags:
        med = statistics.median(g["median_s"] for g in got[f])
        gf = got[f][0]["flops"] / med / 1e9
        print(f"{f or 'no flags'}: median {med:.3f} s per call, {gf:.1f} GFLOP/s, "
              f"ratio {med / base:.2f}  (per process: "
              + ", ".join(f"{g['median_s']:.3f}" for g in got[f]) + ")")
    s = scale()
    print(f"matmul 2048: {s['matmul_gflops']:.0f} GFLOP/s; memory copy (numpy, one thread): "
          + ", ".join(f"{mb} MB {v:.1f} GB/s" for mb, v in s["copy_gbs"].items()))
    print(f"load average at the end {os.getloadavg()[0]:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
