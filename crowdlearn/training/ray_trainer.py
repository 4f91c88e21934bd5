"""Split a round's training jobs over Ray actors (``training.executor = "ray"``).

One simulation whose cohort is too large for one machine's time budget can spread its local
training over a Ray cluster.  :class:`RayShardedTrainer` has the trainer interface
(``train(tasks)``, ``evaluate(weights, x, y)``); each of its ``actors`` holds its own trainer of the
configured backend, built once from the training set, which is put into the object store once
and read zero-copy by every actor.  ``train`` cuts the round's tasks into contiguous device shards,
one per actor, runs them concurrently and returns the weights in task order.  Because every
device's local SGD depends only on its own task, the weights are identical to the in-process
trainer's (``tests/test_sweeps.py`` checks it bit for bit).  Evaluation stays in the driver.

Examples
--------
>>> from crowdlearn.training.ray_trainer import shards
>>> shards(5, 2)
[range(0, 2), range(2, 5)]
>>> shards(1, 3)
[range(0, 1)]
"""

from __future__ import annotations

from collections.abc import Sequence
from itertools import pairwise

import numpy as np

from crowdlearn.errors import CrowdlearnError
from crowdlearn.training.batching import TrainTask


def shards(n: int, parts: int) -> list[range]:
    """Contiguous, nearly equal, non-empty ranges covering ``0..n-1`` (at most ``parts``)."""
    parts = max(1, min(parts, n))
    bounds = np.linspace(0, n, parts + 1).round().astype(int)
    return [range(int(a), int(b)) for a, b in pairwise(bounds) if b > a]


class _TrainerActor:
    """Runs inside a Ray worker: one trainer (``load()`` gives its class) on the shared data,
    with TensorFlow's pools of ``threads`` threads (the CPUs the actor asked Ray for), set before
    the trainer's first op: by default each worker's TensorFlow would start a pool of every core
    of its node, and ``actors`` of them would ask for ``actors × cores`` busy threads."""

    def __init__(self, load, spec, x, y, threads: int = 1):
        from crowdlearn.training.threads import use_threads

        use_threads(threads)
        self.trainer = load()(spec, x, y)

    def train(self, tasks):
        return self.trainer.train(tasks)

    def pools(self) -> tuple[int, int]:
        """TensorFlow's (intra-op, inter-op) pool sizes in this actor's process."""
        import tensorflow as tf

        t = tf.config.threading
        return t.get_intra_op_parallelism_threads(), t.get_inter_op_parallelism_threads()


def _concrete(task: TrainTask) -> TrainTask:
    """Materialise deferred start weights: only plain arrays cross to another process."""
    return TrainTask(tuple(np.asarray(w) for w in task.weights), task.batches, task.lr)


class RayShardedTrainer:
    """The trainer interface over ``actors`` Ray actors; see the module docstring.

    Parameters
    ----------
    load
        A zero-argument function returning the trainer class each actor builds (e.g.
        ``crowdlearn.experiment.TRAINERS["batched"]``); it is shipped to the workers by reference.
    spec, x, y
        Model and training set, as for any trainer.
    actors
        Number of actors.
    threads
        TensorFlow threads per op in each actor, and the CPUs each actor requests from Ray
        (``training.threads``; ``0`` means 1).
    address
        Ray cluster to join (``"auto"``, ``"ray://HOST:PORT"``); empty: the running Ray of this
        process, or a local one started with ``actors`` CPUs.
    local
        The in-process trainer used for evaluation (built lazily with ``load`` if None).
    """

    def __init__(self, load, spec, x, y, *, actors: int = 2, address: str = "", local=None,
                 threads: int = 0):
        try:
            import ray
        except ImportError:
            raise CrowdlearnError("training.executor = 'ray' needs Ray: pip install "
                                  "'crowdlearn[ray]' (or set training.executor = 'local')") from None
        if actors < 1:
            raise CrowdlearnError(f"training.ray_actors must be >= 1; got {actors}")
        threads = max(1, threads)
        if not ray.is_initialized():
            if address:
                ray.init(address=address, log_to_driver=False)
            else:
                ray.init(num_cpus=actors * threads, include_dashboard=False, log_to_driver=False,
                         configure_logging=False)
        self.load, self.spec, self.x, self.y = load, spec, x, y
        self._local = local
        x_ref, y_ref = ray.put(np.asarray(x)), ray.put(np.asarray(y))
        actor = ray.remote(num_cpus=threads)(_TrainerActor)
        self.actors = [actor.remote(load, spec, x_ref, y_ref, threads) for _ in range(actors)]
        self.calls = 0

    def train(self, tasks: Sequence[TrainTask], **kwargs) -> list:
        import ray

        if kwargs:
            raise TypeError(f"RayShardedTrainer.train takes no options; got {sorted(kwargs)}")
        tasks = [_concrete(t) for t in tasks]
        parts = shards(len(tasks), len(self.actors))
        futures = [a.train.remote([tasks[i] for i in part]) for a, part in zip(self.actors, parts, strict=True)]
        out: list = []
        for res in ray.get(futures):
            out.extend(res)
        self.calls += 1
        return out

    def evaluate(self, weight_lists, x, y):
        if self._local is None:
            self._local = self.load()(self.spec, self.x, self.y)
        return self._local.evaluate(weight_lists, x, y)

    def close(self) -> None:
        """Stop the actors (they also stop when this object is garbage collected)."""
        import ray

        for a in self.actors:
            ray.kill(a)
        self.actors = []

