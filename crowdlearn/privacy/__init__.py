"""Privacy mechanisms and accounting (ring 0: numpy only; ``dp-accounting`` is imported lazily).

* :mod:`crowdlearn.privacy.mechanisms`: Laplace noise, clipping, the sparse vector technique of
  DSSGD (:func:`svt_select`, vectorised, with its literal reference walk);
* :mod:`crowdlearn.privacy.accountant`: the per-participant ε ledger (the paper's per-parameter
  figure, basic composition, and a composed (ε, δ) from the ``dp-accounting`` PLD accountant);
* :mod:`crowdlearn.privacy.audit`: an empirical auditor (a Clopper-Pearson lower bound on the ε a
  mechanism spends, measured on neighbouring inputs), for these mechanisms and any other.
* :mod:`crowdlearn.privacy.dp_fedavg`: client-level DP for FedAvg (clipping, adaptive clipping,
  central or distributed Gaussian noise) and its ε from ``dp-accounting`` (RDP or PLD).

References: R. Shokri, V. Shmatikov, "Privacy-Preserving Deep Learning", ACM CCS 2015.
"""

from crowdlearn.privacy.accountant import (
    PrivacyLedger,
    composed_epsilon,
    composition,
    turn_event,
    turns_event,
)
from crowdlearn.privacy.dp_fedavg import DPFedAvg, FedAvgAccountant
from crowdlearn.privacy.mechanisms import (
    RELEASES,
    SVTDraws,
    clip,
    laplace,
    svt_draws,
    svt_scales,
    svt_select,
    svt_select_reference,
)

__all__ = ["DPFedAvg", "FedAvgAccountant", "RELEASES", "PrivacyLedger", "SVTDraws", "clip",
           "composed_epsilon", "composition", "laplace", "svt_draws",
           "svt_scales", "svt_select", "svt_select_reference", "turn_event", "turns_event"]
