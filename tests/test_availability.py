"""Availability models: AlwaysOn, Sessions (with exact diurnal thinning), Trace and CSV traces."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from crowdlearn.errors import CrowdlearnError
from sim.availability import (
    REGISTRY,
    AlwaysOn,
    Availability,
    Sessions,
    Trace,
    make_availability,
    online_fraction,
    online_share,
)

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "traces" / "availability_example.csv"
HOUR = 3600.0


def test_models_satisfy_protocol():
    for av in (AlwaysOn(), Sessions(60, 60), Trace({0: [(0, 1)]})):
        assert isinstance(av, Availability)


# --- AlwaysOn ------------------------------------------------------------------------------

def test_always_on():
    rng = np.random.default_rng(0)
    av = AlwaysOn()
    assert av.initially_online(7, rng) is True
    assert av.next_change(7, 123.0, True, rng) == math.inf
    assert 123.0 < av.next_change(7, 123.0, False, rng) < 123.001
    assert online_fraction(av, 0, 1000.0, rng) == 1.0


# --- Sessions ------------------------------------------------------------------------------

@pytest.mark.parametrize("kw, msg", [
    (dict(mean_online_s=0, mean_offline_s=1), "mean_online_s.*0"),
    (dict(mean_online_s=1, mean_offline_s=-5), "mean_offline_s.*-5"),
    (dict(mean_online_s=math.inf, mean_offline_s=1), "mean_online_s.*inf"),
    (dict(mean_online_s="x", mean_offline_s=1), "mean_online_s.*'x'"),
    (dict(mean_online_s=1, mean_offline_s=1, diurnal_amplitude=1.0), r"\[0, 1\).*1\.0"),
    (dict(mean_online_s=1, mean_offline_s=1, diurnal_amplitude=-0.1), "diurnal_amplitude"),
    (dict(mean_online_s=1, mean_offline_s=1, peak_hour=24.5), "peak_hour.*24.5"),
])
def test_sessions_validation(kw, msg):
    with pytest.raises(CrowdlearnError, match=msg):
        Sessions(**kw)


def test_sessions_long_run_fraction():
    s = Sessions(mean_online_s=200.0, mean_offline_s=300.0)
    frac = online_fraction(s, 0, 1e7, np.random.default_rng(1))   # ~20 000 on/off cycles
    assert abs(frac - 0.4) < 0.02


def test_sessions_initial_state_follows_the_daily_curve():
    s = Sessions(mean_online_s=100.0, mean_offline_s=300.0, diurnal_amplitude=0.5)
    rng = np.random.default_rng(2)
    share = np.mean([s.initially_online(d, rng) for d in range(20000)])
    # q(0) = 0.25 + 0.5 * 0.25 * cos(2π (0 − 20) / 24) = 0.25 + 0.125 * 0.5
    assert s.online_probability(0.0) == pytest.approx(0.3125)
    assert abs(share - 0.3125) < 0.015
    flat = Sessions(mean_online_s=100.0, mean_offline_s=300.0)
    assert abs(np.mean([flat.initially_online(d, rng) for d in range(20000)]) - 0.25) < 0.015


def test_sessions_durations_are_exponential_with_the_right_means():
    s = Sessions(mean_online_s=50.0, mean_offline_s=400.0)
    rng = np.random.default_rng(3)
    on = np.array([s.next_change(0, 10.0, True, rng) - 10.0 for _ in range(20000)])
    off = np.array([s.next_change(0, 10.0, False, rng) - 10.0 for _ in range(20000)])
    assert abs(on.mean() / 50.0 - 1) < 0.03 and abs(off.mean() / 400.0 - 1) < 0.03
    assert abs(np.std(on) / on.mean() - 1) < 0.05          # exponential: cv = 1


def _reference_rates(mean_on, mean_off, a, peak, t):
    """(λ, μ) at times ``t`` written out from the docstring's formulas (independent of the class)."""
    w = 2 * math.pi / (24 * HOUR)
    pi = mean_on / (mean_on + mean_off)
    amp = a * min(pi, 1 - pi)
    q = pi + amp * np.cos(w * (t - peak * HOUR))
    dq = -amp * w * np.sin(w * (t - peak * HOUR))
    r = np.maximum.reduce([np.full_like(t, 1 / mean_on + 1 / mean_off), -dq / q, dq / (1 - q)])
    return r * q + dq, r * (1 - q) - dq


