"""The Crowdlearning messages (frozen dataclasses with wire codes 0x0301-0x030C): pass plans,
relayed sealed payloads, sharing uploads and downloads, key announcements and directories."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from crowdlearn.crypto.sealing import CARD
from crowdlearn.protocols.crowdlearning.layout import DOMINATOR
from crowdlearn.protocols.validate import sparse_vector
from sim.machine import NodeId
from sim.wire import message

__all__ = ["Abort", "DEVICE_KINDS", "Download", "KINDS", "KeyAnnounce", "KeyDirectory",
           "PassDone", "PassPlan", "ROLES", "Relay", "Relayed", "SERVER", "SERVER_SRC",
           "ShareDone", "ShareRequest", "Upload"]

SERVER: NodeId = "server"
SERVER_SRC = -1           # ``Relayed.src`` / ``KeyDirectory.nodes`` entry meaning the server
ROLES = ("dominator", "follower", "dummy")
DEVICE_KINDS = ("handover", "boundary")     # what a device may ask the server to relay
KINDS = DEVICE_KINDS + ("checkpoint",)


@message(0x0301)
@dataclass(frozen=True)
class PassPlan:
    """Server → participant: your part in one pass."""

    group: int
    attempt: int             # unique per (group, pass attempt); stale messages carry old ids
    role: str                # "dominator" | "follower" | "dummy"
    pieces: tuple            # pieces this device holds in the pass
    send_handover: tuple     # ((dst, nbytes, owner), ...) weights to hand over before the pass
    expect_handover: int     # hand-over payloads to receive before computing
    send_boundary: tuple     # ((dst, nbytes), ...) this pass's boundary traffic
    expect_boundary: int     # boundary payloads to receive during the pass
    flops: float
    memory_bytes: int
    links: tuple             # ((src, dst), ...) the pass's boundary links: its pipeline's
                             # latency chain, charged by the runtime (spec §3); () for none
    fill_batches: float = 0.0   # (stages − 1) / batches: the fill and drain in batch times

    def __post_init__(self):
        _non_negative(self, "group", "attempt", "expect_handover", "expect_boundary", "flops",
                      "memory_bytes", "fill_batches")
        if self.role not in ROLES:
            raise ValueError(f"role must be one of {ROLES}; got {self.role!r}")
        if not isinstance(self.links, tuple) or not all(
                isinstance(link, tuple) and len(link) == 2 for link in self.links):
            raise ValueError(f"links must be a tuple of (src, dst) pairs; got {self.links!r}")


@message(0x0302)
@dataclass(frozen=True)
class Relay:
    """Device → server: forward ``payload`` (sealed for ``dst``) to ``dst``."""

    group: int
    attempt: int
    dst: int
    kind: str                # "handover" | "boundary"
    payload: Any             # bytes on a real wire, a :class:`Sealed` in a simulation

    def __post_init__(self):
        _non_negative(self, "group", "attempt")
        _kind(self.kind, DEVICE_KINDS)


@message(0x0303)
@dataclass(frozen=True)
class Relayed:
    """Server → device (or device → device in peer-to-peer mode): a sealed payload."""

    group: int
    attempt: int
    src: int                 # the sealing device, or SERVER_SRC
    kind: str
    payload: Any

    def __post_init__(self):
        _non_negative(self, "group", "attempt")
        _kind(self.kind, KINDS)


@message(0x0304)
@dataclass(frozen=True)
class PassDone:
    """Participant → server: its part of pass ``attempt`` of ``group`` is done."""

    group: int
    attempt: int

    def __post_init__(self):
        _non_negative(self, "group", "attempt")


@message(0x0305)
@dataclass(frozen=True)
class Abort:
    """Server → participants: pass ``attempt`` of ``group`` is abandoned (a participant was
    lost); drop its result."""

    group: int
    attempt: int

    def __post_init__(self):
        _non_negative(self, "group", "attempt")


@message(0x0306)
@dataclass(frozen=True)
class ShareRequest:
    """Server → member: upload the top θ of the weights you own, then ask for the global ones."""

    group: int
    epoch: int
    owners: tuple            # pieces held (DOMINATOR for the dominator's layers)

    def __post_init__(self):
        _non_negative(self, "group", "epoch")
        if not all(isinstance(o, (int, np.integer)) and o >= DOMINATOR for o in self.owners):
            raise ValueError(f"owners must be piece numbers or {DOMINATOR}; got {self.owners}")


@message(0x0307)
@dataclass(frozen=True, eq=False)
class Upload:
    """Device → server, end of an epoch: the plain values of the top θ of the weights it owns
    (flat ``indices``, ``values``)."""

    group: int
    epoch: int
    indices: np.ndarray      # int32 flat parameter indices
    values: np.ndarray       # float32 plain weight values

    def __post_init__(self):
        _non_negative(self, "group", "epoch")
        sparse_vector(self.indices, self.values)


@message(0x0309)
@dataclass(frozen=True, eq=False)
class Download:
    """Server → device: the window averages of the weights it owns whose upload count in the
    window exceeds ω·τ."""

    group: int
    epoch: int
    indices: np.ndarray
    values: np.ndarray

    def __post_init__(self):
        _non_negative(self, "group", "epoch")
        sparse_vector(self.indices, self.values)


@message(0x030A)
@dataclass(frozen=True)
class ShareDone:
    """Member → server: the download is applied; the epoch may close."""

    group: int
    epoch: int

    def __post_init__(self):
        _non_negative(self, "group", "epoch")


@message(0x030B)
@dataclass(frozen=True)
class KeyAnnounce:
    """Device → server: my public key and session salt (a :class:`~crowdlearn.crypto.Card`).
    The private key never leaves the device."""

    card: bytes

    def __post_init__(self):
        if len(self.card) != CARD:
            raise ValueError(f"a card is {CARD} bytes; got {len(self.card)}")


@message(0x030C)
@dataclass(frozen=True)
class KeyDirectory:
    """Server → member: the cards of the group's members (``SERVER_SRC`` is the server's own),
    vouched for by the server as belonging to those node ids."""

    group: int
    nodes: tuple
    cards: tuple

    def __post_init__(self):
        _non_negative(self, "group")
        if len(self.nodes) != len(self.cards) or \
                not all(isinstance(c, bytes) and len(c) == CARD for c in self.cards) or \
                not all(isinstance(n, (int, np.integer)) for n in self.nodes):
            raise ValueError(f"a directory pairs int node ids with {CARD}-byte cards; got "
                             f"{len(self.nodes)} nodes, {len(self.cards)} cards")


def _non_negative(msg: Any, *names: str) -> None:
    for name in names:
        v = getattr(msg, name)
        if type(v) is int and v >= 0:       # the common case, decided at once
            continue
        if isinstance(v, (bool, np.bool_)) or not isinstance(v, (int, float, np.number)) \
                or not v >= 0:
            raise ValueError(f"{type(msg).__name__}.{name} must be a number >= 0; got {v!r}")


def _kind(kind: str, allowed: tuple) -> None:
    if kind not in allowed:
        raise ValueError(f"kind must be one of {allowed}; got {kind!r}")
