"""HRES: homomorphic re-encryption with a key transform server (Ding, Yan and Deng 2017), on gmpy2.

Used by Tang et al.'s two-server deep learning: the **DSP** (data service provider) stores the
encrypted model and adds encrypted updates; the **KTS** (key transform server) helps re-encrypt; the
two do not collude.

Scheme
------
A public group ``(N, g)``: ``N = p q`` whose factors are discarded after set-up, ``g = -x^(2N) mod N^2``
(an element of the subgroup of ``N``-th residues).  Party ``i`` holds ``sk_i`` and publishes
``pk_i = g^sk_i mod N^2``.  The joint key of DSP (``a``) and KTS (``b``) is
``PK = g^(a b) = pk_DSP^b = pk_KTS^a``.  A ciphertext is a pair
``(T, T') = ((1 + m N) PK^r, g^r) mod N^2``; pairs multiply component-wise to add plaintexts.
Plaintexts are packed exactly as in :mod:`crowdlearn.crypto.paillier` (slots of ``prec + pad`` bits,
offset for negatives, a count of summed encodings that may not exceed ``2**pad``).

Re-encryption of ``E_PK(m)`` to participant ``j`` (two stages, each server stripping its key share):

1. DSP: ``A = T'^a`` (so ``(T, A)`` is now under ``pk_KTS`` alone), picks ``r1`` and sends the KTS
   ``(T1, A, B) = (T pk_j^r1, A, g^r1)``.  The KTS cannot open ``T`` (it never sees it) and ``T1`` is
   blinded for ``pk_j``.
2. KTS: strips its share, ``T1 / A^b = (1 + m N) pk_j^r1``, and re-randomises with its own ``r2``:
   ``(T2, T2') = ((1 + m N) pk_j^(r1 + r2), g^(r1 + r2))``.  [ours] The second blinding is what keeps
   the DSP — which chose ``r1`` and could otherwise divide by ``pk_j^r1`` — from opening ``T2``.

Only ``sk_j`` opens the result: ``1 + m N = T2 / T2'^sk_j``; any other key leaves a value that is not
``1 mod N`` and :class:`HRESDecryptionError` is raised.

Choices [ours]: secret keys and randomness are short exponents of ``exp_bits = 256`` bits (the group
order is unknown to everyone, and the best generic attack on a 256-bit exponent, Pollard's lambda,
costs 2**128); encryption randomness ``(PK^r, g^r)`` can be precomputed in a pool, as for Paillier.

Examples
--------
>>> from crowdlearn.crypto.randomness import CryptoRandom
>>> rnd = CryptoRandom(seed=1)                           # insecure, reproducible: examples only
>>> group = HRESGroup.generate(512, rand=rnd)            # tiny modulus, for the example
>>> dsp, kts, alice, bob = (group.keypair(rand=rnd) for _ in range(4))
>>> PK = group.joint_key(dsp.pk, kts.sk)
>>> PK == group.joint_key(kts.pk, dsp.sk)
True
>>> codec = HRESPacking(group, prec=32, pad=15)
>>> c = codec.encrypt([3, -4], PK, rand=rnd) + codec.encrypt([1, 1], PK, rand=rnd)
>>> msg = dsp_reencrypt(group, c, dsp.sk, alice.pk, rand=rnd)
>>> for_alice = kts_reencrypt(group, msg, kts.sk, alice.pk, rand=rnd)
>>> codec.decrypt(for_alice, alice.sk).tolist()
[4, -3]
>>> codec.decrypt(for_alice, bob.sk)
Traceback (most recent call last):
...
crowdlearn.crypto.hres.HRESDecryptionError: ciphertext does not open under this key (not 1 mod N)

References
----------
W. Ding, Z. Yan, R. H. Deng, "Encrypted data processing with homomorphic re-encryption",
Information Sciences 409, 2017.  X. Tang et al., "Privacy-Preserving Distributed Deep Learning via
Homomorphic Re-Encryption", Electronics 8(4):411, 2019.
"""

