"""The asyncio runtime: every node a task with its own TCP connection to a relaying hub.

The machines are the SimPy runtime's, unchanged.  What differs is the physics:

* a ``Send`` becomes an :class:`~sim.aio.frames.Envelope` frame written to the node's socket;
  the hub reads it and writes it to the destination's socket (relayed traffic goes through the
  server side, which owns the hub); the receiver decodes the body, so the machine gets what
  crossed the wire, and the monitor is charged ``len(body)`` (the bytes of the message that
  crossed the socket; framing and envelope bytes are counted apart, as ``socket_bytes``);
* a ``RunJob`` goes to :class:`JobPool`: one worker thread owns the executor, and the jobs that
  become pending within ``batch_window_s`` of each other are submitted together, so the executor
  batches them as under SimPy (one TensorFlow call for a round's training).  The event loop never
  computes: monitor reports (which may evaluate models) run on the same worker, in order;
* timers are ``loop.call_at`` on the node's clock: real time, or, with ``time_scale > 0``,
  emulated time (``time_scale`` emulated seconds per real second), where jobs also last at
  least their modelled time (``flops / device flops``) and each node's uplink and downlink are
  token buckets at its profile's rates, after its profile's latency;
* a connection that ends without a :class:`~sim.aio.frames.Stop` reaches the server node as
  ``PeerLost``; a frame the hub cannot accept (malformed, truncated, oversized, unexpected, a
  wrong ``src``) drops that connection and is recorded in :attr:`Hub.incidents`.

Design: the connection logic is sans-I/O (:mod:`sim.aio.frames`) and the asyncio code only moves
bytes, like h11 and aioquic pair their protocol objects with asyncio transports.
"""

from __future__ import annotations

import asyncio
import collections
import heapq
import math
import os
import threading
import time
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

