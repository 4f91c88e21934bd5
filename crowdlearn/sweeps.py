"""Parameter sweeps: a grid of config values times seeds, run locally or on a Ray cluster.

A sweep is the cartesian product of a grid (``{"fedavg.lr": [0.02, 0.05], ...}``, keys as in
``--set``) and a list of seeds.  Every point is validated before anything runs (one bad value stops
the sweep with every problem listed).  Each run is written by the driver process into
``OUT/runs/<id>/`` with the usual files; ``OUT/sweep.csv`` holds one row per run (the grid values,
the seed, the status and every scalar of its ``summary.json``) and is rewritten as runs finish, so
an interrupted sweep keeps what finished; the run that Ctrl-C (or SIGTERM, SIGHUP) stopped keeps
what it measured in its folder, its ``summary.json`` saying ``"interrupted": true``.  Run ids are
derived from the values, so re-running the same sweep skips the runs that already have a
``summary.json`` of a run that was not interrupted (resumable; an interrupted run is made
again).  A run that fails is recorded with its error in ``sweep.csv`` and does not stop the
others; the next invocation retries it.

Backends
--------
``"local"``
    ``jobs = 1`` runs in this process (handy in notebooks); ``jobs > 1`` uses a pool of ``jobs``
    worker processes (spawned, so TensorFlow is never forked).
``"ray"``
    Each run is a Ray task requesting ``cpus_per_run`` CPUs, on the cluster at ``address``
    (``"auto"`` or ``"ray://HOST:PORT"``) or on a local cluster started for the sweep
    (``ray.init(num_cpus=jobs)``) and shut down afterwards.  Each distinct dataset is put into the
    object store once and shared by every run that uses it; results come back to the driver,
    which writes them under ``OUT``.  Ray is an optional extra: ``pip install 'crowdlearn[ray]'``.

Examples
--------
>>> from crowdlearn.sweeps import expand_grid, parse_grid
>>> grid = parse_grid(["fedavg.lr=0.02,0.05", "fleet.devices=10"])
>>> grid
{'fedavg.lr': [0.02, 0.05], 'fleet.devices': [10]}
>>> [(p.run_id, p.seed) for p in expand_grid(grid, seeds=[0, 1])][:2]
[('fedavg.lr=0.02_fleet.devices=10_seed=0', 0), ('fedavg.lr=0.02_fleet.devices=10_seed=1', 1)]
"""

from __future__ import annotations

import contextlib
import csv
import hashlib
import io
import itertools
import json
import math
import os
import re
import signal
import sys
import threading
import time
import traceback
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from crowdlearn.errors import ConfigError, CrowdlearnError
from crowdlearn.files import replace_text
from crowdlearn.heartbeat import Heartbeat
from crowdlearn.signals import (
    Interrupted,
    as_interrupts,
    first_interrupts,
    forward,
    pool_worker_init,
    signal_of,
)
from crowdlearn.training.threads import threads_for

#: Marker written into every sweep folder; a folder holding it may be resumed.
MARKER = "sweep.json"
LOCK = ".sweep.lock"      # serialises the marker's updates between processes sharing a folder
#: Summary scalars drawn against each grid key by :func:`plot_sweep`, when present.
PLOTTED = ("final_accuracy", "final_rmse", "bytes_total", "sim_time_s", "energy_j", "epsilon")


# ---------------------------------------------------------------- grid
def _split_values(text: str) -> list[str]:
    """Split ``"1,[2,3],'a,b'"`` on the commas that are not inside brackets or quotes."""
    parts, depth, quote, cur = [], 0, "", []
    for ch in text:
        if quote:
            cur.append(ch)
            if ch == quote:
                quote = ""
            continue
        if ch in "\"'":
            quote = ch
        elif ch in "[{":
            depth += 1
        elif ch in "]}":
            depth -= 1
        elif ch == "," and depth == 0:
            parts.append("".join(cur))
            cur = []
            continue
        cur.append(ch)
    parts.append("".join(cur))
    return [p.strip() for p in parts]


