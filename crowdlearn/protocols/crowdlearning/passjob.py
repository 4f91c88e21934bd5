"""A pass as the executor's job: each participant's part (:class:`SlicePassJob`), joined by the
executor into the group's whole network, and the promise through which messages carrying values
of the pass (the boundary tensors) read them once the pass has run."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any

import numpy as np

from crowdlearn.training.jobs import Deferred
from sim import wire

__all__ = ["PassPromise", "PipelineDrain", "SlicePassJob", "acc_sum", "as_array"]


class PassPromise:
    """What the executor learns about a pass when it runs it, for messages that carry values of
    the pass (the boundary tensors): bound to the job's handle when the executor accepts the job
    (:meth:`bind`), filled by the runner (:attr:`record`).  A message holding it is a deferred
    value: reading it asks the executor for the pass, and raises :class:`sim.wire.NotReady`
    while the other participants' parts have not arrived (``never`` if the pass was
    abandoned)."""

    __slots__ = ("_executor", "_handle", "record")

    def __init__(self):
        self._executor = self._handle = None
        self.record: Any = None

    def bind(self, executor, handle) -> None:
        self._executor, self._handle = executor, handle

    def fulfil(self, record: Any) -> None:
        """The runner's record of the pass; the executor and the handle are let go.  (The
        handle holds the job, whose promise this is: kept, the cycle would hold the pass's
        weights until a full garbage collection, gigabytes over a long run.)"""
        self.record = record
        self._executor = self._handle = None

    def value(self) -> Any:
        if self.record is None:
            ex, h = self._executor, self._handle
            if ex is None:
                raise wire.NotReady("the pass's job was never submitted")
            if h.state == "cancelled" or ex.abandoned(h):
                raise wire.NotReady("the pass was abandoned", never=True)
            try:
                ex.result(h)
            except RuntimeError as exc:
                raise wire.NotReady(f"the pass cannot run yet: {exc}") from None
        return self.record


@dataclass(frozen=True, eq=False)
class SlicePassJob:
    """One participant's part of a pass (kind ``slice_pass``): the weights it holds, and, for
    the dominator, the batch schedule of its data.

    The pass is numerically SGD of the group's whole network on the dominator's batches
    (spec §3); the executor runs it once every participant's part has arrived (a *collective*:
    the parts of one ``key`` together cover every parameter), all pending passes of all groups
    in one batched computation (:class:`slicenet.fused.FusedTrainer`), and gives each
    participant back its own entries only: per owner it holds, the new values, then per owner
    the Σ over the pass's mini-batches of ``|mean gradient|`` of its trainable entries (spec §5).
    Its inputs are what the job carries: no machine's memory is read."""

    key: tuple               # (group, attempt): the pass
    node: Any                # the participant
    owners: tuple            # owner ids it holds (DOMINATOR or pieces)
    parts: tuple             # per owner: (flat indices, trainable flat indices, values)
    total: int               # parameters of the whole network (the parts cover them once)
    batches: Any             # the dominator's [steps, B] schedule; None for a follower
    lr: float
    flops: float
    memory_bytes: int
    promise: PassPromise = field(default_factory=PassPromise)
    kind: str = field(default="slice_pass", init=False)

    @cached_property
    def collective(self) -> tuple:
        # (made once: the executor asks for it per pending job at every submission)
        return ("slice_pass",) + tuple(self.key)

    @staticmethod
    def collective_complete(jobs: Sequence) -> bool:
        """The parts of a pass are all in when they cover every parameter and include the
        dominator's (the only one with a batch schedule)."""
        return bool(jobs) and sum(len(p[0]) for j in jobs for p in j.parts) == jobs[0].total \
            and any(j.batches is not None for j in jobs)

    @property
    def result_shapes(self) -> list:
        return [(len(p[0]),) for p in self.parts] + [(len(p[1]),) for p in self.parts]

    def deferred_inputs(self) -> list:
        return [p[2] for p in self.parts]

    def on_submit(self, executor, handle) -> None:
        self.promise.bind(executor, handle)


@dataclass(frozen=True)
class PipelineDrain:
    """A participant's wait for the pipeline's fill and drain latency at the end of a pass
    (kind ``pipeline_drain``; no compute, no result).

    The pass's mini-batches stream through ``stages`` pipeline stages (every layer boundary
    forth and back, spec §3), so the first batch's activations, and the last batch's errors,
    cross ``stages`` boundary hops one after another: a latency chain that only the runtime can
    price, since it alone knows the topology.  The job declares it as :attr:`latency_chain`
    (``stages``, the relay node or ``None`` for device-to-device links, the pass's boundary
    links), and the runtime delivers the job's end ``stages ×`` the slowest link's latency
    (over the relay) after it starts, the device's CPU free meanwhile
    (:meth:`sim.driver.Driver._latency_chain_s`).  A runtime that does not price it ends the job
    at once."""

    stages: int
    relay: Any
    links: tuple
    flops: float = 0.0
    memory_bytes: int = 0
    kind: str = field(default="pipeline_drain", init=False)

    @property
    def latency_chain(self) -> tuple:
        return (self.stages, self.relay, self.links)


def as_array(v: Any) -> np.ndarray:
    """An owner's values: an array, or a one-entry deferred job result (read now)."""
    return np.asarray(v[0] if isinstance(v, Deferred) else v, np.float32)


def acc_sum(parts: Sequence, n: int) -> np.ndarray:
    """The float32 sum of ``|gradient|`` parts (what a hand-over carries)."""
    total = np.zeros(n, np.float32)
    for part in parts:
        total += as_array(part)
    return total
