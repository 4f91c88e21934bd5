"""Checks a server (or device) runs on what a peer sends, before it touches any state.

Each ``check_*`` function returns ``None`` when the input is acceptable, or a short reason
string naming what is wrong; the caller records ``Report("peer_misbehaved", reason, ...)``
(:func:`misbehaved`) and drops the message, so that a hostile or broken peer can neither crash
a machine nor change its model ("the peer misbehaved" is not an error of ours; see
:mod:`crowdlearn.errors`).  :func:`sparse_vector` is the shape/dtype check messages run in
``__post_init__`` (a :class:`~crowdlearn.errors.WireError` when decoding).

Examples
--------
>>> import numpy as np
>>> check_sparse(np.array([0, 2], np.int32), np.array([1.0, 2.0], np.float32), size=3)
>>> check_sparse(np.array([-1], np.int32), np.array([1.0], np.float32), size=3)
'index out of range [0, 3)'
>>> check_sparse(np.array([1], np.int32), np.array([np.nan], np.float32), size=3)
'non-finite value'
>>> check_bounded(np.array([0.5, -2.0], np.float32), bound=1.0)
'value 2 beyond the clipping bound 1'
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from sim import wire
from sim.machine import NodeId, Report

__all__ = ["check_bounded", "check_sparse", "check_weights", "misbehaved", "sparse_vector"]


def misbehaved(src: NodeId, reason: str, **tags: Any) -> Report:
    """The record of a dropped message: ``Report("peer_misbehaved", reason, device=src, ...)``."""
    return Report("peer_misbehaved", reason, (("device", src),) + tuple(tags.items()))


def _array(v: Any) -> bool:
    """An array, or a lazy one (:func:`sim.wire.is_lazy_array`: its declared shape and dtype
    are checked without computing it)."""
    return isinstance(v, np.ndarray) or wire.is_lazy_array(v)


def sparse_vector(indices: Any, values: Any) -> None:
    """Raise ``ValueError`` unless ``indices`` is a 1-D integer array and ``values`` a 1-D
    floating array of the same length (arrays computed lazily by their declared shape and
    dtype)."""
    if not _array(indices) or len(indices.shape) != 1 or indices.dtype.kind not in "iu":
        raise ValueError(f"indices must be a 1-D integer array; got {type(indices).__name__} "
                         f"{getattr(indices, 'dtype', '')} {getattr(indices, 'shape', '')}")
    if not _array(values) or len(values.shape) != 1 or values.dtype.kind != "f":
        raise ValueError(f"values must be a 1-D float array; got {type(values).__name__} "
                         f"{getattr(values, 'dtype', '')} {getattr(values, 'shape', '')}")
    if len(indices) != len(values):
        raise ValueError(f"{len(indices)} indices for {len(values)} values")


def check_sparse(indices: Any, values: Any, *, size: int, allowed: np.ndarray | None = None,
                 max_entries: int | None = None) -> str | None:
    """A sparse vector over ``range(size)``: well formed, in range, no repeats, finite values,
    at most ``max_entries`` entries, and (if given) only indices in the sorted ``allowed``."""
    try:
        sparse_vector(indices, values)
    except ValueError as exc:
        return str(exc)
    indices, values = np.asarray(indices), np.asarray(values)     # (a lazy array: computed)
    if max_entries is not None and len(indices) > max_entries:
        return f"{len(indices)} entries > {max_entries}"
    if not len(indices):
        return None
    idx = indices.astype(np.int64)
    if idx.min() < 0 or idx.max() >= size:
        return f"index out of range [0, {size})"
    if idx.size > 1 and not np.all(idx[1:] > idx[:-1]):    # sorted and distinct: no repeats
        if size <= 64 * idx.size + (1 << 20):      # a mark per index (np.unique is slower)
            seen = np.zeros(size, np.bool_)
            seen[idx] = True
            repeated = int(np.count_nonzero(seen)) != idx.size
        else:
            s = np.sort(idx)
            repeated = bool(np.any(s[1:] == s[:-1]))
        if repeated:
            return "repeated index"
    if not np.all(np.isfinite(values)):
        return "non-finite value"
    if allowed is not None:
        pos = np.searchsorted(allowed, idx)
        if np.any(pos >= len(allowed)) or np.any(allowed[np.minimum(pos, len(allowed) - 1)] != idx):
            return "index not owned by the sender"
    return None


def check_bounded(values: np.ndarray, *, bound: float) -> str | None:
    """Every ``|value| <= bound`` (the sender's clipping bound; float32 rounding allowed)."""
    if not np.isfinite(bound) or not len(values):
        return None
    worst = float(np.max(np.abs(values.astype(np.float64))))
    if not worst <= float(np.float32(bound)) * (1 + 1e-6):
        return f"value {worst:g} beyond the clipping bound {bound:g}"
    return None


def check_weights(weights: Any, shapes: Sequence[tuple], *, num_samples: Any = 0) -> str | None:
    """A dense weight list of exactly ``shapes`` (float arrays, finite) and a sample count that is
    a non-negative integer."""
    if isinstance(num_samples, (bool, np.bool_)) or not isinstance(num_samples, (int, np.integer)) \
            or num_samples < 0:
        return f"num_samples must be an integer >= 0; got {num_samples!r}"
    if hasattr(weights, "shapes") and hasattr(weights, "dtypes") and hasattr(weights, "value"):
        # a simulation's deferred result of our own executor: shapes are checked here, values
        # are computed later in a batch (on a real wire the weights are arrays, checked fully)
        if [tuple(s) for s in weights.shapes] != [tuple(s) for s in shapes] or \
                not all(np.dtype(d).kind == "f" for d in weights.dtypes):
            return f"deferred weights of shapes {list(weights.shapes)}, expected {list(shapes)}"
        return None
    if not isinstance(weights, (tuple, list)) or len(weights) != len(shapes):
        return f"{len(weights) if hasattr(weights, '__len__') else '?'} weight arrays for " \
               f"{len(shapes)}"
    for i, (w, s) in enumerate(zip(weights, shapes, strict=True)):
        if not isinstance(w, np.ndarray) or w.dtype.kind != "f" or tuple(w.shape) != tuple(s):
            return f"weight {i}: {getattr(w, 'dtype', type(w).__name__)} " \
                   f"{getattr(w, 'shape', '')}, expected float {tuple(s)}"
        if not np.all(np.isfinite(w)):
            return f"weight {i}: non-finite value"
    return None
