"""Run a built :class:`~crowdlearn.experiment.Simulation` under the asyncio runtime
(:mod:`sim.aio.runtime`): the same machines, executor and monitor, over loopback sockets.

The results have the SimPy run's format; ``summary.json`` adds ``runtime = "asyncio"``,
``real_time_s``, ``emulated_time_s`` (``sim_time_s`` is the emulated time, or the real time
without emulation), ``socket_bytes`` (every byte that crossed a socket, framing, handshakes and
both hops of relayed messages included), ``frames_relayed``, ``job_batches``, ``incidents``
(connections dropped for misbehaving), ``peers_lost``, ``send_retries`` (encodings tried again:
values not computed yet, :class:`sim.aio.runtime.Outbox`) and ``never_sent`` (messages whose
values were never computed, dropped) and ``direct_frames`` (messages sent over direct
device-to-device connections: Crowdlearning's peer-to-peer mode).
"""

from __future__ import annotations

import time
from typing import Any

import numpy as np

from sim.aio import runtime as aio


def options(cfg) -> aio.Options:
    r = cfg.runtime
    return aio.Options(time_scale=r.time_scale, batch_window_s=r.batch_window_s,
                       max_frame_bytes=int(r.max_frame_mb * 1e6), timeout_s=r.timeout_s)


def _peer_to_peer(cfg) -> bool:
    """Whether the run's devices talk to each other directly (Crowdlearning's peer-to-peer
    mode): their messages then cross direct connections between them, not the hub."""
    return cfg.protocol in ("crowdlearning", "ssgd") and bool(cfg.slicenet.peer_to_peer)


def modelled_presence(cfg) -> bool:
    """Whether devices come and go in ``cfg``'s run (availability model, churn or batteries)."""
    av = cfg.availability
    return av.model != "always" or av.churn > 0 or bool(av.battery)


def _presence(sim):
    """The run's :class:`sim.aio.presence.Presence`: the SimPy driver's availability model,
    fault parameters, generator and device records, driven on the asyncio runtime's clock."""
    from sim.aio.presence import Presence

    drv = sim.driver
    devices = [n for n, is_dev in drv.is_device.items() if is_dev and n in drv.machines]
    return Presence(devices, availability=drv.availability, faults=drv.faults, rng=drv.rng,
                    states=drv.devices, on_offline=sim.monitor.on_offline)


def run_asyncio(sim, *, faults=None, capture=None, **kwargs) -> Any:
    """Drive ``sim``'s machines under asyncio and return its :class:`Results`."""
    from crowdlearn.signals import as_interrupts, signal_of

    cfg = sim.config
    wall0 = time.perf_counter()
    fleet = sim.driver.fleet
    machines = sim.driver.machines
    stats = None
    interrupted = False
    sim.signal = None
    if _peer_to_peer(cfg) and "local" not in kwargs:
        devices = set(range(cfg.fleet.devices))     # device-to-device messages go direct
        kwargs["direct"] = lambda src, dst: src in devices and dst in devices
    presence = None
    if modelled_presence(cfg) and "local" not in kwargs:
        presence = kwargs["presence"] = _presence(sim)
    # the worker reads every result as soon as it submits it: nothing to run ahead of a read
    sim.executor.overlap_kinds = frozenset()
    try:
        with as_interrupts():
            stats = aio.run(machines, executor=sim.executor, monitor=sim.monitor,
                            profile=lambda node: fleet[node] if node in fleet else None,
                            server=sim.driver.server, options=options(cfg),
                            faults=faults, capture=capture, **kwargs)
    except KeyboardInterrupt as exc:
        interrupted = True
        sim.signal = signal_of(exc)[1]
    emulated = stats.emulated_time_s if stats else 0.0
    sim.halted = bool(stats and stats.halted)
    if presence is not None and emulated > 0:
        # the per-device table's online fractions are online seconds over the run's time
        # (the SimPy environment's clock, never started here: moved to the emulated end)
        sim.env.run(until=emulated)
    sim.monitor.flush(emulated)
    results = sim._results(time.perf_counter() - wall0, interrupted)
    s = results.summary
    s["runtime"] = "asyncio"
    s["sim_time_s"] = emulated
    s["signal"] = sim.signal
    if stats is not None:
        s.update(real_time_s=stats.real_time_s, emulated_time_s=emulated,
                 time_scale=cfg.runtime.time_scale, socket_bytes=stats.socket_bytes,
                 frames_relayed=stats.frames_relayed, relayed_bytes=stats.relayed_bytes,
                 job_batches=stats.job_batches, events_handled=stats.events_handled,
                 incidents=stats.incidents, peers_lost=stats.lost, connect_s=stats.connect_s,
                 send_retries=stats.send_retries, never_sent=stats.never_sent,
                 direct_frames=stats.direct_frames)
        if presence is not None:
            s["presence_transitions"] = presence.transitions
    s["stopped_by"] = (sim.signal or ("completed" if s["completed"] else
                                      "timeout" if stats and stats.stopped_by == "timeout"
                                      else "stalled"))
    sim.aio_stats = stats
    return results


