"""Secure aggregation throughput: one FedAvg round of 100 clients with SecAgg and SecAgg+
against a plain FedAvg round, measured in the same run.

The round: 100 devices × 600 Fashion-MNIST samples (iid), MLP 784-128-64-10 (109,386
parameters), 2 local epochs, batch 32, every device selected (``clients_per_round = 100``), the
settings of ``examples/secagg_fashion.toml`` otherwise.  Each contender is a fresh
``Simulation(...).run()``: config, fleet, the batched TensorFlow training of the 100 devices,
the four SecAgg stages with the real cryptography (X25519, HKDF, AES-GCM shares, AES-128-CTR
mask keystreams computed through AES-GCM, Shamir over GF(2^256+297)), unmasking, evaluation.  As in every simulation, each pair's
X25519 key and mask keystream are derived once for both ends (``secagg.SharedCrypto``); the
compute charged to each simulated device is its own operations' calibrated cost.

Where the wall time goes and what runs in parallel (``docs/benchmarks.md``): TensorFlow's
training uses every core; X25519 holds the GIL (one core); the mask keystreams (AES-CTR, made
by GCM) and their in-place adds release it and run on the mask batch's worker threads, the
seeds shared out among them (``masking.MaskBatch``), and the round's training batch starts on a worker thread as soon
as the key-sharing stage begins, so the clients' key-sharing cryptography runs while TensorFlow
trains (``jobs.Executor`` early batches); each client registers its masks with the batch when it
shares its keys (its input is added at the masked-input stage), so the keystreams run in that
window too (a tile of four registrations' pairs at a time, ordered so that each vector takes
its adds in a row while in cache, the vectors in huge-page slabs: "Fifth session").  None of
this changes a message or a result (tested).
The round's X25519 + HKDF agreements run in a worker process (``fedavg_family.agreement_process``:
one per simulation, started with it, ended with its run), queued by each client when its key
list arrives; its CPU is counted in the round's (an ended child's, ``os.times``).
``--inproc-too`` adds "secagg-inproc": the same code with the agreements in this process.
``--sequential-too`` adds a fourth contender, SecAgg with both switched off (mask threads 0, no
early training): this change's effect, measured in the same process.

One plain round first warms TensorFlow up (not timed); then the contenders run interleaved
``--repeats`` times and the medians are compared; before each timed run ``gc.collect()``, so
that no contender's window pays a collection its predecessors' allocations brought due.  It
matters: without it (this script before the sixth session, run on the same code, quiet
machine) the plain rounds that follow a SecAgg contender took 0.59–0.60 s instead of
0.44–0.46 s (median of 5), most likely a full collection of the process's large heap inside
their window (not profiled), which made the ratio look better than it is (1.48–1.61 instead of
1.99; ``docs/benchmarks.md``, "Quiet-machine figures …, sixth session").  Prints ``ratio X`` (SecAgg round wall ÷
plain round wall; target <= 2) last.  Also printed: the process CPU time of each contender and
``ratio_cpu`` (SecAgg CPU ÷ plain CPU: the work done, less sensitive to other processes on a
shared machine, though TensorFlow's threads count in it), and the load average (1 min) before
and after: on a loaded machine the wall ratio stretches, since the plain round's TensorFlow is
the part that uses several cores.  Each run's run-queue wait (seconds its threads were runnable
but had no core, ``/proc/self/task/*/schedstat``) shows how much of its wall other processes
took: the plain round's wall moves with it ("Sixth session" in ``docs/benchmarks.md``).

``--phases`` prints instead where one sequential SecAgg round's CPU goes, primitive by
primitive (thread CPU time); ``--mask-threads N`` and ``--switch-interval S`` set the mask
batch's worker threads and Python's GIL switch interval for an A/B.

Run::

    .venv/bin/python benchmarks/secagg_throughput.py --repeats 7          # ~3-6 min
    .venv/bin/python benchmarks/secagg_throughput.py --phases
    .venv/bin/python benchmarks/secagg_throughput.py --repeats 5 --sequential-too
    .venv/bin/python benchmarks/secagg_throughput.py --repeats 5 --inproc-too
    .venv/bin/python benchmarks/secagg_throughput.py --repeats 1 --clients 20   # smoke
"""

