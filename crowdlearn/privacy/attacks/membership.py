"""Loss-threshold membership inference (Yeom et al. 2018).

A model tends to have lower loss on the samples it was trained on.  The attack scores every
candidate sample by ``−loss`` under the model; its quality over members (a device's training
indices) and non-members (held-out test samples) is

* ``auc``: the ROC AUC of the score (0.5 = chance, 1 = perfect separation), computed from rank
  statistics (the Mann-Whitney U, ties counted one half) so it needs no threshold;
* ``advantage``: Yeom et al.'s membership advantage ``TPR − FPR`` of the threshold attack that
  calls a sample a member when its loss is below the model's mean training loss (the threshold
  their attack uses), and ``max_advantage``, the best ``TPR − FPR`` over all thresholds (an
  upper bound for any threshold the attacker could pick).

Which model, which members:

* FedAvg and DSSGD: the final **global model** (what every participant and the server end with);
  members = the union of the devices' samples, or one device's samples (``device=k``);
* standalone, and DSSGD participants' own copies (:func:`local_models` reads them from the
  machines after a run): each device's **local model** against its own samples, averaged over
  devices;
* crowdlearning / S-SGD: each group's model against its members' samples, averaged over groups.

The final models come from a :class:`crowdlearn.privacy.attacks.views.ModelTap` attached to the
:class:`crowdlearn.experiment.Simulation` before it runs (the monitor does not keep weights).

References
----------
S. Yeom, I. Giacomelli, M. Fredrikson, S. Jha, "Privacy Risk in Machine Learning: Analyzing the
Connection to Overfitting", IEEE CSF 2018.

Examples
--------
>>> auc(np.array([0.1, 0.2]), np.array([0.9, 1.0]))        # members have lower loss
1.0
>>> auc(np.array([1.0, 2.0]), np.array([1.0, 2.0]))
0.5
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
from scipy.stats import rankdata

__all__ = [
    "advantage",
    "auc",
    "loss_threshold_attack",
    "membership_global_model",
    "membership_group_models",
    "membership_local_models",
    "local_models",
]


def auc(member_losses, nonmember_losses) -> float:
    """ROC AUC of ``−loss`` as a membership score (Mann-Whitney U with average ranks for ties).

    ``P(score(member) > score(non-member)) + ½·P(tie)``; ``nan`` if either set is empty.
    """
    m = np.asarray(member_losses, np.float64).reshape(-1)
    n = np.asarray(nonmember_losses, np.float64).reshape(-1)
    if not m.size or not n.size:
        return math.nan
    ranks = rankdata(np.concatenate([-m, -n]))          # higher score = more likely a member
    u = ranks[:m.size].sum() - m.size * (m.size + 1) / 2
    return float(u / (m.size * n.size))


def advantage(member_losses, nonmember_losses, threshold: float) -> float:
    """``TPR − FPR`` of "member iff loss ≤ threshold"."""
    m = np.asarray(member_losses, np.float64)
    n = np.asarray(nonmember_losses, np.float64)
    return float(np.mean(m <= threshold) - np.mean(n <= threshold))


def _max_advantage(m: np.ndarray, n: np.ndarray) -> float:
    thr = np.unique(np.concatenate([m, n]))
    tpr = np.searchsorted(np.sort(m), thr, side="right") / m.size
    fpr = np.searchsorted(np.sort(n), thr, side="right") / n.size
    return float(np.max(np.concatenate([[0.0], tpr - fpr])))


def loss_threshold_attack(spec, weights: Sequence, x_members, y_members, x_nonmembers,
                          y_nonmembers, *, threshold: float | None = None,
                          max_samples: int | None = None, seed: int = 0) -> dict:
    """Run the loss-threshold attack on one model.

    Parameters
    ----------
    spec : ModelSpec
    weights : sequence of array
        The attacked model's parameters.
    x_members, y_members : array_like
        Samples the model was trained on.
    x_nonmembers, y_nonmembers : array_like
        Samples it never saw (the test set).
    threshold : float, optional
        Loss threshold of the advantage; default the mean member loss (Yeom et al.'s attacker
        knows the expected training loss).
    max_samples : int, optional
        Use at most this many of each set (seeded random subset) to bound the cost.
    seed : int

    Returns
    -------
    dict
        ``auc``, ``advantage``, ``max_advantage``, ``member_loss``, ``nonmember_loss`` (means),
        ``member_accuracy``, ``nonmember_accuracy`` (classification) and the set sizes.

    References
    ----------
    Yeom et al., IEEE CSF 2018, section 3 (the threshold attack and the membership advantage).
    """
    from crowdlearn.privacy.attacks.inversion import forward_logits, per_sample_losses

    rng = np.random.default_rng(seed)

    def pick(x, y):
        x = np.asarray(x, np.float32).reshape(len(x), -1)
        y = np.asarray(y).reshape(-1)
        if max_samples is not None and len(x) > max_samples:
            i = np.sort(rng.choice(len(x), size=max_samples, replace=False))
            x, y = x[i], y[i]
        return x, y

    xm, ym = pick(x_members, y_members)
    xn, yn = pick(x_nonmembers, y_nonmembers)
    lm = per_sample_losses(spec, weights, xm, ym)
    ln = per_sample_losses(spec, weights, xn, yn)
    thr = float(np.mean(lm)) if threshold is None else float(threshold)
    out = {"auc": auc(lm, ln), "advantage": advantage(lm, ln, thr),
           "max_advantage": _max_advantage(lm, ln) if lm.size and ln.size else math.nan,
           "member_loss": float(np.mean(lm)) if lm.size else math.nan,
           "nonmember_loss": float(np.mean(ln)) if ln.size else math.nan,
           "members": int(lm.size), "nonmembers": int(ln.size)}
    if spec.loss == "sparse_ce":
        import tensorflow as tf
        ps = [tf.constant(np.asarray(w, np.float32)) for w in weights]
        for name, x, y in (("member_accuracy", xm, ym), ("nonmember_accuracy", xn, yn)):
            pred = np.argmax(forward_logits(spec, ps, x).numpy(), axis=1) if len(x) else []
            out[name] = float(np.mean(pred == y)) if len(x) else math.nan
    return out


def _mean_rows(rows: list[dict]) -> dict:
    if not rows:
        return {}
    out = {k: float(np.nanmean([r[k] for r in rows])) for k in rows[0]
           if isinstance(rows[0][k], (int, float))}
    out["models"] = len(rows)
    return out


def membership_global_model(spec, weights, dataset, parts, *, device: int | None = None,
                            max_samples: int | None = 2000, seed: int = 0) -> dict:
    """Attack a global model (FedAvg's or DSSGD's final one) with the devices' data as members.

    Parameters
    ----------
    spec, weights
        The model and its final weights.
    dataset : crowdlearn.data.Dataset
        Members are drawn from ``x_train``, non-members from ``x_test``.
    parts : list of array of int
        Every device's training indices (``Simulation.parts``).
    device : int, optional
        Members are this device's samples only (what an adversary targeting one participant
        tests); default the union of all devices' samples.
    max_samples, seed
        See :func:`loss_threshold_attack`.
    """
    idx = np.asarray(parts[device]) if device is not None else np.unique(np.concatenate(parts))
    return loss_threshold_attack(spec, weights, dataset.x_train[idx], dataset.y_train[idx],
                                 dataset.x_test, dataset.y_test, max_samples=max_samples,
                                 seed=seed)


def membership_local_models(spec, local_weights: dict, dataset, parts, *,
                            max_samples: int | None = 2000, seed: int = 0) -> dict:
    """Attack each device's own model (standalone training, or a DSSGD participant's local
    copy) with its own samples as members; returns the mean over devices plus ``per_device``.

    ``local_weights`` maps a device to its weights.
    """
    rows = {}
    for dev, w in sorted(local_weights.items(), key=lambda kv: str(kv[0])):
        idx = np.asarray(parts[dev])
        rows[dev] = loss_threshold_attack(spec, w, dataset.x_train[idx], dataset.y_train[idx],
                                          dataset.x_test, dataset.y_test,
                                          max_samples=max_samples, seed=seed)
    out = _mean_rows(list(rows.values()))
    out["per_device"] = {str(k): v["auc"] for k, v in rows.items()}
    return out


def local_models(sim) -> dict:
    """Every device's own model at the end of a run, read from its machine.

    DSSGD participants keep a local copy that is never reported (they share a top-θu fraction
    of its changes); standalone clients keep theirs too.  Returns ``{device: weights}`` for the
    machines that hold one (``DSSGDParticipant.local``, ``StandaloneClient.weights``).
    """
    import crowdlearn.config  # noqa: F401  (before crowdlearn.protocols.dssgd: import order)
    from crowdlearn.protocols.dssgd import unflatten

    out = {}
    shapes = [tuple(s) for s in sim.spec.param_shapes()]
    for node, m in sim.driver.machines.items():
        if node == "server":
            continue
        local = getattr(m, "local", None)
        if isinstance(local, np.ndarray) and local.ndim == 1:
            out[node] = unflatten(local, shapes)
        elif getattr(m, "weights", None) is not None and type(m).__name__ == "StandaloneClient":
            out[node] = tuple(np.asarray(w, np.float32) for w in m.weights)
    return out


def membership_group_models(spec, group_weights: dict, groups: Sequence, dataset, parts, *,
                            max_samples: int | None = 2000, seed: int = 0) -> dict:
    """Attack each crowdlearning group's model with its members' samples; mean over groups."""
    rows = []
    for gid, w in sorted(group_weights.items()):
        idx = np.unique(np.concatenate([np.asarray(parts[d]) for d in groups[gid]]))
        rows.append(loss_threshold_attack(spec, w, dataset.x_train[idx], dataset.y_train[idx],
                                          dataset.x_test, dataset.y_test,
                                          max_samples=max_samples, seed=seed))
    return _mean_rows(rows)
