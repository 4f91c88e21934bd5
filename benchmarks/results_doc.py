"""Shared helpers of the experiment scripts: intervals over seeds, paired tests, the environment.

Every table cell of ``docs/experiments/*.md`` is a mean with the half-width of a 95 % Student-t
interval over seeds (:func:`crowdlearn.sweeps.interval95`); every comparison between two columns is
paired over seeds (the same seed gives both runs the same fleet, partition and noise stream, so
the difference removes the seed-to-seed spread) and reported as the mean difference, its 95 %
interval and the two-sided p-value of the paired t-test.

>>> cell([0.5, 0.7, 0.6])
'0.600 ± 0.248'
>>> d = paired([1.0, 2.0, 3.0, 4.0], [0.9, 1.8, 3.1, 3.7])
>>> round(d["mean"], 3), d["n"]
(0.125, 4)
"""

from __future__ import annotations

import math
import platform
from collections.abc import Sequence

import numpy as np

from crowdlearn.sweeps import interval95


def _finite(values) -> list[float]:
    return [float(v) for v in values if v is not None and math.isfinite(float(v))]


def cell(values: Sequence[float], digits: int = 3) -> str:
    """``mean ± half-width`` of a 95 % t interval over the values (``—`` when empty; a single
    value has no interval: ``value (n = 1)``, never ``± 0``)."""
    xs = _finite(values)
    if not xs:
        return "—"
    if len(xs) == 1:
        return f"{xs[0]:.{digits}f} (n = 1)"
    m, h = interval95(xs)
    return f"{m:.{digits}f} ± {h:.{digits}f}"


def paired(a: Sequence[float], b: Sequence[float]) -> dict:
    """Paired comparison ``a − b`` over seeds: mean, 95 % interval, t-test p-value, n."""
    from scipy import stats

    x, y = np.asarray(a, float), np.asarray(b, float)
    ok = np.isfinite(x) & np.isfinite(y)
    d = x[ok] - y[ok]
    m, h = interval95(d.tolist())
    p = float(stats.ttest_rel(x[ok], y[ok]).pvalue) if d.size > 1 and d.std() > 0 else math.nan
    return {"mean": m, "lo": m - h, "hi": m + h, "p": p, "n": int(d.size)}


def fmt_paired(d: dict, digits: int = 3) -> str:
    """``+0.012 [+0.004, +0.020], p = 0.003`` of a :func:`paired` result."""
    p = "p n/a" if math.isnan(d["p"]) else (f"p = {d['p']:.2g}" if d["p"] >= 1e-4
                                            else "p < 1e-4")
    return f"{d['mean']:+.{digits}f} [{d['lo']:+.{digits}f}, {d['hi']:+.{digits}f}], {p}"


def verdict(d: dict) -> str:
    """``holds`` if the paired interval lies above 0, ``fails`` below, else ``not shown``."""
    if d["lo"] > 0:
        return "holds"
    if d["hi"] < 0:
        return "fails"
    return "not shown"


def bootstrap_ratio(num: Sequence[float], den: Sequence[float], *, reps: int = 4000,
                    seed: int = 0) -> tuple[float, float, float]:
    """Ratio of means ``mean(num)/mean(den)`` and a 95 % percentile bootstrap over seeds."""
    x, y = np.asarray(num, float), np.asarray(den, float)
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, x.size, (reps, x.size))
    with np.errstate(divide="ignore", invalid="ignore"):
        r = x[idx].mean(axis=1) / y[idx].mean(axis=1)
    r = r[np.isfinite(r)]
    est = x.mean() / y.mean() if y.mean() != 0 else math.nan
    lo, hi = (np.percentile(r, [2.5, 97.5]) if r.size else (math.nan, math.nan))
    return float(est), float(lo), float(hi)


def seeds_text(seeds: Sequence[int]) -> str:
    """``0–49`` for a contiguous range, else the list."""
    s = sorted(int(x) for x in seeds)
    if s and s == list(range(s[0], s[-1] + 1)) and len(s) > 2:
        return f"{s[0]}–{s[-1]}"
    return ", ".join(map(str, s))


def environment() -> str:
    """One markdown paragraph: Python, the numeric packages, BLAS, CPU count, platform."""
    import importlib.metadata as md
    import os

    parts = [f"Python {platform.python_version()}"]
    for pkg in ("numpy", "scipy", "pandas", "scikit-learn", "tensorflow", "tensorflow-cpu", "keras", "dp-accounting"):
        try:
            parts.append(f"{pkg} {md.version(pkg)}")
        except md.PackageNotFoundError:
            pass
    blas = "unknown"
    try:
        cfg = np.show_config(mode="dicts")
        b = cfg.get("Build Dependencies", {}).get("blas", {})
        blas = f"{b.get('name', '?')} {b.get('version', '')}".strip()
    except Exception:   # older numpy: no dict mode
        pass
    parts.append(f"BLAS {blas}")
    parts.append(f"{os.cpu_count()} CPUs, {platform.system()} {platform.machine()}")
    return "Environment: " + ", ".join(parts) + "."
