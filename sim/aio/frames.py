"""The connection layer of the asyncio runtime, sans-I/O: frames, control messages, key proofs.

A connection carries **frames**: a 4-byte big-endian length, then that many bytes, each the
:func:`sim.wire.encode` of one control message below.  A protocol message travels inside an
:class:`Envelope` as the bytes of its own ``wire.encode``, so what a machine receives is rebuilt
from exactly the bytes that crossed the socket.  :class:`FrameDecoder` turns received bytes into
frames (like h11's ``Connection.receive_data``/``next_event`` pair, it only ever sees bytes: the
asyncio side owns the socket); anything it cannot accept raises :class:`FrameError` and the
connection is dropped.

Identity: every node holds an X25519 key pair whose public half the hub knows (the roster).  The
hub answers a :class:`Hello` with a :class:`Challenge` (a fresh nonce and the hub's public key);
the node answers with :class:`Proof`, an HMAC-SHA256 of the nonce and its node id under a key
derived by HKDF-SHA256 from the X25519 secret it shares with the hub.  Only the holder of the
node's private key can compute it, so a peer that claims another node's identity is rejected.

Examples
--------
>>> dec = FrameDecoder(max_frame=64)
>>> data = frame(b"hello") + frame(b"") + frame(b"world")[:3]
>>> dec.feed(data[:2]), dec.feed(data[2:])
([], [b'hello', b''])
>>> dec.feed(frame(b"world")[3:])
[b'world']
>>> dec.feed(b"\\x00\\x00\\x01\\x00")
Traceback (most recent call last):
...
sim.aio.frames.FrameError: frame of 256 bytes exceeds the limit of 64
"""

from __future__ import annotations

import hashlib
import hmac
import struct
from dataclasses import dataclass

from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from sim import wire
from sim.wire import message

__all__ = ["FrameError", "FrameDecoder", "frame", "Hello", "Challenge", "Proof", "Welcome",
           "Envelope", "Presence", "Go", "Halted", "Stop", "Directory", "CONTROL", "node_key",
           "public_bytes", "prove", "verify", "parse"]

HEADER = struct.Struct(">I")
#: default largest frame a connection accepts (bytes)
MAX_FRAME = 1 << 28


class FrameError(ValueError):
    """Bytes on a connection that are not an acceptable frame: the peer misbehaved."""


def frame(body: bytes) -> bytes:
    """``body`` with its length prefix."""
    return HEADER.pack(len(body)) + body


class FrameDecoder:
    """Reassemble frames from received bytes, however the stream splits them.

    ``feed`` returns the frames completed so far; a declared length above ``max_frame`` raises
    :class:`FrameError` before anything is buffered for it; :meth:`close` raises it if the stream
    ended inside a frame (a truncated frame).
    """

    def __init__(self, *, max_frame: int = MAX_FRAME):
        self.max_frame = int(max_frame)
        self._buf = bytearray()

    @property
    def buffered(self) -> int:
        return len(self._buf)

    def feed(self, data: bytes) -> list[bytes]:
        self._buf += data
        out = []
        while len(self._buf) >= HEADER.size:
            (n,) = HEADER.unpack_from(self._buf, 0)
            if n > self.max_frame:
                raise FrameError(f"frame of {n} bytes exceeds the limit of {self.max_frame}")
            if len(self._buf) < HEADER.size + n:
                break
            out.append(bytes(self._buf[HEADER.size:HEADER.size + n]))
            del self._buf[:HEADER.size + n]
        return out

    def close(self) -> None:
        if self._buf:
            raise FrameError(f"connection closed inside a frame ({len(self._buf)} bytes "
                             "of it received)")


# ---------------------------------------------------------------- control messages
@message(0x7D01)
@dataclass(frozen=True)
class Hello:
    """Node → hub, first frame: who I claim to be; ``port``: where I accept direct connections
    from other nodes (0: nowhere)."""

    node: int | str
    version: int = 1
    port: int = 0


@message(0x7D02)
@dataclass(frozen=True)
class Challenge:
    """Hub → node: prove it, for this nonce; the hub's X25519 public key."""

    nonce: bytes
    hub_key: bytes


@message(0x7D03)
@dataclass(frozen=True)
class Proof:
    """Node → hub: HMAC of the nonce and node id under the HKDF of the shared X25519 secret."""

    tag: bytes


