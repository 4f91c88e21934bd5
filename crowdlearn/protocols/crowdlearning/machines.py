"""Crowdlearning (SliceNet) as sans-I/O machines: groups of phones train model-parallel slices.

References: L. Chen, T. Jung, H. Du, J. Qian, J. Hou, X.-Y. Li, "Crowdlearning: Crowded Deep
Learning with Data Privacy", IEEE SECON 2018.  ``docs/design.md`` lists every choice the paper
leaves open (marked [ours] there and here).

Pieces of the design:

* :class:`Layout` — which piece (or the dominator) owns every parameter of a dense model under a
  :class:`~slicenet.plan.SlicePlan` (source ownership), the boundary traffic per sample between
  owners, and each owner's share of the training FLOPs.
* :class:`SlicePassJob` — one participant's part of a pass, carrying the weights it holds; the
  executor runs a pass once all its parts are in (the fused path: the group's whole network
  trained on the dominator's batches, proven equal to piece-by-piece execution) and gives every
  participant back its own entries.  Each device holds only the weights it owns and learns
  others' only from hand-overs, checkpoints and downloads (issue 8).
* :class:`SlicingServer` / :class:`SliceDevice` — the protocol: passes with shuffling and weight
  hand-over, relayed (or peer-to-peer) sealed traffic, dummy take-over, top-θ sharing through a
  sliding-window parameter server.
* Keys and checks: every device has its own :class:`~crowdlearn.crypto.KeyRing` and announces
  only its public card (:class:`KeyAnnounce`); the server vouches for the cards of a group
  (:class:`KeyDirectory`) and never holds a key that opens device traffic: boundary payloads are
  sealed device to device, hand-overs (the server's take-over checkpoints) escrowed for the
  group's members.  The server checks membership, ownership, ranges, sizes and finiteness of
  everything a device sends, and a device checks its downloads; what fails is recorded as
  ``peer_misbehaved`` and dropped (``docs/design.md``, *Secure channels and hostile input*).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from crowdlearn.crypto.sealing import (
    CARD,
    WRAP,
    Card,
    Header,
    KeyRing,
    Sealed,
    SealError,
    escrow_len,
)
from crowdlearn.errors import CrowdlearnError
from crowdlearn.protocols.validate import check_sparse, misbehaved, sparse_vector
from crowdlearn.training.batching import make_batches
from crowdlearn.training.jobs import Deferred
from sim import wire
from sim.machine import (
    CancelJob,
    Disconnected,
    Effect,
    Halt,
    Input,
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
from sim.parts import ModelParts
from sim.wire import message
from slicenet.graph import Activation, BatchNorm, Dense, ModelDescription

SERVER: NodeId = "server"
DOMINATOR = -1            # owner id of the dominator's parameters
SERVER_SRC = -1           # ``Relayed.src`` / ``KeyDirectory.nodes`` entry meaning the server
ROLES = ("dominator", "follower", "dummy")
DEVICE_KINDS = ("handover", "boundary")     # what a device may ask the server to relay
KINDS = DEVICE_KINDS + ("checkpoint",)


# ====================================================================== layout
class Layout:
    """Ownership of a dense model's parameters under a slice plan, and its traffic.

    ``owner[k]`` (one int array per entry of :func:`slicenet.execution.weight_specs`, same
    shape) is the piece owning each entry, or ``DOMINATOR``.  Source ownership (spec §1): the
    kernel row of a hidden neuron belongs to the piece holding that neuron; input → hidden-1
    kernels, the input BatchNorm and the output bias belong to the dominator; a hidden neuron's
    bias and BatchNorm parameters to its piece.

    ``pair_floats[a, b]`` is the number of floats owner ``a`` sends owner ``b`` per training
    sample (forward partial sums + backward errors), indices shifted by one so that row/column 0
    is the dominator.
    """

    def __init__(self, desc: ModelDescription, piece_of_unit: Sequence[np.ndarray], pieces: int):
        from slicenet.layout import weight_specs

        dense = [i for i, layer in enumerate(desc.layers) if isinstance(layer, Dense)]
        if not dense:
            raise CrowdlearnError("Crowdlearning needs a model with at least one Dense layer")
        hidden = dense[:-1]
        if len(piece_of_unit) != len(hidden):
            raise ValueError(f"{len(piece_of_unit)} hidden assignments for {len(hidden)} layers")
        self.desc = desc
        self.pieces = int(pieces)
        self.piece_of_unit = [np.asarray(p, np.int64) for p in piece_of_unit]
        self.specs = weight_specs(desc)
        hidden_pos = {layer: h for h, layer in enumerate(hidden)}
        owner: list[np.ndarray] = []
        current: np.ndarray | None = None    # owners of the units the next layer reads
        for spec in self.specs:
            layer = desc.layers[spec.layer]
            if isinstance(layer, Dense):
                h = hidden_pos.get(spec.layer)
                if spec.role == "kernel":
                    owner.append(np.full(spec.shape, DOMINATOR, np.int64) if current is None
                                 else np.repeat(current[:, None], spec.shape[1], axis=1))
                if spec.role == "bias" or (spec.role == "kernel" and not layer.use_bias):
                    if spec.role == "bias":
                        owner.append(np.full(spec.shape, DOMINATOR, np.int64) if h is None
                                     else self.piece_of_unit[h].copy())
                    current = None if h is None else self.piece_of_unit[h]
            else:   # BatchNorm parameters follow the units they normalise
                owner.append(np.full(spec.shape, DOMINATOR, np.int64) if current is None
                             else current.copy())
        self.owner = owner
        self.shapes = [s.shape for s in self.specs]
        self.sizes = [int(np.prod(s)) for s in self.shapes]
        self.offsets = np.concatenate([[0], np.cumsum(self.sizes)]).astype(np.int64)
        self.flat_owner = np.concatenate([o.reshape(-1) for o in owner])
        # moving BatchNorm statistics travel with their piece but are not shared (θ counts
        # trainable weights only: they have no gradient to rank)
        self.flat_trainable = np.concatenate([np.full(s.shape, s.trainable).reshape(-1)
                                              for s in self.specs])
        self.num_params = int(self.offsets[-1])
        self.params_per_owner = np.bincount(self.flat_owner + 1, minlength=self.pieces + 1)
        self.hidden_layers = len(hidden)
        self.num_outputs = desc.layers[dense[-1]].units
        self.pair_floats = self._traffic()
        # training FLOPs per sample: 3 × forward (2 per multiply-add, 1 per bias / activation
        # output, 4 per BatchNorm output)
        fwd, width = 0, int(np.prod(desc.input_shape))
        for layer in desc.layers:
            if isinstance(layer, Dense):
                fwd += 2 * width * layer.units + layer.units
                width = layer.units
            elif isinstance(layer, BatchNorm):
                fwd += 4 * width
            elif isinstance(layer, Activation):
                fwd += width
        self.train_flops_per_sample = 3 * fwd
        self._owned: dict = {}

    def _traffic(self) -> np.ndarray:
        t = np.zeros((self.pieces + 1, self.pieces + 1), np.int64)
        if not self.hidden_layers:
            return t
        # dominator -> hidden-1 weighted sums, one per neuron; errors back
        np.add.at(t[0], self.piece_of_unit[0] + 1, 1)
        np.add.at(t[:, 0], self.piece_of_unit[0] + 1, 1)
        # hidden l -> hidden l+1: one partial sum per (target neuron, foreign source piece)
        for h in range(self.hidden_layers - 1):
            src_pieces = np.unique(self.piece_of_unit[h])
            for j_piece in np.unique(self.piece_of_unit[h + 1]):
                targets = int(np.sum(self.piece_of_unit[h + 1] == j_piece))
                for q in src_pieces:
                    if q != j_piece:     # dense: every source piece feeds every target
                        t[q + 1, j_piece + 1] += targets
                        t[j_piece + 1, q + 1] += targets
        # last hidden -> output: each holder sends output-many partial sums; errors back
        for q in np.unique(self.piece_of_unit[-1]):
            t[q + 1, 0] += self.num_outputs
            t[0, q + 1] += self.num_outputs
        np.fill_diagonal(t, 0)      # units an owner holds itself cost no traffic
        return t

    def owned_flat(self, owners: Sequence[int], *, trainable: bool = False) -> np.ndarray:
        """Flat parameter indices owned by any of ``owners`` (pieces or ``DOMINATOR``); only
        the trainable ones (what is shared, spec §5) if ``trainable``."""
        key = (tuple(sorted(int(o) for o in owners)), bool(trainable))
        got = self._owned.get(key)
        if got is None:
            mine = np.isin(self.flat_owner, np.asarray(key[0], np.int64))
            got = np.flatnonzero(mine & self.flat_trainable if trainable else mine)
            got.setflags(write=False)
            self._owned[key] = got
        return got

    def flops_share(self, owners: Sequence[int]) -> float:
        """Fraction of a training step's FLOPs done by ``owners`` [ours: ∝ parameters owned]."""
        n = sum(int(self.params_per_owner[o + 1]) for o in owners)
        return n / self.num_params


