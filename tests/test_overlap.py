"""Batches run ahead of their read (``jobs.Executor``'s overlap): a Crowdlearning run is the
sequential executor's bit for bit, whatever runs ahead, and no worker thread outlives it."""

import threading

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from crowdlearn.training.jobs import Deferred, Executor, Outcome, running_ahead


def _overlap_threads() -> list:
    return [t for t in threading.enumerate() if t.name.startswith("crowdlearn-overlap")]


def _run(cfg, *, overlap: bool = True, on_row=None, reference_waits: bool = False):
    """A simulation with the overlap on or off (and the executor's reference waits); its
    results and every delivered message (source, destination, bytes, type, arrival time as a
    float's hex)."""
    from crowdlearn.experiment import Simulation

    sim = Simulation(cfg, on_row=on_row)
    sim.executor.reference_waits = reference_waits
    if not overlap:
        sim.executor.overlap_kinds = frozenset()
    transfers = []
    seen = sim.monitor.on_transfer

    def on_transfer(src, dst, nbytes, now, msg=None):
        transfers.append((src, dst, nbytes, type(msg).__name__, float(now).hex()))
        return seen(src, dst, nbytes, now, msg)

    sim.monitor.on_transfer = on_transfer
    res = sim.run()
    res.summary.pop("wall_time_s")
    return sim, res, transfers


@pytest.mark.parametrize("extra", [
    {},                                                      # relayed, groups of 4
    {"slicenet.peer_to_peer": True, "availability.churn": 0.1,   # aborted passes, churn
     "fleet.devices": 14},                                   # leftovers join groups
])
def test_a_crowdlearning_run_with_passes_run_ahead_is_the_sequential_one(extra):
    """Same summary (accuracy, bytes, simulated time, events), metrics, per-device and round
    rows, and every message at the same simulated time, with the passes' batches computed
    ahead of their read on a worker thread and without, and with the executor's reference
    waits (every kind waiting for the worker); some batches did run ahead, and no worker
    thread is left after the run."""
    from tests.conftest import small_config

    cfg = small_config(protocol="crowdlearning", rounds=3, **{
        "fleet.devices": 12, "fleet.cells": 3, "model.hidden": [32, 16],
        "slicenet.group_size": 4, "slicenet.lr": 0.1, **extra})
    sim_on, on, t_on = _run(cfg, overlap=True)
    assert not _overlap_threads()
    sim_off, off, t_off = _run(cfg, overlap=False)
    # batches did run ahead (how many is the wall clock's: the worker must be free when a
    # batch is ready); with churn, some of them may all be dropped
    ahead = sim_on.executor.overlap_batches
    assert ahead["used"] > 0 if not extra else ahead["used"] + ahead["discarded"] > 0
    assert sim_off.executor.overlap_batches == {"used": 0, "discarded": 0}
    assert on.summary == off.summary and on.summary["completed"]
    assert on.metrics == off.metrics and len(on.metrics) == 3
    assert on.devices == off.devices and on.rounds == off.rounds
    assert t_on == t_off and len(t_on) > 100
    assert sim_on.executor.batches_run == sim_off.executor.batches_run
    assert sim_on.executor.jobs_run == sim_off.executor.jobs_run
    sim_ref, ref, t_ref = _run(cfg, overlap=True, reference_waits=True)
    assert ref.summary == on.summary and ref.metrics == on.metrics and t_ref == t_on
    assert ref.devices == on.devices and ref.rounds == on.rounds
    assert not _overlap_threads()


class _Part:
    """A part of a collective computation: done when ``size`` parts of ``key`` are in; starts
    from other jobs' results (``inputs``)."""
    kind = "step"

    def __init__(self, key, size, inputs, x):
        self.key, self.size, self.inputs, self.x = key, size, inputs, x

    @property
    def collective(self):
        return self.key

    @staticmethod
    def collective_complete(jobs):
        return len(jobs) == jobs[0].size

    result_shapes = [()]

    def deferred_inputs(self):
        return self.inputs


def _executor(overlap: bool, calls: list, commits: list, ahead: list | None = None):
    ahead = [] if ahead is None else ahead

    def runner(jobs):
        # a job's result depends on its inputs' values and on the whole batch (as XLA's
        # per-shape programs make a pass depend on the passes batched with it)
        width = len(jobs)
        out = [[j.x * 100 + width + sum(float(d[0]) for d in j.inputs)] for j in jobs]
        calls.append((tuple(j.x for j in jobs), threading.current_thread().name))
        ahead.append(running_ahead())
        return Outcome(out, on_commit=lambda: commits.append(tuple(j.x for j in jobs)))
    runner.overlap = True
    return Executor({"step": runner}, deferred_kinds=("step",), overlap=overlap, overlap_wait=2)


