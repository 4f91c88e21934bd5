"""Secure aggregation around FedAvg: Bonawitz et al. (SecAgg) and Bell et al. (SecAgg+).

The FedAvg round trains as usual; instead of sending its weights a selected client then runs
four stages with the server, which learns only the sum of the clients' quantised updates:

======  ===================  =======================================================================
stage   client → server      server → client
======  ===================  =======================================================================
0       ``AdvertiseKeys``    ``KeyList``: the public keys of U1 (SecAgg+: of the client's neighbours)
1       ``ShareKeys``        ``ShareRelay``: the encrypted Shamir shares addressed to the client
2       ``MaskedInput``      ``UnmaskRequest``: who delivered (U3) and who dropped (U2 \\ U3)
3       ``UnmaskShares``     -- (the server rebuilds the masks and removes them)
======  ===================  =======================================================================

* keys: two X25519 pairs per client and round (``c`` encrypts shares, ``s`` agrees mask seeds);
* shares: t-of-n Shamir shares of the mask secret key ``s_sk`` and of a self-mask seed ``b_u``,
  AES-GCM-encrypted under ``HKDF(X25519(c_sk_u, c_pk_v))`` and relayed by the server;
* masked input: ``y_u = q(x_u) + PRG(b_u) + Σ_v ±PRG(s_uv) mod R`` with ``s_uv`` agreed from the
  ``s`` keys (``+`` when ``u < v``), so pairwise masks cancel in the sum;
* unmasking: survivors send the shares of ``b_v`` for every ``v`` in U3 and of ``s_sk_v`` for
  every ``v`` that shared keys but did not deliver; with ``t`` shares of each the server removes
  the self masks and the dropped clients' pairwise masks and gets ``Σ q(x_u)`` exactly.

Any stage that ends with fewer than ``t`` clients (or, at unmasking, a secret with fewer than
``t`` shares) aborts the round: it is reported as ``closed_by = "secagg_abort"`` and the global
model stays as it was.  A stage ends when every client expected in it has answered or dropped,
or at its deadline (the round deadline for stage 0, ``stage_timeout_s`` after for the others).

SecAgg+ (Bell et al.): the server draws a random k-regular graph on U1 (a circulant graph under a
random relabelling) and each client advertises to, shares with and masks against its ``k``
neighbours only, so its work and traffic grow like ``k = O(log n)`` instead of ``n``.

The server averages the deltas uniformly (``w ← w + Σ Δ_u / |U3|``): weighting by ``n_u`` would
reveal each client's sample count; with equal shards this is FedAvg's rule.

Priced mode (``priced=True``) skips every cryptographic operation but sends messages of exactly
the same encoded sizes (zero bytes for ciphertexts, the unmasked quantised vector for the masked
input) and charges the same modelled compute; a test holds the two modes equal.

References
----------
K. Bonawitz et al., "Practical Secure Aggregation for Privacy-Preserving Machine Learning",
ACM CCS 2017.  J. Bell et al., "Secure Single-Server Aggregation with (Poly)Logarithmic
Overhead", ACM CCS 2020.

Examples
--------
Four clients, no drop-outs, the crypto for real:

>>> import numpy as np
>>> xs = {u: np.full(3, 0.1 * u) for u in range(4)}
>>> out = run_round(xs, SecAggParams(threshold=3, quant_bits=12, modulus_bits=16, clip=1.0),
...                 rng=np.random.default_rng(0))
>>> out.status, np.round(out.sum, 3).tolist()
('ok', [0.6, 0.6, 0.6])
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from crowdlearn.crypto import keyagreement as ka
from crowdlearn.crypto import masking, shamir
from crowdlearn.crypto.costs import CryptoCosts
from crowdlearn.protocols.fedavg import SERVER, FedAvgClient, FedAvgParams, FedAvgServer
from crowdlearn.protocols.messages import Decline, RoundStart, Update
from sim import wire
from sim.machine import (
    CancelJob,
    Disconnected,
    Effect,
    Input,
    JobDone,
    NodeId,
    PeerLost,
    Received,
    Report,
    RunJob,
    Send,
    TimerFired,
)
from sim.wire import message

__all__ = ["SecAggParams", "SecAggSection", "SecAggServer", "SecAggClient", "AdvertiseKeys", "KeyList",
           "ShareKeys", "ShareRelay", "MaskedInput", "UnmaskRequest", "UnmaskShares",
           "MaskedVector", "CryptoJob", "neighbour_graph", "run_round", "RoundOutcome",
           "STAGE_MESSAGES", "client_round_bytes", "client_round_ops", "SharedCrypto"]

#: Plaintext of one encrypted share: the shares of ``s_sk`` and of ``b_u``.
SHARE_PLAIN = 2 * shamir.SHARE_BYTES
SHARE_BOX = ka.NONCE + SHARE_PLAIN + ka.TAG


@dataclass(frozen=True)
class SecAggParams:
    """Secure-aggregation settings.

    mode: ``"secagg"`` (everyone masks with everyone) or ``"secagg+"`` (k neighbours).
    threshold: t, shares needed to rebuild a secret (SecAgg: of the cohort; SecAgg+: of a
    client's k neighbours and itself).  neighbours: k (SecAgg+, even).  quant_bits, clip,
    modulus_bits: fixed-point quantisation of each coordinate of the update into Z_(2^bits).
    """

    mode: str = "secagg"
    threshold: int = 2
    neighbours: int = 0
    quant_bits: int = 16
    clip: float = 1.0
    modulus_bits: int = 32
    stage_timeout_s: float = math.inf
    priced: bool = False

    def __post_init__(self):
        if self.mode not in ("secagg", "secagg+"):
            raise ValueError(f"mode must be 'secagg' or 'secagg+'; got {self.mode!r}")
        if self.threshold < 1:
            raise ValueError(f"threshold must be >= 1; got {self.threshold}")
        if self.mode == "secagg+" and (self.neighbours < 2 or self.neighbours % 2):
            raise ValueError(f"secagg+ needs an even neighbours >= 2; got {self.neighbours}")
        if self.stage_timeout_s <= 0:
            raise ValueError(f"stage_timeout_s must be > 0; got {self.stage_timeout_s}")
        masking.levels(self.quant_bits)


# ---------------------------------------------------------------- messages
class MaskedVector:
    """A vector in Z_(2^bits) that travels packed (``bits`` bits per entry).

    ``values`` may be a :class:`~crowdlearn.crypto.masking.PendingMask`: the sender's masked
    vector, computed by a :class:`~crowdlearn.crypto.masking.MaskBatch` on first read.
    """

    __slots__ = ("_values", "d", "bits")

    def __init__(self, values, bits: int, d: int | None = None):
        self._values, self.bits = values, int(bits)
        if isinstance(values, masking.PendingMask):
            d = values.batch.d if d is None else d
        self.d = int(len(values) if d is None else d)

    @property
    def values(self) -> np.ndarray | None:
        if isinstance(self._values, masking.PendingMask):
            self._values = self._values.result()
        return self._values

    def wire_len(self) -> int:
        return masking.packed_len(self.d, self.bits)

    def wire_bytes(self) -> bytes:
        if self.values is None:
            return bytes(self.wire_len())
        return masking.pack(self.values, self.bits)

    @classmethod
    def from_wire(cls, raw, *, bits: int, d: int) -> MaskedVector:
        """Rebuild from the bytes :meth:`wire_bytes` wrote (the receiver knows ``bits`` and
        ``d``; a length that does not match raises ``ValueError``).

        >>> v = MaskedVector(np.array([1, 2, 65535], np.uint64), 16)
        >>> MaskedVector.from_wire(v.wire_bytes(), bits=16, d=3).values.tolist()
        [1, 2, 65535]
        """
        if not isinstance(raw, (bytes, bytearray, memoryview)):
            raise TypeError(f"a masked vector travels as bytes; got a {type(raw).__name__}")
        return cls(masking.unpack(bytes(raw), int(d), int(bits)), bits)


@message(0x0601)
@dataclass(frozen=True)
class AdvertiseKeys:
    """Stage 0, client → server: the public halves of this round's two key pairs."""

    round: int
    c_pk: bytes
    s_pk: bytes


@message(0x0602)
@dataclass(frozen=True)
class KeyList:
    """Stage 0, server → client: the keys of the clients it will share and mask with."""

    round: int
    ids: tuple
    c_pks: tuple
    s_pks: tuple
    threshold: int
    clip_norm: float = 0.0      # client-level DP: this round's clipping norm (0: no DP)

    def __post_init__(self):
        if not len(self.ids) == len(self.c_pks) == len(self.s_pks):
            raise ValueError("KeyList: ids and keys differ in length")


@message(0x0603)
@dataclass(frozen=True)
class ShareKeys:
    """Stage 1, client → server: one AES-GCM box of shares per recipient."""

    round: int
    dsts: tuple
    boxes: tuple


@message(0x0604)
@dataclass(frozen=True)
class ShareRelay:
    """Stage 1, server → client: the boxes addressed to this client, with their senders."""

    round: int
    srcs: tuple
    boxes: tuple


@message(0x0605)
@dataclass(frozen=True)
class MaskedInput:
    """Stage 2, client → server: ``y_u`` in Z_R, packed."""

    round: int
    vector: Any


@message(0x0606)
@dataclass(frozen=True)
class UnmaskRequest:
    """Stage 3, server → client: who delivered a masked input and who dropped after sharing."""

    round: int
    survivors: tuple
    dropped: tuple


@message(0x0607)
@dataclass(frozen=True)
class UnmaskShares:
    """Stage 3, client → server: its share of ``b_v`` (survivors) or ``s_sk_v`` (dropped)."""

    round: int
    ids: tuple
    shares: tuple


#: The wire kinds of each stage (client → server, server → client).
STAGE_MESSAGES = {"advertise": ("AdvertiseKeys", "KeyList"), "share": ("ShareKeys", "ShareRelay"),
                  "masked_input": ("MaskedInput", "UnmaskRequest"),
                  "unmask": ("UnmaskShares",)}


@dataclass(frozen=True, eq=False)
class CryptoJob:
    """A client's cryptographic work of one stage: charged in simulated time, computed already.

    ``settles``: job kinds whose pending batch is complete once this job is submitted (the
    key-sharing stage starts only after every selected client has trained or dropped), so the
    executor may start that batch early (:class:`~crowdlearn.training.jobs.Executor`).
    """

    flops: float
    stage: str
    memory_bytes: int = 0
    settles: tuple = ()
    kind: str = field(default="secagg_crypto", init=False)


class SharedCrypto:
    """Work the simulator does once for several machines of one process (the composition root
    makes one per simulation; machines without it compute everything themselves).

    * ``memo``: pairwise X25519 + HKDF keys, derived once per pair
      (:class:`~crowdlearn.crypto.keyagreement.AgreementMemo`);
    * :meth:`batch`: masked inputs computed together, each pairwise mask's keystream expanded
      once for both ends (:class:`~crowdlearn.crypto.masking.MaskBatch`).

    Each machine still derives only values it could compute from its own keys and messages, and
    the compute charged to its device is the cost model's count of its own operations
    (``CryptoJob``), unchanged.  ``threads``: the mask batches' worker threads
    (:class:`~crowdlearn.crypto.masking.MaskBatch`; None = the default, 0 = none); no message
    depends on it (tested).

    ``process``: a worker process computing the pairwise agreements ahead of their use
    (:class:`~crowdlearn.crypto.agreement_process.AgreementProcess`, made and started by the
    composition root; this module starts none): each
    client, when its key list arrives, says with whom it will agree
    (:meth:`~crowdlearn.crypto.keyagreement.AgreementMemo.expect`), so the round's X25519 runs
    beside the training and the clients' other work instead of holding this process's GIL.
    :meth:`close` ends it (the simulation does, when its run ends).  No message depends on it
    (tested).
    """

    def __init__(self, *, threads: int | None = None, process=None):
        self.process = process
        self.memo = ka.AgreementMemo(process=process)
        self.threads = threads
        self._batches: dict = {}

    def close(self) -> None:
        """End the worker process, if any (idempotent)."""
        if self.process is not None:
            self.process.close()

    def batch(self, d: int, bits: int) -> masking.MaskBatch:
        key = (d, bits)
        if key not in self._batches:
            self._batches[key] = masking.MaskBatch(d, bits, threads=self.threads)
        return self._batches[key]


# ---------------------------------------------------------------- pure helpers
def neighbour_graph(ids, k: int, rng: np.random.Generator) -> dict:
    """A random k-regular graph on ``ids``: the circulant ``i ~ i ± 1 … i ± k/2`` under a random
    relabelling (Bell et al.'s Harary-graph construction).  With ``k >= len(ids) − 1`` it is the
    complete graph.

    >>> g = neighbour_graph(range(10), 4, np.random.default_rng(0))
    >>> sorted(len(v) for v in g.values()) == [4] * 10, all(0 not in g[0] for _ in [0])
    (True, True)
    """
    ids = list(ids)
    n = len(ids)
    if k >= n - 1:
        return {u: frozenset(v for v in ids if v != u) for u in ids}
    perm = [ids[i] for i in rng.permutation(n)]
    out = {u: set() for u in ids}
    for i, u in enumerate(perm):
        for off in range(1, k // 2 + 1):
            v = perm[(i + off) % n]
            out[u].add(v)
            out[v].add(u)
    return {u: frozenset(v) for u, v in out.items()}


def _count_scale(sa: SecAggParams) -> float:
    """Value of the count coordinate per unit of DP count: the centred indicator ``b − ½``
    (±½) becomes ±clip, which the quantiser maps exactly to ±L."""
    return 2 * sa.clip


def _xcoord(u) -> int:
    return int(u) + 1


def _mask_info(rnd: int) -> bytes:
    return f"crowdlearn secagg mask seed r{rnd}".encode()


def _share_info(rnd: int) -> bytes:
    return f"crowdlearn secagg share key r{rnd}".encode()


def _box_aad(rnd: int, src, dst) -> bytes:
    return f"secagg r{rnd} {src}->{dst}".encode()


# ---------------------------------------------------------------- the client
class SecAggClient(FedAvgClient):
    """A FedAvg client that delivers its update through the four SecAgg stages.

    Parameters beyond :class:`FedAvgClient`: ``params``; ``costs`` (FLOP-equivalents of the
    primitives); ``crypto_rng`` (keys, self-mask seeds and Shamir coefficients; kept apart from
    the training stream so training is identical with and without SecAgg); ``privatise`` (an
    optional client-level DP hook ``(delta, clip_norm, rng) -> (delta', count)``, ``count`` the
    centred unclipped indicator ``b − ½`` of adaptive clipping or None); ``noise`` (distributed
    DP: ``(dim, clip_norm, step, rng, count_step=...) -> int64 noise in grid units`` or None,
    added to the quantised update and count); ``shared`` (a :class:`SharedCrypto` of the
    simulation, or None to compute alone).
    """

    def __init__(self, node_id: NodeId, spec, indices, *, rng: np.random.Generator,
                 params: SecAggParams, costs: CryptoCosts, crypto_rng: np.random.Generator,
                 privatise: Callable | None = None, server: NodeId = SERVER,
                 shared: SharedCrypto | None = None, noise: Callable | None = None):
        super().__init__(node_id, spec, indices, rng=rng, server=server)
        self.sa, self.costs, self.crng = params, costs, crypto_rng
        self.privatise, self.noise = privatise, noise
        self.shared = shared
        self._agree = shared.memo.agree if shared is not None else ka.agree
        self._reset()

    def _reset(self):
        self.rnd: int | None = None
        self.global_w = None
        self.trained = None
        self.stage_job = None
        self.keys = None
        self.peers: dict = {}          # v -> (c_pk, s_pk) of the clients I share/mask with
        self.held: dict = {}           # v -> (share of s_sk_v, share of b_v) that I hold
        self.b_seed = None
        self.u2: tuple = ()
        self.threshold = 0
        self.clip_norm = 0.0
        self._ckeys: dict = {}
        self._mkeys: dict = {}
        self._infos = None             # this round's HKDF infos (share key, mask seed)
        self._early_mask = None        # masks registered with the shared batch at key sharing

    def handle(self, event: Input, now: float) -> list[Effect]:
        if isinstance(event, Received) and isinstance(event.message, RoundStart):
            effects: list[Effect] = []
            if self.stage_job is not None:
                effects.append(CancelJob(self.stage_job))
            self._reset()
            self.rnd, self.global_w = event.message.round, event.message.weights
            return effects + super().handle(event, now)
        if isinstance(event, JobDone) and event.job_id == self.job_round and self.rnd is not None:
            self.job_round = None
            self.trained = event.result          # still deferred: read at the masked input
            return self._advertise()
        if isinstance(event, JobDone) and event.job_id == self.stage_job:
            self.stage_job = None
            out = self._outbox
            return [Send(self.server, out() if callable(out) else out)]
        if isinstance(event, Disconnected):
            self._reset()
            return super().handle(event, now)
        if isinstance(event, Received) and getattr(event.message, "round", None) == self.rnd \
                and self.rnd is not None:
            m = event.message
            if isinstance(m, KeyList):
                return self._share(m)
            if isinstance(m, ShareRelay):
                return self._masked_input(m)
            if isinstance(m, UnmaskRequest):
                return self._unmask(m)
            return []
        if isinstance(event, Received) and isinstance(event.message, RoundStart | KeyList
                                                      | ShareRelay | UnmaskRequest):
            return []                            # a stage of a round I am not part of
        return super().handle(event, now)

    # each stage: compute the reply (pure), charge its cost as a job, send it when done; the
    # reply is computed now, or when the job is done if ``reply`` is a function (key sharing:
    # its draws are made now, its keys may still be on their way from the agreement process)
    def _after(self, stage: str, ops: Mapping, reply) -> list[Effect]:
        self._outbox = reply
        self.stage_job = ("secagg", self.rnd, stage)
        # the share stage follows everyone's training: the round's training batch is settled
        settles = ("train",) if stage == "share" else ()
        return [RunJob(self.stage_job, CryptoJob(self.costs.flops(**ops), stage,
                                                 settles=settles))]

    def _share_key(self, v) -> ka.AESGCM:
        """The AES-GCM cipher of the key shared with ``v`` this round (agreed and built once,
        used both ways)."""
        got = self._ckeys.get(v)
        if got is None:
            got = self._ckeys[v] = ka.AESGCM(
                self._agree(self.keys[0], self.peers[v][0], self._round_infos()[0]))
        return got

    def _agree_with(self, j: int, vs) -> None:
        """Agree key ``j`` (0: the share keys, 1: the mask seeds) with each of ``vs`` not
        agreed with yet this round, in one call of the shared memo (the same keys as
        :meth:`_share_key` and :meth:`_mask_seed` one peer at a time)."""
        cache = self._ckeys if j == 0 else self._mkeys
        todo = [v for v in vs if v not in cache]
        if not todo:
            return
        info = self._round_infos()[j]
        pubs = [self.peers[v][j] for v in todo]
        if self.shared is not None:
            got = self.shared.memo.agree_many(self.keys[j], pubs, info)
        else:
            got = [ka.agree(self.keys[j], pk, info) for pk in pubs]
        for v, k in zip(todo, got, strict=True):
            cache[v] = ka.AESGCM(k) if j == 0 else k

    def _mask_seed(self, v) -> bytes:
        """The pairwise mask seed ``s_uv`` agreed with ``v`` this round (agreed once)."""
        got = self._mkeys.get(v)
        if got is None:
            got = self._mkeys[v] = self._agree(self.keys[1], self.peers[v][1],
                                               self._round_infos()[1])
        return got

    def _round_infos(self) -> tuple[bytes, bytes]:
        """This round's HKDF infos (share key, mask seed), formatted once."""
        if self._infos is None:
            self._infos = (_share_info(self.rnd), _mask_info(self.rnd))
        return self._infos

    def _advertise(self) -> list[Effect]:
        if self.sa.priced:
            c_pk, s_pk = self.crng.bytes(32), self.crng.bytes(32)
            self.keys = (None, None)
        else:
            c, s = ka.keypair(self.crng.bytes(32)), ka.keypair(self.crng.bytes(32))
            self.keys = (c, s)
            c_pk, s_pk = ka.public_bytes(c), ka.public_bytes(s)
        return self._after("advertise", {"keygen": 2}, AdvertiseKeys(self.rnd, c_pk, s_pk))

    def _share(self, m: KeyList) -> list[Effect]:
        me = self.node_id
        if me not in m.ids or len(m.ids) < m.threshold:
            return [Report("secagg_client_abort", "keylist", (("device", me),))]
        self.threshold, self.clip_norm = m.threshold, m.clip_norm
        self.peers = {v: (c, s) for v, c, s in zip(m.ids, m.c_pks, m.s_pks, strict=True) if v != me}
        recipients = sorted(self.peers) + [me]
        t = m.threshold
        if self.shared is not None and not self.sa.priced:
            # a hint to the simulator (no message depends on it): the agreements this client
            # will need, queued now on the agreement process (if any) in the order clients
            # receive their key lists, so they are there when the job ends
            me_at = m.ids.index(me)
            for j, (key, own) in enumerate(((self.keys[0], m.c_pks[me_at]),
                                            (self.keys[1], m.s_pks[me_at]))):
                self.shared.memo.expect(key, own, [pk[j] for pk in self.peers.values()],
                                        self._round_infos()[j])
        self.b_seed = self.crng.bytes(32)
        if self.sa.priced:
            rows = [[0] * len(recipients)] * 2
            shamir.random_elements(self.crng, 2 * (t - 1))   # the real mode's draws
        else:
            s_sk = int.from_bytes(ka.private_bytes(self.keys[1]), "big")
            rows = shamir.split_many([s_sk, int.from_bytes(self.b_seed, "big")],
                                     [_xcoord(v) for v in recipients], t=t, rng=self.crng)
        j_me = recipients.index(me)
        self.held[me] = (int(rows[0][j_me]), int(rows[1][j_me]))
        dsts = tuple(v for v in recipients if v != me)

        def reply() -> ShareKeys:
            # at the end of the job (the same bytes as computed at its start): in a shared
            # simulation the pairwise keys are agreed ahead in a worker process, so by now
            # they are there, and the round's training started with the job
            boxes = []
            if not self.sa.priced:
                self._agree_with(0, dsts)
            for j, v in enumerate(recipients):
                if v == me:
                    continue
                if self.sa.priced:
                    boxes.append(bytes(SHARE_BOX))
                    continue
                plain = shamir.share_to_bytes(rows[0][j]) + shamir.share_to_bytes(rows[1][j])
                boxes.append(ka.seal(self._share_key(v), plain, aad=_box_aad(self.rnd, me, v)))
            if self.shared is not None and not self.sa.priced:
                # the simulator derives the mask seeds now, while the round's training runs on
                # a worker thread (the executor's early batch); the device is charged for them
                # at the masked-input stage, for the peers whose shares arrived, as Bonawitz et
                # al. order it
                self._agree_with(1, self.peers)
                self._register_early_mask()
            return ShareKeys(self.rnd, dsts, tuple(boxes))
        ops = {"agree": len(dsts), "field_muls": 2 * len(recipients) * max(t - 1, 0),
               "aead_bytes": len(dsts) * SHARE_PLAIN}
        return self._after("share", ops, reply)

    def _register_early_mask(self) -> None:
        """Register ``PRG(b_u) + Σ_v ±PRG(s_uv)`` over every peer of the key list with the
        simulation's mask batch now, so that its keystreams are expanded on the batch's worker
        threads while the round trains and the other clients agree on keys (the input and the
        correction for peers whose shares never arrive are added at the masked-input stage:
        :meth:`~crowdlearn.crypto.masking.PendingMask.plus`).  Only when the vector's length
        is the model's (no DP count coordinate this round): otherwise the masks are computed
        at the masked-input stage as before.  The same masked vector either way (tested)."""
        if self.privatise is not None and self.clip_norm > 0:
            return
        me = self.node_id
        d = sum(int(np.size(w)) for w in self.global_w)
        terms = [(self.b_seed, +1)] + [(self._mask_seed(v), +1 if me < v else -1)
                                       for v in self.peers]
        self._early_mask = self.shared.batch(d, self.sa.modulus_bits).register(
            None, terms, own=(self.b_seed,))

    def _update_vector(self) -> tuple[np.ndarray, bool]:
        """The delta to aggregate (clipped under DP, then its count coordinate if any) and
        whether DP applies."""
        new = np.concatenate([np.asarray(w).ravel() for w in self.trained])
        old = np.concatenate([np.asarray(w).ravel() for w in self.global_w])
        delta = np.subtract(new, old, dtype=np.float64)
        if self.privatise is not None and self.clip_norm > 0:
            delta, count = self.privatise(delta, self.clip_norm, self.crng)
            if count is None:
                return delta, True
            # adaptive clipping: the centred indicator b − ½ rides along as one more
            # coordinate, ±½ scaled to ±clip (exactly ±L on the grid: no rounding)
            return np.append(delta, count * _count_scale(self.sa)), True
        return delta, False

    def _masked_input(self, m: ShareRelay) -> list[Effect]:
        me, sa = self.node_id, self.sa
        opened = 0
        for v, box in zip(m.srcs, m.boxes, strict=False):
            if v not in self.peers:
                continue                          # not a neighbour: the peer misbehaved
            if sa.priced:
                self.held[v] = (0, 0)
            else:
                key = self._share_key(v)
                try:
                    plain = ka.open_sealed(key, box, aad=_box_aad(self.rnd, v, me))
                except ka.InvalidTag:
                    continue
                self.held[v] = (shamir.share_from_bytes(plain[:shamir.SHARE_BYTES]),
                                shamir.share_from_bytes(plain[shamir.SHARE_BYTES:]))
            opened += 1
        self.u2 = tuple(sorted(v for v in self.held if v != me))
        if len(self.u2) + 1 < self.threshold:
            return [Report("secagg_client_abort", "share", (("device", me),))]
        y = self._quantised_input()
        bits = sa.modulus_bits
        d = len(y)
        early, self._early_mask = self._early_mask, None
        if early is not None and d == early.batch.d:
            # masks registered at key sharing for every peer: add the input, and take back
            # the pairwise masks of the peers whose shares did not arrive (not in U2)
            u2 = set(self.u2)
            y = early.plus(y, [(self._mask_seed(v), -1 if me < v else +1)
                               for v in self.peers if v not in u2])
        elif not sa.priced:
            terms = [(self.b_seed, +1)] + [(self._mask_seed(v), +1 if me < v else -1)
                                           for v in self.u2]
            if self.shared is not None:         # computed with the others' on first read
                y = self.shared.batch(d, bits).register(y, terms)
            else:
                acc = masking.MaskAccumulator(d, bits)
                acc.add(y, +1)
                for seed, sign in terms:
                    acc.add_prg(seed, sign)
                y = acc.result()
        width = 4 if bits <= 32 else 8
        ops = {"agree": len(self.u2), "aead_bytes": opened * SHARE_PLAIN,
               "prg_bytes": (len(self.u2) + 1) * d * width}
        return self._after("masked_input", ops, MaskedInput(self.rnd, MaskedVector(y, bits)))

    def _quantised_input(self) -> np.ndarray:
        """``q(x_u)`` in Z_R before masking: the (clipped) delta quantised, with its DP count
        coordinate; in distributed DP, plus this client's noise shares on the grid (after the
        rounding, so neither the per-coordinate clipping nor the rounding touches them:
        ``docs/design.md``)."""
        sa = self.sa
        x, dp = self._update_vector()
        y = masking.quantise(x, clip=sa.clip, quant_bits=sa.quant_bits,
                             modulus_bits=sa.modulus_bits)
        if dp and self.noise is not None:
            step = sa.clip / masking.levels(sa.quant_bits)
            dim = sum(int(np.size(w)) for w in self.global_w)     # the model's coordinates
            ints = self.noise(dim, self.clip_norm, step, self.crng,
                              count_step=step / _count_scale(sa))
            if ints is not None:
                if len(ints) != len(y):
                    raise RuntimeError(f"DP noise for {len(ints)} coordinates, update has "
                                       f"{len(y)}")
                y = masking.add_mod(y, ints.view(np.uint64), sa.modulus_bits)
        return y

    def _unmask(self, m: UnmaskRequest) -> list[Effect]:
        # Bonawitz et al.: refuse to help unmask fewer than t inputs, or a client named both as
        # a survivor and as dropped (its b and its s_sk together would unmask its input)
        few = self.sa.mode == "secagg" and len(m.survivors) < self.threshold
        if few or set(m.survivors) & set(m.dropped):
            return [Report("secagg_client_abort", "unmask", (("device", self.node_id),))]
        ids, shares = [], []
        for v in m.survivors:                     # their self-mask seed b_v
            if v in self.held:
                ids.append(v)
                shares.append(shamir.share_to_bytes(self.held[v][1]))
        for v in m.dropped:                       # their mask secret key s_sk_v
            if v in self.held:
                ids.append(-1 - v)
                shares.append(shamir.share_to_bytes(self.held[v][0]))
        return self._after("unmask", {}, UnmaskShares(self.rnd, tuple(ids), tuple(shares)))


# ---------------------------------------------------------------- the server
_STAGES = ("advertise", "share", "masked_input", "unmask")


class SecAggServer(FedAvgServer):
    """A FedAvg server that aggregates through SecAgg / SecAgg+ (see the module docstring).

    ``dp`` is an optional client-level DP policy (:mod:`crowdlearn.privacy.dp_fedavg`): it sets
    each round's clipping norm and noises the unmasked sum.  ``shared``: the simulation's
    :class:`SharedCrypto` (pairwise keys of a dropped client it rebuilt), or None.
    """

    def __init__(self, node_id: NodeId, weights, params: FedAvgParams, *, rng: np.random.Generator,
                 secagg: SecAggParams, costs: CryptoCosts | None = None, dp=None,
                 graph_rng: np.random.Generator | None = None,
                 shared: SharedCrypto | None = None):
        super().__init__(node_id, weights, params, rng=rng, dp=dp)
        self.sa, self.costs = secagg, costs
        self._agree = shared.memo.agree if shared is not None else ka.agree
        self._threads = shared.threads if shared is not None else 0
        # the SecAgg+ graph has its own stream, so client selection matches plain FedAvg's
        self.graph_rng = graph_rng if graph_rng is not None else np.random.default_rng(0)
        self.shapes = [np.shape(w) for w in self.weights]
        self.d = int(sum(np.prod(s, dtype=np.int64) for s in self.shapes))
        # a client's masked vector: the model's coordinates, then DP's count coordinate if any
        self.d_sent = self.d + (dp.count_coordinates if dp is not None else 0)
        if dp is not None:      # the clients' fixed-point rounding enters the sensitivity
            dp.set_quantisation(step=secagg.clip / masking.levels(secagg.quant_bits), dim=self.d)
        self.plain_update_bytes = wire.size(Update(0, tuple(np.asarray(w, np.float32)
                                                            for w in self.weights), 1))
        self.log: list[dict] = []
        self.last_sum, self.last_u3 = None, ()
        self._closing = "advertise"
        self._new_round_state()

    def _new_round_state(self):
        self.stage = None
        self.resp: dict[str, dict] = {s: {} for s in _STAGES}
        self.u1: tuple = ()
        self.graph: dict = {}
        self.sent_by: dict = {}        # client -> bytes it sent this round (what we received)
        self._stage_deadline: float | None = None
        # the clients the current stage still waits for: its expected set (the previous stage's
        # responders, or the selected for the first) less those that answered or were lost,
        # kept up to date per event so that a message or a loss costs O(1)
        self._waiting: set = set()

    # ---- the machine
    def next_timer(self) -> float | None:
        if self.phase != "training":
            return None
        if self.stage in (None, "advertise"):
            return self._deadline
        return self._stage_deadline

    def handle(self, event: Input, now: float) -> list[Effect]:
        if isinstance(event, Received) and isinstance(event.message, Update):
            return [Report("secagg_plain_update_refused", 1, (("device", event.src),))]
        if isinstance(event, Received) and isinstance(event.message, (
                AdvertiseKeys, ShareKeys, MaskedInput, UnmaskShares)):
            return self._on_stage_message(event.src, event.message, now)
        if isinstance(event, TimerFired) and self.phase == "training":
            return self._advance(now, timeout=True)
        if isinstance(event, Received) and isinstance(event.message, Decline) \
                and event.message.round != self.round:
            return []                   # a late decline of an earlier round: not this one's
        if isinstance(event, (PeerLost,)) or (isinstance(event, Received)
                                              and isinstance(event.message, Decline)):
            effects = super().handle(event, now) if isinstance(event, PeerLost) else []
            peer = event.peer if isinstance(event, PeerLost) else event.src
            if self.phase == "training" and self.book.asked(peer):
                self.gone.add(peer)
                self._waiting.discard(peer)
                return effects + self._advance(now)
            return effects
        return super().handle(event, now)

    def _try_start(self, now: float) -> list[Effect]:
        effects = super()._try_start(now)
        if self.phase == "training":
            self._new_round_state()
            self.stage = "advertise"
            self._waiting = set(self.selected)
        return effects

    def _on_gone(self, peer: NodeId, now: float) -> list[Effect]:
        return []                                 # handled in handle(): stages, not updates

    def _on_stage_message(self, src, msg, now: float) -> list[Effect]:
        want = {AdvertiseKeys: "advertise", ShareKeys: "share", MaskedInput: "masked_input",
                UnmaskShares: "unmask"}[type(msg)]
        if self.phase != "training" or msg.round != self.round or want != self.stage \
                or src not in self._waiting:
            return [Report("late_update", 1, (("device", src), ("round", msg.round)))]
        if want == "masked_input" and not isinstance(msg.vector, MaskedVector):
            # what crossed a wire: the packed bytes, read with this round's length and bits
            try:
                msg = MaskedInput(msg.round, MaskedVector.from_wire(
                    msg.vector, bits=self.sa.modulus_bits, d=self.d_sent))
            except (TypeError, ValueError) as exc:
                return [Report("malformed_message", f"MaskedInput: {exc}", (("device", src),))]
        self.resp[want][src] = msg
        self._waiting.discard(src)
        self.sent_by[src] = self.sent_by.get(src, 0) + wire.size(msg)
        return self._advance(now)

    def _advance(self, now: float, *, timeout: bool = False) -> list[Effect]:
        if self.stage is None:
            return []
        got = self.resp[self.stage]
        enough = self.stage == "advertise" and len(got) >= self.params.clients_per_round
        if not (timeout or enough or not self._waiting):
            return []
        t = self.sa.threshold
        self._closing = self.stage
        if len(got) < t:
            return self._abort(now, f"{self.stage}: {len(got)} < t = {t}")
        stage = self.stage
        nxt = _STAGES[_STAGES.index(stage) + 1] if stage != "unmask" else None
        self.stage = nxt
        # the next stage waits for this one's responders that are still here
        self._waiting = set(got) - self.gone if nxt is not None else set()
        self._stage_deadline = now + self.sa.stage_timeout_s \
            if math.isfinite(self.sa.stage_timeout_s) else None
        if stage == "advertise":
            return self._send_keylists()
        if stage == "share":
            return self._send_relays()
        if stage == "masked_input":
            return self._send_unmask_requests()
        return self._finish(now)

    def _send_keylists(self) -> list[Effect]:
        adv = self.resp["advertise"]
        self.u1 = tuple(sorted(adv))
        k = self.sa.neighbours if self.sa.mode == "secagg+" else len(self.u1)
        self.graph = neighbour_graph(self.u1, k, self.graph_rng)
        clip = self.dp.clip_norm if self.dp is not None else 0.0
        if self.sa.mode == "secagg":
            msg = KeyList(self.round, self.u1, tuple(adv[v].c_pk for v in self.u1),
                          tuple(adv[v].s_pk for v in self.u1), self.sa.threshold, clip)
            return [Send(u, msg) for u in self.u1]
        out = []
        for u in self.u1:
            ids = tuple(sorted(self.graph[u] | {u}))
            out.append(Send(u, KeyList(self.round, ids, tuple(adv[v].c_pk for v in ids),
                                       tuple(adv[v].s_pk for v in ids), self.sa.threshold,
                                       clip)))
        return out

    def _send_relays(self) -> list[Effect]:
        inbox: dict = {u: ([], []) for u in self.resp["share"]}
        for v, msg in sorted(self.resp["share"].items()):
            for dst, box in zip(msg.dsts, msg.boxes, strict=False):
                if dst in inbox and dst in self.graph.get(v, ()):
                    inbox[dst][0].append(v)
                    inbox[dst][1].append(box)
        return [Send(u, ShareRelay(self.round, tuple(s), tuple(b)))
                for u, (s, b) in sorted(inbox.items())]

    def _send_unmask_requests(self) -> list[Effect]:
        u3 = tuple(sorted(self.resp["masked_input"]))
        dropped = tuple(sorted(set(self.resp["share"]) - set(u3)))
        if self.sa.mode == "secagg":
            msg = UnmaskRequest(self.round, u3, dropped)
            return [Send(u, msg) for u in u3]
        out = []
        for u in u3:
            nb = self.graph[u] | {u}
            out.append(Send(u, UnmaskRequest(self.round, tuple(v for v in u3 if v in nb),
                                             tuple(v for v in dropped if v in nb))))
        return out

    def _log_entry(self, status: str, why: str) -> dict:
        reached = _STAGES.index(self._closing)
        return {"round": self.round, "status": status, "reason": why,
                "selected": len(self.selected), "reached": reached,
                **{s: len(self.resp[s]) for s in _STAGES},
                "u4": tuple(sorted(self.resp["unmask"])), "sent_by": dict(self.sent_by)}

    def _abort(self, now: float, why: str) -> list[Effect]:
        self.updates = {}
        self.log.append(self._log_entry("abort", why))
        self.stage = None
        effects = [Report("secagg_abort", why, (("round", self.round),))]
        return effects + self._close_secure(now, None, reason="secagg_abort")

    def _finish(self, now: float) -> list[Effect]:
        u3 = tuple(sorted(self.resp["masked_input"]))
        total, why = self._unmask(u3)
        if total is None:
            return self._abort(now, why)
        self.log.append(self._log_entry("ok", ""))
        self.last_sum, self.last_u3 = total, u3
        return self._close_secure(now, (total, u3), reason="complete")

    def _unmask(self, u3: tuple) -> tuple[np.ndarray | None, str]:
        """Rebuild the secrets and remove the masks: ``Σ_{u ∈ U3} q(x_u) mod R``."""
        bits = self.sa.modulus_bits
        d = self.resp["masked_input"][u3[0]].vector.d
        acc = masking.MaskAccumulator(d, bits)
        for u in u3:
            acc.add(self.resp["masked_input"][u].vector.values, +1)
        dropped = sorted(set(self.resp["share"]) - set(u3))
        # shares by secret owner: b_v for v in U3 (id v), s_sk_v for dropped v (id -1-v)
        got: dict = {}
        for holder, msg in self.resp["unmask"].items():
            for sid, sh in zip(msg.ids, msg.shares, strict=False):
                got.setdefault(sid, []).append((_xcoord(holder), shamir.share_from_bytes(sh)))
        t = self.sa.threshold
        for sid in list(u3) + [-1 - v for v in dropped]:
            if len(got.get(sid, ())) < t:
                return None, f"unmask: {len(got.get(sid, ()))} shares of a secret < t = {t}"
        if self.sa.priced:
            return acc.result(), ""
        lag_cache: dict = {}

        def rebuild(sid):
            pts = sorted(got[sid])[:t]
            xs = tuple(x for x, _ in pts)
            if xs not in lag_cache:
                lag_cache[xs] = shamir.lagrange_at_zero(xs)
            acc = sum(int(c) * y for c, (_, y) in zip(lag_cache[xs], pts, strict=True))
            return acc % int(shamir.PRIME)

        terms = [(rebuild(u).to_bytes(32, "big"), -1) for u in u3]     # self masks
        adv = self.resp["advertise"]
        for v in dropped:
            s_sk = ka.keypair(rebuild(-1 - v).to_bytes(32, "big"))
            for u in u3:
                if u in self.graph[v]:      # u added +PRG(s_uv) when u < v: remove it
                    terms.append((self._agree(s_sk, adv[u].s_pk, _mask_info(self.round)),
                                  -1 if u < v else +1))
        # the keystreams expanded and subtracted on the mask batch's worker threads
        batch = masking.MaskBatch(d, bits, threads=self._threads)
        return np.asarray(batch.register(acc.result(), terms).result(), np.uint64), ""

    def _close_secure(self, now: float, result, *, reason: str) -> list[Effect]:
        """Apply the unmasked sum (if any) and close the round as FedAvg does."""
        extra: list[Effect] = []
        if result is not None:
            total, u3 = result
            sa = self.sa
            vec = masking.dequantise(total, clip=sa.clip, quant_bits=sa.quant_bits,
                                     modulus_bits=sa.modulus_bits)
            if self.dp is not None:
                delta, eff = self.dp.server_aggregate_sum(vec, len(u3), rng=self.rng,
                                                          bit_scale=_count_scale(sa))
                extra = eff
            else:
                delta = vec / len(u3)
            out, pos = [], 0
            for w, s in zip(self.weights, self.shapes, strict=True):
                n = int(np.prod(s, dtype=np.int64))
                out.append((w + delta[pos:pos + n].reshape(s)).astype(w.dtype))
                pos += n
            self.weights = out
        self._secure_aggregated = result[1] if result is not None else ()
        self.updates = {}
        return extra + self._close_round(now, reason=reason)

    def _close_round(self, now: float, *, reason: str) -> list[Effect]:
        used = getattr(self, "_secure_aggregated", ())
        self._secure_aggregated = ()
        effects = super()._close_round(now, reason=reason)
        for e in effects:       # FedAvg's report names what it averaged: here, U3
            if isinstance(e, Report) and e.name == "round" and used:
                e.value["aggregated"] = tuple(used)
        return effects

    # ---- results
    def summary(self) -> dict:
        """``secagg_*`` figures for summary.json, from the messages the server received."""
        ok = [r for r in self.log if r["status"] == "ok"]
        # bytes sent in a round by each client that took part in all four stages
        per_client = [r["sent_by"][u] for r in ok for u in r["u4"]]
        mean_sent = float(np.mean(per_client)) if per_client else None
        return {
            "secure_aggregation": self.sa.mode + (" (priced)" if self.sa.priced else ""),
            "secagg_rounds_ok": len(ok),
            "secagg_rounds_aborted": len(self.log) - len(ok),
            "secagg_aborts": [{"round": r["round"], "reason": r["reason"]}
                              for r in self.log if r["status"] == "abort"],
            "secagg_dropouts_by_stage": _dropouts(self.log),
            "secagg_plain_update_bytes": int(self.plain_update_bytes),
            "secagg_client_bytes_per_round": mean_sent,
            "secagg_expansion": (mean_sent / self.plain_update_bytes) if mean_sent else None,
            "secagg_threshold": self.sa.threshold,
            "secagg_neighbours": self.sa.neighbours if self.sa.mode == "secagg+" else None,
            "secagg_modulus_bits": self.sa.modulus_bits,
        }


def _dropouts(log: list[dict]) -> dict:
    """Clients lost before each stage, summed over rounds (selected → advertise → share →
    masked input → unmask); an aborted round counts the stages it reached."""
    out = {s: 0 for s in _STAGES}
    for r in log:
        prev = r["selected"]
        for s in _STAGES[:r["reached"] + 1]:
            out[s] += prev - r[s]
            prev = r[s]
    return out


# ---------------------------------------------------------------- a round without a simulator
@dataclass
class RoundOutcome:
    """What one SecAgg round left: its status, the sum, the surviving set U3, the machines and the messages."""
    status: str                      # "ok" | "abort"
    sum: np.ndarray | None           # Σ of the dequantised inputs of U3 (None when aborted)
    u3: tuple
    server: SecAggServer
    clients: dict
    messages: list                   # (src, dst, message) in delivery order


def run_round(xs: Mapping, params: SecAggParams, *, rng: np.random.Generator,
              drop: Mapping[str, set] | None = None, stall: Mapping[str, set] | None = None,
              costs: CryptoCosts | None = None,
              shared: bool | SharedCrypto = True) -> RoundOutcome:
    """One secure aggregation of ``xs`` (client → vector), with clients dropping before a stage.

    ``drop`` maps a stage (``"advertise"``, ``"share"``, ``"masked_input"``, ``"unmask"``) to the
    clients that go offline just before sending that stage's message (the server is told:
    ``PeerLost``).  ``stall`` maps a stage to clients that stay online but whose message of that
    stage arrives only after the stage's deadline (too slow): the server closes the stage when its
    timer fires (``params.stage_timeout_s`` must then be finite; it is also the round deadline
    here) and the late message is refused.  Machines are driven by hand through an in-memory
    wire; this is what the tests and the priced-size tables use.  ``shared``: the machines
    share one :class:`SharedCrypto` as in a simulation (False: each computes alone; or the
    :class:`SharedCrypto` to use).
    """
    from crowdlearn.crypto.costs import CryptoCosts as _C
    from sim.machine import PeerJoined, Start

    costs = costs or _C(1.0, 0, 0, 0, 0, 0)
    drop = {k: set(v) for k, v in (drop or {}).items()}
    stall = {k: set(v) for k, v in (stall or {}).items()}
    ids = sorted(xs)
    d = len(next(iter(xs.values())))
    zero = [np.zeros(d, np.float32)]
    fp = FedAvgParams(rounds=1, clients_per_round=len(ids), min_clients=len(ids),
                      deadline_s=params.stage_timeout_s)
    common = shared if isinstance(shared, SharedCrypto) else SharedCrypto() if shared else None
    server = SecAggServer(SERVER, zero, fp, rng=rng, secagg=params, costs=costs,
                          graph_rng=np.random.default_rng(int(rng.integers(2**63))),
                          shared=common)
    seeds = np.random.SeedSequence(int(rng.integers(2**63))).spawn(len(ids))
    clients = {u: SecAggClient(u, None, np.arange(1), rng=np.random.default_rng(0),
                               params=params, costs=costs,
                               crypto_rng=np.random.default_rng(s), shared=common)
               for u, s in zip(ids, seeds, strict=True)}
    log: list = []
    queue: list = []
    late: list = []
    offline: set = set()
    stage_of = {AdvertiseKeys: "advertise", ShareKeys: "share", MaskedInput: "masked_input",
                UnmaskShares: "unmask"}

    def apply(src, effects):
        for e in effects:
            if isinstance(e, Send):
                queue.append((src, e.dst, e.message))
            elif isinstance(e, RunJob) and isinstance(e.job, CryptoJob):
                c = clients[src]
                msg = c._outbox() if callable(c._outbox) else c._outbox
                c.stage_job = None
                if src in drop.get(stage_of[type(msg)], ()):
                    offline.add(src)
                    c._reset()
                    apply(SERVER, server.handle(PeerLost(src), 0.0))
                    continue
                (late if src in stall.get(stage_of[type(msg)], ()) else queue).append(
                    (src, SERVER, msg))

    server.handle(Start(), 0.0)
    for u in ids:
        apply(SERVER, server.handle(PeerJoined(u), 0.0))
    now = 0.0
    while queue or (server.phase == "training" and server.next_timer() is not None):
        if not queue:                          # everyone fast has answered: the deadline passes
            now = server.next_timer()
            queue.extend(late)                 # the slow messages arrive after it
            late.clear()
            apply(SERVER, server.handle(TimerFired(), now))
            continue
        src, dst, msg = queue.pop(0)
        if src in offline or dst in offline:
            continue
        log.append((src, dst, msg))
        if dst == SERVER:
            apply(SERVER, server.handle(Received(src, msg), now))
        elif isinstance(msg, RoundStart):      # "training": the update is xs[u] itself
            c = clients[dst]
            c.rnd, c.global_w = msg.round, msg.weights
            c.trained = [np.asarray(xs[dst], np.float64)]
            apply(dst, c._advertise())
        else:
            apply(dst, clients[dst].handle(Received(src, msg), now))
    ok = bool(server.log) and server.log[-1]["status"] == "ok"
    total = None
    if ok:
        total = masking.dequantise(server.last_sum, clip=params.clip,
                                   quant_bits=params.quant_bits, modulus_bits=params.modulus_bits)
    return RoundOutcome("ok" if ok else "abort", total, server.last_u3 if ok else (), server,
                        clients, log)


# ---------------------------------------------------------------- configuration
from crowdlearn.schema import keys, param, validate  # noqa: E402


@dataclass(frozen=True)
class SecAggSection:
    """The ``[secagg]`` config section, declared once here (:mod:`crowdlearn.schema`: each
    field's default, documentation and limits); the builder resolves the automatic values into
    :class:`SecAggParams` (:func:`resolve`)."""

    threshold: int = param(0, "Shamir threshold t: shares needed to rebuild a secret. SecAgg: "
                           "of the cohort (0 = ceil(2m/3), tolerating a third dropping); SecAgg+: of a "
                           "client's k neighbours and itself (0 = ceil(2(k+1)/3)).", min=0)
    neighbours: int = param(0, "SecAgg+: neighbours k of each client on the random k-regular "
                            "graph (even; 0 = 2*ceil(log2(m)/2), O(log m)).", min=0)
    quant_bits: int = param(16, "Fixed-point bits per coordinate: [-clip, clip] maps to the "
                            "integers [-(2^(b-1)-1), 2^(b-1)-1].", min=2, max=48)
    clip: float = param(0.5, "Per-coordinate clipping range of an update before quantisation.",
                        min=0, min_open=True)
    modulus_bits: int = param(0, "Bits of R (Z_R holds the masked sums); 0 = the fewest that "
                              "cannot overflow for the cohort and quant_bits (with distributed DP: "
                              "and 12 standard deviations of the summed noise).", min=0, max=62)
    stage_timeout_s: float = param(math.inf, "Deadline of each stage after the first (simulated "
                                   "s); the first stage ends at the round deadline.", min=0,
                                   min_open=True)
    priced: bool = param(False, "Skip the cryptography but send messages of exactly the real "
                         "sizes and charge the same modelled compute (for large studies).")

    def __post_init__(self) -> None:
        validate(self)


#: the ``[secagg]`` section (derived from :class:`SecAggSection`)
CONFIG_SECTION = keys(SecAggSection)


def auto_neighbours(cohort: int) -> int:
    """k = 2·⌈log2(m)/2⌉ (even, at least 2)."""
    return max(2, 2 * math.ceil(math.log2(max(cohort, 2)) / 2))


def resolve(section: dict, *, mode: str, cohort: int) -> dict:
    """Fill the automatic values (threshold, neighbours, modulus bits) for a cohort of m."""
    k = section["neighbours"] or (auto_neighbours(cohort) if mode == "secagg+" else 0)
    holders = k + 1 if mode == "secagg+" else cohort
    t = section["threshold"] or max(1, math.ceil(2 * holders / 3))
    extra = 1                                  # a DP unclipped bit may ride along: same bound
    bits = section["modulus_bits"] or masking.min_modulus_bits(cohort + extra,
                                                                section["quant_bits"])
    return {"threshold": t, "neighbours": k, "modulus_bits": bits}


def cross_check(section: dict, *, mode: str, protocol: str, cohort: int) -> list[str]:
    """Config-time rejections: t > cohort, k >= cohort, a Z_R the sum would overflow."""
    if mode == "none":
        return []
    out = []
    if protocol != "fedavg":
        out.append(f"fedavg.secure_aggregation: {mode!r} runs with protocol 'fedavg'; got "
                   f"{protocol!r}")
    r = resolve(section, mode=mode, cohort=cohort)
    t, k = r["threshold"], r["neighbours"]
    if mode == "secagg" and t > cohort:
        out.append(f"secagg.threshold: t = {t} is more than the cohort of {cohort} clients per "
                   f"round, so no round could ever unmask; set secagg.threshold <= {cohort}")
    if mode == "secagg+":
        if k >= cohort:
            out.append(f"secagg.neighbours: k = {k} must be less than the cohort of {cohort} "
                       f"(k = cohort - 1 is plain SecAgg); set secagg.neighbours <= "
                       f"{2 * ((cohort - 1) // 2)} or use secure_aggregation = 'secagg'")
        elif k % 2:
            out.append(f"secagg.neighbours: k must be even (a circulant k-regular graph); got {k}")
        if t > k + 1:
            out.append(f"secagg.threshold: t = {t} is more than the k + 1 = {k + 1} holders of "
                       f"each client's shares; set secagg.threshold <= {k + 1}")
    need = masking.min_modulus_bits(cohort + 1, section["quant_bits"])
    if section["modulus_bits"] and section["modulus_bits"] < need:
        q = section["quant_bits"]
        fit = max(2, q - (need - section["modulus_bits"]))
        out.append(f"secagg.modulus_bits: a sum of {cohort} updates of {q}-bit values reaches "
                   f"{cohort + 1} x (2^{q - 1} - 1) = {(cohort + 1) * masking.levels(q)}, which "
                   f"overflows Z_R with R = 2^{section['modulus_bits']} (needs < R/2); set "
                   f"secagg.modulus_bits >= {need} (or 0 for automatic), or quant_bits <= {fit}")
    if need > 62:
        out.append(f"secagg.quant_bits: {section['quant_bits']} bits for {cohort} clients need "
                   f"R = 2^{need}, above the 62-bit maximum; lower secagg.quant_bits")
    return out


def params_from_config(cfg) -> SecAggParams | None:
    mode = cfg.fedavg.secure_aggregation
    if mode == "none":
        return None
    s = cfg.secagg.__dict__
    cohort = math.ceil(cfg.clients_per_round * (1 + cfg.fedavg.over_selection))
    r = resolve(s, mode=mode, cohort=cohort)
    bits = r["modulus_bits"]
    if not s["modulus_bits"]:
        bits = max(bits, _noise_modulus_bits(cfg, cohort, s))
    return SecAggParams(mode=mode, threshold=r["threshold"], neighbours=r["neighbours"],
                        quant_bits=s["quant_bits"], clip=s["clip"],
                        modulus_bits=bits, stage_timeout_s=s["stage_timeout_s"],
                        priced=s["priced"])


def _noise_modulus_bits(cfg, cohort: int, section: dict) -> int:
    """Automatic R with room for distributed DP noise: the sum of ``cohort + 1`` full-scale
    values plus 12 standard deviations of the summed noise (in grid units) stays below R/2
    (adaptive clipping: for a clipping norm up to 4× the initial one, and the count
    coordinate's noise σ_b, one count unit being 2L grid steps)."""
    from crowdlearn.privacy import dp_fedavg
    dp = dp_fedavg.params_from_config(cfg)
    if dp is None or dp.mode != "distributed":
        return 0
    lv = masking.levels(section["quant_bits"])
    sd = dp.update_noise_multiplier * dp.clip_norm * (4 if dp.adaptive else 1) * lv \
        / section["clip"]
    if dp.adaptive:
        sd = max(sd, dp.sigma_b * 2 * lv)
    bound = (cohort + 1) * lv + 12 * sd
    return math.floor(math.log2(bound)) + 2


def client_round_bytes(*, n: int, d: int, modulus_bits: int, mode: str = "secagg",
                       k: int = 0, dropped: int = 0) -> dict:
    """Encoded bytes of the messages one client sends and receives in a round without running it.

    The messages are built as the machines build them (client ids ``0 … n−1``, placeholder
    ciphertexts and keys of the real lengths, a sized masked vector), then measured with
    :func:`sim.wire.size`; a test holds this equal to a real round's messages.
    ``peers`` is ``n − 1`` (SecAgg) or ``k`` (SecAgg+); ``dropped`` of them drop after sharing.
    """
    peers = n - 1 if mode == "secagg" else k
    me = n - 1                                       # the largest id: the widest integers
    ids = tuple(range(n - 1 - peers, n))
    key = bytes(32)
    others = tuple(v for v in ids if v != me)
    sent = {
        "advertise": wire.size(AdvertiseKeys(0, key, key)),
        "share": wire.size(ShareKeys(0, others, tuple(bytes(SHARE_BOX) for _ in others))),
        "masked_input": wire.size(MaskedInput(0, MaskedVector(None, modulus_bits, d=d))),
        "unmask": wire.size(UnmaskShares(
            0, others[:len(others) - dropped] + (me,)
            + tuple(-1 - v for v in others[len(others) - dropped:]),
            tuple(bytes(shamir.SHARE_BYTES) for _ in range(len(others) + 1)))),
    }
    survivors = ids[:len(ids) - 1 - dropped] + (me,) if dropped else ids
    received = {
        "advertise": wire.size(KeyList(0, ids, (key,) * len(ids), (key,) * len(ids), 1, 0.0)),
        "share": wire.size(ShareRelay(0, others, tuple(bytes(SHARE_BOX) for _ in others))),
        "masked_input": wire.size(UnmaskRequest(0, survivors, tuple(
            v for v in ids if v not in survivors))),
    }
    return {"sent": sent, "received": received, "sent_total": sum(sent.values()),
            "received_total": sum(received.values())}


def client_round_ops(*, peers: int, t: int, d: int, bits: int) -> dict:
    """Primitive operations a client is charged for in a round without drop-outs (the sum of
    its four stages' ``CryptoJob`` counts); ``peers`` = n − 1 (SecAgg) or k (SecAgg+)."""
    width = 4 if bits <= 32 else 8
    return {"keygen": 2, "agree": 2 * peers, "aead_bytes": 2 * peers * SHARE_PLAIN,
            "field_muls": 2 * (peers + 1) * max(t - 1, 0), "prg_bytes": (peers + 1) * d * width}
