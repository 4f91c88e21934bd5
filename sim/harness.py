"""Machines joined by an in-memory wire, driven without SimPy: for hand-driven tests.

:class:`Wire` runs the same machine contract as the SimPy driver (:mod:`sim.driver`), minus the
network, devices and energy: every ``Send`` is encoded with :mod:`sim.wire` and **decoded** on
arrival (so a machine only ever receives what crossed as bytes, as over a real socket), after a
fixed ``latency``; jobs go to a :class:`~sim.machine.JobExecutor` (the same one a simulation
uses) and complete after ``job_time(node, job)`` seconds; timers fire when nothing earlier is
pending.  Time is a plain float.  It is the in-memory pairing of h11's tests (two connections
joined by a list of bytes), for whole protocols.

Examples
--------
>>> from dataclasses import dataclass
>>> from sim import wire
>>> from sim.machine import Halt, Machine, Received, Send, Start
>>> @wire.message(0x7F10)
... @dataclass(frozen=True)
... class Hello:
...     n: int
>>> class Pinger(Machine):
...     def handle(self, event, now):
...         if isinstance(event, Start):
...             return [Send("b", Hello(1))]
...         if isinstance(event, Received):
...             return [Halt()] if event.message.n >= 3 else [Send("b", Hello(event.message.n + 1))]
...         return []
>>> class Echo(Machine):
...     def handle(self, event, now):
...         return [Send(event.src, event.message)] if isinstance(event, Received) else []
>>> w = Wire({"a": Pinger("a"), "b": Echo("b")}, latency=0.5)
>>> w.start(), w.run()
(None, True)
>>> w.now, [(s, d, m.n) for s, d, m, _ in w.sent]
(3.0, [('a', 'b', 1), ('b', 'a', 1), ('a', 'b', 2), ('b', 'a', 2), ('a', 'b', 3), ('b', 'a', 3)])
"""

from __future__ import annotations

import heapq
import itertools
import math
from collections.abc import Callable, Mapping
from typing import Any

