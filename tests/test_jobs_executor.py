"""The job executor's early batches (``background_kinds``): same results, batches and counts as
the sequential executor, whatever is submitted, completed, cancelled or read in between."""

import threading

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from crowdlearn.training.jobs import Executor


class _Job:
    kind = "train"
    result_shapes = [()]                   # one value: the runner's [10 x]

    def __init__(self, x):
        self.x = x


class _Settle:
    """A job whose submission says the pending training batch is complete."""
    kind = "other"
    settles = ("train",)


def _executor(early: bool, calls: list):
    def runner(jobs):
        calls.append((tuple(j.x for j in jobs), threading.current_thread().name))
        return [[10 * j.x] for j in jobs]
    return Executor({"train": runner, "other": lambda jobs: [None] * len(jobs)},
                    background_kinds=("train",) if early else ())


def test_an_early_batch_runs_on_a_worker_thread_and_the_read_takes_it():
    calls: list = []
    ex = _executor(True, calls)
    hs = [ex.submit(_Job(x)) for x in range(3)]
    ex.complete(hs[0])
    ex.complete(hs[1])
    ex.submit(_Settle())
    assert calls == []                     # one job still running in simulated time
    d = ex.complete(hs[2])
    assert calls == []                     # due, but nothing said the batch is complete
    ex.submit(_Settle())                   # the batch starts
    assert [ex.result(h) for h in hs] == [[0], [10], [20]] and d.value() == [20]
    assert calls[0][0] == (0, 1, 2) and calls[0][1].startswith("crowdlearn-early")
    assert ex.batches_run == {"train": 1} and ex.early_batches == {"used": 1, "discarded": 0}
    assert not [t for t in threading.enumerate() if t.name.startswith("crowdlearn-early")]


def test_a_cancel_or_a_new_job_after_the_early_start_discards_it():
    calls: list = []
    ex = _executor(True, calls)
    hs = [ex.submit(_Job(x)) for x in range(3)]
    for h in hs:
        ex.complete(h)
    ex.submit(_Settle())
    ex.cancel(hs[1])                       # e.g. its device went away before the read
    late = ex.submit(_Job(7))              # a job of another round
    assert ex.result(hs[0]) == [0] and ex.result(late) == [70]
    assert [c[0] for c in calls] == [(0, 1, 2), (0, 2, 7)]
    assert ex.early_batches == {"used": 0, "discarded": 1}
    assert ex.batches_run == {"train": 1} and ex.jobs_run == {"train": 3}


_ops = st.lists(st.tuples(st.sampled_from(["submit", "complete", "cancel", "read", "settle"]),
                          st.integers(0, 20)), max_size=40)


@settings(max_examples=150, deadline=None)
@given(ops=_ops)
def test_early_batches_change_no_result_batch_or_count(ops):
    """Any interleaving of submissions, completions in simulated time, cancellations and reads:
    the executor with early batches returns the same results (the runner's outputs name the
    jobs it was given) and counts the same batches and jobs as the sequential one."""
    runs = []
    for early in (False, True):
        calls: list = []
        ex = _executor(early, calls)
        hs: list = []
        out = []
        for op, i in ops:
            if op == "submit":
                hs.append(ex.submit(_Job(len(hs))))
                continue
            if op == "settle":
                ex.submit(_Settle())
                continue
            if not hs:
                continue
            h = hs[i % len(hs)]
            if op == "complete" and h.state != "cancelled" and not h.due:
                r = ex.complete(h)
                out.append(("due", hs.index(h), r.ready))
            elif op == "cancel":
                ex.cancel(h)
            elif op == "read" and h.state != "cancelled":
                out.append(("read", hs.index(h), ex.result(h)))
        for h in hs:                        # everything left is read at the end
            if h.state != "cancelled":
                out.append(("end", hs.index(h), ex.result(h)))
        # every batch run in the calling thread or taken from an early run (a discarded one is
        # followed by the read's own run, an unread one is not a batch)
        runs.append((out, ex.batches_run, ex.jobs_run))
        if early:
            assert sum(ex.early_batches.values()) <= len([c for c in calls if
                                                          c[1].startswith("crowdlearn-early")])
    assert runs[0] == runs[1]


def test_secagg_round_with_early_training_is_the_sequential_one_bit_for_bit():
    """A SecAgg + DP simulation with the round's training started early (on a worker thread,
    while the clients share keys) gives the same metrics, models and summary as with the
    sequential executor."""
    from crowdlearn.experiment import Simulation
    from tests.conftest import small_config

    out = []
    for early in (True, False):
        sim = Simulation(small_config(**{"fedavg.secure_aggregation": "secagg",
                                          "dp.mode": "distributed", "dp.noise_multiplier": 0.5,
                                          "rounds": 2}))
        if not early:
            sim.executor.background_kinds = frozenset()
        res = sim.run()
        if early:
            assert sim.executor.early_batches["used"] == 2
        s = {k: v for k, v in res.summary.items() if "wall" not in k}
        models = [np.concatenate([np.ravel(w) for w in sim.driver.machines["server"].weights])]
        out.append((s, res.metrics, models))
    assert out[0][0] == out[1][0] and out[0][1] == out[1][1]
    assert np.array_equal(out[0][2][0], out[1][2][0])
