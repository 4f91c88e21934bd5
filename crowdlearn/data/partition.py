"""Split a training set across devices (pure: numpy only, randomness from a passed-in Generator).

A device's data is an ``int64`` array of indices into ``x_train``, sorted ascending.  Every
partitioner here returns ``num_devices`` such arrays that are pairwise disjoint and together cover
every index exactly once.

Methods (the keys of :data:`PARTITIONERS`):

``iid``
    A random permutation cut into near-equal parts (sizes differ by at most one).
``dirichlet``
    Label skew: for every class, the proportions over devices are drawn from Dirichlet(α).
    Small α gives devices few classes; large α approaches iid.
``shards``
    McMahan et al. (2017): sort by label, cut into ``num_devices * shards_per_device`` shards and
    give every device ``shards_per_device`` random shards.
``quantity``
    Quantity skew: log-normal(0, σ) device sizes, iid contents.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable

import numpy as np

from crowdlearn.errors import CrowdlearnError

__all__ = [
    "PARTITIONERS",
    "dirichlet_partition",
    "iid_partition",
    "partition",
    "partition_stats",
    "quantity_partition",
    "shard_partition",
]


# --------------------------------------------------------------------------------------------
# helpers


def _check_rng(rng: object) -> np.random.Generator:
    if not isinstance(rng, np.random.Generator):
        raise TypeError(f"rng must be a numpy.random.Generator, got {type(rng).__name__}")
    return rng


def _as_labels(labels: object) -> np.ndarray:
    arr = np.asarray(labels)
    if arr.ndim != 1:
        raise CrowdlearnError(f"labels must be a 1-D array, got shape {arr.shape}")
    return arr


def _num_samples(n_or_labels: object) -> int:
    if isinstance(n_or_labels, (int, np.integer)) and not isinstance(n_or_labels, bool):
        if n_or_labels < 0:
            raise CrowdlearnError(f"number of samples must be >= 0, got {n_or_labels}")
        return int(n_or_labels)
    return int(_as_labels(n_or_labels).shape[0])


def _class_labels(labels: object, method: str | None) -> np.ndarray:
    arr = _as_labels(labels)
    if arr.dtype.kind not in "biu":
        if method is None:
            raise CrowdlearnError(f"class counts need integer class labels, got {arr.dtype} values")
        raise CrowdlearnError(
            f"the {method!r} partition skews by class and needs integer class labels, got "
            f"{arr.dtype} values (regression targets?); use method 'iid' or 'quantity' instead"
        )
    return arr


def _check_devices(num_devices: object, n: int) -> int:
    if isinstance(num_devices, bool) or not isinstance(num_devices, (int, np.integer)):
        raise CrowdlearnError(f"num_devices must be an integer, got {num_devices!r}")
    k = int(num_devices)
    if k < 1:
        raise CrowdlearnError(f"num_devices must be >= 1, got {k}")
    if k > n:
        raise CrowdlearnError(
            f"cannot give {k} devices at least one sample each from {n} samples; "
            "use fewer devices or a larger dataset"
        )
    return k


def _check_min_size(min_size: object, k: int, n: int) -> int:
    if isinstance(min_size, bool) or not isinstance(min_size, (int, np.integer)) or min_size < 0:
        raise CrowdlearnError(f"min_size must be an integer >= 0, got {min_size!r}")
    m = int(min_size)
    if m * k > n:
        raise CrowdlearnError(
            f"min_size={m} for {k} devices needs {m * k} samples but there are only {n}; "
            "lower min_size or use fewer devices"
        )
    return m


def _groups(owner: np.ndarray, k: int) -> list[np.ndarray]:
    """Index arrays (sorted, int64) of the samples owned by each of ``k`` devices."""
    order = np.argsort(owner, kind="stable").astype(np.int64)
    sizes = np.bincount(owner, minlength=k)
    return [part for part in np.split(order, np.cumsum(sizes)[:-1])]


def _split_by_sizes(perm: np.ndarray, sizes: np.ndarray) -> list[np.ndarray]:
    parts = np.split(perm.astype(np.int64), np.cumsum(sizes)[:-1])
    return [np.sort(p) for p in parts]


# --------------------------------------------------------------------------------------------
# partitioners


def iid_partition(
    labels: object, num_devices: int, *, rng: np.random.Generator
) -> list[np.ndarray]:
    """Shuffle and cut into ``num_devices`` near-equal parts.

    Parameters
    ----------
    labels : array_like or int
        The labels (only their number is used) or the number of samples ``N``.
    num_devices : int
        Number of parts, ``1 <= num_devices <= N``.
    rng : numpy.random.Generator

    Returns
    -------
    list of numpy.ndarray
        Sorted ``int64`` index arrays; sizes are ``N // num_devices`` or one more.

    Examples
    --------
    >>> import numpy as np
    >>> parts = iid_partition(10, 3, rng=np.random.default_rng(0))
    >>> [len(p) for p in parts]
    [4, 3, 3]
    >>> sorted(np.concatenate(parts).tolist()) == list(range(10))
    True
    """
    rng = _check_rng(rng)
    n = _num_samples(labels)
    k = _check_devices(num_devices, n)
    return [np.sort(p) for p in np.array_split(rng.permutation(n).astype(np.int64), k)]


def dirichlet_partition(
    labels: object,
    num_devices: int,
    *,
    alpha: float,
    rng: np.random.Generator,
    min_size: int = 1,
    max_tries: int = 100,
) -> list[np.ndarray]:
    """Label-skewed split: each class is spread over devices with Dirichlet(α) proportions.

    For every class ``c`` independently, proportions ``p ~ Dirichlet(α·1_K)`` are drawn and the
    class's samples (shuffled) are dealt to devices with multinomial counts ``Mult(n_c, p)``.
    The whole draw is repeated until every device has at least ``min_size`` samples, up to
    ``max_tries`` times.  If no draw succeeds (typical for tiny α with many devices), the last
    draw is repaired: devices short of ``min_size`` take random samples from the currently
    largest device until they have ``min_size``.  The repair moves at most
    ``min_size · num_devices`` samples, so the skew survives it.

    Parameters
    ----------
    labels : array_like of int
        Class label of every sample (any integers; the classes are the distinct values).
    num_devices : int
    alpha : float
        Concentration, ``> 0``.  ``α → 0``: each class lands on one device; ``α → ∞``: iid.
    rng : numpy.random.Generator
    min_size : int, default 1
        Minimum samples per device; ``min_size · num_devices`` must not exceed ``N``.
    max_tries : int, default 100
        Full redraws before falling back to the repair.

    Returns
    -------
    list of numpy.ndarray
        Sorted, disjoint ``int64`` index arrays covering every sample.

    Raises
    ------
    CrowdlearnError
        Float labels, ``alpha <= 0``, ``num_devices > N`` or ``min_size · num_devices > N``.

    Examples
    --------
    >>> import numpy as np
    >>> labels = np.repeat(np.arange(4), 25)
    >>> parts = dirichlet_partition(labels, 5, alpha=0.1, rng=np.random.default_rng(0))
    >>> len(parts), sum(len(p) for p in parts), min(len(p) for p in parts) >= 1
    (5, 100, True)
    """
    rng = _check_rng(rng)
    y = _class_labels(labels, "dirichlet")
    n = y.shape[0]
    k = _check_devices(num_devices, n)
    try:
        alpha = float(alpha)
    except (TypeError, ValueError):
        raise CrowdlearnError(f"dirichlet alpha must be a number > 0, got {alpha!r}") from None
    if not (alpha > 0 and np.isfinite(alpha)):
        raise CrowdlearnError(f"dirichlet alpha must be a finite number > 0, got {alpha!r}")
    m = _check_min_size(min_size, k, n)
    if isinstance(max_tries, bool) or not isinstance(max_tries, (int, np.integer)) or max_tries < 1:
        raise CrowdlearnError(f"max_tries must be an integer >= 1, got {max_tries!r}")

    classes, inverse = np.unique(y, return_inverse=True)
    by_class = [np.flatnonzero(inverse == c) for c in range(classes.size)]
    owner = np.empty(n, dtype=np.int64)
    conc = np.full(k, alpha)
    for _ in range(int(max_tries)):
        for idx in by_class:
            p = rng.dirichlet(conc)
            total = p.sum()
            if not (np.isfinite(total) and total > 0):  # all mass underflowed: one device takes it
                p = np.zeros(k)
                p[rng.integers(k)] = 1.0
            else:
                p = p / total
            counts = rng.multinomial(idx.size, p)
            owner[rng.permutation(idx)] = np.repeat(np.arange(k), counts)
        sizes = np.bincount(owner, minlength=k)
        if sizes.min() >= m:
            return _groups(owner, k)

    # Repair the last draw: top up short devices from the largest one.
    for d in np.flatnonzero(sizes < m):
        while sizes[d] < m:
            donor = int(np.argmax(sizes))
            take = min(m - sizes[d], sizes[donor] - m)
            moved = rng.choice(np.flatnonzero(owner == donor), size=take, replace=False)
            owner[moved] = d
            sizes[donor] -= take
            sizes[d] += take
    return _groups(owner, k)


def shard_partition(
    labels: object,
    num_devices: int,
    *,
    shards_per_device: int = 2,
    rng: np.random.Generator,
) -> list[np.ndarray]:
    """McMahan-style shards: sort by label, cut into shards, deal ``shards_per_device`` each.

    Samples are shuffled and then stably sorted by label (so a shard is a random subset of its
    classes), cut into ``S = num_devices · shards_per_device`` contiguous shards of
    ``N // S`` or ``N // S + 1`` samples, and each device receives ``shards_per_device`` shards
    chosen at random without replacement.  When every class has at least ``ceil(N / S)``
    samples, a shard spans at most two classes, so a device sees at most
    ``2 · shards_per_device`` classes.

    Parameters
    ----------
    labels : array_like of int
    num_devices : int
    shards_per_device : int, default 2
        ``num_devices · shards_per_device`` must not exceed ``N``.
    rng : numpy.random.Generator

    Returns
    -------
    list of numpy.ndarray
        Sorted, disjoint ``int64`` index arrays covering every sample.

    Examples
    --------
    >>> import numpy as np
    >>> labels = np.repeat(np.arange(10), 20)
    >>> parts = shard_partition(labels, 10, shards_per_device=2, rng=np.random.default_rng(0))
    >>> [len(p) for p in parts] == [20] * 10
    True
    >>> max(len(np.unique(labels[p])) for p in parts) <= 2
    True
    """
    rng = _check_rng(rng)
    y = _class_labels(labels, "shards")
    n = y.shape[0]
    k = _check_devices(num_devices, n)
    if (
        isinstance(shards_per_device, bool)
        or not isinstance(shards_per_device, (int, np.integer))
        or shards_per_device < 1
    ):
        raise CrowdlearnError(
            f"shards_per_device must be an integer >= 1, got {shards_per_device!r}"
        )
    s = int(shards_per_device)
    num_shards = k * s
    if num_shards > n:
        raise CrowdlearnError(
            f"{k} devices x {s} shards = {num_shards} shards but only {n} samples; "
            "lower shards_per_device or num_devices"
        )
    shuffled = rng.permutation(n)
    by_label = shuffled[np.argsort(y[shuffled], kind="stable")].astype(np.int64)
    shards = np.array_split(by_label, num_shards)
    deal = rng.permutation(num_shards).reshape(k, s)
    return [np.sort(np.concatenate([shards[j] for j in row])) for row in deal]


def quantity_partition(
    labels: object,
    num_devices: int,
    *,
    sigma: float = 1.0,
    rng: np.random.Generator,
    min_size: int = 1,
) -> list[np.ndarray]:
    """Quantity skew: log-normal device sizes, iid contents.

    Weights ``w_i ~ LogNormal(0, σ)`` set the share of each device: every device first gets
    ``min_size`` samples and the remaining ``N - min_size · K`` are apportioned in proportion
    to ``w`` (largest-remainder rounding).  Contents are a random permutation, so labels are
    ignored and regression targets work.  ``σ = 0`` gives near-equal sizes.

    Parameters
    ----------
    labels : array_like or int
        The labels (only their number is used) or ``N``.
    num_devices : int
    sigma : float, default 1.0
        Log-normal shape, ``>= 0``.
    rng : numpy.random.Generator
    min_size : int, default 1
        Minimum samples per device; ``min_size · num_devices`` must not exceed ``N``.

    Returns
    -------
    list of numpy.ndarray
        Sorted, disjoint ``int64`` index arrays covering every sample.

    Examples
    --------
    >>> import numpy as np
    >>> parts = quantity_partition(1000, 5, sigma=1.5, rng=np.random.default_rng(0))
    >>> sum(len(p) for p in parts), min(len(p) for p in parts) >= 1
    (1000, True)
    """
    rng = _check_rng(rng)
    n = _num_samples(labels)
    k = _check_devices(num_devices, n)
    try:
        sigma = float(sigma)
    except (TypeError, ValueError):
        raise CrowdlearnError(f"quantity sigma must be a number >= 0, got {sigma!r}") from None
    if not (sigma >= 0 and np.isfinite(sigma)):
        raise CrowdlearnError(f"quantity sigma must be a finite number >= 0, got {sigma!r}")
    m = _check_min_size(min_size, k, n)
    log_w = rng.normal(0.0, sigma, size=k)  # log of LogNormal(0, sigma) weights
    w = np.exp(log_w - log_w.max())  # same proportions, no overflow for large sigma
    share = (n - m * k) * (w / w.sum())
    extra = np.floor(share).astype(np.int64)
    leftover = (n - m * k) - int(extra.sum())
    if leftover > 0:
        extra[np.argsort(-(share - extra), kind="stable")[:leftover]] += 1
    sizes = m + extra
    return _split_by_sizes(rng.permutation(n), sizes)


#: Partition methods by name; :func:`partition` dispatches through this.
PARTITIONERS: dict[str, Callable[..., list[np.ndarray]]] = {
    "iid": iid_partition,
    "dirichlet": dirichlet_partition,
    "shards": shard_partition,
    "quantity": quantity_partition,
}


def _method_params(fn: Callable[..., object]) -> tuple[set[str], set[str]]:
    """(all, required) keyword parameters of a partitioner, apart from ``rng``."""
    params = inspect.signature(fn).parameters.values()
    kw = [p for p in params if p.kind is inspect.Parameter.KEYWORD_ONLY and p.name != "rng"]
    return {p.name for p in kw}, {p.name for p in kw if p.default is inspect.Parameter.empty}


def partition(
    labels: object,
    num_devices: int,
    *,
    method: str = "iid",
    rng: np.random.Generator,
    **params: object,
) -> list[np.ndarray]:
    """Split sample indices across devices with a named method.

    Parameters
    ----------
    labels : array_like
        Labels of the training set (integer classes; float targets work with ``iid`` and
        ``quantity``).
    num_devices : int
    method : str, default "iid"
        A key of :data:`PARTITIONERS`: ``iid``, ``dirichlet``, ``shards`` or ``quantity``.
    rng : numpy.random.Generator
    **params
        Method parameters: ``dirichlet``: ``alpha`` (required), ``min_size``, ``max_tries``;
        ``shards``: ``shards_per_device``; ``quantity``: ``sigma``, ``min_size``.

    Returns
    -------
    list of numpy.ndarray
        ``num_devices`` sorted, disjoint ``int64`` index arrays covering every sample.

    Raises
    ------
    CrowdlearnError
        Unknown method or parameter, a missing required parameter, or a split that is impossible
        for these labels (too many devices, class-based method on regression targets, ...).

    Examples
    --------
    >>> import numpy as np
    >>> labels = np.arange(100) % 10
    >>> parts = partition(labels, 4, method="dirichlet", alpha=0.5, rng=np.random.default_rng(1))
    >>> len(parts), sum(map(len, parts))
    (4, 100)
    >>> partition(labels, 4, method="nope", rng=np.random.default_rng(1))
    Traceback (most recent call last):
    ...
    slicenet.errors.UserError: unknown partition method 'nope'; valid: iid, dirichlet, shards, quantity
    """
    fn = PARTITIONERS.get(method) if isinstance(method, str) else None
    if fn is None:
        raise CrowdlearnError(
            f"unknown partition method {method!r}; valid: {', '.join(PARTITIONERS)}"
        )
    allowed, required = _method_params(fn)
    unknown = sorted(set(params) - allowed)
    if unknown:
        raise CrowdlearnError(
            f"unknown parameter(s) {', '.join(unknown)} for partition method {method!r}; "
            f"valid: {', '.join(sorted(allowed)) or 'none'}"
        )
    missing = sorted(required - set(params))
    if missing:
        raise CrowdlearnError(
            f"partition method {method!r} needs parameter(s) {', '.join(missing)}"
        )
    return fn(labels, num_devices, rng=rng, **params)


def partition_stats(parts: list[np.ndarray], labels: object, num_classes: int) -> np.ndarray:
    """Per-device class counts.

    Parameters
    ----------
    parts : list of numpy.ndarray
        Index arrays, as returned by :func:`partition`.
    labels : array_like of int
        Labels in ``[0, num_classes)``.
    num_classes : int

    Returns
    -------
    numpy.ndarray
        ``int64`` array of shape ``(len(parts), num_classes)``; row ``i`` counts device ``i``'s
        samples per class.

    Examples
    --------
    >>> import numpy as np
    >>> partition_stats([np.array([0, 1]), np.array([2])], np.array([0, 1, 1]), 2)
    array([[1, 1],
           [0, 1]])
    """
    y = _class_labels(labels, None)
    if num_classes < 1:
        raise CrowdlearnError(f"num_classes must be >= 1, got {num_classes}")
    if y.size and (y.min() < 0 or y.max() >= num_classes):
        raise CrowdlearnError(f"labels must lie in [0, {num_classes}), found {y.min()}..{y.max()}")
    out = np.zeros((len(parts), num_classes), dtype=np.int64)
    for i, p in enumerate(parts):
        out[i] = np.bincount(y[np.asarray(p, dtype=np.int64)], minlength=num_classes)
    return out
