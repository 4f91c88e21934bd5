"""Collaborative learning with the functional mechanism and unreliable participants (machines).

References: L. Zhao, Q. Wang, Q. Zou, Y. Zhang, Y. Chen, "Privacy-Preserving Collaborative Deep
Learning with Unreliable Participants", IEEE TIFS 15 (2019) — **only the abstract was available**;
J. Zhang et al., "Functional Mechanism", PVLDB 5(11), 2012; N. Phan et al., AAAI 2016.
Spec: ``spec/zhao-fm.md``.  Everything marked **[ours]** is our design, not the paper's.

What a participant does
-----------------------
Each participant holds its rows and never sends them.  Once, on its first round, it writes the
loss over its rows as a polynomial in the model parameters, adds ``Lap(Δ/ε)`` to every
coefficient (:mod:`crowdlearn.privacy.functional`) and spectrally trims it: that noisy objective
``f̄_i`` is ε-DP and is kept for the whole run.  Every later computation it does is
post-processing of ``f̄_i`` and of what the server broadcasts, so its ε **does not grow with the
rounds**.  Only parameters travel.

Rounds: consensus ADMM on the noisy objectives **[ours]**
-----------------------------------------------------------
Averaging the minimisers of many tiny noisy objectives is much worse than minimising their sum
(the noise of the sum grows like ``√K``, its signal like ``K``; see
``docs/experiments/functional_mechanism.md``).  Sharing only parameters, the fleet reaches the
minimiser of ``Σ_i a_i f̄_i`` by scaled consensus ADMM (Boyd et al. 2011, §7.1):

* round 0: participant ``i`` uploads ``w_i = argmin f̄_i`` (its plain one-shot FM model);
* the server broadcasts ``z = Σ a_i v_i / Σ a_i`` over the uploads ``v_i`` of the round;
* round ``r ≥ 1``: ``u_i ← u_i + w_i − z``; ``w_i ← argmin f̄_i(w) + (μ/2)‖w − z + u_i‖²``
  (closed form in the eigenbasis kept by the trimming); upload ``v_i = w_i + u_i``.

With per-constraint penalties ``μ·a_i`` this is exactly ADMM for ``min Σ a_i f̄_i`` (the
participant's step does not depend on ``a_i``; the server's weighted average does), so plain
averaging (``a_i = 1``) converges to the minimiser of the sum of the noisy objectives and the
quality weights (below) to that of the weighted sum.  ``μ = rho·(n̄·c/r + ridge·Δ/ε)`` (``n̄`` mean
rows per participant, ``r`` the row length, ``c`` the curvature per row: 1 linear, ⅛ logistic,
1/2K softmax; all public), computed by :func:`build`.

Unreliable participants: quality-weighted aggregation **[ours]**
------------------------------------------------------------------
The server holds a small validation split (``public_size`` training rows removed from the
devices' data, a seeded random sample).  The first time a participant uploads, the server scores
its parameters there: classification error, or squared error in ``[−1, 1]`` target units clipped
at ``score_clip`` (regression).  It adds Laplace noise to the score vector and turns the noisy
scores into weights (``weighting``):

``median``   ``a_i = 1`` if ``s̃_i ≤ median(s̃) + margin·C``, else 0 (the default);
``softmax``  ``a_i = exp(−(s̃_i − min s̃)/(margin·C))``;
``trim``     drop the ``trim_fraction`` worst, keep the rest with weight 1.

*What the score noise protects.*  Towards the participants the scores are post-processing of
their ε-DP uploads and cost them nothing.  The noise makes the weights ``score_epsilon``-DP with
respect to one **validation row** (replace-one; ``C`` = 1 for errors, ``score_clip`` for
squared errors, so one row moves one score by ``C/m`` and the vector of ``k`` scores by
``k·C/m`` in L1: ``Lap(k·C/(m·ε_s))``).  The server charges it to its ledger under the key
``"validation"`` (``privacy_charge`` with ``subject = "validation"``), one entry per scoring
(re-scoring every round with ``rescore = true`` composes); the results carry it as
``epsilon_quality_scores`` and a ``validation`` row of ``privacy.csv``, apart from the
participants' ε.  If the validation split is public the charge is a conservative formality; in
deep mode the hidden layers are trained on the same rows without noise, i.e. they are public by
assumption there.

Models the standard evaluator understands
-----------------------------------------
``model.arch = "linear"``: regression → linear regression (one output, ``mse``); two classes →
logistic regression encoded as the logits ``[0, wᵀx + b]`` of the 2-output linear model;
more classes → the softmax Taylor surrogate on the raw features.  Rows are mapped to ``‖z‖₂ ≤ 1``
by public constants (:class:`~crowdlearn.privacy.functional.Scaling`, ``x_bound``, default
``√d``) and the solution mapped back, so the global model is a plain ``ModelSpec``.

``model.arch = "mlp"`` (**deep mode [ours]**): the server trains the whole network for
``pretrain_epochs`` on its public split, **without privacy** (no participant data involved), and
sends the hidden layers once.  They stay frozen; a participant maps its rows through them to the
features ``h`` of the last hidden layer, which must be ``tanh`` or ``sigmoid`` so that
``|h_j| ≤ 1`` and ``z = [h/√(2m), 1/√2]`` has ``‖z‖₂ ≤ 1`` with no data-dependent clipping (then the
output layer remains an exact dense layer).  FM perturbs the output layer's objective in ``h``.
Privacy scope: the released model is ε-DP with respect to each participant's rows; the hidden
layers carry no privacy guarantee for the public rows they were trained on.

Messages: ``FMRound`` (server → participant: round, global FM parameters or ``None`` in round 0,
hidden layers once), ``FMUpload`` (participant → server: ``v_i``, float32), ``FMDecline``.
Jobs: :class:`FMFitJob`, kind ``"fm_fit"`` (numpy), carrying the participant's row ids; the
executor's runner (:func:`runners`) resolves them in the training rows the simulation holds.
Reports per round: ``round`` (with the weights and noisy scores), ``global_model``.  Privacy:
a participant charges its release to its own ledger and reports ``privacy_charge`` when it sends
its first upload (the only release: later uploads are post-processing of it), whether or not the
server accepts it; the monitor composes these into the ε of ``metrics.csv`` and ``summary.json``.

What the guarantee covers (and what it does not)
--------------------------------------------------
Covered: the participants' rows, replace-one, given that every row is mapped to ``‖z‖₂ ≤ 1`` by
public constants only.  The datasets a DP run uses must therefore be scaled by public constants
too: Fashion-MNIST by 255, the scikit-learn tables (``breast_cancer``, ``diabetes``) by the mean
and standard deviation of the held-out *public* part of the split
(:func:`crowdlearn.data.load_dataset`, ``standardise = "public"``, the default), never by the
participants' rows.  Not covered: the server's public rows (deep mode trains on them without
noise), the choice of which devices take part, and anything outside the model parameters
(timing, message sizes).

References
----------
L. Zhao, Q. Wang, Q. Zou, Y. Zhang, Y. Chen, "Privacy-Preserving Collaborative Deep Learning with
Unreliable Participants", IEEE TIFS 15, 2019, 1486–1500 (abstract only).
J. Zhang, Z. Zhang, X. Xiao, Y. Yang, M. Winslett, "Functional Mechanism: Regression Analysis
under Differential Privacy", PVLDB 5(11), 2012.
N. Phan, Y. Wang, X. Wu, D. Dou, "Differential Privacy Preservation for Deep Auto-Encoders: an
Application of Human Behavior Prediction", AAAI 2016.
S. Boyd, N. Parikh, E. Chu, B. Peleato, J. Eckstein, "Distributed Optimization and Statistical
Learning via the Alternating Direction Method of Multipliers", Found. Trends Mach. Learn. 3(1),
2011, §7.1 (consensus).

Examples
--------
>>> from crowdlearn.privacy.functional import Scaling
>>> m = FMModel("logistic", Scaling(x_bound=2.0))
>>> [a.shape for a in m.to_weights(np.zeros(m.num_params))]
[(1, 2), (2,)]
"""

