"""Costly work as values: what a job computes, what it costs, and who runs it.

A protocol machine returns ``RunJob(job_id, TrainJob(...))``.  The driver charges the job's
``flops`` on the device's CPU in simulated time *before* anything runs; the real computation is
done by an :class:`Executor` the first time a result is needed, and then every pending job of the
same kind runs together (all the devices of a round in one batched TensorFlow computation).  A
kind whose runner allows it may have those same batches computed ahead of the read, on a worker
thread beside the simulation (``overlap``: same batches, same results).

This module is pure (numpy only); the TensorFlow-backed runners live in ``fleet_trainer``.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

import numpy as np

from crowdlearn.training.batching import TrainTask, count_samples, make_batches
from crowdlearn.training.models import ModelSpec


@dataclass(frozen=True, eq=False)
class TrainJob:
    """Mini-batch SGD on one device's samples, starting from ``task.weights``."""

    task: TrainTask
    flops: float
    memory_bytes: int
    num_samples: int          # distinct samples the device holds (the FedAvg weight n_k)
    kind: str = field(default="train", init=False)

    @classmethod
    def build(cls, spec: ModelSpec, weights, indices: np.ndarray, *, epochs: int,
              batch_size: int, lr: float, rng: np.random.Generator) -> TrainJob:
        """Draw this job's batch schedule and price it from the model spec."""
        batches = make_batches(indices, epochs=epochs, batch_size=batch_size, rng=rng)
        processed = count_samples(batches)
        b = batches.shape[1] if batches.size else 0
        # a Deferred start point (the unfinished result of an earlier job) stays deferred
        start = weights if isinstance(weights, Deferred) else tuple(weights)
        return cls(task=TrainTask(start, batches, float(lr)),
                   flops=float(processed * spec.train_flops_per_sample()),
                   memory_bytes=int(spec.train_memory_bytes(b)),
                   num_samples=int(len(indices)))


@dataclass(frozen=True, eq=False)
class EvalJob:
    """Evaluate ``weights`` on ``num_samples`` held-out samples."""

    weights: tuple
    flops: float
    memory_bytes: int
    kind: str = field(default="eval", init=False)


Runner = Callable[[Sequence[Any]], list[Any]]


class Outcome(list):
    """A runner's results (a list, one per job) with work left for the moment the executor
    *commits* them to the jobs' handles, on the executor's thread: e.g. a Crowdlearning pass's
    promise filled with its record.  A runner that may run ahead of its first read on a worker
    thread (:class:`Executor`, ``overlap``) has no other side effect, so a run whose batch
    turns out not to be the one the read would run is dropped without a trace.

    Examples
    --------
    >>> seen = []
    >>> out = Outcome([1, 2], on_commit=lambda: seen.append("committed"))
    >>> list(out), out.on_commit(), seen
    ([1, 2], None, ['committed'])
    """

    __slots__ = ("on_commit",)

    def __init__(self, results=(), *, on_commit: Callable[[], None] | None = None):
        super().__init__(results)
        self.on_commit = on_commit


class _Wave:
    """One batch run ahead of its read (``Executor``'s overlap): its handles in the order the
    read would run them, the worker's future, and its results once the future is done."""

    __slots__ = ("batch", "count", "future", "results")

    def __init__(self, batch: list, future: Future, count: int):
        self.batch, self.future = batch, future
        self.count = count              # its collectives (Executor._wave_count), counted once
        self.results: list | None = None


#: On an overlap worker thread, the results of the chain's earlier batches by handle: what a
#: deferred input of the batch being run reads (``Executor.result``), the executor's own state
#: untouched.
_AHEAD = threading.local()


def running_ahead() -> bool:
    """Whether this thread is running a batch ahead of its read (the executor's overlap worker,
    beside the event loop): a runner may then leave the loop's core alone."""
    return getattr(_AHEAD, "view", None) is not None


