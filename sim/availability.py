"""When devices are online: pure availability models the driver turns into SimPy events.

An availability model answers two questions about device ``i`` (an index into the fleet):

* :meth:`Availability.initially_online` — is it online at time 0?
* :meth:`Availability.next_change` — given that it is ``online`` (or not) at ``now``, at what
  absolute time does it next toggle?  ``math.inf`` means never.  The answer is always strictly
  greater than ``now``.

The driver starts each device in the state ``initially_online`` gives, and at every toggle asks
``next_change`` again with the new state.  Models draw all randomness from the ``rng`` passed in,
so a run is reproducible from its seeds.  Battery drop-out and per-task churn are not modelled
here; the driver applies them on top (see ``docs/design.md``, section "Fleet").

Models: :class:`AlwaysOn`, :class:`Sessions` (alternating exponential on/off periods with an
optional daily rhythm) and :class:`Trace` (recorded online intervals, e.g. from a CSV).
:func:`make_availability` builds one from a configuration name and parameters.

This module is ring 0 (pure): standard library, NumPy and :mod:`crowdlearn.errors` only.

Examples
--------
>>> import numpy as np
>>> rng = np.random.default_rng(0)
>>> av = make_availability("sessions", mean_online_s=600, mean_offline_s=1800)
>>> t = av.next_change(0, 100.0, True, rng)
>>> t > 100.0
True
>>> round(online_fraction(av, 0, 2_000_000, rng), 1)
0.2
>>> tr = Trace({0: [(10.0, 20.0)]})
>>> tr.initially_online(0, rng), tr.next_change(0, 0.0, False, rng), tr.next_change(0, 10.0, True, rng)
(False, 10.0, 20.0)
"""

from __future__ import annotations

import bisect
import csv
import inspect
import math
import numbers
import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

import numpy as np

from slicenet.errors import UserError

__all__ = [
    "AlwaysOn",
    "Availability",
    "AvailabilityError",
    "REGISTRY",
    "Sessions",
    "Trace",
    "make_availability",
    "online_fraction",
    "online_share",
]

_CSV_COLUMNS = ("device", "start_s", "end_s")
_EXAMPLE = "examples/traces/availability_example.csv"


class AvailabilityError(UserError, ValueError):
    """Bad availability parameters or trace (a ``UserError`` and a ``ValueError``)."""


@runtime_checkable
class Availability(Protocol):
    """What the driver asks an availability model.  Implementations must be pure."""

    def initially_online(self, device: int, rng: np.random.Generator) -> bool:
        """Whether ``device`` is online at time 0."""
        ...

    def next_change(self, device: int, now: float, online: bool,
                    rng: np.random.Generator) -> float:
        """Absolute time (> ``now``) at which ``device``, in state ``online`` at ``now``, next
        toggles; ``math.inf`` if never."""
        ...


def _after(now: float, t: float) -> float:
    """``t`` if it is strictly after ``now``, else the next representable float after ``now``."""
    return t if t > now else math.nextafter(now, math.inf)


def _check_now(now: float) -> float:
    now = float(now)
    if not math.isfinite(now):
        raise ValueError(f"now must be a finite time in seconds; got {now!r}")
    return now


# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class AlwaysOn:
    """Every device is online from time 0 and never leaves.

    Examples
    --------
    >>> import numpy as np
    >>> AlwaysOn().initially_online(3, np.random.default_rng()), AlwaysOn().next_change(3, 5.0, True, None)
    (True, inf)
    """

    def initially_online(self, device: int, rng: np.random.Generator | None) -> bool:
        return True

    def next_change(self, device: int, now: float, online: bool,
                    rng: np.random.Generator | None) -> float:
        # A device the driver reports offline (it never is, here) comes back at once.
        return math.inf if online else math.nextafter(_check_now(now), math.inf)


# --------------------------------------------------------------------------------------------


