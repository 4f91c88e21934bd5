"""Error families.

``CrowdlearnError`` is the root for problems a user can fix (bad configuration, missing data, a
model the partitioner cannot handle); the CLI turns it into a message and exit status 2.  Bugs in
the simulator raise ordinary Python exceptions.  A peer that misbehaves inside a simulation is not
an error of ours: a machine that receives bytes which do not decode (:class:`WireError`) or a sealed
payload that does not open (:class:`SealError`) drops the message and records it.
"""

from __future__ import annotations

from sim.wire import WireError
from slicenet.errors import UserError

__all__ = ["ConfigError", "CrowdlearnError", "DatasetNotFoundError", "SealError", "WireError"]

#: A problem the user can fix; its message says what is wrong and how to fix it.  The root class
#: lives in the bottom layer (:mod:`slicenet.errors`) so that the partitioner and the simulator
#: raise it too; this is the same class under the name the CLI and the protocols use.
CrowdlearnError = UserError


class ConfigError(CrowdlearnError):
    """A configuration with one or more problems; ``problems`` lists every one found."""

    def __init__(self, problems: list[str]):
        self.problems = list(problems)
        lines = "\n".join(f"  - {p}" for p in self.problems)
        super().__init__(f"invalid configuration ({len(self.problems)} problem(s)):\n{lines}")


class DatasetNotFoundError(CrowdlearnError):
    """A dataset that is not on this machine; the message lists where we looked and how to get it."""


class SealError(CrowdlearnError, ValueError):
    """A sealed payload that does not open: forged, corrupted, re-labelled, bounced, replayed,
    out of order, or from a party whose key was never vouched for.  The receiver drops it."""
