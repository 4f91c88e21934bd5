"""Run a built :class:`~crowdlearn.experiment.Simulation` under the asyncio runtime
(:mod:`sim.aio.runtime`): the same machines, executor and monitor, over loopback sockets.

The results have the SimPy run's format; ``summary.json`` adds ``runtime = "asyncio"``,
``real_time_s``, ``emulated_time_s`` (``sim_time_s`` is the emulated time, or the real time
without emulation), ``socket_bytes`` (every byte that crossed a socket, framing, handshakes and
both hops of relayed messages included), ``frames_relayed``, ``job_batches``, ``incidents``
(connections dropped for misbehaving) and ``peers_lost``.
"""

from __future__ import annotations

import time
from typing import Any

from sim.aio import runtime as aio


def options(cfg) -> aio.Options:
    r = cfg.runtime
    return aio.Options(time_scale=r.time_scale, batch_window_s=r.batch_window_s,
                       max_frame_bytes=int(r.max_frame_mb * 1e6), timeout_s=r.timeout_s)


def run_asyncio(sim, *, faults=None, capture=None) -> Any:
    """Drive ``sim``'s machines under asyncio and return its :class:`Results`."""
    from crowdlearn.signals import as_interrupts, signal_of

    cfg = sim.config
    wall0 = time.perf_counter()
    fleet = sim.driver.fleet
    machines = sim.driver.machines
    stats = None
    interrupted = False
    sim.signal = None
    try:
        with as_interrupts():
            stats = aio.run(machines, executor=sim.executor, monitor=sim.monitor,
                            profile=lambda node: fleet[node] if node in fleet else None,
                            server=sim.driver.server, options=options(cfg),
                            faults=faults, capture=capture)
    except KeyboardInterrupt as exc:
        interrupted = True
        sim.signal = signal_of(exc)[1]
    emulated = stats.emulated_time_s if stats else 0.0
    sim.halted = bool(stats and stats.halted)
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
                 incidents=stats.incidents, peers_lost=stats.lost)
    s["stopped_by"] = (sim.signal or ("completed" if s["completed"] else
                                      "timeout" if stats and stats.stopped_by == "timeout"
                                      else "stalled"))
    sim.aio_stats = stats
    return results
