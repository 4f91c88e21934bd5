"""Measure the fleet model against what it promises (issue 16), over seeds (issue 17): churn per
task under cancellations, the diurnal curve's peak, swing and daily mean, each tier's radio power
and round trip.  ``docs/experiments/fleet_model.md``.

Churn: ``--devices`` devices run 100 s tasks with 50 s idle between them; every other task is
cancelled by its machine after 10 s (a straggler cut off).  A task that runs to its end must drop
out with probability p, a cut one with p/10 (the drop-out moment is uniform over the task), an
idle device never.  Each seed seeds the driver's generator (the churn draws).

Diurnal: ``Sessions`` with 1 h online / 3 h offline (π = 0.25) and 2 h / 1 h (π = 2/3),
``peak_hour = 20``; the share of ``--devices`` devices online is sampled every 5 minutes for 3
days from time 0 and its first daily harmonic fitted: the fitted peak must be ``peak_hour``, the
swing ``a · min(π, 1 − π)``, the mean π.  Each seed seeds the sessions' generator.

Tiers: radio power, energy per bit and round trip of each tier, computed from ``sim.profiles``
and ``sim.network`` (deterministic: no seed).

Every per-seed value, the tier figures, the environment, the date, the command and the wall / CPU
seconds are stored in ``docs/experiments/data/fleet_model.json``; ``--render`` rebuilds the page
from that file alone (cells: mean ± 95 % Student-t half-width over the seeds; each expectation
checked with a one-sample t-test over the seeds, :mod:`results_doc`).

Run::

    nice -n 19 .venv/bin/python benchmarks/fleet_model.py --seeds 20 --devices 4000 --write-docs
    .venv/bin/python benchmarks/fleet_model.py --rerun-check --write-docs   # seed 0 again: drift
    .venv/bin/python benchmarks/fleet_model.py --render     # the page from the stored data
    .venv/bin/python benchmarks/fleet_model.py --quick      # 100 devices, 2 seeds, temp folder
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

import results_doc as R  # noqa: E402

DOC = ROOT / "docs" / "experiments" / "fleet_model.md"
DATA = ROOT / "docs" / "experiments" / "data" / "fleet_model.json"
CHURN_P = (0.05, 0.2, 0.5)
#: (mean online s, mean offline s) of the two session models
SESSIONS = ((3600.0, 10800.0), (7200.0, 3600.0))
AMPLITUDES = (0.3, 0.6, 0.9, 0.99)
PEAK_HOUR = 20.0
DEFAULT_SEEDS = 20
DEFAULT_DEVICES = 4000
QUICK_DEVICES = 100
MIN_SEEDS = 10
#: the figures of one seed compared by ``--rerun-check``
CHURN_KEYS = ("full", "full_drops", "cut", "cut_drops", "idle_drops")
DIURNAL_KEYS = ("peak_h", "swing", "mean")


# ---------------------------------------------------------------- measuring
def churn_counts(n: int, p: float, seed: int) -> dict:
    """Task counts and drop-outs of ``n`` devices under churn ``p`` (driver seeded by ``seed``);
    tasks still running when the run ends are left out (their fate is unknown)."""
    from crowdlearn.probes import Worker, make_driver

    driver, machines = make_driver(
        n, lambda i, reasons: Worker(i, duration=100.0, idle=50.0, cut=lambda k: k % 2 == 0,
                                     cut_after=10.0, reasons=reasons),
        churn=p, churn_offline_s=1.0, seed=seed)
    horizon = 8 * 150.0
    driver.start()
    driver.run(until=horizon)
    c = {"done": 0, "cut": 0, "task": 0, "cut-task": 0, "idle": 0}
    for m in machines.values():
        for what, where, _reason, started in m.log:
            if started is None or started <= horizon - 100.0:   # tasks whose fate is known
                c[what if what != "drop" else where] += 1
    return {"full": c["done"] + c["task"], "full_drops": c["task"],
            "cut": c["cut"] + c["cut-task"], "cut_drops": c["cut-task"], "idle_drops": c["idle"]}


def diurnal(n: int, means: tuple[float, float], a: float, seed: int) -> tuple[float, float, float]:
    """Fitted peak hour, swing (first daily harmonic) and daily mean of the online share of
    ``n`` devices over 3 days sampled every 5 minutes."""
    from sim.availability import Sessions, online_share

    s = Sessions(*means, diurnal_amplitude=a, peak_hour=PEAK_HOUR)
    times = np.arange(0.0, 3 * 86400.0, 300.0)
    share = online_share(s, n, times, np.random.default_rng(seed))
    phase = 2 * math.pi * times / 86400.0
    c, si = 2 * np.mean(share * np.cos(phase)), 2 * np.mean(share * np.sin(phase))
    peak = (math.atan2(si, c) * 24 / (2 * math.pi)) % 24
    return peak, math.hypot(c, si), float(np.mean(share))


def tier_rows() -> list[dict]:
    """Each tier's radio, power at the nominal rates, energy per bit, one-way latency and round
    trip to the edge server (deterministic figures of ``sim.profiles``)."""
    import networkx as nx

    from sim.network import build_topology
    from sim.profiles import RADIO, TIER_RADIO, TIERS, radio_power_w

    server = TIERS["edge_server"]
    rows = []
    for name, p in TIERS.items():
        rtt = None
        if name != "edge_server":
            g = build_topology(1, device_up_bps=p.up_bps, device_down_bps=p.down_bps,
                               device_latency_s=p.latency_s, server_latency_s=server.latency_s)
            rtt = 1e3 * (nx.shortest_path_length(g, 0, "server", weight="latency")
                         + nx.shortest_path_length(g, "server", 0, weight="latency"))
        rows.append({"tier": name, "radio": TIER_RADIO[name],
                     "cap_w": RADIO[TIER_RADIO[name]].max_w,
                     "up_w": radio_power_w(p, "up"), "down_w": radio_power_w(p, "down"),
                     "up_nj_bit": p.j_per_byte_up / 8 * 1e9,
                     "down_nj_bit": p.j_per_byte_down / 8 * 1e9,
                     "latency_ms": p.latency_s * 1e3, "rtt_ms": rtt})
    return rows


def measure_seed(seed: int, devices: int) -> dict:
    """Every seeded figure of one seed: ``{"churn": {p: counts}, "diurnal": {key: (peak, swing,
    mean)}}``."""
    churn = {str(p): churn_counts(devices, p, seed) for p in CHURN_P}
    di = {}
    for means in SESSIONS:
        for a in AMPLITUDES:
            fit = diurnal(devices, means, a, seed)
            di[_dkey(means, a)] = dict(zip(DIURNAL_KEYS, fit, strict=True))
    return {"churn": churn, "diurnal": di}


def _dkey(means, a) -> str:
    return f"{means[0]:g}/{means[1]:g}/{a:g}"


def _usage() -> tuple[float, float]:
    return time.perf_counter(), time.process_time()


def measure(seeds: list[int], devices: int, *, log=print) -> dict:
    """Run every seed; returns the data file's content (history carried over by the caller)."""
    t0, c0 = _usage()
    per_seed = {}
    for seed in seeds:
        t, c = _usage()
        per_seed[str(seed)] = measure_seed(seed, devices)
        log(f"seed {seed}: {time.perf_counter() - t:.1f} s wall, "
            f"{time.process_time() - c:.1f} s CPU", flush=True)
    return {"seeds": list(seeds), "devices": devices, "per_seed": per_seed,
            "tiers": tier_rows(), "environment": R.environment(),
            "measured": time.strftime("%Y-%m-%d"), "argv": sys.argv[1:],
            "nice": os.nice(0), "wall_s": round(time.perf_counter() - t0, 1),
            "cpu_s": round(time.process_time() - c0, 1), "load_1min": round(os.getloadavg()[0], 2)}


