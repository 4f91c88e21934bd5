"""FM's parameters and constants."""

from __future__ import annotations

import math
from dataclasses import dataclass

from crowdlearn.privacy import functional as F
from crowdlearn.schema import MISSING, param, validate
from sim.machine import NodeId

SERVER: NodeId = "server"
AGGREGATIONS = ("plain", "quality")
WEIGHTINGS = ("median", "softmax", "trim")
BOUNDED = ("tanh", "sigmoid")
#: Seed stream (child of the master seed) of the server's public split and score noise.
STREAM_INDEX = 7
_PRETRAIN = "pretrain"



# ---------------------------------------------------------------- parameters
@dataclass(frozen=True)
class FMParams:
    """Protocol parameters: ``rounds``, the ``[fm]`` config section declared once here
    (:mod:`crowdlearn.schema`: each field's default, documentation and limits; the rules
    between keys in :meth:`relations`), and ``mu``, which the builder resolves."""

    rounds: int = param(MISSING, "Rounds.", type=int, min=1, config=False)
    epsilon: float = param(1.0, "Functional-mechanism budget ε of each participant, spent once "
                           "(inf = no noise: the non-private collaborative model).", min=0,
                           min_open=True)
    bound: str = param('spec', "Sensitivity Δ: 'spec' (Zhang et al.'s, |z_j| ≤ 1) or 'l2' (ours:"
                       " Σ|z_j| ≤ √d from ‖z‖₂ ≤ 1, about d times smaller).",
                       choices=F.BOUNDS)
    ridge: float = param(1.0, "Ridge added to the noisy objective, in units of the noise scale "
                         "Δ/ε (0 at ε = inf).", min=0)
    x_bound: float = param(0.0, "Public row bound B: rows are divided by B and clipped to the "
                           "unit ball (0 = √(number of features)); linear models only.", min=0)
    y_bound: float = param(3.0, "Regression targets are divided by this and clipped to [-1, 1].",
                           min=0, min_open=True)
    rho: float = param(0.3, "ADMM penalty relative to the objective's curvature (μ = rho·(n̄·c/r"
                       " + ridge·Δ/ε)).", min=0)
    aggregation: str = param('plain', "'plain' averaging or 'quality'-weighted (validation "
                             "scores with privacy noise).", choices=AGGREGATIONS)
    weighting: str = param('median', "How noisy scores become weights: 'median' (keep scores ≤ "
                           "median + margin), 'softmax' (temperature margin), 'trim' (drop the "
                           "worst trim_fraction).", choices=WEIGHTINGS)
    margin: float = param(0.1, "Margin / temperature of the weighting, in units of the score "
                          "bound C.", min=0, min_open=True)
    trim_fraction: float = param(0.3, "Share of participants dropped by weighting = 'trim'.",
                                 min=0, max=0.99)
    score_epsilon: float = param(1.0, "ε of the Laplace noise on the validation scores (per "
                                 "scoring; inf = exact scores).", min=0, min_open=True)
    score_clip: float = param(0.5, "Regression: per-row squared error clipped at this (in [-1, "
                              "1] target units) in the scores.", min=0, min_open=True)
    rescore: bool = param(False, "Score every round (composes score_epsilon) instead of once, on"
                          " a participant's first upload.")
    public_size: int = param(40, "Training rows held by the server (removed from the devices): "
                             "validation scores; deep mode pre-trains the hidden layers on them.",
                             min=0)
    deadline_s: float = param(math.inf, "Round deadline in simulated seconds.", min=0,
                              min_open=True)
    pretrain_epochs: int = param(20, "Deep mode: epochs of the server's (non-private) "
                                 "pre-training on its public rows.", min=1)
    pretrain_lr: float = param(0.1, "Deep mode: SGD learning rate of the pre-training.", min=0,
                               min_open=True)
    pretrain_batch_size: int = param(16, "Deep mode: mini-batch size of the pre-training.", min=1)
    delta: float = param(1e-05, "δ at which the ledger composes ε.", min=0, max=1, min_open=True)

    mu: float = param(0.0, "Resolved ADMM penalty (objective units), set by build().", min=0,
                      config=False)

    def __post_init__(self):
        validate(self)

    @staticmethod
    def relations(v, key) -> list[str]:
        """The rules between keys (``key(name)`` spells a key as the reader knows it)."""
        out = []
        if not 0 < v["delta"] < 1:
            out.append(f"{key('delta')}: must be < 1; got {v['delta']}")
        if v["aggregation"] == "quality" and v["public_size"] < 1:
            out.append(f"{key('public_size')}: aggregation = 'quality' needs validation rows "
                       "(>= 1)")
        return out
