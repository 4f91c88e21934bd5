"""Encrypted ASGD (Phong et al.) against plaintext ASGD, DSSGD and FedAvg on one fleet, over seeds: ``docs/experiments/encrypted_asgd.md``.

Every run: MLP 784-128-64-10 (109,386 weights) on Fashion-MNIST, ``--devices`` participants with
an iid split, ``--rounds`` epochs per participant (a Phong/DSSGD turn and a FedAvg round are both
one local epoch per participant), batch 32, lr 0.05:

* ``phong`` with ``he.scheme`` = none / paillier (3072-bit, prec 32, pad 15) / lwe (Phong's
  parameters, one processing unit), ``round_robin`` so all three follow the same schedule; the
  encrypted runs use ``he.mode = "priced"`` (identical weights, bytes and simulated times to
  ``real``: ``tests/test_phong.py::test_real_and_priced_modes_give_identical_weights_bytes_and_times``)
  with crypto times from the calibration cached on this host (``crowdlearn/crypto/costs.py``);
* ``hres`` (2048-bit, prec 32, pad 15), round robin, priced, the same schedule;
* ``dssgd`` round robin, θu = 0.1, θd = 1 (the paper's setting);
* ``fedavg`` with every participant in every round.

``--examples`` also runs the three example configs (``examples/phong_paillier_fashion.toml``,
``phong_lwe_fashion.toml``, ``hres_fashion.toml``) with their real big-number cryptography, and
each once more priced, for ``--example-seeds``.

One CSV row per (setting, seed) is merged into ``docs/experiments/data/encrypted_asgd.csv`` as
each run finishes (resumable: rows present are not rerun); ``--render`` rebuilds the doc from
that file alone (cells: mean ± 95 % t half-width over seeds; claims: paired differences,
:mod:`results_doc`); the communication-factor table is computed from the schemes' encoded sizes
(exact, no seed).

Usage::

    nice -n 10 .venv/bin/python benchmarks/encrypted_asgd_experiments.py --seeds 0-29 \\
        --examples --example-seeds 0-2 --write-docs
    .venv/bin/python benchmarks/encrypted_asgd_experiments.py --render
    .venv/bin/python benchmarks/encrypted_asgd_experiments.py --quick     # seconds, temp folder
"""

from __future__ import annotations

import argparse
import gc
import math
import os
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import results_doc as R  # noqa: E402

DOC = ROOT / "docs" / "experiments" / "encrypted_asgd.md"
DATA = ROOT / "docs" / "experiments" / "data" / "encrypted_asgd.csv"
#: the environments the rows were measured in (``results_doc.record_environment``)
ENV = DATA.with_suffix(".env.json")
FIELDS = ("setting", "seed", "devices", "rounds", "mode", "final", "best", "bytes_total",
          "bytes_up", "bytes_down", "sim_s", "comm_factor", "cal_encrypt_s", "cal_decrypt_s",
          "cal_dsp_s", "cal_kts_s", "host_gflops", "completed", "cpu_s", "wall_s", "load")
MIN_SEEDS = 10
PLAIN, PAILLIER, LWE, HRES = ("ASGD plaintext (phong, none)", "Phong Paillier-3072", "Phong LWE",
                              "HRES-2048 (Tang et al.)")
DSSGD, FEDAVG = "DSSGD θu=0.1", "FedAvg (all)"
EXAMPLES = {"example paillier": "examples/phong_paillier_fashion.toml",
            "example lwe": "examples/phong_lwe_fashion.toml",
            "example hres": "examples/hres_fashion.toml"}


