"""Benchmark: the network's rate model alone, on the transfers of a 120-device Crowdlearning epoch.

First records every ``Network.transfer(src, dst, nbytes)`` call of one simulated ``paper-mlp``
epoch (120 devices, 12 cells, groups of 10: ``benchmarks/slicenet_throughput.py``'s run) with
its simulated start time, and the run's cell-tree topology.  Then replays them: a fresh SimPy
environment and :class:`sim.network.Network`, each transfer started at its recorded instant
(the same flows at the same times, so the same rates, refills and completions as in the epoch,
without the machines, the trainer or the monitor), timed in process CPU seconds.

``--against DIR`` loads ``DIR/sim/network.py`` (another checkout, e.g. main's) as a second
module and replays with both, alternately, in the same process: the CPU of each, and a check
that both give every transfer the same completion time (the float's bits) in the same order.

Run::

    PYTHONPATH=$PWD .venv/bin/python benchmarks/network_replay.py --pairs 5 --against /path/to/main
"""

from __future__ import annotations

import argparse
import gc
import importlib.util
import os
import pickle
import time

import simpy

_TREE_FIELDS = ("num_devices", "cells", "cell_of", "up", "down", "latency", "backhaul_bps",
                "backhaul_latency_s", "server_bps", "server_down_bps", "server_latency_s",
                "d2d_pairs", "d2d_bps", "d2d_latency_s")


def record(devices: int, group_size: int, seed: int) -> dict:
    """The epoch's transfers ``(start time, src, dst, nbytes)`` and its topology's fields."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    from crowdlearn.config import from_dict
    from crowdlearn.experiment import Simulation
    from sim.network import Network

    cfg = from_dict({"protocol": "crowdlearning", "rounds": 1, "seed": seed,
                     "data": {"dataset": "fashion_mnist"},
                     "fleet": {"devices": devices, "cells": 12},
                     "slicenet": {"model": "paper-mlp", "group_size": group_size}})
    log: list = []
    orig = Network.transfer

    def transfer(self, src, dst, nbytes):
        log.append((self.env.now, src, dst, nbytes))
        return orig(self, src, dst, nbytes)

    Network.transfer = transfer
    try:
        sim = Simulation(cfg)
        sim.run()
    finally:
        Network.transfer = orig
    tree = sim.network._tree
    return {"tree": {k: getattr(tree, k) for k in _TREE_FIELDS}, "log": log}


def replay(module, data: dict) -> tuple[float, list, int, int]:
    """Start the recorded transfers on a fresh network of ``module``; return the process CPU
    of the run, the completions ``(sequence, end time)`` in order, refills and updates."""
    env = simpy.Environment()
    net = module.Network(env, module.CellTree(**data["tree"]))
    log, ends, at = data["log"], [], [0]

    def start(_ev=None):
        now = env.now
        while at[0] < len(log) and log[at[0]][0] <= now:
            _, src, dst, nbytes = log[at[0]]
            at[0] += 1
            t = net.transfer(src, dst, nbytes)
            t.on_done(lambda _e, t=t: ends.append((t._seq, env.now)))
        if at[0] < len(log):
            env.timeout(log[at[0]][0] - now).callbacks.append(start)

    start()
    gc.collect()
    cpu = time.process_time()
    env.run()
    return time.process_time() - cpu, ends, net.refills, net.recomputations


def _load(path: str, name: str):
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--devices", type=int, default=120)
    ap.add_argument("--group-size", type=int, default=10)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--pairs", type=int, default=3, help="replays of each module")
    ap.add_argument("--against", metavar="DIR", help="another checkout whose sim/network.py "
                    "is replayed alternately with this one")
    ap.add_argument("--transfers", metavar="FILE", help="a recording to reuse (made and "
                    "written there if the file does not exist)")
    args = ap.parse_args()

    if args.transfers and os.path.exists(args.transfers):
        with open(args.transfers, "rb") as f:
            data = pickle.load(f)
    else:
        data = record(args.devices, args.group_size, args.seed)
        if args.transfers:
            with open(args.transfers, "wb") as f:
                pickle.dump(data, f)
    here = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                        "sim", "network.py")
    modules = {"this": _load(here, "_network_this")}
    if args.against:
        modules["against"] = _load(os.path.join(args.against, "sim", "network.py"),
                                   "_network_against")
    print(f"{time.strftime('%H:%M:%S', time.gmtime())} UTC, load {os.getloadavg()[0]:.2f}: "
          f"{len(data['log'])} transfers of a {args.devices}-device epoch")
    cpu: dict[str, list[float]] = {name: [] for name in modules}
    first = None
    for _ in range(args.pairs):
        for name, module in modules.items():
            spent, ends, refills, updates = replay(module, data)
            key = [(seq, float(end).hex()) for seq, end in ends]
            if first is None:
                first = key
            elif key != first:
                raise SystemExit(f"the {name} module's completions differ from the first "
                                 "replay's")
            cpu[name].append(spent)
    print(f"{len(first)} completions, the same times (float bits) and order in every replay; "
          f"{refills} exact refills, {updates} rate updates")
    for name, values in cpu.items():
        print(f"{name} ({modules[name].__file__}): CPU s per replay "
              + " ".join(f"{v:.3f}" for v in values) + f"; min {min(values):.3f}")
    print(f"load at the end {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
