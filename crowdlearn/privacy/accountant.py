"""The ε ledger of DSSGD participants: the paper's figures and a composed (ε, δ).

Every upload a participant makes under the sparse vector technique (SVT) is one *turn* with
budget ``ε_turn = ε1 + ε2 = ε_p · c``, where ``ε_p`` is the paper's "privacy budget per
parameter" and ``c = θu·|w|`` the number of releases.  The ledger records the turns of every
participant and reports

* ``per_parameter``: ``ε_turn / c``, the figure the paper plots accuracy against;
* ``basic``: ``Σ ε_turn``, basic composition over the participant's turns (δ = 0);
* ``composed``: ε at the ledger's δ from the ``dp-accounting`` PLD accountant.

What we compose, precisely
--------------------------
Each turn is modelled as a *pure* ``ε_turn``-DP mechanism with ``ε_turn = ε1 + ε2``, the budget
the paper's analysis assigns to a turn.  We do not model it as a Laplace mechanism: a turn is not
one, and the PLD of a Laplace mechanism is milder than that of a general ε-DP mechanism, so
composing ``LaplaceDpEvent(1/ε_turn)`` would under-state the total (e.g. 100 turns of ε = 0.5
give ε ≈ 28.5 at δ = 1e-5 as Laplace, ≈ 31.2 as a general ε-DP mechanism).  The tight dominating
pair of *every* ε-DP mechanism under the replace-one relation is binary randomized response
(Kairouz, Oh & Viswanath 2015), so each turn is the event

    ``RandomizedResponseDpEvent(noise_parameter = 2 / (1 + e^ε_turn), num_buckets = 2)``

(output the true bit with probability ``e^ε/(1+e^ε)``), a participant's run is
``ComposedDpEvent([turn events])``, and its ε is ``PLDAccountant(REPLACE_ONE)`` at ``δ``.
The replace-one relation matches ``Δf = 2γ``, the range of a clipped value.  The events are
listed one by one in a ``ComposedDpEvent`` because ``dp-accounting`` 0.6's PLD accountant
ignores the count of a ``SelfComposedDpEvent`` wrapping a ``RandomizedResponseDpEvent`` (it
composes the event once).  When ``ε_turn`` is too large for the PLD to represent (the noise
parameter underflows, ε_turn ≳ 700) the composed figure falls back to the nominal sum, which is
always a valid bound.

How conservative the figures are
--------------------------------
With the default clipped release (:func:`crowdlearn.privacy.mechanisms.svt_select`,
``release="clipped"``) the queries lie in ``[0, γ]`` and a released value moves by at most
``2γ``, while the noise is calibrated to ``Δf = 2γ`` and a factor 2 of Dwork and Roth's *Sparse*
algorithm: a turn is ``(ε_turn / 2)``-DP, so the ledger is a 2× **conservative** bound.  The
indices of the uploaded parameters are the SVT's output and are covered by ``ε1``.  With the
paper's as-published release (``release="paper"``: noise on the *unclipped* value, clipped
afterwards) ``Δf`` bounds nothing and the ledger's figure is only **nominal**; the auditor
(:mod:`crowdlearn.privacy.audit`) measures how far it is exceeded.  Published analyses of SVT
variants (Lyu, Su & Li 2017) concern variants that differ from the Sparse algorithm; the gradient
leak of Phong et al. 2018 is a separate, non-DP attack.

Which accountant
----------------
``dp-accounting``'s RDP accountant accepts Laplace events too, but the PLD accountant gives the
tighter figure for pure-DP turns.  A turn with ``ε_turn`` above ``_MAX_PLD_EPSILON`` (700) cannot
be represented by the PLD, and then the participant's figure is basic composition: each row
of :meth:`PrivacyLedger.rows` says which (``accountant`` = ``"pld"`` or ``"basic"``).

References
----------
R. Shokri, V. Shmatikov, "Privacy-Preserving Deep Learning", ACM CCS 2015.
M. Lyu, D. Su, N. Li, "Understanding the Sparse Vector Technique for Differential Privacy",
PVLDB 10(6), 2017.
P. Kairouz, S. Oh, P. Viswanath, "The Composition Theorem for Differential Privacy", ICML 2015.
L. T. Phong, Y. Aono, T. Hayashi, L. Wang, S. Moriai, "Privacy-Preserving Deep Learning via
Additively Homomorphic Encryption", IEEE TIFS 13(5), 2018.

Examples
--------
>>> ledger = PrivacyLedger(delta=1e-5)
>>> for _ in range(3):
...     ledger.record("alice", epsilon_turn=0.5, c=50)
>>> ledger.turns("alice"), ledger.basic_epsilon("alice"), ledger.per_parameter_epsilon("alice")
(3, 1.5, 0.01)
>>> 1.4 < ledger.composed_epsilon("alice") <= 1.5 + 1e-3
True
"""

