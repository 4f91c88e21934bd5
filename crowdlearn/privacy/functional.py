"""The functional mechanism: ε-DP by perturbing the coefficients of a polynomial objective (numpy).

Zhang et al. (2012) write a model's loss over a dataset ``D`` as a polynomial in the parameters,
``f_D(w) = Σ_φ λ_φ,D · φ(w)``, where the basis functions ``φ`` do not depend on the data, add
Laplace noise ``Lap(Δ/ε)`` **once** to every coefficient ``λ_φ`` (``Δ`` bounds the L1 change of the
coefficient vector when one row is replaced) and release the minimiser of the noisy polynomial.
The release is ε-DP (the Laplace mechanism on ``λ``, then post-processing), however many times the
noisy objective is re-solved afterwards.

Objectives (all quadratic; ``z`` a row with ``‖z‖₂ ≤ 1``, ``n`` rows)
-----------------------------------------------------------------------
``linear``
              least squares, exact:  ``Σ (y − zᵀw)² = Σ y² − 2 Σ y zᵀw + wᵀ(Σ z zᵀ)w``, ``y ∈ [−1, 1]``.
``logistic``
              Zhang et al.'s 2nd-order Taylor expansion of ``log(1 + e^{zᵀw}) − y zᵀw`` at
              ``zᵀw = 0``, ``y ∈ {0, 1}``:  ``n·log 2 + Σ (½ − y) zᵀw + ⅛ wᵀ(Σ z zᵀ)w``.
``softmax``
              **[ours]** (in the style of Phan et al. 2016) the output layer of a network, features
              ``h`` (``‖h‖₂ ≤ 1``), ``K`` classes, kernel ``W ∈ R^{d×K}`` (column ``k`` = ``w_k``),
              one-hot ``y``.  The cross-entropy ``logsumexp(Wᵀh) − yᵀWᵀh`` is expanded to 2nd order
              at ``Wᵀh = 0`` (gradient ``1/K``, Hessian ``(I − 11ᵀ/K)/K``)::

                  n·log K + Σ_jk G_jk W_jk + Σ_jl H_jl·Q_jl(W)
                  G = Σ h (1/K − y)ᵀ,   H = Σ h hᵀ,
                  Q_jl(W) = (1/2K) Σ_k W_jk W_lk − (1/2K²) (W1)_j (W1)_l.

              The basis functions ``Q_jl`` and ``W_jk`` are data independent, so the functional
              mechanism applies to the coefficients ``(H, G)`` directly; this has ``d(d+1)/2 + dK``
              coefficients instead of the ``O(d²K²)`` monomials of the expanded polynomial, and a
              ``2K``-fold better signal-to-noise ratio on the quadratic part.  The expansion is
              exact in value, gradient and Hessian at ``W = 0`` and degrades for large logits; like
              Zhang et al.'s logistic expansion it is a surrogate, not the loss.

Coefficients and noise
----------------------
The quadratic part ``wᵀMw`` (``M`` symmetric) has one coefficient per monomial ``w_j w_l``, ``j ≤ l``:
``M_jj`` and ``2·M_jl``.  Each gets its own ``Lap(Δ/ε)``; an off-diagonal noise ``η`` therefore
moves ``M_jl`` and ``M_lj`` by ``η/2`` each.  The linear coefficients and (``linear`` only, where it
depends on the data) the constant get one draw each.  Per row the L1 norm of the quadratic
coefficients is ``(Σ_j |z_j|)²``, of the linear ones ``2|y|Σ|z_j|`` (linear), ``|½ − y|Σ|z_j|``
(logistic), ``(2(K−1)/K)Σ|h_j|`` (softmax).  Replacing one row changes ``λ`` by at most twice the
per-row maximum.

Sensitivities :func:`sensitivity`, ``d`` = length of a row (features **plus** the intercept column):

========== =================================== ==================================================
objective  ``bound="spec"`` (``|z_j| ≤ 1``)     ``bound="l2"`` [ours] (``Σ|z_j| ≤ √d`` from ``‖z‖₂ ≤ 1``)
========== =================================== ==================================================
linear     ``2(1 + 2d + d²)``                   ``2(1 + 2√d + d)``
logistic   ``d²/4 + 3d`` (the spec)             ``√d + d/4``
softmax    ``2(d² + 2d(K−1)/K)`` [ours]         ``2(d + 2√d(K−1)/K)``
========== =================================== ==================================================

The spec's logistic value is larger than the ``d²/4 + d`` its own bound (``|z_j| ≤ 1``) gives; we
keep it (a larger Δ is still a valid, more conservative, choice).  ``bound="l2"`` uses the same
``‖z‖₂ ≤ 1`` through Cauchy–Schwarz and is ~``d`` times smaller; it is ours, not the spec's.

Rows and targets **[ours]**
---------------------------
:class:`Scaling` maps raw rows to ``‖z‖₂ ≤ 1`` with public constants only: ``x ↦ x / B`` and rows
still longer than 1 shrunk onto the unit ball, then an intercept column:
``z = [x̃/√2, 1/√2]``.  Regression targets: ``y ↦ clip(y / B_y, −1, 1)``.  For rows with
``‖x‖ ≤ B`` the model ``w`` is a plain affine map of the raw ``x`` (:meth:`Scaling.to_dense`), which is
what we evaluate on the (unscaled) test set.

Minimising the noisy objective **[ours, after Zhang et al. §6]**
------------------------------------------------------------------
The noisy ``M̄`` may be indefinite, making the objective unbounded below.  :func:`trim` keeps the
eigen-directions of ``M̄`` with eigenvalue ``> tol·max|λ|`` ("spectral trimming"), and
:func:`solve` minimises in that subspace, with a ridge ``ρ_r‖w‖²`` and optionally a proximal pull
``(μ/2)‖w − c‖²`` towards a centre ``c``::

    v = (μ·Qᵀc − Qᵀα) / (2Λ + 2ρ_r + μ)   in the kept directions Q,
    w_⊥ = μ·c_⊥ / (2ρ_r + μ)             in the trimmed ones (0 without a pull).

The ridge is data independent (we scale it with the noise, ``ρ_r = ridge·Δ/ε``), so neither step
costs privacy.  With ``ε = ∞`` the ridge is 0 and :func:`solve` returns the exact least-squares
(linear) or Taylor-surrogate (logistic, softmax) minimiser.

References
----------
J. Zhang, Z. Zhang, X. Xiao, Y. Yang, M. Winslett, "Functional Mechanism: Regression Analysis
under Differential Privacy", PVLDB 5(11), 2012.
N. Phan, Y. Wang, X. Wu, D. Dou, "Differential Privacy Preservation for Deep Auto-Encoders: an
Application of Human Behavior Prediction", AAAI 2016.
L. Zhao, Q. Wang, Q. Zou, Y. Zhang, Y. Chen, "Privacy-Preserving Collaborative Deep Learning with
Unreliable Participants", IEEE TIFS 15, 2019 (only the abstract was available to us).

Examples
--------
>>> rng = np.random.default_rng(0)
>>> x = rng.normal(size=(200, 3)); y = x @ [0.5, -0.2, 0.1]
>>> sc = Scaling(x_bound=4.0, y_bound=2.0)
>>> poly = coefficients("linear", sc.rows(x), sc.targets(y))
>>> w = solve(trim(poly))                         # ε = ∞: ordinary least squares
>>> kernel, bias = sc.to_dense(w, "linear")
>>> [round(float(v), 3) for v in kernel[:, 0]]
[0.5, -0.2, 0.1]
>>> noisy = perturb(poly, epsilon=1.0, rng=np.random.default_rng(1))
>>> noisy.noise_scale == sensitivity("linear", 4) / 1.0
True
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

import numpy as np

from crowdlearn.privacy.mechanisms import laplace

__all__ = ["KINDS", "Polynomial", "Scaling", "Trimmed", "coefficients", "fit", "perturb",
           "sensitivity", "solve", "trim", "unit_rows"]

KINDS = ("linear", "logistic", "softmax")
BOUNDS = ("spec", "l2")


# ---------------------------------------------------------------- rows
def unit_rows(x: np.ndarray, bound: float) -> np.ndarray:
    """``x / bound`` with every row still longer than 1 shrunk onto the unit sphere (float64).

    Examples
    --------
    >>> unit_rows(np.array([[3.0, 4.0], [0.3, 0.4]]), 1.0).tolist()
    [[0.6, 0.8], [0.3, 0.4]]
    """
    if not bound > 0:
        raise ValueError(f"bound must be > 0; got {bound}")
    z = np.asarray(x, np.float64) / bound
    norms = np.linalg.norm(z, axis=1, keepdims=True)
    return z / np.maximum(norms, 1.0)


@dataclass(frozen=True)
class Scaling:
    """Public preprocessing of rows and targets to the functional mechanism's domain.

    Parameters
    ----------
    x_bound : float
        ``B``: rows are divided by ``B`` and clipped to the unit ball, then half the squared
        norm goes to the intercept column (``z = [x̃/√2, 1/√2]``, so ``‖z‖₂ ≤ 1``).
    y_bound : float
        ``B_y``: regression targets become ``clip(y / B_y, −1, 1)``.
    intercept : bool
        Append the constant column (without it ``z = x̃``).
    """

    x_bound: float = 1.0
    y_bound: float = 1.0
    intercept: bool = True

    def __post_init__(self):
        if not (self.x_bound > 0 and self.y_bound > 0):
            raise ValueError(f"bounds must be > 0; got {self.x_bound}, {self.y_bound}")

    @property
    def _shrink(self) -> float:
        return 1.0 / math.sqrt(2.0) if self.intercept else 1.0

    def rows(self, x: np.ndarray) -> np.ndarray:
        """Rows ``z`` with ``‖z‖₂ ≤ 1`` (float64, ``d + 1`` columns with the intercept)."""
        z = unit_rows(x, self.x_bound) * self._shrink
        if self.intercept:
            z = np.concatenate([z, np.full((z.shape[0], 1), self._shrink)], axis=1)
        return z

    def targets(self, y: np.ndarray) -> np.ndarray:
        """Regression targets in ``[−1, 1]``."""
        return np.clip(np.asarray(y, np.float64) / self.y_bound, -1.0, 1.0)

    def to_dense(self, w: np.ndarray, kind: str) -> tuple[np.ndarray, np.ndarray]:
        """``(kernel, bias)`` (float32) of the affine map of *raw* rows equal to the model ``w``.

        ``linear``: one output, predictions in target units (×``B_y``); ``logistic``: two logits
        ``[0, wᵀz]`` (softmax of them is the logistic probability); ``softmax``: ``w`` is the
        ``(d[+1])×K`` kernel.  Exact for rows with ``‖x‖ ≤ B``; longer test rows are extrapolated.
        """
        w = np.asarray(w, np.float64)
        a = self._shrink / self.x_bound
        if kind == "softmax":
            W = w.reshape(-1, w.shape[-1]) if w.ndim == 2 else w
            if self.intercept:
                return (W[:-1] * a).astype(np.float32), (W[-1] * self._shrink).astype(np.float32)
            return (W * a).astype(np.float32), np.zeros(W.shape[1], np.float32)
        w = w.reshape(-1)
        coef, b = (w[:-1], w[-1] * self._shrink) if self.intercept else (w, 0.0)
        coef = coef * a
        if kind == "linear":
            return (coef[:, None] * self.y_bound).astype(np.float32), \
                np.array([b * self.y_bound], np.float32)
        if kind == "logistic":
            kernel = np.stack([np.zeros_like(coef), coef], axis=1)
            return kernel.astype(np.float32), np.array([0.0, b], np.float32)
        raise ValueError(f"kind must be one of {KINDS}; got {kind!r}")


# ---------------------------------------------------------------- the polynomial
@dataclass(frozen=True, eq=False)
class Polynomial:
    """A quadratic objective ``f(w) = const + αᵀw + wᵀMw`` in the flat parameters ``w``.

    For ``softmax`` the data enter only through ``H`` (``d×d``) and ``G`` (``d×K``); ``M`` and
    ``α`` are built from them (``M = H ⊗ (I/2K − 11ᵀ/2K²)``, ``α = vec G``, row-major ``W``).

    Attributes
    ----------
    kind : str
        ``"linear"``, ``"logistic"`` or ``"softmax"``.
    const : float
    alpha : ndarray (p,)
    M : ndarray (p, p), symmetric
    num_classes : int
        ``K`` (softmax); 1 otherwise.
    noise_scale : float
        The Laplace scale ``Δ/ε`` added to every coefficient (0: exact).
    """

    kind: str
    const: float
    alpha: np.ndarray
    M: np.ndarray
    num_classes: int = 1
    noise_scale: float = 0.0
    H: np.ndarray | None = None      # softmax only: the data statistics the coefficients are
    G: np.ndarray | None = None      # built from

    @property
    def dim(self) -> int:
        return self.alpha.size

    def __call__(self, w) -> float:
        """Value at flat parameters ``w`` (a softmax kernel may be given ``d×K``)."""
        w = np.asarray(w, np.float64).reshape(-1)
        return float(self.const + self.alpha @ w + w @ self.M @ w)

    def gradient(self, w) -> np.ndarray:
        w = np.asarray(w, np.float64).reshape(-1)
        return self.alpha + 2.0 * self.M @ w


def _softmax_matrix(K: int) -> np.ndarray:
    return np.eye(K) / (2.0 * K) - np.ones((K, K)) / (2.0 * K * K)


def coefficients(kind: str, z: np.ndarray, y: np.ndarray, *,
                 num_classes: int | None = None) -> Polynomial:
    """The polynomial (exact for ``linear``, 2nd-order Taylor otherwise) of the loss over rows.

    Parameters
    ----------
    kind : {"linear", "logistic", "softmax"}
    z : ndarray (n, d)
        Rows, already mapped to ``‖z‖₂ ≤ 1`` (see :class:`Scaling`; not checked here).
    y : ndarray (n,)
        Targets in ``[−1, 1]`` (linear), labels in ``{0, 1}`` (logistic) or ``{0..K−1}``.
    num_classes : int
        ``K`` for softmax.
    """
    z = np.asarray(z, np.float64)
    y = np.asarray(y)
    n, d = z.shape
    H = z.T @ z
    if kind == "linear":
        y = y.astype(np.float64)
        return Polynomial(kind, float(y @ y), -2.0 * (z.T @ y), H)
    if kind == "logistic":
        y = y.astype(np.float64)
        if not np.all((y == 0) | (y == 1)):
            raise ValueError("logistic labels must be 0 or 1")
        return Polynomial(kind, n * math.log(2.0), z.T @ (0.5 - y), H / 8.0)
    if kind == "softmax":
        K = int(num_classes or 0)
        if K < 2:
            raise ValueError(f"softmax needs num_classes >= 2; got {num_classes}")
        onehot = np.zeros((n, K))
        onehot[np.arange(n), y.astype(np.int64)] = 1.0
        G = z.T @ (1.0 / K - onehot)
        return _softmax_poly(n * math.log(K), G, H, K)
    raise ValueError(f"kind must be one of {KINDS}; got {kind!r}")


def _softmax_poly(const, G, H, K, noise_scale=0.0) -> Polynomial:
    return Polynomial("softmax", float(const), G.reshape(-1).copy(),
                      np.kron(H, _softmax_matrix(K)), K, noise_scale, H, G)


def sensitivity(kind: str, d: int, *, num_classes: int | None = None,
                bound: str = "spec") -> float:
    """``Δ``: the L1 sensitivity of the coefficients (replace one row; see the module table).

    Examples
    --------
    >>> sensitivity("linear", 3), sensitivity("logistic", 4)
    (32.0, 16.0)
    >>> round(sensitivity("linear", 4, bound="l2"), 6)
    18.0
    """
    if d < 1:
        raise ValueError(f"d must be >= 1; got {d}")
    if bound not in BOUNDS:
        raise ValueError(f"bound must be one of {BOUNDS}; got {bound!r}")
    s = float(d) if bound == "spec" else math.sqrt(d)        # bound on Σ_j |z_j|
    if kind == "linear":
        return 2.0 * (1.0 + 2.0 * s + s * s)
    if kind == "logistic":
        return d * d / 4.0 + 3.0 * d if bound == "spec" else s + s * s / 4.0
    if kind == "softmax":
        K = int(num_classes or 0)
        if K < 2:
            raise ValueError(f"softmax needs num_classes >= 2; got {num_classes}")
        return 2.0 * (s * s + 2.0 * s * (K - 1) / K)
    raise ValueError(f"kind must be one of {KINDS}; got {kind!r}")


def _noisy_sym(A: np.ndarray, scale: float, rng) -> np.ndarray:
    """``A`` plus one ``Lap(scale)`` per monomial coefficient (diagonal ``A_jj``, pair ``2A_jl``)."""
    d = A.shape[0]
    iu = np.triu_indices(d)
    eta = laplace(scale, iu[0].size, rng)
    N = np.zeros((d, d))
    N[iu] = eta
    off = np.triu(N, 1) / 2.0
    return A + np.diag(np.diag(N)) + off + off.T


def perturb(poly: Polynomial, *, epsilon: float, rng: np.random.Generator,
            delta_f: float | None = None, bound: str = "spec") -> Polynomial:
    """The functional mechanism: ``Lap(Δ/ε)`` added once to every data-dependent coefficient.

    Draw order (reproducible from ``rng``): the quadratic monomials (upper triangle of ``M``,
    or of ``H`` for softmax, row-major), then the linear coefficients (``α``, or ``G``
    row-major), then (linear regression only) the constant.  ``epsilon = inf`` returns ``poly``
    unchanged and draws nothing.

    Parameters
    ----------
    delta_f : float, optional
        ``Δ``; default :func:`sensitivity` for ``poly.kind`` with ``d`` the row length.
    bound : {"spec", "l2"}
        Which sensitivity bound the default ``Δ`` uses.
    """
    if not epsilon > 0:
        raise ValueError(f"epsilon must be > 0; got {epsilon}")
    if math.isinf(epsilon):
        return poly
    K = poly.num_classes
    d = poly.dim // K if poly.kind == "softmax" else poly.dim
    if delta_f is None:
        delta_f = sensitivity(poly.kind, d, num_classes=K if K > 1 else None, bound=bound)
    b = float(delta_f) / float(epsilon)
    if poly.kind == "softmax":
        Hn = _noisy_sym(poly.H, b, rng)
        Gn = poly.G + laplace(b, (d, K), rng)
        return _softmax_poly(poly.const, Gn, Hn, K, b)
    Mn = _noisy_sym(poly.M, b, rng)
    an = poly.alpha + laplace(b, poly.dim, rng)
    c = poly.const + (float(laplace(b, 1, rng)[0]) if poly.kind == "linear" else 0.0)
    return replace(poly, const=c, alpha=an, M=Mn, noise_scale=b)


# ---------------------------------------------------------------- minimising
@dataclass(frozen=True, eq=False)
class Trimmed:
    """A noisy quadratic restricted to the eigen-directions of ``M`` that keep it convex.

    ``f⁺(w) = const + (Qᵀα)ᵀ(Qᵀw) + (Qᵀw)ᵀ diag(lam) (Qᵀw)``; flat in the trimmed directions.
    """

    Q: np.ndarray          # (p, r) orthonormal kept directions
    lam: np.ndarray        # (r,) kept eigenvalues (> 0)
    qa: np.ndarray         # (r,) Qᵀα
    const: float
    dim: int
    ridge: float = 0.0     # ρ_r of solve() (objective units)
    kind: str = "linear"
    num_classes: int = 1
    noise_scale: float = 0.0  # the Laplace scale Δ/ε of the coefficients (0: exact)

    @property
    def trimmed(self) -> int:
        """How many directions were removed."""
        return self.dim - self.lam.size

    def __call__(self, w) -> float:
        v = self.Q.T @ np.asarray(w, np.float64).reshape(-1)
        return float(self.const + self.qa @ v + v @ (self.lam * v))


def trim(poly: Polynomial, *, tol: float = 1e-9, ridge: float = 0.0) -> Trimmed:
    """Spectral trimming: keep the directions of ``M`` with eigenvalue ``> tol·max|λ|``.

    ``ridge`` (objective units, ``ρ_r‖w‖²``) is stored for :func:`solve`.  For softmax the
    eigen-pairs of ``M = H ⊗ P`` are the products of those of the ``d×d`` ``H`` and the ``K×K``
    ``P`` (``P``'s null direction, adding one vector to every class, is always trimmed: the
    softmax is invariant to it).
    """
    if poly.H is not None:           # softmax: M = H ⊗ P, eigen-pairs are products
        lh, qh = np.linalg.eigh((poly.H + poly.H.T) / 2.0)
        lp, qp = np.linalg.eigh(_softmax_matrix(poly.num_classes))
        lam, Q = np.kron(lh, lp), np.kron(qh, qp)
    else:
        lam, Q = np.linalg.eigh((poly.M + poly.M.T) / 2.0)
    top = float(np.max(np.abs(lam))) if lam.size else 0.0
    keep = lam > tol * top if top > 0 else np.zeros(lam.size, bool)
    Qk = Q[:, keep]
    return Trimmed(Qk, lam[keep], Qk.T @ poly.alpha, poly.const, poly.dim, float(ridge),
                   poly.kind, poly.num_classes, poly.noise_scale)


def solve(t: Trimmed, *, center: np.ndarray | None = None, mu: float = 0.0) -> np.ndarray:
    """Minimiser of ``f⁺(w) + ρ_r‖w‖² + (μ/2)‖w − center‖²`` (flat float64).

    Without a pull (``mu = 0``) the trimmed directions get 0 (Zhang et al. minimise within the
    kept subspace).
    """
    if mu < 0 or t.ridge < 0:
        raise ValueError(f"mu and ridge must be >= 0; got {mu}, {t.ridge}")
    c = np.zeros(t.dim) if center is None or mu == 0 else np.asarray(center, np.float64).reshape(-1)
    vc = t.Q.T @ c
    v = (mu * vc - t.qa) / (2.0 * t.lam + 2.0 * t.ridge + mu)
    perp = c - t.Q @ vc
    w_perp = perp * (mu / (2.0 * t.ridge + mu)) if mu > 0 else np.zeros(t.dim)
    return t.Q @ v + w_perp


def fit(kind: str, z: np.ndarray, y: np.ndarray, *, epsilon: float, rng: np.random.Generator,
        num_classes: int | None = None, bound: str = "spec", ridge: float = 0.0,
        tol: float = 1e-9) -> np.ndarray:
    """One-shot functional mechanism: coefficients, noise, trimming, ridge ``ridge·Δ/ε``, solve.

    Returns the flat parameters (softmax: row-major ``d×K``).
    """
    poly = perturb(coefficients(kind, z, y, num_classes=num_classes), epsilon=epsilon, rng=rng,
                   bound=bound)
    return solve(trim(poly, tol=tol, ridge=ridge * poly.noise_scale))
