"""An empirical privacy auditor: a statistically valid *lower* bound on the ε a mechanism spends.

A mechanism ``M`` is (ε, δ)-DP when, for every pair of neighbouring inputs ``d0``, ``d1`` and
every event ``E``, ``P[M(d0) ∈ E] ≤ e^ε · P[M(d1) ∈ E] + δ`` (and with ``d0``, ``d1`` swapped).
Run ``M`` many times on each of ``d0`` and ``d1``, count how often the event happens, and any
pair of frequencies far enough apart proves a lower bound on ε:

    ``ε ≥ ln((p̲0 − δ) / p̄1)``

where ``p̲0`` is a Clopper-Pearson lower confidence bound on ``P[M(d0) ∈ E]`` and ``p̄1`` an upper
bound on ``P[M(d1) ∈ E]``, each at level ``1 − α/2``, so the bound holds with probability at least
``confidence = 1 − α`` (the technique of Jagielski, Ullman & Oprea 2020 and Nasr et al. 2021;
Ding et al. 2018 test the same inequality by hypothesis testing).  An auditor can only *refute*
a claim: a lower bound above the claimed ε proves the claim false (up to the ``1 − confidence``
chance of an unlucky sample); a lower bound below it proves nothing about other inputs or
events, which is why the neighbours and the event must be chosen adversarially.

Choosing the event
------------------
The caller passes either an ``event`` (a predicate on the output) or a ``statistic`` (a number
per output, default: the output itself).  With a statistic the auditor searches the events
``{s ≥ t}`` and ``{s ≤ t}`` over thresholds ``t`` and both orders of the pair on the first
``selection_fraction`` of the runs, and computes the reported bound for the one chosen event on
the remaining runs only, so the search does not bias the bound (a bound computed on the same
samples that chose the event would need a multiple-testing correction).

Use on your own mechanism
-------------------------
Any callable ``mechanism(data, rng) -> output`` works; pass ``vectorized=True`` when
``mechanism(data, rng, trials)`` returns an array of ``trials`` statistics at once (much faster).

References
----------
M. Jagielski, J. Ullman, A. Oprea, "Auditing Differentially Private Machine Learning: How Private
is Private SGD?", NeurIPS 2020.
M. Nasr, S. Song, A. Thakurta, N. Papernot, N. Carlini, "Adversary Instantiation: Lower Bounds for
Differentially Private Machine Learning", IEEE S&P 2021.
Z. Ding, Y. Wang, G. Wang, D. Zhang, D. Kifer, "Detecting Violations of Differential Privacy",
ACM CCS 2018.
C. J. Clopper, E. S. Pearson, "The use of confidence or fiducial limits illustrated in the case of
the binomial", Biometrika 26(4), 1934.

Examples
--------
The Laplace mechanism with scale ``1/ε`` on a counting query (neighbours 0 and 1) at ε = 1:

>>> rng = np.random.default_rng(0)
>>> lap = lambda d, rng, n: d + rng.laplace(0.0, 1.0, n)
>>> res = audit(lap, 0.0, 1.0, trials=200_000, vectorized=True, rng=rng, claimed_epsilon=1.0)
>>> 0.8 < res.epsilon_lower_bound <= 1.0, res.refutes_claim
(True, False)

Mis-scaled noise (scale ``1/(2ε)``) is caught:

>>> bad = lambda d, rng, n: d + rng.laplace(0.0, 0.5, n)
>>> audit(bad, 0.0, 1.0, trials=200_000, vectorized=True, rng=rng, claimed_epsilon=1.0).refutes_claim
True
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

__all__ = ["AuditResult", "audit", "clopper_pearson", "epsilon_lower_bound"]


def clopper_pearson(k: int, n: int, alpha: float) -> tuple[float, float]:
    """Exact (Clopper-Pearson) two-sided ``1 − alpha`` confidence interval of a binomial ``p``.

    Examples
    --------
    >>> lo, hi = clopper_pearson(50, 100, 0.05)
    >>> round(lo, 4), round(hi, 4)
    (0.3983, 0.6017)
    >>> clopper_pearson(0, 10, 0.05)[0], clopper_pearson(10, 10, 0.05)[1]
    (0.0, 1.0)
    """
    from scipy.stats import beta

    if not (0 <= k <= n and n > 0):
        raise ValueError(f"need 0 <= k <= n and n > 0; got k={k}, n={n}")
    if not 0 < alpha < 1:
        raise ValueError(f"alpha must be in (0, 1); got {alpha}")
    lo = 0.0 if k == 0 else float(beta.ppf(alpha / 2, k, n - k + 1))
    hi = 1.0 if k == n else float(beta.ppf(1 - alpha / 2, k + 1, n - k))
    return lo, hi


def epsilon_lower_bound(k0: int, n0: int, k1: int, n1: int, *, confidence: float = 0.95,
                        delta: float = 0.0) -> float:
    """``ln((p̲0 − δ) / p̄1)`` from ``k0`` of ``n0`` and ``k1`` of ``n1`` runs in the event.

    Each proportion gets a Clopper-Pearson bound at ``1 − α/2`` (``α = 1 − confidence``), so the
    returned bound holds with probability at least ``confidence``.  ``0`` when nothing is proven.

    Examples
    --------
    >>> round(epsilon_lower_bound(9000, 10000, 1000, 10000), 3)
    2.132
    >>> epsilon_lower_bound(5000, 10000, 5000, 10000)
    0.0
    """
    if not 0 < confidence < 1:
        raise ValueError(f"confidence must be in (0, 1); got {confidence}")
    if not 0 <= delta < 1:
        raise ValueError(f"delta must be in [0, 1); got {delta}")
    alpha = 1.0 - confidence
    lo0 = clopper_pearson(k0, n0, alpha)[0] - delta
    hi1 = clopper_pearson(k1, n1, alpha)[1]
    if lo0 <= 0 or hi1 <= 0:
        return 0.0 if lo0 <= 0 else math.inf
    return max(0.0, math.log(lo0 / hi1))


@dataclass(frozen=True)
class AuditResult:
    """What an audit measured (all figures from the evaluation runs, not the selection runs)."""

    epsilon_lower_bound: float      # holds with probability >= confidence
    epsilon_estimate: float         # ln(p0 / p1), the point estimate for the chosen event
    event: str                      # the chosen event, e.g. "s >= 0.05 (d0 over d1)"
    p0: float                       # frequency of the event on the first input of the pair
    p1: float                       # ... on the second
    trials: int                     # evaluation runs per input
    confidence: float
    delta: float
    claimed_epsilon: float | None = None

    @property
    def refutes_claim(self) -> bool:
        """Whether the lower bound exceeds ``claimed_epsilon`` (the claim is then false)."""
        return self.claimed_epsilon is not None and \
            self.epsilon_lower_bound > self.claimed_epsilon

    def as_dict(self) -> dict:
        return {"epsilon_lower_bound": self.epsilon_lower_bound,
                "epsilon_estimate": self.epsilon_estimate, "event": self.event,
                "p0": self.p0, "p1": self.p1, "trials": self.trials,
                "confidence": self.confidence, "delta": self.delta,
                "claimed_epsilon": self.claimed_epsilon, "refutes_claim": self.refutes_claim}


def _statistics(mechanism, data, trials: int, rng, statistic, vectorized: bool) -> np.ndarray:
    if vectorized:
        out = np.asarray(mechanism(data, rng, trials), np.float64).reshape(-1)
        if out.size != trials:
            raise ValueError(f"a vectorized mechanism must return {trials} statistics; got "
                             f"{out.size}")
        return out
    stat = statistic if statistic is not None else float
    return np.array([stat(mechanism(data, rng)) for _ in range(trials)], np.float64)


def _counts(sorted_s: np.ndarray, thresholds: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``#{s >= t}`` and ``#{s <= t}`` for every threshold (``sorted_s`` ascending)."""
    ge = sorted_s.size - np.searchsorted(sorted_s, thresholds, side="left")
    le = np.searchsorted(sorted_s, thresholds, side="right")
    return ge, le


