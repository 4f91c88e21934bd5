"""Benchmark: one simulated 120-device Crowdlearning epoch against a centralized Keras epoch.

Times, in one process and on the same 60,000 Fashion-MNIST training samples:

* **simulated epoch** — one epoch of ``paper-mlp`` Crowdlearning on a 120-device fleet (groups of
  ``--group-size``), *everything* included: building the simulation (partition, keys, topology),
  the discrete-event simulator, the protocol machines, the fused trainer, the evaluation.  Run
  twice: ``cold`` (first, TensorFlow traces its functions) and ``warm`` (a second simulation of
  the same configuration, the trainer's traced functions reused as a sweep would);
* **centralized epoch** — ``keras.Model.fit`` of the same network (BatchNorm included, SGD at
  the same learning rate and mini-batch) for one epoch, after a warm-up epoch on 2,048 samples.

and prints ``ratio X`` = warm simulated epoch ÷ centralized epoch (target ≤ 1), plus the fused
trainer's throughput: training FLOPs of the epoch (3 × forward, ``Layout.train_flops_per_sample``
× samples) over the wall time spent inside ``FusedTrainer.train``, and, on a shared machine, the
same over the process CPU time spent there (and ``ratio_cpu``, the two epochs' process CPU
times: work rather than waiting, steadier than the wall on a loaded machine), beside a 2048 × 2048 float32 matrix product measured
the same two ways in the same run (what the machine gives now).

Each timed section (both simulated epochs, the Keras epoch) starts after ``gc.collect()``, so
that none pays for the garbage of the one before it (without it the warm epoch paid a full
collection of the process's heap, mostly TensorFlow's objects, set off by the cold run's
survivors).  A ``CPU seconds of the warm epoch`` line splits the warm epoch's process CPU time
into the fused trainer, the evaluation, garbage collection and the rest (building the
simulation, the simulator, the machines).

The executor runs the passes' batches ahead of their first read on a worker thread, beside the
event loop (``jobs.Executor``'s overlap; same batches and results); ``--no-overlap`` runs them
at their read, as before (the reference to compare with).  With the overlap, the trainer's time
is split into the batches trained on the event loop's thread (at a read) and those trained
ahead on the worker (their wall time, and the worker thread's own CPU time, which leaves out
TensorFlow's pool threads); ``event loop blocked in reads`` is the wall time the simulation
waited for pass results (training them, or waiting for the worker).

``--ab-upload-check`` also times warm epochs alternately with the server's previous upload check
(``np.unique`` for repeated indices) and the current one, to measure that change in one run.

The metrics row is evaluated beside the event loop, on a thread of the monitor's
(``sim.monitor``: same rows), and printed as ``… s wall beside it``; in a one-epoch run
the row is the run's last event, so the loop waits for it at the end all the same (printed as
``the loop waiting for it``); the line also gives when the groups' model reports (the row's
models) came, from the run's start: a model evaluated as its group reports could only gain
where they come well before the end.
``--ab-waits PAIRS`` times warm epochs alternately by the executor's reference waits
(``Executor.reference_waits``: a pass's pipeline drain, which computes nothing, waiting for
the batch running ahead on the worker, as before the sixth session) and by the current
executor; ``blocked … in other kinds' reads`` is the loop's wall time in those drains.
``--ab-eval-threads PAIRS`` times warm epochs alternately with the metrics row's chunks
evaluated one after the other (``FusedTrainer.evaluate(..., threads=1)``) and a thread per core
(the default; same scores).
``--ab-switch PAIRS`` times warm epochs alternately with the interpreter's switch interval left as
it is (``Simulation.switch_interval_s = None``; Python's 5 ms) and at the run's 0.2 ms (the
default, :data:`crowdlearn.training.threads.RUN_SWITCH_INTERVAL_S`; same results).
``--ab-gather PAIRS`` times warm epochs alternately with a pass's parts copied element by element
(``np.take``, fancy assignment) and by slices where their indices are long runs
(``slicenet.ownership.gather``/``scatter``, the default; same results).
``--ab-chain PAIRS`` times warm epochs alternately with the metrics row's models scored layer by
layer (``FusedTrainer.chain_evaluate = False``) and through their inference chain
(:mod:`slicenet.inference`: BatchNorm folded into the Dense layers, the first layer one product
for all the models; the default): the same accuracy, the loss in its last bits (printed);
``--ab-row PAIRS`` times the row alone the same two ways (12 models, the 10,000 test rows).
``--ab-shares PAIRS`` times warm epochs alternately with a compiled call's shares run one after the
other (``FusedTrainer.train(share_threads=1)``) and side by side at a read (the default; the
overlap worker runs them in turn either way; same results).
``--ab-share PAIRS`` times warm epochs alternately with each member's top-θ selection made at its
share (``crowdlearning.reference.eager_share``: it reads the passes' deferred training there) and
made lazily, read when the server releases the epoch's uploads (the default); the passes then run
in fewer, wider batches, which round differently (the accuracies are printed).
``--ab-paths PAIRS`` times warm epochs alternately by the code this session replaced (owned-index
checks by ``searchsorted``, a device's share on full-length vectors, a pass's collective key made
at each ask, the row evaluated on the loop's thread: :func:`reference_paths`, the reference paths
of ``tests/test_slicenet_fastpaths.py``; run from the repository's root) and by the current code.
``--ab-evaluate PAIRS`` times warm runs of ``--ab-epochs`` epochs (3 by default) with every row
evaluated on the event loop's thread and beside it, alternately, each beside as many Keras
epochs: there an epoch's evaluation runs while the next epoch is simulated.

A ``fused trainer by thread`` line splits the warm epoch's trainer rate into the calls on the
event loop's thread and those run ahead on the worker (which share the cores with the event
loop's own work), and gives the rate over the time any call ran; ``--calls`` also lists every
call (groups, the compiled calls they were cut into, start, wall time, GFLOP/s).

Run::

    .venv/bin/python benchmarks/slicenet_throughput.py [--group-size 10] [--devices 120] [--calls]
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import os
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


def simulated_epoch(devices: int, group_size: int, seed: int, overlap: bool = True,
                    epochs: int = 1, concurrent_evaluate: bool = True,
                    reference_waits: bool = False, eval_threads: int | None = None,
                    switch_interval: bool = True, gather_by_take: bool = False,
                    chain_evaluate: bool = True, eager_share: bool = False,
                    share_threads: int | None = None) -> dict:
    import threading

    import numpy as np

    from crowdlearn.config import from_dict
    from crowdlearn.experiment import Simulation
    from crowdlearn.training.jobs import Executor
    from sim.monitor import Monitor
    from slicenet.fused import FusedTrainer

    cfg = from_dict({"protocol": "crowdlearning", "rounds": epochs, "seed": seed,
                     "data": {"dataset": "fashion_mnist"},
                     "fleet": {"devices": devices, "cells": 12},
                     "slicenet": {"model": "paper-mlp", "group_size": group_size}})
    spent = [0.0, 0.0, 0.0, 0.0, 0.0]      # trainer wall, CPU; evaluation wall, CPU; GC in them
    ahead = [0.0, 0.0, 0]         # trained on the worker: wall, the thread's CPU, calls
    blocked = [0.0, 0.0, 0.0]     # the event loop's wall time in pass reads, close(), other reads
    collecting = [0.0, 0.0]       # garbage collection: process CPU seconds, collections
    beside = [0.0, 0.0, 0]        # evaluated beside the loop: wall, the thread's CPU, calls
    waited = [0.0]                # the loop's wall time waiting for rows evaluated beside it
    orig, orig_eval, orig_read = FusedTrainer.train, FusedTrainer.evaluate, Executor._run_kind
    orig_write = Monitor._write_evaluated
    orig_report = Monitor.on_report
    reported: list[float] = []    # wall times of the groups' model reports (the row's models)
    orig_close = Executor.close
    main = threading.current_thread()
    calls: list[dict] = []        # per FusedTrainer.train call (what --calls prints)
    began = [time.perf_counter()]

    def record(self, tasks, t0: float, on_loop: bool) -> None:
        end = time.perf_counter()
        samples = sum(int((np.asarray(t.batches) >= 0).sum()) for t in tasks)
        plan = self._calls([t.batches for t in tasks])
        calls.append({"on_loop": on_loop, "groups": len(tasks),
                      "shares": [len(s) for _, _, shares in plan for s in shares],
                      "compiled": all(xla for _, xla, _ in plan),
                      "start_s": t0 - began[0], "wall_s": end - t0,
                      "flops": self.flops_per_sample * samples})

    def timed(self, tasks, **kw):
        if threading.current_thread() is not main:       # run ahead, beside the event loop
            t, c = time.perf_counter(), time.thread_time()
            try:
                return orig(self, tasks, **kw)
            finally:
                ahead[0] += time.perf_counter() - t
                ahead[1] += time.thread_time() - c
                ahead[2] += 1
                record(self, tasks, t, False)
        t, c, g = time.perf_counter(), time.process_time(), collecting[0]
        try:
            return orig(self, tasks, **kw)
        finally:
            spent[0] += time.perf_counter() - t
            spent[1] += time.process_time() - c
            spent[4] += collecting[0] - g
            record(self, tasks, t, True)

    def timed_close(self):
        t = time.perf_counter()
        try:
            return orig_close(self)
        finally:
            blocked[1] += time.perf_counter() - t

    def timed_read(self, kind):
        t = time.perf_counter()
        try:
            return orig_read(self, kind)
        finally:
            blocked[0 if kind == "slice_pass" else 2] += time.perf_counter() - t

    def timed_eval(self, *a, **kw):
        if eval_threads is not None:
            kw["threads"] = eval_threads
        if threading.current_thread() is not main:      # the monitor's evaluation thread
            t, c = time.perf_counter(), time.thread_time()
            try:
                return orig_eval(self, *a, **kw)
            finally:
                beside[0] += time.perf_counter() - t
                beside[1] += time.thread_time() - c
                beside[2] += 1
        t, c, g = time.perf_counter(), time.process_time(), collecting[0]
        try:
            return orig_eval(self, *a, **kw)
        finally:
            spent[2] += time.perf_counter() - t
            spent[3] += time.process_time() - c
            spent[4] += collecting[0] - g

    def timed_write(self, *, wait):
        t = time.perf_counter()
        try:
            return orig_write(self, wait=wait)
        finally:
            if wait and threading.current_thread() is main:
                waited[0] += time.perf_counter() - t

    def timed_report(self, node, rep, now):
        if rep.name == "group_model":
            reported.append(time.perf_counter())
        return orig_report(self, node, rep, now)

    def on_gc(phase, info):
        if phase == "start":
            collecting.append(time.process_time())
        else:
            collecting[0] += time.process_time() - collecting.pop()
            collecting[1] += 1

    FusedTrainer.train, FusedTrainer.evaluate, Executor._run_kind = timed, timed_eval, timed_read
    from crowdlearn.protocols.crowdlearning import build
    orig_copies = build.gather, build.scatter
    if gather_by_take:           # a pass's parts copied element by element (before session 14)
        build.gather = np.take
        build.scatter = lambda dst, idx, values: dst.__setitem__(idx, values)
    from crowdlearn.protocols.crowdlearning import device as slice_device
    from crowdlearn.protocols.crowdlearning.reference import eager_share as eager
    lazy_share = slice_device.SliceDevice._share
    if eager_share:              # the top-θ selection made at the share (before session 17)
        slice_device.SliceDevice._share = eager
    Executor.close = timed_close
    orig_train_threads = FusedTrainer.train
    if share_threads is not None:   # every call's shares on this many threads (1: in turn)
        def fixed(self, tasks, **kw):
            kw["share_threads"] = share_threads
            return orig_train_threads(self, tasks, **kw)
        FusedTrainer.train = fixed
    FusedTrainer.concurrent_evaluate = concurrent_evaluate
    FusedTrainer.chain_evaluate = chain_evaluate
    Monitor._write_evaluated = timed_write
    Monitor.on_report = timed_report
    gc.collect()          # no timed section pays for the garbage of the one before it
    gc.callbacks.append(on_gc)
    try:
        t0, c0 = time.perf_counter(), time.process_time()
        began[0] = t0
        sim = Simulation(cfg)
        sim.executor.reference_waits = reference_waits
        if not switch_interval:              # the interpreter's as it is (5 ms by default)
            sim.switch_interval_s = None
        if not overlap:
            sim.executor.overlap_kinds = frozenset()
        res = sim.run()
        wall, cpu = time.perf_counter() - t0, time.process_time() - c0
    finally:
        gc.callbacks.remove(on_gc)
        FusedTrainer.train, FusedTrainer.evaluate, Executor._run_kind = \
            orig, orig_eval, orig_read
        Executor.close = orig_close
        build.gather, build.scatter = orig_copies
        slice_device.SliceDevice._share = lazy_share
        FusedTrainer.concurrent_evaluate = True
        FusedTrainer.chain_evaluate = True
        Monitor._write_evaluated = orig_write
        Monitor.on_report = orig_report
    s = res.summary
    samples = epochs * sum(len(p) for p in sim.parts)
    flops = sim.ctx.extra["layout"].train_flops_per_sample * samples
    return {"wall_s": wall, "cpu_s": cpu, "train_s": spent[0] + ahead[0],
            "train_loop_s": spent[0], "train_cpu_s": spent[1], "flops": flops,
            "ahead_s": ahead[0], "ahead_thread_cpu_s": ahead[1], "ahead_calls": ahead[2],
            "blocked_s": blocked[0], "close_s": blocked[1], "blocked_other_s": blocked[2],
            "overlap": dict(sim.executor.overlap_batches),
            "pass_batches": sim.executor.batches_run.get("slice_pass", 0),
            "eval_s": spent[2], "eval_cpu_s": spent[3], "gc_cpu_s": collecting[0],
            "eval_beside_s": beside[0], "eval_beside_thread_cpu_s": beside[1],
            "eval_beside_calls": beside[2], "eval_waited_s": waited[0],
            "reported_s": [t - t0 for t in reported],
            "gc_runs": int(collecting[1]), "gc_in_tf_cpu_s": spent[4],
            "samples": samples, "calls": calls,
            "accuracy": s["final_accuracy"], "sim_time_s": s["sim_time_s"],
            "completed": s["completed"], "metrics": res.metrics}


def trainer_calls(r: dict, each: bool = False) -> str:
    """The fused trainer's rate by thread over an epoch's ``FusedTrainer.train`` calls (and, with
    ``each``, one line per call): the calls on the event loop's thread, those run ahead on the
    worker (beside the event loop's own work, on the same cores), and over the time at least
    one call ran (the union of their intervals).

    >>> r = {"flops": 3e9, "calls": [
    ...     {"on_loop": False, "groups": 2, "shares": [1, 1], "compiled": True, "start_s": 0.0,
    ...      "wall_s": 0.1, "flops": 1e9},
    ...     {"on_loop": True, "groups": 4, "shares": [2, 2], "compiled": True, "start_s": 0.05,
    ...      "wall_s": 0.1, "flops": 2e9}]}
    >>> print(trainer_calls(r))
    fused trainer by thread: on the event loop's thread 20.0 GFLOP/s (1 calls, 0.10 s); ahead on the worker 10.0 GFLOP/s (1 calls, 0.10 s); busy (union of the calls' intervals) 0.15 s, 20.0 GFLOP/s; the calls' FLOPs are the epoch's: True
    """
    calls = r["calls"]
    parts = []
    for name, on in (("on the event loop's thread", True), ("ahead on the worker", False)):
        mine = [c for c in calls if c["on_loop"] is on]
        wall = sum(c["wall_s"] for c in mine)
        rate = sum(c["flops"] for c in mine) / wall / 1e9 if wall else float("nan")
        parts.append(f"{name} {rate:.1f} GFLOP/s ({len(mine)} calls, {wall:.2f} s)")
    busy, end = 0.0, -1.0
    for c in sorted(calls, key=lambda c: c["start_s"]):
        s, e = c["start_s"], c["start_s"] + c["wall_s"]
        busy += max(0.0, e - max(s, end))
        end = max(end, e)
    total = sum(c["flops"] for c in calls)
    lines = [f"fused trainer by thread: {'; '.join(parts)}; busy (union of the calls' "
             f"intervals) {busy:.2f} s, {total / busy / 1e9:.1f} GFLOP/s; the calls' FLOPs are "
             f"the epoch's: {abs(total - r['flops']) <= 1e-9 * r['flops']}"]
    if each:
        for c in calls:
            lines.append(f"  {'loop  ' if c['on_loop'] else 'worker'} {c['groups']:3d} groups "
                         f"(calls of {c['shares']}{'' if c['compiled'] else ', op by op'}) at "
                         f"{c['start_s']:7.2f} s: {c['wall_s']:.3f} s, "
                         f"{c['flops'] / c['wall_s'] / 1e9:5.1f} GFLOP/s")
    return "\n".join(lines)


def keras_epoch(seed: int, lr: float = 0.05, batch: int = 32) -> dict:
    import keras
    import numpy as np

    from crowdlearn.data.datasets import load_dataset
    from slicenet.keras_io import paper_mlp

    ds = load_dataset("fashion_mnist")
    x = np.asarray(ds.x_train, np.float32).reshape(len(ds.x_train), -1)
    y = np.asarray(ds.y_train, np.int32)
    keras.utils.set_random_seed(seed)
    model = paper_mlp()[1]()
    model.compile(optimizer=keras.optimizers.SGD(lr),
                  loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    model.fit(x[:2048], y[:2048], batch_size=batch, epochs=1, verbose=0)     # tracing
    gc.collect()
    t, c = time.perf_counter(), time.process_time()
    model.fit(x, y, batch_size=batch, epochs=1, verbose=0, shuffle=True)
    return {"wall_s": time.perf_counter() - t, "cpu_s": time.process_time() - c,
            "samples": len(x)}


def ab_row(models: int, pairs: int, seed: int) -> None:
    """``pairs`` times: the metrics row alone — ``models`` ``paper-mlp`` models (Glorot
    kernels, BatchNorm parameters and statistics drawn off their trivial values) scored on the
    10,000 Fashion-MNIST test rows layer by layer, then through the inference chain."""
    import numpy as np

    from crowdlearn.data.datasets import load_dataset
    from slicenet.fused import FusedTrainer
    from slicenet.graph import paper_mlp_description

    ds = load_dataset("fashion_mnist")
    trainer = FusedTrainer(paper_mlp_description(), ds.x_train[:64], ds.y_train[:64])
    rng = np.random.default_rng(seed)
    weights = [[w if s.role == "kernel" else
                (rng.uniform(0.5, 1.5, w.shape) if s.role == "moving_variance" else
                 w + rng.normal(0, 0.1, w.shape)).astype(np.float32)
                for w, s in zip(trainer.init_weights(rng), trainer.specs, strict=True)]
               for _ in range(models)]

    def timed(by_chain: bool) -> tuple[float, float, list]:
        trainer.chain_evaluate = by_chain
        gc.collect()
        t, c = time.perf_counter(), time.process_time()
        out = trainer.evaluate(weights, ds.x_test, ds.y_test)
        return time.perf_counter() - t, time.process_time() - c, out

    timed(False), timed(True)              # tracing
    for pair in range(pairs):
        (lw, lc, lo), (cw, cc, co) = timed(False), timed(True)
        loss = max(abs(a[0] - b[0]) for a, b in zip(lo, co, strict=True))
        acc = all(a[1] == b[1] for a, b in zip(lo, co, strict=True))
        print(f"A/B the row alone pair {pair + 1} ({models} models, load "
              f"{os.getloadavg()[0]:.2f}): layer by layer {lw:.3f} s wall / {lc:.3f} s CPU, by "
              f"the chain {cw:.3f} / {cc:.3f} s; same accuracy: {acc}, largest loss "
              f"difference {loss:.1e}")


def matmul_rate(n: int = 2048, reps: int = 5) -> tuple[float, float]:
    """GFLOP/s of an n × n float32 matrix product: per wall second and per process CPU second."""
    import tensorflow as tf

    a = tf.random.normal([n, n])
    tf.matmul(a, a).numpy()
    t, c = time.perf_counter(), time.process_time()
    for _ in range(reps):
        tf.matmul(a, a).numpy()
    flops = reps * 2 * n ** 3
    return flops / (time.perf_counter() - t) / 1e9, flops / (time.process_time() - c) / 1e9


def _unique_check():
    """The upload check as it was before: the current one plus the ``np.unique`` over the
    indices that the previous one ran to find repeats."""
    import numpy as np

    from crowdlearn.protocols import validate

    current = validate.check_sparse

    def check(indices, values, **kw):
        if len(indices):
            np.unique(np.asarray(indices, np.int64))
        return current(indices, values, **kw)
    return check


def ab_upload_check(devices: int, group_size: int, seed: int, pairs: int = 2) -> None:
    from crowdlearn.protocols import validate
    from crowdlearn.protocols.crowdlearning import device, server

    current = validate.check_sparse
    old = _unique_check()
    times: dict[str, list[float]] = {"previous": [], "current": []}
    for _ in range(pairs):
        for name, fn in (("previous", old), ("current", current)):
            server.check_sparse = device.check_sparse = fn
            try:
                times[name].append(simulated_epoch(devices, group_size, seed)["wall_s"])
            finally:
                server.check_sparse = device.check_sparse = current
    for name, ts in times.items():
        print(f"warm epoch with the {name} upload check: "
              + ", ".join(f"{t:.1f}" for t in ts) + " s")


@contextlib.contextmanager
def reference_paths():
    """The code the fifth session replaced, put back (the reference paths of
    ``tests/test_slicenet_fastpaths.py``): owned-index checks by ``searchsorted``, a device's
    share on full-length vectors, a pass's collective key made at each ask.  (The metrics row
    on the loop's thread: ``simulated_epoch(..., concurrent_evaluate=False)``.)"""
    from crowdlearn.protocols.crowdlearning import device, passjob
    from crowdlearn.protocols.crowdlearning.reference import full_length_share, owns_all_by_search
    from slicenet.ownership import OwnedIndices

    saved = [(OwnedIndices, "owns_all", OwnedIndices.__dict__["owns_all"]),
             (device.SliceDevice, "_share", device.SliceDevice.__dict__["_share"]),
             (passjob.SlicePassJob, "collective", passjob.SlicePassJob.__dict__["collective"])]
    OwnedIndices.owns_all = owns_all_by_search
    device.SliceDevice._share = full_length_share
    passjob.SlicePassJob.collective = property(lambda self: ("slice_pass",) + tuple(self.key))
    try:
        yield
    finally:
        for cls, name, value in saved:
            setattr(cls, name, value)


