"""FM's job: form, perturb and trim the objective, then solve (kind ``fm_fit``), and its runner."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from crowdlearn.privacy import functional as F
from crowdlearn.protocols.fm.model import FMModel


# ---------------------------------------------------------------- the job
@dataclass(frozen=True, eq=False)
class FitResult:
    """What a participant's :class:`FMFitJob` returns."""

    objective: F.Trimmed      # the noisy, trimmed objective (kept by the participant)
    w: np.ndarray             # the solution of this round (flat float64)
    fitted: bool              # True when this job formed (and perturbed) the objective


@dataclass(frozen=True, eq=False)
class FMFitJob:
    """Form + perturb + trim the objective (first time), then solve; or re-solve (later rounds).

    Carries the device's row ids (``indices``), not its rows: the runner resolves them in the
    training rows the executor holds (:func:`runners`), so a job stays small enough to cross to
    another process.  Priced in FLOPs: forming the coefficients ``n·r(r+1) + 2·n·r·K`` (the
    upper triangle of ``Σ z zᵀ`` and the linear terms, ``r`` the row length), the mapping through
    the hidden layers (deep mode), the symmetric eigendecomposition ``9r³`` (+ ``9K³``) of the
    trimming; a re-solve costs ``4·p·k + 8p`` (two products with the ``p×k`` kept basis).
    """

    model: FMModel
    indices: np.ndarray
    epsilon: float
    bound: str
    ridge: float
    seed: int
    objective: F.Trimmed | None = None
    center: np.ndarray | None = None
    mu: float = 0.0
    flops: float = 0.0
    memory_bytes: int = 0
    kind: str = field(default="fm_fit", init=False)

    @classmethod
    def build(cls, model: FMModel, indices, *, epsilon: float, bound: str, ridge: float,
              seed: int, objective: F.Trimmed | None = None, center=None,
              mu: float = 0.0) -> FMFitJob:
        n, r, p = int(len(indices)), model.row_dim, model.num_params
        K = model.num_classes if model.kind == "softmax" else 1
        if objective is None:
            flops = n * r * (r + 1) + 2 * n * r * K + 9 * r ** 3 + (9 * K ** 3 if K > 1 else 0) \
                + n * model.feature_flops()
            mem = 8 * (p * p + n * max(r, model.features) + 2 * p)
        else:
            k = objective.lam.size
            flops = 4 * p * k + 8 * p
            mem = 8 * (p * k + 4 * p)
        return cls(model, np.asarray(indices, np.int64), float(epsilon), bound,
                   float(ridge), int(seed), objective, center, float(mu), float(flops), int(mem))

    def run(self, x, y) -> FitResult:
        """Run on the training rows ``x``, ``y`` (all of them: the job takes its own)."""
        t, fitted = self.objective, False
        if t is None:
            z = self.model.rows(np.asarray(x)[self.indices])
            y = self.model.targets(np.asarray(y)[self.indices])
            K = self.model.num_classes if self.model.kind == "softmax" else None
            poly = F.coefficients(self.model.kind, z, y, num_classes=K)
            poly = F.perturb(poly, epsilon=self.epsilon, rng=np.random.default_rng(self.seed),
                             bound=self.bound)
            t = F.trim(poly, ridge=self.ridge * poly.noise_scale)
            fitted = True
        w = F.solve(t, center=self.center, mu=self.mu if self.center is not None else 0.0)
        return FitResult(t, w, fitted)


def run_jobs(jobs: Sequence[FMFitJob], x, y) -> list[FitResult]:
    """Executor runner for kind ``"fm_fit"`` (plain numpy, one job after the other), on the
    training rows ``x``, ``y``."""
    return [j.run(x, y) for j in jobs]


#: ``ctx.extra`` key of the training rows FM's jobs read (:func:`crowdlearn.protocols.fm.build`
#: puts them there: the dataset's, or their corrupted copy under ``[quality]``)
ROWS = "fm_rows"


def runners(sim: Any) -> dict:
    """The executor's runners: ``"fm_fit"`` jobs on the rows the simulation holds
    (``sim.ctx.extra[ROWS]``), and the server's pre-training (deep mode)."""
    from crowdlearn.protocols.rounds import read_train_runners

    return {"fm_fit": lambda jobs: run_jobs(jobs, *sim.ctx.extra[ROWS]),
            **read_train_runners(sim)}
