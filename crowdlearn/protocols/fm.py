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
--------------------------------------------------------
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
---------------------------------------------------------------
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
Jobs: :class:`FMFitJob`, kind ``"fm_fit"`` (numpy; register :func:`runners` with the executor).
Reports per round: ``round`` (with the weights and noisy scores), ``global_model``.  Privacy:
a participant charges its release to its own ledger and reports ``privacy_charge`` when it sends
its first upload (the only release: later uploads are post-processing of it), whether or not the
server accepts it; the monitor composes these into the ε of ``metrics.csv`` and ``summary.json``.

What the guarantee covers (and what it does not)
-----------------------------------------------
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

import dataclasses
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from crowdlearn.privacy import functional as F
from crowdlearn.privacy.accountant import PrivacyLedger
from crowdlearn.protocols.io import (
    CancelJob,
    Disconnected,
    Effect,
    Halt,
    Input,
    JobDone,
    JobFailed,
    Machine,
    NodeId,
    PeerJoined,
    PeerLost,
    Received,
    Report,
    RunJob,
    Send,
    Start,
    TimerFired,
)
from crowdlearn.protocols.wire import message
from crowdlearn.schema import Key

__all__ = [
    "AGGREGATIONS", "FMDecline", "FMFitJob", "FMModel", "FMParams", "FMParticipant", "FMRound",
    "FMServer", "FMUpload", "FitResult", "LinearEvaluator", "SERVER", "WEIGHTINGS", "build",
    "cross_check", "model_for", "params_from_config", "quality_weights", "register", "run_jobs",
    "runners", "score_models", "simulation",
]

SERVER: NodeId = "server"
AGGREGATIONS = ("plain", "quality")
WEIGHTINGS = ("median", "softmax", "trim")
BOUNDED = ("tanh", "sigmoid")
#: Seed stream (child of the master seed) of the server's public split and score noise.
STREAM_INDEX = 7
_PRETRAIN = "pretrain"


# ---------------------------------------------------------------- messages
@message(0x0401)
@dataclass(frozen=True, eq=False)
class FMRound:
    """Server → participant: run round ``round`` from the global FM parameters ``params``.

    ``params`` is ``None`` in round 0 (fit alone); ``hidden`` carries the frozen hidden layers
    (deep mode) the first time a participant is addressed, else ``None``.
    """

    round: int
    params: np.ndarray | None
    hidden: tuple | None = None


@message(0x0402)
@dataclass(frozen=True, eq=False)
class FMUpload:
    """Participant → server: ``v_i = w_i + u_i`` (float32, the FM parameter vector)."""

    round: int
    params: np.ndarray

    def __post_init__(self):
        if not isinstance(self.params, np.ndarray) or self.params.ndim != 1 \
                or self.params.dtype != np.float32:
            raise ValueError("params must be a 1-D float32 array")


@message(0x0403)
@dataclass(frozen=True)
class FMDecline:
    """Participant → server: cannot take part in round ``round`` (e.g. ``"memory"``)."""

    round: int
    reason: str


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


# ---------------------------------------------------------------- the model
_ACT = {None: lambda a: a, "relu": lambda a: np.maximum(a, 0.0), "tanh": np.tanh,
        "sigmoid": lambda a: 1.0 / (1.0 + np.exp(-a))}