def ab_paths(devices: int, group_size: int, seed: int, overlap: bool, pairs: int) -> None:
    """``pairs`` times: a warm epoch by the reference paths, one by the current code, and a
    Keras epoch (in one process, alternately: the same conditions)."""
    for pair in range(pairs):
        with reference_paths():
            ref = simulated_epoch(devices, group_size, seed, overlap, 1, False)
        cur = simulated_epoch(devices, group_size, seed, overlap)
        k = keras_epoch(seed)
        print(f"A/B paths pair {pair + 1} (load {os.getloadavg()[0]:.2f}): reference paths "
              f"{ref['wall_s']:.2f} s wall / {ref['cpu_s']:.2f} s CPU, current "
              f"{cur['wall_s']:.2f} / {cur['cpu_s']:.2f} s, Keras {k['wall_s']:.2f} / "
              f"{k['cpu_s']:.2f} s: {_compared(ref, cur, k)}")


def ab_pairs(a, overlap: bool, pairs: int, title: str, reference: dict, detail) -> None:
    """``pairs`` times: a warm epoch with the ``reference`` options of :func:`simulated_epoch`,
    one by the current code, and a Keras epoch (alternately in one process); ``detail(ref,
    cur)`` says what differed."""
    for pair in range(pairs):
        ref = simulated_epoch(a.devices, a.group_size, a.seed, overlap, **reference)
        cur = simulated_epoch(a.devices, a.group_size, a.seed, overlap)
        k = keras_epoch(a.seed)
        print(f"A/B {title} pair {pair + 1} (load {os.getloadavg()[0]:.2f}): {detail(ref, cur)}, "
              f"Keras {k['wall_s']:.2f} / {k['cpu_s']:.2f} s: {_compared(ref, cur, k)}")


