"""Write a run's results atomically, check where they may go, and load them back with pandas.

A results folder holds ``config.json``, ``metrics.csv``, ``devices.csv``, ``rounds.csv``,
``privacy.csv`` (the per-participant ε ledger; a header only without differential privacy),
``summary.json``, PNG plots and the marker file :data:`MARKER` (``.crowdlearn-results``), which
says that crowdlearn wrote the folder.  Everything is written into a temporary sibling folder that
is renamed into place at the end, so a folder either is complete or does not exist.

:func:`check_out` is the only judge of where results may go: a new or empty folder, or (with
``overwrite``) a folder that carries the marker; never an existing file, a folder with anything
else in it, the current directory, a home directory or ``/``.  It also proves the parent folder
writable, so the CLI refuses a bad ``--out`` before a run starts rather than after it.

:func:`load` reads one or several folders into pandas DataFrames.

Examples
--------
>>> import tempfile
>>> check_out(Path(tempfile.mkdtemp()) / "new")            # doctest: +ELLIPSIS
PosixPath('.../new')
>>> check_out(Path("/"), overwrite=True)
Traceback (most recent call last):
...
slicenet.errors.UserError: --out /: refusing to write results over the file system root; name a new folder, e.g. --out results/run1
"""

from __future__ import annotations

import csv
import json
import math
import os
import platform
import secrets
import shutil
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from crowdlearn.errors import CrowdlearnError

#: Marker file written into every results folder; ``--overwrite`` replaces only folders with it.
MARKER = ".crowdlearn-results"

METRIC_FIELDS = ("time_s", "round", "accuracy", "rmse", "loss", "epsilon", "epsilon_nominal",
                 "clients_selected",
                 "clients_aggregated", "bytes_up", "bytes_down", "bytes_total", "messages",
                 "flops", "compute_s", "energy_j")
ROUND_FIELDS = ("round", "start_s", "end_s", "closed_by", "selected", "aggregated")


#: Columns of ``privacy.csv`` (:meth:`crowdlearn.privacy.accountant.PrivacyLedger.rows`).
PRIVACY_FIELDS = ("participant", "mechanism", "releases", "epsilon", "delta", "accountant",
                  "epsilon_basic", "epsilon_per_parameter", "guarantee")


