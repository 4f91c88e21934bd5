"""Fleet throughput: one simulated FedAvg round against Keras, and the simulator alone.

Part 1, **fleet round** ("everything, simulator included").  One FedAvg round of 100 devices x
600 Fashion-MNIST samples (iid split of the 60,000), MLP 784-128-64-10, 1 local epoch, batch 32,
plain SGD, every device selected (``clients_per_round = devices``), run as
``Simulation(from_dict(cfg)).run()``: config validation, fleet/network/driver construction, the
batched TensorFlow training of the 100 devices, the simulated transfers and CPU time, FedAvg
aggregation and the evaluation of the global model on the 10,000 test images.  Measured in the
same process against

* (b) a per-device Keras loop: ``KerasReferenceTrainer`` (one Keras model, ``train_on_batch`` per
  step) on exactly the round's 100 tasks (optionally on fewer devices, scaled linearly and labelled
  EXTRAPOLATED);
* (c) a centralized Keras ``model.fit(x_train, y_train, batch_size=32, epochs=1, verbose=0)`` of
  the same MLP (``build_keras_model``, ``SGD``, ``SparseCategoricalCrossentropy(from_logits=True)``)
  on the union of the devices' samples (all 60,000): the same number of samples and FLOPs.

Each contender is measured *cold* (its first call in the process: tracing included) and *warm*
(median of ``--repeats`` calls after the cold one, interleaved so that load drifts hit them alike).
The TensorFlow runtime itself is initialised by one tiny op before any cold measurement, and the
dataset is read from disk once before timing.  Warm simulated rounds build a **fresh** Simulation
each time (the default); since ``FleetTrainer`` creates its ``tf.function`` per instance, a fresh
Simulation retraces the training loop, so a second variant hands the cold round's (already traced)
FleetTrainer to fresh Simulations (``trainer_factory``) to show the cost of that retrace.  Also
printed: the median of the per-pair ratios and a process-CPU-time ratio, as cross-checks on a
loaded machine.

Part 2, **simulator alone**: ``training.backend = "none"`` (NullTrainer: weights pass through,
jobs still charged in simulated time), 100,000 devices, 1 % (1,000) per round, 100 rounds, digits
MLP 64-32-10, each device holding 8 random digits sample indices (``parts=``).  It runs in a child
process (so the peak RSS is the simulator's, not TensorFlow's) and reports wall time, events per
second and memory (``VmHWM`` and ``ru_maxrss``; the children start before TensorFlow is loaded,
since Linux carries a parent's RSS into a forked child's ``ru_maxrss``), against a bare SimPy loop
measured in the same child.  ``--profile`` adds a cProfile of a shorter run
(``--profile-rounds``).

The last lines printed are ``cold_ratio <x>`` and ``ratio <x>``: simulated round / centralized fit,
cold and warm.

Run::

    .venv/bin/python benchmarks/fleet_throughput.py                 # full (10-20 min, shared box)
    .venv/bin/python benchmarks/fleet_throughput.py --quick         # smoke, < 30 s
    .venv/bin/python benchmarks/fleet_throughput.py --profile --write-docs
"""

from __future__ import annotations

import argparse
import cProfile
import io
import json
import math
import os
import platform
import pstats
import re
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs" / "benchmarks.md"
SECTIONS = ("Fleet throughput", "Simulator alone")


# ------------------------------------------------------------------------------------ helpers
def _t(fn):
    t0 = time.perf_counter()
    out = fn()
    return time.perf_counter() - t0, out


def _med(xs):
    return statistics.median(xs) if xs else math.nan