@pytest.mark.parametrize("online", [False, True])
@pytest.mark.parametrize("means", [(5 * HOUR, 5 * HOUR), (HOUR, 3 * HOUR)])
def test_sessions_thinning_matches_exact_nhpp_survival(online, means):
    """The waiting time has exactly the survival function exp(-∫ rate) of the process."""
    mean_on, mean_off = means
    s = Sessions(mean_online_s=mean_on, mean_offline_s=mean_off, diurnal_amplitude=0.9,
                 peak_hour=20.0)
    rng = np.random.default_rng(4 + online)
    now = 6 * HOUR
    waits = np.array([s.next_change(0, now, online, rng) - now for _ in range(20000)])
    grid = now + np.linspace(0.0, 30 * HOUR, 300_001)
    lam, mu = _reference_rates(mean_on, mean_off, 0.9, 20.0, grid)
    assert np.all(lam >= -1e-15) and np.all(mu >= -1e-15)
    rate = mu if online else lam
    cum = np.concatenate([[0.0], np.cumsum((rate[1:] + rate[:-1]) / 2 * np.diff(grid))])
    for hours in (1, 3, 8, 14):
        expected = math.exp(-np.interp(now + hours * HOUR, grid, cum))
        observed = np.mean(waits > hours * HOUR)
        assert abs(observed - expected) < 0.015, (hours, observed, expected)
    # the model's own rates are the reference ones
    ts = np.linspace(0, 2 * 24 * HOUR, 97)
    got = np.array([s.rates(t) for t in ts])
    want = np.stack(_reference_rates(mean_on, mean_off, 0.9, 20.0, ts), axis=1)
    assert np.allclose(got, want, rtol=1e-12, atol=1e-18)


@pytest.mark.parametrize("a", [0.0, 0.3, 0.9, 0.99])
@pytest.mark.parametrize("means", [(HOUR, 3 * HOUR), (3 * HOUR, HOUR), (8 * HOUR, 8 * HOUR)])
def test_rates_carry_the_probability_along_the_curve(a, means):
    """dq/dt = λ(1 − q) − μq holds, so P(online) = q(t) exactly (Euler on a fine grid)."""
    s = Sessions(*means, diurnal_amplitude=a, peak_hour=20.0)
    dt = 5.0
    ts = np.arange(0.0, 2 * 24 * HOUR, dt)
    p = s.online_probability(0.0)
    worst = 0.0
    for t in ts:
        lam, mu = s.rates(t)
        assert lam >= 0 and mu >= 0
        # midpoint rule, second order
        lam2, mu2 = s.rates(t + dt / 2)
        half = p + dt / 2 * (lam * (1 - p) - mu * p)
        p = p + dt * (lam2 * (1 - half) - mu2 * half)
        worst = max(worst, abs(p - s.online_probability(t + dt)))
    assert worst < 1e-4


def _online_grid(s, n, days, step, seed):
    """Share of ``n`` devices online at every ``step`` s over ``days`` days, from time 0."""
    times = np.arange(0.0, days * 24 * HOUR, step)
    return times, online_share(s, n, times, np.random.default_rng(seed))


@pytest.mark.parametrize("a", [0.3, 0.6, 0.9])
@pytest.mark.parametrize("means,peak", [((HOUR, 3 * HOUR), 20.0), ((2 * HOUR, HOUR), 7.5)])
def test_diurnal_curve_peaks_at_peak_hour_and_keeps_its_mean(a, means, peak):
    """Empirically over 2,500 devices and 3 days: the fitted daily harmonic of the online share
    peaks at ``peak_hour`` within 15 minutes, its amplitude is ``a·min(π, 1 − π)``, and the mean
    online share is ``π`` for every amplitude."""
    s = Sessions(*means, diurnal_amplitude=a, peak_hour=peak)
    times, share = _online_grid(s, 2500, 3, 300.0, seed=int(a * 10) + int(peak))
    phase = 2 * math.pi * times / (24 * HOUR)
    c, si = 2 * np.mean(share * np.cos(phase)), 2 * np.mean(share * np.sin(phase))
    fitted_peak = (math.atan2(si, c) * 24 / (2 * math.pi)) % 24
    error_min = (fitted_peak - peak + 12) % 24 * 60 - 12 * 60
    pi = means[0] / sum(means)
    assert abs(error_min) < 15, (fitted_peak, peak)
    assert math.hypot(c, si) == pytest.approx(a * min(pi, 1 - pi), abs=0.01)
    assert np.mean(share) == pytest.approx(pi, abs=0.01)
    # and the share follows q(t) point by point (binomial noise at 2,500 devices: sd <= 0.01)
    q = np.array([s.online_probability(t) for t in times])
    assert np.max(np.abs(share - q)) < 0.05


