"""Client-level differential privacy for FedAvg (DP-FedAvg), with an accountant.

Each round every participating client's update ``Δ_u = w_u − w`` is clipped to L2 norm ``C``;
the server averages the clipped updates and Gaussian noise ``N(0, (zC)²)`` is added to their
*sum*, so the round is a sampled Gaussian mechanism with noise multiplier ``z`` on the set of
clients (user-level DP: a neighbouring dataset adds or removes one client's whole data).

* ``central``: the server adds the noise to the sum (it is trusted with the sum; with
  secure aggregation it only ever sees the sum).
* ``distributed``: each client adds its share of the noise, ``N(0, (zC)² / m)`` rounded to the
  quantisation grid, to its quantised update (pairs with secure aggregation: the server only sees
  the sum).  When fewer than ``m`` clients deliver, the sum carries only their ``n`` shares,
  variance ``(n/m)(zC)²``; the accountant charges that round at the smaller noise.
* under secure aggregation the clipped update is rounded to a grid of step ``s`` (16-bit fixed
  point): the rounding moves it by at most ``√d·s/2`` in L2, so the sensitivity of the sum is
  ``Δ = C + √d·s/2``, and each round is accounted as a Gaussian of multiplier
  ``σ / Δ`` (:meth:`DPFedAvg.set_quantisation`; ``docs/design.md``).
* clipping ``fixed`` or ``adaptive`` (Andrew et al.): the norm follows the ``γ`` quantile of the
  update norms, ``C ← C · exp(−η_C (b̃ − γ))`` with ``b̃`` the noised fraction of clients that were
  not clipped: each client contributes ``b_u − ½`` (``b_u = 1`` when ``‖Δ_u‖ ≤ C``), a sum of
  sensitivity ½, noised with ``N(0, σ_b²)`` (central: by the server; distributed: each client
  adds its share ``N(0, σ_b²/m)`` on the grid, so the server never sees the exact count), and
  ``b̃ = clamp((Σ(b_u − ½) + noise)/m + ½, 0, 1)`` (Andrew et al.'s estimator, TF Privacy's
  ``QuantileEstimatorQuery``).  The update noise is raised to ``z_Δ = (z^−2 − (2σ_b)^−2)^−1/2``
  so that both releases together cost what one Gaussian mechanism with multiplier ``z`` costs;
  the accountant charges that combined multiplier, each part with the shares that arrived.

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

Rounds with less noise than planned (recorded multipliers) cost more:

>>> acc = FedAvgAccountant(noise_multiplier=1.0, sampling_rate=0.1, delta=1e-5)
>>> acc.record(1.0); acc.record(0.5)
>>> acc.epsilon(2) > epsilon_direct(1.0, 0.1, 2, 1e-5)
True
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass

import numpy as np

from crowdlearn.errors import ConfigError
from crowdlearn.schema import keys, param, validate
from sim.machine import Report

__all__ = ["CONFIG_SECTION", "DPParams", "DPSection", "DPFedAvg", "FedAvgAccountant", "clip_update",
           "epsilon_direct", "epsilon_of_rounds", "noise_for_epsilon", "cross_check",
           "smallest_epsilon", "unreachable_target", "Z_MAX",
           "params_from_config"]

#: RDP orders: dp-accounting's default grid.
_ORDERS = [1 + x / 10.0 for x in range(1, 100)] + list(range(12, 64)) + [128, 256, 512]


def _event(noise_multiplier: float, sampling_rate: float, rounds: int):
    import dp_accounting as dpa
    return dpa.SelfComposedDpEvent(
        dpa.PoissonSampledDpEvent(sampling_rate, dpa.GaussianDpEvent(noise_multiplier)), rounds)


def epsilon_direct(noise_multiplier: float, sampling_rate: float, rounds: int, delta: float,
                   accountant: str = "rdp") -> float:
    """ε after ``rounds`` sampled Gaussian rounds, straight from ``dp-accounting``."""
    return epsilon_of_rounds([noise_multiplier] * rounds, sampling_rate, delta, accountant)


def epsilon_of_rounds(multipliers, sampling_rate: float, delta: float,
                      accountant: str = "rdp") -> float:
    """ε after one sampled Gaussian round per entry of ``multipliers`` (rounds may differ)."""
    multipliers = list(multipliers)
    if not multipliers:
        return 0.0
    if min(multipliers) <= 0:
        return math.inf
    from collections import Counter

    import dp_accounting as dpa
    from dp_accounting import pld, rdp
    acc = rdp.RdpAccountant(_ORDERS) if accountant == "rdp" else pld.PLDAccountant()
    groups = Counter(multipliers)
    acc.compose(dpa.ComposedDpEvent([_event(z, sampling_rate, k) for z, k in groups.items()]))
    return float(acc.get_epsilon(delta))


#: The largest noise multiplier :func:`noise_for_epsilon` tries (its doubling search from 1).
Z_MAX = 8192.0


@functools.lru_cache(maxsize=64)
def smallest_epsilon(*, sampling_rate: float, rounds: int, delta: float,
                     accountant: str = "rdp") -> float:
    """ε after ``rounds`` at :data:`Z_MAX`, the least any target can ask: ε falls as the noise
    multiplier grows, so a target below this is out of :func:`noise_for_epsilon`'s reach.  One
    accountant evaluation (≈ 20 ms), cached, so the config check costs no bisection.

    >>> e = smallest_epsilon(sampling_rate=0.1, rounds=20, delta=1e-5)
    >>> e == epsilon_direct(Z_MAX, 0.1, 20, 1e-5) and 0 < e < 0.01
    True
    """
    return epsilon_direct(Z_MAX, sampling_rate, rounds, delta, accountant)


def unreachable_target(target: float, *, sampling_rate: float, rounds: int, delta: float,
                       accountant: str = "rdp") -> str | None:
    """Why ``dp.target_epsilon = target`` cannot be met (a config problem naming the reachable
    range and the fixes), or None.  Cheap: :func:`smallest_epsilon`, not the bisection.

    >>> unreachable_target(1.0, sampling_rate=0.1, rounds=20, delta=1e-5) is None
    True
    >>> unreachable_target(1e-4, sampling_rate=0.1, rounds=20, delta=1e-5)[:49]
    'dp.target_epsilon: 0.0001 is out of reach: over 2'
    """
    floor = smallest_epsilon(sampling_rate=sampling_rate, rounds=rounds, delta=delta,
                             accountant=accountant)
    if target >= floor:
        return None
    return (f"dp.target_epsilon: {target:g} is out of reach: over {rounds} rounds at sampling "
            f"rate {sampling_rate:g} and δ = {delta:g}, the {accountant} accountant gives ε >= "
            f"{floor:.4g} even at noise multiplier {Z_MAX:g} (the largest the search tries), so "
            f"reachable targets are ε >= {floor:.4g}; set target_epsilon >= {floor:.4g}, or "
            f"fewer rounds, fewer clients per round, a larger dp.delta"
            + (" or dp.accountant = 'pld' (tighter)" if accountant == "rdp" else ""))


def noise_for_epsilon(target: float, *, sampling_rate: float, rounds: int, delta: float,
                      accountant: str = "rdp") -> float:
    """The smallest noise multiplier (to 0.1 %) whose ε after ``rounds`` is at most ``target``
    (a ``ValueError`` when even :data:`Z_MAX` is not enough: :func:`unreachable_target`)."""
    lo, hi = 0.05, 1.0
    while epsilon_direct(hi, sampling_rate, rounds, delta, accountant) > target:
        hi *= 2
        if hi > Z_MAX:
            raise ValueError(unreachable_target(target, sampling_rate=sampling_rate,
                                                rounds=rounds, delta=delta,
                                                accountant=accountant)
                             or f"target ε = {target} is out of reach")
    while hi - lo > 1e-3 * hi:
        mid = (lo + hi) / 2
        if epsilon_direct(mid, sampling_rate, rounds, delta, accountant) > target:
            lo = mid
        else:
            hi = mid
    return hi


class FedAvgAccountant:
    """ε of DP-FedAvg after a number of rounds (each a Poisson-sampled Gaussian).

    Round ``r`` is charged at the multiplier :meth:`record` ed for it (the noise the released
    sum really carried over its sensitivity), or at ``noise_multiplier`` when none was recorded.
    """

    def __init__(self, *, noise_multiplier: float, sampling_rate: float, delta: float,
                 accountant: str = "rdp"):
        if not 0 < sampling_rate <= 1:
            raise ValueError(f"sampling_rate must be in (0, 1]; got {sampling_rate}")
        self.z, self.q, self.delta, self.kind = noise_multiplier, sampling_rate, delta, accountant
        self.recorded: list[float] = []
        self._cache: dict[tuple, float] = {}

    def record(self, multiplier: float) -> None:
        """The effective noise multiplier of the next round."""
        self.recorded.append(float(multiplier))

    def multipliers(self, rounds: int) -> list[float]:
        return self.recorded[:rounds] + [self.z] * max(0, rounds - len(self.recorded))

    def epsilon(self, rounds: int) -> float:
        key = tuple(self.multipliers(rounds))
        if key not in self._cache:
            self._cache[key] = epsilon_of_rounds(key, self.q, self.delta, self.kind)
        return self._cache[key]


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
    target_epsilon: float = 0.0    # > 0: z was chosen for this ε (kept under quantisation)

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
        if params.adaptive and params.noise_multiplier > 0 \
                and not 2 * params.sigma_b > params.noise_multiplier:
            raise ValueError(_count_noise_problem(params.sigma_b, params.noise_multiplier))
        self.p = params
        self.clip_norm = params.clip_norm
        self.rounds = 0
        self.rounding = 0.0        # √d·s/2: the L2 bound of the fixed-point rounding (SecAgg)
        self.accountant = FedAvgAccountant(noise_multiplier=params.noise_multiplier,
                                           sampling_rate=params.sampling_rate,
                                           delta=params.delta, accountant=params.accountant)
        self.history: list[dict] = []

    def set_quantisation(self, *, step: float, dim: int) -> None:
        """Updates are rounded to a grid of ``step`` in ``dim`` coordinates before summing
        (secure aggregation): the sum's sensitivity becomes ``C + √dim·step/2``.

        With ``dp.target_epsilon`` the noise multiplier is raised by ``(C + √dim·step/2) / C``
        (initial C) so that the planned rounds still meet the target; otherwise the configured
        noise stays and the accountant charges each round ``σ / (C + √dim·step/2)``.
        """
        if step < 0 or dim < 0:
            raise ValueError(f"step and dim must be >= 0; got {step}, {dim}")
        self.rounding = math.sqrt(dim) * step / 2
        if self.p.target_epsilon > 0 and self.p.noise_multiplier > 0:
            from dataclasses import replace
            scale = (self.p.clip_norm + self.rounding) / self.p.clip_norm
            raised = self.p.noise_multiplier * scale
            if self.p.adaptive and not 2 * self.p.sigma_b > raised:
                raise ConfigError([_count_noise_problem(
                    self.p.sigma_b, raised,
                    why=f"target_epsilon = {self.p.target_epsilon:g} with secure aggregation's "
                    f"fixed-point rounding (sensitivity x {scale:.6g}) needs "
                    f"z = {raised:.4g}; ")])
            self.p = replace(self.p, noise_multiplier=raised)
            self.accountant.z = self.p.noise_multiplier / scale

    def effective_multiplier(self, clip_norm: float, shares: int | None = None) -> float:
        """The noise multiplier a round really has: the update's noise standard deviation over
        the sensitivity ``C + rounding``, ``shares`` of ``m`` noise shares in a distributed
        sum, combined under adaptive clipping with the count's: ``Σ(b_u − ½)`` has sensitivity
        ½ and noise ``σ_b`` (its delivered shares too), multiplier ``2σ_b``, and the pair is one
        Gaussian of multiplier ``(z_u^−2 + (2σ_b)^−2)^−1/2`` (Andrew et al., Theorem 1).

        >>> dp = DPFedAvg(DPParams(mode="distributed", noise_multiplier=1.0, clip_norm=1.0,
        ...                        adaptive=True, count_stddev=2.0, cohort=4, population=40))
        >>> round(dp.effective_multiplier(1.0), 6), round(dp.effective_multiplier(1.0, 1), 6)
        (1.0, 0.5)
        """
        p = self.p
        if p.noise_multiplier == 0:
            return 0.0
        arrived = 1.0
        if p.mode == "distributed":
            n = p.cohort if shares is None else shares
            arrived = math.sqrt(max(0, min(n, p.cohort)) / p.cohort)
        if arrived == 0:
            return 0.0
        z_update = p.update_noise_multiplier * clip_norm / (clip_norm + self.rounding) * arrived
        if not p.adaptive:
            return z_update
        z_count = 2 * p.sigma_b * arrived
        return (z_update ** -2 + z_count ** -2) ** -0.5

    @property
    def count_coordinates(self) -> int:
        """Coordinates a client appends to its update under secure aggregation: 1 (its centred
        unclipped indicator ``b − ½``) with adaptive clipping, else 0 (fixed clipping needs no
        count, so the server learns none)."""
        return 1 if self.p.adaptive else 0

    # client side (secure aggregation): clip; in distributed mode also this client's noise share
    def client_privatise(self, delta: np.ndarray, clip_norm: float,
                         rng: np.random.Generator) -> tuple[np.ndarray, float | None]:
        """The clipped delta and, under adaptive clipping, the centred unclipped indicator
        ``b − ½`` (``±½``) the client appends to it (None with fixed clipping)."""
        clipped, bit = clip_update(delta, clip_norm)
        return clipped, (bit - 0.5) if self.p.adaptive else None

    def client_noise(self, dim: int, clip_norm: float, step: float,
                     rng: np.random.Generator, *,
                     count_step: float | None = None) -> np.ndarray | None:
        """Distributed mode: this client's share ``N(0, (z_Δ C)² / m)`` of the noise, in units of
        the quantisation grid (rounded Gaussian, int64), added to its quantised update so that
        the noise never passes through the per-coordinate clipping or the rounding.  Under
        adaptive clipping one more integer follows: the share ``N(0, σ_b² / m)`` of the count's
        noise in units of ``count_step`` (the grid step of the count coordinate, in count
        units).  None in central mode."""
        p = self.p
        if p.mode != "distributed" or p.noise_multiplier == 0:
            return None
        sd = p.update_noise_multiplier * clip_norm / math.sqrt(p.cohort)
        ints = np.rint(rng.normal(0.0, sd / step, dim)).astype(np.int64)
        if not p.adaptive:
            return ints
        if count_step is None or not count_step > 0:
            raise ValueError("adaptive clipping with distributed noise: the count coordinate's "
                             f"grid step is needed for its noise share; got {count_step!r}")
        share = rng.normal(0.0, p.sigma_b / math.sqrt(p.cohort) / count_step)
        return np.append(ints, np.int64(np.rint(share)))

    def server_aggregate(self, deltas: list[np.ndarray], rng: np.random.Generator):
        """Plain FedAvg: clip each delta and aggregate (returns the mean delta and reports)."""
        if self.p.mode != "central":
            raise ValueError("plain FedAvg sees every update: only central DP applies "
                             f"(distributed noise needs secure aggregation); got {self.p.mode!r}")
        total = np.zeros_like(deltas[0], dtype=np.float64)
        centred = 0.0
        for d in deltas:
            c, b = clip_update(np.asarray(d, np.float64), self.clip_norm)
            total += c
            centred += b - 0.5
        return self._finish(total, centred, len(deltas), rng)

    def server_aggregate_sum(self, vec: np.ndarray, count: int, *, rng: np.random.Generator,
                             bit_scale: float = 1.0):
        """Secure aggregation: ``vec`` is Σ clipped deltas, under adaptive clipping followed by
        ``Σ(b − ½)·bit_scale`` (with the clients' count noise in distributed mode)."""
        if self.count_coordinates:
            return self._finish(vec[:-1], float(vec[-1]) / bit_scale, count, rng)
        return self._finish(vec, 0.0, count, rng)

    def _finish(self, total: np.ndarray, centred: float, count: int,
                rng: np.random.Generator):
        """Noise (central), average, adapt the norm from ``centred`` = Σ(b − ½) (its noise
        added here in central mode; in distributed mode the clients' shares are in it), and
        charge the round."""
        p = self.p
        c = self.clip_norm
        if p.mode == "central" and p.noise_multiplier > 0:
            total = total + rng.normal(0.0, p.update_noise_multiplier * c, total.shape)
        # a fixed denominator (the planned cohort) keeps the sensitivity at C / m
        mean = total / max(p.cohort, 1)
        frac = None
        if p.adaptive:
            noisy = centred
            if p.mode == "central" and p.noise_multiplier > 0:
                noisy += rng.normal(0.0, p.sigma_b)
            frac = min(1.0, max(0.0, noisy / max(p.cohort, 1) + 0.5))
            self.clip_norm = c * math.exp(-p.clip_lr * (frac - p.target_quantile))
        self.rounds += 1
        z_eff = self.effective_multiplier(c, count)
        self.accountant.record(z_eff)
        eps = self.accountant.epsilon(self.rounds)
        self.history.append({"round": self.rounds - 1, "clip_norm": c,
                             "unclipped_fraction": frac, "aggregated": count,
                             "noise_multiplier_effective": z_eff, "epsilon": eps})
        return mean, [Report("epsilon", eps), Report("dp_round", self.history[-1])]

    def summary(self) -> dict:
        p = self.p
        zs = self.accountant.multipliers(self.rounds)
        eff = (f"effective z {min(zs):.4g}" + (f"-{max(zs):.4g}" if max(zs) > min(zs) else "")
               if zs else "no round")
        count = (f"; adaptive clipping: update noise z_Δ = {p.update_noise_multiplier:.4g} and "
                 f"count noise σ_b = {p.sigma_b:.4g} on Σ(b − ½) charged as one Gaussian"
                 if p.adaptive else "")
        approx = ("; the clients' noise shares are rounded Gaussians on the quantisation grid, "
                  "accounted as the continuous Gaussian of the same σ (not charged: "
                  "docs/design.md)" if p.mode == "distributed" else "")
        return {"epsilon": self.accountant.epsilon(self.rounds), "delta": p.delta,
                "accountant": f"dp-accounting {p.accountant.upper()}, Poisson-sampled Gaussian "
                              f"(q = {p.sampling_rate:g}, z = {p.noise_multiplier:.4g}, {eff} "
                              f"with sensitivity C + {self.rounding:.3g}, {self.rounds} rounds)"
                              + count + approx,
                "dp_mode": p.mode, "dp_noise_multiplier": p.noise_multiplier,
                "dp_rounding_bound": self.rounding,
                "dp_effective_multipliers": [round(z, 6) for z in zs],
                "dp_clipping": "adaptive" if p.adaptive else "fixed",
                "dp_final_clip_norm": self.clip_norm}


#: Key names follow Flower's DP wrappers (``clipping_norm``, ``noise_multiplier``,
#: ``clip_norm_lr``, ``target_clipped_quantile``, ``clipped_count_stddev``).
@dataclass(frozen=True)
class DPSection:
    """The ``[dp]`` config section, declared once here (:mod:`crowdlearn.schema`: each field's
    default, documentation and limits); :func:`params_from_config` resolves it into
    :class:`DPParams`."""

    mode: str = param("none", "Client-level DP for FedAvg (McMahan et al. 2018): 'central' (the "
                      "server noises the sum), 'distributed' (each client adds its share of the "
                      "noise; pairs with secure aggregation) or 'none'.",
                      choices=("none", "central", "distributed"))
    clipping: str = param("fixed", "Update clipping: a 'fixed' L2 norm or 'adaptive' (Andrew et "
                          "al. 2021: the norm tracks a quantile of the update norms).",
                          choices=("fixed", "adaptive"))
    clipping_norm: float = param(1.0, "L2 clipping norm C of a client's update (initial C when "
                                 "adaptive).", min=0, min_open=True)
    noise_multiplier: float = param(1.0, "Noise multiplier z: the sum's noise is N(0, (zC)^2). "
                                    "Ignored when target_epsilon > 0.", min=0)
    target_epsilon: float = param(0.0, "If > 0, choose the noise multiplier so that ε after all "
                                  "rounds is this (at delta).", min=0)
    delta: float = param(1e-5, "δ of the reported (ε, δ).", min=0, max=1, min_open=True)
    accountant: str = param("rdp", "dp-accounting accountant.", choices=("rdp", "pld"))
    target_clipped_quantile: float = param(0.5, "Adaptive clipping: the target fraction γ of "
                                           "updates left unclipped (norm <= C); the norm tracks "
                                           "that quantile of the update norms (Flower's name).",
                                           min=0, max=1)
    clip_norm_lr: float = param(0.2, "Adaptive clipping: geometric learning rate η_C.", min=0)
    clipped_count_stddev: float = param(0.0, "Adaptive clipping: noise σ_b on the centred "
                                        "unclipped count Σ(b − ½) (distributed: each client adds "
                                        "its share); 0 = max(m/20, z); needs 2σ_b > z.", min=0)

    def __post_init__(self) -> None:
        validate(self)


#: the ``[dp]`` section (derived from :class:`DPSection`)
CONFIG_SECTION = keys(DPSection)


def cross_check(section: dict, *, protocol: str, cohort: int,
                secure_aggregation: str = "none", rounds: int = 0,
                population: int = 0, sampled: int = 0) -> list[str]:
    """Problems of combining the ``[dp]`` section with the rest of the config (messages).

    With ``target_epsilon`` and adaptive clipping, the noise multiplier the target needs is
    computed here (``rounds``, ``population`` and ``sampled``, the clients sampled a round, as
    :func:`params_from_config` does) so that a ``clipped_count_stddev`` too small for it is
    reported with the configuration's other problems, not when the run is built.
    """
    out = []
    if section["mode"] == "distributed" and secure_aggregation == "none":
        out.append("dp.mode: 'distributed' noise is added by each client before secure "
                   "aggregation masks its update; without it the server sees every update before "
                   "the noise. Set fedavg.secure_aggregation = 'secagg' (or 'secagg+'), or use "
                   "dp.mode = 'central'")
    if section["mode"] != "none" and protocol != "fedavg":
        out.append(f"dp.mode: client-level DP is for protocol 'fedavg'; got protocol "
                   f"{protocol!r} (remove [dp] or set protocol = 'fedavg')")
    sb, z = section["clipped_count_stddev"], section["noise_multiplier"]
    if section["mode"] != "none" and section["clipping"] == "adaptive" and sb > 0 \
            and section["target_epsilon"] == 0 and z > 0 and not 2 * sb > z:
        out.append(_count_noise_problem(sb, z))
    unreachable = None
    if section["mode"] != "none" and section["target_epsilon"] > 0 and rounds > 0 \
            and population > 0 and sampled > 0:
        # the bisection's reach, found by one cached accountant call (not the bisection)
        unreachable = unreachable_target(
            section["target_epsilon"], sampling_rate=min(1.0, sampled / population),
            rounds=rounds, delta=section["delta"], accountant=section["accountant"])
        if unreachable:
            out.append(unreachable)
    if section["mode"] != "none" and section["clipping"] == "adaptive" and sb > 0 \
            and section["target_epsilon"] > 0 and rounds > 0 and population > 0 and sampled > 0 \
            and not unreachable:
        try:
            z = noise_for_epsilon(section["target_epsilon"],
                                  sampling_rate=min(1.0, sampled / population), rounds=rounds,
                                  delta=section["delta"], accountant=section["accountant"])
        except ValueError as exc:
            out.append(f"dp.target_epsilon: {exc}; raise target_epsilon")
        else:
            if not 2 * sb > z:
                out.append(_count_noise_problem(
                    sb, z, why=f"target_epsilon = {section['target_epsilon']:g} over {rounds} "
                    f"rounds needs z = {z:.4g}; "))
    if section["mode"] == "distributed" and section["noise_multiplier"] == 0 \
            and section["target_epsilon"] == 0:
        out.append("dp.noise_multiplier: distributed DP with no noise; set noise_multiplier > 0 "
                   "or target_epsilon")
    return out


def _count_noise_problem(sigma_b: float, z: float, *, why: str = "") -> str:
    return (f"dp.clipped_count_stddev: {why}adaptive clipping splits the noise multiplier "
            f"z = {z:.4g} between the update and the count, which needs 2·σ_b > z; got σ_b = "
            f"{sigma_b:.4g}. Set clipped_count_stddev > {z / 2:.4g} (or 0 for max(m/20, z))")


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
                    accountant=s.accountant, cohort=cohort, population=population,
                    target_epsilon=s.target_epsilon)
