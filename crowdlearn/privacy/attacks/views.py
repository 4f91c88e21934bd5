"""What each observer of a protocol actually sees, and the report of the attacks on it.

An attack is only as strong as its input, so the suite attacks *views*: objects fed by a running
:class:`crowdlearn.experiment.Simulation` with exactly what one party receives.

``ObserverView`` (protocol)
    ``on_report(node, report, now)`` and ``on_transfer(src, dst, msg, now)``, called for every
    protocol ``Report`` and every delivered message once :func:`attach` has hooked the views
    into the simulation's monitor (the driver calls ``monitor.on_report`` /
    ``monitor.on_transfer``; :func:`attach` wraps those two methods of that one monitor
    instance and forwards to the views after the monitor's own bookkeeping).
:class:`DSSGDServerView`
    The DSSGD parameter server: every accepted upload, as its ``dssgd_upload`` report (indices
    into the flat parameter vector and clipped values), and the parameters it sent each
    participant (``ParamsDownload``), i.e. the weights a participant started its epoch from.
:class:`FedAvgServerView`
    The FedAvg server: the global weights of each round (``RoundStart``) and every client's
    trained weights (``Update``), hence each client's full update ``Δw``.
:class:`ModelTap`
    The final models (``global_model``, ``local_model``, ``group_model`` reports) for the
    membership attacks; the monitor evaluates and drops them.
:class:`SliceNetFollowerView`
    A Crowdlearning follower holding a piece ``P`` of hidden layer 1: per sample it receives the
    weighted sums ``z = x·W1[:, P]`` from the dominator (no bias: the piece adds its own), and
    nothing else about ``x``.  Attached to a simulation (``node=``), it keeps the sealed boundary
    payloads delivered to that follower and opens them as the follower does: each holds the
    pass's real boundary tensors, mini-batch by mini-batch (``sums_from``: the weighted sums
    and the output errors the dominator sent; ``tests/test_slicenet_messages.py``).  It can
    also be fed the messages of :class:`slicenet.execution.PiecewiseNetwork`
    (``observe_messages``) or the product itself (``observe``).

The follower's attack, :func:`reconstruct_from_weighted_sums`: without ``W1`` (owned by the
dominator) the sums are an unknown random projection of ``x`` and the follower's best guess we
know of is its prior, the mean image; with ``W1`` leaked (collusion with the server, which sees
the top-θ **plain weights** every member uploads at the end of an epoch, including the
dominator's ``W1``; or simply by becoming the next dominator, since the input layer is handed over
at every shuffle) it solves ``z = x·W1_P`` for ``x``: the minimum-norm solution
``x̂ = z·pinv(W1_P)``, its prior-centred version ``μ + (z − μ·W1_P)·pinv(W1_P)``, or the
Gaussian conditional mean ``μ + (z − μ·W1_P)·(W1_Pᵀ Σ W1_P)⁻¹ W1_Pᵀ Σ`` with ``μ, Σ`` the mean
and covariance of public data.  With ``|P| ≥ d`` (and ``W1_P`` of rank ``d``) all three are
exact; with ``|P| < d`` the system is underdetermined and the prior fills the null space.

:func:`privacy_report` turns a finished simulation and its :class:`PrivacyProbe` into flat
scores for ``summary.json``.

References
----------
L. Chen, T. Jung, H. Du, J. Qian, J. Hou, X.-Y. Li, "Crowdlearning: Crowded Deep Learning with
Data Privacy", IEEE SECON 2018 (the follower's view and the privacy claim measured here).
L. T. Phong et al., IEEE TIFS 13(5), 2018; S. Yeom et al., IEEE CSF 2018 (attacks run on the
server views).

Examples
--------
>>> import numpy as np
>>> rng = np.random.default_rng(0)
>>> w1 = rng.normal(size=(8, 12))
>>> x = rng.uniform(size=(3, 8))
>>> view = SliceNetFollowerView(units=np.arange(10))
>>> z = view.observe(x, w1)
>>> float(np.abs(reconstruct_from_weighted_sums(z, w1[:, view.units]) - x).max()) < 1e-9
True
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

import numpy as np

from crowdlearn import registry

__all__ = [
    "ClientUpdate",
    "DSSGDServerView",
    "FedAvgServerView",
    "ModelTap",
    "ObserverView",
    "PrivacyProbe",
    "SliceNetFollowerView",
    "UploadRecord",
    "attach",
    "conv_sums_operator",
    "follower_pass",
    "privacy_report",
    "reconstruct_from_weighted_sums",
    "watch_followers",
]

#: PSNR values are capped here in :func:`privacy_report` (``inf`` is not valid JSON).
PSNR_CAP = 100.0


@runtime_checkable
class ObserverView(Protocol):
    """Something fed with what one party of a protocol observes."""

    def on_report(self, node, report, now: float) -> None:
        """A machine's ``Report`` effect (``report.name``, ``report.value``, ``report.tags``)."""

    def on_transfer(self, src, dst, msg, now: float) -> None:
        """A message delivered from ``src`` to ``dst``."""


