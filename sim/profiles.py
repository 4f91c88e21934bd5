"""Device profiles: what a phone, tablet or edge server can compute, hold, spend and send.

A :class:`DeviceProfile` is a frozen record of the figures the simulator charges time and energy
against (units: FLOP/s, bytes, joules, bytes per second, seconds).  :data:`TIERS` holds one profile
per device class, each figure with the public measurement it comes from; :func:`sample_fleet`
draws a heterogeneous fleet from a tier mix with log-normal jitter around the tier figures.

The tier figures are *order-of-magnitude* estimates from public sources, cited next to each one.
They are meant to make relative comparisons (a low-end phone is several times slower than a
flagship, uploads cost several times more energy than downloads) realistic, not to model any one
handset.  Override any figure with :func:`with_overrides`.

This module is ring 0 (pure): it imports only the standard library, NumPy and
:mod:`crowdlearn.errors`.

Examples
--------
>>> import numpy as np
>>> fleet = sample_fleet(4, {"low_end": 1, "flagship": 1}, rng=np.random.default_rng(0))
>>> len(fleet), sorted({d.tier for d in fleet}) <= ["flagship", "low_end"]
(4, True)
>>> TIERS["flagship"].flops > TIERS["low_end"].flops
True
>>> with_overrides(TIERS["mid_range"], latency_s=0.1).latency_s
0.1
"""

from __future__ import annotations

import dataclasses
import math
import numbers
import operator
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from slicenet.errors import UserError

__all__ = [
    "CORE_ONE_WAY_S",
    "DeviceProfile",
    "FleetProfiles",
    "MEASURED_RTT_S",
    "ProfileError",
    "RADIO",
    "RadioModel",
    "TIERS",
    "TIER_RADIO",
    "parse_mix",
    "radio_power_w",
    "sample_fleet",
    "sample_fleet_table",
    "with_overrides",
]


class ProfileError(UserError, ValueError):
    """A bad device profile, tier name or tier mix (a ``ValueError`` and a ``UserError``)."""


_FLOAT_FIELDS = (
    "flops", "battery_j", "j_per_flop", "j_per_byte_up", "j_per_byte_down",
    "up_bps", "down_bps", "latency_s",
)


@dataclass(frozen=True, slots=True)
class DeviceProfile:
    """The capabilities and costs of one device.

    Parameters
    ----------
    tier : str
        Name of the device class (a key of :data:`TIERS` for sampled devices).
    flops : float
        Sustained FLOP/s available to a training job.
    memory_bytes : int
        Memory budget available to a training job (what an app may use, not total RAM).
    battery_j : float
        Full battery energy in joules; ``math.inf`` for mains power.
    j_per_flop : float
        Energy per FLOP of training compute (J).
    j_per_byte_up, j_per_byte_down : float
        Radio energy per byte sent / received (J).
    up_bps, down_bps : float
        Uplink / downlink throughput in **bytes** per second.
    latency_s : float
        One-way latency (s) of the device's own link (for a phone, its access network to the
        cell; the tiers derive it from a measured round trip, see :data:`MEASURED_RTT_S`).

    Notes
    -----
    Every number must be positive and finite, except ``battery_j`` which may be ``inf``.
    Violations raise :class:`ProfileError` (a ``ValueError``) echoing the bad value.

    Examples
    --------
    >>> p = DeviceProfile("toy", 1e9, 2**28, 5e4, 5e-10, 4e-6, 6e-7, 1.25e6, 6.25e6, 0.03)
    >>> p.up_bps
    1250000.0
    >>> DeviceProfile("toy", -1.0, 2**28, 5e4, 5e-10, 4e-6, 6e-7, 1.25e6, 6.25e6, 0.03)
    Traceback (most recent call last):
    ...
    sim.profiles.ProfileError: DeviceProfile 'toy': flops must be a positive finite number; got -1.0
    """

    tier: str
    flops: float
    memory_bytes: int
    battery_j: float
    j_per_flop: float
    j_per_byte_up: float
    j_per_byte_down: float
    up_bps: float
    down_bps: float
    latency_s: float

    def __post_init__(self) -> None:
        if not isinstance(self.tier, str) or not self.tier:
            raise ProfileError(f"DeviceProfile tier must be a non-empty string; got {self.tier!r}")
        where = f"DeviceProfile {self.tier!r}"
        mem = self.memory_bytes
        if isinstance(mem, bool) or not isinstance(mem, numbers.Real):
            raise ProfileError(f"{where}: memory_bytes must be a positive integer; got {mem!r}")
        if not isinstance(mem, numbers.Integral):
            if not (math.isfinite(mem) and float(mem).is_integer()):
                raise ProfileError(
                    f"{where}: memory_bytes must be a positive integer; got {mem!r}")
        if mem <= 0:
            raise ProfileError(f"{where}: memory_bytes must be a positive integer; got {mem!r}")
        object.__setattr__(self, "memory_bytes", int(mem))
        for name in _FLOAT_FIELDS:
            value = getattr(self, name)
            ok = isinstance(value, numbers.Real) and not isinstance(value, bool)
            if ok:
                value = float(value)
                allow_inf = name == "battery_j"
                ok = value > 0 and (math.isfinite(value) or (allow_inf and value == math.inf))
            if not ok:
                extra = " (or inf for mains power)" if name == "battery_j" else ""
                raise ProfileError(
                    f"{where}: {name} must be a positive finite number{extra}; got {value!r}")
            object.__setattr__(self, name, value)


