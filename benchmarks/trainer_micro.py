"""Micro-benchmark: one FedAvg round of local training, batched vs Keras.

The case from the acceptance criteria: 100 devices × 600 Fashion-MNIST samples, MLP 784-128-64-10,
1 epoch, batch 32, plain SGD.  Measured in the same process:

* ``FleetTrainer.train`` on all 100 tasks — the first call (includes tracing/compiling) and the
  steady state (median of ``--repeats`` further calls) — for each strategy: ``per_device`` (the
  default), ``vectorized-xla``, ``vectorized`` without XLA; then a call with 2/3 of the devices
  (a new shape) to show the retrace/recompile cost;
* a centralized Keras ``model.fit(x[:60000], y, batch_size=32, epochs=1)`` over the same samples —
  the first fit (includes tracing) and the steady state.  Steady-state calls of fit and of every
  strategy are interleaved round by round (the machine is shared and its load drifts); the
  ratios use medians and minima;
* ``KerasReferenceTrainer.train`` (one model, ``train_on_batch`` per step) on ``--ref-devices``
  devices, extrapolated linearly to all devices (labelled as such);
* with ``--varying N``: N rounds of 20–100 devices holding 100–900 samples each (new shapes every
  round, as in a simulation), twice over, per strategy — the first pass pays every retrace or
  XLA compile, the second shows the cached steady state.

Run::

    .venv/bin/python benchmarks/trainer_micro.py [--devices 100] [--repeats 3] [--cnn]

``--cnn`` adds the same round for a small CNN (conv 16 → pool → conv 32 → pool → 64 → 10);
pass ``--strategies per_device`` with it unless you have minutes to spare (the vectorized CNN
takes over a minute per call on 2 cores).
"""

from __future__ import annotations

import argparse
import gzip
import os
import statistics
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402

from crowdlearn.training.batching import TrainTask, make_batches  # noqa: E402
from crowdlearn.training.models import ModelSpec, cnn, mlp  # noqa: E402

FASHION = Path("/usr/share/datasets/fashion-mnist")