def attach(sim, *views: ObserverView) -> None:
    """Feed ``views`` from a built, not yet run :class:`crowdlearn.experiment.Simulation`.

    Wraps ``sim.monitor.on_report`` and ``sim.monitor.on_transfer`` (on that instance only):
    the monitor still does its own bookkeeping first.  Attaching twice adds the views again.
    """
    mon = sim.monitor
    inner_report, inner_transfer = mon.on_report, mon.on_transfer

    def on_report(node, rep, now):
        inner_report(node, rep, now)
        for v in views:
            v.on_report(node, rep, now)

    def on_transfer(src, dst, nbytes, now, msg=None):
        inner_transfer(src, dst, nbytes, now, msg)
        for v in views:
            v.on_transfer(src, dst, msg, now)

    mon.on_report = on_report
    mon.on_transfer = on_transfer


class _View:
    def on_report(self, node, report, now: float) -> None:
        pass

    def on_transfer(self, src, dst, msg, now: float) -> None:
        pass


# ---------------------------------------------------------------- DSSGD server
@dataclass
class UploadRecord:
    """One accepted DSSGD upload as the server saw it.

    ``start`` is the flat parameter vector the server sent the participant for this turn when
    the download was dense (``θd = 1``), else ``None`` (the participant's local copy is then
    partly its own).
    """

    device: Any
    turn: int
    time_s: float
    indices: np.ndarray
    values: np.ndarray
    start: np.ndarray | None


class DSSGDServerView(_View):
    """The DSSGD server's view: uploads (``dssgd_upload`` reports) and what it sent out.

    Parameters
    ----------
    max_uploads : int, optional
        Keep only the first this many uploads (memory bound for long runs).
    """

    def __init__(self, max_uploads: int | None = None):
        self.max_uploads = max_uploads
        self.uploads: list[UploadRecord] = []
        self._sent: dict[tuple[Any, int], np.ndarray | None] = {}

    def on_transfer(self, src, dst, msg, now: float) -> None:
        if type(msg).__name__ == "ParamsDownload" and src == "server":
            self._sent[(dst, msg.turn)] = None if msg.indices is not None else \
                np.array(msg.values, np.float32)

    def on_report(self, node, report, now: float) -> None:
        if report.name != "dssgd_upload":
            return
        if self.max_uploads is not None and len(self.uploads) >= self.max_uploads:
            return
        up = report.value
        dev = report.tag("device")
        self.uploads.append(UploadRecord(dev, int(up.turn), float(now),
                                         np.array(up.indices, np.int64),
                                         np.array(up.values, np.float32),
                                         self._sent.pop((dev, int(up.turn)), None)))


# ---------------------------------------------------------------- FedAvg server
@dataclass
class ClientUpdate:
    """One FedAvg client update as the server saw it (``delta = weights − start``)."""

    device: Any
    round: int
    time_s: float
    start: tuple
    weights: tuple
    num_samples: int

    @property
    def delta(self) -> list[np.ndarray]:
        return [np.asarray(w, np.float64) - np.asarray(s, np.float64)
                for w, s in zip(self.weights, self.start, strict=True)]


class FedAvgServerView(_View):
    """The FedAvg server's view: the round's global weights and every client's ``Update``.

    Parameters
    ----------
    max_updates : int, optional
        Keep only the first this many updates.
    """

    def __init__(self, max_updates: int | None = 64):
        self.max_updates = max_updates
        self.updates: list[ClientUpdate] = []
        self._round_weights: dict[int, tuple] = {}

    def on_transfer(self, src, dst, msg, now: float) -> None:
        kind = type(msg).__name__
        if kind == "RoundStart" and src == "server":
            self._round_weights.setdefault(msg.round, msg.weights)
        elif kind == "Update" and dst == "server":
            if self.max_updates is not None and len(self.updates) >= self.max_updates:
                return
            start = self._round_weights.get(msg.round)
            if start is not None:
                # msg.weights may be a deferred job result: read it only when attacked
                self.updates.append(ClientUpdate(src, int(msg.round), float(now), start,
                                                 msg.weights, int(msg.num_samples)))