def parse_grid(items: Iterable[str]) -> dict[str, list[Any]]:
    """``["KEY=V1,V2", ...]`` (the ``--grid`` syntax) → ``{KEY: [V1, V2]}``.

    Values are read as TOML, like ``--set`` values (``0.1``, ``true``, ``"metis"``, ``[64, 32]``);
    a bare word that is not TOML is taken as a string, so ``slicenet.strategy=metis,random`` works.
    """
    from crowdlearn.config import parse_override

    grid: dict[str, list[Any]] = {}
    problems = []
    for item in items:
        key, sep, text = item.partition("=")
        key = key.strip()
        if not sep or not key or not text.strip():
            problems.append(f"--grid {item!r}: expected KEY=V1,V2,..., e.g. --grid fedavg.lr=0.02,0.05")
            continue
        if key in grid:
            problems.append(f"--grid {key}: given twice; put all its values in one --grid")
            continue
        grid[key] = [parse_override(f"{key}={v}")[1] for v in _split_values(text)]
        if any(v == "" for v in grid[key]):
            problems.append(f"--grid {item!r}: an empty value; remove the stray comma")
    if problems:
        raise ConfigError(problems)
    return grid


@dataclass(frozen=True)
class RunSpec:
    """One point of a sweep: the grid values, the seed, and a stable folder name."""

    run_id: str
    values: tuple[tuple[str, Any], ...]
    seed: int

    def overrides(self) -> dict[str, Any]:
        return {**dict(self.values), "seed": self.seed}


def _token(v: Any) -> str:
    return json.dumps(v, separators=(",", ":")) if not isinstance(v, str) else v


def _run_id(values: Sequence[tuple[str, Any]], seed: int) -> str:
    text = "_".join(f"{k}={_token(v)}" for k, v in values) + ("_" if values else "") + f"seed={seed}"
    safe = re.sub(r"[^A-Za-z0-9_.,=+-]", "_", text)
    if len(safe) > 120 or safe != text:   # keep names short and unambiguous
        safe = safe[:100] + "-" + hashlib.sha256(text.encode()).hexdigest()[:12]
    return safe


def expand_grid(grid: Mapping[str, Sequence[Any]], seeds: Sequence[int]) -> list[RunSpec]:
    """The cartesian product of the grid (in key order) times the seeds (innermost)."""
    keys = list(grid)
    runs = []
    for combo in itertools.product(*(list(grid[k]) for k in keys)):
        values = tuple(zip(keys, combo, strict=True))
        for seed in seeds:
            runs.append(RunSpec(_run_id(values, seed), values, int(seed)))
    return runs


# ---------------------------------------------------------------- configs
def _base_raw(config) -> tuple[dict, Path]:
    """The raw mapping of the base config and the folder its relative paths start from."""
    from crowdlearn import config as config_mod

    if config is None or isinstance(config, (str, os.PathLike)):
        cfg = config_mod.load(config)
        return cfg.to_dict(), getattr(cfg, "base_dir", Path.cwd())
    if isinstance(config, Mapping):
        config_mod.from_dict(dict(config))     # validate the base itself first
        return dict(config), Path.cwd()
    if hasattr(config, "to_dict"):
        return config.to_dict(), getattr(config, "base_dir", Path.cwd())
    raise TypeError(f"config must be a path, a mapping or a Config; got {type(config).__name__}")


def _point_config(raw: dict, base: Path, spec: RunSpec):
    import copy

    from crowdlearn import config as config_mod

    point = copy.deepcopy(raw)
    for key, value in spec.overrides().items():
        *sections, leaf = key.split(".")
        node = point
        for part in sections:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise ConfigError([f"{key}: {part!r} is not a section"])
        node[leaf] = copy.deepcopy(value)
    return config_mod.from_dict(point, base_dir=base)


def _dataset_key(cfg) -> tuple:
    """What the loaded dataset depends on (Fashion-MNIST ignores the seed)."""
    name = cfg.data.dataset.lower().replace("-", "_")
    return (name, cfg.data.path or "", None if name == "fashion_mnist" else cfg.seed)


# ---------------------------------------------------------------- workers
def run_point(cfg, dataset=None, *, on_row: Callable[[dict], None] | None = None):
    """Run one simulation (in whatever process calls it) and return its ``Results``
    (``on_row``: called with each metrics row as it is measured)."""
    from crowdlearn.experiment import Simulation

    return Simulation(cfg, dataset=dataset, on_row=on_row).run()


def _local_worker(payload: tuple, on_row: Callable[[dict], None] | None = None
                  ) -> tuple[str, Any, str | None]:
    run_id, cfg = payload
    try:
        return run_id, run_point(cfg, on_row=on_row), None
    except Exception as exc:   # reported in sweep.csv; the other runs go on
        return run_id, None, _describe(exc)


def _pool_worker(payload: tuple) -> tuple[str, Any, str | None]:
    """:func:`_local_worker` in a pool's worker process (:func:`signals.pool_worker_init`): the
    first SIGINT, SIGTERM or SIGHUP of the run stops it like Ctrl-C, and what it measured comes
    back to the parent."""
    with first_interrupts():
        return _local_worker(payload)