def layout_from_plan(desc: ModelDescription, graph, plan) -> Layout:
    """A :class:`Layout` from a :class:`~slicenet.graph.CostGraph` plan (neuron or block
    granularity)."""
    pieces_of_layer = []
    for layer in range(len(graph.layer_sizes)):
        sl = graph.layer_slice(layer)
        pieces_of_layer.append(np.repeat(np.asarray(plan.assignment[sl]),
                                         np.asarray(graph.size[sl])))
    return Layout(desc, pieces_of_layer, len(plan.pieces))


def whole_model_layout(desc: ModelDescription) -> Layout:
    """No slicing (S-SGD): the single device owns everything as dominator."""
    hidden = [layer for layer in desc.layers if isinstance(layer, Dense)][:-1]
    return Layout(desc, [np.full(layer.units, DOMINATOR, np.int64) for layer in hidden], 0)


def description_for(hidden: Sequence[int], inputs: int, outputs: int, *,
                    activation: str = "relu", batchnorm: bool = False) -> ModelDescription:
    """A dense model description ``inputs → hidden... → outputs`` (optionally BatchNorm before
    every activation and on the input, as in the paper's MLP)."""
    layers: list = [BatchNorm()] if batchnorm else []
    for units in hidden:
        layers.append(Dense(int(units)))
        if batchnorm:
            layers.append(BatchNorm())
        layers.append(Activation(activation))
    layers.append(Dense(int(outputs)))
    return ModelDescription((int(inputs),), tuple(layers), name="mlp")


