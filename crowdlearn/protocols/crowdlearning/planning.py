"""Pure planning of one pass (spec §3): who holds which owners, the boundary traffic between
participants, and each participant's compute and memory.  The server turns these into
:class:`~crowdlearn.protocols.crowdlearning.messages.PassPlan` messages."""

from __future__ import annotations

from typing import Any

from crowdlearn.protocols.crowdlearning.layout import DOMINATOR, Layout

__all__ = ["boundary_sends", "owners_by_device", "participant_cost"]


def owners_by_device(holders: dict, dominator: Any) -> dict:
    """``{device: [owner ids]}``: the dominator's layers (``DOMINATOR``) first, then the pieces
    each holder holds, in piece order.

    Examples
    --------
    >>> owners_by_device({0: "b", 1: "c", 2: "b"}, "a")
    {'a': [-1], 'b': [0, 2], 'c': [1]}
    """
    owners: dict = {} if dominator is None else {dominator: [DOMINATOR]}
    for piece, device in holders.items():
        owners.setdefault(device, []).append(piece)
    return owners


def boundary_sends(layout: Layout, owners_of: dict, samples: int) -> dict:
    """Bytes of boundary traffic per participant pair over a pass of ``samples`` samples:
    ``{a: {b: nbytes}}``, the sum over the owners each holds of ``layout.pair_floats`` (float32;
    pairs that exchange nothing are absent)."""
    pair = layout.pair_floats
    sends: dict = {d: {} for d in owners_of}
    for a, oa in owners_of.items():
        for b, ob in owners_of.items():
            if a == b:
                continue
            floats = int(sum(pair[x + 1, y + 1] for x in oa for y in ob))
            if floats:
                sends[a][b] = 4 * floats * samples
    return sends


def participant_cost(layout: Layout, owners, samples: int) -> tuple[float, int]:
    """``(flops, memory_bytes)`` of a participant holding ``owners`` in a pass of ``samples``
    samples: its share of the training FLOPs, and 12 bytes per parameter held (weights,
    gradient, update)."""
    flops = layout.flops_share(owners) * (layout.train_flops_per_sample * samples)
    return flops, 12 * sum(int(layout.params_per_owner[o + 1]) for o in owners)