class _RunProgress:
    """The ``on_row`` of an in-process run: a progress line (through the sweep's ``progress``)
    at most every ``every`` seconds of wall time, so that a long run is seen to advance; within
    ``with progress.heartbeat:`` also a line when a round runs ``every`` seconds without a row
    (:class:`crowdlearn.heartbeat.Heartbeat`).

    >>> lines, clock = [], iter([0.0, 5.0, 31.0])
    >>> p = _RunProgress(lines.append, "[1/2] lr=0.1_seed=0", rounds=50, every=30.0,
    ...                  clock=lambda: next(clock))
    >>> p({"round": 0, "time_s": 12.0, "accuracy": 0.5}); p({"round": 1, "time_s": 24.0})
    >>> lines
    ['[1/2] lr=0.1_seed=0: round 2/50, simulated 24.0 s, 31 s']
    """

    def __init__(self, progress: Callable[[str], None], label: str, *, rounds: int,
                 every: float = 30.0, clock: Callable[[], float] | None = None):
        self.progress, self.label, self.rounds, self.every = progress, label, rounds, every
        self.clock = clock or time.monotonic
        self.t0 = self.last = self.clock()
        #: a line while a round runs longer than ``every`` (``with progress.heartbeat:``)
        self.heartbeat = Heartbeat(progress, label, rounds=rounds, every=every)

    def __call__(self, row: dict) -> None:
        self.heartbeat.row(row)
        now = self.clock()
        if now - self.last < self.every:
            return
        self.last = now
        metric = next((f", {k} {row[k]:.4f}" for k in ("accuracy", "rmse")
                       if row.get(k) is not None), "")
        self.progress(f"{self.label}: round {int(row['round']) + 1}/{self.rounds}, "
                      f"simulated {float(row['time_s']):.1f} s{metric}, {now - self.t0:.0f} s")


class _InFlight:
    """Runs made in other processes (``--jobs`` > 1, Ray) send no rows to the sweep, so while
    none finishes for ``every`` seconds the sweep says how many are finished, running and
    waiting (``wait``: what the caller's wait-for-one should time out after; None: forever).

    >>> lines, clock = [], iter([0.0, 61.0])
    >>> f = _InFlight(lines.append, total=4, every=30.0, clock=lambda: next(clock))
    >>> f.wait
    30.0
    >>> f(finished=1, running=2, waiting=1)
    >>> lines
    ['1/4 runs finished, 2 running, 1 waiting, 61 s']
    """

    def __init__(self, progress: Callable[[str], None] | None, *, total: int, every: float,
                 clock: Callable[[], float] = time.monotonic):
        self.progress, self.total, self.clock = progress, total, clock
        self.wait = every if progress is not None and every and every > 0 else None
        self.t0 = clock()

    def __call__(self, *, finished: int, running: int | None, waiting: int) -> None:
        """``running`` None: not known (Ray); ``waiting`` then counts every unfinished run."""
        if self.progress is None:
            return
        state = (f"{waiting} not finished" if running is None
                 else f"{running} running, {waiting} waiting")
        self.progress(f"{finished}/{self.total} runs finished, {state}, "
                      f"{self.clock() - self.t0:.0f} s")


def _describe(exc: BaseException) -> str:
    if isinstance(exc, CrowdlearnError):
        return f"{type(exc).__name__}: {exc}"
    return "".join(traceback.format_exception_only(type(exc), exc)).strip()


