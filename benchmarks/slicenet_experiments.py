"""Crowdlearning (SliceNet) experiments on Fashion-MNIST: the paper's Tables I–IV over seeds.

Every run is ``paper-mlp`` (784 → BN → 400 → BN → ReLU → 200 → BN → ReLU → 100 → BN → ReLU → 10)
on 120 devices holding 500 Fashion-MNIST samples each, mini-batch 32, learning rate 0.05, for
``--epochs`` epochs, one simulation per (setting, seed) through the sweep runner
(:func:`crowdlearn.sweeps.sweep`, resumable: finished runs in ``--out`` are not run again):

* **Table I** (θ = τ = 0.5, ω = g): S-SGD (``protocol = "ssgd"``: every device its own group,
  same sharing rule), Crowdlearning with n = 5, 10, 15, 20, and C-SGD (``protocol =
  "centralized"`` with ``slicenet.model = "paper-mlp"``: the same network, BatchNorm included,
  trained by one node on the union of the 120 devices' data);
* **Tables II–IV** at the paper's m = 120, n = 12 (g = 10), ω = 10: θ ∈ {0.1, 0.3, 0.5, 0.7,
  0.9} (τ = 0.5), τ ∈ {0, 0.2, 0.4, 0.6, 0.8, 1} (θ = 0.5), ω ∈ {5, 10, 15, 20, 25} (θ = τ = 0.5);
* the traffic per sample of the METIS plans (no training);
* with ``--model paper-cnn --tables I``: Table I again with the paper's CNN (its 28×28×1
  variant) in every run, C-SGD included, beside the paper's CIFAR-10 CNN figures.

Per-seed rows (final and per-epoch test error, simulated time, bytes, the CPU seconds each run
took in this process, the network: ``model``, empty or absent in rows written before the CNN
table, which are all ``paper-mlp``'s; and how a run was made when this process made it: the
command line, niceness, process id, start and end time and the load average at its end, from
which the pages of longer runs say how they were made) are merged into
``docs/experiments/data/slicenet.csv`` (``--merge-rows OTHER.csv`` merges another file's rows,
of either format); ``--write-docs``
renders ``docs/experiments/slicenet.md`` from that file alone (cells: mean ± 95 % t half-width
over seeds; orderings: paired differences over seeds, :mod:`results_doc`).

Usage::

    # what the committed doc was measured with (local, one process, nice'd)
    nice -n 10 .venv/bin/python benchmarks/slicenet_experiments.py --epochs 2 --seeds 10 \\
        --sweep-seeds 5 --write-docs
    # the paper's scale: 50 epochs × 10 seeds × every setting, on a Ray cluster
    .venv/bin/python benchmarks/slicenet_experiments.py --epochs 50 --seeds 10 --sweep-seeds 10 \\
        --backend ray --address auto --write-docs
    # Table I with the paper's CNN (the committed rows: a few epochs and seeds, nice'd)
    nice -n 19 .venv/bin/python benchmarks/slicenet_experiments.py --model paper-cnn \\
        --tables I --epochs 1 --seeds 2
    # the CNN table's missing seeds, two runs side by side (one TensorFlow thread each)
    nice -n 19 .venv/bin/python benchmarks/slicenet_experiments.py --model paper-cnn \\
        --tables I --epochs 50 --first-seed 1 --seeds 1 --sweep-seeds 0 --only "n = 20" S-SGD \\
        --jobs 2
    # re-render the doc from the CSV only
    .venv/bin/python benchmarks/slicenet_experiments.py --render
"""

from __future__ import annotations

import argparse
import csv
import fcntl
import json
import os
import resource
import sys
import time
from itertools import pairwise
from pathlib import Path
from typing import NamedTuple

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

import results_doc as R  # noqa: E402

DOC = ROOT / "docs" / "experiments" / "slicenet.md"
DATA = ROOT / "docs" / "experiments" / "data" / "slicenet.csv"
FIELDS = ("table", "label", "protocol", "group_size", "theta", "tau", "omega", "epochs", "seed",
          "error_pct", "best_error_pct", "error_by_epoch", "sim_time_s", "bytes_total",
          "cpu_s", "run", "model", "argv", "nice", "pid", "started", "ended", "load",
          "scored_epochs")
#: ``scored_epochs``: the epochs (1-based, ``;``-joined) at which a run scored its models on the
#: test set, when not after every epoch (``--score table``: ``eval_every``/``eval_at``); empty
#: for a run scored after every epoch (every row written before the column existed)
#: how a run was made, stored with its row when it is measured (empty in rows written before
#: these columns existed, and for a run found finished in ``--out``: it was made elsewhere)
PROVENANCE = ("argv", "nice", "pid", "started", "ended", "load")
#: the network of a row written before the ``model`` column existed (every such row is the MLP's)
DEFAULT_MODEL = "paper-mlp"
MODELS = ("paper-mlp", "paper-cnn")

#: the paper's reported test error (spec: MNIST MLP, CIFAR-10 CNN, 120 devices, 50 epochs)
PAPER = {
    "I": {"S-SGD": (5.15, 46.88), "n = 5": (5.29, 46.11), "n = 10": (3.63, 37.65),
          "n = 15": (3.10, 34.40), "n = 20": (2.62, 32.40), "C-SGD": (1.73, 29.54)},
    "II": {0.1: 7.33, 0.3: 3.83, 0.5: 2.70, 0.7: 2.37, 0.9: 1.93},
    "III": {0.0: 3.07, 0.2: 2.91, 0.4: 2.70, 0.6: 2.91, 0.8: 3.14, 1.0: 5.72},
    "IV": {5: 3.18, 10: 2.53, 15: 3.53, 20: 3.82, 25: 3.76},
}
SIZES = (5, 10, 15, 20)
THETAS = (0.1, 0.3, 0.5, 0.7, 0.9)
TAUS = (0.0, 0.2, 0.4, 0.6, 0.8, 1.0)
OMEGAS = (5, 10, 15, 20, 25)
SWEEP_N, SWEEP_OMEGA = 12, 10       # the paper's m = 120, n = 12 (g = 10 groups), ω = 10


class Setting(NamedTuple):
    """One column of a table: the grid values that differ from the base config."""

    table: str
    label: str
    values: dict
    x: float | None = None          # the swept value (θ, τ or ω), None in Table I

    def grid(self) -> dict:
        return {k: [v] for k, v in self.values.items()}


def _crowd(n, theta=0.5, tau=0.5, omega=0) -> dict:
    return {"protocol": "crowdlearning", "slicenet.group_size": n, "slicenet.theta": theta,
            "slicenet.tau": tau, "slicenet.omega": omega}


def settings(sizes=SIZES) -> list[Setting]:
    out = [Setting("I", "S-SGD", {"protocol": "ssgd"})]
    out += [Setting("I", f"n = {n}", _crowd(n)) for n in sizes]
    out.append(Setting("I", "C-SGD", {"protocol": "centralized"}))
    out += [Setting("II", f"θ = {t}", _crowd(SWEEP_N, theta=t, omega=SWEEP_OMEGA), t)
            for t in THETAS]
    out += [Setting("III", f"τ = {t}", _crowd(SWEEP_N, tau=t, omega=SWEEP_OMEGA), t)
            for t in TAUS]
    out += [Setting("IV", f"ω = {w}", _crowd(SWEEP_N, omega=w), w) for w in OMEGAS]
    return out


def base_config(epochs: int, model: str = DEFAULT_MODEL, scored: list[int] | None = None,
                threads: int = 0) -> dict:
    """The runs' base config; ``scored``: score the models on the test set only after these
    epochs (and the last), not after every one (training, bytes and times are the same);
    ``threads``: TensorFlow's threads per op (``training.threads``; 0: not set, the config of
    the runs made before the option, so their folders resume)."""
    cfg = {"protocol": "crowdlearning", "rounds": epochs, "seed": 0,
           "data": {"dataset": "fashion_mnist"},
           "fleet": {"devices": 120, "cells": 12},
           "slicenet": {"model": model, "lr": 0.05, "batch_size": 32,
                        "theta": 0.5, "tau": 0.5}}
    if scored is not None:
        cfg.update(eval_every=epochs, eval_at=[e for e in scored if e < epochs])
    if threads:
        cfg["training"] = {"threads": threads}
    return cfg