from __future__ import annotations

import math

import numpy as np

from crowdlearn.data import quality as _quality
from crowdlearn.privacy import functional as F
from crowdlearn.protocols.fm.config import (
    CONFIG_SECTION,
    cross_check,
    neighbours,
    params_from_config,
)
from crowdlearn.protocols.fm.evaluator import LinearEvaluator
from crowdlearn.protocols.fm.jobs import ROWS, FitResult, FMFitJob, run_jobs, runners
from crowdlearn.protocols.fm.machines import FMParticipant, FMServer
from crowdlearn.protocols.fm.messages import FMDecline, FMRound, FMUpload
from crowdlearn.protocols.fm.model import FMModel, model_for
from crowdlearn.protocols.fm.params import (
    AGGREGATIONS,
    BOUNDED,
    SERVER,
    STREAM_INDEX,
    WEIGHTINGS,
    FMParams,
)
from crowdlearn.protocols.fm.scoring import quality_weights, score_models
from crowdlearn.protocols.rounds import ReadTrainJob
from crowdlearn.registry import Protocol

# the protocol is split by concern: messages, params, model, jobs, scoring, machines, evaluator,
# config; this package declares it (:data:`PROTOCOLS`) and re-exports the public names
__all__ = [
    "AGGREGATIONS", "BOUNDED", "CONFIG_SECTION", "FMDecline", "FMFitJob", "FMModel", "FMParams",
    "FMParticipant", "FMRound",
    "FMServer", "FMUpload", "FitResult", "LinearEvaluator", "SERVER", "WEIGHTINGS", "build",
    "cross_check", "model_for", "params_from_config", "quality_weights", "run_jobs",
    "runners", "score_models",
]



