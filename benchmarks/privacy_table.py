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

Every run's figures behind the doc are kept per seed in ``docs/experiments/data/privacy_table.json``
(``--write-docs``); ``--render`` rewrites the doc from that file alone.  A run with ``--seed S``
merges its seeds into the file (the same protocol, variant and seed replaced, the others kept), so
seeds can be added later; ``--out`` keeps the sweep folder, which a rerun resumes.

Usage::

    .venv/bin/python benchmarks/privacy_table.py --quick                  # 1 seed, printed
    .venv/bin/python benchmarks/privacy_table.py --seeds 10 --rounds 20 --write-docs  # the doc
    .venv/bin/python benchmarks/privacy_table.py --seed 10 --seeds 5 --rounds 20 --write-docs
    .venv/bin/python benchmarks/privacy_table.py --render                 # from the data file
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
#: every run's figures behind the doc, per seed (``--render`` rewrites the doc from them)
DATA = ROOT / "docs" / "experiments" / "data" / "privacy_table.json"
#: the table as measured until 2026-12-02, after 2 rounds (issue 17's page, 10 seeds), kept as
#: history: "Claims that changed" reads it, and "Longer training" sets it beside the table
HISTORY = DATA.with_name("privacy_table_2rounds.json")
#: how many seeds issue 17 asks for
WANTED_SEEDS = 10
#: the per-run columns of the sweep that the doc is rendered from
COLUMNS = ("seed", "status", "error", "stopped_by", "completed", "rounds_completed",
           "final_accuracy", "bytes_total", "epsilon", "reconstruction_psnr",
           "reconstruction_random_public_psnr", "reconstruction_prior_psnr",
           "reconstruction_fill", "reconstruction_uploads", "membership_target", "membership_auc",
           "membership_max_advantage", "wall_time_s")
#: a run that finished: in this process (``ok``) or in an earlier one of a resumed sweep
DONE = ("ok", "skipped")

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
    for proto, label, _over, df in results:
        name = proto if label == "default" else f"{proto} + {label}"
        if isinstance(df, str):
            out.append({"protocol": name, "observer": "—", "note": f"cannot run: {df}"})
            continue
        ok = df[df["status"].isin(DONE)] if "status" in df else df
        common = {"protocol": name, "runs": len(ok),
                  "accuracy": _cell(ok, "final_accuracy"),
                  "MB": _cell(ok, "bytes_total", 3, 1e-6),
                  "epsilon": _cell(ok, "epsilon", 2) if _num(ok, "epsilon") else "no DP"}
        failed = len(df) - len(ok)
        note = " ".join(f"{failed} run(s) failed: {df[~df['status'].isin(DONE)]['error'].iloc[0]}"
                        .split()) if failed else ""
        if not _num(ok, "final_accuracy"):
            stop = ok["stopped_by"].iloc[0] if "stopped_by" in ok and len(ok) else "?"
            note = (note + "; " if note else "") + \
                f"no round completed on this fleet (stopped by: {stop})"
        added = False
        if _num(ok, "reconstruction_psnr"):
            fill = ok["reconstruction_fill"].dropna().iloc[0]
            k = len(_num(ok, "reconstruction_psnr"))
            short = (f"server's score over {k} of {len(ok)} runs (in the other "
                     f"{len(ok) - k} no attacked "
                     "upload gave a candidate: no first-layer neuron with its bias entry "
                     "uploaded)" if k < len(ok) else "")
            out.append({**common, "observer": "server, from each upload",
                        "attack": f"first-layer reconstruction, PSNR dB (fill: {fill})",
                        "score": _cell(ok, "reconstruction_psnr", 2),
                        "baseline": f"random public image {_cell(ok, 'reconstruction_random_public_psnr', 2)}; "
                                    f"public mean {_cell(ok, 'reconstruction_prior_psnr', 2)}",
                        "note": "; ".join(x for x in (note, short) if x)})
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


