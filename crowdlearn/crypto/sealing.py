"""End-to-end sealed payloads between parties that each hold their own key.

Every party (a device, the server) owns a :class:`KeyRing`: an X25519 key pair generated from
the operating system's randomness and a random 16-byte *session salt*.  Only the public half and
the salt travel (a :class:`Card`, 48 bytes), in protocol messages; the server vouches for the
binding of a card to a node identity (it forwards each member the cards of its group), so a
party never derives a key from anything an outsider with the configuration could know.

Channels (per direction).  From ``a`` to ``b`` the AES-256-GCM key is
``HKDF-SHA256(X25519(a, b), salt = a's session salt, info = "crowdlearn-seal/v2" | purpose | a |
b)``: sender and receiver are ordered in ``info``, so ``a → b`` and ``b → a`` use different keys,
and a new session (a restart, a rerun with the same seed) has a new salt and therefore new keys.
The nonce is the channel's sequence number (96 bits, big-endian) and never repeats under a key.
The associated data binds the header: sender, receiver, message kind, group, attempt and sequence
number; a receiver rejects a payload whose header was changed (re-labelled, bounced back to its
sender, moved to another group, attempt or kind) and, on direct channels, any sequence number
not larger than the last one it accepted (replays and reordering).

Escrowed payloads (hand-overs that may become checkpoints).  The plaintext is encrypted once
under a fresh content key; the content key is wrapped for every group member the sender knows,
each wrap on the ``escrow`` channel to that member.  A relay that stores the payload (the server
keeps the last hand-over of each piece) cannot open it; any member — the dummy that takes over a
lost piece included — can.  Escrow wraps are delivered late by design, so instead of an ordering
check the receiver rejects a wrap sequence number it has already accepted.

Sizes: a direct payload costs ``12 + n + 16`` bytes; an escrowed one ``4 + 2 + 60·w + 12 + n +
16`` for ``w`` wrapped keys (attempt, count, one ``12 + 32 + 16`` wrap per member).

``deterministic_seed`` derives keys, salts and content keys from the seed and the party name:
**insecure** (anyone with the configuration can open everything, and two runs reuse nonces under
the same keys); meant only for reproducible tests of the cryptography itself.  Off by default.

Examples
--------
>>> alice, bob = KeyRing("alice"), KeyRing("bob")
>>> alice.learn("bob", bob.card()); bob.learn("alice", alice.card())
>>> h = Header("boundary", group=0, attempt=1)
>>> s = Sealed.of_bytes(alice, "bob", h, b"hello")
>>> s.wire_len() == len(s.wire_bytes()) == 12 + 5 + 16
True
>>> bob.open("alice", h, s.wire_bytes())
b'hello'
>>> bob.open("alice", h, s.wire_bytes())       # the same payload again: a replay
Traceback (most recent call last):
...
crowdlearn.errors.SealError: sealed payload from 'alice' rejected: sequence number 0 replayed or out of order (last accepted 0)
"""

from __future__ import annotations

import hashlib
import json
import os
import struct
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from crowdlearn.errors import SealError

__all__ = ["CARD", "NONCE", "TAG", "WRAP", "Card", "Header", "KeyRing", "SealError", "Sealed",
           "escrow_len", "party_label"]

NONCE = 12
TAG = 16
KEY = 32
SALT = 16
CARD = KEY + SALT                     # public key + session salt
WRAP = NONCE + KEY + TAG              # a content key wrapped for one member
_ESCROW_HEAD = struct.Struct("<IH")   # attempt, number of wraps


def party_label(party: Any) -> str:
    """The canonical name of a party in key derivation and headers: ``7`` and ``np.int64(7)``
    are the same party; ``"7"`` is another.

    >>> party_label(np.int64(7)) == party_label(7) != party_label("7")
    True
    """
    if type(party) is int:                  # the common case (not a bool: its type is bool)
        return f"i{party}"
    if isinstance(party, (bool, np.bool_)):
        raise TypeError(f"a party is an int, a str or a tuple of them; got {party!r}")
    if isinstance(party, (int, np.integer)):
        return f"i{int(party)}"
    if isinstance(party, str):
        return "s" + json.dumps(party)
    if isinstance(party, tuple):
        return "(" + ",".join(party_label(p) for p in party) + ")"
    raise TypeError(f"a party is an int, a str or a tuple of them; got {party!r}")