def _run_ahead(runner: Runner, jobs: list, view: dict) -> list:
    _AHEAD.view = view
    try:
        return runner(jobs)
    finally:
        _AHEAD.view = None


@runtime_checkable
class Trainer(Protocol):
    """What computes training and evaluation: the batched fleet trainer
    (:class:`~crowdlearn.training.fleet_trainer.FleetTrainer`), the per-device Keras reference
    (:class:`~crowdlearn.training.keras_ref.KerasReferenceTrainer`), the null trainer
    (:class:`~crowdlearn.experiment.NullTrainer`), FM's evaluator
    (:class:`~crowdlearn.protocols.fm.LinearEvaluator`), SliceNet's fused trainer and the Ray
    sharded one.  A trainer is built as ``factory(spec, x_train, y_train)``
    (:data:`TrainerFactory`) and keeps no state between calls.

    ``train(tasks)`` returns, per :class:`~crowdlearn.training.batching.TrainTask`, the weight
    list after running its batch schedule from its start weights; ``evaluate(weight_lists, x,
    y)`` returns one ``(loss, metric)`` pair per weight list (accuracy for classification, RMSE
    for regression).
    """

    def train(self, tasks: Sequence[TrainTask]) -> list[list[np.ndarray]]: ...

    def evaluate(self, weight_lists: Sequence[Sequence[np.ndarray]], x: np.ndarray,
                 y: np.ndarray) -> list[tuple[float, float]]: ...


#: ``factory(spec, x_train, y_train) -> Trainer``
TrainerFactory = Callable[[ModelSpec, np.ndarray, np.ndarray], Trainer]


class Handle:
    """A submitted job; ``result`` is filled when its batch has run.  ``due``: its simulated
    time is over (:meth:`Executor.complete`), so it can no longer be cancelled by churn."""

    __slots__ = ("job", "result", "state", "due")

    def __init__(self, job: Any):
        self.job = job
        self.result: Any = None
        self.state = "pending"          # pending | done | cancelled
        self.due = False


class Deferred(Sequence):
    """A job's result, computed on first access (then shared by every reader).

    Machines pass it on like the list of arrays it stands for; reading an element runs the job
    together with every other pending job of its kind.  ``shapes`` and ``dtypes`` are known
    in advance, so the wire can size a message carrying it without computing it.
    """

    __slots__ = ("_executor", "_handle", "shapes", "dtypes", "_start")

    def __init__(self, executor: Executor, handle: Handle, shapes, dtypes, start: int = 0):
        self._executor, self._handle = executor, handle
        self.shapes, self.dtypes = tuple(shapes), tuple(dtypes)
        self._start = start

    def part(self, start: int, stop: int) -> Deferred:
        """The entries ``start:stop`` of this result, still deferred."""
        return Deferred(self._executor, self._handle, self.shapes[start:stop],
                        self.dtypes[start:stop], self._start + start)

    @property
    def ready(self) -> bool:
        return self._handle.state == "done"

    def value(self) -> list:
        full = self._executor.result(self._handle)
        return list(full[self._start:self._start + len(self.shapes)])

    def __len__(self) -> int:
        return len(self.shapes)

    def __getitem__(self, i):
        return self.value()[i]

    def __iter__(self):
        return iter(self.value())