def markdown(rows, *, seeds, rounds, devices, wall, env, drift: str = "") -> str:
    from results_doc import seeds_text
    cols = ["protocol", "observer", "accuracy", "MB", "epsilon", "attack", "score", "baseline",
            "note"]
    head = ["protocol", "observer", "accuracy", "MB total", "ε", "attack", "attacker's score",
            "no-attack baseline", "note"]
    out = ["| " + " | ".join(head) + " |", "| " + " | ".join("---" for _ in head) + " |"]
    for r in rows:
        out.append("| " + " | ".join(str(r.get(c, "")).replace("|", "/") for c in cols) + " |")
    out.append("")
    few = ("" if len(seeds) >= WANTED_SEEDS else
           f", not the {WANTED_SEEDS} issue 17 asks for: every protocol trains with TensorFlow on "
           "a shared 2-core machine")
    out.append(f"_Setting: digits, {devices} devices in 2 cells, MLP 64–32–10, {rounds} rounds, "
               f"each protocol's defaults (FM: tanh hidden layer, deep mode); seeds "
               f"{seeds_text(seeds)} ({len(seeds)} seeds{few}). Cells: mean ± 95 % Student-t "
               f"half-width over the seeds. {wall}. {env}_")
    if drift:
        out += ["", f"_{drift}_"]
    return "\n".join(out) + "\n"


# ---------------------------------------------------------------- per-seed data
def _plain(v):
    """A JSON value of a sweep cell (NaN and missing as None)."""
    if v is None:
        return None
    if hasattr(v, "item"):
        v = v.item()
    if isinstance(v, float) and not math.isfinite(v):
        return None
    return v


def to_data(results, *, rounds: int, devices: int, measured: dict) -> dict:
    """The per-seed file of one measuring process: per variant its runs' :data:`COLUMNS`
    (a resumed run, ``skipped`` by the sweep, is stored as ``ok``: it finished), or the reason
    it cannot run; ``measured``: the process (command, seeds, wall and CPU seconds, date)."""
    from results_doc import environment

    variants = []
    for proto, label, _over, df in results:
        v = {"protocol": proto, "variant": label}
        if isinstance(df, str):
            v.update(error=df, runs=[])
        else:
            v["runs"] = [{c: _plain(r.get(c)) for c in COLUMNS if c in r}
                         for r in df.to_dict("records")]
            for r in v["runs"]:
                if r.get("status") == "skipped":
                    r["status"] = "ok"
        variants.append(v)
    return {"rounds": rounds, "devices": devices, "environment": environment(),
            "measured": [measured], "variants": variants}


def merge_data(old: dict | None, new: dict) -> dict:
    """``new``'s runs merged into ``old``: a (protocol, variant, seed) of ``new`` replaces
    ``old``'s, every other run is kept; variants keep ``old``'s order, new ones are appended.
    Files of another setting (rounds, devices) cannot be merged.

    >>> a = {"rounds": 2, "devices": 8, "environment": "e1", "measured": [{"seeds": [0]}],
    ...      "variants": [{"protocol": "p", "variant": "default",
    ...                    "runs": [{"seed": 0, "x": 1}]}]}
    >>> b = {"rounds": 2, "devices": 8, "environment": "e2", "measured": [{"seeds": [1]}],
    ...      "variants": [{"protocol": "p", "variant": "default",
    ...                    "runs": [{"seed": 1, "x": 2}]}]}
    >>> m = merge_data(a, b)
    >>> [r["seed"] for r in m["variants"][0]["runs"]], len(m["measured"]), m["earlier_seeds"]
    ([0, 1], 2, [0])
    """
    if not old:
        return new
    if (old["rounds"], old["devices"]) != (new["rounds"], new["devices"]):
        raise SystemExit(
            f"the data file {DATA.relative_to(ROOT)} holds runs of {old['rounds']} rounds on "
            f"{old['devices']} devices, this run {new['rounds']} rounds on {new['devices']}: "
            "rerun with the file's --rounds, or move the file away to start a new table")
    out = {**old, "environment": new["environment"],
           "measured": old["measured"] + new["measured"], "variants": []}
    fresh = {(v["protocol"], v["variant"]): v for v in new["variants"]}
    for v in old["variants"]:
        n = fresh.pop((v["protocol"], v["variant"]), None)
        if n is None:
            out["variants"].append(v)
            continue
        runs = {r["seed"]: r for r in v.get("runs", [])}
        runs.update({r["seed"]: r for r in n.get("runs", [])})
        merged = {**v, **n, "runs": [runs[k] for k in sorted(runs)]}
        if n.get("runs"):
            merged.pop("error", None)
        out["variants"].append(merged)
    out["variants"] += list(fresh.values())
    before, after = data_seeds(old), data_seeds(out)
    out["earlier_seeds"] = before if before != after else old.get("earlier_seeds", before)
    return out