@dataclass(frozen=True, eq=False)
class FMModel:
    """What the functional mechanism fits and how it maps to a ``ModelSpec``'s weights.

    Parameters
    ----------
    kind : {"linear", "logistic", "softmax"}
    scaling : Scaling
        Public map of rows (raw features, or hidden features ``h``) to ``‖z‖₂ ≤ 1``.
    num_classes : int
        ``K`` (softmax); for ``logistic`` the spec has 2 outputs.
    features : int
        Width of the rows fed to the scaling (input dim, or last hidden width).
    hidden : tuple
        Frozen hidden-layer weights (kernel, bias, ...) in ``get_weights()`` order (deep mode).
    activations : tuple
        One activation per hidden layer.
    """

    kind: str
    scaling: F.Scaling
    num_classes: int = 1
    features: int = 1
    hidden: tuple = ()
    activations: tuple = ()

    @property
    def deep(self) -> bool:
        return bool(self.activations)

    @property
    def row_dim(self) -> int:
        return self.features + (1 if self.scaling.intercept else 0)

    @property
    def num_params(self) -> int:
        return self.row_dim * (self.num_classes if self.kind == "softmax" else 1)

    @property
    def curvature(self) -> float:
        """Typical curvature per row of the objective (for the ADMM penalty)."""
        return {"linear": 1.0, "logistic": 0.125}.get(self.kind, 0.5 / max(self.num_classes, 1))

    def with_hidden(self, hidden: Sequence[np.ndarray]) -> FMModel:
        return dataclasses.replace(self, hidden=tuple(np.asarray(a, np.float32) for a in hidden))

    def feature_flops(self) -> int:
        """FLOPs of mapping one row through the hidden layers."""
        total = 0
        for k in range(0, len(self.hidden), 2):
            i, o = self.hidden[k].shape
            total += 2 * i * o + 2 * o
        return total

    def rows(self, x: np.ndarray) -> np.ndarray:
        """The FM rows ``z`` (``‖z‖₂ ≤ 1``) of raw rows ``x``."""
        a = np.asarray(x, np.float64)
        if self.deep:
            if len(self.hidden) != 2 * len(self.activations):
                raise RuntimeError("deep mode: the hidden layers have not been received")
            for k, act in enumerate(self.activations):
                a = _ACT[act](a @ self.hidden[2 * k] + self.hidden[2 * k + 1])
        return self.scaling.rows(a)

    def targets(self, y: np.ndarray) -> np.ndarray:
        return self.scaling.targets(y) if self.kind == "linear" else np.asarray(y, np.int64)

    def to_weights(self, w: np.ndarray) -> tuple[np.ndarray, ...]:
        """The ``ModelSpec`` weights (``get_weights()`` order) of FM parameters ``w``."""
        w = np.asarray(w, np.float64)
        if self.kind == "softmax":
            w = w.reshape(self.row_dim, self.num_classes)
        kernel, bias = self.scaling.to_dense(w, self.kind)
        return (*self.hidden, kernel, bias)

    def predict(self, w: np.ndarray, z: np.ndarray) -> np.ndarray:
        """Scores on FM rows ``z``: the value (linear), the logit (logistic) or the logits."""
        if self.kind == "softmax":
            return z @ np.asarray(w).reshape(self.row_dim, self.num_classes)
        return z @ np.asarray(w).reshape(-1)


def model_for(spec, *, task: str, num_classes: int, x_bound: float = 0.0,
              y_bound: float = 3.0) -> FMModel:
    """The :class:`FMModel` of a ``linear`` or ``mlp`` ``ModelSpec`` (see the module notes)."""
    dense = [layer for layer in spec.layers if layer.kind == "dense"]
    if len(dense) != len(spec.layers) or not dense:
        raise ValueError("the functional mechanism needs a linear or mlp model (dense layers)")
    if dense[-1].activation is not None:
        raise ValueError("the output layer must have no activation")
    if task == "regression":
        kind, K = "linear", 1
    elif num_classes == 2:
        kind, K = "logistic", 2
    else:
        kind, K = "softmax", num_classes
    hidden = dense[:-1]
    if hidden:
        act = hidden[-1].activation
        if act not in BOUNDED:
            raise ValueError(f"deep mode needs a bounded last hidden activation {BOUNDED}; "
                             f"got {act!r}")
        m = hidden[-1].units
        return FMModel(kind, F.Scaling(x_bound=math.sqrt(m), y_bound=y_bound),
                       K if kind == "softmax" else (2 if kind == "logistic" else 1), m, (),
                       tuple(layer.activation for layer in hidden))
    d = int(np.prod(spec.input_shape))
    return FMModel(kind, F.Scaling(x_bound=x_bound or math.sqrt(d), y_bound=y_bound),
                   K if kind == "softmax" else (2 if kind == "logistic" else 1), d)


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

    Holds references to the shared training arrays and the device's index array (no copy
    until it runs).  Priced in FLOPs: forming the coefficients ``n·r(r+1) + 2·n·r·K`` (the
    upper triangle of ``Σ z zᵀ`` and the linear terms, ``r`` the row length), the mapping through
    the hidden layers (deep mode), the symmetric eigendecomposition ``9r³`` (+ ``9K³``) of the
    trimming; a re-solve costs ``4·p·k + 8p`` (two products with the ``p×k`` kept basis).
    """

    model: FMModel
    x: Any
    y: Any
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
    def build(cls, model: FMModel, x, y, indices, *, epsilon: float, bound: str, ridge: float,
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
        return cls(model, x, y, np.asarray(indices, np.int64), float(epsilon), bound,
                   float(ridge), int(seed), objective, center, float(mu), float(flops), int(mem))

    def run(self) -> FitResult:
        t, fitted = self.objective, False
        if t is None:
            z = self.model.rows(np.asarray(self.x)[self.indices])
            y = self.model.targets(np.asarray(self.y)[self.indices])
            K = self.model.num_classes if self.model.kind == "softmax" else None
            poly = F.coefficients(self.model.kind, z, y, num_classes=K)
            poly = F.perturb(poly, epsilon=self.epsilon, rng=np.random.default_rng(self.seed),
                             bound=self.bound)
            t = F.trim(poly, ridge=self.ridge * poly.noise_scale)
            fitted = True
        w = F.solve(t, center=self.center, mu=self.mu if self.center is not None else 0.0)
        return FitResult(t, w, fitted)


def run_jobs(jobs: Sequence[FMFitJob]) -> list[FitResult]:
    """Executor runner for kind ``"fm_fit"`` (plain numpy, one job after the other)."""
    return [j.run() for j in jobs]


def runners(sim: Any = None) -> dict:
    """``{"fm_fit": run_jobs}``: merge into the simulation's ``Executor`` runners."""
    return {"fm_fit": run_jobs}


