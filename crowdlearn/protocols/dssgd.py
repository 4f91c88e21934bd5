"""Distributed selective SGD (DSSGD) as sans-I/O machines.

References: R. Shokri, V. Shmatikov, "Privacy-Preserving Deep Learning", ACM CCS 2015;
L. T. Phong et al., "Privacy-Preserving Deep Learning via Additively Homomorphic Encryption",
IEEE TIFS 13(5), 2018 (the leak of shared gradients).  Spec: ``spec/dssgd.md``.

A parameter server keeps the global parameter vector ``w`` (flat, float32) and one update counter
per parameter.  A participant's *turn*:

1. **download** a ``θd`` fraction of ``w`` (the most updated by the counters, the most recently
   updated, or all when ``θd = 1``) and overwrite its local copies;
2. **train** one local epoch of mini-batch SGD (a
   :class:`~crowdlearn.protocols.rounds.ReadTrainJob`, run by the executor);
3. compute ``Δw = new − old`` over all layers, flattened;
4. **select** at most ``c = ⌊θu·|w|⌋`` entries: the largest ``|Δw_j|`` (``topk``) or a random
   sample among ``|Δw_j| > τ`` (``random_threshold``), or, with differential privacy, the sparse
   vector technique (:func:`crowdlearn.privacy.mechanisms.svt_select`);
5. **clip** them to ``[−γ, γ]`` and upload indices (int32) and values (float32) as a
   :class:`SparseUpdate`.

Differential privacy (``dp = true``): the SVT clips ``Δw`` *before* its release noise by default
(``release = "clipped"``), so the clipping bound really bounds the sensitivity;
``release = "paper"`` keeps the as-published release (noise on the unclipped value), whose ε is
then only nominal.  The participant, which makes the release, charges it to its own ledger and
reports ``privacy_charge`` as it sends the upload, so a release is charged whether the server
accepts it, finds it late, or never receives it.

The server adds every uploaded value to ``w_j`` and increments counter ``j`` (optionally
multiplying all counters by ``β`` every ``decay_every`` uploads, to favour recent updates).

Orders of access
----------------
``round_robin``
    the server grants one participant a turn at a time (:class:`TurnGrant`), in a fixed order;
``random_order``
    the same, in a fresh random order every cycle; either way a turn is atomic at the server;
``asynchronous``
    no coordination: each participant requests a download as soon as it is ready, at its own
    speed and availability; uploads race with other participants' downloads.

Messages of a turn (coordinated): ``TurnGrant → DownloadRequest → ParamsDownload → (train) →
SparseUpdate``; asynchronous turns skip the grant.  A participant that cannot train answers
``TurnDecline``.

A run lasts ``rounds`` epochs per participant.  Coordinated orders run ``rounds`` cycles, each
granting one turn to every participant present at its slot (absent ones miss that turn).  In the
asynchronous order the server counts accepted uploads per participant and stops serving one after
``rounds``; it halts when every participant has reached it (or declined).  The server reports
``global_model`` (tuple of arrays in layer shapes) after every cycle, or in the asynchronous
order after every ``len(participants)`` accepted uploads, tagged with ``round``.  ε is not the
server's to report: the monitor composes the participants' ``privacy_charge`` reports.

Examples
--------
One coordinated turn by hand:

>>> import numpy as np
>>> from sim.machine import PeerJoined, Received, Start
>>> params = DSSGDParams(rounds=1, theta_u=0.5, gamma=1.0)   # uploads clipped to ±γ
>>> server = DSSGDServer("server", [np.zeros(4, np.float32)], [7], params,
...                      rng=np.random.default_rng(0))
>>> server.handle(PeerJoined(7), 0.0), server.handle(Start(), 0.0)
([], [Send(dst=7, message=TurnGrant(turn=0))])
>>> [type(e.message).__name__ for e in server.handle(Received(7, DownloadRequest(1.0,
...  "most_updated")), 0.1)]
['ParamsDownload']
>>> up = SparseUpdate(0, np.array([1, 3], np.int32), np.array([0.5, -1.0], np.float32))
>>> [getattr(e, "name", "") for e in server.handle(Received(7, up), 1.0)]
['dssgd_upload', 'round', 'global_model', '']
>>> server.weights.tolist(), server.counters.tolist()
([0.0, 0.5, 0.0, -1.0], [0.0, 1.0, 0.0, 1.0])
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from crowdlearn.privacy.accountant import PrivacyLedger
from crowdlearn.privacy.mechanisms import RELEASES, clip, svt_select
from crowdlearn.protocols.rounds import ReadTrainJob, TurnWindow, declined, read_train_runners
from crowdlearn.protocols.validate import check_bounded
from crowdlearn.registry import Protocol
from crowdlearn.schema import MISSING, Key, from_section, keys, param, relation_problems, validate
from crowdlearn.training.models import ModelSpec
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
from sim.wire import message

__all__ = [
    "CONFIG_SECTION", "DOWNLOADS", "ORDERS", "SELECTIONS", "DSSGDParams", "DSSGDParticipant",
    "DSSGDServer", "DownloadRequest", "audit_release", "ParamsDownload", "SERVER", "SparseUpdate", "TurnDecline",
    "TurnGrant", "build", "cross_check", "flatten", "params_from_config",
    "select_download", "select_random_threshold", "select_topk", "top_k", "unflatten",
]

SERVER: NodeId = "server"
ORDERS = ("round_robin", "random_order", "asynchronous")
DOWNLOADS = ("most_updated", "most_recent")
SELECTIONS = ("topk", "random_threshold")


# ---------------------------------------------------------------- messages
def _vector(name: str, v: Any, dtype) -> None:
    if not isinstance(v, np.ndarray) or v.ndim != 1 or v.dtype != np.dtype(dtype):
        raise ValueError(f"{name} must be a 1-D {np.dtype(dtype).name} array; got "
                         f"{type(v).__name__} {getattr(v, 'dtype', '')} "
                         f"{getattr(v, 'shape', '')}")


@message(0x0201)
@dataclass(frozen=True)
class TurnGrant:
    """Server → participant: your turn ``turn`` (coordinated orders only)."""

    turn: int


@message(0x0202)
@dataclass(frozen=True)
class DownloadRequest:
    """Participant → server: send me a ``theta_d`` fraction of ``w`` chosen by ``criterion``."""

    theta_d: float
    criterion: str

    def __post_init__(self):
        if not 0 < self.theta_d <= 1:
            raise ValueError(f"theta_d must be in (0, 1]; got {self.theta_d}")
        if self.criterion not in DOWNLOADS:
            raise ValueError(f"criterion must be one of {DOWNLOADS}; got {self.criterion!r}")


@message(0x0203)
@dataclass(frozen=True, eq=False)
class ParamsDownload:
    """Server → participant: parameters for turn ``turn``.

    ``indices`` (int32) and ``values`` (float32) of the downloaded entries, or ``indices=None``
    and the whole vector in ``values`` (a dense download, ``θd = 1``).
    """

    turn: int
    indices: np.ndarray | None
    values: np.ndarray

    def __post_init__(self):
        _vector("values", self.values, np.float32)
        if self.indices is not None:
            _vector("indices", self.indices, np.int32)
            if len(self.indices) != len(self.values):
                raise ValueError(f"{len(self.indices)} indices for {len(self.values)} values")


@message(0x0204)
@dataclass(frozen=True, eq=False)
class SparseUpdate:
    """Participant → server: the selected, clipped changes of turn ``turn``.

    Encoded size: ``25 + 8·k`` bytes for ``k`` entries (tag 2, turn 9, two array headers of 7,
    ``4k`` index bytes and ``4k`` value bytes).
    """

    turn: int
    indices: np.ndarray
    values: np.ndarray

    def __post_init__(self):
        _vector("indices", self.indices, np.int32)
        _vector("values", self.values, np.float32)
        if len(self.indices) != len(self.values):
            raise ValueError(f"{len(self.indices)} indices for {len(self.values)} values")


@message(0x0205)
@dataclass(frozen=True)
class TurnDecline:
    """Participant → server: cannot take turn ``turn`` (e.g. ``reason="memory"``)."""

    turn: int
    reason: str


# ---------------------------------------------------------------- parameters
def _fraction_count(theta: float, n: int) -> int:
    """``⌊θ·n⌋`` clamped to ``[1, n]`` (with a tolerance for float error in ``θ·n``)."""
    return max(1, min(n, math.floor(theta * n + 1e-9)))


@dataclass(frozen=True)
class DSSGDParams:
    """Protocol parameters: ``rounds`` and the ``[dssgd]`` config section, declared once here
    (:mod:`crowdlearn.schema`: each field's default, documentation and limits; the rules
    between keys in :meth:`relations`)."""

    rounds: int = param(MISSING, "Epochs per participant.", type=int, min=1, config=False)
    order: str = param("round_robin", "Order of access: 'round_robin' (one turn at a time in a "
                       "fixed order), 'random_order' (one at a time, a fresh random order each "
                       "cycle), 'asynchronous' (no coordination, each participant at its own "
                       "pace).", choices=ORDERS)
    theta_u: float = param(0.1, "Fraction θu of the parameters a participant uploads per "
                           "turn.", min=0, max=1, min_open=True)
    theta_d: float = param(1.0, "Fraction θd of the parameters downloaded per turn (1 = all).",
                           min=0, max=1, min_open=True)
    download: str = param("most_updated", "Which parameters a partial download takes: the most "
                          "updated (server counters) or the most recently updated.",
                          choices=DOWNLOADS)
    selection: str = param("topk", "Which changes are uploaded (without dp): the largest |Δw| "
                           "('topk') or a random sample of those with |Δw| > tau.",
                           choices=SELECTIONS)
    tau: float = param(1e-3, "Threshold τ on |Δw| (random_threshold and the dp selection).",
                       min=0)
    gamma: float = param(0.05, "Clipping bound γ of uploaded values; Δf = 2γ under dp.", min=0,
                         min_open=True)
    local_epochs: int = param(1, "Local epochs per turn.", min=1)
    batch_size: int = param(32, "Mini-batch size (0 = full batch).", min=0)
    lr: float = param(0.05, "SGD learning rate.", min=0, min_open=True)
    decay: float = param(1.0, "Counter decay β: counters are multiplied by β every decay_every "
                         "uploads (1 = never).", min=0, max=1)
    decay_every: int = param(0, "Uploads between counter decays (0 = once per cycle, i.e. the "
                             "number of participants).", min=0)
    turn_timeout_s: float = param(math.inf, "Coordinated orders: give up on a granted turn "
                                  "after this many simulated seconds.", min=0, min_open=True)
    dp: bool = param(False, "Differential privacy: select and release uploads with the sparse "
                     "vector technique.")
    epsilon: float = param(1.0, "Privacy budget per parameter ε_p (the paper's x-axis); a turn "
                           "spends ε_p·c with c = θu·|w|.", min=0, min_open=True)
    selection_share: float = param(0.5, "Share ε1/(ε1+ε2) of a turn's budget spent on "
                                   "selection.", min=0, max=1, min_open=True)
    release: str = param("clipped", "The SVT release under dp: 'clipped' clips Δw to [-γ, γ] "
                         "before adding the noise (differentially private); 'paper' adds the "
                         "noise to the unclipped Δw as published (not DP for |Δw| > γ: its ε is "
                         "reported as nominal, beside the auditor's measured lower bound).",
                         choices=RELEASES)
    delta: float = param(1e-5, "δ at which the composed ε of each participant is reported.",
                         min=0, max=1, min_open=True)

    def __post_init__(self):
        validate(self)

    @staticmethod
    def relations(v, key) -> list[str]:
        """The rules between keys (``key(name)`` spells a key as the reader knows it)."""
        out = []
        if v["dp"] and not math.isfinite(v["gamma"]):
            out.append(f"{key('gamma')}: must be finite with {key('dp')} = true")
        if v["dp"] and v["selection_share"] >= 1:
            out.append(f"{key('selection_share')}: must be < 1 with {key('dp')} = true "
                       f"(ε2 > 0); got {v['selection_share']}")
        if v["delta"] >= 1:
            out.append(f"{key('delta')}: must be < 1; got {v['delta']}")
        return out

    def upload_count(self, n: int) -> int:
        """``c = ⌊θu·n⌋`` (at least 1): the most entries a participant uploads per turn."""
        return _fraction_count(self.theta_u, n)

    def download_count(self, n: int, theta_d: float | None = None) -> int:
        return _fraction_count(self.theta_d if theta_d is None else theta_d, n)

    def turn_budget(self, n: int) -> tuple[float, float, float]:
        """``(ε_turn, ε1, ε2)`` with ``ε_turn = ε_p · c`` split by ``selection_share``."""
        total = self.epsilon * self.upload_count(n)
        return total, self.selection_share * total, (1.0 - self.selection_share) * total

    @property
    def coordinated(self) -> bool:
        return self.order != "asynchronous"


# ---------------------------------------------------------------- pure helpers
def flatten(weights: Sequence) -> np.ndarray:
    """Concatenate a list of arrays into one float32 vector (Keras ``get_weights()`` order)."""
    return np.concatenate([np.asarray(a, np.float32).reshape(-1) for a in weights]) \
        if len(weights) else np.zeros(0, np.float32)


def unflatten(flat: np.ndarray, shapes: Sequence[tuple]) -> tuple[np.ndarray, ...]:
    """Split ``flat`` back into arrays of ``shapes`` (copies)."""
    out, pos = [], 0
    for s in shapes:
        size = math.prod(s)
        out.append(np.array(flat[pos:pos + size], np.float32).reshape(s))
        pos += size
    if pos != flat.size:
        raise ValueError(f"{flat.size} values for shapes totalling {pos}")
    return tuple(out)


def top_k(scores: np.ndarray, k: int, rng: np.random.Generator) -> np.ndarray:
    """Indices (sorted, int64) of the ``k`` largest ``scores``; ties at the cut broken at random.

    Examples
    --------
    >>> top_k(np.array([3.0, 1.0, 3.0, 5.0, 1.0]), 2, np.random.default_rng(0)).size
    2
    >>> int(top_k(np.array([3.0, 1.0, 3.0, 5.0, 1.0]), 3, np.random.default_rng(0))[-1])
    3
    """
    n = scores.size
    if k >= n:
        return np.arange(n, dtype=np.int64)
    if k <= 0:
        return np.zeros(0, np.int64)
    kth = np.partition(scores, n - k)[n - k]           # the k-th largest value
    above = np.flatnonzero(scores > kth)
    tied = np.flatnonzero(scores == kth)
    need = k - above.size
    pick = tied if need == tied.size else rng.choice(tied, size=need, replace=False)
    return np.sort(np.concatenate([above, pick])).astype(np.int64)


def select_topk(dw: np.ndarray, c: int, rng: np.random.Generator) -> np.ndarray:
    """The (at most) ``c`` entries of largest ``|Δw_j|``; exact zeros are never selected."""
    mag = np.abs(dw)
    nonzero = int(np.count_nonzero(mag))
    return top_k(mag, min(c, nonzero), rng)


def select_random_threshold(dw: np.ndarray, c: int, tau: float,
                            rng: np.random.Generator) -> np.ndarray:
    """A uniform random sample of at most ``c`` entries among those with ``|Δw_j| > τ``."""
    cand = np.flatnonzero(np.abs(dw) > tau)
    if cand.size > c:
        cand = np.sort(rng.choice(cand, size=c, replace=False))
    return cand.astype(np.int64)


def select_download(counters: np.ndarray, last_update: np.ndarray, k: int, criterion: str,
                    rng: np.random.Generator) -> np.ndarray:
    """The ``k`` parameters to download: most updated (counters) or most recently updated."""
    scores = counters if criterion == "most_updated" else last_update
    return top_k(scores, k, rng)


# ---------------------------------------------------------------- the server
class DSSGDServer(Machine):
    """The DSSGD parameter server: global ``w``, per-parameter counters, the order of access.

    Parameters
    ----------
    node_id
        This machine's node.
    weights
        Initial global weights (list of arrays, the model's layer shapes).
    participants
        Every participant's node id, in the fixed round-robin order.
    params
        Protocol parameters.
    rng
        Source of the random order, download tie-breaking.
    """

    def __init__(self, node_id: NodeId, weights, participants: Sequence[NodeId],
                 params: DSSGDParams, *, rng: np.random.Generator):
        super().__init__(node_id)
        self.shapes = [tuple(np.shape(w)) for w in weights]
        self.weights = flatten(weights)
        n = self.weights.size
        self.counters = np.zeros(n, np.float64)
        self.last_update = np.full(n, -1, np.int64)    # upload sequence number, -1 = never
        self.participants = list(participants)
        if len(set(self.participants)) != len(self.participants) or not self.participants:
            raise ValueError(f"participants must be distinct and non-empty; got {participants}")
        self.params = params
        self.rng = rng
        self.c = params.upload_count(n)
        self.present: set[NodeId] = set()
        self.phase = "idle"                   # idle | running | waiting | done
        self.uploads = 0                      # accepted uploads (the upload sequence number)
        self.next_turn = 0
        # the current reporting window (a cycle, or len(participants) asynchronous uploads)
        self.window = TurnWindow()
        # coordinated orders
        self.queue: deque = deque()
        self.grant: tuple[NodeId, int] | None = None
        self.grant_served = False
        self.granted_at = 0.0
        # asynchronous order
        self.outstanding: dict[NodeId, int] = {}
        self.deferred: dict[NodeId, DownloadRequest] = {}
        self.accepted: dict[NodeId, int] = {p: 0 for p in self.participants}
        self.finished: set[NodeId] = set()
        # staleness: accepted uploads by others between a participant's download and its upload
        # (0 in the coordinated orders, where a turn is atomic), one entry per accepted upload
        self.served_at: dict[NodeId, int] = {}
        self.staleness: list[int] = []
        self.entries_uploaded = 0
        self.entries_at_gamma = 0             # uploaded values clipped to ±γ

    @property
    def round(self) -> int:
        """Reporting windows closed so far."""
        return self.window.round

    # ------------------------------------------------------------ transition table
    def handle(self, event: Input, now: float) -> list[Effect]:
        if self.phase == "done":
            return []
        if isinstance(event, Received):
            handler = self._MESSAGES.get(type(event.message))
            return handler(self, event.src, event.message, now) if handler else []
        handler = self._EVENTS.get(type(event))
        return handler(self, event, now) if handler else []

    def next_timer(self) -> float | None:
        if self.grant is not None and math.isfinite(self.params.turn_timeout_s):
            return self.granted_at + self.params.turn_timeout_s
        return None

    # ------------------------------------------------------------ presence and start
    def _on_start(self, event: Start, now: float) -> list[Effect]:
        self.phase = "running"
        self.window.open(now)
        if self.params.coordinated:
            self._plan_cycle()
            return self._grant_next(now)
        return []

    def _on_joined(self, event: PeerJoined, now: float) -> list[Effect]:
        self.present.add(event.peer)
        if self.phase == "waiting":
            self.phase = "running"
            return self._grant_next(now)
        return []

    def _on_lost(self, event: PeerLost, now: float) -> list[Effect]:
        p = event.peer
        self.present.discard(p)
        self.outstanding.pop(p, None)
        self.deferred.pop(p, None)
        if self.grant is not None and self.grant[0] == p:
            self.grant = None
            return self._grant_next(now)
        return []

    def _on_timer(self, event: TimerFired, now: float) -> list[Effect]:
        if self.grant is None:
            return []
        p, turn = self.grant
        self.grant = None
        return [Report("turn_timeout", 1, (("device", p), ("turn", turn)))] \
            + self._grant_next(now)

    # ------------------------------------------------------------ coordinated orders
    def _plan_cycle(self) -> None:
        order = self.participants
        if self.params.order == "random_order":
            order = [order[i] for i in self.rng.permutation(len(order))]
        self.queue = deque(order)

    def _grant_next(self, now: float) -> list[Effect]:
        effects: list[Effect] = []
        while self.phase == "running" and self.grant is None:
            if not self.queue:                  # the cycle is over
                effects.extend(self._close_window(now))
                if self.round >= self.params.rounds:
                    effects.extend(self._halt())
                else:
                    self._plan_cycle()
                continue
            if not any(p in self.present for p in self.participants):
                self.phase = "waiting"          # nobody to grant: keep the queue until one joins
                break
            while self.queue and self.queue[0] not in self.present:
                self.queue.popleft()            # absent at its slot: misses this cycle's turn
            if self.queue:
                p = self.queue.popleft()
                self.grant, self.grant_served, self.granted_at = (p, self.next_turn), False, now
                self.next_turn += 1
                self.window.selected.append(p)
                effects.append(Send(p, TurnGrant(self.grant[1])))
        return effects

    # ------------------------------------------------------------ messages
    def _on_download_request(self, src: NodeId, msg: DownloadRequest, now: float) -> list[Effect]:
        if src not in self.accepted:
            return [Report("unexpected_message", "DownloadRequest", (("device", src),))]
        if self.params.coordinated:
            if self.grant is None or self.grant[0] != src or self.grant_served:
                return [Report("unexpected_message", "DownloadRequest", (("device", src),))]
            self.grant_served = True
            return [self._serve(src, self.grant[1], msg)]
        if src in self.finished or self.accepted[src] >= self.params.rounds:
            return []
        if src in self.outstanding:             # its upload is still on the way: serve after it
            self.deferred[src] = msg
            return []
        return self._serve_async(src, msg, now)

    def _serve_async(self, src: NodeId, msg: DownloadRequest, now: float) -> list[Effect]:
        turn = self.next_turn
        self.next_turn += 1
        self.outstanding[src] = turn
        return [self._serve(src, turn, msg)]

    def _serve(self, dst: NodeId, turn: int, req: DownloadRequest) -> Send:
        n = self.weights.size
        self.served_at[dst] = self.uploads
        k = self.params.download_count(n, req.theta_d)
        if k >= n:
            return Send(dst, ParamsDownload(turn, None, self.weights.copy()))
        idx = select_download(self.counters, self.last_update, k, req.criterion, self.rng)
        return Send(dst, ParamsDownload(turn, idx.astype(np.int32), self.weights[idx]))

    def _on_update(self, src: NodeId, msg: SparseUpdate, now: float) -> list[Effect]:
        late = [Report("late_update", 1, (("device", src), ("turn", msg.turn)))]
        if self.params.coordinated:
            if self.grant != (src, msg.turn) or not self.grant_served:
                return late
            self.grant = None
            _, effects = self._apply(src, msg, now)
            return effects + self._grant_next(now)
        if self.outstanding.get(src) != msg.turn:
            return late
        del self.outstanding[src]
        ok, effects = self._apply(src, msg, now)
        if ok:
            self.accepted[src] += 1
            self.window.selected.append(src)
            if self.uploads % len(self.participants) == 0:
                effects.extend(self._close_window(now))
        return effects + self._after_async(src, now)

    def _after_async(self, src: NodeId, now: float) -> list[Effect]:
        """After a participant's turn ended: halt when all are done, else serve its request."""
        if self._all_finished():
            effects = self._close_window(now) if self.window.applied else []
            return effects + self._halt()
        req = self.deferred.pop(src, None)
        if req is not None and self.accepted[src] < self.params.rounds:
            return self._serve_async(src, req, now)
        return []

    def _on_decline(self, src: NodeId, msg: TurnDecline, now: float) -> list[Effect]:
        rep = [declined(src, msg.reason, turn=msg.turn)]
        if self.params.coordinated:
            if self.grant is None or self.grant != (src, msg.turn):
                return rep
            self.grant = None
            return rep + self._grant_next(now)
        if self.outstanding.get(src) != msg.turn:
            return rep
        del self.outstanding[src]
        self.deferred.pop(src, None)
        self.finished.add(src)
        return rep + self._after_async(src, now)

    # ------------------------------------------------------------ state changes
    def _apply(self, src: NodeId, msg: SparseUpdate, now: float) -> tuple[bool, list[Effect]]:
        """Add an upload to ``w`` and count it; a malformed one is dropped and recorded."""
        idx, vals = msg.indices, msg.values
        n = self.weights.size
        reason = None
        if idx.size > self.c:
            reason = f"{idx.size} entries > c = {self.c}"
        elif idx.size and (idx.min() < 0 or idx.max() >= n):
            reason = "index out of range"
        elif np.unique(idx).size != idx.size:
            reason = "repeated index"
        elif not np.all(np.isfinite(vals)):
            reason = "non-finite value"
        else:   # participants release clip(·, γ): anything larger is not theirs to send
            reason = check_bounded(vals, bound=self.params.gamma)
        if reason is not None:
            return False, [Report("bad_update", reason, (("device", src), ("turn", msg.turn)))]
        self.staleness.append(self.uploads - self.served_at.get(src, self.uploads))
        self.entries_uploaded += int(idx.size)
        if math.isfinite(self.params.gamma):
            self.entries_at_gamma += int(np.count_nonzero(
                np.abs(vals) >= np.float32(self.params.gamma)))
        self.weights[idx] += vals
        self.counters[idx] += 1.0
        self.last_update[idx] = self.uploads
        self.uploads += 1
        every = self.params.decay_every or len(self.participants)
        if self.params.decay < 1.0 and self.uploads % every == 0:
            self.counters *= self.params.decay
        self.window.applied.append(src)
        return True, [Report("dssgd_upload", msg, (("device", src), ("turn", msg.turn),
                                                   ("entries", int(idx.size))))]

    def _close_window(self, now: float) -> list[Effect]:
        return self.window.close(now, unflatten(self.weights, self.shapes),
                                 uploads=len(self.window.applied))

    def _all_finished(self) -> bool:
        return all(p in self.finished or self.accepted[p] >= self.params.rounds
                   for p in self.participants)

    def _halt(self) -> list[Effect]:
        self.phase = "done"
        self.grant = None
        return [Halt()]

    def staleness_summary(self) -> dict:
        """``summary.json`` fields: staleness of the accepted uploads, share clipped to ±γ.

        ``staleness_mean`` / ``_median`` / ``_max``: how many other participants' uploads the
        server applied between a participant's download and its upload (0 in the coordinated
        orders); ``upload_fraction_at_gamma``: the share of uploaded values at ±γ.
        """
        st = np.asarray(self.staleness, float)
        return {"staleness_mean": float(st.mean()) if st.size else None,
                "staleness_median": float(np.median(st)) if st.size else None,
                "staleness_max": int(st.max()) if st.size else None,
                "upload_fraction_at_gamma": (self.entries_at_gamma / self.entries_uploaded
                                             if self.entries_uploaded else None)}

    _EVENTS = {Start: _on_start, PeerJoined: _on_joined, PeerLost: _on_lost,
               TimerFired: _on_timer}
    _MESSAGES = {DownloadRequest: _on_download_request, SparseUpdate: _on_update,
                 TurnDecline: _on_decline}


# ---------------------------------------------------------------- the participant
class DSSGDParticipant(Machine):
    """A DSSGD participant: keeps its own model, trains on its own samples, uploads a selection.

    Its local model survives disconnections (only the running turn is lost).
    """

    def __init__(self, node_id: NodeId, spec: ModelSpec, weights, indices: np.ndarray,
                 params: DSSGDParams, *, rng: np.random.Generator, server: NodeId = SERVER):
        super().__init__(node_id)
        self.spec = spec
        self.shapes = [tuple(np.shape(w)) for w in weights]
        self.local = flatten(weights)
        self.indices = np.asarray(indices, np.int64)
        self.params = params
        self.rng = rng
        self.server = server
        self.c = params.upload_count(self.local.size)
        # the participant releases, so it keeps its own ε ledger and charges every release as
        # it makes it (late, out of turn or lost on the way: the server's view does not matter)
        self.ledger = PrivacyLedger(delta=params.delta) if params.dp else None
        self.phase = "idle"                   # idle | requested | training
        self.turn: int | None = None
        self.start: np.ndarray | None = None
        self.downloaded = 0
        self.turns_done = 0

    def handle(self, event: Input, now: float) -> list[Effect]:
        if isinstance(event, Received):
            handler = self._MESSAGES.get(type(event.message))
            return handler(self, event.message, now) if handler else []
        handler = self._EVENTS.get(type(event))
        return handler(self, event, now) if handler else []

    def _request(self) -> list[Effect]:
        self.phase = "requested"
        p = self.params
        return [Send(self.server, DownloadRequest(p.theta_d, p.download))]

    def _on_start(self, event: Start, now: float) -> list[Effect]:
        return [] if self.params.coordinated else self._request()

    def _on_grant(self, msg: TurnGrant, now: float) -> list[Effect]:
        effects: list[Effect] = []
        if self.phase == "training" and self.turn is not None:
            effects.append(CancelJob(self.turn))
        self.turn = msg.turn
        return effects + self._request()

    def _on_download(self, msg: ParamsDownload, now: float) -> list[Effect]:
        if self.phase != "requested":
            return []
        if msg.indices is None:
            if msg.values.size != self.local.size:
                return [Report("bad_download", "size", (("device", self.node_id),))]
            self.local = msg.values.copy()
        else:
            if msg.indices.size and (msg.indices.min() < 0
                                     or msg.indices.max() >= self.local.size):
                return [Report("bad_download", "index", (("device", self.node_id),))]
            self.local[msg.indices] = msg.values
        self.downloaded = int(msg.values.size)
        self.turn = msg.turn
        self.start = self.local.copy()
        self.phase = "training"
        p = self.params
        job = ReadTrainJob.build(self.spec, unflatten(self.local, self.shapes), self.indices,
                                 epochs=p.local_epochs, batch_size=p.batch_size, lr=p.lr,
                                 rng=self.rng)
        return [RunJob(msg.turn, job)]

    def _on_job_done(self, event: JobDone, now: float) -> list[Effect]:
        if self.phase != "training" or event.job_id != self.turn:
            return []
        new = flatten(event.result)      # arrays: the executor ran the job (ReadTrainJob)
        dw = np.nan_to_num(new.astype(np.float64) - self.start, nan=0.0, posinf=0.0, neginf=0.0)
        self.local = new
        idx, vals = self.select(dw)
        self.turns_done += 1
        self.phase = "idle"
        up = SparseUpdate(self.turn, idx.astype(np.int32), vals.astype(np.float32))
        info = {"turn": self.turn, "downloaded": self.downloaded, "uploaded": int(idx.size),
                "delta_l2": float(np.linalg.norm(dw))}
        effects: list[Effect] = [Report("dssgd_turn", info, (("device", self.node_id),))]
        if self.ledger is not None:
            effects.append(self._charge(dw, idx))
        effects.append(Send(self.server, up))
        if not self.params.coordinated:
            effects.extend(self._request())
        return effects

    def _charge(self, dw: np.ndarray, idx: np.ndarray) -> Report:
        """Charge this turn's release to the participant's own ledger, before it is sent.

        The ``privacy_charge`` report carries what the monitor's run-wide ledger needs, and the
        largest ``|Δw_j|`` released (the paper's release adds its noise to that unclipped value).
        """
        p = self.params
        eps_turn = p.turn_budget(self.local.size)[0]
        guarantee = p.release != "paper"
        self.ledger.record(self.node_id, epsilon_turn=eps_turn, c=self.c, mechanism="svt",
                           guarantee=guarantee)
        info = {"epsilon_turn": eps_turn, "c": self.c, "mechanism": "svt",
                "guarantee": guarantee, "turn": self.turn, "delta": p.delta,
                "max_abs_value": float(np.max(np.abs(dw[idx]))) if idx.size else 0.0}
        return Report("privacy_charge", info, (("device", self.node_id),))

    def privacy_rows(self) -> list[dict]:
        """This participant's ε ledger (one row; empty without DP)."""
        return self.ledger.rows() if self.ledger is not None else []

    def select(self, dw: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Indices (sorted) and clipped values of the entries of ``dw`` to upload this turn."""
        p = self.params
        if p.dp:
            _, eps1, eps2 = p.turn_budget(dw.size)
            idx, vals = svt_select(dw, c=self.c, tau=p.tau, gamma=p.gamma, eps1=eps1, eps2=eps2,
                                   rng=self.rng, release=p.release)
            order = np.argsort(idx, kind="stable")
            return idx[order], vals[order]
        if p.selection == "topk":
            idx = select_topk(dw, self.c, self.rng)
        else:
            idx = select_random_threshold(dw, self.c, p.tau, self.rng)
        return idx, clip(dw[idx], p.gamma).astype(np.float32)

    def _on_job_failed(self, event: JobFailed, now: float) -> list[Effect]:
        if self.phase != "training" or event.job_id != self.turn:
            return []
        self.phase = "idle"
        return [Report("job_failed", event.reason, (("device", self.node_id),)),
                Send(self.server, TurnDecline(self.turn, event.reason))]

    def _on_disconnected(self, event: Disconnected, now: float) -> list[Effect]:
        self.phase, self.turn, self.start = "idle", None, None
        return []

    _EVENTS = {Start: _on_start, JobDone: _on_job_done, JobFailed: _on_job_failed,
               Disconnected: _on_disconnected}
    _MESSAGES = {TurnGrant: _on_grant, ParamsDownload: _on_download}


# ---------------------------------------------------------------- configuration
#: The ``[dssgd]`` configuration section (derived from :class:`DSSGDParams`).
CONFIG_SECTION: Mapping[str, Key] = keys(DSSGDParams)


def cross_check(section: dict) -> list[str]:
    """Problems of a resolved ``[dssgd]`` section that single keys cannot express."""
    return relation_problems(DSSGDParams, section, section="dssgd")


def params_from_config(cfg) -> DSSGDParams:
    """:class:`DSSGDParams` from a resolved config (``cfg.rounds`` and ``cfg.dssgd.*``)."""
    return from_section(DSSGDParams, cfg.dssgd, rounds=cfg.rounds)


def audit_release(params: DSSGDParams, value: float, *, rng: np.random.Generator,
                  trials: int = 20_000, confidence: float = 0.95):
    """Audit one released value of a DP turn at ``params``' noise scales, neighbours ``±value``.

    A turn of ``c`` releases at ``ε_turn = ε_p·c`` draws its noise at the same scales as a
    one-parameter turn with ``c = 1`` and ``ε_turn = ε_p``, so the single-value SVT on
    ``[+value]`` against ``[−value]`` is the mechanism the paper's "budget per parameter" ``ε_p``
    describes: the result's ``claimed_epsilon`` is ``ε_p`` and its lower bound is what the
    release spends on one value whose change is ``2·value`` (:func:`crowdlearn.privacy.audit`).

    Examples
    --------
    >>> p = DSSGDParams(rounds=1, dp=True, epsilon=1.0, gamma=0.05, release="paper")
    >>> audit_release(p, 1.0, rng=np.random.default_rng(0), trials=4000).refutes_claim
    True
    """
    from crowdlearn.privacy.audit import audit

    eps1, eps2 = params.selection_share * params.epsilon, \
        (1 - params.selection_share) * params.epsilon

    def one_value(x, g):
        idx, vals = svt_select(x, c=1, tau=params.tau, gamma=params.gamma, eps1=eps1,
                               eps2=eps2, rng=g, release=params.release)
        return float(vals[0]) if idx.size else -math.inf

    v = abs(float(value))
    return audit(one_value, np.array([v]), np.array([-v]), rng=rng, trials=trials,
                 confidence=confidence, claimed_epsilon=params.epsilon)


def build(ctx) -> dict:
    """Protocol builder: a server and one participant per device (``crowdlearn.experiment.Context``)."""
    params = params_from_config(ctx.config)
    if params.dp:   # what the results say about ε (crowdlearn.experiment reads it)
        ctx.extra["privacy"] = {
            "mechanism": "svt", "delta": params.delta,
            "guarantee": "nominal" if params.release == "paper" else "dp",
            "audit": lambda value, rng: audit_release(params, value, rng=rng)}
    machines: dict = {SERVER: DSSGDServer(SERVER, ctx.init_weights, ctx.devices, params,
                                          rng=ctx.rngs["protocol"])}
    for d in ctx.devices:
        machines[d] = DSSGDParticipant(d, ctx.spec, ctx.init_weights, ctx.parts[d], params,
                                       rng=ctx.device_rngs[d])
    return machines


#: found by :mod:`crowdlearn.registry`
PROTOCOLS = (
    Protocol("dssgd", build, doc="Distributed selective SGD (Shokri & Shmatikov 2015), with "
             "optional differential privacy.", params={"dssgd": DSSGDParams},
             runners=read_train_runners,
             summary=lambda sim: sim.driver.machines[SERVER].staleness_summary(),
             server_view="crowdlearn.privacy.attacks.views:DSSGDServerView"),
)

