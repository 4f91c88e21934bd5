"""Command line: ``crowdlearn run``, ``crowdlearn sweep``, ``crowdlearn compare``, ``crowdlearn partition``.

Exit status: 0 on success; 2 on a problem the user can fix (bad configuration, missing data, a
bad ``--out``), with a message naming the problem and the fix; 3 when a run completed no round
or epoch (its results are still written); 128 + the signal number when a signal ended the run
(130 Ctrl-C/SIGINT, 143 SIGTERM, 129 SIGHUP; the results measured so far are still written).
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

from crowdlearn import __version__
from crowdlearn.errors import CrowdlearnError
from crowdlearn.heartbeat import Heartbeat
from crowdlearn.signals import as_interrupts, deferred, exit_status, signal_of
from crowdlearn.training.tfimport import import_tensorflow

#: Exit status of a run that completed no round or epoch.
EXIT_NO_PROGRESS = 3
#: seconds of wall time a round may run without a line before `run` says it is still running
HEARTBEAT_S = 60.0

DESCRIPTION = """\
Simulate fleets of mobile devices that train a neural network together without sharing their
data: FedAvg, Crowdlearning (SliceNet), DSSGD, the functional mechanism and baselines, in
simulated time with real TensorFlow training."""

EPILOG = """\
examples:
  crowdlearn run examples/fedavg_fashion.toml --out results/fashion
  crowdlearn run --set rounds=5 --set fleet.devices=20 --out results/small
  crowdlearn compare results/fashion results/small --out plots/compare.png
  crowdlearn partition --model paper-mlp --pieces 5

exit status: 0 done; 2 a problem you can fix (the message says how); 3 no round completed;
128+N ended by signal N (130 Ctrl-C, 143 SIGTERM, 129 SIGHUP), with partial results written."""

RUN_DESCRIPTION = """\
Run one experiment and write its results folder (config.json, metrics.csv, devices.csv,
rounds.csv, summary.json, plots). The configuration is checked first: every problem is listed
and nothing runs. Ctrl-C, SIGTERM and SIGHUP stop the run and still write what was measured."""

RUN_EPILOG = """\
--set values are read as TOML when they parse (numbers, true/false, [lists], "quoted strings")
and as plain text otherwise, so --set protocol=fedavg and --set protocol='"fedavg"' are the same.