# ---------------------------------------------------------------- quality scores
def score_models(model: FMModel, params: Sequence[np.ndarray], z: np.ndarray, y: np.ndarray,
                 *, clip: float) -> tuple[np.ndarray, float]:
    """Each parameter vector's validation score and the per-row bound ``C`` of the score.

    Classification: the error rate (``C = 1``); regression: the squared error in ``[−1, 1]``
    target units, each row clipped at ``clip`` (``C = clip``).
    """
    out = []
    for w in params:
        s = model.predict(w, z)
        if model.kind == "linear":
            out.append(float(np.mean(np.minimum((s - y) ** 2, clip))))
        elif model.kind == "logistic":
            out.append(float(np.mean((s > 0).astype(np.int64) != y)))
        else:
            out.append(float(np.mean(np.argmax(s, axis=1) != y)))
    return np.asarray(out), (clip if model.kind == "linear" else 1.0)


def quality_weights(noisy: np.ndarray, *, rule: str = "median", margin: float = 0.1,
                    bound: float = 1.0, trim_fraction: float = 0.3) -> np.ndarray:
    """Aggregation weights from noisy scores (lower is better); see the module notes.

    Examples
    --------
    >>> quality_weights(np.array([0.1, 0.12, 0.8, 0.15, 0.9])).tolist()
    [1.0, 1.0, 0.0, 1.0, 0.0]
    >>> quality_weights(np.array([0.1, 0.2, 0.3, 0.4]), rule="trim", trim_fraction=0.5).tolist()
    [1.0, 1.0, 0.0, 0.0]
    """
    s = np.asarray(noisy, np.float64)
    if s.size == 0:
        return s
    if rule == "median":
        return (s <= np.median(s) + margin * bound).astype(np.float64)
    if rule == "softmax":
        return np.exp(-(s - s.min()) / (margin * bound))
    if rule == "trim":
        drop = int(math.floor(trim_fraction * s.size))
        a = np.ones(s.size)
        if drop:
            a[np.argsort(s, kind="stable")[s.size - drop:]] = 0.0
        return a
    raise ValueError(f"rule must be one of {WEIGHTINGS}; got {rule!r}")


