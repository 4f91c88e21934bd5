"""One privacy table across protocols: ``docs/experiments/privacy_table.md``.

Every protocol the configuration accepts (``protocol`` choices of ``crowdlearn.config``; a
protocol that lands later appears without editing this file) runs on the same fleet, data and
model, over the same seeds, with ``privacy.attacks = true``, through the sweep runner
(``crowdlearn.sweep``).  Variants that a protocol's config section offers are added as their own
rows when the section has the key: DSSGD with ``dp``, FedAvg with ``secure_aggregation`` or
``dp`` (when those keys exist).

One row per protocol (variant) and observer, each with the run's accuracy, bytes, ε (where the run
has DP) and that observer's attack scores beside their no-attack baselines:

* **server, from each upload** (DSSGD, FedAvg): the first-layer reconstruction the attacker picks
  without the truth (``privacy_report``), its PSNR to the uploader's nearest sample, beside a
  random public image and the public mean image scored the same way;
* **holder of the final model** (the global model: server and participants; the local models of
  ``standalone``; the group models of ``ssgd``): the loss-threshold membership attack's AUC and
  best advantage, beside chance (AUC 0.5, advantage 0).

Cells are means with 95 % Student-t intervals over the seeds (``crowdlearn.sweeps.interval95``).

Usage::

    .venv/bin/python benchmarks/privacy_table.py --quick                  # 1 seed, printed
    .venv/bin/python benchmarks/privacy_table.py --seeds 5 --write-docs   # the doc
"""

from __future__ import annotations

import argparse
import math
import os
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

DOC = ROOT / "docs" / "experiments" / "privacy_table.md"

#: The shared fleet, data and model.
BASE = {"fleet": {"devices": 8, "cells": 2}, "data": {"dataset": "digits"},
        "model": {"hidden": [32]}, "privacy": {"attacks": True}}
#: What a protocol needs to run on that fleet at all (stated in the doc).
NEEDS = {"fm": {"model": {"hidden": [32], "activation": "tanh"}}}


def protocols() -> list[str]:
    """Every registered protocol (:mod:`crowdlearn.registry`)."""
    from crowdlearn import registry
    return list(registry.names())


def variants() -> list[tuple[str, str, dict]]:
    """``(protocol, variant label, overrides)``: each protocol as configured by default, plus the
    privacy variants its config section offers."""
    from crowdlearn.config import schema
    SCHEMA = schema()  # noqa: N806  (the whole schema: built-in and protocol sections)
    out = []
    for proto in protocols():
        out.append((proto, "default", NEEDS.get(proto, {})))
        section = SCHEMA.get(proto, {})
        if "secure_aggregation" in section:
            out.append((proto, "secure_aggregation", {proto: {"secure_aggregation": "secagg"}}))
        if "dp" in section:
            out.append((proto, "dp", {proto: {"dp": True}}))
    return out


def _merge(a: dict, b: dict) -> dict:
    out = {k: dict(v) if isinstance(v, dict) else v for k, v in a.items()}
    for k, v in b.items():
        if isinstance(v, dict):
            out.setdefault(k, {}).update(v)
        else:
            out[k] = v
    return out


def run(seeds, *, rounds: int, devices: int, out: Path, jobs: int, log=print):
    """One sweep per variant; returns ``[(protocol, variant, overrides, DataFrame | error)]``."""
    import crowdlearn
    from crowdlearn.config import from_dict
    from crowdlearn.errors import CrowdlearnError

    rows = []
    for proto, label, over in variants():
        raw = _merge(_merge(BASE, over), {"protocol": proto, "rounds": rounds,
                                          "fleet": {"devices": devices}})
        t0 = time.perf_counter()
        try:
            df = crowdlearn.sweep(from_dict(raw), {}, list(seeds),
                                  out=out / f"{proto}-{label}", jobs=jobs, plots=False)
            rows.append((proto, label, over, df))
            log(f"{proto} ({label}): {len(df)} runs in {time.perf_counter() - t0:.0f} s")
        except (CrowdlearnError, ValueError) as exc:
            rows.append((proto, label, over, " ".join(f"{type(exc).__name__}: {exc}".split())))
            log(f"{proto} ({label}): cannot run: {exc}")
    return rows


def _num(df, col) -> list[float]:
    if col not in df:
        return []
    vals = []
    for v in df[col].tolist():
        try:
            f = float(v)
        except (TypeError, ValueError):
            continue
        if math.isfinite(f):
            vals.append(f)
    return vals


def _cell(df, col, digits=3, scale=1.0) -> str:
    from crowdlearn.sweeps import interval95
    vals = [v * scale for v in _num(df, col)]
    if not vals:
        return "—"
    m, h = interval95(vals)
    return f"{m:.{digits}f} ± {h:.{digits}f}"


