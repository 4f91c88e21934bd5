"""What the protocols' machines share: the training job a machine reads at once, and the
bookkeeping of their rounds.

Local training a machine must read
----------------------------------
A FedAvg client passes its training result on unread (a deferred value), so that a round's
training runs in one batch when the server first reads an update.  A DSSGD participant selects
its upload from its change, a Phong/HRES participant encrypts it, the baselines keep it: they
read the result in the very ``handle`` call that receives it.  Such jobs are
:class:`ReadTrainJob` s, of their own job kind :data:`READ_TRAIN`, which the executor does not
defer (:meth:`~crowdlearn.training.jobs.Executor.complete`): the runtime has the executor run it,
with every other pending job of its kind, when its simulated time is over, and the machine gets
arrays in ``JobDone``, so that no ``handle`` ever starts a computation.  The batch is the one
the first read in ``handle`` used to force (every pending job of the kind), so results are the
same.  A protocol that emits them declares :func:`read_train_runners` as (part of) its
``runners``.

Rounds
------
Two shapes of round, each kept in one place:

* *selection rounds* (FedAvg and SecAgg, FM): the server asks a set of present devices, collects
  their answers until enough are in, nobody is left to wait for (the others declined, were lost
  or misbehaved), or the deadline passes: a :class:`RoundBook`;
* *turn windows* (DSSGD, Phong, HRES): participants take turns on one global model and the server
  reports the model every cycle or every ``len(participants)`` uploads: a :class:`TurnWindow`.

Either way the server closes a round with the same two reports, ``round`` (what
``rounds.csv`` lists) and ``global_model`` (what the monitor evaluates): :func:`round_report`,
:func:`model_report`.  A participant's decline is recorded alike by every server that records
it: :func:`declined`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

from crowdlearn.training.jobs import TrainJob
from sim.machine import NodeId, Report

__all__ = ["READ_TRAIN", "ReadTrainJob", "RoundBook", "TurnWindow", "declined", "model_report",
           "read_train_runners", "round_report"]

#: the job kind of :class:`ReadTrainJob`
READ_TRAIN = "train_read"


@dataclass(frozen=True, eq=False)
class ReadTrainJob(TrainJob):
    """A :class:`~crowdlearn.training.jobs.TrainJob` whose result the machine reads as soon as it
    arrives: computed by the executor when the job's simulated time is over (never deferred).

    Examples
    --------
    >>> import numpy as np
    >>> from crowdlearn.training.models import LayerSpec, ModelSpec
    >>> spec = ModelSpec((4,), (LayerSpec("dense", units=3),))
    >>> job = ReadTrainJob.build(spec, spec.init_weights(np.random.default_rng(0)),
    ...                          np.arange(4), epochs=1, batch_size=2, lr=0.1,
    ...                          rng=np.random.default_rng(0))
    >>> job.kind, isinstance(job, TrainJob)
    ('train_read', True)
    """

    kind: str = field(default=READ_TRAIN, init=False)


def read_train_runners(sim: Any) -> dict:
    """``{READ_TRAIN: runner}``: the simulation's trainer runs a batch of :class:`ReadTrainJob` s
    (the trainer is looked up at each call, so a runtime may replace it after building)."""
    return {READ_TRAIN: lambda jobs: sim.trainer.train([j.task for j in jobs])}


class RoundBook:
    """One round as a server sees it: who was asked, who answered, who will not (declined, lost,
    misbehaved), since when, until when.

    The servers of FedAvg (:mod:`crowdlearn.protocols.fedavg`) and FM
    (:mod:`crowdlearn.protocols.fm`) keep their rounds in one; the round closes when
    :meth:`closable` says so (enough answers, nobody left to wait for) or at :attr:`deadline`.

    Examples
    --------
    >>> book = RoundBook()
    >>> book.open(0, (1, 2, 3), now=2.0, deadline_s=10.0)
    >>> book.deadline, book.answer(1, "u1"), book.answer(1, "again"), book.answer(9, "?")
    (12.0, True, False, False)
    >>> book.give_up(2), book.closable(quorum=3), book.give_up(3), book.closable(quorum=3)
    (True, None, True, 'dropouts')
    >>> book.report(now=5.0, closed_by="dropouts").value["aggregated"]
    (1,)
    """

    __slots__ = ("round", "selected", "_chosen", "answers", "gone", "started", "deadline")

    def __init__(self) -> None:
        self.round = 0
        self.selected: tuple = ()
        self._chosen: frozenset = frozenset()
        self.answers: dict[NodeId, Any] = {}
        self.gone: set[NodeId] = set()
        self.started = 0.0
        self.deadline: float | None = None

    def open(self, round: int, selected, *, now: float, deadline_s: float = math.inf) -> None:
        """Start round ``round`` with ``selected`` asked, at ``now``, closing by
        ``now + deadline_s`` (none if infinite)."""
        self.round = round
        self.selected = tuple(selected)
        self._chosen = frozenset(self.selected)     # membership tests in O(1)
        self.answers = {}
        self.gone = set()
        self.started = now
        self.deadline = now + deadline_s if math.isfinite(deadline_s) else None

    def asked(self, peer: NodeId) -> bool:
        """Whether ``peer`` was selected this round."""
        return peer in self._chosen

    def waiting_for(self, peer: NodeId) -> bool:
        """Whether ``peer`` was asked and has neither answered nor given up."""
        return peer in self._chosen and peer not in self.answers and peer not in self.gone

    def answer(self, peer: NodeId, value: Any) -> bool:
        """Record ``peer``'s answer; False (nothing recorded) if it was not asked, or has
        answered already."""
        if peer not in self._chosen or peer in self.answers:
            return False
        self.answers[peer] = value
        return True

    def give_up(self, peer: NodeId) -> bool:
        """``peer`` will not answer this round (declined, lost, misbehaved); False if it was not
        asked or has answered."""
        if peer not in self._chosen or peer in self.answers:
            return False
        self.gone.add(peer)
        return True

    def closable(self, *, quorum: int | None = None) -> str | None:
        """Why the round can close now: ``"complete"`` once ``quorum`` answers are in (every
        asked peer's if ``None``), ``"dropouts"`` once nobody is left to wait for; else ``None``."""
        need = len(self.selected) if quorum is None else quorum
        if len(self.answers) >= need:
            return "complete"
        if len(self.answers) + len(self.gone) >= len(self.selected):
            return "dropouts"
        return None

    def report(self, *, now: float, closed_by: str, aggregated=None, **extra) -> Report:
        """The ``round`` report (:func:`round_report`) of this round: who was selected, who was
        aggregated (the answers, unless given), how it closed, and ``extra`` fields."""
        return round_report(self.round, start=self.started, end=now, selected=self.selected,
                            aggregated=tuple(self.answers) if aggregated is None
                            else aggregated, closed_by=closed_by, **extra)


class TurnWindow:
    """The reporting window of a turn-based server (DSSGD, Phong, HRES): since when, who was
    served a turn, whose upload was applied; :meth:`close` reports it and opens the next.

    Examples
    --------
    >>> import numpy as np
    >>> win = TurnWindow()
    >>> win.open(0.0); win.selected += [3, 4, 3]; win.applied += [3, 3]
    >>> [r.name for r in win.close(2.5, (np.zeros(1),), uploads=2)], win.round, win.start
    (['round', 'global_model'], 1, 2.5)
    """

    __slots__ = ("round", "start", "selected", "applied")

    def __init__(self) -> None:
        self.round = 0
        self.start = 0.0
        self.selected: list[NodeId] = []
        self.applied: list[NodeId] = []

    def open(self, now: float) -> None:
        """Start the current window at ``now``."""
        self.start = now

    def close(self, now: float, model, *, selected=None, aggregated=None,
              **extra) -> list[Report]:
        """The ``round`` and ``global_model`` reports of this window (selected: those served,
        aggregated: those applied, each once in order, unless given), then the next window."""
        out = [round_report(self.round, start=self.start, end=now,
                            selected=tuple(dict.fromkeys(self.selected)) if selected is None
                            else selected,
                            aggregated=tuple(dict.fromkeys(self.applied)) if aggregated is None
                            else aggregated, closed_by="complete", **extra),
               model_report(self.round, model)]
        self.round += 1
        self.start = now
        self.selected, self.applied = [], []
        return out


def round_report(round: int, *, start: float, end: float, selected, aggregated, closed_by: str,
                 **extra) -> Report:
    """``Report("round", info)``: the round's number, start and end (simulated seconds), who was
    selected and aggregated, how it closed (``complete``, ``dropouts``, ``deadline``...) and a
    protocol's ``extra`` fields; the monitor writes it to ``rounds.csv``."""
    return Report("round", {"round": round, "start_s": start, "end_s": end,
                            "selected": tuple(selected), "aggregated": tuple(aggregated),
                            "closed_by": closed_by, **extra})


def model_report(round: int, weights) -> Report:
    """``Report("global_model", weights, round=round)``: the model the monitor evaluates."""
    return Report("global_model", tuple(weights), (("round", round),))


def declined(src: NodeId, reason: str, **tags: Any) -> Report:
    """The record of a participant's decline (its job failed, not enough memory...):
    ``Report("turn_declined", reason, device=src, ...)``."""
    return Report("turn_declined", reason, (("device", src),) + tuple(tags.items()))
