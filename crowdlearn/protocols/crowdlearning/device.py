"""A Crowdlearning group member (:class:`SliceDevice`): dominator, follower or dummy as each
:class:`~crowdlearn.protocols.crowdlearning.messages.PassPlan` says; it holds only the weights it
was given by sealed messages, runs its part of each pass as a job, and shares its top θ."""

from __future__ import annotations

import weakref
from functools import partial
from typing import Any

import numpy as np

from crowdlearn.crypto.sealing import Card, Header, KeyRing, Sealed, SealError
from crowdlearn.protocols.crowdlearning.layout import DOMINATOR, Layout
from crowdlearn.protocols.crowdlearning.messages import (
    SERVER,
    SERVER_SRC,
    Abort,
    Download,
    KeyAnnounce,
    KeyDirectory,
    PassDone,
    PassPlan,
    Relay,
    Relayed,
    ShareDone,
    ShareRequest,
    Upload,
)
from crowdlearn.protocols.crowdlearning.params import SliceParams
from crowdlearn.protocols.crowdlearning.passjob import (
    PassPromise,
    PipelineDrain,
    SlicePassJob,
    acc_sum,
    as_array,
)
from crowdlearn.protocols.crowdlearning.sharing import top_k
from crowdlearn.protocols.validate import check_sparse, misbehaved
from crowdlearn.training.batching import make_batches
from crowdlearn.training.jobs import Deferred, Lazy, LazyArray
from sim import wire
from sim.machine import (
    CancelJob,
    Disconnected,
    Effect,
    Input,
    JobDone,
    JobFailed,
    Machine,
    NodeId,
    Received,
    Report,
    RunJob,
    Send,
    Start,
    TimerFired,
)

__all__ = ["SliceDevice"]


