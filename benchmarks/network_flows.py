"""Micro-benchmark of sim.network: many concurrent flows starting and ending at distinct times.

Scenario: the server broadcasts a model to every device at t=0 (all downloads share the server
link and the cell backhauls), then every device uploads an update at its own random moment, with
jittered access bandwidths, so starts and ends rarely coincide and every one of them triggers a
max-min recomputation over up to ``--devices`` flows.

Also times one progressive-filling run over 1.5 x ``--devices`` concurrent flows against a plain-Python
reference (one bottleneck link per iteration), to show what the vectorised version buys.

Run::

    python benchmarks/network_flows.py --devices 1000 --cells 10
"""

from __future__ import annotations

import argparse
import time
from itertools import pairwise

import numpy as np
import simpy

from sim.network import Network, build_topology, max_min_rates


def reference_max_min(flows: list[list[int]], capacity: list[float]) -> list[float]:
    """Textbook progressive filling: one tightest link frozen per iteration."""
    rc = list(capacity)
    rate = [0.0] * len(flows)
    active = set(range(len(flows)))
    while active:
        count: dict[int, int] = {}
        for f in active:
            for link in flows[f]:
                count[link] = count.get(link, 0) + 1
        link = min(count, key=lambda k: rc[k] / count[k])
        level = rc[link] / count[link]
        for f in [f for f in active if link in flows[f]]:
            rate[f] = level
            active.discard(f)
            for other in flows[f]:
                rc[other] -= level
    return rate


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--devices", type=int, default=1000)
    ap.add_argument("--cells", type=int, default=10)
    ap.add_argument("--model-bytes", type=int, default=2_000_000)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    rng = np.random.default_rng(args.seed)
    n = args.devices
    g = build_topology(
        n,
        device_up_bps=rng.uniform(0.5e6, 5e6, n),      # 4-40 Mbit/s
        device_down_bps=rng.uniform(2e6, 20e6, n),     # 16-160 Mbit/s
        device_latency_s=rng.uniform(0.01, 0.05, n),
        cells=args.cells,
        cell_of=rng.integers(0, args.cells, n),        # uneven cells
        backhaul_bps=12.5e6,                           # 100 Mbit/s per cell
        server_bps=125e6,                              # 1 Gbit/s
    )
    env = simpy.Environment()
    net = Network(env, g)

    def device(i: int):
        down = net.transfer("server", i, args.model_bytes)
        yield down.done
        yield env.timeout(rng.exponential(30.0))      # "training"
        up = net.transfer(i, "server", args.model_bytes)
        yield up.done

    procs = [env.process(device(i)) for i in range(n)]
    peak = 0

    def watch():
        nonlocal peak
        while True:
            peak = max(peak, len(net.active))
            yield env.timeout(0.5)

    env.process(watch())
    t0, c0 = time.perf_counter(), time.process_time()
    env.run(until=env.all_of(procs))
    wall, cpu = time.perf_counter() - t0, time.process_time() - c0
    flow_events = 4 * n  # every transfer starts and ends once
    print(f"{n} devices, {args.cells} cells, {2 * n} transfers of {args.model_bytes} B, "
          f"peak {peak} concurrent flows, simulated {env.now:.1f} s")
    print(f"wall {wall:.2f} s (CPU {cpu:.2f} s), {net.recomputations} recomputations, "
          f"{flow_events / cpu:,.0f} flow starts+ends per CPU second, "
          f"{cpu / net.recomputations * 1e3:.3f} ms per recomputation (including SimPy)")

    # One progressive-filling run over n downloads and n/2 uploads in flight together.
    env2 = simpy.Environment()
    net2 = Network(env2, g)
    for i in range(n):
        net2.transfer("server", i, args.model_bytes)
        if i % 2:
            net2.transfer(i, "server", args.model_bytes)
    env2.run(until=1.0)
    edge_id: dict = {}
    flows = [[edge_id.setdefault(e, len(edge_id)) for e in pairwise(t.path)]
             for t in net2.active]
    capacity = [net2.capacity(*e) for e in edge_id]
    width = max(map(len, flows))
    matrix = np.array([f + [-1] * (width - len(f)) for f in flows])
    reps = 20
    t0 = time.process_time()
    for _ in range(reps):
        fast = max_min_rates(matrix, capacity)
    t_fast = (time.process_time() - t0) / reps
    t0 = time.process_time()
    slow = reference_max_min(flows, capacity)
    t_slow = time.process_time() - t0
    assert np.allclose(fast, slow, rtol=1e-9)
    print(f"progressive filling over {len(flows)} flows (CPU): numpy {t_fast * 1e3:.2f} ms, "
          f"plain Python reference {t_slow * 1e3:.1f} ms ({t_slow / t_fast:.0f}x)")


if __name__ == "__main__":
    main()
