"""Crowdlearning (Chen et al., IEEE SECON 2018): the SliceNet protocol machines (server,
dominator, follower, dummy) built on the partitioning library :mod:`slicenet`.

The machines live in :mod:`crowdlearn.protocols.crowdlearning.machines`; this package is where
the protocol plugs into crowdlearn (``docs/design.md``, "One-way layers").
"""