# ====================================================================== the pass as a job
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
    the Σ over the pass's mini-batches of |mean gradient| of its trainable entries (spec §5).
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

    @property
    def collective(self) -> tuple:
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


def _arr(v: Any) -> np.ndarray:
    """An owner's values: an array, or a one-entry deferred job result (read now)."""
    return np.asarray(v[0] if isinstance(v, Deferred) else v, np.float32)


def _acc_sum(parts: Sequence, n: int) -> np.ndarray:
    """The float32 sum of |gradient| parts (what a hand-over carries)."""
    total = np.zeros(n, np.float32)
    for part in parts:
        total += _arr(part)
    return total


# ====================================================================== messages
@message(0x0301)
@dataclass(frozen=True)
class PassPlan:
    """Server → participant: your part in one pass."""

    group: int
    attempt: int             # unique per (group, pass attempt); stale messages carry old ids
    role: str                # "dominator" | "follower" | "dummy"
    pieces: tuple            # pieces this device holds in the pass
    send_handover: tuple     # ((dst, nbytes, owner), ...) weights to hand over before the pass
    expect_handover: int     # hand-over payloads to receive before computing
    send_boundary: tuple     # ((dst, nbytes), ...) this pass's boundary traffic
    expect_boundary: int     # boundary payloads to receive during the pass
    flops: float
    memory_bytes: int
    fill_drain_s: float      # the pipeline's latency chain, paid once per pass (spec §3)
    fill_batches: float = 0.0   # (stages − 1) / batches: the fill and drain in batch times

    def __post_init__(self):
        _non_negative(self, "group", "attempt", "expect_handover", "expect_boundary", "flops",
                      "memory_bytes", "fill_drain_s", "fill_batches")
        if self.role not in ROLES:
            raise ValueError(f"role must be one of {ROLES}; got {self.role!r}")