class SliceDevice(Machine):
    """A group member: dominator, follower or dummy, as each PassPlan says.

    It holds the weights of the owners (its pieces, or the dominator's layers) it was given —
    by the server's initial checkpoint, a hand-over or a take-over checkpoint, all sealed
    messages — and this epoch's ``|gradient|`` sums of them; a pass's result becomes its own when
    the server moves on (the next PassPlan or ShareRequest: every participant finished), and
    is dropped on Abort.
    """

    def __init__(self, node_id: NodeId, layout: Layout, group: int, indices: np.ndarray,
                 params: SliceParams, *, ring: KeyRing, rng: np.random.Generator,
                 server: NodeId = SERVER):
        super().__init__(node_id)
        self.layout, self.group, self.params = layout, group, params
        self.indices = np.asarray(indices, np.int64)
        self.ring, self.rng, self.server = ring, rng, server   # ring: this device's own keys
        self.early: dict[int, list] = {}    # payloads that overtook their PassPlan
        self.share_owners: dict[int, tuple] = {}    # epoch -> owners of its ShareRequest
        self.held: dict[int, Any] = {}      # owner -> its values (array or deferred result)
        self.acc: dict[int, list] = {}      # owner -> this epoch's |gradient| sums (parts)
        self.result: tuple | None = None    # (attempt, owners, result) of its last pass
        self._promise: PassPromise | None = None   # the current pass's, for boundary payloads
        self.owed: list = []                # hand-overs asked for before the weights arrived
        self._reset()

    def _reset(self):
        self.plan: PassPlan | None = None
        self.hand_in = 0
        self.bound_in = 0
        self.job_done = False
        self.computing = False
        self.started = 0.0
        self.sent_done = False
        self._deadline: float | None = None
        self.compute_started: float | None = None
        self._finish: float | None = None

    def next_timer(self) -> float | None:
        return self._deadline

    # -------------------------------------------------------------- held weights
    def _commit(self, before: int | None = None) -> None:
        """The server moved on: the last pass's result is this device's (unless it belongs
        to ``before`` or a later attempt)."""
        if self.result is None or (before is not None and self.result[0] >= before):
            return
        _, owners, res = self.result
        self.result = None
        k = len(owners)
        for i, o in enumerate(owners):
            self.held[o] = res.part(i, i + 1) if isinstance(res, Deferred) else res[i]
            self.acc.setdefault(o, []).append(
                res.part(k + i, k + i + 1) if isinstance(res, Deferred) else res[k + i])

    def hold(self, owner: int, values: Any, acc: Any = None) -> None:
        """Hold ``owner``'s weights from a hand-over or checkpoint (``acc``: its ``|gradient|``
        sums this epoch, as parts or one array; ``None`` for the initial weights)."""
        self.held[owner] = values
        self.acc[owner] = [] if acc is None else \
            (list(acc) if isinstance(acc, (list, tuple)) else [acc])


    def _send_payload(self, dst, kind: str, nbytes: int, owner: int | None = None
                      ) -> list[Effect]:
        """Seal for ``dst`` (boundary: a direct channel; hand-over: escrowed for every group
        member whose key the server vouched for, so that it can serve as a checkpoint)."""
        p = self.plan
        if kind == "handover":
            header = Header(kind, p.group, p.attempt, owner)
            roster = [d for d in self.ring.peers() if d != self.server and d != self.node_id]
            values, acc = self.held[owner], tuple(self.acc.get(owner, ()))
            n = len(self.layout.owned_flat([owner], trainable=True))
            # the real weights and their |gradient| sums, encrypted when the message is encoded
            payload = Sealed.of_arrays(
                self.ring, dst, header, lambda v=values, a=acc, n=n: [as_array(v), acc_sum(a, n)],
                nbytes, roster=roster, contents=(values, acc))
        else:
            # this pass's real boundary tensors from this device to ``dst`` (forward partial
            # sums, backward errors, every mini-batch stacked): values of the pass, computed by
            # the executor once every participant's part is in
            promise, me = self._promise, self.node_id
            payload = Sealed.of_arrays(
                self.ring, dst, Header(kind, p.group, p.attempt),
                lambda: [promise.value().boundary(me, dst)], nbytes, contents=promise)
        if self.params.peer_to_peer:
            msg: Any = Relayed(p.group, p.attempt, self.node_id, kind, payload)
            return [Send(dst, msg), self._role_bytes(msg)]
        msg = Relay(p.group, p.attempt, dst, kind, payload)
        return [Send(self.server, msg), self._role_bytes(msg)]

    def _role_bytes(self, msg: Any) -> Report:
        """Traffic per role (spec: dominator / follower / dummy), what this device sends."""
        return Report("role_bytes", wire.size(msg), (("role", self.plan.role),))

    def handle(self, event: Input, now: float) -> list[Effect]:
        if isinstance(event, Start):     # (re)connected: announce this device's public key
            return [Send(self.server, KeyAnnounce(self.ring.card().to_bytes()))]
        if isinstance(event, Received):
            m = event.message
            if getattr(m, "group", self.group) != self.group:
                return [misbehaved(event.src, f"{type(m).__name__} for group {m.group}, "
                                              f"this device is in {self.group}")]
            if isinstance(m, KeyDirectory):
                return self._learn(event.src, m)
            if isinstance(m, PassPlan):
                return self._on_plan(m, now)
            if isinstance(m, Relayed):
                return self._on_payload(m, now)
            if isinstance(m, Abort):
                if self.result is not None and self.result[0] == m.attempt:
                    self.result = None           # never committed
                if self.plan is not None and m.attempt == self.plan.attempt:
                    eff = [CancelJob(self.plan.attempt)] if self.computing else []
                    self._reset()
                    return eff
                return []
            if isinstance(m, ShareRequest):
                return self._share(m)
            if isinstance(m, Download):
                return self._apply_download(m)
        if isinstance(event, JobDone) and self.plan is not None \
                and event.job_id == ("drain", self.plan.attempt):
            # the runtime priced the pipeline's latency chain: the pass is over here
            return [Send(self.server, PassDone(self.plan.group, self.plan.attempt))]
        if isinstance(event, JobDone) and self.plan is not None \
                and event.job_id == self.plan.attempt:
            self.computing = False
            self.job_done = True
            self.result = (self.plan.attempt, tuple(self.plan.pieces), event.result)
            return self._maybe_done(now)
        if isinstance(event, JobFailed) and self.plan is not None:
            self.computing = False
            return [Report("job_failed", event.reason, (("device", self.node_id),))]
        if isinstance(event, TimerFired):
            self._deadline = None
            return self._maybe_done(now)
        if isinstance(event, Disconnected):
            self.result = None     # [ours] a pass the server may not have completed
            self._reset()
        return []

    def _on_plan(self, m: PassPlan, now: float) -> list[Effect]:
        out: list[Effect] = []
        if self.plan is not None and self.computing:
            out.append(CancelJob(self.plan.attempt))
        self._reset()
        self._commit(before=m.attempt)
        self.plan = m
        self.started = now
        # a hand-over of weights still on their way here (sent in an aborted attempt) leaves
        # when they arrive
        self.owed = list(m.send_handover)
        out += self._hand_over()
        self.hand_in = 0
        self.bound_in = 0
        for msg, got in self.early.pop(m.attempt, []):
            out += self._count(msg, got, now, compute=False)
        self.early = {a: v for a, v in self.early.items() if a > m.attempt}
        return out + self._maybe_compute(now) + self._maybe_done(now)

    def _hand_over(self) -> list[Effect]:
        """Send the owed hand-overs of weights this device holds; they are no longer its."""
        out: list[Effect] = []
        for dst, nbytes, owner in [x for x in self.owed if x[2] in self.held]:
            out += self._send_payload(dst, "handover", nbytes, owner)
            del self.held[owner]
            self.acc.pop(owner, None)
            self.owed.remove((dst, nbytes, owner))
        return out

    def _learn(self, src, m: KeyDirectory) -> list[Effect]:
        if src != self.server:
            return [misbehaved(src, "key directory not from the server")]
        for node, card in zip(m.nodes, m.cards, strict=True):
            self.ring.learn(self.server if node == SERVER_SRC else int(node),
                            Card.from_bytes(card))
        return []

    def _owner_candidates(self) -> list[int]:
        return [DOMINATOR] + list(range(self.layout.pieces))

    def _open(self, m: Relayed) -> tuple[int | None, bytes]:
        """Open a payload that arrived as bytes (a real wire): its owner (tried among the
        owner ids: the header binds it without sending it) and plaintext; :class:`SealError`
        if it does not open under its header."""
        if m.kind == "boundary":
            return None, self.ring.open(m.src, Header("boundary", m.group, m.attempt), m.payload)
        if m.kind == "checkpoint" and m.src == SERVER_SRC:
            src, kind, attempt, opener = self.server, "checkpoint", m.attempt, self.ring.open
        else:
            attempt = m.attempt if m.kind == "handover" else KeyRing.escrow_attempt(m.payload)
            if attempt > m.attempt:
                raise SealError(f"checkpoint sealed in attempt {attempt} > {m.attempt}")
            src, kind, opener = m.src, "handover", self.ring.open_escrow
        for owner in self._owner_candidates():
            try:
                return owner, opener(src, Header(kind, m.group, attempt, owner), m.payload)
            except SealError as exc:
                err = exc
        raise err

    def _weights_of(self, owner: int, plain: bytes) -> tuple[np.ndarray, Any]:
        """An owner's values and ``|gradient|`` sums from an opened plaintext."""
        lay = self.layout
        n, t = len(lay.owned_flat([owner])), len(lay.owned_flat([owner], trainable=True))
        arr = np.frombuffer(plain, np.float32)
        if arr.size not in (n, n + t):
            raise SealError(f"{arr.size} floats for owner {owner}'s {n} weights")
        return arr[:n].copy(), (arr[n:].copy() if arr.size > n else None)

    def _on_payload(self, m: Relayed, now: float) -> list[Effect]:
        got: Any = None
        if isinstance(m.payload, (bytes, bytearray, memoryview)):
            # bytes from a real wire are opened (and dropped if they do not open)
            try:
                owner, plain = self._open(m)
                if m.kind != "boundary":
                    got = (owner, *self._weights_of(owner, plain))
            except SealError as exc:
                return [misbehaved(m.src, str(exc), group=m.group)]
        elif m.kind != "boundary":
            # a simulation's sealed object: its values, as the recipient reads them once opened
            # (they may still be deferred: the pass that produces them runs when they are read)
            values, acc = m.payload.contents
            got = (m.payload.header.owner, values, acc)
        if self.plan is None or m.attempt > self.plan.attempt:
            # a peer's payload can overtake the server's PassPlan (peer-to-peer links are
            # faster than the path through the server): keep it for that attempt
            self.early.setdefault(m.attempt, []).append((m, got))
            return []
        if m.attempt != self.plan.attempt:
            if got is None or got[0] in self.held:
                return []
            # weights handed over in an aborted attempt: the server counts on this device
            # holding them from now on
            self.hold(*got)
            return self._hand_over() + self._maybe_compute(now)
        return self._count(m, got, now)

    def _count(self, m: Relayed, got: Any, now: float, *, compute: bool = True
               ) -> list[Effect]:
        if m.kind == "boundary":
            self.bound_in += 1
            return self._maybe_done(now) if compute else []
        owner, values, acc = got
        if owner not in self.plan.pieces:
            return [misbehaved(m.src, f"weights of owner {owner}, which this device does not "
                                      "hold in the pass", group=m.group)]
        self.hold(owner, values, acc)
        self.hand_in += 1
        return self._hand_over() + (self._maybe_compute(now) if compute else [])

    def _maybe_compute(self, now: float) -> list[Effect]:
        p = self.plan
        if p is None or self.computing or self.job_done or self.hand_in < p.expect_handover \
                or p.role == "dummy":      # a dummy only hands over what it held
            return []
        lay = self.layout
        if any(o not in self.held for o in p.pieces):
            return []       # weights handed over in an aborted attempt are still on their way
        self.computing = True
        self.compute_started = now
        parts = tuple((lay.owned_flat([o]), lay.owned_flat([o], trainable=True), self.held[o])
                      for o in p.pieces)
        batches = make_batches(self.indices, epochs=1, batch_size=self.params.batch_size,
                               rng=self.rng) if p.role == "dominator" else None
        job = SlicePassJob((p.group, p.attempt), self.node_id, tuple(p.pieces), parts,
                           lay.num_params, batches, self.params.lr, p.flops, p.memory_bytes)
        self._promise = job.promise
        out: list[Effect] = [RunJob(p.attempt, job)]
        for dst, nbytes in p.send_boundary:
            out += self._send_payload(dst, "boundary", nbytes)
        return out

    def _maybe_done(self, now: float) -> list[Effect]:
        p = self.plan
        if p is None or self.sent_done or not self.job_done or self.bound_in < p.expect_boundary \
                or p.role == "dummy":
            return []
        if self._finish is None:
            # this device's bulk share of the pass is over (compute and transfers overlapped,
            # as in steady pipelining); the pipeline's fill and drain come on top, once: its
            # own (stages − 1) batch times, then the latency chain (the runtime's)
            busy = now - (self.compute_started if self.compute_started is not None else now)
            self._finish = now + p.fill_batches * busy
        if now < self._finish:
            self._deadline = self._finish
            return []
        self._deadline = None
        self.sent_done = True
        if p.links:
            relay = None if self.params.peer_to_peer else self.server
            stages = 2 * (self.layout.hidden_layers + 1)
            return [RunJob(("drain", p.attempt), PipelineDrain(stages, relay, p.links))]
        return [Send(self.server, PassDone(p.group, p.attempt))]

    # -------------------------------------------------------------- sharing
    def _share(self, m: ShareRequest) -> list[Effect]:
        """Upload the values of the top θ of its owned weights by Σ |mean gradient| over the
        epoch's passes (spec §5).  The selection reads the passes' results, which may still be
        deferred (training runs in batches, possibly ahead on a worker): it is made lazily, when
        the upload's values are first read (by the server, when it releases the epoch's
        uploads; by the wire, when the message is encoded), so that a group finishing its
        epoch does not force the training of every group's passes while the others are still
        simulating theirs.  Its length is known now (k, or 0 if it trained nothing), so the
        message is sized without it; its values are the ones an eager selection gives."""
        self._commit()
        lay = self.layout
        owners = tuple(m.owners)
        idx = lay.owned_flat(owners, trainable=True)
        k = int(round(self.params.theta * len(idx)))
        parts = {o: tuple(self.acc.get(o, ())) for o in owners}
        held = {o: self.held[o] for o in owners if o in self.held}
        n = k if k and any(parts.values()) else 0
        self.acc = {}
        self.share_owners = {m.epoch: owners}
        sel = Lazy(partial(top_theta, lay, owners, idx, k, parts, held))
        # the server answers the upload with this member's download
        return [Send(self.server, Upload(m.group, m.epoch, LazyArray(sel, 0, (n,), np.int32),
                                         LazyArray(sel, 1, (n,), np.float32)))]

    def _acc_of(self, owner: int) -> np.ndarray | None:
        """Σ |mean gradient| of ``owner``'s trainable entries over the epoch's passes (float64;
        :func:`acc_of`); ``None`` if it trained none."""
        return acc_of(self.layout, owner, self.acc.get(owner, ()))

    def _flat(self, owners) -> np.ndarray:
        """A full-length vector with the values of ``owners`` (zeros elsewhere)."""
        lay = self.layout
        flat = np.zeros(lay.num_params, np.float32)
        for o in owners:
            if o in self.held:
                flat[lay.owned_flat([o])] = as_array(self.held[o])
        return flat

    def _apply_download(self, m: Download) -> list[Effect]:
        done: list[Effect] = [Send(self.server, ShareDone(m.group, m.epoch))]
        owners = self.share_owners.get(m.epoch)
        if owners is None:
            return [misbehaved(self.server, f"Download for epoch {m.epoch} not asked for")]
        # the epoch is over: hold plain arrays, so that a deferred result does not keep every
        # pass of the run alive through the chain of jobs that produced it (they are computed:
        # the server read the uploads to answer)
        self.held = {o: as_array(v) for o, v in self.held.items()}
        lay = self.layout
        bad = check_sparse(m.indices, m.values, size=lay.num_params)
        if bad is None and not lay.owns_all(owners, m.indices, trainable=True):
            bad = "index not owned by the sender"     # (check_sparse's allowed=, by a mask)
        out: list[Effect] = []
        if bad is not None:        # applied nothing; the epoch still closes
            out.append(misbehaved(self.server, f"Download: {bad}"))
        elif len(m.indices):
            got = np.asarray(m.indices, np.int64)
            owner_of = lay.flat_owner[got]          # checked above: every index is in range
            rank = rank_in_owner(lay)
            for o in owners:
                mine = owner_of == o
                if o in self.held and mine.any():
                    vals = as_array(self.held[o]).copy()
                    vals[rank[got[mine]]] = np.asarray(m.values)[mine]
                    self.held[o] = vals
        # this member's part of the group's model at the end of the epoch (sim.parts)
        held = [o for o in owners if o in self.held]
        if held:
            idx = lay.owned_flat(held)
            out.append(Report("model_part", (idx, self._flat(held)[idx]),
                              (("model", "group_model"), ("round", m.epoch),
                               ("group", self.group))))
        return out + done


