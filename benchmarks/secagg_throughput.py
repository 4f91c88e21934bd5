"""Secure aggregation throughput: one FedAvg round of 100 clients with SecAgg and SecAgg+
against a plain FedAvg round, measured in the same run.

The round: 100 devices × 600 Fashion-MNIST samples (iid), MLP 784-128-64-10 (109,386
parameters), 2 local epochs, batch 32, every device selected (``clients_per_round = 100``), the
settings of ``examples/secagg_fashion.toml`` otherwise.  Each contender is a fresh
``Simulation(...).run()``: config, fleet, the batched TensorFlow training of the 100 devices,
the four SecAgg stages with the real cryptography (X25519, HKDF, AES-GCM shares, AES-128-CTR
masks, Shamir over GF(2^256+297)), unmasking, evaluation.  As in every simulation, each pair's
X25519 key and mask keystream are derived once for both ends (``secagg.SharedCrypto``); the
compute charged to each simulated device is its own operations' calibrated cost.  One plain round first warms TensorFlow up
(not timed); then the contenders run interleaved ``--repeats`` times and the medians are
compared.  Prints ``ratio X`` (SecAgg round wall ÷ plain round wall; target <= 2) last; the
process CPU time of each run is printed too (``ratio_cpu``: less sensitive to other processes on
a shared machine, though TensorFlow's threads count in it).

Run::

    .venv/bin/python benchmarks/secagg_throughput.py              # ~2-4 min on the shared box
    .venv/bin/python benchmarks/secagg_throughput.py --repeats 1 --clients 20   # smoke
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

from crowdlearn.config import apply_overrides, from_dict

try:
    import tomllib
except ModuleNotFoundError:  # pragma: no cover
    import tomli as tomllib

ROOT = Path(__file__).resolve().parents[1]


def config(mode: str, clients: int):
    raw = tomllib.loads((ROOT / "examples" / "secagg_fashion.toml").read_text())
    raw = apply_overrides(raw, ["rounds=1", f"fleet.devices={clients}",
                                f"fedavg.clients_per_round={clients}",
                                f'fedavg.secure_aggregation="{mode}"'])
    return from_dict(raw, base_dir=ROOT / "examples")


def one(mode: str, clients: int) -> dict:
    from crowdlearn.experiment import Simulation
    t0, c0 = time.perf_counter(), time.process_time()
    res = Simulation(config(mode, clients)).run()
    wall, cpu = time.perf_counter() - t0, time.process_time() - c0
    return {"wall": wall, "cpu": cpu, "acc": res.summary["final_accuracy"],
            "expansion": res.summary.get("secagg_expansion"),
            "client_bytes": res.summary.get("secagg_client_bytes_per_round"),
            "ok": res.summary.get("secagg_rounds_ok")}


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--clients", type=int, default=100)
    a = ap.parse_args(argv)
    one("none", a.clients)                                  # warm-up: TF, dataset, calibration
    from crowdlearn.crypto.costs import calibrate
    calibrate()
    runs: dict[str, list] = {"none": [], "secagg": [], "secagg+": []}
    for _ in range(a.repeats):
        for mode in runs:
            runs[mode].append(one(mode, a.clients))
    med = {m: statistics.median(r["wall"] for r in rs) for m, rs in runs.items()}
    cpu = {m: statistics.median(r["cpu"] for r in rs) for m, rs in runs.items()}
    print(f"one round, {a.clients} clients x 109,386-parameter MLP, median of {a.repeats}")
    for m, rs in runs.items():
        r = rs[-1]
        extra = "" if m == "none" else (f"  expansion {r['expansion']:.3f}  client bytes "
                                        f"{r['client_bytes']:,.0f}  rounds ok {r['ok']}")
        walls = ", ".join(f"{x['wall']:.2f}" for x in rs)
        print(f"{m:8s} wall {med[m]:7.2f} s  (runs: {walls})  cpu {cpu[m]:6.2f} s  "
              f"accuracy {r['acc']:.4f}{extra}")
    print(f"ratio_cpu {cpu['secagg'] / cpu['none']:.2f}  ratio_cpu_secagg_plus "
          f"{cpu['secagg+'] / cpu['none']:.2f}")
    print(f"ratio_secagg_plus {med['secagg+'] / med['none']:.2f}")
    print(f"ratio {med['secagg'] / med['none']:.2f}")


if __name__ == "__main__":
    main()