def configs(devices: int, rounds: int, seed: int, *, dataset: str = "fashion_mnist") -> dict[str, dict]:
    base = {"seed": seed, "rounds": rounds,
            "data": {"dataset": dataset, "partition": "iid"},
            "model": {"arch": "mlp", "hidden": [128, 64]},
            "fleet": {"devices": devices, "cells": 1}}
    he = {"order": "round_robin", "mode": "priced", "batch_size": 32, "lr": 0.05}
    return {
        PLAIN: {**base, "protocol": "phong", "he": {**he, "scheme": "none"}},
        PAILLIER: {**base, "protocol": "phong",
                   "he": {**he, "scheme": "paillier", "key_bits": 3072}},
        LWE: {**base, "protocol": "phong", "he": {**he, "scheme": "lwe"}},
        HRES: {**base, "protocol": "hres", "he": {**he, "key_bits": 2048}},
        DSSGD: {**base, "protocol": "dssgd",
                "dssgd": {"order": "round_robin", "theta_u": 0.1, "batch_size": 32, "lr": 0.05}},
        FEDAVG: {**base, "protocol": "fedavg",
                 "fedavg": {"clients_per_round": devices, "batch_size": 32, "lr": 0.05}},
    }


def example_config(name: str, seed: int):
    """An example config at ``seed``; ``"… priced"`` the same with ``he.mode = "priced"``."""
    from crowdlearn.config import load

    priced = name.endswith(" priced")
    return load(ROOT / EXAMPLES[name.removesuffix(" priced")],
                [f"seed={seed}", *(['he.mode="priced"'] if priced else [])])


def run_one(name: str, seed: int, cfg) -> dict:
    from crowdlearn.experiment import Simulation

    t0, c0 = time.perf_counter(), time.process_time()
    s = Simulation(cfg).run().summary
    cal = s.get("crypto_calibration") or {}
    he = s.get("he") or {}
    row = {"setting": name, "seed": seed, "devices": cfg.fleet.devices, "rounds": cfg.rounds,
           "mode": he.get("mode", ""), "final": s["final_accuracy"], "best": s["best_accuracy"],
           "bytes_total": s["bytes_total"], "bytes_up": s["bytes_up"], "bytes_down": s["bytes_down"],
           "sim_s": round(s["sim_time_s"], 3), "comm_factor": s.get("comm_factor", ""),
           "cal_encrypt_s": cal.get("encrypt_s", ""), "cal_decrypt_s": cal.get("decrypt_s", ""),
           "cal_dsp_s": cal.get("dsp_stage_s", ""), "cal_kts_s": cal.get("kts_stage_s", ""),
           "host_gflops": round(cal["host_flops"] / 1e9, 2) if "host_flops" in cal else "",
           "completed": s["completed"], "cpu_s": round(time.process_time() - c0, 2),
           "wall_s": round(time.perf_counter() - t0, 2), "load": round(os.getloadavg()[0], 2)}
    print(f"seed {seed} {name:30s} final {row['final']:.4f} bytes {row['bytes_total']} "
          f"sim {row['sim_s']:.1f} s cpu {row['cpu_s']} s", flush=True)
    return row


def measure(seeds, *, devices: int, rounds: int, data: Path, dataset: str, examples=(),
            only=None) -> None:
    from crowdlearn.config import from_dict

    key = ("setting", "seed")
    R.record_environment(data.with_suffix(".env.json"))
    for seed in seeds:
        done = {(r["setting"], int(r["seed"])) for r in R.read_rows(data)
                if r["completed"] == "True"}   # an interrupted run is run again
        for name, raw in configs(devices, rounds, seed, dataset=dataset).items():
            if (name, seed) not in done and (only is None or name in only):
                R.merge_rows(data, FIELDS, [run_one(name, seed, from_dict(raw))], key)
                gc.collect()   # a finished simulation holds cycles: free them per run
    for seed in examples:
        done = {(r["setting"], int(r["seed"])) for r in R.read_rows(data)
                if r["completed"] == "True"}   # an interrupted run is run again
        for name in EXAMPLES:
            for n in (name, f"{name} priced"):
                if (n, seed) not in done:
                    R.merge_rows(data, FIELDS, [run_one(n, seed, example_config(n, seed))], key)
                    gc.collect()


# ---------------------------------------------------------------- rendering
by_setting = R.by_setting_seed
_col = R.column


