"""The FM server and participant machines."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np

from crowdlearn.privacy import functional as F
from crowdlearn.privacy.accountant import PrivacyLedger
from crowdlearn.protocols.fm.jobs import FitResult, FMFitJob
from crowdlearn.protocols.fm.messages import FMDecline, FMRound, FMUpload
from crowdlearn.protocols.fm.model import FMModel
from crowdlearn.protocols.fm.params import _PRETRAIN, SERVER, FMParams
from crowdlearn.protocols.fm.scoring import quality_weights, score_models
from crowdlearn.protocols.rounds import RoundBook, declined, model_report
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


# ---------------------------------------------------------------- the server
class FMServer(Machine):
    """Runs the rounds, scores and weights participants, aggregates ``z``.

    Parameters
    ----------
    model : FMModel
        Deep mode: without hidden layers yet (they come from ``pretrain``).
    participants : sequence
        Participant node ids.
    params : FMParams
    validation : (x, y)
        The server's own rows (raw features, labels/targets), for scores.
    rng : numpy.random.Generator
        Source of the score noise.
    pretrain : job, optional
        Deep mode: the :class:`~crowdlearn.protocols.rounds.ReadTrainJob` of the whole network
        on the public rows.
    """

    def __init__(self, node_id: NodeId, model: FMModel, participants: Sequence[NodeId],
                 params: FMParams, *, validation: tuple[np.ndarray, np.ndarray],
                 rng: np.random.Generator, pretrain: Any = None):
        super().__init__(node_id)
        self.model = model
        self.participants = list(participants)
        if not self.participants or len(set(self.participants)) != len(self.participants):
            raise ValueError("participants must be distinct and non-empty")
        self.params = params
        self.rng = rng
        self.val_x, self.val_y = validation
        self.val_z: np.ndarray | None = None
        self.pretrain = pretrain
        self.pretrained: tuple | None = None   # deep mode: the whole pre-trained network
        self.ledger = PrivacyLedger(delta=params.delta)   # the server's own release: the scores
        self.charges: list[Effect] = []     # privacy_charge reports of the scoring, to emit
        self.present: set = set()
        self.phase = "idle"                 # idle | pretraining | waiting | running | done
        self.book = RoundBook()             # the round: asked, uploads (v_i), gone, deadline
        self.z: np.ndarray | None = None
        self.scores: dict = {}              # participant → noisy score (first scoring)
        self.raw_scores: dict = {}          # participant → exact score (for tests / analysis)
        self.has_hidden: set = set()
        # the participants' ADMM state as the server can rebuild it from the messages:
        # v_i = w_i + u_i is uploaded and u_i <- u_i + w_i - z on each round received, so the
        # server scores w_i = v_i - u_i (the model, not the dual) when it re-scores
        self.duals: dict = {}
        self.models: dict = {}

    @property
    def round(self) -> int:
        return self.book.round

    @property
    def uploads(self) -> dict:
        """This round's accepted uploads ``v_i`` (float64), by participant."""
        return self.book.answers

    def next_timer(self) -> float | None:
        return self.book.deadline if self.phase == "running" else None

    def handle(self, event: Input, now: float) -> list[Effect]:
        if isinstance(event, Received):
            if isinstance(event.message, FMUpload):
                return self._on_upload(event.src, event.message, now)
            if isinstance(event.message, FMDecline):
                return self._on_decline(event.src, event.message, now)
            return []
        if isinstance(event, Start):
            if self.phase != "idle":
                return []
            if self.pretrain is not None:
                self.phase = "pretraining"
                return [RunJob(_PRETRAIN, self.pretrain)]
            return self._begin(now)
        if isinstance(event, JobDone) and event.job_id == _PRETRAIN:
            weights = list(event.result)
            self.pretrained = tuple(np.asarray(w, np.float32) for w in weights)
            self.model = self.model.with_hidden(weights[:-2])
            return self._begin(now)
        if isinstance(event, JobFailed) and event.job_id == _PRETRAIN:
            self.phase = "done"
            return [Report("job_failed", event.reason, (("device", self.node_id),)), Halt()]
        if isinstance(event, PeerJoined):
            self.present.add(event.peer)
            if self.phase == "waiting":
                return self._start_round(now)
            return []
        if isinstance(event, PeerLost):
            self.present.discard(event.peer)
            if self.phase == "running" and self.book.waiting_for(event.peer):
                self.book.give_up(event.peer)
                return self._maybe_close(now)
            return []
        if isinstance(event, TimerFired):
            deadline = self.book.deadline
            if self.phase == "running" and deadline is not None and now >= deadline:
                return self._close(now, "deadline")
            return []
        return []

    # ------------------------------------------------------------ rounds
    def _begin(self, now: float) -> list[Effect]:
        self.val_z = self.model.rows(self.val_x) if len(self.val_x) else np.zeros((0, 0))
        return self._start_round(now)

    def _start_round(self, now: float) -> list[Effect]:
        targets = [p for p in self.participants if p in self.present]
        if not targets:
            self.phase = "waiting"
            return []
        self.phase = "running"
        self.book.open(self.round, targets, now=now, deadline_s=self.params.deadline_s)
        z = None if self.z is None else self.z.astype(np.float32)
        plain = FMRound(self.round, z, None)
        with_hidden = FMRound(self.round, z, tuple(self.model.hidden)) if self.model.deep \
            else plain
        effects: list[Effect] = []
        for p in targets:
            if z is not None and p in self.models:
                self.duals[p] = self.duals.get(p, 0.0) + self.models[p] - z.astype(np.float64)
            msg = with_hidden if p not in self.has_hidden else plain
            self.has_hidden.add(p)
            effects.append(Send(p, msg))
        return effects

    def _on_upload(self, src, msg: FMUpload, now: float) -> list[Effect]:
        tags = (("device", src), ("round", msg.round))
        if self.phase != "running" or msg.round != self.round \
                or not self.book.waiting_for(src):
            return [Report("late_update", msg.round, tags)]
        v = msg.params
        if v.size != self.model.num_params or not np.all(np.isfinite(v)):
            self.book.give_up(src)
            return [Report("bad_update", "shape or non-finite", tags)] + self._maybe_close(now)
        self.book.answer(src, v.astype(np.float64))
        self.models[src] = self.uploads[src] - self.duals.get(src, 0.0)
        return self._maybe_close(now)

    def _on_decline(self, src, msg: FMDecline, now: float) -> list[Effect]:
        rep = [declined(src, msg.reason, round=msg.round)]
        if self.phase == "running" and msg.round == self.round and self.book.waiting_for(src):
            self.book.give_up(src)
            return rep + self._maybe_close(now)
        return rep

    def _maybe_close(self, now: float) -> list[Effect]:
        """Close once every participant asked has uploaded or will not (lost, declined, sent a
        bad upload): reported as ``complete`` either way."""
        if self.phase == "running" and self.book.closable() is not None:
            return self._close(now, "complete")
        return []

    def weights_for(self, nodes: Sequence) -> np.ndarray:
        """Aggregation weights of ``nodes`` (all 1 with plain averaging)."""
        if self.params.aggregation == "plain" or not nodes:
            return np.ones(len(nodes))
        p = self.params
        noisy = np.array([self.scores[n] for n in nodes])
        bound = p.score_clip if self.model.kind == "linear" else 1.0
        return quality_weights(noisy, rule=p.weighting, margin=p.margin, bound=bound,
                               trim_fraction=p.trim_fraction)

    def _score(self, nodes: list) -> None:
        """Score ``nodes``' current uploads on the validation rows, with Laplace noise."""
        p = self.params
        ys = self.model.targets(self.val_y)
        raw, C = score_models(self.model, [self.models[n] for n in nodes], self.val_z, ys,
                              clip=p.score_clip)
        m = max(len(ys), 1)
        if math.isfinite(p.score_epsilon):
            noise = self.rng.laplace(0.0, len(nodes) * C / (m * p.score_epsilon), len(nodes))
            self.ledger.record("validation", epsilon_turn=p.score_epsilon,
                               mechanism="quality_scores")
            self.charges.append(Report("privacy_charge", {
                "epsilon_turn": p.score_epsilon, "c": None, "mechanism": "quality_scores",
                "guarantee": True, "subject": "validation", "delta": p.delta}))
        else:
            noise = np.zeros(len(nodes))
        for n, s, e in zip(nodes, raw, noise, strict=True):
            self.raw_scores[n] = float(s)
            self.scores[n] = float(s + e)

    def _close(self, now: float, how: str) -> list[Effect]:
        got = [n for n in self.book.selected if n in self.uploads]
        if self.params.aggregation == "quality" and got and len(self.val_z):
            fresh = got if self.params.rescore else [n for n in got if n not in self.scores]
            if fresh:
                self._score(fresh)
        a = self.weights_for(got)
        if got and a.sum() > 0:
            vs = np.stack([self.uploads[n] for n in got])
            self.z = (a[:, None] * vs).sum(axis=0) / a.sum()
        elif self.z is None:
            self.z = np.zeros(self.model.num_params)
        rep = self.book.report(
            now=now, closed_by=how,
            aggregated=(n for n, w in zip(got, a, strict=True) if w > 0),
            weights={n: float(w) for n, w in zip(got, a, strict=True)},
            scores={n: self.scores[n] for n in got if n in self.scores})
        # the scoring's charges before global_model: the row of this round carries them
        effects: list[Effect] = [rep, *self.charges,
                                 model_report(self.round, self.model.to_weights(self.z))]
        self.charges = []
        self.book.round += 1
        self.book.deadline = None
        if self.round >= self.params.rounds:
            self.phase = "done"
            return effects + [Halt()]
        return effects + self._start_round(now)

    def privacy_rows(self) -> list[dict]:
        """The server's ledger: the quality scores' ε under ``"validation"`` (if any)."""
        return self.ledger.rows()