from sim import wire
from sim.aio import frames
from sim.aio.frames import (
    Challenge,
    Directory,
    Envelope,
    FrameDecoder,
    FrameError,
    Go,
    Halted,
    Hello,
    Presence,
    Proof,
    Stop,
    Welcome,
)
from sim.machine import (
    CancelJob,
    Disconnected,
    Halt,
    JobDone,
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
from sim.parts import PartsBoard

__all__ = ["Options", "Hub", "Node", "JobPool", "Sink", "RunStats", "run", "run_async",
           "join_async", "LOOPBACK"]

#: the only address the runtime binds or connects to unless told otherwise
LOOPBACK = "127.0.0.1"


@dataclass(frozen=True)
class Options:
    """Runtime settings.

    time_scale
        0: real time (jobs take what they take, sockets run at loopback speed); > 0: emulate the
        fleet model, ``time_scale`` emulated seconds per real second (modelled compute time, and
        link latency and bandwidth shaped by token buckets).
    batch_window_s
        Real seconds a new job waits for others to batch with.
    max_frame_bytes, handshake_timeout_s
        Connection limits: a larger frame, or no proof of identity in time, drops the connection.
    timeout_s
        Real seconds after which the run is stopped (``inf``: none).
    quiet_s
        With no ``Halt``: the run ends after this long (real seconds) with nothing in flight.
    """

    time_scale: float = 0.0
    batch_window_s: float = 0.005
    max_frame_bytes: int = frames.MAX_FRAME
    handshake_timeout_s: float = 10.0
    timeout_s: float = math.inf
    quiet_s: float = 0.2


class Clock:
    """Machine time: real seconds since the start, or emulated seconds (``time_scale`` each).

    Emulated time stands still while the process computes for real (:meth:`hold`, by the job
    pool while jobs wait to be batched or run, and while it encodes messages or feeds the
    monitor): under SimPy a computation takes no simulated time beyond its modelled duration,
    so a job ends at its modelled end whatever the executor's real speed, and a deadline the
    SimPy run meets is met at any ``time_scale``.  Events on the emulated clock
    (:meth:`call_at`) wait on one heap, so a pause moves them all.
    """

    def __init__(self, loop: asyncio.AbstractEventLoop, scale: float):
        self.loop, self.scale = loop, float(scale)
        self.t0 = loop.time()
        self.paused_s = 0.0             # real seconds the emulated clock stood still
        self.paused_since: float | None = None
        self._holds = 0
        self._heap: list = []           # [t, seq, fn, args, live]
        self._seq = 0
        self._armed: asyncio.TimerHandle | None = None
        self._armed_at: float | None = None
        self.track_wire = False         # hold while frames between local nodes are in flight
        self.track_presence = False     # ... and presence changes on their way to the server
        self._wire: dict[tuple, collections.deque] = {}

    def now(self) -> float:
        if self.scale <= 0:
            return self.loop.time() - self.t0
        real = (self.paused_since if self.paused_since is not None else self.loop.time())
        t = (real - self.t0 - self.paused_s) * self.scale
        # never past an event not handled yet: a loop timer that fires late (the loop busy, the
        # machine loaded) would otherwise cost emulated time, time_scale times the delay
        return t if self._armed_at is None or t <= self._armed_at else self._armed_at

    def hold(self) -> None:
        """Stop emulated time until as many :meth:`release` calls (real computation runs)."""
        if self.scale <= 0:
            return
        self._holds += 1
        if self._holds == 1:
            self.paused_since = self.loop.time()
            self._disarm()

    def release(self) -> None:
        if self.scale <= 0:
            return
        self._holds -= 1
        if self._holds < 0:
            raise RuntimeError("clock released more often than held")
        if self._holds == 0:
            self.paused_s += self.loop.time() - self.paused_since
            self.paused_since = None
            self._arm()

    @property
    def paused(self) -> bool:
        return self._holds > 0

    #: real seconds after which a frame not seen arriving no longer holds the clock (a frame
    #: lost with its connection)
    STUCK_S = 1.0

    def sent(self, src: NodeId, dst: NodeId) -> None:
        """A frame ``src`` → ``dst`` left (``track_wire``: both ends in this process): the clock
        stands still until it :meth:`arrived` (or ``STUCK_S`` real seconds), so the real time it
        spends in sockets, the hub and the loop costs no emulated time (its emulated time is the
        link model's, already spent in the sender's token bucket)."""
        if self.scale <= 0 or not self.track_wire:
            return
        self.hold()
        token: list = [None]
        token[0] = self.loop.call_later(self.STUCK_S, self._stuck, (src, dst), token)
        self._wire.setdefault((src, dst), collections.deque()).append(token)

    def arrived(self, src: NodeId, dst: NodeId) -> None:
        """The oldest frame in flight ``src`` → ``dst`` arrived (or was dropped)."""
        q = self._wire.get((src, dst))
        if not q:
            return
        token = q.popleft()
        if not q:
            del self._wire[(src, dst)]
        token[0].cancel()
        self.release()

    def _stuck(self, key: tuple, token: list) -> None:
        q = self._wire.get(key)
        if q and token in q:
            q.remove(token)
            if not q:
                del self._wire[key]
            self.release()

    def call_at(self, t: float, fn: Callable, *args) -> _Timer:
        """Call ``fn(*args)`` on the loop when machine time reaches ``t``; a handle whose
        ``cancel()`` forgets it."""
        if self.scale <= 0:
            return self.loop.call_at(self.t0 + t, fn, *args)
        self._seq += 1
        entry = _Timer(t, self._seq, fn, args)
        heapq.heappush(self._heap, entry)
        if self._heap[0] is entry:
            self._arm()
        return entry

    def _disarm(self) -> None:
        if self._armed is not None:
            self._armed.cancel()
            self._armed = self._armed_at = None

    def _arm(self) -> None:
        heap = self._heap
        while heap and not heap[0].live:
            heapq.heappop(heap)
        if self._holds or not heap:
            self._disarm()
            return
        t = heap[0].t
        if t < self.now():               # due already (armed while the clock was held)
            t = self.now()
        if self._armed is not None and self._armed_at == t:
            return
        self._disarm()
        self._armed_at = t
        self._armed = self.loop.call_at(self.t0 + self.paused_s + t / self.scale, self._due, t)

    def _due(self, t: float) -> None:
        self._armed = self._armed_at = None
        late = self.now() - t
        if late > 0:                    # the loop's timer fired late: that time did not pass
            self.paused_s += late / self.scale
        now = t                         # (or a hair early)
        heap = self._heap
        while heap and not self._holds and (heap[0].t <= now or not heap[0].live):
            e = heapq.heappop(heap)
            if e.live:
                e.live = False
                e.fn(*e.args)
        self._arm()


class _Timer:
    """An event on the emulated clock (:meth:`Clock.call_at`)."""

    __slots__ = ("t", "seq", "fn", "args", "live")

    def __init__(self, t: float, seq: int, fn: Callable, args: tuple):
        self.t, self.seq, self.fn, self.args, self.live = t, seq, fn, args, True

    def __lt__(self, other: _Timer) -> bool:
        return (self.t, self.seq) < (other.t, other.seq)

    def cancel(self) -> None:
        self.live = False


# ---------------------------------------------------------------- the worker thread
class JobPool:
    """One worker thread that owns the executor and the monitor: jobs submitted within
    ``window`` seconds of each other are submitted, computed and completed together, and monitor
    calls run there in the order they were made.  Exceptions raised there are kept in
    :attr:`errors` and re-raised by :meth:`check` ("we broke" is never swallowed)."""

    def __init__(self, executor, loop: asyncio.AbstractEventLoop, *, window: float,
                 clock: Clock | None = None):
        self.executor, self.loop, self.window = executor, loop, float(window)
        self.clock = clock              # held (stopped) while the worker has work
        self._work = 0                  # jobs, encodings and monitor calls not finished
        self._thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="crowdlearn-jobs")
        self._pending: list[tuple[Any, asyncio.Future]] = []
        self._flush: asyncio.TimerHandle | None = None
        self._first = 0.0
        self._busy = False
        self.batches = 0
        self.errors: list[BaseException] = []
        self.worker_threads: set[int] = set()
        self._handles: dict[int, tuple] = {}     # id(job) -> (job, executor handle)

    def _begin(self) -> None:
        self._work += 1
        if self._work == 1 and self.clock is not None:
            self.clock.hold()

    def _end(self, n: int = 1) -> None:
        self._work -= n
        if self._work == 0 and self.clock is not None:
            self.clock.release()

    #: a gathering window is extended by each new job, up to this many windows
    MAX_WINDOWS = 20

    def submit(self, job: Any) -> asyncio.Future:
        """Queue ``job``; the batch goes to the worker ``window`` seconds after the last job
        joined it (at most ``MAX_WINDOWS`` windows after the first), and never while the worker
        is still computing the previous batch (the jobs that arrive meanwhile join the next)."""
        fut = self.loop.create_future()
        self._begin()
        now = self.loop.time()
        if not self._pending:
            self._first = now
        self._pending.append((job, fut))
        if self._flush is not None:
            self._flush.cancel()
        at = min(now + self.window, self._first + self.MAX_WINDOWS * self.window)
        self._flush = self.loop.call_at(at, self._run_pending)
        return fut

    def _run_pending(self) -> None:
        self._flush = None
        if self._busy:
            return                      # flushed when the running batch is done
        batch, self._pending = self._pending, []
        live = [(j, f) for j, f in batch if not f.cancelled()]
        if len(live) < len(batch):
            self._end(len(batch) - len(live))
        if not live:
            return
        self.batches += 1
        self._busy = True
        cf = self.loop.run_in_executor(self._thread, self._compute, [j for j, _ in live])

        def done(c: asyncio.Future) -> None:
            self._busy = False
            if self._pending and self._flush is None:
                self._run_pending()
            if c.exception() is not None:
                self.errors.append(c.exception())
                for _, f in live:
                    if not f.done():
                        f.set_exception(c.exception())
            else:
                for (_, f), r in zip(live, c.result(), strict=True):
                    if not f.done():
                        f.set_result(r)
            self.loop.call_soon(self._end, len(live))   # after the results' callbacks ran

        cf.add_done_callback(done)

    def _compute(self, jobs: list) -> list:
        self.worker_threads.add(threading.get_ident())
        ex = self.executor
        handles = [ex.submit(j) for j in jobs]
        for j, h in zip(jobs, handles, strict=True):
            self._handles[id(j)] = (j, h)
        for h in handles:
            try:
                ex.result(h)             # the first read runs every pending job of its kind
            except RuntimeError:
                # one participant's part of a collective computation (a Crowdlearning pass)
                # runs once the others' parts are in: a later batch, or a message's encoding
                if getattr(h.job, "collective", None) is None:
                    raise
        out = []
        for h in handles:
            r = ex.complete(h)
            if wire._is_deferred(r) and getattr(r, "ready", True):
                r.value()                # already computed: the loop never computes
            out.append(r)
        return out

    def run(self, fn: Callable, *args) -> asyncio.Future:
        """``fn(*args)`` on the worker, after everything submitted before; its future (their
        callbacks run on the loop in submission order: the worker is one thread)."""
        def call():
            self.worker_threads.add(threading.get_ident())
            return fn(*args)
        self._begin()
        fut = self.loop.run_in_executor(self._thread, call)
        fut.add_done_callback(lambda f: self.loop.call_soon(self._end))   # after its callbacks
        return fut

    def cancel(self, fut: asyncio.Future, job: Any) -> None:
        """Cancel a job: its future, and its handle in the executor if it was submitted (so
        that a collective it belongs to is known abandoned, as under SimPy)."""
        fut.cancel()

        def cancel_handle():
            jh = self._handles.pop(id(job), None)
            if jh is not None and jh[0] is job:
                self.executor.cancel(jh[1])
        self.call(cancel_handle)

    def forget(self, job: Any) -> None:
        """``job`` is done: its handle is no longer needed for cancelling."""
        self._handles.pop(id(job), None)

    def call(self, fn: Callable, *args) -> None:
        """Run ``fn(*args)`` on the worker, after everything submitted before."""
        def run():
            self.worker_threads.add(threading.get_ident())
            try:
                fn(*args)
            except BaseException as exc:       # noqa: BLE001 - kept and re-raised by check()
                self.errors.append(exc)
            finally:
                try:
                    self.loop.call_soon_threadsafe(self._end)
                except RuntimeError:            # the loop is closed: the run is over
                    pass
        self._begin()
        self._thread.submit(run)

    def drain(self) -> None:
        """Wait (blocking) until the worker is idle."""
        self._thread.submit(lambda: None).result()

    def check(self) -> None:
        if self.errors:
            raise self.errors[0]

    def close(self) -> None:
        if self._flush is not None:
            self._flush.cancel()
        self._thread.shutdown(wait=True)


