"""Micro-benchmark: one FedAvg round of local training, batched vs Keras.

The case from the acceptance criteria: 100 devices × 600 Fashion-MNIST samples, MLP 784-128-64-10,
1 epoch, batch 32, plain SGD.  Measured in the same process:

* ``FleetTrainer.train`` on all 100 tasks — the first call (includes tracing) and the steady state
  (median of ``--repeats`` further calls), with and without XLA (``jit_compile``);
* a centralized Keras ``model.fit(x[:60000], y, batch_size=32, epochs=1)`` over the same samples —
  the first fit (includes tracing) and a second fit (steady state);
* ``KerasReferenceTrainer.train`` (one model, ``train_on_batch`` per step) on ``--ref-devices``
  devices, extrapolated linearly to all devices (labelled as such).

Run::

    .venv/bin/python benchmarks/trainer_micro.py [--devices 100] [--repeats 3] [--cnn]

``--cnn`` adds the same round for a small CNN (conv 16 → pool → conv 32 → pool → 64 → 10).
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
    print(f"\n=== {spec.num_params():,} params, {n_dev} devices x {per} samples, batch {args.batch},"
          f" {steps} steps/device, {spec.train_flops_per_sample() * n / 1e9:.1f} GFLOP (model) ===")

    # ---- centralized Keras fit over the same n samples
    xs, ys = x[perm], y[perm]
    model = build_keras_model(spec)
    model.set_weights(list(w0))
    model.compile(optimizer=keras.optimizers.SGD(args.lr), loss=keras_loss(spec))
    fit_first = _t(lambda: model.fit(xs, ys, batch_size=args.batch, epochs=1, verbose=0))
    fit_steady = statistics.median(
        _t(lambda: model.fit(xs, ys, batch_size=args.batch, epochs=1, verbose=0))
        for _ in range(args.fit_repeats)
    )
    print(f"keras fit (centralized, {n} samples): first {fit_first:.2f} s, steady {fit_steady:.2f} s")

    # ---- FleetTrainer, with and without XLA
    for jit in (False, True) if args.xla else (False,):
        trainer = FleetTrainer(spec, x, y, jit_compile=jit)
        first = _t(lambda: trainer.train(tasks))
        steady = statistics.median(_t(lambda: trainer.train(tasks)) for _ in range(args.repeats))
        label = "FleetTrainer" + (" (XLA)" if jit else "")
        print(f"{label:22s}: first {first:.2f} s (incl. trace), steady {steady:.2f} s;  "
              f"ratio vs fit: first/first {first / fit_first:.2f}, steady/steady "
              f"{steady / fit_steady:.2f}, first/steady {first / fit_steady:.2f}; traces "
              f"{trainer.traces}")
        # A second fleet size must not retrace (relaxed input signature; XLA recompiles anyway).
        half = tasks[: max(1, n_dev // 2)]
        t_half = _t(lambda: trainer.train(half))
        print(f"{'':22s}  {len(half)} devices: {t_half:.2f} s, traces now {trainer.traces}")

    # ---- Keras reference loop on a few devices, extrapolated
    ref = KerasReferenceTrainer(spec, x, y)
    ref.train(tasks[:1])  # warm-up (trace)
    few = tasks[: args.ref_devices]
    t_ref = _t(lambda: ref.train(few))
    est = t_ref * n_dev / len(few)
    print(f"KerasReferenceTrainer : {t_ref:.2f} s for {len(few)} devices -> {est:.1f} s for "
          f"{n_dev} (EXTRAPOLATED)")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--devices", type=int, default=100)
    ap.add_argument("--samples", type=int, default=600)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--lr", type=float, default=0.05)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--fit-repeats", type=int, default=1)
    ap.add_argument("--ref-devices", type=int, default=10)
    ap.add_argument("--no-xla", dest="xla", action="store_false")
    ap.add_argument("--cnn", action="store_true", help="also run the small CNN")
    ap.add_argument("--mlp", action=argparse.BooleanOptionalAction, default=True)
    args = ap.parse_args()

    import tensorflow as tf

    print(f"TensorFlow {tf.__version__}, {os.cpu_count()} CPUs, load {os.getloadavg()[0]:.2f}")
    x, y = load_fashion()
    if args.mlp:
        bench(mlp(784, [128, 64], 10), x, y, args)
    if args.cnn:
        bench(cnn((28, 28, 1)), x, y, args)


if __name__ == "__main__":
    main()
