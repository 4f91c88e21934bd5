"""Quality scores of the participants' models on the server's public split, and their weights."""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

from crowdlearn.protocols.fm.model import FMModel
from crowdlearn.protocols.fm.params import WEIGHTINGS


# ---------------------------------------------------------------- quality scores
def score_models(model: FMModel, params: Sequence[np.ndarray], z: np.ndarray, y: np.ndarray,
                 *, clip: float) -> tuple[np.ndarray, float]:
    """Each parameter vector's validation score and the per-row bound ``C`` of the score.

    Classification: the error rate (``C = 1``); regression: the squared error in ``[−1, 1]``
    target units, each row clipped at ``clip`` (``C = clip``).
    """
    out = []
    for w in params:
        s = model.predict(w, z)
        if model.kind == "linear":
            out.append(float(np.mean(np.minimum((s - y) ** 2, clip))))
        elif model.kind == "logistic":
            out.append(float(np.mean((s > 0).astype(np.int64) != y)))
        else:
            out.append(float(np.mean(np.argmax(s, axis=1) != y)))
    return np.asarray(out), (clip if model.kind == "linear" else 1.0)


def quality_weights(noisy: np.ndarray, *, rule: str = "median", margin: float = 0.1,
                    bound: float = 1.0, trim_fraction: float = 0.3) -> np.ndarray:
    """Aggregation weights from noisy scores (lower is better); see the module notes.

    Examples
    --------
    >>> quality_weights(np.array([0.1, 0.12, 0.8, 0.15, 0.9])).tolist()
    [1.0, 1.0, 0.0, 1.0, 0.0]
    >>> quality_weights(np.array([0.1, 0.2, 0.3, 0.4]), rule="trim", trim_fraction=0.5).tolist()
    [1.0, 1.0, 0.0, 0.0]
    """
    s = np.asarray(noisy, np.float64)
    if s.size == 0:
        return s
    if rule == "median":
        return (s <= np.median(s) + margin * bound).astype(np.float64)
    if rule == "softmax":
        return np.exp(-(s - s.min()) / (margin * bound))
    if rule == "trim":
        drop = int(math.floor(trim_fraction * s.size))
        a = np.ones(s.size)
        if drop:
            a[np.argsort(s, kind="stable")[s.size - drop:]] = 0.0
        return a
    raise ValueError(f"rule must be one of {WEIGHTINGS}; got {rule!r}")
