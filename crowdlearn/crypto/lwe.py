"""Phong et al.'s LWE-based additively homomorphic encryption, exact and vectorised with numpy.

Parameters (Phong et al. 2018, Section 5): ``n_lwe = 3000``, Gaussian noise of standard deviation
``s = 8``, plaintext modulus ``p = 2**48 + 1``, ciphertext modulus ``q = 2**77``, reals encoded as
``round(r * 2**32) mod p``.  A vector ``m`` in ``Z_p^l`` split over ``n_pu`` processing units
encrypts, per unit, to ``(c1, c2) in Z_q^n_lwe x Z_q^l_part`` with ``c2 + S c1 = m + p e (mod q)``;
ciphertexts add component-wise mod ``q``, so a ciphertext costs ``(n_pu n_lwe + l) log2 q`` bits.

Choices [ours]
--------------
* **Symmetric-key encryption.**  In Phong's protocol every participant holds the secret key ``S``,
  so we encrypt with it: ``c1 = a`` uniform, ``c2 = m + p e - S a``.  The ciphertext has exactly the
  shape and size of the public-key variant (``c1 = e1 A + p e2``, ``c2 = e1 P + p e3 + m``) but
  avoids storing the ``n_lwe x l`` public matrix ``P`` (3000 x 109,386 elements of 77 bits, 3 GB),
  and its noise is one Gaussian per coordinate, which gives a *deterministic* bound on how many
  ciphertexts may be added (below).
* **Representation of Z_q, q = 2**77.**  Elements are pairs of int64 limbs ``(hi, lo)`` with
  ``v = hi * 2**40 + lo``, ``0 <= lo < 2**40``, ``0 <= hi < 2**37``: addition is two int64 adds and a
  carry, and reduction mod ``q`` is a mask because ``q`` is a power of two.  The product ``S a`` (``S``
  small, tail-cut at 12 s = 96 so it is stored as int8, ``a`` uniform mod ``q``) is computed with
  BLAS in float64: ``a`` is split into three 26-bit limbs and every partial dot product is below
  ``n_lwe * 96 * 2**26 < 2**53``, hence exact; the three exact products are recombined into
  ``(hi, lo)`` mod ``q`` with integer shifts and masks.  Object arrays of Python ints would be
  exact too but about two orders of magnitude slower.
* **How many additions.**  A sum of ``k`` fresh ciphertexts decrypts to ``sum m_i + p sum e_i`` with
  ``0 <= m_i < p`` and ``|e_i| <= 96``; it opens correctly while ``k p (1 + 96) < q / 2``
  (2.77 million additions for Phong's parameters).  The *values* must not wrap mod ``p`` either: each
  encoding is at most ``2**(value_bits - 1)`` in magnitude, so ``k <= (p - 1) / 2**value_bits``
  (32,768 additions with the default ``value_bits = 33``, i.e. ``|r| < 1`` at 32 fractional bits).
  :class:`LWEVector` counts the encodings it sums and raises
  :class:`~crowdlearn.crypto.fixedpoint.PackingOverflowError` beyond the smaller bound.

Examples
--------
>>> from crowdlearn.crypto.randomness import CryptoRandom
>>> params = LWEParams(n_lwe=64)                       # tiny n_lwe: insecure, for the example
>>> key = LWEKey.generate(params, length=5, rand=CryptoRandom(seed=1))
>>> a = key.encrypt([1, -2, 3, 2**32 - 1, -2**32], rand=CryptoRandom(seed=2))
>>> key.decrypt(a + a).tolist()
[2, -4, 6, 8589934590, -8589934592]
>>> len(a.to_bytes()) == a.nbytes
True

References
----------
L. T. Phong et al., "Privacy-Preserving Deep Learning via Additively Homomorphic Encryption",
IEEE TIFS 13(5), 2018 (Section 5.1: LWE-based encryption, parameters and communication factor).
"""

from __future__ import annotations

import struct
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from itertools import pairwise

import numpy as np
from threadpoolctl import threadpool_limits

from crowdlearn.crypto.fixedpoint import PackingOverflowError
from crowdlearn.crypto.randomness import as_random

__all__ = ["LWEParams", "LWEKey", "LWEVector", "zq_from_ints", "zq_to_ints", "zq_add"]