def _claim(d, claim, a, b, key="final", **kw) -> str:
    return R.claim_between(d, claim, a, b, key, min_seeds=MIN_SEEDS, **kw)


_identical = R.identical_seeds


def factor_rows() -> list[tuple]:
    """Phong's formula against the schemes' encoded sizes for the 109,386 MLP weights (exact)."""
    from crowdlearn.crypto.schemes import make_scheme

    n = 109_386
    out = []
    for label, name, kw, formula, value, paper in (
            ("Paillier 3072-bit, prec 32, pad 15", "paillier", {"key_bits": 3072},
             "2(1 + pad/prec)", 2 * (1 + 15 / 32), "2.93"),
            ("Paillier 2048-bit, prec 32, pad 15", "paillier", {"key_bits": 2048},
             "2(1 + pad/prec)", 2 * (1 + 15 / 32), "—"),
            ("LWE, n_lwe 3000, q 2^77, 1 unit", "lwe", {},
             "n_pu·n_lwe·log₂q/(n_gd·prec) + log₂q/prec", 3000 * 77 / (n * 32) + 77 / 32, "2.47"),
            ("HRES 2048-bit (two elements of Z_{N²})", "hres", {"key_bits": 2048}, "—",
             math.nan, "—")):
        s = make_scheme(name, mode="priced", length=n, **kw)
        what = (f"{s.ciphertexts:,} ciphertexts × {(2 * s.key_bits + 7) // 8 * (2 if name == 'hres' else 1):,} B"
                if getattr(s, "ciphertexts", 0) else "")
        out.append((label, formula, value, s.nbytes, what, s.nbytes / (4 * n), paper))
    return out


def factor_table() -> list[str]:
    out = ["| scheme | Phong's formula | formula value | encoded bytes | factor | Phong reports |",
           "| --- | --- | ---: | ---: | ---: | ---: |"]
    for label, formula, value, nbytes, what, factor, paper in factor_rows():
        v = "—" if math.isnan(value) else f"{value:.4f}"
        out.append(f"| {label} | {formula} | {v} | {nbytes:,}{f' ({what} + header)' if what else ''}"
                   f" | **{factor:.3f}** | {paper} |")
    return out


def main_table(d, rounds: int) -> list[str]:
    out = ["| run | seeds | final accuracy | bytes per epoch (MB) | simulated s per epoch | "
           "comm_factor |", "| --- | ---: | ---: | ---: | ---: | ---: |"]
    for n in (PLAIN, PAILLIER, LWE, HRES, DSSGD, FEDAVG):
        if n not in d:
            continue
        cf = _col(d, n, "comm_factor")
        out.append(f"| {n} | {len(d[n])} | {R.cell(_col(d, n, 'final'), 4)} | "
                   f"{R.exact_or_cell(_col(d, n, 'bytes_total', 1e-6 / rounds), 2)} | "
                   f"{R.cell(_col(d, n, 'sim_s', 1 / rounds), 1)} | "
                   f"{'—' if all(math.isnan(c) for c in cf) else R.exact_or_cell(cf, 3)} |")
    return out


