"""The ``[fm]`` config section, its checks and the parameters it builds."""

from __future__ import annotations

import dataclasses
import math

from crowdlearn.privacy import functional as F
from crowdlearn.protocols.fm.params import AGGREGATIONS, BOUNDED, WEIGHTINGS, FMParams
from crowdlearn.schema import Key


# ---------------------------------------------------------------- configuration
def _section() -> dict:

    return {
        "epsilon": Key(float, 1.0, "Functional-mechanism budget ε of each participant, spent once "
                       "(inf = no noise: the non-private collaborative model).", min=0,
                       min_open=True),
        "bound": Key(str, "spec", "Sensitivity Δ: 'spec' (Zhang et al.'s, |z_j| ≤ 1) or 'l2' "
                     "(ours: Σ|z_j| ≤ √d from ‖z‖₂ ≤ 1, about d times smaller).",
                     choices=F.BOUNDS),
        "ridge": Key(float, 1.0, "Ridge added to the noisy objective, in units of the noise "
                     "scale Δ/ε (0 at ε = inf).", min=0),
        "x_bound": Key(float, 0.0, "Public row bound B: rows are divided by B and clipped to the "
                       "unit ball (0 = √(number of features)); linear models only.", min=0),
        "y_bound": Key(float, 3.0, "Regression targets are divided by this and clipped to "
                       "[-1, 1].", min=0, min_open=True),
        "rho": Key(float, 0.3, "ADMM penalty relative to the objective's curvature "
                   "(μ = rho·(n̄·c/r + ridge·Δ/ε)).", min=0),
        "aggregation": Key(str, "plain", "'plain' averaging or 'quality'-weighted (validation "
                           "scores with privacy noise).", choices=AGGREGATIONS),
        "weighting": Key(str, "median", "How noisy scores become weights: 'median' (keep scores "
                         "≤ median + margin), 'softmax' (temperature margin), 'trim' (drop the "
                         "worst trim_fraction).", choices=WEIGHTINGS),
        "margin": Key(float, 0.1, "Margin / temperature of the weighting, in units of the score "
                      "bound C.", min=0, min_open=True),
        "trim_fraction": Key(float, 0.3, "Share of participants dropped by weighting = 'trim'.",
                             min=0, max=0.99),
        "score_epsilon": Key(float, 1.0, "ε of the Laplace noise on the validation scores (per "
                             "scoring; inf = exact scores).", min=0, min_open=True),
        "score_clip": Key(float, 0.5, "Regression: per-row squared error clipped at this (in "
                          "[-1, 1] target units) in the scores.", min=0, min_open=True),
        "rescore": Key(bool, False, "Score every round (composes score_epsilon) instead of once, "
                       "on a participant's first upload."),
        "public_size": Key(int, 40, "Training rows held by the server (removed from the devices): "
                           "validation scores; deep mode pre-trains the hidden layers on them.",
                           min=0),
        "deadline_s": Key(float, math.inf, "Round deadline in simulated seconds.", min=0,
                          min_open=True),
        "pretrain_epochs": Key(int, 20, "Deep mode: epochs of the server's (non-private) "
                               "pre-training on its public rows.", min=1),
        "pretrain_lr": Key(float, 0.1, "Deep mode: SGD learning rate of the pre-training.", min=0,
                           min_open=True),
        "pretrain_batch_size": Key(int, 16, "Deep mode: mini-batch size of the pre-training.",
                                   min=1),
        "delta": Key(float, 1e-5, "δ at which the ledger composes ε.", min=0, max=1,
                     min_open=True),
    }


#: the ``[fm]`` config section (registered by :mod:`crowdlearn.config`)
CONFIG_SECTION: dict = _section()


def cross_check(section: dict, *, protocol: str = "fm", model: dict | None = None,
                data: dict | None = None, quality: dict | None = None) -> list[str]:
    """Problems of a resolved ``[fm]`` section (and, for ``protocol = "fm"``, its neighbours)."""
    out = []
    if not 0 < section["delta"] < 1:
        out.append(f"fm.delta: must be < 1; got {section['delta']}")
    if section["aggregation"] == "quality" and section["public_size"] < 1:
        out.append("fm.public_size: aggregation = 'quality' needs validation rows (>= 1)")
    if protocol != "fm":
        return out
    if model is not None:
        if model["arch"] == "cnn":
            out.append("model.arch: protocol 'fm' needs 'linear' or 'mlp'")
        elif model["arch"] == "mlp" and model["activation"] not in BOUNDED:
            out.append(f"model.activation: protocol 'fm' with arch = 'mlp' needs a bounded "
                       f"activation ({', '.join(BOUNDED)}); got {model['activation']!r}")
    if quality is not None:
        from crowdlearn.data import quality as q
        task = None
        if data is not None:
            task = "regression" if data["dataset"] == "diabetes" else "classification"
        out.extend(q.cross_check(quality, task=task))
    return out


def params_from_config(cfg, *, mu: float = 0.0) -> FMParams:
    """The :class:`FMParams` of a config: ``rounds`` and the ``[fm]`` section, with ``mu`` as given."""
    s = cfg.fm
    names = [f.name for f in dataclasses.fields(FMParams) if f.name not in ("rounds", "mu")]
    return FMParams(rounds=cfg.rounds, mu=mu, **{k: getattr(s, k) for k in names})
