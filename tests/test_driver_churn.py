"""Churn belongs to its task (sim.driver): cancelled with it, never on an idle device, no hidden state.

A device given a task drops out at a uniform moment of it with probability ``p``.  These tests
run thousands of devices through tasks that are cut short (stragglers cancelled by their
machine, devices taken offline by their availability trace) and count every drop-out by what the
device was doing when it happened.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pytest
import simpy

from sim.machine import (
    CancelJob,
    Disconnected,
    JobDone,
    Machine,
    RunJob,
    Start,
    TimerFired,
)
from crowdlearn.training.jobs import Executor
from sim.availability import Trace
from sim.driver import Driver, FaultParams
from sim.monitor import Monitor
from sim.network import Network, build_topology
from sim.profiles import TIERS

FLOPS = TIERS["mid_range"].flops


@dataclass(frozen=True)
class Task:
    flops: float
    kind: str = "noop"
    memory_bytes: int = 0


class Worker(Machine):
    """Runs tasks of ``duration`` s back to back with ``idle`` s between them.  Every task whose
    index is in ``cut`` is cancelled by the machine after ``cut_after`` s (a straggler cut off).
    Logs ``(what, where, reason, started)`` for every task ending and every drop-out."""

    def __init__(self, node, *, duration, idle=0.0, cut=lambda k: False, cut_after=0.0,
                 reasons):
        super().__init__(node)
        self.duration, self.idle, self.cut, self.cut_after = duration, idle, cut, cut_after
        self.reasons = reasons
        self.k = 0              # tasks begun
        self.task = None        # (job id, is cut, start time) while a task runs
        self.timer = None
        self.log = []
        self.starts = []

    def _begin(self, now):
        self.k += 1
        cut = self.cut(self.k)
        self.task = (self.k, cut, now)
        self.timer = now + self.cut_after if cut else None
        return [RunJob(self.k, Task(self.duration * FLOPS))]

    def _rest(self, now):
        self.task = None
        self.timer = now + self.idle
        return []

    def handle(self, event, now):
        if isinstance(event, Start):
            self.starts.append(now)
            return self._begin(now)
        if isinstance(event, JobDone):
            self.log.append(("done", self.task[1], None, self.task[2]))
            return self._rest(now)
        if isinstance(event, TimerFired):
            if self.task is None:
                return self._begin(now)
            job, _, started = self.task
            self.log.append(("cut", True, None, started))
            return [CancelJob(job)] + self._rest(now)
        if isinstance(event, Disconnected):
            where = "idle" if self.task is None else ("cut-task" if self.task[1] else "task")
            started = None if self.task is None else self.task[2]
            self.log.append(("drop", where, self.reasons[self.node_id], started))
            self.task, self.timer = None, None
        return []

    def next_timer(self):
        return self.timer


class ReasonMonitor(Monitor):
    """A monitor that also remembers each device's latest drop-out reason."""

    def __init__(self, devices):
        super().__init__(devices)
        self.reasons = {}

    def on_offline(self, node, reason, now):
        super().on_offline(node, reason, now)
        self.reasons[node] = reason


def make_driver(n, machines_of, *, churn, churn_offline_s, availability=None, seed=0):
    env = simpy.Environment()
    net = Network(env, build_topology(n, device_up_bps=1e6, device_down_bps=1e6,
                                      device_latency_s=0.01))
    monitor = ReasonMonitor(range(n))
    machines = {i: machines_of(i, monitor.reasons) for i in range(n)}
    driver = Driver(env, net, machines, {i: TIERS["mid_range"] for i in range(n)},
                    executor=Executor({"noop": lambda jobs: [None] * len(jobs)}),
                    monitor=monitor, availability=availability,
                    faults=FaultParams(churn=churn, churn_offline_s=churn_offline_s),
                    rng=np.random.default_rng(seed), server=None)
    return driver, machines


@pytest.mark.parametrize("p", [0.2, 0.5])
def test_cancelled_stragglers_take_their_churn_with_them(p):
    # Every other task is cut off after 10 % of its 100 s; 50 s idle between tasks.  A task that
    # runs to its end drops out with probability p, a cut one with p * 0.1 (the drop-out moment
    # is uniform over the whole task), and an idle device never.
    n, horizon = 1500, 8 * 150.0
    driver, machines = make_driver(
        n, lambda i, reasons: Worker(i, duration=100.0, idle=50.0, cut=lambda k: k % 2 == 0,
                                     cut_after=10.0, reasons=reasons),
        churn=p, churn_offline_s=1.0)
    driver.start()
    driver.run(until=horizon)
    full = cut = full_drops = cut_drops = idle_drops = all_drops = 0
    for m in machines.values():
        for what, where, reason, started in m.log:
            all_drops += what == "drop"
            idle_drops += where == "idle"
            if started is not None and started > horizon - 100.0:
                continue        # still running at the end: its fate is not known (censored)
            if what == "done":
                full += 1
            elif what == "cut":
                cut += 1
            else:
                assert reason == "churn"            # nothing else takes these devices away
                if where == "task":
                    full, full_drops = full + 1, full_drops + 1
                elif where == "cut-task":
                    cut, cut_drops = cut + 1, cut_drops + 1
    assert idle_drops == 0
    assert sum(d.drops["churn"] for d in driver.devices.values()) == all_drops
    rate_full, rate_cut = full_drops / full, cut_drops / cut
    # binomial standard errors: <= 0.006 (full), <= 0.003 (cut); 5 sigma
    assert rate_full == pytest.approx(p, abs=5 * (p * (1 - p) / full) ** 0.5)
    assert rate_cut == pytest.approx(p * 0.1, abs=5 * (p * 0.1 / cut) ** 0.5)
    assert full > 4 * n and cut > 3 * n