class Sink:
    """What the nodes tell the monitor, forwarded to the worker thread; plus the fleet's energy
    and speed figures (``profile(node)``: an object with ``flops``, ``memory_bytes``,
    ``j_per_flop``, ``j_per_byte_up``, ``j_per_byte_down``, ``up_bps``, ``down_bps``,
    ``latency_s``, or ``None`` for a node without a profile)."""

    def __init__(self, monitor, pool: JobPool, profile: Callable[[NodeId], Any]):
        self.monitor, self.pool, self.profile = monitor, pool, profile
        self.parts = PartsBoard()       # models reported in parts (sim.parts), joined first
        self.battery: Callable | None = None    # battery(node, joules), on the loop

    def report(self, node, rep: Report, now: float) -> None:
        self.pool.call(self._report, node, rep, now)

    def _report(self, node, rep: Report, now: float) -> None:
        self.monitor.on_report(node, self.parts.see(rep), now)

    def transfer(self, src, dst, nbytes: int, now: float, msg) -> None:
        self.pool.call(self._transfer, src, dst, nbytes, now, msg)
        if self.battery is not None:
            for node, attr in ((src, "j_per_byte_up"), (dst, "j_per_byte_down")):
                p = self.profile(node)
                if p is not None:
                    self.battery(node, nbytes * float(getattr(p, attr)))

    def _transfer(self, src, dst, nbytes, now, msg) -> None:
        self.monitor.on_transfer(src, dst, nbytes, now, msg)
        for node, attr in ((src, "j_per_byte_up"), (dst, "j_per_byte_down")):
            p = self.profile(node)
            if p is not None:
                self.monitor.on_energy(node, nbytes * float(getattr(p, attr)))

    def dropped(self, src, dst, nbytes: int) -> None:
        self.pool.call(self.monitor.on_message_dropped, src, dst, nbytes)

    def compute(self, node, flops: float, seconds: float) -> None:
        p = self.profile(node)
        energy = flops * float(p.j_per_flop) if p is not None else 0.0
        self.pool.call(self._compute, node, flops, seconds, energy)
        if self.battery is not None and energy:
            self.battery(node, energy)

    def _compute(self, node, flops, seconds, energy) -> None:
        self.monitor.on_compute(node, flops, seconds, energy)
        self.monitor.on_energy(node, energy)

    def job_failed(self, node, reason: str) -> None:
        self.pool.call(self.monitor.on_job_failed, node, reason)


# ---------------------------------------------------------------- sending
class _Out:
    """One send on its channel: ``body`` once encoded, ``state`` "encoding" (on the worker),
    "waiting" (its values not computed yet), "held" (behind a waiting one, not encoded yet),
    "never" (its values never will be) or "ready"."""

    __slots__ = ("node", "eff", "body", "state", "was_waiting")

    def __init__(self, node: Node, eff: Send):
        self.node, self.eff, self.body, self.state = node, eff, None, "encoding"
        self.was_waiting = False


class Outbox:
    """Every node's sends of one process, encoded on the worker thread (a message may carry
    values a job computes, and sealing encrypts: the loop never computes), written in the order
    they were sent, first in first out on each channel (sender, receiver).

    A message whose encoding raises :class:`sim.wire.NotReady` (boundary tensors of a
    Crowdlearning pass whose other parts have not arrived) waits, and is encoded again after the
    next completed job or delivered message of any node (:meth:`retry`), as a device sends it
    once its computation is done; the later messages of its channel wait behind it (written
    once it is, in order: a receiver's replay check on sealed payloads expects each channel's
    order), and those sent once it waits are encoded only when their turn comes (so a seal
    numbered at encoding time is numbered in channel order too).  A message that never can be encoded (``never``) is dropped, and so is every message
    still waiting when the run ends (both counted in :attr:`never_sent`)."""

    def __init__(self, pool: JobPool):
        self.pool = pool
        self.channels: dict[tuple, collections.deque] = {}     # (src, dst) -> _Out, in order
        self.waiting: set[tuple] = set()    # channels whose head waits for its values
        self.encoding = 0               # encodings on the worker, not back yet
        self.retries = 0                # encodings tried again
        self.never_sent = 0             # dropped: their values were never computed

    @staticmethod
    def _encode(message) -> bytes | wire.NotReady:
        try:
            return wire.encode(message)
        except wire.NotReady as exc:
            return exc

    def send(self, node: Node, eff: Send) -> None:
        key = (node.node, eff.dst)
        out = _Out(node, eff)
        q = self.channels.setdefault(key, collections.deque())
        q.append(out)
        if len(q) > 1 and (q[0].was_waiting or q[-2].state == "held"):
            out.state = "held"          # encoded when it comes to the head of its channel
        else:
            self._encode_on_worker(key, out)

    def _encode_on_worker(self, key: tuple, out: _Out) -> None:
        out.state = "encoding"
        self.encoding += 1
        self.pool.run(self._encode, out.eff.message).add_done_callback(
            lambda f: self._encoded(key, out, f))

    def after(self, fn: Callable, *args) -> None:
        """``fn(*args)`` on the loop once every send before it was written (or set aside)."""
        self.encoding += 1

        def done(f):
            self.encoding -= 1
            fn(*args)
        self.pool.run(lambda: None).add_done_callback(done)

    def _encoded(self, key: tuple, out: _Out, f: asyncio.Future) -> None:
        self.encoding -= 1
        if f.cancelled():
            return
        if f.exception() is not None:           # we broke: the run re-raises it
            self.pool.errors.append(f.exception())
            return
        body = f.result()
        if isinstance(body, wire.NotReady):
            if body.never:
                out.state = "never"
            else:
                out.state, out.was_waiting = "waiting", True
        else:
            out.body, out.state = body, "ready"
        self._flush(key)

    def _flush(self, key: tuple) -> None:
        """Write the channel's messages from its head on, up to the first not ready."""
        q = self.channels.get(key)
        self.waiting.discard(key)
        while q:
            head = q[0]
            if head.state == "ready":
                q.popleft()
                head.node._send_body(head.eff.dst, head.body)
            elif head.state == "never":
                q.popleft()
                self.never_sent += 1
            elif head.state == "held":
                self._encode_on_worker(key, head)
                return
            else:
                if head.state == "waiting":
                    self.waiting.add(key)
                return
        self.channels.pop(key, None)

    def retry(self) -> None:
        """Encode the waiting messages at the head of their channels again (their nodes still
        running); what waits behind them follows once they are written."""
        keys, self.waiting = self.waiting, set()
        for key in keys:
            q = self.channels.get(key)
            if not q or q[0].state != "waiting":
                continue
            if q[0].node.stopped.is_set():
                self.never_sent += len(q)
                del self.channels[key]
                continue
            self.retries += 1
            self._encode_on_worker(key, q[0])

    def close(self) -> None:
        self.never_sent += sum(len(q) for q in self.channels.values())
        self.channels.clear()
        self.waiting.clear()


# ---------------------------------------------------------------- shaping
class TokenBucket:
    """A link of ``rate`` bytes per emulated second: :meth:`reserve` returns when (machine time)
    ``nbytes`` will have gone through, FIFO after what was reserved before."""

    def __init__(self, rate_bytes_s: float, clock: Clock):
        self.rate, self.clock = float(rate_bytes_s), clock
        self.free_at = 0.0

    def reserve(self, nbytes: int) -> float:
        start = max(self.clock.now(), self.free_at)
        if self.rate > 0 and math.isfinite(self.rate):
            self.free_at = start + nbytes / self.rate
        else:
            self.free_at = start
        return self.free_at


# ---------------------------------------------------------------- the hub
@dataclass
class _Conn:
    node: NodeId | None
    writer: asyncio.StreamWriter
    peer: str
    clean: bool = False         # ended by Stop / the hub, not lost


@dataclass
class HubStats:
    socket_bytes_in: int = 0
    socket_bytes_out: int = 0
    frames_relayed: int = 0
    relayed_bytes: int = 0


