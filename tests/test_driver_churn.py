"""Churn belongs to its task (sim.driver): cancelled with it, never on an idle device, no hidden state.

A device given a task drops out at a uniform moment of it with probability ``p``.  These tests
run thousands of devices through tasks that are cut short (stragglers cancelled by their
machine, devices taken offline by their availability trace) and count every drop-out by what the
device was doing when it happened.
"""

from __future__ import annotations

import pytest

from crowdlearn.probes import FLOPS, Task, Worker, make_driver
from crowdlearn.training.jobs import Executor
from sim.availability import Trace
from sim.machine import RunJob


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
