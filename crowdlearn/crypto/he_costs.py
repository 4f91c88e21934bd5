"""Cost model of the homomorphic primitives, calibrated by timing them on the running machine.

This module measures CPU time, so it belongs with the drivers (ring 2): ``crowdlearn.experiment`` calls
:func:`calibrate` and hands the result to the protocol builder; protocol code only reads numbers.

A job's cost is charged in FLOP-equivalents: ``seconds measured here x host FLOP/s`` (the host's
float64 matmul rate, measured in the same call), so a device whose profile is twice as fast as
this machine spends half the measured time.  That is an approximation — big-integer arithmetic
does not scale with FLOP/s exactly — recorded with the figures in ``summary.json``.

Calibrations are measured once per machine and parameter set and kept in a cache file
(:func:`crowdlearn.crypto.costs.cached_calibration`; ``CROWDLEARN_RECALIBRATE=1`` measures again),
so every run on this machine, in any process, uses identical costs and hence identical simulated
schedules for the same seed (``real`` and ``priced`` mode included).
"""

from __future__ import annotations

import numpy as np

from crowdlearn.crypto.schemes import Scheme

__all__ = ["calibrate", "host_flops"]

_CACHE: dict = {}


def host_flops(reps: int = 10, n: int = 384) -> float:
    """Single-thread float64 matmul FLOP/s of this machine (best of ``reps`` ``n^3`` products).

    One thread, like the crypto it prices; the least CPU time of several runs
    (:func:`crowdlearn.crypto.costs._best`: a shared machine's other tenants are not charged)."""
    from threadpoolctl import threadpool_limits

    from crowdlearn.crypto.costs import _best as cpu_best
    a = np.random.default_rng(0).standard_normal((n, n))
    with threadpool_limits(limits=1, user_api="blas"):
        best = cpu_best(lambda: a @ a, reps)
    return 2 * n ** 3 / best


def _best(fn, reps=10):
    """Least CPU time of ``reps`` calls (the same clock and rule as :func:`host_flops`, so the two
    stay comparable: :func:`crowdlearn.crypto.costs._best`)."""
    from crowdlearn.crypto.costs import _best as cpu_best
    return cpu_best(fn, reps)


def calibrate(scheme: Scheme) -> dict:
    """Seconds per whole-vector ``encrypt``, ``decrypt`` and ``add`` of ``scheme`` on this machine,
    from the least CPU time of 10 calls on one ciphertext (Paillier) or 512 rows (LWE), scaled linearly."""
    key = (scheme.name, scheme.length, getattr(scheme, "key_bits", None),
           getattr(scheme, "pad", None), getattr(getattr(scheme, "params", None), "n_lwe", None),
           getattr(scheme, "n_pu", None))
    if getattr(scheme, "variant", "standard") != "standard":     # standard keeps its cache name
        key += (scheme.variant,)
    if key in _CACHE:
        return dict(_CACHE[key])
    from crowdlearn.crypto.costs import cached_calibration
    name = "he-costs-" + "-".join(str(k) for k in key)
    _CACHE[key] = cached_calibration(name, lambda: _measure(scheme))
    return dict(_CACHE[key])


def _measure(scheme: Scheme) -> dict:
    """Time the scheme's primitives now (see :func:`calibrate`)."""
    out = {"host_flops": host_flops(), "encrypt_s": 0.0, "decrypt_s": 0.0, "add_s": 0.0}
    if scheme.name == "paillier":
        from crowdlearn.crypto.paillier import PaillierPacking, generate_keypair
        sk = generate_keypair(scheme.key_bits, variant=scheme.variant)
        codec = PaillierPacking(sk.public_key, prec=scheme.prec, pad=scheme.pad)
        k = 1
        v = np.zeros(k * codec.slots, np.int64)
        enc = lambda: codec.encrypt(v, pool=sk.pool(k))                      # noqa: E731
        c = enc()
        per = scheme.ciphertexts / k
        out["encrypt_s"] = _best(enc) * per                # pool filling (CRT) + packing + multiply
        out["decrypt_s"] = _best(lambda: codec.decrypt(c, sk)) * per
        out["add_s"] = _best(lambda: c + c) * per
    elif scheme.name == "lwe":
        from crowdlearn.crypto.lwe import LWEKey, zq_add
        rows = min(scheme.length, 512)
        k = LWEKey.generate(scheme.params, rows)
        v = np.zeros(rows, np.int64)
        c = k.encrypt(v, n_pu=1)
        per = scheme.length / rows
        out["encrypt_s"] = _best(lambda: k.encrypt(v)) * per
        out["decrypt_s"] = _best(lambda: k.decrypt(c)) * per
        out["add_s"] = _best(lambda: zq_add((c.c2_hi, c.c2_lo), (c.c2_hi, c.c2_lo))) * per
    elif scheme.name == "hres":
        from crowdlearn.crypto.hres import HRESGroup, HRESPacking, dsp_reencrypt, kts_reencrypt
        g = HRESGroup.generate(scheme.key_bits)
        dsp, kts, who = g.keypair(), g.keypair(), g.keypair()
        PK = g.joint_key(dsp.pk, kts.sk)
        codec = HRESPacking(g, prec=scheme.prec, pad=scheme.pad)
        v = np.zeros(codec.slots, np.int64)
        c = codec.encrypt(v, PK)
        req = dsp_reencrypt(g, c, dsp.sk, who.pk)
        down = kts_reencrypt(g, req, kts.sk, who.pk)
        per = scheme.ciphertexts
        out["encrypt_s"] = _best(lambda: codec.encrypt(v, PK)) * per
        out["decrypt_s"] = _best(lambda: codec.decrypt(down, who.sk)) * per
        out["add_s"] = _best(lambda: c + c) * per
        out["dsp_stage_s"] = _best(lambda: dsp_reencrypt(g, c, dsp.sk, who.pk)) * per
        out["kts_stage_s"] = _best(lambda: kts_reencrypt(g, req, kts.sk, who.pk)) * per
    return out