def with_overrides(profile: DeviceProfile, **fields: object) -> DeviceProfile:
    """Return a copy of ``profile`` with some fields replaced (and re-validated).

    Raises :class:`ProfileError` for a field name that ``DeviceProfile`` does not have.

    Examples
    --------
    >>> slow = with_overrides(TIERS["flagship"], flops=1e9, tier="throttled")
    >>> slow.tier, slow.flops, slow.up_bps == TIERS["flagship"].up_bps
    ('throttled', 1000000000.0, True)
    """
    valid = [f.name for f in dataclasses.fields(DeviceProfile)]
    unknown = sorted(set(fields) - set(valid))
    if unknown:
        raise ProfileError(
            f"unknown DeviceProfile field(s) {', '.join(unknown)}; valid fields: {', '.join(valid)}")
    return dataclasses.replace(profile, **fields)


# --------------------------------------------------------------------------------------------
# Tier figures.  Every number below is approximate and comes from the public source named next
# to it; where a figure is derived (energy = power / throughput) the inputs are cited instead.
# --------------------------------------------------------------------------------------------

_MIB = 2**20
_GIB = 2**30
_MBPS = 1e6 / 8  # bytes/s in one megabit/s


def _battery_j(mah: float, volts: float) -> float:
    """Battery energy in joules from a spec-sheet capacity: mAh × V × 3.6 J/mWh."""
    return mah * volts * 3.6


# Radio energy: the linear power model capped at a measured ceiling.
#
# Huang et al., "A close examination of performance and power characteristics of 4G LTE
# networks", MobiSys 2012, fit the power a phone draws while transferring as
#     P = α_u·t_u + α_d·t_d + β          (t in Mbit/s; Table 3 of the paper)
#   LTE : α_u = 438.39 mW/Mbps, α_d = 51.97 mW/Mbps, β = 1288.04 mW
#   WiFi: α_u = 283.17 mW/Mbps, α_d = 137.01 mW/Mbps, β = 132.86 mW
# on 2011 handsets at the rates they measured (LTE median 13 Mbit/s down, 6 up).  Extrapolated to
# today's 20–150 Mbit/s the slope makes radios draw 5–11 W, which no phone does: the marginal
# power per Mbit/s falls as modems get faster (wider channels and higher-order modulation move
# more bits per joule).  So the power is the linear model *capped at a measured ceiling*:
#     P(r) = min(β + α·r, P_max),    energy per byte = P(r) / (bytes/s)
#   LTE  P_max ≈ 2.5 W: the whole cellular subsystem of LTE smartphones draws up to about
#        2.5 W at the maximum transmit power of 23 dBm, and markedly less at lower transmit
#        power whatever the rate (Lauridsen et al., "An empirical LTE smartphone power model
#        with a view to energy efficiency evolution", Intel Technology Journal 18(1), 2014,
#        approximate); the 5G NR phones Signals Research Group measured draw more current than
#        on LTE but move more bits per joule at high rates ("5G: The Greatest Show on Earth!
#        Vol. 6", 2019), so the LTE ceiling is kept for the 5G tier too (conservative).
#   WiFi P_max ≈ 1.2 W: 802.11n/ac smartphone interfaces draw of order 1 W at saturation
#        throughput (Saha et al., "Revisiting 802.11 power consumption modeling in
#        smartphones", WoWMoM 2016, approximate).
# With these figures every tier's radio draws 0.5–4 W at its nominal rate (tests), and a tablet
# on Wi-Fi spends less energy per byte than a phone on LTE, in both directions.
# We ignore the RRC tail (LTE: ≈ 1.06 W for 11.6 s after the last packet, Huang et al. 2012,
# Table 3): it is paid once per burst, and training traffic comes in long transfers.
# A jittered device's per-byte energy is recomputed from the model at its own rates.