# ---------------------------------------------------------------- the sweep
class SweepFolder:
    """``OUT/``: the marker, ``runs/<id>/`` and ``sweep.csv``."""

    def __init__(self, out: str | os.PathLike, *, describe: dict):
        self.root = Path(out)
        self.describe = describe

    def prepare(self) -> None:
        root = self.root
        if root.exists() and not root.is_dir():
            raise CrowdlearnError(f"--out {root}: exists and is not a folder; choose another --out")
        marker = root / MARKER
        if root.is_dir() and not marker.is_file() and not _starting(root):
            raise CrowdlearnError(
                f"--out {root}: the folder exists, is not empty and is not a crowdlearn sweep "
                f"folder (no {MARKER}); choose a new --out (nothing was changed)")
        if marker.is_file():                 # refused before anything is created (the lock too)
            self._check(json.loads(marker.read_text()))
        try:
            (root / "runs").mkdir(parents=True, exist_ok=True)
            import tempfile
            # a fresh, uniquely named probe: never a file someone else put there
            fd, probe = tempfile.mkstemp(prefix=".crowdlearn-probe-", dir=root)
            os.close(fd)
            os.unlink(probe)
        except OSError as exc:
            raise CrowdlearnError(f"--out {root}: cannot write there ({exc.strerror}); choose a "
                                  "writable folder") from None
        # several processes may share one folder (a set split with --first-seed, two machines'
        # sweeps of other grids): the marker's read, check and write are one step under a lock
        with _locked(root / LOCK):
            old = json.loads(marker.read_text()) if marker.is_file() else {}
            self._check(old)             # again: another process may have written it since
            grids = dict(old.get("grids", {}))
            grids[self.describe["grid_sha256"]] = self.describe["grid"]
            replace_text(marker, json.dumps({**self.describe, "grids": grids}, indent=2,
                                             sort_keys=True, default=str) + "\n")

    def _check(self, old: dict) -> None:
        if old and old.get("base_config_sha256") != self.describe["base_config_sha256"]:
            raise CrowdlearnError(
                f"--out {self.root}: holds a sweep of a different base config; resume it with "
                "the same config and --set values, or choose a new --out (nothing was changed)")

    def run_dir(self, run_id: str) -> Path:
        return self.root / "runs" / run_id

    def finished(self, run_id: str) -> bool:
        """Whether the run has results that a resumed sweep keeps: a ``summary.json`` of a run
        that was not interrupted (an interrupted run's folder keeps what it measured until the
        run is made again)."""
        path = self.run_dir(run_id) / "summary.json"
        if not path.is_file():
            return False
        try:
            return not json.loads(path.read_text()).get("interrupted", False)
        except (OSError, ValueError):
            return False


def _starting(root: Path) -> bool:
    """Whether a folder without the marker holds nothing or only what another process starting
    a sweep there has made so far (an empty ``runs/``, the lock, the write probe, the marker's
    temporary file, or the marker itself, written since the caller looked): a folder two sweeps
    start in at once is not someone else's folder."""
    for p in root.iterdir():
        if p.name == "runs" and p.is_dir() and not any(p.iterdir()):
            continue
        if p.name in (LOCK, MARKER) or p.name.startswith((".crowdlearn-probe-", f".{MARKER}.")):
            continue
        return False
    return True


