"""Device profiles: validation, tier figures, fleet sampling."""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import pytest

from crowdlearn.errors import CrowdlearnError
from sim.network import build_topology
from sim.profiles import (
    CORE_ONE_WAY_S,
    MEASURED_RTT_S,
    RADIO,
    TIER_RADIO,
    TIERS,
    DeviceProfile,
    ProfileError,
    parse_mix,
    radio_power_w,
    sample_fleet,
    with_overrides,
)

GOOD = dict(tier="toy", flops=1e9, memory_bytes=2**28, battery_j=5e4, j_per_flop=5e-10,
            j_per_byte_up=4e-6, j_per_byte_down=6e-7, up_bps=1.25e6, down_bps=6.25e6,
            latency_s=0.03)
FLOAT_FIELDS = ["flops", "battery_j", "j_per_flop", "j_per_byte_up", "j_per_byte_down",
                "up_bps", "down_bps", "latency_s"]
JITTERED = ["flops", "up_bps", "down_bps", "latency_s"]


def test_fields_are_exactly_the_designed_ones():
    assert [f.name for f in dataclasses.fields(DeviceProfile)] == list(GOOD)


def test_profile_is_frozen_and_slotted():
    p = DeviceProfile(**GOOD)
    with pytest.raises(dataclasses.FrozenInstanceError):
        p.flops = 2.0  # type: ignore[misc]
    assert not hasattr(p, "__dict__")


@pytest.mark.parametrize("field", FLOAT_FIELDS)
@pytest.mark.parametrize("bad", [0.0, -3.5, math.nan, -math.inf])
def test_bad_numbers_rejected_and_echoed(field, bad):
    with pytest.raises(ValueError, match=field) as exc:
        DeviceProfile(**{**GOOD, field: bad})
    assert repr(bad) in str(exc.value)
    assert isinstance(exc.value, CrowdlearnError)


@pytest.mark.parametrize("field", [f for f in FLOAT_FIELDS if f != "battery_j"])
def test_inf_rejected_except_battery(field):
    with pytest.raises(ValueError, match="inf"):
        DeviceProfile(**{**GOOD, field: math.inf})


def test_battery_may_be_inf():
    assert DeviceProfile(**{**GOOD, "battery_j": math.inf}).battery_j == math.inf


@pytest.mark.parametrize("bad", [0, -1, 1.5, "1024", True, math.nan])
def test_bad_memory_rejected(bad):
    with pytest.raises(ValueError, match="memory_bytes") as exc:
        DeviceProfile(**{**GOOD, "memory_bytes": bad})
    assert repr(bad) in str(exc.value)


def test_numbers_are_coerced():
    p = DeviceProfile(**{**GOOD, "memory_bytes": np.int64(1024), "flops": np.float32(2.0),
                         "up_bps": 7})
    assert type(p.memory_bytes) is int and p.memory_bytes == 1024
    assert type(p.flops) is float and type(p.up_bps) is float
    assert DeviceProfile(**{**GOOD, "memory_bytes": 2048.0}).memory_bytes == 2048


@pytest.mark.parametrize("bad", ["", None, 3])
def test_bad_tier_name(bad):
    with pytest.raises(ValueError, match="tier"):
        DeviceProfile(**{**GOOD, "tier": bad})


def test_non_numeric_rejected():
    with pytest.raises(ValueError, match="'fast'"):
        DeviceProfile(**{**GOOD, "flops": "fast"})


def test_with_overrides():
    base = TIERS["mid_range"]
    p = with_overrides(base, flops=1e9, latency_s=0.2)
    assert (p.flops, p.latency_s) == (1e9, 0.2)
    assert p.up_bps == base.up_bps and base.flops != 1e9
    with pytest.raises(ValueError, match="flops"):
        with_overrides(base, flops=-1)
    with pytest.raises(ValueError, match="unknown DeviceProfile field.*gpu.*valid fields: tier"):
        with_overrides(base, gpu=True)


# --- tiers ---------------------------------------------------------------------------------

def test_tier_names():
    assert list(TIERS) == ["low_end", "mid_range", "flagship", "tablet", "edge_server"]
    for name, p in TIERS.items():
        assert p.tier == name


@pytest.mark.parametrize("name", list(TIERS))
def test_tier_figures_positive_and_plausible(name):
    p = TIERS[name]
    for f in FLOAT_FIELDS:
        assert getattr(p, f) > 0
    assert p.memory_bytes > 0
    assert 1e-4 <= p.latency_s <= 0.2
    if name != "edge_server":
        assert 1e9 <= p.flops <= 25e9            # phones/tablets: order 1–20 GFLOP/s sustained
        assert 20e3 <= p.battery_j <= 200e3      # 4000 mAh × 3.85 V ≈ 55 kJ
        assert p.memory_bytes <= 4 * 2**30       # an app budget, not total RAM
        assert p.j_per_byte_up > p.j_per_byte_down   # uplink costs more (Huang et al. 2012)
        assert 1e5 <= p.up_bps <= p.down_bps <= 1e8