@message(0x0302)
@dataclass(frozen=True)
class Relay:
    """Device → server: forward ``payload`` (sealed for ``dst``) to ``dst``."""

    group: int
    attempt: int
    dst: int
    kind: str                # "handover" | "boundary"
    payload: Any             # bytes on a real wire, a :class:`Sealed` in a simulation

    def __post_init__(self):
        _non_negative(self, "group", "attempt")
        _kind(self.kind, DEVICE_KINDS)


@message(0x0303)
@dataclass(frozen=True)
class Relayed:
    """Server → device (or device → device in peer-to-peer mode): a sealed payload."""

    group: int
    attempt: int
    src: int                 # the sealing device, or SERVER_SRC
    kind: str
    payload: Any

    def __post_init__(self):
        _non_negative(self, "group", "attempt")
        _kind(self.kind, KINDS)


@message(0x0304)
@dataclass(frozen=True)
class PassDone:
    group: int
    attempt: int

    def __post_init__(self):
        _non_negative(self, "group", "attempt")


@message(0x0305)
@dataclass(frozen=True)
class Abort:
    group: int
    attempt: int

    def __post_init__(self):
        _non_negative(self, "group", "attempt")


@message(0x0306)
@dataclass(frozen=True)
class ShareRequest:
    """Server → member: upload the top θ of the weights you own, then ask for the global ones."""

    group: int
    epoch: int
    owners: tuple            # pieces held (DOMINATOR for the dominator's layers)

    def __post_init__(self):
        _non_negative(self, "group", "epoch")
        if not all(isinstance(o, (int, np.integer)) and o >= DOMINATOR for o in self.owners):
            raise ValueError(f"owners must be piece numbers or {DOMINATOR}; got {self.owners}")


@message(0x0307)
@dataclass(frozen=True, eq=False)
class Upload:
    group: int
    epoch: int
    indices: np.ndarray      # int32 flat parameter indices
    values: np.ndarray       # float32 plain weight values

    def __post_init__(self):
        _non_negative(self, "group", "epoch")
        sparse_vector(self.indices, self.values)


@message(0x0309)
@dataclass(frozen=True, eq=False)
class Download:
    group: int
    epoch: int
    indices: np.ndarray
    values: np.ndarray

    def __post_init__(self):
        _non_negative(self, "group", "epoch")
        sparse_vector(self.indices, self.values)


@message(0x030A)
@dataclass(frozen=True)
class ShareDone:
    """Member → server: the download is applied; the epoch may close."""

    group: int
    epoch: int

    def __post_init__(self):
        _non_negative(self, "group", "epoch")


@message(0x030B)
@dataclass(frozen=True)
class KeyAnnounce:
    """Device → server: my public key and session salt (a :class:`~crowdlearn.crypto.Card`).
    The private key never leaves the device."""

    card: bytes

    def __post_init__(self):
        if len(self.card) != CARD:
            raise ValueError(f"a card is {CARD} bytes; got {len(self.card)}")


