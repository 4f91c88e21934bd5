"""How good a reconstruction is: PSNR, SSIM and a reference classifier's accuracy on it.

All three take flat images (``(d,)`` or ``(N, d)``, the layout of :class:`crowdlearn.data.Dataset`)
or already shaped ones, and a ``data_range`` (1.0 for our image sets: digits are scaled by 1/16,
Fashion-MNIST by 1/255).

* :func:`psnr` -- ``10·log10(R² / MSE)`` per image, ``inf`` for identical images; an optional mask
  restricts the MSE to some pixels (e.g. the pixels an attack recovered).
* :func:`ssim` -- the structural similarity index of Wang et al. (2004) with an isotropic Gaussian
  window (σ = 1.5), ``K1 = 0.01``, ``K2 = 0.03``, computed with :func:`scipy.ndimage.gaussian_filter`
  (scikit-image is not a dependency).  **[ours]** Boundary handling: the local statistics are
  computed with reflective padding and the SSIM map is averaged over *every* pixel (no cropping
  of a border), because the 8×8 digits have no interior once an 11×11 window's border is cut;
  the window radius is ``min(⌊3.5·σ + 0.5⌋, (min(H, W) − 1) // 2)`` (5 → an 11×11 window on
  28×28 images, 3 → 7×7 on 8×8 digits).  No ``N/(N−1)`` sample-covariance correction (as in
  Wang et al.'s reference code; scikit-image applies it by default, so its values differ
  slightly).  Identical images score exactly 1.
* :class:`ReferenceClassifier` -- a multinomial logistic regression (scikit-learn) fitted on
  the real training data; :meth:`ReferenceClassifier.accuracy` is the fraction of
  reconstructions it assigns to their true label, the "does the reconstruction still look like a
  ``y``" score of the gradient-leakage literature.

References
----------
Z. Wang, A. C. Bovik, H. R. Sheikh, E. P. Simoncelli, "Image Quality Assessment: From Error
Visibility to Structural Similarity", IEEE Transactions on Image Processing 13(4), 2004.

Examples
--------
>>> import numpy as np
>>> x = np.linspace(0, 1, 64)                    # one flat 8x8 image
>>> psnr(x, x), ssim(x, x)
(inf, 1.0)
>>> noisy = np.clip(x + np.random.default_rng(0).normal(0, 0.1, x.shape), 0, 1)
>>> bool(psnr(x, noisy) < 25), bool(ssim(x, noisy) < 0.99)
(True, True)
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence

import numpy as np
from scipy import ndimage

__all__ = ["ReferenceClassifier", "as_images", "mse", "psnr", "ssim", "summarize"]

_K1, _K2 = 0.01, 0.03


def as_images(x, image_shape: Sequence[int] | None = None) -> np.ndarray:
    """``x`` as a float64 stack of 2-D images ``(N·C, H, W)``.

    Parameters
    ----------
    x : array_like
        One image or a batch: ``(H, W)``, ``(N, H, W)``, ``(N, H, W, C)``, or flat ``(d,)`` /
        ``(N, d)`` together with ``image_shape``.  A flat ``(d,)`` with ``d`` a perfect square
        and no ``image_shape`` is taken as one square image.
    image_shape : sequence of int, optional
        ``(H, W)`` or ``(H, W, C)`` of one image.

    Returns
    -------
    numpy.ndarray
        ``(N·C, H, W)`` float64: every channel of every image as its own 2-D image.

    Examples
    --------
    >>> as_images(np.zeros(64)).shape, as_images(np.zeros((3, 784)), (28, 28, 1)).shape
    ((1, 8, 8), (3, 28, 28))
    """
    a = np.asarray(x, dtype=np.float64)
    if image_shape is not None:
        shp = tuple(int(s) for s in image_shape)
        hw = shp[:2]
        c = shp[2] if len(shp) == 3 else 1
        a = a.reshape(-1, *hw, c)
        return np.moveaxis(a, -1, 1).reshape(-1, *hw)
    if a.ndim == 1:
        side = math.isqrt(a.size)
        if side * side != a.size:
            raise ValueError(f"a flat image of {a.size} values needs image_shape")
        return a.reshape(1, side, side)
    if a.ndim == 2:
        return a[None]
    if a.ndim == 3:
        return a
    if a.ndim == 4:
        return np.moveaxis(a, -1, 1).reshape(-1, *a.shape[1:3])
    raise ValueError(f"cannot read images of shape {a.shape}")


def _pairs(a, b, batch: bool | None):
    """Flatten ``a`` and ``b`` to ``(N, d)`` float64 rows; say whether the input was one image."""
    a = np.asarray(a, np.float64)
    b = np.asarray(b, np.float64)
    if batch is None:
        batch = max(a.ndim, b.ndim) >= 2
    if not batch:
        return a.reshape(1, -1), b.reshape(1, -1), True
    nd = max(a.ndim, b.ndim)
    a = a.reshape(-1, int(np.prod(a.shape[1:]))) if a.ndim == nd else a.reshape(1, -1)
    b = b.reshape(-1, int(np.prod(b.shape[1:]))) if b.ndim == nd else b.reshape(1, -1)
    a, b = np.broadcast_arrays(a, b)
    return a, b, False


def mse(a, b, *, mask=None, batch: bool | None = None) -> np.ndarray | float:
    """Mean squared error per image (over ``mask``'s pixels when given).

    Shapes as in :func:`psnr`.  ``nan`` for an empty mask.

    Examples
    --------
    >>> mse(np.zeros(4), np.array([1.0, 0, 0, 0]))
    0.25
    """
    fa, fb, single = _pairs(a, b, batch)
    err = (fa - fb) ** 2
    if mask is not None:
        m = np.broadcast_to(np.asarray(mask, bool).reshape(-1, err.shape[-1]), err.shape)
        cnt = m.sum(axis=1)
        with np.errstate(invalid="ignore"):
            out = np.where(cnt > 0, np.where(m, err, 0.0).sum(axis=1) / np.maximum(cnt, 1),
                           np.nan)
    else:
        out = err.mean(axis=1)
    return float(out[0]) if single else out


def psnr(a, b, *, data_range: float = 1.0, mask=None,
         batch: bool | None = None) -> np.ndarray | float:
    """Peak signal-to-noise ratio ``10·log10(data_range² / MSE)`` in dB.

    Parameters
    ----------
    a, b : array_like
        Reference and reconstruction.  A 1-D array is one (flat) image; with ``ndim >= 2`` the
        first axis indexes images and the other axes are flattened (``(N, d)`` or ``(N, H, W)``).
        Pass ``batch=False`` to score one shaped image such as ``(H, W)``.
    data_range : float
        Peak-to-peak range of valid pixel values (1.0 for our image sets).
    mask : array_like of bool, optional
        Only these pixels count (one flat mask for all images, or one per image).
    batch : bool, optional
        Override the one-image / batch reading described above.

    Returns
    -------
    float or numpy.ndarray
        ``inf`` where the images are identical (on the mask), ``nan`` for an empty mask.

    Examples
    --------
    >>> psnr(np.zeros(4), np.full(4, 0.1))
    20.0
    >>> psnr(np.zeros(4), np.array([0, 0, 1, 1.0]), mask=[True, True, False, False])
    inf
    >>> psnr(np.zeros((2, 3)), np.full((2, 3), 0.1)).tolist()
    [20.0, 20.0]
    """
    e = np.asarray(mse(a, b, mask=mask, batch=batch), np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        out = 10.0 * np.log10(data_range**2 / e)
    out = np.where(np.isfinite(out), np.round(out, 10), out)
    return float(out) if out.ndim == 0 else out


def _gaussian_window_radius(sigma: float, h: int, w: int) -> int:
    return max(0, min(int(3.5 * sigma + 0.5), (min(h, w) - 1) // 2))


def ssim(a, b, *, data_range: float = 1.0, image_shape: Sequence[int] | None = None,
         sigma: float = 1.5) -> np.ndarray | float:
    """Mean structural similarity (Wang et al. 2004) of image pairs.

    Parameters
    ----------
    a, b : array_like
        Reference and reconstruction, shaped as :func:`as_images` reads them (flat ones need
        ``image_shape`` unless square).
    data_range : float
        Peak-to-peak range of the pixel values; sets ``C1 = (K1·R)²`` and ``C2 = (K2·R)²``.
    image_shape : sequence of int, optional
        ``(H, W[, C])`` of one image for flat inputs.  Channels are scored separately and
        averaged.
    sigma : float
        Standard deviation of the Gaussian window.

    Returns
    -------
    float or numpy.ndarray
        One value per image (a float for a single image), in ``[-1, 1]``; 1 for identical images.

    Notes
    -----
    See the module docstring for the boundary handling and window size (**[ours]**).

    References
    ----------
    Wang et al., IEEE Transactions on Image Processing 13(4), 2004, eq. (13) and section III-C.

    Examples
    --------
    >>> x = np.random.default_rng(1).uniform(size=(2, 64))
    >>> s = ssim(x, x, image_shape=(8, 8))
    >>> s.shape, bool(np.allclose(s, 1.0))
    ((2,), True)
    """
    ia = as_images(a, image_shape)
    ib = as_images(b, image_shape)
    if ia.shape != ib.shape:
        ia, ib = np.broadcast_arrays(ia, ib)
    h, w = ia.shape[1:]
    r = _gaussian_window_radius(sigma, h, w)
    truncate = r / sigma if sigma > 0 else 0.0

    def filt(v):
        if r == 0:
            return v
        return ndimage.gaussian_filter(v, sigma=(0, sigma, sigma), mode="reflect",
                                       truncate=truncate)

    c1 = (_K1 * data_range) ** 2
    c2 = (_K2 * data_range) ** 2
    mu_a, mu_b = filt(ia), filt(ib)
    saa = filt(ia * ia) - mu_a * mu_a
    sbb = filt(ib * ib) - mu_b * mu_b
    sab = filt(ia * ib) - mu_a * mu_b
    num = (2 * mu_a * mu_b + c1) * (2 * sab + c2)
    den = (mu_a**2 + mu_b**2 + c1) * (saa + sbb + c2)
    smap = num / den
    # identical inputs give num == den up to rounding; make that exactly 1
    same = np.all(ia == ib, axis=(1, 2))
    per = smap.mean(axis=(1, 2))
    per[same] = 1.0
    # several channels of one image: average them
    a0 = np.asarray(a)
    channels = 1
    if image_shape is not None and len(image_shape) == 3:
        channels = int(image_shape[2])
    elif image_shape is None and a0.ndim == 4:
        channels = a0.shape[-1]
    per = per.reshape(-1, channels).mean(axis=1)
    if image_shape is not None:
        single = a0.size == int(np.prod(image_shape))
    else:
        single = a0.ndim in (1, 2)
    return float(per[0]) if single else per


def summarize(values) -> dict:
    """``{"mean", "median", "min", "max"}`` of finite-or-inf values (nan ignored)."""
    v = np.asarray(values, np.float64).reshape(-1)
    v = v[~np.isnan(v)]
    if not v.size:
        return {"mean": math.nan, "median": math.nan, "min": math.nan, "max": math.nan}
    return {"mean": float(np.mean(v)), "median": float(np.median(v)), "min": float(v.min()),
            "max": float(v.max())}


class ReferenceClassifier:
    """A classifier trained on the real training data, to score reconstructions by label.

    A multinomial logistic regression (``sklearn.linear_model.LogisticRegression``, lbfgs) on at
    most ``max_samples`` training samples (a seeded random subset; all of digits' 1,347).  It is
    independent of the attacked model on purpose: it asks whether a reconstruction carries the
    features of its class, not whether it fools the model it came from.

    Parameters
    ----------
    x_train, y_train : array_like
        Real training inputs (flat) and integer labels.
    max_samples : int
        Subsample size (Fashion-MNIST's 60,000 would take minutes on the shared CPU).
    seed : int
        Seed of the subsample.
    data_range : (float, float)
        Reconstructions are clipped to it before classification.

    Attributes
    ----------
    test_accuracy : float or None
        Set by :meth:`score_real` (the classifier's accuracy on real held-out data: the ceiling
        a perfect reconstruction reaches).

    Examples
    --------
    >>> from sklearn.datasets import load_digits
    >>> d = load_digits()
    >>> clf = ReferenceClassifier(d.data[:1000] / 16, d.target[:1000])
    >>> clf.score_real(d.data[1000:] / 16, d.target[1000:]) > 0.9
    True
    >>> clf.accuracy(d.data[1000:1010] / 16, d.target[1000:1010]) >= 0.8
    True
    """

    def __init__(self, x_train, y_train, *, max_samples: int = 5000, seed: int = 0,
                 data_range: tuple[float, float] = (0.0, 1.0), max_iter: int = 300):
        from sklearn.exceptions import ConvergenceWarning
        from sklearn.linear_model import LogisticRegression
        from threadpoolctl import threadpool_limits

        x = np.asarray(x_train, np.float32).reshape(len(x_train), -1)
        y = np.asarray(y_train).reshape(-1)
        if len(x) > max_samples:
            pick = np.random.default_rng(seed).choice(len(x), size=max_samples, replace=False)
            x, y = x[pick], y[pick]
        self.data_range = data_range
        self.model = LogisticRegression(max_iter=max_iter, C=1.0)
        # one BLAS thread: on a busy shared CPU, OpenBLAS' spinning threads made this fit ~80x
        # slower (13.8 s instead of 0.17 s for digits)
        with threadpool_limits(1), warnings.catch_warnings():
            # lbfgs may stop at max_iter on Fashion-MNIST; the classifier is a yardstick, and
            # its real test accuracy is reported next to every score that uses it
            warnings.simplefilter("ignore", ConvergenceWarning)
            self.model.fit(x, y)
        self.test_accuracy: float | None = None

    def predict(self, x) -> np.ndarray:
        from threadpoolctl import threadpool_limits

        x = np.asarray(x, np.float32)
        x = x.reshape(-1, self.model.coef_.shape[1])
        lo, hi = self.data_range
        x = np.clip(np.nan_to_num(x, nan=(lo + hi) / 2), lo, hi)
        with threadpool_limits(1):
            return self.model.predict(x)

    def accuracy(self, reconstructions, labels) -> float:
        """Fraction of ``reconstructions`` classified as their true ``labels``."""
        y = np.asarray(labels).reshape(-1)
        if not y.size:
            return math.nan
        return float(np.mean(self.predict(reconstructions) == y))

    def score_real(self, x_test, y_test) -> float:
        """Accuracy on real held-out samples (stored in :attr:`test_accuracy`)."""
        self.test_accuracy = self.accuracy(x_test, y_test)
        return self.test_accuracy