@dataclass(frozen=True)
class Card:
    """What a party publishes: its X25519 public key and its session salt (48 bytes)."""

    public: bytes
    salt: bytes

    def __post_init__(self):
        if len(self.public) != KEY or len(self.salt) != SALT:
            raise ValueError(f"a card is a {KEY}-byte key and a {SALT}-byte salt; got "
                             f"{len(self.public)} and {len(self.salt)} bytes")

    def to_bytes(self) -> bytes:
        return self.public + self.salt

    @classmethod
    def from_bytes(cls, data: bytes) -> Card:
        if len(data) != CARD:
            raise ValueError(f"a card is {CARD} bytes; got {len(data)}")
        return cls(bytes(data[:KEY]), bytes(data[KEY:]))


@dataclass(frozen=True)
class Header:
    """The part of a payload's envelope that is authenticated but not encrypted."""

    kind: str
    group: int
    attempt: int
    owner: int | None = None     # whose weights (hand-overs, checkpoints); not on the wire


def _ad(src: str, dst: str, h: Header, seq: int) -> bytes:
    fields = ["crowdlearn-seal/v2", src, dst, h.kind, int(h.group), int(h.attempt), int(seq)]
    if h.owner is not None:        # bound, not sent: the receiver names the owner it expects
        fields.append(int(h.owner))
    return json.dumps(fields).encode()


def escrow_len(nbytes: int, wraps: int) -> int:
    """Wire size of an escrowed payload of ``nbytes`` wrapped for ``wraps`` members."""
    return _ESCROW_HEAD.size + WRAP * wraps + NONCE + nbytes + TAG


