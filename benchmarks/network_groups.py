"""How many flows one max-min refill covers in a simulator-only FedAvg run.

Runs the "simulator alone" configuration of ``fleet_throughput.py`` (``training.backend =
"none"``, digits MLP 64-32-10, 8 random sample indices per device) and records, at every
recomputation of the network, how many transfers are flowing and how many of them the refill
covers (the group a start or an end reaches through saturated links).  The refill size is what a
recomputation costs, so it tells whether a round is bound by the group of one saturated link.

Run::

    .venv/bin/python benchmarks/network_groups.py --devices 20000 --per-round 10000 --rounds 2
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

from fleet_throughput import sim_raw  # noqa: E402


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--devices", type=int, default=20_000)
    ap.add_argument("--per-round", type=int, default=10_000)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)

    import sim.network as netmod
    from crowdlearn.config import from_dict
    from crowdlearn.data import load_dataset
    from crowdlearn.experiment import Simulation

    ds = load_dataset("digits", seed=args.seed)
    idx = np.random.default_rng(args.seed).integers(0, len(ds.x_train), size=(args.devices, 8))
    sizes: list[int] = []
    active: list[int] = []
    real_fill, real_recompute = netmod._progressive_filling, netmod.Network._recompute

    def fill(lk, cap):
        sizes.append(lk.shape[1])
        return real_fill(lk, cap)

    def recompute(self, ev=None):
        active.append(self._n)
        real_recompute(self, ev)

    netmod._progressive_filling, netmod.Network._recompute = fill, recompute
    try:
        raw = sim_raw(args.devices, args.per_round, args.rounds, "always", args.seed, "digits")
        Simulation(from_dict(raw), parts=list(idx)).run()
    finally:
        netmod._progressive_filling, netmod.Network._recompute = real_fill, real_recompute
    a, s = np.array(active), np.array(sizes)
    print(f"recomputations {a.size}; flowing transfers: mean {a.mean():.0f}, "
          f"median {np.median(a):.0f}, max {a.max()}")
    print(f"refills {s.size}; flows per refill: mean {s.mean():.0f}, median {np.median(s):.0f}, "
          f"p90 {np.percentile(s, 90):.0f}, max {s.max()}")


if __name__ == "__main__":
    main()