@dataclass(frozen=True, slots=True)
class RadioModel:
    """Power drawn while transferring: ``min(base_w + α · rate, max_w)`` (rate in Mbit/s).

    Examples
    --------
    >>> lte = RADIO["lte"]
    >>> round(lte.power_w("down", 15 * _MBPS), 3), lte.power_w("up", 20 * _MBPS)
    (2.068, 2.5)
    >>> round(lte.j_per_byte("up", 20 * _MBPS) * 1e9)       # nJ per byte at 20 Mbit/s
    1000
    """

    alpha_up_w_per_mbps: float
    alpha_down_w_per_mbps: float
    base_w: float
    max_w: float

    def power_w(self, direction: str, rate_bps: float) -> float:
        """Power (W) while sending (``"up"``) or receiving (``"down"``) at ``rate_bps`` bytes/s."""
        if direction not in ("up", "down"):
            raise ProfileError(f"radio direction must be 'up' or 'down'; got {direction!r}")
        alpha = self.alpha_up_w_per_mbps if direction == "up" else self.alpha_down_w_per_mbps
        return min(self.base_w + alpha * rate_bps / _MBPS, self.max_w)

    def j_per_byte(self, direction: str, rate_bps: float) -> float:
        """Energy per byte (J) at a sustained ``rate_bps`` (bytes/s): power / rate."""
        return self.power_w(direction, rate_bps) / rate_bps


#: Radio power models by access technology (sources in the comment above).
RADIO: dict[str, RadioModel] = {
    "lte": RadioModel(0.43839, 0.05197, 1.28804, 2.5),    # Huang et al. 2012; cap Lauridsen et al. 2014
    "wifi": RadioModel(0.28317, 0.13701, 0.13286, 1.2),   # Huang et al. 2012; cap Saha et al. 2016
    # A server's wired 10 GbE port: ~2 W per port whatever the load (Intel Ethernet X710
    # datasheet: ~3.7 W typical for two 10 GbE ports), so energy per byte = 2 W / rate.
    "wired": RadioModel(0.0, 0.0, 2.0, 2.0),
}

# Latency.  Ookla reports *round-trip* pings from the phone to a nearby test server (same
# metro, like an edge server).  The simulated path device → cell → core → server adds, one way,
# the backhaul (5 ms, the default of sim.network.build_topology) and the server's own link (the
# server tier's latency_s, 0.5 ms), so a device's access latency is
#     latency_s = RTT / 2 − CORE_ONE_WAY_S
# and the modelled round trip to the server equals the measured one (tested).
CORE_ONE_WAY_S = 0.005 + 0.0005

#: Measured round trips (s) to a nearby server per tier (Ookla Speedtest Global Index
#: 2023–2024, approximate medians): the tier's ``latency_s`` is derived from these.
MEASURED_RTT_S: dict[str, float] = {
    "low_end": 0.060,     # lower-ranked mobile markets
    "mid_range": 0.030,   # global mobile median
    "flagship": 0.025,    # leading 5G markets
    "tablet": 0.015,      # fixed broadband (~10 ms) plus a home Wi-Fi hop
    "edge_server": 0.001,  # LAN / same-site: round trips of ~1 ms
}


