"""A sweep's wall time with runs side by side: every run with TensorFlow pools of every core (how
sweeps ran before ``training.threads``) against each run with its share of the cores (what a
sweep of several jobs does now), and one job at a time, alternating in one invocation.

Each contender is the command a user types, ``crowdlearn sweep ... --jobs J`` in its own process
(spawning its workers, importing TensorFlow, every run written to a fresh folder), timed from
outside; ``CPU`` is the command's and its children's user + system seconds.  The default workload
is ``examples/fedavg_fashion.toml`` with the small CNN (``model.arch = "cnn"``), 4 rounds, over 6
seeds: 18 s of one run here, long enough for the pools to matter, short enough to repeat.  Prints
each repetition, the medians and ``ratio X`` (share of the cores ÷ every core, both at ``--jobs``;
below 1: the share is faster), and checks that every repetition of a contender gives the same
accuracy in every run (``same numbers``; that a run's ``config.json`` makes it again exactly is
tested in ``tests/test_sweeps.py``).

    .venv/bin/python benchmarks/sweep_threads.py --repeats 2
    .venv/bin/python benchmarks/sweep_threads.py --repeats 3 --set rounds=2 --seeds 4

Figures: ``docs/benchmarks.md`` ("Sweeps: threads per run").
"""

from __future__ import annotations

import argparse
import csv
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CLI = [sys.executable, "-m", "crowdlearn.cli"]


def sweep(out: Path, *, jobs: int, seeds: int, sets: list[str], config: str) -> dict:
    """Run one ``crowdlearn sweep`` command; its wall and CPU seconds and per-run accuracy."""
    cmd = [*CLI, "sweep", config, "--grid", "fedavg.lr=0.1", "--seeds", str(seeds),
           "--jobs", str(jobs), "--out", str(out), "--quiet", "--no-plots"]
    for s in sets:
        cmd += ["--set", s]
    before = os.times()
    load = os.getloadavg()[0]
    t0 = time.perf_counter()
    r = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT)
    wall = time.perf_counter() - t0
    after = os.times()
    if r.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed:\n{r.stderr[-2000:]}")
    cpu = (after.children_user - before.children_user) + \
        (after.children_system - before.children_system)
    with open(out / "sweep.csv") as f:
        acc = {row["run"]: row["final_accuracy"] for row in csv.DictReader(f)}
    return {"wall": wall, "cpu": cpu, "load": load, "accuracy": acc}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--repeats", type=int, default=2, help="alternations (default 2)")
    ap.add_argument("--jobs", type=int, default=os.cpu_count() or 1,
                    help="runs side by side (default: the CPU count)")
    ap.add_argument("--seeds", type=int, default=6, help="runs per sweep (default 6)")
    ap.add_argument("--config", default="examples/fedavg_fashion.toml")
    ap.add_argument("--set", action="append", default=None,
                    help="overrides (default: model.arch=cnn, rounds=4)")
    args = ap.parse_args(argv)
    if args.jobs < 2:
        ap.error("--jobs must be at least 2: the comparison is of runs side by side")
    sets = args.set or ["model.arch=cnn", "rounds=4"]
    cores = os.cpu_count() or 1
    ways = {
        "every core per run": (args.jobs, [*sets, f"training.threads={cores}"]),
        "share of the cores": (args.jobs, sets),
        "one job": (1, sets),
    }
    print(f"{args.seeds} runs of {args.config} {' '.join(sets)}; {cores} cores, "
          f"--jobs {args.jobs}; load average (1 min) {os.getloadavg()[0]:.2f}")
    got: dict[str, list[dict]] = {w: [] for w in ways}
    tmp = Path(tempfile.mkdtemp(prefix="sweep_threads-"))
    try:
        for i in range(args.repeats):
            for name, (jobs, s) in ways.items():
                out = tmp / f"{len(got[name])}-{name.replace(' ', '_')}"
                r = sweep(out, jobs=jobs, seeds=args.seeds, sets=s, config=args.config)
                got[name].append(r)
                print(f"  repeat {i + 1}, {name} (--jobs {jobs}): wall {r['wall']:.1f} s, "
                      f"CPU {r['cpu']:.1f} s, load {r['load']:.2f}", flush=True)
                shutil.rmtree(out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    med = {w: statistics.median(r["wall"] for r in rs) for w, rs in got.items()}
    cpu = {w: statistics.median(r["cpu"] for r in rs) for w, rs in got.items()}
    for w in ways:
        print(f"{w}: median wall {med[w]:.1f} s, CPU {cpu[w]:.1f} s")
    same = all(len({tuple(sorted(r["accuracy"].items())) for r in rs}) == 1
               for rs in got.values())
    print(f"same numbers in every repetition of each contender: {'yes' if same else 'NO'}")
    print(f"ratio_one_job {med['share of the cores'] / med['one job']:.2f}")
    print(f"ratio {med['share of the cores'] / med['every core per run']:.2f}")
    return 0 if same else 1


if __name__ == "__main__":
    sys.exit(main())