class Lazy:
    """A value computed on first read by ``fn()`` (then kept, and ``fn`` with what it refers
    to let go): a machine's own computation on values that may still be :class:`Deferred`,
    put off until something needs its result, so that it does not force them early (a
    Crowdlearning member's top-θ selection, needed when the server releases the epoch's
    uploads, not when the member sends its upload).  The result is the one ``fn`` would give
    at once: only the moment it is computed moves.

    >>> calls = []
    >>> v = Lazy(lambda: calls.append(1) or (np.arange(3), np.ones(3, np.float32)))
    >>> a = LazyArray(v, 0, (3,), np.int64)
    >>> calls, a.shape, a.computed
    ([], (3,), False)
    >>> np.asarray(a).tolist(), np.asarray(LazyArray(v, 1, (3,), np.float32)).tolist(), calls
    ([0, 1, 2], [1.0, 1.0, 1.0], [1])
    """

    __slots__ = ("_fn", "_value", "_lock")

    def __init__(self, fn: Callable[[], Any]):
        self._fn: Callable[[], Any] | None = fn
        self._value: Any = None
        self._lock = threading.Lock()

    @property
    def computed(self) -> bool:
        return self._fn is None

    def get(self) -> Any:
        if self._fn is not None:
            with self._lock:
                if self._fn is not None:
                    self._value = self._fn()
                    self._fn = None
        return self._value


class LazyArray:
    """Entry ``i`` of a :class:`Lazy` tuple of arrays, its ``shape`` and ``dtype`` declared in
    advance: the wire sizes it as the array it stands for without computing it
    (``sim.wire``), and ``np.asarray`` (or :meth:`materialize`) computes it.  Computed, it is
    checked against what was declared."""

    __slots__ = ("_lazy", "_i", "shape", "dtype")

    def __init__(self, lazy: Lazy, i: int, shape: Sequence[int], dtype: Any):
        self._lazy, self._i = lazy, int(i)
        self.shape = tuple(int(n) for n in shape)
        self.dtype = np.dtype(dtype)

    @property
    def ndim(self) -> int:
        return len(self.shape)

    @property
    def computed(self) -> bool:
        return self._lazy.computed

    def __len__(self) -> int:
        return self.shape[0]

    def materialize(self) -> np.ndarray:
        a = self._lazy.get()[self._i]
        if a.shape != self.shape or a.dtype != self.dtype:
            raise RuntimeError(f"a lazy array declared {self.dtype}{list(self.shape)} "
                               f"computed {a.dtype}{list(a.shape)}")
        return a

    def __array__(self, dtype=None, copy=None):
        a = self.materialize()
        if dtype is not None and np.dtype(dtype) != a.dtype:
            return a.astype(dtype)
        return a.copy() if copy else a

    def __repr__(self) -> str:
        state = "computed" if self.computed else "not computed"
        return f"LazyArray({self.dtype}{list(self.shape)}, {state})"


