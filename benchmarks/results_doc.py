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
# ---------------------------------------------------------------- per-seed CSV rows and claims
def read_rows(path) -> list[dict]:
    """The rows of a per-seed CSV (strings; ``[]`` when the file does not exist yet)."""
    import csv
    from pathlib import Path

    path = Path(path)
    if not path.is_file():
        return []
    with path.open(newline="") as fh:
        return list(csv.DictReader(fh))


def merge_rows(path, fields: Sequence[str], new: Sequence[dict], key: Sequence[str]) -> None:
    """Merge ``new`` into the CSV at ``path``: a row with the same ``key`` columns is replaced,
    the others are kept; written sorted by ``key`` (seeds numerically), so reruns are stable."""
    import fcntl
    import hashlib
    import tempfile
    from pathlib import Path

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    # processes measuring other seeds into the same file: one read-merge-write at a time (the
    # lock file lives in the temp folder, not beside the data)
    tag = hashlib.sha1(str(path.resolve()).encode()).hexdigest()[:16]
    with open(Path(tempfile.gettempdir()) / f"results_doc-{tag}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        _merge_locked(path, fields, new, key)


def _merge_locked(path, fields, new, key) -> None:
    import csv

    k = lambda r: tuple(str(r[c]) for c in key)  # noqa: E731
    rows = {k(r): r for r in read_rows(path)}
    for r in new:
        rows[k(r)] = {f: r.get(f, "") for f in fields}
    tmp = path.with_suffix(path.suffix + ".tmp")
    with tmp.open("w", newline="") as fh:
        w = csv.DictWriter(fh, fields)
        w.writeheader()
        for r in sorted(rows.values(), key=lambda r: tuple(
                (0, int(r[c]), "") if str(r[c]).lstrip("-").isdigit() else (1, 0, str(r[c]))
                for c in key)):
            w.writerow({f: r.get(f, "") for f in fields})
    tmp.replace(path)


def fnum(v) -> float:
    """A CSV cell as a float (``nan`` for an empty or missing cell)."""
    try:
        return float(v)
    except (TypeError, ValueError):
        return math.nan


def exact_or_cell(values: Sequence[float], digits: int = 3, *, thousands: bool = False) -> str:
    """The value alone when it is the same on every seed (bytes, z, R: exact), else :func:`cell`.

    >>> exact_or_cell([2.0, 2.0, 2.0], 1), exact_or_cell([1234567.0] * 2, 0, thousands=True)
    ('2.0 (every seed)', '1,234,567 (every seed)')
    """
    xs = _finite(values)
    one = (lambda x: f"{x:,.{digits}f}") if thousands else (lambda x: f"{x:.{digits}f}")
    if len(xs) > 1 and max(xs) == min(xs):
        return one(xs[0]) + " (every seed)"
    if len(xs) == 1:
        return one(xs[0]) + " (n = 1)"
    return cell(xs, digits)


def within_verdict(d: dict, tol: float) -> str:
    """Verdict of an equivalence claim ``|a − b| ≤ tol``: the whole paired interval inside."""
    if -tol <= d["lo"] and d["hi"] <= tol:
        return f"holds (interval within ±{tol:g})"
    return f"not shown (interval leaves ±{tol:g})"


def claim_row(claim: str, a: Sequence[float], b: Sequence[float], *, digits: int = 3,
              tol: float | None = None, min_seeds: int = 10) -> str:
    """One Markdown row ``| claim | seeds | a − b [95 %], p | verdict |``: "a > b" (``tol`` None)
    or "a ≈ b within tol", paired over the seeds both have; no verdict on fewer than
    ``min_seeds`` seeds.  ``a − b`` identical on every seed (e.g. exactly 0) is said so."""
    x, y = np.asarray(a, float), np.asarray(b, float)
    ok = np.isfinite(x) & np.isfinite(y)
    n = int(ok.sum())
    if n < 2:
        return f"| {claim} | {n} | — | not measured |"
    d = paired(x[ok], y[ok])
    diff = x[ok] - y[ok]
    if np.all(diff == diff[0]):
        text = f"{diff[0]:+.{digits}f} on every seed"
        v = (("holds" if diff[0] > 0 else "fails") if tol is None
             else ("holds (identical)" if abs(diff[0]) <= tol else "fails"))
    else:
        text = fmt_paired(d, digits)
        v = verdict(d) if tol is None else within_verdict(d, tol)
    if n < min_seeds:
        v = f"not claimed (< {min_seeds} seeds)"
    return f"| {claim} | {n} | {text} | {v} |"


def cpu_note(cpu_seconds: Sequence[float]) -> str:
    """``N runs, X CPU min in all (median Y s per run)`` of the rows' measured CPU seconds."""
    xs = sorted(_finite(cpu_seconds))
    if not xs:
        return "CPU time not recorded"
    med = xs[len(xs) // 2] if len(xs) % 2 else (xs[len(xs) // 2 - 1] + xs[len(xs) // 2]) / 2
    return f"{len(xs)} runs, {sum(xs) / 60:.1f} CPU min in all (median {med:.1f} s per run)"


def record_environment(path) -> None:
    """Add this process's :func:`environment` to the JSON list at ``path`` (the environments
    the rows of a data file were measured in), so a later ``--render`` states them, not its own."""
    import json
    from pathlib import Path

    path = Path(path)
    envs = recorded_environments(path)
    env = environment()
    if env not in envs:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(envs + [env], indent=1, ensure_ascii=False) + "\n")


def recorded_environments(path) -> list[str]:
    """The environments :func:`record_environment` stored at ``path`` (``[]`` if none)."""
    import json
    from pathlib import Path

    path = Path(path)
    return json.loads(path.read_text()) if path.is_file() else []


def environments_text(path) -> str:
    """The recorded environments as one paragraph (``Environment not recorded.`` if none)."""
    envs = recorded_environments(path)
    if not envs:
        return "Environment not recorded."
    if len(envs) == 1:
        return envs[0]
    return "Rows measured in " + str(len(envs)) + " environments: " + " / ".join(envs)


def parse_seeds(text: str) -> list[int]:
    """``"0-9"`` → 0…9, ``"0,3,5"`` → [0, 3, 5] (ranges and lists mix: ``"0-2,7"``).

    >>> parse_seeds("0-2,7")
    [0, 1, 2, 7]
    """
    out: list[int] = []
    for part in text.split(","):
        a, _, b = part.partition("-")
        out += list(range(int(a), int(b) + 1)) if b else [int(a)]
    return out


def by_setting_seed(rows: Sequence[dict]) -> dict[str, dict[int, dict]]:
    """``{setting: {seed: row}}`` of CSV rows with ``setting``, ``seed`` and ``completed``
    columns; rows of runs that did not complete are left out."""
    out: dict[str, dict[int, dict]] = {}
    for r in rows:
        if r["completed"] == "True":
            out.setdefault(r["setting"], {})[int(r["seed"])] = r
    return out


def column(d: dict, name: str, key: str, scale: float = 1.0, seeds=None) -> list[float]:
    """``key`` × ``scale`` of setting ``name`` of a :func:`by_setting_seed` mapping, seed by
    seed (``seeds``: these seeds, ``nan`` where missing)."""
    cells = d.get(name, {})
    seeds = sorted(cells) if seeds is None else seeds
    return [fnum(cells[s][key]) * scale if s in cells else math.nan for s in seeds]


def claim_between(d: dict, claim: str, a: str, b: str, key: str = "final", *,
                  tol: float | None = None, digits: int = 4, scale: float = 1.0,
                  min_seeds: int = 10) -> str:
    """:func:`claim_row` of settings ``a`` and ``b`` over the seeds both have."""
    seeds = sorted(set(d.get(a, {})) & set(d.get(b, {})))
    return claim_row(claim, column(d, a, key, scale, seeds), column(d, b, key, scale, seeds),
                     digits=digits, tol=tol, min_seeds=min_seeds)


def identical_seeds(d: dict, a: str, b: str, keys: Sequence[str] = ("final",)) -> tuple[int, int]:
    """(seeds on which settings ``a`` and ``b`` have the same ``keys``, seeds both have): an
    exact-equality claim is counted, not tested."""
    seeds = sorted(set(d.get(a, {})) & set(d.get(b, {})))
    return sum(all(d[a][s][k] == d[b][s][k] for k in keys) for s in seeds), len(seeds)


def rerun_drift(rows: Sequence[dict]) -> str:
    """One sentence: how far each ``rerun <setting>`` row (the same seed run again in another
    process) is from its first run in final accuracy, simulated time and bytes."""
    first = {(r["setting"], r["seed"]): r for r in rows}
    parts = []
    for r in rows:
        o = first.get((r["setting"].removeprefix("rerun "), r["seed"]))
        if not r["setting"].startswith("rerun ") or o is None:
            continue
        parts.append(f"{o['setting']}, seed {o['seed']}: final accuracy "
                     f"{abs(fnum(r['final']) - fnum(o['final'])):g} apart, simulated time "
                     f"{abs(fnum(r['sim_s']) - fnum(o['sim_s'])):.3g} s, bytes "
                     f"{abs(fnum(r['bytes_total']) - fnum(o['bytes_total'])):g}")
    if not parts:
        return "No same-seed rerun is recorded in the data file."
    return ("The same seed run again in another process (`--rerun-check`): " + "; ".join(parts)
            + ".")


# ---------------------------------------------------------------- a measured value against its expectation
def one_sample(values: Sequence[float], expected: float) -> dict:
    """``values − expected`` over seeds as a :func:`paired` result (a one-sample t-test: the
    expectation is the same on every seed).

    >>> d = one_sample([0.049, 0.051, 0.050, 0.052], 0.05)
    >>> round(d["mean"], 4), d["n"], target_check(d)
    (0.0005, 4, 'inside')
    """
    xs = _finite(values)
    return paired(xs, [float(expected)] * len(xs))


def target_check(d: dict) -> str:
    """Whether the expectation lies in the 95 % interval of a :func:`one_sample` result:
    ``inside``, ``outside (above)`` (the values lie above it) or ``outside (below)``; ``—``
    with fewer than two values."""
    if d["n"] < 2 or not (math.isfinite(d["lo"]) and math.isfinite(d["hi"])):
        return "—"
    if d["lo"] > 0:
        return "outside (above)"
    if d["hi"] < 0:
        return "outside (below)"
    return "inside"


def more_seeds_changes(rows: Sequence[tuple[str, dict, dict]], *, old_seeds: Sequence[int],
                       new_seeds: Sequence[int], digits: int = 2) -> list[str]:
    """Markdown lines of the claims re-tested with more seeds: each paired comparison over the
    earlier seeds beside the same comparison over all seeds (old → new), its verdict marked
    where it changed, and a closing sentence listing the verdicts that changed.

    ``rows``: ``(claim, old, new)`` or ``(claim, old, new, digits)`` with ``old`` / ``new``
    :func:`paired` results (``new`` over ``new_seeds``, ``old`` over ``old_seeds``, a subset).
    Empty when the seeds did not grow.

    >>> a, b = paired([1, 2, 3], [0, 1, 2]), paired([1, 2, 3, 1, 0], [0, 1, 2, 2, 1])
    >>> lines = more_seeds_changes([("x above y", a, b)], old_seeds=[0, 1, 2],
    ...                            new_seeds=range(5))
    >>> lines[0]
    '| claim | seeds 0–2 (3): a − b [95 % interval], p | seeds 0–4 (5) | verdict (3 → 5 seeds) |'
    >>> lines[2].endswith("| **holds → not shown** |")
    True
    >>> lines[-1]
    'Verdicts that changed with the added seeds: x above y (holds → not shown).'
    """
    old_s, new_s = sorted(int(s) for s in old_seeds), sorted(int(s) for s in new_seeds)
    if not set(old_s) < set(new_s):
        return []
    n0, n1 = len(old_s), len(new_s)
    out = [f"| claim | seeds {seeds_text(old_s)} ({n0}): a − b [95 % interval], p | "
           f"seeds {seeds_text(new_s)} ({n1}) | verdict ({n0} → {n1} seeds) |",
           "| --- | --- | --- | --- |"]
    changed = []
    for claim, old, new, *nd in rows:
        nd = nd[0] if nd else digits
        v0, v1 = verdict(old), verdict(new)
        v = f"**{v0} → {v1}**" if v0 != v1 else v1
        if v0 != v1:
            changed.append(f"{claim} ({v0} → {v1})")
        out.append(f"| {claim} | {fmt_paired(old, nd)} | {fmt_paired(new, nd)} | {v} |")
    out.append("")
    out.append("Verdicts that changed with the added seeds: " + "; ".join(changed) + "."
               if changed else "No verdict changed with the added seeds; only the figures "
                               "(the table's old → new columns) moved.")
    return out
