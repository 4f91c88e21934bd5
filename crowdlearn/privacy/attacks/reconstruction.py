"""Input reconstruction from shared first-layer gradients (Phong et al. 2018).

The observation
---------------
For a dense first layer ``h = act(x·W1 + b1)`` and a **single** sample ``x``, back-propagation
gives ``∂L/∂W1[i, j] = x_i · δ_j`` and ``∂L/∂b1[j] = δ_j`` with ``δ_j = ∂L/∂(x·W1 + b1)_j``.  So
for every hidden neuron ``j`` with ``δ_j ≠ 0``::

    x_i = (∂L/∂W1[i, j]) / (∂L/∂b1[j])        for every input i,

exactly.  The same holds for what DSSGD actually uploads, the change ``Δw`` over a local epoch,
whenever every step of that epoch saw the same single sample: each step adds
``−lr · x ⊗ δ_t`` to the kernel and ``−lr · δ_t`` to the bias, so the ratio of the sums is still
``x`` (one step, ``Δw = −lr·g``, is the special case).  With several samples the ratio of column
``j`` is the mixture ``Σ_n c_nj x_n / Σ_n c_nj`` of the samples that activated neuron ``j`` (and,
across steps, the weights moved in between): approximate, but a neuron that fired for one sample
only still yields that sample.

What a DSSGD server sees
------------------------
Only the top ``θu`` fraction of ``|Δw|`` (indices into the flat parameter vector and values,
clipped to ``[−γ, γ]``).  :func:`reconstruct_from_sparse` recovers pixel ``i`` whenever some
neuron ``j`` has both ``Δw[i, j]`` and ``Δb[j]`` visible (and neither clipped: a value at ``±γ``
is censored, the attacker knows ``γ`` and drops those).  Pixels with ``x_i = 0`` never produce a
non-zero kernel change, so top-k never uploads them: the attack cannot recover them exactly, but
top-k leaks a bound -- every kernel entry left out of a column whose bias is visible has
``|Δw[i, j]| ≤ t``, the smallest uploaded magnitude, hence ``|x_i| ≤ t / |Δb[j]|``
(:attr:`SparseReconstruction.upper_bound`).  **[ours]** Missing pixels are filled with the dataset
mean (``fill="mean"``) or with the mean clipped into that bound (``fill="bounded"``).

Layout: the first layer must be dense; its kernel ``(d, h)`` and bias ``(h,)`` are the first two
arrays of ``ModelSpec.param_shapes()`` (Keras order), flattened row-major into the parameter
vector (:func:`crowdlearn.protocols.dssgd.flatten`), so entry ``(i, j)`` of the kernel is flat
index ``i·h + j`` and bias ``j`` is ``d·h + j``.

References
----------
L. T. Phong, Y. Aono, T. Hayashi, L. Wang, S. Moriai, "Privacy-Preserving Deep Learning via
Additively Homomorphic Encryption", IEEE Transactions on Information Forensics and Security 13(5),
2018 (section 3: "gradients leak information").
R. Shokri, V. Shmatikov, "Privacy-Preserving Deep Learning", ACM CCS 2015 (the uploads attacked).

Examples
--------
Exact recovery from a one-sample gradient, by hand:

>>> import numpy as np
>>> x, delta = np.array([0.2, 0.0, 0.7]), np.array([0.0, -0.5, 0.25])
>>> reconstruct_from_first_layer(np.outer(x, delta), delta).tolist()
[0.2, 0.0, 0.7]
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from crowdlearn.privacy.attacks import metrics

__all__ = [
    "FirstLayer",
    "NeuronImages",
    "SparseReconstruction",
    "dense_to_sparse",
    "dssgd_participant_upload",
    "first_layer",
    "per_neuron_reconstructions",
    "reconstruct_from_first_layer",
    "reconstruct_from_sparse",
    "score_reconstruction",
]


# ---------------------------------------------------------------- layout
@dataclass(frozen=True)
class FirstLayer:
    """Where the first dense layer lives in the flat parameter vector.

    Attributes
    ----------
    d, h : int
        Inputs and hidden units of the first layer.
    kernel_offset, bias_offset : int
        Flat index of ``W1[0, 0]`` and of ``b1[0]``.
    size : int
        Length of the whole flat parameter vector.
    """

    d: int
    h: int
    kernel_offset: int
    bias_offset: int
    size: int


def first_layer(spec_or_shapes) -> FirstLayer:
    """The :class:`FirstLayer` of a ``ModelSpec`` (or of its ``param_shapes()`` list).

    Raises
    ------
    ValueError
        If the first parameter array is not a dense kernel followed by its bias (e.g. a CNN).

    Examples
    --------
    >>> from crowdlearn.training.models import mlp
    >>> first_layer(mlp(64, [32], 10))
    FirstLayer(d=64, h=32, kernel_offset=0, bias_offset=2048, size=2410)
    """
    shapes = spec_or_shapes.param_shapes() if hasattr(spec_or_shapes, "param_shapes") \
        else [tuple(s) for s in spec_or_shapes]
    if len(shapes) < 2 or len(shapes[0]) != 2 or tuple(shapes[1]) != (shapes[0][1],):
        raise ValueError(f"the first layer must be dense (kernel (d, h), bias (h,)); got shapes "
                         f"{shapes[:2]}")
    d, h = shapes[0]
    size = int(sum(math.prod(s) for s in shapes))
    return FirstLayer(int(d), int(h), 0, int(d * h), size)


# ---------------------------------------------------------------- full gradients
def reconstruct_from_first_layer(grad_w1, grad_b1, *, per_neuron: bool = False,
                                 min_bias: float = 0.0) -> np.ndarray:
    """Phong et al.'s ratio: the input from a first-layer kernel gradient and bias gradient.

    Parameters
    ----------
    grad_w1 : array_like, shape (d, h)
        Gradient (or one-sample SGD change) of the first dense kernel.
    grad_b1 : array_like, shape (h,)
        Gradient (or change) of its bias.
    per_neuron : bool
        Return one reconstruction per neuron with ``|grad_b1[j]| > min_bias`` instead of the
        one from the neuron with the largest ``|grad_b1[j]|`` (the best-conditioned ratio).
    min_bias : float
        Neurons whose bias gradient is at most this in magnitude are ignored.

    Returns
    -------
    numpy.ndarray
        ``(d,)`` float64; with ``per_neuron``, ``(k, d)`` for the ``k`` usable neurons (ordered
        by decreasing ``|grad_b1|``).  All-``nan`` (or ``(0, d)``) when no neuron is usable, e.g.
        every ReLU was inactive.

    Notes
    -----
    Exact for one sample (up to float rounding); for a batch of ``B`` samples the ratio of
    column ``j`` is ``Σ_n δ_nj x_n / Σ_n δ_nj``, a mixture of the samples that reached neuron
    ``j`` (see the module docstring).

    References
    ----------
    Phong et al., IEEE TIFS 13(5), 2018, section 3.
    """
    gw = np.asarray(grad_w1, np.float64)
    gb = np.asarray(grad_b1, np.float64).reshape(-1)
    if gw.ndim != 2 or gw.shape[1] != gb.size:
        raise ValueError(f"grad_w1 must be (d, h) and grad_b1 (h,); got {gw.shape}, {gb.shape}")
    usable = np.flatnonzero(np.abs(gb) > min_bias)
    usable = usable[np.argsort(-np.abs(gb[usable]), kind="stable")]
    if per_neuron:
        return (gw[:, usable] / gb[usable]).T
    if not usable.size:
        return np.full(gw.shape[0], np.nan)
    j = usable[0]
    return gw[:, j] / gb[j]


# ---------------------------------------------------------------- sparse uploads
@dataclass
class SparseReconstruction:
    """What :func:`reconstruct_from_sparse` recovered from one upload.

    Attributes
    ----------
    x : numpy.ndarray
        ``(d,)`` float64 reconstruction, ``nan`` where the pixel was not recovered.
    mask : numpy.ndarray
        ``(d,)`` bool, the recovered pixels.
    neurons : int
        Hidden neurons whose (unclipped, non-zero) bias change was visible.
    candidates : numpy.ndarray
        ``(d,)`` int, how many neurons gave an estimate of each pixel.
    upper_bound : numpy.ndarray
        ``(d,)`` float64 bound on ``|x_i|`` from the top-k threshold (``inf`` where none; only
        meaningful for ``topk`` selection).
    censored : int
        Uploaded first-layer entries dropped because they sat at the clipping bound ``±γ``.
    """

    x: np.ndarray
    mask: np.ndarray
    neurons: int
    candidates: np.ndarray
    upper_bound: np.ndarray
    censored: int = 0
    extra: dict = field(default_factory=dict)

    @property
    def coverage(self) -> float:
        """Fraction of pixels recovered."""
        return float(self.mask.mean()) if self.mask.size else 0.0

    def filled(self, fill="mean", *, mean=None, data_range: tuple[float, float] = (0.0, 1.0)
               ) -> np.ndarray:
        """The reconstruction with missing pixels filled.

        Parameters
        ----------
        fill : {"mean", "bounded", "zero"} or array_like
            ``"mean"``: the dataset mean image ``mean``; ``"bounded"``: the mean clipped into
            ``[-upper_bound, upper_bound]`` (and ``data_range``); ``"zero"``; or an explicit
            ``(d,)`` image.
        mean : array_like, optional
            The attacker's prior mean image (needed for ``"mean"`` and ``"bounded"``).
        data_range : (float, float)
            Recovered and filled values are clipped to it.
        """
        lo, hi = data_range
        if isinstance(fill, str):
            if fill == "zero":
                base = np.zeros_like(self.x)
            elif fill in ("mean", "bounded"):
                if mean is None:
                    raise ValueError(f"fill={fill!r} needs the prior mean image")
                base = np.asarray(mean, np.float64).reshape(-1).copy()
                if fill == "bounded":
                    ub = self.upper_bound
                    base = np.clip(base, -ub, ub)
            else:
                raise ValueError(f"unknown fill {fill!r}")
        else:
            base = np.asarray(fill, np.float64).reshape(-1).copy()
        out = np.where(self.mask, self.x, base)
        return np.clip(out, lo, hi)


def _split(indices, values, layer: FirstLayer):
    idx = np.asarray(indices, np.int64).reshape(-1)
    val = np.asarray(values, np.float64).reshape(-1)
    if idx.size != val.size:
        raise ValueError(f"{idx.size} indices for {val.size} values")
    ko, bo, d, h = layer.kernel_offset, layer.bias_offset, layer.d, layer.h
    in_k = (idx >= ko) & (idx < ko + d * h)
    in_b = (idx >= bo) & (idx < bo + h)
    k_idx, k_val = idx[in_k] - ko, val[in_k]
    b_idx, b_val = idx[in_b] - bo, val[in_b]
    return k_idx // h, k_idx % h, k_val, b_idx, b_val


def _censor(v: np.ndarray, gamma: float | None) -> np.ndarray:
    """True where a value is usable (not clipped at ±γ)."""
    if gamma is None or not math.isfinite(gamma):
        return np.ones(v.shape, bool)
    return np.abs(v) < gamma * (1 - 1e-6)


def reconstruct_from_sparse(indices, values, layout, *, gamma: float | None = None,
                            combine: str = "max_bias", min_bias: float = 0.0,
                            topk_bound: bool = True) -> SparseReconstruction:
    """Recover the pixels a sparse DSSGD upload reveals (Phong et al.'s ratio, entry by entry).

    Parameters
    ----------
    indices, values : array_like
        The upload: flat parameter indices and their (clipped) changes, as in
        :class:`crowdlearn.protocols.dssgd.SparseUpdate`.
    layout : FirstLayer, ModelSpec or list of shapes
        Where the first dense layer sits in the flat vector (see :func:`first_layer`).
    gamma : float, optional
        DSSGD's clipping bound: values with ``|v| ≥ γ`` are censored and not used.
    combine : {"max_bias", "median"}
        A pixel seen through several neurons: take the estimate of the neuron with the largest
        ``|Δb_j|`` (exact for one sample), or the median of all estimates (more robust when
        the upload mixes several samples).
    min_bias : float
        Neurons with ``|Δb_j| ≤ min_bias`` are not used.
    topk_bound : bool
        Compute :attr:`SparseReconstruction.upper_bound` from the smallest uploaded magnitude
        (valid when the participant used ``topk`` selection without DP).

    Returns
    -------
    SparseReconstruction

    References
    ----------
    Phong et al., IEEE TIFS 13(5), 2018 (the ratio); Shokri & Shmatikov, CCS 2015 (the upload).

    Examples
    --------
    >>> x, delta = np.array([0.5, 0.0, 0.25, 1.0]), np.array([0.1, 0.0, -0.2])
    >>> dw = np.concatenate([np.outer(x, delta).ravel(), delta])     # kernel (4, 3), bias (3,)
    >>> keep = np.argsort(-np.abs(dw), kind="stable")[:6]            # top-6 of 15 entries
    >>> r = reconstruct_from_sparse(keep, dw[keep], [(4, 3), (3,)])
    >>> r.x.round(6).tolist(), r.coverage
    ([0.5, nan, nan, 1.0], 0.5)
    """
    layer = layout if isinstance(layout, FirstLayer) else first_layer(layout)
    ri, rj, kv, bj, bv = _split(indices, values, layer)
    all_i, all_j = ri, rj
    d, h = layer.d, layer.h
    censored = int((~_censor(kv, gamma)).sum() + (~_censor(bv, gamma)).sum())
    okb = _censor(bv, gamma) & (np.abs(bv) > min_bias)
    bias = np.full(h, np.nan)
    bias[bj[okb]] = bv[okb]
    okk = _censor(kv, gamma) & ~np.isnan(bias[rj])
    ri, rj, kv = ri[okk], rj[okk], kv[okk]
    est = kv / bias[rj]
    x = np.full(d, np.nan)
    cand = np.bincount(ri, minlength=d).astype(np.int64)
    if est.size:
        if combine == "max_bias":
            order = np.lexsort((-np.abs(bias[rj]), ri))        # by pixel, then largest |Δb|
            first = np.unique(ri[order], return_index=True)[1]
            x[ri[order][first]] = est[order][first]
        elif combine == "median":
            order = np.argsort(ri, kind="stable")
            pix, starts = np.unique(ri[order], return_index=True)
            for p, chunk in zip(pix, np.split(est[order], starts[1:]), strict=True):
                x[p] = np.median(chunk)
        else:
            raise ValueError(f"combine must be 'max_bias' or 'median'; got {combine!r}")
    ub = np.full(d, np.inf)
    vis_b = np.flatnonzero(~np.isnan(bias))
    if topk_bound and vis_b.size and np.asarray(values).size:
        t = float(np.min(np.abs(np.asarray(values, np.float64))))
        seen = np.zeros((d, h), bool)
        seen[all_i, all_j] = True
        # for pixel i: min over visible-bias neurons j whose entry (i, j) was NOT uploaded
        ratio = t / np.abs(bias[vis_b])                       # (k,)
        cand_bound = np.where(seen[:, vis_b], np.inf, ratio[None, :])
        ub = cand_bound.min(axis=1)
    mask = ~np.isnan(x)
    return SparseReconstruction(x, mask, int(vis_b.size), cand, ub, censored)


@dataclass
class NeuronImages:
    """Per-neuron partial reconstructions (see :func:`per_neuron_reconstructions`).

    Attributes
    ----------
    neurons : numpy.ndarray
        ``(k,)`` hidden-neuron indices.
    images : numpy.ndarray
        ``(k, d)`` float64 ratios ``ΔW1[i, j] / Δb1[j]``, ``nan`` where not visible.
    upper_bound : numpy.ndarray
        ``(k, d)`` bound on the missing pixels of each image from the top-k threshold
        (``|x_i| ≤ t / |Δb1[j]|``), ``inf`` where no bound applies.
    """

    neurons: np.ndarray
    images: np.ndarray
    upper_bound: np.ndarray

    def filled(self, fill="bounded", *, mean=None,
               data_range: tuple[float, float] = (0.0, 1.0)) -> np.ndarray:
        """``(k, d)`` images with gaps filled (``"mean"``, ``"bounded"`` or ``"zero"``)."""
        if fill == "zero":
            base = np.zeros_like(self.images)
        else:
            if mean is None:
                raise ValueError(f"fill={fill!r} needs the prior mean image")
            base = np.broadcast_to(np.asarray(mean, np.float64).reshape(1, -1),
                                   self.images.shape)
            if fill == "bounded":
                base = np.clip(base, -self.upper_bound, self.upper_bound)
        out = np.where(np.isnan(self.images), base, self.images)
        return np.clip(out, *data_range)


def per_neuron_reconstructions(indices, values, layout, *, gamma: float | None = None,
                               min_pixels: int = 1, topk_bound: bool = True) -> NeuronImages:
    """One partial reconstruction per visible neuron: column ``j`` of ``ΔW1`` over ``Δb1[j]``.

    For uploads that mix several samples (a local epoch over many samples) each neuron's ratio
    is its own mixture of samples; a neuron that only one sample activated reveals that sample.

    Parameters
    ----------
    indices, values, layout, gamma, topk_bound
        As in :func:`reconstruct_from_sparse`.
    min_pixels : int
        Keep neurons with at least this many visible kernel entries.

    Returns
    -------
    NeuronImages

    Examples
    --------
    >>> x1, x2 = np.array([1.0, 0.0, 0.5]), np.array([0.0, 1.0, 1.0])
    >>> gw = np.outer(x1, [0.2, 0.0]) + np.outer(x2, [0.0, 0.4])   # neuron 0 saw x1, 1 saw x2
    >>> dw = np.concatenate([gw.ravel(), [0.2, 0.4]])
    >>> r = per_neuron_reconstructions(np.arange(dw.size), dw, [(3, 2), (2,)])
    >>> r.neurons.tolist(), r.filled("zero").tolist()
    ([0, 1], [[1.0, 0.0, 0.5], [0.0, 1.0, 1.0]])
    """
    layer = layout if isinstance(layout, FirstLayer) else first_layer(layout)
    ri, rj, kv, bj, bv = _split(indices, values, layer)
    all_i, all_j = ri, rj
    okb = _censor(bv, gamma) & (bv != 0)
    bias = np.full(layer.h, np.nan)
    bias[bj[okb]] = bv[okb]
    okk = _censor(kv, gamma) & ~np.isnan(bias[rj])
    ri, rj, kv = ri[okk], rj[okk], kv[okk]
    counts = np.bincount(rj, minlength=layer.h)
    neurons = np.flatnonzero(counts >= max(1, min_pixels))
    pos = np.full(layer.h, -1)
    pos[neurons] = np.arange(neurons.size)
    imgs = np.full((neurons.size, layer.d), np.nan)
    keep = pos[rj] >= 0
    imgs[pos[rj[keep]], ri[keep]] = kv[keep] / bias[rj[keep]]
    ub = np.full_like(imgs, np.inf)
    vals = np.asarray(values, np.float64)
    if topk_bound and neurons.size and vals.size:
        t = float(np.min(np.abs(vals)))
        seen = np.zeros((layer.d, layer.h), bool)
        seen[all_i, all_j] = True
        ub = np.where(seen[:, neurons].T, np.inf, (t / np.abs(bias[neurons]))[:, None])
    return NeuronImages(neurons, imgs, ub)


def dense_to_sparse(delta) -> tuple[np.ndarray, np.ndarray]:
    """A dense change (list of arrays, or flat) as ``(indices, values)`` of its non-zeros.

    What a FedAvg server sees (the whole update) in the sparse form the functions here take.
    """
    if isinstance(delta, (list, tuple)):
        flat = np.concatenate([np.asarray(a, np.float64).reshape(-1) for a in delta])
    else:
        flat = np.asarray(delta, np.float64).reshape(-1)
    idx = np.flatnonzero(flat)
    return idx, flat[idx]


# ---------------------------------------------------------------- scoring
def score_reconstruction(rec: SparseReconstruction, x_true, *, mean=None,
                         image_shape: Sequence[int] | None = None,
                         data_range: tuple[float, float] = (0.0, 1.0)) -> dict:
    """PSNR/SSIM of a sparse reconstruction: on the recovered pixels and with the gaps filled.

    Returns
    -------
    dict
        ``coverage`` (all pixels) and ``coverage_nonzero`` (of the true image's non-zero
        pixels, the only ones top-k can reveal exactly); ``max_abs_error`` and ``psnr_recovered`` on the recovered pixels;
        ``psnr_mean_fill``, ``ssim_mean_fill`` (gaps = dataset mean), ``psnr_bounded_fill``,
        ``ssim_bounded_fill`` (gaps = mean clipped into the top-k bound), and the baseline of
        guessing the mean image alone, ``psnr_mean_only``, ``ssim_mean_only``.  Fill scores are
        ``nan`` without ``mean``.
    """
    xt = np.asarray(x_true, np.float64).reshape(-1)
    rng_ = data_range[1] - data_range[0]
    nz = xt != 0
    out = {"coverage": rec.coverage,
           "coverage_nonzero": float(rec.mask[nz].mean()) if nz.any() else math.nan,
           "neurons": rec.neurons, "censored": rec.censored}
    if rec.mask.any():
        out["max_abs_error"] = float(np.max(np.abs(rec.x[rec.mask] - xt[rec.mask])))
        out["psnr_recovered"] = metrics.psnr(xt, np.nan_to_num(rec.x), data_range=rng_,
                                             mask=rec.mask)
    else:
        out["max_abs_error"] = math.nan
        out["psnr_recovered"] = math.nan
    nanv = {k: math.nan for k in ("psnr_mean_fill", "ssim_mean_fill", "psnr_bounded_fill",
                                  "ssim_bounded_fill", "psnr_mean_only", "ssim_mean_only")}
    if mean is None:
        out.update(nanv)
        return out
    shp = image_shape
    for name, img in (("mean_fill", rec.filled("mean", mean=mean, data_range=data_range)),
                      ("bounded_fill", rec.filled("bounded", mean=mean, data_range=data_range)),
                      ("mean_only", np.clip(np.asarray(mean, np.float64).reshape(-1),
                                            *data_range))):
        out[f"psnr_{name}"] = metrics.psnr(xt, img, data_range=rng_)
        out[f"ssim_{name}"] = metrics.ssim(xt, img, data_range=rng_, image_shape=shp) \
            if shp is not None or math.isqrt(xt.size) ** 2 == xt.size else math.nan
    return out


# ---------------------------------------------------------------- end-to-end helper
def dssgd_participant_upload(spec, weights, x_train, y_train, indices, *, theta_u: float = 0.1,
                             lr: float = 0.05, batch_size: int = 1, local_epochs: int = 1,
                             gamma: float = 0.05, selection: str = "topk", tau: float = 1e-3,
                             dp: bool = False, epsilon: float = 1.0, seed: int = 0,
                             trainer=None):
    """Run one real DSSGD participant turn and return its upload (end to end).

    Drives :class:`crowdlearn.protocols.dssgd.DSSGDParticipant` by hand: a turn grant, a full
    download (``θd = 1``) of ``weights``, the local epoch(s) as the participant's own
    :class:`~crowdlearn.training.jobs.TrainJob` run by a
    :class:`~crowdlearn.training.fleet_trainer.FleetTrainer`, then the participant's own
    selection and clipping -- exactly the message a DSSGD server receives.

    Parameters
    ----------
    spec : ModelSpec
    weights : sequence of array
        The global weights the participant downloads.
    x_train, y_train : array_like
        The shared training set ``indices`` point into.
    indices : array_like of int
        The participant's samples (one index: the one-sample case of Phong et al.).
    theta_u, lr, batch_size, local_epochs, gamma, selection, tau, dp, epsilon
        :class:`~crowdlearn.protocols.dssgd.DSSGDParams` fields.
    seed : int
        Seed of the participant's rng (batch order, tie-breaking, DP noise).
    trainer : FleetTrainer, optional
        Reuse one (built on the same ``x_train``, ``y_train``) across calls; building one per
        call costs a trace.

    Returns
    -------
    (update, delta) : (SparseUpdate, numpy.ndarray)
        The upload, and the participant's full flat ``Δw`` (float64) for reference.
    """
    # crowdlearn.config first: importing crowdlearn.protocols.dssgd before it fails on a
    # circular import (config registers dssgd's CONFIG_SECTION while dssgd imports config)
    import crowdlearn.config  # noqa: F401
    from crowdlearn.protocols.dssgd import (
        DSSGDParams,
        DSSGDParticipant,
        ParamsDownload,
        SparseUpdate,
        TurnGrant,
        flatten,
    )
    from sim.machine import JobDone, Received, RunJob, Send

    if trainer is None:
        from crowdlearn.training.fleet_trainer import FleetTrainer
        trainer = FleetTrainer(spec, x_train, y_train)
    params = DSSGDParams(rounds=1, theta_u=theta_u, lr=lr, batch_size=batch_size,
                         local_epochs=local_epochs, gamma=gamma, selection=selection, tau=tau,
                         dp=dp, epsilon=epsilon)
    p = DSSGDParticipant("attacked", spec, list(weights), np.asarray(indices, np.int64), params,
                         rng=np.random.default_rng(seed), server="server")
    p.handle(Received("server", TurnGrant(0)), 0.0)
    start = flatten(weights)
    eff = p.handle(Received("server", ParamsDownload(0, None, start.copy())), 0.0)
    job = next(e.job for e in eff if isinstance(e, RunJob))
    result = trainer.train([job.task])[0]
    eff = p.handle(JobDone(0, result), 0.0)
    up = next(e.message for e in eff if isinstance(e, Send)
              and isinstance(e.message, SparseUpdate))
    delta = flatten(result).astype(np.float64) - start
    return up, delta