#: the share as this module defines it (a reference replacing ``SliceDevice._share`` calls it)
lazy_share = SliceDevice._share


def acc_of(layout, owner: int, parts) -> np.ndarray | None:
    """Σ |mean gradient| of ``owner``'s trainable entries over an epoch's passes (float64),
    summed on the owner's own entries (the same additions, from 0.0, in pass order, as
    ``acc[t] += part``); ``None`` if it trained none."""
    if not parts:
        return None
    own = np.zeros(len(layout.owned_flat([owner], trainable=True)), np.float64)
    for part in parts:
        own += as_array(part)
    return own


def top_theta(layout, owners: tuple, idx: np.ndarray, k: int, parts: dict,
              held: dict) -> tuple[np.ndarray, np.ndarray]:
    """A member's upload (:meth:`SliceDevice._share`): the ``k`` entries of ``idx`` (the
    trainable weights of ``owners``, flat) with the largest Σ |mean gradient| (``parts`` per
    owner), and their values (``held`` per owner; zeros for an owner it does not hold); none
    if no owner trained."""
    acc = np.zeros(len(idx), np.float64)
    seen = False
    for o in owners:
        own = acc_of(layout, o, parts.get(o, ()))
        if own is not None:
            acc[layout.position_in(owners, o)[0]] = own
            seen = True
    pos = top_k(acc, k) if k and seen else np.arange(0)
    # the values at idx (those of owners it holds; zeros for the others), as _flat's [idx]
    vals = np.zeros(len(idx), np.float32)
    for o in owners:
        if o in held:
            at, which = layout.position_in(owners, o)
            vals[at] = as_array(held[o])[which]
    return idx[pos].astype(np.int32), vals[pos].astype(np.float32)


def rank_in_owner(layout) -> np.ndarray:
    """Per flat parameter, its position among its owner's (``layout.owned_flat([owner])``,
    sorted): where a downloaded value goes in the owner's values.  Computed once per layout
    (a ``searchsorted`` per owner and download cost ≈ 2 % of a 120-device epoch).

    Examples
    --------
    >>> class L:
    ...     flat_owner = np.array([1, -1, 1, 0, -1, 1])
    >>> rank_in_owner(L()).tolist()
    [0, 0, 1, 0, 1, 2]
    """
    rank = _RANKS.get(layout)
    if rank is None:
        fo = np.asarray(layout.flat_owner, np.int64)
        order = np.argsort(fo, kind="stable")
        counts = np.bincount(fo - fo.min()) if fo.size else np.zeros(0, np.int64)
        starts = np.concatenate([[0], np.cumsum(counts)[:-1]]).astype(np.int64)
        rank = np.empty(fo.size, np.int64)
        rank[order] = np.arange(fo.size) - starts[fo[order] - (fo.min() if fo.size else 0)]
        rank.setflags(write=False)
        _RANKS[layout] = rank
    return rank


_RANKS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()