def test_tiers_ordered_sensibly():
    lo, mid, top, tab, edge = (TIERS[k] for k in TIERS)
    for a, b in [(lo, mid), (mid, top)]:
        assert a.flops < b.flops
        assert a.memory_bytes < b.memory_bytes
        assert a.up_bps < b.up_bps and a.down_bps < b.down_bps
        assert a.latency_s > b.latency_s
        assert a.j_per_flop > b.j_per_flop
        assert a.j_per_byte_up > b.j_per_byte_up and a.j_per_byte_down > b.j_per_byte_down
    assert tab.flops > lo.flops and tab.memory_bytes > mid.memory_bytes
    assert tab.battery_j > max(lo.battery_j, mid.battery_j, top.battery_j)
    for p in (lo, mid, top, tab):
        assert math.isfinite(p.battery_j)
        assert edge.flops > 10 * p.flops
        assert edge.memory_bytes > p.memory_bytes
        assert edge.up_bps > p.up_bps and edge.down_bps > p.down_bps
        assert edge.latency_s < p.latency_s
        assert edge.j_per_byte_up < p.j_per_byte_up
    assert edge.battery_j == math.inf


# --- mixes and fleets ----------------------------------------------------------------------

def test_parse_mix_forms():
    assert parse_mix("tablet") == {"tablet": 1.0}
    assert parse_mix({"flagship": 2, "low_end": 6, "tablet": 0}) == {"low_end": 0.75,
                                                                      "flagship": 0.25}
    assert parse_mix(" low_end : 1 , edge_server:3 ") == {"low_end": 0.25, "edge_server": 0.75}


@pytest.mark.parametrize("bad, msg", [
    ({"phone": 1.0}, "unknown tier.*'phone'.*valid tiers: low_end, mid_range, flagship, tablet, edge_server"),
    ("phablet", "unknown tier.*valid tiers: low_end"),
    ({"low_end": -0.1, "flagship": 1}, "low_end.*>= 0.*-0.1"),
    ({"low_end": math.nan}, "finite"),
    ({"low_end": 0, "flagship": 0.0}, "all zero"),
    ({}, "empty"),
    ("low_end:x", "not a number"),
    ("low_end:1,flagship", "no weight"),
    ({"low_end": "lots"}, "must be a number"),
    (3, "mapping"),
])
def test_parse_mix_errors(bad, msg):
    with pytest.raises(ValueError, match=msg):
        parse_mix(bad)


def test_mix_proportions_converge():
    mix = {"low_end": 0.5, "mid_range": 0.3, "flagship": 0.15, "tablet": 0.05}
    fleet = sample_fleet(5000, mix, rng=np.random.default_rng(11))
    assert len(fleet) == 5000
    for tier, w in mix.items():
        share = sum(d.tier == tier for d in fleet) / 5000
        assert abs(share - w) < 0.025, (tier, share)
    assert not any(d.tier == "edge_server" for d in fleet)


def test_weights_are_normalised():
    fleet = sample_fleet(4000, {"low_end": 3, "flagship": 1}, rng=np.random.default_rng(2))
    assert abs(sum(d.tier == "low_end" for d in fleet) / 4000 - 0.75) < 0.03


def test_jitter_zero_is_exact():
    fleet = sample_fleet(50, {"low_end": 1, "edge_server": 1}, rng=np.random.default_rng(0),
                         jitter=0)
    assert all(d == TIERS[d.tier] for d in fleet)


def test_jitter_only_touches_continuous_figures():
    fleet = sample_fleet(2000, "mid_range", rng=np.random.default_rng(5), jitter=0.25)
    base = TIERS["mid_range"]
    for f in ["memory_bytes", "battery_j", "j_per_flop"]:
        assert all(getattr(d, f) == getattr(base, f) for d in fleet)
    # per-byte energies follow each device's own rates through the tier's radio model
    lte = RADIO["lte"]
    for d in fleet:
        assert d.j_per_byte_up == lte.j_per_byte("up", d.up_bps)
        assert d.j_per_byte_down == lte.j_per_byte("down", d.down_bps)
    for f in JITTERED:
        logs = np.log([getattr(d, f) / getattr(base, f) for d in fleet])
        assert abs(np.median(logs)) < 0.03          # tier figure stays the median
        assert abs(np.std(logs) - 0.25) < 0.02      # sigma = jitter
    # the four factors are independent draws
    m = np.log([[getattr(d, f) for f in JITTERED] for d in fleet])
    corr = np.corrcoef(m.T)
    assert np.all(np.abs(corr[np.triu_indices(4, 1)]) < 0.1)


