"""FM's parameters and constants."""

from __future__ import annotations

import math
from dataclasses import dataclass

from crowdlearn.privacy import functional as F
from sim.machine import (
    NodeId,
)

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
    """Protocol parameters (see ``CONFIG_SECTION`` for each)."""

    rounds: int
    epsilon: float = 1.0
    bound: str = "spec"
    ridge: float = 1.0
    x_bound: float = 0.0
    y_bound: float = 3.0
    rho: float = 0.3
    aggregation: str = "plain"
    weighting: str = "median"
    margin: float = 0.1
    trim_fraction: float = 0.3
    score_epsilon: float = 1.0
    score_clip: float = 0.5
    rescore: bool = False
    public_size: int = 40
    deadline_s: float = math.inf
    pretrain_epochs: int = 20
    pretrain_lr: float = 0.1
    pretrain_batch_size: int = 16
    delta: float = 1e-5
    mu: float = 0.0              # resolved ADMM penalty (objective units), set by build()

    def __post_init__(self):
        problems = []
        if self.rounds < 1:
            problems.append(f"rounds must be >= 1; got {self.rounds}")
        if not self.epsilon > 0:
            problems.append(f"epsilon must be > 0; got {self.epsilon}")
        if self.bound not in F.BOUNDS:
            problems.append(f"bound must be one of {F.BOUNDS}; got {self.bound!r}")
        if self.aggregation not in AGGREGATIONS:
            problems.append(f"aggregation must be one of {AGGREGATIONS}; got {self.aggregation!r}")
        if self.weighting not in WEIGHTINGS:
            problems.append(f"weighting must be one of {WEIGHTINGS}; got {self.weighting!r}")
        if not self.score_epsilon > 0:
            problems.append(f"score_epsilon must be > 0; got {self.score_epsilon}")
        if self.ridge < 0 or self.rho < 0 or self.mu < 0 or self.margin <= 0:
            problems.append("ridge, rho, mu must be >= 0 and margin > 0")
        if not 0 <= self.trim_fraction < 1:
            problems.append(f"trim_fraction must be in [0, 1); got {self.trim_fraction}")
        if self.aggregation == "quality" and self.public_size < 1:
            problems.append("aggregation = 'quality' needs public_size >= 1 (validation rows)")
        if problems:
            raise ValueError("; ".join(problems))