def _positive_finite(name: str, value: object) -> float:
    try:
        v = float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        raise AvailabilityError(f"{name} must be a positive number of seconds; got {value!r}") from None
    if isinstance(value, bool) or not (math.isfinite(v) and v > 0):
        raise AvailabilityError(f"{name} must be a positive finite number of seconds; got {value!r}")
    return v


_DAY_S = 86400.0
_OMEGA = 2.0 * math.pi / _DAY_S   # the daily angular frequency (rad/s)


@dataclass(frozen=True)
class Sessions:
    """Alternating online / offline sessions with exponential durations and a daily rhythm.

    Without a daily rhythm (``diurnal_amplitude = 0``) each device alternates between online
    periods of mean ``mean_online_s`` and offline periods of mean ``mean_offline_s``, all
    independent and exponentially distributed; the long-run online fraction is
    ``π = mean_online_s / (mean_online_s + mean_offline_s)``.

    **Daily rhythm.**  With amplitude ``a`` in ``[0, 1)`` it is the *probability of being
    online* that follows the day, not the transition rates::

        q(t) = π + a · min(π, 1 − π) · cos(2π (t / 3600 − peak_hour) / 24)   (t in s since midnight)

    so ``q`` peaks at ``peak_hour`` exactly, its daily mean is exactly ``π`` for every ``a``, and
    it stays inside ``(0, 1)`` (``a`` is the relative swing of the smaller of the online and
    offline probabilities: with ``π = 0.25`` and ``a = 0.8`` the online probability runs from
    0.05 at the trough to 0.45 at the peak).  The two rates of the on/off process are chosen so
    that a device started online with probability ``q(0)`` is online at every later ``t`` with
    probability ``q(t)``: with ``r(t) = λ(t) + μ(t)`` the total rate,

        rate_on(t)  = λ(t) = r(t) · q(t) + q′(t)             offline → online
        rate_off(t) = μ(t) = r(t) · (1 − q(t)) − q′(t)       online → offline

    solves ``dq/dt = λ (1 − q) − μ q``.  The total rate is kept at its homogeneous value
    ``r₀ = 1 / mean_online_s + 1 / mean_offline_s`` (the process's relaxation rate) wherever
    both rates stay non-negative, so that ``λ`` and ``μ`` then average to exactly
    ``1 / mean_offline_s`` and ``1 / mean_online_s`` over a day; where the curve moves faster
    than sessions that long could follow (long sessions, large ``a``), ``r(t)`` is raised just
    enough (``max(r₀, −q′/q, q′/(1 − q))``) that one rate touches zero and ``q`` is still
    followed exactly.

    The waiting time of this non-homogeneous Poisson process is sampled exactly by thinning
    (Lewis & Shedler, 1979): candidates are drawn at a constant rate that bounds the true one
    and each is kept with probability ``rate(t) / bound``; the first kept candidate is the next
    toggle.

    :meth:`initially_online` draws the state at time 0 with probability ``q(0)``, so there is
    no warm-up: the fleet is on its daily curve from the first second.

    Parameters
    ----------
    mean_online_s, mean_offline_s : float
        Mean session lengths (s) of the process without rhythm, positive and finite; they set
        the daily mean online probability ``π`` and the relaxation rate ``r₀``.
    diurnal_amplitude : float, default 0.0
        ``a`` in ``[0, 1)``: relative swing of the online probability over the day.
    peak_hour : float, default 20.0
        Hour of day in ``[0, 24]`` at which the online probability peaks (simulation time 0 is
        midnight; 24 is the same as 0).

    Examples
    --------
    >>> import numpy as np
    >>> s = Sessions(mean_online_s=1800, mean_offline_s=5400, diurnal_amplitude=0.8)
    >>> round(s.online_probability(20 * 3600), 3), round(s.online_probability(8 * 3600), 3)
    (0.45, 0.05)
    >>> rng = np.random.default_rng(3)
    >>> on = s.initially_online(0, rng)
    >>> s.next_change(0, 0.0, on, rng) > 0.0
    True
    """

    mean_online_s: float
    mean_offline_s: float
    diurnal_amplitude: float = 0.0
    peak_hour: float = 20.0

    def __post_init__(self) -> None:
        object.__setattr__(self, "mean_online_s", _positive_finite("mean_online_s", self.mean_online_s))
        object.__setattr__(self, "mean_offline_s",
                           _positive_finite("mean_offline_s", self.mean_offline_s))
        a, h = self.diurnal_amplitude, self.peak_hour
        try:
            a, h = float(a), float(h)
        except (TypeError, ValueError):
            raise AvailabilityError(
                f"diurnal_amplitude and peak_hour must be numbers; got {self.diurnal_amplitude!r}, "
                f"{self.peak_hour!r}") from None
        if not 0.0 <= a < 1.0:
            raise AvailabilityError(
                f"diurnal_amplitude must be in [0, 1) (0 = no daily rhythm); got {self.diurnal_amplitude!r}")
        if not 0.0 <= h <= 24.0:
            raise AvailabilityError(f"peak_hour must be an hour of day in [0, 24]; got {self.peak_hour!r}")
        object.__setattr__(self, "diurnal_amplitude", a)
        object.__setattr__(self, "peak_hour", h)

    @property
    def stationary_online(self) -> float:
        """``π = mean_online_s / (mean_online_s + mean_offline_s)``: the daily mean of ``q``."""
        return self.mean_online_s / (self.mean_online_s + self.mean_offline_s)

    @property
    def swing(self) -> float:
        """``A = a · min(π, 1 − π)``: the amplitude of the online probability ``q(t)``."""
        pi = self.stationary_online
        return self.diurnal_amplitude * min(pi, 1.0 - pi)

    def _phase(self, t: float) -> float:
        return _OMEGA * (t - self.peak_hour * 3600.0)

    def online_probability(self, t: float) -> float:
        """``q(t) = π + A·cos(2π (t/3600 − peak_hour)/24)``: P(online at ``t``), in ``(0, 1)``."""
        return self.stationary_online + self.swing * math.cos(self._phase(t))

    def rates(self, t: float) -> tuple[float, float]:
        """``(λ(t), μ(t))``: the offline → online and online → offline rates at ``t`` (1/s)."""
        r0 = 1.0 / self.mean_online_s + 1.0 / self.mean_offline_s
        phase = self._phase(t)
        q = self.stationary_online + self.swing * math.cos(phase)
        dq = -self.swing * _OMEGA * math.sin(phase)
        r = max(r0, -dq / q, dq / (1.0 - q))
        return max(0.0, r * q + dq), max(0.0, r * (1.0 - q) - dq)

    def _rate_bounds(self) -> tuple[float, float]:
        """Constant upper bounds of ``λ`` and ``μ``, for thinning."""
        r0 = 1.0 / self.mean_online_s + 1.0 / self.mean_offline_s
        pi, big_a = self.stationary_online, self.swing
        slope = big_a * _OMEGA
        floor = min(pi, 1.0 - pi) - big_a          # q and 1 − q never fall below this (> 0)
        r_max = max(r0, slope / floor)
        return r_max * (pi + big_a) + slope, r_max * (1.0 - pi + big_a) + slope

    def initially_online(self, device: int, rng: np.random.Generator) -> bool:
        return bool(rng.random() < self.online_probability(0.0))

    def next_change(self, device: int, now: float, online: bool,
                    rng: np.random.Generator) -> float:
        now = _check_now(now)
        if self.diurnal_amplitude == 0.0:
            mean = self.mean_online_s if online else self.mean_offline_s
            return _after(now, now + float(rng.exponential(mean)))
        bound = self._rate_bounds()[1 if online else 0]
        t = now
        while True:  # Lewis–Shedler thinning against the constant bound
            t += float(rng.exponential(1.0 / bound))
            if rng.random() * bound < self.rates(t)[1 if online else 0]:
                return _after(now, t)