# ---------------------------------------------------------------- separate processes
#: Protocols ``serve``/``join`` cannot split over processes, and why: a Crowdlearning pass is
#: one collective computation of the group's parts (``SlicePassJob.collective``), run by the
#: executor of the process that holds every part; devices in separate processes would each
#: need to compute their own slice and exchange the boundary tensors layer by layer.
ONE_PROCESS_ONLY = {
    "crowdlearning": "a pass is one collective job over the group's parts, computed by one "
                     "executor",
    "ssgd": "a pass is one collective job over the group's parts, computed by one executor",
}


def check_separable(cfg) -> None:
    """Raise a :class:`~slicenet.errors.UserError` if ``cfg``'s protocol cannot run as separate
    processes (:data:`ONE_PROCESS_ONLY`).

    >>> from types import SimpleNamespace
    >>> check_separable(SimpleNamespace(protocol="fedavg"))
    >>> check_separable(SimpleNamespace(protocol="ssgd"))
    Traceback (most recent call last):
    ...
    slicenet.errors.UserError: protocol 'ssgd' cannot run as separate processes yet: a pass is one collective job over the group's parts, computed by one executor; run it in one process with crowdlearn run CONFIG --runtime asyncio
    """
    from slicenet.errors import UserError
    if hasattr(cfg, "availability") and modelled_presence(cfg):
        raise UserError("availability, churn and batteries cannot run as separate processes yet "
                        "(one generator draws every device's schedule); run it in one process "
                        "with crowdlearn run CONFIG --runtime asyncio, or set "
                        "availability.model = 'always', churn = 0, battery = false")
    why = ONE_PROCESS_ONLY.get(cfg.protocol)
    if why:
        raise UserError(f"protocol {cfg.protocol!r} cannot run as separate processes yet: {why}; "
                        "run it in one process with crowdlearn run CONFIG --runtime asyncio")


def _secret(cfg) -> bytes:
    """The testbed's key-provisioning secret: every node's X25519 key derives from it and the
    run's seed (:func:`sim.aio.frames.node_key`).  Whoever holds the config can derive every key,
    which is what a testbed on one machine is; a deployment would provision a key per device."""
    import hashlib
    return hashlib.sha256(f"crowdlearn-aio:{cfg.seed}:{cfg.name}".encode()).digest()


def _node_keys(cfg, nodes) -> dict:
    from sim.aio.frames import node_key
    secret = _secret(cfg)
    return {n: node_key(secret, n) for n in nodes}


def roster_keys(roster: dict, devices) -> dict:
    """Device → raw public key for every one of ``devices`` from a roster (device → hex, from
    :func:`sim.aio.keys.read_roster`); raises naming the devices the roster lacks."""
    from slicenet.errors import UserError
    missing = [d for d in devices if d not in roster]
    if missing:
        shown = ", ".join(map(str, missing[:10])) + (" ..." if len(missing) > 10 else "")
        raise UserError(f"the roster lists no key for device(s) {shown}: enrol each with "
                        "crowdlearn join CONFIG --key KEY --enrol ROSTER --device I")
    return {d: bytes.fromhex(roster[d]) for d in devices}