def claims(d, rounds: int) -> list[str]:
    same, n = _identical(d, HRES, PAILLIER)
    r_lwe = R.bootstrap_ratio(_col(d, PAILLIER, "sim_s"), _col(d, LWE, "sim_s"))
    byte = lambda a: R.fnum(next(iter(d[a].values()))["bytes_total"])  # noqa: E731
    out = ["| claim | seeds | paired difference [95 %], p | verdict |", "|---|---:|---|---|",
           _claim(d, "Paillier-3072 reaches plaintext ASGD's accuracy within 0.005 (the "
                     "acceptance)", PAILLIER, PLAIN, tol=0.005),
           _claim(d, "LWE reaches plaintext ASGD's accuracy within 0.005", LWE, PLAIN, tol=0.005),
           _claim(d, "DSSGD θu = 0.1 is below plaintext ASGD (ASGD − DSSGD)", PLAIN, DSSGD),
           _claim(d, "FedAvg (one round = one epoch each) is below ASGD (ASGD − FedAvg)", PLAIN,
                  FEDAVG),
           _claim(d, "plain ASGD takes longer per epoch than FedAvg (simulated s per epoch)",
                  PLAIN, FEDAVG, "sim_s", digits=1, scale=1 / rounds),
           _claim(d, "LWE is cheaper than Paillier-3072 (Paillier − LWE, simulated s per epoch)",
                  PAILLIER, LWE, "sim_s", digits=1, scale=1 / rounds)]
    out += ["", f"HRES-2048 and Phong Paillier-3072 end at the same accuracy on {same} of {n} "
            f"seeds (HRES packs like Paillier: 32 + 15-bit slots, the same fixed point).  "
            f"Simulated time, Paillier-3072 ÷ LWE: {r_lwe[0]:.1f}× (bootstrap 95 % over seeds "
            f"{r_lwe[1]:.1f}–{r_lwe[2]:.1f}; the crypto costs are this host's cached calibration, "
            f"the same on every seed, so the interval is the schedule's spread only)."]
    if all(k in d for k in (PLAIN, PAILLIER, LWE, HRES)):
        out[-1] += (f"  Bytes (exact, the same on every seed): Paillier ÷ plaintext "
                    f"{byte(PAILLIER) / byte(PLAIN):.3f}, LWE ÷ plaintext "
                    f"{byte(LWE) / byte(PLAIN):.3f}, HRES ÷ plaintext "
                    f"{byte(HRES) / byte(PLAIN):.2f} (its downloads re-encrypted in two stages "
                    f"by the DSP and the key transform server, whose requests carry three "
                    f"elements per ciphertext).")
    return out


def calibration_text(d) -> str:
    parts = []
    for n, keys in ((PAILLIER, ("cal_encrypt_s", "cal_decrypt_s")), (LWE, ("cal_encrypt_s",
                    "cal_decrypt_s")), (HRES, ("cal_encrypt_s", "cal_decrypt_s", "cal_dsp_s",
                                               "cal_kts_s"))):
        if n not in d:
            continue
        vals = {k: sorted({round(R.fnum(r[k]), 2) for r in d[n].values()}) for k in keys}
        parts.append(f"{n}: " + ", ".join(
            f"{k.removeprefix('cal_').removesuffix('_s')} {'/'.join(f'{v:g}' for v in vs)} s"
            for k, vs in vals.items()))
    g = sorted({R.fnum(r["host_gflops"]) for v in d.values() for r in v.values()
                if r.get("host_gflops")})
    return ("; ".join(parts) + (f"; host {g[0]:.1f}–{g[-1]:.1f} GFLOP/s single-thread in these calibrations" if g else ""))