# --------------------------------------------------------------------------------------------


class Trace:
    """Recorded online intervals, replayed exactly.

    ``intervals[d]`` lists the half-open periods ``[start_s, end_s)`` during which trace device
    ``d`` is online; outside them it is offline.  Intervals may be given in any order; they must
    not overlap, and two that touch (one ends where the next starts) are merged into one.

    **Fleet mapping.**  Fleet device ``i`` replays trace device ``ids[i % len(ids)]`` where ``ids``
    are the trace's device ids in sorted order, so a fleet larger than the trace reuses its
    devices cyclically (and the ids need not be contiguous).

    **After the trace.**  The trace covers ``[0, end_s]`` where ``end_s`` is the latest interval
    end over all devices.  From ``end_s`` on, every device is in state ``default_online``
    (offline by default).  A trace with no devices keeps every device in that state for ever.

    If the caller's ``online`` disagrees with the trace at ``now`` (it should not, when it
    follows this model's answers), :meth:`next_change` returns the next representable time after
    ``now`` so the caller resynchronises at once.

    Parameters
    ----------
    intervals : mapping of int to sequence of (float, float)
        Online intervals per trace device id (ids >= 0; times finite, ``end > start``).
    default_online : bool, default False
        State of every device after the end of the trace.

    Raises
    ------
    AvailabilityError
        Negative / non-integer id, non-finite time, ``end <= start`` or overlapping intervals.

    Examples
    --------
    >>> tr = Trace({5: [(0.0, 60.0), (120.0, 180.0)], 9: [(30.0, 90.0)]})
    >>> tr.devices, tr.end_s
    ((5, 9), 180.0)
    >>> [tr.online_at(2, t) for t in (0.0, 59.0, 60.0, 120.0)]      # fleet device 2 -> trace id 5
    [True, True, False, True]
    >>> tr.next_change(1, 0.0, False, None), tr.next_change(1, 30.0, True, None)
    (30.0, 90.0)
    """

    __slots__ = ("_devices", "_toggles", "default_online", "end_s")

    def __init__(self, intervals: Mapping[int, Sequence[tuple[float, float]]], *,
                 default_online: bool = False):
        if not isinstance(intervals, Mapping):
            raise AvailabilityError(
                f"Trace intervals must map device id -> [(start_s, end_s), ...]; got {type(intervals).__name__}")
        self.default_online = bool(default_online)
        merged: dict[int, list[list[float]]] = {}
        for key, spans in intervals.items():
            if isinstance(key, bool) or not isinstance(key, numbers.Integral) or key < 0:
                raise AvailabilityError(f"trace device ids must be integers >= 0; got {key!r}")
            parsed: list[tuple[float, float]] = []
            for span in spans:
                try:
                    start, end = (float(x) for x in span)
                except (TypeError, ValueError):
                    raise AvailabilityError(
                        f"trace device {key}: interval {span!r} is not a pair of numbers "
                        "(start_s, end_s)") from None
                if not (math.isfinite(start) and math.isfinite(end)):
                    raise AvailabilityError(
                        f"trace device {key}: interval {span!r} has a non-finite time")
                if not end > start:
                    raise AvailabilityError(
                        f"trace device {key}: interval {span!r} ends at or before it starts; "
                        "end_s must be greater than start_s")
                parsed.append((start, end))
            parsed.sort()
            out: list[list[float]] = []
            for start, end in parsed:
                if out and start < out[-1][1]:
                    raise AvailabilityError(
                        f"trace device {key}: intervals ({out[-1][0]!r}, {out[-1][1]!r}) and "
                        f"({start!r}, {end!r}) overlap; merge them or fix their times")
                if out and start == out[-1][1]:
                    out[-1][1] = end
                else:
                    out.append([start, end])
            merged[int(key)] = out
        self._devices: tuple[int, ...] = tuple(sorted(merged))
        self.end_s: float = max((iv[-1][1] for iv in merged.values() if iv), default=0.0)
        self._toggles: dict[int, list[float]] = {}
        for key, out in merged.items():
            toggles = [t for iv in out for t in iv]
            if self.default_online:
                if toggles and toggles[-1] == self.end_s:
                    toggles.pop()  # online at the end of the trace and for ever after
                else:
                    toggles.append(self.end_s)
            self._toggles[key] = toggles

    @property
    def devices(self) -> tuple[int, ...]:
        """The trace's device ids, sorted; fleet device ``i`` replays ``devices[i % len]``."""
        return self._devices

    def __repr__(self) -> str:
        n = sum(len(t) for t in self._toggles.values())
        return (f"Trace({len(self._devices)} devices, {n} toggles, end_s={self.end_s!r}, "
                f"default_online={self.default_online!r})")

    def _toggles_of(self, device: int) -> list[float] | None:
        if isinstance(device, bool) or not isinstance(device, numbers.Integral) or device < 0:
            raise ValueError(f"device must be an integer index >= 0; got {device!r}")
        if not self._devices:
            return None
        return self._toggles[self._devices[int(device) % len(self._devices)]]

    def online_at(self, device: int, t: float) -> bool:
        """The trace's state of fleet device ``device`` at time ``t``."""
        toggles = self._toggles_of(device)
        if toggles is None:
            return self.default_online
        return bisect.bisect_right(toggles, t) % 2 == 1

    def initially_online(self, device: int, rng: np.random.Generator | None) -> bool:
        return self.online_at(device, 0.0)

    def next_change(self, device: int, now: float, online: bool,
                    rng: np.random.Generator | None) -> float:
        now = _check_now(now)
        toggles = self._toggles_of(device)
        if toggles is None:
            state, nxt = self.default_online, math.inf
        else:
            k = bisect.bisect_right(toggles, now)
            state = k % 2 == 1
            nxt = toggles[k] if k < len(toggles) else math.inf
        if bool(online) != state:
            return math.nextafter(now, math.inf)
        return nxt

    @classmethod
    def from_csv(cls, path: str | os.PathLike[str], *, default_online: bool = False) -> Trace:
        """Read a trace from a CSV file with header ``device,start_s,end_s``.

        One row per online interval: the trace device id (integer >= 0) and the interval's
        start and end in seconds from the start of the simulation.  Other columns are ignored;
        blank lines are skipped.

        Raises
        ------
        UserError
            The file does not exist or cannot be read, or it is malformed: a missing column, a
            non-numeric value, ``end_s <= start_s``, or two overlapping intervals of one device.
            The message names the file, the line and how to fix it.

        Examples
        --------
        >>> import tempfile, os
        >>> d = tempfile.mkdtemp(); p = os.path.join(d, "t.csv")
        >>> _ = open(p, "w").write("device,start_s,end_s\\n0,0,3600\\n1,1800,7200\\n")
        >>> Trace.from_csv(p).devices
        (0, 1)
        >>> _ = open(p, "w").write("device,start_s,end_s\\n0,100,50\\n")
        >>> Trace.from_csv(p)  # doctest: +ELLIPSIS
        Traceback (most recent call last):
        ...
        sim.availability.AvailabilityError: ...t.csv:2: interval ends at or before it starts (start_s=100, end_s=50); make end_s greater than start_s
        >>> import shutil; shutil.rmtree(d)
        """
        path_s = os.fspath(path)
        try:
            with open(path_s, encoding="utf-8-sig", newline="") as fh:
                lines = fh.read().splitlines()
        except FileNotFoundError:
            raise AvailabilityError(
                f"availability trace {path_s!r} does not exist; give the path of a CSV file with "
                f"header {','.join(_CSV_COLUMNS)} (see {_EXAMPLE})") from None
        except (OSError, UnicodeDecodeError) as exc:
            raise AvailabilityError(f"cannot read availability trace {path_s!r}: {exc}") from None

        def fail(line: int | None, problem: str, fix: str) -> AvailabilityError:
            where = f"{path_s}:{line}" if line is not None else path_s
            return AvailabilityError(f"{where}: {problem}; {fix}")

        numbered = [(i + 1, ln) for i, ln in enumerate(lines) if ln.strip()]
        if not numbered:
            raise fail(None, "file is empty",
                       f"write a header {','.join(_CSV_COLUMNS)} and one row per online interval")
        header_line, header_text = numbered[0]
        header = [h.strip() for h in next(csv.reader([header_text]))]
        missing = [c for c in _CSV_COLUMNS if c not in header]
        if missing:
            raise fail(header_line, f"missing column(s) {', '.join(missing)} (header is "
                       f"{','.join(header)!r})",
                       f"the first line must be the header {','.join(_CSV_COLUMNS)}")
        col = {c: header.index(c) for c in _CSV_COLUMNS}
        if len(numbered) == 1:
            raise fail(None, "has a header but no intervals",
                       "add one row device,start_s,end_s per online interval")

        rows: dict[int, list[tuple[float, float, int]]] = {}
        for line, text in numbered[1:]:
            fields = [f.strip() for f in next(csv.reader([text]))]
            if len(fields) != len(header):
                raise fail(line, f"expected {len(header)} fields like the header, got "
                           f"{len(fields)} ({text.strip()!r})",
                           "write device,start_s,end_s")
            raw_dev = fields[col["device"]]
            try:
                dev = int(raw_dev)
            except ValueError:
                raise fail(line, f"device {raw_dev!r} is not an integer",
                           "use integer device ids >= 0") from None
            if dev < 0:
                raise fail(line, f"device {dev} is negative", "use integer device ids >= 0")
            times = []
            for name in ("start_s", "end_s"):
                raw = fields[col[name]]
                try:
                    v = float(raw)
                except ValueError:
                    raise fail(line, f"{name} {raw!r} is not a number",
                               f"give {name} in seconds, e.g. 3600") from None
                if not math.isfinite(v):
                    raise fail(line, f"{name} {raw!r} is not finite",
                               f"give {name} as a finite number of seconds")
                times.append(v)
            start, end = times
            if not end > start:
                raise fail(line, f"interval ends at or before it starts (start_s="
                           f"{fields[col['start_s']]}, end_s={fields[col['end_s']]})",
                           "make end_s greater than start_s")
            rows.setdefault(dev, []).append((start, end, line))

        for dev, spans in rows.items():
            spans.sort()
            for a, b in zip(spans, spans[1:], strict=False):
                if b[0] < a[1]:
                    here, other = (a, b) if a[2] > b[2] else (b, a)  # report the later line
                    raise fail(here[2], f"device {dev}: interval {here[0]:g}-{here[1]:g} overlaps "
                               f"interval {other[0]:g}-{other[1]:g} on line {other[2]}",
                               "merge the two rows or correct their times")
        return cls({d: [(s, e) for s, e, _ in spans] for d, spans in rows.items()},
                   default_online=default_online)