def _tier(tier: str, *, flops: float, cpu_w: float, memory_bytes: int, battery_j: float,
          radio: str, up_bps: float, down_bps: float) -> DeviceProfile:
    model = RADIO[radio]
    return DeviceProfile(
        tier=tier,
        flops=flops,
        memory_bytes=memory_bytes,
        battery_j=battery_j,
        j_per_flop=cpu_w / flops,
        j_per_byte_up=model.j_per_byte("up", up_bps),
        j_per_byte_down=model.j_per_byte("down", down_bps),
        up_bps=up_bps,
        down_bps=down_bps,
        latency_s=MEASURED_RTT_S[tier] / 2 - CORE_ONE_WAY_S,
    )


# Compute.  Phone CPU peaks are tens of GFLOP/s in SGEMM-style kernels (Geekbench 5 SGEMM
# sub-scores; AI-Benchmark CPU-mode float results, Ignatov et al., ICCV Workshops 2019), but
# sustained-load tests (AnandTech / GSMArena throttling runs) show phones settle at roughly half
# of peak within minutes, and backprop on small models is memory bound.  We therefore take
# sustained *training* throughput of order 1–20 GFLOP/s for phones.  CPU power under sustained
# all-core load: roughly 1–2 W for budget/efficiency cores up to ~4–5 W for flagship big-core
# clusters (AnandTech SoC reviews' SPEC power measurements, approximate); j_per_flop = W / FLOP/s.
#
# Memory.  An app's budget, not total RAM: Android's ActivityManager.getMemoryClass() is
# typically 128–256 MB on 2–3 GB devices and 256–512 MB on 4–12 GB devices (dalvik.vm.heapgrowthlimit
# in device build.prop files); native (TFLite) allocations can exceed it, but the low-memory killer
# reclaims large apps first.  iOS jetsam limits are roughly half of RAM.
#
# Network.  Ookla Speedtest Global Index (2023–2024, approximate): global median mobile download
# ≈ 50–55 Mbit/s, upload ≈ 10–12 Mbit/s; fixed broadband ≈ 90 / 40 Mbit/s.  Lower-ranked markets
# report mobile medians of ~10–20 Mbit/s down; leading 5G markets 100–200 Mbit/s down.
# Converted to bytes/s with _MBPS.  Latencies: see MEASURED_RTT_S above.

#: Tier name → radio model name, for recomputing a jittered device's per-byte energy.
TIER_RADIO: dict[str, str] = {"low_end": "lte", "mid_range": "lte", "flagship": "lte",
                              "tablet": "wifi", "edge_server": "wired"}