--out never deletes what crowdlearn did not write: an existing folder must be empty, or a results
folder of an earlier run (it holds a .crowdlearn-results marker) together with --overwrite."""


def _default_out(stem: str) -> Path:
    base = Path("results") / f"{stem}-{time.strftime('%Y%m%d-%H%M%S')}"
    out, k = base, 1
    while out.exists():
        k += 1
        out = base.with_name(f"{base.name}-{k}")
    return out


def _run(args: argparse.Namespace) -> int:
    from crowdlearn import config as config_mod
    from crowdlearn.results import check_out

    sets = list(args.set or [])
    if getattr(args, "runtime", None):
        sets.append(f"runtime.engine={args.runtime}")
    cfg = config_mod.load(args.config, sets)
    stem = Path(args.config).stem if args.config else "default"
    out = Path(args.out) if args.out else _default_out(stem)
    check_out(out, overwrite=args.overwrite)      # before anything runs, not after

    from crowdlearn import registry
    if cfg.training.backend != "none" or registry.get(cfg.protocol).needs_tensorflow:
        import_tensorflow(quiet=True)
    from crowdlearn.experiment import Simulation  # heavy imports only once the config is valid

    bar = None
    tty = sys.stderr.isatty()
    if not args.quiet and tty:
        from tqdm import tqdm
        bar = tqdm(total=cfg.rounds, unit="round", file=sys.stderr, dynamic_ncols=True,
                   desc=f"{cfg.protocol}")
    last_line = [0.0]
    # a line when a round runs a minute without a row (above the bar on a terminal)
    say = bar.write if bar is not None else (lambda line: print(line, file=sys.stderr,
                                                                flush=True))
    beat = Heartbeat(say, cfg.protocol, rounds=cfg.rounds, every=0 if args.quiet else HEARTBEAT_S)

    def on_row(row: dict) -> None:
        beat.row(row)
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

    try:
        with as_interrupts(), beat:  # a signal while building: nothing measured, nothing written
            results = Simulation(cfg, on_row=on_row).run()
    finally:
        if bar is not None:
            bar.close()
    with deferred() as held:     # a signal now waits until the folder is complete
        folder = _write(results, out, args)
    s = results.summary
    metric = "accuracy" if "final_accuracy" in s else "rmse"
    final = s.get(f"final_{metric}")
    print(f"{s['protocol']}: {s['rounds_completed']} rounds, final {metric} "
          f"{final if final is None else format(final, '.4f')}, simulated {_fmt_time(s['sim_time_s'])}, "
          f"{s['bytes_total'] / 1e6:.1f} MB, wall {s['wall_time_s']:.1f} s")
    print(f"results: {folder}")
    if results.interrupted:
        name = s.get("signal") or "SIGINT"
        print(f"crowdlearn: interrupted by {name}: the results above hold what was measured "
              "before it", file=sys.stderr)
        return exit_status(_signum(name))
    if held.received:
        name = _signame(held.received[0])
        print(f"crowdlearn: {name} arrived while the results were written; they are complete",
              file=sys.stderr)
        return exit_status(held.received[0])
    if s["rounds_completed"] == 0:
        print(f"crowdlearn: no round completed: {_why_stopped(s, cfg)}", file=sys.stderr)
        return EXIT_NO_PROGRESS
    if not s["completed"]:
        print(f"crowdlearn: note: stopped after {s['rounds_completed']} of {s['rounds_planned']} "
              f"rounds: {_why_stopped(s, cfg)}", file=sys.stderr)
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
    try:
        df = sweep(cfg, grid, args.seeds, out=out, backend=args.backend, jobs=jobs,
                   address=args.address, cpus_per_run=args.cpus_per_run,
                   plots=not args.no_plots, progress=None if args.quiet else cli_progress)
    except KeyboardInterrupt as exc:
        signum, name = signal_of(exc)
        if not (out / "sweep.csv").is_file():
            raise
        print(f"crowdlearn: sweep interrupted by {name}: {out / 'sweep.csv'} holds the runs "
              "that finished, and a run it stopped keeps what it measured in its folder under "
              f"{out / 'runs'}; the same command resumes the sweep", file=sys.stderr)
        return exit_status(signum)
    failed = int((df["status"] == "failed").sum()) if "status" in df else 0
    skipped = int((df["status"] == "skipped").sum()) if "status" in df else 0
    print(f"sweep: {len(df)} runs ({len(df) - failed - skipped} ran, {skipped} already finished, "
          f"{failed} failed); table: {out / 'sweep.csv'}")
    return 1 if failed else 0
def _write(results, out: Path, args: argparse.Namespace) -> Path:
    """Write the results; if ``out`` failed after the run, rescue them to a temporary folder."""
    from crowdlearn.results import write
    try:
        return write(results, out, plots=not args.no_plots, overwrite=args.overwrite)
    except (OSError, CrowdlearnError) as exc:
        import tempfile
        stamp = f"{time.strftime('%Y%m%d-%H%M%S')}-{os.getpid()}"
        rescue = Path(tempfile.gettempdir()) / f"crowdlearn-rescued-{stamp}"
        folder = write(results, rescue, plots=not args.no_plots)
        raise CrowdlearnError(f"could not write the results to {out} ({exc}); they were saved "
                              f"to {folder} instead: move them where you want them") from None


def _why_stopped(s: dict, cfg) -> str:
    """Why a run ended before its planned rounds, and what to change."""
    if s.get("stopped_by") == "max_sim_time_s":
        return (f"max_sim_time_s = {cfg.max_sim_time_s:g} s of simulated time ended the run; "
                "raise max_sim_time_s")
    if s.get("stall"):
        return (f"{s['stall']} (simulated time {_fmt_time(s['sim_time_s'])}): check the "
                "availability settings and slicenet.group_size")
    return (f"the simulation ran out of things to do at simulated time "
            f"{_fmt_time(s['sim_time_s'])}: no further round could start or finish (too few "
            "devices present or able to finish: check fedavg.min_clients and clients_per_round, "
            "the availability and battery settings, and deadlines)")


def _signum(name: str) -> int:
    import signal
    return int(getattr(signal, name, signal.SIGINT))


def _signame(signum: int) -> str:
    import signal
    return signal.Signals(signum).name


def _fmt_time(seconds: float) -> str:
    if seconds < 120:
        return f"{seconds:.1f}s"
    if seconds < 7200:
        return f"{seconds / 60:.1f}min"
    return f"{seconds / 3600:.2f}h"


def _check_plot_path(path: Path, option: str) -> Path:
    """A figure path matplotlib can write: known suffix, not a folder, parent creatable."""
    from matplotlib.figure import Figure

    from crowdlearn.results import check_writable_parent
    formats = Figure().canvas.get_supported_filetypes()
    if path.is_dir():
        raise CrowdlearnError(f"{option} {path}: is a folder; name the image file to write, "
                              f"e.g. {option} {path / 'compare.png'}")
    if path.suffix.lstrip(".").lower() not in formats:
        raise CrowdlearnError(f"{option} {path}: unknown image type {path.suffix or '(none)'!r}; "
                              f"end the name with one of .{', .'.join(sorted(formats))}, "
                              "e.g. compare.png")
    check_writable_parent(path, option)
    return path


def _compare(args: argparse.Namespace) -> int:
    from crowdlearn.plots import curves
    from crowdlearn.results import read_metrics, read_summary

    out = _check_plot_path(Path(args.out), "--out")
    runs = []
    problems = []
    for d in args.dirs:
        p = Path(d)
        if not (p / "metrics.csv").is_file() or not (p / "summary.json").is_file():
            problems.append(f"{d}: not a results folder (no metrics.csv or summary.json); give "
                            "folders written by `crowdlearn run`")
            continue
        try:
            s = read_summary(p)
            missing = [k for k in ("sim_time_s", "bytes_total") if k not in s]
            if missing:
                raise KeyError(f"summary.json lacks {', '.join(missing)}")
            runs.append((f"{p.name} ({s.get('protocol', '?')})", read_metrics(p), s))
        except (OSError, ValueError, KeyError) as exc:
            problems.append(f"{d}: a damaged results folder ({type(exc).__name__}: {exc}); "
                            "run it again or leave it out")
    if problems:
        raise CrowdlearnError("cannot compare:\n" + "\n".join(f"  - {p}" for p in problems))
    out.parent.mkdir(parents=True, exist_ok=True)
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


class _Parser(argparse.ArgumentParser):
    """argparse whose usage errors name the fix (``--help``) as well as the problem."""

    def error(self, message: str):
        self.print_usage(sys.stderr)
        self.exit(2, f"{self.prog}: error: {message}\n(see `{self.prog} --help`)\n")


def build_parser() -> argparse.ArgumentParser:
    fmt = argparse.RawDescriptionHelpFormatter
    verbose = "show TensorFlow's start-up log lines (hidden by default)"
    # --verbose before or after the command; SUPPRESS keeps a sub-command from resetting it
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--verbose", action="store_true", default=argparse.SUPPRESS, help=verbose)
    p = _Parser(prog="crowdlearn", description=DESCRIPTION, epilog=EPILOG, formatter_class=fmt)
    p.add_argument("--verbose", action="store_true", help=verbose)
    p.add_argument("--version", action="version", version=f"crowdlearn {__version__}")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND",
                           parser_class=_Parser)

    r = sub.add_parser("run", help="run one experiment and write its results folder",
                       description=RUN_DESCRIPTION, epilog=RUN_EPILOG, formatter_class=fmt,
                       parents=[common])
    r.add_argument("config", nargs="?", help="TOML config file, or a results folder's "
                   "config.json to make that run again (omit it for all the defaults)")
    r.add_argument("--out", metavar="DIR",
                   help="results folder: new, empty, or an earlier results folder with "
                        "--overwrite (default results/<config>-<date>-<time>)")
    r.add_argument("--overwrite", action="store_true",
                   help="replace --out if it holds the results of an earlier run (never other "
                        "files)")
    r.add_argument("--set", action="append", metavar="KEY=VALUE",
                   help="override a config key, e.g. --set fedavg.lr=0.1 (repeatable)")
    r.add_argument("--quiet", action="store_true", help="no progress bar or progress lines")
    r.add_argument("--no-plots", action="store_true", help="skip the PNG plots")
    r.add_argument("--runtime", choices=("simpy", "asyncio"),
                   help="the runtime (same as --set runtime.engine=...): simpy (simulated "
                        "time) or asyncio (every node on its own loopback TCP connection)")
    r.set_defaults(func=_run)

    c = sub.add_parser("compare", help="plot several runs' curves on shared axes",
                       description="Draw the accuracy (or RMSE) of several results folders "
                                   "against simulated time and bytes, and print a table.",
                       parents=[common])
    c.add_argument("dirs", nargs="+", metavar="DIR", help="results folders of `crowdlearn run`")
    c.add_argument("--out", default="compare.png", metavar="FILE.png",
                   help="image to write; missing folders are created (default compare.png)")
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
    w.add_argument("--quiet", action="store_true", help="no progress lines")
    w.add_argument("--no-plots", action="store_true", help="skip the PNG plots")
    w.set_defaults(func=_sweep)

    try:
        from crowdlearn.partition_cli import add_partition_parser
    except ImportError:  # pragma: no cover - slicenet is part of the package
        add_partition_parser = None
    if add_partition_parser is not None:
        add_partition_parser(sub, parents=[common])
    from crowdlearn.peer_cli import add_peer_parsers
    add_peer_parsers(sub, parents=[common])
    return p


def _quiet_tensorflow(verbose: bool) -> None:
    """TensorFlow's C++ start-up lines are hidden unless ``--verbose`` (must run before TF loads)."""
    if verbose:
        os.environ["TF_CPP_MIN_LOG_LEVEL"] = "0"
        return
    os.environ["TF_CPP_MIN_LOG_LEVEL"] = os.environ.get("TF_CPP_MIN_LOG_LEVEL") or "2"
    import logging
    logging.getLogger("tensorflow").setLevel(logging.ERROR)


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    args.verbose = getattr(args, "verbose", False)
    _quiet_tensorflow(args.verbose)
    try:
        return args.func(args)
    except CrowdlearnError as exc:     # ConfigError included: every problem, then exit 2
        print(f"crowdlearn: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt as exc:
        signum, name = signal_of(exc)
        print(f"crowdlearn: interrupted by {name}; nothing was written", file=sys.stderr)
        return exit_status(signum)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