# ---------------------------------------------------------------- the server
class FMServer(Machine):
    """Runs the rounds, scores and weights participants, aggregates ``z``.

    Parameters
    ----------
    model : FMModel
        Deep mode: without hidden layers yet (they come from ``pretrain``).
    participants : sequence
        Participant node ids.
    params : FMParams
    validation : (x, y)
        The server's own rows (raw features, labels/targets), for scores.
    rng : numpy.random.Generator
        Source of the score noise.
    pretrain : job, optional
        Deep mode: the ``TrainJob`` of the whole network on the public rows.
    """

    def __init__(self, node_id: NodeId, model: FMModel, participants: Sequence[NodeId],
                 params: FMParams, *, validation: tuple[np.ndarray, np.ndarray],
                 rng: np.random.Generator, pretrain: Any = None):
        super().__init__(node_id)
        self.model = model
        self.participants = list(participants)
        if not self.participants or len(set(self.participants)) != len(self.participants):
            raise ValueError("participants must be distinct and non-empty")
        self.params = params
        self.rng = rng
        self.val_x, self.val_y = validation
        self.val_z: np.ndarray | None = None
        self.pretrain = pretrain
        self.pretrained: tuple | None = None   # deep mode: the whole pre-trained network
        self.ledger = PrivacyLedger(delta=params.delta)   # the server's own release: the scores
        self.charges: list[Effect] = []     # privacy_charge reports of the scoring, to emit
        self.present: set = set()
        self.phase = "idle"                 # idle | pretraining | waiting | running | done
        self.round = 0
        self.z: np.ndarray | None = None
        self.expected: set = set()
        self.sent: list = []
        self.uploads: dict = {}
        self.deadline: float | None = None
        self.round_start = 0.0
        self.scores: dict = {}              # participant → noisy score (first scoring)
        self.raw_scores: dict = {}          # participant → exact score (for tests / analysis)
        self.has_hidden: set = set()
        # the participants' ADMM state as the server can rebuild it from the messages:
        # v_i = w_i + u_i is uploaded and u_i <- u_i + w_i - z on each round received, so the
        # server scores w_i = v_i - u_i (the model, not the dual) when it re-scores
        self.duals: dict = {}
        self.models: dict = {}

    def next_timer(self) -> float | None:
        return self.deadline if self.phase == "running" else None

    def handle(self, event: Input, now: float) -> list[Effect]:
        if isinstance(event, Received):
            if isinstance(event.message, FMUpload):
                return self._on_upload(event.src, event.message, now)
            if isinstance(event.message, FMDecline):
                return self._on_decline(event.src, event.message, now)
            return []
        if isinstance(event, Start):
            if self.phase != "idle":
                return []
            if self.pretrain is not None:
                self.phase = "pretraining"
                return [RunJob(_PRETRAIN, self.pretrain)]
            return self._begin(now)
        if isinstance(event, JobDone) and event.job_id == _PRETRAIN:
            weights = list(event.result)
            self.pretrained = tuple(np.asarray(w, np.float32) for w in weights)
            self.model = self.model.with_hidden(weights[:-2])
            return self._begin(now)
        if isinstance(event, JobFailed) and event.job_id == _PRETRAIN:
            self.phase = "done"
            return [Report("job_failed", event.reason, (("device", self.node_id),)), Halt()]
        if isinstance(event, PeerJoined):
            self.present.add(event.peer)
            if self.phase == "waiting":
                return self._start_round(now)
            return []
        if isinstance(event, PeerLost):
            self.present.discard(event.peer)
            if self.phase == "running" and event.peer in self.expected \
                    and event.peer not in self.uploads:
                self.expected.discard(event.peer)
                return self._maybe_close(now)
            return []
        if isinstance(event, TimerFired):
            if self.phase == "running" and self.deadline is not None and now >= self.deadline:
                return self._close(now, "deadline")
            return []
        return []

    # ------------------------------------------------------------ rounds
    def _begin(self, now: float) -> list[Effect]:
        self.val_z = self.model.rows(self.val_x) if len(self.val_x) else np.zeros((0, 0))
        return self._start_round(now)

    def _start_round(self, now: float) -> list[Effect]:
        targets = [p for p in self.participants if p in self.present]
        if not targets:
            self.phase = "waiting"
            return []
        self.phase = "running"
        self.expected, self.sent, self.uploads = set(targets), targets, {}
        self.round_start = now
        self.deadline = now + self.params.deadline_s if math.isfinite(self.params.deadline_s) \
            else None
        z = None if self.z is None else self.z.astype(np.float32)
        plain = FMRound(self.round, z, None)
        with_hidden = FMRound(self.round, z, tuple(self.model.hidden)) if self.model.deep \
            else plain
        effects: list[Effect] = []
        for p in targets:
            if z is not None and p in self.models:
                self.duals[p] = self.duals.get(p, 0.0) + self.models[p] - z.astype(np.float64)
            msg = with_hidden if p not in self.has_hidden else plain
            self.has_hidden.add(p)
            effects.append(Send(p, msg))
        return effects

    def _on_upload(self, src, msg: FMUpload, now: float) -> list[Effect]:
        tags = (("device", src), ("round", msg.round))
        if self.phase != "running" or msg.round != self.round or src not in self.expected \
                or src in self.uploads:
            return [Report("late_update", msg.round, tags)]
        v = msg.params
        if v.size != self.model.num_params or not np.all(np.isfinite(v)):
            self.expected.discard(src)
            return [Report("bad_update", "shape or non-finite", tags)] + self._maybe_close(now)
        self.uploads[src] = v.astype(np.float64)
        self.models[src] = self.uploads[src] - self.duals.get(src, 0.0)
        return self._maybe_close(now)

    def _on_decline(self, src, msg: FMDecline, now: float) -> list[Effect]:
        rep = [Report("turn_declined", msg.reason, (("device", src), ("round", msg.round)))]
        if self.phase == "running" and msg.round == self.round and src in self.expected \
                and src not in self.uploads:
            self.expected.discard(src)
            return rep + self._maybe_close(now)
        return rep

    def _maybe_close(self, now: float) -> list[Effect]:
        if self.phase == "running" and self.expected <= set(self.uploads):
            return self._close(now, "complete")
        return []

    def weights_for(self, nodes: Sequence) -> np.ndarray:
        """Aggregation weights of ``nodes`` (all 1 with plain averaging)."""
        if self.params.aggregation == "plain" or not nodes:
            return np.ones(len(nodes))
        p = self.params
        noisy = np.array([self.scores[n] for n in nodes])
        bound = p.score_clip if self.model.kind == "linear" else 1.0
        return quality_weights(noisy, rule=p.weighting, margin=p.margin, bound=bound,
                               trim_fraction=p.trim_fraction)

    def _score(self, nodes: list) -> None:
        """Score ``nodes``' current uploads on the validation rows, with Laplace noise."""
        p = self.params
        ys = self.model.targets(self.val_y)
        raw, C = score_models(self.model, [self.models[n] for n in nodes], self.val_z, ys,
                              clip=p.score_clip)
        m = max(len(ys), 1)
        if math.isfinite(p.score_epsilon):
            noise = self.rng.laplace(0.0, len(nodes) * C / (m * p.score_epsilon), len(nodes))
            self.ledger.record("validation", epsilon_turn=p.score_epsilon,
                               mechanism="quality_scores")
            self.charges.append(Report("privacy_charge", {
                "epsilon_turn": p.score_epsilon, "c": None, "mechanism": "quality_scores",
                "guarantee": True, "subject": "validation", "delta": p.delta}))
        else:
            noise = np.zeros(len(nodes))
        for n, s, e in zip(nodes, raw, noise, strict=True):
            self.raw_scores[n] = float(s)
            self.scores[n] = float(s + e)

    def _close(self, now: float, how: str) -> list[Effect]:
        got = [n for n in self.sent if n in self.uploads]
        if self.params.aggregation == "quality" and got and len(self.val_z):
            fresh = got if self.params.rescore else [n for n in got if n not in self.scores]
            if fresh:
                self._score(fresh)
        a = self.weights_for(got)
        if got and a.sum() > 0:
            vs = np.stack([self.uploads[n] for n in got])
            self.z = (a[:, None] * vs).sum(axis=0) / a.sum()
        elif self.z is None:
            self.z = np.zeros(self.model.num_params)
        tags = (("round", self.round),)
        info = {"round": self.round, "start_s": self.round_start, "end_s": now, "closed_by": how,
                "selected": tuple(self.sent),
                "aggregated": tuple(n for n, w in zip(got, a, strict=True) if w > 0),
                "weights": {n: float(w) for n, w in zip(got, a, strict=True)},
                "scores": {n: self.scores[n] for n in got if n in self.scores}}
        # the scoring's charges before global_model: the row of this round carries them
        effects: list[Effect] = [Report("round", info), *self.charges,
                                 Report("global_model", self.model.to_weights(self.z), tags)]
        self.charges = []
        self.round += 1
        self.deadline = None
        if self.round >= self.params.rounds:
            self.phase = "done"
            return effects + [Halt()]
        return effects + self._start_round(now)

    def privacy_rows(self) -> list[dict]:
        """The server's ledger: the quality scores' ε under ``"validation"`` (if any)."""
        return self.ledger.rows()