class Hub:
    """Accept node connections on 127.0.0.1, check their identities, relay their envelopes.

    ``roster``: node → X25519 public key bytes of every node allowed in; ``server``: the node told
    ``Presence`` (``PeerJoined``/``PeerLost``) of the others; ``expect``: the nodes that must be
    connected before :class:`Go` (default: the whole roster).  ``capture(src, dst, frame)`` if
    given sees every relayed frame (tests: what a relay operator could read).
    """

    def __init__(self, roster: Mapping[NodeId, bytes], *, server: NodeId | None = None,
                 options: Options = Options(), expect=None, key: X25519PrivateKey | None = None,
                 capture: Callable[[NodeId, NodeId, bytes], None] | None = None,
                 on_drop: Callable[[NodeId, NodeId, int], None] | None = None,
                 on_relay: Callable[[NodeId, NodeId, bytes], None] | None = None):
        self.roster = dict(roster)
        self.server = server
        self.options = options
        self.expect = set(self.roster if expect is None else expect)
        self.key = key or X25519PrivateKey.generate()
        self.pub = frames.public_bytes(self.key)
        self.capture, self.on_drop, self.on_relay = capture, on_drop, on_relay
        self.conns: dict[NodeId, _Conn] = {}
        self.away: set = set()          # connected but offline (the fleet model's presence)
        self.listening: dict = {}       # node -> (host, port) it accepts direct connections on
        self.incidents: list[dict] = []
        self.stats = HubStats()
        self.started = asyncio.Event()
        self.halted = asyncio.Event()
        self.stopping = False
        self.ever_joined: set = set()
        self.lost: list = []            # nodes whose connection ended without a Stop
        self._server: asyncio.AbstractServer | None = None
        self._handlers: set[asyncio.Task] = set()
        self.port: int | None = None

    async def start(self, host: str = LOOPBACK, port: int = 0) -> int:
        self._server = await asyncio.start_server(self._accept, host, port)
        self.port = self._server.sockets[0].getsockname()[1]
        return self.port

    def record(self, peer: str, node, reason: str) -> None:
        self.incidents.append({"peer": peer, "node": node, "reason": reason})

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        self._handlers.add(task)
        host, port = writer.get_extra_info("peername")[:2]
        peer = f"{host}:{port}"
        conn = _Conn(None, writer, peer)
        dec = FrameDecoder(max_frame=self.options.max_frame_bytes)
        queue: list[bytes] = []
        try:
            node = await asyncio.wait_for(self._handshake(reader, conn, dec, queue),
                                          self.options.handshake_timeout_s)
            if node is None:
                return
            await self._serve(reader, conn, dec, queue)
        except (FrameError, asyncio.TimeoutError, asyncio.IncompleteReadError) as exc:
            self.record(peer, conn.node, f"{type(exc).__name__}: {exc}")
        except (ConnectionError, OSError) as exc:
            if not self.stopping:
                self.record(peer, conn.node, f"{type(exc).__name__}: {exc}")
        except asyncio.CancelledError:
            if not self.stopping:
                raise
        finally:
            self._handlers.discard(task)
            self._lost(conn)
            writer.close()

    async def _read(self, reader, dec: FrameDecoder, queue: list) -> bytes | None:
        while not queue:
            data = await reader.read(1 << 16)
            if not data:
                dec.close()                 # raises if the stream ended inside a frame
                return None
            self.stats.socket_bytes_in += len(data)
            queue.extend(dec.feed(data))
        return queue.pop(0)

    def _write(self, conn: _Conn, body: bytes) -> None:
        if conn.writer.is_closing():
            return
        data = frames.frame(body)
        self.stats.socket_bytes_out += len(data)
        conn.writer.write(data)

    async def _handshake(self, reader, conn: _Conn, dec, queue) -> NodeId | None:
        body = await self._read(reader, dec, queue)
        if body is None:
            raise FrameError("closed before saying who it is")
        hello = frames.parse(body, allowed=(Hello,))
        node = hello.node
        if node not in self.roster:
            raise FrameError(f"unknown node {node!r}")
        nonce = os.urandom(16)
        self._write(conn, wire.encode(Challenge(nonce, self.pub)))
        body = await self._read(reader, dec, queue)
        if body is None:
            raise FrameError(f"{node!r} closed before proving its identity")
        proof = frames.parse(body, allowed=(Proof,))
        if not frames.verify(self.key, self.roster[node], nonce, node, proof.tag):
            raise FrameError(f"identity proof for {node!r} failed: not its key")
        if node in self.conns:
            raise FrameError(f"{node!r} is connected already")
        conn.node = node
        self.conns[node] = conn
        self.ever_joined.add(node)
        if hello.port:
            self.listening[node] = (conn.peer.rpartition(":")[0], int(hello.port))
        self._write(conn, wire.encode(Welcome(node)))
        if self.started.is_set():
            if self.listening:              # the directory to it, its own entry to the others
                self._write(conn, self._directory(self.listening))
                if node in self.listening:
                    entry = self._directory({node: self.listening[node]})
                    for other, c in self.conns.items():
                        if other != node:
                            self._write(c, entry)
            if self.server in self.conns and node != self.server and node not in self.away:
                self._write(self.conns[self.server], wire.encode(Presence(node, True)))
            self._write(conn, wire.encode(Go()))
        elif self.expect <= set(self.conns):
            self._go()
        return node

    def _go(self) -> None:
        """Every expected node is in: devices start first, the server last (after learning who
        is there), as under SimPy."""
        self.started.set()
        if self.listening:                  # where to open direct links, before any Go
            d = self._directory(self.listening)
            for c in self.conns.values():
                self._write(c, d)
        for node, c in self.conns.items():
            if node != self.server:
                self._write(c, wire.encode(Go()))
        if self.server in self.conns:
            c = self.conns[self.server]
            for node in self.conns:
                if node != self.server and node not in self.away:
                    self._write(c, wire.encode(Presence(node, True)))
            self._write(c, wire.encode(Go()))

    def _directory(self, entries: Mapping) -> bytes:
        """A :class:`Directory` frame body for ``entries`` (node → (host, port))."""
        nodes = tuple(entries)
        return wire.encode(Directory(nodes, tuple(entries[n][0] for n in nodes),
                                     tuple(entries[n][1] for n in nodes),
                                     tuple(self.roster[n] for n in nodes)))

    async def _serve(self, reader, conn: _Conn, dec, queue) -> None:
        while True:
            body = await self._read(reader, dec, queue)
            if body is None:
                return
            msg = frames.parse(body, allowed=(Envelope, Halted, Presence))
            if isinstance(msg, Presence):       # the node goes offline or comes back
                if msg.peer != conn.node or conn.node == self.server:
                    raise FrameError(f"{conn.node!r} announced the presence of {msg.peer!r}")
                if msg.up == (conn.node not in self.away):
                    continue                    # no change
                (self.away.discard if msg.up else self.away.add)(conn.node)
                srv = self.conns.get(self.server)
                if srv is not None:
                    self._write(srv, wire.encode(Presence(conn.node, msg.up)))
                continue
            if isinstance(msg, Halted):
                if self.server is not None and conn.node != self.server:
                    raise FrameError(f"{conn.node!r} tried to halt the run (only the server may)")
                self.halted.set()
                continue
            if msg.src != conn.node:
                raise FrameError(f"{conn.node!r} sent an envelope from {msg.src!r}")
            dst = self.conns.get(msg.dst)
            if dst is None or msg.dst in self.away:
                if self.on_drop is not None:
                    self.on_drop(msg.src, msg.dst, len(msg.body))
                continue
            if self.capture is not None:
                self.capture(msg.src, msg.dst, body)
            self.stats.frames_relayed += 1
            self.stats.relayed_bytes += len(msg.body)
            self._write(dst, body)
            if self.on_relay is not None:
                self.on_relay(msg.src, msg.dst, msg.body)
            try:
                await dst.writer.drain()
            except ConnectionError:
                pass                    # the destination's own handler reports it lost

    def _lost(self, conn: _Conn) -> None:
        node = conn.node
        if node is None or self.conns.get(node) is not conn:
            return
        del self.conns[node]
        if self.stopping or conn.clean:
            return
        self.lost.append(node)
        srv = self.conns.get(self.server)
        if srv is not None and node != self.server:
            self._write(srv, wire.encode(Presence(node, False)))

    def drop(self, node: NodeId) -> None:
        """Cut ``node``'s connection (a fault injected by a test or an operator)."""
        c = self.conns.get(node)
        if c is not None:
            c.writer.transport.abort()

    async def stop(self, reason: str) -> None:
        self.stopping = True
        for c in list(self.conns.values()):
            try:
                self._write(c, wire.encode(Stop(reason)))
                c.clean = True
            except (ConnectionError, RuntimeError):
                pass
        if self._server is not None:
            self._server.close()
        for c in list(self.conns.values()):
            c.writer.close()
        for t in list(self._handlers):
            t.cancel()
        await asyncio.gather(*self._handlers, return_exceptions=True)
        if self._server is not None:
            await self._server.wait_closed()