def _scalars(summary: Mapping[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in summary.items()
            if v is None or isinstance(v, (bool, int, float, str))}


def _row(spec: RunSpec, status: str, error: str = "", summary: Mapping | None = None) -> dict:
    row = {"run": spec.run_id, **{k: _token(v) if isinstance(v, (list, dict)) else v
                                 for k, v in spec.values}, "seed": spec.seed,
           "status": status, "error": error}
    if summary:
        for k, v in _scalars(summary).items():
            row.setdefault(k, v)
    return row


def _write_table(path: Path, rows: list[dict]) -> None:
    fields: list[str] = []
    for r in rows:
        fields += [k for k in r if k not in fields]
    buf = io.StringIO(newline="")
    w = csv.DictWriter(buf, fieldnames=fields)
    w.writeheader()
    for r in rows:
        w.writerow({k: ("" if r.get(k) is None else r.get(k)) for k in fields})
    replace_text(path, buf.getvalue())


@contextlib.contextmanager
def _locked(path: Path):
    """Hold an exclusive lock on ``path`` (created if missing; POSIX ``flock``, released by the
    kernel if the process dies) for the ``with`` block; no lock where ``fcntl`` is missing."""
    try:
        import fcntl
    except ImportError:                       # pragma: no cover - not POSIX
        yield
        return
    with open(path, "a") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def sweep(config=None, grid: Mapping[str, Sequence[Any]] | Sequence[str] = (), seeds=1, *,
          out: str | os.PathLike | None = None, backend: str = "local", jobs: int | None = None,
          address: str | None = None, cpus_per_run: float = 1.0, plots: bool = True,
          progress: Callable[[str], None] | None = None, progress_every: float = 30.0):
    """Run every point of ``grid`` × ``seeds`` and return one row per run as a DataFrame.

    Parameters
    ----------
    config
        The base configuration: a TOML path, a raw mapping, a ``Config``, or None for defaults.
    grid
        ``{key: [values]}`` with keys as in ``--set`` (``"fedavg.lr"``), or ``--grid`` strings.
    seeds
        A number N (seeds ``base_seed … base_seed + N − 1``) or an explicit list of seeds.
    out
        Folder for ``runs/`` and ``sweep.csv``; a previous sweep folder of the same base config is
        resumed.  None keeps results in memory only (the DataFrame).
    backend, jobs, address, cpus_per_run
        ``"local"`` (``jobs`` processes; 1 = in this process) or ``"ray"`` (see the module doc).
    plots
        Write each run's PNGs and the sweep's metric-against-key plots (needs ``out``).
    progress, progress_every
        ``progress`` is called with one line per finished run and, for runs made in this
        process (``backend="local"``, ``jobs=1``), a line on the run's round, simulated time
        and accuracy at most every ``progress_every`` seconds while it runs (0: none).

    Returns
    -------
    pandas.DataFrame
        Columns: ``run``, the grid keys, ``seed``, ``status`` (``ok``, ``skipped`` = finished
        earlier, ``failed``, ``interrupted``), ``error``, then every scalar of the run's summary.

    Examples
    --------
    >>> import crowdlearn
    >>> df = crowdlearn.sweep({"rounds": 2, "fleet": {"devices": 6},
    ...                        "fedavg": {"clients_per_round": 3}},
    ...                       {"fedavg.lr": [0.05, 0.1]}, seeds=2)        # doctest: +SKIP
    >>> df.groupby("fedavg.lr")["final_accuracy"].mean()                  # doctest: +SKIP
    """
    import pandas as pd

    if backend not in ("local", "ray"):
        raise CrowdlearnError(f"backend must be 'local' or 'ray'; got {backend!r}")
    if jobs is not None and jobs < 1:
        raise CrowdlearnError(f"jobs must be >= 1; got {jobs}")
    if not isinstance(grid, Mapping):
        grid = parse_grid(grid)
    grid = {k: list(v) for k, v in grid.items()}
    if any(not v for v in grid.values()):
        raise ConfigError([f"grid {k}: no values" for k, v in grid.items() if not v])
    if "seed" in grid:
        raise ConfigError(["grid seed: give seeds with seeds=/--seeds, not as a grid key"])
    raw, base = _base_raw(config)
    base_seed = int(raw.get("seed", 0))
    seed_list = [base_seed + i for i in range(seeds)] if isinstance(seeds, int) else list(seeds)
    if not seed_list:
        raise ConfigError(["seeds: at least one seed is needed"])
    specs = expand_grid(grid, seed_list)

    problems, cfgs = [], {}
    for spec in specs:          # validate every point before anything runs
        try:
            cfgs[spec.run_id] = _point_config(raw, base, spec)
        except ConfigError as exc:
            problems += [f"{spec.run_id}: {p}" for p in exc.problems]
    if problems:
        raise ConfigError(problems)

    folder = None
    if out is not None:
        canon = json.dumps(raw, sort_keys=True, default=str)
        gtext = json.dumps(grid, sort_keys=True, default=str)
        folder = SweepFolder(out, describe={
            "kind": "crowdlearn-sweep", "base_config": json.loads(canon),
            "base_config_sha256": hashlib.sha256(canon.encode()).hexdigest(),
            "grid": grid, "grid_sha256": hashlib.sha256(gtext.encode()).hexdigest(),
            "seeds": seed_list})
        folder.prepare()

    rows: dict[str, dict] = {}
    by_id = {s.run_id: s for s in specs}
    todo = []
    for spec in specs:
        if folder is not None and folder.finished(spec.run_id):
            summary = json.loads((folder.run_dir(spec.run_id) / "summary.json").read_text())
            rows[spec.run_id] = _row(spec, "skipped", summary=summary)
        else:
            todo.append(spec)

    # runs side by side each get their share of the cores as TensorFlow's pools (a pool of
    # every core per run oversubscribes them: crowdlearn.training.threads), recorded in each
    # run's config.json; a config that chose training.threads keeps its choice
    side_by_side = min(jobs or 1, len(todo))
    share = (threads_for(cpus_per_run, 1) if backend == "ray" else
             threads_for(os.cpu_count() or 1, side_by_side) if side_by_side > 1 else 0)
    if share:
        chosen = {cfgs[s.run_id].training.threads for s in todo}
        for spec in todo:
            if cfgs[spec.run_id].training.threads == 0:
                cfgs[spec.run_id] = cfgs[spec.run_id].replace({"training.threads": share})
        if progress is not None and chosen == {0}:
            progress(f"{len(todo)} runs, "
                     + ("on Ray" if backend == "ray" else f"{side_by_side} at a time")
                     + f": {share} TensorFlow thread(s) per op each (training.threads)")

    def table() -> pd.DataFrame:
        ordered = [rows[s.run_id] for s in specs if s.run_id in rows]
        return pd.DataFrame(ordered)

    def finish(run_id: str, results, error: str | None) -> None:
        spec = by_id[run_id]
        stopped = error is None and results.interrupted
        if error is None:
            if folder is not None:
                from crowdlearn.results import write
                # overwrite replaces only an unfinished crowdlearn results folder of this run;
                # an interrupted run's folder keeps what it measured (its summary says
                # "interrupted"), and a resumed sweep makes the run again
                write(results, folder.run_dir(run_id), plots=plots, overwrite=True)
            rows[run_id] = _row(spec, "interrupted" if stopped else "ok",
                                summary=results.summary)
        else:
            rows[run_id] = _row(spec, "failed", error=error)
        if folder is not None:
            _write_table(folder.root / "sweep.csv", [rows[s.run_id] for s in specs
                                                     if s.run_id in rows])
        if progress is not None:
            done = sum(1 for r in rows.values() if r["status"] != "skipped")
            progress(f"[{done}/{len(todo)}] {run_id}: "
                     + (error.splitlines()[0] if error else
                        "interrupted (what it measured is kept in its folder; the run is made "
                        "again on resume)" if stopped else "ok"))
        if stopped:     # Ctrl-C (or SIGTERM) reached the run: the sweep stops here
            raise Interrupted(signal.Signals[results.summary.get("signal") or "SIGINT"])

    def in_run(i: int, spec: RunSpec):
        """In-process runs: a progress line every ``progress_every`` seconds while it runs."""
        if progress is None or not progress_every:
            return None
        return _RunProgress(progress, f"[{i}/{len(todo)}] {spec.run_id}",
                            rounds=cfgs[spec.run_id].rounds, every=progress_every)

    try:
        if backend == "ray":
            _run_ray(todo, cfgs, finish, jobs=jobs, address=address, cpus_per_run=cpus_per_run,
                     in_flight=_InFlight(progress, total=len(todo), every=progress_every))
        elif (jobs or 1) == 1 or len(todo) <= 1:
            for i, spec in enumerate(todo, 1):
                shown = in_run(i, spec)
                with shown.heartbeat if shown is not None else contextlib.nullcontext():
                    done = _local_worker((spec.run_id, cfgs[spec.run_id]), shown)
                finish(*done)
        else:
            _run_pool(todo, cfgs, finish, jobs=jobs,
                      in_flight=_InFlight(progress, total=len(todo), every=progress_every))
    finally:
        if folder is not None and rows:
            _write_table(folder.root / "sweep.csv", [rows[s.run_id] for s in specs
                                                     if s.run_id in rows])
    df = table()
    if folder is not None and plots and not df.empty:
        plot_sweep(df, list(grid), folder.root)
    return df


def stop_pool(pool, futures, exc: BaseException) -> None:
    """After ``exc`` stopped a process pool's parent (whose workers run
    :func:`signals.pool_worker_init` and stop their runs in :func:`signals.first_interrupts`):
    cancel the ``futures`` not started and, if ``exc`` is an interrupt, forward its signal to the
    workers once a second until every started one is done (a call already queued to a worker
    cannot be cancelled, and its run may start after the first forward)."""
    from concurrent.futures import wait

    for fut in futures:
        fut.cancel()
    if isinstance(exc, KeyboardInterrupt):
        left = set(futures)
        while left:
            forward(signal_of(exc)[0], list(getattr(pool, "_processes", None) or ()))
            _, left = wait(left, timeout=1.0)


def _run_pool(todo, cfgs, finish, *, jobs: int, in_flight: _InFlight | None = None) -> None:
    import multiprocessing as mp
    from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait

    ctx = mp.get_context("spawn")      # never fork a process that may hold TensorFlow threads
    workers = min(jobs, len(todo))
    # SIGTERM or SIGHUP to this process alone (`kill PID`, a batch scheduler) stops the sweep as
    # Ctrl-C does: the signal is forwarded to the workers, whose runs stop and send back what
    # they measured; the workers ignore signals between runs (a dead worker breaks the pool)
    with ProcessPoolExecutor(max_workers=workers, mp_context=ctx,
                             initializer=pool_worker_init) as pool, as_interrupts():
        pending = {pool.submit(_pool_worker, (s.run_id, cfgs[s.run_id])) for s in todo}
        unfinished = set(pending)       # not yet given to finish()
        try:
            while pending:
                done, pending = wait(pending, timeout=in_flight and in_flight.wait,
                                     return_when=FIRST_COMPLETED)
                if not done:            # a while without a finished run: say what is going on
                    # (the pool marks one more call than it has workers as running: queued)
                    running = min(workers, sum(f.running() for f in pending))
                    in_flight(finished=len(todo) - len(pending), running=running,
                              waiting=len(pending) - running)
                for fut in done:
                    unfinished.discard(fut)
                    finish(*fut.result())
        except BaseException as exc:
            stop_pool(pool, unfinished, exc)
            for fut in unfinished:  # runs the same Ctrl-C stopped: keep what they measured
                if not fut.cancelled():
                    try:
                        finish(*fut.result())
                    except BaseException:     # its row is written; the sweep stops below
                        pass
            raise


def stop_ray(ray, futures: dict, finish, exc: BaseException, grace_s: float = 60.0) -> None:
    """After ``exc`` stopped a Ray sweep's driver: if it is an interrupt, the runs under way are
    cancelled gently (Ray raises ``KeyboardInterrupt`` in the task, so the run stops as on
    Ctrl-C and sends back what it measured, given to ``finish`` and kept in its folder, its
    summary naming the sweep's signal), those not started never start; whatever has not
    answered within ``grace_s`` seconds, or any task after another error, is cancelled by
    force."""
    if not isinstance(exc, KeyboardInterrupt):
        for ref in futures:
            ray.cancel(ref, force=True)
        return
    name = signal_of(exc)[1]
    for ref in futures:
        ray.cancel(ref, force=False)
    deadline = time.monotonic() + grace_s
    try:
        while futures:
            done, _ = ray.wait(list(futures), num_returns=1,
                               timeout=max(0.0, deadline - time.monotonic()))
            if not done:
                break
            run_id = futures.pop(done[0])
            try:
                results, error = ray.get(done[0])
            except Exception:                 # cancelled before it started or measured
                continue
            if error is None and results.interrupted:
                # the cancellation reached the run as Ctrl-C: it stopped for the sweep's signal
                results.summary["signal"] = results.summary["stopped_by"] = name
            try:
                finish(run_id, results, error)
            except BaseException:             # its row is written; the sweep stops after
                pass
    finally:
        for ref in futures:
            ray.cancel(ref, force=True)


def _ray_task(cfg, dataset):
    with ctrl_c_raises():
        try:
            return run_point(cfg, dataset), None
        except Exception as exc:
            return None, _describe(exc)


@contextlib.contextmanager
def ctrl_c_raises():
    """Within the block, SIGINT raises ``KeyboardInterrupt`` even where the process ignores it
    (main thread only; what it was is put back after).  Ray cancels a running task gently by
    simulating SIGINT in its worker, which Python skips when SIGINT is ignored, as it is in every
    process of a local Ray cluster whose driver was started by a script in the background
    (``cmd &``): the run would go on, and its measurements be lost to the forced cancel."""
    if threading.current_thread() is not threading.main_thread() or \
            signal.getsignal(signal.SIGINT) is not signal.SIG_IGN:
        yield
        return
    signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, signal.SIG_IGN)