# ---------------------------------------------------------------- final models
class ModelTap(_View):
    """The last ``global_model``, and the last ``local_model`` / ``group_model`` per node."""

    def __init__(self):
        self.global_model: tuple | None = None
        self.local_models: dict[Any, tuple] = {}
        self.group_models: dict[int, tuple] = {}
        self.epsilon: float | None = None

    @staticmethod
    def _copy(w) -> tuple:
        return tuple(np.array(a, np.float32) for a in w)

    def on_report(self, node, report, now: float) -> None:
        if report.name == "global_model":
            self.global_model = self._copy(report.value)
        elif report.name == "local_model":
            self.local_models[report.tag("device", node)] = self._copy(report.value)
        elif report.name == "group_model":
            self.group_models[int(report.tag("group"))] = self._copy(report.value)
        elif report.name == "epsilon":
            self.epsilon = float(report.value)


# ---------------------------------------------------------------- SliceNet follower
class SliceNetFollowerView(_View):
    """A Crowdlearning follower holding hidden-layer-1 neurons ``units`` (its piece ``P``).

    Parameters
    ----------
    piece : int, optional
        The piece id in a :class:`slicenet.execution.PiecewiseNetwork` (for
        :meth:`observe_messages`).
    units : array_like of int, optional
        Its hidden-1 neurons; taken from the first message if not given.

    Attributes
    ----------
    sums : list of numpy.ndarray
        The ``(batch, |P|)`` weighted sums received, one array per mini-batch.
    """

    def __init__(self, piece: int | None = None, units=None, *, node=None, layout=None,
                 batch_size: int | None = None):
        self.piece = piece
        self.units = None if units is None else np.asarray(units, np.int64)
        self.sums: list[np.ndarray] = []
        # attached to a run: the follower ``node``, the group's layout (public: the plan) and
        # the configured batch size (public: the config)
        self.node, self.layout, self.batch_size = node, layout, batch_size
        self.plans: dict[int, Any] = {}        # attempt -> the PassPlan the follower got
        self.payloads: dict[tuple, Any] = {}   # (attempt, sender) -> sealed boundary payload

    def on_transfer(self, src, dst, msg, now: float) -> None:
        """Keep what is delivered to the follower: its PassPlans and boundary payloads."""
        if self.node is None or dst != self.node:
            return
        name = type(msg).__name__
        if name == "PassPlan":
            self.plans[msg.attempt] = msg
        elif name == "Relayed" and msg.kind == "boundary":
            self.payloads[(msg.attempt, msg.src)] = msg.payload

    def sums_from(self, sender, attempt: int, *, open_payload=None) -> dict:
        """The dominator's boundary payload of ``attempt`` opened and cut into mini-batches:
        ``z`` (per step, the ``(B, |P|)`` sums of the follower's hidden-1 units ``units``) and
        ``errors`` (per step, the ``(B, classes)`` output errors, if it holds last-hidden
        units).  ``open_payload(payload) -> bytes`` opens bytes from a real wire (default: the
        simulation's sealed object, read as its recipient reads it).  On a convolutional
        model (the layout a :class:`slicenet.ownership.SliceLayout`) a hidden-1 unit is a
        feature map of the first convolution and each ``z`` is ``(B, H', W', |P|)``: the
        pre-activation maps (no bias) of the follower's channels, which
        :func:`conv_sums_operator` turns back into a linear system in ``x``.

        The payload is the dominator's messages to the follower's pieces, mini-batch after
        mini-batch: the hidden-1 sums for each piece holding hidden-1 units, then the output
        errors for each piece holding last-hidden units (pieces in increasing order).  The
        batch count follows from the payload's length and the plan's floats per sample.
        """
        payload = self.payloads[(attempt, sender)]
        plain = open_payload(payload) if open_payload is not None else payload.plaintext()
        floats = np.frombuffer(plain, np.float32)
        lay = self.layout
        # a convolutional layout (slicenet.ownership.SliceLayout): a unit of hidden layer 1 is
        # a feature map, H'·W' sums per sample, laid out (H', W', |P|) per sample and piece
        maps = tuple(lay.first_stage.z_shape[:-1]) if getattr(lay, "first_stage", None) \
            is not None and lay.first_stage.kind == "conv" else ()
        per_unit = int(np.prod(maps)) if maps else 1
        mine = sorted(int(p) for p in self.plans[attempt].pieces if p >= 0)
        first = [(p, np.flatnonzero(lay.piece_of_unit[0] == p)) for p in mine]
        first = [(p, u) for p, u in first if len(u)]
        last = [p for p in mine if np.any(lay.piece_of_unit[-1] == p)]
        per_sample = per_unit * sum(len(u) for _, u in first) + lay.num_outputs * len(last)
        if not per_sample or floats.size % per_sample:
            raise ValueError(f"a payload of {floats.size} floats is not {per_sample} per "
                             f"sample: not the dominator's to pieces {mine}")
        samples = floats.size // per_sample
        out: dict = {"units": np.concatenate([u for _, u in first]) if first else
                     np.zeros(0, np.int64), "z": [], "errors": []}
        pos = 0
        for start in range(0, samples, self.batch_size):
            b = min(self.batch_size, samples - start)
            zs = []
            for _, u in first:
                n = b * len(u) * per_unit
                zs.append(floats[pos:pos + n].reshape(b, *maps, len(u)))
                pos += n
            errs = []
            for _ in last:
                errs.append(floats[pos:pos + b * lay.num_outputs].reshape(b, lay.num_outputs))
                pos += b * lay.num_outputs
            if zs:
                out["z"].append(np.concatenate(zs, axis=-1).astype(np.float64))
            if errs:
                out["errors"].append(errs[0].astype(np.float64))
        self.units = out["units"]
        self.sums.extend(out["z"])
        return out

    def observe(self, x, w1) -> np.ndarray:
        """Receive the sums of a batch ``x`` under kernel ``w1`` (``(d, h)``): ``x·W1[:, P]``."""
        z = np.asarray(x, np.float64) @ np.asarray(w1, np.float64)[:, self.units]
        self.sums.append(z)
        return z

    def observe_messages(self, messages) -> np.ndarray | None:
        """Receive what :meth:`PiecewiseNetwork.step` sent this piece for hidden layer 1.

        Returns the ``(batch, |P|)`` sums of this step (``None`` if none were addressed here).
        """
        from slicenet.layout import DOMINATOR

        got = None
        for m in messages:
            if m.kind == "forward" and m.layer == 0 and m.src == DOMINATOR and m.dst == self.piece:
                if self.units is None:
                    self.units = np.asarray(m.units, np.int64)
                got = np.asarray(m.values, np.float64)
                self.sums.append(got)
        return got

    def all_sums(self) -> np.ndarray:
        """Every received row, ``(samples, |P|)``."""
        return np.concatenate(self.sums) if self.sums else np.zeros((0, 0))


