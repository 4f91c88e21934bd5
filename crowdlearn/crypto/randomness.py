"""Cryptographic randomness for keys and encryption: an AES-256-CTR keystream.

Every key and every piece of encryption randomness in :mod:`crowdlearn.crypto` (Paillier, LWE,
HRES) comes from a :class:`CryptoRandom`.  By default it is keyed with 32 bytes from
``os.urandom`` (the kernel's CSPRNG); AES-CTR then expands the key into as many bytes as needed at
memory speed, which matters for LWE (hundreds of thousands of noise samples per encryption).

``CryptoRandom(seed=...)`` derives the AES key from the seed instead.  That makes runs
reproducible and is **insecure** (anyone who knows the seed knows every key): it exists for tests and
simulations that must replay, never for protecting data.

Examples
--------
>>> a, b = CryptoRandom(seed=7), CryptoRandom(seed=7)
>>> a.bytes(8) == b.bytes(8)
True
>>> int(CryptoRandom().below(10)) in range(10)
True
"""

from __future__ import annotations

import hashlib
import os

import numpy as np
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

# gmpy2 is imported where big integers are made: importing it pulls in importlib.metadata, email
# and socket, which the LWE code (numpy only) and configuration checks should not pay for.

__all__ = ["CryptoRandom", "as_random"]


class CryptoRandom:
    """A keystream generator (AES-256 in counter mode) with helpers for big integers and noise.

    Parameters
    ----------
    seed
        ``None`` (default): key from ``os.urandom`` — use this for anything real.  An int or str:
        a reproducible, **insecure** stream for tests and replayable simulations.
    """

    def __init__(self, seed: int | str | None = None):
        if seed is None:
            key = os.urandom(32)
            self.seeded = False
        else:
            key = hashlib.sha256(f"crowdlearn-insecure-test-seed/{seed}".encode()).digest()
            self.seeded = True
        self._enc = Cipher(algorithms.AES(key), modes.CTR(b"\0" * 16)).encryptor()

    @classmethod
    def from_key(cls, key: bytes) -> CryptoRandom:
        """A stream keyed by 32 bytes that came from another cryptographic stream."""
        if len(key) != 32:
            raise ValueError(f"AES-256 key must be 32 bytes; got {len(key)}")
        self = cls.__new__(cls)
        self.seeded = False
        self._enc = Cipher(algorithms.AES(bytes(key)), modes.CTR(b"\0" * 16)).encryptor()
        return self

    def bytes(self, n: int) -> bytes:
        """``n`` pseudo-random bytes."""
        return self._enc.update(bytes(int(n)))

    def bits(self, k: int):
        """A uniform integer in ``[0, 2**k)`` (a gmpy2 ``mpz``)."""
        from gmpy2 import mpz
        nbytes = (k + 7) // 8
        v = mpz(int.from_bytes(self.bytes(nbytes), "little"))
        return v & ((mpz(1) << k) - 1)

    def below(self, bound):
        """A uniform integer in ``[0, bound)`` (rejection sampling, no modulo bias)."""
        from gmpy2 import mpz
        bound = mpz(bound)
        if bound < 1:
            raise ValueError(f"bound must be >= 1; got {bound}")
        k = int(bound.bit_length())
        while True:
            v = self.bits(k)
            if v < bound:
                return v

    def unit(self, n):
        """A uniform element of ``Z_n^*``."""
        import gmpy2
        n = gmpy2.mpz(n)
        while True:
            v = self.below(n)
            if v > 0 and gmpy2.gcd(v, n) == 1:
                return v

    def prime(self, bits: int):
        """A uniform-looking prime of exactly ``bits`` bits with the top two bits set
        (so that the product of two such primes has exactly ``2 * bits`` bits)."""
        if bits < 16:
            raise ValueError(f"prime size must be at least 16 bits; got {bits}")
        import gmpy2
        top = (gmpy2.mpz(3) << (bits - 2))
        while True:
            cand = self.bits(bits - 2) | top | 1
            if gmpy2.is_prime(cand, 50):
                return cand

    def uint64(self, count: int) -> np.ndarray:
        """``count`` uniform 64-bit words."""
        return np.frombuffer(self.bytes(8 * int(count)), dtype=np.uint64).copy()

    def uniform_bits(self, count: int, k: int) -> np.ndarray:
        """``count`` uniform integers in ``[0, 2**k)`` as int64, ``k <= 63``."""
        if not 0 < k <= 63:
            raise ValueError(f"k must be in 1..63; got {k}")
        return (self.uint64(count) >> np.uint64(64 - k)).astype(np.int64)

    def gaussian(self, shape, sigma: float, *, dtype=np.int64) -> np.ndarray:
        """Discrete Gaussian samples (standard deviation ``sigma``) by inversion of a cumulative
        table with 63-bit resolution, tail-cut at ``12 * sigma`` (the cut mass is below 2**-100).

        The table look-up is not constant-time; a simulator does not need it to be.
        """
        table, lo = _cdt(float(sigma))
        count = int(np.prod(shape))
        u = self.uint64(count) >> np.uint64(1)
        return (np.searchsorted(table, u, side="right") + lo).astype(dtype).reshape(shape)


_CDT_CACHE: dict[float, tuple[np.ndarray, int]] = {}


def _cdt(sigma: float) -> tuple[np.ndarray, int]:
    """Cumulative table of the discrete Gaussian on ``[-12 sigma, 12 sigma]`` scaled to 2**63."""
    if sigma <= 0:
        raise ValueError(f"sigma must be positive; got {sigma}")
    if sigma not in _CDT_CACHE:
        tail = int(np.ceil(12 * sigma))
        xs = np.arange(-tail, tail + 1, dtype=np.float64)
        w = np.exp(-xs ** 2 / (2 * sigma ** 2))
        cdf = np.cumsum(w / w.sum())[:-1]
        # searchsorted(side="right") maps u < cdf[0] to index 0, i.e. value -tail
        _CDT_CACHE[sigma] = (np.minimum(cdf * 2.0 ** 63, 2.0 ** 63 - 1).astype(np.uint64), -tail)
    return _CDT_CACHE[sigma]


def as_random(rand: CryptoRandom | int | str | None) -> CryptoRandom:
    """``rand`` itself, or a new :class:`CryptoRandom` seeded with it (``None``: from the OS)."""
    return rand if isinstance(rand, CryptoRandom) else CryptoRandom(rand)