def data_seeds(data: dict) -> list[int]:
    """Every seed some variant of ``data`` has a run for."""
    return sorted({int(r["seed"]) for v in data["variants"] for r in v.get("runs", [])})


def results_of(data: dict, seeds=None) -> list:
    """:func:`run`'s ``[(protocol, variant, overrides, DataFrame | error)]`` from the data file
    (only ``seeds`` when given)."""
    import pandas as pd

    out = []
    for v in data["variants"]:
        if v.get("error") and not v.get("runs"):
            out.append((v["protocol"], v["variant"], {}, v["error"]))
            continue
        runs = [r for r in v["runs"] if seeds is None or int(r["seed"]) in set(seeds)]
        out.append((v["protocol"], v["variant"], {}, pd.DataFrame(runs, columns=list(COLUMNS))))
    return out


def _per_seed(df, col) -> dict[int, float]:
    ok = df[df["status"].isin(DONE)]
    out = {}
    for seed, v in zip(ok["seed"], ok[col], strict=True):
        try:
            f = float(v)
        except (TypeError, ValueError):
            continue
        if math.isfinite(f):
            out[int(seed)] = f
    return out


def claims(results) -> list[dict]:
    """The reading's comparisons, paired over the seeds that have both: per protocol (variant)
    with a server view, the server's reconstruction against a random public image and against
    the public mean image (PSNR dB); per membership row, the AUC against chance (0.5)."""
    from results_doc import paired

    out = []
    for proto, label, _over, df in results:
        if isinstance(df, str) or not len(df):
            continue
        name = proto if label == "default" else f"{proto} + {label}"
        rec = _per_seed(df, "reconstruction_psnr")
        for col, base in (("reconstruction_random_public_psnr", "a random public image"),
                          ("reconstruction_prior_psnr", "the public mean image")):
            b = _per_seed(df, col)
            both = sorted(set(rec) & set(b))
            if len(both) >= 2:
                out.append({"protocol": name, "kind": "server",
                            "text": f"server's reconstruction above {base}, PSNR dB",
                            "d": paired([rec[s] for s in both], [b[s] for s in both]),
                            "digits": 2})
        auc = _per_seed(df, "membership_auc")
        if len(auc) >= 2:
            ss = sorted(auc)
            out.append({"protocol": name, "kind": "membership",
                        "text": "membership AUC above chance (0.5)",
                        "d": paired([auc[s] for s in ss], [0.5] * len(ss)), "digits": 3})
    return out