# ---------------------------------------------------------------- direct links
class _Frames:
    """Frames read off ``reader``, bodies one at a time (``None`` at a clean end of stream);
    ``count(n)`` is told of every ``n`` bytes read."""

    def __init__(self, reader: asyncio.StreamReader, max_frame: int, count: Callable[[int], None]):
        self.reader, self.count = reader, count
        self.dec = FrameDecoder(max_frame=max_frame)
        self.queue: list[bytes] = []

    async def read(self) -> bytes | None:
        while not self.queue:
            data = await self.reader.read(1 << 16)
            if not data:
                self.dec.close()            # raises if the stream ended inside a frame
                return None
            self.count(len(data))
            self.queue.extend(self.dec.feed(data))
        return self.queue.pop(0)


@dataclass
class Peers:
    """What nodes need for direct connections to each other: every node's public key
    (``roster``) and listening port (``ports``; filled as they listen in this process, and from
    the hub's :class:`Directory` for nodes in other processes); ``incidents``: links dropped for
    misbehaving."""

    roster: Mapping[NodeId, bytes]
    ports: dict = field(default_factory=dict)
    incidents: list = field(default_factory=list)
    hosts: dict = field(default_factory=dict)   # node -> host (default 127.0.0.1)

    def learn(self, d: Directory) -> None:
        """Entries of a hub's :class:`Directory` (other processes' nodes)."""
        for n, host, port, key in zip(d.nodes, d.hosts, d.ports, d.keys, strict=True):
            self.roster[n], self.hosts[n], self.ports[n] = bytes(key), host, int(port)


class _Link:
    """``node``'s direct connection to ``dst``: opened on the first message (which waits in
    :attr:`buffer` until the peer has checked this node's key), then written in order."""

    def __init__(self, node: Node, dst: NodeId):
        self.node, self.dst = node, dst
        self.buffer: list[bytes] = []
        self.writer: asyncio.StreamWriter | None = None

    def write(self, data: bytes) -> None:
        out = frames.frame(data)
        self.node.direct_sent += 1
        self.node.direct_socket_bytes += len(out)
        if self.writer is None:
            self.buffer.append(out)
        elif not self.writer.is_closing():
            self.writer.write(out)

    async def open(self) -> None:
        try:
            await self._open()
        except (FrameError, asyncio.IncompleteReadError, ConnectionError, OSError,
                KeyError) as exc:
            nd = self.node
            if not nd.stopped.is_set():
                nd.peers.incidents.append({"peer": f"link {nd.node!r} -> {self.dst!r}",
                                           "node": self.dst,
                                           "reason": f"{type(exc).__name__}: {exc}"})
                nd.sink.dropped(nd.node, self.dst, len(self.buffer))

    async def _open(self) -> None:
        nd = self.node
        reader, writer = await asyncio.open_connection(nd.peers.hosts.get(self.dst, LOOPBACK),
                                                       nd.peers.ports[self.dst])
        frs = _Frames(reader, nd.options.max_frame_bytes, nd._count_direct)

        async def read() -> bytes:
            body = await frs.read()
            if body is None:
                raise FrameError(f"{self.dst!r} closed the link during the handshake")
            return body

        def send(body: bytes) -> None:
            out = frames.frame(body)
            nd.direct_socket_bytes += len(out)
            writer.write(out)

        send(wire.encode(Hello(nd.node)))
        ch = frames.parse(await read(), allowed=(Challenge,))
        if ch.hub_key != nd.peers.roster.get(self.dst):
            raise FrameError(f"the node listening for {self.dst!r} holds another key")
        send(wire.encode(Proof(frames.prove(nd.key, ch.hub_key, ch.nonce, nd.node))))
        frames.parse(await read(), allowed=(Welcome,))
        self.writer = writer
        for out in self.buffer:
            writer.write(out)
        self.buffer.clear()
        await reader.read()          # the peer never writes after Welcome: wait for the end

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()