# ---------------------------------------------------------------- the participant
class FMParticipant(Machine):
    """Keeps its noisy objective, its ADMM dual ``u`` and last solution across rounds.

    All three survive disconnections (device memory); only the running job is lost.
    """

    def __init__(self, node_id: NodeId, model: FMModel, indices: np.ndarray, params: FMParams,
                 *, rng: np.random.Generator, server: NodeId = SERVER):
        super().__init__(node_id)
        self.model = model
        self.indices = np.asarray(indices, np.int64)
        self.params = params
        self.server = server
        self.seed = int(rng.integers(0, 2 ** 63 - 1))   # the FM noise, drawn once
        self.objective: F.Trimmed | None = None
        self.w: np.ndarray | None = None
        self.u = np.zeros(model.num_params)
        self.phase = "idle"
        self.round: int | None = None
        # the participant releases, so it charges its own ledger, once, at its first upload
        self.ledger = PrivacyLedger(delta=params.delta)
        self.released = False

    def handle(self, event: Input, now: float) -> list[Effect]:
        if isinstance(event, Received) and isinstance(event.message, FMRound):
            return self._on_round(event.message)
        if isinstance(event, JobDone):
            return self._on_done(event)
        if isinstance(event, JobFailed):
            if self.phase != "running" or event.job_id != self.round:
                return []
            self.phase = "idle"
            return [Report("job_failed", event.reason, (("device", self.node_id),)),
                    Send(self.server, FMDecline(self.round, event.reason))]
        if isinstance(event, Disconnected):
            self.phase, self.round = "idle", None
        return []

    def _on_round(self, msg: FMRound) -> list[Effect]:
        effects: list[Effect] = []
        if msg.hidden is not None:
            self.model = self.model.with_hidden(msg.hidden)
        if self.phase == "running" and self.round is not None:
            effects.append(CancelJob(self.round))
        center = None
        if msg.params is not None:
            z = msg.params.astype(np.float64)
            if self.w is not None:
                self.u = self.u + self.w - z          # the scaled dual step of ADMM
            center = z - self.u
        p = self.params
        job = FMFitJob.build(self.model, self.indices, epsilon=p.epsilon,
                             bound=p.bound, ridge=p.ridge, seed=self.seed,
                             objective=self.objective, center=center, mu=p.mu)
        self.round, self.phase = msg.round, "running"
        return effects + [RunJob(msg.round, job)]

    def _on_done(self, event: JobDone) -> list[Effect]:
        if self.phase != "running" or event.job_id != self.round:
            return []
        res: FitResult = event.result
        self.objective, self.w = res.objective, res.w
        self.phase = "idle"
        effects: list[Effect] = []
        if res.fitted:
            info = {"rows": int(self.indices.size), "params": self.model.num_params,
                    "trimmed": res.objective.trimmed,
                    "noise_scale": res.objective.noise_scale}
            effects.append(Report("fm_fit", info, (("device", self.node_id),)))
        up = FMUpload(self.round, (self.w + self.u).astype(np.float32))
        if not self.released and math.isfinite(self.params.epsilon):
            self.ledger.record(self.node_id, epsilon_turn=self.params.epsilon,
                               mechanism="functional_mechanism")
            effects.append(Report("privacy_charge", {
                "epsilon_turn": self.params.epsilon, "c": None,
                "mechanism": "functional_mechanism", "guarantee": True,
                "delta": self.params.delta}, (("device", self.node_id),)))
        self.released = True
        return effects + [Send(self.server, up)]

    def privacy_rows(self) -> list[dict]:
        """This participant's ledger: one functional-mechanism release (empty with ε = inf)."""
        return self.ledger.rows()