@message(0x030C)
@dataclass(frozen=True)
class KeyDirectory:
    """Server → member: the cards of the group's members (``SERVER_SRC`` is the server's own),
    vouched for by the server as belonging to those node ids."""

    group: int
    nodes: tuple
    cards: tuple

    def __post_init__(self):
        _non_negative(self, "group")
        if len(self.nodes) != len(self.cards) or \
                not all(isinstance(c, bytes) and len(c) == CARD for c in self.cards) or \
                not all(isinstance(n, (int, np.integer)) for n in self.nodes):
            raise ValueError(f"a directory pairs int node ids with {CARD}-byte cards; got "
                             f"{len(self.nodes)} nodes, {len(self.cards)} cards")


def _non_negative(msg: Any, *names: str) -> None:
    for name in names:
        v = getattr(msg, name)
        if isinstance(v, (bool, np.bool_)) or not isinstance(v, (int, float, np.number)) \
                or not v >= 0:
            raise ValueError(f"{type(msg).__name__}.{name} must be a number >= 0; got {v!r}")


def _kind(kind: str, allowed: tuple) -> None:
    if kind not in allowed:
        raise ValueError(f"kind must be one of {allowed}; got {kind!r}")


# ====================================================================== parameters
@dataclass(frozen=True)
class SliceParams:
    epochs: int
    group_size: int
    pieces: int
    theta: float = 0.5
    tau: float = 0.5
    omega: int = 0                # 0 → number of groups
    batch_size: int = 32
    lr: float = 0.05
    peer_to_peer: bool = False
    pipeline_latency: bool = True

    def __post_init__(self):
        if not 0 <= self.theta <= 1:
            raise ValueError(f"theta must be in [0, 1]; got {self.theta}")
        if not 0 <= self.tau <= 1:
            raise ValueError(f"tau must be in [0, 1]; got {self.tau}")
        if self.group_size < 1 or self.pieces < 0 or self.epochs < 1:
            raise ValueError("group_size >= 1, pieces >= 0, epochs >= 1 required")


def _top_k(scores: np.ndarray, k: int) -> np.ndarray:
    """Sorted positions of the ``k`` largest ``scores``, ties going to the lower position: the
    set ``np.argsort(-scores, kind="stable")[:k]``, found by one partition (linear time)
    instead of a sort.

    Examples
    --------
    >>> _top_k(np.array([1.0, 3.0, 2.0, 3.0, 2.0]), 3).tolist()
    [1, 2, 3]
    """
    n = len(scores)
    if k >= n:
        return np.arange(n)
    if k <= 0:
        return np.arange(0)
    if np.isnan(scores).any():          # argsort's order puts NaN last: keep it exactly
        return np.sort(np.argsort(-scores, kind="stable")[:k])
    cut = np.partition(scores, n - k)[n - k]         # the k-th largest score
    keep = scores > cut
    ties = np.flatnonzero(scores == cut)
    keep[ties[:k - int(np.count_nonzero(keep))]] = True
    return np.flatnonzero(keep)