# ---------------------------------------------------------------- a node
class Node:
    """One machine on its own connection: reads frames into its inbox, handles events one at a
    time, writes what it sends, runs jobs on the pool, arms its timer on the clock."""

    def __init__(self, node: NodeId, machine: Machine, *, key: X25519PrivateKey, pool: JobPool,
                 sink: Sink, clock: Clock, options: Options = Options(),
                 outbox: Outbox | None = None, direct: Callable | None = None,
                 peers: Peers | None = None):
        self.node, self.machine, self.key = node, machine, key
        self.pool, self.sink, self.clock, self.options = pool, sink, clock, options
        self.outbox = outbox if outbox is not None else Outbox(pool)
        # direct links: ``direct(src, dst)`` says which messages go peer to peer, not by the hub
        self.direct, self.peers = direct, peers
        self.links: dict[NodeId, _Link] = {}
        self.direct_sent = self.direct_socket_bytes = 0
        self._listener: asyncio.AbstractServer | None = None
        self._link_tasks: set[asyncio.Task] = set()
        self.inbox: asyncio.Queue = asyncio.Queue()
        self.jobs: dict[Any, asyncio.Future] = {}
        self.job_of: dict[Any, Any] = {}
        self.timer: asyncio.TimerHandle | None = None
        self.timer_at: float | None = None
        self.halted = False
        self.stop_reason: str | None = None
        self.stopped = asyncio.Event()
        self.went = asyncio.Event()      # told to start (Go)
        self.online = True              # the fleet model's presence (sim.aio.presence)
        self.presence = None
        self.job_times: dict[Any, tuple] = {}   # job id -> (start, modelled s, flops)
        self.events_handled = 0
        self.sent = self.received = 0
        self.socket_bytes = 0
        self.writer: asyncio.StreamWriter | None = None
        self.cpu_free_at = 0.0          # machine time its modelled CPU is free (emulation)
        prof = sink.profile(node)
        # the profiles' rates are bytes per second (sim.profiles.DeviceProfile), as SimPy's
        self.up = TokenBucket(prof.up_bps, clock) if prof is not None and clock.scale > 0 \
            else None
        self.down = TokenBucket(prof.down_bps, clock) if prof is not None and clock.scale > 0 \
            else None
        self.latency = float(prof.latency_s) if prof is not None and clock.scale > 0 else 0.0
        self._tasks: set = set()        # its events on the clock (shaped links, job ends)
        self.task: asyncio.Task | None = None

    @property
    def idle(self) -> bool:
        return (self.inbox.empty() and not self.jobs and self.timer is None
                and not self._tasks)

    async def run(self, host: str, port: int) -> None:
        self.task = asyncio.current_task()
        if self.direct is not None and self.peers is not None:
            self._listener = await asyncio.start_server(self._accept_peer, LOOPBACK, 0)
            self.peers.ports[self.node] = self._listener.sockets[0].getsockname()[1]
        reader, writer = await asyncio.open_connection(host, port)
        self.writer = writer
        read = _Frames(reader, self.options.max_frame_bytes, self._count).read

        try:
            port = self.peers.ports[self.node] if self._listener is not None else 0
            self._write(wire.encode(Hello(self.node, port=port)))
            ch = frames.parse(await read() or b"", allowed=(Challenge,))
            self._write(wire.encode(Proof(frames.prove(self.key, ch.hub_key, ch.nonce,
                                                        self.node))))
            frames.parse(await read() or b"", allowed=(Welcome,))
            handler = asyncio.ensure_future(self._handle_loop())
            try:
                while True:
                    body = await read()
                    if body is None:
                        break
                    msg = frames.parse(body, allowed=(Envelope, Presence, Go, Stop, Directory))
                    if isinstance(msg, Directory):
                        if self.peers is not None:
                            self.peers.learn(msg)
                        continue
                    if isinstance(msg, Stop):
                        self.stop_reason = "stop"
                        break
                    if isinstance(msg, Go):
                        if self.online:
                            self.post(Start())
                        self.went.set()
                    elif isinstance(msg, Presence):
                        self.clock.arrived(msg.peer, "presence")
                        self.post(PeerJoined(msg.peer) if msg.up
                                              else PeerLost(msg.peer))
                    else:
                        self._arrived(msg)
            finally:
                handler.cancel()
                await asyncio.gather(handler, return_exceptions=True)
        finally:
            self._shutdown()
            writer.close()
            self.stopped.set()

    def _arrived(self, env: Envelope) -> None:
        self.received += 1
        try:
            msg = wire.decode(env.body)
        except wire.WireError as exc:
            self.sink.report(self.node, Report("malformed_message", str(exc),
                                               (("device", env.src),)), self.clock.now())
            return
        finally:
            self.clock.arrived(env.src, self.node)
        n = len(env.body)
        if not self.online:
            self.sink.dropped(env.src, self.node, n)
            return
        if self.down is None:
            self._deliver_msg(env.src, msg, n)
            return
        at = self.down.reserve(n)
        self._at(at, self._deliver_msg, env.src, msg, n)

    def _deliver_msg(self, src, msg, nbytes: int) -> None:
        if not self.online:             # it went offline while the message came down
            self.sink.dropped(src, self.node, nbytes)
            return
        self.sink.transfer(src, self.node, nbytes, self.clock.now(), msg)
        self.post(Received(src, msg))

    def _at(self, at: float, fn, *args) -> None:
        """Call ``fn(*args)`` at machine time ``at`` (tracked, so the node is not idle
        meanwhile)."""
        def call(h):
            self._tasks.discard(h)
            fn(*args)
        box: list = []
        h = self.clock.call_at(at, lambda: call(box[0]))
        box.append(h)
        self._tasks.add(h)

    def post(self, event) -> None:
        """Queue ``event`` for the machine (the emulated clock waits until it is handled)."""
        self.clock.hold()
        self.inbox.put_nowait(event)

    async def _handle_loop(self) -> None:
        while True:
            event = await self.inbox.get()
            try:
                self.handle(event)
            finally:
                self.clock.release()

    def handle(self, event) -> None:
        self.events_handled += 1
        now = self.clock.now()
        for eff in self.machine.handle(event, now) or ():
            self._apply(eff, now)
        self._arm()
        if self.outbox.waiting and isinstance(event, (JobDone, Received)):
            self.outbox.retry()         # what they waited for may be computed now

    def _apply(self, eff, now: float) -> None:
        if isinstance(eff, Send):
            self.outbox.send(self, eff)         # encoded on the worker, then _send_body
        elif isinstance(eff, RunJob):
            self._run_job(eff.job_id, eff.job)
        elif isinstance(eff, CancelJob):
            self._cancel_job(eff.job_id)
        elif isinstance(eff, Report):
            self.sink.report(self.node, eff, now)
        elif isinstance(eff, Halt):
            if not self.halted:
                self.halted = True      # after what it sent before
                self.outbox.after(self._write, wire.encode(Halted()))
        else:
            raise TypeError(f"unknown effect {eff!r} from {self.node!r}")

    def _send_body(self, dst: NodeId, body: bytes) -> None:
        """Write an encoded message to ``dst`` (through the uplink's bucket, if emulated)."""
        if self.stopped.is_set():
            return
        if not self.online:
            self.sink.dropped(self.node, dst, len(body))
            return
        data = wire.encode(Envelope(self.node, dst, body))
        self.sent += 1
        out = self._write
        if self.direct is not None and self.peers is not None and self.direct(self.node, dst):
            out = self._link_to(dst).write

        def write(data: bytes) -> None:
            if not self.online:         # it went offline while the message went up
                self.sink.dropped(self.node, dst, len(body))
                return
            self.clock.sent(self.node, dst)
            out(data)
        if self.up is None:
            write(data)
        else:
            at = self.up.reserve(len(body)) + self.latency
            self._at(at, write, data)

    def _count(self, n: int) -> None:
        self.socket_bytes += n

    def _count_direct(self, n: int) -> None:
        self.direct_socket_bytes += n

    # ---------------------------------------------------------------- direct links
    def _link_to(self, dst: NodeId) -> _Link:
        link = self.links.get(dst)
        if link is None:
            link = self.links[dst] = _Link(self, dst)
            self._spawn(link.open())
        return link

    def _spawn(self, coro) -> None:
        t = asyncio.ensure_future(coro)
        self._link_tasks.add(t)
        t.add_done_callback(self._link_tasks.discard)

    async def _accept_peer(self, reader: asyncio.StreamReader,
                           writer: asyncio.StreamWriter) -> None:
        """A peer's direct connection: it proves its key (as to the hub), then its envelopes
        (only from itself, only to this node) go to the inbox like relayed ones."""
        self._link_tasks.add(asyncio.current_task())
        read = _Frames(reader, self.options.max_frame_bytes, self._count_direct).read
        src = claimed = None

        def write(body: bytes) -> None:
            out = frames.frame(body)
            self.direct_socket_bytes += len(out)
            writer.write(out)

        try:
            hello = frames.parse(await asyncio.wait_for(read(), self.options.handshake_timeout_s)
                                 or b"", allowed=(Hello,))
            claimed = hello.node
            for _ in range(100):        # a node in another process: its key comes with the
                if hello.node in self.peers.roster:     # hub's Directory, maybe still in flight
                    break
                await asyncio.sleep(0.01)
            if hello.node not in self.peers.roster:
                raise FrameError(f"unknown node {hello.node!r}")
            nonce = os.urandom(16)
            write(wire.encode(Challenge(nonce, frames.public_bytes(self.key))))
            proof = frames.parse(await asyncio.wait_for(read(), self.options.handshake_timeout_s)
                                 or b"", allowed=(Proof,))
            if not frames.verify(self.key, self.peers.roster[hello.node], nonce, hello.node,
                                 proof.tag):
                raise FrameError(f"identity proof for {hello.node!r} failed: not its key")
            src = hello.node
            write(wire.encode(Welcome(src)))
            while True:
                body = await read()
                if body is None:
                    return
                env = frames.parse(body, allowed=(Envelope,))
                if env.src != src or env.dst != self.node:
                    raise FrameError(f"{src!r} sent an envelope {env.src!r} -> {env.dst!r} on "
                                     f"its link to {self.node!r}")
                self._arrived(env)
        except (FrameError, asyncio.TimeoutError, asyncio.IncompleteReadError,
                ConnectionError, OSError) as exc:
            if not self.stopped.is_set():
                self.peers.incidents.append({"peer": f"link {claimed!r} -> {self.node!r}",
                                             "node": claimed,
                                             "reason": f"{type(exc).__name__}: {exc}"})
        except asyncio.CancelledError:
            pass                        # the node stops (its links with it)
        finally:
            self._link_tasks.discard(asyncio.current_task())
            writer.close()

    def _write(self, data: bytes) -> None:
        if self.writer is None or self.writer.is_closing():
            return
        out = frames.frame(data)
        self.socket_bytes += len(out)
        self.writer.write(out)

    def _run_job(self, job_id, job) -> None:
        prof = self.sink.profile(self.node)
        mem = getattr(job, "memory_bytes", 0)
        if prof is not None and mem > prof.memory_bytes:
            self.sink.job_failed(self.node, "memory")
            self.post(JobFailed(job_id, "memory"))
            return
        flops = float(getattr(job, "flops", 0.0))
        modelled = flops / float(prof.flops) if prof is not None and prof.flops > 0 else 0.0
        clock = self.clock
        start = max(clock.now(), self.cpu_free_at)
        ready_at = start + (modelled if clock.scale > 0 else 0.0)
        self.cpu_free_at = ready_at
        # a declared latency chain (a pipelined pass's fill and drain) is propagation, not
        # compute: the job ends that much later, the CPU free meanwhile, as under SimPy
        ready_at += self._latency_chain_s(job)
        fut = self.pool.submit(job)
        self.job_of[job_id] = job       # for cancelling it in the executor
        self.jobs[job_id] = fut
        self.job_times[job_id] = (start, modelled, flops)
        churn_at = self.presence.churn_moment(self.node, modelled, getattr(job, "kind", None)) \
            if self.presence is not None else None
        if churn_at is not None:        # the device drops out during this training job
            self._at(start + churn_at, self._churned, job_id, fut)

        def done(f: asyncio.Future) -> None:
            if self.jobs.get(job_id) is not f or f.cancelled():
                return
            if f.exception() is not None:
                return                      # kept by the pool; the run re-raises it
            self.pool.forget(job)
            result = f.result()

            def finish() -> None:           # at its modelled end: the job is over
                if self.jobs.get(job_id) is not f:
                    return                  # cancelled meanwhile (or the device dropped out)
                del self.jobs[job_id]
                self.job_of.pop(job_id, None)
                self.job_times.pop(job_id, None)
                self.sink.compute(self.node, flops, modelled)
                if self.online:
                    self.post(JobDone(job_id, result))
            if ready_at > clock.now():
                self._at(ready_at, finish)
            else:
                finish()

        fut.add_done_callback(done)

    def _latency_chain_s(self, job) -> float:
        """The latency chain a job declares (``latency_chain = (stages, relay, links)``, see
        :meth:`sim.driver.Driver._latency_chain_s`), priced by this runtime's link model:
        ``stages`` × the slowest link, a link ``a → b`` lasting the latency of the slower of its
        two ends (a frame waits its sender's latency, a relayed one is forwarded at once).  0
        without emulated time or without a chain."""
        chain = getattr(job, "latency_chain", None)
        if self.clock.scale <= 0 or not chain or not chain[2]:
            return 0.0
        stages, _relay, links = chain

        def lat(node) -> float:
            p = self.sink.profile(node)
            return float(p.latency_s) if p is not None else 0.0
        return stages * max(max(lat(a), lat(b)) for a, b in links)

    def _cancel_job(self, job_id) -> None:
        """Cancel a job; under emulation, charge the part of its modelled time that ran."""
        fut = self.jobs.pop(job_id, None)
        if fut is None:
            return
        self.pool.cancel(fut, self.job_of.pop(job_id, None))
        start, modelled, flops = self.job_times.pop(job_id, (0.0, 0.0, 0.0))
        if self.clock.scale > 0 and modelled > 0:     # as SimPy charges an abandoned job
            ran = min(max(0.0, self.clock.now() - start), modelled)
            if ran > 0:
                self.sink.compute(self.node, flops * ran / modelled, ran)

    def _churned(self, job_id, fut) -> None:
        if self.jobs.get(job_id) is fut and self.presence is not None:
            self.presence.churned(self.node)

    def go_offline(self, reason: str) -> None:
        """The fleet model takes this device offline: its jobs are cancelled, what it sends or
        receives from now on is dropped, its machine gets ``Disconnected()`` and the hub is told
        (the server gets ``PeerLost``)."""
        if not self.online:
            return
        self.online = False
        for job_id in list(self.jobs):
            self._cancel_job(job_id)
        self.cpu_free_at = self.clock.now()
        self.post(Disconnected())
        if self.clock.track_presence:              # the clock waits for the server to hear it
            self.clock.sent(self.node, "presence")
        self._write(wire.encode(Presence(self.node, False)))

    def go_online(self) -> None:
        """Back online: the hub is told (the server gets ``PeerJoined``), then its machine gets
        ``Start()``."""
        if self.online:
            return
        self.online = True
        if self.clock.track_presence:
            self.clock.sent(self.node, "presence")
        self._write(wire.encode(Presence(self.node, True)))
        if self.went.is_set():
            self.post(Start())

    def _arm(self) -> None:
        t = self.machine.next_timer()
        if t == self.timer_at:
            return
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
        self.timer_at = t
        if t is None or not math.isfinite(t):
            return
        self.timer = self.clock.call_at(t, self._fire)

    def _fire(self) -> None:
        self.timer, self.timer_at = None, None
        self.post(TimerFired())

    def _shutdown(self) -> None:
        if self._listener is not None:
            self._listener.close()
        for link in self.links.values():
            link.close()
        for t in list(self._link_tasks):
            t.cancel()
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
        for f in self.jobs.values():
            f.cancel()
        self.jobs.clear()
        for t in list(self._tasks):
            t.cancel()
        while not self.inbox.empty():       # never handled: they hold the clock no more
            self.inbox.get_nowait()
            self.clock.release()