class KeyRing:
    """One party's key pair, session salt, the cards it has learnt, and its channel state.

    Parameters
    ----------
    party : the owner (a device id or ``"server"``).
    deterministic_seed : if given, derive the key pair, salt and content keys from it —
        **insecure**, for reproducible tests only (see the module docstring).
    """

    def __init__(self, party: Any, *, deterministic_seed: int | None = None):
        self.party = party
        self.label = party_label(party)
        self._det = None if deterministic_seed is None else \
            f"crowdlearn-insecure/{int(deterministic_seed)}/{self.label}"
        if self._det is None:
            self._priv = X25519PrivateKey.generate()
            self.salt = os.urandom(SALT)
        else:
            self._priv = X25519PrivateKey.from_private_bytes(self._derive("x25519"))
            self.salt = self._derive("salt")[:SALT]
        self.public = self._priv.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)
        self._cards: dict[str, tuple[Any, Card]] = {}
        self._keys: dict[tuple, AESGCM] = {}
        self._raw: dict[tuple, bytes] = {}
        self._next_seq: dict[tuple, int] = {}
        self._last_seen: dict[str, int] = {}
        self._escrow_seen: dict[str, set] = {}
        self._content_keys = 0

    def _derive(self, what: str) -> bytes:
        return hashlib.sha256(f"{self._det}/{what}".encode()).digest()

    # ------------------------------------------------------------- cards
    def card(self) -> Card:
        return Card(self.public, self.salt)

    def learn(self, peer: Any, card: Card) -> None:
        """Record ``peer``'s card (as vouched for by the server).  A new card (the peer
        restarted) replaces the old one and resets what was accepted from it."""
        label = party_label(peer)
        old = self._cards.get(label)
        if old is not None and old[1] == card:
            return
        self._cards[label] = (peer, card)
        self._keys = {k: v for k, v in self._keys.items() if k[1] != label}
        self._raw = {k: v for k, v in self._raw.items() if k[1] != label}
        self._last_seen.pop(label, None)
        self._escrow_seen.pop(label, None)

    def knows(self, peer: Any) -> bool:
        return party_label(peer) in self._cards

    def peers(self) -> list:
        """Every party whose card this ring holds."""
        return [p for p, _ in self._cards.values()]

    # ------------------------------------------------------------- keys
    def _card_of(self, peer: Any) -> Card:
        try:
            return self._cards[party_label(peer)][1]
        except KeyError:
            raise SealError(f"no vouched key for {peer!r}: its card never reached "
                            f"{self.party!r}") from None

    def channel_key(self, peer: Any, *, sending: bool, purpose: str = "direct") -> bytes:
        """The raw 32-byte AES key of the channel to (``sending``) or from ``peer``."""
        label = party_label(peer)
        k = (purpose, label, sending)
        if k not in self._raw:
            card = self._card_of(peer)
            shared = self._priv.exchange(X25519PublicKey.from_public_bytes(card.public))
            src, dst = (self.label, label) if sending else (label, self.label)
            salt = self.salt if sending else card.salt
            self._raw[k] = HKDF(algorithm=hashes.SHA256(), length=KEY, salt=salt,
                                info=f"crowdlearn-seal/v2|{purpose}|{src}|{dst}".encode()
                                ).derive(shared)
        return self._raw[k]

    def _aead(self, peer: Any, *, sending: bool, purpose: str) -> AESGCM:
        k = (purpose, party_label(peer), sending)
        if k not in self._keys:
            self._keys[k] = AESGCM(self.channel_key(peer, sending=sending, purpose=purpose))
        return self._keys[k]

    def reserve(self, peer: Any, purpose: str = "direct") -> int:
        """The next sequence number (= nonce) of the channel to ``peer``."""
        k = (purpose, party_label(peer))
        n = self._next_seq.get(k, 0)
        if n >= 1 << 64:
            raise SealError(f"channel to {peer!r} exhausted its nonces")
        self._next_seq[k] = n + 1
        return n

    def _content_key(self) -> bytes:
        if self._det is None:
            return AESGCM.generate_key(bit_length=256)
        self._content_keys += 1
        return self._derive(f"content/{self._content_keys}")

    # ------------------------------------------------------------- direct channel
    def seal(self, dst: Any, header: Header, plaintext: bytes, *, seq: int | None = None) -> bytes:
        """``nonce ‖ AES-GCM(plaintext, ad = header)`` on the channel to ``dst``."""
        seq = self.reserve(dst) if seq is None else seq
        nonce = seq.to_bytes(NONCE, "big")
        ad = _ad(self.label, party_label(dst), header, seq)
        return nonce + self._aead(dst, sending=True, purpose="direct").encrypt(nonce, plaintext, ad)

    def open(self, src: Any, header: Header, blob: bytes) -> bytes:
        """Open a direct payload from ``src`` under ``header``; raise :class:`SealError` if it
        was forged, corrupted, re-labelled, bounced, replayed or reordered."""
        label = party_label(src)
        blob = bytes(blob)
        if len(blob) < NONCE + TAG:
            raise SealError(f"sealed payload from {src!r} rejected: {len(blob)} bytes is too short")
        seq = int.from_bytes(blob[:NONCE], "big")
        last = self._last_seen.get(label, -1)
        if seq <= last:
            raise SealError(f"sealed payload from {src!r} rejected: sequence number {seq} "
                            f"replayed or out of order (last accepted {last})")
        try:
            plain = self._aead(src, sending=False, purpose="direct").decrypt(
                blob[:NONCE], blob[NONCE:], _ad(label, self.label, header, seq))
        except InvalidTag:
            raise SealError(f"sealed payload from {src!r} rejected: authentication failed "
                            f"(wrong key, corrupted, or header {header} altered)") from None
        self._last_seen[label] = seq
        return plain

    # ------------------------------------------------------------- escrow
    def seal_escrow(self, roster: Sequence, header: Header, plaintext: bytes, *,
                    seqs: Sequence[int] | None = None) -> bytes:
        """Encrypt once, wrap the content key for every member of ``roster``."""
        seqs = [self.reserve(m, "escrow") for m in roster] if seqs is None else list(seqs)
        key = self._content_key()
        out = [_ESCROW_HEAD.pack(int(header.attempt), len(roster))]
        for m, seq in zip(roster, seqs, strict=True):
            nonce = seq.to_bytes(NONCE, "big")
            ad = _ad(self.label, party_label(m), header, seq)
            out.append(nonce + self._aead(m, sending=True, purpose="escrow").encrypt(nonce, key, ad))
        nonce = bytes(NONCE)        # the content key is fresh for every payload
        out.append(nonce + AESGCM(key).encrypt(nonce, plaintext, _ad(self.label, "group",
                                                                     header, 0)))
        return b"".join(out)

    @staticmethod
    def escrow_attempt(blob: bytes) -> int:
        """The attempt an escrowed payload was sealed in (authenticated when opened)."""
        if len(blob) < _ESCROW_HEAD.size:
            raise SealError(f"escrowed payload of {len(blob)} bytes is too short")
        return _ESCROW_HEAD.unpack_from(blob, 0)[0]

    def open_escrow(self, src: Any, header: Header, blob: bytes) -> bytes:
        """Open an escrowed payload sealed by ``src``: find the wrap meant for this party."""
        label = party_label(src)
        blob = bytes(blob)
        if len(blob) < _ESCROW_HEAD.size:
            raise SealError(f"escrowed payload from {src!r} rejected: too short")
        attempt, w = _ESCROW_HEAD.unpack_from(blob, 0)
        body = _ESCROW_HEAD.size + WRAP * w
        if attempt != header.attempt or len(blob) < body + NONCE + TAG:
            raise SealError(f"escrowed payload from {src!r} rejected: attempt {attempt} for "
                            f"{header.attempt}, or {len(blob)} bytes for {w} wraps")
        aead = self._aead(src, sending=False, purpose="escrow")
        seen = self._escrow_seen.setdefault(label, set())
        for i in range(w):
            wrap = blob[_ESCROW_HEAD.size + WRAP * i:_ESCROW_HEAD.size + WRAP * (i + 1)]
            seq = int.from_bytes(wrap[:NONCE], "big")
            try:
                key = aead.decrypt(wrap[:NONCE], wrap[NONCE:], _ad(label, self.label, header, seq))
            except InvalidTag:
                continue       # another member's wrap
            if seq in seen:
                raise SealError(f"escrowed payload from {src!r} rejected: wrap {seq} replayed")
            try:
                plain = AESGCM(key).decrypt(blob[body:body + NONCE], blob[body + NONCE:],
                                            _ad(label, "group", header, 0))
            except InvalidTag:
                raise SealError(f"escrowed payload from {src!r} rejected: body altered") \
                    from None
            seen.add(seq)
            return plain
        raise SealError(f"escrowed payload from {src!r} rejected: no wrap for {self.party!r} "
                        f"opens under header {header}")


