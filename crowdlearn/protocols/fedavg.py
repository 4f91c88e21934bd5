"""Federated averaging as sans-I/O machines, plus the centralized and standalone baselines.

References: H. B. McMahan et al., "Communication-Efficient Learning of Deep Networks from
Decentralized Data", AISTATS 2017.

The server learns which devices are present from ``PeerJoined``/``PeerLost``; each round it samples
``ceil(m · (1 + over_selection))`` present devices, sends them the global weights, and closes the
round when ``m`` updates have arrived or at the deadline, averaging what arrived weighted by sample
counts.  Devices that go offline, fail their job or are too slow simply miss the round.

Examples
--------
Machines are driven by hand in tests; here one round with one client:

>>> import numpy as np
>>> from sim.machine import PeerJoined, Received, Start
>>> server = FedAvgServer("server", [np.zeros(2, np.float32)], FedAvgParams(rounds=1,
...                       clients_per_round=1), rng=np.random.default_rng(0))
>>> server.handle(Start(), 0.0)
[]
>>> [type(e).__name__ for e in server.handle(PeerJoined(7), 0.0)]
['Send']
>>> upd = Update(0, (np.ones(2, np.float32),), 5)
>>> [type(e).__name__ for e in server.handle(Received(7, upd), 1.0)]
['Report', 'Report', 'Halt']
"""

from __future__ import annotations

import bisect
import math
from dataclasses import dataclass

import numpy as np

from crowdlearn.protocols.aggregate import weighted_average
from crowdlearn.protocols.messages import Decline, RoundStart, Update
from crowdlearn.protocols.rounds import ReadTrainJob, RoundBook, model_report, round_report
from crowdlearn.protocols.validate import check_weights, misbehaved
from crowdlearn.schema import MISSING, param, validate
from crowdlearn.training.jobs import TrainJob
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

SERVER: NodeId = "server"


@dataclass(frozen=True)
class FedAvgParams:
    """``rounds`` and the ``[fedavg]`` config section (shared by FedAvg and the centralized and
    standalone baselines), declared once here (:mod:`crowdlearn.schema`: each field's default,
    documentation and limits).  The server needs ``clients_per_round >= 1``: a config's 0 ("use
    fraction") is resolved against the fleet by
    :func:`crowdlearn.protocols.fedavg_family.params_from_config`."""

    rounds: int = param(MISSING, "Rounds.", type=int, min=1, config=False)
    clients_per_round: int = param(0, "Updates the server waits for per round (m); 0 = use "
                                   "fraction.", min=0)
    fraction: float = param(0.1, "Fraction C of devices per round when clients_per_round = 0.",
                            min=0, max=1, min_open=True)
    local_epochs: int = param(1, "Local epochs E per round.", min=1)
    batch_size: int = param(32, "Local mini-batch size B (0 = full batch).", min=0)
    lr: float = param(0.05, "SGD learning rate.", min=0, min_open=True)
    deadline_s: float = param(math.inf, "Round deadline in simulated seconds; the server "
                              "aggregates what arrived by then.", min=0, min_open=True)
    over_selection: float = param(0.0, "Select this fraction more devices than needed and keep "
                                  "the first m updates.", min=0)
    min_clients: int = param(1, "Devices that must be present to start a round.", min=1)
    secure_aggregation: str = param("none", "Secure aggregation of the updates: 'secagg' "
                                    "(Bonawitz et al. 2017), 'secagg+' (Bell et al. 2020, k "
                                    "neighbours) or 'none'. Settings in [secagg].",
                                    choices=("none", "secagg", "secagg+"))


    def __post_init__(self):
        validate(self)

    @property
    def selected_per_round(self) -> int:
        return math.ceil(self.clients_per_round * (1 + self.over_selection))