def watch_followers(sim, *, group: int = 0, batch_size: int) -> tuple[list, dict]:
    """Before ``sim.run()``: a :class:`SliceNetFollowerView` on every member of Crowdlearning
    group ``group`` (attached), and the list every executor job handle will be appended to
    (among them the passes' ``SlicePassJob``s: ``job.key = (group, attempt)``, ``job.node``,
    ``job.batches`` on the dominator's, ``job.promise`` for the pass's start weights).  Returns ``(handles, views)``,
    views keyed by device."""
    handles: list = []
    submit = sim.executor.submit

    def recording(job):
        h = submit(job)
        handles.append(h)
        return h

    sim.executor.submit = recording
    lay = sim.ctx.extra["layout"]
    views = {d: SliceNetFollowerView(node=d, layout=lay, batch_size=batch_size)
             for d in sim.ctx.extra["groups"][group]}
    attach(sim, *views.values())
    return handles, views


def conv_sums_operator(kernel, in_shape, *, strides=(1, 1), padding: str = "valid",
                       channels=None) -> np.ndarray:
    """The matrix ``A`` of a convolution's sums: ``z.reshape(B, -1) = x.reshape(B, -1) @ A``.

    ``z`` is the ``(B, H', W', |P|)`` pre-activation (no bias) of the convolution with
    ``kernel`` (Keras layout ``(kh, kw, c_in, filters)``) restricted to ``channels`` (all if
    None), ``x`` the ``(B, H, W, c_in)`` input; both flattened row-major (channels last), so a
    CNN follower's channel maps become the dense follower's sums and
    :func:`reconstruct_from_weighted_sums` applies unchanged (``A`` is the ``W1_P``).  With
    ``H'·W'·|P| ≥ H·W·c_in`` equations of full rank the input is determined exactly.

    Examples
    --------
    >>> k = np.zeros((2, 2, 1, 1)); k[0, 0, 0, 0] = 1.0          # picks the top-left pixel
    >>> conv_sums_operator(k, (3, 3, 1)).shape
    (9, 4)
    >>> x = np.arange(9.0).reshape(1, 9)
    >>> (x @ conv_sums_operator(k, (3, 3, 1))).tolist()           # pixels (0,0) (0,1) (1,0) (1,1)
    [[0.0, 1.0, 3.0, 4.0]]
    """
    k = np.asarray(kernel, np.float64)
    kh, kw, cin, _ = k.shape
    if channels is not None:
        k = k[..., np.asarray(channels, np.int64)]
    cout = k.shape[-1]
    h, w, c = (int(v) for v in in_shape)
    if c != cin:
        raise ValueError(f"kernel reads {cin} channels, input has {c}")
    sh, sw = strides
    if padding == "valid":
        oh, ow = (h - kh) // sh + 1, (w - kw) // sw + 1
        top = left = 0
    elif padding == "same":
        oh, ow = -(-h // sh), -(-w // sw)
        top = max((oh - 1) * sh + kh - h, 0) // 2       # TF's split: the extra row at the end
        left = max((ow - 1) * sw + kw - w, 0) // 2
    else:
        raise ValueError(f"padding must be 'valid' or 'same', got {padding!r}")
    a = np.zeros((h * w * c, oh * ow * cout))
    for i in range(oh):
        for j in range(ow):
            col = (i * ow + j) * cout
            for u in range(kh):
                r = i * sh + u - top
                if not 0 <= r < h:
                    continue
                for v in range(kw):
                    q = j * sw + v - left
                    if 0 <= q < w:
                        row = (r * w + q) * c
                        a[row:row + c, col:col + cout] += k[u, v]
    return a


def reconstruct_from_weighted_sums(z, w1_piece=None, *, method: str = "min_norm",
                                   prior_mean=None, prior_cov=None, dim: int | None = None,
                                   data_range: tuple[float, float] | None = None,
                                   ridge: float = 1e-6) -> np.ndarray:
    """A follower's reconstruction of the dominator's inputs from the sums ``z = x·W1_P``.

    Parameters
    ----------
    z : array_like, shape (B, k)
        The weighted sums received for ``B`` samples and the ``k = |P|`` neurons of the piece.
    w1_piece : array_like, shape (d, k), optional
        The columns of the first kernel for the piece's neurons -- unknown to an honest follower
        (``None``: the follower's best guess is its prior mean, or zeros without one).
    method : {"min_norm", "mean_centred", "gaussian"}
        ``x̂ = z·pinv(W)``; ``μ + (z − μW)·pinv(W)``; or the Gaussian conditional mean
        ``μ + (z − μW)(WᵀΣW + ridge·I)⁻¹WᵀΣ`` (needs ``prior_mean`` and ``prior_cov``).
    prior_mean : array_like, shape (d,), optional
        The attacker's prior mean image (e.g. the mean of public data of the same kind).
    prior_cov : array_like, shape (d, d), optional
        Prior covariance for ``"gaussian"``.
    dim : int, optional
        ``d`` when neither ``w1_piece`` nor ``prior_mean`` gives it.
    data_range : (float, float), optional
        Clip the result to it.
    ridge : float
        Tikhonov term of ``"gaussian"`` (relative to the trace of ``WᵀΣW / k``).

    Returns
    -------
    numpy.ndarray
        ``(B, d)`` float64.

    References
    ----------
    Chen et al., IEEE SECON 2018, section III-C (what the follower receives).

    Examples
    --------
    >>> w = np.eye(3)[:, :2]                            # a piece of 2 neurons seeing x0, x1
    >>> reconstruct_from_weighted_sums([[0.2, 0.4]], w).tolist()
    [[0.2, 0.4, 0.0]]
    >>> reconstruct_from_weighted_sums([[0.2, 0.4]], w, method="mean_centred",
    ...                                prior_mean=[0.5, 0.5, 0.5]).tolist()
    [[0.2, 0.4, 0.5]]
    """
    z = np.atleast_2d(np.asarray(z, np.float64))
    mu = None if prior_mean is None else np.asarray(prior_mean, np.float64).reshape(-1)
    if w1_piece is None:
        d = mu.size if mu is not None else dim
        if d is None:
            raise ValueError("without w1_piece, give prior_mean or dim")
        out = np.tile(mu if mu is not None else np.zeros(d), (z.shape[0], 1))
    else:
        w = np.asarray(w1_piece, np.float64)
        if w.ndim != 2 or w.shape[1] != z.shape[1]:
            raise ValueError(f"w1_piece must be (d, {z.shape[1]}); got {w.shape}")
        if method == "min_norm":
            out = z @ np.linalg.pinv(w)
        elif method in ("mean_centred", "gaussian"):
            if mu is None:
                raise ValueError(f"method={method!r} needs prior_mean")
            resid = z - mu @ w
            if method == "mean_centred":
                out = mu + resid @ np.linalg.pinv(w)
            else:
                if prior_cov is None:
                    raise ValueError("method='gaussian' needs prior_cov")
                s = np.asarray(prior_cov, np.float64)
                sw = s @ w                                     # (d, k)
                a = w.T @ sw                                   # (k, k)
                lam = ridge * max(np.trace(a) / max(a.shape[0], 1), 1e-12)
                out = mu + np.linalg.solve(a + lam * np.eye(a.shape[0]), resid.T).T @ sw.T
        else:
            raise ValueError(f"unknown method {method!r}")
    if data_range is not None:
        out = np.clip(out, *data_range)
    return out


def follower_pass(spec, weights, x, y, units, *, batch_size: int = 32, lr: float = 0.05,
                  seed: int = 0) -> dict:
    """One pass of intra-group SGD over a dominator's data, seen from a hidden-1 follower.

    Plain mini-batch SGD on ``(x, y)`` (what the group computes, piece by piece or fused), one
    shuffled epoch.  Before each step the follower receives ``z = x_batch·W1[:, units]``.

    Returns
    -------
    dict
        ``z`` (list of ``(B, k)`` sums), ``batches`` (list of index arrays into ``x``),
        ``w1_steps`` (``W1[:, units]`` at every step, what the sums were computed with),
        ``w1_end`` (the whole ``W1`` after the pass: what the next dominator receives in the
        hand-over), ``errors`` (list of ``(B, classes)`` output errors ``softmax − onehot(y)``
        of each step: what backpropagation sends back through the pieces, so a follower sees
        them too; :func:`labels_from_output_errors` reads every label off them), ``acc`` (``Σ |mean gradient|`` of ``W1`` over the pass: the score by which
        the dominator picks the top-θ weights it uploads to the server) and ``weights`` (all
        parameters after the pass).
    """
    from crowdlearn.privacy.attacks.inversion import model_gradients

    rng = np.random.default_rng(seed)
    ws = [np.asarray(w, np.float64) for w in weights]
    units = np.asarray(units, np.int64)
    order = rng.permutation(len(x))
    zs, batches, w1s, errs = [], [], [], []
    acc = np.zeros_like(ws[0])
    for s in range(0, len(order), batch_size):
        bi = order[s:s + batch_size]
        xb = np.asarray(x, np.float64)[bi]
        w1s.append(ws[0][:, units].copy())
        zs.append(xb @ ws[0][:, units])
        batches.append(bi)
        if spec.loss == "sparse_ce":
            from crowdlearn.privacy.attacks.inversion import forward_logits
            logits = np.asarray(forward_logits(spec, ws, xb), np.float64)
            p = np.exp(logits - logits.max(axis=1, keepdims=True))
            p /= p.sum(axis=1, keepdims=True)
            p[np.arange(len(bi)), np.asarray(y)[bi]] -= 1.0
            errs.append(p)
        g = model_gradients(spec, ws, xb, np.asarray(y)[bi])
        acc += np.abs(g[0])
        ws = [w - lr * gi for w, gi in zip(ws, g, strict=True)]
    return {"z": zs, "batches": batches, "w1_steps": w1s, "w1_end": ws[0].copy(), "acc": acc,
            "weights": ws, "errors": errs}


def labels_from_output_errors(errors) -> np.ndarray:
    """Every label of a batch from its softmax output errors ``p − onehot(y)``.

    The error row of a sample is negative only at its label (``p_y − 1 < 0``, the others
    ``p_c ≥ 0``), so the argmin is the label exactly.

    >>> labels_from_output_errors([[0.2, -0.3, 0.1], [-0.9, 0.5, 0.4]]).tolist()
    [1, 0]
    """
    return np.argmin(np.asarray(errors, np.float64), axis=1)


# ---------------------------------------------------------------- the report
class PrivacyProbe:
    """The views a protocol's attacks need, attached to a simulation before it runs.

    Always a :class:`ModelTap`; plus the server view the protocol declares
    (:attr:`crowdlearn.registry.Protocol.server_view`: a :class:`DSSGDServerView` for ``dssgd``,
    a :class:`FedAvgServerView` for ``fedavg``).

    Examples
    --------
    ::

        sim = Simulation(cfg)
        probe = PrivacyProbe(sim)          # before run()
        res = sim.run()
        res.summary.update(privacy_report(sim, probe))
    """

    def __init__(self, sim, *, max_uploads: int = 64):
        self.protocol = sim.config.protocol
        self.tap = ModelTap()
        # the server view the protocol declares in the registry (none: only the reported models)
        self.server: _View | None = registry.server_view(registry.get(self.protocol), max_uploads)
        attach(sim, *[v for v in (self.tap, self.server) if v is not None])


def _cap(v: float) -> float | None:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return None
    return float(min(v, PSNR_CAP))


def _upload_leak(indices, values, spec, samples, prior, public, *, gamma, topk_bound: bool,
                 rng: np.random.Generator) -> dict | None:
    """Attack one upload as an attacker would, and score it beside two no-attack baselines.

    The attacker cannot see the samples, so it picks **one** candidate by its own criterion: the
    per-neuron ratio image with the most recovered pixels (ties: the largest ``|Δb1[j]|``), its
    gaps filled with the public ``prior`` (clipped into the top-k bound when ``topk_bound``).
    The evaluator then scores the choice against the uploader's nearest sample (PSNR, data range
    1), and scores the same way a random ``public`` image and the ``prior`` itself, which use
    nothing from the upload.
    """
    from crowdlearn.privacy.attacks.reconstruction import (
        first_layer,
        per_neuron_reconstructions,
        reconstruct_from_sparse,
    )

    nimg = per_neuron_reconstructions(indices, values, spec, gamma=gamma, topk_bound=topk_bound)
    if not nimg.neurons.size:
        return None
    visible = np.sum(~np.isnan(nimg.images), axis=1)
    layer = first_layer(spec)
    idx = np.asarray(indices, np.int64).reshape(-1)
    vals = np.asarray(values, np.float64).reshape(-1)
    bias = np.zeros(layer.h)
    inb = (idx >= layer.bias_offset) & (idx < layer.bias_offset + layer.h)
    bias[idx[inb] - layer.bias_offset] = np.abs(vals[inb])
    order = np.lexsort((-bias[nimg.neurons], -visible))          # most pixels, then |Δb|
    pick = nimg.filled("bounded" if topk_bound else "mean", mean=prior)[order[0]]
    xs = np.asarray(samples, np.float64)

    def nearest_psnr(img) -> float:
        err = ((xs - img[None, :]) ** 2).mean(axis=1).min()
        with np.errstate(divide="ignore"):
            return float(10 * np.log10(1.0 / err))

    rand = np.asarray(public[int(rng.integers(len(public)))], np.float64)
    rec = reconstruct_from_sparse(indices, values, spec, gamma=gamma)
    return {"psnr": nearest_psnr(pick), "random_public_psnr": nearest_psnr(rand),
            "prior_psnr": nearest_psnr(np.asarray(prior, np.float64)),
            "coverage": rec.coverage}


#: uploads the server's attacks score in :func:`privacy_report`: each run's first ones
ATTACKED_UPLOADS = 16


def privacy_report(sim, probe: PrivacyProbe, *, max_samples: int = 1000,
                   uploads: int = ATTACKED_UPLOADS,
                   seed: int = 0) -> dict:
    """Attack scores of a finished simulation, flat and JSON-ready (``summary.json``).

    Parameters
    ----------
    sim : crowdlearn.experiment.Simulation
        Run, with ``probe`` attached before the run.
    probe : PrivacyProbe
    max_samples : int
        Members and non-members per membership attack (seeded subsets).
    uploads : int
        Server-side uploads attacked (DSSGD uploads / FedAvg client updates, first ones).
    seed : int

    Returns
    -------
    dict
        ``membership_auc``, ``membership_advantage``, ``membership_max_advantage`` and
        ``membership_target`` ("global", "local" or "group") when a final model was captured;
        for dssgd and fedavg also the first-layer reconstruction of the attacked uploads (see
        :func:`_upload_leak`; means over uploads, PSNR to the uploader's nearest sample):
        ``reconstruction_psnr`` (the candidate the attacker picks without the truth),
        ``reconstruction_random_public_psnr`` (a random public test image: no attack),
        ``reconstruction_prior_psnr`` (the public mean image: no attack),
        ``reconstruction_coverage`` (pixels recovered by the max-bias ratio, a meaningful
        "exact" figure only for one-sample uploads), ``reconstruction_fill`` (``"bounded"``:
        gaps clipped into the top-k bound, used only for DSSGD's top-k selection without DP,
        where it holds; else ``"mean"``) and ``reconstruction_uploads``; ``epsilon`` when the
        run has DP.  The attacker knows the model architecture and the public test images;
        PSNRs are capped at :data:`PSNR_CAP`; missing figures are ``None``.
    """
    from crowdlearn.privacy.attacks import membership as mi

    ds, spec, parts = sim.dataset, sim.spec, sim.parts
    out: dict[str, Any] = {}
    tap = probe.tap
    if ds.task == "classification":
        m: dict | None = None
        if tap.global_model is not None:
            m = mi.membership_global_model(spec, tap.global_model, ds, parts,
                                           max_samples=max_samples, seed=seed)
            out["membership_target"] = "global"
        elif tap.local_models:
            m = mi.membership_local_models(spec, tap.local_models, ds, parts,
                                           max_samples=max_samples, seed=seed)
            out["membership_target"] = "local"
        elif tap.group_models and "groups" in sim.ctx.extra:
            m = mi.membership_group_models(spec, tap.group_models, sim.ctx.extra["groups"], ds,
                                           parts, max_samples=max_samples, seed=seed)
            out["membership_target"] = "group"
        if m:
            out["membership_auc"] = m["auc"]
            out["membership_advantage"] = m["advantage"]
            out["membership_max_advantage"] = m["max_advantage"]
    # the run's ledger (participants' privacy_charge reports), else a protocol's own report
    eps = sim.monitor.device_epsilon() if getattr(sim, "monitor", None) is not None else None
    eps = tap.epsilon if eps is None else eps
    if eps is not None:
        out["epsilon"] = eps
    server = probe.server
    records = []
    gamma = None
    if isinstance(server, DSSGDServerView):
        gamma = sim.config.dssgd.gamma
        records = [(u.device, u.indices, u.values) for u in server.uploads[:uploads]]
    elif isinstance(server, FedAvgServerView):
        from crowdlearn.privacy.attacks.reconstruction import dense_to_sparse
        for u in server.updates[:uploads]:
            idx, val = dense_to_sparse(u.delta)
            records.append((u.device, idx, val))
    # -- encrypted ASGD (phong, hres): the server colluding with participant 0 attacks what that
    # coalition can decrypt of the other participants' uploads (Phong et al.'s threat model) --
    # (declared in the registry as the protocol's attack_records)
    decl = registry.get(sim.config.protocol)
    if decl.attack_records is not None:
        fields, more = decl.attack_records(sim, max(0, uploads - len(records)))
        out.update(fields)
        records.extend(more)
    if records and ds.image_shape is not None:
        from crowdlearn.privacy.attacks.reconstruction import first_layer
        try:
            first_layer(spec)
        except ValueError:
            records = []
        public = np.asarray(ds.x_test, np.float64).reshape(len(ds.x_test), -1)
        prior = public.mean(axis=0)                      # every prior from public data
        cfg = sim.config
        topk_bound = bool(isinstance(server, DSSGDServerView) and not cfg.dssgd.dp
                          and cfg.dssgd.selection == "topk")
        rng = np.random.default_rng([seed, 0x5EED])
        rows = []
        for dev, idx, val in records:
            samples = np.asarray(ds.x_train[np.asarray(parts[dev])], np.float64)
            samples = samples.reshape(len(samples), -1)
            r = _upload_leak(idx, val, spec, samples, prior, public, gamma=gamma,
                             topk_bound=topk_bound, rng=rng)
            if r is not None:
                rows.append(r)
        if rows:
            for key in ("psnr", "random_public_psnr", "prior_psnr"):
                out[f"reconstruction_{key}"] = _cap(float(np.mean([r[key] for r in rows])))
            out["reconstruction_coverage"] = float(np.mean([r["coverage"] for r in rows]))
            out["reconstruction_fill"] = "bounded" if topk_bound else "mean"
        out["reconstruction_uploads"] = len(rows)
    return {k: (None if isinstance(v, float) and math.isnan(v) else v) for k, v in out.items()}