def _rss_mib() -> float:
    """Current resident set size (VmRSS) in MiB, or nan off Linux."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return math.nan


def _maxrss_mib() -> float:
    """``ru_maxrss`` in MiB.  Linux keeps it across ``execve``: a child forked from a big parent
    starts with the parent's RSS as its maximum, hence :func:`_hwm_mib` as well."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def _hwm_mib() -> float:
    """Peak RSS of this process image (``VmHWM``, reset by ``execve``) in MiB, or nan."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return math.nan


def _simpy_scheduled(env) -> int:
    """Events ever scheduled on ``env``: SimPy's ``itertools.count`` event id, read without
    advancing it (its repr is ``count(N)``)."""
    m = re.fullmatch(r"count\((\d+)\)", repr(env._eid))
    return int(m.group(1)) if m else -1


def _simpy_processed(env) -> int:
    """Events popped by ``env.step()`` so far: scheduled minus still queued."""
    n = _simpy_scheduled(env)
    return n - len(env._queue) if n >= 0 else -1


def machine() -> dict:
    cpu = "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    try:
        nproc = subprocess.run(["nproc"], capture_output=True, text=True,
                               check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        nproc = str(len(os.sched_getaffinity(0)))
    mem = "?"
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                mem = f"{int(line.split()[1]) / 2**20:.0f} GiB"
    except OSError:
        pass
    import simpy
    try:
        commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT,
                                capture_output=True, text=True, check=True).stdout.strip()
        dirty = [ln[3:] for ln in subprocess.run(
            ["git", "status", "--short", "--untracked-files=no", "--", "sim", "crowdlearn"],
            cwd=ROOT, capture_output=True, text=True, check=True).stdout.splitlines()]
    except (OSError, subprocess.CalledProcessError):
        commit, dirty = "unknown", []
    return {"commit": commit, "dirty": dirty, "cpu": cpu, "nproc": nproc, "mem": mem, "python": platform.python_version(),
            "numpy": np.__version__, "simpy": simpy.__version__,
            "platform": platform.platform()}


# ------------------------------------------------------------------------ part 1: fleet round
def fleet_raw(args) -> dict:
    return {
        "name": "bench-fleet-round",
        "seed": args.seed,
        "rounds": 1,
        "data": {"dataset": "fashion_mnist", "partition": "iid"},
        "model": {"arch": "mlp", "hidden": [128, 64], "activation": "relu"},
        "training": {"backend": "batched"},
        "fleet": {"devices": args.devices},
        "fedavg": {"clients_per_round": args.devices, "local_epochs": 1, "batch_size": 32,
                   "lr": args.lr},
    }


_OBJ = ("tasks", "spec", "parts", "trainer")


def fleet_round(args) -> dict:
    import keras
    import tensorflow as tf

    from crowdlearn.config import from_dict
    from crowdlearn.data import load_dataset
    from crowdlearn.experiment import Simulation
    from crowdlearn.training.fleet_trainer import FleetTrainer
    from crowdlearn.training.keras_ref import KerasReferenceTrainer, build_keras_model

    tf.get_logger().setLevel("ERROR")   # the per-instance retracing warning: reported below
    out: dict = {"tf": tf.__version__, "keras": keras.__version__,
                 "gpus": len(tf.config.list_physical_devices("GPU")),
                 "load_start": os.getloadavg()}
    # The TF runtime (thread pools, kernels registry) is initialised once, outside every timing.
    out["tf_init_s"], _ = _t(lambda: (tf.constant([[1.0]]) @ tf.constant([[1.0]])).numpy())
    out["dataset_load_s"], ds = _t(lambda: load_dataset("fashion_mnist", seed=args.seed))

    n_dev, per = args.devices, args.samples
    if n_dev * per == len(ds.x_train):
        parts = None                      # the config's own iid partition of the whole set
    else:                                 # a smaller (quick) round: n_dev x per random samples
        rng = np.random.default_rng(args.seed)
        parts = np.split(rng.permutation(len(ds.x_train))[: n_dev * per], n_dev)

    class TimedFleetTrainer(FleetTrainer):
        """FleetTrainer that records its tasks and the time spent in train/evaluate."""

        def __init__(self, *a, **kw):
            t0 = time.perf_counter()
            super().__init__(*a, **kw)
            self.init_s = time.perf_counter() - t0
            self.train_s = self.eval_s = 0.0
            self.tasks = []

        def train(self, tasks):
            self.tasks = list(tasks)
            t0 = time.perf_counter()
            res = super().train(tasks)
            self.train_s += time.perf_counter() - t0
            return res

        def evaluate(self, *a, **kw):
            t0 = time.perf_counter()
            res = super().evaluate(*a, **kw)
            self.eval_s += time.perf_counter() - t0
            return res

    shared: list = []

    def shared_factory(spec, x, y):
        if not shared:
            shared.append(TimedFleetTrainer(spec, x, y))
        t = shared[0]
        t.init_s = t.train_s = t.eval_s = 0.0
        return t

    def sim_round(factory) -> dict:
        c0 = time.process_time()
        t0 = time.perf_counter()
        sim = Simulation(from_dict(fleet_raw(args)), trainer_factory=factory, parts=parts)
        t1 = time.perf_counter()
        res = sim.run()
        t2 = time.perf_counter()
        cpu = time.process_time() - c0
        tr = sim.trainer
        s = res.summary
        if s.get("rounds_completed") != 1 or len(tr.tasks) != n_dev:
            raise RuntimeError(f"expected 1 round of {n_dev} training tasks; got "
                               f"{s.get('rounds_completed')} round(s), {len(tr.tasks)} tasks")
        return {"total": t2 - t0, "cpu": cpu, "build": t1 - t0, "run": t2 - t1, "trainer_init": tr.init_s,
                "train": tr.train_s, "eval": tr.eval_s, "traces": tr.traces,
                "strategy": f"{getattr(tr, 'strategy', '?')}, jit_compile="
                            f"{getattr(tr, 'jit_compile', '?')}",
                "accuracy": s.get("final_accuracy"), "sim_time_s": float(sim.env.now),
                "tasks": tr.tasks, "spec": sim.spec, "parts": sim.parts, "trainer": tr}

    # --- cold: the first call of each contender (simulation first: it pays anything shared)
    cold_sim = sim_round(TimedFleetTrainer)
    tasks, spec = cold_sim.pop("tasks"), cold_sim.pop("spec")
    shared.append(cold_sim.pop("trainer"))   # the reused-trainer variant starts from it: traced
    union = np.sort(np.concatenate(cold_sim.pop("parts")))
    x_c, y_c = ds.x_train[union], ds.y_train[union]
    out["steps_per_device"] = int(max(len(t.batches) for t in tasks))
    out["samples"] = int(len(union))
    out["gflop"] = spec.train_flops_per_sample() * len(union) / 1e9

    def fit_timed():
        c0 = time.process_time()
        wall, _ = _t(lambda: model.fit(x_c, y_c, batch_size=32, epochs=1, verbose=0))
        return wall, time.process_time() - c0

    def fit_build():
        m = build_keras_model(spec)
        m.compile(optimizer=keras.optimizers.SGD(learning_rate=args.lr),
                  loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
        return m

    fit_build_s, model = _t(fit_build)
    fit_first_s, _ = fit_timed()
    cold_fit = {"total": fit_build_s + fit_first_s, "build": fit_build_s, "fit": fit_first_s}


    # --- warm: interleaved repeats
    warm_sim, warm_shared, warm_fit, warm_fit_cpu = [], [], [], []
    for _ in range(args.repeats):
        r = sim_round(TimedFleetTrainer)
        warm_sim.append({k: v for k, v in r.items() if k not in _OBJ})
        r = sim_round(shared_factory)
        warm_shared.append({k: v for k, v in r.items() if k not in _OBJ})
        wall, cpu = fit_timed()
        warm_fit.append(wall)
        warm_fit_cpu.append(cpu)

    def med(rows, key):
        vals = [r[key] for r in rows]
        return _med(vals) if isinstance(vals[0], (int, float)) else vals[0]

    # --- (b) per-device Keras loop on the same tasks (--ref-devices 0 skips it)
    n_ref = min(args.ref_devices, n_dev)
    scale, ref_cold_s, ref_warm, max_diff = math.nan, math.nan, [], math.nan
    if n_ref > 0:
        few = tasks[:n_ref]
        ref = KerasReferenceTrainer(spec, ds.x_train, ds.y_train)
        ref_cold_s, ref_w = _t(lambda: ref.train(few))
        ref_warm = [_t(lambda: ref.train(few))[0] for _ in range(args.ref_repeats)]
        scale = n_dev / n_ref
        # sanity: the batched trainer computes the same weights as the reference
        fleet_w = shared[0].train(few)
        max_diff = max(float(np.max(np.abs(a - b))) for wa, wb in zip(fleet_w, ref_w, strict=True)
                       for a, b in zip(wa, wb, strict=True))

    out.update({
        "devices": n_dev, "per_device": per, "repeats": args.repeats,
        "cold_sim": cold_sim, "cold_fit": cold_fit,
        "warm_sim": {k: med(warm_sim, k) for k in warm_sim[0]},
        "warm_shared": {k: med(warm_shared, k) for k in warm_shared[0]},
        "warm_sim_all": [r["total"] for r in warm_sim],
        "warm_shared_all": [r["total"] for r in warm_shared],
        "warm_fit": _med(warm_fit), "warm_fit_all": warm_fit, "warm_fit_cpu": _med(warm_fit_cpu),
        "paired_ratio": _med([a["total"] / b for a, b in zip(warm_sim, warm_fit, strict=True)]),
        "ref_devices": n_ref, "ref_scale": scale, "ref_cold": ref_cold_s * scale,
        "ref_warm": _med(ref_warm) * scale, "ref_warm_all": [x * scale for x in ref_warm],
        "ref_max_abs_diff": max_diff,
        "load_end": os.getloadavg(),
    })
    out["ratio"] = out["warm_sim"]["total"] / out["warm_fit"]
    out["cold_ratio"] = cold_sim["total"] / cold_fit["total"]
    out["ratio_shared"] = out["warm_shared"]["total"] / out["warm_fit"]
    out["ratio_run_only"] = out["warm_sim"]["run"] / out["warm_fit"]
    out["cpu_ratio"] = out["warm_sim"]["cpu"] / out["warm_fit_cpu"]
    return out


def fleet_table(r: dict) -> str:
    fit_w = r["warm_fit"]
    fit_c = r["cold_fit"]["total"]
    ext = "" if r["ref_scale"] == 1 else (f" (EXTRAPOLATED: timed {r['ref_devices']} devices, "
                                          f"x{r['ref_scale']:g})")

    def row(name, cold, warm):
        return f"| {name} | {cold:.2f} | {warm:.2f} | {cold / fit_c:.2f} | {warm / fit_w:.2f} |"

    ref_row = (row(f"per-device Keras loop (`KerasReferenceTrainer`){ext}", r["ref_cold"],
                   r["ref_warm"]) if r["ref_devices"] else
               "| per-device Keras loop (`KerasReferenceTrainer`): skipped (--ref-devices 0) "
               "| - | - | - | - |")
    ws, cs = r["warm_sim"], r["cold_sim"]
    sh = r["warm_shared"]
    lines = [
        f"| contender | cold s | warm s (median of {r['repeats']}) | cold / fit cold | "
        "warm / fit warm |",
        "| --- | ---: | ---: | ---: | ---: |",
        row("**simulated FedAvg round** (fresh `Simulation` each time)", cs["total"], ws["total"]),
        row("&nbsp;&nbsp;of which `from_dict` + `Simulation()` (incl. FleetTrainer init)",
            cs["build"], ws["build"]),
        row("&nbsp;&nbsp;of which `FleetTrainer.train` (100 devices, batched)"
            .replace("100", str(r["devices"])), cs["train"], ws["train"]),
        row("&nbsp;&nbsp;of which global-model evaluation (10,000 test images)",
            cs["eval"], ws["eval"]),
        row("&nbsp;&nbsp;of which simulator (`run()` minus train and eval)",
            cs["run"] - cs["train"] - cs["eval"], ws["run"] - ws["train"] - ws["eval"]),
        f"| simulated FedAvg round, the cold round's FleetTrainer reused (no retrace) | - | "
        f"{sh['total']:.2f} | - | {sh['total'] / fit_w:.2f} |",
        ref_row,
        row("**centralized Keras `model.fit`** (baseline)", fit_c, fit_w),
        f"| &nbsp;&nbsp;of which `build_keras_model` + `compile` | {r['cold_fit']['build']:.2f} "
        "| - | - | - |",
    ]
    return "\n".join(lines)


def fleet_report(r: dict) -> str:
    ext = "" if r["ref_scale"] == 1 else " [EXTRAPOLATED]"
    lines = [
        f"Fleet round: {r['devices']} devices x {r['per_device']} Fashion-MNIST samples "
        f"({r['samples']} in all), MLP 784-128-64-10, 1 epoch, batch 32, SGD, "
        f"{r['steps_per_device']} steps/device, {r['gflop']:.1f} GFLOP of training",
        f"TF runtime init (one tiny op, before all timings): {r['tf_init_s']:.2f} s; "
        f"dataset read (once): {r['dataset_load_s']:.2f} s",
        "",
        fleet_table(r),
        "",
        f"warm repeats, simulated round (fresh):  {', '.join(f'{x:.2f}' for x in r['warm_sim_all'])}",
        f"warm repeats, simulated round (shared): "
        f"{', '.join(f'{x:.2f}' for x in r['warm_shared_all'])}",
        f"warm repeats, centralized fit:          {', '.join(f'{x:.2f}' for x in r['warm_fit_all'])}",
        (f"warm repeats, Keras per-device loop{ext}: "
         f"{', '.join(f'{x:.2f}' for x in r['ref_warm_all'])}" if r["ref_devices"] else
         "Keras per-device loop: skipped"),
        f"FleetTrainer (as Simulation builds it): strategy {r['warm_sim']['strategy']}",
        f"FleetTrainer traces per fresh Simulation: {r['warm_sim']['traces']:.0f} "
        "(tf.function is created per FleetTrainer instance: a fresh Simulation retraces); "
        f"reused trainer: still {r['warm_shared']['traces']:.0f} trace in all",
        f"global-model accuracy after the round: {r['warm_sim']['accuracy']:.4f}; "
        f"simulated round time {r['warm_sim']['sim_time_s']:.1f} s",
        (f"batched vs Keras reference weights, max |diff| over {r['ref_devices']} devices: "
         f"{r['ref_max_abs_diff']:.2e}" if r["ref_devices"] else
         "batched vs Keras reference weights: not compared (loop skipped)"),
        f"load average (1 min) at start / end: {r['load_start'][0]:.2f} / {r['load_end'][0]:.2f}",
        f"ratio_shared_trainer {r['ratio_shared']:.3f}   (warm, one FleetTrainer reused)",
        f"ratio_run_only {r['ratio_run_only']:.3f}   (warm, Simulation.run() only, no construction)",
        f"paired_ratio {r['paired_ratio']:.3f}   (median of the per-repeat ratios of the interleaved "
        "warm pairs: less sensitive to load drifting between repeats)",
        f"cpu_ratio {r['cpu_ratio']:.3f}   (process CPU time, all threads: sim "
        f"{r['warm_sim']['cpu']:.2f} s / fit {r['warm_fit_cpu']:.2f} s, warm medians: work, not "
        "latency; it ignores time spent descheduled by other load)",
    ]
    return "\n".join(lines)


# -------------------------------------------------------------------- part 2: simulator alone
def sim_raw(devices: int, per_round: int, rounds: int, availability: str, seed: int,
            dataset: str = "digits") -> dict:
    return {
        "name": "bench-sim-alone",
        "seed": seed,
        "rounds": rounds,
        "data": {"dataset": dataset},
        "model": {"arch": "mlp", "hidden": [32]},
        "training": {"backend": "none"},
        "fleet": {"devices": devices},
        "availability": {"model": availability},
        "fedavg": {"clients_per_round": per_round},
    }


def bare_simpy_rate(n: int = 200_000) -> float:
    """Events/s of a bare SimPy loop: n timeouts at distinct times, one no-op callback each."""
    import simpy

    env = simpy.Environment()
    rng = np.random.default_rng(0)
    cb = lambda _ev: None  # noqa: E731
    for d in rng.random(n):
        env.timeout(float(d)).callbacks.append(cb)
    t, _ = _t(env.run)
    return n / t


def sim_alone_child(opts: dict) -> dict:
    """Runs in a fresh interpreter (see ``--_child``): no TensorFlow, clean peak RSS."""
    import gc
    import tracemalloc

    from crowdlearn.config import from_dict
    from crowdlearn.data import load_dataset
    from crowdlearn.experiment import Simulation

    out: dict = {"opts": opts, "load_start": os.getloadavg()}
    out["tf_imported"] = "tensorflow" in sys.modules
    ds = load_dataset(opts["dataset"], seed=opts["seed"])
    n, k = opts["devices"], opts["samples_per_device"]
    rng = np.random.default_rng(opts["seed"])
    idx = rng.integers(0, len(ds.x_train), size=(n, k))
    parts = list(idx)
    gc.collect()
    gc_pause = {"t": 0.0, "t0": 0.0, "n": [0, 0, 0]}

    def _gc_cb(phase, info):
        if phase == "start":
            gc_pause["t0"] = time.perf_counter()
        else:
            gc_pause["t"] += time.perf_counter() - gc_pause["t0"]
            gc_pause["n"][info["generation"]] += 1

    gc.callbacks.append(_gc_cb)
    out["rss_baseline_mib"] = _rss_mib()
    out["maxrss_baseline_mib"] = _maxrss_mib()
    out["hwm_baseline_mib"] = _hwm_mib()
    if opts["tracemalloc"]:
        tracemalloc.start()
    prof = cProfile.Profile() if opts["profile"] else None
    raw = sim_raw(n, opts["per_round"], opts["rounds"], opts["availability"], opts["seed"],
                  opts["dataset"])

    marks: list = []
    if prof:
        prof.enable()
    t0 = time.perf_counter()
    sim = Simulation(from_dict(raw), parts=parts,
                     on_row=lambda row: marks.append((time.perf_counter(),
                                                      sim.driver.events_handled,
                                                      _simpy_processed(sim.env), _rss_mib(),
                                                      time.process_time())))
    t1 = time.perf_counter()
    out["rss_after_build_mib"] = _rss_mib()
    res = sim.run()
    t2 = time.perf_counter()
    if prof:
        prof.disable()
    gc.callbacks.remove(_gc_cb)
    out["gc_s"], out["gc_collections"] = gc_pause["t"], gc_pause["n"]
    out.update({
        "build_s": t1 - t0, "run_s": t2 - t1, "total_s": t2 - t0,
        "rounds_completed": len(res.metrics), "sim_time_s": float(sim.env.now),
        "events_handled": sim.driver.events_handled,
        "simpy_processed": _simpy_processed(sim.env),
        "simpy_scheduled": _simpy_scheduled(sim.env),
        "recomputations": sim.network.recomputations,
        "messages": sim.monitor.messages,
        "maxrss_mib": _maxrss_mib(), "hwm_mib": _hwm_mib(), "rss_end_mib": _rss_mib(), "load_end": os.getloadavg(),
    })
    if opts["tracemalloc"]:
        out["tracemalloc_peak_mib"] = tracemalloc.get_traced_memory()[1] / 2**20
        tracemalloc.stop()
    # the baseline runs after every memory figure has been taken
    out["bare_simpy_events_per_s"] = (bare_simpy_rate(opts["bare_events"])
                                      if not opts["profile"] else math.nan)
    # steady state: from the end of the first round to the end of the last
    if len(marks) >= 2:
        (ta, ea, sa, _, ca), (tb, eb, sb, _, cb) = marks[0], marks[-1]
        rounds = len(marks) - 1
        out["steady"] = {"rounds": rounds, "wall_per_round_s": (tb - ta) / rounds,
                         "cpu_per_round_s": (cb - ca) / rounds,
                         "driver_events_per_round": (eb - ea) / rounds,
                         "simpy_events_per_round": (sb - sa) / rounds,
                         "driver_events_per_s": (eb - ea) / (tb - ta),
                         "simpy_events_per_s": (sb - sa) / (tb - ta)}
        out["first_round_s"] = marks[0][0] - t1
    out["rss_by_round"] = {i + 1: m[3] for i, m in enumerate(marks)
                           if i + 1 in (1, 2, 5, 10, 20, 50, 100, len(marks))}
    if prof:
        buf = io.StringIO()
        st = pstats.Stats(prof, stream=buf)
        st.sort_stats("tottime").print_stats(opts["top"])
        st.sort_stats("cumulative").print_stats(opts["top"])
        out["profile"] = _trim_profile(buf.getvalue())
    return out


def _trim_profile(text: str) -> str:
    text = re.sub(r"/\S*/site-packages/", "", text)
    text = re.sub(r"/\S*/lib/python3\.\d+/", "", text)
    text = text.replace(str(ROOT) + "/", "")
    return "\n".join(line.rstrip() for line in text.splitlines() if line.strip())


def run_child(opts: dict) -> dict:
    cmd = [sys.executable, str(Path(__file__).resolve()), "--_child", json.dumps(opts)]
    env = dict(os.environ, PYTHONHASHSEED="0")
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=ROOT)
    if proc.returncode != 0:
        sys.stderr.write(proc.stderr)
        raise SystemExit(f"simulator-alone child failed ({proc.returncode})")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def sim_report(r: dict, p: dict | None) -> str:
    o = r["opts"]
    evh, evs = r["events_handled"], r["simpy_processed"]
    lines = [
        f"Simulator alone: training.backend = none, {o['devices']:,} devices, "
        f"{o['per_round']:,} per round, {r['rounds_completed']} rounds, "
        + ("digits MLP 64-32-10, " if o["dataset"] == "digits" else
           f"{o['dataset']} MLP (hidden 32), ")
        + f"availability '{o['availability']}', {o['samples_per_device']} random samples/device",
        "",
        "| measure | value |",
        "| --- | ---: |",
        f"| wall time, `Simulation()` build | {r['build_s']:.2f} s |",
        f"| wall time, `run()` | {r['run_s']:.2f} s |",
        f"| wall time, total | {r['total_s']:.2f} s |",
        f"| simulated time | {r['sim_time_s']:.1f} s |",
        f"| driver events (`driver.events_handled`: inputs delivered to machines) | {evh:,} |",
        f"| SimPy events processed (scheduled `env._eid` minus still queued) | {evs:,} |",
        f"| driver events / s of `run()` | {evh / r['run_s']:,.0f} |",
        f"| SimPy events / s of `run()` | {evs / r['run_s']:,.0f} |",
    ]
    st = r.get("steady")
    if st:
        lines += [
            f"| first round (incl. start-up presence of {o['devices']:,} devices + `Start`) | "
            f"{r['first_round_s']:.2f} s |",
            f"| steady state, wall per round (rounds 2..{st['rounds'] + 1}) | "
            f"{st['wall_per_round_s']:.3f} s |",
            f"| steady state, process CPU per round (time not lost to other load) | "
            f"{st['cpu_per_round_s']:.3f} s |",
            f"| steady state, driver events per round / per s | "
            f"{st['driver_events_per_round']:,.0f} / {st['driver_events_per_s']:,.0f} |",
            f"| steady state, SimPy events per round / per s | "
            f"{st['simpy_events_per_round']:,.0f} / {st['simpy_events_per_s']:,.0f} |",
        ]
    bare = r["bare_simpy_events_per_s"]
    lines += [
        f"| max-min recomputations (network) | {r['recomputations']:,} |",
        f"| garbage-collector pauses during build + run (`gc.callbacks`) | {r['gc_s']:.2f} s in "
        f"{sum(r['gc_collections']):,} collections (gen 0/1/2: "
        f"{'/'.join(str(c) for c in r['gc_collections'])}) |",
        f"| bare SimPy loop, same process (baseline: {o['bare_events']:,} timeouts, no-op "
        f"callbacks) | {bare:,.0f} events/s |",
        f"| SimPy events/s of `run()` ÷ bare SimPy | {evs / r['run_s'] / bare:.4f} |",
        f"| peak RSS (`VmHWM` of the process) | {r['hwm_mib']:.0f} MiB |",
        f"| peak RSS (`ru_maxrss`) | {r['maxrss_mib']:.0f} MiB |",
        f"| RSS before building (imports + digits loaded; peak so far) | "
        f"{r['rss_baseline_mib']:.0f} MiB ({r['hwm_baseline_mib']:.0f} MiB) |",
        f"| RSS after `Simulation()` | {r['rss_after_build_mib']:.0f} MiB |",
        f"| peak RSS − RSS before building ≈ simulator | "
        f"{r['hwm_mib'] - r['rss_baseline_mib']:.0f} MiB |",
        "| RSS after round " + ", ".join(str(k) for k in r.get("rss_by_round", {})) + " | "
        + ", ".join(f"{v:.0f}" for v in r.get("rss_by_round", {}).values()) + " MiB |",
    ]
    if "tracemalloc_peak_mib" in r:
        lines.append(f"| tracemalloc peak (Python allocations, separate pass) | "
                     f"{r['tracemalloc_peak_mib']:.0f} MiB |")
    lines.append(f"| TensorFlow imported in this process | {r['tf_imported']} |")
    lines.append(f"| load average (1 min) at start / end | {r['load_start'][0]:.2f} / "
                 f"{r['load_end'][0]:.2f} |")
    if p is not None:
        lines += ["", f"cProfile of a separate run ({p['opts']['rounds']} rounds, same fleet; "
                      f"profiled wall {p['total_s']:.1f} s):", "", "```", p["profile"], "```"]
    return "\n".join(lines)


# ------------------------------------------------------------------------------ docs writing
def write_docs(docs: Path, command: str, mach: dict, fleet: dict | None, simr: dict | None,
               prof: dict | None) -> None:
    when = time.strftime("%Y-%m-%d %H:%M %Z")
    desc = (f"Machine: {mach['nproc']} CPU cores (`nproc`), {mach['cpu']} "
            f"(`/proc/cpuinfo` model name), {mach['mem']} RAM, no GPU; Python {mach['python']}, "
            f"NumPy {mach['numpy']}, SimPy {mach['simpy']}"
            + (f", TensorFlow {fleet['tf']} (CPU), Keras {fleet['keras']}" if fleet else "")
            + f". Code: commit `{mach['commit']}`"
            + (f" with uncommitted changes in {', '.join(f'`{d}`' for d in mach['dirty'])}"
               if mach["dirty"] else "")
            + f". Run finished {when}. The machine is shared: figures are ratios against a "
            "baseline measured in the same run, and the load average is recorded.")
    sections: dict[str, str] = {}
    if fleet is not None:
        sections["Fleet throughput"] = "\n".join([
            "## Fleet throughput",
            "",
            "What is measured: one FedAvg round of "
            f"{fleet['devices']} devices × {fleet['per_device']} Fashion-MNIST samples ("
            + ("iid split of the" if fleet["samples"] == 60_000 else "a random subset of")
            + f" {fleet['samples']:,}), MLP 784-128-64-10, 1 local epoch, batch 32, plain SGD, every "
            "device selected, as `Simulation(from_dict(cfg)).run()` — *everything, simulator "
            "included*: config validation, building the fleet, network and driver, the batched "
            "TensorFlow training, simulated transfers and CPU time, aggregation and the evaluation "
            "of the global model on the 10,000 test images. Baseline, in the same process: a "
            "centralized Keras `model.fit(x_train, y_train, batch_size=32, epochs=1, verbose=0)` "
            "of the same MLP (SGD, `SparseCategoricalCrossentropy(from_logits=True)`) on the same "
            f"{fleet['samples']:,} samples — the same training FLOPs "
            f"({fleet['gflop']:.1f} GFLOP).",
            "",
            "*Cold* is each contender's first call in the process (tracing included; the "
            "simulation runs first, so it pays any one-off cost the two share; the TF runtime is "
            "initialised by one tiny op and the dataset read once, before any timing). Cold fit "
            "includes `build_keras_model` + `compile`. *Warm* is the median of "
            f"{fleet['repeats']} further calls, interleaved with the baseline's. A warm simulated "
            "round builds a **fresh** `Simulation`; `FleetTrainer` creates its `tf.function` per "
            "instance, so each fresh Simulation **retraces** the training loop — the row "
            "\"FleetTrainer reused\" hands the cold round's (traced) trainer to fresh Simulations "
            "through `trainer_factory`, to show the round without that retrace.",
            "",
            desc,
            f"Load average (1 min) at start / end of the fleet part: {fleet['load_start'][0]:.2f} / "
            f"{fleet['load_end'][0]:.2f}."
            + (f" **Noisy run:** the load exceeded the {mach['nproc']} cores, so the warm repeats "
               f"spread widely (centralized fit {min(fleet['warm_fit_all']):.1f}–"
               f"{max(fleet['warm_fit_all']):.1f} s); the paired and CPU-time ratios below are "
               "given as cross-checks." if max(fleet["load_start"][0], fleet["load_end"][0])
               > float(mach["nproc"] or 0) else ""),
            "",
            fleet_table(fleet),
            "",
            f"- **ratio** (warm simulated round ÷ warm centralized fit): **{fleet['ratio']:.2f}** "
            "(target ≤ 0.6)",
            f"- cold ratio: {fleet['cold_ratio']:.2f}",
            f"- warm ratio with one FleetTrainer reused: {fleet['ratio_shared']:.2f}; "
            f"`Simulation.run()` only (no construction): {fleet['ratio_run_only']:.2f}",
            f"- load-robustness checks: median of the {fleet['repeats']} interleaved per-pair "
            f"ratios {fleet['paired_ratio']:.2f}; process-CPU-time ratio (all threads; work "
            f"rather than latency) {fleet['cpu_ratio']:.2f}",
            "- warm repeats (s): simulated round "
            + ", ".join(f"{x:.2f}" for x in fleet["warm_sim_all"]) + "; centralized fit "
            + ", ".join(f"{x:.2f}" for x in fleet["warm_fit_all"]),
            (f"- per-device Keras loop ÷ simulated round (warm): "
             f"{fleet['ref_warm'] / fleet['warm_sim']['total']:.1f}×"
             + ("" if fleet["ref_scale"] == 1 else
                f" (Keras loop EXTRAPOLATED from {fleet['ref_devices']} devices)")
             + f"; batched and Keras-reference weights agree to "
             f"{fleet['ref_max_abs_diff']:.1e} (max abs difference over "
             f"{fleet['ref_devices']} devices)" if fleet["ref_devices"] else
             "- per-device Keras loop: skipped"),
            f"- global-model accuracy after the round {fleet['warm_sim']['accuracy']:.3f}; "
            f"FleetTrainer as `Simulation` builds it: strategy {fleet['warm_sim']['strategy']}.",
            "",
            "Reproduce:",
            "",
            "```sh",
            command,
            "```",
            "",
        ])
    if simr is not None:
        o = simr["opts"]
        sections["Simulator alone"] = "\n".join([
            "## Simulator alone",
            "",
            f"What is measured: `training.backend = \"none\"` (NullTrainer: weights pass through "
            f"unchanged, jobs are still priced and charged in simulated time), {o['devices']:,} "
            f"devices, {o['per_round']:,} ({100 * o['per_round'] / o['devices']:g} %) sampled per "
            f"round, {o['rounds']} rounds, {o['dataset']} MLP (hidden 32"
            + ("; 64-32-10" if o["dataset"] == "digits" else "") + "), every device holding "
            f"{o['samples_per_device']} random sample indices (`parts=`), availability "
            f"`{o['availability']}` (no churn, no battery). "
            + ("It ran in the benchmark process after TensorFlow (`--quick`), so the RSS figures "
               "include TensorFlow. " if simr["tf_imported"] else
               "It runs in a child process without TensorFlow, started before the benchmark "
               "loads TensorFlow (Linux carries a parent's RSS into a forked child's `ru_maxrss`; "
               "`VmHWM` from `/proc/self/status` is the child's own peak). ")
            + "*Driver events* are the inputs the driver delivers to machines "
            "(`driver.events_handled`, including the start-up presence: one bulk "
            "`peers_joined` input when the server takes it, as FedAvg's does, else one "
            "`PeerJoined` per device); *SimPy events* are events popped by `env.step()` (SimPy's event-id counter "
            "`env._eid`, read without advancing it, minus the events still queued). Baseline, "
            "same process: a bare SimPy loop (timeouts at random times, one no-op callback each).",
            "",
            desc,
            "",
            sim_report(simr, prof).split("\n", 2)[2],
            "",
            "Reproduce:",
            "",
            "```sh",
            command,
            "```",
            "",
        ])
    _replace_sections(docs, sections)


def _replace_sections(docs: Path, sections: dict[str, str]) -> None:
    """Replace (or append) each ``## <title>`` section of ``docs``, keeping everything else."""
    text = docs.read_text() if docs.exists() else (
        "# Benchmarks\n\nFigures measured by the scripts in `benchmarks/`; each section says what "
        "it measures and how to reproduce it.\n\n")
    for title, body in sections.items():
        pat = re.compile(rf"^## {re.escape(title)}\n.*?(?=^## |\Z)", re.S | re.M)
        if pat.search(text):
            text = pat.sub(lambda _m, body=body: body + "\n", text, count=1)
        else:
            text = text.rstrip("\n") + "\n\n" + body + "\n"
    docs.parent.mkdir(parents=True, exist_ok=True)
    docs.write_text(text.rstrip("\n") + "\n")


