"""One interface over the additively homomorphic schemes a protocol uses: Paillier, LWE or none.

A :class:`Scheme` turns a float vector into fixed-point integers, encrypts, adds and decrypts them,
and says what each ciphertext costs on the wire and in compute.  Two modes:

``real``
    the big-number work runs (:mod:`crowdlearn.crypto.paillier`, :mod:`crowdlearn.crypto.lwe`);
``priced``
    the same fixed-point integers are added (with the same overflow checks) but nothing is
    encrypted; sizes come from the same formulas, which the tests hold equal to the encoded
    lengths.  Because decryption of a sum is exactly the sum of the encodings (the laws in
    ``tests/test_crypto_he.py``), both modes give identical weights.

Every payload also carries its plaintext integers as ``oracle``: the simulator's monitor uses them
to evaluate the global model the server holds encrypted; no protocol logic reads them and they are
not part of the wire encoding.

Examples
--------
>>> import numpy as np
>>> s = make_scheme("paillier", mode="priced", length=3, key_bits=2048)
>>> c = s.encrypt(s.encode(np.array([0.5, -0.25, 1.0])))
>>> s.decode(s.decrypt(s.add(c, c))).tolist()
[1.0, -0.5, 2.0]
>>> c.wire_len() == s.nbytes
True
"""

from __future__ import annotations

import numpy as np

from crowdlearn.crypto.fixedpoint import FixedPoint, PackingOverflowError
from crowdlearn.crypto.lwe import LWEKey, LWEParams, LWEVector
from crowdlearn.crypto.paillier import (
    PaillierPacking,
    PaillierVector,
    check_count,
    generate_keypair,
    slots_per_plaintext,
)
from crowdlearn.crypto.payload import Payload

__all__ = ["Scheme", "Payload", "make_scheme", "SCHEMES", "MODES", "max_updates"]

SCHEMES = ("paillier", "lwe", "none")
MODES = ("real", "priced")




class _Plain:
    """The 'none' scheme's ciphertext: the float32 vector itself."""

    def __init__(self, values: np.ndarray):
        self.values, self.count = values, 1


class Scheme:
    """Encode / encrypt / add / decrypt for one vector length; see :func:`make_scheme`."""

    name = "none"
    #: per-ciphertext counts used by the cost model: (ciphertexts per vector, units)
    ciphertexts = 0

    def __init__(self, length: int, mode: str):
        if mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}; got {mode!r}")
        self.length, self.mode = int(length), mode

    # plaintext scheme: float32 in, float32 out
    def encode(self, x) -> np.ndarray:
        return np.asarray(x, np.float32)

    def decode(self, v) -> np.ndarray:
        return np.asarray(v, np.float32)

    @property
    def nbytes(self) -> int:
        return 4 * self.length

    @property
    def max_count(self) -> int:
        return 2 ** 62

    def encrypt(self, v) -> Payload:
        return Payload("none", self.nbytes, 1, np.asarray(v, np.float32))

    def add(self, a: Payload, b: Payload) -> Payload:
        a, b = self.open(a), self.open(b)
        return Payload("none", self.nbytes, a.count + b.count, (a.oracle + b.oracle).astype(np.float32))

    def decrypt(self, p: Payload) -> np.ndarray:
        return self.open(p).oracle

    # a payload that crossed a wire arrives as its bytes (Payload.from_wire): rebuild it
    def open(self, p: Payload) -> Payload:
        """``p`` itself, or, if it arrived over a wire, the payload its bytes hold: the ciphertext
        rebuilt under this scheme's key and the simulator's oracle recovered by decrypting it
        with the simulator's copy of the key (host time only: nothing is charged to a device).
        Bytes that do not parse raise ``ValueError``.

        >>> s = make_scheme("none", mode="real", length=2)
        >>> q = s.open(Payload.from_wire(s.encrypt(np.array([1.5, -2.0])).wire_bytes()))
        >>> q.scheme, q.oracle.tolist()
        ('none', [1.5, -2.0])
        """
        if p.raw is None or p.scheme != "wire":
            return p
        ct = self._ciphertext(p.raw)           # checks the length
        return Payload(self.name, len(p.raw), getattr(ct, "count", 1), self._reveal(ct), ct)

    def _ciphertext(self, raw: bytes):
        if len(raw) != self.nbytes:
            raise ValueError(f"a {self.name} payload of {self.length} values takes {self.nbytes} "
                             f"bytes; got {len(raw)}")
        return _Plain(np.frombuffer(raw, np.float32).copy())     # 'none': the plaintext itself

    def _reveal(self, ct) -> np.ndarray:
        return ct.values

    def _ct(self, p: Payload):
        """The ciphertext object of ``p`` (rebuilt from its bytes if it crossed a wire)."""
        if p.raw is not None and p.scheme == "wire":
            if self.mode != "real":
                raise ValueError("a payload from a wire needs crypto mode 'real'")
            return self._ciphertext(p.raw)
        return p.ciphertext

    def summary(self) -> dict:
        return {"scheme": self.name, "mode": self.mode, "ciphertext_bytes": self.nbytes,
                "comm_factor": self.nbytes / (4 * self.length), "max_updates": self.max_count}