class Sealed:
    """A payload sealed by ``ring``'s owner for ``dst`` (or, escrowed, for a roster of group
    members); the wire sees ``wire_len()`` opaque bytes.

    The sequence numbers (nonces) are taken when the object is made, in sending order; the
    plaintext may be given lazily (a callable, or nothing for a zero buffer of the declared
    length) so that a simulation sizes a message without computing or encrypting it, and
    :meth:`wire_bytes` encrypts whenever the message is encoded.
    """

    __slots__ = ("ring", "dst", "header", "length", "roster", "contents", "_seqs", "_plain",
                 "_blob")

    def __init__(self, ring: KeyRing, dst: Any, header: Header, length: int,
                 plaintext: bytes | Callable[[], bytes] | None, *,
                 roster: Sequence | None = None, contents: Any = None):
        if length < 0:
            raise ValueError(f"length must be >= 0; got {length}")
        self.ring, self.dst, self.header, self.length = ring, dst, header, int(length)
        self.roster = None if roster is None else tuple(roster)
        self._seqs = [ring.reserve(dst)] if roster is None else \
            [ring.reserve(m, "escrow") for m in self.roster]
        self._plain = plaintext
        self._blob: bytes | None = None
        # what the recipient reads once it opened the payload, as values (possibly deferred,
        # not yet computed): a simulation's receiver takes them instead of decrypting; on a
        # real wire only the encrypted plaintext travels
        self.contents = contents

    @classmethod
    def of_bytes(cls, ring: KeyRing, dst: Any, header: Header, data: bytes, *,
                 roster: Sequence | None = None) -> Sealed:
        return cls(ring, dst, header, len(data), data, roster=roster)

    @classmethod
    def of_arrays(cls, ring: KeyRing, dst: Any, header: Header, arrays_fn: Callable[[], list],
                  nbytes: int, *, roster: Sequence | None = None, contents: Any = None) -> Sealed:
        """Seal float32 arrays produced lazily by ``arrays_fn`` (``nbytes`` of them in all);
        ``contents``: the same values as the recipient will read them (see ``contents``)."""
        def plain() -> bytes:
            data = b"".join(np.ascontiguousarray(a, np.float32).tobytes() for a in arrays_fn())
            if len(data) != nbytes:
                raise ValueError(f"sealed arrays are {len(data)} bytes, declared {nbytes}")
            return data
        return cls(ring, dst, header, nbytes, plain, roster=roster, contents=contents)

    @classmethod
    def opaque(cls, ring: KeyRing, dst: Any, header: Header, nbytes: int, *,
               roster: Sequence | None = None) -> Sealed:
        """A payload whose contents the simulation does not materialise (a zero buffer of the
        exact length is encrypted when the message is encoded)."""
        return cls(ring, dst, header, nbytes, None, roster=roster)

    def plaintext(self) -> bytes:
        """What the recipient reads once it opens the payload (a simulation's shortcut to the
        contents: the blob need not be encrypted and decrypted to learn them)."""
        p = self._plain
        return bytes(self.length) if p is None else (p() if callable(p) else p)

    def wire_len(self) -> int:
        if self.roster is None:
            return NONCE + self.length + TAG
        return escrow_len(self.length, len(self.roster))

    def wire_bytes(self) -> bytes:
        if self._blob is None:
            p = self._plain
            data = bytes(self.length) if p is None else (p() if callable(p) else p)
            if len(data) != self.length:
                raise ValueError(f"plaintext is {len(data)} bytes, declared {self.length}")
            if self.roster is None:
                self._blob = self.ring.seal(self.dst, self.header, data, seq=self._seqs[0])
            else:
                self._blob = self.ring.seal_escrow(self.roster, self.header, data,
                                                   seqs=self._seqs)
        return self._blob
