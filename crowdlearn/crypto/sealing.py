"""End-to-end sealed payloads: X25519 key agreement, HKDF-SHA256, AES-GCM.

A relaying server forwards a :class:`Sealed` payload without being able to read it; what it costs
on the wire is ``12 (nonce) + len(plaintext) + 16 (tag)`` bytes.  The plaintext may be given
lazily (a callable or a deferred list of arrays) together with its length, so that a simulation
can size a message before — or without — computing its contents; :meth:`Sealed.wire_bytes`
produces the real ciphertext whenever the message is encoded.

Examples
--------
>>> ring = KeyRing(seed=1)
>>> s = Sealed.of_bytes(ring, "alice", "bob", b"hello")
>>> s.wire_len() == len(s.wire_bytes()) == 12 + 5 + 16
True
>>> ring.open("alice", "bob", s.wire_bytes())
b'hello'
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from typing import Any

import numpy as np
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

NONCE = 12
TAG = 16


class KeyRing:
    """X25519 key pairs per party and the AES-GCM keys they agree on (cached per pair).

    Private keys are derived deterministically from ``seed`` and the party name so that runs are
    reproducible; a deployment would generate them with ``X25519PrivateKey.generate()``.
    """

    def __init__(self, seed: int = 0):
        self.seed = int(seed)
        self._priv: dict[Any, X25519PrivateKey] = {}
        self._keys: dict[tuple, AESGCM] = {}
        self._nonce_counter: dict[tuple, int] = {}

    def private_key(self, party: Any) -> X25519PrivateKey:
        if party not in self._priv:
            raw = hashlib.sha256(f"crowdlearn-x25519/{self.seed}/{party!r}".encode()).digest()
            self._priv[party] = X25519PrivateKey.from_private_bytes(raw)
        return self._priv[party]

    def public_bytes(self, party: Any) -> bytes:
        from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat
        return self.private_key(party).public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)

    def aead(self, a: Any, b: Any) -> AESGCM:
        """The AES-GCM key shared by ``a`` and ``b`` (order does not matter)."""
        pair = tuple(sorted((repr(a), repr(b))))
        if pair not in self._keys:
            shared = self.private_key(a).exchange(self.private_key(b).public_key())
            key = HKDF(algorithm=hashes.SHA256(), length=32, salt=None,
                       info=b"crowdlearn sealed payload " + "|".join(pair).encode()).derive(shared)
            self._keys[pair] = AESGCM(key)
        return self._keys[pair]

    def nonce(self, src: Any, dst: Any) -> bytes:
        """A fresh 96-bit nonce per (sender, recipient): a counter, never reused for a key."""
        k = (repr(src), repr(dst))
        n = self._nonce_counter.get(k, 0)
        self._nonce_counter[k] = n + 1
        tag = hashlib.sha256(f"{k}".encode()).digest()[:4]
        return tag + n.to_bytes(8, "big")

    def open(self, src: Any, dst: Any, blob: bytes) -> bytes:
        return self.aead(src, dst).decrypt(blob[:NONCE], blob[NONCE:], None)


class Sealed:
    """A payload sealed from ``src`` to ``dst``; the wire sees ``wire_len()`` opaque bytes."""

    __slots__ = ("ring", "src", "dst", "length", "_plain", "_blob")

    def __init__(self, ring: KeyRing, src: Any, dst: Any, length: int,
                 plaintext: bytes | Callable[[], bytes] | None):
        if length < 0:
            raise ValueError(f"length must be >= 0; got {length}")
        self.ring, self.src, self.dst, self.length = ring, src, dst, int(length)
        self._plain = plaintext
        self._blob: bytes | None = None

    @classmethod
    def of_bytes(cls, ring: KeyRing, src: Any, dst: Any, data: bytes) -> Sealed:
        return cls(ring, src, dst, len(data), data)

    @classmethod
    def of_arrays(cls, ring: KeyRing, src: Any, dst: Any, arrays_fn: Callable[[], list],
                  nbytes: int) -> Sealed:
        """Seal float32 arrays produced lazily by ``arrays_fn`` (``nbytes`` of them in all)."""
        def plain() -> bytes:
            data = b"".join(np.ascontiguousarray(a, np.float32).tobytes() for a in arrays_fn())
            if len(data) != nbytes:
                raise ValueError(f"sealed arrays are {len(data)} bytes, declared {nbytes}")
            return data
        return cls(ring, src, dst, nbytes, plain)

    @classmethod
    def opaque(cls, ring: KeyRing, src: Any, dst: Any, nbytes: int) -> Sealed:
        """A payload whose contents the simulation does not materialise (a zero buffer of the
        exact length is encrypted when the message is encoded)."""
        return cls(ring, src, dst, nbytes, None)

    def wire_len(self) -> int:
        return NONCE + self.length + TAG

    def wire_bytes(self) -> bytes:
        if self._blob is None:
            p = self._plain
            data = bytes(self.length) if p is None else (p() if callable(p) else p)
            if len(data) != self.length:
                raise ValueError(f"plaintext is {len(data)} bytes, declared {self.length}")
            nonce = self.ring.nonce(self.src, self.dst)
            self._blob = nonce + self.ring.aead(self.src, self.dst).encrypt(nonce, data, None)
        return self._blob
