"""TensorFlow's thread pools for a run (``training.threads``).

TensorFlow runs each op on a pool of threads, by default one per core, and the order in which
those threads add partial sums changes a float's last bits: a run's numbers depend on the pool's
size.  Several runs side by side (a sweep's ``--jobs``) each with a pool of every core ask for
``jobs × cores`` busy threads on ``cores`` cores; measured here, that made a 2-job sweep no faster
than 1 job, and a pool of one thread per run 1.2–1.4× faster (``docs/benchmarks.md``, "Sweeps:
threads per run").  So a run's pool size is part of its configuration, recorded in its
``config.json`` like every other key: ``0`` leaves TensorFlow as the process has it (its default,
every core, unless an earlier run of the same process chose), ``n`` gives both pools ``n``
threads.  A pool is fixed when TensorFlow first computes in a process, so only a process's first
TensorFlow run can choose it.

While a simulation runs, the interpreter's switch interval (``sys.setswitchinterval``) is
:data:`RUN_SWITCH_INTERVAL_S` instead of Python's 5 ms (:func:`switch_interval`).  A run has
threads beside its event loop (the executor's overlap worker training passes ahead, the monitor's
evaluation): each numpy or TensorFlow call that releases the GIL then waits for the loop's
Python to hand it back, up to one interval each time.  Measured on a 2-core machine
(``docs/benchmarks.md``, "Fourteenth session"): a 120-device Crowdlearning epoch 12 % less wall
time at 0.2 ms, the same events and results (the interval decides only when threads take turns,
never what they compute).  The interval is the process's, so it is restored when the run ends.
"""

from __future__ import annotations

import contextlib
import sys
import threading
from collections.abc import Iterator

from crowdlearn.errors import CrowdlearnError

__all__ = ["RUN_SWITCH_INTERVAL_S", "switch_interval", "threads_for", "use_threads"]

#: the interpreter's switch interval while a simulation runs (seconds; Python's default 0.005)
RUN_SWITCH_INTERVAL_S = 2e-4

_held = [0, 0.0]            # runs inside switch_interval now, the interval before the first
_lock = threading.Lock()


@contextlib.contextmanager
def switch_interval(seconds: float | None) -> Iterator[None]:
    """The interpreter's switch interval is ``seconds`` inside the block (``None``: left as it
    is) and what it was before once the last of several overlapping blocks (runs in threads)
    ends, whether it ends or raises.

    >>> before = sys.getswitchinterval()
    >>> with switch_interval(1e-4):
    ...     with switch_interval(1e-4):
    ...         inner = round(sys.getswitchinterval(), 6)
    ...     still = round(sys.getswitchinterval(), 6)
    >>> inner, still, sys.getswitchinterval() == before
    (0.0001, 0.0001, True)
    """
    if seconds is None:
        yield
        return
    with _lock:
        if _held[0] == 0:
            _held[1] = sys.getswitchinterval()
        _held[0] += 1
        sys.setswitchinterval(seconds)
    try:
        yield
    finally:
        with _lock:
            _held[0] -= 1
            if _held[0] == 0:
                sys.setswitchinterval(_held[1])


def threads_for(cpus: float, jobs: int) -> int:
    """Threads per run when ``jobs`` runs share ``cpus`` cores: an equal share, at least one.

    >>> threads_for(2, 2), threads_for(8, 3), threads_for(2, 4), threads_for(1.5, 1)
    (1, 2, 1, 1)
    """
    return max(1, int(cpus // max(1, jobs)))


def use_threads(n: int) -> None:
    """Give TensorFlow's intra-op and inter-op pools ``n`` threads each (``0``: leave them as
    they are).  Raises :class:`CrowdlearnError` naming the fix when this process's TensorFlow
    already computes with other pools (they cannot change after its start)."""
    if n == 0:
        return
    import tensorflow as tf

    t = tf.config.threading
    now = (t.get_intra_op_parallelism_threads(), t.get_inter_op_parallelism_threads())
    if now == (n, n):
        return
    try:
        t.set_intra_op_parallelism_threads(n)
        t.set_inter_op_parallelism_threads(n)
    except RuntimeError:
        had = "TensorFlow's default (every core)" if now == (0, 0) else \
            f"{now[0]} thread(s) per op"
        raise CrowdlearnError(
            f"training.threads = {n}: this process's TensorFlow already computes with {had}, "
            f"fixed when it first ran, and a run's thread count changes its numbers in the last "
            f"digits; run it in a new process (a new notebook kernel, `crowdlearn run`), or set "
            f"training.threads = 0 to use the pools this process has") from None
