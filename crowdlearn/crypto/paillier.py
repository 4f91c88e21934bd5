"""Paillier encryption with Phong et al.'s packing, on gmpy2.

Scheme (Paillier 1999, with ``g = n + 1``): ``E(m) = (1 + m n) * r^n mod n^2``; ciphertexts multiply
to add plaintexts.  Speed-ups [ours, measured in ``docs/benchmarks.md``]:

* **Randomness pool.**  ``r^n mod n^2`` does not depend on the message, so it is computed ahead of
  time (Phong et al. allow this) into a :class:`RandomnessPool`; encrypting is then one modular
  multiplication.  Each pool element is used once.  A key holder fills the pool by CRT: a uniform
  ``x in Z_p^*`` lifted as ``x^p mod p^2`` is a uniform element of the order-``(p-1)`` subgroup of
  ``Z_{p^2}^*``, which is exactly where ``r^n mod p^2`` lives for uniform ``r`` (``gcd(q, p-1) = 1``);
  two 1024-bit exponentiations modulo ``p^2`` and ``q^2`` replace one 2048-bit exponentiation
  modulo ``n^2`` (about 3.5 times cheaper).  Phong's participants all hold the secret key.
* **CRT decryption**: ``m_p = L_p(c^(p-1) mod p^2) * h_p mod p`` and likewise mod ``q``.
* **Packing** (Phong et al. 2018, Section 4): ``t = floor((|n| - 1) / (prec + pad))`` values per
  plaintext, each in its own slot of ``prec + pad`` bits.  Negative values are made non-negative by
  adding ``offset = 2**(prec-1)`` before packing; a ciphertext records how many encodings it sums
  (``count``) so that decryption removes ``count * offset``.  A slot overflows once the sum of
  ``count`` values below ``2**prec`` can reach ``2**(prec+pad)``, so adding beyond
  ``count = 2**pad`` raises :class:`~crowdlearn.crypto.fixedpoint.PackingOverflowError`.
* ``workers > 1`` spreads decryption (and pool filling) over processes.
* **Subgroup variant** (``generate_keypair(bits, variant="subgroup")``, Paillier's scheme 3):
  randomness ``h^r`` from a secret order-``alpha`` subgroup, ``alpha = alpha_p alpha_q`` with
  ``alpha_p | p - 1`` and ``alpha_q | q - 1`` of :data:`SUBGROUP_ALPHA_BITS` bits each, so CRT
  decryption exponentiates by ``alpha_p`` instead of ``p - 1``.  Same ciphertexts, packing and sizes;
  semantic security under the decisional partial discrete logarithm assumption.

Examples
--------
>>> from crowdlearn.crypto.randomness import CryptoRandom
>>> sk = generate_keypair(512, rand=CryptoRandom(seed=1))    # tiny, insecure, for the example
>>> codec = PaillierPacking(sk.public_key, prec=32, pad=15)
>>> codec.slots
10
>>> a = codec.encrypt([5, -7, 2**31 - 1], pool=sk.pool(2, rand=CryptoRandom(seed=2)))
>>> b = codec.encrypt([1, 1, -2**31], pool=sk.pool(2, rand=CryptoRandom(seed=3)))
>>> codec.decrypt(a + b, sk).tolist()
[6, -6, -1]
>>> len((a + b).to_bytes()) == (a + b).nbytes
True

References
----------
P. Paillier, "Public-key cryptosystems based on composite degree residuosity classes", EUROCRYPT 1999.
L. T. Phong et al., "Privacy-Preserving Deep Learning via Additively Homomorphic Encryption",
IEEE TIFS 13(5), 2018.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field

import gmpy2
import numpy as np
from gmpy2 import mpz

from crowdlearn.crypto.fixedpoint import PackingOverflowError
from crowdlearn.crypto.randomness import CryptoRandom, as_random

__all__ = ["PaillierPublicKey", "PaillierPrivateKey", "RandomnessPool", "PaillierPacking",
           "PaillierVector", "generate_keypair", "VARIANTS", "SUBGROUP_ALPHA_BITS", "pack", "unpack", "check_count", "slots_per_plaintext", "SlotPacking"]


@dataclass(frozen=True, eq=False)
class PaillierPublicKey:
    """``n`` (``g = n + 1`` implied); for the subgroup variant also ``h``, a generator of the secret
    order-``alpha`` subgroup of ``n``-th residues, and ``alpha_bits``, the bit length of ``alpha``."""

    n: mpz
    h: mpz | None = None
    alpha_bits: int = 0
    nsquare: mpz = field(init=False)

    def __post_init__(self):
        object.__setattr__(self, "n", mpz(self.n))
        object.__setattr__(self, "nsquare", self.n * self.n)
        if self.h is not None:
            object.__setattr__(self, "h", mpz(self.h))

    @property
    def variant(self) -> str:
        """``"standard"`` or ``"subgroup"`` (see :func:`generate_keypair`)."""
        return "standard" if self.h is None else "subgroup"

    @property
    def bits(self) -> int:
        return int(self.n.bit_length())

    @property
    def ciphertext_bytes(self) -> int:
        """Encoded size of one ciphertext (an element of ``Z_{n^2}``)."""
        return (int(self.nsquare.bit_length()) + 7) // 8

    def fingerprint(self) -> bytes:
        import hashlib
        return hashlib.sha256(gmpy2.to_binary(self.n)).digest()[:8]

    def raw_rn(self, rand: CryptoRandom) -> mpz:
        """Encryption randomness without the secret key: ``r^n mod n^2`` for a uniform unit ``r``
        (standard), or ``h^r mod n^2`` for ``r < 2**(alpha_bits + 64)`` (subgroup: ``r mod alpha`` is
        then within statistical distance ``2**-64`` of uniform)."""
        if self.h is None:
            return gmpy2.powmod(rand.unit(self.n), self.n, self.nsquare)
        return gmpy2.powmod(self.h, rand.bits(self.alpha_bits + 64), self.nsquare)

    def raw_encrypt(self, m, rn) -> mpz:
        """``(1 + m n) * rn mod n^2`` for a plaintext ``0 <= m < n``."""
        m = mpz(m)
        if not 0 <= m < self.n:
            raise ValueError(f"plaintext must be in [0, n); got {m.bit_length()} bits for a {self.bits}-bit n")
        return ((1 + m * self.n) * rn) % self.nsquare


@dataclass(frozen=True, eq=False)
class PaillierPrivateKey:
    """The factors ``p, q`` and the CRT constants for decryption; for the subgroup variant also the
    prime factors ``alpha_p | p - 1`` and ``alpha_q | q - 1`` of the order of ``h``."""

    public_key: PaillierPublicKey
    p: mpz
    q: mpz
    alpha_p: mpz | None = None
    alpha_q: mpz | None = None

    def __post_init__(self):
        p, q = mpz(self.p), mpz(self.q)
        if p * q != self.public_key.n:
            raise ValueError("p * q does not equal the public modulus n")
        if (self.alpha_p is None) != (self.public_key.h is None) or (self.alpha_p is None) != (self.alpha_q is None):
            raise ValueError("a subgroup key needs h in the public key and both alpha_p and alpha_q")
        object.__setattr__(self, "p", p)
        object.__setattr__(self, "q", q)
        object.__setattr__(self, "_psq", p * p)
        object.__setattr__(self, "_qsq", q * q)
        if self.alpha_p is None:           # standard: c^(p-1) kills any r^n
            ep, eq = p - 1, q - 1
        else:                              # subgroup: c^alpha_p kills h^r mod p^2 (h has order alpha_p there)
            ep, eq = mpz(self.alpha_p), mpz(self.alpha_q)
            if (p - 1) % ep or (q - 1) % eq:
                raise ValueError("alpha_p must divide p - 1 and alpha_q must divide q - 1")
            object.__setattr__(self, "alpha_p", ep)
            object.__setattr__(self, "alpha_q", eq)
            object.__setattr__(self, "_h_p", self.public_key.h % self._psq)
            object.__setattr__(self, "_h_q", self.public_key.h % self._qsq)
        object.__setattr__(self, "_ep", ep)
        object.__setattr__(self, "_eq", eq)
        # with g = n + 1: L_p(g^e mod p^2) = e q mod p (e = p - 1 gives -q)
        object.__setattr__(self, "_hp", gmpy2.invert(ep * q % p, p))
        object.__setattr__(self, "_hq", gmpy2.invert(eq * p % q, q))
        object.__setattr__(self, "_pinv_q", gmpy2.invert(p, q))
        object.__setattr__(self, "_psq_inv_qsq", gmpy2.invert(self._psq, self._qsq))

    def raw_decrypt(self, c) -> mpz:
        """The plaintext in ``[0, n)`` of one ciphertext (CRT decryption)."""
        return self.raw_decrypt_list([mpz(c)])[0]

    def raw_decrypt_list(self, cs: list) -> list:
        """:meth:`raw_decrypt` of many ciphertexts (batched exponentiations)."""
        p, q = self.p, self.q
        ep = gmpy2.powmod_base_list([c % self._psq for c in cs], self._ep, self._psq)
        eq = gmpy2.powmod_base_list([c % self._qsq for c in cs], self._eq, self._qsq)
        out = []
        for xp, xq in zip(ep, eq, strict=True):
            mp = ((xp - 1) // p) * self._hp % p
            mq = ((xq - 1) // q) * self._hq % q
            out.append(mp + p * ((mq - mp) * self._pinv_q % q))
        return out

    def fast_rn(self, rand: CryptoRandom) -> mpz:
        """Encryption randomness computed by CRT: a uniform ``n``-th residue mod ``n^2`` (standard,
        same law as ``r^n``), or ``h^r`` for a uniform ``r mod alpha`` (subgroup: ``r mod alpha_p`` and
        ``r mod alpha_q`` drawn independently)."""
        p, q = self.p, self.q
        if self.alpha_p is None:
            xp = gmpy2.powmod(rand.unit(p), p, self._psq)
            xq = gmpy2.powmod(rand.unit(q), q, self._qsq)
        else:
            xp = gmpy2.powmod(self._h_p, rand.below(self.alpha_p), self._psq)
            xq = gmpy2.powmod(self._h_q, rand.below(self.alpha_q), self._qsq)
        # CRT from (mod p^2, mod q^2) to mod n^2
        return xp + self._psq * ((xq - xp) * self._psq_inv_qsq % self._qsq)

    def pool(self, size: int, *, rand=None, workers: int = 1) -> RandomnessPool:
        """A :class:`RandomnessPool` of ``size`` fresh ``r^n`` values, filled with the CRT speed-up."""
        return RandomnessPool.fill(self, size, rand=rand, workers=workers)


VARIANTS = ("standard", "subgroup")
#: Bits of each of ``alpha_p``, ``alpha_q`` in the subgroup variant: twice the 112-bit security level
#: of a 2048-bit modulus (a collision search finds ``alpha_p`` in about ``sqrt(alpha_p)`` steps).
SUBGROUP_ALPHA_BITS = 224


def generate_keypair(bits: int = 2048, *, rand=None, variant: str = "standard",
                     alpha_bits: int = SUBGROUP_ALPHA_BITS) -> PaillierPrivateKey:
    """A Paillier key pair with an exactly ``bits``-bit modulus.

    ``rand``: a :class:`CryptoRandom` or ``None`` for OS randomness; an int seeds an **insecure**
    reproducible stream (tests only).

    ``variant="subgroup"`` is Paillier's scheme 3 (EUROCRYPT 1999, Section 5) with ``g = (1 + n) h``:
    ``p = 2 k alpha_p + 1`` and ``q = 2 k' alpha_q + 1`` for primes ``alpha_p, alpha_q`` of
    ``alpha_bits`` bits each, ``h`` of order ``alpha = alpha_p alpha_q`` among the ``n``-th residues,
    ``E(m) = (1 + m n) h^r mod n^2`` with ``r`` uniform mod ``alpha``, and decryption exponentiates by
    ``alpha_p`` mod ``p^2`` (and ``alpha_q`` mod ``q^2``) instead of ``p - 1``.  Semantically secure
    under the decisional partial discrete logarithm assumption (not under Paillier's DCR alone);
    ``alpha_bits`` per factor must be at least twice the security level because a collision search on
    ``h^(n x) mod p`` finds ``alpha_p`` in about ``sqrt(alpha_p)`` steps [ours, see docs/design.md].

    >>> sk = generate_keypair(512, rand=CryptoRandom(seed=4), variant="subgroup", alpha_bits=64)
    >>> pub = sk.public_key
    >>> pub.variant, int(sk.alpha_p).bit_length(), (sk.p - 1) % sk.alpha_p == 0
    ('subgroup', 64, True)
    >>> int(sk.raw_decrypt(pub.raw_encrypt(42, pub.raw_rn(CryptoRandom(seed=5)))))
    42
    """
    if bits < 128 or bits % 2:
        raise ValueError(f"key size must be an even number of bits >= 128; got {bits}")
    if variant not in VARIANTS:
        raise ValueError(f"Paillier variant must be one of {VARIANTS}; got {variant!r}")
    rand = as_random(rand)
    if variant == "subgroup":
        return _subgroup_keypair(bits, int(alpha_bits), rand)
    while True:
        p, q = rand.prime(bits // 2), rand.prime(bits // 2)
        n = p * q
        if p != q and n.bit_length() == bits and gmpy2.gcd(n, (p - 1) * (q - 1)) == 1:
            return PaillierPrivateKey(PaillierPublicKey(n), p, q)


def _subgroup_keypair(bits: int, alpha_bits: int, rand: CryptoRandom) -> PaillierPrivateKey:
    half = bits // 2
    if not 16 <= alpha_bits <= half - 16:
        raise ValueError(f"alpha_bits must be in [16, {half - 16}] for a {bits}-bit key; got {alpha_bits}")
    top = mpz(3) << (half - 2)                        # p in [3 * 2**(half-2), 2**half): |n| = bits exactly

    def prime_with_factor():
        a = rand.prime(alpha_bits)
        lo, hi = -(-(top - 1) // (2 * a)), ((mpz(1) << half) - 2) // (2 * a)
        while True:
            p = 2 * a * (lo + rand.below(hi - lo + 1)) + 1
            if gmpy2.is_prime(p, 50):
                return p, a

    while True:
        (p, ap), (q, aq) = prime_with_factor(), prime_with_factor()
        n = p * q
        if p == q or ap == aq or n.bit_length() != bits or gmpy2.gcd(n, (p - 1) * (q - 1)) != 1:
            continue
        # h mod p^2 = x^(p (p-1) / alpha_p): order alpha_p (the order-p part and the rest of p-1 removed)
        hs = []
        for r, a in ((p, ap), (q, aq)):
            while True:
                h = gmpy2.powmod(rand.unit(r), r * ((r - 1) // a), r * r)
                if h != 1:
                    hs.append(h)
                    break
        psq, qsq = p * p, q * q
        h = hs[0] + psq * ((hs[1] - hs[0]) * gmpy2.invert(psq, qsq) % qsq)
        return PaillierPrivateKey(PaillierPublicKey(n, h, int((ap * aq).bit_length())), p, q, ap, aq)


class RandomnessPool:
    """Precomputed encryption randomness ``r^n mod n^2``; each value is handed out once."""

    def __init__(self, public_key: PaillierPublicKey, values: list):
        self.public_key = public_key
        self._values = list(values)

    @classmethod
    def fill(cls, key, size: int, *, rand=None, workers: int = 1) -> RandomnessPool:
        """Fill from a private key (CRT, fast) or a public key (plain ``r^n``, slow)."""
        rand = as_random(rand)
        pub = key.public_key if isinstance(key, PaillierPrivateKey) else key
        make = key.fast_rn if isinstance(key, PaillierPrivateKey) else key.raw_rn
        if workers > 1 and size > 1:
            # each worker gets its own AES key: 32 fresh bytes of ``rand``
            seeds = [rand.bytes(32) for _ in range(workers)]
            sizes = [size // workers + (i < size % workers) for i in range(workers)]
            parts = _parallel(_fill_part, [(key, s, sd) for s, sd in zip(sizes, seeds, strict=True)], workers)
            return cls(pub, [v for part in parts for v in part])
        return cls(pub, [make(rand) for _ in range(int(size))])

    def __len__(self) -> int:
        return len(self._values)

    def take(self, k: int) -> list:
        if k > len(self._values):
            raise ValueError(f"randomness pool has {len(self._values)} values left, {k} needed; "
                             "fill a larger pool")
        out, self._values = self._values[:k], self._values[k:]
        return out


def _fill_part(args):
    key, size, aes_key = args
    rand = CryptoRandom.from_key(aes_key)
    make = key.fast_rn if isinstance(key, PaillierPrivateKey) else key.raw_rn
    return [make(rand) for _ in range(size)]


def _decrypt_part(args):
    sk, cs = args
    return sk.raw_decrypt_list(cs)


def _parallel(fn, jobs, workers):
    import multiprocessing
    with multiprocessing.get_context("fork").Pool(workers) as pool:
        return pool.map(fn, jobs)


# ---------------------------------------------------------------- packing

def pack(values: np.ndarray, slot_bits: int, slots: int) -> list:
    """Non-negative ints (< 2**slot_bits, int64/uint64) into ``ceil(len/slots)`` big integers,
    value ``i`` of each group at bits ``[i*slot_bits, (i+1)*slot_bits)``."""
    v = np.asarray(values).astype(np.uint64)
    k = -(-len(v) // slots)
    full = np.zeros(k * slots, dtype=np.uint64)
    full[:len(v)] = v
    bits = ((full[:, None] >> np.arange(slot_bits, dtype=np.uint64)) & np.uint64(1)).astype(np.uint8)
    per = bits.reshape(k, slots * slot_bits)
    nbytes = (slots * slot_bits + 7) // 8
    packed = np.packbits(per, axis=1, bitorder="little")
    return [mpz(int.from_bytes(row.tobytes(), "little")) for row in packed[:, :nbytes]]


def unpack(ints: list, slot_bits: int, slots: int, length: int) -> np.ndarray:
    """Inverse of :func:`pack`: uint64 slot values (each < 2**slot_bits, slot_bits <= 63)."""
    nbytes = (slots * slot_bits + 7) // 8
    raw = b"".join(int(x).to_bytes(nbytes, "little") for x in ints)
    bits = np.unpackbits(np.frombuffer(raw, dtype=np.uint8).reshape(len(ints), nbytes),
                         axis=1, bitorder="little")[:, :slots * slot_bits]
    bits = bits.reshape(len(ints) * slots, slot_bits)[:length].astype(np.uint64)
    return (bits << np.arange(slot_bits, dtype=np.uint64)).sum(axis=1, dtype=np.uint64)


@dataclass(frozen=True, eq=False)
class PaillierVector:
    """Packed ciphertexts of a vector of ``length`` fixed-point integers, summing ``count`` encodings."""

    public_key: PaillierPublicKey
    ciphertexts: tuple
    length: int
    count: int
    prec: int
    pad: int

    def _check(self, other):
        if not isinstance(other, PaillierVector):
            return NotImplemented
        if other.public_key.n != self.public_key.n:
            raise ValueError("cannot add ciphertexts under different Paillier keys")
        if (other.length, other.prec, other.pad) != (self.length, self.prec, self.pad):
            raise ValueError(f"cannot add packed vectors of different shapes: "
                             f"{(self.length, self.prec, self.pad)} vs {(other.length, other.prec, other.pad)}")
        return check_count(self.count + other.count, prec=self.prec, pad=self.pad)

    def __add__(self, other):
        total = self._check(other)
        if total is NotImplemented:
            return total
        nsq = self.public_key.nsquare
        cs = tuple(gmpy2.f_mod(a * b, nsq) for a, b in zip(self.ciphertexts, other.ciphertexts, strict=True))
        return PaillierVector(self.public_key, cs, self.length, total, self.prec, self.pad)

    HEADER = struct.Struct(">IIIBB")   # ciphertexts, length, count, prec, pad

    @property
    def nbytes(self) -> int:
        """Size of :meth:`to_bytes`: a 14-byte header and fixed-width ciphertexts."""
        return self.HEADER.size + len(self.ciphertexts) * self.public_key.ciphertext_bytes

    def to_bytes(self) -> bytes:
        w = self.public_key.ciphertext_bytes
        head = self.HEADER.pack(len(self.ciphertexts), self.length, self.count, self.prec, self.pad)
        return head + b"".join(int(c).to_bytes(w, "big") for c in self.ciphertexts)

    @classmethod
    def from_bytes(cls, public_key: PaillierPublicKey, data: bytes) -> PaillierVector:
        k, length, count, prec, pad = cls.HEADER.unpack_from(data)
        w = public_key.ciphertext_bytes
        if len(data) != cls.HEADER.size + k * w:
            raise ValueError(f"packed Paillier vector: expected {cls.HEADER.size + k * w} bytes, got {len(data)}")
        off = cls.HEADER.size
        cs = tuple(mpz(int.from_bytes(data[off + i * w: off + (i + 1) * w], "big")) for i in range(k))
        return cls(public_key, cs, length, count, prec, pad)


class SlotPacking:
    """Phong's packing: signed ``prec``-bit integers, ``pad`` guard bits each, ``slots`` per plaintext
    of a ``key_bits``-bit modulus.  Subclasses add encryption (they override nothing here)."""

    def __init__(self, key_bits: int, *, prec: int = 32, pad: int = 15):
        if prec < 2 or pad < 0 or prec + pad > 63:
            raise ValueError(f"need prec >= 2, pad >= 0 and prec + pad <= 63; got prec={prec}, pad={pad}")
        self.prec, self.pad = int(prec), int(pad)
        self.slot_bits = self.prec + self.pad
        self.slots = slots_per_plaintext(key_bits, prec=prec, pad=pad)
        self.offset = 1 << (self.prec - 1)

    @property
    def max_count(self) -> int:
        """Most encodings one ciphertext may sum."""
        return 1 << self.pad

    def num_ciphertexts(self, length: int) -> int:
        return -(-int(length) // self.slots)

    def plaintexts(self, values) -> list:
        """The packed plaintext integers of a vector of signed ``prec``-bit integers."""
        v = np.asarray(values, dtype=np.int64)
        lim = self.offset
        if v.size and (v.min() < -lim or v.max() >= lim):
            raise ValueError(f"values must be in [-2**{self.prec - 1}, 2**{self.prec - 1}); "
                             f"got range [{v.min()}, {v.max()}]")
        return pack(v + lim, self.slot_bits, self.slots)

    def sums(self, plaintexts: list, length: int, count: int) -> np.ndarray:
        """Decrypted plaintexts back to the exact int64 sums of ``count`` encodings."""
        slots = unpack(plaintexts, self.slot_bits, self.slots, length)
        return slots.astype(np.int64) - np.int64(count) * np.int64(self.offset)


class PaillierPacking(SlotPacking):
    """Phong's packing of ``prec``-bit signed integers with ``pad`` guard bits into Paillier plaintexts.

    Parameters
    ----------
    public_key
        The key whose modulus sets the number of slots.
    prec, pad
        Bits per value and guard bits per slot; ``prec + pad <= 63``.
    """

    def __init__(self, public_key: PaillierPublicKey, *, prec: int = 32, pad: int = 15):
        super().__init__(public_key.bits, prec=prec, pad=pad)
        self.public_key = public_key

    def nbytes(self, length: int) -> int:
        """Encoded size of the packed encryption of ``length`` values."""
        return PaillierVector.HEADER.size + self.num_ciphertexts(length) * self.public_key.ciphertext_bytes

    def encrypt(self, values, *, pool: RandomnessPool | None = None, rand=None) -> PaillierVector:
        """Encrypt signed ``prec``-bit integers (use a pool for speed; else ``r^n`` on the spot)."""
        ms = self.plaintexts(values)
        if pool is None:
            rand = as_random(rand)
            rns = [self.public_key.raw_rn(rand) for _ in ms]
        else:
            if pool.public_key.n != self.public_key.n:
                raise ValueError("randomness pool belongs to another key")
            rns = pool.take(len(ms))
        n, nsq = self.public_key.n, self.public_key.nsquare
        cs = tuple(gmpy2.f_mod((1 + m * n) * rn, nsq) for m, rn in zip(ms, rns, strict=True))
        return PaillierVector(self.public_key, cs, len(np.asarray(values)), 1, self.prec, self.pad)

    def decrypt(self, vec: PaillierVector, private_key: PaillierPrivateKey, *, workers: int = 1) -> np.ndarray:
        """The exact int64 sum of the ``vec.count`` encoded vectors that ``vec`` adds up."""
        if private_key.public_key.n != vec.public_key.n:
            raise ValueError("private key does not match the ciphertext's key")
        cs = list(vec.ciphertexts)
        if workers > 1 and len(cs) > 1:
            chunks = [cs[i::workers] for i in range(workers)]
            parts = _parallel(_decrypt_part, [(private_key, ch) for ch in chunks], workers)
            ms = [None] * len(cs)
            for i, part in enumerate(parts):
                ms[i::workers] = part
        else:
            ms = private_key.raw_decrypt_list(cs)
        return self.sums(ms, vec.length, vec.count)


def check_count(total: int, *, prec: int, pad: int) -> int:
    """``total`` if a slot summing ``total`` encodings of ``prec`` bits cannot overflow ``prec + pad``
    bits, else :class:`PackingOverflowError` with the fix."""
    if total > 1 << pad:
        raise PackingOverflowError(
            f"a sum of {total} encodings of {prec}-bit values can overflow its "
            f"{prec + pad}-bit slots (pad={pad} allows {1 << pad}); "
            f"raise pad to at least {max(total - 1, 1).bit_length()} or add fewer updates")
    return total


def slots_per_plaintext(key_bits: int, *, prec: int, pad: int) -> int:
    """``t = floor((key_bits - 1) / (prec + pad))``: slots that always fit below an n of ``key_bits``."""
    t = (int(key_bits) - 1) // (prec + pad)
    if t < 1:
        raise ValueError(f"a {key_bits}-bit key cannot hold one {prec + pad}-bit slot (prec={prec}, pad={pad}); "
                         "use a larger key or smaller prec/pad")
    return t
