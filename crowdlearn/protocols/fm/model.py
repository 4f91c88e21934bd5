"""The model FM fits: a linear, logistic or softmax head, optionally over fixed hidden layers
(deep mode)."""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from crowdlearn.privacy import functional as F
from crowdlearn.protocols.fm.params import BOUNDED

# ---------------------------------------------------------------- the model
_ACT = {None: lambda a: a, "relu": lambda a: np.maximum(a, 0.0), "tanh": np.tanh,
        "sigmoid": lambda a: 1.0 / (1.0 + np.exp(-a))}


@dataclass(frozen=True, eq=False)
class FMModel:
    """What the functional mechanism fits and how it maps to a ``ModelSpec``'s weights.

    Parameters
    ----------
    kind : {"linear", "logistic", "softmax"}
    scaling : Scaling
        Public map of rows (raw features, or hidden features ``h``) to ``‖z‖₂ ≤ 1``.
    num_classes : int
        ``K`` (softmax); for ``logistic`` the spec has 2 outputs.
    features : int
        Width of the rows fed to the scaling (input dim, or last hidden width).
    hidden : tuple
        Frozen hidden-layer weights (kernel, bias, ...) in ``get_weights()`` order (deep mode).
    activations : tuple
        One activation per hidden layer.
    """

    kind: str
    scaling: F.Scaling
    num_classes: int = 1
    features: int = 1
    hidden: tuple = ()
    activations: tuple = ()

    @property
    def deep(self) -> bool:
        return bool(self.activations)

    @property
    def row_dim(self) -> int:
        return self.features + (1 if self.scaling.intercept else 0)

    @property
    def num_params(self) -> int:
        return self.row_dim * (self.num_classes if self.kind == "softmax" else 1)

    @property
    def curvature(self) -> float:
        """Typical curvature per row of the objective (for the ADMM penalty)."""
        return {"linear": 1.0, "logistic": 0.125}.get(self.kind, 0.5 / max(self.num_classes, 1))

    def with_hidden(self, hidden: Sequence[np.ndarray]) -> FMModel:
        return dataclasses.replace(self, hidden=tuple(np.asarray(a, np.float32) for a in hidden))

    def feature_flops(self) -> int:
        """FLOPs of mapping one row through the hidden layers."""
        total = 0
        for k in range(0, len(self.hidden), 2):
            i, o = self.hidden[k].shape
            total += 2 * i * o + 2 * o
        return total

    def rows(self, x: np.ndarray) -> np.ndarray:
        """The FM rows ``z`` (``‖z‖₂ ≤ 1``) of raw rows ``x``."""
        a = np.asarray(x, np.float64)
        if self.deep:
            if len(self.hidden) != 2 * len(self.activations):
                raise RuntimeError("deep mode: the hidden layers have not been received")
            for k, act in enumerate(self.activations):
                a = _ACT[act](a @ self.hidden[2 * k] + self.hidden[2 * k + 1])
        return self.scaling.rows(a)

    def targets(self, y: np.ndarray) -> np.ndarray:
        return self.scaling.targets(y) if self.kind == "linear" else np.asarray(y, np.int64)

    def to_weights(self, w: np.ndarray) -> tuple[np.ndarray, ...]:
        """The ``ModelSpec`` weights (``get_weights()`` order) of FM parameters ``w``."""
        w = np.asarray(w, np.float64)
        if self.kind == "softmax":
            w = w.reshape(self.row_dim, self.num_classes)
        kernel, bias = self.scaling.to_dense(w, self.kind)
        return (*self.hidden, kernel, bias)

    def predict(self, w: np.ndarray, z: np.ndarray) -> np.ndarray:
        """Scores on FM rows ``z``: the value (linear), the logit (logistic) or the logits."""
        if self.kind == "softmax":
            return z @ np.asarray(w).reshape(self.row_dim, self.num_classes)
        return z @ np.asarray(w).reshape(-1)


def model_for(spec, *, task: str, num_classes: int, x_bound: float = 0.0,
              y_bound: float = 3.0) -> FMModel:
    """The :class:`FMModel` of a ``linear`` or ``mlp`` ``ModelSpec`` (see the module notes)."""
    dense = [layer for layer in spec.layers if layer.kind == "dense"]
    if len(dense) != len(spec.layers) or not dense:
        raise ValueError("the functional mechanism needs a linear or mlp model (dense layers)")
    if dense[-1].activation is not None:
        raise ValueError("the output layer must have no activation")
    if task == "regression":
        kind, K = "linear", 1
    elif num_classes == 2:
        kind, K = "logistic", 2
    else:
        kind, K = "softmax", num_classes
    hidden = dense[:-1]
    if hidden:
        act = hidden[-1].activation
        if act not in BOUNDED:
            raise ValueError(f"deep mode needs a bounded last hidden activation {BOUNDED}; "
                             f"got {act!r}")
        m = hidden[-1].units
        return FMModel(kind, F.Scaling(x_bound=math.sqrt(m), y_bound=y_bound),
                       K if kind == "softmax" else (2 if kind == "logistic" else 1), m, (),
                       tuple(layer.activation for layer in hidden))
    d = int(np.prod(spec.input_shape))
    return FMModel(kind, F.Scaling(x_bound=x_bound or math.sqrt(d), y_bound=y_bound),
                   K if kind == "softmax" else (2 if kind == "logistic" else 1), d)
