"""Crowdlearning (Chen et al., IEEE SECON 2018): the SliceNet protocol machines (server,
dominator, follower, dummy) built on the partitioning library :mod:`slicenet`.

The machines live in :mod:`crowdlearn.protocols.crowdlearning.machines`; this package is where
the protocol plugs into crowdlearn (``docs/design.md``, "One-way layers").
"""

from crowdlearn.protocols.crowdlearning import build as _build
from crowdlearn.protocols.crowdlearning import config as _config
from crowdlearn.registry import Protocol

_PARAMS = {"slicenet": _config.SlicenetParams}

#: found by :mod:`crowdlearn.registry`
PROTOCOLS = (
    Protocol("crowdlearning", _build.build, doc="Crowdlearning (Chen et al. 2018): groups train "
             "a sliced network (SliceNet) and share their most-changed weights.",
             params=_PARAMS, check=_config.check, runners=_build.runners,
             deferred_kinds=("slice_pass",), summary=_build.summary, needs_tensorflow=True),
    Protocol("ssgd", _build.build_ssgd, doc="S-SGD: Crowdlearning's sharing with every device "
             "its own group (no slicing).", params=_PARAMS, check=_config.check_ssgd,
             runners=_build.runners, deferred_kinds=("slice_pass",), summary=_build.summary,
             needs_tensorflow=True),
)