def test_availability_drops_leave_no_hidden_churn():
    # Online for 10 s of every 100 s; each window starts a 100 s task that the availability
    # trace cuts after 10 s.  A churned device stays away (mean 1e6 s).  Every device must come
    # back at every window until it churns, and churn only during its tasks (rate p * 0.1).
    p, n, windows = 0.5, 2000, 10
    trace = Trace({0: [(100.0 * k, 100.0 * k + 10.0) for k in range(windows)]})
    driver, machines = make_driver(
        n, lambda i, reasons: Worker(i, duration=100.0, reasons=reasons),
        churn=p, churn_offline_s=1e6, availability=trace, seed=1)
    driver.start()
    driver.run(until=100.0 * windows)
    tasks = churned = 0
    for i, m in machines.items():
        drops = [(where, reason) for what, where, reason, _ in m.log if what == "drop"]
        assert all(where == "task" for where, _ in drops)         # every drop cut a task
        reasons = [r for _, r in drops]
        first_churn = reasons.index("churn") if "churn" in reasons else None
        came_back = len(m.starts)
        if first_churn is None:
            # never churned: back at the start of every window, offline at every end
            assert m.starts == [100.0 * k for k in range(windows)]
            assert reasons == ["availability"] * windows
            assert driver.devices[i].online_s == pytest.approx(10.0 * windows)
        else:
            assert reasons[first_churn + 1:] == []               # away for good afterwards
            assert m.starts == [100.0 * k for k in range(first_churn + 1)]
            churned += 1
        assert driver.devices[i].drops["churn"] == (first_churn is not None)
        tasks += came_back
    rate = churned / tasks
    assert rate == pytest.approx(p * 0.1, abs=5 * (p * 0.1 / tasks) ** 0.5)


def test_churn_with_no_cancellation_still_drops_at_rate_p():
    n, p = 3000, 0.3
    driver, machines = make_driver(
        n, lambda i, reasons: Worker(i, duration=60.0, idle=1e9, reasons=reasons),
        churn=p, churn_offline_s=1e9)
    driver.start()
    driver.run(until=100.0)
    dropped = sum(1 for m in machines.values() if m.log and m.log[0][0] == "drop")
    done = sum(1 for m in machines.values() if m.log and m.log[0][0] == "done")
    assert dropped + done == n
    assert dropped / n == pytest.approx(p, abs=5 * (p * (1 - p) / n) ** 0.5)


@pytest.mark.parametrize("kind, p_drop", [("noop", 0.5), ("secagg_crypto", 0.0),
                                          ("crypto", 0.0), ("eval", 0.0)])
def test_only_training_tasks_draw_churn(kind, p_drop):
    # Churn is "the probability that a device drops out during a training task": the
    # cryptography around an update (SecAgg's stages, Phong's encryption) and evaluation jobs
    # never draw it, whatever they last.
    class KindWorker(Worker):
        def _begin(self, now):
            self.k += 1
            self.task = (self.k, False, now)
            return [RunJob(self.k, Task(self.duration * FLOPS, kind=kind))]

    n, p = 2000, 0.5
    driver, machines = make_driver(
        n, lambda i, reasons: KindWorker(i, duration=60.0, idle=1e9, reasons=reasons),
        churn=p, churn_offline_s=1e9)
    driver.executor = Executor({kind: lambda jobs: [None] * len(jobs)}, deferred_kinds=())
    driver.start()
    driver.run(until=100.0)
    dropped = sum(1 for m in machines.values() if m.log and m.log[0][0] == "drop")
    done = sum(1 for m in machines.values() if m.log and m.log[0][0] == "done")
    assert dropped + done == n
    if p_drop == 0:
        assert dropped == 0 and sum(d.drops["churn"] for d in driver.devices.values()) == 0
    else:
        assert dropped / n == pytest.approx(p_drop, abs=5 * (p * (1 - p) / n) ** 0.5)
