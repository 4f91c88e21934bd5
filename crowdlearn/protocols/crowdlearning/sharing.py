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
        self._answers: tuple | None = None    # (tick, min_count, keep, means) until an upload

    def upload(self, idx: np.ndarray, vals: np.ndarray, tick: int) -> None:
        """Record the values uploaded in ``tick``.  Slot ``tick mod ω`` holds a weight's value
        of that tick (one upload per weight and tick: a group's members own disjoint weights),
        so the window keeps exactly its last ω ticks whatever order uploads arrive in; an
        upload older than the one its slot holds has left the window and is dropped."""
        idx = np.asarray(idx, np.int64)
        if idx.size == 0:
            return
        self._answers = None
        # flat positions idx·ω + slot of the row-major window (a 1-d take and put instead of
        # 2-d fancy indexing; and no compress when every value is newer, as in-order uploads are)
        flat = idx * self.omega + int(tick) % self.omega
        ticks, values = self.ticks.reshape(-1), self.values.reshape(-1)
        newer = ticks.take(flat) <= tick
        vals = np.asarray(vals)
        if not newer.all():
            flat, vals = flat[newer], vals[newer]
        values[flat] = vals
        ticks[flat] = tick

    def query(self, idx: np.ndarray, tick: int, min_count: float) -> tuple[np.ndarray, np.ndarray]:
        """Indices among ``idx`` with more than ``min_count`` uploads in the window, and means.

        After :meth:`prepare` with the same ``tick`` and ``min_count`` (and no upload since),
        the answer is picked from the prepared means of every weight: the same indices and
        the same float32 bits (each weight's row is reduced by the same code either way)."""
        idx = np.asarray(idx, np.int64)
        ans = self._answers
        if ans is not None and ans[0] == tick and ans[1] == min_count:
            got = idx[ans[2][idx]]
            return got, ans[3][got]
        live = self.ticks[idx] > tick - self.omega
        count = live.sum(axis=1)
        keep = count > min_count
        if min_count <= 0:
            keep &= count > 0
        live = live[keep]
        vals = self.values[idx[keep]]
        # np.where(live, vals, 0.0) bit for bit (0.0 is all bits clear) without a branch per
        # entry; summed along each contiguous row, as numpy summed the slot-major view before
        masked = (vals.view(np.int32) & -live.astype(np.int32)).view(np.float32)
        sums = masked.sum(axis=1)
        return idx[keep], (sums / count[keep]).astype(np.float32)

    def prepare(self, tick: int, min_count: float) -> None:
        """Answer :meth:`query` at ``tick`` for every weight at once, until the next upload.

        The server answers every member's download of an epoch at the same tick: one pass over
        the whole window (its rows in order) instead of one gather of the owned rows per
        member (120 queries of a 120-device ``paper-mlp`` epoch cost about 10× more).

        Examples
        --------
        >>> w = SlidingWindow(np.zeros(3, np.float32), omega=2)
        >>> w.upload(np.array([0, 2]), np.array([1.0, 4.0]), tick=1)
        >>> before = w.query(np.array([0, 1, 2]), tick=1, min_count=0)
        >>> w.prepare(tick=1, min_count=0)
        >>> after = w.query(np.array([0, 1, 2]), tick=1, min_count=0)
        >>> [a.tolist() for a in after] == [b.tolist() for b in before] == [[0, 2], [1.0, 4.0]]
        True
        """
        live = self.ticks > tick - self.omega
        count = np.zeros(len(live), np.int64)
        for s in range(self.omega):        # column by column: ≈ 5× faster than sum(axis=1)
            count += live[:, s]
        keep = count > min_count
        if min_count <= 0:
            keep &= count > 0
        rows = np.flatnonzero(keep)
        vals = np.take(self.values, rows, axis=0)
        masked = (vals.view(np.int32) & -np.take(live, rows, axis=0).astype(np.int32)) \
            .view(np.float32)
        means = np.zeros(len(live), np.float32)
        means[rows] = (masked.sum(axis=1) / count[rows]).astype(np.float32)
        self._answers = (tick, min_count, keep, means)