def _stream(seed: int) -> np.random.Generator:
    return np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(STREAM_INDEX,)))


def build(ctx) -> dict:
    """Protocol builder (``crowdlearn.experiment.Context``): a server and one participant per device.

    The server's public rows are a seeded sample of ``public_size`` training rows taken out of
    the devices' index arrays; the ``[quality]`` section (if registered) then corrupts the
    unreliable devices' rows (:mod:`crowdlearn.data.quality`).  Records ``fm_rows`` (the rows the
    jobs read), ``public``, ``parts``, ``corrupted`` and ``model`` in ``ctx.extra``.
    """
    from crowdlearn.data import quality as q

    cfg, ds = ctx.config, ctx.dataset
    rng = _stream(cfg.seed)
    s = cfg.fm
    union = np.sort(np.concatenate([np.asarray(p, np.int64) for p in ctx.parts]))
    k = min(int(s.public_size), max(union.size - len(ctx.parts), 0))
    if k == 0 and (s.aggregation == "quality" or ctx.spec.layers[:-1]):
        raise ValueError("fm: no training rows left for the server's public split")
    public = np.sort(rng.choice(union, size=k, replace=False)) if k else np.zeros(0, np.int64)
    taken = np.zeros(ds.x_train.shape[0], bool)
    taken[public] = True
    parts = [np.asarray(p, np.int64)[~taken[np.asarray(p, np.int64)]] for p in ctx.parts]
    x, y = ds.x_train, ds.y_train
    corrupted = None
    qsec = getattr(cfg, "quality", None)
    if qsec is not None:
        corrupted = q.from_config(qsec, x, y, parts, num_classes=ds.num_classes, seed=cfg.seed)
        if corrupted.kinds:
            x, y, parts = corrupted.x, corrupted.y, corrupted.parts
    model = model_for(ctx.spec, task=ds.task, num_classes=ds.num_classes, x_bound=s.x_bound,
                      y_bound=s.y_bound)
    n_bar = float(np.mean([p.size for p in parts])) if parts else 1.0
    noise = 0.0 if math.isinf(s.epsilon) else F.sensitivity(
        model.kind, model.row_dim, num_classes=model.num_classes if model.kind == "softmax"
        else None, bound=s.bound) / s.epsilon
    mu = s.rho * (n_bar * model.curvature / model.row_dim + s.ridge * noise)
    params = params_from_config(cfg, mu=mu)
    pretrain = None
    if model.deep:
        if public.size == 0:
            raise ValueError("deep mode needs fm.public_size > 0 (the server pre-trains on them)")
        pretrain = ReadTrainJob.build(ctx.spec, ctx.init_weights, public,
                                      epochs=s.pretrain_epochs,
                                      batch_size=s.pretrain_batch_size, lr=s.pretrain_lr,
                                      rng=rng)
    ctx.extra.update(public=public, parts=parts, corrupted=corrupted, model=model)
    ctx.extra[ROWS] = (x, y)         # the rows the executor's fm_fit runner resolves jobs in
    if math.isfinite(s.epsilon):    # what the results say about ε (crowdlearn.experiment reads it)
        ctx.extra["privacy"] = {"mechanism": "functional_mechanism", "delta": s.delta,
                                "guarantee": "dp", "audit": None}
    machines: dict = {SERVER: FMServer(SERVER, model, ctx.devices, params,
                                       validation=(ds.x_train[public], ds.y_train[public]),
                                       rng=rng, pretrain=pretrain)}
    for d in ctx.devices:
        machines[d] = FMParticipant(d, model, parts[d], params, rng=ctx.device_rngs[d])
    return machines


def _check_sections(v: dict) -> list[str]:
    # the [fm] section's own rules are FMParams.relations, checked by the registry
    return neighbours(protocol=v["protocol"], model=v["model"], data=v["data"],
                      quality=v["quality"])


def _check(v: dict) -> list[str]:
    if v["training"]["executor"] == "ray":
        return ["training.executor: 'ray' splits train jobs; fm runs its own compute path in "
                "this process; remove training.executor = 'ray'"]
    return []


#: found by :mod:`crowdlearn.registry`
PROTOCOLS = (
    Protocol("fm", build, doc="Functional mechanism (Zhang et al. 2012) in a fleet, with "
             "quality-weighted aggregation.",
             params={"fm": FMParams}, sections={"quality": _quality.CONFIG_SECTION},
             check_sections=_check_sections, check=_check, runners=runners),
)