def _str_order(n: int) -> np.ndarray:
    """``0 .. n-1`` in the order of their decimal strings, ``sorted(range(n), key=str)``,
    without making n strings: each number's digits, read as base-11 digits ``d + 1`` padded on
    the right with 0 (shorter prefixes first), give a sort key in int64 (n < 10**18).

    >>> _str_order(12).tolist()
    [0, 1, 10, 11, 2, 3, 4, 5, 6, 7, 8, 9]
    """
    x = np.arange(n, dtype=np.int64)
    width = len(str(max(n - 1, 0)))
    ndig = np.ones(n, dtype=np.int64)
    for k in range(1, width):
        ndig += x >= 10 ** k
    key = np.zeros(n, dtype=np.int64)
    for p in range(width):
        has = ndig > p
        digit = (x // 10 ** np.maximum(ndig - 1 - p, 0)) % 10
        key += np.where(has, (digit + 1) * 11 ** (width - 1 - p), 0)
    return np.argsort(key, kind="stable")


class _RangePool:
    """The devices ``0 .. n-1`` present, as a mask (None while all are), and the pool the server
    samples from: the present ones in the order of their decimal strings, as
    ``sorted(present, key=str)`` lists them.  What a bulk ``peers_joined(range(n))`` costs: one
    order array, made when the first round samples, instead of n set entries and n strings."""

    def __init__(self, n: int):
        self.n, self.count = n, n
        self.mask: np.ndarray | None = None
        self._order: np.ndarray | None = None
        self._pool: np.ndarray | None = None

    def __contains__(self, peer) -> bool:
        return type(peer) is int and 0 <= peer < self.n and (self.mask is None or
                                                             bool(self.mask[peer]))

    def owns(self, peer) -> bool:
        return type(peer) is int and 0 <= peer < self.n

    def add(self, peer: int) -> None:
        if self.mask is not None and not self.mask[peer]:
            self.mask[peer] = True
            self.count += 1
            self._pool = None

    def discard(self, peer: int) -> None:
        if self.mask is None:
            self.mask = np.ones(self.n, dtype=bool)
        if self.mask[peer]:
            self.mask[peer] = False
            self.count -= 1
            self._pool = None

    def pool(self) -> np.ndarray:
        if self._pool is None:
            if self._order is None:
                self._order = _str_order(self.n)
            order = self._order
            self._pool = order if self.mask is None else order[self.mask[order]]
        return self._pool

    def __iter__(self):
        return iter(self.pool().tolist())


class _PoolView:
    """A read-only list view of an int array (node ids as Python ints)."""

    def __init__(self, arr: np.ndarray):
        self._arr = arr

    def __len__(self) -> int:
        return len(self._arr)

    def __getitem__(self, i):
        return int(self._arr[i])


class FedAvgServer(Machine):
    """The FedAvg parameter server (trains nothing).

    Besides the machine contract it takes the driver's optional bulk presence input,
    :meth:`peers_joined` (see ``sim.driver``): the devices ``0 .. n-1`` all present at start-up
    become a :class:`_RangePool` rather than n ``PeerJoined`` inputs and set entries.

    A round is a :class:`~crowdlearn.protocols.rounds.RoundBook` (:attr:`book`).  What a
    subclass (:class:`~crowdlearn.protocols.secagg.SecAggServer`) overrides: ``handle``,
    ``next_timer``, ``_try_start`` (a round starts), ``_on_gone`` (a selected device will not
    deliver), ``_close_round``; it reads the round through :attr:`selected`, :attr:`updates`,
    :attr:`gone` and ``_deadline``.
    """

    def __init__(self, node_id: NodeId, weights, params: FedAvgParams, *, rng: np.random.Generator,
                 dp=None):
        super().__init__(node_id)
        if params.clients_per_round < 1:
            raise ValueError(f"clients_per_round must be >= 1 at the server (a config's 0, 'use "
                             f"fraction', is resolved by params_from_config); got "
                             f"{params.clients_per_round}")
        self.weights = [np.asarray(w) for w in weights]
        self.params = params
        self.rng = rng
        self.dp = dp                        # client-level DP (crowdlearn.privacy.dp_fedavg)
        self.present: set[NodeId] = set()
        self.phase = "idle"               # idle | waiting | training | done
        self.book = RoundBook()           # the round: selected, updates, gone, deadline
        # ``present`` sorted by str (the order devices are sampled from), with its keys; built
        # when a round first needs it and then kept up to date, so a fleet of millions is not
        # re-sorted every round
        self._pool: list[NodeId] | None = None
        self._pool_keys: list[str] = []
        self._bulk: _RangePool | None = None    # devices 0..n-1 that joined in bulk

    # the round, as the subclass reads it
    @property
    def round(self) -> int:
        return self.book.round

    @round.setter
    def round(self, value: int) -> None:
        self.book.round = value

    @property
    def selected(self) -> tuple:
        """The devices selected this round (sorted by str)."""
        return self.book.selected

    @property
    def updates(self) -> dict:
        """The updates accepted this round, by device."""
        return self.book.answers

    @updates.setter
    def updates(self, value: dict) -> None:
        self.book.answers = value

    @property
    def gone(self) -> set:
        """Devices selected this round but lost or declined."""
        return self.book.gone

    @property
    def _deadline(self) -> float | None:
        return self.book.deadline

    def peers_joined(self, peers, now: float) -> list[Effect]:
        """Handle ``PeerJoined(p)`` for every ``p`` of ``peers``, in order, as one input."""
        if isinstance(peers, range) and peers.start == 0 and peers.step == 1 \
                and self._bulk is None and not self.present and len(peers):
            self._bulk = _RangePool(len(peers))
            self._pool = None
            return self._try_start(now) if self.phase == "waiting" else []
        effects: list[Effect] = []
        for p in peers:
            effects += self.handle(PeerJoined(p), now)
        return effects

    def _present_count(self) -> int:
        return len(self.present) + (self._bulk.count if self._bulk is not None else 0)

    def _pool_add(self, peer: NodeId) -> None:
        if self._bulk is not None and self._bulk.owns(peer):
            self._bulk.add(peer)
            return
        if peer in self.present:
            return
        self.present.add(peer)
        if self._pool is not None:
            key = str(peer)
            i = bisect.bisect_right(self._pool_keys, key)
            self._pool_keys.insert(i, key)
            self._pool.insert(i, peer)

    def _pool_discard(self, peer: NodeId) -> None:
        if self._bulk is not None and self._bulk.owns(peer):
            self._bulk.discard(peer)
            return
        if peer not in self.present:
            return
        self.present.discard(peer)
        if self._pool is not None:
            key = str(peer)
            i = bisect.bisect_left(self._pool_keys, key)
            while self._pool[i] != peer:     # distinct peers may print alike
                i += 1
            del self._pool_keys[i], self._pool[i]

    def _sorted_pool(self) -> list[NodeId]:
        if self._bulk is not None:
            if not self.present:
                return _PoolView(self._bulk.pool())
            # other peers too (rare): one sorted list of both
            return sorted([*self._bulk, *self.present], key=str)
        if self._pool is None:
            self._pool = sorted(self.present, key=str)
            self._pool_keys = [str(p) for p in self._pool]
        return self._pool

    def next_timer(self) -> float | None:
        return self._deadline if self.phase == "training" else None

    def handle(self, event: Input, now: float) -> list[Effect]:
        if isinstance(event, Start):
            self.phase = "waiting"
            return self._try_start(now)
        if isinstance(event, PeerJoined):
            self._pool_add(event.peer)
            return self._try_start(now) if self.phase == "waiting" else []
        if isinstance(event, PeerLost):
            self._pool_discard(event.peer)
            return self._on_gone(event.peer, now)
        if isinstance(event, Received) and isinstance(event.message, Update):
            return self._on_update(event.src, event.message, now)
        if isinstance(event, Received) and isinstance(event.message, Decline):
            if event.message.round != self.round:
                return []
            return self._on_gone(event.src, now)
        if isinstance(event, TimerFired) and self.phase == "training":
            return self._close_round(now, reason="deadline")
        return []

    def _try_start(self, now: float) -> list[Effect]:
        if self._present_count() < self.params.min_clients:
            return []
        p = self.params
        pool = self._sorted_pool()
        k = min(p.selected_per_round, len(pool))
        chosen = self.rng.choice(len(pool), size=k, replace=False)
        self.book.open(self.round, sorted((pool[i] for i in chosen), key=str), now=now,
                       deadline_s=p.deadline_s)
        self.phase = "training"
        msg = RoundStart(self.round, tuple(self.weights), p.local_epochs, p.batch_size, p.lr)
        return [Send(d, msg) for d in self.selected]

    def _on_update(self, src: NodeId, msg: Update, now: float) -> list[Effect]:
        if self.phase != "training" or msg.round != self.round or src in self.updates \
                or not self.book.asked(src):
            return [Report("late_update", 1, (("device", src), ("round", msg.round)))]
        bad = check_weights(msg.weights, [np.shape(w) for w in self.weights],
                            num_samples=msg.num_samples)
        if bad is not None:      # dropped: the device counts as gone for this round
            return [misbehaved(src, f"Update: {bad}", round=msg.round)] + self._on_gone(src, now)
        self.book.answer(src, msg)
        return self._maybe_close(now)

    def _on_gone(self, peer: NodeId, now: float) -> list[Effect]:
        """A selected device will not deliver; close early once nobody is left to wait for."""
        if self.phase != "training" or not self.book.give_up(peer):
            return []
        return self._maybe_close(now)

    def _maybe_close(self, now: float) -> list[Effect]:
        """Close when m updates are in, or when nobody is left to wait for."""
        reason = self.book.closable(quorum=self.params.clients_per_round)
        return [] if reason is None else self._close_round(now, reason=reason)

    def _dp_aggregate(self, ups: list[Update]) -> list[Effect]:
        """DP-FedAvg: clipped deltas averaged uniformly, noised (McMahan et al. 2018)."""
        flat = np.concatenate([w.ravel() for w in self.weights]).astype(np.float64)
        deltas = [np.concatenate([np.asarray(w, np.float64).ravel() for w in u.weights]) - flat
                  for u in ups]
        mean, effects = self.dp.server_aggregate(deltas, self.rng)
        out, pos = [], 0
        for w in self.weights:
            out.append((w + mean[pos:pos + w.size].reshape(w.shape)).astype(w.dtype))
            pos += w.size
        self.weights = out
        return effects

    def _close_round(self, now: float, *, reason: str) -> list[Effect]:
        used = tuple(self.updates)
        effects: list[Effect] = []
        if used:
            ups = [self.updates[d] for d in used]
            if self.dp is not None:
                effects.extend(self._dp_aggregate(ups))
            elif sum(u.num_samples for u in ups) > 0:
                self.weights = weighted_average([u.weights for u in ups],
                                                [u.num_samples for u in ups])
        effects += [self.book.report(now=now, closed_by=reason, aggregated=used),
                     model_report(self.round, self.weights)]
        self.round += 1
        self.updates = {}
        if self.round >= self.params.rounds:
            self.phase = "done"
            effects.append(Halt())
        else:
            self.phase = "waiting"
            effects.extend(self._try_start(now))
        return effects


class FedAvgClient(Machine):
    """A device: trains the weights it receives on its own samples and sends them back."""

    def __init__(self, node_id: NodeId, spec: ModelSpec, indices: np.ndarray, *,
                 rng: np.random.Generator, server: NodeId = SERVER):
        super().__init__(node_id)
        self.spec = spec
        self.indices = np.asarray(indices, dtype=np.int64)
        self.rng = rng
        self.server = server
        self.job_round: int | None = None

    def handle(self, event: Input, now: float) -> list[Effect]:
        if isinstance(event, Received) and isinstance(event.message, RoundStart):
            m = event.message
            effects: list[Effect] = []
            if self.job_round is not None:
                effects.append(CancelJob(self.job_round))
            self.job_round = m.round
            job = TrainJob.build(self.spec, m.weights, self.indices, epochs=m.epochs,
                                 batch_size=m.batch_size, lr=m.lr, rng=self.rng)
            effects.append(RunJob(m.round, job))
            return effects
        if isinstance(event, JobDone) and event.job_id == self.job_round:
            self.job_round = None
            # the result may be deferred: pass it on unread so that the round trains in one batch
            return [Send(self.server, Update(event.job_id, event.result, len(self.indices)))]
        if isinstance(event, JobFailed) and event.job_id == self.job_round:
            self.job_round = None
            return [Report("job_failed", event.reason, (("device", self.node_id),)),
                    Send(self.server, Decline(event.job_id, event.reason))]
        if isinstance(event, Disconnected):
            self.job_round = None
        return []


class _LocalTrainer(Machine):
    """A node that trains its own samples, ``epochs`` per round, for ``rounds`` rounds."""

    def __init__(self, node_id: NodeId, spec: ModelSpec, weights, indices: np.ndarray, *,
                 rounds: int, epochs: int, batch_size: int, lr: float, rng: np.random.Generator):
        super().__init__(node_id)
        self.spec, self.indices, self.rng = spec, np.asarray(indices, np.int64), rng
        self.weights = tuple(weights)
        self.rounds, self.epochs, self.batch_size, self.lr = rounds, epochs, batch_size, lr
        self.round = 0

    def _job(self) -> RunJob:
        # kept as soon as it arrives: a job the executor runs (ReadTrainJob), not deferred
        return RunJob(self.round, ReadTrainJob.build(self.spec, self.weights, self.indices,
                                                     epochs=self.epochs,
                                                     batch_size=self.batch_size, lr=self.lr,
                                                     rng=self.rng))


class CentralizedTrainer(_LocalTrainer):
    """Baseline: the server trains on the union of all devices' data, ``epochs`` per round."""

    started = 0.0

    def handle(self, event: Input, now: float) -> list[Effect]:
        if isinstance(event, Start):
            self.started = now
            return [self._job()]
        if isinstance(event, JobDone) and event.job_id == self.round:
            self.weights = tuple(event.result)
            effects: list[Effect] = [
                round_report(self.round, start=self.started, end=now, selected=(),
                             aggregated=(), closed_by="complete"),
                model_report(self.round, self.weights)]
            self.round += 1
            if self.round >= self.rounds:
                return effects + [Halt()]
            self.started = now
            return effects + [self._job()]
        return []


class StandaloneClient(_LocalTrainer):
    """Baseline: a device that trains alone on its own data, ``epochs`` per round.

    It keeps its model across disconnections (only the running job is lost) and reports its
    model after each round as ``local_model``; the monitor averages their accuracies.
    """

    def handle(self, event: Input, now: float) -> list[Effect]:
        if isinstance(event, Start) and self.round < self.rounds:
            return [self._job()]
        if isinstance(event, JobDone) and event.job_id == self.round:
            self.weights = tuple(event.result)
            effects: list[Effect] = [Report("local_model", self.weights,
                                            (("round", self.round), ("device", self.node_id)))]
            self.round += 1
            if self.round < self.rounds:
                effects.append(self._job())
            return effects
        return []