def test_sessions_without_rhythm_ignore_time_of_day():
    s = Sessions(mean_online_s=HOUR, mean_offline_s=HOUR, diurnal_amplitude=0.0)
    rng = np.random.default_rng(7)
    at_peak = np.mean([s.next_change(0, 20 * HOUR, False, rng) - 20 * HOUR for _ in range(5000)])
    at_trough = np.mean([s.next_change(0, 8 * HOUR, False, rng) - 8 * HOUR for _ in range(5000)])
    assert abs(at_peak / at_trough - 1) < 0.08


def test_peak_hour_24_is_midnight():
    assert Sessions(1, 1, 0.5, 24.0).online_probability(0.0) == pytest.approx(0.75)
    assert Sessions(1, 1, 0.5, 0.0).online_probability(12 * HOUR) == pytest.approx(0.25)
    assert Sessions(3, 1, 0.5, 0.0).online_probability(0.0) == pytest.approx(0.875)


def test_next_change_strictly_after_now_even_for_huge_now():
    s = Sessions(mean_online_s=1e-12, mean_offline_s=1e-12, diurnal_amplitude=0.5)
    rng = np.random.default_rng(8)
    now = 1e12
    for online in (True, False):
        for _ in range(100):
            assert s.next_change(3, now, online, rng) > now


def test_deterministic_per_seed():
    s = Sessions(mean_online_s=600, mean_offline_s=1200, diurnal_amplitude=0.6)

    def run(seed):
        rng = np.random.default_rng(seed)
        t, on, out = 0.0, s.initially_online(0, rng), []
        for _ in range(50):
            t = s.next_change(0, t, on, rng)
            on = not on
            out.append(t)
        return out

    assert run(1) == run(1) != run(2)


@settings(max_examples=60, deadline=None)
@given(
    mean_on=st.floats(1e-3, 1e6),
    mean_off=st.floats(1e-3, 1e6),
    a=st.floats(0.0, 0.95),
    peak=st.floats(0.0, 23.99),
    start=st.floats(0.0, 1e7),
    seed=st.integers(0, 2**32 - 1),
)
def test_law_sessions_next_change_strictly_increasing(mean_on, mean_off, a, peak, start, seed):
    s = Sessions(mean_on, mean_off, a, peak)
    rng = np.random.default_rng(seed)
    t, online = start, s.initially_online(0, rng)
    for _ in range(30):
        nxt = s.next_change(0, t, online, rng)
        assert nxt > t and math.isfinite(nxt)
        t, online = nxt, not online


# --- Trace ---------------------------------------------------------------------------------

def _replay(av, device, horizon, rng=None):
    """The (time, state) sequence a driver would see up to ``horizon``."""
    online, t = av.initially_online(device, rng), 0.0
    seq = [(0.0, online)]
    while True:
        t = av.next_change(device, t, online, rng)
        if t > horizon or t == math.inf:
            return seq
        online = not online
        seq.append((t, online))


def test_trace_follows_intervals_exactly():
    tr = Trace({3: [(100.0, 200.0), (0.0, 50.0)], 7: [(10.0, 20.5)]})
    assert _replay(tr, 0, 1e9) == [(0.0, True), (50.0, False), (100.0, True), (200.0, False)]
    assert _replay(tr, 1, 1e9) == [(0.0, False), (10.0, True), (20.5, False)]
    assert tr.next_change(0, 200.0, False, None) == math.inf
    assert tr.next_change(0, 75.0, False, None) == 100.0
    assert online_fraction(tr, 0, 400.0, None) == pytest.approx(150 / 400)


def test_trace_maps_fleet_modulo_sorted_ids():
    tr = Trace({9: [(1.0, 2.0)], 2: [(5.0, 6.0)], 4: [(3.0, 4.0)]})
    assert tr.devices == (2, 4, 9)
    firsts = [tr.next_change(d, 0.0, False, None) for d in range(7)]
    assert firsts == [5.0, 3.0, 1.0, 5.0, 3.0, 1.0, 5.0]