def _run_ray(todo, cfgs, finish, *, jobs, address, cpus_per_run,
             in_flight: _InFlight | None = None) -> None:
    try:
        import ray
    except ImportError:
        raise CrowdlearnError("the Ray backend needs Ray: pip install 'crowdlearn[ray]' "
                              "(or use --backend local)") from None
    from crowdlearn.data import load_dataset

    started = False
    if not ray.is_initialized():
        if address in (None, "", "local"):
            ray.init(num_cpus=jobs or os.cpu_count() or 1, include_dashboard=False,
                     log_to_driver=False, configure_logging=False)
        else:
            ray.init(address=address, log_to_driver=False)
        started = True
    try:
        refs: dict[tuple, Any] = {}       # one object-store copy per distinct dataset
        remote = ray.remote(num_cpus=cpus_per_run)(_ray_task)
        futures = {}
        for spec in todo:
            cfg = cfgs[spec.run_id]
            key = _dataset_key(cfg)
            if key not in refs:
                refs[key] = ray.put(load_dataset(cfg.data.dataset, path=cfg.data.path or None,
                                                 seed=cfg.seed))
            futures[remote.remote(cfg, refs[key])] = spec.run_id
        # SIGTERM or SIGHUP to this process (`kill PID`, a batch scheduler) stops the sweep as
        # Ctrl-C does (without it the driver died at once, by the handler Ray's libraries
        # install: no table, no message, every run's measurements lost)
        with as_interrupts() as received:
            try:
                while futures:
                    done, _ = ray.wait(list(futures), num_returns=1,
                                       timeout=in_flight and in_flight.wait)
                    if not done:            # (Ray does not say which of them run)
                        in_flight(finished=len(todo) - len(futures), running=None,
                                  waiting=len(futures))
                        continue
                    run_id = futures.pop(done[0])
                    try:
                        results, error = ray.get(done[0])
                    except Exception as exc:     # the task itself died (worker lost)
                        results, error = None, _describe(exc)
                    finish(run_id, results, error)
            except BaseException as exc:
                if type(exc) is KeyboardInterrupt and received:
                    # (Ray's wait raised a plain KeyboardInterrupt for the signal's Interrupted)
                    exc = Interrupted(received[-1])
                stop_ray(ray, futures, finish, exc)
                if isinstance(exc, Interrupted):
                    raise exc from None
                raise
    finally:
        if started:
            ray.shutdown()