def nearest_sample_baselines(devices: int, *, counts=(1, 5, 20), draws: int = 400,
                             seed: int = 0) -> list[tuple[int, float, float]]:
    """Why the two no-attack baselines order as they do: ``(m, random public image, public
    mean)`` mean PSNR (dB) to the nearest of ``m`` training samples drawn at random, for each
    ``m`` of ``counts`` and a device's share of the digits training set (``devices`` shards),
    ``draws`` draws each, scored as :func:`crowdlearn.privacy.attacks.views._upload_leak`
    scores them (the public images are the test split).

    >>> rows = nearest_sample_baselines(8, counts=(1,), draws=50)
    >>> [m for m, _, _ in rows][0], rows[0][2] > rows[0][1]   # one sample: the mean is closer
    (1, True)
    """
    import numpy as np

    from crowdlearn.data.datasets import load_dataset

    ds = load_dataset(BASE["data"]["dataset"])
    x = np.asarray(ds.x_train, np.float64)
    public = np.asarray(ds.x_test, np.float64)
    mean = public.mean(axis=0)
    rng = np.random.default_rng(seed)

    def psnr(img, xs) -> float:
        return float(10 * np.log10(1.0 / ((xs - img[None, :]) ** 2).mean(axis=1).min()))

    out = []
    for m in (*counts, len(x) // devices):
        rand, prior = [], []
        for _ in range(draws):
            xs = x[rng.choice(len(x), m, replace=False)]
            rand.append(psnr(public[int(rng.integers(len(public)))], xs))
            prior.append(psnr(mean, xs))
        out.append((m, float(np.mean(rand)), float(np.mean(prior))))
    return out


def baselines_bullet(devices: int) -> str:
    """The reading's bullet on the baselines' order (computed now, from the bundled data)."""
    rows = nearest_sample_baselines(devices)
    cells = "; ".join(f"{m} sample{'s' if m > 1 else ''}: {r:.2f} against {p:.2f}"
                      for m, r, p in rows)
    return ("* **Why a random public image scores above the public mean image** in the server "
            "rows: each is scored against the uploader's *nearest* sample.  The mean image is "
            "the closest single guess to one sample, but among a device's "
            f"{rows[-1][0]} samples a concrete image usually has a near neighbour of its own "
            "kind, which the blurred mean has not.  Mean PSNR (dB) of a random public image "
            "against the public mean, to the nearest of m random digits training samples "
            f"(400 draws each, computed when this page was rendered): {cells}.  So the random "
            "image is the stricter baseline here, and a reconstruction must beat both.")


def reading(results, devices: int | None = None) -> str:
    """The reading's first bullets, from the paired comparisons of :func:`claims` (with
    ``devices``, also the bullet on the baselines' order, :func:`baselines_bullet`)."""
    from results_doc import and_list, fmt_paired, verdict

    cs = claims(results)
    out = ["| protocol | claim | a − b [95 % interval], p | seeds | verdict |",
           "| --- | --- | --- | --- | --- |"]
    out += [f"| {c['protocol']} | {c['text']} | {fmt_paired(c['d'], c['digits'])} | "
            f"{c['d']['n']} | {verdict(c['d'])} |" for c in cs]
    out.append("")
    out.append(server_bullet(cs))
    if devices and any(c["kind"] != "membership" for c in cs):
        out.append(baselines_bullet(devices))
    mem = [c for c in cs if c["kind"] == "membership"]
    leak = [c["protocol"] for c in mem if verdict(c["d"]) == "holds"]
    out.append("* **Membership** is read against chance (AUC 0.5, advantage 0): a row shows a "
               "leak only where its AUC interval lies above 0.5 -- here "
               + (f"{and_list(leak)} ({'; '.join(fmt_paired(c['d'], 3) for c in mem if c['protocol'] in leak)})"
                  if leak else "none") + f", of {len(mem)} rows.")
    cl = next((df for p, label, _o, df in results if p == "crowdlearning" and label == "default"
               and not isinstance(df, str)), None)
    if cl is not None and len(cl):
        done = int((cl["status"].isin(DONE) & cl["completed"].astype(str).eq("True")).sum())
        out.append(f"* **Crowdlearning completes its rounds on this fleet** in {done} of "
                   f"{len(cl)} runs (the table of 2026-11-30 05:59 had \"no round completed "
                   "(stopped by: stalled)\" on these 8 devices; the stall was fixed by the "
                   "Crowdlearning changes of issue 15, not by the table's configuration).")
    return "\n".join(out) + "\n"


def _server_verdicts(cs) -> dict[str, dict[str, str]]:
    """``{protocol: {"random": verdict, "mean": verdict}}`` of the server-reconstruction claims."""
    from results_doc import verdict

    out: dict = {}
    for c in cs:
        if c["kind"] == "server":
            base = "random" if "random" in c["text"] else "mean"
            out.setdefault(c["protocol"], {})[base] = verdict(c["d"])
    return out


#: the baselines' names in the reading
NAMES = {"random": "a random public image", "mean": "the public mean image"}


def server_bullet(cs) -> str:
    """The reading's server bullet: per protocol, the reconstruction against each baseline; a
    leak only where it beats both."""
    from results_doc import and_list

    v = _server_verdicts(cs)
    if not v:
        return "* **Server reconstruction**: no protocol with a server view ran."
    per = "; ".join(f"{p}: above a random public image {x.get('random', 'not tested')}, above "
                    f"the public mean {x.get('mean', 'not tested')}" for p, x in v.items())
    both = [p for p, x in v.items() if x.get("random") == x.get("mean") == "holds"]
    one = [p for p, x in v.items() if p not in both and "holds" in x.values()]
    if both:
        return (f"* **The server's reconstruction beats both baselines** for {and_list(both)} "
                f"(paired over the seeds, table above; {per}).")
    head = ("* **No server reconstruction beats both its baselines here**" if one else
            "* **No server reconstruction beats its baselines here**")
    return (f"{head} (paired over the seeds, table above; {per})"
            + (": " + "; ".join(
                f"{p} beats {NAMES[b]} but not {NAMES[o]}" for p in one
                for b, o in (("random", "mean"), ("mean", "random")) if v[p].get(b) == "holds")
               + " (each baseline uses nothing from the upload, so a pick that does not beat "
               "both is no leak)" if one else "")
            + ".  With each device's ~170 samples trained in mini-batches, the candidate the "
            "server picks from an upload does not beat both lines: the per-sample "
            "leak of section 2 of `privacy_attacks.md` needs uploads of one or a few samples.  "
            "The former `reconstruction_best_psnr` (every candidate scored against the truth) "
            "reported a \"leak\" in exactly this setting; it measured the selection.")


#: the previous page (3 seeds, 2 rounds, 2026-11-30 08:48; no per-seed values kept): its seeds
#: and the figures of its server rows, as printed -- history, fixed text
PREVIOUS_SEEDS = [0, 1, 2]
PREVIOUS_SERVER = {"dssgd": ("13.93 ± 0.77", "15.26 ± 1.75", "13.88 ± 0.19"),
                   "dssgd + dp": ("13.62 ± 0.94", "15.90 ± 1.60", "13.82 ± 0.50"),
                   "fedavg": ("13.88 ± 2.10", "15.16 ± 2.87", "13.77 ± 0.40"),
                   "phong": ("14.60 ± 1.14", "15.97 ± 1.31", "13.91 ± 0.13")}


def changed(data: dict) -> str:
    """"Claims that changed": the server rows' figures, the previous page's (history) → now,
    and every comparison of the reading over the earlier seeds beside all seeds (the same
    per-seed values, rerun with today's code)."""
    from results_doc import more_seeds_changes, seeds_text

    res = results_of(data)
    seeds = data_seeds(data)
    earlier = [s for s in data.get("earlier_seeds", PREVIOUS_SEEDS) if s in seeds]
    rows = {r["protocol"]: r for r in table_rows(res) if r["observer"] == "server, from each upload"}
    out = [f"The previous page had {len(PREVIOUS_SEEDS)} seeds ({seeds_text(PREVIOUS_SEEDS)}) "
           "and stated \"no server reconstruction beats its baselines\" without a test.  Server "
           "rows, reconstruction / random public image / public mean PSNR (dB), old → new "
           f"({len(seeds)} seeds):", ""]
    for name, (r0, b0, m0) in PREVIOUS_SERVER.items():
        r = rows.get(name)
        if r is None:
            out.append(f"* {name}: {r0} / {b0} / {m0} → not measured now.")
            continue
        base = r["baseline"].removeprefix("random public image ").split("; public mean ")
        out.append(f"* {name}: {r0} → {r['score']}; {b0} → {base[0]}; {m0} → {base[-1]}.")
    v = _server_verdicts(claims(res))
    beat = [f"{p}'s pick beats {NAMES[b]}" for p, x in v.items() for b in NAMES
            if x.get(b) == "holds"]
    both = [p for p, x in v.items() if x.get("random") == x.get("mean") == "holds"]
    out += ["", "The reading's \"no server reconstruction beats its baselines\" (untested), "
            f"paired over {len(seeds)} seeds: "
            + ("; ".join(beat) + "; " if beat else "no pick beats either baseline; ")
            + (f"{', '.join(both)} beat{'s' * (len(both) == 1)} both baselines." if both else
               "none beats both baselines, so the claim stands as \"no server reconstruction "
               "beats both its baselines\".")]
    if set(earlier) < set(seeds):
        old = {(c["protocol"], c["text"]): c for c in claims(results_of(data, earlier))}
        pairs = [(f"{c['protocol']}: {c['text']}", old[(c["protocol"], c["text"])]["d"], c["d"],
                  c["digits"]) for c in claims(res) if (c["protocol"], c["text"]) in old]
        out += ["", f"Every comparison of the reading over seeds {seeds_text(earlier)} (the "
                "previous page's seeds, rerun with today's code: its own runs were not kept) "
                "and over all seeds:", ""]
        out += more_seeds_changes(pairs, old_seeds=earlier, new_seeds=seeds)
    return "\n".join(out) + "\n"


def measured_text(data: dict) -> str:
    """Who measured the file's runs: each process's command, seeds, wall and CPU time."""
    from results_doc import seeds_text

    parts = [f"{m['command']} ({m['runs']} runs of seeds {seeds_text(m['seeds'])} in this "
             f"process, {m['wall_s']:.0f} s wall, {m['cpu_s']:.0f} s CPU, {m['when']})"
             for m in data["measured"]]
    return "Measured by " + " + ".join(parts)


def longer_training(old: dict, new: dict) -> str:
    """"Longer training": the same seeds after ``old["rounds"]`` and after ``new["rounds"]``
    rounds: each protocol's accuracy, and every comparison of the reading at both (paired over
    the seeds both files hold), its verdict marked where it changed."""
    from results_doc import fmt_paired, seeds_text, verdict

    seeds = sorted(set(data_seeds(old)) & set(data_seeds(new)))
    r0, r1 = old["rounds"], new["rounds"]
    a0 = {r["protocol"]: r["accuracy"] for r in table_rows(results_of(old, seeds))
          if "accuracy" in r}
    out = [f"Until 2026-12-02 the table was measured after {r0} rounds, when most protocols' "
           f"models were barely trained (several near the 0.1 accuracy of chance on digits' 10 "
           f"classes), so a membership attack on them said little.  It is now measured after "
           f"{r1}.  Seeds {seeds_text(seeds)} ({len(seeds)}), the same fleet, data and "
           f"configuration otherwise; the {r0}-round runs are kept in "
           f"`{HISTORY.relative_to(ROOT)}`.", "",
           f"| protocol | accuracy after {r0} rounds | after {r1} rounds |", "| --- | --- | --- |"]
    seen = set()
    for r in table_rows(results_of(new, seeds)):
        if "accuracy" in r and r["protocol"] not in seen:
            seen.add(r["protocol"])
            out.append(f"| {r['protocol']} | {a0.get(r['protocol'], '—')} | {r['accuracy']} |")
    c0 = {(c["protocol"], c["text"]): c for c in claims(results_of(old, seeds))}
    out += ["", f"| claim | {r0} rounds: a − b [95 % interval], p | {r1} rounds | verdict "
                f"({r0} → {r1} rounds) |", "| --- | --- | --- | --- |"]
    moved = []
    for c in claims(results_of(new, seeds)):
        was = c0.get((c["protocol"], c["text"]))
        if was is None:
            continue
        v0, v1 = verdict(was["d"]), verdict(c["d"])
        claim = f"{c['protocol']}: {c['text']}"
        if v0 != v1:
            moved.append(f"{claim} ({v0} → {v1})")
        out.append(f"| {claim} | {fmt_paired(was['d'], c['digits'])} | "
                   f"{fmt_paired(c['d'], c['digits'])} | "
                   + (f"**{v0} → {v1}** |" if v0 != v1 else f"{v1} |"))
    out += ["", (f"Verdicts that changed with {r1} rounds instead of {r0}: " + "; ".join(moved)
                 + ".") if moved else f"No verdict changed with {r1} rounds instead of {r0}."]
    from crowdlearn.privacy.attacks.views import ATTACKED_UPLOADS as attacked
    out += ["", f"The server rows attack each run's first {attacked} uploads, not its last ones (see "
                "\"Observers and attacks\" above): DSSGD's are the same uploads at both lengths, "
                f"so its server rows are equal by construction; FedAvg's {attacked} uploads span "
                "more rounds in the longer runs."]
    return "\n".join(out) + "\n"


def history(data: dict) -> dict | None:
    """The 2-round data of issue 17's page: ``data`` itself when it is of 2 rounds, else the
    archived :data:`HISTORY` file (None when there is none)."""
    import json

    if data["rounds"] == 2:
        return data
    return json.loads(HISTORY.read_text()) if HISTORY.is_file() else None


def render(data: dict) -> None:
    """Rewrite the doc's generated blocks from the data file (and the 2-round history)."""
    md = markdown(table_rows(results_of(data)), seeds=data_seeds(data), rounds=data["rounds"],
                  devices=data["devices"], wall=measured_text(data), env=data["environment"],
                  drift=drift_text(data))
    _replace(md, "<!-- privacy-table:start -->", "<!-- privacy-table:end -->")
    _replace(reading(results_of(data), data["devices"]), "<!-- privacy-reading:start -->",
             "<!-- privacy-reading:end -->")
    old = history(data)
    if old is not None and old is not data:
        _replace(longer_training(old, data), "<!-- privacy-rounds:start -->",
                 "<!-- privacy-rounds:end -->")
    _replace(changed(old) if old is not None else
             f"The {HISTORY.relative_to(ROOT)} file of issue 17's page is missing.\n",
             "<!-- privacy-changed:start -->", "<!-- privacy-changed:end -->")


def rerun_compare(stored: dict, fresh: dict) -> dict:
    """Every stored value of the runs ``fresh`` holds (same protocol, variant and seed) against
    ``fresh``'s, wall times aside: ``{"seeds", "compared", "identical", "moved"}`` with ``moved``
    the first ten differences ``[protocol, variant, seed, field, stored, fresh]``.

    >>> run = {"seed": 0, "final_accuracy": 0.5, "bytes_total": 10, "wall_time_s": 1.0}
    >>> a = {"variants": [{"protocol": "p", "variant": "v", "runs": [run]}]}
    >>> b = {"variants": [{"protocol": "p", "variant": "v",
    ...                    "runs": [{**run, "final_accuracy": 0.6, "wall_time_s": 2.0}]}]}
    >>> c = rerun_compare(a, b)
    >>> c["compared"], c["identical"], c["moved"]
    (3, 2, [['p', 'v', 0, 'final_accuracy', 0.5, 0.6]])
    """
    def index(d):
        return {(v["protocol"], v["variant"], r["seed"]): r for v in d["variants"]
                for r in v.get("runs", [])}
    old, new = index(stored), index(fresh)
    compared = identical = 0
    moved = []
    for key, run in new.items():
        if key not in old:
            continue
        for field, value in old[key].items():
            if field == "wall_time_s":
                continue
            compared += 1
            if run.get(field) == value:
                identical += 1
            elif len(moved) < 10:
                moved.append([*key, field, value, run.get(field)])
    return {"seeds": sorted({k[2] for k in new}), "compared": compared,
            "identical": identical, "moved": moved}


def drift_text(data: dict) -> str:
    """How far a rerun drifts: the stored ``--rerun-check`` comparison, or that none was made."""
    from results_doc import seeds_text
    r = data.get("rerun")
    if not r:
        return ("Rerun drift: not measured for this file (`--rerun-check` measures it).  Another "
                "machine (BLAS, TensorFlow build) may move single values in the last digits; "
                "the intervals are the result.")
    which = "that seed" if len(r["seeds"]) == 1 else "those seeds"
    how = (f"all {r['compared']} stored values of {which} identical" if r["identical"] == r["compared"] else
           f"{r['identical']} of {r['compared']} stored values identical (first differences: "
           + "; ".join(f"{p} {v} seed {sd} {f}: {a} → {b}" for p, v, sd, f, a, b in r["moved"])
           + ")")
    return (f"Rerun drift: seed {seeds_text(r['seeds'])} run again in a fresh process "
            f"(`--rerun-check`, {r['when']}): {how}, wall times aside.  Another machine (BLAS, "
            f"TensorFlow build) may move single values in the last digits; the intervals are the "
            f"result.")


def main(argv=None) -> int:
    import json

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true",
                    help="1 seed, 1 round, 6 devices: a smoke run (printed only)")
    ap.add_argument("--seed", type=int, default=0, help="first seed (default 0)")
    ap.add_argument("--seeds", type=int, default=5, help="seeds (default 5)")
    ap.add_argument("--rounds", type=int, default=5, help="rounds (default 5)")
    ap.add_argument("--jobs", type=int, default=1, help="worker processes per sweep")
    ap.add_argument("--out", help="sweep folder (resumable); default: a temporary folder")
    ap.add_argument("--write-docs", action="store_true",
                    help=f"merge the runs into {DATA.relative_to(ROOT)} and rewrite "
                         f"{DOC.relative_to(ROOT)} from it")
    ap.add_argument("--render", action="store_true",
                    help=f"only rewrite {DOC.relative_to(ROOT)} from {DATA.relative_to(ROOT)}")
    ap.add_argument("--fm-noise", action="store_true",
                    help="only measure FM's noise-to-signal ratio (the explanation of its row); "
                         "with --write-docs rewrite that block")
    ap.add_argument("--rerun-check", action="store_true",
                    help=f"run the first stored seed again in a fresh folder, compare every stored "
                         f"value of it, store the comparison in {DATA.relative_to(ROOT)} and "
                         f"re-render (the page's drift sentence)")
    args = ap.parse_args(argv)
    if args.rerun_check:
        if not DATA.exists():
            ap.error(f"--rerun-check needs {DATA.relative_to(ROOT)}: measure with --write-docs "
                     f"first")
        data = json.loads(DATA.read_text())
        seed = min(r["seed"] for v in data["variants"] for r in v.get("runs", []))
        with tempfile.TemporaryDirectory() as tmp:
            results = run([seed], rounds=data["rounds"], devices=data["devices"], out=Path(tmp),
                          jobs=args.jobs)
        fresh = to_data(results, rounds=data["rounds"], devices=data["devices"], measured={})
        data["rerun"] = {**rerun_compare(data, fresh), "when": time.strftime("%Y-%m-%d")}
        print(drift_text(data))
        DATA.write_text(json.dumps(data, indent=1))
        render(data)
        return 0
    if args.render:
        if not DATA.exists():
            ap.error(f"--render needs {DATA.relative_to(ROOT)}: measure with --write-docs first")
        render(json.loads(DATA.read_text()))
        return 0
    if args.seeds < 1 or args.seed < 0:
        ap.error(f"--seed {args.seed} --seeds {args.seeds}: need a seed >= 0 and at least 1 seed")
    seeds = [0] if args.quick else list(range(args.seed, args.seed + args.seeds))
    rounds = 1 if args.quick else args.rounds
    devices = 6 if args.quick else 8
    t0, c0 = time.perf_counter(), time.process_time()
    if args.fm_noise:
        md = fm_markdown(fm_noise_to_signal(seeds, devices=devices), seeds)
        print(md)
        if args.write_docs:
            _replace(md, "<!-- fm-noise:start -->", "<!-- fm-noise:end -->")
        return 0
    if args.write_docs and args.quick:
        ap.error("--write-docs needs a full run (drop --quick)")
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(args.out) if args.out else Path(tmp)
        results = run(seeds, rounds=rounds, devices=devices, out=out, jobs=args.jobs)
        rows = table_rows(results)
    from results_doc import environment
    wall = f"Measured {time.strftime('%Y-%m-%d')} in {time.perf_counter() - t0:.0f} s wall time"
    print(markdown(rows, seeds=seeds, rounds=rounds, devices=devices, wall=wall,
                   env=environment()))
    if args.write_docs:
        ran = sum(int((df["status"] == "ok").sum()) for *_, df in results
                  if not isinstance(df, str))
        cmd = (f"`nice -n {os.nice(0)} .venv/bin/python benchmarks/privacy_table.py "
               + " ".join(sys.argv[1:] if argv is None else argv) + "`")
        new = to_data(results, rounds=rounds, devices=devices,
                      measured={"command": cmd, "seeds": seeds, "runs": ran,
                                "wall_s": time.perf_counter() - t0,
                                "cpu_s": time.process_time() - c0,
                                "when": time.strftime("%Y-%m-%d")})
        old = json.loads(DATA.read_text()) if DATA.exists() else None
        data = merge_data(old, new)
        DATA.parent.mkdir(parents=True, exist_ok=True)
        DATA.write_text(json.dumps(data, indent=1))
        render(data)
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
    print(f"wrote {DOC}")


if __name__ == "__main__":
    raise SystemExit(main())