LO_BITS = 40
_LO_MASK = np.int64((1 << LO_BITS) - 1)
_LIMB = 26          # float64 limb width for the exact S @ a product


@dataclass(frozen=True)
class LWEParams:
    """``n_lwe``, noise standard deviation ``s``, plaintext modulus ``p``, ``q = 2**log_q``,
    ``prec`` fractional bits of the fixed-point encoding and ``value_bits`` signed bits per encoding."""

    n_lwe: int = 3000
    s: float = 8.0
    p: int = 2 ** 48 + 1
    log_q: int = 77
    prec: int = 32
    value_bits: int = 33

    def __post_init__(self):
        if not 41 <= self.log_q <= 3 * _LIMB:
            raise ValueError(f"log_q must be in 41..{3 * _LIMB} for the two-limb representation; got {self.log_q}")
        if not 2 < self.p < 2 ** 52:
            raise ValueError(f"p must be in (2, 2**52); got {self.p}")
        if self.n_lwe < 1 or self.n_lwe * self.tail * 2 ** _LIMB >= 2 ** 53:
            raise ValueError(f"n_lwe={self.n_lwe} breaks the exactness bound n_lwe * {self.tail} * 2**{_LIMB} < 2**53")
        if self.tail > 127:
            raise ValueError(f"s={self.s} gives noise beyond int8 (tail {self.tail}); use s <= 10")
        if not self.prec < self.value_bits <= self.p.bit_length() - 1:
            raise ValueError(f"value_bits must be in (prec, log2 p); got value_bits={self.value_bits}, prec={self.prec}")
        if self.max_count < 1:
            raise ValueError(f"p={self.p}, q=2**{self.log_q}, s={self.s}: not even one ciphertext opens; enlarge q")

    @property
    def q(self) -> int:
        return 1 << self.log_q

    @property
    def tail(self) -> int:
        """Bound on ``|noise|`` (the discrete Gaussian is tail-cut at 12 s)."""
        return int(np.ceil(12 * self.s))

    @property
    def max_count(self) -> int:
        """Most encodings a ciphertext may sum: the smaller of the noise and the value bounds."""
        noise = (self.q // 2 - 1) // (self.p * (1 + self.tail))
        values = (self.p - 1) // 2 ** self.value_bits
        return int(min(noise, values))

    def nbytes(self, length: int, n_pu: int = 1) -> int:
        """Encoded size of the encryption of ``length`` values over ``n_pu`` processing units."""
        return LWEVector.HEADER.size + (((n_pu * self.n_lwe + int(length)) * self.log_q + 7) // 8)

    def comm_factor(self, length: int, n_pu: int = 1, *, plain_bits: int = 32) -> float:
        """Phong's formula ``n_pu n_lwe log2 q / (l prec) + log2 q / prec`` (with ``prec`` = plain bits)."""
        return n_pu * self.n_lwe * self.log_q / (length * plain_bits) + self.log_q / plain_bits


# ---------------------------------------------------------------- Z_q with two int64 limbs

def _hi_mask(log_q: int) -> np.int64:
    return np.int64((1 << (log_q - LO_BITS)) - 1)


def zq_from_ints(values, log_q: int = 77) -> tuple[np.ndarray, np.ndarray]:
    """Python ints (any sign) to ``(hi, lo)`` limbs mod ``2**log_q``."""
    q = 1 << log_q
    vs = [int(v) % q for v in values]
    lo = np.array([v & ((1 << LO_BITS) - 1) for v in vs], dtype=np.int64)
    hi = np.array([v >> LO_BITS for v in vs], dtype=np.int64)
    return hi, lo


def zq_to_ints(hi: np.ndarray, lo: np.ndarray) -> list[int]:
    """``(hi, lo)`` limbs back to Python ints in ``[0, q)``."""
    return [(int(h) << LO_BITS) | int(x) for h, x in zip(hi.tolist(), lo.tolist(), strict=True)]


def zq_add(a: tuple, b: tuple, log_q: int = 77) -> tuple[np.ndarray, np.ndarray]:
    """``a + b mod 2**log_q`` limb-wise with carry."""
    lo = a[1] + b[1]
    hi = (a[0] + b[0] + (lo >> LO_BITS)) & _hi_mask(log_q)
    return hi, lo & _LO_MASK


def _signed_to_zq(x: np.ndarray, log_q: int) -> tuple[np.ndarray, np.ndarray]:
    """int64 (any sign) to limbs mod ``2**log_q`` (two's complement: shifts and masks are exact)."""
    return (x >> LO_BITS) & _hi_mask(log_q), x & _LO_MASK


def _split_limbs(hi: np.ndarray, lo: np.ndarray) -> np.ndarray:
    """``v = hi 2**40 + lo`` as three float64 columns of 26 bits: ``v = x0 + x1 2**26 + x2 2**52``."""
    m = (1 << _LIMB) - 1
    x0 = lo & m
    x1 = ((lo >> _LIMB) | (hi << (LO_BITS - _LIMB))) & m
    x2 = hi >> (2 * _LIMB - LO_BITS)
    return np.stack([x0, x1, x2], axis=1).astype(np.float64)


def _matvec_zq(S: np.ndarray, hi: np.ndarray, lo: np.ndarray, log_q: int, *,
               chunk: int = 256, workers: int = 1) -> tuple[np.ndarray, np.ndarray]:
    """``S @ a mod 2**log_q`` for small int8 ``S`` (rows x n) and ``a`` in limbs, exactly."""
    A = _split_limbs(hi, lo)                      # n x 3, entries < 2**26
    rows = S.shape[0]
    P = np.empty((rows, 3), dtype=np.float64)

    def run(start, stop):
        for r in range(start, stop, chunk):
            e = min(r + chunk, stop)
            np.matmul(S[r:e].astype(np.float64), A, out=P[r:e])

    # one BLAS thread per call: OpenBLAS's own threads on these thin products cost more than they
    # save (measured 10x slower on a loaded 2-core machine); ``workers`` threads split the rows
    with threadpool_limits(limits=1, user_api="blas"):
        if workers > 1 and rows >= 2 * chunk:
            cut = np.linspace(0, rows, workers + 1).astype(int)
            with ThreadPoolExecutor(workers) as ex:
                list(ex.map(lambda ab: run(*ab), pairwise(cut)))
        else:
            run(0, rows)
    P = P.astype(np.int64)                        # exact: |entries| < 2**53
    p0, p1, p2 = P[:, 0], P[:, 1], P[:, 2]
    # p1 * 2**26 split so that nothing exceeds 63 bits: low 14 bits of p1 land in lo
    lo = (p0 & _LO_MASK) + ((p1 & ((1 << (LO_BITS - _LIMB)) - 1)) << _LIMB)
    hi = (p0 >> LO_BITS) + (p1 >> (LO_BITS - _LIMB)) + (p2 << (2 * _LIMB - LO_BITS)) + (lo >> LO_BITS)
    return hi & _hi_mask(log_q), lo & _LO_MASK


# ---------------------------------------------------------------- keys and ciphertexts

@dataclass(frozen=True, eq=False)
class LWEVector:
    """An LWE encryption of ``length`` values over ``n_pu`` processing units, summing ``count``
    encodings.  ``c1_hi/c1_lo`` have shape ``(n_pu, n_lwe)``, ``c2_hi/c2_lo`` shape ``(length,)``."""

    params: LWEParams
    key_id: bytes
    c1_hi: np.ndarray
    c1_lo: np.ndarray
    c2_hi: np.ndarray
    c2_lo: np.ndarray
    count: int = 1

    @property
    def length(self) -> int:
        return int(self.c2_lo.shape[0])

    @property
    def n_pu(self) -> int:
        return int(self.c1_lo.shape[0])

    def __add__(self, other):
        if not isinstance(other, LWEVector):
            return NotImplemented
        if other.params != self.params or other.key_id != self.key_id:
            raise ValueError("cannot add LWE ciphertexts under different keys or parameters")
        if other.c1_lo.shape != self.c1_lo.shape or other.length != self.length:
            raise ValueError(f"cannot add LWE vectors of shapes {(self.n_pu, self.length)} and "
                             f"{(other.n_pu, other.length)}")
        total = self.count + other.count
        if total > self.params.max_count:
            raise PackingOverflowError(
                f"a sum of {total} LWE encodings can wrap (p={self.params.p}, q=2**{self.params.log_q}, "
                f"value_bits={self.params.value_bits} allow {self.params.max_count}); lower value_bits "
                "or add fewer updates")
        lq = self.params.log_q
        c1 = zq_add((self.c1_hi, self.c1_lo), (other.c1_hi, other.c1_lo), lq)
        c2 = zq_add((self.c2_hi, self.c2_lo), (other.c2_hi, other.c2_lo), lq)
        return LWEVector(self.params, self.key_id, *c1, *c2, count=total)

    HEADER = struct.Struct(">IIIH8s")   # n_pu, n_lwe, length, log_q, key id

    @property
    def nbytes(self) -> int:
        return self.params.nbytes(self.length, self.n_pu)

    def to_bytes(self) -> bytes:
        """Header, then every element of ``c1`` then ``c2`` as ``log_q``-bit little-endian fields."""
        lq = self.params.log_q
        hi = np.concatenate([self.c1_hi.ravel(), self.c2_hi])
        lo = np.concatenate([self.c1_lo.ravel(), self.c2_lo])
        sh_lo = np.arange(LO_BITS, dtype=np.int64)
        sh_hi = np.arange(lq - LO_BITS, dtype=np.int64)
        bits = np.concatenate([(lo[:, None] >> sh_lo) & 1, (hi[:, None] >> sh_hi) & 1], axis=1)
        body = np.packbits(bits.astype(np.uint8).ravel(), bitorder="little").tobytes()
        head = self.HEADER.pack(self.n_pu, self.params.n_lwe, self.length, lq, self.key_id)
        return head + body

    @classmethod
    def from_bytes(cls, params: LWEParams, data: bytes, *, count: int = 1) -> LWEVector:
        n_pu, n_lwe, length, lq, key_id = cls.HEADER.unpack_from(data)
        if (n_lwe, lq) != (params.n_lwe, params.log_q):
            raise ValueError(f"LWE vector for n_lwe={n_lwe}, log_q={lq} does not match {params}")
        total = n_pu * n_lwe + length
        if len(data) != params.nbytes(length, n_pu):
            raise ValueError(f"LWE vector: expected {params.nbytes(length, n_pu)} bytes, got {len(data)}")
        bits = np.unpackbits(np.frombuffer(data, np.uint8, offset=cls.HEADER.size),
                             bitorder="little")[:total * lq].reshape(total, lq).astype(np.int64)
        lo = (bits[:, :LO_BITS] << np.arange(LO_BITS, dtype=np.int64)).sum(axis=1)
        hi = (bits[:, LO_BITS:] << np.arange(lq - LO_BITS, dtype=np.int64)).sum(axis=1)
        k = n_pu * n_lwe
        return cls(params, key_id, hi[:k].reshape(n_pu, n_lwe), lo[:k].reshape(n_pu, n_lwe),
                   hi[k:], lo[k:], count=count)


class LWEKey:
    """The secret matrix ``S`` (``length x n_lwe``, int8, discrete Gaussian) shared by Phong's participants."""

    #: threads for the ``S @ a`` products (numpy releases the GIL); 1 = no threads
    workers: int = 1

    def __init__(self, params: LWEParams, S: np.ndarray, key_id: bytes):
        if S.dtype != np.int8 or S.ndim != 2 or S.shape[1] != params.n_lwe:
            raise ValueError(f"S must be an int8 (length, {params.n_lwe}) matrix; got {S.dtype} {S.shape}")
        self.params, self.S, self.key_id = params, S, bytes(key_id)

    @classmethod
    def generate(cls, params: LWEParams, length: int, *, rand=None, chunk: int = 4096) -> LWEKey:
        """A fresh key for vectors of ``length`` values (``rand`` as in :class:`CryptoRandom`)."""
        rand = as_random(rand)
        S = np.empty((int(length), params.n_lwe), dtype=np.int8)
        for r in range(0, S.shape[0], chunk):
            S[r:r + chunk] = rand.gaussian((min(chunk, S.shape[0] - r), params.n_lwe), params.s, dtype=np.int8)
        return cls(params, S, rand.bytes(8))

    @property
    def length(self) -> int:
        return int(self.S.shape[0])

    def parts(self, n_pu: int) -> list[slice]:
        """The slices of the vector served by each of ``n_pu`` processing units."""
        if not 1 <= n_pu <= self.length:
            raise ValueError(f"n_pu must be in 1..{self.length}; got {n_pu}")
        bounds = np.linspace(0, self.length, n_pu + 1).round().astype(int)
        return [slice(int(a), int(b)) for a, b in pairwise(bounds)]

    def encrypt(self, values, *, n_pu: int = 1, rand=None) -> LWEVector:
        """Encrypt signed integers (``|v| < 2**(value_bits-1)``), e.g. ``FixedPoint(prec=32).encode(x)``."""
        pr = self.params
        v = np.asarray(values, dtype=np.int64)
        if v.shape != (self.length,):
            raise ValueError(f"expected {self.length} values; got shape {v.shape}")
        lim = np.int64(1) << (pr.value_bits - 1)
        if v.size and (v.min() < -lim or v.max() >= lim):
            raise ValueError(f"values must be in [-2**{pr.value_bits - 1}, 2**{pr.value_bits - 1}); "
                             f"got range [{v.min()}, {v.max()}]")
        rand = as_random(rand)
        lq = pr.log_q
        m = np.where(v < 0, v + pr.p, v)                       # representative in [0, p)
        e = rand.gaussian(v.shape, pr.s)
        x_hi, x_lo = _signed_to_zq(m + np.int64(pr.p) * e, lq)  # |m + p e| < 2**56
        c1_hi = np.empty((n_pu, pr.n_lwe), np.int64)
        c1_lo = np.empty((n_pu, pr.n_lwe), np.int64)
        c2_hi = np.empty(self.length, np.int64)
        c2_lo = np.empty(self.length, np.int64)
        for j, sl in enumerate(self.parts(n_pu)):
            c1_lo[j] = rand.uniform_bits(pr.n_lwe, LO_BITS)
            c1_hi[j] = rand.uniform_bits(pr.n_lwe, lq - LO_BITS)
            s_hi, s_lo = _matvec_zq(self.S[sl], c1_hi[j], c1_lo[j], lq, workers=self.workers)
            neg = zq_add((x_hi[sl], x_lo[sl]), _neg((s_hi, s_lo), lq), lq)
            c2_hi[sl], c2_lo[sl] = neg
        return LWEVector(pr, self.key_id, c1_hi, c1_lo, c2_hi, c2_lo, count=1)

    def decrypt(self, vec: LWEVector) -> np.ndarray:
        """The exact int64 sum of the ``vec.count`` signed integers that ``vec`` encrypts."""
        pr = self.params
        if vec.key_id != self.key_id or vec.params != pr:
            raise ValueError("LWE ciphertext was made under another key")
        if vec.length != self.length:
            raise ValueError(f"ciphertext has {vec.length} values, key {self.length}")
        lq = pr.log_q
        hi = np.empty(self.length, np.int64)
        lo = np.empty(self.length, np.int64)
        for j, sl in enumerate(self.parts(vec.n_pu)):
            s = _matvec_zq(self.S[sl], vec.c1_hi[j], vec.c1_lo[j], lq, workers=self.workers)
            hi[sl], lo[sl] = zq_add((vec.c2_hi[sl], vec.c2_lo[sl]), s, lq)
        return _centre_mod_p(hi, lo, lq, pr.p)


def _neg(a: tuple, log_q: int) -> tuple[np.ndarray, np.ndarray]:
    """``-a mod 2**log_q``: ones' complement plus one, in limbs."""
    return zq_add(((~a[0]) & _hi_mask(log_q), (~a[1]) & _LO_MASK),
                  (np.zeros_like(a[0]), np.ones_like(a[1])), log_q)


def _centre_mod_p(hi: np.ndarray, lo: np.ndarray, log_q: int, p: int) -> np.ndarray:
    """Lift ``v mod q`` to ``(-q/2, q/2]``, reduce mod ``p`` and return the signed residue."""
    negative = hi >= (np.int64(1) << (log_q - LO_BITS - 1))
    t = hi % np.int64(p)
    step = 62 - p.bit_length()                   # t < p, so t << step stays below 2**62
    left = LO_BITS
    while left:
        k = min(step, left)
        t = (t << k) % np.int64(p)
        left -= k
    t = (t + lo % np.int64(p)) % np.int64(p)     # v mod p
    t = np.where(negative, (t - np.int64((1 << log_q) % p)) % np.int64(p), t)
    return np.where(t > p // 2, t - np.int64(p), t)