OBSERVER = {"global": "holder of the final global model (server, every participant)",
            "local": "the device itself (its local model; nothing leaves it)",
            "group": "the members of a group (their group model)"}


def table_rows(results) -> list[dict]:
    """One dict per protocol (variant) and observer."""
    out = []
    for proto, label, over, df in results:
        name = proto if label == "default" else f"{proto} + {label}"
        if isinstance(df, str):
            out.append({"protocol": name, "observer": "—", "note": f"cannot run: {df}"})
            continue
        ok = df[df["status"] == "ok"] if "status" in df else df
        common = {"protocol": name, "runs": len(ok),
                  "accuracy": _cell(ok, "final_accuracy"),
                  "MB": _cell(ok, "bytes_total", 3, 1e-6),
                  "epsilon": _cell(ok, "epsilon", 2) if _num(ok, "epsilon") else "no DP"}
        failed = len(df) - len(ok)
        note = " ".join(f"{failed} run(s) failed: {df[df['status'] != 'ok']['error'].iloc[0]}"
                        .split()) if failed else ""
        if not _num(ok, "final_accuracy"):
            stop = ok["stopped_by"].iloc[0] if "stopped_by" in ok and len(ok) else "?"
            note = (note + "; " if note else "") + \
                f"no round completed on this fleet (stopped by: {stop})"
        added = False
        if _num(ok, "reconstruction_psnr"):
            fill = ok["reconstruction_fill"].iloc[0]
            out.append({**common, "observer": "server, from each upload",
                        "attack": f"first-layer reconstruction, PSNR dB (fill: {fill})",
                        "score": _cell(ok, "reconstruction_psnr", 2),
                        "baseline": f"random public image {_cell(ok, 'reconstruction_random_public_psnr', 2)}; "
                                    f"public mean {_cell(ok, 'reconstruction_prior_psnr', 2)}",
                        "note": note})
            added = True
        if _num(ok, "membership_auc"):
            target = ok["membership_target"].iloc[0]
            out.append({**common, "observer": OBSERVER.get(target, target),
                        "attack": "membership (loss threshold): AUC; best advantage",
                        "score": f"{_cell(ok, 'membership_auc')}; "
                                 f"{_cell(ok, 'membership_max_advantage')}",
                        "baseline": "chance: 0.5; 0",
                        "note": note})
            added = True
        if not added:
            out.append({**common, "observer": "—", "attack": "no attack view for this protocol",
                        "score": "—", "baseline": "—", "note": note})
    return out


FM_EPSILONS = (1.0, 10.0, 100.0, 1000.0)


def fm_noise_to_signal(seeds, *, devices: int) -> list[dict]:
    """Why FM's row sits at chance: noise against signal in its output-layer objective.

    For each seed, one round of the table's FM run (so every participant holds the server's
    pre-trained hidden layers); then, over the participants, the summed linear coefficients
    ``G = Σ_d z_dᵀ(1/K − onehot(y_d))`` of the softmax objective (the signal the averaged model
    follows) against the expected norm of the summed Laplace noise on them,
    ``√(2·D·d·K)·Δ/ε`` (``D`` participants, each adding ``Lap(Δ/ε)`` to its ``d×K`` entries).
    Returns ``[{"bound", "epsilon", "ratio": [per seed]}]`` (noise norm / signal norm).
    """
    import numpy as np

    from crowdlearn.config import from_dict
    from crowdlearn.experiment import Simulation
    from crowdlearn.privacy import functional as F

    ratios: dict = {}
    for seed in seeds:
        raw = _merge(_merge(BASE, NEEDS["fm"]), {"protocol": "fm", "rounds": 1, "seed": seed,
                                                 "fleet": {"devices": devices},
                                                 "privacy": {"attacks": False}})
        sim = Simulation(from_dict(raw))
        sim.run()
        ds, parts = sim.dataset, sim.ctx.extra["parts"]
        G = 0.0
        for d, part in enumerate(parts):
            model = sim.driver.machines[d].model       # with the received hidden layers
            z = model.rows(ds.x_train[part])
            G = G + F.coefficients("softmax", z, ds.y_train[part],
                                   num_classes=model.num_classes).G
        d_, k_ = model.row_dim, model.num_classes
        for bound in ("spec", "l2"):
            delta = F.sensitivity("softmax", d_, num_classes=k_, bound=bound)
            for eps in FM_EPSILONS:
                noise = math.sqrt(2.0 * len(parts) * d_ * k_) * delta / eps
                ratios.setdefault((bound, eps), []).append(noise / float(np.linalg.norm(G)))
    return [{"bound": b, "epsilon": e, "ratio": v} for (b, e), v in ratios.items()]