TIERS: dict[str, DeviceProfile] = {
    "low_end": _tier(
        "low_end",
        flops=2e9,                    # ~2 GFLOP/s sustained: A53/A55-class cores (see above)
        cpu_w=1.5,                    # ~1.5 W sustained (AnandTech, efficiency-core clusters)
        memory_bytes=256 * _MIB,      # getMemoryClass() ~128–256 MB on 2–3 GB-RAM phones
        battery_j=_battery_j(4000, 3.85),  # 4000 mAh × 3.85 V ≈ 55 kJ (budget spec sheets: 4000–5000 mAh)
        radio=TIER_RADIO["low_end"],  # LTE (see RADIO)
        up_bps=4 * _MBPS,             # ~4 Mbit/s up: Ookla lower-ranked mobile markets
        down_bps=15 * _MBPS,          # ~15 Mbit/s down: Ookla lower-ranked mobile markets
    ),
    "mid_range": _tier(
        "mid_range",
        flops=6e9,                    # ~6 GFLOP/s sustained: A78-class mid-range SoC (see above)
        cpu_w=2.5,                    # ~2.5 W sustained (AnandTech, mid-range SoCs)
        memory_bytes=512 * _MIB,      # getMemoryClass() ~256–512 MB on 4–6 GB-RAM phones
        battery_j=_battery_j(5000, 3.85),  # 5000 mAh × 3.85 V ≈ 69 kJ (e.g. Galaxy A54 spec sheet)
        radio=TIER_RADIO["mid_range"],  # LTE (see RADIO)
        up_bps=10 * _MBPS,            # ~10 Mbit/s up: Ookla global mobile median
        down_bps=50 * _MBPS,          # ~50 Mbit/s down: Ookla global mobile median
    ),
    "flagship": _tier(
        "flagship",
        flops=15e9,                   # ~15 GFLOP/s sustained: X-series/A-series big cores, throttled
        cpu_w=4.0,                    # ~4 W sustained (AnandTech flagship SoC power measurements)
        memory_bytes=1 * _GIB,        # large-heap / native budget ~1 GB on 8–12 GB-RAM phones
        battery_j=_battery_j(4500, 3.85),  # 4500 mAh × 3.85 V ≈ 62 kJ (Pixel 8 4575 mAh, Galaxy S24 4000 mAh)
        radio=TIER_RADIO["flagship"],  # LTE ceiling kept for 5G (see RADIO)
        up_bps=20 * _MBPS,            # ~20 Mbit/s up: Ookla medians in leading 5G markets
        down_bps=150 * _MBPS,         # ~150 Mbit/s down: Ookla medians in leading 5G markets
    ),
    "tablet": _tier(
        "tablet",
        flops=20e9,                   # ~20 GFLOP/s: flagship-class SoC, larger chassis throttles less
        cpu_w=5.0,                    # ~5 W sustained (tablet SoCs run at higher sustained power)
        memory_bytes=1536 * _MIB,     # ~1.5 GB: roughly half of RAM under iOS jetsam on 3–4 GB iPads
        battery_j=28.6 * 3600,        # 28.6 Wh ≈ 103 kJ (Apple iPad 10th gen spec sheet)
        radio=TIER_RADIO["tablet"],   # home Wi-Fi (see RADIO)
        up_bps=30 * _MBPS,            # ~30 Mbit/s: a little below Ookla fixed median (~40) for Wi-Fi loss
        down_bps=80 * _MBPS,          # ~80 Mbit/s: a little below Ookla fixed median (~90) for Wi-Fi loss
    ),
    "edge_server": DeviceProfile(
        tier="edge_server",
        flops=5e11,                   # ~0.5 TFLOP/s: 16-core AVX-512 Xeon peaks ~2–3 TFLOP/s fp32
                                      # (Intel ark: cores × GHz × 64 FLOP/cycle); ~20% sustained in training
        memory_bytes=16 * _GIB,       # a 16 GiB slice of a 64–256 GB server
        battery_j=math.inf,           # mains power
        j_per_flop=200.0 / 5e11,      # ~200 W package power (Intel Xeon TDP 150–250 W) / 0.5 TFLOP/s
        j_per_byte_up=RADIO["wired"].j_per_byte("up", 10_000 * _MBPS),    # 2 W / 10 Gbit/s
        j_per_byte_down=RADIO["wired"].j_per_byte("down", 10_000 * _MBPS),
        up_bps=10_000 * _MBPS,        # one 10 GbE port, the common server NIC
        down_bps=10_000 * _MBPS,
        latency_s=MEASURED_RTT_S["edge_server"] / 2,   # its own link: half a ~1 ms LAN round trip
    ),
}


def radio_power_w(profile: DeviceProfile, direction: str) -> float:
    """Power (W) the device's radio draws while transferring at its own rate in ``direction``:
    energy per byte × bytes per second.

    Examples
    --------
    >>> round(radio_power_w(TIERS["tablet"], "down"), 3)
    1.2
    """
    if direction == "up":
        return profile.j_per_byte_up * profile.up_bps
    if direction == "down":
        return profile.j_per_byte_down * profile.down_bps
    raise ProfileError(f"radio direction must be 'up' or 'down'; got {direction!r}")


def _tier_list() -> str:
    return ", ".join(TIERS)


