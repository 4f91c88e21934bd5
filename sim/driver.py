"""The SimPy driver: runs sans-I/O machines in simulated time on a fleet and a network.

The driver owns everything physical: which devices are online, their CPUs, batteries and links.
Machines only see events.  It turns effects into simulated work:

* ``Send``     → a flow on :class:`sim.network.Network` of ``len(wire.encode(msg))`` bytes; the
  message is delivered as ``Received`` when its last byte arrives;
* ``RunJob``   → the job holds the device's CPU for ``job.flops / profile.flops`` seconds; its
  result is computed lazily (and in batches) by the :class:`~sim.machine.JobExecutor`;
* ``Report``   → the :class:`sim.monitor.Monitor`;
* ``Halt``     → the run stops.

A device is online when its availability model says so, its battery is not flat and it has not
churned out.  Going offline cancels its transfers and jobs, tells its own machine
``Disconnected()`` and tells the server ``PeerLost``.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import simpy

from sim import wire
from sim.availability import AlwaysOn, Availability
from sim.machine import (
    CancelJob,
    Disconnected,
    Halt,
    JobDone,
    JobExecutor,
    JobFailed,
    Machine,
    NodeId,
    PeerJoined,
    PeerLost,
    Received,
    Report,
    RunJob,
    Send,
    Start,
    TimerFired,
)
from sim.monitor import Monitor
from sim.network import Network
from sim.profiles import DeviceProfile


@dataclass(frozen=True)
class FaultParams:
    """Drop-outs that depend on what a device does.

    churn
        Probability that a device given a task (any job: local training, a slice of a pass)
        disconnects at a uniformly random moment of that task.  The drop-out belongs to the
        task: a task that ends first (cancelled as a straggler, or cut by the device going
        offline for another reason) takes its pending drop-out with it, so churn never strikes
        an idle device and a device cut mid-task returns when its availability says so.
    churn_offline_s
        Mean (exponential) time a churned device stays away.
    battery
        Whether batteries drain (energy per FLOP and per byte) and flat devices drop out.
    battery_min_fraction, recharge_s
        A device whose battery falls below this fraction goes offline for ``recharge_s``.
    initial_battery
        (low, high): initial charge fractions drawn uniformly per device.
    """

    churn: float = 0.0
    churn_offline_s: float = 600.0
    battery: bool = False
    battery_min_fraction: float = 0.05
    recharge_s: float = 3600.0
    initial_battery: tuple[float, float] = (1.0, 1.0)


@dataclass(eq=False)
class DeviceState:
    node: NodeId
    profile: DeviceProfile
    cpu: simpy.Resource
    battery_j: float
    avail_on: bool = True
    battery_out: bool = False
    churn_out: bool = False
    online: bool = False
    online_since: float = 0.0
    online_s: float = 0.0
    jobs: dict = field(default_factory=dict)
    drops: dict = field(default_factory=lambda: {"availability": 0, "battery": 0, "churn": 0})


class Driver:
    """Run machines on a fleet in simulated time.

    Parameters
    ----------
    env, network
        The SimPy environment and the network that carries messages.
    machines
        Node id → machine.  Nodes that appear in ``profiles`` are devices; the others (the
        server) are always online.
    profiles
        Node id → device profile, for every node that computes (the server too).
    executor, monitor
        Who computes job results, and who records measurements.
    availability, faults, rng
        Availability model, fault parameters and the generator for availability, churn and
        battery draws.
    server
        The node that receives ``PeerJoined``/``PeerLost``.
    """

    def __init__(self, env: simpy.Environment, network: Network, machines: Mapping[NodeId, Machine],
                 profiles: Mapping[NodeId, DeviceProfile], *, executor: JobExecutor, monitor: Monitor,
                 availability: Availability | None = None, faults: FaultParams = FaultParams(),
                 rng: np.random.Generator, server: NodeId | None = "server",
                 infrastructure: tuple = ()):
        self.env = env
        self.network = network
        self.machines = dict(machines)
        self.executor = executor
        self.monitor = monitor
        self.availability = availability or AlwaysOn()
        self.faults = faults
        self.rng = rng
        self.server = server
        self.halted = env.event()
        self._timers: dict[NodeId, tuple[float | None, int]] = {}
        self.devices: dict[NodeId, DeviceState] = {}
        for node, prof in profiles.items():
            lo, hi = faults.initial_battery
            frac = rng.uniform(lo, hi) if hi > lo else lo
            self.devices[node] = DeviceState(node, prof, simpy.Resource(env, 1),
                                             battery_j=prof.battery_j * frac)
        # infrastructure nodes (e.g. a key transform server) are always on, like the server
        self.is_device = {n: n != server and n not in infrastructure for n in self.devices}
        self.events_handled = 0

    # ---------------------------------------------------------------- start / run
    def start(self) -> None:
        """Bring every node up: presence first, then ``Start`` (server last)."""
        now = self.env.now
        for node, dev in self.devices.items():
            if not self.is_device[node]:
                dev.online, dev.online_since = True, now
                continue
            dev.avail_on = self.availability.initially_online(node, self.rng)
            dev.online = dev.avail_on
            dev.online_since = now
            self._schedule_availability(node)
        for node, dev in self.devices.items():
            if self.is_device[node] and dev.online and self.server in self.machines:
                self.deliver(self.server, PeerJoined(node))
        for node in self.machines:
            dev = self.devices.get(node)
            if node != self.server and (dev is None or dev.online):
                self.deliver(node, Start())
        if self.server in self.machines:
            self.deliver(self.server, Start())

    def run(self, until: float | None = None) -> bool:
        """Run until the protocol halts, events run out, or ``until``; True if it halted."""
        stop: Any = self.halted
        if until is not None and math.isfinite(until):
            stop = self.halted | self.env.timeout(max(0.0, until - self.env.now))
        try:
            self.env.run(until=stop)
        except RuntimeError as exc:   # no events left and the stop event never fired
            if "No scheduled events left" not in str(exc):
                raise
        self.finish()
        return self.halted.triggered

    def finish(self) -> None:
        """Close the books on online time (idempotent)."""
        now = self.env.now
        for dev in self.devices.values():
            if dev.online:
                dev.online_s += now - dev.online_since
                dev.online_since = now

    # ---------------------------------------------------------------- event delivery
    def deliver(self, node: NodeId, event: Any) -> None:
        machine = self.machines.get(node)
        if machine is None:
            return
        self.events_handled += 1
        effects = machine.handle(event, self.env.now)
        if effects:
            self._apply(node, effects)
        self._arm_timer(node, machine)

    def _apply(self, node: NodeId, effects: list) -> None:
        sizes: dict[int, int] = {}
        for eff in effects:
            if isinstance(eff, Send):
                key = id(eff.message)
                if key not in sizes:   # a broadcast encodes once
                    sizes[key] = wire.size(eff.message)
                self._send(node, eff.dst, eff.message, sizes[key])
            elif isinstance(eff, RunJob):
                self._run_job(node, eff.job_id, eff.job)
            elif isinstance(eff, CancelJob):
                self._cancel_job(node, eff.job_id)
            elif isinstance(eff, Report):
                self.monitor.on_report(node, eff, self.env.now)
            elif isinstance(eff, Halt):
                if not self.halted.triggered:
                    self.halted.succeed()
            else:
                raise TypeError(f"unknown effect {eff!r} from {node!r}")

    def _arm_timer(self, node: NodeId, machine: Machine) -> None:
        t = machine.next_timer()
        armed, version = self._timers.get(node, (None, 0))
        if t == armed:
            return
        version += 1
        self._timers[node] = (t, version)
        if t is None:
            return
        ev = self.env.timeout(max(0.0, t - self.env.now))
        ev.callbacks.append(lambda _ev: self._timer_fired(node, version))

    def _timer_fired(self, node: NodeId, version: int) -> None:
        armed, current = self._timers.get(node, (None, 0))
        if current != version:
            return
        self._timers[node] = (None, version)
        self.deliver(node, TimerFired())

    def _later(self, node: NodeId, event: Any) -> None:
        """Deliver ``event`` at the current time, after the running handler returns."""
        ev = self.env.timeout(0)
        ev.callbacks.append(lambda _ev: self.deliver(node, event))

    def online(self, node: NodeId) -> bool:
        dev = self.devices.get(node)
        return True if dev is None else dev.online

    # ---------------------------------------------------------------- messages
    def _send(self, src: NodeId, dst: NodeId, msg: Any, nbytes: int) -> None:
        if not (self.online(src) and self.online(dst)):
            self.monitor.on_message_dropped(src, dst, nbytes)
            return
        tr = self.network.transfer(src, dst, nbytes)
        tr.done.callbacks.append(lambda _ev: self._delivered(src, dst, msg, nbytes))

    def _delivered(self, src: NodeId, dst: NodeId, msg: Any, nbytes: int) -> None:
        self.monitor.on_transfer(src, dst, nbytes, self.env.now, msg)
        s, d = self.devices.get(src), self.devices.get(dst)
        if s is not None:
            self._spend(s, nbytes * s.profile.j_per_byte_up)
        if d is not None:
            self._spend(d, nbytes * d.profile.j_per_byte_down)
        if self.online(dst):
            self.deliver(dst, Received(src, msg))

    # ---------------------------------------------------------------- jobs
    def _run_job(self, node: NodeId, job_id: Any, job: Any) -> None:
        dev = self.devices[node]
        if job.memory_bytes > dev.profile.memory_bytes:
            self.monitor.on_job_failed(node, "memory")
            self._later(node, JobFailed(job_id, "memory"))
            return
        handle = self.executor.submit(job)
        proc = self.env.process(self._job_process(dev, job_id, job, handle))
        dev.jobs[job_id] = (proc, handle)

    def _job_process(self, dev: DeviceState, job_id: Any, job: Any, handle: Any):
        req = dev.cpu.request()
        started = None
        duration = job.flops / dev.profile.flops
        try:
            yield req
            started = self.env.now
            churn_at = self._churn_moment(dev, duration)
            if churn_at is not None:
                # The drop-out is part of this task: it waits inside the job's own process,
                # so cancelling the job (a straggler cut off, the device going offline)
                # cancels the drop-out with it, and it can never fire on an idle device.
                yield self.env.timeout(churn_at)
                dev.jobs.pop(job_id, None)          # gone before going offline cancels it
                self._abandon(dev, job, handle, started, duration)
                self._set_flag(dev.node, "churn_out", True)
                return
            yield self.env.timeout(duration)
        except simpy.Interrupt:
            if started is not None:
                self._abandon(dev, job, handle, started, duration)
            else:
                self.executor.cancel(handle)
            return
        finally:
            dev.cpu.release(req)
        dev.jobs.pop(job_id, None)
        # the executor decides by the job's declared kind: training results stay deferred until
        # a machine reads them (all the jobs of a round then run in one batch), others run now
        result = self.executor.complete(handle)
        self._charge_compute(dev, job.flops, duration)
        if dev.online:
            self.deliver(dev.node, JobDone(job_id, result))

    def _churn_moment(self, dev: DeviceState, duration: float) -> float | None:
        """With probability ``churn``, the offset into a task of ``duration`` seconds at which
        the device drops out (uniform over the task); None if it does not.

        Only an online device doing a task of positive length can churn; the draws are made
        from the driver's generator in a fixed order (one uniform, then one more if chosen).
        """
        if not (self.faults.churn > 0 and self.is_device[dev.node] and dev.online
                and duration > 0):
            return None
        if self.rng.random() >= self.faults.churn:
            return None
        return float(self.rng.uniform(0.0, duration))

    def _abandon(self, dev: DeviceState, job: Any, handle: Any, started: float,
                 duration: float) -> None:
        """Drop a job that started but will not finish; charge the part of it that ran."""
        self.executor.cancel(handle)
        frac = (self.env.now - started) / duration if duration > 0 else 0.0
        self._charge_compute(dev, frac * job.flops, self.env.now - started)

    def _cancel_job(self, node: NodeId, job_id: Any) -> None:
        dev = self.devices[node]
        entry = dev.jobs.pop(job_id, None)
        if entry is not None and entry[0].is_alive:
            entry[0].interrupt("cancelled")

    def _charge_compute(self, dev: DeviceState, flops: float, seconds: float) -> None:
        energy = flops * dev.profile.j_per_flop
        self.monitor.on_compute(dev.node, flops, seconds, energy)
        self._spend(dev, energy)

    def _spend(self, dev: DeviceState, joules: float) -> None:
        self.monitor.on_energy(dev.node, joules)
        if not self.faults.battery or not math.isfinite(dev.profile.battery_j):
            return
        dev.battery_j -= joules
        if dev.battery_j < self.faults.battery_min_fraction * dev.profile.battery_j \
                and not dev.battery_out:
            self._set_flag(dev.node, "battery_out", True)

    # ---------------------------------------------------------------- presence
    def _schedule_availability(self, node: NodeId) -> None:
        dev = self.devices[node]
        t = self.availability.next_change(node, self.env.now, dev.avail_on, self.rng)
        if not math.isfinite(t):
            return
        ev = self.env.timeout(max(0.0, t - self.env.now))

        def toggle(_ev):
            self._set_flag(node, "avail_on", not dev.avail_on)
            self._schedule_availability(node)

        ev.callbacks.append(toggle)

    def _set_flag(self, node: NodeId, flag: str, value: bool) -> None:
        dev = self.devices[node]
        if getattr(dev, flag) == value:
            return
        setattr(dev, flag, value)
        if flag == "battery_out" and value:
            self._come_back_after(node, "battery_out", self.faults.recharge_s, recharge=True)
        elif flag == "churn_out" and value:
            delay = self.rng.exponential(self.faults.churn_offline_s)
            self._come_back_after(node, "churn_out", delay)
        now_online = dev.avail_on and not dev.battery_out and not dev.churn_out
        if now_online == dev.online:
            return
        reason = {"avail_on": "availability", "battery_out": "battery", "churn_out": "churn"}[flag]
        if now_online:
            self._go_online(dev)
        else:
            dev.drops[reason] += 1
            self._go_offline(dev, reason)

    def _come_back_after(self, node: NodeId, flag: str, delay: float, recharge: bool = False):
        ev = self.env.timeout(delay)

        def back(_ev):
            dev = self.devices[node]
            if recharge:
                dev.battery_j = dev.profile.battery_j
            self._set_flag(node, flag, False)

        ev.callbacks.append(back)

    def _go_offline(self, dev: DeviceState, reason: str) -> None:
        now = self.env.now
        dev.online = False
        dev.online_s += now - dev.online_since
        for tr in self.network.cancel_all(dev.node):
            # bytes pushed before the cut cost radio energy but deliver no message
            sent = float(tr.delivered)
            self.monitor.on_partial_transfer(tr.src, tr.dst, sent)
            for node, per_byte in ((tr.src, "j_per_byte_up"), (tr.dst, "j_per_byte_down")):
                d = self.devices.get(node)
                if d is not None and sent:
                    self._spend(d, sent * getattr(d.profile, per_byte))
        for job_id in list(dev.jobs):
            self._cancel_job(dev.node, job_id)
        self.monitor.on_offline(dev.node, reason, now)
        self.deliver(dev.node, Disconnected())
        if self.server is not None:
            self.deliver(self.server, PeerLost(dev.node))

    def _go_online(self, dev: DeviceState) -> None:
        dev.online = True
        dev.online_since = self.env.now
        if self.server is not None:
            self.deliver(self.server, PeerJoined(dev.node))
        self.deliver(dev.node, Start())
