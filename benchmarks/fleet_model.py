"""Measure the fleet model against what it promises (issue 16): churn per task under
cancellations, the diurnal curve's peak and daily mean, each tier's radio power and round trip.

Churn: ``--devices`` devices run 100 s tasks with 50 s idle between them; every other task is
cancelled by its machine after 10 s (a straggler cut off).  A task that runs to its end must drop
out with probability p, a cut one with p/10 (the drop-out moment is uniform over the task), an
idle device never.

Diurnal: ``Sessions`` with 1 h online / 3 h offline (π = 0.25) and 2 h / 1 h (π = 2/3),
``peak_hour = 20``; the share online is sampled every 5 minutes for 3 days from time 0 and its
first daily harmonic fitted: the fitted peak must be ``peak_hour``, the mean π.

Run::

    python benchmarks/fleet_model.py --devices 4000
"""

from __future__ import annotations

import argparse
import math

import networkx as nx
import numpy as np

from sim.availability import Sessions, online_share
from sim.network import build_topology
from sim.profiles import RADIO, TIER_RADIO, TIERS, radio_power_w
from tests.test_driver_churn import Worker, make_driver


def churn_rates(n: int, p: float) -> dict:
    driver, machines = make_driver(
        n, lambda i, reasons: Worker(i, duration=100.0, idle=50.0, cut=lambda k: k % 2 == 0,
                                     cut_after=10.0, reasons=reasons),
        churn=p, churn_offline_s=1.0)
    horizon = 8 * 150.0
    driver.start()
    driver.run(until=horizon)
    c = {"done": 0, "cut": 0, "task": 0, "cut-task": 0, "idle": 0}
    for m in machines.values():
        for what, where, _reason, started in m.log:
            if started is None or started <= horizon - 100.0:   # tasks whose fate is known
                c[what if what != "drop" else where] += 1
    full, cut = c["done"] + c["task"], c["cut"] + c["cut-task"]
    return {"full": full, "full_rate": c["task"] / full, "cut": cut,
            "cut_rate": c["cut-task"] / cut, "idle_drops": c["idle"]}


def diurnal(n: int, means: tuple[float, float], a: float, seed: int) -> tuple[float, float, float]:
    s = Sessions(*means, diurnal_amplitude=a, peak_hour=20.0)
    times = np.arange(0.0, 3 * 86400.0, 300.0)
    share = online_share(s, n, times, np.random.default_rng(seed))
    phase = 2 * math.pi * times / 86400.0
    c, si = 2 * np.mean(share * np.cos(phase)), 2 * np.mean(share * np.sin(phase))
    peak = (math.atan2(si, c) * 24 / (2 * math.pi)) % 24
    return peak, math.hypot(c, si), float(np.mean(share))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--devices", type=int, default=4000)
    args = ap.parse_args()

    print("## Churn under cancellations (100 s tasks, every other one cut after 10 s)")
    print("| p | full tasks | drop-out rate | cut tasks | drop-out rate (expect p/10) | idle drop-outs |")
    print("| --- | --- | --- | --- | --- | --- |")
    for p in (0.05, 0.2, 0.5):
        r = churn_rates(min(args.devices, 1500), p)
        print(f"| {p} | {r['full']} | {r['full_rate']:.4f} | {r['cut']} | {r['cut_rate']:.4f} "
              f"| {r['idle_drops']} |")

    print("\n## Diurnal sessions, peak_hour = 20")
    print("| sessions on / off | π | a | fitted peak (h) | error (min) | swing (target) | daily mean |")
    print("| --- | --- | --- | --- | --- | --- | --- |")
    for means in ((3600.0, 10800.0), (7200.0, 3600.0)):
        pi = means[0] / sum(means)
        for a in (0.3, 0.6, 0.9, 0.99):
            peak, swing, mean = diurnal(args.devices, means, a, seed=11)
            err = ((peak - 20.0 + 12) % 24 - 12) * 60
            print(f"| {means[0] / 3600:g} h / {means[1] / 3600:g} h | {pi:.3f} | {a} | {peak:.3f} "
                  f"| {err:+.1f} | {swing:.4f} ({a * min(pi, 1 - pi):.4f}) | {mean:.4f} |")

    print("\n## Tiers: radio power at the nominal rate, energy per bit, round trip to the server")
    print("| tier | radio | up W | down W | up nJ/bit | down nJ/bit | one-way latency (ms) "
          "| round trip to edge server (ms) |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- |")
    server = TIERS["edge_server"]
    for name, p in TIERS.items():
        rtt = ""
        if name != "edge_server":
            g = build_topology(1, device_up_bps=p.up_bps, device_down_bps=p.down_bps,
                               device_latency_s=p.latency_s, server_latency_s=server.latency_s)
            rtt = 1e3 * (nx.shortest_path_length(g, 0, "server", weight="latency")
                         + nx.shortest_path_length(g, "server", 0, weight="latency"))
            rtt = f"{rtt:.1f}"
        print(f"| {name} | {TIER_RADIO[name]} (cap {RADIO[TIER_RADIO[name]].max_w:g} W) "
              f"| {radio_power_w(p, 'up'):.3f} | {radio_power_w(p, 'down'):.3f} "
              f"| {p.j_per_byte_up / 8 * 1e9:.1f} | {p.j_per_byte_down / 8 * 1e9:.1f} "
              f"| {p.latency_s * 1e3:.2f} | {rtt} |")


if __name__ == "__main__":
    main()
