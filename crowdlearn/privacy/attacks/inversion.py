"""Gradient inversion by optimisation: find inputs whose gradients match the observed ones.

An observer that knows the model (architecture and the weights the update started from) and a
gradient ``g*`` computed on a private batch of ``B`` samples optimises ``B`` dummy inputs ``x̂``
(and, unless known, their labels) so that the model's gradient on ``(x̂, ŷ)`` matches ``g*``:

* ``loss="l2"`` -- Zhu et al.'s Deep Leakage from Gradients: ``‖∇θ L(x̂, ŷ) − g*‖²``;
* ``loss="cosine"`` (default) -- Geiping et al.: ``1 − cos(∇θ L(x̂, ŷ), g*)`` over the whole
  flattened gradient, plus an optional total-variation prior ``tv · TV(x̂)``.  Scale-invariant,
  so an SGD change ``Δw = −lr·g`` can be used as is, without knowing ``lr``.

Labels: ``"infer"`` reads them off the output-bias gradient (Zhao et al.'s iDLG for one sample:
the only negative entry of ``softmax − onehot`` is the true class; for ``B > 1`` the count of
class ``c`` is estimated as ``B·(p̄_c − g_c)`` with ``p̄_c`` the model's mean predicted
probability, ``1/C`` unless given -- the estimator of Wainakh et al.'s LLG), ``"soft"`` optimises
label logits jointly as DLG does, or an explicit integer array.

Optimisation: Adam on the dummy inputs, projected onto the data range after every step
(box constraint), ``restarts`` random initialisations of which the one with the lowest final
matching loss is kept (the attacker cannot see the truth).  The observed gradient may be partial:
``mask`` lists the flat parameter indices that are visible (a DSSGD upload), and only those
entries are matched.

Scoring: :func:`match_and_score` pairs reconstructions with the true samples by the Hungarian
algorithm on their MSE (``scipy.optimize.linear_sum_assignment``), then reports PSNR and SSIM
per pair.  The model code here (:func:`forward_logits`) supports the dense, conv2d, maxpool and
flatten layers of :class:`~crowdlearn.training.models.ModelSpec` with the same ops as the
trainers; this module imports TensorFlow (ring 1).

References
----------
L. Zhu, Z. Liu, S. Han, "Deep Leakage from Gradients", NeurIPS 2019.
J. Geiping, H. Bauermeister, H. Dröge, M. Moeller, "Inverting Gradients -- How easy is it to
break privacy in federated learning?", NeurIPS 2020.
B. Zhao, K. R. Mopuri, H. Bilen, "iDLG: Improved Deep Leakage from Gradients", arXiv:2001.02610,
2020.
A. Wainakh, F. Ventola, T. Müßig, J. Keim, C. Garcia Cordero, E. Zimmer, T. Grube, K. Kersting,
M. Mühlhäuser, "User-Level Label Leakage from Gradients in Federated Learning", PETS 2022.

Examples
--------
>>> import numpy as np
>>> from crowdlearn.training.models import mlp
>>> spec = mlp(16, [32], 4)
>>> w = spec.init_weights(np.random.default_rng(0))
>>> x = np.random.default_rng(1).uniform(size=(1, 16)).astype("float32")
>>> g = model_gradients(spec, w, x, np.array([2]))
>>> int(infer_labels(g[-1], 1)[0])
2
>>> res = invert_gradients(spec, w, g, 1, iterations=200, seed=0)
>>> bool(match_and_score(x, res.x)["psnr_mean"] > 30)
True
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import tensorflow as tf
from scipy.optimize import linear_sum_assignment

from crowdlearn.privacy.attacks import metrics
from crowdlearn.training.fleet_trainer import _forward_single

__all__ = [
    "InversionResult",
    "forward_logits",
    "infer_labels",
    "invert_gradients",
    "match_and_score",
    "mean_probs",
    "model_gradients",
    "per_sample_losses",
]



# ---------------------------------------------------------------- the model in TF
def forward_logits(spec, params: Sequence, x) -> tf.Tensor:
    """Logits ``[B, out]`` of a :class:`~crowdlearn.training.models.ModelSpec` on flat ``x``.

    It *is* the fleet trainer's single-model forward pass, so the gradients attacked are
    exactly those the trainers compute.
    """
    return _forward_single(spec, list(params), tf.convert_to_tensor(x, tf.float32))


def _per_sample_loss(spec, logits, y) -> tf.Tensor:
    if spec.loss == "sparse_ce":
        return tf.nn.sparse_softmax_cross_entropy_with_logits(labels=tf.cast(y, tf.int32),
                                                              logits=logits)
    return tf.math.squared_difference(logits[:, 0], tf.cast(y, tf.float32))


def model_gradients(spec, weights: Sequence, x, y) -> list[np.ndarray]:
    """Gradient of the **mean** loss over the batch ``(x, y)`` w.r.t. every parameter array.

    This is what one SGD step of the trainers uses (``Δw = −lr · gradient``) and what
    FedSGD-style protocols share.

    Examples
    --------
    >>> from crowdlearn.training.models import linear
    >>> g = model_gradients(linear(2, 2), [np.zeros((2, 2)), np.zeros(2)], [[1.0, 0.0]], [1])
    >>> g[1].tolist()                     # softmax(0) - onehot(1)
    [0.5, -0.5]
    """
    ps = [tf.constant(np.asarray(w, np.float32)) for w in weights]
    xt = tf.constant(np.asarray(x, np.float32).reshape(-1, spec.input_dim))
    yt = tf.constant(np.asarray(y).reshape(-1))
    with tf.GradientTape() as tape:
        tape.watch(ps)
        loss = tf.reduce_mean(_per_sample_loss(spec, forward_logits(spec, ps, xt), yt))
    return [g.numpy().astype(np.float64) for g in tape.gradient(loss, ps)]


def per_sample_losses(spec, weights: Sequence, x, y, *, batch_size: int = 2048) -> np.ndarray:
    """Per-sample loss (cross-entropy or squared error) of a model, float64 ``(N,)``.

    Examples
    --------
    >>> from crowdlearn.training.models import linear
    >>> per_sample_losses(linear(2, 2), [np.zeros((2, 2)), np.zeros(2)], np.eye(2), [0, 1]).round(4)
    array([0.6931, 0.6931])
    """
    ps = [tf.constant(np.asarray(w, np.float32)) for w in weights]
    x = np.asarray(x, np.float32).reshape(-1, spec.input_dim)
    y = np.asarray(y).reshape(-1)
    out = []
    for s in range(0, len(x), batch_size):
        logits = forward_logits(spec, ps, tf.constant(x[s:s + batch_size]))
        out.append(_per_sample_loss(spec, logits, tf.constant(y[s:s + batch_size])).numpy())
    return np.concatenate(out).astype(np.float64) if out else np.zeros(0)


# ---------------------------------------------------------------- labels
def mean_probs(spec, weights: Sequence, x_public) -> np.ndarray:
    """The model's mean softmax output on public inputs: ``p̄`` for :func:`infer_labels`.

    An attacker holding data of the same kind (the prior of the other attacks) estimates the
    mean predicted probabilities of the private batch with it.
    """
    ps = [tf.constant(np.asarray(w, np.float32)) for w in weights]
    logits = forward_logits(spec, ps, np.asarray(x_public, np.float32).reshape(-1, spec.input_dim))
    return tf.nn.softmax(logits).numpy().mean(axis=0).astype(np.float64)


def infer_labels(grad_out_bias, batch_size: int, *, mean_probs=None) -> np.ndarray:
    """Labels of the batch from the gradient of the mean loss w.r.t. the output bias.

    ``g_c = p̄_c − n_c / B`` for softmax cross-entropy, with ``n_c`` the count of class ``c``
    in the batch and ``p̄_c`` the mean predicted probability.  ``B = 1``: the class of the one
    negative entry (iDLG).  ``B > 1``: counts ``B·(p̄_c − g_c)`` rounded by largest remainders to
    sum to ``B`` (LLG), with ``p̄_c = mean_probs`` if given, else ``1/C``.

    Returns
    -------
    numpy.ndarray
        ``(B,)`` int64 labels, sorted.

    Examples
    --------
    >>> infer_labels(np.array([0.1, -0.9, 0.3, 0.5]), 1).tolist()
    [1]
    >>> infer_labels(np.array([0.25, -0.25, -0.25, 0.25]), 2).tolist()
    [1, 2]
    """
    g = np.asarray(grad_out_bias, np.float64).reshape(-1)
    c = g.size
    b = int(batch_size)
    if b == 1:
        return np.array([int(np.argmin(g))])
    p = np.full(c, 1.0 / c) if mean_probs is None else np.asarray(mean_probs, np.float64)
    est = np.clip(b * (p - g), 0, None)
    if est.sum() > 0:
        est = est * (b / est.sum())
    counts = np.floor(est).astype(np.int64)
    rest = b - int(counts.sum())
    if rest > 0:
        order = np.argsort(-(est - counts), kind="stable")
        counts[order[:rest]] += 1
    return np.repeat(np.arange(c), counts)


# ---------------------------------------------------------------- inversion
@dataclass
class InversionResult:
    """Output of :func:`invert_gradients`.

    Attributes
    ----------
    x : numpy.ndarray
        ``(B, d)`` float32 reconstructed inputs (in the data range).
    labels : numpy.ndarray
        ``(B,)`` labels used or found (argmax of the soft labels with ``labels="soft"``).
    loss : float
        Final gradient-matching loss of the kept restart.
    history : list of float
        Matching loss every 10 iterations of the kept restart.
    """

    x: np.ndarray
    labels: np.ndarray
    loss: float
    history: list = field(default_factory=list)


def _flat(gs) -> tf.Tensor:
    return tf.concat([tf.reshape(g, [-1]) for g in gs], axis=0)


def _tv(x, image_shape) -> tf.Tensor:
    if image_shape is None:
        return tf.constant(0.0)
    img = tf.reshape(x, [-1, image_shape[0], image_shape[1]])
    return (tf.reduce_mean(tf.abs(img[:, 1:, :] - img[:, :-1, :]))
            + tf.reduce_mean(tf.abs(img[:, :, 1:] - img[:, :, :-1])))


def invert_gradients(spec, weights: Sequence, observed, batch_size: int, *, labels="infer",
                     loss: str = "cosine", iterations: int = 300, lr: float = 0.1,
                     tv: float = 0.0, image_shape: Sequence[int] | None = None,
                     data_range: tuple[float, float] = (0.0, 1.0), mask=None,
                     unseen: str = "ignore", restarts: int = 1, seed: int = 0,
                     mean_probs=None) -> InversionResult:
    """Reconstruct a batch from its gradient by gradient matching (DLG / Geiping et al.).

    Parameters
    ----------
    spec : ModelSpec
        The attacked model (``sparse_ce`` loss for label inference).
    weights : sequence of array
        Parameters at which ``observed`` was computed (the weights the client started from).
    observed : sequence of array, or 1-D array
        The observed gradient (list in ``param_shapes()`` order, or flat).  A one-step SGD
        change ``Δw = −lr·g`` works too: pass ``-Δw`` with ``loss="cosine"``, which ignores the
        scale (``lr`` need not be known).
    batch_size : int
        ``B``, the number of samples behind the gradient (assumed known).
    labels : "infer", "soft" or array_like of int
        See the module docstring.
    loss : {"cosine", "l2"}
        Geiping et al.'s cosine distance or DLG's squared distance.
    iterations : int
        Adam steps per restart.
    lr : float
        Adam step size on the inputs (data range 1).
    tv : float
        Weight of the total-variation prior (needs ``image_shape``).
    image_shape : (H, W[, C]), optional
        For the TV prior.
    data_range : (float, float)
        Box the inputs are projected onto.
    mask : array_like of int, optional
        Flat indices of the visible entries of the gradient; only those are matched.  With a
        mask, ``observed`` may be the flat values of those entries only (same length as mask).
    unseen : {"ignore", "zero"}
        With a mask: match the visible entries only, or take every unseen entry as 0 and match
        the whole vector (a top-k-aware attacker: the entries left out are the smallest, and
        most zero-pixel entries are exactly 0).  With partial visibility of the output bias,
        label inference always takes the unseen entries as 0.
    restarts : int
        Random initialisations; the one with the lowest final matching loss is returned.
    seed : int
        Seed of the initialisations.
    mean_probs : array_like, optional
        ``p̄`` for label inference with ``B > 1``.

    Returns
    -------
    InversionResult

    References
    ----------
    Zhu et al., NeurIPS 2019 (``loss="l2"``, soft labels); Geiping et al., NeurIPS 2020
    (``loss="cosine"``, TV prior, box constraint); Zhao et al., 2020 and Wainakh et al., PETS
    2022 (label inference).
    """
    ps = [tf.constant(np.asarray(w, np.float32)) for w in weights]
    sizes = [int(np.prod(np.shape(w))) for w in weights]
    total = sum(sizes)
    if isinstance(observed, (list, tuple)):
        target = np.concatenate([np.asarray(g, np.float64).reshape(-1) for g in observed])
    else:
        target = np.asarray(observed, np.float64).reshape(-1)
    if mask is not None:
        mask = np.asarray(mask, np.int64).reshape(-1)
        if target.size == total:
            target = target[mask]
        if target.size != mask.size:
            raise ValueError(f"observed has {target.size} values for a mask of {mask.size}")
    elif target.size != total:
        raise ValueError(f"observed has {target.size} values; the model has {total}")
    if unseen not in ("ignore", "zero"):
        raise ValueError(f"unseen must be 'ignore' or 'zero'; got {unseen!r}")
    dense = None
    if mask is not None:
        dense = np.zeros(total)
        dense[mask] = target
        if unseen == "zero":
            target, mask = dense, None
    tgt = tf.constant(target.astype(np.float32))
    mask_t = None if mask is None else tf.constant(mask)
    b, d = int(batch_size), spec.input_dim
    c = spec.num_outputs
    lo, hi = data_range
    soft = isinstance(labels, str) and labels == "soft"
    if isinstance(labels, str) and labels == "infer":
        if spec.loss != "sparse_ce":
            raise ValueError("label inference needs a sparse_ce model; pass labels=")
        gb = (dense if dense is not None else target)[total - c:]
        y_fixed = infer_labels(gb, b, mean_probs=mean_probs)
    elif soft:
        y_fixed = None
    else:
        y_fixed = np.asarray(labels).reshape(-1)
        if y_fixed.size != b:
            raise ValueError(f"{y_fixed.size} labels for a batch of {b}")
    tv_w = float(tv)
    img = tuple(image_shape[:2]) if image_shape is not None else None

    def match(xv, lv):
        with tf.GradientTape() as inner:
            inner.watch(ps)
            logits = forward_logits(spec, ps, xv)
            if soft:
                per = tf.nn.softmax_cross_entropy_with_logits(labels=tf.nn.softmax(lv),
                                                              logits=logits)
            else:
                per = _per_sample_loss(spec, logits, tf.constant(y_fixed))
            ce = tf.reduce_mean(per)
        g = _flat(inner.gradient(ce, ps))
        if mask_t is not None:
            g = tf.gather(g, mask_t)
        if loss == "cosine":
            m = 1.0 - tf.reduce_sum(g * tgt) / (tf.norm(g) * tf.norm(tgt) + 1e-12)
        else:
            m = tf.reduce_sum(tf.square(g - tgt))
        return m

    if loss not in ("cosine", "l2"):
        raise ValueError(f"loss must be 'cosine' or 'l2'; got {loss!r}")

    beta1, beta2, eps = 0.9, 0.999, 1e-8

    def body(t, xv, lv, mx, vx, ml, vl, hist):
        with tf.GradientTape() as outer:
            outer.watch([xv, lv])
            m = match(xv, lv)
            obj = m + tv_w * _tv(xv, img) if (tv_w and img) else m
        gx, gl = outer.gradient(obj, [xv, lv], unconnected_gradients="zero")
        tf_t = tf.cast(t + 1, tf.float32)
        mx = beta1 * mx + (1 - beta1) * gx
        vx = beta2 * vx + (1 - beta2) * gx * gx
        step = lr * (mx / (1 - beta1**tf_t)) / (tf.sqrt(vx / (1 - beta2**tf_t)) + eps)
        xv = tf.clip_by_value(xv - step, lo, hi)
        ml = beta1 * ml + (1 - beta1) * gl
        vl = beta2 * vl + (1 - beta2) * gl * gl
        lv = lv - lr * (ml / (1 - beta1**tf_t)) / (tf.sqrt(vl / (1 - beta2**tf_t)) + eps)
        return t + 1, xv, lv, mx, vx, ml, vl, hist.write(t, m)

    # an explicit while_loop (no AutoGraph: it re-reads the source file at trace time)
    @tf.function(autograph=False)
    def run(x0, l0, n_iter):
        zx, zl = tf.zeros_like(x0), tf.zeros_like(l0)
        hist = tf.TensorArray(tf.float32, size=n_iter)
        out = tf.while_loop(lambda t, *_: t < n_iter, body,
                            (tf.constant(0), x0, l0, zx, zx, zl, zl, hist))
        xv, lv = out[1], out[2]
        return xv, lv, match(xv, lv), out[7].stack()

    rng = np.random.default_rng(seed)
    best = None
    for _ in range(max(1, int(restarts))):
        x0 = rng.uniform(lo, hi, size=(b, d)).astype(np.float32)
        l0 = rng.normal(size=(b, c)).astype(np.float32)
        xr, lr_, m, hist = run(tf.constant(x0), tf.constant(l0), tf.constant(int(iterations)))
        m = float(m)
        if best is None or (math.isfinite(m) and m < best.loss):
            labs = np.argmax(lr_.numpy(), axis=1) if soft else np.asarray(y_fixed)
            best = InversionResult(xr.numpy(), labs, m,
                                   [float(h) for h in hist.numpy()[9::10]])
    return best


# ---------------------------------------------------------------- scoring
def match_and_score(x_true, x_hat, *, image_shape: Sequence[int] | None = None,
                    data_range: tuple[float, float] = (0.0, 1.0)) -> dict:
    """Pair reconstructions with true samples (Hungarian on MSE) and score each pair.

    Parameters
    ----------
    x_true, x_hat : array_like
        ``(B, d)`` true and reconstructed flat inputs (``B`` may differ: the smaller set is
        matched).
    image_shape : (H, W[, C]), optional
        For SSIM (flat square images need none).
    data_range : (float, float)

    Returns
    -------
    dict
        ``assignment`` (list of ``(true index, reconstruction index)``), ``psnr`` and ``ssim``
        (lists per pair), ``psnr_mean``, ``psnr_median``, ``ssim_mean``.

    Examples
    --------
    >>> a = np.array([[0.0, 0, 0, 0], [1, 1, 1, 1]])
    >>> match_and_score(a, a[::-1])["assignment"]
    [(0, 1), (1, 0)]
    """
    xt = np.asarray(x_true, np.float64).reshape(len(x_true), -1)
    xh = np.asarray(x_hat, np.float64).reshape(len(x_hat), -1)
    cost = ((xt[:, None, :] - xh[None, :, :]) ** 2).mean(axis=2)
    rows, cols = linear_sum_assignment(cost)
    r = data_range[1] - data_range[0]
    ps = [metrics.psnr(xt[i], xh[j], data_range=r) for i, j in zip(rows, cols, strict=True)]
    can_ssim = image_shape is not None or math.isqrt(xt.shape[1]) ** 2 == xt.shape[1]
    ss = [metrics.ssim(xt[i], xh[j], data_range=r, image_shape=image_shape) if can_ssim
          else math.nan for i, j in zip(rows, cols, strict=True)]
    finite = np.asarray(ps, np.float64)
    return {"assignment": [(int(i), int(j)) for i, j in zip(rows, cols, strict=True)],
            "psnr": ps, "ssim": ss,
            "psnr_mean": float(np.mean(finite)) if finite.size else math.nan,
            "psnr_median": float(np.median(finite)) if finite.size else math.nan,
            "ssim_mean": float(np.mean(ss)) if ss else math.nan}
