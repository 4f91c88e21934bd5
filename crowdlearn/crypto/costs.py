"""What the secure-aggregation primitives cost, calibrated on the running machine.

A device's simulated time for a job is ``flops / profile.flops``.  Cryptography is not FLOPs, so
each primitive is timed here on the host and converted to *FLOP-equivalents*: seconds on the host
× the host's measured dense-matmul rate.  A device then runs the primitive ``profile.flops /
host_flops`` times slower or faster than the host, the same scaling the simulator applies to
training.  Calibration (about 0.3 s; the least CPU time of 7 per primitive) runs once per machine:
its result is kept in a cache file (:func:`cached_calibration`) and reused, so that the same seed
gives the same simulated times in every run on this machine; it is recorded in ``summary.json``
with the machine's load when it was measured.  A calibration measured on a busy machine is off
(here: host rate 43-55 G FLOP/s at load 3-6 on 2 CPUs against 93-95 G quiet, the primitives
slowed less, so every primitive's FLOP-equivalents about halved), so it is flagged and every run
that uses it warns.  Set ``CROWDLEARN_RECALIBRATE=1`` to measure again (on a quiet machine, or
after a hardware change).

Examples
--------
>>> c = calibrate()
>>> c.flops(keygen=2, agree=3) > 0
True
"""

from __future__ import annotations

import functools
from dataclasses import asdict, dataclass, field, fields

import numpy as np

from crowdlearn.files import replace_text

__all__ = ["CryptoCosts", "cached_calibration", "calibrate", "machine_load"]


@dataclass(frozen=True)
class CryptoCosts:
    """FLOP-equivalents of one primitive operation each."""

    host_flops: float          # measured float32 matmul FLOP/s of the host
    keygen: float              # one X25519 key pair
    agree: float               # one X25519 exchange + HKDF
    prg_byte: float            # one byte of the mask keystream (AES-128 counter blocks through GCM) + its add
    aead_byte: float           # one byte through AES-GCM
    field_mul: float           # one multiply-add mod p (Shamir sharing and reconstruction)
    # the machine's load when these were measured (machine_load); None in older caches
    measured_load: dict | None = field(default=None, compare=False)

    def flops(self, *, keygen: int = 0, agree: int = 0, prg_bytes: float = 0,
              aead_bytes: float = 0, field_muls: float = 0) -> float:
        return (keygen * self.keygen + agree * self.agree + prg_bytes * self.prg_byte
                + aead_bytes * self.aead_byte + field_muls * self.field_mul)

    def to_dict(self) -> dict:
        return asdict(self)


def _best(fn, reps: int = 7) -> float:
    """The least CPU time of ``reps`` calls of ``fn``, in seconds (this process's CPU clock, every
    thread of it): a call descheduled while other tenants run is not charged their time slices,
    and a primitive that used several threads is charged all their work, as a one-core device pays
    it.  (Cores shared with a busy hyperthread still run slower: :func:`cached_calibration`
    records the load and warns.)

    >>> import time
    >>> _best(lambda: time.sleep(0.02)) < 0.01       # waiting is not charged
    True
    """
    # measurement only: imported here so the primitives' module graph stays clock-free
    import time

    best = float("inf")
    for _ in range(reps):
        t0 = time.process_time()
        fn()
        best = min(best, time.process_time() - t0)
    return best


# a calibration measured above this 1-minute load average per CPU is flagged (see cached_calibration)
LOADED = 1.0


def machine_load() -> dict:
    """The machine's 1-minute load average and CPU count now (``os.getloadavg``), as recorded
    beside a calibration; ``loaded`` when the load per CPU exceeds :data:`LOADED`.

    >>> sorted(machine_load())
    ['cpus', 'load_average_1min', 'loaded']
    """
    import os

    cpus = os.cpu_count() or 1
    try:
        load = os.getloadavg()[0]
    except OSError:                      # not available on this platform: nothing to flag
        return {"load_average_1min": None, "cpus": cpus, "loaded": False}
    return {"load_average_1min": round(load, 2), "cpus": cpus, "loaded": load / cpus > LOADED}