def rerun_check(data: dict) -> dict:
    """Seed ``min(seeds)`` measured again in this process against its stored figures."""
    seed = min(data["seeds"])
    t, c = _usage()
    again = measure_seed(seed, data["devices"])
    first = data["per_seed"][str(seed)]
    diffs = [abs(again["churn"][p][k] - first["churn"][p][k]) for p in first["churn"]
             for k in CHURN_KEYS]
    diffs += [abs(again["diurnal"][d][k] - first["diurnal"][d][k]) for d in first["diurnal"]
              for k in DIURNAL_KEYS]
    return {"seed": seed, "figures": len(diffs), "identical": sum(x == 0 for x in diffs),
            "max_abs_diff": max(diffs), "environment": R.environment(),
            "measured": time.strftime("%Y-%m-%d"), "wall_s": round(time.perf_counter() - t, 1),
            "cpu_s": round(time.process_time() - c, 1)}


# ---------------------------------------------------------------- rendering
def _seed_values(data: dict, section: str, key: str, field) -> list[float]:
    return [field(data["per_seed"][str(s)][section][key]) for s in data["seeds"]]


def _check(values, expected: float, digits: int) -> tuple[str, str]:
    """(``mean − expected [95 %], p``, ``inside`` / ``outside (…)``) over the seeds; on fewer
    than :data:`MIN_SEEDS` seeds no verdict (``not claimed``)."""
    d = R.one_sample(values, expected)
    v = R.target_check(d) if d["n"] >= MIN_SEEDS else f"not claimed (< {MIN_SEEDS} seeds)"
    return R.fmt_paired(d, digits), v