from __future__ import annotations

import hashlib
import struct
from dataclasses import dataclass, field

import gmpy2
import numpy as np
from gmpy2 import mpz

from crowdlearn.crypto.paillier import SlotPacking, check_count
from crowdlearn.crypto.randomness import CryptoRandom, as_random

__all__ = ["HRESGroup", "HRESKeyPair", "HRESVector", "HRESPacking", "ReencryptionRequest",
           "HRESDecryptionError", "dsp_reencrypt", "kts_reencrypt"]


class HRESDecryptionError(ValueError):
    """The ciphertext was not made for this key."""


@dataclass(frozen=True)
class HRESKeyPair:
    """One participant's HRES key pair: secret exponent ``sk`` and public key ``pk = g^sk mod N²``."""
    sk: mpz = field(repr=False)
    pk: mpz


@dataclass(frozen=True, eq=False)
class HRESGroup:
    """Public parameters ``(N, g)`` and the exponent length."""

    N: mpz
    g: mpz
    exp_bits: int = 256
    N2: mpz = field(init=False)

    def __post_init__(self):
        object.__setattr__(self, "N", mpz(self.N))
        object.__setattr__(self, "g", mpz(self.g))
        object.__setattr__(self, "N2", self.N * self.N)

    @classmethod
    def generate(cls, bits: int = 2048, *, rand=None, exp_bits: int = 256) -> HRESGroup:
        """A fresh group; the factors of ``N`` are forgotten when this returns."""
        if bits < 128 or bits % 2:
            raise ValueError(f"modulus size must be an even number of bits >= 128; got {bits}")
        rand = as_random(rand)
        while True:
            p, q = rand.prime(bits // 2), rand.prime(bits // 2)
            N = p * q
            if p != q and N.bit_length() == bits and gmpy2.gcd(N, (p - 1) * (q - 1)) == 1:
                break
        N2 = N * N
        g = (-gmpy2.powmod(rand.unit(N2), 2 * N, N2)) % N2
        return cls(N, g, exp_bits)

    @property
    def bits(self) -> int:
        return int(self.N.bit_length())

    @property
    def element_bytes(self) -> int:
        return (int(self.N2.bit_length()) + 7) // 8

    def exponent(self, rand: CryptoRandom) -> mpz:
        return rand.bits(self.exp_bits) | 1

    def keypair(self, *, rand=None) -> HRESKeyPair:
        sk = self.exponent(as_random(rand))
        return HRESKeyPair(sk, gmpy2.powmod(self.g, sk, self.N2))

    def joint_key(self, other_pk, own_sk) -> mpz:
        """``PK = g^(a b)``, computed by either server from the other's public key and its own secret."""
        return gmpy2.powmod(mpz(other_pk), mpz(own_sk), self.N2)

    def key_tag(self, pk) -> bytes:
        """8 bytes naming the key a ciphertext is under (travels in the header)."""
        return hashlib.sha256(gmpy2.to_binary(mpz(pk))).digest()[:8]

    def randomness(self, pk, rand: CryptoRandom) -> tuple[mpz, mpz]:
        """A fresh ``(pk^r, g^r)``; cheap to precompute ahead."""
        r = self.exponent(rand)
        return gmpy2.powmod(mpz(pk), r, self.N2), gmpy2.powmod(self.g, r, self.N2)


@dataclass(frozen=True, eq=False)
class HRESVector:
    """Packed HRES ciphertext pairs of ``length`` values under the key named by ``key_tag``."""

    group: HRESGroup
    key_tag: bytes
    T: tuple
    T1: tuple
    length: int
    count: int
    prec: int
    pad: int

    def __add__(self, other):
        if not isinstance(other, HRESVector):
            return NotImplemented
        if other.group.N != self.group.N or other.key_tag != self.key_tag:
            raise ValueError("cannot add HRES ciphertexts under different keys")
        if (other.length, other.prec, other.pad) != (self.length, self.prec, self.pad):
            raise ValueError("cannot add packed vectors of different shapes")
        total = check_count(self.count + other.count, prec=self.prec, pad=self.pad)
        N2 = self.group.N2
        T = tuple(gmpy2.f_mod(x * y, N2) for x, y in zip(self.T, other.T, strict=True))
        T1 = tuple(gmpy2.f_mod(x * y, N2) for x, y in zip(self.T1, other.T1, strict=True))
        return HRESVector(self.group, self.key_tag, T, T1, self.length, total, self.prec, self.pad)

    HEADER = struct.Struct(">IIIBB8s")   # pairs, length, count, prec, pad, key tag

    @property
    def nbytes(self) -> int:
        return self.HEADER.size + 2 * len(self.T) * self.group.element_bytes

    def to_bytes(self) -> bytes:
        w = self.group.element_bytes
        head = self.HEADER.pack(len(self.T), self.length, self.count, self.prec, self.pad, self.key_tag)
        return head + b"".join(int(x).to_bytes(w, "big") for pair in zip(self.T, self.T1, strict=True) for x in pair)

    @classmethod
    def from_bytes(cls, group: HRESGroup, data: bytes) -> HRESVector:
        """Inverse of :meth:`to_bytes` (raises ``ValueError`` on a length that does not match)."""
        k, length, count, prec, pad, tag = cls.HEADER.unpack_from(data)
        xs = _elements(group, data, cls.HEADER.size, 2 * k)
        return cls(group, tag, xs[0::2], xs[1::2], length, count, prec, pad)


@dataclass(frozen=True, eq=False)
class ReencryptionRequest:
    """What the DSP sends the KTS in stage 1: ``(T pk_j^r1, T'^a, g^r1)`` per ciphertext."""

    group: HRESGroup
    target_tag: bytes
    T1: tuple
    A: tuple
    B: tuple
    length: int
    count: int
    prec: int
    pad: int

    HEADER = struct.Struct(">IIIBB8s")

    @property
    def nbytes(self) -> int:
        return self.HEADER.size + 3 * len(self.T1) * self.group.element_bytes

    def to_bytes(self) -> bytes:
        w = self.group.element_bytes
        head = self.HEADER.pack(len(self.T1), self.length, self.count, self.prec, self.pad, self.target_tag)
        return head + b"".join(int(x).to_bytes(w, "big")
                               for trip in zip(self.T1, self.A, self.B, strict=True) for x in trip)

    @classmethod
    def from_bytes(cls, group: HRESGroup, data: bytes) -> ReencryptionRequest:
        """Inverse of :meth:`to_bytes` (raises ``ValueError`` on a length that does not match)."""
        k, length, count, prec, pad, tag = cls.HEADER.unpack_from(data)
        xs = _elements(group, data, cls.HEADER.size, 3 * k)
        return cls(group, tag, xs[0::3], xs[1::3], xs[2::3], length, count, prec, pad)


def _elements(group: HRESGroup, data: bytes, off: int, n: int) -> tuple:
    w = group.element_bytes
    if len(data) != off + n * w:
        raise ValueError(f"HRES ciphertext: expected {off + n * w} bytes, got {len(data)}")
    return tuple(mpz(int.from_bytes(data[off + i * w: off + (i + 1) * w], "big"))
                 for i in range(n))


def dsp_reencrypt(group: HRESGroup, vec: HRESVector, sk_dsp, pk_target, *, rand=None,
                  pool: list | None = None) -> ReencryptionRequest:
    """Stage 1 (DSP): strip the DSP's share of the joint key and blind toward ``pk_target``.

    ``pool``: optional precomputed ``(pk_target^r, g^r)`` pairs, one per ciphertext (consumed).
    """
    rand = as_random(rand)
    N2 = group.N2
    A = gmpy2.powmod_base_list(list(vec.T1), mpz(sk_dsp), N2)
    pairs = _take(pool, len(vec.T), lambda: group.randomness(pk_target, rand))
    T1 = tuple(gmpy2.f_mod(t * pr, N2) for t, (pr, _) in zip(vec.T, pairs, strict=True))
    return ReencryptionRequest(group, group.key_tag(pk_target), T1, tuple(A), tuple(g for _, g in pairs),
                               vec.length, vec.count, vec.prec, vec.pad)


def kts_reencrypt(group: HRESGroup, req: ReencryptionRequest, sk_kts, pk_target, *, rand=None,
                  pool: list | None = None) -> HRESVector:
    """Stage 2 (KTS): strip the KTS's share and re-randomise; the result opens only under ``sk_target``."""
    if group.key_tag(pk_target) != req.target_tag:
        raise ValueError("re-encryption request was blinded for another participant")
    rand = as_random(rand)
    N2 = group.N2
    Ab = gmpy2.powmod_base_list(list(req.A), mpz(sk_kts), N2)
    pairs = _take(pool, len(req.T1), lambda: group.randomness(pk_target, rand))
    T = tuple(gmpy2.f_mod(t * gmpy2.invert(ab, N2) * pr, N2) for t, ab, (pr, _) in zip(req.T1, Ab, pairs, strict=True))
    T1 = tuple(gmpy2.f_mod(b * g, N2) for b, (_, g) in zip(req.B, pairs, strict=True))
    return HRESVector(group, req.target_tag, T, T1, req.length, req.count, req.prec, req.pad)


def _take(pool, k, make):
    if pool is None:
        return [make() for _ in range(k)]
    if len(pool) < k:
        raise ValueError(f"randomness pool has {len(pool)} pairs left, {k} needed")
    out = pool[:k]
    del pool[:k]
    return out


class HRESPacking(SlotPacking):
    """Phong-style packing of signed ``prec``-bit integers into HRES plaintexts (see the module doc)."""

    def __init__(self, group: HRESGroup, *, prec: int = 32, pad: int = 15):
        super().__init__(group.bits, prec=prec, pad=pad)
        self.group = group

    def nbytes(self, length: int) -> int:
        return HRESVector.HEADER.size + 2 * self.num_ciphertexts(length) * self.group.element_bytes

    def request_nbytes(self, length: int) -> int:
        return ReencryptionRequest.HEADER.size + 3 * self.num_ciphertexts(length) * self.group.element_bytes

    def encrypt(self, values, pk, *, rand=None, pool: list | None = None) -> HRESVector:
        """Encrypt signed ``prec``-bit integers under ``pk`` (the joint key, or a participant's)."""
        rand = as_random(rand)
        ms = self.plaintexts(values)
        pairs = _take(pool, len(ms), lambda: self.group.randomness(pk, rand))
        N, N2 = self.group.N, self.group.N2
        T = tuple(gmpy2.f_mod((1 + m * N) * pr, N2) for m, (pr, _) in zip(ms, pairs, strict=True))
        return HRESVector(self.group, self.group.key_tag(pk), T, tuple(g for _, g in pairs),
                          len(np.asarray(values)), 1, self.prec, self.pad)

    def decrypt(self, vec: HRESVector, sk) -> np.ndarray:
        """The exact int64 sum of the encodings, if ``sk`` is the key ``vec`` is under."""
        N, N2 = self.group.N, self.group.N2
        masks = gmpy2.powmod_base_list(list(vec.T1), mpz(sk), N2)
        ms = []
        for t, mk in zip(vec.T, masks, strict=True):
            x = gmpy2.f_mod(t * gmpy2.invert(mk, N2), N2)
            if x % N != 1:
                raise HRESDecryptionError("ciphertext does not open under this key (not 1 mod N)")
            ms.append((x - 1) // N)
        return self.sums(ms, vec.length, vec.count)
