"""Client-level differential privacy for FedAvg (DP-FedAvg), with an accountant.

Each round every participating client's update ``Δ_u = w_u − w`` is clipped to L2 norm ``C``;
the server averages the clipped updates and Gaussian noise ``N(0, (zC)²)`` is added to their
*sum*, so the round is a sampled Gaussian mechanism with noise multiplier ``z`` on the set of
clients (user-level DP: a neighbouring dataset adds or removes one client's whole data).

* ``central``: the server adds the noise to the sum (it is trusted with the sum; with
  secure aggregation it only ever sees the sum).
* ``distributed``: each client adds ``N(0, (zC)² / m)`` before it sends (pairs with secure
  aggregation: the server never sees an update with less than the full noise in the sum, as long
  as ``m`` clients deliver; fewer survivors mean proportionally less noise, recorded).
* clipping ``fixed`` or ``adaptive`` (Andrew et al.): the norm follows the ``γ`` quantile of the
  update norms, ``C ← C · exp(−η_C (b̃ − γ))`` with ``b̃`` the noised fraction of clients that were
  not clipped (count noise ``σ_b``); the update noise is then raised to
  ``z_Δ = (z^−2 − (2σ_b)^−2)^−1/2`` so that both releases together cost what one Gaussian
  mechanism with multiplier ``z`` costs.

ε comes from ``dp-accounting``: the composition of ``rounds`` Poisson-sampled Gaussian events at
rate ``q = m / K`` (RDP or PLD).  FedAvg samples exactly ``m`` clients without replacement; using
the Poisson analysis for it is the approximation McMahan et al. make too.

References
----------
H. B. McMahan, D. Ramage, K. Talwar, L. Zhang, "Learning Differentially Private Recurrent
Language Models", ICLR 2018.  G. Andrew, O. Thakkar, H. B. McMahan, S. Ramaswamy,
"Differentially Private Learning with Adaptive Clipping", NeurIPS 2021.

Examples
--------
>>> acc = FedAvgAccountant(noise_multiplier=1.0, sampling_rate=0.1, delta=1e-5)
>>> round(acc.epsilon(20), 3) == round(epsilon_direct(1.0, 0.1, 20, 1e-5), 3)
True
>>> z = noise_for_epsilon(2.0, sampling_rate=0.1, rounds=20, delta=1e-5)
>>> abs(FedAvgAccountant(noise_multiplier=z, sampling_rate=0.1, delta=1e-5).epsilon(20) - 2.0) < 0.01
True
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from sim.machine import Report
from crowdlearn.schema import Key

__all__ = ["CONFIG_SECTION", "DPParams", "DPFedAvg", "FedAvgAccountant", "clip_update",
           "epsilon_direct", "noise_for_epsilon", "cross_check", "params_from_config"]

#: RDP orders: dp-accounting's default grid.
_ORDERS = [1 + x / 10.0 for x in range(1, 100)] + list(range(12, 64)) + [128, 256, 512]


def _event(noise_multiplier: float, sampling_rate: float, rounds: int):
    import dp_accounting as dpa
    return dpa.SelfComposedDpEvent(
        dpa.PoissonSampledDpEvent(sampling_rate, dpa.GaussianDpEvent(noise_multiplier)), rounds)


def epsilon_direct(noise_multiplier: float, sampling_rate: float, rounds: int, delta: float,
                   accountant: str = "rdp") -> float:
    """ε after ``rounds`` sampled Gaussian rounds, straight from ``dp-accounting``."""
    if rounds == 0:
        return 0.0
    if noise_multiplier == 0:
        return math.inf
    from dp_accounting import pld, rdp
    acc = rdp.RdpAccountant(_ORDERS) if accountant == "rdp" else pld.PLDAccountant()
    acc.compose(_event(noise_multiplier, sampling_rate, rounds))
    return float(acc.get_epsilon(delta))


def noise_for_epsilon(target: float, *, sampling_rate: float, rounds: int, delta: float,
                      accountant: str = "rdp") -> float:
    """The smallest noise multiplier (to 0.1 %) whose ε after ``rounds`` is at most ``target``."""
    lo, hi = 0.05, 1.0
    while epsilon_direct(hi, sampling_rate, rounds, delta, accountant) > target:
        hi *= 2
        if hi > 1e4:
            raise ValueError(f"target ε = {target} is out of reach (noise multiplier > 1e4)")
    while hi - lo > 1e-3 * hi:
        mid = (lo + hi) / 2
        if epsilon_direct(mid, sampling_rate, rounds, delta, accountant) > target:
            lo = mid
        else:
            hi = mid
    return hi


class FedAvgAccountant:
    """ε of DP-FedAvg after a number of rounds (each a Poisson-sampled Gaussian)."""

    def __init__(self, *, noise_multiplier: float, sampling_rate: float, delta: float,
                 accountant: str = "rdp"):
        if not 0 < sampling_rate <= 1:
            raise ValueError(f"sampling_rate must be in (0, 1]; got {sampling_rate}")
        self.z, self.q, self.delta, self.kind = noise_multiplier, sampling_rate, delta, accountant
        self._cache: dict[int, float] = {}

    def epsilon(self, rounds: int) -> float:
        if rounds not in self._cache:
            self._cache[rounds] = epsilon_direct(self.z, self.q, rounds, self.delta, self.kind)
        return self._cache[rounds]


def clip_update(delta: np.ndarray, clip_norm: float) -> tuple[np.ndarray, float]:
    """``delta · min(1, C / ‖delta‖)`` and 1.0 if it was not clipped (``‖delta‖ <= C``).

    >>> clip_update(np.array([3.0, 4.0]), 1.0)[0].tolist(), clip_update(np.ones(2), 5.0)[1]
    ([0.6000000000000001, 0.8], 1.0)
    """
    norm = float(np.linalg.norm(delta))
    if norm <= clip_norm:
        return delta, 1.0
    return delta * (clip_norm / norm), 0.0


@dataclass(frozen=True)
class DPParams:
    """DP-FedAvg's parameters, resolved from the ``[dp]`` section by :func:`params_from_config`."""
    mode: str                      # central | distributed
    noise_multiplier: float        # z: what the accountant composes
    clip_norm: float               # C (initial C when adaptive)
    adaptive: bool = False
    target_quantile: float = 0.5
    clip_lr: float = 0.2
    count_stddev: float = 0.0      # σ_b (adaptive); 0 = max(m/20, z)
    delta: float = 1e-5
    accountant: str = "rdp"
    cohort: int = 1                # m, clients averaged per round
    population: int = 1            # K, clients that may be sampled

    @property
    def sampling_rate(self) -> float:
        return min(1.0, self.cohort / self.population)

    @property
    def sigma_b(self) -> float:
        return self.count_stddev or max(self.cohort / 20, self.noise_multiplier)

    @property
    def update_noise_multiplier(self) -> float:
        """z_Δ: the update's share of the noise (equal to z with fixed clipping)."""
        z = self.noise_multiplier
        if not self.adaptive or z == 0:
            return z
        return (z ** -2 - (2 * self.sigma_b) ** -2) ** -0.5