@message(0x7D04)
@dataclass(frozen=True)
class Welcome:
    """Hub → node: identity accepted."""

    node: int | str


@message(0x7D05)
@dataclass(frozen=True)
class Envelope:
    """A protocol message: ``body`` is its ``wire.encode``; the hub relays it to ``dst``."""

    src: int | str
    dst: int | str
    body: bytes


@message(0x7D06)
@dataclass(frozen=True)
class Presence:
    """Hub → server node: ``peer`` came online (``up``) or was lost."""

    peer: int | str
    up: bool


@message(0x7D07)
@dataclass(frozen=True)
class Go:
    """Hub → node: every node is connected; start the machine."""


@message(0x7D08)
@dataclass(frozen=True)
class Halted:
    """Node → hub: my machine halted the protocol."""


@message(0x7D09)
@dataclass(frozen=True)
class Stop:
    """Hub → node: the run is over (``reason``)."""

    reason: str


@message(0x7D0A)
@dataclass(frozen=True)
class Directory:
    """Hub → node: where other nodes accept direct connections (``hosts[i]:ports[i]`` for
    ``nodes[i]``) and the X25519 public key each must prove there (``keys[i]``)."""

    nodes: tuple
    hosts: tuple
    ports: tuple
    keys: tuple


CONTROL = (Hello, Challenge, Proof, Welcome, Envelope, Presence, Go, Halted, Stop, Directory)


def parse(body: bytes, *, allowed: tuple) -> object:
    """Decode one frame's body, accepting only the message types in ``allowed``.

    >>> parse(wire.encode(Go()), allowed=(Go,))
    Go()
    >>> parse(wire.encode(Go()), allowed=(Hello,))
    Traceback (most recent call last):
    ...
    sim.aio.frames.FrameError: unexpected Go frame
    """
    try:
        msg = wire.decode(body)
    except wire.WireError as exc:
        raise FrameError(str(exc)) from exc
    if not isinstance(msg, allowed):
        raise FrameError(f"unexpected {type(msg).__name__} frame")
    return msg


# ---------------------------------------------------------------- identity
def node_key(secret: bytes, node) -> X25519PrivateKey:
    """A node's X25519 key, derived from a deployment ``secret`` (a testbed's provisioning: who
    holds ``secret`` can derive every key; a real deployment would provision keys per device)."""
    raw = HKDF(hashes.SHA256(), 32, salt=b"crowdlearn-aio node key",
               info=repr(node).encode()).derive(secret)
    return X25519PrivateKey.from_private_bytes(raw)


def public_bytes(key: X25519PrivateKey) -> bytes:
    """The 32 raw bytes of ``key``'s X25519 public key (what a peer proves it holds)."""
    return key.public_key().public_bytes(serialization.Encoding.Raw,
                                         serialization.PublicFormat.Raw)


def _tag(shared: bytes, nonce: bytes, node) -> bytes:
    k = HKDF(hashes.SHA256(), 32, salt=nonce, info=b"crowdlearn-aio proof").derive(shared)
    return hmac.new(k, nonce + repr(node).encode(), hashlib.sha256).digest()


def prove(own: X25519PrivateKey, hub_key: bytes, nonce: bytes, node) -> bytes:
    """The node's answer to a :class:`Challenge`.

    >>> import os
    >>> hub, dev = X25519PrivateKey.generate(), node_key(b"s", 3)
    >>> n = os.urandom(16)
    >>> verify(hub, public_bytes(dev), n, 3, prove(dev, public_bytes(hub), n, 3))
    True
    >>> verify(hub, public_bytes(dev), n, 4, prove(dev, public_bytes(hub), n, 4))
    True
    >>> verify(hub, public_bytes(node_key(b"s", 4)), n, 4, prove(dev, public_bytes(hub), n, 4))
    False
    """
    return _tag(own.exchange(X25519PublicKey.from_public_bytes(hub_key)), nonce, node)


def verify(hub: X25519PrivateKey, node_pub: bytes, nonce: bytes, node, tag: bytes) -> bool:
    """Whether ``tag`` proves possession of the private key of ``node_pub``."""
    want = _tag(hub.exchange(X25519PublicKey.from_public_bytes(node_pub)), nonce, node)
    return hmac.compare_digest(want, bytes(tag))
