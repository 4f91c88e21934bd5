"""What the protocols' machines share: the training job a machine reads at once.

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
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from crowdlearn.training.jobs import TrainJob

__all__ = ["READ_TRAIN", "ReadTrainJob", "read_train_runners"]

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