# ---------------------------------------------------------------- one process, every node
@dataclass
class RunStats:
    """What one asyncio run measured besides the monitor's metrics: whether a ``Halt`` ended it
    (and who stopped it), real and emulated seconds, bytes that crossed the sockets (framing and
    handshakes included) and the hub's relays, executor batches, loop events, the incidents
    recorded for misbehaving peers, the peers lost, and the sends retried or never sent."""

    halted: bool
    stopped_by: str
    real_time_s: float
    emulated_time_s: float
    socket_bytes: int
    frames_relayed: int
    relayed_bytes: int
    job_batches: int
    events_handled: int
    incidents: list = field(default_factory=list)
    lost: list = field(default_factory=list)
    nodes: int = 0
    connect_s: float | None = None      # real seconds until every node was in (handshakes)
    send_retries: int = 0               # encodings tried again after NotReady (Outbox)
    never_sent: int = 0                 # messages dropped: their values were never computed
    direct_frames: int = 0              # envelopes sent over direct node-to-node connections


async def run_async(machines: Mapping[NodeId, Machine], *, executor, monitor,
                    profile: Callable[[NodeId], Any] = lambda node: None,
                    server: NodeId | None = None, options: Options = Options(),
                    faults: Callable[[Hub, dict, Clock], Any] | None = None,
                    capture: Callable | None = None, local=None,
                    keys: Mapping[NodeId, X25519PrivateKey] | None = None,
                    listen: tuple[str, int] = (LOOPBACK, 0),
                    on_listening: Callable[[int], None] | None = None,
                    on_started: Callable[[], None] | None = None,
                    direct: Callable[[NodeId, NodeId], bool] | None = None,
                    presence=None, public: Mapping[NodeId, bytes] | None = None) -> RunStats:
    """Run ``machines`` to completion, each a :class:`Node` on its own loopback connection.

    ``local``: the nodes run in this process (default: all); the others connect from other
    processes (:func:`join_async`) with the keys of ``keys`` (node → X25519 private key; default:
    fresh keys, which only local nodes can know) or, better, those whose public keys ``public``
    lists (node → 32 raw bytes: the server's roster; their private keys stay with them).  With remote nodes, the hub charges the
    monitor for the envelopes it relays to them, so this process's monitor sees every message.
    ``faults(hub, nodes, clock)``, if given, is started as a task with the nodes (tests kill
    peers with it; ``hub.started`` says when every node is in); ``on_listening(port)`` and ``on_started()`` are told when the hub
    listens and when every node is in.  ``direct(src, dst)``: the messages sent over a direct
    connection between the two nodes instead of through the hub (local nodes only; e.g.
    Crowdlearning's device-to-device messages in peer-to-peer mode).  ``presence``: a
    :class:`sim.aio.presence.Presence` that takes devices offline and back on the emulated
    clock (availability, churn, batteries; local nodes only).  Returns when a machine halts, when nothing has been in flight for
    ``options.quiet_s`` (only if every node is local), or after ``options.timeout_s``.
    """
    loop = asyncio.get_running_loop()
    wall0 = time.perf_counter()
    clock = Clock(loop, options.time_scale)
    pool = JobPool(executor, loop, window=options.batch_window_s, clock=clock)
    sink = Sink(monitor, pool, profile)
    outbox = Outbox(pool)
    local = list(machines) if local is None else list(local)
    all_local = set(local) == set(machines)
    keys = dict(keys) if keys is not None else {}
    public = dict(public or {})         # remote nodes' public keys (a roster)
    for n in machines:
        if n not in public and n not in keys:
            keys[n] = X25519PrivateKey.generate()
    on_relay = None
    if not all_local:
        def on_relay(src, dst, body: bytes) -> None:
            if dst not in nodes:
                sink.transfer(src, dst, len(body), clock.now(), wire.decode(body))
    clock.track_wire = all_local

    def on_drop(src, dst, nbytes: int) -> None:
        sink.dropped(src, dst, nbytes)
        clock.arrived(src, dst)         # it will not arrive
    hub = Hub({n: public[n] if n in public else frames.public_bytes(keys[n]) for n in machines},
              server=server,
              options=options, capture=capture, on_drop=on_drop, on_relay=on_relay)
    nodes: dict = {}
    if presence is not None:
        if not all_local:
            raise ValueError("availability under asyncio needs every node in this process")
        hub.away = presence.initial()
        sink.battery = presence.spend
        clock.track_presence = server in machines
    peers = Peers(dict(hub.roster)) if direct is not None else None
    tasks: list[asyncio.Task] = []
    fault_task = None
    stopped_by = "halted"
    emulated = 0.0
    connect_s = None
    try:
        port = await hub.start(*listen)
        if on_listening is not None:
            on_listening(port)
        await asyncio.sleep(0)
        clock.t0 = loop.time()
        clock.hold()                    # emulated time starts when every node is in

        async def go() -> None:
            await hub.started.wait()
            for nd in nodes.values():      # and each local node was told to start
                await nd.went.wait()
            if presence is not None:
                presence.start(nodes, clock)
            clock.release()
        tasks.append(asyncio.ensure_future(go()))
        for n in local:
            nodes[n] = Node(n, machines[n], key=keys[n], pool=pool, sink=sink, clock=clock,
                            options=options, outbox=outbox, direct=direct, peers=peers)
            if presence is not None:
                nodes[n].presence = presence
                nodes[n].online = n not in hub.away
            tasks.append(asyncio.ensure_future(nodes[n].run(LOOPBACK, port)))
        if faults is not None:
            fault_task = asyncio.ensure_future(faults(hub, nodes, clock))
        deadline = loop.time() + options.timeout_s if math.isfinite(options.timeout_s) else None
        quiet_since = None
        while not hub.halted.is_set():
            if connect_s is None and hub.started.is_set():
                connect_s = time.perf_counter() - wall0
                if on_started is not None:
                    on_started()
            done = [t for t in tasks
                    if t.done() and not t.cancelled() and t.exception() is not None]
            if done:
                raise done[0].exception()
            pool.check()
            if deadline is not None and loop.time() > deadline:
                stopped_by = "timeout"
                break
            busy = (not all_local or not hub.started.is_set() or pool._pending
                    or outbox.encoding
                    or any(not nd.idle for nd in nodes.values() if not nd.stopped.is_set())
                    or hub.stats.frames_relayed + sum(nd.direct_sent for nd in nodes.values())
                    != sum(nd.received for nd in nodes.values()))
            if busy:
                quiet_since = None
            elif quiet_since is None:
                quiet_since = loop.time()
            elif loop.time() - quiet_since >= options.quiet_s:
                stopped_by = "quiet"
                break
            try:
                await asyncio.wait_for(hub.halted.wait(), 0.02)
            except asyncio.TimeoutError:
                pass
        emulated = clock.now()
        if presence is not None:
            presence.finish(emulated)
        await hub.stop(stopped_by)
    finally:
        if fault_task is not None:
            fault_task.cancel()
            await asyncio.gather(fault_task, return_exceptions=True)
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        if hub._server is not None and not hub.stopping:
            await hub.stop("error")
        await loop.run_in_executor(None, pool.drain)
        outbox.close()
        pool.close()
    pool.check()
    return RunStats(
        halted=hub.halted.is_set(), stopped_by=stopped_by,
        real_time_s=time.perf_counter() - wall0, emulated_time_s=emulated,
        socket_bytes=hub.stats.socket_bytes_in + hub.stats.socket_bytes_out
        + sum(nd.direct_socket_bytes for nd in nodes.values()),
        frames_relayed=hub.stats.frames_relayed, relayed_bytes=hub.stats.relayed_bytes,
        job_batches=pool.batches, events_handled=sum(nd.events_handled for nd in nodes.values()),
        incidents=list(hub.incidents) + (peers.incidents if peers is not None else []), lost=[str(n) for n in hub.lost], nodes=len(nodes),
        connect_s=connect_s, send_retries=outbox.retries, never_sent=outbox.never_sent,
        direct_frames=sum(nd.direct_sent for nd in nodes.values()))