def parse_mix(value: Mapping[str, float] | str) -> dict[str, float]:
    """Validate a tier mix and return it normalised to sum to 1.

    Parameters
    ----------
    value : mapping or str
        ``{tier: weight}`` with non-negative finite weights (at least one positive), a single tier
        name (``"flagship"`` → ``{"flagship": 1.0}``), or a comma-separated string
        ``"low_end:0.3,flagship:0.7"``.

    Returns
    -------
    dict[str, float]
        Tiers with positive weight, in :data:`TIERS` order, weights summing to 1.

    Raises
    ------
    ProfileError
        Unknown tier (the message lists the valid ones), negative / non-finite weight, or all
        weights zero.

    Examples
    --------
    >>> parse_mix("flagship")
    {'flagship': 1.0}
    >>> parse_mix({"flagship": 1, "low_end": 3})
    {'low_end': 0.75, 'flagship': 0.25}
    >>> parse_mix("low_end:1,mid_range:1")
    {'low_end': 0.5, 'mid_range': 0.5}
    """
    if isinstance(value, str):
        text = value.strip()
        if ":" not in text and "," not in text:
            value = {text: 1.0}
        else:
            parsed: dict[str, float] = {}
            for part in text.split(","):
                name, sep, weight = part.partition(":")
                name = name.strip()
                if not sep:
                    raise ProfileError(
                        f"tier mix {value!r}: entry {part.strip()!r} has no weight; "
                        f"write 'tier:weight,tier:weight' (tiers: {_tier_list()})")
                try:
                    parsed[name] = parsed.get(name, 0.0) + float(weight)
                except ValueError:
                    raise ProfileError(
                        f"tier mix {value!r}: weight {weight.strip()!r} of {name!r} is not a "
                        "number") from None
            value = parsed
    if not isinstance(value, Mapping):
        raise ProfileError(
            f"tier mix must be a mapping {{tier: weight}} or a tier name; got {value!r}")
    if not value:
        raise ProfileError(f"tier mix is empty; give at least one of: {_tier_list()}")
    unknown = [k for k in value if k not in TIERS]
    if unknown:
        raise ProfileError(
            f"unknown tier(s) {', '.join(map(repr, unknown))} in mix; valid tiers: {_tier_list()}")
    weights: dict[str, float] = {}
    for name, w in value.items():
        try:
            wf = float(w)
        except (TypeError, ValueError):
            raise ProfileError(f"tier mix weight for {name!r} must be a number; got {w!r}") from None
        if not math.isfinite(wf) or wf < 0:
            raise ProfileError(
                f"tier mix weight for {name!r} must be finite and >= 0; got {w!r}")
        weights[name] = wf
    total = sum(weights.values())
    if total <= 0:
        raise ProfileError(f"tier mix weights are all zero: {dict(value)!r}; make one positive")
    return {name: weights[name] / total for name in TIERS if weights.get(name, 0.0) > 0}