def churn_section(data: dict) -> tuple[list[str], list[tuple[str, str]]]:
    """The churn table and the checks' verdicts (for the count of checks outside)."""
    out = ["| p | full tasks per seed | full-task drop-out rate | rate − p [95 %], p-value | "
           "p in the interval | cut tasks per seed | cut-task drop-out rate | rate − p/10 "
           "[95 %], p-value | p/10 in the interval | idle drop-outs (all seeds) |",
           "| ---: | ---: | ---: | --- | --- | ---: | ---: | --- | --- | ---: |"]
    verdicts = []
    for p in data["per_seed"][str(data["seeds"][0])]["churn"]:
        full = _seed_values(data, "churn", p, lambda r: r["full_drops"] / r["full"])
        cut = _seed_values(data, "churn", p, lambda r: r["cut_drops"] / r["cut"])
        f_txt, f_in = _check(full, float(p), 4)
        c_txt, c_in = _check(cut, float(p) / 10, 4)
        verdicts += [(f"full tasks at p = {float(p):g}", f_in),
                     (f"cut tasks at p = {float(p):g}", c_in)]
        idle = sum(_seed_values(data, "churn", p, lambda r: r["idle_drops"]))
        out.append(f"| {float(p):g} | {R.cell(_seed_values(data, 'churn', p, lambda r: r['full']), 0)} "
                   f"| {R.cell(full, 4)} | {f_txt} | {f_in} "
                   f"| {R.cell(_seed_values(data, 'churn', p, lambda r: r['cut']), 0)} "
                   f"| {R.cell(cut, 4)} | {c_txt} | {c_in} | {idle:,} |")
    return out, verdicts


def _err_min(peak: float) -> float:
    return ((peak - PEAK_HOUR + 12) % 24 - 12) * 60


def diurnal_section(data: dict) -> tuple[list[str], list[tuple[str, str]]]:
    out = ["| sessions on / off | π | a | fitted peak (h) | peak error (min) [95 %], p-value | "
           f"{PEAK_HOUR:g} h in the interval | swing | target a·min(π, 1 − π) | swing − target "
           "[95 %], p-value | target in the interval | daily mean | mean − π [95 %], p-value | "
           "π in the interval |",
           "| --- | ---: | ---: | ---: | --- | --- | ---: | ---: | --- | --- | ---: | --- | --- |"]
    verdicts = []
    for key in data["per_seed"][str(data["seeds"][0])]["diurnal"]:
        on, off, a = (float(x) for x in key.split("/"))
        pi = on / (on + off)
        target = a * min(pi, 1 - pi)
        peak = _seed_values(data, "diurnal", key, lambda r: r["peak_h"])
        err = [_err_min(x) for x in peak]
        swing = _seed_values(data, "diurnal", key, lambda r: r["swing"])
        mean = _seed_values(data, "diurnal", key, lambda r: r["mean"])
        e_txt, e_in = _check(err, 0.0, 2)
        s_txt, s_in = _check(swing, target, 4)
        m_txt, m_in = _check(mean, pi, 4)
        where = f"{on / 3600:g} h / {off / 3600:g} h, a = {a:g}"
        verdicts += [(f"peak at {where}", e_in), (f"swing at {where}", s_in),
                     (f"mean at {where}", m_in)]
        out.append(f"| {on / 3600:g} h / {off / 3600:g} h | {pi:.3f} | {a:g} | {R.cell(peak, 3)} "
                   f"| {e_txt} | {e_in} | {R.cell(swing, 4)} | {target:.4f} | {s_txt} | {s_in} "
                   f"| {R.cell(mean, 4)} | {m_txt} | {m_in} |")
    return out, verdicts