def _compared(ref: dict, cur: dict, k: dict) -> str:
    """A pair's ratios, reference -> current, and whether the two runs' results agree."""
    same = ref["metrics"] == cur["metrics"] and \
        (ref["accuracy"], ref["sim_time_s"]) == (cur["accuracy"], cur["sim_time_s"])
    return (f"ratio {ref['wall_s'] / k['wall_s']:.2f} -> {cur['wall_s'] / k['wall_s']:.2f}, "
            f"ratio_cpu {ref['cpu_s'] / k['cpu_s']:.2f} -> {cur['cpu_s'] / k['cpu_s']:.2f}; "
            f"same metrics, accuracy and simulated time: {same}")


def _span(times: list) -> str:
    """``first to last`` of a list of times (``none`` if empty)."""
    return f"{min(times):.2f} to {max(times):.2f}" if times else "none"


def _loss_difference(ref: dict, cur: dict) -> float:
    """The largest |loss difference| between two runs' metrics rows (NaN if anything else in
    the rows differs)."""
    rows = list(zip(ref["metrics"], cur["metrics"], strict=True))
    if any({k: v for k, v in r.items() if k != "loss"} != {k: v for k, v in c.items()
                                                          if k != "loss"} for r, c in rows):
        return float("nan")
    return max(abs(r["loss"] - c["loss"]) for r, c in rows)