def fm_markdown(rows, seeds) -> str:
    from results_doc import cell, seeds_text
    out = ["| FM sensitivity bound | ε | expected noise norm / signal norm of the summed "
           "output-layer coefficients |", "| --- | ---: | ---: |"]
    for r in rows:
        out.append(f"| {r['bound']}{' (default)' if r['bound'] == 'spec' else ''} | "
                   f"{r['epsilon']:g} | {cell(r['ratio'], 2)} |")
    out.append("")
    out.append(f"_The table's FM setting (digits, the same fleet, deep mode: one tanh hidden "
               f"layer of 32 pre-trained on the server's public rows, FM on the softmax output "
               f"layer), after one round; seeds {seeds_text(seeds)}; mean ± 95 % Student-t "
               f"half-width over the seeds._")
    return "\n".join(out) + "\n"


def markdown(rows, *, seeds, rounds, devices, wall, env) -> str:
    from results_doc import seeds_text
    cols = ["protocol", "observer", "accuracy", "MB", "epsilon", "attack", "score", "baseline",
            "note"]
    head = ["protocol", "observer", "accuracy", "MB total", "ε", "attack", "attacker's score",
            "no-attack baseline", "note"]
    out = ["| " + " | ".join(head) + " |", "| " + " | ".join("---" for _ in head) + " |"]
    for r in rows:
        out.append("| " + " | ".join(str(r.get(c, "")).replace("|", "/") for c in cols) + " |")
    out.append("")
    out.append(f"_Setting: digits, {devices} devices in 2 cells, MLP 64–32–10, {rounds} rounds, "
               f"each protocol's defaults (FM: tanh hidden layer, deep mode); seeds "
               f"{seeds_text(seeds)} ({len(seeds)} seeds"
               f"{'' if len(seeds) >= 10 else ': every protocol trains with TensorFlow on a shared 2-core machine, so fewer than 10'}"
               f"). Cells: mean ± 95 % Student-t "
               f"half-width over the seeds. {wall}. {env}_")
    return "\n".join(out) + "\n"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true",
                    help="1 seed, 1 round, 6 devices: a smoke run (printed only)")
    ap.add_argument("--seeds", type=int, default=5, help="seeds (default 5)")
    ap.add_argument("--rounds", type=int, default=5, help="rounds (default 5)")
    ap.add_argument("--jobs", type=int, default=1, help="worker processes per sweep")
    ap.add_argument("--out", help="sweep folder (resumable); default: a temporary folder")
    ap.add_argument("--write-docs", action="store_true", help=f"rewrite {DOC.relative_to(ROOT)}")
    ap.add_argument("--fm-noise", action="store_true",
                    help="only measure FM's noise-to-signal ratio (the explanation of its row); "
                         "with --write-docs rewrite that block")
    args = ap.parse_args(argv)
    seeds = [0] if args.quick else list(range(args.seeds))
    rounds = 1 if args.quick else args.rounds
    devices = 6 if args.quick else 8
    t0 = time.perf_counter()
    if args.fm_noise:
        md = fm_markdown(fm_noise_to_signal(seeds, devices=devices), seeds)
        print(md)
        if args.write_docs:
            _replace(md, "<!-- fm-noise:start -->", "<!-- fm-noise:end -->")
        return 0
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(args.out) if args.out else Path(tmp)
        results = run(seeds, rounds=rounds, devices=devices, out=out, jobs=args.jobs)
        rows = table_rows(results)
    from results_doc import environment
    wall = f"Measured {time.strftime('%Y-%m-%d')} in {time.perf_counter() - t0:.0f} s wall time"
    md = markdown(rows, seeds=seeds, rounds=rounds, devices=devices, wall=wall,
                  env=environment())
    print(md)
    if args.write_docs:
        if args.quick:
            ap.error("--write-docs needs a full run (drop --quick)")
        _replace(md, "<!-- privacy-table:start -->", "<!-- privacy-table:end -->")
    return 0


def _replace(md: str, start: str, end: str) -> None:
    """Rewrite the doc's block between the two markers (append it when they are missing)."""
    text = DOC.read_text() if DOC.exists() else ""
    if start in text and end in text:
        text = text[:text.index(start)] + f"{start}\n{md}{end}" + \
            text[text.index(end) + len(end):]
    else:
        text = text + f"\n{start}\n{md}{end}\n"
    DOC.write_text(text)
    print(f"wrote {DOC.relative_to(ROOT)}")


if __name__ == "__main__":
    raise SystemExit(main())