class DPFedAvg:
    """The DP policy of one FedAvg run: clipping norm, noise and the ε ledger.

    Used by the FedAvg server (plain and secure): :meth:`server_aggregate` averages clipped deltas
    (the server clips them when it sees them; with secure aggregation the clients clip, see
    :meth:`client_privatise`), adds the noise and reports ε.
    """

    def __init__(self, params: DPParams):
        self.p = params
        self.clip_norm = params.clip_norm
        self.rounds = 0
        self.accountant = FedAvgAccountant(noise_multiplier=params.noise_multiplier,
                                           sampling_rate=params.sampling_rate,
                                           delta=params.delta, accountant=params.accountant)
        self.history: list[dict] = []

    # client side (secure aggregation): clip, and in distributed mode add this client's noise
    def client_privatise(self, delta: np.ndarray, clip_norm: float,
                         rng: np.random.Generator) -> tuple[np.ndarray, float]:
        clipped, bit = clip_update(delta, clip_norm)
        if self.p.mode == "distributed":
            sd = self.p.update_noise_multiplier * clip_norm / math.sqrt(self.p.cohort)
            clipped = clipped + rng.normal(0.0, sd, clipped.shape)
        return clipped, bit

    def server_aggregate(self, deltas: list[np.ndarray], rng: np.random.Generator):
        """Plain FedAvg: clip each delta and aggregate (returns the mean delta and reports)."""
        if self.p.mode != "central":
            raise ValueError("plain FedAvg sees every update: only central DP applies "
                             f"(distributed noise needs secure aggregation); got {self.p.mode!r}")
        total = np.zeros_like(deltas[0], dtype=np.float64)
        bits = 0.0
        for d in deltas:
            c, b = clip_update(np.asarray(d, np.float64), self.clip_norm)
            total += c
            bits += b
        return self._finish(total, bits, len(deltas), rng)

    def server_aggregate_sum(self, vec: np.ndarray, count: int, *, rng: np.random.Generator,
                             bit_scale: float = 1.0):
        """Secure aggregation: ``vec`` is Σ clipped deltas with Σ bits·bit_scale appended."""
        return self._finish(vec[:-1], float(vec[-1]) / bit_scale, count, rng)

    def _finish(self, total: np.ndarray, bits: float, count: int, rng: np.random.Generator):
        p = self.p
        c = self.clip_norm
        if p.mode == "central" and p.noise_multiplier > 0:
            total = total + rng.normal(0.0, p.update_noise_multiplier * c, total.shape)
        # a fixed denominator (the planned cohort) keeps the sensitivity at C / m
        mean = total / max(p.cohort, 1)
        if p.adaptive:
            noisy = bits + (rng.normal(0.0, p.sigma_b) if p.noise_multiplier > 0 else 0.0)
            frac = noisy / max(p.cohort, 1)
            self.clip_norm = c * math.exp(-p.clip_lr * (frac - p.target_quantile))
        self.rounds += 1
        eps = self.accountant.epsilon(self.rounds)
        self.history.append({"round": self.rounds - 1, "clip_norm": c, "unclipped": bits,
                             "aggregated": count, "epsilon": eps})
        return mean, [Report("epsilon", eps), Report("dp_round", self.history[-1])]

    def summary(self) -> dict:
        p = self.p
        return {"epsilon": self.accountant.epsilon(self.rounds), "delta": p.delta,
                "accountant": f"dp-accounting {p.accountant.upper()}, Poisson-sampled Gaussian "
                              f"(q = {p.sampling_rate:g}, z = {p.noise_multiplier:.4g}, "
                              f"{self.rounds} rounds)",
                "dp_mode": p.mode, "dp_noise_multiplier": p.noise_multiplier,
                "dp_clipping": "adaptive" if p.adaptive else "fixed",
                "dp_final_clip_norm": self.clip_norm}