# ====================================================================== server
class SlidingWindow:
    """Per weight, the values uploaded during the last ω ticks (spec §6, [ours] ticks).

    Examples
    --------
    >>> w = SlidingWindow(np.zeros(3, np.float32), omega=2)
    >>> w.upload(np.array([0, 1]), np.array([1.0, 2.0]), tick=1)
    >>> w.upload(np.array([0]), np.array([3.0]), tick=2)
    >>> idx, val = w.query(np.arange(3), tick=2, min_count=0)
    >>> idx.tolist(), val.tolist()
    ([0, 1], [2.0, 2.0])
    >>> w.query(np.arange(3), tick=3, min_count=0)[0].tolist()   # tick 1 left the window
    [0]
    """

    def __init__(self, init: np.ndarray, omega: int):
        self.omega = int(omega)
        n = len(init)
        # one row per weight (its ω slots side by side): a query gathers contiguous rows
        self.values = np.zeros((n, self.omega), np.float32)
        self.ticks = np.full((n, self.omega), -(10 ** 9), np.int32)     # ticks: epochs

    def upload(self, idx: np.ndarray, vals: np.ndarray, tick: int) -> None:
        """Record the values uploaded in ``tick``.  Slot ``tick mod ω`` holds a weight's value
        of that tick (one upload per weight and tick: a group's members own disjoint weights),
        so the window keeps exactly its last ω ticks whatever order uploads arrive in; an
        upload older than the one its slot holds has left the window and is dropped."""
        idx = np.asarray(idx, np.int64)
        if idx.size == 0:
            return
        slot = int(tick) % self.omega
        newer = self.ticks[idx, slot] <= tick
        self.values[idx[newer], slot] = np.asarray(vals)[newer]
        self.ticks[idx[newer], slot] = tick

    def query(self, idx: np.ndarray, tick: int, min_count: float) -> tuple[np.ndarray, np.ndarray]:
        """Indices among ``idx`` with more than ``min_count`` uploads in the window, and means."""
        idx = np.asarray(idx, np.int64)
        live = self.ticks[idx] > tick - self.omega
        count = live.sum(axis=1)
        keep = count > min_count
        if min_count <= 0:
            keep &= count > 0
        live = live[keep]
        vals = self.values[idx[keep]]
        # np.where(live, vals, 0.0) bit for bit (0.0 is all bits clear) without a branch per
        # entry; summed along each contiguous row, as numpy summed the slot-major view before
        masked = (vals.view(np.int32) & -live.astype(np.int32)).view(np.float32)
        sums = masked.sum(axis=1)
        return idx[keep], (sums / count[keep]).astype(np.float32)


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
                 latency: dict, ring: KeyRing, rng: np.random.Generator):
        super().__init__(node_id)
        self.layout, self.params, self.rng = layout, params, rng
        # the initial model, which the server delivers to each owner's first holder (its only
        # knowledge of the weights besides the top-θ uploads)
        self.shapes = [np.shape(a) for a in init_weights]
        self.initial = np.concatenate([np.asarray(a, np.float32).reshape(-1)
                                       for a in init_weights])
        self.ring = ring            # the server's own key pair (it seals only placeholders)
        self.cards: dict = {}       # device -> card bytes it announced (what the server vouches)
        self.data_sizes, self.latency = data_sizes, latency
        self.groups = [_Group(g, list(m)) for g, m in enumerate(groups)]
        self.group_of = {d: g for g, m in enumerate(groups) for d in m}
        self.present: set = set()
        omega = params.omega or len(groups)
        self.window = SlidingWindow(self.initial, omega)
        self.min_count = omega * params.tau
        self.tick = 0
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
                    "share": f"sharing, waiting for {len(g.sharing)} members",
                    "keys": "waiting for members' keys"}.get(g.phase, g.phase)
            return f"group {g.gid} at epoch {g.epoch + 1} of {self.params.epochs}: {what}"
        return (f"{len(stuck)} of {len(self.groups)} Crowdlearning groups did not finish: "
                + "; ".join(where(g) for g in stuck))

    # -------------------------------------------------------------- dispatch
    def handle(self, event: Input, now: float) -> list[Effect]:
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
        owners_of: dict = {dom: [DOMINATOR]}
        for p, d in g.holders.items():
            owners_of.setdefault(d, []).append(p)
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
        pair = lay.pair_floats
        bsend: dict = {d: {} for d in owners_of}
        for a, oa in owners_of.items():
            for b, ob in owners_of.items():
                if a == b:
                    continue
                floats = int(sum(pair[x + 1, y + 1] for x in oa for y in ob))
                if floats:
                    bsend[a][b] = 4 * floats * samples
        bexpect = {d: sum(1 for a in owners_of if d in bsend[a]) for d in owners_of}
        g.boundary = {(a, b): n for a in bsend for b, n in bsend[a].items()}
        g.handover = {}
        for a, sends in hand_send.items():
            for b, n, owner in sends:
                g.handover.setdefault((a, b), []).append((n, owner))
        # the pipeline (spec §3): mini-batches stream through the 2(L + 1) stages (each layer
        # boundary forth and back), so the bulk compute and transfers of the pass overlap (the
        # slowest piece or link sets the pace) and the pass adds one fill and drain: the
        # latency chain once, and (stages − 1) batch times of each participant's own work
        fill_s, fill_batches = 0.0, 0.0
        if self.params.pipeline_latency and g.holders:
            stages = 2 * (lay.hidden_layers + 1)
            hop = max((self.latency[a] + self.latency[b]) for a in owners_of for b in bsend[a]) \
                if any(bsend.values()) else 0.0
            fill_s = stages * hop
            fill_batches = (stages - 1) / max(1, batches)
        out: list[Effect] = []
        total_flops = lay.train_flops_per_sample * samples
        for d, owners in owners_of.items():
            role = "dominator" if d == dom else "follower"
            share = lay.flops_share(owners)
            mem = 12 * sum(int(lay.params_per_owner[o + 1]) for o in owners)
            out.append(Send(d, PassPlan(
                g.gid, g.attempt, role, tuple(int(o) for o in owners),
                tuple(hand_send.get(d, ())), hand_expect[d],
                tuple(sorted(bsend[d].items())), bexpect[d],
                share * total_flops, mem, fill_s, fill_batches)))
        for d in dummies:          # a new dummy still holds weights another device needs
            out.append(Send(d, PassPlan(g.gid, g.attempt, "dummy", (), tuple(hand_send[d]), 0,
                                        (), 0, 0.0, 0, 0.0)))
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
        self.tick += 1
        owners_of: dict = {}
        if g.dominator is not None:
            owners_of[g.dominator] = [DOMINATOR]
        for p, d in g.holders.items():
            owners_of.setdefault(d, []).append(p)
        g.sharing = {d for d in owners_of if d in self.present}
        g.share_tick = self.tick
        if not g.sharing:
            return self._finish_epoch(g, now)
        return [Send(d, ShareRequest(g.gid, g.epoch, tuple(owners_of[d]))) for d in
                sorted(g.sharing, key=str)]

    def _upload(self, src, m: Upload, now: float) -> list[Effect]:
        """Apply a member's upload, then answer with its download: the upload is the request,
        so a download always reflects the member's own upload (a separate request message
        could overtake the larger upload on the wire).  An upload with indices out of range,
        repeated, or not owned by the sender, or with non-finite values, changes nothing: it is
        recorded, and the member forfeits this epoch's share (the epoch is not held up)."""
        g = self.groups[m.group]
        if g.phase != "share" or m.epoch != g.epoch or src not in g.sharing:
            return []
        owned = self.layout.owned_flat(self._owners(g, src), trainable=True)
        bad = check_sparse(m.indices, m.values, size=self.layout.num_params, allowed=owned)
        if bad is not None:
            g.sharing.discard(src)
            return [misbehaved(src, f"Upload: {bad}", group=g.gid)] + \
                self._maybe_finish_share(g, now)
        self.window.upload(m.indices, m.values, g.share_tick)
        return self._download(src, m, owned)

    @staticmethod
    def _owners(g: _Group, src) -> list:
        owners = [DOMINATOR] if src == g.dominator else []
        return owners + [p for p, d in g.holders.items() if d == src]

    def _download(self, src, m, owned: np.ndarray) -> list[Effect]:
        g = self.groups[m.group]
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


