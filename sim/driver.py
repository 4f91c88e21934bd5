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

import gc
import heapq
import math
from collections.abc import Callable, Iterable, Iterator, Mapping, MutableMapping
from dataclasses import dataclass
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
from sim.parts import PartsBoard
from sim.profiles import DeviceProfile, FleetProfiles


@dataclass(frozen=True)
class FaultParams:
    """Drop-outs that depend on what a device does.

    churn
        Probability that a device given a training task (local training, a slice of a pass; not
        cryptography or evaluation: ``Driver._CHURN_FREE_KINDS``) disconnects at a uniformly
        random moment of that task.  The drop-out belongs to the
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


_REASONS = ("availability", "battery", "churn")
#: generation-2 threshold during :meth:`Driver.run` (CPython's default is 10): see there
_FULL_GC_THRESHOLD = 100
_FLAG_REASON = {"avail_on": "availability", "battery_out": "battery", "churn_out": "churn"}


class Fleet(Mapping):
    """Node id → :class:`DeviceProfile` for a driver, held column-wise.

    Devices ``0 .. n-1`` come from a :class:`~sim.profiles.FleetProfiles` table (row ``i`` is
    device ``i``); a few other nodes (the server) follow as ``extra``.  :meth:`from_mapping`
    turns any ``{node: profile}`` into one (a dictionary then maps nodes to rows).

    Examples
    --------
    >>> from sim.profiles import TIERS, FleetProfiles
    >>> f = Fleet(FleetProfiles.from_profiles([TIERS["low_end"]] * 3), {"server": TIERS["edge_server"]})
    >>> list(f), f.row_of(2), f.row_of("server"), f[1].tier
    ([0, 1, 2, 'server'], 2, 3, 'low_end')
    """

    def __init__(self, table: FleetProfiles, extra: Mapping[NodeId, DeviceProfile] = {}, *,
                 nodes: list | None = None):
        self.table = table
        self.extra = dict(extra)
        self._n = len(table)
        self._nodes = nodes                           # None: rows 0..n-1 are the ints 0..n-1
        self._index = {node: k for k, node in enumerate(nodes)} if nodes is not None else {}
        for k, node in enumerate(self.extra):
            self._index[node] = self._n + k
        ext = list(self.extra.values())
        self.columns = {
            name: np.concatenate([table.columns[name],
                                  np.array([getattr(p, name) for p in ext],
                                           dtype=table.columns[name].dtype)])
            for name in FleetProfiles.FIELDS}

    @classmethod
    def from_mapping(cls, profiles: Mapping[NodeId, DeviceProfile]) -> Fleet:
        if isinstance(profiles, Fleet):
            return profiles
        nodes = list(profiles)
        return cls(FleetProfiles.from_profiles([profiles[k] for k in nodes]), nodes=nodes)

    @property
    def rows(self) -> int:
        return self._n + len(self.extra)

    def row_of(self, node: NodeId) -> int | None:
        """The row of ``node``, or None if it is not in the fleet."""
        if self._nodes is None:
            if type(node) is int:
                return node if 0 <= node < self._n else None
            if isinstance(node, np.integer) and 0 <= node < self._n:
                return int(node)
        try:
            return self._index.get(node)
        except TypeError:          # an unhashable id is in no fleet
            return None

    def node_at(self, row: int) -> NodeId:
        if row >= self._n:
            return list(self.extra)[row - self._n]
        return row if self._nodes is None else self._nodes[row]

    def profile(self, row: int) -> DeviceProfile:
        if row >= self._n:
            return list(self.extra.values())[row - self._n]
        return self.table[row]

    def __getitem__(self, node: NodeId) -> DeviceProfile:
        row = self.row_of(node)
        if row is None:
            raise KeyError(node)
        return self.profile(row)

    def __iter__(self) -> Iterator[NodeId]:
        yield from (range(self._n) if self._nodes is None else self._nodes)
        yield from self.extra

    def __len__(self) -> int:
        return self.rows

    def __contains__(self, node: object) -> bool:
        return self.row_of(node) is not None


class LazyMachines(Mapping):
    """Node id → machine, where the devices' machines are made on first use.

    A fleet of millions holds a machine only for the devices that took part in something:
    ``make(node)`` builds device ``node``'s machine the first time the driver has an input for
    it.  The driver then delivers ``Start()`` to the new machine before that input, so a machine
    sees the same inputs in the same order as if it had existed from the start; it must
    therefore be one whose ``Start`` and ``Disconnected`` have no effect and arm no timer until
    other inputs (as a FedAvg client), since its ``Start`` arrives later in simulated time and
    neither is delivered to a machine that does not exist yet.

    Parameters
    ----------
    fixed
        Machines that exist from the start (the server).
    make
        ``make(node) -> Machine`` for the lazy ones.
    nodes
        The lazy nodes (e.g. ``range(n)``).
    park, unpark
        Optional: ``park(machine)`` returns a compact state of a machine that is idle (or None
        if it is not), and ``unpark(node, state)`` rebuilds the machine from it.  The driver
        parks a lazy machine after each input it handles, so a fleet holds machines only for
        devices with something in flight.

    Examples
    --------
    >>> from sim.machine import Machine
    >>> m = LazyMachines({}, Machine, range(3))
    >>> len(m), m.made, m[2].node_id, m.made
    (3, 0, 2, 1)
    """

    def __init__(self, fixed: Mapping[NodeId, Machine], make: Callable[[NodeId], Machine],
                 nodes: Iterable[NodeId], *, park: Callable[[Machine], Any] | None = None,
                 unpark: Callable[[NodeId, Any], Machine] | None = None):
        if (park is None) != (unpark is None):
            raise ValueError("LazyMachines needs both park and unpark, or neither")
        self.fixed = dict(fixed)
        self.make = make
        self.park, self.unpark = park, unpark
        self._parked: dict[NodeId, Any] = {}
        self.nodes = nodes if isinstance(nodes, range) else list(nodes)
        self._lazy = set(self.nodes) if not isinstance(nodes, range) else None
        self._made: dict[NodeId, Machine] = {}

    @property
    def made(self) -> int:
        """How many lazy machines exist so far (parked ones included)."""
        return len(self._made) + len(self._parked)

    def is_lazy(self, node: NodeId) -> bool:
        if node in self.fixed:
            return False
        if self._lazy is not None:
            return node in self._lazy
        return isinstance(node, (int, np.integer)) and not isinstance(node, bool) \
            and node in self.nodes

    def existing(self, node: NodeId) -> Machine | None:
        """The machine if it exists already, parked ones rebuilt (no lazy construction)."""
        m = self.fixed.get(node)
        if m is None:
            m = self._made.get(node)
        if m is None and node in self._parked:
            m = self._made[node] = self.unpark(node, self._parked.pop(node))
        return m

    def settle(self, node: NodeId, machine: Machine) -> None:
        """After an input: park ``machine`` if it is idle, else keep it."""
        if self.park is None or node in self.fixed:
            return
        state = self.park(machine)
        if state is None:
            self._made[node] = machine
        else:
            self._made.pop(node, None)
            self._parked[node] = state

    def __getitem__(self, node: NodeId) -> Machine:
        m = self.existing(node)
        if m is not None:
            return m
        if not self.is_lazy(node):
            raise KeyError(node)
        m = self._made[node] = self.make(node)
        return m

    def __iter__(self) -> Iterator[NodeId]:
        yield from self.nodes
        yield from (k for k in self.fixed if not self.is_lazy(k))

    def __len__(self) -> int:
        return len(self.nodes) + sum(1 for k in self.fixed if not self.is_lazy(k))

    def __contains__(self, node: object) -> bool:
        return node in self.fixed or self.is_lazy(node)


class _Drops(MutableMapping):
    """A device's drop-out counters by reason: a live view of the driver's array."""

    __slots__ = ("_arr", "_row")

    def __init__(self, arr: np.ndarray, row: int):
        self._arr, self._row = arr, row

    def __getitem__(self, reason: str) -> int:
        return int(self._arr[self._row, _REASONS.index(reason)])

    def __setitem__(self, reason: str, value: int) -> None:
        self._arr[self._row, _REASONS.index(reason)] = value

    def __delitem__(self, reason: str) -> None:
        raise TypeError("drop-out counters cannot be deleted")

    def __iter__(self):
        return iter(_REASONS)

    def __len__(self) -> int:
        return len(_REASONS)

    def __repr__(self) -> str:
        return repr(dict(self))


def _column(name: str, kind: type):
    def get(self):
        return kind(getattr(self._driver, name)[self._row])

    def set_(self, value):
        getattr(self._driver, name)[self._row] = value

    return property(get, set_, doc=f"device's ``{name[1:]}`` (a view of the driver's column)")


class DeviceState:
    """One device's state: a view of the driver's columns (``driver.devices[node]``).

    Reading or setting an attribute reads or writes the driver's arrays; ``jobs`` (job id →
    record) exists only while the device has work.
    """

    __slots__ = ("_driver", "_row", "node")

    def __init__(self, driver: Driver, row: int, node: NodeId):
        self._driver, self._row, self.node = driver, row, node

    battery_j = _column("_battery", float)
    avail_on = _column("_avail_on", bool)
    battery_out = _column("_battery_out", bool)
    churn_out = _column("_churn_out", bool)
    online = _column("_online", bool)
    online_since = _column("_online_since", float)
    online_s = _column("_online_s", float)

    @property
    def profile(self) -> DeviceProfile:
        return self._driver.fleet.profile(self._row)

    @property
    def running(self) -> Any:
        """The id of the job on the device's CPU, or None."""
        rec = self._driver._running.get(self._row)
        return None if rec is None else rec.job_id

    @property
    def jobs(self) -> dict:
        return self._driver._jobs.setdefault(self._row, {})

    @property
    def drops(self) -> _Drops:
        return _Drops(self._driver._drops, self._row)

    def __repr__(self) -> str:
        return f"DeviceState({self.node!r}, online={self.online})"