def _candidates(s0: np.ndarray, s1: np.ndarray, most: int = 400) -> np.ndarray:
    pooled = np.concatenate([s0, s1])
    pooled = pooled[~np.isnan(pooled)]
    uniq = np.unique(pooled)
    if uniq.size <= most:
        return uniq
    finite = pooled[np.isfinite(pooled)]
    qs = np.quantile(finite, np.linspace(0.0, 1.0, most)) if finite.size else np.zeros(0)
    # keep atoms (e.g. values clipped to a bound) as exact candidates too
    vals, cnt = np.unique(pooled, return_counts=True)
    return np.unique(np.concatenate([qs, vals[cnt >= max(2, pooled.size // most)]]))


def _best_event(s0: np.ndarray, s1: np.ndarray, confidence: float, delta: float):
    """The threshold event and order with the largest lower bound on the selection runs."""
    t = _candidates(s0, s1)
    a0, a1 = np.sort(s0), np.sort(s1)
    ge0, le0 = _counts(a0, t)
    ge1, le1 = _counts(a1, t)
    n0, n1 = s0.size, s1.size
    best = (-1.0, None)
    # the point estimate ranks the candidates cheaply; the bound decides among the top few
    for side, c0, c1 in ((">=", ge0, ge1), ("<=", le0, le1)):
        for order, k_a, n_a, k_b, n_b in (("d0 over d1", c0, n0, c1, n1),
                                          ("d1 over d0", c1, n1, c0, n0)):
            score = np.log((k_a + 1) / (n_a + 2)) - np.log((k_b + 1) / (n_b + 2))
            for i in np.argsort(score)[-5:]:
                lb = epsilon_lower_bound(int(k_a[i]), n_a, int(k_b[i]), n_b,
                                         confidence=confidence, delta=delta)
                if lb > best[0]:
                    best = (lb, (side, float(t[i]), order))
    return best[1]


def audit(mechanism: Callable[..., Any], d0: Any, d1: Any, *, rng: np.random.Generator,
          trials: int = 20_000, statistic: Callable[[Any], float] | None = None,
          event: Callable[[Any], bool] | None = None, confidence: float = 0.95,
          delta: float = 0.0, selection_fraction: float = 0.25, vectorized: bool = False,
          claimed_epsilon: float | None = None) -> AuditResult:
    """Measure a Clopper-Pearson lower bound on the ε of ``mechanism`` on neighbours ``d0``, ``d1``.

    Parameters
    ----------
    mechanism : callable
        ``mechanism(data, rng) -> output``; with ``vectorized=True``
        ``mechanism(data, rng, trials) -> array`` of ``trials`` statistics.
    d0, d1
        A pair of neighbouring inputs (chosen to be as distinguishable as the definition of
        neighbouring allows: the bound is only as strong as this choice).
    rng : numpy.random.Generator
        Passed to every run of the mechanism.
    trials : int
        Runs on each input (the event search uses ``selection_fraction`` of them).
    statistic : callable, optional
        A number per output (default: ``float(output)``); the event is then a threshold on it,
        searched on the selection runs.  Ignored when ``event`` is given.
    event : callable, optional
        A fixed distinguishing event (a predicate on the output): every run is then used for the
        bound, in the order ``d0`` over ``d1`` and its reverse, whichever is larger (each at
        ``confidence`` with a Bonferroni split).
    confidence : float
        Probability with which the bound holds.
    delta : float
        The δ of the claim being audited.
    claimed_epsilon : float, optional
        Recorded in the result, whose ``refutes_claim`` then says whether the bound exceeds it.

    Returns
    -------
    AuditResult
    """
    if trials < 10:
        raise ValueError(f"trials must be >= 10; got {trials}")
    if not 0 < selection_fraction < 1:
        raise ValueError(f"selection_fraction must be in (0, 1); got {selection_fraction}")
    if event is not None:
        if vectorized:
            raise ValueError("event= needs per-run outputs: pass vectorized=False")
        k0 = sum(bool(event(mechanism(d0, rng))) for _ in range(trials))
        k1 = sum(bool(event(mechanism(d1, rng))) for _ in range(trials))
        conf = 1 - (1 - confidence) / 2          # two orders tested: Bonferroni
        fwd = epsilon_lower_bound(k0, trials, k1, trials, confidence=conf, delta=delta)
        rev = epsilon_lower_bound(k1, trials, k0, trials, confidence=conf, delta=delta)
        p0, p1 = k0 / trials, k1 / trials
        name, lb, (pa, pb) = ("event (d0 over d1)", fwd, (p0, p1)) if fwd >= rev else \
            ("event (d1 over d0)", rev, (p1, p0))
        return AuditResult(lb, _log_ratio(pa, pb), name, p0, p1, trials, confidence, delta,
                           claimed_epsilon)
    s0 = _statistics(mechanism, d0, trials, rng, statistic, vectorized)
    s1 = _statistics(mechanism, d1, trials, rng, statistic, vectorized)
    m = max(1, min(trials - 1, int(round(selection_fraction * trials))))
    chosen = _best_event(s0[:m], s1[:m], confidence, delta)
    e0, e1 = s0[m:], s1[m:]
    n = e0.size
    if chosen is None:
        return AuditResult(0.0, 0.0, "none", math.nan, math.nan, n, confidence, delta,
                           claimed_epsilon)
    side, t, order = chosen
    k0 = int(np.count_nonzero(e0 >= t if side == ">=" else e0 <= t))
    k1 = int(np.count_nonzero(e1 >= t if side == ">=" else e1 <= t))
    ka, kb = (k0, k1) if order == "d0 over d1" else (k1, k0)
    lb = epsilon_lower_bound(ka, n, kb, n, confidence=confidence, delta=delta)
    return AuditResult(lb, _log_ratio(ka / n, kb / n), f"s {side} {t:.6g} ({order})", k0 / n,
                       k1 / n, n, confidence, delta, claimed_epsilon)


def _log_ratio(a: float, b: float) -> float:
    if a <= 0:
        return 0.0 if b <= 0 else -math.inf
    return math.inf if b <= 0 else math.log(a / b)