class Executor:
    """Runs jobs lazily, in batches of one kind.

    ``runners`` maps a job kind to a function taking a list of jobs and returning their results
    in order.  :meth:`result` runs every still-pending job of the requested kind in one call.
    ``deferred_kinds`` declares the kinds whose results stay deferred when their job completes
    in simulated time (:meth:`complete`): training, so that every device's training of a round
    runs in one batch when the first result is read.  Other kinds are computed at completion.

    ``background_kinds`` (deferred kinds whose runner may run on another thread): a submitted
    job may name kinds whose pending batch its submission settles (``settles``: SecAgg's
    key-sharing job, which a client runs only after every selected client has finished training
    or dropped).  If every pending job of such a kind is then due (its simulated time over) and
    ready, the batch that the first read would run is started on a worker thread, so that it
    computes while the simulation goes on (the clients' key-sharing cryptography runs while
    TensorFlow trains).  The first read takes that batch's results only if the batch it would
    run is the same jobs in the same order; otherwise (a job submitted or cancelled meanwhile)
    the early run is waited for and discarded, and the batch runs as without it.  So results,
    batches and job counts are exactly those of the sequential executor (tested); only the
    wall time moves.

    ``overlap`` (on by default): a deferred kind whose runner declares ``overlap = True`` (it
    has no side effect but its :class:`Outcome`'s ``on_commit``, and may run on another thread)
    has its batches computed *ahead* of their first read, one at a time on a worker thread,
    while the simulation goes on.  The executor keeps a *chain* of batches: the first is the
    batch the first read would run if it came now (every pending job of the kind whose inputs
    are done and whose collective is complete), the next one the batch the read would run
    after it (its inputs the chain's results, read on the worker from the chain itself), and
    so on.  A job that would join a batch of the chain (a collective completed, a job
    cancelled) cuts the chain there.  A read runs exactly the batches it runs without overlap,
    in the same order; for each one it takes the chain's head if it holds the same jobs in the
    same order (waiting for it if it is still running), otherwise it drops the chain (waiting
    for a running batch, so that one runs at a time) and runs its own.  So batches, results,
    counts and commits are the sequential executor's, bit for bit (tested); only the moment the
    computation happens moves.  When to run a batch ahead is a guess (``overlap_wait``): at
    once if it holds as many collectives as the chain's batch before it (or, first in the
    chain, as the widest batch of the kind so far), else once ``overlap_wait`` submissions of
    the kind have left it unchanged.  A batch that is ready while the worker is busy starts at
    the first submission or completion of any kind after it is free; a batch of a kind that does
    not run ahead (e.g. a pass's pipeline drain) never waits for the worker
    (:attr:`reference_waits` puts back the waits of before, for comparison).  :meth:`close` waits
    for the worker (no thread outlives a simulation).

    Examples
    --------
    >>> ex = Executor({"double": lambda jobs: [2 * j.x for j in jobs]})
    >>> class J:
    ...     kind = "double"
    ...     def __init__(self, x): self.x = x
    >>> a, b = ex.submit(J(1)), ex.submit(J(2))
    >>> ex.result(a), ex.batches_run, ex.result(b), ex.batches_run
    (2, {'double': 1}, 4, {'double': 1})
    """

    #: ``True``: the executor as it was before it let other kinds pass (the reference of the
    #: benchmark and the tests; same results): a batch of any kind waits for a batch running
    #: ahead, and a batch ready while the worker is busy waits for its kind's next submission.
    reference_waits = False

    def __init__(self, runners: dict[str, Runner], *,
                 deferred_kinds: Sequence[str] = ("train",),
                 background_kinds: Sequence[str] = (), overlap: bool = True,
                 overlap_wait: int = 32):
        self.runners = dict(runners)
        self.deferred_kinds = frozenset(deferred_kinds)
        self.background_kinds = frozenset(background_kinds) & self.deferred_kinds
        #: kinds whose batches may run ahead of their read (empty: the sequential executor)
        self.overlap_kinds = frozenset(
            k for k in self.deferred_kinds if overlap and getattr(self.runners.get(k), "overlap",
                                                                  False))
        self.overlap_wait = int(overlap_wait)
        self.overlap_batches = {"used": 0, "discarded": 0}
        self._chain: dict[str, list[_Wave]] = {}
        self._wave_of: dict[Handle, int] = {}      # handle -> its batch's number in the chain
        self._chain_base: dict[str, int] = {}      # number of the chain's first batch
        self._members: dict[tuple, list[Handle]] = {}   # (kind, collective key) -> its parts
        self._next: dict[str, tuple] = {}          # kind -> (batch, collectives, since) or ()
        self._ticks: dict[str, int] = {}           # submissions of the kind
        self._widest: dict[str, int] = {}          # most collectives in one batch of the kind
        self._running: list[tuple] = []            # (future, pool) of batches run ahead
        self._waiting: set = set()                 # kinds whose next batch waits for the worker
        self._early: dict[str, tuple[list[Handle], Future, ThreadPoolExecutor]] = {}
        self.early_batches = {"used": 0, "discarded": 0}
        self._pending: dict[str, list[Handle]] = {}
        self.batches_run: dict[str, int] = {}
        self.jobs_run: dict[str, int] = {}
        self._broken: set = set()        # (kind, collective key) with a cancelled member

    def submit(self, job: Any) -> Handle:
        if job.kind not in self.runners:
            raise KeyError(f"no runner for job kind {job.kind!r}; have {sorted(self.runners)}")
        self._poll()
        h = Handle(job)
        self._pending.setdefault(job.kind, []).append(h)
        hook = getattr(job, "on_submit", None)
        if hook is not None:           # a job whose messages carry its deferred values
            hook(self, h)
        for kind in getattr(job, "settles", ()):
            if kind in self.background_kinds:
                self._maybe_start_early(kind)
        if job.kind in self.overlap_kinds:
            self._joined(h)
            self._ahead(job.kind)
        return h

    def abandoned(self, h: Handle) -> bool:
        """Whether ``h`` can never run (cancelled, or a member of its collective was)."""
        key = _collective(h.job)
        return h.state == "cancelled" or (key is not None and (h.job.kind, key) in self._broken)

    def deferred(self, h: Handle) -> Deferred:
        """The result of ``h`` as a :class:`Deferred` (shapes declared by the job as
        ``result_shapes``, else taken from its start weights)."""
        shapes = getattr(h.job, "result_shapes", None)
        if shapes is None:
            ws = h.job.task.weights
            shapes = ws.shapes if isinstance(ws, Deferred) else [np.shape(w) for w in ws]
            shapes = list(shapes) * getattr(h.job, "result_copies", 1)
        return Deferred(self, h, shapes, [np.float32] * len(shapes))

    def complete(self, h: Handle) -> Any:
        """The result of a job whose simulated time is over: a :class:`Deferred` for the
        declared deferred kinds, else computed now (with the other pending jobs of its kind)."""
        h.due = True
        self._poll()
        if h.job.kind not in self.deferred_kinds:
            return self.result(h)
        if h.job.kind in self.overlap_kinds:
            self._ahead(h.job.kind)
        return self.deferred(h)

    def cancel(self, h: Handle) -> None:
        if h.state == "pending":
            h.state = "cancelled"
            key = _collective(h.job)
            if key is not None:      # the other members of its collective can never run
                self._broken.add((h.job.kind, key))
            kind = h.job.kind
            if kind in self.overlap_kinds:
                # the batch holding it (or its collective) no longer is the one a read runs
                mates = self._members.get((kind, key), [h]) if key is not None else [h]
                cut = min((self._wave_of[m] for m in mates if m in self._wave_of), default=None)
                if cut is not None:
                    self._cut(kind, cut - self._chain_base.get(kind, 0))
                self._next[kind] = None
                self._members.pop((kind, key), None)

    def close(self) -> None:
        """Wait for a batch running ahead and drop the chains (results still unread are
        computed by their read, as without overlap); no worker thread is left."""
        for kind in list(self._chain):
            self._cut(kind, 0)
            self._next[kind] = None
        self._settle_running()
        self.overlap_kinds = frozenset()
        self._waiting.clear()
        for kind in list(self._early):
            batch, fut, pool = self._early[kind]
            fut.exception()
            pool.shutdown(wait=True)

    # ------------------------------------------------------------------ overlap
    def _joined(self, h: Handle) -> None:
        """``h`` was submitted: if it completes its collective (or has none), the batch of the
        chain it would join, and every later one, no longer is what a read runs."""
        kind, key = h.job.kind, _collective(h.job)
        self._ticks[kind] = self._ticks.get(kind, 0) + 1
        chain = self._chain.get(kind, [])
        if key is not None:
            mates = self._members.setdefault((kind, key), [])
            mates.append(h)
            if not type(h.job).collective_complete([m.job for m in mates]):
                nxt = self._next.get(kind)
                if nxt and self._level(h.job, kind) == len(chain):
                    nxt[3].add(key)          # a collective that would join the next batch
                return
        else:
            mates = [h]
        levels = [self._level(m.job, kind) for m in mates]
        if None in levels:
            return                   # waits for a job outside the chain: joins no batch of it
        level = max(levels)
        if level < len(chain):
            self._cut(kind, level)
        if level <= len(chain):
            self._next[kind] = None              # the next batch to run ahead changed

    def _level(self, job: Any, kind: str) -> int | None:
        """The position in the chain of the batch ``job`` would join once its collective is
        complete: 0 if its inputs are done, one after its latest input's batch; ``None`` if an
        input is outside the chain."""
        base = self._chain_base.get(kind, 0)
        level = 0
        for d in _input_handles(job):
            if d.state == "done":
                continue
            w = self._wave_of.get(d)
            if w is None:
                return None
            level = max(level, w - base + 1)
        return level

    def _cut(self, kind: str, at: int) -> None:
        """Drop the chain's batches from position ``at`` on (a running one finishes on its
        thread, unread: nothing runs beside it, see :meth:`_settle_running`)."""
        chain = self._chain.get(kind)
        if not chain or at >= len(chain):
            return
        for w in chain[at:]:
            for m in w.batch:
                self._wave_of.pop(m, None)
            self.overlap_batches["discarded"] += 1
        del chain[at:]

    def _settle_running(self) -> None:
        """Wait for every batch still running ahead (kept or dropped)."""
        for fut, pool in self._running:
            fut.exception()
            pool.shutdown(wait=True)         # and its thread is gone
        self._running.clear()

    def _busy(self) -> bool:
        running = []
        for fut, pool in self._running:
            if fut.done():
                pool.shutdown(wait=True)     # its thread is ending: joined, never left behind
            else:
                running.append((fut, pool))
        self._running = running
        return bool(running)

    def _poll(self) -> None:
        """If the worker has finished the batch it was running, start the next one that was
        waiting for it (checked at every submission and completion, of any kind: a batch that
        became ready while the worker was busy starts as soon as it is free, not at the
        kind's next submission)."""
        if self._waiting and not self.reference_waits and not self._busy():
            for kind in sorted(self._waiting):
                self._waiting.discard(kind)
                if kind in self.overlap_kinds:       # (none after close)
                    self._ahead(kind)

    def _ahead(self, kind: str) -> None:
        """Start the chain's next batch on the worker if the worker is free and the guess
        (see the class) says its jobs are all in."""
        if self._busy():
            self._waiting.add(kind)              # one batch at a time: tried again by _poll
            return
        chain = self._chain.setdefault(kind, [])
        if chain and chain[-1].results is None:
            if chain[-1].future.exception() is not None:
                # left to the read, which runs it itself (and raises if it must)
                self._cut(kind, len(chain) - 1)
                self._next[kind] = None
                return
            chain[-1].results = chain[-1].future.result()
        nxt = self._next.get(kind)
        ticks = self._ticks.get(kind, 0)
        if nxt is None:
            vdone = self._wave_of
            starting: set = set()
            batch, _ = self._select(kind, lambda d: d.state == "done" or d in vdone,
                                    starting=starting)
            nxt = self._next[kind] = (batch, self._wave_count(batch), ticks, starting)
        batch, count, since, starting = nxt
        if not batch:
            return
        # as wide as the batch before it (every collective moved on), and no collective that
        # would join it still collecting its parts: at once; else after overlap_wait quiet
        # submissions (four times that while collectives that would join are collecting)
        wide = chain[-1].count if chain else self._widest.get(kind, 0)
        quiet = ticks - since
        if len(starting) > count:
            if quiet < 4 * self.overlap_wait:
                return
        elif count < wide and quiet < self.overlap_wait:
            return
        runner, jobs = self.runners[kind], [h.job for h in batch]
        ok = getattr(runner, "ahead_ok", None)
        if ok is not None and not ok(jobs):
            return                 # e.g. a program to compile first: left to the read
        view = {h: r for w in chain for h, r in zip(w.batch, w.results, strict=True)}
        pool = ThreadPoolExecutor(1, thread_name_prefix="crowdlearn-overlap")
        fut = pool.submit(_run_ahead, runner, jobs, view)
        pool.shutdown(wait=False)            # the thread ends with this one batch
        self._running.append((fut, pool))
        base = self._chain_base.setdefault(kind, 0)
        for h in batch:
            self._wave_of[h] = base + len(chain)
        chain.append(_Wave(batch, fut, count))
        self._next[kind] = None

    @staticmethod
    def _wave_count(batch: list) -> int:
        keys = set()
        for h in batch:
            key = _collective(h.job)
            keys.add(id(h) if key is None else key)
        return len(keys)

    def _maybe_start_early(self, kind: str) -> None:
        """Start the batch the first read of ``kind`` would run, on a worker thread, if every
        pending job of the kind is due and ready (and none is part of a collective)."""
        if kind in self._early:
            return
        batch = []
        for h in self._pending.get(kind, ()):
            if h.state != "pending":
                continue
            if not h.due or _collective(h.job) is not None \
                    or any(d.state != "done" for d in _input_handles(h.job)):
                return
            batch.append(h)
        if not batch:
            return
        pool = ThreadPoolExecutor(1, thread_name_prefix="crowdlearn-early")
        fut = pool.submit(self.runners[kind], [h.job for h in batch])
        pool.shutdown(wait=False)            # the thread ends with this one batch
        self._early[kind] = (batch, fut, pool)

    def result(self, h: Handle) -> Any:
        """Compute (if needed) and return the result of ``h``.

        Jobs may start from other jobs' deferred results.  Pending jobs then run in waves:
        each wave is every pending job of the kind whose inputs are ready, in one batch, so a
        chain of dependent jobs across many devices costs one batch per link of the chain.
        A job that declares a ``collective`` key runs only together with the other jobs of its
        key, once its class's ``collective_complete(jobs)`` says they are all in (the parts of
        one computation held by several machines, e.g. one Crowdlearning pass: each
        participant's job carries the weights it holds).
        """
        view = getattr(_AHEAD, "view", None)
        if view is not None and h.state != "done":   # on the overlap worker: the chain's
            try:
                return view[h]
            except KeyError:
                raise RuntimeError("a batch run ahead read a result outside its chain") from None
        if h.state == "cancelled":
            raise RuntimeError("result of a cancelled job")
        while h.state == "pending":
            if not self._advance(h):
                raise RuntimeError(f"a {h.job.kind!r} job can never run: an input or a member "
                                   "of its collective is missing or was cancelled")
        if h.state == "cancelled":
            raise RuntimeError("result of a cancelled job")
        return h.result

    def _advance(self, h: Handle) -> bool:
        """Run one wave that brings ``h`` closer to done; False if none can."""
        stack, seen = [h], set()
        while stack:
            cur = stack.pop()
            if id(cur) in seen:
                continue
            seen.add(id(cur))
            deps = [d for d in _input_handles(cur.job) if d.state != "done"]
            if any(d.state == "cancelled" for d in deps):
                raise RuntimeError("a job's input comes from a cancelled job")
            if deps:
                stack.extend(deps)
                continue
            key = _collective(cur.job)
            if key is not None:
                mates = [m for m in self._pending.get(cur.job.kind, ())
                         if m.state == "pending" and _collective(m.job) == key and m is not cur]
                blocked = [m for m in mates if any(d.state != "done"
                                                   for d in _input_handles(m.job))]
                if blocked:
                    stack.extend(blocked)
                    continue
            if self._run_kind(cur.job.kind):
                return True
        return False

    def _select(self, kind: str, done: Callable[[Handle], bool], *,
                starting: set | None = None) -> tuple[list, list]:
        """The batch a read of ``kind`` runs (every pending job whose inputs are ``done`` and
        whose collective is complete, in submission order, collectives after the other jobs)
        and the jobs left pending; ``starting`` gets the keys of every collective with a part
        ready, complete or not (and the ids of the lone jobs of the batch)."""
        batch, rest = [], []
        members: dict = {}
        for h in self._pending.get(kind, []):
            if h.state != "pending" or h in self._wave_of and done is not _done:
                continue
            key = _collective(h.job)
            if key is not None and (kind, key) in self._broken:
                continue                 # a member was cancelled: the collective is abandoned
            if all(done(d) for d in _input_handles(h.job)):
                if key is not None:
                    members.setdefault(key, []).append(h)
                    continue
                batch.append(h)
            else:
                rest.append(h)
        if starting is not None:
            starting.update(members)
            starting.update(id(h) for h in batch)
        for hs in members.values():
            (batch if type(hs[0].job).collective_complete([h.job for h in hs]) else rest) \
                .extend(hs)
        return batch, rest

    def _run_kind(self, kind: str) -> bool:
        batch, rest = self._select(kind, _done)
        self._pending[kind] = rest
        results = None
        chain = self._chain.get(kind)
        if chain:
            head = chain[0]
            if len(head.batch) == len(batch) and all(
                    a is b for a, b in zip(head.batch, batch, strict=True)) \
                    and head.future.exception() is None:     # (waits if it is still running)
                results = head.future.result()
                chain.pop(0)
                for m in head.batch:
                    self._wave_of.pop(m, None)
                self._chain_base[kind] = self._chain_base.get(kind, 0) + 1
                self.overlap_batches["used"] += 1
            else:
                self._cut(kind, 0)
            self._next[kind] = None
        if results is None and batch and (kind in self.overlap_kinds or self.reference_waits):
            # one run of the kind at a time: a dropped batch ends first.  (Only then: a batch
            # of another kind, e.g. a pass's pipeline drain, which computes nothing, need not
            # wait for the worker; it did, ≈ 1,200 times an epoch, the loop blocked for the
            # batch running ahead each time.)
            self._settle_running()
        early = self._early.pop(kind, None)
        if early is not None:
            same = len(early[0]) == len(batch) and all(
                a is b for a, b in zip(early[0], batch, strict=True))
            self.early_batches["used" if same else "discarded"] += 1
            early[1].exception()             # waited for even when discarded: one run at a time
            early[2].shutdown(wait=True)     # and its thread is gone
            if same:
                results = early[1].result()
            else:
                early = None
        if not batch:
            return False
        if early is None and results is None:
            results = self.runners[kind]([h.job for h in batch])
        for h, r in zip(batch, results, strict=True):
            h.result, h.state = r, "done"
        commit = getattr(results, "on_commit", None)
        if commit is not None:
            commit()
        self.batches_run[kind] = self.batches_run.get(kind, 0) + 1
        self.jobs_run[kind] = self.jobs_run.get(kind, 0) + len(batch)
        if kind in self.overlap_kinds:
            self._widest[kind] = max(self._widest.get(kind, 0), self._wave_count(batch))
            for h in batch:                  # (held, they would keep every pass's weights)
                self._members.pop((kind, _collective(h.job)), None)
        return True


def _done(h: Handle) -> bool:
    return h.state == "done"


def _collective(job: Any) -> Any:
    """The key of the collective computation the job is a part of, if any."""
    return getattr(job, "collective", None)


def _input_handles(job: Any) -> list[Handle]:
    """The handles of the jobs whose deferred results ``job`` starts from: those it lists in
    ``deferred_inputs()``, else its task's start weights."""
    inputs = getattr(job, "deferred_inputs", None)
    if inputs is not None:
        return [d._handle for d in inputs() if isinstance(d, Deferred)]
    h = _input_handle(job)
    return [] if h is None else [h]


def _input_handle(job: Any) -> Handle | None:
    """The handle of the job whose result ``job`` starts from, if it is deferred."""
    task = getattr(job, "task", None)
    w = getattr(task, "weights", None)
    return w._handle if isinstance(w, Deferred) else None