def table_epochs(epochs: int) -> list[int]:
    """The epochs a table shows for a run of ``epochs``: its columns and the last.

    >>> table_epochs(50), table_epochs(3)
    ([1, 2, 5, 10, 20, 30, 40, 50], [1, 2, 3])
    """
    return _curve_epochs(epochs) + [epochs]


def _cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def _epoch_errors(run_dir: Path) -> list[float | None]:
    """Test error (%) after each epoch, from the run's ``metrics.csv`` (server evaluations);
    ``None`` for an epoch the run did not score (``eval_every``)."""
    path = run_dir / "metrics.csv"
    if not path.is_file():
        return []
    by_round: dict[int, float] = {}
    with path.open() as fh:
        for row in csv.DictReader(fh):
            acc = row.get("accuracy") or row.get("test_accuracy")
            rnd = row.get("round")
            if acc in (None, "") or rnd in (None, ""):
                continue
            by_round[int(float(rnd))] = float(acc)      # the last evaluation of a round
    last = max(by_round, default=-1)
    return [round(100 * (1 - by_round[r]), 4) if r in by_round else None
            for r in range(last + 1)]


def provenance(argv: str) -> dict:
    """This process's part of a row's :data:`PROVENANCE`: the command line, niceness and id."""
    return {"argv": argv, "nice": os.nice(0), "pid": os.getpid()}


def run_setting(s: Setting, seeds, *, epochs: int, out: Path, backend: str, jobs: int,
                address: str | None, model: str = DEFAULT_MODEL,
                how: dict | None = None, scored: list[int] | None = None,
                threads: int = 0) -> list[dict]:
    """Run (or resume) one setting over ``seeds``; one CSV row per finished seed.  A run made
    by this call stores ``how`` (:func:`provenance`), its start and end (Unix s) and the load
    average at its end; a run found finished in ``out`` stores none of them."""
    from crowdlearn.sweeps import cli_progress, sweep

    cpu0, started = _cpu(), time.time()
    # a line per finished run, and every minute of a run made in this process its epoch
    df = sweep(base_config(epochs, model, scored, threads), s.grid(), list(seeds), out=out,
               backend=backend, jobs=jobs, address=address, plots=False,
               progress=cli_progress, progress_every=60.0)
    cpu = _cpu() - cpu0
    made = {**(how or {}), "started": round(started, 1), "ended": round(time.time(), 1),
            "load": round(os.getloadavg()[0], 2)} if how else {}
    fresh = int((df["status"] == "ok").sum())
    rows = []
    for rec in df.to_dict("records"):
        if rec["status"] not in ("ok", "skipped"):
            print(f"  {s.label} seed {rec['seed']}: FAILED {rec.get('error', '')}", flush=True)
            continue
        v = s.values
        rows.append({
            "table": s.table, "label": s.label, "protocol": v["protocol"],
            "group_size": v.get("slicenet.group_size", ""), "theta": v.get("slicenet.theta", ""),
            "tau": v.get("slicenet.tau", ""), "omega": v.get("slicenet.omega", ""),
            "epochs": epochs, "seed": int(rec["seed"]),
            "error_pct": round(100 * (1 - rec["final_accuracy"]), 4),
            "best_error_pct": round(100 * (1 - rec["best_accuracy"]), 4),
            "error_by_epoch": ";".join("" if e is None else f"{e:g}" for e in
                                       _epoch_errors(out / "runs" / rec["run"])),
            # what the run's config scored (eval_at, and the last epoch always)
            "scored_epochs": ";".join(map(str, sorted({*scored, epochs}))) if scored else "",
            "sim_time_s": round(float(rec["sim_time_s"]), 3),
            "bytes_total": int(rec["bytes_total"]),
            # in-process runs only: this process's CPU over the fresh runs of this call
            "cpu_s": (round(cpu / fresh, 2) if rec["status"] == "ok" and backend == "local"
                      and jobs == 1 else ""),
            "run": rec["run"], "model": model,
            **{k: (made.get(k, "") if rec["status"] == "ok" else "") for k in PROVENANCE}})
    return rows


def _run_in_worker(s: Setting, seeds, kw: dict) -> list[dict]:
    """:func:`run_setting` in a worker process of ``--jobs``: its rows record the worker's id;
    the first signal of the call stops its run, which keeps what it measured in its folder
    (``crowdlearn.signals.first_interrupts``)."""
    from crowdlearn.signals import first_interrupts

    how = kw.get("how")
    with first_interrupts():
        return run_setting(s, seeds, **{**kw, "how": {**how, "pid": os.getpid()} if how else how})


def with_model(r: dict) -> dict:
    """``r`` with its ``model`` (a row of the format before the column, or with it empty, is
    the MLP's: :data:`DEFAULT_MODEL`).

    >>> with_model({"label": "C-SGD"})["model"], with_model({"model": "paper-cnn"})["model"]
    ('paper-mlp', 'paper-cnn')
    """
    return r if r.get("model") else {**r, "model": DEFAULT_MODEL}


def read_rows(path: Path) -> list[dict]:
    """The rows of a CSV of this script, of either format (with or without ``model``)."""
    if not path.is_file():
        return []
    with path.open() as fh:
        return [with_model(r) for r in csv.DictReader(fh)]


def load_rows() -> list[dict]:
    return read_rows(DATA)