class FleetProfiles(Sequence):
    """A fleet's profiles held column-wise: one numpy array per :class:`DeviceProfile` field.

    A million devices as :class:`DeviceProfile` objects take about half a gigabyte and seconds
    to build; as columns they take 80 bytes each.  ``fleet[i]`` still gives device ``i``'s
    :class:`DeviceProfile` (built on access and validated as usual), ``len``, iteration and
    ``==`` (against another table or a list of profiles) behave as for a list, and
    :attr:`columns` gives the arrays to code that works on the whole fleet at once.

    Parameters
    ----------
    tiers : sequence of str
        The tier names that ``tier_index`` refers to.
    tier_index : numpy.ndarray
        ``(n,)`` integer index into ``tiers`` of every device.
    **columns : numpy.ndarray
        ``(n,)`` arrays, one per numeric field of :class:`DeviceProfile` (all of them).

    Examples
    --------
    >>> import numpy as np
    >>> fleet = sample_fleet_table(3, "mid_range", rng=np.random.default_rng(1), jitter=0)
    >>> len(fleet), fleet[2] == TIERS["mid_range"], fleet.columns["flops"].tolist()
    (3, True, [6000000000.0, 6000000000.0, 6000000000.0])
    >>> fleet == [TIERS["mid_range"]] * 3
    True
    """

    FIELDS = ("flops", "memory_bytes", "battery_j", "j_per_flop", "j_per_byte_up",
              "j_per_byte_down", "up_bps", "down_bps", "latency_s")

    def __init__(self, tiers: Sequence[str], tier_index: np.ndarray, **columns: np.ndarray):
        missing = sorted(set(self.FIELDS) - set(columns))
        extra = sorted(set(columns) - set(self.FIELDS))
        if missing or extra:
            raise ProfileError(f"FleetProfiles needs exactly the columns {', '.join(self.FIELDS)}; "
                               f"missing {missing}, unknown {extra}")
        self.tiers = tuple(tiers)
        self.tier_index = np.asarray(tier_index)
        n = self.tier_index.shape[0]
        self.columns: dict[str, np.ndarray] = {}
        for name in self.FIELDS:
            col = np.asarray(columns[name], dtype=np.int64 if name == "memory_bytes" else float)
            if col.shape != (n,):
                raise ProfileError(f"FleetProfiles column {name} must have shape ({n},); "
                                   f"got {col.shape}")
            self.columns[name] = col

    @classmethod
    def from_profiles(cls, profiles: Sequence[DeviceProfile]) -> FleetProfiles:
        """Columns of a list of profiles (the inverse of ``list(table)``)."""
        tiers: dict[str, int] = {}
        index = np.fromiter((tiers.setdefault(p.tier, len(tiers)) for p in profiles),
                            dtype=np.int32, count=len(profiles))
        cols = {name: np.array([getattr(p, name) for p in profiles],
                               dtype=np.int64 if name == "memory_bytes" else float)
                for name in cls.FIELDS}
        return cls(list(tiers), index, **cols)

    def __len__(self) -> int:
        return self.tier_index.shape[0]

    def __getitem__(self, i):
        if isinstance(i, slice):
            return [self[k] for k in range(*i.indices(len(self)))]
        i = operator.index(i)
        if i < 0:
            i += len(self)
        if not 0 <= i < len(self):
            raise IndexError(f"device index {i} out of range for a fleet of {len(self)}")
        c = self.columns
        return DeviceProfile(self.tiers[self.tier_index[i]], float(c["flops"][i]),
                             int(c["memory_bytes"][i]), float(c["battery_j"][i]),
                             float(c["j_per_flop"][i]), float(c["j_per_byte_up"][i]),
                             float(c["j_per_byte_down"][i]), float(c["up_bps"][i]),
                             float(c["down_bps"][i]), float(c["latency_s"][i]))

    def tier_of(self, i: int) -> str:
        """Device ``i``'s tier name, without building its profile."""
        return self.tiers[self.tier_index[i]]

    def __eq__(self, other: object) -> bool:
        if isinstance(other, FleetProfiles):
            return (len(self) == len(other)
                    and [self.tiers[k] for k in self.tier_index]
                    == [other.tiers[k] for k in other.tier_index]
                    and all(np.array_equal(self.columns[f], other.columns[f])
                            for f in self.FIELDS))
        if isinstance(other, Sequence) and not isinstance(other, str):
            return len(self) == len(other) and all(a == b for a, b in zip(self, other, strict=True))
        return NotImplemented

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        return f"FleetProfiles({len(self)} devices, tiers {list(self.tiers)})"


