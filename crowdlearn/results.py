"""Write a run's results atomically, read them back, and plot them.

A results folder holds ``config.json``, ``metrics.csv``, ``devices.csv``, ``rounds.csv``,
``privacy.csv`` (the per-participant ε ledger; a header only without differential privacy),
``summary.json`` and PNG plots.  Everything is written into a temporary sibling folder that is
renamed into place at the end, so a folder either is complete or does not exist.
"""

from __future__ import annotations

import csv
import json
import math
import os
import platform
import shutil
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

METRIC_FIELDS = ("time_s", "round", "accuracy", "rmse", "loss", "epsilon", "epsilon_nominal",
                 "clients_selected",
                 "clients_aggregated", "bytes_up", "bytes_down", "bytes_total", "messages",
                 "flops", "compute_s", "energy_j")


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


def write(results, out_dir: str | os.PathLike, *, plots: bool = True) -> Path:
    """Write ``results`` to ``out_dir`` atomically; returns the folder."""
    out = Path(out_dir)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=out.parent))
    try:
        cfg = results.config.to_dict()
        (tmp / "config.json").write_text(json.dumps(
            {"config": _jsonable(cfg), "versions": versions()}, indent=2, sort_keys=True) + "\n")
        present = [f for f in METRIC_FIELDS if any(f in r for r in results.metrics)]
        _write_csv(tmp / "metrics.csv", results.metrics, present)
        _write_csv(tmp / "devices.csv", results.devices)
        _write_csv(tmp / "rounds.csv", results.rounds,
                   ["round", "start_s", "end_s", "closed_by", "selected", "aggregated"])
        _write_csv(tmp / "privacy.csv", getattr(results, "privacy", []), PRIVACY_FIELDS)
        (tmp / "summary.json").write_text(json.dumps(_jsonable(results.summary), indent=2,
                                                     sort_keys=True) + "\n")
        if plots:
            from crowdlearn import plots as plotting
            plotting.run_plots(results, tmp)
        if out.exists():
            shutil.rmtree(out)
        os.replace(tmp, out)
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
