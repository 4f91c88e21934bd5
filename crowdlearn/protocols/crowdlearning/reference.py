"""The straightforward code that the Crowdlearning machines' fast paths replaced, kept as the
reference they must equal bit for bit.

``tests/test_slicenet_fastpaths.py`` runs whole simulations with these put back and compares
every row and message; ``benchmarks/slicenet_throughput.py --ab-paths`` times a warm epoch by
them against the current code.  Nothing else calls them.
"""

from __future__ import annotations

import numpy as np

from crowdlearn.protocols.crowdlearning.sharing import top_k

__all__ = ["eager_share", "full_length_share", "owns_all_by_search"]


def owns_all_by_search(self, owners, indices, *, trainable=False):
    """``Layout.owns_all`` as check_sparse's ``allowed`` search (the reference)."""
    from crowdlearn.protocols.validate import check_sparse

    allowed = self.owned_flat(owners, trainable=trainable)
    return check_sparse(indices, np.zeros(len(indices), np.float32), size=self.num_params,
                        allowed=allowed) is None


def full_length_share(self, m):
    """A device's share as it was: Σ|gradient| and the values on full-length vectors, the
    top θ of ``acc[idx]`` (the reference of ``SliceDevice._share``)."""
    from crowdlearn.protocols.crowdlearning.messages import Upload
    from crowdlearn.protocols.crowdlearning.passjob import as_array
    from sim.machine import Send

    self._commit()
    lay = self.layout
    idx = lay.owned_flat(m.owners, trainable=True)
    k = int(round(self.params.theta * len(idx)))
    acc = np.zeros(lay.num_params, np.float64)
    seen = False
    for o in m.owners:
        own = self._acc_of(o)
        if own is not None:
            acc[lay.owned_flat([o], trainable=True)] = own
            seen = True
    self.acc = {}
    top = idx[top_k(acc[idx], k)] if k and seen else idx[:0]
    self.held = {o: as_array(v) for o, v in self.held.items()}
    flat = self._flat(m.owners)
    self.share_owners = {m.epoch: tuple(m.owners)}
    return [Send(self.server, Upload(m.group, m.epoch, top.astype(np.int32),
                                     flat[top].astype(np.float32)))]


def eager_share(self, m):
    """``SliceDevice._share`` with its top-θ selection made at once, as before the seventeenth
    session: it reads the passes' deferred training at the share, and the member then holds
    plain arrays (``benchmarks/slicenet_throughput.py --ab-share`` times the two ways)."""
    from crowdlearn.protocols.crowdlearning.device import lazy_share
    from crowdlearn.protocols.crowdlearning.messages import Upload
    from crowdlearn.protocols.crowdlearning.passjob import as_array
    from sim.machine import Send

    (send,) = lazy_share(self, m)
    up = send.message
    self.held = {o: as_array(v) for o, v in self.held.items()}
    return [Send(send.dst, Upload(up.group, up.epoch, np.asarray(up.indices),
                                  np.asarray(up.values)))]
