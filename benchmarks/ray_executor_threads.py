"""Ray training actors with TensorFlow pools of every core against one thread each.

``training.executor = "ray"`` splits a round's training jobs over ``training.ray_actors`` actors.
Each actor asks Ray for ``training.threads`` CPUs (0: one) and runs TensorFlow with that many
threads; before that rule every actor's TensorFlow started a pool of every core of its node, so
two actors on 2 cores asked for 4+ busy threads.  Here the same code runs both ways, alternating,
each a ``crowdlearn run`` command in its own process (Ray started and stopped by it): with
``--set training.threads=<cores>`` (every core per actor, as before) and with the default (one
thread per actor, what a run does now).  The workload is ``examples/fedavg_fashion.toml`` with the
small CNN (``model.arch = "cnn"``), 10 rounds of 10 clients, 2 actors.  Prints each run's wall
time and accuracy, the medians and ``ratio X`` (one thread ÷ every core; below 1: faster).
Ray's worker processes are not this process's children, so only wall time is measured.

    .venv/bin/python benchmarks/ray_executor_threads.py --repeats 2

Figures: ``docs/benchmarks.md`` ("Sweeps: threads per run").
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def run(out: Path, sets: list[str]) -> tuple[float, float]:
    """One ``crowdlearn run`` with the Ray executor; its wall seconds and final accuracy."""
    cmd = [sys.executable, "-m", "crowdlearn.cli", "run", "examples/fedavg_fashion.toml",
           "--set", "model.arch=cnn", "--set", "training.executor=ray",
           "--set", "training.ray_actors=2", "--out", str(out), "--quiet"]
    for s in sets:
        cmd += ["--set", s]
    t0 = time.perf_counter()
    r = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT)
    wall = time.perf_counter() - t0
    if r.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed:\n{r.stderr[-2000:]}")
    return wall, json.loads((out / "summary.json").read_text())["final_accuracy"]


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--rounds", type=int, default=10)
    a = ap.parse_args(argv)
    if a.repeats < 1 or a.rounds < 1:
        ap.error(f"--repeats and --rounds must be >= 1; got {a.repeats}, {a.rounds}")
    cores = os.cpu_count() or 1
    ways = {f"every core per actor (training.threads={cores})": [f"training.threads={cores}"],
            "one thread per actor (training.threads=0, now)": []}
    walls: dict[str, list[float]] = {k: [] for k in ways}
    accs: dict[str, set[float]] = {k: set() for k in ways}
    print(f"{time.strftime('%Y-%m-%d %H:%M:%S UTC', time.gmtime())}; {cores} CPUs; load average "
          f"{os.getloadavg()[0]:.2f}; {a.rounds} rounds, 2 Ray actors", flush=True)
    with tempfile.TemporaryDirectory() as tmp:
        for i in range(a.repeats):
            for k, sets in ways.items():
                wall, acc = run(Path(tmp) / f"{i}-{len(sets)}", [f"rounds={a.rounds}", *sets])
                walls[k].append(wall)
                accs[k].add(acc)
                print(f"repeat {i + 1}, {k}: {wall:.1f} s wall, accuracy {acc:.4f}", flush=True)
    med = {k: statistics.median(v) for k, v in walls.items()}
    for k in ways:
        print(f"{k}: median {med[k]:.1f} s; the same accuracy in every repeat: "
              f"{len(accs[k]) == 1}")
    every, one = med.values()
    print(f"load average at the end {os.getloadavg()[0]:.2f}")
    print(f"ratio {one / every:.2f}   (one thread per actor / every core per actor, wall)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