# ====================================================================== device
class SliceDevice(Machine):
    """A group member: dominator, follower or dummy, as each PassPlan says.

    It holds the weights of the owners (its pieces, or the dominator's layers) it was given —
    by the server's initial checkpoint, a hand-over or a take-over checkpoint, all sealed
    messages — and this epoch's |gradient| sums of them; a pass's result becomes its own when
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
        """Hold ``owner``'s weights from a hand-over or checkpoint (``acc``: its |gradient|
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
                self.ring, dst, header, lambda v=values, a=acc, n=n: [_arr(v), _acc_sum(a, n)],
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
        """An owner's values and |gradient| sums from an opened plaintext."""
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
            # as in steady pipelining); the pipeline's fill and drain come on top, once
            busy = now - (self.compute_started if self.compute_started is not None else now)
            self._finish = now + p.fill_drain_s + p.fill_batches * busy
        if now < self._finish:
            self._deadline = self._finish
            return []
        self._deadline = None
        self.sent_done = True
        return [Send(self.server, PassDone(p.group, p.attempt))]

    # -------------------------------------------------------------- sharing
    def _share(self, m: ShareRequest) -> list[Effect]:
        self._commit()
        lay = self.layout
        idx = lay.owned_flat(m.owners, trainable=True)
        k = int(round(self.params.theta * len(idx)))
        # Σ |mean gradient| over the epoch's passes, per weight it owns (float64, pass order)
        acc = np.zeros(lay.num_params, np.float64)
        seen = False
        for o in m.owners:
            t = lay.owned_flat([o], trainable=True)
            for part in self.acc.get(o, ()):
                acc[t] += _arr(part)
                seen = True
        self.acc = {}
        if k and seen:
            top = idx[_top_k(acc[idx], k)]
        else:
            top = idx[:0]
        # the epoch is over: hold plain arrays, so that a deferred result does not keep every
        # pass of the run alive through the chain of jobs that produced it
        self.held = {o: _arr(v) for o, v in self.held.items()}
        flat = self._flat(m.owners)
        self.share_owners = {m.epoch: tuple(m.owners)}
        # the server answers the upload with this member's download
        return [Send(self.server, Upload(m.group, m.epoch, top.astype(np.int32),
                                         flat[top].astype(np.float32)))]

    def _flat(self, owners) -> np.ndarray:
        """A full-length vector with the values of ``owners`` (zeros elsewhere)."""
        lay = self.layout
        flat = np.zeros(lay.num_params, np.float32)
        for o in owners:
            if o in self.held:
                flat[lay.owned_flat([o])] = _arr(self.held[o])
        return flat

    def _apply_download(self, m: Download) -> list[Effect]:
        done: list[Effect] = [Send(self.server, ShareDone(m.group, m.epoch))]
        owners = self.share_owners.get(m.epoch)
        if owners is None:
            return [misbehaved(self.server, f"Download for epoch {m.epoch} not asked for")]
        lay = self.layout
        bad = check_sparse(m.indices, m.values, size=lay.num_params,
                           allowed=lay.owned_flat(owners, trainable=True))
        out: list[Effect] = []
        if bad is not None:        # applied nothing; the epoch still closes
            out.append(misbehaved(self.server, f"Download: {bad}"))
        elif len(m.indices):
            got = np.asarray(m.indices, np.int64)
            owner_of = lay.flat_owner[got]          # checked above: every index is in range
            for o in owners:
                own = lay.owned_flat([o])
                mine = owner_of == o
                if o in self.held and mine.any():
                    vals = _arr(self.held[o]).copy()
                    vals[np.searchsorted(own, got[mine])] = np.asarray(m.values)[mine]
                    self.held[o] = vals
        # this member's part of the group's model at the end of the epoch (sim.parts)
        held = [o for o in owners if o in self.held]
        if held:
            idx = lay.owned_flat(held)
            out.append(Report("model_part", (idx, self._flat(held)[idx]),
                              (("model", "group_model"), ("round", m.epoch),
                               ("group", self.group))))
        return out + done
