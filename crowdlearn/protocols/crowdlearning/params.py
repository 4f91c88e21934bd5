"""The parameters of the Crowdlearning machines (from the ``[slicenet]`` config section)."""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["SliceParams"]


@dataclass(frozen=True)
class SliceParams:
    """The Crowdlearning machines' parameters, resolved by the builder from the ``[slicenet]``
    section (:meth:`~crowdlearn.protocols.crowdlearning.config.SlicenetParams.slice_params`)."""

    epochs: int
    group_size: int
    pieces: int
    theta: float = 0.5
    tau: float = 0.5
    omega: int = 0                # 0 → number of groups
    batch_size: int = 32
    lr: float = 0.05
    peer_to_peer: bool = False
    pipeline_latency: bool = True

    def __post_init__(self):
        if not 0 <= self.theta <= 1:
            raise ValueError(f"theta must be in [0, 1]; got {self.theta}")
        if not 0 <= self.tau <= 1:
            raise ValueError(f"tau must be in [0, 1]; got {self.tau}")
        if self.group_size < 1 or self.pieces < 0 or self.epochs < 1:
            raise ValueError("group_size >= 1, pieces >= 0, epochs >= 1 required")