#: Key names follow Flower's DP wrappers (``clipping_norm``, ``noise_multiplier``,
#: ``clip_norm_lr``, ``target_clipped_quantile``, ``clipped_count_stddev``).
CONFIG_SECTION: dict[str, Key] = {
    "mode": Key(str, "none", "Client-level DP for FedAvg (McMahan et al. 2018): 'central' (the "
                "server noises the sum), 'distributed' (each client adds its share of the "
                "noise; pairs with secure aggregation) or 'none'.",
                choices=("none", "central", "distributed")),
    "clipping": Key(str, "fixed", "Update clipping: a 'fixed' L2 norm or 'adaptive' (Andrew et "
                    "al. 2021: the norm tracks a quantile of the update norms).",
                    choices=("fixed", "adaptive")),
    "clipping_norm": Key(float, 1.0, "L2 clipping norm C of a client's update (initial C when "
                     "adaptive).", min=0, min_open=True),
    "noise_multiplier": Key(float, 1.0, "Noise multiplier z: the sum's noise is N(0, (zC)^2). "
                            "Ignored when target_epsilon > 0.", min=0),
    "target_epsilon": Key(float, 0.0, "If > 0, choose the noise multiplier so that ε after all "
                          "rounds is this (at delta).", min=0),
    "delta": Key(float, 1e-5, "δ of the reported (ε, δ).", min=0, max=1, min_open=True),
    "accountant": Key(str, "rdp", "dp-accounting accountant.", choices=("rdp", "pld")),
    "target_clipped_quantile": Key(float, 0.5, "Adaptive clipping: the target fraction γ of "
                                   "updates left unclipped (norm <= C); the norm tracks that "
                                   "quantile of the update norms (Flower's name).", min=0, max=1),
    "clip_norm_lr": Key(float, 0.2, "Adaptive clipping: geometric learning rate η_C.", min=0),
    "clipped_count_stddev": Key(float, 0.0, "Adaptive clipping: noise σ_b on the unclipped "
                                "count; 0 = max(m/20, z).", min=0),
}


def cross_check(section: dict, *, protocol: str, cohort: int,
                secure_aggregation: str = "none") -> list[str]:
    """Problems of combining the ``[dp]`` section with the rest of the config (messages)."""
    out = []
    if section["mode"] == "distributed" and secure_aggregation == "none":
        out.append("dp.mode: 'distributed' noise is added by each client before secure "
                   "aggregation masks its update; without it the server sees every update before "
                   "the noise. Set fedavg.secure_aggregation = 'secagg' (or 'secagg+'), or use "
                   "dp.mode = 'central'")
    if section["mode"] != "none" and protocol != "fedavg":
        out.append(f"dp.mode: client-level DP is for protocol 'fedavg'; got protocol "
                   f"{protocol!r} (remove [dp] or set protocol = 'fedavg')")
    if section["mode"] == "distributed" and section["noise_multiplier"] == 0 \
            and section["target_epsilon"] == 0:
        out.append("dp.noise_multiplier: distributed DP with no noise; set noise_multiplier > 0 "
                   "or target_epsilon")
    return out


def params_from_config(cfg) -> DPParams | None:
    """The :class:`DPParams` of a config (``None`` when ``dp.mode = "none"``); a target ε sets the noise multiplier."""
    s = cfg.dp
    if s.mode == "none":
        return None
    cohort, population = cfg.clients_per_round, cfg.fleet.devices
    z = s.noise_multiplier
    if s.target_epsilon > 0:
        z = noise_for_epsilon(s.target_epsilon, sampling_rate=min(1.0, cohort / population),
                              rounds=cfg.rounds, delta=s.delta, accountant=s.accountant)
    return DPParams(mode=s.mode, noise_multiplier=z, clip_norm=s.clipping_norm,
                    adaptive=s.clipping == "adaptive", target_quantile=s.target_clipped_quantile,
                    clip_lr=s.clip_norm_lr, count_stddev=s.clipped_count_stddev, delta=s.delta,
                    accountant=s.accountant, cohort=cohort, population=population)