def test_trace_merges_touching_and_allows_negative_start():
    tr = Trace({0: [(-10.0, 5.0), (5.0, 8.0), (9.0, 12.0)]})
    assert _replay(tr, 0, 1e9) == [(0.0, True), (8.0, False), (9.0, True), (12.0, False)]


def test_trace_default_online_after_end():
    ivs = {0: [(0.0, 10.0)], 1: [(5.0, 30.0)], 2: []}
    tr = Trace(ivs, default_online=True)
    assert tr.end_s == 30.0
    assert _replay(tr, 0, 1e9) == [(0.0, True), (10.0, False), (30.0, True)]
    assert _replay(tr, 1, 1e9) == [(0.0, False), (5.0, True)]          # stays on after 30
    assert _replay(tr, 2, 1e9) == [(0.0, False), (30.0, True)]
    assert _replay(Trace(ivs), 2, 1e9) == [(0.0, False)]


def test_empty_trace_uses_default_state():
    assert _replay(Trace({}), 5, 1e9) == [(0.0, False)]
    assert _replay(Trace({}, default_online=True), 5, 1e9) == [(0.0, True)]


def test_trace_resynchronises_a_disagreeing_caller():
    tr = Trace({0: [(10.0, 20.0)]})
    t = tr.next_change(0, 15.0, False, None)      # trace says online at 15
    assert 15.0 < t < 15.0001


@pytest.mark.parametrize("ivs, msg", [
    ({0: [(5.0, 5.0)]}, "ends at or before"),
    ({0: [(5.0, 4.0)]}, "ends at or before"),
    ({0: [(0.0, 10.0), (5.0, 20.0)]}, "overlap"),
    ({-1: [(0.0, 1.0)]}, "ids must be integers >= 0"),
    ({"a": [(0.0, 1.0)]}, "ids must be integers"),
    ({0: [(0.0, math.inf)]}, "non-finite"),
    ({0: [(0.0,)]}, "pair of numbers"),
])
def test_trace_validation(ivs, msg):
    with pytest.raises(CrowdlearnError, match=msg):
        Trace(ivs)


def test_trace_rejects_bad_device_index():
    tr = Trace({0: [(0.0, 1.0)]})
    with pytest.raises(ValueError, match="device"):
        tr.next_change(-1, 0.0, True, None)


@settings(max_examples=60, deadline=None)
@given(st.dictionaries(
    st.integers(0, 50),
    st.lists(st.tuples(st.floats(0, 1e6), st.floats(1e-3, 1e4)), max_size=12),
    max_size=6), st.booleans(), st.integers(0, 20))
def test_law_trace_next_change_strictly_increasing(raw, default_online, device):
    # build non-overlapping intervals from (gap, length) pairs
    ivs = {}
    for d, pairs in raw.items():
        t, out = 0.0, []
        for gap, length in pairs:
            start = t + gap
            t = start + length
            out.append((start, t))
        ivs[d] = out
    tr = Trace(ivs, default_online=default_online)
    seq = _replay(tr, device, math.inf)
    times = [t for t, _ in seq]
    assert all(b > a for a, b in zip(times, times[1:], strict=False))
    assert all(s1 != s0 for (_, s0), (_, s1) in zip(seq, seq[1:], strict=False))


# --- CSV -----------------------------------------------------------------------------------

def _csv(tmp_path, text, name="trace.csv"):
    p = tmp_path / name
    p.write_text(text)
    return p


def test_csv_roundtrip(tmp_path):
    p = _csv(tmp_path, "device,start_s,end_s\n1,100,200\n\n0,0,50\n1,0,10\n0,50,60\n")
    tr = Trace.from_csv(p)
    assert tr.devices == (0, 1)
    assert _replay(tr, 0, 1e9) == [(0.0, True), (60.0, False)]
    assert _replay(tr, 1, 1e9) == [(0.0, True), (10.0, False), (100.0, True), (200.0, False)]


def test_csv_columns_in_any_order_extra_ignored_bom_ok(tmp_path):
    p = tmp_path / "t.csv"
    p.write_bytes("\ufeffend_s, note ,device,start_s\n20,evening,3,10\n".encode())
    tr = Trace.from_csv(str(p), default_online=True)
    assert _replay(tr, 0, 1e9) == [(0.0, False), (10.0, True)]


