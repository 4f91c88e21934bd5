"""Top-θ sharing (spec §5–6): which weights a member uploads, and the server's sliding window
of uploads from which downloads are answered."""

from __future__ import annotations

import numpy as np

__all__ = ["SlidingWindow", "top_k"]


def top_k(scores: np.ndarray, k: int) -> np.ndarray:
    """Sorted positions of the ``k`` largest ``scores``, ties going to the lower position: the
    set ``np.argsort(-scores, kind="stable")[:k]``, found by one partition (linear time)
    instead of a sort.

    Examples
    --------
    >>> top_k(np.array([1.0, 3.0, 2.0, 3.0, 2.0]), 3).tolist()
    [1, 2, 3]
    """
    n = len(scores)
    if k >= n:
        return np.arange(n)
    if k <= 0:
        return np.arange(0)
    if np.isnan(scores).any():          # argsort's order puts NaN last: keep it exactly
        return np.sort(np.argsort(-scores, kind="stable")[:k])
    cut = np.partition(scores, n - k)[n - k]         # the k-th largest score
    keep = scores > cut
    ties = np.flatnonzero(scores == cut)
    keep[ties[:k - int(np.count_nonzero(keep))]] = True
    return np.flatnonzero(keep)


# ====================================================================== server
class SlidingWindow:
    """Per weight, the values uploaded during the last ω ticks (spec §6, [ours] ticks).

    Examples
    --------
    >>> w = SlidingWindow(np.zeros(3, np.float32), omega=2)
    >>> w.upload(np.array([0, 1]), np.array([1.0, 2.0]), tick=1)
    >>> w.upload(np.array([0]), np.array([3.0]), tick=2)
    >>> idx, val = w.query(np.arange(3), tick=2, min_count=0)
    >>> idx.tolist(), val.tolist()
    ([0, 1], [2.0, 2.0])
    >>> w.query(np.arange(3), tick=3, min_count=0)[0].tolist()   # tick 1 left the window
    [0]
    """

    def __init__(self, init: np.ndarray, omega: int):
        self.omega = int(omega)
        n = len(init)
        # one row per weight (its ω slots side by side): a query gathers contiguous rows
        self.values = np.zeros((n, self.omega), np.float32)
        self.ticks = np.full((n, self.omega), -(10 ** 9), np.int32)     # ticks: epochs
        # the server answers every download of a tick from one unchanged window: from the
        # second query of a window state and tick on, every weight's count and sum are read
        # from one pass over the whole window instead of one gather per query
        self._version = 0
        self._asked: tuple | None = None     # (version, tick) of the last query
        self._full: tuple | None = None      # (version, tick, count, sums) of every weight

    def upload(self, idx: np.ndarray, vals: np.ndarray, tick: int) -> None:
        """Record the values uploaded in ``tick``.  Slot ``tick mod ω`` holds a weight's value
        of that tick (one upload per weight and tick: a group's members own disjoint weights),
        so the window keeps exactly its last ω ticks whatever order uploads arrive in; an
        upload older than the one its slot holds has left the window and is dropped."""
        idx = np.asarray(idx, np.int64)
        if idx.size == 0:
            return
        self._version += 1
        slot = int(tick) % self.omega
        newer = self.ticks[idx, slot] <= tick
        self.values[idx[newer], slot] = np.asarray(vals)[newer]
        self.ticks[idx[newer], slot] = tick

    def query(self, idx: np.ndarray, tick: int, min_count: float) -> tuple[np.ndarray, np.ndarray]:
        """Indices among ``idx`` with more than ``min_count`` uploads in the window, and means."""
        idx = np.asarray(idx, np.int64)
        state = (self._version, int(tick))
        if self._full is not None and self._full[:2] == state:
            count, sums = self._full[2][idx], self._full[3][idx]
            keep = self._keep(count, min_count)
            return idx[keep], (sums[keep] / count[keep]).astype(np.float32)
        if self._asked == state:             # a second query of this state: read all once
            count, sums = self._count_sums(self.ticks, self.values, tick)
            self._full = (*state, count, sums)
            return self.query(idx, tick, min_count)
        self._asked = state
        ticks = self.ticks[idx]
        count = (ticks > tick - self.omega).sum(axis=1)
        keep = self._keep(count, min_count)
        _, sums = self._count_sums(ticks[keep], self.values[idx[keep]], tick)
        return idx[keep], (sums / count[keep]).astype(np.float32)

    @staticmethod
    def _keep(count: np.ndarray, min_count: float) -> np.ndarray:
        keep = count > min_count
        if min_count <= 0:
            keep &= count > 0
        return keep

    def _count_sums(self, ticks: np.ndarray, vals: np.ndarray, tick: int):
        """Per row: the uploads inside the window ending at ``tick``, and their sum."""
        live = ticks > tick - self.omega
        # np.where(live, vals, 0.0) bit for bit (0.0 is all bits clear) without a branch per
        # entry; summed along each contiguous row (every row the same length ω, so a row's sum
        # does not depend on which other rows are summed with it)
        masked = (vals.view(np.int32) & -live.astype(np.int32)).view(np.float32)
        return live.sum(axis=1), masked.sum(axis=1)
