"""The FM protocol's wire messages."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from sim.wire import message


# ---------------------------------------------------------------- messages
@message(0x0401)
@dataclass(frozen=True, eq=False)
class FMRound:
    """Server → participant: run round ``round`` from the global FM parameters ``params``.

    ``params`` is ``None`` in round 0 (fit alone); ``hidden`` carries the frozen hidden layers
    (deep mode) the first time a participant is addressed, else ``None``.
    """

    round: int
    params: np.ndarray | None
    hidden: tuple | None = None


@message(0x0402)
@dataclass(frozen=True, eq=False)
class FMUpload:
    """Participant → server: ``v_i = w_i + u_i`` (float32, the FM parameter vector)."""

    round: int
    params: np.ndarray

    def __post_init__(self):
        if not isinstance(self.params, np.ndarray) or self.params.ndim != 1 \
                or self.params.dtype != np.float32:
            raise ValueError("params must be a 1-D float32 array")


@message(0x0403)
@dataclass(frozen=True)
class FMDecline:
    """Participant → server: cannot take part in round ``round`` (e.g. ``"memory"``)."""

    round: int
    reason: str
