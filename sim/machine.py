"""Events in, effects out: the vocabulary every protocol machine speaks.

A machine never touches a clock, a socket or a thread.  A driver (``sim.driver`` for simulated
time; an asyncio driver later) delivers :data:`Input` events with the current time and carries out
the :data:`Effect` values the machine returns.  Tests drive machines directly by hand.

Examples
--------
>>> class Echo(Machine):
...     def handle(self, event, now):
...         if isinstance(event, Received):
...             return [Send(event.src, event.message)]
...         return []
>>> Echo("a").handle(Received("b", "hi"), 0.0)
[Send(dst='b', message='hi')]
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol

NodeId = str | int


# ---------------------------------------------------------------- inputs
@dataclass(frozen=True, slots=True)
class Start:
    """The driver started the machine (or the device came back online)."""


@dataclass(frozen=True, slots=True)
class Received:
    """A message from ``src`` has been delivered in full."""

    src: NodeId
    message: Any


@dataclass(frozen=True, slots=True)
class TimerFired:
    """The deadline returned by :meth:`Machine.next_timer` has passed."""


@dataclass(frozen=True, slots=True)
class JobDone:
    """A job started with :class:`RunJob` finished; ``result`` is what it computed."""

    job_id: Any
    result: Any


@dataclass(frozen=True, slots=True)
class JobFailed:
    """A job could not run (``reason``: e.g. ``"memory"``)."""

    job_id: Any
    reason: str


@dataclass(frozen=True, slots=True)
class PeerJoined:
    """A peer came online (a connection-level signal; it costs no modelled bytes)."""

    peer: NodeId


@dataclass(frozen=True, slots=True)
class PeerLost:
    """A peer went offline; anything in flight to or from it is lost."""

    peer: NodeId


@dataclass(frozen=True, slots=True)
class Disconnected:
    """This machine's own device went offline: drop all round state."""


Input = Start | Received | TimerFired | JobDone | JobFailed | PeerJoined | PeerLost | Disconnected


# ---------------------------------------------------------------- effects
@dataclass(frozen=True, slots=True)
class Send:
    """Send ``message`` to ``dst``; the network charges its encoded size."""

    dst: NodeId
    message: Any


@dataclass(frozen=True, slots=True)
class RunJob:
    """Run a costly job (training, evaluation) on this machine's device."""

    job_id: Any
    job: Any


@dataclass(frozen=True, slots=True)
class CancelJob:
    """Abandon a job started earlier; its result is never delivered."""

    job_id: Any


@dataclass(frozen=True, slots=True)
class Report:
    """A measurement for the monitor; machines never print."""

    name: str
    value: Any
    tags: tuple[tuple[str, Any], ...] = ()

    def tag(self, key: str, default: Any = None) -> Any:
        for k, v in self.tags:
            if k == key:
                return v
        return default


@dataclass(frozen=True, slots=True)
class Halt:
    """The protocol is finished; the driver stops the simulation."""


Effect = Send | RunJob | CancelJob | Report | Halt


class Machine:
    """Base class of protocol participants.

    Subclasses override :meth:`handle` and, if they keep a deadline, :meth:`next_timer`.
    The driver calls ``handle(event, now)`` and then asks ``next_timer()`` again, so a machine
    arms, moves or clears its timer simply by changing what ``next_timer`` returns.
    """

    def __init__(self, node_id: NodeId):
        self.node_id = node_id

    def handle(self, event: Input, now: float) -> list[Effect]:  # pragma: no cover - abstract
        raise NotImplementedError

    def next_timer(self) -> float | None:
        return None


class JobExecutor(Protocol):
    """What a runtime needs from whoever computes job results (structural: any object with these
    methods will do; :class:`crowdlearn.training.jobs.Executor` is the in-process one).

    ``submit`` queues a job and returns a handle; ``complete`` is called when the job's
    simulated time is over and returns what the machine receives in ``JobDone``: the result, or
    a value computed when first read, for the job kinds the executor declares deferred;
    ``result`` computes (lazily, batched with the other pending jobs of its kind) and returns
    the result; ``cancel`` drops a job that is no longer wanted.
    """

    def submit(self, job: Any) -> Any: ...

    def result(self, handle: Any) -> Any: ...

    def complete(self, handle: Any) -> Any: ...

    def cancel(self, handle: Any) -> None: ...
