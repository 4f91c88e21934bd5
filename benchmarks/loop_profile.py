"""Profile: where the event loop's thread spends a warm 120-device Crowdlearning epoch.

Runs a cold epoch of ``benchmarks/slicenet_throughput.py``'s simulation, then attaches py-spy
to this process (``py-spy record --threads --idle -f raw``, a sampling profiler: it does not
inflate small functions as cProfile does) for one warm epoch, and splits the main thread's
samples inside the run: waiting in pass reads or the executor's close (the trainer at a read,
or the worker), waiting for the metrics row evaluated beside the loop, making the results after
the loop, and the rest, *the loop's own Python* (simulator, network, machines, monitor).  That rest is then
listed by the deepest frame of the project's code (self time) and by function (inclusive).

Needs py-spy (``pip install -e .[bench]``; it must be allowed to read this process, as it is
when it runs as the same user without a ptrace restriction).  Run::

    PYTHONPATH=$PWD .venv/bin/python benchmarks/loop_profile.py [--rate 200] [--top 30]
"""

from __future__ import annotations

import argparse
import collections
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time

_OWN = ("(sim/", "(crowdlearn/", "(slicenet/")


def split(path: str, rate: int) -> dict:
    """The main thread's samples of a raw py-spy file, by where the loop was."""
    where: collections.Counter = collections.Counter()
    own: collections.Counter = collections.Counter()
    inclusive: collections.Counter = collections.Counter()
    with open(path) as f:
        for line in f:
            stack, _, n = line.rstrip().rpartition(" ")
            frames = stack.split(";")
            if "MainThread" not in frames[0] or not any("Simulation._run" in x for x in frames):
                continue
            n = int(n)
            joined = ";".join(frames)
            if "_write_evaluated" in joined:
                where["waiting for the row"] += n
                continue
            if "Driver.run" not in joined:
                where["after the loop (results)"] += n
                continue
            if "Executor._run_kind" in joined or "Executor.close" in joined:
                where["blocked in reads"] += n
                continue
            where["loop's own Python"] += n
            deepest = next((x for x in reversed(frames) if any(o in x for o in _OWN)), "other")
            own[deepest.split(":")[0] + ")"] += n
            for fn in {x.split(":")[0] + ")" for x in frames if any(o in x for o in _OWN)}:
                inclusive[fn] += n
    return {"where": {k: v / rate for k, v in where.items()},
            "self": [(k, v / rate) for k, v in own.most_common()],
            "inclusive": [(k, v / rate) for k, v in inclusive.most_common()]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rate", type=int, default=200, help="samples per second")
    ap.add_argument("--top", type=int, default=30)
    ap.add_argument("--devices", type=int, default=120)
    ap.add_argument("--group-size", type=int, default=10)
    a = ap.parse_args()
    spy = shutil.which("py-spy") or os.path.join(os.path.dirname(sys.executable), "py-spy")
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    from slicenet_throughput import simulated_epoch

    simulated_epoch(a.devices, a.group_size, 0)          # cold: tracing, compilation
    with tempfile.TemporaryDirectory() as tmp:
        out = os.path.join(tmp, "warm.txt")
        p = subprocess.Popen([spy, "record", "--threads", "--idle", "-r", str(a.rate), "-f",
                              "raw", "-o", out, "--pid", str(os.getpid())],
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        time.sleep(1.5)                                    # py-spy attached
        load = os.getloadavg()[0]
        r = simulated_epoch(a.devices, a.group_size, 0)
        p.send_signal(signal.SIGINT)
        p.wait()
        got = split(out, a.rate)
    print(f"warm epoch {r['wall_s']:.2f} s wall / {r['cpu_s']:.2f} s CPU (load {load:.2f} -> "
          f"{os.getloadavg()[0]:.2f}); the benchmark's own timers: loop blocked in pass reads "
          f"{r['blocked_s']:.2f} s, waiting for the row {r['eval_waited_s']:.2f} s")
    print("main thread inside the run, py-spy seconds: " + ", ".join(
        f"{k} {v:.2f}" for k, v in sorted(got["where"].items())))
    print(f"the loop's own Python by the deepest project frame (self), top {a.top}:")
    for k, v in got["self"][:a.top]:
        print(f"  {v:6.2f} s  {k}")
    print(f"the loop's own Python by function (inclusive), top {a.top}:")
    for k, v in got["inclusive"][:a.top]:
        print(f"  {v:6.2f} s  {k}")


if __name__ == "__main__":
    main()