def tier_section(data: dict) -> list[str]:
    out = ["| tier | radio | up W | down W | up nJ/bit | down nJ/bit | one-way latency (ms) "
           "| round trip to edge server (ms) |", "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for r in data["tiers"]:
        rtt = "" if r["rtt_ms"] is None else f"{r['rtt_ms']:.1f}"
        out.append(f"| {r['tier']} | {r['radio']} (cap {r['cap_w']:g} W) | {r['up_w']:.3f} "
                   f"| {r['down_w']:.3f} | {r['up_nj_bit']:.1f} | {r['down_nj_bit']:.1f} "
                   f"| {r['latency_ms']:.2f} | {rtt} |")
    return out


def checks_sentence(checks: list[tuple[str, str]], n_seeds: int) -> str:
    """How many expectations (``(what, verdict)``) fall outside their interval, which, against
    the number expected by chance."""
    outside = [w for w, v in checks if v.startswith("outside")]
    n = len(checks)
    verb = "lies outside its" if len(outside) == 1 else "lie outside their"
    head = f"{len(outside)} of the {n} expectations above {verb} 95 % interval over {n_seeds} seeds"
    chance = (f"with every expectation true, about {0.05 * n:.1f} of {n} checks at 95 % fall "
              f"outside by chance")
    if n_seeds < MIN_SEEDS:
        return (f"Fewer than {MIN_SEEDS} seeds ({n_seeds}): no expectation is checked; {chance}.")
    where = f" ({R.and_list(outside)})" if outside else ""
    return f"{head}{where}; {chance}."


def rerun_text(data: dict) -> str:
    r = data.get("rerun")
    if not r:
        return "No same-seed rerun is recorded in the data file (`--rerun-check`)."
    same_env = r["environment"] == data["environment"]
    res = (f"all {r['figures']} figures identical" if r["identical"] == r["figures"] else
           f"{r['identical']} of {r['figures']} figures identical, the largest difference "
           f"{r['max_abs_diff']:.3g}")
    return (f"Seed {r['seed']} measured again in a fresh process on {r['measured']} "
            f"(`--rerun-check`, {'the same' if same_env else 'another'} environment): {res}.")


def history_block(data: dict) -> list[str]:
    h = data.get("history")
    if not h:
        return []
    out = ["## History (not re-measured)", "",
           f"> {h['label']}", ""]
    for sec in h["sections"]:
        out += [f"### {sec['title']}", "", sec["body"].rstrip("\n"), ""]
    return out


def render(data: dict) -> str:
    seeds = data["seeds"]
    n = len(seeds)
    churn, v_churn = churn_section(data)
    di, v_di = diurnal_section(data)
    nice = data.get("nice")
    few = (f"  Fewer than {MIN_SEEDS} seeds: the intervals are shown, no verdict is drawn "
           f"from them." if n < MIN_SEEDS else "")
    cmd = (f"nice -n {nice if nice is not None else 19} .venv/bin/python benchmarks/fleet_model.py "
           f"--seeds {n} --devices {data['devices']} --write-docs")
    return "\n".join([
        "# Fleet model: churn, diurnal sessions, radio power and latency (issue 16)", "",
        "<!-- generated by benchmarks/fleet_model.py --write-docs / --render from "
        "docs/experiments/data/fleet_model.json; do not edit by hand -->", "",
        f"Seeds {R.seeds_text(seeds)} ({n} seeds; each seed seeds the driver's churn draws and "
        f"the sessions' generator), {data['devices']:,} devices in every churn and diurnal "
        f"run.  Each cell is the mean ± the half-width of the 95 % Student-t interval over the "
        f"seeds; each expectation is checked by a one-sample t-test of the per-seed values "
        f"against it (mean difference [95 % interval], p-value; 'inside' = the expectation "
        f"lies in the interval).{few}  Per-seed values: "
        f"`docs/experiments/data/fleet_model.json`.", "",
        "```sh", cmd,
        ".venv/bin/python benchmarks/fleet_model.py --rerun-check --write-docs   # drift",
        ".venv/bin/python benchmarks/fleet_model.py --render   # the page from the data file",
        "```", "",
        f"Measured {data['measured']} in {data['wall_s']:.0f} s wall, {data['cpu_s'] / 60:.1f} "
        f"CPU-min (load average {data['load_1min']:.1f} at the end"
        + (f", niceness {nice}" if nice is not None else "") + ").", "",
        "## Churn under cancellations (100 s tasks, every other one cut after 10 s)", "",
        "Each device runs 100 s tasks with 50 s idle between them for 1,200 s; every other task "
        "is cancelled by its machine after 10 s.  A task that runs to its end must drop out "
        "with probability p, a cut one with p/10 (the drop-out moment is uniform over the "
        "task), an idle device never.  Tasks still running when the run ends are left out "
        "(their fate is unknown).", "", *churn, "",
        f"## Diurnal sessions, peak_hour = {PEAK_HOUR:g}", "",
        "The share of devices online, sampled every 5 minutes for 3 days from time 0, and its "
        "first daily harmonic: the fitted peak must be at peak_hour, the swing (the harmonic's "
        "amplitude) a·min(π, 1 − π), the daily mean π (`sim.availability.Sessions`).", "",
        *di, "", checks_sentence(v_churn + v_di, n), "",
        "## Tiers: radio power at the nominal rate, energy per bit, round trip to the server", "",
        "Deterministic figures of `sim.profiles` and `sim.network` (no randomness: one value "
        "each, no interval).", "", *tier_section(data), "",
        *history_block(data),
        "## Environment and drift on rerun", "",
        "Environment: " + data["environment"].removeprefix("Environment: "), "",
        f"{rerun_text(data)}  Every seeded figure comes from numpy's seeded generators, "
        f"SimPy's deterministic event order and elementwise numpy arithmetic (no BLAS call, no "
        f"threads), so the same code and numpy version should reproduce every digit on another "
        f"machine; another numpy version may draw other streams (numpy does not promise "
        f"`Generator` streams stable across versions), which changes single-seed figures: then "
        f"the intervals, not the digits, are the result.  The tier table depends on "
        f"`sim.profiles` and `sim.network` only.", ""])


def write_doc(doc: Path, data_path: Path) -> None:
    doc.write_text(render(json.loads(data_path.read_text())))
    print(f"wrote {doc}")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seeds", type=int, default=DEFAULT_SEEDS,
                    help=f"seeds 0..N-1 (default {DEFAULT_SEEDS})")
    ap.add_argument("--devices", type=int, default=DEFAULT_DEVICES,
                    help=f"devices in each churn and diurnal run (default {DEFAULT_DEVICES})")
    ap.add_argument("--write-docs", action="store_true",
                    help=f"store the values in {DATA.relative_to(ROOT)} and render "
                         f"{DOC.relative_to(ROOT)}")
    ap.add_argument("--render", action="store_true", help="only re-render the page from the data")
    ap.add_argument("--rerun-check", action="store_true",
                    help="measure the first stored seed again and store how far it moved")
    ap.add_argument("--quick", action="store_true",
                    help=f"{QUICK_DEVICES} devices, 2 seeds, into a temporary folder (seconds)")
    ap.add_argument("--out", help="with --quick: the folder for the data and the page")
    a = ap.parse_args(argv)
    if a.seeds < 1 or a.devices < 1:
        ap.error(f"--seeds and --devices must be positive; got {a.seeds} and {a.devices}")
    doc, data_path = DOC, DATA
    if a.quick:
        tmp = Path(a.out) if a.out else Path(tempfile.mkdtemp(prefix="fleet-model-quick-"))
        tmp.mkdir(parents=True, exist_ok=True)
        doc, data_path = tmp / "fleet_model.md", tmp / "fleet_model.json"
    if a.render:
        write_doc(doc, data_path)
        return 0
    old = json.loads(data_path.read_text()) if data_path.is_file() else {}
    if a.rerun_check:
        if not old:
            ap.error(f"--rerun-check needs stored values: run --write-docs first ({data_path})")
        old["rerun"] = rerun_check(old)
        print(rerun_text(old))
        data_path.write_text(json.dumps(old, indent=1, ensure_ascii=False) + "\n")
        if a.write_docs:
            write_doc(doc, data_path)
        return 0
    seeds = [0, 1] if a.quick else list(range(a.seeds))
    data = measure(seeds, QUICK_DEVICES if a.quick else a.devices)
    if "history" in old:
        data["history"] = old["history"]
    if a.write_docs or a.quick:
        data_path.parent.mkdir(parents=True, exist_ok=True)
        data_path.write_text(json.dumps(data, indent=1, ensure_ascii=False) + "\n")
        write_doc(doc, data_path)
    else:
        print(render(data))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