@pytest.mark.parametrize("text, line, msg", [
    ("device,start\n0,1\n", 1, "missing column.*end_s.*device,start_s,end_s"),
    ("device,start_s,end_s\n0,10,5\n", 2, "ends at or before it starts.*greater"),
    ("device,start_s,end_s\n0,0,10\n1,0,5\n0,5,20\n", 4,
     "device 0: interval 5-20 overlaps interval 0-10 on line 2.*merge"),
    ("device,start_s,end_s\n0,5,20\n0,0,10\n", 3, "overlaps interval 5-20 on line 2"),
    ("device,start_s,end_s\n0,abc,10\n", 2, "start_s 'abc' is not a number"),
    ("device,start_s,end_s\n0,0,nan\n", 2, "end_s 'nan' is not finite"),
    ("device,start_s,end_s\nphone,0,10\n", 2, "device 'phone' is not an integer"),
    ("device,start_s,end_s\n-2,0,10\n", 2, "negative"),
    ("device,start_s,end_s\n0,0\n", 2, "expected 3 fields"),
])
def test_csv_errors_name_file_line_and_fix(tmp_path, text, line, msg):
    p = _csv(tmp_path, text)
    with pytest.raises(CrowdlearnError, match=msg) as exc:
        Trace.from_csv(p)
    assert f"{p}:{line}:" in str(exc.value)


@pytest.mark.parametrize("text, msg", [("", "empty"), ("\n\n", "empty"),
                                       ("device,start_s,end_s\n", "no intervals")])
def test_csv_empty(tmp_path, text, msg):
    p = _csv(tmp_path, text)
    with pytest.raises(CrowdlearnError, match=msg) as exc:
        Trace.from_csv(p)
    assert str(p) in str(exc.value)


def test_csv_missing_file(tmp_path):
    p = tmp_path / "nope" / "trace.csv"
    with pytest.raises(CrowdlearnError, match="does not exist") as exc:
        Trace.from_csv(p)
    assert str(p) in str(exc.value)


def test_example_trace_is_valid_and_evening_heavy():
    tr = Trace.from_csv(EXAMPLE)
    assert tr.devices == tuple(range(20))
    assert tr.end_s == 2 * 86400
    evening = np.mean([tr.online_at(d, (day * 24 + h) * HOUR) for d in range(20)
                       for day in (0, 1) for h in (19, 20, 21, 22)])
    morning = np.mean([tr.online_at(d, (day * 24 + h) * HOUR) for d in range(20)
                       for day in (0, 1) for h in (5, 6, 7, 8)])
    assert evening > 2 * morning
    assert 0.1 < np.mean([online_fraction(tr, d, tr.end_s, None) for d in range(20)]) < 0.5


# --- registry ------------------------------------------------------------------------------

def test_registry_and_make(tmp_path):
    assert set(REGISTRY) == {"always", "sessions", "trace"}
    assert make_availability("always") == AlwaysOn()
    s = make_availability("sessions", mean_online_s=10, mean_offline_s=20, diurnal_amplitude=0.3)
    assert s == Sessions(10.0, 20.0, 0.3, 20.0)
    p = _csv(tmp_path, "device,start_s,end_s\n0,1,2\n")
    tr = make_availability("trace", path=str(p), default_online=True)
    assert isinstance(tr, Trace) and tr.default_online


@pytest.mark.parametrize("kind, params, msg", [
    ("weekly", {}, "unknown availability 'weekly'; valid kinds: always, sessions, trace"),
    ("sessions", {"mean_online_s": 1, "mean_offline_s": 1, "peak": 3},
     "unknown parameter.*peak.*valid parameters: mean_online_s, mean_offline_s, "
     "diurnal_amplitude, peak_hour"),
    ("always", {"x": 1}, r"unknown parameter.*x.*\(none\)"),
    ("trace", {"file": "a.csv"}, "unknown parameter.*file.*valid parameters: path, default_online"),
    ("sessions", {"mean_online_s": 1}, "needs parameter.*mean_offline_s"),
    ("sessions", {"mean_online_s": 1, "mean_offline_s": 0}, "mean_offline_s"),
])
def test_make_availability_errors(kind, params, msg):
    with pytest.raises(CrowdlearnError, match=msg):
        make_availability(kind, **params)


def test_online_fraction_rejects_bad_horizon_and_bad_models():
    with pytest.raises(ValueError, match="horizon"):
        online_fraction(AlwaysOn(), 0, 0.0, None)

    class Stuck:
        def initially_online(self, device, rng):
            return True

        def next_change(self, device, now, online, rng):
            return now

    with pytest.raises(RuntimeError, match="not after"):
        online_fraction(Stuck(), 0, 10.0, None)