_ops = st.lists(st.tuples(st.sampled_from(["part", "part", "part", "complete", "cancel",
                                           "read"]),
                          st.integers(0, 30), st.integers(1, 3)), max_size=50)


@settings(max_examples=150, deadline=None)
@given(ops=_ops)
def test_batches_run_ahead_change_no_result_batch_count_or_commit(ops):
    """Any interleaving of parts of collectives (chained on earlier results), completions,
    cancellations and reads: the executor running batches ahead returns the same results,
    runs the same batches, commits them in the same order and counts the same jobs as the
    sequential one; every thread it started has ended after :meth:`Executor.close`."""
    runs = []
    for overlap in (False, True):
        calls: list = []
        commits: list = []
        ex = _executor(overlap, calls, commits)
        hs: list = []
        open_keys: dict = {}            # key -> (size, parts so far)
        out = []
        for op, i, size in ops:
            if op == "part":
                # join an open collective, or open one that starts from an earlier result
                keys = sorted(open_keys)
                if keys and i % 3:
                    key = keys[i % len(keys)]
                else:
                    key = len(hs)
                    open_keys[key] = size
                inputs = [ex.deferred(hs[i % len(hs)])] if hs and i % 2 else []
                h = ex.submit(_Part(key, open_keys[key], inputs, len(hs)))
                hs.append(h)
                if sum(1 for g in hs if g.job.key == key) >= open_keys[key]:
                    del open_keys[key]
                continue
            if not hs:
                continue
            h = hs[i % len(hs)]
            if op == "complete" and h.state == "pending" and not h.due:
                ex.complete(h)
            elif op == "cancel":
                ex.cancel(h)
            elif op == "read" and h.state != "cancelled" and not ex.abandoned(h):
                try:
                    out.append(("read", hs.index(h), ex.result(h)))
                except RuntimeError as exc:
                    out.append(("never", hs.index(h), str(exc)))
        ex.close()
        assert not _overlap_threads()
        runs.append((out, [c[0] for c in calls if not c[1].startswith("crowdlearn-overlap")]
                     if not overlap else None, commits, ex.batches_run, ex.jobs_run))
        if overlap:
            used = ex.overlap_batches["used"]
            assert used <= len([c for c in calls if c[1].startswith("crowdlearn-overlap")])
    (out0, _, commits0, b0, j0), (out1, _, commits1, b1, j1) = runs
    assert out0 == out1 and commits0 == commits1 and b0 == b1 and j0 == j1


def test_a_chain_runs_ahead_reading_its_own_earlier_results():
    """Two collectives, the second starting from the first's result: both run ahead on the
    worker (the second reads the first's result from the chain, not from the executor), and
    the reads take them without running anything on the calling thread."""
    calls: list = []
    commits: list = []
    ahead: list = []
    ex = _executor(True, calls, commits, ahead)
    a = [ex.submit(_Part("a", 2, [], x)) for x in (0, 1)]     # runs ahead at once
    for f, _p in list(ex._running):
        f.exception()                     # (so that the worker is free for the next one)
    b = ex.submit(_Part("b", 1, [ex.deferred(a[0])], 2))      # one collective, as wide
    assert [ex.result(h) for h in a] == [[2.0], [102.0]]
    assert commits == [(0, 1)]
    assert ex.result(b) == [201.0 + 2.0]
    assert commits == [(0, 1), (2,)]
    assert all(name.startswith("crowdlearn-overlap") for _, name in calls)
    assert ahead == [True, True] and not running_ahead()     # (a runner may spare the loop)
    assert ex.overlap_batches == {"used": 2, "discarded": 0} and ex.batches_run == {"step": 2}
    ex.close()
    assert not _overlap_threads()
    assert isinstance(ex.deferred(b), Deferred) and np.isfinite(ex.result(b)[0])


