"""Benchmark: the ceiling of running the passes' batches ahead — each started the moment its
membership is settled, known from a first run (an oracle), against the executor's guess.

The executor (``jobs.Executor``'s overlap) runs a pass batch ahead of its read on a worker
thread once a guess says no other pass will join it (``overlap_wait``; four times that while
another pass is still collecting its parts).  How much wall could a better guess win?  This
script records, in a first (cold) epoch, the membership of every batch a read runs (its passes'
collective keys: the simulation's events are the same in every run), then times warm epochs
alternately in one process:

* ``current`` — the executor as it is;
* ``oracle`` — the same, except that a candidate batch whose membership is that of a batch a
  read will run starts at once (the guess skipped), as soon as the worker is free; no batch is
  ever dropped.  Nothing else changes (the candidate is computed where the executor computes
  it), so the difference is the guess alone;

each followed by a centralized Keras epoch (``slicenet_throughput.keras_epoch``; the ratio's
denominator).  Per epoch: wall and process CPU seconds, batches used ahead, the fused trainer's
wall on the loop's thread and on the worker, the loop's wall blocked in pass reads, and
whether the run's metrics rows, accuracy and simulated time equal the first current run's.
``--timeline`` also prints, for the last oracle epoch, the submission count (of pass parts) at
which each batch started ahead and at which its read came: the window a perfect guess has.
``--ab-switch PAIRS`` then times warm epochs (current executor) alternately with the
interpreter's switch interval as it is and at ``--switch`` seconds (0.5 ms) for the whole epoch
(``Simulation.switch_interval_s``, whose default is now 0.2 ms; the same results).

Run::

    .venv/bin/python benchmarks/runahead_ceiling.py [--pairs 3] [--timeline] [--ab-switch 3]
"""

from __future__ import annotations

import argparse
import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))


def _epoch_line(r: dict, k: dict) -> str:
    """One warm epoch ``r`` beside its Keras epoch ``k``: the load, walls, CPU, run-ahead and
    the two ratios."""
    return (f"(load {os.getloadavg()[0]:.2f}): warm epoch {r['wall_s']:.2f} s wall / "
            f"{r['cpu_s']:.2f} s CPU; batches ahead {r['overlap']['used']} used, "
            f"{r['overlap']['discarded']} dropped; trainer on the loop {r['train_loop_s']:.2f} s "
            f"wall, on the worker {r['ahead_s']:.2f} s wall; loop blocked in pass reads "
            f"{r['blocked_s']:.2f} s; Keras {k['wall_s']:.2f} / {k['cpu_s']:.2f} s: ratio "
            f"{r['wall_s'] / k['wall_s']:.2f}, ratio_cpu {r['cpu_s'] / k['cpu_s']:.2f}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--devices", type=int, default=120)
    ap.add_argument("--group-size", type=int, default=10)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--pairs", type=int, default=3)
    ap.add_argument("--timeline", action="store_true")
    ap.add_argument("--ab-switch", type=int, default=0, metavar="PAIRS",
                    help="then PAIRS pairs of warm epochs with the interpreter's switch "
                         "interval as it is and at --switch seconds for the whole epoch")
    ap.add_argument("--switch", type=float, default=0.0005)
    a = ap.parse_args()

    import slicenet_throughput as st

    from crowdlearn.training import jobs
    from crowdlearn.training.jobs import Executor

    state = {"mode": "record", "reads": [], "targets": frozenset(), "events": []}

    def members(batch) -> frozenset:
        return frozenset(jobs._collective(h.job) for h in batch)

    orig_run, orig_ahead = Executor._run_kind, Executor._ahead

    def run_kind(self, kind):
        if kind == "slice_pass":
            if state["mode"] == "record":
                state["reads"].append(members(self._select(kind, jobs._done)[0]))
            else:
                state["events"].append(("read", self._ticks.get(kind, 0)))
        return orig_run(self, kind)

    def ahead(self, kind):
        if state["mode"] == "oracle" and self._next.get(kind) is None and not self._busy():
            # the candidate, computed as _ahead computes it; a read's batch: the guess skipped
            vdone, starting = self._wave_of, set()
            batch, _ = self._select(kind, lambda d: d.state == "done" or d in vdone,
                                    starting=starting)
            ticks = self._ticks.get(kind, 0)
            if batch and members(batch) in state["targets"]:
                ticks, starting = -10 ** 9, set()
            self._next[kind] = (batch, self._wave_count(batch), ticks, starting)
        n = len(self._chain.get(kind, ()))
        orig_ahead(self, kind)
        if len(self._chain.get(kind, ())) > n and state["mode"] != "record":
            state["events"].append(("start", self._ticks.get(kind, 0)))

    Executor._run_kind, Executor._ahead = run_kind, ahead
    try:
        st._header()
        st.simulated_epoch(a.devices, a.group_size, a.seed)       # cold; records the reads
        state["targets"] = frozenset(state["reads"])
        print(f"recorded {len(state['reads'])} pass batches run by reads "
              f"({len(state['targets'])} distinct)")
        first = None
        for pair in range(a.pairs):
            for mode in ("current", "oracle"):
                state["mode"], state["events"] = mode, []
                r = st.simulated_epoch(a.devices, a.group_size, a.seed)
                k = st.keras_epoch(a.seed)
                res = (r["metrics"], r["accuracy"], r["sim_time_s"])
                first = first or res
                print(f"pair {pair + 1} {mode:7s} {_epoch_line(r, k)}; same results: "
                      f"{res == first}")
        if a.timeline:
            print("last oracle epoch, pass submissions at each batch's start ahead / read: "
                  + " ".join(f"{e}@{t}" for e, t in state["events"]))
        state["mode"] = "current"
        from crowdlearn.experiment import Simulation

        before = Simulation.switch_interval_s
        for pair in range(a.ab_switch):
            for value in (None, a.switch):      # None: the interpreter's as it is
                Simulation.switch_interval_s = value
                try:
                    r = st.simulated_epoch(a.devices, a.group_size, a.seed)
                finally:
                    Simulation.switch_interval_s = before
                k = st.keras_epoch(a.seed)
                res = (r["metrics"], r["accuracy"], r["sim_time_s"])
                first = first or res
                shown = f"{sys.getswitchinterval() * 1e3:g}" if value is None else \
                    f"{value * 1e3:g}"
                print(f"switch pair {pair + 1}, {shown} ms {_epoch_line(r, k)}; "
                      f"same results: {res == first}")
    finally:
        Executor._run_kind, Executor._ahead = orig_run, orig_ahead


if __name__ == "__main__":
    main()
