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


# ---------------------------------------------------------------- figures in generated prose
#: the minus sign of figures in prose (tables keep the ASCII hyphen of ``fmt_paired``)
MINUS = "−"


def num(x: float, digits: int = 2, *, sign: bool = False) -> str:
    """A figure for prose: ``+1.83`` / ``−0.35`` (unicode minus).

    >>> num(-0.354, 2, sign=True), num(1.0, 1)
    ('−0.35', '1.0')
    """
    return (f"{x:+.{digits}f}" if sign else f"{x:.{digits}f}").replace("-", MINUS)


def interval(d: dict, digits: int = 2, *, sign: bool = True, flip: bool = False) -> str:
    """A :func:`paired` result in prose: ``+1.83 [+1.58, +2.08]``; ``flip`` gives ``b − a``
    (when the words say which is larger, ``sign=False`` drops the signs).

    >>> d = {"mean": -0.019, "lo": -0.027, "hi": -0.010}
    >>> interval(d, 3), interval(d, 3, sign=False, flip=True)
    ('−0.019 [−0.027, −0.010]', '0.019 [0.010, 0.027]')
    """
    m, lo, hi = d["mean"], d["lo"], d["hi"]
    if flip:
        m, lo, hi = -m, -hi, -lo
    return f"{num(m, digits, sign=sign)} [{num(lo, digits, sign=sign)}, {num(hi, digits, sign=sign)}]"


def ratio_pct(r: tuple[float, float, float]) -> str:
    """A :func:`bootstrap_ratio` in prose: ``65 % [38 %, 91 %]``."""
    est, lo, hi = r
    if not math.isfinite(est):
        return "n/a"
    return " ".join([num(100 * est, 0) + " %", f"[{num(100 * lo, 0)} %,", f"{num(100 * hi, 0)} %]"])


def within(d: dict, bound: float) -> str:
    """``holds`` if the whole paired interval lies inside ``±bound`` (an "≈" claim), else
    ``not shown``."""
    return "holds" if -bound <= d["lo"] and d["hi"] <= bound else "not shown"


VERBS = {"holds": "holds", "fails": "fails", "not shown": "is not shown"}


def verdict_phrase(items: Sequence[tuple[str, str, str]], *, everywhere: str) -> str:
    """Items ``(where, verdict, figure)`` in words: one verdict for all → ``fails on
    both datasets (A −1 [−2, −0.5], B …)``; else ``holds on A (…) and is not shown on B (…)``.

    >>> verdict_phrase([("A", "fails", "−1"), ("B", "fails", "−2")], everywhere="both")
    'fails on both (A −1, B −2)'
    >>> verdict_phrase([("A", "holds", "+1"), ("B", "not shown", "+0")], everywhere="both")
    'holds on A (+1) and is not shown on B (+0)'
    """
    verdicts = {v for _, v, _ in items}
    if len(verdicts) == 1:
        (v,) = verdicts
        return f"{VERBS[v]} on {everywhere} (" + ", ".join(f"{w} {f}" for w, _, f in items) + ")"
    parts = [f"{VERBS[v]} on {w} ({f})" for w, v, f in items]
    return ", ".join(parts[:-1]) + " and " + parts[-1]


def and_list(words: Sequence[str]) -> str:
    """``a``, ``a and b``, ``a, b and c``."""
    words = list(words)
    return words[0] if len(words) == 1 else ", ".join(words[:-1]) + " and " + words[-1]


def wrap(text: str, width: int = 100, indent: str = "") -> str:
    """``text`` filled to ``width`` (continuation lines indented by ``indent``), unless a
    continuation line would start like a markdown block (a list item, a heading, a quote):
    then the paragraph stays on one line."""
    import re
    import textwrap

    glued = re.sub(r" (?=[%=±])|(?<=[=±]) ", "\x00", text)   # never "ε =⏎ 10", "12⏎ %"
    lines = textwrap.wrap(glued, width=width, subsequent_indent=indent, break_long_words=False,
                          break_on_hyphens=False)
    if any(re.match(r"\s*([-+*]|\d+[.)])(\s|$)|\s*[#>|]", ln) for ln in lines[1:]):
        return text
    return "\n".join(lines).replace("\x00", " ")


def replace_between(text: str, begin: str, end: str, body: str) -> str:
    """``text`` with what lies between the markers ``begin`` and ``end`` replaced by ``body``
    (the markers kept, each on its own line); a missing marker is an error naming it."""
    for m in (begin, end):
        if text.count(m) != 1:
            raise ValueError(f"the doc must hold the marker {m!r} exactly once "
                             f"(found {text.count(m)}); add it where the block goes")
    head, rest = text.split(begin, 1)
    return head + begin + "\n" + body.rstrip("\n") + "\n" + end + rest.split(end, 1)[1]