from sim import wire
from sim.machine import (
    CancelJob,
    Halt,
    JobDone,
    JobExecutor,
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
from sim.parts import PartsBoard

__all__ = ["Wire"]


class Wire:
    """Drive ``machines`` by hand: messages cross as bytes, jobs run on ``executor``.

    Parameters
    ----------
    machines
        Node id → machine.
    executor
        Who computes job results (``None``: a machine that asks for a job is an error).
    server
        The node told ``PeerJoined`` for every other node at :meth:`start` and ``PeerLost`` by
        :meth:`lose` (``None``: no presence events).
    latency
        Seconds between a ``Send`` and its delivery.
    job_time
        ``job_time(node, job) -> seconds`` a job takes (default: 0).

    Attributes
    ----------
    sent
        ``(src, dst, message as delivered, encoded bytes)`` per delivered message, in order.
    reports
        ``(node, Report)`` in order.
    halted
        Whether a machine emitted ``Halt``.
    """

    def __init__(self, machines: Mapping[NodeId, Machine], *, executor: JobExecutor | None = None,
                 server: NodeId | None = None, latency: float = 0.0,
                 job_time: Callable[[NodeId, Any], float] = lambda node, job: 0.0):
        self.machines = dict(machines)
        self.executor = executor
        self.server = server
        self.latency = float(latency)
        self.job_time = job_time
        self.now = 0.0
        self.sent: list[tuple[NodeId, NodeId, Any, int]] = []
        self.reports: list[tuple[NodeId, Report]] = []
        self.halted = False
        self.offline: set[NodeId] = set()
        self.events_handled = 0
        self._queue: list = []
        self._seq = itertools.count()
        self._timers: dict[NodeId, float] = {}
        self._jobs: dict[tuple[NodeId, Any], Any] = {}
        self._unsent: list[tuple[NodeId, Send]] = []     # deferred values not computed yet
        self._parts = PartsBoard()        # models reported in parts (sim.parts)

    # ------------------------------------------------------------------ driving
    def start(self) -> None:
        """Presence first (``PeerJoined`` to the server), then ``Start`` (server last)."""
        if self.server in self.machines:
            for node in self.machines:
                if node != self.server:
                    self.deliver(self.server, PeerJoined(node))
        for node in self.machines:
            if node != self.server:
                self.deliver(node, Start())
        if self.server in self.machines:
            self.deliver(self.server, Start())

    def run(self, *, until: float = math.inf, max_events: int = 10_000_000) -> bool:
        """Deliver queued events and timers in time order until a ``Halt``, nothing is left,
        ``until`` or ``max_events``; returns whether the protocol halted."""
        for _ in range(max_events):
            if self.halted:
                return True
            t_event = self._queue[0][0] if self._queue else math.inf
            node_t = min(self._timers.items(), key=lambda kv: kv[1], default=(None, math.inf))
            t = min(t_event, node_t[1])
            if t == math.inf and self._unsent:
                raise RuntimeError(f"{len(self._unsent)} messages carry values that are never "
                                   f"computed (first: {type(self._unsent[0][1].message).__name__} "
                                   f"from {self._unsent[0][0]!r})")
            if t == math.inf or t > until:
                return self.halted
            self.now = max(self.now, t)
            if node_t[1] < t_event:
                del self._timers[node_t[0]]
                self.deliver(node_t[0], TimerFired())
            else:
                _, _, node, event = heapq.heappop(self._queue)
                if isinstance(event, tuple):           # a job whose time is over
                    self._job_done(node, *event)
                elif node not in self.offline:
                    self.deliver(node, event)
            if self._unsent:           # try again: other machines' jobs may have arrived
                unsent, self._unsent = self._unsent, []
                for src, eff in unsent:
                    self._apply(src, eff)
        raise RuntimeError(f"no Halt after {max_events} events")

    def lose(self, node: NodeId) -> None:
        """``node`` goes offline for good: its messages are dropped, the server told."""
        self.offline.add(node)
        self._timers.pop(node, None)
        if self.server in self.machines and node != self.server:
            self.deliver(self.server, PeerLost(node))

    def deliver(self, node: NodeId, event: Any) -> None:
        """Hand ``event`` to ``node`` now and apply what it asks for."""
        machine = self.machines[node]
        self.events_handled += 1
        for eff in machine.handle(event, self.now) or ():
            self._apply(node, eff)
        t = machine.next_timer()
        if t is None or node in self.offline:
            self._timers.pop(node, None)
        else:
            self._timers[node] = max(t, self.now)

    # ------------------------------------------------------------------ effects
    def _later(self, t: float, node: NodeId, event: Any) -> None:
        heapq.heappush(self._queue, (t, next(self._seq), node, event))

    def _apply(self, node: NodeId, eff: Any) -> None:
        if isinstance(eff, Send):
            if node in self.offline or eff.dst in self.offline or eff.dst not in self.machines:
                return
            try:
                data = wire.encode(eff.message)
            except wire.NotReady as exc:             # sent once its value is computed
                if not exc.never:
                    self._unsent.append((node, eff))
                return
            msg = wire.decode(data)                  # what crosses is bytes
            self.sent.append((node, eff.dst, msg, len(data)))
            self._later(self.now + self.latency, eff.dst, Received(node, msg))
        elif isinstance(eff, RunJob):
            if self.executor is None:
                raise RuntimeError(f"{node!r} asked for a job but the Wire has no executor")
            handle = self.executor.submit(eff.job)
            self._jobs[(node, eff.job_id)] = handle
            self._later(self.now + self.job_time(node, eff.job), node, (eff.job_id,))
        elif isinstance(eff, CancelJob):
            handle = self._jobs.pop((node, eff.job_id), None)
            if handle is not None:
                self.executor.cancel(handle)
        elif isinstance(eff, Report):
            self.reports.append((node, self._parts.see(eff)))
        elif isinstance(eff, Halt):
            self.halted = True
        else:
            raise TypeError(f"unknown effect {eff!r} from {node!r}")

    def _job_done(self, node: NodeId, job_id: Any) -> None:
        handle = self._jobs.pop((node, job_id), None)
        if handle is None or node in self.offline:       # cancelled, or its device is gone
            return
        self.deliver(node, JobDone(job_id, self.executor.complete(handle)))
