"""Availability, churn and batteries under the asyncio runtime, on its emulated clock.

The SimPy driver's rules (:mod:`sim.driver`), driven by :class:`sim.aio.runtime.Clock`: a device
is online while its availability model says so (:mod:`sim.availability`'s public interface:
``initially_online(device, rng)``, ``next_change(device, now, online, rng)``), its battery is not
flat and it has not churned out.  Going offline, the device's :class:`~sim.aio.runtime.Node`
cancels its jobs (charging the part that ran), drops what it was sending or receiving, tells its
own machine ``Disconnected()`` and tells the hub, which tells the server ``PeerLost`` and drops
the envelopes for it while it is away; coming back, it tells the hub (the server gets
``PeerJoined``) and its machine gets ``Start()``.  Its TCP connection stays open meanwhile: the
connection is the testbed's, the presence is the fleet model's.

Draws come from the run's generator in the driver's order where the order is the model's own:
at start-up one ``initially_online`` and one ``next_change`` per device in fleet order, then one
``next_change`` per transition in time order (ties in the order scheduled), so with no churn the
availability schedule is SimPy's draw for draw.  Churn draws (one uniform per training job
started on an online device, one more if it churns, one exponential per drop-out) are taken in
the order the jobs start, which follows message arrival over the sockets: a churned run is not
SimPy's schedule (the same law, other victims).
"""

from __future__ import annotations

import heapq
import math
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np

from sim.machine import NodeId

__all__ = ["Presence"]

_REASON = {"avail_on": "availability", "battery_out": "battery", "churn_out": "churn"}

#: job kinds that never draw churn (the SimPy driver's ``_CHURN_FREE_KINDS``)
CHURN_FREE_KINDS = frozenset({"secagg_crypto", "crypto", "eval"})


class Presence:
    """Which devices are online, on the emulated clock.

    ``devices``: the device ids in fleet order (the server and infrastructure are always on);
    ``availability``, ``faults`` (:class:`sim.driver.FaultParams`), ``rng``: the run's model and
    generator; ``states``: node → a record with ``drops`` (reason → count), ``online_s``,
    ``battery_j`` and ``profile.battery_j`` (the SimPy driver's ``DeviceState``), updated as the
    driver would; ``on_offline(node, reason, now)``: the monitor's hook.
    """

    def __init__(self, devices: list, *, availability, faults, rng: np.random.Generator,
                 states: Mapping[NodeId, Any], on_offline: Callable | None = None):
        self.devices = list(devices)
        self.availability, self.faults, self.rng = availability, faults, rng
        self.states, self.on_offline = states, on_offline
        self.flags: dict[NodeId, dict[str, bool]] = {}
        self.online: dict[NodeId, bool] = {}
        self.since: dict[NodeId, float] = {}
        self.nodes: dict = {}
        self.clock = None
        self._heap: list = []           # (t, seq, node): availability changes, one timer
        self._seq = 0
        self._timer = None
        self.transitions = 0
        self.closed = False

    # ---------------------------------------------------------------- start-up
    def initial(self) -> set:
        """Draw every device's initial state (and its first change), as the driver's start-up
        does; returns the devices offline at the start."""
        for node in self.devices:
            on = bool(self.availability.initially_online(node, self.rng))
            self.flags[node] = {"avail_on": on, "battery_out": False, "churn_out": False}
            self.online[node] = on
            self.since[node] = 0.0
            self._schedule(node, 0.0)
        return {n for n in self.devices if not self.online[n]}

    def start(self, nodes: Mapping, clock) -> None:
        """Drive ``nodes`` (node → :class:`~sim.aio.runtime.Node`) on ``clock``."""
        self.nodes, self.clock = nodes, clock
        self._arm()

    def finish(self, now: float) -> None:
        """Close the books on online time (nothing changes after it)."""
        self.closed = True
        if self._timer is not None:
            self._timer.cancel()
        for node, on in self.online.items():
            if on:
                self.states[node].online_s += now - self.since[node]
                self.since[node] = now

    # ---------------------------------------------------------------- availability
    def _schedule(self, node, now: float) -> None:
        t = self.availability.next_change(node, now, self.flags[node]["avail_on"], self.rng)
        if not math.isfinite(t):
            return
        self._seq += 1
        heapq.heappush(self._heap, (now + max(0.0, t - now), self._seq, node))

    def _arm(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if self._heap and self.clock is not None:
            self._timer = self.clock.call_at(self._heap[0][0], self._due)

    def _due(self) -> None:
        self._timer = None
        now = self._heap[0][0]
        last = self._seq            # changes scheduled from here on wait for a later timer
        while self._heap and self._heap[0][0] <= now and self._heap[0][1] <= last:
            _, _, node = heapq.heappop(self._heap)
            self._set(node, "avail_on", not self.flags[node]["avail_on"], now)
            self._schedule(node, now)
        self._arm()

    # ---------------------------------------------------------------- churn and batteries
    def churn_moment(self, node, duration: float, kind: str | None) -> float | None:
        """With probability ``churn``, the offset into a training job of ``duration`` emulated
        seconds at which ``node`` drops out (uniform); None if it does not."""
        if not (self.faults.churn > 0 and node in self.flags and self.online[node]
                and duration > 0 and kind not in CHURN_FREE_KINDS):
            return None
        if self.rng.random() >= self.faults.churn:
            return None
        return float(self.rng.uniform(0.0, duration))

    def churned(self, node) -> None:
        self._set(node, "churn_out", True, self.clock.now())

    def spend(self, node, joules: float) -> None:
        """``node`` used ``joules``: below ``battery_min_fraction`` of a full battery it goes
        offline for ``recharge_s``, then comes back charged."""
        if not self.faults.battery or node not in self.flags:
            return
        st = self.states[node]
        full = float(st.profile.battery_j)
        if not math.isfinite(full):
            return
        st.battery_j = float(st.battery_j) - joules
        if st.battery_j < self.faults.battery_min_fraction * full \
                and not self.flags[node]["battery_out"]:
            self._set(node, "battery_out", True, self.clock.now())

    def _back_after(self, node, flag: str, delay: float, *, recharge: bool = False) -> None:
        def back():
            if recharge:
                st = self.states[node]
                st.battery_j = float(st.profile.battery_j)
            self._set(node, flag, False, self.clock.now())
        self.clock.call_at(self.clock.now() + delay, back)

    # ---------------------------------------------------------------- transitions
    def _set(self, node, flag: str, value: bool, now: float) -> None:
        if self.closed:
            return
        f = self.flags[node]
        if f[flag] == value:
            return
        f[flag] = value
        if flag == "battery_out" and value:
            self._back_after(node, flag, self.faults.recharge_s, recharge=True)
        elif flag == "churn_out" and value:
            self._back_after(node, flag, float(self.rng.exponential(self.faults.churn_offline_s)))
        on = f["avail_on"] and not f["battery_out"] and not f["churn_out"]
        if on == self.online[node]:
            return
        self.transitions += 1
        self.online[node] = on
        nd = self.nodes.get(node)
        st = self.states[node]
        if on:
            self.since[node] = now
            if nd is not None:
                nd.go_online()
        else:
            reason = _REASON[flag]
            st.drops[reason] += 1
            st.online_s += now - self.since[node]
            if self.on_offline is not None:
                self.on_offline(node, reason, now)
            if nd is not None:
                nd.go_offline(reason)
