"""Unreliable participants: devices whose local data is of low quality (ring 0: numpy only).

**[ours]** — the spec (``spec/zhao-fm.md``) names the kinds; how each is simulated is our choice.
Zhao et al. (TIFS 2019) only state that some participants' data is of low quality.

Kinds (:data:`KINDS`), applied to every row of an unreliable device unless a rate says otherwise:

``label_flip``
    ``round(flip_rate·n)`` of the device's rows, chosen at random, get a wrong label: ``1 − y`` for
    two classes, a uniformly random *other* class for more; for regression (standardised
    targets) the target is mirrored, ``y ↦ −y``.
``feature_noise``
    Gaussian noise ``N(0, feature_sigma²)`` added to every feature of every row.
``random``
    Random data: each feature drawn from a normal with the training set's column mean and
    standard deviation; labels uniform over the classes (regression: a normal with the targets'
    mean and standard deviation).
``underrepresented``
    Indices only: of the device's rows of the chosen classes (``classes``, or one class drawn per
    device) only ``ceil(keep_fraction·count)`` are kept (at least one row of the device survives).

Which devices: an explicit mapping ``{device: kind}``, or a ``fraction`` of the fleet drawn at
random, all of one ``kind`` (the mapping wins for the devices it names).

Storage: one extended array set, not per-device copies
--------------------------------------------------------
A device's data stays *a set of indices*.  Corrupted rows are **appended** once to a copy of the
training arrays — ``x = [x_train; rows of corrupted devices]`` — and a corrupted device's index
array points at its new rows instead of the originals.  Clean devices keep their index arrays
unchanged (their indices still address the original rows, which come first), so anything that
takes ``(x, y, parts)`` — a batched trainer, the functional mechanism's coefficient job — works
unchanged on :attr:`Corrupted.x`, :attr:`Corrupted.y`, :attr:`Corrupted.parts`.  The cost is one
copy of the training set plus the corrupted rows; no device's data is copied twice.

Randomness: one ``numpy.random.Generator``; devices are processed in increasing id order and each
kind draws a fixed sequence, so a seed reproduces the corruption exactly.

References
----------
L. Zhao, Q. Wang, Q. Zou, Y. Zhang, Y. Chen, "Privacy-Preserving Collaborative Deep Learning with
Unreliable Participants", IEEE TIFS 15, 2019 (only the abstract was available to us; the kinds
of low-quality data simulated here are ours).

Examples
--------
>>> rng = np.random.default_rng(0)
>>> x, y = np.zeros((8, 2), np.float32), np.array([0, 1] * 4)
>>> parts = [np.arange(0, 4), np.arange(4, 8)]
>>> c = corrupt(x, y, parts, {1: "label_flip"}, rng=rng, num_classes=2)
>>> c.x.shape, c.parts[0].tolist(), c.parts[1].tolist()
((12, 2), [0, 1, 2, 3], [8, 9, 10, 11])
>>> c.y[c.parts[1]].tolist(), c.changed[1]
([1, 0, 1, 0], 4)
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np

from crowdlearn.errors import CrowdlearnError
from crowdlearn.schema import keys, param, validate

__all__ = ["KINDS", "Corrupted", "QualitySection", "assignment", "corrupt", "cross_check",
           "from_config", "stream"]

KINDS = ("label_flip", "feature_noise", "random", "underrepresented")

#: Index of the seed stream of corruption (after ``crowdlearn.experiment.STREAMS``' six streams).
STREAM_INDEX = 6


def stream(seed: int, index: int = STREAM_INDEX) -> np.random.Generator:
    """A generator for child ``index`` of ``SeedSequence(seed)``.

    Equal to the ``index``-th stream ``crowdlearn.experiment`` spawns from the master seed, so appending
    ``"quality"`` to its ``STREAMS`` reproduces the same draws.
    """
    return np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(index,)))


@dataclass(frozen=True, eq=False)
class Corrupted:
    """Training arrays extended with the corrupted rows, and every device's index array.

    Attributes
    ----------
    x, y : ndarray
        ``[x_train; appended rows]`` and their labels (same dtypes as the originals).
    parts : list of int64 arrays
        Per-device indices into ``x`` / ``y``.
    kinds : dict
        Device → kind, for the unreliable devices.
    changed : dict
        Device → how many of its rows were altered (labels flipped, rows replaced or noised,
        rows dropped for ``underrepresented``).
    base_rows : int
        ``len(x_train)``: indices below it are original rows.
    """

    x: np.ndarray
    y: np.ndarray
    parts: list
    kinds: dict = field(default_factory=dict)
    changed: dict = field(default_factory=dict)
    base_rows: int = 0

    @property
    def unreliable(self) -> list:
        return sorted(self.kinds)


def assignment(num_devices: int, *, fraction: float = 0.0, kind: str = "label_flip",
               devices: Mapping | None = None, rng: np.random.Generator) -> dict[int, str]:
    """Device → kind: ``round(fraction·num_devices)`` devices drawn at random, then ``devices``.

    Examples
    --------
    >>> a = assignment(10, fraction=0.3, rng=np.random.default_rng(0))
    >>> len(a), set(a.values())
    (3, {'label_flip'})
    >>> assignment(4, devices={"2": "random"}, rng=np.random.default_rng(0))
    {2: 'random'}
    """
    if not 0 <= fraction <= 1:
        raise ValueError(f"fraction must be in [0, 1]; got {fraction}")
    if kind not in KINDS:
        raise ValueError(f"kind must be one of {KINDS}; got {kind!r}")
    out: dict[int, str] = {}
    count = int(round(fraction * num_devices))
    if count:
        for d in np.sort(rng.choice(num_devices, size=count, replace=False)).tolist():
            out[int(d)] = kind
    for d, k in (devices or {}).items():
        d = int(d)
        if not 0 <= d < num_devices:
            raise ValueError(f"device {d} out of range [0, {num_devices})")
        if k not in KINDS:
            raise ValueError(f"device {d}: kind must be one of {KINDS}; got {k!r}")
        out[d] = k
    return dict(sorted(out.items()))


def corrupt(x: np.ndarray, y: np.ndarray, parts: Sequence[np.ndarray],
            kinds: Mapping[int, str], *, rng: np.random.Generator, num_classes: int = 0,
            flip_rate: float = 1.0, feature_sigma: float = 1.0, keep_fraction: float = 0.1,
            classes: Sequence[int] = ()) -> Corrupted:
    """Apply ``kinds`` (device → kind) to the devices' rows (see the module notes).

    Parameters
    ----------
    x, y : ndarray
        The training arrays (not modified).
    parts : sequence of int arrays
        Per-device indices into ``x``.
    num_classes : int
        ``0`` for regression.
    flip_rate : float
        Fraction of an unreliable device's labels to flip (``label_flip``).
    feature_sigma : float
        Standard deviation of the added noise (``feature_noise``).
    keep_fraction : float
        Share of the under-represented classes' rows kept (``underrepresented``).
    classes : sequence of int
        The under-represented classes; empty: one class drawn per device.
    """
    if not 0 <= flip_rate <= 1:
        raise ValueError(f"flip_rate must be in [0, 1]; got {flip_rate}")
    if not 0 <= keep_fraction <= 1:
        raise ValueError(f"keep_fraction must be in [0, 1]; got {keep_fraction}")
    if feature_sigma < 0:
        raise ValueError(f"feature_sigma must be >= 0; got {feature_sigma}")
    regression = num_classes == 0
    x = np.asarray(x)
    y = np.asarray(y)
    new_parts = [np.asarray(p, np.int64) for p in parts]
    extra_x: list[np.ndarray] = []
    extra_y: list[np.ndarray] = []
    next_row = x.shape[0]
    changed: dict[int, int] = {}
    col_mean, col_std = x.mean(axis=0), x.std(axis=0)
    y_mean, y_std = (float(y.mean()), float(y.std())) if regression else (0.0, 0.0)
    for d, kind in sorted(kinds.items()):
        idx = new_parts[d]
        n = idx.size
        if kind == "underrepresented":
            if regression:
                raise ValueError("underrepresented classes need a classification set")
            keep, dropped = _underrepresent(y[idx], num_classes, keep_fraction, classes, rng)
            new_parts[d] = idx[keep]
            changed[d] = dropped
            continue
        xs, ys = x[idx].copy(), y[idx].copy()
        if kind == "label_flip":
            k = int(round(flip_rate * n))
            rows = rng.choice(n, size=k, replace=False) if k else np.zeros(0, np.int64)
            if regression:
                ys[rows] = -ys[rows]
            elif num_classes == 2:
                ys[rows] = 1 - ys[rows]
            else:
                shift = rng.integers(1, num_classes, size=k)
                ys[rows] = (ys[rows] + shift) % num_classes
            changed[d] = k
        elif kind == "feature_noise":
            xs = (xs + rng.normal(0.0, feature_sigma, size=xs.shape)).astype(x.dtype)
            changed[d] = n
        elif kind == "random":
            xs = rng.normal(col_mean, col_std, size=xs.shape).astype(x.dtype)
            if regression:
                ys = rng.normal(y_mean, y_std, size=n).astype(y.dtype)
            else:
                ys = rng.integers(0, num_classes, size=n).astype(y.dtype)
            changed[d] = n
        else:
            raise ValueError(f"kind must be one of {KINDS}; got {kind!r}")
        extra_x.append(xs)
        extra_y.append(ys)
        new_parts[d] = np.arange(next_row, next_row + n, dtype=np.int64)
        next_row += n
    x_out = np.concatenate([x, *extra_x]) if extra_x else x.copy()
    y_out = np.concatenate([y, *extra_y]) if extra_y else y.copy()
    return Corrupted(x_out, y_out, new_parts, dict(sorted(kinds.items())), changed, x.shape[0])


def _underrepresent(labels, num_classes, keep_fraction, classes, rng):
    outside = [c for c in classes if not 0 <= c < num_classes]
    if outside:
        raise CrowdlearnError(f"quality.classes: {outside} not among the dataset's classes "
                              f"0..{num_classes - 1}; name classes of the dataset")
    chosen = list(classes) if len(classes) else [int(rng.integers(0, num_classes))]
    keep = np.ones(labels.size, bool)
    for c in chosen:
        rows = np.flatnonzero(labels == c)
        if rows.size == 0:
            continue
        k = math.ceil(keep_fraction * rows.size)
        drop = rng.choice(rows, size=rows.size - k, replace=False)
        keep[drop] = False
    if not keep.any():                       # never leave a device empty
        keep[int(rng.integers(0, labels.size))] = True
    return np.flatnonzero(keep), int(labels.size - keep.sum())


# ---------------------------------------------------------------- configuration
@dataclass(frozen=True)
class QualitySection:
    """The ``[quality]`` config section (unreliable participants), declared once here
    (:mod:`crowdlearn.schema`: each field's default, documentation and limits)."""

    fraction: float = param(0.0, "Fraction of the fleet that is unreliable (devices drawn at "
                            "random; 0 = none).", min=0, max=1)
    kind: str = param("label_flip", "What is wrong with the unreliable devices' data: "
                      "'label_flip', 'feature_noise', 'random' (random features and labels) or "
                      "'underrepresented' (classes mostly missing).", choices=KINDS)
    devices: dict = param({}, "Explicit unreliable devices: a table of device id = kind "
                          "(added to, and overriding, the random fraction).")
    flip_rate: float = param(1.0, "Fraction of an unreliable device's labels flipped "
                             "(label_flip).", min=0, max=1)
    feature_sigma: float = param(1.0, "Std of the Gaussian noise added to features "
                                 "(feature_noise), in standardised units.", min=0)
    keep_fraction: float = param(0.1, "Share of the under-represented classes' rows a device "
                                 "keeps (underrepresented).", min=0, max=1)
    classes: list = param([], "Under-represented classes (empty: one drawn per device).",
                          item_type=int, item_min=0)

    def __post_init__(self) -> None:
        validate(self)


#: the ``[quality]`` config section (derived from :class:`QualitySection`; registered by the
#: protocols that read it)
CONFIG_SECTION = keys(QualitySection)


def cross_check(section: dict, *, task: str | None = None) -> list[str]:
    """Problems of a resolved ``[quality]`` section that single keys cannot express."""
    out = []
    for d, k in (section.get("devices") or {}).items():
        if not str(d).isdigit():
            out.append(f"quality.devices.{d}: device ids are integers >= 0")
        if k not in KINDS:
            out.append(f"quality.devices.{d}: kind must be one of {', '.join(KINDS)}; got {k!r}")
    uses_under = section.get("kind") == "underrepresented" and section.get("fraction", 0) > 0 \
        or "underrepresented" in (section.get("devices") or {}).values()
    if task == "regression" and uses_under:
        out.append("quality.kind: 'underrepresented' needs a classification dataset")
    return out


def from_config(section, x, y, parts, *, num_classes: int, seed: int) -> Corrupted:
    """Apply a resolved ``[quality]`` section (attributes or a dict) with the quality stream."""
    s = section if isinstance(section, Mapping) else vars(section)
    rng = stream(seed)
    kinds = assignment(len(parts), fraction=s["fraction"], kind=s["kind"],
                       devices=s.get("devices") or {}, rng=rng)
    return corrupt(x, y, parts, kinds, rng=rng, num_classes=num_classes,
                   flip_rate=s["flip_rate"], feature_sigma=s["feature_sigma"],
                   keep_fraction=s["keep_fraction"], classes=tuple(s.get("classes") or ()))
