"""Peak memory of scoring many dense models at once: the metrics row of S-SGD, 120 ``paper-mlp``.

For each way of scoring (``chain``: :meth:`slicenet.fused.FusedTrainer.evaluate` through the
inference chain, the default; ``layers``: layer by layer, ``FusedTrainer.chain_evaluate =
False``) a fresh process builds ``--models`` ``paper-mlp`` models with random weights, scores two
of them once (tracing), then times one :meth:`~slicenet.fused.FusedTrainer.evaluate` of all of
them on ``--rows`` random rows and prints how far that call raised the process's peak resident
memory (``ru_maxrss``, which only grows: hence one process per measurement).  The ways alternate
for ``--repeats`` rounds.  Random inputs: memory, not accuracy, is measured; the first model's
loss is printed so the ways can be seen to agree.

    .venv/bin/python benchmarks/eval_row_memory.py --models 120 --rows 2000 --repeats 2

Figures: ``docs/benchmarks.md`` ("Fifteenth and sixteenth sessions").
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def measure(way: str, models: int, rows: int) -> dict:
    """One evaluation in this process: its growth of the peak RSS, in MB."""
    import resource

    import numpy as np

    from slicenet.fused import FusedTrainer
    from slicenet.graph import paper_mlp_description

    rng = np.random.default_rng(0)
    x = rng.normal(size=(rows, 784)).astype(np.float32)
    y = rng.integers(0, 10, rows)
    trainer = FusedTrainer(paper_mlp_description(), x[:64], y[:64])
    trainer.chain_evaluate = way == "chain"
    weights = [trainer.init_weights(np.random.default_rng(i)) for i in range(models)]
    trainer.evaluate(weights[:2], x[:50], y[:50])          # tracing
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    scores = trainer.evaluate(weights, x, y)
    after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return {"way": way, "peak_growth_mb": (after - before) / 1024, "loss0": scores[0][0]}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", type=int, default=120)
    ap.add_argument("--rows", type=int, default=2000)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--one", choices=["chain", "layers"], help=argparse.SUPPRESS)
    a = ap.parse_args(argv)
    if a.models < 2 or a.rows < 50 or a.repeats < 1:
        ap.error(f"--models must be >= 2, --rows >= 50 and --repeats >= 1; got {a.models}, "
                 f"{a.rows}, {a.repeats}")
    if a.one:
        print(json.dumps(measure(a.one, a.models, a.rows)))
        return 0
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}
    print(f"{a.models} paper-mlp models scored on {a.rows} rows: growth of the process's peak "
          f"RSS over one evaluate call (a fresh process each)")
    for r in range(a.repeats):
        for way in ("layers", "chain"):
            out = subprocess.run([sys.executable, __file__, "--one", way, "--models",
                                  str(a.models), "--rows", str(a.rows)],
                                 capture_output=True, text=True, env=env, check=True)
            got = json.loads(out.stdout.strip().splitlines()[-1])
            print(f"round {r + 1}: {way:6s} {got['peak_growth_mb']:7.1f} MB  "
                  f"(first model's loss {got['loss0']:.7f})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