from __future__ import annotations

import argparse
import gc
import os
import statistics
import time
from pathlib import Path

from crowdlearn.config import apply_overrides, from_dict

try:
    import tomllib
except ModuleNotFoundError:  # pragma: no cover
    import tomli as tomllib

ROOT = Path(__file__).resolve().parents[1]

#: contender -> (fedavg.secure_aggregation, sequential, agreements in this process)
CONTENDERS = {"plain": ("none", False, None), "secagg": ("secagg", False, None),
              "secagg+": ("secagg+", False, None), "secagg-seq": ("secagg", True, True),
              "secagg-inproc": ("secagg", False, True)}


def config(mode: str, clients: int):
    raw = tomllib.loads((ROOT / "examples" / "secagg_fashion.toml").read_text())
    raw = apply_overrides(raw, ["rounds=1", f"fleet.devices={clients}",
                                f"fedavg.clients_per_round={clients}",
                                f'fedavg.secure_aggregation="{mode}"'])
    return from_dict(raw, base_dir=ROOT / "examples")


def _cpu() -> float:
    """This process's CPU time plus its ended children's (the X25519 worker process, waited
    for when its simulation ends)."""
    t = os.times()
    return time.process_time() + t.children_user + t.children_system


def _runq_wait() -> float | None:
    """Seconds this process's live threads have spent runnable but waiting for a core
    (``/proc/self/task/*/schedstat``, second field; Linux with schedstats), or None.  Over a
    timed run, the part of its wall time that other processes (or its own surplus threads)
    took: what moves the plain round's wall on a shared machine ("Sixth session").  Threads
    that start and end inside the run (the mask workers) are not in the difference."""
    total = 0
    try:
        for tid in os.listdir("/proc/self/task"):
            try:
                with open(f"/proc/self/task/{tid}/schedstat") as f:
                    total += int(f.read().split()[1])
            except (OSError, IndexError, ValueError):
                continue
    except OSError:
        return None
    return total / 1e9


def one(name: str, clients: int, threads: int | None = None) -> dict:
    from crowdlearn.crypto import masking
    from crowdlearn.experiment import Simulation
    from crowdlearn.protocols import fedavg_family
    mode, sequential, inproc = CONTENDERS[name]
    default_threads = masking.default_threads
    agreement_process = fedavg_family.agreement_process
    gc.collect()       # hygiene: no garbage of an earlier contender collected in this window
    q0 = _runq_wait()
    t0, c0 = time.perf_counter(), _cpu()
    try:
        if sequential:                   # no mask worker threads, no early training batch
            masking.default_threads = lambda: 0
        elif threads is not None:
            masking.default_threads = lambda: threads
        if sequential or inproc:         # the agreements in this process, as before
            fedavg_family.agreement_process = lambda cfg, sa: None
        sim = Simulation(config(mode, clients))
        if sequential:
            sim.executor.background_kinds = frozenset()
        res = sim.run()
    finally:
        masking.default_threads = default_threads
        fedavg_family.agreement_process = agreement_process
    wall, cpu = time.perf_counter() - t0, _cpu() - c0
    q1 = _runq_wait()
    return {"wall": wall, "cpu": cpu, "runq": None if q0 is None or q1 is None else q1 - q0,
            "acc": res.summary["final_accuracy"],
            "expansion": res.summary.get("secagg_expansion"),
            "client_bytes": res.summary.get("secagg_client_bytes_per_round"),
            "ok": res.summary.get("secagg_rounds_ok"),
            "early": dict(sim.executor.early_batches),
            "threads": 0 if sequential else threads if threads is not None
            else masking.default_threads()}