# ---------------------------------------------------------------- the participant
class FMParticipant(Machine):
    """Keeps its noisy objective, its ADMM dual ``u`` and last solution across rounds.

    All three survive disconnections (device memory); only the running job is lost.
    """

    def __init__(self, node_id: NodeId, model: FMModel, x, y, indices: np.ndarray,
                 params: FMParams, *, rng: np.random.Generator, server: NodeId = SERVER):
        super().__init__(node_id)
        self.model = model
        self.x, self.y = x, y
        self.indices = np.asarray(indices, np.int64)
        self.params = params
        self.server = server
        self.seed = int(rng.integers(0, 2 ** 63 - 1))   # the FM noise, drawn once
        self.objective: F.Trimmed | None = None
        self.w: np.ndarray | None = None
        self.u = np.zeros(model.num_params)
        self.phase = "idle"
        self.round: int | None = None
        # the participant releases, so it charges its own ledger, once, at its first upload
        self.ledger = PrivacyLedger(delta=params.delta)
        self.released = False

    def handle(self, event: Input, now: float) -> list[Effect]:
        if isinstance(event, Received) and isinstance(event.message, FMRound):
            return self._on_round(event.message)
        if isinstance(event, JobDone):
            return self._on_done(event)
        if isinstance(event, JobFailed):
            if self.phase != "running" or event.job_id != self.round:
                return []
            self.phase = "idle"
            return [Report("job_failed", event.reason, (("device", self.node_id),)),
                    Send(self.server, FMDecline(self.round, event.reason))]
        if isinstance(event, Disconnected):
            self.phase, self.round = "idle", None
        return []

    def _on_round(self, msg: FMRound) -> list[Effect]:
        effects: list[Effect] = []
        if msg.hidden is not None:
            self.model = self.model.with_hidden(msg.hidden)
        if self.phase == "running" and self.round is not None:
            effects.append(CancelJob(self.round))
        center = None
        if msg.params is not None:
            z = msg.params.astype(np.float64)
            if self.w is not None:
                self.u = self.u + self.w - z          # the scaled dual step of ADMM
            center = z - self.u
        p = self.params
        job = FMFitJob.build(self.model, self.x, self.y, self.indices, epsilon=p.epsilon,
                             bound=p.bound, ridge=p.ridge, seed=self.seed,
                             objective=self.objective, center=center, mu=p.mu)
        self.round, self.phase = msg.round, "running"
        return effects + [RunJob(msg.round, job)]

    def _on_done(self, event: JobDone) -> list[Effect]:
        if self.phase != "running" or event.job_id != self.round:
            return []
        res: FitResult = event.result
        self.objective, self.w = res.objective, res.w
        self.phase = "idle"
        effects: list[Effect] = []
        if res.fitted:
            info = {"rows": int(self.indices.size), "params": self.model.num_params,
                    "trimmed": res.objective.trimmed,
                    "noise_scale": res.objective.noise_scale}
            effects.append(Report("fm_fit", info, (("device", self.node_id),)))
        up = FMUpload(self.round, (self.w + self.u).astype(np.float32))
        if not self.released and math.isfinite(self.params.epsilon):
            self.ledger.record(self.node_id, epsilon_turn=self.params.epsilon,
                               mechanism="functional_mechanism")
            effects.append(Report("privacy_charge", {
                "epsilon_turn": self.params.epsilon, "c": None,
                "mechanism": "functional_mechanism", "guarantee": True,
                "delta": self.params.delta}, (("device", self.node_id),)))
        self.released = True
        return effects + [Send(self.server, up)]

    def privacy_rows(self) -> list[dict]:
        """This participant's ledger: one functional-mechanism release (empty with ε = inf)."""
        return self.ledger.rows()


