"""Pairwise keys for secure aggregation: X25519 agreement, HKDF-SHA256, AES-GCM.

Each party holds key pairs born on its own device (:func:`keypair` takes 32 random bytes from
the caller, so simulations are reproducible; a deployment passes ``os.urandom(32)``).  Two parties
agree on a 32-byte key per purpose with :func:`agree`; ``info`` binds the purpose, the round and
the pair, so the same X25519 secret yields independent keys for the share cipher and the mask PRG.

Examples
--------
>>> a, b = keypair(bytes(range(32))), keypair(bytes(range(1, 33)))
>>> k = agree(a, public_bytes(b), b"demo")
>>> k == agree(b, public_bytes(a), b"demo")
True
>>> box = seal(k, b"share", aad=b"1->2")
>>> len(box) == NONCE + 5 + TAG, open_sealed(k, box, aad=b"1->2")
(True, b'share')
"""

from __future__ import annotations

import hashlib

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from cryptography.hazmat.primitives.serialization import (
    Encoding,
    NoEncryption,
    PrivateFormat,
    PublicFormat,
)

__all__ = ["keypair", "public_bytes", "private_bytes", "agree", "seal", "open_sealed",
           "AgreementMemo", "AESGCM", "NONCE", "TAG", "KEY_BYTES", "InvalidTag"]

NONCE, TAG, KEY_BYTES = 12, 16, 32


def keypair(raw: bytes) -> X25519PrivateKey:
    """The X25519 private key of 32 raw bytes (a ``ValueError`` for any other length)."""
    if len(raw) != 32:
        raise ValueError(f"an X25519 private key is 32 bytes; got {len(raw)}")
    return X25519PrivateKey.from_private_bytes(raw)


def public_bytes(key: X25519PrivateKey) -> bytes:
    """The 32 raw bytes of ``key``'s public key."""
    return key.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)


def private_bytes(key: X25519PrivateKey) -> bytes:
    """The 32 raw bytes of private key ``key`` (unencrypted)."""
    return key.private_bytes(Encoding.Raw, PrivateFormat.Raw, NoEncryption())


def agree(key: X25519PrivateKey, peer_public: bytes | X25519PublicKey, info: bytes) -> bytes:
    """X25519 with the peer's public key (32 raw bytes, or the key object), then HKDF-SHA256 to
    32 bytes bound to ``info``."""
    if not isinstance(peer_public, X25519PublicKey):
        peer_public = X25519PublicKey.from_public_bytes(peer_public)
    shared = key.exchange(peer_public)
    return HKDF(algorithm=hashes.SHA256(), length=KEY_BYTES, salt=None, info=info).derive(shared)


class _Ticket:
    """An agreement queued on an agreement process: frame id and index in it."""

    __slots__ = ("fid", "i")

    def __init__(self, fid: int, i: int):
        self.fid, self.i = fid, i