# -------------------------------------------------------------------------------------- main
def main(argv=None) -> None:
    t_start = time.perf_counter()
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true",
                    help="small smoke version (< 30 s): 4 devices x 320 samples, 1 warm "
                         "repeat, no per-device Keras loop, simulator alone 1,000 devices x 3 "
                         "rounds in-process; prints the same final lines")
    ap.add_argument("--write-docs", action="store_true",
                    help=f"rewrite the sections {SECTIONS} of docs/benchmarks.md")
    ap.add_argument("--docs", type=Path, default=DOCS, help="file --write-docs updates")
    ap.add_argument("--devices", type=int, default=100)
    ap.add_argument("--samples", type=int, default=600, help="samples per device")
    ap.add_argument("--lr", type=float, default=0.05)
    ap.add_argument("--repeats", type=int, default=5, help="warm repeats (median; >= 3)")
    ap.add_argument("--ref-devices", type=int, default=100,
                    help="devices the per-device Keras loop really runs (scaled to --devices; "
                         "0 skips it)")
    ap.add_argument("--ref-repeats", type=int, default=3)
    ap.add_argument("--sim-devices", type=int, default=100_000)
    ap.add_argument("--sim-fraction", type=float, default=0.01)
    ap.add_argument("--sim-rounds", type=int, default=100)
    ap.add_argument("--sim-samples", type=int, default=8, help="digits samples per device")
    ap.add_argument("--availability", choices=("always", "sessions"), default="always")
    ap.add_argument("--profile", action="store_true",
                    help="also cProfile the simulator alone (separate child run)")
    ap.add_argument("--profile-rounds", type=int, default=10)
    ap.add_argument("--top", type=int, default=25, help="profile rows shown")
    ap.add_argument("--tracemalloc", action="store_true",
                    help="also measure the tracemalloc peak (separate, slower child run)")
    ap.add_argument("--skip-fleet", action="store_true")
    ap.add_argument("--skip-sim", action="store_true")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--_child", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)

    if args._child:
        print(json.dumps(sim_alone_child(json.loads(args._child)), default=float))
        return
    if args.quick:
        if args.write_docs and args.docs == DOCS:
            ap.error("--write-docs records the full benchmark in docs/benchmarks.md; drop --quick "
                     "(or give another --docs file)")
        args.devices, args.samples, args.repeats = 4, 320, 1
        args.ref_devices, args.ref_repeats = 0, 1
        args.sim_devices, args.sim_rounds = 1_000, 3
    command = ".venv/bin/python benchmarks/fleet_throughput.py " + " ".join(
        a for a in (argv if argv is not None else sys.argv[1:]))
    mach = machine()
    print(f"{mach['nproc']} cores, {mach['cpu']}, {mach['mem']}; Python {mach['python']}, "
          f"load {os.getloadavg()[0]:.2f}; commit {mach['commit']}"
          + (f" + uncommitted {', '.join(mach['dirty'])}" if mach["dirty"] else ""), flush=True)

    fleet = None
    if not args.skip_fleet and args.quick:   # quick: in-process order does not matter
        fleet = fleet_round(args)
        print(f"TensorFlow {fleet['tf']}, Keras {fleet['keras']}, GPUs {fleet['gpus']}")
        print(fleet_report(fleet), flush=True)

    # The simulator-alone children run before TensorFlow is loaded here: Linux carries a
    # parent's RSS into a forked child's ru_maxrss, so a small parent keeps it meaningful.
    simr = prof = None
    if not args.skip_sim:
        opts = {"devices": args.sim_devices, "rounds": args.sim_rounds,
                "per_round": max(1, round(args.sim_fraction * args.sim_devices)),
                "samples_per_device": args.sim_samples, "availability": args.availability,
                "seed": args.seed, "profile": False, "tracemalloc": False, "top": args.top,
                "bare_events": 20_000 if args.quick else 200_000,
                # quick: Fashion-MNIST is already loaded in-process (no scikit-learn import)
                "dataset": "fashion_mnist" if args.quick and not args.skip_fleet else "digits"}
        simr = sim_alone_child(opts) if args.quick else run_child(opts)
        if args.tracemalloc:
            tm = run_child(dict(opts, tracemalloc=True, rounds=args.profile_rounds))
            simr["tracemalloc_peak_mib"] = tm["tracemalloc_peak_mib"]
        if args.profile:
            prof = run_child(dict(opts, profile=True, rounds=args.profile_rounds))
        print()
        print(sim_report(simr, prof), flush=True)
        if args.quick:
            print("(--quick: simulator alone ran in the benchmark process, after TensorFlow; its "
                  "RSS figures include TensorFlow)")

    if not args.skip_fleet and not args.quick:
        fleet = fleet_round(args)
        print()
        print(f"TensorFlow {fleet['tf']}, Keras {fleet['keras']}, GPUs {fleet['gpus']}")
        print(fleet_report(fleet), flush=True)

    if args.write_docs:
        write_docs(args.docs, command.strip(), mach, fleet, simr, prof)
        print(f"\nwrote {args.docs}")
    print(f"benchmark wall time {time.perf_counter() - t_start:.1f} s (after interpreter start)")
    if fleet is not None:
        print(f"cold_ratio {fleet['cold_ratio']:.3f}")
        print(f"ratio {fleet['ratio']:.3f}")


if __name__ == "__main__":
    main()