def sample_fleet_table(n: int, mix: Mapping[str, float] | str, *, rng: np.random.Generator,
                       jitter: float = 0.25) -> FleetProfiles:
    """:func:`sample_fleet`, held column-wise: the same draws and the same figures, as a
    :class:`FleetProfiles` (``list(sample_fleet_table(...)) == sample_fleet(...)`` for the same
    generator state).

    Examples
    --------
    >>> import numpy as np
    >>> a = sample_fleet_table(50, "low_end:1,tablet:1", rng=np.random.default_rng(3))
    >>> a == sample_fleet(50, "low_end:1,tablet:1", rng=np.random.default_rng(3))
    True
    """
    if isinstance(n, bool) or not isinstance(n, numbers.Integral) or n < 0:
        raise ProfileError(f"fleet size must be a non-negative integer; got {n!r}")
    try:
        jitter = float(jitter)
    except (TypeError, ValueError):
        raise ProfileError(f"jitter must be a number >= 0; got {jitter!r}") from None
    if not math.isfinite(jitter) or jitter < 0:
        raise ProfileError(f"jitter must be a finite number >= 0; got {jitter!r}")
    weights = parse_mix(mix)
    names = list(weights)
    n = int(n)
    bases = [TIERS[k] for k in names]

    def base(name: str, dtype=float) -> np.ndarray:
        return np.array([getattr(b, name) for b in bases], dtype=dtype)

    if n == 0:
        idx = np.zeros(0, dtype=np.intp)
    else:
        idx = rng.choice(len(names), size=n, p=np.array([weights[k] for k in names]))
    cols = {name: base(name, np.int64 if name == "memory_bytes" else float)[idx]
            for name in FleetProfiles.FIELDS}
    if n and jitter > 0:
        # the same operations, in the same order, as one device at a time (bit-identical)
        f = np.exp(rng.normal(0.0, jitter, size=(n, 4)))
        cols["flops"] = cols["flops"] * f[:, 0]
        cols["up_bps"] = up = cols["up_bps"] * f[:, 1]
        cols["down_bps"] = down = cols["down_bps"] * f[:, 2]
        cols["latency_s"] = cols["latency_s"] * f[:, 3]
        radios = [RADIO[TIER_RADIO[b.tier]] for b in bases]
        for key, rate, alpha in (("j_per_byte_up", up, "alpha_up_w_per_mbps"),
                                 ("j_per_byte_down", down, "alpha_down_w_per_mbps")):
            a = np.array([getattr(r, alpha) for r in radios])[idx]
            b0 = np.array([r.base_w for r in radios])[idx]
            top = np.array([r.max_w for r in radios])[idx]
            cols[key] = np.minimum(b0 + a * rate / _MBPS, top) / rate
    return FleetProfiles(names, idx.astype(np.int32), **cols)


def sample_fleet(n: int, mix: Mapping[str, float] | str, *, rng: np.random.Generator,
                 jitter: float = 0.25) -> list[DeviceProfile]:
    """Draw ``n`` device profiles from a tier mix, jittering the continuous figures.

    Each device's tier is drawn independently with probability proportional to its weight in
    ``mix`` (see :func:`parse_mix`).  Then ``flops``, ``up_bps``, ``down_bps`` and ``latency_s``
    are each multiplied by an independent log-normal factor ``exp(N(0, jitter²))``, which keeps
    the tier figure as the median.  The per-byte energies follow the jittered rates through the
    tier's radio power model (:data:`RADIO`: power at the device's own rate ÷ that rate), so a
    faster device spends less per byte and no radio draws more than its ceiling.
    ``memory_bytes``, ``battery_j`` and the per-FLOP energy are not jittered.  ``jitter=0``
    reproduces the tier figures exactly.

    The result depends only on ``n``, the mix (not the order of its keys) and the state of
    ``rng``.

    Parameters
    ----------
    n : int
        Number of devices (>= 0).
    mix : mapping or str
        Tier weights, normalised; see :func:`parse_mix`.
    rng : numpy.random.Generator
        Source of randomness; advanced by the call.
    jitter : float, default 0.25
        Log-normal sigma of the per-device factors (>= 0).

    Returns
    -------
    list[DeviceProfile]

    Examples
    --------
    >>> import numpy as np
    >>> fleet = sample_fleet(3, "mid_range", rng=np.random.default_rng(1), jitter=0)
    >>> all(d == TIERS["mid_range"] for d in fleet)
    True
    >>> a = sample_fleet(5, {"low_end": .5, "tablet": .5}, rng=np.random.default_rng(7))
    >>> b = sample_fleet(5, {"tablet": .5, "low_end": .5}, rng=np.random.default_rng(7))
    >>> a == b
    True
    """
    return list(sample_fleet_table(n, mix, rng=rng, jitter=jitter))
