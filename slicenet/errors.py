"""The root of the errors a user can fix, shared by the three packages.

:mod:`slicenet` is the bottom layer (``slicenet`` ← ``sim`` ← ``crowdlearn``, see
``docs/design.md``, "One-way layers"), so the root class lives here and the layers above extend
it: :class:`crowdlearn.errors.CrowdlearnError` *is* :class:`UserError` (an alias), so
``except CrowdlearnError`` in the CLI catches a bad model from the partitioner, a bad device
profile from the simulator and a bad configuration alike, and turns each into a message and exit
status 2.  Bugs raise ordinary Python exceptions.

Examples
--------
>>> from crowdlearn.errors import CrowdlearnError
>>> CrowdlearnError is UserError
True
"""

from __future__ import annotations


class UserError(Exception):
    """A problem the user can fix; its message says what is wrong and how to fix it."""