def save_rows(new: list[dict]) -> None:
    """Merge ``new`` into the CSV (a (model, table, label, epochs, seed) row is replaced; a
    skipped run's empty ``cpu_s`` keeps the measured one; a row without ``model``, as the
    script wrote them before the CNN table, is the MLP's)."""
    DATA.parent.mkdir(parents=True, exist_ok=True)
    # processes that run seeds side by side merge one at a time (a lock on the folder)
    fd = os.open(DATA.parent, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        _merge_rows(new)
    finally:
        os.close(fd)            # releases the lock


def _merge_rows(new: list[dict]) -> None:
    key = lambda r: (r["model"], r["table"], r["label"], str(r["epochs"]),  # noqa: E731
                     str(r["seed"]))
    rows = {key(r): r for r in load_rows()}
    for r in map(with_model, new):
        old = rows.get(key(r))
        if old is not None:        # a run found finished keeps what its first row measured
            r = {**r, **{k: old[k] for k in ("cpu_s", *PROVENANCE)
                         if r.get(k, "") == "" and old.get(k)}}
        rows[key(r)] = {k: r.get(k, "") for k in FIELDS}
    order = {s.label: i for i, s in enumerate(settings())}
    with DATA.open("w", newline="") as fh:
        w = csv.DictWriter(fh, FIELDS)
        w.writeheader()
        for r in sorted(rows.values(), key=lambda r: (r["model"] != DEFAULT_MODEL, r["model"],
                                                      int(r["epochs"]),
                                                      order.get(r["label"], 99), int(r["seed"]))):
            w.writerow(r)


def traffic_table():
    from slicenet.graph import paper_mlp_description
    from slicenet.partition import partition
    g = paper_mlp_description().graph()
    rows = []
    for n in (5, 10, 15, 20):          # group size n: the dominator and n − 1 pieces
        plan = partition(g, n - 1, method="metis")
        vol = partition(g, n - 1, method="metis", objective="volume")
        rows.append((n, plan.balance, plan.traffic_bytes_per_sample,
                     max(p.traffic_bytes_per_sample for p in plan.pieces),
                     vol.traffic_bytes_per_sample))
    return rows


# ---------------------------------------------------------------- the doc
def _by_label(rows, epochs) -> dict[str, dict[int, dict]]:
    out: dict[str, dict[int, dict]] = {}
    for r in rows:
        if int(r["epochs"]) == epochs:
            out.setdefault(r["label"], {})[int(r["seed"])] = r
    return out


def _vals(cells: dict[int, dict], key="error_pct", seeds=None) -> list[float]:
    seeds = sorted(cells) if seeds is None else seeds
    return [float(cells[s][key]) for s in seeds if s in cells and cells[s][key] != ""]


def _epoch_vals(cells: dict[int, dict], epoch: int) -> list[float]:
    out = []
    for s in sorted(cells):
        e = cells[s]["error_by_epoch"].split(";")      # "" where the run did not score
        if len(e) >= epoch and e[epoch - 1] != "":
            out.append(float(e[epoch - 1]))
    return out


def compare(cells, worse: str, better: str) -> tuple[str, str]:
    """Paired ``error(worse) − error(better)`` over the seeds both have: the claim
    "``worse`` has the higher error" holds when the interval is above 0."""
    a, b = cells.get(worse, {}), cells.get(better, {})
    common = sorted(set(a) & set(b))
    if len(common) < 2:
        return "—", "not measured"
    d = R.paired(_vals(a, seeds=common), _vals(b, seeds=common))
    return R.fmt_paired(d, 2) + f" (n = {d['n']})", R.verdict(d)


def _curve_epochs(epochs: int) -> list[int]:
    """The epochs before the last shown as columns: every one of a short run, a few of a long."""
    if epochs <= 6:
        return list(range(1, epochs))
    return [e for e in (1, 2, 5, 10, 20, 30, 40) if e < epochs]


def _table(sets, cells, epochs, paper_cols) -> list[str]:
    shown = _curve_epochs(epochs)
    head = ["setting"] + [c for c, _ in paper_cols] + [
        f"ours: test error % after epoch {e}" for e in shown] + [
        f"ours: test error % (final, epoch {epochs})", "seeds", "simulated time (s)",
        "GB on the wire", "CPU s per epoch"]
    out = ["| " + " | ".join(head) + " |", "|" + " --- |" * len(head)]
    for s in sets:
        c = cells.get(s.label, {})
        row = [s.label] + [f(s) for _, f in paper_cols]
        row += [R.cell(_epoch_vals(c, e), 2) for e in shown]
        row += [R.cell(_vals(c), 2), R.seeds_text(sorted(c)) if c else "—",
                R.cell(_vals(c, "sim_time_s"), 1),
                R.cell([v / 1e9 for v in _vals(c, "bytes_total")], 3),
                _cpu_cell(c, epochs)]
        out.append("| " + " | ".join(row) + " |")
    return out


def _cpu_cell(cells: dict[int, dict], epochs: int) -> str:
    """A cell's CPU s per epoch: the median over its runs scored after every epoch, and over
    those scored only at the table's epochs (``†``); both, in that order, where it has both
    kinds, since the two cost differently (a median across them would mix schedules)."""
    every = [float(r["cpu_s"]) for r in cells.values()
             if r["cpu_s"] != "" and not r.get("scored_epochs")]
    table = [float(r["cpu_s"]) for r in cells.values()
             if r["cpu_s"] != "" and r.get("scored_epochs")]
    parts = ([f"{_median(every) / epochs:.1f}"] if every else []) + (
        [f"{_median(table) / epochs:.1f}†"] if table else [])
    return " / ".join(parts) or "—"


def _scored_only(cells: dict[int, dict]) -> bool:
    """Whether any of a cell's runs scored its models only after the table's epochs (``†``)."""
    return any(r.get("scored_epochs") for r in cells.values())


#: the note of a table with a ``†`` cell
SCORED_NOTE = ("† Runs scored on the test set only after the epochs shown (`--score table`: "
               "`eval_every`, `eval_at`), not after every epoch: the same training, bytes, "
               "simulated time and scores at those epochs (tested), but their CPU per epoch "
               "leaves out most of the evaluation that the other cells pay, the larger part of "
               "an epoch where many models are scored (S-SGD's 120 CNNs, n = 5's 24 groups, "
               "each on 10,000 test images).  A cell with two figures has runs of both kinds: "
               "the median of those scored after every epoch, then of those scored at the "
               "table's epochs (†).")


def _claims(cells, pairs) -> list[str]:
    out = ["| claim (higher error first) | paired difference of error, points [95 % CI] | verdict |",
           "| --- | --- | --- |"]
    for worse, better in pairs:
        d, v = compare(cells, worse, better)
        out.append(f"| {worse} worse than {better} | {d} | **{v}** |")
    return out


def _u_shape(cells, labels) -> str:
    """Interior minimum of the mean error, and both ends worse than it (paired)."""
    means = {lab: sum(v) / len(v) for lab in labels if (v := _vals(cells.get(lab, {})))}
    if len(means) < 3:
        return "not measured"
    best = min(means, key=means.get)
    if best in (labels[0], labels[-1]):
        return f"no interior minimum (lowest mean error at {best})"
    left, right = compare(cells, labels[0], best)[1], compare(cells, labels[-1], best)[1]
    if left == right == "holds":
        return f"**holds**: lowest mean error at {best}, both ends worse (paired intervals above 0)"
    return (f"**not shown**: lowest mean error at {best}, but {labels[0]} vs {best}: {left}, "
            f"{labels[-1]} vs {best}: {right}")


def render(rows: list[dict], epochs: int, cmd: str) -> str:
    everything = [with_model(r) for r in rows]
    rows = [r for r in everything if r["model"] == DEFAULT_MODEL]   # the MLP's page as before
    cells = _by_label(rows, epochs)
    sets = settings()
    t1 = [s for s in sets if s.table == "I"]
    t2, t3, t4 = ([s for s in sets if s.table == k] for k in ("II", "III", "IV"))
    per_setting = {s.label: (_median(v) / epochs if (v := _vals(cells.get(s.label, {}),
                                                                 "cpu_s")) else None)
                   for s in sets}
    known = [v for v in per_setting.values() if v is not None]
    full = (sum(v if v is not None else _median(known) for v in per_setting.values())
            * 50 * 10 if known else None)
    seeds_n = {lab: len(c) for lab, c in cells.items()}
    L = ["# Crowdlearning (SliceNet) experiments on Fashion-MNIST\n"]
    L.append("Generated by `benchmarks/slicenet_experiments.py --write-docs` from the per-seed "
             "rows in `docs/experiments/data/slicenet.csv`; nothing here is edited by hand.\n")
    n1 = max((seeds_n.get(s.label, 0) for s in t1), default=0)
    n2 = max((seeds_n.get(s.label, 0) for s in sets if s.table != "I"), default=0)
    total_cpu = sum(float(r["cpu_s"]) for r in rows
                    if int(r["epochs"]) == epochs and r["cpu_s"] != "")
    made = how_made([r for r in rows if int(r["epochs"]) == epochs],
                    unrecorded="not recorded with the rows (written before they stored the "
                               "command, niceness and process; the page's note of the time: one "
                               "process at `nice -n 10`, Table I seed by seed, then the sweeps "
                               "seed by seed)")
    L.append(f"The set's command: `.venv/bin/python benchmarks/slicenet_experiments.py "
             f"--epochs {epochs} --seeds {n1} --sweep-seeds {n2}` (resumable: it runs only "
             f"what is missing).  How the runs were made: {made}.  The sum of the runs' CPU "
             f"time is {total_cpu / 60:.0f} CPU-minutes; rendered by `{cmd}`.\n")
    L.append(R.environment() + "\n")
    L.append(f"""Setting: the paper's MLP (784 → BN → 400 → BN → ReLU → 200 → BN → ReLU → 100 → BN →
ReLU → 10) on Fashion-MNIST (Debian's `dataset-fashion-mnist`), 120 devices with an IID split
(500 samples each), mini-batch 32, learning rate 0.05, the default heterogeneous phone mix in 12
cells, traffic relayed through the server, **{_epochs(epochs)}, not the paper's 50** (cost below).
S-SGD is `protocol = "ssgd"` (every device its own group, the same sharing rule, ω = g = 120);
C-SGD is `protocol = "centralized"` with `slicenet.model = "paper-mlp"`: the same network,
BatchNorm included, the same trainer, learning rate and batch size, on one node holding all
60,000 samples: the fleet's first device, whose tier and speeds are drawn with the seed like every
device's, so C-SGD's simulated time varies with the seed (its interval is wide) far more than its
error.  Tables II–IV use the paper's m = 120, n = 12 (g = 10 groups), ω = 10 (θ = τ =
0.5 unless swept).  A seed fixes the data split, the fleet, the initial weights and every random
stream of a run; the same seed is used for every setting, so differences between settings are
paired over seeds.  Each cell is the mean ± the half-width of a 95 % Student-t interval over the
seeds listed; each ordering claim is the paired difference of test error (worse − better, in
points) with its 95 % interval and the paired t-test's p-value: **holds** when the interval lies
above 0, **fails** when below, **not shown** otherwise.

**Why {_epochs(epochs)}.** Measured here (in-process runs, CPU seconds of this process; the
column "CPU s per epoch" is the median over seeds, which leaves out the first run's TensorFlow
start-up and compilation): one 120-device epoch costs {_median([per_setting[k] for k in per_setting if per_setting[k] is not None]) if known else float('nan'):.1f} CPU s (median over settings,
{min(known) if known else float('nan'):.1f}–{max(known) if known else float('nan'):.1f} by setting; S-SGD trains 120 separate models and costs most).  The
machine's 2 cores were shared with other work while these ran, so the runs had to fit in about
an hour of a fraction of one core: one epoch per run lets Table I have 10 seeds per cell and the
sweeps as many seeds as the remaining time allowed (listed per cell); Table I after 50 epochs,
over fewer seeds, follows the sweeps.  The paper's set (50 epochs × 10 seeds × the {len(sets)}
settings here) costs, at the measured per-epoch CPU of each setting,
**≈ {full / 3600 if full else float('nan'):.0f} CPU-hours** ({'' if len(known) == len(sets) else 'settings not measured at the median of the measured ones; '}assuming every epoch costs what a
1-epoch run cost: every epoch trains the same passes, and a run's CPU here also holds its set-up and
evaluation, so this errs high).  Command
for it (a Ray cluster, resumable in `--out`):

    .venv/bin/python benchmarks/slicenet_experiments.py --epochs 50 --seeds 10 --sweep-seeds 10 \\
        --backend ray --address auto --write-docs

Orderings read after {_epochs(epochs)} may differ from the paper's after 50, above all in
Tables II–IV: sharing happens once per epoch (at its end, before the evaluation), so θ, τ and ω
act {"once" if epochs == 1 else f"{epochs} times"} per run.

**How far a rerun may drift.** Runs are deterministic for a seed on a given machine and library
set: {_drift(rows, epochs)}  Another BLAS, TensorFlow version or CPU (oneDNN's kernels change the
order of floating-point sums) changes single runs in their last digits and, through training,
by amounts of the order of the seed-to-seed spread; the intervals, not single values, are what
a rerun elsewhere should reproduce.  So does the code: since `429e3f4` (2026-12-03) a member's
top-θ upload is read when the server releases the epoch's uploads, so the passes train in fewer,
wider batches, which XLA rounds differently (the 120-device benchmark epoch: accuracy 0.796225 →
0.796092); the rows here were made before it.
""")
    paper1 = [("paper MNIST MLP %", lambda s: f"{PAPER['I'][s.label][0]:.2f}"),
              ("paper CIFAR-10 CNN %", lambda s: f"{PAPER['I'][s.label][1]:.2f}")]
    L.append("## Table I — error against group size n (θ = τ = 0.5, ω = g)\n")
    L += _table(t1, cells, epochs, paper1)
    L.append("")
    sizes = [s.label for s in t1 if s.label.startswith("n = ")]
    pairs = [("S-SGD", lab) for lab in sizes] + [(lab, "C-SGD") for lab in sizes]
    pairs += list(pairwise(sizes))
    pairs.append(("S-SGD", "C-SGD"))
    L.append("Reading: an epoch is one pass over a group's data, so a model of a group of n "
             "devices takes n × 500 / 32 ≈ 16n mini-batch steps per epoch (S-SGD ≈ 16, C-SGD "
             "1,875); after "
             f"{_epochs(epochs)} Table I's ordering is largely steps and data per model, and the "
             "absolute errors are far above the paper's 50-epoch MNIST figures (Fashion-MNIST is "
             "also the harder task).  Simulated time and bytes grow with n: the price of the "
             "larger groups.\n")
    L.append("Orderings (S-SGD worst, C-SGD best, error falling as n grows):\n")
    L += _claims(cells, pairs)
    L.append("")

    def paper_col(key, fmt=lambda x: x):
        return [("paper MNIST MLP %", lambda s: f"{PAPER[key][s.x]:.2f}")]

    L.append(f"## Table II — error against θ (n = {SWEEP_N}, g = 10, τ = 0.5, ω = {SWEEP_OMEGA})\n")
    L += _table(t2, cells, epochs, paper_col("II"))
    L.append("")
    L += _ordering("II", [s.label for s in t2], cells)
    L.append("")
    L.append(f"## Table III — error against τ (n = {SWEEP_N}, θ = 0.5, ω = {SWEEP_OMEGA})\n")
    L += _table(t3, cells, epochs, paper_col("III"))
    L.append("")
    lab3 = [s.label for s in t3]
    L += _ordering("III", lab3, cells)
    L.append("")
    L.append(f"U-shape in τ: {_u_shape(cells, lab3)}.\n")
    L.append(f"## Table IV — error against ω (n = {SWEEP_N}, θ = τ = 0.5)\n")
    L += _table(t4, cells, epochs, paper_col("IV"))
    L.append("")
    lab4 = [s.label for s in t4]
    L.append(f"U-shape in ω (the paper's best at ω = 10): {_u_shape(cells, lab4)}.\n")
    if epochs == 1:
        L.append("After one epoch each weight has at most g = 10 uploads in the window (one per "
                 "group), and a weight is downloaded only when its count exceeds ω·τ: with "
                 "ω ≥ 20 (ω·τ ≥ 10) nothing is downloaded and the runs equal τ = 1 (no "
                 "collaboration) to the bit, an artefact of reading after one epoch.  The ω = 10 "
                 "column is the θ = 0.5 run (the same point), whose CPU is listed there.\n")
    L += _ordering("IV", lab4, cells)
    L.append("")
    L += _previous(cells)
    missing = [s.label for s in sets if seeds_n.get(s.label, 0) < 10]
    if missing:
        L.append("Cells with fewer than 10 seeds (CPU budget; the command above completes them, "
                 "resuming what finished): " + ", ".join(
                     f"{lab} ({seeds_n.get(lab, 0)})" for lab in missing) + ".\n")
    for longer in sorted({int(r["epochs"]) for r in rows} - {epochs}):
        if longer > epochs:
            L += _long_table_one(rows, longer, paper1, pairs)
            L += _long_sweeps(rows, longer)
    L.append(_traffic_section())
    L += cnn_section([r for r in everything if r["model"] == "paper-cnn"], pairs)
    return "\n".join(L)


#: the 28x28x1 variant of the paper's CNN that ``slicenet.model = "paper-cnn"`` trains here
CNN_TEXT = ("conv 5×5 (64) → ReLU → max-pool 2 → conv 5×5 (128) → ReLU → max-pool 2 → flatten "
            "(2,048) → 128 → ReLU → 64 → ReLU → 10")


#: runs made on another machine than the others of their table, whose CPU seconds are therefore
#: not comparable: (model, label, epochs, seed) -> that machine (the figures come from the rows)
OTHER_MACHINE = {     # run: (the machine, its section of docs/benchmarks.md)
    ("paper-cnn", "n = 20", 50, 1): ("the twelfth session's machine (2 vCPUs of an AMD EPYC)",
                                     "Figures on a new machine, twelfth session"),
    ("paper-cnn", "S-SGD", 50, 1): ("the thirteenth session's machine (2 vCPUs of an AMD EPYC, "
                                    "the twelfth's kind; 2 TensorFlow threads)",
                                    "Thirteenth session"),
}


def other_machine_notes(rows: list[dict]) -> list[str]:
    """Per run of :data:`OTHER_MACHINE` in ``rows``: its CPU per epoch against the same setting's
    other runs of that length (each said scored after every epoch or only at the table's
    epochs), and how far their bytes differ (the same work).

    >>> row = lambda seed, cpu, scored: {"model": "paper-cnn", "label": "n = 20", "epochs": "50",
    ...     "seed": str(seed), "cpu_s": cpu, "scored_epochs": scored, "bytes_total": "1000"}
    >>> note, = other_machine_notes([row(0, "3000", ""), row(1, "5500", "1;50")])
    >>> "scored at the table's epochs, it took 110 CPU s per epoch against seed 0's 60 s" in note
    True
    >>> other_machine_notes([row(1, "5500", "1;50")])     # nothing to compare with
    []
    """
    def scoring(r):
        return "at the table's epochs" if r.get("scored_epochs") else "after every epoch"

    out = []
    for (model, label, epochs, seed), (machine, section) in OTHER_MACHINE.items():
        same = [r for r in rows if (r["model"], r["label"], int(r["epochs"])) ==
                (model, label, epochs) and r["cpu_s"] != ""]
        mine = [r for r in same if int(r["seed"]) == seed]
        others = [r for r in same if int(r["seed"]) != seed]
        if not mine or not others:
            continue
        r = mine[0]
        dbytes = max(abs(int(r["bytes_total"]) - int(o["bytes_total"])) / int(o["bytes_total"])
                     for o in others)
        out.append(
            f"{label} seed {seed} ran on {machine}, not on the machine of the other runs "
            f"(`docs/benchmarks.md`, \"{section}\"): scored "
            f"{scoring(r)}, it took {float(r['cpu_s']) / epochs:.0f} CPU s per epoch against "
            + ", ".join(f"seed {o['seed']}'s {float(o['cpu_s']) / epochs:.0f} s scored "
                        f"{scoring(o)}" for o in others)
            + f", for the same bytes to {100 * dbytes:.3f} %; so its CPU seconds are not "
            f"comparable with theirs, and {label}'s price above mixes the two machines")
    return out


def cnn_section(rows: list[dict], pairs) -> list[str]:
    """Table I trained with ``paper-cnn``: one table per run length present in ``rows`` (longest
    first), the paper's CIFAR-10 CNN figures beside ours, the same paired orderings as the MLP
    table's, and the measured cost of the paper's 50-epoch × 10-seed set.  Empty without rows."""
    if not rows:
        return []
    t1 = [s for s in settings() if s.table == "I"]
    labels = {s.label for s in t1}
    # CPU s per epoch by setting: from its runs of the paper's length where it has any (the
    # cost of such a run, scoring included as it was made), of those preferably the ones scored
    # at the table's epochs (the command's default for the CNN, so the set's price); else from
    # its shorter runs (set-up and a scoring every epoch weigh more there, so those err high)
    per_epoch: dict[str, dict[tuple[bool, bool], list[float]]] = {}
    for r in rows:
        if r["cpu_s"] != "":
            key = (int(r["epochs"]) >= 50, bool(r.get("scored_epochs")))
            per_epoch.setdefault(r["label"], {}).setdefault(key, []).append(
                float(r["cpu_s"]) / int(r["epochs"]))
    cost = {lab: _median(v.get((True, True)) or v.get((True, False))
                         or [x for k, xs in v.items() for x in xs])
            for lab, v in per_epoch.items() if lab in labels}
    from_long = sorted(lab for lab, v in per_epoch.items() if lab in labels
                       and (v.get((True, True)) or v.get((True, False))))
    long_every = sorted(lab for lab in from_long if not per_epoch[lab].get((True, True)))
    full = (sum(cost.get(s.label, _median(list(cost.values()))) for s in t1) * 50 * 10
            if cost else None)
    unpriced = [s.label for s in t1 if s.label not in cost]
    lengths = sorted({int(r["epochs"]) for r in rows}, reverse=True)
    cpu_all = sum(float(r["cpu_s"]) for r in rows if r["cpu_s"] != "")
    paper = [("paper CIFAR-10 CNN %", lambda s: f"{PAPER['I'][s.label][1]:.2f}")]
    L = ["## Table I with the paper's CNN\n",
         "The paper's Table I also trains its CNN on CIFAR-10 (32×32×3, not available offline "
         "here).  The same settings as Table I above, with `slicenet.model = \"paper-cnn\"` "
         f"in every run: the paper's CNN on 28×28×1 Fashion-MNIST ({CNN_TEXT}; the paper's "
         "32×32×3 input flattens to 3,200), 120 devices with the IID split of 500 samples "
         "each, mini-batch 32, learning rate 0.05, θ = τ = 0.5, ω = g, the same fleet and "
         "seeds.  A group's CNN is cut by feature map (a channel of a convolution, a unit of a "
         "dense layer is a vertex; METIS, edge cut) into n − 1 pieces beside the dominator; "
         "S-SGD trains 120 separate CNNs (`protocol = \"ssgd\"`); C-SGD is `protocol = "
         "\"centralized\"` with the same CNN, trainer, learning rate and batch size on one node "
         "holding all 60,000 samples (the fleet's first device, its tier drawn with the seed: "
         "C-SGD's simulated time varies with it).  Different dataset, so compare orderings, not the "
         "figures.\n"]
    for e in lengths:
        c = _by_label(rows, e)
        seeds = sorted({s for v in c.values() for s in v})
        paper_length = e >= 50
        head = (f"**The paper's {_epochs(e)}, {len(seeds)} seed{'s' if len(seeds) != 1 else ''} "
                f"({R.seeds_text(seeds)}), not its 10 seeds** (CPU budget, cost below)."
                if paper_length else
                f"**{_epochs(e)} and {len(seeds)} seed{'s' if len(seeds) != 1 else ''} "
                f"({R.seeds_text(seeds)}), not the paper's 50 epochs** (nor 10 seeds: CPU "
                "budget, cost below).")
        reading = ("  The paper's figures are after the same 50 epochs, on CIFAR-10."
                   if paper_length else
                   "  After so few epochs the ordering is largely steps and data per model (an "
                   "epoch gives a group's model ≈ 16n mini-batch steps, S-SGD's ≈ 16, C-SGD's "
                   "1,875), as in the MLP's 1-epoch Table I; the paper's figures are after 50 "
                   "epochs on CIFAR-10.")
        spread = (f"  Over {len(seeds)} seeds a 95 % interval is wide (Student's t with "
                  f"{len(seeds) - 1} degree{'s' if len(seeds) != 2 else ''} of freedom): "
                  "only large, consistent differences can be shown."
                  if 1 < len(seeds) < 10 else
                  "  With one seed there is no spread, so no ordering is tested: the cells "
                  "are single runs." if len(seeds) == 1 and paper_length else "")
        runs = [r for r in rows if int(r["epochs"]) == e]
        made = ("  " + how_made(runs, unrecorded="") + ", beside other work on the 2 cores; a "
                if all(r.get("pid", "") != "" for r in runs) else
                "  The runs of `nice -n 19 .venv/bin/python "
                f"benchmarks/slicenet_experiments.py --model paper-cnn --tables I --epochs {e} "
                f"--first-seed {seeds[0]} --seeds {seeds[-1] - seeds[0] + 1}`, split with "
                "`--first-seed`/`--only` over up to four processes at a time"
                + (" (S-SGD, whose 120 CNNs need the most memory, in its own)"
                   if "S-SGD" in c else "")
                + ", beside other work on the 2 cores; a ")
        L.append(head + made +
                 "cell's CPU per epoch is its process's CPU for that run, set-up and evaluation "
                 "included (the first run of a process also pays TensorFlow's start-up)."
                 + reading + spread + "\n")
        sets = [s for s in t1 if s.label in c]
        L += _table(sets, c, e, paper)
        L.append("")
        if any(_scored_only(c[s.label]) for s in sets):
            L.append(SCORED_NOTE + "\n")
        if len(sets) < len(t1):
            L.append("No run of " + ", ".join(s.label for s in t1 if s.label not in c)
                     + f" finished at {_epochs(e)} (CPU budget): "
                     "left out of the table, their orderings not measured.\n")
        L.append(f"Orderings after {_epochs(e)} (S-SGD worst, C-SGD best, error falling as n "
                 "grows; paired over the seeds both settings have, fewer than 2 seeds: not "
                 "measured):\n")
        L += _claims(c, pairs)
        L.append("")
    L.append(f"**Cost of the paper's set.**  The CNN runs above took {cpu_all / 60:.0f} "
             "CPU-minutes in all.  At the measured CPU per epoch of each setting (median over "
             + (f"its 50-epoch runs for {', '.join(from_long)}"
                + (", over its 1-epoch runs for the others, whose set-up and scoring weigh "
                   "more, so those err high" if set(cost) - set(from_long) else
                   ("; scored at the table's epochs (†, the command's default) where a "
                      "setting has such runs; " + ", ".join(long_every) + " only scored after "
                      "every epoch, so theirs err high" if long_every else
                      "; from their runs scored at the table's epochs (†), the command's "
                      "default"))
                if from_long else "its runs, set-up and evaluation included, so this errs high")
             + "): "
             + ", ".join(f"{lab} {cost[lab]:.0f} s" for lab in (s.label for s in t1)
                         if lab in cost)
             + (f" — the paper's 50 epochs × 10 seeds × {len(t1)} settings cost "
                f"**≈ {full / 3600:.0f} CPU-hours**"
                + ("" if not unpriced else
                   f" ({', '.join(unpriced)}: no run, priced at the median of the measured "
                   "settings" + (", likely low for S-SGD: with the MLP its 120 separate "
                                 "models cost the most per epoch (Table I above)"
                                 if "S-SGD" in unpriced else "") + ")")
                + ".  Command (a Ray cluster, resumable in `--out`):\n"
                if full is not None else ".\n"))
    L.append("    .venv/bin/python benchmarks/slicenet_experiments.py --model paper-cnn "
             "--tables I --epochs 50 --seeds 10 \\\n        --backend ray --address auto "
             "--write-docs\n")
    elsewhere = other_machine_notes(rows)
    if elsewhere:
        L.append("**Runs on another machine.**  " + "; ".join(elsewhere) + ".\n")
    return L


def how_made(rows: list[dict], *, unrecorded: str) -> str:
    """How the runs of ``rows`` were made, from what each row stores (:data:`PROVENANCE`): the
    processes (process id and command line), their niceness, how many ran at once (their
    stored start and end times overlapping) and the load average at the runs' ends.  Rows
    without the record (written before it existed) are counted and ``unrecorded`` says what is
    known of them.

    >>> rows = [{"argv": "x.py --first-seed 0", "nice": "19", "pid": "7", "started": "0",
    ...          "ended": "10", "load": "3.5"},
    ...         {"argv": "x.py --first-seed 1", "nice": "19", "pid": "8", "started": "5",
    ...          "ended": "20", "load": "4.0"}, {"pid": ""}]
    >>> print(how_made(rows, unrecorded="not recorded"))
    2 runs made by 2 processes at `nice -n 19`, at most 2 at a time (load average 3.5–4.0 at \
the runs' ends): `x.py --first-seed 0`; `x.py --first-seed 1`; 1 run not recorded
    """
    rec = [r for r in rows if r.get("pid", "") != ""]
    old = len(rows) - len(rec)
    if not rec:
        return unrecorded
    procs: dict[tuple[str, str], tuple[float, float]] = {}
    for r in rec:
        key, s, e = (r["pid"], r["argv"]), float(r["started"]), float(r["ended"])
        lo, hi = procs.get(key, (s, e))
        procs[key] = (min(lo, s), max(hi, e))
    at_once = peak = 0     # an end before a start at the same instant
    edges = [(s, 1) for s, _ in procs.values()] + [(e, -1) for _, e in procs.values()]
    for _, step in sorted(edges):
        at_once += step
        peak = max(peak, at_once)
    nices = "/".join(sorted({str(r["nice"]) for r in rec}, key=int))
    loads = sorted(float(r["load"]) for r in rec if r.get("load", "") != "")
    cmds = sorted({r["argv"] for r in rec})
    text = (f"{len(rec)} run{'s' if len(rec) != 1 else ''} made by {len(procs)} "
            f"process{'es' if len(procs) != 1 else ''} at `nice -n {nices}`, at most {peak} at "
            "a time"
            + (f" (load average {loads[0]:.1f}–{loads[-1]:.1f} at the runs' ends)" if loads
               else "")
            + ": " + "; ".join(f"`{c}`" for c in cmds[:4])
            + (f" and {len(cmds) - 4} more commands" if len(cmds) > 4 else ""))
    return text + (f"; {old} run{'s' if old != 1 else ''} {unrecorded}" if old else "")


#: what the page said of the 50-epoch runs before their rows stored how they were made
UNRECORDED = "not recorded with the rows (written before they stored the command, niceness and " \
    "process); the page's hand-written note of the time"


def _long_table_one(rows, epochs, paper1, pairs) -> list[str]:
    """Table I from the runs of ``epochs`` epochs (the paper's 50), however few their seeds."""
    cells = _by_label(rows, epochs)
    t1 = [s for s in settings() if s.table == "I" and s.label in cells]
    if not t1:
        return []
    mine = [r for r in rows if int(r["epochs"]) == epochs and r["label"] in cells
            and r["table"] == "I"]
    seeds = sorted({int(r["seed"]) for r in mine})      # Table I's own runs, not the sweeps'
    cpu = sum(float(r["cpu_s"]) for r in mine if r["cpu_s"] != "")
    how = how_made(mine, unrecorded=UNRECORDED + ": `benchmarks/slicenet_experiments.py "
                   f"--epochs {epochs} --first-seed S --seeds 1 --sweep-seeds 0 --tables I` "
                   "for each seed S, one process per seed at `nice -n 19`, two at a time, "
                   "beside other work")
    L = [f"## Table I after {_epochs(epochs)}\n",
         f"The same settings run for {_epochs(epochs)}.  How the runs were made: {how}.  The "
         f"runs' CPU time sums to {cpu / 3600:.1f} CPU-hours (a cell's CPU per epoch is its "
         "process's, the set-up and evaluation included).  "
         f"Seeds {R.seeds_text(seeds)}"
         + (": **fewer than 10**, because a Table I of this length costs "
            f"{cpu / 3600 / len(seeds):.1f} CPU-hours per seed here (measured, above); over so few seeds a 95 % interval is wide (Student's t with "
            f"{len(seeds) - 1} degree{'s' if len(seeds) != 2 else ''} of freedom), so only "
            "large differences can be shown" if len(seeds) < 10 else "")
         + ".  Settings without a run are left out.\n"]
    L += _table(t1, cells, epochs, paper1)
    L.append("")
    L.append(f"Orderings after {_epochs(epochs)} (paired over the seeds both settings have; "
             "fewer than 2 seeds: not measured):\n")
    L += _claims(cells, [p for p in pairs if p[0] in cells and p[1] in cells])
    L.append("")
    png = _curve_plot(cells, epochs, t1)
    if png:
        L.append(f"![test error against epoch, {_epochs(epochs)}]({png})\n")
    return L


def _shape(labels, errs, knob: str) -> str:
    """How an error moves along a sweep, in words (a description, not a test)."""
    steps = [b - a for a, b in pairwise(errs)]
    if all(d < 0 for d in steps):
        return f"falls at every step as {knob} grows"
    if all(d > 0 for d in steps):
        return f"rises at every step as {knob} grows"
    best = labels[min(range(len(errs)), key=errs.__getitem__)]
    ends = best not in (labels[0], labels[-1])
    return (f"is lowest at {best}" + (", with both ends higher" if ends else "")
            + f" (it rises at {sum(d > 0 for d in steps)} of {len(steps)} steps)")


def _direction(cells, sets, key: str, knob: str, seed: int) -> str:
    """One seed's final error along a sweep beside the paper's, in words (no test: one seed)."""
    labels = [s.label for s in sets]
    errs = [_vals(cells[lab], seeds=[seed])[0] for lab in labels]
    paper = [PAPER[key][s.x] for s in sets]
    seq = " → ".join(f"{v:.2f}" for v in errs)
    return (f"One seed ({seed}), final error by {knob}: {seq} % — it "
            f"{_shape(labels, errs, knob)}; "
            f"over the same points the paper's MNIST error "
            f"{_shape(labels, paper, knob)}.")


def _ordering(table: str, labels: list[str], cells) -> list[str]:
    """The claims a sweep table is read by, the same after any number of epochs: Table II
    error falling as θ grows (each step and end to end), Table III every τ < 1 better than
    τ = 1 (error falling as τ falls below 1), Table IV every ω against the paper's best ω = 10.
    ``labels`` in the grid's order."""
    if table == "II":
        head = "Ordering (error falling as θ grows):\n"
        pairs = list(pairwise(labels)) + [(labels[0], labels[-1])]
    elif table == "III":
        head = ("Ordering (error falling as τ falls below 1; the paper's U-shape with its best "
                "at τ = 0.4):\n")
        pairs = [(labels[-1], lab) for lab in labels[:-1]]
    else:
        best = f"ω = {SWEEP_OMEGA}"
        head = f"Against the paper's best, {best}:\n"
        pairs = [(lab, best) for lab in labels if lab != best]
    return [head] + _claims(cells, pairs)


def _long_sweeps(rows, epochs) -> list[str]:
    """Tables II–IV from the runs of ``epochs`` epochs (the paper's 50), however few seeds."""
    cells = _by_label(rows, epochs)
    sets = settings()
    tables = [(k, knob, [s for s in sets if s.table == k and s.label in cells])
              for k, knob in (("II", "θ"), ("III", "τ"), ("IV", "ω"))]
    tables = [t for t in tables if t[2]]
    if not tables:
        return []
    # a table's seeds: those every cell of it has (a paired claim needs the seed in both cells)
    common = {k: sorted(set.intersection(*(set(cells[s.label]) for s in ts)))
              for k, _, ts in tables}
    one = [k for k, _, _ in tables if len(common[k]) < 2]
    cpu = sum(float(cells[s.label][sd]["cpu_s"]) for _, _, ts in tables for s in ts
              for sd in cells[s.label] if cells[s.label][sd]["cpu_s"] != "")
    tabs = " ".join(k for k, _, _ in tables)
    mine = [cells[s.label][sd] for _, _, ts in tables for s in ts for sd in cells[s.label]]
    how = how_made(mine, unrecorded=UNRECORDED + ": `benchmarks/slicenet_experiments.py "
                   f"--epochs {epochs} --seeds 0 --sweep-seeds 1 --tables {tabs}`, split over "
                   "processes with `--tables` and `--only`")
    L = [f"## Tables II–IV after {_epochs(epochs)}\n",
         f"The sweeps run for {_epochs(epochs)} at the paper's m = 120, n = {SWEEP_N}, "
         f"ω = {SWEEP_OMEGA} (θ = τ = 0.5 unless swept).  How the runs were made: {how}.  The "
         f"runs' CPU time sums to {cpu / 3600:.1f} CPU-hours.  Seeds "
         + "; ".join(f"Table {k}: {R.seeds_text(common[k]) or 'none common to its cells'}"
                     for k, _, _ in tables)
         + (f" (the seeds every cell of the table has).  **One seed** in Table"
            f"{'s' if len(one) > 1 else ''} {R.and_list(one)}, so no ordering there is a "
            "tested claim: the line after such a table says how that seed's error moves, which "
            "a second seed could contradict (the 1-epoch tables above show the seed-to-seed "
            "spread of a cell)" if one else " (the seeds every cell of the table has)") + ".\n"]
    for k, knob, ts in tables:
        def paper(s, key=k):
            return f"{PAPER[key][s.x]:.2f}"
        L.append(f"### Table {k} after {_epochs(epochs)} — error against {knob}\n")
        L += _table(ts, cells, epochs, [("paper MNIST MLP %", paper)])
        L.append("")
        labels = [s.label for s in ts]
        if k in one:
            L.append((_direction(cells, ts, k, knob, common[k][0]) if common[k] else
                      "No seed was run in every cell of this table.") + "\n")
        else:
            L += _ordering(k, labels, cells)
            L.append("")
            if k != "II":
                L.append(f"U-shape in {knob}: {_u_shape(cells, labels)}.\n")
    return L


def _curve_plot(cells, epochs, sets) -> str | None:
    """Mean test error per epoch of each setting (a line per setting, seeds averaged)."""
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:             # the doc still renders without the figure
        return None
    name = f"slicenet_table1_{epochs}.png"
    fig, ax = plt.subplots(figsize=(6.4, 4.0))
    for s in sets:
        curve = [_epoch_vals(cells[s.label], e) for e in range(1, epochs + 1)]
        xs = [e for e, v in zip(range(1, epochs + 1), curve, strict=True) if v]
        ax.plot(xs, [sum(v) / len(v) for v in curve if v], label=s.label)
    ax.set_xlabel("epoch")
    ax.set_ylabel("test error % (mean over seeds)")
    ax.set_yscale("log")
    ax.set_title(f"Table I settings on Fashion-MNIST, {_epochs(epochs)}")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(DOC.parent / name, dpi=100, metadata={"Software": None})
    plt.close(fig)
    return name


def _previous(cells) -> list[str]:
    """The previous version's single-seed claims beside what the seeds now say."""
    def v(worse, better):
        d, verdict = compare(cells, worse, better)
        return f"{worse} − {better}: {d}, **{verdict}**"

    return ["## Claims of the previous version (one seed), re-tested\n",
            "The previous page read its orderings from seed 0 alone (Table I at 2 epochs, before "
            "issue 15's protocol fixes: S-SGD 38.87 %, n = 5 / 10 / 20: 21.5 / 17.53 / 15.72 %, "
            "C-SGD 12.96 %, then `ssgd` with one device; θ, τ, ω at n = 10, ω = g, 5 epochs).  "
            "Its claims, with the paired test over the seeds above (different epochs, so the "
            "figures are not comparable, the directions are):\n",
            f"* \"Table I — the ordering holds\": {v('S-SGD', 'n = 5')}; "
            f"{v('n = 20', 'C-SGD')}; {v('n = 5', 'n = 10')}; {v('n = 10', 'n = 15')}; "
            f"{v('n = 15', 'n = 20')}.",
            f"* \"θ: error falls as θ grows (16.66 → 14.69 → 14.57 %)\": {v('θ = 0.1', 'θ = 0.5')}; "
            f"{v('θ = 0.5', 'θ = 0.9')}.",
            f"* \"τ: error falls as τ falls below 1 (17.15 % at τ = 1, 14.69 % at 0.5, 14.4 % at "
            f"0)\": {v('τ = 1.0', 'τ = 0.4')}; {v('τ = 0.4', 'τ = 0.0')}.",
            "* \"ω = 4 and ω = g within one seed's noise\": ω = 4 is not on the paper's grid; "
            "see Table IV's tests against ω = 10.", ""]


def _median(xs) -> float:
    xs = sorted(xs)
    m = len(xs) // 2
    return xs[m] if len(xs) % 2 else (xs[m - 1] + xs[m]) / 2


def _epochs(e: int) -> str:
    return f"{e} epoch" + ("" if e == 1 else "s")


def _drift(rows, epochs) -> str:
    reruns = [r for r in rows if int(r["epochs"]) == epochs and r["table"] == "rerun"]
    if not reruns:
        return "no same-seed rerun was recorded in this file."
    first = {(r["label"], r["seed"]): r for r in rows
             if int(r["epochs"]) == epochs and r["table"] != "rerun"}
    parts = []
    for r in reruns:
        o = first.get((r["label"].removeprefix("rerun "), r["seed"]))
        if o is None:
            continue
        de = abs(float(r["error_pct"]) - float(o["error_pct"]))
        dt = abs(float(r["sim_time_s"]) - float(o["sim_time_s"]))
        db = abs(int(r["bytes_total"]) - int(o["bytes_total"]))
        parts.append(f"{o['label']}, seed {o['seed']}, run twice in different processes: test "
                     f"error differs by {de:g} points, simulated time by {dt:g} s, bytes by {db}.")
    return " ".join(parts) if parts else "no same-seed rerun was recorded in this file."


def _traffic_section() -> str:
    tt = ["| n (n − 1 pieces) | METIS balance | traffic B/sample (cut) | largest piece B/sample "
          "| traffic B/sample (volume objective) |", "| --- | --- | --- | --- | --- |"]
    tt += [f"| {n} | {b:.4f} | {t} | {m} | {v} |" for n, b, t, m, v in traffic_table()]
    return f"""## Traffic per training sample (paper-mlp, forward + backward, weighted-sum refinement)

Bytes per sample of one pass, from the METIS plans (no training; the same on every seed);
relayed through the server every byte crosses the network twice.

{chr(10).join(tt)}

A group of n devices cuts the hidden layers into n − 1 pieces (the dominator holds the input
and output layers).  The default objective stays the paper's edge cut
(`slicenet.objective = "cut"`); `"volume"` sends 25–33 % less at the same balance.
"""


# ---------------------------------------------------------------- main
def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--epochs", type=int, default=2, help="epochs per run (paper: 50)")
    ap.add_argument("--seeds", type=int, default=10, help="seeds 0..N-1 for Table I")
    ap.add_argument("--first-seed", type=int, default=0,
                    help="start the seeds here (to split a set over processes: each runs "
                         "--first-seed K --seeds N for its own K..K+N-1)")
    ap.add_argument("--sweep-seeds", type=int, default=10,
                    help="seeds 0..N-1 for the θ, τ, ω sweeps (0 = skip them)")
    ap.add_argument("--tables", nargs="+", default=["I", "II", "III", "IV"],
                    choices=["I", "II", "III", "IV"])
    ap.add_argument("--only", nargs="+", default=None, metavar="LABEL",
                    help='only these settings of the chosen tables, by label, e.g. "n = 10" C-SGD')
    ap.add_argument("--model", choices=MODELS, default=DEFAULT_MODEL,
                    help="the network of every run (paper-cnn: Table I only, the paper's CNN "
                         "on 28x28x1 Fashion-MNIST; rows keep their model in the CSV)")
    ap.add_argument("--score", choices=["table", "every"], default=None,
                    help="score the models on the test set only after the epochs the table "
                         "shows (table) or after every epoch (every); default: table for "
                         "paper-cnn, whose S-SGD and n = 5 runs spend most of their CPU "
                         "scoring 120 and 24 models, every for paper-mlp")
    ap.add_argument("--merge-rows", type=Path, default=None, metavar="CSV",
                    help="merge the rows of another CSV of this script (either format; rows "
                         "without a model column are paper-mlp's) into the data file, then stop")
    ap.add_argument("--backend", choices=["local", "ray"], default="local")
    ap.add_argument("--jobs", type=int, default=1,
                    help="worker processes running (setting, seed) runs side by side, each with "
                         "its share of the cores as TensorFlow threads unless --threads says / "
                         "Ray CPUs")
    ap.add_argument("--address", default=None, help="Ray cluster address (default: local)")
    ap.add_argument("--threads", type=int, default=0,
                    help="TensorFlow threads per op in every run (training.threads; default 0: "
                         "TensorFlow's, every core, or with --jobs J each run's share, "
                         "cores // J).  The count is part of a run's config: a folder's runs "
                         "are resumed with the same count")
    ap.add_argument("--out", type=Path, default=None,
                    help="sweep folder (default results/slicenet_experiments/epochs=E)")
    ap.add_argument("--rerun-check", action="store_true",
                    help="run n = 10, seed 0 once more in a fresh folder (drift on rerun)")
    ap.add_argument("--write-docs", action="store_true")
    ap.add_argument("--render", action="store_true",
                    help="only re-render the doc from the CSV (no runs)")
    a = ap.parse_args(argv)
    if a.threads < 0:
        ap.error(f"--threads must be ≥ 0; got {a.threads}")
    if a.epochs < 1 or a.seeds < 0 or a.sweep_seeds < 0 or a.first_seed < 0:
        ap.error(f"--epochs must be ≥ 1 and --seeds/--sweep-seeds/--first-seed ≥ 0; got "
                 f"{a.epochs}, {a.seeds}, {a.sweep_seeds}, {a.first_seed}")
    if a.model != DEFAULT_MODEL and set(a.tables) - {"I"}:
        ap.error(f"--model {a.model} runs Table I only (the paper's CNN figures are Table I's); "
                 f"got --tables {' '.join(a.tables)}: pass --tables I")
    cmd = "benchmarks/slicenet_experiments.py " + " ".join(argv if argv is not None
                                                            else sys.argv[1:])
    if a.merge_rows is not None:
        rows = read_rows(a.merge_rows)
        if not rows:
            ap.error(f"--merge-rows: no rows in {a.merge_rows} (missing or empty file)")
        save_rows(rows)
        print(f"merged {len(rows)} rows of {a.merge_rows} into {DATA}")
        return 0
    if a.render:
        rows = load_rows()
        held = sorted({int(r["epochs"]) for r in rows if with_model(r)["model"] == DEFAULT_MODEL})
        if held and a.epochs not in held:
            # (the page's tables are of --epochs runs; longer runs get sections of their own)
            ap.error(f"--render --epochs {a.epochs}: no {DEFAULT_MODEL} row of {a.epochs} "
                     f"epochs in {DATA.relative_to(ROOT)} (it holds "
                     f"{', '.join(map(str, held))}); pass the page's own, e.g. --epochs "
                     f"{held[0]}, which its header names")
        DOC.write_text(render(rows, a.epochs, cmd))
        print(f"wrote {DOC.relative_to(ROOT)}")
        return 0
    score = a.score or ("table" if a.model == "paper-cnn" else "every")
    out = a.out or ROOT / "results" / "slicenet_experiments" / (
        (f"epochs={a.epochs}" if a.model == DEFAULT_MODEL else f"{a.model}/epochs={a.epochs}")
        + ("-scored-at-table-epochs" if score == "table" else ""))
    if a.backend == "ray":
        import ray
        ray.init(address=a.address, num_cpus=None if a.address else a.jobs,
                 include_dashboard=False, log_to_driver=False)
    t0 = time.perf_counter()
    sets = [s for s in settings() if s.table in a.tables]
    if a.only is not None:
        unknown = sorted(set(a.only) - {s.label for s in sets})
        if unknown:
            ap.error(f"--only: no setting labelled {', '.join(map(repr, unknown))} in tables "
                     f"{' '.join(a.tables)}; labels: {', '.join(s.label for s in sets)}")
        sets = [s for s in sets if s.label in a.only]
    seen: set[str] = set()
    plan = []                # (setting, seeds): Table I first; seed-outer so cuts stay balanced
    for table, n in (("I", a.seeds), ("sweeps", a.sweep_seeds)):
        group = [s for s in sets if (s.table == "I") == (table == "I")]
        if a.backend == "ray":
            plan += [(s, list(range(a.first_seed, a.first_seed + n))) for s in group]
        else:
            plan += [(s, [seed]) for seed in range(a.first_seed, a.first_seed + n)
                     for s in group]
    kw = dict(epochs=a.epochs, out=out, backend=a.backend, jobs=a.jobs, address=a.address,
              model=a.model, how=provenance(cmd),
              scored=table_epochs(a.epochs) if score == "table" else None, threads=a.threads)
    def report(rows: list[dict], t: float) -> None:
        save_rows(rows)          # after every call: an interrupted set keeps what finished
        for r in rows:
            tag = (r["label"], r["seed"])
            if tag not in seen:
                seen.add(tag)
                print(json.dumps({k: r[k] for k in ("label", "seed", "error_pct", "sim_time_s",
                                                    "bytes_total", "cpu_s")})
                      + f" wall {time.perf_counter() - t:.0f} s", flush=True)

    if a.backend == "local" and a.jobs > 1 and len(plan) > 1:
        # each (setting, seed) is a sweep of one run: side by side in worker processes, each
        # run with its share of the cores as TensorFlow's pools (crowdlearn.training.threads)
        import multiprocessing
        from concurrent.futures import ProcessPoolExecutor, as_completed

        from crowdlearn.signals import as_interrupts, pool_worker_init
        from crowdlearn.sweeps import stop_pool
        from crowdlearn.training.threads import threads_for

        side = min(a.jobs, len(plan))
        pkw = {**kw, "jobs": 1, "threads": a.threads or threads_for(os.cpu_count() or 1, side)}
        print(f"{len(plan)} runs, {side} at a time, {pkw['threads']} TensorFlow thread(s) per "
              f"op each", flush=True)
        # SIGTERM to this process alone stops the set as Ctrl-C does: forwarded to the workers,
        # which ignore signals between runs (crowdlearn.sweeps.stop_pool)
        with ProcessPoolExecutor(side, mp_context=multiprocessing.get_context("spawn"),
                                 initializer=pool_worker_init) as pool, as_interrupts():
            started = {pool.submit(_run_in_worker, s, seeds, pkw): time.perf_counter()
                       for s, seeds in plan}
            try:
                for f in as_completed(started):
                    report(f.result(), started[f])
            except BaseException as exc:
                stop_pool(pool, [f for f in started if not f.done()], exc)
                for f in started:        # settings that finished meanwhile: keep their rows
                    if f.done() and not f.cancelled() and f.exception() is None:
                        report(f.result(), started[f])
                raise
    else:
        for s, seeds in plan:
            t = time.perf_counter()
            report(run_setting(s, seeds, **kw), t)
    if a.rerun_check:
        s = next(x for x in settings() if x.label == "n = 10")
        rows = run_setting(Setting("rerun", "rerun n = 10", s.values), [0],
                           **{**kw, "out": out.parent / f"{out.name}-rerun"})
        save_rows([{**r, "table": "rerun"} for r in rows])
    wall = time.perf_counter() - t0
    if a.backend == "ray":
        import ray
        ray.shutdown()
    if a.write_docs:
        DOC.write_text(render(load_rows(), a.epochs, cmd))
        print(f"runs of this invocation: {wall / 60:.1f} min wall")
        print(f"wrote {DOC.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    from crowdlearn.signals import run_script  # Ctrl-C, or SIGTERM/SIGHUP during --jobs runs

    raise SystemExit(run_script(main, f"the rows of the runs that finished are in "
                                      f"{DATA.relative_to(ROOT)}, a run it stopped keeps what it "
                                      "measured in its folder; the same command resumes"))
