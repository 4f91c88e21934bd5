"""The Crowdlearning parameter server (:class:`SlicingServer`): groups, passes with shuffling and
weight hand-over, relayed sealed traffic, dummy take-over, and top-θ sharing through a sliding
window.  It trains nothing and holds no key that opens device traffic."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from crowdlearn.crypto.sealing import WRAP, Card, Header, KeyRing, Sealed, escrow_len
from crowdlearn.protocols.crowdlearning.layout import DOMINATOR, Layout
from crowdlearn.protocols.crowdlearning.messages import (
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
from crowdlearn.protocols.crowdlearning.planning import (
    boundary_sends,
    owners_by_device,
    participant_cost,
)
from crowdlearn.protocols.crowdlearning.sharing import SlidingWindow
from crowdlearn.protocols.validate import check_sparse, misbehaved
from sim import wire
from sim.machine import (
    Effect,
    Halt,
    Input,
    Machine,
    NodeId,
    PeerJoined,
    PeerLost,
    Received,
    Report,
    Send,
    Start,
)
from sim.parts import ModelParts

__all__ = ["SlicingServer"]


@dataclass
class _Group:
    gid: int
    members: list
    epoch: int = 0
    order: list = field(default_factory=list)
    turn: int = 0
    holders: dict = field(default_factory=dict)     # piece -> device
    dominator: Any = None
    attempt: int = 0
    phase: str = "idle"        # idle | pass | share | waiting | done
    participants: set = field(default_factory=set)
    done: set = field(default_factory=set)
    sharing: set = field(default_factory=set)
    awaiting: set = field(default_factory=set)      # sharing members yet to upload
    passes_run: int = 0
    takeovers: int = 0
    boundary: dict = field(default_factory=dict)    # (src, dst) -> bytes of this attempt
    handover: dict = field(default_factory=dict)    # (src, dst) -> [(nbytes, owner), ...]
    senders: set = field(default_factory=set)       # participants + dummies handing over
    delivered: set = field(default_factory=set)     # owners whose initial weights went out
    unsent: dict = field(default_factory=dict)      # owner -> lost device that never sent it
    incoming: dict = field(default_factory=dict)    # device -> owners sent to it since its
                                                    # last PassDone (maybe still in flight)
    missing: set = field(default_factory=set)       # owners whose holder may not have them
    late: dict = field(default_factory=dict)        # (src, dst, attempt) -> hand-overs not
                                                    # relayed before that attempt was aborted


class SlicingServer(Machine):
    """The Crowdlearning parameter server: slices, groups, relays, shares.  Trains nothing."""

    def __init__(self, node_id: NodeId, layout: Layout, groups: Sequence[Sequence[int]],
                 params: SliceParams, init_weights: Sequence[np.ndarray], *, data_sizes: dict,
                 ring: KeyRing, rng: np.random.Generator):
        super().__init__(node_id)
        self.layout, self.params, self.rng = layout, params, rng
        # the initial model, which the server delivers to each owner's first holder (its only
        # knowledge of the weights besides the top-θ uploads)
        self.shapes = [np.shape(a) for a in init_weights]
        self.initial = np.concatenate([np.asarray(a, np.float32).reshape(-1)
                                       for a in init_weights])
        self.ring = ring            # the server's own key pair (it seals only placeholders)
        self.cards: dict = {}       # device -> card bytes it announced (what the server vouches)
        self.data_sizes = data_sizes
        self.groups = [_Group(g, list(m)) for g, m in enumerate(groups)]
        self.group_of = {d: g for g, m in enumerate(groups) for d in m}
        self.present: set = set()
        omega = params.omega or len(groups)
        self.window = SlidingWindow(self.initial, omega)
        self.min_count = omega * params.tau
        # sharing in ticks (spec §6, [ours]): group g's upload of epoch e is tick e·G + g + 1,
        # applied with the other groups' once all of epoch e's are in; downloads are answered
        # then, from the window ending at the epoch's last tick, whatever order uploads arrived
        self.pending: dict[int, list] = {}    # epoch -> [(group, member, indices, values,
        #   the owners to check it by at its release, or None: checked)]
        self.released = -1                    # the last epoch whose uploads were applied
        self.tick = 0                         # the window's newest tick (of that epoch)
        self.checkpoints: dict = {}    # (group, piece) -> (sealing device, escrowed payload)
        self.piece_bytes = [4 * int(layout.params_per_owner[p + 1])
                            for p in range(-1, layout.pieces)]
        # a hand-over carries the weights and, per trainable weight, its |gradient| sum so far
        # this epoch (the new holder ranks its top θ on the whole epoch, spec §5): 8 B each
        self.handover_bytes = [self.piece_bytes[p + 1] + 4 * len(layout.owned_flat(
            [p], trainable=True)) for p in range(-1, layout.pieces)]
        self.finished_groups = 0
        self.reported_epochs: dict[int, int] = {}

    @property
    def finished(self) -> bool:
        """Whether every group trained all its epochs (the run is complete)."""
        return self.finished_groups == len(self.groups)

    def stall_report(self) -> str:
        """Which groups did not finish, and where each stopped (for a run that stalled)."""
        stuck = [g for g in self.groups if g.phase != "done"]
        if not stuck:
            return ""
        def where(g: _Group) -> str:
            online = sum(1 for d in g.members if self._ready(d))
            what = {"pass": f"pass {g.turn + 1} of {len(g.order)} (waiting for "
                            f"{len(g.participants - g.done)} of {len(g.participants)} devices)",
                    "waiting": f"waiting for members: {online} of {len(g.members)} online",
                    "share": "sharing, its uploads in, waiting for other groups' uploads"
                             if g.sharing and not g.awaiting else
                             f"sharing, waiting for {len(g.sharing)} members",
                    "keys": "waiting for members' keys"}.get(g.phase, g.phase)
            return f"group {g.gid} at epoch {g.epoch + 1} of {self.params.epochs}: {what}"
        return (f"{len(stuck)} of {len(self.groups)} Crowdlearning groups did not finish: "
                + "; ".join(where(g) for g in stuck))

    # -------------------------------------------------------------- dispatch
    def handle(self, event: Input, now: float) -> list[Effect]:
        out = self._dispatch(event, now)
        # any event may complete an epoch's uploads (an upload, a member lost, a group that
        # cannot go on)
        return out + self._release(now) if self.pending else out

    def _dispatch(self, event: Input, now: float) -> list[Effect]:
        if isinstance(event, PeerJoined):
            self.present.add(event.peer)
            return self._maybe_resume(event.peer, now)
        if isinstance(event, PeerLost):
            self.present.discard(event.peer)
            out = self._on_lost(event.peer, now)
            g = self.groups[self.group_of[event.peer]] if event.peer in self.group_of else None
            return out + (self._maybe_begin(g, now) if g is not None else [])
        if isinstance(event, Start):
            out: list[Effect] = []
            for g in self.groups:
                g.phase = "keys"
                out += self._maybe_begin(g, now)
            return out
        if isinstance(event, Received):
            m, src = event.message, event.src
            if isinstance(m, KeyAnnounce):
                return self._on_card(src, m, now)
            g = self._group_of_message(src, m)
            if g is None:
                return [misbehaved(src, f"{type(m).__name__} for group "
                                        f"{getattr(m, 'group', None)!r} it is not a member of")]
            if isinstance(m, Relay):
                return self._relay(src, m)
            if isinstance(m, PassDone):
                return self._pass_done(src, m, now)
            if isinstance(m, Upload):
                return self._upload(src, m, now)
            if isinstance(m, ShareDone):
                if g.phase == "share" and m.epoch == g.epoch and src in g.sharing:
                    g.sharing.discard(src)
                    return self._maybe_finish_share(g, now)
                return []
            return [misbehaved(src, f"unexpected {type(m).__name__}")]
        return []

    def _group_of_message(self, src, m) -> _Group | None:
        """The sender's group if the message names it (group numbers come from the message:
        an unknown group, or another group than the sender's, is misbehaviour)."""
        gid = self.group_of.get(src)
        if gid is None or getattr(m, "group", None) != gid:
            return None
        return self.groups[gid]

    # -------------------------------------------------------------- keys
    def _ready(self, d) -> bool:
        """Online and its key vouched for: a device may take part in passes."""
        return d in self.present and d in self.cards

    def _on_card(self, src, m: KeyAnnounce, now: float) -> list[Effect]:
        """Bind the announced card to the node the transport delivered it from, send the
        announcer its group's directory and the other members the new card."""
        if src not in self.group_of:
            return [misbehaved(src, "key announcement from a node in no group")]
        g = self.groups[self.group_of[src]]
        changed = self.cards.get(src) != m.card
        self.cards[src] = m.card
        self.ring.learn(src, Card.from_bytes(m.card))   # to seal its initial weights for it
        keyed = [d for d in g.members if d in self.cards and d != src]
        out: list[Effect] = [Send(src, KeyDirectory(
            g.gid, tuple([SERVER_SRC] + keyed),
            tuple([self.ring.card().to_bytes()] + [self.cards[d] for d in keyed])))]
        if changed:
            out += [Send(d, KeyDirectory(g.gid, (src,), (m.card,))) for d in keyed
                    if d in self.present]
        return out + self._maybe_resume(src, now)

    def _maybe_resume(self, peer, now: float) -> list[Effect]:
        g = self.groups[self.group_of[peer]] if peer in self.group_of else None
        if g is None:
            return []
        if g.phase == "waiting" and self._ready(peer):
            return self._next_pass(g, now)
        return self._maybe_begin(g, now)

    def _maybe_begin(self, g: _Group, now: float) -> list[Effect]:
        """Start a group's first epoch once every online member's key is known."""
        if g.phase != "keys" or not all(d in self.cards for d in g.members if d in self.present):
            return []
        return self._start_epoch(g, now)

    # -------------------------------------------------------------- passes
    def _start_epoch(self, g: _Group, now: float) -> list[Effect]:
        g.order = [g.members[i] for i in self.rng.permutation(len(g.members))]
        if g.dominator in g.order:
            # the last pass's arrangement carries over into the new epoch (the last dominator
            # goes first): n − 1 shuffles per epoch, every member dominator once (spec §4)
            g.order.remove(g.dominator)
            g.order.insert(0, g.dominator)
        g.turn = 0
        return self._next_pass(g, now)

    def _online(self, g: _Group) -> list:
        return [d for d in g.members if self._ready(d)]

    def _next_pass(self, g: _Group, now: float) -> list[Effect]:
        while g.turn < len(g.order) and not self._ready(g.order[g.turn]):
            g.turn += 1                              # an offline dominator's turn is skipped
        if g.turn >= len(g.order):
            return self._start_share(g, now)
        online = self._online(g)
        if len(online) < min(2, len(g.members)) and self.layout.pieces > 0:
            g.phase = "waiting"
            return []
        dom = g.order[g.turn]
        old_holders, old_dom = dict(g.holders), g.dominator
        if g.turn == 0 and dom == old_dom and g.holders and \
                all(self._ready(d) for d in g.holders.values()):
            return self._launch(g, now, old_holders, old_dom)     # no shuffle at the boundary
        followers = [d for d in online if d != dom]
        self.rng.shuffle(followers)
        new_holders = {p: followers[p % len(followers)] for p in range(self.layout.pieces)} \
            if followers else {}
        g.holders, g.dominator = new_holders, dom
        return self._launch(g, now, old_holders, old_dom)

    def _launch(self, g: _Group, now: float, old_holders: dict, old_dom: Any) -> list[Effect]:
        """Send every participant its PassPlan for a new attempt."""
        for (a, b), sends in g.handover.items():    # still owed from the attempt before
            if sends:
                g.late[(a, b, g.attempt)] = list(sends)
        g.attempt += 1
        g.phase = "pass"
        lay, dom = self.layout, g.dominator
        owners_of = owners_by_device(g.holders, dom)
        g.participants = set(owners_of)
        g.done = set()
        samples = int(self.data_sizes[dom])
        batches = math.ceil(samples / self.params.batch_size) if self.params.batch_size else 1
        # hand-over: each owner id whose holder changed moves its weights (or, if the old holder
        # is gone, the new holder fetches the server's checkpoint)
        # (the old holder may be a dummy now: it gets a PassPlan that only hands over).  An
        # owner's first holder gets the initial weights from the server (counted traffic).
        hand_send: dict = {}
        hand_expect: dict = {d: 0 for d in owners_of}
        fetch: list = []
        moves = [(DOMINATOR, old_dom, dom)] + [(p, old_holders.get(p), d)
                                               for p, d in g.holders.items()]
        for owner, old, new in moves:
            old = g.unsent.get(owner, old)
            # (weights sent to a device that was lost before the attempt ended may never have
            # arrived: their holder fetches the checkpoint, as if its holder were lost)
            gone = owner in g.missing
            if owner in g.delivered and not gone and (old is None or old == new):
                continue
            if owner in g.delivered and not gone and old in self.present \
                    and old in self.group_of:
                hand_send.setdefault(old, []).append((new, self.handover_bytes[owner + 1],
                                                      owner))
            else:
                fetch.append((new, owner, self.piece_bytes[owner + 1]))
            hand_expect[new] += 1
            g.incoming.setdefault(new, []).append(owner)
            g.delivered.add(owner)
        g.unsent = {}
        g.missing = set()
        dummies = [a for a in hand_send if a not in owners_of]
        g.senders = g.participants | set(dummies)
        # boundary traffic of the pass: per device pair, the sum over the owners they hold
        bsend = boundary_sends(lay, owners_of, samples)
        bexpect = {d: sum(1 for a in owners_of if d in bsend[a]) for d in owners_of}
        g.boundary = {(a, b): n for a in bsend for b, n in bsend[a].items()}
        g.handover = {}
        for a, sends in hand_send.items():
            for b, n, owner in sends:
                g.handover.setdefault((a, b), []).append((n, owner))
        # the pipeline (spec §3): mini-batches stream through the 2(L + 1) stages (each layer
        # boundary forth and back), so the bulk compute and transfers of the pass overlap (the
        # slowest piece or link sets the pace) and the pass adds one fill and drain: (stages − 1)
        # batch times of each participant's own work, then the latency chain over the pass's
        # boundary links, which the runtime prices (the server knows no link: PipelineDrain)
        links: tuple = ()
        fill_batches = 0.0
        if self.params.pipeline_latency and g.holders:
            links = tuple(sorted(g.boundary, key=str))
            fill_batches = (2 * (lay.hidden_layers + 1) - 1) / max(1, batches)
        out: list[Effect] = []
        for d, owners in owners_of.items():
            role = "dominator" if d == dom else "follower"
            flops, mem = participant_cost(lay, owners, samples)
            out.append(Send(d, PassPlan(
                g.gid, g.attempt, role, tuple(int(o) for o in owners),
                tuple(hand_send.get(d, ())), hand_expect[d],
                tuple(sorted(bsend[d].items())), bexpect[d],
                flops, mem, links, fill_batches)))
        for d in dummies:          # a new dummy still holds weights another device needs
            out.append(Send(d, PassPlan(g.gid, g.attempt, "dummy", (), tuple(hand_send[d]), 0,
                                        (), 0, 0.0, 0, (), 0.0)))
        for new, owner, nbytes in fetch:
            # dummy take-over: the last hand-over of the piece, escrowed for the group's members
            # (the server cannot open it); without one, the initial weights, which the server
            # delivered first and seals again.  The new holder resumes from what it opens
            # (training since that copy is lost).
            src, payload = self.checkpoints.get((g.gid, owner), (SERVER_SRC, None))
            if payload is None:
                init = self.initial[lay.owned_flat([owner])]
                payload = Sealed.of_arrays(self.ring, new, Header("checkpoint", g.gid, g.attempt,
                                                                  owner),
                                           lambda v=init: [v], nbytes, contents=(init, None))
            out.append(Send(new, Relayed(g.gid, g.attempt, src, "checkpoint", payload)))
        if len(g.participants) == 1 and not g.holders:
            pass   # S-SGD: a lone dominator; the pass ends with its PassDone
        return out

    def _relay(self, src, m: Relay) -> list[Effect]:
        g = self.groups[m.group]
        if m.attempt != g.attempt:
            return self._relay_late(src, g, m)
        if g.phase != "pass" or src not in g.senders or m.dst not in g.participants:
            return [misbehaved(src, f"relay {src!r} -> {m.dst!r} outside the pass's "
                                    f"participants", group=g.gid)]
        size = _payload_len(m.payload)
        owner = None
        if m.kind == "boundary":
            want = g.boundary.get((src, m.dst))
            if want is None or size != 12 + want + 16:
                return [misbehaved(src, f"boundary payload of {size} bytes, planned "
                                        f"{want}", group=g.gid)]
        else:
            owner = _fitting_owner(g.handover.get((src, m.dst), []), size, len(g.members))
            if owner is None:
                return [misbehaved(src, f"hand-over of {size} bytes not in the plan",
                                   group=g.gid)]
        return self._forward(src, g, m, owner)

    def _forward(self, src, g: _Group, m: Relay, owner) -> list[Effect]:
        if m.dst not in self.present:
            return []
        if owner is not None:                       # keep the last escrowed copy per owner
            self.checkpoints[(g.gid, owner)] = (src, m.payload)
        out = Relayed(m.group, m.attempt, src, m.kind, m.payload)
        return [Send(m.dst, out), Report("role_bytes", wire.size(out), (("role", "server"),))]

    def _relay_late(self, src, g: _Group, m: Relay) -> list[Effect]:
        """Traffic of an earlier attempt: boundary payloads are dropped; a hand-over that was
        planned then is still forwarded [ours]: the relaunched attempt counts on its receiver
        holding those weights (the sender gave them away), so they must arrive."""
        late = g.late.get((src, m.dst, m.attempt)) if m.kind == "handover" else None
        if not late:
            return []
        owner = _fitting_owner(late, _payload_len(m.payload), len(g.members))
        if owner is None:
            return []
        return self._forward(src, g, m, owner)

    def _pass_done(self, src, m: PassDone, now: float) -> list[Effect]:
        g = self.groups[m.group]
        if m.attempt != g.attempt or g.phase != "pass":
            return []
        if src not in g.participants:
            return [misbehaved(src, "PassDone from a non-participant", group=g.gid)]
        g.done.add(src)
        g.incoming.pop(src, None)          # it computed: it had received its weights
        if g.done < g.participants:
            return []
        g.passes_run += 1
        g.turn += 1
        return self._next_pass(g, now)

    def _on_lost(self, peer, now: float) -> list[Effect]:
        if peer not in self.group_of:
            return []
        g = self.groups[self.group_of[peer]]
        # [ours] weights sent to it since its last PassDone may not have reached it: whoever
        # holds those owners next fetches the checkpoint (the server cannot know what arrived)
        g.missing |= set(g.incoming.pop(peer, ()))
        if g.phase == "share" and peer in g.sharing:
            g.sharing.discard(peer)
            g.awaiting.discard(peer)
            return self._maybe_finish_share(g, now)
        if g.phase != "pass" or peer not in g.senders:
            return []
        # weights the peer was to hand over and never sent: their new holders fetch the
        # last checkpoint instead
        g.unsent = {o: peer for (a, _), sends in g.handover.items() if a == peer
                    for _, o in sends}
        if peer not in g.participants and not g.unsent:
            return []                                 # a dummy that had handed everything over
        # abandon the attempt: its participants drop its results
        out: list[Effect] = [Send(d, Abort(g.gid, g.attempt)) for d in g.senders
                             if d != peer and d in self.present]
        if peer == g.dominator:
            g.turn += 1                               # its data is gone for this epoch
            return out + self._next_pass(g, now)
        # a follower: its pieces go to a dummy, or to the least-loaded follower [ours]
        lost = [p for p, d in g.holders.items() if d == peer]
        online = [d for d in self._online(g) if d != g.dominator]
        if not online:
            g.phase = "waiting"
            return out
        idle = [d for d in online if d not in g.holders.values()]
        load = {d: sum(1 for h in g.holders.values() if h == d) for d in online}
        old = dict(g.holders)
        for p in lost:
            target = idle.pop(0) if idle else min(online, key=lambda d: (load[d], str(d)))
            load[target] = load.get(target, 0) + 1
            g.holders[p] = target
        g.takeovers += 1
        old_for_launch = {p: (peer if p in lost else d) for p, d in old.items()}
        return out + [Report("takeover", 1, (("group", g.gid), ("device", peer)))] + \
            self._launch(g, now, old_for_launch, g.dominator)

    # -------------------------------------------------------------- sharing (spec §5–6)
    def _start_share(self, g: _Group, now: float) -> list[Effect]:
        g.phase = "share"
        owners_of = owners_by_device(g.holders, g.dominator)
        g.sharing = {d for d in owners_of if d in self.present}
        g.awaiting = set(g.sharing)
        if not g.sharing:
            return self._finish_epoch(g, now)
        return [Send(d, ShareRequest(g.gid, g.epoch, tuple(owners_of[d]))) for d in
                sorted(g.sharing, key=str)]

    def _upload(self, src, m: Upload, now: float) -> list[Effect]:
        """Keep a member's upload for its epoch's tick; it is answered with the member's
        download once every group's upload of the epoch is in (:meth:`_release`): the upload is
        the request, so a download always reflects the member's own upload (a separate request
        message could overtake the larger upload on the wire).  An upload with indices out of
        range, repeated, or not owned by the sender, or with non-finite values, changes
        nothing: it is recorded, and the member forfeits this epoch's share (the epoch is not
        held up)."""
        g = self.groups[m.group]
        if g.phase != "share" or m.epoch != g.epoch or src not in g.awaiting:
            return []
        g.awaiting.discard(src)
        owners = self._owners(g, src)
        if m.epoch > self.released and _uncomputed(m.indices, m.values):
            # values the sender's own simulation computes lazily (its top-θ selection over
            # training results still deferred, SliceDevice._share): first read when the
            # epoch's uploads are released, and checked there (refused there as here)
            self.pending.setdefault(m.epoch, []).append(
                (g.gid, src, m.indices, m.values, owners))
            return []
        bad = self._check_upload(owners, m.indices, m.values)
        if bad is not None:
            g.sharing.discard(src)
            return [misbehaved(src, f"Upload: {bad}", group=g.gid)] + \
                self._maybe_finish_share(g, now)
        if m.epoch <= self.released:
            # a group that could not go on when its epoch's uploads were applied (too few
            # members online) catches up: its upload joins the window at its tick, and it is
            # answered from the window as it is now [ours]
            self.window.upload(m.indices, m.values, self._tick_of(m.epoch, g.gid))
            return self._download(src, g)
        self.pending.setdefault(m.epoch, []).append((g.gid, src, m.indices, m.values, None))
        return []

    def _check_upload(self, owners, indices, values) -> str | None:
        """What is wrong with an upload from the member owning ``owners`` (None: nothing)."""
        bad = check_sparse(indices, values, size=self.layout.num_params)
        if bad is None and not self.layout.owns_all(owners, np.asarray(indices),
                                                    trainable=True):
            bad = "index not owned by the sender"     # (check_sparse's allowed=, by a mask)
        return bad

    def _tick_of(self, epoch: int, gid: int) -> int:
        return epoch * len(self.groups) + gid + 1

    def _uploads_in(self, epoch: int) -> bool:
        """Whether every group that can has uploaded for ``epoch``: it is past it, or sharing
        it with no member left to upload, or waiting for members (it may never come back)."""
        return all(h.epoch > epoch or h.phase == "waiting"
                   or (h.epoch == epoch and h.phase == "share" and not h.awaiting)
                   for h in self.groups)

    def _release(self, now: float) -> list[Effect]:
        """Apply the uploads of every epoch whose uploads are all in, in (group, member) order,
        and answer their downloads in that order (spec §6, [ours] deterministic ticks).  An
        upload whose values were computed lazily is checked here, at their first read: a bad
        one is refused as :meth:`_upload` refuses it (the member forfeits the epoch's share)."""
        out: list[Effect] = []
        while self.pending and self._uploads_in(epoch := min(self.pending)):
            ups, refused = [], {}
            for gid, src, idx, vals, owners in sorted(self.pending.pop(epoch),
                                                      key=lambda u: (u[0], str(u[1]))):
                if owners is not None:
                    bad = self._check_upload(owners, idx, vals)
                    if bad is not None:
                        g = refused[gid] = self.groups[gid]
                        g.sharing.discard(src)
                        out.append(misbehaved(src, f"Upload: {bad}", group=gid))
                        continue
                    idx, vals = np.asarray(idx), np.asarray(vals)
                ups.append((gid, src, idx, vals))
            for gid, _, idx, vals in ups:
                self.window.upload(idx, vals, self._tick_of(epoch, gid))
            self.released = epoch
            self.tick = self._tick_of(epoch, len(self.groups) - 1)
            if len(ups) > 1:     # every download below is answered at this tick
                self.window.prepare(self.tick, self.min_count)
            for gid, src, _, _ in ups:
                g = self.groups[gid]
                if g.phase == "share" and g.epoch == epoch and src in g.sharing:
                    out += self._download(src, g)
            for g in refused.values():      # a group whose every member was refused goes on
                if g.phase == "share" and g.epoch == epoch:
                    out += self._maybe_finish_share(g, now)
        return out

    @staticmethod
    def _owners(g: _Group, src) -> list:
        owners = [DOMINATOR] if src == g.dominator else []
        return owners + [p for p, d in g.holders.items() if d == src]

    def _download(self, src, g: _Group) -> list[Effect]:
        owned = self.layout.owned_flat(self._owners(g, src), trainable=True)
        idx, vals = self.window.query(owned, self.tick, self.min_count)
        return [Send(src, Download(g.gid, g.epoch, idx.astype(np.int32), vals))]

    def _maybe_finish_share(self, g: _Group, now: float) -> list[Effect]:
        return self._finish_epoch(g, now) if not g.sharing else []

    def _finish_epoch(self, g: _Group, now: float) -> list[Effect]:
        # the group's model is held in parts by its members, who report them as they apply
        # their downloads (before their ShareDone): the monitor joins them, entries no member
        # reported keeping their last reported (or initial) values
        out: list[Effect] = [Report("group_model", ModelParts(self.shapes, self.initial),
                                    (("round", g.epoch), ("group", g.gid),
                                     ("of", len(self.groups))))]
        g.epoch += 1
        if g.epoch >= self.params.epochs:
            g.phase = "done"
            self.finished_groups += 1
            if self.finished_groups == len(self.groups):
                out.append(Halt())
            return out
        return out + self._start_epoch(g, now)


def _uncomputed(*arrays) -> bool:
    """Whether any of ``arrays`` is a lazy array not computed yet."""
    return any(getattr(a, "computed", True) is False for a in arrays)


def _fitting_owner(sends: list, size: int, members: int) -> int | None:
    """Which planned hand-over ``(nbytes, owner)`` a payload of ``size`` bytes is: the planned
    size that the escrow's length fits exactly (a whole number of member wraps); removed from
    ``sends``.  ``None`` if none fits."""
    fits = [(n, o) for n, o in sends if escrow_len(n, 0) <= size <= escrow_len(n, members)
            and (size - escrow_len(n, 0)) % WRAP == 0]
    if not fits:
        return None
    sends.remove(fits[0])
    return fits[0][1]


def _payload_len(payload: Any) -> int:
    """Bytes a relayed payload occupies on the wire (a :class:`Sealed` or raw bytes)."""
    if hasattr(payload, "wire_len"):
        return int(payload.wire_len())
    if isinstance(payload, (bytes, bytearray, memoryview)):
        return len(payload)
    return -1