class AgreementMemo:
    """:func:`agree` for many parties in one process, each pair's key derived once.

    ``agree(a_sk, b_pk, info) == agree(b_sk, a_pk, info)``: in a simulation of both parties the
    second call can reuse the first's result.  The memo is keyed by the *pair* of public keys
    and ``info``, and a caller must present its own private key (whose public half is one of the
    pair), so it only ever receives the key it would have computed itself.  An entry is dropped
    after its second use (both ends); entries of an ``info`` more than ``keep`` distinct
    ``info`` values old are dropped too (a simulator's infos name the round).

    With a ``process`` (:class:`crowdlearn.crypto.agreement_process.AgreementProcess`, or any
    object with its ``submit``, ``result`` and ``drop``) the agreements can be computed ahead,
    beside the caller: a party says with :meth:`expect` which public keys its key will agree with (a
    SecAgg client, when its key list arrives); the memo queues the pairs not queued yet on the
    process, and :meth:`agree` waits for a queued pair's answer instead of computing it.  The
    same keys either way (tested).

    >>> memo = AgreementMemo()
    >>> a, b = keypair(bytes(range(32))), keypair(bytes(range(1, 33)))
    >>> memo.agree(a, public_bytes(b), b"x") == memo.agree(b, public_bytes(a), b"x")
    True
    >>> memo.exchanges, memo.hits
    (1, 1)
    """

    def __init__(self, keep: int = 4, *, process=None):
        self.keep = keep
        self.process = process
        self._by_info: dict[bytes, dict] = {}
        self._frames: dict[bytes, list] = {}                   # info -> frames queued for it
        self._public: dict[int, tuple] = {}
        self._peer_keys: dict[bytes, X25519PublicKey] = {}     # raw bytes -> parsed, once
        self.exchanges = 0
        self.hits = 0

    def _own_public(self, key: X25519PrivateKey) -> bytes:
        # the public half of a key object, computed once (ids are reused only after the object
        # dies: keep the object alongside)
        got = self._public.get(id(key))
        if got is None or got[0] is not key:
            got = self._remember_public(key, public_bytes(key))
        return got[1]

    def _remember_public(self, key: X25519PrivateKey, public: bytes) -> tuple:
        if len(self._public) > 100_000:
            self._public.clear()
        got = self._public[id(key)] = (key, public)
        return got

    def _info_memo(self, info: bytes) -> dict:
        memo = self._by_info.get(info)
        if memo is None:
            memo = self._by_info[info] = {}
            while len(self._by_info) > self.keep:
                old = next(iter(self._by_info))
                del self._by_info[old]
                if self.process is not None:
                    self.process.drop(self._frames.pop(old, ()))
        return memo

    def expect(self, key: X25519PrivateKey, public: bytes, peers, info: bytes) -> None:
        """The holder of ``key`` (whose public half is ``public``, as its owner computed it)
        will agree with each of ``peers`` under ``info``: queue the pairs not queued or known
        yet on the process, in one frame (without a process: only remembers ``public``)."""
        self._remember_public(key, public)
        if self.process is None:
            return
        memo = self._info_memo(info)
        todo, pairs = [], {}
        for peer in peers:
            pair = (public, peer) if public <= peer else (peer, public)
            if peer != public and pair not in memo and pair not in pairs:
                pairs[pair] = len(todo)
                todo.append(peer)
        if not todo:
            return
        fid = self.process.submit(private_bytes(key), todo, info)
        self._frames.setdefault(info, []).append(fid)
        for pair, i in pairs.items():
            memo[pair] = _Ticket(fid, i)

    def agree(self, key: X25519PrivateKey, peer_public: bytes, info: bytes) -> bytes:
        own = self._own_public(key)
        pair = (own, peer_public) if own <= peer_public else (peer_public, own)
        memo = self._info_memo(info)
        hit = memo.pop(pair, None)
        if hit is not None and not isinstance(hit, _Ticket):
            self.hits += 1
            return hit
        return self._derive(key, own, peer_public, pair, memo, hit, info)

    def agree_many(self, key: X25519PrivateKey, peers, info: bytes) -> list[bytes]:
        """``[self.agree(key, p, info) for p in peers]``, the caller's public key and the
        ``info``'s entries looked up once (a SecAgg client agrees with each of its peers in a
        row: 19,800 look-ups in a round of 100).

        >>> memo = AgreementMemo()
        >>> a, b, c = (keypair(bytes([i]) * 32) for i in (1, 2, 3))
        >>> peers = [public_bytes(b), public_bytes(c)]
        >>> memo.agree_many(a, peers, b"x") == [agree(a, p, b"x") for p in peers]
        True
        """
        own = self._own_public(key)
        memo = self._info_memo(info)
        out = []
        for peer_public in peers:
            pair = (own, peer_public) if own <= peer_public else (peer_public, own)
            hit = memo.pop(pair, None)
            if hit is not None and not isinstance(hit, _Ticket):
                self.hits += 1
                out.append(hit)
            else:
                out.append(self._derive(key, own, peer_public, pair, memo, hit, info))
        return out

    def _derive(self, key, own: bytes, peer_public: bytes, pair: tuple, memo: dict, hit,
                info: bytes) -> bytes:
        """A pair not derived yet: the process's answer to its ticket ``hit`` (if any), else
        computed here; kept for the other end."""
        derived = self.process.result(hit.fid, hit.i) if hit is not None else None
        if derived is None:
            # each public key is parsed once, not once per peer that agrees with it
            peer = self._peer_keys.get(peer_public)
            if peer is None:
                if len(self._peer_keys) > 100_000:
                    self._peer_keys.clear()
                peer = self._peer_keys[peer_public] = X25519PublicKey.from_public_bytes(
                    peer_public)
            derived = agree(key, peer, info)
        self.exchanges += 1
        if own != peer_public:
            memo[pair] = derived
        return derived

    def forget(self) -> None:
        if self.process is not None:
            for fids in self._frames.values():
                self.process.drop(fids)
        self._by_info.clear()
        self._frames.clear()
        self._public.clear()
        self._peer_keys.clear()


def seal(key: bytes | AESGCM, plaintext: bytes, *, aad: bytes) -> bytes:
    """AES-256-GCM with a nonce derived from the plaintext-independent ``aad`` (one message per
    key and header in this protocol, so the nonce is never reused under a key).  ``key``: 32
    bytes, or the ``AESGCM`` of those bytes (a party that seals and opens under one key builds
    it once: the same bytes either way)."""
    nonce = hashlib.sha256(aad).digest()[:NONCE]
    aead = key if isinstance(key, AESGCM) else AESGCM(key)
    return nonce + aead.encrypt(nonce, plaintext, aad)


def open_sealed(key: bytes | AESGCM, box: bytes, *, aad: bytes) -> bytes:
    """Decrypt and authenticate; raises ``InvalidTag`` on tampering or a wrong key."""
    aead = key if isinstance(key, AESGCM) else AESGCM(key)
    return aead.decrypt(box[:NONCE], box[NONCE:], aad)