class PaillierScheme(Scheme):
    name = "paillier"

    def __init__(self, length: int, mode: str, *, key_bits: int, prec: int, pad: int,
                 frac_bits: int, rand=None, workers: int = 1, variant: str = "standard"):
        super().__init__(length, mode)
        self.key_bits, self.workers = int(key_bits), int(workers)
        self.variant = variant
        self.fp = FixedPoint(prec=prec, frac_bits=frac_bits)
        self.prec, self.pad = int(prec), int(pad)
        self.slots = slots_per_plaintext(key_bits, prec=prec, pad=pad)
        self.ciphertexts = -(-self.length // self.slots)
        # an element of Z_{n^2} for an n of exactly key_bits bits takes 2*key_bits bits
        self._nbytes = PaillierVector.HEADER.size + self.ciphertexts * ((2 * self.key_bits + 7) // 8)
        self.sk = self.codec = None
        if mode == "real":
            self.sk = generate_keypair(key_bits, rand=rand, variant=variant)
            self.codec = PaillierPacking(self.sk.public_key, prec=prec, pad=pad)
            assert self.codec.nbytes(length) == self._nbytes

    encode = property(lambda self: self.fp.encode)
    decode = property(lambda self: self.fp.decode)

    @property
    def nbytes(self) -> int:
        return self._nbytes

    @property
    def max_count(self) -> int:
        return 1 << self.pad

    def encrypt(self, v) -> Payload:
        v = np.asarray(v, np.int64)
        ct = None
        if self.mode == "real":
            ct = self.codec.encrypt(v, pool=self.sk.pool(self.ciphertexts, workers=self.workers))
        return Payload(self.name, self.nbytes, 1, v, ct)

    def add(self, a: Payload, b: Payload) -> Payload:
        a, b = self.open(a), self.open(b)
        total = check_count(a.count + b.count, prec=self.prec, pad=self.pad)
        ct = a.ciphertext + b.ciphertext if self.mode == "real" else None
        return Payload(self.name, self.nbytes, total, a.oracle + b.oracle, ct, key=a.key)

    def decrypt(self, p: Payload) -> np.ndarray:
        if self.mode == "real":
            return self.codec.decrypt(self._ct(p), self.sk, workers=self.workers)
        return p.oracle

    def _ciphertext(self, raw: bytes):
        if self.mode != "real":
            raise ValueError("a payload from a wire needs crypto mode 'real'")
        return PaillierVector.from_bytes(self.sk.public_key, raw)

    def _reveal(self, ct) -> np.ndarray:
        return np.asarray(self.codec.decrypt(ct, self.sk, workers=self.workers), np.int64)

    def summary(self) -> dict:
        out = {**super().summary(), "key_bits": self.key_bits}
        if self.name == "paillier":              # HRES (a subclass) has no Paillier key type
            out["variant"] = self.variant
        return {**out, "prec": self.prec, "pad": self.pad, "frac_bits": self.fp.frac_bits,
                "slots": self.slots, "ciphertexts_per_vector": self.ciphertexts,
                "formula_comm_factor": 2 * (1 + self.pad / self.prec)}


class LWEScheme(Scheme):
    name = "lwe"

    def __init__(self, length: int, mode: str, *, n_lwe: int, value_bits: int, n_pu: int,
                 rand=None, workers: int = 1):
        super().__init__(length, mode)
        self.params = LWEParams(n_lwe=n_lwe, value_bits=value_bits)
        self.n_pu = int(n_pu)
        self.fp = FixedPoint(prec=value_bits, frac_bits=self.params.prec)
        self.key = None
        if mode == "real":
            self.key = LWEKey.generate(self.params, length, rand=rand)
            self.key.workers = workers

    encode = property(lambda self: self.fp.encode)
    decode = property(lambda self: self.fp.decode)

    @property
    def nbytes(self) -> int:
        return self.params.nbytes(self.length, self.n_pu)

    @property
    def max_count(self) -> int:
        return self.params.max_count

    def encrypt(self, v) -> Payload:
        v = np.asarray(v, np.int64)
        ct = self.key.encrypt(v, n_pu=self.n_pu) if self.mode == "real" else None
        return Payload(self.name, self.nbytes, 1, v, ct)

    def add(self, a: Payload, b: Payload) -> Payload:
        a, b = self.open(a), self.open(b)
        total = a.count + b.count
        if total > self.max_count:
            raise PackingOverflowError(f"a sum of {total} LWE encodings can wrap (limit {self.max_count})")
        ct = a.ciphertext + b.ciphertext if self.mode == "real" else None
        return Payload(self.name, self.nbytes, total, a.oracle + b.oracle, ct)

    def decrypt(self, p: Payload) -> np.ndarray:
        return self.key.decrypt(self._ct(p)) if self.mode == "real" else p.oracle

    def _ciphertext(self, raw: bytes):
        # an LWE vector does not carry its count on the wire: a received one counts as one
        # encoding (uploads are; the holder of a sum keeps its own count)
        if self.mode != "real":
            raise ValueError("a payload from a wire needs crypto mode 'real'")
        return LWEVector.from_bytes(self.params, raw)

    def _reveal(self, ct) -> np.ndarray:
        return np.asarray(self.key.decrypt(ct), np.int64)

    def summary(self) -> dict:
        return {**super().summary(), "n_lwe": self.params.n_lwe, "n_pu": self.n_pu,
                "log2_q": self.params.log_q, "p": self.params.p, "prec": self.params.prec,
                "value_bits": self.params.value_bits,
                "formula_comm_factor": self.params.comm_factor(self.length, self.n_pu)}


class HRESScheme(PaillierScheme):
    """HRES (Ding et al.) for Tang et al.'s two servers: uploads under the joint key of the DSP and
    the KTS, downloads re-encrypted in two stages to each participant's own key.

    ``participants``: the node ids that get their own key pair.  Extra operations:
    ``dsp_stage(payload, who)``, ``kts_stage(request, who)`` and ``decrypt(payload, who)``.
    """

    name = "hres"

    def __init__(self, length: int, mode: str, *, key_bits: int, prec: int, pad: int,
                 frac_bits: int, participants=(), rand=None, workers: int = 1):
        Scheme.__init__(self, length, mode)
        self.key_bits, self.workers = int(key_bits), int(workers)
        self.fp = FixedPoint(prec=prec, frac_bits=frac_bits)
        self.prec, self.pad = int(prec), int(pad)
        self.slots = slots_per_plaintext(key_bits, prec=prec, pad=pad)
        self.ciphertexts = -(-self.length // self.slots)
        elem = (2 * self.key_bits + 7) // 8
        from crowdlearn.crypto.hres import HRESVector, ReencryptionRequest
        self._nbytes = HRESVector.HEADER.size + 2 * self.ciphertexts * elem
        self.request_nbytes = ReencryptionRequest.HEADER.size + 3 * self.ciphertexts * elem
        self.sk = self.codec = None
        if mode == "real":
            from crowdlearn.crypto.hres import HRESGroup, HRESPacking
            from crowdlearn.crypto.randomness import as_random
            self.rand = as_random(rand)
            self.group = HRESGroup.generate(key_bits, rand=self.rand)
            self.dsp, self.kts = self.group.keypair(rand=self.rand), self.group.keypair(rand=self.rand)
            self.keys = {p: self.group.keypair(rand=self.rand) for p in participants}
            self.PK = self.group.joint_key(self.dsp.pk, self.kts.sk)
            self.codec = HRESPacking(self.group, prec=prec, pad=pad)
            assert self.codec.nbytes(length) == self._nbytes

    def encrypt(self, v) -> Payload:
        v = np.asarray(v, np.int64)
        ct = self.codec.encrypt(v, self.PK, rand=self.rand) if self.mode == "real" else None
        return Payload(self.name, self.nbytes, 1, v, ct, key="joint")

    def _ciphertext(self, raw: bytes):
        from crowdlearn.crypto.hres import HRESVector, ReencryptionRequest
        if self.mode != "real":
            raise ValueError("a payload from a wire needs crypto mode 'real'")
        if len(raw) == self.request_nbytes:
            return ReencryptionRequest.from_bytes(self.group, raw)
        return HRESVector.from_bytes(self.group, raw)

    def _reveal(self, ct):
        """The simulator's oracle of a received ciphertext: opened with the key it is under (the
        joint key's secret is the product of the DSP's and the KTS's); a re-encryption request
        (DSP → KTS) is not opened (its oracle is not needed: the participant decrypts)."""
        from crowdlearn.crypto.hres import HRESVector
        if not isinstance(ct, HRESVector):
            return None
        if ct.key_tag == self.group.key_tag(self.PK):
            sk = self.dsp.sk * self.kts.sk
        else:
            sk = next((kp.sk for kp in self.keys.values()
                       if self.group.key_tag(kp.pk) == ct.key_tag), None)
            if sk is None:
                raise ValueError("HRES ciphertext under a key this run does not know")
        return np.asarray(self.codec.decrypt(ct, sk), np.int64)

    def dsp_stage(self, p: Payload, who) -> Payload:
        ct = None
        if self.mode == "real":
            from crowdlearn.crypto.hres import dsp_reencrypt
            ct = dsp_reencrypt(self.group, self._ct(p), self.dsp.sk, self.keys[who].pk, rand=self.rand)
        return Payload(self.name, self.request_nbytes, p.count, p.oracle, ct, key=("request", who))

    def kts_stage(self, p: Payload, who) -> Payload:
        p = self.open(p)
        ct = None
        if self.mode == "real":
            from crowdlearn.crypto.hres import kts_reencrypt
            ct = kts_reencrypt(self.group, self._ct(p), self.kts.sk, self.keys[who].pk, rand=self.rand)
        return Payload(self.name, self.nbytes, p.count, p.oracle, ct, key=who)

    def decrypt(self, p: Payload, who=None) -> np.ndarray:
        """Open under ``who``'s own key (raises ``HRESDecryptionError`` if it was not made for it)."""
        if self.mode == "real":
            sk = self.dsp.sk if who == "dsp" else self.kts.sk if who == "kts" else self.keys[who].sk
            return self.codec.decrypt(self._ct(p), sk)
        if p.key != who:            # what the real decryption would refuse (tested in real mode)
            from crowdlearn.crypto.hres import HRESDecryptionError
            raise HRESDecryptionError("ciphertext does not open under this key (priced mode)")
        return p.oracle

    def summary(self) -> dict:
        return {**super().summary(), "reencryption_request_bytes": self.request_nbytes,
                "formula_comm_factor": 4 * (1 + self.pad / self.prec)}


def make_scheme(name: str, *, mode: str, length: int, key_bits: int = 3072, prec: int = 32,
                pad: int = 15, frac_bits: int = 24, n_lwe: int = 3000, value_bits: int = 33,
                n_pu: int = 1, rand=None, workers: int = 1, participants=(),
                paillier_variant: str = "standard") -> Scheme:
    """The scheme ``name`` for vectors of ``length`` values (keys generated here in real mode)."""
    if name == "paillier":
        return PaillierScheme(length, mode, key_bits=key_bits, prec=prec, pad=pad,
                              frac_bits=frac_bits, rand=rand, workers=workers, variant=paillier_variant)
    if name == "lwe":
        return LWEScheme(length, mode, n_lwe=n_lwe, value_bits=value_bits, n_pu=n_pu, rand=rand,
                         workers=workers)
    if name == "none":
        return Scheme(length, mode)
    if name == "hres":
        return HRESScheme(length, mode, key_bits=key_bits, prec=prec, pad=pad, frac_bits=frac_bits,
                          participants=participants, rand=rand, workers=workers)
    raise ValueError(f"scheme must be one of {SCHEMES}; got {name!r}")


def max_updates(name: str, *, key_bits: int = 3072, prec: int = 32, pad: int = 15,
                n_lwe: int = 3000, value_bits: int = 33) -> int:
    """How many encodings one ciphertext may sum under these parameters (no keys needed)."""
    if name == "paillier":
        slots_per_plaintext(key_bits, prec=prec, pad=pad)
        return 1 << pad
    if name == "lwe":
        return LWEParams(n_lwe=n_lwe, value_bits=value_bits).max_count
    return 2 ** 62
