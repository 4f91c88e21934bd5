"""Models reported in parts: no machine holds a distributed model whole (a Crowdlearning group's
weights live on its members, each holding the entries it owns), so each holder reports its
entries (``Report("model_part", (flat indices, values), tags)``) and one machine reports the
model itself with a :class:`ModelParts` value saying how to join them.  A runtime passes every
report through one :class:`PartsBoard` before the monitor (and any observer) sees it: the part
reports are kept, and the model report comes out with the joined weight list as its value.

A part's tags name the model report it belongs to: ``("model", name)`` plus the tags the model
report carries to identify it (``round`` and ``group``).  Entries no part covered keep their
value in the previous joined model of the same name and group, or the ``base`` values.

Examples
--------
>>> import numpy as np
>>> from sim.machine import Report
>>> board = PartsBoard()
>>> tags = (("model", "group_model"), ("round", 0), ("group", 3))
>>> board.see(Report("model_part", (np.array([0, 2]), np.array([5.0, 6.0])), tags))
Report(name='model_part', ...)
>>> rep = board.see(Report("group_model", ModelParts([(2, 2)], np.zeros(4, np.float32)),
...                        (("round", 0), ("group", 3))))
>>> rep.value[0].tolist()
[[5.0, 0.0], [6.0, 0.0]]
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from sim.machine import Report

__all__ = ["ModelParts", "PartsBoard"]


@dataclass(frozen=True, eq=False)
class ModelParts:
    """The value of a model report whose entries its holders reported as parts: the weight
    shapes and the values of entries that no part covers (the initial model)."""

    shapes: Sequence[tuple]
    base: np.ndarray


class PartsBoard:
    """Joins ``model_part`` reports into the model reports that refer to them."""

    def __init__(self):
        self._parts: dict[tuple, list] = {}
        self._last: dict[tuple, np.ndarray] = {}

    def see(self, rep: Report) -> Report:
        """Record a part (returned as is), or return a model report with its joined weights."""
        if rep.name == "model_part":
            key = (rep.tag("model"), rep.tag("round"), rep.tag("group"))
            self._parts.setdefault(key, []).append(rep.value)
            return rep
        if not isinstance(rep.value, ModelParts):
            return rep
        spec: ModelParts = rep.value
        flat = self._last.get((rep.name, rep.tag("group")))
        flat = np.array(spec.base if flat is None else flat, np.float32, copy=True)
        for idx, values in self._parts.pop((rep.name, rep.tag("round"), rep.tag("group")), ()):
            flat[np.asarray(idx, np.int64)] = values
        self._last[(rep.name, rep.tag("group"))] = flat
        out: list[Any] = []
        start = 0
        for shape in spec.shapes:
            n = int(np.prod(shape))
            out.append(flat[start:start + n].reshape(shape).copy())
            start += n
        return Report(rep.name, out, rep.tags)
