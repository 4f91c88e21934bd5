"""Plots of runs (matplotlib, Agg backend): curves against simulated time and bytes, device load."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

from matplotlib.figure import Figure
from matplotlib.patches import Rectangle
from matplotlib.ticker import MaxNLocator

# Figures are built with the object API (no pyplot, no global backend switch), so importing
# this module leaves a notebook's inline backend alone; each function returns its Figure.


def _metric(rows) -> str:
    return "accuracy" if any("accuracy" in r for r in rows) else "rmse"


def curves(runs: Sequence[tuple[str, list[dict]]], path: str | os.PathLike | None = None) -> Figure:
    """Accuracy (or RMSE) against simulated time and against total bytes, one line per run."""
    fig = Figure(figsize=(11, 4))
    axes = fig.subplots(1, 2)
    for label, rows in runs:
        m = _metric(rows)
        # the scored rows (eval_every leaves the others without scores, or NaN read from a CSV)
        scored = [r for r in rows if r.get(m) is not None and r[m] == r[m]]
        ys = [r[m] for r in scored]
        t = [r["time_s"] for r in scored]
        b = [r["bytes_total"] / 1e6 for r in scored]
        axes[0].plot(t, ys, marker=".", label=label)
        axes[1].plot(b, ys, marker=".", label=label)
    m = _metric(runs[0][1]) if runs else "accuracy"
    axes[0].set_xlabel("simulated time (s)")
    axes[1].set_xlabel("bytes on the wire (MB)")
    for ax in axes:
        ax.set_ylabel(f"test {m}")
        ax.grid(alpha=0.3)
    axes[1].legend(fontsize=8)
    fig.tight_layout()
    if path is not None:
        fig.savefig(path, dpi=110)
    return fig


def device_load(devices: list[dict], path: str | os.PathLike | None = None) -> Figure:
    """Per-device busy time, bytes and missed rounds, sorted by busy time and coloured by tier.

    The "rounds missed" panel is left out when no device missed a round (the title says so);
    tick labels on the device axis and on the missed-rounds axis are integers.

    Examples
    --------
    >>> devs = [{"device": i, "tier": "mid_range", "busy_s": 1.0 + i, "bytes_sent": 10,
    ...          "bytes_received": 20, "rounds_missed": 0} for i in range(3)]
    >>> len(device_load(devs).axes)
    2
    """
    devs = sorted(devices, key=lambda d: -d["busy_s"])
    tiers = sorted({d["tier"] for d in devs})
    colours = {t: f"C{i}" for i, t in enumerate(tiers)}
    x = range(len(devs))
    missed = any(d["rounds_missed"] for d in devs)
    fig = Figure(figsize=(10, 7 if missed else 5))
    axes = fig.subplots(3 if missed else 2, 1, sharex=True)
    axes[0].bar(x, [d["busy_s"] for d in devs], color=[colours[d["tier"]] for d in devs])
    axes[0].set_ylabel("busy (s)")
    axes[1].bar(x, [(d["bytes_sent"] + d["bytes_received"]) / 1e6 for d in devs],
                color=[colours[d["tier"]] for d in devs])
    axes[1].set_ylabel("MB sent+received")
    if missed:
        axes[2].bar(x, [d["rounds_missed"] for d in devs],
                    color=[colours[d["tier"]] for d in devs])
        axes[2].set_ylabel("rounds missed")
        axes[2].yaxis.set_major_locator(MaxNLocator(integer=True))
    else:
        axes[0].set_title("no device missed a round", fontsize=9)
    axes[-1].set_xlabel("devices, by rank of busy time (0 = busiest)")
    axes[-1].xaxis.set_major_locator(MaxNLocator(integer=True))
    handles = [Rectangle((0, 0), 1, 1, color=colours[t]) for t in tiers]
    axes[0].legend(handles, tiers, fontsize=8, ncol=len(tiers))
    fig.tight_layout()
    if path is not None:
        fig.savefig(path, dpi=110)
    return fig


def run_plots(results, folder: Path) -> None:
    if results.metrics:
        curves([(results.summary.get("protocol", "run"), results.metrics)],
               folder / "curves.png")
    if results.devices:
        device_load(results.devices, folder / "device_load.png")