# --------------------------------------------------------------------------------------------


REGISTRY: dict[str, Callable[..., Availability]] = {
    "always": AlwaysOn,
    "sessions": Sessions,
    "trace": Trace.from_csv,
}


def make_availability(kind: str, **params: object) -> Availability:
    """Build an availability model from its configuration name and parameters.

    Parameters
    ----------
    kind : str
        ``"always"`` (no parameters), ``"sessions"`` (``mean_online_s``, ``mean_offline_s``,
        ``diurnal_amplitude``, ``peak_hour``) or ``"trace"`` (``path``, ``default_online``).
    **params
        Keyword arguments of the model's constructor.

    Raises
    ------
    UserError
        Unknown ``kind``, unknown or missing parameter names (the message lists the valid
        ones), or invalid values.

    Examples
    --------
    >>> make_availability("always")
    AlwaysOn()
    >>> make_availability("sessions", mean_online_s=60, mean_offline_s=60, peak=3)
    Traceback (most recent call last):
    ...
    sim.availability.AvailabilityError: unknown parameter(s) peak for availability 'sessions'; valid parameters: mean_online_s, mean_offline_s, diurnal_amplitude, peak_hour
    """
    if kind not in REGISTRY:
        raise AvailabilityError(
            f"unknown availability {kind!r}; valid kinds: {', '.join(REGISTRY)}")
    factory = REGISTRY[kind]
    sig = inspect.signature(factory)
    valid = [n for n, p in sig.parameters.items()
             if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)]
    unknown = [n for n in params if n not in valid]
    if unknown:
        raise AvailabilityError(
            f"unknown parameter(s) {', '.join(unknown)} for availability {kind!r}; valid "
            f"parameters: {', '.join(valid) if valid else '(none)'}")
    required = [n for n in valid if sig.parameters[n].default is inspect.Parameter.empty]
    missing = [n for n in required if n not in params]
    if missing:
        raise AvailabilityError(
            f"availability {kind!r} needs parameter(s) {', '.join(missing)}; valid parameters: "
            f"{', '.join(valid)}")
    return factory(**params)