# ---------------------------------------------------------------- a numpy evaluator
class LinearEvaluator:
    """A ``trainer_factory`` for linear ``ModelSpec``s that only evaluates, in numpy.

    Same metrics as ``FleetTrainer.evaluate``: ``(cross-entropy, accuracy)`` for ``sparse_ce``,
    ``(mse, rmse)`` for ``mse``.  For fast tests and benchmarks of linear FM runs (no
    TensorFlow); it cannot train (deep mode needs the real trainer).
    """

    def __init__(self, spec, x, y):
        if len(spec.layers) != 1:
            raise ValueError("LinearEvaluator handles single-layer (linear) models only")
        self.spec = spec

    def train(self, tasks):
        raise NotImplementedError("LinearEvaluator cannot train")

    def evaluate(self, weight_lists, x, y):
        out = []
        x = np.asarray(x, np.float64)
        for kernel, bias in weight_lists:
            s = x @ np.asarray(kernel, np.float64) + np.asarray(bias, np.float64)
            if self.spec.loss == "mse":
                mse = float(np.mean((s[:, 0] - y) ** 2))
                out.append((mse, math.sqrt(mse)))
            else:
                s = s - s.max(axis=1, keepdims=True)
                logp = s - np.log(np.exp(s).sum(axis=1, keepdims=True))
                out.append((float(-np.mean(logp[np.arange(len(y)), y])),
                            float(np.mean(np.argmax(s, axis=1) == y))))
        return out


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
    s = cfg.fm
    names = [f.name for f in dataclasses.fields(FMParams) if f.name not in ("rounds", "mu")]
    return FMParams(rounds=cfg.rounds, mu=mu, **{k: getattr(s, k) for k in names})


