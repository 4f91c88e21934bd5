"""Differential-privacy noise and selection mechanisms (ring 0: numpy only).

Pure functions: every random draw comes from the ``numpy.random.Generator`` passed in, so a seeded
generator reproduces the noise exactly.

The sparse vector technique (SVT) of DSSGD (Shokri & Shmatikov 2015, as paraphrased in
``spec/dssgd.md``) selects and releases at most ``c`` entries of a participant's parameter change
``Δw``.  With per-turn budget split as ε1 (selection) and ε2 (release) and ``Δf = 2γ`` the
sensitivity of a value clipped to ``[-γ, γ]``:

1. draw a noisy threshold ``τ + Lap(2cΔf/ε1)``;
2. walk the parameters in a random order; parameter ``j`` is selected when
   ``|clip(Δw_j)| + Lap(4cΔf/ε1) ≥`` the noisy threshold;
3. a selected parameter is released as ``clip(clip(Δw_j) + Lap(2cΔf/ε2))`` and the threshold
   noise is redrawn (``release="clipped"``, the default; ``release="paper"`` is the as-published
   ``clip(Δw_j + Lap(2cΔf/ε2))``, see *Release* below);
4. stop after ``c`` releases (or when the walk has visited every parameter once).

This is Dwork and Roth's *Sparse* algorithm (Algorithm 2, §3.6: AboveThreshold restarted after
each of ``c`` positive answers, threshold noise redrawn) followed by a Laplace release of each
selected value.  The indices are the SVT's output and are covered by ``ε1``; the released values
by ``ε2``.  With queries ``|clip(Δw_j)|`` in ``[0, γ]`` the query sensitivity is ``γ``, not the
``Δf = 2γ`` the scales use, and a released value moves by at most ``2γ`` while its noise is
calibrated to ``2cΔf/ε2 = 4cγ/ε2`` (a per-value loss of ``ε2/(2c)``): a turn with the clipped
release is ``ε_turn / 2``-DP, so the ledger's ``ε_turn = ε1 + ε2`` is a 2× conservative bound.

Release
-------
``release="clipped"`` (default) clips ``Δw_j`` to ``[-γ, γ]`` *before* adding the noise, so the
noised value has sensitivity ``2γ ≤ Δf`` whatever the training produced.  ``release="paper"`` adds
the noise to the *unclipped* ``Δw_j`` and clips afterwards, as Shokri and Shmatikov publish it:
clipping after the noise bounds nothing, a ``Δw_j`` far above ``γ`` moves the release by up to
``2|Δw_j|``, and the ε the ledger composes is then only nominal.  The auditor
(:mod:`crowdlearn.privacy.audit`) measures a lower bound on the ε actually spent; its tests show
the clipped release within its claim and the paper release beyond it.

Random-stream design
--------------------
A literal walk draws noise one value at a time, interleaving the streams, which no vectorised code
can reproduce draw for draw.  We therefore fix the *order of the draws* instead, and consume them
identically in the slow literal walk (:func:`svt_select_reference`, kept as the specification) and
in the fast one (:func:`svt_select`).  From ``rng``, in this order (:func:`svt_draws`):

* ``perm``      = ``rng.permutation(n)``        the walk order;
* ``query``     = ``Lap(4cΔf/ε1)`` × ``n``      the noise of the test at walk position ``i``;
* ``threshold`` = ``Lap(2cΔf/ε1)`` × ``c``      the threshold noise of segment ``m`` (the part of
  the walk between the ``m``-th and ``(m+1)``-th release);
* ``release``   = ``Lap(2cΔf/ε2)`` × ``c``      the noise added to the ``m``-th released value.

Every use of noise gets a fresh independent draw, exactly as in the literal algorithm, so the
distribution of the output is unchanged; only the bookkeeping of which draw serves which use is
fixed in advance.

Vectorisation
-------------
With the noises drawn up front the walk reduces to ``score_i = |clip(Δw_{perm_i})| + query_i`` and
the release positions ``r_m = min{i > r_{m-1} : score_i ≥ τ + threshold_m}``: the walk is cut into
segments at releases, and each segment is one "first index at or above" search.  Short segments
(the usual case under DP noise, where a large fraction of the tests pass) are probed a few
positions at a time on a Python list; long ones by numpy over doubling windows.  The work is
``O(n)`` numpy plus ``O(c)`` short Python steps, instead of ``O(n)`` Python steps each drawing
noise.  ``tests/test_privacy_mechanisms.py`` checks the result against the literal walk.

References
----------
R. Shokri, V. Shmatikov, "Privacy-Preserving Deep Learning", ACM CCS 2015.
C. Dwork, A. Roth, "The Algorithmic Foundations of Differential Privacy", 2014, §3.6 (AboveThreshold,
Sparse).
M. Lyu, D. Su, N. Li, "Understanding the Sparse Vector Technique for Differential Privacy",
PVLDB 10(6), 2017 (analysis of SVT variants and their actual privacy cost).

Examples
--------
>>> rng = np.random.default_rng(0)
>>> dw = np.array([0.5, -0.01, 0.2, -0.9, 0.0])
>>> idx, vals = svt_select(dw, c=2, tau=0.25, gamma=0.3, eps1=1e6, eps2=1e6, rng=rng)
>>> sorted(idx.tolist()), bool(np.all(np.abs(vals) <= 0.3))
([0, 3], True)
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

#: The two forms of the SVT release (see the module notes).
RELEASES = ("clipped", "paper")

__all__ = ["RELEASES", "SVTDraws", "clip", "laplace", "svt_draws", "svt_scales", "svt_select",
           "svt_select_reference"]


def laplace(scale: float, size, rng: np.random.Generator) -> np.ndarray:
    """Draw ``Lap(scale)`` noise (density ``exp(-|x|/scale) / (2·scale)``), float64.

    ``scale = 0`` gives zeros without consuming the generator.

    Examples
    --------
    >>> a = laplace(2.0, 3, np.random.default_rng(5))
    >>> b = laplace(2.0, 3, np.random.default_rng(5))
    >>> bool(np.array_equal(a, b)), laplace(0.0, 2, None).tolist()
    (True, [0.0, 0.0])
    """
    scale = float(scale)
    if not scale >= 0 or not np.isfinite(scale):
        raise ValueError(f"Laplace scale must be finite and >= 0; got {scale}")
    if scale == 0:
        return np.zeros(size, np.float64)
    return rng.laplace(0.0, scale, size)


def clip(x, gamma: float) -> np.ndarray:
    """Clip every entry of ``x`` to ``[-gamma, gamma]`` (``gamma = inf``: unchanged).

    Examples
    --------
    >>> clip(np.array([-2.0, 0.5, 3.0]), 1.0).tolist()
    [-1.0, 0.5, 1.0]
    """
    if not gamma > 0:
        raise ValueError(f"gamma must be > 0; got {gamma}")
    return np.clip(x, -gamma, gamma)


def svt_scales(*, c: int, eps1: float, eps2: float, sensitivity: float) -> tuple[float, float, float]:
    """Laplace scales ``(threshold, query, release)`` = ``(2cΔf/ε1, 4cΔf/ε1, 2cΔf/ε2)``.

    Examples
    --------
    >>> svt_scales(c=10, eps1=2.0, eps2=1.0, sensitivity=0.1)
    (1.0, 2.0, 2.0)
    """
    if c < 1:
        raise ValueError(f"c must be >= 1; got {c}")
    if not (eps1 > 0 and eps2 > 0):
        raise ValueError(f"eps1 and eps2 must be > 0; got eps1={eps1}, eps2={eps2}")
    if not (sensitivity > 0 and np.isfinite(sensitivity)):
        raise ValueError(f"sensitivity must be finite and > 0; got {sensitivity}")
    return 2 * c * sensitivity / eps1, 4 * c * sensitivity / eps1, 2 * c * sensitivity / eps2


@dataclass(frozen=True, eq=False)
class SVTDraws:
    """All the randomness of one SVT run, drawn in the documented order."""

    perm: np.ndarray        # int64 [n]  walk order
    query: np.ndarray       # float64 [n]  test noise at walk position i
    threshold: np.ndarray   # float64 [c]  threshold noise of segment m
    release: np.ndarray     # float64 [c]  noise of the m-th released value


def svt_draws(n: int, c: int, scales: tuple[float, float, float],
              rng: np.random.Generator) -> SVTDraws:
    """Draw the SVT randomness for ``n`` parameters and ``c`` releases (see the module notes)."""
    b_threshold, b_query, b_release = scales
    perm = rng.permutation(n)
    query = laplace(b_query, n, rng)
    threshold = laplace(b_threshold, c, rng)
    release = laplace(b_release, c, rng)
    return SVTDraws(perm, query, threshold, release)


def _prepare(dw, c, gamma, eps1, eps2, sensitivity, release):
    if release not in RELEASES:
        raise ValueError(f"release must be one of {', '.join(RELEASES)}; got {release!r}")
    dw = np.asarray(dw, dtype=np.float64).reshape(-1)
    if not (gamma > 0 and np.isfinite(gamma)):
        raise ValueError(f"the SVT needs a finite clipping bound gamma > 0; got {gamma}")
    c = min(int(c), dw.size)
    delta_f = 2.0 * gamma if sensitivity is None else float(sensitivity)
    return dw, c, delta_f


def svt_select(dw, *, c: int, tau: float, gamma: float, eps1: float, eps2: float,
               rng: np.random.Generator, sensitivity: float | None = None,
               release: str = "clipped") -> tuple[np.ndarray, np.ndarray]:
    """Select and release at most ``c`` entries of ``dw`` with the sparse vector technique.

    Parameters
    ----------
    dw : array of float
        The parameter change (any shape; flattened).
    c : int
        Most releases (``θu·|w|``); capped at ``dw.size``.
    tau : float
        Threshold on ``|clip(Δw_j)|``.
    gamma : float
        Clipping bound; must be finite.
    eps1, eps2 : float
        Selection and release budgets of this turn.
    rng : numpy.random.Generator
        Source of all noise, consumed as :func:`svt_draws` documents.
    sensitivity : float, optional
        ``Δf``; default ``2·gamma``.
    release : {"clipped", "paper"}
        ``"clipped"`` (default): release ``clip(clip(Δw_j) + noise)``, so that ``Δf`` bounds the
        sensitivity of the noised value.  ``"paper"``: release ``clip(Δw_j + noise)`` as
        published (noise on the *unclipped* value; not differentially private for ``|Δw_j| > γ``).

    Returns
    -------
    (indices, values)
        ``int64`` parameter indices in release order and their released ``float32`` values.

    Examples
    --------
    >>> rng = np.random.default_rng(1)
    >>> idx, vals = svt_select(np.linspace(-1, 1, 1000), c=10, tau=0.5, gamma=1.0,
    ...                        eps1=1.0, eps2=1.0, rng=rng)
    >>> len(idx) <= 10 and len(set(idx.tolist())) == len(idx)
    True
    """
    dw, c, delta_f = _prepare(dw, c, gamma, eps1, eps2, sensitivity, release)
    if c <= 0:
        return np.zeros(0, np.int64), np.zeros(0, np.float32)
    draws = svt_draws(dw.size, c, svt_scales(c=c, eps1=eps1, eps2=eps2, sensitivity=delta_f), rng)
    score = np.abs(clip(dw, gamma))[draws.perm] + draws.query
    cut = tau + draws.threshold
    positions = _segment_walk(score, cut)
    m = len(positions)
    chosen = draws.perm[positions]
    base = dw[chosen] if release == "paper" else clip(dw[chosen], gamma)
    values = clip(base + draws.release[:m], gamma).astype(np.float32)
    return chosen.astype(np.int64), values


def svt_select_reference(dw, *, c: int, tau: float, gamma: float, eps1: float, eps2: float,
                         rng: np.random.Generator, sensitivity: float | None = None,
                         release: str = "clipped") -> tuple[np.ndarray, np.ndarray]:
    """The literal one-parameter-at-a-time walk (slow; the specification :func:`svt_select` meets).

    Consumes the same draws as :func:`svt_select` and must return the same result.
    """
    dw, c, delta_f = _prepare(dw, c, gamma, eps1, eps2, sensitivity, release)
    if c <= 0:
        return np.zeros(0, np.int64), np.zeros(0, np.float32)
    d = svt_draws(dw.size, c, svt_scales(c=c, eps1=eps1, eps2=eps2, sensitivity=delta_f), rng)
    idx: list[int] = []
    vals: list[float] = []
    noisy_threshold = tau + d.threshold[0]
    for i in range(dw.size):
        j = int(d.perm[i])
        if abs(min(max(dw[j], -gamma), gamma)) + d.query[i] >= noisy_threshold:
            m = len(idx)
            base = dw[j] if release == "paper" else min(max(dw[j], -gamma), gamma)
            vals.append(min(max(base + d.release[m], -gamma), gamma))
            idx.append(j)
            if len(idx) == c:
                break
            noisy_threshold = tau + d.threshold[len(idx)]       # redraw after each release
    return np.asarray(idx, np.int64), np.asarray(vals, np.float32)


_PROBE = 16         # positions tried in Python before a segment switches to numpy
_FIRST_WINDOW = 256


def _segment_walk(score: np.ndarray, cut: np.ndarray) -> np.ndarray:
    """Release positions ``r_m = min{i > r_{m-1} : score_i ≥ cut_m}`` for ``m < len(cut)``.

    One iteration per segment: up to ``_PROBE`` positions are compared on a Python list (cheap
    when tests pass often, as under DP noise); a longer segment is searched by numpy over
    doubling windows.
    """
    n = score.size
    s = score.tolist()
    out: list[int] = []
    i = 0
    for t in cut.tolist():
        end = i + _PROBE if i + _PROBE < n else n
        while i < end and s[i] < t:
            i += 1
        if i == end:                       # not within the probe: search ahead with numpy
            found, lo, width = -1, i, _FIRST_WINDOW
            while lo < n:
                hi = min(lo + width, n)
                hits = np.flatnonzero(score[lo:hi] >= t)
                if hits.size:
                    found = lo + int(hits[0])
                    break
                lo, width = hi, 2 * width
            if found < 0:                  # the walk visited every parameter
                break
            i = found
        out.append(i)
        i += 1
    return np.asarray(out, np.int64)
