"""Crowdlearning (SliceNet) as sans-I/O machines: groups of phones train model-parallel slices.

References: L. Chen, T. Jung, H. Du, J. Qian, J. Hou, X.-Y. Li, "Crowdlearning: Crowded Deep
Learning with Data Privacy", IEEE SECON 2018.  ``docs/design.md`` lists every choice the paper
leaves open (marked [ours] there and here).

Pieces of the design, one module each (this module gathers their public names):

* :mod:`.layout` — :class:`Layout`: which piece (or the dominator) owns every parameter of a
  dense model under a :class:`~slicenet.plan.SlicePlan` (source ownership), the boundary
  traffic per sample between owners, and each owner's share of the training FLOPs.
* :mod:`.passjob` — :class:`SlicePassJob`: one participant's part of a pass, carrying the
  weights it holds; the executor runs a pass once all its parts are in (the fused path: the
  group's whole network trained on the dominator's batches, proven equal to piece-by-piece
  execution) and gives every participant back its own entries.  Each device holds only the
  weights it owns and learns others' only from hand-overs, checkpoints and downloads (issue 8).
* :mod:`.server` / :mod:`.device` — :class:`SlicingServer` / :class:`SliceDevice`, the
  protocol: passes with shuffling and weight hand-over, relayed (or peer-to-peer) sealed
  traffic, dummy take-over, top-θ sharing through a sliding-window parameter server
  (:mod:`.sharing`); the pass's plan per participant in :mod:`.planning`, the messages in
  :mod:`.messages`, the parameters in :mod:`.params`.
* Keys and checks: every device has its own :class:`~crowdlearn.crypto.KeyRing` and announces
  only its public card (:class:`KeyAnnounce`); the server vouches for the cards of a group
  (:class:`KeyDirectory`) and never holds a key that opens device traffic: boundary payloads are
  sealed device to device, hand-overs (the server's take-over checkpoints) escrowed for the
  group's members.  The server checks membership, ownership, ranges, sizes and finiteness of
  everything a device sends, and a device checks its downloads; what fails is recorded as
  ``peer_misbehaved`` and dropped (``docs/design.md``, *Secure channels and hostile input*).
"""

from __future__ import annotations

from crowdlearn.protocols.crowdlearning.device import SliceDevice
from crowdlearn.protocols.crowdlearning.layout import (
    DOMINATOR,
    Layout,
    description_for,
    layout_from_plan,
    whole_model_layout,
)
from crowdlearn.protocols.crowdlearning.messages import (
    DEVICE_KINDS,
    KINDS,
    ROLES,
    SERVER,
    SERVER_SRC,
    Abort,
    Download,
    KeyAnnounce,
    KeyDirectory,
    PassDone,
    PassPlan,
    Relay,
    Relayed,
    ShareDone,
    ShareRequest,
    Upload,
)
from crowdlearn.protocols.crowdlearning.params import SliceParams
from crowdlearn.protocols.crowdlearning.passjob import PassPromise, SlicePassJob
from crowdlearn.protocols.crowdlearning.server import SlicingServer
from crowdlearn.protocols.crowdlearning.sharing import SlidingWindow

__all__ = ["Abort", "DEVICE_KINDS", "DOMINATOR", "Download", "KINDS", "KeyAnnounce",
           "KeyDirectory", "Layout", "PassDone", "PassPlan", "PassPromise", "ROLES", "Relay",
           "Relayed", "SERVER", "SERVER_SRC", "ShareDone", "ShareRequest", "SliceDevice",
           "SliceParams", "SlicePassJob", "SlicingServer", "SlidingWindow", "Upload",
           "description_for", "layout_from_plan", "whole_model_layout"]
