"""Command line: ``crowdlearn run``, ``crowdlearn sweep``, ``crowdlearn compare``, ``crowdlearn partition``.

Exit status: 0 on success, 2 on a problem the user can fix (bad configuration, missing data),
130 when interrupted (the results measured so far are still written).
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

from crowdlearn.errors import ConfigError, CrowdlearnError


def _run(args: argparse.Namespace) -> int:
    from crowdlearn import config as config_mod

    cfg = config_mod.load(args.config, args.set or [])
    stem = Path(args.config).stem if args.config else "default"
    out = Path(args.out) if args.out else Path("results") / f"{stem}-{time.strftime('%Y%m%d-%H%M%S')}"

    from sim.experiment import Simulation  # heavy imports only once the config is valid

    bar = None
    tty = sys.stderr.isatty()
    if not args.quiet and tty:
        from tqdm import tqdm
        bar = tqdm(total=cfg.rounds, unit="round", file=sys.stderr, dynamic_ncols=True,
                   desc=f"{cfg.protocol}")
    last_line = [0.0]

    def on_row(row: dict) -> None:
        if args.quiet:
            return
        if bar is None:   # not a terminal (a log file, CI): a plain line at most every 10 s
            now = time.monotonic()
            if now - last_line[0] >= 10 or row["round"] == cfg.rounds - 1:
                last_line[0] = now
                metric = next((f"{k} {row[k]:.4f}" for k in ("accuracy", "rmse") if k in row), "")
                print(f"{cfg.protocol}: round {row['round'] + 1}/{cfg.rounds}, simulated "
                      f"{_fmt_time(row['time_s'])}, {metric}, {row['bytes_total'] / 1e6:.1f} MB",
                      file=sys.stderr, flush=True)
            return
        post = {"sim": _fmt_time(row["time_s"])}
        if "accuracy" in row:
            post["acc"] = f"{row['accuracy']:.3f}"
        elif "rmse" in row:
            post["rmse"] = f"{row['rmse']:.3f}"
        post["MB"] = f"{row['bytes_total'] / 1e6:.1f}"
        bar.set_postfix(post, refresh=False)
        bar.update(1)

    sim = Simulation(cfg, on_row=on_row)
    results = sim.run()
    if bar is not None:
        bar.close()
    from crowdlearn.results import write
    folder = write(results, out, plots=not args.no_plots)
    s = results.summary
    metric = "accuracy" if "final_accuracy" in s else "rmse"
    final = s.get(f"final_{metric}")
    print(f"{s['protocol']}: {s['rounds_completed']} rounds, final {metric} "
          f"{final if final is None else format(final, '.4f')}, simulated {_fmt_time(s['sim_time_s'])}, "
          f"{s['bytes_total'] / 1e6:.1f} MB, wall {s['wall_time_s']:.1f} s")
    print(f"results: {folder}")
    if results.interrupted:
        print("interrupted: the results above hold what was measured before Ctrl-C",
              file=sys.stderr)
        return 130
    return 0


def _sweep(args: argparse.Namespace) -> int:
    from crowdlearn import config as config_mod
    from crowdlearn.sweeps import cli_progress, parse_grid, sweep

    if args.seeds < 1:
        raise CrowdlearnError(f"--seeds must be >= 1; got {args.seeds}")
    if args.jobs is not None and args.jobs < 1:
        raise CrowdlearnError(f"--jobs must be >= 1; got {args.jobs}")
    grid = parse_grid(args.grid or [])
    cfg = config_mod.load(args.config, args.set or [])
    stem = Path(args.config).stem if args.config else "default"
    out = Path(args.out) if args.out else Path("results") / f"sweep-{stem}-{time.strftime('%Y%m%d-%H%M%S')}"
    jobs = args.jobs if args.jobs is not None else (os.cpu_count() or 1)
    df = sweep(cfg, grid, args.seeds, out=out, backend=args.backend, jobs=jobs,
               address=args.address, cpus_per_run=args.cpus_per_run, plots=not args.no_plots,
               progress=None if args.quiet else cli_progress)
    failed = int((df["status"] == "failed").sum()) if "status" in df else 0
    skipped = int((df["status"] == "skipped").sum()) if "status" in df else 0
    print(f"sweep: {len(df)} runs ({len(df) - failed - skipped} ran, {skipped} already finished, "
          f"{failed} failed); table: {out / 'sweep.csv'}")
    return 1 if failed else 0


def _fmt_time(seconds: float) -> str:
    if seconds < 120:
        return f"{seconds:.1f}s"
    if seconds < 7200:
        return f"{seconds / 60:.1f}min"
    return f"{seconds / 3600:.2f}h"


def _compare(args: argparse.Namespace) -> int:
    from crowdlearn.plots import curves
    from crowdlearn.results import read_metrics, read_summary

    runs = []
    problems = []
    for d in args.dirs:
        p = Path(d)
        if not (p / "metrics.csv").is_file():
            problems.append(f"{d}: not a results folder (no metrics.csv); give folders written "
                            "by `crowdlearn run`")
            continue
        s = read_summary(p)
        runs.append((f"{p.name} ({s.get('protocol', '?')})", read_metrics(p), s))
    if problems:
        raise ConfigError(problems)
    out = Path(args.out)
    curves([(label, rows) for label, rows, _ in runs], out)
    print(f"{'run':40s} {'protocol':12s} {'final':>8s} {'best':>8s} {'sim time':>10s} {'MB':>10s}")
    for label, _rows, s in runs:
        m = "accuracy" if "final_accuracy" in s else "rmse"
        fin, best = s.get(f"final_{m}"), s.get(f"best_{m}")
        print(f"{label[:40]:40s} {s.get('protocol', ''):12s} "
              f"{'-' if fin is None else format(fin, '.4f'):>8s} "
              f"{'-' if best is None else format(best, '.4f'):>8s} "
              f"{_fmt_time(s['sim_time_s']):>10s} {s['bytes_total'] / 1e6:>10.1f}")
    print(f"plot: {out}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="crowdlearn", description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="command", required=True)

    r = sub.add_parser("run", help="run one experiment from a TOML config")
    r.add_argument("config", nargs="?", help="TOML config (omit for all defaults)")
    r.add_argument("--out", help="results folder (default results/<config>-<time>)")
    r.add_argument("--set", action="append", metavar="KEY=VALUE",
                   help="override a config key, e.g. --set fedavg.lr=0.1 (repeatable)")
    r.add_argument("--quiet", action="store_true", help="no progress bar")
    r.add_argument("--no-plots", action="store_true", help="skip the PNG plots")
    r.set_defaults(func=_run)

    c = sub.add_parser("compare", help="draw several runs' curves on shared axes")
    c.add_argument("dirs", nargs="+", help="results folders")
    c.add_argument("--out", default="compare.png", help="PNG to write (default compare.png)")
    c.set_defaults(func=_compare)

    w = sub.add_parser("sweep", help="run a config over a grid of values and seeds",
                       description="Run the cartesian product of the --grid values times the "
                       "seeds; each run goes to OUT/runs/<id>/, one row per run to OUT/sweep.csv, "
                       "and a plot of each metric against each grid key (mean and 95 %% interval "
                       "over seeds) to OUT/sweep_<key>.png. Re-running the same command skips "
                       "finished runs; a failed run is recorded and the others go on.")
    w.add_argument("config", nargs="?", help="TOML config (omit for all defaults)")
    w.add_argument("--grid", action="append", metavar="KEY=V1,V2,...",
                   help="values of one key, read like --set values (repeatable: the product)")
    w.add_argument("--seeds", type=int, default=1,
                   help="seeds per grid point: seed, seed+1, ... (default 1)")
    w.add_argument("--set", action="append", metavar="KEY=VALUE",
                   help="override a key of the base config (repeatable)")
    w.add_argument("--out", help="sweep folder (default results/sweep-<config>-<time>); an "
                   "earlier sweep folder of the same config is resumed")
    w.add_argument("--backend", choices=("local", "ray"), default="local",
                   help="local process pool (default) or a Ray cluster")
    w.add_argument("--jobs", type=int, help="runs at once (default: CPU count; local: 1 = in "
                   "this process; ray: CPUs of the local cluster it starts)")
    w.add_argument("--address", help="Ray cluster to join: auto or ray://HOST:PORT (default: "
                   "start a local one)")
    w.add_argument("--cpus-per-run", type=float, default=1.0,
                   help="CPUs each Ray task requests (default 1)")
    w.add_argument("--quiet", action="store_true", help="no per-run progress lines")
    w.add_argument("--no-plots", action="store_true", help="skip the PNG plots")
    w.set_defaults(func=_sweep)

    try:
        from slicenet.cli import add_partition_parser
    except ImportError:  # pragma: no cover - slicenet is part of the package
        add_partition_parser = None
    if add_partition_parser is not None:
        add_partition_parser(sub)
    return p


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return args.func(args)
    except CrowdlearnError as exc:
        print(f"crowdlearn: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("crowdlearn: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":  # pragma: no cover
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    sys.exit(main())