def online_fraction(av: Availability, device: int, horizon_s: float,
                    rng: np.random.Generator) -> float:
    """Simulate ``device``'s on/off sequence over ``[0, horizon_s]``; return the fraction of
    that time it is online (a number in ``[0, 1]``).

    Starts in :meth:`~Availability.initially_online` and follows
    :meth:`~Availability.next_change`, as the driver does.  Meant for tests and documentation.

    Examples
    --------
    >>> import numpy as np
    >>> online_fraction(Trace({0: [(0, 25), (50, 75)]}), 0, 100.0, np.random.default_rng())
    0.5
    """
    horizon = float(horizon_s)
    if not (math.isfinite(horizon) and horizon > 0):
        raise ValueError(f"horizon_s must be a positive finite number of seconds; got {horizon_s!r}")
    online = bool(av.initially_online(device, rng))
    t, up = 0.0, 0.0
    while t < horizon:
        nxt = av.next_change(device, t, online, rng)
        if not nxt > t:
            raise RuntimeError(f"{av!r}.next_change returned {nxt!r}, not after now={t!r}")
        end = min(nxt, horizon)
        if online:
            up += end - t
        t, online = end, not online
    return up / horizon


def online_share(av: Availability, devices: int, times: Sequence[float] | np.ndarray,
                 rng: np.random.Generator) -> np.ndarray:
    """The share of devices ``0 .. devices-1`` online at each of the sorted ``times`` (s), each
    device simulated from time 0 as the driver does.  Meant for tests and documentation.

    Examples
    --------
    >>> import numpy as np
    >>> s = Sessions(mean_online_s=3600, mean_offline_s=10800, diurnal_amplitude=0.8)
    >>> share = online_share(s, 2000, [8 * 3600.0, 20 * 3600.0], np.random.default_rng(0))
    >>> [round(float(x), 2) for x in share]        # q(08:00) = 0.05, q(20:00) = 0.45
    [0.05, 0.45]
    """
    times = np.asarray(times, dtype=float)
    if times.ndim != 1 or times.size == 0 or np.any(np.diff(times) < 0) or times[0] < 0:
        raise ValueError("times must be a non-empty sorted 1-d sequence of times >= 0")
    count = np.zeros(len(times))
    for d in range(int(devices)):
        online, t = bool(av.initially_online(d, rng)), 0.0
        while t <= times[-1]:
            nxt = av.next_change(d, t, online, rng)
            if online:
                count[np.searchsorted(times, t):np.searchsorted(times, nxt)] += 1
            t, online = nxt, not online
    return count / max(int(devices), 1)