def _idx(path: Path) -> np.ndarray:
    with gzip.open(path, "rb") as f:
        data = f.read()
    ndim = data[3]
    dims = [int.from_bytes(data[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim)]
    return np.frombuffer(data, np.uint8, offset=4 + 4 * ndim).reshape(dims)


def load_fashion() -> tuple[np.ndarray, np.ndarray]:
    x = _idx(FASHION / "train-images-idx3-ubyte.gz").reshape(-1, 784).astype(np.float32) / 255.0
    y = _idx(FASHION / "train-labels-idx1-ubyte.gz").astype(np.int64)
    return x, y


def _t(fn) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def trainer_call(trainer, tasks):
    return lambda: trainer.train(tasks)


def bench(spec: ModelSpec, x, y, args) -> None:
    import keras

    from crowdlearn.training.fleet_trainer import FleetTrainer
    from crowdlearn.training.keras_ref import KerasReferenceTrainer, build_keras_model, keras_loss

    rng = np.random.default_rng(0)
    n_dev, per = args.devices, args.samples
    n = n_dev * per
    perm = rng.permutation(len(x))[:n]
    parts = np.split(perm, n_dev)
    w0 = tuple(spec.init_weights(rng))
    tasks = [
        TrainTask(w0, make_batches(p, epochs=1, batch_size=args.batch, rng=rng), args.lr)
        for p in parts
    ]
    steps = len(tasks[0].batches)
    print(
        f"\n=== {spec.num_params():,} params, {n_dev} devices x {per} samples, batch {args.batch},"
        f" {steps} steps/device, {spec.train_flops_per_sample() * n / 1e9:.1f} GFLOP (model) ==="
    )

    # ---- first calls: the centralized Keras fit over the same n samples, then every strategy
    xs, ys = x[perm], y[perm]
    model = build_keras_model(spec)
    model.set_weights(list(w0))
    model.compile(optimizer=keras.optimizers.SGD(args.lr), loss=keras_loss(spec))

    def fit() -> None:
        model.fit(xs, ys, batch_size=args.batch, epochs=1, verbose=0)

    runs = {"keras fit": fit}
    trainers = {}
    for name in args.strategies.split(","):
        strategy, _, jit = name.partition("-")
        trainers[name] = FleetTrainer(spec, x, y, strategy=strategy, jit_compile=(jit == "xla"))
        runs[name] = trainer_call(trainers[name], tasks)
    first = {name: _t(fn) for name, fn in runs.items()}

    # ---- steady state: interleaved rounds (the machine is shared; load drifts), median and min
    times: dict[str, list[float]] = {name: [] for name in runs}
    for _ in range(args.repeats):
        for name, fn in runs.items():
            times[name].append(_t(fn))
    med = {name: statistics.median(v) for name, v in times.items()}
    best = {name: min(v) for name, v in times.items()}
    fit_first, fit_med, fit_best = first["keras fit"], med["keras fit"], best["keras fit"]
    print(
        f"keras fit (centralized, {n} samples): first {fit_first:.2f} s (incl. trace), "
        f"steady median {fit_med:.2f} s, min {fit_best:.2f} s"
    )
    for name, trainer in trainers.items():
        print(
            f"FleetTrainer {name:15s}: first {first[name]:.2f} s (incl. trace), steady median "
            f"{med[name]:.2f} s, min {best[name]:.2f} s;  ratio vs fit: first/first "
            f"{first[name] / fit_first:.2f}, first/steady {first[name] / fit_med:.2f}, "
            f"steady {med[name] / fit_med:.2f} (median) {best[name] / fit_best:.2f} (min)"
        )
        # A new fleet size: no retrace (relaxed signature); XLA compiles each new bucketed shape.
        other = tasks[: max(1, (n_dev * 2) // 3)]
        run_other = trainer_call(trainer, other)
        t_new = _t(run_other)
        t_again = _t(run_other)
        print(
            f"{'':29s}{len(other)} devices: first {t_new:.2f} s, again {t_again:.2f} s; "
            f"traces {trainer.traces}"
        )

    # ---- Keras reference loop on a few devices, extrapolated
    ref = KerasReferenceTrainer(spec, x, y)
    ref.train(tasks[:1])  # warm-up (trace)
    few = tasks[: args.ref_devices]
    t_ref = _t(lambda: ref.train(few))
    est = t_ref * n_dev / len(few)
    print(
        f"KerasReferenceTrainer : {t_ref:.2f} s for {len(few)} devices -> {est:.1f} s for "
        f"{n_dev} (EXTRAPOLATED)"
    )


def varying(spec: ModelSpec, x, y, args) -> None:
    from crowdlearn.training.fleet_trainer import FleetTrainer

    def rounds(trainer) -> tuple[float, int]:
        rng = np.random.default_rng(42)
        w0 = tuple(spec.init_weights(rng))
        t0, total = time.perf_counter(), 0
        for _ in range(args.varying):
            k = int(rng.integers(20, 101))
            total += k
            tasks = [
                TrainTask(
                    w0,
                    make_batches(
                        rng.choice(len(x), int(rng.integers(100, 900)), replace=False),
                        epochs=1,
                        batch_size=args.batch,
                        rng=rng,
                    ),
                    args.lr,
                )
                for _ in range(k)
            ]
            trainer.train(tasks)
        return time.perf_counter() - t0, total

    print(f"\n=== {args.varying} rounds of 20-100 devices x 100-900 samples (varying shapes) ===")
    for name in args.strategies.split(","):
        strategy, _, jit = name.partition("-")
        trainer = FleetTrainer(spec, x, y, strategy=strategy, jit_compile=(jit == "xla"))
        first, total = rounds(trainer)
        again, _ = rounds(trainer)
        print(
            f"FleetTrainer {name:15s}: {total} tasks, first pass {first:.1f} s, "
            f"repeat {again:.1f} s"
        )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--devices", type=int, default=100)
    ap.add_argument("--samples", type=int, default=600)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--lr", type=float, default=0.05)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--ref-devices", type=int, default=10)
    ap.add_argument(
        "--strategies",
        default="per_device,vectorized-xla,vectorized",
        help="comma-separated: per_device (the default strategy), vectorized-xla, vectorized (no XLA)",
    )
    ap.add_argument("--cnn", action="store_true", help="also run the small CNN")
    ap.add_argument("--mlp", action=argparse.BooleanOptionalAction, default=True)
    ap.add_argument(
        "--varying",
        type=int,
        default=0,
        metavar="N",
        help="also run N rounds with varying fleet sizes (MLP)",
    )
    args = ap.parse_args()

    import tensorflow as tf

    print(f"TensorFlow {tf.__version__}, {os.cpu_count()} CPUs, load {os.getloadavg()[0]:.2f}")
    x, y = load_fashion()
    if args.mlp:
        bench(mlp(784, [128, 64], 10), x, y, args)
    if args.cnn:
        bench(cnn((28, 28, 1)), x, y, args)
    if args.varying:
        varying(mlp(784, [128, 64], 10), x, y, args)


if __name__ == "__main__":
    main()
