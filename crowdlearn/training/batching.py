"""Mini-batch schedules and training tasks (ring 0, numpy only).

A device's training job is described by the indices of its samples in the shared training set,
cut into mini-batches up front: :func:`make_batches` gives an ``int64 [steps, B]`` array in which
``-1`` marks padding.  Both trainers consume exactly that schedule, so the batched trainer and the
Keras reference see the same batches in the same order.

Examples
--------
>>> b = make_batches(np.arange(5), epochs=2, batch_size=2, rng=np.random.default_rng(0))
>>> b.shape, count_samples(b)
((6, 2), 10)
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from crowdlearn.errors import CrowdlearnError

__all__ = ["TrainTask", "count_samples", "make_batches"]


def make_batches(
    indices: np.ndarray,
    *,
    epochs: int,
    batch_size: int | None,
    rng: np.random.Generator,
) -> np.ndarray:
    """Shuffle ``indices`` afresh every epoch and cut them into batches.

    Parameters
    ----------
    indices : array of int
        The device's sample indices into the training set.
    epochs : int
        Number of passes over ``indices`` (``0`` gives an empty schedule).
    batch_size : int or None
        Batch size ``B``; ``None`` or ``<= 0`` means full batch (``B = len(indices)``).
    rng : numpy.random.Generator
        Source of the per-epoch permutations.

    Returns
    -------
    numpy.ndarray
        ``int64 [epochs·ceil(n/B), B]``.  Each epoch contributes ``ceil(n/B)`` rows holding a
        permutation of ``indices``; only its last row may be partial, padded at the end with
        ``-1``.  An empty ``indices`` gives shape ``(0, max(B, 1))``.

    Examples
    --------
    >>> rng = np.random.default_rng(1)
    >>> make_batches(np.array([7, 8, 9]), epochs=1, batch_size=2, rng=rng).tolist()
    [[7, 8], [9, -1]]
    >>> make_batches(np.array([7, 8, 9]), epochs=1, batch_size=None, rng=rng).shape
    (1, 3)
    """
    idx = np.asarray(indices).astype(np.int64, copy=False).reshape(-1)
    epochs = int(epochs)
    if epochs < 0:
        raise CrowdlearnError(f"epochs must be >= 0, got {epochs}")
    if idx.size and idx.min() < 0:
        raise CrowdlearnError("sample indices must be non-negative (-1 is reserved for padding)")
    n = idx.size
    b = n if batch_size is None or int(batch_size) <= 0 else int(batch_size)
    if n == 0 or epochs == 0:
        return np.zeros((0, max(b, 1)), np.int64)
    per_epoch = -(-n // b)
    out = np.full((epochs, per_epoch * b), -1, np.int64)
    for e in range(epochs):
        out[e, :n] = rng.permutation(idx)
    return out.reshape(epochs * per_epoch, b)


def count_samples(batches: np.ndarray) -> int:
    """Number of real (non-padding) entries in a batch schedule.

    Examples
    --------
    >>> count_samples(np.array([[3, 1], [2, -1]]))
    3
    """
    return int(np.count_nonzero(np.asarray(batches) >= 0))


@dataclass(frozen=True, eq=False)
class TrainTask:
    """One device's local training: start weights, batch schedule and SGD learning rate.

    Parameters
    ----------
    weights : tuple of numpy.ndarray
        Start weights in ``ModelSpec.param_shapes()`` order.
    batches : numpy.ndarray
        ``int64 [steps, B]`` from :func:`make_batches`; ``-1`` is padding.
    lr : float
        Plain SGD step size.

    Examples
    --------
    >>> t = TrainTask((np.zeros((2, 1), np.float32), np.zeros(1, np.float32)),
    ...               np.array([[0, 1]]), 0.1)
    >>> t.batches.shape
    (1, 2)
    """

    weights: tuple[np.ndarray, ...]
    batches: np.ndarray
    lr: float