def test_metrics_rows_evaluated_beside_the_event_loop_are_the_ones_evaluated_on_it(monkeypatch):
    """With the fused trainer, a metrics row's evaluation runs on a worker thread while the
    simulation goes on (``sim.monitor``): the same rows (values and column order), handed to
    ``on_row`` in the same order, the same summary and messages as evaluating each row on the
    event loop's thread; the evaluations did run on the worker, and no thread is left."""
    from slicenet.fused import FusedTrainer
    from tests.conftest import small_config

    cfg = small_config(protocol="crowdlearning", rounds=4, **{
        "fleet.devices": 12, "fleet.cells": 3, "model.hidden": [32, 16],
        "slicenet.group_size": 4, "slicenet.lr": 0.1})
    where: list = []
    evaluate = FusedTrainer.evaluate

    def recorded(self, *a, **kw):
        where.append(threading.current_thread().name)
        return evaluate(self, *a, **kw)

    monkeypatch.setattr(FusedTrainer, "evaluate", recorded)

    def run(concurrent: bool):
        monkeypatch.setattr(FusedTrainer, "concurrent_evaluate", concurrent)
        seen: list = []
        sim, res, transfers = _run(cfg, on_row=lambda row: seen.append(list(row.items())))
        assert sim.monitor.evaluate_concurrently is concurrent
        return res, seen, transfers

    beside, rows_beside, t_beside = run(True)
    assert where and all(name.startswith("crowdlearn-evaluate") for name in where)
    assert not [t for t in threading.enumerate() if t.name.startswith("crowdlearn-evaluate")]
    where.clear()
    on_loop, rows_on_loop, t_on_loop = run(False)
    assert where == [threading.main_thread().name] * len(where) and where
    assert len(rows_beside) == 4 and rows_beside == rows_on_loop
    assert [list(r.items()) for r in beside.metrics] == rows_beside
    assert beside.summary == on_loop.summary and beside.summary["completed"]
    assert beside.devices == on_loop.devices and beside.rounds == on_loop.rounds
    assert t_beside == t_on_loop


class _Noop:
    """A job of another kind that computes nothing (as a pass's pipeline drain)."""
    kind = "noop"
    flops = 0.0


def _gated(reference: bool):
    """An executor whose runner waits for ``gate``: collective ``a`` (two parts) running ahead
    on the worker, held by the gate, and ``b`` (from ``a``'s first result) ready, waiting for
    the worker."""
    gate = threading.Event()
    calls: list = []

    def runner(jobs):
        gate.wait(60)
        calls.append((tuple(j.x for j in jobs), threading.current_thread().name))
        return Outcome([[j.x * 100 + len(jobs) + sum(float(d[0]) for d in j.inputs)]
                        for j in jobs])
    runner.overlap = True
    ex = Executor({"step": runner, "noop": lambda jobs: [None] * len(jobs)},
                  deferred_kinds=("step",), overlap_wait=2)
    ex.reference_waits = reference
    a = [ex.submit(_Part("a", 2, [], x)) for x in (0, 1)]     # runs ahead at once
    b = ex.submit(_Part("b", 1, [ex.deferred(a[0])], 2))      # ready, the worker busy
    assert len(ex._chain["step"]) == 1 and not ex._running[0][0].done()
    return ex, gate, calls, a, b


def test_no_batch_starts_ahead_after_close():
    """A batch waiting for the worker when the executor is closed never starts ahead: a
    completion after :meth:`Executor.close` leaves no worker thread, and the read computes the
    batch itself."""
    ex, gate, calls, a, b = _gated(False)
    gate.set()
    ex.close()
    ex.complete(ex.submit(_Noop()))
    assert not _overlap_threads() and ex._chain.get("step") == []
    assert ex.result(b) == [201.0 + 2.0]
    assert [name.startswith("crowdlearn-overlap") for _, name in calls] == [True, False, False]


@pytest.mark.parametrize("reference", [False, True])
def test_other_kinds_do_not_wait_for_the_worker_and_a_waiting_batch_starts_when_it_is_free(
        reference):
    """A job of another kind completes while a batch runs ahead (it waited for the worker, ≈
    1,200 times an epoch at the paper's scale, in ``Executor.reference_waits``); a batch that
    became ready while the worker was busy starts as soon as it is free, at the next completion
    of any kind (the reference: only at its own kind's next submission).  The reads' results
    and batches are the same either way."""
    ex, gate, calls, a, b = _gated(reference)
    if not reference:
        assert ex.complete(ex.submit(_Noop())) is None       # does not wait for the gate
        assert not gate.is_set() and not ex._running[0][0].done()
    gate.set()
    ex._running[0][0].exception()                              # the worker is free
    ex.complete(ex.submit(_Noop()))
    assert len(ex._chain["step"]) == (1 if reference else 2)  # b's batch started, or not
    assert [ex.result(h) for h in (*a, b)] == [[2.0], [102.0], [201.0 + 2.0]]
    assert ex.batches_run == {"step": 2, "noop": 2 if not reference else 1}
    assert ex.overlap_batches["used"] == (1 if reference else 2)
    assert all(name.startswith("crowdlearn-overlap") for _, name in calls) is not reference
    ex.close()
    assert not _overlap_threads()