def cache_path(name: str):
    """Where the calibration ``name`` of this machine is kept (``$CROWDLEARN_CACHE`` or
    ``~/.cache/crowdlearn``), keyed by the host and the versions that set the speed."""
    import hashlib
    import os
    import platform
    from importlib.metadata import PackageNotFoundError, version
    from pathlib import Path

    parts = [platform.node(), platform.machine(), platform.python_version()]
    for pkg in ("numpy", "cryptography", "gmpy2"):
        try:
            parts.append(f"{pkg}={version(pkg)}")
        except PackageNotFoundError:
            parts.append(f"{pkg}=?")
    key = hashlib.sha256("|".join(parts).encode()).hexdigest()[:16]
    root = Path(os.environ.get("CROWDLEARN_CACHE") or Path.home() / ".cache" / "crowdlearn")
    return root / f"{name}-{key}.json"


def cached_calibration(name: str, measure) -> dict:
    """``measure()`` (a JSON-able dict of timings) once per machine; later calls read the file.

    A missing, unreadable or unwritable cache falls back to measuring (the run still works; only
    the cross-run reproducibility of simulated times is lost).  ``CROWDLEARN_RECALIBRATE=1``
    measures again and replaces the file.  The machine's load during the measurement is kept
    under ``measured_load`` (:func:`machine_load`); when it was busy, a :class:`RuntimeWarning`
    says so and how to measure again.
    """
    import json
    import os

    path = cache_path(name)
    values = None
    if os.environ.get("CROWDLEARN_RECALIBRATE") != "1":
        try:
            values = json.loads(path.read_text())
        except (OSError, ValueError):
            pass
    if values is None:
        before = machine_load()
        values = dict(measure())
        after = machine_load()
        values["measured_load"] = max(before, after, key=lambda m: m["load_average_1min"] or 0)
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            replace_text(path, json.dumps(values, sort_keys=True))
        except OSError:
            pass
    load = values.get("measured_load") or {}
    if load.get("loaded"):
        import warnings
        warnings.warn(f"the {name} calibration was measured on a busy machine (load average "
                      f"{load['load_average_1min']} on {load['cpus']} CPUs), so the simulated "
                      f"cost of cryptography may be far off; measure it again on a quiet machine "
                      f"with CROWDLEARN_RECALIBRATE=1 (cache: {path})", RuntimeWarning, stacklevel=2)
    return values


@functools.lru_cache(maxsize=1)
def calibrate() -> CryptoCosts:
    """The primitives' FLOP-equivalents on this machine (measured once, then cached).

    The cache's name changes with what is measured: v3 since the mask PRG runs through AES-GCM
    (``masking._Keystream``), so a PRG byte's cost is that of the keystream the protocol expands.
    """
    values = cached_calibration("secagg-costs-v3", lambda: asdict(_measure()))
    return CryptoCosts(**{f.name: values[f.name] for f in fields(CryptoCosts)
                          if f.name != "measured_load"},
                       measured_load=values.get("measured_load"))


def _measure() -> CryptoCosts:
    """Time each primitive on this machine (least CPU time of 7) and convert to FLOP-equivalents."""
    import gmpy2
    from threadpoolctl import threadpool_limits

    from crowdlearn.crypto import keyagreement as ka
    from crowdlearn.crypto import masking, shamir

    # small matrices: BLAS runs them on one thread, like the (single-threaded) primitives, and a
    # loaded machine's thread contention does not distort the rate
    a = np.ones((64, 64), np.float32)
    with threadpool_limits(limits=1, user_api="blas"):
        mm = _best(lambda: [a @ a for _ in range(200)])
    host = 200 * 2 * 64 ** 3 / mm
    keys = [ka.keypair(bytes([i + 1]) * 32) for i in range(20)]
    pubs = [ka.public_bytes(k) for k in keys]
    t_key = _best(lambda: [ka.public_bytes(ka.keypair(bytes([i + 7]) * 32))
                           for i in range(20)]) / 20
    t_agree = _best(lambda: [ka.agree(keys[0], p, b"c") for p in pubs]) / 20
    nbytes = 1 << 20
    acc = masking.MaskAccumulator(nbytes // 4, 32)
    t_prg = _best(lambda: acc.add_prg(b"s" * 32, +1)) / nbytes
    blob = bytes(1 << 16)
    t_aead = _best(lambda: ka.seal(b"k" * 32, blob, aad=b"c")) / len(blob)
    prime = gmpy2.mpz(shamir.PRIME)
    xs = [prime - i for i in range(1, 2001)]
    t_mul = _best(lambda: functools.reduce(lambda acc, x: (acc + x) * x % prime, xs,
                                           gmpy2.mpz(1))) / len(xs)
    return CryptoCosts(host_flops=host, keygen=t_key * host, agree=t_agree * host,
                       prg_byte=t_prg * host, aead_byte=t_aead * host, field_mul=t_mul * host)
