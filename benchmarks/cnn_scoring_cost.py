"""What scoring costs against training for a fleet of CNNs: why ``eval_every`` exists.

Times, in one process, the fused trainer (:class:`slicenet.fused.FusedTrainer`) on the paper's
CNN for 28x28x1 images: ``K`` models each trained on its own 480 samples (15 mini-batches of 32,
about one device's epoch in the 120-device tables), then the same ``K`` models scored on 10,000
test images (what the monitor does after every epoch unless ``eval_every`` skips it), and
prints the ratio of the two (``scoring ÷ training``, CPU seconds), so a user can see how many
epochs one scoring costs.  Random inputs: the arithmetic, not the accuracy, is measured.
``--grouped-too`` also times the same scoring with all ``K`` models in one grouped convolution
per chunk of rows (how ``FusedTrainer.evaluate`` scored CNNs before it took them one at a time,
``slicenet.fused.CONV_EVAL_MODELS``), alternating with the current way, and prints the ratio.

    .venv/bin/python benchmarks/cnn_scoring_cost.py --models 12 --repeats 2
    .venv/bin/python benchmarks/cnn_scoring_cost.py --models 120 --test 2000 --grouped-too

Figures and the run's load: ``docs/benchmarks.md`` ("Scoring against training").
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def measure(models: int, repeats: int, steps: int = 15, batch: int = 32,
            test: int = 10_000, grouped_too: bool = False) -> dict:
    """CPU and wall seconds (best of ``repeats`` after a warm-up) of training ``models`` CNNs
    for ``steps`` mini-batches each and of scoring them on ``test`` images (with
    ``grouped_too``, also of scoring them all in one grouped call per chunk, the two ways
    alternating)."""
    import numpy as np

    from crowdlearn.training.batching import TrainTask
    from slicenet import fused
    from slicenet.fused import FusedTrainer
    from slicenet.graph import paper_cnn_description

    desc = paper_cnn_description(input_shape=(28, 28, 1))
    rng = np.random.default_rng(0)
    per = steps * batch
    x = rng.random((models * per, 784), dtype=np.float32)
    y = rng.integers(0, 10, models * per)
    trainer = FusedTrainer(desc, x, y)
    tasks = [TrainTask(trainer.init_weights(np.random.default_rng(i)),
                       (rng.permutation(per).reshape(steps, batch) + per * i).astype(np.int32),
                       0.05) for i in range(models)]
    xt = rng.random((test, 784), dtype=np.float32)
    yt = rng.integers(0, 10, test)
    weights = [t.weights for t in tasks]

    def once(fn) -> tuple[float, float]:
        c0, w0 = time.process_time(), time.perf_counter()
        fn()
        return time.process_time() - c0, time.perf_counter() - w0

    def grouped():
        saved, fused.CONV_EVAL_MODELS = fused.CONV_EVAL_MODELS, models
        try:
            trainer.evaluate(weights, xt, yt)
        finally:
            fused.CONV_EVAL_MODELS = saved

    ways = {"train": lambda: trainer.train(tasks),
            "score": lambda: trainer.evaluate(weights, xt, yt)}
    if grouped_too:
        ways["grouped"] = grouped
    for fn in ways.values():
        fn()                                    # warm-up: tracing
    best = dict.fromkeys(ways, (float("inf"), float("inf")))
    for _ in range(repeats):                    # the ways alternate
        for name, fn in ways.items():
            best[name] = min(best[name], once(fn))
    out = {"train_cpu": best["train"][0], "train_wall": best["train"][1],
           "score_cpu": best["score"][0], "score_wall": best["score"][1],
           "ratio_cpu": best["score"][0] / best["train"][0]}
    if grouped_too:
        out.update(grouped_cpu=best["grouped"][0], grouped_wall=best["grouped"][1])
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--models", type=int, default=12, help="CNNs trained and scored together")
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--test", type=int, default=10_000, help="test images scored")
    ap.add_argument("--grouped-too", action="store_true",
                    help="also score all the models in one grouped call per chunk of rows")
    a = ap.parse_args(argv)
    if a.models < 1 or a.repeats < 1 or a.test < 1:
        ap.error(f"--models, --repeats and --test must be >= 1; got {a.models}, {a.repeats}, "
                 f"{a.test}")
    load0 = os.getloadavg()[0]
    r = measure(a.models, a.repeats, test=a.test, grouped_too=a.grouped_too)
    print(f"{a.models} paper-cnn models, 28x28x1; load average {load0:.2f} -> "
          f"{os.getloadavg()[0]:.2f} on {os.cpu_count()} CPUs")
    print(f"training, 15 mini-batches of 32 each: {r['train_cpu']:.2f} s CPU, "
          f"{r['train_wall']:.2f} s wall")
    print(f"scoring on {a.test:,} test images, one model at a time: {r['score_cpu']:.2f} s CPU, "
          f"{r['score_wall']:.2f} s wall")
    if a.grouped_too:
        print(f"scoring them all in one grouped call per chunk: {r['grouped_cpu']:.2f} s CPU, "
              f"{r['grouped_wall']:.2f} s wall; grouped / one at a time: "
              f"{r['grouped_cpu'] / r['score_cpu']:.2f} (CPU), "
              f"{r['grouped_wall'] / r['score_wall']:.2f} (wall)")
    print(f"ratio_cpu {r['ratio_cpu']:.1f}  (one scoring costs this many epochs of training)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