def run(machines: Mapping[NodeId, Machine], **kwargs) -> RunStats:
    """:func:`run_async` in a fresh event loop (in a thread of its own if this thread already
    runs one, e.g. a Jupyter kernel's)."""
    try:
        asyncio.get_running_loop()
        inside = True
    except RuntimeError:
        inside = False
    if not inside:
        return asyncio.run(run_async(machines, **kwargs))
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="crowdlearn-aio") as ex:
        return ex.submit(asyncio.run, run_async(machines, **kwargs)).result()


async def join_async(node: NodeId, machine: Machine, *, key: X25519PrivateKey, host: str,
                     port: int, executor, monitor,
                     profile: Callable[[NodeId], Any] = lambda node: None,
                     options: Options = Options(),
                     direct: Callable[[NodeId, NodeId], bool] | None = None) -> dict:
    """Run one node in this process against a hub elsewhere, until the hub stops the run
    (returns ``{"stopped_by": "stop", ...}``) or the connection is lost (``"lost"``).
    ``direct(src, dst)``: the messages sent over a direct connection to the other node (its
    address and key from the hub's :class:`Directory`), as in :func:`run_async`."""
    loop = asyncio.get_running_loop()
    clock = Clock(loop, options.time_scale)
    pool = JobPool(executor, loop, window=options.batch_window_s, clock=clock)
    nd = Node(node, machine, key=key, pool=pool, sink=Sink(monitor, pool, profile), clock=clock,
              options=options, direct=direct, peers=Peers({}) if direct is not None else None)
    try:
        await nd.run(host, port)
    finally:
        await loop.run_in_executor(None, pool.drain)
        pool.close()
    pool.check()
    return {"stopped_by": nd.stop_reason or "lost", "events_handled": nd.events_handled,
            "sent": nd.sent, "received": nd.received, "socket_bytes": nd.socket_bytes,
            "direct_sent": nd.direct_sent,
            "link_incidents": nd.peers.incidents if nd.peers is not None else [],
            "emulated_time_s": clock.now()}