class _Job:
    """A job given to a device: queued, then running on its CPU, then done or cancelled."""

    __slots__ = ("job_id", "job", "handle", "node", "row", "duration", "started", "state")

    def __init__(self, job_id, job, handle, node, row, duration):
        self.job_id, self.job, self.handle = job_id, job, handle
        self.node, self.row, self.duration = node, row, duration
        self.started: float | None = None
        self.state = "queued"


class _Devices(Mapping):
    """``driver.devices``: node → :class:`DeviceState` view, over the whole fleet."""

    def __init__(self, driver: Driver):
        self._driver = driver

    def __getitem__(self, node: NodeId) -> DeviceState:
        row = self._driver.fleet.row_of(node)
        if row is None:
            raise KeyError(node)
        return DeviceState(self._driver, row, node)

    def __iter__(self):
        return iter(self._driver.fleet)

    def __len__(self) -> int:
        return self._driver.fleet.rows

    def __contains__(self, node: object) -> bool:
        return self._driver.fleet.row_of(node) is not None

    def snapshot(self) -> dict:
        """Copies of the columns a per-device table needs (see ``Monitor.device_rows``)."""
        d, fleet = self._driver, self._driver.fleet
        extra = list(fleet.extra.values())
        tiers = list(fleet.table.tiers) + [p.tier for p in extra]
        tier = np.concatenate([fleet.table.tier_index,
                               np.arange(len(fleet.table.tiers), len(tiers))]).astype(np.int32)
        return {"tiers": tiers, "tier": tier, "online_s": d._online_s.copy(),
                "drops": d._drops.copy(), "row_of": fleet.row_of}


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
        Node id → device profile, for every node that computes (the server too); a
        :class:`Fleet` holds a large fleet column-wise.
    machines
        A dict, or a :class:`LazyMachines` whose device machines are made on first use.
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
        self._chains: dict = {}         # a declared latency chain -> its price (routes are fixed)
        self.machines = machines if isinstance(machines, LazyMachines) else dict(machines)
        self.executor = executor
        self.monitor = monitor
        self.parts = PartsBoard()       # models reported in parts, joined before the monitor
        self.availability = availability or AlwaysOn()
        self.faults = faults
        self.rng = rng
        self.server = server
        self.halted = env.event()
        self._timers: dict[NodeId, tuple[float | None, int]] = {}
        # Every device's state is a row of these columns; only devices with work hold a CPU
        # (simpy.Resource) and a job table, in the dictionaries below.
        self.fleet = fleet = Fleet.from_mapping(profiles)
        rows = fleet.rows
        cols = fleet.columns
        self._flops, self._memory = cols["flops"], cols["memory_bytes"]
        self._battery_full, self._j_per_flop = cols["battery_j"], cols["j_per_flop"]
        self._j_up, self._j_down = cols["j_per_byte_up"], cols["j_per_byte_down"]
        lo, hi = faults.initial_battery
        # one draw per node in fleet order, as one scalar draw each would give
        frac = rng.uniform(lo, hi, size=rows) if hi > lo else lo
        self._battery = self._battery_full * frac
        self._avail_on = np.ones(rows, dtype=bool)
        self._battery_out = np.zeros(rows, dtype=bool)
        self._churn_out = np.zeros(rows, dtype=bool)
        self._online = np.zeros(rows, dtype=bool)
        self._online_since = np.zeros(rows)
        self._online_s = np.zeros(rows)
        self._drops = np.zeros((rows, len(_REASONS)), dtype=np.int64)
        self._jobs: dict[int, dict] = {}           # row -> {job id: _Job}, devices with work
        self._running: dict[int, _Job] = {}        # row -> the job on its CPU
        self._queued: dict[int, list] = {}         # row -> jobs waiting for its CPU
        self._server_row = fleet.row_of(server) if server is not None else None
        # infrastructure nodes (e.g. a key transform server) are always on, like the server
        self._infra = frozenset(infrastructure)
        self._infra_rows = frozenset(r for r in (fleet.row_of(n) for n in infrastructure)
                                     if r is not None)
        self.events_handled = 0
        self._avail_heap: list = []
        self._avail_seq = 0
        self._avail_armed: float | None = None
        self._avail_version = 0
        self._avail_busy = False

    def _row(self, node: NodeId) -> int | None:
        return self.fleet.row_of(node)

    def _is_device(self, row: int) -> bool:
        return row != self._server_row and row not in self._infra_rows

    @property
    def is_device(self) -> dict:
        """Node → whether it is a device (not the server or infrastructure); built on access."""
        return {n: n != self.server and n not in self._infra for n in self.fleet}

    # ---------------------------------------------------------------- start / run
    def start(self) -> None:
        """Bring every node up: presence first, then ``Start`` (server last)."""
        now = self.env.now
        server_row = self._server_row
        always = {server_row, *self._infra_rows} - {None}     # the server side: always on
        for row in always:
            self._online[row], self._online_since[row] = True, now
        if type(self.availability) is AlwaysOn:
            # every device online at once and for ever: no draws, no events
            devs = np.ones(self.fleet.rows, dtype=bool)
            devs[list(always)] = False
            self._avail_on[devs] = True
            self._online[devs] = True
            self._online_since[devs] = now
        else:
            self._avail_busy = True     # one timer for the whole heap, armed below
            for row in range(self.fleet.rows):
                if row in always:
                    continue
                node = self.fleet.node_at(row)
                on = bool(self.availability.initially_online(node, self.rng))
                self._avail_on[row] = self._online[row] = on
                self._online_since[row] = now
                self._schedule_availability(node, row)
            self._avail_busy = False
            self._arm_availability(now)
        has_server = self.server in self.machines
        if has_server:
            self._announce(np.flatnonzero(self._online).tolist(), always)
        lazy = isinstance(self.machines, LazyMachines)
        for node in (self.machines.fixed if lazy else self.machines):
            if node == self.server or (lazy and self.machines.is_lazy(node)):
                continue
            row = self._row(node)
            if row is None or self._online[row]:
                self.deliver(node, Start())
        if has_server:
            self.deliver(self.server, Start())

    def _announce(self, rows: list[int], always: set) -> None:
        """``PeerJoined`` for the devices online at start-up, in row order.

        A server machine that defines ``peers_joined(peers, now) -> list[Effect]`` (the same as
        handling ``PeerJoined(p)`` for every ``p`` of ``peers`` in order, as one input) gets the
        devices ``0 .. k-1`` of an array fleet as one ``range``: start-up then costs nothing
        per device that takes no part (``events_handled`` counts it as one input).  Every other
        server gets one ``PeerJoined`` per device, as the machine contract has it.
        """
        rows = [r for r in rows if r not in always]
        server = self.machines.fixed.get(self.server) if isinstance(self.machines, LazyMachines) \
            else self.machines.get(self.server)
        k = 0
        if hasattr(server, "peers_joined") and self.fleet._nodes is None:
            n = min(self.fleet._n, len(rows))
            # the leading rows 0 .. k-1 (ids 0 .. k-1) when they are all online
            if n and rows[n - 1] == n - 1:
                k = n
        if k:
            self.events_handled += 1
            effects = server.peers_joined(range(k), self.env.now)
            if effects:
                self._apply(self.server, effects)
            self._arm_timer(self.server, server)
        for row in rows[k:]:
            self.deliver(self.server, PeerJoined(self.fleet.node_at(row)))

    def run(self, until: float | None = None) -> bool:
        """Run until the protocol halts, events run out, or ``until``; True if it halted."""
        stop: Any = self.halted
        if until is not None and math.isfinite(until):
            stop = self.halted | self.env.timeout(max(0.0, until - self.env.now))
        # A full (generation-2) collection walks every object that outlived the young ones.
        # The driver's and the network's records form no reference cycles (see
        # Transfer.on_done), so at 10,000 devices a round full collections found
        # nothing and cost CPU: they are made ten times rarer for the run (measured in
        # docs/benchmarks.md, issue 12 third pass); young ones, which catch short-lived
        # cycles, keep their thresholds.
        thresholds = gc.get_threshold()
        gc.set_threshold(thresholds[0], thresholds[1], max(thresholds[2], _FULL_GC_THRESHOLD))
        try:
            self.env.run(until=stop)
        except RuntimeError as exc:   # no events left and the stop event never fired
            if "No scheduled events left" not in str(exc):
                raise
        finally:
            gc.set_threshold(*thresholds)
        self.finish()
        return self.halted.triggered

    @property
    def devices(self) -> _Devices:
        """node → :class:`DeviceState` view over the whole fleet (made on each access: held as
        an attribute it would make a reference cycle, and a dropped driver with its fleet's
        columns would wait for the interpreter's full collection)."""
        return _Devices(self)

    def finish(self) -> None:
        """Close the books on online time (idempotent)."""
        now = self.env.now
        on = self._online
        self._online_s[on] += now - self._online_since[on]
        self._online_since[on] = now

    # ---------------------------------------------------------------- event delivery
    def _machine(self, node: NodeId, event: Any) -> Machine | None:
        machines = self.machines
        if not isinstance(machines, LazyMachines):
            return machines.get(node)
        machine = machines.existing(node)
        if machine is None and machines.is_lazy(node):
            if isinstance(event, (Start, Disconnected)):
                return None   # nothing to tell a machine that does not exist yet
            machine = machines[node]
            self._handle(node, machine, Start())   # what it would have seen at the start
        return machine

    def _settle(self, node: NodeId, machine: Machine) -> None:
        if isinstance(self.machines, LazyMachines):
            self.machines.settle(node, machine)

    def deliver(self, node: NodeId, event: Any) -> None:
        machine = self._machine(node, event)
        if machine is None:
            return
        self._handle(node, machine, event)
        self._settle(node, machine)

    def _handle(self, node: NodeId, machine: Machine, event: Any) -> None:
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
                self.monitor.on_report(node, self.parts.see(eff), self.env.now)
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
        row = self._row(node)
        return True if row is None else bool(self._online[row])

    # ---------------------------------------------------------------- messages
    def _send(self, src: NodeId, dst: NodeId, msg: Any, nbytes: int) -> None:
        # rows looked up once per message, here, and carried to the delivery
        row_of, online = self.fleet.row_of, self._online
        s, d = row_of(src), row_of(dst)
        if not ((s is None or online[s]) and (d is None or online[d])):
            self.monitor.on_message_dropped(src, dst, nbytes)
            return
        self.network.transfer(src, dst, nbytes).on_done(
            lambda _ev: self._delivered(src, dst, msg, nbytes, s, d))

    def _delivered(self, src: NodeId, dst: NodeId, msg: Any, nbytes: int, s: int | None,
                   d: int | None) -> None:
        self.monitor.on_transfer(src, dst, nbytes, self.env.now, msg)
        if s is not None:
            self._spend(s, src, nbytes * float(self._j_up[s]))
        if d is not None:
            self._spend(d, dst, nbytes * float(self._j_down[d]))
        if d is None or self._online[d]:
            self.deliver(dst, Received(src, msg))

    # ---------------------------------------------------------------- jobs
    # A device's CPU runs one job at a time, first come first served.  A job is a record and one
    # SimPy timeout (its end, or its churn moment): no process, no Resource, and a device that
    # runs nothing holds nothing.
    def _run_job(self, node: NodeId, job_id: Any, job: Any) -> None:
        row = self._row(node)
        if job.memory_bytes > self._memory[row]:
            self.monitor.on_job_failed(node, "memory")
            self._later(node, JobFailed(job_id, "memory"))
            return
        rec = _Job(job_id, job, self.executor.submit(job), node, row,
                   job.flops / float(self._flops[row]))
        self._jobs.setdefault(row, {})[job_id] = rec
        if row in self._running or self._queued.get(row):
            self._queued.setdefault(row, []).append(rec)
        else:
            self._start_job(rec)

    def _start_job(self, rec: _Job) -> None:
        self._running[rec.row] = rec
        rec.state = "running"
        rec.started = self.env.now
        churn_at = self._churn_moment(rec.row, rec.duration, kind=rec.job.kind)
        if churn_at is not None:
            # The drop-out is part of this task: cancelling the job (a straggler cut off, the
            # device going offline) cancels the drop-out with it, and it can never fire on an
            # idle device.
            ev = self.env.timeout(churn_at)
            ev.callbacks.append(lambda _ev: self._job_churned(rec))
        else:
            ev = self.env.timeout(rec.duration)
            ev.callbacks.append(lambda _ev: self._job_finished(rec))

    def _job_finished(self, rec: _Job) -> None:
        if rec.state != "running":
            return                                  # cancelled meanwhile
        rec.state = "done"
        row, node, job = rec.row, rec.node, rec.job
        self._pop_job(row, rec.job_id)
        # the executor decides by the job's declared kind: training results stay deferred until
        # a machine reads them (all the jobs of a round then run in one batch), others run now
        result = self.executor.complete(rec.handle)
        self._cpu_free(row, rec)
        self._charge_compute(row, node, job.flops, rec.duration)
        wait = self._latency_chain_s(job)
        if wait > 0:        # the CPU is free meanwhile: this is propagation, not compute
            ev = self.env.timeout(wait)
            ev.callbacks.append(lambda _ev: self._online[row]
                                and self.deliver(node, JobDone(rec.job_id, result)))
        elif self._online[row]:
            self.deliver(node, JobDone(rec.job_id, result))

    def _latency_chain_s(self, job: Any) -> float:
        """The latency chain a job declares (``latency_chain = (stages, relay, links)``, e.g. a
        pipelined pass's fill and drain): ``stages`` × the slowest of ``links``' path latencies,
        each ``src → relay → dst`` (or ``src → dst`` if ``relay`` is None), from the topology,
        which no machine knows.  0 for a job that declares none."""
        chain = getattr(job, "latency_chain", None)
        if not chain or not chain[2]:
            return 0.0
        # every participant of a pass declares the same chain: price it once (a pass of n
        # pieces names O(n²) links; pricing each declaration cost 9 % of a Crowdlearning epoch)
        price = self._chains.get(chain)
        if price is None:
            stages, relay, links = chain
            lat = self.network.path_latency
            price = stages * max(lat(a, b) if relay is None else lat(a, relay) + lat(relay, b)
                                 for a, b in links)
            if len(self._chains) >= 4096:
                self._chains.clear()
            self._chains[chain] = price
        return price

    def _job_churned(self, rec: _Job) -> None:
        if rec.state != "running":
            return
        rec.state = "cancelled"
        self._pop_job(rec.row, rec.job_id)          # gone before going offline cancels it
        self._abandon(rec)
        self._set_flag(rec.node, "churn_out", True)
        self._cpu_free(rec.row, rec)

    def _cpu_free(self, row: int, rec: _Job) -> None:
        """``rec`` left the CPU: the next queued job starts, in a later event of this instant
        (so that jobs cancelled in the same breath never start)."""
        if self._running.get(row) is rec:
            del self._running[row]
        if self._queued.get(row):
            ev = self.env.timeout(0)
            ev.callbacks.append(lambda _ev: self._start_next(row))

    def _start_next(self, row: int) -> None:
        queue = self._queued.get(row)
        while queue and row not in self._running:
            rec = queue.pop(0)
            if rec.state == "queued":
                self._start_job(rec)
        if not queue:
            self._queued.pop(row, None)

    def _pop_job(self, row: int, job_id: Any) -> _Job | None:
        jobs = self._jobs.get(row)
        if jobs is None:
            return None
        rec = jobs.pop(job_id, None)
        if not jobs:
            del self._jobs[row]
        return rec

    #: Job kinds that are not training tasks and never draw churn: a protocol's cryptography
    #: around an update (SecAgg's four stages, Phong's encryption) and evaluation.  Churn is
    #: "the probability that a device drops out during a training task"; drawing it for each of
    #: a SecAgg client's five jobs of a round (four of them milliseconds of cryptography) would
    #: multiply the drop-out rate per round by up to five.
    _CHURN_FREE_KINDS = frozenset({"secagg_crypto", "crypto", "eval"})

    def _churn_moment(self, row: int, duration: float, *, kind: str | None = None
                      ) -> float | None:
        """With probability ``churn``, the offset into a task of ``duration`` seconds at which
        the device drops out (uniform over the task); None if it does not.

        Only an online device doing a training task (a job whose ``kind`` is not in
        ``_CHURN_FREE_KINDS``) of positive length can churn; the draws are made from the
        driver's generator in a fixed order (one uniform, then one more if chosen).
        """
        if not (self.faults.churn > 0 and self._is_device(row) and self._online[row]
                and duration > 0 and kind not in self._CHURN_FREE_KINDS):
            return None
        if self.rng.random() >= self.faults.churn:
            return None
        return float(self.rng.uniform(0.0, duration))

    def _abandon(self, rec: _Job) -> None:
        """Drop a job that started but will not finish; charge the part of it that ran."""
        self.executor.cancel(rec.handle)
        ran = self.env.now - rec.started
        frac = ran / rec.duration if rec.duration > 0 else 0.0
        self._charge_compute(rec.row, rec.node, frac * rec.job.flops, ran)

    def _cancel_job(self, node: NodeId, job_id: Any) -> None:
        rec = self._pop_job(self._row(node), job_id)
        if rec is None or rec.state not in ("queued", "running"):
            return
        if rec.state == "queued":
            rec.state = "cancelled"
            self.executor.cancel(rec.handle)
            return
        rec.state = "cancelled"
        self._abandon(rec)
        self._cpu_free(rec.row, rec)

    def _charge_compute(self, row: int, node: NodeId, flops: float, seconds: float) -> None:
        energy = flops * float(self._j_per_flop[row])
        self.monitor.on_compute(node, flops, seconds, energy)
        self._spend(row, node, energy)

    def _spend(self, row: int, node: NodeId, joules: float) -> None:
        self.monitor.on_energy(node, joules)
        if not self.faults.battery:
            return
        full = float(self._battery_full[row])
        if not math.isfinite(full):
            return
        self._battery[row] -= joules
        if self._battery[row] < self.faults.battery_min_fraction * full \
                and not self._battery_out[row]:
            self._set_flag(node, "battery_out", True)

    # ---------------------------------------------------------------- presence
    # Availability transitions wait on one heap of (time, order, row), not one SimPy event per
    # device: a single timer is live, for the earliest, and a batch of transitions due at one
    # instant runs in the order they were scheduled (as SimPy would run their timeouts).
    def _schedule_availability(self, node: NodeId, row: int) -> None:
        now = self.env.now
        t = self.availability.next_change(node, now, bool(self._avail_on[row]), self.rng)
        if not math.isfinite(t):
            return
        when = now + max(0.0, t - now)      # the time a SimPy timeout would fire at
        self._avail_seq += 1
        heapq.heappush(self._avail_heap, (when, self._avail_seq, row))
        if not self._avail_busy:
            self._arm_availability(now)

    def _arm_availability(self, now: float) -> None:
        heap = self._avail_heap
        if heap and (self._avail_armed is None or heap[0][0] < self._avail_armed):
            self._avail_armed = heap[0][0]
            self._avail_version += 1
            ev = self.env.timeout(heap[0][0] - now, self._avail_version)
            ev.callbacks.append(self._availability_due)

    def _availability_due(self, ev) -> None:
        if ev._value != self._avail_version:
            return              # an earlier transition re-armed the timer
        self._avail_armed = None
        heap = self._avail_heap
        now = self.env.now
        last = self._avail_seq  # transitions scheduled from here on wait for a later timer
        self._avail_busy = True
        try:
            while heap and heap[0][0] <= now and heap[0][1] <= last:
                _, _, row = heapq.heappop(heap)
                node = self.fleet.node_at(row)
                self._set_flag(node, "avail_on", not self._avail_on[row])
                self._schedule_availability(node, row)
        finally:
            self._avail_busy = False
        self._arm_availability(now)

    def _set_flag(self, node: NodeId, flag: str, value: bool) -> None:
        row = self._row(node)
        col = getattr(self, "_" + flag)
        if bool(col[row]) == value:
            return
        col[row] = value
        if flag == "battery_out" and value:
            self._come_back_after(node, "battery_out", self.faults.recharge_s, recharge=True)
        elif flag == "churn_out" and value:
            delay = self.rng.exponential(self.faults.churn_offline_s)
            self._come_back_after(node, "churn_out", delay)
        now_online = bool(self._avail_on[row] and not self._battery_out[row]
                          and not self._churn_out[row])
        if now_online == self._online[row]:
            return
        reason = _FLAG_REASON[flag]
        if now_online:
            self._go_online(row, node)
        else:
            self._drops[row, _REASONS.index(reason)] += 1
            self._go_offline(row, node, reason)

    def _come_back_after(self, node: NodeId, flag: str, delay: float, recharge: bool = False):
        ev = self.env.timeout(delay)

        def back(_ev):
            if recharge:
                row = self._row(node)
                self._battery[row] = self._battery_full[row]
            self._set_flag(node, flag, False)

        ev.callbacks.append(back)

    def _go_offline(self, row: int, node: NodeId, reason: str) -> None:
        now = self.env.now
        self._online[row] = False
        self._online_s[row] += now - self._online_since[row]
        for tr in self.network.cancel_all(node):
            # bytes pushed before the cut cost radio energy but deliver no message
            sent = float(tr.delivered)
            self.monitor.on_partial_transfer(tr.src, tr.dst, sent)
            for end, per_byte in ((tr.src, self._j_up), (tr.dst, self._j_down)):
                r = self._row(end)
                if r is not None and sent:
                    self._spend(r, end, sent * float(per_byte[r]))
        for job_id in list(self._jobs.get(row, ())):
            self._cancel_job(node, job_id)
        self.monitor.on_offline(node, reason, now)
        self.deliver(node, Disconnected())
        if self.server is not None:
            self.deliver(self.server, PeerLost(node))

    def _go_online(self, row: int, node: NodeId) -> None:
        self._online[row] = True
        self._online_since[row] = self.env.now
        if self.server is not None:
            self.deliver(self.server, PeerJoined(node))
        self.deliver(node, Start())