def examples_table(d) -> list[str]:
    out = ["| example | mode | participants × turns | seeds | final accuracy | bytes | simulated "
           "time (s) | comm_factor | CPU s per run | wall s per run |",
           "| --- | --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for name, path in EXAMPLES.items():
        for n in (name, f"{name} priced"):
            if n not in d:
                continue
            r0 = next(iter(d[n].values()))
            out.append(f"| `{Path(path).name}` | {r0['mode']} | {r0['devices']} × {r0['rounds']} "
                       f"| {R.seeds_text(sorted(d[n]))} | {R.cell(_col(d, n, 'final'), 4)} | "
                       f"{R.exact_or_cell(_col(d, n, 'bytes_total'), 0, thousands=True)} | "
                       f"{R.cell(_col(d, n, 'sim_s'), 1)} | "
                       f"{R.exact_or_cell(_col(d, n, 'comm_factor'), 3)} | "
                       f"{R.cell(_col(d, n, 'cpu_s'), 1)} | {R.cell(_col(d, n, 'wall_s'), 1)} |")
    keys = ("final", "bytes_total", "sim_s")
    lines = []
    for name in EXAMPLES:
        same, n = _identical(d, name, f"{name} priced", keys)
        if n:
            lines.append(f"{name.removeprefix('example ')} {same} of {n}")
    s, n = _identical(d, "example paillier", "example hres")
    if lines:
        out += ["", "Real and priced runs of the same example and seed with identical final "
                f"accuracy, bytes and simulated time: {', '.join(lines)} seeds.  The Paillier and "
                f"HRES examples (same seed, fleet and schedule) end at the same accuracy on {s} of "
                f"{n} seeds: encryption changes the bytes and the time, not the model."]
    if lines and "example hres" in d:
        up, down, total = (R.column(d, "example hres", k) for k in ("bytes_up", "bytes_down",
                                                                     "bytes_total"))
        rest = [t - u - w for t, u, w in zip(total, up, down, strict=True)]
        out[-1] += (f"  HRES example bytes: {R.exact_or_cell(down, 0, thousands=True)} down (the "
                    f"participants' re-encrypted models), {R.exact_or_cell(up, 0, thousands=True)}"
                    f" up, and {R.exact_or_cell(rest, 0, thousands=True)} between the servers "
                    f"(the DSP's re-encryption requests to the KTS, three elements of Z_N² per "
                    f"ciphertext).")
    return out


def render(rows: list[dict], env: str = "Environment not recorded.") -> str:
    d = by_setting(rows)
    main = {k: v for k, v in d.items() if not k.startswith(("example ", "rerun "))}
    ex = {k: v for k, v in d.items() if k.startswith("example ")}
    seeds = sorted({s for v in main.values() for s in v})
    first = next((r for v in main.values() for r in v.values()), None)
    rounds = int(first["rounds"]) if first else 5
    devices = int(first["devices"]) if first else 10
    ex_seeds = sorted({s for v in ex.values() for s in v})
    cpu = [R.fnum(r["cpu_s"]) for r in rows]
    loads = [R.fnum(r["load"]) for r in rows if r.get("load")]
    args = R.seeds_text(seeds).replace("–", "-").replace(", ", ",") if seeds else "0-9"
    ex_args = R.seeds_text(ex_seeds).replace("–", "-").replace(", ", ",") if ex_seeds else "0"
    fewer = [n for n, v in main.items() if len(v) < MIN_SEEDS]
    return "\n".join([
        "# Encrypted asynchronous SGD (`protocol = \"phong\"`)", "",
        "<!-- generated by benchmarks/encrypted_asgd_experiments.py --write-docs / --render from "
        "docs/experiments/data/encrypted_asgd.csv; do not edit by hand -->", "",
        "Spec: `../shared/docs/spec/encrypted-asgd.md`. Code: `crowdlearn/crypto/` "
        "(`paillier.py`, `lwe.py`, `hres.py`, `randomness.py`, `schemes.py`, `costs.py`), "
        "`crowdlearn/protocols/phong.py`.  Tests: `tests/test_crypto_he.py` (hypothesis laws, "
        "overflow, key separation, sizes), `tests/test_phong.py` (real = priced, plaintext = "
        "encrypted accuracy, config-time overflow rejection, collusion and reconstruction, "
        "communication factors).  Notebook: `notebooks/06_encrypted_sgd.ipynb`.  Throughput: "
        "`docs/benchmarks.md`, *Homomorphic encryption throughput*.", "",
        "**Source.** L. T. Phong, Y. Aono, T. Hayashi, L. Wang, S. Moriai, \"Privacy-Preserving "
        "Deep Learning via Additively Homomorphic Encryption\", IEEE TIFS 13(5), 2018. The paper "
        "reports MNIST with C++ on a Xeon; we run Fashion-MNIST with Python (gmpy2, numpy) in a "
        "simulated fleet.  Tang et al.'s two-server variant is `protocol = \"hres\"` "
        "(`crowdlearn/protocols/hres.py`): participants with their own keys, uploads under the "
        "joint DSP·KTS key, every download re-encrypted by the DSP and the key transform server "
        "in two stages, their traffic on the wire.", "",
        "## Reproduce", "", "```sh",
        f"nice -n 10 .venv/bin/python benchmarks/encrypted_asgd_experiments.py --devices {devices} "
        f"--rounds {rounds} --seeds {args} --examples --example-seeds {ex_args} --write-docs",
        ".venv/bin/python benchmarks/encrypted_asgd_experiments.py --render   # the doc from the "
        "CSV alone",
        "```", "",
        "Every table below is generated from the per-seed rows in "
        "`docs/experiments/data/encrypted_asgd.csv`: each cell the mean ± the half-width of the "
        "95 % Student-t interval over the seeds ('(every seed)' when the value is the same on "
        "all of them), each claim a paired difference over seeds (mean [95 % interval], paired "
        "t-test p; 'holds' = above 0, or inside the stated tolerance).", "",
        "## Communication factor: Phong's formulas against encoded sizes", "",
        "Ciphertext bytes are the encoded sizes of what crosses the wire (`len(payload."
        "wire_bytes())`, equal to the scheme's `nbytes`, asserted in the tests), divided by the "
        "bytes of the same 109,386 gradients as 32-bit floats (437,544 B).  Exact (no seed).", "",
        *factor_table(), "",
        "Phong's Paillier formula assumes `log₂n / (prec + pad)` slots per plaintext; a whole "
        "number of 47-bit slots must fit below `n`, `t = ⌊(|n|−1)/47⌋` (43 for 2048 bits, 65 for "
        "3072), so the encoded factor sits slightly above it and approaches it with the key size.",
        "",
        "## Accuracy, bytes and simulated time on one fleet", "",
        f"MLP 784-128-64-10 on Fashion-MNIST, {devices} participants (iid), the default device "
        f"mix, {rounds} local epochs per participant (Phong, HRES and DSSGD: {rounds} turns each, "
        f"round robin; FedAvg: {rounds} rounds with every participant), batch 32, lr 0.05; seeds "
        f"{R.seeds_text(seeds) if seeds else '(none yet)'}.  Encrypted runs in `priced` mode "
        f"(the same weights, bytes and simulated times as `real`, "
        f"`tests/test_phong.py::test_real_and_priced_modes_give_identical_weights_bytes_and_"
        f"times`; checked again on the examples below) with the crypto calibration cached on "
        f"this host, in seconds of this machine per whole weight vector: {calibration_text(main)}.",
        "",
        *([f"Fewer than {MIN_SEEDS} seeds (no claim made on them): {', '.join(fewer)}.", ""]
          if fewer else []),
        *main_table(main, rounds), "", *claims(main, rounds), "",
        "* **Accuracy.** Plaintext and encrypted runs follow the same schedule and apply the "
        "same updates up to fixed-point rounding (2^-24 Paillier, 2^-32 LWE).",
        "* **Simulated time** is dominated by crypto on the phones: every turn decrypts and "
        "encrypts the whole vector; the turns are sequential under round robin, FedAvg's "
        "parallel.  The crypto seconds follow the host calibration, which a loaded machine "
        "inflates (best of 10 timings limits, does not remove, that effect).", "",
        "## Example runs (real crypto)", "",
        "The three examples, run with their real big-number cryptography, and each again with "
        f"`--set he.mode='\"priced\"'`; seeds {R.seeds_text(ex_seeds) if ex_seeds else '(none)'}"
        f" only (fewer than {MIN_SEEDS}: a real Paillier or HRES run costs about a CPU-minute, "
        "and the seed study above is the priced one).  CPU is this process's CPU time; wall "
        "time depends on the machine's load.", "",
        *examples_table(ex), "",
        "## Environment and drift on rerun", "",
        (f"{env} Runs: {R.cpu_note(cpu)}, at `nice -n 10` on a shared machine "
         f"(load average {min(loads):.1f}–{max(loads):.1f})." if loads else env), "",
        f"{R.rerun_drift(rows)}  The crypto calibration is cached per host, so the simulated "
        "crypto seconds of a seed repeat on this host; another machine "
        "(BLAS, thread count, TensorFlow build, its own calibration) may move single accuracies "
        "in the third or fourth digit and the simulated crypto time by its calibration: the "
        "intervals, not the digits, are the result.  Bytes and communication factors are exact.",
        "",
        "## Caveats", "",
        "* A turn is one local epoch on the participant's shard, not one mini-batch (see "
        "`crowdlearn/protocols/phong.py`); ASGD with one mini-batch per turn would multiply the "
        "number of encrypted transfers by the batches per epoch.",
        "* Crypto time on a device = seconds measured on this machine × this machine's "
        "single-thread float64 FLOP/s ÷ the device's FLOP/s: big-number arithmetic does not "
        "scale exactly like FLOP/s, and the calibration is taken on a shared machine.",
        "* `round_robin` has no turn timeout: a granted participant that goes offline stalls "
        "the run (the summary then says `\"completed\": false`); use it with "
        "`availability.model = \"always\"`, or use `asynchronous`.",
        "* Earlier hand-written versions of this page (seeds 0–2, mean ± standard deviation) "
        "are in the git history of this file.", ""])


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--devices", type=int, default=10)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--seeds", default="", help="seeds to measure, e.g. 0-29 or 0,3,5")
    ap.add_argument("--only", nargs="+", metavar="SETTING", help="only these settings, by name")
    ap.add_argument("--examples", action="store_true",
                    help="also the three examples, real crypto and priced")
    ap.add_argument("--example-seeds", default="0", help="seeds of --examples (default 0)")
    ap.add_argument("--rerun-check", action="store_true",
                    help="run seed 0 of every setting again in this process (drift on rerun)")
    ap.add_argument("--write-docs", action="store_true", help="render the doc after measuring")
    ap.add_argument("--render", action="store_true", help="only re-render the doc from the CSV")
    ap.add_argument("--quick", action="store_true",
                    help="3 participants × 1 epoch on digits, two seeds, into a temp folder")
    a = ap.parse_args(argv)
    if a.devices < 2 or a.rounds < 1:
        ap.error(f"--devices must be ≥ 2 and --rounds ≥ 1; got {a.devices}, {a.rounds}")
    try:
        seeds = R.parse_seeds(a.seeds) if a.seeds else []
        ex_seeds = R.parse_seeds(a.example_seeds) if a.examples else []
    except ValueError:
        ap.error(f"--seeds {a.seeds!r} / --example-seeds {a.example_seeds!r}: give a range or "
                 f"list of integers, e.g. 0-29 or 0,3,5")
    names = list(configs(2, 1, 0))
    if a.only and set(a.only) - set(names):
        ap.error(f"--only: unknown {sorted(set(a.only) - set(names))}; choose from {names}")
    doc, data, dataset = DOC, DATA, "fashion_mnist"
    if a.quick:
        tmp = Path(tempfile.mkdtemp(prefix="encasgd-quick-"))
        doc, data, dataset = tmp / "encrypted_asgd.md", tmp / "data.csv", "digits"
        seeds, a.devices, a.rounds = seeds or [0, 1], 3, 1
    if not a.render:
        measure(seeds, devices=a.devices, rounds=a.rounds, data=data, dataset=dataset,
                examples=ex_seeds, only=a.only)
    if a.rerun_check and not a.render:
        from crowdlearn.config import from_dict
        R.record_environment(data.with_suffix(".env.json"))
        for name, raw in configs(a.devices, a.rounds, 0, dataset=dataset).items():
            R.merge_rows(data, FIELDS, [run_one(f"rerun {name}", 0, from_dict(raw))],
                         ("setting", "seed"))
            gc.collect()
    if a.render or a.write_docs or a.quick:
        doc.write_text(render(R.read_rows(data), R.environments_text(data.with_suffix(".env.json"))))
        print(f"wrote {doc}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
