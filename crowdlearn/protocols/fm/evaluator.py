"""A numpy evaluator of linear models (no TensorFlow), for fast FM tests and benchmarks."""

from __future__ import annotations

import math

import numpy as np


# ---------------------------------------------------------------- a numpy evaluator
class LinearEvaluator:
    """A ``trainer_factory`` for linear ``ModelSpec`` objects that only evaluates, in numpy.

    Same metrics as ``FleetTrainer.evaluate``: ``(cross-entropy, accuracy)`` for ``sparse_ce``,
    ``(mse, rmse)`` for ``mse``.  For fast tests and benchmarks of linear FM runs (no
    TensorFlow); it cannot train (deep mode needs the real trainer).
    """

    def __init__(self, spec, x, y):
        if len(spec.layers) != 1:
            raise ValueError("LinearEvaluator handles single-layer (linear) models only")
        self.spec = spec

    def train(self, tasks):
        raise NotImplementedError("LinearEvaluator cannot train")

    def evaluate(self, weight_lists, x, y):
        out = []
        x = np.asarray(x, np.float64)
        for kernel, bias in weight_lists:
            s = x @ np.asarray(kernel, np.float64) + np.asarray(bias, np.float64)
            if self.spec.loss == "mse":
                mse = float(np.mean((s[:, 0] - y) ** 2))
                out.append((mse, math.sqrt(mse)))
            else:
                s = s - s.max(axis=1, keepdims=True)
                logp = s - np.log(np.exp(s).sum(axis=1, keepdims=True))
                out.append((float(-np.mean(logp[np.arange(len(y)), y])),
                            float(np.mean(np.argmax(s, axis=1) == y))))
        return out