def serve(sim, *, host: str, port: int, on_listening=None, on_started=None,
          roster: dict | None = None) -> Any:
    """Run the server side of ``sim`` (the server and any infrastructure nodes, and the hub) on
    ``host:port``; the devices join from other processes (:func:`join`).  ``roster``: device →
    public key hex of the devices accepted (each proves its key when it connects); ``None``:
    the testbed's keys derived from the config (:func:`_secret`).  Returns the results: every
    message is charged here (the hub sees those it relays to devices); the devices' own compute
    and reports stay in their processes."""
    machines = sim.driver.machines
    local = [n for n in machines if not isinstance(n, int)]      # server, infrastructure
    if roster is None:
        keys, public = _node_keys(sim.config, list(machines)), None
    else:
        keys, public = None, roster_keys(roster, [n for n in machines if n not in local])
    kwargs = dict(local=local, keys=keys, public=public, listen=(host, port),
                  on_listening=on_listening, on_started=on_started)
    return run_asyncio(sim, **kwargs)


class ShardTrainer:
    """A trainer that holds only one device's rows: the schedule's global sample indices are
    mapped to positions in the shard (an index outside it is an error: the device would be
    training on someone else's data)."""

    def __init__(self, make, spec, x, y, shard):
        self.index = np.sort(np.asarray(shard, np.int64))
        self.inner = make(spec, np.ascontiguousarray(x[self.index]),
                          np.ascontiguousarray(y[self.index]))

    def _local(self, batches: np.ndarray) -> np.ndarray:
        b = np.asarray(batches, np.int64)
        pos = np.searchsorted(self.index, np.where(b >= 0, b, 0))
        ok = (b < 0) | ((pos < len(self.index)) & (self.index[np.minimum(pos, len(self.index) - 1)] == b))
        if not ok.all():
            raise ValueError("a training schedule names samples outside this device's shard")
        return np.where(b >= 0, pos, -1)

    def train(self, tasks):
        import dataclasses
        return self.inner.train([dataclasses.replace(t, batches=self._local(t.batches))
                                 for t in tasks])

    def evaluate(self, weight_lists, x, y):
        return self.inner.evaluate(weight_lists, x, y)


def device_simulation(cfg, device: int):
    """Build ``cfg``'s run as device ``device`` sees it: the same machines (same seed), a trainer
    that holds only its own shard, and a dataset whose training rows are only that shard (the
    split itself needs the labels, so they are read, partitioned as the server does and freed)."""
    import dataclasses

    from crowdlearn.experiment import TRAINERS, Simulation

    sim = Simulation(cfg, trainer_factory=lambda spec, x, y: None)
    shard = sim.parts[device]
    ds = sim.dataset
    sim.trainer = ShardTrainer(TRAINERS[cfg.training.backend](), sim.spec, ds.x_train,
                               ds.y_train, shard)
    order = sim.trainer.index
    sim.dataset = dataclasses.replace(ds, x_train=ds.x_train[order], y_train=ds.y_train[order])
    sim.ctx.dataset = sim.dataset
    return sim


def join(cfg, *, host: str, port: int, device: int, key=None) -> dict:
    """Run device ``device`` of ``cfg`` against a :func:`serve` process until it stops the run,
    proving ``key`` (its X25519 private key; ``None``: the testbed's key derived from the
    config)."""
    import asyncio

    sim = device_simulation(cfg, device)
    machines = sim.driver.machines
    if device not in machines:
        raise KeyError(f"device {device} is not in this run (devices 0..{cfg.fleet.devices - 1})")
    fleet = sim.driver.fleet
    if key is None:
        key = _node_keys(cfg, [device])[device]
    out = asyncio.run(aio.join_async(
        device, machines[device], key=key, host=host, port=port, executor=sim.executor,
        monitor=sim.monitor, profile=lambda n: fleet[n] if n in fleet else None,
        options=options(cfg)))
    out["shard_samples"] = int(len(sim.dataset.x_train))
    return out