# ---------------------------------------------------------------- plots
def interval95(values: Sequence[float]) -> tuple[float, float]:
    """Mean and the half-width of a 95 % Student-t interval (0 for a single value).

    >>> interval95([1.0, 2.0, 3.0])
    (2.0, 2.4841...)
    """
    from scipy import stats

    xs = [float(v) for v in values if v is not None and not (isinstance(v, float) and math.isnan(v))]
    if not xs:
        return math.nan, math.nan
    mean = sum(xs) / len(xs)
    if len(xs) < 2:
        return mean, 0.0
    sd = math.sqrt(sum((x - mean) ** 2 for x in xs) / (len(xs) - 1))
    return mean, float(stats.t.ppf(0.975, len(xs) - 1) * sd / math.sqrt(len(xs)))


def summarize(df, keys: Sequence[str], metric: str):
    """Mean and 95 % half-width of ``metric`` over seeds for each combination of ``keys``."""
    import pandas as pd

    ok = df[~df["status"].isin(["failed", "interrupted"])] if "status" in df else df
    out = []
    for vals, grp in ok.groupby(list(keys), sort=True, dropna=False):
        vals = vals if isinstance(vals, tuple) else (vals,)
        mean, half = interval95(pd.to_numeric(grp[metric], errors="coerce").tolist())
        out.append({**dict(zip(keys, vals, strict=True)), "mean": mean, "ci95": half, "n": len(grp)})
    return pd.DataFrame(out)