def phases(clients: int) -> None:
    """Print where one sequential SecAgg round's CPU goes: the thread CPU time of each
    primitive (wrapped for this run only; a wrapper's time excludes the wrapped calls inside
    it), with no mask threads and no early training batch so that nothing hides in a thread."""
    import collections
    import threading

    from crowdlearn.crypto import keyagreement as ka
    from crowdlearn.crypto import masking, shamir
    from crowdlearn.protocols import secagg
    from crowdlearn.training import fleet_trainer
    from sim import wire

    spent: collections.Counter = collections.Counter()
    calls: collections.Counter = collections.Counter()
    local = threading.local()
    undo = []

    def wrap(owner, name, what):
        f = getattr(owner, name)

        def timed(*a, **k):
            stack = local.__dict__.setdefault("stack", [0.0])
            stack.append(0.0)
            t0 = time.thread_time()
            try:
                return f(*a, **k)
            finally:
                dt = time.thread_time() - t0
                inner = stack.pop()
                stack[-1] += dt
                spent[what] += dt - inner
                calls[what] += 1
        undo.append((owner, name, f))
        setattr(owner, name, timed)

    wrap(ka, "keypair", "key generation")
    wrap(ka, "public_bytes", "key generation")
    wrap(ka.AgreementMemo, "agree", "agreement memo (bookkeeping)")
    wrap(ka.AgreementMemo, "agree_many", "agreement memo (bookkeeping)")
    wrap(ka, "agree", "X25519 (exchange, key parse)")
    hkdf = ka.HKDF

    class TimedHKDF:                     # HKDF's construction and derivation, timed apart
        def __init__(self, **kw):
            self.kw = kw

        def derive(self, secret):
            return hkdf(**self.kw).derive(secret)
    wrap(TimedHKDF, "derive", "HKDF")
    undo.append((ka, "HKDF", hkdf))
    ka.HKDF = TimedHKDF
    wrap(ka, "seal", "AES-GCM (seal, open)")
    wrap(ka, "open_sealed", "AES-GCM (seal, open)")
    wrap(shamir, "split_many", "Shamir sharing")
    wrap(shamir, "lagrange_at_zero", "Shamir reconstruction")
    wrap(masking._Keystream, "expand", "AES keystreams (GCM)")
    wrap(masking.MaskBatch, "_add", "mask adds")
    wrap(masking.MaskBatch, "register", "mask registration")
    wrap(masking.PendingMask, "plus", "input + corrections")
    wrap(masking, "quantise", "quantisation")
    wrap(secagg.SecAggClient, "_update_vector", "update vector")
    wrap(wire, "size", "message sizes")
    wrap(fleet_trainer.FleetTrainer, "_train_group", "training (calling thread)")
    for name in ("_advertise", "_share", "_masked_input", "_unmask"):
        wrap(secagg.SecAggClient, name, "client stages (rest)")
    for name in ("_send_keylists", "_send_relays", "_send_unmask_requests", "_unmask",
                 "_close_secure"):
        wrap(secagg.SecAggServer, name, "server stages (rest)")
    try:
        r = one("secagg-seq", clients)
    finally:
        for owner, name, f in reversed(undo):
            setattr(owner, name, f)
    print(f"one sequential SecAgg round, {clients} clients: wall {r['wall']:.2f} s, process "
          f"CPU {r['cpu']:.2f} s; thread CPU of each part:")
    for what, t in spent.most_common():
        print(f"  {what:32s} {t:6.3f} s  ({calls[what]:,} calls)")
    print(f"  {'the rest (TensorFlow, simulator)':32s} {r['cpu'] - sum(spent.values()):6.3f} s")


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--clients", type=int, default=100)
    ap.add_argument("--sequential-too", action="store_true",
                    help="also run SecAgg without mask threads and early training")
    ap.add_argument("--inproc-too", action="store_true",
                    help="also run SecAgg with the X25519 agreements in this process (no "
                         "agreement worker process)")
    ap.add_argument("--mask-threads", type=int, default=None,
                    help="mask batch worker threads (default: masking.default_threads())")
    ap.add_argument("--switch-interval", type=float, default=None,
                    help="sys.setswitchinterval for the whole run (Python's default 0.005 s): "
                         "how long a mask thread may wait for the GIL that X25519 holds")
    ap.add_argument("--phases", action="store_true",
                    help="only print where one sequential SecAgg round's CPU goes")
    a = ap.parse_args(argv)
    if a.switch_interval is not None:
        import sys
        sys.setswitchinterval(a.switch_interval)
    load0 = os.getloadavg()[0]
    one("plain", a.clients)                                  # warm-up: TF, dataset, calibration
    from crowdlearn.crypto.costs import calibrate
    calibrate()
    if a.phases:
        print(f"load average (1 min) {load0:.2f}")
        phases(a.clients)
        return
    names = ["plain", "secagg", "secagg+"] + (["secagg-seq"] if a.sequential_too else []) \
        + (["secagg-inproc"] if a.inproc_too else [])
    runs: dict[str, list] = {m: [] for m in names}
    for _ in range(a.repeats):
        for m in names:
            runs[m].append(one(m, a.clients, a.mask_threads))
    load1 = os.getloadavg()[0]
    med = {m: statistics.median(r["wall"] for r in rs) for m, rs in runs.items()}
    cpu = {m: statistics.median(r["cpu"] for r in rs) for m, rs in runs.items()}
    print(f"one FedAvg round, {a.clients} clients x 109,386-parameter MLP, median of "
          f"{a.repeats} interleaved runs each")
    import sys
    print(f"machine: {os.cpu_count()} cores; load average (1 min) {load0:.2f} before, "
          f"{load1:.2f} after; switch interval {sys.getswitchinterval():g} s")
    for m, rs in runs.items():
        r = rs[-1]
        extra = ""
        if m != "plain":
            extra = (f"  expansion {r['expansion']:.3f}  client bytes {r['client_bytes']:,.0f}"
                     f"  rounds ok {r['ok']}  mask threads {r['threads']}  early training "
                     f"batches used {r['early']['used']}")
            if r["early"]["discarded"]:
                extra += f" (discarded {r['early']['discarded']})"
        walls = ", ".join(f"{x['wall']:.2f}" for x in rs)
        waits = ", ".join("?" if x["runq"] is None else f"{x['runq']:.2f}" for x in rs)
        print(f"{m:13s} wall {med[m]:6.2f} s (runs: {walls})  cpu {cpu[m]:6.2f} s  "
              f"run-queue wait (runs: {waits}) s  accuracy {r['acc']:.4f}{extra}")
    if "secagg-seq" in runs:
        print(f"ratio_sequential {med['secagg-seq'] / med['plain']:.2f}  ratio_cpu_sequential "
              f"{cpu['secagg-seq'] / cpu['plain']:.2f}   (SecAgg with no mask threads and no "
              f"early training)")
    if "secagg-inproc" in runs:
        print(f"ratio_inproc {med['secagg-inproc'] / med['plain']:.2f}  ratio_cpu_inproc "
              f"{cpu['secagg-inproc'] / cpu['plain']:.2f}   (SecAgg with the agreements in this "
              f"process)")
    print(f"ratio_cpu {cpu['secagg'] / cpu['plain']:.2f}  ratio_cpu_secagg_plus "
          f"{cpu['secagg+'] / cpu['plain']:.2f}   (process CPU, SecAgg / plain)")
    print(f"ratio_secagg_plus {med['secagg+'] / med['plain']:.2f}")
    print(f"ratio {med['secagg'] / med['plain']:.2f}   (SecAgg round wall / plain round wall; "
          f"target <= 2)")


if __name__ == "__main__":
    main()