def test_deterministic_per_seed():
    mix = {"low_end": 1, "mid_range": 1, "flagship": 1}
    a = sample_fleet(200, mix, rng=np.random.default_rng(42))
    b = sample_fleet(200, dict(reversed(list(mix.items()))), rng=np.random.default_rng(42))
    c = sample_fleet(200, mix, rng=np.random.default_rng(43))
    assert a == b
    assert a != c


def test_fleet_size_and_jitter_validation():
    rng = np.random.default_rng(0)
    assert sample_fleet(0, "tablet", rng=rng) == []
    for bad in (-1, 2.5, True):
        with pytest.raises(ValueError, match="fleet size"):
            sample_fleet(bad, "tablet", rng=rng)
    for bad in (-0.1, math.inf, "wide"):
        with pytest.raises(ValueError, match="jitter"):
            sample_fleet(3, "tablet", rng=rng, jitter=bad)
    with pytest.raises(ValueError, match="valid tiers"):
        sample_fleet(3, {"gpu_box": 1}, rng=rng)


# --- radio power and latency ----------------------------------------------------------------

MBPS = 1e6 / 8


def test_radio_model_is_huang_linear_capped_at_the_ceiling():
    lte, wifi = RADIO["lte"], RADIO["wifi"]
    # below the ceiling: P = β + α·r (Huang et al. 2012, Table 3), by hand
    assert lte.power_w("down", 15 * MBPS) == pytest.approx(1.28804 + 0.05197 * 15)
    assert lte.power_w("up", 2 * MBPS) == pytest.approx(1.28804 + 0.43839 * 2)
    assert wifi.power_w("up", 3 * MBPS) == pytest.approx(0.13286 + 0.28317 * 3)
    # above it: the ceiling, whatever the rate
    for rate in (20, 150, 1000):
        assert lte.power_w("up", rate * MBPS) == lte.max_w == 2.5
        assert wifi.power_w("down", rate * MBPS) == wifi.max_w == 1.2
    assert lte.j_per_byte("down", 50 * MBPS) == pytest.approx(2.5 / (50 * MBPS))
    with pytest.raises(ProfileError, match="'up' or 'down'.*sideways"):
        lte.power_w("sideways", 1.0)


@pytest.mark.parametrize("name", list(TIERS))
@pytest.mark.parametrize("direction", ["up", "down"])
def test_every_tier_radio_draws_half_to_four_watts_at_its_nominal_rate(name, direction):
    p = TIERS[name]
    watts = radio_power_w(p, direction)
    assert 0.5 <= watts <= 4.0, (name, direction, watts)
    rate = p.up_bps if direction == "up" else p.down_bps
    assert watts == pytest.approx(RADIO[TIER_RADIO[name]].power_w(direction, rate))


def test_jittered_radios_never_exceed_their_ceiling():
    fleet = sample_fleet(3000, {"low_end": 1, "mid_range": 1, "flagship": 1, "tablet": 1},
                         rng=np.random.default_rng(9), jitter=0.5)
    for d in fleet:
        cap = RADIO[TIER_RADIO[d.tier]].max_w
        for direction in ("up", "down"):
            assert radio_power_w(d, direction) <= cap * (1 + 1e-12)


def test_wifi_tablet_spends_less_per_byte_than_lte_phones():
    tab = TIERS["tablet"]
    for phone in ("low_end", "mid_range", "flagship"):
        p = TIERS[phone]
        assert tab.j_per_byte_up < p.j_per_byte_up, phone
        assert tab.j_per_byte_down < p.j_per_byte_down, phone


@pytest.mark.parametrize("name", ["low_end", "mid_range", "flagship", "tablet"])
def test_modelled_round_trip_to_the_server_is_the_measured_one(name):
    """Device -> cell -> core -> server and back, with build_topology's default backhaul latency
    and the edge server's own link latency, adds up to the tier's measured (Ookla) round trip."""
    import networkx as nx
    p, server = TIERS[name], TIERS["edge_server"]
    g = build_topology(1, device_up_bps=p.up_bps, device_down_bps=p.down_bps,
                       device_latency_s=p.latency_s, server_latency_s=server.latency_s)
    rtt = (nx.shortest_path_length(g, 0, "server", weight="latency")
           + nx.shortest_path_length(g, "server", 0, weight="latency"))
    assert rtt == pytest.approx(MEASURED_RTT_S[name], rel=1e-12)
    assert p.latency_s == pytest.approx(MEASURED_RTT_S[name] / 2 - CORE_ONE_WAY_S)
    assert server.latency_s == pytest.approx(MEASURED_RTT_S["edge_server"] / 2)