from __future__ import annotations

import math
from collections.abc import Hashable, Sequence

__all__ = ["PrivacyLedger", "composed_epsilon", "composition", "turn_event", "turns_event"]

#: Above this per-turn ε the randomized-response noise parameter underflows.
_MAX_PLD_EPSILON = 700.0


def _rr_noise_parameter(epsilon: float) -> float:
    """``p`` with ``(1 - p/2) / (p/2) = e^ε``: ``2 / (1 + e^ε)``, computed without overflow."""
    return 2.0 * math.exp(-epsilon) / (1.0 + math.exp(-epsilon))


def turn_event(epsilon_turn: float):
    """The ``dp_accounting`` event of one pure ``ε_turn``-DP turn (binary randomized response)."""
    import dp_accounting

    if not epsilon_turn > 0:
        raise ValueError(f"epsilon_turn must be > 0; got {epsilon_turn}")
    return dp_accounting.RandomizedResponseDpEvent(
        noise_parameter=_rr_noise_parameter(epsilon_turn), num_buckets=2)


def turns_event(epsilons: Sequence[float]):
    """``ComposedDpEvent`` of one :func:`turn_event` per entry (``NoOpDpEvent`` when empty)."""
    import dp_accounting

    if not epsilons:
        return dp_accounting.NoOpDpEvent()
    return dp_accounting.ComposedDpEvent([turn_event(e) for e in epsilons])


def composition(epsilons: Sequence[float], delta: float) -> tuple[float, str]:
    """``(ε, accountant)``: ε at ``delta`` of the composition of pure ``epsilons[i]``-DP turns.

    ``accountant`` is ``"pld"`` (the PLD accountant's figure, capped at ``sum(epsilons)``, which
    is also a valid bound and wins by a hair when the PLD's pessimistic discretisation lands
    above it) or ``"basic"`` (the fallback: a turn's ε is beyond what the PLD can represent, and
    the figure is basic composition ``sum(epsilons)``).
    """
    if not 0 < delta < 1:
        raise ValueError(f"delta must be in (0, 1); got {delta}")
    if not epsilons:
        return 0.0, "pld"
    basic = float(sum(epsilons))
    if max(epsilons) > _MAX_PLD_EPSILON:
        return basic, "basic"
    from dp_accounting.pld import PLDAccountant
    from dp_accounting.privacy_accountant import NeighboringRelation

    acc = PLDAccountant(NeighboringRelation.REPLACE_ONE)
    acc.compose(turns_event(epsilons))
    return min(float(acc.get_epsilon(delta)), basic), "pld"


def composed_epsilon(epsilons: Sequence[float], delta: float) -> float:
    """ε at ``delta`` of the composition of pure ``epsilons[i]``-DP turns (PLD accountant).

    Falls back to ``sum(epsilons)`` (basic composition) when a turn's ε is beyond what the PLD
    can represent, and never reports more than that sum (:func:`composition` says which).
    """
    return composition(epsilons, delta)[0]


