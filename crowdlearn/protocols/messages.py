"""Wire messages of the built-in protocols (frozen dataclasses with a wire tag each)."""

from __future__ import annotations

from dataclasses import dataclass

from sim.wire import message


@message(0x0101)
@dataclass(frozen=True)
class RoundStart:
    """Server → client: train from ``weights`` for this round."""

    round: int
    weights: tuple
    epochs: int
    batch_size: int
    lr: float

    def __post_init__(self):
        if self.round < 0 or self.epochs < 1 or self.lr <= 0:
            raise ValueError(f"bad RoundStart: round={self.round} epochs={self.epochs} lr={self.lr}")


@message(0x0102)
@dataclass(frozen=True)
class Update:
    """Client → server: the locally trained weights and the sample count that weights them."""

    round: int
    weights: tuple
    num_samples: int

    def __post_init__(self):
        if self.num_samples < 0:
            raise ValueError(f"num_samples must be >= 0; got {self.num_samples}")


@message(0x0103)
@dataclass(frozen=True)
class Decline:
    """Client → server: this device cannot take part in ``round`` (e.g. not enough memory)."""

    round: int
    reason: str