def _header() -> None:
    """What ran where: the code's commit, the machine, its load; then how to read the lines."""
    import subprocess

    import slicenet

    root = os.path.dirname(os.path.dirname(os.path.abspath(slicenet.__file__)))
    try:
        rev = subprocess.run(["git", "-C", root, "describe", "--always", "--dirty"],
                             capture_output=True, text=True, timeout=10).stdout.strip()
    except OSError:
        rev = "?"
    print(f"{time.strftime('%Y-%m-%d %H:%M:%S UTC', time.gmtime())}; code {root} at {rev or '?'}; "
          f"{len(os.sched_getaffinity(0))} CPUs; load average at the start "
          f"{os.getloadavg()[0]:.2f}")
    print("Lines: 'simulated epoch' = the whole simulation (build, simulator, machines, fused "
          "trainer, evaluation) of one epoch, cold (first, tracing and XLA compilation) and "
          "warm (second, as in a sweep); 'ratio' = warm ÷ the Keras epoch's wall time (target "
          "<= 1.0); 'ratio_cpu' = the same over process CPU seconds (steadier on a loaded "
          "machine); fused trainer GFLOP/s = the epoch's training FLOPs ÷ wall time inside "
          "FusedTrainer.train (target >= 50).")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--devices", type=int, default=120)
    ap.add_argument("--group-size", type=int, default=10)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--ab-upload-check", action="store_true",
                    help="also time warm epochs with the previous and the current upload check")
    ap.add_argument("--no-overlap", action="store_true",
                    help="train every batch of passes at its first read (the executor without "
                         "its overlap: the reference)")
    ap.add_argument("--ab-overlap", type=int, default=0, metavar="PAIRS",
                    help="then PAIRS times: a warm epoch without the overlap, one with it and a "
                         "Keras epoch, each pair's ratios printed (same conditions)")
    ap.add_argument("--ab-paths", type=int, default=0, metavar="PAIRS",
                    help="then PAIRS times: a warm epoch by the reference paths of the fifth "
                         "session's changes, one by the current code, and a Keras epoch")
    ap.add_argument("--ab-evaluate", type=int, default=0, metavar="PAIRS",
                    help="then PAIRS times: a warm run of --ab-epochs epochs with every metrics "
                         "row evaluated on the event loop's thread, one with the rows evaluated "
                         "beside it (the default), and as many Keras epochs (same conditions)")
    ap.add_argument("--ab-waits", type=int, default=0, metavar="PAIRS",
                    help="then PAIRS times: a warm epoch by the executor's reference waits (a "
                         "pipeline drain waiting for the batch running ahead), one by the "
                         "current executor, and a Keras epoch (same conditions)")
    ap.add_argument("--ab-eval-threads", type=int, default=0, metavar="PAIRS",
                    help="then PAIRS times: a warm epoch with the metrics row's chunks "
                         "evaluated one after the other, one with a thread per core (the "
                         "default), and a Keras epoch (same conditions)")
    ap.add_argument("--ab-switch", type=int, default=0, metavar="PAIRS",
                    help="then PAIRS times: a warm epoch with the interpreter's switch interval "
                         "left as it is (5 ms by default), one at the run's "
                         "(threads.RUN_SWITCH_INTERVAL_S), and a Keras epoch (same conditions)")
    ap.add_argument("--ab-gather", type=int, default=0, metavar="PAIRS",
                    help="then PAIRS times: a warm epoch with a pass's parts copied element by "
                         "element (np.take, fancy assignment), one by slices where their "
                         "indices are long runs (the default), and a Keras epoch")
    ap.add_argument("--ab-chain", type=int, default=0, metavar="PAIRS",
                    help="then PAIRS times: a warm epoch with the metrics row's models scored "
                         "layer by layer, one through their inference chain (BatchNorm folded, "
                         "the first layer one product: the default), and a Keras epoch")
    ap.add_argument("--ab-share", type=int, default=0, metavar="PAIRS",
                    help="then PAIRS times: a warm epoch with each member's top-theta "
                         "selection made at its share (reading the passes' training there), "
                         "one with it made lazily, read when the server releases the epoch's "
                         "uploads (the default), and a Keras epoch")
    ap.add_argument("--ab-shares", type=int, default=0, metavar="PAIRS",
                    help="then PAIRS times: a warm epoch with a compiled call's shares run one "
                         "after the other, one with them side by side at a read (the default), "
                         "and a Keras epoch")
    ap.add_argument("--ab-row", type=int, default=0, metavar="PAIRS",
                    help="then PAIRS times: the metrics row alone (12 paper-mlp models on the "
                         "test set) scored layer by layer and through the inference chain")
    ap.add_argument("--ab-epochs", type=int, default=3, metavar="N",
                    help="epochs of each --ab-evaluate run (default 3)")
    ap.add_argument("--calls", action="store_true",
                    help="also list the warm epoch's FusedTrainer.train calls: thread, groups, "
                         "shares (groups per compiled call), start, wall time, GFLOP/s")
    a = ap.parse_args()
    _header()
    overlap = not a.no_overlap
    print(f"overlap (passes trained ahead of their read, beside the event loop): "
          f"{'on' if overlap else 'off'}")
    mm_before = matmul_rate()
    cold = simulated_epoch(a.devices, a.group_size, a.seed, overlap)
    warm = simulated_epoch(a.devices, a.group_size, a.seed, overlap)
    ker = keras_epoch(a.seed)
    mm_after = matmul_rate()
    for name, r in (("cold", cold), ("warm", warm)):
        print(f"simulated epoch ({name}): {r['wall_s']:.1f} s wall, {r['cpu_s']:.1f} s CPU for "
              f"{r['samples']} samples ({a.devices} devices, n = {a.group_size}; "
              f"{r['sim_time_s']:.1f} s simulated, accuracy {r['accuracy']:.4f}, completed "
              f"{r['completed']}); fused trainer {r['train_s']:.1f} s wall, "
              f"{r['flops'] / r['train_s'] / 1e9:.1f} GFLOP/s (on the event loop's thread "
              f"{r['train_loop_s']:.1f} s wall, {r['train_cpu_s']:.1f} s CPU; ahead on the "
              f"worker {r['ahead_s']:.1f} s wall in {r['ahead_calls']} calls); event loop "
              f"blocked in reads {r['blocked_s']:.1f} s (in other kinds' reads, the pipeline "
              f"drains: {r['blocked_other_s']:.2f} s; at the end, waiting for the worker "
              f"{r['close_s']:.2f} s); batches run ahead: "
              f"{r['overlap']['used']} used, {r['overlap']['discarded']} discarded; "
              f"evaluation {r['eval_s']:.1f} s wall on the loop's thread, "
              f"{r['eval_beside_s']:.1f} s wall beside it in {r['eval_beside_calls']} calls, "
              f"the loop waiting for it {r['eval_waited_s']:.2f} s; the groups' models "
              f"reported from {_span(r['reported_s'])} s of the run's {r['wall_s']:.2f} s")
    print(trainer_calls(warm, a.calls))
    rest = warm["cpu_s"] - warm["train_cpu_s"] - warm["ahead_thread_cpu_s"] \
        - warm["eval_cpu_s"] - warm["eval_beside_thread_cpu_s"] - warm["gc_cpu_s"] \
        + warm["gc_in_tf_cpu_s"]      # (a collection inside the trainer is counted there)
    print(f"CPU seconds of the warm epoch: {warm['cpu_s']:.2f} = fused trainer on the loop's "
          f"thread {warm['train_cpu_s']:.2f} + trained ahead (the worker thread's own CPU) "
          f"{warm['ahead_thread_cpu_s']:.2f} + evaluation {warm['eval_cpu_s']:.2f} (beside "
          f"the loop, the thread's own CPU: {warm['eval_beside_thread_cpu_s']:.2f}; its "
          f"TensorFlow pool threads are in the rest) + garbage "
          f"collection {warm['gc_cpu_s']:.2f} ({warm['gc_runs']} collections) + the rest "
          f"(building, simulator, machines; TensorFlow's pool threads while training ahead) "
          f"{rest:.2f}")
    print(f"centralized Keras fit: {ker['wall_s']:.1f} s wall, {ker['cpu_s']:.1f} s CPU for "
          f"{ker['samples']} samples")
    ratio = warm['wall_s'] / ker['wall_s']
    rate = warm['flops'] / warm['train_s'] / 1e9
    print(f"ratio {ratio:.2f}  (cold {cold['wall_s'] / ker['wall_s']:.2f})")
    print(f"ratio_cpu {warm['cpu_s'] / ker['cpu_s']:.2f}  (process CPU seconds: warm simulated "
          f"epoch {warm['cpu_s']:.1f}, Keras epoch {ker['cpu_s']:.1f})")
    print(f"fused trainer GFLOP/s {rate:.1f}")
    if warm["ahead_calls"] == 0:
        print(f"fused trainer GFLOP per CPU second "
              f"{warm['flops'] / warm['train_cpu_s'] / 1e9:.1f}")
    print(f"matmul 2048 GFLOP/s (before, after) {mm_before[0]:.1f}, {mm_after[0]:.1f}; per CPU "
          f"second {mm_before[1]:.1f}, {mm_after[1]:.1f}")
    machine = (mm_before[0] + mm_after[0]) / 2
    print(f"fused trainer / matmul 2048 rate {rate / machine:.3f}  (the trainer's rate as a "
          f"share of what this machine's 2048-square matrix product gave in the same run)")
    print(f"load average at the end {os.getloadavg()[0]:.2f}")
    print(f"targets: ratio <= 1.0 {'met' if ratio <= 1.0 else 'NOT met'}; fused trainer >= 50 "
          f"GFLOP/s {'met' if rate >= 50 else 'NOT met'}  (wall-clock figures: read them "
          "beside the load average and the matmul rate, which measure what the machine gave)")
    if a.ab_upload_check:
        ab_upload_check(a.devices, a.group_size, a.seed)
    for pair in range(a.ab_overlap):
        off = simulated_epoch(a.devices, a.group_size, a.seed, False)
        on = simulated_epoch(a.devices, a.group_size, a.seed, True)
        k = keras_epoch(a.seed)
        same = (off["accuracy"], off["sim_time_s"]) == (on["accuracy"], on["sim_time_s"])
        print(f"A/B pair {pair + 1} (load {os.getloadavg()[0]:.2f}): without overlap "
              f"{off['wall_s']:.2f} s wall / {off['cpu_s']:.2f} s CPU, with "
              f"{on['wall_s']:.2f} / {on['cpu_s']:.2f} s ({on['overlap']['used']} used, "
              f"{on['overlap']['discarded']} discarded), Keras {k['wall_s']:.2f} / "
              f"{k['cpu_s']:.2f} s: ratio {off['wall_s'] / k['wall_s']:.2f} -> "
              f"{on['wall_s'] / k['wall_s']:.2f}, ratio_cpu {off['cpu_s'] / k['cpu_s']:.2f} -> "
              f"{on['cpu_s'] / k['cpu_s']:.2f}; same accuracy and simulated time: {same}")

    if a.ab_paths:
        ab_paths(a.devices, a.group_size, a.seed, overlap, a.ab_paths)
    ab_pairs(a, overlap, a.ab_waits, "waits", {"reference_waits": True}, lambda ref, cur: (
        f"reference waits {ref['wall_s']:.2f} s wall / {ref['cpu_s']:.2f} s CPU (loop blocked: "
        f"pass reads {ref['blocked_s']:.2f} s, drains {ref['blocked_other_s']:.2f} s; "
        f"{ref['overlap']['used']} run ahead and used), current {cur['wall_s']:.2f} / "
        f"{cur['cpu_s']:.2f} s ({cur['blocked_s']:.2f} s, {cur['blocked_other_s']:.2f} s; "
        f"{cur['overlap']['used']} used)"))
    ab_pairs(a, overlap, a.ab_eval_threads, "evaluation threads", {"eval_threads": 1},
             lambda ref, cur: (
                 f"chunks one after the other {ref['wall_s']:.2f} s wall / {ref['cpu_s']:.2f} s "
                 f"CPU (the row {ref['eval_beside_s']:.2f} s wall, the loop waiting for it "
                 f"{ref['eval_waited_s']:.2f} s), on a thread per core {cur['wall_s']:.2f} / "
                 f"{cur['cpu_s']:.2f} s ({cur['eval_beside_s']:.2f} s, "
                 f"{cur['eval_waited_s']:.2f} s)"))
    ab_pairs(a, overlap, a.ab_switch, "switch interval", {"switch_interval": False},
             lambda ref, cur: (
                 f"the interpreter's {ref['wall_s']:.2f} s wall / {ref['cpu_s']:.2f} s CPU "
                 f"({ref['overlap']['used']} run ahead and used, loop blocked in pass reads "
                 f"{ref['blocked_s']:.2f} s), the run's {cur['wall_s']:.2f} / "
                 f"{cur['cpu_s']:.2f} s ({cur['overlap']['used']}, {cur['blocked_s']:.2f} s)"))
    ab_pairs(a, overlap, a.ab_gather, "part copies", {"gather_by_take": True},
             lambda ref, cur: (
                 f"element by element {ref['wall_s']:.2f} s wall / {ref['cpu_s']:.2f} s CPU, "
                 f"by runs {cur['wall_s']:.2f} / {cur['cpu_s']:.2f} s"))
    ab_pairs(a, overlap, a.ab_chain, "evaluation chain", {"chain_evaluate": False},
             lambda ref, cur: (
                 f"layer by layer {ref['wall_s']:.2f} s wall / {ref['cpu_s']:.2f} s CPU (the row "
                 f"{ref['eval_beside_s']:.2f} s wall, the loop waiting for it "
                 f"{ref['eval_waited_s']:.2f} s), by the chain {cur['wall_s']:.2f} / "
                 f"{cur['cpu_s']:.2f} s ({cur['eval_beside_s']:.2f} s, "
                 f"{cur['eval_waited_s']:.2f} s); accuracy {ref['accuracy']:.4f} / "
                 f"{cur['accuracy']:.4f}, largest loss difference "
                 f"{_loss_difference(ref, cur):.1e} (the metrics differ only there)"))
    ab_pairs(a, overlap, a.ab_share, "share", {"eager_share": True},
             lambda ref, cur: (
                 f"selected at the share {ref['wall_s']:.2f} s wall / {ref['cpu_s']:.2f} s CPU "
                 f"(loop blocked in pass reads {ref['blocked_s']:.2f} s, "
                 f"{ref['overlap']['used']} batches run ahead, {ref['pass_batches']} pass "
                 f"batches), lazily {cur['wall_s']:.2f} / {cur['cpu_s']:.2f} s "
                 f"({cur['blocked_s']:.2f} s, {cur['overlap']['used']}, "
                 f"{cur['pass_batches']}); accuracy {ref['accuracy']:.6f} / "
                 f"{cur['accuracy']:.6f} (the passes batched differently round differently)"))
    ab_pairs(a, overlap, a.ab_shares, "shares", {"share_threads": 1},
             lambda ref, cur: (
                 f"shares in turn {ref['wall_s']:.2f} s wall / {ref['cpu_s']:.2f} s CPU "
                 f"(trainer on the loop's thread {ref['train_loop_s']:.2f} s), side by side "
                 f"{cur['wall_s']:.2f} / {cur['cpu_s']:.2f} s ({cur['train_loop_s']:.2f} s)"))
    if a.ab_row:
        ab_row(12, a.ab_row, a.seed)
    for pair in range(a.ab_evaluate):
        n = a.ab_epochs
        on_loop = simulated_epoch(a.devices, a.group_size, a.seed, overlap, n, False)
        beside = simulated_epoch(a.devices, a.group_size, a.seed, overlap, n, True)
        ks = [keras_epoch(a.seed) for _ in range(n)]
        kw, kc = sum(k["wall_s"] for k in ks), sum(k["cpu_s"] for k in ks)
        same = on_loop["metrics"] == beside["metrics"] and \
            (on_loop["accuracy"], on_loop["sim_time_s"]) == (beside["accuracy"],
                                                             beside["sim_time_s"])
        print(f"A/B evaluation pair {pair + 1} ({n} epochs, load {os.getloadavg()[0]:.2f}): "
              f"rows evaluated on the loop {on_loop['wall_s']:.2f} s wall / "
              f"{on_loop['cpu_s']:.2f} s CPU, beside it {beside['wall_s']:.2f} / "
              f"{beside['cpu_s']:.2f} s ({beside['eval_beside_calls']} evaluations there, "
              f"{beside['eval_beside_s']:.2f} s wall), {n} Keras epochs {kw:.2f} / {kc:.2f} s: "
              f"ratio {on_loop['wall_s'] / kw:.2f} -> {beside['wall_s'] / kw:.2f}, ratio_cpu "
              f"{on_loop['cpu_s'] / kc:.2f} -> {beside['cpu_s'] / kc:.2f}; same metrics rows, "
              f"accuracy and simulated time: {same}")


if __name__ == "__main__":
    main()