class PrivacyLedger:
    """ε spent per participant (see the module notes for what is composed and how).

    Parameters
    ----------
    delta : float
        δ at which :meth:`composed_epsilon` reports ε.
    """

    def __init__(self, *, delta: float = 1e-5):
        if not 0 < delta < 1:
            raise ValueError(f"delta must be in (0, 1); got {delta}")
        self.delta = float(delta)
        self._turns: dict[Hashable, list[tuple]] = {}
        self._cache: dict[tuple, float] = {}

    def record(self, participant: Hashable, *, epsilon_turn: float, c: int | None = None,
               mechanism: str = "svt", guarantee: bool = True) -> None:
        """One release by ``participant`` with budget ``epsilon_turn``.

        ``c``: the number of values released (the SVT's releases; ``None`` when the paper's
        per-parameter figure has no meaning, e.g. the functional mechanism).  ``guarantee=False``
        marks the release's ε as nominal (e.g. the SVT's as-published release).
        """
        if not epsilon_turn > 0:
            raise ValueError(f"epsilon_turn must be > 0; got {epsilon_turn}")
        if c is not None and c < 1:
            raise ValueError(f"c must be >= 1; got {c}")
        self._turns.setdefault(participant, []).append(
            (float(epsilon_turn), None if c is None else int(c), str(mechanism), bool(guarantee)))

    @property
    def participants(self) -> list:
        return list(self._turns)

    def turns(self, participant: Hashable) -> int:
        return len(self._turns.get(participant, ()))

    def epsilons(self, participant: Hashable) -> list[float]:
        """The per-turn budgets of ``participant``, in order."""
        return [t[0] for t in self._turns.get(participant, ())]

    def per_parameter_epsilon(self, participant: Hashable) -> float | None:
        """The paper's "privacy budget per parameter": ``ε_turn / c`` (the largest over turns);
        ``None`` when no turn released a count of values."""
        vals = [e / c for e, c, _, _ in self._turns.get(participant, ()) if c]
        return max(vals) if vals else None

    def basic_epsilon(self, participant: Hashable) -> float:
        """Basic composition ``Σ ε_turn`` (pure DP, δ = 0)."""
        return float(sum(self.epsilons(participant)))

    def guaranteed(self, participant: Hashable) -> bool:
        """False when any of the participant's releases carries only a nominal ε."""
        return all(t[3] for t in self._turns.get(participant, ()))

    def dp_event(self, participant: Hashable):
        """The ``dp_accounting`` event this ledger composes for ``participant``."""
        return turns_event(self.epsilons(participant))

    def _composition(self, participant: Hashable, delta: float) -> tuple[float, str]:
        key = (tuple(self.epsilons(participant)), delta)
        if key not in self._cache:
            self._cache[key] = composition(list(key[0]), delta)
        return self._cache[key]

    def composed_epsilon(self, participant: Hashable, delta: float | None = None) -> float:
        """ε at ``delta`` (default: the ledger's) from the PLD accountant."""
        return self._composition(participant, self.delta if delta is None else float(delta))[0]

    def accountant(self, participant: Hashable, delta: float | None = None) -> str:
        """``"pld"`` or ``"basic"``: how the participant's composed ε was obtained."""
        return self._composition(participant, self.delta if delta is None else float(delta))[1]

    def rows(self, delta: float | None = None) -> list[dict]:
        """One dict per participant: its mechanism, releases, composed ε and how it was obtained.

        Keys: ``participant``, ``mechanism``, ``releases``, ``epsilon`` (composed at ``delta``),
        ``delta``, ``accountant`` (``"pld"`` or ``"basic"``), ``epsilon_basic`` (``Σ ε_turn``),
        ``epsilon_per_parameter`` (SVT only, else ``None``) and ``guarantee`` (``"dp"``, or
        ``"nominal"`` when a release's ε is not a guarantee).
        """
        d = self.delta if delta is None else float(delta)
        out = []
        for p, turns in self._turns.items():
            eps, how = self._composition(p, d)
            out.append({"participant": p,
                        "mechanism": "+".join(dict.fromkeys(t[2] for t in turns)),
                        "releases": len(turns), "epsilon": eps, "delta": d, "accountant": how,
                        "epsilon_basic": self.basic_epsilon(p),
                        "epsilon_per_parameter": self.per_parameter_epsilon(p),
                        "guarantee": "dp" if self.guaranteed(p) else "nominal"})
        return out