def _stream(seed: int) -> np.random.Generator:
    return np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(STREAM_INDEX,)))


def build(ctx) -> dict:
    """Protocol builder (``sim.experiment.Context``): a server and one participant per device.

    The server's public rows are a seeded sample of ``public_size`` training rows taken out of
    the devices' index arrays; the ``[quality]`` section (if registered) then corrupts the
    unreliable devices' rows (:mod:`crowdlearn.data.quality`).  Records ``public``, ``parts``,
    ``corrupted`` and ``model`` in ``ctx.extra``.
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
        from crowdlearn.training.jobs import TrainJob
        if public.size == 0:
            raise ValueError("deep mode needs fm.public_size > 0 (the server pre-trains on them)")
        pretrain = TrainJob.build(ctx.spec, ctx.init_weights, public,
                                  epochs=s.pretrain_epochs, batch_size=s.pretrain_batch_size,
                                  lr=s.pretrain_lr, rng=rng)
    ctx.extra.update(public=public, parts=parts, corrupted=corrupted, model=model)
    if math.isfinite(s.epsilon):    # what the results say about ε (sim.experiment reads it)
        ctx.extra["privacy"] = {"mechanism": "functional_mechanism", "delta": s.delta,
                                "guarantee": "dp", "audit": None}
    machines: dict = {SERVER: FMServer(SERVER, model, ctx.devices, params,
                                       validation=(ds.x_train[public], ds.y_train[public]),
                                       rng=rng, pretrain=pretrain)}
    for d in ctx.devices:
        machines[d] = FMParticipant(d, model, x, y, parts[d], params, rng=ctx.device_rngs[d])
    return machines


def register(protocols: dict | None = None) -> None:
    """Make ``protocol = "fm"`` and the ``[fm]`` and ``[quality]`` sections known (idempotent).

    Patches :mod:`crowdlearn.config` and, when given, a builder registry such as
    ``sim.experiment.PROTOCOLS``.  For tests and notebooks; the permanent registration lives in
    those modules.  The job runner must be added separately (:func:`runners`, or use
    :func:`simulation`).
    """
    from crowdlearn import config
    from crowdlearn.data import quality as q

    config.SCHEMA.setdefault("fm", CONFIG_SECTION)
    config.SCHEMA.setdefault("quality", q.CONFIG_SECTION)
    if "fm" not in config.PROTOCOLS:
        config.PROTOCOLS = (*config.PROTOCOLS, "fm")
    key = config.SCHEMA[""]["protocol"]
    if key.choices is not None and "fm" not in key.choices:
        config.SCHEMA[""]["protocol"] = dataclasses.replace(key, choices=(*key.choices, "fm"))
    if protocols is not None:
        protocols.setdefault("fm", build)


def simulation(cfg, **kwargs):
    """``sim.experiment.Simulation(cfg, **kwargs)`` with the ``fm_fit`` runner merged in."""
    from sim.experiment import Simulation

    sim = Simulation(cfg, **kwargs)
    for kind, fn in runners(sim).items():
        sim.executor.runners.setdefault(kind, fn)
    return sim