def plot_sweep(df, keys: Sequence[str], folder: Path) -> list[Path]:
    """One PNG per grid key: each plotted metric against the key (mean ± 95 % over seeds),
    one line per combination of the other keys."""
    import matplotlib
    from matplotlib.figure import Figure

    del matplotlib
    metrics = [m for m in PLOTTED if m in df and df[m].notna().any()]
    written = []
    for key in keys:
        others = [k for k in keys if k != key]
        ncols = min(3, max(1, len(metrics)))
        nrows = math.ceil(max(1, len(metrics)) / ncols)
        fig = Figure(figsize=(4.2 * ncols, 3.2 * nrows + 0.4))
        axes = fig.subplots(nrows, ncols, squeeze=False).ravel()
        for ax in axes[len(metrics):]:
            ax.set_visible(False)
        for ax, metric in zip(axes, metrics, strict=False):
            stats = summarize(df, [key, *others], metric)
            groups = stats.groupby(others, sort=True) if others else [((), stats)]
            for label, grp in groups:
                xs = grp[key].tolist()
                numeric = all(isinstance(x, (int, float)) and not isinstance(x, bool) for x in xs)
                pos = xs if numeric else list(range(len(xs)))
                lab = ", ".join(f"{k}={v}" for k, v in zip(
                    others, label if isinstance(label, tuple) else (label,), strict=True)) or None
                ax.errorbar(pos, grp["mean"], yerr=grp["ci95"], marker="o", capsize=3, label=lab)
                if not numeric:
                    ax.set_xticks(pos, [str(x) for x in xs])
            ax.set_xlabel(key)
            ax.set_ylabel(metric)
            ax.grid(alpha=0.3)
            if others:
                ax.legend(fontsize=7)
        fig.suptitle(f"mean and 95 % interval over seeds against {key}", fontsize=9)
        fig.tight_layout()
        path = folder / f"sweep_{re.sub(r'[^A-Za-z0-9_.-]', '_', key)}.png"
        fig.savefig(path, dpi=110)
        written.append(path)
    return written


def cli_progress(line: str) -> None:
    print(line, file=sys.stderr, flush=True)
