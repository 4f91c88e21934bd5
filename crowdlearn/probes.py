"""Probe machines for the driver: a worker that runs timed tasks and logs every ending and
drop-out, and a small fleet driving it.

``tests/test_driver_churn.py`` counts churn with them, and ``benchmarks/fleet_model.py`` measures
the fleet model's churn rates over seeds with the same code.  (They live in the package, not in
``tests/``, so that a benchmark never imports a test module.)

>>> driver, machines = make_driver(
...     4, lambda i, reasons: Worker(i, duration=10.0, idle=5.0, reasons=reasons),
...     churn=0.0, churn_offline_s=1.0, seed=0)
>>> driver.start()
>>> _ = driver.run(until=40.0)
>>> [len(m.log) for m in machines.values()]      # tasks of 10 s, 5 s apart, no churn
[3, 3, 3, 3]
>>> sorted({what for m in machines.values() for what, *_ in m.log})
['done']
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import simpy

from crowdlearn.training.jobs import Executor
from sim.driver import Driver, FaultParams
from sim.machine import CancelJob, Disconnected, JobDone, Machine, RunJob, Start, TimerFired
from sim.monitor import Monitor
from sim.network import Network, build_topology
from sim.profiles import TIERS

__all__ = ["FLOPS", "ReasonMonitor", "Task", "Worker", "make_driver"]

FLOPS = TIERS["mid_range"].flops


@dataclass(frozen=True)
class Task:
    """A job's payload: ``flops`` of work of ``kind`` (what the driver's executor runs; churn is
    drawn only for training kinds), holding ``memory_bytes`` while it runs."""

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
    """A driver over ``n`` devices (machines ``machines_of(i, reasons)``, 1 Mbit/s links, the
    mid-range tier) with churn ``churn``; returns ``(driver, machines)``."""
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