@pytest.mark.parametrize("which", ["dense", "cnn"])
def test_evaluation_chunks_on_several_threads_score_as_one_after_the_other(which):
    """``FusedTrainer.evaluate`` with its chunks on 2 or 3 threads gives the scores of the
    chunks evaluated one after the other (``threads=1``), bit for bit, for a dense network with
    BatchNorm and a small CNN, rows cut into 5 chunks (the last one short); no thread is left;
    a thread count below 1 is refused."""
    from slicenet.fused import FusedTrainer
    from slicenet.graph import Activation, BatchNorm, Dense, ModelDescription
    from tests.test_slicenet_cnn import small_cnn

    desc = small_cnn() if which == "cnn" else ModelDescription(
        (20,), (Dense(16), BatchNorm(), Activation("relu"), Dense(5),
                Activation("log_softmax")), name="mlp")
    rng = np.random.default_rng(1)
    n, classes = int(np.prod(desc.input_shape)), desc.layers[-2].units
    x, y = rng.normal(size=(290, n)).astype(np.float32), rng.integers(0, classes, 290)
    trainer = FusedTrainer(desc, x[:10], y[:10])
    models = []
    for g in range(3):
        r = np.random.default_rng(g)
        m = [w + r.normal(0, 0.1, w.shape).astype(np.float32) for w in trainer.init_weights(r)]
        models.append([np.abs(w) + 0.5 if s.role == "moving_variance" else w
                       for w, s in zip(m, trainer.specs, strict=True)])
    small = 3 * trainer._widest * 64                  # chunks of 64 rows
    one = trainer.evaluate(models, x, y, max_floats=small, threads=1)
    assert len({s for s in one}) == 3 and all(np.isfinite(s).all() for s in one)
    for threads in (2, 3, None):
        assert trainer.evaluate(models, x, y, max_floats=small, threads=threads) == one
    assert not [t for t in threading.enumerate() if t.name.startswith("crowdlearn-evaluate")]
    with pytest.raises(ValueError, match="threads must be >= 1, got 0"):
        trainer.evaluate(models, x, y, threads=0)


def test_a_run_takes_turns_between_threads_faster_and_gives_the_interval_back(monkeypatch):
    """While a run runs, the interpreter's switch interval is the run's (0.2 ms: the loop hands
    the GIL to its worker threads sooner); its events and results are those of a run that
    leaves the interval alone; afterwards, and after a run that fails, it is what it was."""
    import sys

    from crowdlearn.experiment import Simulation
    from crowdlearn.training.threads import RUN_SWITCH_INTERVAL_S
    from tests.conftest import small_config

    cfg = small_config(protocol="crowdlearning", rounds=2, **{
        "fleet.devices": 8, "fleet.cells": 2, "model.hidden": [16],
        "slicenet.group_size": 4, "slicenet.lr": 0.1})
    before = sys.getswitchinterval()
    seen: list = []
    sim, short, t_short = _run(cfg, on_row=lambda row: seen.append(sys.getswitchinterval()))
    assert seen and all(abs(s - RUN_SWITCH_INTERVAL_S) < 1e-9 for s in seen)
    assert sys.getswitchinterval() == before != RUN_SWITCH_INTERVAL_S
    monkeypatch.setattr(Simulation, "switch_interval_s", None)
    seen.clear()
    _, plain, t_plain = _run(cfg, on_row=lambda row: seen.append(sys.getswitchinterval()))
    assert seen and all(s == before for s in seen)
    assert plain.summary == short.summary and plain.metrics == short.metrics
    assert t_plain == t_short and len(t_short) > 50
    monkeypatch.setattr(Simulation, "switch_interval_s", RUN_SWITCH_INTERVAL_S)
    failing = Simulation(cfg)

    def fail():
        raise RuntimeError("a run that fails")
    failing._run = fail
    with pytest.raises(RuntimeError, match="fails"):
        failing.run()
    assert sys.getswitchinterval() == before
