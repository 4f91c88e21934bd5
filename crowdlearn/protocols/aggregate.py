"""Aggregation rules as free functions (pure maths, no state)."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


def weighted_average(models: Sequence[Sequence[np.ndarray]],
                     weights: Sequence[float]) -> list[np.ndarray]:
    """Average parameter lists with the given (unnormalised, non-negative) weights.

    References: McMahan et al., AISTATS 2017 (FedAvg: ``w = Σ n_k/n · w_k``).

    Examples
    --------
    >>> weighted_average([[np.array([0.0])], [np.array([3.0])]], [2, 1])[0]
    array([1.])
    """
    if len(models) == 0:
        raise ValueError("weighted_average needs at least one model")
    w = np.asarray(weights, dtype=np.float64)
    if w.shape != (len(models),) or np.any(w < 0) or w.sum() <= 0:
        raise ValueError(f"weights must be {len(models)} non-negative numbers with a positive sum; got {weights}")
    w = w / w.sum()
    out = []
    for layer in zip(*models, strict=True):
        acc = np.zeros(layer[0].shape, dtype=np.float64)
        for wk, arr in zip(w, layer, strict=True):
            acc += wk * arr
        out.append(acc.astype(layer[0].dtype))
    return out
