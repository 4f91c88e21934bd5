"""Benchmark: one SGD step of the paper's MLP, piece by piece vs monolithic (slicenet.execution).

For each n, a METIS plan of the paper's MNIST MLP (784-400-200-100-10 with batch norm) is built,
and three things are timed on the same random batch (default 32 samples), warm (after
``--warmup`` untimed calls, so tracing is excluded), as the median of ``--repeats`` calls that
are interleaved so that machine load hits all three alike:

* ``monolithic_step`` -- the whole network as one ``tf.function`` (numpy in, numpy out);
* ``piecewise_step`` -- the functional form: distribute the weights to the pieces, run the step,
  gather the weights back;
* ``PiecewiseNetwork.step`` -- the step alone on a network whose pieces keep their weights
  (what a deployment would pay per mini-batch).

The piecewise step runs one small ``tf.function`` per participant and layer, forward and
backward, and materialises every boundary tensor as a numpy message, so its cost is dominated by
per-call dispatch: it grows with n while the arithmetic stays the same.

Run::

    .venv/bin/python benchmarks/slicenet_step.py [--ns 5 10 20] [--batch 32] [--repeats 20]
"""

from __future__ import annotations

import argparse
import functools
import os
import statistics
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402

from slicenet.execution import (  # noqa: E402
    PiecewiseNetwork,
    count_floats,
    monolithic_step,
    piecewise_step,
)
from slicenet.graph import paper_mlp_description  # noqa: E402
from slicenet.keras_io import build_keras  # noqa: E402
from slicenet.partition import partition  # noqa: E402


def _ms(f) -> float:
    t = time.perf_counter()
    f()
    return (time.perf_counter() - t) * 1e3


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--ns", type=int, nargs="+", default=[5, 10, 20])
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--repeats", type=int, default=20)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--lr", type=float, default=0.1)
    args = ap.parse_args()

    desc = paper_mlp_description()
    graph = desc.graph()
    w0 = build_keras(desc, seed=0).get_weights()
    rng = np.random.default_rng(0)
    x = rng.normal(size=(args.batch, 784)).astype(np.float32)
    y = rng.integers(0, 10, args.batch)

    print(f"paper MLP, batch {args.batch}, warm medians of {args.repeats} interleaved calls "
          f"({os.cpu_count()} CPUs; load average {os.getloadavg()[0]:.1f} at start)")
    head = (f"{'n':>3}  {'messages':>8}  {'floats/step':>11}  {'mono ms':>8}  {'piecewise ms':>12}  "
            f"{'stateful ms':>11}  {'piecewise/mono':>14}  {'stateful/mono':>13}")
    print(head)
    for n in args.ns:
        plan = partition(graph, n)
        net = PiecewiseNetwork(desc, plan, w0)
        mono = functools.partial(monolithic_step, desc, w0, x, y, args.lr)
        piece = functools.partial(piecewise_step, desc, plan, w0, x, y, args.lr)
        state = functools.partial(net.step, x, y, args.lr)
        for _ in range(args.warmup):
            mono(), piece(), state()
        t_m, t_p, t_s = [], [], []
        for _ in range(args.repeats):
            t_m.append(_ms(mono))
            t_p.append(_ms(piece))
            t_s.append(_ms(state))
        m, p, s = (statistics.median(t) for t in (t_m, t_p, t_s))
        _, _, msgs = piece()
        fw, bw = count_floats(msgs)
        print(f"{n:>3}  {len(msgs):>8}  {fw + bw:>11}  {m:>8.2f}  {p:>12.2f}  {s:>11.2f}  "
              f"{p / m:>14.1f}  {s / m:>13.1f}")


if __name__ == "__main__":
    main()