def _jsonable(v: Any) -> Any:
    if isinstance(v, float) and not math.isfinite(v):
        return str(v)
    if isinstance(v, dict):
        return {str(k): _jsonable(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [_jsonable(x) for x in v]
    if hasattr(v, "item"):
        return v.item()
    return v


def versions() -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version
    out = {"python": platform.python_version()}
    for pkg in ("crowdlearn", "numpy", "tensorflow-cpu", "tensorflow", "keras", "simpy",
                "networkx", "pymetis"):
        try:
            out[pkg] = version(pkg)
        except PackageNotFoundError:
            pass
    return out


def _write_csv(path: Path, rows: Sequence[dict], fields: Sequence[str] | None = None) -> None:
    if fields is None:
        fields = list(rows[0]) if rows else []
    with open(path, "w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=list(fields), extrasaction="ignore")
        w.writeheader()
        for r in rows:
            w.writerow({k: _fmt(r.get(k, "")) for k in fields})


def _fmt(v: Any) -> Any:
    if isinstance(v, float):
        return repr(v)
    if isinstance(v, (tuple, list)):
        return " ".join(str(x) for x in v)
    return v


def _marker_text(files: list[str]) -> str:
    return json.dumps({"written_by": "crowdlearn", "format": 1, "files": sorted(files),
                       "note": "crowdlearn results folder; `crowdlearn run --overwrite` may "
                               "replace it if it holds only these files"}, indent=2) + "\n"


def _foreign_files(folder: Path) -> list[str]:
    """Entries of a marked results folder that its marker does not list (added by someone)."""
    try:
        listed = set(json.loads((folder / MARKER).read_text()).get("files", []))
    except (OSError, ValueError, AttributeError):
        return sorted(p.name for p in folder.iterdir() if p.name != MARKER)
    return sorted(p.name for p in folder.iterdir() if p.name != MARKER and p.name not in listed)


def is_results_folder(path: str | os.PathLike) -> bool:
    """True when ``path`` is a folder that crowdlearn wrote (it holds :data:`MARKER`)."""
    return (Path(path) / MARKER).is_file()


def _protected(path: Path) -> str | None:
    """Why ``path`` may never be replaced by results (None when it may)."""
    resolved = path.resolve()
    if resolved == Path(resolved.anchor):
        return "the file system root"
    cwd = Path.cwd().resolve()
    if resolved == cwd:
        return "the current directory"
    if resolved in cwd.parents:
        return "a folder that contains the current directory"
    homes = {Path.home().resolve()}
    try:
        import pwd
        homes |= {Path(p.pw_dir).resolve() for p in pwd.getpwall() if p.pw_dir not in ("", "/")}
    except (ImportError, OSError):  # pragma: no cover - non-POSIX
        pass
    if resolved in homes:
        return "a home directory"
    return None


def check_out(out_dir: str | os.PathLike, *, overwrite: bool = False) -> Path:
    """Check that results may be written to ``out_dir``; return it as a Path.

    Raises :class:`~crowdlearn.errors.CrowdlearnError` naming the problem and the fix when
    ``out_dir`` is an existing file, the root, the current or a home directory (or one of their
    ancestors), a non-empty folder (unless ``overwrite`` and it carries :data:`MARKER`), or when
    its parent cannot be created or written.  Nothing is created or deleted: the writability
    probe makes and removes one empty folder in the nearest existing ancestor.
    """
    out = Path(out_dir)
    eg = "e.g. --out results/run1"
    why = _protected(out)
    if why is not None:
        raise CrowdlearnError(f"--out {out}: refusing to write results over {why}; name a new "
                              f"folder, {eg}")
    if out.exists() and not out.is_dir():
        raise CrowdlearnError(f"--out {out}: is an existing file, not a folder; name a new "
                              f"folder, {eg}")
    if out.is_dir() and any(out.iterdir()):
        if not is_results_folder(out):
            raise CrowdlearnError(
                f"--out {out}: folder exists and holds files crowdlearn did not write (it has no "
                f"{MARKER} marker); crowdlearn never deletes them. Name a new folder, {eg}, or "
                "move its contents away")
        if not overwrite:
            raise CrowdlearnError(
                f"--out {out}: holds the results of an earlier run; add --overwrite to replace "
                f"them, or name a new folder, {eg}")
        foreign = _foreign_files(out)
        if foreign:
            raise CrowdlearnError(
                f"--out {out}: is an earlier results folder, but {', '.join(foreign[:5])} "
                f"{'was' if len(foreign) == 1 else 'were'} added to it since, and --overwrite "
                f"never deletes what crowdlearn did not write; move them away, or name a new "
                f"folder, {eg}")
    check_writable_parent(out, "--out")
    return out


def check_writable_parent(path: str | os.PathLike, option: str = "--out") -> None:
    """Raise a CrowdlearnError unless ``path``'s folder exists or can be made, and is writable.

    Probes by making and removing an empty folder in the nearest existing ancestor (permission
    bits alone do not tell: root ignores them, read-only mounts do not show in them).
    """
    path = Path(path)
    ancestor = path.absolute().parent
    while not ancestor.exists():
        ancestor = ancestor.parent
    if not ancestor.is_dir():
        raise CrowdlearnError(f"{option} {path}: {ancestor} is a file, so nothing can be made "
                              "under it; name a place in a folder")
    probe = ancestor / f".crowdlearn-probe-{os.getpid()}-{secrets.token_hex(4)}"
    try:
        probe.mkdir()
        probe.rmdir()
    except OSError as exc:
        raise CrowdlearnError(f"{option} {path}: cannot write in {ancestor} ({exc.strerror}); "
                              "choose a folder you can write to") from None


def write(results, out_dir: str | os.PathLike, *, plots: bool = True,
          overwrite: bool = False) -> Path:
    """Write ``results`` to ``out_dir`` atomically; returns the folder.

    ``out_dir`` must pass :func:`check_out` (``overwrite`` lets it replace an earlier results
    folder).  Files get the process's normal permissions (umask), so other users can read them.
    """
    out = check_out(out_dir, overwrite=overwrite)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.parent / f".{out.name}.tmp-{os.getpid()}-{secrets.token_hex(4)}"
    tmp.mkdir()     # mkdir, not mkdtemp: mkdtemp makes 0700 folders others cannot read
    try:
        cfg = results.config.to_dict()
        (tmp / "config.json").write_text(json.dumps(
            {"config": _jsonable(cfg), "versions": versions()}, indent=2, sort_keys=True) + "\n")
        present = [f for f in METRIC_FIELDS if any(f in r for r in results.metrics)]
        if not results.metrics:   # no row: still a header, with the columns a row would have
            metric = "rmse" if "final_rmse" in results.summary else "accuracy"
            present = [f for f in METRIC_FIELDS if f not in ("accuracy", "rmse", "epsilon")]
            present.insert(2, metric)
        _write_csv(tmp / "metrics.csv", results.metrics, present)
        from sim.monitor import DEVICE_FIELDS
        _write_csv(tmp / "devices.csv", results.devices,
                   None if results.devices else DEVICE_FIELDS)
        _write_csv(tmp / "rounds.csv", results.rounds, ROUND_FIELDS)
        _write_csv(tmp / "privacy.csv", getattr(results, "privacy", []), PRIVACY_FIELDS)
        (tmp / "summary.json").write_text(json.dumps(_jsonable(results.summary), indent=2,
                                                     sort_keys=True) + "\n")
        if plots:
            from crowdlearn import plots as plotting
            plotting.run_plots(results, tmp)
        (tmp / MARKER).write_text(_marker_text([p.name for p in tmp.iterdir()]))
        old = None
        if out.exists():    # empty, or a marked results folder (check_out said so)
            old = out.parent / f".{out.name}.old-{os.getpid()}-{secrets.token_hex(4)}"
            os.replace(out, old)
        os.replace(tmp, out)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out


def read_metrics(run_dir: str | os.PathLike) -> list[dict[str, float]]:
    with open(Path(run_dir) / "metrics.csv", newline="") as fh:
        return [{k: float(v) for k, v in row.items() if v != ""} for row in csv.DictReader(fh)]


def read_privacy(run_dir: str | os.PathLike) -> list[dict]:
    """The rows of ``privacy.csv`` (numbers as floats, empty cells as ``None``)."""
    def value(k, v):
        if v == "":
            return None
        if k in ("participant", "mechanism", "accountant", "guarantee"):
            return v
        return float(v)
    with open(Path(run_dir) / "privacy.csv", newline="") as fh:
        return [{k: value(k, v) for k, v in row.items()} for row in csv.DictReader(fh)]


def read_summary(run_dir: str | os.PathLike) -> dict:
    return json.loads((Path(run_dir) / "summary.json").read_text())


# ------------------------------------------------------------------ pandas
#: Columns parsed as lists of device ids (space-separated in the CSV).
_ID_LISTS = ("selected", "aggregated")


@dataclass
class RunData:
    """One or several results folders as pandas objects (see :func:`load`).

    ``summary`` and ``config`` are dicts for one folder; for several, ``summary`` is a DataFrame
    with one row per run and ``config`` a dict run name → config.  Every table (``metrics``,
    ``devices``, ``rounds``, ``traffic`` and any other CSV of the folder, e.g. ``privacy``) is a
    DataFrame with a ``run`` column (the folder's name) first.
    """

    summary: Any
    config: Any
    tables: dict = field(default_factory=dict)

    def __getattr__(self, name: str):
        tables = self.__dict__.get("tables", {})
        if name in tables:
            return tables[name]
        raise AttributeError(f"no table {name!r}; this run has {', '.join(sorted(tables))}")

    def __dir__(self):
        return [*super().__dir__(), *self.tables]


def _table(path: Path):
    import pandas as pd
    df = pd.read_csv(path)
    if df.empty:    # a header only (a run that made no progress): numbers stay numbers
        df = df.astype({c: "float64" for c in df.columns
                        if c not in ("tier", "closed_by", "run", *_ID_LISTS)})
    for col in _ID_LISTS:
        if col in df.columns:
            df[col] = [[_id(x) for x in str(v).split()] if isinstance(v, str) else []
                       for v in df[col]]
    for col in ("round", "device"):
        if col in df.columns and pd.api.types.is_float_dtype(df[col]) \
                and df[col].notna().all() and (df[col] % 1 == 0).all():
            df[col] = df[col].astype("int64")
    for col in ("tier", "closed_by"):
        if col in df.columns:
            df[col] = df[col].astype("category")
    return df


def _id(text: str):
    return int(text) if text.lstrip("-").isdigit() else text


def _traffic(summary: dict):
    import pandas as pd
    by_bytes, by_msgs = summary.get("bytes_by_kind", {}), summary.get("messages_by_kind", {})
    kinds = sorted(set(by_bytes) | set(by_msgs))
    return pd.DataFrame({"kind": pd.Series(kinds, dtype="object"),
                         "bytes": pd.Series([int(by_bytes.get(k, 0)) for k in kinds],
                                            dtype="int64"),
                         "messages": pd.Series([int(by_msgs.get(k, 0)) for k in kinds],
                                               dtype="int64")})


def _load_one(folder: Path) -> tuple[dict, dict, dict]:
    if not (folder / "summary.json").is_file() or not (folder / "metrics.csv").is_file():
        raise CrowdlearnError(f"{folder}: not a crowdlearn results folder (no summary.json or "
                              "metrics.csv); give folders written by `crowdlearn run`")
    try:
        summary = read_summary(folder)
        cfg_path = folder / "config.json"
        config = json.loads(cfg_path.read_text()).get("config", {}) if cfg_path.is_file() else {}
        tables = {p.stem: _table(p) for p in sorted(folder.glob("*.csv"))}
    except (OSError, ValueError) as exc:
        raise CrowdlearnError(f"{folder}: a damaged results folder ({type(exc).__name__}: "
                              f"{exc}); run it again or leave it out") from None
    tables["traffic"] = _traffic(summary)
    return summary, config, tables


def load(dirs: str | os.PathLike | Sequence[str | os.PathLike]) -> RunData:
    """Load results folders into pandas DataFrames.

    ``dirs`` is one folder or a list of them.  Tables (``metrics``, ``devices``, ``rounds``,
    ``traffic`` = bytes and messages per message kind, and any other CSV present) get a first
    column ``run`` (the folder name; ``parent/name`` if two folders share a name) and are
    concatenated into one long DataFrame across folders.  ``rounds.selected`` and
    ``rounds.aggregated`` are lists of device ids; ``tier`` and ``closed_by`` are categorical.

    Examples
    --------
    >>> data = load(["results/a", "results/b"])                          # doctest: +SKIP
    >>> data.metrics.groupby("run")["accuracy"].max()                     # doctest: +SKIP
    """
    import pandas as pd
    single = isinstance(dirs, (str, os.PathLike))
    folders = [Path(d) for d in ([dirs] if single else dirs)]
    if not folders:
        raise CrowdlearnError("load: no results folder given")
    names = [f.name for f in folders]
    names = [n if names.count(n) == 1 else f"{f.parent.name}/{n}" for n, f in zip(names, folders, strict=True)]
    loaded = [_load_one(f) for f in folders]
    tables: dict[str, Any] = {}
    for key in dict.fromkeys(k for _, _, t in loaded for k in t):
        parts = []
        for name, (_, _, t) in zip(names, loaded, strict=True):
            if key in t:
                df = t[key]
                df.insert(0, "run", pd.Series([name] * len(df), dtype="object", index=df.index))
                parts.append(df)
        tables[key] = parts[0] if len(parts) == 1 else pd.concat(parts, ignore_index=True)
        for col in ("tier", "closed_by"):
            if col in tables[key].columns:
                tables[key][col] = tables[key][col].astype("category")
    if single:
        summary, config, _ = loaded[0]
        return RunData(summary, config, tables)
    summary = pd.DataFrame([{"run": n, **{k: v for k, v in s.items() if not isinstance(v, dict)}}
                            for n, (s, _, _) in zip(names, loaded, strict=True)])
    return RunData(summary, {n: c for n, (_, c, _) in zip(names, loaded, strict=True)}, tables)
